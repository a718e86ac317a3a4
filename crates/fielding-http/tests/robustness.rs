//! Generated malformed requests: never a 5xx, never a panic, never a
//! changed run. In-process for now; the live-server variant comes with the
//! server binary.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use fielding_core::{AccountId, FieldingService, Scope, Status, UserId};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::FieldingApi;
use fielding_memory::MemoryStore;
use fielding_testkit::fixtures;
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::PUT),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
    ]
}

/// Path segments: sometimes the real one, sometimes junk.
fn segment(real: String) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(real),
        1 => "[A-Za-z0-9%._~-]{0,30}",
        1 => Just("%FF%FE".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("99999999999999999999".to_owned()),
    ]
}

fn suffix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/pause".to_owned()),
        Just("/resume".to_owned()),
        Just("/complete".to_owned()),
        Just("/relaunch".to_owned()),
        Just("/launch-now".to_owned()),
        "/[a-z-]{0,12}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\"1\"".to_vec()),
        Just(b"*".to_vec()),
        Just(b"W/\"1\"".to_vec()),
        proptest::collection::vec(0x20u8..0x7f, 0..40),
        proptest::collection::vec(
            any::<u8>().prop_filter("header-safe", |b| *b >= 0x20 && *b != 0x7f),
            0..40
        ),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"{}".to_vec()),
        Just(br#"{"start_fielding_at":"2031-01-01T00:00:00Z","end_fielding_at":"2031-02-01T00:00:00Z"}"#.to_vec()),
        Just(br#"{"start_fielding_at":null,"end_fielding_at":[]}"#.to_vec()),
        Just(br#"{"start_fielding_at":"9999-12-31T23:59:59.999Z","end_fielding_at":"0000-01-01T00:00:00Z"}"#.to_vec()),
        "\\PC{0,64}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn malformed_requests_never_5xx_never_panic_never_change_the_run(
        method in methods(),
        seg in (segment("101".into()), segment("P".into()), segment("T".into()), segment("R".into())),
        tail in suffix(),
        if_match in proptest::option::of(header_value()),
        api_version in proptest::option::of(header_value()),
        traceparent in proptest::option::of(header_value()),
        authorization in proptest::option::of(header_value()),
        payload in body(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async move {
            let store = MemoryStore::new();
            let scope = Scope::new(AccountId::new(101).unwrap(), fixtures::project_id(), fixtures::target_group_id());
            let run = fixtures::run().scope(scope).status(Status::Live).version(3).build();
            store.seed(run.clone()).unwrap();
            let tokens = StaticTokens::new().with("t", Principal { user_id: UserId::random(), accounts: AccountAccess::All });
            let app = FieldingApi::new(FieldingService::new(Arc::new(store.clone())), Arc::new(tokens)).router();

            let real = |s: &String, v: String| if s == "P" || s == "T" || s == "R" { v } else { s.clone() };
            let path = format!(
                "/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs/{}{}",
                seg.0,
                real(&seg.1, run.project_id.to_string()),
                real(&seg.2, run.target_group_id.to_string()),
                real(&seg.3, run.id.to_string()),
                tail
            );
            let Ok(mut request) = Request::builder().method(method).uri(&path).body(Body::from(payload)) else {
                return Ok(()); // not a request a client could send
            };
            let headers = request.headers_mut();
            let auth = authorization.unwrap_or_else(|| b"Bearer t".to_vec());
            for (name, value) in [("authorization", Some(auth)), ("if-match", if_match), ("cint-api-version", api_version), ("traceparent", traceparent)] {
                if let Some(value) = value {
                    if let Ok(value) = axum::http::HeaderValue::from_bytes(&value) {
                        headers.append(name, value);
                    }
                }
            }
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let has_trace = response.headers().contains_key("traceparent");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            prop_assert!(!status.is_server_error(), "{status} for {path}: {}", String::from_utf8_lossy(&bytes));
            prop_assert!(has_trace, "no traceparent on {status}");
            if !status.is_success() && !bytes.is_empty() {
                let json: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| TestCaseError::fail(format!("error body is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))))?;
                prop_assert!(json["object"].is_string(), "{json}");
            }
            if !status.is_success() {
                prop_assert_eq!(store.run(&run.key()), Some(run.clone()), "a refused request changed the run");
            }
            Ok(())
        })?;
    }
}
