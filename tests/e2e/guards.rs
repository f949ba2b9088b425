//! The API's guards against hostile clients, end to end (docs/behaviour.md, "Protecting the
//! API"): a client past its rate gets DRF's 429 while another address is served; an agent's
//! message needs the agent token, which shows in no log line and no `--help`; a thread that
//! holds its most messages refuses more over HTTP, while the Slack integration's replies on
//! NATS are still stored.

use crate::harness::deployment::{env, run_threadline, send, stderr, Answer};
use crate::harness::*;
use serde_json::{json, Value};

/// Two clients behind the trusted proxy (the test itself, on 127.0.0.1).
const FIRST: &str = "198.51.100.7";
const SECOND: &str = "2001:db8:7:7::1";

/// Asserts DRF's throttled answer: 429, a `Retry-After` of whole seconds between 1 and
/// `most`, and the same number in the detail.
#[track_caller]
fn assert_throttled(answer: &Answer, most: u64) {
    assert_eq!(answer.status, 429, "{}", answer.text);
    let seconds: u64 = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", answer.headers))
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=most).contains(&seconds), "Retry-After: {seconds}");
    let unit = if seconds == 1 { "second" } else { "seconds" };
    assert_eq!(
        answer.json(),
        json!({"detail": format!("Request was throttled. Expected available in {seconds} {unit}.")})
    );
}

fn visitor_message(thread: &str, body: &str) -> Value {
    json!({"user": {"name": "Ada"}, "thread": thread, "body": body, "send_by_user": true})
}

fn agent_message(thread: &str, body: &str) -> Value {
    json!({"user": {"name": "Agent"}, "thread": thread, "body": body, "send_by_user": false})
}

