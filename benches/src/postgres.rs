//! PostgreSQL figures for the `--quick`/full runner: the adapter against
//! hand-written SQL on the same driver, pooled scaling, and contention.
//!
//! All of it runs against `FIELDING_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) in a schema of its own,
//! `fielding_bench_<pid>_<random>`, dropped at the end. When the server is
//! not reachable a note goes to stderr and no `postgres_*` line is printed;
//! the runner's other figures are unaffected.
//!
//! ## `postgres_adapter_vs_raw`
//!
//! One connection each, update-dates on scheduled runs (every operation a
//! real change, as in the memory benchmark):
//!
//! * adapter: `FieldingService::update_dates` over `PgStore` on a pool of
//!   one connection: load the run, If-Match check, lifecycle decision,
//!   compare-and-swap with its change record;
//! * raw: the same work hand-written with sqlx on one `PgConnection`: a
//!   `SELECT` of the run by scope and id (all columns decoded), the version
//!   check, then one statement doing the conditional `UPDATE` and the
//!   change-record `INSERT` (a data-modifying CTE), checking one row was
//!   written. Two round trips, like the adapter: the best hand-written SQL,
//!   not a strawman `BEGIN`/`SELECT FOR UPDATE`/`UPDATE`/`INSERT`/`COMMIT`.
//!
//! Trials alternate (adapter first in even pairs, raw first in odd ones);
//! the ratio is median adapter throughput / median raw throughput.
//!
//! ## Pooled and contention
//!
//! `postgres_pooled_{1,4,16}_ops_per_sec`: that many writers, each on runs
//! of its own, through one `FieldingService` over a `PgStore` whose pool has
//! one connection per writer; rounds cycle through the three, each figure is
//! the median over rounds; `postgres_pooled_scaling_{4,16}` divide by the
//! one-writer figure.
//!
//! `postgres_contention_*`: 16 writers on one run, each looping
//! `execute_with_retry` (moving the end by 1 ms from whatever it read).
//! Refusals are attempts that lost a race (the command closure runs once per
//! attempt). `postgres_contention_lost_updates` is computed at the end from
//! the run and its change records: successes minus the version increase,
//! plus any gap in the records, plus any drift of the end from its start
//! value + successes ms. It must be 0.

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use fielding_bench::harness::Slot;
use fielding_bench::{median, Plan};
use fielding_core::{
    lifecycle::Command, Action, ChangeRecord, FieldingService, FieldingStore, IfMatch, RetryPolicy, UserId, Version,
};
use fielding_postgres::sqlx::postgres::{PgConnectOptions, PgConnection};
use fielding_postgres::sqlx::{self, Connection, Row};
use fielding_postgres::PgStore;
use fielding_testkit::fixtures;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Durations of each part.
struct Timing {
    warmup: Duration,
    trial: Duration,
    pairs: usize,
    pooled: Duration,
    pooled_rounds: usize,
    contention: Duration,
}

impl Timing {
    fn for_plan(plan: &Plan) -> Self {
        if plan.trial <= Plan::quick().trial {
            // About 15 s in all.
            Self {
                warmup: Duration::from_millis(300),
                trial: Duration::from_millis(200),
                pairs: 15,
                pooled: Duration::from_millis(500),
                pooled_rounds: 3,
                contention: Duration::from_secs(2),
            }
        } else {
            Self {
                warmup: Duration::from_secs(1),
                trial: Duration::from_millis(500),
                pairs: 31,
                pooled: Duration::from_secs(1),
                pooled_rounds: 7,
                contention: Duration::from_secs(10),
            }
        }
    }
}

type Figures = Vec<(String, String)>;

