//! The sequential promises: round trip, one run per target group, scope
//! isolation, compare-and-swap, change records.

use std::sync::Arc;

use fielding_core::{ChangeRecord, FieldingRun, FieldingStore, Status, StoreError, UserId, Version};
use tokio::sync::Barrier;

use super::check;
use crate::failure::Case;
use crate::sample::{self, version};
use crate::{Capabilities, CaseFailure};

const ROUND_TRIP: &str =
    "round trip is exact: every field of a run and of its change records comes back as written (timestamps to the millisecond)";

const ONE_PER_TARGET_GROUP: &str =
    "one run per target group: insert refuses a second run for a scope that has one, with AlreadyExists naming that scope, and changes nothing";

const ONE_WINNER: &str = "one run per target group under concurrent inserts: exactly one insert succeeds, the others get AlreadyExists and leave no trace";

const SCOPE_READS: &str =
    "scope is part of the address: through a scope that differs in account, project or target group the run is invisible (no run, no records), as if it did not exist";

const SCOPE_UPDATES: &str =
    "scope is part of the address: compare_and_swap through a scope that differs in account, project or target group is NotFound, whatever the version, and writes nothing";

const CAS_BUMPS: &str =
    "compare-and-swap at the current version succeeds, and the run comes back at exactly that version plus one, as written";

const CAS_STALE: &str =
    "compare-and-swap at any other version is refused with VersionConflict { expected: the version tried, current: the stored version }, and changes neither the run nor its records";

const CAS_MISSING: &str = "compare-and-swap on a run that does not exist is NotFound and creates nothing";

const BIG_VERSIONS: &str =
    "versions past 9, 99, 2^31 and beyond behave the same: compare-and-swap compares whole 64-bit versions (not text, not truncated, not rounded) and round-trips them exactly";

const RECORDS_IN_ORDER: &str =
    "change records: exactly one per version, oldest first, no gaps, each as written; refused writes add none";

/// Inserts `run` with its creation record, which must succeed.
pub(super) async fn insert<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    run: &FieldingRun,
) -> Result<ChangeRecord, CaseFailure> {
    let record = sample::creation(run);
    let result = store.insert(run, &record).await;
    case.ok(
        format!(
            "insert of run {} at version {} into {}",
            run.id,
            run.version,
            run.scope()
        ),
        result,
    )?;
    Ok(record)
}

/// One compare-and-swap that must succeed; returns the new run and record.
pub(super) async fn bump<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    run: &FieldingRun,
    tag: u64,
) -> Result<(FieldingRun, ChangeRecord), CaseFailure> {
    let Some((next, record)) = sample::change(run, tag, UserId::random()) else {
        return Err(case.fail(
            promise,
            format!("cannot bump version {}: it is the maximum", run.version),
        ));
    };
    match store.compare_and_swap(run.version, &next, &record).await {
        Ok(()) => Ok((next, record)),
        Err(err) => Err(case.fail(
            promise,
            format!(
                "compare_and_swap(expected {}) on {} stored at version {} failed: {err:?}",
                run.version,
                run.key(),
                run.version
            ),
        )),
    }
}

/// Round trip: every field of a run comes back identical.
///
/// Inserts one run in each status (versions 1, 2, 10 and 1,000,003;
/// account ids 1 and 2^31-1; timestamps with .001 and .999 milliseconds,
/// from 1999 to 2099) and reads each back with `get`,
/// `find_by_target_group` and `changes`; then changes one and reads the new
/// version and both records back.
pub async fn round_trip_preserves_every_field<S>(store: Arc<S>, _caps: Capabilities) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("round_trip_preserves_every_field");
    let plans = [
        (Status::Scheduled, 1, Some(1)),
        (Status::Live, 2, Some(i64::from(i32::MAX))),
        (Status::Paused, 10, None),
        (Status::Completed, 1_000_003, None),
    ];
    let mut written = Vec::new();
    for (i, (status, v, account)) in plans.into_iter().enumerate() {
        let mut scope = sample::scope();
        if let Some(account) = account {
            scope.account_id = sample::account(account);
        }
        let mut run = sample::run(scope, version(v), status);
        if i == 2 {
            // 1999-12-31T23:59:59.999Z to 2099-12-31T23:59:59.999Z.
            run.start_fielding_at = sample::at(946_684_799_999);
            run.end_fielding_at = sample::at(4_102_444_799_999);
            run.last_changed_at = sample::at(946_684_800_001);
        }
        let record = insert(case, &*store, &run).await?;
        written.push((run, record));
    }
    for (run, record) in &written {
        let when = format!("after inserting it in status {}", status_name(run.status));
        check::stored(case, &*store, ROUND_TRIP, run, std::slice::from_ref(record), &when).await?;
    }
    let (run, first) = &written[1];
    let (next, second) = bump(case, &*store, ROUND_TRIP, run, 7).await?;
    check::stored(
        case,
        &*store,
        ROUND_TRIP,
        &next,
        &[first.clone(), second],
        "after a compare-and-swap",
    )
    .await
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Scheduled => "scheduled",
        Status::Live => "live",
        Status::Paused => "paused",
        Status::Completed => "completed",
    }
}

