//! # fielding-bench
//!
//! Measurement code shared by the `fielding-bench` runner (`src/main.rs`) and
//! the criterion benchmark (`benches/memory.rs`).
//!
//! Every figure is a comparison with a raw baseline **measured in the same
//! run**: the machines this runs on are small and noisy, so absolute times
//! from different runs say little, while the ratio of two workloads measured
//! alternately, moments apart, is stable.
//!
//! ## The workloads
//!
//! Both workloads hold the same [`Fixture`]: `runs` scheduled fielding runs
//! (default [`DEFAULT_RUNS`]) built with `fielding_testkit::fixtures`. Both
//! walk the runs round-robin, one operation per run per round, and each
//! operation moves the run's end by one millisecond, alternately forwards and
//! back, so **every operation is a real change** that bumps the version. The
//! expected version is tracked locally from each result and checked.
//!
//! * [`ServiceWorkload`], "memory service update-dates": a
//!   [`FieldingService`] over `Arc<MemoryStore>` with the system clock; each
//!   operation is `service.update_dates(&key, &IfMatch::version(v), start,
//!   new_end, actor)`: the full path (load, If-Match check, lifecycle
//!   decision, compare-and-swap, change record). It checks that
//!   `applied.changed` is set and the version went up by one.
//! * [`BareWorkload`], "bare `Mutex<HashMap>` versioned replace", the
//!   ceiling: a `std::sync::Mutex<HashMap<FieldingRunId, FieldingRun>>`
//!   holding the same runs. Each operation reads the clock once (the service
//!   reads it once too, and a versioned record needs its `last_changed_at`),
//!   locks, finds the run, checks its version is the expected one, writes a
//!   new `FieldingRun` with the new end, version + 1, `last_changed_at` and
//!   `last_changed_by`, and unlocks. The std default hasher (what a
//!   hand-written map gets), same key type, same value type.
//!
//! Both run their operations inside the same kind of async loop: a
//! current-thread tokio runtime's `block_on` around a batch of at most one
//! round of operations, each `.await`ed. Executor overhead is therefore the
//! same on both sides and is not what the ratio measures.
//!
//! ## Bounded history
//!
//! The memory store keeps every change record, so a long benchmark would
//! grow its memory without bound (about one `ChangeRecord` per operation).
//! Each workload therefore starts over from a freshly seeded copy of the
//! fixture after [`DEFAULT_ROUNDS_PER_STORE`] rounds (so a run's history
//! never exceeds that many records). Re-seeding and dropping the old data
//! happen **outside** the timed region; both workloads reset at the same
//! points, so they see the same cache conditions. The cost of appending to
//! the store's change log stays inside the measurement: it is part of the
//! service's path.
//!
//! ## What the ratio is sensitive to
//!
//! * **The baseline's clock read.** `SystemClock::now` is a sizeable part
//!   of a bare operation. Reading it once per batch instead of once per
//!   operation would make the baseline faster and the ratio lower. It is
//!   read per operation because every version the baseline writes carries
//!   its own `last_changed_at`, exactly as the service's do.
//! * **The history length** (`rounds_per_store`): longer histories mean
//!   more memory touched per append, so short histories flatter the
//!   service a little. The default keeps a few hundred records per run.
//!
//! ## The comparison
//!
//! [`compare`] warms both up, then measures `pairs` pairs of trials of a
//! fixed duration each: service then bare in even pairs, bare then service
//! in odd ones (interleaved, with the order alternating so neither side is
//! always first after a pause). Each trial yields operations per second.
//! The headline [`Comparison::ratio`] is the **median of the per-pair
//! ratios** (service throughput / bare throughput, each pair measured
//! moments apart); [`Comparison::ratio_of_medians`] is given for reference.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fielding_core::{
    Clock, FieldingError, FieldingRun, FieldingRunId, FieldingService, IfMatch, Status, SystemClock, Timestamp, UserId,
    Version,
};
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;

use crate::harness::Slot;
use tokio::runtime::Runtime;

pub mod bulk;
pub mod contention;
pub mod feed;
pub mod harness;
pub mod hostile;
pub mod http;
pub mod scale;
pub mod series;
pub mod sqlite;

/// How many runs the workloads cycle through by default.
pub const DEFAULT_RUNS: usize = 1024;

/// How many rounds (one update per run) a workload does on one copy of the
/// data before starting over from a fresh copy, outside the timed region.
pub const DEFAULT_ROUNDS_PER_STORE: u64 = 256;

