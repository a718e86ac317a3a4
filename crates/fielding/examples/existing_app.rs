//! The contract's router nested into an app that already exists: its own
//! routes (`/health`, `/internal/whoami`), its own sqlx `PgPool` (the store
//! keeps its tables in a schema of its own on that pool) and its own
//! authentication (an API key in `x-api-key`, mapped to an account), not
//! the reference server's JWT.
//!
//! It runs to completion by itself: it serves on a free port, makes real
//! requests to itself (the app's own route, then a run created through the
//! creation-job endpoint and read back with the API key), checks the
//! answers, shuts down and exits 0. Without PostgreSQL at `FIELDING_PG_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) it says so and
//! exits 0, unless `CI` is set.
//!
//! ```sh
//! cargo run -p fielding --features postgres,http --example existing_app
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api_keys::ApiKeys;
use fielding::axum::extract::{Request, State};
use fielding::axum::http::{header, StatusCode};
use fielding::axum::response::{IntoResponse, Response};
use fielding::axum::routing::get;
use fielding::axum::{Json, Router};
use fielding::http::FieldingApi;
use fielding::postgres::PgStore;
use fielding::{AccountId, FieldingService};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;

/// The app's own schema for the fielding tables, next to its other tables.
const SCHEMA: &str = "existing_app_example";
/// The header the app's clients already send.
const API_KEY: &str = "x-api-key";
const TG: &str = "/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("FIELDING_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    // The pool the app already has; the store borrows it (`PgStore::new`).
    let pool = match PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        // Like the PostgreSQL store's tests: skipped on a laptop without
        // PostgreSQL, a failure in CI (`.ci/run` starts it).
        Err(err) if std::env::var_os("CI").is_none() => {
            println!("SKIPPED existing_app: PostgreSQL is not reachable at {url} ({err})");
            return Ok(());
        }
        Err(err) => return Err(format!("PostgreSQL is not reachable at {url} ({err}); CI is set").into()),
    };
    // A fresh start each run, so the walk-through below always creates the run.
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&pool)
        .await?;
    let store = PgStore::new(pool.clone(), SCHEMA)?;
    store.migrate().await?;
    let service = FieldingService::new(Arc::new(store));

    let keys = Arc::new(ApiKeys::new([("key-of-101", AccountId::new(101)?)]));
    let app = app(service, Arc::clone(&keys));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        fielding::axum::serve(listener, app)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .await
    });

    let outcome = walk_through(&base).await;
    stop.send(()).ok();
    server.await??;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&pool)
        .await?;
    outcome?;
    println!("existing_app: OK");
    Ok(())
}

/// The existing app with the contract mounted under `/v1` (the contract's
/// server URL ends in it).
fn app(service: FieldingService, keys: Arc<ApiKeys>) -> Router {
    // `ApiKeys` reads the key from `x-api-key` (its `credential`), so the
    // contract's router authenticates this app's clients as they are.
    let fielding = FieldingApi::new(service, keys.clone()).router();
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/internal/whoami", get(whoami))
        .with_state(keys)
        .nest("/v1", fielding)
}

