//! The bulk-job runner: claims jobs from the store and works through their
//! items in batches, in the caller's own tokio runtime.
//!
//! What must stay true:
//!
//! * **One holder per job.** A job is worked only under a claim
//!   ([`FieldingStore::claim_bulk_job`]) whose token the store checks on
//!   every write; a runner whose lease ran out and whose job was taken over
//!   gets [`StoreError::ClaimLost`] and stops. So many runners, in one
//!   process or many on one database, never work one job together.
//! * **At most once per item.** Each batch's run writes and item outcomes
//!   commit together ([`FieldingStore::apply_bulk_items`]); a runner that
//!   resumes a job (after a crash, a lost lease, a stop) only ever sees
//!   items without an outcome, whose runs the job has not touched.
//! * **Bounded waiting.** A runner is woken by submissions through the same
//!   [`FieldingService`] and otherwise looks for work every
//!   `poll_interval` (jobs submitted by another process, jobs whose holder
//!   died and whose lease ended).

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::observe::{self, StoreOperation};
use crate::{
    BulkClaim, BulkItemOutcome, BulkJob, BulkJobStatus, ClaimToken, FieldingError, FieldingService, StoreError,
    Timestamp,
};

/// How a [`BulkRunner`] works. Builder methods set each field.
///
/// ```
/// use std::time::Duration;
/// use fielding_core::BulkRunnerOptions;
/// let options = BulkRunnerOptions::default().with_concurrency(8).with_lease(Duration::from_secs(10));
/// assert_eq!(options.concurrency, 8);
/// assert_eq!(options.batch_size, 100);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkRunnerOptions {
    /// Jobs worked at the same time by one runner (default 4; at least 1).
    pub concurrency: usize,
    /// Items applied per store step (default 100; at least 1): one
    /// transaction, one commit for that many runs. Larger batches cost
    /// fewer commits; smaller ones hold locks for less time and lose less
    /// work to a crash (none is repeated either way).
    pub batch_size: usize,
    /// How long a claim holds without renewal (default 30 s). The holder
    /// renews it every third of this while it works; a job whose holder
    /// died is taken over once it ends.
    pub lease: Duration,
    /// How often an idle runner looks for jobs it was not woken for
    /// (default 1 s).
    pub poll_interval: Duration,
}

impl Default for BulkRunnerOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch_size: 100,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl BulkRunnerOptions {
    /// Sets [`concurrency`](Self::concurrency) (0 counts as 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets [`batch_size`](Self::batch_size) (0 counts as 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets [`lease`](Self::lease) (at least 1 ms).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval) (at least 1 ms).
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval.max(Duration::from_millis(1));
        self
    }
}

/// Works bulk jobs in the background. Spawn [`BulkRunner::run`] in your
/// runtime next to your server, with the same [`FieldingService`] (or a
/// clone) that takes submissions, so that submissions wake it:
///
/// ```
/// # use std::sync::Arc;
/// # use fielding_core::*;
/// # async fn demo(service: FieldingService) {
/// let runner = BulkRunner::new(service.clone(), BulkRunnerOptions::default());
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let handle = tokio::spawn(async move { runner.run(async { stopped.await.ok(); }).await });
/// // ... serve requests ...
/// stop.send(()).ok(); // graceful: each job finishes its current batch
/// handle.await.ok();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BulkRunner {
    service: FieldingService,
    options: BulkRunnerOptions,
    /// Jobs whose last attempt here failed with a permanent store error,
    /// and how many times in a row: each failure holds the job back
    /// longer (see [`BulkRunner::hold_back`]).
    failures: Arc<std::sync::Mutex<std::collections::HashMap<crate::JobId, u32>>>,
}

/// Why a job's work ended before the job was finished.
enum Interrupted {
    /// The runner is stopping; the claim was released.
    Stopping,
    /// Another runner holds the job now.
    ClaimLost,
    /// The store failed; the claim is left to run out, which spaces the
    /// next attempt.
    Store(StoreError),
}

