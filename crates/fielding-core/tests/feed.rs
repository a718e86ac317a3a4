//! The change feed through the service, on the in-memory store: pages and
//! their validation, long polls, watches, a run's history in pages, and
//! checkpointed consumers (at least once, resumed from the checkpoint,
//! stopped by an expired checkpoint rather than skipping).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::{
    ConsumerError, ConsumerName, FeedConsumer, FeedPosition, FeedRecord, FieldingError, FieldingRun, FieldingService,
    FieldingStore, IfMatch, ManualClock, Scope, Status, Timestamp, UserId, Version, MAX_FEED_PAGE, MAX_FEED_WAIT,
};
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;
use futures_util::StreamExt;

fn start_at() -> Timestamp {
    "2031-01-01T09:00:00Z".parse().unwrap()
}

/// A service on a manual clock standing a day before `start_at`.
fn service() -> (MemoryStore, FieldingService, ManualClock) {
    let store = MemoryStore::new();
    let clock = ManualClock::new(start_at().checked_add(TimeDelta::days(-1)).unwrap());
    let service = FieldingService::new(Arc::new(store.clone()))
        .with_clock(Arc::new(clock.clone()))
        .with_feed_poll_interval(Duration::from_millis(20));
    (store, service, clock)
}

async fn schedule(service: &FieldingService, scope: Scope) -> FieldingRun {
    let end = start_at().checked_add(TimeDelta::days(30)).unwrap();
    service
        .schedule(scope, start_at(), end, UserId::random())
        .await
        .unwrap()
        .run
}

/// Moves the end of the run at `run` by one minute, `times` times.
async fn step(service: &FieldingService, run: &FieldingRun, times: usize) -> FieldingRun {
    let mut run = run.clone();
    for _ in 0..times {
        let end = run.end_fielding_at.checked_add(TimeDelta::minutes(1)).unwrap();
        run = service
            .update_dates(
                &run.key(),
                &IfMatch::version(run.version),
                run.start_fielding_at,
                end,
                UserId::random(),
            )
            .await
            .unwrap()
            .run;
    }
    run
}

fn versions(records: &[FeedRecord]) -> Vec<u64> {
    records.iter().map(|r| r.change.version.get()).collect()
}

