//! The change feed on a SQLite file: concurrent writers (two store
//! instances on one file, group commit, bulk batches) with a reader
//! following the feed; pruning and expired cursors; consumers' checkpoints
//! across reopening; wake-ups in this process, and a second process's
//! writes found by polling.
//!
//! The two-process test re-runs this test binary as a child
//! (`current_exe() --exact feed_child_process`) with `FIELDING_FEED_CHILD`
//! set; `feed_child_process` does nothing without it.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::{
    AccountId, Action, BulkAction, BulkClaim, BulkJobCreated, ClaimToken, ConsumerName, FeedPosition, FeedRecord,
    FieldingError, FieldingRun, FieldingRunId, FieldingService, FieldingStore, ItemUpdate, Scope, Status, StoreError,
    TargetGroupId, Timestamp, UserId,
};
use fielding_sqlite::{rusqlite, Durability, SqliteOptions, SqliteStore};
use fielding_testkit::fixtures;

const CHILD: &str = "FIELDING_FEED_CHILD";

/// A store on a file in its own temporary directory (the directory goes
/// with the guard). Not the testkit's `Guarded` wrapper: this file tests
/// the store's own feed methods.
#[tokio::test]
async fn the_feed_follows_the_rules_through_the_service() {
    fielding_testkit::scenarios::feed_follows_the_rules(Arc::new(common::temp_store().await)).await;
}

async fn temp_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("fielding.db")).await.unwrap();
    (store, dir)
}

fn now() -> Timestamp {
    Timestamp::from(chrono::Utc::now())
}

fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_900_000_000_000 + millis).unwrap()
}

async fn insert(store: &dyn FieldingStore, scope: Scope) -> FieldingRun {
    let run = fixtures::run().with_scope(scope).with_status(Status::Live).build();
    store.insert(&run, &fixtures::creation(&run)).await.unwrap();
    run
}

/// One change to the run at `run`'s key, made on whatever version is
/// stored, retried on conflicts: the writes of one run are serialized by
/// compare-and-swap, whichever store instance they go through.
async fn change(store: &SqliteStore, run: &FieldingRun, tag: u64, by: UserId) {
    loop {
        let current = store.get(&run.key()).await.unwrap().expect("the run");
        let (next, record) = fixtures::change(&current, tag, by).unwrap();
        match store.compare_and_swap(current.version, &next, &record).await {
            Ok(()) => return,
            Err(StoreError::VersionConflict { .. }) => continue,
            Err(err) if err.is_retryable() => continue,
            Err(err) => panic!("compare_and_swap: {err}"),
        }
    }
}

/// A bulk job over `runs` applying one change to each, in batches of 3.
async fn bulk_change(store: &SqliteStore, scope: Scope, runs: &[FieldingRun], n: usize, tags: &AtomicU64) {
    let ids: Vec<TargetGroupId> = runs.iter().map(|run| run.target_group_id).collect();
    let job = fixtures::bulk_job(scope, &format!("feed-{n}"), BulkAction::Pause, &ids);
    assert_eq!(store.create_bulk_job(&job).await.unwrap(), BulkJobCreated::Created);
    let claim = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: now().checked_add(TimeDelta::seconds(600)).unwrap(),
    };
    // The jobs before this one are finished: this is the one to claim.
    let held = store
        .claim_bulk_job(now(), &claim)
        .await
        .unwrap()
        .expect("a job to claim");
    assert_eq!(held.id, job.id);
    let by = UserId::random();
    for batch in ids.chunks(3) {
        loop {
            let mut decide = |_: TargetGroupId, run: Option<&FieldingRun>| {
                let run = run.expect("the run");
                let (next, record) = fixtures::change(run, tags.fetch_add(1, Ordering::Relaxed), by).unwrap();
                ItemUpdate::Write {
                    expected: run.version,
                    run: next,
                    change: record,
                }
            };
            match store
                .apply_bulk_items(&job.key(), claim.token, batch, &mut decide)
                .await
            {
                Ok(_) => break,
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(err) => panic!("apply_bulk_items: {err}"),
            }
        }
    }
    assert!(store
        .finish_bulk_job(&job.key(), claim.token, fielding_core::BulkJobStatus::Completed, now())
        .await
        .unwrap());
}

