//! The operations on bulk jobs (`create_bulk_job`, `get_bulk_job`,
//! `claim_bulk_job`, `renew_bulk_claim`, `apply_bulk_items`,
//! `finish_bulk_job`, `expire_bulk_jobs`): their SQL text, the parameters
//! they bind and how fetched rows become a [`BulkJob`].
//!
//! Like `runs` and `jobs`, every function runs on a worker thread that owns
//! the connection. The writes are [`BulkWrite`]s: the writer thread runs
//! them alone or inside its group's transaction, like every other write.
//!
//! `apply_bulk_items` is two steps. [`read_batch`] (on the writer thread,
//! between write transactions) checks the claim and fetches each item's
//! outcome and each pending item's run; the caller decides on its own task;
//! then one [`BulkWrite::Apply`] checks the claim again and writes every
//! run (compare-and-swap at the version the decision was made on), change
//! record and outcome of the batch in one transaction, or nothing.

use fielding_core::codec::{timestamp, uuid_text};
use fielding_core::{
    AccountId, BulkAction, BulkClaim, BulkItem, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey, BulkJobStatus,
    ChangeRecord, ClaimToken, FieldingRun, IdempotencyKey, InvalidId, JobId, JobTraceId, ProjectId, Scope, StoreError,
    TargetGroupId, Timestamp, UserId, Version,
};
use rusqlite::{ffi, params, Connection, OptionalExtension, Row};

use crate::codec::{opt_text, refused, text, UserText};
use crate::error::{extended_code, store_error};
use crate::feed::Positions;
use crate::runs;
use crate::savepoint::in_savepoint;
use crate::snapshot::snapshot;

/// The columns of `fielding_bulk_jobs` that [`read_job`] reads, in order.
const JOB_COLUMNS: &str =
    "id, account_id, project_id, action, idempotency_key, created_at_ms, created_by, trace_id, status";

/// Records a job unless the account has a bulk job under its key: the
/// unique key `(account_id, idempotency_key)` decides, so no
/// check-then-insert gap. A job handed over already finished counts as
/// finished when it was created.
const INSERT_JOB: &str = "INSERT INTO fielding_bulk_jobs (id, account_id, project_id, action, idempotency_key, \
                          created_at_ms, created_by, trace_id, status, finished_at_ms) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                          CASE WHEN ?9 = 'Processing' THEN NULL ELSE ?6 END) \
                          ON CONFLICT (account_id, idempotency_key) DO NOTHING";

const INSERT_ITEM: &str =
    "INSERT INTO fielding_bulk_job_items (job_id, position, target_group_id, outcome) VALUES (?1, ?2, ?3, ?4)";

/// The items of a job in submission order (the primary key's order).
const ITEMS_OF_JOB: &str =
    "SELECT target_group_id, outcome FROM fielding_bulk_job_items WHERE job_id = ?1 ORDER BY position";

/// The oldest processing job nobody holds at `?1`. The literal
/// `'Processing'` lets SQLite use the partial index
/// `fielding_bulk_jobs_claimable`; the held jobs it walks past are those
/// being worked (a few per runner) and those a runner holds back after
/// failures, each a row read inside the write lock.
const CLAIMABLE: &str = "SELECT id FROM fielding_bulk_jobs \
                         WHERE status = 'Processing' AND (lease_until_ms IS NULL OR lease_until_ms <= ?1) \
                         ORDER BY created_at_ms, id LIMIT 1";

const TAKE: &str = "UPDATE fielding_bulk_jobs SET claim_token = ?2, lease_until_ms = ?3 WHERE id = ?1";

/// The condition "the token `?4` holds the job `?1` of account `?2` and
/// project `?3`".
const HELD: &str = "id = ?1 AND account_id = ?2 AND project_id = ?3 AND status = 'Processing' AND claim_token = ?4";

/// An item's position and outcome, through the `(job_id, target_group_id)`
/// unique index.
const ITEM_BY_TARGET_GROUP: &str =
    "SELECT position, outcome FROM fielding_bulk_job_items WHERE job_id = ?1 AND target_group_id = ?2";

