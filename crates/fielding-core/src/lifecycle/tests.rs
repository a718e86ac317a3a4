//! Unit tests of the pure lifecycle rules: effective status, creation checks
//! and `decide` for every command in every effective status.

use chrono::TimeDelta;

use super::*;
use crate::{FieldingRunId, Scope, UserId, Version};

/// The fixed "now" of every test: 2030-01-01T00:00:00Z.
fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().unwrap()
}

/// `now()` shifted by `hours` (negative: in the past).
fn h(hours: i64) -> Timestamp {
    now().checked_add(TimeDelta::hours(hours)).unwrap()
}

fn run(status: Status, start: Timestamp, end: Timestamp) -> FieldingRun {
    let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1").unwrap();
    FieldingRun {
        id: FieldingRunId::generate(),
        account_id: scope.account_id,
        project_id: scope.project_id,
        target_group_id: scope.target_group_id,
        start_fielding_at: start,
        end_fielding_at: end,
        status,
        version: Version::new(3).unwrap(),
        last_changed_at: h(-100),
        last_changed_by: UserId::random(),
    }
}

/// A run whose *effective* status at `now()` is `status`: scheduled starts in
/// 24h, the others started 24h ago; all end in 72h.
fn run_in(status: Status) -> FieldingRun {
    match status {
        Status::Scheduled => run(status, h(24), h(72)),
        _ => run(status, h(-24), h(72)),
    }
}

fn update(start: Timestamp, end: Timestamp) -> Command {
    Command::UpdateDates {
        start_fielding_at: start,
        end_fielding_at: end,
    }
}

