//! Shared by the `e2e_*` test files: the macro that runs every case on each
//! store, and the requests most cases send.

#![allow(dead_code)]

use axum::http::{Method, StatusCode};
use fielding_core::FieldingRun;

use crate::common::live::{authed, run_path, Live, Reply};

/// The current ETag of every seeded run under test (seeded at version 7).
pub const CURRENT: &str = "\"7\"";
pub const STALE: &str = "\"6\"";

/// Declares each case once per store: `memory::case`, `sqlite::case` and
/// `postgres::case`. Each case is an `async fn case(backend: Backend)`.
/// The PostgreSQL cases follow `common::pg::available`: they run wherever
/// `FIELDING_PG_URL` or `CI` is set (and fail if the server is missing),
/// and return early only on a developer's machine without a server, after
/// the binary printed its `SKIPPED` line.
macro_rules! e2e {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::common::live::Backend::Memory).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::common::live::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if crate::common::pg::available().await {
                        super::$case(crate::common::live::Backend::Postgres).await
                    }
                }
            )*
        }
    };
}

/// PUT of the run's dates with these `If-Match` lines.
pub async fn put(live: &Live, run: &FieldingRun, if_match: &[&str], body: &str) -> Reply {
    let extra: Vec<(&str, &str)> = if_match.iter().map(|v| ("if-match", *v)).collect();
    live.send(Method::PUT, &run_path(run), &authed(&extra), body).await
}

/// POST of `command` (`pause`, `launch-now`, ...) on the run.
pub async fn post(live: &Live, run: &FieldingRun, command: &str, if_match: &str, body: &str) -> Reply {
    live.send(
        Method::POST,
        &format!("{}/{command}", run_path(run)),
        &authed(&[("if-match", if_match)]),
        body,
    )
    .await
}

#[track_caller]
pub fn assert_etag(reply: &Reply, expected: &str) {
    assert_eq!(reply.header("etag"), Some(expected), "{}", reply.json);
}

/// `days` from now (negative: in the past), as the contract writes instants.
pub fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Sends until the principal's bucket is empty: the first 429 (at most 100
/// tries; at one request a second that is never more than a couple).
pub async fn until_429(live: &Live, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    for _ in 0..100 {
        let reply = live.send(method.clone(), path, headers, body).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            return reply;
        }
        assert!(!reply.status.is_server_error(), "{}", reply.json);
    }
    panic!("{method} {path}: no 429 after 100 requests at a rate of 1/s");
}
