//! The write-ahead log stays bounded: under a sustained flood of writes
//! (job submissions, which create runs, and date updates, from several
//! tasks, with reads keeping the reader threads busy) the `-wal` file never
//! passes the bound stated in `docs/sqlite.md` (one and a half restart
//! lengths, plus one write batch), it is truncated soon after the flood
//! stops, and a clean close leaves neither `-wal` nor `-shm` behind.
//!
//! The floods use short restart lengths so that a few seconds of writes
//! (in a debug build, on a shared machine) pass them many times; the
//! default length (10,000 pages) is measured by the benchmark's scale
//! section, which floods a release build for longer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::{
    Action, ChangeRecord, FieldingRun, FieldingService, FieldingStore, IdempotencyKey, IfMatch, JobKey, JobRequest,
    NewJob, Timestamp, UserId,
};
use fielding_sqlite::{Durability, SqliteOptions, SqliteStore};
use fielding_testkit::fixtures;

const MIB: u64 = 1 << 20;

/// Room for the batch the writer commits before it finds the log past its
/// hard limit: at most 64 writes of a few pages each.
const ONE_BATCH: u64 = 2 * MIB;

/// The stated bound for a log restarting at `pages` pages of 4 KiB.
fn bound(pages: u32) -> u64 {
    let restart = 32 + u64::from(pages) * (4096 + 24);
    restart + restart / 2 + ONE_BATCH
}

/// How long each flood lasts: long enough for the log to pass its restart
/// length several times over (the writer appends a few MiB per second even
/// in a debug build).
const FLOOD: Duration = Duration::from_secs(5);

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Samples the size of a file every millisecond, on a thread of its own,
/// until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (thread_stop, thread_peak) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                thread_peak.fetch_max(file_len(&path), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self { stop, peak, thread }
    }

    /// The largest size seen.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the sampler thread");
        self.peak.load(Ordering::Relaxed)
    }
}

/// What the flood did.
#[derive(Debug, Default)]
struct Done {
    jobs: u64,
    updates: u64,
    reads: u64,
    /// The last job each submitting task created.
    last_jobs: Vec<JobKey>,
}

impl Done {
    fn add(&mut self, other: Done) {
        self.jobs += other.jobs;
        self.updates += other.updates;
        self.reads += other.reads;
        self.last_jobs.extend(other.last_jobs);
    }
}

/// Until `deadline`: a job submission (the job, its run, its outcome),
/// reads of both, and four date updates of the run, over and over (what
/// the server does for a stream of `POST`s, `GET`s and `PUT`s).
async fn submit_and_update(service: FieldingService, deadline: Instant) -> Done {
    let actor = UserId::random();
    let mut done = Done::default();
    let mut last = None;
    while Instant::now() < deadline {
        let scope = fixtures::scope();
        let end = Timestamp::from(chrono::Utc::now())
            .checked_add(TimeDelta::days(30))
            .unwrap();
        let submitted = service
            .submit_job(NewJob {
                scope,
                idempotency_key: IdempotencyKey::parse(&format!("flood-{}", done.jobs)).unwrap(),
                request: JobRequest::LaunchFromDraft { end_fielding_at: end },
                actor,
                trace_id: None,
            })
            .await
            .unwrap();
        done.jobs += 1;
        let job = service.get_job(&scope, &submitted.job.id).await.unwrap();
        let run_id = job.created_fielding_run_id().expect("the job completed");
        let mut run = service.get(&scope.run(run_id)).await.unwrap();
        done.reads += 2;
        for step in 1..=4 {
            let moved = end.checked_add(TimeDelta::milliseconds(step)).unwrap();
            let applied = service
                .update_dates(
                    &run.key(),
                    &IfMatch::version(run.version),
                    run.start_fielding_at,
                    moved,
                    actor,
                )
                .await
                .unwrap();
            run = applied.run;
            done.updates += 1;
        }
        last = Some(job.key());
    }
    done.last_jobs.extend(last);
    done
}

/// Until `deadline`: reads, back to back, so that the reader threads
/// nearly always hold a snapshot of some part of the log.
async fn read(service: FieldingService, deadline: Instant) -> Done {
    let mut done = Done::default();
    let scope = fixtures::scope();
    while Instant::now() < deadline {
        assert_eq!(service.find(&scope).await.unwrap(), None);
        done.reads += 1;
    }
    done
}

/// Floods `store` for [`FLOOD`] with 16 submitting and 4 reading tasks.
async fn flood(store: &Arc<SqliteStore>) -> Done {
    let service = FieldingService::new(Arc::clone(store) as Arc<dyn FieldingStore>);
    let deadline = Instant::now() + FLOOD;
    let mut tasks: Vec<_> = (0..16)
        .map(|_| tokio::spawn(submit_and_update(service.clone(), deadline)))
        .collect();
    tasks.extend((0..4).map(|_| tokio::spawn(read(service.clone(), deadline))));
    let mut total = Done::default();
    for task in tasks {
        total.add(task.await.unwrap());
    }
    total
}

/// Waits (bounded) until the store has truncated its log since the
/// flood's last write; the length of the `-wal` file then. A truncation
/// counted before that (a pause of the flood longer than the idle time, as
/// a loaded machine makes) does not count: the file grew again after it.
async fn wait_until_truncated(store: &SqliteStore, wal: &Path, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let before = store.checkpoint_stats().truncations;
    while file_len(wal) > 0 && store.checkpoint_stats().truncations == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    file_len(wal)
}

