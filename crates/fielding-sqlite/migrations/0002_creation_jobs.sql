
CREATE TABLE fielding_run_jobs (
    id                  TEXT    NOT NULL PRIMARY KEY,
    account_id          INTEGER NOT NULL,
    project_id          TEXT    NOT NULL,
    target_group_id     TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    idempotency_key     TEXT    NOT NULL,
    start_ms            INTEGER,
    end_ms              INTEGER NOT NULL,
    fielding_run_id     TEXT    NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    created_by          TEXT    NOT NULL,
    trace_id            TEXT,
    status              TEXT    NOT NULL CHECK (status IN ('Processing', 'Completed', 'Failed')),
    failure_code        TEXT,
    failure_description TEXT,
    CONSTRAINT fielding_run_jobs_idempotency_key UNIQUE (account_id, idempotency_key),
    CONSTRAINT fielding_run_jobs_request CHECK (
        (kind <> 'launch-from-draft' OR start_ms IS NULL)
        AND (kind <> 'schedule-from-draft' OR start_ms IS NOT NULL)
    ),
    CONSTRAINT fielding_run_jobs_failure CHECK (
        (status = 'Failed') = (failure_code IS NOT NULL)
        AND (failure_code IS NULL) = (failure_description IS NULL)
    )
) STRICT, WITHOUT ROWID;
