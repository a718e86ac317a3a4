//! The store itself: two hash maps and a change log under one mutex.
//!
//! Why one mutex and not something cleverer: every operation is a couple of
//! hash lookups and a clone, far shorter than any await point, and one lock
//! makes the trait's atomicity promises (check-and-set, run plus change
//! record, one run per target group) true by construction. The benchmark in
//! `benches/` measures what this costs against a bare `Mutex<HashMap>`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use fielding_core::{
    AccountId, Action, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ChangeNotifier,
    ChangeRecord, ClaimToken, ConsumerName, Decide, DecideItem, Decided, FeedPage, FeedPosition, FieldingRun,
    FieldingRunId, FieldingRunJob, FieldingStore, IdempotencyKey, ItemUpdate, JobCreated, JobId, JobKey, JobOutcome,
    JobState, RunKey, Scope, Status, StoreError, TargetGroupId, Timestamp, UpdateNow, UpdateOutcome, Version,
};

use crate::bulk::BulkJobs;
use crate::log::{AccountSlot, ChangeLog, FeedRead, LogIndex};

/// How many expired jobs a store with automatic retention removes on each
/// job write, at most: more than one, so that a backlog left by a burst
/// shrinks while writes go on (each write adds at most one job), and few,
/// so that no single write pays for a large sweep.
const SWEEP_PER_WRITE: usize = 4;

/// Keyed (randomly seeded) and much faster than SipHash on 26-byte ids.
/// Ids come from clients, so the hasher must resist chosen collisions.
type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// A [`FieldingStore`] in memory. Clones share the same data.
///
/// ```
/// use fielding_memory::MemoryStore;
/// use fielding_testkit::fixtures;
/// let store = MemoryStore::new();
/// let run = fixtures::run().build();
/// store.seed(run.clone())?;
/// assert_eq!(store.run(&run.key()), Some(run));
/// assert_eq!(store.len(), 1);
/// # Ok::<(), fielding_memory::SeedError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Automatic retention ([`MemoryStore::with_job_retention`]): how long
    /// a finished job is kept, in milliseconds; [`NO_RETENTION`] for none.
    job_retention_ms: AtomicI64,
    /// Wakes this process's feed watchers after each write.
    notifier: ChangeNotifier,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            state: Mutex::default(),
            job_retention_ms: AtomicI64::new(NO_RETENTION),
            notifier: every_writer_notifier(),
        }
    }
}

/// [`Inner::job_retention_ms`] when finished jobs are kept until
/// [`FieldingStore::expire_jobs`] removes them (the default).
const NO_RETENTION: i64 = -1;

/// The store's wake-ups: every writer is in this process, so they cover
/// every write and waiting readers need to poll only as a safety net.
fn every_writer_notifier() -> ChangeNotifier {
    let notifier = ChangeNotifier::default();
    notifier.set_sees_every_writer(true);
    notifier
}

#[derive(Debug, Default)]
struct State {
    runs: FastMap<FieldingRunId, Entry>,
    by_scope: FastMap<Scope, FieldingRunId>,
    log: ChangeLog,
    jobs: FastMap<JobId, FieldingRunJob>,
    /// Idempotency keys are unique per account.
    job_keys: FastMap<(AccountId, IdempotencyKey), JobId>,
    /// Every finished job by its finish time, oldest first: what
    /// `expire_jobs` takes from the front, without looking at the others.
    finished: BTreeSet<(Timestamp, JobId)>,
    bulk: BulkJobs,
    /// Change-feed consumers' checkpoints.
    checkpoints: FastMap<(AccountId, ConsumerName), FeedPosition>,
}

#[derive(Debug)]
struct Entry {
    run: FieldingRun,
    /// The run's latest change record.
    last_change: Option<LogIndex>,
    /// The run's account's index in the log.
    account_slot: AccountSlot,
}

/// Whether `run` is under `scope`, compared in place (building the run's
/// `Scope` first copies its ids on every command).
#[inline]
fn in_scope(run: &FieldingRun, scope: &Scope) -> bool {
    run.account_id == scope.account_id
        && run.project_id == scope.project_id
        && run.target_group_id == scope.target_group_id
}

