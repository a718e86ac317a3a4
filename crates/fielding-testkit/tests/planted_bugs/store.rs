//! The planted store: a `FieldingStore` in memory, correct unless told to
//! carry one bug.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use fielding_core::{
    AccountId, BulkClaim, BulkItem, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus,
    ChangeNotifier, ChangeRecord, ClaimToken, ConsumerName, Decide, DecideItem, FeedPage, FeedPosition, FieldingRun,
    FieldingRunId, FieldingRunJob, FieldingStore, ItemUpdate, JobCreated, JobId, JobKey, JobOutcome, JobState, RunKey,
    Scope, StoreError, TargetGroupId, Timestamp, Update, UpdateNow, UpdateOutcome, Version,
};

use crate::feed::Feed;

/// The bug a [`PlantedStore`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bug {
    /// None: the reference implementation, which must pass.
    None,
    /// Compare-and-swap checks the version under one lock, awaits, and
    /// writes under another: two writers of one version both win.
    SplitLock,
    /// The current version is the last change record, with records ordered
    /// by their decimal text: right up to version 9, wrong from 10 on
    /// (`"10" < "9"`).
    TextOrderedVersions,
    /// The version lives in an `i32` column: version 2^31 is stored as
    /// -2^31 and cannot be read back.
    I32VersionColumn,
    /// Compare-and-swap compares only the low 32 bits of the versions.
    LowBitsCompare,
    /// Every write that produces a version divisible by 7 loses its change
    /// record.
    DropsChangeRecords,
    /// Insert never checks whether the target group has a run.
    NoTargetGroupCheck,
    /// Insert checks the target group, awaits, then inserts: concurrent
    /// inserts can all pass the check.
    RacyInsert,
    /// `get`, `changes` and compare-and-swap find runs by id alone.
    IgnoresScope,
    /// Compare-and-swap appends the change record, awaits, then writes the
    /// run: readers can see the record without its version.
    RecordBeforeRun,
    /// Timestamps are kept in whole seconds.
    SecondPrecision,
    /// Compare-and-swap is an upsert (`INSERT ... ON CONFLICT (id) DO
    /// UPDATE ... WHERE version = expected`): a run that does not exist is
    /// created instead of being `NotFound`.
    CasUpsertsMissingRun,
    /// Compare-and-swap writes every column but the version (left out of
    /// the `SET` list): the run keeps its old version, with the new fields
    /// and a record of the new version. Blunt (most cases that write catch
    /// it), but the one the bump-by-one case exists for.
    CasKeepsVersion,
    /// Compare-and-swap serialises the writers of each run (a lock per run
    /// held across the call) and batches the writes staged while other
    /// calls are in flight, but applies the batch to the rows in reverse
    /// order (the batch's row ids and runs out of step): right while one
    /// run is written at a time, while writers of two runs overlap each
    /// one's run (and record) lands on the other's row, whichever order
    /// they come in.
    ReversedWriteBatch,
    /// A conflict reports `expected + 1` as the current version instead of
    /// looking it up.
    GuessedConflictVersion,
    /// `update` is overridden to save a round trip, but reads (and checks
    /// `expected` against what it read) under one lock, awaits, and writes
    /// under another without checking the version again: two concurrent
    /// updates of one version both win.
    SplitLockUpdate,
    /// `update` (overridden, under one lock) finds the run by id alone.
    UpdateIgnoresScope,
    /// `update` (overridden, under one lock) writes whatever `decide` asks
    /// for without comparing `expected` with the stored version.
    UpdateIgnoresExpected,
    /// `update` retries on a conflict by itself, calling `decide` again on
    /// the new version (up to three times).
    UpdateRetriesOnConflict,
    /// The store answers at once (`updates_now`), reading, deciding and
    /// writing under one lock, and skips the version check there ("nothing
    /// can change under the lock"), forgetting that `decide` may plan a
    /// write at another version: its `update` is right.
    UpdateNowIgnoresExpected,
    /// Not a bug if declared: every call awaits once (like a round trip),
    /// and one in three calls that overlap another answer a retryable
    /// "busy" error without doing anything.
    BusyUnderContention,
    /// `create_job` looks the idempotency key up, awaits, then inserts:
    /// concurrent submissions of one key all create a job.
    RacyJobKey,
    /// Idempotency keys are unique per target group, not per account.
    JobKeyPerTargetGroup,
    /// `get_job` and `finish_job` find jobs by id alone.
    JobIgnoresScope,
    /// `finish_job` overwrites an outcome already recorded.
    FinishOverwrites,
    /// The trace id of a job is not stored.
    DropsJobTraceId,
    /// `expire_jobs` picks jobs by age alone (`COALESCE(finished_at,
    /// created_at) < cutoff`), without asking whether they finished: an
    /// old processing job goes too.
    ExpiresProcessingJobs,
    /// `expire_jobs` removes every eligible job, whatever the limit.
    ExpiryIgnoresLimit,
    /// `expire_jobs` measures age from `created_at`: a job created long ago
    /// but finished recently goes early.
    ExpiresByCreationTime,
    /// `expire_jobs` compares with `<=`: a job finished exactly at the
    /// cutoff goes too.
    InclusiveExpiryCutoff,
    /// `expire_jobs` removes the job but leaves its idempotency key behind
    /// (a key table of its own, not cleaned): the key answers the removed
    /// job forever.
    ExpiryKeepsKeys,
    /// `finish_job` of a finished job keeps the outcome but records the
    /// new finish time, so a job told twice never grows old.
    FinishRefreshesTime,
    /// `create_bulk_job` looks the key up, awaits, then inserts: concurrent
    /// submissions of one key all create a bulk job.
    RacyBulkKey,
    /// Bulk idempotency keys are unique per account and project, not per
    /// account.
    BulkKeyPerProject,
    /// Bulk jobs and creation jobs share one key table: a bulk job under a
    /// key a creation job used fails on the unique index.
    BulkKeySharedWithJobs,
    /// Items are read back by target group id (a `SELECT` without `ORDER
    /// BY position`), not in submission order.
    BulkItemsSorted,
    /// Bulk jobs are found by account and id, whatever the project.
    BulkJobIgnoresProject,
    /// `claim_bulk_job` takes held jobs too, whatever their lease.
    ClaimIgnoresLease,
    /// `claim_bulk_job` of a job claimed before only moves the lease and
    /// keeps the old token (`COALESCE(token, $new)`): the old holder keeps
    /// writing, the new one is refused.
    ClaimKeepsToken,
    /// `claim_bulk_job` takes the newest job first.
    ClaimNewestFirst,
    /// `claim_bulk_job` picks a job, awaits, then sets the claim without
    /// checking again (a `SELECT` then an `UPDATE` without `FOR UPDATE
    /// SKIP LOCKED`): concurrent claimers all get the same job.
    RacyClaim,
    /// `renew_bulk_claim` moves the lease of a processing job for any
    /// token.
    RenewIgnoresToken,
    /// `finish_bulk_job` finishes a processing job for any token.
    FinishIgnoresToken,
    /// `finish_bulk_job` leaves the claim in place, and holding is checked
    /// by token alone: the finished job's token still renews and applies.
    FinishKeepsClaim,
    /// `apply_bulk_items` ignores the token: anyone may apply.
    ApplyNotFenced,
    /// `apply_bulk_items` decides every item, even one with an outcome, and
    /// does what it answers again.
    ApplyRedecides,
    /// `apply_bulk_items` writes each item as it goes: a conflict on a
    /// later item leaves the earlier ones written.
    ApplyNotAtomic,
    /// `apply_bulk_items` writes whatever `decide` asks for without
    /// comparing `expected` with the stored version.
    ApplyIgnoresExpected,
    /// `apply_bulk_items` records `Updated` without writing the run.
    ApplyRecordsWithoutWrite,
    /// `apply_bulk_items` writes the run without its change record.
    ApplyDropsChangeRecord,
    /// `apply_bulk_items` finds each item's run by target group alone, in
    /// any account and project.
    ApplyIgnoresScope,
    /// `apply_bulk_items` decides (and checks versions and outcomes) under
    /// one lock, awaits, and writes under another without checking again:
    /// right one call at a time, but concurrent appliers of the same items
    /// both write.
    ApplySplitLock,
    /// `expire_bulk_jobs` removes old processing bulk jobs too.
    BulkExpiresProcessing,
    /// `expire_bulk_jobs` removes every eligible bulk job, whatever the
    /// limit.
    BulkExpiryIgnoresLimit,
    /// `expire_bulk_jobs` removes the job but not its items (no `ON DELETE
    /// CASCADE`): a new job under the same id reads the old outcomes back.
    BulkExpiryKeepsItems,
    /// `expire_bulk_jobs` measures age from `created_at`.
    BulkExpiresByCreationTime,
    /// The outbox bug: a record's position is taken when it is written,
    /// but it becomes readable only when its write "commits", later: once
    /// someone reads the feed, every other record a compare-and-swap
    /// writes is held back until a reader has read past its position
    /// (bounded, and only while records keep coming), as a transaction
    /// that took sequence number 41 commits after the one that took 42 has
    /// been read.
    OutboxVisibility,
    /// Records written by `apply_bulk_items` never reach the feed (the bulk
    /// path inserts change records without the columns the feed selects
    /// on); `changes` has them.
    BulkWritesMissFeed,
    /// The feed's cursor is inclusive (`position >= after`): every page
    /// starts with the last record of the page before.
    InclusiveCursor,
    /// The feed returns every account's records.
    FeedIgnoresAccount,
    /// A cursor before pruned records reads on from what is kept: records
    /// are skipped silently instead of `FeedExpired`.
    FeedIgnoresHorizon,
    /// `after = None` reads from the oldest kept record, below the pruned
    /// horizon.
    NoneReadsBelowHorizon,
    /// A cursor past the store's counter (from another database) is read
    /// from: empty pages until the counter passes it, silently skipping.
    FeedAcceptsForeignCursor,
    /// `next` is the bookmark (the store's counter) even when the page is
    /// full, jumping past records not yet read.
    NextJumpsAhead,
    /// `has_more` is "the page is full" (no `limit + 1` fetch): wrong when
    /// exactly `limit` records remain.
    HasMoreByFullPage,
    /// `prune_changes` removes every eligible record, whatever the limit.
    PruneIgnoresLimit,
    /// Checkpoints are saved under the consumer name alone, whatever the
    /// account.
    CheckpointWrongAccount,
    /// The store has a change notifier but never notifies it.
    SilentNotifier,
}

