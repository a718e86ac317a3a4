//! The writer thread's loop, with group commit.
//!
//! Writes (`insert`, `compare_and_swap`, `create_job`, `finish_job`,
//! `expire_jobs`, the bulk-job and the feed writes) arrive as data, not
//! closures, so the writer can see several queued at once. When more than
//! one write is waiting, it runs them in **one** `BEGIN IMMEDIATE`
//! transaction and commits once: one WAL append (and, with `synchronous =
//! FULL`, one `fsync`) for the whole group. What each caller sees is unchanged:
//!
//! * reads queued for the writer (`update`'s read, `apply_bulk_items`'s
//!   read) run first, before any
//!   write of the group, so they see exactly the committed state;
//! * each write is still all-or-nothing: a refused write (conflict, missing
//!   run, taken scope) changed nothing; a write that fails otherwise (disk
//!   full, I/O error) makes the writer roll the transaction back and run the
//!   group again with a savepoint per write, so that write alone is undone;
//! * writes run one after the other in arrival order, so a
//!   compare-and-swap sees the writes queued before it, exactly as if each
//!   had committed on its own;
//! * **no answer to a write leaves before the commit**: not even a
//!   conflict, whose `current` version may have been written by an earlier
//!   write of the same group. If the commit fails, every write of the group
//!   gets the error and none of them happened (SQLite rolled the
//!   transaction back); if SQLite rolls the whole transaction back in the
//!   middle of the group (an I/O error, say), the writes before get the
//!   error too and the rest start a new transaction;
//! * each write transaction takes the feed positions of all its writes
//!   with one counter update, after the reads and before the first write
//!   (see [`group_positions`] and `feed::take_positions`); the watchers of
//!   the accounts written are woken once it has committed ([`wake`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use fielding_core::{
    AccountId, ChangeNotifier, ChangeRecord, FieldingRun, FieldingRunJob, JobCreated, JobId, JobOutcome, Scope,
    StoreError, Timestamp, Version,
};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::oneshot;

use crate::bulk::{BulkWrite, BulkWritten};
use crate::checkpoint::WriterLink;
use crate::error::{code, store_error};
use crate::feed::{self, FeedWrite, Positions};
use crate::savepoint::in_savepoint;
use crate::{jobs, runs};

/// Counters of the writer thread, for [`crate::SqliteStore::write_stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) writes: AtomicU64,
    pub(crate) transactions: AtomicU64,
}

/// The most writes committed together.
const MAX_GROUP: usize = 64;

/// A task for a worker thread: anything to run on its connection. (Not to
/// be confused with creation jobs, the `jobs` module.)
pub(crate) type Task = Box<dyn FnOnce(&mut Connection) + Send>;

/// What the writer thread receives.
// Boxing the write would cost an allocation per write; a channel slot of a
// few hundred bytes costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum WriterTask {
    /// A closure (reads, when there are no reader threads).
    Run(Task),
    /// A write, which may be committed together with others.
    Write(Write),
}

/// One write and where its answer goes.
pub(crate) struct Write {
    pub(crate) kind: WriteKind,
    pub(crate) reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// What a successful write answers; the variant follows the [`WriteKind`].
#[derive(Debug)]
pub(crate) enum Written {
    /// `insert`, `compare_and_swap`.
    Done,
    /// `create_job`.
    Job(JobCreated),
    /// `finish_job`: the job as stored after the write.
    Finished(Option<FieldingRunJob>),
    /// `expire_jobs`: how many jobs were removed.
    Expired(usize),
    /// `prune_changes`: how many change records were removed.
    Pruned(usize),
    /// The bulk-job writes.
    Bulk(BulkWritten),
}

/// The writes of the trait.
pub(crate) enum WriteKind {
    Insert {
        run: FieldingRun,
        change: ChangeRecord,
    },
    CompareAndSwap {
        expected: Version,
        run: FieldingRun,
        change: ChangeRecord,
    },
    CreateJob {
        job: FieldingRunJob,
    },
    FinishJob {
        scope: Scope,
        id: JobId,
        outcome: JobOutcome,
        finished_at: Timestamp,
    },
    ExpireJobs {
        finished_before: Timestamp,
        limit: usize,
    },
    Bulk(BulkWrite),
    Feed(FeedWrite),
}

impl WriteKind {
    pub(crate) fn op(&self) -> &'static str {
        match self {
            WriteKind::Insert { .. } => "insert",
            WriteKind::CompareAndSwap { .. } => "compare_and_swap",
            WriteKind::CreateJob { .. } => "create_job",
            WriteKind::FinishJob { .. } => "finish_job",
            WriteKind::ExpireJobs { .. } => "expire_jobs",
            WriteKind::Bulk(write) => write.op(),
            WriteKind::Feed(write) => write.op(),
        }
    }

