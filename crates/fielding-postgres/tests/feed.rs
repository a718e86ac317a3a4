//! The change feed on a real server, beyond the conformance kit: order
//! under concurrent writers in one process and across pools, the `xmin`
//! bound that keeps a reader from passing a transaction still open, the
//! bulk batch's order against single-run writes, wake-ups across
//! instances (`LISTEN`/`NOTIFY`), pruning with its horizons, and
//! checkpoints.
//!
//! Other tests (and other suites) share the server: an open transaction
//! anywhere in the cluster holds every feed back until it ends, so reads
//! that expect records poll until they come, with a deadline.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{
    AccountId, BulkAction, BulkClaim, ClaimToken, ConsumerName, FeedPosition, FeedRecord, FieldingRun, FieldingStore,
    ItemUpdate, Status, StoreError, TargetGroupId, Timestamp, UserId, Version,
};
use fielding_postgres::sqlx::postgres::PgConnection;
use fielding_postgres::sqlx::{self, Connection};
use fielding_postgres::PgStore;
use fielding_testkit::fixtures;

/// How long a read waits for records it expects (other transactions in
/// the cluster may hold them back for a while).
const PATIENCE: Duration = Duration::from_secs(30);

fn app_name(what: &str) -> String {
    format!(
        "fielding_feed_{what}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn now() -> Timestamp {
    Timestamp::from(chrono::Utc::now())
}

/// Inserts a live run in `scope` (its own target group), visible at once.
async fn live_run(store: &PgStore, scope: fielding_core::Scope) -> FieldingRun {
    let run = fixtures::run()
        .with_scope(fixtures::other_target_group(scope))
        .with_status(Status::Live)
        .build();
    store.insert(&run, &fixtures::creation(&run)).await.expect("insert");
    run
}

/// Writes one change on the run at `key` (read, then compare-and-swap),
/// again on a conflict; answers the version written.
async fn write_once(store: &PgStore, run: &FieldingRun, tag: u64) -> Version {
    loop {
        let current = store.get(&run.key()).await.expect("get").expect("the run");
        let (next, change) = fixtures::change(&current, tag, UserId::random()).expect("a change");
        match store.compare_and_swap(current.version, &next, &change).await {
            Ok(()) => return next.version,
            Err(StoreError::VersionConflict { .. }) => tokio::task::yield_now().await,
            Err(err) => panic!("compare_and_swap: {err}"),
        }
    }
}

/// Follows `account`'s feed from `after` until `want` records have come
/// (panics after [`PATIENCE`]); answers them and the cursor to go on from.
async fn read_until(
    store: &PgStore,
    account: AccountId,
    mut after: Option<FeedPosition>,
    want: usize,
) -> (Vec<FeedRecord>, FeedPosition) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut records = Vec::new();
    loop {
        let page = store.feed(account, after, 50).await.expect("feed");
        if let Some(after) = after {
            assert!(page.next >= after, "the cursor never moves back");
        }
        if let Some(last) = page.records.last() {
            assert!(page.next >= last.position, "next is at or after the last record");
        }
        records.extend(page.records);
        after = Some(page.next);
        assert!(records.len() <= want, "more records than written: {}", records.len());
        if records.len() == want {
            return (records, page.next);
        }
        if !page.has_more {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {want} records came",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every record once, positions strictly rising, and each run's versions
/// 1, 2, 3, ... in feed order.
fn assert_feed_order(records: &[FeedRecord]) {
    for pair in records.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "positions rise: {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in records {
        versions
            .entry(record.run_id().to_string())
            .or_default()
            .push(record.change.version.get());
    }
    for (run, seen) in versions {
        let expected: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(seen, expected, "run {run}'s versions in feed order");
    }
}

/// The kit's feed scenario through the service: pages, watches, long
/// polls, run histories and checkpointed consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_scenario_through_the_service() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    fielding_testkit::scenarios::feed_follows_the_rules(Arc::new(test.store.clone())).await;
}

/// Writers in several tasks on two stores (two pools) over shared runs,
/// while a reader follows the feed in small pages: the reader sees every
/// record exactly once, in an order that keeps each run's versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_tasks_and_on_two_pools_are_read_once_each_in_order() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let other = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_feed_second", 4).await;
    let scope = fixtures::scope();
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(live_run(&test.store, scope).await);
    }
    // Another account's run, written too: never in this account's feed.
    let stranger = live_run(&test.store, fixtures::other_account(scope)).await;
    let runs = Arc::new(runs);
    const WRITERS_PER_STORE: usize = 3;
    const WRITES: usize = 25;

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = test.store.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            // Small pages while the writers run, so the reader is often
            // right behind them.
            let mut seen = Vec::new();
            let mut after = None;
            while !done.load(Ordering::Acquire) {
                let page = store.feed(scope.account_id, after, 7).await.expect("feed");
                seen.extend(page.records);
                after = Some(page.next);
                if !page.has_more {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            (seen, after)
        })
    };
    let mut writers = Vec::new();
    for (s, store) in [test.store.clone(), other.clone()].into_iter().enumerate() {
        for w in 0..WRITERS_PER_STORE {
            let (store, runs) = (store.clone(), Arc::clone(&runs));
            writers.push(tokio::spawn(async move {
                for n in 0..WRITES {
                    let run = &runs[(n + w) % runs.len()];
                    write_once(&store, run, (s * 1000 + w * 100 + n) as u64).await;
                }
            }));
        }
    }
    for _ in 0..10 {
        write_once(&other, &stranger, 1).await;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    done.store(true, Ordering::Release);
    let (mut seen, after) = reader.await.expect("reader");
    let total = runs.len() + 2 * WRITERS_PER_STORE * WRITES;
    let (rest, _) = read_until(&test.store, scope.account_id, after, total - seen.len()).await;
    seen.extend(rest);

    assert_feed_order(&seen);
    let read: HashSet<(String, u64)> = seen
        .iter()
        .map(|r| (r.run_id().to_string(), r.change.version.get()))
        .collect();
    assert_eq!(read.len(), seen.len(), "no record twice");
    let mut log = HashSet::new();
    for run in runs.iter() {
        for change in test.changes(&run.key()).await.expect("changes") {
            log.insert((run.id.to_string(), change.version.get()));
        }
    }
    assert_eq!(log.len(), total);
    assert_eq!(read, log, "nothing skipped");
    for record in &seen {
        assert_eq!(record.scope.account_id, scope.account_id);
        assert_ne!(record.run_id(), stranger.id);
        let run = runs.iter().find(|r| r.id == record.run_id()).expect("one of the runs");
        assert_eq!(record.scope, run.scope(), "the record carries its run's scope");
    }
}

