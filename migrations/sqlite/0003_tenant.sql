-- The tenant a job belongs to: fair share inside a priority level is per
-- tenant. Jobs recorded before tenants existed belong to `default`.
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
