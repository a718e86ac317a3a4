//! Two OS processes, each with its own pool, hammering the same runs with
//! compare-and-swap updates: the scale-out deployment in miniature.
//!
//! The parent test creates a schema and the runs, then runs this same test
//! binary twice more as children (`--exact child_process_worker`), with the
//! schema and the runs in an environment variable. Each child runs
//! `TASKS` tasks on a pool of its own; each task makes `INCREMENTS`
//! successful compare-and-swap updates on every run, re-reading and
//! retrying whenever it loses a race. The parent then checks exact final
//! versions and complete, contiguous, consistent change records.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use chrono::TimeDelta;
use fielding_core::{
    Action, ChangeRecord, FieldingRun, FieldingRunId, FieldingStore, RunKey, Scope, StoreError, UserId,
};
use fielding_testkit::fixtures;

const CHILD_ENV: &str = "FIELDING_PG_MULTI_INSTANCE_CHILD";
const PROCESSES: usize = 2;
const TASKS: usize = 4;
const INCREMENTS: u64 = 50;
const RUNS: usize = 3;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `schema;url;process_no;account/project/target_group/id,...`
fn encode(schema: &str, url: &str, process: usize, keys: &[RunKey]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}/{}/{}/{}",
                k.scope.account_id, k.scope.project_id, k.scope.target_group_id, k.id
            )
        })
        .collect();
    format!("{schema};{url};{process};{}", keys.join(","))
}

fn decode(spec: &str) -> (String, String, usize, Vec<RunKey>) {
    let mut parts = spec.splitn(4, ';');
    let schema = parts.next().expect("schema").to_string();
    let url = parts.next().expect("url").to_string();
    let process = parts.next().expect("process").parse().expect("process number");
    let keys = parts
        .next()
        .expect("keys")
        .split(',')
        .map(|k| {
            let f: Vec<&str> = k.split('/').collect();
            let scope = Scope::parse(f[0], f[1], f[2]).expect("scope");
            scope.run(FieldingRunId::parse(f[3]).expect("run id"))
        })
        .collect();
    (schema, url, process, keys)
}

/// A deterministic user id per (process, task), so the parent can count
/// each writer's records.
fn writer(process: usize, task: usize) -> UserId {
    UserId::new(uuid::Uuid::from_u128(
        0xf1e1_d000_0000_0000_0000_0000_0000_0000 | ((process as u128) << 16) | task as u128,
    ))
}

/// The next state of `run`: one version on, the end moved by a millisecond,
/// with the change record of exactly that step.
fn next(run: &FieldingRun, by: UserId) -> (FieldingRun, ChangeRecord) {
    let mut after = run.clone();
    after.version = run.version.next().expect("version fits");
    after.end_fielding_at = run
        .end_fielding_at
        .checked_add(TimeDelta::milliseconds(1))
        .expect("end fits");
    after.last_changed_at = run
        .last_changed_at
        .checked_add(TimeDelta::milliseconds(1))
        .expect("time fits");
    after.last_changed_by = by;
    let change = ChangeRecord {
        run_id: run.id,
        version: after.version,
        action: Action::UpdateDates,
        changed_at: after.last_changed_at,
        changed_by: by,
        status_from: Some(run.status),
        status_to: after.status,
        start_from: Some(run.start_fielding_at),
        start_to: after.start_fielding_at,
        end_from: Some(run.end_fielding_at),
        end_to: after.end_fielding_at,
    };
    (after, change)
}

