//! One error type for every refusal the router sends, so every error
//! response has the contract's body and status, and 500s are logged with
//! their cause but shown without it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fielding_core::{FieldingError, InvalidParam};

use crate::problem::{object, ErrorBody};

/// A refusal: a status and the contract's `Error` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Sent as `WWW-Authenticate: Bearer` (401 only).
    challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, object: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(object, detail),
            challenge: false,
        }
    }

    /// 400 naming each bad parameter.
    pub fn invalid(params: Vec<InvalidParam>) -> Self {
        let detail = params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.reason))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::invalid(format!("invalid request: {detail}"), params),
            challenge: false,
        }
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
        Self::new(StatusCode::NOT_FOUND, object::NOT_FOUND, "resource not found")
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
        Self {
            status,
            body,
            challenge: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
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
