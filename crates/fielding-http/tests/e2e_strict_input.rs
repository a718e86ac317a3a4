//! End to end over real TCP (see `common::live`), on every store: the
//! strict-input rules of `docs/http.md`. A body must be declared JSON
//! (415) and repeat no key (400 naming it), `Cint-API-Version` must be a
//! version the server implements (400 naming the supported ones), error
//! bodies stay small whatever the request, and a body that stops arriving
//! is answered 408 with `Connection: close` once the body timeout passes.
//! Every refusal is checked to leave the run and its change records as
//! they were.

#[macro_use]
mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
    #[macro_use]
    pub mod e2e;
}

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::e2e::{in_days, put, CURRENT, STALE};
use common::live::{
    assert_error, authed, ghost, invalid_names, jobs_path, new_dates, run_path, Backend, Live, Options, Reply,
    API_VERSION,
};
use fielding_core::{FieldingRun, Status};
use fielding_http::api_version::IMPLEMENTED;
use fielding_http::problem::MAX_LISTED_PARAMS;
use serde_json::json;

e2e!(
    a_repeated_key_is_400_naming_it_on_every_body,
    a_body_not_declared_json_is_415_and_changes_nothing,
    requests_without_a_body_need_no_content_type,
    an_unsupported_api_version_is_400_naming_the_supported_ones,
    sixteen_kib_of_unknown_fields_get_a_small_error_body,
    a_stalled_body_is_408_with_connection_close_once_the_timeout_passes,
    a_body_refused_as_a_message_comes_before_the_run_is_read,
);

const LAUNCH: &str = "launch-from-draft";

/// The credential, the version and `If-Match: CURRENT`, plus a
/// `Content-Type` line when one is given: headers without one by default.
fn with_content_type(content_type: Option<&str>) -> Vec<(&str, &str)> {
    let mut headers = vec![
        ("authorization", "Bearer token-101"),
        ("cint-api-version", API_VERSION),
        ("if-match", CURRENT),
    ];
    headers.extend(content_type.map(|value| ("content-type", value)));
    headers
}

/// The run's start and two ends: a body whose only fault is the repeat.
fn dates_with_end_twice(run: &FieldingRun) -> String {
    format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        run.start_fielding_at,
        in_days(20),
        in_days(21)
    )
}

async fn submit(live: &Live, key: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut headers = headers.to_vec();
    headers.push(("idempotency-key", key));
    live.send(Method::POST, &jobs_path(&Live::scope(), LAUNCH), &headers, body)
        .await
}

#[track_caller]
fn assert_names(reply: &Reply, status: StatusCode, names: &[&str]) {
    assert_error(reply, status, "bad_request_error");
    assert_eq!(invalid_names(reply), names, "{}", reply.json);
}

