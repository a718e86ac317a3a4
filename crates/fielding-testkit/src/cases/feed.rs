//! The change feed read back: every write appears once, in order, with its
//! scope and record; pages of any size read the same records; no account
//! sees another's records. And the [`Follower`] every feed case reads with.
//!
//! A store may hold a committed record back for a while before it is
//! readable (PostgreSQL does, until every older transaction has ended), so
//! the cases never expect a record in the very next read: they read on
//! until it comes, for up to [`Capabilities::max_feed_lag`].

use std::sync::Arc;
use std::time::Duration;

use fielding_core::{
    AccountId, BulkAction, BulkJobStatus, ChangeRecord, FeedPage, FeedPosition, FeedRecord, FieldingRun, FieldingStore,
    ItemUpdate, Scope, Status, StoreError, Update, UpdateOutcome, UserId, Version,
};
use tokio::time::Instant;

use crate::cases::bulk::{bulk_job, claim_job, create, finish};
use crate::failure::Case;
use crate::sample::{self, version};
use crate::{Capabilities, CaseFailure};

/// The pause between reads that found nothing new.
pub(crate) const IDLE_READ: Duration = Duration::from_millis(2);

pub(crate) const PAGE: &str =
    "a feed page holds at most `limit` records, in strictly increasing positions, all after the cursor; `next` is at or after the page's last record and never before the cursor, so a reader's cursor never goes back";

pub(crate) const HAS_MORE: &str =
    "has_more is exact: true only when more records are readable after the page (the next read from `next` returns at least one), false when the reader has reached the end of what is readable";

pub(crate) const ISOLATION: &str =
    "an account's feed holds only that account's records: never a record of another account, whatever projects and target group ids they share";

const EVERY_WRITE: &str =
    "every successful write (insert, compare_and_swap, update, apply_bulk_items) appears in its account's feed exactly once, after every record written before it, with the run's scope and exactly the change record written; a refused write appears nowhere";

const SAME_SEQUENCE: &str =
    "reading the feed in pages of any size, from the start or from any record's position, returns the same records in the same order as one big page, each once, the cursor exclusive; after = None and after = Some(0.0) read the same records of an account with nothing pruned";

/// Reads an account's feed the way a client does: from a cursor, page by
/// page, always continuing from the page's `next`, checking each page
/// against the promises every page keeps ([`PAGE`], [`HAS_MORE`],
/// [`ISOLATION`]).
#[derive(Debug)]
pub(crate) struct Follower {
    pub(crate) account: AccountId,
    pub(crate) cursor: Option<FeedPosition>,
    pub(crate) limit: usize,
    /// Every record read, in the order read.
    pub(crate) seen: Vec<FeedRecord>,
    /// Whether a retryable backend error is "nothing happened" (reads that
    /// race writers, when the store declared busy answers).
    tolerate_busy: bool,
    /// How long to wait for a record that has not come yet.
    lag: Duration,
    /// The last page said more records were readable.
    owed: bool,
}

impl Follower {
    /// A reader of `account` from `after`, `limit` records a page, waiting
    /// for records as long as `caps` say.
    pub(crate) fn new(caps: Capabilities, account: AccountId, after: Option<FeedPosition>, limit: usize) -> Self {
        Self {
            account,
            cursor: after,
            limit,
            seen: Vec::new(),
            tolerate_busy: false,
            lag: caps.max_feed_lag(),
            owed: false,
        }
    }

    /// How long it waits for a record that has not come yet.
    pub(crate) fn lag(&self) -> Duration {
        self.lag
    }

    /// Counts a retryable backend error as a read that found nothing.
    pub(crate) fn tolerating_busy(mut self, tolerate: bool) -> Self {
        self.tolerate_busy = tolerate;
        self
    }

    fn call(&self) -> String {
        let after = self.cursor.map_or("None".to_owned(), |p| format!("Some({p})"));
        format!("feed({}, {after}, {})", self.account, self.limit)
    }

