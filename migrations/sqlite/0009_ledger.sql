-- The usage table becomes the ledger: each attempt's usage with its cost,
-- priced when it was recorded. Which attempt is charged is read from the
-- job: the one whose result was delivered; any other attempt's usage is
-- waste, kept but not charged.
ALTER TABLE usage ADD COLUMN cost_micros INTEGER NOT NULL DEFAULT 0;
-- Answered from the result cache, at the cache-hit price.
ALTER TABLE usage ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;

CREATE INDEX usage_at ON usage (at);
