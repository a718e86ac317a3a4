//! The store: [`SqliteStore`], its handle on the worker threads, and its
//! [`FieldingStore`] implementation.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use async_trait::async_trait;
use fielding_core::{
    AccountId, BulkClaim, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus, ChangeNotifier,
    ChangeRecord, ClaimToken, ConsumerName, Decide, DecideItem, Decided, FeedPage, FeedPosition, FieldingRun,
    FieldingRunJob, FieldingStore, JobCreated, JobKey, JobOutcome, RunKey, Scope, StoreError, TargetGroupId, Timestamp,
    UpdateOutcome, Version,
};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::bulk::{self, BulkWrite, BulkWritten};
use crate::checkpoint::CheckpointCounters;
use crate::error::{stopped, OpenError};
use crate::feed::{self, FeedWrite};
use crate::migrations::{self, SchemaGate, SCHEMA_VERSION};
use crate::options::{Durability, SqliteOptions};
use crate::writer::{Counters, Task, Write, WriteKind, WriterTask, Written};
use crate::{jobs, runs};
use fielding_core::MigrationReport;

/// A [`FieldingStore`] in a SQLite database.
///
/// One dedicated **writer thread** owns the only read-write connection and
/// runs every write as a `BEGIN IMMEDIATE` transaction; a few **reader
/// threads** (see [`SqliteOptions::with_readers`]) each own a read-only
/// connection and, thanks to WAL, never wait for the writer. The async
/// methods send a task to a thread and await its answer, so no SQLite call
/// ever runs on the caller's (tokio) threads.
///
/// Dropping the store closes its channels: the threads finish the tasks
/// already queued, close their connections and exit, without blocking the
/// dropping thread. [`SqliteStore::close`] does the same and waits for it.
/// The writer closes its connection last, after truncating the log, so
/// unless another process has the database open SQLite removes the `-wal`
/// and `-shm` files.
///
/// A write whose caller stops waiting (its future dropped) still completes
/// or fails as a whole on the writer thread; the caller just does not
/// hear which, as with any database across a network.
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::{FieldingService, Scope, Timestamp, UserId};
/// use fielding_sqlite::SqliteStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(dir.path().join("fielding.db")).await?;
/// let service = FieldingService::new(Arc::new(store));
/// let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
/// let created = service
///     .schedule(scope, "2031-01-01T09:00:00Z".parse()?, "2031-01-31T23:59:59Z".parse()?, UserId::random())
///     .await?;
/// assert_eq!(created.etag.to_string(), "\"1\"");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    pub(crate) writer: mpsc::Sender<WriterTask>,
    pub(crate) readers: Option<mpsc::Sender<Task>>,
    /// Every worker thread holds a clone of the sender; `recv` returns
    /// `None` once all of them have exited.
    pub(crate) exited: tokio::sync::mpsc::Receiver<()>,
    pub(crate) path: PathBuf,
    /// A private in-memory database (`:memory:`).
    pub(crate) memory: bool,
    pub(crate) options: SqliteOptions,
    /// The schema version seen; operations are refused while it is old.
    pub(crate) schema: Arc<SchemaGate>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) checkpoints: Arc<CheckpointCounters>,
    /// Woken by the writer thread after each commit that appended change
    /// records (see `writer::wake`).
    pub(crate) notifier: ChangeNotifier,
}

impl SqliteStore {
    /// Creates or upgrades the schema of the store's database to
    /// [`SCHEMA_VERSION`]. Idempotent, and safe when several processes do
    /// it at once (one immediate transaction; the others wait for it, then
    /// find nothing to do). Refuses a schema newer than this library knows
    /// ([`OpenError::SchemaTooNew`]). Runs on a thread of its own, with a
    /// connection of its own.
    ///
    /// [`SqliteStore::open`] migrates already; this is the explicit step for
    /// a store opened with [`SqliteOptions::with_migrate`]`(false)`, which
    /// refuses every operation until it has run. A private in-memory
    /// database is always migrated when opened, and a read-only store only
    /// checks that the schema is current.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// use fielding_sqlite::{SqliteOptions, SqliteStore, SCHEMA_VERSION};
    /// let dir = tempfile::tempdir().unwrap();
    /// let options = SqliteOptions::default().with_migrate(false);
    /// let store = SqliteStore::open_with(dir.path().join("fielding.db"), options).await?;
    /// assert_eq!(store.migrate().await?.applied(), SCHEMA_VERSION);
    /// assert_eq!(store.migrate().await?.applied(), 0);
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<MigrationReport, OpenError> {
        if self.memory {
            return Ok(MigrationReport {
                from: SCHEMA_VERSION,
                to: SCHEMA_VERSION,
            });
        }
        let report = migrations::migrate_file(&self.path, &self.options).await?;
        self.schema.set(report.to);
        Ok(report)
    }