    /// One read from the cursor: checks the page, keeps its records and
    /// moves the cursor to its `next`. `None` after a tolerated busy answer.
    pub(crate) async fn read<S: FieldingStore + ?Sized>(
        &mut self,
        case: Case,
        store: &S,
    ) -> Result<Option<FeedPage>, CaseFailure> {
        let call = self.call();
        let page = match store.feed(self.account, self.cursor, self.limit).await {
            Ok(page) => page,
            Err(err) if self.tolerate_busy && err.is_retryable() => return Ok(None),
            Err(err) => return Err(case.error(&call, &err)),
        };
        check_page(case, &call, self.account, self.cursor, self.limit, self.owed, &page)?;
        self.cursor = Some(page.next);
        self.owed = page.has_more;
        self.seen.extend(page.records.iter().cloned());
        Ok(Some(page))
    }

    /// Reads on until `count` records have been read in all; fails with
    /// `promise` if they have not within the lag allowed.
    pub(crate) async fn until<S: FieldingStore + ?Sized>(
        &mut self,
        case: Case,
        store: &S,
        count: usize,
        promise: &'static str,
        what: impl Fn() -> String,
    ) -> Result<(), CaseFailure> {
        let deadline = Instant::now() + self.lag;
        while self.seen.len() < count {
            if Instant::now() > deadline {
                return Err(case.fail(
                    promise,
                    format!(
                        "{}: after {:?} the feed of account {} had given {} records, expected {count}; read: {}",
                        what(),
                        self.lag,
                        self.account,
                        self.seen.len(),
                        describe(&self.seen)
                    ),
                ));
            }
            let found = self.read(case, store).await?.is_some_and(|p| !p.records.is_empty());
            if !found {
                tokio::time::sleep(IDLE_READ).await;
            }
        }
        Ok(())
    }

    /// Reads until a page says nothing more is readable now, and answers
    /// the records of those reads.
    pub(crate) async fn drain<S: FieldingStore + ?Sized>(
        &mut self,
        case: Case,
        store: &S,
    ) -> Result<Vec<FeedRecord>, CaseFailure> {
        let start = self.seen.len();
        loop {
            match self.read(case, store).await? {
                Some(page) if !page.has_more => return Ok(self.seen[start..].to_vec()),
                Some(_) => {}
                None => tokio::time::sleep(IDLE_READ).await,
            }
        }
    }
}

/// Checks one page read from `cursor` against the promises every page
/// keeps; `owed` is whether the page before said more was readable.
pub(crate) fn check_page(
    case: Case,
    call: &str,
    account: AccountId,
    cursor: Option<FeedPosition>,
    limit: usize,
    owed: bool,
    page: &FeedPage,
) -> Result<(), CaseFailure> {
    let shown = || format!("{call} answered {}", describe_page(page));
    case.ensure(page.records.len() <= limit, PAGE, || {
        format!("{}: {} records, more than the limit", shown(), page.records.len())
    })?;
    case.ensure(!(page.has_more && page.records.is_empty()), HAS_MORE, || {
        format!("{}: no records, yet has_more", shown())
    })?;
    case.ensure(!owed || !page.records.is_empty(), HAS_MORE, || {
        format!("the page before said has_more, but {}: nothing", shown())
    })?;
    if let Some(stranger) = page.records.iter().find(|r| r.scope.account_id != account) {
        return Err(case.fail(
            ISOLATION,
            format!(
                "{}: a record of {} (run {} version {})",
                shown(),
                stranger.scope,
                stranger.change.run_id,
                stranger.change.version
            ),
        ));
    }
    let mut previous = cursor;
    for record in &page.records {
        case.ensure(previous.is_none_or(|p| record.position > p), PAGE, || {
            format!(
                "{}: record at {} does not sort after {} (the cursor or the record before it)",
                shown(),
                record.position,
                previous.map_or("-".to_owned(), |p| p.to_string())
            )
        })?;
        previous = Some(record.position);
    }
    case.ensure(previous.is_none_or(|p| page.next >= p), PAGE, || {
        format!("{}: next is before the last record or the cursor", shown())
    })
}