/// The bug the `xmin` bound prevents: transaction A writes a record and
/// stays open, transaction B (a later id) writes one and commits. A reader
/// that returned B's record would move its cursor past A's position, and A's
/// record, committed later, would be skipped for good. The store holds B's
/// record back until A ends, never hands out a cursor past A's record, and
/// then returns both, A's first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_commit_is_held_back_until_an_earlier_open_writer_ends() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let scope = fixtures::scope();
    let held = live_run(&test.store, scope).await;
    let later = live_run(&test.store, scope).await;
    let (before, cursor) = read_until(&test.store, scope.account_id, None, 2).await;
    assert_feed_order(&before);

    // A: a write like the store's compare-and-swap (the run's version and
    // its record, in one transaction), left open. Its id is taken now.
    let mut a = PgConnection::connect(&test.guard.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut a).await.expect("begin");
    sqlx::query(&format!(
        "WITH upd AS (UPDATE \"{schema}\".fielding_runs SET version = version + 1 \
         WHERE id = $1 AND version = 1 RETURNING id) \
         INSERT INTO \"{schema}\".change_records (run_id, version, action, changed_at, changed_by, status_from, \
         status_to, start_from, start_to, end_from, end_to, account_id, project_id, target_group_id) \
         SELECT c.run_id, 2, c.action, c.changed_at, c.changed_by, c.status_to, c.status_to, c.start_to, \
         c.start_to, c.end_to, c.end_to, c.account_id, c.project_id, c.target_group_id \
         FROM \"{schema}\".change_records c JOIN upd ON upd.id = c.run_id WHERE c.version = 1"
    ))
    .bind(held.id.as_str())
    .execute(&mut a)
    .await
    .expect("A's write");

    // B: the store's own write, committed.
    write_once(&test.store, &later, 1).await;
    assert_eq!(
        test.changes(&later.key()).await.expect("changes").len(),
        2,
        "B committed"
    );

    // A reader without the bound would return B's record now, past A's.
    let mut reader = PgConnection::connect(&test.guard.url).await.expect("connect");
    let naive: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT run_id FROM \"{schema}\".change_records WHERE account_id = $1 \
         AND (txid, seq) > ($2::text::xid8, $3) ORDER BY txid, seq"
    ))
    .bind(scope.account_id.get() as i32)
    .bind(cursor.major().to_string())
    .bind(cursor.minor() as i64)
    .fetch_all(&mut reader)
    .await
    .expect("naive read");
    assert_eq!(
        naive,
        [later.id.to_string()],
        "the scenario is real: B's record is visible, A's is not"
    );

    // The store: nothing, and a cursor that stays below A's record.
    let mut held_back_next = cursor;
    for _ in 0..10 {
        let page = test
            .store
            .feed(scope.account_id, Some(cursor), 100)
            .await
            .expect("feed");
        assert!(
            page.records.is_empty(),
            "B's record is held back while A is open: {:?}",
            page.records
        );
        assert!(page.next >= cursor);
        held_back_next = page.next;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sqlx::query("COMMIT").execute(&mut a).await.expect("commit A");
    let (records, _) = read_until(&test.store, scope.account_id, Some(held_back_next), 2).await;
    let order: Vec<_> = records.iter().map(|r| (r.run_id(), r.change.version.get())).collect();
    assert_eq!(
        order,
        [(held.id, 2), (later.id, 2)],
        "both, A's first: its transaction id is the lower one"
    );
    assert!(
        records[0].position > held_back_next,
        "the held-back cursor did not pass A's record"
    );
    // And a reader that started from the first cursor sees the same.
    let (again, _) = read_until(&test.store, scope.account_id, Some(cursor), 2).await;
    assert_eq!(again, records);
}

