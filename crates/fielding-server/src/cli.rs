//! The command line: flags, their environment variables, the `token`
//! subcommand.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fielding_core::{AccountId, BulkRunnerOptions};
use fielding_http::rate_limit::RateLimitPolicy;
use fielding_http::{BasePath, CONTRACT_BASE_PATH, DEFAULT_BODY_LIMIT, DEFAULT_BULK_BODY_LIMIT};
use fielding_postgres::PgStore;
use uuid::Uuid;

use crate::app::ApiLimits;
use crate::database::Database;
use crate::jwt::{JwtSecret, SecretError, DEFAULT_TTL};
use crate::limits::{
    auto_max_connections, ConnectionLimits, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_HEADER_BYTES, MAX_MAX_CONNECTIONS,
    MIN_MAX_HEADER_BYTES,
};
use crate::retention::{ChangeRetentionConfig, RetentionConfig, DEFAULT_CHANGE_RETENTION, DEFAULT_JOB_RETENTION};

/// The sustained rate that stands for "no limit" when
/// `--rate-limit-per-second 0` is given: a billion requests per second per
/// principal, with a burst of as many.
pub const UNLIMITED_RATE: u32 = 1_000_000_000;

/// The default `--shutdown-grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `fielding-server`: the fielding-run HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "fielding-server",
    args_conflicts_with_subcommands = true,
    version,
    about = "The fielding-run HTTP API on SQLite, PostgreSQL or memory, with JWT (HS256) bearer tokens",
    after_help = "Logs go to stderr; set RUST_LOG to filter them (default: info), e.g. RUST_LOG=fielding_server=debug,info.\n\
                  Every flag can also be set with the environment variable shown in brackets; a flag wins over its variable.\n\
                  Stop with SIGINT (Ctrl-C) or SIGTERM: in-flight requests are finished first."
)]
pub struct Cli {
    /// A subcommand; without one the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a bearer token (HS256 JWT) for the given accounts, and nothing
    /// else, so `TOKEN=$(fielding-server token ...)` works.
    Token(TokenArgs),
}

