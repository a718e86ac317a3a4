//! Checkpoints on a thread of their own, off the writer's path.
//!
//! In WAL mode every commit appends pages to the `-wal` file, and a
//! checkpoint copies them back into the database file and `fsync`s it (in
//! both durability modes). SQLite's automatic checkpoint runs inside the
//! commit that crosses `wal_autocheckpoint` pages, on the writer thread:
//! that commit, and every write queued behind it, waits for the copy and
//! the flush. The copy costs one page write per *distinct* page changed
//! since the last checkpoint: a few dozen when all updates land in a small
//! database, one or two per updated run in a large one, so inline
//! checkpoints make updates slower the larger the database (figures in
//! `docs/sqlite.md`).
//!
//! So the writer turns the automatic checkpoint off and tells this thread
//! when it commits. The thread, with a connection of its own, runs a
//! `PASSIVE` checkpoint (it never blocks the writer or the readers) at most
//! once per interval while commits keep coming.
//!
//! A passive checkpoint copies what it can but cannot make the log start
//! over while the writer keeps writing: the log only restarts when a write
//! transaction begins with every frame copied and no reader on the log,
//! which a busy writer never allows. So when the log has grown past a limit
//! the thread runs a `RESTART` checkpoint, which needs SQLite's write lock.
//! Waiting for that lock with SQLite's busy handler does not work under a
//! flood: the writer holds the lock for all but a few microseconds between
//! two transactions, and the handler polls with sleeps of up to 100 ms, so
//! it misses those gaps for seconds (until the busy timeout) while the log
//! keeps growing. Instead the thread *pauses the writer* through a
//! [`WriterGate`]: it waits for the writer's current transaction to end,
//! keeps the next from starting, runs the restart (the lock is free; it
//! copies what the last passive checkpoint left and waits for readers, whose
//! statements are short), and lets the writer go on. The writer then starts
//! the log from the beginning, and SQLite's `journal_size_limit` (set on
//! the writer's connection) cuts a file that outgrew the limit back to it.
//!
//! The thread only learns the log's length from its passive checkpoints,
//! and one of those can take a while (hundreds of milliseconds on a busy
//! disk) while the writer keeps appending. So the writer also checks the
//! `-wal` file's size after each batch (one `stat`), and past a hard limit
//! (half as large again as the restart length) it waits for the thread to
//! restart the log at once. That is what makes the size a bound rather
//! than a tendency: the file never passes the hard limit by more than the
//! batch that crossed it.
//!
//! A restart can still fail when another process holds a read transaction
//! or the write lock past [`PAUSED_WAIT`]: the store then lets the log grow,
//! as SQLite's own checkpoints would, and pauses nobody for
//! [`RESTART_BACKOFF`].
//!
//! Once commits stop for a while, the thread truncates the log to zero
//! bytes (`TRUNCATE`, through the gate as well), and when the store closes
//! the writer, the last connection to close, truncates it and closes, so
//! SQLite removes the `-wal` and `-shm` files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The longest a paused restart waits for SQLite's locks (readers still on
/// the log, or another process's writer): the writer of this process waits
/// that long too, so it is kept short even when the busy timeout is long.
pub(crate) const PAUSED_WAIT: Duration = Duration::from_secs(1);

/// After a restart failed (another process kept it from finishing), no
/// restart pauses the writer for this long: the log grows meanwhile, as it
/// would with SQLite's own checkpoints, rather than every write waiting.
const RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// When the checkpoint thread works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointPolicy {
    /// At most one passive checkpoint per interval.
    pub(crate) interval: Duration,
    /// A log longer than this many pages is restarted.
    pub(crate) restart_pages: u32,
    /// After this long without a commit the log is truncated to zero bytes.
    pub(crate) truncate_after: Duration,
}

