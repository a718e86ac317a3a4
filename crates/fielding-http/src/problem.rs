//! The contract's error bodies.
//!
//! Every error a client sees is one of two JSON shapes: the standard
//! `Error` object (`{id, object, detail, invalid_params?}`) or, for 429, the
//! `TooManyRequestsProblemDetails` object (`{object, details}`). Building
//! them from one place means no framework default (plain text, HTML, an
//! empty body) can slip through, and a 500 never carries internal text.
//!
//! Error bodies are bounded whatever the request: at most
//! [`MAX_LISTED_PARAMS`] invalid params are listed (the detail says how many
//! more were left out), and text that may echo the request (a field name, a
//! reason quoting a value) is cut at [`MAX_ECHOED_CHARS`] or
//! [`MAX_REASON_CHARS`]. A body of thousands of unknown fields gets an
//! answer of a few hundred bytes, not one that grows with the request.

use std::borrow::Cow;

use fielding_core::{FieldingError, InvalidParam};
use serde::Serialize;
use uuid::Uuid;

/// The most `invalid_params` entries one error body lists.
pub const MAX_LISTED_PARAMS: usize = 5;

/// The longest parameter name an error body echoes, in characters.
pub const MAX_ECHOED_CHARS: usize = 64;

/// The longest reason or detail an error body carries, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// `text` cut to [`MAX_ECHOED_CHARS`] characters, `…` marking a cut.
pub(crate) fn clip(text: &str) -> Cow<'_, str> {
    clip_to(text, MAX_ECHOED_CHARS)
}

fn clip_to(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// `params` with long names and reasons cut, at most
/// [`MAX_LISTED_PARAMS`] of them, and how many were left out.
fn bounded(params: impl IntoIterator<Item = InvalidParam>) -> (Vec<InvalidParam>, usize) {
    let mut listed = Vec::new();
    let mut omitted = 0;
    for param in params {
        if listed.len() == MAX_LISTED_PARAMS {
            omitted += 1;
            continue;
        }
        let name = match clip(&param.name) {
            Cow::Borrowed(_) => param.name,
            Cow::Owned(cut) => Cow::Owned(cut),
        };
        let reason = clip_to(&param.reason, MAX_REASON_CHARS).into_owned();
        listed.push(InvalidParam { name, reason });
    }
    (listed, omitted)
}

/// The detail's note on what the list left out (empty when nothing was).
fn omitted_note(omitted: usize) -> String {
    match omitted {
        0 => String::new(),
        1 => " (and 1 more invalid parameter, not listed)".to_owned(),
        n => format!(" (and {n} more invalid parameters, not listed)"),
    }
}

/// The `object` of each error kind the HTTP layer produces.
pub mod object {
    /// 400: the request is malformed or a field is invalid.
    pub const BAD_REQUEST: &str = "bad_request_error";
    /// 401 and 403.
    pub const AUTHORIZATION: &str = "authorization_error";
    /// 404.
    pub const NOT_FOUND: &str = "not_found_error";
    /// 412.
    pub const PRECONDITION_FAILED: &str = "precondition_failed_error";
    /// 422.
    pub const INVALID_STATE: &str = "invalid_state_error";
    /// 410: a change-feed cursor whose records were pruned.
    pub const CURSOR_EXPIRED: &str = "cursor_expired_error";
    /// 500.
    pub const INTERNAL: &str = "unexpected_internal_error";
    /// 429 (a different body shape).
    pub const TOO_MANY_REQUESTS: &str = "too_many_requests_problem_details";
}

/// The contract's standard `Error` object.
///
/// ```
/// use fielding_core::FieldingError;
/// use fielding_http::problem::ErrorBody;
/// let body = ErrorBody::from_error(&FieldingError::invalid_field("end_fielding_at", "must be after start_fielding_at"));
/// let json = serde_json::to_value(&body)?;
/// assert_eq!(json["object"], "bad_request_error");
/// assert_eq!(json["invalid_params"][0]["name"], "end_fielding_at");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// A unique id for this error instance, to quote in a support request
    /// and to find in the server's logs.
    pub id: Uuid,
    /// The error kind, one of [`object`].
    pub object: Cow<'static, str>,
    /// What went wrong, in words a client can act on.
    pub detail: String,
    /// Each invalid field, header or path parameter, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_params: Option<Vec<InvalidParam>>,
}

