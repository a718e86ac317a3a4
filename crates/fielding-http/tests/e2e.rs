//! End to end over real TCP: a live server (`axum::serve` on 127.0.0.1:0)
//! and `reqwest`, every case against the in-memory store and against SQLite
//! on a temporary file (`memory::*` and `sqlite::*`). Every response is
//! checked against the contract, and every refusal is checked to have left
//! the run and its change records exactly as they were.

mod common {
    pub mod contract;
    pub mod live;
}

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use common::live::{
    assert_error, authed, header_map, invalid_names, list_path, new_dates, run_path, Backend, Live, Options, Reply,
    API_VERSION, OTHER_TOKEN, TRACEPARENT,
};
use fielding_core::{AccountId, FieldingRun, FieldingRunId, JobId, Scope, Status};
use fielding_http::rate_limit::RateLimitPolicy;
use serde_json::json;

/// The current ETag of every seeded run under test.
const CURRENT: &str = "\"7\"";
const STALE: &str = "\"6\"";

/// Declares each case once per backend: `memory::case` and `sqlite::case`.
macro_rules! e2e {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Memory).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await
                }
            )*
        }
    };
}

e2e!(
    current_etag_is_202_and_a_later_get_returns_the_new_etag,
    stale_etag_is_412_and_nothing_changes,
    if_match_lists_and_star_are_202,
    if_match_on_two_header_lines_is_202,
    weak_tag_is_412,
    unknown_run_is_404_with_star_or_a_stale_tag,
    stale_tag_without_credentials_is_401_with_a_bearer_challenge,
    another_accounts_principal_is_403,
    missing_or_unquoted_if_match_is_400_naming_it,
    stale_tag_with_malformed_json_is_412,
    end_before_start_is_400_naming_the_field,
    unknown_json_field_is_400_naming_it,
    body_over_the_limit_is_refused_in_the_error_format,
    oversized_body_answer_announces_connection_close,
    a_malformed_chunked_body_is_400_naming_the_body_not_413,
    completed_run_is_422_and_with_a_stale_tag_412,
    concurrent_puts_on_one_version_exactly_one_wins,
    concurrent_puts_with_if_match_any_all_succeed,
    replaying_a_successful_put_is_412,
    rate_limited_is_429_with_digits_only_retry_after_on_every_endpoint,
    a_mutating_responses_etag_is_what_a_later_get_returns,
    every_status_of_get_list,
    every_status_of_get_run,
    every_status_of_put,
    every_status_of_the_commands,
    store_failure_is_500_without_its_cause_on_every_endpoint,
    valid_traceparent_is_continued_with_a_new_span_id_and_the_same_flags,
    invalid_traceparent_starts_a_new_trace_and_drops_tracestate,
    future_traceparent_version_is_continued_as_version_00,
    tracestate_is_echoed_when_valid_and_dropped_when_too_long,
    trace_headers_are_on_401_404_and_405,
    unknown_routes_and_methods_answer_in_the_error_format,
    jobs_are_201_with_a_location_whose_job_reports_the_new_run,
    failed_jobs_report_the_reason_and_the_submitting_requests_trace_id,
    replaying_the_same_key_and_body_returns_the_same_location_and_creates_nothing_more,
    a_key_reused_for_a_different_request_is_400_naming_it,
    every_400_of_the_job_endpoints_names_the_field_and_records_nothing,
    job_endpoints_are_401_with_a_bearer_challenge_and_403_for_another_account,
    unknown_job_wrong_kind_or_another_target_group_is_404,
    concurrent_submissions_with_one_key_get_one_job_and_one_run,
    concurrent_submissions_with_different_keys_for_one_target_group_one_completes_one_fails,
    rate_limited_job_endpoints_are_429_with_digits_only_retry_after,
    store_failure_on_the_job_endpoints_is_500_without_its_cause_and_a_retry_finishes,
);

async fn put(live: &Live, run: &FieldingRun, if_match: &[&str], body: &str) -> Reply {
    let extra: Vec<(&str, &str)> = if_match.iter().map(|v| ("if-match", *v)).collect();
    live.send(Method::PUT, &run_path(run), &authed(&extra), body).await
}

async fn post(live: &Live, run: &FieldingRun, command: &str, if_match: &str, body: &str) -> Reply {
    live.send(
        Method::POST,
        &format!("{}/{command}", run_path(run)),
        &authed(&[("if-match", if_match)]),
        body,
    )
    .await
}

#[track_caller]
fn assert_etag(reply: &Reply, expected: &str) {
    assert_eq!(reply.header("etag"), Some(expected), "{}", reply.json);
}

async fn current_etag_is_202_and_a_later_get_returns_the_new_etag(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
    assert_etag(&reply, "\"8\"");
    assert_eq!(reply.json, json!({ "id": run.id.to_string() }));
    let got = live.get(&run).await;
    assert_etag(&got, "\"8\"");
    assert_eq!(got.json["version"], 8);
    assert_eq!(got.json["last_changed_by"], live.user.to_string());
    let expected_end = run.end_fielding_at.checked_add(chrono::TimeDelta::days(1)).unwrap();
    let (stored, changes) = live.snapshot(&run.key()).await;
    let stored = stored.expect("the run");
    assert_eq!(stored.version.get(), 8);
    assert_eq!(stored.end_fielding_at, expected_end);
    assert_eq!(changes.len(), 2, "one new change record");
    assert_eq!(changes[1].version.get(), 8);
}

async fn stale_etag_is_412_and_nothing_changes(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let reply = put(&live, &run, &[STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    let got = live.get(&run).await;
    assert_etag(&got, CURRENT);
    assert_eq!(got.json["version"], 7);
    live.assert_unchanged(&run.key(), &before, "412").await;
}

async fn if_match_lists_and_star_are_202(backend: Backend) {
    let live = Live::start(backend).await;
    for value in ["\"6\", \"7\"", "\"7\", ,", "*", " \"7\" "] {
        let run = live.seed(Status::Live, 7).await;
        let reply = put(&live, &run, &[value], &new_dates(&run, 1)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "If-Match {value:?}: {}", reply.json);
        assert_etag(&reply, "\"8\"");
        assert_etag(&live.get(&run).await, "\"8\"");
    }
}

async fn if_match_on_two_header_lines_is_202(backend: Backend) {
    let live = Live::start(backend).await;
    for lines in [["\"6\"", "\"7\""], ["\"7\"", "\"6\""]] {
        let run = live.seed(Status::Live, 7).await;
        let mut headers = header_map(&authed(&[]));
        for line in lines {
            headers.append("if-match", HeaderValue::from_static(line));
        }
        let request = live
            .client
            .put(format!("{}{}", live.base, run_path(&run)))
            .headers(headers)
            .body(new_dates(&run, 1))
            .build()
            .unwrap();
        assert_eq!(
            request.headers().get_all("if-match").iter().count(),
            2,
            "two separate If-Match lines are sent"
        );
        let reply = live.execute(request).await;
        common::contract::contract().check(&Method::PUT, &run_path(&run), reply.status, &reply.headers, &reply.json);
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{lines:?}: {}", reply.json);
        assert_etag(&reply, "\"8\"");
    }
    // Two lines, neither current: refused, nothing changes.
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let reply = put(&live, &run, &["\"5\"", STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    live.assert_unchanged(&run.key(), &before, "two stale lines").await;
}

async fn weak_tag_is_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for value in ["W/\"7\"", "W/\"6\", W/\"7\""] {
        let reply = put(&live, &run, &[value], &new_dates(&run, 1)).await;
        assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    }
    live.assert_unchanged(&run.key(), &before, "weak tag").await;
}

async fn unknown_run_is_404_with_star_or_a_stale_tag(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let ghost = FieldingRun {
        id: FieldingRunId::generate(),
        ..run.clone()
    };
    for if_match in ["*", STALE, CURRENT] {
        let reply = put(&live, &ghost, &[if_match], &new_dates(&run, 1)).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        for command in ["complete", "pause", "resume", "relaunch", "launch-now"] {
            let reply = post(&live, &ghost, command, if_match, "").await;
            assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        }
    }
    live.assert_unchanged(&run.key(), &before, "404").await;
}

async fn stale_tag_without_credentials_is_401_with_a_bearer_challenge(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer"),
        Some("Bearer token-101 extra"),
    ] {
        for if_match in [STALE, CURRENT] {
            let mut headers = vec![("cint-api-version", API_VERSION), ("if-match", if_match)];
            if let Some(auth) = auth {
                headers.push(("authorization", auth));
            }
            let reply = live
                .send(Method::PUT, &run_path(&run), &headers, new_dates(&run, 1))
                .await;
            assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{auth:?}");
        }
    }
    // The right token twice (two lines) is not one credential.
    let headers = [
        ("authorization", "Bearer token-101"),
        ("authorization", "Bearer token-101"),
        ("cint-api-version", API_VERSION),
        ("if-match", CURRENT),
    ];
    let reply = live
        .send(Method::PUT, &run_path(&run), &headers, new_dates(&run, 1))
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
    live.assert_unchanged(&run.key(), &before, "401").await;
}

async fn another_accounts_principal_is_403(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let auth = format!("Bearer {OTHER_TOKEN}");
    let headers = [
        ("authorization", auth.as_str()),
        ("cint-api-version", API_VERSION),
        ("if-match", CURRENT),
    ];
    let reply = live
        .send(Method::PUT, &run_path(&run), &headers, new_dates(&run, 1))
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    let reply = live
        .send(Method::POST, &format!("{}/complete", run_path(&run)), &headers, "")
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    live.assert_unchanged(&run.key(), &before, "403").await;
}

async fn missing_or_unquoted_if_match_is_400_naming_it(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for if_match in [&[][..], &["7"][..], &["\"7"][..], &["\"7\" \"8\""][..]] {
        let reply = put(&live, &run, if_match, &new_dates(&run, 1)).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["If-Match"], "{if_match:?}: {}", reply.json);
    }
    let reply = live
        .send(Method::POST, &format!("{}/pause", run_path(&run)), &authed(&[]), "")
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["If-Match"]);
    live.assert_unchanged(&run.key(), &before, "400 If-Match").await;
}

