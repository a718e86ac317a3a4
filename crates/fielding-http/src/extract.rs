//! Reading a request: path ids, `Cint-API-Version`, the account check, the
//! body and its JSON fields. Shared by the run and the job handlers, so
//! every endpoint refuses the same mistakes with the same words.

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue};
use fielding_core::{FieldingRunId, InvalidParam, RunKey, Scope, Timestamp};
use http_body_util::LengthLimitError;
use serde_json::{Map, Value};

use crate::api_error::ApiError;
use crate::auth::Principal;

/// The path of a collection under a target group.
pub(crate) type ScopePath = Result<Path<(String, String, String)>, PathRejection>;

/// The path of one item (a run or a job) under a target group.
pub(crate) type ItemPath = Result<Path<(String, String, String, String)>, PathRejection>;

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

/// A path axum could not split into its parameters.
pub(crate) fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::invalid_param("path", format!("the path could not be read: {rejection}"))
}

/// The scope of a collection path, checked as [`scope_of`] does.
pub(crate) fn scope_path(path: ScopePath, headers: &HeaderMap, principal: &Principal) -> Result<Scope, ApiError> {
    let Path((account, project, target_group)) = path.map_err(path_error)?;
    scope_of([&account, &project, &target_group], None, headers, principal).map(|(scope, _)| scope)
}

/// The address of the run a path names, checked as [`scope_of`] does.
pub(crate) fn run_key(path: ItemPath, headers: &HeaderMap, principal: &Principal) -> Result<RunKey, ApiError> {
    let Path((account, project, target_group, run)) = path.map_err(path_error)?;
    let (scope, run_id) = scope_of([&account, &project, &target_group], Some(&run), headers, principal)?;
    // `scope_of` returns a run id whenever it was given one.
    run_id.map(|id| scope.run(id)).ok_or_else(ApiError::no_route)
}

/// The request body, up to `limit` bytes: 413 past it; 400 naming `body`
/// when it cannot be read at all (malformed chunked encoding, a client
/// that went away mid-body).
pub(crate) async fn read_body(limit: usize, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let too_long = std::error::Error::source(&err).is_some_and(|source| source.is::<LengthLimitError>());
        if too_long {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::invalid_param("body", format!("could not be read: {err}"))
        }
    })
}

/// A JSON object body, and a refusal already noted for each field not in
/// `known` (400 for a body that is not a JSON object at all).
pub(crate) fn json_fields(bytes: &[u8], known: &[&str]) -> Result<(Map<String, Value>, Vec<InvalidParam>), ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_param("body", format!("is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid_param("body", "must be a JSON object"));
    };
    let unknown = fields
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| InvalidParam::new(k.clone(), "is not a known field"))
        .collect();
    Ok((fields, unknown))
}

/// The required RFC 3339 timestamp field `name`, or a refusal noted in
/// `params`.
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
