//! Migrations and schemas on a real server.

mod common;

use fielding_core::{Action, ChangeRecord, FieldingStore};
use fielding_postgres::sqlx::postgres::PgConnection;
use fielding_postgres::sqlx::{self, Connection};
use fielding_postgres::testing::TestSchema;
use fielding_postgres::{MigrateError, PgStore, SCHEMA_VERSION};
use fielding_testkit::fixtures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_apply_each_migration_exactly_once() {
    // A fresh schema nothing has migrated yet.
    let Some(schema) = TestSchema::new().await else { return };
    let (url, name) = (schema.url(), schema.name());
    let mut instances = Vec::new();
    for i in 0..4 {
        instances.push(common::connect_store(url, name, &format!("fielding_migrate_{i}"), 2).await);
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
        let report = m.await.expect("task").expect("migrate");
        assert_eq!(report.to, SCHEMA_VERSION);
        assert_eq!(report.applied(), report.applied_versions().count() as u32);
        applied.extend(report.applied_versions());
    }
    assert_eq!(
        applied,
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "each step applied once in all"
    );

    let mut conn = PgConnection::connect(url).await.expect("connect");
    let recorded: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{name}\".fielding_schema_migrations ORDER BY version"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("migrations table");
    assert_eq!(recorded, (1..=i64::from(SCHEMA_VERSION)).collect::<Vec<_>>());
    assert_eq!(SCHEMA_VERSION, 5, "migration 5 adds the change feed");
    assert_eq!(
        tables(&mut conn, name).await,
        [
            "change_records",
            "feed_checkpoints",
            "feed_horizons",
            "fielding_bulk_job_items",
            "fielding_bulk_jobs",
            "fielding_run_jobs",
            "fielding_runs",
            "fielding_schema_migrations"
        ]
    );

    // Again: nothing to do.
    let again = instances[0].migrate().await.expect("migrate again");
    assert_eq!(
        (again.from, again.to, again.applied()),
        (SCHEMA_VERSION, SCHEMA_VERSION, 0)
    );
    assert!(again.applied_versions().next().is_none());

    // Every instance works on the result.
    let run = fixtures::run().build();
    instances[1]
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    assert_eq!(instances[2].get(&run.key()).await.expect("get"), Some(run));
}

async fn tables(conn: &mut PgConnection, schema: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1")
        .bind(schema)
        .fetch_all(conn)
        .await
        .expect("list tables")
}

/// A schema as the release before jobs left it: migration 1 applied and
/// recorded, no `fielding_run_jobs`, runs in it. Migrations 2 to 4 only
/// add tables (and a column and index of one), and migration 5 only adds
/// columns, indexes and tables, so removing those (see
/// `common::undo_migration_5`) and their records gives exactly that layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_at_version_1_migrates_to_the_current_version_with_its_runs_intact() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let run = fixtures::run().with_version(7).build();
    let record = ChangeRecord::created(&run, Action::Schedule);
    test.insert(&run, &record).await.expect("insert");
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query(&format!(
        "DROP TABLE \"{schema}\".fielding_run_jobs, \"{schema}\".fielding_bulk_job_items, \
         \"{schema}\".fielding_bulk_jobs"
    ))
    .execute(&mut *tx)
    .await
    .expect("drop the job tables");
    common::undo_migration_5(&mut tx, &schema).await;
    sqlx::query(&format!(
        "DELETE FROM \"{schema}\".fielding_schema_migrations WHERE version >= 2"
    ))
    .execute(&mut *tx)
    .await
    .expect("forget migrations 2 to 5");
    tx.commit().await.expect("commit");
    assert_eq!(
        tables(&mut conn, &schema).await,
        ["change_records", "fielding_runs", "fielding_schema_migrations"]
    );

    // A fresh instance (no state carried over from before) migrates it.
    let store = common::connect_store(&test.guard.url, &schema, "fielding_migrate_v1", 2).await;
    let report = store.migrate().await.expect("migrate");
    assert_eq!((report.from, report.to, report.applied()), (1, 5, 4));
    assert_eq!(report.applied_versions().collect::<Vec<_>>(), [2, 3, 4, 5]);
    assert_eq!(store.migrate().await.expect("again").applied(), 0);
    assert_eq!(store.get(&run.key()).await.expect("get"), Some(run.clone()));
    assert_eq!(store.changes(&run.key()).await.expect("changes"), vec![record]);
    let recorded: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{schema}\".fielding_schema_migrations ORDER BY version"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("migrations table");
    assert_eq!(recorded, [1, 2, 3, 4, 5]);

    let job = fielding_core::FieldingRunJob {
        id: fielding_core::JobId::generate(),
        scope: run.scope(),
        idempotency_key: fielding_core::IdempotencyKey::parse("after-migration").expect("key"),
        request: fielding_core::JobRequest::LaunchFromDraft {
            end_fielding_at: run.end_fielding_at,
        },
        fielding_run_id: fielding_core::FieldingRunId::generate(),
        created_at: run.last_changed_at,
        created_by: run.last_changed_by,
        trace_id: None,
        state: fielding_core::JobState::Processing,
    };
    assert_eq!(
        store.create_job(&job).await.expect("create_job"),
        fielding_core::JobCreated::Created
    );
    assert_eq!(store.get_job(&job.key()).await.expect("get_job"), Some(job));
}