/// How the server runs.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The address to listen on. Port 0 picks a free port; the address
    /// actually bound is printed at start-up.
    #[arg(long, env = "FIELDING_LISTEN", value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// The path the API is served under: the contract's paths
    /// (`/demand/...`) are relative to its server URL, `…/v1`. `/` serves
    /// them at the root. `/health` and `/ready` stay at the root either
    /// way. Letters, digits, `-`, `.`, `_`, `~` and single `/`s, no
    /// trailing `/`, at most 256 bytes.
    #[arg(
        long,
        env = "FIELDING_BASE_PATH",
        value_name = "PATH",
        default_value = CONTRACT_BASE_PATH
    )]
    pub base_path: BasePath,

    /// Whether to record metrics and export them at `GET /metrics` (in the
    /// Prometheus text format): `on` or `off` (also `true`/`false`,
    /// `yes`/`no`, `1`/`0`). Off, `/metrics` answers 404 and nothing is
    /// recorded.
    #[arg(
        long,
        env = "FIELDING_METRICS",
        value_name = "on|off",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub metrics: bool,

    /// The store: a SQLite file path or sqlite://PATH (created and migrated
    /// if needed), postgres://… or postgresql://… (migrated at start-up),
    /// or `memory` (nothing survives a restart).
    #[arg(
        long,
        env = "FIELDING_DATABASE",
        value_name = "URL",
        default_value = "fielding.sqlite3"
    )]
    pub database: Database,

    /// The PostgreSQL schema holding the tables (PostgreSQL only).
    #[arg(long, env = "FIELDING_PG_SCHEMA", value_name = "SCHEMA", default_value = "fielding")]
    pub pg_schema: String,

    /// The most PostgreSQL connections this instance holds (PostgreSQL
    /// only). Requests beyond it queue for a connection in arrival order;
    /// a pool as large as the requests in flight keeps them from queueing.
    /// Every instance holds up to this many, plus one for change-feed
    /// wake-ups: keep instances × (N + 1) under the server's
    /// `max_connections`.
    #[arg(
        long,
        env = "FIELDING_PG_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = PgStore::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub pg_max_connections: u32,

    /// The HS256 secret bearer tokens are signed with. When unset, a random
    /// one is generated for this run and printed at start-up (tokens then
    /// stop working at the next restart).
    #[arg(long, env = "FIELDING_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub jwt_secret: Option<JwtSecret>,

    /// Requests per second each principal may make, sustained; 0 turns rate
    /// limiting off.
    #[arg(
        long,
        env = "FIELDING_RATE_LIMIT_PER_SECOND",
        value_name = "N",
        default_value_t = 100
    )]
    pub rate_limit_per_second: u32,

    /// How many requests a principal may make at once before the sustained
    /// rate applies (at least 1).
    #[arg(
        long,
        env = "FIELDING_RATE_LIMIT_BURST",
        value_name = "N",
        default_value_t = 200,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub rate_limit_burst: u32,

    /// After SIGINT or SIGTERM, how many seconds requests in flight may
    /// take to finish before their connections are closed anyway (a
    /// client that stalls mid-request cannot hold the process up longer).
    #[arg(
        long,
        env = "FIELDING_SHUTDOWN_GRACE",
        value_name = "SECONDS",
        default_value_t = DEFAULT_SHUTDOWN_GRACE.as_secs()
    )]
    pub shutdown_grace: u64,

    /// The largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "FIELDING_BODY_LIMIT", value_name = "BYTES", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,

    /// The largest body of a batch POST (a bulk job's list of up to 10,000
    /// target groups), in bytes (413 above it).
    #[arg(
        long,
        env = "FIELDING_BULK_BODY_LIMIT",
        value_name = "BYTES",
        default_value_t = DEFAULT_BULK_BODY_LIMIT
    )]
    pub bulk_body_limit: usize,

    /// Requests per second each client address may make, sustained,
    /// before authentication (IPv6: per /64); 0 turns the limit off
    /// (do that, or raise it, behind a reverse proxy).
    #[arg(
        long,
        env = "FIELDING_ADDRESS_RATE_LIMIT_PER_SECOND",
        value_name = "N",
        default_value_t = 1_000
    )]
    pub address_rate_limit_per_second: u32,

    /// How many requests an address may make at once before its sustained
    /// rate applies (at least 1).
    #[arg(
        long,
        env = "FIELDING_ADDRESS_RATE_LIMIT_BURST",
        value_name = "N",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub address_rate_limit_burst: u32,

    /// Seconds a client has to send a complete request head, from the
    /// connection's opening (first request) or the request's first byte
    /// (later ones); the connection is closed past it.
    #[arg(
        long,
        env = "FIELDING_HEADER_READ_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_HEADER_READ_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout: u64,

    /// Seconds a request body may take to arrive in full; past it the
    /// request is answered 408 and the connection closed.
    #[arg(
        long,
        env = "FIELDING_BODY_READ_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_BODY_READ_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub body_read_timeout: u64,

    /// Seconds a kept-alive connection may wait for its next request
    /// before it is closed.
    #[arg(
        long,
        env = "FIELDING_IDLE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout: u64,

    /// The most connections open at once; more wait in the listen backlog.
    /// Default: the open-file limit (raised to its hard limit at start-up)
    /// less 128, at most 10000.
    #[arg(
        long,
        env = "FIELDING_MAX_CONNECTIONS",
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=MAX_MAX_CONNECTIONS)
    )]
    pub max_connections: Option<u64>,

    /// The most connections one client address (IPv6: one /64) may have
    /// open; its further connections are closed at once. 0 turns the limit
    /// off (do that behind a reverse proxy).
    #[arg(
        long,
        env = "FIELDING_MAX_CONNECTIONS_PER_ADDRESS",
        value_name = "N",
        default_value_t = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS as u64
    )]
    pub max_connections_per_address: u64,

    /// The largest request head (request line and headers), in bytes
    /// (431 above it).
    #[arg(
        long,
        env = "FIELDING_MAX_HEADER_BYTES",
        value_name = "BYTES",
        default_value_t = DEFAULT_MAX_HEADER_BYTES as u64,
        value_parser = clap::value_parser!(u64).range(MIN_MAX_HEADER_BYTES as u64..=(1 << 20))
    )]
    pub max_header_bytes: u64,

    /// Seconds a finished creation job (and its idempotency key) is kept
    /// before it is deleted; 0 keeps jobs forever.
    #[arg(
        long,
        env = "FIELDING_JOB_RETENTION",
        value_name = "SECONDS",
        default_value_t = DEFAULT_JOB_RETENTION.as_secs()
    )]
    pub job_retention: u64,

    /// Seconds a change record (one per version of a run, read through the
    /// change feed and a run's history) is kept; 0 keeps them forever. A
    /// feed consumer whose cursor is older is answered 410 and starts over.
    #[arg(
        long,
        env = "FIELDING_CHANGE_RETENTION",
        value_name = "SECONDS",
        default_value_t = DEFAULT_CHANGE_RETENTION.as_secs()
    )]
    pub change_retention: u64,

    /// Bulk jobs this instance works at the same time; 0: this instance
    /// works none (it still accepts and reports them; another instance on
    /// the same database works them).
    #[arg(long, env = "FIELDING_BULK_CONCURRENCY", value_name = "JOBS", default_value_t = 4)]
    pub bulk_concurrency: usize,

    /// Target groups a bulk job applies per store transaction.
    #[arg(
        long,
        env = "FIELDING_BULK_BATCH_SIZE",
        value_name = "ITEMS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub bulk_batch_size: u64,

    /// Seconds a claim on a bulk job holds without renewal: the time after
    /// which another instance takes over the job of an instance that died.
    #[arg(
        long,
        env = "FIELDING_BULK_LEASE",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub bulk_lease: u64,

    /// Milliseconds between two looks for bulk jobs this instance was not
    /// woken for (submitted to another instance, or left by one that died).
    #[arg(
        long,
        env = "FIELDING_BULK_POLL_INTERVAL_MS",
        value_name = "MILLISECONDS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000)
    )]
    pub bulk_poll_interval_ms: u64,
}