#[track_caller]
fn expect_change(result: Result<Decision, FieldingError>) -> Target {
    match result {
        Ok(Decision::Change(target)) => target,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[track_caller]
fn expect_invalid_state(result: Result<Decision, FieldingError>, action: Action, status: Status) {
    match result {
        Err(err @ FieldingError::InvalidState { .. }) => {
            assert_eq!(err.code(), "invalid_state_error");
            assert_eq!(err.code(), "invalid_state_error");
            match err {
                FieldingError::InvalidState {
                    action: got_action,
                    status: got_status,
                    ..
                } => {
                    assert_eq!(got_action, action, "refused action");
                    assert_eq!(got_status, status, "effective status named in the refusal");
                }
                _ => unreachable!(),
            }
        }
        other => panic!("expected invalid state ({action} in {status}), got {other:?}"),
    }
}

#[track_caller]
fn expect_invalid_fields<T: std::fmt::Debug>(result: Result<T, FieldingError>, fields: &[&str]) {
    match result {
        Err(err @ FieldingError::Validation { .. }) => {
            assert_eq!(err.code(), "bad_request_error");
            assert_eq!(err.code(), "bad_request_error");
            let names: Vec<&str> = err.invalid_params().iter().map(|p| p.name.as_ref()).collect();
            assert_eq!(names, fields, "invalid params");
            for field in fields {
                assert!(err.to_string().contains(field), "message {err} names {field}");
            }
        }
        other => panic!("expected a validation error naming {fields:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Effective status
// ---------------------------------------------------------------------------

#[test]
fn effective_status_scheduled_before_start_stays_scheduled() {
    assert_eq!(
        effective_status(Status::Scheduled, h(1), h(2), now()),
        Status::Scheduled
    );
}

#[test]
fn effective_status_scheduled_is_live_from_the_start_instant() {
    assert_eq!(effective_status(Status::Scheduled, now(), h(2), now()), Status::Live);
}

#[test]
fn effective_status_scheduled_is_live_after_start() {
    assert_eq!(effective_status(Status::Scheduled, h(-1), h(2), now()), Status::Live);
}

#[test]
fn effective_status_any_status_is_completed_at_the_end_instant() {
    for stored in Status::ALL {
        assert_eq!(
            effective_status(stored, h(-2), now(), now()),
            Status::Completed,
            "{stored} at its end"
        );
    }
}

#[test]
fn effective_status_any_status_is_completed_after_end() {
    for stored in Status::ALL {
        assert_eq!(
            effective_status(stored, h(-2), h(-1), now()),
            Status::Completed,
            "{stored} after its end"
        );
    }
    // Also a scheduled run whose start and end both passed unseen.
    assert_eq!(
        effective_status(Status::Scheduled, h(-10), h(-5), now()),
        Status::Completed
    );
}

#[test]
fn effective_status_paused_stays_paused_before_end() {
    assert_eq!(effective_status(Status::Paused, h(-1), h(2), now()), Status::Paused);
    let one_ms_before_end = now().checked_add(TimeDelta::milliseconds(1)).unwrap();
    assert_eq!(
        effective_status(Status::Paused, h(-1), one_ms_before_end, now()),
        Status::Paused
    );
}

#[test]
fn effective_status_live_stays_live_before_end() {
    assert_eq!(effective_status(Status::Live, h(-1), h(2), now()), Status::Live);
}

#[test]
fn effective_status_completed_stays_completed_before_end() {
    assert_eq!(
        effective_status(Status::Completed, h(-1), h(2), now()),
        Status::Completed
    );
    assert_eq!(
        effective_status(Status::Completed, h(1), h(2), now()),
        Status::Completed
    );
}

#[test]
fn as_of_replaces_status_only_and_keeps_the_version() {
    let stored = run(Status::Scheduled, h(-1), h(5));
    let seen = stored.clone().as_of(now());
    assert_eq!(seen.status, Status::Live);
    assert_eq!(seen.version, stored.version);
    assert_eq!(
        FieldingRun {
            status: stored.status,
            ..seen
        },
        stored
    );
}

// ---------------------------------------------------------------------------
// Creation
// ---------------------------------------------------------------------------

#[test]
fn new_scheduled_accepts_future_start_and_later_end() {
    let target = new_scheduled(h(1), h(2), now()).unwrap();
    assert_eq!(
        target,
        Target {
            status: Status::Scheduled,
            start_fielding_at: h(1),
            end_fielding_at: h(2)
        }
    );
}

#[test]
fn new_scheduled_accepts_start_equal_to_now() {
    let target = new_scheduled(now(), h(2), now()).unwrap();
    assert_eq!(target.start_fielding_at, now());
}

#[test]
fn new_scheduled_refuses_start_in_the_past_naming_start_fielding_at() {
    let one_ms_ago = now().checked_sub(TimeDelta::milliseconds(1)).unwrap();
    expect_invalid_fields(new_scheduled(one_ms_ago, h(2), now()), &["start_fielding_at"]);
}

#[test]
fn new_scheduled_refuses_end_equal_to_start_naming_end_fielding_at() {
    expect_invalid_fields(new_scheduled(h(1), h(1), now()), &["end_fielding_at"]);
}

#[test]
fn new_scheduled_refuses_end_before_start_naming_end_fielding_at() {
    expect_invalid_fields(new_scheduled(h(2), h(1), now()), &["end_fielding_at"]);
}

#[test]
fn new_scheduled_reports_both_bad_dates_at_once() {
    expect_invalid_fields(
        new_scheduled(h(-1), h(-2), now()),
        &["start_fielding_at", "end_fielding_at"],
    );
}

#[test]
fn new_launched_starts_now_and_is_live() {
    assert_eq!(
        new_launched(h(3), now()).unwrap(),
        Target {
            status: Status::Live,
            start_fielding_at: now(),
            end_fielding_at: h(3)
        }
    );
}

#[test]
fn new_launched_refuses_end_equal_to_now_naming_end_fielding_at() {
    expect_invalid_fields(new_launched(now(), now()), &["end_fielding_at"]);
}

#[test]
fn new_launched_refuses_end_in_the_past_naming_end_fielding_at() {
    expect_invalid_fields(new_launched(h(-1), now()), &["end_fielding_at"]);
}

// ---------------------------------------------------------------------------
// Update dates
// ---------------------------------------------------------------------------

#[test]
fn update_dates_scheduled_may_move_both_dates() {
    let r = run_in(Status::Scheduled);
    let target = expect_change(decide(&r, &update(h(10), h(20)), now()));
    assert_eq!(
        target,
        Target {
            status: Status::Scheduled,
            start_fielding_at: h(10),
            end_fielding_at: h(20)
        }
    );
}

#[test]
fn update_dates_scheduled_may_move_start_to_now() {
    let r = run_in(Status::Scheduled);
    let target = expect_change(decide(&r, &update(now(), h(20)), now()));
    assert_eq!(target.start_fielding_at, now());
}

#[test]
fn update_dates_scheduled_refuses_start_in_the_past_naming_start_fielding_at() {
    let r = run_in(Status::Scheduled);
    expect_invalid_fields(decide(&r, &update(h(-1), h(20)), now()), &["start_fielding_at"]);
}

#[test]
fn update_dates_scheduled_refuses_end_equal_to_start_naming_end_fielding_at() {
    let r = run_in(Status::Scheduled);
    expect_invalid_fields(decide(&r, &update(h(10), h(10)), now()), &["end_fielding_at"]);
}

#[test]
fn update_dates_live_may_move_the_end() {
    let r = run_in(Status::Live);
    let target = expect_change(decide(&r, &update(r.start_fielding_at, h(100)), now()));
    assert_eq!(
        target,
        Target {
            status: Status::Live,
            start_fielding_at: r.start_fielding_at,
            end_fielding_at: h(100)
        }
    );
}

#[test]
fn update_dates_paused_may_move_the_end_and_stays_paused() {
    let r = run_in(Status::Paused);
    let target = expect_change(decide(&r, &update(r.start_fielding_at, h(1)), now()));
    assert_eq!(target.status, Status::Paused);
    assert_eq!(target.end_fielding_at, h(1));
}

#[test]
fn update_dates_live_refuses_a_different_start_as_invalid_state() {
    let r = run_in(Status::Live);
    expect_invalid_state(
        decide(&r, &update(h(1), h(100)), now()),
        Action::UpdateDates,
        Status::Live,
    );
}

#[test]
fn update_dates_paused_refuses_a_different_start_as_invalid_state() {
    let r = run_in(Status::Paused);
    expect_invalid_state(
        decide(&r, &update(h(-23), h(100)), now()),
        Action::UpdateDates,
        Status::Paused,
    );
}

#[test]
fn update_dates_on_scheduled_run_whose_start_passed_is_judged_as_live() {
    let r = run(Status::Scheduled, h(-1), h(10));
    expect_invalid_state(
        decide(&r, &update(h(1), h(10)), now()),
        Action::UpdateDates,
        Status::Live,
    );
    let target = expect_change(decide(&r, &update(h(-1), h(20)), now()));
    assert_eq!(target.status, Status::Live, "the effective status is written");
}

#[test]
fn update_dates_live_refuses_end_equal_to_now_naming_end_fielding_at() {
    let r = run_in(Status::Live);
    expect_invalid_fields(
        decide(&r, &update(r.start_fielding_at, now()), now()),
        &["end_fielding_at"],
    );
}

#[test]
fn update_dates_paused_refuses_end_in_the_past_naming_end_fielding_at() {
    let r = run_in(Status::Paused);
    // After the start, but before now.
    expect_invalid_fields(
        decide(&r, &update(r.start_fielding_at, h(-1)), now()),
        &["end_fielding_at"],
    );
}

#[test]
fn update_dates_live_refuses_end_not_after_start_naming_end_fielding_at() {
    let r = run_in(Status::Live);
    expect_invalid_fields(
        decide(&r, &update(r.start_fielding_at, r.start_fielding_at), now()),
        &["end_fielding_at"],
    );
}

#[test]
fn update_dates_completed_is_invalid_state() {
    let r = run_in(Status::Completed);
    expect_invalid_state(
        decide(&r, &update(r.start_fielding_at, h(100)), now()),
        Action::UpdateDates,
        Status::Completed,
    );
}

#[test]
fn update_dates_completed_by_the_end_passing_is_invalid_state() {
    let r = run(Status::Live, h(-10), h(-1));
    expect_invalid_state(
        decide(&r, &update(r.start_fielding_at, h(100)), now()),
        Action::UpdateDates,
        Status::Completed,
    );
}

#[test]
fn update_dates_completed_with_same_dates_is_still_invalid_state() {
    let r = run_in(Status::Completed);
    expect_invalid_state(
        decide(&r, &update(r.start_fielding_at, r.end_fielding_at), now()),
        Action::UpdateDates,
        Status::Completed,
    );
}

#[test]
fn update_dates_completed_with_end_before_start_is_validation_before_state() {
    let r = run_in(Status::Completed);
    expect_invalid_fields(decide(&r, &update(h(5), h(4)), now()), &["end_fielding_at"]);
}

#[test]
fn update_dates_to_the_same_dates_is_unchanged() {
    for status in [Status::Scheduled, Status::Live, Status::Paused] {
        let r = run_in(status);
        assert_eq!(
            decide(&r, &update(r.start_fielding_at, r.end_fielding_at), now()).unwrap(),
            Decision::Unchanged,
            "same dates while {status}"
        );
    }
}

// ---------------------------------------------------------------------------
// Launch now
// ---------------------------------------------------------------------------

#[test]
fn launch_now_scheduled_goes_live_now_keeping_the_duration() {
    let r = run(Status::Scheduled, h(24), h(24 + 7));
    let target = expect_change(decide(&r, &Command::LaunchNow, now()));
    assert_eq!(
        target,
        Target {
            status: Status::Live,
            start_fielding_at: now(),
            end_fielding_at: h(7)
        }
    );
}

#[test]
fn launch_now_refused_when_live() {
    expect_invalid_state(
        decide(&run_in(Status::Live), &Command::LaunchNow, now()),
        Action::LaunchNow,
        Status::Live,
    );
}

#[test]
fn launch_now_refused_when_scheduled_start_has_passed() {
    let r = run(Status::Scheduled, h(-1), h(10));
    expect_invalid_state(decide(&r, &Command::LaunchNow, now()), Action::LaunchNow, Status::Live);
}

#[test]
fn launch_now_refused_when_paused() {
    expect_invalid_state(
        decide(&run_in(Status::Paused), &Command::LaunchNow, now()),
        Action::LaunchNow,
        Status::Paused,
    );
}

#[test]
fn launch_now_refused_when_completed() {
    expect_invalid_state(
        decide(&run_in(Status::Completed), &Command::LaunchNow, now()),
        Action::LaunchNow,
        Status::Completed,
    );
}

// ---------------------------------------------------------------------------
// Pause / resume
// ---------------------------------------------------------------------------

#[test]
fn pause_live_goes_paused_keeping_dates() {
    let r = run_in(Status::Live);
    let target = expect_change(decide(&r, &Command::Pause, now()));
    assert_eq!(
        target,
        Target {
            status: Status::Paused,
            start_fielding_at: r.start_fielding_at,
            end_fielding_at: r.end_fielding_at
        }
    );
}

#[test]
fn pause_scheduled_run_whose_start_passed_is_allowed() {
    let r = run(Status::Scheduled, h(-1), h(10));
    assert_eq!(expect_change(decide(&r, &Command::Pause, now())).status, Status::Paused);
}

#[test]
fn pause_refused_when_scheduled() {
    expect_invalid_state(
        decide(&run_in(Status::Scheduled), &Command::Pause, now()),
        Action::Pause,
        Status::Scheduled,
    );
}

#[test]
fn pause_refused_when_paused() {
    expect_invalid_state(
        decide(&run_in(Status::Paused), &Command::Pause, now()),
        Action::Pause,
        Status::Paused,
    );
}

#[test]
fn pause_refused_when_completed() {
    expect_invalid_state(
        decide(&run_in(Status::Completed), &Command::Pause, now()),
        Action::Pause,
        Status::Completed,
    );
}

#[test]
fn pause_refused_when_live_run_has_reached_its_end() {
    let r = run(Status::Live, h(-10), now());
    expect_invalid_state(decide(&r, &Command::Pause, now()), Action::Pause, Status::Completed);
}

#[test]
fn resume_paused_goes_live_keeping_dates() {
    let r = run_in(Status::Paused);
    let target = expect_change(decide(&r, &Command::Resume, now()));
    assert_eq!(
        target,
        Target {
            status: Status::Live,
            start_fielding_at: r.start_fielding_at,
            end_fielding_at: r.end_fielding_at
        }
    );
}

#[test]
fn resume_refused_when_paused_run_has_reached_its_end() {
    let r = run(Status::Paused, h(-10), now());
    expect_invalid_state(decide(&r, &Command::Resume, now()), Action::Resume, Status::Completed);
}

#[test]
fn resume_refused_when_scheduled() {
    expect_invalid_state(
        decide(&run_in(Status::Scheduled), &Command::Resume, now()),
        Action::Resume,
        Status::Scheduled,
    );
}

#[test]
fn resume_refused_when_live() {
    expect_invalid_state(
        decide(&run_in(Status::Live), &Command::Resume, now()),
        Action::Resume,
        Status::Live,
    );
}

#[test]
fn resume_refused_when_completed() {
    expect_invalid_state(
        decide(&run_in(Status::Completed), &Command::Resume, now()),
        Action::Resume,
        Status::Completed,
    );
}

// ---------------------------------------------------------------------------
// Complete
// ---------------------------------------------------------------------------

#[test]
fn complete_scheduled_goes_completed_keeping_dates() {
    let r = run_in(Status::Scheduled);
    let target = expect_change(decide(&r, &Command::Complete, now()));
    assert_eq!(
        target,
        Target {
            status: Status::Completed,
            start_fielding_at: r.start_fielding_at,
            end_fielding_at: r.end_fielding_at
        }
    );
}

#[test]
fn complete_live_goes_completed() {
    let r = run_in(Status::Live);
    assert_eq!(
        expect_change(decide(&r, &Command::Complete, now())).status,
        Status::Completed
    );
}

#[test]
fn complete_paused_goes_completed() {
    let r = run_in(Status::Paused);
    assert_eq!(
        expect_change(decide(&r, &Command::Complete, now())).status,
        Status::Completed
    );
}

#[test]
fn complete_refused_when_completed() {
    expect_invalid_state(
        decide(&run_in(Status::Completed), &Command::Complete, now()),
        Action::Complete,
        Status::Completed,
    );
}

#[test]
fn complete_refused_when_end_has_passed() {
    let r = run(Status::Live, h(-10), h(-1));
    expect_invalid_state(
        decide(&r, &Command::Complete, now()),
        Action::Complete,
        Status::Completed,
    );
}

// ---------------------------------------------------------------------------
// Relaunch
// ---------------------------------------------------------------------------

#[test]
fn relaunch_completed_before_end_goes_live_keeping_start() {
    let r = run_in(Status::Completed);
    let target = expect_change(decide(&r, &Command::Relaunch, now()));
    assert_eq!(
        target,
        Target {
            status: Status::Live,
            start_fielding_at: r.start_fielding_at,
            end_fielding_at: r.end_fielding_at
        }
    );
}

#[test]
fn relaunch_run_completed_before_it_started_starts_now() {
    let r = run(Status::Completed, h(5), h(10));
    let target = expect_change(decide(&r, &Command::Relaunch, now()));
    assert_eq!(
        target,
        Target {
            status: Status::Live,
            start_fielding_at: now(),
            end_fielding_at: h(10)
        }
    );
}

#[test]
fn relaunch_refused_at_the_end_instant() {
    let r = run(Status::Completed, h(-10), now());
    expect_invalid_state(
        decide(&r, &Command::Relaunch, now()),
        Action::Relaunch,
        Status::Completed,
    );
}

#[test]
fn relaunch_refused_after_the_end_even_if_completed_by_time() {
    let r = run(Status::Live, h(-10), h(-1));
    expect_invalid_state(
        decide(&r, &Command::Relaunch, now()),
        Action::Relaunch,
        Status::Completed,
    );
}

#[test]
fn relaunch_refused_when_scheduled() {
    expect_invalid_state(
        decide(&run_in(Status::Scheduled), &Command::Relaunch, now()),
        Action::Relaunch,
        Status::Scheduled,
    );
}

#[test]
fn relaunch_refused_when_live() {
    expect_invalid_state(
        decide(&run_in(Status::Live), &Command::Relaunch, now()),
        Action::Relaunch,
        Status::Live,
    );
}

#[test]
fn relaunch_refused_when_paused() {
    expect_invalid_state(
        decide(&run_in(Status::Paused), &Command::Relaunch, now()),
        Action::Relaunch,
        Status::Paused,
    );
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

#[test]
fn every_command_records_its_own_action() {
    let cases = [
        (update(h(1), h(2)), Action::UpdateDates),
        (Command::LaunchNow, Action::LaunchNow),
        (Command::Pause, Action::Pause),
        (Command::Resume, Action::Resume),
        (Command::Complete, Action::Complete),
        (Command::Relaunch, Action::Relaunch),
    ];
    for (command, action) in cases {
        assert_eq!(command.action(), action, "{command:?}");
    }
}

#[test]
fn decide_is_pure_and_leaves_the_run_untouched() {
    let r = run_in(Status::Live);
    let before = r.clone();
    let first = decide(&r, &Command::Pause, now()).unwrap();
    let second = decide(&r, &Command::Pause, now()).unwrap();
    assert_eq!(first, second);
    assert_eq!(r, before);
}

#[test]
fn update_dates_on_scheduled_reports_a_past_start_and_an_early_end_together() {
    let err = decide(&run_in(Status::Scheduled), &update(h(-2), h(-3)), now()).unwrap_err();
    let names: Vec<_> = err.invalid_params().iter().map(|p| p.name.as_ref()).collect();
    assert_eq!(names, ["start_fielding_at", "end_fielding_at"]);
}

#[test]
fn update_dates_on_live_with_new_start_and_bad_end_is_a_validation_error_first() {
    let err = decide(&run_in(Status::Live), &update(h(1), h(0)), now()).unwrap_err();
    assert_eq!(err.code(), "bad_request_error");
    assert_eq!(err.invalid_params()[0].name, "end_fielding_at");
}
