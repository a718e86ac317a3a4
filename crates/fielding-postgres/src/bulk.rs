//! The operations on bulk jobs (`<schema>.fielding_bulk_jobs` and
//! `<schema>.fielding_bulk_job_items`), on the connection the store hands
//! in.
//!
//! A batch (`apply_items`) is one transaction of a constant number of
//! statements however many items it has: read the items' outcomes and the
//! pending items' runs (no lock), lock the job row (checking the token),
//! then one statement writing every run, change record and outcome from
//! arrays (`UNNEST`). Why in that order: see `apply_in`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fielding_core::{
    AccountId, BulkAction, BulkClaim, BulkItem, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus,
    ChangeRecord, ClaimToken, DecideItem, FieldingRun, IdempotencyKey, ItemUpdate, JobId, JobTraceId, ProjectId,
    StoreError, TargetGroupId, Timestamp, UserId, Version,
};
use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::{Connection, Transaction};

use crate::codec::{account, column, decode_run_at, millis, ChangeArrays, RunArrays};
use crate::error::backend;
use crate::jobs::{id_taken, key_without_job, settle_taken_key, CREATE_ATTEMPTS};
use crate::sql::BulkStatements;

/// The unique key on the bulk job id.
const JOB_ID_KEY: &str = "fielding_bulk_jobs_pkey";

/// The column of a batch's read where the run's columns start (after the
/// target group and its outcome).
const RUN_AT: usize = 2;

/// Opens a batch's transaction, in the same round trip as `BEGIN`, with
/// a plan made for each statement's actual arrays. Left to choose, the
/// server switches a prepared statement to a generic plan after five runs,
/// and for these that plan is blind to the arrays' lengths: it scans every
/// run of the project and every item of the job per batch instead of
/// looking up the batch's rows (measured: 4 ms for a batch of 100 on a
/// custom plan, 70 ms on the generic one). Planning each statement anew
/// costs far less than that.
const BEGIN_BATCH: &str = "BEGIN; SET LOCAL plan_cache_mode = force_custom_plan";

pub(crate) async fn create(
    conn: &mut PgConnection,
    sql: &BulkStatements,
    job: &BulkJob,
) -> Result<BulkJobCreated, StoreError> {
    let op = "create_bulk_job";
    let target_groups: Vec<&str> = job.items.iter().map(|item| item.target_group_id.as_str()).collect();
    let outcomes: Vec<Option<&str>> = job.items.iter().map(|item| item.outcome.map(|o| o.as_str())).collect();
    for _ in 0..CREATE_ATTEMPTS {
        let inserted = sqlx::query_as::<_, (i64, i64)>(&sql.create)
            .bind(job.id.as_str())
            .bind(account(job.account_id))
            .bind(job.project_id.as_str())
            .bind(job.action.as_str())
            .bind(job.idempotency_key.as_str())
            .bind(job.created_at.as_datetime())
            .bind(*job.created_by.as_uuid())
            .bind(job.trace_id.as_ref().map(JobTraceId::as_str))
            .bind(job.status.as_str())
            .bind(&target_groups)
            .bind(&outcomes)
            .fetch_one(&mut *conn)
            .await;
        let taken = match inserted {
            Ok((1, items)) if usize::try_from(items).ok() == Some(job.items.len()) => {
                return Ok(BulkJobCreated::Created)
            }
            Ok((1, items)) => {
                return Err(StoreError::internal(format!(
                    "{op} of {} recorded {items} items instead of {}",
                    job.id,
                    job.items.len()
                )))
            }
            Ok(_) => None,
            Err(err) => Some(id_taken(op, err, JOB_ID_KEY)?),
        };
        // A new statement, so under READ COMMITTED it sees the job of a
        // concurrent creator: the insert above waited for it to commit.
        let existing = sqlx::query(&sql.by_key)
            .bind(account(job.account_id))
            .bind(job.idempotency_key.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| backend(op, e))?;
        let existing = existing.as_ref().map(decode_job).transpose()?;
        if let Some(answer) = settle_taken_key(op, "bulk job", &job.id, existing, taken) {
            return answer.map(BulkJobCreated::Existing);
        }
    }
    Err(key_without_job(op, "bulk job", &job.id))
}