/// Reads `account`'s feed from `cursor` in pages of `limit` until a page
/// says nothing more is there, checking each page's promises.
async fn drain(
    store: &dyn FieldingStore,
    account: AccountId,
    cursor: &mut Option<FeedPosition>,
    limit: usize,
    seen: &mut Vec<FeedRecord>,
) {
    loop {
        let page = store.feed(account, *cursor, limit).await.unwrap();
        check_page(&page, *cursor, limit, account);
        seen.extend(page.records);
        *cursor = Some(page.next);
        if !page.has_more {
            return;
        }
    }
}

fn check_page(page: &fielding_core::FeedPage, after: Option<FeedPosition>, limit: usize, account: AccountId) {
    assert!(page.records.len() <= limit);
    let mut previous = after;
    for record in &page.records {
        assert!(Some(record.position) > previous, "in feed order, after the cursor");
        assert_eq!(record.scope.account_id, account, "only the account's records");
        previous = Some(record.position);
    }
    assert!(
        Some(page.next) >= previous,
        "next is never before the last record nor the cursor"
    );
    if page.has_more {
        assert_eq!(page.records.len(), limit, "a page with more is full");
    }
}

/// Every record of `runs` (the full log, from `changes`) must be in `seen`
/// exactly once, each run's in version order.
async fn check_against_the_log(store: &dyn FieldingStore, runs: &[FieldingRun], seen: &[FeedRecord]) -> usize {
    let mut by_run: BTreeMap<FieldingRunId, Vec<u64>> = BTreeMap::new();
    let mut once = HashSet::new();
    for record in seen {
        assert!(
            once.insert((record.change.run_id, record.change.version)),
            "seen twice: {} version {}",
            record.change.run_id,
            record.change.version
        );
        by_run
            .entry(record.change.run_id)
            .or_default()
            .push(record.change.version.get());
    }
    let mut total = 0;
    for run in runs {
        let log = store.changes(&run.key()).await.unwrap();
        let versions: Vec<u64> = log.iter().map(|c| c.version.get()).collect();
        assert_eq!(
            by_run.remove(&run.id).unwrap_or_default(),
            versions,
            "run {}: every record once, in version order",
            run.id
        );
        for record in seen.iter().filter(|r| r.change.run_id == run.id) {
            assert_eq!(record.scope, run.scope());
            assert_eq!(
                log[record.change.version.get() as usize - 1],
                record.change,
                "as stored"
            );
        }
        total += log.len();
    }
    assert!(by_run.is_empty(), "records of runs never written: {by_run:?}");
    total
}

/// Writers on eight tasks through two store instances on one file (each
/// with its own writer connection, so their transactions contend for
/// SQLite's lock as two processes' would, and each group-committing its
/// tasks' writes), one of them running bulk batches, and a reader
/// following the feed in small pages the whole time, on a reader thread:
/// the reader ends up with the full log, nothing skipped, nothing twice,
/// each run in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_concurrent_writers_sees_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let options = SqliteOptions::default().with_durability(Durability::Normal);
    let first = Arc::new(SqliteStore::open_with(&path, options.clone()).await.unwrap());
    let second = Arc::new(SqliteStore::open_with(&path, options).await.unwrap());
    follow_concurrent_writers(first, second).await;
}

/// The same on a private in-memory database: one connection, so the
/// reader's pages are read on the writer thread, inside the write groups'
/// transactions (before their writes and before they take positions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_on_the_writer_thread_sees_every_record_once_in_order() {
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    follow_concurrent_writers(Arc::clone(&store), store).await;
}

