//! Tests of `MemoryStore` itself: the `FieldingStore` contract (scope
//! isolation, uniqueness, compare-and-swap, change records), seeding and
//! sharing between clones. Fault injection is `fielding_testkit::FaultyStore`,
//! tested in the kit; the fixtures are the kit's too.

use std::sync::Arc;

use chrono::TimeDelta;
use fielding_core::{
    AccountId, Action, ChangeRecord, FieldingRun, FieldingRunId, FieldingStore, RunKey, Scope, Status, StoreError,
    Timestamp, UserId, Version,
};
use fielding_memory::{MemoryStore, SeedError};
use fielding_testkit::fixtures;

fn t0() -> Timestamp {
    "2030-03-01T09:00:00Z".parse().unwrap()
}

fn v(n: u64) -> Version {
    Version::new(n).unwrap()
}

/// The change record that produced `run` at its version.
fn record(run: &FieldingRun, action: Action) -> ChangeRecord {
    ChangeRecord::created(run, action)
}

/// A history `1..=run.version` for `run`.
fn history(run: &FieldingRun) -> Vec<ChangeRecord> {
    (1..=run.version.get())
        .map(|n| ChangeRecord {
            version: v(n),
            ..record(run, Action::UpdateDates)
        })
        .collect()
}

/// `run` one version on, paused, with its change record.
fn next(run: &FieldingRun) -> (FieldingRun, ChangeRecord) {
    let next = FieldingRun {
        version: run.version.next().unwrap(),
        status: Status::Paused,
        last_changed_at: run.last_changed_at.checked_add(TimeDelta::minutes(1)).unwrap(),
        ..run.clone()
    };
    let change = ChangeRecord {
        status_from: Some(run.status),
        start_from: Some(run.start_fielding_at),
        end_from: Some(run.end_fielding_at),
        ..record(&next, Action::Pause)
    };
    (next, change)
}

fn live_run() -> FieldingRun {
    fixtures::run().with_status(Status::Live).with_now(t0()).build()
}

/// `key` with one part of its scope replaced.
fn other_account(key: RunKey) -> RunKey {
    let mut key = key;
    key.scope.account_id = AccountId::new(if key.scope.account_id.get() == 1 { 2 } else { 1 }).unwrap();
    key
}

fn other_project(key: RunKey) -> RunKey {
    let mut key = key;
    key.scope.project_id = fixtures::project_id();
    key
}

fn other_target_group(key: RunKey) -> RunKey {
    let mut key = key;
    key.scope.target_group_id = fixtures::target_group_id();
    key
}

fn run_at(key: RunKey, run: &FieldingRun) -> FieldingRun {
    FieldingRun {
        account_id: key.scope.account_id,
        project_id: key.scope.project_id,
        target_group_id: key.scope.target_group_id,
        ..run.clone()
    }
}

#[track_caller]
fn assert_history_error(result: Result<(), SeedError>, needle: &str) {
    match result {
        Err(SeedError::History(message)) => assert!(message.contains(needle), "{message:?} mentions {needle:?}"),
        other => panic!("expected a history error about {needle:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Sharing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn clones_share_runs_and_change_records() {
    let store = MemoryStore::new();
    let clone = store.clone();
    let run = live_run();
    clone.insert(&run, &record(&run, Action::Launch)).await.unwrap();
    assert_eq!(store.run(&run.key()), Some(run.clone()));
    assert_eq!(store.len(), 1);

    let (paused, change) = next(&run);
    store.compare_and_swap(run.version, &paused, &change).await.unwrap();
    assert_eq!(clone.get(&run.key()).await.unwrap(), Some(paused));
    assert_eq!(clone.change_records(&run.key()).len(), 2);
}

#[test]
fn separate_stores_share_nothing() {
    let a = MemoryStore::new();
    let b = MemoryStore::new();
    let run = live_run();
    a.seed(run.clone()).unwrap();
    assert!(b.is_empty());
    assert_eq!(b.run(&run.key()), None);
}

// ---------------------------------------------------------------------------
// Seeding
// ---------------------------------------------------------------------------

#[test]
fn seed_stores_the_run_as_given_with_one_record_at_its_version() {
    let store = MemoryStore::new();
    let run = fixtures::run()
        .with_status(Status::Paused)
        .with_version(7)
        .with_now(t0())
        .build();
    store.seed(run.clone()).unwrap();
    assert_eq!(store.run(&run.key()), Some(run.clone()));
    let changes = store.change_records(&run.key());
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].version, v(7));
    assert_eq!(changes[0].run_id, run.id);
    assert_eq!(changes[0].status_to, Status::Paused);
    assert_eq!(changes[0].action, Action::Launch);
    assert_eq!(changes[0].status_from, None);
}

