//! The sequential promises of `update`, the read-modify-write every command
//! of the service goes through: not found without deciding, one decision on
//! the run as stored, `Skip` writes nothing, `Write` is a compare-and-swap.
//! A store that also answers at once ([`FieldingStore::updates_now`]) keeps
//! the same promises there: the same checks run through it.

use std::sync::Arc;

use fielding_core::{
    ChangeRecord, FieldingRun, FieldingStore, RunKey, Status, StoreError, Update, UpdateOutcome, UserId, Version,
};

use super::check;
use super::contract::{bump, insert};
use crate::failure::Case;
use crate::sample::{self, version};
use crate::{Capabilities, CaseFailure};

const UPDATE_NOT_FOUND: &str =
    "update on a run that does not exist, or through a scope that differs in account, project or target group, is Ok(NotFound) without calling decide, and writes nothing";

const DECIDES_ONCE: &str =
    "update calls decide exactly once, showing it the run exactly as stored (every field, the current version)";

const SKIP_CHANGES_NOTHING: &str =
    "after decide says Update::Skip, update answers Ok(Skipped) and changes neither the run nor its records";

const UPDATE_WRITES: &str =
    "update's Update::Write at the version read answers Ok(Written): the version goes up by exactly one, the run reads back exactly as written, and exactly one change record (the one written) is appended";

const UPDATE_STALE: &str =
    "update's Update::Write with an expected version other than the stored one is refused with VersionConflict { expected: the version tried, current: the stored version }, like compare_and_swap, and changes neither the run nor its records";

/// What one `update` call did: its result and every run it showed `decide`.
struct Updated {
    result: Result<UpdateOutcome, StoreError>,
    shown: Vec<FieldingRun>,
}

impl Updated {
    /// The runs shown to `decide`, for messages.
    fn shown(&self) -> String {
        match self.shown.as_slice() {
            [] => "decide was not called".into(),
            [run] => format!(
                "decide was called once, with run {} at version {}",
                run.key(),
                run.version
            ),
            runs => {
                let versions: Vec<String> = runs.iter().map(|r| r.version.to_string()).collect();
                format!(
                    "decide was called {} times, with versions [{}]",
                    runs.len(),
                    versions.join(", ")
                )
            }
        }
    }
}

/// Which way a case reaches a store's read-modify-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// [`FieldingStore::update`].
    Update,
    /// The store's [`FieldingStore::updates_now`], which the case has
    /// checked is there.
    UpdateNow,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Update => "update",
            Via::UpdateNow => "updates_now().update_now",
        })
    }
}

/// Calls `update(key)`, the way `via` says, with a `decide` that records
/// every run it is shown and answers with `answer`.
async fn update_via<S: FieldingStore + ?Sized>(
    store: &S,
    via: Via,
    key: &RunKey,
    mut answer: impl FnMut(&FieldingRun) -> Update + Send,
) -> Updated {
    let mut shown = Vec::new();
    let mut decide = |run: &FieldingRun| {
        shown.push(run.clone());
        answer(run)
    };
    let result = match (via, store.updates_now()) {
        (Via::UpdateNow, Some(now)) => now.update_now(key, &mut decide),
        (Via::UpdateNow, None) => Err(StoreError::internal(
            "updates_now answered a store the first time and none now",
        )),
        (Via::Update, _) => store.update(key, &mut decide).await,
    };
    Updated { result, shown }
}

/// The write a command would ask for on the run it was shown: its next
/// version (see [`sample::change`]), at the version shown.
fn next_write(shown: &FieldingRun, tag: u64, by: UserId) -> Update {
    match sample::change(shown, tag, by) {
        Some((run, change)) => Update::Write {
            expected: shown.version,
            run,
            change,
        },
        None => Update::Skip,
    }
}

/// Checks that `updated` showed `decide` exactly `stored`, exactly once.
fn decided_once_on(case: Case, updated: &Updated, stored: &FieldingRun, call: &str) -> Result<(), CaseFailure> {
    match updated.shown.as_slice() {
        [seen] => check::compare_run(
            case,
            DECIDES_ONCE,
            &format!("the run {call} showed decide"),
            Some(stored),
            Some(seen),
        ),
        _ => Err(case.fail(
            DECIDES_ONCE,
            format!(
                "{call} on a run stored at version {}: {} (answered {:?}); expected exactly once, with the stored run",
                stored.version,
                updated.shown(),
                updated.result
            ),
        )),
    }
}

