
CREATE TABLE {schema}.fielding_run_jobs (
    id                  text COLLATE "C" NOT NULL,
    account_id          integer NOT NULL CHECK (account_id >= 1),
    project_id          text COLLATE "C" NOT NULL,
    target_group_id     text COLLATE "C" NOT NULL,
    kind                text COLLATE "C" NOT NULL,
    idempotency_key     text COLLATE "C" NOT NULL,
    start_fielding_at   timestamptz,
    end_fielding_at     timestamptz NOT NULL,
    fielding_run_id     text COLLATE "C" NOT NULL,
    created_at          timestamptz NOT NULL,
    created_by          uuid NOT NULL,
    trace_id            text COLLATE "C",
    status              text COLLATE "C" NOT NULL CHECK (status IN ('Processing', 'Completed', 'Failed')),
    failure_code        text COLLATE "C",
    failure_description text,
    CONSTRAINT fielding_run_jobs_pkey PRIMARY KEY (id),
    CONSTRAINT fielding_run_jobs_idempotency_key UNIQUE (account_id, idempotency_key),
    CONSTRAINT fielding_run_jobs_request CHECK (
        (kind <> 'launch-from-draft' OR start_fielding_at IS NULL)
        AND (kind <> 'schedule-from-draft' OR start_fielding_at IS NOT NULL)
    ),
    CONSTRAINT fielding_run_jobs_failure CHECK (
        (status = 'Failed') = (failure_code IS NOT NULL)
        AND (failure_code IS NULL) = (failure_description IS NULL)
    )
);