#[test]
fn seed_of_a_scheduled_run_records_a_schedule_action() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_now(t0()).build();
    store.seed(run.clone()).unwrap();
    assert_eq!(store.change_records(&run.key())[0].action, Action::Schedule);
}

#[test]
fn seed_refuses_a_second_run_for_the_same_scope() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let second = fixtures::run().with_scope(run.scope()).build();
    match store.seed(second) {
        Err(SeedError::Store(StoreError::AlreadyExists { scope })) => assert_eq!(scope, run.scope()),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.runs(), vec![run]);
}

#[test]
fn seed_refuses_a_taken_run_id_in_another_scope() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let same_id = fixtures::run().with_id(run.id).build();
    match store.seed(same_id) {
        Err(SeedError::Store(err @ StoreError::Backend { .. })) => assert!(!err.is_retryable()),
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert_eq!(store.len(), 1);
}

#[test]
fn seed_with_history_stores_the_given_records() {
    let store = MemoryStore::new();
    let run = fixtures::run()
        .with_status(Status::Live)
        .with_version(4)
        .with_now(t0())
        .build();
    let changes = history(&run);
    store.seed_with_history(run.clone(), changes.clone()).unwrap();
    assert_eq!(store.run(&run.key()), Some(run.clone()));
    assert_eq!(store.change_records(&run.key()), changes);
}

#[test]
fn seed_with_history_may_start_above_version_1() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_version(10).build();
    let changes: Vec<_> = history(&run).into_iter().skip(7).collect();
    store.seed_with_history(run.clone(), changes).unwrap();
    let versions: Vec<u64> = store
        .change_records(&run.key())
        .iter()
        .map(|c| c.version.get())
        .collect();
    assert_eq!(versions, vec![8, 9, 10]);
}

#[test]
fn seed_with_history_refuses_an_empty_history() {
    let store = MemoryStore::new();
    assert_history_error(store.seed_with_history(live_run(), vec![]), "no change records");
    assert!(store.is_empty());
}

#[test]
fn seed_with_history_refuses_a_last_version_other_than_the_runs() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_version(3).build();
    let mut changes = history(&run);
    changes.pop();
    assert_history_error(store.seed_with_history(run, changes), "version 2");
    assert!(store.is_empty());
}

#[test]
fn seed_with_history_refuses_a_record_of_another_run() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_version(3).build();
    let stranger = FieldingRunId::generate();
    let mut changes = history(&run);
    changes[1].run_id = stranger;
    assert_history_error(store.seed_with_history(run, changes), stranger.as_str());
    assert!(store.is_empty());
}

#[test]
fn seed_with_history_refuses_a_gap_in_versions() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_version(4).build();
    let mut changes = history(&run);
    changes.remove(1); // 1, 3, 4
    assert_history_error(
        store.seed_with_history(run, changes),
        "version 1 is followed by version 3",
    );
    assert!(store.is_empty());
}

#[test]
fn seed_with_history_refuses_repeated_or_descending_versions() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_version(2).build();
    let mut repeated = history(&run);
    repeated.insert(1, repeated[1].clone()); // 1, 2, 2
    assert_history_error(store.seed_with_history(run.clone(), repeated), "followed by");
    let mut descending = history(&run);
    descending.reverse();
    descending.push(history(&run)[1].clone()); // 2, 1, 2
    assert_history_error(store.seed_with_history(run, descending), "followed by");
    assert!(store.is_empty());
}

#[test]
fn seed_with_history_refuses_a_taken_scope() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let other = fixtures::run().with_scope(run.scope()).build();
    let changes = history(&other);
    assert!(matches!(
        store.seed_with_history(other, changes),
        Err(SeedError::Store(StoreError::AlreadyExists { .. }))
    ));
}

// ---------------------------------------------------------------------------
// Insert and lookup
// ---------------------------------------------------------------------------

#[tokio::test]
async fn insert_then_get_round_trips_exactly() {
    let store = MemoryStore::new();
    let run = live_run();
    let change = record(&run, Action::Launch);
    store.insert(&run, &change).await.unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
    assert_eq!(
        store.find_by_target_group(&run.scope()).await.unwrap(),
        Some(run.clone())
    );
    assert_eq!(store.changes(&run.key()).await.unwrap(), vec![change]);
}

#[tokio::test]
async fn insert_at_a_high_version_starts_the_history_there() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_version(i64::MAX as u64).build();
    store.insert(&run, &record(&run, Action::Schedule)).await.unwrap();
    let changes = store.changes(&run.key()).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].version, Version::MAX);
}