/// Records an item's outcome unless it already has one.
const SET_OUTCOME: &str = "UPDATE fielding_bulk_job_items SET outcome = ?3 \
                           WHERE job_id = ?1 AND position = ?2 AND outcome IS NULL";

const OUTCOME_AT: &str = "SELECT outcome FROM fielding_bulk_job_items WHERE job_id = ?1 AND position = ?2";

/// The finished jobs to expire: finished strictly before `?1`, oldest
/// first, at most `?2`, through the partial index on `finished_at_ms`. The
/// status test is a second guard: a processing job has no finish time.
const EXPIRED: &str = "SELECT id FROM fielding_bulk_jobs \
                       WHERE finished_at_ms < ?1 AND status <> 'Processing' \
                       ORDER BY finished_at_ms, id LIMIT ?2";

fn held_sql(select_or_update: &str) -> String {
    format!("{select_or_update} WHERE {HELD}")
}

fn job_sql(condition: &str) -> String {
    format!("SELECT {JOB_COLUMNS} FROM fielding_bulk_jobs WHERE {condition}")
}

/// A stored id the core refuses, as corrupt data.
fn corrupt_id(err: InvalidId) -> StoreError {
    StoreError::corrupt(format!("stored {} is invalid: {}", err.field(), err.reason()))
}

fn token_text(token: &ClaimToken) -> UserText {
    // A token is a UUID like a user id: the same allocation-free text.
    UserText::new(token.as_uuid())
}

/// A job's columns as fetched, before the core's types check them.
struct JobColumns<'r> {
    id: &'r str,
    account_id: i64,
    project_id: &'r str,
    action: &'r str,
    idempotency_key: &'r str,
    created_at: i64,
    created_by: &'r str,
    trace_id: Option<&'r str>,
    status: &'r str,
}

impl JobColumns<'_> {
    /// The job (without its items), checked strictly: an unknown name or
    /// a bad id is corrupt data.
    fn decode(self) -> Result<BulkJob, StoreError> {
        let corrupt = |what: &str, value: &str| StoreError::corrupt(format!("stored {what} {value:?} is unknown"));
        Ok(BulkJob {
            id: JobId::parse(self.id).map_err(corrupt_id)?,
            account_id: AccountId::new(self.account_id).map_err(corrupt_id)?,
            project_id: ProjectId::parse(self.project_id).map_err(corrupt_id)?,
            action: BulkAction::parse(self.action).ok_or_else(|| corrupt("bulk action", self.action))?,
            idempotency_key: IdempotencyKey::parse(self.idempotency_key)
                .map_err(|e| StoreError::corrupt(format!("stored idempotency key is invalid: {}", e.reason)))?,
            created_at: timestamp("created_at", self.created_at)?,
            created_by: UserId::new(uuid_text("created_by", self.created_by)?),
            trace_id: self
                .trace_id
                .map(|t| {
                    JobTraceId::parse(t).ok_or_else(|| StoreError::corrupt(format!("stored trace id {t:?} is invalid")))
                })
                .transpose()?,
            status: BulkJobStatus::parse(self.status).ok_or_else(|| corrupt("bulk job status", self.status))?,
            items: Vec::new(),
        })
    }
}

/// A job without its items from a row of [`JOB_COLUMNS`].
fn read_job(row: &Row<'_>) -> rusqlite::Result<BulkJob> {
    JobColumns {
        id: text(row, 0)?,
        account_id: row.get(1)?,
        project_id: text(row, 2)?,
        action: text(row, 3)?,
        idempotency_key: text(row, 4)?,
        created_at: row.get(5)?,
        created_by: text(row, 6)?,
        trace_id: opt_text(row, 7)?,
        status: text(row, 8)?,
    }
    .decode()
    .map_err(refused)
}

/// An item from a row of [`ITEMS_OF_JOB`].
fn read_item(row: &Row<'_>) -> rusqlite::Result<BulkItem> {
    let target_group_id = TargetGroupId::parse(text(row, 0)?).map_err(|e| refused(corrupt_id(e)))?;
    let outcome = opt_text(row, 1)?.map(outcome).transpose().map_err(refused)?;
    Ok(BulkItem {
        target_group_id,
        outcome,
    })
}

