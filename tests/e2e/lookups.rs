//! What it costs to ask whether a thread exists, and that no client can make a process stop
//! asking: a request shared by many callers runs to its answer or its timeout whatever they do,
//! a request the gateway would refuse anyway asks the log nothing, and an answer of "no" is
//! remembered for a moment.

use crate::harness::*;
use futures::future::join_all;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a client that goes away waits for its answer before it closes its connection.
const GIVE_UP_AFTER: Duration = Duration::from_millis(100);

/// Clients of each kind that go away while the broker hangs: more than one process's lookups
/// that may be in flight at once (32).
const QUITTERS: usize = 40;

/// How long a request of a client that stayed may take once the broker answers again.
const SECONDS: Duration = Duration::from_secs(20);

/// Sends `request` on a connection of its own, then closes it after [`GIVE_UP_AFTER`]
/// without reading the answer, as a browser tab that is closed mid-request.
async fn send_and_go_away(addr: SocketAddr, request: String) {
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending a request");
    tokio::time::sleep(GIVE_UP_AFTER).await;
}

fn post_message_request(thread: &str) -> String {
    let body = json!({"user": {"name": "Visitor"}, "thread": thread, "body": "hello"}).to_string();
    format!(
        "POST /chat/message/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn upgrade_request(thread: &str) -> String {
    format!(
        "GET /ws/chat/{thread}/ HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn clients_that_go_away_while_the_broker_hangs_leave_no_lookup_stuck() {
    let mut app = options().replicas("api", 2).start().await;
    let this = app.client(0, 0);
    let other = app.client(1, 0);

    // Every lookup of these one-off ids is sent and then waits for the hung broker; its only
    // caller goes away, and nobody asks about the id again.
    app.nats.pause();
    let posts =
        (0..QUITTERS).map(|_| send_and_go_away(this.api_addr, post_message_request(&new_id())));
    let upgrades =
        (0..QUITTERS).map(|_| send_and_go_away(this.ws_addr, upgrade_request(&new_id())));
    join_all(posts).await;
    join_all(upgrades).await;
    app.nats.resume();

    // A thread that this api and gateway replica have never heard of takes a lookup of its
    // own on each.
    let thread = other.new_thread().await;
    within(
        "the api replica whose clients went away to take a message",
        SECONDS,
        this.say(&thread, "still here"),
    )
    .await;
    let mut ws = within(
        "the gateway whose clients went away to open a socket",
        SECONDS,
        this.connect_ws(&thread),
    )
    .await;
    let said = this.say(&thread, "and watched").await;
    assert_eq!(ws.next_text().await, said.text);
}

/// The JetStream API requests that `during` makes (with those of the app's own background
/// work meanwhile, which is little).
async fn requests_to_the_log<T>(app: &App, during: impl std::future::Future<Output = T>) -> u64 {
    let before = app.nats.jetstream_api_requests().await;
    during.await;
    app.nats.jetstream_api_requests().await - before
}

const ASKED: usize = 50;

#[tokio::test]
async fn a_request_on_a_socket_path_that_is_no_upgrade_asks_the_log_nothing() {
    let app = spawn_app().await;
    let known = app.new_thread().await;
    let app = &app;
    let plain_get = |thread: String| async move {
        app.request_to(
            app.ws_addr,
            "GET",
            &format!("/ws/chat/{thread}/"),
            None,
            None,
        )
        .await
    };
    let on_known = plain_get(known).await;
    assert!(
        (400..500).contains(&on_known.status),
        "a plain GET of a known thread's socket: {on_known:?}"
    );
    let asked = requests_to_the_log(app, async {
        for _ in 0..ASKED {
            let answer = plain_get(new_id()).await;
            // The same answer whether the thread exists or not: no existence oracle either.
            assert_eq!(
                (answer.status, &answer.text),
                (on_known.status, &on_known.text)
            );
        }
    })
    .await;
    assert!(
        asked < 10,
        "{ASKED} plain GETs of unknown threads' sockets made {asked} JetStream API requests"
    );
}

#[tokio::test]
async fn an_upgrade_refused_by_admission_asks_the_log_nothing() {
    let app = options().env("WS_MAX_SOCKETS_PER_IP", "1").start().await;
    let known = app.new_thread().await;
    let _open = app.connect_ws(&known).await;
    let asked = requests_to_the_log(&app, async {
        for _ in 0..ASKED {
            let refused = app
                .try_connect_ws(&format!("/ws/chat/{}/", new_id()))
                .await
                .err()
                .expect("a second socket from one address");
            assert_eq!(refused.status, Some(429), "{refused:?}");
        }
    })
    .await;
    assert!(
        asked < 10,
        "{ASKED} upgrades past the per-address limit made {asked} JetStream API requests"
    );
}

/// How long a process remembers that a thread does not exist (`NOT_FOUND_MEMORY` in
/// `services/nats/src/existence.rs`).
const NOT_FOUND_MEMORY: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_thread_that_does_not_exist_is_not_asked_about_again_at_once() {
    let app = spawn_app().await;
    let unknown = new_id();
    let started = Instant::now();
    let asked = requests_to_the_log(&app, async {
        for _ in 0..ASKED {
            let response = app
                .post_message(&json!({"user": "u", "thread": unknown, "body": "hi"}))
                .await;
            assert_eq!(
                response.expect(400),
                json!({"thread": [format!("Invalid pk \"{unknown}\" - object does not exist.")]})
            );
            let refused = app
                .try_connect_ws(&format!("/ws/chat/{unknown}/"))
                .await
                .err()
                .expect("a socket on an unknown thread");
            assert_eq!(refused.status, Some(404), "{refused:?}");
        }
    })
    .await;
    // Each process asks once per stretch of NOT_FOUND_MEMORY at most (two requests when a
    // "no" is asked afresh), whatever the machine's speed; a few more for background work.
    let stretches = (started.elapsed().as_secs_f64() / NOT_FOUND_MEMORY.as_secs_f64()).ceil();
    let bound = (2.0 * 2.0 * (stretches + 1.0)) as u64 + 10;
    assert!(
        asked <= bound.min(2 * ASKED as u64),
        "{ASKED} POSTs and upgrades on one unknown thread in {:?} made {asked} JetStream API \
         requests",
        started.elapsed()
    );
}
