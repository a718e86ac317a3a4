//! The storage trait every adapter implements.
//!
//! One trait, many backends (in-memory, SQLite, PostgreSQL, yours). The
//! service holds it as `Arc<dyn FieldingStore>`, so the trait is object-safe
//! and its futures are `Send`. `fielding-testkit` runs the same conformance
//! suite against every implementation; a store is correct when it passes.

use std::error::Error as StdError;
use std::fmt;

use async_trait::async_trait;

use crate::{
    AccountId, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ChangeNotifier,
    ChangeRecord, ClaimToken, ConsumerName, DecideItem, FeedPage, FeedPosition, FieldingRun, FieldingRunJob,
    JobCreated, JobKey, JobOutcome, RunKey, Scope, TargetGroupId, Timestamp, Version,
};

/// A boxed error from a storage backend.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a store reports. The service turns these into [`crate::FieldingError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `insert`: the target group (scope) already has a run.
    #[error("{scope} already has a fielding run")]
    AlreadyExists {
        /// The scope that is taken.
        scope: Scope,
    },

    /// `compare_and_swap`: no run at that address.
    #[error("fielding run not found")]
    NotFound,

    /// `compare_and_swap`: the run is not at the expected version. Nothing
    /// was written.
    #[error("version conflict: expected version {expected}, the run is at version {current}")]
    VersionConflict {
        /// The version the writer read.
        expected: Version,
        /// The version the run is at now.
        current: Version,
    },

    /// A bulk-job write by a runner that no longer holds the job: another
    /// runner claimed it (after this one's lease ran out), or it is
    /// finished or gone. Nothing was written.
    #[error("{key} is no longer held by claim {token}")]
    ClaimLost {
        /// The job.
        key: BulkJobKey,
        /// The token that was refused.
        token: ClaimToken,
    },

    /// `feed`: records after the reader's cursor have been pruned, so
    /// reading on from it would skip them. The reader must start over from
    /// the current state (Kubernetes' `410 Gone` for a compacted
    /// `resourceVersion`).
    #[error("the feed of account {account} no longer holds every record after cursor {after}: records up to {pruned_through} were pruned")]
    FeedExpired {
        /// The account whose feed was read.
        account: AccountId,
        /// The reader's cursor.
        after: FeedPosition,
        /// The last pruned position of the account.
        pruned_through: FeedPosition,
    },

    /// The backend failed (I/O, connection, corrupt data, ...). Nothing was
    /// written, or the write was rolled back.
    #[error("storage backend failure{}: {message}", if *.retryable { " (retryable)" } else { "" })]
    Backend {
        /// What happened, for logs.
        message: String,
        /// `true` when the same call may succeed if repeated (connection
        /// lost, serialization failure, busy database).
        retryable: bool,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// A permanent backend failure wrapping `source`.
    pub fn backend(source: impl Into<BoxError>) -> Self {
        let source = source.into();
        StoreError::Backend {
            message: source.to_string(),
            retryable: false,
            source: Some(source),
        }
    }

    /// A transient backend failure: the caller may try again.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        let source = source.into();
        StoreError::Backend {
            message: source.to_string(),
            retryable: true,
            source: Some(source),
        }
    }

    /// A stored value the store cannot read back (out of range, unknown,
    /// or not fitting the other columns): permanent, since reading again
    /// finds the same bytes. `what` says which value, for the logs.
    ///
    /// ```
    /// let err = fielding_core::StoreError::corrupt("stored version 0 is out of range");
    /// assert!(!err.is_retryable());
    /// assert!(err.to_string().contains("corrupt data: stored version 0"));
    /// ```
    pub fn corrupt(what: impl Into<String>) -> Self {
        StoreError::Backend {
            message: format!("corrupt data: {}", what.into()),
            retryable: false,
            source: None,
        }
    }

    /// A broken promise inside the store or between the store and its
    /// caller (a bug, reported instead of a panic): permanent.
    ///
    /// ```
    /// let err = fielding_core::StoreError::internal("the writer answered with the wrong kind of reply");
    /// assert!(!err.is_retryable());
    /// ```
    pub fn internal(what: impl Into<String>) -> Self {
        StoreError::Backend {
            message: format!("internal error: {}", what.into()),
            retryable: false,
            source: None,
        }
    }

    /// Whether repeating the call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend { retryable: true, .. })
    }

    /// A stable machine name for the kind of failure, for metrics labels
    /// and log filters: `already_exists`, `not_found`, `version_conflict`,
    /// `claim_lost`, `feed_expired`, `transient` (a retryable backend
    /// failure) or `backend`.
    ///
    /// ```
    /// assert_eq!(fielding_core::StoreError::internal("x").kind(), "backend");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::AlreadyExists { .. } => "already_exists",
            StoreError::NotFound => "not_found",
            StoreError::VersionConflict { .. } => "version_conflict",
            StoreError::ClaimLost { .. } => "claim_lost",
            StoreError::FeedExpired { .. } => "feed_expired",
            StoreError::Backend { retryable: true, .. } => "transient",
            StoreError::Backend { .. } => "backend",
        }
    }
}

