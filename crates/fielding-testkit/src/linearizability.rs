//! The linearizability check: generated schedules of read-then-write cycles,
//! run step by step against the store and a reference model.
//!
//! # What a schedule is
//!
//! Up to [`MAX_WRITERS`] writers each repeat one cycle: *read* the run (even
//! writers with `get`, odd ones with `find_by_target_group`), then *write*
//! it with `compare_and_swap` at the version read, as the next version with
//! new content. A [`Schedule`] is the order of the writers' steps, plus the
//! version the run starts at. A write by a writer that has not read since
//! its last write is skipped, so every sequence of steps is a valid
//! schedule and dropping a step never changes what the others do: that is
//! what lets a failing schedule shrink to a minimal one.
//!
//! A step marked [`concurrent_with_next`](Step::concurrent_with_next) runs
//! *at the same time* as the following step (of another writer): their
//! futures are polled together on one task, always in the same order, so
//! an in-memory store that awaits between its check and its write
//! interleaves the same way on every run. Everything else runs one step at
//! a time, each awaited before the next.
//!
//! # What is checked
//!
//! The model is the obvious sequential store: one run, its records. Every
//! sequential step's outcome must be exactly the model's (the run read,
//! success, or `VersionConflict` with the model's current version).
//! Concurrent steps must match the model in *some* order (that is
//! linearizability: a store that let two writers of one version both
//! succeed has no such order). At the end the stored run and its change
//! records must equal the model's.
//!
//! # Reproducing a failure
//!
//! A failure shows the shrunk schedule with the outcome of every step and
//! the seed (`PROPTEST_RNG_SEED=...` regenerates the same schedules).
//! [`check_schedule`] replays one schedule against a store you hand it.

use std::fmt;

use fielding_core::{ChangeRecord, FieldingRun, FieldingStore, Status, StoreError, UserId, Version};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use crate::failure::Case;
use crate::sample::{self, version};
use crate::{Capabilities, CaseFailure, StoreFactory};

/// How many writers a schedule has at most.
pub const MAX_WRITERS: u8 = 4;

/// How many steps a schedule has at most.
pub const MAX_STEPS: usize = 32;

/// How many schedules the case generates unless `PROPTEST_CASES` says
/// otherwise: few enough that the suite stays fast, enough to find a lost
/// update within the first handful.
pub const DEFAULT_CASES: u32 = 64;

/// How many shrinking steps the case takes at most unless
/// `PROPTEST_MAX_SHRINK_ITERS` says otherwise.
pub const DEFAULT_MAX_SHRINK_ITERS: u32 = 2048;

const NAME: &str = "linearizable_interleaved_read_then_write_cycles_match_the_model";

const LINEARIZABLE: &str =
    "the store is linearizable: every read, compare-and-swap and refusal (with its current version) matches a sequential store that executes the operations in some order consistent with the schedule, and the final run and change records match it too";

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the run (and remember it).
    Read,
    /// Compare-and-swap the run last read to its next version; skipped if
    /// the writer has not read since its last write.
    Write,
}

/// One step of one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Which writer (`0..MAX_WRITERS`).
    pub writer: u8,
    /// Read or write.
    pub action: Action,
    /// Whether the next step runs at the same time as this one. Ignored
    /// when the next step is by a writer already in this concurrent group.
    pub concurrent_with_next: bool,
}

impl Step {
    /// A step that runs on its own.
    pub const fn new(writer: u8, action: Action) -> Self {
        Self {
            writer,
            action,
            concurrent_with_next: false,
        }
    }

    /// This step, running at the same time as the next one.
    pub const fn with_next(mut self) -> Self {
        self.concurrent_with_next = true;
        self
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Read => "read",
            Action::Write => "write",
        };
        write!(f, "w{} {action}", self.writer)
    }
}

