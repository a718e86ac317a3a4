//! Retention: finished creation and bulk jobs (and their idempotency
//! keys), and change records, are removed once they are older than their
//! retention period, by tasks that sweep the store periodically.
//!
//! The work is [`FieldingStore::expire_jobs`] (then
//! [`FieldingStore::expire_bulk_jobs`]) for jobs, and
//! [`FieldingStore::prune_changes`] for change records, in batches: one
//! sweep fixes its cutoff (`now - retention`) once, then removes up to a
//! batch per call until a call removes fewer, so each store call is short
//! (one statement, one lock hold) however large the backlog, and the
//! sweep ends: only what is older than the fixed cutoff is eligible, and
//! nothing new can be older. Between two batches it pauses as long as the
//! last one took, so a backlog takes at most about half of the store's
//! time. Processing jobs are never removed (the store promises it).
//!
//! A pruned change record is gone from the feed: a consumer whose cursor
//! is before it is answered 410 (`cursor_expired_error`) and starts over
//! from the current state (see `docs/feed.md`). The change retention is
//! therefore the longest a consumer may be away and still resume.
//!
//! Errors are logged and the next sweep tries again; the tasks never stop
//! on their own. Stop one by dropping (aborting) its future: every batch is
//! one atomic store call, so stopping anywhere loses nothing.
//!
//! ```no_run
//! use std::sync::Arc;
//! use fielding_core::{FieldingStore, SystemClock};
//! use fielding_server::retention::{run_change_retention, run_job_retention, ChangeRetentionConfig, RetentionConfig};
//!
//! # fn spawn(store: Arc<dyn FieldingStore>) {
//! let jobs = tokio::spawn(run_job_retention(store.clone(), Arc::new(SystemClock), RetentionConfig::default()));
//! let changes = tokio::spawn(run_change_retention(store, Arc::new(SystemClock), ChangeRetentionConfig::default()));
//! // ... on shutdown:
//! jobs.abort();
//! changes.abort();
//! # }
//! ```
//!
//! See `docs/jobs.md` for the default job retention and why, and
//! `docs/server.md` (`--change-retention`) for the change records'.

use fielding_core::observe::{store_call, StoreOperation};
use std::sync::Arc;
use std::time::Duration;

use fielding_core::{Clock, FieldingStore, StoreError, Timestamp};
use tokio::time::{Instant, MissedTickBehavior};

/// How long a finished job is kept by default: 7 days. The contract says
/// nothing about how long a job stays readable or its idempotency key
/// binding. A client polls a job for seconds (jobs finish before their
/// `201`), but a client that retries a submission after an outage (a
/// weekend, a failed deployment) must still get the first job back rather
/// than create a second run; a week covers that with room, and bounds the
/// store at one week of jobs (at the default rate limit, about 60 million
/// rows or some 40 GiB on disk per busy account, so a deployment with
/// heavy job traffic should choose a shorter period).
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How often a sweep runs by default: each minute, so that one sweep's
/// work is about one minute's worth of newly expired jobs (a few batches
/// at most at the highest rates), never a day's.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How many jobs one store call removes at most by default: large enough
/// that a busy minute needs few calls, small enough that one call (one
/// SQLite write transaction, which other writes queue behind) stays short.
pub const DEFAULT_SWEEP_BATCH: usize = 1_000;

/// How many bulk jobs one store call removes at most by default. A bulk
/// job takes up to 10,000 item rows with it, so the batch is counted in
/// jobs of that size: 10 jobs is at most 100,000 rows per call (tens of
/// milliseconds on SQLite), not the 10 million that
/// [`DEFAULT_SWEEP_BATCH`] bulk jobs could hold.
pub const DEFAULT_BULK_SWEEP_BATCH: usize = 10;

/// How long a change record is kept by default: 30 days. A consumer of
/// the change feed may be away that long (a long weekend, a failed
/// deployment and its investigation, a month-end batch job) and still
/// resume from its cursor; past it, it starts over from the current state.
/// Change records are small (about 100 bytes of columns a row): a month of
/// them at the default rate limit is far less than the runs' own writes
/// cost, and a month of history stays readable per run.
pub const DEFAULT_CHANGE_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How many change records one store call removes at most by default:
/// rows are small, so a batch of this size is one short transaction
/// (milliseconds on SQLite), and a busy minute needs few.
pub const DEFAULT_CHANGE_SWEEP_BATCH: usize = 1_000;

