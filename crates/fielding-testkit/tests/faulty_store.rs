//! `FaultyStore`: faults count down exactly, hit every operation, never
//! write, are shared by clones, and an injected conflict lands at the
//! compare-and-swap step of `update` without hiding a real conflict, and
//! the feed operations take faults like the others. With no fault pending
//! it is the inner store: it passes the whole conformance suite.

use std::sync::Arc;

use fielding_core::{
    ConsumerName, FeedPosition, FieldingRun, FieldingService, FieldingStore, IfMatch, Status, StoreError, Timestamp,
    Update, UpdateOutcome, UserId, Version,
};
use fielding_memory::MemoryStore;
use fielding_testkit::{fixtures, Fault, FaultyStore};

fn v(n: u64) -> Version {
    Version::new(n).unwrap()
}

fn live_run() -> FieldingRun {
    fixtures::run().with_status(Status::Live).build()
}

/// `run` one version on, with its change record.
fn next(run: &FieldingRun) -> (FieldingRun, fielding_core::ChangeRecord) {
    fixtures::change(run, 1, UserId::random()).unwrap()
}

/// A memory store holding `run`, and a faulty store around it.
fn faulty_with(run: &FieldingRun) -> (MemoryStore, FaultyStore<MemoryStore>) {
    let memory = MemoryStore::new();
    memory.seed(run.clone()).unwrap();
    (memory.clone(), FaultyStore::new(memory))
}

// Without faults it is the store it wraps, also as `Arc<dyn FieldingStore>`.
fielding_testkit::conformance_tests!(|| async {
    let inner: Arc<dyn FieldingStore> = Arc::new(MemoryStore::new());
    Arc::new(FaultyStore::from_arc(inner))
});

#[test]
fn clones_and_handles_share_faults() {
    let store = FaultyStore::new(MemoryStore::new());
    let clone = store.clone();
    let handle = store.faults().clone();
    store.faults().inject(Fault::Storage, 2);
    assert_eq!(clone.faults().pending(Fault::Storage), 2);
    assert_eq!(handle.pending(Fault::Storage), 2);
    clone.faults().clear();
    assert_eq!(store.faults().pending(Fault::Storage), 0);
    assert_eq!(handle.pending(Fault::Storage), 0);
}

#[test]
fn separate_faulty_stores_share_no_faults() {
    let memory = MemoryStore::new();
    let a = FaultyStore::new(memory.clone());
    let b = FaultyStore::new(memory);
    a.faults().inject(Fault::Storage, 1);
    assert_eq!(b.faults().pending(Fault::Storage), 0);
}

#[tokio::test]
async fn storage_faults_count_down_exactly() {
    let run = live_run();
    let (_, store) = faulty_with(&run);
    store.faults().inject(Fault::Storage, 2);
    for remaining in [1, 0] {
        let err = store.get(&run.key()).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend { retryable: false, .. }), "{err:?}");
        assert!(err.to_string().contains("injected"));
        assert_eq!(store.faults().pending(Fault::Storage), remaining);
    }
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run));
}

#[test]
fn injecting_adds_to_pending_faults() {
    let store = FaultyStore::new(MemoryStore::new());
    store.faults().inject(Fault::Conflict, 2);
    store.faults().inject(Fault::Conflict, 3);
    assert_eq!(store.faults().pending(Fault::Conflict), 5);
    assert_eq!(store.faults().pending(Fault::Storage), 0);
}

#[tokio::test]
async fn clearing_faults_drops_every_kind() {
    let run = live_run();
    let (_, store) = faulty_with(&run);
    for fault in Fault::ALL {
        store.faults().inject(fault, 3);
    }
    store.faults().clear();
    for fault in Fault::ALL {
        assert_eq!(store.faults().pending(fault), 0, "{fault:?}");
    }
    assert!(store.get(&run.key()).await.is_ok());
    let (paused, change) = next(&run);
    store.compare_and_swap(run.version, &paused, &change).await.unwrap();
}

#[tokio::test]
async fn clearing_the_inner_store_keeps_the_faults() {
    let run = live_run();
    let (memory, store) = faulty_with(&run);
    store.faults().inject(Fault::Storage, 1);
    memory.clear();
    assert!(memory.is_empty());
    assert_eq!(
        store.faults().pending(Fault::Storage),
        1,
        "the faults are the wrapper's"
    );
}