/// Why a measurement could not be made.
#[derive(Debug)]
pub enum BenchError {
    /// Building the fixture, the store or the runtime failed.
    Setup(String),
    /// The service refused an operation that should have succeeded.
    Service(FieldingError),
    /// An operation succeeded but did not do what it should have (no change,
    /// wrong version, ...): the workload is not measuring what it claims to.
    Workload(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Setup(msg) => write!(f, "benchmark setup failed: {msg}"),
            BenchError::Service(err) => write!(f, "the service refused a benchmark operation: {err}"),
            BenchError::Workload(msg) => write!(f, "benchmark workload check failed: {msg}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Service(err) => Some(err),
            _ => None,
        }
    }
}

impl From<FieldingError> for BenchError {
    fn from(err: FieldingError) -> Self {
        BenchError::Service(err)
    }
}

/// The runs both workloads start from, built once and shared, so both sides
/// hold exactly the same data.
#[derive(Debug, Clone)]
pub struct Fixture {
    runs: Arc<[FieldingRun]>,
    actor: UserId,
}

impl Fixture {
    /// `runs` scheduled runs (start in a day, end in thirty days, version 1),
    /// each in its own fresh scope, and one acting user.
    pub fn new(runs: usize) -> Result<Self, BenchError> {
        if runs == 0 {
            return Err(BenchError::Setup("the fixture needs at least one run".into()));
        }
        let now = SystemClock.now();
        let runs: Vec<FieldingRun> = (0..runs)
            .map(|_| fixtures::run().with_status(Status::Scheduled).with_now(now).build())
            .collect();
        Ok(Self {
            runs: runs.into(),
            actor: UserId::random(),
        })
    }

    /// The runs, as seeded.
    pub fn runs(&self) -> &[FieldingRun] {
        &self.runs
    }

    /// The user every operation acts as.
    pub fn actor(&self) -> UserId {
        self.actor
    }

    fn slots(&self) -> Result<Vec<Slot>, BenchError> {
        self.runs
            .iter()
            .map(|run| Slot::new(run).map_err(BenchError::Setup))
            .collect()
    }
}

/// Round-robin position and the reset schedule, shared by both workloads.
#[derive(Debug)]
struct Cursor {
    slots: Vec<Slot>,
    next: usize,
    ops_since_reset: u64,
    ops_per_store: u64,
    resets: u64,
}

impl Cursor {
    fn new(fixture: &Fixture, rounds_per_store: u64) -> Result<Self, BenchError> {
        let slots = fixture.slots()?;
        let ops_per_store = (slots.len() as u64)
            .checked_mul(rounds_per_store.max(1))
            .ok_or_else(|| BenchError::Setup("runs × rounds per store overflows".into()))?;
        Ok(Self {
            slots,
            next: 0,
            ops_since_reset: 0,
            ops_per_store,
            resets: 0,
        })
    }

    fn needs_reset(&self) -> bool {
        self.ops_since_reset >= self.ops_per_store
    }

    fn reset(&mut self) {
        self.slots.iter_mut().for_each(Slot::reset);
        self.next = 0;
        self.ops_since_reset = 0;
        self.resets += 1;
    }

    /// The size of the next batch: at most `remaining`, never past the end
    /// of the current round or the next reset.
    fn batch_len(&self, remaining: u64) -> usize {
        let to_round_end = (self.slots.len() - self.next) as u64;
        let to_reset = self.ops_per_store - self.ops_since_reset;
        // The minimum is at most the slot count, so it fits in usize.
        remaining.min(to_round_end).min(to_reset) as usize
    }

    /// The slots of the next batch of `len` operations.
    fn batch(&mut self, len: usize) -> &mut [Slot] {
        &mut self.slots[self.next..self.next + len]
    }

    fn finish_batch(&mut self, len: usize) {
        self.next = (self.next + len) % self.slots.len();
        self.ops_since_reset += len as u64;
    }
}

fn current_thread_runtime() -> Result<Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| BenchError::Setup(format!("cannot build a current-thread tokio runtime: {e}")))
}

/// Something that performs operations and reports the time spent in them.
pub trait Workload {
    /// A short name for reports.
    fn name(&self) -> &'static str;

    /// Performs `ops` operations and returns the time spent in them,
    /// excluding any reset to fresh data in between.
    fn run(&mut self, ops: u64) -> Result<Duration, BenchError>;

    /// How many operations one round (one per run) has.
    fn round_len(&self) -> u64;
}