/// Floods a store opened with `options`, asserting the `-wal` file's peak
/// stays within `bound`; then checks it is truncated once the flood
/// stops, that close leaves no `-wal`/`-shm`, and that every job is there
/// after reopening.
async fn flood_within(options: SqliteOptions, bound: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fielding.db");
    let (wal, shm) = (sidecar(&db, "-wal"), sidecar(&db, "-shm"));
    let truncate_after = Duration::from_millis(300);
    let store = SqliteStore::open_with(&db, options.with_wal_truncate_after(truncate_after))
        .await
        .unwrap();
    let store = Arc::new(store);
    let sampler = Sampler::start(wal.clone());
    let started = Instant::now();
    let done = flood(&store).await;
    let elapsed = started.elapsed();
    let peak = sampler.stop();
    let stats = store.checkpoint_stats();
    let report = format!(
        "{} jobs, {} updates, {} reads in {elapsed:?}: peak -wal {:.2} MiB (bound {:.2} MiB); {stats:?}; {:?}",
        done.jobs,
        done.updates,
        done.reads,
        mib(peak),
        mib(bound),
        store.write_stats(),
    );
    eprintln!("{report}");
    assert!(done.jobs >= 100, "the flood did too little to tell: {report}");
    assert!(
        stats.restarts >= 2,
        "the log passed its restart length repeatedly: {report}"
    );
    assert!(peak <= bound, "the -wal file outgrew its bound: {report}");

    // The flood is over: the file is truncated soon after.
    let left = wait_until_truncated(&store, &wal, truncate_after + Duration::from_secs(10)).await;
    assert_eq!(left, 0, "the -wal file was not truncated once writes stopped");

    let store = Arc::into_inner(store).expect("every task has finished");
    store.close().await;
    assert!(!wal.exists(), "close left {} behind", wal.display());
    assert!(!shm.exists(), "close left {} behind", shm.display());

    let store = SqliteStore::open(&db).await.unwrap();
    for key in &done.last_jobs {
        let job = store.get_job(key).await.unwrap().expect("every job survives");
        assert!(job.created_fielding_run_id().is_some(), "{job:?}");
    }
    store.close().await;
}

/// `Normal` durability: commits are cheap, the log grows fastest. Before
/// the checkpoint thread paused the writer for restarts, a flood like this
/// one left a log of 18 to 30 MiB against a 1,000-page restart length
/// (restarts waited seconds for the write lock, or failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flood_keeps_the_log_within_its_bound_with_normal_durability() {
    let pages = 1_000;
    let options = SqliteOptions::default()
        .with_durability(Durability::Normal)
        .with_wal_restart_pages(pages);
    flood_within(options, bound(pages)).await;
}

/// `Full` durability, the default (the server's): fewer, larger groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flood_keeps_the_log_within_its_bound_with_full_durability() {
    let pages = 300;
    let options = SqliteOptions::default().with_wal_restart_pages(pages);
    flood_within(options, bound(pages)).await;
}

/// A store on a new file in `dir` holding one run, its log not empty.
async fn store_with_a_run(dir: &tempfile::TempDir) -> (PathBuf, SqliteStore, FieldingRun) {
    let db = dir.path().join("fielding.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .unwrap();
    assert!(file_len(&sidecar(&db, "-wal")) > 0);
    (db, store, run)
}

/// Closing while another connection keeps the database open: SQLite keeps
/// the `-wal` file for it, but the store truncated it to nothing first.
#[tokio::test]
async fn close_empties_the_log_even_when_another_connection_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store, run) = store_with_a_run(&dir).await;
    let other = fielding_sqlite::rusqlite::Connection::open(&db).unwrap();
    let count: i64 = other
        .query_row("SELECT count(*) FROM fielding_runs", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 1);
    store.close().await;
    assert_eq!(file_len(&sidecar(&db, "-wal")), 0);
    drop(other);
    assert!(!sidecar(&db, "-wal").exists());

    let store = SqliteStore::open(&db).await.unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run));
    store.close().await;
}

/// Dropping the store (no `close`) closes the connections in the same
/// order in the background: the files go too, just without waiting.
#[tokio::test]
async fn dropping_the_store_also_removes_the_log_files() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store, _) = store_with_a_run(&dir).await;
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (sidecar(&db, "-wal").exists() || sidecar(&db, "-shm").exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!sidecar(&db, "-wal").exists());
    assert!(!sidecar(&db, "-shm").exists());
}

/// Opening a database file that is not in WAL mode yet while another
/// connection is reading it: the switch to WAL waits for the reader,
/// within the busy timeout, instead of failing with "database is locked".
/// (SQLite's busy handler covers this case by itself; the retry in
/// `switch_to_wal` is for two connections switching at the same moment,
/// where SQLite answers busy without it, an interleaving this test does
/// not force.)
#[tokio::test]
async fn the_switch_to_wal_waits_for_a_reader_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    let mode: String = reader.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "delete");
    // A read transaction holds the file's shared lock until it ends.
    reader.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
    let released = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        reader.execute_batch("COMMIT").unwrap();
    });
    let opened = fielding_sqlite::SqliteStore::open(&path).await;
    released.join().unwrap();
    let store = opened.expect("the open waits for the reader instead of failing");
    drop(store);
    let check = rusqlite::Connection::open(&path).unwrap();
    let mode: String = check.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
}