/// A schema as the release before bulk jobs left it: migrations 1 to 3
/// applied and recorded, runs and creation jobs in it. Migration 4 only
/// adds the two bulk tables (and migration 5 what `undo_migration_5`
/// removes), so dropping them and their records gives exactly that layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_at_version_3_gets_bulk_jobs_with_its_runs_and_jobs_intact() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let run = fixtures::run().build();
    let record = ChangeRecord::created(&run, Action::Schedule);
    test.insert(&run, &record).await.expect("insert");
    let job = fixtures::job(run.scope(), "before-bulk-jobs", fixtures::launch());
    test.create_job(&job).await.expect("create_job");
    let job = test
        .finish_job(&job.key(), &fielding_core::JobOutcome::Completed, job.created_at)
        .await
        .expect("finish_job")
        .expect("the job");
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query(&format!(
        "DROP TABLE \"{schema}\".fielding_bulk_job_items, \"{schema}\".fielding_bulk_jobs"
    ))
    .execute(&mut *tx)
    .await
    .expect("drop the bulk tables");
    common::undo_migration_5(&mut tx, &schema).await;
    sqlx::query(&format!(
        "DELETE FROM \"{schema}\".fielding_schema_migrations WHERE version >= 4"
    ))
    .execute(&mut *tx)
    .await
    .expect("forget migrations 4 and 5");
    tx.commit().await.expect("commit");
    assert_eq!(
        tables(&mut conn, &schema).await,
        [
            "change_records",
            "fielding_run_jobs",
            "fielding_runs",
            "fielding_schema_migrations"
        ]
    );

    let store = common::connect_store(&test.guard.url, &schema, "fielding_migrate_v3", 2).await;
    let report = store.migrate().await.expect("migrate");
    assert_eq!((report.from, report.to, report.applied()), (3, 5, 2));
    assert_eq!(report.applied_versions().collect::<Vec<_>>(), [4, 5]);
    assert_eq!(store.migrate().await.expect("again").applied(), 0);
    assert_eq!(store.get(&run.key()).await.expect("get"), Some(run.clone()));
    assert_eq!(store.changes(&run.key()).await.expect("changes"), vec![record]);
    assert_eq!(store.get_job(&job.key()).await.expect("get_job"), Some(job));

    let bulk = fixtures::bulk_job(
        run.scope(),
        "after-migration",
        fielding_core::BulkAction::Pause,
        &[run.target_group_id],
    );
    assert_eq!(
        store.create_bulk_job(&bulk).await.expect("create_bulk_job"),
        fielding_core::BulkJobCreated::Created
    );
    assert_eq!(store.get_bulk_job(&bulk.key()).await.expect("get_bulk_job"), Some(bulk));
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
    .bind(i64::from(SCHEMA_VERSION) + 1)
    .execute(&mut conn)
    .await
    .expect("pretend a newer release migrated");
    match test.store.migrate().await {
        Err(MigrateError::SchemaTooNew { found, known, .. }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
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
    let run = fixtures::run().with_start(start).build();
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

/// A schema at version 4 with change records in two accounts, written
/// interleaved across runs, gets migration 5: every record gets its run's
/// scope, the migration's transaction id and a sequence number in (run,
/// version) order, so the feed lists each run's records in version order;
/// records written afterwards sort after all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_at_version_4_gets_the_feed_with_its_records_backfilled() {
    let Some(test) = common::fresh_store().await else {
        return;
    };
    let schema = common::schema_of(&test).to_string();
    let a = fixtures::scope();
    let b = fixtures::other_account(a);
    let mut runs = Vec::new();
    for scope in [a, a, a, b] {
        let run = fixtures::run()
            .with_scope(fixtures::other_target_group(scope))
            .with_status(fielding_core::Status::Live)
            .build();
        test.insert(&run, &fixtures::creation(&run)).await.expect("insert");
        runs.push(run);
    }
    // Round robin, so write order and (run, version) order differ.
    for round in 0..3u64 {
        for run in runs.iter_mut() {
            let (next, change) = fixtures::change(run, round, fielding_core::UserId::random()).expect("change");
            test.compare_and_swap(run.version, &next, &change).await.expect("write");
            *run = next;
        }
    }
    let mut conn = PgConnection::connect(&test.guard.url).await.expect("connect");
    let mut tx = conn.begin().await.expect("begin");
    common::undo_migration_5(&mut tx, &schema).await;
    sqlx::query(&format!(
        "DELETE FROM \"{schema}\".fielding_schema_migrations WHERE version >= 5"
    ))
    .execute(&mut *tx)
    .await
    .expect("forget migration 5");
    tx.commit().await.expect("commit");

    let store = common::connect_store(&test.guard.url, &schema, "fielding_migrate_v4", 2).await;
    let report = store.migrate().await.expect("migrate");
    assert_eq!((report.from, report.to), (4, 5));
    assert_eq!(report.applied_versions().collect::<Vec<_>>(), [5]);

    type Backfilled = (
        String,
        i64,
        i32,
        String,
        String,
        String,
        i64,
        chrono::DateTime<chrono::Utc>,
    );
    let rows: Vec<Backfilled> = sqlx::query_as(&format!(
        "SELECT run_id, version, account_id, project_id, target_group_id, txid::text, seq, changed_at \
         FROM \"{schema}\".change_records ORDER BY seq"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("records");
    assert_eq!(rows.len(), 16);
    // By age: each run's latest changed_at up to the version (never
    // decreasing along a run), then run and version.
    let mut by_version = rows.clone();
    by_version.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut aged = std::collections::HashMap::new();
    let mut keyed: Vec<(chrono::DateTime<chrono::Utc>, String, i64)> = by_version
        .iter()
        .map(|r| {
            let latest = aged.entry(r.0.clone()).or_insert(r.7);
            *latest = (*latest).max(r.7);
            (*latest, r.0.clone(), r.1)
        })
        .collect();
    keyed.sort();
    assert_eq!(
        rows.iter().map(|r| (r.0.clone(), r.1)).collect::<Vec<_>>(),
        keyed
            .into_iter()
            .map(|(_, run, version)| (run, version))
            .collect::<Vec<_>>(),
        "sequence numbers by age, each run's versions in order"
    );
    assert!(
        rows.iter().all(|r| r.5 == rows[0].5),
        "one transaction id: the migration's"
    );
    for row in &rows {
        let run = runs.iter().find(|run| run.id.as_str() == row.0).expect("a run");
        assert_eq!(
            (i64::from(row.2), row.3.as_str(), row.4.as_str()),
            (
                i64::from(run.account_id.get()),
                run.project_id.as_str(),
                run.target_group_id.as_str()
            ),
            "the run's scope"
        );
    }
    let nullable: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 \
         AND table_name = 'change_records' AND is_nullable = 'YES' ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut conn)
    .await
    .expect("columns");
    assert_eq!(
        nullable,
        ["end_from", "start_from", "status_from"],
        "the new columns are NOT NULL"
    );

    // The feed: account a's records, each run's in version order, then a
    // new write after all of them with a higher sequence number.
    let (records, next) = feed_until(&store, a.account_id, None, 12).await;
    assert!(records.windows(2).all(|w| w[0].position < w[1].position));
    let mut last_version = std::collections::HashMap::new();
    for record in &records {
        let before = last_version.insert(record.run_id(), record.change.version);
        assert!(
            before.is_none_or(|before| before < record.change.version),
            "backfilled records keep each run's version order"
        );
    }
    let max_seq = rows.iter().map(|r| r.6).max().expect("rows");
    let (next_run, change) = fixtures::change(&runs[0], 9, fielding_core::UserId::random()).expect("change");
    store
        .compare_and_swap(runs[0].version, &next_run, &change)
        .await
        .expect("write after the migration");
    let (after, _) = feed_until(&store, a.account_id, Some(next), 1).await;
    assert_eq!(after[0].change, change);
    assert!(after[0].position > records[11].position);
    assert!(after[0].position.minor() > u64::try_from(max_seq).expect("positive"));
}

/// Follows `account`'s feed from `after` until `want` records came (other
/// transactions in the cluster may hold them back for a while).
async fn feed_until(
    store: &PgStore,
    account: fielding_core::AccountId,
    mut after: Option<fielding_core::FeedPosition>,
    want: usize,
) -> (Vec<fielding_core::FeedRecord>, fielding_core::FeedPosition) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut records = Vec::new();
    loop {
        let page = store.feed(account, after, 100).await.expect("feed");
        records.extend(page.records);
        after = Some(page.next);
        if records.len() >= want {
            assert_eq!(records.len(), want);
            return (records, page.next);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {want} records",
            records.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
