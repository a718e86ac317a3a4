//! What the writer and checkpoint threads have done: [`WriteStats`] and
//! [`CheckpointStats`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::store::SqliteStore;

/// What the checkpoint thread has done, from [`SqliteStore::checkpoint_stats`].
///
/// ```
/// use fielding_sqlite::CheckpointStats;
/// let stats = CheckpointStats::default();
/// assert_eq!(stats.passive + stats.restarts + stats.truncations + stats.failures, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Passive checkpoints run (they copy what they can without waiting).
    pub passive: u64,
    /// Restart checkpoints run because the log passed
    /// [`SqliteOptions::with_wal_restart_pages`](crate::SqliteOptions::with_wal_restart_pages).
    pub restarts: u64,
    /// Truncations of the `-wal` file to zero bytes: after
    /// [`SqliteOptions::with_wal_truncate_after`](crate::SqliteOptions::with_wal_truncate_after)
    /// without a commit, and when the store closes.
    pub truncations: u64,
    /// Checkpoints that failed (another process was checkpointing, an I/O
    /// error); the pages stay in the log and the next one tries again.
    pub failures: u64,
    /// Pages in the log after the latest checkpoint.
    pub log_pages: u64,
    /// The longest the writer was held for a restart or truncation.
    pub longest_pause: Duration,
}

/// How the writer thread has committed, from [`SqliteStore::write_stats`].
///
/// ```
/// use fielding_sqlite::WriteStats;
/// let stats = WriteStats { writes: 12, transactions: 4 };
/// assert_eq!(stats.writes_per_transaction(), 3.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Writes (`insert`, `compare_and_swap`, `create_job`, `finish_job`)
    /// the writer thread has run, whatever their outcome.
    pub writes: u64,
    /// Write transactions it has run for them (fewer than `writes` when
    /// group commit put several writes in one).
    pub transactions: u64,
}

impl WriteStats {
    /// The average group size (0 before the first write).
    pub fn writes_per_transaction(&self) -> f64 {
        if self.transactions == 0 {
            0.0
        } else {
            self.writes as f64 / self.transactions as f64
        }
    }
}

impl SqliteStore {
    /// How many writes the writer thread has run, in how many
    /// transactions (see [`SqliteOptions::with_group_commit`](crate::SqliteOptions::with_group_commit)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// let store = fielding_sqlite::SqliteStore::open_in_memory().await?;
    /// assert_eq!(store.write_stats().writes, 0);
    /// # Ok(()) }
    /// ```
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            transactions: self.counters.transactions.load(Ordering::Relaxed),
        }
    }

    /// What the checkpoint thread has done so far (all zero for an
    /// in-memory or read-only store, which have none).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fielding_sqlite::OpenError> {
    /// let store = fielding_sqlite::SqliteStore::open_in_memory().await?;
    /// assert_eq!(store.checkpoint_stats().passive, 0);
    /// # Ok(()) }
    /// ```
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        let c = &self.checkpoints;
        CheckpointStats {
            passive: c.passive.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            truncations: c.truncations.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            log_pages: c.log_pages.load(Ordering::Relaxed),
            longest_pause: Duration::from_nanos(c.longest_pause_ns.load(Ordering::Relaxed)),
        }
    }
}
