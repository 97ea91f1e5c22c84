-- A rollout's guards read a version's recent jobs and their ledger lines.
CREATE INDEX jobs_model_finished ON jobs (model, finished_at);
