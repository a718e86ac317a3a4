//! # fielding-core
//!
//! The domain of *fielding runs*: the period during which a survey target
//! group is live and collecting answers. This crate holds the rules and
//! nothing else: no I/O, no HTTP, no SQL.
//!
//! * [`FieldingRun`] and its validated ids ([`AccountId`], [`ProjectId`],
//!   [`TargetGroupId`], [`FieldingRunId`], [`UserId`]), millisecond
//!   [`Timestamp`]s and the four [`Status`]es.
//! * [`lifecycle`]: which command is allowed in which (effective) status.
//! * [`Version`], [`ETag`] and [`IfMatch`]: optimistic locking per RFC 9110.
//! * [`FieldingStore`]: the async storage trait adapters implement
//!   (`fielding-memory`, `fielding-sqlite`, `fielding-postgres`).
//! * [`FieldingService`]: the use cases, each load → check → decide →
//!   compare-and-swap, with [`FieldingError`] for every failure.
//! * [`BulkJob`] and [`BulkRunner`]: one action over many target groups,
//!   recorded by a submission and worked in the background, each item
//!   applied at most once (see `docs/jobs.md`).
//! * The change feed ([`FeedRecord`], [`FieldingService::read_feed`],
//!   [`FeedWatch`], [`FeedConsumer`]): every change of an account, in
//!   commit order, resumable from a cursor (see `docs/feed.md`).
//!
//! ```
//! use std::sync::Arc;
//! use fielding_core::*;
//!
//! # async fn demo(store: Arc<dyn FieldingStore>) -> Result<(), FieldingError> {
//! let service = FieldingService::new(store);
//! let scope = Scope::parse("101", "01BTGNYV6HRNK8K8VKZASZCFP0", "01BTGNYV6HRNK8K8VKZASZCFP1")?;
//! let me = UserId::random();
//! let start: Timestamp = "2031-01-01T09:00:00Z".parse().map_err(|e: InvalidTimestamp| e.for_field("start_fielding_at"))?;
//! let end: Timestamp = "2031-01-31T09:00:00Z".parse().map_err(|e: InvalidTimestamp| e.for_field("end_fielding_at"))?;
//!
//! let created = service.schedule(scope, start, end, me).await?;
//! assert_eq!(created.etag.to_string(), "\"1\"");
//!
//! // Writers send back the ETag they saw; a stale one is refused (412).
//! let if_match = IfMatch::parse(&created.etag.to_string())?;
//! let launched = service.launch_now(&created.run.key(), &if_match, me).await?;
//! assert_eq!(launched.run.status, Status::Live);
//! let stale = service.pause(&created.run.key(), &if_match, me).await.unwrap_err();
//! assert_eq!(stale.code(), "precondition_failed_error");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod bulk;
mod change;
mod clock;
pub mod codec;
mod consumer;
mod error;
mod feed;
mod ids;
mod job;
pub mod lifecycle;
mod migration;
pub mod observe;
mod precondition;
mod run;
mod runner;
mod service;
mod status;
mod store;
mod time;
mod version;
mod watch;

pub use bulk::{
    BulkAction, BulkClaim, BulkItem, BulkItemFailure, BulkItemOutcome, BulkJob, BulkJobCreated, BulkJobKey,
    BulkJobStatus, ClaimToken, DecideItem, ItemUpdate,
};
pub use change::{Action, ChangeRecord};
pub use clock::{Clock, ManualClock, SystemClock};
pub use consumer::{ConsumerError, FeedConsumer};
pub use error::{FieldingError, InvalidParam, INTERNAL_ERROR_DETAIL};
pub use feed::{ChangeNotifier, ChangeSubscription, ConsumerName, FeedPage, FeedPosition, FeedRecord};
pub use ids::{AccountId, FieldingRunId, InvalidId, JobId, JobKey, ProjectId, RunKey, Scope, TargetGroupId, UserId};
pub use job::{
    FieldingRunJob, IdempotencyKey, InvalidJobColumns, JobCreated, JobFailure, JobFailureCode, JobKind, JobOutcome,
    JobRequest, JobState, JobTraceId,
};
pub use lifecycle::Command;
pub use migration::MigrationReport;
pub use precondition::Precondition;
pub use run::FieldingRun;
pub use runner::{BulkRunner, BulkRunnerOptions};
pub use service::{
    Applied, FieldingService, HistoryPage, NewBulkJob, NewJob, RetryPolicy, SubmittedBulkJob, SubmittedJob,
    DEFAULT_FEED_PAGE, DEFAULT_FEED_POLL_INTERVAL, JOB_RESUME_AFTER, MAX_FEED_PAGE, MAX_FEED_WAIT,
    SAFETY_NET_POLL_INTERVAL,
};
pub use status::Status;
pub use store::{BoxError, Decide, Decided, FieldingStore, PlannedWrite, StoreError, Update, UpdateNow, UpdateOutcome};
pub use time::{InvalidTimestamp, Timestamp};
pub use version::{ETag, EntityTag, IfMatch, InvalidIfMatch, Version};
pub use watch::{FeedWatch, DEFAULT_WATCH_PAGE};

// The README's examples use the `fielding` facade, so they are that
// crate's doctests (`ReadmeDoctests` in crates/fielding/src/lib.rs).

/// `docs/jobs.md`'s code example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/jobs.md")]
pub struct JobsDocDoctests;

/// `docs/feed.md`'s code example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/feed.md")]
pub struct FeedDocDoctests;
