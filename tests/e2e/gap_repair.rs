//! No message missed when connections drop: a gateway whose NATS connection is cut and comes
//! back fills its sockets' gap from the stream, so does one that loses a single stored message
//! on a connection that stays up, and clients that resume with `since` while
//! one gateway restarts (SIGTERM) and then the other crashes (SIGKILL), under 100 posts/s,
//! end with every message exactly once, in order.

use crate::harness::gateway::{frame_id, stored_subject, ResumingClient};
use crate::harness::load::Load;
use crate::harness::proxy::Proxy;
use crate::harness::*;
use std::time::Duration;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The ids `GET` lists for `thread` once every accepted message is there.
async fn listed_ids(client: &Client, thread: &str, accepted: &[serde_json::Value]) -> Vec<String> {
    eventually(
        "every accepted message in GET",
        PROJECTION_TIMEOUT,
        || async {
            let listed = message_ids(&client.get_thread(thread).await);
            accepted.iter().all(|id| listed.contains(id)).then(|| {
                listed
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            })
        },
    )
    .await
}

/// The id of a posted message.
fn id_of(message: &serde_json::Value) -> String {
    message["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn a_cut_nats_connection_loses_a_socket_nothing() {
    let mut app = options().replicas("gateway", 0).start().await;
    let (proxy, gateway, client) = Proxy::gateway_behind(&mut app).await;
    let thread = client.new_thread().await;
    let mut ws = client.connect_ws(&thread).await;

    let load = Load::start(&client, &thread, 2);
    load.wait_for_more(30, PROJECTION_TIMEOUT).await;
    proxy.cut();
    load.wait_for_more(100, PROJECTION_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself, not a readiness wait
    proxy.restore();
    load.wait_for_more(30, PROJECTION_TIMEOUT).await;
    let accepted = load.stop().await;
    let marker = client.say(&thread, "marker").await.json();
    let marker = marker["id"].as_str().expect("an id").to_owned();
    let expected = listed_ids(&client, &thread, &accepted).await;
    assert_eq!(expected.last(), Some(&marker), "the marker is last");

    let mut got = Vec::new();
    while got.last() != Some(&marker) {
        got.push(frame_id(&ws.next_text().await));
    }
    assert!(
        app.logs("gateway", gateway)
            .contains("reading what the stream stored meanwhile"),
        "the gateway's connection was meant to drop and come back"
    );
    // The socket got every message, in the stream's order, each once.
    assert_eq!(got.len(), expected.len(), "frames vs messages in GET");
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_stored_message_lost_on_a_live_nats_connection_reaches_the_socket_in_order() {
    let mut app = options().replicas("gateway", 0).start().await;
    let (proxy, _, client) = Proxy::gateway_behind(&mut app).await;
    let thread = client.new_thread().await;
    let mut ws = client.connect_ws(&thread).await;
    let first = id_of(&client.say(&thread, "before the loss").await.json());
    assert_eq!(frame_id(&ws.next_text().await), first, "the socket is live");
    let connections = proxy.connections();

    // The server's republished copy of the next stored message never reaches the gateway;
    // the message after it shows the gap (its previous sequence is one the feed never saw).
    proxy.lose_next(&stored_subject(&thread));
    let mut posted = Vec::new();
    for i in 0..5 {
        posted.push(id_of(
            &client
                .say(&thread, &format!("after the loss {i}"))
                .await
                .json(),
        ));
    }
    let lost = eventually(
        "the proxy to lose a message",
        PROJECTION_TIMEOUT,
        || async {
            let lost = proxy.lost();
            (!lost.is_empty()).then_some(lost)
        },
    )
    .await;
    assert_eq!(lost.len(), 1, "the proxy was meant to lose one message");
    assert_eq!(
        frame_id(std::str::from_utf8(&lost[0]).expect("a UTF-8 payload")),
        posted[0],
        "the proxy lost another message than the first one posted after arming it"
    );

    let marker = id_of(&client.say(&thread, "marker").await.json());
    posted.push(marker.clone());
    let mut got = Vec::new();
    while got.last() != Some(&marker) {
        got.push(frame_id(&ws.next_text().await));
    }
    assert_eq!(
        got, posted,
        "the socket missed, repeated or reordered a message"
    );
    assert_eq!(
        proxy.connections(),
        connections,
        "the gateway's NATS connection was meant to stay up"
    );
}

#[tokio::test]
async fn clients_resuming_through_a_restart_and_a_crash_of_two_gateways_miss_and_repeat_nothing() {
    let mut app = options().replicas("gateway", 2).start().await;
    let thread = app.new_thread().await;
    let first = app.say(&thread, "before the clients").await.json();
    let since = first["id"].as_str().unwrap().to_owned();
    let gateways = vec![app.addr("gateway", 0), app.addr("gateway", 1)];
    let clients: Vec<ResumingClient> = (0..4)
        .map(|i| ResumingClient::start(gateways.clone(), i, &thread, &since))
        .collect();

    // The rate: 100 posts a second while the gateways restart one after the other.
    let started = std::time::Instant::now();
    let load = Load::paced(&app, &thread, 100);
    load.wait_for_more(100, PROJECTION_TIMEOUT).await;
    for gateway in 0..2 {
        if gateway == 0 {
            // A rolling restart: SIGTERM, every socket closed with 1012.
            app.terminate("gateway", gateway);
            let status = app.wait_exit("gateway", gateway, SHUTDOWN_TIMEOUT).await;
            assert!(status.success(), "gateway #{gateway} exited with {status}");
        } else {
            // A crash: SIGKILL, the sockets just drop.
            app.kill("gateway", gateway);
        }
        load.wait_for_more(100, PROJECTION_TIMEOUT).await;
        app.restart("gateway", gateway).await;
        load.wait_for_more(100, PROJECTION_TIMEOUT).await;
    }
    let accepted = load.stop().await;
    eprintln!(
        "{} messages accepted in {:.1} s while the gateways went down and came back",
        accepted.len(),
        started.elapsed().as_secs_f64()
    );
    let marker = app.say(&thread, "marker").await.json();
    let marker = marker["id"].as_str().unwrap().to_owned();
    let mut expected = listed_ids(&app, &thread, &accepted).await;
    expected.retain(|id| *id != since);

    for (n, client) in clients.iter().enumerate() {
        let got = eventually(
            &format!("client {n} to get the marker"),
            PROJECTION_TIMEOUT,
            || async {
                let got = client.received();
                got.contains(&marker).then_some(got)
            },
        )
        .await;
        assert!(
            client.reconnects() >= 1,
            "client {n} was meant to be closed by a restart"
        );
        assert_eq!(got.len(), expected.len(), "client {n}: frames vs GET");
        assert_eq!(got, expected, "client {n}");
    }
}
