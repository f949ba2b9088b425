//! A thread's length does not make its sockets dear: opening a socket on a thread of 100,000
//! messages costs a bounded number of requests to the stream leader and bounded memory (its
//! feed reads the ids of the thread's last 10,000 messages, not their payloads),
//! each time its last socket closes and a new one opens; a socket that resumes from any id
//! the log holds gets exactly what follows it, or, past the backlog bound, a close code that
//! tells the client to load the thread first.

use crate::harness::client::STREAM;
use crate::harness::gateway::frame_id;
use crate::harness::proxy::Proxy;
use crate::harness::*;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::future::IntoFuture;
use std::time::Duration;

/// Long enough for a wrong frame to arrive if one were coming.
const QUIET: Duration = Duration::from_millis(500);

/// The close code of a socket whose `since` is older than the backlog a socket is sent
/// (docs/websocket-clients.md).
const LOAD_THE_THREAD_FIRST: u16 = 4000;

/// The most messages a resumed socket is sent before its live ones (docs/websocket-clients.md).
const BACKLOG_MAX: usize = 1000;

/// Counts the JetStream API requests that anyone sends to the server, message gets included
/// (which `/jsz` leaves out of its count), with a subscription to `$JS.API.>`: the server
/// hands it a copy of each request, and still answers the requester itself.
struct ApiRequests {
    nats: async_nats::Client,
    requests: async_nats::Subscriber,
}

impl ApiRequests {
    async fn start(app: &App) -> ApiRequests {
        let nats = app.nats().await;
        let requests = nats.subscribe("$JS.API.>").await.expect("subscribing");
        nats.flush().await.expect("flushing");
        ApiRequests { nats, requests }
    }

    /// The requests sent since the last call (or the start).
    async fn counted(&mut self) -> usize {
        // Once the server answers the flush, it has passed on every request before it.
        self.nats.flush().await.expect("flushing");
        let mut count = 0;
        // Unconstrained: tokio's cooperative budget would stop the count at 128.
        while let Some(Some(_)) = tokio::task::unconstrained(self.requests.next()).now_or_never() {
            count += 1;
        }
        count
    }
}

/// Publishes `count` valid messages to `thread` straight to JetStream, acknowledged
/// asynchronously, as an outside publisher with a fast link would; returns their ids in
/// stream order.
async fn seed_messages(app: &App, thread: &str, count: usize) -> Vec<String> {
    let js = app.jetstream().await;
    let subject = app.message_subject(thread);
    let ids: Vec<String> = (0..count).map(|_| new_id()).collect();
    let mut pending = FuturesUnordered::new();
    for (n, id) in ids.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let payload = agent_reply(id, thread, &format!("message {n}"));
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .expect("publishing a seed message");
        pending.push(ack.into_future());
        if pending.len() >= 2000 {
            pending
                .next()
                .await
                .expect("an ack")
                .expect("a stored message");
        }
    }
    while let Some(ack) = pending.next().await {
        ack.expect("a stored message");
    }
    ids
}

#[tokio::test]
async fn fifty_sockets_open_on_a_thread_of_100_000_messages_at_a_bounded_cost() {
    // No projector: the test is about the gateway, and folding 100,000 messages would only
    // slow the machine down.
    let app = options().replicas("projector", 0).start().await;
    let thread = app.new_thread().await;
    let ids = within(
        "publishing 100,000 messages",
        Duration::from_secs(120),
        seed_messages(&app, &thread, 100_000),
    )
    .await;
    let gateway = app.addr("gateway", 0);
    let memory_before = resident_bytes_of_listener(gateway);
    let mut requests = ApiRequests::start(&app).await;

    // Each socket is the thread's only one: its feed starts afresh every time, and learns
    // the ids of the thread's last 10,000 messages (headers only).
    within(
        "opening 50 sockets, one after another",
        Duration::from_secs(60),
        async {
            for _ in 0..50 {
                let ws = app.connect_ws(&thread).await;
                ws.close().await;
            }
        },
    )
    .await;
    let asked = requests.counted().await;
    let grown = resident_bytes_of_listener(gateway).saturating_sub(memory_before);
    eprintln!("50 sockets: {asked} JetStream API requests, the gateway grew by {grown} bytes");
    // A feed's start: the thread's last sequence (1 request), where its last 10,000
    // messages begin (2 here) and their ids, 1,000 a time (10): at most 13 for each socket.
    assert!(
        asked <= 700,
        "50 sockets on a thread of 100,000 messages made {asked} JetStream API requests"
    );
    assert!(
        grown < 20 << 20,
        "50 sockets on a thread of 100,000 messages grew the gateway by {grown} bytes"
    );

    // A socket resuming from one of the latest messages gets exactly what follows it, then
    // the live ones, at a bounded cost too.
    requests.counted().await;
    let since = &ids[ids.len() - 10];
    let mut resumed = app
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={since}"))
        .await
        .expect("resuming from a recent message");
    for expected in &ids[ids.len() - 9..] {
        assert_eq!(&frame_id(&resumed.next_text().await), expected);
    }
    let asked = requests.counted().await;
    eprintln!("one resume: {asked} JetStream API requests");
    assert!(
        asked <= 60,
        "resuming on a thread of 100,000 messages made {asked} JetStream API requests"
    );
    let live = app.say(&thread, "live").await;
    assert_eq!(resumed.next_text().await, live.text, "then the live one");
    resumed.assert_silent(QUIET).await;

    // From the thread's first message, the backlog is past the bound: the socket is told to
    // load the thread first, and is sent nothing.
    let mut too_old = app
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={}", ids[0]))
        .await
        .expect("an id the log holds is accepted");
    assert_eq!(too_old.next_close().await, Some(LOAD_THE_THREAD_FIRST));
}

