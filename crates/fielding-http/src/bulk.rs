//! The batch endpoints of `fielding-batch-openapi.yml`: for each of the
//! five actions, `POST .../batch-jobs/{action}-fielding-runs-by-target-group-id`
//! submits a bulk job and `GET .../{action}-fielding-runs-by-target-group-id/{job_id}`
//! reads it back.
//!
//! Checks run in the creation jobs' order: authentication and rate limit
//! (in the middleware), then path ids and `Cint-API-Version` (400), the
//! account (403), then `idempotency-key` (400), then the body as a message
//! (408, 413, 415), then its content (400). Unlike a creation job, a bulk
//! job is only recorded before the `201`: a `BulkRunner` works it in the
//! background, and its `Location` answers `Processing` until every target
//! group has an outcome.
//!
//! The `Location` is the job's `GET` path: the submitting path plus the
//! job id. The contract's examples show a shorter `.../batch-jobs/pause/{id}`
//! that no operation of the contract serves; a client that follows the
//! header must land on the job.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use fielding_core::{
    BulkAction, BulkJob, BulkJobKey, FieldingError, InvalidParam, JobId, JobTraceId, NewBulkJob, StoreError,
    TargetGroupId,
};
use serde_json::Value;

use crate::api_error::ApiError;
use crate::auth::Principal;
use crate::extract::{json_fields, path_error, project_of, read_body};
use crate::jobs::idempotency_key;
use crate::json::BulkJobResponse;
use crate::state::{AppState, SharedState};
use crate::trace_context::TraceId;

/// The path the batch endpoints live under.
pub(crate) const BATCH_PATH: &str = "/demand/accounts/{account_id}/projects/{project_id}/batch-jobs";

/// The body's one field.
const FIELD: &str = "target_group_ids";

/// The path of a project (the submitting endpoints).
type ProjectPath = Result<Path<(String, String)>, PathRejection>;

/// The path of one bulk job.
type JobPath = Result<Path<(String, String, String)>, PathRejection>;

/// The ten routes: a `POST` and a `GET` for each action, under `base`
/// (the API's base path, empty for `/`).
pub(crate) fn routes(router: Router<SharedState>, base: &str) -> Router<SharedState> {
    BulkAction::ALL.into_iter().fold(router, |router, action| {
        let jobs = format!("{base}{BATCH_PATH}/{}", action.path_segment());
        router
            .route(
                &jobs,
                post(
                    move |state: AppState,
                          principal: Extension<Principal>,
                          trace: Extension<TraceId>,
                          uri: OriginalUri,
                          path: ProjectPath,
                          headers: HeaderMap,
                          body: Body| {
                        let request = Submission {
                            action,
                            uri,
                            path,
                            headers,
                            body,
                        };
                        submit(request, state, principal, trace)
                    },
                ),
            )
            .route(
                &format!("{jobs}/{{job_id}}"),
                get(
                    move |state: AppState, principal: Extension<Principal>, path: JobPath, headers: HeaderMap| {
                        get_job(action, state, principal, path, headers)
                    },
                ),
            )
    })
}

/// A bulk submission as received.
struct Submission {
    action: BulkAction,
    /// The full request path, including the API's base path and any
    /// prefix the app nested the router under: the job's `Location` is
    /// below it.
    uri: OriginalUri,
    path: ProjectPath,
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
        action,
        uri: OriginalUri(uri),
        path,
        headers,
        body,
    } = request;
    let Path((account, project)) = path.map_err(path_error)?;
    let (account_id, project_id) = project_of([&account, &project], None, &headers, &principal)?;
    let idempotency_key = idempotency_key(&headers)?;
    let target_group_ids = target_groups(&read_body(api.bulk_body, &headers, body).await?)?;
    // An empty list and repeats are the service's to judge (400 naming
    // `target_group_ids` or `target_group_ids[i]`), as is the length of
    // any list that reaches it.
    let submitted = api
        .service
        .submit_bulk_job(NewBulkJob {
            account_id,
            project_id,
            action,
            idempotency_key,
            target_group_ids,
            actor: principal.user_id,
            trace_id: JobTraceId::parse(&trace.to_string()),
        })
        .await?;
    let location = format!("{}/{}", uri.path().trim_end_matches('/'), submitted.job.id);
    // Built from validated ids and fixed text: always a valid header value;
    // if that ever broke, it is our fault (500), not a missing route.
    let location = HeaderValue::from_str(&location).map_err(|_| {
        ApiError::from(FieldingError::from(StoreError::internal(
            "the job's Location is not a valid header value",
        )))
    })?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// The body of a submission: exactly `target_group_ids`, an array of
