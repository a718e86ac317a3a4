//! A checkpointed change-feed consumer killed with SIGKILL mid-stream and
//! started again: nothing is lost, and the only records delivered twice
//! are those of the batch whose checkpoint had not been saved yet.
//!
//! The parent re-runs this test binary as a child
//! (`current_exe() --exact consumer_child --nocapture`) with
//! `FIELDING_CONSUMER_CHILD` set to the database path; `consumer_child`
//! does nothing without it. The child reports each record its handler
//! took as a `FIELDING GOT <position>` line, flushed before the handler
//! returns.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use fielding_core::{
    AccountId, ConsumerName, FeedConsumer, FeedRecord, FieldingRunId, FieldingService, FieldingStore, IfMatch,
    ProjectId, Scope, TargetGroupId, Timestamp, UserId,
};
use fielding_sqlite::SqliteStore;

const CHILD: &str = "FIELDING_CONSUMER_CHILD";
const BATCH: usize = 25;
const RUNS: usize = 20;
const STEPS_PER_RUN: usize = 39;

fn account() -> AccountId {
    AccountId::new(7).unwrap()
}

fn consumer_name() -> ConsumerName {
    ConsumerName::parse("crash-test").unwrap()
}

/// The child: consumes the account's feed until killed, slowly enough
/// (1 ms per record) that the parent can kill it mid-stream.
#[test]
fn consumer_child() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).await.expect("open");
        let service = FieldingService::new(Arc::new(store)).with_feed_poll_interval(Duration::from_millis(20));
        let consumer = FeedConsumer::new(service, account(), consumer_name()).with_batch_size(BATCH);
        consumer
            .run(
                |record: FeedRecord| async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "FIELDING GOT {}", record.position.major())?;
                    out.flush()
                },
                std::future::pending(),
            )
            .await
            .expect("the consumer runs until killed");
    });
}

/// Kills the child when dropped, so a failing test leaves no process.
struct Consumer {
    child: Child,
    got: mpsc::Receiver<u64>,
}

impl Consumer {
    fn start(path: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "consumer_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the test binary as a child");
        let stdout = child.stdout.take().unwrap();
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Not only at the start: the test harness's own `test
                // consumer_child ... ` may come first on the line.
                let Some(position) = line
                    .split_once("FIELDING GOT ")
                    .and_then(|(_, n)| n.trim().parse().ok())
                else {
                    continue;
                };
                if tx.send(position).is_err() {
                    break;
                }
            }
        });
        Consumer { child, got }
    }

    /// Positions delivered until `stop` says enough (or 60 s pass).
    fn collect_until(&self, mut stop: impl FnMut(&[u64]) -> bool) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while !stop(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.got.recv_timeout(left) {
                Ok(position) => got.push(position),
                Err(_) => panic!("the consumer went quiet after {} records", got.len()),
            }
        }
        got
    }

    fn kill(mut self) -> Vec<u64> {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        // Lines already written before the kill are still in the pipe.
        self.got.try_iter().collect()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `RUNS` runs with `STEPS_PER_RUN` date changes each; answers every
/// record's position.
async fn fill(path: &Path) -> Vec<u64> {
    let store = Arc::new(SqliteStore::open(path).await.unwrap());
    let service = FieldingService::new(store.clone());
    let start: Timestamp = "2031-01-01T00:00:00Z".parse().unwrap();
    let project = ProjectId::parse("01BTGNYV6HRNK8K8VKZASZCFP0").unwrap();
    let me = UserId::random();
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let scope = Scope::new(
            account(),
            project,
            TargetGroupId::parse(FieldingRunId::generate().as_str()).unwrap(),
        );
        let end = start.checked_add(TimeDelta::days(30)).unwrap();
        runs.push(service.schedule(scope, start, end, me).await.unwrap().run);
    }
    // Interleaved, so the feed mixes runs.
    for _ in 0..STEPS_PER_RUN {
        for run in &mut runs {
            let end = run.end_fielding_at.checked_add(TimeDelta::minutes(1)).unwrap();
            *run = service
                .update_dates(&run.key(), &IfMatch::version(run.version), start, end, me)
                .await
                .unwrap()
                .run;
        }
    }
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = service.read_feed(account(), cursor, 1000).await.unwrap();
        all.extend(page.records.iter().map(|r| r.position.major()));
        cursor = Some(page.next);
        if !page.has_more {
            break;
        }
    }
    drop(service);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_resumes_from_its_checkpoint_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.db");
    let all = fill(&path).await;
    assert_eq!(all.len(), RUNS * (STEPS_PER_RUN + 1));
    let last = *all.last().unwrap();

    // First life: killed somewhere in the middle (not on a batch boundary
    // by design: wherever the 333rd record lands).
    let first = Consumer::start(&path);
    let mut before_kill = first.collect_until(|got| got.len() >= 333);
    before_kill.extend(first.kill());
    assert!(before_kill.len() < all.len(), "killed mid-stream");

    let store = SqliteStore::open(&path).await.unwrap();
    let checkpoint = store
        .load_feed_checkpoint(account(), &consumer_name())
        .await
        .unwrap()
        .expect("at least one batch was saved")
        .major();
    store.close().await;
    let unsaved: Vec<u64> = before_kill.iter().copied().filter(|p| *p > checkpoint).collect();
    assert!(
        unsaved.len() <= BATCH,
        "{} records were delivered past the checkpoint, more than one batch ({BATCH})",
        unsaved.len()
    );
    assert!(
        before_kill.iter().rev().take(unsaved.len()).all(|p| *p > checkpoint),
        "the unsaved records are the last ones delivered"
    );

    // Second life: starts right after the checkpoint and reaches the end.
    let second = Consumer::start(&path);
    let after_restart = second.collect_until(|got| got.last() == Some(&last));
    drop(second);
    let expected_first = all.iter().copied().find(|p| *p > checkpoint);
    assert_eq!(
        after_restart.first().copied(),
        expected_first,
        "resumed right after the checkpoint"
    );

    // Nothing lost; each record delivered once, except the unsaved batch's
    // records, delivered twice.
    let mut times: HashMap<u64, usize> = HashMap::new();
    for position in before_kill.iter().chain(&after_restart) {
        *times.entry(*position).or_default() += 1;
    }
    let delivered: BTreeSet<u64> = times.keys().copied().collect();
    assert_eq!(delivered, all.iter().copied().collect::<BTreeSet<_>>(), "nothing lost");
    let twice: BTreeSet<u64> = times.iter().filter(|(_, n)| **n > 1).map(|(p, _)| *p).collect();
    assert_eq!(
        twice,
        unsaved.iter().copied().collect::<BTreeSet<_>>(),
        "duplicates only from the unsaved batch"
    );
    assert!(times.values().all(|n| *n <= 2));
}
