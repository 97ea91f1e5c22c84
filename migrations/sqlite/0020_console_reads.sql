-- What the console reads: jobs by outcome over the last hour, and a
-- tenant's jobs newest first (a tenant key's list, however few of the
-- store's jobs are its own).
CREATE INDEX jobs_finished ON jobs (finished_at);
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, id DESC);
