//! The server's whole axum app: the contract's routes ([`FieldingApi`])
//! under their base path (`/v1` by default), `GET /health` and
//! `GET /ready` ([`crate::health`]) at the root, the per-address limit
//! ([`crate::address_limit`]) and an access log.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use fielding_core::FieldingService;
use fielding_http::api_error::ApiError;
use fielding_http::auth::Authenticator;
use fielding_http::rate_limit::{RateLimitPolicy, RateLimiter};
use fielding_http::{ApiService, BasePath, FieldingApi, DEFAULT_BODY_LIMIT, DEFAULT_BULK_BODY_LIMIT};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::address_limit::{self, AddressLimiter};
use crate::health::{self, Health};
pub use crate::health::{HEALTH_PATH, READY_PATH};
use crate::limits::DEFAULT_BODY_READ_TIMEOUT;
use crate::telemetry::{self, SampledLog, REFUSAL_SUMMARY_EVERY};

/// How the API is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Requests per principal.
    pub rate_limit: RateLimitPolicy,
    /// Requests per client address, before authentication; `None` for no
    /// limit.
    pub address_rate_limit: Option<RateLimitPolicy>,
    /// The largest request body, in bytes.
    pub body_limit: usize,
    /// The largest body of a batch `POST` (a bulk job's list), in bytes.
    pub bulk_body_limit: usize,
    /// How long a request body may take to arrive in full (408 past it).
    pub body_read_timeout: Duration,
}