fn bodies(thread: &Value) -> Vec<String> {
    thread["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["body"].as_str().expect("a body").to_owned())
        .collect()
}

#[tokio::test]
async fn a_client_past_its_rate_gets_429_while_another_address_is_served() {
    let app = options()
        .env("TRUSTED_PROXIES", "127.0.0.1")
        .env("RATE_LIMIT_THREADS", "2/min")
        .env("RATE_LIMIT_MESSAGES", "3/minute")
        .start()
        .await;
    let api = app.addr("api", 0);
    let from = |address: &'static str| [("X-Forwarded-For", address)];
    let user = json!({"user": {"name": "Ada"}});

    let mut threads = Vec::new();
    for _ in 0..2 {
        let created = send(api, "POST", "/chat/thread/", &from(FIRST), Some(&user)).await;
        assert_eq!(created.status, 201, "{}", created.text);
        threads.push(created.json()["id"].as_str().expect("an id").to_owned());
    }
    let refused = send(api, "POST", "/chat/thread/", &from(FIRST), Some(&user)).await;
    assert_throttled(&refused, 30);
    let other = send(api, "POST", "/chat/thread/", &from(SECOND), Some(&user)).await;
    assert_eq!(
        other.status, 201,
        "another address is throttled: {}",
        other.text
    );

    let thread = &threads[0];
    for n in 0..3 {
        let body = visitor_message(thread, &format!("message {n}"));
        let posted = send(api, "POST", "/chat/message/", &from(FIRST), Some(&body)).await;
        assert_eq!(posted.status, 201, "{}", posted.text);
    }
    let over = visitor_message(thread, "one too many");
    let refused = send(api, "POST", "/chat/message/", &from(FIRST), Some(&over)).await;
    assert_throttled(&refused, 20);
    let theirs = visitor_message(thread, "from another address");
    let other = send(api, "POST", "/chat/message/", &from(SECOND), Some(&theirs)).await;
    assert_eq!(
        other.status, 201,
        "another address is throttled: {}",
        other.text
    );

    // Reads are not limited, and the refused message was not stored.
    let read = app.get_thread(thread).await;
    assert_eq!(
        bodies(&read),
        [
            "message 0",
            "message 1",
            "message 2",
            "from another address"
        ]
    );
}

/// The agent token of the test; no output of threadline may show it.
const TOKEN: &str = "Ag3ntT0kenPl4nted";
const FORBIDDEN: &str = "You do not have permission to perform this action.";

/// A case of a refused agent's post: its name, its headers and its body.
type Refusal<'a> = (&'a str, &'a [(&'a str, &'a str)], Value);

#[tokio::test]
async fn an_agent_s_message_needs_the_token_which_no_log_line_shows() {
    let app = options()
        .env("AGENT_TOKEN", TOKEN)
        // Every line the api writes, down to debug, is searched for the token.
        .role_env("api", "RUST_LOG", "debug")
        .start()
        .await;
    let api = app.addr("api", 0);
    let thread = app.new_thread().await;
    let bearer = format!("Bearer {TOKEN}");

    let stored = send(
        api,
        "POST",
        "/chat/message/",
        &[("Authorization", &bearer)],
        Some(&agent_message(&thread, "an agent with the token")),
    )
    .await;
    assert_eq!(stored.status, 201, "{}", stored.text);
    assert_eq!(stored.json()["send_by_user"], json!(false));

    let wrong = format!("Bearer {TOKEN}x");
    let mut as_default = agent_message(&thread, "send_by_user left to its default");
    as_default
        .as_object_mut()
        .expect("an object")
        .remove("send_by_user");
    let refusals: [Refusal; 3] = [
        ("no token", &[], agent_message(&thread, "no token")),
        (
            "a wrong token",
            &[("Authorization", &wrong)],
            agent_message(&thread, "a wrong token"),
        ),
        ("send_by_user absent", &[], as_default),
    ];
    for (case, headers, body) in refusals {
        let refused = send(api, "POST", "/chat/message/", headers, Some(&body)).await;
        assert_eq!(refused.status, 403, "{case}: {}", refused.text);
        assert_eq!(refused.json(), json!({"detail": FORBIDDEN}), "{case}");
    }

    // Visitors need no token.
    app.say(&thread, "a visitor without a token").await;

    let read = app.get_thread(&thread).await;
    assert_eq!(
        bodies(&read),
        ["an agent with the token", "a visitor without a token"]
    );
    let logs = app.logs("api", 0).dump();
    assert!(
        logs.contains("message posted"),
        "the api's logs were not read"
    );
    assert!(
        !logs.contains(TOKEN),
        "the api logs the agent token:\n{logs}"
    );
}

#[tokio::test]
async fn the_agent_token_shows_in_no_help_and_an_example_one_is_refused() {
    let help = run_threadline(&["api", "--help"], &env(&[("AGENT_TOKEN", TOKEN)])).await;
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{}", stderr(&help));
    assert!(text.contains("AGENT_TOKEN"), "{text}");
    assert!(
        !text.contains(TOKEN),
        "--help shows the agent token:\n{text}"
    );

    let example = run_threadline(&["api"], &env(&[("AGENT_TOKEN", "agent-change-me")])).await;
    let text = stderr(&example);
    assert!(!example.status.success(), "{text}");
    assert!(
        text.contains("AGENT_TOKEN") && !text.contains("agent-change-me"),
        "{text}"
    );

    let unsendable =
        run_threadline(&["api"], &env(&[("AGENT_TOKEN", "Pl4nted with spaces")])).await;
    let text = stderr(&unsendable);
    assert!(!unsendable.status.success(), "{text}");
    assert!(
        text.contains("AGENT_TOKEN") && !text.contains("Pl4nted"),
        "{text}"
    );

    let missing = run_threadline(
        &["api"],
        &env(&[("AGENT_TOKEN_FILE", "/nonexistent/agent-token")]),
    )
    .await;
    let text = stderr(&missing);
    assert!(!missing.status.success(), "{text}");
    assert!(text.contains("/nonexistent/agent-token"), "{text}");
}

#[tokio::test]
async fn a_thread_that_holds_its_most_messages_refuses_more_but_not_the_slack_replies() {
    let app = options().env("THREAD_MAX_MESSAGES", "3").start().await;
    let thread = app.new_thread().await;
    app.say(&thread, "first").await;
    let key = "a0c4d4de-guards-retry";
    let second = app
        .post_with_key("/chat/message/", &visitor_message(&thread, "second"), key)
        .await
        .expect("an answer");
    let second_body = second.expect(201);

    // The Slack integration's reply on NATS is stored, and counts.
    let id = new_id();
    app.publish_event(
        &app.message_subject(&thread),
        &[("Nats-Msg-Id", &id)],
        agent_reply(&id, &thread, "from Slack"),
    )
    .await;

    let full = json!({"thread": ["Ensure this thread has no more than 3 messages."]});
    let refused = app
        .post_message(&visitor_message(&thread, "one too many"))
        .await;
    assert_eq!(refused.expect(400), full);

    // The retry of a request answered before under its key gets the same answer.
    let retry = app
        .post_with_key("/chat/message/", &visitor_message(&thread, "second"), key)
        .await
        .expect("an answer");
    assert_eq!(retry.expect(201), second_body);

    // Agent replies on NATS are not limited.
    let id = new_id();
    let ack = app
        .publish_event(
            &app.message_subject(&thread),
            &[("Nats-Msg-Id", &id)],
            agent_reply(&id, &thread, "from Slack again"),
        )
        .await;
    assert!(!ack.duplicate);
    let refused = app
        .post_message(&visitor_message(&thread, "still too many"))
        .await;
    assert_eq!(refused.expect(400), full);

    let read = eventually(
        "the second reply from Slack in the thread",
        PROJECTION_TIMEOUT,
        || async {
            let read = app.get_thread(&thread).await;
            (bodies(&read).len() == 4).then_some(read)
        },
    )
    .await;
    assert_eq!(
        bodies(&read),
        ["first", "second", "from Slack", "from Slack again"]
    );
}
