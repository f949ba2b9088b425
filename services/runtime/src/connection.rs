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
//!
//! The connection's task sleeps until the deadline it last armed ([`Activity::wake_at`]) and
//! then looks again; what happens on the connection wakes it earlier only when it brings the
//! deadline before that (the first byte of a request after a long idle wait). A request that
//! begins or ends only removes or postpones the deadline, so it wakes nothing: under steady
//! traffic a connection's task wakes for its deadline about once per `HTTP_HEADER_TIMEOUT`,
//! not three times per request.

use crate::limits::Permit;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// When this was made: what [`armed`](Self::armed) counts from.
    born: Instant,
    /// When the connection's task will look at the deadline next, in nanoseconds from `born`
    /// (`u64::MAX`: not known yet).
    armed: AtomicU64,
    /// Woken when the deadline came before the time armed.
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
        let born = Instant::now();
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
            born,
            armed: AtomicU64::new(u64::MAX),
            changed: Notify::new(),
        })
    }

    fn nanos_since_born(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX - 1)
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
            let now = Instant::now();
            state.first_byte = Some(now);
            // Read under the lock that `wake_at` arms under: the task either armed before
            // this byte (and is woken if it must be) or sees it when it arms.
            let armed = self.armed.load(Ordering::Relaxed);
            drop(state);
            if self.nanos_since_born(now + self.header_timeout) < armed {
                self.changed.notify_one();
            }
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
    }

    /// When the connection is to be closed unless something happens first, and by which
    /// bound; `None` while a request is in flight.
    pub fn deadline(&self) -> Option<(Instant, Timeout)> {
        self.deadline_of(&self.lock())
    }

    fn deadline_of(&self, state: &State) -> Option<(Instant, Timeout)> {
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

    /// When the connection's task should look at the deadline next, which it promises to do
    /// (what happens before then and brings the deadline earlier wakes it through
    /// [`changed`](Self::changed)): the deadline, or, while a request is in flight, one header
    /// timeout from now.
    pub fn wake_at(&self) -> Instant {
        let state = self.lock();
        let at = match self.deadline_of(&state) {
            Some((at, _)) => at,
            None => Instant::now() + self.header_timeout,
        };
        self.armed
            .store(self.nanos_since_born(at), Ordering::Relaxed);
        at
    }

    /// Resolves when the deadline came before the time last armed by [`wake_at`](Self::wake_at).
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

    /// Whether `activity` has a wake-up pending.
    async fn woken(activity: &Activity) -> bool {
        tokio::time::timeout(Duration::from_millis(1), activity.changed())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_begin_and_end_wake_nothing() {
        let activity = Activity::new(HEADER, IDLE);
        let opened = Instant::now();
        assert_eq!(activity.wake_at(), opened + HEADER);
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.bytes_arrived();
        let request = activity.request_begun();
        // In flight, the task looks again one header timeout on.
        assert_eq!(activity.wake_at(), Instant::now() + HEADER);
        drop(request);
        assert!(!woken(&activity).await);
        // The next request's first byte: its header deadline comes after the time armed, so
        // nothing wakes; the task finds it when it looks at that time.
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.bytes_arrived();
        let first_byte = Instant::now();
        assert!(
            !woken(&activity).await,
            "a header deadline after the time armed"
        );
        tokio::time::advance(HEADER - Duration::from_secs(2)).await;
        assert_eq!(activity.expired(), None);
        assert_eq!(
            activity.wake_at(),
            first_byte + HEADER,
            "the next request's header deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_after_an_idle_wait_wakes_the_connection() {
        let activity = Activity::new(HEADER, IDLE);
        drop(activity.request_begun());
        let ended = Instant::now();
        assert_eq!(activity.wake_at(), ended + IDLE);
        tokio::time::advance(Duration::from_secs(20)).await;
        activity.bytes_arrived();
        assert!(
            woken(&activity).await,
            "a header deadline before the idle one armed"
        );
        assert_eq!(activity.wake_at(), Instant::now() + HEADER);
    }
}
