//! Operator commands, run as the built binary against a running system: `rebuild` under
//! load and after a SIGKILL, `verify` finding rows broken by hand, set-aside events brought
//! back with `dead-letters retry`, `events tail` and `events publish`, and one clear line when
//! a dependency is unreachable.

use crate::harness::client::REQUEST_TIMEOUT;
use crate::harness::operator::{dead_letters_on, run_command, run_command_with, Running};
use crate::harness::seed::{seed, thread_created};
use crate::harness::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn message_posted(id: &str, thread: &str, body: &str) -> String {
    format!(
        r#"{{"id":"{id}","user":{{"name":"Agent"}},"timestamp":"{}","body":"{body}","send_by_user":false,"thread":"{thread}"}}"#,
        now_timestamp()
    )
}

async fn schema_table_exists(app: &mut App, table: &str) -> bool {
    let db = app.db().await;
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&db)
        .await
        .expect("asking for a table")
}

#[tokio::test]
async fn rebuild_under_reads_and_writes_keeps_every_get_complete_and_verify_passes() {
    let app = spawn_app().await;
    let (threads, last) = seed(&app, 200, 100).await;
    app.wait_applied(last).await;
    let live = app.new_thread().await;

    let done = AtomicBool::new(false);
    let rebuild = async {
        let out = run_command(&app, &["rebuild"]).await;
        done.store(true, Ordering::SeqCst);
        out
    };
    let client = async {
        let mut posted = Vec::new();
        let mut requests = 0usize;
        let mut i = 0;
        while !done.load(Ordering::SeqCst) {
            // A seeded thread: always all of its 99 messages.
            let thread = &threads[i % threads.len()];
            let got = app.get(&format!("/chat/thread/{thread}/")).await;
            let body = got.expect(200);
            assert_eq!(
                body["messages"].as_array().map(Vec::len),
                Some(99),
                "GET of {thread} during the rebuild is incomplete"
            );
            // A write, then a read of it: read-your-writes across the switch-over.
            let sent = app
                .say(&live, &format!("during the rebuild {i}"))
                .await
                .json();
            posted.push(sent["id"].clone());
            let thread = app.get_thread(&live).await;
            assert_eq!(
                message_ids(&thread),
                posted,
                "GET after POST misses a write during the rebuild"
            );
            requests += 3;
            i += 1;
        }
        requests
    };
    let (out, requests) = tokio::join!(rebuild, client);
    let stdout = out.expect(0);
    assert!(stdout.contains("rebuilt the read model from"), "{stdout}");
    assert!(requests >= 3, "no request ran during the rebuild");

    // Reads and writes after the switch-over go to the new tables.
    let after = app.say(&live, "after the rebuild").await.json();
    let thread = app.get_thread(&live).await;
    assert_eq!(message_ids(&thread).last(), Some(&after["id"]));
    run_command(&app, &["verify"]).await.expect(0);
}

#[tokio::test]
async fn a_rebuild_killed_halfway_leaves_the_serving_read_model_and_a_second_one_completes() {
    let mut app = spawn_app().await;
    let (threads, last) = seed(&app, 100, 100).await;
    app.wait_applied(last).await;

    let db = app.db().await;
    let mut rebuild = Running::start(&app, &["rebuild"]);
    eventually(
        "the rebuild to start loading its tables",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT to_regclass('threadline_rebuild.messages') IS NOT NULL",
            )
            .fetch_one(&db)
            .await
            .ok()
            .filter(|exists| *exists)
        },
    )
    .await;
    rebuild.kill().await;
    assert!(
        schema_table_exists(&mut app, "threadline_rebuild.messages").await,
        "the rebuild finished before it was killed; the test proves nothing"
    );

    for thread in threads.iter().step_by(10) {
        let got = app.get_thread(thread).await;
        assert_eq!(got["messages"].as_array().map(Vec::len), Some(99));
    }
    let live = app.new_thread().await;
    let sent = app.say(&live, "after the kill").await.json();
    assert_eq!(
        message_ids(&app.get_thread(&live).await),
        [sent["id"].clone()]
    );

    run_command(&app, &["rebuild"]).await.expect(0);
    assert!(!schema_table_exists(&mut app, "threadline_rebuild.messages").await);
    run_command(&app, &["verify"]).await.expect(0);
}

