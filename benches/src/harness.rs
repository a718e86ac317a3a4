//! The workload harness shared by the sections that drive a store: the
//! [`Slot`] an update workload cycles through, [`UpdateCallers`] (concurrent
//! `update_dates` callers on a service, as the `sqlite` and `scale` sections
//! measure them), the synthetic runs of the large data sets, and the
//! [`Scratch`] directory their database files live in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::{
    AccountId, Clock, FieldingRun, FieldingRunId, FieldingService, IfMatch, ProjectId, RunKey, Status, SystemClock,
    TargetGroupId, Timestamp, UserId, Version,
};
use fielding_http::rate_limit::RateLimitPolicy;
use fielding_http::BasePath;
use fielding_server::app::{ApiLimits, App};
use fielding_server::{JwtAuthenticator, JwtSecret, OpenedStore};
use tokio::runtime::Runtime;

use crate::BenchError;

/// A run an update workload cycles through: every update moves its end by
/// 1 ms, alternately forwards and back, at the version last seen, so each
/// call is a real change and the run never drifts.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// Where the run lives.
    pub key: RunKey,
    /// Its start, never changed.
    pub start: Timestamp,
    ends: [Timestamp; 2],
    moved: bool,
    seeded_version: Version,
    /// The version the workload last saw.
    pub version: Version,
}

impl Slot {
    /// The slot of a freshly stored `run`.
    pub fn new(run: &FieldingRun) -> Result<Self, String> {
        let moved = run
            .end_fielding_at
            .checked_add(TimeDelta::milliseconds(1))
            .ok_or_else(|| format!("the end of {} cannot move by 1 ms", run.id))?;
        Ok(Self {
            key: run.key(),
            start: run.start_fielding_at,
            ends: [run.end_fielding_at, moved],
            moved: false,
            seeded_version: run.version,
            version: run.version,
        })
    }

    /// The end the next update sets: always different from the current.
    pub fn next_end(&self) -> Timestamp {
        self.ends[usize::from(!self.moved)]
    }

    /// Records a successful update to `version`, which must be the next one.
    pub fn advance(&mut self, version: Version) -> Result<(), String> {
        let expected = self.version.next();
        if expected != Some(version) {
            return Err(format!(
                "{}: expected version {} after a change from {}, got {version}",
                self.key.id,
                expected.map_or_else(|| "none".to_string(), |v| v.to_string()),
                self.version
            ));
        }
        self.version = version;
        self.moved = !self.moved;
        Ok(())
    }

    /// Back to the run as it was seeded (the workload reseeded its store).
    pub fn reset(&mut self) {
        self.version = self.seeded_version;
        self.moved = false;
    }
}

/// `callers` concurrent `update_dates` callers on one service, each
/// cycling through its share of the touched runs (dealt round-robin), all
/// as one actor.
pub struct UpdateCallers {
    service: FieldingService,
    /// One group of slots per caller.
    groups: Vec<Vec<Slot>>,
    actor: UserId,
}

impl UpdateCallers {
    /// Callers updating `touched` through `service`.
    pub fn new(
        service: FieldingService,
        touched: &[FieldingRun],
        callers: usize,
        actor: UserId,
    ) -> Result<Self, String> {
        let mut groups = vec![Vec::new(); callers.max(1)];
        for (i, run) in touched.iter().enumerate() {
            groups[i % callers.max(1)].push(Slot::new(run)?);
        }
        Ok(Self { service, groups, actor })
    }

    /// Updates on `rt` for `duration` with every caller busy; returns the
    /// calls that finished and the time they took.
    pub fn trial(&mut self, rt: &Runtime, duration: Duration) -> Result<(u64, Duration), String> {
        let started = Instant::now();
        let ops = self.until(rt, started + duration)?;
        Ok((ops, started.elapsed()))
    }

    /// Updates on `rt` until `deadline` with every caller busy; returns the
    /// calls that finished.
    pub fn until(&mut self, rt: &Runtime, deadline: Instant) -> Result<u64, String> {
        let groups = std::mem::take(&mut self.groups);
        let (service, actor) = (self.service.clone(), self.actor);
        let (groups, ops) = rt.block_on(async move {
            let tasks: Vec<_> = groups
                .into_iter()
                .map(|slots| tokio::spawn(update_loop(service.clone(), slots, actor, deadline)))
                .collect();
            let mut groups = Vec::new();
            let mut ops = 0u64;
            let mut first_error = None;
            for task in tasks {
                match task.await {
                    Ok(Ok((slots, n))) => {
                        groups.push(slots);
                        ops += n;
                    }
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        first_error.get_or_insert(format!("a caller failed: {e}"));
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok((groups, ops)),
            }
        })?;
        self.groups = groups;
        Ok(ops)
    }
}

async fn update_loop(
    service: FieldingService,
    mut slots: Vec<Slot>,
    actor: UserId,
    deadline: Instant,
) -> Result<(Vec<Slot>, u64), String> {
    let mut ops = 0u64;
    if slots.is_empty() {
        return Ok((slots, 0));
    }
    'outer: loop {
        for slot in slots.iter_mut() {
            if Instant::now() >= deadline {
                break 'outer;
            }
            let applied = service
                .update_dates(
                    &slot.key,
                    &IfMatch::version(slot.version),
                    slot.start,
                    slot.next_end(),
                    actor,
                )
                .await
                .map_err(|e| format!("update_dates of {}: {e}", slot.key.id))?;
            if !applied.changed {
                return Err(format!("update_dates of {} changed nothing", slot.key.id));
            }
            slot.advance(applied.run.version)?;
            ops += 1;
        }
    }
    Ok((slots, ops))
}

