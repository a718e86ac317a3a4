//! The planted store's change feed: every record with its position (a
//! store-wide counter taken under the store's lock, so numbering order is
//! commit order), each account's pruned horizon, the checkpoints, and the
//! wake-ups; each with the feed bugs it can carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fielding_core::{
    AccountId, ChangeNotifier, ChangeRecord, ConsumerName, FeedPage, FeedPosition, FeedRecord, Scope, StoreError,
    Timestamp,
};

use crate::store::Bug;

/// How many turns of a millisecond a record of [`Bug::OutboxVisibility`]
/// waits, at most, for a reader to read past its position before it
/// becomes readable: long enough for a reader on a loaded machine to get a
/// read in, short enough that a record nobody reads past is not held back
/// for long.
const OUTBOX_TURNS: usize = 2000;

/// After how many turns without a new record anywhere a held record of
/// [`Bug::OutboxVisibility`] stops waiting: no reader can read past it
/// then, as nothing comes after it (a lone writer, a sequential test).
/// Long enough that a racing writer stalled by a loaded machine writes
/// again before it (a shorter quiet let the bug slip through a CI run).
const OUTBOX_QUIET_TURNS: usize = 200;

/// One record of the feed.
#[derive(Debug, Clone)]
struct Entry {
    position: u64,
    scope: Scope,
    record: ChangeRecord,
    /// Readable ([`Bug::OutboxVisibility`] holds some back).
    visible: bool,
}

#[derive(Debug, Default)]
struct Log {
    /// The last position given out.
    counter: u64,
    /// Every kept record, in position order.
    entries: Vec<Entry>,
    /// The highest pruned position of each account.
    horizons: HashMap<AccountId, u64>,
    /// Checkpoints by account (`None` under [`Bug::CheckpointWrongAccount`])
    /// and consumer.
    checkpoints: HashMap<(Option<AccountId>, ConsumerName), FeedPosition>,
}

/// The feed of the planted store.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    log: Mutex<Log>,
    notifier: ChangeNotifier,
    /// Whether anyone has read the feed ([`Bug::OutboxVisibility`] holds
    /// records back only while someone follows it).
    followed: AtomicBool,
    /// The highest `next` a read has answered.
    read_up_to: AtomicU64,
}

fn position(n: u64) -> FeedPosition {
    FeedPosition::new(n, 0)
}

impl Feed {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn notifier(&self) -> ChangeNotifier {
        self.notifier.clone()
    }

    /// Appends `record` of a run of `scope` (called under the store's lock,
    /// with the write; `late` for a write that commits late under
    /// [`Bug::OutboxVisibility`]): its position, and whether it is held
    /// back.
    pub(crate) fn append(&self, bug: Bug, scope: Scope, record: &ChangeRecord, late: bool) -> (u64, bool) {
        let mut log = self.log();
        log.counter += 1;
        let position = log.counter;
        // The outbox bug: the number is taken now, but (for every other
        // record written by compare-and-swap while a reader follows) the
        // record becomes readable only later, in `commit_late`.
        let held =
            late && bug == Bug::OutboxVisibility && position.is_multiple_of(2) && self.followed.load(Ordering::SeqCst);
        log.entries.push(Entry {
            position,
            scope,
            record: record.clone(),
            visible: !held,
        });
        drop(log);
        if !held && bug != Bug::SilentNotifier {
            self.notifier.notify(scope.account_id);
        }
        (position, held)
    }

    /// For [`Bug::OutboxVisibility`]: the "commit" of a record appended
    /// held back, once a reader has read past its position (or after
    /// [`OUTBOX_TURNS`], or [`OUTBOX_QUIET_TURNS`] without a new record).
    pub(crate) async fn commit_late(&self, position: u64) {
        let mut counter = self.log().counter;
        let mut quiet = 0;
        for _ in 0..OUTBOX_TURNS {
            if self.read_up_to.load(Ordering::SeqCst) > position || quiet >= OUTBOX_QUIET_TURNS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let now = self.log().counter;
            quiet = if now == counter { quiet + 1 } else { 0 };
            counter = now;
        }
        let mut log = self.log();
        let mut account = None;
        for entry in log.entries.iter_mut().filter(|e| e.position == position) {
            entry.visible = true;
            account = Some(entry.scope.account_id);
        }
        drop(log);
        if let Some(account) = account {
            self.notifier.notify(account);
        }
    }