/// `(run, version) @ position` of each record, for messages.
pub(crate) fn describe(records: &[FeedRecord]) -> String {
    const SHOWN: usize = 40;
    let mut parts: Vec<String> = records
        .iter()
        .take(SHOWN)
        .map(|r| format!("{}v{}@{}", short(&r.change), r.change.version, r.position))
        .collect();
    if records.len() > SHOWN {
        parts.push(format!("... {} more", records.len() - SHOWN));
    }
    format!("[{}]", parts.join(", "))
}

/// A page for messages: its records, `next` and `has_more`.
pub(crate) fn describe_page(page: &FeedPage) -> String {
    format!(
        "{{ records: {}, next: {}, has_more: {} }}",
        describe(&page.records),
        page.next,
        page.has_more
    )
}

/// The last characters of a record's run id: enough to tell the runs of
/// one case apart in a message.
fn short(change: &ChangeRecord) -> String {
    let id = change.run_id.to_string();
    format!("run..{}:", &id[id.len().saturating_sub(4)..])
}

/// A record as a case expects it: the run's scope and the change.
pub(crate) type Expected = (Scope, ChangeRecord);

/// The records of `seen` as `(scope, change)`, for comparing with what was
/// written.
pub(crate) fn written(seen: &[FeedRecord]) -> Vec<Expected> {
    seen.iter().map(|r| (r.scope, r.change.clone())).collect()
}

/// How `seen` differs from `expected`, if it does.
pub(crate) fn sequence_diff(expected: &[Expected], seen: &[FeedRecord]) -> Option<String> {
    let got = written(seen);
    if got == expected {
        return None;
    }
    let names = |list: &[Expected]| {
        let parts: Vec<String> = list
            .iter()
            .map(|(scope, c)| format!("{}v{} of {}", short(c), c.version, scope))
            .collect();
        format!("[{}]", parts.join(", "))
    };
    let mut out = format!(
        "expected {} records {}, read {} records {}",
        expected.len(),
        names(expected),
        got.len(),
        describe(seen)
    );
    if let Some(i) = (0..expected.len().min(got.len())).find(|&i| expected[i] != got[i]) {
        out.push_str(&format!(
            "; record #{i} differs: wrote {:?}, read {:?}",
            expected[i], got[i]
        ));
    }
    Some(out)
}

/// Inserts a run of `scope` at version 1 in `status`: the run and its
/// record as the feed must show it.
pub(crate) async fn seed<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    scope: Scope,
    status: Status,
) -> Result<(FieldingRun, Expected), CaseFailure> {
    let run = sample::run(scope, Version::INITIAL, status);
    let record = sample::creation(&run);
    case.ok(format!("insert({})", run.key()), store.insert(&run, &record).await)?;
    Ok((run, (scope, record)))
}

/// Compare-and-swaps `run` to its next version: the new run and its record.
pub(crate) async fn bump<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    run: &FieldingRun,
    tag: u64,
) -> Result<(FieldingRun, Expected), CaseFailure> {
    let (next, record) = sample::change(run, tag, UserId::random())
        .ok_or_else(|| case.fail(EVERY_WRITE, format!("{} is at the last version", run.key())))?;
    case.ok(
        format!("compare_and_swap({}, {})", run.version, run.key()),
        store.compare_and_swap(run.version, &next, &record).await,
    )?;
    Ok((next, (run.scope(), record)))
}

/// A follower of one account and every record written to the account so
/// far: what [`feed_lists_every_write_exactly_once_in_commit_order`]
/// checks after each write.
struct Tracker {
    follower: Follower,
    all: Vec<Expected>,
}