/// The app's own route, on the app's own authentication.
async fn whoami(State(keys): State<Arc<ApiKeys>>, request: Request) -> Response {
    let key = request.headers().get(API_KEY).and_then(|v| v.to_str().ok());
    match key.and_then(|key| keys.account(key)) {
        Some(account) => Json(json!({ "account": account.get() })).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// The app's API keys, as an `Authenticator`.
mod api_keys {
    use super::*;
    use fielding::axum::http::HeaderMap;
    use fielding::http::auth::{AccountAccess, AuthError, Authenticator, Principal};
    use fielding::UserId;

    /// API keys mapped to the one account each may act on, and the user
    /// recorded as `last_changed_by` on that key's changes.
    #[derive(Debug)]
    pub struct ApiKeys {
        keys: HashMap<String, (AccountId, UserId)>,
    }

    impl ApiKeys {
        pub fn new<'a>(keys: impl IntoIterator<Item = (&'a str, AccountId)>) -> Self {
            let keys = keys
                .into_iter()
                .map(|(key, account)| (key.to_owned(), (account, UserId::random())))
                .collect();
            Self { keys }
        }

        pub fn account(&self, key: &str) -> Option<AccountId> {
            self.keys.get(key).map(|(account, _)| *account)
        }
    }

    #[fielding::async_trait]
    impl Authenticator for ApiKeys {
        /// The app's clients send their key in `x-api-key`; an
        /// `Authorization` header is not looked at (in this app only API
        /// keys authenticate).
        fn credential<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
            headers.get(API_KEY)?.to_str().ok()
        }

        async fn authenticate(&self, key: &str) -> Result<Principal, AuthError> {
            let (account, user) = self.keys.get(key).ok_or_else(|| AuthError::new("unknown API key"))?;
            Ok(Principal {
                user_id: *user,
                accounts: AccountAccess::Only(vec![*account]),
            })
        }
    }
}

/// The requests a client of the app makes, each answer checked.
async fn walk_through(base: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/health")).send().await?;
    expect(health.status(), StatusCode::OK, "GET /health")?;
    println!("GET /health -> {}", health.text().await?);

    let whoami: Value = client
        .get(format!("{base}/internal/whoami"))
        .header(API_KEY, "key-of-101")
        .send()
        .await?
        .json()
        .await?;
    println!("GET /internal/whoami -> {whoami}");
    if whoami["account"] != 101 {
        return Err(format!("whoami: {whoami}").into());
    }

    let api = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .header(API_KEY, "key-of-101")
            .header("Cint-API-Version", "2025-12-18")
    };
    let anonymous = client.get(format!("{base}{TG}/fielding-runs")).send().await?;
    expect(
        anonymous.status(),
        StatusCode::UNAUTHORIZED,
        "a fielding route without a key",
    )?;

    let created = api(
        reqwest::Method::POST,
        &format!("{TG}/fielding-run-jobs/schedule-from-draft"),
    )
    .header("idempotency-key", "existing-app-1")
    .json(&json!({"start_fielding_at": "2031-01-01T09:00:00.000Z", "end_fielding_at": "2031-01-31T09:00:00.000Z"}))
    .send()
    .await?;
    expect(created.status(), StatusCode::CREATED, "POST schedule-from-draft")?;
    let location = created
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("the job has no Location")?
        .to_owned();
    println!("POST {TG}/fielding-run-jobs/schedule-from-draft -> 201, Location: {location}");
    if !location.starts_with("/v1/") {
        return Err(format!("the Location does not follow the mount point: {location}").into());
    }

    let mut job = Value::Null;
    for _ in 0..50 {
        job = api(reqwest::Method::GET, &location).send().await?.json().await?;
        if job["status"] != "Processing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("GET {location} -> {job}");
    let run_id = match (job["status"].as_str(), job["created_fielding_run_id"].as_str()) {
        (Some("Completed"), Some(id)) => id.to_owned(),
        _ => return Err(format!("the job did not complete: {job}").into()),
    };

    let run = api(reqwest::Method::GET, &format!("{TG}/fielding-runs/{run_id}"))
        .send()
        .await?;
    expect(run.status(), StatusCode::OK, "GET the run")?;
    let etag = run.headers().get(header::ETAG).cloned();
    let run: Value = run.json().await?;
    println!("GET {TG}/fielding-runs/{run_id} -> ETag {etag:?}, {run}");
    if run["status"] != "scheduled" || etag.as_ref().and_then(|v| v.to_str().ok()) != Some("\"1\"") {
        return Err(format!("unexpected run: {run}").into());
    }

    let other = api(
        reqwest::Method::GET,
        "/v1/demand/accounts/102/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs",
    )
    .send()
    .await?;
    expect(other.status(), StatusCode::FORBIDDEN, "another account's runs")?;
    Ok(())
}

fn expect(got: StatusCode, want: StatusCode, what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want}, got {got}"))
    }
}
