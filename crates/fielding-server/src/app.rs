//! The server's whole axum app: the contract's routes ([`FieldingApi`]),
//! `GET /health`, and an access log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fielding_core::{FieldingService, Scope, INTERNAL_ERROR_DETAIL};
use fielding_http::api_error::ApiError;
use fielding_http::auth::Authenticator;
use fielding_http::problem::{object, ErrorBody};
use fielding_http::rate_limit::{RateLimitPolicy, RateLimiter};
use fielding_http::{FieldingApi, DEFAULT_BODY_LIMIT};
use serde::Serialize;

/// The health check's path.
pub const HEALTH_PATH: &str = "/health";

/// How long the health check waits for the store before answering 503.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How the API is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Requests per principal.
    pub rate_limit: RateLimitPolicy,
    /// The largest request body, in bytes.
    pub body_limit: usize,
}

impl Default for ApiLimits {
    /// [`RateLimitPolicy::default`] and [`DEFAULT_BODY_LIMIT`].
    fn default() -> Self {
        Self {
            rate_limit: RateLimitPolicy::default(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// The app and the rate limiter's buckets (for the housekeeping task that
/// calls [`RateLimiter::forget_idle`]).
#[derive(Debug)]
pub struct App {
    /// Everything the server serves.
    pub router: Router,
    /// The API's per-principal buckets.
    pub rate_limiter: Arc<RateLimiter>,
}

/// The server's app: `GET /health` (reporting `store` as its kind) next to
/// the contract's routes, with an access log around both.
///
/// `/health` needs no token and is not rate limited; like every API
/// response it carries `traceparent`. Anything else goes to the
/// [`FieldingApi`] router, including its contract-shaped 404 for unknown
/// paths.
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::FieldingService;
/// use fielding_http::auth::StaticTokens;
/// use fielding_server::app::{app, ApiLimits};
/// let service = FieldingService::new(Arc::new(fielding_memory::MemoryStore::new()));
/// let app = app(service, Arc::new(StaticTokens::new()), "memory", ApiLimits::default());
/// let _router: axum::Router = app.router;
/// ```
pub fn app(
    service: FieldingService,
    authenticator: Arc<dyn Authenticator>,
    store: &'static str,
    limits: ApiLimits,
) -> App {
    let api = FieldingApi::new(service.clone(), authenticator)
        .rate_limit(limits.rate_limit)
        .body_limit(limits.body_limit);
    let rate_limiter = api.rate_limiter();
    let health = Router::new()
        .route(
            HEALTH_PATH,
            get(health).fallback(|| async { ApiError::method_not_allowed() }),
        )
        .layer(middleware::from_fn(fielding_http::trace_context::propagate))
        .with_state(Arc::new(Health { service, store }));
    let router = health.merge(api.router()).layer(middleware::from_fn(access_log));
    App { router, rate_limiter }
}

struct Health {
    service: FieldingService,
    store: &'static str,
}

#[derive(Serialize)]
struct Healthy {
    status: &'static str,
    store: &'static str,
}

/// 200 `{"status":"ok","store":KIND}` when a read through the store
/// succeeds within [`HEALTH_TIMEOUT`]; 503 with the contract's error body
/// (`unexpected_internal_error`) otherwise, the cause logged under the id
/// the body shows.
async fn health(State(health): State<Arc<Health>>) -> Response {
    let probe = async {
        // Any scope will do: the read proves the store answers.
        let scope =
            Scope::parse("1", "00000000000000000000000000", "00000000000000000000000000").map_err(|e| e.to_string())?;
        health.service.find(&scope).await.map_err(|e| format!("{e:?}"))?;
        Ok::<(), String>(())
    };
    let outcome = match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("the store did not answer within {HEALTH_TIMEOUT:?}")),
    };
    match outcome {
        Ok(()) => Json(Healthy {
            status: "ok",
            store: health.store,
        })
        .into_response(),
        Err(cause) => {
            let body = ErrorBody::new(object::INTERNAL, INTERNAL_ERROR_DETAIL);
            tracing::error!(error_id = %body.id, store = health.store, cause = %cause, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// One log line per request: method, path, status, duration, trace id.
async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let trace_id = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(3..35))
        .unwrap_or("-")
        .to_owned();
    tracing::info!(
        target: "fielding_server::access",
        %method,
        path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        trace_id,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use fielding_core::FieldingStore;
    use fielding_core::{AccountId, UserId};
    use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
    use fielding_memory::MemoryStore;
    use fielding_testkit::{Fault, FaultyStore};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const LIST: &str = "/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs";

    fn build<S: FieldingStore + 'static>(store: Arc<S>) -> Router {
        let tokens = StaticTokens::new().with(
            "good",
            Principal {
                user_id: UserId::random(),
                accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
            },
        );
        app(
            FieldingService::new(store),
            Arc::new(tokens),
            "memory",
            ApiLimits::default(),
        )
        .router
    }

    async fn send(
        router: Router,
        request: axum::http::Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = router.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (parts.status, parts.headers, json)
    }

    fn get(path: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn health_is_ok_with_the_store_kind_and_a_traceparent() {
        let (status, headers, body) = send(build(Arc::new(MemoryStore::new())), get("/health")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"status": "ok", "store": "memory"}));
        assert!(headers.contains_key("traceparent"));
    }

    #[tokio::test]
    async fn health_continues_the_callers_trace() {
        let request = axum::http::Request::get("/health")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .body(Body::empty())
            .unwrap();
        let (_, headers, _) = send(build(Arc::new(MemoryStore::new())), request).await;
        let traceparent = headers["traceparent"].to_str().unwrap();
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{traceparent}"
        );
        assert!(traceparent.ends_with("-01"), "{traceparent}");
    }

    #[tokio::test]
    async fn a_failing_store_is_a_503_with_the_contract_error_body() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        store.faults().inject(Fault::Storage, 1);
        let (status, headers, body) = send(build(store), get("/health")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["object"], "unexpected_internal_error");
        assert_eq!(body["detail"], INTERNAL_ERROR_DETAIL);
        assert!(
            body["id"].as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
            "{body}"
        );
        assert!(headers.contains_key("traceparent"));
    }

    #[tokio::test]
    async fn other_methods_on_health_are_a_405_in_the_error_format() {
        let request = axum::http::Request::post("/health").body(Body::empty()).unwrap();
        let (status, headers, body) = send(build(Arc::new(MemoryStore::new())), request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["object"], "bad_request_error");
        assert!(headers.contains_key("traceparent"));
    }

    #[tokio::test]
    async fn the_api_routes_and_their_fallback_still_answer() {
        let store = Arc::new(MemoryStore::new());
        let request = axum::http::Request::get(LIST)
            .header("Authorization", "Bearer good")
            .header("Cint-API-Version", "2025-12-18")
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = send(build(store.clone()), request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"], serde_json::json!([]));

        let (status, headers, _) = send(build(store.clone()), get(LIST)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key("traceparent"));

        let request = axum::http::Request::get("/nowhere")
            .header("Authorization", "Bearer good")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = send(build(store), request).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["object"], "not_found_error");
        assert!(headers.contains_key("traceparent"));
    }
}
