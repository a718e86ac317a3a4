//! Behaviour beyond the conformance kit: persistence, migrations, exact
//! timestamps, and faults (not a database, read-only, locked, disk full).

mod common;

use std::time::{Duration, Instant};

use fielding_core::{Action, ChangeRecord, FieldingRun, FieldingStore, StoreError, Timestamp, Version};
use fielding_sqlite::{rusqlite, Durability, OpenError, SqliteOptions, SqliteStore, SCHEMA_VERSION};
use fielding_testkit::fixtures;

fn created(run: &FieldingRun) -> ChangeRecord {
    ChangeRecord::created(run, Action::Schedule)
}

/// The run one millisecond-later end further on, at the next version.
fn bumped(run: &FieldingRun) -> (FieldingRun, ChangeRecord) {
    let mut next = run.clone();
    next.version = run.version.next().expect("a next version");
    next.end_fielding_at = run
        .end_fielding_at
        .checked_add(chrono::TimeDelta::milliseconds(1))
        .expect("end + 1 ms");
    let change = ChangeRecord {
        run_id: run.id,
        version: next.version,
        action: Action::UpdateDates,
        changed_at: next.last_changed_at,
        changed_by: next.last_changed_by,
        status_from: Some(run.status),
        status_to: next.status,
        start_from: Some(run.start_fielding_at),
        start_to: next.start_fielding_at,
        end_from: Some(run.end_fielding_at),
        end_to: next.end_fielding_at,
    };
    (next, change)
}

