-- Places among jobs admitted and not yet ended are held by tenants and by
-- API keys alike (`key:<id>`), and a job may hold one of each.
CREATE TABLE places (
    holder  TEXT PRIMARY KEY NOT NULL,
    used    INTEGER NOT NULL
);
INSERT INTO places (holder, used) SELECT tenant, used FROM tenant_slots;
DROP TABLE tenant_slots;

CREATE TABLE place_holders (
    job_id  TEXT NOT NULL,
    holder  TEXT NOT NULL,
    PRIMARY KEY (job_id, holder)
);
INSERT INTO place_holders (job_id, holder) SELECT job_id, tenant FROM slot_holders;
DROP TABLE slot_holders;

-- The key that submitted a job, whose token limit its real usage corrects.
ALTER TABLE jobs ADD COLUMN api_key TEXT;
