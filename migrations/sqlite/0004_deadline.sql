-- A job's start deadline, so that one still waiting when it passes can be
-- found and ended `expired` even while no node has room to take it.
ALTER TABLE jobs ADD COLUMN deadline_at INTEGER;

CREATE INDEX jobs_overdue ON jobs (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('queued', 'assigned');
