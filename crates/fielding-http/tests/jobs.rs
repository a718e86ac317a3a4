//! The creation jobs through the router, in-process: submission, replay
//! under the same idempotency key, refusal under a reused key, failure
//! reasons, reading jobs back, and resuming an abandoned job. Every
//! response is checked against the contract's schemas.

mod common {
    pub mod contract;
    pub mod oneshot;
}

use common::oneshot::{send, Reply};

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use chrono::TimeDelta;
use fielding_core::{
    AccountId, FieldingRunId, FieldingRunJob, FieldingService, FieldingStore, IdempotencyKey, JobId, JobRequest,
    JobState, ManualClock, Scope, UserId,
};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::FieldingApi;
use fielding_memory::MemoryStore;
use fielding_testkit::{fixtures, Fault, Faults, FaultyStore};
use tower::ServiceExt;

const API_VERSION: &str = "2025-12-18";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

struct Harness {
    app: Router,
    store: MemoryStore,
    /// The faults of the store the service writes through.
    faults: Faults,
    clock: ManualClock,
    user: UserId,
}

fn harness() -> Harness {
    let store = MemoryStore::new();
    let clock = ManualClock::new("2030-06-01T12:00:00Z".parse().unwrap());
    let user = UserId::random();
    let tokens = StaticTokens::new()
        .with_token(
            "token-101",
            Principal {
                user_id: user,
                accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
            },
        )
        .with_token(
            "token-other",
            Principal {
                user_id: UserId::random(),
                accounts: AccountAccess::Only(vec![AccountId::new(202).unwrap()]),
            },
        );
    let faulty = FaultyStore::new(store.clone());
    let faults = faulty.faults().clone();
    let service = FieldingService::new(Arc::new(faulty)).with_clock(Arc::new(clock.clone()));
    let app = FieldingApi::new(service, Arc::new(tokens)).router();
    Harness {
        app,
        store,
        faults,
        clock,
        user,
    }
}

fn scope() -> Scope {
    Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1").unwrap()
}

fn jobs_url(scope: &Scope, kind: &str) -> String {
    format!(
        "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-run-jobs/{kind}",
        scope.account_id, scope.project_id, scope.target_group_id
    )
}

fn authed<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        ("authorization", "Bearer token-101"),
        ("cint-api-version", API_VERSION),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    headers
}

const SCHEDULE: &str =
    r#"{"start_fielding_at":"2030-07-01T09:00:00.000Z","end_fielding_at":"2030-07-31T09:00:00.000Z"}"#;
const LAUNCH: &str = r#"{"end_fielding_at":"2030-07-31T09:00:00.000Z"}"#;

async fn submit(h: &Harness, kind: &str, key: &str, body: &str) -> Reply {
    let headers = authed(&[
        ("idempotency-key", key),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ]);
    send(&h.app, Method::POST, &jobs_url(&scope(), kind), &headers, body).await
}

async fn follow(h: &Harness, created: &Reply) -> Reply {
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json);
    let location = created.headers["location"].to_str().unwrap().to_owned();
    send(&h.app, Method::GET, &location, &authed(&[]), "").await
}

#[track_caller]
fn assert_bad_request(reply: &Reply, field: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.json);
    assert_eq!(reply.json["object"], "bad_request_error");
    let names: Vec<&str> = reply.json["invalid_params"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&field), "{field} not named in {names:?}");
}