async fn stale_tag_with_malformed_json_is_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for body in ["{not json", "", "[]", r#"{"color":"red"}"#] {
        let reply = put(&live, &run, &[STALE], body).await;
        assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    }
    let reply = post(&live, &run, "pause", STALE, "{not json").await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    live.assert_unchanged(&run.key(), &before, "412 before the body").await;
}

async fn end_before_start_is_400_naming_the_field(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let body = format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"2000-01-01T00:00:00Z"}}"#,
        run.start_fielding_at
    );
    let reply = put(&live, &run, &[CURRENT], &body).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["end_fielding_at"], "{}", reply.json);
    assert!(reply.json["invalid_params"][0]["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    live.assert_unchanged(&run.key(), &before, "end before start").await;
}

async fn unknown_json_field_is_400_naming_it(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let end = run.end_fielding_at.checked_add(chrono::TimeDelta::days(1)).unwrap();
    let body = json!({
        "start_fielding_at": run.start_fielding_at.to_string(),
        "end_fielding_at": end.to_string(),
        "colour": "red",
    });
    let reply = put(&live, &run, &[CURRENT], &body.to_string()).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["colour"], "{}", reply.json);
    let reply = post(&live, &run, "pause", CURRENT, r#"{"reason":"lunch"}"#).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["reason"], "{}", reply.json);
    live.assert_unchanged(&run.key(), &before, "unknown field").await;
}

async fn body_over_the_limit_is_refused_in_the_error_format(backend: Backend) {
    let live = Live::start_with(
        backend,
        Options {
            body_limit: 1024,
            ..Options::default()
        },
    )
    .await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    // Valid JSON after the padding: only its size is wrong.
    let padded = format!("{}{}", " ".repeat(4096), new_dates(&run, 1));
    // A new connection for each: see `unpooled_client` (and
    // `oversized_body_answer_announces_connection_close`). The bodies stay
    // small enough to be sent whole before the server answers.
    let client = common::live::unpooled_client();
    for body in [padded, "x".repeat(6 * 1024)] {
        for (method, path) in [
            (Method::PUT, run_path(&run)),
            (Method::POST, format!("{}/pause", run_path(&run))),
        ] {
            let request = client
                .request(method.clone(), format!("{}{path}", live.base))
                .headers(header_map(&authed(&[("if-match", CURRENT)])))
                .body(body.clone())
                .build()
                .unwrap();
            let reply = live.execute_on(&client, request).await;
            common::contract::contract().check(&method, &path, reply.status, &reply.headers, &reply.json);
            assert!(
                matches!(reply.status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::BAD_REQUEST),
                "{method}: {}: {}",
                reply.status,
                reply.json
            );
            assert_error(&reply, reply.status, "bad_request_error");
        }
    }
    live.assert_unchanged(&run.key(), &before, "oversized body").await;
    // Under the limit, the same request is read.
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
}

/// A 413 leaves the rest of the body unread, so the server closes the
/// connection after answering; it must say so (`Connection: close`), or a
/// client reuses the connection and its next request fails (reqwest:
/// `IncompleteMessage` / broken pipe). A raw socket, because reqwest cannot
/// send a body shorter than its `Content-Length`.
async fn oversized_body_answer_announces_connection_close(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let address = live.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer token-101\r\n\
         cint-api-version: {API_VERSION}\r\nif-match: {CURRENT}\r\ncontent-length: 65536\r\n\r\n",
        run_path(&run)
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&[b' '; 2048]).await.unwrap();
    // Everything the server sends until it closes (generous time-out).
    let mut received = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), socket.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received).to_string();
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "the oversized body is refused with 413: {text:?}"
    );
    assert!(read.is_ok(), "the server closes the connection after the 413");
    let (headers, _) = text.split_once("\r\n\r\n").expect("a complete response head");
    let closes = headers
        .lines()
        .any(|line| line.to_ascii_lowercase().replace(' ', "") == "connection:close");
    live.assert_unchanged(&run.key(), &before, "413").await;
    assert!(
        closes,
        "the server closed the connection without announcing it (`Connection: close`): {headers}"
    );
}

async fn a_malformed_chunked_body_is_400_naming_the_body_not_413(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let address = live.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    // `zz` is not a hexadecimal chunk size: the body cannot be read at all.
    let request = format!(
        "PUT {} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer token-101\r\n\
         cint-api-version: {API_VERSION}\r\nif-match: {CURRENT}\r\ntransfer-encoding: chunked\r\n\r\n\
         zz\r\nhello\r\n0\r\n\r\n",
        run_path(&run)
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), socket.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received).to_string();
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    let (_, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let json: serde_json::Value = serde_json::from_str(body.trim()).expect("a JSON error body");
    assert_eq!(json["object"], "bad_request_error");
    assert_eq!(json["invalid_params"][0]["name"], "body", "{json}");
    live.assert_unchanged(&run.key(), &before, "unreadable body").await;
}

async fn completed_run_is_422_and_with_a_stale_tag_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Completed, 7).await;
    let before = live.snapshot(&run.key()).await;
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
    let reply = put(&live, &run, &[STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    let got = live.get(&run).await;
    assert_eq!(got.json["status"], "completed");
    assert_etag(&got, CURRENT);
    live.assert_unchanged(&run.key(), &before, "422").await;
}

async fn concurrent_puts_on_one_version_exactly_one_wins(backend: Backend) {
    let live = Arc::new(Live::start(backend).await);
    for round in 0..12 {
        let run = live.seed(Status::Live, 7).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [1, 2]
            .into_iter()
            .map(|days| {
                let (live, run, barrier) = (live.clone(), run.clone(), barrier.clone());
                tokio::spawn(async move {
                    let body = new_dates(&run, days);
                    let request = live
                        .client
                        .put(format!("{}{}", live.base, run_path(&run)))
                        .headers(header_map(&authed(&[("if-match", CURRENT)])))
                        .body(body)
                        .build()
                        .unwrap();
                    barrier.wait().await;
                    let reply = live.execute(request).await;
                    common::contract::contract().check(
                        &Method::PUT,
                        &run_path(&run),
                        reply.status,
                        &reply.headers,
                        &reply.json,
                    );
                    (days, reply)
                })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.expect("the request task"));
        }
        let mut statuses: Vec<StatusCode> = replies.iter().map(|(_, r)| r.status).collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::ACCEPTED, StatusCode::PRECONDITION_FAILED],
            "round {round}"
        );
        let (winner_days, winner) = replies.iter().find(|(_, r)| r.status == StatusCode::ACCEPTED).unwrap();
        assert_etag(winner, "\"8\"");
        let (stored, changes) = live.snapshot(&run.key()).await;
        let stored = stored.unwrap();
        assert_eq!(stored.version.get(), 8, "round {round}");
        assert_eq!(
            stored.end_fielding_at,
            run.end_fielding_at
                .checked_add(chrono::TimeDelta::days(*winner_days))
                .unwrap(),
            "the winner's dates are stored"
        );
        assert_eq!(changes.len(), 2, "round {round}: exactly one new change record");
    }
}

