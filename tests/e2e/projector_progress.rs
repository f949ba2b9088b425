//! No event can stop the projector: an event as large as the broker allows is set aside with
//! a record that fits, batches are bounded by bytes, a row PostgreSQL refuses is set aside
//! while the rest of its batch is applied, and a projector that cannot make progress says so
//! on `/readyz` until it moves on.

use crate::harness::client::{PROJECTOR_CONSUMER, STREAM};
use crate::harness::metrics::{sample, scrape};
use crate::harness::operator::{dead_letters_on, run_command};
use crate::harness::*;
use serde_json::{json, Value};
use sqlx::Connection;
use std::time::Duration;

/// The server's `max_payload`, as it tells its clients.
async fn max_payload(app: &App) -> usize {
    app.nats().await.server_info().max_payload
}

/// A `MessagePosted` payload of exactly `size` bytes for `thread`, its `body` (or, with
/// `bad_send_by_user`, its `send_by_user`, which must be a boolean) filled out to that size.
fn message_of_size(id: &str, thread: &str, size: usize, bad_send_by_user: bool) -> String {
    let template = if bad_send_by_user {
        format!(
            r#"{{"id":"{id}","user":{{"name":"Agent"}},"timestamp":"{}","body":"hi","send_by_user":"FILL","thread":"{thread}"}}"#,
            now_timestamp()
        )
    } else {
        format!(
            r#"{{"id":"{id}","user":{{"name":"Agent"}},"timestamp":"{}","body":"FILL","send_by_user":false,"thread":"{thread}"}}"#,
            now_timestamp()
        )
    };
    let fill = "x".repeat(size - (template.len() - "FILL".len()));
    let payload = template.replace("FILL", &fill);
    assert_eq!(payload.len(), size);
    payload
}

/// The sequence of the newest event in the event stream.
async fn last_sequence(app: &App) -> u64 {
    let js = app.jetstream().await;
    let mut stream = js.get_stream(STREAM).await.expect("the event stream");
    stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence
}

/// `/readyz` of the projector: status and body.
async fn projector_readyz(app: &App) -> (u16, Value) {
    let response = app
        .request_to(app.addr("projector", 0), "GET", "/readyz", None, None)
        .await;
    (response.status, response.json())
}

/// A connection of the test's own that holds the messages table locked against writes (reads
/// go on) until [`unlock`].
async fn lock_messages(app: &App) -> sqlx::PgConnection {
    let mut locker = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("a connection of the test's own");
    for statement in ["BEGIN", "LOCK TABLE messages IN EXCLUSIVE MODE"] {
        sqlx::query(statement)
            .execute(&mut locker)
            .await
            .expect("locking the messages");
    }
    locker
}

async fn unlock(mut locker: sqlx::PgConnection) {
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("releasing the lock");
}

async fn message_count(app: &mut App, thread: &str) -> i64 {
    let db = app.db().await;
    sqlx::query_scalar("select count(*) from messages where thread_id = $1::uuid")
        .bind(thread)
        .fetch_one(&db)
        .await
        .expect("counting messages")
}

