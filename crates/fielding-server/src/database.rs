//! Which store the server runs on, parsed from `--database` /
//! `FIELDING_DATABASE`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The store to open: a SQLite file, a PostgreSQL database, or memory.
///
/// Accepted forms:
///
/// | value | store |
/// |---|---|
/// | `memory` | [`fielding_memory::MemoryStore`]: nothing survives a restart |
/// | `sqlite://PATH` (`sqlite:///abs/path` for an absolute one) | [`fielding_sqlite::SqliteStore`] on `PATH` |
/// | a plain path without a scheme (`fielding.sqlite3`, `/var/lib/x.db`) | [`fielding_sqlite::SqliteStore`] on that path |
/// | `postgres://…` or `postgresql://…` | [`fielding_postgres::PgStore`] on that URL |
///
/// ```
/// use fielding_server::Database;
/// assert_eq!("memory".parse::<Database>()?, Database::Memory);
/// assert_eq!("sqlite://data/f.db".parse::<Database>()?, Database::Sqlite("data/f.db".into()));
/// assert_eq!("f.sqlite3".parse::<Database>()?, Database::Sqlite("f.sqlite3".into()));
/// assert!(matches!("postgres://u@h/db".parse::<Database>()?, Database::Postgres(_)));
/// assert!("mysql://u@h/db".parse::<Database>().is_err());
/// # Ok::<(), fielding_server::DatabaseError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// The in-memory store.
    Memory,
    /// A SQLite database file (created and migrated if needed).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

/// Why a `--database` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// Nothing was given.
    #[error("the database is empty: give a SQLite path, sqlite://PATH, postgres://… or memory")]
    Empty,
    /// A URL with a scheme this server does not serve.
    #[error(
        "unsupported database scheme {scheme:?}: use a SQLite path, sqlite://PATH, postgres://…, postgresql://… or memory"
    )]
    UnsupportedScheme {
        /// The scheme given (before `://`).
        scheme: String,
    },
    /// `sqlite://` without a path.
    #[error("sqlite:// needs a path, e.g. sqlite://fielding.sqlite3 or sqlite:///var/lib/fielding.sqlite3")]
    MissingSqlitePath,
    /// `postgres://` with nothing after it.
    #[error("the PostgreSQL URL has no host or database, e.g. postgres://user:password@127.0.0.1:5432/fielding")]
    MissingPostgresTarget,
}

impl Database {
    /// Parses a `--database` value (see the type's documentation).
    pub fn parse(value: &str) -> Result<Self, DatabaseError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(DatabaseError::Empty);
        }
        if value.eq_ignore_ascii_case("memory") {
            return Ok(Self::Memory);
        }
        let Some((scheme, rest)) = value.split_once("://") else {
            return Ok(Self::Sqlite(PathBuf::from(value)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" if rest.is_empty() => Err(DatabaseError::MissingSqlitePath),
            "sqlite" => Ok(Self::Sqlite(PathBuf::from(rest))),
            "postgres" | "postgresql" if rest.is_empty() => Err(DatabaseError::MissingPostgresTarget),
            "postgres" | "postgresql" => Ok(Self::Postgres(value.to_owned())),
            _ => Err(DatabaseError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// The store's kind as reported by `/health` and at start-up:
    /// `memory`, `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// A description safe for logs: the SQLite path, or the PostgreSQL URL
    /// with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            Self::Memory => "memory".to_owned(),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => redact_password(url),
        }
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_query_password(tail))
}

/// `?password=…` (libpq accepts the password as a query parameter too).
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

impl FromStr for Database {
    type Err = DatabaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Database {
    /// The redacted form ([`Database::redacted`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for Database {
    /// The redacted form, so a password never reaches a log by `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.debug_tuple("Postgres").field(&self.redacted()).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(path: &str) -> Database {
        Database::Sqlite(PathBuf::from(path))
    }

    #[test]
    fn memory_in_any_case() {
        assert_eq!(Database::parse("memory"), Ok(Database::Memory));
        assert_eq!(Database::parse("MEMORY"), Ok(Database::Memory));
        assert_eq!(Database::parse(" memory "), Ok(Database::Memory));
    }

    #[test]
    fn plain_paths_are_sqlite_files() {
        assert_eq!(Database::parse("fielding.sqlite3"), Ok(sqlite("fielding.sqlite3")));
        assert_eq!(Database::parse("./data/f.db"), Ok(sqlite("./data/f.db")));
        assert_eq!(Database::parse("/var/lib/f.db"), Ok(sqlite("/var/lib/f.db")));
        assert_eq!(Database::parse(":memory:"), Ok(sqlite(":memory:")));
    }

    #[test]
    fn sqlite_urls_keep_relative_and_absolute_paths() {
        assert_eq!(Database::parse("sqlite://f.db"), Ok(sqlite("f.db")));
        assert_eq!(Database::parse("sqlite:///var/lib/f.db"), Ok(sqlite("/var/lib/f.db")));
        assert_eq!(Database::parse("SQLite://f.db"), Ok(sqlite("f.db")));
        assert_eq!(Database::parse("sqlite://"), Err(DatabaseError::MissingSqlitePath));
    }

    #[test]
    fn postgres_urls_are_kept_whole() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgresql://u:p@db.example/fielding?sslmode=disable",
        ] {
            assert_eq!(Database::parse(url), Ok(Database::Postgres(url.to_owned())));
        }
        assert_eq!(
            Database::parse("postgres://"),
            Err(DatabaseError::MissingPostgresTarget)
        );
    }

    #[test]
    fn other_schemes_are_refused_by_name() {
        for (value, scheme) in [
            ("mysql://u@h/db", "mysql"),
            ("http://x", "http"),
            ("file:///x.db", "file"),
        ] {
            let err = Database::parse(value).unwrap_err();
            assert_eq!(err, DatabaseError::UnsupportedScheme { scheme: scheme.into() });
            let text = err.to_string();
            assert!(text.contains(scheme) && text.contains("unsupported"), "{text}");
        }
    }

    #[test]
    fn empty_is_refused() {
        assert_eq!(Database::parse(""), Err(DatabaseError::Empty));
        assert_eq!(Database::parse("   "), Err(DatabaseError::Empty));
    }

    #[test]
    fn kinds() {
        assert_eq!(Database::Memory.kind(), "memory");
        assert_eq!(sqlite("x").kind(), "sqlite");
        assert_eq!(Database::Postgres("postgres://h/d".into()).kind(), "postgres");
    }

    #[test]
    fn passwords_never_show() {
        let db = Database::parse("postgres://alice:hunter2@db:5432/f?x=1").unwrap();
        for text in [db.to_string(), format!("{db:?}"), db.redacted()] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("alice:***@db:5432/f?x=1"), "{text}");
        }
        assert_eq!(
            Database::parse("postgres://alice@db/f").unwrap().redacted(),
            "postgres://alice@db/f"
        );
        assert_eq!(
            Database::parse("postgres://db/f").unwrap().redacted(),
            "postgres://db/f"
        );
        assert_eq!(sqlite("a.db").redacted(), "sqlite://a.db");
        let query = Database::parse("postgres://alice@db/f?sslmode=require&Password=hunter2&x=1").unwrap();
        for text in [query.to_string(), format!("{query:?}"), query.redacted()] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("/f?sslmode=require&Password=***&x=1"), "{text}");
        }
    }
}