async fn follow_concurrent_writers(first: Arc<SqliteStore>, second: Arc<SqliteStore>) {
    const WRITERS: usize = 8;
    const WRITES: u64 = 120;
    let scope = fixtures::scope();
    let account = scope.account_id;
    let mut runs = Vec::new();
    for n in 0..4 {
        let scope = if n % 2 == 0 {
            fixtures::other_target_group(scope)
        } else {
            fixtures::other_project(scope)
        };
        runs.push(insert(&*first, scope).await);
    }
    let bulk_runs = {
        let mut bulk = Vec::new();
        for _ in 0..6 {
            bulk.push(insert(&*second, fixtures::other_target_group(scope)).await);
        }
        bulk
    };
    // Another account's run, written in between: its positions are gaps
    // in this account's feed.
    let elsewhere = insert(&*first, fixtures::other_account(scope)).await;

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (Arc::clone(&first), Arc::clone(&done));
        tokio::spawn(async move {
            let (mut cursor, mut seen, mut reads) = (None, Vec::new(), 0u64);
            loop {
                // The flag first: once it is set, every write has returned,
                // so the pages read after it hold everything.
                let finished = done.load(Ordering::SeqCst);
                let before = seen.len();
                drain(&*store, account, &mut cursor, 7, &mut seen).await;
                reads += 1;
                if finished {
                    return (seen, reads);
                }
                if seen.len() == before {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let tags = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(if w % 2 == 0 { &first } else { &second });
        let (runs, elsewhere, tags) = (runs.clone(), elsewhere.clone(), Arc::clone(&tags));
        writers.push(tokio::spawn(async move {
            let by = UserId::random();
            for i in 0..WRITES {
                let run = if w == 0 && i % 4 == 3 {
                    &elsewhere
                } else {
                    &runs[(w + i as usize) % runs.len()]
                };
                change(&store, run, tags.fetch_add(1, Ordering::Relaxed), by).await;
            }
        }));
    }
    {
        let (store, tags) = (Arc::clone(&second), Arc::clone(&tags));
        let bulk_runs = bulk_runs.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..5 {
                bulk_change(&store, scope, &bulk_runs, n, &tags).await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (seen, reads) = reader.await.unwrap();

    let all: Vec<FieldingRun> = runs.iter().chain(&bulk_runs).cloned().collect();
    let total = check_against_the_log(&*first, &all, &seen).await;
    assert_eq!(seen.len(), total);
    assert_eq!(total, 4 + 6 + (WRITERS as u64 * WRITES - WRITES / 4) as usize + 5 * 6);
    eprintln!(
        "the reader saw {} records in {reads} passes: 0 skipped, 0 twice",
        seen.len()
    );
    // Another reader from the start, in one page, agrees.
    let mut again = Vec::new();
    drain(&*second, account, &mut None, 1000, &mut again).await;
    assert_eq!(again, seen);
    let other = second.feed(elsewhere.account_id, None, 1000).await.unwrap();
    assert_eq!(other.records.len() as u64, 1 + WRITES / 4);
}

/// A quiet account's cursor moves with the store's counter, past other
/// accounts' records, and the next record of the account still comes
/// after it.
#[tokio::test]
async fn a_quiet_accounts_cursor_is_bookmarked_past_other_accounts_records() {
    let (store, _dir) = temp_store().await;
    let scope = fixtures::scope();
    let run = insert(&store, scope).await;
    let page = store.feed(scope.account_id, None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.next, page.records[0].position);
    let busy = fixtures::other_account(scope);
    for _ in 0..5 {
        insert(&store, fixtures::other_target_group(busy)).await;
    }
    let quiet = store.feed(scope.account_id, Some(page.next), 10).await.unwrap();
    assert!(quiet.records.is_empty() && !quiet.has_more);
    assert_eq!(quiet.next, FeedPosition::new(page.next.major() + 5, 0), "the bookmark");
    let (next, record) = fixtures::change(&run, 1, UserId::random()).unwrap();
    store.compare_and_swap(run.version, &next, &record).await.unwrap();
    let page = store.feed(scope.account_id, Some(quiet.next), 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].change, record);
    assert!(page.records[0].position > quiet.next);
    // A cursor past everything handed out (from another file, say) is
    // refused: reading on from it would skip what comes until the counter
    // passes it.
    let far = FeedPosition::new(u64::MAX, 7);
    match store.feed(scope.account_id, Some(far), 10).await {
        Err(StoreError::FeedExpired { after, .. }) => assert_eq!(after, far),
        other => panic!("a foreign cursor answered {other:?}"),
    }
}

/// Records changed at `times`, one run each, in `scope`'s account.
async fn records_at(store: &dyn FieldingStore, scope: Scope, times: &[i64]) -> Vec<FieldingRun> {
    let mut runs = Vec::new();
    for &time in times {
        let run = fixtures::run()
            .with_scope(fixtures::other_target_group(scope))
            .with_changed_at(at(time))
            .build();
        store.insert(&run, &fixtures::creation(&run)).await.unwrap();
        runs.push(run);
    }
    runs
}

#[tokio::test]
async fn pruning_is_bounded_oldest_first_and_expires_the_cursors_before_it() {
    let (store, _dir) = temp_store().await;
    let scope = fixtures::scope();
    let account = scope.account_id;
    let other = fixtures::other_account(scope);
    // Positions 1..=5 in this account, written at times that are not in
    // position order (the fourth is the oldest), and one in another.
    let runs = records_at(&store, scope, &[20, 30, 40, 10, 50]).await;
    let others = records_at(&store, other, &[15]).await;
    let full = store.feed(account, None, 100).await.unwrap();
    let position = |n: usize| full.records[n].position;
    assert_eq!(full.records.len(), 5);

    // Bounded, oldest first: the fourth (time 10), then the other
    // account's (15).
    assert_eq!(store.prune_changes(at(35), 2).await.unwrap(), 2);
    assert!(store.changes(&runs[3].key()).await.unwrap().is_empty());
    assert!(store.changes(&others[0].key()).await.unwrap().is_empty());
    assert_eq!(store.changes(&runs[0].key()).await.unwrap().len(), 1, "kept");
    // The horizon is the fourth's position: the first three, still kept,
    // are below it and never returned again; cursors before it expire.
    let from_start = store.feed(account, None, 100).await.unwrap();
    assert_eq!(
        from_start.records.iter().map(|r| r.position).collect::<Vec<_>>(),
        [position(4)]
    );
    for after in [position(0), position(2)] {
        match store.feed(account, Some(after), 100).await {
            Err(StoreError::FeedExpired {
                account: a,
                after: cursor,
                pruned_through,
            }) => {
                assert_eq!((a, cursor, pruned_through), (account, after, position(3)));
            }
            other => panic!("expected FeedExpired, got {other:?}"),
        }
    }
    let page = store.feed(account, Some(position(3)), 100).await.unwrap();
    assert_eq!(page.records.len(), 1, "a cursor at the horizon is fine");
    // The service says so with its own error.
    let service = FieldingService::new(Arc::new(store));
    let err = service.read_feed(account, Some(position(0)), 10).await.unwrap_err();
    assert!(
        matches!(err, FieldingError::CursorExpired { after } if after == position(0)),
        "{err:?}"
    );
    let store = service.store();

    // The rest of what is old enough goes (times 20 and 30).
    assert_eq!(store.prune_changes(at(35), 100).await.unwrap(), 2);
    assert_eq!(store.prune_changes(at(35), 100).await.unwrap(), 0, "nothing left");
    assert_eq!(
        store.prune_changes(at(1_000), 0).await.unwrap(),
        0,
        "a limit of 0 removes nothing"
    );
    // Pruning everything, then writing: numbers are never handed out
    // again (the counter is not MAX(position) + 1).
    assert_eq!(store.prune_changes(at(1_000), 100).await.unwrap(), 2);
    let newest = store.feed(account, None, 100).await.unwrap();
    assert!(newest.records.is_empty());
    assert!(newest.next >= position(4));
    let later = records_at(&**store, scope, &[60]).await;
    let page = store.feed(account, Some(position(4)), 100).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].run_id(), later[0].id);
    assert!(
        page.records[0].position > position(4),
        "after every number handed out before"
    );
    // The other account's cursor before its pruned record expired too.
    assert!(matches!(
        store.feed(other.account_id, Some(FeedPosition::ZERO), 10).await,
        Err(StoreError::FeedExpired { .. })
    ));
}

/// A file written before the feed (schema version 4) is migrated on
/// opening: its records are numbered by age, each run's in version order,
/// with their runs' scopes, and new records go after them.
#[tokio::test]
async fn a_version_4_file_gets_its_records_numbered_and_new_ones_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let scope = fixtures::scope();
    let mut runs = Vec::new();
    for n in 0..3 {
        let mut run = insert(&store, fixtures::other_target_group(scope)).await;
        for tag in 0..n {
            let (next, record) = fixtures::change(&run, tag, UserId::random()).unwrap();
            store.compare_and_swap(run.version, &next, &record).await.unwrap();
            run = next;
        }
        runs.push(run);
    }
    let elsewhere = insert(&store, fixtures::other_account(scope)).await;
    store.close().await;
    common::back_to_version_4(&rusqlite::Connection::open(&path).unwrap());

    let store = SqliteStore::open(&path).await.unwrap();
    let page = store.feed(scope.account_id, None, 100).await.unwrap();
    let mut expected = Vec::new();
    for run in &runs {
        for change in store.changes(&run.key()).await.unwrap() {
            expected.push((run.id, change.version.get(), run.scope(), change));
        }
    }
    // Numbered by age across the whole file: by the run's latest
    // changed_at up to each version (so each run keeps its version order),
    // then run and version; the other account's records in between.
    let mut latest = std::collections::HashMap::new();
    let mut aged: Vec<_> = expected
        .into_iter()
        .map(|(id, version, scope, change)| {
            let at = latest.entry(id).or_insert(change.changed_at);
            *at = (*at).max(change.changed_at);
            ((*at, id.as_str().to_owned(), version), (id, version, scope, change))
        })
        .collect();
    aged.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<_> = aged.into_iter().map(|(_, record)| record).collect();
    let got: Vec<_> = page
        .records
        .iter()
        .map(|r| (r.change.run_id, r.change.version.get(), r.scope, r.change.clone()))
        .collect();
    assert_eq!(got, expected);
    let mut all: Vec<u64> = page.records.iter().map(|r| r.position.major()).collect();
    let other = store.feed(elsewhere.account_id, None, 100).await.unwrap();
    all.extend(other.records.iter().map(|r| r.position.major()));
    all.sort_unstable();
    assert_eq!(all, (1..=7).collect::<Vec<u64>>(), "every record numbered, 1 to 7");
    assert_eq!(page.next, FeedPosition::new(7, 0));
    let (next, record) = fixtures::change(&runs[0], 99, UserId::random()).unwrap();
    store.compare_and_swap(runs[0].version, &next, &record).await.unwrap();
    let after = store.feed(scope.account_id, Some(page.next), 100).await.unwrap();
    assert_eq!(after.records.len(), 1);
    assert_eq!(after.records[0].position, FeedPosition::new(8, 0));
    store.close().await;
}

#[tokio::test]
async fn checkpoints_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let (a, b) = (fixtures::account(11), fixtures::account(12));
    let quota = ConsumerName::parse("quota-service").unwrap();
    let billing = ConsumerName::parse("billing").unwrap();
    assert_eq!(store.load_feed_checkpoint(a, &quota).await.unwrap(), None);
    store
        .save_feed_checkpoint(a, &quota, FeedPosition::new(5, 0))
        .await
        .unwrap();
    store
        .save_feed_checkpoint(a, &quota, FeedPosition::new(9, 0))
        .await
        .unwrap();
    store
        .save_feed_checkpoint(a, &billing, FeedPosition::new(3, 2))
        .await
        .unwrap();
    store
        .save_feed_checkpoint(b, &quota, FeedPosition::new(1, 0))
        .await
        .unwrap();
    assert_eq!(
        store.load_feed_checkpoint(a, &quota).await.unwrap(),
        Some(FeedPosition::new(9, 0))
    );
    store.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.load_feed_checkpoint(a, &quota).await.unwrap(),
        Some(FeedPosition::new(9, 0)),
        "the last one saved"
    );
    assert_eq!(
        store.load_feed_checkpoint(a, &billing).await.unwrap(),
        Some(FeedPosition::new(3, 2)),
        "both numbers"
    );
    assert_eq!(
        store.load_feed_checkpoint(b, &quota).await.unwrap(),
        Some(FeedPosition::new(1, 0))
    );
    assert_eq!(store.load_feed_checkpoint(b, &billing).await.unwrap(), None);
    let beyond = store
        .save_feed_checkpoint(a, &quota, FeedPosition::new(u64::MAX, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(beyond, StoreError::Backend { retryable: false, .. }),
        "{beyond}"
    );
    assert_eq!(
        store.load_feed_checkpoint(a, &quota).await.unwrap(),
        Some(FeedPosition::new(9, 0))
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_accounts_subscribers_in_this_process() {
    let (store, _dir) = temp_store().await;
    let store = Arc::new(store);
    let notifier = store.change_notifier().expect("the SQLite store sends wake-ups");
    let scope = fixtures::scope();
    let mut subscription = notifier.subscribe(scope.account_id);
    let mut elsewhere = notifier.subscribe(fixtures::other_account(scope).account_id);
    let run = insert(&*store, scope).await;
    tokio::time::timeout(Duration::from_secs(5), subscription.changed())
        .await
        .expect("woken by the insert");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), elsewhere.changed())
            .await
            .is_err(),
        "another account's watchers sleep on"
    );

    // A long poll with a poll interval far beyond the test's patience
    // returns on the wake-up alone.
    let service = FieldingService::new(store.clone()).with_feed_poll_interval(Duration::from_secs(25));
    let cursor = service.read_feed(scope.account_id, None, 10).await.unwrap().next;
    let waiting = {
        let service = service.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let page = service
                .wait_for_changes(scope.account_id, Some(cursor), 10, Duration::from_secs(20))
                .await
                .unwrap();
            (page, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (next, record) = fixtures::change(&run, 1, UserId::random()).unwrap();
    store.compare_and_swap(run.version, &next, &record).await.unwrap();
    let (page, waited) = waiting.await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].change, record);
    assert!(waited < Duration::from_secs(10), "woken, not polled: {waited:?}");
}