#[tokio::test]
async fn a_since_past_the_backlog_bound_is_told_to_load_the_thread_first() {
    let app = options().replicas("projector", 0).start().await;
    let thread = app.new_thread().await;
    let ids = seed_messages(&app, &thread, 3 * BACKLOG_MAX).await;

    let mut too_old = app
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={}", ids[0]))
        .await
        .expect("an id the log holds is accepted");
    assert_eq!(too_old.next_close().await, Some(LOAD_THE_THREAD_FIRST));

    // The backlog at the bound is sent whole.
    let since = &ids[ids.len() - 1 - BACKLOG_MAX];
    let mut resumed = app
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={since}"))
        .await
        .expect("resuming at the bound");
    for expected in &ids[ids.len() - BACKLOG_MAX..] {
        assert_eq!(&frame_id(&resumed.next_text().await), expected);
    }
    resumed.assert_silent(QUIET).await;

    // The consumers the resumes read through leave nothing behind in the stream (each role's
    // consumer that follows the threads erased, on their subject alone, stays).
    let js = app.jetstream().await;
    eventually(
        "the resumes' consumers removed",
        Duration::from_secs(20),
        || async {
            let stream = js.get_stream(STREAM).await.ok()?;
            let mut consumers = stream.consumers();
            let mut others = 0;
            while let Some(info) = consumers.next().await {
                let config = info.ok()?.config;
                if !config.filter_subject.ends_with(".erased") {
                    others += 1;
                }
            }
            (others == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_socket_resumes_from_the_log_as_the_gateways_own_nats_user() {
    let app = options().deploy_nats_users().start().await;
    let thread = app.new_thread().await;
    let ids = seed_messages(&app, &thread, 20).await;
    // No socket watches the thread: its `since` is looked up in the stream.
    let mut resumed = app
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={}", ids[14]))
        .await
        .expect("resuming");
    for expected in &ids[15..] {
        assert_eq!(&frame_id(&resumed.next_text().await), expected);
    }
    let live = app.say(&thread, "live").await;
    assert_eq!(resumed.next_text().await, live.text, "then the live one");
    resumed.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_socket_resumes_after_a_message_published_without_a_msg_id() {
    let app = options().replicas("projector", 0).start().await;
    let thread = app.new_thread().await;
    let unnamed = new_id();
    app.publish_event(
        &app.message_subject(&thread),
        &[],
        agent_reply(&unnamed, &thread, "published without Nats-Msg-Id"),
    )
    .await;
    let after = seed_messages(&app, &thread, 3).await;
    let mut resumed = app
        .try_connect_ws(&format!("/ws/chat/{thread}/?since={unnamed}"))
        .await
        .expect("resuming from a message without a Nats-Msg-Id");
    for expected in &after {
        assert_eq!(&frame_id(&resumed.next_text().await), expected);
    }
    resumed.assert_silent(QUIET).await;
}

#[tokio::test]
async fn a_gap_of_3_000_messages_is_filled_at_a_bounded_cost() {
    let mut app = options()
        .replicas("gateway", 0)
        .replicas("projector", 0)
        .start()
        .await;
    let (proxy, _, client) = Proxy::gateway_behind(&mut app).await;
    let thread = client.new_thread().await;
    let mut ws = client.connect_ws(&thread).await;

    // Stored while the gateway's NATS connection is cut: the feed reads them from the
    // stream when it comes back.
    proxy.cut();
    let ids = seed_messages(&app, &thread, 3000).await;
    let mut requests = ApiRequests::start(&app).await;
    proxy.restore();
    for expected in &ids {
        assert_eq!(&frame_id(&ws.next_text().await), expected);
    }
    let asked = requests.counted().await;
    eprintln!("a gap of 3,000 messages: {asked} JetStream API requests");
    assert!(
        asked <= 100,
        "filling a gap of 3,000 messages made {asked} JetStream API requests"
    );
}
