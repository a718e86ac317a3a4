//! The feed's hard promise, under real concurrency: a reader that follows
//! the feed while many writers commit never skips a record and never reads
//! one twice.
//!
//! The bug this exists for is the outbox bug: a store that numbers a
//! record when it is *written* (a sequence, a counter taken before the
//! commit) and makes it readable when it *commits*. Writer A takes 41,
//! writer B takes 42 and commits first, a reader reads 42 and moves its
//! cursor past 41, then A commits and 41 is never read. Nothing in a
//! sequential test shows it; readers racing writers do.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use fielding_core::{FeedPosition, FeedRecord, FieldingRunId, FieldingStore, Status, UserId, Version};
use tokio::time::Instant;

use crate::cases::feed::{describe, seed, Expected, Follower, IDLE_READ};
use crate::cases::races::{race, Via};
use crate::failure::Case;
use crate::sample;
use crate::{Capabilities, CaseFailure};

/// How many successful increments each writer of the feed race makes.
pub const FEED_RACE_WRITES: usize = 30;

/// How many runs of the account the writers spread over.
const RUNS: usize = 4;

/// The page sizes of the readers: one reads a few records at a time, so
/// its cursor moves in small steps through records committing around it;
/// the other takes everything readable at once, so it is always at the
/// tail, where a record committed late lands behind it.
const READER_LIMITS: [usize; 2] = [3, 1000];

const MISSES_NOTHING: &str =
    "a reader that has read up to a cursor never afterwards finds a record at or before it: a reader following the feed from its cursor while writers commit concurrently reads, compared with the whole log read at the end, every record exactly once (0 skipped, 0 seen twice), at the position the log has it, and each run's records in version order";

const LOG_IS_COMPLETE: &str =
    "after concurrent writers have finished, the whole feed read from the start holds each of their successful writes exactly once, with its scope and change record, each run's records in version order";

/// A reader on its own task: follows the feed until its cursor reaches
/// `target` (set once the whole log is known), or `abort` is set.
async fn follow<S: FieldingStore + ?Sized>(
    case: Case,
    store: Arc<S>,
    mut follower: Follower,
    target: Arc<Mutex<Option<FeedPosition>>>,
    abort: Arc<AtomicBool>,
) -> Result<Vec<FeedRecord>, CaseFailure> {
    let mut deadline = None;
    while !abort.load(Ordering::SeqCst) {
        let target = *target.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(target) = target {
            if follower.cursor.is_some_and(|cursor| cursor >= target) {
                return Ok(follower.seen);
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + follower.lag());
            if Instant::now() > deadline {
                return Err(case.fail(
                    MISSES_NOTHING,
                    format!(
                        "a reader (pages of {}) never reached the end of the log at {target}: after {:?} its \
                         cursor is {:?}, having read {} records",
                        follower.limit,
                        follower.lag(),
                        follower.cursor,
                        follower.seen.len()
                    ),
                ));
            }
        }
        match follower.read(case, &*store).await? {
            Some(page) if !page.records.is_empty() => tokio::task::yield_now().await,
            _ => tokio::time::sleep(IDLE_READ).await,
        }
    }
    Ok(follower.seen)
}