/// Counters of the checkpoint thread, for [`crate::SqliteStore::checkpoint_stats`].
#[derive(Debug, Default)]
pub(crate) struct CheckpointCounters {
    pub(crate) passive: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) truncations: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Pages in the log after the latest checkpoint.
    pub(crate) log_pages: AtomicU64,
    /// The longest the writer was held for a restart or truncation.
    pub(crate) longest_pause_ns: AtomicU64,
}

/// SQLite's checkpoint modes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Copies what it can, waits for nobody.
    Passive,
    /// Copies everything and waits until the next writer can start the log
    /// over.
    Restart,
    /// A restart that also truncates the `-wal` file to zero bytes.
    Truncate,
}

impl Mode {
    fn pragma(self) -> &'static str {
        match self {
            Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Mode::Restart => "PRAGMA wal_checkpoint(RESTART)",
            Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }
}

/// Whose turn it is to hold SQLite's write lock: the writer thread, one
/// batch at a time, or the checkpoint thread, for a checkpoint that needs
/// the lock.
#[derive(Debug, Default)]
pub(crate) struct WriterGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// The writer is inside a batch.
    writing: bool,
    /// The checkpoint thread holds (or waits for) the writer paused.
    paused: bool,
    /// The writer found the log past its hard limit and waits for a
    /// restart (or for the checkpoint thread to give up on one).
    full: bool,
    /// The checkpoint thread has stopped: nobody will clear `full`.
    stopped: bool,
    /// The writer has stopped: the checkpoint thread should not sleep on.
    closing: bool,
    /// After a failed restart: no restart, and no waiting for one, before
    /// this instant.
    restart_after: Option<Instant>,
}

impl GateState {
    fn may_restart(&self) -> bool {
        self.restart_after.is_none_or(|at| Instant::now() >= at)
    }
}

impl WriterGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, GateState>) -> MutexGuard<'a, GateState> {
        self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates the state and wakes whoever waits for a change.
    fn update(&self, change: impl FnOnce(&mut GateState)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// The writer runs `batch` (its transactions) once no checkpoint holds
    /// it paused.
    fn write<R>(&self, batch: impl FnOnce() -> R) -> R {
        let mut state = self.lock();
        while state.paused {
            state = self.wait(state);
        }
        state.writing = true;
        drop(state);
        // Released even if `batch` panics, or the checkpoint thread would
        // wait forever.
        let _done = OnDrop(|| {
            let mut state = self.lock();
            state.writing = false;
            if state.paused {
                drop(state);
                self.changed.notify_all();
            }
        });
        batch()
    }

    /// The writer waits until the checkpoint thread has dealt with a full
    /// log (see [`CheckpointerLink::full`]), if it still runs.
    fn wait_while_full(&self) {
        let mut state = self.lock();
        while state.full && !state.stopped {
            state = self.wait(state);
        }
    }

    /// The checkpoint thread runs `work` between two of the writer's
    /// batches, the writer held until it is done; a writer waiting for a
    /// full log goes on afterwards, whatever the outcome.
    fn pause<R>(&self, work: impl FnOnce() -> R) -> R {
        let mut state = self.lock();
        state.paused = true;
        while state.writing {
            state = self.wait(state);
        }
        drop(state);
        let _resume = OnDrop(|| {
            self.update(|state| {
                state.paused = false;
                state.full = false;
            })
        });
        work()
    }
}

/// Runs its closure when dropped, also while unwinding.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// The size past which the writer waits for a restart, for a log that
/// restarts at `restart_bytes`.
pub(crate) fn hard_limit(restart_bytes: u64) -> u64 {
    restart_bytes.saturating_add(restart_bytes / 2)
}

/// The writer's side: the gate, the nudge after each commit, and the
/// hard limit on the `-wal` file.
#[derive(Debug)]
pub(crate) struct WriterLink {
    nudges: SyncSender<()>,
    gate: Arc<WriterGate>,
    wal: PathBuf,
    limit_bytes: u64,
}

