//! Wake-ups for feed watchers, within this process and across instances.
//!
//! After each write that committed change records, the store wakes this
//! process's watchers of the account at once ([`ChangeNotifier::notify`])
//! and marks the account for the *sender*, a background task that tells
//! the other instances with `pg_notify` on the schema's channel
//! ([`SchemaName::feed_channel`]) from a connection of its own. The
//! *listener*, another background task (sqlx's [`PgListener`], also on a
//! connection of its own), turns what the other instances send into
//! `notify` calls, and calls [`ChangeNotifier::notify_all`] after every
//! (re)connect, because whatever was sent while it was not listening is
//! lost.
//!
//! Why not `NOTIFY` inside each write: a transaction that has notified
//! takes a database-wide lock when it commits, so every writer would
//! commit one at a time. The sender instead sends one statement for all
//! the accounts written since its last send, at most one per
//! [`SEND_INTERVAL`], and no writer waits for it.
//!
//! A wake-up is a hint: watchers also read on a timer, so a failure here
//! costs delay, never a record. Failures are logged and retried with
//! backoff, and never reach a write.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fielding_core::{AccountId, ChangeNotifier};
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::schema_name::SchemaName;

/// The shortest time between two sends of one store: a burst of writes
/// costs one `pg_notify` statement per interval, and a write after a quiet
/// spell is announced at once.
pub(crate) const SEND_INTERVAL: Duration = Duration::from_millis(5);

/// The largest payload `pg_notify` accepts is 8000 bytes; accounts go in
/// payloads well below that.
const PAYLOAD_BUDGET: usize = 7000;

/// The first pause after a failure, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wake-ups of one store (shared by its clones); dropping the last
/// clone stops the background tasks.
pub(crate) struct Wakeups {
    shared: Arc<Shared>,
    /// The store's pool, for its connect options only (read at every
    /// connect, so options the application replaces are used from then on).
    pool: PgPool,
    /// Whether this store listens to other instances (see
    /// `PgStore::with_feed_listener`).
    listen: AtomicBool,
    tasks: Mutex<Tasks>,
}

/// What the background tasks use.
struct Shared {
    notifier: ChangeNotifier,
    channel: String,
    /// Written into every payload, so a store's listener skips what its own
    /// sender announced (its watchers were woken at the write already).
    origin: String,
    /// Accounts written since the sender's last send.
    pending: Mutex<HashSet<AccountId>>,
    /// Wakes the sender (a permit is kept when it is busy, so no mark is
    /// missed).
    marked: Notify,
    /// Whether each task is running: cleared by the task's own guard when
    /// it ends, also when its runtime shuts down under it.
    sending: AtomicBool,
    listening: AtomicBool,
}

