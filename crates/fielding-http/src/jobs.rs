//! The creation endpoints: `fielding-run-jobs/launch-from-draft` and
//! `fielding-run-jobs/schedule-from-draft`, and `GET` of a job.
//!
//! Checks run in the router's order: authentication and rate limit (in the
//! middleware), then path ids and `Cint-API-Version` (400), the account
//! (403), then `idempotency-key` (400), then the body (400). The job runs
//! before the `201` is sent, so the `Location` it returns already answers
//! `Completed` or `Failed`; a replay of the same request under the same key
//! returns the same `Location`.
//!
//! Fields that are `null` in the contract's examples (`created_fielding_run_id`
//! while there is none, `failure_reason`, `job_trace_id`) are left out of
//! the body instead: the schemas do not admit `null` for them, and
//! clients read a missing optional field as absent either way.

use axum::body::Body;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fielding_core::{FieldingRunJob, IdempotencyKey, InvalidParam, JobId, JobKind, JobRequest, JobTraceId, NewJob};
use serde_json::{Map, Value};

use crate::api_error::ApiError;
use crate::auth::Principal;
use crate::extract::{json_fields, path_error, read_body, scope_of, scope_path, timestamp_field, ItemPath, ScopePath};
use crate::state::AppState;
use crate::trace_context::TraceId;

/// `POST .../fielding-run-jobs/launch-from-draft`.
pub(crate) async fn launch_from_draft(
    state: AppState,
    principal: Extension<Principal>,
    trace: Extension<TraceId>,
    uri: OriginalUri,
    path: ScopePath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = Submission {
        kind: JobKind::LaunchFromDraft,
        uri,
        path,
        headers,
        body,
    };
    submit(request, state, principal, trace).await
}

/// `POST .../fielding-run-jobs/schedule-from-draft`.
pub(crate) async fn schedule_from_draft(
    state: AppState,
    principal: Extension<Principal>,
    trace: Extension<TraceId>,
    uri: OriginalUri,
    path: ScopePath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = Submission {
        kind: JobKind::ScheduleFromDraft,
        uri,
        path,
        headers,
        body,
    };
    submit(request, state, principal, trace).await
}

/// A creation request as received.
struct Submission {
    kind: JobKind,
    /// The full request path, including the API's base path and any
    /// prefix the app nested the router under: the job's `Location` is
    /// below it.
    uri: OriginalUri,
    path: ScopePath,
    headers: HeaderMap,
    body: Body,
}

