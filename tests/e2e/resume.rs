//! Resuming with `?since=<message id>`: a socket that reconnects gets every message stored
//! after the one it saw last, in stream order, then the live ones, each once; sockets show
//! only what the stream stored; repeats stay single past the stream's duplicate window; any id
//! the log holds resumes, also one the gateway's feed has not shown yet; and opening a socket
//! depends on nothing outside threadline.

use crate::harness::gateway::{connect_with, frame_id, stored_subject, ws_url};
use crate::harness::proxy::Proxy;
use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Long enough for a wrong frame to arrive if one were coming.
const QUIET: Duration = Duration::from_millis(500);

fn id_of(response: &HttpResponse) -> String {
    response.expect(201)["id"]
        .as_str()
        .expect("an id")
        .to_owned()
}

#[tokio::test]
async fn a_resumed_socket_gets_exactly_what_it_missed_then_live_messages() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    let m1 = app.say(&thread, "m1").await;
    assert_eq!(ws.next_text().await, m1.text);
    ws.close().await;

    let mut missed = Vec::new();
    for i in 2..=6 {
        missed.push(id_of(&app.say(&thread, &format!("m{i}")).await));
    }
    let m7 = new_id();
    app.publish_event(
        &app.message_subject(&thread),
        &[("Nats-Msg-Id", &m7)],
        agent_reply(&m7, &thread, "m7 from an agent"),
    )
    .await;
    missed.push(m7);

    let url = format!("/ws/chat/{thread}/?since={}", id_of(&m1));
    let mut resumed = app
        .try_connect_ws(&url)
        .await
        .expect("resuming with a known since");
    for expected in &missed {
        assert_eq!(&frame_id(&resumed.next_text().await), expected);
    }
    let m8 = app.say(&thread, "m8").await;
    assert_eq!(resumed.next_text().await, m8.text, "then the live one");
    resumed.assert_silent(QUIET).await;
}

#[tokio::test]
async fn resuming_from_the_latest_message_gets_only_live_ones() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let last = app.say(&thread, "seen").await;
    let mut ws = app
        .try_connect_ws(&format!("/ws/chat/{thread}?since={}", id_of(&last)))
        .await
        .expect("resuming");
    let live = app.say(&thread, "live").await;
    assert_eq!(ws.next_text().await, live.text);
    ws.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_socket_resumes_from_its_own_post_that_the_gateway_s_feed_has_not_shown_yet() {
    let mut app = options().replicas("gateway", 0).start().await;
    let (proxy, _, client) = Proxy::gateway_behind(&mut app).await;
    let thread = client.new_thread().await;
    let mut watching = client.connect_ws(&thread).await;
    let first = client.say(&thread, "before").await;
    assert_eq!(watching.next_text().await, first.text, "the feed is live");

    // The server's republished copy of the next stored message never reaches the gateway: its
    // feed, which the watching socket holds open, stays behind until the next message shows
    // the gap. The client holds that message's id from its own 201.
    proxy.lose_next(&stored_subject(&thread));
    let own = client.say(&thread, "the client's own").await;
    let lost = eventually(
        "the proxy to lose a message",
        PROJECTION_TIMEOUT,
        || async {
            let lost = proxy.lost();
            (!lost.is_empty()).then_some(lost)
        },
    )
    .await;
    assert_eq!(
        frame_id(std::str::from_utf8(&lost[0]).expect("a UTF-8 payload")),
        id_of(&own),
        "the proxy lost another message than the client's own"
    );

    let mut resumed = client
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={}", id_of(&own)))
        .await
        .unwrap_or_else(|refused| {
            panic!("an id of the thread that the feed has not shown was refused: {refused:?}")
        });
    let next = client.say(&thread, "next").await;
    assert_eq!(
        resumed.next_text().await,
        next.text,
        "exactly what follows the since"
    );
    resumed.assert_silent(QUIET).await;
    // The feed filled its gap: the watching socket got both, once, in order.
    assert_eq!(watching.next_text().await, own.text);
    assert_eq!(watching.next_text().await, next.text);
    watching.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_malformed_or_unknown_since_is_refused_before_the_upgrade() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let other = app.new_thread().await;
    let elsewhere = id_of(&app.say(&other, "in another thread").await);
    let cases = [
        (
            "nope".to_owned(),
            "\u{201c}nope\u{201d} is not a valid UUID.".to_owned(),
        ),
        (
            elsewhere.clone(),
            format!("Message \"{elsewhere}\" is not in this thread."),
        ),
        (
            new_id(),
            String::new(), // checked below: an id never posted
        ),
    ];
    for (since, detail) in cases {
        let refused = app
            .try_connect_ws(&format!("/ws/chat/{thread}/?since={since}"))
            .await
            .err()
            .unwrap_or_else(|| panic!("since={since} was accepted"));
        assert_eq!(refused.status, Some(400), "since={since}");
        let body: Value = serde_json::from_str(&refused.body).expect("a JSON body");
        let expected = if detail.is_empty() {
            format!("Message \"{since}\" is not in this thread.")
        } else {
            detail
        };
        assert_eq!(body, json!({ "since": [expected] }), "since={since}");
    }
    // An unknown thread stays a 404, since or not.
    let refused = app
        .try_connect_ws(&format!("/ws/chat/{}/?since={elsewhere}", new_id()))
        .await
        .err()
        .expect("an unknown thread");
    assert_eq!(refused.status, Some(404));
}

