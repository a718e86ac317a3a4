//! Per-principal rate limiting: one token bucket per principal.
//!
//! The buckets are `governor`'s GCRA limiter keyed by the principal's user
//! id, checked right after authentication (so an unauthenticated flood is
//! refused with 401 without touching the buckets, and one noisy principal
//! cannot starve another). A refusal carries the whole seconds until a
//! request would pass, at least 1: the `Retry-After` value.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fielding_core::UserId;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::problem::TooManyRequests;

/// How many requests a principal may make.
///
/// ```
/// use fielding_http::rate_limit::RateLimitPolicy;
/// let policy = RateLimitPolicy::per_second(50, 100).expect("non-zero");
/// assert_eq!(policy.burst(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitPolicy {
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl RateLimitPolicy {
    /// A sustained rate of `per_second` requests per second with bursts of
    /// up to `burst`. `None` if either is zero.
    pub fn per_second(per_second: u32, burst: u32) -> Option<Self> {
        Some(Self {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }

    /// The sustained rate.
    pub fn rate(&self) -> u32 {
        self.per_second.get()
    }

    /// The burst size.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }
}

impl Default for RateLimitPolicy {
    /// 100 requests per second, bursts of 200.
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::MIN.saturating_add(99),
            burst: NonZeroU32::MIN.saturating_add(199),
        }
    }
}

/// One token bucket per key: per principal by default (the API's limit);
/// the server keys another by client address.
#[derive(Debug)]
pub struct RateLimiter<K = UserId>
where
    K: Clone + Eq + Hash,
{
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Clone + Eq + Hash> RateLimiter<K> {
    /// Buckets that follow `policy`.
    pub fn new(policy: RateLimitPolicy) -> Self {
        let quota = Quota::per_second(policy.per_second).allow_burst(policy.burst);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    /// Takes one request from `key`'s bucket, or says how many whole
    /// seconds (at least 1) until one would pass.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            retry_after_seconds(wait)
        })
    }

    /// Forgets buckets that are full again, so memory stays bounded by the
    /// principals active recently. Call it now and then (the server does it
    /// once a minute).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The refusal: 429 with `Retry-After: seconds` and the contract's
/// `TooManyRequestsProblemDetails` body.
pub fn too_many_requests(seconds: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(seconds))],
        Json(TooManyRequests::after_seconds(seconds)),
    )
        .into_response()
}

/// Whole seconds, rounded up, never below 1.
fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(59)), 59);
    }

    #[test]
    fn a_burst_passes_then_the_bucket_refuses_with_a_wait() {
        let limiter = RateLimiter::new(RateLimitPolicy::per_second(1, 3).unwrap());
        let who = UserId::random();
        for _ in 0..3 {
            assert_eq!(limiter.check(&who), Ok(()));
        }
        let wait = limiter.check(&who).unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
    }

    #[test]
    fn principals_have_separate_buckets() {
        let limiter = RateLimiter::new(RateLimitPolicy::per_second(1, 1).unwrap());
        let (a, b) = (UserId::random(), UserId::random());
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_err());
        assert!(limiter.check(&b).is_ok(), "b is not slowed by a");
    }

    #[test]
    fn zero_rates_are_refused() {
        assert!(RateLimitPolicy::per_second(0, 1).is_none());
        assert!(RateLimitPolicy::per_second(1, 0).is_none());
        assert_eq!(RateLimitPolicy::default().rate(), 100);
    }
}