/// An interleaving of the writers' steps and the version the run starts at.
///
/// ```
/// use fielding_testkit::linearizability::{Action::*, Schedule, Step};
/// // Both writers read version 9, then write at the same time: exactly one
/// // may win, and the run must be at version 10 with two records.
/// let lost_update = Schedule {
///     start_version: 9,
///     steps: vec![Step::new(0, Read), Step::new(1, Read), Step::new(0, Write).with_next(), Step::new(1, Write)],
/// };
/// assert_eq!(lost_update.to_string(), "start at version 9: w0 read, w1 read, {w0 write | w1 write}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The version the run is inserted at.
    pub start_version: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// The steps grouped into what runs together: each group holds steps
    /// of distinct writers that run concurrently.
    pub fn groups(&self) -> Vec<Vec<Step>> {
        let mut groups: Vec<Vec<Step>> = Vec::new();
        let mut joins_previous = false;
        for step in &self.steps {
            match groups.last_mut() {
                Some(group) if joins_previous && group.iter().all(|s| s.writer != step.writer) => group.push(*step),
                _ => groups.push(vec![*step]),
            }
            joins_previous = step.concurrent_with_next;
        }
        groups
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "start at version {}:", self.start_version)?;
        for (i, group) in self.groups().iter().enumerate() {
            f.write_str(if i == 0 { " " } else { ", " })?;
            let names: Vec<String> = group.iter().map(ToString::to_string).collect();
            if names.len() == 1 {
                f.write_str(&names[0])?;
            } else {
                write!(f, "{{{}}}", names.join(" | "))?;
            }
        }
        Ok(())
    }
}

/// The strategy the case draws schedules from: 1 to [`MAX_STEPS`] steps of
/// up to [`MAX_WRITERS`] writers, half reads and half writes, 60% of them
/// concurrent with the next (enough that a lost update shows up in about
/// one schedule in six), starting at version 1, just below 10
/// or 100, or just below 2^31, 2^32, 2^53 or `i64::MAX` (clamped to the
/// store's `max_version`). Shrinking moves the start towards version 1,
/// drops steps, moves them to lower writers, turns writes into reads and
/// makes steps sequential.
pub fn schedules(caps: Capabilities) -> impl Strategy<Value = Schedule> {
    let highest_start = caps.max_version().get() - MAX_STEPS as u64;
    let action = prop_oneof![Just(Action::Read), Just(Action::Write)];
    let step =
        (0..MAX_WRITERS, action, prop::bool::weighted(0.6)).prop_map(|(writer, action, concurrent_with_next)| Step {
            writer,
            action,
            concurrent_with_next,
        });
    let start = prop_oneof![
        Just(1u64),
        2u64..=9,
        95u64..=99,
        (1u64 << 31) - 12..=(1u64 << 31) - 1,
        (1u64 << 32) - 12..=(1u64 << 32) - 1,
        (1u64 << 53) - 12..=(1u64 << 53),
        Just(i64::MAX as u64 - MAX_STEPS as u64),
    ];
    (start, prop::collection::vec(step, 1..=MAX_STEPS)).prop_map(move |(start, steps)| Schedule {
        start_version: start.min(highest_start),
        steps,
    })
}

/// One operation of a schedule. (A handful exist at a time, so the size
/// of the write variant does not matter.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Op {
    Read {
        writer: u8,
    },
    Write {
        writer: u8,
        expected: Version,
        next: FieldingRun,
        record: ChangeRecord,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read { writer } if writer % 2 == 0 => write!(f, "w{writer} get"),
            Op::Read { writer } => write!(f, "w{writer} find_by_target_group"),
            Op::Write { writer, expected, .. } => write!(f, "w{writer} compare_and_swap(expected {expected})"),
        }
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Read(Option<FieldingRun>),
    Written,
    Conflict { expected: Version, current: Version },
    NotFound,
    Failed { error: String, retryable: bool },
}