/// Runs every PostgreSQL figure and prints them; never fails the runner for
/// an unreachable server.
pub fn run(plan: &Plan) -> Result<(), String> {
    let url = std::env::var("FIELDING_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    let reachable = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url))
            .await
            .map_err(|_| "no answer within 5 s".to_string())
            .and_then(|c| c.map_err(|e| e.to_string()))
    });
    let conn = match reachable {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!(
                "postgres: skipped, PostgreSQL is not reachable at {url} ({e}); start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
            );
            return Ok(());
        }
    };
    runtime.block_on(async { drop(conn.close().await) });
    let schema = format!(
        "fielding_bench_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let timing = Timing::for_plan(plan);
    let started = Instant::now();
    let outcome = runtime.block_on(measure(&url, &schema, &timing));
    runtime.block_on(async {
        if let Ok(mut conn) = PgConnection::connect(&url).await {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    });
    let figures = outcome?;
    eprintln!("postgres: measured in {:.1} s", started.elapsed().as_secs_f64());
    let mut out = std::io::stdout().lock();
    for (name, value) in &figures {
        writeln!(out, "{name} {value}").map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("cannot write to stdout: {e}"))
}

async fn measure(url: &str, schema: &str, timing: &Timing) -> Result<Figures, String> {
    let mut figures = Figures::new();
    let setup = store(url, schema, 4).await?;
    setup.migrate().await.map_err(|e| e.to_string())?;
    eprintln!("postgres: schema {schema}; adapter vs raw on one connection each");
    adapter_vs_raw(url, schema, &setup, timing, &mut figures).await?;
    eprintln!("postgres: pooled writers on distinct runs");
    pooled(url, schema, &setup, timing, &mut figures).await?;
    eprintln!("postgres: 16 writers on one run");
    contention(url, schema, &setup, timing, &mut figures).await?;
    Ok(figures)
}

async fn store(url: &str, schema: &str, connections: u32) -> Result<PgStore, String> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| format!("bad FIELDING_PG_URL: {e}"))?
        .application_name("fielding_bench");
    let pool = PgStore::pool_options()
        .max_connections(connections)
        .min_connections(connections)
        .connect_with(options)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    PgStore::new(pool, schema).map_err(|e| e.to_string())
}

async fn seed(store: &PgStore, count: usize) -> Result<Vec<Slot>, String> {
    let mut slots = Vec::with_capacity(count);
    for _ in 0..count {
        let run = fixtures::run().build();
        store
            .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
            .await
            .map_err(|e| format!("seed: {e}"))?;
        slots.push(Slot::new(&run)?);
    }
    Ok(slots)
}

async fn adapter_op(service: &FieldingService, slot: &mut Slot, actor: UserId) -> Result<(), String> {
    let end = slot.next_end();
    let applied = service
        .update_dates(&slot.key, &IfMatch::version(slot.version), slot.start, end, actor)
        .await
        .map_err(|e| format!("adapter update_dates: {e}"))?;
    if !applied.changed || applied.run.end_fielding_at != end {
        return Err(format!("adapter: update_dates of {} changed nothing", slot.key.id));
    }
    slot.advance(applied.run.version)
}

/// The hand-written baseline's two statements.
struct RawSql {
    select: String,
    update: String,
}

impl RawSql {
    fn new(schema: &str) -> Self {
        Self {
            select: format!(
                "SELECT id, account_id, project_id, target_group_id, start_fielding_at, end_fielding_at, status, \
                 version, last_changed_at, last_changed_by FROM \"{schema}\".fielding_runs \
                 WHERE id = $1 AND account_id = $2 AND project_id = $3 AND target_group_id = $4"
            ),
            update: format!(
                "WITH u AS (UPDATE \"{schema}\".fielding_runs SET start_fielding_at = $5, end_fielding_at = $6, \
                 version = $7, last_changed_at = $8, last_changed_by = $9 \
                 WHERE id = $1 AND account_id = $2 AND project_id = $3 AND target_group_id = $4 AND version = $10 \
                 RETURNING id, status) \
                 INSERT INTO \"{schema}\".change_records (run_id, version, action, changed_at, changed_by, \
                 status_from, status_to, start_from, start_to, end_from, end_to, \
                 account_id, project_id, target_group_id) \
                 SELECT u.id, $7, 'update_dates', $8, $9, u.status, u.status, $11, $5, $12, $6, $2, $3, $4 FROM u"
            ),
        }
    }
}

