//! A websocket client that stops reading, over real TCP: it must not hold back the other
//! sockets of its thread, and once it has fallen `WS_CLIENT_QUEUE` messages behind it is
//! closed with 1013 (try again later).

use crate::harness::ws::FRAME_TIMEOUT;
use crate::harness::*;
use futures::StreamExt;
use std::time::Instant;
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