pub(crate) async fn get(
    conn: &mut PgConnection,
    sql: &BulkStatements,
    key: &BulkJobKey,
) -> Result<Option<BulkJob>, StoreError> {
    let row = sqlx::query(&sql.get)
        .bind(key.id.as_str())
        .bind(account(key.account_id))
        .bind(key.project_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend("get_bulk_job", e))?;
    row.as_ref().map(decode_job).transpose()
}

/// One statement: the claim and the job's items.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    sql: &BulkStatements,
    now: Timestamp,
    claim: &BulkClaim,
) -> Result<Option<BulkJob>, StoreError> {
    let row = sqlx::query(&sql.claim)
        .bind(*claim.token.as_uuid())
        .bind(claim.lease_until.as_datetime())
        .bind(now.as_datetime())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend("claim_bulk_job", e))?;
    row.as_ref().map(decode_job).transpose()
}

pub(crate) async fn renew(
    conn: &mut PgConnection,
    sql: &BulkStatements,
    key: &BulkJobKey,
    claim: &BulkClaim,
) -> Result<bool, StoreError> {
    let done = sqlx::query(&sql.renew)
        .bind(key.id.as_str())
        .bind(account(key.account_id))
        .bind(key.project_id.as_str())
        .bind(*claim.token.as_uuid())
        .bind(claim.lease_until.as_datetime())
        .execute(&mut *conn)
        .await
        .map_err(|e| backend("renew_bulk_claim", e))?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn finish(
    conn: &mut PgConnection,
    sql: &BulkStatements,
    key: &BulkJobKey,
    token: ClaimToken,
    status: BulkJobStatus,
    finished_at: Timestamp,
) -> Result<bool, StoreError> {
    if status == BulkJobStatus::Processing {
        return Err(StoreError::internal(format!(
            "finish_bulk_job of {key} with status Processing: a finished job is Completed or Failed"
        )));
    }
    let done = sqlx::query(&sql.finish)
        .bind(key.id.as_str())
        .bind(account(key.account_id))
        .bind(key.project_id.as_str())
        .bind(*token.as_uuid())
        .bind(status.as_str())
        .bind(finished_at.as_datetime())
        .execute(&mut *conn)
        .await
        .map_err(|e| backend("finish_bulk_job", e))?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn expire(
    conn: &mut PgConnection,
    sql: &BulkStatements,
    finished_before: Timestamp,
    limit: usize,
) -> Result<usize, StoreError> {
    // PostgreSQL's LIMIT is a bigint; anything larger means "no limit".
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let done = sqlx::query(&sql.expire)
        .bind(finished_before.as_datetime())
        .bind(limit)
        .execute(&mut *conn)
        .await
        .map_err(|e| backend("expire_bulk_jobs", e))?;
    // At most `limit` rows, which came from a `usize`.
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}

/// `apply_bulk_items`: one transaction, committed only when every write
/// of the batch went in, rolled back on any error. Answers each item's
/// outcome and whether any run was written.
pub(crate) async fn apply_items(
    conn: &mut PgConnection,
    sql: &BulkStatements,
    key: &BulkJobKey,
    token: ClaimToken,
    items: &[TargetGroupId],
    decide: DecideItem<'_>,
) -> Result<(Vec<(TargetGroupId, BulkItemOutcome)>, bool), StoreError> {
    let op = "apply_bulk_items";
    let mut tx = conn.begin_with(BEGIN_BATCH).await.map_err(|e| backend(op, e))?;
    let outcome = apply_in(&mut tx, sql, key, token, items, decide).await;
    end(tx, op, outcome).await
}

/// Commits after `Ok`, rolls back after `Err` (explicitly, so the
/// connection is clean before it is reused).
async fn end<T>(
    tx: Transaction<'_, Postgres>,
    op: &'static str,
    outcome: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match outcome {
        Ok(value) => tx.commit().await.map(|()| value).map_err(|e| backend(op, e)),
        Err(err) => match tx.rollback().await {
            Ok(()) => Err(err),
            // A backend error already says the connection is suspect;
            // anything else must not hide that the rollback failed.
            Err(_) if matches!(err, StoreError::Backend { .. }) => Err(err),
            Err(rollback) => Err(backend(op, rollback)),
        },
    }
}

/// A batch, in this order: read, lock, decide, write.
///
/// **Why the reads come first.** The change feed orders records by the id
/// of the transaction that wrote them (see `feed`), and PostgreSQL gives a
/// transaction its id at its first write *or row lock*, such as the job
/// row's `FOR UPDATE`. Had the batch locked first, a single-run write
/// could commit version n of one of its runs, under a later transaction
/// id, between the lock and the read; the batch would then write version
/// n + 1 under the earlier id, and the feed would list the run's n + 1
/// before its n. Reading every run before anything takes an id means each
/// version the batch builds on was committed by a transaction whose id is
/// lower than the batch's; the write's compare-and-swap (at the version
/// read) makes sure nothing newer came in between, and when something did
/// the batch writes nothing and answers `VersionConflict` (the caller
/// decides again).
///
/// **Why checking the token after the reads is still safe.** A token
/// changes only by a claim, and a claim replaces it for good (every claim
/// makes a new one). If the token still holds the job when its row is
/// locked, it held it all along, so no other holder recorded outcomes
/// since our read of them; the lock, held to commit, makes two batches of
/// one job write one after the other, and the write's guards (versions,
/// `outcome IS NULL`) catch what a concurrent batch of the same holder did
/// since our reads. A stale holder is refused before it decides anything.
async fn apply_in(
    tx: &mut PgConnection,
    sql: &BulkStatements,
    key: &BulkJobKey,
    token: ClaimToken,
    items: &[TargetGroupId],
    decide: DecideItem<'_>,
) -> Result<(Vec<(TargetGroupId, BulkItemOutcome)>, bool), StoreError> {
    let op = "apply_bulk_items";
    let mut distinct: Vec<TargetGroupId> = items.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let (mut recorded, runs) = read_items(tx, sql, key, &distinct).await?;

    // The job row, locked until commit, where the token still holds it.
    let held = sqlx::query(&sql.lock)
        .bind(key.id.as_str())
        .bind(account(key.account_id))
        .bind(key.project_id.as_str())
        .bind(*token.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(op, e))?;
    if held.is_none() {
        return Err(StoreError::ClaimLost { key: *key, token });
    }
    if !recorded.values().any(Option::is_none) {
        return answer(items, &recorded).map(|outcomes| (outcomes, false));
    }

    let mut writes: Vec<(FieldingRun, Version, ChangeRecord)> = Vec::new();
    let mut decided: Vec<&str> = Vec::new();
    let mut decided_outcomes: Vec<&'static str> = Vec::new();
    // In the order asked; an item asked twice is decided once, the first
    // time.
    for target_group_id in items {
        if recorded.get(target_group_id) != Some(&None) {
            continue;
        }
        let current = runs.get(target_group_id);
        let outcome = match decide(*target_group_id, current) {
            ItemUpdate::Record(outcome) => outcome,
            ItemUpdate::Write { expected, run, change } => {
                let current = current.ok_or_else(|| {
                    StoreError::internal(format!("decide asked to write {} where there is no run", run.key()))
                })?;
                if run.key() != current.key() {
                    return Err(StoreError::internal(format!(
                        "decide asked to write {} in place of {}",
                        run.key(),
                        current.key()
                    )));
                }
                if current.version != expected {
                    return Err(StoreError::VersionConflict {
                        expected,
                        current: current.version,
                    });
                }
                writes.push((run, expected, change));
                BulkItemOutcome::Updated
            }
        };
        recorded.insert(*target_group_id, Some(outcome));
        decided.push(target_group_id.as_str());
        decided_outcomes.push(outcome.as_str());
    }

    // By run id as the text column sorts (`COLLATE "C"`: bytes): the order
    // the write locks the runs in (see the statement).
    writes.sort_unstable_by(|a, b| a.0.id.as_str().cmp(b.0.id.as_str()));
    let mut run_arrays = RunArrays::default();
    let mut change_arrays = ChangeArrays::default();
    for (run, expected, change) in &writes {
        run_arrays.push(run, *expected);
        change_arrays.push(change);
    }
    let query = sqlx::query(&sql.write)
        .bind(account(key.account_id))
        .bind(key.project_id.as_str())
        .bind(key.id.as_str());
    let row = change_arrays
        .bind(run_arrays.bind(query))
        .bind(&decided)
        .bind(&decided_outcomes)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| backend(op, e))?;
    let (updated, records, outcomes): (i64, i64, i64) = (column(&row, 0)?, column(&row, 1)?, column(&row, 2)?);
    let expect = |n: i64, want: usize| usize::try_from(n).ok() == Some(want);
    if !expect(updated, writes.len()) {
        // A run moved since it was read (or inconsistent input).
        return Err(moved_run(tx, sql, key, &writes).await);
    }
    if !expect(outcomes, decided.len()) {
        return Err(StoreError::Backend {
            message: format!(
                "{op} of {key}: another batch of the same claim recorded some of these items \
                 while this one decided them; nothing of this batch was written"
            ),
            retryable: true,
            source: None,
        });
    }
    if !expect(records, writes.len()) {
        // Only inconsistent input (a change record of another run, say)
        // gets here.
        return Err(StoreError::internal(format!(
            "{op} of {key}: wrote {updated} runs and {records} change records instead of {} of each",
            writes.len()
        )));
    }
    answer(items, &recorded).map(|outcomes| (outcomes, !writes.is_empty()))
}

/// What a batch reads before it locks anything: the recorded outcome of
/// each target group (`None`: pending) and the pending ones' runs.
type ItemsRead = (
    HashMap<TargetGroupId, Option<BulkItemOutcome>>,
    HashMap<TargetGroupId, FieldingRun>,
);

/// The recorded outcome of each of `distinct` (all must be items of the
/// job) and the runs of the pending ones, by target group: one statement,
/// no lock.
async fn read_items(
    tx: &mut PgConnection,
    sql: &BulkStatements,
    key: &BulkJobKey,
    distinct: &[TargetGroupId],
) -> Result<ItemsRead, StoreError> {
    let names: Vec<&str> = distinct.iter().map(TargetGroupId::as_str).collect();
    let rows = sqlx::query(&sql.read)
        .bind(key.id.as_str())
        .bind(account(key.account_id))
        .bind(key.project_id.as_str())
        .bind(&names)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend("apply_bulk_items", e))?;
    let mut recorded = HashMap::with_capacity(rows.len());
    let mut runs = HashMap::new();
    for row in &rows {
        let target_group_id = target_group(&column::<String>(row, 0)?)?;
        let outcome = column::<Option<String>>(row, 1)?
            .map(|text| item_outcome(&text))
            .transpose()?;
        if outcome.is_none() && column::<Option<String>>(row, RUN_AT)?.is_some() {
            runs.insert(target_group_id, decode_run_at(row, RUN_AT)?);
        }
        recorded.insert(target_group_id, outcome);
    }
    if let Some(stranger) = distinct.iter().find(|tg| !recorded.contains_key(*tg)) {
        return Err(StoreError::internal(format!(
            "target group {stranger} is not an item of {key}"
        )));
    }
    Ok((recorded, runs))
}

