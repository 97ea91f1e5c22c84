-- Listing jobs newest first, a page at a time: (created_at, id) is the
-- cursor.
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