impl State {
    /// The entry at `key`, only if its scope matches too.
    fn entry(&self, key: &RunKey) -> Option<&Entry> {
        self.runs.get(&key.id).filter(|e| in_scope(&e.run, &key.scope))
    }

    fn insert(&mut self, run: FieldingRun, changes: Vec<ChangeRecord>) -> Result<(), StoreError> {
        let scope = run.scope();
        if self.by_scope.contains_key(&scope) {
            return Err(StoreError::AlreadyExists { scope });
        }
        if self.runs.contains_key(&run.id) {
            return Err(StoreError::Backend {
                message: format!("fielding run id {} is already taken", run.id),
                retryable: false,
                source: None,
            });
        }
        let account_slot = self.log.account_slot(scope.account_id);
        let last_change = self.log.push_all(changes, account_slot);
        self.by_scope.insert(scope, run.id);
        self.runs.insert(
            run.id,
            Entry {
                run,
                last_change,
                account_slot,
            },
        );
        Ok(())
    }

    fn history(&self, key: &RunKey) -> Vec<ChangeRecord> {
        self.entry(key)
            .map(|e| self.log.history(e.last_change))
            .unwrap_or_default()
    }

    /// Removes up to `limit` jobs finished before `cutoff`, oldest first,
    /// with their idempotency keys.
    fn expire_jobs(&mut self, cutoff: Timestamp, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            match self.finished.first() {
                Some(&(at, id)) if at < cutoff => {
                    self.finished.pop_first();
                    // Only finished jobs are in `finished`: a processing job
                    // is never reached from here.
                    if let Some(job) = self.jobs.remove(&id) {
                        self.job_keys.remove(&(job.scope.account_id, job.idempotency_key));
                    }
                    removed += 1;
                }
                _ => break,
            }
        }
        removed
    }
}

/// The one place a run changes: the version check and the write, with its
/// change record, in one step under the caller's lock.
fn commit(
    entry: &mut Entry,
    log: &mut ChangeLog,
    expected: Version,
    run: &FieldingRun,
    change: &ChangeRecord,
) -> Result<(), StoreError> {
    if entry.run.version != expected {
        return Err(StoreError::VersionConflict {
            expected,
            current: entry.run.version,
        });
    }
    // Copied once each, from the decision's answer to where they are kept.
    entry.run = run.clone();
    entry.last_change = Some(log.push(change, entry.account_slot, entry.last_change));
    Ok(())
}

