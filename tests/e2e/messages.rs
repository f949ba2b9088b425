//! `POST /chat/message/`: shapes, defaults and the forms of input it accepts.

use crate::harness::*;
use serde_json::{json, Value};

#[tokio::test]
async fn post_message_answers_201_with_the_public_message_shape() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;

    let message = app
        .post_message(&json!({
            "user": {"name": "Agent", "slack": {"id": "U1"}},
            "thread": thread,
            "body": "How can I help?",
            "send_by_user": false,
        }))
        .await
        .expect(201);

    assert_eq!(
        keys(&message),
        ["body", "id", "send_by_user", "thread", "timestamp", "user"]
    );
    assert_uuid1(&message["id"]);
    assert_timestamp(&message["timestamp"]);
    assert_ne!(message["id"], json!(thread), "a message has its own id");
    assert_same_json(
        &message["user"],
        &json!({"name": "Agent", "slack": {"id": "U1"}}),
        "user",
    );
    assert_eq!(message["body"], "How can I help?");
    assert_eq!(message["send_by_user"], false);
    assert_eq!(message["thread"], json!(thread));
}

#[tokio::test]
async fn message_ids_are_distinct_and_timestamps_do_not_go_backwards() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ids = std::collections::HashSet::new();
    let mut last = None;
    for i in 0..20 {
        let message = app.say(&thread, &format!("m{i}")).await.json();
        assert_uuid1(&message["id"]);
        assert!(
            ids.insert(message["id"].to_string()),
            "duplicate id {}",
            message["id"]
        );
        let ts = assert_timestamp(&message["timestamp"]);
        if let Some(last) = last {
            assert!(
                ts >= last,
                "timestamp {ts} before the previous message's {last}"
            );
        }
        last = Some(ts);
    }
}

#[tokio::test]
async fn send_by_user_defaults_to_false() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let message = app
        .post_message(&json!({"user": {"name": "V"}, "thread": thread, "body": "hi"}))
        .await
        .expect(201);
    assert_eq!(message["send_by_user"], false);
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"][0]["send_by_user"], false);
}

#[tokio::test]
async fn send_by_user_accepts_the_truthy_and_falsy_forms_of_drf() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let truthy = [
        json!(true),
        json!(1),
        json!("1"),
        json!("t"),
        json!("T"),
        json!("y"),
        json!("Y"),
        json!("yes"),
        json!("YES"),
        json!("true"),
        json!("True"),
        json!("TRUE"),
        json!("on"),
        json!("On"),
        json!("ON"),
    ];
    let falsy = [
        json!(false),
        json!(0),
        json!("0"),
        json!("f"),
        json!("F"),
        json!("n"),
        json!("N"),
        json!("no"),
        json!("No"),
        json!("false"),
        json!("False"),
        json!("FALSE"),
        json!("off"),
        json!("Off"),
        json!("OFF"),
    ];
    let cases = truthy
        .iter()
        .map(|v| (v, true))
        .chain(falsy.iter().map(|v| (v, false)));
    for (value, expected) in cases {
        let message = app
            .post_message(&json!({
                "user": {"name": "V"},
                "thread": thread,
                "body": "x",
                "send_by_user": value,
            }))
            .await
            .expect(201);
        assert_eq!(
            message["send_by_user"],
            json!(expected),
            "send_by_user {value}"
        );
    }
}

#[tokio::test]
async fn message_body_is_trimmed_of_surrounding_white_space() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let message = app
        .post_message(&json!({
            "user": {"name": "V"},
            "thread": thread,
            "body": " \t\n hello,\n  world \u{a0}\u{2003}\r\n",
        }))
        .await
        .expect(201);
    assert_eq!(message["body"], "hello,\n  world");
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"][0]["body"], "hello,\n  world");
}

#[tokio::test]
async fn a_number_body_is_stored_as_its_text() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    for (raw, text) in [("5", "5"), ("1.5", "1.5"), ("-3", "-3")] {
        let message = app
            .post_json(
                "/chat/message/",
                format!(r#"{{"user":{{"name":"V"}},"thread":"{thread}","body":{raw}}}"#),
                Some("application/json"),
            )
            .await
            .expect(201);
        assert_eq!(message["body"], json!(text), "body {raw}");
    }
    let stored = app.get_thread(&thread).await;
    let bodies: Vec<&Value> = stored["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(bodies, [&json!("5"), &json!("1.5"), &json!("-3")]);
}

#[tokio::test]
async fn thread_in_any_form_pythons_uuid_parser_takes_is_answered_canonical() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let forms = [
        thread.to_uppercase(),
        thread.replace('-', ""),
        thread.replace('-', "").to_uppercase(),
        format!("{{{thread}}}"),
        format!("urn:uuid:{thread}"),
        // Python drops every hyphen, wherever it is.
        thread
            .replace('-', "")
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("-"),
    ];
    for form in &forms {
        let message = app
            .post_message(&json!({"user": {"name": "V"}, "thread": form, "body": form}))
            .await
            .expect(201);
        assert_eq!(message["thread"], json!(thread), "thread sent as {form:?}");
    }
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), forms.len());
}

#[tokio::test]
async fn post_message_ignores_unknown_fields_and_client_sent_id_and_timestamp() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let sent_id = new_id();
    let message = app
        .post_message(&json!({
            "id": sent_id,
            "timestamp": "2001-01-01T00:00:00.000000Z",
            "user": {"name": "V"},
            "thread": thread,
            "body": "hi",
            "extra": {"x": 1},
        }))
        .await
        .expect(201);
    assert_eq!(
        keys(&message),
        ["body", "id", "send_by_user", "thread", "timestamp", "user"]
    );
    assert_ne!(message["id"], json!(sent_id));
    assert_timestamp(&message["timestamp"]);
}

#[tokio::test]
async fn message_path_works_without_trailing_slash() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let message = app
        .post(
            "/chat/message",
            &json!({"user": {"name": "V"}, "thread": thread, "body": "hi"}),
        )
        .await
        .expect(201);
    assert_eq!(message["body"], "hi");
}

#[tokio::test]
async fn json_content_type_with_parameters_is_accepted() {
    let app = spawn_app().await;
    let created = app
        .post_json(
            "/chat/thread/",
            r#"{"user":{"name":"V"}}"#,
            Some("application/json; charset=utf-8"),
        )
        .await
        .expect(201);
    let thread = created["id"].as_str().unwrap();
    let message = app
        .post_json(
            "/chat/message/",
            format!(r#"{{"user":"V","thread":"{thread}","body":"hi"}}"#),
            Some("application/json;charset=UTF-8"),
        )
        .await
        .expect(201);
    assert_eq!(message["body"], "hi");
}

#[tokio::test]
async fn a_body_just_under_the_size_limit_is_accepted_whole() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    // 2.5 MiB is 2,621,440 bytes; this request is about 2,500,000.
    let body = "a".repeat(2_500_000);
    let response = app
        .post_message(&json!({"user": {"name": "V"}, "thread": thread, "body": body}))
        .await;
    let message = response.expect(201);
    assert_eq!(message["body"].as_str().map(str::len), Some(body.len()));
    let stored = app.get_thread(&thread).await;
    assert_eq!(
        stored["messages"][0]["body"].as_str().map(str::len),
        Some(body.len())
    );
}
