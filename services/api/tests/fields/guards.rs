//! The guards against hostile clients, in process: the agent token (403), the rate limits
//! (429) and the most messages per thread (400), each with its exact body, and proof that a
//! refused request stored nothing. Off by default: the contract is unchanged without them.

use crate::app::{App, Call, THREAD};
use serde_json::{json, Value};
use threadline_api::throttle::parse_rate;

const TOKEN: &str = "Agent-T0ken.for_tests";
const FORBIDDEN: &str = "You do not have permission to perform this action.";

fn message(send_by_user: Option<Value>) -> Value {
    let mut fields = json!({"user": {"name": "Ada"}, "thread": THREAD, "body": "hello"});
    if let Some(value) = send_by_user {
        fields["send_by_user"] = value;
    }
    fields
}

fn agent_message() -> Value {
    message(Some(json!(false)))
}

fn visitor_message() -> Value {
    message(Some(json!(true)))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn with_token() -> App {
    App::storing(|settings| {
        settings.agent_token = Some(threadline_api::agent::parse_token(TOKEN).expect("a token"));
    })
}

#[tokio::test]
async fn an_agent_s_message_with_the_token_is_stored() {
    let app = with_token();
    let answer = app
        .post_with(
            "/chat/message/",
            &agent_message(),
            &[("authorization", &bearer(TOKEN))],
        )
        .await;
    let stored = answer.expect(201);
    assert_eq!(stored["send_by_user"], json!(false));
    assert_eq!(stored["body"], json!("hello"));
    assert_eq!(app.messages_stored(), 1);
}

#[tokio::test]
async fn an_agent_s_message_without_the_token_is_403_and_stores_nothing() {
    let app = with_token();
    let wrong_token = bearer("Agent-T0ken.for_test");
    let longer_token = bearer(&format!("{TOKEN}x"));
    let cases: [(&str, Value, Option<&str>); 7] = [
        ("no header", agent_message(), None),
        ("a wrong token", agent_message(), Some(&wrong_token)),
        ("a longer token", agent_message(), Some(&longer_token)),
        (
            "another scheme",
            agent_message(),
            Some("Basic QWxhZGRpbjpvcGVu"),
        ),
        // The contract's default: absent is false, an agent's message.
        ("send_by_user absent", message(None), None),
        ("send_by_user \"no\"", message(Some(json!("no"))), None),
        ("send_by_user 0", message(Some(json!(0))), None),
    ];
    for (case, body, authorization) in cases {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        let answer = app.post_with("/chat/message/", &body, &headers).await;
        assert_eq!(answer.expect(403), json!({"detail": FORBIDDEN}), "{case}");
        // Refused before any field is checked: not even the thread is looked up.
        app.assert_untouched(case);
    }
    assert_eq!(app.messages_stored(), 0);
}

#[tokio::test]
async fn visitors_and_new_threads_need_no_token() {
    let app = with_token();
    let answer = app.post("/chat/message/", &visitor_message()).await;
    assert_eq!(answer.expect(201)["send_by_user"], json!(true));
    let wrong = bearer("not-the-token");
    let answer = app
        .post_with(
            "/chat/message/",
            &visitor_message(),
            &[("authorization", &wrong)],
        )
        .await;
    answer.expect(201);
    let answer = app
        .post("/chat/thread/", &json!({"user": {"name": "Ada"}}))
        .await;
    assert_eq!(answer.expect(201)["messages"], json!([]));
    assert_eq!(app.messages_stored(), 2);
}

#[tokio::test]
async fn a_send_by_user_that_is_not_a_boolean_is_400_whatever_the_token() {
    // It would store nothing: its field error is the answer, as without a token.
    let app = with_token();
    let answer = app.post("/chat/message/", &message(Some(json!("x")))).await;
    assert_eq!(
        answer.expect(400),
        json!({"send_by_user": ["Must be a valid boolean."]})
    );
}

#[tokio::test]
async fn without_a_token_anyone_may_post_as_an_agent_as_the_contract_has_it() {
    let app = App::storing(|_| {});
    app.post("/chat/message/", &message(None)).await.expect(201);
    app.post("/chat/message/", &agent_message())
        .await
        .expect(201);
    assert_eq!(app.messages_stored(), 2);
}

/// Asserts DRF's throttled answer: 429, `Retry-After` in whole seconds between 1 and `most`,
/// and the same number in the detail.
fn assert_throttled(answer: &crate::app::Answer, most: u64) {
    let body = answer.expect(429);
    let retry_after = answer
        .headers
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .expect("text");
    let seconds: u64 = retry_after.parse().expect("whole seconds");
    assert!((1..=most).contains(&seconds), "Retry-After: {seconds}");
    let unit = if seconds == 1 { "second" } else { "seconds" };
    assert_eq!(
        body,
        json!({"detail": format!("Request was throttled. Expected available in {seconds} {unit}.")})
    );
}

#[tokio::test]
async fn posts_past_a_client_s_rate_get_drf_s_throttled_answer() {
    let app = App::storing(|settings| {
        settings.rate_limit_messages = Some(parse_rate("2/min").expect("a rate"));
        settings.rate_limit_threads = Some(parse_rate("1/hour").expect("a rate"));
    });
    for _ in 0..2 {
        app.post("/chat/message/", &visitor_message())
            .await
            .expect(201);
    }
    app.take_calls();
    // The third within the minute: the next one is allowed 30 s after the first two.
    let answer = app.post("/chat/message/", &visitor_message()).await;
    assert_throttled(&answer, 30);
    app.assert_untouched("a throttled message");
    // Throttled before the body is read, so even a body that is not JSON gets 429.
    let answer = app
        .post_raw("/chat/message/", "{", Some("application/json"))
        .await;
    assert_throttled(&answer, 30);
    assert_eq!(app.messages_stored(), 2);

    let thread = json!({"user": {"name": "Ada"}});
    app.post("/chat/thread/", &thread).await.expect(201);
    app.take_calls();
    let answer = app.post("/chat/thread/", &thread).await;
    assert_throttled(&answer, 3_600);
    app.assert_untouched("a throttled thread");
    // GETs are not limited.
    let answer = app.send(
        axum::http::Request::get(format!("/chat/thread/{THREAD}/"))
            .body(axum::body::Body::empty())
            .expect("a request"),
    );
    assert_ne!(answer.await.status.as_u16(), 429);
}

#[tokio::test]
async fn without_rate_limits_a_client_posts_as_often_as_it_likes() {
    let app = App::storing(|_| {});
    for _ in 0..50 {
        app.post("/chat/message/", &visitor_message())
            .await
            .expect(201);
    }
    assert_eq!(app.messages_stored(), 50);
}

fn thread_full(most: u64) -> Value {
    json!({"thread": [format!("Ensure this thread has no more than {most} messages.")]})
}

#[tokio::test]
async fn a_thread_that_holds_its_most_messages_refuses_more_and_stores_nothing() {
    let app = App::storing(|settings| settings.thread_max_messages = 2);
    for _ in 0..2 {
        app.post("/chat/message/", &visitor_message())
            .await
            .expect(201);
    }
    app.take_calls();
    let answer = app.post("/chat/message/", &visitor_message()).await;
    assert_eq!(answer.expect(400), thread_full(2));
    let thread = THREAD.parse().expect("a UUID");
    assert_eq!(
        app.take_calls(),
        [Call::ThreadExists(thread), Call::CountMessages(thread)],
        "a refused message was stored"
    );
    assert_eq!(app.messages_stored(), 2);
    // Another field wrong as well: the field errors come first, as DRF validates the fields
    // before the serializer's own `validate()`.
    let answer = app
        .post("/chat/message/", &json!({"thread": THREAD, "body": "hi"}))
        .await;
    assert_eq!(
        answer.expect(400),
        json!({"user": ["This field is required."]})
    );
}

#[tokio::test]
async fn without_a_bound_the_log_is_not_asked_how_many_messages_a_thread_holds() {
    let app = App::storing(|_| {});
    app.post("/chat/message/", &visitor_message())
        .await
        .expect(201);
    let calls = app.take_calls();
    assert!(
        !calls.iter().any(|c| matches!(c, Call::CountMessages(_))),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_retry_under_its_key_at_the_bound_gets_the_first_answer() {
    let app = App::storing(|settings| settings.thread_max_messages = 1);
    let key = ("idempotency-key", "5b3c7f0e-retry");
    let first = app
        .post_with("/chat/message/", &visitor_message(), &[key])
        .await;
    let first_body = first.expect(201);
    // The thread is full now; the retry of the request that filled it is answered as it was.
    let retry = app
        .post_with("/chat/message/", &visitor_message(), &[key])
        .await;
    assert_eq!(retry.expect(201), first_body);
    assert_eq!(app.messages_stored(), 1);
    // A new request, under a new key or none, is refused.
    let other = app
        .post_with(
            "/chat/message/",
            &visitor_message(),
            &[("idempotency-key", "another")],
        )
        .await;
    assert_eq!(other.expect(400), thread_full(1));
    let none = app.post("/chat/message/", &visitor_message()).await;
    assert_eq!(none.expect(400), thread_full(1));
    assert_eq!(app.messages_stored(), 1);
}