/// What the `decide` callback of [`FieldingStore::update`] wants done with
/// the run it was shown.
#[derive(Debug)]
// Boxing the large variant would cost an allocation on every write; the
// value lives on the stack for the length of one call.
#[allow(clippy::large_enum_variant)]
pub enum Update {
    /// Write nothing: the command failed, or changed nothing.
    Skip,
    /// Write `run` and append `change` if the stored run is still at
    /// `expected` (the same promise as [`FieldingStore::compare_and_swap`]).
    Write {
        /// The version the decision was made on.
        expected: Version,
        /// The next state of the run.
        run: FieldingRun,
        /// The record of this change.
        change: ChangeRecord,
    },
}

/// What [`FieldingStore::update`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// No run at that address; `decide` was not called.
    NotFound,
    /// `decide` said [`Update::Skip`]; nothing was written.
    Skipped,
    /// The write happened, with its change record.
    Written,
}

/// A write that `decide` asked for, checked to be for the run that was
/// read: what a store's `update` hands to its compare-and-swap.
#[derive(Debug)]
pub struct PlannedWrite {
    /// The version the decision was made on.
    pub expected: Version,
    /// The next state of the run.
    pub run: FieldingRun,
    /// The record of this change.
    pub change: ChangeRecord,
}

/// The step every [`FieldingStore::update`] shares between its read and
/// its write, so that the trait's default and every override treat
/// `decide`'s answer alike: a missing run is `NotFound` without calling
/// `decide`; `Skip` writes nothing; a write of any run other than the one
/// read is refused as a bug (a store must never let one key's decision
/// write another key).
///
/// ```
/// use fielding_core::{Decided, FieldingStore, RunKey, StoreError, UpdateOutcome};
/// # async fn update(store: &dyn FieldingStore, key: &RunKey, decide: fielding_core::Decide<'_>) -> Result<UpdateOutcome, StoreError> {
/// // An adapter's `update`: its own read, the shared step, its own write.
/// let current = store.get(key).await?;
/// Decided::new(key, current.as_ref(), decide)?
///     .write_with(|w| async move { store.compare_and_swap(w.expected, &w.run, &w.change).await })
///     .await
/// # }
/// ```
#[derive(Debug)]
// Lives on the stack for one `update`; boxing the write would cost an
// allocation on every command.
#[allow(clippy::large_enum_variant)]
pub enum Decided {
    /// Nothing to write: the answer is this outcome.
    Done(UpdateOutcome),
    /// Write this, then answer [`UpdateOutcome::Written`].
    Write(PlannedWrite),
}

impl Decided {
    /// Shows `current` (the run read at `key`, if any) to `decide` and
    /// checks its answer.
    pub fn new(key: &RunKey, current: Option<&FieldingRun>, decide: Decide<'_>) -> Result<Self, StoreError> {
        let mut planned = None;
        let outcome = Self::in_place(
            key,
            current,
            |run| *run,
            decide,
            |_, expected, run, change| {
                planned = Some(PlannedWrite {
                    expected,
                    run: run.clone(),
                    change: change.clone(),
                });
                Ok(())
            },
        )?;
        Ok(match planned {
            Some(write) => Decided::Write(write),
            None => Decided::Done(outcome),
        })
    }

