//! One websocket session: push the frames the socket missed (when it resumed), then the
//! thread's live frames; ignore what the client sends, ping, and close on shutdown (1012, so
//! that the client reconnects elsewhere with `since`), on a stalled client, on a client that
//! fell too far behind (1013) or sent a frame over the limit (1009), and when the thread is
//! erased (4404: gone for good). The frames it missed are
//! sent as the live ones are, so that a shutdown or a client that leaves stops them too.

use crate::feeds::{Frame, LOAD_THE_THREAD_FIRST, THREAD_ERASED};
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::time::Duration;
use threadline_runtime::metrics::names;
use tokio::sync::broadcast;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Timing of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// A frame the client does not take within this long closes the session.
    pub send_timeout: Duration,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    ShuttingDown,
    TooSlow,
    Idle,
    FeedClosed,
    ClientError,
    BacklogTooLong,
    ThreadErased,
}

/// Closes a socket whose `since` is further back than the backlog a socket is sent, telling
/// its client to load the thread first.
pub async fn close_for_backlog<Si>(mut sink: Si, limits: SessionLimits) -> Ended
where
    Si: Sink<Message> + Unpin,
{
    let frame = CloseFrame {
        code: LOAD_THE_THREAD_FIRST,
        reason: Utf8Bytes::from_static(
            "too far behind: GET the thread, then resume from its last id",
        ),
    };
    let _ = timeout(limits.send_timeout, sink.send(Message::Close(Some(frame)))).await;
    Ended::BacklogTooLong
}

/// Runs a session over the two halves of any websocket-like sink and stream (a split axum
/// `WebSocket` in production), so that it can be tested without a network. The socket comes
/// split, so that the session's future holds two handles rather than the whole socket.
/// `backlog` goes first, then the live frames stored after `skip_through`, until the thread
/// is `erased`.
#[allow(clippy::too_many_arguments)]
pub async fn session<Si, St, E>(
    mut sink: Si,
    mut incoming: St,
    backlog: Vec<Utf8Bytes>,
    skip_through: u64,
    frames: &mut broadcast::Receiver<Frame>,
    limits: SessionLimits,
    shutdown: CancellationToken,
    erased: CancellationToken,
) -> Ended
where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut backlog = backlog.into_iter();
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    let mut last_heard = Instant::now();
    // What woke the session; acted on after the `select!`, so that the futures it waited on
    // are gone while a frame is sent: the session's task stays small (it lives as long as the
    // socket, one per visitor).
    enum Next {
        Frame(Utf8Bytes),
        Ping,
        Heard,
        End(Ended, Option<(u16, &'static str)>),
    }
    let (ended, close) = loop {
        // In this order: a shutdown or a client that leaves ends the session before another
        // frame is sent, and a steady flow of frames does not hold the pings back.
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Next::End(Ended::ShuttingDown, Some((close_code::RESTART, "server restarting, reconnect with since"))),
            _ = erased.cancelled() => Next::End(Ended::ThreadErased, Some((THREAD_ERASED, "thread erased"))),
            message = incoming.next() => match message {
                None | Some(Ok(Message::Close(_))) => Next::End(Ended::ClientClosed, None),
                // A frame or message over the limit, or a broken frame; if the connection
                // itself failed, the close frame goes nowhere.
                Some(Err(_)) => Next::End(Ended::ClientError, Some((close_code::SIZE, "frame too big or malformed"))),
                // Frames from the client are ignored, whatever they hold; they prove it is alive.
                Some(Ok(_)) => Next::Heard,
            },
            _ = ping.tick() => Next::Ping,
            frame = next_frame(&mut backlog, frames, skip_through) => match frame {
                Ok(frame) => Next::Frame(frame),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "closing a websocket that fell too far behind");
                    Next::End(Ended::TooSlow, Some((close_code::AGAIN, "client too slow")))
                }
                Err(broadcast::error::RecvError::Closed) => {
                    Next::End(Ended::FeedClosed, Some((close_code::AGAIN, "feed closed, reconnect")))
                }
            },
        };
        match next {
            Next::Frame(frame) => {
                match timeout(limits.send_timeout, sink.send(Message::Text(frame))).await {
                    Ok(Ok(())) => metrics::counter!(names::FRAMES_SENT).increment(1),
                    Ok(Err(_)) => break (Ended::ClientClosed, None),
                    Err(_) => break (Ended::TooSlow, Some((close_code::AGAIN, "client too slow"))),
                }
            }
            Next::Ping => {
                if last_heard.elapsed() >= limits.idle_timeout {
                    break (Ended::Idle, Some((close_code::AWAY, "no answer to pings")));
                }
                let sent = timeout(
                    limits.send_timeout,
                    sink.send(Message::Ping(Default::default())),
                );
                if sent.await.map_or(true, |r| r.is_err()) {
                    break (Ended::ClientClosed, None);
                }
            }
            Next::Heard => last_heard = Instant::now(),
            Next::End(ended, close) => break (ended, close),
        }
    };
    if ended == Ended::TooSlow {
        metrics::counter!(names::SLOW_CLIENT_CLOSES).increment(1);
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = timeout(limits.send_timeout, sink.send(Message::Close(Some(frame)))).await;
    }
    ended
}

