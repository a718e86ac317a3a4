//! One error type for every refusal the router sends, so every error
//! response has the contract's body and status, and 500s are logged with
//! their cause but shown without it.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fielding_core::{FieldingError, InvalidParam};

use crate::problem::{object, ErrorBody};
use crate::refusal::Refusal;

/// A refusal: a status and the contract's `Error` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Sent as `WWW-Authenticate: Bearer` (401 only).
    challenge: bool,
    /// Counted in [`crate::refusal::COUNTER`] when sent.
    refusal: Option<Refusal>,
}

impl ApiError {
    fn new(status: StatusCode, object: &'static str, detail: impl Into<String>) -> Self {
        Self::with_body(status, ErrorBody::new(object, detail))
    }

    fn with_body(status: StatusCode, body: ErrorBody) -> Self {
        Self {
            status,
            body,
            challenge: false,
            refusal: Refusal::of_status(status),
        }
    }

    /// 400 naming each bad parameter (the first
    /// [`crate::problem::MAX_LISTED_PARAMS`] of them, then how many more).
    pub fn invalid(params: Vec<InvalidParam>) -> Self {
        Self::with_body(StatusCode::BAD_REQUEST, ErrorBody::listing(params))
    }

    /// 400 for one bad parameter.
    pub fn invalid_param(name: &'static str, reason: impl Into<String>) -> Self {
        Self::invalid(vec![InvalidParam::new(name, reason)])
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> Self {
        Self {
            challenge: true,
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                object::AUTHORIZATION,
                "no valid authorization provided for this operation",
            )
        }
    }

    /// 403.
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            object::AUTHORIZATION,
            "you don't have the right permissions to perform this operation",
        )
    }

    /// 404 for a path no route serves.
    pub fn no_route() -> Self {
        Self {
            refusal: Some(Refusal::NoRoute),
            ..Self::new(StatusCode::NOT_FOUND, object::NOT_FOUND, "resource not found")
        }
    }

    /// 405, in the error format (never axum's empty default).
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            object::BAD_REQUEST,
            "this method is not allowed on this resource",
        )
    }

    /// 413.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            object::BAD_REQUEST,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 415: a body that is not declared `application/json`. The contract
    /// has no 415 response; the body is its `Error`, as for 405 and 413.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            object::BAD_REQUEST,
            "a request body must be JSON, sent with Content-Type: application/json",
        )
    }

    /// 408: the body did not arrive whole within `timeout`.
    pub fn request_timeout(timeout: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            object::BAD_REQUEST,
            format!(
                "the request body was not received within {} ms; send it whole, at once",
                timeout.as_millis()
            ),
        )
    }

    /// Whether the request's body may be left partly unread when this is
    /// sent (413, 408): then the connection cannot carry another request.
    pub fn ends_connection(&self) -> bool {
        matches!(self.status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT)
    }

    /// The status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body this error is sent with.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

/// The HTTP status the contract gives a kind of [`FieldingError`].
///
/// ```
/// use axum::http::StatusCode;
/// use fielding_core::{FieldingError, Version};
/// use fielding_http::api_error::status_of;
/// assert_eq!(status_of(&FieldingError::invalid_field("end_fielding_at", "is required")), StatusCode::BAD_REQUEST);
/// assert_eq!(status_of(&FieldingError::PreconditionFailed { current: Version::INITIAL }), StatusCode::PRECONDITION_FAILED);
/// ```
pub fn status_of(error: &FieldingError) -> StatusCode {
    match error {
        FieldingError::Validation { .. } => StatusCode::BAD_REQUEST,
        FieldingError::NotFound { .. } => StatusCode::NOT_FOUND,
        FieldingError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        FieldingError::InvalidState { .. } | FieldingError::TargetGroupHasRun { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        // Kubernetes answers a compacted `resourceVersion` the same way.
        FieldingError::CursorExpired { .. } => StatusCode::GONE,
        // Storage failures, and kinds added to the core later: never
        // claim the client's fault for what the server cannot explain.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<FieldingError> for ApiError {
    fn from(error: FieldingError) -> Self {
        let status = status_of(&error);
        let body = ErrorBody::from_error(&error);
        if status.is_server_error() {
            // The cause goes to the logs under the id the client sees.
            tracing::error!(error_id = %body.id, error = ?error, "request failed");
        }
        Self::with_body(status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(refusal) = self.refusal {
            refusal.count();
        }
        let ends_connection = self.ends_connection();
        let mut response = (self.status, Json(self.body)).into_response();
        if self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            // What would have been accepted (RFC 9110, section 15.5.16).
            response
                .headers_mut()
                .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        if ends_connection {
            // The rest of the body is never read, so the connection cannot
            // carry another request: say so (RFC 9112, section 9.6), or a
            // client that pools connections will send its next request into
            // a socket the server is closing.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
