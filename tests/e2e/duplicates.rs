//! Duplicates: an event published twice reaches sockets and the read model once. A retry
//! under the same `Nats-Msg-Id` is deduplicated by JetStream but still reaches every core
//! subscriber twice; the same message id under two `Nats-Msg-Id`s is stored twice, and the
//! first one stored wins everywhere.

use crate::harness::*;
use serde_json::json;

/// How many rows the read model holds for message `id`, and the body of the one it keeps.
async fn stored_rows(app: &mut App, id: &str) -> (i64, Option<String>) {
    let db = app.db().await;
    let count: i64 = sqlx::query_scalar("select count(*) from messages where id = $1::uuid")
        .bind(id)
        .fetch_one(&db)
        .await
        .expect("counting rows");
    let body: Option<String> = sqlx::query_scalar("select body from messages where id = $1::uuid")
        .bind(id)
        .fetch_optional(&db)
        .await
        .expect("reading a row");
    (count, body)
}

/// Posts a marker through the API and waits until `GET` lists it: everything published
/// before it has been applied (one stream, applied in order).
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

#[tokio::test]
async fn the_same_event_twice_under_one_msg_id_reaches_an_open_socket_once() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    let id = new_id();
    let payload = agent_reply(&id, &thread, "published twice");
    let subject = app.message_subject(&thread);

    let first = app
        .publish_event(&subject, &[("Nats-Msg-Id", &id)], payload.clone())
        .await;
    let second = app
        .publish_event(&subject, &[("Nats-Msg-Id", &id)], payload.clone())
        .await;
    assert!(second.duplicate && second.sequence == first.sequence);

    assert_eq!(ws.next_text().await, payload);
    let marker = marker(&app, &thread).await;
    assert_eq!(
        ws.next_text().await,
        marker,
        "the socket got the retried event a second time"
    );
    let stored = app.get_thread(&thread).await;
    assert_eq!(message_ids(&stored)[0], json!(id));
    assert_eq!(message_ids(&stored).len(), 2, "{stored}");
    assert_eq!(stored_rows(&mut app, &id).await.0, 1);
}

/// Publishes message `id` twice under two `Nats-Msg-Id`s with different bodies; checks that
/// `GET`, the read model and an open socket show it once, with the first body.
async fn assert_first_of_two_wins(app: &mut App, thread: &str, same_batch: bool) {
    let mut ws = app.connect_ws(thread).await;
    let id = new_id();
    let first = agent_reply(&id, thread, "the first body");
    let second = agent_reply(&id, thread, "the second body");
    let subject = app.message_subject(thread);
    if same_batch {
        // Both wait in the stream while the projector is stopped, and reach it together.
        app.pause("projector", 0);
    }
    let a = app
        .publish_event(&subject, &[("Nats-Msg-Id", &new_id())], first.clone())
        .await;
    if !same_batch {
        eventually("the first copy in GET", PROJECTION_TIMEOUT, || async {
            message_ids(&app.get_thread(thread).await)
                .contains(&json!(id))
                .then_some(())
        })
        .await;
    }
    let b = app
        .publish_event(&subject, &[("Nats-Msg-Id", &new_id())], second)
        .await;
    assert!(
        b.sequence > a.sequence && !b.duplicate,
        "both copies are stored"
    );
    if same_batch {
        app.resume("projector", 0);
    }
    let marker = marker(app, thread).await;

    let stored = app.get_thread(thread).await;
    let messages = stored["messages"].as_array().expect("messages");
    let copies: Vec<_> = messages.iter().filter(|m| m["id"] == id).collect();
    assert_eq!(copies.len(), 1, "GET lists the message once: {stored}");
    assert_eq!(copies[0]["body"], "the first body", "the first copy wins");
    assert_eq!(
        stored_rows(app, &id).await,
        (1, Some("the first body".to_owned()))
    );

    assert_eq!(ws.next_text().await, first);
    assert_eq!(
        ws.next_text().await,
        marker,
        "the socket got the second copy of the message"
    );
}