fn outcome(stored: &str) -> Result<BulkItemOutcome, StoreError> {
    BulkItemOutcome::parse(stored)
        .ok_or_else(|| StoreError::corrupt(format!("stored bulk item outcome {stored:?} is unknown")))
}

/// The job `id` (found by `condition` on `bind`) with its items, or `None`.
fn job_with_items<P: rusqlite::Params>(
    conn: &Connection,
    condition: &str,
    bind: P,
) -> rusqlite::Result<Option<BulkJob>> {
    let Some(mut job) = conn
        .prepare_cached(&job_sql(condition))?
        .query_row(bind, read_job)
        .optional()?
    else {
        return Ok(None);
    };
    job.items = conn
        .prepare_cached(ITEMS_OF_JOB)?
        .query_map([job.id.as_str()], read_item)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(job))
}

/// `get_bulk_job`: by id, account and project, in one snapshot.
pub(crate) fn get(conn: &Connection, key: &BulkJobKey) -> Result<Option<BulkJob>, StoreError> {
    snapshot(conn, || {
        job_with_items(
            conn,
            "id = ?1 AND account_id = ?2 AND project_id = ?3",
            params![key.id.as_str(), key.account_id.get(), key.project_id.as_str()],
        )
        .map_err(|e| store_error("get_bulk_job", e))
    })
}

/// What one pending or settled item of a batch looked like when read.
#[derive(Debug)]
pub(crate) enum ReadItem {
    /// The item has an outcome already.
    Settled(BulkItemOutcome),
    /// The item is pending; its position and its target group's run.
    Pending { position: i64, run: Option<FieldingRun> },
}

/// The first step of `apply_bulk_items`: `ClaimLost` unless `token` holds
/// the job; otherwise each item's state, in the order of `items`. An id
/// that is not an item of the job is an internal error (the caller broke
/// the trait's promise).
pub(crate) fn read_batch(
    conn: &Connection,
    key: &BulkJobKey,
    token: ClaimToken,
    items: &[TargetGroupId],
) -> Result<Vec<ReadItem>, StoreError> {
    let op = "apply_bulk_items";
    snapshot(conn, || {
        ensure_held(conn, key, token, op)?;
        let mut by_target_group = conn
            .prepare_cached(ITEM_BY_TARGET_GROUP)
            .map_err(|e| store_error(op, e))?;
        let mut answer = Vec::with_capacity(items.len());
        for target_group_id in items {
            let found: Option<(i64, Option<String>)> = by_target_group
                .query_row(params![key.id.as_str(), target_group_id.as_str()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(|e| store_error(op, e))?;
            let Some((position, stored)) = found else {
                return Err(StoreError::internal(format!(
                    "target group {target_group_id} is not an item of {key}"
                )));
            };
            answer.push(match stored {
                Some(stored) => ReadItem::Settled(outcome(&stored)?),
                None => ReadItem::Pending {
                    position,
                    run: runs::find_by_scope(conn, &Scope::new(key.account_id, key.project_id, *target_group_id))?,
                },
            });
        }
        Ok(answer)
    })
}

fn ensure_held(conn: &Connection, key: &BulkJobKey, token: ClaimToken, op: &'static str) -> Result<(), StoreError> {
    let held = conn
        .prepare_cached(&held_sql("SELECT 1 FROM fielding_bulk_jobs"))
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    key.id.as_str(),
                    key.account_id.get(),
                    key.project_id.as_str(),
                    token_text(&token)
                ],
                |_| Ok(()),
            )
            .optional()
        })
        .map_err(|e| store_error(op, e))?;
    held.ok_or(StoreError::ClaimLost { key: *key, token })
}

/// What the second step of `apply_bulk_items` does for one item, as
/// decided on the caller's task.
#[derive(Debug)]
// One per item of a batch, in one Vec: boxing the write would allocate per
// item for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum PlannedItem {
    /// The item had an outcome when read: answer it, write nothing.
    Settled(TargetGroupId, BulkItemOutcome),
    /// Record an outcome (and write nothing to the run).
    Record {
        target_group_id: TargetGroupId,
        position: i64,
        outcome: BulkItemOutcome,
    },
    /// Write the run at `expected` with its change, and record `Updated`.
    Write {
        position: i64,
        expected: Version,
        run: FieldingRun,
        change: ChangeRecord,
    },
}

