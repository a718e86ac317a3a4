//! The store: one statement per run operation, each one round trip (the
//! job operations are in `jobs`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fielding_core::{
    AccountId, Action, ChangeRecord, Decide, FieldingRun, FieldingRunId, FieldingRunJob, FieldingStore, JobCreated,
    JobId, JobOutcome, ProjectId, RunKey, Scope, Status, StoreError, TargetGroupId, Timestamp, Update, UpdateOutcome,
    UserId, Version,
};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::Row;

use crate::error::{backend, constraint, corrupt, sqlstate, ConnectError, MigrateError, UNIQUE_VIOLATION};
use crate::jobs::JobStatements;
use crate::migrate::{self, Migrated};
use crate::parking::Parking;
use crate::schema::{InvalidSchemaName, SchemaName};

/// The columns of `fielding_runs`, in the order [`decode_run`] reads them.
const RUN_COLUMNS: &str = "id, account_id, project_id, target_group_id, start_fielding_at, end_fielding_at, \
                           status, version, last_changed_at, last_changed_by";

/// The columns of `change_records`, in the order [`decode_change`] reads them.
const CHANGE_COLUMNS: &str = "run_id, version, action, changed_at, changed_by, status_from, status_to, \
                              start_from, start_to, end_from, end_to";

/// The unique key on the scope (one run per target group).
const SCOPE_KEY: &str = "fielding_runs_scope_key";

/// How often `compare_and_swap` re-reads when its update found no row but
/// the row then turned out to be at the expected version (a run inserted
/// after the update's snapshot was taken, see [`PgStore::compare_and_swap`]).
const CAS_ATTEMPTS: usize = 3;

/// The SQL text of every statement, with the schema spliced in once.
struct Statements {
    insert: String,
    get: String,
    find: String,
    cas: String,
    version: String,
    scope_taken: String,
    changes: String,
    jobs: JobStatements,
}

impl Statements {
    fn new(schema: &SchemaName) -> Self {
        let s = schema.quoted();
        let runs = format!("{s}.fielding_runs");
        let records = format!("{s}.change_records");
        let scope = "account_id = $2 AND project_id = $3 AND target_group_id = $4";
        Self {
            // One statement, so one implicit transaction: both rows or neither.
            insert: format!(
                "WITH run AS (INSERT INTO {runs} ({RUN_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id) \
                 INSERT INTO {records} ({CHANGE_COLUMNS}) \
                 SELECT run.id, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20 FROM run"
            ),
            get: format!("SELECT {RUN_COLUMNS} FROM {runs} WHERE id = $1 AND {scope}"),
            find: format!(
                "SELECT {RUN_COLUMNS} FROM {runs} WHERE account_id = $1 AND project_id = $2 AND target_group_id = $3"
            ),
            // The conditional update and the change record in one statement:
            // the record is inserted only for the row the update touched.
            cas: format!(
                "WITH upd AS (UPDATE {runs} SET start_fielding_at = $5, end_fielding_at = $6, status = $7, \
                 version = $8, last_changed_at = $9, last_changed_by = $10 \
                 WHERE id = $1 AND {scope} AND version = $11 RETURNING id) \
                 INSERT INTO {records} ({CHANGE_COLUMNS}) \
                 SELECT upd.id, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21 FROM upd"
            ),
            version: format!("SELECT version FROM {runs} WHERE id = $1 AND {scope}"),
            scope_taken: format!(
                "SELECT EXISTS (SELECT 1 FROM {runs} WHERE account_id = $1 AND project_id = $2 AND target_group_id = $3)"
            ),
            changes: format!(
                "SELECT {CHANGE_COLUMNS} FROM {records} WHERE run_id = $1 \
                 AND EXISTS (SELECT 1 FROM {runs} WHERE id = $1 AND {scope}) ORDER BY version"
            ),
            jobs: JobStatements::new(schema),
        }
    }
}