/// target group ids, each bad entry named by its index.
fn target_groups(bytes: &[u8]) -> Result<Vec<TargetGroupId>, ApiError> {
    if values_past(bytes, MAX_VALUES) {
        return Err(too_many());
    }
    let (fields, found) = json_fields(bytes, &[FIELD])?;
    let mut params = Vec::new();
    let ids = match fields.get(FIELD) {
        None => {
            params.push(InvalidParam::new(FIELD, "is required"));
            None
        }
        Some(Value::Array(items)) if items.len() > BulkJob::MAX_TARGET_GROUPS => return Err(too_many()),
        Some(Value::Array(items)) => {
            let mut ids = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let id = match item {
                    Value::String(text) => TargetGroupId::parse(text).map_err(|e| e.reason().to_owned()),
                    _ => Err("must be a target group id (a string)".to_owned()),
                };
                match id {
                    Ok(id) => ids.push(id),
                    Err(reason) => params.push(InvalidParam::new(format!("{FIELD}[{index}]"), reason)),
                }
            }
            Some(ids)
        }
        Some(_) => {
            params.push(InvalidParam::new(FIELD, "must be an array of target group ids"));
            None
        }
    };
    params.extend(found);
    match ids {
        Some(ids) if params.is_empty() => Ok(ids),
        _ => Err(ApiError::invalid(params)),
    }
}

/// How many JSON values past the first a body may hold before it is
/// refused unparsed: one per id of the longest list, and a few to spare
/// for the object around it.
const MAX_VALUES: usize = BulkJob::MAX_TARGET_GROUPS + 8;

/// The 400 for a list longer than [`BulkJob::MAX_TARGET_GROUPS`], refused
/// as a whole before any entry is judged: a body of half a million bad
/// entries must not cost half a million findings.
fn too_many() -> ApiError {
    ApiError::invalid(vec![BulkJob::too_many_target_groups()])
}

/// Whether `bytes` hold more than `limit` commas outside strings: more
/// values than any acceptable body (every value after the first follows a
/// comma; nesting without commas is bounded by the parser's depth limit).
/// Counted in one pass without allocating, so that a 1 MiB body of
/// `[0,0,0,...]` (half a million values, tens of MB once parsed) is refused
/// before it is parsed.
fn values_past(bytes: &[u8], limit: usize) -> bool {
    let (mut commas, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if byte == b',' {
            commas += 1;
            if commas > limit {
                return true;
            }
        }
    }
    false
}

