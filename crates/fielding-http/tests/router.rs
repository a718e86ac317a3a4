//! The contract's cases through the router, in-process (tower `oneshot`).
//! Every response is checked against the contract's schemas.

mod common {
    pub mod contract;
    pub mod oneshot;
}

use common::oneshot::{send, Reply};

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::Router;
use fielding_core::{AccountId, FieldingRun, FieldingService, Status, UserId};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::FieldingApi;
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;

const TOKEN: &str = "token-101";
const API_VERSION: &str = "2025-12-18";

struct Harness {
    app: Router,
    store: MemoryStore,
    user: UserId,
}

fn harness() -> Harness {
    harness_with(FieldingApi::router)
}

/// The API as one service ([`FieldingApi::into_service`]) behind an empty
/// app, as the reference server serves it.
fn service_harness() -> Harness {
    harness_with(|api| Router::new().fallback_service(api.into_service()))
}

fn harness_with(app: impl FnOnce(FieldingApi) -> Router) -> Harness {
    let store = MemoryStore::new();
    let user = UserId::random();
    let tokens = StaticTokens::new()
        .with_token(
            TOKEN,
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
    let service = FieldingService::new(Arc::new(store.clone()));
    let app = app(FieldingApi::new(service, Arc::new(tokens)).with_body_limit(1024));
    Harness { app, store, user }
}

/// A live run of account 101 at version 7.
fn seed(h: &Harness, status: Status, version: u64) -> FieldingRun {
    let scope = fielding_core::Scope::new(
        AccountId::new(101).unwrap(),
        fixtures::project_id(),
        fixtures::target_group_id(),
    );
    let run = fixtures::run()
        .with_scope(scope)
        .with_status(status)
        .with_version(version)
        .build();
    h.store.seed(run.clone()).unwrap();
    run
}

fn run_url(run: &FieldingRun) -> String {
    format!(
        "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs/{}",
        run.account_id, run.project_id, run.target_group_id, run.id
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

fn new_dates(run: &FieldingRun) -> String {
    let end = run.end_fielding_at.checked_add(chrono::TimeDelta::days(1)).unwrap();
    format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        run.start_fielding_at, end
    )
}

async fn put(h: &Harness, run: &FieldingRun, extra: &[(&str, &str)], body: &str) -> Reply {
    send(&h.app, Method::PUT, &run_url(run), &authed(extra), body).await
}

#[track_caller]
fn assert_error(reply: &Reply, status: StatusCode, object: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.json);
    assert_eq!(reply.json["object"], object, "{:?}", reply.json);
    assert!(reply.json["id"]
        .as_str()
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()));
    assert!(reply.json["detail"].is_string());
    assert!(
        reply.headers.contains_key("traceparent"),
        "every response carries traceparent"
    );
}

#[tokio::test]
async fn current_etag_is_202_and_a_later_get_returns_the_new_etag() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let reply = put(&h, &run, &[("if-match", "\"7\"")], &new_dates(&run)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.json);
    assert_eq!(reply.headers["etag"], "\"8\"");
    assert_eq!(reply.json["id"], run.id.to_string());
    let got = send(&h.app, Method::GET, &run_url(&run), &authed(&[]), "").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["etag"], "\"8\"");
    assert_eq!(got.json["version"], 8);
    assert_eq!(got.json["last_changed_by"], h.user.to_string());
}

#[tokio::test]
async fn stale_etag_is_412_and_nothing_changes() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let reply = put(&h, &run, &[("if-match", "\"6\"")], &new_dates(&run)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
    assert_eq!(h.store.run(&run.key()), Some(run));
}

#[tokio::test]
async fn if_match_lists_and_lines() {
    for lines in [
        vec!["\"6\", \"7\""],
        vec!["\"6\"", "\"7\""],
        vec!["\"7\", ,"],
        vec!["*"],
    ] {
        let h = harness();
        let run = seed(&h, Status::Live, 7);
        let extra: Vec<(&str, &str)> = lines.iter().map(|l| ("if-match", *l)).collect();
        let reply = put(&h, &run, &extra, &new_dates(&run)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{lines:?}: {:?}", reply.json);
    }
}

#[tokio::test]
async fn weak_tag_is_412() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let reply = put(&h, &run, &[("if-match", "W/\"7\"")], &new_dates(&run)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
}

#[tokio::test]
async fn missing_or_unquoted_if_match_is_400_naming_it() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    for extra in [vec![], vec![("if-match", "7")]] {
        let reply = put(&h, &run, &extra, &new_dates(&run)).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
        assert_eq!(reply.json["invalid_params"][0]["name"], "If-Match");
    }
}

