//! SIGKILL under load, over HTTP, on SQLite and on PostgreSQL.
//!
//! Writers PUT new dates with `If-Match` through the real server binary;
//! while they do, the process gets SIGKILL. It is restarted on the same
//! database, and every write it acknowledged (a 202) must still be there.
//! Several kill cycles per store, on the same data.
//!
//! What a 202 promises is that its version is durable. A write still in
//! flight when the process died may or may not have committed (its client
//! never heard), so after a restart a run may be *ahead* of the last
//! version acknowledged for it, never behind. At the end, read from the
//! database itself: the change records are exactly versions 1..=final, each
//! acknowledged version's record holds the end its client sent, and every
//! record's end is one some client sent (nothing made up). On SQLite,
//! `PRAGMA integrity_check` after every kill.

mod common;

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::{assert_contiguous, etag_version, plus_millis, Api, SeededRun, ACCOUNT};
use common::*;
use fielding_core::{ChangeRecord, FieldingStore, RunKey, Timestamp};
use fielding_postgres::testing::TestSchema;
use reqwest::StatusCode;

/// Runs written to; each has `WRITERS / RUNS` writers racing on it.
const RUNS: usize = 4;
const WRITERS: usize = 8;
/// Acknowledged writes each cycle waits for before its countdown to the
/// kill starts, so every kill lands on a server under load.
const MIN_ACKS_PER_CYCLE: usize = 20;
/// Writer `w`'s `n`-th PUT (counted over all cycles) sets the seeded end
/// plus `w * WRITER_SPAN + n` ms: no two PUTs send the same end, so each is
/// a real change and each end names the PUT that sent it.
const WRITER_SPAN: i64 = 10_000_000;

/// A 202 a writer got.
#[derive(Debug, Clone, Copy)]
struct Ack {
    run: usize,
    version: u64,
    end: Timestamp,
}

/// What the writers share with the test.
struct Ledger {
    acks: Mutex<Vec<Ack>>,
    /// Every end sent to each run (unix ms), acknowledged or not.
    sent: Mutex<Vec<HashSet<i64>>>,
    /// Set just before the SIGKILL: from then on a request without an
    /// answer is expected, before it a failure.
    killed: AtomicBool,
}

impl Ledger {
    fn new() -> Self {
        Self {
            acks: Mutex::new(Vec::new()),
            sent: Mutex::new(vec![HashSet::new(); RUNS]),
            killed: AtomicBool::new(false),
        }
    }

    fn ack_count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// The highest acknowledged version of run `index`.
    fn last_ack(&self, index: usize) -> Option<Ack> {
        let acks = self.acks.lock().unwrap();
        acks.iter()
            .filter(|a| a.run == index)
            .max_by_key(|a| a.version)
            .copied()
    }
}

/// The database under test, and how to look into it.
enum Db {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres(TestSchema),
}

impl Db {
    fn args(&self) -> Vec<String> {
        let mut args = match self {
            Db::Sqlite { path, .. } => vec!["--database".to_owned(), path.display().to_string()],
            Db::Postgres(schema) => ["--database", schema.url(), "--pg-schema", schema.name()]
                .map(str::to_owned)
                .to_vec(),
        };
        // Rate limiting off: the writers share one principal and one
        // address.
        args.extend(
            [
                "--jwt-secret",
                SECRET,
                "--rate-limit-per-second",
                "0",
                "--address-rate-limit-per-second",
                "0",
            ]
            .map(str::to_owned),
        );
        args
    }

    /// On SQLite: the file passes `PRAGMA integrity_check` (opening it
    /// also recovers the write-ahead log the killed process left).
    fn check_integrity(&self) {
        let Db::Sqlite { path, .. } = self else { return };
        let conn = fielding_sqlite::rusqlite::Connection::open(path).expect("open the database file");
        let verdict: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("run integrity_check");
        assert_eq!(verdict, "ok", "{}", path.display());
    }

    /// The run's change records, straight from the database.
    async fn changes(&self, key: &RunKey) -> Vec<ChangeRecord> {
        match self {
            Db::Sqlite { path, .. } => {
                let store = fielding_sqlite::SqliteStore::open(path).await.expect("open the file");
                let records = store.changes(key).await.expect("read the change records");
                store.close().await;
                records
            }
            Db::Postgres(schema) => schema
                .store()
                .await
                .changes(key)
                .await
                .expect("read the change records"),
        }
    }
}

/// A pause of 50–600 ms, different every call: kills land at different
/// points of the writers' requests.
fn jitter() -> Duration {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    Duration::from_millis(50 + random % 551)
}

