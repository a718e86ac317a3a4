//! # fielding
//!
//! **Fielding runs** for your Rust service: the period during which a survey
//! target group is live and collecting answers. This crate is the one
//! dependency to add: the lifecycle rules with optimistic locking (a stale
//! `If-Match` is refused, two racing writers never both win), the change
//! feed, creation and bulk jobs, a choice of stores, and the HTTP contract as
//! an axum `Router` to mount in the app you already have, with your own
//! pool, runtime and authentication.
//!
//! Everything in `fielding-core` is at the root ([`FieldingService`],
//! [`FieldingStore`], [`IfMatch`], [`FieldingError`], ...); the rest comes
//! behind cargo features, like `sqlx`'s drivers and `object_store`'s clouds.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fielding::{memory::MemoryStore, FieldingService, Scope, UserId};
//! let service = FieldingService::new(std::sync::Arc::new(MemoryStore::new()));
//! let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
//! let created = service.schedule(scope, "2031-01-01T09:00:00Z".parse()?, "2031-01-31T09:00:00Z".parse()?, UserId::random()).await?;
//! assert_eq!(created.etag.to_string(), "\"1\""); // send it back as If-Match to change the run
//! # Ok(()) }
//! ```
//!
//! ## Which feature to pick
//!
//! | feature | gives you | pick it when |
//! |---|---|---|
//! | `memory` (default) | `fielding::memory`: `MemoryStore` | tests, examples, one process that may lose its data on restart |
//! | `sqlite` | `fielding::sqlite`: `SqliteStore` on a file (SQLite compiled in, WAL, migrations) | one server instance that must keep its data |
//! | `postgres` | `fielding::postgres`: `PgStore` on your sqlx `PgPool` | many instances of your service on one database |
//! | `http` | `fielding::http`: `FieldingApi`, the contract's endpoints as an axum `Router`, the `Authenticator` trait you implement; plus the `axum` and `tokio` it runs on | you serve the contract over HTTP |
//! | `testkit` | `fielding::testkit`: `fixtures`, `FaultyStore` fault injection, the conformance suite for a store of your own | in `[dev-dependencies]`, for your own test suites |
//!
//! With no features at all you get the domain and the [`FieldingStore`]
//! trait only, for a store of your own.
//!
//! ```toml
//! [dependencies]
//! fielding = { version = "0.1", features = ["sqlite", "http"] }
//! [dev-dependencies]
//! fielding = { version = "0.1", features = ["testkit"] }
//! ```
//!
//! The crate's examples show the rest: `sqlite_server` serves the contract
//! on SQLite in under 20 lines, `existing_app` nests the router into an axum
//! app with its own routes, `PgPool` and API-key authentication, and the
//! `consumer_tests` test file tests a handler's retry and error paths with
//! fixtures, a manual clock and fault injection.
#![warn(missing_docs)]

pub use fielding_core::*;

/// The in-memory store (feature `memory`, on by default): re-exports
/// `fielding-memory`.
#[cfg(feature = "memory")]
pub use fielding_memory as memory;

/// The SQLite store (feature `sqlite`): re-exports `fielding-sqlite`.
#[cfg(feature = "sqlite")]
pub use fielding_sqlite as sqlite;

/// The PostgreSQL store (feature `postgres`): re-exports `fielding-postgres`.
#[cfg(feature = "postgres")]
pub use fielding_postgres as postgres;

/// The HTTP contract as an axum `Router` (feature `http`): re-exports
/// `fielding-http`.
#[cfg(feature = "http")]
pub use fielding_http as http;

/// The axum the `fielding::http` router is built with (feature `http`), so an app
/// serving it needs no separate, possibly mismatched, axum dependency.
#[cfg(feature = "http")]
pub use axum;

/// The tokio runtime the `fielding::http` router is served on (feature `http`);
/// `use fielding::tokio;` makes `#[tokio::main]` work without a tokio
/// dependency of your own.
#[cfg(feature = "http")]
pub use tokio;

/// The attribute the [`FieldingStore`] trait and `fielding::http`'s
/// `Authenticator` are declared with: put `#[fielding::async_trait]` on
/// your `impl` of either (no `async-trait` dependency of your own needed).
pub use async_trait::async_trait;

/// Test support (feature `testkit`): re-exports `fielding-testkit`
/// (`fixtures`, `FaultyStore`, the conformance suite).
#[cfg(feature = "testkit")]
pub use fielding_testkit as testkit;

/// The README's code examples, compiled and run as doctests so they stay
/// true. They use this crate the way the README tells a newcomer to, so
/// they live here (the dev-dependency on this crate itself turns on the
/// features they need in `cargo test --workspace`).
#[cfg(all(doctest, feature = "memory", feature = "sqlite", feature = "testkit"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// `docs/configuration.md`'s examples, compiled (and the in-memory one
/// run) as doctests, so that every builder method they show exists.
#[cfg(all(
    doctest,
    feature = "memory",
    feature = "sqlite",
    feature = "postgres",
    feature = "http"
))]
#[doc = include_str!("../../../docs/configuration.md")]
pub struct ConfigurationDocDoctests;
