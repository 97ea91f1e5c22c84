-- Outputs are kept for `broker.result_retention` after a job ends; then
-- the output is dropped and the record (status, usage, times) stays.
ALTER TABLE jobs ADD COLUMN output_expired INTEGER NOT NULL DEFAULT 0;

CREATE INDEX jobs_outputs ON jobs (finished_at) WHERE output IS NOT NULL;
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (created_at) WHERE state != 'pending';