#[tokio::test]
async fn storage_fault_hits_every_operation_and_writes_nothing() {
    let run = live_run();
    let (memory, store) = faulty_with(&run);
    let other = live_run();
    let (paused, change) = next(&run);
    let job = fixtures::job(run.scope(), "faulted", fixtures::launch());
    let done = fixtures::job(run.scope(), "done", fixtures::launch());
    memory.create_job(&done).await.unwrap();
    let done = memory
        .finish_job(&done.key(), &fielding_core::JobOutcome::Completed, done.created_at)
        .await
        .unwrap();

    store.faults().inject(Fault::Storage, 10);
    let mut decided = 0;
    let mut decide = |current: &FieldingRun| {
        decided += 1;
        let (next, change) = next(current);
        Update::Write {
            expected: current.version,
            run: next,
            change,
        }
    };
    let errors = [
        store.insert(&other, &fixtures::creation(&other)).await.unwrap_err(),
        store.get(&run.key()).await.unwrap_err(),
        store.find_by_target_group(&run.scope()).await.unwrap_err(),
        store.compare_and_swap(run.version, &paused, &change).await.unwrap_err(),
        store.update(&run.key(), &mut decide).await.unwrap_err(),
        store.changes(&run.key()).await.unwrap_err(),
        store.create_job(&job).await.unwrap_err(),
        store.get_job(&job.key()).await.unwrap_err(),
        store
            .finish_job(&job.key(), &fielding_core::JobOutcome::Completed, job.created_at)
            .await
            .unwrap_err(),
        store.expire_jobs(fielding_core::Timestamp::MAX, 10).await.unwrap_err(),
    ];
    for err in &errors {
        assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
        assert!(!err.is_retryable());
    }
    assert_eq!(decided, 0, "a faulted update reads nothing and decides nothing");
    assert_eq!(store.faults().pending(Fault::Storage), 0);
    assert_eq!(memory.len(), 1, "the faulted insert wrote nothing");
    assert_eq!(
        memory.run(&run.key()),
        Some(run.clone()),
        "the faulted writes wrote nothing"
    );
    assert_eq!(memory.change_records(&run.key()).len(), 1);
    assert_eq!(memory.get_job(&job.key()).await.unwrap(), None);
    assert_eq!(
        memory.get_job(&done.as_ref().expect("the job").key()).await.unwrap(),
        done,
        "the faulted expiry removed nothing"
    );
}

#[tokio::test]
async fn transient_storage_fault_is_retryable() {
    let run = live_run();
    let (_, store) = faulty_with(&run);
    store.faults().inject(Fault::TransientStorage, 1);
    let err = store.get(&run.key()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(store.faults().pending(Fault::TransientStorage), 0);
    assert!(store.get(&run.key()).await.is_ok());
}

#[tokio::test]
async fn conflict_fault_does_not_affect_get_or_other_reads() {
    let run = live_run();
    let (_, store) = faulty_with(&run);
    store.faults().inject(Fault::Conflict, 1);
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
    assert!(store.find_by_target_group(&run.scope()).await.unwrap().is_some());
    assert_eq!(store.changes(&run.key()).await.unwrap().len(), 1);
    let other = live_run();
    store.insert(&other, &fixtures::creation(&other)).await.unwrap();
    assert_eq!(
        store.faults().pending(Fault::Conflict),
        1,
        "not used up by other operations"
    );
}

#[tokio::test]
async fn conflict_fault_refuses_a_swap_as_if_one_writer_had_won() {
    let run = fixtures::run().with_status(Status::Live).with_version(3).build();
    let (memory, store) = faulty_with(&run);
    store.faults().inject(Fault::Conflict, 1);
    let (paused, change) = next(&run);
    match store.compare_and_swap(v(3), &paused, &change).await {
        Err(StoreError::VersionConflict { expected, current }) => assert_eq!((expected, current), (v(3), v(4))),
        other => panic!("expected an injected conflict, got {other:?}"),
    }
    assert_eq!(memory.run(&run.key()), Some(run.clone()), "nothing written");
    assert_eq!(memory.change_records(&run.key()).len(), 1);
    assert_eq!(store.faults().pending(Fault::Conflict), 0);
    store.compare_and_swap(v(3), &paused, &change).await.unwrap();
}

#[tokio::test]
async fn real_conflict_is_reported_before_an_injected_one() {
    let run = fixtures::run().with_status(Status::Live).with_version(3).build();
    let (_, store) = faulty_with(&run);
    store.faults().inject(Fault::Conflict, 1);
    let stale = FieldingRun {
        version: v(1),
        ..run.clone()
    };
    let (paused, change) = next(&stale);
    match store.compare_and_swap(v(1), &paused, &change).await {
        Err(StoreError::VersionConflict { current, .. }) => assert_eq!(current, v(3)),
        other => panic!("expected the real conflict, got {other:?}"),
    }
    assert_eq!(
        store.faults().pending(Fault::Conflict),
        1,
        "the injected conflict is still pending"
    );
}

#[tokio::test]
async fn a_missing_run_is_not_found_before_an_injected_conflict() {
    let store = FaultyStore::new(MemoryStore::new());
    store.faults().inject(Fault::Conflict, 1);
    let missing = live_run();
    let (next, change) = next(&missing);
    let result = store.compare_and_swap(missing.version, &next, &change).await;
    assert!(matches!(result, Err(StoreError::NotFound)), "{result:?}");
    assert_eq!(store.faults().pending(Fault::Conflict), 1);
}

#[tokio::test]
async fn update_meets_an_injected_conflict_after_deciding_and_writes_nothing() {
    let run = fixtures::run().with_status(Status::Live).with_version(3).build();
    let (memory, store) = faulty_with(&run);
    store.faults().inject(Fault::Conflict, 1);
    let shown = std::sync::Mutex::new(Vec::new());
    let mut decide = |current: &FieldingRun| {
        shown.lock().unwrap().push(current.clone());
        let (next, change) = next(current);
        Update::Write {
            expected: current.version,
            run: next,
            change,
        }
    };
    match store.update(&run.key(), &mut decide).await {
        Err(StoreError::VersionConflict { expected, current }) => assert_eq!((expected, current), (v(3), v(4))),
        other => panic!("expected an injected conflict, got {other:?}"),
    }
    assert_eq!(
        *shown.lock().unwrap(),
        vec![run.clone()],
        "decide saw the stored run once"
    );
    assert_eq!(memory.run(&run.key()), Some(run.clone()), "nothing written");
    assert_eq!(store.faults().pending(Fault::Conflict), 0);
    assert_eq!(
        store.update(&run.key(), &mut decide).await.unwrap(),
        UpdateOutcome::Written
    );
    assert_eq!(memory.run(&run.key()).unwrap().version, v(4));
}

#[tokio::test]
async fn a_skipping_update_does_not_use_up_a_conflict() {
    let run = live_run();
    let (_, store) = faulty_with(&run);
    store.faults().inject(Fault::Conflict, 1);
    let outcome = store.update(&run.key(), &mut |_: &FieldingRun| Update::Skip).await;
    assert_eq!(outcome.unwrap(), UpdateOutcome::Skipped);
    assert_eq!(store.faults().pending(Fault::Conflict), 1);
}

#[tokio::test]
async fn through_the_service_an_injected_conflict_is_a_412_and_a_storage_fault_a_500() {
    let run = fixtures::run().with_status(Status::Live).with_version(7).build();
    let (memory, store) = faulty_with(&run);
    let service = FieldingService::new(Arc::new(store.clone()));
    let if_match = IfMatch::parse("\"7\"").unwrap();

    store.faults().inject(Fault::Conflict, 1);
    let err = service
        .pause(&run.key(), &if_match, UserId::random())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "precondition_failed_error", "{err}");

    store.faults().inject(Fault::Storage, 1);
    let err = service
        .pause(&run.key(), &if_match, UserId::random())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unexpected_internal_error", "{err}");

    assert_eq!(memory.run(&run.key()), Some(run.clone()), "nothing written");
    let paused = service.pause(&run.key(), &if_match, UserId::random()).await.unwrap();
    assert_eq!(paused.run.version, v(8));
}

