//! Opening the store, binding the listener, serving until shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fielding_core::{BulkRunner, FieldingService, FieldingStore, SystemClock};
use fielding_http::rate_limit::RateLimiter;
use fielding_memory::MemoryStore;
use fielding_postgres::PgStore;
use fielding_sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::address_limit::{AddressLimiter, ConnectionsPerAddress};
use crate::app::{app_and_front, App, Front};
use crate::cli::ServerConfig;
use crate::connection;
use crate::database::Database;
use crate::jwt::JwtAuthenticator;
use crate::limits::ConnectionLimits;
use crate::retention::{run_change_retention, run_job_retention, ChangeRetentionConfig, RetentionConfig};
use crate::telemetry::{self, SampledLog};

/// How often idle rate-limit buckets are forgotten.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The SQLite database could not be opened or migrated.
    #[error("cannot open the SQLite store: {0}")]
    Sqlite(#[from] fielding_sqlite::OpenError),
    /// PostgreSQL could not be reached (or the schema name is invalid).
    #[error("cannot open the PostgreSQL store: {0}")]
    PostgresConnect(#[from] fielding_postgres::ConnectError),
    /// The PostgreSQL schema could not be migrated.
    #[error("cannot migrate the PostgreSQL store: {0}")]
    PostgresMigrate(#[from] fielding_postgres::MigrateError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// How long the accept loop pauses after an error such as running out of
/// file descriptors, so it does not spin while connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A store, opened, with the SQLite store kept by type so it can be closed
/// cleanly at shutdown.
#[derive(Debug, Clone)]
pub struct OpenedStore {
    /// The store, for the service.
    pub store: Arc<dyn FieldingStore>,
    /// Its kind: `memory`, `sqlite` or `postgres`.
    pub kind: &'static str,
    sqlite: Option<Arc<SqliteStore>>,
}

/// Opens (and migrates) the store `database` names. PostgreSQL keeps its
/// tables in `pg_schema`, on a pool of at most `pg_max_connections`.
pub async fn open_store(
    database: &Database,
    pg_schema: &str,
    pg_max_connections: u32,
) -> Result<OpenedStore, ServerError> {
    let kind = database.kind();
    match database {
        Database::Memory => Ok(OpenedStore {
            store: Arc::new(MemoryStore::new()),
            kind,
            sqlite: None,
        }),
        Database::Sqlite(path) => {
            let store = Arc::new(SqliteStore::open(path).await?);
            Ok(OpenedStore {
                store: store.clone(),
                kind,
                sqlite: Some(store),
            })
        }
        Database::Postgres(url) => {
            let pool = PgStore::pool_options().max_connections(pg_max_connections);
            let store = PgStore::connect_with(pool, url, pg_schema).await?;
            let migrated = store.migrate().await?;
            tracing::info!(schema = pg_schema, migration = ?migrated, "PostgreSQL schema migrated");
            Ok(OpenedStore {
                store: Arc::new(store),
                kind,
                sqlite: None,
            })
        }
    }
}

impl OpenedStore {
    /// Closes the store, waiting for a SQLite store's threads to finish
    /// their queued writes when nothing else holds it any more.
    pub async fn close(self) {
        let OpenedStore { store, sqlite, .. } = self;
        drop(store);
        if let Some(sqlite) = sqlite {
            match Arc::try_unwrap(sqlite) {
                Ok(sqlite) => sqlite.close().await,
                // Dropping it closes it too, but the process may exit
                // before its threads truncate the log.
                Err(_) => tracing::warn!(
                    "the SQLite store is still in use at shutdown: closing it without waiting; \
                     its -wal file may be left behind"
                ),
            }
        }
    }
}

/// A server bound to its address, ready to serve.
///
/// ```no_run
/// use fielding_server::{Database, JwtSecret, Server, ServerConfig};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ServerConfig::new(Database::Memory, JwtSecret::new("a secret of at least 32 bytes....")?);
/// let server = Server::bind(&config).await?;
/// println!("listening on http://{}", server.local_addr());
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let running = tokio::spawn(server.serve(async { let _ = stopped.await; }));
/// // ... send requests ...
/// let _ = stop.send(());
/// running.await??;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    app: App,
    /// What `app`'s router falls back to for every request, served
    /// without the router.
    front: Front,
    store: OpenedStore,
    shutdown_grace: Duration,
    limits: ConnectionLimits,
    job_retention: Option<RetentionConfig>,
    change_retention: Option<ChangeRetentionConfig>,
    /// Works bulk jobs in the background; `None` when this instance works none.
    bulk_runner: Option<BulkRunner>,
    /// Cancelled when the server stops accepting: connections finish (or
    /// close), long polls answer at once, the bulk runner hands its jobs back.
    stop: CancellationToken,
}

impl Server {
    /// Opens the store and binds the listener.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        let store = open_store(&config.database, &config.pg_schema, config.pg_max_connections).await?;
        let service = FieldingService::new(store.store.clone());
        let authenticator = Arc::new(JwtAuthenticator::new(&config.jwt_secret));
        // The runner shares the service with the API, so every submission
        // wakes it at once.
        let bulk_runner = config
            .bulk_runner
            .clone()
            .map(|options| BulkRunner::new(service.clone(), options));
        let stop = CancellationToken::new();
        let (app, front) = app_and_front(
            service,
            authenticator,
            store.kind,
            config.limits,
            config.base_path.clone(),
            stop.clone(),
        );
        let bind_error = |source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        };
        let listener = listen(&config.listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
            app,
            front,
            store,
            shutdown_grace: config.shutdown_grace,
            limits: config.connections,
            job_retention: config.job_retention,
            change_retention: config.change_retention,
            bulk_runner,
            stop,
        })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store's kind: `memory`, `sqlite` or `postgres`.
    pub fn store_kind(&self) -> &'static str {
        self.store.kind
    }

    /// Serves until `shutdown` completes, then stops accepting connections,
    /// closes idle ones (and those still sending a request head) at once,
    /// lets requests in flight finish (for at most
    /// [`ServerConfig::shutdown_grace`]; change-feed long polls answer at
    /// once instead of waiting out their `wait`), and closes the store.
    ///
    /// At most [`ConnectionLimits::max_connections`] connections are open
    /// at once; past it, new ones wait in the listen backlog. An address
    /// past [`ConnectionLimits::max_connections_per_address`] has its new
    /// connections closed at once.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            listener,
            app:
                App {
                    router,
                    rate_limiter,
                    address_limiter,
                },
            front,
            store,
            shutdown_grace,
            limits,
            job_retention,
            change_retention,
            bulk_runner,
            stop,
            ..
        } = self;
        let housekeeping = tokio::spawn(forget_idle(rate_limiter, address_limiter));
        let retention = job_retention.map(|config| {
            tokio::spawn(run_job_retention(
                Arc::clone(&store.store),
                Arc::new(SystemClock),
                config,
            ))
        });
        let change_retention = change_retention.map(|config| {
            tokio::spawn(run_change_retention(
                Arc::clone(&store.store),
                Arc::new(SystemClock),
                config,
            ))
        });
        let mut bulk = bulk_runner.map(|runner| {
            let stopping = stop.clone();
            tokio::spawn(async move { runner.run(stopping.cancelled_owned()).await })
        });
        let http1 = Arc::new(connection::http1(&limits));
        // Clamped: tokio refuses more permits than this, and no machine
        // holds that many sockets anyway.
        let permits = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
        let per_address = limits.max_connections_per_address.map(ConnectionsPerAddress::new);
        let accept_errors = SampledLog::new(Duration::from_secs(10));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // A permit first: at the cap, connections wait in the backlog
            // rather than being accepted and left unserved.
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit,
                () = &mut shutdown => break,
            };
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if let Some(summary) = accept_errors.record() {
                        tracing::warn!(
                            %error,
                            errors = summary.count,
                            seconds = summary.over.as_secs_f64(),
                            "cannot accept connections (errors since the previous warning)"
                        );
                    }
                    // Running out of file descriptors or memory clears up as
                    // connections close; a client that gave up before its
                    // connection was accepted costs nothing to skip.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let address_slot = match &per_address {
                Some(connections) => match connections.admit(peer.ip()) {
                    Some(slot) => Some(slot),
                    None => {
                        // Closed before a byte is read: the cheapest refusal.
                        metrics::counter!(telemetry::CONNECTIONS_REFUSED, "reason" => "per_address").increment(1);
                        continue;
                    }
                },
                None => None,
            };
            // Small JSON answers: send them without Nagle's delay.
            let _ = socket.set_nodelay(true);
            metrics::counter!(telemetry::CONNECTIONS_ACCEPTED).increment(1);
            metrics::gauge!(telemetry::CONNECTIONS_OPEN).increment(1.0);
            let served = connection::serve(socket, peer, front.clone(), Arc::clone(&http1), limits, stop.clone());
            connections.spawn(async move {
                served.await;
                metrics::gauge!(telemetry::CONNECTIONS_OPEN).decrement(1.0);
                drop((permit, address_slot));
            });
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        stop.cancel();
        // The runner stops with the connections: each job in hand finishes
        // its current batch (one transaction) and is handed back, so
        // another instance can resume it at once.
        let drained = tokio::time::timeout(shutdown_grace, async {
            while connections.join_next().await.is_some() {}
            if let Some(bulk) = &mut bulk {
                if let Err(err) = bulk.await {
                    tracing::error!(error = %err, "the bulk-job runner panicked");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_seconds = shutdown_grace.as_secs(),
                connections = connections.len(),
                "requests still in flight after the shutdown grace period: closing their connections"
            );
            connections.shutdown().await;
        }
        if let Some(bulk) = bulk.take().filter(|handle| !handle.is_finished()) {
            // Past the grace period. Its batches are atomic: stopping one
            // half-way loses nothing, and its jobs are resumed once their
            // leases end. Awaited so its handle on the store is gone before
            // the store is closed.
            bulk.abort();
            match bulk.await {
                Err(err) if err.is_panic() => tracing::error!(error = %err, "the bulk-job runner panicked"),
                _ => {}
            }
        }
        housekeeping.abort();
        if let Some(retention) = retention {
            // Each batch is one store call: stopping between or inside
            // them loses nothing. Awaited so its handle on the store is
            // gone before the store is closed.
            retention.abort();
            let _ = retention.await;
        }
        if let Some(retention) = change_retention {
            retention.abort();
            let _ = retention.await;
        }
        // The connections, and with them their clones of the front
        // service, are gone: the store is usually ours alone now.
        drop((router, front));
        store.close().await;
        Ok(())
    }
}