/// A [`FieldingStore`] on PostgreSQL, for many service instances sharing
/// one database. Cheap to clone: clones share the pool.
///
/// ```no_run
/// use std::sync::Arc;
/// use fielding_core::FieldingService;
/// use fielding_postgres::PgStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// // Your application's pool...
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
/// let store = PgStore::new(pool, "fielding")?;
/// // ...or let the store make one:
/// // let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/postgres", "fielding").await?;
/// store.migrate().await?; // explicit, safe when instances start at once
/// let service = FieldingService::new(Arc::new(store));
/// # let _ = service; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: SchemaName,
    sql: Arc<Statements>,
    parking: Arc<Parking>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema.as_str())
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// The pool size [`PgStore::connect`] uses: 10 connections.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

    /// How long a connection may sit idle in a [`PgStore::pool_options`]
    /// pool before it is checked with a round trip on checkout: 1 s.
    pub const IDLE_CHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

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
        Ok(Self::with_schema(pool, schema))
    }

    /// A store on `pool` in an already validated schema.
    pub fn with_schema(pool: PgPool, schema: SchemaName) -> Self {
        let sql = Arc::new(Statements::new(&schema));
        Self {
            pool,
            schema,
            sql,
            parking: Arc::default(),
        }
    }

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
        let schema = SchemaName::new(schema)?;
        let pool = Self::pool_options().connect(url).await.map_err(ConnectError::Connect)?;
        Ok(Self::with_schema(pool, schema))
    }

    /// Creates the schema and tables if missing and applies every migration
    /// the database does not have yet, in one transaction under an advisory
    /// lock of the schema (`pg_advisory_xact_lock`), so any number of
    /// instances may call it at once. Refuses with
    /// [`MigrateError::DatabaseIsNewer`] when the database has a migration
    /// this release does not know.
    ///
    /// ```no_run
    /// # async fn demo(store: fielding_postgres::PgStore) -> Result<(), fielding_postgres::MigrateError> {
    /// let migrated = store.migrate().await?;
    /// assert_eq!(migrated.version, fielding_postgres::LATEST_MIGRATION);
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<Migrated, MigrateError> {
        migrate::migrate(&self.pool, &self.schema).await
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema the store's tables live in.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    async fn current_version(&self, conn: &mut PgConnection, key: &RunKey) -> Result<Option<Version>, StoreError> {
        let row: Option<i64> = sqlx::query_scalar(&self.sql.version)
            .bind(key.id.as_str())
            .bind(account(key.scope.account_id))
            .bind(key.scope.project_id.as_str())
            .bind(key.scope.target_group_id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend("compare_and_swap", e))?;
        row.map(version_from_db).transpose()
    }

    /// A connection for one operation: a parked one if the store has one
    /// (no pool round trip), else one from the pool.
    async fn checkout(&self, op: &'static str) -> Result<PoolConnection<Postgres>, StoreError> {
        match self.parking.take() {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await.map_err(|e| backend(op, e)),
        }
    }

    /// Done with `conn`. After a clean operation it is parked briefly (2 ms)
    /// so that the next operation can reuse it without a pool
    /// round trip; after a backend error it goes back to the pool, which
    /// checks it and drops it if broken.
    fn release<T>(&self, conn: PoolConnection<Postgres>, outcome: &Result<T, StoreError>) {
        if matches!(outcome, Err(StoreError::Backend { .. })) || self.pool.is_closed() {
            return;
        }
        self.parking.park(conn);
    }

    async fn fetch_run(
        &self,
        conn: &mut PgConnection,
        op: &'static str,
        key: &RunKey,
    ) -> Result<Option<FieldingRun>, StoreError> {
        let row = sqlx::query(&self.sql.get)
            .bind(key.id.as_str())
            .bind(account(key.scope.account_id))
            .bind(key.scope.project_id.as_str())
            .bind(key.scope.target_group_id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
        row.as_ref().map(decode_run).transpose()
    }

    /// The compare-and-swap on one connection; see
    /// [`PgStore::compare_and_swap`].
    async fn swap(
        &self,
        conn: &mut PgConnection,
        op: &'static str,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        let key = run.key();
        for _ in 0..CAS_ATTEMPTS {
            let query = bind_run(sqlx::query(&self.sql.cas), run).bind(version_to_db(expected));
            let done = bind_change(query, change)
                .execute(&mut *conn)
                .await
                .map_err(|e| backend(op, e))?;
            match done.rows_affected() {
                1 => return Ok(()),
                0 => {}
                n => {
                    return Err(corrupt(format!(
                        "{op} of {} wrote {n} change records instead of 1",
                        run.id
                    )))
                }
            }
            match self.current_version(conn, &key).await? {
                None => return Err(StoreError::NotFound),
                Some(current) if current != expected => return Err(StoreError::VersionConflict { expected, current }),
                Some(_) => continue,
            }
        }
        Err(StoreError::Backend {
            message: format!(
                "{op} of {} at version {expected}: the run kept appearing at the expected version \
                 without the update matching it",
                run.id
            ),
            retryable: true,
            source: None,
        })
    }

    async fn scope_taken(&self, conn: &mut PgConnection, scope: &Scope) -> Result<bool, StoreError> {
        sqlx::query_scalar(&self.sql.scope_taken)
            .bind(account(scope.account_id))
            .bind(scope.project_id.as_str())
            .bind(scope.target_group_id.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| backend("insert", e))
    }
}