impl Outcome {
    fn failed(err: &StoreError) -> Self {
        Outcome::Failed {
            error: format!("{err:?}"),
            retryable: err.is_retryable(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Read(Some(run)) => write!(f, "run at version {}", run.version),
            Outcome::Read(None) => f.write_str("no run"),
            Outcome::Written => f.write_str("Ok"),
            Outcome::Conflict { expected, current } => {
                write!(f, "VersionConflict {{ expected: {expected}, current: {current} }}")
            }
            Outcome::NotFound => f.write_str("NotFound"),
            Outcome::Failed { error, .. } => write!(f, "error {error}"),
        }
    }
}

async fn execute<S: FieldingStore + ?Sized>(store: &S, op: &Op, key: &fielding_core::RunKey) -> Outcome {
    match op {
        Op::Read { writer } => {
            let read = if writer % 2 == 0 {
                store.get(key).await
            } else {
                store.find_by_target_group(&key.scope).await
            };
            match read {
                Ok(run) => Outcome::Read(run),
                Err(err) => Outcome::failed(&err),
            }
        }
        Op::Write {
            expected, next, record, ..
        } => match store.compare_and_swap(*expected, next, record).await {
            Ok(()) => Outcome::Written,
            Err(StoreError::VersionConflict { expected, current }) => Outcome::Conflict { expected, current },
            Err(StoreError::NotFound) => Outcome::NotFound,
            Err(err) => Outcome::failed(&err),
        },
    }
}

/// The reference: a sequential store holding one run.
#[derive(Debug, Clone)]
struct Model {
    run: FieldingRun,
    records: Vec<ChangeRecord>,
}

impl Model {
    /// What a sequential store answers to `op` now.
    fn expect(&self, op: &Op) -> Outcome {
        match op {
            Op::Read { .. } => Outcome::Read(Some(self.run.clone())),
            Op::Write { expected, .. } if *expected == self.run.version => Outcome::Written,
            Op::Write { expected, .. } => Outcome::Conflict {
                expected: *expected,
                current: self.run.version,
            },
        }
    }

    /// Whether `seen` is a possible answer to `op` now; if so, applies it.
    fn accept(&mut self, op: &Op, seen: &Outcome, tolerate_retryable: bool) -> bool {
        if tolerate_retryable && matches!(seen, Outcome::Failed { retryable: true, .. }) {
            return true; // nothing happened
        }
        if self.expect(op) != *seen {
            return false;
        }
        if let (Op::Write { next, record, .. }, Outcome::Written) = (op, seen) {
            self.run = next.clone();
            self.records.push(record.clone());
        }
        true
    }

