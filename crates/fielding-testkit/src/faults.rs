//! Fault injection around any store: make the next operations fail on
//! purpose, to test your own 412 and 500 handling.
//!
//! [`FaultyStore`] wraps any [`FieldingStore`] (the memory store, SQLite,
//! PostgreSQL, yours) the way `object_store`'s `ThrottledStore` and
//! `LimitStore` wrap any `ObjectStore`: every call goes to the inner store
//! unless a fault is due, and [`Faults`] is the shared handle that says
//! which faults are due.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use fielding_core::{
    AccountId, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ChangeNotifier,
    ChangeRecord, ClaimToken, ConsumerName, Decide, DecideItem, Decided, FeedPage, FeedPosition, FieldingRun,
    FieldingRunJob, FieldingStore, JobCreated, JobKey, JobOutcome, RunKey, Scope, StoreError, TargetGroupId, Timestamp,
    UpdateOutcome, Version,
};

/// A kind of failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Any operation fails with [`StoreError::Backend`] (permanent).
    Storage,
    /// Any operation fails with a retryable [`StoreError::Backend`].
    TransientStorage,
    /// `compare_and_swap`, and the write step of `update`, refuse with
    /// [`StoreError::VersionConflict`], as if another writer had just won:
    /// the reported current version is one past the expected one. Nothing
    /// is written. Other operations are not affected and do not use up the
    /// count; a real conflict (or a missing run) is reported as it is and
    /// does not use it up either, so an injected conflict never hides a
    /// real one.
    Conflict,
}

impl Fault {
    /// Every kind, for tests that go through them all.
    pub const ALL: [Fault; 3] = [Fault::Storage, Fault::TransientStorage, Fault::Conflict];
}

/// Counters of pending faults: a cheap handle, shared by every clone of it
/// and of the [`FaultyStore`] it came from, so a test can keep one after
/// handing the store to a service.
///
/// ```
/// use std::sync::Arc;
/// use fielding_memory::MemoryStore;
/// use fielding_testkit::{Fault, FaultyStore};
///
/// let store = FaultyStore::new(MemoryStore::new());
/// let faults = store.faults().clone();
/// faults.inject(Fault::Storage, 2); // the next two operations fail
/// assert_eq!(store.faults().pending(Fault::Storage), 2);
/// faults.clear();
/// assert_eq!(store.faults().pending(Fault::Storage), 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Faults {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    storage: AtomicU64,
    transient: AtomicU64,
    conflict: AtomicU64,
    /// When set, storage faults hit only the operation of this name.
    only: std::sync::Mutex<Option<&'static str>>,
}

impl Faults {
    fn counter(&self, fault: Fault) -> &AtomicU64 {
        match fault {
            Fault::Storage => &self.counters.storage,
            Fault::TransientStorage => &self.counters.transient,
            Fault::Conflict => &self.counters.conflict,
        }
    }

    /// Makes the next `count` affected operations fail with `fault`
    /// (adding to any already pending).
    pub fn inject(&self, fault: Fault, count: u64) {
        self.counter(fault).fetch_add(count, Ordering::SeqCst);
    }

    /// How many injected failures of this kind are still to come.
    pub fn pending(&self, fault: Fault) -> u64 {
        self.counter(fault).load(Ordering::SeqCst)
    }

    /// Aims storage faults ([`Fault::Storage`], [`Fault::TransientStorage`])
    /// at one operation, named as in [`FieldingStore`] (`"apply_bulk_items"`,
    /// `"get"`, ...): the others go through untouched and leave the pending
    /// faults for it. `None` aims them at every operation again (the
    /// default).
    ///
    /// ```
    /// use fielding_testkit::{Fault, FaultyStore};
    /// let store = FaultyStore::new(fielding_memory::MemoryStore::new());
    /// store.faults().only_in(Some("apply_bulk_items"));
    /// store.faults().inject(Fault::Storage, u64::MAX); // every batch fails, nothing else
    /// ```
    pub fn only_in(&self, operation: Option<&'static str>) {
        *self
            .counters
            .only
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = operation;
    }

