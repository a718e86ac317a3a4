//! The real binary, started as a process: its output, tokens, health,
//! signals, a restart on a SQLite file, the command line.
//!
//! Every wait is a poll with a generous deadline (the machine may be small
//! and busy); no fixed sleeps.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fielding_core::{FieldingService, Scope, UserId};
use reqwest::StatusCode;

#[tokio::test]
async fn health_tokens_and_accounts_on_the_memory_store_then_a_clean_sigterm() {
    let mut server = Server::start(&["--database", "memory", "--jwt-secret", SECRET]);
    assert!(server.printed().contains("store: memory"), "{}", server.printed());

    let (status, headers, body) = get(&server, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "ok", "store": "memory"}));
    assert!(headers.contains_key("traceparent"));

    let mine = token(SECRET, &[101]);
    let (status, _, body) = get(&server, &list_path(101), Some(&mine)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"], serde_json::json!([]));

    let theirs = token(SECRET, &[202]);
    let (status, _, body) = get(&server, &list_path(101), Some(&theirs)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["object"], "authorization_error");

    let forged = token("some other secret, also long enough", &[101]);
    let (status, headers, body) = get(&server, &list_path(101), Some(&forged)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");

    let (status, _, _) = get(&server, &list_path(101), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
    let printed = server.printed();
    assert!(
        printed.contains("SIGTERM") && printed.contains("shutting down"),
        "{printed}"
    );
    assert!(
        !printed.contains("authentication refused") && !printed.contains("status=401"),
        "refusals are not logged one by one at the default level: {printed}"
    );
}

#[tokio::test]
async fn without_a_secret_one_is_generated_announced_and_usable_then_a_clean_sigint() {
    let mut server = Server::start(&["--database", "memory"]);
    let printed = server.printed();
    let marker = "generated a random one for this run: ";
    let line = printed
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no generated-secret message:\n{printed}"));
    let secret = line.rsplit(marker).next().unwrap().trim();
    assert_eq!(secret.len(), 64, "{line}");
    assert!(
        printed.contains("fielding-server token --secret"),
        "how to mint a token: {printed}"
    );

    let (status, _, body) = get(&server, &list_path(101), Some(&token(secret, &[101]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let status = server.stop_with(libc::SIGINT);
    assert!(status.success(), "{status:?}\n{}", server.printed());
}

/// A scheduled run in `path`, written through the SQLite store directly.
async fn seed(path: &Path) -> String {
    let store = fielding_sqlite::SqliteStore::open(path).await.unwrap();
    let store = Arc::new(store);
    let service = FieldingService::new(store.clone());
    let scope = Scope::parse("101", PROJECT, TARGET_GROUP).unwrap();
    let (start, end) = (in_days(10), in_days(40));
    let created = service.schedule(scope, start, end, UserId::random()).await.unwrap();
    drop(service);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }
    created.run.id.to_string()
}

#[tokio::test]
async fn data_survives_a_restart_on_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.sqlite3");
    let run_id = seed(&path).await;
    let run_path = format!("{}/{run_id}", list_path(101));
    let bearer = token(SECRET, &[101]);

    let sqlite_url = format!("sqlite://{}", path.display());
    let mut server = Server::start(&["--database", &sqlite_url, "--jwt-secret", SECRET, "--body-limit", "64"]);
    let (status, _, body) = get(&server, "/health", None).await;
    assert_eq!((status, body["store"].as_str()), (StatusCode::OK, Some("sqlite")));

    let (status, headers, body) = get(&server, &run_path, Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(body["status"], "scheduled");

    let launched = client()
        .post(server.url(&format!("{run_path}/launch-now")))
        .bearer_auth(&bearer)
        .header("Cint-API-Version", API_VERSION)
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(launched.status(), StatusCode::OK);
    assert_eq!(launched.headers()["etag"], "\"2\"");

    // --body-limit is applied.
    let too_big = client()
        .put(server.url(&run_path))
        .bearer_auth(&bearer)
        .header("Cint-API-Version", API_VERSION)
        .header("If-Match", "\"2\"")
        .header("Content-Type", "application/json")
        .body(format!("{{\"start_fielding_at\":\"{}\"}}", "x".repeat(200)))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
    drop(server);

    // The same file, named as a plain path this time.
    let path_text = path.display().to_string();
    let mut server = Server::start(&["--database", &path_text, "--jwt-secret", SECRET]);
    let (status, headers, body) = get(&server, &run_path, Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["etag"], "\"2\"", "the launch survived the restart");
    assert_eq!(body["status"], "live");
    let (_, _, list) = get(&server, &list_path(101), Some(&bearer)).await;
    assert_eq!(list["data"][0]["id"], run_id.as_str());
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
}

/// `POST .../fielding-run-jobs/schedule-from-draft` with `key` and `body`.
async fn submit_schedule(server: &Server, bearer: &str, key: &str, body: &str) -> reqwest::Response {
    let path = format!(
        "{API}/demand/accounts/101/projects/{PROJECT}/target-groups/{TARGET_GROUP}/fielding-run-jobs/schedule-from-draft"
    );
    client()
        .post(server.url(&path))
        .bearer_auth(bearer)
        .header("Cint-API-Version", API_VERSION)
        .header("idempotency-key", key)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The `Location` of a 201.
fn created_location(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::CREATED);
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_creation_job_survives_a_restart_on_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite3");
    let path_text = path.display().to_string();
    let bearer = token(SECRET, &[101]);
    // Dates relative to now: a schedule must start in the future.
    let (start, end) = (in_days(10), in_days(40));
    let body = format!(r#"{{"start_fielding_at":"{start}","end_fielding_at":"{end}"}}"#);
    let key = "survives-a-restart";

    let mut server = Server::start(&["--database", &path_text, "--jwt-secret", SECRET]);
    let location = created_location(&submit_schedule(&server, &bearer, key, &body).await);
    assert!(
        location.contains("/fielding-run-jobs/schedule-from-draft/"),
        "{location}"
    );
    let (status, _, job) = get(&server, &location, Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "Completed", "{job}");
    let run_id = job["created_fielding_run_id"].as_str().expect("the new run").to_owned();
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
    drop(server);
    // A clean stop checkpoints and closes every connection last to first:
    // SQLite removes its log and shared-memory files.
    for suffix in ["-wal", "-shm"] {
        let leftover = PathBuf::from(format!("{path_text}{suffix}"));
        assert!(!leftover.exists(), "{} left after a clean stop", leftover.display());
    }

    let mut server = Server::start(&["--database", &path_text, "--jwt-secret", SECRET]);
    let (status, _, after) = get(&server, &location, Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after, job, "the same job after the restart");
    assert_eq!(after["status"], "Completed");
    assert_eq!(after["created_fielding_run_id"], run_id.as_str());
    // A retry of the submission: the same job, nothing created again.
    let replay = submit_schedule(&server, &bearer, key, &body).await;
    assert_eq!(created_location(&replay), location);
    let (_, _, again) = get(&server, &location, Some(&bearer)).await;
    assert_eq!(again, job);
    let (status, _, list) = get(&server, &list_path(101), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|run| run["id"].as_str())
        .collect();
    assert_eq!(ids, [run_id.as_str()], "{list}");
    let (status, headers, run) = get(&server, &format!("{}/{run_id}", list_path(101)), Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(headers["etag"], "\"1\"", "the run was not written again");
    assert_eq!(run["status"], "scheduled");
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
    drop(server);

    // The file itself: one run with its one change record.
    let store = fielding_sqlite::SqliteStore::open(&path).await.unwrap();
    let scope = Scope::parse("101", PROJECT, TARGET_GROUP).unwrap();
    let stored = fielding_core::FieldingStore::find_by_target_group(&store, &scope)
        .await
        .unwrap()
        .expect("the run");
    assert_eq!(stored.id.to_string(), run_id);
    let changes = fielding_core::FieldingStore::changes(&store, &stored.key())
        .await
        .unwrap();
    assert_eq!(changes.len(), 1, "created once");
    store.close().await;
}

#[tokio::test]
async fn the_rate_limit_flags_apply() {
    let server = Server::start(&[
        "--database",
        "memory",
        "--jwt-secret",
        SECRET,
        "--rate-limit-per-second",
        "1",
        "--rate-limit-burst",
        "2",
    ]);
    let bearer = token(SECRET, &[101]);
    let mut refused = None;
    for _ in 0..20 {
        let response = client()
            .get(server.url(&list_path(101)))
            .bearer_auth(&bearer)
            .header("Cint-API-Version", API_VERSION)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("a 429 within 20 requests at 1/s with bursts of 2");
    assert!(refused.headers().contains_key("retry-after"));
    // /health is not rate limited.
    for _ in 0..5 {
        assert_eq!(get(&server, "/health", None).await.0, StatusCode::OK);
    }
}

#[test]
fn help_names_every_environment_variable() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for var in ENV_VARS.iter().chain(&["RUST_LOG"]) {
        assert!(help.contains(var), "--help does not mention {var}:\n{help}");
    }
    for flag in [
        "--listen",
        "--database",
        "--jwt-secret",
        "--rate-limit-per-second",
        "--rate-limit-burst",
        "--body-limit",
        "token",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }

    let output = run(&["token", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for word in ["FIELDING_JWT_SECRET", "--secret", "--account", "--user", "--ttl"] {
        assert!(help.contains(word), "token --help does not mention {word}:\n{help}");
    }
}

#[test]
fn a_secret_from_the_environment_is_not_shown_by_help() {
    let output = command()
        .env("FIELDING_JWT_SECRET", "do-not-show-me")
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(!help.contains("do-not-show-me"), "{help}");
}

#[test]
fn a_bad_database_exits_non_zero_naming_the_problem() {
    let output = run(&["--listen", "127.0.0.1:0", "--database", "mysql://u@h/db"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("unsupported database scheme \"mysql\""), "{stderr}");
    assert!(
        stderr.contains("postgres://"),
        "the message says what would work: {stderr}"
    );

    let output = command()
        .env("FIELDING_DATABASE", "ftp://x")
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("\"ftp\""), "{stderr}");
}

#[test]
fn a_database_that_cannot_be_opened_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "not a database, but long enough to have something like a header in it",
    )
    .unwrap();
    let output = run(&[
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--database",
        path.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("error") && stderr.contains("notes.txt"), "{stderr}");
}

#[test]
fn token_prints_only_the_token() {
    let user = "6f1c3f5e-2a0b-4c8e-9a53-2f5a8f1f0b11";
    let output = run(&[
        "token",
        "--secret",
        SECRET,
        "--account",
        "101",
        "--account",
        "7",
        "--user",
        user,
        "--ttl",
        "60",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let token = stdout.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let secret = fielding_server::JwtSecret::new(SECRET).unwrap();
    let principal = fielding_server::JwtAuthenticator::new(&secret).verify(token).unwrap();
    assert_eq!(principal.user_id.to_string(), user);

    // The secret may come from the environment.
    let output = command()
        .env("FIELDING_JWT_SECRET", SECRET)
        .args(["token", "--account", "101"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    for bad in [
        vec!["token", "--secret", SECRET],
        vec!["token", "--secret", SECRET, "--account", "0"],
        vec!["token", "--account", "101"],
    ] {
        let output = run(&bad);
        assert!(!output.status.success(), "{bad:?}");
        assert!(output.stdout.is_empty(), "{bad:?}");
    }
}

/// The server on PostgreSQL: wherever `FIELDING_PG_URL` or `CI` is set it
/// runs (and fails without a server); see [`fielding_postgres::testing`].
#[tokio::test]
async fn health_and_a_list_on_postgresql_in_a_schema_of_its_own() {
    // A schema of its own, dropped at the end, so parallel runs do not meet.
    let Some(test_schema) = fielding_postgres::testing::TestSchema::new().await else {
        return;
    };
    let (url, schema) = (test_schema.url(), test_schema.name());
    let mut server = Server::start(&["--database", url, "--pg-schema", schema, "--jwt-secret", SECRET]);
    let (status, _, body) = get(&server, "/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["store"], "postgres");
    let (status, _, body) = get(&server, &list_path(101), Some(&token(SECRET, &[101]))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
    // The server migrated its schema there.
    use fielding_postgres::sqlx::{self, Connection};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = $1")
        .bind(schema)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(tables > 0, "no tables in {schema}");
    let _ = conn.close().await;
}

/// `--pg-max-connections` bounds the connections an instance holds, and a
/// pool of one serves concurrent requests (no request needs two
/// connections at once). The connections are told apart by an
/// `application_name` of this test's own, set in the URL.
#[tokio::test]
async fn pg_max_connections_bounds_the_pool_and_one_connection_serves_concurrent_requests() {
    let Some(test_schema) = fielding_postgres::testing::TestSchema::new().await else {
        return;
    };
    let schema = test_schema.name();
    let app_name = format!("fielding_pool_{}", std::process::id());
    let separator = if test_schema.url().contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}application_name={app_name}", test_schema.url());
    use fielding_postgres::sqlx::{self, Connection};
    let mut watcher = sqlx::PgConnection::connect(test_schema.url()).await.unwrap();
    for size in ["1", "2"] {
        let mut server = Server::start(&[
            "--database",
            &url,
            "--pg-schema",
            schema,
            "--pg-max-connections",
            size,
            "--jwt-secret",
            SECRET,
        ]);
        let bearer = token(SECRET, &[101]);
        let path = list_path(101);
        let requests = (0..32).map(|_| get(&server, &path, Some(&bearer)));
        for (status, _, body) in futures_util::future::join_all(requests).await {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&app_name)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
        // The pool's connections, and the change feed's wake-up listener.
        let most = size.parse::<i64>().unwrap() + 1;
        assert!(held <= most, "{held} connections with --pg-max-connections {size}");
        assert!(held >= 1, "the server's connections are not named {app_name}");
        let status = server.stop_with(libc::SIGTERM);
        assert!(status.success(), "{status:?}\n{}", server.printed());
    }
    let _ = watcher.close().await;
}

/// Reads one response head (up to its blank line) from `socket`, byte by
/// byte so nothing after it is consumed.
fn read_head(socket: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = socket.read(&mut byte).expect("read a response head");
        assert_eq!(
            n,
            1,
            "the connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A request in flight when SIGTERM arrives is finished and answered
/// before the process exits: here a POST whose body is still arriving.
#[test]
fn sigterm_finishes_a_request_in_flight_before_exiting() {
    use std::io::Write;
    use std::net::TcpStream;

    let mut server = Server::start(&["--database", "memory", "--jwt-secret", SECRET]);
    let bearer = token(SECRET, &[101]);
    let body = format!(r#"{{"end_fielding_at":"{}"}}"#, in_days(30));
    let body = body.as_bytes();
    let mut socket = TcpStream::connect(server.addr).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let head = format!(
        "POST {API}/demand/accounts/101/projects/{PROJECT}/target-groups/{TARGET_GROUP}/fielding-run-jobs/launch-from-draft HTTP/1.1\r\n\
         Host: {}\r\nAuthorization: Bearer {bearer}\r\nCint-API-Version: {API_VERSION}\r\n\
         idempotency-key: in-flight\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        server.addr,
        body.len()
    );
    socket.write_all(head.as_bytes()).unwrap();
    socket.flush().unwrap();
    // A request the server has not yet started to read is not in flight:
    // shutdown rightly closes an idle connection. `Expect: 100-continue`
    // makes the start observable: the server answers `100 Continue` once it
    // has read the headers and the handler asks for the body.
    let interim = read_head(&mut socket);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    // Half the body: the handler is now waiting for the rest.
    socket.write_all(&body[..10]).unwrap();
    socket.flush().unwrap();

    let pid = libc::pid_t::try_from(server.child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    server.wait_for_line_anywhere("shutting down");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server must wait for the request in flight:\n{}",
        server.printed()
    );

    socket.write_all(&body[10..]).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n") {
        let n = socket.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed without an answer:\n{}", server.printed());
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("location: /v1/demand/accounts/101/"),
        "{response}"
    );
    drop(socket);

    let status = server.stop_with_nothing_more();
    assert!(status.success(), "{status:?}\n{}", server.printed());
}

#[test]
fn token_ignores_the_servers_environment() {
    let output = command()
        .env("FIELDING_DATABASE", "mysql://not-a-store")
        .env("FIELDING_RATE_LIMIT_BURST", "0")
        .args(["token", "--secret", SECRET, "--account", "101"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim().split('.').count(), 3);
}

/// A client that stalls mid-body does not hold the shutdown: once the
/// server is shutting down, a body that stops arriving is cut within about
/// a second, well before the 30 s grace period, and the process exits
/// cleanly.
#[test]
fn a_stalled_body_is_cut_at_shutdown_without_waiting_out_the_grace_period() {
    use std::io::Write;
    use std::net::TcpStream;

    let mut server = Server::start(&["--database", "memory", "--jwt-secret", SECRET, "--shutdown-grace", "30"]);
    let bearer = token(SECRET, &[101]);
    let mut socket = TcpStream::connect(server.addr).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    // Headers that pass every check, then a body that never arrives.
    let head = format!(
        "POST {API}/demand/accounts/101/projects/{PROJECT}/target-groups/{TARGET_GROUP}/fielding-run-jobs/launch-from-draft HTTP/1.1\r\n\
         Host: {}\r\nAuthorization: Bearer {bearer}\r\nCint-API-Version: {API_VERSION}\r\n\
         idempotency-key: stalled\r\nContent-Type: application/json\r\nContent-Length: 200\r\nExpect: 100-continue\r\n\r\n",
        server.addr
    );
    socket.write_all(head.as_bytes()).unwrap();
    socket.flush().unwrap();
    // The server has read the headers and the handler waits for the body
    // (see the test above).
    let interim = read_head(&mut socket);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    socket.write_all(b"{\"end").unwrap();
    socket.flush().unwrap();
    let started = Instant::now();
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.printed());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !server.printed().contains("grace period"),
        "the stall was cut, not waited out:\n{}",
        server.printed()
    );
    drop(socket);
}