#[tokio::test]
async fn insert_for_a_taken_scope_is_already_exists() {
    let store = MemoryStore::new();
    let run = live_run();
    store.insert(&run, &record(&run, Action::Launch)).await.unwrap();
    let second = fixtures::run().with_scope(run.scope()).build();
    match store.insert(&second, &record(&second, Action::Schedule)).await {
        Err(StoreError::AlreadyExists { scope }) => assert_eq!(scope, run.scope()),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.runs(), vec![run.clone()]);
    assert_eq!(store.change_records(&run.key()).len(), 1);
    assert_eq!(store.get(&second.key()).await.unwrap(), None);
}

#[tokio::test]
async fn get_is_none_for_an_unknown_id() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let key = run.scope().run(FieldingRunId::generate());
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert!(store.changes(&key).await.unwrap().is_empty());
}

#[tokio::test]
async fn get_and_changes_require_the_full_scope() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    for (what, key) in [
        ("account", other_account(run.key())),
        ("project", other_project(run.key())),
        ("target group", other_target_group(run.key())),
    ] {
        assert_eq!(store.get(&key).await.unwrap(), None, "{what} differs");
        assert!(store.changes(&key).await.unwrap().is_empty(), "{what} differs");
        assert_eq!(store.run(&key), None, "{what} differs");
        assert!(store.change_records(&key).is_empty(), "{what} differs");
    }
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run));
}

#[tokio::test]
async fn find_by_target_group_sees_only_its_own_scope() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    for (what, key) in [
        ("account", other_account(run.key())),
        ("project", other_project(run.key())),
        ("target group", other_target_group(run.key())),
    ] {
        assert_eq!(
            store.find_by_target_group(&key.scope).await.unwrap(),
            None,
            "{what} differs"
        );
    }
}

#[tokio::test]
async fn compare_and_swap_requires_the_full_scope() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    for (what, key) in [
        ("account", other_account(run.key())),
        ("project", other_project(run.key())),
        ("target group", other_target_group(run.key())),
    ] {
        let (paused, change) = next(&run_at(key, &run));
        let result = store.compare_and_swap(run.version, &paused, &change).await;
        assert!(
            matches!(result, Err(StoreError::NotFound)),
            "{what} differs: {result:?}"
        );
    }
    assert_eq!(store.run(&run.key()), Some(run.clone()));
    assert_eq!(store.change_records(&run.key()).len(), 1);
}

#[tokio::test]
async fn the_same_target_group_id_in_another_project_is_another_scope() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let sibling_scope = Scope::new(run.account_id, fixtures::project_id(), run.target_group_id);
    let sibling = fixtures::run().with_scope(sibling_scope).build();
    store
        .insert(&sibling, &record(&sibling, Action::Schedule))
        .await
        .unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(store.find_by_target_group(&sibling_scope).await.unwrap(), Some(sibling));
    assert_eq!(store.find_by_target_group(&run.scope()).await.unwrap(), Some(run));
}

// ---------------------------------------------------------------------------
// Compare-and-swap
// ---------------------------------------------------------------------------

#[tokio::test]
async fn compare_and_swap_at_the_current_version_writes_run_and_appends_record() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let (paused, change) = next(&run);
    store.compare_and_swap(run.version, &paused, &change).await.unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(paused));
    let changes = store.changes(&run.key()).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1], change);
}

#[tokio::test]
async fn compare_and_swap_with_a_stale_version_is_a_conflict_naming_current_and_changes_nothing() {
    let store = MemoryStore::new();
    let run = fixtures::run().with_status(Status::Live).with_version(5).build();
    store.seed(run.clone()).unwrap();
    for expected in [v(4), v(6)] {
        let stale = FieldingRun {
            version: expected,
            ..run.clone()
        };
        let (paused, change) = next(&stale);
        match store.compare_and_swap(expected, &paused, &change).await {
            Err(StoreError::VersionConflict { expected: e, current }) => {
                assert_eq!((e, current), (expected, v(5)));
            }
            other => panic!("expected a conflict at {expected}, got {other:?}"),
        }
    }
    assert_eq!(store.run(&run.key()), Some(run.clone()));
    assert_eq!(store.change_records(&run.key()).len(), 1);
}

#[tokio::test]
async fn compare_and_swap_of_a_missing_run_is_not_found() {
    let store = MemoryStore::new();
    let run = live_run();
    let (paused, change) = next(&run);
    let result = store.compare_and_swap(run.version, &paused, &change).await;
    assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
    assert!(store.is_empty());
}

