//! An outside publisher (the Slack integration) publishing `MessagePosted` events straight
//! to JetStream: valid ones reach sockets and the read model, invalid ones are set aside.

use crate::harness::*;
use serde_json::{json, Value};

/// Waits until the read model has a message with `id` on `thread`, via the public GET.
async fn wait_for_message_in_get(app: &App, thread: &str, id: &str) -> Value {
    eventually(
        &format!("message {id} in GET /chat/thread/{thread}/"),
        PROJECTION_TIMEOUT,
        || async {
            let stored = app.get_thread(thread).await;
            stored["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == id)
                .cloned()
        },
    )
    .await
}

async fn message_rows(app: &mut App, id: &str) -> i64 {
    let db = app.db().await;
    sqlx::query_scalar::<_, i64>("select count(*) from messages where id = $1::uuid")
        .bind(id)
        .fetch_one(&db)
        .await
        .expect("counting messages")
}

#[tokio::test]
async fn a_valid_event_from_an_outside_publisher_reaches_the_socket_and_the_read_model() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    let id = new_id();
    let payload = agent_reply(&id, &thread, "Hello from Slack");

    let ack = app
        .publish_event(
            &app.message_subject(&thread),
            &[("Nats-Msg-Id", &id)],
            payload.clone(),
        )
        .await;
    assert_eq!(ack.stream, "THREADLINE");

    assert_eq!(
        ws.next_text().await,
        payload,
        "the gateway must forward the published bytes"
    );
    let stored = wait_for_message_in_get(&app, &thread, &id).await;
    let sent: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        keys(&stored),
        ["body", "id", "send_by_user", "timestamp", "user"]
    );
    for field in ["timestamp", "body", "send_by_user"] {
        assert_eq!(stored[field], sent[field], "{field}");
    }
    assert_same_json(&stored["user"], &sent["user"], "user of the outside event");
    assert_eq!(message_rows(&mut app, &id).await, 1);
}

/// Publishes `payload` on `subject`, which must be set aside with `reason`; then publishes a
/// valid event on `thread` and checks that it is the first thing `thread`'s socket and read
/// model see, so the invalid one reached neither.
async fn assert_set_aside(
    app: &mut App,
    thread: &str,
    subject: &str,
    payload: &str,
    reason: &str,
    invalid_id: Option<&str>,
) {
    let mut ws = app.connect_ws(thread).await;
    let msg_id = new_id();
    let ack = app
        .publish_event(subject, &[("Nats-Msg-Id", &msg_id)], payload.to_owned())
        .await;

    let dead = app.dead_letter_of(ack.sequence).await;
    assert_eq!(
        dead.subject.as_str(),
        format!("chat.deadletter.{reason}"),
        "payload {payload}"
    );
    assert_eq!(
        header(&dead, "Threadline-Dead-Letter-Subject").as_deref(),
        Some(subject)
    );
    let why = header(&dead, "Threadline-Dead-Letter-Reason").unwrap_or_default();
    assert!(!why.trim().is_empty(), "no reason given for {payload}");
    assert_eq!(
        dead.payload.as_ref(),
        payload.as_bytes(),
        "the set-aside event is not kept as published"
    );

    let valid_id = new_id();
    let valid = agent_reply(&valid_id, thread, "valid after invalid");
    app.publish_event(
        &app.message_subject(thread),
        &[("Nats-Msg-Id", &valid_id)],
        valid.clone(),
    )
    .await;
    assert_eq!(
        ws.next_text().await,
        valid,
        "the invalid event reached the socket"
    );
    wait_for_message_in_get(app, thread, &valid_id).await;
    let stored = app.get_thread(thread).await;
    let ids = message_ids(&stored);
    assert_eq!(
        ids,
        [json!(valid_id)],
        "the invalid event reached the read model"
    );
    if let Some(invalid_id) = invalid_id {
        assert_eq!(message_rows(app, invalid_id).await, 0);
    }
    ws.close().await;
}

#[tokio::test]
async fn an_event_that_is_not_json_is_set_aside_and_reaches_neither_socket_nor_read_model() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let subject = app.message_subject(&thread);
    assert_set_aside(
        &mut app,
        &thread,
        &subject,
        r#"{"id": "broken"#,
        "invalid_payload",
        None,
    )
    .await;
}

#[tokio::test]
async fn an_event_that_violates_the_schema_is_set_aside_and_reaches_neither_socket_nor_read_model()
{
    // Payload templates: ID, THREAD and NOW are filled in per case.
    let cases = [
        (
            "body missing",
            r#"{"id":"ID","user":{"n":1},"timestamp":"NOW","send_by_user":false,"thread":"THREAD"}"#,
        ),
        (
            "send_by_user a string",
            r#"{"id":"ID","user":{"n":1},"timestamp":"NOW","body":"x","send_by_user":"yes","thread":"THREAD"}"#,
        ),
        (
            "id not a uuid",
            r#"{"id":"nope","user":{"n":1},"timestamp":"NOW","body":"x","send_by_user":false,"thread":"THREAD"}"#,
        ),
        (
            "blank body",
            r#"{"id":"ID","user":{"n":1},"timestamp":"NOW","body":"   ","send_by_user":false,"thread":"THREAD"}"#,
        ),
        (
            "null user",
            r#"{"id":"ID","user":null,"timestamp":"NOW","body":"x","send_by_user":false,"thread":"THREAD"}"#,
        ),
        ("not an object", "[1,2,3]"),
        (
            "an unknown field",
            r#"{"id":"ID","user":{"n":1},"timestamp":"NOW","body":"x","send_by_user":false,"thread":"THREAD","extra":1}"#,
        ),
        (
            "a field twice",
            r#"{"id":"ID","user":{"n":1},"timestamp":"NOW","body":"x","body":"y","send_by_user":false,"thread":"THREAD"}"#,
        ),
        (
            "a date that does not exist",
            r#"{"id":"ID","user":{"n":1},"timestamp":"2026-02-30T10:00:00.000000Z","body":"x","send_by_user":false,"thread":"THREAD"}"#,
        ),
        (
            "a NUL in the user",
            r#"{"id":"ID","user":{"n":"a\u0000b"},"timestamp":"NOW","body":"x","send_by_user":false,"thread":"THREAD"}"#,
        ),
    ];
    let mut app = spawn_app().await;
    for (what, template) in cases {
        // A fresh thread per case keeps "the first thing the socket sees" meaningful.
        let thread = app.new_thread().await;
        let id = new_id();
        let subject = app.message_subject(&thread);
        let payload = template
            .replace("ID", &id)
            .replace("THREAD", &thread)
            .replace("NOW", &now_timestamp());
        eprintln!("case: {what}");
        assert_set_aside(
            &mut app,
            &thread,
            &subject,
            &payload,
            "invalid_payload",
            Some(&id),
        )
        .await;
    }
}

