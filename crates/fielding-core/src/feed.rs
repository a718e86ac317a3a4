//! The change feed: every change record of an account, in commit order,
//! read from a cursor (see `docs/feed.md`).
//!
//! * [`FeedPosition`]: where a record sits in its account's feed, and the
//!   cursor a reader continues from. Opaque to clients (a string such as
//!   `"1843.2"`), ordered, and comparable only within one store.
//! * [`FeedRecord`]: a [`ChangeRecord`] with its position and scope.
//! * [`FeedPage`]: what [`crate::FieldingStore::feed`] answers.
//! * [`ConsumerName`]: the name a checkpointed consumer saves its position
//!   under.
//! * [`ChangeNotifier`]: the in-process wake-up stores use to tell
//!   watchers that an account has new records.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{AccountId, ChangeRecord, FieldingRunId, InvalidId, RunKey, Scope, Status, Timestamp};

/// The longest cursor text accepted: two `u64` in decimal and a dot.
const MAX_CURSOR_LEN: usize = 20 + 1 + 20;

/// A record's place in its account's feed, and the cursor a reader passes
/// back to continue after it.
///
/// Positions are ordered (first `major`, then `minor`); within one account
/// of one store, a record committed after a reader has read up to `p`
/// always sorts after `p`, so a reader that follows the feed skips
/// nothing. What the two numbers mean is the store's business (PostgreSQL:
/// the writing transaction's id and a sequence; SQLite and memory: a
/// counter and 0); clients see the cursor text and must treat it as
/// opaque.
///
/// ```
/// use fielding_core::FeedPosition;
/// let p: FeedPosition = "1843.2".parse()?;
/// assert_eq!(p, FeedPosition::new(1843, 2));
/// assert_eq!(p.to_string(), "1843.2");
/// assert!(FeedPosition::new(1843, 3) > p && FeedPosition::new(1844, 0) > p);
/// assert!("1843".parse::<FeedPosition>().is_err());
/// # Ok::<(), fielding_core::InvalidId>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FeedPosition {
    major: u64,
    minor: u64,
}

impl FeedPosition {
    /// Before every record of every store.
    pub const ZERO: FeedPosition = FeedPosition { major: 0, minor: 0 };

    /// The position `(major, minor)`.
    pub const fn new(major: u64, minor: u64) -> Self {
        FeedPosition { major, minor }
    }

    /// The first number (what a store sorts by first).
    pub const fn major(self) -> u64 {
        self.major
    }

    /// The second number.
    pub const fn minor(self) -> u64 {
        self.minor
    }

    /// Parses the cursor text of a request parameter named `field`.
    pub fn parse_cursor(text: &str, field: &'static str) -> Result<Self, InvalidId> {
        let invalid = |reason: &str| InvalidId::new(field, reason);
        if text.is_empty() || text.len() > MAX_CURSOR_LEN {
            return Err(invalid("must be a cursor returned by an earlier page (next_cursor)"));
        }
        let (major, minor) = text
            .split_once('.')
            .ok_or_else(|| invalid("must be a cursor returned by an earlier page (next_cursor)"))?;
        let number = |part: &str| {
            let canonical =
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && (part == "0" || !part.starts_with('0'));
            canonical.then(|| part.parse::<u64>().ok()).flatten()
        };
        match (number(major), number(minor)) {
            (Some(major), Some(minor)) => Ok(FeedPosition { major, minor }),
            _ => Err(invalid("must be a cursor returned by an earlier page (next_cursor)")),
        }
    }
}

impl fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for FeedPosition {
    type Err = InvalidId;

    fn from_str(text: &str) -> Result<Self, InvalidId> {
        FeedPosition::parse_cursor(text, "after")
    }
}

impl Serialize for FeedPosition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FeedPosition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One change of one run, as the feed delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRecord {
    /// Where it sits in the account's feed; a reader that has handled this
    /// record continues after it.
    pub position: FeedPosition,
    /// The run's account, project and target group.
    pub scope: Scope,
    /// What changed.
    pub change: ChangeRecord,
}

impl FeedRecord {
    /// The address of the run that changed.
    pub fn run_key(&self) -> RunKey {
        self.scope.run(self.change.run_id)
    }

    /// The run that changed.
    pub fn run_id(&self) -> FieldingRunId {
        self.change.run_id
    }

