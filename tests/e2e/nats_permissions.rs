//! Least privilege on NATS: with the users of `deploy/nats/auth.conf`, each role runs as its
//! own user and the contract works; the Slack integration may only post messages, and the
//! gateway may publish nothing.

use crate::harness::client::STREAM;
use crate::harness::operator::run_command;
use crate::harness::*;
use async_nats::jetstream;
use std::time::Duration;
use tokio::sync::mpsc;

/// A NATS connection of `client`'s user, and the errors the server sends it.
async fn connect_watching(
    client: &Client,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::new().event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _ = tx.send(e.to_string());
            }
        }
    });
    let nats = client
        .try_nats(options)
        .await
        .expect("connecting to nats-server");
    (nats, rx)
}

/// A permissions violation as nats-server logs it.
#[derive(Debug)]
struct Violation {
    /// `Publish`, `Subscription`.
    kind: String,
    user: String,
    subject: String,
}

/// The violation a line of nats-server's log reports, if any, in the wording of either
/// version the tests run: 2.9 names the user after the kind
/// (`Publish Violation - User "api", Subject "x"`), 2.10 and later in the connection's prefix
/// (`"$G/user:api" - Publish Violation - Subject "x"`).
fn logged_violation(line: &str) -> Option<Violation> {
    let (before, after) = line.split_once(" Violation - ")?;
    let quoted_after = |text: &str, label: &str| -> Option<String> {
        let rest = text.split_once(label)?.1.strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_owned())
    };
    let kind = before.rsplit(' ').next()?.to_owned();
    let subject = quoted_after(after, "Subject ")?;
    let user = quoted_after(after, "User ").or_else(|| {
        let rest = &before[before.rfind("/user:")? + "/user:".len()..];
        Some(rest[..rest.find('"')?].to_owned())
    })?;
    Some(Violation {
        kind,
        user,
        subject,
    })
}

#[test]
fn violations_are_read_in_either_wording() {
    for line in [
        r#"[1] 2026/01/01 [ERR] 127.0.0.1:1 - cid:5 - "v0.42.0:rust" - Publish Violation - User "integration", Subject "chat.x""#,
        r#"[1] 2026/01/01 [ERR] 127.0.0.1:1 - cid:5 - "v0.42.0:rust" - "$G/user:integration" - Publish Violation - Subject "chat.x""#,
    ] {
        let v = logged_violation(line).expect("a violation");
        assert_eq!(
            (v.kind.as_str(), v.user.as_str(), v.subject.as_str()),
            ("Publish", "integration", "chat.x")
        );
    }
    assert!(logged_violation("[INF] Server is ready").is_none());
}

