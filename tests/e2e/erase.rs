//! `threadline erase --thread ID`, run as the built binary against a running system of two
//! api replicas and two gateways: the thread is gone from every replica's memory, every
//! socket, the event stream, the set-aside events, the idempotency records and the read model,
//! and stays gone after a rebuild; `--dry-run` removes nothing; an unknown or malformed id is
//! refused; a second run is fine; a stream made by a version without erasures gets their
//! subject.

use crate::harness::client::STREAM;
use crate::harness::metrics::{sample, scrape};
use crate::harness::operator::{dead_letters_on, run_command};
use crate::harness::*;
use futures::TryStreamExt;
use serde_json::{json, Value};

/// The close code of a socket whose thread was erased (docs/websocket-clients.md).
const THREAD_ERASED: u16 = 4404;

/// Each subject of the event stream under `filter`, with how many events it holds.
async fn subjects_under(app: &App, filter: &str) -> Vec<(String, usize)> {
    let stream = app
        .jetstream()
        .await
        .get_stream(STREAM)
        .await
        .expect("the event stream");
    let mut subjects: Vec<(String, usize)> = stream
        .info_with_subjects(filter)
        .await
        .expect("the stream's subjects")
        .try_collect()
        .await
        .expect("the stream's subjects");
    subjects.sort();
    subjects
}

/// Rows of the thread in the read model: (threads, messages).
async fn rows_of(app: &mut App, thread: &str) -> (i64, i64) {
    let db = app.db().await;
    let id: uuid::Uuid = thread.parse().expect("a thread id");
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM threads WHERE id = $1), \
                (SELECT count(*) FROM messages WHERE thread_id = $1)",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .expect("counting rows")
}

/// A message request of the visitor's.
fn message(thread: &str, body: &str) -> Value {
    json!({"user": {"name": "Visitor"}, "thread": thread, "body": body, "send_by_user": true})
}

fn erase_json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("erase --json: {e}: {out}"))
}

