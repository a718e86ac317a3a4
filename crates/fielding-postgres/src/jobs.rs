//! Creation jobs in `<schema>.fielding_run_jobs`: the statements, and
//! conversion between rows and [`FieldingRunJob`]s.

use chrono::{DateTime, Utc};
use fielding_core::{
    AccountId, FieldingRunId, FieldingRunJob, IdempotencyKey, JobCreated, JobId, JobKind, JobOutcome, JobRequest,
    JobState, JobTraceId, ProjectId, Scope, StoreError, TargetGroupId, UserId,
};
use sqlx::postgres::{PgConnection, PgRow};

use crate::error::{backend, constraint, corrupt, sqlstate, UNIQUE_VIOLATION};
use crate::schema::SchemaName;
use crate::store::{account, column, invalid, timestamp_from_db, ts, PgStore};

/// The columns of `fielding_run_jobs`, in the order [`decode_job`] reads
/// them and [`PgStore::create_job_on`] binds them.
const JOB_COLUMNS: &str = "id, account_id, project_id, target_group_id, kind, idempotency_key, start_fielding_at, \
                           end_fielding_at, fielding_run_id, created_at, created_by, trace_id, status, failure_code, \
                           failure_description";

/// The unique key on the job id.
const JOB_ID_KEY: &str = "fielding_run_jobs_pkey";

/// How often `create_job` tries again when its insert found the key taken
/// but the read that followed found no job under it (possible only if the
/// job was deleted in between).
const CREATE_ATTEMPTS: usize = 3;

/// The SQL of the job operations, with the schema spliced in once.
pub(crate) struct JobStatements {
    create: String,
    by_key: String,
    get: String,
    finish: String,
}

impl JobStatements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let jobs = format!("{}.fielding_run_jobs", schema.quoted());
        let at = "id = $1 AND account_id = $2 AND project_id = $3 AND target_group_id = $4";
        Self {
            create: format!(
                "INSERT INTO {jobs} ({JOB_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING id"
            ),
            by_key: format!("SELECT {JOB_COLUMNS} FROM {jobs} WHERE account_id = $1 AND idempotency_key = $2"),
            get: format!("SELECT {JOB_COLUMNS} FROM {jobs} WHERE {at}"),
            finish: format!(
                "UPDATE {jobs} SET status = $5, failure_code = $6, failure_description = $7 \
                 WHERE {at} AND status = '{}' RETURNING {JOB_COLUMNS}",
                JobState::PROCESSING
            ),
        }
    }

    #[cfg(test)]
    fn all(&self) -> [&str; 4] {
        [&self.create, &self.by_key, &self.get, &self.finish]
    }
}

/// The state from the status columns ([`JobState::from_columns`]):
/// unknown names and columns that do not fit together are corrupt data.
fn state_from_db(status: &str, code: Option<&str>, description: Option<&str>) -> Result<JobState, StoreError> {
    JobState::from_columns(status, code, description).map_err(|e| corrupt(format!("stored job state is invalid: {e}")))
}

/// A stored job, decoded strictly: a value that does not parse is a
/// permanent backend error, never a guess.
pub(crate) fn decode_job(row: &PgRow) -> Result<FieldingRunJob, StoreError> {
    let scope = Scope::new(
        AccountId::new(i64::from(column::<i32>(row, 1)?)).map_err(invalid)?,
        ProjectId::parse(column(row, 2)?).map_err(invalid)?,
        TargetGroupId::parse(column(row, 3)?).map_err(invalid)?,
    );
    let kind_text: &str = column(row, 4)?;
    let kind = JobKind::parse(kind_text).ok_or_else(|| corrupt(format!("stored job kind {kind_text:?} is unknown")))?;
    let idempotency_key = IdempotencyKey::parse(column(row, 5)?)
        .map_err(|e| corrupt(format!("stored idempotency key is invalid: {e}")))?;
    let start = column::<Option<DateTime<Utc>>>(row, 6)?
        .map(|v| timestamp_from_db("start_fielding_at", v))
        .transpose()?;
    let end = timestamp_from_db("end_fielding_at", column(row, 7)?)?;
    let request = JobRequest::from_parts(kind, start, end).ok_or_else(|| {
        let has = if start.is_some() { "has" } else { "has no" };
        corrupt(format!("stored {kind} job {has} start_fielding_at"))
    })?;
    let trace_id = match column::<Option<&str>>(row, 11)? {
        None => None,
        Some(text) => {
            Some(JobTraceId::parse(text).ok_or_else(|| corrupt(format!("stored trace id {text:?} is invalid")))?)
        }
    };
    Ok(FieldingRunJob {
        id: JobId::parse(column(row, 0)?).map_err(invalid)?,
        scope,
        idempotency_key,
        request,
        fielding_run_id: FieldingRunId::parse(column(row, 8)?).map_err(invalid)?,
        created_at: timestamp_from_db("created_at", column(row, 9)?)?,
        created_by: UserId::new(column(row, 10)?),
        trace_id,
        state: state_from_db(column(row, 12)?, column(row, 13)?, column(row, 14)?)?,
    })
}