    /// The whole step for a store that writes where it read, under a lock
    /// it already holds (no `.await` between read and write, like
    /// `MemoryStore`): `slot` is what was found at `key` (`None`: nothing),
    /// `run_of` shows the run in it, and `write` applies the planned write
    /// (expected version, next run, change record) to the slot. The parts
    /// are lent as they lie in `decide`'s answer, not moved out of it:
    /// every move of a run is a copy, and on the in-memory path every copy
    /// counts; `write` copies each part once, to where it is kept.
    ///
    /// ```
    /// use fielding_core::{Decided, RunKey, StoreError, UpdateOutcome};
    /// # fn update(slot: Option<&mut fielding_core::FieldingRun>, key: &RunKey, decide: fielding_core::Decide<'_>) -> Result<UpdateOutcome, StoreError> {
    /// Decided::in_place(key, slot, |run| &**run, decide, |run, expected, next, _change| {
    ///     if run.version != expected {
    ///         return Err(StoreError::VersionConflict { expected, current: run.version });
    ///     }
    ///     *run = next.clone(); // and append the change record
    ///     Ok(())
    /// })
    /// # }
    /// ```
    #[inline(always)]
    pub fn in_place<S>(
        key: &RunKey,
        slot: Option<S>,
        run_of: impl FnOnce(&S) -> &FieldingRun,
        decide: Decide<'_>,
        write: impl FnOnce(S, Version, &FieldingRun, &ChangeRecord) -> Result<(), StoreError>,
    ) -> Result<UpdateOutcome, StoreError> {
        let Some(slot) = slot else {
            return Ok(UpdateOutcome::NotFound);
        };
        match &decide(run_of(&slot)) {
            Update::Skip => Ok(UpdateOutcome::Skipped),
            // Checked in place, field by field: building the run's key
            // copies its ids.
            Update::Write { run, .. } if !is_at(run, key) => Err(wrong_key(key, run)),
            Update::Write { expected, run, change } => {
                write(slot, *expected, run, change).map(|()| UpdateOutcome::Written)
            }
        }
    }

    /// Performs the planned write, if any, with `write` (a compare-and-swap
    /// at `expected`), and answers what `update` reports.
    pub async fn write_with<F, Fut>(self, write: F) -> Result<UpdateOutcome, StoreError>
    where
        F: FnOnce(PlannedWrite) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        match self {
            Decided::Done(outcome) => Ok(outcome),
            Decided::Write(planned) => write(planned).await.map(|()| UpdateOutcome::Written),
        }
    }
}

/// Whether `run` is the run at `key` (same id, same scope), compared in
/// place.
#[inline(always)]
fn is_at(run: &FieldingRun, key: &RunKey) -> bool {
    run.id == key.id
        && run.account_id == key.scope.account_id
        && run.project_id == key.scope.project_id
        && run.target_group_id == key.scope.target_group_id
}

#[cold]
fn wrong_key(key: &RunKey, run: &FieldingRun) -> StoreError {
    StoreError::internal(format!("decide asked to write {} in place of {key}", run.key()))
}

/// The callback of [`FieldingStore::update`]. It may be called while the
/// store holds a lock or a transaction open, so it must be quick, must not
/// block, and must not call back into the store.
pub type Decide<'a> = &'a mut (dyn FnMut(&FieldingRun) -> Update + Send);