/// `update` finds nothing where there is nothing: for a key in an empty
/// scope, for an unknown id in a scope that has a run, and for the run's
/// own id through each scope that differs from its scope in exactly one of
/// account, project or target group, `update` is `Ok(NotFound)`, `decide`
/// is never called (its answer would be a write of the next version), the
/// run and its records are untouched, and nothing appears elsewhere.
pub async fn update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide_via(
        Case::new("update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide"),
        store,
        caps,
        Via::Update,
    )
    .await
}

async fn update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide_via<S>(
    case: Case,
    store: Arc<S>,
    _caps: Capabilities,
    via: Via,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let scope = sample::scope();
    let run = sample::run(scope, version(5), Status::Paused);
    let record = insert(case, &*store, &run).await?;
    let ghost = sample::run(sample::scope(), version(5), Status::Paused);
    let mut targets = vec![
        ("a missing run in an empty scope".to_owned(), ghost.key(), None),
        (
            format!("an unknown id in {scope}, which has run {}", run.id),
            scope.run(sample::run(scope, version(5), Status::Paused).id),
            None,
        ),
    ];
    for (what, other) in sample::neighbours(scope) {
        targets.push((
            format!("run {} (which lives in {scope}) through {other}, {what}", run.id),
            other.run(run.id),
            Some(other),
        ));
    }
    let user = UserId::random();
    for (tag, (what, key, other)) in (1..).zip(targets) {
        let updated = update_via(&*store, via, &key, |shown| next_write(shown, tag, user)).await;
        case.ensure(
            matches!(updated.result, Ok(UpdateOutcome::NotFound)) && updated.shown.is_empty(),
            UPDATE_NOT_FOUND,
            || {
                format!(
                    "{via}({key}) of {what}: expected Ok(NotFound) without calling decide, got {:?}; {}",
                    updated.result,
                    updated.shown()
                )
            },
        )?;
        let when = format!("after an update of {what}");
        check::absent(case, &*store, UPDATE_NOT_FOUND, &key, &when).await?;
        if let Some(other) = other {
            check::find(case, &*store, UPDATE_NOT_FOUND, &other, None, &when).await?;
        }
        check::stored(
            case,
            &*store,
            UPDATE_NOT_FOUND,
            &run,
            std::slice::from_ref(&record),
            &when,
        )
        .await?;
    }
    check::find(
        case,
        &*store,
        UPDATE_NOT_FOUND,
        &ghost.scope(),
        None,
        "after an update of a missing run",
    )
    .await
}

/// `update` decides once, on the run as stored, and `Skip` writes nothing.
///
/// Three runs: one just inserted (scheduled, version 1), one changed by a
/// compare-and-swap (version 8, so every field differs from its insert),
/// and one past 2^32 (or at the declared `max_version`). On each, twice,
/// `update` with a `decide` that answers [`Update::Skip`] must call it
/// exactly once with the run exactly as `get` returns it, answer
/// `Ok(Skipped)`, and leave the run and its records as they were.
pub async fn update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing_via(
        Case::new("update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing"),
        store,
        caps,
        Via::Update,
    )
    .await
}

