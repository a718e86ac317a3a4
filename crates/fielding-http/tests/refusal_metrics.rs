//! Refusals are counted in `fielding_http_refusals_total{reason}` through
//! the `metrics` facade: one increment per refused request, under the
//! reason of `docs/http.md`, and nothing for answers that are outcomes of
//! a well-formed request (200, a run's 404, 412, 422).
//!
//! The requests go through the router in-process on a current-thread
//! runtime, so the recorder installed for this thread sees every count.

mod common {
    pub mod contract;
    pub mod oneshot;
}

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use common::oneshot::send;
use fielding_core::{AccountId, FieldingRun, FieldingRunId, FieldingService, Scope, Status, UserId};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::rate_limit::RateLimitPolicy;
use fielding_http::refusal::{self, Refusal};
use fielding_http::FieldingApi;
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;
use http_body_util::channel::Channel;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::ServiceExt;

const API_VERSION: &str = "2025-12-18";

fn app(store: &MemoryStore, policy: RateLimitPolicy) -> Router {
    let tokens = StaticTokens::new()
        .with_token(
            "t",
            Principal {
                user_id: UserId::random(),
                accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
            },
        )
        .with_token(
            "other",
            Principal {
                user_id: UserId::random(),
                accounts: AccountAccess::Only(vec![AccountId::new(202).unwrap()]),
            },
        );
    FieldingApi::new(FieldingService::new(Arc::new(store.clone())), Arc::new(tokens))
        .with_rate_limit(policy)
        .with_body_limit(1024)
        .with_body_timeout(Duration::from_millis(100))
        .router()
}

fn path(run: &FieldingRun) -> String {
    format!(
        "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs/{}",
        run.account_id, run.project_id, run.target_group_id, run.id
    )
}

/// The counter's value under each reason.
fn counts(snapshotter: &Snapshotter) -> BTreeMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == refusal::COUNTER)
        .map(|(key, _, _, value)| {
            let reason = key
                .key()
                .labels()
                .find(|label| label.key() == refusal::LABEL)
                .map(|label| label.value().to_owned())
                .expect("every count has a reason");
            let DebugValue::Counter(count) = value else {
                panic!("{} is a counter", refusal::COUNTER)
            };
            (reason, count)
        })
        .collect()
}

async fn refusals_and_outcomes(store: &MemoryStore) {
    let scope = || {
        Scope::new(
            AccountId::new(101).unwrap(),
            fixtures::project_id(),
            fixtures::target_group_id(),
        )
    };
    let run = fixtures::run()
        .with_scope(scope())
        .with_status(Status::Live)
        .with_version(7)
        .build();
    let done = fixtures::run()
        .with_scope(scope())
        .with_status(Status::Completed)
        .with_version(7)
        .build();
    for seeded in [&run, &done] {
        store.seed(seeded.clone()).unwrap();
    }
    let app = app(store, RateLimitPolicy::default());
    let url = path(&run);
    let ok = [("authorization", "Bearer t"), ("cint-api-version", API_VERSION)];
    let json = [
        ("authorization", "Bearer t"),
        ("cint-api-version", API_VERSION),
        ("if-match", "\"7\""),
        ("content-type", "application/json"),
    ];
    let dates = format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        run.start_fielding_at, run.end_fielding_at
    );

    // Outcomes of well-formed requests: not refusals.
    assert_eq!(send(&app, Method::GET, &url, &ok, "").await.status, StatusCode::OK);
    let ghost = path(&FieldingRun {
        id: FieldingRunId::generate(),
        ..run.clone()
    });
    assert_eq!(
        send(&app, Method::GET, &ghost, &ok, "").await.status,
        StatusCode::NOT_FOUND
    );
    let mut stale = json.to_vec();
    stale[2] = ("if-match", "\"6\"");
    let reply = send(&app, Method::PUT, &url, &stale, &dates).await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    let complete = format!("{}/complete", path(&done));
    let reply = send(&app, Method::POST, &complete, &json, "").await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.json);

    // Refusals.
    let anonymous = [("cint-api-version", API_VERSION)];
    assert_eq!(
        send(&app, Method::GET, &url, &anonymous, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let wrong = [("authorization", "Bearer nope"), ("cint-api-version", API_VERSION)];
    assert_eq!(
        send(&app, Method::GET, &url, &wrong, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let other = [("authorization", "Bearer other"), ("cint-api-version", API_VERSION)];
    assert_eq!(
        send(&app, Method::GET, &url, &other, "").await.status,
        StatusCode::FORBIDDEN
    );
    let future = [("authorization", "Bearer t"), ("cint-api-version", "2099-01-01")];
    assert_eq!(
        send(&app, Method::GET, &url, &future, "").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(&app, Method::GET, "/nope", &ok, "").await.status,
        StatusCode::NOT_FOUND
    );
    let reply = send(&app, Method::DELETE, &url, &ok, "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = send(&app, Method::PUT, &url, &json, &" ".repeat(2048)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut plain = json.to_vec();
    plain[3] = ("content-type", "text/plain");
    let reply = send(&app, Method::PUT, &url, &plain, &dates).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A body that never ends: 408 once the 100 ms pass.
    let (_sender, stalled) = Channel::<Bytes, std::convert::Infallible>::new(1);
    let mut request = Request::builder().method(Method::PUT).uri(&url);
    for (name, value) in json {
        request = request.header(name, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::new(stalled)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);

    // One request over a bucket of one.
    let tight = self::app(store, RateLimitPolicy::per_second(1, 1).unwrap());
    assert_eq!(send(&tight, Method::GET, &url, &ok, "").await.status, StatusCode::OK);
    let reply = send(&tight, Method::GET, &url, &ok, "").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.contains_key("retry-after"));
}

#[test]
fn every_refusal_is_counted_under_its_reason_and_outcomes_are_not() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _installed = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(refusals_and_outcomes(&MemoryStore::new()));
    let expected: BTreeMap<String, u64> = [
        (Refusal::Unauthenticated, 2),
        (Refusal::Forbidden, 1),
        (Refusal::RateLimited, 1),
        (Refusal::BadRequest, 1),
        (Refusal::NoRoute, 2),
        (Refusal::UnsupportedMediaType, 1),
        (Refusal::PayloadTooLarge, 1),
        (Refusal::RequestTimeout, 1),
    ]
    .into_iter()
    .map(|(refusal, count)| (refusal.label().to_owned(), count))
    .collect();
    assert_eq!(counts(&snapshotter), expected);
}
