//! The operations on creation jobs in `<schema>.fielding_run_jobs`, on the
//! connection the store hands in.

use fielding_core::{FieldingRunJob, JobCreated, JobId, JobOutcome, Scope, StoreError, Timestamp};
use sqlx::postgres::PgConnection;

use crate::codec::{account, bind_job, decode_job};
use crate::error::{backend, constraint, sqlstate, UNIQUE_VIOLATION};
use crate::sql::JobStatements;

/// The unique key on the job id.
const JOB_ID_KEY: &str = "fielding_run_jobs_pkey";

/// How often `create_job` tries again when its insert found the key taken
/// but the read that followed found no job under it (possible only if the
/// job was deleted in between).
const CREATE_ATTEMPTS: usize = 3;

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
        let id_taken = match inserted {
            Ok(Some(_)) => return Ok(JobCreated::Created),
            Ok(None) => None,
            // The id is taken: if the key is taken too, the caller
            // needs the job under the key (as the in-memory store
            // reports it); otherwise the id clash is the error.
            Err(err) if sqlstate(&err).as_deref() == Some(UNIQUE_VIOLATION) && constraint(&err) == Some(JOB_ID_KEY) => {
                Some(err)
            }
            Err(err) => return Err(backend(op, err)),
        };
        let existing = sqlx::query(&sql.by_key)
            .bind(account(job.scope.account_id))
            .bind(job.idempotency_key.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
        match (existing, id_taken) {
            (Some(row), _) => return decode_job(&row).map(JobCreated::Existing),
            (None, Some(err)) => {
                return Err(StoreError::Backend {
                    message: format!("PostgreSQL {op}: job id {} is already taken", job.id),
                    retryable: false,
                    source: Some(Box::new(err)),
                })
            }
            // The key's job vanished between the two statements: again.
            (None, None) => continue,
        }
    }
    Err(StoreError::Backend {
        message: format!(
            "{op} of {}: the idempotency key was taken, but no job was found under it",
            job.id
        ),
        retryable: true,
        source: None,
    })
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