/// The `token` subcommand's arguments.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The secret the server verifies tokens with (its --jwt-secret).
    #[arg(long, env = "FIELDING_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub secret: JwtSecret,

    /// An account the token grants access to; repeat for several.
    #[arg(long = "account", value_name = "ID", required = true)]
    pub accounts: Vec<AccountId>,

    /// The user (a UUID) recorded as `last_changed_by`; a random one when
    /// not given.
    #[arg(long, value_name = "UUID")]
    pub user: Option<Uuid>,

    /// How long the token is valid, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = DEFAULT_TTL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub ttl: u64,
}

impl TokenArgs {
    /// The token's lifetime.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }
}

/// Why the settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No secret was given and none could be generated.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The rate limit is not usable.
    #[error("invalid rate limit: {0}")]
    RateLimit(String),
}

/// Where the JWT secret came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// `--jwt-secret` or `FIELDING_JWT_SECRET`.
    Given,
    /// Generated at start-up.
    Generated,
}

/// Everything [`crate::Server::bind`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to listen on (`host:port`; port 0 for any free one).
    pub listen: String,
    /// The path the API is served under (`/v1`, or `/` for the root).
    pub base_path: BasePath,
    /// Whether the binary installs the Prometheus exporter.
    pub metrics: bool,
    /// The store.
    pub database: Database,
    /// The PostgreSQL schema.
    pub pg_schema: String,
    /// The PostgreSQL pool's size.
    pub pg_max_connections: u32,
    /// The HS256 secret.
    pub jwt_secret: JwtSecret,
    /// Where the secret came from.
    pub secret_source: SecretSource,
    /// Rate and body limits.
    pub limits: ApiLimits,
    /// After a shutdown signal, how long requests in flight may take before
    /// their connections are closed anyway.
    pub shutdown_grace: Duration,
    /// Timeouts, the connection cap and the head size.
    pub connections: ConnectionLimits,
    /// How finished jobs expire; `None` keeps them forever.
    pub job_retention: Option<RetentionConfig>,
    /// How change records expire; `None` keeps them forever.
    pub change_retention: Option<ChangeRetentionConfig>,
    /// How this instance works bulk jobs; `None`: it works none.
    pub bulk_runner: Option<BulkRunnerOptions>,
}