/// What the job retention task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// How long a job stays after it finished.
    pub retention: Duration,
    /// The time between the starts of two sweeps (the first runs at once).
    pub interval: Duration,
    /// The `limit` of each [`FieldingStore::expire_jobs`] call; at least 1
    /// is used.
    pub batch: usize,
    /// The `limit` of each [`FieldingStore::expire_bulk_jobs`] call; at
    /// least 1 is used.
    pub bulk_batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_JOB_RETENTION,
            interval: DEFAULT_SWEEP_INTERVAL,
            batch: DEFAULT_SWEEP_BATCH,
            bulk_batch: DEFAULT_BULK_SWEEP_BATCH,
        }
    }
}

impl RetentionConfig {
    /// This configuration with [`retention`](Self::retention) set.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }
}

/// What the change retention task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRetentionConfig {
    /// How long a change record is kept after it was made.
    pub retention: Duration,
    /// The time between the starts of two sweeps (the first runs at once).
    pub interval: Duration,
    /// The `limit` of each [`FieldingStore::prune_changes`] call; at least
    /// 1 is used.
    pub batch: usize,
}

impl Default for ChangeRetentionConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_CHANGE_RETENTION,
            interval: DEFAULT_SWEEP_INTERVAL,
            batch: DEFAULT_CHANGE_SWEEP_BATCH,
        }
    }
}

impl ChangeRetentionConfig {
    /// This configuration with [`retention`](Self::retention) set.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Jobs finished before this instant were eligible (`None`: the
    /// retention reaches back past the earliest timestamp, nothing is old
    /// enough and the store was not asked).
    pub cutoff: Option<Timestamp>,
    /// How many creation jobs were removed.
    pub removed: usize,
    /// How many bulk jobs were removed.
    pub removed_bulk: usize,
    /// How many `expire_jobs` and `expire_bulk_jobs` calls it took.
    pub calls: usize,
}

/// What one sweep of change records did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeSweep {
    /// Records made before this instant were eligible (`None`: the
    /// retention reaches back past the earliest timestamp, nothing is old
    /// enough and the store was not asked).
    pub cutoff: Option<Timestamp>,
    /// How many change records were removed.
    pub removed: usize,
    /// How many `prune_changes` calls it took.
    pub calls: usize,
}

/// A sweep that stopped on a store error, after removing `removed` jobs
/// (or change records).
#[derive(Debug, thiserror::Error)]
#[error("the retention sweep failed after {removed} removals: {source}")]
pub struct SweepError {
    /// What was removed before the failing call.
    pub removed: usize,
    /// What the store reported.
    #[source]
    pub source: StoreError,
}

/// The instant before which a job finished (or a change made) is expired
/// at `now`, if any (none when it would lie before the earliest timestamp).
fn cutoff(now: Timestamp, retention: Duration) -> Option<Timestamp> {
    let retention = i64::try_from(retention.as_millis()).ok()?;
    Timestamp::from_unix_millis(now.unix_millis().checked_sub(retention)?)
}

/// Which jobs a batch expires.
#[derive(Clone, Copy)]
enum Kind {
    Creation,
    Bulk,
}

