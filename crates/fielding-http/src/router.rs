//! The axum `Router` serving the contract's fielding-run endpoints.
//!
//! Every request goes through the same gates, in the contract's order:
//! authentication (401) → malformed path ids or `Cint-API-Version` (400) →
//! account not permitted (403) → not found (404) → missing or malformed
//! `If-Match` (400) → precondition (412) → body validation (400) →
//! lifecycle (422). The body's content is judged only after the
//! precondition holds, so a stale tag with a bad body is a 412; a body that
//! did not arrive whole in time (408), is too large (413) or is not
//! declared JSON (415) is refused before the run is read.
//!
//! Refusals are counted (see [`crate::refusal`]), not logged at `info`: an
//! anonymous flood must not become a flood of log lines.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fielding_core::FieldingService;
use tokio_util::sync::CancellationToken;

use crate::api_error::ApiError;
use crate::auth::{Authenticator, Principal};
use crate::base_path::BasePath;
use crate::rate_limit::{too_many_requests, RateLimitPolicy, RateLimiter};
use crate::refusal::Refusal;
use crate::state::{ApiState, BodyRules};
use crate::{bulk, feed, jobs, runs, top_level, trace_context};

/// The path every run endpoint lives under, relative to the API's
/// [`BasePath`] (see [`FieldingApi::with_base_path`]).
pub const BASE_PATH: &str = "/demand/accounts/{account_id}/projects/{project_id}/target-groups/{target_group_id}";

/// The default largest request body, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024;

/// The default largest request body of the batch endpoints, in bytes.
///
/// Their body lists up to `BulkJob::MAX_TARGET_GROUPS` (10,000) target
/// group ids; pretty-printed, an id takes about 40 bytes, so the largest
/// list a client may send is about 400 KB. 1 MiB admits it with room for
/// wider indentation, while every other endpoint keeps
/// [`DEFAULT_BODY_LIMIT`].
pub const DEFAULT_BULK_BODY_LIMIT: usize = 1024 * 1024;

/// The default longest time a request body may take to arrive whole.
///
/// A client's bodies here are at most [`DEFAULT_BODY_LIMIT`] bytes: 10 s
/// admits them at under 2 KB/s, far slower than any real client, while a
/// client that stops sending mid-body holds its connection and handler
/// for 10 s at most instead of forever. The largest batch body
/// ([`DEFAULT_BULK_BODY_LIMIT`]) needs about 100 KB/s to arrive within it.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the fielding-run [`Router`].
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::FieldingService;
/// use fielding_http::{auth::StaticTokens, FieldingApi};
/// let service = FieldingService::new(Arc::new(fielding_memory::MemoryStore::new()));
/// let app: axum::Router = FieldingApi::new(service, Arc::new(StaticTokens::new()))
///     .with_body_limit(8 * 1024)
///     .with_bulk_body_limit(512 * 1024)
///     .with_body_timeout(std::time::Duration::from_secs(5))
///     .with_base_path("/v1".parse().unwrap())
///     .router();
/// ```
#[derive(Clone)]
pub struct FieldingApi {
    service: FieldingService,
    gate: Gate,
    body: BodyRules,
    bulk_body_limit: usize,
    shutdown: CancellationToken,
    base_path: BasePath,
}

/// What the authentication middleware needs.
#[derive(Clone)]
struct Gate {
    authenticator: Arc<dyn Authenticator>,
    rate_limiter: Arc<RateLimiter>,
}

