//! The kit tests itself: stores with planted bugs must be rejected by the
//! cases aimed at those bugs, while the same store without a bug, and
//! `MemoryStore`, pass everything.
//!
//! Each bug is one a real adapter could ship: the lost update of a check and
//! a write under two locks, versions ordered as text, a 32-bit version
//! column, dropped change records, a racy uniqueness check, lookups that
//! ignore the scope, a change record written before its run, seconds
//! instead of milliseconds, a conflict that guesses the current version, a
//! compare-and-swap that creates a missing run or keeps the version, a
//! batch of writes applied to each other's rows;
//! and overrides of `update` that read and write under two locks, ignore
//! the scope, ignore the expected version, or retry (and decide) again;
//! and job expiry that removes processing jobs, ignores its limit, ages
//! jobs from their creation, includes the cutoff, leaves keys behind, or
//! lets a second `finish_job` refresh the finish time;
//! and bulk jobs whose keys race, are per project or share the creation
//! jobs' table, whose items come back sorted, which leak across projects,
//! whose claims ignore leases, keep the old token, take the newest job or
//! race, whose renewals and finishes ignore the token or keep the claim,
//! whose `apply_bulk_items` is not fenced, decides recorded items again,
//! writes item by item, ignores the expected version, records without
//! writing, drops change records, finds runs in other accounts, or decides
//! and writes under two locks, and whose expiry removes processing jobs,
//! ignores its limit, leaves items behind or ages jobs from their creation.
//! One more behaviour is legitimate only when declared: answering
//! contention with retryable "busy" errors.
//!
//! The bugs and the cases each must fail are one table (`planted_bugs!`),
//! and every case of the kit must be required to fail by at least one bug.
//!
//! Run with `-- --nocapture` to see what each case reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use fielding_core::{
    BulkClaim, BulkItem, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ChangeRecord, ClaimToken,
    Decide, DecideItem, FieldingRun, FieldingRunId, FieldingRunJob, FieldingStore, ItemUpdate, JobCreated, JobId,
    JobKey, JobOutcome, JobState, RunKey, Scope, StoreError, TargetGroupId, Timestamp, Update, UpdateOutcome, Version,
};
use fielding_memory::MemoryStore;
use fielding_testkit::{run_all, Capabilities, SuiteReport, CASES};

