-- Bulk jobs: one action over many target groups, worked in the background
-- by runners that claim a job (a fencing token and a lease) and record each
-- item's outcome in the transaction that writes the item's run.
CREATE TABLE {schema}.fielding_bulk_jobs (
    id              text COLLATE "C" NOT NULL,
    account_id      integer NOT NULL CHECK (account_id >= 1),
    project_id      text COLLATE "C" NOT NULL,
    action          text COLLATE "C" NOT NULL
                    CHECK (action IN ('complete', 'launch', 'pause', 'relaunch', 'resume')),
    idempotency_key text COLLATE "C" NOT NULL,
    created_at      timestamptz NOT NULL,
    created_by      uuid NOT NULL,
    trace_id        text COLLATE "C",
    status          text COLLATE "C" NOT NULL CHECK (status IN ('Processing', 'Completed', 'Failed')),
    -- The holder's fencing token and lease: both or neither, and only
    -- while the job is processing.
    claim_token     uuid,
    lease_until     timestamptz,
    -- When the job's status was recorded: NULL exactly while it is
    -- processing. Bulk-job expiry goes by it.
    finished_at     timestamptz,
    CONSTRAINT fielding_bulk_jobs_pkey PRIMARY KEY (id),
    CONSTRAINT fielding_bulk_jobs_idempotency_key UNIQUE (account_id, idempotency_key),
    CONSTRAINT fielding_bulk_jobs_claim CHECK (
        (claim_token IS NULL) = (lease_until IS NULL)
        AND (status = 'Processing' OR claim_token IS NULL)
    ),
    CONSTRAINT fielding_bulk_jobs_finished CHECK ((status = 'Processing') = (finished_at IS NULL))
);

-- What claims walk: processing jobs, oldest first.
CREATE INDEX fielding_bulk_jobs_processing ON {schema}.fielding_bulk_jobs (created_at, id)
    WHERE status = 'Processing';

-- What expiry walks: finished jobs, by finish time.
CREATE INDEX fielding_bulk_jobs_finished_at ON {schema}.fielding_bulk_jobs (finished_at)
    WHERE finished_at IS NOT NULL;

-- A job's target groups in submission order; `outcome` is NULL while the
-- item is pending.
CREATE TABLE {schema}.fielding_bulk_job_items (
    job_id          text COLLATE "C" NOT NULL
                    REFERENCES {schema}.fielding_bulk_jobs (id) ON DELETE CASCADE,
    position        integer NOT NULL CHECK (position >= 0),
    target_group_id text COLLATE "C" NOT NULL,
    outcome         text COLLATE "C"
                    CHECK (outcome IN ('Updated', 'TargetGroupNotFound', 'StatusTransitionNotAllowed')),
    CONSTRAINT fielding_bulk_job_items_pkey PRIMARY KEY (job_id, position),
    CONSTRAINT fielding_bulk_job_items_target_group UNIQUE (job_id, target_group_id)
);
