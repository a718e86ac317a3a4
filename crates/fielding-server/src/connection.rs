//! Serving one accepted connection: hyper's HTTP/1 on the socket, with the
//! header, idle and shutdown rules of [`ConnectionLimits`].
//!
//! hyper bounds the size of a request head (`max_header_size`, answered
//! 431). Time is watched here rather than with hyper's own
//! `header_read_timeout`, because hyper starts that one timer as soon as a
//! connection is idle, so it cannot tell a client that is slow to send a
//! head (cut after [`ConnectionLimits::header_read_timeout`]) from a
//! kept-alive client between requests (cut after
//! [`ConnectionLimits::idle_timeout`]).
//!
//! A connection is always in one of three phases ([`Phase`]):
//! * **head**: request bytes may be arriving, no request is being served;
//!   the head must be complete within the header read timeout;
//! * **busy**: a request is being served, until its response is fully
//!   written; the request body's own deadline is the API's
//!   (`FieldingApi::with_body_timeout`), so nothing is timed here;
//! * **idle**: a response was written and no byte of the next request has
//!   arrived; the idle timeout applies.
//!
//! At shutdown a head or idle connection is closed at once (no request of
//! its own is lost), and a busy one finishes its response, then closes; a
//! request whose body stops arriving for [`STALL_AT_SHUTDOWN`] is cut (its
//! body read fails), so a stalled upload cannot hold the shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::app::Front;
use crate::limits::ConnectionLimits;
use crate::telemetry;

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head since `since`.
    Head { since: Instant },
    /// Serving this many requests (HTTP/1: one, or briefly two while the
    /// previous response's body is released). Once the latest request's
    /// body has arrived in full (`body_done`), further bytes belong to the
    /// next request's head: `next_head` is when the first of them came.
    Busy {
        requests: usize,
        body_done: bool,
        next_head: Option<Instant>,
    },
    /// Nothing to do since `since`.
    Idle { since: Instant },
}

/// Why the server closed a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// The request head took too long.
    HeaderTimeout,
    /// The connection sat idle too long.
    IdleTimeout,
}

impl Expiry {
    fn label(self) -> &'static str {
        match self {
            Expiry::HeaderTimeout => "header_timeout",
            Expiry::IdleTimeout => "idle_timeout",
        }
    }
}

/// The phase of one connection, shared by its socket, its requests and
/// its watchdog.
///
/// The watchdog is never woken by a phase change (that would cost the
/// connection's task an extra poll, and a read attempt, per request);
/// instead it looks again at [`Activity::look_again_at`], which is never
/// later than any deadline a phase starting in between could have.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    fn new(opened: Instant) -> Self {
        Self {
            phase: Mutex::new(Phase::Head { since: opened }),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *phase = change(*phase);
    }

    /// Bytes arrived from the client: an idle connection starts a head, and
    /// so does a busy one whose request body is complete (the head is
    /// timed once the response is written).
    fn bytes_arrived(&self) {
        self.update(|phase| match phase {
            Phase::Idle { .. } => Phase::Head { since: Instant::now() },
            Phase::Busy {
                requests,
                body_done: true,
                next_head: None,
            } => Phase::Busy {
                requests,
                body_done: true,
                next_head: Some(Instant::now()),
            },
            other => other,
        });
    }

    /// hyper handed a request to the app; `has_body`: whether body bytes
    /// are still to come (until [`Activity::body_finished`], arriving bytes
    /// are the body's, not the next head's).
    fn request_started(self: &Arc<Self>, has_body: bool) -> BusyGuard {
        self.update(|phase| {
            let requests = match phase {
                Phase::Busy { requests, .. } => requests + 1,
                Phase::Head { .. } | Phase::Idle { .. } => 1,
            };
            Phase::Busy {
                requests,
                body_done: !has_body,
                next_head: None,
            }
        });
        BusyGuard(Arc::clone(self))
    }

    /// The latest request's body has arrived in full (or it had none).
    fn body_finished(&self) {
        self.update(|phase| match phase {
            Phase::Busy {
                requests, next_head, ..
            } => Phase::Busy {
                requests,
                body_done: true,
                next_head,
            },
            other => other,
        });
    }

    fn request_finished(&self) {
        self.update(|phase| match phase {
            Phase::Busy {
                requests,
                body_done,
                next_head,
            } if requests > 1 => Phase::Busy {
                requests: requests - 1,
                body_done,
                next_head,
            },
            Phase::Busy {
                next_head: Some(since), ..
            } => Phase::Head { since },
            _ => Phase::Idle { since: Instant::now() },
        });
    }

    /// When the watchdog must look again, at `now`: the head's deadline;
    /// otherwise no later than `now` plus the shorter timeout, because a
    /// head or idle phase that starts after `now` expires no sooner than
    /// that. (A busy connection is looked at once per that period, an idle
    /// one a few times per idle timeout.)
    fn look_again_at(&self, limits: &ConnectionLimits, now: Instant) -> Instant {
        let soonest_new_deadline = now + limits.header_read_timeout.min(limits.idle_timeout);
        match self.phase() {
            Phase::Head { since } => since + limits.header_read_timeout,
            Phase::Idle { since } => (since + limits.idle_timeout).min(soonest_new_deadline),
            Phase::Busy { .. } => soonest_new_deadline,
        }
    }

    /// When the connection expires if nothing changes, and why; `None`
    /// while a request is being served.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Expiry)> {
        match self.phase() {
            Phase::Head { since } => Some((since + limits.header_read_timeout, Expiry::HeaderTimeout)),
            Phase::Idle { since } => Some((since + limits.idle_timeout, Expiry::IdleTimeout)),
            Phase::Busy { .. } => None,
        }
    }
}

