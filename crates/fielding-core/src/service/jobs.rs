//! Creation jobs: submit (idempotently), run, and read back.
//!
//! A submission records the job first, then creates the run under the
//! job's planned run id, then records the outcome. Every step is safe to
//! repeat, so a job left `Processing` by a crash is finished by whoever
//! touches it next: a replay of the same request, or a read of the job
//! after [`JOB_RESUME_AFTER`].

use std::time::Duration;

use chrono::TimeDelta;

use tracing::Instrument;

use crate::lifecycle;
use crate::observe::{self, StoreOperation};
use crate::{
    Action, FieldingError, FieldingRunJob, FieldingService, IdempotencyKey, InvalidParam, JobCreated, JobFailure,
    JobFailureCode, JobId, JobOutcome, JobRequest, JobState, JobTraceId, Scope, UserId,
};

/// How long a job may stay `Processing` before a read of it takes over and
/// finishes it. Jobs normally finish before their submission returns; one
/// still processing after this long was abandoned by a process that died.
pub const JOB_RESUME_AFTER: Duration = Duration::from_secs(10);

/// A job submission: what the creation endpoints receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The target group the run is for.
    pub scope: Scope,
    /// The caller's key; unique per account.
    pub idempotency_key: IdempotencyKey,
    /// What to create.
    pub request: JobRequest,
    /// Who submits it.
    pub actor: UserId,
    /// The submitting request's trace id, reported if the job fails.
    pub trace_id: Option<JobTraceId>,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedJob {
    /// The job as stored, normally finished.
    pub job: FieldingRunJob,
    /// `true` when the key named an earlier submission of the same request,
    /// whose job this is.
    pub replayed: bool,
}

impl FieldingService {
    /// Submits a creation job and runs it to completion.
    ///
    /// The same key with the same request returns the first submission's
    /// job (`replayed`); with a different request it is refused with a
    /// validation error naming `idempotency-key`. A job whose dates are not
    /// acceptable, or whose target group already has a run, is recorded as
    /// `Failed` (that is a job outcome, not an error of the submission).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use fielding_core::*;
    /// # async fn demo(store: Arc<dyn FieldingStore>) -> Result<(), FieldingError> {
    /// let service = FieldingService::new(store);
    /// let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
    /// let end = "2031-01-31T09:00:00Z".parse::<Timestamp>().map_err(|e| e.for_field("end_fielding_at"))?;
    /// let submitted = service
    ///     .submit_job(NewJob {
    ///         scope,
    ///         idempotency_key: IdempotencyKey::parse("launch-1").map_err(|e| FieldingError::invalid([e]))?,
    ///         request: JobRequest::LaunchFromDraft { end_fielding_at: end },
    ///         actor: UserId::random(),
    ///         trace_id: None,
    ///     })
    ///     .await?;
    /// let run_id = submitted.job.created_fielding_run_id().expect("completed");
    /// assert_eq!(service.find(&scope).await?.map(|run| run.id), Some(run_id));
    /// # Ok(()) }
    /// ```
    pub async fn submit_job(&self, new: NewJob) -> Result<SubmittedJob, FieldingError> {
        let span = observe::job_span(
            observe::JOB_KIND_CREATION,
            new.request.kind().as_str(),
            &new.scope.account_id,
            new.trace_id.as_ref(),
        );
        let submitted = self.submit_job_in_span(new).instrument(span.clone()).await;
        match &submitted {
            // The id of the job answered: a replay's is the existing job's.
            Ok(submitted) => observe::close_job_span(&span, Some(&submitted.job.id), job_state(&submitted.job.state)),
            Err(err) => observe::close_job_span(&span, None, err.code()),
        }
        submitted
    }

    async fn submit_job_in_span(&self, new: NewJob) -> Result<SubmittedJob, FieldingError> {
        let candidate = FieldingRunJob {
            id: JobId::generate(),
            scope: new.scope,
            idempotency_key: new.idempotency_key,
            request: new.request,
            fielding_run_id: crate::FieldingRunId::generate(),
            created_at: self.clock.now(),
            created_by: new.actor,
            trace_id: new.trace_id,
            state: JobState::Processing,
        };
        let created = observe::store_call(StoreOperation::CreateJob, self.store.create_job(&candidate)).await?;
        let (job, replayed) = match created {
            JobCreated::Created => {
                observe::count_job(observe::JOB_KIND_CREATION, "submitted");
                (candidate, false)
            }
            JobCreated::Existing(existing) if existing.same_request(&candidate) => (existing, true),
            JobCreated::Existing(existing) => {
                return Err(FieldingError::invalid([InvalidParam::new(
                    IdempotencyKey::FIELD,
                    format!(
                        "was already used in this account for a different request (job {}); \
                         use a new key for a new request",
                        existing.id
                    ),
                )]))
            }
        };
        let job = match job.state {
            // A replay that finds the job still processing is racing the
            // submission that created it: both finish it (the first outcome
            // wins), and only the creator counts the ending.
            JobState::Processing => self.run_job(job, !replayed).await?,
            JobState::Finished(_) => job,
        };
        Ok(SubmittedJob { job, replayed })
    }

