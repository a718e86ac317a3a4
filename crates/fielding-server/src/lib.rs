//! # fielding-server
//!
//! The reference server for fielding runs: the contract's HTTP API
//! ([`fielding_http::FieldingApi`]) on a SQLite file, PostgreSQL or memory,
//! with HS256 JWT bearer tokens, `GET /health`, structured logs and a
//! graceful shutdown. The binary (`cargo run -p fielding-server`) is a thin
//! shell around this library, which tests and embedding apps can use to
//! start the same server in-process:
//!
//! * [`Cli`], [`ServeArgs`], [`TokenArgs`]: the command line (clap), every
//!   flag with its environment variable; [`ServerConfig`] the settings.
//! * [`Database`]: the `--database` value, parsed.
//! * [`jwt`]: [`JwtAuthenticator`] (the [`fielding_http::auth::Authenticator`]
//!   for HS256 tokens) and [`mint_token`].
//! * [`app`]: the router: [`health`] (`/health` liveness, `/ready`
//!   readiness) next to the API, behind the per-address limit
//!   ([`address_limit`]), with an access log.
//! * [`Server`]: open the store, bind, serve until a shutdown future
//!   completes ([`shutdown_signal`] for SIGINT/SIGTERM), every connection
//!   under the [`limits`] (timeouts, connection cap, head size).
//! * [`telemetry`]: the metrics the server records (through the `metrics`
//!   facade) and the sampling that keeps refusals out of the log;
//!   [`log_fields`]: how its log lines write span and event fields.
//!
//! See `docs/server.md` for the flags, the token command and examples.
#![warn(missing_docs)]

pub mod address_limit;
pub mod app;
pub mod cli;
mod connection;
pub mod database;
pub mod health;
pub mod jwt;
pub mod limits;
pub mod log_fields;
pub mod prometheus;
pub mod retention;
pub mod server;
pub mod telemetry;
mod verified_tokens;

pub use cli::{Cli, Command, ConfigError, SecretSource, ServeArgs, ServerConfig, TokenArgs};
pub use connection::ShuttingDown;
pub use database::{Database, DatabaseError};
pub use jwt::{mint_token, Claims, JwtAuthenticator, JwtSecret, TokenError};
pub use limits::ConnectionLimits;
pub use server::{open_store, shutdown_signal, OpenedStore, Server, ServerError};
