//! A live server for end-to-end tests: `FieldingApi::router()`, under the
//! contract's base path `/v1` as `fielding-server` serves it, served by
//! `axum::serve` on a tokio `TcpListener` bound to `127.0.0.1:0`, in a
//! background task of the test's runtime, over any of the stores (the
//! in-memory `MemoryStore`, a `SqliteStore` on a temporary file, or a
//! `PgStore` in a fresh schema, see `common::pg`). Requests go over real TCP
//! with `reqwest`; every response is checked against the contract.
//!
//! Paths given to [`Live::send`] are the server's own (`/v1/demand/...`),
//! so a `Location` header can be sent as it is; build them with [`api`]
//! or the path helpers here, which start from the one base path.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use fielding_core::{
    AccountId, Action, BulkRunner, BulkRunnerOptions, ChangeRecord, FieldingRun, FieldingService, FieldingStore,
    RunKey, Scope, Status, UserId,
};
use fielding_http::auth::{AccountAccess, Principal, StaticTokens};
use fielding_http::rate_limit::RateLimitPolicy;
use fielding_http::{BasePath, FieldingApi, CONTRACT_BASE_PATH};
use fielding_memory::MemoryStore;
use fielding_postgres::PgStore;
use fielding_sqlite::SqliteStore;
use fielding_testkit::{fixtures, Fault, Faults, FaultyStore};
use serde_json::Value;

/// The token of the principal allowed on account [`ACCOUNT`].
pub const TOKEN: &str = "token-101";
/// The token of a principal allowed only on account 202.
pub const OTHER_TOKEN: &str = "token-other";
/// The account every seeded run belongs to.
pub const ACCOUNT: i64 = 101;
/// The `Cint-API-Version` the contract names.
pub const API_VERSION: &str = "2025-12-18";
/// A valid incoming `traceparent`.
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Generous: a noisy 2-core machine can stall a request for seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    /// Check [`crate::common::pg::available`] before starting one.
    Postgres,
}

/// How the server is set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub rate_limit: Option<RateLimitPolicy>,
    pub body_limit: usize,
    /// `None`: the router's default.
    pub body_timeout: Option<Duration>,
    /// `None`: the router's default (`DEFAULT_BULK_BODY_LIMIT`).
    pub bulk_body_limit: Option<usize>,
    /// Runs a `BulkRunner` over the router's own service, as a server
    /// does, so bulk submissions wake it.
    pub bulk_runner: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate_limit: None,
            body_limit: 1024,
            body_timeout: None,
            bulk_body_limit: None,
            bulk_runner: false,
        }
    }
}

enum Handle {
    /// The faults of the memory store the server uses.
    Memory(Faults),
    Sqlite {
        path: PathBuf,
        // Removed (with the database) when the server goes.
        _dir: tempfile::TempDir,
    },
    Postgres {
        store: PgStore,
        schema: String,
        // Drops the schema when the server goes.
        _guard: fielding_postgres::testing::TestSchema,
    },
}

/// A running server and the store behind it.
pub struct Live {
    pub backend: Backend,
    /// `http://127.0.0.1:PORT` (the API is under [`api`] paths of it).
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn FieldingStore>,
    /// The principal of [`TOKEN`].
    pub user: UserId,
    handle: Handle,
    server: tokio::task::JoinHandle<()>,
    runner: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(runner) = &self.runner {
            runner.abort();
        }
    }
}

/// One response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
    /// The body as JSON, `Null` when empty.
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The response's `traceparent`, split into its four fields.
    #[track_caller]
    pub fn traceparent(&self) -> [String; 4] {
        let value = self.header("traceparent").expect("every response carries traceparent");
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!(parts.len(), 4, "traceparent {value:?}");
        [0, 1, 2, 3].map(|i| parts[i].to_owned())
    }
}

/// The run and its change records as the store has them.
pub type Snapshot = (Option<FieldingRun>, Vec<ChangeRecord>);