/// Claims the oldest processing bulk job (the test's only one).
async fn claim(store: &PgStore) -> BulkClaim {
    let claim = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: now().checked_add(TimeDelta::seconds(60)).expect("in range"),
    };
    store
        .claim_bulk_job(now(), &claim)
        .await
        .expect("claim")
        .expect("a job to claim");
    claim
}

/// One batch writing the job's first target group's run, decided again on
/// a conflict (as the service does).
async fn apply_pause(store: &PgStore, job: &fielding_core::BulkJob, token: ClaimToken, tag: u64) {
    let items = [job.items[0].target_group_id];
    for _ in 0..50 {
        let mut decide = |_: TargetGroupId, run: Option<&FieldingRun>| {
            let run = run.expect("the run");
            let (next, change) = fixtures::change(run, tag, UserId::random()).expect("a change");
            ItemUpdate::Write {
                expected: run.version,
                run: next,
                change,
            }
        };
        match store.apply_bulk_items(&job.key(), token, &items, &mut decide).await {
            Ok(_) => return,
            Err(StoreError::VersionConflict { .. }) => tokio::task::yield_now().await,
            Err(err) => panic!("apply_bulk_items: {err}"),
        }
    }
    panic!("the batch kept conflicting");
}

/// The order a bulk batch must keep: it reads the runs before it takes a
/// transaction id. Forced here: the batch is stopped (by a table lock on
/// the job items) after it started, a single-run write commits the run's
/// next version meanwhile, then the batch goes on and writes the version
/// after that. Had the batch locked its job row first (taking its id
/// then), its record would carry a lower id than the single write's, and
/// the feed would list the run's versions out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_batch_stopped_mid_way_still_writes_after_a_single_write_in_feed_order() {
    let app = app_name("bulk");
    let Some(test) = common::fresh_store_with(&app, 4).await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let single = common::connect_store(&test.guard.url, &schema, "fielding_feed_single", 2).await;
    let scope = fixtures::scope();
    let run = live_run(&test.store, scope).await;
    for round in 0..3u64 {
        let job = fixtures::bulk_job(
            run.scope(),
            &format!("stopped-{round}"),
            BulkAction::Pause,
            &[run.target_group_id],
        );
        test.create_bulk_job(&job).await.expect("create");
        let held = claim(&test.store).await;

        let mut locker = PgConnection::connect(&test.guard.url).await.expect("connect");
        sqlx::query("BEGIN").execute(&mut locker).await.expect("begin");
        sqlx::query(&format!(
            "LOCK TABLE \"{schema}\".fielding_bulk_job_items IN ACCESS EXCLUSIVE MODE"
        ))
        .execute(&mut locker)
        .await
        .expect("lock the items");
        let batch = {
            let (store, job) = (test.store.clone(), job.clone());
            tokio::spawn(async move { apply_pause(&store, &job, held.token, 100 + round).await })
        };
        wait_for_lock_wait(&test.guard.url, &app).await;
        write_once(&single, &run, 200 + round).await;
        sqlx::query("ROLLBACK").execute(&mut locker).await.expect("unlock");
        batch.await.expect("batch");
        assert!(test
            .finish_bulk_job(&job.key(), held.token, fielding_core::BulkJobStatus::Completed, now())
            .await
            .expect("finish"));
    }
    let written = test.changes(&run.key()).await.expect("changes").len();
    assert_eq!(written, 7, "the creation, then a single write and a batch per round");
    let (records, _) = read_until(&test.store, scope.account_id, None, written).await;
    assert_feed_order(&records);
}