async fn raw_op(conn: &mut PgConnection, sql: &RawSql, slot: &mut Slot, actor: uuid::Uuid) -> Result<(), String> {
    let db = |e: sqlx::Error| format!("raw: {e}");
    let id = slot.key.id.as_str();
    let account = slot.key.scope.account_id.get() as i32;
    let project = slot.key.scope.project_id.as_str();
    let target_group = slot.key.scope.target_group_id.as_str();
    let row = sqlx::query(&sql.select)
        .bind(id)
        .bind(account)
        .bind(project)
        .bind(target_group)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?
        .ok_or("raw: run not found")?;
    // Decode every column, as the adapter does.
    let _: &str = row.try_get(0).map_err(db)?;
    let _: i32 = row.try_get(1).map_err(db)?;
    let _: &str = row.try_get(2).map_err(db)?;
    let _: &str = row.try_get(3).map_err(db)?;
    let start: DateTime<Utc> = row.try_get(4).map_err(db)?;
    let end: DateTime<Utc> = row.try_get(5).map_err(db)?;
    let status: &str = row.try_get(6).map_err(db)?;
    let version: i64 = row.try_get(7).map_err(db)?;
    let _: DateTime<Utc> = row.try_get(8).map_err(db)?;
    let _: uuid::Uuid = row.try_get(9).map_err(db)?;
    if version as u64 != slot.version.get() || status != "scheduled" {
        return Err(format!(
            "raw: {id} is at version {version} ({status}), expected {}",
            slot.version
        ));
    }
    let new_end = slot.next_end().as_datetime();
    let next = version + 1;
    let done = sqlx::query(&sql.update)
        .bind(id)
        .bind(account)
        .bind(project)
        .bind(target_group)
        .bind(start)
        .bind(new_end)
        .bind(next)
        .bind(Utc::now())
        .bind(actor)
        .bind(version)
        .bind(start)
        .bind(end)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    if done.rows_affected() != 1 {
        return Err(format!("raw: the update of {id} wrote {} rows", done.rows_affected()));
    }
    let version = Version::new(next as u64).ok_or("raw: version out of range")?;
    slot.advance(version)
}

/// Runs `op` over `slots` round-robin for `duration`; returns ops/s.
macro_rules! timed {
    ($duration:expr, $slots:expr, |$slot:ident| $op:expr) => {{
        let deadline = $duration;
        let started = Instant::now();
        let mut ops = 0u64;
        'outer: loop {
            for $slot in $slots.iter_mut() {
                $op.await?;
                ops += 1;
                if ops % 16 == 0 && started.elapsed() >= deadline {
                    break 'outer;
                }
            }
        }
        ops as f64 / started.elapsed().as_secs_f64()
    }};
}