impl Live {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        let (store, handle): (Arc<dyn FieldingStore>, Handle) = match backend {
            Backend::Memory => {
                let store = FaultyStore::new(MemoryStore::new());
                let faults = store.faults().clone();
                (Arc::new(store), Handle::Memory(faults))
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let path = dir.path().join("fielding.db");
                let store = SqliteStore::open(&path).await.expect("open a fresh SQLite database");
                (Arc::new(store), Handle::Sqlite { path, _dir: dir })
            }
            Backend::Postgres => {
                let (store, guard) = crate::common::pg::fresh_store().await;
                let schema = guard.name().to_string();
                (
                    Arc::new(store.clone()),
                    Handle::Postgres {
                        store,
                        schema,
                        _guard: guard,
                    },
                )
            }
        };
        let user = UserId::random();
        let tokens = StaticTokens::new()
            .with_token(
                TOKEN,
                Principal {
                    user_id: user,
                    accounts: AccountAccess::Only(vec![AccountId::new(ACCOUNT).unwrap()]),
                },
            )
            .with_token(
                OTHER_TOKEN,
                Principal {
                    user_id: UserId::random(),
                    accounts: AccountAccess::Only(vec![AccountId::new(202).unwrap()]),
                },
            );
        let service = FieldingService::new(store.clone());
        let mut api = FieldingApi::new(service.clone(), Arc::new(tokens))
            .with_body_limit(options.body_limit)
            .with_base_path(BasePath::contract());
        if let Some(limit) = options.bulk_body_limit {
            api = api.with_bulk_body_limit(limit);
        }
        let runner = options.bulk_runner.then(|| {
            let runner = BulkRunner::new(service, BulkRunnerOptions::default());
            // Stopped by aborting the task when the server goes.
            tokio::spawn(async move { runner.run(std::future::pending::<()>()).await })
        });
        if let Some(policy) = options.rate_limit {
            api = api.with_rate_limit(policy);
        }
        if let Some(timeout) = options.body_timeout {
            api = api.with_body_timeout(timeout);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("the bound address");
        let router = api.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the server runs");
        });
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a reqwest client");
        Self {
            backend,
            base: format!("http://{address}"),
            client,
            store,
            user,
            handle,
            server,
            runner,
        }
    }

    /// A run of account [`ACCOUNT`] in a fresh target group, inserted
    /// through the store with its first change record.
    pub async fn seed(&self, status: Status, version: u64) -> FieldingRun {
        let run = fixtures::run()
            .with_scope(Self::scope())
            .with_status(status)
            .with_version(version)
            .build();
        self.insert(&run).await;
        run
    }

    /// A run seeded as it is (its own scope and dates), with its first
    /// change record: for runs [`Live::seed`] does not make, such as one
    /// whose stored status time has since overtaken.
    pub async fn insert(&self, run: &FieldingRun) {
        self.store
            .insert(run, &ChangeRecord::created(run, Action::Schedule))
            .await
            .expect("seed the run");
    }

    /// A fresh target group of account [`ACCOUNT`].
    pub fn scope() -> Scope {
        Scope::new(
            AccountId::new(ACCOUNT).unwrap(),
            fixtures::project_id(),
            fixtures::target_group_id(),
        )
    }

    pub async fn snapshot(&self, key: &RunKey) -> Snapshot {
        (
            self.store.get(key).await.expect("read the run"),
            self.store.changes(key).await.expect("read the change records"),
        )
    }

    /// The run and its history are exactly as in `before`.
    #[track_caller]
    pub fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
        assert_eq!(
            before, after,
            "{what}: a refused request changed the run or its change records"
        );
    }

    pub async fn assert_unchanged(&self, key: &RunKey, before: &Snapshot, what: &str) {
        let after = self.snapshot(key).await;
        Self::assert_same(before, &after, what);
    }

    /// Every store operation fails from now on (a backend failure: 500):
    /// on SQLite and PostgreSQL the runs and the jobs tables are renamed away.
    pub async fn break_store(&self) {
        match &self.handle {
            Handle::Memory(faults) => faults.inject(Fault::Storage, u64::MAX / 2),
            Handle::Sqlite { path, .. } => {
                sqlite_exec(
                    path,
                    "ALTER TABLE fielding_runs RENAME TO fielding_runs_gone; \
                     ALTER TABLE fielding_run_jobs RENAME TO fielding_run_jobs_gone;",
                )
                .await
            }
            Handle::Postgres { store, schema, .. } => {
                for (table, renamed) in [
                    ("fielding_runs", "fielding_runs_gone"),
                    ("fielding_run_jobs", "fielding_run_jobs_gone"),
                ] {
                    let sql = format!("ALTER TABLE \"{schema}\".{table} RENAME TO {renamed}");
                    crate::common::pg::execute(store, &sql).await;
                }
            }
        }
    }

    /// Undoes [`Live::break_store`].
    pub async fn repair_store(&self) {
        match &self.handle {
            Handle::Memory(faults) => faults.clear(),
            Handle::Sqlite { path, .. } => {
                sqlite_exec(
                    path,
                    "ALTER TABLE fielding_runs_gone RENAME TO fielding_runs; \
                     ALTER TABLE fielding_run_jobs_gone RENAME TO fielding_run_jobs;",
                )
                .await
            }
            Handle::Postgres { store, schema, .. } => {
                for (table, renamed) in [
                    ("fielding_runs_gone", "fielding_runs"),
                    ("fielding_run_jobs_gone", "fielding_run_jobs"),
                ] {
                    let sql = format!("ALTER TABLE \"{schema}\".{table} RENAME TO {renamed}");
                    crate::common::pg::execute(store, &sql).await;
                }
            }
        }
    }

    /// Sends a request; `headers` are appended in order (a repeated name is
    /// sent as separate header lines). The response is checked against the
    /// contract.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Reply {
        self.send_map(method, path, header_map(headers), body.into()).await
    }

    pub async fn send_map(&self, method: Method, path: &str, headers: HeaderMap, body: Vec<u8>) -> Reply {
        let reply = self.send_unchecked(method.clone(), path, headers, body).await;
        common_check(&method, path, &reply);
        reply
    }

    /// Sends without the contract check (the caller judges the reply).
    pub async fn send_unchecked(&self, method: Method, path: &str, headers: HeaderMap, body: Vec<u8>) -> Reply {
        let request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .headers(headers)
            .body(body)
            .build()
            .expect("a well-formed request");
        self.execute(request).await
    }

    pub async fn execute(&self, request: reqwest::Request) -> Reply {
        self.execute_on(&self.client, request).await
    }

    /// Sends on `client` (e.g. one from [`unpooled_client`]).
    pub async fn execute_on(&self, client: &reqwest::Client, request: reqwest::Request) -> Reply {
        let what = format!("{} {}", request.method(), request.url());
        let response = client
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"))
            .to_vec();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "{what}: {status}: body is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            bytes,
            json,
        }
    }

    /// GET of the run, checked to be 200.
    pub async fn get(&self, run: &FieldingRun) -> Reply {
        let reply = self.send(Method::GET, &run_path(run), &authed(&[]), "").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json);
        reply
    }
}