/// Waits until a backend of `app` waits on a lock.
async fn wait_for_lock_wait(url: &str, app: &str) {
    let mut admin = PgConnection::connect(url).await.expect("admin");
    for _ in 0..1000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(app)
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the batch never waited on the lock");
}

/// The same, as a free race many times over: single-run writes on one
/// store and bulk batches on another, on the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_bulk_batches_and_single_writes_keep_the_runs_version_order_in_the_feed() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let single = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_feed_race", 2).await;
    let scope = fixtures::scope();
    let run = live_run(&test.store, scope).await;
    const ROUNDS: u64 = 30;
    for round in 0..ROUNDS {
        let job = fixtures::bulk_job(
            run.scope(),
            &format!("race-{round}"),
            BulkAction::Pause,
            &[run.target_group_id],
        );
        test.create_bulk_job(&job).await.expect("create");
        let held = claim(&test.store).await;
        let batch = {
            let (store, job) = (test.store.clone(), job.clone());
            tokio::spawn(async move { apply_pause(&store, &job, held.token, 1000 + round).await })
        };
        let writer = {
            let (single, run) = (single.clone(), run.clone());
            tokio::spawn(async move { write_once(&single, &run, 2000 + round).await })
        };
        batch.await.expect("batch");
        writer.await.expect("writer");
        assert!(test
            .finish_bulk_job(&job.key(), held.token, fielding_core::BulkJobStatus::Completed, now())
            .await
            .expect("finish"));
    }
    let written = test.changes(&run.key()).await.expect("changes").len();
    assert_eq!(written as u64, 1 + 2 * ROUNDS);
    let (records, _) = read_until(&test.store, scope.account_id, None, written).await;
    assert_feed_order(&records);
}

/// Waits for `subscription` to be woken, at most `within`.
async fn woken(subscription: &mut fielding_core::ChangeSubscription, within: Duration) -> bool {
    tokio::time::timeout(within, subscription.changed()).await.is_ok()
}

/// A write through one store wakes the watchers of its account on another
/// store (another pool, as another instance would have) through `LISTEN`,
/// and only those: not another account's, not another schema's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_wakes_the_accounts_watchers_on_another() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let Some(elsewhere) = common::fresh_store().await else {
        return;
    };
    let watcher = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_feed_watcher", 2).await;
    let scope = fixtures::scope();
    let quiet = fixtures::other_account(scope);

    let notifier = watcher.change_notifier().expect("a notifier");
    let mut on_account = notifier.subscribe(scope.account_id);
    let mut on_other = notifier.subscribe(quiet.account_id);
    let foreign = elsewhere.store.change_notifier().expect("a notifier");
    let mut on_other_schema = foreign.subscribe(scope.account_id);
    // The listeners' first connect wakes everybody (what was sent before
    // they listened is lost): wait for that, so what follows is a
    // notification.
    for subscription in [&mut on_account, &mut on_other, &mut on_other_schema] {
        assert!(woken(subscription, PATIENCE).await, "woken when the listener connects");
    }
    assert!(watcher.feed_listener_running());

    for round in 0..3 {
        let started = std::time::Instant::now();
        live_run(&test.store, scope).await;
        assert!(
            woken(&mut on_account, Duration::from_secs(5)).await,
            "round {round}: the watcher on the other instance is woken"
        );
        eprintln!("round {round}: woken {:?} after the write", started.elapsed());
    }
    assert!(
        !woken(&mut on_other, Duration::from_millis(300)).await,
        "another account's watcher is not woken"
    );
    assert!(
        !woken(&mut on_other_schema, Duration::from_millis(300)).await,
        "a watcher of another schema is not woken"
    );

    // Locally, a write wakes at once (no round trip through the server).
    let local = test.store.change_notifier().expect("a notifier");
    let mut mine = local.subscribe(scope.account_id);
    live_run(&test.store, scope).await;
    assert!(woken(&mut mine, Duration::from_millis(50)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_listener_off_no_listening_connection_is_held() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let store = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_feed_nolisten", 2)
        .await
        .with_feed_listener(false);
    let scope = fixtures::scope();
    let notifier = store.change_notifier().expect("a notifier still");
    let mut subscription = notifier.subscribe(scope.account_id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!store.feed_listener_running());
    // Its own writes still wake its watchers.
    live_run(&store, scope).await;
    assert!(woken(&mut subscription, Duration::from_millis(50)).await);
}

/// A run in `scope`'s account whose creation record was made at `at`.
async fn run_changed_at(store: &PgStore, scope: fielding_core::Scope, at: Timestamp) -> FieldingRun {
    let run = fixtures::run()
        .with_scope(fixtures::other_target_group(scope))
        .with_changed_at(at)
        .build();
    store.insert(&run, &fixtures::creation(&run)).await.expect("insert");
    run
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_900_000_000_000 + seconds * 1000).expect("in range")
}