    /// The account whose feed this write appends to, if it may append:
    /// its watchers are woken once it has committed.
    fn feed_account(&self) -> Option<AccountId> {
        match self {
            WriteKind::Insert { run, .. } | WriteKind::CompareAndSwap { run, .. } => Some(run.account_id),
            WriteKind::Bulk(BulkWrite::Apply { key, .. }) => Some(key.account_id),
            _ => None,
        }
    }

    /// The most change records this write appends: what its transaction
    /// takes feed positions for.
    fn feed_records(&self) -> usize {
        match self {
            WriteKind::Insert { .. } | WriteKind::CompareAndSwap { .. } => 1,
            WriteKind::Bulk(write) => write.feed_records(),
            _ => 0,
        }
    }

    /// In its own immediate transaction (dropped, hence rolled back, on
    /// any error).
    fn run_alone(&self, conn: &mut Connection) -> Result<Written, StoreError> {
        let op = self.op();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_error(op, e))?;
        let mut positions = feed::take_positions(&tx, self.feed_records(), op)?;
        let written = self.run_in(&tx, &mut positions)?;
        tx.commit().map_err(|e| store_error(op, e))?;
        Ok(written)
    }

    /// Inside the caller's transaction, numbering its change records from
    /// `positions`, taken by the transaction beforehand.
    fn run_in(&self, conn: &Connection, positions: &mut Positions) -> Result<Written, StoreError> {
        match self {
            WriteKind::Insert { run, change } => {
                runs::insert_rows(conn, run, change, positions).map(|()| Written::Done)
            }
            WriteKind::CompareAndSwap { expected, run, change } => {
                runs::compare_and_swap_rows(conn, *expected, run, change, positions).map(|()| Written::Done)
            }
            WriteKind::CreateJob { job } => jobs::create_job_rows(conn, job).map(Written::Job),
            WriteKind::FinishJob {
                scope,
                id,
                outcome,
                finished_at,
            } => jobs::finish_job_rows(conn, scope, id, outcome, *finished_at).map(Written::Finished),
            WriteKind::ExpireJobs { finished_before, limit } => {
                jobs::expire_jobs_rows(conn, *finished_before, *limit).map(Written::Expired)
            }
            WriteKind::Bulk(write) => write.run_in(conn, positions).map(Written::Bulk),
            WriteKind::Feed(write) => write.rows(conn),
        }
    }
}

/// The feed positions of one write transaction of `group`: as many as its
/// writes may append records, taken at once, before any write and outside
/// every savepoint (a savepoint undone must not give back numbers that
/// later writes of the transaction still use). Numbers a write does not
/// use (a conflict, a settled bulk item) are gaps.
fn group_positions<'a>(
    conn: &Connection,
    group: impl Iterator<Item = &'a WriteKind>,
    op: &'static str,
) -> Result<Positions, StoreError> {
    feed::take_positions(conn, group.map(WriteKind::feed_records).sum(), op)
}

/// The answer for a write whose transaction could not take its feed
/// positions (and so wrote nothing).
fn positions_failure(op: &'static str, err: &StoreError) -> StoreError {
    StoreError::Backend {
        message: format!("sqlite {op}: cannot take feed positions, nothing was written: {err}"),
        retryable: err.is_retryable(),
        source: None,
    }
}