    /// An order of `ops` in which the model gives exactly the `seen`
    /// outcomes, and the model after it.
    fn linearize(&self, ops: &[Op], seen: &[Outcome], left: &mut Vec<usize>, tolerate: bool) -> Option<Model> {
        if left.is_empty() {
            return Some(self.clone());
        }
        for pos in 0..left.len() {
            let i = left[pos];
            let mut model = self.clone();
            if model.accept(&ops[i], &seen[i], tolerate) {
                left.remove(pos);
                let found = model.linearize(ops, seen, left, tolerate);
                left.insert(pos, i);
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }
}

/// Why the `seen` outcomes of `ops` are impossible from `model`: what a
/// sequential store answers in the order listed, with the differing fields
/// of a run read back.
fn explain(model: &Model, ops: &[Op], seen: &[Outcome]) -> String {
    let mut sequential = model.clone();
    let answers: Vec<String> = ops
        .iter()
        .zip(seen)
        .map(|(op, seen)| {
            let wanted = sequential.expect(op);
            sequential.accept(op, &wanted, false);
            let mut line = format!("{op}: the store answered {seen}, a sequential store answers {wanted}");
            if let (Outcome::Read(Some(wanted)), Outcome::Read(Some(seen))) = (&wanted, seen) {
                if wanted != seen {
                    line.push_str(&format!(" ({})", sample::run_diff(wanted, seen)));
                }
            }
            line
        })
        .collect();
    if ops.len() == 1 {
        answers.join("")
    } else {
        format!(
            "no order of these concurrent operations explains the answers; in the order listed: {}",
            answers.join("; ")
        )
    }
}

/// Runs `schedule` against `store` (fresh, or at least without a run in
/// the scope the check makes up) and the model, step by step.
///
/// Use it to replay a schedule a failure printed:
///
/// ```
/// use std::sync::Arc;
/// use fielding_memory::MemoryStore;
/// use fielding_testkit::linearizability::{check_schedule, Action::*, Schedule, Step};
/// use fielding_testkit::Capabilities;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let schedule = Schedule {
///     start_version: 99,
///     steps: vec![
///         Step::new(0, Read).with_next(),
///         Step::new(1, Read),
///         Step::new(0, Write).with_next(),
///         Step::new(1, Write),
///     ],
/// };
/// let store = MemoryStore::new();
/// check_schedule(&store, &schedule, Capabilities::full()).await.unwrap();
/// # }
/// ```
pub async fn check_schedule<S: FieldingStore + ?Sized>(
    store: &S,
    schedule: &Schedule,
    caps: Capabilities,
) -> Result<(), CaseFailure> {
    let case = Case::new(NAME);
    let tolerate = caps.retryable_errors_under_contention();
    let start = version(schedule.start_version.clamp(1, caps.max_version().get()));
    let initial = sample::run(sample::scope(), start, Status::Live);
    let creation = sample::creation(&initial);
    let result = store.insert(&initial, &creation).await;
    case.ok(format!("insert at version {start}"), result)?;
    let key = initial.key();
    let mut model = Model {
        run: initial,
        records: vec![creation],
    };
    let users: Vec<UserId> = (0..MAX_WRITERS).map(|_| UserId::random()).collect();
    let mut holding: Vec<Option<FieldingRun>> = vec![None; usize::from(MAX_WRITERS)];
    let mut trace: Vec<String> = Vec::new();
    let mut tag = 0u64;

    for (number, group) in schedule.groups().into_iter().enumerate() {
        let mut ops = Vec::new();
        let mut skipped = Vec::new();
        for step in group {
            let writer = step.writer % MAX_WRITERS;
            let w = usize::from(writer);
            match step.action {
                Action::Read => ops.push(Op::Read { writer }),
                Action::Write => {
                    tag += 1;
                    match holding[w].take().and_then(|read| {
                        sample::change(&read, tag, users[w]).map(|(next, record)| (read.version, next, record))
                    }) {
                        Some((expected, next, record)) => ops.push(Op::Write {
                            writer,
                            expected,
                            next,
                            record,
                        }),
                        // Nothing read since the last write (or the run is
                        // at Version::MAX): nothing to write.
                        None => skipped.push(format!("w{writer} write skipped (nothing read)")),
                    }
                }
            }
        }
        let seen = sample::join_all(ops.iter().map(|op| execute(store, op, &key)).collect()).await;
        let line = ops
            .iter()
            .zip(&seen)
            .map(|(op, outcome)| format!("{op} -> {outcome}"))
            .chain(skipped)
            .collect::<Vec<_>>()
            .join("  |  ");
        trace.push(format!("  #{} {line}", number + 1));
        let mut left: Vec<usize> = (0..ops.len()).collect();
        // Retryable errors are tolerated under contention only.
        let tolerate = tolerate && ops.len() > 1;
        match model.linearize(&ops, &seen, &mut left, tolerate) {
            Some(next) => model = next,
            None => {
                let why = explain(&model, &ops, &seen);
                return Err(case.fail(
                    LINEARIZABLE,
                    format!(
                        "schedule {schedule}\n  step #{} is impossible: {why}\n  trace:\n{}",
                        number + 1,
                        trace.join("\n")
                    ),
                ));
            }
        }
        for (op, outcome) in ops.iter().zip(seen) {
            if let (Op::Read { writer }, Outcome::Read(Some(run))) = (op, outcome) {
                holding[usize::from(*writer)] = Some(run);
            }
        }
    }

    let end = |what: String| {
        case.fail(
            LINEARIZABLE,
            format!(
                "schedule {schedule}\n  at the end, {what}\n  trace:\n{}",
                trace.join("\n")
            ),
        )
    };
    let stored = store.get(&key).await;
    let stored = case.ok(format!("get({key}) at the end"), stored)?;
    if stored.as_ref() != Some(&model.run) {
        return Err(end(match stored {
            Some(run) => format!(
                "the stored run differs from the model's: {}",
                sample::run_diff(&model.run, &run)
            ),
            None => "the run is gone".to_owned(),
        }));
    }
    let records = store.changes(&key).await;
    let records = case.ok(format!("changes({key}) at the end"), records)?;
    if let Some(diff) = sample::records_diff(&model.records, &records) {
        return Err(end(format!("the change records differ from the model's: {diff}")));
    }
    Ok(())
}

/// The linearizability case: draws schedules (see the [module
/// docs](crate::linearizability)), runs each against a fresh store from
/// `factory` and the model, and on a failure shrinks the schedule to a
/// minimal one that still fails, and reports that.
///
/// [`DEFAULT_CASES`] schedules, or `PROPTEST_CASES`; a random seed, or
/// `PROPTEST_RNG_SEED` (the failure names the seed it used).
pub async fn linearizable_interleaved_read_then_write_cycles_match_the_model<F: StoreFactory>(
    factory: &F,
    caps: Capabilities,
) -> Result<(), CaseFailure> {
    let case = Case::new(NAME);
    let defaults = Config::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        defaults.cases
    } else {
        DEFAULT_CASES
    };
    let max_shrink_iters = if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_some() {
        defaults.max_shrink_iters
    } else {
        DEFAULT_MAX_SHRINK_ITERS
    };
    let seed = match defaults.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => sample::random_u64(),
    };
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..defaults
    });
    let strategy = schedules(caps);
    for number in 1..=cases {
        let mut tree = strategy
            .new_tree(&mut runner)
            .map_err(|reason| case.fail(LINEARIZABLE, format!("could not generate a schedule: {reason}")))?;
        let original = tree.current();
        let Err(first) = run(factory, &original, caps).await else {
            continue;
        };
        let mut minimal = (original.clone(), first);
        let mut tries = 0;
        if tree.simplify() {
            while tries < max_shrink_iters {
                tries += 1;
                let candidate = tree.current();
                match run(factory, &candidate, caps).await {
                    Ok(()) => {
                        if !tree.complicate() {
                            break;
                        }
                    }
                    Err(failure) => {
                        minimal = (candidate, failure);
                        if !tree.simplify() {
                            break;
                        }
                    }
                }
            }
        }
        let (schedule, failure, one_minimal) = polish(factory, minimal, caps, &mut tries, max_shrink_iters).await;
        let minimality = if one_minimal {
            "dropping any one step or running any concurrent step on its own makes it pass"
        } else {
            "shrinking stopped at its limit"
        };
        return Err(CaseFailure::new(
            NAME,
            failure.promise(),
            format!(
                "schedule {number} of {cases} failed ({} steps); shrunk in {tries} tries to {} steps ({minimality}):\n  \
                 {}\n  regenerate with PROPTEST_RNG_SEED={seed}; replay with \
                 fielding_testkit::linearizability::check_schedule and {schedule:?}",
                original.steps.len(),
                schedule.steps.len(),
                failure.detail(),
            ),
        ));
    }
    Ok(())
}

