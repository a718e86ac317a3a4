//! Reads that compare what the store returns with what a case expects.

use std::future::Future;

use fielding_core::{ChangeRecord, FieldingRun, FieldingStore, RunKey, Scope, StoreError};

use crate::failure::Case;
use crate::sample::{records_diff, run_diff};
use crate::CaseFailure;

/// Compares a read run with the expected one (`None`: no run).
pub(crate) fn compare_run(
    case: Case,
    promise: &'static str,
    call: &str,
    expected: Option<&FieldingRun>,
    seen: Option<&FieldingRun>,
) -> Result<(), CaseFailure> {
    match (expected, seen) {
        (None, None) => Ok(()),
        (Some(e), Some(s)) if e == s => Ok(()),
        (Some(e), Some(s)) => Err(case.fail(promise, format!("{call}: {}", run_diff(e, s)))),
        (Some(e), None) => Err(case.fail(
            promise,
            format!(
                "{call} returned no run; expected the run at version {} ({e:?})",
                e.version
            ),
        )),
        (None, Some(s)) => Err(case.fail(
            promise,
            format!(
                "{call} returned run {} at version {} of {}; expected no run",
                s.id,
                s.version,
                s.scope()
            ),
        )),
    }
}

/// `get(key)` must return `expected`.
pub(crate) async fn get<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &RunKey,
    expected: Option<&FieldingRun>,
    when: &str,
) -> Result<(), CaseFailure> {
    let result = store.get(key).await;
    let call = format!("get({key}) {when}");
    let seen = case.ok(&call, result)?;
    compare_run(case, promise, &call, expected, seen.as_ref())
}

/// `find_by_target_group(scope)` must return `expected`.
pub(crate) async fn find<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    scope: &Scope,
    expected: Option<&FieldingRun>,
    when: &str,
) -> Result<(), CaseFailure> {
    let result = store.find_by_target_group(scope).await;
    let call = format!("find_by_target_group({scope}) {when}");
    let seen = case.ok(&call, result)?;
    compare_run(case, promise, &call, expected, seen.as_ref())
}

/// `changes(key)` must return exactly `expected`.
pub(crate) async fn changes<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &RunKey,
    expected: &[ChangeRecord],
    when: &str,
) -> Result<(), CaseFailure> {
    let result = store.changes(key).await;
    let call = format!("changes({key}) {when}");
    let seen = case.ok(&call, result)?;
    match records_diff(expected, &seen) {
        None => Ok(()),
        Some(diff) => Err(case.fail(promise, format!("{call}: {diff}"))),
    }
}

/// The run at `run.key()` and its history are exactly `run` and `records`,
/// by `get`, `find_by_target_group` and `changes`.
pub(crate) async fn stored<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    run: &FieldingRun,
    records: &[ChangeRecord],
    when: &str,
) -> Result<(), CaseFailure> {
    get(case, store, promise, &run.key(), Some(run), when).await?;
    find(case, store, promise, &run.scope(), Some(run), when).await?;
    changes(case, store, promise, &run.key(), records, when).await
}

/// Nothing is stored at `key`: no run, no records.
pub(crate) async fn absent<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    key: &RunKey,
    when: &str,
) -> Result<(), CaseFailure> {
    get(case, store, promise, key, None, when).await?;
    changes(case, store, promise, key, &[], when).await
}

/// Calls a sweep that can remove at most `limit` (`expire_jobs`,
/// `expire_bulk_jobs`, `prune_changes`; `call` names it in messages) until
/// it answers less than `limit`: every answer, in order. A store that
/// keeps answering `limit` is endless: after `MAX_SWEEP_CALLS` calls the
/// case fails with `rule`.
pub(crate) async fn sweep<F, Fut>(
    case: Case,
    rule: &'static str,
    call: &str,
    limit: usize,
    mut once: F,
) -> Result<Vec<usize>, CaseFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let mut answers = Vec::new();
    while answers.len() < MAX_SWEEP_CALLS {
        let removed = case.ok(call, once().await)?;
        answers.push(removed);
        if removed < limit {
            return Ok(answers);
        }
    }
    Err(case.fail(
        rule,
        format!("{call} answered {limit} removals {MAX_SWEEP_CALLS} times in a row"),
    ))
}

/// Calls a sweep may take before the case calls the store's answers
/// endless (a store that always answers `limit`).
pub(crate) const MAX_SWEEP_CALLS: usize = 64;
