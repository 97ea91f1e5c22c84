-- A job's webhook: where its events go, and which ones (comma-separated).
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
ALTER TABLE jobs ADD COLUMN webhook_events TEXT;

-- One row per event to send, written in the transaction that records the
-- event, so that no event is lost between the record and the delivery.
-- The id is the `webhook-id`: every attempt of one event carries the same.
CREATE TABLE webhook_deliveries (
    id           TEXT PRIMARY KEY NOT NULL,
    job_id       TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    url          TEXT NOT NULL,
    event        TEXT NOT NULL,
    -- The body, fixed when the event happened; each attempt signs it anew.
    payload      TEXT NOT NULL,
    -- pending, delivered, failed (the retry schedule ran out), disabled
    -- (its endpoint answered 410).
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    next_at      INTEGER NOT NULL,
    -- A broker sending it holds it until then.
    lease_until  INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_url ON webhook_deliveries (url, state);

-- Every attempt, as the receiver answered it.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL,
    number       INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status       INTEGER,
    error        TEXT,
    PRIMARY KEY (delivery_id, number)
);

-- Receivers that answered 410 Gone: nothing is sent to them until an
-- operator enables them again.
CREATE TABLE webhook_disabled (
    url          TEXT PRIMARY KEY NOT NULL,
    at           INTEGER NOT NULL,
    reason       TEXT NOT NULL
);
