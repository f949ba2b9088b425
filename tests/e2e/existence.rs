//! One rule for a thread's existence: its first valid `ThreadCreated` wins. What an outside
//! publisher stores on the thread's `created` subject later, garbage or a valid event of
//! another visitor, changes nothing that any replica answers, however fresh.

use crate::harness::*;
use serde_json::{json, Value};

fn thread_created(id: &str, user: &Value) -> String {
    format!(
        r#"{{"id":"{id}","user":{user},"timestamp":"{}"}}"#,
        now_timestamp()
    )
}

#[tokio::test]
async fn later_events_on_a_threads_created_subject_change_nothing_on_fresh_replicas() {
    let mut app = spawn_app().await;
    let thread = app.create_thread(json!({"name": "Ada"})).await;
    let id = thread["id"].as_str().expect("thread id").to_owned();
    let first = app.say(&id, "first").await.json();
    let second = app.say(&id, "second").await;
    let before = app.get_thread(&id).await;

    // A valid ThreadCreated of another visitor, then garbage, on the thread's own subject.
    let subject = app.created_subject(&id);
    let impostor = thread_created(&id, &json!({"name": "Mallory"}));
    let valid = app
        .publish_event(&subject, &[("Nats-Msg-Id", &new_id())], impostor)
        .await;
    let garbage = app
        .publish_event(&subject, &[("Nats-Msg-Id", &new_id())], "garbage")
        .await;
    assert!(valid.sequence < garbage.sequence);
    app.dead_letter_of(garbage.sequence).await;
    app.wait_applied(garbage.sequence).await;

    // Replicas that start now know nothing of the thread but what the stream holds.
    let api = app.start_replica("api", &[]).await;
    let gateway = app.start_replica("gateway", &[]).await;
    let fresh = app.client(api, gateway);

    // The fresh gateway shows the messages stored after the first creation: resuming after
    // the first message sends the second.
    let mut ws = fresh
        .try_connect_ws(&format!(
            "/ws/chat/{id}/?since={}",
            first["id"].as_str().unwrap()
        ))
        .await
        .unwrap_or_else(|r| panic!("the fresh gateway refused the thread's socket: {r:?}"));
    assert_eq!(ws.next_text().await, second.text);
    let third = fresh.say(&id, "third").await;
    assert_eq!(ws.next_text().await, third.text);

    let after = fresh.get_thread(&id).await;
    assert_same_json(&after["user"], &before["user"], "the thread's user");
    assert_eq!(after["timestamp"], before["timestamp"]);
    let mut expected = message_ids(&before);
    expected.push(third.json()["id"].clone());
    assert_eq!(message_ids(&after), expected);
    // The replicas that ran all along answer the same.
    assert_eq!(app.get_thread(&id).await, after);
}

#[tokio::test]
async fn a_thread_whose_first_created_event_is_garbage_exists_from_its_first_valid_one() {
    let mut app = spawn_app().await;
    let id = new_id();
    let subject = app.created_subject(&id);
    let garbage = app
        .publish_event(&subject, &[("Nats-Msg-Id", &new_id())], "{\"id\":")
        .await;
    let user = json!({"name": "From Slack"});
    let valid = app
        .publish_event(
            &subject,
            &[("Nats-Msg-Id", &new_id())],
            thread_created(&id, &user),
        )
        .await;
    let later = app
        .publish_event(
            &subject,
            &[("Nats-Msg-Id", &new_id())],
            thread_created(&id, &json!("someone else")),
        )
        .await;
    app.dead_letter_of(garbage.sequence).await;
    app.wait_applied(later.sequence).await;
    assert!(garbage.sequence < valid.sequence);

    let api = app.start_replica("api", &[]).await;
    let gateway = app.start_replica("gateway", &[]).await;
    let fresh = app.client(api, gateway);
    let mut ws = fresh.connect_ws(&id).await;
    let said = fresh.say(&id, "hello").await;
    assert_eq!(ws.next_text().await, said.text);
    let stored = fresh.get_thread(&id).await;
    assert_same_json(&stored["user"], &user, "the first valid creation's user");
    assert_eq!(message_ids(&stored), [said.json()["id"].clone()]);
}
