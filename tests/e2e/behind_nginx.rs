//! Visitors through the shipped reverse proxy (deploy/proxy/nginx.conf, run by the
//! distribution's nginx): the roles believe nginx only (`TRUSTED_PROXIES`), nginx forwards the
//! address each visitor connected from, so every per-client limit counts each visitor as
//! themselves, whatever `X-Forwarded-For` they send.

use crate::harness::nginx::{post_from, visitor, websocket_from, HeaderTap, Nginx};
use crate::harness::ws::FRAME_TIMEOUT;
use crate::harness::*;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use tokio_tungstenite::tungstenite::Message;

/// Visitors with a socket each, from 127.0.0.2 to 127.0.1.45.
const VISITORS: u32 = 300;
/// Sockets per client address the gateway allows.
const PER_ADDRESS: usize = 2;
/// The visitor who opens the thread and posts, and the one who opens too many sockets.
const POSTER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1));
const SPOOFER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));

/// A random address, different each time: what a visitor claims to be.
fn claimed() -> String {
    Ipv4Addr::from(rand::random::<u32>()).to_string()
}

#[tokio::test]
async fn behind_the_shipped_nginx_each_visitor_counts_as_their_own_address() {
    let app = options()
        .env("TRUSTED_PROXIES", "127.0.0.1")
        .env("WS_MAX_SOCKETS_PER_IP", PER_ADDRESS.to_string())
        .start()
        .await;
    // What nginx sends the api passes through a tap that reads its X-Forwarded-For.
    let api = HeaderTap::in_front_of(app.addr("api", 0), "X-Forwarded-For").await;
    let nginx = Nginx::start(&[
        ("api", vec![api.addr()]),
        ("gateway", vec![app.addr("gateway", 0)]),
    ])
    .await;
    let edge = nginx.addr();

    // The API through nginx, from a visitor who claims another address: the api gets the
    // visitor's own, and nothing of the claim.
    let (status, created) = post_from(
        POSTER,
        edge,
        "/chat/thread/",
        &json!({"user": {"name": "Ada"}}),
        &[("X-Forwarded-For", &claimed())],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let thread: Value = serde_json::from_str(&created).expect("a JSON thread");
    let thread = thread["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        api.seen(),
        vec![POSTER.to_string()],
        "X-Forwarded-For as the api got it"
    );

    // Every visitor's socket through nginx opens: none is counted as nginx's address, which
    // would refuse all but the first two.
    let path = format!("/ws/chat/{thread}/");
    let mut sockets: Vec<_> = futures::stream::iter(0..VISITORS)
        .map(|n| {
            let path = path.clone();
            async move {
                websocket_from(visitor(n), edge, &path, &[])
                    .await
                    .map_err(|refused| (visitor(n), refused))
            }
        })
        .buffer_unordered(50)
        .try_collect()
        .await
        .unwrap_or_else(|(from, refused)| {
            panic!("the socket from {from} was refused: {refused:?}")
        });
    assert_eq!(sockets.len(), VISITORS as usize);

    // A message posted through nginx reaches each of them.
    let (status, posted) = post_from(
        POSTER,
        edge,
        "/chat/message/",
        &json!({"user": {"name": "Ada"}, "thread": thread, "body": "to everyone", "send_by_user": true}),
        &[("X-Forwarded-For", &claimed())],
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    let frames = futures::future::join_all(sockets.iter_mut().map(|socket| async {
        within("a socket's frame", FRAME_TIMEOUT, async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
                    Some(Ok(_)) => continue,
                    other => panic!("the socket ended before the message: {other:?}"),
                }
            }
        })
        .await
    }))
    .await;
    assert!(
        frames.iter().all(|f| *f == posted),
        "every socket gets the posted message {posted}; got {:?}",
        frames.iter().find(|f| **f != posted)
    );
    assert_eq!(
        api.seen(),
        vec![POSTER.to_string(), POSTER.to_string()],
        "X-Forwarded-For as the api got it"
    );

    // One visitor claiming a new address on each socket is still one client: past the
    // limit, refused.
    let mut kept = Vec::new();
    for _ in 0..PER_ADDRESS {
        let socket = websocket_from(SPOOFER, edge, &path, &[("X-Forwarded-For", &claimed())])
            .await
            .unwrap_or_else(|refused| panic!("the spoofer's socket was refused: {refused:?}"));
        kept.push(socket);
    }
    let refused = websocket_from(SPOOFER, edge, &path, &[("X-Forwarded-For", &claimed())]).await;
    let Err((status, body)) = refused else {
        panic!("the spoofer's socket {} opened", PER_ADDRESS + 1);
    };
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("a JSON body"),
        json!({"detail": "Too many websockets from this address."})
    );
}
