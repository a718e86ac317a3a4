//! Faults on a real server: the store's connection is terminated with
//! `pg_terminate_backend` in the middle of its write transaction.
//!
//! To stop the store's write half-way, a second connection holds an
//! uncommitted change record at exactly the key the store is about to
//! insert. The store's statement then updates the run (or inserts it) and
//! waits on that key, inside its transaction; the test finds the store's
//! backend by its `application_name`, terminates it, and checks that the
//! store reports a retryable error, that nothing of the write survived,
//! and that the same store (same pool) then works.

mod common;

use std::time::Duration;

use chrono::TimeDelta;
use fielding_core::{Action, ChangeRecord, FieldingRun, FieldingStore, StoreError, Version};
use fielding_postgres::sqlx::postgres::PgConnection;
use fielding_postgres::sqlx::{self, Connection};
use fielding_testkit::fixtures;

/// A uniquely named application, so the test terminates only its own
/// store's connections.
fn app_name() -> String {
    format!("fielding_fault_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn next(run: &FieldingRun) -> (FieldingRun, ChangeRecord) {
    let mut after = run.clone();
    after.version = run.version.next().expect("version fits");
    after.end_fielding_at = run.end_fielding_at.checked_add(TimeDelta::days(1)).expect("end fits");
    let change = ChangeRecord {
        action: Action::UpdateDates,
        status_from: Some(run.status),
        start_from: Some(run.start_fielding_at),
        end_from: Some(run.end_fielding_at),
        ..ChangeRecord::created(&after, Action::UpdateDates)
    };
    (after, change)
}

/// Opens a transaction on its own connection holding an uncommitted change
/// record of `run_id` at `version`: whoever inserts that key next waits.
async fn block_change_record(url: &str, schema: &str, run: &FieldingRun, version: Version) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.expect("blocker connection");
    sqlx::query("BEGIN").execute(&mut conn).await.expect("begin");
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".change_records (run_id, version, action, changed_at, changed_by, status_to, start_to, end_to, \
         account_id, project_id, target_group_id) \
         VALUES ($1, $2, 'update_dates', now(), gen_random_uuid(), 'live', now(), now(), $3, $4, $5)"
    ))
    .bind(run.id.as_str())
    .bind(version.get() as i64)
    .bind(run.account_id.get() as i32)
    .bind(run.project_id.as_str())
    .bind(run.target_group_id.as_str())
    .execute(&mut conn)
    .await
    .expect("blocking insert");
    conn
}

