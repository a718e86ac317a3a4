//! The SQL text of every statement on runs, change records, creation jobs
//! and bulk jobs, with the schema spliced in once per store. The schema
//! itself is in `migrations`.

use fielding_core::{BulkJobStatus, JobState};

use crate::schema_name::SchemaName;

/// The columns of `fielding_runs`, in the order `codec::decode_run` reads them.
const RUN_COLUMNS: &str = "id, account_id, project_id, target_group_id, start_fielding_at, end_fielding_at, \
                           status, version, last_changed_at, last_changed_by";

/// The columns of `change_records`, in the order `codec::decode_change` reads them.
const CHANGE_COLUMNS: &str = "run_id, version, action, changed_at, changed_by, status_from, status_to, \
                              start_from, start_to, end_from, end_to";

/// The scope columns of `change_records` (what the feed is read by). Every
/// write fills them from parameters it already binds for the run (the
/// feed position, `txid` and `seq`, comes from the columns' defaults).
const CHANGE_SCOPE: &str = "account_id, project_id, target_group_id";

/// The columns of `fielding_run_jobs`, in the order `codec::decode_job`
/// reads them and `jobs::create_job` binds them.
const JOB_COLUMNS: &str = "id, account_id, project_id, target_group_id, kind, idempotency_key, start_fielding_at, \
                           end_fielding_at, fielding_run_id, created_at, created_by, trace_id, status, failure_code, \
                           failure_description";

/// The SQL text of every statement on runs and change records (and, in
/// `jobs`, on creation jobs), with the schema spliced in once.
pub(crate) struct Statements {
    pub(crate) insert: String,
    pub(crate) get: String,
    pub(crate) find: String,
    pub(crate) cas: String,
    pub(crate) version: String,
    pub(crate) scope_taken: String,
    pub(crate) changes: String,
    pub(crate) jobs: JobStatements,
    pub(crate) bulk: BulkStatements,
    pub(crate) feed: FeedStatements,
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let runs = format!("{s}.fielding_runs");
        let records = format!("{s}.change_records");
        let scope = "account_id = $2 AND project_id = $3 AND target_group_id = $4";
        Self {
            // One statement, so one implicit transaction: both rows or neither.
            // The record's scope is the run's ($2 to $4).
            insert: format!(
                "WITH run AS (INSERT INTO {runs} ({RUN_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id) \
                 INSERT INTO {records} ({CHANGE_COLUMNS}, {CHANGE_SCOPE}) \
                 SELECT run.id, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $2, $3, $4 FROM run"
            ),
            get: format!("SELECT {RUN_COLUMNS} FROM {runs} WHERE id = $1 AND {scope}"),
            find: format!(
                "SELECT {RUN_COLUMNS} FROM {runs} WHERE account_id = $1 AND project_id = $2 AND target_group_id = $3"
            ),
            // The conditional update and the change record in one statement:
            // the record is inserted only for the row the update touched. Its
            // scope is the one the update matched ($2 to $4).
            cas: format!(
                "WITH upd AS (UPDATE {runs} SET start_fielding_at = $5, end_fielding_at = $6, status = $7, \
                 version = $8, last_changed_at = $9, last_changed_by = $10 \
                 WHERE id = $1 AND {scope} AND version = $11 RETURNING id) \
                 INSERT INTO {records} ({CHANGE_COLUMNS}, {CHANGE_SCOPE}) \
                 SELECT upd.id, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $2, $3, $4 FROM upd"
            ),
            version: format!("SELECT version FROM {runs} WHERE id = $1 AND {scope}"),
            scope_taken: format!(
                "SELECT EXISTS (SELECT 1 FROM {runs} WHERE account_id = $1 AND project_id = $2 AND target_group_id = $3)"
            ),
            changes: format!(
                "SELECT {CHANGE_COLUMNS} FROM {records} WHERE run_id = $1 \
                 AND EXISTS (SELECT 1 FROM {runs} WHERE id = $1 AND {scope}) ORDER BY version"
            ),
            jobs: JobStatements::new(schema),
            bulk: BulkStatements::new(schema),
            feed: FeedStatements::new(schema),
        }
    }
}