    /// The moments after this change at which the run's *effective* status
    /// changes by the clock alone, with no new version and so no new
    /// record: a `scheduled` run turns `live` at its start, and any run
    /// not yet `completed` turns `completed` at its end. Only moments
    /// after [`ChangeRecord::changed_at`] are listed, earliest first; the
    /// next record of the run (if one comes) replaces them.
    ///
    /// A consumer that needs to act on those moments (a dashboard showing
    /// a run going live) sets a timer for each, and cancels them when a
    /// later version of the run arrives. See `docs/feed.md`, "Time".
    ///
    /// ```
    /// use fielding_core::{Action, ChangeRecord, FeedPosition, FeedRecord, Scope, Status, Timestamp};
    /// # fn demo(record: FeedRecord) {
    /// for (at, status) in record.clock_moments() {
    ///     println!("{} becomes {status} at {at}", record.run_id());
    /// }
    /// # }
    /// ```
    pub fn clock_moments(&self) -> Vec<(Timestamp, Status)> {
        let change = &self.change;
        let mut moments = Vec::with_capacity(2);
        if change.status_to == Status::Completed {
            return moments;
        }
        if change.status_to == Status::Scheduled
            && change.start_to > change.changed_at
            && change.start_to < change.end_to
        {
            moments.push((change.start_to, Status::Live));
        }
        if change.end_to > change.changed_at {
            moments.push((change.end_to, Status::Completed));
        }
        moments
    }
}

/// One page of an account's feed, as [`crate::FieldingStore::feed`]
/// answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// Records after the reader's cursor, in feed order, at most the
    /// asked limit.
    pub records: Vec<FeedRecord>,
    /// Where the reader continues: every record of the account that sorts
    /// after the reader's cursor and at or before `next` is in `records`,
    /// and any record committed later sorts after `next`. At least the
    /// position of the last record; past it when the store knows that
    /// nothing can appear in between (a bookmark, so that quiet accounts'
    /// cursors move too).
    pub next: FeedPosition,
    /// `true` when more records are there to read right now.
    pub has_more: bool,
}

/// The name a checkpointed consumer saves its position under: 1 to 100
/// characters of `A-Z a-z 0-9 . _ -`.
///
/// ```
/// use fielding_core::ConsumerName;
/// assert_eq!(ConsumerName::parse("quota-service")?.as_str(), "quota-service");
/// assert!(ConsumerName::parse("").is_err());
/// assert!(ConsumerName::parse("no spaces").is_err());
/// # Ok::<(), fielding_core::InvalidId>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConsumerName(String);

impl ConsumerName {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 100;