fn expired(outcome: Result<fielding_core::FeedPage, StoreError>) -> (FeedPosition, FeedPosition) {
    match outcome {
        Err(StoreError::FeedExpired {
            after, pruned_through, ..
        }) => (after, pruned_through),
        other => panic!("expected FeedExpired, got {other:?}"),
    }
}

/// Pruning removes the oldest records first, at most `limit`, and raises
/// each account's horizon to the highest position it removed (also when
/// it removes an older position later); cursors before the horizon are
/// refused, reading from the start begins after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_raises_horizons_and_expires_the_cursors_before_them() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let a = fixtures::scope();
    let b = fixtures::other_account(a);
    // Written in this order (so their positions rise in it); made at the
    // times given. a2 was made before a1, written after it.
    let a1 = run_changed_at(&test.store, a, at(10)).await;
    let b1 = run_changed_at(&test.store, b, at(20)).await;
    let a2 = run_changed_at(&test.store, a, at(5)).await;
    let a3 = run_changed_at(&test.store, a, at(100)).await;
    let (all_a, _) = read_until(&test.store, a.account_id, None, 3).await;
    let (all_b, _) = read_until(&test.store, b.account_id, None, 1).await;
    let position = |run: &FieldingRun| {
        all_a
            .iter()
            .chain(&all_b)
            .find(|r| r.run_id() == run.id)
            .map(|r| r.position)
            .expect("read")
    };
    assert!(position(&a1) < position(&a2) && position(&a2) < position(&a3));

    // The oldest first: a2 (made at 5), though a1 sorts before it.
    assert_eq!(test.store.prune_changes(at(50), 1).await.expect("prune"), 1);
    assert!(test.changes(&a2.key()).await.expect("changes").is_empty());
    assert_eq!(
        expired(test.store.feed(a.account_id, Some(FeedPosition::ZERO), 10).await),
        (FeedPosition::ZERO, position(&a2))
    );
    assert_eq!(
        expired(test.store.feed(a.account_id, Some(position(&a1)), 10).await),
        (position(&a1), position(&a2)),
        "a1 is kept, but a cursor at it would miss a2"
    );
    // From the start: after the horizon (a1, kept below it, is not listed).
    let page = test.store.feed(a.account_id, None, 10).await.expect("feed");
    assert_eq!(page.records.iter().map(|r| r.run_id()).collect::<Vec<_>>(), [a3.id]);
    let page = test
        .store
        .feed(a.account_id, Some(position(&a2)), 10)
        .await
        .expect("feed");
    assert_eq!(page.records.len(), 1);
    // b untouched.
    assert_eq!(
        test.store
            .feed(b.account_id, Some(FeedPosition::ZERO), 10)
            .await
            .expect("feed")
            .records
            .len(),
        1
    );

    // Then a1 (made at 10) and b1 (20): a's horizon stays at a2, which is
    // higher than a1; b gets one.
    assert_eq!(test.store.prune_changes(at(50), 10).await.expect("prune"), 2);
    assert_eq!(
        expired(test.store.feed(a.account_id, Some(position(&a1)), 10).await).1,
        position(&a2),
        "the horizon never moves down"
    );
    assert_eq!(
        expired(test.store.feed(b.account_id, Some(FeedPosition::ZERO), 10).await),
        (FeedPosition::ZERO, position(&b1))
    );
    assert!(test
        .store
        .feed(b.account_id, None, 10)
        .await
        .expect("feed")
        .records
        .is_empty());
    assert_eq!(
        test.store.prune_changes(at(50), 10).await.expect("prune"),
        0,
        "nothing old left"
    );
    assert_eq!(test.changes(&a3.key()).await.expect("changes").len(), 1);
}