/// Not a test of its own: the body of a child process. Does nothing unless
/// the parent set `CHILD_ENV`.
#[test]
fn child_process_worker() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (schema, url, process, keys) = decode(&spec);
    runtime().block_on(async move {
        let store = Arc::new(common::connect_store(&url, &schema, "fielding_multi_instance", TASKS as u32).await);
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let me = writer(process, task);
                let mut conflicts = 0u64;
                let mut transient = 0u64;
                for round in 0..INCREMENTS {
                    // Rotate the order so tasks collide on every run.
                    for i in 0..keys.len() {
                        let key = keys[(i + task + round as usize) % keys.len()];
                        loop {
                            let run = store.get(&key).await.expect("get").expect("run exists");
                            let (after, change) = next(&run, me);
                            match store.compare_and_swap(run.version, &after, &change).await {
                                Ok(()) => break,
                                Err(StoreError::VersionConflict { expected, current }) => {
                                    assert!(current > expected, "a refusal must name a newer version");
                                    conflicts += 1;
                                }
                                Err(e) if e.is_retryable() => transient += 1,
                                Err(e) => panic!("process {process} task {task}: {e}"),
                            }
                        }
                    }
                }
                (conflicts, transient)
            }));
        }
        let mut conflicts = 0;
        let mut transient = 0;
        for t in tasks {
            let (c, r) = t.await.expect("task");
            conflicts += c;
            transient += r;
        }
        println!(
            "child {process} done: {} successes, {conflicts} conflicts, {transient} transient errors",
            TASKS as u64 * INCREMENTS * keys.len() as u64
        );
    });
}

#[test]
fn two_processes_with_their_own_pools_lose_no_update_and_write_complete_change_records() {
    let rt = runtime();
    let Some(store) = rt.block_on(common::fresh_store()) else {
        return;
    };
    let runs: Vec<FieldingRun> = (0..RUNS).map(|_| fixtures::run().build()).collect();
    rt.block_on(async {
        for run in &runs {
            store
                .insert(run, &ChangeRecord::created(run, Action::Schedule))
                .await
                .expect("insert");
        }
    });
    let keys: Vec<RunKey> = runs.iter().map(FieldingRun::key).collect();
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<_> = (0..PROCESSES)
        .map(|process| {
            Command::new(&exe)
                .args(["--exact", "child_process_worker", "--nocapture", "--test-threads=1"])
                .env(
                    CHILD_ENV,
                    encode(common::schema_of(&store), &store.guard.url, process, &keys),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a child process")
        })
        .collect();
    for (process, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("child output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(&format!("child {process} done")),
            "child {process} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        if let Some(at) = stdout.find("child ") {
            eprintln!("{}", stdout[at..].lines().next().unwrap_or_default());
        }
    }

    let per_run = (PROCESSES * TASKS) as u64 * INCREMENTS;
    rt.block_on(async {
        for run in &runs {
            let now = store.get(&run.key()).await.expect("get").expect("run");
            assert_eq!(now.version.get(), 1 + per_run, "final version of {}", run.id);
            assert_eq!(
                now.end_fielding_at,
                run.end_fielding_at
                    .checked_add(TimeDelta::milliseconds(per_run as i64))
                    .expect("fits"),
                "every increment moved the end by exactly 1 ms: none lost"
            );
            let records = store.changes(&run.key()).await.expect("changes");
            let versions: Vec<u64> = records.iter().map(|c| c.version.get()).collect();
            assert_eq!(
                versions,
                (1..=1 + per_run).collect::<Vec<_>>(),
                "contiguous change records"
            );
            for pair in records.windows(2) {
                assert_eq!(
                    pair[1].end_from,
                    Some(pair[0].end_to),
                    "each record starts where the previous ended"
                );
                assert_eq!(pair[1].start_from, Some(pair[0].start_to));
            }
            let mut by_writer: HashMap<UserId, u64> = HashMap::new();
            for c in &records[1..] {
                *by_writer.entry(c.changed_by).or_default() += 1;
            }
            for process in 0..PROCESSES {
                for task in 0..TASKS {
                    assert_eq!(
                        by_writer.get(&writer(process, task)).copied(),
                        Some(INCREMENTS),
                        "process {process} task {task} made exactly {INCREMENTS} changes to {}",
                        run.id
                    );
                }
            }
        }
    });
}