impl Default for ApiLimits {
    /// [`RateLimitPolicy::default`] per principal,
    /// [`address_limit::default_policy`] per address,
    /// [`DEFAULT_BODY_LIMIT`], [`DEFAULT_BULK_BODY_LIMIT`] for batch
    /// `POST`s and [`DEFAULT_BODY_READ_TIMEOUT`].
    fn default() -> Self {
        Self {
            rate_limit: RateLimitPolicy::default(),
            address_rate_limit: Some(address_limit::default_policy()),
            body_limit: DEFAULT_BODY_LIMIT,
            bulk_body_limit: DEFAULT_BULK_BODY_LIMIT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

/// The app and its rate limiters' buckets (for the housekeeping task that
/// forgets idle ones).
#[derive(Debug)]
pub struct App {
    /// Everything the server serves.
    pub router: Router,
    /// The API's per-principal buckets.
    pub rate_limiter: Arc<RateLimiter>,
    /// The per-address buckets, when that limit is on.
    pub address_limiter: Option<Arc<AddressLimiter>>,
}

/// The server's app: `GET /health` and `GET /ready` (reporting `store` as
/// the store's kind) at the root, next to the contract's routes under
/// `base_path` ([`FieldingApi::with_base_path`]; the server's default is the
/// contract's `/v1`), behind the per-address limit, with an access log
/// around everything.
///
/// `/health` and `/ready` need no token and skip the per-principal limit;
/// like every API response they carry `traceparent`. They stay at the root
/// whatever the base path, where orchestrators' probes expect them.
/// Anything else goes to the [`FieldingApi`] router, including its
/// contract-shaped 404 for unknown paths (and for the contract's paths
/// outside the base path).
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::FieldingService;
/// use fielding_http::auth::StaticTokens;
/// use fielding_http::BasePath;
/// use fielding_server::app::{app, ApiLimits};
/// let service = FieldingService::new(Arc::new(fielding_memory::MemoryStore::new()));
/// let app = app(service, Arc::new(StaticTokens::new()), "memory", ApiLimits::default(), BasePath::contract());
/// let _router: axum::Router = app.router;
/// ```
pub fn app(
    service: FieldingService,
    authenticator: Arc<dyn Authenticator>,
    store: &'static str,
    limits: ApiLimits,
    base_path: BasePath,
) -> App {
    app_with_shutdown(
        service,
        authenticator,
        store,
        limits,
        base_path,
        CancellationToken::new(),
    )
}

/// [`app`], whose change-feed long polls answer at once when `shutdown`
/// is cancelled ([`FieldingApi::with_shutdown`]), so that a graceful shutdown
/// does not wait out each long poll's `wait`. [`crate::Server`] cancels
/// it when it stops accepting connections.
pub fn app_with_shutdown(
    service: FieldingService,
    authenticator: Arc<dyn Authenticator>,
    store: &'static str,
    limits: ApiLimits,
    base_path: BasePath,
    shutdown: CancellationToken,
) -> App {
    app_and_front(service, authenticator, store, limits, base_path, shutdown).0
}

/// [`app_with_shutdown`], and the service its router falls back to for
/// every request ([`Front`]), for [`crate::Server`] to serve without the
/// router in front of it.
pub(crate) fn app_and_front(
    service: FieldingService,
    authenticator: Arc<dyn Authenticator>,
    store: &'static str,
    limits: ApiLimits,
    base_path: BasePath,
    shutdown: CancellationToken,
) -> (App, Front) {
    let api = FieldingApi::new(service.clone(), authenticator)
        .with_base_path(base_path)
        .with_rate_limit(limits.rate_limit)
        .with_body_limit(limits.body_limit)
        .with_bulk_body_limit(limits.bulk_body_limit)
        .with_body_timeout(limits.body_read_timeout)
        .with_shutdown(shutdown);
    let rate_limiter = api.rate_limiter();
    let not_allowed = || async { ApiError::method_not_allowed() };
    // Only `CHECK_PATHS` reach this router (see `Front`); the rest goes to
    // the API.
    let checks = Router::new()
        .route(HEALTH_PATH, get(health::liveness).fallback(not_allowed))
        .route(READY_PATH, get(health::readiness).fallback(not_allowed))
        .route(
            crate::prometheus::METRICS_PATH,
            get(crate::prometheus::render).fallback(not_allowed),
        )
        .layer(middleware::from_fn(fielding_http::trace_context::propagate))
        .with_state(Arc::new(Health::new(service, store)));
    let address_limiter = limits
        .address_rate_limit
        .map(|policy| Arc::new(AddressLimiter::new(policy)));
    let front = Front(Arc::new(FrontParts {
        refusals: SampledLog::new(REFUSAL_SUMMARY_EVERY),
        address_limiter: address_limiter.clone(),
        checks,
        api: api.into_service(),
    }));
    let router = Router::new().fallback_service(front.clone());
    let app = App {
        router,
        rate_limiter,
        address_limiter,
    };
    (app, front)
}

/// The access log outermost, then the per-address limit when there is
/// one, then the probes and the metrics ([`CHECK_PATHS`]) or the API.
///
/// Written as one `tower` service rather than `axum::middleware::from_fn`
/// layers and a router in front of the API: each `from_fn` layer boxes the
/// rest of the stack and its own future on every request, and each router
/// hop clones and boxes the service it falls back to. Here a request costs
/// one boxed future, whichever way it goes, and the order of the checks is
/// the same as the layers' was.
///
/// [`crate::Server`] serves it directly ([`Front::serve`]), with the peer's
/// address at hand; [`App::router`] is the same service behind a `Router`
/// that does nothing else (every request reaches its fallback).
#[derive(Clone)]
pub(crate) struct Front(Arc<FrontParts>);

struct FrontParts {
    refusals: SampledLog,
    address_limiter: Option<Arc<AddressLimiter>>,
    /// `/health`, `/ready` and the metrics, with their trace context.
    checks: Router,
    /// Everything else (its 401, 404 and 405 included).
    api: ApiService,
}

/// The paths the server answers itself, at the root; every other path is
/// the API's.
const CHECK_PATHS: [&str; 3] = [HEALTH_PATH, READY_PATH, crate::prometheus::METRICS_PATH];

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").finish_non_exhaustive()
    }
}

impl tower::Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both routes are axum services, always ready; each request calls
        // its own handle of them.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let front = Arc::clone(&self.0);
        // Behind `App::router`, the peer is the `ConnectInfo` the caller
        // put in the request, if any.
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        Box::pin(async move { Ok(access_log(&front, peer, request).await) })
    }
}

