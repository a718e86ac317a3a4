//! Embedded, versioned migrations: [`SCHEMA_VERSION`], [`MigrationReport`],
//! and how a schema is migrated (by an explicit call).

use sqlx::{Executor, PgPool};

use crate::error::{is_transient, MigrateError};
use crate::schema_name::SchemaName;

/// One embedded migration step. `{schema}` in the SQL stands for the
/// quoted schema name.
struct Step {
    version: u32,
    sql: &'static str,
}

/// Every migration this release knows, in order. Append only: a released
/// step is never edited, a change is a new step.
const STEPS: &[Step] = &[
    Step {
        version: 1,
        sql: r#"
CREATE TABLE {schema}.fielding_runs (
    id                text COLLATE "C" NOT NULL,
    account_id        integer NOT NULL CHECK (account_id >= 1),
    project_id        text COLLATE "C" NOT NULL,
    target_group_id   text COLLATE "C" NOT NULL,
    start_fielding_at timestamptz NOT NULL,
    end_fielding_at   timestamptz NOT NULL,
    status            text NOT NULL CHECK (status IN ('scheduled', 'live', 'paused', 'completed')),
    version           bigint NOT NULL CHECK (version >= 1),
    last_changed_at   timestamptz NOT NULL,
    last_changed_by   uuid NOT NULL,
    CONSTRAINT fielding_runs_pkey PRIMARY KEY (id),
    CONSTRAINT fielding_runs_scope_key UNIQUE (account_id, project_id, target_group_id)
) WITH (fillfactor = 80);

CREATE TABLE {schema}.change_records (
    run_id      text COLLATE "C" NOT NULL,
    version     bigint NOT NULL CHECK (version >= 1),
    action      text NOT NULL,
    changed_at  timestamptz NOT NULL,
    changed_by  uuid NOT NULL,
    status_from text,
    status_to   text NOT NULL,
    start_from  timestamptz,
    start_to    timestamptz NOT NULL,
    end_from    timestamptz,
    end_to      timestamptz NOT NULL,
    CONSTRAINT change_records_pkey PRIMARY KEY (run_id, version)
);
"#,
    },
    // Creation jobs. A launch has no start, a schedule has one; a failure
    // code and its description are there exactly when the job failed.
    Step {
        version: 2,
        sql: r#"
CREATE TABLE {schema}.fielding_run_jobs (
    id                  text COLLATE "C" NOT NULL,
    account_id          integer NOT NULL CHECK (account_id >= 1),
    project_id          text COLLATE "C" NOT NULL,
    target_group_id     text COLLATE "C" NOT NULL,
    kind                text COLLATE "C" NOT NULL,
    idempotency_key     text COLLATE "C" NOT NULL,
    start_fielding_at   timestamptz,
    end_fielding_at     timestamptz NOT NULL,
    fielding_run_id     text COLLATE "C" NOT NULL,
    created_at          timestamptz NOT NULL,
    created_by          uuid NOT NULL,
    trace_id            text COLLATE "C",
    status              text COLLATE "C" NOT NULL CHECK (status IN ('Processing', 'Completed', 'Failed')),
    failure_code        text COLLATE "C",
    failure_description text,
    CONSTRAINT fielding_run_jobs_pkey PRIMARY KEY (id),
    CONSTRAINT fielding_run_jobs_idempotency_key UNIQUE (account_id, idempotency_key),
    CONSTRAINT fielding_run_jobs_request CHECK (
        (kind <> 'launch-from-draft' OR start_fielding_at IS NULL)
        AND (kind <> 'schedule-from-draft' OR start_fielding_at IS NOT NULL)
    ),
    CONSTRAINT fielding_run_jobs_failure CHECK (
        (status = 'Failed') = (failure_code IS NOT NULL)
        AND (failure_code IS NULL) = (failure_description IS NULL)
    )
);
"#,
    },
];

/// The schema version this library writes and reads: the highest
/// migration it knows.
pub const SCHEMA_VERSION: u32 = 2;

/// What [`PgStore::migrate`](crate::PgStore::migrate) did.
///
/// ```
/// use fielding_postgres::{MigrationReport, SCHEMA_VERSION};
/// let report = MigrationReport { from: 0, to: SCHEMA_VERSION };
/// assert_eq!(report.applied(), SCHEMA_VERSION);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version before (0: a new, empty schema).
    pub from: u32,
    /// The schema version now: always [`SCHEMA_VERSION`].
    pub to: u32,
}

impl MigrationReport {
    /// How many migrations were applied (0 when already current).
    pub fn applied(&self) -> u32 {
        self.to - self.from
    }

    /// The versions of the migrations applied, oldest first (empty when
    /// already current).
    pub fn applied_versions(&self) -> std::ops::RangeInclusive<u32> {
        self.from + 1..=self.to
    }
}

/// Creates the schema if needed and applies the missing steps, all in one
/// transaction holding the schema's advisory lock, so instances starting
/// at once apply each step exactly once (the others wait, then find
/// nothing to do).
pub(crate) async fn migrate(pool: &PgPool, schema: &SchemaName) -> Result<MigrationReport, MigrateError> {
    let db = |source: sqlx::Error| MigrateError::Database {
        schema: schema.to_string(),
        retryable: is_transient(&source),
        source,
    };
    let quoted = schema.quoted();
    let mut tx = pool.begin().await.map_err(db)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(schema.migration_lock_key())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let bootstrap = format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted}; \
         CREATE TABLE IF NOT EXISTS {quoted}.fielding_schema_migrations (\
             version bigint PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now())"
    );
    (&mut *tx).execute(bootstrap.as_str()).await.map_err(db)?;
    let found: Option<i64> =
        sqlx::query_scalar(&format!("SELECT max(version) FROM {quoted}.fielding_schema_migrations"))
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
    let found = u32::try_from(found.unwrap_or(0)).unwrap_or(u32::MAX);
    if found > SCHEMA_VERSION {
        return Err(MigrateError::SchemaTooNew {
            schema: schema.to_string(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for step in STEPS.iter().filter(|s| s.version > found) {
        let sql = step.sql.replace("{schema}", &quoted);
        (&mut *tx).execute(sql.as_str()).await.map_err(db)?;
        sqlx::query(&format!(
            "INSERT INTO {quoted}.fielding_schema_migrations (version) VALUES ($1)"
        ))
        .bind(i64::from(step.version))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(MigrationReport {
        from: found,
        to: SCHEMA_VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_contiguous_and_end_at_latest() {
        for (i, step) in STEPS.iter().enumerate() {
            assert_eq!(step.version as usize, i + 1);
            assert!(step.sql.contains("{schema}."));
        }
        assert_eq!(STEPS.last().map(|s| s.version), Some(SCHEMA_VERSION));
    }
}