async fn update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing_via<S>(
    case: Case,
    store: Arc<S>,
    caps: Capabilities,
    via: Via,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let fresh = sample::run(sample::scope(), Version::INITIAL, Status::Scheduled);
    let fresh_history = vec![insert(case, &*store, &fresh).await?];
    let changed = sample::run(sample::scope(), version(7), Status::Live);
    let created = insert(case, &*store, &changed).await?;
    let (changed, second) = bump(case, &*store, DECIDES_ONCE, &changed, 11).await?;
    let big_version = ((1 << 32) + 3).min(caps.max_version().get());
    let big = sample::run(sample::scope(), version(big_version), Status::Completed);
    let big_history = vec![insert(case, &*store, &big).await?];
    let runs = [
        ("a run just inserted", fresh, fresh_history),
        ("a run changed by compare_and_swap", changed, vec![created, second]),
        ("a run past version 2^32", big, big_history),
    ];
    for (what, run, history) in &runs {
        for attempt in ["first", "second"] {
            let key = run.key();
            let updated = update_via(&*store, via, &key, |_| Update::Skip).await;
            let call = format!("{via}({key}) of {what} ({attempt} time)");
            decided_once_on(case, &updated, run, &call)?;
            case.ensure(
                matches!(updated.result, Ok(UpdateOutcome::Skipped)),
                SKIP_CHANGES_NOTHING,
                || {
                    format!(
                        "{call}: decide said Skip; expected Ok(Skipped), got {:?}",
                        updated.result
                    )
                },
            )?;
            let when = format!("after {call} where decide said Skip");
            check::stored(case, &*store, SKIP_CHANGES_NOTHING, run, history, &when).await?;
        }
    }
    Ok(())
}

/// `update` writes what `decide` asks for at the version read: on a run
/// from version 1 and one from 2^31-2 (so its writes cross 2^31), four
/// updates each, alternating between the two, each with a `decide` that
/// writes the next version of the run it is shown. Each must see the run as
/// last written, answer `Ok(Written)`, leave the run at exactly one version
/// more, reading back exactly as written, with exactly the one new change
/// record; the other run must not change.
pub async fn update_write_at_the_read_version_bumps_it_by_exactly_one<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    update_write_at_the_read_version_bumps_it_by_exactly_one_via(
        Case::new("update_write_at_the_read_version_bumps_it_by_exactly_one"),
        store,
        caps,
        Via::Update,
    )
    .await
}

async fn update_write_at_the_read_version_bumps_it_by_exactly_one_via<S>(
    case: Case,
    store: Arc<S>,
    _caps: Capabilities,
    via: Via,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let a = sample::run(sample::scope(), Version::INITIAL, Status::Live);
    let b = sample::run(sample::scope(), version((1 << 31) - 2), Status::Paused);
    let mut runs = [a.clone(), b.clone()];
    let mut histories = [
        vec![insert(case, &*store, &a).await?],
        vec![insert(case, &*store, &b).await?],
    ];
    let user = UserId::random();
    for round in 0..4u64 {
        for i in 0..2 {
            let current = runs[i].clone();
            let key = current.key();
            let tag = 100 + round * 2 + i as u64;
            let Some((next, record)) = sample::change(&current, tag, user) else {
                unreachable!("small versions always have a next one")
            };
            let updated = update_via(&*store, via, &key, |shown| next_write(shown, tag, user)).await;
            let call = format!(
                "{via}({key}) writing version {} at version {}",
                next.version, current.version
            );
            decided_once_on(case, &updated, &current, &call)?;
            case.ensure(
                matches!(updated.result, Ok(UpdateOutcome::Written)),
                UPDATE_WRITES,
                || {
                    format!(
                        "{call}, the stored version: expected Ok(Written), got {:?}",
                        updated.result
                    )
                },
            )?;
            let result = store.get(&key).await;
            let seen = case.ok(format!("get({key})"), result)?;
            let seen_version = seen.as_ref().map(|r| r.version.get());
            case.ensure(seen_version == Some(current.version.get() + 1), UPDATE_WRITES, || {
                format!(
                    "{call} answered Ok(Written), then get returned version {seen_version:?}, expected {}",
                    current.version.get() + 1
                )
            })?;
            histories[i].push(record);
            runs[i] = next;
            let when = format!("after {call}");
            check::stored(case, &*store, UPDATE_WRITES, &runs[i], &histories[i], &when).await?;
            let other = 1 - i;
            check::stored(case, &*store, UPDATE_WRITES, &runs[other], &histories[other], &when).await?;
        }
    }
    Ok(())
}

