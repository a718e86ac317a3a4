//! Runs and change records for the cases: every field set to a value that
//! would expose a store that drops, rounds or mixes it up.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use fielding_core::{
    AccountId, Action, ChangeRecord, FieldingRun, FieldingRunId, ProjectId, Scope, Status, TargetGroupId, Timestamp,
    UserId, Version,
};

/// 64 random bits (from a v4 UUID, so the kit needs no RNG of its own).
pub(crate) fn random_u64() -> u64 {
    UserId::random().as_uuid().as_u128() as u64
}

/// A fresh random ULID-shaped code.
fn code() -> FieldingRunId {
    FieldingRunId::generate()
}

fn project() -> ProjectId {
    ProjectId::parse(code().as_str()).unwrap_or_else(|_| unreachable!("a generated ULID is a valid id"))
}

fn target_group() -> TargetGroupId {
    TargetGroupId::parse(code().as_str()).unwrap_or_else(|_| unreachable!("a generated ULID is a valid id"))
}

pub(crate) fn account(value: i64) -> AccountId {
    AccountId::new(value).unwrap_or_else(|_| unreachable!("account ids here are in 1..=i32::MAX"))
}

/// A fresh scope with random ids, so cases never collide with each other or
/// with data already in the store.
pub(crate) fn scope() -> Scope {
    // 1..=i32::MAX - 1, so `other_account` can always add one.
    let account_id = 1 + (random_u64() % (i32::MAX as u64 - 1)) as i64;
    Scope::new(account(account_id), project(), target_group())
}

/// `scope` with only the account changed.
pub(crate) fn other_account(scope: Scope) -> Scope {
    let next = i64::from(scope.account_id.get()) % i64::from(i32::MAX) + 1;
    Scope::new(account(next), scope.project_id, scope.target_group_id)
}

/// `scope` with only the project changed.
pub(crate) fn other_project(scope: Scope) -> Scope {
    Scope::new(scope.account_id, project(), scope.target_group_id)
}

/// `scope` with only the target group changed.
pub(crate) fn other_target_group(scope: Scope) -> Scope {
    Scope::new(scope.account_id, scope.project_id, target_group())
}