#[tokio::test]
async fn the_feed_follows_the_rules_on_the_memory_store() {
    fielding_testkit::scenarios::feed_follows_the_rules(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn pages_follow_commit_order_and_limits_are_checked() {
    let (_, service, _) = service();
    let scope = fixtures::scope();
    let run = schedule(&service, scope).await;
    step(&service, &run, 9).await;
    // Another account's runs never show.
    let elsewhere = schedule(&service, fixtures::other_account(scope)).await;
    step(&service, &elsewhere, 3).await;

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = service.read_feed(scope.account_id, cursor, 3).await.unwrap();
        assert!(page.records.len() <= 3);
        assert!(page.records.iter().all(|r| r.scope == scope));
        seen.extend(page.records);
        cursor = Some(page.next);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(versions(&seen), (1..=10).collect::<Vec<_>>());
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));

    for bad in [0, MAX_FEED_PAGE + 1] {
        let err = service.read_feed(scope.account_id, None, bad).await.unwrap_err();
        assert_eq!(err.invalid_params()[0].name, "limit");
    }
    let too_long = service
        .wait_for_changes(scope.account_id, None, 10, MAX_FEED_WAIT + Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(too_long.invalid_params()[0].name, "wait");
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_change_commits_or_empty_after_the_wait() {
    let (_, service, _) = service();
    let scope = fixtures::scope();
    let run = schedule(&service, scope).await;
    let head = service.read_feed(scope.account_id, None, 10).await.unwrap().next;

    let started = Instant::now();
    let empty = service
        .wait_for_changes(scope.account_id, Some(head), 10, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(empty.records.is_empty());
    assert!(empty.next >= head);
    assert!(started.elapsed() >= Duration::from_millis(150));

    // A slow poll interval: only the store's wake-up can make it quick.
    let service = service.with_feed_poll_interval(Duration::from_secs(10));
    let writer = {
        let service = service.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            step(&service, &run, 1).await
        })
    };
    let started = Instant::now();
    let page = service
        .wait_for_changes(scope.account_id, Some(head), 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(versions(&page.records), vec![2]);
    assert!(started.elapsed() < Duration::from_secs(2), "woken, not polled");
    writer.await.unwrap();
}

#[tokio::test]
async fn a_watch_yields_old_and_new_records_in_order() {
    let (_, service, _) = service();
    let scope = fixtures::scope();
    let run = schedule(&service, scope).await;
    let run = step(&service, &run, 2).await;
    let mut stream = std::pin::pin!(service.watch(scope.account_id, None).with_page_size(2).into_stream());
    let writer = {
        let service = service.clone();
        tokio::spawn(async move { step(&service, &run, 5).await })
    };
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let record = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a record within 5 s")
            .expect("the stream does not end")
            .unwrap();
        seen.push(record.change.version.get());
    }
    assert_eq!(seen, (1..=8).collect::<Vec<_>>());
    writer.await.unwrap();
}

#[tokio::test]
async fn a_runs_history_comes_in_pages_and_a_missing_run_is_not_found() {
    let (_, service, _) = service();
    let run = schedule(&service, fixtures::scope()).await;
    step(&service, &run, 4).await;
    let first = service.run_history(&run.key(), None, 2).await.unwrap();
    assert_eq!(
        first.records.iter().map(|c| c.version.get()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(first.has_more);
    let rest = service.run_history(&run.key(), first.next, 10).await.unwrap();
    assert_eq!(
        rest.records.iter().map(|c| c.version.get()).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(!rest.has_more);
    assert_eq!(rest.next, Some(Version::new(5).unwrap()));
    let past = service.run_history(&run.key(), rest.next, 10).await.unwrap();
    assert!(past.records.is_empty() && past.next == rest.next);

    let missing = fixtures::run().build();
    let err = service.run_history(&missing.key(), None, 10).await.unwrap_err();
    assert_eq!(err.code(), "not_found_error");
}

#[tokio::test]
async fn pruned_records_expire_cursors_before_them_and_never_silently() {
    let (store, service, clock) = service();
    let scope = fixtures::scope();
    let run = schedule(&service, scope).await;
    let first = service.read_feed(scope.account_id, None, 1).await.unwrap().records[0].position;
    clock.advance(TimeDelta::hours(2));
    step(&service, &run, 2).await;

    let cutoff = clock.now_plus(TimeDelta::hours(-1));
    assert_eq!(store.prune_changes(cutoff, 100).await.unwrap(), 1);
    let err = service
        .read_feed(scope.account_id, Some(FeedPosition::ZERO), 10)
        .await
        .unwrap_err();
    assert!(matches!(err, FieldingError::CursorExpired { .. }), "{err:?}");
    assert_eq!(err.code(), "cursor_expired_error");
    // At the pruned record itself: nothing after it is gone.
    let page = service.read_feed(scope.account_id, Some(first), 10).await.unwrap();
    assert_eq!(versions(&page.records), vec![2, 3]);
    // From the start: the oldest kept record.
    let page = service.read_feed(scope.account_id, None, 10).await.unwrap();
    assert_eq!(versions(&page.records), vec![2, 3]);
    assert_eq!(
        service
            .changes(&run.key())
            .await
            .unwrap()
            .iter()
            .map(|c| c.version.get())
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
}

trait NowPlus {
    fn now_plus(&self, delta: TimeDelta) -> Timestamp;
}

impl NowPlus for ManualClock {
    fn now_plus(&self, delta: TimeDelta) -> Timestamp {
        fielding_core::Clock::now(self).checked_add(delta).unwrap()
    }
}

/// What a consumer's handler saw, shared with the test.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(u64, FeedPosition)>>>);

impl Seen {
    fn versions(&self) -> Vec<u64> {
        self.0.lock().unwrap().iter().map(|(v, _)| *v).collect()
    }
}

#[tokio::test]
async fn a_consumer_delivers_everything_saves_its_checkpoint_and_resumes_from_it() {
    let (store, service, _) = service();
    let scope = fixtures::scope();
    let run = schedule(&service, scope).await;
    let run = step(&service, &run, 6).await;
    let name = ConsumerName::parse("quota").unwrap();

    // The handler fails on version 5: the checkpoint stays at version 4.
    let seen = Seen::default();
    let consumer = FeedConsumer::new(service.clone(), scope.account_id, name.clone()).with_batch_size(3);
    let handler_seen = seen.clone();
    let outcome = consumer
        .run(
            move |record: FeedRecord| {
                let seen = handler_seen.clone();
                async move {
                    if record.change.version.get() == 5 {
                        return Err(std::io::Error::other("quota service down"));
                    }
                    seen.0
                        .lock()
                        .unwrap()
                        .push((record.change.version.get(), record.position));
                    Ok(())
                }
            },
            std::future::pending(),
        )
        .await;
    let err = outcome.unwrap_err();
    assert!(matches!(err, ConsumerError::Handler { .. }), "{err}");
    assert_eq!(err.code(), "consumer_handler_error");
    assert_eq!(seen.versions(), vec![1, 2, 3, 4]);
    let checkpoint = store.load_feed_checkpoint(scope.account_id, &name).await.unwrap();
    assert_eq!(
        checkpoint,
        Some(seen.0.lock().unwrap()[3].1),
        "saved up to the last handled record"
    );

    // Restarted: from version 5 on, then new changes as they come, until stopped.
    let seen = Seen::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = FeedConsumer::new(service.clone(), scope.account_id, name.clone()).with_batch_size(3);
    let handler_seen = seen.clone();
    let task = tokio::spawn(consumer.run(
        move |record: FeedRecord| {
            let seen = handler_seen.clone();
            async move {
                seen.0
                    .lock()
                    .unwrap()
                    .push((record.change.version.get(), record.position));
                Ok::<(), std::io::Error>(())
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    step(&service, &run, 2).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.versions().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.versions(), vec![5, 6, 7, 8, 9]);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let checkpoint = store.load_feed_checkpoint(scope.account_id, &name).await.unwrap();
    assert!(checkpoint >= Some(seen.0.lock().unwrap()[4].1));
    // Another consumer's checkpoint is its own.
    let other = ConsumerName::parse("billing").unwrap();
    assert_eq!(
        store.load_feed_checkpoint(scope.account_id, &other).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_consumer_whose_checkpoint_was_pruned_stops_instead_of_skipping() {
    let (store, service, clock) = service();
    let scope = fixtures::scope();
    let run = schedule(&service, scope).await;
    let name = ConsumerName::parse("dashboard").unwrap();
    store
        .save_feed_checkpoint(scope.account_id, &name, FeedPosition::ZERO)
        .await
        .unwrap();
    clock.advance(TimeDelta::hours(2));
    step(&service, &run, 1).await;
    store
        .prune_changes(clock.now_plus(TimeDelta::hours(-1)), 10)
        .await
        .unwrap();

    let consumer = FeedConsumer::new(service, scope.account_id, name);
    let err = consumer
        .run(
            |_: FeedRecord| async { Ok::<(), std::io::Error>(()) },
            std::future::pending(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cursor_expired_error", "{err}");
}

#[test]
fn clock_moments_say_when_a_run_turns_live_and_completed_without_a_new_version() {
    let run = fixtures::run().with_status(Status::Scheduled).build();
    let record = FeedRecord {
        position: FeedPosition::new(1, 0),
        scope: run.scope(),
        change: fielding_core::ChangeRecord::created(&run, fielding_core::Action::Schedule),
    };
    let moments = record.clock_moments();
    assert_eq!(
        moments,
        vec![
            (run.start_fielding_at, Status::Live),
            (run.end_fielding_at, Status::Completed)
        ]
    );
    let mut completed = record.clone();
    completed.change.status_to = Status::Completed;
    assert!(completed.clock_moments().is_empty());
    let mut live = record;
    live.change.status_to = Status::Live;
    assert_eq!(live.clock_moments(), vec![(run.end_fielding_at, Status::Completed)]);
}