/// Two instances pruning at once share the work: every old record goes
/// exactly once, nobody fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_pruning_at_once_remove_each_record_once() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let other = common::connect_store(&test.guard.url, common::schema_of(&test), "fielding_feed_pruner", 2).await;
    let scope = fixtures::scope();
    for n in 0..40 {
        run_changed_at(&test.store, scope, at(n)).await;
    }
    let recent = run_changed_at(&test.store, scope, at(1000)).await;
    read_until(&test.store, scope.account_id, None, 41).await;
    let pruners: Vec<_> = [test.store.clone(), other]
        .into_iter()
        .map(|store| {
            tokio::spawn(async move {
                let mut removed = 0;
                loop {
                    let n = store.prune_changes(at(500), 3).await.expect("prune");
                    removed += n;
                    if n == 0 {
                        return removed;
                    }
                }
            })
        })
        .collect();
    let mut removed = 0;
    for pruner in pruners {
        removed += pruner.await.expect("pruner");
    }
    assert_eq!(removed, 40);
    let page = test.store.feed(scope.account_id, None, 10).await.expect("feed");
    assert_eq!(page.records.iter().map(|r| r.run_id()).collect::<Vec<_>>(), [recent.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_round_trip_per_account_and_consumer_across_pools() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let other = common::connect_store(
        &test.guard.url,
        common::schema_of(&test),
        "fielding_feed_checkpoints",
        2,
    )
    .await;
    let a = fixtures::scope().account_id;
    let b = fixtures::other_account(fixtures::scope()).account_id;
    let quota = ConsumerName::parse("quota-service").expect("name");
    let billing = ConsumerName::parse(&"b".repeat(ConsumerName::MAX_LEN)).expect("name");
    assert_eq!(test.store.load_feed_checkpoint(a, &quota).await.expect("load"), None);
    for position in [
        FeedPosition::ZERO,
        FeedPosition::new(1843, 2),
        FeedPosition::new(u64::MAX, u64::MAX),
        FeedPosition::new(7, 0),
    ] {
        test.store
            .save_feed_checkpoint(a, &quota, position)
            .await
            .expect("save");
        assert_eq!(
            other.load_feed_checkpoint(a, &quota).await.expect("load"),
            Some(position)
        );
    }
    other
        .save_feed_checkpoint(a, &billing, FeedPosition::new(9, 9))
        .await
        .expect("save");
    assert_eq!(
        test.store.load_feed_checkpoint(a, &quota).await.expect("load"),
        Some(FeedPosition::new(7, 0)),
        "each consumer has its own"
    );
    assert_eq!(
        test.store.load_feed_checkpoint(a, &billing).await.expect("load"),
        Some(FeedPosition::new(9, 9))
    );
    assert_eq!(
        test.store.load_feed_checkpoint(b, &quota).await.expect("load"),
        None,
        "per account"
    );
}

/// The feed of an account nothing was written to: empty, with a cursor
/// that moves on (the bookmark), and a record written later comes after
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_accounts_cursor_moves_on_and_later_records_come_after_it() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let scope = fixtures::scope();
    let page = test.store.feed(scope.account_id, None, 10).await.expect("feed");
    assert!(page.records.is_empty() && !page.has_more);
    assert!(page.next > FeedPosition::ZERO, "a bookmark: {}", page.next);
    let run = live_run(&test.store, scope).await;
    let (records, _) = read_until(&test.store, scope.account_id, Some(page.next), 1).await;
    assert_eq!(records[0].run_id(), run.id);
    assert!(records[0].position > page.next);
}