/// A bulk job of the [`PlantedStore`].
#[derive(Debug, Clone)]
struct StoredBulk {
    job: BulkJob,
    claim: Option<BulkClaim>,
    finished_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct State {
    /// The staged writes of [`Bug::ReversedWriteBatch`]: the row each is
    /// for, the run and its record.
    staged: Vec<(FieldingRunId, FieldingRun, ChangeRecord)>,
    runs: HashMap<FieldingRunId, Row>,
    by_scope: HashMap<Scope, FieldingRunId>,
    jobs: HashMap<JobId, FieldingRunJob>,
    /// When each finished job finished.
    finished_at: HashMap<JobId, Timestamp>,
    /// The jobs whose keys [`Bug::ExpiryKeepsKeys`] left behind.
    retired: Vec<FieldingRunJob>,
    bulk: HashMap<JobId, StoredBulk>,
    /// The items [`Bug::BulkExpiryKeepsItems`] left behind, by job id.
    leftover_items: HashMap<JobId, Vec<BulkItem>>,
}

#[derive(Debug)]
struct Row {
    run: FieldingRun,
    /// The "version column", as the bug would store it.
    version: i64,
    changes: Vec<ChangeRecord>,
}

/// A `FieldingStore` in memory, correct unless told to carry a bug.
#[derive(Debug)]
pub(crate) struct PlantedStore {
    bug: Bug,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    overlapping: AtomicUsize,
    /// Calls inside a racy bug's gap between its check and its write
    /// ([`PlantedStore::race_window`]).
    in_window: AtomicUsize,
    /// The per-run locks of [`Bug::ReversedWriteBatch`].
    run_locks: Mutex<HashMap<FieldingRunId, Arc<tokio::sync::Mutex<()>>>>,
    feed: Feed,
}

/// One call in flight, for [`Bug::BusyUnderContention`].
struct InFlight<'a>(Option<&'a AtomicUsize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.0 {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl PlantedStore {
    pub(crate) fn new(bug: Bug) -> Self {
        Self {
            bug,
            state: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            overlapping: AtomicUsize::new(0),
            in_window: AtomicUsize::new(0),
            run_locks: Mutex::default(),
            feed: Feed::default(),
        }
    }