/// Persistence for fielding runs and their change records.
///
/// # The contract every adapter honours
///
/// * **Scope is part of the address.** `get` and `compare_and_swap` find a
///   run only if account, project, target group *and* id all match. A run
///   under another scope is indistinguishable from no run.
/// * **One run per target group.** `insert` refuses a run whose scope
///   already has one with [`StoreError::AlreadyExists`], also when two
///   inserts race: exactly one succeeds. Uniqueness is per *scope*
///   (account, project, target group): the same target-group id under
///   another account or project is another target group, so a SQL store's
///   unique key covers all three columns.
/// * **Reads see the latest committed write.** `get`, `find_by_target_group`
///   and `changes` return what the last successful write left (no stale
///   replicas, no caches that lag).
/// * **Compare-and-swap is atomic.** `compare_and_swap(expected, run,
///   change)` writes only if the stored run is at `expected`; checking and
///   writing are one indivisible step, so of two writers holding the same
///   version exactly one wins. The loser gets
///   [`StoreError::VersionConflict`] carrying the version it lost to, and
///   nothing changes. A missing run is [`StoreError::NotFound`].
/// * **A write and its change record are one.** `insert` and
///   `compare_and_swap` store `change` together with the run, both or
///   neither. Change records come back from `changes` in version order,
///   exactly one per version, no gaps (until pruned: then the kept
///   ones, newest last).
/// * **The feed skips nothing.** `feed` lists an account's records in an
///   order where nothing can later appear before what a reader has read
///   (see [`FieldingStore::feed`]).
/// * **Round trip is exact.** Every field comes back as written (timestamps
///   are whole milliseconds, versions up to `i64::MAX`).
/// * **`update` is a read-modify-write.** The default (`get`, `decide`,
///   `compare_and_swap`) is always correct; an override may do the three in
///   one step (one lock, one transaction) but must produce only outcomes
///   the default could.
/// * **Errors are classified, not stringly.** Backend failures are
///   [`StoreError::Backend`], with `retryable` set for transient faults.
///
/// The caller guarantees: `run.version == change.version` and
/// `change.run_id == run.id`; for `compare_and_swap`, `run.version ==
/// expected.next()`. The service inserts at [`Version::INITIAL`]; a store
/// must also accept an insert at a higher version (the conformance kit uses
/// that to test versions of many digits), in which case the run's history
/// starts at that version.
///
/// # Example
///
/// Stores are used through [`crate::FieldingService`], but the trait is
/// plain async Rust; see `fielding-memory` for a complete implementation.
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::FieldingStore;
/// fn takes_any_store(store: Arc<dyn FieldingStore>) -> Arc<dyn FieldingStore> { store }
/// ```
#[async_trait]
pub trait FieldingStore: Send + Sync + fmt::Debug {
    /// Stores a new run and its first change record.
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError>;

    /// The run at `key`, if one exists under exactly that scope.
    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError>;

    /// The run of a target group, if it has one.
    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError>;

    /// Replaces the run at `run.key()` with `run` and appends `change`, only
    /// if the stored version is `expected`.
    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError>;

    /// The change records of the run at `key`, oldest first. Empty when
    /// there is no such run.
    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError>;

    /// Records a creation job, unless the account already has a job under
    /// `job.idempotency_key`: then nothing is written and the existing job
    /// is returned. Atomic: of many concurrent calls with one key and
    /// account, exactly one gets [`JobCreated::Created`].
    ///
    /// The job's id is unique across all accounts; a store may refuse a
    /// duplicate id with a backend error.
    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError>;

    /// The job at `key` (its id, under exactly that target group), or
    /// `None` (also when the job exists under another scope).
    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError>;

    /// Records how the job at `key` ended, and when (`finished_at`, the
    /// instant [`expire_jobs`](Self::expire_jobs) measures a job's age
    /// from), if it is still processing; the first outcome recorded wins
    /// and later calls change nothing, neither the outcome nor its time.
    /// Returns the job as stored afterwards, or `None` when there is no
    /// such job.
    ///
    /// The finish time is kept by the store but is not part of
    /// [`FieldingRunJob`]: the contract's job has no such field. A job
    /// handed to [`create_job`](Self::create_job) already finished counts
    /// as finished at its `created_at`.
    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError>;

    /// Removes up to `limit` finished jobs whose outcome was recorded
    /// strictly before `finished_before`, each together with its
    /// idempotency key, and answers how many it removed. Afterwards the
    /// job reads as missing (`get_job` answers `None`) and its key is free:
    /// the account can use it for a new job.
    ///
    /// * **Never a processing job**, however old: its outcome is still to
    ///   be recorded (perhaps by a resumed attempt), and its key still
    ///   guards against a second run.
    /// * **Bounded**: one call does at most `limit` removals, so a caller
    ///   can keep each call short (one SQL statement, one lock hold) and
    ///   repeat until the answer is below `limit`. `limit == 0` removes
    ///   nothing. Which of the eligible jobs go first is the store's
    ///   choice (the SQL adapters take the oldest, through an index).
    /// * **Atomic per job**: a job and its key go together; a concurrent
    ///   `create_job` with that key sees either the old job or none.
    ///
    /// Required, with no default: a default that removed nothing would let
    /// an adapter look finished while its jobs pile up forever.
    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError>;

