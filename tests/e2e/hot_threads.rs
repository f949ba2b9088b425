//! Threads the API keeps in memory (`HOT_THREADS_BYTES`): answered without PostgreSQL, and
//! never older than the read model would answer: not after a write through another replica,
//! and not after a rebuild replaced the read model.

use crate::harness::metrics::{sample, scrape};
use crate::harness::operator::run_command;
use crate::harness::*;
use serde_json::Value;

const READS: &str = "threadline_api_thread_reads_total";

fn last_body(thread: &Value) -> String {
    thread["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["body"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_thread_kept_by_one_replica_shows_at_once_what_another_stored() {
    let app = options().replicas("api", 2).start().await;
    let writer = app.client(0, 0);
    let reader = app.client(1, 0);
    let thread = writer.new_thread().await;
    reader.get_thread(&thread).await;
    for i in 0..100 {
        let body = format!("message {i}");
        writer.say(&thread, &body).await;
        // The reader kept the thread as it was before this message.
        let first = reader.get_thread(&thread).await;
        assert_eq!(
            last_body(&first),
            body,
            "a write through the other replica is missing"
        );
        assert_eq!(first["messages"].as_array().map(Vec::len), Some(i + 1));
        let again = reader.get_thread(&thread).await;
        assert_eq!(again, first);
    }
    let metrics = scrape(&app, app.addr("api", 1)).await;
    let from_memory = sample(&metrics, READS, &[("from", "memory")]).unwrap_or(0.0);
    // Every second GET finds nothing newer in the log: it is answered from memory.
    assert!(
        from_memory >= 100.0,
        "{from_memory} GETs from memory\n{metrics}"
    );
}

#[tokio::test]
async fn after_a_rebuild_no_replica_answers_the_read_model_it_replaced() {
    let mut app = options().replicas("api", 2).start().await;
    let thread = app.new_thread().await;
    for body in ["one", "two", "three"] {
        app.say(&thread, body).await;
    }
    // A row broken by hand before anything reads it: both replicas keep the broken thread.
    // A 201 does not wait for the projector: the row is broken once the projector wrote it.
    let db = app.db().await;
    eventually(
        "the projector to store the message to break",
        PROJECTION_TIMEOUT,
        || async {
            let broken = sqlx::query(
                "UPDATE messages SET body = 'broken by hand', \
                 json = replace(json, '\"two\"', '\"broken by hand\"') WHERE body = 'two'",
            )
            .execute(&db)
            .await
            .expect("breaking a row");
            (broken.rows_affected() == 1).then_some(())
        },
    )
    .await;
    let replicas = [app.client(0, 0), app.client(1, 0)];
    for replica in &replicas {
        let broken = replica.get_thread(&thread).await;
        assert_eq!(broken["messages"][1]["body"], "broken by hand");
        assert_eq!(replica.get_thread(&thread).await, broken);
    }
    for i in 0..2 {
        let metrics = scrape(&app, app.addr("api", i)).await;
        assert!(
            sample(&metrics, READS, &[("from", "memory")]).is_some_and(|n| n >= 1.0),
            "api {i} did not keep the thread\n{metrics}"
        );
    }

    run_command(&app, &["rebuild"]).await.expect(0);
    for replica in &replicas {
        eventually(
            "the replica to answer the rebuilt thread",
            std::time::Duration::from_secs(5),
            || async {
                let thread = replica.get_thread(&thread).await;
                (thread["messages"][1]["body"] == "two").then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn what_was_kept_before_postgresql_went_away_is_read_again() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    app.say(&thread, "before").await;
    let kept = app.get_thread(&thread).await;
    assert_eq!(app.get_thread(&thread).await, kept);

    // The api's listening connection goes with it: changes announced until it listens again
    // are not heard.
    app.pg.stop();
    app.pg.start_again().await;
    // A change made while nothing listened, never announced.
    let db = app.db().await;
    sqlx::query(
        "UPDATE messages SET body = 'changed while away', \
         json = replace(json, '\"before\"', '\"changed while away\"')",
    )
    .execute(&db)
    .await
    .unwrap();
    eventually(
        "GET to answer the thread as PostgreSQL holds it",
        PROJECTION_TIMEOUT,
        || async {
            let response = app.get(&format!("/chat/thread/{thread}/")).await;
            (response.status == 200
                && response.json()["messages"][0]["body"] == "changed while away")
                .then_some(())
        },
    )
    .await;
}

/// GETs of the first api answered from memory so far.
async fn from_memory(app: &App) -> f64 {
    let metrics = scrape(app, app.addr("api", 0)).await;
    sample(&metrics, READS, &[("from", "memory")]).unwrap_or(0.0)
}

#[tokio::test]
async fn nothing_is_answered_from_memory_while_postgresql_is_silent() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    app.say(&thread, "kept").await;
    let kept = app.get_thread(&thread).await;
    assert_eq!(app.get_thread(&thread).await, kept);
    assert!(from_memory(&app).await >= 1.0, "the thread was not kept");

    // The api's listening connection stays open and hears nothing, as a connection does
    // whose server or network went away without a reset: a rebuild's notice would be
    // missed, so the kept thread must not be answered.
    app.pg.pause();
    let path = format!("/chat/thread/{thread}/");
    eventually(
        "GETs to stop answering from memory",
        std::time::Duration::from_secs(20),
        || async {
            let answer = app.get(&path).await;
            (answer.status != 200).then_some(())
        },
    )
    .await;

    app.pg.resume();
    let before = from_memory(&app).await;
    eventually(
        "GETs to answer from memory again",
        PROJECTION_TIMEOUT,
        || async {
            let answer = app.get(&path).await;
            (answer.status == 200 && answer.json() == kept && from_memory(&app).await > before)
                .then_some(())
        },
    )
    .await;
}