    /// Drops every pending fault.
    pub fn clear(&self) {
        for fault in Fault::ALL {
            self.counter(fault).store(0, Ordering::SeqCst);
        }
    }

    /// Uses up one pending fault of this kind, if any.
    fn take(&self, fault: Fault) -> bool {
        self.counter(fault)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The storage fault to report for the operation `op`, if one is due.
    fn storage_fault(&self, op: &'static str) -> Result<(), StoreError> {
        let aimed = *self
            .counters
            .only
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if aimed.is_some_and(|only| only != op) {
            return Ok(());
        }
        if self.take(Fault::Storage) {
            return Err(StoreError::Backend {
                message: format!("injected storage fault in {op}"),
                retryable: false,
                source: None,
            });
        }
        if self.take(Fault::TransientStorage) {
            return Err(StoreError::Backend {
                message: format!("injected transient storage fault in {op}"),
                retryable: true,
                source: None,
            });
        }
        Ok(())
    }
}

/// Any [`FieldingStore`] with fault injection: each operation fails with
/// the next pending [`Fault`], or goes to the inner store.
///
/// Every async operation (`insert`, `get`, `find_by_target_group`,
/// `compare_and_swap`, `update`, `changes`, the job and bulk-job
/// operations, `feed`, `prune_changes`, `load_feed_checkpoint`,
/// `save_feed_checkpoint`) uses up at most one pending storage fault; aim
/// them at one of them with [`Faults::only_in`]. A [`Fault::Conflict`]
/// hits only the compare-and-swap step. `change_notifier` is the inner
/// store's: wake-ups are hints, not calls that can fail.
///
/// `update` is the trait's default read → decide → write, done with the
/// inner store's `get` and `compare_and_swap` (so the inner store's own
/// `update` override is not used): that is what lets an injected conflict
/// land exactly where a real one would, after `decide` and before the
/// write. Clones share the inner store and the faults.
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::{FieldingService, FieldingStore, IfMatch, Status, UserId};
/// use fielding_memory::MemoryStore;
/// use fielding_testkit::{fixtures, Fault, FaultyStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let memory = MemoryStore::new();
/// let run = fixtures::run().with_status(Status::Live).with_version(3).build();
/// memory.seed(run.clone())?;
///
/// let store = FaultyStore::new(memory.clone());
/// let service = FieldingService::new(Arc::new(store.clone()));
///
/// // Another writer "wins" the next write: the command is refused.
/// store.faults().inject(Fault::Conflict, 1);
/// let err = service.pause(&run.key(), &IfMatch::parse("\"3\"")?, UserId::random()).await.unwrap_err();
/// assert_eq!(err.code(), "precondition_failed_error");
/// assert_eq!(memory.run(&run.key()), Some(run.clone()), "nothing was written");
///
/// // The database is down for one call.
/// store.faults().inject(Fault::Storage, 1);
/// assert!(store.get(&run.key()).await.is_err());
/// assert_eq!(store.get(&run.key()).await?, Some(run));
/// # Ok(()) }
/// ```
pub struct FaultyStore<S: ?Sized> {
    inner: Arc<S>,
    faults: Faults,
}

impl<S: FieldingStore> FaultyStore<S> {
    /// `inner` with no fault pending.
    pub fn new(inner: S) -> Self {
        Self::from_arc(Arc::new(inner))
    }
}

impl<S: FieldingStore + ?Sized> FaultyStore<S> {
    /// A store you already share (`Arc<dyn FieldingStore>` included), with
    /// no fault pending.
    pub fn from_arc(inner: Arc<S>) -> Self {
        Self {
            inner,
            faults: Faults::default(),
        }
    }

