//! What the cases share beyond the public [`crate::fixtures`]: runs with
//! every field set to a value that would expose a store that drops, rounds
//! or mixes it up, and the diffs their messages print.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use fielding_core::{ChangeRecord, FieldingRun, Scope, Status, Timestamp, Version};

pub(crate) use crate::fixtures::{
    account, change, creation, neighbours, other_account, other_project, other_target_group, random_u64, scope, version,
};

/// The instant `millis` after the epoch.
pub(crate) fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(millis).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The base instant of the cases' timestamps (see
/// [`crate::fixtures::change`]): odd milliseconds, so a store that keeps
/// whole seconds fails the round trip.
pub(crate) const BASE_MILLIS: i64 = crate::fixtures::CHANGE_BASE_MILLIS;

/// A run at `scope` and `version` in `status`, with every field distinct
/// and every timestamp at odd milliseconds: built with
/// [`crate::fixtures::run`], with dates fixed around [`BASE_MILLIS`] so a
/// store that drops, rounds or mixes up a field is caught.
pub(crate) fn run(scope: Scope, version: Version, status: Status) -> FieldingRun {
    let shift = (random_u64() % 1_000_000) as i64;
    crate::fixtures::run()
        .with_scope(scope)
        .with_version(version.get())
        .with_status(status)
        .with_dates(
            at(BASE_MILLIS + 86_400_000 + shift * 1_000 + 1),
            at(BASE_MILLIS + 31 * 86_400_000 + shift * 1_000 + 999),
        )
        .with_changed_at(at(BASE_MILLIS - 3_600_000 + shift))
        .build()
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
