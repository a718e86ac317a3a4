//! What axum's top-level routing does to every answer, for the answers
//! [`crate::ApiService`] makes without a `Router` around them (the gate's
//! 401 and 429, a run's `GET` and `PUT` served directly): a
//! `Content-Length` when the body's size is known, and no body for `HEAD`.
//! With it, the service answers alike whether an app serves it bare or
//! behind a `Router`.

use axum::http::{header, HeaderValue};
use axum::response::Response;

/// Sets `Content-Length` from the body's exact size when the answer has
/// none, as axum's `Router` does for every route.
pub(crate) fn set_content_length(response: &mut Response) {
    if response.headers().contains_key(header::CONTENT_LENGTH) {
        return;
    }
    if let Some(size) = axum::body::HttpBody::size_hint(response.body()).exact() {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
}

/// [`set_content_length`], then, for a `HEAD` request, the body dropped
/// (the length stays: it is the length a `GET` would get).
pub(crate) fn finish(is_head: bool, mut response: Response) -> Response {
    set_content_length(&mut response);
    if is_head {
        *response.body_mut() = axum::body::Body::empty();
    }
    response
}
