//! Making a store: on the caller's pool ([`PgStore::new`],
//! [`PgStore::from_schema_name`]) or on a pool it connects
//! ([`PgStore::connect`]).

use std::sync::Arc;

use sqlx::postgres::PgPool;

use crate::error::ConnectError;
use crate::schema_name::{InvalidSchemaName, SchemaName};
use crate::sql::Statements;
use crate::store::PgStore;
use crate::wakeups::Wakeups;

impl PgStore {
    /// A store on the caller's pool, keeping its tables in `schema`.
    ///
    /// Does no I/O: call [`PgStore::migrate`] once before use (at start-up,
    /// by every instance or by a deploy step).
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let store = fielding_postgres::PgStore::new(pool, "fielding_staging")?;
    /// assert_eq!(store.schema().as_str(), "fielding_staging");
    /// # Ok(()) }
    /// ```
    pub fn new(pool: PgPool, schema: &str) -> Result<Self, InvalidSchemaName> {
        let schema = SchemaName::new(schema)?;
        Ok(Self::from_schema_name(pool, schema))
    }

    /// A store on `pool` in an already validated schema: [`PgStore::new`]
    /// for a [`SchemaName`] you have (from configuration, say), which
    /// cannot fail. Does no I/O either.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use fielding_postgres::{PgStore, SchemaName};
    /// let schema: SchemaName = "fielding_staging".parse()?;
    /// let store = PgStore::from_schema_name(pool, schema);
    /// # let _ = store; Ok(()) }
    /// ```
    pub fn from_schema_name(pool: PgPool, schema: SchemaName) -> Self {
        let sql = Arc::new(Statements::new(&schema));
        let wakeups = Arc::new(Wakeups::new(&schema, pool.clone()));
        Self {
            pool,
            schema,
            sql,
            parking: Arc::default(),
            wakeups,
        }
    }

    /// Connects a new pool ([`PgStore::pool_options`]) to `url`
    /// (`postgres://user:password@host:port/database`) and makes a store on
    /// it. Does not migrate.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = fielding_postgres::PgStore::connect("postgres://postgres@127.0.0.1:5432/postgres", "fielding").await?;
    /// store.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, schema: &str) -> Result<Self, ConnectError> {
        Self::connect_with(Self::pool_options(), url, schema).await
    }

    /// Like [`PgStore::connect`], with pool settings of the caller's: start
    /// from [`PgStore::pool_options`] and change what needs changing, such
    /// as the pool's size.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use fielding_postgres::PgStore;
    /// let options = PgStore::pool_options().max_connections(32);
    /// let store = PgStore::connect_with(options, "postgres://postgres@127.0.0.1:5432/postgres", "fielding").await?;
    /// # let _ = store; Ok(()) }
    /// ```
    pub async fn connect_with(
        options: sqlx::postgres::PgPoolOptions,
        url: &str,
        schema: &str,
    ) -> Result<Self, ConnectError> {
        // The name is checked before any connection is made.
        let schema = SchemaName::new(schema)?;
        let pool = options.connect(url).await.map_err(ConnectError::Connect)?;
        Ok(Self::from_schema_name(pool, schema))
    }
}
