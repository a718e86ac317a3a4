//! `bare-http`: the ceiling for the runner's `http` section (see
//! `fielding_bench::http`). A bare axum handler that reads the request body
//! and answers `202 Accepted` with no body, for every method and path.
//!
//! It is built to match `fielding-server` where that matters for a
//! throughput ceiling: the same axum version and features (`http1`,
//! `json`, `tokio`), `axum::serve` on a `tokio::net::TcpListener`, and a
//! multi-thread tokio runtime with the default worker count (one per core),
//! exactly as `fielding-server`'s `main` builds it, and the same global
//! allocator (mimalloc). It reads the body (as
//! every server handler does) so keep-alive behaves the same as for the
//! server's PUTs. No logging, no auth, no routing table beyond a fallback.
//!
//! ```sh
//! target/release/bare-http --listen 127.0.0.1:0
//! # bare-http listening on http://127.0.0.1:41234
//! ```
//!
//! The first stdout line is always `bare-http listening on http://ADDR`.
//! Stops on SIGKILL/SIGTERM/SIGINT (the default signal handling).

use std::io::Write;
use std::process::ExitCode;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Router;

// The same allocator as `fielding-server`'s binary: the ceiling must not
// differ from the server in anything but what the server does with a
// request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: bare-http [--listen ADDR]   (default 127.0.0.1:0)";

async fn accepted(_body: Bytes) -> StatusCode {
    StatusCode::ACCEPTED
}

fn parse_listen(mut args: impl Iterator<Item = String>) -> Result<String, String> {
    let mut listen = "127.0.0.1:0".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => match other.strip_prefix("--listen=") {
                Some(addr) => listen = addr.to_owned(),
                None => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            },
        }
    }
    Ok(listen)
}

async fn serve(listen: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "bare-http listening on http://{addr}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    let app = Router::new().fallback(accepted);
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("the server failed: {e}"))
}

fn main() -> ExitCode {
    let listen = match parse_listen(std::env::args().skip(1)) {
        Ok(listen) => listen,
        Err(msg) => {
            eprintln!("bare-http: {msg}");
            return ExitCode::from(2);
        }
    };
    // The same runtime as fielding-server's main: multi-thread, default
    // worker count, all drivers.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bare-http: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(&listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("bare-http: {msg}");
            ExitCode::FAILURE
        }
    }
}