#[tokio::test]
async fn verify_names_a_deleted_and_a_changed_message_and_a_rebuild_repairs_them() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ids = Vec::new();
    for body in ["one", "two", "three", "four"] {
        ids.push(
            app.say(&thread, body).await.json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let before = app.get_thread(&thread).await;
    run_command(&app, &["verify"]).await.expect(0);

    let db = app.db().await;
    sqlx::query("DELETE FROM messages WHERE id = $1::uuid")
        .bind(&ids[0])
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET body = 'changed by hand' WHERE id = $1::uuid")
        .bind(&ids[1])
        .execute(&db)
        .await
        .unwrap();
    // What GET answers is the stored JSON: verify checks it too. A row without it (written
    // before that column) is rendered from its columns and is no difference.
    sqlx::query(
        "UPDATE messages SET json = replace(json, 'three', 'tampered') WHERE id = $1::uuid",
    )
    .bind(&ids[2])
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE messages SET json = NULL WHERE id = $1::uuid")
        .bind(&ids[3])
        .execute(&db)
        .await
        .unwrap();

    let out = run_command(&app, &["verify"]).await;
    let stdout = out.expect(1);
    assert!(
        stdout.contains(&format!("message {} missing", ids[0])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("message {} different (body)", ids[1])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("message {} different (json)", ids[2])),
        "{stdout}"
    );
    assert!(!stdout.contains(&ids[3]), "{stdout}");

    let json_out = run_command(&app, &["verify", "--json"]).await;
    let report: Value = serde_json::from_str(json_out.expect(1)).expect("verify --json");
    let differences = report["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 3, "{report}");

    run_command(&app, &["rebuild"]).await.expect(0);
    run_command(&app, &["verify"]).await.expect(0);
    assert_eq!(app.get_thread(&thread).await, before);
}

#[tokio::test]
async fn dead_letters_retry_brings_a_message_back_once_its_thread_exists() {
    let app = spawn_app().await;
    let thread = new_id();
    let id = new_id();
    let payload = message_posted(&id, &thread, "sent before the thread existed");
    let subject = app.message_subject(&thread);
    let ack = app
        .publish_event(&subject, &[("Nats-Msg-Id", &id)], payload.clone())
        .await;
    app.dead_letter_of(ack.sequence).await;

    let table = run_command(&app, &["dead-letters", "list"]).await;
    let listed = table.expect(0);
    assert!(
        listed.contains("unknown_thread") && listed.contains(&subject),
        "{listed}"
    );
    let records = dead_letters_on(&app, &subject).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["reason"], "unknown_thread");
    assert_eq!(records[0]["event_sequence"], json!(ack.sequence));

    // The thread is created later, by an outside publisher.
    app.publish_event(
        &format!("chat.thread.{thread}.created"),
        &[("Nats-Msg-Id", &thread)],
        thread_created(&thread),
    )
    .await;
    eventually("the late thread in GET", PROJECTION_TIMEOUT, || async {
        (app.get(&format!("/chat/thread/{thread}/")).await.status == 200).then_some(())
    })
    .await;
    let mut ws = app.connect_ws(&thread).await;

    let out = run_command(
        &app,
        &["dead-letters", "retry", "--reason", "unknown_thread"],
    )
    .await;
    let stdout = out.expect(0);
    assert!(stdout.contains("applied"), "{stdout}");
    assert_eq!(
        ws.next_text().await,
        payload,
        "the socket must get the retried message"
    );
    let stored = app.get_thread(&thread).await;
    assert_eq!(message_ids(&stored), [json!(id)]);
    assert!(dead_letters_on(&app, &subject).await.is_empty());
    run_command(&app, &["verify"]).await.expect(0);
}

#[tokio::test]
async fn a_retry_that_fails_again_keeps_the_event_set_aside() {
    let app = spawn_app().await;
    let thread = new_id();
    let id = new_id();
    let subject = app.message_subject(&thread);
    let ack = app
        .publish_event(
            &subject,
            &[("Nats-Msg-Id", &id)],
            message_posted(&id, &thread, "lost"),
        )
        .await;
    app.dead_letter_of(ack.sequence).await;
    let record = dead_letters_on(&app, &subject).await.remove(0);
    let sequence = record["sequence"].to_string();

    let out = run_command(&app, &["dead-letters", "retry", &sequence]).await;
    let stdout = out.expect(1);
    assert!(
        stdout.contains("set aside again as unknown_thread"),
        "{stdout}"
    );
    let records = dead_letters_on(&app, &subject).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["reason"], "unknown_thread");
    assert_ne!(records[0]["sequence"], record["sequence"]);

    let unknown = run_command(&app, &["dead-letters", "retry", "999999"]).await;
    unknown.expect(3);
    assert!(unknown
        .stderr
        .contains("no set-aside event has sequence 999999"));
}

