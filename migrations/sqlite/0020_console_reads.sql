-- What the console reads: jobs by outcome over the last hour, and jobs
-- newest first for one tenant (a tenant key's list, however few of the
-- store's jobs are its own) or one node (a node's recent jobs). Other
-- filters walk the newest-first index until a page is full.
CREATE INDEX jobs_finished ON jobs (finished_at);
CREATE INDEX jobs_tenant_created ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_node_created ON jobs (node, created_at DESC, id DESC);
