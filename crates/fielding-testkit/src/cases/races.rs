//! Races with real tasks on the runtime's worker threads: lost updates,
//! cross-talk between runs, torn writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use fielding_core::{
    ChangeRecord, FieldingRun, FieldingStore, RunKey, Scope, Status, StoreError, Update, UpdateOutcome, UserId, Version,
};
use tokio::sync::Barrier;

use super::check;
use crate::failure::Case;
use crate::sample::{self, version};
use crate::{Capabilities, CaseFailure};

/// How many successful increments each writer makes in the race cases.
pub const WRITES_PER_WRITER: usize = 50;

/// How many increments the atomicity case makes at least (from version 90,
/// so they cross 99→100).
const MIN_ATOMICITY_WRITES: usize = 300;

/// How many more increments the atomicity case makes, at most, waiting for
/// every observer to have observed during the writes.
pub const EXTRA_ATOMICITY_WRITES: usize = 3000;

/// How many attempts one increment may take before the case gives up: far
/// more than fair contention among 64 writers needs, so hitting it means
/// the store refuses writes it should accept.
const MAX_ATTEMPTS: u64 = 4000;

const NO_LOST_UPDATE: &str =
    "compare-and-swap is atomic: of writers holding the same version exactly one wins, so N writers x M successful increments end at exactly version N*M+1, with one change record per success";

const REFUSAL_IS_NEWER: &str =
    "a refused compare-and-swap reports VersionConflict with expected = the version tried and current = a version newer than it";

const READ_YOUR_WRITES: &str =
    "reads are current: after a writer's compare-and-swap to version v succeeded, its next read returns version v or later";

const NO_CROSS_TALK: &str =
    "writes land only on the run they address: concurrent writers on many runs (same account, project or target group id) leave each run with exactly its own updates and records";

const NO_LOST_UPDATE_VIA_UPDATE: &str =
    "update is an atomic read-modify-write: of concurrent updates deciding on the same version exactly one writes, the others get VersionConflict, so N writers x M successful updates end at exactly version N*M+1, with one change record per success";

const UPDATE_DECIDES_ONCE: &str =
    "update calls decide at most once per call, and answers Ok(Written) only after calling it";

const UPDATE_NEVER_GOES_BACK: &str =
    "update reads the current run and writes only on top of it: after a writer's update wrote version v, its next update shows decide version v or later (an older one means a write based on a stale read overwrote a newer version: a lost update)";

const OBSERVED: &str =
    "the atomicity case observes what it checks: each of its four observers reads the run and its records while the writes go on (with busy answers declared, at least one of them does), otherwise nothing was checked during the writes";

const ATOMIC_RECORDS: &str =
    "a write and its change record are one: no reader ever sees a run version without its change record, or a change record before its run version";

/// One successful increment.
#[derive(Debug, Clone)]
pub(crate) struct Success {
    writer: usize,
    write: usize,
    expected: Version,
    /// The run as written.
    pub(crate) run: FieldingRun,
    /// Its change record.
    pub(crate) record: ChangeRecord,
}

