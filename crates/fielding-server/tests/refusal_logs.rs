//! Refusals and health probes are counted through the `metrics` facade and
//! kept out of the log at the default level, so an anonymous flood cannot
//! flood the log.
//!
//! Alone in its own test binary: `tracing` caches per call site whether
//! anyone listens, and tests running at the same time on other threads
//! (with no subscriber) would make that cache say no to this test's
//! thread-local subscriber.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fielding_core::{AccountId, FieldingService, UserId};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::BasePath;
use fielding_memory::MemoryStore;
use fielding_server::app::{app, ApiLimits};
use fielding_server::telemetry;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::ServiceExt;

/// Under the server's default base path, `/v1`.
const LIST: &str =
    "/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs";

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn refusals_are_counted_but_not_logged_one_by_one_at_the_default_level() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);

    let tokens = StaticTokens::new().with_token(
        "good",
        Principal {
            user_id: UserId::random(),
            accounts: AccountAccess::Only(vec![AccountId::new(101).unwrap()]),
        },
    );
    let service = FieldingService::new(Arc::new(MemoryStore::new()));
    let router = app(
        service,
        Arc::new(tokens),
        "memory",
        ApiLimits::default(),
        BasePath::contract(),
    )
    .router;
    for token in ["", "Bearer not-a-token"].iter().cycle().take(50) {
        let mut request = Request::get(LIST).header("Cint-API-Version", "2025-12-18");
        if !token.is_empty() {
            request = request.header("Authorization", *token);
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for probe in ["/health", "/ready"].iter().cycle().take(10) {
        let response = router
            .clone()
            .oneshot(Request::get(*probe).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let request = Request::get(LIST)
        .header("Authorization", "Bearer good")
        .header("Cint-API-Version", "2025-12-18")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // An answer about the resource, not a refusal: logged like a 200.
    let request = Request::get(format!("{LIST}/01BTGNYV6HRNK8K8VKZASZCFP9"))
        .header("Authorization", "Bearer good")
        .header("Cint-API-Version", "2025-12-18")
        .body(Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("status=401").count(), 0, "{text}");
    assert!(
        !text.contains("/health") && !text.contains("/ready"),
        "probes are not logged one by one either: {text}"
    );
    assert_eq!(
        text.matches("status=200").count(),
        1,
        "answered requests are logged: {text}"
    );
    assert_eq!(text.matches("status=404").count(), 1, "a run's 404 is logged: {text}");
    assert_eq!(
        text.matches("refused since the previous summary").count(),
        1,
        "the first refusal is summarised at once, the rest wait for the next window: {text}"
    );
    assert_eq!(text.lines().count(), 3, "the 200, the 404 and one summary: {text}");

    // One snapshot: taking one resets the recorder's counters.
    let snapshot = snapshotter.snapshot().into_vec();
    let counted = |class: &str| {
        snapshot
            .iter()
            .find_map(|(key, _, _, value)| {
                let key = key.key();
                let matches = key.name() == telemetry::RESPONSES
                    && key
                        .labels()
                        .any(|label| label.key() == "status" && label.value() == class);
                match value {
                    DebugValue::Counter(n) if matches => Some(*n),
                    _ => None,
                }
            })
            .unwrap_or(0)
    };
    assert_eq!(counted("4xx"), 51);
    assert_eq!(counted("2xx"), 11);
}