async fn get_job(
    action: BulkAction,
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: JobPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((account, project, job)) = path.map_err(path_error)?;
    // A malformed job id is a 400 naming `job_id`, before the account
    // check, as for a creation job.
    let job_id = JobId::parse(&job);
    let (account_id, project_id) = project_of([&account, &project], job_id.as_ref().err(), &headers, &principal)?;
    let id = job_id.map_err(|e| ApiError::invalid_param(e.field(), e.reason().to_owned()))?;
    let key = BulkJobKey {
        account_id,
        project_id,
        id,
    };
    // One answer for a job that does not exist and one of another action
    // (a pause job is not found under resume): the detail names what was
    // asked for, never what else exists.
    let not_found = || -> ApiError {
        FieldingError::NotFound {
            what: format!("{action} {key}"),
        }
        .into()
    };
    match api.service.get_bulk_job(&key).await {
        Ok(job) if job.action == action => Ok(Json(BulkJobResponse::from(&job)).into_response()),
        Ok(_) | Err(FieldingError::NotFound { .. }) => Err(not_found()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(err: &ApiError) -> Vec<String> {
        err.body()
            .invalid_params
            .iter()
            .flatten()
            .map(|p| p.name.to_string())
            .collect()
    }

    #[test]
    fn a_list_of_ids_is_read_in_order() {
        let ids = target_groups(br#"{"target_group_ids":["01BTGNYV6HRNK8K8VKZASZCFP2","01BTGNYV6HRNK8K8VKZASZCFP1"]}"#)
            .unwrap();
        let text: Vec<&str> = ids.iter().map(TargetGroupId::as_str).collect();
        assert_eq!(text, ["01BTGNYV6HRNK8K8VKZASZCFP2", "01BTGNYV6HRNK8K8VKZASZCFP1"]);
        // Emptiness and repeats are the service's to judge.
        assert!(target_groups(br#"{"target_group_ids":[]}"#).unwrap().is_empty());
    }

    #[test]
    fn every_bad_entry_is_named_by_its_index() {
        let err = target_groups(
            br#"{"target_group_ids":["01BTGNYV6HRNK8K8VKZASZCFP1","nope",5,null,"01btgnyv6hrnk8k8vkzaszcfp1"]}"#,
        )
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            names(&err),
            [
                "target_group_ids[1]",
                "target_group_ids[2]",
                "target_group_ids[3]",
                "target_group_ids[4]"
            ]
        );
    }

    #[test]
    fn a_body_of_more_values_than_any_list_is_refused_before_parsing() {
        // Nested, so the array itself has one entry: still refused.
        let entries = vec!["0"; 500_000].join(",");
        let body = format!(r#"{{"target_group_ids":[[{entries}]]}}"#);
        let err = target_groups(body.as_bytes()).unwrap_err();
        assert_eq!(names(&err), ["target_group_ids"]);
        // Commas inside strings (escaped quotes included) are not values.
        let text = format!(
            r#"{{"target_group_ids":["01BTGNYV6HRNK8K8VKZASZCFP1"],"note":"{}\",{}"}}"#,
            ",".repeat(20_000),
            ",".repeat(20_000)
        );
        assert!(!values_past(text.as_bytes(), MAX_VALUES));
        let err = target_groups(text.as_bytes()).unwrap_err();
        assert_eq!(names(&err), ["note"], "an unknown field, not a long list");
        // The longest acceptable list passes the count.
        let ids = vec!["\"01BTGNYV6HRNK8K8VKZASZCFP1\""; BulkJob::MAX_TARGET_GROUPS].join(",");
        assert!(!values_past(
            format!(r#"{{"target_group_ids":[{ids}]}}"#).as_bytes(),
            MAX_VALUES
        ));
    }

    #[test]
    fn a_list_over_the_maximum_is_refused_whole_without_judging_its_entries() {
        let entries = vec!["1"; BulkJob::MAX_TARGET_GROUPS + 1].join(",");
        let err = target_groups(format!(r#"{{"target_group_ids":[{entries}]}}"#).as_bytes()).unwrap_err();
        assert_eq!(names(&err), ["target_group_ids"]);
        assert!(err.body().detail.contains("at most 10000"), "{}", err.body().detail);
        assert!(!err.body().detail.contains("more invalid"), "{}", err.body().detail);
    }

    #[test]
    fn the_field_must_be_there_once_as_an_array_and_alone() {
        let cases: [(&[u8], &[&str]); 6] = [
            (b"{}", &["target_group_ids"]),
            (br#"{"target_group_ids":"01BTGNYV6HRNK8K8VKZASZCFP1"}"#, &["target_group_ids"]),
            (br#"{"target_group_ids":{}}"#, &["target_group_ids"]),
            (
                br#"{"target_group_ids":["01BTGNYV6HRNK8K8VKZASZCFP1"],"target_group_ids":["01BTGNYV6HRNK8K8VKZASZCFP1"]}"#,
                &["target_group_ids"],
            ),
            (
                br#"{"target_group_ids":["01BTGNYV6HRNK8K8VKZASZCFP1"],"dry_run":true}"#,
                &["dry_run"],
            ),
            (b"[]", &["body"]),
        ];
        for (body, expected) in cases {
            let err = target_groups(body).unwrap_err();
            assert_eq!(names(&err), expected, "{}", String::from_utf8_lossy(body));
        }
    }
}
