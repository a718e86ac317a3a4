//! The statements of creation jobs (`fielding_run_jobs`), and conversion
//! between rows and [`FieldingRunJob`]s. Like `sql`, every function runs on
//! a worker thread that owns the connection; the writes run on the writer
//! thread, inside its transaction.

use fielding_core::{
    AccountId, FieldingRunId, FieldingRunJob, IdempotencyKey, InvalidJobColumns, JobCreated, JobId, JobKind,
    JobOutcome, JobRequest, JobState, JobTraceId, ProjectId, Scope, StoreError, TargetGroupId, UserId,
};
use rusqlite::types::{Type, ValueRef};
use rusqlite::{ffi, params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::error::{extended_code, store_error};
use crate::sql::{bad, opt_timestamp, text, timestamp, Invalid, UserText};

/// The columns of `fielding_run_jobs`, in the order [`read_job`] reads them.
const JOB_COLUMNS: &str = "id, account_id, project_id, target_group_id, kind, idempotency_key, start_ms, end_ms, \
                           fielding_run_id, created_at_ms, created_by, trace_id, status, failure_code, \
                           failure_description";

/// Records a job unless the account has one under its key: the unique key
/// `(account_id, idempotency_key)` decides, so no check-then-insert gap.
const INSERT_JOB: &str = "INSERT INTO fielding_run_jobs (id, account_id, project_id, target_group_id, kind, \
                          idempotency_key, start_ms, end_ms, fielding_run_id, created_at_ms, created_by, trace_id, \
                          status, failure_code, failure_description) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
                          ON CONFLICT (account_id, idempotency_key) DO NOTHING";

/// Records an outcome, only while the job is processing (first one wins).
/// The status columns are the core's ([`JobOutcome::to_columns`]).
fn finish_job_sql() -> String {
    format!(
        "UPDATE fielding_run_jobs SET status = ?1, failure_code = ?2, failure_description = ?3 \
         WHERE id = ?4 AND account_id = ?5 AND project_id = ?6 AND target_group_id = ?7 \
         AND status = '{}'",
        JobState::PROCESSING
    )
}

fn job_by_key_sql() -> String {
    format!("SELECT {JOB_COLUMNS} FROM fielding_run_jobs WHERE account_id = ?1 AND idempotency_key = ?2")
}

fn job_by_id_sql() -> String {
    format!(
        "SELECT {JOB_COLUMNS} FROM fielding_run_jobs \
         WHERE id = ?1 AND account_id = ?2 AND project_id = ?3 AND target_group_id = ?4"
    )
}

fn account(scope: &Scope) -> i64 {
    i64::from(scope.account_id.get())
}

fn opt_text<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<Option<&'r str>> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        value => value.as_str().map(Some).map_err(Into::into),
    }
}

/// A stored job, decoded strictly: a value that does not parse (an unknown
/// kind, status or failure code, a bad id, columns that do not fit
/// together) is a conversion error, never a guess.
fn read_job(row: &Row<'_>) -> rusqlite::Result<FieldingRunJob> {
    let account_id: i64 = row.get(1)?;
    let scope = Scope::new(
        AccountId::new(account_id).map_err(|e| bad(1, Type::Integer, e))?,
        text(row, 2, ProjectId::parse)?,
        text(row, 3, TargetGroupId::parse)?,
    );
    let kind = text(row, 4, |s| {
        JobKind::parse(s).ok_or_else(|| Invalid(format!("unknown job kind {s:?}")))
    })?;
    let idempotency_key = text(row, 5, |s| {
        IdempotencyKey::parse(s).map_err(|e| Invalid(format!("stored idempotency key is invalid: {e}")))
    })?;
    let start = opt_timestamp(row, 6)?;
    let end = timestamp(row, 7)?;
    let request = JobRequest::from_parts(kind, start, end).ok_or_else(|| {
        let has = if start.is_some() { "has" } else { "has no" };
        bad(6, Type::Integer, Invalid(format!("a {kind} job that {has} start")))
    })?;
    let trace_id = match opt_text(row, 11)? {
        None => None,
        Some(s) => {
            Some(JobTraceId::parse(s).ok_or_else(|| bad(11, Type::Text, Invalid(format!("bad trace id {s:?}"))))?)
        }
    };
    let status = row.get_ref(12)?.as_str()?;
    let code = opt_text(row, 13)?;
    let description = opt_text(row, 14)?;
    let state = JobState::from_columns(status, code, description).map_err(|e| {
        // The column at fault: the failure code when only it is unknown.
        let idx = if matches!(e, InvalidJobColumns::UnknownFailureCode(_)) {
            13
        } else {
            12
        };
        bad(idx, Type::Text, e)
    })?;
    Ok(FieldingRunJob {
        id: text(row, 0, JobId::parse)?,
        scope,
        idempotency_key,
        request,
        fielding_run_id: text(row, 8, FieldingRunId::parse)?,
        created_at: timestamp(row, 9)?,
        created_by: text(row, 10, |s| s.parse::<UserId>())?,
        trace_id,
        state,
    })
}

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