impl WriterLink {
    /// Sets the hard limit for a log that restarts at `restart_bytes`
    /// (none if unknown): half as large again ([`hard_limit`]), so that a
    /// restart that merely came a little late (behind a slow passive
    /// checkpoint) does not make the writer wait, and the file is cut back
    /// under it when the log starts over (`journal_size_limit`).
    pub(crate) fn restarting_at(mut self, restart_bytes: Option<u64>) -> Self {
        self.limit_bytes = restart_bytes.map_or(u64::MAX, hard_limit);
        self
    }

    /// Runs a batch when the checkpoint thread lets the writer.
    pub(crate) fn write<R>(&self, batch: impl FnOnce() -> R) -> R {
        self.gate.write(batch)
    }

    /// After a batch that wrote: tells the checkpoint thread there is
    /// something to copy (never blocks: a nudge already pending covers this
    /// one too), and if the `-wal` file has passed its hard limit (the
    /// thread's restart came too late, behind a slow checkpoint), waits
    /// until the thread has restarted the log.
    pub(crate) fn committed(&self) {
        let mut full = std::fs::metadata(&self.wal).is_ok_and(|m| m.len() > self.limit_bytes);
        if full {
            // Set before the nudge, so the thread sees it when it wakes.
            let mut state = self.gate.lock();
            full = state.may_restart() && !state.stopped;
            state.full = full;
            drop(state);
            self.gate.changed.notify_all();
        }
        let _ = self.nudges.try_send(());
        if full {
            self.gate.wait_while_full();
        }
    }
}

impl Drop for WriterLink {
    /// Wakes the checkpoint thread if it sleeps before a checkpoint: the
    /// store is closing, and its connection should close soon.
    fn drop(&mut self) {
        self.gate.update(|state| state.closing = true);
    }
}

/// The checkpoint thread's side.
#[derive(Debug)]
pub(crate) struct CheckpointerLink {
    nudges: Receiver<()>,
    gate: Arc<WriterGate>,
}

impl CheckpointerLink {
    /// Whether the writer waits for a restart.
    fn full(&self) -> bool {
        self.gate.lock().full
    }