#[tokio::test]
async fn unknown_run_is_404_with_star_or_stale_tag_or_none() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let ghost = fielding_core::FieldingRun {
        id: fielding_core::FieldingRunId::generate(),
        ..run.clone()
    };
    for extra in [vec![("if-match", "*")], vec![("if-match", "\"6\"")], vec![]] {
        let reply = put(&h, &ghost, &extra, &new_dates(&run)).await;
        assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    }
}

#[tokio::test]
async fn no_credentials_is_401_with_a_bearer_challenge_even_with_a_stale_tag() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    for auth in [None, Some("Bearer nope"), Some("Basic dXNlcjpwYXNz"), Some("Bearer")] {
        let mut headers = vec![("cint-api-version", API_VERSION), ("if-match", "\"6\"")];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        let reply = send(&h.app, Method::PUT, &run_url(&run), &headers, &new_dates(&run)).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
    }
}

/// An app's own credential: an API key in `x-api-key` (issue 15's
/// existing app), read by overriding `Authenticator::credential`.
struct ApiKeyOf101 {
    user: UserId,
}

#[async_trait::async_trait]
impl fielding_http::auth::Authenticator for ApiKeyOf101 {
    fn credential<'h>(&self, headers: &'h axum::http::HeaderMap) -> Option<&'h str> {
        headers.get("x-api-key")?.to_str().ok()
    }

    async fn authenticate(&self, key: &str) -> Result<Principal, fielding_http::auth::AuthError> {
        if key != "key-101" {
            return Err(fielding_http::auth::AuthError::new("unknown API key"));
        }
        Ok(Principal {
            user_id: self.user,
            accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
        })
    }
}

#[tokio::test]
async fn an_authenticator_reads_its_credential_from_the_header_it_chooses() {
    let user = UserId::random();
    for serve_as_service in [false, true] {
        let store = MemoryStore::new();
        let service = FieldingService::new(Arc::new(store.clone()));
        let api = FieldingApi::new(service, Arc::new(ApiKeyOf101 { user }));
        let app = if serve_as_service {
            Router::new().fallback_service(api.into_service())
        } else {
            api.router()
        };
        let h = Harness { app, store, user };
        let run = seed(&h, Status::Live, 7);
        let version = [("cint-api-version", API_VERSION)];

        let with_key = [("x-api-key", "key-101"), version[0]];
        let found = send(&h.app, Method::GET, &run_url(&run), &with_key, "").await;
        assert_eq!(found.status, StatusCode::OK, "{:?}", found.json);

        // The bearer header is not this authenticator's credential: without
        // the key it is a 401, and the authenticator is not asked.
        let bearer_only = [("authorization", "Bearer key-101"), version[0]];
        let wrong_key = [("x-api-key", "key-999"), version[0]];
        for headers in [&bearer_only[..], &wrong_key[..], &version[..]] {
            let reply = send(&h.app, Method::GET, &run_url(&run), headers, "").await;
            assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }

        // A change made with the key is recorded as the key's user.
        let headers = [
            ("x-api-key", "key-101"),
            version[0],
            ("content-type", "application/json"),
            ("if-match", "\"7\""),
        ];
        let changed = send(&h.app, Method::PUT, &run_url(&run), &headers, &new_dates(&run)).await;
        assert_eq!(changed.status, StatusCode::ACCEPTED, "{:?}", changed.json);
        assert_eq!(h.store.run(&run.key()).map(|run| run.last_changed_by), Some(user));
    }
}