#[async_trait]
impl FieldingStore for PgStore {
    async fn insert(&self, run: &FieldingRun, change: &ChangeRecord) -> Result<(), StoreError> {
        let mut conn = self.checkout("insert").await?;
        let outcome = self.insert_on(&mut conn, run, change).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn get(&self, key: &RunKey) -> Result<Option<FieldingRun>, StoreError> {
        let mut conn = self.checkout("get").await?;
        let outcome = self.fetch_run(&mut conn, "get", key).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn find_by_target_group(&self, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        let mut conn = self.checkout("find_by_target_group").await?;
        let outcome = self.find_on(&mut conn, scope).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One statement: a conditional `UPDATE ... WHERE <scope> AND id = ..
    /// AND version = $expected` and, for the row it touched, the change
    /// record's `INSERT` (a data-modifying CTE, so one implicit
    /// transaction and one round trip).
    ///
    /// Under READ COMMITTED an `UPDATE` that finds its row locked by a
    /// concurrent writer waits for it to commit, then re-evaluates the
    /// `WHERE` clause against the newly committed row: if that writer moved
    /// the version on, the row no longer matches and nothing is written. So
    /// of two writers holding the same version exactly one wins, without
    /// SERIALIZABLE and without retries.
    ///
    /// When no row was touched, a fresh read tells `NotFound` from
    /// `VersionConflict` and reports the version actually stored now. If
    /// that read shows the expected version (possible only for a run
    /// inserted after the update's snapshot), the whole step is repeated.
    async fn compare_and_swap(
        &self,
        expected: Version,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        let mut conn = self.checkout("compare_and_swap").await?;
        let outcome = self.swap(&mut conn, "compare_and_swap", expected, run, change).await;
        self.release(conn, &outcome);
        outcome
    }

    /// `get`, `decide`, `compare_and_swap` as the default does, with the
    /// same outcomes, but on one connection: one checkout instead of two
    /// per command. No transaction or lock is held while `decide` runs: a
    /// concurrent writer can still win in between, and the conditional
    /// update then refuses with `VersionConflict`.
    async fn update(&self, key: &RunKey, decide: Decide<'_>) -> Result<UpdateOutcome, StoreError> {
        let mut conn = self.checkout("update").await?;
        let outcome = self.update_on(&mut conn, key, decide).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn changes(&self, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut conn = self.checkout("changes").await?;
        let outcome = self.changes_on(&mut conn, key).await;
        self.release(conn, &outcome);
        outcome
    }

    /// `INSERT ... ON CONFLICT (account_id, idempotency_key) DO NOTHING
    /// RETURNING id`, then, when nothing was inserted, a read of the job
    /// holding the key. Under READ COMMITTED the insert waits for a
    /// concurrent inserter of the same key to commit (or roll back) before
    /// deciding, and the read that follows is a new statement with a new
    /// snapshot, so it sees that job. Of concurrent calls with one key,
    /// exactly one inserts, in any number of processes.
    async fn create_job(&self, job: &FieldingRunJob) -> Result<JobCreated, StoreError> {
        let mut conn = self.checkout("create_job").await?;
        let outcome = self.create_job_on(&mut conn, &self.sql.jobs, job).await;
        self.release(conn, &outcome);
        outcome
    }

    async fn get_job(&self, scope: &Scope, id: &JobId) -> Result<Option<FieldingRunJob>, StoreError> {
        let mut conn = self.checkout("get_job").await?;
        let outcome = self.get_job_on(&mut conn, &self.sql.jobs, "get_job", scope, id).await;
        self.release(conn, &outcome);
        outcome
    }

    /// One statement when the job is processing: `UPDATE ... WHERE id AND
    /// scope AND status = 'Processing' RETURNING ...`. When it matches no
    /// row (no such job, or already finished: a concurrent finisher has
    /// committed by then, the update waited for it), a fresh read returns
    /// the job as stored.
    async fn finish_job(
        &self,
        scope: &Scope,
        id: &JobId,
        outcome: &JobOutcome,
    ) -> Result<Option<FieldingRunJob>, StoreError> {
        let mut conn = self.checkout("finish_job").await?;
        let done = self.finish_job_on(&mut conn, &self.sql.jobs, scope, id, outcome).await;
        self.release(conn, &done);
        done
    }
}

/// The operations on one connection.
impl PgStore {
    async fn insert_on(
        &self,
        conn: &mut PgConnection,
        run: &FieldingRun,
        change: &ChangeRecord,
    ) -> Result<(), StoreError> {
        let outcome = bind_change(bind_run(sqlx::query(&self.sql.insert), run), change)
            .execute(&mut *conn)
            .await;
        match outcome {
            Ok(done) if done.rows_affected() == 1 => Ok(()),
            Ok(done) => Err(corrupt(format!(
                "insert of {} wrote {} change records instead of 1",
                run.id,
                done.rows_affected()
            ))),
            Err(err) if sqlstate(&err).as_deref() == Some(UNIQUE_VIOLATION) => {
                // The scope key: another run holds the target group (a
                // racing insert has committed; uniqueness checks wait for
                // it). Any other key (the run id): report the scope first
                // when it is taken too, as the contract asks.
                if constraint(&err) == Some(SCOPE_KEY) || self.scope_taken(conn, &run.scope()).await? {
                    Err(StoreError::AlreadyExists { scope: run.scope() })
                } else {
                    Err(backend("insert", err))
                }
            }
            Err(err) => Err(backend("insert", err)),
        }
    }

    async fn find_on(&self, conn: &mut PgConnection, scope: &Scope) -> Result<Option<FieldingRun>, StoreError> {
        let row = sqlx::query(&self.sql.find)
            .bind(account(scope.account_id))
            .bind(scope.project_id.as_str())
            .bind(scope.target_group_id.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend("find_by_target_group", e))?;
        row.as_ref().map(decode_run).transpose()
    }

    async fn update_on(
        &self,
        conn: &mut PgConnection,
        key: &RunKey,
        decide: Decide<'_>,
    ) -> Result<UpdateOutcome, StoreError> {
        let Some(current) = self.fetch_run(conn, "update", key).await? else {
            return Ok(UpdateOutcome::NotFound);
        };
        match decide(&current) {
            Update::Skip => Ok(UpdateOutcome::Skipped),
            Update::Write { expected, run, change } => {
                if run.key() != *key {
                    return Err(corrupt(format!(
                        "decide asked to write {} in place of {key}",
                        run.key()
                    )));
                }
                self.swap(conn, "update", expected, &run, &change).await?;
                Ok(UpdateOutcome::Written)
            }
        }
    }

    async fn changes_on(&self, conn: &mut PgConnection, key: &RunKey) -> Result<Vec<ChangeRecord>, StoreError> {
        let rows = sqlx::query(&self.sql.changes)
            .bind(key.id.as_str())
            .bind(account(key.scope.account_id))
            .bind(key.scope.project_id.as_str())
            .bind(key.scope.target_group_id.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| backend("changes", e))?;
        rows.iter().map(decode_change).collect()
    }
}

// ---- conversions ---------------------------------------------------------

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds the ten columns of a run, in table order. `insert` and the
/// compare-and-swap both use this, so their parameter order cannot drift
/// apart.
fn bind_run<'q>(query: PgQuery<'q>, run: &'q FieldingRun) -> PgQuery<'q> {
    query
        .bind(run.id.as_str())
        .bind(account(run.account_id))
        .bind(run.project_id.as_str())
        .bind(run.target_group_id.as_str())
        .bind(ts(run.start_fielding_at))
        .bind(ts(run.end_fielding_at))
        .bind(run.status.as_str())
        .bind(version_to_db(run.version))
        .bind(ts(run.last_changed_at))
        .bind(run.last_changed_by.as_uuid())
}

/// Binds the columns of a change record (all but `run_id`, which the
/// statements take from the run), in table order.
fn bind_change<'q>(query: PgQuery<'q>, change: &'q ChangeRecord) -> PgQuery<'q> {
    query
        .bind(version_to_db(change.version))
        .bind(change.action.as_str())
        .bind(ts(change.changed_at))
        .bind(change.changed_by.as_uuid())
        .bind(change.status_from.map(Status::as_str))
        .bind(change.status_to.as_str())
        .bind(change.start_from.map(ts))
        .bind(ts(change.start_to))
        .bind(change.end_from.map(ts))
        .bind(ts(change.end_to))
}

pub(crate) fn ts(t: Timestamp) -> DateTime<Utc> {
    t.as_datetime()
}

pub(crate) fn account(id: AccountId) -> i32 {
    // AccountId is 1..=i32::MAX by construction.
    i32::try_from(id.get()).unwrap_or(i32::MAX)
}

fn version_to_db(v: Version) -> i64 {
    // Version is 1..=i64::MAX by construction.
    i64::try_from(v.get()).unwrap_or(i64::MAX)
}

fn version_from_db(v: i64) -> Result<Version, StoreError> {
    u64::try_from(v)
        .ok()
        .and_then(Version::new)
        .ok_or_else(|| corrupt(format!("stored version {v} is out of range")))
}

pub(crate) fn timestamp_from_db(column: &str, value: DateTime<Utc>) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_millis(value.timestamp_millis())
        .ok_or_else(|| corrupt(format!("stored {column} {value} is outside years 0000-9999")))
}

/// The action stored as `text`.
fn action_from_db(text: &str) -> Result<Action, StoreError> {
    Action::parse(text).ok_or_else(|| corrupt(format!("stored action {text:?} is unknown")))
}

fn status_from_db(text: &str) -> Result<Status, StoreError> {
    Status::parse(text).ok_or_else(|| corrupt(format!("stored status {text:?} is unknown")))
}

pub(crate) fn column<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| backend("decode", e))
}

pub(crate) fn invalid(e: fielding_core::InvalidId) -> StoreError {
    corrupt(format!("stored row is invalid: {e}"))
}

fn decode_run(row: &PgRow) -> Result<FieldingRun, StoreError> {
    Ok(FieldingRun {
        id: FieldingRunId::parse(column(row, 0)?).map_err(invalid)?,
        account_id: AccountId::new(i64::from(column::<i32>(row, 1)?)).map_err(invalid)?,
        project_id: ProjectId::parse(column(row, 2)?).map_err(invalid)?,
        target_group_id: TargetGroupId::parse(column(row, 3)?).map_err(invalid)?,
        start_fielding_at: timestamp_from_db("start_fielding_at", column(row, 4)?)?,
        end_fielding_at: timestamp_from_db("end_fielding_at", column(row, 5)?)?,
        status: status_from_db(column(row, 6)?)?,
        version: version_from_db(column(row, 7)?)?,
        last_changed_at: timestamp_from_db("last_changed_at", column(row, 8)?)?,
        last_changed_by: UserId::new(column(row, 9)?),
    })
}

fn decode_change(row: &PgRow) -> Result<ChangeRecord, StoreError> {
    let optional_ts = |name, value: Option<DateTime<Utc>>| value.map(|v| timestamp_from_db(name, v)).transpose();
    Ok(ChangeRecord {
        run_id: FieldingRunId::parse(column(row, 0)?).map_err(invalid)?,
        version: version_from_db(column(row, 1)?)?,
        action: action_from_db(column(row, 2)?)?,
        changed_at: timestamp_from_db("changed_at", column(row, 3)?)?,
        changed_by: UserId::new(column(row, 4)?),
        status_from: column::<Option<&str>>(row, 5)?.map(status_from_db).transpose()?,
        status_to: status_from_db(column(row, 6)?)?,
        start_from: optional_ts("start_from", column(row, 7)?)?,
        start_to: timestamp_from_db("start_to", column(row, 8)?)?,
        end_from: optional_ts("end_from", column(row, 9)?)?,
        end_to: timestamp_from_db("end_to", column(row, 10)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_stored_actions_are_corrupt_data() {
        assert_eq!(action_from_db("launch_now").ok(), Some(Action::LaunchNow));
        assert!(action_from_db("explode").is_err());
    }

    #[test]
    fn statements_qualify_every_table_with_the_quoted_schema() {
        let sql = Statements::new(&SchemaName::new("env_a").unwrap());
        for text in [
            &sql.insert,
            &sql.get,
            &sql.find,
            &sql.cas,
            &sql.version,
            &sql.scope_taken,
            &sql.changes,
        ] {
            assert!(text.contains("\"env_a\".fielding_runs") || text.contains("\"env_a\".change_records"));
            assert!(
                !text.contains(" fielding_runs ") && !text.contains(" change_records "),
                "{text}"
            );
        }
    }

    #[test]
    fn versions_and_timestamps_convert_at_the_extremes() {
        assert_eq!(version_to_db(Version::MAX), i64::MAX);
        assert_eq!(version_from_db(i64::MAX).ok(), Some(Version::MAX));
        assert!(version_from_db(0).is_err());
        assert!(version_from_db(-1).is_err());
        for t in [Timestamp::MIN, Timestamp::MAX, Timestamp::UNIX_EPOCH] {
            assert_eq!(timestamp_from_db("t", ts(t)).ok(), Some(t));
        }
    }
}
