//! `GET /health` (liveness) and `GET /ready` (readiness).
//!
//! Both need no token, so neither may cost more than a refusal: liveness
//! answers from memory (the process is up and serving), and readiness
//! reads through the store at most once per [`READY_CACHE_FOR`], however
//! many callers ask; everyone in between gets the cached answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fielding_core::{FieldingService, Scope, INTERNAL_ERROR_DETAIL};
use fielding_http::problem::{object, ErrorBody};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The liveness check's path.
pub const HEALTH_PATH: &str = "/health";

/// The readiness check's path.
pub const READY_PATH: &str = "/ready";

/// How long the readiness check waits for the store before answering 503.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a readiness answer is reused.
pub const READY_CACHE_FOR: Duration = Duration::from_secs(1);

/// What the checks need: the service to probe and the store's kind to
/// report.
pub struct Health {
    service: FieldingService,
    store: &'static str,
    /// The latest probe: when it finished and whether it failed (with the
    /// cause). Locked across a probe, so concurrent callers wait for the
    /// one probe instead of each starting their own.
    latest: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    /// Checks for `service`, reporting `store` as the store's kind.
    pub fn new(service: FieldingService, store: &'static str) -> Self {
        Self {
            service,
            store,
            latest: Mutex::new(None),
        }
    }

    /// The store's readiness, probed at most once per [`READY_CACHE_FOR`].
    async fn readiness(&self) -> Result<(), String> {
        let mut latest = self.latest.lock().await;
        if let Some((at, outcome)) = latest.as_ref() {
            if at.elapsed() < READY_CACHE_FOR {
                return outcome.clone();
            }
        }
        let outcome = self.probe().await;
        *latest = Some((Instant::now(), outcome.clone()));
        outcome
    }

    async fn probe(&self) -> Result<(), String> {
        let read = async {
            // Any scope will do: the read proves the store answers.
            let scope = Scope::parse("1", "00000000000000000000000000", "00000000000000000000000000")
                .map_err(|e| e.to_string())?;
            self.service.find(&scope).await.map_err(|e| format!("{e:?}"))?;
            Ok::<(), String>(())
        };
        match tokio::time::timeout(READY_TIMEOUT, read).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("the store did not answer within {READY_TIMEOUT:?}")),
        }
    }
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
    store: &'static str,
}

/// 200 `{"status":"ok","store":KIND}`: the process is up and serving. It
/// touches nothing else, so an orchestrator restarts the server only when
/// the server itself is stuck, never because the database is slow.
pub async fn liveness(State(health): State<Arc<Health>>) -> Response {
    Json(Status {
        status: "ok",
        store: health.store,
    })
    .into_response()
}

/// 200 `{"status":"ready","store":KIND}` when the latest read through the
/// store (at most [`READY_CACHE_FOR`] old) succeeded within
/// [`READY_TIMEOUT`]; 503 with the contract's error body
/// (`unexpected_internal_error`) otherwise, the cause logged under the id
/// the body shows.
pub async fn readiness(State(health): State<Arc<Health>>) -> Response {
    match health.readiness().await {
        Ok(()) => Json(Status {
            status: "ready",
            store: health.store,
        })
        .into_response(),
        Err(cause) => {
            let body = ErrorBody::new(object::INTERNAL, INTERNAL_ERROR_DETAIL);
            tracing::error!(error_id = %body.id, store = health.store, cause = %cause, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fielding_memory::MemoryStore;
    use fielding_testkit::{Fault, FaultyStore};

    #[tokio::test]
    async fn readiness_reads_the_store_at_most_once_per_interval() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let health = Health::new(FieldingService::new(store.clone()), "memory");
        assert_eq!(health.readiness().await, Ok(()));
        // A failure injected now is not seen until the cached answer ages.
        store.faults().inject(Fault::Storage, 1);
        for _ in 0..100 {
            assert_eq!(health.readiness().await, Ok(()), "served from the cache");
        }
        tokio::time::sleep(READY_CACHE_FOR + Duration::from_millis(50)).await;
        let failed = health.readiness().await.unwrap_err();
        assert!(!failed.is_empty());
        // The failure is cached too, then the store recovers.
        assert!(health.readiness().await.is_err());
        tokio::time::sleep(READY_CACHE_FOR + Duration::from_millis(50)).await;
        assert_eq!(health.readiness().await, Ok(()));
    }
}