impl Tracker {
    /// The follower must now read exactly `expected` after what it has
    /// read (in any order for a batch written by one call, when
    /// `any_order`).
    async fn expect<S: FieldingStore + ?Sized>(
        &mut self,
        case: Case,
        store: &S,
        expected: Vec<Expected>,
        any_order: bool,
        after: &str,
    ) -> Result<(), CaseFailure> {
        let before = self.follower.seen.len();
        self.follower
            .until(case, store, before + expected.len(), EVERY_WRITE, || after.to_owned())
            .await?;
        let new = &self.follower.seen[before..];
        let mut got = written(new);
        let mut want = expected.clone();
        if any_order {
            let key = |(_, c): &Expected| (c.run_id, c.version);
            got.sort_by_key(key);
            want.sort_by_key(key);
        }
        case.ensure(got == want, EVERY_WRITE, || {
            format!(
                "{after}: {}",
                sequence_diff(&expected, new).unwrap_or_else(|| "the same records in another order".into())
            )
        })?;
        self.all.extend(expected);
        Ok(())
    }
}

/// Every kind of write appears in the feed, once, right after the records
/// written before it: a reader following the account from the start reads,
/// after each write, exactly that write's record (run scope and change
/// record as written): two inserts in two projects, a compare-and-swap, an
/// `update`, and an `apply_bulk_items` that writes two runs (its two
/// records in either order). Refused writes (a second insert for a target
/// group, a stale compare-and-swap, an `update` that skips, an apply that
/// conflicts) leave no record; writes of another account with the same
/// project and target group ids never show. At the end one read from the
/// start returns the same records at the same positions.
pub async fn feed_lists_every_write_exactly_once_in_commit_order<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_lists_every_write_exactly_once_in_commit_order");
    let store = &*store;
    let scope = sample::scope();
    let stranger = sample::other_account(scope);
    let mut feed = Tracker {
        follower: Follower::new(caps, scope.account_id, None, 1000),
        all: Vec::new(),
    };

    let (first, record) = seed(case, store, scope, Status::Live).await?;
    feed.expect(case, store, vec![record], false, "after insert").await?;
    // Another account, same project and target group ids: never shown.
    let (theirs, _) = seed(case, store, stranger, Status::Live).await?;
    let (second, record) = seed(case, store, sample::other_project(scope), Status::Paused).await?;
    feed.expect(case, store, vec![record], false, "after an insert in another project")
        .await?;

    let again = sample::run(scope, Version::INITIAL, Status::Scheduled);
    let refused = store.insert(&again, &sample::creation(&again)).await;
    case.ensure(
        matches!(refused, Err(StoreError::AlreadyExists { .. })),
        EVERY_WRITE,
        || format!("a second insert into {scope} answered {refused:?}, expected AlreadyExists"),
    )?;
    let (stale, stale_record) = sample::change(&first, 1, UserId::random())
        .ok_or_else(|| case.fail(EVERY_WRITE, "the first run is at the last version"))?;
    let refused = store.compare_and_swap(version(7), &stale, &stale_record).await;
    case.ensure(
        matches!(refused, Err(StoreError::VersionConflict { .. })),
        EVERY_WRITE,
        || format!("compare_and_swap(7) on a run at version 1 answered {refused:?}, expected VersionConflict"),
    )?;
    let skipped = store.update(&second.key(), &mut |_: &FieldingRun| Update::Skip).await;
    case.ensure(matches!(skipped, Ok(UpdateOutcome::Skipped)), EVERY_WRITE, || {
        format!("an update whose decide skips answered {skipped:?}, expected Skipped")
    })?;
    let (theirs, _) = bump(case, store, &theirs, 3).await?;

    let (first, record) = bump(case, store, &first, 10).await?;
    feed.expect(case, store, vec![record], false, "after compare_and_swap")
        .await?;

    let mut planned = None;
    let result = store
        .update(
            &second.key(),
            &mut |run: &FieldingRun| match sample::change(run, 20, UserId::random()) {
                Some((next, change)) => {
                    planned = Some((next.clone(), change.clone()));
                    Update::Write {
                        expected: run.version,
                        run: next,
                        change,
                    }
                }
                None => Update::Skip,
            },
        )
        .await;
    let written_by_update = match (result, planned) {
        (Ok(UpdateOutcome::Written), Some(planned)) => planned,
        (other, _) => {
            return Err(case.fail(
                EVERY_WRITE,
                format!("update writing the next version of {} answered {other:?}", second.key()),
            ))
        }
    };
    feed.expect(
        case,
        store,
        vec![(second.scope(), written_by_update.1.clone())],
        false,
        "after update",
    )
    .await?;

    // A bulk job over the first run and a third in its project.
    let (third, record) = seed(case, store, sample::other_target_group(scope), Status::Live).await?;
    feed.expect(case, store, vec![record], false, "after a third insert")
        .await?;
    let job = bulk_job(
        scope,
        BulkAction::Pause,
        &[first.target_group_id, third.target_group_id],
    );
    create(case, store, EVERY_WRITE, &job).await?;
    let claim = claim_job(case, store, &job).await?;
    let items = [first.target_group_id, third.target_group_id];
    // A conflicting apply writes nothing.
    let conflict = store
        .apply_bulk_items(&job.key(), claim.token, &items, &mut |_, run: Option<&FieldingRun>| {
            write_next(run, 30, |v| version(v.get() + 5))
        })
        .await;
    case.ensure(
        matches!(conflict, Err(StoreError::VersionConflict { .. })),
        EVERY_WRITE,
        || format!("apply_bulk_items with a stale expected version answered {conflict:?}, expected VersionConflict"),
    )?;
    let mut batch = Vec::new();
    let applied = store
        .apply_bulk_items(&job.key(), claim.token, &items, &mut |_, run: Option<&FieldingRun>| {
            let update = write_next(run, 40, |v| v);
            if let (ItemUpdate::Write { change, .. }, Some(run)) = (&update, run) {
                batch.push((run.scope(), change.clone()));
            }
            update
        })
        .await;
    case.ok(format!("apply_bulk_items({})", job.key()), applied)?;
    // Finished, so no other case's claim takes it.
    finish(
        case,
        store,
        EVERY_WRITE,
        &job.key(),
        claim.token,
        BulkJobStatus::Completed,
        true,
    )
    .await?;
    feed.expect(case, store, batch, true, "after apply_bulk_items writing two runs")
        .await?;
    bump(case, store, &theirs, 4).await?;
    let third = case
        .ok(format!("get({})", third.key()), store.get(&third.key()).await)?
        .ok_or_else(|| case.fail(EVERY_WRITE, format!("{} is gone after apply_bulk_items", third.key())))?;
    let (_, record) = bump(case, store, &third, 50).await?;
    feed.expect(case, store, vec![record], false, "after a last compare_and_swap")
        .await?;

    // One read from the start: the same records, at the same positions.
    let Tracker { follower, all } = feed;
    let mut again = Follower::new(caps, scope.account_id, None, 1000);
    again
        .until(case, store, all.len(), EVERY_WRITE, || {
            "reading the whole feed again".into()
        })
        .await?;
    again.drain(case, store).await?;
    case.ensure(again.seen == follower.seen, EVERY_WRITE, || {
        format!(
            "read while writing: {}; read again from the start: {}",
            describe(&follower.seen),
            describe(&again.seen)
        )
    })?;
    match sequence_diff(&all, &again.seen) {
        None => Ok(()),
        Some(diff) => Err(case.fail(EVERY_WRITE, format!("the whole feed read from the start: {diff}"))),
    }
}