// ---- A second process on the same file ----

/// How long a child may take, and how long the parent waits for a line.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

fn say(what: &str, n: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "FIELDING {what} {n}").unwrap();
    out.flush().unwrap();
}

/// The child side: opens the file, waits for the `go` file, inserts a run
/// in account `FIELDING_FEED_ACCOUNT` and reports `INSERTED`.
#[test]
fn feed_child_process() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let path = std::env::var("FIELDING_FEED_PATH").expect("FIELDING_FEED_PATH");
    let account: i64 = std::env::var("FIELDING_FEED_ACCOUNT").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).await.expect("open");
        say("OPEN", 0);
        let deadline = tokio::time::Instant::now() + CHILD_DEADLINE;
        let go = Path::new(&path).with_extension("go");
        while !go.exists() {
            assert!(tokio::time::Instant::now() < deadline, "child: no go file in time");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let scope = fixtures::other_target_group(Scope::new(
            fixtures::account(account),
            fixtures::project_id(),
            fixtures::target_group_id(),
        ));
        insert(&store, scope).await;
        say("INSERTED", 1);
        store.close().await;
    });
}

/// The child, killed if the test ends early, its stdout read on a thread.
struct ChildProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildProcess {
    fn spawn(path: &Path, account: AccountId) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "feed_child_process", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("FIELDING_FEED_PATH", path)
            .env("FIELDING_FEED_ACCOUNT", account.get().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the test binary as a child");
        let stdout = child.stdout.take().expect("a piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (at most [`CHILD_DEADLINE`]) for the child's `FIELDING <what>` line.
    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + CHILD_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(err) => panic!("the child did not report {what}: {err}"),
            };
            // The test harness may print `test feed_child_process ... ` first.
            let Some((_, report)) = line.split_once("FIELDING ") else {
                continue;
            };
            if report.split_whitespace().next() == Some(what) {
                return;
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A long poll in this process, waiting on a file another process writes
/// to: no wake-up crosses processes, so the poll interval finds the
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_finds_another_processs_write_by_polling() {
    const POLL: Duration = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let account = fixtures::scope().account_id;
    let service = FieldingService::new(store.clone()).with_feed_poll_interval(POLL);
    let cursor = service.read_feed(account, None, 10).await.unwrap().next;

    let mut child = ChildProcess::spawn(&path, account);
    child.wait_for("OPEN");
    let waiting = {
        let service = service.clone();
        tokio::spawn(async move {
            service
                .wait_for_changes(account, Some(cursor), 10, Duration::from_secs(20))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(POLL * 2).await;
    assert!(!waiting.is_finished(), "nothing to find yet");
    std::fs::write(path.with_extension("go"), b"").unwrap();
    child.wait_for("INSERTED");
    let inserted = Instant::now();
    let page = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long poll returns")
        .unwrap();
    let found = inserted.elapsed();
    let status = child.child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    assert_eq!(page.records.len(), 1, "{page:?}");
    assert_eq!(page.records[0].scope.account_id, account);
    assert_eq!(page.records[0].change.action, Action::Launch);
    assert!(found < Duration::from_secs(5), "found by the next poll: {found:?}");
    eprintln!("another process's record found {found:?} after its insert was reported");

    // And the child's record is the last one: its position is above the
    // cursor the waiting reader started from.
    assert!(page.records[0].position > cursor);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let counter: i64 = conn
        .query_row("SELECT last_position FROM feed_counter", [], |row| row.get(0))
        .unwrap();
    assert_eq!(page.records[0].position, FeedPosition::new(counter as u64, 0));
}
