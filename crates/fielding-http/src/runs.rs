//! The run endpoints: list, GET, PUT (dates) and the command `POST`s.
//!
//! Every write goes through [`run_command`], which hands the request to
//! [`FieldingService::execute_request`](fielding_core::FieldingService::execute_request)
//! so that the service judges it in the contract's order on the run as
//! the store reads it once: not found (404), then `If-Match` (400 when
//! missing or malformed, 412 when stale), then the body (400), then the
//! lifecycle (422). The body is read before the run, but judged only after
//! the precondition, so a stale tag with a bad body is a 412.
//!
//! A body that was not received whole or not declared JSON (408, 413,
//! 415, or 400 naming `body` when its framing is broken) is refused before
//! the run is read: there is no request to judge, and the store is spared
//! the read.

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fielding_core::{Action, Applied, Command, ETag, FieldingRun, FieldingRunId, Precondition, RunKey, Timestamp};
use serde_json::{json, Value};

use crate::api_error::ApiError;
use crate::auth::Principal;
use crate::extract::{
    json_fields, path_error, read_body, run_key, run_key_of, scope_path, timestamp_field, ItemPath, ScopePath,
};
use crate::json::FieldingRunItem;
use crate::rfc3339;
use crate::state::{ApiState, AppState};
use crate::strict_json;

/// Runs the command `command_of` makes of the request body; see the
/// module documentation for the order of checks.
async fn run_command(
    api: &ApiState,
    key: &RunKey,
    principal: &Principal,
    headers: &HeaderMap,
    body: Body,
    action: Action,
    command_of: impl Fn(&[u8]) -> Result<Command, ApiError> + Send + Sync,
) -> Result<Applied, ApiError> {
    let precondition =
        Precondition::from_header_lines(headers.get_all(header::IF_MATCH).iter().map(HeaderValue::as_bytes));
    let bytes = read_body(api.body, headers, body).await?;
    api.service
        .execute_request(key, action, &precondition, principal.user_id, |_: &FieldingRun| {
            command_of(&bytes)
        })
        .await
}

/// `value` in decimal in `buf`, ending before `end` (at least 20: a `u64`
/// has at most 20 digits); the index of its first digit.
fn decimal_before(mut value: u64, buf: &mut [u8; 24], end: usize) -> usize {
    let mut start = end;
    loop {
        start -= 1;
        // `value % 10` is a digit.
        buf[start] = b'0' + u8::try_from(value % 10).unwrap_or(0);
        value /= 10;
        if value == 0 {
            return start;
        }
    }
}

/// A run as the contract's `FieldingRunItem`: the bytes
/// `serde_json::to_vec(&ItemOut::from(run))` writes (a test compares
/// them), written by hand. Every value is text that needs no escaping
/// (timestamps, the id's `[0-9A-Z]`, a UUID's hex and hyphens, a status
/// name, a number), so none is looked at byte by byte.
fn item_json(run: &FieldingRun) -> Vec<u8> {
    fn timestamp(out: &mut Vec<u8>, t: &Timestamp) {
        let mut buf = [0u8; rfc3339::LEN];
        rfc3339::write(*t, &mut buf);
        out.extend_from_slice(&buf);
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"end_fielding_at\":\"");
    timestamp(&mut out, &run.end_fielding_at);
    out.extend_from_slice(b"\",\"id\":\"");
    out.extend_from_slice(run.id.as_str().as_bytes());
    out.extend_from_slice(b"\",\"last_changed_at\":\"");
    timestamp(&mut out, &run.last_changed_at);
    out.extend_from_slice(b"\",\"last_changed_by\":\"");
    let mut uuid = uuid::Uuid::encode_buffer();
    out.extend_from_slice(
        run.last_changed_by
            .as_uuid()
            .hyphenated()
            .encode_lower(&mut uuid)
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"start_fielding_at\":\"");
    timestamp(&mut out, &run.start_fielding_at);
    out.extend_from_slice(b"\",\"status\":\"");
    out.extend_from_slice(run.status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"version\":");
    let mut digits = [0u8; 24];
    let start = decimal_before(run.version.get(), &mut digits, 24);
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
    out.push(b'}');
    out
}