#[track_caller]
fn common_check(method: &Method, path: &str, reply: &Reply) {
    // HEAD has no body to check.
    if method != Method::HEAD {
        crate::common::contract::contract().check(method, path, reply.status, &reply.headers, &reply.json);
    }
}

async fn sqlite_exec(path: &std::path::Path, sql: &'static str) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let connection = fielding_sqlite::rusqlite::Connection::open(&path).expect("open the database file");
        connection
            .busy_timeout(Duration::from_secs(30))
            .expect("set a busy timeout");
        connection.execute_batch(sql).expect(sql);
    })
    .await
    .expect("the SQLite task");
}

/// A client that opens a new connection for every request. A server that
/// refuses a body it did not read whole closes the connection afterwards;
/// a pooled client may pick that connection for its next request and fail.
pub fn unpooled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("a reqwest client")
}

/// The pairs as header lines, in order; a repeated name gives several lines.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    map
}

/// `Authorization: Bearer token-101`, `Cint-API-Version` and
/// `Content-Type: application/json` (as a JSON client sends it, with or
/// without a body), then `extra`.
pub fn authed<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![
        ("authorization", "Bearer token-101"),
        ("cint-api-version", API_VERSION),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    headers
}

/// `path` (a contract path, `/demand/...`) under the base path the server
/// serves the API at (`/v1`, the contract's server URL).
pub fn api(path: &str) -> String {
    format!("{CONTRACT_BASE_PATH}{path}")
}

pub fn run_path(run: &FieldingRun) -> String {
    format!(
        "{CONTRACT_BASE_PATH}/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs/{}",
        run.account_id, run.project_id, run.target_group_id, run.id
    )
}

/// `run` under an id nobody has: the address of a run that does not exist.
pub fn ghost(run: &FieldingRun) -> FieldingRun {
    FieldingRun {
        id: fielding_core::FieldingRunId::generate(),
        ..run.clone()
    }
}

/// The collection of creation jobs of `kind` (`launch-from-draft`,
/// `schedule-from-draft`) under `scope`.
pub fn jobs_path(scope: &Scope, kind: &str) -> String {
    format!(
        "{CONTRACT_BASE_PATH}/demand/accounts/{}/projects/{}/target-groups/{}/fielding-run-jobs/{kind}",
        scope.account_id, scope.project_id, scope.target_group_id
    )
}

pub fn list_path(run: &FieldingRun) -> String {
    format!(
        "{CONTRACT_BASE_PATH}/demand/accounts/{}/projects/{}/target-groups/{}/fielding-runs",
        run.account_id, run.project_id, run.target_group_id
    )
}

/// A valid PUT body: the same start, the end `days` later.
pub fn new_dates(run: &FieldingRun, days: i64) -> String {
    let end = run.end_fielding_at.checked_add(chrono::TimeDelta::days(days)).unwrap();
    format!(
        r#"{{"start_fielding_at":"{}","end_fielding_at":"{}"}}"#,
        run.start_fielding_at, end
    )
}

/// The contract's error body with `status` and `object`, an id, a detail
/// and trace headers.
#[track_caller]
pub fn assert_error(reply: &Reply, status: StatusCode, object: &str) {
    assert_eq!(reply.status, status, "{}", reply.json);
    assert_eq!(reply.json["object"], object, "{}", reply.json);
    assert!(
        reply.json["id"]
            .as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        "{}",
        reply.json
    );
    assert!(reply.json["detail"].is_string(), "{}", reply.json);
    assert!(
        reply.headers.contains_key("traceparent"),
        "every response carries traceparent"
    );
}

/// The names in `invalid_params`.
pub fn invalid_names(reply: &Reply) -> Vec<String> {
    reply.json["invalid_params"]
        .as_array()
        .map(|params| {
            params
                .iter()
                .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
