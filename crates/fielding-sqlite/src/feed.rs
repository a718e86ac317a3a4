//! The change feed: positions for new change records, reading an account's
//! feed, pruning, and consumers' feed checkpoints (not to be confused with
//! the WAL checkpoints of the `checkpoint` module).
//!
//! A record's position is `(n, 0)`, `n` from the one-row `feed_counter`,
//! taken inside the write transaction that appends the record, one range
//! per transaction (see [`take_positions`] for why that numbers records in
//! commit order).

use fielding_core::{
    AccountId, ConsumerName, FeedPage, FeedPosition, FeedRecord, ProjectId, Scope, StoreError, TargetGroupId, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::codec::{read_change, refused, text};
use crate::error::store_error;
use crate::snapshot::snapshot;
use crate::writer::Written;

/// Takes `?1` positions: answers the last of them.
const TAKE_POSITIONS: &str = "UPDATE feed_counter SET last_position = last_position + ?1 RETURNING last_position";

/// The highest position handed out (committed, as a reader sees it).
const LAST_POSITION: &str = "SELECT last_position FROM feed_counter";

const HORIZON: &str = "SELECT position FROM feed_horizons WHERE account_id = ?1";

/// An account's records after a position, in feed order: one range of the
/// table's primary key `(account_id, position)`. The first eleven columns
/// are what `codec::read_change` reads.
const FEED_PAGE: &str = "SELECT run_id, version, action, changed_at_ms, changed_by, status_from, status_to, \
            start_from_ms, start_to_ms, end_from_ms, end_to_ms, position, project_id, target_group_id \
       FROM change_records WHERE account_id = ?1 AND position > ?2 ORDER BY position LIMIT ?3";

/// Removes up to `?2` records changed before `?1`, oldest first (through the
/// index on `changed_at_ms`, which holds the primary key too), and answers
/// each one's account and position for the horizons.
const PRUNE: &str = "DELETE FROM change_records WHERE (account_id, position) IN (\
                     SELECT account_id, position FROM change_records WHERE changed_at_ms < ?1 \
                     ORDER BY changed_at_ms, account_id, position LIMIT ?2) \
                     RETURNING account_id, position";

/// Raises an account's horizon to `?2` (never lowers it).
const RAISE_HORIZON: &str = "INSERT INTO feed_horizons (account_id, position) VALUES (?1, ?2) \
                             ON CONFLICT (account_id) DO UPDATE SET position = MAX(position, excluded.position)";

const LOAD_CHECKPOINT: &str = "SELECT position, minor FROM feed_checkpoints WHERE account_id = ?1 AND consumer = ?2";

const SAVE_CHECKPOINT: &str = "INSERT INTO feed_checkpoints (account_id, consumer, position, minor) \
                               VALUES (?1, ?2, ?3, ?4) \
                               ON CONFLICT (account_id, consumer) DO UPDATE \
                               SET position = excluded.position, minor = excluded.minor";

/// A range of positions taken for the records of one write.
#[derive(Debug)]
pub(crate) struct Positions {
    next: i64,
    last: i64,
}

impl Positions {
    /// No positions.
    pub(crate) fn empty() -> Self {
        Positions { next: 1, last: 0 }
    }

    /// The next position of the range.
    pub(crate) fn next(&mut self, op: &'static str) -> Result<i64, StoreError> {
        if self.next > self.last {
            return Err(StoreError::internal(format!(
                "sqlite {op}: more change records than feed positions taken"
            )));
        }
        let position = self.next;
        self.next += 1;
        Ok(position)
    }
}

/// Takes `count` new positions from `feed_counter`, inside the caller's
/// write transaction (none, and no statement, for 0).
///
/// Why this numbers records in commit order: SQLite lets one write
/// transaction run at a time on a database, across every connection and
/// process (this store's writes are `BEGIN IMMEDIATE`). A transaction that
/// takes positions holds the write lock from this `UPDATE` to its commit,
/// so the next transaction to take any reads the counter after that commit,
/// and gets higher numbers. Hence a reader whose snapshot shows the counter
/// at `c` has every record numbered up to `c` in that snapshot (or never
/// will: its transaction rolled back, and its numbers are handed out
/// again), and every record committed later is numbered above `c`.
/// A transaction takes the numbers of all its writes at once (a group
/// commit, a bulk batch), as many as they may append; numbers not used (a
/// write refused with a conflict, a bulk item settled meanwhile) are gaps,
/// which the feed does not mind.
pub(crate) fn take_positions(conn: &Connection, count: usize, op: &'static str) -> Result<Positions, StoreError> {
    if count == 0 {
        return Ok(Positions::empty());
    }
    let count = i64::try_from(count).map_err(|_| StoreError::internal(format!("sqlite {op}: too many positions")))?;
    let last: Option<i64> = conn
        .prepare_cached(TAKE_POSITIONS)
        .and_then(|mut stmt| stmt.query_row([count], |row| row.get(0)).optional())
        .map_err(|e| store_error(op, e))?;
    let last = last.ok_or_else(|| StoreError::corrupt("the feed counter row (feed_counter) is missing"))?;
    Ok(Positions {
        next: last - count + 1,
        last,
    })
}

/// A stored position as a feed position.
fn position(field: &str, stored: i64) -> Result<u64, StoreError> {
    u64::try_from(stored).map_err(|_| StoreError::corrupt(format!("stored {field} {stored} is negative")))
}

/// A cursor number as the column value to compare with: positions this
/// store hands out fit an `i64`, so a larger one sorts after all of them.
fn column(number: u64) -> i64 {
    i64::try_from(number).unwrap_or(i64::MAX)
}

fn read_scope(account: AccountId, row: &Row<'_>) -> rusqlite::Result<Scope> {
    let corrupt = |e: fielding_core::InvalidId| {
        refused(StoreError::corrupt(format!(
            "stored {} is invalid: {}",
            e.field(),
            e.reason()
        )))
    };
    Ok(Scope::new(
        account,
        ProjectId::parse(text(row, 12)?).map_err(corrupt)?,
        TargetGroupId::parse(text(row, 13)?).map_err(corrupt)?,
    ))
}

fn read_record(account: AccountId, row: &Row<'_>) -> rusqlite::Result<FeedRecord> {
    Ok(FeedRecord {
        position: FeedPosition::new(position("position", row.get(11)?).map_err(refused)?, 0),
        scope: read_scope(account, row)?,
        change: read_change(row)?,
    })
}

/// `feed`: in one read transaction, the account's horizon (refusing a
/// cursor below it), up to `limit` records after the cursor (one more is
/// fetched to tell `has_more`), and, when the page is not full, the
/// counter: nothing committed later can be numbered at or below it, so it
/// is where the reader continues (a bookmark past other accounts' records
/// and past gaps).
pub(crate) fn read(
    conn: &Connection,
    account: AccountId,
    after: Option<FeedPosition>,
    limit: usize,
) -> Result<FeedPage, StoreError> {
    let op = "feed";
    snapshot(conn, || {
        let horizon: Option<i64> = conn
            .prepare_cached(HORIZON)
            .and_then(|mut stmt| stmt.query_row([i64::from(account.get())], |row| row.get(0)).optional())
            .map_err(|e| store_error(op, e))?;
        let horizon = horizon
            .map(|h| position("horizon", h).map(|h| FeedPosition::new(h, 0)))
            .transpose()?;
        let counter: Option<i64> = conn
            .prepare_cached(LAST_POSITION)
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)).optional())
            .map_err(|e| store_error(op, e))?;
        let counter = counter.ok_or_else(|| StoreError::corrupt("the feed counter row (feed_counter) is missing"))?;
        let head = FeedPosition::new(position("feed counter", counter)?, 0);
        let start = match (after, horizon) {
            (Some(after), Some(horizon)) if horizon > after => {
                return Err(StoreError::FeedExpired {
                    account,
                    after,
                    pruned_through: horizon,
                })
            }
            // No position past the counter was ever handed out: the cursor
            // is from another database (a file recreated or restored from
            // an older copy), and reading on from it would skip what is
            // written until the counter passes it. Start over, as after
            // pruning.
            (Some(after), _) if after > head => {
                return Err(StoreError::FeedExpired {
                    account,
                    after,
                    pruned_through: head,
                })
            }
            (Some(after), _) => after,
            (None, horizon) => horizon.unwrap_or(FeedPosition::ZERO),
        };
        // A position is (n, 0): the records after (m, k) are those with n > m.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut records = conn
            .prepare_cached(FEED_PAGE)
            .and_then(|mut stmt| {
                stmt.query_map(params![i64::from(account.get()), column(start.major()), fetch], |row| {
                    read_record(account, row)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| store_error(op, e))?;
        let has_more = records.len() > limit;
        records.truncate(limit);
        let last = records.last().map_or(start, |record| record.position);
        let next = if has_more { last } else { last.max(head) };
        Ok(FeedPage {
            records,
            next,
            has_more,
        })
    })
}

/// The feed writes, run by the writer thread like the others.
#[derive(Debug)]
pub(crate) enum FeedWrite {
    Prune {
        changed_before: Timestamp,
        limit: usize,
    },
    SaveCheckpoint {
        account: AccountId,
        consumer: ConsumerName,
        position: FeedPosition,
    },
}

impl FeedWrite {
    pub(crate) fn op(&self) -> &'static str {
        match self {
            FeedWrite::Prune { .. } => "prune_changes",
            FeedWrite::SaveCheckpoint { .. } => "save_feed_checkpoint",
        }
    }

    /// Inside the caller's transaction. A failure may leave rows written:
    /// the caller undoes the write (see `writer`).
    pub(crate) fn rows(&self, conn: &Connection) -> Result<Written, StoreError> {
        match self {
            FeedWrite::Prune { changed_before, limit } => {
                prune_rows(conn, *changed_before, *limit).map(Written::Pruned)
            }
            FeedWrite::SaveCheckpoint {
                account,
                consumer,
                position,
            } => save_checkpoint_rows(conn, *account, consumer, *position).map(|()| Written::Done),
        }
    }
}