/// One run per target group: a second insert for the same scope is refused
/// with [`StoreError::AlreadyExists`] naming that scope, and nothing
/// changes; a run for another target group of the same project is still
/// accepted.
pub async fn insert_refuses_a_second_run_for_the_same_target_group<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("insert_refuses_a_second_run_for_the_same_target_group");
    let scope = sample::scope();
    let first = sample::run(scope, Version::INITIAL, Status::Scheduled);
    let record = insert(case, &*store, &first).await?;
    for (status, v) in [(Status::Live, 1), (Status::Scheduled, 7)] {
        let second = sample::run(scope, version(v), status);
        let result = store.insert(&second, &sample::creation(&second)).await;
        match result {
            Err(StoreError::AlreadyExists { scope: named }) if named == scope => {}
            other => {
                return Err(case.fail(
                    ONE_PER_TARGET_GROUP,
                    format!(
                        "a second insert (run {} at version {v}) into {scope}, which has run {}: expected \
                         Err(AlreadyExists {{ scope: {scope} }}), got {other:?}",
                        second.id, first.id
                    ),
                ))
            }
        }
        let when = "after a refused second insert";
        check::stored(
            case,
            &*store,
            ONE_PER_TARGET_GROUP,
            &first,
            std::slice::from_ref(&record),
            when,
        )
        .await?;
        check::absent(case, &*store, ONE_PER_TARGET_GROUP, &scope.run(second.id), when).await?;
    }
    // Not stricter than the promise: the project's other target groups are free.
    let sibling = sample::run(sample::other_target_group(scope), Version::INITIAL, Status::Live);
    let result = store.insert(&sibling, &sample::creation(&sibling)).await;
    case.ensure(result.is_ok(), ONE_PER_TARGET_GROUP, || {
        format!(
            "an insert into {} (same account and project as {scope}, another target group) was refused: {result:?}",
            sibling.scope()
        )
    })
}

/// One run per target group under concurrency: `concurrent_writers` tasks
/// insert different runs for one scope at the same moment, 8 times over;
/// each time exactly one succeeds, the others get
/// [`StoreError::AlreadyExists`], and only the winner's run and record are
/// stored.
pub async fn concurrent_inserts_for_one_target_group_have_exactly_one_winner<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("concurrent_inserts_for_one_target_group_have_exactly_one_winner");
    let writers = caps.concurrent_writers();
    for round in 0..8 {
        let scope = sample::scope();
        let runs: Vec<FieldingRun> = (0..writers)
            .map(|_| sample::run(scope, Version::INITIAL, Status::Scheduled))
            .collect();
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = Vec::new();
        for run in runs.clone() {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                let record = sample::creation(&run);
                barrier.wait().await;
                let mut retries = 0;
                loop {
                    match store.insert(&run, &record).await {
                        Err(err)
                            if err.is_retryable() && caps.retryable_errors_under_contention() && retries < 1000 =>
                        {
                            retries += 1;
                            tokio::task::yield_now().await;
                        }
                        outcome => return outcome,
                    }
                }
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(
                task.await
                    .map_err(|e| case.fail(ONE_WINNER, format!("an inserting task panicked: {e}")))?,
            );
        }
        let winners: Vec<usize> = (0..writers).filter(|&i| outcomes[i].is_ok()).collect();
        let summary = || {
            outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| format!("insert #{i}: {o:?}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        case.ensure(winners.len() == 1, ONE_WINNER, || {
            format!(
                "round {round}: {writers} concurrent inserts into {scope}, {} succeeded: {}",
                winners.len(),
                summary()
            )
        })?;
        for (i, outcome) in outcomes.iter().enumerate() {
            let refused_right = match outcome {
                Ok(()) => true,
                Err(StoreError::AlreadyExists { scope: named }) => *named == scope,
                Err(_) => false,
            };
            case.ensure(refused_right, ONE_WINNER, || {
                format!("round {round}: insert #{i} into {scope} lost but was answered {outcome:?}, not AlreadyExists {{ scope: {scope} }}")
            })?;
        }
        let winner = &runs[winners[0]];
        let when = format!("after round {round} of concurrent inserts");
        check::stored(case, &*store, ONE_WINNER, winner, &[sample::creation(winner)], &when).await?;
        for loser in runs.iter().filter(|r| r.id != winner.id) {
            check::absent(case, &*store, ONE_WINNER, &loser.key(), &when).await?;
        }
    }
    Ok(())
}

