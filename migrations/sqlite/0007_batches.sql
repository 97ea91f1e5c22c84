-- Files uploaded for batches, and batch output. The content is in the NATS
-- object store bucket `files`; this is its catalogue.
CREATE TABLE files (
    id          TEXT PRIMARY KEY NOT NULL,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- OpenAI-style batches: a file of requests run as jobs at batch priority.
CREATE TABLE batches (
    id                TEXT PRIMARY KEY NOT NULL,
    endpoint          TEXT NOT NULL,
    input_file_id     TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    -- validating, in_progress, finalizing, completed, failed, cancelling,
    -- cancelled, expired
    status            TEXT NOT NULL,
    metadata          TEXT NOT NULL DEFAULT '{}',
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    in_progress_at    INTEGER,
    finalizing_at     INTEGER,
    completed_at      INTEGER,
    failed_at         INTEGER,
    cancelling_at     INTEGER,
    cancelled_at      INTEGER,
    expired_at        INTEGER,
    output_file_id    TEXT,
    error_file_id     TEXT,
    -- Why the batch failed as a whole: {code, message}.
    error             TEXT,
    -- Lines of the input file read so far, and whether all were.
    lines_read        INTEGER NOT NULL DEFAULT 0,
    input_done        INTEGER NOT NULL DEFAULT 0,
    -- A broker working on the batch holds it until then.
    lease_until       INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX batches_created ON batches (created_at DESC, id DESC);

-- One row per line of the input: its job, or why it has none.
CREATE TABLE batch_items (
    batch_id      TEXT NOT NULL,
    line          INTEGER NOT NULL,
    custom_id     TEXT NOT NULL,
    job_id        TEXT,
    error_code    TEXT,
    error_message TEXT,
    PRIMARY KEY (batch_id, line)
);
