-- When a job's outcome was recorded: NULL while it is processing. Job
-- expiry (`expire_jobs`) removes finished jobs by this time, oldest first,
-- through the partial index (processing jobs are not in it).
--
-- No CHECK tying it to the status: SQLite tests a CHECK added with a column
-- against the existing rows before the UPDATE below could fill them in,
-- and adding one later means rebuilding the table. The finish statement
-- writes the status and this time together.
ALTER TABLE fielding_run_jobs ADD COLUMN finished_at_ms INTEGER;

-- Jobs finished before this migration: their finish time was not kept.
-- Jobs finish before their submission returns, so the creation time is the
-- closest value there is.
UPDATE fielding_run_jobs SET finished_at_ms = created_at_ms WHERE status <> 'Processing';

CREATE INDEX fielding_run_jobs_finished_at ON fielding_run_jobs (finished_at_ms)
    WHERE finished_at_ms IS NOT NULL;
