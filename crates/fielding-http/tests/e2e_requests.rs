//! End to end over real TCP (see `common::live`): a live server and
//! `reqwest`, every case on the in-memory store, on SQLite on a temporary
//! file and on PostgreSQL in a fresh schema (`memory::*`, `sqlite::*`,
//! `postgres::*`). Every response is checked against the contract, and
//! every refusal is checked to have left the run and its change records
//! exactly as they were.
//!
//! What a request must get right besides its version: credentials and
//! account, body fields and dates, body size and encoding, the rate limit,
//! unknown routes, and a failing store.

#[macro_use]
mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
    #[macro_use]
    pub mod e2e;
}

use axum::http::{HeaderMap, Method, StatusCode};
use common::e2e::{assert_etag, in_days, post, put, until_429, CURRENT, STALE};
use common::live::{
    api, assert_error, authed, header_map, invalid_names, list_path, new_dates, run_path, Backend, Live, Options,
    API_VERSION, OTHER_TOKEN, TRACEPARENT,
};
use fielding_core::{FieldingRun, Status};
use fielding_http::rate_limit::RateLimitPolicy;
use serde_json::json;

e2e!(
    stale_tag_without_credentials_is_401_with_a_bearer_challenge,
    another_accounts_principal_is_403,
    end_before_start_is_400_naming_the_field,
    a_scheduled_runs_start_in_the_past_is_400_naming_it,
    a_live_runs_end_in_the_past_is_400_naming_it,
    bad_dates_on_a_completed_run_are_400_before_the_state_is_checked,
    unknown_json_field_is_400_naming_it,
    body_over_the_limit_is_refused_in_the_error_format,
    oversized_body_answer_announces_connection_close,
    a_malformed_chunked_body_is_400_naming_the_body_not_413,
    rate_limited_is_429_with_digits_only_retry_after_on_every_endpoint,
    store_failure_is_500_without_its_cause_on_every_endpoint,
    unknown_routes_and_methods_answer_in_the_error_format,
);

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

/// A PUT of `start`/`end` refused with 400 naming exactly `field`, nothing
/// changed; then the same PUT with `fixed` in place of the bad date is
/// accepted, so the one rule under test was the only thing wrong.
async fn assert_only_this_rule(live: &Live, run: &FieldingRun, dates: [&str; 2], field: &str, fixed: &str) {
    let before = live.snapshot(&run.key()).await;
    let body = |start: &str, end: &str| json!({ "start_fielding_at": start, "end_fielding_at": end }).to_string();
    let reply = put(live, run, &[CURRENT], &body(dates[0], dates[1])).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), [field], "{dates:?}: {}", reply.json);
    assert!(reply.json["invalid_params"][0]["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    live.assert_unchanged(&run.key(), &before, field).await;
    let accepted = if field == "start_fielding_at" {
        body(fixed, dates[1])
    } else {
        body(dates[0], fixed)
    };
    let reply = put(live, run, &[CURRENT], &accepted).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{field} fixed: {}", reply.json);
}

/// Both dates in the future and the start not moved into the past: only
/// "end after start" can answer.
async fn end_before_start_is_400_naming_the_field(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Scheduled, 7).await;
    assert_only_this_rule(
        &live,
        &run,
        [&in_days(10), &in_days(5)],
        "end_fielding_at",
        &in_days(15),
    )
    .await;
}

/// A scheduled run's new start must not be in the past; the end is in the
/// future and after the start, so no other rule answers.
async fn a_scheduled_runs_start_in_the_past_is_400_naming_it(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Scheduled, 7).await;
    assert_only_this_rule(
        &live,
        &run,
        [&in_days(-1), &in_days(10)],
        "start_fielding_at",
        &in_days(2),
    )
    .await;
}

/// A started run's end must be in the future; here it is still after the
/// (unchanged) start, so no other rule answers.
async fn a_live_runs_end_in_the_past_is_400_naming_it(backend: Backend) {
    let live = Live::start(backend).await;
    // Started a day ago (see `fixtures`): an hour ago is after the start.
    let run = live.seed(Status::Live, 7).await;
    let an_hour_ago =
        (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let start = run.start_fielding_at.to_string();
    assert_only_this_rule(&live, &run, [&start, &an_hour_ago], "end_fielding_at", &in_days(5)).await;
}

/// Input comes before state: bad dates on a completed run are a 400, good
/// ones a 422 (no edits after fielding closes).
async fn bad_dates_on_a_completed_run_are_400_before_the_state_is_checked(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Completed, 7).await;
    let before = live.snapshot(&run.key()).await;
    let body = |end: &str| json!({ "start_fielding_at": run.start_fielding_at.to_string(), "end_fielding_at": end });
    let backwards = run.start_fielding_at.checked_add(chrono::TimeDelta::hours(-1)).unwrap();
    let reply = put(&live, &run, &[CURRENT], &body(&backwards.to_string()).to_string()).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(invalid_names(&reply), ["end_fielding_at"], "{}", reply.json);
    let reply = put(&live, &run, &[CURRENT], &body(&in_days(40)).to_string()).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
    live.assert_unchanged(&run.key(), &before, "completed run").await;
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

async fn unknown_routes_and_methods_answer_in_the_error_format(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let before = live.snapshot(&run.key()).await;
    for path in [
        "/nope".to_owned(),
        "/demand".to_owned(),
        api("/demand"),
        // The contract's paths outside the base path the API is served at.
        format!(
            "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs/{}",
            run.account_id, run.project_id, run.target_group_id, run.id
        ),
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