/// Reads the run and compare-and-swaps it to the next version until that
/// succeeds, checking every refusal on the way.
#[allow(clippy::too_many_arguments)]
async fn increment<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    caps: Capabilities,
    key: &RunKey,
    writer: usize,
    write: usize,
    user: UserId,
    last_success: &mut Option<Version>,
    refusals: &AtomicUsize,
) -> Result<Success, CaseFailure> {
    let tolerate = |err: &StoreError| caps.retryable_errors_under_contention() && err.is_retryable();
    for attempt in 0..MAX_ATTEMPTS {
        let run = match store.get(key).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                return Err(case.fail(
                    NO_CROSS_TALK,
                    format!("writer {writer}, write {write}: get({key}) returned no run in the middle of a race"),
                ))
            }
            Err(err) if tolerate(&err) => continue,
            Err(err) => return Err(case.error(format!("writer {writer}: get({key})"), &err)),
        };
        if let Some(own) = *last_success {
            case.ensure(run.version >= own, READ_YOUR_WRITES, || {
                format!(
                    "writer {writer} wrote version {own} of {key}, then read version {}",
                    run.version
                )
            })?;
        }
        // The gap between reading and writing is where real writers lose
        // races. Writers on the runtime's workers yield in it, so the other
        // tasks get in even when the store itself never awaits; writers on
        // threads of their own go straight on, to hit the store in parallel.
        tokio::task::yield_now().await;
        let tag = ((writer as u64) << 24) | ((write as u64) << 12) | attempt;
        let Some((next, record)) = sample::change(&run, tag, user) else {
            return Err(case.fail(NO_LOST_UPDATE, format!("{key} reached version {}", run.version)));
        };
        match store.compare_and_swap(run.version, &next, &record).await {
            Ok(()) => {
                *last_success = Some(next.version);
                return Ok(Success {
                    writer,
                    write,
                    expected: run.version,
                    run: next,
                    record,
                });
            }
            Err(StoreError::VersionConflict { expected, current }) => {
                case.ensure(
                    expected == run.version && current > run.version,
                    REFUSAL_IS_NEWER,
                    || {
                        format!(
                        "writer {writer} tried version {} of {key} and was refused with VersionConflict {{ expected: \
                         {expected}, current: {current} }}",
                        run.version
                    )
                    },
                )?;
                refusals.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) if tolerate(&err) => {}
            Err(err) => {
                return Err(case.fail(
                    NO_LOST_UPDATE,
                    format!(
                        "writer {writer}: compare_and_swap(expected {}) on {key} failed with {err:?}, neither \
                         success nor VersionConflict",
                        run.version
                    ),
                ))
            }
        }
    }
    Err(case.fail(
        NO_LOST_UPDATE,
        format!("writer {writer}, write {write}: no compare_and_swap on {key} succeeded in {MAX_ATTEMPTS} attempts"),
    ))
}

/// How the writers of a race increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `get`, yield, `compare_and_swap` at the version read.
    CompareAndSwap,
    /// One `update` whose `decide` writes the next version of the run shown.
    Update,
    /// Even writers by compare-and-swap, odd ones by `update`.
    Both,
}

/// One increment with `update`: the `decide` writes the next version of
/// the run it is shown, at that version; on a conflict, a new `update`.
#[allow(clippy::too_many_arguments)]
async fn increment_by_update<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    caps: Capabilities,
    key: &RunKey,
    writer: usize,
    write: usize,
    user: UserId,
    last_success: &mut Option<Version>,
    refusals: &AtomicUsize,
) -> Result<Success, CaseFailure> {
    let tolerate = |err: &StoreError| caps.retryable_errors_under_contention() && err.is_retryable();
    for attempt in 0..MAX_ATTEMPTS {
        // Shuffle the writers on a worker before each call, as the
        // compare-and-swap writers do between their read and their write.
        tokio::task::yield_now().await;
        let tag = ((writer as u64) << 24) | ((write as u64) << 12) | attempt;
        let mut shown: Vec<FieldingRun> = Vec::new();
        let mut planned = None;
        let mut decide = |run: &FieldingRun| {
            shown.push(run.clone());
            match sample::change(run, tag, user) {
                Some((next, record)) => {
                    planned = Some((run.version, next.clone(), record.clone()));
                    Update::Write {
                        expected: run.version,
                        run: next,
                        change: record,
                    }
                }
                None => Update::Skip,
            }
        };
        let result = store.update(key, &mut decide).await;
        let call = || {
            let versions: Vec<String> = shown.iter().map(|r| r.version.to_string()).collect();
            format!(
                "writer {writer}, write {write}: update({key}) showed decide versions [{}] and answered {result:?}",
                versions.join(", ")
            )
        };
        case.ensure(shown.len() <= 1, UPDATE_DECIDES_ONCE, call)?;
        if let (Some(run), Some(own)) = (shown.first(), *last_success) {
            case.ensure(run.version >= own, UPDATE_NEVER_GOES_BACK, || {
                format!(
                    "writer {writer} wrote version {own} of {key}, then its next update showed decide version {}",
                    run.version
                )
            })?;
        }
        match &result {
            Ok(UpdateOutcome::Written) => {
                let Some((expected, run, record)) = planned else {
                    return Err(case.fail(UPDATE_DECIDES_ONCE, call()));
                };
                *last_success = Some(run.version);
                return Ok(Success {
                    writer,
                    write,
                    expected,
                    run,
                    record,
                });
            }
            Ok(UpdateOutcome::NotFound) => {
                return Err(case.fail(NO_CROSS_TALK, format!("{}, no run in the middle of a race", call())))
            }
            Ok(UpdateOutcome::Skipped) => {
                return Err(case.fail(
                    NO_LOST_UPDATE_VIA_UPDATE,
                    format!("{}, though decide asked for a write", call()),
                ))
            }
            Err(StoreError::VersionConflict { expected, current }) => {
                let tried = shown.first().map(|r| r.version);
                case.ensure(tried == Some(*expected) && current > expected, REFUSAL_IS_NEWER, || {
                    format!(
                        "{}: the refusal must name the version decided on and a newer one",
                        call()
                    )
                })?;
                refusals.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) if tolerate(err) => {}
            Err(_) => {
                return Err(case.fail(
                    NO_LOST_UPDATE_VIA_UPDATE,
                    format!("{}, neither success nor VersionConflict", call()),
                ))
            }
        }
    }
    Err(case.fail(
        NO_LOST_UPDATE_VIA_UPDATE,
        format!("writer {writer}, write {write}: no update of {key} succeeded in {MAX_ATTEMPTS} attempts"),
    ))
}

