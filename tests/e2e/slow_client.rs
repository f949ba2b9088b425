//! A websocket client that stops reading, over real TCP: it must not hold back the other
//! sockets of its thread, and once it has fallen `WS_CLIENT_QUEUE` messages behind it is
//! closed with 1013 (try again later). One that stalls for longer than `WS_SEND_TIMEOUT`
//! gets every message in order or is closed, never a gap: what it missed comes on resuming
//! with `since`.

use crate::harness::gateway::{connect_with, frame_id, ws_url};
use crate::harness::ws::FRAME_TIMEOUT;
use crate::harness::*;
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const QUEUE: usize = 4;
const MESSAGES: usize = 100;

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1013_and_slows_no_one_else() {
    let app = options()
        .env("WS_CLIENT_QUEUE", QUEUE.to_string())
        // The queue, not the send timeout, is what must catch this client.
        .env("WS_SEND_TIMEOUT", "120s")
        .start()
        .await;
    let thread = app.new_thread().await;
    let mut healthy = app.connect_ws(&thread).await;

    // A small receive buffer, so that the kernel stops taking frames early on.
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(app.ws_addr).await.expect("connecting");
    let (mut slow, _) = tokio_tungstenite::client_async(app.ws_url(&thread), stream)
        .await
        .expect("the slow client's upgrade");

    // The healthy client reads as the frames come.
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..MESSAGES {
            let frame: serde_json::Value =
                serde_json::from_str(&healthy.next_text().await).expect("a JSON frame");
            ids.push(frame["id"].clone());
        }
        ids
    });
    // ~10 MB of frames: more than the socket buffers hold, so the slow client's session
    // blocks and its queue overflows.
    let body = "x".repeat(100 * 1024);
    let mut posted = Vec::new();
    for _ in 0..MESSAGES {
        posted.push(app.say(&thread, &body).await.json()["id"].clone());
    }
    let received = within("the healthy socket's frames", FRAME_TIMEOUT * 4, reader)
        .await
        .expect("the healthy reader panicked");
    assert_eq!(
        received, posted,
        "the healthy socket missed or reordered frames"
    );

    // Now the slow client reads: what the buffers held, then a 1013 close.
    let deadline = Instant::now() + FRAME_TIMEOUT * 4;
    let mut frames = 0;
    let close = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, slow.next()).await {
            Err(_) => panic!("the slow client was not closed; it read {frames} frames"),
            Ok(Some(Ok(Message::Text(_)))) => frames += 1,
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                panic!("the slow client's socket failed after {frames} frames: {e}")
            }
            Ok(None) => panic!("the slow client's socket ended without a close frame"),
        }
    };
    assert_eq!(close, Some(1013), "close code after {frames} frames");
    assert!(
        frames < MESSAGES,
        "the slow client got all {frames} frames: it was never behind"
    );
}

/// A socket on `app`'s gateway whose client takes in at most a few KiB until it reads.
async fn small_window_socket(
    app: &App,
    url: String,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    // A small receive buffer, so that the kernel stops taking frames early on.
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(app.ws_addr).await.expect("connecting");
    tokio_tungstenite::client_async(url, stream)
        .await
        .expect("the upgrade")
        .0
}

#[tokio::test]
async fn a_client_that_stalls_past_the_send_timeout_gets_every_message_in_order_or_a_close() {
    const SEND_TIMEOUT: Duration = Duration::from_secs(1);
    let app = options()
        // The send timeout, not the queue, is what must catch this client.
        .env("WS_CLIENT_QUEUE", "10000")
        .env("WS_SEND_TIMEOUT", format!("{}s", SEND_TIMEOUT.as_secs()))
        .start()
        .await;
    let thread = app.new_thread().await;
    let before = app.say(&thread, "before the client").await.json();
    let before = before["id"].as_str().expect("an id").to_owned();
    let mut stalled = small_window_socket(&app, app.ws_url(&thread)).await;

    // ~6 MB of frames while the client reads nothing: more than the buffers on the way hold,
    // so that a frame's send outlasts the send timeout, and several sends in a row would.
    let body = "x".repeat(100 * 1024);
    let mut posted = Vec::new();
    for _ in 0..60 {
        let message = app.say(&thread, &body).await.json();
        posted.push(message["id"].as_str().expect("an id").to_owned());
    }
    // The stall itself (a few send timeouts), not a readiness wait.
    tokio::time::sleep(SEND_TIMEOUT * 4).await;
    // One more after the stall: a socket that skipped a message and carried on shows it here.
    let last = app.say(&thread, "after the stall").await.json();
    posted.push(last["id"].as_str().expect("an id").to_owned());

    // It reads again: a run of messages from the first one on, then either the rest or the
    // end of the socket.
    let deadline = Instant::now() + FRAME_TIMEOUT * 4;
    let mut got = Vec::new();
    let mut close = None;
    while got.len() < posted.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stalled.next()).await {
            Err(_) => panic!(
                "the stalled client got {} of {} frames, then nothing, and no close: \
                 it missed messages without being told",
                got.len(),
                posted.len()
            ),
            Ok(Some(Ok(Message::Text(text)))) => got.push(frame_id(&text)),
            Ok(Some(Ok(Message::Close(frame)))) => {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => {}
            // The session ended while a frame was on its way: the socket just ends.
            Ok(Some(Err(_)) | None) => break,
        }
    }
    assert_eq!(
        got,
        posted[..got.len()],
        "the stalled client missed or reordered a message without being closed"
    );
    assert!(
        got.len() < posted.len(),
        "the stalled client got every frame: no send ever outlasted the send timeout"
    );
    assert!(
        close.is_none() || close == Some(1013),
        "close code {close:?} after {} frames",
        got.len()
    );

    // Resuming with `since` brings exactly what it missed.
    let since = got.last().unwrap_or(&before);
    let mut resumed = connect_with(&ws_url(app.ws_addr, &thread, Some(since)), &[])
        .await
        .expect("resuming");
    let mut rest = Vec::new();
    while got.len() + rest.len() < posted.len() {
        match tokio::time::timeout(FRAME_TIMEOUT, resumed.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => rest.push(frame_id(&text)),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!(
                "resumed after {since}: {other:?} after {} frames",
                rest.len()
            ),
        }
    }
    assert_eq!(rest, posted[got.len()..], "what the resumed socket got");
}