    /// The lock of run `id`, for [`Bug::ReversedWriteBatch`].
    fn run_lock(&self, id: FieldingRunId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.run_locks.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(id).or_default())
    }

    /// Starts a call; for [`Bug::BusyUnderContention`], may refuse it.
    async fn enter(&self) -> Result<InFlight<'_>, StoreError> {
        if self.bug != Bug::BusyUnderContention {
            return Ok(InFlight(None));
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Some(&self.in_flight));
        tokio::task::yield_now().await;
        if self.in_flight.load(Ordering::SeqCst) > 1
            && self.overlapping.fetch_add(1, Ordering::SeqCst).is_multiple_of(3)
        {
            return Err(StoreError::transient("database is busy"));
        }
        Ok(guard)
    }

    /// The gap a racy bug leaves between its check and its write (the round
    /// trip of a store that checks in one statement and writes in another):
    /// waits, a few turns at most, until another call is in such a gap too.
    /// The kit's racing cases start their callers together, so with this
    /// the race the bug allows happens on every run, also on a loaded
    /// machine whose scheduler would otherwise run the callers one after
    /// the other; a lone caller goes on after the last turn. The turns are
    /// yields first, then (for a caller still alone, whose partner's thread
    /// the operating system has not run yet) a few milliseconds of sleep.
    async fn race_window(&self) {
        self.in_window.fetch_add(1, Ordering::SeqCst);
        let alone = || self.in_window.load(Ordering::SeqCst) <= 1;
        for _ in 0..64 {
            if !alone() {
                break;
            }
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            if !alone() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tokio::task::yield_now().await;
        self.in_window.fetch_sub(1, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn visible(&self, row: &Row, key: &RunKey) -> bool {
        self.bug == Bug::IgnoresScope || row.run.scope() == key.scope
    }

    fn column(&self, version: Version) -> i64 {
        if self.bug == Bug::I32VersionColumn {
            i64::from(version.get() as i32)
        } else {
            version.get() as i64
        }
    }

    fn read(&self, row: &Row) -> Result<FieldingRun, StoreError> {
        let version = u64::try_from(row.version)
            .ok()
            .and_then(Version::new)
            .ok_or_else(|| StoreError::backend(format!("corrupt version column: {}", row.version)))?;
        Ok(FieldingRun {
            version,
            ..row.run.clone()
        })
    }

    fn current(&self, row: &Row) -> Result<Version, StoreError> {
        match (self.bug, row.changes.last()) {
            (Bug::TextOrderedVersions, Some(last)) => Ok(last.version),
            _ => self.read(row).map(|run| run.version),
        }
    }

    fn check(&self, row: &Row, expected: Version) -> Result<(), StoreError> {
        let current = self.current(row)?;
        let matches = match self.bug {
            Bug::LowBitsCompare => current.get() as u32 == expected.get() as u32,
            Bug::I32VersionColumn => row.version == self.column(expected),
            _ => current == expected,
        };
        if matches {
            return Ok(());
        }
        let current = match self.bug {
            Bug::GuessedConflictVersion => expected.next().unwrap_or(expected),
            _ => current,
        };
        Err(StoreError::VersionConflict { expected, current })
    }

    fn keep(&self, mut run: FieldingRun) -> FieldingRun {
        if self.bug == Bug::SecondPrecision {
            let seconds =
                |t: Timestamp| Timestamp::from_unix_millis(t.unix_millis().div_euclid(1000) * 1000).unwrap_or(t);
            run.start_fielding_at = seconds(run.start_fielding_at);
            run.end_fielding_at = seconds(run.end_fielding_at);
            run.last_changed_at = seconds(run.last_changed_at);
        }
        run
    }

    /// Appends `record` of a run of `scope` to the run's history and to the
    /// feed: its feed position and whether the feed holds it back (`None`
    /// when the record was dropped).
    fn append(&self, changes: &mut Vec<ChangeRecord>, scope: Scope, record: &ChangeRecord) -> Option<(u64, bool)> {
        self.append_as(changes, scope, record, false)
    }

    /// [`append`](Self::append), by a write that may commit late
    /// ([`Bug::OutboxVisibility`]) when `late`.
    fn append_as(
        &self,
        changes: &mut Vec<ChangeRecord>,
        scope: Scope,
        record: &ChangeRecord,
        late: bool,
    ) -> Option<(u64, bool)> {
        if self.bug == Bug::DropsChangeRecords && record.version.get().is_multiple_of(7) {
            return None;
        }
        changes.push(record.clone());
        if self.bug == Bug::TextOrderedVersions {
            changes.sort_by_key(|c| c.version.to_string());
        }
        Some(self.feed.append(self.bug, scope, record, late))
    }

    fn write_run(&self, state: &mut State, run: &FieldingRun) -> Result<(), StoreError> {
        let key = run.key();
        let row = state.runs.get_mut(&run.id).ok_or(StoreError::NotFound)?;
        if !(self.bug == Bug::IgnoresScope || row.run.scope() == key.scope) {
            return Err(StoreError::NotFound);
        }
        if self.bug != Bug::CasKeepsVersion {
            row.version = self.column(run.version);
        }
        row.run = self.keep(run.clone());
        Ok(())
    }
}

impl UpdateNow for PlantedStore {
    fn update_now(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        let mut state = self.lock();
        let Some(row) = state.runs.get_mut(&key.id).filter(|r| self.visible(r, key)) else {
            return Ok(UpdateOutcome::NotFound);
        };
        let Update::Write { run, change, .. } = decide(&self.read(row)?) else {
            return Ok(UpdateOutcome::Skipped);
        };
        self.append(&mut row.changes, run.scope(), &change);
        self.write_run(&mut state, &run)?;
        Ok(UpdateOutcome::Written)
    }
}

#[async_trait]
impl FieldingStore for PlantedStore {
    fn updates_now(&self) -> Option<&dyn UpdateNow> {
        (self.bug == Bug::UpdateNowIgnoresExpected).then_some(self as &dyn UpdateNow)
    }

    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        let _call = self.enter().await?;
        let scope = run.scope();
        if self.bug == Bug::RacyInsert {
            if self.lock().by_scope.contains_key(&scope) {
                return Err(StoreError::AlreadyExists { scope });
            }
            self.race_window().await;
        }
        let mut state = self.lock();
        let check = !matches!(self.bug, Bug::NoTargetGroupCheck | Bug::RacyInsert);
        if check && state.by_scope.contains_key(&scope) {
            return Err(StoreError::AlreadyExists { scope });
        }
        if state.runs.contains_key(&run.id) {
            return Err(StoreError::backend(format!("run id {} is taken", run.id)));
        }
        let mut changes = Vec::new();
        self.append(&mut changes, scope, change);
        state.by_scope.insert(scope, run.id);
        let row = Row {
            run: self.keep(run.clone()),
            version: self.column(run.version),
            changes,
        };
        state.runs.insert(run.id, row);
        Ok(())
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        let _call = self.enter().await?;
        let state = self.lock();
        match state.runs.get(&key.id) {
            Some(row) if self.visible(row, key) => self.read(row).map(Some),
            _ => Ok(None),
        }
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        let _call = self.enter().await?;
        let state = self.lock();
        match state.by_scope.get(scope).and_then(|id| state.runs.get(id)) {
            Some(row) => self.read(row).map(Some),
            None => Ok(None),
        }
    }

    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        let _call = self.enter().await?;
        let key = run.key();
        match self.bug {
            Bug::SplitLock => {
                {
                    let state = self.lock();
                    let row = state.runs.get(&run.id).filter(|r| self.visible(r, &key));
                    self.check(row.ok_or(StoreError::NotFound)?, expected)?;
                }
                tokio::task::yield_now().await;
                let mut state = self.lock();
                self.write_run(&mut state, run)?;
                let row = state.runs.get_mut(&run.id).ok_or(StoreError::NotFound)?;
                self.append(&mut row.changes, key.scope, change);
                Ok(())
            }
            Bug::RecordBeforeRun => {
                {
                    let mut state = self.lock();
                    let row = state.runs.get_mut(&run.id).filter(|r| self.visible(r, &key));
                    let row = row.ok_or(StoreError::NotFound)?;
                    self.check(row, expected)?;
                    self.append(&mut row.changes, key.scope, change);
                }
                tokio::task::yield_now().await;
                let mut state = self.lock();
                self.write_run(&mut state, run)
            }
            Bug::CasUpsertsMissingRun if !self.lock().runs.contains_key(&run.id) => {
                let mut state = self.lock();
                state.by_scope.entry(key.scope).or_insert(run.id);
                let mut changes = Vec::new();
                self.append(&mut changes, key.scope, change);
                let row = Row {
                    run: self.keep(run.clone()),
                    version: self.column(run.version),
                    changes,
                };
                state.runs.insert(run.id, row);
                Ok(())
            }
            Bug::ReversedWriteBatch => {
                let run_lock = self.run_lock(run.id);
                let _one_writer_per_run = run_lock.lock().await;
                {
                    let mut state = self.lock();
                    let row = state.runs.get(&run.id).filter(|r| self.visible(r, &key));
                    self.check(row.ok_or(StoreError::NotFound)?, expected)?;
                    state.staged.push((run.id, run.clone(), change.clone()));
                }
                // The round trip that stages the write; meanwhile writers
                // of other runs stage theirs in the same batch.
                tokio::task::yield_now().await;
                let mut state = self.lock();
                let batch = std::mem::take(&mut state.staged);
                let rows: Vec<FieldingRunId> = batch.iter().rev().map(|(id, _, _)| *id).collect();
                for (row_id, (_, staged, staged_change)) in rows.into_iter().zip(batch) {
                    let row = state.runs.get_mut(&row_id).ok_or(StoreError::NotFound)?;
                    row.version = self.column(staged.version);
                    row.run = self.keep(staged);
                    let scope = row.run.scope();
                    self.append(&mut row.changes, scope, &staged_change);
                }
                Ok(())
            }
            _ => {
                let appended = {
                    let mut state = self.lock();
                    let row = state.runs.get_mut(&run.id).filter(|r| self.visible(r, &key));
                    let row = row.ok_or(StoreError::NotFound)?;
                    self.check(row, expected)?;
                    let appended = self.append_as(&mut row.changes, key.scope, change, true);
                    self.write_run(&mut state, run)?;
                    appended
                };
                if let Some((position, true)) = appended {
                    self.feed.commit_late(position).await;
                }
                Ok(())
            }
        }
    }

    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        match self.bug {
            Bug::SplitLockUpdate => {
                let current = {
                    let state = self.lock();
                    match state.runs.get(&key.id) {
                        Some(row) if self.visible(row, key) => self.read(row)?,
                        _ => return Ok(UpdateOutcome::NotFound),
                    }
                };
                let Update::Write { expected, run, change } = decide(&current) else {
                    return Ok(UpdateOutcome::Skipped);
                };
                if expected != current.version {
                    return Err(StoreError::VersionConflict {
                        expected,
                        current: current.version,
                    });
                }
                // A round trip between the SELECT and the UPDATE, which
                // does not say `WHERE version = expected`.
                tokio::task::yield_now().await;
                let mut state = self.lock();
                let row = state.runs.get_mut(&run.id).ok_or(StoreError::NotFound)?;
                self.append(&mut row.changes, run.scope(), &change);
                self.write_run(&mut state, &run)?;
                Ok(UpdateOutcome::Written)
            }
            Bug::UpdateIgnoresScope | Bug::UpdateIgnoresExpected => {
                let mut state = self.lock();
                let row = state.runs.get_mut(&key.id);
                let row = row.filter(|r| self.bug == Bug::UpdateIgnoresScope || r.run.scope() == key.scope);
                let Some(row) = row else {
                    return Ok(UpdateOutcome::NotFound);
                };
                let Update::Write { expected, run, change } = decide(&self.read(row)?) else {
                    return Ok(UpdateOutcome::Skipped);
                };
                if self.bug != Bug::UpdateIgnoresExpected {
                    self.check(row, expected)?;
                }
                self.append(&mut row.changes, run.scope(), &change);
                self.write_run(&mut state, &run)?;
                Ok(UpdateOutcome::Written)
            }
            Bug::UpdateRetriesOnConflict => {
                let mut attempts = 0;
                loop {
                    let Some(current) = self.get(key).await? else {
                        return Ok(UpdateOutcome::NotFound);
                    };
                    let Update::Write { expected, run, change } = decide(&current) else {
                        return Ok(UpdateOutcome::Skipped);
                    };
                    match self.compare_and_swap(expected, &run, &change).await {
                        Err(StoreError::VersionConflict { .. }) if attempts < 3 => attempts += 1,
                        Err(err) => return Err(err),
                        Ok(()) => return Ok(UpdateOutcome::Written),
                    }
                }
            }
            // The trait's default: get, decide, compare_and_swap.
            _ => {
                let Some(current) = self.get(key).await? else {
                    return Ok(UpdateOutcome::NotFound);
                };
                let Update::Write { expected, run, change } = decide(&current) else {
                    return Ok(UpdateOutcome::Skipped);
                };
                self.compare_and_swap(expected, &run, &change).await?;
                Ok(UpdateOutcome::Written)
            }
        }
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        let _call = self.enter().await?;
        let state = self.lock();
        Ok(match state.runs.get(&key.id) {
            Some(row) if self.visible(row, key) => row.changes.clone(),
            _ => Vec::new(),
        })
    }

    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        let _call = self.enter().await?;
        let same_key = |stored: &FieldingRunJob| {
            stored.idempotency_key == job.idempotency_key
                && if self.bug == Bug::JobKeyPerTargetGroup {
                    stored.scope == job.scope
                } else {
                    stored.scope.account_id == job.scope.account_id
                }
        };
        let mut stored = job.clone();
        if self.bug == Bug::DropsJobTraceId {
            stored.trace_id = None;
        }
        if self.bug == Bug::RacyJobKey {
            if let Some(existing) = self.lock().jobs.values().find(|j| same_key(j)) {
                return Ok(JobCreated::Existing(existing.clone()));
            }
            self.race_window().await;
            self.lock().jobs.insert(job.id, stored);
            return Ok(JobCreated::Created);
        }
        // The check and the insert under one lock.
        let mut state = self.lock();
        if let Some(existing) = state.jobs.values().chain(&state.retired).find(|j| same_key(j)) {
            return Ok(JobCreated::Existing(existing.clone()));
        }
        if job.state != JobState::Processing {
            state.finished_at.insert(job.id, job.created_at);
        }
        state.jobs.insert(job.id, stored);
        Ok(JobCreated::Created)
    }

    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        let _call = self.enter().await?;
        let state = self.lock();
        Ok(state
            .jobs
            .get(id)
            .filter(|job| self.bug == Bug::JobIgnoresScope || job.scope == *scope)
            .cloned())
    }

    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        let _call = self.enter().await?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(job) = state
            .jobs
            .get_mut(id)
            .filter(|job| self.bug == Bug::JobIgnoresScope || job.scope == *scope)
        else {
            return Ok(None);
        };
        let processing = job.state == JobState::Processing;
        if processing || self.bug == Bug::FinishOverwrites {
            job.state = JobState::Finished(outcome.clone());
        }
        if processing || self.bug == Bug::FinishRefreshesTime {
            state.finished_at.insert(*id, finished_at);
        }
        Ok(Some(job.clone()))
    }

    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let _call = self.enter().await?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let expired = |job: &FieldingRunJob| {
            let finished = state.finished_at.get(&job.id).copied();
            let age_from = match self.bug {
                Bug::ExpiresProcessingJobs => finished.or(Some(job.created_at)),
                Bug::ExpiresByCreationTime => finished.map(|_| job.created_at),
                _ => finished,
            };
            age_from.is_some_and(|at| {
                if self.bug == Bug::InclusiveExpiryCutoff {
                    at <= finished_before
                } else {
                    at < finished_before
                }
            })
        };
        let limit = if self.bug == Bug::ExpiryIgnoresLimit {
            usize::MAX
        } else {
            limit
        };
        let doomed: Vec<JobId> = state
            .jobs
            .values()
            .filter(|job| expired(job))
            .map(|job| job.id)
            .take(limit)
            .collect();
        for id in &doomed {
            state.finished_at.remove(id);
            if let Some(job) = state.jobs.remove(id) {
                if self.bug == Bug::ExpiryKeepsKeys {
                    state.retired.push(job);
                }
            }
        }
        Ok(doomed.len())
    }

    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        let _call = self.enter().await?;
        let same_key = |stored: &StoredBulk| {
            stored.job.idempotency_key == job.idempotency_key
                && stored.job.account_id == job.account_id
                && (self.bug != Bug::BulkKeyPerProject || stored.job.project_id == job.project_id)
        };
        if self.bug == Bug::RacyBulkKey {
            if let Some(existing) = self.lock().bulk.values().find(|s| same_key(s)) {
                return Ok(BulkJobCreated::Existing(self.shown(&existing.job)));
            }
            self.race_window().await;
            self.lock().bulk.insert(job.id, StoredBulk::new(job.clone()));
            return Ok(BulkJobCreated::Created);
        }
        // The check and the insert under one lock.
        let mut state = self.lock();
        if let Some(existing) = state.bulk.values().find(|s| same_key(s)) {
            return Ok(BulkJobCreated::Existing(self.shown(&existing.job)));
        }
        let shared_key = state
            .jobs
            .values()
            .any(|j| j.idempotency_key == job.idempotency_key && j.scope.account_id == job.account_id);
        if self.bug == Bug::BulkKeySharedWithJobs && shared_key {
            return Err(StoreError::backend(
                "duplicate key value violates unique constraint \"idempotency_keys_pkey\"",
            ));
        }
        if state.bulk.contains_key(&job.id) {
            return Err(StoreError::backend(format!("bulk job id {} is taken", job.id)));
        }
        let mut stored = job.clone();
        if let Some(leftovers) = state.leftover_items.remove(&job.id) {
            for item in &mut stored.items {
                if let Some(old) = leftovers.iter().find(|o| o.target_group_id == item.target_group_id) {
                    item.outcome = old.outcome;
                }
            }
        }
        state.bulk.insert(job.id, StoredBulk::new(stored));
        Ok(BulkJobCreated::Created)
    }

    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
        let _call = self.enter().await?;
        let state = self.lock();
        Ok(state
            .bulk
            .get(&key.id)
            .filter(|stored| self.bulk_visible(stored, key))
            .map(|stored| self.shown(&stored.job)))
    }

    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError> {
        let _call = self.enter().await?;
        let pick = |state: &State| {
            let unheld = state.bulk.values().filter(|stored| {
                stored.job.status == BulkJobStatus::Processing
                    && (self.bug == Bug::ClaimIgnoresLease || stored.claim.is_none_or(|held| held.lease_until <= now))
            });
            let age = |stored: &&StoredBulk| (stored.job.created_at, stored.job.id);
            if self.bug == Bug::ClaimNewestFirst {
                unheld.max_by_key(age).map(|stored| stored.job.id)
            } else {
                unheld.min_by_key(age).map(|stored| stored.job.id)
            }
        };
        let picked = if self.bug == Bug::RacyClaim {
            let picked = pick(&self.lock());
            // The round trip between the SELECT and the UPDATE.
            self.race_window().await;
            picked
        } else {
            None
        };
        let mut state = self.lock();
        let Some(id) = picked.or_else(|| pick(&state)) else {
            return Ok(None);
        };
        let Some(stored) = state.bulk.get_mut(&id) else {
            return Ok(None);
        };
        stored.claim = match (self.bug, stored.claim) {
            (Bug::ClaimKeepsToken, Some(old)) => Some(BulkClaim {
                token: old.token,
                lease_until: claim.lease_until,
            }),
            _ => Some(*claim),
        };
        Ok(Some(self.shown(&stored.job)))
    }

    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
        let _call = self.enter().await?;
        let mut state = self.lock();
        let Some(stored) = state.bulk.get_mut(&key.id) else {
            return Ok(false);
        };
        let anyone = self.bug == Bug::RenewIgnoresToken
            && self.bulk_visible(stored, key)
            && stored.job.status == BulkJobStatus::Processing;
        if !anyone && !self.bulk_holds(stored, key, claim.token) {
            return Ok(false);
        }
        stored.claim = Some(BulkClaim {
            token: stored.claim.map_or(claim.token, |held| held.token),
            lease_until: claim.lease_until,
        });
        Ok(true)
    }

    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        let _call = self.enter().await?;
        let mut planned = Vec::with_capacity(items.len());
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            let allowed = state.bulk.get(&key.id).is_some_and(|stored| {
                self.bulk_visible(stored, key)
                    && (self.bug == Bug::ApplyNotFenced || self.bulk_holds(stored, key, token))
            });
            if !allowed {
                return Err(StoreError::ClaimLost { key: *key, token });
            }
            for id in items {
                let recorded = state
                    .bulk
                    .get(&key.id)
                    .and_then(|stored| stored.job.items.iter().find(|item| item.target_group_id == *id))
                    .ok_or_else(|| StoreError::internal(format!("{id} is not an item of {key}")))?
                    .outcome;
                if let Some(outcome) = recorded.filter(|_| self.bug != Bug::ApplyRedecides) {
                    planned.push((*id, None, outcome));
                    continue;
                }
                let row_id = self.run_of(state, key, id);
                let current = match row_id.and_then(|row_id| state.runs.get(&row_id)) {
                    Some(row) => Some(self.read(row)?),
                    None => None,
                };
                let (write, outcome) = match decide(*id, current.as_ref()) {
                    ItemUpdate::Record(outcome) => (None, outcome),
                    ItemUpdate::Write { expected, run, change } => {
                        let row = row_id
                            .and_then(|row_id| state.runs.get(&row_id))
                            .ok_or_else(|| StoreError::internal("decide asked to write where there is no run"))?;
                        if self.bug != Bug::ApplyIgnoresExpected {
                            self.check(row, expected)?;
                        }
                        (Some((run, change)), BulkItemOutcome::Updated)
                    }
                };
                if self.bug == Bug::ApplyNotAtomic {
                    self.commit_item(state, key, *id, write, outcome)?;
                    planned.push((*id, None, outcome));
                } else {
                    planned.push((*id, write, outcome));
                }
            }
            if self.bug != Bug::ApplySplitLock {
                return self.commit_items(state, key, planned);
            }
        }
        // The round trip between the decisions and the writes, which do not
        // say `WHERE version = expected` nor look at the outcomes again.
        tokio::task::yield_now().await;
        let mut state = self.lock();
        self.commit_items(&mut state, key, planned)
    }

    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let _call = self.enter().await?;
        let mut state = self.lock();
        let Some(stored) = state.bulk.get_mut(&key.id) else {
            return Ok(false);
        };
        let anyone = self.bug == Bug::FinishIgnoresToken
            && self.bulk_visible(stored, key)
            && stored.job.status == BulkJobStatus::Processing;
        if !anyone && !self.bulk_holds(stored, key, token) {
            return Ok(false);
        }
        stored.job.status = status;
        stored.finished_at = Some(finished_at);
        if self.bug != Bug::FinishKeepsClaim {
            stored.claim = None;
        }
        Ok(true)
    }

    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let _call = self.enter().await?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let expired = |stored: &StoredBulk| {
            let age_from = match self.bug {
                Bug::BulkExpiresProcessing => stored.finished_at.or(Some(stored.job.created_at)),
                Bug::BulkExpiresByCreationTime => stored.finished_at.map(|_| stored.job.created_at),
                _ => stored.finished_at,
            };
            age_from.is_some_and(|at| at < finished_before)
        };
        let limit = if self.bug == Bug::BulkExpiryIgnoresLimit {
            usize::MAX
        } else {
            limit
        };
        let doomed: Vec<JobId> = state
            .bulk
            .values()
            .filter(|stored| expired(stored))
            .map(|stored| stored.job.id)
            .take(limit)
            .collect();
        for id in &doomed {
            if let Some(stored) = state.bulk.remove(id) {
                if self.bug == Bug::BulkExpiryKeepsItems {
                    state.leftover_items.insert(*id, stored.job.items);
                }
            }
        }
        Ok(doomed.len())
    }

    async fn feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let _call = self.enter().await?;
        self.feed.read(self.bug, account, after, limit)
    }

    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let _call = self.enter().await?;
        let mut guard = self.lock();
        let state = &mut *guard;
        Ok(self.feed.prune(self.bug, changed_before, limit, |record| {
            if let Some(row) = state.runs.get_mut(&record.run_id) {
                row.changes.retain(|kept| kept.version != record.version);
            }
        }))
    }

    async fn load_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Result<Option<FeedPosition>, StoreError> {
        let _call = self.enter().await?;
        Ok(self.feed.load_checkpoint(self.bug, account, consumer))
    }

    async fn save_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<(), StoreError> {
        let _call = self.enter().await?;
        self.feed.save_checkpoint(self.bug, account, consumer, position);
        Ok(())
    }

    fn change_notifier(&self) -> Option<ChangeNotifier> {
        Some(self.feed.notifier())
    }
}

