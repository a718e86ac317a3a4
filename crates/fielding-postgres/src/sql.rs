//! The SQL text of every statement on runs, change records and creation
//! jobs, with the schema spliced in once per store. The schema itself is
//! in `migrations`.

use fielding_core::JobState;

use crate::schema_name::SchemaName;

/// The columns of `fielding_runs`, in the order `codec::decode_run` reads them.
const RUN_COLUMNS: &str = "id, account_id, project_id, target_group_id, start_fielding_at, end_fielding_at, \
                           status, version, last_changed_at, last_changed_by";

/// The columns of `change_records`, in the order `codec::decode_change` reads them.
const CHANGE_COLUMNS: &str = "run_id, version, action, changed_at, changed_by, status_from, status_to, \
                              start_from, start_to, end_from, end_to";

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
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let runs = format!("{s}.fielding_runs");
        let records = format!("{s}.change_records");
        let scope = "account_id = $2 AND project_id = $3 AND target_group_id = $4";
        Self {
            // One statement, so one implicit transaction: both rows or neither.
            insert: format!(
                "WITH run AS (INSERT INTO {runs} ({RUN_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id) \
                 INSERT INTO {records} ({CHANGE_COLUMNS}) \
                 SELECT run.id, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20 FROM run"
            ),
            get: format!("SELECT {RUN_COLUMNS} FROM {runs} WHERE id = $1 AND {scope}"),
            find: format!(
                "SELECT {RUN_COLUMNS} FROM {runs} WHERE account_id = $1 AND project_id = $2 AND target_group_id = $3"
            ),
            // The conditional update and the change record in one statement:
            // the record is inserted only for the row the update touched.
            cas: format!(
                "WITH upd AS (UPDATE {runs} SET start_fielding_at = $5, end_fielding_at = $6, status = $7, \
                 version = $8, last_changed_at = $9, last_changed_by = $10 \
                 WHERE id = $1 AND {scope} AND version = $11 RETURNING id) \
                 INSERT INTO {records} ({CHANGE_COLUMNS}) \
                 SELECT upd.id, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21 FROM upd"
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
}
