//! The axum `Router` serving the contract's fielding-run endpoints.
//!
//! Every request goes through the same gates, in the contract's order:
//! authentication (401) → malformed path ids or `Cint-API-Version` (400) →
//! account not permitted (403) → not found (404) → missing or malformed
//! `If-Match` (400) → precondition (412) → body validation (400) →
//! lifecycle (422). The body is read only after the precondition holds, so a
//! stale tag with a bad body is a 412.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use fielding_core::{
    Command, ETag, FieldingRun, FieldingRunId, FieldingService, IfMatch, InvalidParam, RunKey, Scope, Timestamp,
};
use http_body_util::LengthLimitError;
use serde_json::{json, Map, Value};
use tracing::Instrument;

use crate::api_error::ApiError;
use crate::auth::{Authenticator, Principal};
use crate::jobs;
use crate::problem::TooManyRequests;
use crate::rate_limit::{RateLimitPolicy, RateLimiter};
use crate::trace_context::TraceContext;

/// The path every endpoint lives under.
pub const BASE_PATH: &str = "/demand/accounts/{account_id}/projects/{project_id}/target-groups/{target_group_id}";

/// The default largest request body, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024;

/// Builds the fielding-run [`Router`].
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::FieldingService;
/// use fielding_http::{auth::StaticTokens, FieldingApi};
/// let service = FieldingService::new(Arc::new(fielding_memory::MemoryStore::new()));
/// let app: axum::Router = FieldingApi::new(service, Arc::new(StaticTokens::new()))
///     .body_limit(8 * 1024)
///     .router();
/// ```
#[derive(Clone)]
pub struct FieldingApi {
    pub(crate) service: FieldingService,
    authenticator: Arc<dyn Authenticator>,
    rate_limiter: Arc<RateLimiter>,
    body_limit: usize,
}

impl FieldingApi {
    /// The API over `service`, admitting the principals `authenticator` knows.
    pub fn new(service: FieldingService, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            service,
            authenticator,
            rate_limiter: Arc::new(RateLimiter::new(RateLimitPolicy::default())),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// How many requests each principal may make (default
    /// [`RateLimitPolicy::default`]).
    pub fn rate_limit(mut self, policy: RateLimitPolicy) -> Self {
        self.rate_limiter = Arc::new(RateLimiter::new(policy));
        self
    }

    /// The shared buckets, e.g. to call [`RateLimiter::forget_idle`] from a
    /// housekeeping task.
    pub fn rate_limiter(&self) -> Arc<RateLimiter> {
        self.rate_limiter.clone()
    }

    /// The largest request body accepted (413 above it).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The router, ready to be served or nested in your app.
    pub fn router(self) -> Router {
        let runs = format!("{BASE_PATH}/fielding-runs");
        let run = format!("{runs}/{{fielding_run_id}}");
        let jobs = format!("{BASE_PATH}/fielding-run-jobs");
        let state = Arc::new(self);
        Router::new()
            .route(&runs, get(list_runs))
            .route(&run, get(get_run).put(update_dates))
            .route(&format!("{run}/complete"), post(complete))
            .route(&format!("{run}/pause"), post(pause))
            .route(&format!("{run}/resume"), post(resume))
            .route(&format!("{run}/relaunch"), post(relaunch))
            .route(&format!("{run}/launch-now"), post(launch_now))
            .route(&format!("{jobs}/launch-from-draft"), post(jobs::launch_from_draft))
            .route(&format!("{jobs}/schedule-from-draft"), post(jobs::schedule_from_draft))
            .route(
                &format!("{jobs}/launch-from-draft/{{job_id}}"),
                get(jobs::get_launch_job),
            )
            .route(
                &format!("{jobs}/schedule-from-draft/{{job_id}}"),
                get(jobs::get_schedule_job),
            )
            .fallback(|| async { ApiError::no_route() })
            .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
            .layer(middleware::from_fn_with_state(state.clone(), authenticate))
            .layer(middleware::from_fn(trace_context))
            .with_state(state)
    }
}

pub(crate) type AppState = State<Arc<FieldingApi>>;
type ScopePath = Result<Path<(String, String, String)>, PathRejection>;
type RunPath = Result<Path<(String, String, String, String)>, PathRejection>;

/// Outermost layer: continues the caller's trace (or starts one), records
/// the trace id on the request's span, and puts `traceparent` (and a valid
/// `tracestate`) on every response, errors and fallbacks included.
async fn trace_context(mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let context = TraceContext::from_header_lines(
        headers.get_all("traceparent").iter().map(HeaderValue::as_bytes),
        headers.get_all("tracestate").iter().map(HeaderValue::as_bytes),
    );
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = %context.trace_id(),
        span_id = %context.span_id(),
    );
    // Handlers that record the trace (creation jobs) read it from here.
    request.extensions_mut().insert(context.trace_id());
    let mut response = next.run(request).instrument(span).await;
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&context.traceparent()) {
        out.insert("traceparent", value);
    }
    if let Some(value) = context.tracestate().and_then(|s| HeaderValue::from_str(s).ok()) {
        out.insert("tracestate", value);
    }
    response
}

