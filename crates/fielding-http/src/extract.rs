//! Reading a request: path ids, `Cint-API-Version`, the account check, the
//! body and its JSON fields. Shared by the run and the job handlers, so
//! every endpoint refuses the same mistakes with the same words.

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue};
use fielding_core::{AccountId, FieldingRunId, InvalidId, InvalidParam, ProjectId, RunKey, Scope, Timestamp};
use serde_json::{Map, Value};

use crate::api_error::ApiError;
use crate::auth::Principal;
use crate::state::BodyRules;
use crate::strict_json;

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
    scope_with(ids, run_id, Vec::new(), headers, principal)
}

/// [`scope_of`], with `found`: problems the caller found in the rest of
/// the request line (its query parameters), named in the same 400 after
/// the path's and before `Cint-API-Version`.
pub(crate) fn scope_with(
    ids: [&str; 3],
    run_id: Option<&str>,
    found: Vec<InvalidParam>,
    headers: &HeaderMap,
    principal: &Principal,
) -> Result<(Scope, Option<FieldingRunId>), ApiError> {
    let mut params: Vec<InvalidParam> = Vec::new();
    let scope = Scope::parse(ids[0], ids[1], ids[2]).map_err(|e| params.extend_from_slice(e.invalid_params()));
    let run_id = run_id.map(FieldingRunId::parse).transpose().map_err(|e| {
        params.push(InvalidParam::new(e.field(), e.reason()));
    });
    params.extend(found);
    params.extend(version_problem(headers));
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

/// The account and project of a batch path, checked as [`scope_of`]
/// checks a target group's: every malformed id named (400), with `bad`, a
/// further path id the caller found malformed (a job id), and a bad
/// `Cint-API-Version`; then the principal's access to the account (403).
pub(crate) fn project_of(
    ids: [&str; 2],
    bad: Option<&InvalidId>,
    headers: &HeaderMap,
    principal: &Principal,
) -> Result<(AccountId, ProjectId), ApiError> {
    let named = |e: InvalidId| InvalidParam::new(e.field(), e.reason().to_owned());
    let mut params: Vec<InvalidParam> = Vec::new();
    let account = ids[0].parse::<AccountId>().map_err(|e| params.push(named(e)));
    let project = ProjectId::parse(ids[1]).map_err(|e| params.push(named(e)));
    params.extend(bad.cloned().map(named));
    params.extend(version_problem(headers));
    match (account, project) {
        (Ok(account), Ok(project)) if params.is_empty() => {
            if principal.may_access(account) {
                Ok((account, project))
            } else {
                Err(ApiError::forbidden())
            }
        }
        _ => Err(ApiError::invalid(params)),
    }
}

/// The account of an account-wide path (the change feed), checked as
/// [`scope_of`] checks a target group's: a malformed id, the problems
/// `found` in the query, and a bad `Cint-API-Version` named in one 400;
/// then the principal's access to the account (403).
pub(crate) fn account_of(
    id: &str,
    found: Vec<InvalidParam>,
    headers: &HeaderMap,
    principal: &Principal,
) -> Result<AccountId, ApiError> {
    let mut params: Vec<InvalidParam> = Vec::new();
    let account = id
        .parse::<AccountId>()
        .map_err(|e| params.push(InvalidParam::new(e.field(), e.reason().to_owned())));
    params.extend(found);
    params.extend(version_problem(headers));
    match account {
        Ok(account) if params.is_empty() => {
            if principal.may_access(account) {
                Ok(account)
            } else {
                Err(ApiError::forbidden())
            }
        }
        _ => Err(ApiError::invalid(params)),
    }
}

/// What is wrong with the request's `Cint-API-Version`, if anything.
fn version_problem(headers: &HeaderMap) -> Option<InvalidParam> {
    crate::api_version::negotiate(
        headers
            .get_all(crate::api_version::HEADER_NAME)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .err()
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
    run_key_of([&account, &project, &target_group, &run], headers, principal)
}

/// The address of the run the path's four ids name, checked as
/// [`scope_of`] does.
pub(crate) fn run_key_of(ids: [&str; 4], headers: &HeaderMap, principal: &Principal) -> Result<RunKey, ApiError> {
    let [account, project, target_group, run] = ids;
    let (scope, run_id) = scope_of([account, project, target_group], Some(run), headers, principal)?;
    // `scope_of` returns a run id whenever it was given one.
    run_id.map(|id| scope.run(id)).ok_or_else(ApiError::no_route)
}

/// The request body, read whole within the rules: 408 when it has not
/// arrived within `rules.timeout` (counted from the first read, so the
/// time spent on the headers is not included), 413 past `rules.limit`
/// bytes, 400 naming `body` when it cannot be read at all (malformed
/// chunked encoding, a client that went away mid-body), and 415 when it is
/// not empty and not declared JSON ([`declares_json`]).
///
/// The body is read before its `Content-Type` is judged: a refused body
/// then never stays half-read on the connection, and at most
/// `rules.limit` bytes are read for it.
pub(crate) async fn read_body(rules: BodyRules, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let mut read = std::pin::pin!(collect_within(body, rules.limit));
    // A small body has usually arrived with its head: then the first read
    // finishes it and no timer is needed. Otherwise the timer starts now,
    // at the first read, as it would have without this first look; the
    // first read's waker stays registered, and the timeout polls again.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))).await;
    let read = match first {
        std::task::Poll::Ready(read) => read,
        std::task::Poll::Pending => tokio::time::timeout(rules.timeout, read)
            .await
            .map_err(|_| ApiError::request_timeout(rules.timeout))?,
    };
    let bytes = read.map_err(|failure| match failure {
        BodyFailure::TooLarge => ApiError::payload_too_large(rules.limit),
        BodyFailure::Failed(err) => ApiError::invalid_param("body", format!("could not be read: {err}")),
    })?;
    if !bytes.is_empty() && !declares_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    Ok(bytes)
}

/// Why a body could not be read whole.
#[derive(Debug)]
enum BodyFailure {
    /// More than the limit's bytes.
    TooLarge,
    /// The body failed (malformed chunked encoding, a client gone, ...).
    Failed(axum::Error),
}

/// The body's data, refused as soon as it passes `limit` bytes: what
/// `axum::body::to_bytes` reads (trailers ignored, every data frame
/// counted against the limit as it arrives), without its wrappers. A body
/// that comes in one frame, as a small one does, is returned as that frame,
/// uncopied.
async fn collect_within(mut body: Body, limit: usize) -> Result<Bytes, BodyFailure> {
    use http_body_util::BodyExt;
    let mut remaining = limit;
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyFailure::Failed)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        remaining = remaining.checked_sub(data.len()).ok_or(BodyFailure::TooLarge)?;
        match &first {
            None if joined.is_empty() => first = Some(data),
            _ => {
                if let Some(first) = first.take() {
                    // Room for what the body says is still to come (its
                    // `Content-Length`), within the limit.
                    let coming = usize::try_from(axum::body::HttpBody::size_hint(&body).lower()).unwrap_or(usize::MAX);
                    let expected = first.len().saturating_add(data.len()).saturating_add(coming);
                    joined.reserve_exact(expected.min(limit));
                    joined.extend_from_slice(&first);
                }
                append_within(&mut joined, &data, limit);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// Appends `data` to `joined`, growing it by doubling as a `Vec` would but
/// never past `limit`: a body sent in many small frames holds no more
/// memory than the limit allows. `joined.len() + data.len()` is within
/// `limit` (the caller counted it).
fn append_within(joined: &mut Vec<u8>, data: &[u8], limit: usize) {
    let needed = joined.len() + data.len();
    if needed > joined.capacity() {
        let target = needed.max(joined.capacity().saturating_mul(2)).min(limit).max(needed);
        joined.reserve_exact(target - joined.len());
    }
    joined.extend_from_slice(data);
}

/// Whether `Content-Type` declares JSON the way the contract's request
/// bodies are declared: one header line, the media type
/// `application/json` (any case), and no parameter but an optional
/// `charset=utf-8` (any case, quoted or not). Structured-syntax types such
/// as `application/merge-patch+json` mean something else and are refused,
/// as are other charsets: JSON between systems is UTF-8 (RFC 8259, 8.1).
pub(crate) fn declares_json(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(only), None) = (lines.next(), lines.next()) else {
        return false;
    };
    // What clients send, recognised without splitting and trimming it.
    if only.as_bytes() == b"application/json" {
        return true;
    }
    let Ok(text) = only.to_str() else {
        return false;
    };
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|parameter| {
            let parameter = parameter.trim();
            match parameter.split_once('=') {
                Some((name, value)) => {
                    name.eq_ignore_ascii_case("charset") && value.trim_matches('"').eq_ignore_ascii_case("utf-8")
                }
                None => parameter.is_empty(),
            }
        })
}

/// A JSON object body, and a refusal already noted for each key sent more
/// than once (at any depth, named by its path) and each field not in
/// `known` (400 for a body that is not a JSON object at all). Callers list
/// their own findings first: those are the ones worth reading when the
/// list is cut.
pub(crate) fn json_fields(bytes: &[u8], known: &[&str]) -> Result<(Map<String, Value>, Vec<InvalidParam>), ApiError> {
    let parsed =
        strict_json::parse(bytes).map_err(|e| ApiError::invalid_param("body", format!("is not valid JSON: {e}")))?;
    let Value::Object(fields) = parsed.value else {
        return Err(ApiError::invalid_param("body", "must be a JSON object"));
    };
    let mut params: Vec<InvalidParam> = parsed
        .repeated
        .into_iter()
        .map(|path| InvalidParam::new(path, "is sent more than once; send each field once"))
        .collect();
    params.extend(
        fields
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| InvalidParam::new(crate::problem::clip(k).into_owned(), "is not a known field")),
    );
    Ok((fields, params))
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
        Some(Value::String(text)) => match crate::rfc3339::parse(text) {
            Ok(t) => return Some(t),
            Err(e) => params.push(InvalidParam::new(name, e.to_string())),
        },
        Some(_) => params.push(InvalidParam::new(name, "must be an RFC 3339 timestamp string")),
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;
    use http_body_util::channel::Channel;
    use http_body_util::LengthLimitError;

    use super::*;

    fn with_type(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    const RULES: BodyRules = BodyRules {
        limit: 64,
        timeout: Duration::from_millis(200),
    };

    #[test]
    fn json_is_application_json_with_at_most_a_utf8_charset() {
        for json in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json ; charset=\"utf-8\"",
            "application/json;",
        ] {
            assert!(declares_json(&with_type(&[json])), "{json}");
        }
        for other in [
            "text/plain",
            "application/xml",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/merge-patch+json",
            "application/jsonx",
            "application/json; charset=latin1",
            "application/json; version=2",
            "application/json, text/plain",
            "",
            "json",
        ] {
            assert!(!declares_json(&with_type(&[other])), "{other}");
        }
        assert!(!declares_json(&HeaderMap::new()), "missing");
        assert!(
            !declares_json(&with_type(&["application/json", "application/json"])),
            "two lines are not one declaration"
        );
        let mut latin = HeaderMap::new();
        latin.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_bytes(b"application/json\xff").unwrap(),
        );
        assert!(!declares_json(&latin));
    }

    #[tokio::test]
    async fn an_empty_body_needs_no_content_type_and_any_other_needs_json() {
        let empty = read_body(RULES, &HeaderMap::new(), Body::empty()).await.unwrap();
        assert!(empty.is_empty());
        let empty = read_body(RULES, &with_type(&["text/plain"]), Body::empty()).await;
        assert!(empty.is_ok(), "no content, nothing to declare");
        for headers in [HeaderMap::new(), with_type(&["text/plain"])] {
            let err = read_body(RULES, &headers, Body::from("{}")).await.unwrap_err();
            assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert_eq!(err.body().object, "bad_request_error");
        }
        let json = read_body(RULES, &with_type(&["application/json"]), Body::from("{}")).await;
        assert_eq!(json.unwrap(), "{}");
        let big = read_body(RULES, &with_type(&["text/plain"]), Body::from(vec![b' '; 65])).await;
        assert_eq!(
            big.unwrap_err().status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "size is judged first"
        );
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_is_408_after_the_timeout() {
        let (mut sender, stalled) = Channel::<Bytes, std::convert::Infallible>::new(1);
        // Part of the body arrives; the rest never does (the sender lives on).
        sender.send_data(Bytes::from_static(b"{\"end")).await.unwrap();
        let started = Instant::now();
        let err = read_body(RULES, &with_type(&["application/json"]), Body::new(stalled))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(err.ends_connection());
        assert!(err.body().detail.contains("200 ms"), "{}", err.body().detail);
        assert!(waited >= RULES.timeout, "{waited:?}");
        assert!(waited < RULES.timeout + Duration::from_secs(5), "{waited:?}");
        drop(sender);
    }

    #[tokio::test]
    async fn the_timeout_bounds_the_whole_body_not_each_read() {
        let (mut sender, trickle) = Channel::<Bytes, std::convert::Infallible>::new(1);
        // A byte every 50 ms never waits long for the next read, yet the
        // whole body takes longer than the timeout.
        let feeder = tokio::spawn(async move {
            for _ in 0..60 {
                if sender.send_data(Bytes::from_static(b" ")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let err = read_body(RULES, &with_type(&["application/json"]), Body::new(trickle))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        feeder.abort();
    }

    #[tokio::test]
    async fn a_body_that_has_arrived_is_read_without_waiting() {
        let (mut sender, arrived) = Channel::<Bytes, std::convert::Infallible>::new(2);
        sender.send_data(Bytes::from_static(b"{}")).await.unwrap();
        drop(sender);
        let read = read_body(RULES, &with_type(&["application/json"]), Body::new(arrived)).await;
        assert_eq!(read.unwrap(), "{}");
    }

    #[tokio::test]
    async fn a_body_that_arrives_after_the_first_read_is_read_whole() {
        let (mut sender, later) = Channel::<Bytes, std::convert::Infallible>::new(1);
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send_data(Bytes::from_static(b"{")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send_data(Bytes::from_static(b"}")).await.unwrap();
        });
        let read = read_body(RULES, &with_type(&["application/json"]), Body::new(later)).await;
        assert_eq!(read.unwrap(), "{}");
        feeder.await.unwrap();
    }

    /// What `read_body` made of `axum::body::to_bytes`' answer before it
    /// read bodies itself.
    async fn through_axum(body: Body, limit: usize) -> Result<Bytes, String> {
        axum::body::to_bytes(body, limit).await.map_err(|err| {
            if std::error::Error::source(&err).is_some_and(|source| source.is::<LengthLimitError>()) {
                "too large".to_owned()
            } else {
                format!("could not be read: {err}")
            }
        })
    }

    async fn through_collect(body: Body, limit: usize) -> Result<Bytes, String> {
        collect_within(body, limit).await.map_err(|failure| match failure {
            BodyFailure::TooLarge => "too large".to_owned(),
            BodyFailure::Failed(err) => format!("could not be read: {err}"),
        })
    }

    #[derive(Debug)]
    struct Gone;

    impl std::fmt::Display for Gone {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the client went away")
        }
    }

    impl std::error::Error for Gone {}

    /// A body of these frames, then trailers and an error if asked.
    async fn frames(chunks: &[&'static [u8]], trailers: bool, fail: bool) -> Body {
        let (mut sender, body) = Channel::<Bytes, Gone>::new(16);
        for chunk in chunks {
            sender.send_data(Bytes::from_static(chunk)).await.unwrap();
        }
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("x-trailer", HeaderValue::from_static("1"));
            sender.send_trailers(map).await.unwrap();
        }
        if fail {
            sender.abort(Gone);
        }
        Body::new(body)
    }

    /// A body in many small frames holds no more than the limit: the
    /// joined buffer doubles, but never past it.
    #[test]
    fn a_body_in_small_frames_holds_no_more_than_the_limit() {
        for limit in [1, 7, 64, 1000, 4096] {
            let mut joined = Vec::new();
            for _ in 0..limit {
                append_within(&mut joined, b"x", limit);
                assert!(
                    joined.capacity() <= limit,
                    "capacity {} over {limit}",
                    joined.capacity()
                );
            }
            assert_eq!(joined.len(), limit);
        }
        // Frames of uneven sizes adding up to exactly the limit.
        let mut joined = Vec::new();
        for chunk in [3usize, 1, 200, 17, 779] {
            append_within(&mut joined, &vec![b'y'; chunk], 1000);
            assert!(joined.capacity() <= 1000);
        }
        assert_eq!(joined.len(), 1000);
    }

    #[tokio::test]
    async fn bodies_are_read_as_axums_to_bytes_reads_them() {
        let cases: &[&[&'static [u8]]] = &[
            &[],
            &[b""],
            &[b"{}"],
            &[b"{", b"}"],
            &[b"", b"{}", b""],
            &[&[b' '; 64]],
            &[&[b' '; 65]],
            &[&[b' '; 32], &[b' '; 32]],
            &[&[b' '; 32], &[b' '; 33]],
            &[&[b' '; 70], b"x"],
            &[b"a", b"b", b"c"],
        ];
        for chunks in cases {
            for trailers in [false, true] {
                for fail in [false, true] {
                    let axum = through_axum(frames(chunks, trailers, fail).await, 64).await;
                    let ours = through_collect(frames(chunks, trailers, fail).await, 64).await;
                    assert_eq!(ours, axum, "{chunks:?} trailers {trailers} fail {fail}");
                }
            }
        }
        for limit in [0, 1, 2, 3] {
            for chunks in cases {
                let axum = through_axum(frames(chunks, false, false).await, limit).await;
                let ours = through_collect(frames(chunks, false, false).await, limit).await;
                assert_eq!(ours, axum, "{chunks:?} limit {limit}");
            }
        }
    }

    #[test]
    fn repeated_and_unknown_keys_are_noted_after_parsing_once() {
        let (fields, params) = json_fields(br#"{"a":1,"b":2,"a":3,"zz":{"q":1,"q":2}}"#, &["a", "b"]).unwrap();
        assert_eq!(fields["a"], 3);
        let names: Vec<&str> = params.iter().map(|p| p.name.as_ref()).collect();
        assert_eq!(names, ["a", "zz.q", "zz"]);
        assert!(params[0].reason.contains("more than once"), "{}", params[0].reason);
        assert_eq!(params[2].reason, "is not a known field");
    }
}