/// Why the batch's write updated fewer runs than it meant to: a run whose
/// version is no longer the one the batch read (`VersionConflict`, read
/// anew in this transaction), else an internal error.
async fn moved_run(
    tx: &mut PgConnection,
    sql: &BulkStatements,
    key: &BulkJobKey,
    writes: &[(FieldingRun, Version, ChangeRecord)],
) -> StoreError {
    let ids: Vec<&str> = writes.iter().map(|(run, _, _)| run.id.as_str()).collect();
    let current: Result<Vec<(String, i64)>, _> = sqlx::query_as(&sql.versions).bind(&ids).fetch_all(&mut *tx).await;
    let current: HashMap<String, i64> = match current {
        Ok(rows) => rows.into_iter().collect(),
        Err(err) => return backend("apply_bulk_items", err),
    };
    for (run, expected, _) in writes {
        let Some(now) = current.get(run.id.as_str()) else {
            continue;
        };
        match crate::codec::version(*now) {
            Ok(now) if now != *expected => {
                return StoreError::VersionConflict {
                    expected: *expected,
                    current: now,
                }
            }
            Ok(_) => {}
            Err(err) => return err,
        }
    }
    StoreError::internal(format!(
        "apply_bulk_items of {key}: the write missed runs that are at the versions it expected"
    ))
}

