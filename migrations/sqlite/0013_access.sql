-- Tenants made through the admin API (the configuration's tenants need no
-- row), with rate limits that replace the configuration's when set.
CREATE TABLE tenants (
    name        TEXT PRIMARY KEY NOT NULL,
    -- RateLimits as JSON; NULL keeps the configuration's.
    limits      TEXT,
    created_at  INTEGER NOT NULL
);

-- API keys `sy_<id>_<secret>`: only an HMAC-SHA256 of the secret under the
-- server's pepper is kept.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    -- NULL for a key that spans tenants (admin, operator).
    tenant      TEXT,
    role        TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    digest      BLOB NOT NULL,
    -- The key's own RateLimits as JSON, on top of its tenant's.
    limits      TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at);

-- Files and batches belong to the tenant that made them.
ALTER TABLE files ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE batches ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