fn assert_backend(err: &StoreError, retryable: bool) {
    match err {
        StoreError::Backend { retryable: r, .. } => assert_eq!(*r, retryable, "{err}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn data_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let run = fixtures::run().with_version(41).build();
    store.insert(&run, &created(&run)).await.unwrap();
    let (next, change) = bumped(&run);
    store.compare_and_swap(run.version, &next, &change).await.unwrap();
    store.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(next.clone()));
    assert_eq!(store.changes(&run.key()).await.unwrap(), vec![created(&run), change]);
    store.close().await;
}

#[tokio::test]
async fn timestamps_are_integer_milliseconds_exact_at_both_ends_of_the_range() {
    let store = common::temp_store().await;
    let mut runs = Vec::new();
    for (start, end) in [
        (Timestamp::MIN, Timestamp::MAX),
        (
            Timestamp::from_unix_millis(-1).unwrap(),
            Timestamp::from_unix_millis(1).unwrap(),
        ),
        (
            "2031-02-03T04:05:06.789Z".parse().unwrap(),
            "2031-02-03T04:05:06.790Z".parse().unwrap(),
        ),
    ] {
        let run = fixtures::run()
            .with_dates(start, end)
            .with_changed_at(Timestamp::MAX)
            .build();
        store.insert(&run, &created(&run)).await.unwrap();
        assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
        runs.push(run);
    }
    // Stored as INTEGER, so SQL orders them as instants.
    let conn = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
    let types: Vec<String> = conn
        .prepare("SELECT DISTINCT typeof(start_ms) || typeof(end_ms) || typeof(last_changed_at_ms) FROM fielding_runs")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(types, ["integerintegerinteger"]);
    let ordered: Vec<i64> = conn
        .prepare("SELECT start_ms FROM fielding_runs ORDER BY start_ms")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut expected: Vec<i64> = runs.iter().map(|r| r.start_fielding_at.unix_millis()).collect();
    expected.sort();
    assert_eq!(ordered, expected);
}

#[tokio::test]
async fn migrating_is_explicit_idempotent_and_using_the_store_without_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open_with(&path, SqliteOptions::default().with_migrate(false))
        .await
        .unwrap();
    // Not migrated yet: every kind of operation (a read on a reader, a read
    // on the writer, a write) is refused, naming the file and the version.
    let run = fixtures::run().build();
    let refusals = [
        store.get(&run.key()).await.map(|_| ()),
        store.changes(&run.key()).await.map(|_| ()),
        store.insert(&run, &created(&run)).await,
    ];
    for refused in refusals {
        let err = refused.unwrap_err();
        assert!(matches!(err, StoreError::Backend { retryable: false, .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("fielding.db") && text.contains("version 0") && text.contains("migrate"),
            "{text}"
        );
    }

    let first = store.migrate().await.unwrap();
    assert_eq!((first.from, first.to), (0, SCHEMA_VERSION));
    assert_eq!(
        first.applied_versions().collect::<Vec<_>>(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    let again = store.migrate().await.unwrap();
    assert_eq!((again.applied(), again.applied_versions().count()), (0, 0));
    assert_eq!(store.get(&run.key()).await.unwrap(), None);
    store.close().await;
    let store = SqliteStore::open_with(&path, SqliteOptions::default().with_migrate(false))
        .await
        .unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), None);
    store.close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let recorded: i64 = conn
        .query_row("SELECT COUNT(*) FROM fielding_schema_migrations", [], |row| row.get(0))
        .unwrap();
    assert_eq!(recorded, i64::from(SCHEMA_VERSION));
    assert_eq!(SCHEMA_VERSION, 5, "migration 5 adds the change feed");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tables,
        [
            "change_records",
            "feed_checkpoints",
            "feed_counter",
            "feed_horizons",
            "fielding_bulk_job_items",
            "fielding_bulk_jobs",
            "fielding_run_jobs",
            "fielding_runs",
            "fielding_schema_migrations"
        ]
    );
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_schema_newer_than_the_library_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO fielding_schema_migrations VALUES (?1, 'from the future', 0)",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(conn);
    for options in [SqliteOptions::default(), SqliteOptions::default().with_migrate(false)] {
        let err = SqliteStore::open_with(&path, options).await.unwrap_err();
        match &err {
            OpenError::SchemaTooNew { found, known, path: p } => {
                assert_eq!((*found, *known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
                assert_eq!(p, &path);
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        assert!(err.to_string().contains("future.db") && err.to_string().contains("upgrade"));
    }
    // A store opened before the newer release migrated refuses to migrate.
    assert!(matches!(store.migrate().await, Err(OpenError::SchemaTooNew { .. })));
    store.close().await;
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let content = "Dear diary, today I did not write a SQLite header. ".repeat(100);
    std::fs::write(&path, &content).unwrap();
    for options in [
        SqliteOptions::default(),
        SqliteOptions::default().with_migrate(false),
        SqliteOptions::default().with_read_only(true),
    ] {
        let err = SqliteStore::open_with(&path, options).await.unwrap_err();
        assert!(matches!(err, OpenError::NotADatabase { .. }), "{err:?}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

#[tokio::test]
async fn a_read_only_database_reads_and_refuses_every_write_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let run = fixtures::run().build();
    store.insert(&run, &created(&run)).await.unwrap();
    store.close().await;

    let store = SqliteStore::open_with(&path, SqliteOptions::default().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
    let (next, change) = bumped(&run);
    let err = store.compare_and_swap(run.version, &next, &change).await.unwrap_err();
    assert_backend(&err, false);
    assert!(err.to_string().contains("readonly"), "{err}");
    let other = fixtures::run().build();
    assert_backend(&store.insert(&other, &created(&other)).await.unwrap_err(), false);
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
    assert_eq!(store.changes(&run.key()).await.unwrap(), vec![created(&run)]);
    assert_eq!(store.get(&other.key()).await.unwrap(), None);
    store.close().await;

    let missing = dir.path().join("missing.db");
    let err = SqliteStore::open_with(&missing, SqliteOptions::default().with_read_only(true))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing.db"), "{err}");
    assert!(!missing.exists());
}

#[tokio::test]
async fn a_lock_held_past_the_busy_timeout_is_a_retryable_error_and_readers_do_not_wait() {
    let options = SqliteOptions::default().with_busy_timeout(Duration::from_millis(150));
    let store = common::temp_store_with(options).await;
    let run = fixtures::run().build();
    store.insert(&run, &created(&run)).await.unwrap();

    let holder = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // Readers proceed while another connection holds the write lock. The
    // lock is held on this thread until the COMMIT below, so a read that
    // waited for the writer could only end in a busy error, never in an
    // answer: answering at all shows the read did not wait. The deadline
    // only keeps a read that retried for ever from stalling the suite.
    let read = tokio::time::timeout(Duration::from_secs(10), store.get(&run.key()))
        .await
        .expect("the read does not wait for the write lock");
    assert_eq!(read.expect("read while the write lock is held"), Some(run.clone()));

    let (next, change) = bumped(&run);
    // The write waits out the busy timeout before giving up. Only a lower
    // bound is asserted: a loaded machine can make the wait longer, never
    // shorter.
    let started = Instant::now();
    let err = store.compare_and_swap(run.version, &next, &change).await.unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_backend(&err, true);
    assert!(err.is_retryable());
    let other = fixtures::run().build();
    assert_backend(&store.insert(&other, &created(&other)).await.unwrap_err(), true);

    holder.execute_batch("COMMIT").unwrap();
    assert_eq!(store.changes(&run.key()).await.unwrap(), vec![created(&run)]);
    assert_eq!(store.get(&other.key()).await.unwrap(), None);
    // Once released, the same call succeeds.
    store.compare_and_swap(run.version, &next, &change).await.unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(next));
}

#[tokio::test]
async fn a_full_disk_mid_write_rolls_back_and_loses_nothing() {
    // 24 pages of 4 KiB: room for the schema and a few dozen runs.
    let options = SqliteOptions::default().with_max_page_count(24);
    let store = common::temp_store_with(options).await;

    // Inserts until the database is full.
    let mut stored = Vec::new();
    let failed = loop {
        let run = fixtures::run().build();
        match store.insert(&run, &created(&run)).await {
            Ok(()) => stored.push(run),
            Err(err) => break (run, err),
        }
        assert!(stored.len() < 10_000, "the page cap never bit");
    };
    assert!(!stored.is_empty());
    let (run, err) = failed;
    assert_backend(&err, false);
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(store.get(&run.key()).await.unwrap(), None);
    assert_eq!(store.changes(&run.key()).await.unwrap(), vec![]);

    // Compare-and-swaps until the change records no longer fit.
    let mut current = stored[0].clone();
    let mut history = vec![created(&current)];
    let err = loop {
        let (next, change) = bumped(&current);
        match store.compare_and_swap(current.version, &next, &change).await {
            Ok(()) => {
                current = next;
                history.push(change);
            }
            Err(err) => break err,
        }
        assert!(history.len() < 100_000, "the page cap never bit");
    };
    assert_backend(&err, false);
    assert_eq!(store.get(&current.key()).await.unwrap(), Some(current.clone()));
    assert_eq!(store.changes(&current.key()).await.unwrap(), history);
    for run in &stored[1..] {
        assert_eq!(store.get(&run.key()).await.unwrap().as_ref(), Some(run));
    }
    // Nothing is wedged: a conflict is still a conflict, and reads work.
    let (stale, change) = bumped(&stored[1]);
    let mut stale = stale;
    stale.version = Version::new(99).unwrap();
    let conflict = store
        .compare_and_swap(
            Version::new(98).unwrap(),
            &stale,
            &ChangeRecord {
                version: stale.version,
                ..change
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(conflict, StoreError::VersionConflict { .. }), "{conflict:?}");
}

#[tokio::test]
async fn an_id_taken_under_another_scope_is_a_permanent_backend_error_not_already_exists() {
    let store = common::temp_store().await;
    let run = fixtures::run().build();
    store.insert(&run, &created(&run)).await.unwrap();
    let twin = fixtures::run().with_id(run.id).build();
    let err = store.insert(&twin, &created(&twin)).await.unwrap_err();
    assert_backend(&err, false);
    assert_eq!(store.find_by_target_group(&twin.scope()).await.unwrap(), None);
    let same_scope = fixtures::run().with_scope(run.scope()).build();
    assert!(matches!(
        store.insert(&same_scope, &created(&same_scope)).await,
        Err(StoreError::AlreadyExists { scope }) if scope == run.scope()
    ));
}

#[tokio::test]
async fn both_durability_modes_open_and_write() {
    for durability in [Durability::Full, Durability::Normal] {
        let store = common::temp_store_with(SqliteOptions::default().with_durability(durability).with_readers(0)).await;
        assert_eq!(store.store.durability(), durability);
        let run = fixtures::run().build();
        store.insert(&run, &created(&run)).await.unwrap();
        assert_eq!(store.get(&run.key()).await.unwrap(), Some(run));
        let conn = rusqlite::Connection::open(store.guard.path().join("fielding.db")).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}

/// Writes queued together are committed together (group commit); each
/// must still be all-or-nothing and see the writes queued before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_committed_together_stay_individually_atomic() {
    let store = std::sync::Arc::new(common::temp_store().await);
    let runs: Vec<FieldingRun> = (0..4).map(|_| fixtures::run().build()).collect();
    for run in &runs {
        store.insert(run, &created(run)).await.unwrap();
    }
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            let run = runs[i % runs.len()].clone();
            tokio::spawn(async move {
                let (mut next, mut change) = bumped(&run);
                next.last_changed_by = fielding_core::UserId::random();
                change.changed_by = next.last_changed_by;
                let outcome = store.compare_and_swap(run.version, &next, &change).await;
                (i % 4, outcome.map(|()| change))
            })
        })
        .collect();
    let mut winners = vec![Vec::new(); runs.len()];
    for task in tasks {
        let (slot, outcome) = task.await.unwrap();
        match outcome {
            Ok(change) => winners[slot].push(change),
            Err(StoreError::VersionConflict { expected, current }) => {
                assert_eq!((expected.get(), current.get()), (1, 2));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let stats = store.store.write_stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.writes, 4 + 32);
    for (run, won) in runs.iter().zip(winners) {
        assert_eq!(won.len(), 1, "exactly one winner per run");
        let stored = store.get(&run.key()).await.unwrap().unwrap();
        assert_eq!(stored.last_changed_by, won[0].changed_by);
        assert_eq!(
            store.changes(&run.key()).await.unwrap(),
            vec![created(run), won[0].clone()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_into_a_full_disk_either_happen_whole_or_not_at_all() {
    let store = std::sync::Arc::new(common::temp_store_with(SqliteOptions::default().with_max_page_count(24)).await);
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let run = fixtures::run().build();
                let outcome = store.insert(&run, &created(&run)).await;
                (run, outcome)
            })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    let mut positions = std::collections::HashSet::new();
    for task in tasks {
        let (run, outcome) = task.await.unwrap();
        // Each run has an account of its own: its feed is its record, or
        // nothing (a failed write's positions were given back or skipped).
        let feed = store.store.feed(run.account_id, None, 10).await.unwrap();
        match outcome {
            Ok(()) => {
                ok += 1;
                assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
                assert_eq!(store.changes(&run.key()).await.unwrap(), vec![created(&run)]);
                assert_eq!(feed.records.len(), 1);
                assert_eq!(feed.records[0].change, created(&run));
                assert!(positions.insert(feed.records[0].position), "one position, one record");
            }
            Err(err) => {
                full += 1;
                assert_backend(&err, false);
                assert_eq!(store.get(&run.key()).await.unwrap(), None);
                assert_eq!(store.changes(&run.key()).await.unwrap(), vec![]);
                assert!(feed.records.is_empty());
            }
        }
    }
    assert!(ok > 0 && full > 0, "{ok} inserted, {full} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_group_commit_every_write_is_its_own_transaction() {
    let store = std::sync::Arc::new(common::temp_store_with(SqliteOptions::default().with_group_commit(false)).await);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let run = fixtures::run().build();
                store.insert(&run, &created(&run)).await.map(|()| run)
            })
        })
        .collect();
    for task in tasks {
        let run = task.await.unwrap().unwrap();
        assert_eq!(store.get(&run.key()).await.unwrap(), Some(run));
    }
    let stats = store.store.write_stats();
    assert_eq!((stats.writes, stats.transactions), (16, 16));
}

/// Checkpoints run on their own thread: they happen while writes keep
/// coming, a log past `wal_restart_pages` starts over (so the `-wal` file
/// stays small), and every write is still there after reopening.
#[tokio::test]
async fn background_checkpoints_keep_the_log_short_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    let options = SqliteOptions::default()
        .with_durability(Durability::Normal)
        .with_checkpoint_interval(Duration::from_millis(1))
        .with_wal_restart_pages(64);
    let store = SqliteStore::open_with(&path, options).await.unwrap();
    let mut run = fixtures::run().build();
    store.insert(&run, &created(&run)).await.unwrap();
    const WRITES: u64 = 2_000;
    for _ in 0..WRITES {
        let (next, change) = bumped(&run);
        store.compare_and_swap(run.version, &next, &change).await.unwrap();
        run = next;
    }
    // Wait (bounded) for the thread to catch up with the last commits: a
    // restart has happened and the log is short again. Without restarts,
    // the 2,000 commits above (two pages or more each) would leave more
    // than 4,000 pages in it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (store.checkpoint_stats().restarts == 0 || store.checkpoint_stats().log_pages >= 1_000)
        && Instant::now() < deadline
    {
        let (next, change) = bumped(&run);
        store.compare_and_swap(run.version, &next, &change).await.unwrap();
        run = next;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = store.checkpoint_stats();
    assert!(stats.passive > 0, "{stats:?}");
    assert!(stats.restarts > 0, "the log passed 64 pages: {stats:?}");
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert!(stats.log_pages < 1_000, "the log stays short: {stats:?}");
    store.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get(&run.key()).await.unwrap(), Some(run.clone()));
    let history = store.changes(&run.key()).await.unwrap();
    assert_eq!(history.len() as u64, run.version.get());
}

#[tokio::test]
async fn in_memory_and_read_only_stores_have_no_checkpoint_thread() {
    let memory = SqliteStore::open_in_memory().await.unwrap();
    let run = fixtures::run().build();
    memory.insert(&run, &created(&run)).await.unwrap();
    assert_eq!(memory.checkpoint_stats(), Default::default());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fielding.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let read_only = SqliteStore::open_with(&path, SqliteOptions::default().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(read_only.get(&run.key()).await.unwrap(), None);
    assert_eq!(read_only.checkpoint_stats(), Default::default());
}
