-- The trace the job's admission began, when the broker exports traces:
-- what the console links a job to.
ALTER TABLE jobs ADD COLUMN trace_id TEXT;