/// The three scopes that differ from `scope` in exactly one part, named.
pub(crate) fn neighbours(scope: Scope) -> [(&'static str, Scope); 3] {
    [
        ("another account", other_account(scope)),
        ("another project", other_project(scope)),
        ("another target group", other_target_group(scope)),
    ]
}

/// The instant `millis` after the epoch.
pub(crate) fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(millis).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// 2031-02-03T04:05:06.789Z: odd milliseconds, so a store that keeps whole
/// seconds fails the round trip.
pub(crate) const BASE_MILLIS: i64 = 1_927_857_906_789;

/// The version `value`, which callers keep in range.
pub(crate) fn version(value: u64) -> Version {
    Version::new(value).unwrap_or_else(|| unreachable!("version {value} is out of range"))
}

/// A run at `scope` and `version` in `status`, with every field distinct.
pub(crate) fn run(scope: Scope, version: Version, status: Status) -> FieldingRun {
    let shift = (random_u64() % 1_000_000) as i64;
    FieldingRun {
        id: code(),
        account_id: scope.account_id,
        project_id: scope.project_id,
        target_group_id: scope.target_group_id,
        start_fielding_at: at(BASE_MILLIS + 86_400_000 + shift * 1_000 + 1),
        end_fielding_at: at(BASE_MILLIS + 31 * 86_400_000 + shift * 1_000 + 999),
        status,
        version,
        last_changed_at: at(BASE_MILLIS - 3_600_000 + shift),
        last_changed_by: UserId::random(),
    }
}

/// The change record of a run's first stored version (the `*_from` fields
/// are `None`).
pub(crate) fn creation(run: &FieldingRun) -> ChangeRecord {
    let action = if run.status == Status::Scheduled {
        Action::Schedule
    } else {
        Action::Launch
    };
    ChangeRecord::created(run, action)
}

/// The run after one change to `run`, and its change record: version plus
/// one, status toggled between live and paused, end one minute later,
/// changed at `BASE_MILLIS + tag` ms by `by`. Distinct `tag`s make distinct
/// writes, so a case can tell which write a stored record came from.
///
/// `None` when `run` is already at [`Version::MAX`].
pub(crate) fn change(run: &FieldingRun, tag: u64, by: UserId) -> Option<(FieldingRun, ChangeRecord)> {
    let version = run.version.next()?;
    let (status, action) = match run.status {
        Status::Live => (Status::Paused, Action::Pause),
        Status::Paused => (Status::Live, Action::Resume),
        Status::Scheduled => (Status::Live, Action::LaunchNow),
        Status::Completed => (Status::Live, Action::Relaunch),
    };
    let end = run
        .end_fielding_at
        .checked_add(chrono::TimeDelta::minutes(1))
        .unwrap_or(run.end_fielding_at);
    let next = FieldingRun {
        status,
        version,
        end_fielding_at: end,
        last_changed_at: at(BASE_MILLIS.saturating_add((tag % (1 << 40)) as i64)),
        last_changed_by: by,
        ..run.clone()
    };
    let record = ChangeRecord {
        run_id: next.id,
        version,
        action,
        changed_at: next.last_changed_at,
        changed_by: by,
        status_from: Some(run.status),
        status_to: status,
        start_from: Some(run.start_fielding_at),
        start_to: next.start_fielding_at,
        end_from: Some(run.end_fielding_at),
        end_to: end,
    };
    Some((next, record))
}

/// The fields in which `seen` differs from `expected`, for messages.
pub(crate) fn run_diff(expected: &FieldingRun, seen: &FieldingRun) -> String {
    let mut out = Vec::new();
    macro_rules! field {
        ($name:ident) => {
            if expected.$name != seen.$name {
                out.push(format!(
                    concat!(stringify!($name), ": wrote {:?}, read back {:?}"),
                    expected.$name, seen.$name
                ));
            }
        };
    }
    field!(id);
    field!(account_id);
    field!(project_id);
    field!(target_group_id);
    field!(start_fielding_at);
    field!(end_fielding_at);
    field!(status);
    field!(version);
    field!(last_changed_at);
    field!(last_changed_by);
    if out.is_empty() {
        "no field differs".into()
    } else {
        out.join("; ")
    }
}

/// The versions of `records`, for messages.
pub(crate) fn versions(records: &[ChangeRecord]) -> String {
    let list: Vec<String> = records.iter().map(|r| r.version.to_string()).collect();
    format!("[{}]", list.join(", "))
}

/// How `seen` differs from the change records `expected`, or `None` when
/// they are identical.
pub(crate) fn records_diff(expected: &[ChangeRecord], seen: &[ChangeRecord]) -> Option<String> {
    if expected == seen {
        return None;
    }
    let mut out = format!(
        "expected {} records with versions {}, read back {} with versions {}",
        expected.len(),
        versions(expected),
        seen.len(),
        versions(seen)
    );
    if let Some(i) = (0..expected.len().min(seen.len())).find(|&i| expected[i] != seen[i]) {
        out.push_str(&format!(
            "; record #{i} differs: wrote {:?}, read back {:?}",
            expected[i], seen[i]
        ));
    }
    Some(out)
}

/// Drives `futures` concurrently on the current task and returns their
/// outputs in order.
///
/// Unlike spawning, this polls the futures in a fixed order (first to last,
/// again on every wake-up), so an interleaving of in-memory operations is
/// the same on every run: what makes the linearizability schedules
/// deterministic and shrinkable even when steps overlap.
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (future, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                if let Poll::Ready(output) = future.as_mut().poll(cx) {
                    *slot = Some(output);
                }
            }
        }
        if done.iter().all(Option::is_some) {
            Poll::Ready(done.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    })
    .await
}
