//! Retention: `prune_changes` removes old change records in bounded
//! batches, and a cursor before a removed record is refused with
//! [`StoreError::FeedExpired`], never silently moved past what is gone.
//!
//! One case, not several: `prune_changes` reaches every record of the
//! store, so two pruning cases sharing a store (a factory may hand out one
//! database to every case) would remove each other's records. The case
//! works with records made in the first days of 1980, before any record
//! another case makes (the round-trip case's oldest is from 2000), and
//! only ever prunes before 1980-01-03.

use std::sync::Arc;

use fielding_core::{
    AccountId, ChangeRecord, FeedPosition, FeedRecord, FieldingRun, FieldingStore, RunKey, Status, StoreError,
    Timestamp, UserId, Version,
};

use crate::cases::feed::{bump, check_page, describe, describe_page, seed, Follower};
use crate::failure::Case;
use crate::sample::{self, at};
use crate::{Capabilities, CaseFailure};

const PRUNE: &str =
    "prune_changes(before, limit) removes exactly the change records made strictly before `before` (a record made at `before` stays), at most `limit` per call (0 removes nothing), and answers how many it removed; afterwards changes() returns each run's kept records only";

const EXPIRED: &str =
    "a feed cursor before a pruned record of its account is refused with FeedExpired { account, after: the cursor, pruned_through: the account's last pruned position }, never silently moved past what is gone; a cursor at or after that position reads on exactly as before; after = None reads from there (never a kept record below it); another account's cursors are not affected";

/// 1980-01-01T00:00:00.000Z: the start of the case's window.
const WINDOW_START: i64 = 315_532_800_000;

/// The cutoff of the case's main sweep, a day into the window.
const CUTOFF: i64 = WINDOW_START + 86_400_000;

/// The cutoff of the sweep that clears what an earlier, interrupted run
/// on a shared store may have left in the window.
const LEFTOVERS: i64 = WINDOW_START + 2 * 86_400_000;

/// The `limit` of the main sweep: the five old records need three calls.
const LIMIT: usize = 2;

/// `run` as made at `millis`, for inserting.
fn made_at(run: FieldingRun, millis: i64) -> FieldingRun {
    FieldingRun {
        last_changed_at: at(millis),
        ..run
    }
}

/// Compare-and-swaps `run` to its next version, made at `millis`.
async fn bump_at<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    run: &FieldingRun,
    millis: i64,
) -> Result<(FieldingRun, ChangeRecord), CaseFailure> {
    let (mut next, mut record) = sample::change(run, millis as u64, UserId::random())
        .ok_or_else(|| case.fail(PRUNE, format!("{} is at the last version", run.key())))?;
    next.last_changed_at = at(millis);
    record.changed_at = at(millis);
    case.ok(
        format!("compare_and_swap({}, {})", run.version, run.key()),
        store.compare_and_swap(run.version, &next, &record).await,
    )?;
    Ok((next, record))
}

/// Inserts a run of `scope` made at `millis`.
async fn seed_at<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    scope: fielding_core::Scope,
    millis: i64,
) -> Result<(FieldingRun, ChangeRecord), CaseFailure> {
    let run = made_at(sample::run(scope, Version::INITIAL, Status::Live), millis);
    let record = sample::creation(&run);
    case.ok(format!("insert({})", run.key()), store.insert(&run, &record).await)?;
    Ok((run, record))
}

/// `prune_changes(before, limit)`, repeated until it answers less than
/// `limit`: every answer, in order.
async fn sweep<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<usize>, CaseFailure> {
    let call = format!("prune_changes({before}, {limit})");
    crate::cases::check::sweep(case, PRUNE, &call, limit, || store.prune_changes(before, limit)).await
}

