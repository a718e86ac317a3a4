//! The store on a caller's pool: it keeps a connection for a moment
//! between operations (to skip the pool's return round trip), and must
//! never starve the pool's other users or hold up its closing.
//!
//! The first two tests use a one-connection pool and compare PostgreSQL
//! backend process ids: the same id after the store is done means the
//! store gave the pool its connection back, rather than closing it (and
//! the pool opening another) or keeping it. The last keeps the store busy
//! without a pause and checks that an operation waiting in the pool is
//! served ahead of later ones.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fielding_core::{Action, ChangeRecord, FieldingStore};
use fielding_postgres::sqlx::{self, PgConnection};
use fielding_testkit::fixtures;

/// Bounds waits that only a bug would make long (a connection never given
/// back, a drop that hangs), so such a bug fails the test instead of
/// stalling the suite. Not a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// The PostgreSQL process serving `conn`: the same id is the same connection.
async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pg_backend_pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_connection_pool_stays_usable_by_others_and_closes_promptly() {
    let Some(test) = common::fresh_store_with("fielding_pool_sharing", 1).await else {
        return;
    };
    let store = test.store.clone();
    let pid = {
        let mut conn = store.pool().acquire().await.expect("acquire");
        backend_pid(&mut conn).await
    };
    let run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    for _ in 0..20 {
        assert_eq!(
            store.get(&run.key()).await.expect("get"),
            Some(run.clone()),
            "the store works on the shared pool"
        );
        // The store has just used the pool's only connection and keeps it
        // parked. The store makes no call until this acquire returns, so
        // only the store's own release can hand the connection over: the
        // acquire completing at all shows the store does not keep it.
        let mut conn = tokio::time::timeout(HANG_GUARD, store.pool().acquire())
            .await
            .expect("the store gave the connection back")
            .expect("acquire");
        assert_eq!(
            backend_pid(&mut conn).await,
            pid,
            "the store returned its connection to the pool instead of closing it"
        );
        drop(conn);
    }
    store.get(&run.key()).await.expect("get");
    // The store still holds its parked connection here; closing waits for
    // every connection, so it completes only because the store lets go.
    tokio::time::timeout(HANG_GUARD, store.pool().close())
        .await
        .expect("closing the pool is not held up by the store");
    match store.get(&run.key()).await {
        Err(e) => assert!(!e.is_retryable(), "a closed pool is permanent: {e}"),
        Ok(found) => panic!("a closed pool answered {found:?}"),
    }
}

/// `Parking`'s promise: a store dropped outside any runtime (after
/// `block_on` returned) returns its parked connections to the pool from
/// inside the runtime they were parked on, without panicking.
#[test]
fn a_store_dropped_outside_the_runtime_returns_its_parked_connection_to_the_pool() {
    // A current-thread runtime runs tasks only inside `block_on`, so the
    // store's timer cannot return the connection between the last
    // operation and the drop: the drop has to.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(test) = rt.block_on(common::fresh_store_with("fielding_pool_drop", 1)) else {
        return;
    };
    let pool = test.store.pool().clone();
    let run = fixtures::run().build();
    let pid = rt.block_on(async {
        let pid = {
            let mut conn = pool.acquire().await.expect("acquire");
            backend_pid(&mut conn).await
        };
        test.store
            .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
            .await
            .expect("insert");
        test.store.get(&run.key()).await.expect("get");
        pid
    });
    assert_eq!(
        (pool.size(), pool.num_idle()),
        (1, 0),
        "the store still holds the pool's only connection, parked"
    );

    // Dropped on a thread with no runtime, under a deadline so a hang fails
    // the test; the schema guard stays until the pool is done.
    let fielding_testkit::Guarded { store, guard } = test;
    let (dropped, done) = mpsc::channel();
    let dropper = std::thread::spawn(move || {
        drop(store);
        let _ = dropped.send(());
    });
    match done.recv_timeout(HANG_GUARD) {
        Err(RecvTimeoutError::Timeout) => panic!("dropping the store outside the runtime hung"),
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            dropper
                .join()
                .expect("dropping the store outside the runtime does not panic");
        }
    }

    rt.block_on(async {
        let mut conn = tokio::time::timeout(HANG_GUARD, pool.acquire())
            .await
            .expect("the pool got its only connection back")
            .expect("acquire");
        assert_eq!(
            backend_pid(&mut conn).await,
            pid,
            "the parked connection was returned to the pool, not closed"
        );
        drop(conn);
        tokio::time::timeout(HANG_GUARD, pool.close())
            .await
            .expect("the pool closes");
    });
    drop(guard);
}

/// How long the busy loop below runs at most: far longer than the waits the
/// fairness test allows, so a starved operation shows as one that finishes
/// only after the loop has stopped.
const BUSY_FOR: Duration = Duration::from_secs(8);

/// Reads `run` on `store` back to back (each read asks for a connection the
/// moment the previous one ended) until `stop` is set or [`BUSY_FOR`] has
/// passed, counting reads in `done`; clears `running` when it ends.
async fn busy_loop(
    store: fielding_postgres::PgStore,
    key: fielding_core::RunKey,
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let started = Instant::now();
    while !stop.load(Ordering::Acquire) && started.elapsed() < BUSY_FOR {
        store.get(&key).await.expect("get in the busy loop");
        done.fetch_add(1, Ordering::AcqRel);
    }
    running.store(false, Ordering::Release);
}

/// An operation waiting in the pool for the store's only connection gets
/// it when the operation using it ends, ahead of operations that ask
/// later. Before, the finished operation's connection was parked and taken
/// by whichever operation asked next: a loop asking again at once kept it,
/// and the waiting operation got it only when the loop stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_operation_is_served_before_later_ones() {
    let Some(test) = common::fresh_store_with("fielding_pool_fair", 1).await else {
        return;
    };
    let store = test.store.clone();
    let run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    let (stop, running, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicU64::new(0)),
    );
    let busy = tokio::spawn(busy_loop(
        store.clone(),
        run.key(),
        stop.clone(),
        running.clone(),
        done.clone(),
    ));
    // Let the loop get going (and the connection circulate) first.
    while done.load(Ordering::Acquire) < 20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut most_overtaken = 0;
    for _ in 0..10 {
        let before = done.load(Ordering::Acquire);
        store.get(&run.key()).await.expect("the waiting get");
        assert!(
            running.load(Ordering::Acquire),
            "the waiting get finished only after the busy loop stopped: it was starved"
        );
        // The loop's read in flight when this get asked may finish, and the
        // loop may start its next read just before this get queues; one
        // more is a scheduling accident. Dozens mean it was overtaken.
        most_overtaken = most_overtaken.max(done.load(Ordering::Acquire) - before);
    }
    stop.store(true, Ordering::Release);
    tokio::time::timeout(HANG_GUARD, busy)
        .await
        .expect("the busy loop ends")
        .expect("the busy loop did not panic");
    assert!(
        most_overtaken <= 3,
        "a waiting get was overtaken by {most_overtaken} later reads of the busy loop"
    );
}