/// The `ItemUpdate` writing the next version of `run` (tagged `tag`), at
/// the version `expected` makes of the run's.
fn write_next(run: Option<&FieldingRun>, tag: u64, expected: impl Fn(Version) -> Version) -> ItemUpdate {
    match run.and_then(|run| Some((run, sample::change(run, tag, UserId::random())?))) {
        Some((run, (next, change))) => ItemUpdate::Write {
            expected: expected(run.version),
            run: next,
            change,
        },
        None => ItemUpdate::Record(crate::cases::bulk::NOT_FOUND),
    }
}

/// Pages of any size read the same feed: with 13 records over three runs
/// of one account, reading from the start in pages of 1, 2, 3, 5, 12, 13,
/// 14 and 1000 returns the same records in the same order as one big page,
/// each page's `has_more` true exactly when records remain, and after the
/// last page a read from its `next` finds nothing; reading from the
/// position of any record returns exactly the records after it; and
/// `after = None` and `after = Some(0.0)` read the same records.
pub async fn feed_pages_of_any_size_read_the_same_records<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_pages_of_any_size_read_the_same_records");
    let store = &*store;
    let scope = sample::scope();
    let mut runs = Vec::new();
    let mut all: Vec<Expected> = Vec::new();
    for (i, status) in [Status::Live, Status::Paused, Status::Scheduled]
        .into_iter()
        .enumerate()
    {
        let at = if i == 0 {
            scope
        } else {
            sample::other_target_group(scope)
        };
        let (run, record) = seed(case, store, at, status).await?;
        runs.push(run);
        all.push(record);
    }
    for i in 0..10 {
        let k = i % runs.len();
        let (next, record) = bump(case, store, &runs[k], 100 + i as u64).await?;
        runs[k] = next;
        all.push(record);
    }
    let mut whole = Follower::new(caps, scope.account_id, None, 1000);
    whole
        .until(case, store, all.len(), SAME_SEQUENCE, || {
            "reading the whole feed".into()
        })
        .await?;
    whole.drain(case, store).await?;
    if let Some(diff) = sequence_diff(&all, &whole.seen) {
        return Err(case.fail(SAME_SEQUENCE, format!("one big page from the start: {diff}")));
    }
    let reference = whole.seen.clone();

    for limit in [1, 2, 3, 5, 12, 13, 14, 1000] {
        let mut pages = Follower::new(caps, scope.account_id, None, limit);
        let mut cursors = Vec::new();
        loop {
            let before = pages.seen.len();
            let Some(page) = pages.read(case, store).await? else {
                continue;
            };
            cursors.push(page.next);
            let remaining = reference.len() - before.min(reference.len()) > page.records.len();
            case.ensure(page.has_more == remaining, HAS_MORE, || {
                format!(
                    "pages of {limit}: page #{} held records {} to {} of {} and answered has_more: {}",
                    cursors.len(),
                    before + 1,
                    before + page.records.len(),
                    reference.len(),
                    page.has_more
                )
            })?;
            if !page.has_more || pages.seen.len() > reference.len() {
                break;
            }
        }
        case.ensure(pages.seen == reference, SAME_SEQUENCE, || {
            format!(
                "pages of {limit} (cursors {cursors:?}) read {}; one big page read {}",
                describe(&pages.seen),
                describe(&reference)
            )
        })?;
        // At the end: nothing more, and the cursor stays put or moves on.
        let end = pages.cursor;
        let Some(page) = pages.read(case, store).await? else {
            continue;
        };
        case.ensure(page.records.is_empty() && !page.has_more, HAS_MORE, || {
            format!(
                "pages of {limit}: after the last page (has_more false), feed from {end:?} answered {}",
                describe_page(&page)
            )
        })?;
    }

    for (i, record) in reference.iter().enumerate() {
        let call = format!("feed({}, Some({}), 1000)", scope.account_id, record.position);
        let page = case.ok(&call, store.feed(scope.account_id, Some(record.position), 1000).await)?;
        check_page(case, &call, scope.account_id, Some(record.position), 1000, false, &page)?;
        case.ensure(page.records == reference[i + 1..], SAME_SEQUENCE, || {
            format!(
                "{call} (the position of record #{i}) answered {}; expected the {} records after it: {}",
                describe_page(&page),
                reference.len() - i - 1,
                describe(&reference[i + 1..])
            )
        })?;
    }

    let from_none = case.ok("feed(None)", store.feed(scope.account_id, None, 1000).await)?;
    let from_zero = case.ok(
        "feed(Some(0.0))",
        store.feed(scope.account_id, Some(FeedPosition::ZERO), 1000).await,
    )?;
    case.ensure(
        from_none.records == reference && from_zero.records == reference,
        SAME_SEQUENCE,
        || {
            format!(
                "feed(None) answered {} and feed(Some(0.0)) answered {}; expected both to read {}",
                describe_page(&from_none),
                describe_page(&from_zero),
                describe(&reference)
            )
        },
    )
}