#[tokio::test]
async fn two_writers_on_one_version_exactly_one_wins() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let (a, change_a) = next(&run);
    let (b, change_b) = next(&FieldingRun {
        last_changed_by: UserId::random(),
        ..run.clone()
    });
    store.compare_and_swap(run.version, &a, &change_a).await.unwrap();
    let lost = store.compare_and_swap(run.version, &b, &change_b).await;
    assert!(matches!(lost, Err(StoreError::VersionConflict { current, .. }) if current == v(2)));
    assert_eq!(store.run(&run.key()), Some(a));
}

// ---------------------------------------------------------------------------
// Bookkeeping
// ---------------------------------------------------------------------------

#[test]
fn len_is_empty_runs_and_clear() {
    let store = MemoryStore::new();
    assert!(store.is_empty());
    let a = live_run();
    let b = live_run();
    store.seed(a.clone()).unwrap();
    store.seed(b.clone()).unwrap();
    assert_eq!(store.len(), 2);
    assert!(!store.is_empty());
    let mut ids: Vec<_> = store.runs().into_iter().map(|r| r.id).collect();
    ids.sort();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(ids, expected);

    store.clear();
    assert!(store.is_empty());
    assert!(store.change_records(&a.key()).is_empty());
    // The scope is free again.
    store.seed(a).unwrap();
}

#[tokio::test]
async fn ten_thousand_runs_insert_and_look_up() {
    let store = MemoryStore::new();
    let runs: Vec<FieldingRun> = (0..10_000).map(|_| fixtures::run().with_now(t0()).build()).collect();
    for run in &runs {
        store.insert(run, &record(run, Action::Schedule)).await.unwrap();
    }
    assert_eq!(store.len(), 10_000);
    for run in &runs {
        assert_eq!(store.get(&run.key()).await.unwrap().as_ref(), Some(run));
        assert_eq!(
            store.find_by_target_group(&run.scope()).await.unwrap().map(|r| r.id),
            Some(run.id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_for_one_scope_exactly_one_wins() {
    let store = MemoryStore::new();
    let scope = fixtures::scope();
    let mut handles = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let run = fixtures::run().with_scope(scope).build();
            store.insert(&run, &record(&run, Action::Schedule)).await
        }));
    }
    let mut wins = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::AlreadyExists { scope: s }) => assert_eq!(s, scope),
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_swaps_on_one_version_exactly_one_wins() {
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let store = Arc::new(store);
    let mut handles = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let run = FieldingRun {
            last_changed_by: UserId::random(),
            ..run.clone()
        };
        handles.push(tokio::spawn(async move {
            let (paused, change) = next(&run);
            store.compare_and_swap(run.version, &paused, &change).await
        }));
    }
    let mut wins = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::VersionConflict { current, .. }) => assert_eq!(current, v(2)),
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    let changes = store.change_records(&run.key());
    assert_eq!(changes.iter().map(|c| c.version.get()).collect::<Vec<_>>(), vec![1, 2]);
}

/// A target group named twice in one `apply_bulk_items` is refused before
/// anything is written: planning both at the version read and committing
/// the first would leave half a batch behind.
#[tokio::test]
async fn a_bulk_batch_naming_a_target_group_twice_writes_nothing() {
    use fielding_core::{BulkAction, BulkClaim, ClaimToken, ItemUpdate, TargetGroupId};
    let store = MemoryStore::new();
    let run = live_run();
    store.seed(run.clone()).unwrap();
    let job = fixtures::bulk_job(run.scope(), "twice", BulkAction::Pause, &[run.target_group_id]);
    store.create_bulk_job(&job).await.unwrap();
    let claim = BulkClaim {
        token: ClaimToken::generate(),
        lease_until: Timestamp::MAX,
    };
    store.claim_bulk_job(t0(), &claim).await.unwrap().unwrap();
    let mut decide = |_: TargetGroupId, current: Option<&FieldingRun>| {
        let current = current.unwrap();
        let (run, change) = next(current);
        ItemUpdate::Write {
            expected: current.version,
            run,
            change,
        }
    };
    let twice = [run.target_group_id, run.target_group_id];
    let refused = store
        .apply_bulk_items(&job.key(), claim.token, &twice, &mut decide)
        .await;
    assert!(matches!(refused, Err(StoreError::Backend { .. })), "{refused:?}");
    assert_eq!(store.run(&run.key()).unwrap(), run, "nothing written");
    assert_eq!(
        store.get_bulk_job(&job.key()).await.unwrap().unwrap().pending().count(),
        1
    );
}
