//! Every change record of every run, in one append-only log, which is also
//! the change feed.
//!
//! Why not a `Vec` per run: a million runs would mean a million small heap
//! allocations (each rounded up to four records once it grows), copies as
//! each one doubles, and writes scattered over cold memory on the hot path.
//! One log of fixed-size chunks is written sequentially, never moves a
//! record, and wastes at most one partly filled chunk. Each record links to
//! the previous record of the same run, so a run's history is a walk back
//! from its latest record: reading a history (tests, audits) pays, writing
//! (every command) does not.
//!
//! The feed: a record's index in the log is its feed position (`index + 1`,
//! minor 0). Records are appended under the store's one lock, so a record
//! is visible from the moment it has its number, and numbers are handed
//! out in order: nothing can ever appear behind a reader. Each account
//! keeps the indexes of its records, in order, for reading its feed
//! without scanning the others'. Pruning removes a prefix of the log (the
//! oldest records, up to the first one that is not old enough), so indexes
//! stay dense and the first kept index says what is gone.

use std::collections::VecDeque;

use fielding_core::{AccountId, ChangeRecord, FeedPosition, FeedRecord, Scope, Timestamp};

type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

/// Records per chunk: large enough that chunk allocation is rare, small
/// enough that an idle store does not reserve much.
const CHUNK: usize = 4096;

/// An account's place in [`ChangeLog`]'s per-account indexes: found by
/// hashing once, when a run is created, and kept with the run, so a write
/// appends to its account's index without hashing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountSlot(usize);

/// The position of a record in the log, counted from the first record the
/// log ever held (pruning never renumbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LogIndex(u64);

impl LogIndex {
    fn position(self) -> FeedPosition {
        FeedPosition::new(self.0 + 1, 0)
    }
}

#[derive(Debug)]
struct Slot {
    record: ChangeRecord,
    /// The run's account. The rest of the run's scope is the run's (the
    /// store's caller looks it up): not copied into every record.
    account: AccountSlot,
    previous: Option<LogIndex>,
}

/// One account's records.
#[derive(Debug)]
struct AccountLog {
    account: AccountId,
    /// Its records, oldest first (pruned ones dropped from the front as
    /// the log's prefix goes).
    indexes: VecDeque<LogIndex>,
}

#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    chunks: VecDeque<Vec<Slot>>,
    /// The index of the first slot of `chunks[0]`.
    first_chunk_start: u64,
    /// Indexes below this are pruned (or were cleared away).
    kept_from: u64,
    /// The index the next record gets.
    next: u64,
    /// Each account's records, by [`AccountSlot`].
    accounts: Vec<AccountLog>,
    /// Each account's slot.
    slots: FastMap<AccountId, AccountSlot>,
    /// Each account's last pruned position.
    horizons: FastMap<AccountId, FeedPosition>,
}

/// What [`ChangeLog::feed`] found.
pub(crate) enum FeedRead {
    Page(fielding_core::FeedPage),
    Expired {
        pruned_through: FeedPosition,
    },
    /// A broken promise between the log and the store (a bug).
    Broken(String),
}

impl ChangeLog {
    /// The slot of `account`'s index, made on first use.
    pub(crate) fn account_slot(&mut self, account: AccountId) -> AccountSlot {
        let next = AccountSlot(self.accounts.len());
        let slot = *self.slots.entry(account).or_insert(next);
        if slot == next {
            self.accounts.push(AccountLog {
                account,
                indexes: VecDeque::new(),
            });
        }
        slot
    }