#[tokio::test]
async fn the_bare_service_answers_like_a_router_around_it() {
    // `into_service()` served with no `Router` around it (e.g. straight to
    // `tower::ServiceExt::oneshot` or a hyper service): its own answers, the
    // gate's 401 and 429 included, carry `Content-Length`, and a `HEAD`
    // gets no body, as behind a `Router`.
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let store = MemoryStore::new();
    let service = FieldingService::new(Arc::new(store.clone()));
    let tokens = StaticTokens::new().with_token(
        TOKEN,
        Principal {
            user_id: UserId::random(),
            accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
        },
    );
    let policy = fielding_http::rate_limit::RateLimitPolicy::per_second(1, 1).unwrap();
    let api = FieldingApi::new(service, Arc::new(tokens)).with_rate_limit(policy);
    let h = Harness {
        app: Router::new(),
        store,
        user: UserId::random(),
    };
    let run = seed(&h, Status::Live, 7);
    let bare = api.into_service();
    let request = |method: Method, token: Option<&str>| {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(run_url(&run))
            .header("cint-api-version", API_VERSION);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(Body::empty()).unwrap()
    };
    // 401 (no token), 200 (the one request the bucket admits), 429.
    let mut expected = vec![StatusCode::UNAUTHORIZED, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].into_iter();
    for (method, token) in [
        (Method::GET, None),
        (Method::GET, Some(TOKEN)),
        (Method::GET, Some(TOKEN)),
    ] {
        let response = bare.clone().oneshot(request(method, token)).await.unwrap();
        assert_eq!(Some(response.status()), expected.next());
        let length = response.headers().get("content-length").cloned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
        assert_eq!(length, Some(body.len().into()), "{body:?}");
    }
    let head = bare.clone().oneshot(request(Method::HEAD, None)).await.unwrap();
    assert_eq!(head.status(), StatusCode::UNAUTHORIZED);
    assert!(head.headers().contains_key("content-length"));
    assert!(head.into_body().collect().await.unwrap().to_bytes().is_empty());
}

#[tokio::test]
async fn unknown_paths_and_methods_are_401_without_a_token_and_carry_trace_headers() {
    // Whether the middleware is on each route (`router`) or around the
    // routing (`into_service`): what matches no route, or no method of
    // one, is still authenticated first and traced.
    for h in [harness(), service_harness()] {
        let run = seed(&h, Status::Live, 7);
        let headers = [("cint-api-version", API_VERSION)];
        let unknown_path = format!("{}/explode", run_url(&run));
        for (method, path) in [
            (Method::GET, "/nope"),
            (Method::POST, unknown_path.as_str()),
            (Method::DELETE, run_url(&run).as_str()),
        ] {
            let reply = send(&h.app, method.clone(), path, &headers, "").await;
            assert_error(&reply, StatusCode::UNAUTHORIZED, "authorization_error");
            assert!(reply.headers.contains_key("traceparent"), "{method} {path}");
        }
        let authed_reply = send(&h.app, Method::DELETE, &run_url(&run), &authed(&[]), "").await;
        assert_error(&authed_reply, StatusCode::METHOD_NOT_ALLOWED, "bad_request_error");
        let found = send(&h.app, Method::GET, &run_url(&run), &authed(&[]), "").await;
        assert_eq!(found.status, StatusCode::OK);
        assert_eq!(h.store.run(&run.key()), Some(run));
    }
}

#[tokio::test]
async fn the_router_can_be_customised_like_any_router() {
    // `router()` keeps its routes: a `route_layer` runs on them, and a
    // fallback of the app's does not shadow them.
    let h = harness_with(|api| {
        api.router()
            .route_layer(axum::middleware::map_response(
                |mut response: axum::response::Response| async move {
                    response
                        .headers_mut()
                        .insert("x-app", axum::http::HeaderValue::from_static("yes"));
                    response
                },
            ))
            .fallback(|| async { StatusCode::IM_A_TEAPOT })
    });
    let run = seed(&h, Status::Live, 7);
    let found = send(&h.app, Method::GET, &run_url(&run), &authed(&[]), "").await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.headers["x-app"], "yes");
}

#[tokio::test]
async fn another_accounts_principal_is_403() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let headers = [
        ("authorization", "Bearer token-other"),
        ("cint-api-version", API_VERSION),
        ("if-match", "\"7\""),
    ];
    let reply = send(&h.app, Method::PUT, &run_url(&run), &headers, &new_dates(&run)).await;
    assert_error(&reply, StatusCode::FORBIDDEN, "authorization_error");
    assert_eq!(h.store.run(&run.key()), Some(run));
}

#[tokio::test]
async fn stale_tag_with_malformed_json_is_412() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let reply = put(&h, &run, &[("if-match", "\"6\"")], "{not json").await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
}

#[tokio::test]
async fn end_before_start_is_400_naming_the_field() {
    let h = harness();
    // Both dates in the future and the start not in the past (a scheduled
    // run may move it): only "end after start" can answer.
    let run = seed(&h, Status::Scheduled, 7);
    let in_days = |days| (chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339();
    let body = format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        in_days(10),
        in_days(5)
    );
    let reply = put(&h, &run, &[("if-match", "\"7\"")], &body).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    assert_eq!(
        reply.json["invalid_params"].as_array().map(Vec::len),
        Some(1),
        "{}",
        reply.json
    );
    assert_eq!(reply.json["invalid_params"][0]["name"], "end_fielding_at");
}

