//! Reading the change feed: one page, a long poll, and a run's history in
//! pages. Watching ([`crate::FeedWatch`]) and checkpointed consumers
//! ([`crate::FeedConsumer`]) are built on these.

use crate::observe::{self, StoreOperation};
use std::time::Duration;

use tokio::time::Instant;

use crate::{AccountId, ChangeRecord, FeedPage, FeedPosition, FieldingError, FieldingService, RunKey, Version};

/// The most records one page of the feed (or of a run's history) holds.
pub const MAX_FEED_PAGE: usize = 1000;

/// Records per page when the caller does not say.
pub const DEFAULT_FEED_PAGE: usize = 100;

/// The longest a long poll ([`FieldingService::wait_for_changes`]) waits:
/// below the usual 60 s idle timeouts of proxies and load balancers
/// (nginx, AWS ALB), so an empty answer gets back through them.
pub const MAX_FEED_WAIT: Duration = Duration::from_secs(30);

/// How often a waiting reader reads again without a wake-up, by default:
/// the longest a missed wake-up (another process on one SQLite file)
/// delays a record.
pub const DEFAULT_FEED_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How often a waiting reader reads again, by default, when the store's
/// wake-ups cover every writer (memory; PostgreSQL while `LISTEN` is
/// connected): a safety net only, so that hundreds of idle consumers cost
/// a few reads a second between them.
pub const SAFETY_NET_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// The first pause before reading again when a wake-up found nothing new
/// (on PostgreSQL a committed record can wait for an older transaction to
/// end before it is readable); doubled up to the poll interval.
const EMPTY_WAKE_RETRY: Duration = Duration::from_millis(5);

/// A page of one run's history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The records after the cursor, oldest first.
    pub records: Vec<ChangeRecord>,
    /// The version to continue after (the last one returned, or the
    /// cursor when nothing was).
    pub next: Option<Version>,
    /// `true` when the run has more records after this page.
    pub has_more: bool,
}

impl FieldingService {
    /// One page of `account`'s change feed: up to `limit` records after
    /// `after` (from the oldest kept record when `None`), in commit order.
    ///
    /// Refused with a validation error naming `limit` unless it is
    /// `1..=`[`MAX_FEED_PAGE`], and with [`FieldingError::CursorExpired`]
    /// when records after `after` have been pruned.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fielding_core::*;
    /// # async fn demo(store: Arc<dyn FieldingStore>, account: AccountId) -> Result<(), FieldingError> {
    /// let service = FieldingService::new(store);
    /// let mut cursor = None;
    /// loop {
    ///     let page = service.read_feed(account, cursor, 500).await?;
    ///     for record in &page.records {
    ///         println!("{} is now {} (version {})", record.run_id(), record.change.status_to, record.change.version);
    ///     }
    ///     cursor = Some(page.next);
    ///     if !page.has_more {
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_feed(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
    ) -> Result<FeedPage, FieldingError> {
        check_limit(limit)?;
        Ok(observe::store_call(StoreOperation::Feed, self.store().feed(account, after, limit)).await?)
    }

    /// A long poll: like [`read_feed`](Self::read_feed), but when nothing
    /// is there yet, waits up to `wait` for a record and returns as soon as
    /// one commits (woken by the store, reading again at least every poll
    /// interval). An empty page after `wait` carries a `next` cursor to
    /// poll on from. `wait` above [`MAX_FEED_WAIT`] is refused.
    ///
    /// Waiting costs one task and one subscription, no reads, until a
    /// wake-up or the poll interval.
    pub async fn wait_for_changes(
        &self,
        account: AccountId,
        after: Option<FeedPosition>,
        limit: usize,
        wait: Duration,
    ) -> Result<FeedPage, FieldingError> {
        check_limit(limit)?;
        if wait > MAX_FEED_WAIT {
            return Err(FieldingError::invalid_field(
                "wait",
                format!("must be at most {} seconds", MAX_FEED_WAIT.as_secs()),
            ));
        }
        let deadline = Instant::now() + wait;
        let mut subscription = self.store().change_notifier().map(|n| n.subscribe(account));
        let mut cursor = after;
        let mut retry = None;
        loop {
            let page = observe::store_call(StoreOperation::Feed, self.store().feed(account, cursor, limit)).await?;
            let now = Instant::now();
            if !page.records.is_empty() || now >= deadline {
                return Ok(page);
            }
            // On from the bookmark, except for a reader that sent no cursor:
            // it reads from the horizon again, so a prune while it waits can
            // never answer it with an expired cursor it did not send.
            if cursor.is_some() {
                cursor = Some(page.next);
            }
            let pause = retry.unwrap_or(self.feed_poll_interval()).min(deadline - now);
            let woken = woken_within(subscription.as_mut(), pause).await;
            retry = next_retry(woken, retry, self.feed_poll_interval());
        }
    }