/// Runs `task`; a panic cannot leave a transaction open behind it.
pub(crate) fn guarded(conn: &mut Connection, task: impl FnOnce(&mut Connection)) {
    let outcome = catch_unwind(AssertUnwindSafe(|| task(conn)));
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// The writer thread: serves tasks until the channel closes.
///
/// It takes every task already queued (up to [`MAX_GROUP`] of each kind)
/// and, with group commit, runs them in one transaction: the reads first,
/// then the writes (see [`commit_group`]). Nothing in the batch has been
/// answered yet, so running a read before writes queued ahead of it is
/// still a valid order: none of those writes had completed when the read
/// was sent.
///
/// With a checkpoint thread (`checkpoints`), each batch runs in the
/// writer's turn of the [`WriterGate`](crate::checkpoint::WriterGate), so
/// the checkpoint thread can hold the writer between two batches, and the
/// thread is nudged after each batch that wrote.
pub(crate) fn serve(
    conn: &mut Connection,
    tasks: mpsc::Receiver<WriterTask>,
    group_commit: bool,
    counters: &Counters,
    checkpoints: Option<&WriterLink>,
    notifier: &ChangeNotifier,
) {
    let mut reads: Vec<Task> = Vec::new();
    let mut writes: Vec<Write> = Vec::new();
    while let Ok(first) = tasks.recv() {
        let mut next = Some(first);
        while let Some(task) = next.take() {
            match task {
                WriterTask::Run(task) => reads.push(task),
                WriterTask::Write(write) => writes.push(write),
            }
            if writes.len() < MAX_GROUP && reads.len() < MAX_GROUP {
                next = tasks.try_recv().ok();
            }
        }
        let wrote = !writes.is_empty();
        let mut batch = || run_batch(conn, &mut reads, &mut writes, group_commit, counters, notifier);
        match checkpoints {
            Some(link) => {
                link.write(batch);
                if wrote {
                    link.committed();
                }
            }
            None => batch(),
        }
    }
}

/// Runs the batch taken from the queue: one group, or each task alone.
fn run_batch(
    conn: &mut Connection,
    reads: &mut Vec<Task>,
    writes: &mut Vec<Write>,
    group_commit: bool,
    counters: &Counters,
    notifier: &ChangeNotifier,
) {
    if group_commit {
        let (batch_reads, group) = (std::mem::take(reads), std::mem::take(writes));
        guarded(conn, |conn| commit_group(conn, batch_reads, group, counters, notifier));
    } else {
        for task in reads.drain(..) {
            guarded(conn, task);
        }
        for write in writes.drain(..) {
            guarded(conn, |conn| {
                commit_group(conn, Vec::new(), vec![write], counters, notifier)
            });
        }
    }
}

/// A write's outcome that guarantees it changed nothing in the database,
/// or its success: the transaction can go on without a savepoint. (A
/// bulk batch refused with a conflict or `ClaimLost` has undone its own
/// writes: see [`BulkWrite::run_in`].)
fn clean(outcome: &Result<Written, StoreError>) -> bool {
    matches!(
        outcome,
        Ok(_)
            | Err(StoreError::VersionConflict { .. }
                | StoreError::NotFound
                | StoreError::AlreadyExists { .. }
                | StoreError::ClaimLost { .. })
    )
}

/// Wakes the in-process watchers of the account a write appended change
/// records to. Only for a write that has committed: a watcher woken reads
/// the feed at once, and must find the records there. (Another process's
/// watchers find them by polling.)
fn wake(notifier: &ChangeNotifier, kind: &WriteKind, outcome: &Result<Written, StoreError>) {
    if let (Ok(_), Some(account)) = (outcome, kind.feed_account()) {
        notifier.notify(account);
    }
}

/// Answers each write of a group whose transaction has ended (committed,
/// for the `Ok` outcomes), waking its account's watchers first, so a
/// caller whose write has returned can count on the wake-up having been
/// sent.
fn answer(group: Vec<Write>, outcomes: Vec<Result<Written, StoreError>>, notifier: &ChangeNotifier) {
    for (write, outcome) in group.into_iter().zip(outcomes) {
        wake(notifier, &write.kind, &outcome);
        let _ = write.reply.send(outcome);
    }
}

/// Runs `reads`, then commits `group` in one transaction.
///
/// Fast path: `BEGIN IMMEDIATE`, the reads (they see exactly the committed
/// state), the writes one after the other, `COMMIT`. A write that fails
/// refuses before changing anything (a conflict, a missing run, a taken
/// scope) or succeeds, so no savepoint is needed. If a write fails any
/// other way (disk full, I/O error, ...), it may have changed a row
/// before failing: the whole transaction is rolled back, nothing has been
/// answered yet, and the writes run again with a savepoint each
/// ([`commit_with_savepoints`]).
fn commit_group(
    conn: &mut Connection,
    reads: Vec<Task>,
    group: Vec<Write>,
    counters: &Counters,
    notifier: &ChangeNotifier,
) {
    if group.is_empty() {
        // Reads only: one read transaction (one snapshot, one lock).
        let began = reads.len() > 1 && conn.execute_batch("BEGIN").is_ok();
        for task in reads {
            guarded(conn, task);
        }
        if began && !conn.is_autocommit() {
            let _ = conn.execute_batch("COMMIT");
        }
        return;
    }
    counters.writes.fetch_add(group.len() as u64, Ordering::Relaxed);
    counters.transactions.fetch_add(1, Ordering::Relaxed);
    if group.len() == 1 && reads.is_empty() {
        for write in group {
            let outcome = write.kind.run_alone(conn);
            wake(notifier, &write.kind, &outcome);
            let _ = write.reply.send(outcome);
        }
        return;
    }
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        for task in reads {
            guarded(conn, task);
        }
        let outcomes = group
            .iter()
            .map(|w| Err(group_failure(w.kind.op(), "cannot start the transaction", &e)))
            .collect();
        answer(group, outcomes, notifier);
        return;
    }
    for task in reads {
        guarded(conn, task);
    }
    // After the reads: a feed read on this connection would see the
    // counter taken, and bookmark a reader past records not written yet.
    let mut positions = match group_positions(conn, group.iter().map(|w| &w.kind), "write group") {
        Ok(positions) => positions,
        Err(err) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            let outcomes = group
                .iter()
                .map(|w| Err(positions_failure(w.kind.op(), &err)))
                .collect();
            answer(group, outcomes, notifier);
            return;
        }
    };
    let mut outcomes = Vec::with_capacity(group.len());
    for write in &group {
        if conn.is_autocommit() {
            break;
        }
        let outcome = write.kind.run_in(conn, &mut positions);
        if !clean(&outcome) {
            break;
        }
        outcomes.push(outcome);
    }
    if outcomes.len() < group.len() || conn.is_autocommit() {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        commit_with_savepoints(conn, group, notifier);
        return;
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        outcomes = group
            .iter()
            .map(|w| Err(group_failure(w.kind.op(), "commit failed, nothing was written", &e)))
            .collect();
    }
    answer(group, outcomes, notifier);
}

