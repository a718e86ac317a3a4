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
//! once per interval while commits keep coming. A passive checkpoint copies
//! what it can but cannot make the log start over while the writer keeps
//! writing, so when the log has grown past a limit anyway, the thread runs
//! a `RESTART` checkpoint: it waits (busy timeout) for a moment with no
//! writer, copies the rest and lets the next commit start the log from the
//! beginning. Either way the data is the same; only who waits differs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// When the checkpoint thread works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointPolicy {
    /// At most one passive checkpoint per interval.
    pub(crate) interval: Duration,
    /// A log longer than this many pages is restarted.
    pub(crate) restart_pages: u32,
}

/// Counters of the checkpoint thread, for [`crate::SqliteStore::checkpoint_stats`].
#[derive(Debug, Default)]
pub(crate) struct CheckpointCounters {
    pub(crate) passive: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Pages in the log after the latest checkpoint.
    pub(crate) log_pages: AtomicU64,
}

/// The writer's handle: a nudge after each commit.
#[derive(Debug)]
pub(crate) struct Nudge(SyncSender<()>);

impl Nudge {
    /// Tells the thread there is something to copy. Never blocks: a nudge
    /// already pending covers this one too.
    pub(crate) fn committed(&self) {
        let _ = self.0.try_send(());
    }
}

/// A channel of capacity one: nudges coalesce while the thread works.
pub(crate) fn channel() -> (Nudge, Receiver<()>) {
    let (tx, rx) = mpsc::sync_channel(1);
    (Nudge(tx), rx)
}

/// The thread's loop: serves nudges until the writer (and with it the
/// sender) is gone, then returns, closing its connection.
pub(crate) fn serve(conn: Connection, nudges: Receiver<()>, policy: CheckpointPolicy, counters: &CheckpointCounters) {
    let mut last: Option<Instant> = None;
    while nudges.recv().is_ok() {
        if let Some(wait) = last.and_then(|at| policy.interval.checked_sub(at.elapsed())) {
            std::thread::sleep(wait);
        }
        // Commits made while sleeping are covered by this checkpoint.
        let _ = nudges.try_recv();
        checkpoint_once(&conn, policy, counters);
        last = Some(Instant::now());
    }
}

/// One passive checkpoint, and a restart if the log is still too long.
fn checkpoint_once(conn: &Connection, policy: CheckpointPolicy, counters: &CheckpointCounters) {
    match checkpoint(conn, "PASSIVE") {
        Ok(log) => {
            counters.passive.fetch_add(1, Ordering::Relaxed);
            counters.log_pages.store(log, Ordering::Relaxed);
            if log > u64::from(policy.restart_pages) {
                match checkpoint(conn, "RESTART") {
                    Ok(log) => {
                        counters.restarts.fetch_add(1, Ordering::Relaxed);
                        counters.log_pages.store(log, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Err(_) => {
            // Another process's checkpoint, or a transient I/O problem:
            // the next nudge tries again, and nothing is lost meanwhile
            // (the pages stay in the log).
            counters.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(MODE)`; the pages left in the log.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<u64> {
    let (busy, log, _copied): (i64, i64, i64) =
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    if busy != 0 && mode != "PASSIVE" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!("wal_checkpoint({mode}) could not finish")),
        ));
    }
    Ok(u64::try_from(log).unwrap_or(0))
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

    #[test]
    fn a_passive_checkpoint_reports_the_log_and_a_long_log_is_restarted() {
        let (_dir, writer, checkpointer) = database();
        write(&writer, 50);
        let counters = CheckpointCounters::default();
        let roomy = CheckpointPolicy {
            interval: Duration::ZERO,
            restart_pages: 1_000_000,
        };
        checkpoint_once(&checkpointer, roomy, &counters);
        assert_eq!(counters.passive.load(Ordering::Relaxed), 1);
        assert!(
            counters.log_pages.load(Ordering::Relaxed) >= 50,
            "every commit adds a frame"
        );
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 0);

        let tight = CheckpointPolicy {
            interval: Duration::ZERO,
            restart_pages: 10,
        };
        checkpoint_once(&checkpointer, tight, &counters);
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 1);
        // The next commit starts the log over.
        write(&writer, 1);
        assert!(checkpoint(&checkpointer, "PASSIVE").unwrap() < 10);
        let count: i64 = checkpointer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 51);
    }

    #[test]
    fn the_thread_checkpoints_after_nudges_and_stops_with_the_writer() {
        let (_dir, writer, checkpointer) = database();
        let (nudge, nudges) = channel();
        let counters = std::sync::Arc::new(CheckpointCounters::default());
        let thread_counters = std::sync::Arc::clone(&counters);
        let policy = CheckpointPolicy {
            interval: Duration::from_millis(1),
            restart_pages: 20,
        };
        let thread = std::thread::spawn(move || serve(checkpointer, nudges, policy, &thread_counters));
        for _ in 0..10 {
            write(&writer, 10);
            nudge.committed();
        }
        drop(nudge);
        thread.join().unwrap();
        assert!(counters.passive.load(Ordering::Relaxed) >= 1);
        assert_eq!(counters.failures.load(Ordering::Relaxed), 0);
        assert!(
            counters.restarts.load(Ordering::Relaxed) >= 1,
            "the log passed 20 pages"
        );
    }
}