#[tokio::test]
async fn events_publish_reaches_the_thread_and_events_tail_prints_it() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut tail = Running::start(
        &app,
        &["events", "tail", "--thread", &thread, "--from-seq", "1"],
    );
    let created = tail.next_line(REQUEST_TIMEOUT).await;
    assert!(
        created.contains(&format!("chat.thread.{thread}.created")),
        "{created}"
    );

    let out = run_command(
        &app,
        &[
            "events",
            "publish",
            &thread,
            "Hi, how can I help?",
            "--agent",
            "Ada",
        ],
    )
    .await;
    let published = out.expect(0).to_owned();
    let line = tail.next_line(REQUEST_TIMEOUT).await;
    assert!(line.contains(&app.message_subject(&thread)), "{line}");
    assert!(line.contains("Hi, how can I help?"), "{line}");
    assert!(published.contains("Hi, how can I help?"), "{published}");
    tail.kill().await;

    let stored = eventually("the published reply in GET", PROJECTION_TIMEOUT, || async {
        let got = app.get_thread(&thread).await;
        got["messages"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(stored["user"], json!({"name": "Ada"}));
    assert_eq!(stored["send_by_user"], json!(false));

    let dir = std::env::temp_dir().join(format!("tl-e2e-publish-{}", new_id()));
    std::fs::write(&dir, message_posted(&new_id(), &thread, "from a file")).unwrap();
    run_command(
        &app,
        &["events", "publish", "--file", dir.to_str().unwrap()],
    )
    .await
    .expect(0);
    std::fs::write(&dir, r#"{"thread": "not a thread"}"#).unwrap();
    let bad = run_command(
        &app,
        &["events", "publish", "--file", dir.to_str().unwrap()],
    )
    .await;
    bad.expect(3);
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{}", bad.stderr);
    let _ = std::fs::remove_file(&dir);

    let unknown = run_command(&app, &["events", "publish", &new_id(), "hello"]).await;
    unknown.expect(3);
    assert!(
        unknown.stderr.contains("does not exist"),
        "{}",
        unknown.stderr
    );
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn commands_say_in_one_line_when_a_dependency_is_unreachable() {
    let nats =
        crate::harness::nats::NatsServer::start_with_config(crate::harness::nats::DEFAULT_CONFIG);
    let dead_nats = vec![
        (
            "NATS_URL".to_owned(),
            format!("nats://127.0.0.1:{}", closed_port()),
        ),
        ("NATS_TIMEOUT".to_owned(), "1s".to_owned()),
    ];
    for args in [
        &["verify"][..],
        &["rebuild"],
        &["dead-letters", "list"],
        &["events", "publish", &new_id(), "hi"],
    ] {
        let out = run_command_with(args, &dead_nats).await;
        out.expect(3);
        let lines: Vec<&str> = out.stderr.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", out.stderr);
        assert!(lines[0].starts_with("threadline "), "{}", lines[0]);
        assert!(lines[0].contains("NATS"), "{}", lines[0]);
    }
    let dead_database = vec![
        ("NATS_URL".to_owned(), nats.url()),
        (
            "DATABASE_URL".to_owned(),
            format!("postgres://postgres@127.0.0.1:{}/threadline", closed_port()),
        ),
        ("DATABASE_TIMEOUT".to_owned(), "1s".to_owned()),
    ];
    for args in [&["verify"][..], &["rebuild"]] {
        let out = run_command_with(args, &dead_database).await;
        out.expect(3);
        let lines: Vec<&str> = out.stderr.trim().lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", out.stderr);
        assert!(lines[0].contains("PostgreSQL"), "{}", lines[0]);
    }
}