/// Writer `w`: PUTs new ends on run `w % RUNS` with `If-Match` set to the
/// version it last saw, re-reading on 412, until the server is gone.
/// Returns its PUT count so the next cycle's ends stay unique.
async fn writer(api: Api, runs: Arc<Vec<SeededRun>>, ledger: Arc<Ledger>, w: usize, mut n: i64) -> Result<i64, String> {
    let index = w % RUNS;
    let run = &runs[index];
    let gone = |error: reqwest::Error, n: i64| {
        if ledger.killed.load(Ordering::SeqCst) {
            Ok(n)
        } else {
            Err(format!("writer {w}: no answer before the kill: {error}"))
        }
    };
    let mut version = match api.read(run).await {
        Ok(seen) => seen.version,
        Err(error) => return gone(error, n),
    };
    loop {
        n += 1;
        let end = plus_millis(run.end, w as i64 * WRITER_SPAN + n);
        ledger.sent.lock().unwrap()[index].insert(end.unix_millis());
        let response = match api.put_end(run, version, end).await {
            Ok(response) => response,
            Err(error) => return gone(error, n),
        };
        match response.status() {
            StatusCode::ACCEPTED => {
                let acked = etag_version(&response).ok_or(format!("writer {w}: a 202 without an ETag"))?;
                if acked != version + 1 {
                    return Err(format!(
                        "writer {w}: If-Match {version} acknowledged as version {acked}"
                    ));
                }
                ledger.acks.lock().unwrap().push(Ack {
                    run: index,
                    version: acked,
                    end,
                });
                version = acked;
            }
            StatusCode::PRECONDITION_FAILED => match api.read(run).await {
                Ok(seen) => version = seen.version,
                Err(error) => return gone(error, n),
            },
            other => {
                let body = response.text().await.unwrap_or_default();
                return Err(format!("writer {w}: PUT answered {other}: {body}"));
            }
        }
    }
}

/// After a restart: no run is behind its last acknowledged version, and a
/// run exactly at it holds the end that write sent.
async fn check_survived(api: &Api, runs: &[SeededRun], ledger: &Ledger, cycle: usize) {
    for (index, run) in runs.iter().enumerate() {
        let seen = api.read(run).await.expect("the restarted server answers");
        let Some(last) = ledger.last_ack(index) else { continue };
        assert!(
            seen.version >= last.version,
            "kill {cycle}, run {index}: version {} after the restart, but {} was acknowledged",
            seen.version,
            last.version
        );
        if seen.version == last.version {
            assert_eq!(seen.end, last.end, "kill {cycle}, run {index}: the acknowledged end");
        }
    }
}

/// `cycles` rounds of load, SIGKILL, restart and check on `db`, then the
/// change records.
async fn acknowledged_writes_survive_sigkill(db: Db, cycles: usize) {
    let args = db.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let bearer = token(SECRET, &[ACCOUNT]);
    let mut server = Server::start_quiet(&args);
    let api = Api::new(&server, &bearer);
    let mut seeded = Vec::new();
    for index in 0..RUNS {
        seeded.push(api.seed_run(index).await);
    }
    let runs = Arc::new(seeded);
    let ledger = Arc::new(Ledger::new());
    let mut counts = [0i64; WRITERS];
    let started = Instant::now();

    for cycle in 1..=cycles {
        ledger.killed.store(false, Ordering::SeqCst);
        let before = ledger.ack_count();
        let api = Api::new(&server, &bearer);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(api.clone(), runs.clone(), ledger.clone(), w, counts[w])))
            .collect();
        let deadline = Instant::now() + DEADLINE;
        while ledger.ack_count() < before + MIN_ACKS_PER_CYCLE {
            assert!(
                Instant::now() < deadline && writers.iter().any(|w| !w.is_finished()),
                "kill {cycle}: only {} writes acknowledged:\n{}",
                ledger.ack_count() - before,
                server.printed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(jitter()).await;

        ledger.killed.store(true, Ordering::SeqCst);
        let status = server.stop_with(libc::SIGKILL);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}\n{}", server.printed());
        for (w, task) in writers.into_iter().enumerate() {
            counts[w] = task
                .await
                .expect("a writer task")
                .unwrap_or_else(|e| panic!("kill {cycle}: {e}"));
        }
        db.check_integrity();

        server = Server::start_quiet(&args);
        check_survived(&Api::new(&server, &bearer), &runs, &ledger, cycle).await;
    }

    let api = Api::new(&server, &bearer);
    let mut finals = Vec::new();
    for run in runs.iter() {
        finals.push(api.read(run).await.expect("the last server answers").version);
    }
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
    db.check_integrity();

    let acks = ledger.acks.lock().unwrap().clone();
    let sent = ledger.sent.lock().unwrap().clone();
    for (index, run) in runs.iter().enumerate() {
        let what = format!("run {index}");
        let records = db.changes(&run.key).await;
        assert_contiguous(&records, finals[index], &what);
        for ack in acks.iter().filter(|a| a.run == index) {
            let record = &records[ack.version as usize - 1];
            assert_eq!(
                record.end_to, ack.end,
                "{what}: the acknowledged version {}",
                ack.version
            );
        }
        for record in &records[1..] {
            assert!(
                sent[index].contains(&record.end_to.unix_millis()),
                "{what}: version {} has an end no client sent: {record:?}",
                record.version
            );
        }
    }
    eprintln!(
        "{} acknowledged PUTs over {cycles} SIGKILLs, all durable; {} versions written in all ({:.1} s)",
        acks.len(),
        finals.iter().map(|v| v - 1).sum::<u64>(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.sqlite3");
    acknowledged_writes_survive_sigkill(Db::Sqlite { _dir: dir, path }, 8).await;
}

/// Runs wherever `FIELDING_PG_URL` or `CI` is set (and fails without a
/// server); see [`fielding_postgres::testing`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_on_postgresql() {
    let Some(schema) = TestSchema::new().await else {
        return;
    };
    acknowledged_writes_survive_sigkill(Db::Postgres(schema), 6).await;
}
