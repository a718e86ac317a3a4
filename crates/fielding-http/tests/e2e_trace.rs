//! End to end over real TCP (see `common::live`): a live server and
//! `reqwest`, every case on the in-memory store, on SQLite on a temporary
//! file and on PostgreSQL in a fresh schema (`memory::*`, `sqlite::*`,
//! `postgres::*`). Every response is checked against the contract, and
//! every refusal is checked to have left the run and its change records
//! exactly as they were.
//!
//! Trace context: `traceparent` continued or started, `tracestate`
//! echoed or dropped, on every answer.

#[macro_use]
mod common {
    pub mod contract;
    pub mod live;
    pub mod pg;
    #[macro_use]
    pub mod e2e;
}

use axum::http::{Method, StatusCode};
use common::live::{authed, run_path, Backend, Live, Reply, API_VERSION, TRACEPARENT};
use fielding_core::{FieldingRun, Status};

e2e!(
    valid_traceparent_is_continued_with_a_new_span_id_and_the_same_flags,
    invalid_traceparent_starts_a_new_trace_and_drops_tracestate,
    future_traceparent_version_is_continued_as_version_00,
    tracestate_is_echoed_when_valid_and_dropped_when_too_long,
    trace_headers_are_on_401_404_and_405,
);

/// A GET of the run with these extra headers.
async fn get_with(live: &Live, run: &FieldingRun, extra: &[(&str, &str)]) -> Reply {
    let reply = live.send(Method::GET, &run_path(run), &authed(extra), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    reply
}

async fn valid_traceparent_is_continued_with_a_new_span_id_and_the_same_flags(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    for flags in ["01", "00", "03"] {
        let incoming = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        let reply = get_with(&live, &run, &[("traceparent", &incoming)]).await;
        let [version, trace, span, out_flags] = reply.traceparent();
        assert_eq!(version, "00");
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span, "00f067aa0ba902b7", "a span id of the server's own");
        assert!(span.len() == 16 && span.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(span, "0000000000000000");
        assert_eq!(out_flags, flags);
        assert!(!reply.headers.contains_key("tracestate"), "none came in");
    }
    // Without one, a fresh trace.
    let a = get_with(&live, &run, &[]).await.traceparent();
    let b = get_with(&live, &run, &[]).await.traceparent();
    assert_eq!(a[0], "00");
    assert_ne!(a[1], b[1], "each request starts its own trace");
    assert_ne!(a[1], "00000000000000000000000000000000");
}

async fn invalid_traceparent_starts_a_new_trace_and_drops_tracestate(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let invalid = [
        "00-00000000000000000000000000000000-b7ad6b7169203331-01".to_owned(),
        format!("00-{trace}-0000000000000000-01"),
        format!("ff-{trace}-b7ad6b7169203331-01"),
        format!("00-{}-b7ad6b7169203331-01", trace.to_uppercase()),
        format!("00-{trace}-B7AD6B7169203331-01"),
        format!("00-{}-b7ad6b7169203331-01", &trace[..31]),
        format!("00-{trace}-b7ad6b7169203331-01-extra"),
        format!("00-{trace}-b7ad6b7169203331-01x"),
        format!("00-{trace}-b7ad6b7169203331"),
        format!("cc-{trace}-b7ad6b7169203331-01x"),
        String::new(),
    ];
    for value in &invalid {
        let reply = get_with(
            &live,
            &run,
            &[("traceparent", value), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let [version, out_trace, _, flags] = reply.traceparent();
        assert_eq!(version, "00", "{value:?}");
        assert_ne!(out_trace.to_lowercase(), trace, "{value:?}: a new trace");
        assert_ne!(out_trace, "00000000000000000000000000000000");
        assert!(flags.len() == 2, "{value:?}");
        assert!(
            !reply.headers.contains_key("tracestate"),
            "{value:?}: tracestate goes with its trace"
        );
    }
    // Two traceparent lines: which one? Neither; a new trace.
    let reply = get_with(
        &live,
        &run,
        &[
            ("traceparent", TRACEPARENT),
            ("traceparent", TRACEPARENT),
            ("tracestate", "a=b"),
        ],
    )
    .await;
    assert_ne!(reply.traceparent()[1], &TRACEPARENT[3..35]);
    assert!(!reply.headers.contains_key("tracestate"));
}

async fn future_traceparent_version_is_continued_as_version_00(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    for incoming in [
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let reply = get_with(
            &live,
            &run,
            &[("traceparent", incoming), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let [version, trace, span, flags] = reply.traceparent();
        assert_eq!(version, "00", "{incoming}");
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "{incoming}");
        assert_ne!(span, "00f067aa0ba902b7");
        assert_eq!(flags, "01");
        assert_eq!(reply.header("tracestate"), Some("congo=t61rcWkgMzE"));
    }
}

async fn tracestate_is_echoed_when_valid_and_dropped_when_too_long(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let members = |n: usize| (0..n).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>().join(",");
    for valid in [
        "congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        &members(32),
    ] {
        let reply = get_with(&live, &run, &[("traceparent", TRACEPARENT), ("tracestate", valid)]).await;
        assert_eq!(reply.header("tracestate"), Some(valid));
        assert_eq!(reply.traceparent()[1], &TRACEPARENT[3..35]);
    }
    // Two lines form one list.
    let reply = get_with(
        &live,
        &run,
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    let echoed = reply.header("tracestate").expect("the combined list");
    assert!(
        echoed.contains("rojo=00f067aa0ba902b7") && echoed.contains("congo=t61rcWkgMzE"),
        "{echoed}"
    );
    // Invalid: dropped, the trace kept.
    for invalid in [
        members(33),
        "a=b,a=c".to_owned(),
        "UPPER=x".to_owned(),
        "novalue".to_owned(),
    ] {
        let reply = get_with(&live, &run, &[("traceparent", TRACEPARENT), ("tracestate", &invalid)]).await;
        assert!(!reply.headers.contains_key("tracestate"), "{invalid}: dropped");
        let [version, trace, span, flags] = reply.traceparent();
        assert_eq!(
            (version.as_str(), trace.as_str(), flags.as_str()),
            ("00", &TRACEPARENT[3..35], "01")
        );
        assert_ne!(span, &TRACEPARENT[36..52]);
    }
}

async fn trace_headers_are_on_401_404_and_405(backend: Backend) {
    let live = Live::start(backend).await;
    let run = live.seed(Status::Live, 7).await;
    let trace = [("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE")];
    let mut anonymous: Vec<(&str, &str)> = vec![("cint-api-version", API_VERSION)];
    anonymous.extend_from_slice(&trace);
    let replies = [
        live.send(Method::GET, &run_path(&run), &anonymous, "").await,
        live.send(Method::GET, "/nope", &authed(&trace), "").await,
        live.send(Method::GET, "/nope", &anonymous, "").await,
        live.send(Method::DELETE, &run_path(&run), &authed(&trace), "").await,
        live.send(Method::GET, &format!("{}/pause", run_path(&run)), &authed(&trace), "")
            .await,
    ];
    let expected = [
        StatusCode::UNAUTHORIZED,
        StatusCode::NOT_FOUND,
        // Authentication runs before routing.
        StatusCode::UNAUTHORIZED,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::METHOD_NOT_ALLOWED,
    ];
    for (reply, status) in replies.iter().zip(expected) {
        assert_eq!(reply.status, status, "{}", reply.json);
        let [version, out_trace, span, flags] = reply.traceparent();
        assert_eq!(
            (version.as_str(), out_trace.as_str(), flags.as_str()),
            ("00", &TRACEPARENT[3..35], "01"),
            "{status}"
        );
        assert_ne!(span, &TRACEPARENT[36..52]);
        assert_eq!(reply.header("tracestate"), Some("congo=t61rcWkgMzE"), "{status}");
    }
}
