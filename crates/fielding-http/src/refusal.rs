//! Counting refusals through the [`metrics`] facade instead of logging each.
//!
//! A flood of requests without a valid token, or of malformed ones, must
//! cost the server as little as possible: one log line per refusal turned
//! tens of thousands of 401s a second into tens of MiB of logs a second.
//! Refusals are therefore logged at `debug` at most, and counted in the
//! counter [`COUNTER`] with one label, `reason`, from a small fixed set
//! ([`Refusal::label`]) so the number of series never grows with what
//! clients send. Without a recorder installed (see the `metrics` crate)
//! counting is a no-op.
//!
//! Only the refusals of a request itself are counted: answers about the
//! resource a well-formed request names (404 of a run or job, 412, 422)
//! and server failures (500) are not refusals.

use axum::http::StatusCode;

/// The counter's name.
pub const COUNTER: &str = "fielding_http_refusals_total";

/// The counter's one label.
pub const LABEL: &str = "reason";

/// Why a request was refused: the `reason` label's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 401: no credential, or one the authenticator refused.
    Unauthenticated,
    /// 403: the principal may not act on the account.
    Forbidden,
    /// 429: the principal's bucket is empty.
    RateLimited,
    /// 400: a malformed path id, header or body, or an invalid field.
    BadRequest,
    /// 404 for a path no route serves, and 405.
    NoRoute,
    /// 415: a body that is not declared JSON.
    UnsupportedMediaType,
    /// 413: a body over the limit.
    PayloadTooLarge,
    /// 408: a body not received within the body timeout.
    RequestTimeout,
}

impl Refusal {
    /// Every reason, in the order of the table in `docs/http.md`.
    pub const ALL: [Refusal; 8] = [
        Refusal::Unauthenticated,
        Refusal::Forbidden,
        Refusal::RateLimited,
        Refusal::BadRequest,
        Refusal::NoRoute,
        Refusal::UnsupportedMediaType,
        Refusal::PayloadTooLarge,
        Refusal::RequestTimeout,
    ];

    /// The `reason` label's value.
    ///
    /// ```
    /// use fielding_http::refusal::Refusal;
    /// assert_eq!(Refusal::Unauthenticated.label(), "unauthenticated");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Forbidden => "forbidden",
            Refusal::RateLimited => "rate_limited",
            Refusal::BadRequest => "bad_request",
            Refusal::NoRoute => "no_route",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::PayloadTooLarge => "payload_too_large",
            Refusal::RequestTimeout => "request_timeout",
        }
    }

    /// The refusal an answer with `status` is, if it is one. A 404 is not:
    /// it may be a well-formed request for a run that does not exist; the
    /// router's fallback counts its own 404s as [`Refusal::NoRoute`].
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use fielding_http::refusal::Refusal;
    /// assert_eq!(Refusal::of_status(StatusCode::UNSUPPORTED_MEDIA_TYPE), Some(Refusal::UnsupportedMediaType));
    /// assert_eq!(Refusal::of_status(StatusCode::PRECONDITION_FAILED), None);
    /// ```
    pub fn of_status(status: StatusCode) -> Option<Self> {
        Some(match status {
            StatusCode::BAD_REQUEST => Refusal::BadRequest,
            StatusCode::UNAUTHORIZED => Refusal::Unauthenticated,
            StatusCode::FORBIDDEN => Refusal::Forbidden,
            StatusCode::METHOD_NOT_ALLOWED => Refusal::NoRoute,
            StatusCode::REQUEST_TIMEOUT => Refusal::RequestTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => Refusal::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Refusal::UnsupportedMediaType,
            StatusCode::TOO_MANY_REQUESTS => Refusal::RateLimited,
            _ => return None,
        })
    }

    /// Adds one to the counter under this reason.
    pub(crate) fn count(self) {
        metrics::counter!(COUNTER, LABEL => self.label()).increment(1);
    }
}

/// Describes [`COUNTER`] to the installed recorder (its help text in a
/// Prometheus exposition). Optional; call it once after installing one.
pub fn describe() {
    metrics::describe_counter!(
        COUNTER,
        metrics::Unit::Count,
        "Requests refused before or instead of being served, by reason"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn labels_are_distinct_lowercase_words() {
        let labels: std::collections::HashSet<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn each_refusal_status_maps_back_to_its_reason() {
        for refusal in Refusal::ALL {
            let status = match refusal {
                Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
                Refusal::Forbidden => StatusCode::FORBIDDEN,
                Refusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                Refusal::BadRequest => StatusCode::BAD_REQUEST,
                Refusal::NoRoute => StatusCode::METHOD_NOT_ALLOWED,
                Refusal::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Refusal::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            };
            assert_eq!(Refusal::of_status(status), Some(refusal));
        }
        for outcome in [
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::PRECONDITION_FAILED,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert_eq!(Refusal::of_status(outcome), None, "{outcome}");
        }
    }

    #[test]
    fn count_adds_one_under_the_label() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            Refusal::Forbidden.count();
            Refusal::Forbidden.count();
            Refusal::BadRequest.count();
        });
        let mut counts: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == COUNTER)
            .map(|(key, _, _, value)| {
                let label = key
                    .key()
                    .labels()
                    .find(|l| l.key() == LABEL)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                let DebugValue::Counter(n) = value else {
                    panic!("{COUNTER} is a counter")
                };
                (label, n)
            })
            .collect();
        counts.sort();
        assert_eq!(counts, [("bad_request".to_owned(), 1), ("forbidden".to_owned(), 2)]);
    }
}