impl ErrorBody {
    /// A body of kind `object` with a fresh id (a long `detail` is cut at
    /// [`MAX_REASON_CHARS`]).
    pub fn new(object: &'static str, detail: impl Into<String>) -> Self {
        Self::with_object(Cow::Borrowed(object), detail.into())
    }

    fn with_object(object: Cow<'static, str>, detail: String) -> Self {
        let detail = match clip_to(&detail, MAX_REASON_CHARS) {
            Cow::Borrowed(_) => detail,
            Cow::Owned(cut) => cut,
        };
        Self {
            id: Uuid::new_v4(),
            object,
            detail,
            invalid_params: None,
        }
    }

    /// A 400 body listing the bad parameters: at most
    /// [`MAX_LISTED_PARAMS`] of them, the detail saying how many more there
    /// were.
    ///
    /// ```
    /// use fielding_core::InvalidParam;
    /// use fielding_http::problem::{ErrorBody, MAX_LISTED_PARAMS};
    /// let params = (0..40).map(|i| InvalidParam::new(format!("f{i}"), "is not a known field"));
    /// let body = ErrorBody::invalid("invalid request", params.collect());
    /// assert_eq!(body.invalid_params.as_ref().map(Vec::len), Some(MAX_LISTED_PARAMS));
    /// assert!(body.detail.contains("35 more"), "{}", body.detail);
    /// ```
    pub fn invalid(detail: impl Into<String>, params: Vec<InvalidParam>) -> Self {
        let (listed, omitted) = bounded(params);
        Self::bad_request(detail.into(), listed, omitted)
    }

    /// A 400 body whose detail spells out each listed parameter
    /// (`invalid request: name: reason; ...`), bounded as
    /// [`ErrorBody::invalid`] is.
    pub fn listing(params: Vec<InvalidParam>) -> Self {
        let (listed, omitted) = bounded(params);
        let spelled = listed.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Self::bad_request(format!("invalid request: {spelled}"), listed, omitted)
    }

    fn bad_request(detail: String, listed: Vec<InvalidParam>, omitted: usize) -> Self {
        let mut body = Self::new(object::BAD_REQUEST, detail);
        // The note goes after the cut, so it is never cut away.
        body.detail.push_str(&omitted_note(omitted));
        body.invalid_params = Some(listed);
        body
    }

    /// The body for a use-case error: its machine code as `object`, its
    /// public detail (never a storage error's text), its invalid params
    /// (bounded as [`ErrorBody::invalid`] bounds them).
    pub fn from_error(error: &FieldingError) -> Self {
        let params = error.invalid_params();
        let mut body = Self::with_object(Cow::Borrowed(error.code()), error.public_detail());
        if !params.is_empty() {
            let (listed, omitted) = bounded(params.iter().cloned());
            body.detail.push_str(&omitted_note(omitted));
            body.invalid_params = Some(listed);
        }
        body
    }
}

/// The contract's `TooManyRequestsProblemDetails` (the 429 body).
///
/// ```
/// use fielding_http::problem::TooManyRequests;
/// let json = serde_json::to_value(TooManyRequests::after_seconds(3))?;
/// assert_eq!(json["object"], "too_many_requests_problem_details");
/// assert!(json["details"].as_str().unwrap().contains("3 seconds"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TooManyRequests {
    /// Always `too_many_requests_problem_details`.
    pub object: &'static str,
    /// What happened and when to try again.
    pub details: String,
}

