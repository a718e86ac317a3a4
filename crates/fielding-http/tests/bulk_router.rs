//! The batch endpoints through the router, in-process (tower `oneshot`),
//! every response checked against `fielding-batch-openapi.yml`. Jobs are
//! worked with `BulkRunner::run_until_idle`, so each step is seen in order:
//! `Processing` before the runner, the outcomes after it. Refusals are
//! counted under their reason like every other route's.

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
use fielding_core::{
    AccountId, BulkAction, BulkRunner, BulkRunnerOptions, FieldingRun, FieldingService, FieldingStore, JobId,
    ProjectId, Scope, Status, UserId,
};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::refusal::{self, Refusal};
use fielding_http::FieldingApi;
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;
use tower::ServiceExt;

const API_VERSION: &str = "2025-12-18";

struct Harness {
    app: Router,
    store: MemoryStore,
    runner: BulkRunner,
    user: UserId,
}

fn harness() -> Harness {
    let store = MemoryStore::new();
    let user = UserId::random();
    let tokens = StaticTokens::new()
        .with_token(
            "t",
            Principal {
                user_id: user,
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
    let service = FieldingService::new(Arc::new(store.clone()));
    let app = FieldingApi::new(service.clone(), Arc::new(tokens))
        .with_body_limit(1024)
        .with_bulk_body_limit(2048)
        .with_body_timeout(Duration::from_millis(100))
        .router();
    let runner = BulkRunner::new(service, BulkRunnerOptions::default());
    Harness {
        app,
        store,
        runner,
        user,
    }
}

impl Harness {
    /// A run of account 101 in `project` and a fresh target group.
    fn seed(&self, project: ProjectId, status: Status) -> FieldingRun {
        let scope = Scope::new(AccountId::new(101).unwrap(), project, fixtures::target_group_id());
        let run = fixtures::run()
            .with_scope(scope)
            .with_status(status)
            .with_version(7)
            .build();
        self.store.seed(run.clone()).unwrap();
        run
    }
}

fn jobs_url(project: ProjectId, action: BulkAction) -> String {
    format!(
        "/demand/accounts/101/projects/{project}/batch-jobs/{}",
        action.path_segment()
    )
}

fn headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        ("authorization", "Bearer t"),
        ("cint-api-version", API_VERSION),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    headers
}

#[tokio::test]
async fn a_job_reads_processing_until_the_runner_has_worked_it() {
    let h = harness();
    let project = fixtures::project_id();
    let live = h.seed(project, Status::Live);
    let scheduled = h.seed(project, Status::Scheduled);
    let ghost = fixtures::target_group_id();
    let url = jobs_url(project, BulkAction::Pause);
    let body = json!({ "target_group_ids": [scheduled.target_group_id, ghost, live.target_group_id] }).to_string();
    let created = send(&h.app, Method::POST, &url, &headers(&[("idempotency-key", "k")]), &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    assert!(created.json.is_null(), "no body");
    let location = created.headers["location"].to_str().unwrap().to_owned();
    let job_id = location.strip_prefix(&format!("{url}/")).expect("under the POST path");
    assert!(JobId::parse(job_id).is_ok());

    // Recorded, not worked: every list empty.
    let job = send(&h.app, Method::GET, &location, &headers(&[]), "").await;
    assert_eq!(job.status, StatusCode::OK);
    let expected_pending = json!({
        "job_id": job_id,
        "created_at": job.json["created_at"],
        "created_by": h.user.to_string(),
        "status": "Processing",
        "updated_target_groups": { "data": [], "has_more": false },
        "failed_target_groups": { "data": [], "has_more": false },
    });
    assert_eq!(job.json, expected_pending);

    assert_eq!(h.runner.run_until_idle().await.unwrap(), 1);
    let job = send(&h.app, Method::GET, &location, &headers(&[]), "").await;
    let expected_done = json!({
        "job_id": job_id,
        "created_at": job.json["created_at"],
        "created_by": h.user.to_string(),
        "status": "Completed",
        "updated_target_groups": { "data": [{ "target_group_id": live.target_group_id }], "has_more": false },
        "failed_target_groups": {
            "data": [
                {
                    "target_group_id": scheduled.target_group_id,
                    "failure_reason": { "code": "StatusTransitionNotAllowed", "description": "Status transition is not allowed." },
                },
                {
                    "target_group_id": ghost,
                    "failure_reason": { "code": "TargetGroupNotFound", "description": "Target group not found." },
                },
            ],
            "has_more": false,
        },
    });
    assert_eq!(job.json, expected_done);
    let paused = h.store.get(&live.key()).await.unwrap().unwrap();
    assert_eq!((paused.status, paused.version.get()), (Status::Paused, 8));
}

#[tokio::test]
async fn the_batch_limit_is_the_batch_routes_own() {
    let h = harness();
    let project = fixtures::project_id();
    let run = h.seed(project, Status::Live);
    let url = jobs_url(project, BulkAction::Complete);
    // Over the general limit (1 KiB), under the batch one (2 KiB).
    let padded = format!(
        r#"{{"target_group_ids":["{}"]{}}}"#,
        run.target_group_id,
        " ".repeat(1500)
    );
    let reply = send(
        &h.app,
        Method::POST,
        &url,
        &headers(&[("idempotency-key", "a")]),
        &padded,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let over = format!("{padded}{}", " ".repeat(1024));
    let reply = send(&h.app, Method::POST, &url, &headers(&[("idempotency-key", "b")]), &over).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.json);
    assert_eq!(reply.headers["connection"], "close");
    // A run's PUT keeps the general limit.
    let put = format!(
        "/demand/accounts/101/projects/{project}/target-groups/{}/fielding-runs/{}",
        run.target_group_id, run.id
    );
    let reply = send(&h.app, Method::PUT, &put, &headers(&[("if-match", "\"7\"")]), &padded).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.json);
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

async fn refusals_and_outcomes() {
    let h = harness();
    let project = fixtures::project_id();
    let run = h.seed(project, Status::Live);
    let url = jobs_url(project, BulkAction::Pause);
    let body = json!({ "target_group_ids": [run.target_group_id] }).to_string();
    let keyed = headers(&[("idempotency-key", "k")]);

    // Outcomes of well-formed requests: not refusals.
    let created = send(&h.app, Method::POST, &url, &keyed, &body).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let location = created.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(
        send(&h.app, Method::GET, &location, &keyed, "").await.status,
        StatusCode::OK
    );
    let unknown = format!("{url}/{}", JobId::generate());
    assert_eq!(
        send(&h.app, Method::GET, &unknown, &keyed, "").await.status,
        StatusCode::NOT_FOUND
    );
    let wrong_action = location.replace("pause-fielding", "resume-fielding");
    assert_eq!(
        send(&h.app, Method::GET, &wrong_action, &keyed, "").await.status,
        StatusCode::NOT_FOUND
    );

    // Refusals.
    let anonymous = [("cint-api-version", API_VERSION), ("idempotency-key", "k")];
    assert_eq!(
        send(&h.app, Method::POST, &url, &anonymous, &body).await.status,
        StatusCode::UNAUTHORIZED
    );
    let other = [
        ("authorization", "Bearer other"),
        ("cint-api-version", API_VERSION),
        ("idempotency-key", "k"),
    ];
    assert_eq!(
        send(&h.app, Method::GET, &location, &other, "").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&h.app, Method::POST, &url, &headers(&[]), &body).await.status,
        StatusCode::BAD_REQUEST
    );
    let duplicates = json!({ "target_group_ids": [run.target_group_id, run.target_group_id] }).to_string();
    assert_eq!(
        send(&h.app, Method::POST, &url, &keyed, &duplicates).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(&h.app, Method::GET, &url, &keyed, "").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let reply = send(&h.app, Method::POST, &url, &keyed, &" ".repeat(4096)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut plain = keyed.clone();
    plain[2] = ("content-type", "text/plain");
    assert_eq!(
        send(&h.app, Method::POST, &url, &plain, &body).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // A body that never ends: 408 once the 100 ms pass.
    let (_sender, stalled) = Channel::<Bytes, std::convert::Infallible>::new(1);
    let mut request = Request::builder().method(Method::POST).uri(&url);
    for (name, value) in &keyed {
        request = request.header(*name, *value);
    }
    let response = h
        .app
        .clone()
        .oneshot(request.body(Body::new(stalled)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    assert_eq!(parts.status, StatusCode::REQUEST_TIMEOUT);
    let bytes = body.collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    common::contract::contract().check(&Method::POST, &url, parts.status, &parts.headers, &json);
}

#[test]
fn batch_refusals_are_counted_under_their_reason_and_outcomes_are_not() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _installed = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(refusals_and_outcomes());
    let expected: BTreeMap<String, u64> = [
        (Refusal::Unauthenticated, 1),
        (Refusal::Forbidden, 1),
        (Refusal::BadRequest, 2),
        (Refusal::NoRoute, 1),
        (Refusal::UnsupportedMediaType, 1),
        (Refusal::PayloadTooLarge, 1),
        (Refusal::RequestTimeout, 1),
    ]
    .into_iter()
    .map(|(refusal, count)| (refusal.label().to_owned(), count))
    .collect();
    assert_eq!(counts(&snapshotter), expected);
}