async fn adapter_vs_raw(
    url: &str,
    schema: &str,
    setup: &PgStore,
    timing: &Timing,
    figures: &mut Figures,
) -> Result<(), String> {
    let mut adapter_slots = seed(setup, 128).await?;
    let mut raw_slots = seed(setup, 128).await?;
    let mut pooled_slots = seed(setup, 128).await?;
    let service = FieldingService::new(Arc::new(store(url, schema, 1).await?));
    let mut conn = PgConnection::connect(url).await.map_err(|e| format!("connect: {e}"))?;
    let raw_pool = store(url, schema, 1).await?.pool().clone();
    let sql = RawSql::new(schema);
    let actor = UserId::random();
    let me = *actor.as_uuid();

    let _ = timed!(timing.warmup, adapter_slots, |slot| adapter_op(&service, slot, actor));
    let _ = timed!(timing.warmup, raw_slots, |slot| raw_op(&mut conn, &sql, slot, me));
    let _ = timed!(timing.warmup, pooled_slots, |slot| raw_pool_op(
        &raw_pool, &sql, slot, me
    ));
    let (mut adapter, mut raw, mut raw_pooled) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..timing.pairs {
        // Rotate which workload goes first.
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => adapter.push(timed!(timing.trial, adapter_slots, |slot| adapter_op(
                    &service, slot, actor
                ))),
                1 => raw.push(timed!(timing.trial, raw_slots, |slot| raw_op(
                    &mut conn, &sql, slot, me
                ))),
                _ => raw_pooled.push(timed!(timing.trial, pooled_slots, |slot| raw_pool_op(
                    &raw_pool, &sql, slot, me
                ))),
            }
        }
        eprintln!(
            "  round {}: adapter {:.0} ops/s, raw on a connection {:.0} ops/s, raw on a pool {:.0} ops/s",
            round + 1,
            adapter[round],
            raw[round],
            raw_pooled[round]
        );
    }
    let _ = conn.close().await;
    let ratios: Vec<f64> = adapter.iter().zip(&raw).map(|(a, r)| a / r).collect();
    let pool_ratios: Vec<f64> = adapter.iter().zip(&raw_pooled).map(|(a, r)| a / r).collect();
    let ratio = median(ratios.iter().copied());
    let (a, r, p) = (
        median(adapter.iter().copied()),
        median(raw.iter().copied()),
        median(raw_pooled.iter().copied()),
    );
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    figures.push(("postgres_adapter_vs_raw".into(), format!("{ratio:.3}")));
    figures.push(("postgres_adapter_vs_raw_of_medians".into(), format!("{:.3}", a / r)));
    figures.push(("postgres_adapter_vs_raw_min".into(), format!("{min:.3}")));
    figures.push(("postgres_adapter_vs_raw_max".into(), format!("{max:.3}")));
    figures.push((
        "postgres_adapter_vs_raw_pool".into(),
        format!("{:.3}", median(pool_ratios.iter().copied())),
    ));
    figures.push(("postgres_adapter_ops_per_sec".into(), format!("{a:.0}")));
    figures.push(("postgres_raw_ops_per_sec".into(), format!("{r:.0}")));
    figures.push(("postgres_raw_pool_ops_per_sec".into(), format!("{p:.0}")));
    eprintln!(
        "postgres: the adapter reaches {:.1}% of hand-written SQL on a bare connection (target 90%): {}",
        ratio * 100.0,
        if ratio >= 0.9 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The hand-written baseline as code holding a `PgPool` writes it: one
/// checkout per operation, both statements on it.
async fn raw_pool_op(
    pool: &fielding_postgres::sqlx::PgPool,
    sql: &RawSql,
    slot: &mut Slot,
    actor: uuid::Uuid,
) -> Result<(), String> {
    let mut conn = pool.acquire().await.map_err(|e| format!("raw: {e}"))?;
    raw_op(&mut conn, sql, slot, actor).await
}

async fn pooled(
    url: &str,
    schema: &str,
    setup: &PgStore,
    timing: &Timing,
    figures: &mut Figures,
) -> Result<(), String> {
    const WRITERS: [usize; 3] = [1, 4, 16];
    // Everything set up first; then rounds cycle through the writer counts
    // (rotating which goes first), and each figure is a median over rounds.
    let mut configs = Vec::new();
    for writers in WRITERS {
        let service = Arc::new(FieldingService::new(Arc::new(
            store(url, schema, writers as u32).await?,
        )));
        let mut slots = Vec::new();
        for _ in 0..writers {
            slots.push(seed(setup, 8).await?);
        }
        configs.push((writers, service, slots, Vec::new()));
    }
    for round in 0..timing.pooled_rounds {
        for turn in 0..configs.len() {
            let (writers, service, slots, results) = &mut configs[(round + turn) % WRITERS.len()];
            let mut tasks = Vec::new();
            for mut writer_slots in std::mem::take(slots) {
                let service = service.clone();
                let duration = timing.pooled;
                tasks.push(tokio::spawn(async move {
                    let actor = UserId::random();
                    let ops_per_sec: f64 = timed!(duration, writer_slots, |slot| adapter_op(&service, slot, actor));
                    Ok::<_, String>((ops_per_sec, writer_slots))
                }));
            }
            let mut total = 0.0;
            for task in tasks {
                let (ops_per_sec, writer_slots) = task.await.map_err(|e| format!("writer task: {e}"))??;
                total += ops_per_sec;
                slots.push(writer_slots);
            }
            eprintln!("  round {}: {writers} writers: {total:.0} ops/s", round + 1);
            results.push(total);
        }
    }
    let medians: Vec<f64> = configs
        .iter()
        .map(|(_, _, _, results)| median(results.iter().copied()))
        .collect();
    for (writers, throughput) in WRITERS.iter().zip(&medians) {
        figures.push((
            format!("postgres_pooled_{writers}_ops_per_sec"),
            format!("{throughput:.0}"),
        ));
    }
    figures.push((
        "postgres_pooled_scaling_4".into(),
        format!("{:.2}", medians[1] / medians[0]),
    ));
    figures.push((
        "postgres_pooled_scaling_16".into(),
        format!("{:.2}", medians[2] / medians[0]),
    ));
    Ok(())
}

async fn contention(
    url: &str,
    schema: &str,
    setup: &PgStore,
    timing: &Timing,
    figures: &mut Figures,
) -> Result<(), String> {
    const WRITERS: usize = 16;
    let slot = seed(setup, 1).await?.remove(0);
    let key = slot.key;
    let before = setup
        .get(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("contention run missing")?;
    let service = Arc::new(FieldingService::new(Arc::new(
        store(url, schema, WRITERS as u32).await?,
    )));
    let attempts = Arc::new(AtomicU64::new(0));
    let policy = RetryPolicy {
        max_attempts: 64,
        ..RetryPolicy::default()
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (service, attempts, policy) = (service.clone(), attempts.clone(), policy.clone());
        let duration = timing.contention;
        tasks.push(tokio::spawn(async move {
            let actor = UserId::random();
            let (mut successes, mut gave_up) = (0u64, 0u64);
            while started.elapsed() < duration {
                let outcome = service
                    .execute_with_retry(&key, actor, &policy, |run| {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        Command::UpdateDates {
                            start_fielding_at: run.start_fielding_at,
                            end_fielding_at: run
                                .end_fielding_at
                                .checked_add(TimeDelta::milliseconds(1))
                                .unwrap_or(run.end_fielding_at),
                        }
                    })
                    .await;
                match outcome {
                    Ok(applied) if applied.changed => successes += 1,
                    Ok(_) => return Err("contention: an update changed nothing".to_string()),
                    Err(e) if e.code() == "precondition_failed_error" => gave_up += 1,
                    Err(e) => return Err(format!("contention: {e}")),
                }
            }
            Ok((successes, gave_up))
        }));
    }
    let (mut successes, mut gave_up) = (0u64, 0u64);
    for task in tasks {
        let (s, g) = task.await.map_err(|e| format!("writer task: {e}"))??;
        successes += s;
        gave_up += g;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let attempts = attempts.load(Ordering::Relaxed);
    let refusals = attempts.saturating_sub(successes);

    // Lost updates, from what the database holds.
    let after = setup
        .get(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("contention run missing")?;
    let records = setup.changes(&key).await.map_err(|e| e.to_string())?;
    let advanced = after.version.get() - before.version.get();
    let mut lost = successes.abs_diff(advanced);
    let expected_versions: Vec<u64> = (1..=after.version.get()).collect();
    let versions: Vec<u64> = records.iter().map(|c| c.version.get()).collect();
    if versions != expected_versions {
        lost += expected_versions.len().abs_diff(versions.len()) as u64 + 1;
    }
    let drift = after.end_fielding_at.since(before.end_fielding_at).num_milliseconds();
    lost += drift.abs_diff(successes as i64);
    eprintln!(
        "  {successes} successes in {elapsed:.1} s, {refusals} refusals, {gave_up} gave up after {} attempts",
        policy.max_attempts
    );
    figures.push((
        "postgres_contention_successes_per_sec".into(),
        format!("{:.0}", successes as f64 / elapsed),
    ));
    figures.push((
        "postgres_contention_refusals_per_success".into(),
        format!("{:.2}", refusals as f64 / successes.max(1) as f64),
    ));
    figures.push(("postgres_contention_gave_up".into(), gave_up.to_string()));
    figures.push(("postgres_contention_lost_updates".into(), lost.to_string()));
    Ok(())
}