/// `If-Match: *` accepts any current version, so concurrent PUTs with it
/// all succeed, one version each, whatever order the store serializes them
/// in (the SQLite store reads and writes in two steps, so these do race).
async fn concurrent_puts_with_if_match_any_all_succeed(backend: Backend) {
    const WRITERS: i64 = 8;
    let live = Arc::new(Live::start(backend).await);
    let run = live.seed(Status::Live, 7).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let tasks: Vec<_> = (1..=WRITERS)
        .map(|days| {
            let (live, run, barrier) = (live.clone(), run.clone(), barrier.clone());
            tokio::spawn(async move {
                let request = live
                    .client
                    .put(format!("{}{}", live.base, run_path(&run)))
                    .headers(header_map(&authed(&[("if-match", "*")])))
                    .body(new_dates(&run, days))
                    .build()
                    .unwrap();
                barrier.wait().await;
                live.execute(request).await
            })
        })
        .collect();
    for task in tasks {
        let reply = task.await.expect("the request task");
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.json);
    }
    let (stored, changes) = live.snapshot(&run.key()).await;
    assert_eq!(stored.unwrap().version.get(), 7 + WRITERS as u64);
    assert_eq!(changes.len() as i64, 1 + WRITERS, "one change record per PUT");
}

async fn replaying_a_successful_put_is_412(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let first = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let after_first = live.snapshot(&run.key()).await;
    for _ in 0..2 {
        let replay = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
        assert_error(&replay, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    }
    live.assert_unchanged(&run.key(), &after_first, "replay").await;
}

/// Sends until the principal's bucket is empty: the first 429 (at most 100
/// tries; at one request a second that is never more than a couple).
async fn until_429(live: &Live, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    for _ in 0..100 {
        let reply = live.send(method.clone(), path, headers, body).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            return reply;
        }
        assert!(!reply.status.is_server_error(), "{}", reply.json);
    }
    panic!("{method} {path}: no 429 after 100 requests at a rate of 1/s");
}