/// The job operations on one connection.
impl PgStore {
    pub(crate) async fn create_job_on(
        &self,
        conn: &mut PgConnection,
        sql: &JobStatements,
        job: &FieldingRunJob,
    ) -> Result<JobCreated, StoreError> {
        let op = "create_job";
        let (status, code, description) = job.state.to_columns();
        for _ in 0..CREATE_ATTEMPTS {
            let inserted = sqlx::query_scalar::<_, String>(&sql.create)
                .bind(job.id.as_str())
                .bind(account(job.scope.account_id))
                .bind(job.scope.project_id.as_str())
                .bind(job.scope.target_group_id.as_str())
                .bind(job.kind().as_str())
                .bind(job.idempotency_key.as_str())
                .bind(job.request.start_fielding_at().map(ts))
                .bind(ts(job.request.end_fielding_at()))
                .bind(job.fielding_run_id.as_str())
                .bind(ts(job.created_at))
                .bind(job.created_by.as_uuid())
                .bind(job.trace_id.as_ref().map(JobTraceId::as_str))
                .bind(status)
                .bind(code)
                .bind(description)
                .fetch_optional(&mut *conn)
                .await;
            let id_taken = match inserted {
                Ok(Some(_)) => return Ok(JobCreated::Created),
                Ok(None) => None,
                // The id is taken: if the key is taken too, the caller
                // needs the job under the key (as the in-memory store
                // reports it); otherwise the id clash is the error.
                Err(err)
                    if sqlstate(&err).as_deref() == Some(UNIQUE_VIOLATION) && constraint(&err) == Some(JOB_ID_KEY) =>
                {
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

    pub(crate) async fn get_job_on(
        &self,
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

    pub(crate) async fn finish_job_on(
        &self,
        conn: &mut PgConnection,
        sql: &JobStatements,
        scope: &Scope,
        id: &JobId,
        outcome: &JobOutcome,
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
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
        match updated {
            Some(row) => decode_job(&row).map(Some),
            // No such job, or it has an outcome already: the job as stored
            // (a new statement, so it sees a concurrent finisher's commit).
            None => self.get_job_on(conn, sql, op, scope, id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_qualify_the_table_with_the_quoted_schema() {
        let sql = JobStatements::new(&SchemaName::new("env_a").unwrap());
        for text in sql.all() {
            assert!(text.contains("\"env_a\".fielding_run_jobs"), "{text}");
            assert!(!text.contains(" fielding_run_jobs "), "{text}");
        }
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
    fn states_round_trip_and_misfits_are_corrupt() {
        use fielding_core::{JobFailure, JobFailureCode};
        let failure = JobFailure {
            code: JobFailureCode::InvalidFieldingDates,
            description: "The end is before the start.".into(),
        };
        for state in [
            JobState::Processing,
            JobState::Finished(JobOutcome::Completed),
            JobState::Finished(JobOutcome::Failed(failure)),
        ] {
            let (status, code, description) = state.to_columns();
            assert_eq!(status, state.status_name());
            assert_eq!(state_from_db(status, code, description).ok(), Some(state.clone()));
        }
        for (status, code, description) in [
            ("Done", None, None),
            ("processing", None, None),
            ("Processing", Some("InvalidFieldingDates"), Some("x")),
            ("Completed", None, Some("x")),
            ("Failed", None, None),
            ("Failed", Some("InvalidFieldingDates"), None),
            ("Failed", Some("Nope"), Some("x")),
        ] {
            let err = state_from_db(status, code, description).unwrap_err();
            assert!(!err.is_retryable(), "{err}");
            assert!(err.to_string().contains("stored job state is invalid: "), "{err}");
        }
    }
}