/// The whole feed of `account` from the start, once `count` records are
/// readable.
async fn whole_feed<S: FieldingStore + ?Sized>(
    case: Case,
    caps: Capabilities,
    store: &S,
    account: AccountId,
    count: usize,
) -> Result<Vec<FeedRecord>, CaseFailure> {
    let mut follower = Follower::new(caps, account, None, 1000);
    follower
        .until(case, store, count, EXPIRED, || {
            format!("reading the feed of account {account} before pruning")
        })
        .await?;
    follower.drain(case, store).await?;
    Ok(follower.seen)
}

/// `feed(account, after, 100)` must answer exactly `expected` (and nothing
/// more to read).
async fn reads<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    account: AccountId,
    after: Option<FeedPosition>,
    expected: &[FeedRecord],
    when: &str,
) -> Result<(), CaseFailure> {
    let call = format!("feed({account}, {after:?}, 100) {when}");
    let page = case.ok(&call, store.feed(account, after, 100).await)?;
    check_page(case, &call, account, after, 100, false, &page)?;
    case.ensure(page.records == expected && !page.has_more, EXPIRED, || {
        format!(
            "{call} answered {}; expected {}",
            describe_page(&page),
            describe(expected)
        )
    })
}

/// `feed(account, Some(after), 100)` must be refused with `FeedExpired`
/// naming the account, the cursor and `pruned_through`.
async fn expired<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    account: AccountId,
    after: FeedPosition,
    pruned_through: FeedPosition,
    when: &str,
) -> Result<(), CaseFailure> {
    let answer = store.feed(account, Some(after), 100).await;
    let refused = matches!(
        &answer,
        Err(StoreError::FeedExpired { account: a, after: p, pruned_through: t })
            if *a == account && *p == after && *t == pruned_through
    );
    case.ensure(refused, EXPIRED, || {
        let answer = match &answer {
            Ok(page) => format!("Ok({})", describe_page(page)),
            Err(err) => format!("Err({err:?})"),
        };
        format!(
            "feed({account}, Some({after}), 100) {when} answered {answer}; expected Err(FeedExpired {{ account: \
             {account}, after: {after}, pruned_through: {pruned_through} }})"
        )
    })
}

/// `changes(key)` must be exactly `expected`.
async fn kept<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    key: &RunKey,
    expected: &[&ChangeRecord],
    when: &str,
) -> Result<(), CaseFailure> {
    let expected: Vec<ChangeRecord> = expected.iter().map(|r| (*r).clone()).collect();
    crate::cases::check::changes(case, store, PRUNE, key, &expected, when).await
}

