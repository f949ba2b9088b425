//! A GET's cost is bounded by design, not by the thread's length: a long thread is streamed
//! from PostgreSQL in pages, long reads take turns on part of the pool, and a short thread is
//! answered meanwhile.

use crate::harness::*;
use futures::future::join_all;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES: usize = 200_000;
const READERS: usize = 32;
const MIB: u64 = 1024 * 1024;

/// Writes `count` messages of the thread straight into the read model, after the last one
/// there, and returns their ids in order. Building 200,000 events through the log takes
/// minutes in a debug build; the read path does not care where its rows came from, and the
/// log's head stays where the projector has applied it, so GETs read at once.
async fn bulk_insert(db: &sqlx::PgPool, thread: uuid::Uuid, count: usize) -> Vec<String> {
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
        r#"INSERT INTO messages (id, thread_id, user_json, body, send_by_user, created_at, stream_seq)
           SELECT gen_random_uuid(), $1, '{"name":"Agent Smith","n":' || g || '}',
             'message ' || g || E' \\ " \u00e9\t', g % 2 = 0, now(),
             (SELECT max(stream_seq) FROM messages) + g
           FROM generate_series(1, $2) g ORDER BY g RETURNING id"#,
    )
    .bind(thread)
    .bind(count as i64)
    .fetch_all(db)
    .await
    .expect("inserting messages");
    // What autovacuum does shortly after a bulk change: the planner's statistics cover them.
    sqlx::query("ANALYZE messages")
        .execute(db)
        .await
        .expect("analyzing messages");
    ids.into_iter().map(|(id,)| id.to_string()).collect()
}

