//! Two server processes on one PostgreSQL schema, racing over HTTP.
//!
//! Writers on both instances update the same runs: each GETs the run, PUTs
//! its end plus one millisecond with `If-Match` set to the ETag it read,
//! and on 412 starts over. With no lost update, for every run: the 202s
//! the writers got add up to the versions written (final − initial), the
//! end moved by exactly one millisecond per 202 (an update applied over a
//! stale read would show here even if the versions added up), and the
//! change records are versions 1..=final with every update's end exactly
//! one millisecond past the end it replaced.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{assert_contiguous, etag_version, plus_millis, Api, SeededRun, ACCOUNT};
use common::*;
use fielding_core::FieldingStore;
use fielding_postgres::testing::TestSchema;
use reqwest::StatusCode;

/// Runs raced on; every run gets writers on both instances.
const RUNS: usize = 2;
const WRITERS: usize = 16;
/// How long the writers race.
const RACE: Duration = Duration::from_secs(5);

/// What the writers saw, per run.
#[derive(Default)]
struct Tally {
    successes: AtomicU64,
    refusals: AtomicU64,
}

/// A writer on `api` (its instance), racing on `run` until `until`.
/// Returns its 202s.
async fn writer(api: Api, run: SeededRun, tally: Arc<Tally>, until: Instant) -> Result<u64, String> {
    let mut mine = 0;
    while Instant::now() < until {
        let seen = api.read(&run).await.map_err(|e| format!("GET: {e}"))?;
        let response = api
            .put_end(&run, seen.version, plus_millis(seen.end, 1))
            .await
            .map_err(|e| format!("PUT: {e}"))?;
        match response.status() {
            StatusCode::ACCEPTED => {
                if etag_version(&response) != Some(seen.version + 1) {
                    return Err(format!(
                        "If-Match {} acknowledged with ETag {:?}",
                        seen.version,
                        response.headers().get("etag")
                    ));
                }
                tally.successes.fetch_add(1, Ordering::Relaxed);
                mine += 1;
            }
            StatusCode::PRECONDITION_FAILED => {
                tally.refusals.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                let body = response.text().await.unwrap_or_default();
                return Err(format!("PUT answered {other}: {body}"));
            }
        }
    }
    Ok(mine)
}

/// Runs wherever `FIELDING_PG_URL` or `CI` is set (and fails without a
/// server); see [`fielding_postgres::testing`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgresql_schema_lose_no_update() {
    let Some(schema) = TestSchema::new().await else {
        return;
    };
    let args = [
        "--database",
        schema.url(),
        "--pg-schema",
        schema.name(),
        "--jwt-secret",
        SECRET,
        // The writers share one principal and one address.
        "--rate-limit-per-second",
        "0",
        "--address-rate-limit-per-second",
        "0",
    ];
    // One after the other: the second finds the schema migrated.
    let first = Server::start_quiet(&args);
    let second = Server::start_quiet(&args);
    let bearer = token(SECRET, &[ACCOUNT]);
    let instances = [Api::new(&first, &bearer), Api::new(&second, &bearer)];

    let mut runs = Vec::new();
    for index in 0..RUNS {
        let run = instances[0].seed_run(index).await;
        let initial = instances[1].read(&run).await.expect("the other instance sees the run");
        runs.push((run, initial, Arc::new(Tally::default())));
    }

    let until = Instant::now() + RACE;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            // Alternate instances, and runs in pairs of writers, so every
            // run has writers on both instances.
            let api = instances[w % 2].clone();
            let (run, _, tally) = &runs[(w / 2) % RUNS];
            tokio::spawn(writer(api, run.clone(), tally.clone(), until))
        })
        .collect();
    let mut per_instance = [0u64; 2];
    for (w, task) in writers.into_iter().enumerate() {
        let outcome = task.await.expect("a writer task");
        per_instance[w % 2] +=
            outcome.unwrap_or_else(|e| panic!("writer {w}: {e}\n{}\n{}", first.printed(), second.printed()));
    }
    assert!(
        per_instance.iter().all(|&n| n > 0),
        "both instances must have written: {per_instance:?}"
    );

    let store = schema.store().await;
    for (index, (run, initial, tally)) in runs.iter().enumerate() {
        let what = format!("run {index}");
        let successes = tally.successes.load(Ordering::Relaxed);
        let refusals = tally.refusals.load(Ordering::Relaxed);
        let last = instances[0].read(run).await.expect("the first instance answers");
        assert_eq!(
            instances[1].read(run).await.expect("the second instance answers"),
            last,
            "{what}: both instances read the same run"
        );
        assert!(successes > 0, "{what}: no update succeeded");
        assert!(refusals > 0, "{what}: no 412 at all, so the writers never raced");
        assert_eq!(
            last.version - initial.version,
            successes,
            "{what}: versions written vs 202s"
        );
        assert_eq!(
            last.end.unix_millis() - initial.end.unix_millis(),
            successes as i64,
            "{what}: the end moves 1 ms per 202"
        );
        let records = store.changes(&run.key).await.expect("read the change records");
        assert_contiguous(&records, last.version, &what);
        for record in &records[1..] {
            let from = record.end_from.expect("an update records the end it replaced");
            assert_eq!(
                record.end_to,
                plus_millis(from, 1),
                "{what}: version {} was not written over the version before it",
                record.version
            );
        }
        eprintln!(
            "{what}: {successes} × 202 and {refusals} × 412 over both instances, version {} → {}",
            initial.version, last.version
        );
    }
    drop(store);
    for mut server in [first, second] {
        let status = server.stop_with(libc::SIGTERM);
        assert!(status.success(), "{status:?}\n{}", server.printed());
    }
}