/// Spawns one task per writer; each makes `writes` successful increments
/// on `keys[(writer + write) % keys.len()]`, all starting together.
pub(crate) async fn race<S>(
    case: Case,
    store: &Arc<S>,
    caps: Capabilities,
    keys: &[RunKey],
    via: Via,
    writes: usize,
) -> Result<(Vec<Success>, usize), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let writers = caps.concurrent_writers();
    let barrier = Arc::new(Barrier::new(writers));
    let refusals = Arc::new(AtomicUsize::new(0));
    let handle = tokio::runtime::Handle::current();
    let writer_future = |writer: usize| {
        let store = Arc::clone(store);
        let barrier = Arc::clone(&barrier);
        let refusals = Arc::clone(&refusals);
        let keys = keys.to_vec();
        async move {
            let user = UserId::random();
            let mut last = vec![None; keys.len()];
            let mut successes = Vec::new();
            barrier.wait().await;
            for write in 0..writes {
                let k = (writer + write) % keys.len();
                let (key, last) = (&keys[k], &mut last[k]);
                let by_update = match via {
                    Via::CompareAndSwap => false,
                    Via::Update => true,
                    Via::Both => writer % 2 == 1,
                };
                let success = if by_update {
                    increment_by_update(case, &*store, caps, key, writer, write, user, last, &refusals).await?
                } else {
                    increment(case, &*store, caps, key, writer, write, user, last, &refusals).await?
                };
                successes.push(success);
            }
            Ok::<_, CaseFailure>(successes)
        }
    };
    // Writers go in pairs, each pair joined on one task, so they interleave
    // at every await (in the store too); half the pairs are tasks on the
    // runtime's workers, half run on threads of their own, so pairs also
    // hit the store in parallel.
    let mut tasks = Vec::new();
    for first in (0..writers).step_by(2) {
        let a = writer_future(first);
        let b = (first + 1 < writers).then(|| writer_future(first + 1));
        let pair = async move {
            match b {
                Some(b) => {
                    let (a, b) = tokio::join!(a, b);
                    let mut both = a?;
                    both.extend(b?);
                    Ok(both)
                }
                None => a.await,
            }
        };
        tasks.push(if (first / 2) % 2 == 0 {
            tokio::spawn(pair)
        } else {
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || handle.block_on(pair))
        });
    }
    let mut all = Vec::new();
    let mut first_failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(successes)) => all.extend(successes),
            Ok(Err(failure)) => {
                first_failure.get_or_insert(failure);
            }
            Err(join) => {
                first_failure.get_or_insert(case.fail(NO_LOST_UPDATE, format!("a writer task panicked: {join}")));
            }
        }
    }
    match first_failure {
        Some(failure) => Err(failure),
        None => Ok((all, refusals.load(Ordering::Relaxed))),
    }
}

