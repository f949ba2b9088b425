//! The gateway's limits: sockets per gateway and per client address (the forwarded one behind
//! a trusted proxy), the `Origin` allow-list, and the largest message a client may send.
//! Past a limit the upgrade is refused with a status and a JSON body, or the socket closed.

use crate::harness::gateway::{closed, connect_with, resident_bytes_of_listener, ws_url};
use crate::harness::gateway::{send_until_refused, Socket};
use crate::harness::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

async fn open(url: &str, headers: &[(&str, &str)]) -> Socket {
    connect_with(url, headers)
        .await
        .unwrap_or_else(|(status, body)| panic!("refused with {status}: {body}"))
}

async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match connect_with(url, headers).await {
        Ok(_) => panic!("{url} opened with {headers:?}"),
        Err((status, body)) => (status, serde_json::from_str(&body).expect("a JSON body")),
    }
}

#[tokio::test]
async fn sockets_past_the_per_address_and_per_gateway_limits_are_refused() {
    let app = options()
        .env("WS_MAX_SOCKETS_PER_IP", "2")
        .env("WS_MAX_SOCKETS", "3")
        .env("TRUSTED_PROXIES", "127.0.0.1")
        .start()
        .await;
    let thread = app.new_thread().await;
    let url = ws_url(app.addr("gateway", 0), &thread, None);
    let from = |address: &'static str| [("X-Forwarded-For", address)];

    let a1 = open(&url, &from("203.0.113.1")).await;
    let _a2 = open(&url, &from("198.51.100.7, 203.0.113.1")).await;
    assert_eq!(
        refused(&url, &from("203.0.113.1")).await,
        (
            429,
            json!({"detail": "Too many websockets from this address."})
        )
    );
    let _b1 = open(&url, &from("203.0.113.2")).await;
    assert_eq!(
        refused(&url, &from("203.0.113.3")).await,
        (
            503,
            json!({"detail": "Too many websockets on this server, try again later."})
        )
    );
    drop(a1);
    eventually(
        "a closed socket to free its place",
        PROJECTION_TIMEOUT,
        || {
            let url = url.clone();
            async move { connect_with(&url, &from("203.0.113.1")).await.ok() }
        },
    )
    .await;
}

#[tokio::test]
async fn the_forwarding_header_of_an_untrusted_peer_is_ignored() {
    let app = options().env("WS_MAX_SOCKETS_PER_IP", "1").start().await;
    let thread = app.new_thread().await;
    let url = ws_url(app.addr("gateway", 0), &thread, None);
    let _first = open(&url, &[("X-Forwarded-For", "203.0.113.1")]).await;
    let (status, _) = refused(&url, &[("X-Forwarded-For", "203.0.113.2")]).await;
    assert_eq!(status, 429, "both come from 127.0.0.1");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_when_an_allow_list_is_set() {
    let app = options()
        .env(
            "WS_ALLOWED_ORIGINS",
            "https://shop.example,https://www.shop.example",
        )
        .start()
        .await;
    let thread = app.new_thread().await;
    let url = ws_url(app.addr("gateway", 0), &thread, None);
    assert_eq!(
        refused(&url, &[("Origin", "https://evil.example")]).await,
        (403, json!({"detail": "Origin not allowed."}))
    );
    let mut socket = open(&url, &[("Origin", "https://shop.example")]).await;
    let posted = app.say(&thread, "from the shop").await;
    let frame = futures::StreamExt::next(&mut socket).await;
    assert_eq!(
        frame
            .expect("a frame")
            .expect("a frame")
            .into_text()
            .expect("text")
            .as_str(),
        posted.text
    );
}

#[tokio::test]
async fn an_endless_fragmented_message_closes_the_socket_and_leaves_memory_alone() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let gateway = app.addr("gateway", 0);
    let url = ws_url(gateway, &thread, None);
    let mut staying = app.connect_ws(&thread).await;
    let before = resident_bytes_of_listener(gateway);

    for _ in 0..20 {
        let mut socket = open(&url, &[]).await;
        let chunk = vec![b'x'; 1024];
        let sent = send_until_refused(&mut socket, |n| {
            let opcode = if n == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let header = FrameHeader {
                is_final: false,
                opcode,
                ..FrameHeader::default()
            };
            Message::Frame(Frame::from_payload(header, chunk.clone().into()))
        })
        .await;
        assert!(sent < 100_000, "the gateway took {sent} KiB of one message");
        let code = closed(&mut socket).await;
        assert!(
            matches!(code, Some(1009) | None),
            "expected a message-too-big close, got {code:?}"
        );
    }
    let after = resident_bytes_of_listener(gateway);
    // Allocator noise is tens of KiB; without the message limit, each socket would hold up to
    // 100 MB.
    assert!(
        after < before + 1024 * 1024,
        "the gateway grew from {before} to {after} bytes"
    );
    // The gateway still serves the socket that behaved.
    let posted = app.say(&thread, "still here").await;
    assert_eq!(staying.next_text().await, posted.text);
}
