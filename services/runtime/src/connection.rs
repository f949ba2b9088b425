//! One client connection's life: its place in the count of open connections, held by its
//! IO for as long as the socket is open (after a websocket upgrade too, since hyper hands
//! the same IO over), and how long it may wait between requests.
//!
//! hyper's own `header_read_timeout` would not do: in hyper 1 its timer starts as soon as
//! the connection waits for a request head, so on a kept-alive connection it bounds the idle
//! wait for the next request as well, and a 10 s header timeout would close idle connections
//! after 10 s, under the 60 s that proxies keep upstream connections for. So [`Activity`]
//! watches the connection instead, as nginx does (`client_header_timeout`,
//! `keepalive_timeout`):
//!
//! - a new connection's first request must have sent its headers within `HTTP_HEADER_TIMEOUT`
//!   of the connection's opening;
//! - a kept-alive connection with no request in flight may wait `HTTP_IDLE_TIMEOUT` for the
//!   first byte of its next request, which then must have sent its headers within
//!   `HTTP_HEADER_TIMEOUT` of that byte;
//! - while a request is in flight (from its head until its response has been sent), the
//!   request's own bounds apply (`HTTP_REQUEST_TIMEOUT`, `LONG_READ_TIMEOUT`).
//!
//! Past a bound the connection is closed without an answer: no request is in flight then.

use crate::limits::Permit;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Which bound closed a connection: the `timeout` label of
/// [`names::CONNECTIONS_TIMED_OUT`](crate::metrics::names::CONNECTIONS_TIMED_OUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Its request's headers took longer than `HTTP_HEADER_TIMEOUT`.
    Header,
    /// It waited longer than `HTTP_IDLE_TIMEOUT` for its next request.
    Idle,
}

impl Timeout {
    pub fn label(self) -> &'static str {
        match self {
            Timeout::Header => "header",
            Timeout::Idle => "idle",
        }
    }
}

/// What a connection is doing, for its deadline.
#[derive(Debug)]
pub struct Activity {
    header_timeout: Duration,
    idle_timeout: Duration,
    /// No request in flight and no byte of the next one yet: the next read that brings bytes
    /// marks the next request's start. Read without the lock, on every read.
    awaiting_request: AtomicBool,
    state: Mutex<State>,
    /// Woken when the deadline may have changed.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Requests whose response has not yet been sent.
    in_flight: usize,
    /// Requests begun on this connection.
    begun: u64,
    /// When the connection opened, or when its last request ended.
    since: Instant,
    /// When the first byte of the next request came, if it has.
    first_byte: Option<Instant>,
}

impl Activity {
    /// A connection opened now.
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Activity> {
        Arc::new(Activity {
            header_timeout,
            idle_timeout,
            awaiting_request: AtomicBool::new(true),
            state: Mutex::new(State {
                in_flight: 0,
                begun: 0,
                since: Instant::now(),
                first_byte: None,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes came from the client.
    fn bytes_arrived(&self) {
        if !self.awaiting_request.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut state = self.lock();
        if state.in_flight == 0 && state.first_byte.is_none() {
            state.first_byte = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A request's head has been read; it is in flight until the returned guard is dropped
    /// (with its response's body).
    pub fn request_begun(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.begun += 1;
        state.first_byte = None;
        self.awaiting_request.store(false, Ordering::Relaxed);
        drop(state);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    fn request_ended(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.since = Instant::now();
            state.first_byte = None;
            self.awaiting_request.store(true, Ordering::Relaxed);
        }
        drop(state);
        self.changed.notify_one();
    }

    /// When the connection is to be closed unless something happens first, and by which
    /// bound; `None` while a request is in flight.
    pub fn deadline(&self) -> Option<(Instant, Timeout)> {
        let state = self.lock();
        if state.in_flight > 0 {
            None
        } else if state.begun == 0 {
            Some((state.since + self.header_timeout, Timeout::Header))
        } else if let Some(first_byte) = state.first_byte {
            Some((first_byte + self.header_timeout, Timeout::Header))
        } else {
            Some((state.since + self.idle_timeout, Timeout::Idle))
        }
    }

    /// Resolves when the deadline may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The bound the connection has passed, if it has.
    pub fn expired(&self) -> Option<Timeout> {
        self.deadline()
            .filter(|(at, _)| *at <= Instant::now())
            .map(|(_, timeout)| timeout)
    }
}

/// A request in flight on its connection, until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A connection's IO: tells its [`Activity`] when bytes come, and holds the connection's
/// place in the count until the socket is closed.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    activity: Arc<Activity>,
    _permit: Permit,
}

impl<IO> Counted<IO> {
    pub fn new(io: IO, activity: Arc<Activity>, permit: Permit) -> Self {
        Counted {
            io,
            activity,
            _permit: permit,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(75);

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_timeout_from_its_opening() {
        let activity = Activity::new(HEADER, IDLE);
        let opened = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.bytes_arrived();
        assert_eq!(
            activity.deadline(),
            Some((opened + HEADER, Timeout::Header))
        );
        tokio::time::advance(HEADER).await;
        assert_eq!(activity.expired(), Some(Timeout::Header));
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_waits_idle_then_has_the_header_timeout_from_the_first_byte() {
        let activity = Activity::new(HEADER, IDLE);
        let request = activity.request_begun();
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(activity.deadline(), None, "a request in flight");
        assert_eq!(activity.expired(), None);
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.deadline(), Some((ended + IDLE, Timeout::Idle)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            activity.expired(),
            None,
            "past the header timeout, not idle's"
        );
        activity.bytes_arrived();
        let first_byte = Instant::now();
        assert_eq!(
            activity.deadline(),
            Some((first_byte + HEADER, Timeout::Header))
        );
        let _next = activity.request_begun();
        assert_eq!(activity.deadline(), None);
    }
}
