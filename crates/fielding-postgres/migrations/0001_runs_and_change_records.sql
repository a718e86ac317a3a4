
CREATE TABLE {schema}.fielding_runs (
    id                text COLLATE "C" NOT NULL,
    account_id        integer NOT NULL CHECK (account_id >= 1),
    project_id        text COLLATE "C" NOT NULL,
    target_group_id   text COLLATE "C" NOT NULL,
    start_fielding_at timestamptz NOT NULL,
    end_fielding_at   timestamptz NOT NULL,
    status            text NOT NULL CHECK (status IN ('scheduled', 'live', 'paused', 'completed')),
    version           bigint NOT NULL CHECK (version >= 1),
    last_changed_at   timestamptz NOT NULL,
    last_changed_by   uuid NOT NULL,
    CONSTRAINT fielding_runs_pkey PRIMARY KEY (id),
    CONSTRAINT fielding_runs_scope_key UNIQUE (account_id, project_id, target_group_id)
) WITH (fillfactor = 80);

CREATE TABLE {schema}.change_records (
    run_id      text COLLATE "C" NOT NULL,
    version     bigint NOT NULL CHECK (version >= 1),
    action      text NOT NULL,
    changed_at  timestamptz NOT NULL,
    changed_by  uuid NOT NULL,
    status_from text,
    status_to   text NOT NULL,
    start_from  timestamptz,
    start_to    timestamptz NOT NULL,
    end_from    timestamptz,
    end_to      timestamptz NOT NULL,
    CONSTRAINT change_records_pkey PRIMARY KEY (run_id, version)
);
