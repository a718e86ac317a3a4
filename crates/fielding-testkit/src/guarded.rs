//! A store that keeps something alive for as long as it lives.

use async_trait::async_trait;
use fielding_core::{
    AccountId, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ChangeNotifier,
    ChangeRecord, ClaimToken, ConsumerName, Decide, DecideItem, FeedPage, FeedPosition, FieldingRun, FieldingRunJob,
    FieldingStore, JobCreated, JobKey, JobOutcome, RunKey, Scope, StoreError, TargetGroupId, Timestamp, UpdateOutcome,
    Version,
};

/// `store` together with a `guard` it needs for its lifetime: the
/// temporary directory its database file lives in, or a handle whose `Drop`
/// removes the test schema. Every trait call goes straight to `store`, so a
/// factory can hand the kit a `Guarded` and clean-up happens when the case
/// drops it.
///
/// ```
/// use std::sync::Arc;
/// use fielding_memory::MemoryStore;
/// use fielding_testkit::Guarded;
///
/// #[derive(Debug)]
/// struct Cleanup;
/// impl Drop for Cleanup {
///     fn drop(&mut self) { /* remove what the store used */ }
/// }
/// let store = Arc::new(Guarded::new(MemoryStore::new(), Cleanup));
/// # let _ = store;
/// ```
#[derive(Debug)]
pub struct Guarded<S, G> {
    /// The store every call goes to.
    pub store: S,
    /// What must outlive it.
    pub guard: G,
}

impl<S, G> Guarded<S, G> {
    /// Pairs `store` with `guard`.
    pub fn new(store: S, guard: G) -> Self {
        Self { store, guard }
    }
}

#[async_trait]
impl<S, G> FieldingStore for Guarded<S, G>
where
    S: FieldingStore,
    G: std::fmt::Debug + Send + Sync + 'static,
{
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        self.store.insert(run, change).await
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        self.store.get(key).await
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        self.store.find_by_target_group(scope).await
    }

    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        self.store.compare_and_swap(expected, run, change).await
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        self.store.changes(key).await
    }

    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        self.store.update(key, decide).await
    }

    fn updates_now(&self) -> Option<&dyn fielding_core::UpdateNow> {
        self.store.updates_now()
    }

    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        self.store.create_job(job).await
    }

    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError> {
        self.store.get_job(key).await
    }

    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        self.store.finish_job(key, outcome, finished_at).await
    }

    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.store.expire_jobs(finished_before, limit).await
    }

    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        self.store.create_bulk_job(job).await
    }

    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
        self.store.get_bulk_job(key).await
    }

    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError> {
        self.store.claim_bulk_job(now, claim).await
    }

    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
        self.store.renew_bulk_claim(key, claim).await
    }

    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        self.store.apply_bulk_items(key, token, items, decide).await
    }

    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.store.finish_bulk_job(key, token, status, finished_at).await
    }

    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.store.expire_bulk_jobs(finished_before, limit).await
    }

    async fn feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        self.store.feed(account, after, limit).await
    }

    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.store.prune_changes(changed_before, limit).await
    }

    async fn load_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Result<Option<FeedPosition>, StoreError> {
        self.store.load_feed_checkpoint(account, consumer).await
    }

    async fn save_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<(), StoreError> {
        self.store.save_feed_checkpoint(account, consumer, position).await
    }

    fn change_notifier(&self) -> Option<ChangeNotifier> {
        self.store.change_notifier()
    }
}