/// The answer for a write whose transaction failed as a whole.
fn group_failure(op: &'static str, what: &str, err: &rusqlite::Error) -> StoreError {
    StoreError::Backend {
        message: format!("sqlite {op}: {what}: {err}"),
        retryable: matches!(code(err), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)),
        source: None,
    }
}

fn savepoint(conn: &Connection, write: &WriteKind, positions: &mut Positions) -> Result<Written, StoreError> {
    in_savepoint(conn, "fielding_write", write.op(), || write.run_in(conn, positions))
}

/// The careful path: each write in its own savepoint, so a write that
/// fails halfway is undone alone.
fn commit_with_savepoints(conn: &mut Connection, group: Vec<Write>, notifier: &ChangeNotifier) {
    let mut answers: Vec<(Write, Result<Written, StoreError>)> = Vec::with_capacity(group.len());
    // Index in `answers` where the open transaction's writes start.
    let mut open: Option<usize> = None;
    // The open transaction's feed positions, for this write and the rest.
    let mut positions = Positions::empty();
    let kinds: Vec<usize> = group.iter().map(|w| w.kind.feed_records()).collect();
    let mut later: usize = kinds.iter().sum();
    for (write, records) in group.into_iter().zip(kinds) {
        let from_here = later;
        later -= records;
        if open.is_none() {
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                let outcome = Err(store_error(write.kind.op(), e));
                answers.push((write, outcome));
                continue;
            }
            match feed::take_positions(conn, from_here, write.kind.op()) {
                Ok(taken) => positions = taken,
                Err(err) => {
                    if !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    let outcome = Err(positions_failure(write.kind.op(), &err));
                    answers.push((write, outcome));
                    continue;
                }
            }
            open = Some(answers.len());
        }
        let outcome = savepoint(conn, &write.kind, &mut positions);
        if let (Some(start), true) = (open, conn.is_autocommit()) {
            // SQLite rolled the whole transaction back: the writes before
            // this one in it are gone as well.
            let lost = outcome.as_ref().err().map_or_else(
                || "the transaction was rolled back".to_string(),
                |e| format!("the transaction was rolled back: {e}"),
            );
            for (earlier, answer) in &mut answers[start..] {
                *answer = Err(StoreError::Backend {
                    message: format!("sqlite {}: {lost}", earlier.kind.op()),
                    retryable: false,
                    source: None,
                });
            }
            open = None;
        }
        answers.push((write, outcome));
    }
    if let Some(start) = open {
        if let Err(e) = conn.execute_batch("COMMIT") {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            for (write, answer) in &mut answers[start..] {
                *answer = Err(group_failure(write.kind.op(), "commit failed, nothing was written", &e));
            }
        }
    }
    // Every `Ok` left is a write of the transaction just committed.
    for (write, answer) in answers {
        wake(notifier, &write.kind, &answer);
        let _ = write.reply.send(answer);
    }
}