/// Runs `workload` in whole rounds until at least `target` of timed work
/// has accumulated. Returns the operations done and the timed duration.
pub fn run_for(workload: &mut dyn Workload, target: Duration) -> Result<(u64, Duration), BenchError> {
    let chunk = workload.round_len();
    let mut ops = 0u64;
    let mut elapsed = Duration::ZERO;
    while elapsed < target {
        elapsed += workload.run(chunk)?;
        ops += chunk;
    }
    Ok((ops, elapsed))
}

/// "memory service update-dates": `FieldingService::update_dates` on a
/// `MemoryStore`, every call a real change. See the crate docs.
#[derive(Debug)]
pub struct ServiceWorkload {
    runtime: Runtime,
    fixture: Fixture,
    store: MemoryStore,
    service: FieldingService,
    cursor: Cursor,
}

impl ServiceWorkload {
    /// A workload over a freshly seeded store, resetting every
    /// [`DEFAULT_ROUNDS_PER_STORE`] rounds.
    pub fn new(fixture: &Fixture) -> Result<Self, BenchError> {
        Self::with_rounds_per_store(fixture, DEFAULT_ROUNDS_PER_STORE)
    }

    /// As [`ServiceWorkload::new`], resetting every `rounds` rounds.
    pub fn with_rounds_per_store(fixture: &Fixture, rounds: u64) -> Result<Self, BenchError> {
        let store = Self::seeded_store(fixture)?;
        Ok(Self {
            runtime: current_thread_runtime()?,
            fixture: fixture.clone(),
            service: FieldingService::new(Arc::new(store.clone())),
            store,
            cursor: Cursor::new(fixture, rounds)?,
        })
    }

    fn seeded_store(fixture: &Fixture) -> Result<MemoryStore, BenchError> {
        let store = MemoryStore::new();
        for run in fixture.runs() {
            store
                .seed(run.clone())
                .map_err(|e| BenchError::Setup(format!("cannot seed {}: {e}", run.id)))?;
        }
        Ok(store)
    }

    /// The store the service writes to now (replaced at each reset).
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// How many times the workload started over from fresh data.
    pub fn resets(&self) -> u64 {
        self.cursor.resets
    }

    fn reset(&mut self) -> Result<(), BenchError> {
        // Drop the old data before building the new, so peak memory stays
        // at one copy.
        self.service = FieldingService::new(Arc::new(MemoryStore::new()));
        self.store = MemoryStore::new();
        self.store = Self::seeded_store(&self.fixture)?;
        self.service = FieldingService::new(Arc::new(self.store.clone()));
        self.cursor.reset();
        Ok(())
    }
}

/// One update-dates call, checked.
async fn service_op(service: &FieldingService, slot: &mut Slot, actor: UserId) -> Result<(), BenchError> {
    let end = slot.next_end();
    let applied = service
        .update_dates(&slot.key, &IfMatch::version(slot.version), slot.start, end, actor)
        .await?;
    if !applied.changed || applied.run.end_fielding_at != end {
        return Err(BenchError::Workload(format!(
            "{}: update_dates to end {end} did not change the run (changed = {}, end = {})",
            slot.key.id, applied.changed, applied.run.end_fielding_at
        )));
    }
    slot.advance(applied.run.version).map_err(BenchError::Workload)
}

impl Workload for ServiceWorkload {
    fn name(&self) -> &'static str {
        "memory service update-dates"
    }

    fn round_len(&self) -> u64 {
        self.cursor.slots.len() as u64
    }

    fn run(&mut self, ops: u64) -> Result<Duration, BenchError> {
        let mut remaining = ops;
        let mut elapsed = Duration::ZERO;
        let actor = self.fixture.actor();
        while remaining > 0 {
            if self.cursor.needs_reset() {
                self.reset()?;
            }
            let len = self.cursor.batch_len(remaining);
            let service = &self.service;
            let slots = self.cursor.batch(len);
            let started = Instant::now();
            let outcome = self.runtime.block_on(async move {
                for slot in slots {
                    service_op(service, slot, actor).await?;
                }
                Ok::<(), BenchError>(())
            });
            elapsed += started.elapsed();
            outcome?;
            self.cursor.finish_batch(len);
            remaining -= len as u64;
        }
        Ok(elapsed)
    }
}

/// The baseline's map: the same key and value types as the memory store's,
/// with the same default hasher.
pub type BareMap = Mutex<HashMap<FieldingRunId, FieldingRun>>;

