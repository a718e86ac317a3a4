//! Embedded, versioned migrations: [`SCHEMA_VERSION`], the
//! [`MigrationReport`](fielding_core::MigrationReport) of `migrate`,
//! and how a schema is migrated (by an explicit call).

use fielding_core::MigrationReport;
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
        sql: include_str!("../migrations/0001_runs_and_change_records.sql"),
    },
    // Creation jobs. A launch has no start, a schedule has one; a failure
    // code and its description are there exactly when the job failed.
    Step {
        version: 2,
        sql: include_str!("../migrations/0002_creation_jobs.sql"),
    },
    // The finish time of jobs, which job expiry goes by, with its index.
    Step {
        version: 3,
        sql: include_str!("../migrations/0003_job_finish_time.sql"),
    },
    // Bulk jobs and their items, with the claim (token and lease) runners
    // take them by.
    Step {
        version: 4,
        sql: include_str!("../migrations/0004_bulk_jobs.sql"),
    },
    // The change feed: change records gain their run's scope and a feed
    // position (writing transaction id, sequence number), backfilled;
    // pruning horizons and consumer checkpoints.
    Step {
        version: 5,
        sql: include_str!("../migrations/0005_change_feed.sql"),
    },
];

/// The schema version this library writes and reads: the highest
/// migration it knows.
pub const SCHEMA_VERSION: u32 = 5;

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
    fn steps_are_numbered_one_by_one_up_to_the_schema_version_and_name_the_schema() {
        assert!(STEPS.iter().map(|s| s.version).eq(1..=SCHEMA_VERSION));
        assert!(STEPS.iter().all(|s| s.sql.contains("{schema}.")));
    }
}
