//! The store on a caller's pool: it keeps a connection for a moment
//! between operations (to skip the pool's return round trip), and must
//! never starve the pool's other users or hold up its closing.
//!
//! Both tests use a one-connection pool and compare PostgreSQL backend
//! process ids: the same id after the store is done means the store gave
//! the pool its connection back, rather than closing it (and the pool
//! opening another) or keeping it.

mod common;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

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
