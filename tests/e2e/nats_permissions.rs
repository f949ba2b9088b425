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
                .contains(&format!(
                    "Publish Violation - User {user:?}, Subject {subject:?}"
                ))
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
        .filter(|l| l.contains(" Violation - "))
        .filter(|l| {
            !l.contains("User \"integration\"") && !l.contains("User \"gateway\", Subject \"chat.")
        })
        .map(str::to_owned)
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}