    /// The database's path (`:memory:` for an in-memory one).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability commits are made with.
    pub fn durability(&self) -> Durability {
        self.options.durability
    }

    /// Closes the store and waits until every worker thread has finished
    /// its queued tasks and closed its connection (so the file can be
    /// reopened, copied or removed). The readers and the checkpoint thread
    /// close first; then the writer truncates the log (`PRAGMA
    /// wal_checkpoint(TRUNCATE)`) and closes the last connection, and
    /// SQLite removes the `-wal` and `-shm` files (when another process
    /// still has the database open, they stay, the log empty). Dropping
    /// the store does the same without waiting.
    pub async fn close(self) {
        let SqliteStore {
            writer,
            readers,
            mut exited,
            ..
        } = self;
        drop(writer);
        drop(readers);
        // `None` once every thread's `alive` sender is gone.
        while exited.recv().await.is_some() {}
    }

    /// Sends a write to the writer thread and awaits its answer.
    async fn write(&self, kind: WriteKind) -> Result<Written, StoreError> {
        let op = kind.op();
        self.schema.ready(op, &self.path)?;
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterTask::Write(Write { kind, reply }))
            .map_err(|_| stopped(op))?;
        answer.await.map_err(|_| stopped(op))?
    }

    /// Sends a bulk-job write to the writer thread and awaits its answer.
    async fn bulk_write(&self, write: BulkWrite) -> Result<BulkWritten, StoreError> {
        let op = write.op();
        match self.write(WriteKind::Bulk(write)).await? {
            Written::Bulk(written) => Ok(written),
            other => Err(mismatched(op, &other)),
        }
    }

    /// Runs `work` on the writer thread's connection, between write
    /// transactions, and awaits its answer.
    async fn read_on_writer<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.run_task(op, work, |task| self.writer.send(WriterTask::Run(task)).is_ok())
            .await
    }

    /// Runs `work` on a reader thread (on the writer thread when there are
    /// none) and awaits its answer.
    async fn read<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.run_task(op, work, |task| match &self.readers {
            Some(readers) => readers.send(task).is_ok(),
            None => self.writer.send(WriterTask::Run(task)).is_ok(),
        })
        .await
    }

    /// Wraps `work` as a task for a worker thread, hands it to `send`
    /// (`false`: the thread is gone) and awaits the answer.
    async fn run_task<R: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        send: impl FnOnce(Task) -> bool,
    ) -> Result<R, StoreError> {
        self.schema.ready(op, &self.path)?;
        let (tx, rx) = oneshot::channel();
        let task: Task = Box::new(move |conn: &mut Connection| {
            let _ = tx.send(work(conn));
        });
        if !send(task) {
            return Err(stopped(op));
        }
        rx.await.map_err(|_| stopped(op))?
    }
}