/// Finishes what proptest's shrinking started, which deletes each step at
/// most once: drops single steps and makes concurrent steps sequential for
/// as long as the schedule still fails. Returns the schedule, its failure
/// and whether it is 1-minimal (no single simplification still fails).
async fn polish<F: StoreFactory>(
    factory: &F,
    (mut schedule, mut failure): (Schedule, CaseFailure),
    caps: Capabilities,
    tries: &mut u32,
    max_tries: u32,
) -> (Schedule, CaseFailure, bool) {
    'simplify: loop {
        let mut candidates = Vec::new();
        for i in 0..schedule.steps.len() {
            if schedule.steps.len() > 1 {
                let mut fewer = schedule.clone();
                fewer.steps.remove(i);
                candidates.push(fewer);
            }
            if schedule.steps[i].concurrent_with_next {
                let mut sequential = schedule.clone();
                sequential.steps[i].concurrent_with_next = false;
                candidates.push(sequential);
            }
        }
        for candidate in candidates {
            if *tries >= max_tries {
                return (schedule, failure, false);
            }
            *tries += 1;
            if let Err(still) = run(factory, &candidate, caps).await {
                schedule = candidate;
                failure = still;
                continue 'simplify;
            }
        }
        return (schedule, failure, true);
    }
}

async fn run<F: StoreFactory>(factory: &F, schedule: &Schedule, caps: Capabilities) -> Result<(), CaseFailure> {
    let store = factory.fresh_store().await;
    check_schedule(&*store, schedule, caps).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use Action::{Read, Write};

    #[test]
    fn groups_join_concurrent_steps_of_distinct_writers() {
        let schedule = Schedule {
            start_version: 1,
            steps: vec![
                Step::new(0, Read).with_next(),
                Step::new(1, Read).with_next(),
                Step::new(1, Write),
                Step::new(2, Write).with_next(),
                Step::new(3, Read),
                Step::new(0, Write).with_next(),
            ],
        };
        let writers: Vec<Vec<u8>> = schedule
            .groups()
            .iter()
            .map(|g| g.iter().map(|s| s.writer).collect())
            .collect();
        assert_eq!(writers, vec![vec![0, 1], vec![1], vec![2, 3], vec![0]]);
        assert_eq!(
            schedule.to_string(),
            "start at version 1: {w0 read | w1 read}, w1 write, {w2 write | w3 read}, w0 write"
        );
    }
}