/// One sweep: removes every job (creation jobs, then bulk jobs) finished
/// more than `config.retention` before `clock`'s now, `config.batch` per
/// store call, until a call removes fewer than the batch.
pub async fn sweep_expired_jobs(
    store: &dyn FieldingStore,
    clock: &dyn Clock,
    config: &RetentionConfig,
) -> Result<Sweep, SweepError> {
    let Some(before) = cutoff(clock.now(), config.retention) else {
        return Ok(Sweep {
            cutoff: None,
            removed: 0,
            removed_bulk: 0,
            calls: 0,
        });
    };
    let mut sweep = Sweep {
        cutoff: Some(before),
        removed: 0,
        removed_bulk: 0,
        calls: 0,
    };
    for kind in [Kind::Creation, Kind::Bulk] {
        let batch = match kind {
            Kind::Creation => config.batch,
            Kind::Bulk => config.bulk_batch,
        };
        let removed_before = sweep.removed + sweep.removed_bulk;
        let (removed, calls) = in_batches(batch, removed_before, |batch| async move {
            match kind {
                Kind::Creation => store_call(StoreOperation::ExpireJobs, store.expire_jobs(before, batch)).await,
                Kind::Bulk => store_call(StoreOperation::ExpireBulkJobs, store.expire_bulk_jobs(before, batch)).await,
            }
        })
        .await?;
        match kind {
            Kind::Creation => sweep.removed += removed,
            Kind::Bulk => sweep.removed_bulk += removed,
        }
        sweep.calls += calls;
    }
    Ok(sweep)
}

/// One sweep of change records: removes every record made more than
/// `config.retention` before `clock`'s now, `config.batch` per store call,
/// until a call removes fewer than the batch.
pub async fn sweep_expired_changes(
    store: &dyn FieldingStore,
    clock: &dyn Clock,
    config: &ChangeRetentionConfig,
) -> Result<ChangeSweep, SweepError> {
    let Some(before) = cutoff(clock.now(), config.retention) else {
        return Ok(ChangeSweep {
            cutoff: None,
            removed: 0,
            calls: 0,
        });
    };
    let (removed, calls) = in_batches(config.batch, 0, |batch| {
        store_call(StoreOperation::PruneChanges, store.prune_changes(before, batch))
    })
    .await?;
    Ok(ChangeSweep {
        cutoff: Some(before),
        removed,
        calls,
    })
}

/// Calls `remove(batch)` (at least 1) until it removes fewer than the
/// batch; how many it removed and in how many calls. `removed_before`
/// counts into the error of a failing call.
async fn in_batches<F, Fut>(batch: usize, removed_before: usize, mut remove: F) -> Result<(usize, usize), SweepError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<usize, StoreError>>,
{
    let batch = batch.max(1);
    let (mut removed, mut calls) = (0, 0);
    loop {
        let started = Instant::now();
        let this = remove(batch).await.map_err(|source| SweepError {
            removed: removed_before + removed,
            source,
        })?;
        removed += this;
        calls += 1;
        if this < batch {
            return Ok((removed, calls));
        }
        // A backlog (after downtime) takes many batches in a row. Leave
        // the store idle for as long as the batch took before the next
        // one, so that expiry takes at most about half of its time: with
        // SQLite's single writer, back-to-back batches would make nearly
        // every concurrent write wait behind one.
        tokio::time::sleep(started.elapsed()).await;
    }
}

/// Sweeps `store` every `config.interval`, starting at once, for as long as
/// the future is polled: it never returns. Removals are logged at `info`
/// (nothing to remove at `debug`), failures at `warn`; a failure ends
/// only that sweep. A sweep that overruns the interval delays the next
/// one instead of starting sweeps back to back.
pub async fn run_job_retention(store: Arc<dyn FieldingStore>, clock: Arc<dyn Clock>, config: RetentionConfig) {
    let mut ticks = tokio::time::interval(config.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match sweep_expired_jobs(&*store, &*clock, &config).await {
            Ok(Sweep {
                cutoff: Some(cutoff),
                removed,
                removed_bulk,
                calls,
            }) if removed + removed_bulk > 0 => {
                tracing::info!(removed, removed_bulk, calls, %cutoff, "expired finished jobs removed");
            }
            Ok(sweep) => tracing::debug!(cutoff = ?sweep.cutoff, "no finished jobs to expire"),
            Err(error) => tracing::warn!(
                removed = error.removed,
                error = %error.source,
                retryable = error.source.is_retryable(),
                "job expiry failed; the next sweep tries again"
            ),
        }
    }
}