    /// Records a bulk job (status `Processing`, every item pending), unless
    /// the account already has a *bulk* job under `job.idempotency_key`:
    /// then nothing is written and the stored job comes back. Atomic: of
    /// many concurrent calls with one key and account, exactly one gets
    /// [`BulkJobCreated::Created`]. Bulk jobs and creation jobs have
    /// separate key namespaces.
    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError>;

    /// The bulk job at `key` with every item in submission order, or
    /// `None` (also when it exists under another account or project).
    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError>;

    /// Takes one `Processing` bulk job that nobody holds (never claimed, or
    /// its lease ended at or before `now`) and gives it to `claim`: its
    /// token replaces any earlier one, which from then on is refused
    /// ([`StoreError::ClaimLost`]). Oldest job first. Atomic: of many
    /// runners (in any number of processes) claiming at once, each job goes
    /// to exactly one. `None` when there is nothing to take.
    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError>;

    /// Moves the lease of the job at `key` to `claim.lease_until` if
    /// `claim.token` still holds it (a runner renews while it works, and
    /// releases the job early by renewing to a past instant). `false` when
    /// the token no longer holds the job.
    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError>;

    /// Applies the job's action to `items` (target groups of the job) in
    /// one atomic step, for the holder of `token`:
    ///
    /// * an item that already has an outcome keeps it, and `decide` is not
    ///   called for it;
    /// * for every other item, the run of that target group (in the job's
    ///   account and project; `None` if there is none) is shown to
    ///   `decide`, once, and what it answers is done: an outcome recorded,
    ///   or the run written (compare-and-swap at `expected`, with its
    ///   change record) and the item recorded as updated.
    ///
    /// **All or nothing**: every run write, change record and item outcome
    /// of the call commits together, or none does. That is what makes an
    /// item applied at most once across crashes. A run that is not at
    /// `expected` fails the whole call with [`StoreError::VersionConflict`]
    /// (the caller decides again); a token that does not hold the job,
    /// with [`StoreError::ClaimLost`]. Answers each item's outcome, in the
    /// order of `items`. `items` are distinct (the runner never repeats
    /// one): a target group named twice is a caller's bug, which a store
    /// may refuse (failing the call, writing nothing) or answer with the
    /// first occurrence's outcome, but never by writing the run twice.
    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError>;