/// The bulk-job writes, run by the writer thread like the others.
#[derive(Debug)]
pub(crate) enum BulkWrite {
    Create {
        job: BulkJob,
    },
    Claim {
        now: Timestamp,
        claim: BulkClaim,
    },
    Renew {
        key: BulkJobKey,
        claim: BulkClaim,
    },
    Apply {
        key: BulkJobKey,
        token: ClaimToken,
        items: Vec<PlannedItem>,
    },
    Finish {
        key: BulkJobKey,
        token: ClaimToken,
        status: BulkJobStatus,
        finished_at: Timestamp,
    },
    Expire {
        finished_before: Timestamp,
        limit: usize,
    },
}

/// What a bulk write answers; the variant follows the [`BulkWrite`].
#[derive(Debug)]
pub(crate) enum BulkWritten {
    /// `Create`.
    Created(BulkJobCreated),
    /// `Claim`: the job taken, if any; or why the job taken could not be
    /// read back (corrupt data), answered after the take has committed.
    Claimed(Result<Option<BulkJob>, StoreError>),
    /// `Renew`, `Finish`: whether the token held the job.
    Held(bool),
    /// `Apply`: each item's outcome, in the order asked.
    Applied(Vec<(TargetGroupId, BulkItemOutcome)>),
    /// `Expire`: how many jobs went.
    Expired(usize),
}

impl BulkWrite {
    pub(crate) fn op(&self) -> &'static str {
        match self {
            BulkWrite::Create { .. } => "create_bulk_job",
            BulkWrite::Claim { .. } => "claim_bulk_job",
            BulkWrite::Renew { .. } => "renew_bulk_claim",
            BulkWrite::Apply { .. } => "apply_bulk_items",
            BulkWrite::Finish { .. } => "finish_bulk_job",
            BulkWrite::Expire { .. } => "expire_bulk_jobs",
        }
    }

    /// The most change records this write appends.
    pub(crate) fn feed_records(&self) -> usize {
        match self {
            BulkWrite::Apply { items, .. } => items
                .iter()
                .filter(|item| matches!(item, PlannedItem::Write { .. }))
                .count(),
            _ => 0,
        }
    }

    /// Inside the caller's transaction. A refused write (`ClaimLost`, a
    /// version conflict) leaves nothing behind: `Apply`, the only one that
    /// can be refused after writing, runs in a savepoint of its own.
    /// `Apply` numbers its change records from `positions`.
    pub(crate) fn run_in(&self, conn: &Connection, positions: &mut Positions) -> Result<BulkWritten, StoreError> {
        match self {
            BulkWrite::Apply { .. } => in_savepoint(conn, "fielding_bulk", self.op(), || self.rows(conn, positions)),
            _ => self.rows(conn, positions),
        }
    }

    fn rows(&self, conn: &Connection, positions: &mut Positions) -> Result<BulkWritten, StoreError> {
        match self {
            BulkWrite::Create { job } => create_rows(conn, job).map(BulkWritten::Created),
            BulkWrite::Claim { now, claim } => claim_rows(conn, *now, claim).map(BulkWritten::Claimed),
            BulkWrite::Renew { key, claim } => renew_rows(conn, key, claim).map(BulkWritten::Held),
            BulkWrite::Apply { key, token, items } => {
                apply_rows(conn, key, *token, items, positions).map(BulkWritten::Applied)
            }
            BulkWrite::Finish {
                key,
                token,
                status,
                finished_at,
            } => finish_rows(conn, key, *token, *status, *finished_at).map(BulkWritten::Held),
            BulkWrite::Expire { finished_before, limit } => {
                expire_rows(conn, *finished_before, *limit).map(BulkWritten::Expired)
            }
        }
    }
}

