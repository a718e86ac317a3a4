//! `FieldingApi::with_base_path`: the routes move under it, paths outside it
//! are the router's 404, and the `Location` of creation and bulk jobs
//! follows it (and any prefix the app nests the router under), so a client
//! that follows the header lands on the job. In-process (tower `oneshot`).

mod common {
    pub mod contract;
    pub mod oneshot;
}

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use common::oneshot::{send, Reply};
use fielding_core::{AccountId, BulkAction, FieldingService, Scope, Status, UserId};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::{BasePath, FieldingApi};
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

const API_VERSION: &str = "2025-12-18";
const SCHEDULE: &str =
    r#"{"start_fielding_at":"2030-07-01T09:00:00.000Z","end_fielding_at":"2030-07-31T09:00:00.000Z"}"#;

fn api(store: &MemoryStore, base_path: BasePath) -> Router {
    let tokens = StaticTokens::new().with_token(
        "t",
        Principal {
            user_id: UserId::random(),
            accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
        },
    );
    let service = FieldingService::new(Arc::new(store.clone()));
    FieldingApi::new(service, Arc::new(tokens))
        .with_base_path(base_path)
        .router()
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

/// The contract path of the creation jobs of `kind` in a fresh target group.
fn creation_jobs(kind: &str) -> String {
    let scope = Scope::new(
        AccountId::new(101).unwrap(),
        fixtures::project_id(),
        fixtures::target_group_id(),
    );
    format!(
        "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-run-jobs/{kind}",
        scope.account_id, scope.project_id, scope.target_group_id
    )
}

/// The `Location` of a 201, checked to be the submitting path plus a job id.
#[track_caller]
fn location_under(created: &Reply, submitted: &str) -> String {
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    let location = created.headers["location"].to_str().unwrap().to_owned();
    let job = location
        .strip_prefix(&format!("{submitted}/"))
        .unwrap_or_else(|| panic!("Location {location:?} is not under {submitted:?}"));
    assert!(fielding_core::JobId::parse(job).is_ok(), "{location}");
    location
}

/// A creation job and a bulk job submitted under `prefix` (`/v1`, or empty
/// for `/`): each `Location` is under the submitting path, prefix
/// included, and answers the job.
async fn locations_follow(base_path: BasePath, prefix: &str) {
    let store = MemoryStore::new();
    let app = api(&store, base_path);

    let submitted = format!("{prefix}{}", creation_jobs("schedule-from-draft"));
    let created = send(
        &app,
        Method::POST,
        &submitted,
        &headers(&[("idempotency-key", "k")]),
        SCHEDULE,
    )
    .await;
    let location = location_under(&created, &submitted);
    let job = send(&app, Method::GET, &location, &headers(&[]), "").await;
    assert_eq!(job.status, StatusCode::OK, "{}", job.json);
    assert_eq!(job.json["status"], "Completed");

    let project = fixtures::project_id();
    let run = fixtures::run()
        .with_scope(Scope::new(
            AccountId::new(101).unwrap(),
            project,
            fixtures::target_group_id(),
        ))
        .with_status(Status::Live)
        .build();
    store.seed(run.clone()).unwrap();
    let submitted = format!(
        "{prefix}/demand/accounts/101/projects/{project}/batch-jobs/{}",
        BulkAction::Pause.path_segment()
    );
    let body = json!({ "target_group_ids": [run.target_group_id] }).to_string();
    let created = send(
        &app,
        Method::POST,
        &submitted,
        &headers(&[("idempotency-key", "k")]),
        &body,
    )
    .await;
    let location = location_under(&created, &submitted);
    let job = send(&app, Method::GET, &location, &headers(&[]), "").await;
    assert_eq!(job.status, StatusCode::OK, "{}", job.json);
    assert_eq!(job.json["status"], "Processing", "no runner here: recorded, not worked");
}

#[tokio::test]
async fn locations_are_under_v1_when_the_api_is() {
    locations_follow(BasePath::contract(), "/v1").await;
}

#[tokio::test]
async fn locations_are_at_the_root_by_default() {
    locations_follow(BasePath::root(), "").await;
    locations_follow(BasePath::default(), "").await;
}

#[tokio::test]
async fn only_paths_under_the_base_path_are_served() {
    let store = MemoryStore::new();
    let run = fixtures::run()
        .with_scope(Scope::new(
            AccountId::new(101).unwrap(),
            fixtures::project_id(),
            fixtures::target_group_id(),
        ))
        .build();
    store.seed(run.clone()).unwrap();
    let path = format!(
        "/demand/accounts/101/projects/{}/target-groups/{}/fielding-runs/{}",
        run.project_id, run.target_group_id, run.id
    );
    // Not checked against the contract: `/api/fielding/v1/...` is no path
    // of it, though the router serves it there.
    let served = |base: &str, asked: &str| {
        let app = api(&store, base.parse().unwrap());
        let asked = asked.to_owned();
        async move { call(app, Method::GET, &asked, "").await.0 }
    };
    assert_eq!(served("/v1", &format!("/v1{path}")).await, StatusCode::OK);
    assert_eq!(served("/v1", &path).await, StatusCode::NOT_FOUND);
    assert_eq!(served("/v1", &format!("/v2{path}")).await, StatusCode::NOT_FOUND);
    assert_eq!(served("/v1", &format!("/V1{path}")).await, StatusCode::NOT_FOUND);
    assert_eq!(served("/", &path).await, StatusCode::OK);
    assert_eq!(served("/", &format!("/v1{path}")).await, StatusCode::NOT_FOUND);
    assert_eq!(
        served("/api/fielding/v1", &format!("/api/fielding/v1{path}")).await,
        StatusCode::OK
    );
    assert_eq!(
        served("/api/fielding/v1", &format!("/api/v1{path}")).await,
        StatusCode::NOT_FOUND
    );
}

/// An app that nests the router under a prefix of its own: the `Location`
/// carries both the app's prefix and the API's base path.
#[tokio::test]
async fn a_location_carries_the_prefix_the_app_nests_the_router_under() {
    let store = MemoryStore::new();
    let app = Router::new()
        .route("/status", get(|| async { "ok" }))
        .nest("/internal", api(&store, BasePath::contract()));
    let submitted = format!("/internal/v1{}", creation_jobs("schedule-from-draft"));
    let (status, location, _) = call(app.clone(), Method::POST, &submitted, SCHEDULE).await;
    assert_eq!(status, StatusCode::CREATED);
    let location = location.expect("a 201 carries Location");
    assert!(location.starts_with(&format!("{submitted}/")), "{location}");
    let (status, _, job) = call(app.clone(), Method::GET, &location, "").await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "Completed", "{job}");
    assert_eq!(
        call(app, Method::GET, "/status", "").await.0,
        StatusCode::OK,
        "the app's own route"
    );
}

/// One request with the usual headers (and an idempotency key), not
/// checked against the contract: its status, `Location` and JSON body.
async fn call(app: Router, method: Method, uri: &str, body: &str) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("idempotency-key", "k");
    for (name, value) in headers(&[]) {
        request = request.header(name, value);
    }
    let response = app
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, location, json)
}