impl FieldingApi {
    /// The API over `service`, admitting the principals `authenticator` knows.
    pub fn new(service: FieldingService, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            service,
            gate: Gate {
                authenticator,
                rate_limiter: Arc::new(RateLimiter::new(RateLimitPolicy::default())),
            },
            body: BodyRules {
                limit: DEFAULT_BODY_LIMIT,
                timeout: DEFAULT_BODY_TIMEOUT,
            },
            bulk_body_limit: DEFAULT_BULK_BODY_LIMIT,
            shutdown: CancellationToken::new(),
            base_path: BasePath::root(),
        }
    }

    /// How many requests each principal may make (default
    /// [`RateLimitPolicy::default`]).
    pub fn with_rate_limit(mut self, policy: RateLimitPolicy) -> Self {
        self.gate.rate_limiter = Arc::new(RateLimiter::new(policy));
        self
    }

    /// The shared buckets, e.g. to call [`RateLimiter::forget_idle`] from a
    /// housekeeping task.
    pub fn rate_limiter(&self) -> Arc<RateLimiter> {
        self.gate.rate_limiter.clone()
    }

    /// The largest request body accepted (413 above it; default
    /// [`DEFAULT_BODY_LIMIT`]), except on the batch endpoints (see
    /// [`FieldingApi::with_bulk_body_limit`]).
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body.limit = bytes;
        self
    }

    /// The largest request body the batch endpoints
    /// (`POST .../batch-jobs/...`) accept (413 above it; default
    /// [`DEFAULT_BULK_BODY_LIMIT`]). It must admit the longest list a
    /// client may send: `BulkJob::MAX_TARGET_GROUPS` ids.
    pub fn with_bulk_body_limit(mut self, bytes: usize) -> Self {
        self.bulk_body_limit = bytes;
        self
    }

    /// The longest a request body may take to arrive whole, counted from
    /// the handler's first read of it (default [`DEFAULT_BODY_TIMEOUT`]).
    /// Past it the request is answered 408 with `Connection: close`. It
    /// bounds the body only: the time to send the headers is the server's
    /// to bound (see `fielding-server`'s header read timeout).
    ///
    /// The timer needs a tokio runtime with its time driver enabled
    /// (`#[tokio::main]` and `Builder::enable_all` do that).
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body.timeout = timeout;
        self
    }

    /// Tells long polls of the change feed (`GET .../fielding-run-changes?wait=N`)
    /// that the app is shutting down: once `token` is cancelled, those
    /// waiting answer at once with what there is (an empty page and the
    /// cursor to poll on from), and new ones do not wait. Without it a
    /// graceful shutdown waits for each long poll's `wait` (up to
    /// `MAX_FEED_WAIT`, 30 s) to run out.
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The path the contract's paths are served under (default
    /// [`BasePath::root`]: `/demand/...` as the contract writes it). The
    /// contract's server URL is `https://api.cint.com/v1`, so a client
    /// generated from it calls [`BasePath::contract`] (`/v1/demand/...`).
    ///
    /// Every route moves under it; requests outside it get the router's
    /// 404 (after authentication, as any unknown path). `Location` headers
    /// need nothing more: they are built from the path the request
    /// arrived at (axum's `OriginalUri`), so they carry this base path and
    /// any prefix the app nests the router under.
    pub fn with_base_path(mut self, base_path: BasePath) -> Self {
        self.base_path = base_path;
        self
    }

    /// The router, ready to be served or nested in your app, and open to
    /// customising like any axum `Router`: add routes beside the API's,
    /// `route_layer`s, merge it with others (a route of yours on one of
    /// the API's paths is refused at the merge).
    ///
    /// Its middleware (trace context, authentication and the rate limit)
    /// is on each route, as `Router::layer` puts it, and a request clones
    /// its route's whole stack; [`FieldingApi::into_service`] serves the
    /// same API with the middleware once around the routing, for about
    /// half the allocations per request.
    pub fn router(self) -> Router {
        let gate = self.gate.clone();
        self.routes()
            .layer(middleware::from_fn_with_state(gate, authenticate))
            .layer(middleware::from_fn(trace_context::propagate))
    }

    /// The API as one service, the middleware wrapping the routing as a
    /// whole rather than each route: what the reference server serves.
    /// Give it to `axum::serve`, or to your app as
    /// `Router::fallback_service` or `Router::nest_service`; requests on no
    /// route of the API still get its answers (401 without a token, then
    /// its 404 and 405).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use fielding_http::{FieldingApi, auth::StaticTokens};
    /// # let service = fielding_core::FieldingService::new(Arc::new(fielding_memory::MemoryStore::new()));
    /// let api = FieldingApi::new(service, Arc::new(StaticTokens::new()));
    /// let app = axum::Router::new()
    ///     .route("/health", axum::routing::get(|| async { "ok" }))
    ///     .fallback_service(api.into_service());
    /// # let _: axum::Router = app;
    /// ```
    pub fn into_service(self) -> ApiService {
        // `Router::layer` wraps each route (and the fallbacks) on its own,
        // so every request clones and boxes its route's whole middleware
        // stack again, a few dozen allocations a request; here each
        // request goes through the middleware once, matched or not (a test
        // sends unknown paths and methods without a token and gets 401),
        // and as plain code rather than `from_fn` layers, each of which
        // would box the rest of the stack and its own future again.
        let gate = self.gate.clone();
        let base = self.base_path.prefix().to_owned();
        let state = self.state();
        ApiService(Arc::new(ApiParts {
            gate,
            base,
            state: Arc::clone(&state),
            routes: self.routes_with(state),
        }))
    }

    /// The handlers' state.
    fn state(&self) -> Arc<ApiState> {
        Arc::new(ApiState {
            service: self.service.clone(),
            body: self.body,
            bulk_body: BodyRules {
                limit: self.bulk_body_limit,
                ..self.body
            },
            shutdown: self.shutdown.clone(),
        })
    }

    /// The API's routes and fallbacks, with their state, no middleware.
    fn routes(self) -> Router {
        let state = self.state();
        self.routes_with(state)
    }

    /// [`FieldingApi::routes`] over `state`.
    fn routes_with(self, state: Arc<ApiState>) -> Router {
        let base = self.base_path.prefix();
        let runs = format!("{base}{BASE_PATH}/fielding-runs");
        let run = format!("{runs}/{{fielding_run_id}}");
        let jobs = format!("{base}{BASE_PATH}/fielding-run-jobs");
        let feed = format!("{base}{}", feed::FEED_PATH);
        let router = Router::new()
            .route(&runs, get(runs::list_runs))
            .route(&run, get(runs::get_run).put(runs::update_dates))
            .route(&format!("{run}/complete"), post(runs::complete))
            .route(&format!("{run}/pause"), post(runs::pause))
            .route(&format!("{run}/resume"), post(runs::resume))
            .route(&format!("{run}/relaunch"), post(runs::relaunch))
            .route(&format!("{run}/launch-now"), post(runs::launch_now))
            .route(&format!("{run}/changes"), get(feed::run_changes))
            .route(&feed, get(feed::account_changes))
            .route(&format!("{jobs}/launch-from-draft"), post(jobs::launch_from_draft))
            .route(&format!("{jobs}/schedule-from-draft"), post(jobs::schedule_from_draft))
            .route(
                &format!("{jobs}/launch-from-draft/{{job_id}}"),
                get(jobs::get_launch_job),
            )
            .route(
                &format!("{jobs}/schedule-from-draft/{{job_id}}"),
                get(jobs::get_schedule_job),
            );
        bulk::routes(router, base)
            .fallback(|| async { ApiError::no_route() })
            .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
            .with_state(state)
    }
}

