//! What the handlers share: the service and the rules for reading bodies.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use fielding_core::FieldingService;
use tokio_util::sync::CancellationToken;

/// The handlers' state, built by [`crate::FieldingApi::router`].
pub(crate) struct ApiState {
    pub(crate) service: FieldingService,
    pub(crate) body: BodyRules,
    /// The rules for the batch endpoints' bodies: a larger limit, for
    /// lists of up to `BulkJob::MAX_TARGET_GROUPS` ids.
    pub(crate) bulk_body: BodyRules,
    /// Cancelled when the app shuts down: long polls answer at once.
    pub(crate) shutdown: CancellationToken,
}

/// How a request body is read (see `extract::read_body`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRules {
    /// The largest request body accepted (413 above it).
    pub(crate) limit: usize,
    /// The longest the whole body may take to arrive (408 after it).
    pub(crate) timeout: Duration,
}

/// The router's state.
pub(crate) type SharedState = Arc<ApiState>;

/// The extractor every handler takes.
pub(crate) type AppState = State<SharedState>;
