//! The change-feed endpoints (`docs/feed-openapi.yml`, extensions of the
//! contract):
//!
//! * `GET /demand/accounts/{account_id}/fielding-run-changes?after=&limit=&wait=`:
//!   an account's change records in commit order, from a cursor, as a long
//!   poll when `wait` is given;
//! * `GET .../fielding-runs/{fielding_run_id}/changes?after=&limit=`: one
//!   run's history, by version.
//!
//! Checks run in the router's order: authentication and rate limit (in the
//! middleware), then path ids, query parameters and `Cint-API-Version`
//! (400, every bad one named), the account (403), then the run (404, run
//! history only) or the cursor (410 when records after it were pruned).
//!
//! A long poll holds its connection while it waits, but no timeout of the
//! server cuts it: the server times request heads and idle connections,
//! not requests being served. It ends early when the app shuts down
//! ([`crate::FieldingApi::with_shutdown`]), answering what is there, so a
//! stopping server does not wait out the longest `wait`.

use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fielding_core::{
    AccountId, FeedPage, FeedPosition, InvalidParam, Version, DEFAULT_FEED_PAGE, MAX_FEED_PAGE, MAX_FEED_WAIT,
};

use crate::api_error::ApiError;
use crate::auth::Principal;
use crate::extract::{account_of, path_error, scope_with, ItemPath};
use crate::json::{FieldingRunChange, FieldingRunChangePage};
use crate::query::{self, Query};
use crate::state::{ApiState, AppState};

/// The account feed's path.
pub(crate) const FEED_PATH: &str = "/demand/accounts/{account_id}/fielding-run-changes";

/// The gauge of long polls waiting right now (see `docs/http.md`): what
/// they hold is a connection each, so this is the number to size the
/// server's connection cap by.
pub const LONG_POLLS_WAITING: &str = "fielding_http_long_polls_waiting";

/// The path of an account.
type AccountPath = Result<Path<String>, PathRejection>;

/// `GET /demand/accounts/{account_id}/fielding-run-changes`.
pub(crate) async fn account_changes(
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: AccountPath,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(account) = path.map_err(path_error)?;
    let (query, found) = query::parse(raw.as_deref(), &["after", "limit", "wait"]);
    let mut params = Vec::new();
    let after = cursor_param(&query, &mut params);
    let limit = limit_param(&query, &mut params);
    let wait = wait_param(&query, &mut params);
    params.extend(found);
    let account = account_of(&account, params, &headers, &principal)?;
    let page = read_or_wait(&api, account, after, limit, wait).await?;
    Ok(Json(FieldingRunChangePage {
        data: page.records.iter().map(FieldingRunChange::from).collect(),
        next_cursor: page.next.to_string(),
        has_more: page.has_more,
    })
    .into_response())
}

/// `GET .../fielding-runs/{fielding_run_id}/changes`.
pub(crate) async fn run_changes(
    State(api): AppState,
    Extension(principal): Extension<Principal>,
    path: ItemPath,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((account, project, target_group, run)) = path.map_err(path_error)?;
    let (query, found) = query::parse(raw.as_deref(), &["after", "limit"]);
    let mut params = Vec::new();
    let after = version_param(&query, &mut params);
    let limit = limit_param(&query, &mut params);
    params.extend(found);
    let (scope, run_id) = scope_with(
        [&account, &project, &target_group],
        Some(&run),
        params,
        &headers,
        &principal,
    )?;
    // `scope_with` returns a run id whenever it was given one.
    let key = run_id.map(|id| scope.run(id)).ok_or_else(ApiError::no_route)?;
    let page = api.service.run_history(&key, after, limit).await?;
    Ok(Json(FieldingRunChangePage {
        data: page
            .records
            .iter()
            .map(|change| FieldingRunChange::new(&scope, change, None))
            .collect(),
        // Before any record: 0, which `after` reads as "from the oldest".
        next_cursor: page.next.map_or(0, Version::get).to_string(),
        has_more: page.has_more,
    })
    .into_response())
}

/// One page, after waiting up to `wait` for one when there is none yet.
async fn read_or_wait(
    api: &ApiState,
    account: AccountId,
    after: Option<FeedPosition>,
    limit: usize,
    wait: Duration,
) -> Result<FeedPage, ApiError> {
    if wait.is_zero() || api.shutdown.is_cancelled() {
        return Ok(api.service.read_feed(account, after, limit).await?);
    }
    let _waiting = Waiting::start();
    tokio::select! {
        page = api.service.wait_for_changes(account, after, limit, wait) => Ok(page?),
        // Stopping: answer what is there now (most likely an empty page and
        // the cursor to poll on from, which the next instance serves).
        () = api.shutdown.cancelled() => Ok(api.service.read_feed(account, after, limit).await?),
    }
}