/// What one reader read, compared with the whole log: the records it
/// skipped, read twice, read at another position than the log's, or read
/// out of version order, in words; `None` when it read the log exactly.
fn compare_with_log(seen: &[FeedRecord], log: &[FeedRecord]) -> Option<String> {
    let at: HashMap<(FieldingRunId, Version), FeedPosition> = log
        .iter()
        .map(|r| ((r.change.run_id, r.change.version), r.position))
        .collect();
    let mut counts: HashMap<(FieldingRunId, Version), usize> = HashMap::new();
    let mut moved = Vec::new();
    let mut unknown = Vec::new();
    let mut last_version: HashMap<FieldingRunId, Version> = HashMap::new();
    let mut out_of_order = Vec::new();
    for record in seen {
        let key = (record.change.run_id, record.change.version);
        *counts.entry(key).or_default() += 1;
        match at.get(&key) {
            Some(position) if *position != record.position => moved.push(format!(
                "v{} read at {}, in the log at {position}",
                key.1, record.position
            )),
            Some(_) => {}
            None => unknown.push(format!("v{} at {}", key.1, record.position)),
        }
        if let Some(before) = last_version.insert(key.0, key.1) {
            if key.1 <= before {
                out_of_order.push(format!("v{} after v{before} at {}", key.1, record.position));
            }
        }
    }
    let skipped: Vec<&FeedRecord> = log
        .iter()
        .filter(|r| !counts.contains_key(&(r.change.run_id, r.change.version)))
        .collect();
    let twice = counts.values().filter(|n| **n > 1).count();
    if skipped.is_empty() && twice == 0 && moved.is_empty() && unknown.is_empty() && out_of_order.is_empty() {
        return None;
    }
    let skipped_list: Vec<FeedRecord> = skipped.iter().map(|r| (*r).clone()).collect();
    Some(format!(
        "{} skipped {}, {twice} seen twice, {} read at another position than the log's {moved:?}, {} not in the \
         log {unknown:?}, {} out of version order {out_of_order:?} (read {} records, the log holds {})",
        skipped.len(),
        describe(&skipped_list),
        moved.len(),
        unknown.len(),
        out_of_order.len(),
        seen.len(),
        log.len()
    ))
}

/// The whole log compared with what was written: each written record once,
/// nothing else, each run's records in version order.
fn check_log(case: Case, log: &[FeedRecord], written: &[Expected]) -> Result<(), CaseFailure> {
    let mut expected: BTreeMap<(FieldingRunId, Version), &Expected> = BTreeMap::new();
    for record in written {
        expected.insert((record.1.run_id, record.1.version), record);
    }
    let mut found = 0;
    let mut last_version: HashMap<FieldingRunId, Version> = HashMap::new();
    for record in log {
        let key = (record.change.run_id, record.change.version);
        let matches = expected
            .get(&key)
            .is_some_and(|(scope, change)| *scope == record.scope && *change == record.change);
        case.ensure(matches, LOG_IS_COMPLETE, || {
            format!(
                "the log holds v{} of run {} at {} of {}, which is not a record written (or not as written)",
                key.1, key.0, record.position, record.scope
            )
        })?;
        found += 1;
        if let Some(before) = last_version.insert(key.0, key.1) {
            case.ensure(key.1 > before, LOG_IS_COMPLETE, || {
                format!("the log holds v{} of run {} after v{before}", key.1, key.0)
            })?;
        }
    }
    case.ensure(found == written.len(), LOG_IS_COMPLETE, || {
        format!(
            "{} records were written, the log holds {found}: {}",
            written.len(),
            describe(log)
        )
    })
}

