//! The public fixtures: runs have the effective status asked for, scopes
//! and their neighbours are distinct, changes and creation records describe
//! their runs, jobs are processing and valid.

use fielding_core::{Action, JobRequest, JobState, Status, Timestamp, UserId};
use fielding_testkit::fixtures;

fn t0() -> Timestamp {
    // Any instant works; a fixed one shows the defaults are relative to it.
    "2030-03-01T09:00:00Z".parse().unwrap()
}

#[test]
fn fixture_runs_have_the_effective_status_asked_for() {
    for status in Status::ALL {
        let run = fixtures::run().with_status(status).with_now(t0()).build();
        assert_eq!(run.effective_status(t0()), status, "{status}");
        assert!(run.start_fielding_at < run.end_fielding_at);
        assert_eq!(run.last_changed_at, t0());
    }
}

#[test]
fn fixture_runs_default_to_the_clock_now() {
    let now = Timestamp::from(chrono::Utc::now());
    for status in Status::ALL {
        let run = fixtures::run().with_status(status).build();
        assert_eq!(run.effective_status(now), status, "{status}");
        assert!(run.last_changed_at >= now);
    }
}

#[test]
fn fixture_scopes_are_distinct() {
    let a = fixtures::scope();
    let b = fixtures::scope();
    assert_ne!(a, b);
    assert_ne!(a.project_id, b.project_id);
    assert_ne!(a.target_group_id, b.target_group_id);
}

#[test]
fn neighbours_differ_in_exactly_one_part() {
    let scope = fixtures::scope();
    let [(_, account), (_, project), (_, target_group)] = fixtures::neighbours(scope);
    assert_ne!(account.account_id, scope.account_id);
    assert_eq!(
        (account.project_id, account.target_group_id),
        (scope.project_id, scope.target_group_id)
    );
    assert_ne!(project.project_id, scope.project_id);
    assert_eq!(
        (project.account_id, project.target_group_id),
        (scope.account_id, scope.target_group_id)
    );
    assert_ne!(target_group.target_group_id, scope.target_group_id);
    assert_eq!(
        (target_group.account_id, target_group.project_id),
        (scope.account_id, scope.project_id)
    );
}

#[test]
fn creation_and_change_records_describe_their_runs() {
    let scheduled = fixtures::run().build();
    assert_eq!(fixtures::creation(&scheduled).action, Action::Schedule);
    let live = fixtures::run().with_status(Status::Live).with_version(4).build();
    let first = fixtures::creation(&live);
    assert_eq!(
        (first.action, first.version, first.status_from),
        (Action::Launch, live.version, None)
    );

    let by = UserId::random();
    let (paused, record) = fixtures::change(&live, 7, by).unwrap();
    assert_eq!(paused.version.get(), 5);
    assert_eq!(paused.status, Status::Paused);
    assert_eq!(
        (record.run_id, record.version, record.action),
        (live.id, paused.version, Action::Pause)
    );
    assert_eq!(
        (record.status_from, record.status_to),
        (Some(Status::Live), Status::Paused)
    );
    assert_eq!((record.changed_by, paused.last_changed_by), (by, by));
    assert_eq!(record.changed_at, paused.last_changed_at);
    let (_, other) = fixtures::change(&live, 8, by).unwrap();
    assert_ne!(
        other.changed_at, record.changed_at,
        "distinct tags make distinct writes"
    );

    let last = fixtures::run().with_version(i64::MAX as u64).build();
    assert!(fixtures::change(&last, 1, by).is_none());
}

#[test]
fn jobs_are_processing_with_fresh_ids_and_valid_requests() {
    let scope = fixtures::scope();
    let a = fixtures::job(scope, "key-1", fixtures::schedule());
    let b = fixtures::job(scope, "key-1", fixtures::launch());
    assert_eq!(a.state, JobState::Processing);
    assert_eq!((a.scope, a.idempotency_key.as_str()), (scope, "key-1"));
    assert_ne!(a.id, b.id);
    assert_ne!(a.fielding_run_id, b.fielding_run_id);
    assert_eq!(a.trace_id, None);
    let now = Timestamp::from(chrono::Utc::now());
    match a.request {
        JobRequest::ScheduleFromDraft {
            start_fielding_at,
            end_fielding_at,
        } => assert!(now < start_fielding_at && start_fielding_at < end_fielding_at),
        other => panic!("expected a schedule request, got {other:?}"),
    }
    assert!(b.request.end_fielding_at() > now);
}