/// The thread id and its messages' ids, in order, from a GET's body: found with the standard
/// library's (optimised) substring search, as a debug build's JSON parser would take seconds
/// per read.
fn ids_in(body: &str) -> (String, Vec<&str>) {
    let id_at = |at: usize| body.get(at..at + 36).unwrap_or_default();
    let thread = body
        .strip_prefix("{\"id\":\"")
        .map(|rest| rest.get(..36).unwrap_or_default().to_owned())
        .unwrap_or_default();
    let messages = body
        .match_indices("{\"id\":\"")
        .skip(1)
        .map(|(at, needle)| id_at(at + needle.len()))
        .collect();
    (thread, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_reads_of_a_long_thread_stream_in_bounded_memory() {
    // The rows written by hand below are not announced, and a kept thread would hide them.
    let mut app = options().env("HOT_THREADS_BYTES", "0").start().await;
    let long = app.new_thread().await;
    let short = app.new_thread().await;
    app.say(&short, "a short thread").await.expect(201);
    let first = app
        .say(&long, "the first, through the log")
        .await
        .expect(201);
    // Read your writes: once GET shows it, the projector has applied it.
    assert_eq!(
        message_ids(&app.get_thread(&long).await),
        vec![first["id"].clone()]
    );
    let db = app.db().await;
    let long_id: uuid::Uuid = long.parse().expect("thread id");
    let mut expected = vec![first["id"].as_str().expect("message id").to_owned()];
    expected.extend(bulk_insert(&db, long_id, MESSAGES - 1).await);
    let expected = Arc::new(expected);

    let api = app.addr("api", 0);
    let memory = PeakResident::start(api);

    let path = format!("/chat/thread/{long}/");
    let readers = join_all((0..READERS).map(|_| async {
        let answer = app.get(&path).await;
        assert_eq!(
            answer.status, 200,
            "GET of the long thread: {}",
            answer.status
        );
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        let (long, expected) = (long.clone(), expected.clone());
        // Checked off the runtime, so that the other readers keep reading meanwhile.
        tokio::task::spawn_blocking(move || {
            assert!(answer.text.ends_with("}]}"), "the whole JSON");
            let (thread, messages) = ids_in(&answer.text);
            assert_eq!(thread, long);
            assert_eq!(messages.len(), MESSAGES, "every message, once");
            assert!(
                messages.iter().zip(expected.iter()).all(|(m, e)| m == e),
                "every message in stream order"
            );
        })
        .await
        .expect("checking a long thread");
    }));
    let meanwhile = async {
        // Once the long reads are under way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let answer = app.get(&format!("/chat/thread/{short}/")).await;
        (answer.status, started.elapsed())
    };
    let (_, (short_status, short_took)) = tokio::join!(readers, meanwhile);
    let grown = memory.growth().await;
    println!(
        "{READERS} GETs of {MESSAGES} messages: the api grew by {} MiB; a short GET meanwhile took {short_took:?}",
        grown / MIB
    );
    assert_eq!(
        short_status, 200,
        "a short thread's GET during the long reads"
    );
    assert!(
        short_took < Duration::from_secs(1),
        "a short thread's GET took {short_took:?} during the long reads"
    );
    assert!(
        grown < 128 * MIB,
        "the api grew by {} MiB during {READERS} long reads",
        grown / MIB
    );
}

/// What GET must answer for a thread: its POST answer with every message's POST answer in
/// `messages`, without their `thread`, byte for byte.
fn expected_body(thread: &HttpResponse, messages: &[HttpResponse], id: &str) -> String {
    let head = thread
        .text
        .strip_suffix("[]}")
        .expect("a new thread's JSON ends with its empty messages");
    let suffix = format!(",\"thread\":\"{id}\"}}");
    let views: Vec<String> = messages
        .iter()
        .map(|m| {
            let view = m
                .text
                .strip_suffix(&suffix)
                .expect("a message's thread comes last");
            format!("{view}}}")
        })
        .collect();
    format!("{head}[{}]}}", views.join(","))
}

#[tokio::test]
async fn short_and_streamed_threads_answer_the_bytes_their_posts_did() {
    let mut app = spawn_app().await;
    let db = app.db().await;
    let controls: String = (1u8..0x20).map(char::from).collect();
    let bodies = [
        format!("controls {controls}"),
        r#"quotes " and \ and / "#.to_owned(),
        "line\u{2028}separator, é, \u{1F600}, \u{7F}".to_owned(),
    ];
    let users = [
        json!({"b": 1.50, "a": [1e3, "x"]}),
        json!("a name"),
        json!(7),
    ];
    // Short enough to be read whole; then past the size read whole, so streamed.
    let big = "x".repeat(400 * 1024);
    for (name, extra) in [("whole", 0), ("streamed", 3)] {
        let thread = app
            .post("/chat/thread/", &json!({"user": {"z": 1, "a": 2.50}}))
            .await;
        assert_eq!(thread.status, 201);
        let id = thread.json()["id"].as_str().expect("id").to_owned();
        let mut posted = Vec::new();
        let messages = bodies
            .iter()
            .cloned()
            .zip(users.iter().cloned())
            .chain((0..extra).map(|_| (big.clone(), json!("bulk"))));
        for (body, user) in messages {
            let answer = app
                .post_message(&json!({"thread": id, "user": user, "body": body}))
                .await;
            assert_eq!(answer.status, 201, "{}", answer.text);
            posted.push(answer);
        }
        let got = app.get(&format!("/chat/thread/{id}/")).await;
        assert_eq!(got.status, 200, "{name}");
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert!(
            got.text == expected_body(&thread, &posted, &id),
            "{name}: GET differs from the POST answers"
        );
        // The projector stored each message's JSON; rows without it (written before that
        // column, or by an older projector in a rolling upgrade) are rendered by PostgreSQL
        // to the same bytes.
        let thread_id = uuid::Uuid::parse_str(&id).expect("uuid");
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM messages WHERE thread_id = $1 AND json IS NOT NULL",
        )
        .bind(thread_id)
        .fetch_one(&db)
        .await
        .expect("counting stored JSON");
        assert_eq!(stored as usize, posted.len(), "{name}: stored JSON");
        sqlx::query("UPDATE messages SET json = NULL WHERE thread_id = $1 AND stream_seq % 2 = 0")
            .bind(thread_id)
            .execute(&db)
            .await
            .expect("clearing stored JSON");
        let rendered = app.get(&format!("/chat/thread/{id}/")).await;
        assert!(
            rendered.text == got.text,
            "{name}: rows without stored JSON read differently"
        );
    }
}

/// Large messages: this many ...
const LARGE_MESSAGES: usize = 48;
/// ... of about the most bytes a message may have.
const LARGE_BODY: usize = 2_500_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_of_a_thread_of_large_messages_hold_a_few_pages_in_memory() {
    // The rows written by hand below are not announced, and a kept thread would hide them.
    let mut app = options().env("HOT_THREADS_BYTES", "0").start().await;
    let thread = app.new_thread().await;
    let first = app
        .say(&thread, "the first, through the log")
        .await
        .expect(201);
    assert_eq!(
        message_ids(&app.get_thread(&thread).await),
        vec![first["id"].clone()]
    );
    // 120 MB of bodies, written straight into the read model (see `bulk_insert`).
    let db = app.db().await;
    sqlx::query(
        r#"INSERT INTO messages (id, thread_id, user_json, body, send_by_user, created_at, stream_seq)
           SELECT gen_random_uuid(), $1, '{"name":"Agent Smith"}', repeat(md5(g::text), $3 / 32),
             false, now(), (SELECT max(stream_seq) FROM messages) + g
           FROM generate_series(1, $2) g"#,
    )
    .bind(thread.parse::<uuid::Uuid>().expect("thread id"))
    .bind(LARGE_MESSAGES as i64)
    .bind(LARGE_BODY as i32)
    .execute(&db)
    .await
    .expect("inserting large messages");

    let api = app.addr("api", 0);
    let memory = PeakResident::start(api);
    let path = format!("/chat/thread/{thread}/");
    join_all((0..2).map(|_| async {
        let answer = app.get(&path).await;
        assert_eq!(answer.status, 200);
        let text = answer.text;
        let thread = thread.clone();
        tokio::task::spawn_blocking(move || {
            assert!(text.ends_with("}]}"), "the whole JSON");
            let (id, messages) = ids_in(&text);
            assert_eq!(id, thread);
            assert_eq!(messages.len(), LARGE_MESSAGES + 1, "every message");
            assert!(text.len() > LARGE_MESSAGES * LARGE_BODY);
        })
        .await
        .expect("checking the thread");
    }))
    .await;
    let grown = memory.growth().await;
    println!(
        "2 GETs of {LARGE_MESSAGES} messages of {LARGE_BODY} bytes: the api grew by {} MiB",
        grown / MIB
    );
    assert!(
        grown < 48 * MIB,
        "the api grew by {} MiB during 2 reads of {} MB",
        grown / MIB,
        LARGE_MESSAGES * LARGE_BODY / 1_000_000
    );
}

/// Long reads (transactions whose last statement read a page) open for more than `seconds`.
async fn long_reads_older_than(db: &sqlx::PgPool, seconds: f64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND query LIKE '%string_agg%' \
         AND xact_start < now() - make_interval(secs => $1)",
    )
    .bind(seconds)
    .fetch_one(db)
    .await
    .expect("reading pg_stat_activity")
}

