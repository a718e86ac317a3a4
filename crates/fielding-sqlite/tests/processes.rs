//! Several OS processes on one database file, and processes killed with
//! SIGKILL mid-write.
//!
//! The parent tests re-run this test binary as a child
//! (`current_exe() --exact child_process --nocapture`) with
//! `FIELDING_SQLITE_CHILD` set; `child_process` does nothing without it.
//! Children report on their stdout, one `FIELDING <what> <n>` line per
//! event, flushed before the next write starts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{
    AccountId, Action, ChangeRecord, FieldingRun, FieldingRunId, FieldingStore, ProjectId, Scope, Status, StoreError,
    TargetGroupId, Timestamp, UserId, Version,
};
use fielding_sqlite::SqliteStore;

const CHILD: &str = "FIELDING_SQLITE_CHILD";

/// The run every process works on; every field but the version and the end
/// is fixed, and the end is a function of the version, so any state can be
/// checked on its own.
fn the_run(version: Version, actor: UserId) -> FieldingRun {
    let scope = Scope::new(
        AccountId::new(7).unwrap(),
        ProjectId::parse("01BTGNYV6HRNK8K8VKZASZCFP0").unwrap(),
        TargetGroupId::parse("01BTGNYV6HRNK8K8VKZASZCFP1").unwrap(),
    );
    FieldingRun {
        id: FieldingRunId::parse("01BTGNYV6HRNK8K8VKZASZCFP2").unwrap(),
        account_id: scope.account_id,
        project_id: scope.project_id,
        target_group_id: scope.target_group_id,
        start_fielding_at: start(),
        end_fielding_at: end_at(version),
        status: Status::Scheduled,
        version,
        last_changed_at: start(),
        last_changed_by: actor,
    }
}

fn start() -> Timestamp {
    "2031-01-01T00:00:00Z".parse().unwrap()
}

fn end_at(version: Version) -> Timestamp {
    start()
        .checked_add(TimeDelta::days(30) + TimeDelta::milliseconds(version.get() as i64))
        .unwrap()
}

/// The change that moves `run` to the next version.
fn step(run: &FieldingRun, actor: UserId) -> (FieldingRun, ChangeRecord) {
    let next = the_run(run.version.next().unwrap(), actor);
    let change = ChangeRecord {
        run_id: run.id,
        version: next.version,
        action: Action::UpdateDates,
        changed_at: next.last_changed_at,
        changed_by: actor,
        status_from: Some(run.status),
        status_to: next.status,
        start_from: Some(run.start_fielding_at),
        start_to: next.start_fielding_at,
        end_from: Some(run.end_fielding_at),
        end_to: next.end_fielding_at,
    };
    (next, change)
}

fn is_transient(err: &StoreError) -> bool {
    matches!(err, StoreError::VersionConflict { .. }) || err.is_retryable()
}

/// One compare-and-swap increment, retried on conflicts and busy errors.
async fn increment(store: &SqliteStore, actor: UserId) -> Version {
    let key = the_run(Version::INITIAL, actor).key();
    loop {
        let current = match store.get(&key).await {
            Ok(Some(run)) => run,
            Ok(None) => panic!("the run is missing"),
            Err(err) if err.is_retryable() => continue,
            Err(err) => panic!("get: {err}"),
        };
        let (next, change) = step(&current, actor);
        match store.compare_and_swap(current.version, &next, &change).await {
            Ok(()) => return next.version,
            Err(err) if is_transient(&err) => continue,
            Err(err) => panic!("compare_and_swap: {err}"),
        }
    }
}

fn say(what: &str, n: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "FIELDING {what} {n}").unwrap();
    out.flush().unwrap();
}

/// The child side. `FIELDING_SQLITE_CHILD=increment:<n>` opens (migrating)
/// the database, inserts the run if nobody has, does `n` increments and
/// reports `DONE`; `=forever` increments until killed, reporting `ACK
/// <version>` after each acknowledged commit.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let path = std::env::var("FIELDING_SQLITE_PATH").expect("FIELDING_SQLITE_PATH");
    let actor: UserId = std::env::var("FIELDING_SQLITE_ACTOR").expect("actor").parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).await.expect("open");
        say("OPEN", 0);
        let run = the_run(Version::INITIAL, actor);
        match store.insert(&run, &ChangeRecord::created(&run, Action::Schedule)).await {
            Ok(()) => say("INSERTED", 1),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(err) => panic!("insert: {err}"),
        }
        match mode.split_once(':') {
            Some(("increment", n)) => {
                let n: u64 = n.parse().unwrap();
                for _ in 0..n {
                    increment(&store, actor).await;
                }
                say("DONE", n);
            }
            _ if mode == "forever" => loop {
                let version = increment(&store, actor).await;
                say("ACK", version.get());
            },
            _ => panic!("unknown child mode {mode:?}"),
        }
        store.close().await;
    });
}

