//! What a consumer keeps in the store besides the records: its checkpoint
//! (per account and consumer name), and the wake-ups a store may send when
//! an account has new records.

use std::sync::Arc;

use fielding_core::{
    AccountId, BulkAction, BulkJobStatus, ChangeSubscription, ConsumerName, FeedPosition, FieldingRun, FieldingStore,
    ItemUpdate, Status, Update, UserId,
};

use crate::cases::bulk::{bulk_job, claim_job, create, finish};
use crate::cases::feed::{bump, seed, Follower};
use crate::failure::Case;
use crate::sample;
use crate::{Capabilities, CaseFailure};

const CHECKPOINTS: &str =
    "feed checkpoints are kept per account and consumer name (names compared exactly, case included): none until saved, load returns exactly the position saved last (a save replaces the one before, also with an earlier position), and a save never changes another account's or another consumer's checkpoint";

const WAKES: &str =
    "a store with a change notifier wakes the subscribers of an account after each write to it (insert, compare_and_swap, update, apply_bulk_items), within seconds, on the notifier change_notifier() answers at any time";

fn name(case: Case, text: &str) -> Result<ConsumerName, CaseFailure> {
    ConsumerName::parse(text).map_err(|err| case.fail(CHECKPOINTS, format!("consumer name {text:?}: {err}")))
}

/// `load_feed_checkpoint(account, consumer)` must answer `expected`.
async fn loads<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    account: AccountId,
    consumer: &ConsumerName,
    expected: Option<FeedPosition>,
    when: &str,
) -> Result<(), CaseFailure> {
    let call = format!("load_feed_checkpoint({account}, {consumer}) {when}");
    let loaded = case.ok(&call, store.load_feed_checkpoint(account, consumer).await)?;
    case.ensure(loaded == expected, CHECKPOINTS, || {
        format!("{call} answered {loaded:?}, expected {expected:?}")
    })
}

async fn save<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    account: AccountId,
    consumer: &ConsumerName,
    position: FeedPosition,
) -> Result<(), CaseFailure> {
    case.ok(
        format!("save_feed_checkpoint({account}, {consumer}, {position})"),
        store.save_feed_checkpoint(account, consumer, position).await,
    )
}

/// Checkpoints round trip per account and consumer: with positions the
/// store gave out (records' and a page's `next`) and the start (0.0), two
/// accounts and the consumers `quota`, `Quota` (another name) and one of
/// 100 characters: none is there until saved; each load returns the last
/// save of exactly that account and name; saving an earlier position
/// replaces a later one; no save touches another account's or name's.
pub async fn feed_checkpoints_are_kept_per_account_and_consumer<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_checkpoints_are_kept_per_account_and_consumer");
    let store = &*store;
    let scope = sample::scope();
    let (run, _) = seed(case, store, scope, Status::Live).await?;
    let (run, _) = bump(case, store, &run, 1).await?;
    bump(case, store, &run, 2).await?;
    let mut follower = Follower::new(caps, scope.account_id, None, 1000);
    follower
        .until(case, store, 3, CHECKPOINTS, || {
            "reading the records to take positions from".into()
        })
        .await?;
    let page = follower.read(case, store).await?;
    let positions = [
        follower.seen[0].position,
        follower.seen[2].position,
        page.map_or(follower.seen[2].position, |p| p.next),
        FeedPosition::ZERO,
    ];
    let a = scope.account_id;
    let b = sample::other_account(scope).account_id;
    let quota = name(case, "quota")?;
    let upper = name(case, "Quota")?;
    let long = name(case, &"billing.service-v2_".repeat(6)[..100])?;

    for account in [a, b] {
        for consumer in [&quota, &upper, &long] {
            loads(case, store, account, consumer, None, "before any save").await?;
        }
    }
    save(case, store, a, &quota, positions[1]).await?;
    loads(case, store, a, &quota, Some(positions[1]), "after saving it").await?;
    for (account, consumer) in [(a, &upper), (a, &long), (b, &quota)] {
        loads(case, store, account, consumer, None, "after a save of (a, quota)").await?;
    }
    // An earlier position replaces a later one: the consumer decides.
    save(case, store, a, &quota, positions[0]).await?;
    loads(
        case,
        store,
        a,
        &quota,
        Some(positions[0]),
        "after saving an earlier position",
    )
    .await?;
    save(case, store, b, &quota, positions[2]).await?;
    save(case, store, a, &upper, positions[3]).await?;
    save(case, store, a, &long, positions[2]).await?;
    loads(
        case,
        store,
        a,
        &quota,
        Some(positions[0]),
        "after saves of other names and accounts",
    )
    .await?;
    loads(case, store, b, &quota, Some(positions[2]), "after saving it").await?;
    loads(case, store, a, &upper, Some(positions[3]), "after saving it").await?;
    loads(case, store, a, &long, Some(positions[2]), "after saving it").await?;
    loads(case, store, b, &upper, None, "when only other accounts and names saved").await?;
    for position in positions {
        save(case, store, b, &long, position).await?;
        loads(case, store, b, &long, Some(position), "right after saving it").await?;
    }
    loads(
        case,
        store,
        a,
        &long,
        Some(positions[2]),
        "after another account's saves",
    )
    .await
}

