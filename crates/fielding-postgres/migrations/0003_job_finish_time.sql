-- When a job's outcome was recorded: NULL exactly while it is processing.
-- Job expiry (`expire_jobs`) removes finished jobs by this time, oldest
-- first, through the partial index (processing jobs are not in it).
ALTER TABLE {schema}.fielding_run_jobs ADD COLUMN finished_at timestamptz;

-- Jobs finished before this migration: their finish time was not kept.
-- Jobs finish before their submission returns, so the creation time is the
-- closest value there is.
UPDATE {schema}.fielding_run_jobs SET finished_at = created_at WHERE status <> 'Processing';

ALTER TABLE {schema}.fielding_run_jobs ADD CONSTRAINT fielding_run_jobs_finished
    CHECK ((status = 'Processing') = (finished_at IS NULL));

CREATE INDEX fielding_run_jobs_finished_at ON {schema}.fielding_run_jobs (finished_at)
    WHERE finished_at IS NOT NULL;
