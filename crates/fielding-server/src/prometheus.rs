//! `GET /metrics`: what the server counts (`crate::telemetry`, and anything
//! else recorded through the `metrics` facade) in the Prometheus text
//! format.
//!
//! A `metrics` recorder is global to the process, so its handle is too:
//! the binary installs the exporter once ([`install`]) before it serves,
//! and the route answers from whatever was installed. An app built by the
//! library functions without the exporter (tests, an embedding service
//! with a recorder of its own) answers `404` there: it does not export.
//! The route needs no token, like `/health`: it is for the scraper of the
//! operator's own network, and it carries no account or run data, only
//! counts by status, reason and the like.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The path of the exporter.
pub const METRICS_PATH: &str = "/metrics";

/// How often the exporter's housekeeping runs (it drains histogram
/// buckets; without it they grow for as long as the process lives).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The store call latency histogram's buckets, in seconds: from an
/// in-memory call (well under 100 µs) to a database call stuck behind a
/// lock or a full pool (seconds). A histogram, not the exporter's default
/// summary, so that a dashboard can add up the buckets of many instances.
const STORE_CALL_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Why the exporter could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus metrics exporter: {0}")]
pub struct InstallError(String);

/// Installs the Prometheus exporter as the process's `metrics` recorder,
/// once (later calls do nothing), and starts its housekeeping on the
/// current tokio runtime.
pub fn install() -> Result<(), InstallError> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(fielding_core::observe::STORE_CALL_SECONDS.to_owned()),
            &STORE_CALL_BUCKETS,
        )
        .map_err(|e| InstallError(e.to_string()))?
        .install_recorder()
        .map_err(|e| InstallError(e.to_string()))?;
    crate::telemetry::remember_global_recorder();
    fielding_core::observe::describe();
    fielding_http::refusal::describe();
    let upkeep = handle.clone();
    if HANDLE.set(handle).is_ok() {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut every = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
    }
    Ok(())
}

/// `GET /metrics`: the text format, or `404` when nothing was installed.
pub(crate) async fn render() -> Response {
    match HANDLE.get() {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            handle.render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
