-- Workflow runs as their histories in JetStream tell them, for listing and
-- filtering; the histories stay the truth. A run's webhook is kept here
-- from its start, so that its end can be reported.
CREATE TABLE workflow_runs (
    id              TEXT PRIMARY KEY NOT NULL,
    tenant          TEXT NOT NULL,
    workflow        TEXT NOT NULL,
    version         BIGINT NOT NULL,
    priority        TEXT NOT NULL,
    -- running, succeeded, failed, cancelled, failed_compensation
    status          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    ended_at        BIGINT,
    error           TEXT,
    webhook_url     TEXT,
    webhook_events  TEXT
);

CREATE INDEX workflow_runs_list ON workflow_runs (created_at, id);
CREATE INDEX workflow_runs_tenant ON workflow_runs (tenant, created_at);
CREATE INDEX workflow_runs_ended ON workflow_runs (ended_at) WHERE ended_at IS NOT NULL;
