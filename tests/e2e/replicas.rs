//! Several replicas of each role side by side, as production runs them: none keeps state that
//! another needs, and none delivers or applies anything twice.

use crate::harness::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn a_thread_created_on_one_api_replica_is_usable_at_once_on_another() {
    let app = options().replicas("api", 2).start().await;
    let first = app.client(0, 0);
    let second = app.client(1, 0);

    let thread = first.new_thread().await;
    // No wait of any kind between the 201 and the other replica's answers.
    let mut ws = second.connect_ws(&thread).await;
    let posted = second.say(&thread, "through the other replica").await;
    let stored = second.get_thread(&thread).await;
    assert_eq!(stored["id"], json!(thread));
    assert_eq!(message_ids(&stored), [posted.json()["id"].clone()]);
    assert_eq!(ws.next_text().await, posted.text);
    let again = first.say(&thread, "and back").await;
    assert_eq!(ws.next_text().await, again.text);
    assert_eq!(message_ids(&first.get_thread(&thread).await).len(), 2);
}

const EVENTS: usize = 10_000;
const THREADS: usize = 10;

#[tokio::test]
async fn two_projectors_apply_10_000_events_exactly_once_and_in_order() {
    // Debug logs show which projector applied which batch.
    let mut app = options()
        .replicas("projector", 2)
        .env("RUST_LOG", "info,threadline_projector=debug")
        .start()
        .await;
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        threads.push(app.new_thread().await);
    }
    let events: Vec<(String, String, String)> = (0..EVENTS)
        .map(|i| {
            let id = new_id();
            let thread = &threads[i % THREADS];
            let body = format!("event {i}");
            let payload = agent_reply(&id, thread, &body);
            (id, thread.clone(), payload)
        })
        .collect();
    let js = app.jetstream().await;
    let acks: Vec<(String, String, u64)> = within(
        "publishing 10,000 events",
        Duration::from_secs(300),
        futures::stream::iter(events)
            .map(|(id, thread, payload)| {
                let js = js.clone();
                async move {
                    let subject = format!("chat.thread.{thread}.message");
                    let ack =
                        publish_event(&js, &subject, &[("Nats-Msg-Id", &id)], payload.into()).await;
                    assert!(!ack.duplicate);
                    (id, thread, ack.sequence)
                }
            })
            .buffer_unordered(256)
            .collect(),
    )
    .await;

    let db = app.db().await;
    eventually(
        "both projectors to apply 10,000 events",
        Duration::from_secs(300),
        || {
            let db = db.clone();
            async move {
                let n: i64 = sqlx::query_scalar("select count(*) from messages")
                    .fetch_one(&db)
                    .await
                    .ok()?;
                (n as usize >= EVENTS).then_some(())
            }
        },
    )
    .await;

    // Exactly once, each at the sequence the stream stored it at.
    let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as("select id, stream_seq from messages")
        .fetch_all(&db)
        .await
        .expect("reading messages");
    assert_eq!(rows.len(), EVENTS, "rows in the read model");
    let stored: HashMap<String, u64> = rows
        .into_iter()
        .map(|(id, seq)| (id.to_string(), seq as u64))
        .collect();
    for (id, _, sequence) in &acks {
        assert_eq!(stored.get(id), Some(sequence), "message {id}");
    }
    assert!(app.dead_letters().await.is_empty(), "nothing set aside");

    // In order: each thread's GET lists its messages in stream order.
    let mut by_thread: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for (id, thread, sequence) in &acks {
        by_thread.entry(thread).or_default().push((*sequence, id));
    }
    for (thread, mut expected) in by_thread {
        expected.sort();
        let expected: Vec<Value> = expected.into_iter().map(|(_, id)| json!(id)).collect();
        assert_eq!(
            message_ids(&app.get_thread(thread).await),
            expected,
            "thread {thread} out of order"
        );
    }

    // Both replicas did part of the work.
    for index in 0..2 {
        assert!(
            app.logs("projector", index).contains("batch applied"),
            "projector #{index} applied no batch"
        );
    }
}

#[tokio::test]
async fn two_gateways_deliver_every_frame_once_to_every_socket() {
    let mut app = spawn_app().await;
    // A second gateway joins the running system, with a setting of its own.
    let second = app
        .start_replica("gateway", &[("WS_CLIENT_QUEUE", "1024")])
        .await;
    assert_eq!(second, 1);
    let thread = app.new_thread().await;
    let mut sockets = Vec::new();
    for gateway in [0, 1, 0, 1] {
        sockets.push(app.client(0, gateway).connect_ws(&thread).await);
    }
    let mut posted = Vec::new();
    for i in 0..50 {
        posted.push(app.say(&thread, &format!("message {i}")).await.text);
    }
    let marker = app.say(&thread, "marker").await.text;
    for (n, ws) in sockets.iter_mut().enumerate() {
        for (i, expected) in posted.iter().enumerate() {
            assert_eq!(&ws.next_text().await, expected, "socket {n}, frame {i}");
        }
        assert_eq!(
            ws.next_text().await,
            marker,
            "socket {n} got a frame twice or an extra one"
        );
    }
}
