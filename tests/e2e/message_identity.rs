//! One rule for which messages a thread shows, followed by its sockets, its `GET`, `verify`
//! and `rebuild` alike: a message is its thread and its id. An outside publisher that sends
//! one message id on two threads (a mistake, but one that only the publisher can make) gets
//! it shown on both, each with its own body, rather than on both sockets and one `GET`.

use crate::harness::operator::run_command;
use crate::harness::*;
use serde_json::{json, Value};

/// Posts a marker through the API and waits until `GET` lists it: everything published
/// before it has been applied (one stream, applied in order). Returns its frame.
async fn marker(app: &App, thread: &str) -> String {
    let posted = app.say(thread, "marker").await.json();
    let id = posted["id"].as_str().expect("an id").to_owned();
    eventually("the marker in GET", PROJECTION_TIMEOUT, || async {
        message_ids(&app.get_thread(thread).await)
            .contains(&json!(id))
            .then_some(())
    })
    .await;
    posted.to_string()
}

/// The bodies `GET` lists for message `id` on `thread`.
async fn bodies_of(app: &App, thread: &str, id: &str) -> Vec<Value> {
    let stored = app.get_thread(thread).await;
    stored["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["id"] == id)
        .map(|m| m["body"].clone())
        .collect()
}

#[tokio::test]
async fn one_message_id_on_two_threads_is_shown_on_each_by_its_socket_get_and_a_rebuild() {
    let app = spawn_app().await;
    let (a, b) = (app.new_thread().await, app.new_thread().await);
    let (mut ws_a, mut ws_b) = (app.connect_ws(&a).await, app.connect_ws(&b).await);
    let id = new_id();
    let on_a = agent_reply(&id, &a, "on thread A");
    let on_b = agent_reply(&id, &b, "on thread B");
    // Two `Nats-Msg-Id`s, so that both are stored: as a publisher that uses the message id
    // as its `Nats-Msg-Id` gets once the duplicate window has passed.
    for (thread, payload) in [(&a, &on_a), (&b, &on_b)] {
        let ack = app
            .publish_event(
                &app.message_subject(thread),
                &[("Nats-Msg-Id", &new_id())],
                payload.clone(),
            )
            .await;
        assert!(!ack.duplicate, "both copies are stored");
    }
    assert_eq!(ws_a.next_text().await, on_a, "thread A's socket");
    assert_eq!(ws_b.next_text().await, on_b, "thread B's socket");
    let (marker_a, marker_b) = (marker(&app, &a).await, marker(&app, &b).await);
    assert_eq!(ws_a.next_text().await, marker_a);
    assert_eq!(ws_b.next_text().await, marker_b);

    assert_eq!(bodies_of(&app, &a, &id).await, [json!("on thread A")]);
    assert_eq!(
        bodies_of(&app, &b, &id).await,
        [json!("on thread B")],
        "thread B's GET lacks the message its socket showed"
    );
    run_command(&app, &["verify"]).await.expect(0);

    run_command(&app, &["rebuild"]).await.expect(0);
    assert_eq!(bodies_of(&app, &a, &id).await, [json!("on thread A")]);
    assert_eq!(
        bodies_of(&app, &b, &id).await,
        [json!("on thread B")],
        "after a rebuild"
    );
    run_command(&app, &["verify"]).await.expect(0);
}
