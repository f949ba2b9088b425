//! Every error a client can cause with a request's fields or body (`contract/NOTES.md`), with
//! its exact status and JSON body, and proof that nothing was stored for it.
//!
//! These run the API's router in this process (see [`app`]) rather than over a real socket:
//! a field's text is decided by the handlers alone, so a whole system (NATS, PostgreSQL, the
//! roles) per check would only make them slow. They are an integration test of the crate
//! rather than a `#[cfg(test)]` module because they use only what a role uses (`router`,
//! `AppState`, the backends' traits), so they keep testing the same thing however the
//! handlers are arranged inside. The end-to-end suite (`tests/e2e/errors.rs`) keeps the
//! checks that need the real system: an unknown thread, the body limit over a real socket,
//! an event larger than nats-server takes, and one missing-fields check end to end.

mod app;
mod guards;

use app::{App, Call, MAX_BODY_BYTES, THREAD};
use axum::body::Body;
use axum::http::{header, Request};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use threadline_ports::{Backend, StoreError};

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
    fields.as_object_mut().expect("an object").remove(field);
    fields
}

/// POSTs `body` as JSON to `path` and asserts a 400 with exactly `expected`, and that
/// nothing was stored.
async fn assert_rejected(app: &App, path: &str, body: &Value, expected: Value) {
    let response = app.post(path, body).await;
    let request = format!("POST {path} {body}");
    assert_eq!(response.expect(400), expected, "{request}");
    app.assert_nothing_stored(&request);
}

/// POSTs raw `body` as `application/json` and asserts `status` with exactly `expected`, and
/// that no backend was asked anything.
async fn assert_raw(app: &App, path: &str, body: &str, status: u16, expected: Value) {
    let response = app
        .post_raw(path, body.to_owned(), Some("application/json"))
        .await;
    let request = format!("POST {path} {body:?}");
    assert_eq!(response.expect(status), expected, "{request}");
    app.assert_untouched(&request);
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_valid_message_reaches_the_event_log() {
    // The other tests' proof that nothing was stored is only as good as the record of calls.
    let app = App::new();
    let response = app.post("/chat/message/", &valid_message(THREAD)).await;
    assert_eq!(
        response.expect(503),
        json!({"detail": "Service temporarily unavailable, try again later."})
    );
    assert_eq!(
        app.take_calls(),
        [
            Call::ThreadExists(THREAD.parse().expect("a UUID")),
            Call::Append
        ]
    );
    let response = app
        .post("/chat/thread/", &json!({"user": {"name": "Visitor"}}))
        .await;
    response.expect(503);
    assert_eq!(app.take_calls(), [Call::Append]);
}

#[tokio::test]
async fn missing_fields_are_each_reported_as_required() {
    let app = App::new();
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
        let body = without(valid_message(THREAD), field);
        assert_rejected(&app, "/chat/message/", &body, json!({ field: [REQUIRED] })).await;
    }
}

#[tokio::test]
async fn null_fields_are_reported_as_may_not_be_null() {
    let app = App::new();
    assert_rejected(
        &app,
        "/chat/thread/",
        &json!({"user": null}),
        json!({"user": [NOT_NULL]}),
    )
    .await;
    for field in ["user", "thread", "body", "send_by_user"] {
        let body = with(valid_message(THREAD), field, Value::Null);
        assert_rejected(&app, "/chat/message/", &body, json!({ field: [NOT_NULL] })).await;
    }
}

#[tokio::test]
async fn blank_user_is_rejected_on_both_endpoints() {
    let app = App::new();
    for blank in ["", " ", "  \t\n "] {
        assert_rejected(
            &app,
            "/chat/thread/",
            &json!({"user": blank}),
            json!({"user": [NOT_BLANK]}),
        )
        .await;
        let body = with(valid_message(THREAD), "user", json!(blank));
        assert_rejected(&app, "/chat/message/", &body, json!({"user": [NOT_BLANK]})).await;
    }
}

#[tokio::test]
async fn blank_body_is_rejected() {
    let app = App::new();
    for blank in ["", " ", "\n\t  \r\n", "\u{a0}\u{2003}"] {
        let body = with(valid_message(THREAD), "body", json!(blank));
        assert_rejected(&app, "/chat/message/", &body, json!({"body": [NOT_BLANK]})).await;
    }
}

#[tokio::test]
async fn body_that_is_a_boolean_object_or_array_is_not_a_valid_string() {
    let app = App::new();
    for value in [
        json!(true),
        json!(false),
        json!({}),
        json!({"text": "hi"}),
        json!([]),
        json!(["hi"]),
    ] {
        let body = with(valid_message(THREAD), "body", value);
        assert_rejected(
            &app,
            "/chat/message/",
            &body,
            json!({"body": [NOT_A_STRING]}),
        )
        .await;
    }
}