/// A fresh subscription to `account` on the store's notifier, as a watcher
/// makes one before each read.
fn subscribe<S: FieldingStore + ?Sized>(store: &S, account: AccountId) -> Option<ChangeSubscription> {
    store.change_notifier().map(|notifier| notifier.subscribe(account))
}

/// The subscription must be woken within the feed lag allowed (a store
/// that relays wake-ups through its database, like PostgreSQL's `NOTIFY`,
/// may batch them, but a wake-up is never later than the record).
async fn woken(
    case: Case,
    caps: Capabilities,
    subscription: Option<ChangeSubscription>,
    after: &str,
) -> Result<(), CaseFailure> {
    let Some(mut subscription) = subscription else {
        return Err(case.fail(WAKES, format!("change_notifier() answered None {after}, Some before")));
    };
    tokio::time::timeout(caps.max_feed_lag(), subscription.changed())
        .await
        .map_err(|_| {
            case.fail(
                WAKES,
                format!(
                    "a subscriber of the account was not woken within {:?} {after}",
                    caps.max_feed_lag()
                ),
            )
        })
}

/// When the store has a change notifier, every kind of write wakes the
/// subscribers of its account within [`Capabilities::max_feed_lag`]: an insert, a
/// compare-and-swap, an `update` and an `apply_bulk_items`, each with a
/// subscription taken just before it from `change_notifier()` (asked anew
/// each time, as watchers do). A store without one (`None`) passes: its
/// watchers poll.
pub async fn feed_change_notifier_wakes_the_subscribers_of_the_written_account<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_change_notifier_wakes_the_subscribers_of_the_written_account");
    let store = &*store;
    if store.change_notifier().is_none() {
        return Ok(());
    }
    let scope = sample::scope();
    let account = scope.account_id;

    let subscription = subscribe(store, account);
    let (run, _) = seed(case, store, scope, Status::Live).await?;
    woken(case, caps, subscription, "after an insert").await?;

    let subscription = subscribe(store, account);
    let (run, _) = bump(case, store, &run, 1).await?;
    woken(case, caps, subscription, "after a compare_and_swap").await?;

    let subscription = subscribe(store, account);
    let outcome = store
        .update(
            &run.key(),
            &mut |current: &FieldingRun| match sample::change(current, 2, UserId::random()) {
                Some((next, change)) => Update::Write {
                    expected: current.version,
                    run: next,
                    change,
                },
                None => Update::Skip,
            },
        )
        .await;
    case.ok(format!("update({})", run.key()), outcome)?;
    woken(case, caps, subscription, "after an update").await?;

    let job = bulk_job(scope, BulkAction::Complete, &[scope.target_group_id]);
    create(case, store, WAKES, &job).await?;
    let claim = claim_job(case, store, &job).await?;
    let subscription = subscribe(store, account);
    let applied = store
        .apply_bulk_items(
            &job.key(),
            claim.token,
            &[scope.target_group_id],
            &mut |_, current: Option<&FieldingRun>| match current
                .and_then(|run| Some((run, sample::change(run, 3, UserId::random())?)))
            {
                Some((run, (next, change))) => ItemUpdate::Write {
                    expected: run.version,
                    run: next,
                    change,
                },
                None => ItemUpdate::Record(crate::cases::bulk::NOT_FOUND),
            },
        )
        .await;
    case.ok(format!("apply_bulk_items({})", job.key()), applied)?;
    woken(case, caps, subscription, "after an apply_bulk_items").await?;
    // Finished, so no other case's claim takes it.
    finish(
        case,
        store,
        WAKES,
        &job.key(),
        claim.token,
        BulkJobStatus::Completed,
        true,
    )
    .await
}
