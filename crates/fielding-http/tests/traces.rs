//! The spans a request leaves, in-process (tower `oneshot`) on a
//! current-thread runtime so the testkit's span capture sees them: the
//! `request` span carries the caller's W3C trace id and the status, the
//! service's `command` span is its child with the run's fields, and no
//! field holds the bearer token or any other header's value.

mod common {
    pub mod contract;
    pub mod oneshot;
}

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use common::oneshot::send;
use fielding_core::{AccountId, FieldingRun, FieldingService, Status, UserId};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::FieldingApi;
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;
use fielding_testkit::observe::SpanLog;

const TOKEN: &str = "secret-token-4f1d0e";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The API on a fresh in-memory store whose only token is [`TOKEN`] (account
/// 101), a live run of account 101 at version 3, and the run's path.
fn live_run_of_account_101() -> (axum::Router, FieldingRun, String) {
    let store = MemoryStore::new();
    let account = AccountId::new(101).expect("a valid account");
    let tokens = StaticTokens::new().with_token(
        TOKEN,
        Principal {
            user_id: UserId::random(),
            accounts: AccountAccess::Only(vec![account]),
        },
    );
    let app = FieldingApi::new(FieldingService::new(Arc::new(store.clone())), Arc::new(tokens)).router();
    let scope = fielding_core::Scope::new(account, fixtures::project_id(), fixtures::target_group_id());
    let run = fixtures::run()
        .with_scope(scope)
        .with_status(Status::Live)
        .with_version(3)
        .build();
    store.seed(run.clone()).expect("seeding");
    let path = format!(
        "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs/{}",
        run.account_id, run.project_id, run.target_group_id, run.id
    );
    (app, run, path)
}

#[tokio::test]
async fn a_write_leaves_a_request_span_with_the_trace_id_and_a_command_span_inside_it() {
    let (app, run, run_path) = live_run_of_account_101();
    let path = format!("{run_path}/pause");
    let bearer = format!("Bearer {TOKEN}");
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let spans = SpanLog::new();
    let _capture = spans.capture();
    let reply = send(
        &app,
        Method::POST,
        &path,
        &[
            ("authorization", bearer.as_str()),
            ("cint-api-version", "2025-12-18"),
            ("if-match", "\"3\""),
            ("traceparent", traceparent.as_str()),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{:?}", reply.json);
    let answered = reply.headers.get("traceparent").and_then(|v| v.to_str().ok());
    assert!(answered.is_some_and(|tp| tp.contains(TRACE)), "{answered:?}");

    let request = spans.only("request");
    assert_eq!(request.field("trace_id"), Some(TRACE));
    assert_eq!(request.field("method"), Some("POST"));
    assert_eq!(request.field("status"), Some("204"));
    let command = spans.only("command");
    assert_eq!(command.parent_index, Some(request.index), "{:#?}", spans.spans());
    assert_eq!(command.field("action"), Some("pause"));
    assert_eq!(command.field("account"), Some("101"));
    assert_eq!(command.field("run_id"), Some(run.id.to_string().as_str()));
    assert_eq!(command.field("expected_version"), Some("3"));
    assert_eq!(command.field("resulting_version"), Some("4"));
    assert_eq!(command.field("outcome"), Some("ok"));

    // A wrong token too: refused (and logged at debug) without its value.
    let wrong = format!("Bearer {TOKEN}-but-wrong");
    let refused = send(
        &app,
        Method::GET,
        &run_path,
        &[("authorization", wrong.as_str()), ("cint-api-version", "2025-12-18")],
        "",
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        spans.events().iter().any(|e| e.level == tracing::Level::DEBUG),
        "the refusal is logged: {:#?}",
        spans.events()
    );

    let spans_fields = spans.spans().into_iter().map(|s| (s.name.to_owned(), s.fields));
    let event_fields = spans.events().into_iter().map(|e| (e.target, e.fields));
    for (what, fields) in spans_fields.chain(event_fields) {
        for (name, value) in &fields {
            assert!(
                !value.contains(TOKEN) && !value.contains("Bearer"),
                "{what} field {name} holds the credential: {value}"
            );
        }
    }
}

#[tokio::test]
async fn a_refused_write_is_traced_with_its_outcome() {
    let (app, _, path) = live_run_of_account_101();
    let bearer = format!("Bearer {TOKEN}");
    let spans = SpanLog::new();
    let _capture = spans.capture();
    let reply = send(
        &app,
        Method::PUT,
        &path,
        &[
            ("authorization", bearer.as_str()),
            ("cint-api-version", "2025-12-18"),
            ("content-type", "application/json"),
            ("if-match", "\"3\""),
        ],
        r#"{"start_fielding_at":"not a date","end_fielding_at":"2031-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.json);
    let command = spans.only("command");
    assert_eq!(command.field("action"), Some("update_dates"));
    assert_eq!(command.field("outcome"), Some("request_refused"));
    assert_eq!(spans.only("request").field("status"), Some("400"));
}
