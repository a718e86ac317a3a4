//! The connection settings: the pool options [`PgStore::connect`] uses and
//! recommends.

use sqlx::postgres::PgPoolOptions;

use crate::store::PgStore;

impl PgStore {
    /// The pool size [`PgStore::connect`] uses: 10 connections.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

    /// How long a connection may sit idle in a [`PgStore::pool_options`]
    /// pool before it is checked with a round trip on checkout: 1 s.
    pub const IDLE_CHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

    /// The pool settings [`PgStore::connect`] uses, for callers who build
    /// their own pool: [`PgStore::DEFAULT_MAX_CONNECTIONS`] connections, and
    /// a connection is checked with a round trip before it is handed out
    /// only when it has been idle for [`PgStore::IDLE_CHECK_AFTER`] or more.
    ///
    /// sqlx's default (`test_before_acquire(true)`) pings on *every*
    /// checkout, a round trip before each operation that does not find a
    /// connection the store has just used (see "Connections" in the crate
    /// documentation). Without it, a connection that died while idle for
    /// less than a second is found out by the next statement on it, which
    /// then fails with a retryable error (and the pool drops the
    /// connection); one idle longer is checked and replaced before use.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use fielding_postgres::PgStore;
    /// let pool = PgStore::pool_options()
    ///     .max_connections(32)
    ///     .connect("postgres://postgres@127.0.0.1:5432/postgres")
    ///     .await?;
    /// let store = PgStore::new(pool, "fielding")?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(Self::DEFAULT_MAX_CONNECTIONS)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= Self::IDLE_CHECK_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
    }
}
