//! The store: [`PgStore`], its connections, and its [`FieldingStore`]
//! implementation (the statements are in `runs`, `jobs` and `bulk`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use fielding_core::{
    AccountId, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ChangeNotifier,
    ChangeRecord, ClaimToken, ConsumerName, Decide, DecideItem, Decided, FeedPage, FeedPosition, FieldingRun,
    FieldingRunJob, FieldingStore, JobCreated, JobKey, JobOutcome, RunKey, Scope, StoreError, TargetGroupId, Timestamp,
    UpdateOutcome, Version,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};

use crate::error::{backend, MigrateError};
use crate::migrations;
use crate::parking::Parking;
use crate::schema_name::SchemaName;
use crate::sql::Statements;
use crate::wakeups::Wakeups;
use crate::{bulk, feed, jobs, runs};
use fielding_core::MigrationReport;

/// A [`FieldingStore`] on PostgreSQL, for many service instances sharing
/// one database. Cheap to clone: clones share the pool.
///
/// ```no_run
/// use std::sync::Arc;
/// use fielding_core::FieldingService;
/// use fielding_postgres::PgStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // Your application's pool...
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
/// let store = PgStore::new(pool, "fielding")?;
/// // ...or let the store make one:
/// // let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/postgres", "fielding").await?;
/// store.migrate().await?; // explicit, safe when instances start at once
/// let service = FieldingService::new(Arc::new(store));
/// # let _ = service; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) schema: SchemaName,
    pub(crate) sql: Arc<Statements>,
    pub(crate) parking: Arc<Parking>,
    pub(crate) wakeups: Arc<Wakeups>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema.as_str())
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Creates the schema and tables if missing and applies every migration
    /// the database does not have yet, in one transaction under an advisory
    /// lock of the schema (`pg_advisory_xact_lock`), so any number of
    /// instances may call it at once. Refuses with
    /// [`MigrateError::SchemaTooNew`] when the database has a migration
    /// this release does not know.
    ///
    /// ```no_run
    /// # async fn demo(store: fielding_postgres::PgStore) -> Result<(), fielding_postgres::MigrateError> {
    /// let report = store.migrate().await?;
    /// assert_eq!(report.to, fielding_postgres::SCHEMA_VERSION);
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<MigrationReport, MigrateError> {
        migrations::migrate(&self.pool, &self.schema).await
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema the store's tables live in.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Whether the store listens for other instances' writes (`LISTEN` on
    /// the schema's channel, [`SchemaName::feed_channel`]) to wake this
    /// process's feed watchers; on by default. The listener holds one
    /// connection of its own (not from the store's pool) from the first
    /// time a watcher asks for [`FieldingStore::change_notifier`]. Off,
    /// watchers here learn of other instances' writes by polling only
    /// (the service's feed poll interval); this process's own writes still
    /// wake them at once, and the store still announces its writes to the
    /// others. Applies to this store and its clones.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// // An instance that only writes: no listening connection.
    /// let store = fielding_postgres::PgStore::new(pool, "fielding")?.with_feed_listener(false);
    /// # let _ = store; Ok(()) }
    /// ```
    pub fn with_feed_listener(self, on: bool) -> Self {
        self.wakeups.set_listen(on);
        self
    }

    /// Whether the feed listener (see [`PgStore::with_feed_listener`]) is
    /// running now.
    pub fn feed_listener_running(&self) -> bool {
        self.wakeups.listening()
    }

    /// A connection for one operation: a parked one if the store has one
    /// and nobody is queued for one (no pool round trip), else one from the
    /// pool.
    async fn checkout(&self, op: &'static str) -> Result<PoolConnection<Postgres>, StoreError> {
        self.parking.checkout(&self.pool).await.map_err(|e| backend(op, e))
    }

    /// Done with `conn`. After a clean operation it is parked briefly (2 ms)
    /// so that the next operation can reuse it without a pool
    /// round trip; after a backend error it goes back to the pool, which
    /// checks it and drops it if broken.
    fn release<T>(&self, conn: PoolConnection<Postgres>, outcome: &Result<T, StoreError>) {
        if matches!(outcome, Err(StoreError::Backend { .. })) || self.pool.is_closed() {
            return;
        }
        self.parking.park(conn);
    }
}

#[async_trait]
impl FieldingStore for PgStore {
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        let mut conn = self.checkout("insert").await?;
        let outcome = runs::insert(&mut conn, &self.sql, run, change).await;
        self.release(conn, &outcome);
        if outcome.is_ok() {
            self.wakeups.written(run.account_id);
        }
        outcome
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        let mut conn = self.checkout("get").await?;
        let outcome = runs::get(&mut conn, &self.sql, "get", key).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        let mut conn = self.checkout("find_by_target_group").await?;
        let outcome = runs::find_by_target_group(&mut conn, &self.sql, scope).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One statement: a conditional `UPDATE ... WHERE <scope> AND id = ..
    /// AND version = $expected` and, for the row it touched, the change
    /// record's `INSERT` (a data-modifying CTE, so one implicit
    /// transaction and one round trip).
    ///
    /// Under READ COMMITTED an `UPDATE` that finds its row locked by a
    /// concurrent writer waits for it to commit, then re-evaluates the
    /// `WHERE` clause against the newly committed row: if that writer moved
    /// the version on, the row no longer matches and nothing is written. So
    /// of two writers holding the same version exactly one wins, without
    /// SERIALIZABLE and without retries.
    ///
    /// When no row was touched, a fresh read tells `NotFound` from
    /// `VersionConflict` and reports the version actually stored now. If
    /// that read shows the expected version (possible only for a run
    /// inserted after the update's snapshot), the whole step is repeated.
    async fn compare_and_swap(&self, at: Version, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        let mut conn = self.checkout("compare_and_swap").await?;
        let outcome = runs::compare_and_swap(&mut conn, &self.sql, "compare_and_swap", at, run, change).await;
        self.release(conn, &outcome);
        if outcome.is_ok() {
            self.wakeups.written(run.account_id);
        }
        outcome
    }

    /// `get`, `decide`, `compare_and_swap` as the default does, with the
    /// same outcomes, but on one connection: one checkout instead of two
    /// per command. No transaction or lock is held while `decide` runs: a
    /// concurrent writer can still win in between, and the conditional
    /// update then refuses with `VersionConflict`.
    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        let mut conn = self.checkout("update").await?;
        let outcome = self.update_on(&mut conn, key, decide).await;
        self.release(conn, &outcome);
        if matches!(outcome, Ok(UpdateOutcome::Written)) {
            self.wakeups.written(key.scope.account_id);
        }
        outcome
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut conn = self.checkout("changes").await?;
        let outcome = runs::changes(&mut conn, &self.sql, key).await;
        self.release(conn, &outcome);
        outcome
    }

    /// `INSERT ... ON CONFLICT (account_id, idempotency_key) DO NOTHING
    /// RETURNING id`, then, when nothing was inserted, a read of the job
    /// holding the key. Under READ COMMITTED the insert waits for a
    /// concurrent inserter of the same key to commit (or roll back) before
    /// deciding, and the read that follows is a new statement with a new
    /// snapshot, so it sees that job. Of concurrent calls with one key,
    /// exactly one inserts, in any number of processes.
    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        let mut conn = self.checkout("create_job").await?;
        let outcome = jobs::create_job(&mut conn, &self.sql.jobs, job).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        let mut conn = self.checkout("get_job").await?;
        let outcome = jobs::get_job(&mut conn, &self.sql.jobs, "get_job", scope, id).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One statement when the job is processing: `UPDATE ... WHERE id AND
    /// scope AND status = 'Processing' RETURNING ...`. When it matches no
    /// row (no such job, or already finished: a concurrent finisher has
    /// committed by then, the update waited for it), a fresh read returns
    /// the job as stored.
    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        let mut conn = self.checkout("finish_job").await?;
        let done = jobs::finish_job(&mut conn, &self.sql.jobs, scope, id, outcome, finished_at).await;
        self.release(conn, &done);
        done
    }

    /// One statement: `DELETE ... WHERE id IN (SELECT ... ORDER BY
    /// finished_at LIMIT $limit FOR UPDATE SKIP LOCKED)`, so concurrent
    /// sweepers (several server instances) share the work instead of
    /// waiting on each other. A `create_job` racing with the removal of
    /// the job under its key retries its read (see `jobs::create_job`).
    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let mut conn = self.checkout("expire_jobs").await?;
        let removed = jobs::expire_jobs(&mut conn, &self.sql.jobs, finished_before, limit).await;
        self.release(conn, &removed);
        removed
    }

    /// One statement: the job's `INSERT ... ON CONFLICT (account_id,
    /// idempotency_key) DO NOTHING` and, in a data-modifying CTE, every
    /// item's `INSERT` from two arrays (`UNNEST ... WITH ORDINALITY`), so
    /// the job and its items commit together. When the key is taken, a
    /// read of the job holding it (as `create_job` does).
    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        let mut conn = self.checkout("create_bulk_job").await?;
        let outcome = bulk::create(&mut conn, &self.sql.bulk, job).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
        let mut conn = self.checkout("get_bulk_job").await?;
        let outcome = bulk::get(&mut conn, &self.sql.bulk, key).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One statement: `UPDATE ... SET claim_token, lease_until WHERE id =
    /// (SELECT id ... WHERE status = 'Processing' AND (claim_token IS NULL
    /// OR lease_until <= $now) ORDER BY created_at LIMIT 1 FOR UPDATE SKIP
    /// LOCKED) RETURNING ...` with the job's items. Claimers running at
    /// once skip each other's locked rows instead of waiting, and a row
    /// claimed (and committed) after a claimer's snapshot is re-checked
    /// against its new lease before it is locked: of many instances, one
    /// gets each job.
    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError> {
        let mut conn = self.checkout("claim_bulk_job").await?;
        let outcome = bulk::claim(&mut conn, &self.sql.bulk, now, claim).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
        let mut conn = self.checkout("renew_bulk_claim").await?;
        let outcome = bulk::renew(&mut conn, &self.sql.bulk, key, claim).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One transaction of five round trips however large the batch:
    /// `BEGIN`; the items' recorded outcomes and the pending items' runs
    /// (one read, no lock); the job row `FOR UPDATE` where the token still
    /// holds it (none: `ClaimLost`); `decide` for each pending item; one
    /// statement writing every run (compare-and-swap), change record and
    /// outcome from arrays; `COMMIT`. Any error rolls all of it back. The
    /// reads come before the lock so that the batch takes its transaction
    /// id (the first number of its records' feed positions) only after the
    /// versions it builds on were committed (see `bulk::apply_in`).
    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        let mut conn = self.checkout("apply_bulk_items").await?;
        let outcome = bulk::apply_items(&mut conn, &self.sql.bulk, key, token, items, decide).await;
        self.release(conn, &outcome);
        let (outcomes, wrote) = outcome?;
        if wrote {
            self.wakeups.written(key.account_id);
        }
        Ok(outcomes)
    }

    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut conn = self.checkout("finish_bulk_job").await?;
        let outcome = bulk::finish(&mut conn, &self.sql.bulk, key, token, status, finished_at).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One statement, as `expire_jobs`: the oldest finished jobs, `FOR
    /// UPDATE SKIP LOCKED`; their items go with them (`ON DELETE CASCADE`).
    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let mut conn = self.checkout("expire_bulk_jobs").await?;
        let removed = bulk::expire(&mut conn, &self.sql.bulk, finished_before, limit).await;
        self.release(conn, &removed);
        removed
    }

    /// One statement, so one snapshot: the account's records after `after`
    /// and below the snapshot's `xmin` in `(txid, seq)` order through the
    /// `(account_id, txid, seq)` index, the snapshot's `xmin` (the
    /// bookmark `(xmin, 0)` when the page is not full) and the account's
    /// pruning horizon. See `docs/postgres.md`, "Change feed".
    async fn feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        let mut conn = self.checkout("feed").await?;
        let outcome = feed::read(&mut conn, &self.sql.feed, account, after, limit).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One statement: `DELETE` of the oldest records made before the
    /// cutoff (and below the snapshot's `xmin`, `FOR UPDATE SKIP LOCKED`),
    /// raising each pruned account's horizon to the highest position it
    /// removed.
    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let mut conn = self.checkout("prune_changes").await?;
        let removed = feed::prune(&mut conn, &self.sql.feed, changed_before, limit).await;
        self.release(conn, &removed);
        removed
    }

    async fn load_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Result<Option<FeedPosition>, StoreError> {
        let mut conn = self.checkout("load_feed_checkpoint").await?;
        let outcome = feed::load_checkpoint(&mut conn, &self.sql.feed, account, consumer).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One `INSERT ... ON CONFLICT (account_id, consumer) DO UPDATE`.
    async fn save_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<(), StoreError> {
        let mut conn = self.checkout("save_feed_checkpoint").await?;
        let outcome = feed::save_checkpoint(&mut conn, &self.sql.feed, account, consumer, position).await;
        self.release(conn, &outcome);
        outcome
    }

    /// Woken at once by this store's own writes, and by other instances'
    /// writes through `LISTEN` (see [`PgStore::with_feed_listener`]).
    fn change_notifier(&self) -> Option<ChangeNotifier> {
        Some(self.wakeups.notifier())
    }
}

/// `update` on one connection: its read, the core's decision step, its
/// compare-and-swap.
impl PgStore {
    async fn update_on(
        &self,
        conn: &mut PgConnection,
        key: &RunKey,
        decide: Decide<'_>,
    ) -> Result<UpdateOutcome, StoreError> {
        let current = runs::get(conn, &self.sql, "update", key).await?;
        Decided::new(key, current.as_ref(), decide)?
            .write_with(|w| async move {
                runs::compare_and_swap(conn, &self.sql, "update", w.expected, &w.run, &w.change).await
            })
            .await
    }
}
