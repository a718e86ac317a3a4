//! The store on a caller's pool: it keeps a connection for a moment
//! between operations (to skip the pool's return round trip), and must
//! never starve the pool's other users or hold up its closing.

mod common;

use std::time::{Duration, Instant};

use fielding_core::{Action, ChangeRecord, FieldingStore};
use fielding_testkit::fixtures;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_connection_pool_stays_usable_by_others_and_closes_promptly() {
    let Some(test) = common::fresh_store_with("fielding_pool_sharing", 1).await else {
        return;
    };
    let store = test.store.clone();
    let run = fixtures::run().build();
    store
        .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
        .await
        .expect("insert");
    for _ in 0..20 {
        assert_eq!(
            store.get(&run.key()).await.expect("get").map(|r| r.version),
            Some(run.version)
        );
        // Another user of the same one-connection pool gets the connection
        // promptly, although the store has just used it.
        let started = Instant::now();
        let conn = tokio::time::timeout(Duration::from_secs(2), store.pool().acquire())
            .await
            .expect("the store gave the connection back")
            .expect("acquire");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "waited {:?}",
            started.elapsed()
        );
        drop(conn);
    }
    store.get(&run.key()).await.expect("get");
    tokio::time::timeout(Duration::from_secs(2), store.pool().close())
        .await
        .expect("closing the pool is not held up by the store");
    match store.get(&run.key()).await {
        Err(e) => assert!(!e.is_retryable(), "a closed pool is permanent: {e}"),
        Ok(found) => panic!("a closed pool answered {found:?}"),
    }
}

#[test]
fn a_store_dropped_outside_the_runtime_returns_its_connections_cleanly() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(test) = rt.block_on(common::fresh_store_with("fielding_pool_drop", 2)) else {
        return;
    };
    let run = fixtures::run().build();
    rt.block_on(async {
        test.store
            .insert(&run, &ChangeRecord::created(&run, Action::Schedule))
            .await
            .expect("insert");
        test.store.get(&run.key()).await.expect("get");
    });
    // Dropped right away, outside `block_on`, while a connection is parked.
    drop(test);
    drop(rt);
}
