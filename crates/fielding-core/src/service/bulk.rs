//! Bulk jobs: submit (idempotently), read back, and the per-item decision
//! the runner applies.
//!
//! A submission only records the job; [`crate::BulkRunner`] does the work.
//! Each item is decided on the run as the store shows it inside the atomic
//! step that also records the item's outcome, with `If-Match: *`
//! semantics: whatever version the run is at, the action is judged on it,
//! and a run that moves between the read and the write is decided again.

use crate::{
    AccountId, BulkAction, BulkItem, BulkItemFailure, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey,
    BulkJobStatus, ClaimToken, FieldingError, FieldingRun, FieldingService, IdempotencyKey, InvalidParam, ItemUpdate,
    JobId, JobTraceId, ProjectId, StoreError, TargetGroupId, UserId,
};

use tracing::Instrument;

use super::{Plan, MAX_DECISIONS};
use crate::observe::{self, StoreOperation};

/// A bulk-job submission: what the batch endpoints receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBulkJob {
    /// The account.
    pub account_id: AccountId,
    /// The project whose target groups the job acts on.
    pub project_id: ProjectId,
    /// What to do to each target group.
    pub action: BulkAction,
    /// The caller's key; unique per account among bulk jobs.
    pub idempotency_key: IdempotencyKey,
    /// The target groups, each at most once, 1 to
    /// [`BulkJob::MAX_TARGET_GROUPS`] of them.
    pub target_group_ids: Vec<TargetGroupId>,
    /// Who submits it; every run the job changes records this user.
    pub actor: UserId,
    /// The submitting request's trace id.
    pub trace_id: Option<JobTraceId>,
}

/// The answer to a bulk submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedBulkJob {
    /// The job as stored (normally still `Processing`).
    pub job: BulkJob,
    /// `true` when the key named an earlier submission of the same request,
    /// whose job this is.
    pub replayed: bool,
}

/// The pauses of a batch that lost a race to a single-run write.
const BATCH_BACKOFF: crate::RetryPolicy = crate::RetryPolicy {
    max_attempts: MAX_DECISIONS,
    initial_backoff: std::time::Duration::from_millis(1),
    max_backoff: std::time::Duration::from_millis(50),
};

impl FieldingService {
    /// Records a bulk job for a runner ([`crate::BulkRunner`]) to process,
    /// and wakes the runners of this service. Returns before any item is
    /// processed.
    ///
    /// Refused with a validation error when the list is empty, longer than
    /// [`BulkJob::MAX_TARGET_GROUPS`] or names a target group twice. The
    /// same key with the same request (same account, project, action and
    /// target groups, in any order) returns the first submission's job
    /// (`replayed`); with a different request it is refused naming
    /// `idempotency-key`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use fielding_core::*;
    /// # async fn demo(store: Arc<dyn FieldingStore>) -> Result<(), FieldingError> {
    /// let service = FieldingService::new(store);
    /// let submitted = service
    ///     .submit_bulk_job(NewBulkJob {
    ///         account_id: "101".parse()?,
    ///         project_id: "01BTGNYV6HRNK8K8VKZASZCFP0".parse()?,
    ///         action: BulkAction::Pause,
    ///         idempotency_key: IdempotencyKey::parse("pause-campaign-7").map_err(|e| FieldingError::invalid([e]))?,
    ///         target_group_ids: vec!["01BTGNYV6HRNK8K8VKZASZCFP1".parse()?],
    ///         actor: UserId::random(),
    ///         trace_id: None,
    ///     })
    ///     .await?;
    /// assert_eq!(submitted.job.status, BulkJobStatus::Processing);
    /// // A runner does the work; in a test, `run_until_idle` does it now.
    /// BulkRunner::new(service.clone(), BulkRunnerOptions::default()).run_until_idle().await?;
    /// let done = service.get_bulk_job(&submitted.job.key()).await?;
    /// // There is no such run, so the only item failed, and with it the job.
    /// assert_eq!(done.status, BulkJobStatus::Failed);
    /// # Ok(()) }
    /// ```
    pub async fn submit_bulk_job(&self, new: NewBulkJob) -> Result<SubmittedBulkJob, FieldingError> {
        BulkJob::check_target_groups(&new.target_group_ids).map_err(FieldingError::invalid)?;
        let candidate = BulkJob {
            id: JobId::generate(),
            account_id: new.account_id,
            project_id: new.project_id,
            action: new.action,
            idempotency_key: new.idempotency_key,
            created_at: self.clock.now(),
            created_by: new.actor,
            trace_id: new.trace_id,
            status: BulkJobStatus::Processing,
            items: new
                .target_group_ids
                .into_iter()
                .map(|target_group_id| BulkItem {
                    target_group_id,
                    outcome: None,
                })
                .collect(),
        };
        let span = observe::job_span(
            observe::JOB_KIND_BULK,
            candidate.action.as_str(),
            &candidate.account_id,
            candidate.trace_id.as_ref(),
        );
        let submitted = self.record_bulk_job(candidate).instrument(span.clone()).await;
        match &submitted {
            // The id of the job answered: a replay's is the existing job's.
            Ok(submitted) => observe::close_job_span(
                &span,
                Some(&submitted.job.id),
                observe::bulk_job_state(submitted.job.status),
            ),
            Err(err) => observe::close_job_span(&span, None, err.code()),
        }
        let submitted = submitted?;
        if submitted.job.status == BulkJobStatus::Processing {
            self.bulk_wakeup.notify_one();
        }
        Ok(submitted)
    }