/// "bare `Mutex<HashMap>` versioned replace": the ceiling. See the crate
/// docs.
#[derive(Debug)]
pub struct BareWorkload {
    runtime: Runtime,
    fixture: Fixture,
    map: BareMap,
    cursor: Cursor,
}

impl BareWorkload {
    /// A workload over a fresh map, resetting every
    /// [`DEFAULT_ROUNDS_PER_STORE`] rounds (like [`ServiceWorkload`]).
    pub fn new(fixture: &Fixture) -> Result<Self, BenchError> {
        Self::with_rounds_per_store(fixture, DEFAULT_ROUNDS_PER_STORE)
    }

    /// As [`BareWorkload::new`], resetting every `rounds` rounds.
    pub fn with_rounds_per_store(fixture: &Fixture, rounds: u64) -> Result<Self, BenchError> {
        Ok(Self {
            runtime: current_thread_runtime()?,
            fixture: fixture.clone(),
            map: Self::filled_map(fixture),
            cursor: Cursor::new(fixture, rounds)?,
        })
    }

    fn filled_map(fixture: &Fixture) -> BareMap {
        Mutex::new(fixture.runs().iter().map(|run| (run.id, run.clone())).collect())
    }

    /// The map the workload writes to now (replaced at each reset).
    pub fn map(&self) -> &BareMap {
        &self.map
    }

    /// How many times the workload started over from fresh data.
    pub fn resets(&self) -> u64 {
        self.cursor.resets
    }

    fn reset(&mut self) {
        self.map = Mutex::new(HashMap::new());
        self.map = Self::filled_map(&self.fixture);
        self.cursor.reset();
    }
}

/// One versioned replace: lock, find, check the version, write the new run,
/// unlock. Returns the new version.
fn bare_replace(
    map: &BareMap,
    id: &FieldingRunId,
    expected: Version,
    end: Timestamp,
    now: Timestamp,
    actor: UserId,
) -> Result<Version, BenchError> {
    let mut runs = map.lock().unwrap_or_else(PoisonError::into_inner);
    let run = runs
        .get_mut(id)
        .ok_or_else(|| BenchError::Workload(format!("{id}: not in the bare map")))?;
    if run.version != expected {
        return Err(BenchError::Workload(format!(
            "{id}: bare map holds version {}, expected {expected}",
            run.version
        )));
    }
    let version = expected
        .next()
        .ok_or_else(|| BenchError::Workload(format!("{id}: version {expected} has no successor")))?;
    *run = FieldingRun {
        end_fielding_at: end,
        version,
        last_changed_at: now,
        last_changed_by: actor,
        ..*run
    };
    Ok(version)
}

/// One bare operation, shaped like the service's: an `async fn` awaited in
/// the batch loop, reading the clock once.
async fn bare_op(map: &BareMap, slot: &mut Slot, actor: UserId) -> Result<(), BenchError> {
    let now = SystemClock.now();
    let version = bare_replace(map, &slot.key.id, slot.version, slot.next_end(), now, actor)?;
    slot.advance(version).map_err(BenchError::Workload)
}

impl Workload for BareWorkload {
    fn name(&self) -> &'static str {
        "bare Mutex<HashMap> versioned replace"
    }

    fn round_len(&self) -> u64 {
        self.cursor.slots.len() as u64
    }

    fn run(&mut self, ops: u64) -> Result<Duration, BenchError> {
        let mut remaining = ops;
        let mut elapsed = Duration::ZERO;
        let actor = self.fixture.actor();
        while remaining > 0 {
            if self.cursor.needs_reset() {
                self.reset();
            }
            let len = self.cursor.batch_len(remaining);
            let map = &self.map;
            let slots = self.cursor.batch(len);
            let started = Instant::now();
            let outcome = self.runtime.block_on(async move {
                for slot in slots {
                    bare_op(map, slot, actor).await?;
                }
                Ok::<(), BenchError>(())
            });
            elapsed += started.elapsed();
            outcome?;
            self.cursor.finish_batch(len);
            remaining -= len as u64;
        }
        Ok(elapsed)
    }
}

/// How long and how often to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Runs in the fixture.
    pub runs: usize,
    /// Warm-up time per workload before any trial.
    pub warmup: Duration,
    /// Timed work per trial.
    pub trial: Duration,
    /// Pairs of trials (one of each workload per pair).
    pub pairs: usize,
    /// Rounds on one copy of the data before starting over from a fresh
    /// one (bounds the change history; see the crate docs).
    pub rounds_per_store: u64,
}

