-- The change feed (`feed`, `prune_changes`, feed checkpoints).
--
-- Each change record gets its account, project and target group (so an
-- account's feed is read without a join) and a `position`: its place in
-- the feed, handed out by `feed_counter` inside the write transaction that
-- appends the record. SQLite runs one write transaction at a time, so the
-- numbering order is the commit order. The counter is a row of its own,
-- never `MAX(position) + 1`: pruning removes the highest records too, and
-- their numbers must never be handed out again.
--
-- The table is rebuilt (SQLite cannot add a NOT NULL column without a
-- default) and now clustered by `(account_id, position)`: an account's
-- feed is one range of the table, and appends go to the end of it. The old
-- key `(run_id, version)` stays unique through an index (what `changes`
-- reads by), and `changed_at_ms` gets one for pruning oldest first.
--
-- Existing records are numbered by age: by the latest `changed_at` of the
-- run up to that version (which never decreases along a run, so each
-- run's versions keep their order), then run and version. Pruning removes
-- the oldest records first and raises the account's horizon to the
-- highest position it removed; numbered by run instead, a first prune
-- would lift the horizon over most kept records, hiding them from readers
-- that start without a cursor. A record whose run is missing (no release
-- ever deleted runs) makes the migration fail on the NOT NULL account
-- rather than vanish.
CREATE TABLE change_records_v5 (
    account_id      INTEGER NOT NULL,
    position        INTEGER NOT NULL CHECK (position >= 1),
    run_id          TEXT    NOT NULL,
    version         INTEGER NOT NULL CHECK (version >= 1),
    project_id      TEXT    NOT NULL,
    target_group_id TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    changed_at_ms   INTEGER NOT NULL,
    changed_by      TEXT    NOT NULL,
    status_from     TEXT,
    status_to       TEXT    NOT NULL,
    start_from_ms   INTEGER,
    start_to_ms     INTEGER NOT NULL,
    end_from_ms     INTEGER,
    end_to_ms       INTEGER NOT NULL,
    PRIMARY KEY (account_id, position)
) STRICT, WITHOUT ROWID;

INSERT INTO change_records_v5 (account_id, position, run_id, version, project_id, target_group_id, action,
                               changed_at_ms, changed_by, status_from, status_to, start_from_ms, start_to_ms,
                               end_from_ms, end_to_ms)
SELECT r.account_id, ROW_NUMBER() OVER (ORDER BY c.aged_ms, c.run_id, c.version), c.run_id, c.version,
       r.project_id, r.target_group_id, c.action, c.changed_at_ms, c.changed_by, c.status_from, c.status_to,
       c.start_from_ms, c.start_to_ms, c.end_from_ms, c.end_to_ms
  FROM (SELECT *, MAX(changed_at_ms) OVER (PARTITION BY run_id ORDER BY version
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS aged_ms
          FROM change_records) c
  LEFT JOIN fielding_runs r ON r.id = c.run_id;

DROP TABLE change_records;
ALTER TABLE change_records_v5 RENAME TO change_records;

CREATE UNIQUE INDEX change_records_run_version ON change_records (run_id, version);
CREATE INDEX change_records_changed_at ON change_records (changed_at_ms);

-- The highest position handed out so far (0: none). One row.
CREATE TABLE feed_counter (
    id            INTEGER NOT NULL PRIMARY KEY CHECK (id = 0),
    last_position INTEGER NOT NULL CHECK (last_position >= 0)
) STRICT;
INSERT INTO feed_counter (id, last_position) SELECT 0, COALESCE(MAX(position), 0) FROM change_records;

-- Per account, the highest position pruned: a cursor below it is expired,
-- and a reader without a cursor starts after it.
CREATE TABLE feed_horizons (
    account_id INTEGER NOT NULL PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 1)
) STRICT, WITHOUT ROWID;

-- Where each named consumer of an account's feed got to (`position` and
-- `minor`: the two numbers of its cursor).
CREATE TABLE feed_checkpoints (
    account_id INTEGER NOT NULL,
    consumer   TEXT    NOT NULL,
    position   INTEGER NOT NULL CHECK (position >= 0),
    minor      INTEGER NOT NULL CHECK (minor >= 0),
    PRIMARY KEY (account_id, consumer)
) STRICT, WITHOUT ROWID;