/// The SQL of the job operations, with the schema spliced in once.
pub(crate) struct JobStatements {
    pub(crate) create: String,
    pub(crate) by_key: String,
    pub(crate) get: String,
    pub(crate) finish: String,
    pub(crate) expire: String,
}

impl JobStatements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let jobs = format!("{}.fielding_run_jobs", schema.quoted());
        let at = "id = $1 AND account_id = $2 AND project_id = $3 AND target_group_id = $4";
        let processing = JobState::PROCESSING;
        Self {
            // A job handed over already finished counts as finished when it
            // was created.
            create: format!(
                "INSERT INTO {jobs} ({JOB_COLUMNS}, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 CASE WHEN $13 = '{processing}' THEN NULL ELSE $10 END) \
                 ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING id"
            ),
            by_key: format!("SELECT {JOB_COLUMNS} FROM {jobs} WHERE account_id = $1 AND idempotency_key = $2"),
            get: format!("SELECT {JOB_COLUMNS} FROM {jobs} WHERE {at}"),
            finish: format!(
                "UPDATE {jobs} SET status = $5, failure_code = $6, failure_description = $7, finished_at = $8 \
                 WHERE {at} AND status = '{processing}' RETURNING {JOB_COLUMNS}"
            ),
            // At most $2 jobs finished before $1, oldest first through the
            // partial index on finished_at. SKIP LOCKED: two instances
            // sweeping at once take different rows instead of queueing on
            // each other's. The status test is a second guard (the CHECK
            // already keeps processing jobs out of the index). The key is a
            // column of the row, so it goes with it.
            expire: format!(
                "DELETE FROM {jobs} WHERE id IN (SELECT id FROM {jobs} \
                 WHERE finished_at < $1 AND status <> '{processing}' \
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }

    #[cfg(test)]
    fn all(&self) -> [&str; 5] {
        [&self.create, &self.by_key, &self.get, &self.finish, &self.expire]
    }
}

/// The columns of `fielding_bulk_jobs` a job is read from and created
/// with, in the order `bulk::decode_job` reads them and `bulk::create`
/// binds them.
const BULK_JOB_COLUMNS: &str = "id, account_id, project_id, action, idempotency_key, created_at, created_by, \
                                trace_id, status";

/// The SQL of the bulk-job operations, with the schema spliced in once.
pub(crate) struct BulkStatements {
    pub(crate) create: String,
    pub(crate) by_key: String,
    pub(crate) get: String,
    pub(crate) claim: String,
    pub(crate) renew: String,
    pub(crate) read: String,
    pub(crate) lock: String,
    pub(crate) write: String,
    pub(crate) versions: String,
    pub(crate) finish: String,
    pub(crate) expire: String,
}

impl BulkStatements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let jobs = format!("{s}.fielding_bulk_jobs");
        let items = format!("{s}.fielding_bulk_job_items");
        let runs = format!("{s}.fielding_runs");
        let records = format!("{s}.change_records");
        let processing = BulkJobStatus::Processing.as_str();
        let at = "id = $1 AND account_id = $2 AND project_id = $3";
        // A job row with its items as two arrays in submission order: one
        // row however many items, instead of the job's columns repeated on
        // every item's row.
        let with_items = |from: &str| {
            format!(
                "SELECT {BULK_JOB_COLUMNS}, \
                 ARRAY(SELECT target_group_id FROM {items} i WHERE i.job_id = j.id ORDER BY position), \
                 ARRAY(SELECT outcome FROM {items} i WHERE i.job_id = j.id ORDER BY position) \
                 FROM {from}"
            )
        };
        Self {
            // The job and its items in one statement, so one implicit
            // transaction: all of it or none. When the key is taken the
            // job insert returns no row, so no item is inserted either.
            create: format!(
                "WITH job AS (INSERT INTO {jobs} ({BULK_JOB_COLUMNS}, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 CASE WHEN $9 = '{processing}' THEN NULL ELSE $6 END) \
                 ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING id), \
                 added AS (INSERT INTO {items} (job_id, position, target_group_id, outcome) \
                 SELECT job.id, item.ordinality - 1, item.target_group_id, item.outcome FROM job, \
                 UNNEST($10::text[], $11::text[]) WITH ORDINALITY AS item(target_group_id, outcome, ordinality) \
                 RETURNING 1) \
                 SELECT (SELECT count(*) FROM job), (SELECT count(*) FROM added)"
            ),
            by_key: format!(
                "{} WHERE account_id = $1 AND idempotency_key = $2",
                with_items(&format!("{jobs} j"))
            ),
            get: format!("{} WHERE {at}", with_items(&format!("{jobs} j"))),
            // The oldest processing job nobody holds, through the partial
            // index. SKIP LOCKED: claimers running at once take different
            // jobs instead of queueing behind each other's row lock; and
            // under READ COMMITTED a row whose claim was committed after
            // this statement's snapshot is re-checked against its new
            // lease before it is locked, so it is not taken twice.
            claim: format!(
                "WITH claimed AS (UPDATE {jobs} SET claim_token = $1, lease_until = $2 \
                 WHERE id = (SELECT id FROM {jobs} WHERE status = '{processing}' \
                 AND (claim_token IS NULL OR lease_until <= $3) \
                 ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *) {}",
                with_items("claimed j")
            ),
            renew: format!(
                "UPDATE {jobs} SET lease_until = $5 \
                 WHERE {at} AND claim_token = $4 AND status = '{processing}'"
            ),
            // A batch's reads, before it takes any lock: each asked target
            // group's recorded outcome (no row: not an item of the job) and,
            // for the pending ones, the run. One lookup per target group on
            // the full unique key (a LATERAL join, not `target_group_id =
            // ANY($4)`: with `= ANY` on the key's last column the planner may
            // keep it as a filter over the (account, project) prefix, and
            // with stale statistics (a project whose runs were just created)
            // it did, reading every run of the project in each batch;
            // docs/benchmarks.md, bulk jobs).
            read: format!(
                "SELECT t.target_group_id, i.outcome, r.* FROM UNNEST($4::text[]) AS t(target_group_id) \
                 CROSS JOIN LATERAL (SELECT outcome FROM {items} \
                 WHERE job_id = $1 AND target_group_id = t.target_group_id) i \
                 LEFT JOIN LATERAL (SELECT {RUN_COLUMNS} FROM {runs} WHERE i.outcome IS NULL \
                 AND account_id = $2 AND project_id = $3 AND target_group_id = t.target_group_id) r ON true"
            ),
            // Taken after the reads, before the write: fences out a runner
            // whose token was replaced, and makes two batches of one job
            // write one after the other.
            lock: format!(
                "SELECT id FROM {jobs} WHERE {at} AND claim_token = $4 AND status = '{processing}' FOR UPDATE"
            ),
            // Every run write of a batch, their change records and the
            // items' outcomes in one statement. Each update checks its
            // expected version (the runs were read without a lock, so a
            // concurrent writer may have moved one since); the counts tell
            // the caller whether every row was written. The records' scope
            // is their run's, returned by its update.
            //
            // Rows are found with `= ANY(array)` on the leading columns of
            // a unique index (runs by id, items by job and target group):
            // one index descent per row, whatever the planner's estimates.
            // Joining on the UNNEST alone, with the job's or the project's
            // prefix as the only index condition, let stale statistics (a
            // job's items are always freshly inserted; a project's runs may
            // be) pick a scan of the whole prefix per batch: 10,000-item
            // jobs went from linear to quadratic (docs/benchmarks.md). The
            // runs' scope needs no second check here: they were read under
            // it in this transaction (a run never changes scope), and the
            // adapter refuses a write of any run but the one read. The
            // caller sorts $4 by id, so whichever way the plan visits the
            // runs (the array's order or the index's) it locks them in id
            // order, and two batches over overlapping runs cannot deadlock.
            write: format!(
                "WITH next AS (SELECT * FROM UNNEST($4::text[], $5::timestamptz[], $6::timestamptz[], $7::text[], \
                 $8::bigint[], $9::timestamptz[], $10::uuid[], $11::bigint[]) \
                 AS n(id, start_fielding_at, end_fielding_at, status, version, last_changed_at, last_changed_by, \
                 expected)), \
                 upd AS (UPDATE {runs} r SET start_fielding_at = next.start_fielding_at, \
                 end_fielding_at = next.end_fielding_at, status = next.status, version = next.version, \
                 last_changed_at = next.last_changed_at, last_changed_by = next.last_changed_by \
                 FROM next WHERE r.id = ANY($4::text[]) AND r.id = next.id \
                 AND r.version = next.expected \
                 RETURNING r.id, r.account_id, r.project_id, r.target_group_id), \
                 rec AS (INSERT INTO {records} ({CHANGE_COLUMNS}, {CHANGE_SCOPE}) \
                 SELECT c.run_id, c.version, c.action, c.changed_at, c.changed_by, c.status_from, c.status_to, \
                 c.start_from, c.start_to, c.end_from, c.end_to, upd.account_id, upd.project_id, \
                 upd.target_group_id \
                 FROM UNNEST($12::text[], $13::bigint[], $14::text[], $15::timestamptz[], $16::uuid[], \
                 $17::text[], $18::text[], $19::timestamptz[], $20::timestamptz[], $21::timestamptz[], \
                 $22::timestamptz[]) AS c(run_id, version, action, changed_at, changed_by, status_from, status_to, \
                 start_from, start_to, end_from, end_to) JOIN upd ON upd.id = c.run_id RETURNING 1), \
                 done AS (UPDATE {items} i SET outcome = o.outcome \
                 FROM UNNEST($23::text[], $24::text[]) AS o(target_group_id, outcome) \
                 WHERE i.job_id = $3 AND i.target_group_id = ANY($23::text[]) \
                 AND i.target_group_id = o.target_group_id AND i.outcome IS NULL RETURNING 1) \
                 SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM rec), (SELECT count(*) FROM done)"
            ),
            // After a write that missed runs: their versions now (a new
            // statement, so it sees what committed meanwhile).
            versions: format!("SELECT id, version FROM {runs} WHERE id = ANY($1::text[])"),
            finish: format!(
                "UPDATE {jobs} SET status = $5, finished_at = $6, claim_token = NULL, lease_until = NULL \
                 WHERE {at} AND claim_token = $4 AND status = '{processing}'"
            ),
            // As for creation jobs: the oldest finished jobs, SKIP LOCKED
            // so that sweepers share the work; never a processing one. The
            // items go with their job (ON DELETE CASCADE), the key is a
            // column of the row.
            expire: format!(
                "DELETE FROM {jobs} WHERE id IN (SELECT id FROM {jobs} \
                 WHERE finished_at < $1 AND status <> '{processing}' \
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
        }
    }

    #[cfg(test)]
    fn all(&self) -> [&str; 11] {
        [
            &self.create,
            &self.by_key,
            &self.get,
            &self.claim,
            &self.renew,
            &self.read,
            &self.lock,
            &self.write,
            &self.versions,
            &self.finish,
            &self.expire,
        ]
    }
}