/// Pruning removes records and raises the horizon in one transaction: a
/// reader sees the records or the horizon that replaces them, never
/// neither (which would let its cursor pass the records silently). The
/// prune is stopped between the two (a lock on the horizons) while a
/// reader reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_the_records_or_the_horizon_never_neither() {
    let app = app_name("prune");
    let Some(test) = common::fresh_store_with(&app, 2).await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let reader = common::connect_store(&test.guard.url, &schema, "fielding_feed_prune_reader", 2).await;
    let scope = fixtures::scope();
    let start = reader.feed(scope.account_id, None, 10).await.expect("feed").next;
    let old = run_changed_at(&test.store, scope, at(1)).await;
    read_until(&reader, scope.account_id, Some(start), 1).await;

    let mut locker = PgConnection::connect(&test.guard.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut locker).await.expect("begin");
    sqlx::query(&format!("LOCK TABLE \"{schema}\".feed_horizons IN EXCLUSIVE MODE"))
        .execute(&mut locker)
        .await
        .expect("lock the horizons");
    let pruning = {
        let store = test.store.clone();
        tokio::spawn(async move { store.prune_changes(at(50), 10).await })
    };
    wait_for_lock_wait(&test.guard.url, &app).await;
    let page = reader.feed(scope.account_id, Some(start), 10).await.expect("feed");
    assert_eq!(
        page.records.iter().map(|r| r.run_id()).collect::<Vec<_>>(),
        [old.id],
        "the record, while its removal has not committed"
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.expect("unlock");
    assert_eq!(pruning.await.expect("task").expect("prune"), 1);
    let (_, pruned_through) = expired(reader.feed(scope.account_id, Some(start), 10).await);
    assert_eq!(pruned_through, page.records[0].position, "then the horizon");
}

/// The backend of `app` whose last statement started with `prefix`.
async fn backend_pid(url: &str, app: &str, prefix: &str) -> i32 {
    let mut admin = PgConnection::connect(url).await.expect("admin");
    for _ in 0..1000 {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2 LIMIT 1",
        )
        .bind(app)
        .bind(format!("{prefix}%"))
        .fetch_optional(&mut admin)
        .await
        .expect("pg_stat_activity");
        if let Some(pid) = pid {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no backend of {app} ran {prefix}");
}

async fn terminate(url: &str, pid: i32) {
    let mut admin = PgConnection::connect(url).await.expect("admin");
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .expect("pg_terminate_backend");
    assert!(done, "pg_terminate_backend({pid})");
}

/// The wake-up tasks survive losing their connections: the listener
/// connects again and wakes every watcher (what was sent meanwhile is
/// lost), the sender connects again and sends what it could not; writes
/// never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_and_the_sender_reconnect_after_their_connections_are_killed() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let (watcher_app, writer_app) = (app_name("watcher"), app_name("writer"));
    let watcher = common::connect_store(&test.guard.url, &schema, &watcher_app, 2).await;
    let writer = common::connect_store(&test.guard.url, &schema, &writer_app, 2).await;
    let scope = fixtures::scope();
    let quiet = fixtures::other_account(scope);
    let notifier = watcher.change_notifier().expect("a notifier");
    let mut on_account = notifier.subscribe(scope.account_id);
    let mut on_quiet = notifier.subscribe(quiet.account_id);
    assert!(woken(&mut on_account, PATIENCE).await, "the first connect");
    assert!(woken(&mut on_quiet, PATIENCE).await);

    // The listener's connection dies: every watcher is woken once it is
    // back, and notifications flow again.
    terminate(
        &test.guard.url,
        backend_pid(&test.guard.url, &watcher_app, "LISTEN").await,
    )
    .await;
    assert!(woken(&mut on_quiet, PATIENCE).await, "woken after the reconnect");
    assert!(woken(&mut on_account, PATIENCE).await);
    live_run(&writer, scope).await;
    assert!(
        woken(&mut on_account, Duration::from_secs(10)).await,
        "a notification after the reconnect"
    );

    // The sender's connection dies: the next write still succeeds, and its
    // wake-up arrives once the sender is connected again.
    terminate(
        &test.guard.url,
        backend_pid(&test.guard.url, &writer_app, "SELECT pg_notify").await,
    )
    .await;
    live_run(&writer, scope).await;
    assert!(
        woken(&mut on_account, Duration::from_secs(10)).await,
        "sent after the reconnect"
    );
    assert!(watcher.feed_listener_running());
}