/// The statements of `create_bulk_job`: the job row (unless its key is
/// taken) and every item, one cached statement run once per item.
fn create_rows(conn: &Connection, job: &BulkJob) -> Result<BulkJobCreated, StoreError> {
    let op = "create_bulk_job";
    let created_by = UserText::new(job.created_by.as_uuid());
    let inserted = conn.prepare_cached(INSERT_JOB).and_then(|mut stmt| {
        stmt.execute(params![
            job.id.as_str(),
            job.account_id.get(),
            job.project_id.as_str(),
            job.action.as_str(),
            job.idempotency_key.as_str(),
            job.created_at.unix_millis(),
            created_by,
            job.trace_id.as_ref().map(JobTraceId::as_str),
            job.status.as_str(),
        ])
    });
    let id_taken = match inserted {
        Ok(1) => None,
        Ok(_) => {
            // The key is taken: the job holding it, read in this transaction.
            return match by_idempotency_key(conn, job)? {
                Some(existing) => Ok(BulkJobCreated::Existing(existing)),
                None => Err(StoreError::internal(format!(
                    "sqlite {op}: the idempotency key {:?} was reported taken but no bulk job holds it",
                    job.idempotency_key.as_str()
                ))),
            };
        }
        // The id is taken: if the key is taken too, the caller needs the
        // job under the key (as the in-memory store reports it).
        Err(err) if extended_code(&err) == Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => Some(err),
        Err(err) => return Err(store_error(op, err)),
    };
    if let Some(err) = id_taken {
        return match by_idempotency_key(conn, job)? {
            Some(existing) => Ok(BulkJobCreated::Existing(existing)),
            None => Err(StoreError::Backend {
                message: format!("sqlite {op}: bulk job id {} is already taken", job.id),
                retryable: false,
                source: Some(Box::new(err)),
            }),
        };
    }
    let mut insert = conn.prepare_cached(INSERT_ITEM).map_err(|e| store_error(op, e))?;
    for (position, item) in job.items.iter().enumerate() {
        let position = i64::try_from(position).map_err(|_| StoreError::internal("a bulk job has too many items"))?;
        insert
            .execute(params![
                job.id.as_str(),
                position,
                item.target_group_id.as_str(),
                item.outcome.map(BulkItemOutcome::as_str),
            ])
            .map_err(|e| store_error(op, e))?;
    }
    Ok(BulkJobCreated::Created)
}

fn by_idempotency_key(conn: &Connection, job: &BulkJob) -> Result<Option<BulkJob>, StoreError> {
    job_with_items(
        conn,
        "account_id = ?1 AND idempotency_key = ?2",
        params![job.account_id.get(), job.idempotency_key.as_str()],
    )
    .map_err(|e| store_error("create_bulk_job", e))
}

/// The statements of `claim_bulk_job`: the oldest claimable job, its new
/// claim, and the job read back. A write, so across processes SQLite's
/// write lock (`BEGIN IMMEDIATE`) makes the find-and-take one step.
///
/// A job that cannot be read back (corrupt data) is still taken: the
/// error is the call's answer (the outer `Ok` lets the take commit), and
/// the job sits out its lease like any failing job. Rolling the take back
/// would leave it the oldest claimable job, and every claim of every
/// process would pick it and fail again, forever, while the jobs behind it
/// waited.
fn claim_rows(
    conn: &Connection,
    now: Timestamp,
    claim: &BulkClaim,
) -> Result<Result<Option<BulkJob>, StoreError>, StoreError> {
    let op = "claim_bulk_job";
    let id: Option<String> = conn
        .prepare_cached(CLAIMABLE)
        .and_then(|mut stmt| stmt.query_row([now.unix_millis()], |row| row.get(0)).optional())
        .map_err(|e| store_error(op, e))?;
    let Some(id) = id else {
        return Ok(Ok(None));
    };
    conn.prepare_cached(TAKE)
        .and_then(|mut stmt| stmt.execute(params![id, token_text(&claim.token), claim.lease_until.unix_millis()]))
        .map_err(|e| store_error(op, e))?;
    Ok(match job_with_items(conn, "id = ?1", [&id]) {
        Ok(Some(job)) => Ok(Some(job)),
        Ok(None) => Err(StoreError::internal(format!(
            "sqlite {op}: bulk job {id} vanished while being claimed"
        ))),
        Err(err) => Err(store_error(op, err)),
    })
}