    /// The job `id` of target group `scope`; not found otherwise. A job
    /// abandoned in `Processing` for longer than [`JOB_RESUME_AFTER`] is
    /// finished first.
    pub async fn get_job(&self, scope: &Scope, id: &JobId) -> Result<FieldingRunJob, FieldingError> {
        let found = observe::store_call(StoreOperation::GetJob, self.store.get_job(&scope.job(*id))).await?;
        let Some(job) = found else {
            return Err(FieldingError::NotFound {
                what: format!("job {id} ({scope})"),
            });
        };
        let abandoned = TimeDelta::from_std(JOB_RESUME_AFTER).unwrap_or(TimeDelta::MAX);
        if job.state == JobState::Processing && self.clock.now().since(job.created_at) >= abandoned {
            // Abandoned: its creator is gone, so this call counts the ending.
            return self.run_job(job, true).await;
        }
        Ok(job)
    }

    /// Creates the job's run (if nobody has) and records the outcome.
    /// Storage errors leave the job `Processing` for a later attempt.
    /// `counts` says whether this call counts the job's ending in
    /// [`observe::JOBS`].
    async fn run_job(&self, job: FieldingRunJob, counts: bool) -> Result<FieldingRunJob, FieldingError> {
        let outcome = self.job_outcome(&job).await?;
        let finished = observe::store_call(
            StoreOperation::FinishJob,
            self.store.finish_job(&job.key(), &outcome, self.clock.now()),
        )
        .await?
        .ok_or_else(|| FieldingError::NotFound {
            what: format!("job {} ({})", job.id, job.scope),
        })?;
        // The stored ending: the first outcome recorded wins.
        if counts && finished.state != JobState::Processing {
            observe::count_job(observe::JOB_KIND_CREATION, job_state(&finished.state));
        }
        Ok(finished)
    }

    async fn job_outcome(&self, job: &FieldingRunJob) -> Result<JobOutcome, FieldingError> {
        let now = self.clock.now();
        let (action, target) = match job.request {
            JobRequest::LaunchFromDraft { end_fielding_at } => {
                (Action::Launch, lifecycle::new_launched(end_fielding_at, now))
            }
            JobRequest::ScheduleFromDraft {
                start_fielding_at,
                end_fielding_at,
            } => (
                Action::Schedule,
                lifecycle::new_scheduled(start_fielding_at, end_fielding_at, now),
            ),
        };
        let target = match target {
            Ok(target) => target,
            Err(FieldingError::Validation { params }) => {
                let reasons: Vec<String> = params.iter().map(ToString::to_string).collect();
                return Ok(JobOutcome::Failed(JobFailure {
                    code: JobFailureCode::InvalidFieldingDates,
                    description: format!("The fielding dates are not valid: {}.", reasons.join("; ")),
                }));
            }
            Err(other) => return Err(other),
        };
        match self
            .create(job.scope, job.fielding_run_id, action, Ok(target), now, job.created_by)
            .await
        {
            Ok(_) => Ok(JobOutcome::Completed),
            Err(FieldingError::TargetGroupHasRun { .. }) => {
                // Our own run from an earlier attempt counts as success.
                let existing = observe::store_call(
                    StoreOperation::FindByTargetGroup,
                    self.store.find_by_target_group(&job.scope),
                )
                .await?;
                if existing.is_some_and(|run| run.id == job.fielding_run_id) {
                    return Ok(JobOutcome::Completed);
                }
                Ok(JobOutcome::Failed(JobFailure {
                    code: JobFailureCode::TargetGroupInvalidState,
                    description: format!(
                        "The target group is not in a draft state: it already has a fielding run, so it cannot be {}.",
                        match job.kind() {
                            crate::JobKind::LaunchFromDraft => "launched",
                            crate::JobKind::ScheduleFromDraft => "scheduled",
                        }
                    ),
                }))
            }
            Err(other) => Err(other),
        }
    }
}

/// The `state` label of a creation job in `state`.
fn job_state(state: &JobState) -> &'static str {
    match state {
        JobState::Processing => "processing",
        JobState::Finished(JobOutcome::Completed) => "completed",
        JobState::Finished(JobOutcome::Failed(_)) => "failed",
    }
}