/// Waits until a backend of `app` is waiting on a lock, terminates it, and
/// returns how many were terminated. With `updated_run` (schema, run id),
/// first checks that the waiting transaction holds that run's row, i.e. has
/// already written the run and is stopped before its change record.
async fn terminate_when_waiting(url: &str, app: &str, updated_run: Option<(&str, &str)>) -> i64 {
    let mut admin = PgConnection::connect(url).await.expect("admin connection");
    for _ in 0..500 {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' \
             AND state = 'active'",
        )
        .bind(app)
        .fetch_all(&mut admin)
        .await
        .expect("pg_stat_activity");
        if let [pid] = pids[..] {
            if let Some((schema, id)) = updated_run {
                let err = sqlx::query(&format!(
                    "SELECT 1 FROM \"{schema}\".fielding_runs WHERE id = $1 FOR UPDATE NOWAIT"
                ))
                .bind(id)
                .execute(&mut admin)
                .await
                .expect_err("the store's transaction holds the run row it updated");
                let code = match &err {
                    sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                    _ => None,
                };
                assert_eq!(code.as_deref(), Some("55P03"), "lock_not_available: {err}");
            }
            let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .expect("pg_terminate_backend");
            assert!(done, "pg_terminate_backend({pid}) failed");
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store's statement never started waiting on the blocked key");
}

fn assert_retryable(outcome: Result<(), StoreError>, what: &str) {
    match outcome {
        Err(e @ StoreError::Backend { retryable: true, .. }) => eprintln!("{what}: {e}"),
        other => panic!("{what}: expected a retryable backend error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_mid_compare_and_swap_is_retryable_writes_nothing_and_the_pool_recovers() {
    let app = app_name();
    let Some(test) = common::fresh_store_with(&app, 2).await else {
        return;
    };
    let store = test.store.clone();
    let run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    let (after, change) = next(&run);

    let mut blocker = block_change_record(&test.guard.url, common::schema_of(&test), &run, after.version).await;
    let writer = {
        let store = store.clone();
        let (after, change) = (after.clone(), change.clone());
        tokio::spawn(async move { store.compare_and_swap(run.version, &after, &change).await })
    };
    // The store's statement has updated the run and now waits to insert its
    // record: terminate it there.
    terminate_when_waiting(&test.guard.url, &app, Some((common::schema_of(&test), run.id.as_str()))).await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the store answers")
        .expect("task");
    assert_retryable(outcome, "compare_and_swap on a terminated connection");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.expect("rollback");

    // Nothing partial: the run is as it was, with only its first record.
    assert_eq!(store.get(&run.key()).await.expect("get"), Some(run.clone()));
    let records = store.changes(&run.key()).await.expect("changes");
    assert_eq!(records.iter().map(|c| c.version.get()).collect::<Vec<_>>(), [1]);

    // The same store, the same pool: the retry succeeds.
    store
        .compare_and_swap(run.version, &after, &change)
        .await
        .expect("retry after the fault");
    assert_eq!(store.get(&run.key()).await.expect("get"), Some(after.clone()));
    assert_eq!(
        store.changes(&run.key()).await.expect("changes"),
        vec![ChangeRecord::created(&run, Action::Schedule), change]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_mid_insert_is_retryable_writes_nothing_and_the_pool_recovers() {
    let app = app_name();
    let Some(test) = common::fresh_store_with(&app, 2).await else {
        return;
    };
    let store = test.store.clone();
    let run = fixtures::run().build();
    let first = ChangeRecord::created(&run, Action::Schedule);

    let mut blocker = block_change_record(&test.guard.url, common::schema_of(&test), &run, run.version).await;
    let writer = {
        let store = store.clone();
        let (run, first) = (run.clone(), first.clone());
        tokio::spawn(async move { store.insert(&run, &first).await })
    };
    terminate_when_waiting(&test.guard.url, &app, None).await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the store answers")
        .expect("task");
    assert_retryable(outcome, "insert on a terminated connection");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.expect("rollback");

    assert_eq!(
        store.get(&run.key()).await.expect("get"),
        None,
        "no run without its record"
    );
    assert_eq!(store.find_by_target_group(&run.scope()).await.expect("find"), None);
    store.insert(&run, &first).await.expect("retry after the fault");
    assert_eq!(store.get(&run.key()).await.expect("get"), Some(run.clone()));
    assert_eq!(store.changes(&run.key()).await.expect("changes"), vec![first]);
}

/// Warms `count` connections of the store's pool, then terminates every
/// backend of `app` while they sit idle; returns how many were terminated.
async fn kill_idle_connections(test: &common::TestStore, app: &str, count: usize) -> i64 {
    let mut held = Vec::new();
    for _ in 0..count {
        held.push(test.store.pool().acquire().await.expect("acquire"));
    }
    drop(held);
    // Released connections go back to the pool in the background: wait
    // until they are all idle there, so none is in flight when it is killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while test.store.pool().num_idle() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never got its connections back"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut admin = PgConnection::connect(&test.guard.url).await.expect("admin");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(app)
    .fetch_one(&mut admin)
    .await
    .expect("terminate");
    assert!(killed >= 1, "no idle connection to terminate");
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_while_idle_cost_at_most_one_retryable_error_each_then_the_pool_recovers() {
    let app = app_name();
    let Some(test) = common::fresh_store_with(&app, 3).await else {
        return;
    };
    let store = test.store.clone();
    let mut run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    let killed = kill_idle_connections(&test, &app, 3).await;

    // Right away (idle for less than PgStore::IDLE_CHECK_AFTER, so not
    // checked on checkout): a dead connection is found out by the statement
    // that uses it, which fails retryably and drops the connection.
    let mut errors = 0;
    for _ in 0..8 {
        let (after, change) = next(&run);
        match store.compare_and_swap(run.version, &after, &change).await {
            Ok(()) => {
                run = after;
                break;
            }
            Err(e) if e.is_retryable() => errors += 1,
            Err(e) => panic!("expected success or a retryable error, got {e}"),
        }
    }
    assert!(errors <= killed, "{errors} errors for {killed} dead connections");
    assert_eq!(
        store.get(&run.key()).await.expect("get"),
        Some(run.clone()),
        "the write went through"
    );
    for _ in 0..5 {
        let (after, change) = next(&run);
        store
            .compare_and_swap(run.version, &after, &change)
            .await
            .expect("the pool has recovered");
        run = after;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_after_idling_are_replaced_before_use() {
    let app = app_name();
    let Some(test) = common::fresh_store_with(&app, 3).await else {
        return;
    };
    let store = test.store.clone();
    let run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    kill_idle_connections(&test, &app, 3).await;
    // Idle longer than IDLE_CHECK_AFTER: checked on checkout and replaced,
    // so the caller sees no error at all.
    tokio::time::sleep(fielding_postgres::PgStore::IDLE_CHECK_AFTER + Duration::from_millis(200)).await;
    let (after, change) = next(&run);
    store
        .compare_and_swap(run.version, &after, &change)
        .await
        .expect("write after the kill");
    assert_eq!(store.get(&run.key()).await.expect("get"), Some(after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_under_serializable_are_retryable_and_lose_nothing() {
    use std::str::FromStr;
    use std::sync::Arc;

    use fielding_postgres::sqlx::postgres::PgConnectOptions;
    use fielding_postgres::PgStore;

    let Some(test) = common::fresh_store().await else {
        return;
    };
    // Same schema, but every transaction SERIALIZABLE: racing updates of one
    // row now fail with SQLSTATE 40001 instead of re-checking the row.
    let options = PgConnectOptions::from_str(&test.guard.url)
        .expect("url")
        .options([("default_transaction_isolation", "serializable")]);
    let pool = PgStore::pool_options()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("connect");
    let store = Arc::new(PgStore::new(pool, common::schema_of(&test)).expect("schema"));
    let run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let key = run.key();
        tasks.push(tokio::spawn(async move {
            let (mut written, mut serialization) = (0u64, 0u64);
            for _ in 0..15 {
                let current = store.get(&key).await.expect("get").expect("run");
                let (after, change) = next(&current);
                match store.compare_and_swap(current.version, &after, &change).await {
                    Ok(()) => written += 1,
                    Err(StoreError::VersionConflict { .. }) => {}
                    Err(e @ StoreError::Backend { retryable: true, .. }) => {
                        assert!(e.to_string().contains("SQLSTATE 40001"), "{e}");
                        serialization += 1;
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (written, serialization)
        }));
    }
    let (mut written, mut serialization) = (0, 0);
    for task in tasks {
        let (w, s) = task.await.expect("task");
        written += w;
        serialization += s;
    }
    eprintln!("{written} writes, {serialization} serialization failures (retryable)");
    let now = store.get(&run.key()).await.expect("get").expect("run");
    assert_eq!(
        now.version.get(),
        1 + written,
        "every success, and only they, moved the version"
    );
    let records = store.changes(&run.key()).await.expect("changes");
    assert_eq!(
        records.len() as u64,
        1 + written,
        "one record per success, none for failures"
    );
}