#[async_trait]
impl FieldingStore for SqliteStore {
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        self.write(WriteKind::Insert {
            run: run.clone(),
            change: change.clone(),
        })
        .await
        .and_then(|written| expect_done("insert", written))
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        let key = *key;
        self.read("get", move |conn| runs::get(conn, &key)).await
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        let scope = *scope;
        self.read("find_by_target_group", move |conn| runs::find_by_scope(conn, &scope))
            .await
    }

    async fn compare_and_swap(&self, at: Version, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        self.write(WriteKind::CompareAndSwap {
            expected: at,
            run: run.clone(),
            change: change.clone(),
        })
        .await
        .and_then(|written| expect_done("compare_and_swap", written))
    }

    /// The default's steps (read, `decide` on the caller's task, then a
    /// compare-and-swap), with the read made on the writer thread: the
    /// write goes there next anyway, and a busy writer picks both up
    /// without waking another thread. `decide` never leaves the caller's
    /// task, so nothing borrowed crosses a thread. A concurrent writer can
    /// still win between the read and the write (a `VersionConflict`), as
    /// with the default.
    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        let read_key = *key;
        let current = self
            .read_on_writer("update", move |conn| runs::get(conn, &read_key))
            .await?;
        Decided::new(key, current.as_ref(), decide)?
            .write_with(|w| async move {
                let kind = WriteKind::CompareAndSwap {
                    expected: w.expected,
                    run: w.run,
                    change: w.change,
                };
                self.write(kind)
                    .await
                    .and_then(|written| expect_done("update", written))
            })
            .await
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        let key = *key;
        self.read("changes", move |conn| runs::changes(conn, &key)).await
    }

    /// One write on the writer thread: an `INSERT ... ON CONFLICT
    /// (account_id, idempotency_key) DO NOTHING` and, when it inserted
    /// nothing, the job holding the key, read in the same transaction.
    /// Writes are serialized (one writer thread, `BEGIN IMMEDIATE` across
    /// processes), so of concurrent calls with one key exactly one inserts.
    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        match self.write(WriteKind::CreateJob { job: job.clone() }).await? {
            Written::Job(created) => Ok(created),
            other => Err(mismatched("create_job", &other)),
        }
    }

    async fn get_job(&self, key: &JobKey) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        let (scope, id) = (*scope, *id);
        self.read("get_job", move |conn| jobs::get_job(conn, &scope, &id)).await
    }

    /// One write on the writer thread: `UPDATE ... WHERE id AND scope AND
    /// status = 'Processing'`, then the job as it stands, in the same
    /// transaction.
    async fn finish_job(
        &self,
        key: &JobKey,
        outcome: &JobOutcome,
        finished_at: Timestamp,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        let (scope, id) = (&key.scope, &key.id);
        let kind = WriteKind::FinishJob {
            scope: *scope,
            id: *id,
            outcome: outcome.clone(),
            finished_at,
        };
        match self.write(kind).await? {
            Written::Finished(job) => Ok(job),
            other => Err(mismatched("finish_job", &other)),
        }
    }

    /// One write on the writer thread: a `DELETE` of at most `limit` rows
    /// found through the finish-time index, oldest first. A write like the
    /// others, so it joins their group commit, and its answer leaves only
    /// after the commit; a large `limit` holds the other writes up for as
    /// long as the delete takes, which is why callers sweep in batches.
    async fn expire_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        match self.write(WriteKind::ExpireJobs { finished_before, limit }).await? {
            Written::Expired(removed) => Ok(removed),
            other => Err(mismatched("expire_jobs", &other)),
        }
    }

    /// One write on the writer thread: the job row (`INSERT ... ON
    /// CONFLICT (account_id, idempotency_key) DO NOTHING`) and all its
    /// items through one cached statement, in one transaction; when the key
    /// is taken, the job holding it, read in the same transaction.
    async fn create_bulk_job(&self, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
        match self.bulk_write(BulkWrite::Create { job: job.clone() }).await? {
            BulkWritten::Created(created) => Ok(created),
            other => Err(mismatched_bulk("create_bulk_job", &other)),
        }
    }

    /// On a reader thread: the job and its items in one read transaction.
    async fn get_bulk_job(&self, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
        let key = *key;
        self.read("get_bulk_job", move |conn| bulk::get(conn, &key)).await
    }

    /// One write on the writer thread: find the oldest claimable job
    /// through its partial index, take it, read it back. Every process's
    /// writes serialize on SQLite's write lock, so two claims never take
    /// one job.
    async fn claim_bulk_job(&self, now: Timestamp, claim: &BulkClaim) -> Result<Option<BulkJob>, StoreError> {
        match self.bulk_write(BulkWrite::Claim { now, claim: *claim }).await? {
            BulkWritten::Claimed(job) => job,
            other => Err(mismatched_bulk("claim_bulk_job", &other)),
        }
    }

    async fn renew_bulk_claim(&self, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
        match self
            .bulk_write(BulkWrite::Renew {
                key: *key,
                claim: *claim,
            })
            .await?
        {
            BulkWritten::Held(held) => Ok(held),
            other => Err(mismatched_bulk("renew_bulk_claim", &other)),
        }
    }

    /// Like `update`, for a whole batch: one read on the writer thread (the
    /// claim, each item's outcome, each pending item's run), `decide` on
    /// the caller's task (so nothing borrowed crosses a thread), then one
    /// write that checks the claim again and writes every run
    /// (compare-and-swap at the version decided on), change record and
    /// outcome of the batch, or nothing. Two trips to the writer thread and
    /// one transaction per batch, whatever its size. A run changed by
    /// someone else in between fails the batch with `VersionConflict`, and
    /// the caller decides again.
    async fn apply_bulk_items(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        items: &[TargetGroupId],
        decide: DecideItem<'_>,
    ) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
        let (read_key, read_items) = (*key, items.to_vec());
        let read = self
            .read_on_writer("apply_bulk_items", move |conn| {
                bulk::read_batch(conn, &read_key, token, &read_items)
            })
            .await?;
        let planned = bulk::plan(key, items, read, decide)?;
        let write = BulkWrite::Apply {
            key: *key,
            token,
            items: planned,
        };
        match self.bulk_write(write).await? {
            BulkWritten::Applied(outcomes) => Ok(outcomes),
            other => Err(mismatched_bulk("apply_bulk_items", &other)),
        }
    }

    async fn finish_bulk_job(
        &self,
        key: &BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let write = BulkWrite::Finish {
            key: *key,
            token,
            status,
            finished_at,
        };
        match self.bulk_write(write).await? {
            BulkWritten::Held(held) => Ok(held),
            other => Err(mismatched_bulk("finish_bulk_job", &other)),
        }
    }

    /// One write on the writer thread: the items of at most `limit` jobs
    /// found through the finish-time index, oldest first, then those jobs.
    async fn expire_bulk_jobs(&self, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        match self.bulk_write(BulkWrite::Expire { finished_before, limit }).await? {
            BulkWritten::Expired(removed) => Ok(removed),
            other => Err(mismatched_bulk("expire_bulk_jobs", &other)),
        }
    }

    /// On a reader thread, in one read transaction: the account's horizon,
    /// one range of the primary key `(account_id, position)`, and, when the
    /// page is not full, the position counter as the bookmark. Positions
    /// are handed out in commit order (see `docs/sqlite.md`, "Change
    /// feed"), so nothing committed later sorts at or before `next`.
    async fn feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        self.read("feed", move |conn| feed::read(conn, account, after, limit))
            .await
    }

    /// One write on the writer thread: a `DELETE` of at most `limit`
    /// records found through the `changed_at_ms` index, oldest first, and
    /// each account's horizon raised to the highest position it lost, in
    /// one transaction. Like `expire_jobs`, it holds the other writes up
    /// while it runs: sweep in batches.
    async fn prune_changes(&self, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
        match self
            .write(WriteKind::Feed(FeedWrite::Prune { changed_before, limit }))
            .await?
        {
            Written::Pruned(removed) => Ok(removed),
            other => Err(mismatched("prune_changes", &other)),
        }
    }

    async fn load_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Result<Option<FeedPosition>, StoreError> {
        let consumer = consumer.clone();
        self.read("load_feed_checkpoint", move |conn| {
            feed::load_checkpoint(conn, account, &consumer)
        })
        .await
    }

    /// An upsert on the writer thread, answered after its commit.
    async fn save_feed_checkpoint(
        &self,
        account: AccountId,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<(), StoreError> {
        let write = FeedWrite::SaveCheckpoint {
            account,
            consumer: consumer.clone(),
            position,
        };
        self.write(WriteKind::Feed(write))
            .await
            .and_then(|written| expect_done("save_feed_checkpoint", written))
    }

    /// Woken by the writer thread after each commit that appended records
    /// of an account, whichever task wrote (its caller may have stopped
    /// waiting). Writes by another process on the same file wake nobody
    /// here: watchers see them at their next poll.
    fn change_notifier(&self) -> Option<ChangeNotifier> {
        Some(self.notifier.clone())
    }
}

/// The answer of `insert` and `compare_and_swap`.
fn expect_done(op: &'static str, written: Written) -> Result<(), StoreError> {
    match written {
        Written::Done => Ok(()),
        other => Err(mismatched(op, &other)),
    }
}

/// The writer answered a write with another write's kind of answer (a bug,
/// reported rather than panicking).
fn mismatched(op: &'static str, written: &Written) -> StoreError {
    StoreError::internal(format!(
        "sqlite {op}: the writer thread gave an unexpected answer {written:?}"
    ))
}

/// A bulk write answered with another bulk write's kind of answer.
fn mismatched_bulk(op: &'static str, written: &BulkWritten) -> StoreError {
    StoreError::internal(format!(
        "sqlite {op}: the writer thread gave an unexpected answer {written:?}"
    ))
}
