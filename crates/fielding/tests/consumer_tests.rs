//! The test suite of an imaginary consumer of the library: a team whose own
//! handler ("extend a fielding run by some days") calls `FieldingService`,
//! retries when another writer got there first (412), and maps the
//! library's errors to its own. The tests use only the facade (features
//! `memory` and `testkit`): the in-memory store, a `ManualClock`,
//! `fielding::testkit::fixtures` and `FaultyStore` fault injection.

use std::sync::Arc;

use fielding::memory::MemoryStore;
use fielding::testkit::{fixtures, Fault, Faults, FaultyStore};
use fielding::{FieldingError, FieldingRun, FieldingService, IfMatch, ManualClock, RunKey, Status, Timestamp, UserId};

/// The consumer's handler and its error type: the code under test.
mod handler {
    use super::*;

    /// How often the handler re-reads and tries again after a 412.
    pub const ATTEMPTS: u32 = 3;
    const DAY_MILLIS: i64 = 24 * 60 * 60 * 1000;

    /// What the consumer's own API answers, whatever the library said.
    #[derive(Debug, PartialEq, Eq)]
    pub enum ExtendError {
        /// No such run (their 404).
        NoSuchRun,
        /// The run has closed or cannot move that far (their 409).
        NotExtendable(String),
        /// Other writers kept winning; the client may try again later (their 503).
        Contended,
        /// The database failed (their 503, with `retry` when it said so).
        Unavailable { retry: bool },
        /// Anything else (their 500).
        Internal,
    }

    /// The run after the change, and how many attempts it took.
    #[derive(Debug)]
    pub struct Extended {
        pub run: FieldingRun,
        pub attempts: u32,
    }

    /// Moves the run's end `days` later, re-reading and retrying when
    /// someone else changed the run in between.
    pub async fn extend_by_days(
        service: &FieldingService,
        key: &RunKey,
        days: i64,
        actor: UserId,
    ) -> Result<Extended, ExtendError> {
        for attempt in 1..=ATTEMPTS {
            let run = service.get(key).await.map_err(map)?;
            let end = days
                .checked_mul(DAY_MILLIS)
                .and_then(|delta| run.end_fielding_at.unix_millis().checked_add(delta))
                .and_then(Timestamp::from_unix_millis)
                .ok_or_else(|| ExtendError::NotExtendable("too far".into()))?;
            let if_match = IfMatch::version(run.version);
            match service
                .update_dates(key, &if_match, run.start_fielding_at, end, actor)
                .await
            {
                Ok(applied) => {
                    return Ok(Extended {
                        run: applied.run,
                        attempts: attempt,
                    })
                }
                // Someone changed the run since the read: read it again.
                Err(FieldingError::PreconditionFailed { .. }) => continue,
                Err(err) => return Err(map(err)),
            }
        }
        Err(ExtendError::Contended)
    }

    fn map(err: FieldingError) -> ExtendError {
        match err {
            FieldingError::NotFound { .. } => ExtendError::NoSuchRun,
            FieldingError::InvalidState { detail, .. } => ExtendError::NotExtendable(detail),
            FieldingError::Validation { params } => {
                ExtendError::NotExtendable(params.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            }
            err @ FieldingError::Storage { .. } => ExtendError::Unavailable {
                retry: err.is_retryable(),
            },
            _ => ExtendError::Internal,
        }
    }
}

use handler::{extend_by_days, ExtendError, ATTEMPTS};

const NOW: &str = "2031-01-10T12:00:00Z";

/// The service under test, on a memory store wrapped in fault injection,
/// with the clock at [`NOW`]; the memory store and the fault handle are
/// kept to seed runs and inject faults.
struct Harness {
    service: FieldingService,
    memory: MemoryStore,
    faults: Faults,
    clock: ManualClock,
}

fn harness() -> Harness {
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let faults = store.faults().clone();
    let clock = ManualClock::new(ts(NOW));
    let service = FieldingService::new(Arc::new(store)).with_clock(Arc::new(clock.clone()));
    Harness {
        service,
        memory,
        faults,
        clock,
    }
}

fn ts(text: &str) -> Timestamp {
    text.parse().expect("a test timestamp")
}

/// A live run from Jan 1 to Jan 31 2031, at version 4, stored.
fn seeded_live_run(h: &Harness) -> FieldingRun {
    let run = fixtures::run()
        .with_status(Status::Live)
        .with_version(4)
        .with_dates(ts("2031-01-01T09:00:00Z"), ts("2031-01-31T09:00:00Z"))
        .with_now(ts(NOW))
        .build();
    h.memory.seed(run.clone()).expect("seed");
    run
}

#[tokio::test]
async fn extends_the_end_in_one_attempt() {
    let h = harness();
    let run = seeded_live_run(&h);
    let extended = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap();
    assert_eq!(extended.attempts, 1);
    assert_eq!(extended.run.end_fielding_at, ts("2031-02-07T09:00:00Z"));
    assert_eq!(extended.run.version.get(), 5);
    assert_eq!(extended.run.last_changed_at, ts(NOW), "stamped by the manual clock");
}

#[tokio::test]
async fn a_lost_race_is_retried_with_a_fresh_read() {
    let h = harness();
    let run = seeded_live_run(&h);
    h.faults.inject(Fault::Conflict, 1); // another writer wins the next write
    let extended = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap();
    assert_eq!(extended.attempts, 2);
    assert_eq!(h.faults.pending(Fault::Conflict), 0);
    assert_eq!(
        h.memory.run(&run.key()).unwrap().end_fielding_at,
        ts("2031-02-07T09:00:00Z")
    );
}

#[tokio::test]
async fn gives_up_after_its_attempts_and_writes_nothing() {
    let h = harness();
    let run = seeded_live_run(&h);
    h.faults.inject(Fault::Conflict, u64::from(ATTEMPTS));
    let err = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap_err();
    assert_eq!(err, ExtendError::Contended);
    assert_eq!(h.memory.run(&run.key()), Some(run), "nothing was written");
}

#[tokio::test]
async fn a_failing_database_is_unavailable_and_a_transient_failure_says_retry() {
    let h = harness();
    let run = seeded_live_run(&h);
    h.faults.inject(Fault::Storage, 1);
    let err = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap_err();
    assert_eq!(err, ExtendError::Unavailable { retry: false });

    h.faults.inject(Fault::TransientStorage, 1);
    let err = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap_err();
    assert_eq!(err, ExtendError::Unavailable { retry: true });
    assert_eq!(h.memory.run(&run.key()), Some(run), "nothing was written");
}

#[tokio::test]
async fn a_missing_run_is_not_found() {
    let h = harness();
    let run = fixtures::run().build(); // never stored
    let err = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap_err();
    assert_eq!(err, ExtendError::NoSuchRun);
}

#[tokio::test]
async fn a_completed_run_cannot_be_extended() {
    let h = harness();
    let run = fixtures::run().with_status(Status::Completed).with_now(ts(NOW)).build();
    h.memory.seed(run.clone()).unwrap();
    let err = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap_err();
    assert!(matches!(err, ExtendError::NotExtendable(_)), "{err:?}");
}

#[tokio::test]
async fn once_the_clock_passes_the_end_the_run_has_closed() {
    let h = harness();
    let run = seeded_live_run(&h);
    // Nobody wrote anything: the run is completed because its end has
    // passed, which only the clock can tell.
    h.clock.set(ts("2031-02-01T00:00:00Z"));
    let err = extend_by_days(&h.service, &run.key(), 7, UserId::random())
        .await
        .unwrap_err();
    assert!(matches!(err, ExtendError::NotExtendable(_)), "{err:?}");
}