/// Scope isolation for reads: through a scope that differs from the run's
/// in exactly one of account, project or target group, `get`,
/// `find_by_target_group` and `changes` see nothing; and since the run is
/// indistinguishable from no run there, each such scope accepts a run of its
/// own, which stays separate from the first.
pub async fn scope_isolation_hides_the_run_from_every_other_scope<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("scope_isolation_hides_the_run_from_every_other_scope");
    let scope = sample::scope();
    let first = sample::run(scope, version(3), Status::Live);
    let created = insert(case, &*store, &first).await?;
    let (ours, changed) = bump(case, &*store, SCOPE_READS, &first, 1).await?;
    let history = [created, changed];
    let neighbours = sample::neighbours(scope);
    for (what, other) in neighbours {
        let when = format!("(the run lives in {scope}; this is {what})");
        check::absent(case, &*store, SCOPE_READS, &other.run(ours.id), &when).await?;
        check::find(case, &*store, SCOPE_READS, &other, None, &when).await?;
    }
    for (what, other) in neighbours {
        let theirs = sample::run(other, Version::INITIAL, Status::Scheduled);
        let result = store.insert(&theirs, &sample::creation(&theirs)).await;
        case.ensure(result.is_ok(), SCOPE_READS, || {
            format!(
                "insert into {other} ({what} than {scope}, which has a run) was refused: {result:?}; the run of \
                 {scope} is visible from {other}"
            )
        })?;
        let when = format!("after inserting a run into {what}");
        check::stored(case, &*store, SCOPE_READS, &theirs, &[sample::creation(&theirs)], &when).await?;
        check::absent(case, &*store, SCOPE_READS, &other.run(ours.id), &when).await?;
        check::absent(case, &*store, SCOPE_READS, &scope.run(theirs.id), &when).await?;
    }
    check::stored(
        case,
        &*store,
        SCOPE_READS,
        &ours,
        &history,
        "after runs were added to every neighbouring scope",
    )
    .await
}

/// Scope isolation for writes: `compare_and_swap` of the run's id through a
/// scope that differs in one of account, project or target group is
/// [`StoreError::NotFound`], at the right version and at a wrong one (a
/// `VersionConflict` would reveal that the run exists and its version), and
/// writes nothing.
pub async fn scope_isolation_compare_and_swap_through_another_scope_is_not_found<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("scope_isolation_compare_and_swap_through_another_scope_is_not_found");
    let scope = sample::scope();
    let run = sample::run(scope, version(5), Status::Paused);
    let record = insert(case, &*store, &run).await?;
    for (what, other) in sample::neighbours(scope) {
        let forged = FieldingRun {
            account_id: other.account_id,
            project_id: other.project_id,
            target_group_id: other.target_group_id,
            ..run.clone()
        };
        for (label, base) in [("the current version", run.version), ("a wrong version", version(2))] {
            let stale = FieldingRun {
                version: base,
                ..forged.clone()
            };
            let Some((next, change)) = sample::change(&stale, 3, UserId::random()) else {
                unreachable!("small versions always have a next one")
            };
            let result = store.compare_and_swap(base, &next, &change).await;
            case.ensure(matches!(result, Err(StoreError::NotFound)), SCOPE_UPDATES, || {
                format!(
                    "compare_and_swap(expected {base}, {label}) of run {} through {other} ({what}; the run lives \
                     in {scope} at version {}): expected Err(NotFound), got {result:?}",
                    run.id, run.version
                )
            })?;
            let when = format!("after a compare_and_swap through {what}");
            check::stored(case, &*store, SCOPE_UPDATES, &run, std::slice::from_ref(&record), &when).await?;
            check::absent(case, &*store, SCOPE_UPDATES, &other.run(run.id), &when).await?;
            check::find(case, &*store, SCOPE_UPDATES, &other, None, &when).await?;
        }
    }
    Ok(())
}