#[tokio::test]
async fn an_invalid_event_as_large_as_the_broker_allows_is_set_aside_and_the_projector_goes_on() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let subject = app.message_subject(&thread);
    // Nearly max_payload: room only for the publisher's own header. The parser's message
    // quotes the string, so the reason alone would be as large as the event.
    let size = max_payload(&app).await - 200;
    let id = new_id();
    let ack = app
        .publish_event(
            &subject,
            &[("Nats-Msg-Id", &id)],
            message_of_size(&id, &thread, size, true),
        )
        .await;

    let record = app.dead_letter_of(ack.sequence).await;
    assert_eq!(record.subject.as_str(), "chat.deadletter.invalid_payload");
    assert!(
        record.payload.is_empty(),
        "the record cannot hold the payload"
    );
    assert_eq!(
        header(&record, "Threadline-Dead-Letter-Payload-Omitted"),
        Some(size.to_string())
    );
    let reason = header(&record, "Threadline-Dead-Letter-Reason").unwrap_or_default();
    assert!(
        !reason.is_empty() && reason.len() <= 300,
        "reason of {} bytes",
        reason.len()
    );

    // The projector goes on: a POST after it is in GET (which waits for the projector).
    app.say(&thread, "after the large one").await;
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 1, "{stored}");
    assert_eq!(stored["messages"][0]["body"], "after the large one");

    let records = dead_letters_on(&app, &subject).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["reason"], "invalid_payload");
    assert_eq!(records[0]["event_sequence"], json!(ack.sequence));
    assert_eq!(records[0]["payload"], Value::Null);
    assert_eq!(records[0]["payload_omitted"], json!(true));
    assert_eq!(records[0]["payload_bytes"], json!(size));
    let table = run_command(&app, &["dead-letters", "list"]).await;
    let listed = table.expect(0);
    assert!(
        listed.contains(&format!(
            "({size} bytes, in the event stream at sequence {})",
            ack.sequence
        )),
        "{listed}"
    );
}

#[tokio::test]
async fn a_record_without_its_payload_is_retried_from_the_event_stream() {
    let app = spawn_app().await;
    let thread = new_id();
    let subject = app.message_subject(&thread);
    // Valid, but for a thread that does not exist yet; too large for a record with headers.
    let size = max_payload(&app).await - 200;
    let id = new_id();
    let payload = message_of_size(&id, &thread, size, false);
    let ack = app
        .publish_event(&subject, &[("Nats-Msg-Id", &id)], payload.clone())
        .await;
    let record = app.dead_letter_of(ack.sequence).await;
    assert_eq!(record.subject.as_str(), "chat.deadletter.unknown_thread");
    assert!(record.payload.is_empty());

    app.publish_event(
        &format!("chat.thread.{thread}.created"),
        &[("Nats-Msg-Id", &thread)],
        format!(
            r#"{{"id":"{thread}","user":{{"name":"Visitor"}},"timestamp":"{}"}}"#,
            now_timestamp()
        ),
    )
    .await;
    eventually("the late thread in GET", PROJECTION_TIMEOUT, || async {
        (app.get(&format!("/chat/thread/{thread}/")).await.status == 200).then_some(())
    })
    .await;

    let out = run_command(
        &app,
        &["dead-letters", "retry", "--reason", "unknown_thread"],
    )
    .await;
    let stdout = out.expect(0);
    assert!(stdout.contains("applied"), "{stdout}");
    let stored = app.get_thread(&thread).await;
    assert_eq!(message_ids(&stored), [json!(id)]);
    let sent: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(stored["messages"][0]["body"], sent["body"]);
    assert!(dead_letters_on(&app, &subject).await.is_empty());
}

#[tokio::test]
async fn large_events_queued_while_the_projector_was_down_are_applied_in_batches_within_the_byte_bound(
) {
    const MESSAGES: usize = 50;
    let mut app = options()
        .env("PROJECTOR_BATCH_BYTES", "3MiB")
        .nats_config("max_payload: 8MB\n")
        .start()
        .await;
    let thread = app.new_thread().await;
    app.get_thread(&thread).await;
    app.kill("projector", 0);

    let js = app.jetstream().await;
    let subject = app.message_subject(&thread);
    for _ in 0..MESSAGES {
        let id = new_id();
        let payload = message_of_size(&id, &thread, 2 << 20, false);
        publish_event(&js, &subject, &[("Nats-Msg-Id", &id)], payload.into()).await;
    }
    app.restart("projector", 0).await;

    let db = app.db().await;
    eventually(
        "every large message in the read model",
        PROJECTION_TIMEOUT,
        || async {
            let n: i64 =
                sqlx::query_scalar("select count(*) from messages where thread_id = $1::uuid")
                    .bind(&thread)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            (n == MESSAGES as i64).then_some(())
        },
    )
    .await;
    // Two messages of 2 MiB exceed 3 MiB: the restarted projector wrote one per batch.
    let metrics = scrape(&app, app.addr("projector", 0)).await;
    let batches = sample(&metrics, "threadline_projector_batch_size_count", &[]);
    let events = sample(&metrics, "threadline_projector_batch_size_sum", &[]);
    assert_eq!(batches, Some(MESSAGES as f64), "{metrics}");
    assert_eq!(events, Some(MESSAGES as f64), "{metrics}");
}

