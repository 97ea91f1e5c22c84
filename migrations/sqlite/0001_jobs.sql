-- Job records: one row per job, moved forward (never back) by the lifecycle
-- events and results that the dispatcher and agents publish.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,
    model           TEXT NOT NULL,
    priority        TEXT NOT NULL,
    source          TEXT NOT NULL,
    status          TEXT NOT NULL,
    -- The admitted job as JSON, kept so that a job whose enqueue was never
    -- confirmed can be published again (outbox).
    job             TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    attempt         INTEGER NOT NULL DEFAULT 0,
    node            TEXT,
    created_at      INTEGER NOT NULL,
    enqueued_at     INTEGER,
    assigned_at     INTEGER,
    started_at      INTEGER,
    finished_at     INTEGER,
    output          TEXT,
    error_code      TEXT,
    error_message   TEXT,
    prompt_tokens   INTEGER,
    completion_tokens INTEGER
);

CREATE INDEX jobs_outbox ON jobs (created_at) WHERE enqueued_at IS NULL AND status = 'queued';

-- Usage per attempt, as the agents reported it; the key makes a redelivered
-- usage event a no-op.
CREATE TABLE usage (
    job_id            TEXT NOT NULL,
    attempt           INTEGER NOT NULL,
    node              TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    engine_ms         INTEGER NOT NULL,
    at                INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
