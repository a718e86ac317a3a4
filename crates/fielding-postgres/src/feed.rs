//! The change feed on PostgreSQL: reading an account's records in feed
//! order, pruning old records, and consumers' checkpoints, on the
//! connection the store hands in. The wake-ups are in `wakeups`.
//!
//! A record's position is `(txid, seq)`: the id of the transaction that
//! wrote it (`pg_current_xact_id()`, the column's default) and a number
//! from the table's sequence. Transaction ids are handed out when a
//! transaction first writes, not when it commits, so a record with a
//! lower id can still commit after one with a higher id has been read.
//! A read therefore returns only records below its snapshot's `xmin`:
//! every transaction with a lower id has ended, so nothing can appear
//! there any more, and `(xmin, 0)` is where the reader may continue when
//! its page is not full (docs/postgres.md, "Change feed").

use fielding_core::{
    AccountId, ConsumerName, FeedPage, FeedPosition, FeedRecord, ProjectId, Scope, StoreError, TargetGroupId, Timestamp,
};
use sqlx::postgres::{PgConnection, PgRow};

use crate::codec::{account, column, decode_change_at, Xid8};
use crate::error::backend;
use crate::sql::{FeedStatements, FEED_HORIZON, FEED_XMIN};

/// The column of the feed read where a record's change columns start
/// (after the position's two and the scope's two).
const CHANGE_AT: usize = 4;

/// The change columns' run id and action: no run id marks a row carrying
/// xmin or the horizon, and its action says which.
const RUN_ID_AT: usize = CHANGE_AT;
const ACTION_AT: usize = CHANGE_AT + 2;

/// `feed`: one statement (see `FeedStatements::read`).
pub(crate) async fn read(
    conn: &mut PgConnection,
    sql: &FeedStatements,
    account_id: AccountId,
    after: Option<FeedPosition>,
    limit: usize,
) -> Result<FeedPage, StoreError> {
    let op = "feed";
    // One more than asked, to tell whether more are readable now.
    let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    // No stored sequence number exceeds bigint: a larger minor sorts after
    // every record of its major, as bigint's maximum does.
    let after_seq = after.map_or(0, |p| i64::try_from(p.minor()).unwrap_or(i64::MAX));
    let rows = sqlx::query(&sql.read)
        .bind(account(account_id))
        .bind(after.map(|p| Xid8(p.major())))
        .bind(after_seq)
        .bind(fetch)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| backend(op, e))?;
    let mut xmin = None;
    let mut xmax = 0;
    let mut horizon = None;
    let mut records = Vec::with_capacity(rows.len().min(limit));
    let mut has_more = false;
    for row in &rows {
        let txid = column::<Xid8>(row, 0)?;
        let seq = sequence(column::<i64>(row, 1)?)?;
        if column::<Option<String>>(row, RUN_ID_AT)?.is_none() {
            match column::<String>(row, ACTION_AT)?.as_str() {
                FEED_XMIN => (xmin, xmax) = (Some(txid.0), seq),
                FEED_HORIZON => horizon = Some(FeedPosition::new(txid.0, seq)),
                other => return Err(StoreError::internal(format!("the feed read answered a row {other:?}"))),
            }
        } else if records.len() == limit {
            has_more = true;
        } else {
            records.push(decode_record(row, account_id, FeedPosition::new(txid.0, seq))?);
        }
    }
    let Some(xmin) = xmin else {
        return Err(StoreError::internal(
            "the feed read answered no xmin (it always answers one)",
        ));
    };
    if let (Some(after), Some(pruned_through)) = (after, horizon) {
        if after < pruned_through {
            return Err(StoreError::FeedExpired {
                account: account_id,
                after,
                pruned_through,
            });
        }
    }

    // No transaction id at or past xmax was ever handed out: the cursor
    // is from another database (restored, or made anew), and reading on
    // from it would skip what is written until ids pass it. Start over, as
    // after pruning.
    if let Some(after) = after.filter(|a| a.major() > xmax) {
        return Err(StoreError::FeedExpired {
            account: account_id,
            after,
            pruned_through: FeedPosition::new(xmin, 0),
        });
    }
    let from = after.or(horizon).unwrap_or(FeedPosition::ZERO);
    let last = records.last().map(|r| r.position);
    let next = if has_more {
        // More to read: on from the last record (from the cursor when
        // the limit was 0, which the service never asks for).
        last.unwrap_or(from)
    } else {
        // Not full: every record below xmin that this account has was
        // read, and every record still to appear has a txid of xmin or
        // more and a seq of at least 1, so it sorts after (xmin, 0).
        from.max(FeedPosition::new(xmin, 0))
            .max(last.unwrap_or(FeedPosition::ZERO))
    };
    Ok(FeedPage {
        records,
        next,
        has_more,
    })
}

fn decode_record(row: &PgRow, account_id: AccountId, position: FeedPosition) -> Result<FeedRecord, StoreError> {
    let project: String = column(row, 2)?;
    let target_group: String = column(row, 3)?;
    let corrupt =
        |e: fielding_core::InvalidId| StoreError::corrupt(format!("stored {} is invalid: {}", e.field(), e.reason()));
    let scope = Scope::new(
        account_id,
        ProjectId::parse(&project).map_err(corrupt)?,
        TargetGroupId::parse(&target_group).map_err(corrupt)?,
    );
    Ok(FeedRecord {
        position,
        scope,
        change: decode_change_at(row, CHANGE_AT)?,
    })
}

/// A stored sequence number (an identity column: 1 and up).
fn sequence(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::corrupt(format!("stored feed sequence number {seq} is negative")))
}

/// `prune_changes`: one statement (see `FeedStatements::prune`).
pub(crate) async fn prune(
    conn: &mut PgConnection,
    sql: &FeedStatements,
    changed_before: Timestamp,
    limit: usize,
) -> Result<usize, StoreError> {
    // PostgreSQL's LIMIT is a bigint; anything larger means "no limit".
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let removed: i64 = sqlx::query_scalar(&sql.prune)
        .bind(changed_before.as_datetime())
        .bind(limit)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| backend("prune_changes", e))?;
    // At most `limit` rows, which came from a `usize`.
    Ok(usize::try_from(removed).unwrap_or(usize::MAX))
}

pub(crate) async fn load_checkpoint(
    conn: &mut PgConnection,
    sql: &FeedStatements,
    account_id: AccountId,
    consumer: &ConsumerName,
) -> Result<Option<FeedPosition>, StoreError> {
    let saved: Option<(Xid8, String)> = sqlx::query_as(&sql.load_checkpoint)
        .bind(account(account_id))
        .bind(consumer.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| backend("load_feed_checkpoint", e))?;
    saved
        .map(|(txid, seq)| {
            let seq = seq
                .parse::<u64>()
                .map_err(|_| StoreError::corrupt(format!("stored checkpoint sequence number {seq:?} is invalid")))?;
            Ok(FeedPosition::new(txid.0, seq))
        })
        .transpose()
}

pub(crate) async fn save_checkpoint(
    conn: &mut PgConnection,
    sql: &FeedStatements,
    account_id: AccountId,
    consumer: &ConsumerName,
    position: FeedPosition,
) -> Result<(), StoreError> {
    sqlx::query(&sql.save_checkpoint)
        .bind(account(account_id))
        .bind(consumer.as_str())
        .bind(Xid8(position.major()))
        .bind(position.minor().to_string())
        .execute(&mut *conn)
        .await
        .map_err(|e| backend("save_feed_checkpoint", e))?;
    Ok(())
}