#[tokio::test]
async fn a_message_for_a_thread_that_does_not_exist_is_set_aside() {
    let mut app = spawn_app().await;
    let unknown = new_id();
    let id = new_id();
    let ack = app
        .publish_event(
            &app.message_subject(&unknown),
            &[("Nats-Msg-Id", &id)],
            agent_reply(&id, &unknown, "to nobody"),
        )
        .await;

    let dead = app.dead_letter_of(ack.sequence).await;
    assert_eq!(dead.subject.as_str(), "chat.deadletter.unknown_thread");
    assert_eq!(
        header(&dead, "Threadline-Dead-Letter-Subject"),
        Some(app.message_subject(&unknown))
    );
    assert_eq!(message_rows(&mut app, &id).await, 0);
    let response = app.get(&format!("/chat/thread/{unknown}/")).await;
    assert_eq!(response.expect(404), json!({"detail": "Not found."}));
    let refused = app
        .try_connect_ws(&format!("/ws/chat/{unknown}/"))
        .await
        .err()
        .expect("socket on an unknown thread");
    assert_eq!(refused.status, Some(404));
}

#[tokio::test]
async fn a_message_whose_thread_differs_from_its_subject_is_set_aside() {
    let mut app = spawn_app().await;
    let subject_thread = app.new_thread().await;
    let payload_thread = app.new_thread().await;
    let id = new_id();
    let subject = app.message_subject(&subject_thread);
    let payload = agent_reply(&id, &payload_thread, "mismatched");

    assert_set_aside(
        &mut app,
        &subject_thread,
        &subject,
        &payload,
        "thread_mismatch",
        Some(&id),
    )
    .await;
    assert_eq!(app.get_thread(&payload_thread).await["messages"], json!([]));
}

#[tokio::test]
async fn the_projector_goes_on_after_setting_events_aside() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let subject = app.message_subject(&thread);
    let js = app.jetstream().await;
    let mut valid_ids = Vec::new();
    for i in 0..20 {
        if i % 2 == 0 {
            harness_publish(&js, &subject, &format!("{{not json {i}")).await;
        } else {
            let id = new_id();
            harness_publish(
                &js,
                &subject,
                &agent_reply(&id, &thread, &format!("valid {i}")),
            )
            .await;
            valid_ids.push(json!(id));
        }
    }
    let last = valid_ids.last().unwrap().as_str().unwrap().to_owned();
    wait_for_message_in_get(&app, &thread, &last).await;
    let stored = app.get_thread(&thread).await;
    let ids = message_ids(&stored);
    assert_eq!(ids, valid_ids);
    let dead = eventually("10 dead letters", PROJECTION_TIMEOUT, || async {
        let dead = app.dead_letters().await;
        (dead.len() >= 10).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 10);
    let db = app.db().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 10);
}

async fn harness_publish(js: &async_nats::jetstream::Context, subject: &str, payload: &str) {
    let id = new_id();
    publish_event(
        js,
        subject,
        &[("Nats-Msg-Id", &id)],
        payload.to_owned().into(),
    )
    .await;
}

#[tokio::test]
async fn an_event_with_headers_that_contradict_it_is_set_aside() {
    let mut app = spawn_app().await;
    let cases = [
        ("Threadline-Schema-Version", "2", "unsupported_version"),
        ("Threadline-Event", "ThreadCreated", "kind_mismatch"),
    ];
    for (name, value, reason) in cases {
        let thread = app.new_thread().await;
        let mut ws = app.connect_ws(&thread).await;
        let id = new_id();
        let subject = app.message_subject(&thread);
        let ack = app
            .publish_event(
                &subject,
                &[("Nats-Msg-Id", &id), (name, value)],
                agent_reply(&id, &thread, "contradicted"),
            )
            .await;
        let dead = app.dead_letter_of(ack.sequence).await;
        assert_eq!(
            dead.subject.as_str(),
            format!("chat.deadletter.{reason}"),
            "{name}: {value}"
        );
        let valid_id = new_id();
        let valid = agent_reply(&valid_id, &thread, "valid");
        app.publish_event(&subject, &[("Nats-Msg-Id", &valid_id)], valid.clone())
            .await;
        assert_eq!(
            ws.next_text().await,
            valid,
            "{name}: {value} reached the socket"
        );
        wait_for_message_in_get(&app, &thread, &valid_id).await;
        assert_eq!(
            message_rows(&mut app, &id).await,
            0,
            "{name}: {value} reached the read model"
        );
    }
}