/// Publishes `payload` on `subject` and asserts that the server refuses it as a permission
/// violation, to the client and in its own log.
async fn assert_publish_refused(
    app: &App,
    nats: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    user: &str,
    subject: &str,
    payload: String,
) {
    nats.publish(subject.to_owned(), payload.into())
        .await
        .expect("publishing");
    nats.flush().await.expect("flushing");
    let error = within(
        &format!("the server to refuse {user}'s publish to {subject}"),
        Duration::from_secs(10),
        errors.recv(),
    )
    .await
    .expect("the connection's events");
    assert!(
        error.to_lowercase().contains("permissions violation") && error.contains(subject),
        "{user} publishing to {subject}: {error}"
    );
    eventually(
        &format!("nats-server to log {user}'s violation on {subject}"),
        Duration::from_secs(10),
        || async {
            app.nats
                .logs
                .dump()
                .lines()
                .filter_map(logged_violation)
                .any(|v| v.kind == "Publish" && v.user == user && v.subject == subject)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn each_role_runs_as_its_own_nats_user_and_none_may_do_more() {
    let app = options().deploy_nats_users().start().await;
    let login = |user: &str| {
        let (user, password) = app.nats_login(user).expect("a NATS user");
        app.client(0, 0).with_nats_login(&user, &password)
    };

    // The contract, each role with its own user.
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    let said = app.say(&thread, "Hello, is anyone there?").await;
    assert_eq!(ws.next_text().await, said.text);
    // A retry under an Idempotency-Key is answered from the api's key-value bucket.
    let body =
        serde_json::json!({"user": "Ada", "thread": thread, "body": "once", "send_by_user": true});
    let key = new_id();
    let first = app
        .post_with_key("/chat/message/", &body, &key)
        .await
        .expect("an answer");
    assert_eq!(first.status, 201, "{}", first.text);
    let retried = app
        .post_with_key("/chat/message/", &body, &key)
        .await
        .expect("an answer");
    assert_eq!(retried.text, first.text);
    assert_eq!(ws.next_text().await, first.text);

    // An agent's reply from the integration reaches the socket and GET.
    let integration = login("integration");
    let id = new_id();
    let reply = agent_reply(&id, &thread, "Yes, how can I help?");
    integration
        .publish_event(
            &app.message_subject(&thread),
            &[("Nats-Msg-Id", &id)],
            reply.clone(),
        )
        .await;
    assert_eq!(ws.next_text().await, reply);
    let stored = app.get_thread(&thread).await;
    assert_eq!(
        message_ids(&stored),
        [
            said.json()["id"].clone(),
            first.json()["id"].clone(),
            serde_json::json!(id)
        ]
    );

    // Its invalid event is set aside by the projector, on the dead-letter stream.
    let garbage = integration
        .publish_event(&app.message_subject(&thread), &[], "garbage")
        .await;
    app.dead_letter_of(garbage.sequence).await;

    // The integration may not create a thread, nor read the stream.
    let (nats, mut errors) = connect_watching(&integration).await;
    let forged = new_id();
    let created = format!(
        r#"{{"id":"{forged}","user":"forged","timestamp":"{}"}}"#,
        now_timestamp()
    );
    let created_subject = app.created_subject(&forged);
    assert_publish_refused(
        &app,
        &nats,
        &mut errors,
        "integration",
        &created_subject,
        created,
    )
    .await;
    let stream = app
        .jetstream()
        .await
        .get_stream(STREAM)
        .await
        .expect("the operator reads the stream");
    let found = stream
        .get_last_raw_message_by_subject(&created_subject)
        .await;
    assert!(
        matches!(&found, Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound),
        "the stream holds the integration's ThreadCreated: {found:?}"
    );
    assert_eq!(
        app.get(&format!("/chat/thread/{forged}/")).await.status,
        404
    );
    let read = jetstream::new(nats.clone()).get_stream(STREAM).await;
    assert!(
        read.is_err(),
        "the integration read the stream's configuration"
    );

    // The gateway's user publishes nothing: no event, no stored copy skipping the stream.
    let (nats, mut errors) = connect_watching(&login("gateway")).await;
    let fake = agent_reply(&new_id(), &thread, "not from an agent");
    for subject in [
        app.message_subject(&thread),
        format!("chat.stored.{thread}.message"),
    ] {
        assert_publish_refused(&app, &nats, &mut errors, "gateway", &subject, fake.clone()).await;
    }
    // The next frame the socket gets is the integration's next reply, not the gateway's.
    let next_id = new_id();
    let next = agent_reply(&next_id, &thread, "Anything else?");
    integration
        .publish_event(
            &app.message_subject(&thread),
            &[("Nats-Msg-Id", &next_id)],
            next.clone(),
        )
        .await;
    assert_eq!(ws.next_text().await, next);

    // The operator's commands run as the operator user.
    let verified = run_command(&app, &["verify"]).await;
    assert!(
        verified
            .expect(0)
            .contains("the read model matches the event stream"),
        "{}",
        verified.stdout
    );
    run_command(&app, &["dead-letters", "list"]).await.expect(0);

    // No role, nor the operator's commands, met a permission it lacks.
    let violations: Vec<String> = app
        .nats
        .logs
        .dump()
        .lines()
        .filter(|l| match logged_violation(l) {
            Some(v) => {
                v.user != "integration" && !(v.user == "gateway" && v.subject.starts_with("chat."))
            }
            None => l.contains(" Violation - "),
        })
        .map(str::to_owned)
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}
