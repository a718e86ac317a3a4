//! Following an account's feed as it grows: [`FeedWatch`].
//!
//! What must stay true: a watch subscribes to wake-ups *before* each read,
//! so a record committed between a read and the wait wakes it (no lost
//! wake-up), and it reads again at least every poll interval, so a wake-up
//! that never comes (another process, a dropped `LISTEN` connection)
//! delays a record by at most that interval and never loses it.

use std::collections::VecDeque;
use std::time::Duration;

use futures_core::Stream;

use crate::service::{next_retry, woken_within};
use crate::{AccountId, ChangeSubscription, FeedPage, FeedPosition, FeedRecord, FieldingError, FieldingService};

/// Records per read of a watch, by default.
pub const DEFAULT_WATCH_PAGE: usize = 500;

/// Follows one account's change feed from a cursor, yielding records as
/// they commit. Made by [`FieldingService::watch`]; use
/// [`next_page`](Self::next_page) for batches or
/// [`into_stream`](Self::into_stream) for a `Stream` of records.
///
/// ```
/// use std::sync::Arc;
/// use futures_util::StreamExt;
/// use fielding_core::*;
/// # async fn demo(service: FieldingService, account: AccountId) -> Result<(), FieldingError> {
/// let mut changes = std::pin::pin!(service.watch(account, None).into_stream());
/// while let Some(record) = changes.next().await {
///     let record = record?;
///     println!("{} v{}: {}", record.run_id(), record.change.version, record.change.action);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FeedWatch {
    service: FieldingService,
    account: AccountId,
    cursor: Option<FeedPosition>,
    page_size: usize,
    subscription: Option<ChangeSubscription>,
    /// Set after a wake-up that found nothing: read again this soon.
    retry: Option<Duration>,
}

impl FieldingService {
    /// Follows `account`'s feed from `after` (from the oldest kept record
    /// when `None`). Woken by the store's [`crate::ChangeNotifier`] when
    /// it has one, reading again every
    /// [`feed_poll_interval`](Self::feed_poll_interval) regardless.
    pub fn watch(&self, account: AccountId, after: Option<FeedPosition>) -> FeedWatch {
        FeedWatch {
            service: self.clone(),
            account,
            cursor: after,
            page_size: DEFAULT_WATCH_PAGE,
            subscription: None,
            retry: None,
        }
    }
}

impl FeedWatch {
    /// Reads up to `size` records at a time (default
    /// [`DEFAULT_WATCH_PAGE`]; clamped to `1..=`[`crate::MAX_FEED_PAGE`]).
    pub fn with_page_size(mut self, size: usize) -> Self {
        self.page_size = size.clamp(1, crate::MAX_FEED_PAGE);
        self
    }

    /// The cursor the watch continues from: after the last record it has
    /// returned (or a bookmark past it).
    pub fn cursor(&self) -> Option<FeedPosition> {
        self.cursor
    }

    /// The next non-empty page, waiting for one as long as it takes.
    /// Errors end nothing: the watch stays where it was, so calling again
    /// retries the same read (an expired cursor stays expired, though).
    pub async fn next_page(&mut self) -> Result<FeedPage, FieldingError> {
        loop {
            if self.subscription.is_none() {
                self.subscription = self
                    .service
                    .store()
                    .change_notifier()
                    .map(|n| n.subscribe(self.account));
            }
            let page = self
                .service
                .read_feed(self.account, self.cursor, self.page_size)
                .await?;
            self.cursor = Some(page.next);
            if !page.records.is_empty() {
                self.retry = None;
                return Ok(page);
            }
            let pause = self.retry.unwrap_or(self.service.feed_poll_interval());
            let woken = woken_within(self.subscription.as_mut(), pause).await;
            self.retry = next_retry(woken, self.retry, self.service.feed_poll_interval());
        }
    }

    /// The watch as a `Stream` of records, in feed order. An error is
    /// yielded once and the stream goes on retrying from the same cursor
    /// on the next poll; stop polling it to stop.
    pub fn into_stream(self) -> impl Stream<Item = Result<FeedRecord, FieldingError>> + Send {
        let state = (self, VecDeque::<FeedRecord>::new(), false);
        futures_util::stream::unfold(state, |(mut watch, mut buffered, failed)| async move {
            if let Some(record) = buffered.pop_front() {
                return Some((Ok(record), (watch, buffered, false)));
            }
            if failed {
                // After an error, wait before reading again: a consumer
                // that keeps polling a failing store must not spin.
                tokio::time::sleep(watch.service.feed_poll_interval()).await;
            }
            match watch.next_page().await {
                Ok(page) => {
                    buffered.extend(page.records);
                    let first = buffered.pop_front()?;
                    Some((Ok(first), (watch, buffered, false)))
                }
                Err(err) => Some((Err(err), (watch, buffered, true))),
            }
        })
    }
}