async fn rate_limited_is_429_with_digits_only_retry_after_on_every_endpoint(backend: Backend) {
    let live = Live::start_with(
        backend,
        Options {
            rate_limit: Some(RateLimitPolicy::per_second(1, 2).unwrap()),
            ..Options::default()
        },
    )
    .await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let url = run_path(&run);
    // Writes carry a stale tag: even one that gets through changes nothing.
    let stale = authed(&[
        ("if-match", STALE),
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let mut cases = vec![
        (Method::GET, list_path(&run), String::new()),
        (Method::GET, url.clone(), String::new()),
        (Method::PUT, url.clone(), new_dates(&run, 1)),
    ];
    for command in ["complete", "pause", "resume", "relaunch", "launch-now"] {
        cases.push((Method::POST, format!("{url}/{command}"), String::new()));
    }
    for (method, path, body) in cases {
        let refused = until_429(&live, method.clone(), &path, &stale, &body).await;
        let retry_after = refused.header("retry-after").expect("Retry-After on 429");
        assert!(
            !retry_after.is_empty() && retry_after.bytes().all(|b| b.is_ascii_digit()),
            "{method} {path}: Retry-After {retry_after:?}"
        );
        assert!(retry_after.parse::<u64>().unwrap() >= 1);
        assert_eq!(refused.json["object"], "too_many_requests_problem_details");
        assert!(refused.json["details"].is_string());
        let [version, trace, span, flags] = refused.traceparent();
        assert_eq!(
            (version.as_str(), trace.as_str(), flags.as_str()),
            ("00", &TRACEPARENT[3..35], "01")
        );
        assert_ne!(span, &TRACEPARENT[36..52]);
        assert_eq!(refused.header("tracestate"), Some("congo=t61rcWkgMzE"));
    }
    // Without credentials it is a 401, never a 429.
    let anonymous = live
        .send(Method::GET, &url, &[("cint-api-version", API_VERSION)], "")
        .await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "authorization_error");
    live.assert_unchanged(&run.key(), &before, "429").await;
}

async fn a_mutating_responses_etag_is_what_a_later_get_returns(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let mut etag = CURRENT.to_owned();
    let steps: [(&str, StatusCode, u64); 6] = [
        ("", StatusCode::ACCEPTED, 8),
        ("pause", StatusCode::NO_CONTENT, 9),
        ("resume", StatusCode::NO_CONTENT, 10),
        ("complete", StatusCode::NO_CONTENT, 11),
        ("relaunch", StatusCode::NO_CONTENT, 12),
        ("", StatusCode::ACCEPTED, 13),
    ];
    for (step, (command, status, version)) in steps.into_iter().enumerate() {
        let reply = if command.is_empty() {
            put(&live, &run, &[&etag], &new_dates(&run, step as i64 + 1)).await
        } else {
            post(&live, &run, command, &etag, "").await
        };
        assert_eq!(reply.status, status, "{command:?}: {}", reply.json);
        let returned = reply
            .header("etag")
            .expect("a mutating response carries ETag")
            .to_owned();
        assert_eq!(returned, format!("\"{version}\""), "{command:?}");
        let got = live.get(&run).await;
        assert_eq!(
            got.header("etag"),
            Some(returned.as_str()),
            "{command:?}: the GET after it"
        );
        assert_eq!(got.json["version"], version);
        etag = returned;
    }
    // An update to the dates already stored changes nothing: its ETag is
    // still the current one.
    let same = put(&live, &run, &[&etag], &new_dates(&run, 6)).await;
    assert_eq!(same.status, StatusCode::ACCEPTED, "{}", same.json);
    assert_eq!(same.header("etag"), Some(etag.as_str()));
    assert_eq!(live.get(&run).await.header("etag"), Some(etag.as_str()));

    // launch-now on a scheduled run: 200 with the dates the GET then shows.
    let scheduled = live.seed(Status::Scheduled, 7).await;
    let reply = post(&live, &scheduled, "launch-now", CURRENT, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_etag(&reply, "\"8\"");
    let got = live.get(&scheduled).await;
    assert_etag(&got, "\"8\"");
    assert_eq!(got.json["status"], "live");
    assert_eq!(got.json["start_fielding_at"], reply.json["start_fielding_at"]);
    assert_eq!(got.json["end_fielding_at"], reply.json["end_fielding_at"]);
    assert_eq!(live.store.changes(&scheduled.key()).await.unwrap().len(), 2);
}

async fn every_status_of_get_list(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let path = list_path(&run);
    // 200 with the one run.
    let reply = live.send(Method::GET, &path, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["has_more"], false);
    assert_eq!(reply.json["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(reply.json["data"][0]["id"], run.id.to_string());
    assert_eq!(reply.json["data"][0]["version"], 7);
    // 200 with none: a target group without a run is an empty list, not a 404.
    let empty = format!(
        "/demand/accounts/101/projects/{}/target-groups/{}/fielding-runs",
        run.project_id,
        fielding_testkit::fixtures::target_group_id()
    );
    let reply = live.send(Method::GET, &empty, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, json!({ "data": [], "has_more": false }));
    // 400: bad path ids and API version, each named.
    let reply = live
        .send(
            Method::GET,
            "/demand/accounts/0/projects/lower/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs",
            &[
                ("authorization", "Bearer token-101"),
                ("cint-api-version", "2025-13-01"),
            ],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["account_id", "project_id", "Cint-API-Version"]);
    // 401.
    let reply = live
        .send(Method::GET, &path, &[("cint-api-version", API_VERSION)], "")
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    // 403.
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = live
        .send(
            Method::GET,
            &path,
            &[("authorization", &other), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    // 404: only for a path under the list that no route serves.
    let reply = live
        .send(Method::GET, &format!("{path}/{}/nope", run.id), &authed(&[]), "")
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    // 429 and 500: see their own cases.
}

async fn every_status_of_get_run(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Paused, 7).await;
    let path = run_path(&run);
    // 200 with the ETag and the contract's item.
    let reply = live.get(&run).await;
    assert_etag(&reply, CURRENT);
    assert_eq!(reply.json["id"], run.id.to_string());
    assert_eq!(reply.json["status"], "paused");
    assert_eq!(reply.json["version"], 7);
    assert_eq!(reply.json["last_changed_by"], run.last_changed_by.to_string());
    // 400 for each malformed id, and for the API version.
    for (bad, name) in [
        (path.replace(&run.id.to_string(), "x"), "fielding_run_id"),
        (
            path.replace(&run.project_id.to_string(), &run.project_id.to_string().to_lowercase()),
            "project_id",
        ),
        (path.replace("/accounts/101/", "/accounts/-1/"), "account_id"),
        (path.replace("/accounts/101/", "/accounts/99999999999/"), "account_id"),
    ] {
        let reply = live.send(Method::GET, &bad, &authed(&[]), "").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert!(
            invalid_names(&reply).contains(&name.to_owned()),
            "{bad}: {}",
            reply.json
        );
    }
    for version in [None, Some("2025-12-18, 2025-12-18"), Some("18-12-2025"), Some("")] {
        let mut headers = vec![("authorization", "Bearer token-101")];
        if let Some(version) = version {
            headers.push(("cint-api-version", version));
        }
        let reply = live.send(Method::GET, &path, &headers, "").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["Cint-API-Version"], "{version:?}");
    }
    // 401, 403.
    let reply = live
        .send(
            Method::GET,
            &path,
            &[("authorization", "Bearer x"), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = live
        .send(
            Method::GET,
            &path,
            &[("authorization", &other), ("cint-api-version", API_VERSION)],
            "",
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    // 404: an unknown id, and the run's id under another target group.
    let ghost = FieldingRun {
        id: FieldingRunId::generate(),
        ..run.clone()
    };
    let elsewhere = FieldingRun {
        target_group_id: fielding_testkit::fixtures::target_group_id(),
        ..run.clone()
    };
    for missing in [ghost, elsewhere] {
        let reply = live.send(Method::GET, &run_path(&missing), &authed(&[]), "").await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    }
}

async fn every_status_of_put(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let path = run_path(&run);
    // 400: path, API version, If-Match, body, each named.
    let bad_path = path.replace(&run.id.to_string(), &run.id.to_string()[..25]);
    let reply = live
        .send(
            Method::PUT,
            &bad_path,
            &authed(&[("if-match", CURRENT)]),
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["fielding_run_id"]);
    let reply = live
        .send(
            Method::PUT,
            &path,
            &[("authorization", "Bearer token-101"), ("if-match", CURRENT)],
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["Cint-API-Version"]);
    for (body, names) in [
        (
            r#"{"start_fielding_at":5}"#,
            vec!["end_fielding_at", "start_fielding_at"],
        ),
        (
            r#"{"start_fielding_at":null,"end_fielding_at":[]}"#,
            vec!["end_fielding_at", "start_fielding_at"],
        ),
        (
            r#"{"start_fielding_at":"yesterday","end_fielding_at":"2031-01-01T00:00:00Z"}"#,
            vec!["start_fielding_at"],
        ),
        ("[1,2]", vec!["body"]),
        ("{not json", vec!["body"]),
        ("", vec!["body"]),
    ] {
        let reply = put(&live, &run, &[CURRENT], body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        let mut got = invalid_names(&reply);
        got.sort();
        assert_eq!(got, names, "{body}: {}", reply.json);
    }
    // 401, 403, 404, 412 have their own cases; one of each here too.
    let reply = live
        .send(
            Method::PUT,
            &path,
            &[("cint-api-version", API_VERSION), ("if-match", CURRENT)],
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = live
        .send(
            Method::PUT,
            &path,
            &[
                ("authorization", &other),
                ("cint-api-version", API_VERSION),
                ("if-match", CURRENT),
            ],
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    let ghost = FieldingRun {
        id: FieldingRunId::generate(),
        ..run.clone()
    };
    let reply = put(&live, &ghost, &[CURRENT], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    let reply = put(&live, &run, &[STALE], &new_dates(&run, 1)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    // 422: a live run's start cannot move.
    let moved = json!({
        "start_fielding_at": run.start_fielding_at.checked_add(chrono::TimeDelta::hours(1)).unwrap().to_string(),
        "end_fielding_at": run.end_fielding_at.to_string(),
    });
    let reply = put(&live, &run, &[CURRENT], &moved.to_string()).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
    live.assert_unchanged(&run.key(), &before, "PUT refusals").await;
    // 202.
    let reply = put(&live, &run, &[CURRENT], &new_dates(&run, 1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
}

async fn every_status_of_the_commands(backend: Backend) {
    let live = Live::start(backend).await;
    // (command, status it succeeds from, answer, status it is 422 from)
    let table = [
        ("complete", Status::Live, StatusCode::NO_CONTENT, Status::Completed),
        ("pause", Status::Live, StatusCode::NO_CONTENT, Status::Paused),
        ("resume", Status::Paused, StatusCode::NO_CONTENT, Status::Live),
        ("relaunch", Status::Completed, StatusCode::NO_CONTENT, Status::Scheduled),
        ("launch-now", Status::Scheduled, StatusCode::OK, Status::Live),
    ];
    let other = format!("Bearer {OTHER_TOKEN}");
    for (command, from, success, invalid_from) in table {
        let run = live.seed(from, 7).await;
        let path = format!("{}/{command}", run_path(&run));
        let before = live.snapshot(&run.key()).await;
        // 400: If-Match missing or malformed, a body, a bad id, a bad version.
        for (headers, body, name) in [
            (authed(&[]), "", "If-Match"),
            (authed(&[("if-match", "7")]), "", "If-Match"),
            (authed(&[("if-match", CURRENT)]), r#"{"x":1}"#, "x"),
            (authed(&[("if-match", CURRENT)]), "[]", "body"),
            (
                vec![("authorization", "Bearer token-101"), ("if-match", CURRENT)],
                "",
                "Cint-API-Version",
            ),
        ] {
            let reply = live.send(Method::POST, &path, &headers, body).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            assert_eq!(invalid_names(&reply), [name], "{command} {headers:?} {body:?}");
        }
        let bad_id = path.replace(&run.id.to_string(), &run.id.to_string().to_lowercase());
        let reply = live
            .send(Method::POST, &bad_id, &authed(&[("if-match", CURRENT)]), "")
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["fielding_run_id"], "{command}");
        // 401, 403.
        let reply = live
            .send(
                Method::POST,
                &path,
                &[("cint-api-version", API_VERSION), ("if-match", STALE)],
                "",
            )
            .await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let reply = live
            .send(
                Method::POST,
                &path,
                &[
                    ("authorization", &other),
                    ("cint-api-version", API_VERSION),
                    ("if-match", CURRENT),
                ],
                "",
            )
            .await;
        assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
        // 404.
        let ghost = FieldingRun {
            id: FieldingRunId::generate(),
            ..run.clone()
        };
        let reply = post(&live, &ghost, command, CURRENT, "").await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        // 412, also with a bad body.
        for body in ["", "{oops"] {
            let reply = post(&live, &run, command, STALE, body).await;
            assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
        }
        live.assert_unchanged(&run.key(), &before, command).await;
        // 422 from a status the command does not apply to.
        let wrong = live.seed(invalid_from, 7).await;
        let wrong_before = live.snapshot(&wrong.key()).await;
        let reply = post(&live, &wrong, command, CURRENT, "").await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
        live.assert_unchanged(&wrong.key(), &wrong_before, command).await;
        // Success, with `{}` as the body: the new ETag, one change record.
        let reply = post(&live, &run, command, CURRENT, "{}").await;
        assert_eq!(reply.status, success, "{command}: {}", reply.json);
        assert_etag(&reply, "\"8\"");
        if success == StatusCode::NO_CONTENT {
            assert!(reply.bytes.is_empty(), "{command}: 204 has no body");
        }
        let (stored, changes) = live.snapshot(&run.key()).await;
        assert_eq!(stored.unwrap().version.get(), 8, "{command}");
        assert_eq!(changes.len(), 2, "{command}");
    }
}

async fn store_failure_is_500_without_its_cause_on_every_endpoint(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    let url = run_path(&run);
    live.break_store().await;
    let mut cases = vec![
        (Method::GET, list_path(&run), String::new()),
        (Method::GET, url.clone(), String::new()),
        (Method::PUT, url.clone(), new_dates(&run, 1)),
    ];
    for command in ["complete", "pause", "resume", "relaunch", "launch-now"] {
        cases.push((Method::POST, format!("{url}/{command}"), String::new()));
    }
    for (method, path, body) in cases {
        let reply = live
            .send(method.clone(), &path, &authed(&[("if-match", CURRENT)]), body)
            .await;
        assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "unexpected_internal_error");
        let detail = reply.json["detail"].as_str().unwrap().to_lowercase();
        for leak in ["sqlite", "fielding_runs", "injected", "no such table", "backend"] {
            assert!(
                !detail.contains(leak),
                "{method} {path}: the detail leaks {leak:?}: {detail}"
            );
        }
    }
    live.repair_store().await;
    live.assert_unchanged(&run.key(), &before, "500").await;
    // Repaired, the same server serves again.
    assert_etag(&live.get(&run).await, CURRENT);
}

/// A GET of the run with these extra headers.
async fn get_with(live: &Live, run: &FieldingRun, extra: &[(&str, &str)]) -> Reply {
    let reply = live.send(Method::GET, &run_path(run), &authed(extra), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    reply
}

async fn valid_traceparent_is_continued_with_a_new_span_id_and_the_same_flags(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    for flags in ["01", "00", "03"] {
        let incoming = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        let reply = get_with(&live, &run, &[("traceparent", &incoming)]).await;
        let [version, trace, span, out_flags] = reply.traceparent();
        assert_eq!(version, "00");
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span, "00f067aa0ba902b7", "a span id of the server's own");
        assert!(span.len() == 16 && span.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(span, "0000000000000000");
        assert_eq!(out_flags, flags);
        assert!(!reply.headers.contains_key("tracestate"), "none came in");
    }
    // Without one, a fresh trace.
    let a = get_with(&live, &run, &[]).await.traceparent();
    let b = get_with(&live, &run, &[]).await.traceparent();
    assert_eq!(a[0], "00");
    assert_ne!(a[1], b[1], "each request starts its own trace");
    assert_ne!(a[1], "00000000000000000000000000000000");
}

async fn invalid_traceparent_starts_a_new_trace_and_drops_tracestate(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let invalid = [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01".to_owned(),
        format!("00-{trace}-0000000000000000-01"),
        format!("ff-{trace}-b7ad6b7169203331-01"),
        format!("00-{}-b7ad6b7169203331-01", trace.to_uppercase()),
        format!("00-{trace}-B7AD6B7169203331-01"),
        format!("00-{}-b7ad6b7169203331-01", &trace[..31]),
        format!("00-{trace}-b7ad6b7169203331-01-extra"),
        format!("00-{trace}-b7ad6b7169203331-01x"),
        format!("00-{trace}-b7ad6b7169203331"),
        format!("cc-{trace}-b7ad6b7169203331-01x"),
        String::new(),
    ];
    for value in &invalid {
        let reply = get_with(
            &live,
            &run,
            &[("traceparent", value), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let [version, out_trace, _, flags] = reply.traceparent();
        assert_eq!(version, "00", "{value:?}");
        assert_ne!(out_trace.to_lowercase(), trace, "{value:?}: a new trace");
        assert_ne!(out_trace, "00000000000000000000000000000000");
        assert!(flags.len() == 2, "{value:?}");
        assert!(
            !reply.headers.contains_key("tracestate"),
            "{value:?}: tracestate goes with its trace"
        );
    }
    // Two traceparent lines: which one? Neither; a new trace.
    let reply = get_with(
        &live,
        &run,
        &[
            ("traceparent", TRACEPARENT),
            ("traceparent", TRACEPARENT),
            ("tracestate", "a=b"),
        ],
    )
    .await;
    assert_ne!(reply.traceparent()[1], &TRACEPARENT[3..35]);
    assert!(!reply.headers.contains_key("tracestate"));
}

async fn future_traceparent_version_is_continued_as_version_00(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    for incoming in [
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let reply = get_with(
            &live,
            &run,
            &[("traceparent", incoming), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let [version, trace, span, flags] = reply.traceparent();
        assert_eq!(version, "00", "{incoming}");
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "{incoming}");
        assert_ne!(span, "00f067aa0ba902b7");
        assert_eq!(flags, "01");
        assert_eq!(reply.header("tracestate"), Some("congo=t61rcWkgMzE"));
    }
}

async fn tracestate_is_echoed_when_valid_and_dropped_when_too_long(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let members = |n: usize| (0..n).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>().join(",");
    for valid in [
        "congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        &members(32),
    ] {
        let reply = get_with(&live, &run, &[("traceparent", TRACEPARENT), ("tracestate", valid)]).await;
        assert_eq!(reply.header("tracestate"), Some(valid));
        assert_eq!(reply.traceparent()[1], &TRACEPARENT[3..35]);
    }
    // Two lines form one list.
    let reply = get_with(
        &live,
        &run,
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    let echoed = reply.header("tracestate").expect("the combined list");
    assert!(
        echoed.contains("rojo=00f067aa0ba902b7") && echoed.contains("congo=t61rcWkgMzE"),
        "{echoed}"
    );
    // Invalid: dropped, the trace kept.
    for invalid in [
        members(33),
        "a=b,a=c".to_owned(),
        "UPPER=x".to_owned(),
        "novalue".to_owned(),
    ] {
        let reply = get_with(&live, &run, &[("traceparent", TRACEPARENT), ("tracestate", &invalid)]).await;
        assert!(!reply.headers.contains_key("tracestate"), "{invalid}: dropped");
        let [version, trace, span, flags] = reply.traceparent();
        assert_eq!(
            (version.as_str(), trace.as_str(), flags.as_str()),
            ("00", &TRACEPARENT[3..35], "01")
        );
        assert_ne!(span, &TRACEPARENT[36..52]);
    }
}

async fn trace_headers_are_on_401_404_and_405(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let trace = [("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE")];
    let mut anonymous: Vec<(&str, &str)> = vec![("cint-api-version", API_VERSION)];
    anonymous.extend_from_slice(&trace);
    let replies = [
        live.send(Method::GET, &run_path(&run), &anonymous, "").await,
        live.send(Method::GET, "/nope", &authed(&trace), "").await,
        live.send(Method::GET, "/nope", &anonymous, "").await,
        live.send(Method::DELETE, &run_path(&run), &authed(&trace), "").await,
        live.send(Method::GET, &format!("{}/pause", run_path(&run)), &authed(&trace), "")
            .await,
    ];
    let expected = [
        StatusCode::UNAUTHORIZED,
        StatusCode::NOT_FOUND,
        // Authentication runs before routing.
        StatusCode::UNAUTHORIZED,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::METHOD_NOT_ALLOWED,
    ];
    for (reply, status) in replies.iter().zip(expected) {
        assert_eq!(reply.status, status, "{}", reply.json);
        let [version, out_trace, span, flags] = reply.traceparent();
        assert_eq!(
            (version.as_str(), out_trace.as_str(), flags.as_str()),
            ("00", &TRACEPARENT[3..35], "01"),
            "{status}"
        );
        assert_ne!(span, &TRACEPARENT[36..52]);
        assert_eq!(reply.header("tracestate"), Some("congo=t61rcWkgMzE"), "{status}");
    }
}

async fn unknown_routes_and_methods_answer_in_the_error_format(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for path in [
        "/nope".to_owned(),
        "/demand".to_owned(),
        format!("{}/explode", run_path(&run)),
        format!("{}/pause/now", run_path(&run)),
        format!("{}/", list_path(&run)),
    ] {
        let reply = live
            .send(Method::POST, &path, &authed(&[("if-match", CURRENT)]), "")
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    }
    for method in [Method::DELETE, Method::PATCH, Method::POST] {
        let reply = live
            .send(method.clone(), &run_path(&run), &authed(&[("if-match", CURRENT)]), "{}")
            .await;
        assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "bad_request_error");
    }
    let reply = live
        .send(
            Method::PUT,
            &list_path(&run),
            &authed(&[("if-match", CURRENT)]),
            new_dates(&run, 1),
        )
        .await;
    assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "bad_request_error");
    live.assert_unchanged(&run.key(), &before, "unknown routes").await;
    // HEAD of a run: the GET's status and headers, no body.
    let head = live
        .send_unchecked(Method::HEAD, &run_path(&run), header_map(&authed(&[])), Vec::new())
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.bytes.is_empty());
    let _: &HeaderMap = &head.headers;
    assert_eq!(head.header("etag"), Some(CURRENT));
}

// ---------------------------------------------------------------------------
// Creation jobs: `POST .../fielding-run-jobs/{launch,schedule}-from-draft`
// and `GET .../fielding-run-jobs/{kind}/{job_id}`.
// ---------------------------------------------------------------------------

const LAUNCH: &str = "launch-from-draft";
const SCHEDULE: &str = "schedule-from-draft";

/// A fresh target group of account 101 without a run (a draft).
fn draft() -> Scope {
    Scope::new(
        AccountId::new(common::live::ACCOUNT).unwrap(),
        fielding_testkit::fixtures::project_id(),
        fielding_testkit::fixtures::target_group_id(),
    )
}

/// The target group of a seeded run.
fn scope_of(run: &FieldingRun) -> Scope {
    Scope::new(run.account_id, run.project_id, run.target_group_id)
}

fn jobs_path(scope: &Scope, kind: &str) -> String {
    format!(
        "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-run-jobs/{kind}",
        scope.account_id, scope.project_id, scope.target_group_id
    )
}

/// `days` from now, as the contract writes instants.
fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn launch_body(end_days: i64) -> String {
    json!({ "end_fielding_at": in_days(end_days) }).to_string()
}

fn schedule_body(start_days: i64, end_days: i64) -> String {
    json!({ "start_fielding_at": in_days(start_days), "end_fielding_at": in_days(end_days) }).to_string()
}

/// A valid body for `kind`.
fn job_body(kind: &str) -> String {
    if kind == LAUNCH {
        launch_body(30)
    } else {
        schedule_body(10, 40)
    }
}

/// POST of a job for `scope` with these headers (nothing added).
async fn submit_with(live: &Live, scope: &Scope, kind: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    live.send(Method::POST, &jobs_path(scope, kind), headers, body).await
}

/// POST of a job for `scope` as the principal of account 101 under `key`.
async fn submit(live: &Live, scope: &Scope, kind: &str, key: &str, body: &str) -> Reply {
    submit_with(live, scope, kind, &authed(&[("idempotency-key", key)]), body).await
}

/// The `Location` of a 201: the job's address under the submitting path.
#[track_caller]
fn job_location(reply: &Reply, scope: &Scope, kind: &str) -> String {
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    reply.traceparent();
    let location = reply.header("location").expect("a 201 carries Location").to_owned();
    let prefix = format!("{}/", jobs_path(scope, kind));
    let job_id = location
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("Location {location:?} is not under {prefix:?}"));
    assert!(JobId::parse(job_id).is_ok(), "Location {location:?}: not a job id");
    location
}

/// GET of a job, checked to be 200 with the fields every job has.
async fn get_job(live: &Live, location: &str) -> Reply {
    let reply = live.send(Method::GET, location, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK, "GET {location}: {}", reply.json);
    reply.traceparent();
    assert_eq!(
        reply.json["job_id"],
        location.rsplit('/').next().unwrap(),
        "{}",
        reply.json
    );
    assert_eq!(reply.json["created_by"], live.user.to_string(), "{}", reply.json);
    let created_at = reply.json["created_at"].as_str().expect("created_at");
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok(), "{created_at}");
    reply
}

/// A `Completed` job's body: the run it created and nothing about failure.
#[track_caller]
fn assert_completed(job: &Reply) -> FieldingRunId {
    assert_eq!(job.json["status"], "Completed", "{}", job.json);
    assert!(job.json.get("failure_reason").is_none(), "{}", job.json);
    assert!(job.json.get("job_trace_id").is_none(), "{}", job.json);
    let id = job.json["created_fielding_run_id"]
        .as_str()
        .expect("created_fielding_run_id");
    FieldingRunId::parse(id).expect("a run id")
}

/// A `Failed` job's body with `code`; returns its `job_trace_id`.
#[track_caller]
fn assert_failed(job: &Reply, code: &str) -> String {
    assert_eq!(job.json["status"], "Failed", "{}", job.json);
    assert_eq!(job.json["failure_reason"]["code"], code, "{}", job.json);
    assert!(
        job.json["failure_reason"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{}",
        job.json
    );
    assert!(job.json.get("created_fielding_run_id").is_none(), "{}", job.json);
    let trace = job.json["job_trace_id"]
        .as_str()
        .expect("a failed job has job_trace_id");
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{trace}"
    );
    trace.to_owned()
}

/// The one run of `scope` and its change records.
async fn the_run(live: &Live, scope: &Scope) -> (FieldingRun, usize) {
    let run = live
        .store
        .find_by_target_group(scope)
        .await
        .expect("read the target group")
        .expect("the target group has a run");
    let changes = live.store.changes(&run.key()).await.expect("read the change records");
    (run, changes.len())
}

async fn assert_no_run(live: &Live, scope: &Scope, what: &str) {
    let found = live
        .store
        .find_by_target_group(scope)
        .await
        .expect("read the target group");
    assert!(found.is_none(), "{what}: a run was created: {found:?}");
}

async fn jobs_are_201_with_a_location_whose_job_reports_the_new_run(backend: Backend) {
    let live = Live::start(backend).await;
    for (kind, status) in [(SCHEDULE, "scheduled"), (LAUNCH, "live")] {
        let scope = draft();
        let before = chrono::Utc::now();
        let created = submit(&live, &scope, kind, &format!("first-{kind}"), &job_body(kind)).await;
        let after = chrono::Utc::now();
        assert!(created.bytes.is_empty(), "{kind}: 201 has no body");
        let location = job_location(&created, &scope, kind);
        // The job ran before the 201: the first read already has its end.
        let job = get_job(&live, &location).await;
        let run_id = assert_completed(&job);
        let created_at = chrono::DateTime::parse_from_rfc3339(job.json["created_at"].as_str().unwrap()).unwrap();
        let slack = chrono::TimeDelta::seconds(1);
        assert!(
            before - slack <= created_at && created_at <= after + slack,
            "{kind}: created_at {created_at} not between {before} and {after}"
        );
        let (run, changes) = the_run(&live, &scope).await;
        assert_eq!(run.id, run_id, "{kind}");
        assert_eq!(changes, 1, "{kind}: one change record");
        assert_eq!(run.last_changed_by, live.user, "{kind}");
        // The new run, read through the API: version 1.
        let got = live.get(&run).await;
        assert_etag(&got, "\"1\"");
        assert_eq!(got.json["status"], status, "{kind}");
        assert_eq!(got.json["id"], run_id.to_string());
    }
}

async fn failed_jobs_report_the_reason_and_the_submitting_requests_trace_id(backend: Backend) {
    let live = Live::start(backend).await;
    // A target group with a run is not a draft, for either kind.
    let seeded = live.seed(Status::Live, 7).await;
    let scope = scope_of(&seeded);
    let before = live.snapshot(&seeded.key()).await;
    for kind in [LAUNCH, SCHEDULE] {
        let created = submit_with(
            &live,
            &scope,
            kind,
            &authed(&[
                ("idempotency-key", &format!("not-draft-{kind}")),
                ("traceparent", TRACEPARENT),
            ]),
            &job_body(kind),
        )
        .await;
        let location = job_location(&created, &scope, kind);
        assert_eq!(created.traceparent()[1], &TRACEPARENT[3..35], "the trace is continued");
        let job = get_job(&live, &location).await;
        let trace = assert_failed(&job, "TargetGroupInvalidState");
        assert_eq!(trace, &TRACEPARENT[3..35], "{kind}: the submitting request's trace id");
        // Without a traceparent: the trace the server started for the request.
        let created = submit(
            &live,
            &scope,
            kind,
            &format!("not-draft-untraced-{kind}"),
            &job_body(kind),
        )
        .await;
        let location = job_location(&created, &scope, kind);
        let started = created.traceparent()[1].clone();
        assert_ne!(started, &TRACEPARENT[3..35]);
        let job = get_job(&live, &location).await;
        assert_eq!(assert_failed(&job, "TargetGroupInvalidState"), started, "{kind}");
        // The job read has a trace of its own; the job keeps the submitter's.
        assert_ne!(job.traceparent()[1], started);
    }
    live.assert_unchanged(&seeded.key(), &before, "failed jobs").await;

    // Dates the lifecycle refuses: InvalidFieldingDates, naming the field.
    let cases = [
        (LAUNCH, launch_body(-1), "end_fielding_at"),
        (SCHEDULE, schedule_body(-2, 10), "start_fielding_at"),
        (SCHEDULE, schedule_body(20, 10), "end_fielding_at"),
    ];
    for (i, (kind, body, field)) in cases.into_iter().enumerate() {
        let scope = draft();
        let created = submit_with(
            &live,
            &scope,
            kind,
            &authed(&[("idempotency-key", &format!("dates-{i}")), ("traceparent", TRACEPARENT)]),
            &body,
        )
        .await;
        let job = get_job(&live, &job_location(&created, &scope, kind)).await;
        assert_eq!(assert_failed(&job, "InvalidFieldingDates"), &TRACEPARENT[3..35]);
        let description = job.json["failure_reason"]["description"].as_str().unwrap();
        assert!(description.contains(field), "{kind} {body}: {description}");
        assert_no_run(&live, &scope, "invalid dates").await;
    }
}

async fn replaying_the_same_key_and_body_returns_the_same_location_and_creates_nothing_more(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let start = in_days(10);
    let end = in_days(40);
    let body = json!({ "start_fielding_at": start, "end_fielding_at": end }).to_string();
    let first = job_location(
        &submit(&live, &scope, SCHEDULE, "retry-me", &body).await,
        &scope,
        SCHEDULE,
    );
    let job = get_job(&live, &first).await;
    let run_id = assert_completed(&job);
    let (run, changes) = the_run(&live, &scope).await;
    assert_eq!((run.id, changes), (run_id, 1));
    let snapshot = live.snapshot(&run.key()).await;
    // The same request, spelled differently: fields swapped, whitespace,
    // the same instants written with an offset instead of `Z`.
    let offset = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
    };
    let respelled = format!(r#"{{ "end_fielding_at" : "{end}",  "start_fielding_at" : "{start}" }}"#);
    let offsets = json!({ "end_fielding_at": offset(&end), "start_fielding_at": offset(&start) }).to_string();
    assert!(offsets.contains("+00:00"), "{offsets}");
    for (i, again) in [&body, &body, &respelled, &offsets].into_iter().enumerate() {
        let replay = submit(&live, &scope, SCHEDULE, "retry-me", again).await;
        assert_eq!(
            job_location(&replay, &scope, SCHEDULE),
            first,
            "replay {i}: the same job"
        );
        assert_eq!(
            get_job(&live, &first).await.json,
            job.json,
            "replay {i}: the job is as it was"
        );
    }
    live.assert_unchanged(&run.key(), &snapshot, "replays").await;

    // A failed job replays as the same failed job.
    let seeded = live.seed(Status::Paused, 7).await;
    let taken = scope_of(&seeded);
    let seeded_before = live.snapshot(&seeded.key()).await;
    let body = launch_body(30);
    let failed = job_location(
        &submit(&live, &taken, LAUNCH, "retry-failed", &body).await,
        &taken,
        LAUNCH,
    );
    let failed_job = get_job(&live, &failed).await;
    assert_failed(&failed_job, "TargetGroupInvalidState");
    let replay = submit(&live, &taken, LAUNCH, "retry-failed", &body).await;
    assert_eq!(job_location(&replay, &taken, LAUNCH), failed);
    assert_eq!(get_job(&live, &failed).await.json, failed_job.json);
    live.assert_unchanged(&seeded.key(), &seeded_before, "replay of a failed job")
        .await;

    // Keys are per account: another account's same key is another job.
    let elsewhere = Scope::new(
        AccountId::new(202).unwrap(),
        fielding_testkit::fixtures::project_id(),
        fielding_testkit::fixtures::target_group_id(),
    );
    let other = format!("Bearer {OTHER_TOKEN}");
    let reply = submit_with(
        &live,
        &elsewhere,
        SCHEDULE,
        &[
            ("authorization", &other),
            ("cint-api-version", API_VERSION),
            ("idempotency-key", "retry-me"),
        ],
        &job_body(SCHEDULE),
    )
    .await;
    let theirs = job_location(&reply, &elsewhere, SCHEDULE);
    assert_ne!(theirs, first);
    assert_eq!(the_run(&live, &elsewhere).await.1, 1, "account 202's own run");
    live.assert_unchanged(&run.key(), &snapshot, "another account's key")
        .await;
}

async fn a_key_reused_for_a_different_request_is_400_naming_it(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let body = schedule_body(10, 40);
    let first = job_location(&submit(&live, &scope, SCHEDULE, "used", &body).await, &scope, SCHEDULE);
    let job = get_job(&live, &first).await;
    assert_completed(&job);
    let (run, _) = the_run(&live, &scope).await;
    let snapshot = live.snapshot(&run.key()).await;
    let other_group = draft();
    for (target, kind, different) in [
        (scope, SCHEDULE, schedule_body(10, 41)),
        (scope, SCHEDULE, schedule_body(11, 40)),
        (scope, LAUNCH, launch_body(40)),
        // The same dates for another target group of the account.
        (other_group, SCHEDULE, body.clone()),
    ] {
        let reply = submit(&live, &target, kind, "used", &different).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(
            invalid_names(&reply),
            ["idempotency-key"],
            "{kind} {different}: {}",
            reply.json
        );
    }
    assert_no_run(&live, &other_group, "a refused reuse").await;
    live.assert_unchanged(&run.key(), &snapshot, "a refused reuse").await;
    assert_eq!(get_job(&live, &first).await.json, job.json);
    // The key still names its job.
    let replay = submit(&live, &scope, SCHEDULE, "used", &body).await;
    assert_eq!(job_location(&replay, &scope, SCHEDULE), first);
}

async fn every_400_of_the_job_endpoints_names_the_field_and_records_nothing(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let long = "k".repeat(256);
    // The idempotency-key header: missing, empty, too long, not visible
    // ASCII, on two lines. The body is valid: only the key is wrong.
    let keys: [&[(&str, &str)]; 6] = [
        &[],
        &[("idempotency-key", "")],
        &[("idempotency-key", &long)],
        &[("idempotency-key", "two words")],
        &[("idempotency-key", "schlüssel")],
        &[("idempotency-key", "a"), ("idempotency-key", "b")],
    ];
    for kind in [LAUNCH, SCHEDULE] {
        for key in keys {
            let reply = submit_with(&live, &scope, kind, &authed(key), &job_body(kind)).await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            assert_eq!(
                invalid_names(&reply),
                ["idempotency-key"],
                "{kind} {key:?}: {}",
                reply.json
            );
        }
        // The key is checked before the body.
        let reply = submit_with(&live, &scope, kind, &authed(&[]), "{not json").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["idempotency-key"], "{kind}: {}", reply.json);
    }
    // The body: not JSON, not an object, a field missing or not RFC 3339,
    // an unknown field; each named.
    let (start, end) = (in_days(10), in_days(40));
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (SCHEDULE, "{not json".into(), vec!["body"]),
        (SCHEDULE, String::new(), vec!["body"]),
        (SCHEDULE, "[]".into(), vec!["body"]),
        (SCHEDULE, "null".into(), vec!["body"]),
        (SCHEDULE, "{}".into(), vec!["end_fielding_at", "start_fielding_at"]),
        (
            SCHEDULE,
            json!({ "end_fielding_at": end }).to_string(),
            vec!["start_fielding_at"],
        ),
        (
            SCHEDULE,
            json!({ "start_fielding_at": "tomorrow", "end_fielding_at": end }).to_string(),
            vec!["start_fielding_at"],
        ),
        (
            SCHEDULE,
            json!({ "start_fielding_at": start, "end_fielding_at": end, "colour": "red" }).to_string(),
            vec!["colour"],
        ),
        (LAUNCH, "{oops".into(), vec!["body"]),
        (LAUNCH, "{}".into(), vec!["end_fielding_at"]),
        (
            LAUNCH,
            json!({ "end_fielding_at": 5 }).to_string(),
            vec!["end_fielding_at"],
        ),
        (
            LAUNCH,
            json!({ "end_fielding_at": "2031-13-01" }).to_string(),
            vec!["end_fielding_at"],
        ),
        // A launch starts now: a start is an unknown field.
        (
            LAUNCH,
            json!({ "start_fielding_at": start, "end_fielding_at": end }).to_string(),
            vec!["start_fielding_at"],
        ),
        (
            LAUNCH,
            json!({ "end_fielding_at": end, "status": "live" }).to_string(),
            vec!["status"],
        ),
    ];
    for (kind, body, names) in cases {
        let reply = submit(&live, &scope, kind, "k", &body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        let mut got = invalid_names(&reply);
        got.sort();
        assert_eq!(got, names, "{kind} {body:?}: {}", reply.json);
    }
    // The API version and the path's ids.
    for kind in [LAUNCH, SCHEDULE] {
        let reply = submit_with(
            &live,
            &scope,
            kind,
            &[("authorization", "Bearer token-101"), ("idempotency-key", "k")],
            &job_body(kind),
        )
        .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["Cint-API-Version"], "{kind}");
        let path = jobs_path(&scope, kind);
        let tg = scope.target_group_id.to_string();
        for (bad, name) in [
            (path.replace("/accounts/101/", "/accounts/0/"), "account_id"),
            (path.replace(&tg, &tg.to_lowercase()), "target_group_id"),
        ] {
            let reply = live
                .send(Method::POST, &bad, &authed(&[("idempotency-key", "k")]), job_body(kind))
                .await;
            assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
            assert_eq!(invalid_names(&reply), [name], "{bad}: {}", reply.json);
        }
    }
    assert_no_run(&live, &scope, "400s").await;
    // None of these recorded the key: it is free for a first request.
    let created = submit(&live, &scope, SCHEDULE, "k", &job_body(SCHEDULE)).await;
    let location = job_location(&created, &scope, SCHEDULE);
    assert_completed(&get_job(&live, &location).await);

    // GET: a malformed job id, the API version.
    let job_id = location.rsplit('/').next().unwrap();
    for bad in [
        format!("{}/not-a-job", jobs_path(&scope, SCHEDULE)),
        location.replace(job_id, &job_id.to_lowercase()),
        location.replace(job_id, &job_id[..25]),
    ] {
        let reply = live.send(Method::GET, &bad, &authed(&[]), "").await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(invalid_names(&reply), ["job_id"], "{bad}: {}", reply.json);
    }
    let reply = live
        .send(Method::GET, &location, &[("authorization", "Bearer token-101")], "")
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["Cint-API-Version"]);
}

async fn job_endpoints_are_401_with_a_bearer_challenge_and_403_for_another_account(backend: Backend) {
    let live = Live::start(backend).await;
    let done = draft();
    let location = job_location(
        &submit(&live, &done, LAUNCH, "readable", &job_body(LAUNCH)).await,
        &done,
        LAUNCH,
    );
    let scope = draft();
    let other = format!("Bearer {OTHER_TOKEN}");
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic dXNlcjpwYXNz"),
        Some(other.as_str()),
    ] {
        let mut headers = vec![("cint-api-version", API_VERSION), ("idempotency-key", "refused")];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        let status = if auth == Some(other.as_str()) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut replies = Vec::new();
        for kind in [LAUNCH, SCHEDULE] {
            // A malformed body too: who may ask is checked first.
            for body in [job_body(kind), "{bad".to_owned()] {
                replies.push(submit_with(&live, &scope, kind, &headers, &body).await);
            }
        }
        replies.push(live.send(Method::GET, &location, &headers, "").await);
        for reply in replies {
            assert_error(&reply, status, "authorization_error");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{auth:?}");
            }
        }
    }
    assert_no_run(&live, &scope, "401 and 403").await;
    // The key was not recorded by any refused request.
    let created = submit(&live, &scope, SCHEDULE, "refused", &job_body(SCHEDULE)).await;
    assert_completed(&get_job(&live, &job_location(&created, &scope, SCHEDULE)).await);
}

async fn unknown_job_wrong_kind_or_another_target_group_is_404(backend: Backend) {
    let live = Live::start(backend).await;
    let scope = draft();
    let location = job_location(
        &submit(&live, &scope, LAUNCH, "find-me", &job_body(LAUNCH)).await,
        &scope,
        LAUNCH,
    );
    let job_id = location.rsplit('/').next().unwrap().to_owned();
    let job = get_job(&live, &location).await;
    let other_group = draft();
    let other_project = Scope::new(
        scope.account_id,
        fielding_testkit::fixtures::project_id(),
        scope.target_group_id,
    );
    let missing = [
        format!("{}/{}", jobs_path(&scope, LAUNCH), JobId::generate()),
        format!("{}/{}", jobs_path(&scope, SCHEDULE), JobId::generate()),
        // A launch job is not a schedule job.
        format!("{}/{job_id}", jobs_path(&scope, SCHEDULE)),
        format!("{}/{job_id}", jobs_path(&other_group, LAUNCH)),
        format!("{}/{job_id}", jobs_path(&other_project, LAUNCH)),
    ];
    for path in &missing {
        let reply = live
            .send(Method::GET, path, &authed(&[("traceparent", TRACEPARENT)]), "")
            .await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
        assert_eq!(reply.traceparent()[1], &TRACEPARENT[3..35]);
    }
    // Reading did not change the job.
    assert_eq!(get_job(&live, &location).await.json, job.json);
}

async fn concurrent_submissions_with_one_key_get_one_job_and_one_run(backend: Backend) {
    let live = Arc::new(Live::start(backend).await);
    for round in 0..8 {
        let scope = draft();
        let kind = [LAUNCH, SCHEDULE][round % 2];
        let body = job_body(kind);
        let key = format!("race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (live, barrier, body, key) = (live.clone(), barrier.clone(), body.clone(), key.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    submit(&live, &scope, kind, &key, &body).await
                })
            })
            .collect();
        let mut locations = Vec::new();
        for task in tasks {
            locations.push(job_location(&task.await.expect("the request task"), &scope, kind));
        }
        assert_eq!(locations[0], locations[1], "round {round}: one key, one job");
        let run_id = assert_completed(&get_job(&live, &locations[0]).await);
        let (run, changes) = the_run(&live, &scope).await;
        assert_eq!(run.id, run_id, "round {round}");
        assert_eq!(changes, 1, "round {round}: exactly one run, created once");
    }
}

async fn concurrent_submissions_with_different_keys_for_one_target_group_one_completes_one_fails(backend: Backend) {
    let live = Arc::new(Live::start(backend).await);
    for round in 0..8 {
        let scope = draft();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [LAUNCH, SCHEDULE]
            .into_iter()
            .map(|kind| {
                let (live, barrier) = (live.clone(), barrier.clone());
                tokio::spawn(async move {
                    let key = format!("rival-{round}-{kind}");
                    let body = job_body(kind);
                    barrier.wait().await;
                    (kind, submit(&live, &scope, kind, &key, &body).await)
                })
            })
            .collect();
        let mut jobs = Vec::new();
        for task in tasks {
            let (kind, reply) = task.await.expect("the request task");
            jobs.push(get_job(&live, &job_location(&reply, &scope, kind)).await);
        }
        let mut statuses: Vec<&str> = jobs.iter().map(|j| j.json["status"].as_str().unwrap()).collect();
        statuses.sort();
        assert_eq!(statuses, ["Completed", "Failed"], "round {round}");
        let winner = jobs.iter().find(|j| j.json["status"] == "Completed").unwrap();
        let loser = jobs.iter().find(|j| j.json["status"] == "Failed").unwrap();
        let run_id = assert_completed(winner);
        assert_failed(loser, "TargetGroupInvalidState");
        let (run, changes) = the_run(&live, &scope).await;
        assert_eq!(run.id, run_id, "round {round}: the winner's run is stored");
        assert_eq!(changes, 1, "round {round}");
    }
}

async fn rate_limited_job_endpoints_are_429_with_digits_only_retry_after(backend: Backend) {
    let live = Live::start_with(
        backend,
        Options {
            rate_limit: Some(RateLimitPolicy::per_second(1, 2).unwrap()),
            ..Options::default()
        },
    )
    .await;
    let scope = draft();
    let headers = authed(&[
        ("idempotency-key", "limited"),
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let cases = [
        (Method::POST, jobs_path(&scope, SCHEDULE), schedule_body(10, 40)),
        (Method::POST, jobs_path(&scope, LAUNCH), launch_body(30)),
        (
            Method::GET,
            format!("{}/{}", jobs_path(&scope, LAUNCH), JobId::generate()),
            String::new(),
        ),
    ];
    for (method, path, body) in cases {
        // One key for all: a schedule that gets through is replayed, a
        // launch that does is refused (400) as a reuse of the key.
        let refused = until_429(&live, method.clone(), &path, &headers, &body).await;
        let retry_after = refused.header("retry-after").expect("Retry-After on 429");
        assert!(
            !retry_after.is_empty() && retry_after.bytes().all(|b| b.is_ascii_digit()),
            "{method} {path}: Retry-After {retry_after:?}"
        );
        assert!(retry_after.parse::<u64>().unwrap() >= 1);
        assert_eq!(refused.json["object"], "too_many_requests_problem_details");
        let [version, trace, span, flags] = refused.traceparent();
        assert_eq!(
            (version.as_str(), trace.as_str(), flags.as_str()),
            ("00", &TRACEPARENT[3..35], "01")
        );
        assert_ne!(span, &TRACEPARENT[36..52]);
        assert_eq!(refused.header("tracestate"), Some("congo=t61rcWkgMzE"));
    }
    // At most the one schedule job ran, whatever got through.
    if let Some(run) = live.store.find_by_target_group(&scope).await.unwrap() {
        assert_eq!(live.store.changes(&run.key()).await.unwrap().len(), 1);
        assert_eq!(run.status, Status::Scheduled);
    }
}

async fn store_failure_on_the_job_endpoints_is_500_without_its_cause_and_a_retry_finishes(backend: Backend) {
    let live = Live::start(backend).await;
    let earlier_scope = draft();
    let earlier = job_location(
        &submit(&live, &earlier_scope, LAUNCH, "before-the-failure", &job_body(LAUNCH)).await,
        &earlier_scope,
        LAUNCH,
    );
    let earlier_job = get_job(&live, &earlier).await;
    let scope = draft();
    let bodies = [(LAUNCH, job_body(LAUNCH)), (SCHEDULE, job_body(SCHEDULE))];
    live.break_store().await;
    let mut replies = Vec::new();
    for (kind, body) in &bodies {
        replies.push(submit(&live, &scope, kind, &format!("during-{kind}"), body).await);
    }
    replies.push(live.send(Method::GET, &earlier, &authed(&[]), "").await);
    for reply in replies {
        assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "unexpected_internal_error");
        let detail = reply.json["detail"].as_str().unwrap().to_lowercase();
        for leak in [
            "sqlite",
            "fielding_run",
            "injected",
            "no such table",
            "backend",
            "storage fault",
        ] {
            assert!(!detail.contains(leak), "the detail leaks {leak:?}: {detail}");
        }
        assert!(reply.json.get("invalid_params").is_none(), "{}", reply.json);
    }
    live.repair_store().await;
    assert_eq!(get_job(&live, &earlier).await.json, earlier_job.json);
    // Retrying with the same keys: the launch creates the run, the schedule
    // then finds the target group taken.
    let mut outcomes = Vec::new();
    for (kind, body) in &bodies {
        let created = submit(&live, &scope, kind, &format!("during-{kind}"), body).await;
        outcomes.push(get_job(&live, &job_location(&created, &scope, kind)).await);
    }
    let run_id = assert_completed(&outcomes[0]);
    assert_failed(&outcomes[1], "TargetGroupInvalidState");
    let (run, changes) = the_run(&live, &scope).await;
    assert_eq!((run.id, changes, run.status), (run_id, 1, Status::Live));
}
