//! The projector SIGKILLed in the middle of a stream of 10,000 events and started again
//! ends with every event in the read model exactly once, at its stream sequence.

use crate::harness::*;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const EVENTS: usize = 10_000;
const THREADS: usize = 5;

#[tokio::test]
async fn projector_killed_mid_stream_and_restarted_ends_with_every_event_exactly_once() {
    let mut app = spawn_app().await;
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        threads.push(app.new_thread().await);
    }
    let db = app.db().await;
    let count = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from messages")
            .fetch_one(&db)
            .await
            .expect("counting messages")
    };

    // Valid MessagePosted events, published straight to JetStream by an outside publisher.
    let events: Vec<(String, String, String)> = (0..EVENTS)
        .map(|i| {
            let id = new_id();
            let thread = &threads[i % THREADS];
            let payload = format!(
                r#"{{"id":"{id}","user":{{"name":"Agent","n":{i}}},"timestamp":"{}","body":"event {i}","send_by_user":false,"thread":"{thread}"}}"#,
                now_timestamp()
            );
            (id, format!("chat.thread.{thread}.message"), payload)
        })
        .collect();
    let thread_of: HashMap<String, String> = events
        .iter()
        .map(|(id, subject, _)| {
            (
                id.clone(),
                subject["chat.thread.".len()..subject.len() - ".message".len()].to_owned(),
            )
        })
        .collect();
    let js = app.jetstream().await;
    let publisher = tokio::spawn(async move {
        futures::stream::iter(events)
            .map(|(id, subject, payload)| {
                let js = js.clone();
                async move {
                    let ack =
                        publish_event(&js, &subject, &[("Nats-Msg-Id", &id)], payload.into()).await;
                    assert!(!ack.duplicate);
                    (id, ack.sequence)
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await
    });

    // Kill the projector as soon as the read model holds some of the events.
    let at_kill = eventually(
        "the projector to apply some events",
        PROJECTION_TIMEOUT,
        || {
            let db = db.clone();
            async move {
                let n = count(db).await;
                (n > 0).then_some(n)
            }
        },
    )
    .await;
    app.kill("projector", 0);
    let at_kill = at_kill.max(count(db.clone()).await);

    let published = within(
        "publishing 10,000 events",
        Duration::from_secs(300),
        publisher,
    )
    .await
    .expect("the publisher task");
    assert_eq!(published.len(), EVENTS);
    assert!(
        (at_kill as usize) < EVENTS,
        "the projector had applied all {EVENTS} events before it was killed; the test proves nothing"
    );
    eprintln!("projector killed with {at_kill} of {EVENTS} events applied");

    app.restart("projector", 0).await;
    eventually(
        "the restarted projector to catch up",
        Duration::from_secs(300),
        || {
            let db = db.clone();
            async move { (count(db).await as usize >= EVENTS).then_some(()) }
        },
    )
    .await;

    let (rows, ids, seqs): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(distinct id), count(distinct stream_seq) from messages",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (rows, ids, seqs),
        (EVENTS as i64, EVENTS as i64, EVENTS as i64)
    );

    let expected: HashMap<String, i64> = published
        .iter()
        .map(|(id, seq)| (id.clone(), *seq as i64))
        .collect();
    let stored: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("select id::text, stream_seq from messages")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(id, seq)| stored.get(*id) != Some(seq))
        .take(5)
        .map(|(id, seq)| format!("{id}: published at {seq}, stored at {:?}", stored.get(id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "events stored wrongly or not at all: {wrong:?}"
    );

    let thread_rows: i64 = sqlx::query_scalar("select count(*) from threads")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(thread_rows, THREADS as i64);

    // The API shows each thread's messages once each, in stream order.
    let by_seq: BTreeMap<u64, &String> = published.iter().map(|(id, seq)| (*seq, id)).collect();
    for thread in &threads {
        let stored = app.get_thread(thread).await;
        let got: Vec<&str> = stored["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = by_seq
            .values()
            .filter(|id| &thread_of[id.as_str()] == thread)
            .map(|id| id.as_str())
            .collect();
        assert_eq!(got.len(), EVENTS / THREADS, "thread {thread}");
        assert!(
            got == want,
            "thread {thread}: GET does not list its messages once each in stream order"
        );
    }
}