/// The listen backlog asked for; the kernel caps it (Linux:
/// `net.core.somaxconn`, 4096 by default since 5.4). A deep backlog lets a
/// burst of new connections, or those waiting at the connection cap, queue
/// instead of having their SYNs dropped and retried a second later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `listen` resolves to that can be bound, with
/// `SO_REUSEADDR` (as the standard library does) and a
/// [`LISTEN_BACKLOG`]-deep backlog.
async fn listen(listen: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(listen).await? {
        let bound = (|| {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            #[cfg(unix)]
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to nothing")))
}

async fn forget_idle(rate_limiter: Arc<RateLimiter>, address_limiter: Option<Arc<AddressLimiter>>) {
    let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        rate_limiter.forget_idle();
        if let Some(limiter) = &address_limiter {
            limiter.forget_idle();
        }
    }
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM, logging which.
///
/// If a handler cannot be installed, that signal is logged and ignored
/// (the other one still works).
pub async fn shutdown_signal() {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
                "SIGTERM"
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<&'static str>();
    let name = tokio::select! {
        name = interrupt => name,
        name = terminate => name,
    };
    tracing::info!(
        signal = name,
        "shutting down: no new connections, finishing the requests in flight"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{mint_token, JwtSecret, DEFAULT_TTL};
    use fielding_core::AccountId;

    #[tokio::test]
    async fn an_in_process_server_serves_and_stops() {
        let secret = JwtSecret::new("an in-process secret of 32 bytes!").unwrap();
        let server = Server::bind(&ServerConfig::new(Database::Memory, secret.clone()))
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(server.store_kind(), "memory");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));

        let client = reqwest::Client::new();
        let health: serde_json::Value = client
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["store"], "memory");

        let token = mint_token(
            &secret,
            uuid::Uuid::new_v4(),
            &[AccountId::new(101).unwrap()],
            DEFAULT_TTL,
        )
        .unwrap();
        let status = client
            .get(format!(
                "http://{addr}/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1/fielding-runs"
            ))
            .bearer_auth(token)
            .header("Cint-API-Version", "2025-12-18")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, reqwest::StatusCode::OK);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_taken_address_is_a_bind_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let mut config = ServerConfig::new(Database::Memory, JwtSecret::new("x").unwrap());
        config.listen = addr.clone();
        let err = Server::bind(&config).await.unwrap_err();
        assert!(matches!(err, ServerError::Bind { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_a_sqlite_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(
            &path,
            "not a database, but long enough to have something like a header in it",
        )
        .unwrap();
        let err = open_store(&Database::Sqlite(path), "fielding", PgStore::DEFAULT_MAX_CONNECTIONS)
            .await
            .unwrap_err();
        assert!(matches!(err, ServerError::Sqlite(_)), "{err:?}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }
}