impl ServerConfig {
    /// Settings for an in-process server (tests, embedding): listening on
    /// `127.0.0.1:0`, the API under the contract's `/v1`, the given store
    /// and secret, default limits.
    pub fn new(database: Database, jwt_secret: JwtSecret) -> Self {
        Self {
            listen: "127.0.0.1:0".to_owned(),
            base_path: BasePath::contract(),
            metrics: true,
            database,
            pg_schema: "fielding".to_owned(),
            pg_max_connections: PgStore::DEFAULT_MAX_CONNECTIONS,
            jwt_secret,
            secret_source: SecretSource::Given,
            limits: ApiLimits::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            connections: ConnectionLimits::default(),
            job_retention: Some(RetentionConfig::default()),
            change_retention: Some(ChangeRetentionConfig::default()),
            bulk_runner: Some(BulkRunnerOptions::default()),
        }
    }
}

impl ServeArgs {
    /// The rate limit the flags ask for (see [`UNLIMITED_RATE`]).
    pub fn rate_limit_policy(&self) -> Result<RateLimitPolicy, ConfigError> {
        if self.rate_limit_per_second == 0 {
            return RateLimitPolicy::per_second(UNLIMITED_RATE, UNLIMITED_RATE)
                .ok_or_else(|| ConfigError::RateLimit("the unlimited rate is zero".into()));
        }
        RateLimitPolicy::per_second(self.rate_limit_per_second, self.rate_limit_burst).ok_or_else(|| {
            ConfigError::RateLimit(
                "--rate-limit-burst must be at least 1 (use --rate-limit-per-second 0 to turn limiting off)".into(),
            )
        })
    }

    /// The per-address limit the flags ask for: `None` when it is off.
    pub fn address_rate_limit_policy(&self) -> Option<RateLimitPolicy> {
        RateLimitPolicy::per_second(self.address_rate_limit_per_second, self.address_rate_limit_burst)
    }