impl Plan {
    /// A few seconds in all: 0.25 s warm-up each, 7 pairs of 0.3 s trials.
    pub fn quick() -> Self {
        Self {
            runs: DEFAULT_RUNS,
            warmup: Duration::from_millis(250),
            trial: Duration::from_millis(300),
            pairs: 7,
            rounds_per_store: DEFAULT_ROUNDS_PER_STORE,
        }
    }

    /// About 45 s: 1 s warm-up each, 7 pairs of 3 s trials.
    pub fn full() -> Self {
        Self {
            runs: DEFAULT_RUNS,
            warmup: Duration::from_secs(1),
            trial: Duration::from_secs(3),
            pairs: 7,
            rounds_per_store: DEFAULT_ROUNDS_PER_STORE,
        }
    }
}

/// One pair of trials, measured back to back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    /// Service operations per second in this pair.
    pub service_ops_per_sec: f64,
    /// Bare operations per second in this pair.
    pub bare_ops_per_sec: f64,
    /// Whether the service trial ran first.
    pub service_first: bool,
}

impl Pair {
    /// Service throughput / bare throughput.
    pub fn ratio(&self) -> f64 {
        self.service_ops_per_sec / self.bare_ops_per_sec
    }
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Every pair, in the order measured.
    pub pairs: Vec<Pair>,
}

/// The median of `values` (mean of the middle two for an even count);
/// `NaN` when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl Comparison {
    /// The headline: the median of the per-pair ratios (service / bare).
    pub fn ratio(&self) -> f64 {
        median(self.pairs.iter().map(Pair::ratio))
    }

    /// Median service throughput / median bare throughput, for reference.
    pub fn ratio_of_medians(&self) -> f64 {
        self.service_ops_per_sec() / self.bare_ops_per_sec()
    }

    /// The lowest per-pair ratio.
    pub fn min_ratio(&self) -> f64 {
        self.pairs.iter().map(Pair::ratio).fold(f64::INFINITY, f64::min)
    }

    /// The highest per-pair ratio.
    pub fn max_ratio(&self) -> f64 {
        self.pairs.iter().map(Pair::ratio).fold(f64::NEG_INFINITY, f64::max)
    }

    /// Median service operations per second.
    pub fn service_ops_per_sec(&self) -> f64 {
        median(self.pairs.iter().map(|p| p.service_ops_per_sec))
    }

    /// Median bare operations per second.
    pub fn bare_ops_per_sec(&self) -> f64 {
        median(self.pairs.iter().map(|p| p.bare_ops_per_sec))
    }
}

fn ops_per_sec(ops: u64, elapsed: Duration) -> Result<f64, BenchError> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return Err(BenchError::Workload(format!(
            "{ops} operations took no measurable time"
        )));
    }
    Ok(ops as f64 / secs)
}