fn spawn_child(path: &Path, mode: &str, actor: UserId) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env("FIELDING_SQLITE_PATH", path)
        .env("FIELDING_SQLITE_ACTOR", actor.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the test binary as a child")
}

/// Forwards the child's `FIELDING ...` lines as `(what, n)`.
fn report_lines(child: &mut Child) -> mpsc::Receiver<(String, u64)> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split_whitespace();
            if parts.next() != Some("FIELDING") {
                continue;
            }
            let (Some(what), Some(n)) = (parts.next(), parts.next().and_then(|n| n.parse().ok())) else {
                continue;
            };
            if tx.send((what.to_string(), n)).is_err() {
                break;
            }
        }
    });
    rx
}

/// The run's history must be exactly versions 1..=v, each record
/// describing the step into its version.
async fn check_history(store: &SqliteStore, actor_of: impl Fn(u64) -> Option<UserId>) -> FieldingRun {
    let key = the_run(Version::INITIAL, UserId::random()).key();
    let run = store.get(&key).await.unwrap().expect("the run exists");
    let changes = store.changes(&key).await.unwrap();
    assert_eq!(changes.len() as u64, run.version.get(), "one record per version");
    for (i, change) in changes.iter().enumerate() {
        let version = Version::new(i as u64 + 1).unwrap();
        assert_eq!(change.version, version);
        assert_eq!(change.end_to, end_at(version));
        if let Some(actor) = actor_of(version.get()) {
            assert_eq!(change.changed_by, actor);
        }
        if i > 0 {
            assert_eq!(change.end_from, Some(end_at(changes[i - 1].version)));
        }
    }
    assert_eq!(run.end_fielding_at, end_at(run.version));
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_migrate_insert_and_increment_one_file_without_losing_an_update() {
    const EACH: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let actors = [UserId::random(), UserId::random()];
    // Both start on a file that does not exist yet: they migrate at once
    // and race to insert the same run.
    let mut children: Vec<Child> = actors
        .iter()
        .map(|a| spawn_child(&path, &format!("increment:{EACH}"), *a))
        .collect();
    let reports: Vec<_> = children.iter_mut().map(report_lines).collect();
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
    let events: Vec<Vec<(String, u64)>> = reports.iter().map(|rx| rx.iter().collect()).collect();
    let inserted = events.iter().flatten().filter(|(what, _)| what == "INSERTED").count();
    assert_eq!(inserted, 1, "exactly one process inserts the run: {events:?}");
    for e in &events {
        assert!(e.contains(&("DONE".to_string(), EACH)), "{e:?}");
    }

    let store = SqliteStore::open(&path).await.unwrap();
    let run = check_history(&store, |_| None).await;
    assert_eq!(run.version.get(), 1 + 2 * EACH, "no lost update");
    let changes = store.changes(&run.key()).await.unwrap();
    for actor in actors {
        let by_actor = changes[1..].iter().filter(|c| c.changed_by == actor).count() as u64;
        assert_eq!(by_actor, EACH, "every increment of each process is recorded");
    }
    store.close().await;
}

fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_sigkill_at_random_moments() {
    const KILLS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut highest_ack = 0u64;
    let mut acks_total = 0usize;
    for round in 0..KILLS {
        let actor = UserId::random();
        let mut child = spawn_child(&path, "forever", actor);
        let reports = report_lines(&mut child);
        // Wait for the first acknowledged commit, then kill at a random
        // moment 20-270 ms later.
        let first = loop {
            let (what, n) = reports
                .recv_timeout(Duration::from_secs(30))
                .expect("the child reports");
            if what == "ACK" {
                break n;
            }
        };
        let mut acks = vec![first];
        std::thread::sleep(Duration::from_millis(20 + random_u64() % 250));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed, round {round}");
        acks.extend(reports.iter().filter(|(what, _)| what == "ACK").map(|(_, n)| n));
        assert!(acks.windows(2).all(|w| w[1] == w[0] + 1), "acks count up: {acks:?}");
        assert!(acks[0] > highest_ack, "round {round} went on from the last state");
        highest_ack = *acks.last().unwrap();
        acks_total += acks.len();

        // Reopen (recovering the WAL): every acknowledged version is there,
        // and the history is complete and consistent.
        let store = SqliteStore::open(&path).await.unwrap();
        let run = check_history(&store, |_| None).await;
        assert!(
            run.version.get() >= highest_ack,
            "round {round}: acknowledged version {highest_ack} lost, found {}",
            run.version
        );
        // At most the one write in flight at the kill may have committed
        // without its acknowledgement reaching us.
        assert!(
            run.version.get() <= highest_ack + 1,
            "round {round}: {} vs {highest_ack}",
            run.version
        );
        eprintln!(
            "round {round}: {} commits acknowledged before SIGKILL, run found at version {}",
            acks.len(),
            run.version
        );
        highest_ack = run.version.get();
        store.close().await;
    }
    assert!(acks_total >= KILLS);
}
