//! `ws://HOST/ws/chat/<threadId>/`: who is let in, and what each socket receives.

use crate::harness::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// How long a socket must stay silent to count as having received nothing. Only ever used
/// after a frame that was sent later has already arrived elsewhere, so it is a margin, not a
/// guess at latency.
const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn websocket_on_an_unknown_thread_is_refused_with_404() {
    let app = spawn_app().await;
    for path in [
        format!("/ws/chat/{}/", new_id()),
        format!("/ws/chat/{}", new_id()),
    ] {
        let refused = app
            .try_connect_ws(&path)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} opened"));
        assert_eq!(refused.status, Some(404), "{path}: {refused:?}");
    }
}

#[tokio::test]
async fn websocket_on_an_id_that_is_not_a_uuid_is_refused_with_404() {
    let app = spawn_app().await;
    for path in ["/ws/chat/not-a-uuid/", "/ws/chat/123", "/ws/chat/%20/"] {
        let refused = app
            .try_connect_ws(path)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path} opened"));
        assert_eq!(refused.status, Some(404), "{path}: {refused:?}");
    }
}

#[tokio::test]
async fn websocket_opens_with_and_without_trailing_slash() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut with_slash = app
        .try_connect_ws(&format!("/ws/chat/{thread}/"))
        .await
        .expect("with slash");
    let mut without_slash = app
        .try_connect_ws(&format!("/ws/chat/{thread}"))
        .await
        .expect("without slash");

    let posted = app.say(&thread, "hello").await;

    assert_eq!(with_slash.next_text().await, posted.text);
    assert_eq!(without_slash.next_text().await, posted.text);
}

#[tokio::test]
async fn websocket_frame_is_byte_identical_to_the_post_response_body() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;

    let posted = app
        .post_json(
            "/chat/message/",
            format!(
                r#"{{"user":{{"z":1,"a":{{"nested":["ü",1.50,true]}},"name":"Zoë"}},"thread":"{}","body":"  Grüße 🙂  ","send_by_user":"yes"}}"#,
                thread.to_uppercase()
            ),
            Some("application/json"),
        )
        .await;
    posted.expect(201);

    let frame = ws.next_text().await;
    assert_eq!(frame, posted.text, "the frame differs from the POST answer");
    let message: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(
        keys(&message),
        ["body", "id", "send_by_user", "thread", "timestamp", "user"]
    );
    assert_eq!(message["body"], "Grüße 🙂");
    assert_eq!(message["send_by_user"], true);
    assert_eq!(message["thread"], json!(thread));
}

#[tokio::test]
async fn two_sockets_on_one_thread_each_get_a_message_exactly_once() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut first = app.connect_ws(&thread).await;
    let mut second = app.connect_ws(&thread).await;

    let one = app.say(&thread, "one").await;
    let two = app.say(&thread, "two").await;

    for ws in [&mut first, &mut second] {
        assert_eq!(ws.next_text().await, one.text);
        assert_eq!(ws.next_text().await, two.text);
        ws.assert_silent(QUIET).await;
    }
}

#[tokio::test]
async fn a_socket_on_another_thread_gets_nothing() {
    let app = spawn_app().await;
    let watched = app.new_thread().await;
    let other = app.new_thread().await;
    let mut on_other = app.connect_ws(&other).await;
    let mut on_watched = app.connect_ws(&watched).await;

    let posted = app.say(&watched, "for the watched thread only").await;

    assert_eq!(on_watched.next_text().await, posted.text);
    on_other.assert_silent(QUIET).await;
    // The other socket still works: it gets its own thread's messages.
    let own = app.say(&other, "for the other thread").await;
    assert_eq!(on_other.next_text().await, own.text);
    on_watched.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_burst_of_100_messages_arrives_complete_and_in_stream_order() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;

    // Posted concurrently, so the order is the one the event stream gives them.
    let posted: Vec<String> = futures::stream::iter(0..100)
        .map(|i| {
            let app = &app;
            let thread = &thread;
            async move { app.say(thread, &format!("burst {i}")).await.text }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let mut received = Vec::new();
    for _ in 0..100 {
        received.push(ws.next_text().await);
    }
    ws.assert_silent(QUIET).await;

    let mut sorted_posted = posted.clone();
    sorted_posted.sort();
    let mut sorted_received = received.clone();
    sorted_received.sort();
    assert_eq!(
        sorted_received, sorted_posted,
        "the frames are not the 100 messages posted"
    );

    let stored = app.get_thread(&thread).await;
    let stream_order = message_ids(&stored);
    let frame_order: Vec<Value> = received
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap()["id"].clone())
        .collect();
    assert_eq!(
        frame_order, stream_order,
        "frames arrived out of the stream's order"
    );
}

#[tokio::test]
async fn client_frames_are_ignored_and_the_socket_keeps_working() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;

    ws.send(Message::text("garbage that is not JSON")).await;
    ws.send(Message::text(
        r#"{"body": "a client frame", "thread": "x"}"#,
    ))
    .await;
    ws.send(Message::binary(Bytes::from_static(&[
        0, 159, 146, 150, 255,
    ])))
    .await;
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await;
    ws.send(Message::text("")).await;

    let posted = app.say(&thread, "still here").await;
    assert_eq!(ws.next_text().await, posted.text);
    ws.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_closed_socket_does_not_disturb_the_others() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let closing = app.connect_ws(&thread).await;
    let mut staying = app.connect_ws(&thread).await;
    closing.close().await;

    let posted = app.say(&thread, "after a close").await;
    assert_eq!(staying.next_text().await, posted.text);

    // A socket opened after the last one closed is subscribed afresh.
    staying.close().await;
    let subject = crate::harness::gateway::stored_subject(&thread);
    eventually(
        "the gateway to unsubscribe from the thread",
        PROJECTION_TIMEOUT,
        || async { (app.nats.subscriptions_on(&subject).await == 0).then_some(()) },
    )
    .await;
    let mut fresh = app.connect_ws(&thread).await;
    let again = app.say(&thread, "again").await;
    assert_eq!(fresh.next_text().await, again.text);
}
