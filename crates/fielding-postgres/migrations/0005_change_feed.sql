-- The change feed (docs/postgres.md, "Change feed"): every change record
-- gets its run's scope (the feed is read per account) and a feed position
-- (txid, seq): the id of the transaction that wrote it and a number from a
-- sequence, in the order the transaction wrote its records.
ALTER TABLE {schema}.change_records
    ADD COLUMN account_id      integer,
    ADD COLUMN project_id      text COLLATE "C",
    ADD COLUMN target_group_id text COLLATE "C",
    -- Filled by the default in every write: the writing transaction's id,
    -- taken when the transaction first writes. Records written before
    -- this migration get the migration's own transaction id.
    ADD COLUMN txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    ADD COLUMN seq             bigint;

-- Existing records: their run's scope (runs are never deleted, and a
-- record is written only with its run), and sequence numbers by age: by
-- the latest changed_at of the run up to that version (never decreasing
-- along a run, so each run's records keep their version order under the
-- one migration transaction id they share), then run and version. Pruning
-- removes the oldest first and raises the horizon to the highest position
-- removed; numbered by run, a first prune would lift it over most kept
-- records.
UPDATE {schema}.change_records c
SET account_id = r.account_id,
    project_id = r.project_id,
    target_group_id = r.target_group_id,
    seq = o.n
FROM {schema}.fielding_runs r,
     (SELECT run_id, version, row_number() OVER (ORDER BY aged, run_id, version) AS n
      FROM (SELECT run_id, version,
                   max(changed_at) OVER (PARTITION BY run_id ORDER BY version
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS aged
            FROM {schema}.change_records) a) o
WHERE r.id = c.run_id AND o.run_id = c.run_id AND o.version = c.version;

ALTER TABLE {schema}.change_records
    ALTER COLUMN account_id SET NOT NULL,
    ALTER COLUMN project_id SET NOT NULL,
    ALTER COLUMN target_group_id SET NOT NULL,
    ALTER COLUMN seq SET NOT NULL,
    ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY;

-- New records number on after the backfilled ones (no-op on an empty table).
SELECT setval(pg_get_serial_sequence('{schema}.change_records', 'seq'), max(seq))
FROM {schema}.change_records;

-- What the feed reads: an account's records in position order.
CREATE INDEX change_records_feed ON {schema}.change_records (account_id, txid, seq);

-- What pruning walks: the oldest records first.
CREATE INDEX change_records_changed_at ON {schema}.change_records (changed_at);

-- Per account, the highest position pruning has removed: a reader whose
-- cursor lies below it has missed records and is refused.
CREATE TABLE {schema}.feed_horizons (
    account_id integer NOT NULL CHECK (account_id >= 1),
    txid       xid8 NOT NULL,
    seq        bigint NOT NULL,
    CONSTRAINT feed_horizons_pkey PRIMARY KEY (account_id)
);

-- Checkpointed consumers' positions. A consumer may save any position the
-- feed handed out, bookmarks included; `seq` is numeric so that any
-- position (two unsigned 64-bit numbers) round-trips exactly.
CREATE TABLE {schema}.feed_checkpoints (
    account_id integer NOT NULL CHECK (account_id >= 1),
    consumer   text COLLATE "C" NOT NULL,
    txid       xid8 NOT NULL,
    seq        numeric(20, 0) NOT NULL CHECK (seq >= 0 AND seq <= 18446744073709551615),
    saved_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feed_checkpoints_pkey PRIMARY KEY (account_id, consumer)
);
