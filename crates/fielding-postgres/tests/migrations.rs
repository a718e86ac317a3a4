//! Migrations and schemas on a real server.

mod common;

use fielding_core::{Action, ChangeRecord, FieldingStore};
use fielding_memory::fixtures;
use fielding_postgres::sqlx::postgres::PgConnection;
use fielding_postgres::sqlx::{self, Connection};
use fielding_postgres::{MigrateError, PgStore, LATEST_MIGRATION};

fn schema_name() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "fielding_test_{secs}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_apply_each_migration_exactly_once() {
    let Some(url) = common::server().await else { return };
    let name = schema_name();
    let _guard = common::SchemaGuard {
        url: url.clone(),
        name: name.clone(),
    };
    let mut instances = Vec::new();
    for i in 0..4 {
        instances.push(common::connect_store(&url, &name, &format!("fielding_migrate_{i}"), 2).await);
    }
    let migrations: Vec<_> = instances
        .iter()
        .map(|store| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    let mut applied = Vec::new();
    for m in migrations {
        let migrated = m.await.expect("task").expect("migrate");
        assert_eq!(migrated.version, LATEST_MIGRATION);
        applied.extend(migrated.applied);
    }
    assert_eq!(
        applied,
        (1..=LATEST_MIGRATION).collect::<Vec<_>>(),
        "each step applied once in all"
    );

    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let recorded: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{name}\".fielding_schema_migrations ORDER BY version"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("migrations table");
    assert_eq!(recorded, (1..=LATEST_MIGRATION).collect::<Vec<_>>());

    // Again: nothing to do.
    let again = instances[0].migrate().await.expect("migrate again");
    assert!(again.applied.is_empty());

    // Every instance works on the result.
    let run = fixtures::run().build();
    instances[1]
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    assert_eq!(instances[2].get(&run.key()).await.expect("get"), Some(run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_release_is_refused() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    sqlx::query(&format!(
        "INSERT INTO \"{}\".fielding_schema_migrations (version) VALUES ($1)",
        common::schema_of(&test)
    ))
    .bind(LATEST_MIGRATION + 1)
    .execute(&mut conn)
    .await
    .expect("pretend a newer release migrated");
    match test.store.migrate().await {
        Err(MigrateError::DatabaseIsNewer { found, known, .. }) => {
            assert_eq!((found, known), (LATEST_MIGRATION + 1, LATEST_MIGRATION));
        }
        other => panic!("expected DatabaseIsNewer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_in_separate_schemas_of_one_database_do_not_see_each_other() {
    let Some(staging) = common::fresh_store().await else {
        return;
    };
    let Some(review) = common::fresh_store().await else {
        return;
    };
    let run = fixtures::run().build();
    let record = ChangeRecord::created(&run, Action::Schedule);
    staging.insert(&run, &record).await.expect("insert in staging");
    assert_eq!(review.get(&run.key()).await.expect("get"), None);
    // The same scope and even the same id are free in the other schema.
    review.insert(&run, &record).await.expect("insert in review");
    assert_eq!(review.changes(&run.key()).await.expect("changes"), vec![record]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_bad_schema_name_before_any_io() {
    let err = PgStore::connect("postgres://nobody@127.0.0.1:1/none", "Robert'); DROP TABLE students;--")
        .await
        .expect_err("bad schema name");
    assert!(err.to_string().contains("invalid schema name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_timestamptz_and_exact_to_the_millisecond() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let start = "2031-02-03T04:05:06.789Z".parse().expect("timestamp");
    let run = fixtures::run().start(start).build();
    test.insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let (kind, text): (String, String) = sqlx::query_as(&format!(
        "SELECT pg_typeof(start_fielding_at)::text, to_char(start_fielding_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') \
         FROM \"{}\".fielding_runs WHERE id = $1",
        common::schema_of(&test)
    ))
    .bind(run.id.as_str())
    .fetch_one(&mut conn)
    .await
    .expect("read back");
    assert_eq!(kind, "timestamp with time zone");
    assert_eq!(text, "2031-02-03T04:05:06.789000");
    assert_eq!(
        test.get(&run.key()).await.expect("get").map(|r| r.start_fielding_at),
        Some(start)
    );
}