/// Accounts never see each other's records: three accounts whose runs
/// share project and target group ids (the account id the only
/// difference) are written in turn; each account's feed holds exactly its
/// own records, in order, and an account with no runs reads an empty feed
/// (`has_more` false) from the start and from any cursor.
pub async fn feed_never_shows_another_accounts_records<S>(store: Arc<S>, caps: Capabilities) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_never_shows_another_accounts_records");
    let store = &*store;
    let a = sample::scope();
    let b = sample::other_account(a);
    let c = sample::other_account(b);
    let empty = sample::other_account(sample::scope());
    let mut expected: Vec<Vec<Expected>> = vec![Vec::new(); 3];
    let mut runs = Vec::new();
    for (i, scope) in [a, b, c].into_iter().enumerate() {
        let (run, record) = seed(case, store, scope, Status::Live).await?;
        runs.push(run);
        expected[i].push(record);
    }
    for round in 0..3u64 {
        for (i, run) in runs.iter_mut().enumerate() {
            let (next, record) = bump(case, store, run, round * 10 + i as u64).await?;
            *run = next;
            expected[i].push(record);
        }
    }
    for (i, scope) in [a, b, c].into_iter().enumerate() {
        let mut follower = Follower::new(caps, scope.account_id, None, 2);
        follower
            .until(case, store, expected[i].len(), ISOLATION, || {
                format!("reading the feed of account {}", scope.account_id)
            })
            .await?;
        follower.drain(case, store).await?;
        if let Some(diff) = sequence_diff(&expected[i], &follower.seen) {
            return Err(case.fail(ISOLATION, format!("the feed of account {}: {diff}", scope.account_id)));
        }
    }
    let cursors = [None, Some(FeedPosition::ZERO)];
    for after in cursors {
        let call = format!("feed({} (no runs), {after:?}, 100)", empty.account_id);
        let page = case.ok(&call, store.feed(empty.account_id, after, 100).await)?;
        case.ensure(page.records.is_empty() && !page.has_more, ISOLATION, || {
            format!("{call} answered {}", describe_page(&page))
        })?;
    }
    Ok(())
}

