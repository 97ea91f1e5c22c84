-- Idempotency-Key → job, so a retried submission returns the job it already
-- made instead of making another. Rows older than the window are reused.
CREATE TABLE idempotency (
    key         TEXT PRIMARY KEY NOT NULL,
    job_id      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