#[tokio::test]
async fn schedule_from_draft_creates_the_run_and_the_job_reports_it() {
    let h = harness();
    let created = submit(&h, "schedule-from-draft", "key-1", SCHEDULE).await;
    assert!(created.headers["location"]
        .to_str()
        .unwrap()
        .starts_with(&format!("{}/", jobs_url(&scope(), "schedule-from-draft"))));
    let job = follow(&h, &created).await;
    assert_eq!(job.status, StatusCode::OK);
    assert_eq!(job.json["status"], "Completed");
    assert_eq!(job.json["created_by"], h.user.to_string());
    assert_eq!(job.json["created_at"], "2030-06-01T12:00:00.000Z");
    assert!(job.json.get("failure_reason").is_none());
    assert!(job.json.get("job_trace_id").is_none());
    let run = h.store.find_by_target_group(&scope()).await.unwrap().unwrap();
    assert_eq!(job.json["created_fielding_run_id"], run.id.to_string());
    assert_eq!(run.version.get(), 1);
    assert_eq!(run.start_fielding_at, "2030-07-01T09:00:00Z".parse().unwrap());
    assert_eq!(run.last_changed_by, h.user);
}

#[tokio::test]
async fn launch_from_draft_creates_a_live_run() {
    let h = harness();
    let created = submit(&h, "launch-from-draft", "key-launch", LAUNCH).await;
    let job = follow(&h, &created).await;
    assert_eq!(job.json["status"], "Completed");
    let run = h.store.find_by_target_group(&scope()).await.unwrap().unwrap();
    assert_eq!(run.status, fielding_core::Status::Live);
    assert_eq!(run.start_fielding_at, fielding_core::Clock::now(&h.clock));
}