impl StoredBulk {
    fn new(job: BulkJob) -> Self {
        let finished_at = (job.status != BulkJobStatus::Processing).then_some(job.created_at);
        Self {
            job,
            claim: None,
            finished_at,
        }
    }
}

/// The bulk-job helpers of the planted store.
impl PlantedStore {
    fn bulk_visible(&self, stored: &StoredBulk, key: &BulkJobKey) -> bool {
        stored.job.account_id == key.account_id
            && (self.bug == Bug::BulkJobIgnoresProject || stored.job.project_id == key.project_id)
    }

    /// Whether `token` holds the job at `key`.
    fn bulk_holds(&self, stored: &StoredBulk, key: &BulkJobKey, token: ClaimToken) -> bool {
        self.bulk_visible(stored, key)
            && stored.claim.is_some_and(|held| held.token == token)
            && (self.bug == Bug::FinishKeepsClaim || stored.job.status == BulkJobStatus::Processing)
    }

    /// The job as reads answer it.
    fn shown(&self, job: &BulkJob) -> BulkJob {
        let mut shown = job.clone();
        if self.bug == Bug::BulkItemsSorted {
            shown.items.sort_by_key(|item| item.target_group_id);
        }
        shown
    }

    /// The run an item of the job at `key` acts on.
    fn run_of(&self, state: &State, key: &BulkJobKey, id: &TargetGroupId) -> Option<FieldingRunId> {
        if self.bug == Bug::ApplyIgnoresScope {
            return state
                .runs
                .values()
                .find(|row| row.run.target_group_id == *id)
                .map(|row| row.run.id);
        }
        state
            .by_scope
            .get(&Scope::new(key.account_id, key.project_id, *id))
            .copied()
    }