    /// The faults of this store, shared by its clones; clone the handle to
    /// keep it after handing the store away.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The wrapped store, for looking at what was (not) written.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// The injected conflict for a write at `expected` of the run at `key`,
    /// if one is pending and the run really is at `expected`; otherwise the
    /// inner store decides.
    async fn injected_conflict(&self, key: &RunKey, expected: Version) -> Result<(), StoreError> {
        if self.faults.pending(Fault::Conflict) == 0 {
            return Ok(());
        }
        // Checked against the real version first, so an injected conflict
        // never hides a real one (or a missing run).
        match self.inner.get(key).await? {
            Some(current) if current.version == expected && self.faults.take(Fault::Conflict) => {
                Err(StoreError::VersionConflict {
                    expected,
                    current: expected.next().unwrap_or(expected),
                })
            }
            _ => Ok(()),
        }
    }
}

impl<S: ?Sized> Clone for FaultyStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            faults: self.faults.clone(),
        }
    }
}

impl<S: fmt::Debug + ?Sized> fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("faults", &self.faults)
            .finish()
    }
}

#[async_trait]
impl<S: FieldingStore + ?Sized> FieldingStore for FaultyStore<S> {
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        self.faults.storage_fault("insert")?;
        self.inner.insert(run, change).await
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        self.faults.storage_fault("get")?;
        self.inner.get(key).await
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        self.faults.storage_fault("find_by_target_group")?;
        self.inner.find_by_target_group(scope).await
    }

    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        self.faults.storage_fault("compare_and_swap")?;
        self.injected_conflict(&run.key(), expected).await?;
        self.inner.compare_and_swap(expected, run, change).await
    }

    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        self.faults.storage_fault("update")?;
        let current = self.inner.get(key).await?;
        Decided::new(key, current.as_ref(), decide)?
            .write_with(|w| async move {
                self.injected_conflict(key, w.expected).await?;
                self.inner.compare_and_swap(w.expected, &w.run, &w.change).await
            })
            .await
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        self.faults.storage_fault("changes")?;
        self.inner.changes(key).await
    }

    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        self.faults.storage_fault("create_job")?;
        self.inner.create_job(job).await
    }

    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError> {
        self.faults.storage_fault("get_job")?;
        self.inner.get_job(key).await
    }

    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        self.faults.storage_fault("finish_job")?;
        self.inner.finish_job(key, outcome, finished_at).await
    }

    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.faults.storage_fault("expire_jobs")?;
        self.inner.expire_jobs(finished_before, limit).await
    }

    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        self.faults.storage_fault("create_bulk_job")?;
        self.inner.create_bulk_job(job).await
    }

    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
        self.faults.storage_fault("get_bulk_job")?;
        self.inner.get_bulk_job(key).await
    }

    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError> {
        self.faults.storage_fault("claim_bulk_job")?;
        self.inner.claim_bulk_job(now, claim).await
    }

    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
        self.faults.storage_fault("renew_bulk_claim")?;
        self.inner.renew_bulk_claim(key, claim).await
    }

    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        self.faults.storage_fault("apply_bulk_items")?;
        self.inner.apply_bulk_items(key, token, items, decide).await
    }

    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.faults.storage_fault("finish_bulk_job")?;
        self.inner.finish_bulk_job(key, token, status, finished_at).await
    }

    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.faults.storage_fault("expire_bulk_jobs")?;
        self.inner.expire_bulk_jobs(finished_before, limit).await
    }

    async fn feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        self.faults.storage_fault("feed")?;
        self.inner.feed(account, after, limit).await
    }

    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.faults.storage_fault("prune_changes")?;
        self.inner.prune_changes(changed_before, limit).await
    }

    async fn load_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Result<Option<FeedPosition>, StoreError> {
        self.faults.storage_fault("load_feed_checkpoint")?;
        self.inner.load_feed_checkpoint(account, consumer).await
    }

    async fn save_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<(), StoreError> {
        self.faults.storage_fault("save_feed_checkpoint")?;
        self.inner.save_feed_checkpoint(account, consumer, position).await
    }

    fn change_notifier(&self) -> Option<ChangeNotifier> {
        self.inner.change_notifier()
    }
}
