-- The key that made a batch: its lines take from that key's limits.
ALTER TABLE batches ADD COLUMN api_key TEXT;