/// `update` refuses a stale write like compare-and-swap does: with the run
/// at version 4, a `decide` answering [`Update::Write`] with `expected`
/// 1, 2, 3 (older) or 5, 6, 40 (newer), and with a run past 2^32 the
/// stale versions that text comparison or truncation to 32 bits would
/// accept, each gets [`StoreError::VersionConflict`] with `expected` the
/// version tried and `current` the stored one; `decide` is called exactly
/// once (a store must not retry on its own: the decision was made on a
/// version that is gone), and neither the run nor its records change.
pub async fn update_write_with_a_stale_version_is_refused_and_changes_nothing<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    update_write_with_a_stale_version_is_refused_and_changes_nothing_via(
        Case::new("update_write_with_a_stale_version_is_refused_and_changes_nothing"),
        store,
        caps,
        Via::Update,
    )
    .await
}

async fn update_write_with_a_stale_version_is_refused_and_changes_nothing_via<S>(
    case: Case,
    store: Arc<S>,
    caps: Capabilities,
    via: Via,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let max = caps.max_version().get();
    let mut small = sample::run(sample::scope(), Version::INITIAL, Status::Live);
    let mut small_history = vec![insert(case, &*store, &small).await?];
    for tag in 1..=3 {
        let (next, record) = bump(case, &*store, UPDATE_STALE, &small, tag).await?;
        small_history.push(record);
        small = next;
    }
    let big_version = ((1 << 32) + 1).min(max - 1);
    let big = sample::run(sample::scope(), version(big_version), Status::Paused);
    let big_history = vec![insert(case, &*store, &big).await?];
    let mut big_tried = vec![
        1,
        big_version / 10,
        big_version - 1,
        big_version.saturating_sub(1 << 31),
        big_version.saturating_sub(1 << 32),
        big_version % (1 << 32),
        big_version + 1,
    ];
    big_tried.retain(|&v| v >= 1 && v < max && v != big_version);
    big_tried.sort_unstable();
    big_tried.dedup();
    let plans: [(&FieldingRun, &[ChangeRecord], Vec<u64>); 2] = [
        (&small, &small_history, vec![1, 2, 3, 5, 6, 40]),
        (&big, &big_history, big_tried),
    ];
    let user = UserId::random();
    for (current, history, tried) in plans {
        for (tag, tried) in (200..).zip(tried) {
            let tried = version(tried);
            let key = current.key();
            let stale = FieldingRun {
                version: tried,
                ..current.clone()
            };
            let updated = update_via(&*store, via, &key, |_| next_write(&stale, tag, user)).await;
            let call = format!("{via}({key}) writing at expected version {tried}");
            decided_once_on(case, &updated, current, &call)?;
            let right = matches!(
                updated.result,
                Err(StoreError::VersionConflict { expected, current: now }) if expected == tried && now == current.version
            );
            case.ensure(right, UPDATE_STALE, || {
                format!(
                    "{call} on a run stored at version {}: expected Err(VersionConflict {{ expected: {tried}, \
                     current: {} }}), got {:?}",
                    current.version, current.version, updated.result
                )
            })?;
            let when = format!("after a refused {call}");
            check::stored(case, &*store, UPDATE_STALE, current, history, &when).await?;
        }
    }
    Ok(())
}

/// A store that answers at once ([`FieldingStore::updates_now`]) keeps there
/// every promise of `update`: the four `update` cases above, each through
/// `updates_now().update_now` on the same store, with the same checks
/// (not found without deciding, one decision on the stored run, `Skip`
/// writes nothing, a write at the version read bumps it by exactly one
/// with its one record, a stale write is refused and changes nothing). A
/// store without it (`None`, the default) has nothing to check here: the
/// service sends it every command through `update`.
pub async fn update_now_keeps_every_promise_of_update<S>(store: Arc<S>, caps: Capabilities) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("update_now_keeps_every_promise_of_update");
    if store.updates_now().is_none() {
        return Ok(());
    }
    let via = Via::UpdateNow;
    update_on_a_missing_run_or_through_another_scope_is_not_found_without_calling_decide_via(
        case,
        store.clone(),
        caps,
        via,
    )
    .await?;
    update_calls_decide_once_with_the_stored_run_and_skip_changes_nothing_via(case, store.clone(), caps, via).await?;
    update_write_at_the_read_version_bumps_it_by_exactly_one_via(case, store.clone(), caps, via).await?;
    update_write_with_a_stale_version_is_refused_and_changes_nothing_via(case, store, caps, via).await
}