async fn submit(
    request: Submission,
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    Extension(trace): Extension<TraceId>,
) -> Result<Response, ApiError> {
    let Submission {
        kind,
        uri: OriginalUri(uri),
        path,
        headers,
        body,
    } = request;
    let scope = scope_path(path, &headers, &principal)?;
    let idempotency_key = idempotency_key(&headers)?;
    let request = job_body(kind, &read_body(api.body, &headers, body).await?)?;
    let submitted = api
        .service
        .submit_job(NewJob {
            scope,
            idempotency_key,
            request,
            actor: principal.user_id,
            trace_id: JobTraceId::parse(&trace.to_string()),
        })
        .await?;
    let location = format!("{}/{}", uri.path().trim_end_matches('/'), submitted.job.id);
    // Built from validated ids and fixed text: always a valid header value.
    let location = HeaderValue::from_str(&location).map_err(|_| ApiError::no_route())?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// `GET .../fielding-run-jobs/launch-from-draft/{job_id}`.
pub(crate) async fn get_launch_job(
    state: AppState,
    principal: Extension<Principal>,
    path: ItemPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    get_job(JobKind::LaunchFromDraft, state, principal, path, headers).await
}

/// `GET .../fielding-run-jobs/schedule-from-draft/{job_id}`.
pub(crate) async fn get_schedule_job(
    state: AppState,
    principal: Extension<Principal>,
    path: ItemPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    get_job(JobKind::ScheduleFromDraft, state, principal, path, headers).await
}

async fn get_job(
    kind: JobKind,
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: ItemPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((account, project, target_group, job)) = path.map_err(path_error)?;
    let job_id = JobId::parse(&job);
    let scoped = scope_of([&account, &project, &target_group], None, &headers, &principal);
    let (scope, job_id) = match (scoped, job_id) {
        (Ok((scope, _)), Ok(id)) => (scope, id),
        (Err(err), Ok(_)) => return Err(err),
        (scoped, Err(bad)) => {
            // Malformed ids come before the account check (400 before 403).
            let mut params = match scoped {
                Err(err) if err.status() == StatusCode::BAD_REQUEST => {
                    err.body().invalid_params.clone().unwrap_or_default()
                }
                _ => Vec::new(),
            };
            params.push(InvalidParam::new(bad.field(), bad.reason()));
            return Err(ApiError::invalid(params));
        }
    };
    let job = api.service.get_job(&scope, &job_id).await?;
    if job.kind() != kind {
        // A launch job is not found under schedule-from-draft, and back.
        return Err(fielding_core::FieldingError::NotFound {
            what: format!("{kind} job {job_id}"),
        }
        .into());
    }
    Ok(Json(job_body_json(&job)).into_response())
}

/// The required `idempotency-key` header: exactly one, valid. Shared with
/// the batch endpoints, which require it the same way.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let mut lines = headers.get_all(IdempotencyKey::FIELD).iter();
    let value = match (lines.next(), lines.next()) {
        (None, _) => {
            return Err(ApiError::invalid_param(
                IdempotencyKey::FIELD,
                "is required: send a unique key (for example a UUID) per new request, and the same key to retry it",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_param(
                IdempotencyKey::FIELD,
                "must be sent once, not on several header lines",
            ))
        }
        (Some(only), None) => only,
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid_param(IdempotencyKey::FIELD, "must contain only visible ASCII characters"))?;
    IdempotencyKey::parse(text).map_err(|e| ApiError::invalid(vec![e]))
}

/// The body of a creation request: the fields the kind needs, nothing else.
fn job_body(kind: JobKind, bytes: &[u8]) -> Result<JobRequest, ApiError> {
    let known: &[&str] = match kind {
        JobKind::LaunchFromDraft => &["end_fielding_at"],
        _ => &["start_fielding_at", "end_fielding_at"],
    };
    let (fields, found) = json_fields(bytes, known)?;
    let mut params = Vec::new();
    let request = match kind {
        JobKind::LaunchFromDraft => timestamp_field(&fields, "end_fielding_at", &mut params)
            .map(|end| JobRequest::LaunchFromDraft { end_fielding_at: end }),
        _ => {
            let start = timestamp_field(&fields, "start_fielding_at", &mut params);
            let end = timestamp_field(&fields, "end_fielding_at", &mut params);
            start.zip(end).map(|(start, end)| JobRequest::ScheduleFromDraft {
                start_fielding_at: start,
                end_fielding_at: end,
            })
        }
    };
    params.extend(found);
    match request {
        Some(request) if params.is_empty() => Ok(request),
        _ => Err(ApiError::invalid(params)),
    }
}

/// The contract's `Get…FromDraftJobResponse`.
fn job_body_json(job: &FieldingRunJob) -> Value {
    let mut out = Map::new();
    out.insert("job_id".into(), Value::String(job.id.to_string()));
    if let Some(run_id) = job.created_fielding_run_id() {
        out.insert("created_fielding_run_id".into(), Value::String(run_id.to_string()));
    }
    out.insert("created_at".into(), Value::String(job.created_at.to_string()));
    out.insert("created_by".into(), Value::String(job.created_by.to_string()));
    out.insert("status".into(), Value::String(job.state.status_name().into()));
    if let Some(failure) = job.failure() {
        let mut reason = Map::new();
        reason.insert("code".into(), Value::String(failure.code.as_str().into()));
        reason.insert("description".into(), Value::String(failure.description.clone()));
        out.insert("failure_reason".into(), Value::Object(reason));
        if let Some(trace) = job.trace_id {
            out.insert("job_trace_id".into(), Value::String(trace.to_string()));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_body_refuses_a_start_and_unknown_fields() {
        let err = job_body(
            JobKind::LaunchFromDraft,
            br#"{"start_fielding_at":"2031-01-01T00:00:00Z","end_fielding_at":"2031-02-01T00:00:00Z","x":1}"#,
        )
        .unwrap_err();
        let names: Vec<&str> = err
            .body()
            .invalid_params
            .iter()
            .flatten()
            .map(|p| p.name.as_ref())
            .collect();
        assert_eq!(names, ["start_fielding_at", "x"]);
    }

    #[test]
    fn schedule_body_names_every_missing_field() {
        let err = job_body(JobKind::ScheduleFromDraft, b"{}").unwrap_err();
        let names: Vec<&str> = err
            .body()
            .invalid_params
            .iter()
            .flatten()
            .map(|p| p.name.as_ref())
            .collect();
        assert_eq!(names, ["start_fielding_at", "end_fielding_at"]);
        let ok = job_body(
            JobKind::ScheduleFromDraft,
            br#"{"end_fielding_at":"2031-02-01T00:00:00.000Z","start_fielding_at":"2031-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(ok.kind(), JobKind::ScheduleFromDraft);
    }

    #[test]
    fn idempotency_key_must_be_present_once_and_valid() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap_err().status(), StatusCode::BAD_REQUEST);
        headers.append("idempotency-key", HeaderValue::from_static("a"));
        assert_eq!(idempotency_key(&headers).unwrap().as_str(), "a");
        headers.append("idempotency-key", HeaderValue::from_static("b"));
        let err = idempotency_key(&headers).unwrap_err();
        assert_eq!(err.body().invalid_params.as_ref().unwrap()[0].name, "idempotency-key");
        let mut long = HeaderMap::new();
        long.insert("idempotency-key", HeaderValue::from_str(&"k".repeat(256)).unwrap());
        assert!(idempotency_key(&long).is_err());
    }
}
