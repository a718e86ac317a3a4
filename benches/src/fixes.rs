//! Before/after figures, in the same run, for changes made because a
//! profile pointed at them (`--only fixes`).
//!
//! Each "before" is the old code path, kept here as a baseline (the
//! library no longer has it); each pair of trials alternates which goes
//! first, and the figure is the median of the per-pair ratios after / before
//! (above 1: the change made it faster).
//!
//! * `fix_one_read_per_command_{sqlite,postgres} R`: the HTTP handlers of
//!   PUT and the command POSTs used to read the run once to check
//!   `If-Match` (to answer 404 and 412 before judging the body) and then
//!   run the command, which reads it again inside `FieldingStore::update`;
//!   they now check everything on the one read of `update`
//!   (`FieldingService::execute_request`). Measured as the handler's store
//!   work, `update_dates` on distinct runs from one caller: before =
//!   `service.get` + `service.execute`, after = `service.execute_request`.
//!   (The in-memory store's reads cost a lock and a clone, too little to
//!   show through HTTP; the figure is for the stores where a read is a
//!   thread hop or a network round trip.)
//! * `fix_trace_context_ns_{before,after} N` and `fix_trace_context R`: a
//!   request's trace work (parse an incoming `traceparent`, make the
//!   server's span id, format the response `traceparent`); before = ids
//!   from `Uuid::new_v4` (one `getrandom` system call each) and hex through
//!   `write!` per byte, as the profile of the server under load showed
//!   (3% of its time in `getrandom`); after = `TraceContext` as it is now.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::lifecycle::Command;
use fielding_core::{
    Action, FieldingError, FieldingRun, FieldingService, FieldingStore, IfMatch, Precondition, RunKey, UserId,
};
use fielding_http::trace_context::TraceContext;
use fielding_testkit::fixtures;

use crate::series::{pg_reachable, pg_url, PgSchema};
use crate::{median, Plan};

/// Trial lengths and counts.
struct Timing {
    trial: Duration,
    pairs: usize,
    runs: usize,
}

impl Timing {
    fn for_plan(plan: &Plan) -> Self {
        if plan.trial <= Plan::quick().trial {
            Self {
                trial: Duration::from_millis(300),
                pairs: 7,
                runs: 64,
            }
        } else {
            Self {
                trial: Duration::from_secs(1),
                pairs: 9,
                runs: 256,
            }
        }
    }
}

/// A run under test and the version the workload last saw.
struct Slot {
    key: RunKey,
    start: fielding_core::Timestamp,
    end: fielding_core::Timestamp,
}

impl Slot {
    fn next_end(&mut self) -> fielding_core::Timestamp {
        self.end = self.end.checked_add(TimeDelta::milliseconds(1)).unwrap_or(self.end);
        self.end
    }
}

async fn seed(store: &dyn FieldingStore, count: usize) -> Result<Vec<Slot>, String> {
    let mut slots = Vec::with_capacity(count);
    for _ in 0..count {
        let run: FieldingRun = fixtures::run().build();
        let change = fielding_core::ChangeRecord::created(&run, fielding_core::Action::Schedule);
        store.insert(&run, &change).await.map_err(|e| format!("seed: {e}"))?;
        slots.push(Slot {
            key: run.key(),
            start: run.start_fielding_at,
            end: run.end_fielding_at,
        });
    }
    Ok(slots)
}