/// N writers (the declared [`Capabilities::concurrent_writers`], 8 by
/// default) race on four runs of one account in two projects, each making
/// [`FEED_RACE_WRITES`] increments (even writers by compare-and-swap, odd
/// ones by `update`; paired on tasks and threads as in the other races),
/// while a writer of another account adds records of its own, and two
/// readers follow the account's feed from the start on tasks of their own,
/// one in pages of 3 and one in pages of 1000, each always from the
/// `next` of its last page. When the writers are done, the whole feed is
/// read from the start: it must hold every successful write exactly once,
/// with its scope and record, each run in version order. Then each reader
/// reads on until its cursor reaches the end of that log, and what it read
/// is compared with the log: 0 skipped, 0 seen twice, every record at the
/// position the log has it, each run's records in version order. Every
/// page is checked too (limit, order, cursor never back, `has_more`, only
/// the account's records).
///
/// A store that numbers records when they are written and makes them
/// readable when they commit fails here: a reader moves past a number
/// whose record commits later, and skips it.
pub async fn feed_race_readers_following_concurrent_writers_miss_nothing_and_see_nothing_twice<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("feed_race_readers_following_concurrent_writers_miss_nothing_and_see_nothing_twice");
    let base = sample::scope();
    let other_project = sample::other_project(base);
    let scopes = [
        base,
        sample::other_target_group(base),
        other_project,
        sample::other_target_group(other_project),
    ];
    let mut written: Vec<Expected> = Vec::new();
    let mut keys = Vec::with_capacity(RUNS);
    for scope in scopes {
        let (run, record) = seed(case, &*store, scope, Status::Live).await?;
        keys.push(run.key());
        written.push(record);
    }
    let (stranger, _) = seed(case, &*store, sample::other_account(base), Status::Paused).await?;

    let target = Arc::new(Mutex::new(None));
    let abort = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = READER_LIMITS
        .iter()
        .map(|&limit| {
            let follower = Follower::new(caps, base.account_id, None, limit)
                .tolerating_busy(caps.retryable_errors_under_contention());
            tokio::spawn(follow(
                case,
                Arc::clone(&store),
                follower,
                Arc::clone(&target),
                Arc::clone(&abort),
            ))
        })
        .collect();
    // Another account's writer: its records must never reach the readers.
    let noise = {
        let store = Arc::clone(&store);
        let abort = Arc::clone(&abort);
        tokio::spawn(async move {
            let mut run = stranger;
            for tag in 0..FEED_RACE_WRITES as u64 {
                if abort.load(Ordering::SeqCst) {
                    break;
                }
                let Some((next, record)) = sample::change(&run, tag, UserId::random()) else {
                    break;
                };
                if store.compare_and_swap(run.version, &next, &record).await.is_ok() {
                    run = next;
                }
                tokio::task::yield_now().await;
            }
        })
    };

    let outcome = async {
        let (successes, _refusals) = race(case, &store, caps, &keys, Via::Both, FEED_RACE_WRITES).await?;
        written.extend(successes.iter().map(|s| (s.run.scope(), s.record.clone())));
        // The readers and the other account's writer may still be running,
        // so this read races them too.
        let mut whole =
            Follower::new(caps, base.account_id, None, 100).tolerating_busy(caps.retryable_errors_under_contention());
        whole
            .until(case, &*store, written.len(), LOG_IS_COMPLETE, || {
                "reading the whole feed after the writers finished".into()
            })
            .await?;
        whole.drain(case, &*store).await?;
        check_log(case, &whole.seen, &written)?;
        Ok::<_, CaseFailure>(whole.seen)
    }
    .await;
    match &outcome {
        Ok(log) => {
            let end = log.last().map(|r| r.position).unwrap_or(FeedPosition::ZERO);
            *target.lock().unwrap_or_else(PoisonError::into_inner) = Some(end);
        }
        Err(_) => abort.store(true, Ordering::SeqCst),
    }
    let mut seen = Vec::new();
    let mut first_failure = None;
    for reader in readers {
        match reader.await {
            Ok(Ok(records)) => seen.push(records),
            Ok(Err(failure)) => {
                first_failure.get_or_insert(failure);
            }
            Err(join) => {
                first_failure.get_or_insert(case.fail(MISSES_NOTHING, format!("a reader task panicked: {join}")));
            }
        }
    }
    abort.store(true, Ordering::SeqCst);
    let _ = noise.await;
    let log = outcome?;
    if let Some(failure) = first_failure {
        return Err(failure);
    }
    for (records, limit) in seen.iter().zip(READER_LIMITS) {
        if let Some(diff) = compare_with_log(records, &log) {
            return Err(case.fail(
                MISSES_NOTHING,
                format!(
                    "the reader in pages of {limit}, following the feed while {} writers committed: {diff}",
                    caps.concurrent_writers()
                ),
            ));
        }
    }
    Ok(())
}