/// Sweeps `store`'s change records every `config.interval`, starting at
/// once, for as long as the future is polled, as [`run_job_retention`]
/// sweeps jobs: it never returns, logs removals at `info` and failures at
/// `warn`.
pub async fn run_change_retention(store: Arc<dyn FieldingStore>, clock: Arc<dyn Clock>, config: ChangeRetentionConfig) {
    let mut ticks = tokio::time::interval(config.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match sweep_expired_changes(&*store, &*clock, &config).await {
            Ok(ChangeSweep {
                cutoff: Some(cutoff),
                removed,
                calls,
            }) if removed > 0 => {
                tracing::info!(removed, calls, %cutoff, "expired change records removed");
            }
            Ok(sweep) => tracing::debug!(cutoff = ?sweep.cutoff, "no change records to expire"),
            Err(error) => tracing::warn!(
                removed = error.removed,
                error = %error.source,
                retryable = error.source.is_retryable(),
                "change record expiry failed; the next sweep tries again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use fielding_core::{FieldingRunJob, JobOutcome, ManualClock};
    use fielding_memory::MemoryStore;
    use fielding_testkit::{fixtures, Fault, FaultyStore};

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> Timestamp {
        "2030-01-01T00:00:00Z".parse().expect("a timestamp")
    }

    /// `by` after [`t0`].
    fn later(by: Duration) -> Timestamp {
        let by = i64::try_from(by.as_millis()).expect("a short duration");
        Timestamp::from_unix_millis(t0().unix_millis() + by).expect("in range")
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A job created at `t0`, finished at `finished` (or processing).
    async fn job(store: &dyn FieldingStore, key: &str, finished: Option<Timestamp>) -> FieldingRunJob {
        let job = FieldingRunJob {
            created_at: t0(),
            ..fixtures::job(fixtures::scope(), key, fixtures::launch())
        };
        store.create_job(&job).await.expect("create_job");
        match finished {
            Some(at) => store
                .finish_job(&job.key(), &JobOutcome::Completed, at)
                .await
                .expect("finish_job")
                .expect("the job"),
            None => job,
        }
    }

    async fn present(store: &dyn FieldingStore, job: &FieldingRunJob) -> bool {
        store.get_job(&job.key()).await.expect("get_job").is_some()
    }

    #[tokio::test]
    async fn a_sweep_removes_expired_jobs_in_batches_until_one_falls_short() {
        let store = MemoryStore::new();
        let mut old = Vec::new();
        for i in 0..5u64 {
            old.push(job(&store, &format!("old-{i}"), Some(later(secs(i)))).await);
        }
        let recent = job(&store, "recent", Some(later(secs(90 * 60)))).await;
        let processing = job(&store, "processing", None).await;
        let clock = ManualClock::new(later(2 * HOUR));
        let config = RetentionConfig {
            retention: HOUR,
            interval: HOUR,
            batch: 2,
            bulk_batch: 2,
        };

        let sweep = sweep_expired_jobs(&store, &clock, &config).await.expect("sweep");
        assert_eq!(
            sweep,
            Sweep {
                cutoff: Some(later(HOUR)),
                removed: 5,
                removed_bulk: 0,
                // Three for the creation jobs, one to find no bulk job.
                calls: 4
            }
        );
        for gone in &old {
            assert!(!present(&store, gone).await);
        }
        assert!(present(&store, &recent).await);
        assert!(present(&store, &processing).await);

        // A multiple of the batch needs one more call to see the end.
        for i in 0..4 {
            job(&store, &format!("more-{i}"), Some(t0())).await;
        }
        let sweep = sweep_expired_jobs(&store, &clock, &config).await.expect("sweep");
        assert_eq!((sweep.removed, sweep.calls), (4, 4));
        // Nothing left: one call of each kind.
        let sweep = sweep_expired_jobs(&store, &clock, &config).await.expect("sweep");
        assert_eq!((sweep.removed, sweep.calls), (0, 2));
        assert_eq!(store.job_count(), 2);
    }

    #[tokio::test]
    async fn a_retention_reaching_past_the_earliest_timestamp_asks_the_store_nothing() {
        let store = FaultyStore::new(MemoryStore::new());
        store.faults().inject(Fault::Storage, 1);
        let clock = ManualClock::new(Timestamp::MIN);
        let config = RetentionConfig::default().with_retention(Duration::from_secs(1));
        let sweep = sweep_expired_jobs(&store, &clock, &config).await.expect("sweep");
        assert_eq!(sweep.cutoff, None);
        assert_eq!(store.faults().pending(Fault::Storage), 1, "no store call was made");
        let forever = RetentionConfig::default().with_retention(Duration::MAX);
        let sweep = sweep_expired_jobs(&store, &ManualClock::new(t0()), &forever)
            .await
            .expect("sweep");
        assert_eq!(sweep.cutoff, None);
    }

    #[tokio::test]
    async fn a_failed_sweep_is_an_error_and_the_next_one_does_the_work() {
        let memory = MemoryStore::new();
        for i in 0..3 {
            job(&memory, &format!("old-{i}"), Some(t0())).await;
        }
        let store = FaultyStore::new(memory.clone());
        let clock = ManualClock::new(later(2 * HOUR));
        let config = RetentionConfig {
            batch: 2,
            ..RetentionConfig::default().with_retention(HOUR)
        };
        store.faults().inject(Fault::Storage, 1);
        let err = sweep_expired_jobs(&store, &clock, &config).await.unwrap_err();
        assert_eq!(err.removed, 0);
        assert!(matches!(err.source, StoreError::Backend { .. }), "{err}");
        assert_eq!(memory.job_count(), 3, "the failed call removed nothing");
        let sweep = sweep_expired_jobs(&store, &clock, &config).await.expect("sweep");
        assert_eq!(sweep.removed, 3);
        assert_eq!(memory.job_count(), 0);
    }

    /// The periodic task removes what expires as the clock moves on, and
    /// keeps going through store failures.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_sweeps_periodically_and_survives_failures() {
        let memory = MemoryStore::new();
        let faulty = Arc::new(FaultyStore::new(memory.clone()));
        let clock = ManualClock::new(t0());
        let config = RetentionConfig {
            retention: HOUR,
            interval: Duration::from_millis(5),
            batch: 10,
            bulk_batch: 10,
        };
        let store: Arc<dyn FieldingStore> = faulty.clone();
        let task = tokio::spawn(run_job_retention(store, Arc::new(clock.clone()), config));

        let first = job(&memory, "first", Some(t0())).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(present(&memory, &first).await, "not expired yet: kept");

        clock.set(later(HOUR + Duration::from_millis(1)));
        wait_until_gone(&memory, &first).await;

        // Three sweeps fail; the task logs them and carries on.
        faulty.faults().inject(Fault::Storage, 3);
        let second = job(&memory, "second", Some(clock.now())).await;
        clock.set(later(3 * HOUR + Duration::from_millis(2)));
        wait_until_gone(&memory, &second).await;
        assert_eq!(faulty.faults().pending(Fault::Storage), 0, "the failing sweeps ran");
        assert!(!task.is_finished());
        task.abort();
    }

    async fn wait_until_gone(store: &MemoryStore, job: &FieldingRunJob) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while present(store, job).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {} was not expired within 10 s",
                job.id
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_sweep_removes_expired_bulk_jobs_but_never_a_processing_one() {
        use fielding_core::{BulkAction, BulkClaim, BulkJobStatus, ClaimToken};
        let store = MemoryStore::new();
        let scope = fixtures::scope();
        let mut finished = Vec::new();
        for i in 0..3 {
            let job = fielding_core::BulkJob {
                created_at: t0(),
                ..fixtures::bulk_job(scope, &format!("bulk-{i}"), BulkAction::Pause, &[scope.target_group_id])
            };
            store.create_bulk_job(&job).await.expect("create");
            let claim = BulkClaim {
                token: ClaimToken::generate(),
                lease_until: later(HOUR),
            };
            store
                .claim_bulk_job(t0(), &claim)
                .await
                .expect("claim")
                .expect("a job to claim");
            assert!(store
                .finish_bulk_job(&job.key(), claim.token, BulkJobStatus::Failed, later(secs(i)))
                .await
                .expect("finish"));
            finished.push(job);
        }
        let processing = fielding_core::BulkJob {
            created_at: t0(),
            ..fixtures::bulk_job(scope, "bulk-processing", BulkAction::Pause, &[scope.target_group_id])
        };
        store.create_bulk_job(&processing).await.expect("create");
        let clock = ManualClock::new(later(2 * HOUR));
        let config = RetentionConfig {
            retention: HOUR,
            interval: HOUR,
            batch: 2,
            bulk_batch: 2,
        };
        let sweep = sweep_expired_jobs(&store, &clock, &config).await.expect("sweep");
        assert_eq!((sweep.removed, sweep.removed_bulk), (0, 3));
        for job in &finished {
            assert_eq!(store.get_bulk_job(&job.key()).await.expect("get"), None);
        }
        assert!(store.get_bulk_job(&processing.key()).await.expect("get").is_some());
    }

    /// A run whose creation record was made at `at`.
    async fn run_changed_at(store: &MemoryStore, at: Timestamp) -> fielding_core::RunKey {
        let run = fixtures::run().with_now(at).with_changed_at(at).build();
        store.insert(&run, &fixtures::creation(&run)).await.expect("insert");
        run.key()
    }

    #[tokio::test]
    async fn a_change_sweep_prunes_old_records_in_batches_and_keeps_recent_ones() {
        let store = MemoryStore::new();
        let mut old = Vec::new();
        for i in 0..5u64 {
            old.push(run_changed_at(&store, later(secs(i))).await);
        }
        let recent = run_changed_at(&store, later(secs(90 * 60))).await;
        let clock = ManualClock::new(later(2 * HOUR));
        let config = ChangeRetentionConfig {
            retention: HOUR,
            interval: HOUR,
            batch: 2,
        };
        let sweep = sweep_expired_changes(&store, &clock, &config).await.expect("sweep");
        assert_eq!(
            sweep,
            ChangeSweep {
                cutoff: Some(later(HOUR)),
                removed: 5,
                calls: 3
            }
        );
        for key in &old {
            assert!(store.changes(key).await.expect("changes").is_empty(), "pruned");
        }
        assert_eq!(store.changes(&recent).await.expect("changes").len(), 1, "kept");
        let again = sweep_expired_changes(&store, &clock, &config).await.expect("sweep");
        assert_eq!((again.removed, again.calls), (0, 1));
    }

    #[tokio::test]
    async fn a_failed_change_sweep_is_an_error_and_a_retention_past_the_epoch_asks_nothing() {
        let memory = MemoryStore::new();
        run_changed_at(&memory, t0()).await;
        let store = FaultyStore::new(memory.clone());
        store.faults().inject(Fault::Storage, 1);
        let clock = ManualClock::new(later(2 * HOUR));
        let config = ChangeRetentionConfig::default().with_retention(HOUR);
        let err = sweep_expired_changes(&store, &clock, &config).await.unwrap_err();
        assert_eq!(err.removed, 0);
        let sweep = sweep_expired_changes(&store, &clock, &config).await.expect("sweep");
        assert_eq!(sweep.removed, 1, "the next sweep does the work");
        store.faults().inject(Fault::Storage, 1);
        let forever = ChangeRetentionConfig::default().with_retention(Duration::MAX);
        let sweep = sweep_expired_changes(&store, &clock, &forever).await.expect("sweep");
        assert_eq!(sweep.cutoff, None);
        assert_eq!(store.faults().pending(Fault::Storage), 1, "no store call was made");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_change_task_sweeps_periodically() {
        let memory = MemoryStore::new();
        let clock = ManualClock::new(t0());
        let config = ChangeRetentionConfig {
            retention: HOUR,
            interval: Duration::from_millis(5),
            batch: 10,
        };
        let store: Arc<dyn FieldingStore> = Arc::new(memory.clone());
        let task = tokio::spawn(run_change_retention(store, Arc::new(clock.clone()), config));
        let key = run_changed_at(&memory, t0()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(memory.changes(&key).await.expect("changes").len(), 1, "not expired yet");
        clock.set(later(HOUR + Duration::from_millis(1)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !memory.changes(&key).await.expect("changes").is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "not pruned within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
    }
}