/// Authentication, then the principal's rate limit: exactly one
/// `Authorization: Bearer <token>` the authenticator accepts (401), and a
/// token left in the principal's bucket (429 with `Retry-After`). The
/// principal rides along in the request.
async fn authenticate(State(api): AppState, mut request: Request, next: Next) -> Response {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let token = match (values.next(), values.next()) {
        (Some(only), None) => bearer_token(only),
        _ => None,
    };
    let Some(token) = token else {
        return ApiError::unauthorized().into_response();
    };
    match api.authenticator.authenticate(&token).await {
        Ok(principal) => {
            if let Err(seconds) = api.rate_limiter.check(&principal.user_id) {
                return too_many_requests(seconds);
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => {
            tracing::info!(reason = err.reason(), "authentication refused");
            ApiError::unauthorized().into_response()
        }
    }
}

fn too_many_requests(seconds: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(seconds))],
        Json(TooManyRequests::after_seconds(seconds)),
    )
        .into_response()
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then(|| token.to_owned())
}

/// Path ids and `Cint-API-Version`, every bad one named (400), then the
/// principal's access to the account (403).
pub(crate) fn scope_of(
    ids: [&str; 3],
    run_id: Option<&str>,
    headers: &HeaderMap,
    principal: &Principal,
) -> Result<(Scope, Option<FieldingRunId>), ApiError> {
    let mut params: Vec<InvalidParam> = Vec::new();
    let scope = Scope::parse(ids[0], ids[1], ids[2]).map_err(|e| params.extend_from_slice(e.invalid_params()));
    let run_id = run_id.map(FieldingRunId::parse).transpose().map_err(|e| {
        params.push(InvalidParam::new(e.field(), e.reason()));
    });
    if let Err(param) = crate::api_version::parse(
        headers
            .get_all(crate::api_version::HEADER)
            .iter()
            .map(HeaderValue::as_bytes),
    ) {
        params.push(param);
    }
    match (scope, run_id) {
        (Ok(scope), Ok(run_id)) if params.is_empty() => {
            if principal.may_access(scope.account_id) {
                Ok((scope, run_id))
            } else {
                Err(ApiError::forbidden())
            }
        }
        _ => Err(ApiError::invalid(params)),
    }
}

pub(crate) fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::invalid_param("path", format!("the path could not be read: {rejection}"))
}

fn run_key(path: RunPath, headers: &HeaderMap, principal: &Principal) -> Result<RunKey, ApiError> {
    let Path((account, project, target_group, run)) = path.map_err(path_error)?;
    let (scope, run_id) = scope_of([&account, &project, &target_group], Some(&run), headers, principal)?;
    // `scope_of` returns a run id whenever it was given one.
    run_id.map(|id| scope.run(id)).ok_or_else(ApiError::no_route)
}

/// `If-Match`, required on every write: 400 when missing or malformed.
fn if_match(headers: &HeaderMap) -> Result<IfMatch, ApiError> {
    let lines: Vec<&[u8]> = headers
        .get_all(header::IF_MATCH)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if lines.is_empty() {
        return Err(ApiError::invalid_param(
            "If-Match",
            "is required: send the ETag of a GET of this fielding run",
        ));
    }
    IfMatch::parse_lines(lines).map_err(|e| ApiError::invalid_param("If-Match", e.reason().to_owned()))
}

/// Runs the command `command_of` makes of the request body, on the run as
/// the store reads it, with every check in the contract's order and a
/// single read: not found (404, the store), then `If-Match` (400 when
/// missing or malformed, 412 when stale), then the body (`command_of`:
/// 400, 413), then the lifecycle (422, the service). The body is read
/// before the run, but judged only after the precondition, so a stale tag
/// with a bad body is a 412.
async fn run_command(
    api: &FieldingApi,
    key: &RunKey,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
    command_of: impl Fn(&[u8]) -> Result<Command, ApiError> + Send + Sync,
) -> Result<fielding_core::Applied, ApiError> {
    let condition = if_match(headers);
    let bytes = read_body(api, body).await;
    api.service
        .execute_when(key, principal.user_id, |run: &FieldingRun| {
            let condition = condition.as_ref().map_err(Clone::clone)?;
            if !condition.matches(run.version) {
                return Err(fielding_core::FieldingError::PreconditionFailed { current: run.version }.into());
            }
            command_of(bytes.as_ref().map_err(Clone::clone)?)
        })
        .await
}

/// The request body, up to the limit: 413 past it; 400 naming `body` when
/// it cannot be read at all (malformed chunked encoding, a client that went
/// away mid-body).
pub(crate) async fn read_body(api: &FieldingApi, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, api.body_limit).await.map_err(|err| {
        let too_long = std::error::Error::source(&err).is_some_and(|source| source.is::<LengthLimitError>());
        if too_long {
            ApiError::payload_too_large(api.body_limit)
        } else {
            ApiError::invalid_param("body", format!("could not be read: {err}"))
        }
    })
}