/// Held from the moment a request reaches the app until its response
/// body is written (or dropped): the connection is busy meanwhile.
#[derive(Debug)]
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The socket, reporting arriving bytes to the connection's [`Activity`].
struct Watched {
    socket: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.socket).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

/// How long, once the server is shutting down, a request body may go
/// without a byte before the request is cut: a client still uploading
/// finishes, one that stalled does not hold the shutdown.
pub const STALL_AT_SHUTDOWN: Duration = Duration::from_secs(1);

/// The server is shutting down and the request body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the server is shutting down and the request body stopped arriving")]
pub struct ShuttingDown;

/// A request body that fails once the server is shutting down and no
/// byte has arrived for [`STALL_AT_SHUTDOWN`].
struct RequestBody {
    incoming: Incoming,
    /// Told when the body has arrived in full.
    activity: Arc<Activity>,
    shutdown: CancellationToken,
    /// Made the first time the body has to wait for the client: most
    /// bodies arrive with their head and never need it.
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// While shutting down: when the wait for the next frame gives up.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.incoming).poll_frame(cx) {
            this.stall = None;
            if frame.is_none() || this.incoming.is_end_stream() {
                this.activity.body_finished();
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if !this.shutdown.is_cancelled() {
            let shutdown = &this.shutdown;
            let cancelled = this
                .cancelled
                .get_or_insert_with(|| Box::pin(shutdown.clone().cancelled_owned()));
            if cancelled.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let stall = this
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(STALL_AT_SHUTDOWN)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ShuttingDown)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// A response body that keeps its connection busy until it is written.
struct ResponseBody {
    inner: Body,
    _busy: BusyGuard,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's HTTP/1 settings for every connection.
pub(crate) fn http1(limits: &ConnectionLimits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Timed by the watchdog instead (see the module docs).
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        // hyper's read buffer never needs to outgrow the largest head; its
        // minimum is 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
}

/// Serves `socket` until the client leaves, a timeout closes it, or the
/// shutdown completes it.
pub(crate) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    front: Front,
    http1: Arc<hyper::server::conn::http1::Builder>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        socket,
        activity: Arc::clone(&activity),
    });
    let service = {
        let activity = Arc::clone(&activity);
        let shutdown = shutdown.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let has_body = !http_body::Body::is_end_stream(request.body());
            let busy = activity.request_started(has_body);
            let shutdown = shutdown.clone();
            let front = front.clone();
            async move {
                let request = request.map(|incoming| {
                    if has_body {
                        Body::new(RequestBody {
                            activity: Arc::clone(&busy.0),
                            incoming,
                            shutdown,
                            cancelled: None,
                            stall: None,
                        })
                    } else {
                        // Nothing to wait for: no wrapper to allocate.
                        Body::empty()
                    }
                });
                let response = front.serve(peer, request).await;
                Ok::<Response<Body>, Infallible>(response.map(|inner| Body::new(ResponseBody { inner, _busy: busy })))
            }
        })
    };
    let connection = http1.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    let look_again = tokio::time::sleep_until(activity.look_again_at(&limits, Instant::now()));
    tokio::pin!(look_again);
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = look_again.as_mut() => {
                let now = Instant::now();
                if let Some((at, why)) = activity.deadline(&limits) {
                    if at <= now {
                        metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => why.label()).increment(1);
                        tracing::debug!(%peer, reason = why.label(), "closing the connection");
                        return;
                    }
                }
                look_again.as_mut().reset(activity.look_again_at(&limits, now));
            }
            () = shutdown.cancelled(), if !draining => {
                if activity.deadline(&limits).is_some() {
                    metrics::counter!(telemetry::CONNECTIONS_CLOSED, "reason" => "shutdown").increment(1);
                    return;
                }
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_phases_move_the_deadline() {
        let opened = Instant::now();
        let activity = Arc::new(Activity::new(opened));
        let limits = limits();
        assert_eq!(
            activity.deadline(&limits),
            Some((opened + Duration::from_secs(10), Expiry::HeaderTimeout)),
            "a new connection has the header timeout for its first request"
        );
        let busy = activity.request_started(true);
        assert_eq!(activity.deadline(&limits), None, "nothing is timed while serving");
        activity.bytes_arrived();
        assert_eq!(activity.deadline(&limits), None, "body bytes do not start a head");
        activity.body_finished();
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(busy);
        let idle_since = Instant::now();
        assert_eq!(
            activity.deadline(&limits),
            Some((idle_since + Duration::from_secs(30), Expiry::IdleTimeout))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.bytes_arrived();
        assert_eq!(
            activity.deadline(&limits),
            Some((Instant::now() + Duration::from_secs(10), Expiry::HeaderTimeout)),
            "the next request's first byte starts its header timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_after_the_body_start_the_next_heads_timeout_even_while_busy() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let busy = activity.request_started(true);
        activity.body_finished();
        let arrived = Instant::now();
        activity.bytes_arrived();
        assert_eq!(activity.deadline(&limits()), None, "still serving");
        tokio::time::advance(Duration::from_secs(4)).await;
        activity.bytes_arrived();
        drop(busy);
        assert_eq!(
            activity.deadline(&limits()),
            Some((arrived + Duration::from_secs(10), Expiry::HeaderTimeout)),
            "the head is timed from its first byte, not from the response"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_keep_the_connection_busy_until_the_last_ends() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let first = activity.request_started(false);
        let second = activity.request_started(false);
        drop(first);
        assert_eq!(activity.deadline(&limits()), None);
        drop(second);
        assert!(activity.deadline(&limits()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_looks_again_before_any_deadline_a_new_phase_could_have() {
        let limits = limits();
        let opened = Instant::now();
        let activity = Arc::new(Activity::new(opened));
        assert_eq!(
            activity.look_again_at(&limits, opened),
            opened + Duration::from_secs(10),
            "a head: its deadline"
        );
        let busy = activity.request_started(false);
        let now = Instant::now();
        assert_eq!(
            activity.look_again_at(&limits, now),
            now + Duration::from_secs(10),
            "busy: once per the shorter timeout"
        );
        drop(busy);
        let idle_since = Instant::now();
        assert_eq!(
            activity.look_again_at(&limits, idle_since),
            idle_since + Duration::from_secs(10),
            "idle: soon enough to catch a head starting now"
        );
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(
            activity.look_again_at(&limits, Instant::now()),
            idle_since + Duration::from_secs(30),
            "idle near its end: the idle deadline"
        );
        // A head starting at any moment after a look is due no sooner than
        // the next look.
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.bytes_arrived();
        let (due, why) = activity.deadline(&limits).unwrap();
        assert_eq!(why, Expiry::HeaderTimeout);
        assert!(due >= idle_since + Duration::from_secs(30));
    }
}
