//! The operations on creation jobs (`create_job`, `get_job`,
//! `finish_job`, `expire_jobs`). Like `runs`, every function runs on a worker thread that
//! owns the connection; the writes run on the writer thread, alone or
//! inside its group's transaction.

use fielding_core::codec::JobRow;
use fielding_core::{FieldingRunJob, IdempotencyKey, JobCreated, JobId, JobOutcome, Scope, StoreError, Timestamp};
use rusqlite::{ffi, params, Connection, OptionalExtension};

use crate::codec::{account, job_params, read_job, UserText};
use crate::error::{extended_code, store_error};
use crate::sql::{expire_jobs_sql, finish_job_sql, job_by_id_sql, job_by_key_sql, INSERT_JOB};

fn job_by_key(conn: &Connection, account_id: i64, key: &IdempotencyKey) -> rusqlite::Result<Option<FieldingRunJob>> {
    conn.prepare_cached(&job_by_key_sql())?
        .query_row(params![account_id, key.as_str()], read_job)
        .optional()
}

fn job_by_id(conn: &Connection, scope: &Scope, id: &JobId) -> rusqlite::Result<Option<FieldingRunJob>> {
    conn.prepare_cached(&job_by_id_sql())?
        .query_row(
            params![
                id.as_str(),
                account(scope),
                scope.project_id.as_str(),
                scope.target_group_id.as_str()
            ],
            read_job,
        )
        .optional()
}

/// The statements of `create_job`, inside the caller's transaction: the
/// insert, and when it inserted nothing (the key is taken) the job that
/// holds the key, read in the same transaction.
pub(crate) fn create_job_rows(tx: &Connection, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
    let op = "create_job";
    let row = JobRow::encode(job);
    let by = UserText::new(&row.created_by);
    let account_id = row.account_id;
    let inserted = tx
        .prepare_cached(INSERT_JOB)
        .and_then(|mut stmt| stmt.execute(job_params(&row, &by)));
    let id_taken = match inserted {
        Ok(1) => return Ok(JobCreated::Created),
        Ok(_) => None,
        // The id is taken: if the key is taken too, the caller needs the
        // job under the key (as the in-memory store reports it).
        Err(err) if extended_code(&err) == Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => Some(err),
        Err(err) => return Err(store_error(op, err)),
    };
    match job_by_key(tx, account_id, &job.idempotency_key).map_err(|e| store_error(op, e))? {
        Some(existing) => Ok(JobCreated::Existing(existing)),
        None => Err(StoreError::Backend {
            message: match &id_taken {
                Some(_) => format!("sqlite create_job: job id {} is already taken", job.id),
                None => format!(
                    "sqlite create_job: the idempotency key {:?} was reported taken but no job holds it",
                    job.idempotency_key.as_str()
                ),
            },
            retryable: false,
            source: id_taken.map(|e| Box::new(e) as _),
        }),
    }
}

/// `get_job`: by id and the full scope, one statement.
pub(crate) fn get_job(conn: &Connection, scope: &Scope, id: &JobId) -> Result<Option<FieldingRunJob>, StoreError> {
    job_by_id(conn, scope, id).map_err(|e| store_error("get_job", e))
}

/// The statements of `finish_job`, inside the caller's transaction: the
/// conditional update (a job no longer processing keeps its outcome), then
/// the job as it now stands.
pub(crate) fn finish_job_rows(
    tx: &Connection,
    scope: &Scope,
    id: &JobId,
    outcome: &JobOutcome,
    finished_at: Timestamp,
) -> Result<Option<FieldingRunJob>, StoreError> {
    let columns = outcome.to_columns();
    tx.prepare_cached(&finish_job_sql())
        .and_then(|mut stmt| {
            stmt.execute(params![
                columns.0,
                columns.1,
                columns.2,
                id.as_str(),
                account(scope),
                scope.project_id.as_str(),
                scope.target_group_id.as_str(),
                finished_at.unix_millis()
            ])
        })
        .map_err(|e| store_error("finish_job", e))?;
    job_by_id(tx, scope, id).map_err(|e| store_error("finish_job", e))
}

/// The statement of `expire_jobs`, inside the caller's transaction: one
/// `DELETE` of at most `limit` rows (a job and its key are one row).
pub(crate) fn expire_jobs_rows(tx: &Connection, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
    // SQLite's LIMIT is an i64; anything larger means "no limit" anyway.
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    tx.prepare_cached(&expire_jobs_sql())
        .and_then(|mut stmt| stmt.execute(params![finished_before.unix_millis(), limit]))
        .map_err(|e| store_error("expire_jobs", e))
}