    /// Appends `record` of a run whose account has `slot`, linked to the
    /// run's `previous` record.
    /// Lent, not moved: the record is copied once, into its slot.
    pub(crate) fn push(&mut self, record: &ChangeRecord, slot: AccountSlot, previous: Option<LogIndex>) -> LogIndex {
        let index = LogIndex(self.next);
        // One look at the last chunk: it takes the record while it has
        // room (its capacity is `CHUNK`, so the push never reallocates);
        // a full or missing one is followed by a new chunk. The slot is
        // built in each arm, not before: a value made first and moved in
        // is copied.
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(Slot {
                record: record.clone(),
                account: slot,
                previous,
            }),
            _ => self.push_chunk(Slot {
                record: record.clone(),
                account: slot,
                previous,
            }),
        }
        self.next += 1;
        if let Some(account) = self.accounts.get_mut(slot.0) {
            account.indexes.push_back(index);
        }
        index
    }

    /// A new last chunk, holding `entry` (at index `self.next`).
    #[cold]
    fn push_chunk(&mut self, entry: Slot) {
        if self.chunks.is_empty() {
            self.first_chunk_start = self.next;
        }
        let mut chunk = Vec::with_capacity(CHUNK);
        chunk.push(entry);
        self.chunks.push_back(chunk);
    }

    /// Appends a run's records in order; returns the index of the last one.
    pub(crate) fn push_all(&mut self, records: Vec<ChangeRecord>, slot: AccountSlot) -> Option<LogIndex> {
        records
            .into_iter()
            .fold(None, |previous, record| Some(self.push(&record, slot, previous)))
    }

    fn slot(&self, index: LogIndex) -> Option<&Slot> {
        if index.0 < self.kept_from {
            return None;
        }
        let offset = usize::try_from(index.0.checked_sub(self.first_chunk_start)?).ok()?;
        self.chunks.get(offset / CHUNK)?.get(offset % CHUNK)
    }

    /// The history ending at `last`, oldest first (the kept part).
    pub(crate) fn history(&self, last: Option<LogIndex>) -> Vec<ChangeRecord> {
        let mut out = Vec::new();
        let mut next = last;
        while let Some(slot) = next.and_then(|i| self.slot(i)) {
            out.push(slot.record.clone());
            next = slot.previous;
        }
        out.reverse();
        out
    }

    /// Up to `limit` records of `account` after `after` (see
    /// `FieldingStore::feed`); `scope_of` gives each record's run's scope.
    pub(crate) fn feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
        scope_of: impl Fn(&ChangeRecord) -> Option<Scope>,
    ) -> FeedRead {
        let horizon = self.horizons.get(&account).copied();
        let head = FeedPosition::new(self.next, 0);
        if let Some(after) = after {
            if let Some(pruned_through) = horizon.filter(|h| after < *h) {
                return FeedRead::Expired { pruned_through };
            }
            // No position past the head was ever handed out: the cursor is
            // from another store (a restarted process's), and reading on
            // from it would skip everything written until the head passed
            // it. The reader must start over, as after pruning.
            if after > head {
                return FeedRead::Expired { pruned_through: head };
            }
        }
        let from = after.or(horizon).unwrap_or(FeedPosition::ZERO);
        let indexes = self
            .slots
            .get(&account)
            .and_then(|slot| self.accounts.get(slot.0))
            .map(|a| &a.indexes);
        let start = indexes.map_or(0, |ix| ix.partition_point(|i| i.position() <= from));
        let mut records = Vec::with_capacity(limit.min(indexes.map_or(0, VecDeque::len)));
        let mut has_more = false;
        for index in indexes.into_iter().flat_map(|ix| ix.range(start..)) {
            if records.len() == limit {
                has_more = true;
                break;
            }
            if let Some(slot) = self.slot(*index) {
                let Some(scope) = scope_of(&slot.record) else {
                    return FeedRead::Broken(format!(
                        "the feed holds a record of run {} the store does not have",
                        slot.record.run_id
                    ));
                };
                records.push(FeedRecord {
                    position: index.position(),
                    scope,
                    change: slot.record.clone(),
                });
            }
        }
        let last = records.last().map(|r| r.position);
        // Everything committed is visible under the lock, so when the page
        // is not full the reader may move on to the log's head (the last
        // position handed out): nothing of this account can appear at or
        // before it any more.
        let next = match last {
            Some(last) if has_more => last,
            _ => from.max(head),
        };
        FeedRead::Page(fielding_core::FeedPage {
            records,
            next,
            has_more,
        })
    }

    /// Removes up to `limit` of the oldest records, as long as each was
    /// made before `cutoff` (stopping at the first that was not: the log's
    /// prefix goes, so indexes stay dense). Answers how many went.
    pub(crate) fn prune(&mut self, cutoff: Timestamp, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            let index = LogIndex(self.kept_from);
            let Some(slot) = self.slot(index) else { break };
            if slot.record.changed_at >= cutoff {
                break;
            }
            let account_slot = slot.account;
            self.kept_from += 1;
            removed += 1;
            if let Some(account) = self.accounts.get_mut(account_slot.0) {
                self.horizons.insert(account.account, index.position());
                if account.indexes.front() == Some(&index) {
                    account.indexes.pop_front();
                }
            }
            if self.kept_from - self.first_chunk_start >= CHUNK as u64 {
                self.chunks.pop_front();
                self.first_chunk_start += CHUNK as u64;
            }
        }
        removed
    }

    /// Forgets every record (numbers are never reused: positions go on
    /// from where they were). Like pruning everything: a reader with
    /// unread records gets an expired cursor, not an empty page.
    pub(crate) fn clear(&mut self) {
        let head = FeedPosition::new(self.next, 0);
        for account in &self.accounts {
            if !account.indexes.is_empty() {
                self.horizons.insert(account.account, head);
            }
        }
        self.chunks.clear();
        self.kept_from = self.next;
        self.first_chunk_start = self.next;
        // The runs that held slots are cleared with the log.
        self.accounts.clear();
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_testkit::fixtures;

    fn record(run: &fielding_core::FieldingRun, version: u64) -> ChangeRecord {
        ChangeRecord {
            version: fielding_core::Version::new(version).unwrap(),
            ..ChangeRecord::created(run, fielding_core::Action::UpdateDates)
        }
    }

    #[test]
    fn interleaved_histories_stay_apart_across_chunk_boundaries() {
        let (a, b) = (fixtures::run().build(), fixtures::run().build());
        let mut log = ChangeLog::default();
        let (mut last_a, mut last_b) = (None, None);
        let slot = log.account_slot(a.account_id);
        for version in 1..=(CHUNK as u64 + 10) {
            last_a = Some(log.push(&record(&a, version), slot, last_a));
            if version % 3 == 0 {
                let slot_b = log.account_slot(b.account_id);
                last_b = Some(log.push(&record(&b, version / 3), slot_b, last_b));
            }
        }
        let history_a = log.history(last_a);
        assert_eq!(history_a.len(), CHUNK + 10);
        assert!(history_a
            .iter()
            .enumerate()
            .all(|(i, r)| r.run_id == a.id && r.version.get() == i as u64 + 1));
        let history_b = log.history(last_b);
        assert_eq!(history_b.len(), (CHUNK + 10) / 3);
        assert!(history_b.iter().all(|r| r.run_id == b.id));
        assert!(log.history(None).is_empty());
    }

    fn page(log: &ChangeLog, account: AccountId, after: Option<FeedPosition>, limit: usize) -> fielding_core::FeedPage {
        match log.feed(account, after, limit, |_| {
            Some(Scope::new(account, fixtures::project_id(), fixtures::target_group_id()))
        }) {
            FeedRead::Page(page) => page,
            FeedRead::Expired { pruned_through } => panic!("expired at {pruned_through}"),
            FeedRead::Broken(why) => panic!("{why}"),
        }
    }

    #[test]
    fn the_feed_pages_through_one_account_and_prunes_a_prefix_across_chunks() {
        let a = fixtures::run().build();
        let other = fixtures::run().with_scope(fixtures::other_account(a.scope())).build();
        let mut log = ChangeLog::default();
        let mut last = None;
        let total = CHUNK as u64 * 2 + 7;
        for version in 1..=total {
            let (slot_a, slot_other) = (log.account_slot(a.account_id), log.account_slot(other.account_id));
            last = Some(log.push(&record(&a, version), slot_a, last));
            log.push(&record(&other, version), slot_other, None);
        }
        let account = a.account_id;
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = page(&log, account, cursor, 1000);
            assert!(
                page.records.iter().all(|r| r.change.run_id == a.id),
                "only account a's records"
            );
            seen.extend(page.records.iter().map(|r| r.change.version.get()));
            cursor = Some(page.next);
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
        assert_eq!(
            cursor,
            Some(FeedPosition::new(total * 2, 0)),
            "the bookmark is the log's head"
        );

        // Prune the oldest CHUNK + 1 records of the log (both accounts').
        let cutoff = a.last_changed_at.checked_add(chrono::TimeDelta::days(1)).unwrap();
        assert_eq!(log.prune(cutoff, CHUNK + 1), CHUNK + 1);
        assert_eq!(log.chunks.len(), 4, "a fully pruned chunk is freed (5 before)");
        let kept = log.history(last);
        assert_eq!(kept.first().map(|r| r.version.get()), Some(CHUNK as u64 / 2 + 2));
        assert!(matches!(
            log.feed(account, Some(FeedPosition::new(1, 0)), 10, |_| None),
            FeedRead::Expired { .. }
        ));
        let from_start = page(&log, account, None, 1);
        assert_eq!(from_start.records[0].change.version.get(), CHUNK as u64 / 2 + 2);
        assert_eq!(log.prune(cutoff, usize::MAX), (total * 2) as usize - CHUNK - 1);
        assert!(page(&log, account, None, 10).records.is_empty());
        assert!(
            matches!(
                log.feed(account, Some(FeedPosition::new(total * 2 + 1, 0)), 10, |_| None),
                FeedRead::Expired { .. }
            ),
            "a cursor past the head is from another store"
        );
        let slot = log.account_slot(a.account_id);
        let unread = log.push(&record(&a, 1), slot, None);
        log.clear();
        assert!(
            matches!(
                log.feed(account, Some(FeedPosition::new(total * 2, 0)), 10, |_| None),
                FeedRead::Expired { .. }
            ),
            "clearing unread records expires the cursors before them"
        );
        assert!(unread.position() > FeedPosition::new(total * 2, 0));
        let slot = log.account_slot(a.account_id);
        let fresh = log.push(&record(&a, 1), slot, None);
        assert_eq!(
            fresh.position(),
            FeedPosition::new(total * 2 + 2, 0),
            "numbers are never reused"
        );
    }
}