    /// Writes what `apply_bulk_items` planned and answers the outcomes.
    #[allow(clippy::type_complexity)]
    fn commit_items(
        &self,
        state: &mut State,
        key: &BulkJobKey,
        planned: Vec<(TargetGroupId, Option<(FieldingRun, ChangeRecord)>, BulkItemOutcome)>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        let mut answer = Vec::with_capacity(planned.len());
        for (id, write, outcome) in planned {
            self.commit_item(state, key, id, write, outcome)?;
            answer.push((id, outcome));
        }
        Ok(answer)
    }

    /// One item's write (if any) and outcome.
    fn commit_item(
        &self,
        state: &mut State,
        key: &BulkJobKey,
        id: TargetGroupId,
        write: Option<(FieldingRun, ChangeRecord)>,
        outcome: BulkItemOutcome,
    ) -> Result<(), StoreError> {
        if let Some((run, change)) = write.filter(|_| self.bug != Bug::ApplyRecordsWithoutWrite) {
            let row = state.runs.get_mut(&run.id).ok_or(StoreError::NotFound)?;
            if self.bug == Bug::BulkWritesMissFeed {
                row.changes.push(change.clone());
            } else if self.bug != Bug::ApplyDropsChangeRecord {
                self.append(&mut row.changes, run.scope(), &change);
            }
            self.write_run(state, &run)?;
        }
        if let Some(stored) = state.bulk.get_mut(&key.id) {
            for item in stored.job.items.iter_mut().filter(|item| item.target_group_id == id) {
                item.outcome = Some(outcome);
            }
        }
        Ok(())
    }
}