/// Checks what a race left on one run: every success has its own version
/// (no two writers won the same version), the run ends at `start +
/// successes` as the last winner wrote it, and the history is exactly the
/// creation record followed by the winners' records.
async fn verify_run<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    initial: &FieldingRun,
    creation: &ChangeRecord,
    successes: &[&Success],
) -> Result<(), CaseFailure> {
    let key = initial.key();
    let mut by_version: BTreeMap<u64, &Success> = BTreeMap::new();
    for success in successes {
        if let Some(other) = by_version.insert(success.run.version.get(), success) {
            return Err(case.fail(
                promise,
                format!(
                    "two writers both succeeded with expected version {} on {key}: writer {} (write {}) and writer {} \
                     (write {}); one of the two updates was lost",
                    success.expected, other.writer, other.write, success.writer, success.write
                ),
            ));
        }
    }
    let start = initial.version.get();
    let end = start + successes.len() as u64;
    let result = store.get(&key).await;
    let stored = case.ok(format!("get({key}) after the race"), result)?;
    let stored_version = stored.as_ref().map(|r| r.version.get());
    case.ensure(stored_version == Some(end), promise, || {
        format!(
            "{} successful increments from version {start} on {key}, but the run is at version {stored_version:?}, \
             expected {end} (the highest success claimed version {:?})",
            successes.len(),
            by_version.keys().next_back()
        )
    })?;
    let last = by_version
        .get(&end)
        .map(|s| s.run.clone())
        .unwrap_or_else(|| initial.clone());
    check::compare_run(case, promise, "the run after the race", Some(&last), stored.as_ref())?;
    let mut expected = vec![creation.clone()];
    for v in start + 1..=end {
        match by_version.get(&v) {
            Some(success) => expected.push(success.record.clone()),
            None => {
                return Err(case.fail(
                    promise,
                    format!("no writer succeeded at version {v} of {key}, though versions up to {end} were claimed"),
                ))
            }
        }
    }
    check::changes(case, store, promise, &key, &expected, "after the race").await
}

/// Races on one run: `concurrent_writers` writers each make
/// [`WRITES_PER_WRITER`] compare-and-swap increments (read, yield, write at
/// the version read, re-read on conflict). Writers run in pairs joined on
/// one task, so they interleave at every await, in the store too; half the
/// pairs are tasks on the runtime's workers and half have a thread of their
/// own, so pairs also run in parallel. The run ends at exactly
/// `N·M + 1`; every success has its own change record (versions `1..=N·M+1`,
/// each the record its writer sent); every refusal named a version newer
/// than the one tried; and no writer ever read a version older than its
/// own last write.
pub async fn race_concurrent_increments_on_one_run_lose_no_update<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("race_concurrent_increments_on_one_run_lose_no_update");
    let run = sample::run(sample::scope(), Version::INITIAL, Status::Live);
    let creation = sample::creation(&run);
    let result = store.insert(&run, &creation).await;
    case.ok("insert", result)?;
    let (successes, _refusals) = race(case, &store, caps, &[run.key()], Via::CompareAndSwap, WRITES_PER_WRITER).await?;
    let all: Vec<&Success> = successes.iter().collect();
    verify_run(case, &*store, NO_LOST_UPDATE, &run, &creation, &all).await
}

/// Races on one run through `update`: `concurrent_writers` writers each
/// make [`WRITES_PER_WRITER`] increments, each one `update` whose `decide`
/// writes the next version of the run it is shown (a new `update` on
/// `VersionConflict`), paired and spread over tasks and threads as in
/// [`race_concurrent_increments_on_one_run_lose_no_update`]. The run ends at
/// exactly `N·M + 1` with one change record per success, each the record
/// its writer's `decide` asked for; `decide` is called at most once per
/// call; every refusal names the version decided on and a newer one; no
/// writer is shown a version older than its own last write. An override of
/// `update` that reads, decides and writes without checking the version in
/// the same atomic step as the write lets two writers of one version both
/// succeed, and fails here.
pub async fn race_concurrent_updates_on_one_run_lose_no_update<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("race_concurrent_updates_on_one_run_lose_no_update");
    let run = sample::run(sample::scope(), Version::INITIAL, Status::Live);
    let creation = sample::creation(&run);
    let result = store.insert(&run, &creation).await;
    case.ok("insert", result)?;
    let (successes, _refusals) = race(case, &store, caps, &[run.key()], Via::Update, WRITES_PER_WRITER).await?;
    let all: Vec<&Success> = successes.iter().collect();
    verify_run(case, &*store, NO_LOST_UPDATE_VIA_UPDATE, &run, &creation, &all).await
}