fn renew_rows(conn: &Connection, key: &BulkJobKey, claim: &BulkClaim) -> Result<bool, StoreError> {
    let touched = conn
        .prepare_cached(&held_sql("UPDATE fielding_bulk_jobs SET lease_until_ms = ?5"))
        .and_then(|mut stmt| {
            stmt.execute(params![
                key.id.as_str(),
                key.account_id.get(),
                key.project_id.as_str(),
                token_text(&claim.token),
                claim.lease_until.unix_millis()
            ])
        })
        .map_err(|e| store_error("renew_bulk_claim", e))?;
    Ok(touched == 1)
}

/// The statements of the second step of `apply_bulk_items`: the claim
/// check, then per item its outcome (only if it has none yet) and, for a
/// write, the run's compare-and-swap and change record (the same
/// statements as `compare_and_swap`). An item that got an outcome since it
/// was read keeps it and its run is not written. Every failure is an
/// error, and the caller undoes the whole batch.
fn apply_rows(
    conn: &Connection,
    key: &BulkJobKey,
    token: ClaimToken,
    items: &[PlannedItem],
    positions: &mut Positions,
) -> Result<Vec<(TargetGroupId, BulkItemOutcome)>, StoreError> {
    let op = "apply_bulk_items";
    ensure_held(conn, key, token, op)?;
    let mut set_outcome = conn.prepare_cached(SET_OUTCOME).map_err(|e| store_error(op, e))?;
    let mut answer = Vec::with_capacity(items.len());
    for item in items {
        let (target_group_id, position, outcome) = match item {
            PlannedItem::Settled(target_group_id, outcome) => {
                answer.push((*target_group_id, *outcome));
                continue;
            }
            PlannedItem::Record {
                target_group_id,
                position,
                outcome,
            } => (*target_group_id, *position, *outcome),
            PlannedItem::Write { position, run, .. } => (run.target_group_id, *position, BulkItemOutcome::Updated),
        };
        let recorded = set_outcome
            .execute(params![key.id.as_str(), position, outcome.as_str()])
            .map_err(|e| store_error(op, e))?;
        if recorded == 0 {
            answer.push((target_group_id, stored_outcome(conn, key, position)?));
            continue;
        }
        if let PlannedItem::Write {
            expected, run, change, ..
        } = item
        {
            runs::compare_and_swap_rows(conn, *expected, run, change, positions)?;
        }
        answer.push((target_group_id, outcome));
    }
    Ok(answer)
}

fn stored_outcome(conn: &Connection, key: &BulkJobKey, position: i64) -> Result<BulkItemOutcome, StoreError> {
    let op = "apply_bulk_items";
    let stored: Option<Option<String>> = conn
        .prepare_cached(OUTCOME_AT)
        .and_then(|mut stmt| {
            stmt.query_row(params![key.id.as_str(), position], |row| row.get(0))
                .optional()
        })
        .map_err(|e| store_error(op, e))?;
    match stored.flatten() {
        Some(stored) => outcome(&stored),
        None => Err(StoreError::internal(format!(
            "sqlite {op}: item {position} of {key} has no outcome after refusing one"
        ))),
    }
}

fn finish_rows(
    conn: &Connection,
    key: &BulkJobKey,
    token: ClaimToken,
    status: BulkJobStatus,
    finished_at: Timestamp,
) -> Result<bool, StoreError> {
    let touched = conn
        .prepare_cached(&held_sql(
            "UPDATE fielding_bulk_jobs SET status = ?5, \
             finished_at_ms = CASE WHEN ?5 = 'Processing' THEN NULL ELSE ?6 END, \
             claim_token = NULL, lease_until_ms = NULL",
        ))
        .and_then(|mut stmt| {
            stmt.execute(params![
                key.id.as_str(),
                key.account_id.get(),
                key.project_id.as_str(),
                token_text(&token),
                status.as_str(),
                finished_at.unix_millis()
            ])
        })
        .map_err(|e| store_error("finish_bulk_job", e))?;
    Ok(touched == 1)
}

