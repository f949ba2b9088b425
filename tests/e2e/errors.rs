//! The error cases of `contract/NOTES.md` that need the real system: a thread the event log
//! does not hold, the body limit over a real socket, an event larger than nats-server takes,
//! and one missing-fields check end to end. Every field text and body error, with its exact
//! status and JSON body, is checked in process by the API's own tests
//! (`services/api/tests/fields/`), which need no servers.

use crate::harness::*;
use serde_json::{json, Value};

const REQUIRED: &str = "This field is required.";

fn valid_message(thread: &str) -> Value {
    json!({"user": {"name": "Visitor"}, "thread": thread, "body": "hello", "send_by_user": true})
}

fn without(mut fields: Value, field: &str) -> Value {
    fields.as_object_mut().unwrap().remove(field);
    fields
}

/// POSTs `body` as JSON to `path` and asserts a 400 with exactly `expected`.
async fn assert_rejected(app: &App, path: &str, body: &Value, expected: Value) {
    let response = app.post(path, body).await;
    assert_eq!(response.expect(400), expected, "POST {path} {body}");
}

/// Asserts that `thread` holds no message: a refused request left nothing behind.
async fn assert_no_messages(app: &App, thread: &str) {
    let stored = app.get_thread(thread).await;
    assert_eq!(
        stored["messages"],
        json!([]),
        "a refused message was stored"
    );
}

#[tokio::test]
async fn missing_fields_are_each_reported_as_required() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;

    assert_rejected(
        &app,
        "/chat/thread/",
        &json!({}),
        json!({"user": [REQUIRED]}),
    )
    .await;
    assert_rejected(
        &app,
        "/chat/message/",
        &json!({}),
        json!({"user": [REQUIRED], "thread": [REQUIRED], "body": [REQUIRED]}),
    )
    .await;
    for field in ["user", "thread", "body"] {
        let body = without(valid_message(&thread), field);
        assert_rejected(&app, "/chat/message/", &body, json!({ field: [REQUIRED] })).await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn unknown_thread_is_an_invalid_pk() {
    let app = spawn_app().await;
    let unknown = new_id();
    let body = valid_message(&unknown);
    assert_rejected(
        &app,
        "/chat/message/",
        &body,
        json!({"thread": [format!("Invalid pk \"{unknown}\" - object does not exist.")]}),
    )
    .await;
}

/// POSTs an oversized `body` ten times, each on a connection of its own, and checks every
/// answer: a 413 with a JSON `detail`. The server reads an oversized body to its end and drops
/// it before it answers, so the client, still writing, always gets the 413: a broken pipe or
/// reset fails the test.
async fn assert_oversized_refused(app: &App, path: &str, body: &Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    for attempt in 1..=10 {
        let response = app
            .try_request_alone("POST", path, Some(bytes.clone()), Some("application/json"))
            .await
            .unwrap_or_else(|e| {
                panic!("POST {path} attempt {attempt}: the 413 was lost to the transport: {e:?}")
            });
        assert_eq!(response.status, 413, "POST {path} attempt {attempt}");
        let json = response.json();
        assert_eq!(keys(&json), ["detail"], "attempt {attempt}: {json}");
        assert!(
            json["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "attempt {attempt}: {json}"
        );
    }
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_413() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    // 2.5 MiB is 2,621,440 bytes.
    let body = json!({"user": {"name": "V"}, "thread": thread, "body": "a".repeat(2_700_000)});
    assert_oversized_refused(&app, "/chat/message/", &body).await;
    let big_user = json!({"user": {"blob": "b".repeat(3_000_000)}});
    assert_oversized_refused(&app, "/chat/thread/", &big_user).await;
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn against_a_nats_server_with_its_default_max_payload_an_event_too_large_is_413() {
    // nats-server's own default max_payload is 1 MB, below the API's 2.5 MiB body limit.
    let app = options().nats_config("").start().await;
    let thread = app.new_thread().await;
    let fits = app.say(&thread, &"f".repeat(500_000)).await.json();
    let body = json!({"user": {"name": "V"}, "thread": thread, "body": "a".repeat(1_500_000)});
    let response = app.post_message(&body).await;
    let json = response.expect(413);
    assert_eq!(keys(&json), ["detail"], "{json}");
    let big_user = json!({"user": {"blob": "b".repeat(1_500_000)}});
    app.post("/chat/thread/", &big_user).await.expect(413);
    // The refused message is not stored; the one that fit is.
    assert_eq!(
        message_ids(&app.get_thread(&thread).await),
        [fits["id"].clone()]
    );
}
