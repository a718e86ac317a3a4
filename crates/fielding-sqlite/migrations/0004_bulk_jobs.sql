-- Bulk jobs (`create_bulk_job` ... `expire_bulk_jobs`): one row per job,
-- one row per target group of a job.
--
-- The claim is the holder's token and its lease: both NULL when nobody
-- holds the job (never claimed, or finished). `finished_at_ms` is NULL
-- while the job is processing and is what expiry goes by.
CREATE TABLE fielding_bulk_jobs (
    id              TEXT    NOT NULL PRIMARY KEY,
    account_id      INTEGER NOT NULL,
    project_id      TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    created_by      TEXT    NOT NULL,
    trace_id        TEXT,
    status          TEXT    NOT NULL CHECK (status IN ('Processing', 'Completed', 'Failed')),
    claim_token     TEXT,
    lease_until_ms  INTEGER,
    finished_at_ms  INTEGER,
    CONSTRAINT fielding_bulk_jobs_idempotency_key UNIQUE (account_id, idempotency_key),
    CONSTRAINT fielding_bulk_jobs_claim CHECK ((claim_token IS NULL) = (lease_until_ms IS NULL))
) STRICT, WITHOUT ROWID;

-- What a claim walks: processing jobs, oldest first. Jobs held under a
-- live lease are skipped by the scan; there are at most as many of them as
-- there are runners.
CREATE INDEX fielding_bulk_jobs_claimable ON fielding_bulk_jobs (created_at_ms, id)
    WHERE status = 'Processing';

-- What expiry walks: finished jobs, oldest finish first.
CREATE INDEX fielding_bulk_jobs_finished_at ON fielding_bulk_jobs (finished_at_ms)
    WHERE finished_at_ms IS NOT NULL;

-- The items in submission order (`position`), each target group once per
-- job. Deleting a job deletes its items (the adapter deletes them
-- explicitly too, since SQLite enforces foreign keys only when asked).
CREATE TABLE fielding_bulk_job_items (
    job_id          TEXT    NOT NULL REFERENCES fielding_bulk_jobs (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL CHECK (position >= 0),
    target_group_id TEXT    NOT NULL,
    outcome         TEXT,
    PRIMARY KEY (job_id, position),
    CONSTRAINT fielding_bulk_job_items_target_group UNIQUE (job_id, target_group_id)
) STRICT, WITHOUT ROWID;