/// Races on many runs: the same writers spread their increments over five
/// runs whose scopes share account, project or target group id with each
/// other and start at versions 1, 9, 99, 2^31-8 and 2^32-8; each run ends
/// with exactly its own updates and its own records, nothing of the others.
pub async fn race_writers_spread_over_many_runs_do_not_cross_talk<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("race_writers_spread_over_many_runs_do_not_cross_talk");
    let base = sample::scope();
    let scopes: [Scope; 5] = [
        base,
        sample::other_account(base),
        sample::other_project(base),
        sample::other_target_group(base),
        sample::other_account(sample::other_target_group(base)),
    ];
    let total = (caps.concurrent_writers() * WRITES_PER_WRITER) as u64;
    let ceiling = caps.max_version().get() - total;
    let starts = [1, 9, 99, (1 << 31) - 8, (1 << 32) - 8];
    let mut runs = Vec::new();
    for (scope, start) in scopes.into_iter().zip(starts) {
        let run = sample::run(scope, version(start.min(ceiling)), Status::Paused);
        let creation = sample::creation(&run);
        let result = store.insert(&run, &creation).await;
        case.ok(format!("insert into {scope}"), result)?;
        runs.push((run, creation));
    }
    let keys: Vec<RunKey> = runs.iter().map(|(r, _)| r.key()).collect();
    let (successes, _refusals) = race(case, &store, caps, &keys, Via::CompareAndSwap, WRITES_PER_WRITER).await?;
    for (run, creation) in &runs {
        let own: Vec<&Success> = successes.iter().filter(|s| s.run.id == run.id).collect();
        verify_run(case, &*store, NO_CROSS_TALK, run, creation, &own).await?;
    }
    Ok(())
}

/// Change records are atomic with their write: while a writer makes at
/// least 300 increments (crossing 99→100), four observers keep reading the
/// run and its records, in both orders: two in parallel on other worker
/// threads, two on the writer's own task, where they run whenever it
/// awaits, also between two steps inside the store. Reading the run first,
/// the records must already include its version (and describe it); reading
/// the records first, the run must already be at their last version or
/// later. A store that writes the two in separate steps shows one without
/// the other.
///
/// The case must observe what it checks, or it would pass having checked
/// nothing: each observer must read run and records (an answer that is not
/// a tolerated busy one) while the writes go on. So the writer goes on past
/// 300 increments until every observer has (with busy answers declared,
/// any one of them, as a busy store may refuse one observer every time),
/// within [`EXTRA_ATOMICITY_WRITES`] more; a store or schedule that keeps
/// the observers from ever reading fails the case.
pub async fn change_records_are_atomic_with_the_write_they_describe<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("change_records_are_atomic_with_the_write_they_describe");
    let run = sample::run(sample::scope(), version(90), Status::Live);
    let creation = sample::creation(&run);
    let result = store.insert(&run, &creation).await;
    case.ok("insert", result)?;
    let key = run.key();
    let start = run.version.get();
    let done = Arc::new(AtomicBool::new(false));
    // How many observations each observer made while the writes went on.
    let observed: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    let enough = |observed: &[AtomicUsize; 4]| {
        let mut seen = observed.iter().map(|n| n.load(Ordering::SeqCst) > 0);
        if caps.retryable_errors_under_contention() {
            seen.any(|s| s)
        } else {
            seen.all(|s| s)
        }
    };

    let observer = |index: usize, records_first: bool| {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        let observed = Arc::clone(&observed);
        async move {
            while !done.load(Ordering::SeqCst) {
                if observe(case, &*store, caps, &key, start, records_first).await? {
                    observed[index].fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
            }
            Ok::<_, CaseFailure>(())
        }
    };
    // Two observers in parallel on other workers, and two on this task,
    // where they run whenever the writer awaits, also inside the store.
    let parallel = [tokio::spawn(observer(0, false)), tokio::spawn(observer(1, true))];
    let writer = async {
        let refusals = AtomicUsize::new(0);
        let mut last = None;
        let mut written = Vec::new();
        let mut outcome = Ok(());
        for write in 0..MIN_ATOMICITY_WRITES + EXTRA_ATOMICITY_WRITES {
            if write >= MIN_ATOMICITY_WRITES && enough(&observed) {
                break;
            }
            match increment(
                case,
                &*store,
                caps,
                &key,
                0,
                write,
                UserId::random(),
                &mut last,
                &refusals,
            )
            .await
            {
                Ok(success) => written.push(success),
                Err(failure) => {
                    outcome = Err(failure);
                    break;
                }
            }
        }
        done.store(true, Ordering::SeqCst);
        outcome.map(|()| written)
    };
    let (written, local_a, local_b) = tokio::join!(writer, observer(2, false), observer(3, true));
    local_a?;
    local_b?;
    for task in parallel {
        task.await
            .map_err(|e| case.fail(ATOMIC_RECORDS, format!("an observer task panicked: {e}")))??;
    }
    let written = written?;
    case.ensure(enough(&observed), OBSERVED, || {
        let names = [
            "in parallel, run first",
            "in parallel, records first",
            "on the writer's task, run first",
            "on the writer's task, records first",
        ];
        let counts: Vec<String> = names
            .iter()
            .zip(observed.iter())
            .map(|(name, n)| format!("{name}: {}", n.load(Ordering::SeqCst)))
            .collect();
        format!(
            "observations of run and records while {} writes went on: {}",
            written.len(),
            counts.join(", ")
        )
    })?;
    let all: Vec<&Success> = written.iter().collect();
    verify_run(case, &*store, ATOMIC_RECORDS, &run, &creation, &all).await
}