/// The answer to a `PUT`: the bytes `serde_json::to_vec(&IdOut { id })`
/// writes (a test compares them); the id's `[0-9A-Z]` needs no escaping.
fn id_json(id: &FieldingRunId) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(id.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// A JSON answer as axum's `(headers, Json(value))` makes it, the body
/// already written: `Content-Type: application/json` first, then `ETag`.
fn json_answer(status: StatusCode, etag: ETag, body: Vec<u8>) -> Response {
    let [(etag_name, etag_value)] = etag_header(etag);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(etag_name, etag_value);
    response
}

fn etag_header(etag: ETag) -> [(header::HeaderName, HeaderValue); 1] {
    // `"<u64>"` (what `ETag`'s `Display` writes) is at most 22 bytes:
    // written backwards on the stack, digit by digit, and copied once into
    // the header (no `String`, no formatting machinery).
    let mut buf = [0u8; 24];
    // The digits end one byte early, for the closing quote; the opening
    // one goes before them (at most 20 digits: index 3 or later).
    let mut start = decimal_before(etag.version().get(), &mut buf, 23);
    buf[23] = b'"';
    start -= 1;
    buf[start] = b'"';
    // A quoted decimal is always a valid header value.
    let value = buf
        .get(start..)
        .and_then(|quoted| HeaderValue::from_bytes(quoted).ok())
        .unwrap_or(HeaderValue::from_static("\"0\""));
    [(header::ETAG, value)]
}

fn item(run: &FieldingRun) -> Value {
    serde_json::to_value(FieldingRunItem::from(run)).unwrap_or(Value::Null)
}

pub(crate) async fn list_runs(
    axum::extract::State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: ScopePath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = scope_path(path, &headers, &principal)?;
    let runs: Vec<Value> = api.service.find(&scope).await?.iter().map(item).collect();
    Ok(Json(json!({ "data": runs, "has_more": false })).into_response())
}

pub(crate) async fn get_run(
    axum::extract::State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: ItemPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((account, project, target_group, run)) = path.map_err(path_error)?;
    read_run(&api, &principal, [&account, &project, &target_group, &run], &headers).await
}

/// `GET` of the run at `ids`: the handler's work once the ids are read.
async fn read_run(
    api: &ApiState,
    principal: &Principal,
    ids: [&str; 4],
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let key = run_key_of(ids, headers, principal)?;
    let run = api.service.get(&key).await?;
    Ok(json_answer(StatusCode::OK, run.etag(), item_json(&run)))
}

/// The PUT body: exactly `start_fielding_at` and `end_fielding_at`, both
/// RFC 3339 strings; every problem named.
fn dates_body(bytes: &[u8]) -> Result<(Timestamp, Timestamp), ApiError> {
    const DATES: [&str; 2] = ["start_fielding_at", "end_fielding_at"];
    // The body as clients send it, read in place; anything else (and any
    // date that does not parse) is read again below, which names every
    // problem.
    if let Some([start, end]) = strict_json::exact_strings(bytes, DATES) {
        if let (Ok(start), Ok(end)) = (rfc3339::parse(start), rfc3339::parse(end)) {
            return Ok((start, end));
        }
    }
    let (fields, found) = json_fields(bytes, &["start_fielding_at", "end_fielding_at"])?;
    let mut params = Vec::new();
    let start = timestamp_field(&fields, "start_fielding_at", &mut params);
    let end = timestamp_field(&fields, "end_fielding_at", &mut params);
    params.extend(found);
    match (start, end) {
        (Some(start), Some(end)) if params.is_empty() => Ok((start, end)),
        _ => Err(ApiError::invalid(params)),
    }
}

pub(crate) async fn update_dates(
    axum::extract::State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: ItemPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((account, project, target_group, run)) = path.map_err(path_error)?;
    change_dates(
        &api,
        &principal,
        [&account, &project, &target_group, &run],
        &headers,
        body,
    )
    .await
}

/// `PUT` of the run at `ids`: the handler's work once the ids are read.
async fn change_dates(
    api: &ApiState,
    principal: &Principal,
    ids: [&str; 4],
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = run_key_of(ids, headers, principal)?;
    let applied = run_command(api, &key, principal, headers, body, Action::UpdateDates, |bytes| {
        let (start_fielding_at, end_fielding_at) = dates_body(bytes)?;
        Ok(Command::UpdateDates {
            start_fielding_at,
            end_fielding_at,
        })
    })
    .await?;
    Ok(json_answer(
        StatusCode::ACCEPTED,
        applied.etag,
        id_json(&applied.run.id),
    ))
}

/// The run path `.../target-groups/{target_group_id}/fielding-runs/{fielding_run_id}`
/// under `base` ([`crate::BasePath::prefix`]), its four ids borrowed from
/// `path`: only when every id is non-empty and free of `%` (so that the
/// router would pass it on undecoded, as is) and nothing follows the run
/// id. Any other path, an encoded id included, is left to the router.
pub(crate) fn run_path_ids<'p>(path: &'p str, base: &str) -> Option<[&'p str; 4]> {
    /// The id up to the next `/` (or the end), and what follows it.
    fn id(text: &str) -> Option<(&str, &str)> {
        let end = text.bytes().position(|b| b == b'/' || b == b'%').unwrap_or(text.len());
        let (id, rest) = text.split_at(end);
        (!id.is_empty() && !rest.starts_with('%')).then_some((id, rest))
    }
    let rest = path.strip_prefix(base)?.strip_prefix("/demand/accounts/")?;
    let (account, rest) = id(rest)?;
    let (project, rest) = id(rest.strip_prefix("/projects/")?)?;
    let (target_group, rest) = id(rest.strip_prefix("/target-groups/")?)?;
    let (run, rest) = id(rest.strip_prefix("/fielding-runs/")?)?;
    rest.is_empty().then_some([account, project, target_group, run])
}