async fn a_repeated_key_is_400_naming_it_on_every_body(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;

    // Both values are valid: only the repeat is wrong.
    let reply = put(&live, &run, &[CURRENT], &dates_with_end_twice(&run)).await;
    assert_names(&reply, StatusCode::BAD_REQUEST, &["end_fielding_at"]);
    let reason = reply.json["invalid_params"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("more than once"), "{reason}");
    // An escaped spelling of the same name is the same key (RFC 8259, 7).
    let escaped = dates_with_end_twice(&run).replacen("end_fielding_at", "end_fielding\\u005fat", 1);
    let reply = put(&live, &run, &[CURRENT], &escaped).await;
    assert_names(&reply, StatusCode::BAD_REQUEST, &["end_fielding_at"]);
    // Nested repeats are named by their path (and the unknown field too).
    let nested = format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}","x":{{"a":1,"a":2}}}}"#,
        run.start_fielding_at,
        in_days(20)
    );
    let reply = put(&live, &run, &[CURRENT], &nested).await;
    assert_names(&reply, StatusCode::BAD_REQUEST, &["x.a", "x"]);
    // A command's body may be `{}`, never a repeat.
    let reply = live
        .send(
            Method::POST,
            &format!("{}/pause", run_path(&run)),
            &authed(&[("if-match", CURRENT)]),
            r#"{"a":1,"a":1}"#,
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert!(invalid_names(&reply).contains(&"a".to_owned()), "{}", reply.json);
    live.assert_unchanged(&run.key(), &before, "repeated key").await;

    // A creation job: refused, and its key stays free for the fixed body.
    let end = in_days(30);
    let twice = format!(r#"{{"end_fielding_at":"{end}","end_fielding_at":"{end}"}}"#);
    let reply = submit(&live, "twice", &authed(&[]), &twice).await;
    assert_names(&reply, StatusCode::BAD_REQUEST, &["end_fielding_at"]);
    let once = json!({ "end_fielding_at": end }).to_string();
    let reply = submit(&live, "twice", &authed(&[]), &once).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
}

async fn a_body_not_declared_json_is_415_and_changes_nothing(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let body = new_dates(&run, 1);
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/xml"),
        Some("application/x-www-form-urlencoded"),
        Some("application/merge-patch+json"),
        Some("application/json; charset=iso-8859-1"),
    ] {
        let reply = live
            .send(
                Method::PUT,
                &run_path(&run),
                &with_content_type(content_type),
                body.clone(),
            )
            .await;
        assert_error(&reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request_error");
        assert_eq!(reply.header("accept"), Some("application/json"), "{content_type:?}");
        assert!(
            reply.json["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("application/json"),
            "{content_type:?}: {}",
            reply.json
        );
        let pause = live
            .send(
                Method::POST,
                &format!("{}/pause", run_path(&run)),
                &with_content_type(content_type),
                "{}",
            )
            .await;
        assert_error(&pause, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request_error");
    }
    // Two Content-Type lines are no single declaration.
    let mut two = with_content_type(Some("application/json"));
    two.push(("content-type", "application/json"));
    let reply = live.send(Method::PUT, &run_path(&run), &two, body.clone()).await;
    assert_error(&reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request_error");
    live.assert_unchanged(&run.key(), &before, "415").await;

    let reply = submit(
        &live,
        "typed",
        &with_content_type(Some("text/plain")),
        &json!({ "end_fielding_at": in_days(30) }).to_string(),
    )
    .await;
    assert_error(&reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request_error");

    // The same PUT declared JSON, in any case, with a UTF-8 charset: read.
    let reply = live
        .send(
            Method::PUT,
            &run_path(&run),
            &with_content_type(Some("Application/JSON; Charset=\"UTF-8\"")),
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
}

async fn requests_without_a_body_need_no_content_type(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let bare = [("authorization", "Bearer token-101"), ("cint-api-version", API_VERSION)];
    let reply = live.send(Method::GET, &run_path(&run), &bare, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    let reply = live.send(Method::GET, &common::live::list_path(&run), &bare, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    // An empty body has nothing to declare, whatever the header says.
    let reply = live
        .send(
            Method::POST,
            &format!("{}/pause", run_path(&run)),
            &with_content_type(None),
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.json);
    let resume = [
        ("authorization", "Bearer token-101"),
        ("cint-api-version", API_VERSION),
        ("if-match", "\"8\""),
        ("content-type", "text/plain"),
    ];
    let reply = live
        .send(Method::POST, &format!("{}/resume", run_path(&run)), &resume, "")
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.json);
}

async fn an_unsupported_api_version_is_400_naming_the_supported_ones(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for version in ["2099-01-01", "2025-12-17", "2024-02-29"] {
        let headers = [
            ("authorization", "Bearer token-101"),
            ("cint-api-version", version),
            ("content-type", "application/json"),
            ("if-match", CURRENT),
            ("idempotency-key", "versioned"),
        ];
        let requests = [
            (Method::GET, run_path(&run), String::new()),
            (Method::PUT, run_path(&run), new_dates(&run, 1)),
            (Method::POST, format!("{}/complete", run_path(&run)), String::new()),
            (
                Method::POST,
                jobs_path(&Live::scope(), LAUNCH),
                json!({ "end_fielding_at": in_days(30) }).to_string(),
            ),
        ];
        for (method, path, body) in requests {
            let reply = live.send(method.clone(), &path, &headers, body).await;
            assert_names(&reply, StatusCode::BAD_REQUEST, &["Cint-API-Version"]);
            let reason = reply.json["invalid_params"][0]["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains(version) && reason.contains(IMPLEMENTED),
                "{method} {version}: {reason}"
            );
        }
    }
    live.assert_unchanged(&run.key(), &before, "unsupported version").await;
}

/// Fields `unknown_field_N` until the body is `bytes` long.
fn unknown_fields(bytes: usize) -> String {
    let mut body = String::from("{");
    let mut i = 0;
    while body.len() < bytes {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(r#""unknown_field_{i}":0"#));
        i += 1;
    }
    body.push('}');
    body
}

async fn sixteen_kib_of_unknown_fields_get_a_small_error_body(backend: Backend) {
    let live = Live::start_with(
        backend,
        Options {
            body_limit: 32 * 1024,
            ..Options::default()
        },
    )
    .await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let many = unknown_fields(16 * 1024);
    let huge_key = format!(r#"{{"{}":0}}"#, "k".repeat(16 * 1024));
    for body in [&many, &huge_key] {
        let reply = put(&live, &run, &[CURRENT], body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert!(
            reply.bytes.len() < 2048,
            "{} bytes of error for {} bytes of body: {}",
            reply.bytes.len(),
            body.len(),
            reply.json
        );
        // The missing fields come first: they are what the client must fix.
        let names = invalid_names(&reply);
        assert_eq!(names[..2], ["start_fielding_at", "end_fielding_at"], "{}", reply.json);
    }
    let reply = put(&live, &run, &[CURRENT], &many).await;
    assert_eq!(invalid_names(&reply).len(), MAX_LISTED_PARAMS, "{}", reply.json);
    let fields = many.matches("unknown_field_").count();
    let detail = reply.json["detail"].as_str().unwrap_or_default();
    let left_out = fields + 2 - MAX_LISTED_PARAMS;
    assert!(
        detail.contains(&format!("and {left_out} more invalid parameters")),
        "{detail}"
    );
    let reply = submit(&live, "many", &authed(&[]), &many).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert!(reply.bytes.len() < 2048, "{} bytes", reply.bytes.len());
    live.assert_unchanged(&run.key(), &before, "unknown fields").await;
}

/// Writes `head` and `partial` on a new connection, then sends nothing
/// more; returns what the server sent until it closed, and how long that
/// took from the start of the head.
async fn stall(live: &Live, head: &str, partial: &[u8]) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let address = live.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    // Before the head is sent: the server's timer starts when it reads the
    // body, which may be before this task gets the thread back.
    let started = Instant::now();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(partial).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server closes a stalled connection after the 408");
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

async fn a_stalled_body_is_408_with_connection_close_once_the_timeout_passes(backend: Backend) {
    let timeout = Duration::from_millis(600);
    let live = Live::start_with(
        backend,
        Options {
            body_timeout: Some(timeout),
            ..Options::default()
        },
    )
    .await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let host = live.base.trim_start_matches("http://");
    let head = |framing: &str| {
        format!(
            "PUT {} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer token-101\r\n\
             cint-api-version: {API_VERSION}\r\nif-match: {CURRENT}\r\ncontent-type: application/json\r\n{framing}\r\n",
            run_path(&run)
        )
    };
    // Short of its Content-Length, and a chunked body with no last chunk.
    let cases = [
        (head("content-length: 100\r\n"), &b"{\"start_fielding_at\""[..]),
        (head("transfer-encoding: chunked\r\n"), &b"5\r\n{\"sta\r\n"[..]),
    ];
    for (head, partial) in cases {
        let (text, waited) = stall(&live, &head, partial).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
        assert!(waited >= timeout, "answered after {waited:?}, before the timeout");
        assert!(waited < timeout + Duration::from_secs(10), "{waited:?}");
        let (headers, body) = text.split_once("\r\n\r\n").expect("a complete response");
        assert!(
            headers
                .lines()
                .any(|line| line.to_ascii_lowercase().replace(' ', "") == "connection:close"),
            "{headers}"
        );
        let json: serde_json::Value = serde_json::from_str(body.trim()).expect("a JSON error body");
        let path = run_path(&run);
        let status = StatusCode::REQUEST_TIMEOUT;
        let response_headers = axum::http::HeaderMap::from_iter(headers.lines().skip(1).filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((
                axum::http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                axum::http::HeaderValue::from_str(value.trim()).ok()?,
            ))
        }));
        common::contract::contract().check(&Method::PUT, &path, status, &response_headers, &json);
        assert_eq!(json["object"], "bad_request_error", "{json}");
    }
    live.assert_unchanged(&run.key(), &before, "408").await;
    // A body that arrives in time is read as usual.
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
}

/// A body not declared JSON is refused before the run is read: a stale tag
/// or an unknown run does not change the answer. Its content (here a
/// repeated key) is judged after the precondition, as every body is.
async fn a_body_refused_as_a_message_comes_before_the_run_is_read(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let ghost = ghost(&run);
    let mut stale = with_content_type(Some("text/plain"));
    stale.retain(|(name, _)| *name != "if-match");
    stale.push(("if-match", STALE));
    for (target, headers) in [(&run, &stale), (&ghost, &with_content_type(Some("text/plain")))] {
        let reply = live
            .send(Method::PUT, &run_path(target), headers, new_dates(&run, 1))
            .await;
        assert_error(&reply, StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request_error");
    }
    let reply = put(&live, &run, &[STALE], &dates_with_end_twice(&run)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    live.assert_unchanged(&run.key(), &before, "refused before the run")
        .await;
}
