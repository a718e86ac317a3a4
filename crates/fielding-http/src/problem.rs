//! The contract's error bodies.
//!
//! Every error a client sees is one of two JSON shapes: the standard
//! `Error` object (`{id, object, detail, invalid_params?}`) or, for 429, the
//! `TooManyRequestsProblemDetails` object (`{object, details}`). Building
//! them from one place means no framework default (plain text, HTML, an
//! empty body) can slip through, and a 500 never carries internal text.

use std::borrow::Cow;

use fielding_core::{FieldingError, InvalidParam};
use serde::Serialize;
use uuid::Uuid;

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
    /// A body of kind `object` with a fresh id.
    pub fn new(object: &'static str, detail: impl Into<String>) -> Self {
        Self {
            id: Uuid::new_v4(),
            object: Cow::Borrowed(object),
            detail: detail.into(),
            invalid_params: None,
        }
    }

    /// A 400 body naming every bad parameter.
    pub fn invalid(detail: impl Into<String>, params: Vec<InvalidParam>) -> Self {
        Self {
            invalid_params: Some(params),
            ..Self::new(object::BAD_REQUEST, detail)
        }
    }

    /// The body for a use-case error: its machine code as `object`, its
    /// public detail (never a storage error's text), its invalid params.
    pub fn from_error(error: &FieldingError) -> Self {
        let params = error.invalid_params();
        Self {
            id: Uuid::new_v4(),
            object: Cow::Borrowed(error.code()),
            detail: error.public_detail(),
            invalid_params: (!params.is_empty()).then(|| params.to_vec()),
        }
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
            object::INTERNAL,
        ] {
            assert!(o.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{o}");
        }
    }

    #[test]
    fn retry_after_wording() {
        assert!(TooManyRequests::after_seconds(1).details.ends_with("1 second"));
    }
}
