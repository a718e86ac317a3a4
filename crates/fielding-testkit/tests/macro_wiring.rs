//! The macro's second form, as a third-party adapter would write it: a
//! factory function returning `Arc<dyn FieldingStore>`, and capabilities.
//! (`fielding-memory` uses the first form.)

use std::sync::Arc;

use fielding_core::FieldingStore;
use fielding_memory::MemoryStore;
use fielding_testkit::Capabilities;

async fn fresh() -> Arc<dyn FieldingStore> {
    Arc::new(MemoryStore::new())
}

const CAPABILITIES: Capabilities = Capabilities::full()
    .with_max_version(1 << 53)
    .with_concurrent_writers(3)
    .with_retryable_errors_under_contention(true);

fielding_testkit::conformance_tests!(fresh, capabilities = CAPABILITIES);