    /// Waits `interval`, or less if the writer starts waiting for a
    /// restart or stops meanwhile.
    fn sleep_unless_full(&self, interval: Duration) {
        let state = self.gate.lock();
        let _ = self
            .gate
            .changed
            .wait_timeout_while(state, interval, |state| !state.full && !state.closing)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn may_restart(&self) -> bool {
        self.gate.lock().may_restart()
    }

    /// After a restart failed: none for [`RESTART_BACKOFF`].
    fn back_off(&self) {
        self.gate.lock().restart_after = Some(Instant::now() + RESTART_BACKOFF);
    }
}

impl Drop for CheckpointerLink {
    /// A writer must not wait for a restart from a thread that is gone.
    fn drop(&mut self) {
        self.gate.update(|state| state.stopped = true);
    }
}

/// The two ends for a database whose log is at `wal`. Nudges go through a
/// channel of capacity one, so they coalesce while the thread works.
pub(crate) fn link(wal: PathBuf) -> (WriterLink, CheckpointerLink) {
    let (tx, rx) = mpsc::sync_channel(1);
    let gate = Arc::new(WriterGate::default());
    (
        WriterLink {
            nudges: tx,
            gate: Arc::clone(&gate),
            wal,
            limit_bytes: u64::MAX,
        },
        CheckpointerLink { nudges: rx, gate },
    )
}

/// The thread's loop: serves nudges until the writer (and with it the
/// sender) is gone, then returns, closing its connection. After
/// `truncate_after` without a nudge it truncates the log.
pub(crate) fn serve(conn: Connection, link: CheckpointerLink, policy: CheckpointPolicy, counters: &CheckpointCounters) {
    let mut last: Option<Instant> = None;
    // Commits since the log was last truncated.
    let mut written = false;
    loop {
        let nudge = if written {
            link.nudges.recv_timeout(policy.truncate_after)
        } else {
            link.nudges.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match nudge {
            Ok(()) => {
                let may_restart = link.may_restart();
                let mut restarted = true;
                if !link.full() {
                    if let Some(wait) = last.and_then(|at| policy.interval.checked_sub(at.elapsed())) {
                        link.sleep_unless_full(wait);
                    }
                    // Commits made while sleeping are covered by this
                    // checkpoint.
                    let _ = link.nudges.try_recv();
                    restarted = checkpoint_once(&conn, policy, counters, may_restart.then_some(&*link.gate));
                }
                // The writer waits (it may have said so during the passive
                // checkpoint, whose nudge `try_recv` took): restart now,
                // copying everything.
                if link.full() {
                    restarted = restart(&conn, &link.gate, counters);
                }
                if !restarted {
                    // Another process's reader or writer kept the restart
                    // from finishing: let this process's writer work for a
                    // while before pausing it again.
                    link.back_off();
                }
                last = Some(Instant::now());
                written = true;
            }
            Err(RecvTimeoutError::Timeout) => {
                // One attempt per quiet spell: if it fails, the next commit
                // and the next quiet spell bring another.
                let _ = paused(&link.gate, counters, || {
                    count(counters, Mode::Truncate, checkpoint(&conn, Mode::Truncate))
                });
                written = false;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One passive checkpoint, and a restart if the log is still too long and
/// a `gate` lets the writer be paused. `false` if a restart failed.
fn checkpoint_once(
    conn: &Connection,
    policy: CheckpointPolicy,
    counters: &CheckpointCounters,
    gate: Option<&WriterGate>,
) -> bool {
    match count(counters, Mode::Passive, checkpoint(conn, Mode::Passive)) {
        Some(log) if log > u64::from(policy.restart_pages) => gate.is_none_or(|gate| restart(conn, gate, counters)),
        // Another process's checkpoint, or a transient I/O problem: the
        // next nudge tries again, and nothing is lost meanwhile (the pages
        // stay in the log).
        _ => true,
    }
}

/// A restart with the writer paused; `false` if it could not finish.
fn restart(conn: &Connection, gate: &WriterGate, counters: &CheckpointCounters) -> bool {
    paused(gate, counters, || {
        count(counters, Mode::Restart, checkpoint(conn, Mode::Restart)).is_some()
    })
}

/// Runs `work` with the writer paused, recording how long it was held.
fn paused<R>(gate: &WriterGate, counters: &CheckpointCounters, work: impl FnOnce() -> R) -> R {
    gate.pause(|| {
        let started = Instant::now();
        let outcome = work();
        let held = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.longest_pause_ns.fetch_max(held, Ordering::Relaxed);
        outcome
    })
}

/// Records a checkpoint's outcome in the counters; the pages left in the
/// log if it succeeded.
fn count(counters: &CheckpointCounters, mode: Mode, outcome: rusqlite::Result<u64>) -> Option<u64> {
    match outcome {
        Ok(log) => {
            let done = match mode {
                Mode::Passive => &counters.passive,
                Mode::Restart => &counters.restarts,
                Mode::Truncate => &counters.truncations,
            };
            done.fetch_add(1, Ordering::Relaxed);
            counters.log_pages.store(log, Ordering::Relaxed);
            Some(log)
        }
        Err(_) => {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(MODE)`; the pages left in the log.
fn checkpoint(conn: &Connection, mode: Mode) -> rusqlite::Result<u64> {
    let (busy, log, _copied): (i64, i64, i64) =
        conn.query_row(mode.pragma(), [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    if busy != 0 && mode != Mode::Passive {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("{} could not finish", mode.pragma())),
        ));
    }
    Ok(u64::try_from(log).unwrap_or(0))
}

/// Closes the writer's connection, the last of the store's: truncates the
/// log first, so that even when another process keeps the database open
/// (and SQLite therefore keeps the `-wal` file) the file is empty. When no
/// other connection is open, closing removes the `-wal` and `-shm` files.
pub(crate) fn close_last(conn: Connection, counters: &CheckpointCounters) {
    let _ = count(counters, Mode::Truncate, checkpoint(&conn, Mode::Truncate));
    if let Err((_conn, _)) = conn.close() {
        // A statement still open: the connection is closed on drop anyway.
        counters.failures.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, Connection, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        let checkpointer = Connection::open(&path).unwrap();
        (dir, writer, checkpointer)
    }

    fn write(conn: &Connection, n: usize) {
        for i in 0..n {
            conn.execute("INSERT INTO t VALUES (?1)", [i as i64]).unwrap();
        }
    }

    fn policy(restart_pages: u32) -> CheckpointPolicy {
        CheckpointPolicy {
            interval: Duration::ZERO,
            restart_pages,
            truncate_after: Duration::from_secs(60),
        }
    }

    fn wal_len(dir: &tempfile::TempDir) -> u64 {
        std::fs::metadata(dir.path().join("c.db-wal")).map_or(0, |m| m.len())
    }

    #[test]
    fn a_passive_checkpoint_reports_the_log_and_a_long_log_is_restarted() {
        let (_dir, writer, checkpointer) = database();
        let gate = WriterGate::default();
        write(&writer, 50);
        let counters = CheckpointCounters::default();
        assert!(checkpoint_once(
            &checkpointer,
            policy(1_000_000),
            &counters,
            Some(&gate)
        ));
        assert_eq!(counters.passive.load(Ordering::Relaxed), 1);
        assert!(
            counters.log_pages.load(Ordering::Relaxed) >= 50,
            "every commit adds a frame"
        );
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 0);

        // Without the gate (after a failed restart) a long log waits.
        assert!(checkpoint_once(&checkpointer, policy(10), &counters, None));
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 0);
        assert!(checkpoint_once(&checkpointer, policy(10), &counters, Some(&gate)));
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 1);
        // The next commit starts the log over.
        write(&writer, 1);
        assert!(checkpoint(&checkpointer, Mode::Passive).unwrap() < 10);
        let count: i64 = checkpointer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 51);
    }

    #[test]
    fn a_restart_that_cannot_finish_is_a_failure() {
        let (dir, writer, checkpointer) = database();
        checkpointer.busy_timeout(Duration::from_millis(20)).unwrap();
        write(&writer, 20);
        // Another connection holds the write lock (another process, say).
        let other = Connection::open(dir.path().join("c.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let counters = CheckpointCounters::default();
        let gate = WriterGate::default();
        assert!(!checkpoint_once(&checkpointer, policy(5), &counters, Some(&gate)));
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 0);
        assert_eq!(counters.failures.load(Ordering::Relaxed), 1);
        other.execute_batch("ROLLBACK").unwrap();
        assert!(checkpoint_once(&checkpointer, policy(5), &counters, Some(&gate)));
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 1);
    }

    /// The writer holds its turn until a pause is asked; the pause starts
    /// only after the writer's group, and the writer's next group only
    /// after the pause.
    #[test]
    fn a_pause_waits_for_the_writers_group_and_holds_the_next() {
        let gate = Arc::new(WriterGate::default());
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = |events: &Arc<Mutex<Vec<&'static str>>>, what| events.lock().unwrap().push(what);
        let (in_group_tx, in_group) = mpsc::channel();
        let writer = {
            let (gate, events) = (Arc::clone(&gate), Arc::clone(&events));
            std::thread::spawn(move || {
                gate.write(|| {
                    in_group_tx.send(()).unwrap();
                    while !gate.lock().paused {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    log(&events, "group 1 ends");
                });
                // Asked while the pause holds the writer: waits for it.
                in_group_tx.send(()).unwrap();
                gate.write(|| log(&events, "group 2"));
            })
        };
        in_group.recv().unwrap();
        gate.pause(|| {
            log(&events, "pause starts");
            in_group.recv().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            log(&events, "pause ends");
        });
        writer.join().unwrap();
        assert_eq!(
            *events.lock().unwrap(),
            ["group 1 ends", "pause starts", "pause ends", "group 2"]
        );
    }

    #[test]
    fn a_panicking_group_still_lets_a_pause_through() {
        let gate = Arc::new(WriterGate::default());
        let panicked = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.write(|| panic!("a bug in a write")))
        };
        assert!(panicked.join().is_err());
        assert_eq!(gate.pause(|| 7), 7);
        assert_eq!(gate.write(|| 8), 8);
    }

    #[test]
    fn the_thread_checkpoints_after_nudges_truncates_when_idle_and_stops_with_the_writer() {
        let (dir, writer, checkpointer) = database();
        let (link, thread_link) = link(dir.path().join("c.db-wal"));
        let counters = Arc::new(CheckpointCounters::default());
        let thread_counters = Arc::clone(&counters);
        let policy = CheckpointPolicy {
            interval: Duration::from_millis(1),
            restart_pages: 20,
            truncate_after: Duration::from_millis(100),
        };
        let thread = std::thread::spawn(move || serve(checkpointer, thread_link, policy, &thread_counters));
        for _ in 0..10 {
            link.write(|| write(&writer, 10));
            link.committed();
        }
        // Quiet: within a bounded time the log is truncated to nothing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.truncations.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(counters.truncations.load(Ordering::Relaxed), 1);
        assert_eq!(wal_len(&dir), 0);
        drop(link);
        thread.join().unwrap();
        assert!(counters.passive.load(Ordering::Relaxed) >= 1);
        assert_eq!(counters.failures.load(Ordering::Relaxed), 0);
        assert!(
            counters.restarts.load(Ordering::Relaxed) >= 1,
            "the log passed 20 pages"
        );
    }

    /// Passive checkpoints never restart here (a huge restart length, one
    /// per minute at most): only the writer finding the file past its hard
    /// limit makes the thread restart the log, and the file stays within
    /// the limit plus one batch.
    #[test]
    fn a_writer_past_the_hard_limit_waits_for_a_restart() {
        let (dir, writer, checkpointer) = database();
        let wal = dir.path().join("c.db-wal");
        let (link, thread_link) = link(wal.clone());
        // A log restarting at 40 pages of 4 KiB: a hard limit of 60 pages.
        let restart_bytes = 32 + 40 * (4096 + 24);
        let link = link.restarting_at(Some(restart_bytes));
        let counters = Arc::new(CheckpointCounters::default());
        let thread_counters = Arc::clone(&counters);
        let policy = CheckpointPolicy {
            interval: Duration::from_secs(60),
            restart_pages: u32::MAX,
            truncate_after: Duration::from_secs(60),
        };
        let thread = std::thread::spawn(move || serve(checkpointer, thread_link, policy, &thread_counters));
        writer
            .pragma_update(None, "journal_size_limit", restart_bytes as i64)
            .unwrap();
        let mut peak = 0;
        for _ in 0..50 {
            // One batch: 10 commits of a page or two each.
            link.write(|| write(&writer, 10));
            link.committed();
            peak = peak.max(std::fs::metadata(&wal).unwrap().len());
        }
        drop(link);
        thread.join().unwrap();
        let batch = 20 * (4096 + 24);
        assert!(peak <= restart_bytes * 3 / 2 + batch, "peak {peak} bytes: {counters:?}");
        assert!(counters.restarts.load(Ordering::Relaxed) >= 2, "{counters:?}");
        assert_eq!(counters.failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn closing_the_last_connection_removes_the_log_files() {
        let (dir, writer, checkpointer) = database();
        write(&writer, 30);
        drop(checkpointer);
        assert!(wal_len(&dir) > 0);
        let counters = CheckpointCounters::default();
        close_last(writer, &counters);
        assert_eq!(counters.truncations.load(Ordering::Relaxed), 1);
        assert!(!dir.path().join("c.db-wal").exists());
        assert!(!dir.path().join("c.db-shm").exists());
        let reopened = Connection::open(dir.path().join("c.db")).unwrap();
        let count: i64 = reopened.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 30);
    }
}