/// Warms both workloads up, then measures `plan.pairs` interleaved pairs of
/// trials. `progress` receives one human-readable line per step.
pub fn compare(plan: &Plan, mut progress: impl FnMut(&str)) -> Result<Comparison, BenchError> {
    if plan.pairs == 0 {
        return Err(BenchError::Setup("at least one pair of trials is needed".into()));
    }
    let fixture = Fixture::new(plan.runs)?;
    let mut service = ServiceWorkload::with_rounds_per_store(&fixture, plan.rounds_per_store)?;
    let mut bare = BareWorkload::with_rounds_per_store(&fixture, plan.rounds_per_store)?;

    for workload in [&mut service as &mut dyn Workload, &mut bare] {
        let (ops, elapsed) = run_for(workload, plan.warmup)?;
        progress(&format!(
            "warm-up {}: {:.0} ops/s",
            workload.name(),
            ops_per_sec(ops, elapsed)?
        ));
    }

    let mut pairs = Vec::with_capacity(plan.pairs);
    for index in 0..plan.pairs {
        // Even pairs (0, 2, ...) measure the service first, odd ones the bare map.
        let service_first = index % 2 != 1;
        let measure = |workload: &mut dyn Workload| -> Result<f64, BenchError> {
            let (ops, elapsed) = run_for(workload, plan.trial)?;
            ops_per_sec(ops, elapsed)
        };
        let (service_ops_per_sec, bare_ops_per_sec) = if service_first {
            let s = measure(&mut service)?;
            (s, measure(&mut bare)?)
        } else {
            let b = measure(&mut bare)?;
            (measure(&mut service)?, b)
        };
        let pair = Pair {
            service_ops_per_sec,
            bare_ops_per_sec,
            service_first,
        };
        progress(&format!(
            "pair {}/{} ({} first): service {:.0} ops/s, bare {:.0} ops/s, ratio {:.3}",
            index + 1,
            plan.pairs,
            if service_first { "service" } else { "bare" },
            pair.service_ops_per_sec,
            pair.bare_ops_per_sec,
            pair.ratio()
        ));
        pairs.push(pair);
    }
    Ok(Comparison { pairs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions_of(runs: &[FieldingRun], key_order: &[FieldingRun]) -> Vec<u64> {
        key_order
            .iter()
            .map(|want| runs.iter().find(|r| r.id == want.id).map_or(0, |r| r.version.get()))
            .collect()
    }

    #[test]
    fn service_workload_changes_every_run_every_round() {
        let fixture = Fixture::new(4).expect("fixture");
        let mut workload = ServiceWorkload::with_rounds_per_store(&fixture, 3).expect("workload");
        // 9 operations: two full rounds, then run 0 once more. Every run
        // starts at version 1.
        workload.run(9).expect("ops succeed");
        let stored = workload.store().runs();
        assert_eq!(versions_of(&stored, fixture.runs()), vec![4, 3, 3, 3]);
        let first = fixture.runs()[0].clone();
        let history = workload.store().change_records(&first.key());
        assert_eq!(history.len(), 4, "one seed record plus three changes");
        // The end alternates: moved, back, moved.
        let end = first.end_fielding_at;
        let ends: Vec<i64> = history.iter().map(|c| c.end_to.since(end).num_milliseconds()).collect();
        assert_eq!(ends, vec![0, 1, 0, 1]);
        assert_eq!(workload.resets(), 0);

        // Three operations finish the third round (the last on this copy of
        // the data); the next two run on fresh data.
        workload.run(3 + 2).expect("ops succeed");
        assert_eq!(workload.resets(), 1);
        let stored = workload.store().runs();
        assert_eq!(versions_of(&stored, fixture.runs()), vec![2, 2, 1, 1]);
    }

    #[test]
    fn bare_workload_changes_every_run_every_round() {
        let fixture = Fixture::new(4).expect("fixture");
        let mut workload = BareWorkload::with_rounds_per_store(&fixture, 3).expect("workload");
        workload.run(9).expect("ops succeed");
        let stored: Vec<FieldingRun> = workload.map().lock().expect("lock").values().cloned().collect();
        assert_eq!(versions_of(&stored, fixture.runs()), vec![4, 3, 3, 3]);
        let first = stored.iter().find(|r| r.id == fixture.runs()[0].id).expect("run 0");
        assert_eq!(
            first
                .end_fielding_at
                .since(fixture.runs()[0].end_fielding_at)
                .num_milliseconds(),
            1
        );
        assert_eq!(first.last_changed_by, fixture.actor());

        workload.run(5).expect("ops succeed");
        assert_eq!(workload.resets(), 1);
        let stored: Vec<FieldingRun> = workload.map().lock().expect("lock").values().cloned().collect();
        assert_eq!(versions_of(&stored, fixture.runs()), vec![2, 2, 1, 1]);
    }

    #[test]
    fn a_stale_version_is_reported_not_ignored() {
        let fixture = Fixture::new(2).expect("fixture");
        let mut workload = ServiceWorkload::new(&fixture).expect("workload");
        workload.cursor.slots[0].version = Version::new(5).expect("version");
        match workload.run(1) {
            Err(BenchError::Service(err)) => assert_eq!(err.code(), "precondition_failed_error"),
            other => panic!("expected a precondition failure, got {other:?}"),
        }
        let mut bare = BareWorkload::new(&fixture).expect("workload");
        bare.cursor.slots[0].version = Version::new(5).expect("version");
        assert!(matches!(bare.run(1), Err(BenchError::Workload(_))));
    }

    #[test]
    fn compare_reports_every_pair() {
        let plan = Plan {
            runs: 8,
            warmup: Duration::from_millis(1),
            trial: Duration::from_millis(2),
            pairs: 3,
            rounds_per_store: 2,
        };
        let mut lines = 0;
        let comparison = compare(&plan, |_| lines += 1).expect("comparison");
        assert_eq!(comparison.pairs.len(), 3);
        assert_eq!(lines, 2 + 3);
        assert!(comparison.ratio() > 0.0 && comparison.ratio().is_finite());
        assert!(comparison.min_ratio() <= comparison.ratio() && comparison.ratio() <= comparison.max_ratio());
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median([]).is_nan());
    }
}
