//! The operations on creation jobs in `<schema>.fielding_run_jobs`, on the
//! connection the store hands in.

use fielding_core::{FieldingRunJob, JobCreated, JobId, JobOutcome, Scope, StoreError, Timestamp};
use sqlx::postgres::PgConnection;

use crate::codec::{account, bind_job, decode_job};
use crate::error::{backend, constraint, sqlstate, UNIQUE_VIOLATION};
use crate::sql::JobStatements;

/// The unique key on the job id.
const JOB_ID_KEY: &str = "fielding_run_jobs_pkey";

/// How often an idempotent create (`create_job`, `create_bulk_job`) tries
/// again when its insert found the key taken but the read that followed
/// found no job under it (possible only if the job expired in between).
pub(crate) const CREATE_ATTEMPTS: usize = 3;

/// An idempotent create's insert failed: `Ok(err)` when the job's id was
/// taken (`id_key` names the unique key on it), which is the caller's error
/// only if the key turns out to be free; any other failure is the answer.
pub(crate) fn id_taken(op: &'static str, err: sqlx::Error, id_key: &str) -> Result<sqlx::Error, StoreError> {
    if sqlstate(&err).as_deref() == Some(UNIQUE_VIOLATION) && constraint(&err) == Some(id_key) {
        Ok(err)
    } else {
        Err(backend(op, err))
    }
}

/// After an idempotent create's insert created nothing: the job found under
/// the key (`existing`) is the answer; with none, the id clash is the error
/// (a `what` with the id `id` exists, under another key), or, without one,
/// `None`: the key's job expired between the two statements, try again.
pub(crate) fn settle_taken_key<T>(
    op: &'static str,
    what: &str,
    id: &JobId,
    existing: Option<T>,
    id_taken: Option<sqlx::Error>,
) -> Option<Result<T, StoreError>> {
    match (existing, id_taken) {
        (Some(job), _) => Some(Ok(job)),
        (None, Some(err)) => Some(Err(StoreError::Backend {
            message: format!("PostgreSQL {op}: {what} id {id} is already taken"),
            retryable: false,
            source: Some(Box::new(err)),
        })),
        (None, None) => None,
    }
}

/// Every attempt of an idempotent create found the key taken and then no
/// job under it: retryable, the caller may try again.
pub(crate) fn key_without_job(op: &'static str, what: &str, id: &JobId) -> StoreError {
    StoreError::Backend {
        message: format!("{op} of {id}: the idempotency key was taken, but no {what} was found under it"),
        retryable: true,
        source: None,
    }
}

pub(crate) async fn create_job(
    conn: &mut PgConnection,
    sql: &JobStatements,
    job: &FieldingRunJob,
) -> Result<JobCreated, StoreError> {
    let op = "create_job";
    for _ in 0..CREATE_ATTEMPTS {
        let inserted = bind_job(sqlx::query_scalar::<_, String>(&sql.create), job)
            .fetch_optional(&mut *conn)
            .await;
        let taken = match inserted {
            Ok(Some(_)) => return Ok(JobCreated::Created),
            Ok(None) => None,
            Err(err) => Some(id_taken(op, err, JOB_ID_KEY)?),
        };
        let existing = sqlx::query(&sql.by_key)
            .bind(account(job.scope.account_id))
            .bind(job.idempotency_key.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
        let existing = existing.as_ref().map(decode_job).transpose()?;
        if let Some(answer) = settle_taken_key(op, "job", &job.id, existing, taken) {
            return answer.map(JobCreated::Existing);
        }
    }
    Err(key_without_job(op, "job", &job.id))
}

pub(crate) async fn get_job(
    conn: &mut PgConnection,
    sql: &JobStatements,
    op: &'static str,
    scope: &Scope,
    id: &JobId,
) -> Result<Option<FieldingRunJob>, StoreError> {
    let row = sqlx::query(&sql.get)
        .bind(id.as_str())
        .bind(account(scope.account_id))
        .bind(scope.project_id.as_str())
        .bind(scope.target_group_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    row.as_ref().map(decode_job).transpose()
}

pub(crate) async fn finish_job(
    conn: &mut PgConnection,
    sql: &JobStatements,
    scope: &Scope,
    id: &JobId,
    outcome: &JobOutcome,
    finished_at: Timestamp,
) -> Result<Option<FieldingRunJob>, StoreError> {
    let op = "finish_job";
    let (status, code, description) = outcome.to_columns();
    let updated = sqlx::query(&sql.finish)
        .bind(id.as_str())
        .bind(account(scope.account_id))
        .bind(scope.project_id.as_str())
        .bind(scope.target_group_id.as_str())
        .bind(status)
        .bind(code)
        .bind(description)
        .bind(finished_at.as_datetime())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    match updated {
        Some(row) => decode_job(&row).map(Some),
        // No such job, or it has an outcome already: the job as stored
        // (a new statement, so it sees a concurrent finisher's commit).
        None => get_job(conn, sql, op, scope, id).await,
    }
}

pub(crate) async fn expire_jobs(
    conn: &mut PgConnection,
    sql: &JobStatements,
    finished_before: Timestamp,
    limit: usize,
) -> Result<usize, StoreError> {
    // PostgreSQL's LIMIT is a bigint; anything larger means "no limit".
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let done = sqlx::query(&sql.expire)
        .bind(finished_before.as_datetime())
        .bind(limit)
        .execute(&mut *conn)
        .await
        .map_err(|e| backend("expire_jobs", e))?;
    // At most `limit` rows, which came from a `usize`.
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}