    /// A page of the history of the run at `key`: up to `limit` records
    /// with a version above `after` (from the oldest kept one when
    /// `None`), oldest first. Not found when there is no such run.
    pub async fn run_history(
        &self,
        key: &RunKey,
        after: Option<Version>,
        limit: usize,
    ) -> Result<HistoryPage, FieldingError> {
        check_limit(limit)?;
        let all = self.changes(key).await?;
        let mut rest = all.into_iter().filter(|c| after.is_none_or(|after| c.version > after));
        let records: Vec<ChangeRecord> = rest.by_ref().take(limit).collect();
        let has_more = rest.next().is_some();
        let next = records.last().map(|c| c.version).or(after);
        Ok(HistoryPage {
            records,
            next,
            has_more,
        })
    }
}

/// What to wait before reading again. After a wake-up that found nothing
/// (on PostgreSQL the record may be held back by an older transaction
/// still open, whose end sends no wake-up of its own), a short pause that
/// doubles on every empty read, woken or not, up to the poll interval; a
/// reader that was not in such a chain waits the poll interval.
pub(crate) fn next_retry(woken: bool, retry: Option<Duration>, poll: Duration) -> Option<Duration> {
    let next = match (woken, retry) {
        (_, Some(pause)) => pause * 2,
        (true, None) => EMPTY_WAKE_RETRY,
        (false, None) => return None,
    };
    (next < poll).then_some(next)
}

/// Waits for a wake-up or `pause`, whichever comes first (`pause` alone
/// without a subscription); `true` when it was a wake-up.
pub(crate) async fn woken_within(subscription: Option<&mut crate::ChangeSubscription>, pause: Duration) -> bool {
    match subscription {
        Some(subscription) => tokio::select! {
            () = subscription.changed() => true,
            () = tokio::time::sleep(pause) => false,
        },
        None => {
            tokio::time::sleep(pause).await;
            false
        }
    }
}

fn check_limit(limit: usize) -> Result<(), FieldingError> {
    if (1..=MAX_FEED_PAGE).contains(&limit) {
        Ok(())
    } else {
        Err(FieldingError::invalid_field(
            "limit",
            format!("must be between 1 and {MAX_FEED_PAGE}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_wake_up_retries_soon_then_falls_back_to_polling() {
        let poll = Duration::from_millis(100);
        assert_eq!(next_retry(false, None, poll), None, "no chain: the poll interval");
        // Once started by a wake-up, the chain goes on through the quiet
        // re-reads that follow (nothing wakes a reader when the open
        // transaction holding its record back ends).
        for woken_later in [true, false] {
            let mut retry = next_retry(true, None, poll);
            let mut pauses = Vec::new();
            while let Some(pause) = retry {
                pauses.push(pause.as_millis());
                retry = next_retry(woken_later, retry, poll);
            }
            assert_eq!(pauses, vec![5, 10, 20, 40, 80]);
        }
    }

    #[test]
    fn limits_outside_the_range_name_the_field() {
        for bad in [0, MAX_FEED_PAGE + 1] {
            let err = check_limit(bad).unwrap_err();
            assert_eq!(err.invalid_params()[0].name, "limit");
        }
        assert!(check_limit(1).is_ok() && check_limit(MAX_FEED_PAGE).is_ok());
    }
}