    /// Records `candidate`, or finds the job its key already names.
    async fn record_bulk_job(&self, candidate: BulkJob) -> Result<SubmittedBulkJob, FieldingError> {
        let created = observe::store_call(StoreOperation::CreateBulkJob, self.store.create_bulk_job(&candidate)).await;
        let submitted = match created? {
            BulkJobCreated::Created => {
                observe::count_job(observe::JOB_KIND_BULK, "submitted");
                SubmittedBulkJob {
                    job: candidate,
                    replayed: false,
                }
            }
            BulkJobCreated::Existing(existing) if existing.same_request(&candidate) => SubmittedBulkJob {
                job: existing,
                replayed: true,
            },
            BulkJobCreated::Existing(existing) => {
                return Err(FieldingError::invalid([InvalidParam::new(
                    IdempotencyKey::FIELD,
                    format!(
                        "was already used in this account for a different bulk job (job {}); \
                         use a new key for a new request",
                        existing.id
                    ),
                )]))
            }
        };
        Ok(submitted)
    }

    /// The bulk job at `key`, with every item's outcome so far; not found
    /// otherwise.
    pub async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<BulkJob, FieldingError> {
        observe::store_call(StoreOperation::GetBulkJob, self.store.get_bulk_job(key))
            .await?
            .ok_or_else(|| FieldingError::NotFound { what: key.to_string() })
    }

    /// A notification the runners of this service wait on: woken by every
    /// submission through this service (and its clones).
    pub(crate) fn bulk_wakeup(&self) -> &tokio::sync::Notify {
        &self.bulk_wakeup
    }

    /// Applies `job`'s action to `items` for the holder of `token`, in one
    /// store step; a run that moved between the store's read and its write
    /// is decided again on its new version (`If-Match: *`).
    pub(crate) async fn apply_bulk_batch(
        &self,
        job: &BulkJob,
        token: ClaimToken,
        items: &[TargetGroupId],
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        let key = job.key();
        let mut decisions = 0;
        loop {
            decisions += 1;
            let mut decide = |_: TargetGroupId, run: Option<&FieldingRun>| self.decide_item(job, run);
            let applied = observe::store_call(
                StoreOperation::ApplyBulkItems,
                self.store.apply_bulk_items(&key, token, items, &mut decide),
            );
            match applied.await {
                Err(StoreError::VersionConflict { .. }) if decisions < MAX_DECISIONS => {
                    observe::count_redecided(Some(job.action.command().action()));
                    // A batch loses to any single-run write on one of its
                    // runs between its read and its write (PostgreSQL reads
                    // without locks, see fielding-postgres's bulk.rs): back
                    // off with jitter (ceilings 1 ms doubling to 50 ms) so
                    // a run edited often does not make the batch spin.
                    let pause = BATCH_BACKOFF.backoff(decisions);
                    if pause.is_zero() {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(pause).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// What one item of `job` does to `run`: the action's single-run
    /// command under the lifecycle, where a run already in the action's
    /// status (effective, by the clock) counts as updated.
    fn decide_item(&self, job: &BulkJob, run: Option<&FieldingRun>) -> ItemUpdate {
        let Some(run) = run else {
            return ItemUpdate::Record(BulkItemOutcome::Failed(BulkItemFailure::TargetGroupNotFound));
        };
        if run.effective_status(self.clock.now()) == job.action.desired_status() {
            return ItemUpdate::Record(BulkItemOutcome::Updated);
        }
        match self.plan(run, &job.action.command(), job.created_by) {
            Ok(Plan::Unchanged(_)) => ItemUpdate::Record(BulkItemOutcome::Updated),
            Ok(Plan::Write { expected, next, change }) => ItemUpdate::Write {
                expected,
                run: next,
                change,
            },
            Err(_) => ItemUpdate::Record(BulkItemOutcome::Failed(BulkItemFailure::StatusTransitionNotAllowed)),
        }
    }
}
