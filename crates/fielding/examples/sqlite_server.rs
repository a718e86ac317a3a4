//! The contract on SQLite, with `fielding = { features = ["sqlite", "http"] }`
//! as the only dependency: open the store, build the router with an
//! authenticator, start the bulk-job runner, serve. `main` is the whole
//! server, in under 20 lines of code; `ci_self_check` below is only there
//! so that CI can run the example.
//!
//! ```sh
//! FIELDING_TOKEN=local-dev-token cargo run -p fielding --features sqlite,http --example sqlite_server
//! curl -H "Authorization: Bearer local-dev-token" -H "Cint-API-Version: 2025-12-18" \
//!   http://127.0.0.1:8080/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs
//! ```
//!
//! It serves `http://127.0.0.1:8080/v1` (`FIELDING_ADDR` changes the
//! address) until stopped, and keeps its data in `./fielding.sqlite3`
//! (WAL: a stop at any moment loses no acknowledged write). With
//! `FIELDING_EXAMPLE_ONESHOT=1` it sends itself one request, checks the
//! answer and exits.

use std::sync::Arc;

use fielding::http::{auth::AccountAccess, auth::Principal, auth::StaticTokens, FieldingApi};
use fielding::{axum, sqlite::SqliteStore, tokio, BulkRunner, BulkRunnerOptions, FieldingService, UserId};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = FieldingService::new(Arc::new(SqliteStore::open("fielding.sqlite3").await?));
    // One token for every account, from the environment (there is no
    // default secret): bring your own `Authenticator` (see `existing_app`).
    let admin = Principal {
        user_id: UserId::random(),
        accounts: AccountAccess::All,
    };
    let tokens = StaticTokens::new().with_token(std::env::var("FIELDING_TOKEN")?, admin);
    // Under `/v1`, the contract's server URL.
    let app = axum::Router::new().nest("/v1", FieldingApi::new(service.clone(), Arc::new(tokens)).router());
    // Bulk jobs are worked in the background, by this runner.
    let runner = BulkRunner::new(service, BulkRunnerOptions::default());
    tokio::spawn(async move { runner.run(std::future::pending()).await });
    let listener =
        tokio::net::TcpListener::bind(std::env::var("FIELDING_ADDR").as_deref().unwrap_or("127.0.0.1:8080")).await?;
    ci_self_check(listener.local_addr()?); // CI only; a no-op unless asked for
    Ok(axum::serve(listener, app).await?)
}

/// With `FIELDING_EXAMPLE_ONESHOT` set: lists a target group's runs
/// through a real connection (plain HTTP/1.1 over std's socket, so the
/// example needs no HTTP client), expects an empty list, and ends the
/// process, with status 0 if the answer was right.
fn ci_self_check(addr: std::net::SocketAddr) {
    if std::env::var_os("FIELDING_EXAMPLE_ONESHOT").is_none() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        let answer = request(addr);
        println!("{answer:?}");
        let ok = answer.is_ok_and(|text| text.starts_with("HTTP/1.1 200") && text.contains("\"data\":[]"));
        println!("sqlite_server: {}", if ok { "OK" } else { "FAILED" });
        std::process::exit(if ok { 0 } else { 1 });
    });
}

fn request(addr: std::net::SocketAddr) -> Result<String, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let token = std::env::var("FIELDING_TOKEN")?;
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "GET /v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs HTTP/1.1\r\n\
         Host: {addr}\r\nAuthorization: Bearer {token}\r\nCint-API-Version: 2025-12-18\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