    /// Checks and wraps `name`.
    pub fn parse(name: &str) -> Result<Self, InvalidId> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > Self::MAX_LEN || !name.chars().all(allowed) {
            return Err(InvalidId::new(
                "consumer",
                "must be 1 to 100 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
            ));
        }
        Ok(ConsumerName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ConsumerName {
    type Error = InvalidId;

    fn try_from(name: String) -> Result<Self, InvalidId> {
        ConsumerName::parse(&name)
    }
}

impl From<ConsumerName> for String {
    fn from(name: ConsumerName) -> String {
        name.0
    }
}

/// Wakes the watchers of an account when it has new records: stores call
/// [`notify`](Self::notify) after a write commits (memory, SQLite) or when
/// another instance says so (PostgreSQL `LISTEN`), and
/// [`crate::FieldingService::watch`] and long polls wait on a
/// [`ChangeSubscription`].
///
/// A wake-up is a hint, never the data: a watcher always reads the store
/// afterwards, and also reads now and then without one (a missed wake-up
/// costs delay, never a record). Notifying an account nobody watches costs
/// one hash lookup; entries go away with their last subscriber.
///
/// ```
/// use fielding_core::{AccountId, ChangeNotifier};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let notifier = ChangeNotifier::default();
/// let account = AccountId::new(7).unwrap();
/// let mut subscription = notifier.subscribe(account);
/// notifier.notify(account);
/// subscription.changed().await; // returns at once: a change came after subscribing
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChangeNotifier {
    accounts: Arc<Mutex<HashMap<AccountId, watch::Sender<u64>>>>,
    /// Live subscriptions: while there are none, a notify is one atomic
    /// load (every write notifies; most stores have no watcher).
    subscriptions: Arc<AtomicUsize>,
    /// Whether wake-ups come for every writer's commits (not only this
    /// process's): then waiting readers poll only as a safety net.
    sees_every_writer: Arc<AtomicBool>,
}

impl ChangeNotifier {
    /// Tells the watchers of `account` (in this process) to read again.
    // Inline: every write of a store calls it, and with nobody watching it
    // is one atomic load; the wake-up itself stays out of line.
    #[inline]
    pub fn notify(&self, account: AccountId) {
        if self.subscriptions.load(Ordering::Acquire) == 0 {
            return;
        }
        self.wake(account);
    }

    /// [`notify`](Self::notify)'s wake-up, when someone watches.
    fn wake(&self, account: AccountId) {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = accounts.get(&account) {
            if sender.receiver_count() == 0 {
                accounts.remove(&account);
            } else {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Tells every watcher in this process to read again (after a lost
    /// connection to the source of wake-ups, for instance).
    pub fn notify_all(&self) {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        accounts.retain(|_, sender| sender.receiver_count() > 0);
        for sender in accounts.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A subscription to `account`'s wake-ups, from now on.
    pub fn subscribe(&self, account: AccountId) -> ChangeSubscription {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = accounts.entry(account).or_insert_with(|| watch::channel(0).0);
        let mut receiver = sender.subscribe();
        receiver.mark_unchanged();
        self.subscriptions.fetch_add(1, Ordering::AcqRel);
        ChangeSubscription {
            receiver,
            account,
            notifier: self.clone(),
        }
    }

    /// Says whether this notifier is woken for the commits of every writer
    /// of the store (the memory store: one process; PostgreSQL: while its
    /// `LISTEN` connection is up) or only for this process's (SQLite,
    /// whose other processes are seen by polling). Waiting readers poll
    /// often only when it is not ([`crate::FieldingService::feed_poll_interval`]).
    pub fn set_sees_every_writer(&self, yes: bool) {
        self.sees_every_writer.store(yes, Ordering::Release);
    }

    /// See [`set_sees_every_writer`](Self::set_sees_every_writer); `false`
    /// until said otherwise.
    pub fn sees_every_writer(&self) -> bool {
        self.sees_every_writer.load(Ordering::Acquire)
    }

    /// How many accounts have a subscriber (for tests and metrics).
    pub fn watched_accounts(&self) -> usize {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One watcher's subscription to an account's wake-ups.
#[derive(Debug)]
pub struct ChangeSubscription {
    receiver: watch::Receiver<u64>,
    account: AccountId,
    notifier: ChangeNotifier,
}

impl Drop for ChangeSubscription {
    /// The last subscription of an account takes the account's entry
    /// with it, so watching many accounts one after the other (a client
    /// long-polling account after account) leaves nothing behind.
    fn drop(&mut self) {
        let notifier = &self.notifier;
        notifier.subscriptions.fetch_sub(1, Ordering::AcqRel);
        let mut accounts = notifier.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        // This subscription's receiver is still alive here: 1 means ours.
        if accounts.get(&self.account).is_some_and(|s| s.receiver_count() <= 1) {
            accounts.remove(&self.account);
        }
    }
}

impl ChangeSubscription {
    /// Returns once a wake-up has come since the last call (or since
    /// subscribing); at once if one already has. Pending forever if the
    /// notifier is gone, so always race it against a timer.
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        for (major, minor) in [(0, 0), (1, 0), (u64::MAX, u64::MAX), (1843, 2)] {
            let p = FeedPosition::new(major, minor);
            assert_eq!(p.to_string().parse::<FeedPosition>().ok(), Some(p));
        }
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1",
            "01.1",
            "1.01",
            "-1.0",
            "+1.0",
            "1.0.0",
            " 1.0",
            "1.0 ",
            "a.b",
            "18446744073709551616.0",
            "1e3.0",
        ] {
            let err = bad.parse::<FeedPosition>().expect_err(bad);
            assert_eq!(err.field(), "after", "{bad}");
        }
        let long = "1".repeat(MAX_CURSOR_LEN + 1);
        assert!(FeedPosition::parse_cursor(&long, "after").is_err());
    }

    #[test]
    fn positions_sort_by_major_then_minor() {
        let mut positions = vec![
            FeedPosition::new(2, 0),
            FeedPosition::new(1, 9),
            FeedPosition::new(1, 10),
        ];
        positions.sort();
        assert_eq!(
            positions,
            vec![
                FeedPosition::new(1, 9),
                FeedPosition::new(1, 10),
                FeedPosition::new(2, 0)
            ]
        );
        assert!(FeedPosition::ZERO < FeedPosition::new(0, 1));
    }

    #[test]
    fn serde_uses_the_cursor_text() {
        let json = serde_json::to_string(&FeedPosition::new(5, 1)).unwrap();
        assert_eq!(json, "\"5.1\"");
        let back: FeedPosition = serde_json::from_str(&json).unwrap();
        assert_eq!(back, FeedPosition::new(5, 1));
        assert!(serde_json::from_str::<FeedPosition>("\"5\"").is_err());
    }

    #[test]
    fn consumer_names_are_checked() {
        assert!(ConsumerName::parse(&"a".repeat(100)).is_ok());
        assert!(ConsumerName::parse(&"a".repeat(101)).is_err());
        for bad in ["", "a b", "a/b", "ä", "a\n"] {
            assert!(ConsumerName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_wake_up_reaches_only_the_accounts_subscribers_and_is_never_lost() {
        let notifier = ChangeNotifier::default();
        let (a, b) = (AccountId::new(1).unwrap(), AccountId::new(2).unwrap());
        let mut on_a = notifier.subscribe(a);
        let mut on_b = notifier.subscribe(b);
        notifier.notify(a);
        // Sent before the wait started: still seen.
        tokio::time::timeout(std::time::Duration::from_secs(1), on_a.changed())
            .await
            .expect("a's wake-up");
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(20), on_b.changed()).await;
        assert!(quiet.is_err(), "b was not notified");
        notifier.notify_all();
        tokio::time::timeout(std::time::Duration::from_secs(1), on_b.changed())
            .await
            .expect("notify_all reaches b");
        assert_eq!(notifier.watched_accounts(), 2);
        drop(on_a);
        notifier.notify(a);
        assert_eq!(
            notifier.watched_accounts(),
            1,
            "a's entry went with its last subscriber"
        );
    }
}
