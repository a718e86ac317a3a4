//! # fielding-http
//!
//! The HTTP face of fielding: an axum [`axum::Router`] serving the
//! fielding-run endpoints of `fielding-openapi.yml` and the batch
//! endpoints of `fielding-batch-openapi.yml`, for teams to mount in
//! their own app. It takes the service, and an [`auth::Authenticator`] the
//! app implements.
//!
//! * [`FieldingApi`]: the router (GET, list, PUT, complete, pause, resume,
//!   relaunch, launch-now), with the contract's order of checks.
//! * [`base_path`]: where the contract's paths are mounted
//!   ([`FieldingApi::with_base_path`]): `/` by default, or the contract's own
//!   server path [`CONTRACT_BASE_PATH`] (`/v1`); `Location` headers follow.
//! * [`trace_context`]: W3C Trace Context, parsed strictly; every response
//!   carries `traceparent`.
//! * [`problem`] and [`api_error`]: the contract's error bodies, for every
//!   refusal including unknown routes and methods.
//! * [`api_version`]: the required `Cint-API-Version` header.
//! * [`rate_limit`]: a token bucket per principal (429 with `Retry-After`).
//! * [`refusal`]: refusals counted through the `metrics` facade
//!   (`fielding_http_refusals_total{reason}`), not logged one by one.
//! * Strict input (see `docs/http.md`): a body must be declared
//!   `application/json` (415), arrive whole within
//!   [`FieldingApi::with_body_timeout`] (408) and under
//!   [`FieldingApi::with_body_limit`] (413), and repeat no key (400 naming it);
//!   error bodies list at most [`problem::MAX_LISTED_PARAMS`] parameters.
//!
//! * Creation jobs: `POST fielding-run-jobs/launch-from-draft` and
//!   `.../schedule-from-draft` (with the required `idempotency-key`), and
//!   `GET` of a job; see `FieldingService::submit_job`.
//! * Bulk jobs (`fielding-batch-openapi.yml`): `POST
//!   .../batch-jobs/{action}-fielding-runs-by-target-group-id` for
//!   complete, launch, pause, relaunch and resume (with the required
//!   `idempotency-key`, under [`FieldingApi::with_bulk_body_limit`]), and `GET`
//!   of a job; see `FieldingService::submit_bulk_job`. The app runs a
//!   `fielding_core::BulkRunner` over the same service to work them.
//! * The change feed (`docs/feed-openapi.yml`, extensions of the
//!   contract): `GET /demand/accounts/{account_id}/fielding-run-changes`
//!   (an account's changes in commit order from a cursor, as a long poll
//!   with `wait`) and `GET .../fielding-runs/{fielding_run_id}/changes`
//!   (one run's history); see `docs/http.md` and `docs/feed.md`. Give
//!   the router [`FieldingApi::with_shutdown`] so that long polls end when
//!   the app stops.
#![warn(missing_docs)]

pub mod api_error;
pub mod api_version;
pub mod auth;
pub mod base_path;
mod bulk;
mod extract;
mod feed;
mod jobs;
pub mod json;
pub mod problem;
mod query;
pub mod rate_limit;
pub mod refusal;
mod rfc3339;
mod router;
mod runs;
mod state;
mod strict_json;
mod top_level;
pub mod trace_context;

pub use base_path::{BasePath, CONTRACT_BASE_PATH};
pub use feed::LONG_POLLS_WAITING;
pub use router::{
    ApiService, FieldingApi, BASE_PATH, DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT, DEFAULT_BULK_BODY_LIMIT,
};
/// The token [`FieldingApi::with_shutdown`] takes, re-exported so that an
/// app depending only on this crate (or the `fielding` facade) can make one.
pub use tokio_util::sync::CancellationToken;
