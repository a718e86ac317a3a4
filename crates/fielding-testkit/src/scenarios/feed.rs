//! The change feed through the service on any store: pages, a watch, long
//! polls, a run's history, and checkpointed consumers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{
    AccountId, Action, ConsumerError, ConsumerName, FeedPosition, FeedRecord, FieldingRun, FieldingService,
    FieldingStore, IfMatch, Timestamp, UserId, MAX_FEED_PAGE,
};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

use super::expect;
use crate::fixtures;

/// How long the scenario waits for anything the store is to deliver: a
/// record to become readable, a watch or consumer to see it. Far above
/// what any store needs (PostgreSQL may hold a record back until older
/// transactions end).
const PATIENCE: Duration = Duration::from_secs(30);

/// How often the service's watchers read without a wake-up, here: short,
/// so a store without a notifier does not make the scenario slow.
const POLL: Duration = Duration::from_millis(20);

/// Every record of `account` from the start, once `count` are readable,
/// through `read_feed` in pages of `limit`.
async fn read_all(service: &FieldingService, account: AccountId, limit: usize, count: usize) -> Vec<FeedRecord> {
    let deadline = Instant::now() + PATIENCE;
    let mut cursor = None;
    let mut seen: Vec<FeedRecord> = Vec::new();
    loop {
        let page = expect(service.read_feed(account, cursor, limit).await, "read_feed");
        assert!(
            page.records.len() <= limit,
            "a page of {limit} held {}",
            page.records.len()
        );
        if let (Some(last), Some(cursor)) = (page.records.last(), cursor) {
            assert!(page.records[0].position > cursor, "a page starts after its cursor");
            assert!(page.next >= last.position, "next is at or after the last record");
        }
        cursor = Some(page.next);
        let more = page.has_more;
        seen.extend(page.records);
        if seen.len() >= count && !more {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the feed of account {account} gave {} of {count} records in {PATIENCE:?}",
            seen.len()
        );
        if !more {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The `(action, version)` of each record, for comparing sequences.
fn steps(records: &[FeedRecord]) -> Vec<(Action, u64)> {
    records
        .iter()
        .map(|r| (r.change.action, r.change.version.get()))
        .collect()
}

/// Pauses or resumes `run` (whichever its status allows) through the
/// service: the run afterwards.
async fn toggle(service: &FieldingService, run: &FieldingRun) -> FieldingRun {
    let if_match = IfMatch::version(run.version);
    let applied = if run.status == fielding_core::Status::Paused {
        service.resume(&run.key(), &if_match, UserId::random()).await
    } else {
        service.pause(&run.key(), &if_match, UserId::random()).await
    };
    expect(applied, "pause or resume").run
}

/// Runs consumer `name` of `account` with batches of `batch` until it has
/// handled `count` records (then asks it to stop) or its handler fails on
/// the record at `fail_at`: what it handled, and how it ended.
async fn consume(
    service: &FieldingService,
    account: AccountId,
    name: &str,
    batch: usize,
    count: usize,
    fail_at: Option<FeedPosition>,
) -> (Vec<FeedRecord>, Result<(), ConsumerError>) {
    let name = expect(ConsumerName::parse(name), "consumer name");
    let handled = Arc::new(Mutex::new(Vec::new()));
    let enough = Arc::new(Notify::new());
    let consumer = fielding_core::FeedConsumer::new(service.clone(), account, name).with_batch_size(batch);
    let handler = {
        let handled = Arc::clone(&handled);
        let enough = Arc::clone(&enough);
        move |record: FeedRecord| {
            let handled = Arc::clone(&handled);
            let enough = Arc::clone(&enough);
            async move {
                if Some(record.position) == fail_at {
                    return Err(std::io::Error::other("the handler fails on this record"));
                }
                let mut handled = handled.lock().unwrap_or_else(PoisonError::into_inner);
                handled.push(record);
                if handled.len() >= count {
                    enough.notify_one();
                }
                Ok(())
            }
        }
    };
    let shutdown = {
        let enough = Arc::clone(&enough);
        async move { enough.notified().await }
    };
    let ended = timeout(PATIENCE, consumer.run(handler, shutdown)).await;
    let ended = ended.unwrap_or_else(|_| panic!("a consumer of {count} records did not stop within {PATIENCE:?}"));
    let handled = handled.lock().unwrap_or_else(PoisonError::into_inner).clone();
    (handled, ended)
}

/// The change feed through [`FieldingService`] on `store`: two runs of a
/// fresh account scheduled, paused and resumed through the service.
///
/// * `read_feed` refuses limits outside `1..=MAX_FEED_PAGE`, naming
///   `limit`, and reads the account's records in commit order, in pages of
///   2 as in one page;
/// * a watch from the end of the feed returns the next change as soon as
///   it commits (woken by the store, or polling);
/// * a long poll with nothing to read answers an empty page after its wait
///   with a cursor not before the one it was given, and one that a write
///   interrupts returns that write long before its wait is over;
/// * `run_history` pages a run's records by version;
/// * a consumer in batches of 2 delivers every record from the start, in
///   order, saves its checkpoint, and, restarted, delivers only what came
///   after; a consumer whose handler fails on a record stops with that
///   record's position, with its checkpoint before it, and restarted
///   begins with that record.
///
/// Pruning is left to the conformance case: it reaches every record of
/// the store, and this scenario may share a database with other tests.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = std::sync::Arc::new(fielding_memory::MemoryStore::new());
/// fielding_testkit::scenarios::feed_follows_the_rules(store).await;
/// # }
/// ```
pub async fn feed_follows_the_rules(store: Arc<dyn FieldingStore>) {
    let service = FieldingService::new(store).with_feed_poll_interval(POLL);
    let scope = fixtures::scope();
    let account = scope.account_id;
    let now = Timestamp::from(chrono::Utc::now());
    let day = |days: i64| now.checked_add(TimeDelta::days(days)).unwrap_or(now);
    let mut first = expect(service.launch(scope, day(30), UserId::random()).await, "launch a run").run;
    let mut second = expect(
        service
            .launch(fixtures::other_target_group(scope), day(30), UserId::random())
            .await,
        "launch a second run",
    )
    .run;
    first = toggle(&service, &first).await;
    second = toggle(&service, &second).await;
    first = toggle(&service, &first).await;

    for limit in [0, MAX_FEED_PAGE + 1] {
        let refused = service.read_feed(account, None, limit).await;
        let names: Vec<String> = match &refused {
            Err(err) => err.invalid_params().iter().map(|p| p.name.to_string()).collect(),
            Ok(_) => Vec::new(),
        };
        assert_eq!(names, ["limit"], "read_feed with limit {limit} answered {refused:?}");
    }
    let expected = vec![
        (Action::Launch, 1),
        (Action::Launch, 1),
        (Action::Pause, 2),
        (Action::Pause, 2),
        (Action::Resume, 3),
    ];
    let all = read_all(&service, account, MAX_FEED_PAGE, expected.len()).await;
    assert_eq!(steps(&all), expected, "the account's records in commit order");
    let in_pages = read_all(&service, account, 2, expected.len()).await;
    assert_eq!(in_pages, all, "pages of 2 read what one page reads");
    let end = all.last().map(|r| r.position);

    // A watch from the end sees the next change.
    let mut watch = service.watch(account, end).with_page_size(10);
    let writer = {
        let service = service.clone();
        let second = second.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            toggle(&service, &second).await
        })
    };
    let page = expect(
        timeout(PATIENCE, watch.next_page())
            .await
            .unwrap_or_else(|_| panic!("a watch did not see a change within {PATIENCE:?}")),
        "watch",
    );
    second = expect(writer.await, "the writer task");
    assert_eq!(steps(&page.records), [(Action::Resume, 3)], "the watch's page");
    assert_eq!(page.records[0].run_id(), second.id);
    let after_watch = Some(page.next);

    // A long poll with nothing to read waits and answers an empty page.
    let started = Instant::now();
    let wait = Duration::from_millis(100);
    let empty = expect(
        service.wait_for_changes(account, after_watch, 10, wait).await,
        "an idle long poll",
    );
    assert!(empty.records.is_empty(), "nothing was written: {empty:?}");
    assert!(started.elapsed() >= wait, "the long poll waited its time");
    assert!(Some(empty.next) >= after_watch, "the cursor did not go back");
    // One a write interrupts returns it at once.
    let writer = {
        let service = service.clone();
        let first = first.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            toggle(&service, &first).await
        })
    };
    let started = Instant::now();
    let woken = expect(
        service
            .wait_for_changes(account, Some(empty.next), 10, fielding_core::MAX_FEED_WAIT)
            .await,
        "a long poll",
    );
    first = expect(writer.await, "the writer task");
    assert_eq!(steps(&woken.records), [(Action::Pause, 4)], "the long poll's page");
    assert!(
        started.elapsed() < fielding_core::MAX_FEED_WAIT / 2,
        "a long poll returns when a record commits, not at the end of its wait ({:?})",
        started.elapsed()
    );

    // A run's history in pages.
    let history = expect(service.run_history(&first.key(), None, 3).await, "run_history");
    let versions: Vec<u64> = history.records.iter().map(|r| r.version.get()).collect();
    assert_eq!((versions, history.has_more), (vec![1, 2, 3], true));
    let rest = expect(service.run_history(&first.key(), history.next, 3).await, "run_history");
    let versions: Vec<u64> = rest.records.iter().map(|r| r.version.get()).collect();
    assert_eq!((versions, rest.has_more), (vec![4], false));

    // A consumer delivers everything once, resumes after its checkpoint.
    let all = read_all(&service, account, MAX_FEED_PAGE, 7).await;
    let (handled, ended) = consume(&service, account, "scenario", 2, all.len(), None).await;
    expect(ended, "the consumer");
    assert_eq!(
        handled, all,
        "the consumer delivered every record from the start, in order"
    );
    let name = expect(ConsumerName::parse("scenario"), "consumer name");
    let saved = expect(
        service.store().load_feed_checkpoint(account, &name).await,
        "load checkpoint",
    );
    let last = all.last().map(|r| r.position);
    assert!(
        saved >= last,
        "the checkpoint {saved:?} covers the last record handled {last:?}"
    );
    toggle(&service, &first).await;
    let (handled, ended) = consume(&service, account, "scenario", 2, 1, None).await;
    expect(ended, "the restarted consumer");
    assert_eq!(
        steps(&handled),
        [(Action::Resume, 5)],
        "a restarted consumer resumes after its checkpoint"
    );

    // A handler failure stops the consumer before the failed record.
    let all = read_all(&service, account, MAX_FEED_PAGE, 8).await;
    let failing = all[2].position;
    let (handled, ended) = consume(&service, account, "failing", 2, all.len(), Some(failing)).await;
    match ended {
        Err(ConsumerError::Handler { record_position, .. }) => assert_eq!(record_position, failing),
        other => panic!("a consumer whose handler fails answered {other:?}"),
    }
    assert_eq!(handled, all[..2], "the records before the failing one");
    let name = expect(ConsumerName::parse("failing"), "consumer name");
    let saved = expect(
        service.store().load_feed_checkpoint(account, &name).await,
        "load checkpoint",
    );
    assert!(
        saved >= Some(all[1].position) && saved < Some(failing),
        "the checkpoint {saved:?} is after the handled records and before the failed one at {failing}"
    );
    let (handled, ended) = consume(&service, account, "failing", 2, all.len() - 2, None).await;
    expect(ended, "the restarted consumer");
    assert_eq!(handled, all[2..], "restarted, it begins with the record that failed");
}