#[tokio::test]
async fn a_row_postgresql_refuses_is_set_aside_and_the_rest_of_its_batch_is_applied() {
    const REFUSED: &str = "a body this database refuses";
    let mut app = spawn_app().await;
    // A rule of this database only, which the events' own checks know nothing of: a domain,
    // so that the tables a rebuild or verify makes in the serving tables' shape have it too.
    let db = app.db().await;
    sqlx::raw_sql(&format!(
        "CREATE DOMAIN test_body AS text CHECK (VALUE <> '{REFUSED}'); \
         ALTER TABLE messages ALTER COLUMN body TYPE test_body"
    ))
    .execute(&db)
    .await
    .expect("adding the rule");
    // (Before the api's first read: a column's type changed under a prepared statement fails
    // it.)
    let thread = app.new_thread().await;
    app.get_thread(&thread).await;

    // Queued while the projector is down, so that they arrive as one batch.
    app.kill("projector", 0);
    let js = app.jetstream().await;
    let subject = app.message_subject(&thread);
    let mut valid = Vec::new();
    let mut refused = None;
    for i in 0..9 {
        let id = new_id();
        let body = if i == 4 {
            REFUSED.to_owned()
        } else {
            format!("message {i}")
        };
        let ack = publish_event(
            &js,
            &subject,
            &[("Nats-Msg-Id", &id)],
            agent_reply(&id, &thread, &body).into(),
        )
        .await;
        if i == 4 {
            refused = Some((id, ack.sequence));
        } else {
            valid.push(json!(id));
        }
    }
    let (refused_id, refused_seq) = refused.unwrap();
    app.restart("projector", 0).await;

    let record = app.dead_letter_of(refused_seq).await;
    assert_eq!(
        record.subject.as_str(),
        "chat.deadletter.refused_by_database"
    );
    let reason = header(&record, "Threadline-Dead-Letter-Reason").unwrap_or_default();
    assert!(reason.contains("23514"), "{reason}");
    let stored = app.get_thread(&thread).await;
    assert_eq!(message_ids(&stored), valid);
    assert_eq!(message_count(&mut app, &thread).await, 8);
    let listed = dead_letters_on(&app, &subject).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["reason"], "refused_by_database");
    let sent: Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(sent["id"], json!(refused_id));
    // The batch went on to events after it, and the projector to later batches.
    app.say(&thread, "later").await;
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"].as_array().unwrap().len(), 9, "{stored}");

    // A rebuild and verify pass the refused row over rather than stop on it.
    let rebuilt = run_command(&app, &["rebuild"]).await;
    let summary = rebuilt.expect(0);
    assert!(
        summary.contains("1 rows refused by PostgreSQL and passed over"),
        "{summary}"
    );
    assert_eq!(app.get_thread(&thread).await, stored);
    run_command(&app, &["verify"]).await.expect(0);
}