impl TooManyRequests {
    /// The body for a refusal that lifts in `seconds` (the `Retry-After`).
    pub fn after_seconds(seconds: u64) -> Self {
        let unit = if seconds == 1 { "second" } else { "seconds" };
        Self {
            object: object::TOO_MANY_REQUESTS,
            details: format!("rate limit exceeded; retry after {seconds} {unit}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_core::{StoreError, Version};

    #[test]
    fn every_use_case_error_maps_to_its_contract_object() {
        let cases = [
            (FieldingError::invalid_field("x", "y"), "bad_request_error"),
            (FieldingError::NotFound { what: "run".into() }, "not_found_error"),
            (
                FieldingError::PreconditionFailed {
                    current: Version::INITIAL,
                },
                "precondition_failed_error",
            ),
            (
                FieldingError::CursorExpired {
                    after: fielding_core::FeedPosition::new(4, 0),
                },
                object::CURSOR_EXPIRED,
            ),
            (
                FieldingError::from(StoreError::backend("boom")),
                "unexpected_internal_error",
            ),
        ];
        for (error, object) in cases {
            let body = ErrorBody::from_error(&error);
            assert_eq!(body.object, object);
        }
    }

    #[test]
    fn internal_errors_never_leak_their_text() {
        let body = ErrorBody::from_error(&FieldingError::from(StoreError::backend("password=hunter2")));
        let json = serde_json::to_string(&body).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!json.contains("invalid_params"), "absent, not null: {json}");
    }

    #[test]
    fn ids_are_unique_per_error() {
        assert_ne!(
            ErrorBody::new(object::NOT_FOUND, "x").id,
            ErrorBody::new(object::NOT_FOUND, "x").id
        );
    }

    #[test]
    fn object_names_match_the_contract_pattern() {
        // Error.object: ^([a-z]*_)*([a-z]*)$
        for o in [
            object::BAD_REQUEST,
            object::AUTHORIZATION,
            object::NOT_FOUND,
            object::PRECONDITION_FAILED,
            object::INVALID_STATE,
            object::CURSOR_EXPIRED,
            object::INTERNAL,
        ] {
            assert!(o.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{o}");
        }
    }

    fn many(n: usize) -> Vec<InvalidParam> {
        (0..n)
            .map(|i| InvalidParam::new(format!("field_{i}"), "is not a known field"))
            .collect()
    }

    #[test]
    fn a_handful_of_params_are_listed_and_the_rest_counted() {
        let body = ErrorBody::listing(many(MAX_LISTED_PARAMS));
        assert_eq!(body.invalid_params.as_ref().unwrap().len(), MAX_LISTED_PARAMS);
        assert!(!body.detail.contains("more"), "{}", body.detail);
        let body = ErrorBody::listing(many(MAX_LISTED_PARAMS + 1));
        assert_eq!(body.invalid_params.as_ref().unwrap().len(), MAX_LISTED_PARAMS);
        assert!(
            body.detail.ends_with("(and 1 more invalid parameter, not listed)"),
            "{}",
            body.detail
        );
        let body = ErrorBody::listing(many(10_000));
        let names: Vec<&str> = body.invalid_params.iter().flatten().map(|p| p.name.as_ref()).collect();
        assert_eq!(
            names,
            ["field_0", "field_1", "field_2", "field_3", "field_4"],
            "the first ones, in order"
        );
        assert!(body.detail.contains("9995 more invalid parameters"), "{}", body.detail);
        assert!(serde_json::to_string(&body).unwrap().len() < 1024);
    }

    #[test]
    fn echoed_names_reasons_and_details_are_cut() {
        let long = "é".repeat(10_000);
        let body = ErrorBody::listing(vec![InvalidParam::new(long.clone(), long.clone())]);
        let param = &body.invalid_params.as_ref().unwrap()[0];
        assert_eq!(param.name.chars().count(), MAX_ECHOED_CHARS + 1);
        assert!(param.name.ends_with('…'));
        assert_eq!(param.reason.chars().count(), MAX_REASON_CHARS + 1);
        assert!(body.detail.chars().count() <= MAX_REASON_CHARS + 1);
        assert_eq!(
            ErrorBody::new(object::NOT_FOUND, long).detail.chars().count(),
            MAX_REASON_CHARS + 1
        );
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn use_case_errors_are_bounded_too() {
        let body = ErrorBody::from_error(&FieldingError::invalid(many(12)));
        assert_eq!(body.invalid_params.as_ref().unwrap().len(), MAX_LISTED_PARAMS);
        assert!(body.detail.contains("7 more"), "{}", body.detail);
    }

    #[test]
    fn retry_after_wording() {
        assert!(TooManyRequests::after_seconds(1).details.ends_with("1 second"));
    }
}