/// Compare-and-swap at the current version succeeds and bumps the version
/// by exactly one, five times in a row; each time the run comes back as
/// written and the history grows by the one record.
pub async fn compare_and_swap_at_the_current_version_bumps_it_by_exactly_one<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("compare_and_swap_at_the_current_version_bumps_it_by_exactly_one");
    let mut current = sample::run(sample::scope(), Version::INITIAL, Status::Live);
    let mut history = vec![insert(case, &*store, &current).await?];
    for tag in 1..=5 {
        let (next, record) = bump(case, &*store, CAS_BUMPS, &current, tag).await?;
        let result = store.get(&current.key()).await;
        let seen = case.ok(format!("get({})", current.key()), result)?;
        let seen_version = seen.as_ref().map(|r| r.version.get());
        case.ensure(seen_version == Some(current.version.get() + 1), CAS_BUMPS, || {
            format!(
                "compare_and_swap(expected {}) succeeded, then get returned version {seen_version:?}, expected {}",
                current.version,
                current.version.get() + 1
            )
        })?;
        history.push(record);
        check::stored(
            case,
            &*store,
            CAS_BUMPS,
            &next,
            &history,
            "after a successful compare_and_swap",
        )
        .await?;
        current = next;
    }
    Ok(())
}

/// A stale compare-and-swap is refused: with the run at version 4, versions
/// 1, 2, 3 (older) and 5, 6, 40 (newer) each get
/// [`StoreError::VersionConflict`] with `expected` the version tried and
/// `current` 4, and neither the run nor its records change.
pub async fn compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("compare_and_swap_with_a_stale_version_is_refused_and_changes_nothing");
    let mut current = sample::run(sample::scope(), Version::INITIAL, Status::Live);
    let mut history = vec![insert(case, &*store, &current).await?];
    for tag in 1..=3 {
        let (next, record) = bump(case, &*store, CAS_BUMPS, &current, tag).await?;
        history.push(record);
        current = next;
    }
    for tried in [1, 2, 3, 5, 6, 40] {
        refused(
            case,
            &*store,
            CAS_STALE,
            &current,
            &history,
            version(tried),
            100 + tried,
        )
        .await?;
    }
    Ok(())
}

/// Asserts that compare-and-swap at `tried` on `current` (stored with
/// `history`) is a conflict naming `current.version`, and changes nothing.
async fn refused<S: FieldingStore + ?Sized>(
    case: Case,
    store: &S,
    promise: &'static str,
    current: &FieldingRun,
    history: &[ChangeRecord],
    tried: Version,
    tag: u64,
) -> Result<(), CaseFailure> {
    let stale = FieldingRun {
        version: tried,
        ..current.clone()
    };
    let Some((next, record)) = sample::change(&stale, tag, UserId::random()) else {
        unreachable!("callers only try versions below the maximum")
    };
    let result = store.compare_and_swap(tried, &next, &record).await;
    let right = matches!(
        result,
        Err(StoreError::VersionConflict { expected, current: now }) if expected == tried && now == current.version
    );
    case.ensure(right, promise, || {
        format!(
            "compare_and_swap(expected {tried}) on a run stored at version {}: expected Err(VersionConflict {{ \
             expected: {tried}, current: {} }}), got {result:?}",
            current.version, current.version
        )
    })?;
    let when = format!("after a refused compare_and_swap at version {tried}");
    check::stored(case, store, promise, current, history, &when).await
}