/// Serves a `GET` or `PUT` of a run ([`run_path_ids`]) without the
/// router: the same handler code as [`get_run`] and [`update_dates`],
/// with the ids borrowed from the path rather than copied out of axum's
/// path parameters, and the headers read in place. `Err` gives back any
/// other request, with the principal, for the router. The answer carries
/// `Content-Length` when its size is known, as the router's answers do.
pub(crate) async fn serve_run_directly(
    api: &ApiState,
    base: &str,
    request: Request,
    principal: Principal,
) -> Result<Response, (Request, Principal)> {
    let is_get = match *request.method() {
        Method::GET => true,
        Method::PUT => false,
        _ => return Err((request, principal)),
    };
    let (parts, body) = request.into_parts();
    let Some(ids) = run_path_ids(parts.uri.path(), base) else {
        return Err((Request::from_parts(parts, body), principal));
    };
    let answer = if is_get {
        read_run(api, &principal, ids, &parts.headers).await
    } else {
        change_dates(api, &principal, ids, &parts.headers, body).await
    };
    let mut response = answer.into_response();
    crate::top_level::set_content_length(&mut response);
    Ok(response)
}

/// The command endpoints take no body: empty, or an empty JSON object.
fn empty_body(bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) || strict_json::exact_strings(bytes, []).is_some() {
        return Ok(());
    }
    match json_fields(bytes, &[]) {
        Ok((fields, _)) if fields.is_empty() => Ok(()),
        Ok((_, params)) => Err(ApiError::invalid(params)),
        Err(_) => Err(ApiError::invalid_param("body", "must be empty")),
    }
}

