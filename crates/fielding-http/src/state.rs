//! What the handlers share: the service and the body limit.

use std::sync::Arc;

use axum::extract::State;
use fielding_core::FieldingService;

/// The handlers' state, built by [`crate::FieldingApi::router`].
pub(crate) struct ApiState {
    pub(crate) service: FieldingService,
    /// The largest request body accepted (413 above it).
    pub(crate) body_limit: usize,
}

/// The extractor every handler takes.
pub(crate) type AppState = State<Arc<ApiState>>;