impl Front {
    /// Serves `request` from `peer` as [`App::router`] serves it with
    /// `peer` as its `ConnectInfo`: the same checks in the same order and
    /// the same answers (for a path that starts with `/` the router's
    /// fallback adds nothing to them, and for any other request target
    /// hyper writes the `Content-Length` the router would have added, so
    /// on the wire they are the same for every request; a test compares
    /// the two). The address travels as an argument, so the
    /// request's extensions stay empty unless a handler needs them.
    pub(crate) async fn serve(&self, peer: SocketAddr, request: Request) -> Response {
        access_log(&self.0, Some(peer), request).await
    }
}

/// The per-address limit, then the probes or the API.
async fn limited(front: &FrontParts, peer: Option<SocketAddr>, request: Request) -> Response {
    if let Some(refused) = front
        .address_limiter
        .as_ref()
        .zip(peer)
        .and_then(|(limiter, peer)| limiter.refusal_for(peer.ip()))
    {
        return refused;
    }
    let outcome = if CHECK_PATHS.contains(&request.uri().path()) {
        front.checks.clone().oneshot(request).await
    } else {
        front.api.clone().oneshot(request).await
    };
    match outcome {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// One log line per request (method, path, status, duration, trace id):
/// at `info` for answered API requests (a run's 404, 412 and 422
/// included); at `debug` for `/health` and `/ready` and for refusals
/// (401, 403, 429, 400, 405, 408, 413, 415: `fielding_http::refusal`),
/// which are summarised at `info` instead, at most once per
/// [`REFUSAL_SUMMARY_EVERY`], so neither probes nor a flood of refusals
/// fill the log. Every response is counted by status class.
async fn access_log(front: &FrontParts, peer: Option<SocketAddr>, request: Request) -> Response {
    let started = Instant::now();
    let path = request.uri().path();
    // Probes come every few seconds from orchestrators and need no token:
    // like refusals, they are not worth a line each at the default level.
    let probe = path == HEALTH_PATH || path == READY_PATH;
    // The method and path are kept only when a line may be written: a
    // filter that lets `debug` through lets `info` through too.
    let line = tracing::enabled!(target: "fielding_server::access", tracing::Level::INFO)
        .then(|| (request.method().clone(), path.to_owned()));
    let response = limited(front, peer, request).await;
    let status = response.status().as_u16();
    telemetry::count_response(status);
    // The statuses the API counts as refusals (not a run's 404, nor 412 or
    // 422: those are answers about the resource and stay at `info`).
    let refused = fielding_http::refusal::Refusal::of_status(response.status()).is_some();
    if refused {
        if let Some(summary) = front.refusals.record() {
            tracing::info!(
                target: "fielding_server::access",
                refused = summary.count,
                seconds = summary.over.as_secs_f64(),
                "requests refused since the previous summary (each logged at debug)"
            );
        }
    }
    let Some((method, path)) = line else {
        return response;
    };
    if (refused || probe) && !tracing::enabled!(target: "fielding_server::access", tracing::Level::DEBUG) {
        return response;
    }
    let trace_id = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(3..35))
        .unwrap_or("-")
        .to_owned();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if refused || probe {
        tracing::debug!(target: "fielding_server::access", %method, path, status, elapsed_ms, trace_id, "request");
    } else {
        tracing::info!(target: "fielding_server::access", %method, path, status, elapsed_ms, trace_id, "request");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use fielding_core::{AccountId, UserId};
    use fielding_core::{FieldingStore, INTERNAL_ERROR_DETAIL};
    use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
    use fielding_memory::MemoryStore;
    use fielding_testkit::{Fault, FaultyStore};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const LIST: &str = "/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs";

    fn build<S: FieldingStore + 'static>(store: Arc<S>) -> Router {
        build_at(store, BasePath::contract())
    }

    fn build_at<S: FieldingStore + 'static>(store: Arc<S>, base_path: BasePath) -> Router {
        let tokens = StaticTokens::new().with_token(
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
            base_path,
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
    async fn a_failing_store_fails_readiness_with_the_contract_error_body_but_not_liveness() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        store.faults().inject(Fault::Storage, 1);
        let (status, body_of_health) = {
            let (status, _, body) = send(build(store.clone()), get("/health")).await;
            (status, body)
        };
        assert_eq!(
            status,
            StatusCode::OK,
            "liveness does not read the store: {body_of_health}"
        );
        let (status, headers, body) = send(build(store), get("/ready")).await;
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
    async fn ready_reports_the_store_kind() {
        let (status, _, body) = send(build(Arc::new(MemoryStore::new())), get("/ready")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"status": "ready", "store": "memory"}));
    }

    #[tokio::test]
    async fn the_address_limit_refuses_a_flooding_address_with_429_and_retry_after() {
        let tokens = StaticTokens::new();
        let limits = ApiLimits {
            address_rate_limit: RateLimitPolicy::per_second(1, 2),
            ..ApiLimits::default()
        };
        let router = app(
            FieldingService::new(Arc::new(MemoryStore::new())),
            Arc::new(tokens),
            "memory",
            limits,
            BasePath::contract(),
        )
        .router;
        let from = |ip: &str| {
            let mut request = get("/health");
            let peer: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            request
        };
        for _ in 0..2 {
            let (status, _, _) = send(router.clone(), from("192.0.2.1")).await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, headers, body) = send(router.clone(), from("192.0.2.1")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(headers.contains_key("retry-after"));
        assert_eq!(body["object"], "too_many_requests_problem_details", "{body}");
        let (status, _, _) = send(router, from("192.0.2.2")).await;
        assert_eq!(status, StatusCode::OK, "other addresses are not affected");
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

    /// What the server serves (`Front::serve`, the peer as an argument) and
    /// what `App::router` serves (the peer as `ConnectInfo`) answer alike:
    /// status, headers in order (but the fresh span id of `traceparent`),
    /// body, a run's `GET` and `PUT` (the direct route), `HEAD` and the
    /// per-address limit included.
    #[tokio::test]
    async fn the_front_served_directly_answers_as_the_router() {
        let user_id = UserId::random();
        let tokens = StaticTokens::new().with_token(
            "good",
            Principal {
                user_id,
                accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
            },
        );
        // The burst covers every request below but the last three.
        let limits = ApiLimits {
            address_rate_limit: RateLimitPolicy::per_second(1, 11),
            ..ApiLimits::default()
        };
        // One run in both stores, and one fixed clock, so that the two
        // apps' answers (`last_changed_at` included) can be the same.
        let now = fielding_testkit::fixtures::run().build().last_changed_at;
        let scope = fielding_core::Scope::new(
            AccountId::new(101).unwrap(),
            fielding_testkit::fixtures::project_id(),
            fielding_testkit::fixtures::target_group_id(),
        );
        let run = fielding_testkit::fixtures::run()
            .with_scope(scope)
            .with_now(now)
            .build();
        let run_path = format!(
            "/v1/demand/accounts/101/projects/{}/target-groups/{}/fielding-runs/{}",
            run.project_id, run.target_group_id, run.id
        );
        let new_end =
            fielding_core::Timestamp::from_unix_millis(run.end_fielding_at.unix_millis() + 86_400_000).unwrap();
        let dates = serde_json::json!({
            "start_fielding_at": run.start_fielding_at,
            "end_fielding_at": new_end,
        })
        .to_string();
        // Two like apps, so that each sees the same requests, in the same
        // order, against its own per-address bucket.
        let build = || {
            let store = MemoryStore::new();
            store.seed(run.clone()).unwrap();
            let service =
                FieldingService::new(Arc::new(store)).with_clock(Arc::new(fielding_core::ManualClock::new(now)));
            app_and_front(
                service,
                Arc::new(tokens.clone()),
                "memory",
                limits,
                BasePath::contract(),
                CancellationToken::new(),
            )
        };
        let (app, _) = build();
        let (_, front) = build();
        let request = |method: &str, path: &str, token: bool, body: Option<&str>| {
            let mut request = axum::http::Request::builder().method(method).uri(path);
            if token {
                request = request
                    .header("Authorization", "Bearer good")
                    .header("Cint-API-Version", "2025-12-18");
            }
            match body {
                Some(body) => request
                    .header("Content-Type", "application/json")
                    .header("If-Match", "\"1\"")
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
                None => request.body(Body::empty()).unwrap(),
            }
        };
        async fn parts(response: Response) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
            let (parts, body) = response.into_parts();
            let headers = parts
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = value.to_str().unwrap();
                    // The trace id is the caller's or fresh; either way not
                    // the same for two requests.
                    let value = if name == "traceparent" { "00-..." } else { value };
                    (name.to_string(), value.to_owned())
                })
                .collect();
            let mut body = body.collect().await.unwrap().to_bytes().to_vec();
            // An error body's `id` is fresh for each answer.
            if let Ok(serde_json::Value::Object(mut error)) = serde_json::from_slice(&body) {
                if error.contains_key("object") && error.contains_key("id") {
                    error.insert("id".into(), serde_json::Value::Null);
                    body = serde_json::to_vec(&error).unwrap();
                }
            }
            (parts.status, headers, body)
        }
        let peer: std::net::SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let mut statuses = Vec::new();
        for (method, path, token, body) in [
            ("GET", HEALTH_PATH, false, None),
            ("HEAD", HEALTH_PATH, false, None),
            ("POST", HEALTH_PATH, false, None),
            ("GET", LIST, true, None),
            ("HEAD", LIST, true, None),
            ("GET", LIST, false, None),
            ("GET", "/nowhere", true, None),
            ("DELETE", LIST, true, None),
            ("GET", run_path.as_str(), true, None),
            ("PUT", run_path.as_str(), true, Some(dates.as_str())),
            ("GET", run_path.as_str(), true, None),
            // Past the address's burst of 11.
            ("GET", HEALTH_PATH, false, None),
            ("GET", LIST, true, None),
            ("HEAD", LIST, true, None),
        ] {
            let mut through_router = request(method, path, token, body);
            through_router.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let by_router = parts(app.router.clone().oneshot(through_router).await.unwrap()).await;
            let direct = parts(front.serve(peer, request(method, path, token, body)).await).await;
            assert_eq!(direct, by_router, "{method} {path}");
            statuses.push(direct.0.as_u16());
        }
        assert_eq!(
            statuses[8..],
            [200, 202, 200, 429, 429, 429],
            "the run's GET and PUT (202) succeeded, then the limit refused"
        );
    }

    /// The probes stay at the root whatever the base path; the contract's
    /// paths move under it, and are a 404 where they used to be.
    #[tokio::test]
    async fn the_probes_stay_at_the_root_under_any_base_path() {
        let authed = |path: &str| {
            axum::http::Request::get(path)
                .header("Authorization", "Bearer good")
                .header("Cint-API-Version", "2025-12-18")
                .body(Body::empty())
                .unwrap()
        };
        let unprefixed = LIST.strip_prefix("/v1").unwrap();
        for base in ["/", "/v1", "/api/fielding"] {
            let base_path: BasePath = base.parse().unwrap();
            let store = Arc::new(MemoryStore::new());
            for probe in [HEALTH_PATH, READY_PATH] {
                let (status, _, _) = send(build_at(store.clone(), base_path.clone()), get(probe)).await;
                assert_eq!(status, StatusCode::OK, "{base}: {probe}");
            }
            let (status, _, body) = send(
                build_at(store.clone(), base_path.clone()),
                authed(&base_path.join(unprefixed)),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{base}: {body}");
            if !base_path.is_root() {
                let (status, _, body) = send(build_at(store, base_path.clone()), authed(unprefixed)).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{base}: {body}");
                assert_eq!(body["object"], "not_found_error");
            }
        }
    }
}