/// Why [`MemoryStore::seed`] refused a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// The store refused it (the target group already has a run, or the id
    /// is taken).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The history given to [`MemoryStore::seed_with_history`] does not
    /// describe the run: it must be non-empty, for this run, with versions
    /// rising by one and ending at the run's version.
    #[error("inconsistent history: {0}")]
    History(String),
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// This store, forgetting finished jobs (and freeing their idempotency
    /// keys) once they have been finished for longer than `retention`,
    /// without anyone calling [`FieldingStore::expire_jobs`]: for a
    /// long-running process (a test server, a demo) whose jobs must not
    /// pile up. Default: no automatic retention. Applies to this store and
    /// its clones.
    ///
    /// The sweep is amortised over the job writes: each `create_job` and
    /// `finish_job` removes up to a few expired jobs, oldest first (and each
    /// `finish_bulk_job` up to a few expired bulk jobs), so no
    /// write pays for a large sweep and no timer or thread is needed.
    /// "Now" is the time the write carries (the new job's `created_at`,
    /// the outcome's `finished_at`), which comes from the service's clock:
    /// a test on a `ManualClock` sees jobs expire as its clock moves, and
    /// a store nobody writes to keeps what it has. A `retention` too large
    /// for a timestamp never expires anything.
    ///
    /// ```
    /// use std::time::Duration;
    /// use chrono::TimeDelta;
    /// use fielding_core::{FieldingStore, JobOutcome};
    /// use fielding_memory::MemoryStore;
    /// use fielding_testkit::fixtures;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_core::StoreError> {
    /// let store = MemoryStore::new().with_job_retention(Duration::from_secs(3600));
    /// let old = fixtures::job(fixtures::scope(), "old", fixtures::launch());
    /// store.create_job(&old).await?;
    /// store.finish_job(&old.key(), &JobOutcome::Completed, old.created_at).await?;
    ///
    /// // Two hours later, another job's write sweeps the old one away.
    /// let mut new = fixtures::job(fixtures::scope(), "new", fixtures::launch());
    /// new.created_at = old.created_at.checked_add(TimeDelta::hours(2)).unwrap();
    /// store.create_job(&new).await?;
    /// assert_eq!(store.get_job(&old.key()).await?, None);
    /// assert_eq!(store.job_count(), 1);
    /// # Ok(()) }
    /// ```
    pub fn with_job_retention(self, retention: Duration) -> Self {
        // A retention too large for milliseconds in an i64 never expires anything.
        let ms = i64::try_from(retention.as_millis()).unwrap_or(NO_RETENTION);
        self.inner.job_retention_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// The automatic sweep of [`MemoryStore::with_job_retention`], for a job
    /// write made at `now`, under the write's lock.
    fn sweep_on_write(&self, state: &mut State, now: Timestamp) {
        if let Some(cutoff) = self.retention_cutoff(now) {
            state.expire_jobs(cutoff, SWEEP_PER_WRITE);
        }
    }

    /// With automatic retention, the finish time before which a job
    /// written at `now` may go.
    fn retention_cutoff(&self, now: Timestamp) -> Option<Timestamp> {
        let retention = self.inner.job_retention_ms.load(Ordering::Relaxed);
        (retention != NO_RETENTION).then_some(retention).and_then(|retention| {
            // Below the earliest timestamp: nothing can be that old.
            Timestamp::from_unix_millis(now.unix_millis().checked_sub(retention)?)
        })
    }

    /// `update` under the store's one lock: the read, `decide` and the
    /// write with its change record in one step, then the wake-up.
    fn update_in_place(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        let outcome = {
            let mut guard = self.state();
            let state = &mut *guard;
            let entry = state.runs.get_mut(&key.id).filter(|e| in_scope(&e.run, &key.scope));
            Decided::in_place(
                key,
                entry,
                |entry| &entry.run,
                decide,
                |entry, expected, run, change| commit(entry, &mut state.log, expected, run, change),
            )
        };
        if matches!(outcome, Ok(UpdateOutcome::Written)) {
            self.inner.notifier.notify(key.scope.account_id);
        }
        outcome
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, but if a caller's panic ever
        // poisons it the data is still consistent: every write is one step.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `run` in place as it is, in any status and at any version,
    /// without walking the lifecycle. Its history starts with one synthetic
    /// change record at the run's version.
    pub fn seed(&self, run: FieldingRun) -> Result<(), SeedError> {
        let action = if run.status == Status::Scheduled {
            Action::Schedule
        } else {
            Action::Launch
        };
        let record = ChangeRecord::created(&run, action);
        let account = run.account_id;
        self.state().insert(run, vec![record])?;
        self.inner.notifier.notify(account);
        Ok(())
    }

    /// Puts `run` in place with the given change records (oldest first).
    pub fn seed_with_history(&self, run: FieldingRun, changes: Vec<ChangeRecord>) -> Result<(), SeedError> {
        let last = changes
            .last()
            .ok_or_else(|| SeedError::History("no change records".into()))?;
        if last.version != run.version {
            return Err(SeedError::History(format!(
                "the last record is version {}, the run is at version {}",
                last.version, run.version
            )));
        }
        if let Some(other) = changes.iter().find(|c| c.run_id != run.id) {
            return Err(SeedError::History(format!("a record belongs to run {}", other.run_id)));
        }
        if let Some(pair) = changes.windows(2).find(|w| w[0].version.next() != Some(w[1].version)) {
            return Err(SeedError::History(format!(
                "version {} is followed by version {}",
                pair[0].version, pair[1].version
            )));
        }
        let account = run.account_id;
        self.state().insert(run, changes)?;
        self.inner.notifier.notify(account);
        Ok(())
    }

    /// The stored run at `key` (stored status, not effective), if any.
    pub fn run(&self, key: &RunKey) -> Option<FieldingRun> {
        self.state().entry(key).map(|e| e.run.clone())
    }

    /// Every stored run, in no particular order.
    pub fn runs(&self) -> Vec<FieldingRun> {
        self.state().runs.values().map(|e| e.run.clone()).collect()
    }

    /// The change records of the run at `key`, oldest first.
    pub fn change_records(&self, key: &RunKey) -> Vec<ChangeRecord> {
        self.state().history(key)
    }

    /// How many runs are stored.
    pub fn len(&self) -> usize {
        self.state().runs.len()
    }

    /// Whether no run is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many creation jobs are stored (processing and finished).
    pub fn job_count(&self) -> usize {
        self.state().jobs.len()
    }

    /// Removes every run, change record and job.
    pub fn clear(&self) {
        let mut state = self.state();
        state.runs.clear();
        state.by_scope.clear();
        state.log.clear();
        state.jobs.clear();
        state.job_keys.clear();
        state.finished.clear();
        state.bulk.clear();
        state.checkpoints.clear();
    }

    /// How many bulk jobs are stored (processing and finished).
    pub fn bulk_job_count(&self) -> usize {
        self.state().bulk.len()
    }
}

impl UpdateNow for MemoryStore {
    fn update_now(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        self.update_in_place(key, decide)
    }
}

#[async_trait]
impl FieldingStore for MemoryStore {
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        self.state().insert(run.clone(), vec![change.clone()])?;
        self.inner.notifier.notify(run.account_id);
        Ok(())
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        Ok(self.state().entry(key).map(|e| e.run.clone()))
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        let state = self.state();
        Ok(state
            .by_scope
            .get(scope)
            .and_then(|id| state.runs.get(id))
            .map(|e| e.run.clone()))
    }

    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        {
            let mut guard = self.state();
            let state = &mut *guard;
            let entry = state
                .runs
                .get_mut(&run.id)
                .filter(|e| e.run.scope() == run.scope())
                .ok_or(StoreError::NotFound)?;
            commit(entry, &mut state.log, expected, run, change)?;
        }
        self.inner.notifier.notify(run.account_id);
        Ok(())
    }

    /// Read, decide and write under one lock: no other writer can come in
    /// between, so this never reports a conflict it did not have to.
    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        self.update_in_place(key, decide)
    }

    fn updates_now(&self) -> Option<&dyn UpdateNow> {
        // Nothing in `update` waits: read, decision and write are one step
        // under the store's lock, so the answer is ready at once.
        Some(self)
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        Ok(self.change_records(key))
    }

    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let key = (job.scope.account_id, job.idempotency_key.clone());
        if let Some(existing) = state.job_keys.get(&key).and_then(|id| state.jobs.get(id)) {
            return Ok(JobCreated::Existing(existing.clone()));
        }
        if state.jobs.contains_key(&job.id) {
            return Err(StoreError::Backend {
                message: format!("job id {} is already taken", job.id),
                retryable: false,
                source: None,
            });
        }
        state.job_keys.insert(key, job.id);
        state.jobs.insert(job.id, job.clone());
        if job.state != JobState::Processing {
            // Handed over finished: it finished when it was created.
            state.finished.insert((job.created_at, job.id));
        }
        self.sweep_on_write(state, job.created_at);
        Ok(JobCreated::Created)
    }

    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        Ok(self.state().jobs.get(id).filter(|job| job.scope == *scope).cloned())
    }

    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(job) = state.jobs.get_mut(id).filter(|job| job.scope == *scope) else {
            return Ok(None);
        };
        if job.state != JobState::Processing {
            return Ok(Some(job.clone()));
        }
        job.state = JobState::Finished(outcome.clone());
        let answer = job.clone();
        state.finished.insert((finished_at, *id));
        // The job just finished is not older than `finished_at`, so with any
        // retention this sweep leaves it alone.
        self.sweep_on_write(state, finished_at);
        Ok(Some(answer))
    }

    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        self.state().bulk.create(job)
    }

    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
        Ok(self.state().bulk.get(key).map(|stored| stored.job.clone()))
    }

    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError> {
        Ok(self.state().bulk.claim(now, claim))
    }

    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
        Ok(self.state().bulk.renew(key, claim))
    }

    /// Decides every item first and writes only if every planned write
    /// fits, all under the one lock: a batch is all or nothing.
    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        let mut guard = self.state();
        let state = &mut *guard;
        let job = state.bulk.held(key, token)?;
        let distinct: std::collections::HashSet<_> = items.iter().collect();
        if distinct.len() != items.len() {
            return Err(StoreError::internal(format!(
                "apply_bulk_items for {key} names a target group twice"
            )));
        }
        let mut planned = Vec::with_capacity(items.len());
        for target_group_id in items {
            if let Some(outcome) = job.outcome(target_group_id)? {
                planned.push((*target_group_id, None, outcome));
                continue;
            }
            let scope = Scope::new(key.account_id, key.project_id, *target_group_id);
            let run = state
                .by_scope
                .get(&scope)
                .and_then(|id| state.runs.get(id))
                .map(|e| &e.run);
            match decide(*target_group_id, run) {
                ItemUpdate::Record(outcome) => planned.push((*target_group_id, None, outcome)),
                ItemUpdate::Write {
                    expected,
                    run: next,
                    change,
                } => {
                    let current = run.ok_or_else(|| {
                        StoreError::internal(format!("decide asked to write {} where there is no run", next.key()))
                    })?;
                    if next.key() != current.key() {
                        return Err(StoreError::internal(format!(
                            "decide asked to write {} in place of {}",
                            next.key(),
                            current.key()
                        )));
                    }
                    if current.version != expected {
                        return Err(StoreError::VersionConflict {
                            expected,
                            current: current.version,
                        });
                    }
                    planned.push((
                        *target_group_id,
                        Some((expected, next, change)),
                        BulkItemOutcome::Updated,
                    ));
                }
            }
        }
        let mut answer = Vec::with_capacity(planned.len());
        let job = state.bulk.held(key, token)?;
        let mut wrote = false;
        for (target_group_id, write, outcome) in planned {
            if let Some((expected, next, change)) = write {
                let entry = state.runs.get_mut(&next.id).ok_or(StoreError::NotFound)?;
                commit(entry, &mut state.log, expected, &next, &change)?;
                wrote = true;
            }
            job.record(&target_group_id, outcome);
            answer.push((target_group_id, outcome));
        }
        drop(guard);
        if wrote {
            self.inner.notifier.notify(key.account_id);
        }
        Ok(answer)
    }

    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut guard = self.state();
        let finished = guard.bulk.finish(key, token, status, finished_at);
        if let Some(cutoff) = self.retention_cutoff(finished_at) {
            guard.bulk.expire(cutoff, SWEEP_PER_WRITE);
        }
        Ok(finished)
    }

    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        Ok(self.state().bulk.expire(finished_before, limit))
    }

    /// Reads under the one lock: every record is visible from the moment
    /// it has its number, so the page's bookmark is the log's head.
    async fn feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let state = self.state();
        let scope_of = |record: &ChangeRecord| state.runs.get(&record.run_id).map(|e| e.run.scope());
        match state.log.feed(account, after, limit, scope_of) {
            FeedRead::Page(page) => Ok(page),
            FeedRead::Broken(why) => Err(StoreError::internal(why)),
            FeedRead::Expired { pruned_through } => Err(StoreError::FeedExpired {
                account,
                after: after.unwrap_or_default(),
                pruned_through,
            }),
        }
    }

    /// Removes the oldest records of the log, stopping at the first one
    /// that is not old enough (a prefix, so the log stays dense).
    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        Ok(self.state().log.prune(changed_before, limit))
    }

    async fn load_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Result<Option<FeedPosition>, StoreError> {
        Ok(self.state().checkpoints.get(&(account, consumer.clone())).copied())
    }

    async fn save_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<(), StoreError> {
        self.state().checkpoints.insert((account, consumer.clone()), position);
        Ok(())
    }

    fn change_notifier(&self) -> Option<ChangeNotifier> {
        Some(self.inner.notifier.clone())
    }

    /// Takes the oldest entries of the finish-time index, so a call costs
    /// O(`limit` log n) whatever the number of jobs.
    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        Ok(self.state().expire_jobs(finished_before, limit))
    }
}