#[tokio::test]
async fn body_problems_name_every_field() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let reply = put(
        &h,
        &run,
        &[("if-match", "\"7\"")],
        r#"{"start_fielding_at": 5, "color": "red"}"#,
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    let mut names: Vec<&str> = reply.json["invalid_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["color", "end_fielding_at", "start_fielding_at"]);
}

#[tokio::test]
async fn oversized_body_is_413_in_the_error_format() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let reply = put(&h, &run, &[("if-match", "\"7\"")], &" ".repeat(4096)).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "bad_request_error");
}

#[tokio::test]
async fn completed_run_is_422_and_with_a_stale_tag_412() {
    let h = harness();
    let run = seed(&h, Status::Completed, 7);
    let reply = put(&h, &run, &[("if-match", "\"7\"")], &new_dates(&run)).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
    let reply = put(&h, &run, &[("if-match", "\"6\"")], &new_dates(&run)).await;
    assert_error(&reply, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
}

#[tokio::test]
async fn replaying_a_successful_put_is_412() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let first = put(&h, &run, &[("if-match", "\"7\"")], &new_dates(&run)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let replay = put(&h, &run, &[("if-match", "\"7\"")], &new_dates(&run)).await;
    assert_error(&replay, StatusCode::PRECONDITION_FAILED, "precondition_failed_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_puts_on_one_version_exactly_one_wins() {
    for _ in 0..20 {
        let h = harness();
        let run = seed(&h, Status::Live, 7);
        let body_a = new_dates(&run);
        let end = run.end_fielding_at.checked_add(chrono::TimeDelta::days(2)).unwrap();
        let body_b = format!(
            r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
            run.start_fielding_at, end
        );
        let (a, b) = tokio::join!(
            put(&h, &run, &[("if-match", "\"7\"")], &body_a),
            put(&h, &run, &[("if-match", "\"7\"")], &body_b)
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::PRECONDITION_FAILED]);
        assert_eq!(h.store.run(&run.key()).unwrap().version.get(), 8);
        assert_eq!(h.store.change_records(&run.key()).len(), 2);
    }
}

#[tokio::test]
async fn commands_answer_204_with_the_new_etag_and_launch_now_its_dates() {
    let h = harness();
    let run = seed(&h, Status::Live, 7);
    let url = run_url(&run);
    let pause = send(
        &h.app,
        Method::POST,
        &format!("{url}/pause"),
        &authed(&[("if-match", "\"7\"")]),
        "",
    )
    .await;
    assert_eq!(pause.status, StatusCode::NO_CONTENT);
    assert_eq!(pause.headers["etag"], "\"8\"");
    let resume = send(
        &h.app,
        Method::POST,
        &format!("{url}/resume"),
        &authed(&[("if-match", "\"8\"")]),
        "{}",
    )
    .await;
    assert_eq!(resume.status, StatusCode::NO_CONTENT);
    let bad = send(
        &h.app,
        Method::POST,
        &format!("{url}/pause"),
        &authed(&[("if-match", "\"9\"")]),
        r#"{"x":1}"#,
    )
    .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "bad_request_error");
    let complete = send(
        &h.app,
        Method::POST,
        &format!("{url}/complete"),
        &authed(&[("if-match", "\"9\"")]),
        "",
    )
    .await;
    assert_eq!(complete.status, StatusCode::NO_CONTENT);
    let again = send(
        &h.app,
        Method::POST,
        &format!("{url}/complete"),
        &authed(&[("if-match", "\"10\"")]),
        "",
    )
    .await;
    assert_error(&again, StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_error");
    let relaunch = send(
        &h.app,
        Method::POST,
        &format!("{url}/relaunch"),
        &authed(&[("if-match", "\"10\"")]),
        "",
    )
    .await;
    assert_eq!(relaunch.status, StatusCode::NO_CONTENT);
    assert_eq!(relaunch.headers["etag"], "\"11\"");

    let scheduled = seed(&h, Status::Scheduled, 1);
    let launch = send(
        &h.app,
        Method::POST,
        &format!("{}/launch-now", run_url(&scheduled)),
        &authed(&[("if-match", "\"1\"")]),
        "",
    )
    .await;
    assert_eq!(launch.status, StatusCode::OK, "{:?}", launch.json);
    assert_eq!(launch.headers["etag"], "\"2\"");
    assert!(launch.json["start_fielding_at"].as_str().unwrap().ends_with('Z'));
    assert!(launch.json["end_fielding_at"].is_string());
}

#[tokio::test]
async fn list_has_zero_or_one_run() {
    let h = harness();
    let run = seed(&h, Status::Live, 3);
    let url = run_url(&run);
    let list_url = &url[..url.rfind('/').unwrap()];
    let reply = send(&h.app, Method::GET, list_url, &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["has_more"], false);
    assert_eq!(reply.json["data"][0]["version"], 3);
    let empty_url = format!(
        "/demand/accounts/101/projects/{}/target-groups/{}/fielding-runs",
        fixtures::project_id(),
        fixtures::target_group_id()
    );
    let reply = send(&h.app, Method::GET, &empty_url, &authed(&[]), "").await;
    assert_eq!(reply.json["data"], serde_json::json!([]));
}

#[tokio::test]
async fn malformed_path_ids_and_api_version_are_400_naming_each() {
    let h = harness();
    let reply = send(
        &h.app,
        Method::GET,
        "/demand/accounts/0/projects/lower/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs/x",
        &[("authorization", "Bearer token-101")],
        "",
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "bad_request_error");
    let names: Vec<&str> = reply.json["invalid_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["account_id", "project_id", "fielding_run_id", "Cint-API-Version"]
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_format_with_trace_headers() {
    let h = harness();
    let reply = send(&h.app, Method::GET, "/nope", &authed(&[]), "").await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found_error");
    let run = seed(&h, Status::Live, 1);
    let reply = send(&h.app, Method::DELETE, &run_url(&run), &authed(&[]), "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.json["object"], "bad_request_error");
}

#[tokio::test]
async fn trace_context_is_continued_or_restarted() {
    let h = harness();
    let run = seed(&h, Status::Live, 1);
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let reply = send(
        &h.app,
        Method::GET,
        &run_url(&run),
        &authed(&[("traceparent", incoming), ("tracestate", "congo=t61rcWkgMzE")]),
        "",
    )
    .await;
    let out = reply.headers["traceparent"].to_str().unwrap();
    assert_eq!(&out[..36], &incoming[..36]);
    assert_ne!(&out[36..52], &incoming[36..52]);
    assert_eq!(reply.headers["tracestate"], "congo=t61rcWkgMzE");

    let bad = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
    let reply = send(
        &h.app,
        Method::GET,
        &run_url(&run),
        &authed(&[("traceparent", bad), ("tracestate", "a=b")]),
        "",
    )
    .await;
    let out = reply.headers["traceparent"].to_str().unwrap();
    assert!(!out.to_lowercase().contains("0af7651916cd43dd8448eb211c80319c"));
    assert!(!reply.headers.contains_key("tracestate"));

    let unauthorized = send(&h.app, Method::GET, &run_url(&run), &[("traceparent", incoming)], "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert!(unauthorized.headers["traceparent"]
        .to_str()
        .unwrap()
        .starts_with(&incoming[..36]));
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_a_digits_only_retry_after_and_trace_headers() {
    let store = MemoryStore::new();
    let user = UserId::random();
    let tokens = StaticTokens::new().with_token(
        TOKEN,
        Principal {
            user_id: user,
            accounts: AccountAccess::All,
        },
    );
    let service = FieldingService::new(Arc::new(store.clone()));
    let app = FieldingApi::new(service, Arc::new(tokens))
        .with_rate_limit(fielding_http::rate_limit::RateLimitPolicy::per_second(1, 2).unwrap())
        .router();
    let url = "/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs";
    for _ in 0..2 {
        assert_eq!(
            send(&app, Method::GET, url, &authed(&[]), "").await.status,
            StatusCode::OK
        );
    }
    let refused = send(&app, Method::GET, url, &authed(&[]), "").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after = refused.headers["retry-after"].to_str().unwrap();
    assert!(
        !retry_after.is_empty() && retry_after.bytes().all(|b| b.is_ascii_digit()),
        "{retry_after}"
    );
    assert!(retry_after.parse::<u64>().unwrap() >= 1);
    assert_eq!(refused.json["object"], "too_many_requests_problem_details");
    assert!(refused.json["details"].is_string());
    assert!(refused.headers.contains_key("traceparent"));
    // Without credentials it is still a 401, not a 429.
    let anonymous = send(&app, Method::GET, url, &[("cint-api-version", API_VERSION)], "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// `into_service` answers a run's `GET` and `PUT` without the router (see
/// `docs/http.md`); every answer is the one the router gives, good or bad:
/// the same status, headers and body (but for what is fresh per request:
/// the trace headers, an error's `id`, and the time and author of the
/// change, each harness having its own user).
#[tokio::test]
async fn a_runs_get_and_put_answer_the_same_with_or_without_the_router() {
    let routed = harness();
    let direct = service_harness();
    let run = seed(&routed, Status::Live, 7);
    direct.store.seed(run.clone()).unwrap();
    let url = run_url(&run);
    let id = run.id.to_string();
    let dates = new_dates(&run);
    let bad_body = r#"{"start_fielding_at":1,"end_fielding_at":"x","extra":{"a":1,"a":2}}"#.to_owned();
    let plain = [
        ("authorization", "Bearer token-101"),
        ("cint-api-version", API_VERSION),
        ("content-type", "text/plain"),
    ];
    let no_version = [("authorization", "Bearer token-101")];
    type Case<'a> = (Method, String, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (Method::GET, url.clone(), authed(&[]), String::new()),
        (Method::GET, format!("{url}?x=1"), authed(&[]), String::new()),
        (Method::GET, url.clone(), no_version.to_vec(), String::new()),
        (Method::GET, url.replace("/101/", "/202/"), authed(&[]), String::new()),
        (Method::GET, url.replace("/101/", "/1%301/"), authed(&[]), String::new()),
        (Method::GET, url.replace("/101/", "/x/"), authed(&[]), String::new()),
        (Method::GET, url.replace(&id, "nope"), authed(&[]), String::new()),
        (
            Method::GET,
            url.replace(&id, "01BTGNYV6HRNK8K8VKZASZCFZZ"),
            authed(&[]),
            String::new(),
        ),
        (Method::GET, format!("{url}/"), authed(&[]), String::new()),
        (Method::PUT, url.clone(), authed(&[]), dates.clone()),
        (
            Method::PUT,
            url.clone(),
            authed(&[("if-match", "\"6\"")]),
            dates.clone(),
        ),
        (Method::PUT, url.clone(), authed(&[("if-match", "nope")]), dates.clone()),
        (Method::PUT, url.clone(), authed(&[("if-match", "\"7\"")]), bad_body),
        (
            Method::PUT,
            url.clone(),
            authed(&[("if-match", "\"7\"")]),
            "[]".to_owned(),
        ),
        (
            Method::PUT,
            url.clone(),
            authed(&[("if-match", "\"7\"")]),
            "{".to_owned(),
        ),
        (Method::PUT, url.clone(), plain.to_vec(), dates.clone()),
        (
            Method::PUT,
            url.clone(),
            authed(&[("if-match", "\"7\"")]),
            "x".repeat(2048),
        ),
        (
            Method::PUT,
            url.clone(),
            authed(&[("if-match", "\"7\"")]),
            dates.clone(),
        ),
        (Method::GET, url.clone(), authed(&[]), String::new()),
        (Method::PUT, url.clone(), authed(&[("if-match", "*")]), dates.clone()),
    ];
    for (method, path, headers, body) in cases {
        let a = send(&routed.app, method.clone(), &path, &headers, &body).await;
        let b = send(&direct.app, method.clone(), &path, &headers, &body).await;
        let what = format!("{method} {path} {body:.40}");
        assert_eq!(a.status, b.status, "{what}: {:?} vs {:?}", a.json, b.json);
        let fresh = ["traceparent", "tracestate", "date"];
        let kept = |reply: &Reply, user: UserId| {
            let mut headers: Vec<(String, String)> = reply
                .headers
                .iter()
                .filter(|(name, _)| !fresh.contains(&name.as_str()))
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_owned()))
                .collect();
            headers.sort();
            let mut json = reply.json.clone();
            if let Some(fields) = json.as_object_mut() {
                if fields.contains_key("object") {
                    fields.remove("id");
                }
                fields.remove("last_changed_at");
                // Each harness has its own user: each change is its own.
                if let Some(by) = fields.remove("last_changed_by") {
                    assert!(by == run.last_changed_by.to_string() || by == user.to_string(), "{by}");
                }
            }
            (headers, json)
        };
        assert_eq!(kept(&a, routed.user), kept(&b, direct.user), "{what}");
    }
    assert_eq!(
        routed.store.run(&run.key()).map(|run| run.version),
        direct.store.run(&run.key()).map(|run| run.version)
    );
}
