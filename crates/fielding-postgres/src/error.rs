//! Error types and the classification of driver errors.
//!
//! Every decision is made on structured fields (the error variant, the
//! SQLSTATE code, the constraint name), never on message text: messages
//! change between PostgreSQL versions and with `lc_messages`.

use fielding_core::StoreError;

use crate::schema_name::InvalidSchemaName;

/// Why [`crate::PgStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The schema name is not a valid identifier.
    #[error(transparent)]
    Schema(#[from] InvalidSchemaName),
    /// The URL could not be parsed, or the server could not be reached.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
}

/// Why [`crate::PgStore::migrate`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The database was migrated by a newer release of this library than
    /// the one running: its tables may have changed in ways this release
    /// does not understand, so it refuses to touch them.
    #[error(
        "schema {schema:?} is at migration {found}, but this fielding-postgres knows migrations up to {known} only; \
         upgrade the library (or point it at another schema)"
    )]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// The highest migration recorded in the database.
        found: u32,
        /// The highest migration this release knows
        /// ([`SCHEMA_VERSION`](crate::SCHEMA_VERSION)).
        known: u32,
    },
    /// The database failed while migrating; nothing of the failed step was
    /// applied (each run of `migrate` is one transaction).
    #[error("migrating schema {schema:?} failed{}: {source}", if *.retryable { " (retryable)" } else { "" })]
    Database {
        /// The schema.
        schema: String,
        /// Whether trying again may succeed (see [`is_transient`]).
        retryable: bool,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// SQLSTATE `unique_violation`.
pub(crate) const UNIQUE_VIOLATION: &str = "23505";

/// Whether repeating the operation that failed with `err` may succeed.
///
/// Retryable: serialization failure (`40001`), deadlock (`40P01`), the
/// connection exception class (`08xxx`), the server shutting the session
/// down (`57P01` admin shutdown, which is what `pg_terminate_backend`
/// sends, `57P02` crash shutdown, `57P03` cannot connect now), too many
/// connections (`53300`), lock timeout (`55P03`), a cancelled statement
/// (`57014`, statement timeout), and on the client side I/O errors, pool
/// time-outs and a crashed connection worker.
///
/// Not retryable: everything else, including a *closed* pool
/// ([`sqlx::Error::PoolClosed`]): it never reopens, so repeating the call on
/// the same store cannot succeed.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// The SQLSTATE half of [`is_transient`].
pub(crate) fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "55P03" | "57014"
        )
}

/// The SQLSTATE of a database error, if `err` is one.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The constraint a database error names, if any.
pub(crate) fn constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// A [`StoreError::Backend`] for a driver error during `op`, retryable when
/// [`is_transient`] says so.
pub(crate) fn backend(op: &'static str, err: sqlx::Error) -> StoreError {
    let retryable = is_transient(&err);
    let code = sqlstate(&err).map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default();
    StoreError::Backend {
        message: format!("PostgreSQL {op} failed{code}: {err}"),
        retryable,
        source: Some(Box::new(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_code() {
        for code in [
            "40001", "40P01", "08000", "08006", "08003", "57P01", "57P02", "57P03", "53300",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "23503", "42P01", "42501", "22003", "XX000", "P0001"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn client_side_errors_are_classified_by_variant() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::WorkerCrashed));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        let err = backend("get", sqlx::Error::PoolTimedOut);
        assert!(err.is_retryable());
        assert!(!backend("get", sqlx::Error::PoolClosed).is_retryable());
    }
}