#[tokio::test]
async fn a_core_published_event_the_stream_refuses_reaches_no_socket() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    let stored = new_id();
    let subject = app.message_subject(&thread);
    app.publish_event(
        &subject,
        &[("Nats-Msg-Id", &stored)],
        agent_reply(&stored, &thread, "stored"),
    )
    .await;
    assert_eq!(frame_id(&ws.next_text().await), stored);

    // Plain NATS publishes on the thread's subject that JetStream does not store: a repeat of
    // a stored id (with another body), and one that expects a sequence the subject is not at.
    let nats = app.nats().await;
    let refused = new_id();
    let mut repeat = async_nats::HeaderMap::new();
    repeat.insert("Nats-Msg-Id", stored.as_str());
    let mut expected_last = async_nats::HeaderMap::new();
    expected_last.insert("Nats-Msg-Id", refused.as_str());
    expected_last.insert("Nats-Expected-Last-Subject-Sequence", "999999");
    for (headers, id) in [(repeat, &stored), (expected_last, &refused)] {
        nats.publish_with_headers(
            subject.clone(),
            headers,
            agent_reply(id, &thread, "never stored").into(),
        )
        .await
        .expect("a core publish");
    }
    nats.flush().await.expect("flushing");

    let marker = app.say(&thread, "marker").await;
    assert_eq!(
        ws.next_text().await,
        marker.text,
        "only the stored message and the marker reach the socket"
    );
    let listed = message_ids(&app.get_thread(&thread).await);
    assert_eq!(listed, [json!(stored), marker.json()["id"].clone()]);
}

#[tokio::test]
async fn a_repeat_stored_after_the_duplicate_window_shows_once_live_resumed_and_in_get() {
    let app = options().env("DUPLICATE_WINDOW", "2s").start().await;
    let thread = app.new_thread().await;
    let before = id_of(&app.say(&thread, "before the reply").await);
    let mut live = app.connect_ws(&thread).await;

    let reply = new_id();
    let payload = agent_reply(&reply, &thread, "an agent's reply");
    let subject = app.message_subject(&thread);
    let first = app
        .publish_event(&subject, &[("Nats-Msg-Id", &reply)], payload.clone())
        .await;
    assert_eq!(frame_id(&live.next_text().await), reply);
    // Slack redelivers after the stream's window (2 s here) has passed: stored again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = app
        .publish_event(&subject, &[("Nats-Msg-Id", &reply)], payload)
        .await;
    assert!(
        !second.duplicate && second.sequence > first.sequence,
        "the stream was meant to store the repeat: {second:?}"
    );
    let marker = app.say(&thread, "marker").await;
    assert_eq!(live.next_text().await, marker.text, "the live socket");

    let mut resumed = app
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={before}"))
        .await
        .expect("resuming");
    assert_eq!(frame_id(&resumed.next_text().await), reply);
    assert_eq!(resumed.next_text().await, marker.text, "the resumed socket");
    resumed.assert_silent(QUIET).await;

    let listed = message_ids(&app.get_thread(&thread).await);
    assert_eq!(
        listed,
        [json!(before), json!(reply), marker.json()["id"].clone()]
    );
}

#[tokio::test]
async fn a_subscriber_on_everything_that_never_answers_does_not_stall_a_new_socket() {
    let app = spawn_app().await;
    let nats = app.nats().await;
    let _everything = nats.subscribe(">").await.expect("subscribing to >");
    nats.flush().await.expect("flushing");

    let thread = app.new_thread().await;
    let url = ws_url(app.addr("gateway", 0), &thread, None);
    let mut socket = connect_with(&url, &[])
        .await
        .unwrap_or_else(|(status, body)| panic!("refused with {status}: {body}"));
    let posted = app.say(&thread, "hello").await;
    let frame = futures::StreamExt::next(&mut socket)
        .await
        .expect("a frame")
        .expect("a frame");
    assert_eq!(frame.into_text().expect("text").as_str(), posted.text);
}