async fn command(
    api: &ApiState,
    principal: &Principal,
    path: ItemPath,
    headers: &HeaderMap,
    body: Body,
    command: Command,
) -> Result<Applied, ApiError> {
    let key = run_key(path, headers, principal)?;
    run_command(api, &key, principal, headers, body, command.action(), |bytes| {
        empty_body(bytes)?;
        Ok(command.clone())
    })
    .await
}

macro_rules! no_content_command {
    ($name:ident, $command:expr) => {
        pub(crate) async fn $name(
            axum::extract::State(api): AppState,
            Extension(principal): Extension<Principal>,
            path: ItemPath,
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

pub(crate) async fn launch_now(
    axum::extract::State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: ItemPath,
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

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_core::{Status, UserId, Version};
    use serde::Serialize;

    /// A run as the contract's `FieldingRunItem`, as serde writes it: the
    /// reference `item_json` is compared with (the members in the order a
    /// `serde_json::Value` writes them, by name, as `item` does).
    #[derive(Serialize)]
    struct ItemOut<'a> {
        end_fielding_at: &'a Timestamp,
        id: &'a FieldingRunId,
        last_changed_at: &'a Timestamp,
        last_changed_by: &'a UserId,
        start_fielding_at: &'a Timestamp,
        status: &'a Status,
        version: &'a Version,
    }

    impl<'a> From<&'a FieldingRun> for ItemOut<'a> {
        fn from(run: &'a FieldingRun) -> Self {
            Self {
                end_fielding_at: &run.end_fielding_at,
                id: &run.id,
                last_changed_at: &run.last_changed_at,
                last_changed_by: &run.last_changed_by,
                start_fielding_at: &run.start_fielding_at,
                status: &run.status,
                version: &run.version,
            }
        }
    }

    /// The answer to a PUT: `{"id": ...}`.
    #[derive(Serialize)]
    struct IdOut {
        id: FieldingRunId,
    }

    fn run(status: &str) -> FieldingRun {
        serde_json::from_value(json!({
            "id": "01BTGNYV6HRNK8K8VKZASZCFP1",
            "account_id": 101,
            "project_id": "01BTGNYV6HRNK8K8VKZASZCFP0",
            "target_group_id": "01BTGNYV6HRNK8K8VKZASZCFP2",
            "start_fielding_at": "2031-01-01T09:00:00.000Z",
            "end_fielding_at": "2031-01-31T09:00:00.000Z",
            "status": status,
            "version": 7,
            "last_changed_at": "2030-12-01T09:00:00.123Z",
            "last_changed_by": "b551326b-ac9d-4d32-8823-4f025787dab9",
        }))
        .unwrap()
    }

    #[test]
    fn an_item_is_written_as_the_value_wrote_it() {
        for status in ["scheduled", "live", "paused", "completed"] {
            let run = run(status);
            let direct = serde_json::to_string(&ItemOut::from(&run)).unwrap();
            let through_value = serde_json::to_string(&item(&run)).unwrap();
            assert_eq!(direct, through_value);
        }
    }

    #[test]
    fn the_hand_written_item_is_what_serde_writes() {
        let mut runs: Vec<FieldingRun> = ["scheduled", "live", "paused", "completed"].map(run).into();
        let mut far = run("live");
        far.version = Version::MAX;
        far.start_fielding_at = Timestamp::MIN;
        far.end_fielding_at = Timestamp::MAX;
        far.last_changed_at = Timestamp::UNIX_EPOCH;
        far.last_changed_by = UserId::random();
        runs.push(far);
        let mut first = run("paused");
        first.version = Version::INITIAL;
        runs.push(first);
        for run in runs {
            let by_hand = item_json(&run);
            assert_eq!(by_hand, serde_json::to_vec(&ItemOut::from(&run)).unwrap());
            assert_eq!(by_hand, serde_json::to_vec(&item(&run)).unwrap());
            assert_eq!(id_json(&run.id), serde_json::to_vec(&IdOut { id: run.id }).unwrap());
        }
    }

    /// The answers as axum's `(status, headers, Json(..))` made them:
    /// status, every header in the same order, the same body.
    #[tokio::test]
    async fn the_hand_built_answers_are_axums() {
        use http_body_util::BodyExt;
        async fn parts(response: Response) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
            let (parts, body) = response.into_parts();
            let headers = parts
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                .collect();
            (parts.status, headers, body.collect().await.unwrap().to_bytes().to_vec())
        }
        let run = run("live");
        let mut by_axum = (etag_header(run.etag()), Json(ItemOut::from(&run))).into_response();
        let mut by_hand = json_answer(StatusCode::OK, run.etag(), item_json(&run));
        crate::top_level::set_content_length(&mut by_axum);
        crate::top_level::set_content_length(&mut by_hand);
        assert_eq!(parts(by_hand).await, parts(by_axum).await);
        let by_axum = (
            StatusCode::ACCEPTED,
            etag_header(run.etag()),
            Json(IdOut { id: run.id }),
        )
            .into_response();
        let by_hand = json_answer(StatusCode::ACCEPTED, run.etag(), id_json(&run.id));
        assert_eq!(parts(by_hand).await, parts(by_axum).await);
    }

    #[test]
    fn a_put_answer_is_written_as_the_value_wrote_it() {
        let id = run("live").id;
        assert_eq!(
            serde_json::to_string(&IdOut { id }).unwrap(),
            serde_json::to_string(&json!({ "id": id })).unwrap()
        );
    }

    const RUN: &str = "/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs/01BTGNYV6HRNK8K8VKZASZCFP2";

    #[test]
    fn a_run_path_gives_its_ids_under_its_base() {
        let ids = [
            "101",
            "01BTGNYV6HRNK8K8VKZASZCFP0",
            "01BTGNYV6HRNK8K8VKZASZCFP1",
            "01BTGNYV6HRNK8K8VKZASZCFP2",
        ];
        assert_eq!(run_path_ids(RUN, ""), Some(ids));
        assert_eq!(run_path_ids(&format!("/v1{RUN}"), "/v1"), Some(ids));
        assert_eq!(run_path_ids(&format!("/a/b{RUN}"), "/a/b"), Some(ids));
        // Malformed ids are the handler's to name, as through the router.
        assert_eq!(
            run_path_ids("/demand/accounts/x/projects/y/target-groups/z/fielding-runs/w", ""),
            Some(["x", "y", "z", "w"])
        );
    }

    #[test]
    fn any_other_path_is_left_to_the_router() {
        for path in [
            format!("/v1{RUN}"),
            format!("{RUN}/"),
            format!("{RUN}/complete"),
            format!("{RUN}/changes"),
            RUN.replace("/101/", "//"),
            RUN.replace("/101/", "/1%301/"),
            format!("{RUN}%41"),
            RUN.replace("fielding-runs", "fielding-run-jobs"),
            RUN.replace("/demand/", "/Demand/"),
            RUN.trim_end_matches("01BTGNYV6HRNK8K8VKZASZCFP2").to_owned(),
            RUN.rsplit_once('/').unwrap().0.to_owned(),
            String::new(),
        ] {
            assert_eq!(run_path_ids(&path, ""), None, "{path}");
        }
        assert_eq!(run_path_ids(RUN, "/v1"), None, "outside the base path");
    }

    #[test]
    fn an_etag_header_is_what_etag_display_writes() {
        for version in [
            1,
            7,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            fielding_core::Version::MAX.get(),
        ] {
            let Some(version) = fielding_core::Version::new(version) else {
                continue;
            };
            let [(_, value)] = etag_header(version.etag());
            assert_eq!(value.to_str().unwrap(), version.etag().to_string());
        }
    }

    #[test]
    fn an_etag_header_is_the_quoted_version() {
        let run = run("live");
        let [(name, value)] = etag_header(run.etag());
        assert_eq!(name, header::ETAG);
        assert_eq!(value.to_str().unwrap(), "\"7\"");
        assert_eq!(value.to_str().unwrap(), run.etag().to_string());
    }
}