/// `create_job` in its own immediate transaction.
pub(crate) fn create_job(conn: &mut Connection, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| store_error("create_job", e))?;
    let created = create_job_rows(&tx, job)?;
    tx.commit().map_err(|e| store_error("create_job", e))?;
    Ok(created)
}

/// The statements of `create_job`, inside the caller's transaction: the
/// insert, and when it inserted nothing (the key is taken) the job that
/// holds the key, read in the same transaction.
pub(crate) fn create_job_rows(tx: &Connection, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
    let op = "create_job";
    let by = UserText::new(&job.created_by);
    let (status, code, description) = job.state.to_columns();
    let account_id = account(&job.scope);
    let inserted = tx.prepare_cached(INSERT_JOB).and_then(|mut stmt| {
        stmt.execute(params![
            job.id.as_str(),
            account_id,
            job.scope.project_id.as_str(),
            job.scope.target_group_id.as_str(),
            job.kind().as_str(),
            job.idempotency_key.as_str(),
            job.request.start_fielding_at().map(|t| t.unix_millis()),
            job.request.end_fielding_at().unix_millis(),
            job.fielding_run_id.as_str(),
            job.created_at.unix_millis(),
            by.as_str(),
            job.trace_id.as_ref().map(JobTraceId::as_str),
            status,
            code,
            description,
        ])
    });
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

/// `finish_job` in its own immediate transaction.
pub(crate) fn finish_job(
    conn: &mut Connection,
    scope: &Scope,
    id: &JobId,
    outcome: &JobOutcome,
) -> Result<Option<FieldingRunJob>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| store_error("finish_job", e))?;
    let finished = finish_job_rows(&tx, scope, id, outcome)?;
    tx.commit().map_err(|e| store_error("finish_job", e))?;
    Ok(finished)
}

/// The statements of `finish_job`, inside the caller's transaction: the
/// conditional update (a job no longer processing keeps its outcome), then
/// the job as it now stands.
pub(crate) fn finish_job_rows(
    tx: &Connection,
    scope: &Scope,
    id: &JobId,
    outcome: &JobOutcome,
) -> Result<Option<FieldingRunJob>, StoreError> {
    let op = "finish_job";
    let (status, code, description) = outcome.to_columns();
    tx.prepare_cached(&finish_job_sql())
        .and_then(|mut stmt| {
            stmt.execute(params![
                status,
                code,
                description,
                id.as_str(),
                account(scope),
                scope.project_id.as_str(),
                scope.target_group_id.as_str()
            ])
        })
        .map_err(|e| store_error(op, e))?;
    job_by_id(tx, scope, id).map_err(|e| store_error(op, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_only_matches_the_core_processing_status() {
        assert!(
            finish_job_sql().ends_with("AND status = 'Processing'"),
            "{}",
            finish_job_sql()
        );
    }
}