/// The next frame to send: the backlog's, then the live ones stored after `skip_through`.
async fn next_frame(
    backlog: &mut std::vec::IntoIter<Utf8Bytes>,
    frames: &mut broadcast::Receiver<Frame>,
    skip_through: u64,
) -> Result<Utf8Bytes, broadcast::error::RecvError> {
    if let Some(frame) = backlog.next() {
        return Ok(frame);
    }
    loop {
        let frame = frames.recv().await?;
        if frame.sequence > skip_through {
            return Ok(frame.text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;

    /// A fake socket: what the session sends goes to `sent`, what the test pushes into
    /// `client` arrives as the client's frames.
    struct FakeSocket {
        sent: mpsc::UnboundedSender<Message>,
        client: mpsc::UnboundedReceiver<Result<Message, ()>>,
    }

    impl Sink<Message> for FakeSocket {
        type Error = mpsc::SendError;
        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::pin::Pin::new(&mut self.get_mut().sent).poll_ready(cx)
        }
        fn start_send(self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            std::pin::Pin::new(&mut self.get_mut().sent).start_send(item)
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::pin::Pin::new(&mut self.get_mut().sent).poll_flush(cx)
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::pin::Pin::new(&mut self.get_mut().sent).poll_close(cx)
        }
    }

    impl Stream for FakeSocket {
        type Item = Result<Message, ()>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.get_mut().client.poll_next_unpin(cx)
        }
    }

    fn frame(sequence: u64, text: &str) -> Frame {
        Frame {
            sequence,
            text: Utf8Bytes::from(text.to_owned()),
        }
    }

    fn limits() -> SessionLimits {
        SessionLimits {
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn frames_are_pushed_and_client_frames_ignored() {
        let (sent_tx, mut sent) = mpsc::unbounded();
        let (client, client_rx) = mpsc::unbounded();
        let socket = FakeSocket {
            sent: sent_tx,
            client: client_rx,
        };
        let (tx, mut rx) = broadcast::channel(8);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let (sink, incoming) = socket.split();
                session(
                    sink,
                    incoming,
                    vec![Utf8Bytes::from_static("{\"id\":0}")],
                    0,
                    &mut rx,
                    limits(),
                    shutdown,
                    CancellationToken::new(),
                )
                .await
            }
        });
        client
            .unbounded_send(Ok(Message::Text("garbage {".into())))
            .unwrap();
        client
            .unbounded_send(Ok(Message::Binary(vec![1, 2, 3].into())))
            .unwrap();
        tx.send(frame(1, "{\"id\":1}")).unwrap();
        assert_eq!(sent.next().await, Some(Message::Text("{\"id\":0}".into())));
        assert_eq!(sent.next().await, Some(Message::Text("{\"id\":1}".into())));
        shutdown.cancel();
        assert_eq!(task.await.unwrap(), Ended::ShuttingDown);
        match sent.next().await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, close_code::RESTART),
            other => panic!("expected a service-restart close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_closed() {
        let (sent_tx, mut sent) = mpsc::unbounded();
        let (_client, client_rx) = mpsc::unbounded();
        let socket = FakeSocket {
            sent: sent_tx,
            client: client_rx,
        };
        let (tx, mut rx) = broadcast::channel(2);
        for i in 0..5 {
            tx.send(frame(i, &format!("{i}"))).unwrap();
        }
        let (sink, incoming) = socket.split();
        let ended = session(
            sink,
            incoming,
            Vec::new(),
            0,
            &mut rx,
            limits(),
            CancellationToken::new(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(ended, Ended::TooSlow);
        let mut last = None;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(50), sent.next()).await
        {
            last = Some(message);
        }
        assert!(matches!(last, Some(Message::Close(Some(f))) if f.code == close_code::AGAIN));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped() {
        let (sent_tx, _sent) = mpsc::unbounded();
        let (_client, client_rx) = mpsc::unbounded();
        let socket = FakeSocket {
            sent: sent_tx,
            client: client_rx,
        };
        let (_tx, mut rx) = broadcast::channel::<Frame>(2);
        let (sink, incoming) = socket.split();
        let ended = session(
            sink,
            incoming,
            Vec::new(),
            0,
            &mut rx,
            limits(),
            CancellationToken::new(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(ended, Ended::Idle);
    }

    /// A session whose backlog is still being sent when the client leaves or the server shuts
    /// down: it stops at once instead of sending the rest.
    async fn backlog_stops_on(leave: bool) {
        let (sent_tx, mut sent) = mpsc::unbounded();
        let (client, client_rx) = mpsc::unbounded();
        let socket = FakeSocket {
            sent: sent_tx,
            client: client_rx,
        };
        let shutdown = CancellationToken::new();
        if leave {
            client.unbounded_send(Ok(Message::Close(None))).unwrap();
        } else {
            shutdown.cancel();
        }
        let backlog: Vec<Utf8Bytes> = (0..1000).map(|i| Utf8Bytes::from(format!("{i}"))).collect();
        let (_tx, mut rx) = broadcast::channel(8);
        let (sink, incoming) = socket.split();
        let ended = session(
            sink,
            incoming,
            backlog,
            0,
            &mut rx,
            limits(),
            shutdown,
            CancellationToken::new(),
        )
        .await;
        let expected = if leave {
            Ended::ClientClosed
        } else {
            Ended::ShuttingDown
        };
        assert_eq!(ended, expected);
        let mut frames = 0;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(50), sent.next()).await
        {
            frames += usize::from(matches!(message, Message::Text(_)));
        }
        assert_eq!(
            frames, 0,
            "backlog frames sent after the session should have ended"
        );
    }

    #[tokio::test]
    async fn the_backlog_stops_when_the_client_leaves() {
        backlog_stops_on(true).await;
    }

    #[tokio::test]
    async fn the_backlog_stops_on_shutdown() {
        backlog_stops_on(false).await;
    }

    #[tokio::test]
    async fn a_socket_of_an_erased_thread_is_closed_with_its_code() {
        let (sent_tx, mut sent) = mpsc::unbounded();
        let (_client, client_rx) = mpsc::unbounded();
        let socket = FakeSocket {
            sent: sent_tx,
            client: client_rx,
        };
        let (tx, mut rx) = broadcast::channel(8);
        let erased = CancellationToken::new();
        let task = tokio::spawn({
            let erased = erased.clone();
            async move {
                let (sink, incoming) = socket.split();
                session(
                    sink,
                    incoming,
                    Vec::new(),
                    0,
                    &mut rx,
                    limits(),
                    CancellationToken::new(),
                    erased,
                )
                .await
            }
        });
        tx.send(frame(1, "before")).unwrap();
        assert_eq!(sent.next().await, Some(Message::Text("before".into())));
        erased.cancel();
        assert_eq!(task.await.unwrap(), Ended::ThreadErased);
        match sent.next().await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, THREAD_ERASED),
            other => panic!("expected a 4404 close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn live_frames_up_to_the_resumed_sequence_are_skipped() {
        let (sent_tx, mut sent) = mpsc::unbounded();
        let (_client, client_rx) = mpsc::unbounded();
        let socket = FakeSocket {
            sent: sent_tx,
            client: client_rx,
        };
        let (tx, mut rx) = broadcast::channel(8);
        for sequence in [7, 9, 12] {
            tx.send(frame(sequence, &format!("{sequence}"))).unwrap();
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let (sink, incoming) = socket.split();
                session(
                    sink,
                    incoming,
                    Vec::new(),
                    9,
                    &mut rx,
                    limits(),
                    shutdown,
                    CancellationToken::new(),
                )
                .await
            }
        });
        assert_eq!(sent.next().await, Some(Message::Text("12".into())));
        shutdown.cancel();
        assert_eq!(task.await.unwrap(), Ended::ShuttingDown);
    }
}