fn etag_header(etag: ETag) -> [(header::HeaderName, HeaderValue); 1] {
    // A quoted decimal is always a valid header value.
    let value = HeaderValue::from_str(&etag.to_string()).unwrap_or(HeaderValue::from_static("\"0\""));
    [(header::ETAG, value)]
}

fn item(run: &FieldingRun) -> Value {
    serde_json::to_value(run.to_item()).unwrap_or(Value::Null)
}

async fn list_runs(
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: ScopePath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((account, project, target_group)) = path.map_err(path_error)?;
    let (scope, _) = scope_of([&account, &project, &target_group], None, &headers, &principal)?;
    let runs: Vec<Value> = api.service.find(&scope).await?.iter().map(item).collect();
    Ok(Json(json!({ "data": runs, "has_more": false })).into_response())
}

async fn get_run(
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: RunPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = run_key(path, &headers, &principal)?;
    let run = api.service.get(&key).await?;
    Ok((etag_header(run.etag()), Json(item(&run))).into_response())
}

/// The PUT body: exactly `start_fielding_at` and `end_fielding_at`, both
/// RFC 3339 strings; every problem named.
fn dates_body(bytes: &[u8]) -> Result<(Timestamp, Timestamp), ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_param("body", format!("is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid_param("body", "must be a JSON object"));
    };
    let mut params = Vec::new();
    for unknown in fields
        .keys()
        .filter(|k| *k != "start_fielding_at" && *k != "end_fielding_at")
    {
        params.push(InvalidParam::new(unknown.clone(), "is not a known field"));
    }
    let start = timestamp_field(&fields, "start_fielding_at", &mut params);
    let end = timestamp_field(&fields, "end_fielding_at", &mut params);
    match (start, end) {
        (Some(start), Some(end)) if params.is_empty() => Ok((start, end)),
        _ => Err(ApiError::invalid(params)),
    }
}

pub(crate) fn timestamp_field(
    fields: &Map<String, Value>,
    name: &'static str,
    params: &mut Vec<InvalidParam>,
) -> Option<Timestamp> {
    match fields.get(name) {
        None => params.push(InvalidParam::new(name, "is required")),
        Some(Value::String(text)) => match text.parse::<Timestamp>() {
            Ok(t) => return Some(t),
            Err(e) => params.push(InvalidParam::new(name, e.to_string())),
        },
        Some(_) => params.push(InvalidParam::new(name, "must be an RFC 3339 timestamp string")),
    }
    None
}

async fn update_dates(
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: RunPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = run_key(path, &headers, &principal)?;
    let applied = run_command(&api, &key, &principal, &headers, body, |bytes| {
        let (start_fielding_at, end_fielding_at) = dates_body(bytes)?;
        Ok(Command::UpdateDates {
            start_fielding_at,
            end_fielding_at,
        })
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        etag_header(applied.etag),
        Json(json!({ "id": applied.run.id })),
    )
        .into_response())
}

/// The command endpoints take no body: empty, or an empty JSON object.
fn empty_body(bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(fields)) if fields.is_empty() => Ok(()),
        Ok(Value::Object(fields)) => Err(ApiError::invalid(
            fields
                .keys()
                .map(|k| InvalidParam::new(k.clone(), "is not a known field"))
                .collect(),
        )),
        _ => Err(ApiError::invalid_param("body", "must be empty")),
    }
}

async fn command(
    api: &FieldingApi,
    principal: &Principal,
    path: RunPath,
    headers: &HeaderMap,
    body: Body,
    command: Command,
) -> Result<fielding_core::Applied, ApiError> {
    let key = run_key(path, headers, principal)?;
    run_command(api, &key, principal, headers, body, |bytes| {
        empty_body(bytes)?;
        Ok(command.clone())
    })
    .await
}

macro_rules! no_content_command {
    ($name:ident, $command:expr) => {
        async fn $name(
            State(api): AppState,
            Extension(principal): Extension<Principal>,
            path: RunPath,
            headers: HeaderMap,
            body: Body,
        ) -> Result<Response, ApiError> {
            let applied = command(&api, &principal, path, &headers, body, $command).await?;
            Ok((StatusCode::NO_CONTENT, etag_header(applied.etag)).into_response())
        }
    };
}

no_content_command!(complete, Command::Complete);
no_content_command!(pause, Command::Pause);
no_content_command!(resume, Command::Resume);
no_content_command!(relaunch, Command::Relaunch);

async fn launch_now(
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: RunPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let applied = command(&api, &principal, path, &headers, body, Command::LaunchNow).await?;
    let dates = json!({
        "start_fielding_at": applied.run.start_fielding_at,
        "end_fielding_at": applied.run.end_fielding_at,
    });
    Ok((etag_header(applied.etag), Json(dates)).into_response())
}