/// What the `action` column says on the feed read's row carrying the
/// snapshot's xmin (in `txid`).
pub(crate) const FEED_XMIN: &str = "feed:xmin";

/// What the `action` column says on the feed read's row carrying the
/// account's pruning horizon (in `txid` and `seq`), if it has one.
pub(crate) const FEED_HORIZON: &str = "feed:horizon";

/// The SQL of the change feed: reading it, pruning it, and consumers'
/// checkpoints (see `feed`).
pub(crate) struct FeedStatements {
    pub(crate) read: String,
    pub(crate) prune: String,
    pub(crate) load_checkpoint: String,
    pub(crate) save_checkpoint: String,
}

impl FeedStatements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let records = format!("{s}.change_records");
        let horizons = format!("{s}.feed_horizons");
        let checkpoints = format!("{s}.feed_checkpoints");
        // A bound row's columns after txid and seq: NULL project, target
        // group, run id and version, then (after `action`) NULL for the
        // rest of a change record's columns, typed as the records' are.
        let bound_tail = "NULL::text, NULL::text, NULL::text, NULL::bigint, ";
        let bound_rest = ", NULL::timestamptz, NULL::uuid, NULL::text, NULL::text, NULL::timestamptz, \
                          NULL::timestamptz, NULL::timestamptz, NULL::timestamptz";
        Self {
            // One statement, so one snapshot for all of it: the snapshot's
            // xmin (every transaction below it has ended, so no record below
            // it can still appear), the account's pruning horizon, and the
            // records after the reader's cursor ($2, $3; from the horizon
            // when $2 is NULL) and below xmin, at most $4 of them, through
            // the (account_id, txid, seq) index.
            //
            // The xmin row carries the snapshot's xmax as its seq: no
            // transaction id at or past it has been handed out, so a
            // cursor beyond it is from another database.
            //
            // xmin and the horizon come as rows of their own in the
            // records' columns (no run id; `action` names them: see
            // `FEED_XMIN`), not as columns on every record: the page then
            // costs what a hand-written SELECT of the records costs, and
            // xmin is there also when no record qualifies.
            read: format!(
                "WITH h AS (SELECT txid, seq FROM {horizons} WHERE account_id = $1) \
                 SELECT pg_snapshot_xmin(pg_current_snapshot()), \
                 pg_snapshot_xmax(pg_current_snapshot())::text::bigint, {bound_tail}'{FEED_XMIN}'{bound_rest} \
                 UNION ALL SELECT txid, seq, {bound_tail}'{FEED_HORIZON}'{bound_rest} FROM h \
                 UNION ALL (SELECT txid, seq, project_id, target_group_id, {CHANGE_COLUMNS} FROM {records} \
                 WHERE account_id = $1 \
                 AND (txid, seq) > (COALESCE($2::xid8, (SELECT txid FROM h), '0'::xid8), \
                 CASE WHEN $2::xid8 IS NULL THEN COALESCE((SELECT seq FROM h), 0) ELSE $3::bigint END) \
                 AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY txid, seq LIMIT $4)"
            ),
            // At most $2 records made before $1, oldest first, and each
            // pruned account's horizon raised to the highest position
            // removed, in one statement (one transaction): a reader sees
            // the records or the horizon that replaces them, never neither.
            // Only records below the snapshot's xmin go, so the horizon
            // stays below every record still to appear. SKIP LOCKED:
            // pruners running at once take different records; horizons are
            // raised in account order, so they cannot deadlock on those.
            prune: format!(
                "WITH gone AS (DELETE FROM {records} WHERE (run_id, version) IN \
                 (SELECT run_id, version FROM {records} \
                 WHERE changed_at < $1 AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY changed_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING account_id, txid, seq), \
                 top AS (SELECT DISTINCT ON (account_id) account_id, txid, seq FROM gone \
                 ORDER BY account_id, txid DESC, seq DESC), \
                 raised AS (INSERT INTO {horizons} AS h (account_id, txid, seq) \
                 SELECT account_id, txid, seq FROM top ORDER BY account_id \
                 ON CONFLICT (account_id) DO UPDATE SET \
                 txid = CASE WHEN (EXCLUDED.txid, EXCLUDED.seq) > (h.txid, h.seq) THEN EXCLUDED.txid ELSE h.txid END, \
                 seq = CASE WHEN (EXCLUDED.txid, EXCLUDED.seq) > (h.txid, h.seq) THEN EXCLUDED.seq ELSE h.seq END \
                 RETURNING 1) \
                 SELECT count(*) FROM gone"
            ),
            load_checkpoint: format!(
                "SELECT txid, seq::text FROM {checkpoints} WHERE account_id = $1 AND consumer = $2"
            ),
            save_checkpoint: format!(
                "INSERT INTO {checkpoints} (account_id, consumer, txid, seq) VALUES ($1, $2, $3, $4::numeric) \
                 ON CONFLICT (account_id, consumer) DO UPDATE \
                 SET txid = EXCLUDED.txid, seq = EXCLUDED.seq, saved_at = now()"
            ),
        }
    }

    #[cfg(test)]
    fn all(&self) -> [&str; 4] {
        [&self.read, &self.prune, &self.load_checkpoint, &self.save_checkpoint]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_qualify_every_table_with_the_quoted_schema() {
        let sql = Statements::new(&SchemaName::new("env_a").unwrap());
        for text in [
            &sql.insert,
            &sql.get,
            &sql.find,
            &sql.cas,
            &sql.version,
            &sql.scope_taken,
            &sql.changes,
        ] {
            assert!(text.contains("\"env_a\".fielding_runs") || text.contains("\"env_a\".change_records"));
            assert!(
                !text.contains(" fielding_runs ") && !text.contains(" change_records "),
                "{text}"
            );
        }
    }

    #[test]
    fn statements_qualify_the_table_with_the_quoted_schema() {
        let sql = JobStatements::new(&SchemaName::new("env_a").unwrap());
        for text in sql.all() {
            assert!(text.contains("\"env_a\".fielding_run_jobs"), "{text}");
            assert!(!text.contains(" fielding_run_jobs "), "{text}");
        }
    }

    #[test]
    fn expiry_never_matches_the_core_processing_status() {
        let sql = JobStatements::new(&SchemaName::new("env_a").unwrap());
        assert!(sql.expire.contains("AND status <> 'Processing'"), "{}", sql.expire);
    }

    #[test]
    fn finish_only_matches_the_core_processing_status() {
        let sql = JobStatements::new(&SchemaName::new("env_a").unwrap());
        assert!(
            sql.finish.contains("AND status = 'Processing' RETURNING"),
            "{}",
            sql.finish
        );
    }

    #[test]
    fn bulk_statements_qualify_every_table_with_the_quoted_schema() {
        let sql = BulkStatements::new(&SchemaName::new("env_a").unwrap());
        for text in sql.all() {
            assert!(text.contains("\"env_a\"."), "{text}");
            for table in [
                "fielding_bulk_jobs",
                "fielding_bulk_job_items",
                "fielding_runs",
                "change_records",
            ] {
                assert!(!text.contains(&format!(" {table} ")), "{text}");
                assert!(!text.contains(&format!(" {table}(")), "{text}");
            }
        }
    }

    #[test]
    fn bulk_claims_and_expiry_follow_the_core_processing_status() {
        let sql = BulkStatements::new(&SchemaName::new("env_a").unwrap());
        assert!(sql.claim.contains("WHERE status = 'Processing'"), "{}", sql.claim);
        assert!(sql.claim.contains("FOR UPDATE SKIP LOCKED"), "{}", sql.claim);
        assert!(sql.expire.contains("AND status <> 'Processing'"), "{}", sql.expire);
        for text in [&sql.renew, &sql.lock, &sql.finish] {
            assert!(
                text.contains("AND claim_token = $4 AND status = 'Processing'"),
                "{text}"
            );
        }
    }

    #[test]
    fn feed_statements_qualify_every_table_with_the_quoted_schema() {
        let sql = FeedStatements::new(&SchemaName::new("env_a").unwrap());
        for text in sql.all() {
            assert!(text.contains("\"env_a\"."), "{text}");
            for table in ["change_records", "feed_horizons", "feed_checkpoints"] {
                assert!(!text.contains(&format!(" {table} ")), "{text}");
            }
        }
    }
}