/// The statements of `expire_bulk_jobs`: the items of the chosen jobs, then
/// the jobs (the idempotency key is a column of the job's row). Both
/// statements choose the same jobs: they run in one write transaction.
fn expire_rows(conn: &Connection, finished_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
    let op = "expire_bulk_jobs";
    if limit == 0 {
        return Ok(0);
    }
    // SQLite's LIMIT is an i64; anything larger means "no limit" anyway.
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let cutoff = finished_before.unix_millis();
    conn.prepare_cached(&format!(
        "DELETE FROM fielding_bulk_job_items WHERE job_id IN ({EXPIRED})"
    ))
    .and_then(|mut stmt| stmt.execute(params![cutoff, limit]))
    .map_err(|e| store_error(op, e))?;
    conn.prepare_cached(&format!("DELETE FROM fielding_bulk_jobs WHERE id IN ({EXPIRED})"))
        .and_then(|mut stmt| stmt.execute(params![cutoff, limit]))
        .map_err(|e| store_error(op, e))
}

/// Turns the answers of `decide` into the batch's planned writes. A write
/// of another run than the one shown, or where there was none, is an
/// internal error: it would write a run the job did not read.
pub(crate) fn plan(
    key: &BulkJobKey,
    items: &[TargetGroupId],
    read: Vec<ReadItem>,
    decide: fielding_core::DecideItem<'_>,
) -> Result<Vec<PlannedItem>, StoreError> {
    if read.len() != items.len() {
        return Err(StoreError::internal(format!(
            "sqlite apply_bulk_items: read {} items of {key} for {} asked",
            read.len(),
            items.len()
        )));
    }
    let mut planned = Vec::with_capacity(items.len());
    for (target_group_id, state) in items.iter().zip(read) {
        let (position, current) = match state {
            ReadItem::Settled(outcome) => {
                planned.push(PlannedItem::Settled(*target_group_id, outcome));
                continue;
            }
            ReadItem::Pending { position, run } => (position, run),
        };
        planned.push(match decide(*target_group_id, current.as_ref()) {
            fielding_core::ItemUpdate::Record(outcome) => PlannedItem::Record {
                target_group_id: *target_group_id,
                position,
                outcome,
            },
            fielding_core::ItemUpdate::Write { expected, run, change } => {
                let Some(current) = current else {
                    return Err(StoreError::internal(format!(
                        "decide asked to write {} where there is no run",
                        run.key()
                    )));
                };
                if run.key() != current.key() {
                    return Err(StoreError::internal(format!(
                        "decide asked to write {} in place of {}",
                        run.key(),
                        current.key()
                    )));
                }
                PlannedItem::Write {
                    position,
                    expected,
                    run,
                    change,
                }
            }
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_spells_processing_as_the_core_does() {
        assert_eq!(BulkJobStatus::Processing.as_str(), "Processing");
        for sql in [INSERT_JOB, CLAIMABLE, HELD, EXPIRED] {
            assert!(sql.contains("'Processing'"), "{sql}");
        }
    }

    fn plan_of(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params![0, 10], |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn claims_and_expiry_walk_their_partial_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::migrations::migrate(&mut conn, std::path::Path::new(":memory:"), 0).unwrap();
        let claim = plan_of(&conn, &CLAIMABLE.replace("?1", "?1 + ?2 * 0"));
        assert!(
            claim
                .iter()
                .any(|step| step.contains("USING INDEX fielding_bulk_jobs_claimable")),
            "{claim:?}"
        );
        assert!(
            !claim.iter().any(|step| step.contains("TEMP B-TREE")),
            "no sort: {claim:?}"
        );
        let expiry = plan_of(&conn, EXPIRED);
        assert!(
            expiry
                .iter()
                .any(|step| step.contains("USING INDEX fielding_bulk_jobs_finished_at")),
            "{expiry:?}"
        );
        assert!(
            !expiry.iter().any(|step| step.contains("TEMP B-TREE")),
            "no sort: {expiry:?}"
        );
    }
}
