//! Faults: the broker or the database goes away and comes back.

use crate::harness::*;
use serde_json::{json, Value};

async fn wait_for_message_in_get(app: &App, thread: &str, id: &str) {
    eventually(
        &format!("message {id} in GET"),
        PROJECTION_TIMEOUT,
        || async {
            let response = app.get(&format!("/chat/thread/{thread}/")).await;
            (response.status == 200
                && response.json()["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["id"] == id))
            .then_some(())
        },
    )
    .await
}

/// Retries a POST until it is accepted: a service may answer 503 while it reconnects.
async fn post_until_accepted(app: &App, path: &str, body: &Value) -> HttpResponse {
    eventually(
        &format!("POST {path} to be accepted again"),
        PROJECTION_TIMEOUT,
        || async {
            let response = app.post(path, body).await;
            match response.status {
                201 => Some(response),
                503 => None,
                other => panic!(
                    "POST {path} answered {other} while recovering: {}",
                    response.text
                ),
            }
        },
    )
    .await
}

/// Asserts a 503 whose body is `{"detail": "..."}`.
#[track_caller]
fn assert_unavailable(response: &HttpResponse, what: &str) {
    let body = response.expect(503);
    assert_eq!(keys(&body), ["detail"], "{what}: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn every_service_rides_out_a_nats_server_restart() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    app.say(&thread, "before the restart").await;

    app.nats.restart();

    // An outside publisher's event after the restart reaches the read model.
    let id = new_id();
    app.publish_event(
        &app.message_subject(&thread),
        &[("Nats-Msg-Id", &id)],
        agent_reply(&id, &thread, "after"),
    )
    .await;
    wait_for_message_in_get(&app, &thread, &id).await;

    // The API appends again, and the gateway pushes again.
    let message = json!({"user": {"name": "V"}, "thread": thread, "body": "api after"});
    post_until_accepted(&app, "/chat/message/", &message).await;
    let mut ws = eventually(
        "the gateway to accept a socket again",
        PROJECTION_TIMEOUT,
        || async {
            app.try_connect_ws(&format!("/ws/chat/{thread}/"))
                .await
                .ok()
        },
    )
    .await;
    let posted = app.say(&thread, "pushed after the restart").await;
    assert_eq!(ws.next_text().await, posted.text);
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 4, "{stored}");
}

#[tokio::test]
async fn the_projector_rides_out_a_postgres_restart() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    app.say(&thread, "before the restart").await;

    app.pg.stop();
    let id = new_id();
    app.publish_event(
        &app.message_subject(&thread),
        &[("Nats-Msg-Id", &id)],
        agent_reply(&id, &thread, "while down"),
    )
    .await;
    app.pg.start_again().await;

    wait_for_message_in_get(&app, &thread, &id).await;
    let message = json!({"user": {"name": "V"}, "thread": thread, "body": "after"});
    let posted = post_until_accepted(&app, "/chat/message/", &message)
        .await
        .json();
    let stored = app.get_thread(&thread).await;
    let ids = message_ids(&stored);
    assert_eq!(ids.len(), 3, "{stored}");
    assert_eq!(ids[1], json!(id));
    assert_eq!(ids[2], posted["id"]);
}

#[tokio::test]
async fn the_api_answers_503_while_nats_is_down() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;

    app.nats.kill();
    let response = app
        .post("/chat/thread/", &json!({"user": {"name": "V"}}))
        .await;
    assert_unavailable(&response, "POST /chat/thread/ without nats");
    let response = app
        .post_message(&json!({"user": {"name": "V"}, "thread": thread, "body": "hi"}))
        .await;
    assert_unavailable(&response, "POST /chat/message/ without nats");

    app.nats.start_again();
    post_until_accepted(&app, "/chat/thread/", &json!({"user": {"name": "V"}})).await;
}

#[tokio::test]
async fn the_api_answers_503_while_postgres_is_down() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;

    app.pg.stop();
    let response = app.get(&format!("/chat/thread/{thread}/")).await;
    assert_unavailable(&response, "GET /chat/thread/:id/ without postgres");

    app.pg.start_again().await;
    eventually("GET to answer again", PROJECTION_TIMEOUT, || async {
        (app.get(&format!("/chat/thread/{thread}/")).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_socket_held_open_across_a_nats_restart_keeps_receiving() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    let before = app.say(&thread, "before the restart").await;
    assert_eq!(ws.next_text().await, before.text);

    app.nats.restart();
    // The gateway subscribes again once its connection is back.
    let subject = crate::harness::gateway::stored_subject(&thread);
    eventually(
        "the gateway to subscribe to the thread again",
        PROJECTION_TIMEOUT,
        || async { (app.nats.subscriptions_on(&subject).await > 0).then_some(()) },
    )
    .await;
    let message = json!({"user": {"name": "V"}, "thread": thread, "body": "after the restart"});
    let after = post_until_accepted(&app, "/chat/message/", &message).await;
    assert_eq!(
        ws.next_text().await,
        after.text,
        "the socket opened before the restart"
    );
}

#[tokio::test]
async fn while_nats_server_hangs_posts_answer_503_instead_of_hanging() {
    let mut app = options().env("NATS_TIMEOUT", "1s").start().await;
    let thread = app.new_thread().await;
    app.nats.pause();
    let response = app
        .post_message(&json!({"user": {"name": "V"}, "thread": thread, "body": "hung"}))
        .await;
    assert_unavailable(&response, "POST /chat/message/ while nats-server hangs");
    let response = app
        .post("/chat/thread/", &json!({"user": {"name": "V"}}))
        .await;
    assert_unavailable(&response, "POST /chat/thread/ while nats-server hangs");
    app.nats.resume();
    let message = json!({"user": {"name": "V"}, "thread": thread, "body": "resumed"});
    post_until_accepted(&app, "/chat/message/", &message).await;
}

#[tokio::test]
async fn while_postgres_hangs_get_answers_503_instead_of_hanging() {
    let mut app = options().env("DATABASE_TIMEOUT", "1s").start().await;
    let thread = app.new_thread().await;
    let posted = app.say(&thread, "stored").await.json();
    let unread = app.new_thread().await;
    let kept = app.get_thread(&thread).await;
    assert_eq!(message_ids(&kept), [posted["id"].clone()]);
    app.pg.pause();
    let response = app.get(&format!("/chat/thread/{unread}/")).await;
    assert_unavailable(&response, "GET /chat/thread/:id/ while PostgreSQL hangs");
    // A thread the API keeps in memory, unchanged in the log since, needs no PostgreSQL.
    let response = app.get(&format!("/chat/thread/{thread}/")).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.json(), kept);
    app.pg.resume();
    eventually("GET to answer again", PROJECTION_TIMEOUT, || async {
        (app.get(&format!("/chat/thread/{thread}/")).await.status == 200).then_some(())
    })
    .await;
}