/// One observation for the atomicity case: `Ok(true)` when it read both the
/// run and its records and they agree, `Ok(false)` when a tolerated busy
/// answer left nothing to check.
async fn observe<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    caps: Capabilities,
    key: &RunKey,
    start: u64,
    records_first: bool,
) -> Result<bool, CaseFailure> {
    let (run, records) = if records_first {
        let records = store.changes(key).await;
        let run = store.get(key).await;
        (run, records)
    } else {
        let run = store.get(key).await;
        let records = store.changes(key).await;
        (run, records)
    };
    let busy = |err: Option<&StoreError>| {
        caps.retryable_errors_under_contention() && err.is_some_and(StoreError::is_retryable)
    };
    if busy(run.as_ref().err()) || busy(records.as_ref().err()) {
        return Ok(false); // a tolerated busy answer: no observation this time
    }
    let run = case
        .ok(format!("get({key}) while a writer runs"), run)?
        .ok_or_else(|| {
            case.fail(
                ATOMIC_RECORDS,
                format!("get({key}) returned no run while a writer runs"),
            )
        })?;
    let records = case.ok(format!("changes({key}) while a writer runs"), records)?;
    let contiguous = records
        .iter()
        .enumerate()
        .all(|(i, r)| r.version.get() == start + i as u64);
    case.ensure(!records.is_empty() && contiguous, ATOMIC_RECORDS, || {
        format!(
            "changes({key}) returned versions {} while a writer runs; expected {start}, {}, ... without gaps",
            sample::versions(&records),
            start + 1
        )
    })?;
    let last = records.last().map(|r| r.version).unwrap_or(run.version);
    if records_first {
        case.ensure(run.version >= last, ATOMIC_RECORDS, || {
            format!(
                "read the records first: they reach version {last}; then read the run: it is at version {}, \
                 older than its own change record",
                run.version
            )
        })?;
    } else {
        case.ensure(last >= run.version, ATOMIC_RECORDS, || {
            format!(
                "read the run first: it is at version {}; then read the records: they stop at version {last}, \
                 so version {} has no change record",
                run.version, run.version
            )
        })?;
        let index = (run.version.get() - start) as usize;
        let describes = records.get(index).is_some_and(|r| {
            r.run_id == run.id
                && r.status_to == run.status
                && r.start_to == run.start_fielding_at
                && r.end_to == run.end_fielding_at
                && r.changed_at == run.last_changed_at
                && r.changed_by == run.last_changed_by
        });
        case.ensure(describes, ATOMIC_RECORDS, || {
            format!(
                "the change record of version {} does not describe the run at that version: record {:?}, run {run:?}",
                run.version,
                records.get(index)
            )
        })?;
    }
    Ok(true)
}