    /// The connection limits the flags ask for.
    pub fn connection_limits(&self) -> ConnectionLimits {
        let max_connections = self
            .max_connections
            .map_or_else(auto_max_connections, |n| usize::try_from(n).unwrap_or(usize::MAX));
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections,
            max_connections_per_address: (self.max_connections_per_address > 0)
                .then(|| usize::try_from(self.max_connections_per_address).unwrap_or(usize::MAX)),
            max_header_bytes: usize::try_from(self.max_header_bytes).unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        }
    }

    /// The settings, generating a secret when none was given.
    pub fn into_config(self) -> Result<ServerConfig, ConfigError> {
        let connections = self.connection_limits();
        let limits = ApiLimits {
            rate_limit: self.rate_limit_policy()?,
            address_rate_limit: self.address_rate_limit_policy(),
            body_limit: self.body_limit,
            bulk_body_limit: self.bulk_body_limit,
            body_read_timeout: Duration::from_secs(self.body_read_timeout),
        };
        let (jwt_secret, secret_source) = match self.jwt_secret {
            Some(secret) => (secret, SecretSource::Given),
            None => (JwtSecret::generate()?, SecretSource::Generated),
        };
        Ok(ServerConfig {
            listen: self.listen,
            base_path: self.base_path,
            metrics: self.metrics,
            database: self.database,
            pg_schema: self.pg_schema,
            pg_max_connections: self.pg_max_connections,
            jwt_secret,
            secret_source,
            limits,
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            connections,
            job_retention: (self.job_retention > 0)
                .then(|| RetentionConfig::default().with_retention(Duration::from_secs(self.job_retention))),
            change_retention: (self.change_retention > 0)
                .then(|| ChangeRetentionConfig::default().with_retention(Duration::from_secs(self.change_retention))),
            bulk_runner: (self.bulk_concurrency > 0).then(|| {
                BulkRunnerOptions::default()
                    .with_concurrency(self.bulk_concurrency)
                    .with_batch_size(usize::try_from(self.bulk_batch_size).unwrap_or(usize::MAX))
                    .with_lease(Duration::from_secs(self.bulk_lease))
                    .with_poll_interval(Duration::from_millis(self.bulk_poll_interval_ms))
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fielding-server").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_into_a_config() {
        let cli = parse(&[
            "--listen",
            "0.0.0.0:9000",
            "--database",
            "memory",
            "--jwt-secret",
            "s3cret",
            "--rate-limit-per-second",
            "5",
            "--rate-limit-burst",
            "10",
            "--body-limit",
            "1024",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let config = cli.serve.into_config().unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.database, Database::Memory);
        assert_eq!(config.jwt_secret.expose(), "s3cret");
        assert_eq!(config.secret_source, SecretSource::Given);
        assert_eq!(config.limits.rate_limit, RateLimitPolicy::per_second(5, 10).unwrap());
        assert_eq!(config.limits.body_limit, 1024);
    }

    #[test]
    fn connection_flags_parse_into_limits() {
        let args = parse(&[
            "--header-read-timeout",
            "3",
            "--idle-timeout",
            "4",
            "--body-read-timeout",
            "5",
            "--max-connections",
            "64",
            "--max-connections-per-address",
            "8",
            "--max-header-bytes",
            "4096",
            "--address-rate-limit-per-second",
            "7",
            "--address-rate-limit-burst",
            "9",
        ])
        .unwrap()
        .serve;
        let config = args.into_config().unwrap();
        assert_eq!(
            config.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(4),
                max_connections: 64,
                max_connections_per_address: Some(8),
                max_header_bytes: 4096,
            }
        );
        assert_eq!(config.limits.body_read_timeout, Duration::from_secs(5));
        assert_eq!(config.limits.address_rate_limit, RateLimitPolicy::per_second(7, 9));
        assert_eq!(config.job_retention, Some(RetentionConfig::default()));
        let kept_forever = parse(&["--job-retention", "0"]).unwrap().serve.into_config().unwrap();
        assert_eq!(kept_forever.job_retention, None);
        let an_hour = parse(&["--job-retention", "3600"])
            .unwrap()
            .serve
            .into_config()
            .unwrap();
        assert_eq!(
            an_hour.job_retention.map(|config| config.retention),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn change_retention_defaults_to_30_days_and_0_keeps_forever() {
        let config = parse(&[]).unwrap().serve.into_config().unwrap();
        assert_eq!(config.change_retention, Some(ChangeRetentionConfig::default()));
        assert_eq!(
            config.change_retention.map(|c| c.retention),
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        let forever = parse(&["--change-retention", "0"])
            .unwrap()
            .serve
            .into_config()
            .unwrap();
        assert_eq!(forever.change_retention, None);
        assert!(forever.job_retention.is_some(), "the job retention is its own");
        let a_day = parse(&["--change-retention", "86400", "--job-retention", "0"])
            .unwrap()
            .serve
            .into_config()
            .unwrap();
        assert_eq!(
            a_day.change_retention.map(|c| c.retention),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(a_day.job_retention, None);
        assert!(parse(&["--change-retention", "-1"]).is_err());
        assert!(
            parse(&["--change-retention", "30d"]).is_err(),
            "seconds, as every duration flag"
        );
    }

    #[test]
    fn connection_defaults_and_bounds() {
        let args = parse(&[]).unwrap().serve;
        let limits = args.connection_limits();
        assert_eq!(limits.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
        assert_eq!(limits.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(limits.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(limits.max_connections, auto_max_connections());
        assert_eq!(
            limits.max_connections_per_address,
            Some(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)
        );
        assert_eq!(
            parse(&["--max-connections-per-address", "0"])
                .unwrap()
                .serve
                .connection_limits()
                .max_connections_per_address,
            None
        );
        assert!(parse(&["--max-connections", "1000001"]).is_err());
        assert!(args.address_rate_limit_policy().is_some(), "on by default");
        assert!(parse(&["--address-rate-limit-per-second", "0"])
            .unwrap()
            .serve
            .address_rate_limit_policy()
            .is_none());
        for bad in [
            ["--header-read-timeout", "0"],
            ["--idle-timeout", "0"],
            ["--body-read-timeout", "0"],
            ["--max-connections", "0"],
            ["--max-header-bytes", "100"],
            ["--address-rate-limit-burst", "0"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_pg_pool_size_defaults_to_the_stores_and_is_bounded() {
        let config = parse(&[]).unwrap().serve.into_config().unwrap();
        assert_eq!(config.pg_max_connections, PgStore::DEFAULT_MAX_CONNECTIONS);
        let config = parse(&["--pg-max-connections", "64"])
            .unwrap()
            .serve
            .into_config()
            .unwrap();
        assert_eq!(config.pg_max_connections, 64);
        for bad in ["0", "10001", "many"] {
            let err = parse(&["--pg-max-connections", bad]).unwrap_err().to_string();
            assert!(err.contains("--pg-max-connections"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_base_path_defaults_to_v1_and_is_validated() {
        let config = parse(&[]).unwrap().serve.into_config().unwrap();
        assert_eq!(config.base_path, BasePath::contract());
        assert_eq!(config.base_path.as_str(), "/v1");
        for (given, served) in [("/", "/"), ("/api/fielding/v1", "/api/fielding/v1"), ("/v2", "/v2")] {
            let config = parse(&["--base-path", given]).unwrap().serve.into_config().unwrap();
            assert_eq!(config.base_path.as_str(), served);
        }
        for bad in ["v1", "/v1/", "", "/v1?x", "/v1#x", "/a/../b", "/v 1", "/{id}", "//"] {
            let err = parse(&["--base-path", bad]).unwrap_err().to_string();
            assert!(err.contains("--base-path"), "{bad:?}: {err}");
        }
        let long = format!("/{}", "a".repeat(300));
        assert!(parse(&["--base-path", &long]).is_err());
    }

    #[test]
    fn rate_limit_zero_turns_it_off() {
        let mut args = parse(&["--rate-limit-per-second", "0"]).unwrap().serve;
        assert_eq!(args.rate_limit_policy().unwrap().rate(), UNLIMITED_RATE);
        args.rate_limit_per_second = 3;
        args.rate_limit_burst = 0;
        assert!(matches!(args.rate_limit_policy(), Err(ConfigError::RateLimit(_))));
        assert!(parse(&["--rate-limit-burst", "0"]).is_err());
    }

    #[test]
    fn bad_databases_are_refused_with_the_reason() {
        let err = parse(&["--database", "mysql://u@h/db"]).unwrap_err().to_string();
        assert!(err.contains("unsupported database scheme \"mysql\""), "{err}");
    }

    #[test]
    fn an_empty_secret_is_refused() {
        assert!(parse(&["--jwt-secret", ""]).is_err());
    }

    #[test]
    fn token_takes_accounts_user_and_ttl() {
        let user = "6f1c3f5e-2a0b-4c8e-9a53-2f5a8f1f0b11";
        let cli = parse(&[
            "token",
            "--secret",
            "s",
            "--account",
            "101",
            "--account",
            "7",
            "--user",
            user,
            "--ttl",
            "60",
        ])
        .unwrap();
        let Some(Command::Token(token)) = cli.command else {
            panic!("not the token subcommand");
        };
        assert_eq!(
            token.accounts,
            vec![AccountId::new(101).unwrap(), AccountId::new(7).unwrap()]
        );
        assert_eq!(token.user, Some(user.parse().unwrap()));
        assert_eq!(token.ttl(), Duration::from_secs(60));
    }

    #[test]
    fn token_needs_an_account_and_valid_values() {
        assert!(parse(&["token", "--secret", "s"]).is_err());
        assert!(parse(&["token", "--secret", "s", "--account", "0"]).is_err());
        assert!(parse(&["token", "--secret", "s", "--account", "1", "--user", "bob"]).is_err());
        assert!(parse(&["token", "--secret", "s", "--account", "1", "--ttl", "0"]).is_err());
    }
}
