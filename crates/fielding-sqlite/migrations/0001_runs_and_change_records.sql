
CREATE TABLE fielding_runs (
    id                 TEXT    NOT NULL PRIMARY KEY,
    account_id         INTEGER NOT NULL,
    project_id         TEXT    NOT NULL,
    target_group_id    TEXT    NOT NULL,
    start_ms           INTEGER NOT NULL,
    end_ms             INTEGER NOT NULL,
    status             TEXT    NOT NULL,
    version            INTEGER NOT NULL CHECK (version >= 1),
    last_changed_at_ms INTEGER NOT NULL,
    last_changed_by    TEXT    NOT NULL,
    CONSTRAINT fielding_runs_scope UNIQUE (account_id, project_id, target_group_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE change_records (
    run_id        TEXT    NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    action        TEXT    NOT NULL,
    changed_at_ms INTEGER NOT NULL,
    changed_by    TEXT    NOT NULL,
    status_from   TEXT,
    status_to     TEXT    NOT NULL,
    start_from_ms INTEGER,
    start_to_ms   INTEGER NOT NULL,
    end_from_ms   INTEGER,
    end_to_ms     INTEGER NOT NULL,
    PRIMARY KEY (run_id, version)
) STRICT, WITHOUT ROWID;