const FOREIGN_CURSOR: &str =
    "a cursor past every position the store has handed out (from another database: a restored or recreated one, a restarted in-memory store) is refused with FeedExpired { account, after: the cursor, .. }, so its reader starts over instead of silently waiting past everything written until the store catches up; the store's own cursors (a page's next) read on";

/// A cursor the store can never have handed out (past its head) is
/// refused with `FeedExpired`, while the `next` of a page it answered is
/// read on from.
pub async fn feed_refuses_a_cursor_it_never_handed_out<S>(store: Arc<S>, _caps: Capabilities) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_refuses_a_cursor_it_never_handed_out");
    let store = &*store;
    let scope = sample::scope();
    seed(case, store, scope, Status::Live).await?;
    let call = format!("feed({}, None, 100)", scope.account_id);
    let page = case.ok(&call, store.feed(scope.account_id, None, 100).await)?;
    let call = format!(
        "feed({}, Some({}), 100) (the page's own next)",
        scope.account_id, page.next
    );
    case.ok(&call, store.feed(scope.account_id, Some(page.next), 100).await)?;
    let foreign = FeedPosition::new(1 << 62, 0);
    let call = format!("feed({}, Some({foreign}), 100)", scope.account_id);
    match store.feed(scope.account_id, Some(foreign), 100).await {
        Err(StoreError::FeedExpired { account, after, .. }) if account == scope.account_id && after == foreign => {
            Ok(())
        }
        other => Err(case.fail(
            FOREIGN_CURSOR,
            format!(
                "{call} answered {}",
                match other {
                    Ok(page) => describe_page(&page),
                    Err(err) => format!("the error {err}"),
                }
            ),
        )),
    }
}