/// Compare-and-swap on a run that does not exist is
/// [`StoreError::NotFound`] and creates nothing: in an empty scope, and for
/// an unknown id in a scope that has a run.
pub async fn compare_and_swap_on_a_missing_run_is_not_found<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("compare_and_swap_on_a_missing_run_is_not_found");
    let ghost = sample::run(sample::scope(), version(3), Status::Live);
    let existing = sample::run(sample::scope(), version(3), Status::Live);
    let record = insert(case, &*store, &existing).await?;
    let unknown_id = sample::run(existing.scope(), version(3), Status::Live);
    for (what, missing) in [
        ("in an empty scope", &ghost),
        ("with an unknown id in a scope that has a run", &unknown_id),
    ] {
        let Some((next, change)) = sample::change(missing, 1, UserId::random()) else {
            unreachable!("version 3 has a next one")
        };
        let result = store.compare_and_swap(missing.version, &next, &change).await;
        case.ensure(matches!(result, Err(StoreError::NotFound)), CAS_MISSING, || {
            format!(
                "compare_and_swap(expected {}) of {} ({what}): expected Err(NotFound), got {result:?}",
                missing.version,
                missing.key()
            )
        })?;
        let when = format!("after a compare_and_swap of a missing run {what}");
        check::absent(case, &*store, CAS_MISSING, &missing.key(), &when).await?;
    }
    check::find(
        case,
        &*store,
        CAS_MISSING,
        &ghost.scope(),
        None,
        "after a compare_and_swap of a missing run",
    )
    .await?;
    check::stored(
        case,
        &*store,
        CAS_MISSING,
        &existing,
        std::slice::from_ref(&record),
        "after a compare_and_swap of another id in its scope",
    )
    .await
}

/// The version boundaries the big-version case crosses, as `(name, from)`:
/// the run is stored at `from` and bumped to `from + 1`.
const BOUNDARIES: [(&str, u64); 8] = [
    ("9 -> 10 (two digits)", 9),
    ("99 -> 100 (three digits)", 99),
    ("999 -> 1000 (four digits)", 999),
    ("2^31-1 -> 2^31 (past i32)", (1 << 31) - 1),
    ("2^32-1 -> 2^32 (past u32)", (1 << 32) - 1),
    ("2^53 -> 2^53+1 (past the integers an f64 holds exactly)", 1 << 53),
    ("10^18-1 -> 10^18 (19 digits)", 999_999_999_999_999_999),
    ("i64::MAX-1 -> i64::MAX (the largest version)", (i64::MAX - 1) as u64),
];

/// Versions past 9, 99 and 2^31 behave the same.
///
/// For each boundary up to the store's
/// [`max_version`](Capabilities::max_version) (9→10, 99→100, 999→1000,
/// 2^31-1→2^31, 2^32-1→2^32, 2^53→2^53+1, 10^18-1→10^18, i64::MAX-1→i64::MAX;
/// and max-1→max for a store that declares a lower maximum), the run is
/// inserted just below it (the trait allows an insert at any version) and:
/// it round-trips; compare-and-swap across the boundary succeeds; then every
/// stale version a broken comparison would accept is refused with the exact
/// current version (the previous version, which compares greater as text;
/// 1 and a tenth of the version, text prefixes; the version minus 2^31 and
/// 2^32, equal after truncation to 32 bits; the version plus one and plus
/// 2^32); and the next compare-and-swap still works.
pub async fn compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31<S>(
    store: Arc<S>,
    caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("compare_and_swap_behaves_the_same_past_9_99_and_2_pow_31");
    let max = caps.max_version().get();
    let mut boundaries: Vec<(String, u64)> = BOUNDARIES
        .iter()
        .filter(|(_, from)| *from < max)
        .map(|(name, from)| ((*name).to_owned(), *from))
        .collect();
    if max < Version::MAX.get() {
        boundaries.push((format!("{} -> {max} (the declared max_version)", max - 1), max - 1));
    }
    for (name, from) in boundaries {
        let run = sample::run(sample::scope(), version(from), Status::Live);
        let record = insert(case, &*store, &run).await?;
        let when = format!("after inserting at version {from} (boundary {name})");
        check::stored(case, &*store, BIG_VERSIONS, &run, std::slice::from_ref(&record), &when).await?;
        let (crossed, second) = bump(case, &*store, BIG_VERSIONS, &run, 1).await?;
        let mut history = vec![record, second];
        let when = format!("after compare_and_swap across boundary {name}");
        check::stored(case, &*store, BIG_VERSIONS, &crossed, &history, &when).await?;

        let current = crossed.version.get();
        let mut stale: Vec<u64> = vec![
            from,
            1,
            current / 10,
            current.saturating_sub(1 << 31),
            current.saturating_sub(1 << 32),
            current % (1 << 32),
            current + 1,
            current.saturating_add(1 << 32),
        ];
        stale.retain(|&v| v >= 1 && v < max && v != current);
        stale.sort_unstable();
        stale.dedup();
        for (i, tried) in stale.into_iter().enumerate() {
            refused(
                case,
                &*store,
                BIG_VERSIONS,
                &crossed,
                &history,
                version(tried),
                10 + i as u64,
            )
            .await?;
        }
        if current < max {
            let (next, third) = bump(case, &*store, BIG_VERSIONS, &crossed, 99).await?;
            history.push(third);
            let when = format!("after a second compare_and_swap past boundary {name}");
            check::stored(case, &*store, BIG_VERSIONS, &next, &history, &when).await?;
        }
    }
    Ok(())
}