#[tokio::test]
async fn an_erased_thread_is_gone_from_every_replica_socket_and_store_and_stays_gone() {
    let mut app = options()
        .replicas("api", 2)
        .replicas("gateway", 2)
        .start()
        .await;
    let (first, second) = (app.client(0, 0), app.client(1, 1));

    // The thread to erase: created and written to under Idempotency-Keys, and plainly.
    let created_key = new_id();
    let created = app
        .post_with_key(
            "/chat/thread/",
            &json!({"user": {"name": "Ada", "email": "ada@example.com"}}),
            &created_key,
        )
        .await
        .expect("an answer")
        .expect(201);
    let thread = created["id"].as_str().expect("an id").to_owned();
    let message_key = new_id();
    app.post_with_key(
        "/chat/message/",
        &message(&thread, "my address is …"),
        &message_key,
    )
    .await
    .expect("an answer")
    .expect(201);
    app.say(&thread, "and my phone number").await;
    // Two of its events set aside: garbage on its subject, and a valid message published
    // under an upper-case spelling of its id (another subject, which no purge by subject
    // reaches).
    let garbage = app
        .publish_event(&app.message_subject(&thread), &[], "garbage")
        .await;
    let upper_subject = app.message_subject(&thread.to_uppercase());
    let misspelled = app
        .publish_event(
            &upper_subject,
            &[],
            agent_reply(&new_id(), &thread, "misspelled"),
        )
        .await;
    app.dead_letter_of(garbage.sequence).await;
    app.dead_letter_of(misspelled.sequence).await;

    // Another thread, which nothing here touches.
    let kept = app.new_thread().await;
    let kept_key = new_id();
    let kept_answer = app
        .post_with_key("/chat/message/", &message(&kept, "stays"), &kept_key)
        .await
        .expect("an answer");
    assert_eq!(kept_answer.status, 201, "{}", kept_answer.text);

    // Both api replicas keep the thread in memory: the second GET of each is answered there.
    for api in [0, 1] {
        let replica = app.client(api, 0);
        let got = replica.get_thread(&thread).await;
        assert_eq!(got["messages"].as_array().map(Vec::len), Some(2));
        assert_eq!(replica.get_thread(&thread).await, got);
        let metrics = scrape(&app, app.addr("api", api)).await;
        let from_memory = sample(
            &metrics,
            "threadline_api_thread_reads_total",
            &[("from", "memory")],
        );
        assert!(
            from_memory.unwrap_or(0.0) >= 1.0,
            "api #{api} does not keep the thread"
        );
    }
    // Sockets on both gateways, and one on the other thread.
    let mut sockets = vec![
        first.connect_ws(&thread).await,
        second.connect_ws(&thread).await,
    ];
    let mut kept_socket = second.connect_ws(&kept).await;

    // A dry run counts and removes nothing.
    let out = run_command(&app, &["erase", "--thread", &thread, "--dry-run", "--json"]).await;
    let dry = erase_json(out.expect(0));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["erased_at"], Value::Null);
    // Its creation, two messages and the garbage; the misspelled event is on another subject.
    assert_eq!(dry["events"], 4, "{dry}");
    assert_eq!(dry["idempotency_records"], 2, "{dry}");
    assert_eq!(dry["set_aside"], 2, "{dry}");
    assert_eq!(
        (&dry["thread_rows"], &dry["message_rows"]),
        (&json!(1), &json!(2))
    );
    let messages_subject = app.message_subject(&thread);
    assert_eq!(
        subjects_under(&app, &format!("chat.thread.{thread}.*")).await,
        [
            (app.created_subject(&thread), 1),
            (messages_subject.clone(), 3)
        ]
    );
    assert_eq!(rows_of(&mut app, &thread).await, (1, 2));
    app.get_thread(&thread).await;
    assert_eq!(dead_letters_on(&app, &messages_subject).await.len(), 1);

    let out = run_command(&app, &["erase", "--thread", &thread]).await;
    let stdout = out.expect(0);
    assert!(
        stdout.contains(&format!("erased thread {thread}")),
        "{stdout}"
    );
    assert!(stdout.contains("erase is idempotent"), "{stdout}");

    // Every socket on it closes with the documented code; the other thread's stays open.
    for ws in &mut sockets {
        assert_eq!(ws.next_close().await, Some(THREAD_ERASED));
    }
    let still = app.say(&kept, "still here").await;
    assert_eq!(kept_socket.next_text().await, still.text);

    // Every api replica: not found, and a message to it refused as to an unknown thread.
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused_unknown = app.post_message(&message(&unknown, "hello")).await;
    assert_eq!(refused_unknown.status, 400, "{}", refused_unknown.text);
    for api in [0, 1] {
        let replica = app.client(api, 0);
        let got = replica.get(&format!("/chat/thread/{thread}/")).await;
        assert_eq!(got.status, 404, "api #{api}: {}", got.text);
        assert_eq!(got.json(), json!({"detail": "Not found."}));
        let refused = replica.post_message(&message(&thread, "hello")).await;
        assert_eq!(refused.status, 400, "api #{api}: {}", refused.text);
        assert_eq!(
            refused.text.replace(&thread, "ID"),
            refused_unknown.text.replace(&unknown, "ID"),
            "api #{api} refuses it otherwise than an unknown thread"
        );
    }
    // No gateway opens a socket on it.
    for gateway in [0, 1] {
        let refused = app
            .client(0, gateway)
            .try_connect_ws(&format!("/ws/chat/{thread}/"))
            .await
            .err()
            .unwrap_or_else(|| panic!("gateway #{gateway} opened a socket on the erased thread"));
        assert_eq!(refused.status, Some(404), "gateway #{gateway}: {refused:?}");
    }

    // The stream holds its erasure and nothing else of it: not the misspelled event either.
    assert_eq!(
        subjects_under(&app, &format!("chat.thread.{thread}.*")).await,
        [(format!("chat.thread.{thread}.erased"), 1)]
    );
    assert!(subjects_under(&app, &upper_subject).await.is_empty());
    // Its set-aside events are gone.
    assert!(dead_letters_on(&app, &messages_subject).await.is_empty());
    assert!(dead_letters_on(&app, &upper_subject).await.is_empty());
    // Its idempotency records are gone: a retry under the thread's key opens a new thread,
    // and under the message's key is refused as a message to an unknown thread. The other
    // thread's record still answers its retry.
    let retried = app
        .post_with_key(
            "/chat/thread/",
            &json!({"user": {"name": "Ada", "email": "ada@example.com"}}),
            &created_key,
        )
        .await
        .expect("an answer")
        .expect(201);
    assert_ne!(retried["id"], json!(thread), "the thread's record answered");
    let retried = app
        .post_with_key(
            "/chat/message/",
            &message(&thread, "my address is …"),
            &message_key,
        )
        .await
        .expect("an answer");
    assert_eq!(retried.status, 400, "{}", retried.text);
    let kept_again = app
        .post_with_key("/chat/message/", &message(&kept, "stays"), &kept_key)
        .await
        .expect("an answer");
    assert_eq!(kept_again.text, kept_answer.text);
    // Its rows are gone.
    assert_eq!(rows_of(&mut app, &thread).await, (0, 0));

    // A rebuild does not bring it back, and verify finds both sides agree.
    run_command(&app, &["rebuild"]).await.expect(0);
    let verified = run_command(&app, &["verify"]).await;
    assert!(
        verified
            .expect(0)
            .contains("the read model matches the event stream"),
        "{}",
        verified.stdout
    );
    assert_eq!(rows_of(&mut app, &thread).await, (0, 0));
    for api in [0, 1] {
        let got = app
            .client(api, 0)
            .get(&format!("/chat/thread/{thread}/"))
            .await;
        assert_eq!(
            got.status, 404,
            "api #{api} after the rebuild: {}",
            got.text
        );
    }
    let kept_thread = app.get_thread(&kept).await;
    assert_eq!(kept_thread["messages"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn erase_refuses_unknown_and_malformed_ids_and_runs_twice() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    app.say(&thread, "hello").await;

    let unknown = uuid::Uuid::new_v4().to_string();
    let out = run_command(&app, &["erase", "--thread", &unknown]).await;
    out.expect(3);
    assert!(
        out.stderr
            .contains(&format!("thread {unknown} does not exist")),
        "{}",
        out.stderr
    );
    let out = run_command(&app, &["erase", "--thread", &unknown, "--dry-run"]).await;
    out.expect(3);
    assert!(
        subjects_under(&app, &format!("chat.thread.{unknown}.*"))
            .await
            .is_empty(),
        "an erasure was appended for an unknown id"
    );
    let out = run_command(&app, &["erase", "--thread", "not-a-thread"]).await;
    out.expect(2);
    assert!(out.stderr.contains("is not a thread id"), "{}", out.stderr);

    // A dry run in words: nothing removed.
    let out = run_command(&app, &["erase", "--thread", &thread, "--dry-run"]).await;
    assert!(
        out.expect(0).starts_with("dry run: nothing was removed."),
        "{}",
        out.stdout
    );
    app.get_thread(&thread).await;

    let out = run_command(&app, &["erase", "--thread", &thread, "--json"]).await;
    let first = erase_json(out.expect(0));
    assert_eq!(first["already_erased"], false);
    assert_eq!(first["events"], 2);
    assert_eq!(first["projector_folded"], true);
    let erased_at = first["erased_at"].as_u64().expect("the erasure's sequence");

    // A ThreadCreated of it published again (a stale copy) is not folded back in.
    let stale = app
        .publish_event(
            &app.created_subject(&thread),
            &[],
            crate::harness::seed::thread_created(&thread),
        )
        .await;
    app.wait_applied(stale.sequence).await;
    assert_eq!(rows_of(&mut app, &thread).await, (0, 0));
    assert_eq!(
        app.get(&format!("/chat/thread/{thread}/")).await.status,
        404
    );

    // Running it again is fine: the erasure stays where it was, the stale copy goes.
    let out = run_command(&app, &["erase", "--thread", &thread, "--json"]).await;
    let second = erase_json(out.expect(0));
    assert_eq!(second["already_erased"], true);
    assert_eq!(second["erased_at"].as_u64(), Some(erased_at));
    assert_eq!(second["events"], 1, "{second}");
    let out = run_command(&app, &["erase", "--thread", &thread]).await;
    assert!(
        out.expect(0).contains("was erased before"),
        "{}",
        out.stdout
    );
    run_command(&app, &["verify"]).await.expect(0);
}

#[tokio::test]
async fn a_stream_made_before_erasures_gets_their_subject_and_erase_works_on_it() {
    let mut app = options()
        .replicas("api", 0)
        .replicas("projector", 0)
        .replicas("gateway", 0)
        .start()
        .await;
    // The event stream as a version without erasures made it.
    app.jetstream()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![
                "chat.thread.*.created".into(),
                "chat.thread.*.message".into(),
            ],
            republish: Some(async_nats::jetstream::stream::Republish {
                source: "chat.thread.*.message".into(),
                destination: "chat.stored.{{wildcard(1)}}.message".into(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await
        .expect("the stream of an earlier version");
    for role in ["api", "projector", "gateway"] {
        app.start_replica(role, &[]).await;
    }
    let mut info = app
        .jetstream()
        .await
        .get_stream(STREAM)
        .await
        .expect("the event stream");
    let subjects = info.info().await.expect("its info").config.subjects.clone();
    assert!(
        subjects.contains(&"chat.thread.*.erased".to_owned()),
        "{subjects:?}"
    );

    let client = app.client(0, 0);
    let thread = client.new_thread().await;
    client.say(&thread, "hello").await;
    let mut ws = client.connect_ws(&thread).await;
    run_command(&app, &["erase", "--thread", &thread])
        .await
        .expect(0);
    assert_eq!(ws.next_close().await, Some(THREAD_ERASED));
    assert_eq!(
        client.get(&format!("/chat/thread/{thread}/")).await.status,
        404
    );
}
