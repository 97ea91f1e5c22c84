-- Rate limits (GCRA): per limited key (`<tenant>:rpm`, `<tenant>:tpm`) the
-- theoretical arrival time of the next request. One conditional update
-- takes a request, so brokers sharing the database share the limit.
CREATE TABLE rate_limits (
    key  TEXT PRIMARY KEY NOT NULL,
    tat  INTEGER NOT NULL
);

-- What admission estimated a job's tokens at, so that its real usage can
-- correct the tokens-per-minute limit.
ALTER TABLE jobs ADD COLUMN tokens_estimate INTEGER;