#[tokio::test]
async fn storage_faults_hit_the_feed_operations_and_can_be_aimed_at_one() {
    let run = live_run();
    let memory = MemoryStore::new();
    memory.insert(&run, &fixtures::creation(&run)).await.unwrap();
    let store = FaultyStore::new(memory.clone());
    let account = run.account_id;
    let consumer = ConsumerName::parse("billing").unwrap();
    let position = FeedPosition::new(1, 0);
    let long_ago = Timestamp::UNIX_EPOCH;

    store.faults().inject(Fault::Storage, 4);
    let errors = [
        store.feed(account, None, 10).await.map(|_| ()).unwrap_err(),
        store.prune_changes(long_ago, 10).await.map(|_| ()).unwrap_err(),
        store
            .load_feed_checkpoint(account, &consumer)
            .await
            .map(|_| ())
            .unwrap_err(),
        store
            .save_feed_checkpoint(account, &consumer, position)
            .await
            .unwrap_err(),
    ];
    for err in &errors {
        assert!(matches!(err, StoreError::Backend { retryable: false, .. }), "{err:?}");
    }
    assert_eq!(memory.load_feed_checkpoint(account, &consumer).await.unwrap(), None);

    // Aimed at the feed: every other operation goes through and leaves the
    // faults for it.
    store.faults().only_in(Some("feed"));
    store.faults().inject(Fault::TransientStorage, 2);
    store.save_feed_checkpoint(account, &consumer, position).await.unwrap();
    assert_eq!(
        store.load_feed_checkpoint(account, &consumer).await.unwrap(),
        Some(position)
    );
    assert_eq!(store.prune_changes(long_ago, 10).await.unwrap(), 0);
    assert_eq!(store.faults().pending(Fault::TransientStorage), 2);
    for _ in 0..2 {
        assert!(store.feed(account, None, 10).await.unwrap_err().is_retryable());
    }
    let page = store.feed(account, None, 10).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].change, fixtures::creation(&run));
}

#[tokio::test]
async fn the_change_notifier_is_the_inner_stores() {
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    assert_eq!(store.change_notifier().is_some(), memory.change_notifier().is_some());
    let Some(notifier) = store.change_notifier() else {
        return;
    };
    let run = live_run();
    let mut subscription = notifier.subscribe(run.account_id);
    store.insert(&run, &fixtures::creation(&run)).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), subscription.changed())
        .await
        .expect("a write through the faulty store wakes the inner store's subscribers");
}
