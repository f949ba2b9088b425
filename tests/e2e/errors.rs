//! Every error case of `contract/NOTES.md`, with its exact status and JSON body.

use crate::harness::*;
use serde_json::{json, Value};

const REQUIRED: &str = "This field is required.";
const NOT_NULL: &str = "This field may not be null.";
const NOT_BLANK: &str = "This field may not be blank.";
const NOT_A_STRING: &str = "Not a valid string.";
const NUL: &str = "Null characters are not allowed.";
const NOT_A_BOOLEAN: &str = "Must be a valid boolean.";

fn valid_message(thread: &str) -> Value {
    json!({"user": {"name": "Visitor"}, "thread": thread, "body": "hello", "send_by_user": true})
}

fn with(mut fields: Value, field: &str, value: Value) -> Value {
    fields[field] = value;
    fields
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

/// POSTs raw `body` as `application/json` and asserts `status` with exactly `expected`.
async fn assert_raw(app: &App, path: &str, body: &str, status: u16, expected: Value) {
    let response = app.post_json(path, body, Some("application/json")).await;
    assert_eq!(response.expect(status), expected, "POST {path} {body:?}");
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
async fn null_fields_are_reported_as_may_not_be_null() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;

    assert_rejected(
        &app,
        "/chat/thread/",
        &json!({"user": null}),
        json!({"user": [NOT_NULL]}),
    )
    .await;
    for field in ["user", "thread", "body", "send_by_user"] {
        let body = with(valid_message(&thread), field, Value::Null);
        assert_rejected(&app, "/chat/message/", &body, json!({ field: [NOT_NULL] })).await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn blank_user_is_rejected_on_both_endpoints() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    for blank in ["", " ", "  \t\n "] {
        assert_rejected(
            &app,
            "/chat/thread/",
            &json!({"user": blank}),
            json!({"user": [NOT_BLANK]}),
        )
        .await;
        let body = with(valid_message(&thread), "user", json!(blank));
        assert_rejected(&app, "/chat/message/", &body, json!({"user": [NOT_BLANK]})).await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn blank_body_is_rejected() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    for blank in ["", " ", "\n\t  \r\n", "\u{a0}\u{2003}"] {
        let body = with(valid_message(&thread), "body", json!(blank));
        assert_rejected(&app, "/chat/message/", &body, json!({"body": [NOT_BLANK]})).await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn body_that_is_a_boolean_object_or_array_is_not_a_valid_string() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    for value in [
        json!(true),
        json!(false),
        json!({}),
        json!({"text": "hi"}),
        json!([]),
        json!(["hi"]),
    ] {
        let body = with(valid_message(&thread), "body", value);
        assert_rejected(
            &app,
            "/chat/message/",
            &body,
            json!({"body": [NOT_A_STRING]}),
        )
        .await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn nul_character_in_body_is_rejected() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    for value in ["a\u{0}b", "\u{0}", "hello\u{0}"] {
        let body = with(valid_message(&thread), "body", json!(value));
        assert_rejected(&app, "/chat/message/", &body, json!({"body": [NUL]})).await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn nul_character_anywhere_in_user_is_rejected_and_never_stored() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let users = [
        json!("a\u{0}b"),
        json!({"name": "a\u{0}"}),
        json!({"na\u{0}me": "a"}),
        json!({"deep": {"list": [1, {"x": "\u{0}"}]}}),
        json!(["ok", "\u{0}"]),
    ];
    for user in users {
        assert_rejected(
            &app,
            "/chat/thread/",
            &json!({"user": user}),
            json!({"user": [NUL]}),
        )
        .await;
        let body = with(valid_message(&thread), "user", user);
        assert_rejected(&app, "/chat/message/", &body, json!({"user": [NUL]})).await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn thread_that_is_not_a_uuid_is_rejected_with_the_value_in_curly_quotes() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let values = [
        "not-a-uuid".to_owned(),
        "1234".to_owned(),
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz".to_owned(),
        format!("{thread}0"),
        " ".to_owned(),
    ];
    for value in values {
        let body = with(valid_message(&thread), "thread", json!(value));
        let expected = format!("\u{201c}{value}\u{201d} is not a valid UUID.");
        assert_rejected(
            &app,
            "/chat/message/",
            &body,
            json!({ "thread": [expected] }),
        )
        .await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn empty_thread_is_reported_as_may_not_be_null() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let body = with(valid_message(&thread), "thread", json!(""));
    assert_rejected(&app, "/chat/message/", &body, json!({"thread": [NOT_NULL]})).await;
}

#[tokio::test]
async fn boolean_thread_is_an_incorrect_type() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    for value in [true, false] {
        let body = with(valid_message(&thread), "thread", json!(value));
        assert_rejected(
            &app,
            "/chat/message/",
            &body,
            json!({"thread": ["Incorrect type. Expected pk value, received bool."]}),
        )
        .await;
    }
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

#[tokio::test]
async fn send_by_user_that_is_not_a_boolean_is_rejected() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    for value in [
        json!(2),
        json!(-1),
        json!("x"),
        json!("maybe"),
        json!(""),
        json!([]),
        json!({}),
    ] {
        let body = with(valid_message(&thread), "send_by_user", value);
        assert_rejected(
            &app,
            "/chat/message/",
            &body,
            json!({"send_by_user": [NOT_A_BOOLEAN]}),
        )
        .await;
    }
    assert_no_messages(&app, &thread).await;
}

#[tokio::test]
async fn several_wrong_fields_are_all_reported_in_one_response() {
    let app = spawn_app().await;
    assert_rejected(
        &app,
        "/chat/message/",
        &json!({"user": "", "thread": "nope", "body": "  ", "send_by_user": "x"}),
        json!({
            "user": [NOT_BLANK],
            "thread": ["\u{201c}nope\u{201d} is not a valid UUID."],
            "body": [NOT_BLANK],
            "send_by_user": [NOT_A_BOOLEAN],
        }),
    )
    .await;
    assert_rejected(
        &app,
        "/chat/message/",
        &json!({"user": null, "body": true}),
        json!({"user": [NOT_NULL], "thread": [REQUIRED], "body": [NOT_A_STRING]}),
    )
    .await;
}

#[tokio::test]
async fn json_that_is_not_an_object_is_rejected_naming_its_type() {
    let app = spawn_app().await;
    let cases = [
        ("[]", "list"),
        (r#"[{"user": "x"}]"#, "list"),
        (r#""text""#, "str"),
        ("1", "int"),
        ("-7", "int"),
        ("1.5", "float"),
        ("true", "bool"),
        ("false", "bool"),
    ];
    for path in ["/chat/thread/", "/chat/message/"] {
        for (body, type_name) in cases {
            let expected = json!({
                "non_field_errors": [format!("Invalid data. Expected a dictionary, but got {type_name}.")]
            });
            assert_raw(&app, path, body, 400, expected).await;
        }
    }
}

#[tokio::test]
async fn an_empty_request_body_is_treated_as_an_empty_object() {
    let app = spawn_app().await;
    assert_raw(&app, "/chat/thread/", "", 400, json!({"user": [REQUIRED]})).await;
    assert_raw(
        &app,
        "/chat/message/",
        "",
        400,
        json!({"user": [REQUIRED], "thread": [REQUIRED], "body": [REQUIRED]}),
    )
    .await;
}

#[tokio::test]
async fn a_null_request_body_is_no_data_provided() {
    let app = spawn_app().await;
    for path in ["/chat/thread/", "/chat/message/"] {
        assert_raw(
            &app,
            path,
            "null",
            400,
            json!({"non_field_errors": ["No data provided"]}),
        )
        .await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_json_parse_error() {
    let app = spawn_app().await;
    for path in ["/chat/thread/", "/chat/message/"] {
        for body in [
            r#"{"user": "#,
            "not json",
            "{'user': 'x'}",
            r#"{"user": "x",}"#,
            "\u{feff}{}x",
        ] {
            let response = app.post_json(path, body, Some("application/json")).await;
            let json = response.expect(400);
            assert_eq!(keys(&json), ["detail"], "POST {path} {body:?}: {json}");
            let detail = json["detail"].as_str().expect("detail is a string");
            let reason = detail
                .strip_prefix("JSON parse error - ")
                .unwrap_or_else(|| panic!("POST {path} {body:?}: detail {detail:?}"));
            assert!(
                !reason.trim().is_empty(),
                "POST {path} {body:?}: no reason given"
            );
        }
    }
}

#[tokio::test]
async fn a_content_type_that_is_not_json_is_415_naming_it() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let form = format!("user=x&thread={thread}&body=hi");
    for path in ["/chat/thread/", "/chat/message/"] {
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
        ] {
            let response = app.post_json(path, form.clone(), Some(content_type)).await;
            assert_eq!(
                response.expect(415),
                json!({"detail": format!("Unsupported media type \"{content_type}\" in request.")}),
                "POST {path} as {content_type}"
            );
        }
    }
    assert_no_messages(&app, &thread).await;
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