#[tokio::test]
async fn a_slow_reader_holds_a_long_reads_snapshot_no_longer_than_its_deadline() {
    let mut app = options()
        .env("HOT_THREADS_BYTES", "0")
        .role_env("api", "LONG_READ_TIMEOUT", "3s")
        .start()
        .await;
    let long = app.new_thread().await;
    let first = app.say(&long, "the first").await.expect(201);
    assert_eq!(
        message_ids(&app.get_thread(&long).await),
        vec![first["id"].clone()]
    );
    let db = app.db().await;
    bulk_insert(&db, long.parse().expect("thread id"), MESSAGES - 1).await;

    // A reader that takes 16 KiB every 100 ms through a small receive buffer: a page about
    // every second, each well within the wait for a slow reader; the whole thread (30 MB)
    // in minutes.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(8192).expect("a small buffer");
    let mut stream = socket
        .connect(app.addr("api", 0))
        .await
        .expect("connecting to the api");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(format!("GET /chat/thread/{long}/ HTTP/1.1\r\nHost: api\r\n\r\n").as_bytes())
        .await
        .expect("sending the GET");
    let reader = tokio::spawn(async move {
        let mut buffer = vec![0u8; 16 << 10];
        let mut total = 0usize;
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            // Pacing the reader, not waiting for anything.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    eventually(
        "the long read to hold its snapshot",
        PROJECTION_TIMEOUT,
        || async { (long_reads_older_than(&db, 0.0).await > 0).then_some(()) },
    )
    .await;
    eventually(
        "the long read to give up its snapshot",
        Duration::from_secs(20),
        || async { (long_reads_older_than(&db, 5.0).await == 0).then_some(()) },
    )
    .await;
    let read = within("the body to end", Duration::from_secs(60), reader)
        .await
        .expect("the reader");
    assert!(read > 0, "the reader got part of the thread");
}