/// Retention, end to end. In this order: five records made on 1980-01-01
/// (`o1`, `o2`, `o3` and `o4` over two runs of account A, `b_old` of
/// account B between them), one of A made exactly at the cutoff
/// (1980-01-02), then records from 2031: C's first, B's second, A's `k1`
/// and `k2`, C's second. Then:
///
/// * `prune_changes(cutoff, 0)` removes nothing; `prune_changes(cutoff, 2)`
///   answers 2, 2, 1, and after each call exactly that many of the five
///   old records are gone; `changes()` returns the kept records only;
/// * A's cursors before `o4` (the start, `o2`) are refused with
///   `FeedExpired { account: A, after: cursor, pruned_through: o4 }`; from
///   `o4` and later the feed reads on as before, and `after = None` reads
///   from `o4`;
/// * B's start is expired at B's own old record; C's start reads all of
///   C's records (the horizon is per account);
/// * one millisecond later the record made at the cutoff goes too, and A's
///   cursor at `o4` expires in turn;
/// * last, A gets one more record made in 1980 (`o5`), after `k1` and
///   `k2`. A store that prunes by age removes it: then `after = None`
///   starts after `o5`, so `k1` and `k2`, kept but below the horizon, are
///   never returned, and a cursor at `k2` is expired. A store that prunes
///   only the prefix of its log removes nothing (answers 0) and the feed
///   is unchanged. Either is allowed; anything else is not.
///
/// A store that prunes only a prefix needs a fresh store for this case:
/// other cases' records before the case's would stop it at the first.
pub async fn feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_prune_removes_old_records_in_bounded_batches_and_expires_cursors_before_them");
    let store = &*store;
    sweep(case, store, at(LEFTOVERS), 1_000).await?;

    let a = sample::scope();
    let b = sample::scope();
    let c = sample::scope();
    let (r1, o1) = seed_at(case, store, a, WINDOW_START + 1).await?;
    let (r1, o2) = bump_at(case, store, &r1, WINDOW_START + 2).await?;
    let (r2, o3) = seed_at(case, store, sample::other_target_group(a), WINDOW_START + 3).await?;
    let (r4, b_old) = seed_at(case, store, b, WINDOW_START + 4).await?;
    let (r1, o4) = bump_at(case, store, &r1, WINDOW_START + 5).await?;
    let (r2, at_cutoff) = bump_at(case, store, &r2, CUTOFF).await?;
    let (r5, c1) = seed(case, store, c, Status::Live).await?;
    let (r4, b_new) = bump(case, store, &r4, 1).await?;
    let (r1, k1) = bump(case, store, &r1, 2).await?;
    let (r2, k2) = bump(case, store, &r2, 3).await?;
    let (_, c2) = bump(case, store, &r5, 4).await?;

    let feed_a = whole_feed(case, caps, store, a.account_id, 7).await?;
    let feed_b = whole_feed(case, caps, store, b.account_id, 2).await?;
    let feed_c = whole_feed(case, caps, store, c.account_id, 2).await?;
    let order_a = [&o1, &o2, &o3, &o4, &at_cutoff, &k1.1, &k2.1];
    let as_written = feed_a.len() == order_a.len()
        && feed_a.iter().zip(order_a).all(|(r, w)| r.change == *w)
        && feed_b.iter().map(|r| &r.change).eq([&b_old, &b_new.1])
        && feed_c.iter().map(|r| &r.change).eq([&c1.1, &c2.1]);
    case.ensure(as_written, PRUNE, || {
        format!(
            "before pruning, the feeds of the case's accounts do not hold their records as written: A {}, B {}, C {}",
            describe(&feed_a),
            describe(&feed_b),
            describe(&feed_c)
        )
    })?;
    let position = |records: &[FeedRecord], i: usize| records[i].position;

    let none = case.ok("prune_changes(cutoff, 0)", store.prune_changes(at(CUTOFF), 0).await)?;
    case.ensure(none == 0, PRUNE, || {
        format!("prune_changes with limit 0 answered {none}")
    })?;
    reads(case, store, a.account_id, None, &feed_a, "after pruning with limit 0").await?;

    // Batch by batch: at most the limit, and exactly as many old records
    // gone as the answers add up to.
    let old: [(RunKey, &ChangeRecord); 5] = [
        (r1.key(), &o1),
        (r1.key(), &o2),
        (r2.key(), &o3),
        (r4.key(), &b_old),
        (r1.key(), &o4),
    ];
    let mut answers = Vec::new();
    let mut removed = 0;
    while answers.len() < crate::cases::check::MAX_SWEEP_CALLS {
        let answer = case.ok(
            format!("prune_changes(cutoff, {LIMIT}) #{}", answers.len()),
            store.prune_changes(at(CUTOFF), LIMIT).await,
        )?;
        answers.push(answer);
        removed += answer;
        let mut gone = 0;
        for (key, record) in &old {
            let result = store.changes(key).await;
            let history = case.ok(format!("changes({key}) while pruning"), result)?;
            gone += usize::from(!history.contains(*record));
        }
        case.ensure(gone == removed.min(old.len()), PRUNE, || {
            format!("prune_changes answered {answers:?} so far, but {gone} of the 5 old records are gone")
        })?;
        if answer < LIMIT {
            break;
        }
    }
    case.ensure(answers == [2, 2, 1], PRUNE, || {
        format!(
            "5 records made before the cutoff, one at it: prune_changes(cutoff, {LIMIT}) answered {answers:?}, \
             expected [2, 2, 1]"
        )
    })?;
    kept(case, store, &r1.key(), &[&k1.1], "after pruning").await?;
    kept(case, store, &r2.key(), &[&at_cutoff, &k2.1], "after pruning").await?;
    kept(case, store, &r4.key(), &[&b_new.1], "after pruning").await?;
    kept(case, store, &r5.key(), &[&c1.1, &c2.1], "after pruning").await?;

    let horizon = position(&feed_a, 3);
    let when = "after o1..o4 were pruned";
    for (name, cursor) in [("the start", FeedPosition::ZERO), ("o2", position(&feed_a, 1))] {
        expired(
            case,
            store,
            a.account_id,
            cursor,
            horizon,
            &format!("{when}, from {name}"),
        )
        .await?;
    }
    reads(case, store, a.account_id, Some(horizon), &feed_a[4..], when).await?;
    reads(
        case,
        store,
        a.account_id,
        Some(position(&feed_a, 4)),
        &feed_a[5..],
        when,
    )
    .await?;
    reads(case, store, a.account_id, None, &feed_a[4..], when).await?;
    expired(
        case,
        store,
        b.account_id,
        FeedPosition::ZERO,
        position(&feed_b, 0),
        "after B's old record was pruned",
    )
    .await?;
    reads(
        case,
        store,
        b.account_id,
        None,
        &feed_b[1..],
        "after B's old record was pruned",
    )
    .await?;
    reads(
        case,
        store,
        c.account_id,
        Some(FeedPosition::ZERO),
        &feed_c,
        "with nothing of C pruned",
    )
    .await?;

    // One millisecond later, the record made at the cutoff goes too.
    let last = sweep(case, store, at(CUTOFF + 1), LIMIT).await?;
    case.ensure(last == [1], PRUNE, || {
        format!("prune_changes one millisecond past the record made at the cutoff answered {last:?}, expected [1]")
    })?;
    kept(
        case,
        store,
        &r2.key(),
        &[&k2.1],
        "after the record at the cutoff was pruned",
    )
    .await?;
    let when = "after the record at the cutoff was pruned";
    expired(case, store, a.account_id, horizon, position(&feed_a, 4), when).await?;
    reads(case, store, a.account_id, None, &feed_a[5..], when).await?;
    reads(
        case,
        store,
        a.account_id,
        Some(position(&feed_a, 4)),
        &feed_a[5..],
        when,
    )
    .await?;

    // An old record after new ones: pruned by age, or left by a prefix.
    let (_, o5) = bump_at(case, store, &r2, WINDOW_START + 6).await?;
    let mut follower = Follower::new(caps, a.account_id, Some(position(&feed_a, 6)), 1000);
    follower
        .until(case, store, 1, PRUNE, || "reading the record o5".into())
        .await?;
    let o5_at = follower.seen[0].position;
    let after_o5 = sweep(case, store, at(CUTOFF), LIMIT).await?;
    let when = "after o5 (made in 1980, written after k1 and k2) was pruned";
    match after_o5[..] {
        [1] => {
            kept(case, store, &r2.key(), &[&k2.1], when).await?;
            reads(case, store, a.account_id, None, &[], when).await?;
            reads(case, store, a.account_id, Some(o5_at), &[], when).await?;
            expired(case, store, a.account_id, position(&feed_a, 6), o5_at, when).await
        }
        [0] => {
            let when = "after a prune that left o5 (made in 1980, written after k1 and k2)";
            kept(case, store, &r2.key(), &[&k2.1, &o5], when).await?;
            let mut expected = feed_a[5..].to_vec();
            expected.extend(follower.seen);
            reads(case, store, a.account_id, None, &expected, when).await
        }
        _ => Err(case.fail(
            PRUNE,
            format!(
                "with one record made before the cutoff left (o5, written after newer ones), \
                 prune_changes(cutoff, {LIMIT}) answered {after_o5:?}: expected [1] (pruned by age) or [0] (a prefix \
                 that stops at the first newer record)"
            ),
        )),
    }
}