#[tokio::test]
async fn one_message_id_under_two_msg_ids_is_shown_once_with_the_first_body() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    assert_first_of_two_wins(&mut app, &thread, false).await;
}

#[tokio::test]
async fn one_message_id_twice_in_one_batch_is_shown_once_with_the_first_body() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    assert_first_of_two_wins(&mut app, &thread, true).await;
}

/// Stores message `id` on a thread that no socket watches (under `Nats-Msg-Id` `id`, or
/// without one), opens the thread's first socket (its gateway starts following the thread
/// now), then stores the message again under a new `Nats-Msg-Id` (or again without one), as
/// a publisher repeating it after the duplicate window does: the socket does not show the
/// repeat, and `GET` lists the message once.
async fn assert_repeat_of_a_message_older_than_the_feed_is_not_shown(named: bool) {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let subject = app.message_subject(&thread);
    let id = new_id();
    let payload = agent_reply(&id, &thread, "stored before any socket");
    let first_msg_id = if named { id.clone() } else { String::new() };
    let first_headers: &[(&str, &str)] = if named {
        &[("Nats-Msg-Id", &first_msg_id)]
    } else {
        &[]
    };
    app.publish_event(&subject, first_headers, payload.clone())
        .await;
    eventually("the first copy in GET", PROJECTION_TIMEOUT, || async {
        message_ids(&app.get_thread(&thread).await)
            .contains(&json!(id))
            .then_some(())
    })
    .await;

    let mut ws = app.connect_ws(&thread).await;
    let repeat_msg_id = new_id();
    let repeat_headers: &[(&str, &str)] = if named {
        &[("Nats-Msg-Id", &repeat_msg_id)]
    } else {
        &[]
    };
    let repeat = app.publish_event(&subject, repeat_headers, payload).await;
    assert!(!repeat.duplicate, "the repeat is stored");
    let marker = marker(&app, &thread).await;

    assert_eq!(
        ws.next_text().await,
        marker,
        "the socket showed a repeat of a message stored before it opened"
    );
    let stored = app.get_thread(&thread).await;
    let copies = message_ids(&stored).iter().filter(|m| **m == id).count();
    assert_eq!(copies, 1, "GET lists the message once: {stored}");
}

#[tokio::test]
async fn a_repeat_of_a_message_stored_before_the_thread_s_first_socket_is_not_shown() {
    assert_repeat_of_a_message_older_than_the_feed_is_not_shown(true).await;
}

#[tokio::test]
async fn a_repeat_of_a_message_stored_without_a_msg_id_before_the_first_socket_is_not_shown() {
    assert_repeat_of_a_message_older_than_the_feed_is_not_shown(false).await;
}

#[tokio::test]
async fn a_message_whose_first_copy_was_set_aside_before_the_thread_s_first_socket_is_shown() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let subject = app.message_subject(&thread);
    let id = new_id();
    // Invalid (a blank body): set aside, never a message of the thread.
    app.publish_event(
        &subject,
        &[("Nats-Msg-Id", &id)],
        agent_reply(&id, &thread, " "),
    )
    .await;
    marker(&app, &thread).await;

    let mut ws = app.connect_ws(&thread).await;
    // The publisher corrects it and publishes it again, past the duplicate window.
    let valid = agent_reply(&id, &thread, "corrected");
    app.publish_event(&subject, &[("Nats-Msg-Id", &new_id())], valid.clone())
        .await;
    assert_eq!(
        ws.next_text().await,
        valid,
        "the socket left out the message's first valid copy"
    );
    eventually("the message in GET", PROJECTION_TIMEOUT, || async {
        let stored = app.get_thread(&thread).await;
        let copies = message_ids(&stored).iter().filter(|m| **m == id).count();
        (copies == 1).then_some(())
    })
    .await;
}
