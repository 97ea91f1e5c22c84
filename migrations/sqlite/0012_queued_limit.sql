-- Jobs a tenant has admitted and not yet ended, for its `max_queued_jobs`:
-- a count per tenant and the jobs that hold a place in it.
CREATE TABLE tenant_slots (
    tenant  TEXT PRIMARY KEY NOT NULL,
    used    INTEGER NOT NULL
);

CREATE TABLE slot_holders (
    job_id  TEXT PRIMARY KEY NOT NULL,
    tenant  TEXT NOT NULL
);