#[derive(Default)]
struct Tasks {
    sender: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for task in [tasks.sender.take(), tasks.listener.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

impl Wakeups {
    pub(crate) fn new(schema: &SchemaName, pool: PgPool) -> Self {
        let origin = uuid::Uuid::new_v4().simple().to_string();
        Self {
            shared: Arc::new(Shared {
                notifier: ChangeNotifier::default(),
                channel: schema.feed_channel(),
                origin: origin[..12].to_string(),
                pending: Mutex::default(),
                marked: Notify::new(),
                sending: AtomicBool::new(false),
                listening: AtomicBool::new(false),
            }),
            pool,
            listen: AtomicBool::new(true),
            tasks: Mutex::default(),
        }
    }

    /// `account` has new change records: wakes this process's watchers
    /// now and the other instances' soon.
    pub(crate) fn written(&self, account: AccountId) {
        self.shared.notifier.notify(account);
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(account);
        if !self.shared.sending.load(Ordering::Acquire) {
            self.start_sender();
        }
        self.shared.marked.notify_one();
    }

    /// The notifier watchers subscribe to; starts the listener if it is on
    /// and not running.
    pub(crate) fn notifier(&self) -> ChangeNotifier {
        if self.listen.load(Ordering::Acquire) && !self.shared.listening.load(Ordering::Acquire) {
            self.start_listener();
        }
        self.shared.notifier.clone()
    }

    /// Turns listening to other instances on or off (off stops a running
    /// listener).
    pub(crate) fn set_listen(&self, on: bool) {
        self.listen.store(on, Ordering::Release);
        if !on {
            let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(task) = tasks.listener.take() {
                task.abort();
            }
        }
    }

    /// Whether the listener task is running (for tests).
    pub(crate) fn listening(&self) -> bool {
        self.shared.listening.load(Ordering::Acquire)
    }

    fn start_sender(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime to run it on: this process's watchers were woken, the others poll
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: two writers may both have seen it stopped.
        if self.shared.sending.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Running(Arc::clone(&self.shared), Task::Sender);
        tasks.sender = Some(runtime.spawn(send(running, self.pool.clone())));
    }

    fn start_listener(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // watchers still poll
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.listen.load(Ordering::Acquire) || self.shared.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Running(Arc::clone(&self.shared), Task::Listener);
        tasks.listener = Some(runtime.spawn(listen(running, self.pool.clone())));
    }
}

#[derive(Clone, Copy)]
enum Task {
    Sender,
    Listener,
}

/// Held by a running task: clears the task's flag when the task ends
/// (aborted, or dropped with its runtime), so the next use starts it anew.
struct Running(Arc<Shared>, Task);

impl Drop for Running {
    fn drop(&mut self) {
        let flag = match self.1 {
            Task::Sender => &self.0.sending,
            Task::Listener => {
                // Nobody listens now: other instances' writes wake no one
                // here, so waiting readers go back to polling often.
                self.0.notifier.set_sees_every_writer(false);
                &self.0.listening
            }
        };
        flag.store(false, Ordering::Release);
    }
}

/// The sender: waits for marked accounts, sends them, at most once per
/// [`SEND_INTERVAL`].
async fn send(running: Running, pool: PgPool) {
    let shared = &running.0;
    let mut conn: Option<PgConnection> = None;
    let mut backoff = Backoff::default();
    let mut last_send: Option<Instant> = None;
    loop {
        shared.marked.notified().await;
        if let Some(at) = last_send {
            tokio::time::sleep_until(at + SEND_INTERVAL).await;
        }
        let accounts: Vec<AccountId> = {
            let mut pending = shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.drain().collect()
        };
        if accounts.is_empty() {
            continue;
        }
        last_send = Some(Instant::now());
        let payloads = payloads(&shared.origin, &accounts);
        match send_once(&mut conn, &pool, &shared.channel, &payloads).await {
            Ok(()) => backoff.reset(),
            Err(err) => {
                // The accounts go back for the next attempt; the connection
                // is dropped and made anew.
                conn = None;
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(accounts);
                let pause = backoff.next();
                tracing::warn!(
                    channel = %shared.channel,
                    error = %err,
                    retry_in_ms = pause.as_millis() as u64,
                    "fielding-postgres: sending feed wake-ups failed"
                );
                tokio::time::sleep(pause).await;
                shared.marked.notify_one();
            }
        }
    }
}

async fn send_once(
    conn: &mut Option<PgConnection>,
    pool: &PgPool,
    channel: &str,
    payloads: &[String],
) -> Result<(), sqlx::Error> {
    let conn = match conn {
        Some(conn) => conn,
        None => {
            let fresh = PgConnection::connect_with(&pool.connect_options()).await?;
            conn.insert(fresh)
        }
    };
    // One statement (one transaction, one commit) for every payload. A
    // transaction that notifies takes a transaction id and commits like a
    // write; a wake-up is a hint, so it need not wait for its commit record
    // to reach the disk. Set for this transaction only (`set_config(...,
    // true)`): behind a pooling proxy a session setting could outlive it on
    // a connection the store's real writes use.
    sqlx::query(
        "SELECT pg_notify($1, p) FROM (SELECT set_config('synchronous_commit', 'off', true)) AS quick, \
         UNNEST($2::text[]) AS p",
    )
    .bind(channel)
    .bind(payloads)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `origin:1,2,3`, split into payloads below [`PAYLOAD_BUDGET`].
fn payloads(origin: &str, accounts: &[AccountId]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for account in accounts {
        let id = account.get().to_string();
        if !current.is_empty() && current.len() + 1 + id.len() > PAYLOAD_BUDGET {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(origin);
            current.push(':');
        } else {
            current.push(',');
        }
        current.push_str(&id);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The accounts of a payload another store sent; `None` for one of this
/// store's own or one it cannot read.
fn accounts_of(payload: &str, own_origin: &str) -> Option<Vec<AccountId>> {
    let (origin, list) = payload.split_once(':')?;
    if origin == own_origin {
        return None;
    }
    list.split(',')
        .map(|id| id.parse::<i64>().ok().and_then(|id| AccountId::new(id).ok()))
        .collect()
}

/// The listener: `LISTEN` on the channel, wake the accounts announced.
async fn listen(running: Running, pool: PgPool) {
    let shared = &running.0;
    let mut backoff = Backoff::default();
    loop {
        match listen_once(shared, &pool, &mut backoff).await {
            Ok(()) => {}
            Err(err) => {
                // Until listening again, other instances' writes wake
                // nobody here: waiting readers go back to polling often.
                shared.notifier.set_sees_every_writer(false);
                let pause = backoff.next();
                tracing::warn!(
                    channel = %shared.channel,
                    error = %err,
                    retry_in_ms = pause.as_millis() as u64,
                    "fielding-postgres: listening for feed wake-ups failed"
                );
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One listening connection, until it fails.
async fn listen_once(shared: &Shared, store_pool: &PgPool, backoff: &mut Backoff) -> Result<(), sqlx::Error> {
    // A pool of one for the listener alone, never the store's: it holds its
    // connection for good, and the store's pool may have one connection.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*store_pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(&shared.channel).await?;
    // Every instance's writes wake this one from now on, so waiting readers
    // poll only as a safety net (a sender that cannot reach the database
    // delays its instance's records by that net's interval at most).
    shared.notifier.set_sees_every_writer(true);
    // Whatever was sent while nobody listened is lost: every watcher reads.
    shared.notifier.notify_all();
    backoff.reset();
    loop {
        match listener.try_recv().await? {
            Some(notification) => {
                for account in accounts_of(notification.payload(), &shared.origin).unwrap_or_default() {
                    shared.notifier.notify(account);
                }
            }
            // The connection was lost and has been made anew (listening
            // again): what was sent in between is lost.
            None => {
                tracing::info!(channel = %shared.channel, "fielding-postgres: feed listener reconnected");
                shared.notifier.notify_all();
            }
        }
    }
}

/// Doubling pauses between attempts after failures.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = self.next.unwrap_or(FIRST_BACKOFF);
        self.next = Some((pause * 2).min(MAX_BACKOFF));
        pause
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(n: i64) -> AccountId {
        AccountId::new(n).unwrap()
    }

    #[test]
    fn payloads_carry_the_origin_and_stay_below_the_limit() {
        let accounts: Vec<AccountId> = (1..=3000).map(account).collect();
        let payloads = payloads("abc", &accounts);
        assert!(payloads.len() > 1);
        let mut seen = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= PAYLOAD_BUDGET, "{}", payload.len());
            seen.extend(accounts_of(payload, "other").expect("readable"));
        }
        assert_eq!(seen, accounts);
        assert_eq!(accounts_of(&payloads[0], "abc"), None, "a store skips its own");
        assert_eq!(accounts_of("x:1,zz", "abc"), None);
        assert_eq!(accounts_of("no origin", "abc"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let pauses: Vec<_> = (0..10).map(|_| backoff.next()).collect();
        assert_eq!(pauses[0], FIRST_BACKOFF);
        assert_eq!(pauses[1], FIRST_BACKOFF * 2);
        assert_eq!(*pauses.last().unwrap(), MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.next(), FIRST_BACKOFF);
    }
}
