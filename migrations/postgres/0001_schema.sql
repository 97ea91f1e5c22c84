-- The job store on PostgreSQL: the same tables as migrations/sqlite, as
-- they stand after its migrations. Times are Unix milliseconds; flags are
-- 0/1 integers, as in SQLite, so that one set of queries serves both.

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY NOT NULL,
    model             TEXT NOT NULL,
    priority          TEXT NOT NULL,
    source            TEXT NOT NULL,
    status            TEXT NOT NULL,
    -- The admitted job as JSON, kept for the outbox.
    job               TEXT,
    metadata          TEXT NOT NULL DEFAULT '{}',
    attempt           BIGINT NOT NULL DEFAULT 0,
    node              TEXT,
    created_at        BIGINT NOT NULL,
    enqueued_at       BIGINT,
    assigned_at       BIGINT,
    started_at        BIGINT,
    finished_at       BIGINT,
    output            TEXT,
    error_code        TEXT,
    error_message     TEXT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    tenant            TEXT NOT NULL DEFAULT 'default',
    deadline_at       BIGINT,
    webhook_url       TEXT,
    webhook_events    TEXT,
    output_expired    BIGINT NOT NULL DEFAULT 0,
    tokens_estimate   BIGINT
);

CREATE INDEX jobs_outbox ON jobs (created_at) WHERE enqueued_at IS NULL AND status = 'queued';
CREATE INDEX jobs_overdue ON jobs (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('queued', 'assigned');
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_outputs ON jobs (finished_at) WHERE output IS NOT NULL;

-- The ledger: one row per job attempt that reported usage.
CREATE TABLE usage (
    job_id            TEXT NOT NULL,
    attempt           BIGINT NOT NULL,
    node              TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    engine_ms         BIGINT NOT NULL,
    at                BIGINT NOT NULL,
    cost_micros       BIGINT NOT NULL DEFAULT 0,
    cache_hit         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, attempt)
);

CREATE INDEX usage_at ON usage (at);

CREATE TABLE idempotency (
    key         TEXT PRIMARY KEY NOT NULL,
    job_id      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id           TEXT PRIMARY KEY NOT NULL,
    job_id       TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    url          TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    -- pending, delivered, failed, disabled
    state        TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    next_at      BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_url ON webhook_deliveries (url, state);
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (created_at) WHERE state != 'pending';

CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL,
    number       BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    status       BIGINT,
    error        TEXT,
    PRIMARY KEY (delivery_id, number)
);

CREATE TABLE webhook_disabled (
    url          TEXT PRIMARY KEY NOT NULL,
    at           BIGINT NOT NULL,
    reason       TEXT NOT NULL
);

CREATE TABLE files (
    id          TEXT PRIMARY KEY NOT NULL,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    tenant      TEXT NOT NULL DEFAULT 'default'
);

CREATE TABLE batches (
    id                TEXT PRIMARY KEY NOT NULL,
    endpoint          TEXT NOT NULL,
    input_file_id     TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status            TEXT NOT NULL,
    metadata          TEXT NOT NULL DEFAULT '{}',
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    in_progress_at    BIGINT,
    finalizing_at     BIGINT,
    completed_at      BIGINT,
    failed_at         BIGINT,
    cancelling_at     BIGINT,
    cancelled_at      BIGINT,
    expired_at        BIGINT,
    output_file_id    TEXT,
    error_file_id     TEXT,
    error             TEXT,
    lines_read        BIGINT NOT NULL DEFAULT 0,
    input_done        BIGINT NOT NULL DEFAULT 0,
    lease_until       BIGINT NOT NULL DEFAULT 0,
    tenant            TEXT NOT NULL DEFAULT 'default'
);

CREATE INDEX batches_created ON batches (created_at DESC, id DESC);

CREATE TABLE batch_items (
    batch_id      TEXT NOT NULL,
    line          BIGINT NOT NULL,
    custom_id     TEXT NOT NULL,
    job_id        TEXT,
    error_code    TEXT,
    error_message TEXT,
    PRIMARY KEY (batch_id, line)
);

CREATE TABLE budgets (
    tenant          TEXT NOT NULL,
    period_start    BIGINT NOT NULL,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    spent_micros    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, period_start)
);

CREATE TABLE reservations (
    job_id        TEXT PRIMARY KEY NOT NULL,
    tenant        TEXT NOT NULL,
    period_start  BIGINT NOT NULL,
    micros        BIGINT NOT NULL
);

CREATE TABLE rate_limits (
    key  TEXT PRIMARY KEY NOT NULL,
    tat  BIGINT NOT NULL
);

CREATE TABLE tenant_slots (
    tenant  TEXT PRIMARY KEY NOT NULL,
    used    BIGINT NOT NULL
);

CREATE TABLE slot_holders (
    job_id  TEXT PRIMARY KEY NOT NULL,
    tenant  TEXT NOT NULL
);

CREATE TABLE tenants (
    name        TEXT PRIMARY KEY NOT NULL,
    limits      TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant      TEXT,
    role        TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    digest      BYTEA NOT NULL,
    limits      TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at);