/// `prune_changes`: the records, then each account's horizon raised to the
/// highest position pruned from it, in the caller's transaction, so no
/// reader ever sees a record gone without its horizon.
fn prune_rows(conn: &Connection, changed_before: Timestamp, limit: usize) -> Result<usize, StoreError> {
    let op = "prune_changes";
    if limit == 0 {
        return Ok(0);
    }
    // SQLite's LIMIT is an i64; anything larger means "no limit" anyway.
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let pruned: Vec<(i64, i64)> = conn
        .prepare_cached(PRUNE)
        .and_then(|mut stmt| {
            stmt.query_map(params![changed_before.unix_millis(), limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect()
        })
        .map_err(|e| store_error(op, e))?;
    let mut horizons = std::collections::BTreeMap::new();
    for &(account, position) in &pruned {
        let highest = horizons.entry(account).or_insert(position);
        *highest = (*highest).max(position);
    }
    let mut raise = conn.prepare_cached(RAISE_HORIZON).map_err(|e| store_error(op, e))?;
    for (account, position) in horizons {
        raise
            .execute(params![account, position])
            .map_err(|e| store_error(op, e))?;
    }
    Ok(pruned.len())
}

/// A cursor number as a checkpoint column.
fn checkpoint_column(number: u64, op: &'static str) -> Result<i64, StoreError> {
    i64::try_from(number).map_err(|_| StoreError::Backend {
        message: format!("sqlite {op}: position number {number} is beyond what this store hands out"),
        retryable: false,
        source: None,
    })
}

fn save_checkpoint_rows(
    conn: &Connection,
    account: AccountId,
    consumer: &ConsumerName,
    position: FeedPosition,
) -> Result<(), StoreError> {
    let op = "save_feed_checkpoint";
    let (major, minor) = (
        checkpoint_column(position.major(), op)?,
        checkpoint_column(position.minor(), op)?,
    );
    conn.prepare_cached(SAVE_CHECKPOINT)
        .and_then(|mut stmt| stmt.execute(params![i64::from(account.get()), consumer.as_str(), major, minor]))
        .map_err(|e| store_error(op, e))?;
    Ok(())
}

/// `load_feed_checkpoint`: one statement.
pub(crate) fn load_checkpoint(
    conn: &Connection,
    account: AccountId,
    consumer: &ConsumerName,
) -> Result<Option<FeedPosition>, StoreError> {
    let op = "load_feed_checkpoint";
    let stored: Option<(i64, i64)> = conn
        .prepare_cached(LOAD_CHECKPOINT)
        .and_then(|mut stmt| {
            stmt.query_row(params![i64::from(account.get()), consumer.as_str()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()
        })
        .map_err(|e| store_error(op, e))?;
    stored
        .map(|(major, minor)| {
            Ok(FeedPosition::new(
                position("checkpoint", major)?,
                position("checkpoint", minor)?,
            ))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(conn: &Connection, sql: &str) -> Vec<String> {
        let parameters = conn.prepare(sql).unwrap().parameter_count();
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(vec![0; parameters]), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn migrated() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::migrations::migrate(&mut conn, std::path::Path::new(":memory:"), 0).unwrap();
        conn
    }

    #[test]
    fn pages_pruning_and_histories_walk_their_keys_without_sorting() {
        let conn = migrated();
        let page = plan_of(&conn, FEED_PAGE);
        assert!(page.iter().any(|step| step.contains("USING PRIMARY KEY")), "{page:?}");
        assert!(
            !page.iter().any(|step| step.contains("TEMP B-TREE")),
            "no sort: {page:?}"
        );
        let prune = plan_of(&conn, PRUNE);
        assert!(
            prune
                .iter()
                .any(|step| step.contains("USING COVERING INDEX change_records_changed_at")),
            "{prune:?}"
        );
        let history = plan_of(&conn, crate::sql::CHANGES_AT_KEY);
        assert!(
            history
                .iter()
                .any(|step| step.contains("USING INDEX change_records_run_version")),
            "{history:?}"
        );
        assert!(
            !history.iter().any(|step| step.contains("TEMP B-TREE")),
            "no sort: {history:?}"
        );
    }

    #[test]
    fn positions_are_taken_in_ranges_one_after_the_other() {
        let conn = migrated();
        let mut first = take_positions(&conn, 3, "test").unwrap();
        assert_eq!(
            (
                first.next("test").unwrap(),
                first.next("test").unwrap(),
                first.next("test").unwrap()
            ),
            (1, 2, 3)
        );
        assert!(first.next("test").is_err(), "a range is not exceeded");
        let mut second = take_positions(&conn, 1, "test").unwrap();
        assert_eq!(second.next("test").unwrap(), 4);
    }
}