    /// Records the job's final `status` and `finished_at` (what
    /// [`expire_bulk_jobs`](Self::expire_bulk_jobs) measures age from) and
    /// ends the claim, if `token` holds the job; `false` otherwise.
    ///
    /// The caller (the runner) promises that every item has an outcome and
    /// that `status` is [`BulkJob::settled_status`]: the store records what
    /// it is told, as `finish_job` does.
    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Removes up to `limit` finished bulk jobs (with their items and
    /// idempotency keys) finished strictly before `finished_before`; never
    /// a `Processing` one. Answers how many. The same promises as
    /// [`expire_jobs`](Self::expire_jobs).
    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError>;

    /// Up to `limit` change records of `account`'s runs (all projects and
    /// target groups) that sort after `after`, in feed order, with where
    /// to continue (see [`FeedPage`]). `after == None` starts at the
    /// account's horizon (after the last record pruned; where nothing was
    /// pruned, at the first record) and is never refused. `limit` is at
    /// least 1 (the service enforces a maximum).
    ///
    /// A cursor past every position the store has handed out (one from
    /// another database: restored from a backup, made anew) is refused
    /// with [`StoreError::FeedExpired`] too: reading on from it would skip
    /// everything written until the store caught up with it.
    ///
    /// **The feed's promise**: a reader that has read up to a position
    /// never afterwards finds a record that sorts at or before it: a
    /// record's position is fixed when it becomes visible, and records
    /// become visible in position order (within an account). So a reader
    /// that always continues from [`FeedPage::next`] sees every record
    /// exactly once, and each run's records in version order. A store that
    /// numbers records when they are *written* rather than when they
    /// *commit* breaks this (a later number can commit first); see
    /// `docs/feed.md` for how each adapter keeps it.
    ///
    /// A cursor before a pruned record ([`prune_changes`](Self::prune_changes))
    /// is refused with [`StoreError::FeedExpired`], never silently moved
    /// past what is gone.
    async fn feed(&self, account: AccountId, after: Option<FeedPosition>, limit: usize)
        -> Result<FeedPage, StoreError>;

    /// Removes up to `limit` change records made (`changed_at`) strictly
    /// before `changed_before`, and answers how many it removed. From then
    /// on, [`feed`](Self::feed) refuses a cursor of that account that sorts
    /// before a removed record, and [`changes`](Self::changes) returns the
    /// run's kept records only. Bounded like
    /// [`expire_jobs`](Self::expire_jobs): callers repeat until the answer
    /// is below `limit`. Required: a store that never prunes grows forever.
    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError>;

    /// The position consumer `consumer` of `account` saved last, if any.
    async fn load_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Result<Option<FeedPosition>, StoreError>;

    /// Saves `position` as consumer `consumer`'s checkpoint in `account`,
    /// replacing the one before (durably, when the store is durable).
    async fn save_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<(), StoreError>;

    /// The in-process wake-ups this store sends when an account has new
    /// records, if it sends any. Watchers read the feed again when woken,
    /// and also every poll interval: `None` (the default) makes them rely
    /// on the interval alone, which is correct, only slower.
    fn change_notifier(&self) -> Option<ChangeNotifier> {
        None
    }

    /// Read-modify-write in one call: reads the run at `key`, shows it to
    /// `decide` (once), and performs the write it asks for.
    ///
    /// The default is `get`, then `decide`, then `compare_and_swap`, so a
    /// store that honours those two honours this, and a concurrent writer
    /// can still win in between ([`StoreError::VersionConflict`]). A store
    /// may override it to do all three in one step (under one lock, in one
    /// transaction), saving a round trip; the outcomes must stay those the
    /// default could produce. The service sends every command through here.
    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        let current = self.get(key).await?;
        Decided::new(key, current.as_ref(), decide)?
            .write_with(|write| async move { self.compare_and_swap(write.expected, &write.run, &write.change).await })
            .await
    }

    /// This store's [`UpdateNow`], if it reads, decides and writes without
    /// waiting for anything (under its own lock, in memory); `None` (the
    /// default) if it does I/O, which must not block the caller's executor
    /// thread. The service sends every command's first decision through
    /// it when there is one: that spares each command the boxed future of
    /// an async call.
    fn updates_now(&self) -> Option<&dyn UpdateNow> {
        None
    }
}

/// [`FieldingStore::update`], done before returning: for a store whose
/// read-modify-write never waits (see [`FieldingStore::updates_now`]).
///
/// ```
/// use fielding_core::{Decided, FieldingRun, RunKey, StoreError, UpdateNow, UpdateOutcome};
/// # #[derive(Debug)] struct MyStore(std::sync::Mutex<Option<FieldingRun>>);
/// impl UpdateNow for MyStore {
///     fn update_now(&self, key: &RunKey, decide: fielding_core::Decide<'_>) -> Result<UpdateOutcome, StoreError> {
///         // One lock around the read, the decision and the write.
///         let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
///         let found = slot.as_mut().filter(|run| run.key() == *key);
///         Decided::in_place(key, found, |run| &**run, decide, |run, expected, next, _change| {
///             if run.version != expected {
///                 return Err(StoreError::VersionConflict { expected, current: run.version });
///             }
///             *run = next.clone(); // and append the change record, under the same lock
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait UpdateNow: Send + Sync {
    /// Exactly what [`FieldingStore::update`] would answer, with every
    /// promise of it: not found without calling `decide`, one decision on
    /// the run as stored, `Skip` writes nothing, a write is a
    /// compare-and-swap with its change record, atomically.
    fn update_now(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError>;
}