/// Two batches of one job by the same holder at once, over the same
/// items (a runner bug, but it must not write a run twice): both read the
/// items as pending, then write one after the other; the second finds its
/// runs moved or its items recorded and writes nothing. Every run is
/// written once and every item recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_of_one_holder_at_once_write_each_item_once() {
    let app = app_name("twice");
    let Some(test) = common::fresh_store_with(&app, 4).await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let scope = fixtures::scope();
    let run = live_run(&test.store, scope).await;
    let missing = fixtures::target_group_id();
    for items in [vec![run.target_group_id], vec![missing]] {
        let job = fixtures::bulk_job(run.scope(), &format!("twice-{}", items[0]), BulkAction::Pause, &items);
        test.create_bulk_job(&job).await.expect("create");
        let held = claim(&test.store).await;
        let mut locker = PgConnection::connect(&test.guard.url).await.expect("connect");
        sqlx::query("BEGIN").execute(&mut locker).await.expect("begin");
        sqlx::query(&format!(
            "LOCK TABLE \"{schema}\".fielding_bulk_job_items IN ACCESS EXCLUSIVE MODE"
        ))
        .execute(&mut locker)
        .await
        .expect("lock the items");
        let batches: Vec<_> = (0..2u64)
            .map(|n| {
                let (store, job, items) = (test.store.clone(), job.clone(), items.clone());
                tokio::spawn(async move {
                    let mut decide = |_: TargetGroupId, run: Option<&FieldingRun>| match run {
                        None => ItemUpdate::Record(fielding_core::BulkItemOutcome::Failed(
                            fielding_core::BulkItemFailure::TargetGroupNotFound,
                        )),
                        Some(run) => {
                            let (next, change) = fixtures::change(run, 300 + n, UserId::random()).expect("a change");
                            ItemUpdate::Write {
                                expected: run.version,
                                run: next,
                                change,
                            }
                        }
                    };
                    store
                        .apply_bulk_items(&job.key(), held.token, &items, &mut decide)
                        .await
                })
            })
            .collect();
        for _ in 0..1000 {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&app)
            .fetch_one(&mut locker)
            .await
            .expect("pg_stat_activity");
            if waiting == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sqlx::query("ROLLBACK").execute(&mut locker).await.expect("unlock");
        let mut answered = 0;
        for batch in batches {
            match batch.await.expect("task") {
                Ok(outcomes) => {
                    assert_eq!(outcomes.len(), 1);
                    answered += 1;
                }
                Err(StoreError::VersionConflict { .. }) => {}
                Err(err @ StoreError::Backend { retryable: true, .. }) => eprintln!("the second batch: {err}"),
                Err(err) => panic!("unexpected: {err}"),
            }
        }
        assert!(answered >= 1, "one of them wrote");
        let stored = test.get_bulk_job(&job.key()).await.expect("get").expect("the job");
        assert!(stored.items.iter().all(|item| item.outcome.is_some()), "recorded");
        assert!(test
            .finish_bulk_job(&job.key(), held.token, fielding_core::BulkJobStatus::Completed, now())
            .await
            .expect("finish"));
    }
    assert_eq!(
        test.changes(&run.key()).await.expect("changes").len(),
        2,
        "the run was written once"
    );
}

/// A watcher woken for a record that an older open transaction holds back
/// keeps re-reading on a short doubling chain, so it gets the record soon
/// after that transaction ends, although the end sends no wake-up (with
/// `LISTEN` up, the poll interval alone would be the 10 s safety net).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_held_back_by_an_open_transaction_reaches_a_woken_watcher_soon_after_it_ends() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let scope = fixtures::scope();
    let run = live_run(&test.store, scope).await;
    let (_, head) = read_until(&test.store, scope.account_id, None, 1).await;
    let notifier = test.store.change_notifier().expect("the store wakes watchers");
    let deadline = std::time::Instant::now() + PATIENCE;
    while !notifier.sees_every_writer() {
        assert!(std::time::Instant::now() < deadline, "the listener never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let service = fielding_core::FieldingService::new(Arc::new(test.store.clone()));
    assert_eq!(service.feed_poll_interval(), fielding_core::SAFETY_NET_POLL_INTERVAL);

    // The blocker: a transaction with an id, left open.
    let mut blocker = PgConnection::connect(&test.guard.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut blocker).await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut blocker)
        .await
        .expect("take an id");

    let waiting = {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .wait_for_changes(scope.account_id, Some(head), 10, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    write_once(&test.store, &run, 1).await; // wakes the watcher; held back
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the record is held back while the blocker is open"
    );
    sqlx::query("COMMIT").execute(&mut blocker).await.expect("commit");
    let ended = std::time::Instant::now();
    let page = waiting.await.expect("the waiting task").expect("the long poll");
    let delay = ended.elapsed();
    assert_eq!(page.records.len(), 1, "{page:?}");
    assert!(
        delay < Duration::from_secs(3),
        "the record came {delay:?} after the blocker ended (the safety-net poll is 10 s)"
    );
}