    /// `FieldingStore::feed`.
    pub(crate) fn read(
        &self,
        bug: Bug,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, StoreError> {
        self.followed.store(true, Ordering::SeqCst);
        let log = self.log();
        let horizon = log.horizons.get(&account).copied().map(position);
        if let (Some(after), Some(horizon)) = (after, horizon) {
            if horizon > after && bug != Bug::FeedIgnoresHorizon {
                return Err(StoreError::FeedExpired {
                    account,
                    after,
                    pruned_through: horizon,
                });
            }
        }
        if let Some(after) = after.filter(|a| *a > position(log.counter)) {
            if bug != Bug::FeedAcceptsForeignCursor {
                return Err(StoreError::FeedExpired {
                    account,
                    after,
                    pruned_through: position(log.counter),
                });
            }
        }
        let start = match after {
            Some(after) => after,
            None if bug == Bug::NoneReadsBelowHorizon => FeedPosition::ZERO,
            None => horizon.unwrap_or(FeedPosition::ZERO),
        };
        let after_start = |p: FeedPosition| {
            if bug == Bug::InclusiveCursor && after.is_some() {
                p >= start
            } else {
                p > start
            }
        };
        let fetch = if bug == Bug::HasMoreByFullPage {
            limit
        } else {
            limit + 1
        };
        let mut records: Vec<FeedRecord> = log
            .entries
            .iter()
            .filter(|e| e.visible && (bug == Bug::FeedIgnoresAccount || e.scope.account_id == account))
            .filter(|e| after_start(position(e.position)))
            .take(fetch)
            .map(|e| FeedRecord {
                position: position(e.position),
                scope: e.scope,
                change: e.record.clone(),
            })
            .collect();
        let has_more = if bug == Bug::HasMoreByFullPage {
            records.len() == limit
        } else {
            records.len() > limit
        };
        records.truncate(limit);
        // Nothing numbered later can be numbered below the counter: every
        // number taken is committed under the store's lock.
        let bookmark = start.max(position(log.counter));
        let next = match records.last() {
            Some(last) if has_more && bug != Bug::NextJumpsAhead => last.position,
            _ => bookmark,
        };
        drop(log);
        self.read_up_to.fetch_max(next.major(), Ordering::SeqCst);
        Ok(FeedPage {
            records,
            next,
            has_more,
        })
    }

    /// `FieldingStore::prune_changes`: removes up to `limit` records made
    /// before `changed_before`, oldest position first; `forget` removes
    /// each from its run's history (called under the store's lock).
    pub(crate) fn prune(
        &self,
        bug: Bug,
        changed_before: Timestamp,
        limit: usize,
        mut forget: impl FnMut(&ChangeRecord),
    ) -> usize {
        let limit = if bug == Bug::PruneIgnoresLimit {
            usize::MAX
        } else {
            limit
        };
        let mut guard = self.log();
        let log = &mut *guard;
        let doomed: Vec<u64> = log
            .entries
            .iter()
            .filter(|e| e.record.changed_at < changed_before)
            .take(limit)
            .map(|e| e.position)
            .collect();
        for entry in log.entries.iter().filter(|e| doomed.contains(&e.position)) {
            forget(&entry.record);
            let horizon = log.horizons.entry(entry.scope.account_id).or_default();
            *horizon = (*horizon).max(entry.position);
        }
        log.entries.retain(|e| !doomed.contains(&e.position));
        doomed.len()
    }

    fn checkpoint_key(bug: Bug, account: AccountId, consumer: &ConsumerName) -> (Option<AccountId>, ConsumerName) {
        let account = (bug != Bug::CheckpointWrongAccount).then_some(account);
        (account, consumer.clone())
    }

    pub(crate) fn load_checkpoint(
        &self,
        bug: Bug,
        account: AccountId,
        consumer: &ConsumerName,
    ) -> Option<FeedPosition> {
        self.log()
            .checkpoints
            .get(&Self::checkpoint_key(bug, account, consumer))
            .copied()
    }

    pub(crate) fn save_checkpoint(&self, bug: Bug, account: AccountId, consumer: &ConsumerName, at: FeedPosition) {
        self.log()
            .checkpoints
            .insert(Self::checkpoint_key(bug, account, consumer), at);
    }
}