/// Each of `items`' outcome, in their order.
fn answer(
    items: &[TargetGroupId],
    recorded: &HashMap<TargetGroupId, Option<BulkItemOutcome>>,
) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
    items
        .iter()
        .map(|target_group_id| match recorded.get(target_group_id) {
            Some(Some(outcome)) => Ok((*target_group_id, *outcome)),
            _ => Err(StoreError::internal(format!(
                "target group {target_group_id} has no outcome after its batch"
            ))),
        })
        .collect()
}

/// A bulk job row as the statements select it: the job's columns, then its
/// items' target groups and outcomes as two arrays in submission order.
fn decode_job(row: &PgRow) -> Result<BulkJob, StoreError> {
    let id: String = column(row, 0)?;
    let action: String = column(row, 3)?;
    let idempotency_key: String = column(row, 4)?;
    let trace_id: Option<String> = column(row, 7)?;
    let status: String = column(row, 8)?;
    let target_groups: Vec<String> = column(row, 9)?;
    let outcomes: Vec<Option<String>> = column(row, 10)?;
    if target_groups.len() != outcomes.len() {
        return Err(StoreError::corrupt(format!(
            "bulk job {id}: {} target groups but {} outcomes",
            target_groups.len(),
            outcomes.len()
        )));
    }
    let items = target_groups
        .iter()
        .zip(&outcomes)
        .map(|(target_group_id, outcome)| {
            Ok(BulkItem {
                target_group_id: target_group(target_group_id)?,
                outcome: outcome.as_deref().map(item_outcome).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(BulkJob {
        id: JobId::parse(&id).map_err(corrupt_id)?,
        account_id: AccountId::new(i64::from(column::<i32>(row, 1)?)).map_err(corrupt_id)?,
        project_id: ProjectId::parse(&column::<String>(row, 2)?).map_err(corrupt_id)?,
        action: BulkAction::parse(&action)
            .ok_or_else(|| StoreError::corrupt(format!("stored bulk action {action:?} is unknown")))?,
        idempotency_key: IdempotencyKey::parse(&idempotency_key)
            .map_err(|e| StoreError::corrupt(format!("stored idempotency key is invalid: {e}")))?,
        created_at: fielding_core::codec::timestamp("created_at", millis(column::<DateTime<Utc>>(row, 5)?))?,
        created_by: UserId::new(column(row, 6)?),
        trace_id: trace_id
            .map(|text| {
                JobTraceId::parse(&text)
                    .ok_or_else(|| StoreError::corrupt(format!("stored trace id {text:?} is invalid")))
            })
            .transpose()?,
        status: BulkJobStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt(format!("stored bulk job status {status:?} is unknown")))?,
        items,
    })
}

fn target_group(text: &str) -> Result<TargetGroupId, StoreError> {
    TargetGroupId::parse(text).map_err(corrupt_id)
}

fn item_outcome(text: &str) -> Result<BulkItemOutcome, StoreError> {
    BulkItemOutcome::parse(text).ok_or_else(|| StoreError::corrupt(format!("stored item outcome {text:?} is unknown")))
}

fn corrupt_id(err: fielding_core::InvalidId) -> StoreError {
    StoreError::corrupt(format!("stored {} is invalid: {}", err.field(), err.reason()))
}