/// Stuck means "cannot make progress": the messages table is locked by another session (as a
/// long migration would), so every attempt at the batch times out; NATS and PostgreSQL
/// themselves answer.
#[tokio::test]
async fn readyz_of_a_stuck_projector_names_the_event_and_clears_once_it_moves_on() {
    let mut app = options().replicas("projector", 0).start().await;
    app.start_replica(
        "projector",
        &[("PROJECTOR_STUCK_AFTER", "1s"), ("DATABASE_TIMEOUT", "1s")],
    )
    .await;
    let thread = app.new_thread().await;
    app.get_thread(&thread).await;

    let lock = lock_messages(&app).await;
    app.say(&thread, "held back").await;
    let sequence = last_sequence(&app).await;

    let body = eventually(
        "the projector's /readyz to say stuck",
        PROJECTION_TIMEOUT,
        || async {
            let (status, body) = projector_readyz(&app).await;
            (status == 503).then_some(body)
        },
    )
    .await;
    let check = &body["checks"]["projection"];
    assert_eq!(check["status"], "stuck", "{body}");
    assert_eq!(check["sequence"], json!(sequence), "{body}");
    // The cause is the log's, not the answer's: whoever asks sees a fixed word.
    assert_eq!(check["reason"], "batch_failing", "{body}");
    assert!(check.get("error").is_none(), "{body}");
    assert!(!body.to_string().contains("statement"), "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert_eq!(body["checks"]["nats"], "ok", "{body}");
    eventually(
        "the log line saying it is stuck",
        PROJECTION_TIMEOUT,
        || async {
            let logs = app.logs("projector", 0);
            (logs.contains("cannot make progress")
                && logs.contains(&format!("event sequence {sequence}"))
                && logs.contains("statement timeout"))
            .then_some(())
        },
    )
    .await;

    unlock(lock).await;
    eventually(
        "the projector's /readyz to recover",
        PROJECTION_TIMEOUT,
        || async { (projector_readyz(&app).await.0 == 200).then_some(()) },
    )
    .await;
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"][0]["body"], "held back");
    assert!(app.logs("projector", 0).contains("moves on"));
}

/// The projector's durable consumer, as the broker describes it.
async fn projector_consumer(app: &App) -> async_nats::jetstream::consumer::Info {
    let js = app.jetstream().await;
    let stream = js.get_stream(STREAM).await.expect("the event stream");
    stream
        .consumer_info(PROJECTOR_CONSUMER)
        .await
        .expect("the projector's consumer")
        .clone()
}

/// A batch that takes longer than the consumer's acknowledgement wait is kept: the projector
/// reminds the broker that it holds it, so the broker does not deliver it again (to this
/// projector or another) meanwhile. A projector brings an existing consumer to its
/// `PROJECTOR_ACK_WAIT` when it starts.
#[tokio::test]
async fn a_batch_slower_than_the_acknowledgement_wait_is_not_delivered_again() {
    let mut app = options().replicas("projector", 0).start().await;
    app.start_replica("projector", &[]).await;
    let thread = app.new_thread().await;
    app.get_thread(&thread).await;
    assert_eq!(
        projector_consumer(&app).await.config.ack_wait,
        Duration::from_secs(5),
        "the default wait"
    );
    app.kill("projector", 0);
    let projector = app
        .start_replica("projector", &[("PROJECTOR_ACK_WAIT", "1s")])
        .await;
    let info = projector_consumer(&app).await;
    assert_eq!(info.config.ack_wait, Duration::from_secs(1));
    let redelivered = info.num_redelivered;

    let lock = lock_messages(&app).await;
    app.say(&thread, "held back").await.expect(201);
    eventually(
        "the projector to hold the message",
        PROJECTION_TIMEOUT,
        || async { (projector_consumer(&app).await.num_ack_pending == 1).then_some(()) },
    )
    .await;
    // Four acknowledgement waits with the batch in hand.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = projector_consumer(&app).await;
    assert_eq!(held.num_ack_pending, 1, "{held:?}");
    assert_eq!(
        held.num_redelivered, redelivered,
        "the broker delivered the held event again: {held:?}"
    );

    unlock(lock).await;
    let stored = app.get_thread(&thread).await;
    assert_eq!(stored["messages"][0]["body"], "held back");
    let done = projector_consumer(&app).await;
    assert_eq!(done.num_redelivered, redelivered, "{done:?}");
    assert!(
        app.logs("projector", projector)
            .contains("now waits 1s for an acknowledgement"),
        "the projector did not say it changed the wait"
    );
}