/// The bug a [`PlantedStore`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
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
struct PlantedStore {
    bug: Bug,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    overlapping: AtomicUsize,
    /// Calls inside a racy bug's gap between its check and its write
    /// ([`PlantedStore::race_window`]).
    in_window: AtomicUsize,
    /// The per-run locks of [`Bug::ReversedWriteBatch`].
    run_locks: Mutex<HashMap<FieldingRunId, Arc<tokio::sync::Mutex<()>>>>,
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
    fn new(bug: Bug) -> Self {
        Self {
            bug,
            state: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            overlapping: AtomicUsize::new(0),
            in_window: AtomicUsize::new(0),
            run_locks: Mutex::default(),
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
    /// the other; a lone caller goes on after the last turn.
    async fn race_window(&self) {
        self.in_window.fetch_add(1, Ordering::SeqCst);
        for _ in 0..64 {
            if self.in_window.load(Ordering::SeqCst) > 1 {
                break;
            }
            tokio::task::yield_now().await;
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

    fn append(&self, changes: &mut Vec<ChangeRecord>, record: &ChangeRecord) {
        if self.bug == Bug::DropsChangeRecords && record.version.get().is_multiple_of(7) {
            return;
        }
        changes.push(record.clone());
        if self.bug == Bug::TextOrderedVersions {
            changes.sort_by_key(|c| c.version.to_string());
        }
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

#[async_trait]
impl FieldingStore for PlantedStore {
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
        self.append(&mut changes, change);
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
                self.append(&mut row.changes, change);
                Ok(())
            }
            Bug::RecordBeforeRun => {
                {
                    let mut state = self.lock();
                    let row = state.runs.get_mut(&run.id).filter(|r| self.visible(r, &key));
                    let row = row.ok_or(StoreError::NotFound)?;
                    self.check(row, expected)?;
                    self.append(&mut row.changes, change);
                }
                tokio::task::yield_now().await;
                let mut state = self.lock();
                self.write_run(&mut state, run)
            }
            Bug::CasUpsertsMissingRun if !self.lock().runs.contains_key(&run.id) => {
                let mut state = self.lock();
                state.by_scope.entry(key.scope).or_insert(run.id);
                let mut changes = Vec::new();
                self.append(&mut changes, change);
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
                    self.append(&mut row.changes, &staged_change);
                }
                Ok(())
            }
            _ => {
                let mut state = self.lock();
                let row = state.runs.get_mut(&run.id).filter(|r| self.visible(r, &key));
                let row = row.ok_or(StoreError::NotFound)?;
                self.check(row, expected)?;
                self.append(&mut row.changes, change);
                self.write_run(&mut state, run)
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
                self.append(&mut row.changes, &change);
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
                self.append(&mut row.changes, &change);
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
            if self.bug != Bug::ApplyDropsChangeRecord {
                self.append(&mut row.changes, &change);
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

async fn suite(bug: Bug) -> SuiteReport {
    suite_with(bug, Capabilities::full()).await
}

async fn suite_with(bug: Bug, capabilities: Capabilities) -> SuiteReport {
    let report = run_all(&|| async move { Arc::new(PlantedStore::new(bug)) }, capabilities).await;
    println!("==== {bug:?}, {capabilities:?}\n{report}");
    report
}

/// Asserts that the suite rejects `bug` through (at least) the cases in
/// `caught_by`, and that the cases in `unaffected` still pass, so the
/// failures come from the bug and not from noise.
async fn assert_rejected(bug: Bug, caught_by: &[&str], unaffected: &[&str]) {
    let report = suite(bug).await;
    let failed = report.failed_cases();
    for case in caught_by {
        assert!(CASES.contains(case), "{case} is not a case");
        assert!(failed.contains(case), "{bug:?}: `{case}` should have failed\n{report}");
    }
    for case in unaffected {
        assert!(CASES.contains(case), "{case} is not a case");
        assert!(!failed.contains(case), "{bug:?}: `{case}` should have passed\n{report}");
    }
}

/// One test per planted bug, from one table: `test: Bug, caught_by [cases
/// that must fail], unaffected [cases that must pass];`. The same table is
/// `PLANTED`, which `every_case_is_required_to_fail_by_a_planted_bug`
/// checks against the list of cases.
macro_rules! planted_bugs {
    ($($test:ident: $bug:ident, caught_by [$($caught:expr),* $(,)?], unaffected [$($unaffected:expr),* $(,)?];)*) => {
        /// Every planted bug with the cases that must fail on it.
        const PLANTED: &[(Bug, &[&str])] = &[$((Bug::$bug, &[$($caught),*])),*];

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                assert_rejected(Bug::$bug, &[$($caught),*], &[$($unaffected),*]).await;
            }
        )*
    };
}

planted_bugs! {
    a_check_and_a_write_under_two_locks_loses_updates: SplitLock,
        caught_by [
            "race_concurrent_increments_on_one_run_lose_no_update",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected [
            "round_trip_preserves_every_field",
            "compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing",
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
        ];
    versions_ordered_as_text_break_at_two_digits: TextOrderedVersions,
        caught_by [
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
            "change_records_one_per_version_in_order_without_gaps",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing",
        ];
    an_i32_version_column_breaks_at_2_pow_31: I32VersionColumn,
        caught_by [
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
        ],
        unaffected [
            "round_trip_preserves_every_field",
            "race_concurrent_increments_on_one_run_lose_no_update",
        ];
    comparing_the_low_32_bits_accepts_stale_versions: LowBitsCompare,
        caught_by [
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
        ],
        unaffected ["compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing"];
    dropped_change_records_are_caught: DropsChangeRecords,
        caught_by [
            "change_records_one_per_version_in_order_without_gaps",
            "change_records_are_atomic_with_the_write_they_describe",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected ["round_trip_preserves_every_field"];
    a_missing_target_group_check_is_caught: NoTargetGroupCheck,
        caught_by [
            "insert_refuses_a_second_run_for_the_same_target_group",
            "concurrent_inserts_for_one_target_group_have_exactly_one_winner",
        ],
        unaffected ["scope_isolation_hides_the_run_from_every_other_scope"];
    a_racy_target_group_check_is_caught_only_by_the_race: RacyInsert,
        caught_by ["concurrent_inserts_for_one_target_group_have_exactly_one_winner"],
        unaffected ["insert_refuses_a_second_run_for_the_same_target_group"];
    lookups_that_ignore_the_scope_are_caught: IgnoresScope,
        caught_by [
            "scope_isolation_hides_the_run_from_every_other_scope",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
            "update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide",
        ],
        unaffected ["round_trip_preserves_every_field"];
    a_change_record_written_before_its_run_is_caught: RecordBeforeRun,
        caught_by [
            "change_records_are_atomic_with_the_write_they_describe",
            "race_concurrent_increments_on_one_run_lose_no_update",
        ],
        unaffected ["change_records_one_per_version_in_order_without_gaps"];
    whole_seconds_fail_the_round_trip: SecondPrecision,
        caught_by [
            "round_trip_preserves_every_field",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
        ],
        unaffected [];
    a_compare_and_swap_that_creates_a_missing_run_is_caught: CasUpsertsMissingRun,
        caught_by ["compare_and_swap_on_a_missing_run_is_not_found"],
        unaffected [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
            "update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide",
            "race_writers_spread_over_many_runs_do_not_cross_talk",
        ];
    a_compare_and_swap_that_keeps_the_version_is_caught: CasKeepsVersion,
        caught_by [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
        ],
        unaffected [
            "insert_refuses_a_second_run_for_the_same_target_group",
            "compare_and_swap_on_a_missing_run_is_not_found",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
        ];
    a_write_batch_applied_to_the_wrong_rows_mixes_runs_up: ReversedWriteBatch,
        caught_by ["race_writers_spread_over_many_runs_do_not_cross_talk"],
        unaffected [
            "compare_and_swap_at_the_current_version_bumps_it_by_exactly_one",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "race_concurrent_updates_on_one_run_lose_no_update",
            "change_records_are_atomic_with_the_write_they_describe",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
        ];
    a_guessed_conflict_version_is_caught: GuessedConflictVersion,
        caught_by [
            "compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
        ],
        unaffected ["compare_and_swap_at_the_current_version_bumps_it_by_exactly_one"];
    busy_answers_under_contention_fail_when_not_declared: BusyUnderContention,
        caught_by [
            "concurrent_inserts_for_one_target_group_have_exactly_one_winner",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "linearizable_interleaved_read_then_write_cycles_match_the_model",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ],
        unaffected [
            "round_trip_preserves_every_field",
            "compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31",
        ];
    // The sequential `update` cases pass: a store right one call at a
    // time passes them, whatever its concurrency bugs.
    an_update_that_reads_and_writes_under_two_locks_loses_updates: SplitLockUpdate,
        caught_by ["race_concurrent_updates_on_one_run_lose_no_update"],
        unaffected [
            "update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide",
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
            "race_concurrent_increments_on_one_run_lose_no_update",
            "round_trip_preserves_every_field",
        ];
    an_update_that_ignores_the_scope_is_caught: UpdateIgnoresScope,
        caught_by ["update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide"],
        unaffected [
            "scope_isolation_hides_the_run_from_every_other_scope",
            "scope_isolation_compare_and_swap_through_another_scope_is_not_found",
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "update_write_with_a_stale_version_is_refused_and_changes_nothing",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ];
    an_update_that_ignores_the_expected_version_is_caught: UpdateIgnoresExpected,
        caught_by ["update_write_with_a_stale_version_is_refused_and_changes_nothing"],
        unaffected [
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
            "race_concurrent_updates_on_one_run_lose_no_update",
        ];
    an_update_that_retries_and_decides_again_is_caught: UpdateRetriesOnConflict,
        caught_by ["update_write_with_a_stale_version_is_refused_and_changes_nothing"],
        unaffected [
            "update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing",
            "update_write_at_the_read_version_bumps_it_by_exactly_one",
        ];
    a_racy_idempotency_key_check_creates_duplicate_jobs: RacyJobKey,
        caught_by ["concurrent_job_creations_with_one_key_have_exactly_one_winner"],
        unaffected [
            "job_round_trip_preserves_every_field",
            "job_idempotency_key_is_unique_per_account",
        ];
    idempotency_keys_per_target_group_are_caught: JobKeyPerTargetGroup,
        caught_by ["job_idempotency_key_is_unique_per_account"],
        unaffected [
            "job_round_trip_preserves_every_field",
            "finish_job_records_the_first_outcome_only",
        ];
    jobs_found_by_id_alone_leak_across_scopes: JobIgnoresScope,
        caught_by ["job_scope_isolation_hides_the_job_from_every_other_scope"],
        unaffected [
            "job_round_trip_preserves_every_field",
            "job_idempotency_key_is_unique_per_account",
        ];
    an_outcome_overwritten_by_a_later_one_is_caught: FinishOverwrites,
        caught_by ["finish_job_records_the_first_outcome_only"],
        unaffected ["job_scope_isolation_hides_the_job_from_every_other_scope"];
    a_dropped_trace_id_is_caught: DropsJobTraceId,
        caught_by ["job_round_trip_preserves_every_field"],
        unaffected ["round_trip_preserves_every_field"];
    an_expiry_that_removes_processing_jobs_is_caught: ExpiresProcessingJobs,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field", "finish_job_records_the_first_outcome_only"];
    an_expiry_that_ignores_the_limit_is_caught: ExpiryIgnoresLimit,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field"];
    an_expiry_by_creation_time_is_caught: ExpiresByCreationTime,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field"];
    an_inclusive_expiry_cutoff_is_caught: InclusiveExpiryCutoff,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_round_trip_preserves_every_field"];
    an_expiry_that_leaves_the_key_behind_is_caught: ExpiryKeepsKeys,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["job_idempotency_key_is_unique_per_account"];
    a_finish_time_refreshed_by_a_later_finish_job_is_caught: FinishRefreshesTime,
        caught_by ["expire_jobs_removes_old_finished_jobs_with_their_keys_in_bounded_batches"],
        unaffected ["finish_job_records_the_first_outcome_only"];
    a_racy_bulk_idempotency_key_check_creates_duplicate_bulk_jobs: RacyBulkKey,
        caught_by ["concurrent_bulk_job_creations_with_one_key_have_exactly_one_winner"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "bulk_idempotency_key_is_unique_per_account",
        ];
    bulk_idempotency_keys_per_project_are_caught: BulkKeyPerProject,
        caught_by ["bulk_idempotency_key_is_unique_per_account"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    bulk_and_creation_jobs_sharing_one_key_table_are_caught: BulkKeySharedWithJobs,
        caught_by ["bulk_idempotency_key_is_unique_per_account"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "job_idempotency_key_is_unique_per_account",
        ];
    items_read_back_out_of_submission_order_are_caught: BulkItemsSorted,
        caught_by ["bulk_job_round_trip_preserves_every_field_and_item_order"],
        unaffected ["concurrent_claims_hand_each_bulk_job_to_exactly_one_runner"];
    bulk_jobs_found_without_their_project_leak_across_projects: BulkJobIgnoresProject,
        caught_by ["bulk_job_scope_isolation_hides_the_job_from_every_other_account_and_project"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "bulk_idempotency_key_is_unique_per_account",
        ];
    a_claim_that_ignores_the_lease_is_caught: ClaimIgnoresLease,
        caught_by ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_claim_that_keeps_the_old_token_is_caught: ClaimKeepsToken,
        caught_by ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"],
        unaffected [
            "bulk_job_round_trip_preserves_every_field_and_item_order",
            "concurrent_claims_hand_each_bulk_job_to_exactly_one_runner",
        ];
    a_claim_of_the_newest_job_first_is_caught: ClaimNewestFirst,
        caught_by ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_racy_claim_hands_one_job_to_several_runners: RacyClaim,
        caught_by ["concurrent_claims_hand_each_bulk_job_to_exactly_one_runner"],
        unaffected [
            "claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases",
            "renew_bulk_claim_moves_the_lease_only_for_the_holding_token",
        ];
    a_renewal_by_any_token_is_caught: RenewIgnoresToken,
        caught_by ["renew_bulk_claim_moves_the_lease_only_for_the_holding_token"],
        unaffected ["claim_takes_unheld_processing_bulk_jobs_oldest_first_and_respects_leases"];
    a_finish_by_any_token_is_caught: FinishIgnoresToken,
        caught_by ["finish_bulk_job_needs_the_holding_token_and_ends_the_claim"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_finish_that_keeps_the_claim_is_caught: FinishKeepsClaim,
        caught_by [
            "finish_bulk_job_needs_the_holding_token_and_ends_the_claim",
            "renew_bulk_claim_moves_the_lease_only_for_the_holding_token",
        ],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    an_apply_without_fencing_is_caught: ApplyNotFenced,
        caught_by ["apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost"],
        unaffected [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_is_all_or_nothing_when_one_write_conflicts",
        ];
    an_apply_that_decides_recorded_items_again_is_caught: ApplyRedecides,
        caught_by [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "concurrent_appliers_of_one_job_change_each_run_exactly_once",
        ],
        unaffected ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"];
    an_apply_that_writes_item_by_item_is_caught: ApplyNotAtomic,
        caught_by ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"],
        unaffected [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost",
        ];
    an_apply_that_ignores_the_expected_version_is_caught: ApplyIgnoresExpected,
        caught_by ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"],
        unaffected ["apply_bulk_items_decides_each_pending_item_once_with_its_run"];
    an_apply_that_records_updated_without_writing_is_caught: ApplyRecordsWithoutWrite,
        caught_by [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_is_all_or_nothing_when_one_write_conflicts",
        ],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    an_apply_that_drops_the_change_record_is_caught: ApplyDropsChangeRecord,
        caught_by ["apply_bulk_items_decides_each_pending_item_once_with_its_run"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    an_apply_that_finds_runs_in_other_accounts_and_projects_is_caught: ApplyIgnoresScope,
        caught_by ["apply_bulk_items_decides_each_pending_item_once_with_its_run"],
        unaffected ["apply_bulk_items_is_all_or_nothing_when_one_write_conflicts"];
    // Right one call at a time: only the race sees it.
    an_apply_that_decides_and_writes_under_two_locks_applies_items_twice: ApplySplitLock,
        caught_by ["concurrent_appliers_of_one_job_change_each_run_exactly_once"],
        unaffected [
            "apply_bulk_items_decides_each_pending_item_once_with_its_run",
            "apply_bulk_items_is_all_or_nothing_when_one_write_conflicts",
            "apply_bulk_items_by_a_token_that_does_not_hold_the_job_is_claim_lost",
        ];
    a_bulk_expiry_that_removes_processing_jobs_is_caught: BulkExpiresProcessing,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_bulk_expiry_that_ignores_the_limit_is_caught: BulkExpiryIgnoresLimit,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_bulk_expiry_that_leaves_the_items_behind_is_caught: BulkExpiryKeepsItems,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
    a_bulk_expiry_by_creation_time_is_caught: BulkExpiresByCreationTime,
        caught_by ["expire_bulk_jobs_removes_old_finished_bulk_jobs_with_their_items_and_keys_in_bounded_batches"],
        unaffected ["bulk_job_round_trip_preserves_every_field_and_item_order"];
}

/// Every case must be shown to bite: at least one planted bug requires it
/// to fail. A case no bug requires could be weakened (or emptied) and the
/// kit would not notice. Also every bug is planted once, so no entry of the
/// table shadows another.
#[test]
fn every_case_is_required_to_fail_by_a_planted_bug() {
    let unrequired: Vec<&str> = CASES
        .iter()
        .copied()
        .filter(|case| !PLANTED.iter().any(|(_, caught_by)| caught_by.contains(case)))
        .collect();
    assert!(
        unrequired.is_empty(),
        "no planted bug requires these cases to fail: {unrequired:?}"
    );
    for (i, (bug, caught_by)) in PLANTED.iter().enumerate() {
        assert!(!caught_by.is_empty(), "{bug:?} is required to fail no case");
        assert!(
            PLANTED[..i].iter().all(|(other, _)| other != bug),
            "{bug:?} is planted twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_store_without_a_bug_passes_every_case() {
    suite(Bug::None).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_every_case() {
    let report = run_all(&|| async { Arc::new(MemoryStore::new()) }, Capabilities::full()).await;
    report.assert_passed();
    let names: Vec<&str> = report.outcomes().iter().map(|(name, _)| *name).collect();
    assert_eq!(names, CASES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_answers_under_contention_pass_when_declared() {
    let declared = Capabilities::full().with_retryable_errors_under_contention(true);
    suite_with(Bug::BusyUnderContention, declared).await.assert_passed();
}

/// With the fewest writers a store may declare, one pair on one task still
/// interleaves at the await between the read and the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_that_reads_and_writes_under_two_locks_loses_updates_even_with_two_writers() {
    let fewest = suite_with(Bug::SplitLockUpdate, Capabilities::full().with_concurrent_writers(2)).await;
    let failed = fewest.failed_cases();
    assert!(
        failed.contains(&"race_concurrent_updates_on_one_run_lose_no_update"),
        "with 2 writers the update race should still fail\n{fewest}"
    );
}