/// The runs an update workload over a large data set touches.
pub const TOUCHED: usize = 1000;

/// A run with synthetic but valid ids, for bulk filler.
pub fn synthetic_run(state: &mut u64, now: Timestamp, actor: UserId) -> Option<FieldingRun> {
    const ALPHABET: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut code = || {
        let mut out = [0u8; 26];
        for b in out.iter_mut() {
            // xorshift64*
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            *b = ALPHABET[(r >> 58) as usize % 36];
        }
        out
    };
    let text = |b: [u8; 26]| String::from_utf8(b.to_vec()).ok();
    let (id, project, group) = (text(code())?, text(code())?, text(code())?);
    Some(FieldingRun {
        id: FieldingRunId::parse(&id).ok()?,
        account_id: AccountId::new(1 + (*state % 1000) as i64).ok()?,
        project_id: ProjectId::parse(&project).ok()?,
        target_group_id: TargetGroupId::parse(&group).ok()?,
        start_fielding_at: now.checked_add(TimeDelta::days(1))?,
        end_fielding_at: now.checked_add(TimeDelta::days(30))?,
        status: Status::Scheduled,
        version: Version::INITIAL,
        last_changed_at: now,
        last_changed_by: actor,
    })
}

/// `total` synthetic runs, generated on the fly, remembering the
/// [`TOUCHED`] runs spread evenly over them (every `total / TOUCHED`-th).
pub struct Synthetic {
    state: u64,
    now: Timestamp,
    actor: UserId,
    step: usize,
    index: usize,
    total: usize,
    touched: Vec<FieldingRun>,
}

impl Synthetic {
    /// `total` runs to come.
    pub fn new(total: usize) -> Self {
        Self {
            state: 0x9E37_79B9_7F4A_7C15u64 ^ (total as u64).rotate_left(17) ^ u64::from(std::process::id()),
            now: SystemClock.now(),
            actor: UserId::random(),
            step: (total / TOUCHED).max(1),
            index: 0,
            total,
            touched: Vec::with_capacity(TOUCHED.min(total)),
        }
    }

    /// The next run, `None` after the last.
    pub fn next_run(&mut self) -> Option<Result<FieldingRun, String>> {
        if self.index == self.total {
            return None;
        }
        let Some(run) = synthetic_run(&mut self.state, self.now, self.actor) else {
            return Some(Err("a synthetic run was invalid".into()));
        };
        if self.index.is_multiple_of(self.step) && self.touched.len() < TOUCHED {
            self.touched.push(run.clone());
        }
        self.index += 1;
        Some(Ok(run))
    }

    /// The touched runs generated so far.
    pub fn into_touched(self) -> Vec<FieldingRun> {
        self.touched
    }
}

/// `total` synthetic runs handed to `sink` one by one; returns the touched
/// runs.
pub fn generate(
    total: usize,
    mut sink: impl FnMut(FieldingRun) -> Result<(), String>,
) -> Result<Vec<FieldingRun>, String> {
    let mut runs = Synthetic::new(total);
    while let Some(run) = runs.next_run() {
        sink(run?)?;
    }
    Ok(runs.into_touched())
}

/// A scratch directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory under the system's temporary directory.
    pub fn new(name: &str) -> Result<Self, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "fielding-bench-{name}-{}-{}",
            std::process::id(),
            FieldingRunId::generate()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Setup(format!("scratch directory: {e}")))?;
        Ok(Self(dir))
    }

    /// The path of the database file in it.
    pub fn db(&self) -> PathBuf {
        self.0.join("fielding.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's own app over `store`, under the binary's default base
/// path (as a client of it calls it), taking tokens signed by `secret`,
/// with a global rate limit (1,000,000 a second) no benchmark reaches and
/// the default per-address limit kept (`per_address`) or turned off.
pub fn server_app(store: &OpenedStore, secret: &JwtSecret, per_address: bool) -> Result<App, String> {
    let mut limits = ApiLimits {
        rate_limit: RateLimitPolicy::per_second(1_000_000, 1_000_000).ok_or("rate limit policy")?,
        ..ApiLimits::default()
    };
    if !per_address {
        limits.address_rate_limit = None;
    }
    Ok(fielding_server::app::app(
        FieldingService::new(store.store.clone()),
        Arc::new(JwtAuthenticator::new(secret)),
        store.kind,
        limits,
        BasePath::contract(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_touched_runs_are_spread_over_the_data() {
        let mut all = Vec::new();
        let touched = generate(5_000, |run| {
            all.push(run);
            Ok(())
        })
        .expect("runs");
        assert_eq!(all.len(), 5_000);
        assert_eq!(touched.len(), TOUCHED);
        assert_eq!(touched[1].id, all[5].id);
        assert_eq!(touched[999].id, all[4_995].id);
        let small = generate(10, |_| Ok(())).expect("runs");
        assert_eq!(small.len(), 10);
        assert!(generate(3, |_| Err("full".into())).is_err());
    }

    #[test]
    fn a_slot_alternates_its_end_and_checks_versions() {
        let run = generate(1, |_| Ok(())).expect("a run").remove(0);
        let mut slot = Slot::new(&run).expect("slot");
        let first = slot.next_end();
        assert_ne!(first, run.end_fielding_at);
        let v2 = run.version.next().expect("v2");
        slot.advance(v2).expect("next version");
        assert_eq!(slot.next_end(), run.end_fielding_at);
        assert!(slot.advance(v2).is_err(), "the same version twice");
        slot.reset();
        assert_eq!((slot.version, slot.next_end()), (run.version, first));
    }
}