#[tokio::test]
async fn nul_character_in_body_is_rejected() {
    let app = App::new();
    for value in ["a\u{0}b", "\u{0}", "hello\u{0}"] {
        let body = with(valid_message(THREAD), "body", json!(value));
        assert_rejected(&app, "/chat/message/", &body, json!({"body": [NUL]})).await;
    }
}

#[tokio::test]
async fn nul_character_anywhere_in_user_is_rejected_and_never_stored() {
    let app = App::new();
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
        let body = with(valid_message(THREAD), "user", user);
        assert_rejected(&app, "/chat/message/", &body, json!({"user": [NUL]})).await;
    }
}

#[tokio::test]
async fn thread_that_is_not_a_uuid_is_rejected_with_the_value_in_curly_quotes() {
    let app = App::new();
    let values = [
        "not-a-uuid".to_owned(),
        "1234".to_owned(),
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz".to_owned(),
        format!("{THREAD}0"),
        " ".to_owned(),
    ];
    for value in values {
        let body = with(valid_message(THREAD), "thread", json!(value));
        let expected = format!("\u{201c}{value}\u{201d} is not a valid UUID.");
        assert_rejected(
            &app,
            "/chat/message/",
            &body,
            json!({ "thread": [expected] }),
        )
        .await;
    }
}

#[tokio::test]
async fn empty_thread_is_reported_as_may_not_be_null() {
    let app = App::new();
    let body = with(valid_message(THREAD), "thread", json!(""));
    assert_rejected(&app, "/chat/message/", &body, json!({"thread": [NOT_NULL]})).await;
}

#[tokio::test]
async fn boolean_thread_is_an_incorrect_type() {
    let app = App::new();
    for value in [true, false] {
        let body = with(valid_message(THREAD), "thread", json!(value));
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
    let app = App::new();
    let unknown = uuid::Uuid::new_v4();
    let body = valid_message(&unknown.to_string());
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
    let app = App::new();
    for value in [
        json!(2),
        json!(-1),
        json!("x"),
        json!("maybe"),
        json!(""),
        json!([]),
        json!({}),
    ] {
        let body = with(valid_message(THREAD), "send_by_user", value);
        assert_rejected(
            &app,
            "/chat/message/",
            &body,
            json!({"send_by_user": [NOT_A_BOOLEAN]}),
        )
        .await;
    }
}

#[tokio::test]
async fn several_wrong_fields_are_all_reported_in_one_response() {
    let app = App::new();
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
    let app = App::new();
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
    let app = App::new();
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
    let app = App::new();
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
    let app = App::new();
    for path in ["/chat/thread/", "/chat/message/"] {
        for body in [
            r#"{"user": "#,
            "not json",
            "{'user': 'x'}",
            r#"{"user": "x",}"#,
            "\u{feff}{}x",
        ] {
            let response = app
                .post_raw(path, body.to_owned(), Some("application/json"))
                .await;
            let request = format!("POST {path} {body:?}");
            let json = response.expect(400);
            assert_eq!(keys(&json), ["detail"], "{request}: {json}");
            let detail = json["detail"].as_str().expect("detail is a string");
            let reason = detail
                .strip_prefix("JSON parse error - ")
                .unwrap_or_else(|| panic!("{request}: detail {detail:?}"));
            assert!(!reason.trim().is_empty(), "{request}: no reason given");
            app.assert_untouched(&request);
        }
    }
}

#[tokio::test]
async fn a_content_type_that_is_not_json_is_415_naming_it() {
    let app = App::new();
    let form = format!("user=x&thread={THREAD}&body=hi");
    for path in ["/chat/thread/", "/chat/message/"] {
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
        ] {
            let response = app.post_raw(path, form.clone(), Some(content_type)).await;
            let request = format!("POST {path} as {content_type}");
            assert_eq!(
                response.expect(415),
                json!({"detail": format!("Unsupported media type \"{content_type}\" in request.")}),
                "{request}"
            );
            app.assert_untouched(&request);
        }
    }
}