/// Counts one long poll in [`LONG_POLLS_WAITING`] while it lives (also
/// when its client goes away and the handler is dropped).
struct Waiting;

impl Waiting {
    fn start() -> Self {
        metrics::gauge!(LONG_POLLS_WAITING).increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!(LONG_POLLS_WAITING).decrement(1.0);
    }
}

/// `after` of the account feed: a cursor from an earlier page.
fn cursor_param(query: &Query, params: &mut Vec<InvalidParam>) -> Option<FeedPosition> {
    let text = query.get("after")?;
    FeedPosition::parse_cursor(text, "after")
        .map_err(|e| params.push(InvalidParam::new(e.field(), e.reason().to_owned())))
        .ok()
}

/// `after` of a run's history: a version (0: from the oldest record).
fn version_param(query: &Query, params: &mut Vec<InvalidParam>) -> Option<Version> {
    let text = query.get("after")?;
    match query::whole_number(text, 0..=Version::MAX.get()) {
        Some(n) => Version::new(n),
        None => {
            params.push(InvalidParam::new(
                "after",
                "must be a version: a whole number, 0 to read from the oldest record",
            ));
            None
        }
    }
}

/// `limit`: records per page, [`DEFAULT_FEED_PAGE`] when not given.
fn limit_param(query: &Query, params: &mut Vec<InvalidParam>) -> usize {
    let Some(text) = query.get("limit") else {
        return DEFAULT_FEED_PAGE;
    };
    let max = MAX_FEED_PAGE as u64;
    match query::whole_number(text, 1..=max).and_then(|n| usize::try_from(n).ok()) {
        Some(limit) => limit,
        None => {
            params.push(InvalidParam::new(
                "limit",
                format!("must be a whole number from 1 to {MAX_FEED_PAGE}"),
            ));
            DEFAULT_FEED_PAGE
        }
    }
}

/// `wait`: whole seconds to wait for a record, 0 (the default) for none.
fn wait_param(query: &Query, params: &mut Vec<InvalidParam>) -> Duration {
    let Some(text) = query.get("wait") else {
        return Duration::ZERO;
    };
    match query::whole_number(text, 0..=MAX_FEED_WAIT.as_secs()) {
        Some(seconds) => Duration::from_secs(seconds),
        None => {
            params.push(InvalidParam::new(
                "wait",
                format!(
                    "must be a whole number of seconds from 0 to {}",
                    MAX_FEED_WAIT.as_secs()
                ),
            ));
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> (Option<FeedPosition>, usize, Duration, Vec<String>) {
        let (query, mut params) = query::parse(Some(raw), &["after", "limit", "wait"]);
        let after = cursor_param(&query, &mut params);
        let limit = limit_param(&query, &mut params);
        let wait = wait_param(&query, &mut params);
        (after, limit, wait, params.iter().map(|p| p.name.to_string()).collect())
    }

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(parsed(""), (None, DEFAULT_FEED_PAGE, Duration::ZERO, vec![]));
        assert_eq!(
            parsed("after=7.0&limit=1000&wait=30"),
            (Some(FeedPosition::new(7, 0)), MAX_FEED_PAGE, MAX_FEED_WAIT, vec![])
        );
        let (_, _, _, bad) = parsed("after=7&limit=1001&wait=31");
        assert_eq!(bad, ["after", "limit", "wait"]);
        let (_, _, _, bad) = parsed("after=&limit=0&wait=-1");
        assert_eq!(bad, ["after", "limit", "wait"]);
    }

    #[test]
    fn a_waiting_long_poll_is_counted_until_it_is_dropped() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // A snapshot hands over what changed since the one before: add up.
        let level = std::cell::Cell::new(0.0);
        let gauge = || {
            let change = snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find(|(key, ..)| key.key().name() == LONG_POLLS_WAITING)
                .map_or(0.0, |(_, _, _, value)| match value {
                    DebugValue::Gauge(n) => n.into_inner(),
                    other => panic!("{LONG_POLLS_WAITING} is a gauge, not {other:?}"),
                });
            level.set(level.get() + change);
            level.get()
        };
        metrics::with_local_recorder(&recorder, || {
            let first = Waiting::start();
            let second = Waiting::start();
            assert_eq!(gauge(), 2.0);
            drop(first);
            assert_eq!(gauge(), 1.0);
            drop(second);
        });
        assert_eq!(gauge(), 0.0);
    }

    #[test]
    fn a_history_cursor_is_a_version_or_zero() {
        let version = |raw: &str| {
            let (query, mut params) = query::parse(Some(raw), &["after", "limit"]);
            (version_param(&query, &mut params), params.len())
        };
        assert_eq!(version("after=0"), (None, 0));
        assert_eq!(version("after=5"), (Version::new(5), 0));
        assert_eq!(version("after=5.0").1, 1);
        assert_eq!(version("after=9223372036854775808").1, 1, "past Version::MAX");
    }
}