#[tokio::test]
async fn the_same_key_and_body_returns_the_same_job_and_creates_nothing_more() {
    let h = harness();
    let first = submit(&h, "schedule-from-draft", "retry-me", SCHEDULE).await;
    // Same request, different JSON spelling: still the same request.
    let respelled = r#"{ "end_fielding_at": "2030-07-31T09:00:00Z", "start_fielding_at": "2030-07-01T09:00:00Z" }"#;
    let again = submit(&h, "schedule-from-draft", "retry-me", respelled).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(first.headers["location"], again.headers["location"]);
    let job = follow(&h, &again).await;
    assert_eq!(job.json["status"], "Completed", "a replay is not a second creation");
    let run = h.store.find_by_target_group(&scope()).await.unwrap().unwrap();
    assert_eq!(h.store.changes(&run.key()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_or_endpoint_is_refused() {
    let h = harness();
    submit(&h, "schedule-from-draft", "used", SCHEDULE).await;
    let other_dates = SCHEDULE.replace("07-31", "08-31");
    assert_bad_request(
        &submit(&h, "schedule-from-draft", "used", &other_dates).await,
        "idempotency-key",
    );
    assert_bad_request(
        &submit(&h, "launch-from-draft", "used", LAUNCH).await,
        "idempotency-key",
    );
}

#[tokio::test]
async fn a_target_group_with_a_run_fails_the_job_with_its_trace_id() {
    let h = harness();
    h.store
        .seed(fixtures::run().with_scope(scope()).with_version(3).build())
        .unwrap();
    let job = follow(&h, &submit(&h, "launch-from-draft", "second", LAUNCH).await).await;
    assert_eq!(job.json["status"], "Failed");
    assert_eq!(job.json["failure_reason"]["code"], "TargetGroupInvalidState");
    assert!(job.json["failure_reason"]["description"]
        .as_str()
        .unwrap()
        .contains("draft"));
    assert_eq!(job.json["job_trace_id"], TRACE_ID);
    assert!(job.json.get("created_fielding_run_id").is_none());
}

#[tokio::test]
async fn unacceptable_dates_fail_the_job_as_invalid_fielding_dates() {
    let h = harness();
    let backwards = r#"{"start_fielding_at":"2030-07-31T09:00:00Z","end_fielding_at":"2030-07-01T09:00:00Z"}"#;
    let job = follow(&h, &submit(&h, "schedule-from-draft", "backwards", backwards).await).await;
    assert_eq!(job.json["failure_reason"]["code"], "InvalidFieldingDates");
    assert!(job.json["failure_reason"]["description"]
        .as_str()
        .unwrap()
        .contains("end_fielding_at"));
    let past = r#"{"end_fielding_at":"2020-01-01T00:00:00Z"}"#;
    let job = follow(&h, &submit(&h, "launch-from-draft", "past", past).await).await;
    assert_eq!(job.json["failure_reason"]["code"], "InvalidFieldingDates");
    assert!(h.store.find_by_target_group(&scope()).await.unwrap().is_none());
}

#[tokio::test]
async fn malformed_submissions_are_400_naming_the_field() {
    let h = harness();
    let url = jobs_url(&scope(), "schedule-from-draft");
    assert_bad_request(
        &send(&h.app, Method::POST, &url, &authed(&[]), SCHEDULE).await,
        "idempotency-key",
    );
    let long = "k".repeat(256);
    assert_bad_request(
        &submit(&h, "schedule-from-draft", &long, SCHEDULE).await,
        "idempotency-key",
    );
    let two = authed(&[("idempotency-key", "a"), ("idempotency-key", "b")]);
    assert_bad_request(
        &send(&h.app, Method::POST, &url, &two, SCHEDULE).await,
        "idempotency-key",
    );
    assert_bad_request(&submit(&h, "schedule-from-draft", "k", "{not json").await, "body");
    assert_bad_request(&submit(&h, "schedule-from-draft", "k", "[]").await, "body");
    assert_bad_request(
        &submit(
            &h,
            "schedule-from-draft",
            "k",
            r#"{"end_fielding_at":"2030-07-31T09:00:00Z"}"#,
        )
        .await,
        "start_fielding_at",
    );
    let extra = r#"{"end_fielding_at":"2030-07-31T09:00:00Z","status":"live"}"#;
    assert_bad_request(&submit(&h, "launch-from-draft", "k", extra).await, "status");
    let bad_time = r#"{"end_fielding_at":"tomorrow"}"#;
    assert_bad_request(&submit(&h, "launch-from-draft", "k", bad_time).await, "end_fielding_at");
    let no_version = vec![("authorization", "Bearer token-101"), ("idempotency-key", "k")];
    assert_bad_request(
        &send(&h.app, Method::POST, &url, &no_version, SCHEDULE).await,
        "Cint-API-Version",
    );
    // Nothing was recorded by any of these.
    assert!(h.store.find_by_target_group(&scope()).await.unwrap().is_none());
    assert_eq!(
        submit(&h, "schedule-from-draft", "k", SCHEDULE).await.status,
        StatusCode::CREATED,
        "the key was never used by a refused request"
    );
}

#[tokio::test]
async fn authentication_and_account_are_checked_first() {
    let h = harness();
    let url = jobs_url(&scope(), "launch-from-draft");
    let anonymous = vec![("cint-api-version", API_VERSION), ("idempotency-key", "k")];
    let reply = send(&h.app, Method::POST, &url, &anonymous, "{bad").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    let other = vec![
        ("authorization", "Bearer token-other"),
        ("cint-api-version", API_VERSION),
        ("idempotency-key", "k"),
    ];
    let reply = send(&h.app, Method::POST, &url, &other, "{bad").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json["object"], "authorization_error");
}

#[tokio::test]
async fn reading_jobs_unknown_foreign_or_under_the_wrong_kind() {
    let h = harness();
    let created = submit(&h, "launch-from-draft", "read-me", LAUNCH).await;
    let location = created.headers["location"].to_str().unwrap().to_owned();
    let job_id = location.rsplit('/').next().unwrap().to_owned();

    let wrong_kind = format!("{}/{job_id}", jobs_url(&scope(), "schedule-from-draft"));
    let reply = send(&h.app, Method::GET, &wrong_kind, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json["object"], "not_found_error");

    let unknown = format!("{}/{}", jobs_url(&scope(), "launch-from-draft"), JobId::generate());
    assert_eq!(
        send(&h.app, Method::GET, &unknown, &authed(&[]), "").await.status,
        StatusCode::NOT_FOUND
    );

    let other_tg = Scope::new(
        scope().account_id,
        scope().project_id,
        fielding_core::TargetGroupId::parse(&FieldingRunId::generate().to_string()).unwrap(),
    );
    let elsewhere = format!("{}/{job_id}", jobs_url(&other_tg, "launch-from-draft"));
    assert_eq!(
        send(&h.app, Method::GET, &elsewhere, &authed(&[]), "").await.status,
        StatusCode::NOT_FOUND
    );

    let malformed = format!("{}/not-a-job", jobs_url(&scope(), "launch-from-draft"));
    assert_bad_request(&send(&h.app, Method::GET, &malformed, &authed(&[]), "").await, "job_id");

    let other = vec![
        ("authorization", "Bearer token-other"),
        ("cint-api-version", API_VERSION),
    ];
    assert_eq!(
        send(&h.app, Method::GET, &location, &other, "").await.status,
        StatusCode::FORBIDDEN
    );
    // A malformed job id is a 400 even for an account the caller may not use.
    assert_eq!(
        send(&h.app, Method::GET, &malformed, &other, "").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_storage_failure_is_a_500_and_a_retry_with_the_same_key_finishes_the_job() {
    let h = harness();
    h.faults.inject(Fault::Storage, 1);
    let reply = submit(&h, "schedule-from-draft", "flaky", SCHEDULE).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json["object"], "unexpected_internal_error");
    assert!(!reply.json["detail"].as_str().unwrap().contains("injected"));
    let retried = submit(&h, "schedule-from-draft", "flaky", SCHEDULE).await;
    assert_eq!(follow(&h, &retried).await.json["status"], "Completed");
}

#[tokio::test]
async fn a_job_abandoned_in_processing_is_finished_by_a_later_read() {
    let h = harness();
    // What a process that died right after recording the job leaves behind.
    let job = FieldingRunJob {
        id: JobId::generate(),
        scope: scope(),
        idempotency_key: IdempotencyKey::parse("abandoned").unwrap(),
        request: JobRequest::LaunchFromDraft {
            end_fielding_at: "2030-07-31T09:00:00Z".parse().unwrap(),
        },
        fielding_run_id: FieldingRunId::generate(),
        created_at: fielding_core::Clock::now(&h.clock),
        created_by: h.user,
        trace_id: None,
        state: JobState::Processing,
    };
    h.store.create_job(&job).await.unwrap();
    let url = format!("{}/{}", jobs_url(&scope(), "launch-from-draft"), job.id);
    let fresh = send(&h.app, Method::GET, &url, &authed(&[]), "").await;
    assert_eq!(
        fresh.json["status"], "Processing",
        "a young job may still be running elsewhere"
    );
    h.clock.advance(TimeDelta::seconds(11));
    let resumed = send(&h.app, Method::GET, &url, &authed(&[]), "").await;
    assert_eq!(resumed.json["status"], "Completed");
    assert_eq!(resumed.json["created_fielding_run_id"], job.fielding_run_id.to_string());
    let run = h.store.find_by_target_group(&scope()).await.unwrap().unwrap();
    assert_eq!(run.id, job.fielding_run_id);
}

#[tokio::test]
async fn a_router_nested_under_a_prefix_answers_a_location_under_it() {
    let h = harness();
    let app = Router::new().nest("/v1", h.app.clone());
    let headers = authed(&[("idempotency-key", "nested")]);
    let uri = format!("/v1{}", jobs_url(&scope(), "launch-from-draft"));
    let mut request = Request::builder().method(Method::POST).uri(&uri);
    for (name, value) in &headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(LAUNCH)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{uri}/")), "{location}");
    let mut follow = Request::builder().method(Method::GET).uri(&location);
    for (name, value) in authed(&[]) {
        follow = follow.header(name, value);
    }
    let job = app.oneshot(follow.body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(job.status(), StatusCode::OK, "the Location works as given");
}
