//! Long polls of the change feed (`GET .../fielding-run-changes?wait=N`)
//! through the real server process, on the memory store:
//!
//! * a long poll outlives the server's header and idle timeouts (they time
//!   request heads and idle connections, never a request being served) and
//!   answers 200 with an empty page after its `wait`;
//! * it answers within milliseconds of another client's write (the store's
//!   in-process wake-up), not at the next poll interval;
//! * hundreds of waiting long polls cost little memory and CPU, and one
//!   write wakes them all (figures printed: `cargo test -p fielding-server
//!   --test feed -- --nocapture`);
//! * a stopping server answers its long polls at once instead of waiting
//!   out their `wait`.

mod common;

use std::time::{Duration, Instant};

use common::api::{plus_millis, Api, SeededRun, ACCOUNT};
use common::{token, Server, API, API_VERSION, SECRET};
use reqwest::StatusCode;
use serde_json::Value;

/// How many consumers wait at once in the cost test.
const CONSUMERS: usize = 300;

fn feed_url(server: &Server, query: &str) -> String {
    server.url(&format!("{API}/demand/accounts/{ACCOUNT}/fielding-run-changes?{query}"))
}

/// A server on the memory store that lets one principal on one address
/// hold [`CONSUMERS`] long polls: the per-address connection cap (256 by
/// default) and the per-principal rate limit (bursts of 200) are what an
/// operator raises for that many consumers behind one address and token.
fn start(extra: &[&str]) -> Server {
    let mut args = vec![
        "--database",
        "memory",
        "--jwt-secret",
        SECRET,
        "--max-connections",
        "1000",
        "--max-connections-per-address",
        "0",
        "--rate-limit-per-second",
        "0",
    ];
    args.extend_from_slice(extra);
    Server::start_quiet(&args)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// GET of the feed; status and body.
async fn read(client: &reqwest::Client, server: &Server, bearer: &str, query: &str) -> (StatusCode, Value) {
    let response = client
        .get(feed_url(server, query))
        .bearer_auth(bearer)
        .header("Cint-API-Version", API_VERSION)
        .send()
        .await
        .expect("an answer");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

/// One seeded run, and the cursor after its creation record.
async fn seeded(server: &Server, bearer: &str) -> (Api, SeededRun, String) {
    let api = Api::new(server, bearer);
    let run = api.seed_run(1).await;
    let (status, page) = read(&client(), server, bearer, "limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "{page}");
    let cursor = page["next_cursor"].as_str().expect("next_cursor").to_owned();
    (api, run, cursor)
}

/// Writes a new end to `run` (the next version after `version`).
async fn write(api: &Api, run: &SeededRun, version: u64) {
    let response = api
        .put_end(run, version, plus_millis(run.end, i64::try_from(version).unwrap()))
        .await
        .expect("the PUT is answered");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_outlives_the_connection_timeouts_and_answers_empty_after_its_wait() {
    // Timeouts far shorter than the wait: neither may cut it.
    let server = start(&["--header-read-timeout", "1", "--idle-timeout", "1"]);
    let bearer = token(SECRET, &[ACCOUNT]);
    let (_, _, cursor) = seeded(&server, &bearer).await;
    for wait in [2u64, 3] {
        let started = Instant::now();
        let (status, page) = read(&client(), &server, &bearer, &format!("after={cursor}&wait={wait}")).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["data"], serde_json::json!([]), "{page}");
        assert_eq!(page["has_more"], false);
        assert!(page["next_cursor"].is_string(), "{page}");
        let wait = Duration::from_secs(wait);
        assert!(
            took >= wait - Duration::from_millis(50) && took < wait + Duration::from_secs(3),
            "wait={wait:?} answered after {took:?}"
        );
        println!("wait={wait:?}: an empty page after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_within_milliseconds_of_another_clients_write() {
    let server = start(&[]);
    let bearer = token(SECRET, &[ACCOUNT]);
    let (api, run, mut cursor) = seeded(&server, &bearer).await;
    let waiting = client();
    let mut delays = Vec::new();
    for version in 1..=5u64 {
        let poll = async {
            let answer = read(&waiting, &server, &bearer, &format!("after={cursor}&wait=10")).await;
            (answer, Instant::now())
        };
        let writer = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let writing = Instant::now();
            write(&api, &run, version).await;
            writing
        };
        let (((status, page), answered), writing) = tokio::join!(poll, writer);
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(
            page["data"][0]["version"],
            version + 1,
            "the write it waited for: {page}"
        );
        assert!(answered >= writing, "it waited for the write");
        delays.push(answered - writing);
        cursor = page["next_cursor"].as_str().expect("next_cursor").to_owned();
    }
    delays.sort();
    println!("long poll answered after the write began (5 rounds, sorted): {delays:?}");
    // Without the wake-up the safety-net poll interval would set the delay,
    // far above these bounds: they fail if the wake-up does not work.
    assert!(delays[2] < Duration::from_millis(200), "median {:?}", delays[2]);
    assert!(delays[4] < Duration::from_secs(2), "slowest {:?}", delays[4]);
}

/// The server process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// The server process's CPU time so far (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which is in parentheses): utime and
    // stime are the 14th and 15th fields of the line, 12th and 13th after it.
    let after_name = stat.rsplit_once(')').expect("a stat line").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("ticks per second");
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The server process's open file descriptors (its connections among them).
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// [`open_files`] once it has stopped changing (connections of clients
/// dropped a moment ago are closed by then), so that the connections
/// opened next can be counted on top of it.
async fn settled_open_files(pid: u32) -> usize {
    let mut last = open_files(pid);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_files(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_waiting_long_polls_cost_little_and_one_write_wakes_them_all() {
    let server = start(&[]);
    let pid = server.child.id();
    let bearer = token(SECRET, &[ACCOUNT]);
    let (api, run, cursor) = seeded(&server, &bearer).await;
    // Warm up: the allocator's and the runtime's first growth is not the
    // consumers' cost.
    let warm = client();
    for _ in 0..20 {
        let (status, _) = read(&warm, &server, &bearer, &format!("after={cursor}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let files_before = settled_open_files(pid).await;
    let rss_before = rss_kib(pid);
    let idle_from = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_cpu = cpu_time(pid) - idle_from;

    // Each on its own connection: concurrent HTTP/1 requests never share
    // one, and this client's pool starts empty.
    let consumers = client();
    let polls: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (client, url, bearer) = (
                consumers.clone(),
                feed_url(&server, &format!("after={cursor}&wait=20")),
                bearer.clone(),
            );
            tokio::spawn(async move {
                let response = client
                    .get(url)
                    .bearer_auth(bearer)
                    .header("Cint-API-Version", API_VERSION)
                    .send()
                    .await
                    .expect("an answer");
                let status = response.status();
                let page: Value = response.json().await.expect("a JSON page");
                (status, page, Instant::now())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while open_files(pid) < files_before + CONSUMERS {
        assert!(
            Instant::now() < deadline,
            "only {} of {CONSUMERS} connections open",
            open_files(pid).saturating_sub(files_before)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the last requests time to reach their handlers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting_from = cpu_time(pid);
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let waiting_cpu = cpu_time(pid) - waiting_from;
    let rss_waiting = rss_kib(pid);
    assert!(
        polls.iter().all(|poll| !poll.is_finished()),
        "every consumer is still waiting"
    );

    let writing = Instant::now();
    write(&api, &run, 1).await;
    let mut slowest = Duration::ZERO;
    for poll in polls {
        let (status, page, answered) = tokio::time::timeout(Duration::from_secs(20), poll)
            .await
            .expect("answered within its wait")
            .expect("the consumer task");
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["data"][0]["version"], 2, "{page}");
        slowest = slowest.max(answered.saturating_duration_since(writing));
    }

    let grown_kib = rss_waiting.saturating_sub(rss_before);
    println!(
        "{CONSUMERS} long polls waiting: RSS {rss_before} KiB before, {rss_waiting} KiB while waiting \
         (+{grown_kib} KiB, {:.1} KiB each); CPU {:?} over {window:?} while waiting ({:?} idle over 3 s \
         before); one write answered all {CONSUMERS} within {slowest:?}",
        grown_kib as f64 / CONSUMERS as f64,
        waiting_cpu,
        idle_cpu,
    );
    // Generous bounds, for a small and busy machine: a waiting consumer is
    // a connection and a parked task, not a thread or a busy loop.
    assert!(
        grown_kib < 64 * 1024,
        "{CONSUMERS} waiting long polls took {grown_kib} KiB"
    );
    assert!(
        waiting_cpu < Duration::from_millis(1500),
        "{CONSUMERS} waiting long polls used {waiting_cpu:?} of CPU in {window:?}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "the last consumer answered {slowest:?} after the write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_answers_its_long_polls_at_once() {
    let mut server = start(&[]);
    let pid = server.child.id();
    let bearer = token(SECRET, &[ACCOUNT]);
    let (_, _, cursor) = seeded(&server, &bearer).await;
    let files_before = settled_open_files(pid).await;
    let consumers = client();
    let polls: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, bearer) = (
                consumers.clone(),
                feed_url(&server, &format!("after={cursor}&wait=30")),
                bearer.clone(),
            );
            tokio::spawn(async move {
                let response = client
                    .get(url)
                    .bearer_auth(bearer)
                    .header("Cint-API-Version", API_VERSION)
                    .send()
                    .await
                    .expect("an answer");
                (response.status(), response.json::<Value>().await.expect("a JSON page"))
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while open_files(pid) < files_before + 20 {
        assert!(Instant::now() < deadline, "the long polls did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    let status = server.stop_with(libc::SIGTERM);
    let stopped = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    for poll in polls {
        let (status, page) = poll.await.expect("the consumer task");
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["data"], serde_json::json!([]), "{page}");
        assert!(page["next_cursor"].is_string(), "a cursor to poll on from: {page}");
    }
    println!("stopped with 20 long polls waiting (wait=30) in {stopped:?}");
    assert!(
        stopped < Duration::from_secs(10),
        "the stop waited {stopped:?}: the long polls were not ended"
    );
}