/// The old handler path: a read for the precondition, then the command.
async fn before(service: &FieldingService, slot: &mut Slot, me: UserId) -> Result<(), String> {
    let run = service.get(&slot.key).await.map_err(|e| e.to_string())?;
    let condition = IfMatch::version(run.version);
    let command = Command::UpdateDates {
        start_fielding_at: slot.start,
        end_fielding_at: slot.next_end(),
    };
    service
        .execute(&slot.key, &condition, &command, me)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The handler path now: everything on the one read of `update`.
async fn after(service: &FieldingService, slot: &mut Slot, me: UserId) -> Result<(), String> {
    let command = Command::UpdateDates {
        start_fielding_at: slot.start,
        end_fielding_at: slot.next_end(),
    };
    service
        .execute_request(
            &slot.key,
            Action::UpdateDates,
            &Precondition::IfMatch(IfMatch::Any),
            me,
            |_run: &FieldingRun| Ok::<_, FieldingError>(command.clone()),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Operations per second of `op` over `slots`, round-robin, for `trial`.
macro_rules! rate {
    ($trial:expr, $slots:expr, |$slot:ident| $op:expr) => {{
        let started = Instant::now();
        let mut ops = 0u64;
        let mut i = 0usize;
        while started.elapsed() < $trial {
            let len = $slots.len();
            let $slot = &mut $slots[i % len];
            $op.await?;
            ops += 1;
            i += 1;
        }
        ops as f64 / started.elapsed().as_secs_f64()
    }};
}

async fn one_read_per_command(
    name: &str,
    store: Arc<dyn FieldingStore>,
    timing: &Timing,
    figures: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let service = FieldingService::new(store.clone());
    let me = UserId::random();
    let mut old_slots = seed(&*store, timing.runs).await?;
    let mut new_slots = seed(&*store, timing.runs).await?;
    let warm = timing.trial / 2;
    let _ = rate!(warm, old_slots, |slot| before(&service, slot, me));
    let _ = rate!(warm, new_slots, |slot| after(&service, slot, me));
    let (mut ratios, mut olds, mut news) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..timing.pairs {
        let (old, new) = if pair % 2 == 0 {
            let old = rate!(timing.trial, old_slots, |slot| before(&service, slot, me));
            (old, rate!(timing.trial, new_slots, |slot| after(&service, slot, me)))
        } else {
            let new = rate!(timing.trial, new_slots, |slot| after(&service, slot, me));
            (rate!(timing.trial, old_slots, |slot| before(&service, slot, me)), new)
        };
        eprintln!("  {name}: pair {pair}: before {old:.0}/s, after {new:.0}/s");
        ratios.push(new / old);
        olds.push(old);
        news.push(new);
    }
    figures.push((
        format!("fix_one_read_per_command_{name}"),
        format!("{:.3}", median(ratios)),
    ));
    figures.push((
        format!("fix_one_read_per_command_{name}_before_ops_per_sec"),
        format!("{:.0}", median(olds)),
    ));
    figures.push((
        format!("fix_one_read_per_command_{name}_after_ops_per_sec"),
        format!("{:.0}", median(news)),
    ));
    Ok(())
}

const INCOMING: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The old trace work: `Uuid::new_v4` for the span id and `write!` per
/// byte for the response header (the parse is the same code as now).
fn trace_before() -> usize {
    let context = TraceContext::from_header_lines([INCOMING], []);
    let span = uuid::Uuid::new_v4().into_bytes();
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    for b in context.trace_id().to_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out.push('-');
    for b in &span[..8] {
        let _ = write!(out, "{b:02x}");
    }
    let _ = write!(out, "-{:02x}", context.flags().0);
    out.len()
}

fn trace_after() -> usize {
    TraceContext::from_header_lines([INCOMING], []).traceparent().len()
}

fn ns_per_call(trial: Duration, f: fn() -> usize) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    let mut sink = 0usize;
    while started.elapsed() < trial {
        for _ in 0..1000 {
            sink = sink.wrapping_add(std::hint::black_box(f()));
        }
        calls += 1000;
    }
    std::hint::black_box(sink);
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn trace_context(timing: &Timing, figures: &mut Vec<(String, String)>) {
    let (mut olds, mut news, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..timing.pairs {
        let (old, new) = if pair % 2 == 0 {
            let old = ns_per_call(timing.trial, trace_before);
            (old, ns_per_call(timing.trial, trace_after))
        } else {
            let new = ns_per_call(timing.trial, trace_after);
            (ns_per_call(timing.trial, trace_before), new)
        };
        olds.push(old);
        news.push(new);
        // Throughput after / before, like the other fix figures.
        ratios.push(old / new);
    }
    figures.push(("fix_trace_context".into(), format!("{:.3}", median(ratios))));
    figures.push(("fix_trace_context_ns_before".into(), format!("{:.0}", median(olds))));
    figures.push(("fix_trace_context_ns_after".into(), format!("{:.0}", median(news))));
}

/// Runs the section; PostgreSQL is skipped with a note when unreachable.
pub fn run(plan: &Plan) -> Result<Vec<(String, String)>, String> {
    let timing = Timing::for_plan(plan);
    let mut figures = Vec::new();
    trace_context(&timing, &mut figures);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    runtime.block_on(async {
        let options = fielding_sqlite::SqliteOptions::default().with_durability(fielding_sqlite::Durability::Normal);
        let sqlite = fielding_sqlite::SqliteStore::open_with(dir.path().join("fixes.db"), options)
            .await
            .map_err(|e| format!("sqlite: {e}"))?;
        one_read_per_command("sqlite", Arc::new(sqlite), &timing, &mut figures).await
    })?;
    let url = pg_url();
    match pg_reachable(&url) {
        Err(e) => eprintln!("fixes: PostgreSQL at {url} is not reachable ({e}): its figures are skipped"),
        Ok(()) => {
            let schema = PgSchema::new(&url, "fixes");
            runtime.block_on(async {
                let store = fielding_postgres::PgStore::connect(&url, schema.name())
                    .await
                    .map_err(|e| format!("postgres: {e}"))?;
                store.migrate().await.map_err(|e| format!("postgres migrate: {e}"))?;
                let store = Arc::new(store);
                let result = one_read_per_command("postgres", store.clone(), &timing, &mut figures).await;
                store.pool().close().await;
                result
            })?;
            schema.drop_now()?;
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_trace_paths_make_a_traceparent_of_the_same_shape() {
        assert_eq!(trace_before(), 55);
        assert_eq!(trace_after(), 55);
    }
}