impl BulkRunner {
    /// A runner over `service`'s store.
    pub fn new(service: FieldingService, options: BulkRunnerOptions) -> Self {
        Self {
            service,
            options,
            failures: Arc::default(),
        }
    }

    /// The options it works with.
    pub fn options(&self) -> &BulkRunnerOptions {
        &self.options
    }

    /// Works jobs until `shutdown` completes, then stops gracefully: no new
    /// claims, each job in hand finishes its current batch and releases its
    /// claim (so another instance can take it at once), and this returns
    /// when all have.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let (stop, stopping) = watch::channel(false);
        let mut workers = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while let Some(done) = workers.try_join_next() {
                if let Err(err) = done {
                    tracing::error!(error = %err, "a bulk-job worker panicked; its job is taken over when its lease ends");
                }
            }
            // Biased, the stop first: once it has come, no claim is made,
            // even when a permit is free at the same moment.
            let permit = tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            // Registered before the claim, so a submission between an
            // empty claim and the wait below is not missed.
            let woken = self.service.bulk_wakeup().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.claim().await {
                Ok(Some((job, claim))) => {
                    let runner = self.clone();
                    let stopping = stopping.clone();
                    workers.spawn(async move { runner.work_claimed(job, claim, stopping, permit).await });
                    continue;
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "claiming a bulk job failed; trying again"),
            }
            drop(permit);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = woken => {}
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
        stop.send_replace(true);
        while let Some(done) = workers.join_next().await {
            if let Err(err) = done {
                tracing::error!(error = %err, "a bulk-job worker panicked while stopping");
            }
        }
    }

    /// Claims and works jobs one at a time until none is left to claim,
    /// and answers how many it finished. For tests, scripts and a process
    /// that works jobs on its own schedule; a server runs [`BulkRunner::run`].
    pub async fn run_until_idle(&self) -> Result<usize, FieldingError> {
        let (_stop, stopping) = watch::channel(false);
        let mut finished = 0;
        while let Some((job, claim)) = self.claim().await? {
            match self.work(job, claim, &stopping).await {
                Ok(()) => finished += 1,
                Err(Interrupted::Store(err)) => return Err(err.into()),
                Err(Interrupted::ClaimLost | Interrupted::Stopping) => {}
            }
        }
        Ok(finished)
    }

    async fn claim(&self) -> Result<Option<(BulkJob, BulkClaim)>, StoreError> {
        let now = self.service.clock().now();
        let claim = BulkClaim {
            token: ClaimToken::generate(),
            lease_until: self.lease_from(now),
        };
        let store = self.service.store();
        let job = retry_transient("claim", || {
            observe::store_call(StoreOperation::ClaimBulkJob, store.claim_bulk_job(now, &claim))
        })
        .await?;
        if job.is_some() {
            observe::count_job(observe::JOB_KIND_BULK, "claimed");
        }
        Ok(job.map(|job| (job, claim)))
    }

    fn lease_from(&self, now: Timestamp) -> Timestamp {
        self.lease_from_for(now, self.options.lease)
    }

    fn lease_from_for(&self, now: Timestamp, lease: Duration) -> Timestamp {
        let lease = TimeDelta::from_std(lease).unwrap_or(TimeDelta::MAX);
        now.checked_add(lease).unwrap_or(Timestamp::MAX)
    }

    async fn work_claimed(
        &self,
        job: BulkJob,
        claim: BulkClaim,
        stopping: watch::Receiver<bool>,
        _permit: OwnedSemaphorePermit,
    ) {
        let key = job.key();
        let trace_id = job.trace_id.map(|id| id.to_string());
        match self.work(job, claim, &stopping).await {
            Ok(()) => self.forget_failures(&key),
            Err(Interrupted::Stopping) => tracing::info!(
                job = %key,
                trace_id,
                "stopped working a bulk job; another runner may resume it"
            ),
            Err(Interrupted::ClaimLost) => tracing::info!(job = %key, trace_id, "another runner took over a bulk job"),
            Err(Interrupted::Store(err)) => {
                let failures = self.count_failure(&key);
                let held_for = self.hold_back(&key, &claim, failures).await;
                tracing::warn!(
                    job = %key,
                    trace_id,
                    error = %err,
                    failures,
                    retry_in_seconds = held_for.as_secs(),
                    "a bulk job's batch failed; it is tried again later"
                );
            }
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<crate::JobId, u32>> {
        // Nothing panics while holding it; a poisoned map is still usable.
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more failure in a row of the job at `key`; answers how many.
    fn count_failure(&self, key: &crate::BulkJobKey) -> u32 {
        let mut failures = self.failures();
        let count = failures.entry(key.id).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// The job at `key` was worked to the end: its failures are forgotten.
    fn forget_failures(&self, key: &crate::BulkJobKey) {
        self.failures().remove(&key.id);
    }

    /// Keeps a job that failed `failures` times in a row claimed (and so
    /// untouched by every runner) for longer each time: one lease, then
    /// doubling up to an hour. A job whose store keeps failing (a run it
    /// cannot read back, a constraint the data breaks) would otherwise be
    /// claimed again, oldest first, every time its lease ends, forever.
    /// It stays `Processing` (its items cannot be recorded while the store
    /// fails) and the warnings say why.
    async fn hold_back(&self, key: &crate::BulkJobKey, claim: &BulkClaim, failures: u32) -> Duration {
        let doubled = self
            .options
            .lease
            .saturating_mul(1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX));
        let held_for = doubled.clamp(self.options.lease, MAX_HOLD_BACK.max(self.options.lease));
        let until = BulkClaim {
            lease_until: self.lease_from_for(self.service.clock().now(), held_for),
            ..*claim
        };
        // Best effort: if this fails too, the lease ends as it was.
        let _ = observe::store_call(
            StoreOperation::RenewBulkClaim,
            self.service.store().renew_bulk_claim(key, &until),
        )
        .await;
        held_for
    }

    /// [`Self::work_items`] in the job's `job` span (which carries the
    /// submitting request's trace id), its end recorded as the span's
    /// outcome.
    async fn work(&self, job: BulkJob, claim: BulkClaim, stopping: &watch::Receiver<bool>) -> Result<(), Interrupted> {
        let span = observe::job_span(
            observe::JOB_KIND_BULK,
            job.action.as_str(),
            &job.account_id,
            job.trace_id.as_ref(),
        );
        let id = job.id;
        let worked = self.work_items(job, claim, stopping).instrument(span.clone()).await;
        let outcome = match &worked {
            Ok(()) => observe::OUTCOME_OK,
            Err(Interrupted::Stopping) => "released",
            Err(Interrupted::ClaimLost) => "claim_lost",
            Err(Interrupted::Store(err)) => err.kind(),
        };
        observe::close_job_span(&span, Some(&id), outcome);
        worked
    }

    /// Works `job` under `claim` until every item has an outcome, then
    /// records the job's status.
    async fn work_items(
        &self,
        mut job: BulkJob,
        mut claim: BulkClaim,
        stopping: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let key = job.key();
        let store = self.service.store();
        let renew_every = self.options.lease / 3;
        let mut renewed_at = Instant::now();
        let pending: Vec<_> = job.pending().collect();
        let position: std::collections::HashMap<_, _> = job
            .items
            .iter()
            .enumerate()
            .map(|(at, item)| (item.target_group_id, at))
            .collect();
        for batch in pending.chunks(self.options.batch_size.max(1)) {
            if *stopping.borrow() {
                // Give the job back at once instead of letting the lease run out.
                let release = BulkClaim {
                    lease_until: self.service.clock().now(),
                    ..claim
                };
                observe::store_call(StoreOperation::RenewBulkClaim, store.renew_bulk_claim(&key, &release))
                    .await
                    .map_err(Interrupted::Store)?;
                observe::count_job(observe::JOB_KIND_BULK, "released");
                return Err(Interrupted::Stopping);
            }
            if renewed_at.elapsed() >= renew_every {
                claim.lease_until = self.lease_from(self.service.clock().now());
                let renewed = retry_transient("renewal", || {
                    observe::store_call(StoreOperation::RenewBulkClaim, store.renew_bulk_claim(&key, &claim))
                })
                .await;
                if !renewed.map_err(Interrupted::Store)? {
                    return Err(Interrupted::ClaimLost);
                }
                renewed_at = Instant::now();
            }
            let applied = retry_transient("batch", || self.service.apply_bulk_batch(&job, claim.token, batch)).await;
            let outcomes = match applied {
                Ok(outcomes) => outcomes,
                Err(StoreError::ClaimLost { .. }) => return Err(Interrupted::ClaimLost),
                Err(err) => return Err(Interrupted::Store(err)),
            };
            record(&mut job, &position, &outcomes);
            count_items(job.action, &outcomes);
            // A store that never suspends (in memory) would otherwise keep
            // the thread for the whole job: let other tasks, and the stop
            // signal, in between batches.
            tokio::task::yield_now().await;
        }
        let status = job.settled_status();
        if status == BulkJobStatus::Processing {
            return Err(Interrupted::Store(StoreError::internal(
                "a bulk job still has pending items after every batch was applied",
            )));
        }
        let finished_at = self.service.clock().now();
        let finished = retry_transient("finish", || {
            observe::store_call(
                StoreOperation::FinishBulkJob,
                store.finish_bulk_job(&key, claim.token, status, finished_at),
            )
        })
        .await;
        if !finished.map_err(Interrupted::Store)? {
            return Err(Interrupted::ClaimLost);
        }
        observe::count_job(observe::JOB_KIND_BULK, observe::bulk_job_state(status));
        tracing::debug!(
            job = %key,
            trace_id = job.trace_id.map(|id| id.to_string()),
            status = status.as_str(),
            items = job.items.len(),
            "bulk job finished"
        );
        Ok(())
    }
}

/// Runs a store call, again after a transient failure (a dropped
/// connection, a busy database) a few times with growing pauses: a blip
/// should not stall a job for a whole lease. Every call the runner makes
/// is safe to repeat: a failed one wrote nothing.
async fn retry_transient<T, F, Fut>(what: &'static str, mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(10);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if err.is_retryable() && attempt < TRANSIENT_ATTEMPTS => {
                tracing::debug!(error = %err, attempt, "a bulk-job {what} failed; trying it again");
                tokio::time::sleep(pause).await;
                pause = (pause * 4).min(Duration::from_secs(1));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The longest a job whose batches keep failing is held back between two
/// attempts.
const MAX_HOLD_BACK: Duration = Duration::from_secs(3600);

/// Attempts of one store call when the store keeps failing transiently
/// (10 ms, 40 ms, 160 ms, 640 ms apart); past them a batch's job waits for
/// its lease to end and is resumed then.
const TRANSIENT_ATTEMPTS: u32 = 5;

/// Copies a batch's outcomes into the job's items, found through
/// `position` (each target group's index in `job.items`).
/// Counts a batch's item outcomes in [`observe::BULK_ITEMS`].
fn count_items(action: crate::BulkAction, outcomes: &[(crate::TargetGroupId, BulkItemOutcome)]) {
    let mut updated = 0;
    let mut failed = [0u64; crate::BulkItemFailure::ALL.len()];
    for (_, outcome) in outcomes {
        match outcome {
            BulkItemOutcome::Updated => updated += 1,
            BulkItemOutcome::Failed(failure) => {
                if let Some(at) = crate::BulkItemFailure::ALL.iter().position(|f| f == failure) {
                    failed[at] += 1;
                }
            }
        }
    }
    observe::count_bulk_items(action.as_str(), "updated", updated);
    for (failure, count) in crate::BulkItemFailure::ALL.iter().zip(failed) {
        observe::count_bulk_items(action.as_str(), failure.code(), count);
    }
}

fn record(
    job: &mut BulkJob,
    position: &std::collections::HashMap<crate::TargetGroupId, usize>,
    outcomes: &[(crate::TargetGroupId, BulkItemOutcome)],
) {
    for (target_group_id, outcome) in outcomes {
        if let Some(item) = position.get(target_group_id).and_then(|at| job.items.get_mut(*at)) {
            item.outcome = Some(*outcome);
        }
    }
}