/// The API as one `tower` service ([`FieldingApi::into_service`]): every
/// request goes through the trace context, authentication and the rate
/// limit once, then the routing.
///
/// Cloning it is cheap (one shared handle); its future is boxed once per
/// request.
#[derive(Clone)]
pub struct ApiService(Arc<ApiParts>);

/// What [`ApiService`] holds: the gate and the routes behind it.
struct ApiParts {
    gate: Gate,
    /// [`BasePath::prefix`].
    base: String,
    /// The routes' state, for the runs' `GET` and `PUT` served without
    /// the router (see `runs::serve_run_directly`).
    state: Arc<ApiState>,
    routes: Router,
}

impl std::fmt::Debug for ApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiService").finish_non_exhaustive()
    }
}

impl tower::Service<Request> for ApiService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The routes are an axum `Router`, always ready; each request
        // calls its own handle of it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let parts = Arc::clone(&self.0);
        let is_head = request.method() == axum::http::Method::HEAD;
        Box::pin(async move {
            let ApiParts {
                gate,
                base,
                state,
                routes,
            } = &*parts;
            let response = trace_context::traced(request, |request, trace_id| {
                gated(gate, request, move |request, principal| async move {
                    // The most frequent requests, a run's `GET` and `PUT`,
                    // skip the router's matching, path parameters and
                    // boxing; they get the same handler code, and the
                    // principal as an argument rather than an extension.
                    let (mut request, principal) = match runs::serve_run_directly(state, base, request, principal).await
                    {
                        Ok(response) => return response,
                        Err(back) => back,
                    };
                    // The router's handlers read both from the extensions.
                    request.extensions_mut().insert(trace_id);
                    request.extensions_mut().insert(principal);
                    // A `Router` is always ready: no `poll_ready` to wait on.
                    match tower::Service::call(&mut routes.clone(), request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                })
            })
            .await;
            // The gate's refusals come from no route: they get what a
            // top-level `Router` gives every answer.
            Ok(top_level::finish(is_head, response))
        })
    }
}

/// The middleware form of [`gated`], for [`FieldingApi::router`]'s routes.
async fn authenticate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    gated(&gate, request, |mut request, principal| {
        request.extensions_mut().insert(principal);
        next.run(request)
    })
    .await
}

/// Authentication, then the principal's rate limit, then `run`: a
/// credential the authenticator finds ([`Authenticator::credential`], by
/// default exactly one `Authorization: Bearer <token>`) and accepts (401),
/// and a token left in the principal's bucket (429 with `Retry-After`).
/// `run` gets the principal beside the request, to put in its extensions
/// for handlers that read it from there.
async fn gated<F, R>(gate: &Gate, request: Request, run: R) -> Response
where
    R: FnOnce(Request, Principal) -> F,
    F: Future<Output = Response>,
{
    let Some(credential) = gate.authenticator.credential(request.headers()) else {
        return ApiError::unauthorized().into_response();
    };
    match gate.authenticator.authenticate(credential).await {
        Ok(principal) => {
            if let Err(seconds) = gate.rate_limiter.check(&principal.user_id) {
                Refusal::RateLimited.count();
                return too_many_requests(seconds);
            }
            run(request, principal).await
        }
        Err(err) => {
            // Counted by the 401 itself; a line per refusal only when asked.
            tracing::debug!(reason = err.reason(), "authentication refused");
            ApiError::unauthorized().into_response()
        }
    }
}
