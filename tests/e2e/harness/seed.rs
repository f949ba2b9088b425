//! Events published straight to JetStream, as an outside publisher or a long-lived system
//! would have stored them: the quick way to a stream of many thousands of events.

use super::app::App;
use super::ids::{agent_reply, new_id, now_timestamp};
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::IntoFuture;

/// Acknowledgements a publisher waits for at once.
const ACKS_IN_FLIGHT: usize = 1000;

/// A `ThreadCreated` payload of thread `id`.
pub fn thread_created(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","user":{{"name":"Visitor","n":1.50}},"timestamp":"{}"}}"#,
        now_timestamp()
    )
}

/// Publishes each `(subject, payload)` to JetStream, with up to [`ACKS_IN_FLIGHT`]
/// acknowledgements awaited at once; returns the last stream sequence.
pub async fn publish_all(app: &App, events: impl IntoIterator<Item = (String, String)>) -> u64 {
    let js = app.jetstream().await;
    let mut pending = FuturesUnordered::new();
    let mut last = 0;
    for (subject, payload) in events {
        let ack = js
            .publish(subject, payload.into())
            .await
            .expect("publishing a seed event");
        pending.push(ack.into_future());
        if pending.len() >= ACKS_IN_FLIGHT {
            if let Some(ack) = pending.next().await {
                last = last.max(ack.expect("ack").sequence);
            }
        }
    }
    while let Some(ack) = pending.next().await {
        last = last.max(ack.expect("ack").sequence);
    }
    last
}

/// Publishes `threads` threads of `per_thread` events each (one ThreadCreated, then agent
/// replies), messages interleaved across threads; returns the thread ids and the last
/// sequence.
pub async fn seed(app: &App, threads: usize, per_thread: usize) -> (Vec<String>, u64) {
    let ids: Vec<String> = (0..threads).map(|_| new_id()).collect();
    let mut events = Vec::new();
    for id in &ids {
        events.push((app.created_subject(id), thread_created(id)));
    }
    for n in 1..per_thread {
        for id in &ids {
            events.push((
                app.message_subject(id),
                agent_reply(&new_id(), id, &format!("message {n}")),
            ));
        }
    }
    let last = publish_all(app, events).await;
    (ids, last)
}