/// The answer to a body over the limit.
fn too_large() -> Value {
    json!({"detail": format!("Request body exceeded the limit of {MAX_BODY_BYTES} bytes.")})
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_413() {
    let app = App::new();
    // 2.5 MiB is 2,621,440 bytes.
    let body = json!({"user": {"name": "V"}, "thread": THREAD, "body": "a".repeat(2_700_000)});
    assert_eq!(
        app.post("/chat/message/", &body).await.expect(413),
        too_large()
    );
    app.assert_untouched("POST /chat/message/ of 2.7 MB");
    let big_user = json!({"user": {"blob": "b".repeat(3_000_000)}});
    assert_eq!(
        app.post("/chat/thread/", &big_user).await.expect(413),
        too_large()
    );
    app.assert_untouched("POST /chat/thread/ of 3 MB");
}

/// A JSON object of exactly `size` bytes whose `user` is blank.
fn blank_user_of(size: usize) -> Bytes {
    let frame = r#"{"user": ""}"#;
    let padding = " ".repeat(size - frame.len());
    Bytes::from(format!(r#"{{"user": "{padding}"}}"#))
}

/// A request whose body comes in chunks of `chunk` bytes, without a declared length.
fn streamed(path: &str, body: Bytes, chunk: usize) -> Request<Body> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
        .step_by(chunk)
        .map(|start| Ok(body.slice(start..(start + chunk).min(body.len()))))
        .collect();
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .expect("a request")
}

#[tokio::test]
async fn a_body_of_the_limit_is_read_and_one_byte_more_is_413_declared_or_not() {
    let app = App::new();
    let blank_user = json!({"user": [NOT_BLANK]});
    let fits = blank_user_of(MAX_BODY_BYTES);
    let over = blank_user_of(MAX_BODY_BYTES + 1);
    let answer = app
        .post_raw("/chat/thread/", fits.clone(), Some("application/json"))
        .await;
    assert_eq!(
        answer.expect(400),
        blank_user,
        "a declared body of the limit"
    );
    let answer = app
        .post_raw("/chat/thread/", over.clone(), Some("application/json"))
        .await;
    assert_eq!(answer.expect(413), too_large(), "a declared body over it");
    for chunk in [64 << 10, 1_000_000, MAX_BODY_BYTES + 1] {
        let answer = app
            .send(streamed("/chat/thread/", fits.clone(), chunk))
            .await;
        assert_eq!(
            answer.expect(400),
            blank_user,
            "the limit in chunks of {chunk}"
        );
        let answer = app
            .send(streamed("/chat/thread/", over.clone(), chunk))
            .await;
        assert_eq!(
            answer.expect(413),
            too_large(),
            "over it in chunks of {chunk}"
        );
    }
    app.assert_untouched("bodies around the limit");
}

#[tokio::test]
async fn a_huge_body_is_refused_without_being_read_to_its_end() {
    // A body declared over 16 MiB is refused at once; one that does not declare its length
    // is read up to 16 MiB and then refused. Either way the body here never ends, so only a
    // refusal that stops reading answers at all.
    let app = App::new();
    let endless = || futures::stream::pending::<Result<Bytes, std::io::Error>>();
    let declared = Request::post("/chat/message/")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, 17 << 20)
        .body(Body::from_stream(endless()))
        .expect("a request");
    let megabyte = Bytes::from(vec![b' '; 1_000_000]);
    let undeclared = Request::post("/chat/message/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            futures::stream::iter((0..17).map(move |_| Ok(megabyte.clone()))).chain(endless()),
        ))
        .expect("a request");
    for (what, request) in [("declared", declared), ("undeclared", undeclared)] {
        let answer = tokio::time::timeout(Duration::from_secs(30), app.send(request))
            .await
            .unwrap_or_else(|_| panic!("a huge {what} body was read on and on"));
        assert_eq!(answer.expect(413), too_large(), "a huge {what} body");
    }
    app.assert_untouched("huge bodies");
}

#[tokio::test]
async fn an_event_larger_than_the_log_takes_is_413() {
    let app = App::refusing_with(|| StoreError::TooLarge {
        size: 1_500_200,
        max: 1_048_576,
    });
    let expected = json!({"detail": "Request body exceeded the event log's limit of 1048576 bytes per event."});
    let body = json!({"user": {"name": "V"}, "thread": THREAD, "body": "a".repeat(1_500_000)});
    assert_eq!(
        app.post("/chat/message/", &body).await.expect(413),
        expected
    );
    let big_user = json!({"user": {"blob": "b".repeat(1_500_000)}});
    assert_eq!(
        app.post("/chat/thread/", &big_user).await.expect(413),
        expected
    );
}

#[tokio::test]
async fn an_overloaded_log_is_503_with_a_retry_after() {
    let app = App::refusing_with(|| StoreError::Overloaded {
        backend: Backend::Nats,
        cause: "refused by the test's backends".into(),
    });
    let answer = app.post("/chat/message/", &valid_message(THREAD)).await;
    assert_eq!(
        answer.expect(503),
        json!({"detail": "Service temporarily unavailable, try again later."})
    );
    assert_eq!(
        answer
            .headers
            .get(header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
}
