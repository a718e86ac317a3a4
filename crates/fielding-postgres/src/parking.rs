//! Connections kept for a moment between operations.
//!
//! sqlx 0.8 pings every connection as it goes back to the pool (a round
//! trip, run in a background task), and a checkout waits for that when no
//! other connection is idle. On a small pool that is one extra round trip
//! per operation (figures in `docs/postgres.md`). So after a clean operation the store
//! keeps its connection for [`PARK_FOR`] instead of returning it, and the
//! next operation takes it directly. A background timer returns every
//! parked connection to the pool after [`PARK_FOR`], so other users of a
//! shared pool wait at most that long once the store pauses, and
//! `PgPool::close` is never held up longer.
//!
//! Parking must not overtake the store's own queued operations. The pool
//! serves its waiters in
//! arrival order; a parked connection goes to whichever operation asks
//! next. Under saturation that was nearly always one that had just
//! arrived, while the operations already queued in the pool got a
//! connection only when one sat unused for the whole [`PARK_FOR`]: their
//! waits made the PUT's p99 ten times its p50 over HTTP. So while any of
//! this store's operations waits in the pool, a finished connection goes
//! straight back to the pool (to the oldest waiter) instead of being
//! parked, a newcomer queues in the pool behind the waiters instead of
//! taking a parked one, and what was parked when an operation joined the
//! queue goes back to the pool. Other users of a shared pool (another
//! store on it included) are not counted: the store's parking can still
//! overtake them while it is busy.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// How long a connection stays parked before it goes back to the pool.
pub(crate) const PARK_FOR: Duration = Duration::from_millis(2);

/// At most this many connections are parked per store.
const PARK_MAX: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Parking {
    /// Parked connections with the time they were parked, oldest first.
    slots: Mutex<Vec<(Instant, PoolConnection<Postgres>)>>,
    /// This store's operations waiting in the pool's queue now.
    waiting: AtomicUsize,
    /// Whether a reaper task is running.
    reaping: AtomicBool,
    /// The runtime connections were parked on: a parked connection must be
    /// dropped inside it (returning it to the pool spawns a task).
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Drop for Parking {
    fn drop(&mut self) {
        let slots = std::mem::take(self.slots.get_mut().unwrap_or_else(PoisonError::into_inner));
        if slots.is_empty() {
            return;
        }
        // The store may be dropped outside any runtime (after `block_on`
        // returned): return the connections from inside the one they were
        // parked on.
        match self.runtime.get() {
            Some(runtime) => {
                let _inside = runtime.enter();
                drop(slots);
            }
            None => drop(slots),
        }
    }
}

impl Parking {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, PoolConnection<Postgres>)>> {
        // Nothing panics while holding the lock; a poisoned list is still a
        // list of healthy connections.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently parked connection, if any.
    fn take(&self) -> Option<PoolConnection<Postgres>> {
        self.slots().pop().map(|(_, conn)| conn)
    }

    /// A connection for one operation: a parked one when none of this
    /// store's operations is queued in the pool, else one from the pool,
    /// in turn behind them.
    pub(crate) async fn checkout(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        if self.waiting.load(Ordering::Acquire) == 0 {
            if let Some(conn) = self.take() {
                return Ok(conn);
            }
        }
        let _queued = Queued::join(&self.waiting);
        // Connections parked before this operation was counted would sit
        // unused until the reaper came: back to the pool with them, which
        // gives them to its oldest waiter.
        let parked = std::mem::take(&mut *self.slots());
        drop(parked);
        pool.acquire().await
    }

    /// Parks `conn`; it goes back to the pool after [`PARK_FOR`] unless an
    /// operation takes it first. Returns it to the pool at once when the
    /// store already holds [`PARK_MAX`] or there is no tokio runtime to run
    /// the reaper.
    pub(crate) fn park(self: &Arc<Self>, conn: PoolConnection<Postgres>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // dropping `conn` returns it to the pool
        };
        let _ = self.runtime.set(runtime.clone());
        if self.waiting.load(Ordering::Acquire) > 0 {
            return; // to the pool, which hands it to its oldest waiter
        }
        {
            let mut slots = self.slots();
            if slots.len() >= PARK_MAX {
                return;
            }
            slots.push((Instant::now(), conn));
        }
        // One reaper per store while anything is parked (not one timer per
        // operation): it wakes every PARK_FOR and returns what has waited
        // that long, and stops when nothing is left.
        if !self.reaping.swap(true, Ordering::AcqRel) {
            let parking = Arc::downgrade(self);
            runtime.spawn(reap(parking));
        }
    }
}

/// One operation counted in [`Parking::waiting`] while it waits in the
/// pool's queue, and no longer once it has a connection or is cancelled.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn join(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Self(waiting)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn reap(parking: Weak<Parking>) {
    loop {
        tokio::time::sleep(PARK_FOR).await;
        let Some(parking) = parking.upgrade() else { return };
        let expired: Vec<_> = {
            let mut slots = parking.slots();
            let now = Instant::now();
            let keep = slots
                .iter()
                .position(|(since, _)| now.duration_since(*since) < PARK_FOR);
            let cut = keep.unwrap_or(slots.len());
            let expired = slots.drain(..cut).collect();
            if slots.is_empty() {
                // Checked and cleared under the lock, so a concurrent `park`
                // either sees `reaping == false` and starts a new reaper, or
                // pushed before this check and is reaped by this one.
                parking.reaping.store(false, Ordering::Release);
                drop(slots);
                drop(expired);
                return;
            }
            expired
        };
        // Dropped outside the lock: returns the connections to the pool.
        drop(expired);
    }
}
