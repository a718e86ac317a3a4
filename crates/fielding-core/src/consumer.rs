//! Checkpointed consumers: [`FeedConsumer`] delivers an account's change
//! records to the user's async function, at least once, and keeps its
//! position in the store so a restarted consumer resumes where it stopped.
//!
//! What must stay true:
//!
//! * **Nothing lost.** The checkpoint is saved only after every record up
//!   to it was handled successfully; a crash before the save means the
//!   batch is delivered again, never skipped.
//! * **Few duplicates.** The checkpoint is saved after every batch, so a
//!   restart repeats at most the batch that was being handled.
//! * **No silent gaps.** A checkpoint that points before pruned records
//!   ends the consumer with [`FieldingError::CursorExpired`] instead of
//!   jumping over them: the user decides how to resynchronise.

use crate::observe::{self, StoreOperation};
use std::future::Future;
use std::time::Duration;

use crate::{AccountId, BoxError, ConsumerName, FeedRecord, FieldingError, FieldingService, StoreError};

/// Attempts of a feed read or checkpoint save while the store keeps
/// failing transiently, before the consumer gives up with the error.
const TRANSIENT_ATTEMPTS: u32 = 8;

/// Why a [`FeedConsumer`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// Reading the feed or saving the checkpoint failed; for
    /// [`FieldingError::CursorExpired`], the consumer's checkpoint is
    /// older than the feed's retention.
    #[error("change-feed consumer {consumer}: {source}")]
    Feed {
        /// The consumer.
        consumer: ConsumerName,
        /// What failed.
        #[source]
        source: FieldingError,
    },
    /// The handler failed on a record. The checkpoint was saved up to the
    /// record before it, so the next run starts with this record.
    #[error("change-feed consumer {consumer}: the handler failed on {record_position}: {source}")]
    Handler {
        /// The consumer.
        consumer: ConsumerName,
        /// The position of the record the handler failed on.
        record_position: crate::FeedPosition,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
}

impl ConsumerError {
    /// The stable machine code of this kind of failure.
    pub fn code(&self) -> &'static str {
        match self {
            ConsumerError::Feed { source, .. } => source.code(),
            ConsumerError::Handler { .. } => "consumer_handler_error",
        }
    }
}

/// Delivers one account's change records, in feed order, to an async
/// function, at least once, keeping its checkpoint in the store under its
/// [`ConsumerName`].
///
/// ```
/// use std::sync::Arc;
/// use fielding_core::*;
/// # async fn demo(service: FieldingService, account: AccountId) -> Result<(), Box<dyn std::error::Error>> {
/// let consumer = FeedConsumer::new(service, account, ConsumerName::parse("quota-service")?);
/// let (stop_sender, stop) = tokio::sync::oneshot::channel::<()>(); // send to stop
/// consumer
///     .run(
///         |record: FeedRecord| async move {
///             if record.change.status_to == Status::Completed {
///                 println!("release the quota of {}", record.run_id());
///             }
///             Ok::<(), std::io::Error>(())
///         },
///         async move { let _ = stop.await; },
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FeedConsumer {
    service: FieldingService,
    account: AccountId,
    name: ConsumerName,
    batch_size: usize,
}

impl FeedConsumer {
    /// Consumer `name` of `account`'s feed, through `service`.
    pub fn new(service: FieldingService, account: AccountId, name: ConsumerName) -> Self {
        FeedConsumer {
            service,
            account,
            name,
            batch_size: crate::watch::DEFAULT_WATCH_PAGE,
        }
    }

    /// Records per batch, and so per checkpoint save (default 500;
    /// clamped to `1..=`[`crate::MAX_FEED_PAGE`]): at most this many are
    /// delivered twice after a crash.
    pub fn with_batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.clamp(1, crate::MAX_FEED_PAGE);
        self
    }

    /// Delivers records to `handle`, one at a time in feed order, until
    /// `shutdown` completes (checked between batches: the batch being
    /// handled is finished and its checkpoint saved first) or a failure ends it. Starts after the
    /// saved checkpoint, or at the oldest kept record the first time.
    ///
    /// `handle` may see a record twice (after a crash or a failed save) and
    /// should be idempotent: each record's `(run_id, version)` is unique.
    pub async fn run<F, Fut, E>(self, mut handle: F, shutdown: impl Future<Output = ()>) -> Result<(), ConsumerError>
    where
        F: FnMut(FeedRecord) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<BoxError>,
    {
        let feed_error = |source: FieldingError| ConsumerError::Feed {
            consumer: self.name.clone(),
            source,
        };
        let store = self.service.store().clone();
        let start = retry(StoreError::is_retryable, || {
            observe::store_call(
                StoreOperation::LoadFeedCheckpoint,
                store.load_feed_checkpoint(self.account, &self.name),
            )
        })
        .await
        .map_err(|e| feed_error(e.into()))?;
        let mut watch = self.service.watch(self.account, start).with_page_size(self.batch_size);
        let mut saved = start;
        tokio::pin!(shutdown);
        loop {
            let page = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                page = retry_feed(&mut watch) => page.map_err(feed_error)?,
            };
            let mut handled = None;
            let mut failure = None;
            for record in page.records {
                let position = record.position;
                match handle(record).await {
                    Ok(()) => handled = Some(position),
                    Err(err) => {
                        failure = Some((position, err.into()));
                        break;
                    }
                }
            }
            // Past the batch's last record when it all went through: the
            // page's bookmark, so that a quiet account's checkpoint moves.
            let reached = match failure {
                None => Some(page.next),
                Some(_) => handled,
            };
            if let Some(position) = reached.filter(|p| Some(*p) != saved) {
                retry(StoreError::is_retryable, || {
                    observe::store_call(
                        StoreOperation::SaveFeedCheckpoint,
                        store.save_feed_checkpoint(self.account, &self.name, position),
                    )
                })
                .await
                .map_err(|e| feed_error(e.into()))?;
                saved = Some(position);
                tracing::debug!(consumer = %self.name, account = %self.account, %position, "change-feed checkpoint saved");
            }
            if let Some((record_position, source)) = failure {
                return Err(ConsumerError::Handler {
                    consumer: self.name.clone(),
                    record_position,
                    source,
                });
            }
        }
    }
}

/// `call`, repeated with growing pauses (10 ms, ×4, at most 2 s) while it
/// fails with an error `retryable` says may pass, at most
/// [`TRANSIENT_ATTEMPTS`] times in all.
async fn retry<T, E, F, Fut>(retryable: fn(&E) -> bool, mut call: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(10);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(err) if retryable(&err) && attempt < TRANSIENT_ATTEMPTS => {
                tracing::debug!(error = %err, attempt, "a change-feed consumer's store call failed; trying it again");
                tokio::time::sleep(pause).await;
                pause = (pause * 4).min(Duration::from_secs(2));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// [`retry`] for the watch's reads (a call that borrows the watch cannot be
/// handed out by a closure).
async fn retry_feed(watch: &mut crate::FeedWatch) -> Result<crate::FeedPage, FieldingError> {
    let mut pause = Duration::from_millis(10);
    let mut attempt = 1;
    loop {
        match watch.next_page().await {
            Err(err) if err.is_retryable() && attempt < TRANSIENT_ATTEMPTS => {
                tracing::debug!(error = %err, attempt, "a change-feed read failed; trying it again");
                tokio::time::sleep(pause).await;
                pause = (pause * 4).min(Duration::from_secs(2));
                attempt += 1;
            }
            other => return other,
        }
    }
}