/// Change records: exactly one per version, in order, no gaps.
///
/// Two runs (one from version 1, one from 98, so its history crosses 99→100
/// and sorts wrongly as text) are changed alternately five times each, with
/// a refused stale write and a write to a missing run in between; each
/// run's `changes` is exactly its own records, oldest first, contiguous.
pub async fn change_records_one_per_version_in_order_without_gaps<S>(
    store: Arc<S>,
    _caps: Capabilities,
) -> Result<(), CaseFailure>
where
    S: FieldingStore + ?Sized + 'static,
{
    let case = Case::new("change_records_one_per_version_in_order_without_gaps");
    let a = sample::run(sample::scope(), Version::INITIAL, Status::Live);
    let b = sample::run(sample::scope(), version(98), Status::Paused);
    let mut runs = [a.clone(), b.clone()];
    let mut histories = [
        vec![insert(case, &*store, &a).await?],
        vec![insert(case, &*store, &b).await?],
    ];
    for round in 0..5u64 {
        for i in 0..2 {
            let (next, record) = bump(case, &*store, RECORDS_IN_ORDER, &runs[i], round * 2 + i as u64).await?;
            histories[i].push(record);
            runs[i] = next;
        }
        // A refused write and a write to a missing run add no record.
        let stale = FieldingRun {
            version: version(runs[0].version.get() - 1),
            ..runs[0].clone()
        };
        if let Some((next, record)) = sample::change(&stale, 1000 + round, UserId::random()) {
            let result = store.compare_and_swap(stale.version, &next, &record).await;
            case.ensure(
                matches!(result, Err(StoreError::VersionConflict { .. })),
                CAS_STALE,
                || {
                    format!(
                    "compare_and_swap(expected {}) on a run at version {}: expected VersionConflict, got {result:?}",
                    stale.version, runs[0].version
                )
                },
            )?;
        }
        let ghost = sample::run(sample::scope(), version(2), Status::Live);
        if let Some((next, record)) = sample::change(&ghost, 2000 + round, UserId::random()) {
            let result = store.compare_and_swap(ghost.version, &next, &record).await;
            case.ensure(matches!(result, Err(StoreError::NotFound)), CAS_MISSING, || {
                format!("compare_and_swap of a missing run: expected NotFound, got {result:?}")
            })?;
        }
        for i in 0..2 {
            let when = format!("after round {round} of alternating writes");
            check::changes(case, &*store, RECORDS_IN_ORDER, &runs[i].key(), &histories[i], &when).await?;
        }
    }
    for i in 0..2 {
        check::stored(case, &*store, RECORDS_IN_ORDER, &runs[i], &histories[i], "at the end").await?;
    }
    Ok(())
}
