//! `Idempotency-Key`: a retried POST under the same key gets the original 201, byte for byte,
//! through any api replica, and the thread holds the message once; another body under a used
//! key gets 422. No phantom writes: a POST answered 503 while the broker is down is never
//! stored later, and one answered 503 while it hangs is made safe by retrying with its key.
//! The bucket of keys is bounded: unique keys fill it to IDEMPOTENCY_MAX_BYTES and no further,
//! a record holds its event once, and requests without a key are served all the while.

use crate::harness::*;
use async_nats::jetstream::stream::State;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn message(thread: &str, body: &str) -> Value {
    json!({"user": {"name": "V"}, "thread": thread, "body": body, "send_by_user": true})
}

#[tokio::test]
async fn a_retry_under_the_same_key_gets_the_original_201_through_any_replica() {
    let app = options().replicas("api", 2).start().await;
    let (first, second) = (app.client(0, 0), app.client(1, 0));
    let thread_key = new_id();
    let created = first
        .post_with_key("/chat/thread/", &json!({"user": {"n": 1}}), &thread_key)
        .await
        .expect("an answer");
    let again = second
        .post_with_key("/chat/thread/", &json!({"user": {"n": 1}}), &thread_key)
        .await
        .expect("an answer");
    assert_eq!((created.status, again.status), (201, 201));
    assert_eq!(again.text, created.text, "the retry's answer differs");
    let thread = created.json()["id"].as_str().expect("an id").to_owned();

    let key = new_id();
    let body = message(&thread, "once");
    let mut answers = Vec::new();
    for client in [&first, &second, &first, &second] {
        let answer = client
            .post_with_key("/chat/message/", &body, &key)
            .await
            .expect("an answer");
        assert_eq!(answer.status, 201, "{}", answer.text);
        answers.push(answer.text);
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    let posted: Value = serde_json::from_str(&answers[0]).expect("JSON");
    assert_eq!(
        message_ids(&second.get_thread(&thread).await),
        [posted["id"].clone()],
        "the thread holds the message once"
    );

    let reused = first
        .post_with_key("/chat/message/", &message(&thread, "another body"), &key)
        .await
        .expect("an answer");
    let detail = reused.expect(422);
    assert_eq!(keys(&detail), ["detail"], "{detail}");
    // A different key is a different request.
    let other = first
        .post_with_key("/chat/message/", &body, &new_id())
        .await
        .expect("an answer");
    assert_eq!(other.status, 201);
    assert_eq!(message_ids(&first.get_thread(&thread).await).len(), 2);
}

#[tokio::test]
async fn an_empty_idempotency_key_is_refused() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let answer = app
        .post_with_key("/chat/message/", &message(&thread, "x"), "")
        .await
        .expect("an answer");
    assert_eq!(keys(&answer.expect(400)), ["detail"]);
}

#[tokio::test]
async fn a_post_answered_503_while_nats_hangs_is_stored_once_when_retried_with_its_key() {
    let timeout = Duration::from_secs(2);
    let mut app = options().env("NATS_TIMEOUT", "2s").start().await;
    let thread = app.new_thread().await;
    let key = new_id();
    let body = message(&thread, "during the hang");

    app.nats.pause();
    let started = Instant::now();
    let answer = app
        .post_with_key("/chat/message/", &body, &key)
        .await
        .expect("an answer");
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert!(
        took < timeout + Duration::from_secs(1),
        "the 503 took {took:?}, more than NATS_TIMEOUT + 1 s"
    );
    app.nats.resume();

    let retried = eventually("the retry to be accepted", PROJECTION_TIMEOUT, || async {
        let answer = app
            .post_with_key("/chat/message/", &body, &key)
            .await
            .ok()?;
        (answer.status == 201).then_some(answer)
    })
    .await;
    let posted = retried.json();
    assert_eq!(posted["body"], "during the hang");
    // A marker after the retry: once it is listed, everything stored before it is too.
    let marker = app.say(&thread, "marker").await.json();
    let ids = eventually("the marker in GET", PROJECTION_TIMEOUT, || async {
        let ids = message_ids(&app.get_thread(&thread).await);
        ids.contains(&marker["id"]).then_some(ids)
    })
    .await;
    assert_eq!(
        ids,
        [posted["id"].clone(), marker["id"].clone()],
        "the message is stored exactly once"
    );
}

#[tokio::test]
async fn a_post_answered_503_while_nats_is_down_is_never_stored() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    app.nats.kill();
    // The API notices the lost connection within moments.
    eventually("the api to see NATS down", PROJECTION_TIMEOUT, || async {
        let ready = app.get("/readyz").await;
        (ready.status == 503).then_some(())
    })
    .await;
    let started = Instant::now();
    let answer = app.post_message(&message(&thread, "never")).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the 503 took {:?}",
        started.elapsed()
    );

    app.nats.start_again();
    let marker = eventually(
        "a POST to be accepted again",
        PROJECTION_TIMEOUT,
        || async {
            let answer = app.post_message(&message(&thread, "marker")).await;
            (answer.status == 201).then(|| answer.json())
        },
    )
    .await;
    let ids = eventually("the marker in GET", PROJECTION_TIMEOUT, || async {
        let ids = message_ids(&app.get_thread(&thread).await);
        ids.contains(&marker["id"]).then_some(ids)
    })
    .await;
    assert_eq!(
        ids,
        [marker["id"].clone()],
        "the message answered 503 was stored"
    );
}

/// The state of the api's idempotency bucket's stream.
async fn bucket(app: &App) -> State {
    app.jetstream()
        .await
        .get_stream("KV_THREADLINE_IDEMPOTENCY")
        .await
        .expect("the idempotency bucket")
        .info()
        .await
        .expect("its info")
        .state
        .clone()
}

#[tokio::test]
async fn unique_keys_fill_the_bucket_to_its_bound_and_plain_posts_go_on() {
    const BOUND: u64 = 64 * 1024;
    let app = options()
        .env("IDEMPOTENCY_MAX_BYTES", "64KiB")
        .start()
        .await;
    let thread = app.new_thread().await;
    let body = message(&thread, &"x".repeat(1000));
    let first_key = new_id();
    let first = app
        .post_with_key("/chat/message/", &body, &first_key)
        .await
        .expect("an answer");
    assert_eq!(first.status, 201, "{}", first.text);
    // Each record holds about 1 kB: the bound is reached long before 200 of them.
    let mut refused = None;
    for n in 1..200 {
        let answer = app
            .post_with_key("/chat/message/", &body, &new_id())
            .await
            .expect("an answer");
        match answer.status {
            201 => {}
            503 => {
                refused = Some(n);
                break;
            }
            other => panic!("a keyed POST answered {other}: {}", answer.text),
        }
    }
    let stored = bucket(&app).await;
    assert!(
        refused.is_some(),
        "200 unique keys were all recorded: the bucket holds {} bytes",
        stored.bytes
    );
    assert!(
        stored.bytes <= BOUND,
        "the bucket holds {} bytes, more than its bound",
        stored.bytes
    );
    // The operator reads why, naming the setting.
    eventually(
        "the api to log that the bucket is full",
        PROJECTION_TIMEOUT,
        || async {
            app.logs("api", 0)
                .contains("IDEMPOTENCY_MAX_BYTES")
                .then_some(())
        },
    )
    .await;
    // Requests without a key do not need the bucket.
    let plain = app.say(&thread, "without a key").await;
    assert_eq!(plain.status, 201, "{}", plain.text);
    // A key recorded before the bucket filled still gets its answer.
    let again = app
        .post_with_key("/chat/message/", &body, &first_key)
        .await
        .expect("an answer");
    assert_eq!((again.status, again.text), (201, first.text));
}

#[tokio::test]
async fn a_record_holds_its_event_once() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    let text = "y".repeat(100_000);
    let key = new_id();
    let posted = app
        .post_with_key("/chat/message/", &message(&thread, &text), &key)
        .await
        .expect("an answer");
    assert_eq!(posted.status, 201, "{}", posted.text);
    let stored = bucket(&app).await;
    assert_eq!(stored.messages, 1);
    assert!(
        stored.bytes < 110_000,
        "a record of a {}-byte event takes {} bytes",
        posted.text.len(),
        stored.bytes
    );
    let again = app
        .post_with_key("/chat/message/", &message(&thread, &text), &key)
        .await
        .expect("an answer");
    assert_eq!((again.status, again.text), (201, posted.text));
}

#[tokio::test]
async fn a_keyed_event_too_large_for_the_log_is_413_and_leaves_no_record() {
    // nats-server's own default max_payload is 1 MB, below the API's 2.5 MiB body limit.
    let app = options().nats_config("").start().await;
    let thread = app.new_thread().await;
    let max = app.nats().await.server_info().max_payload;
    let too_large = app
        .post_with_key(
            "/chat/message/",
            &message(&thread, &"a".repeat(1_500_000)),
            &new_id(),
        )
        .await
        .expect("an answer");
    assert_eq!(too_large.status, 413, "{}", too_large.text);
    assert_eq!(bucket(&app).await.messages, 0);
    // Around the log's limit, every refused event leaves no record and every stored one one.
    let mut recorded = 0;
    for size in (max - 1200..max).step_by(100) {
        let answer = app
            .post_with_key(
                "/chat/message/",
                &message(&thread, &"e".repeat(size)),
                &new_id(),
            )
            .await
            .expect("an answer");
        match answer.status {
            201 => recorded += 1,
            413 => {}
            other => panic!("a {size}-byte body answered {other}: {}", answer.text),
        }
        assert_eq!(
            bucket(&app).await.messages,
            recorded,
            "after a {size}-byte body"
        );
    }
    assert!(recorded > 0, "no body near the limit was stored");
}

#[tokio::test]
async fn a_key_refused_for_another_cause_is_not_logged_as_a_full_bucket() {
    let app = spawn_app().await;
    let thread = app.new_thread().await;
    // The bucket gone (an operator's mistake): the key cannot be recorded, but not for lack
    // of room, and the operator must not be sent to IDEMPOTENCY_MAX_BYTES.
    app.jetstream()
        .await
        .delete_stream("KV_THREADLINE_IDEMPOTENCY")
        .await
        .expect("the bucket deleted");
    let answer = app
        .post_with_key("/chat/message/", &message(&thread, "x"), &new_id())
        .await
        .expect("an answer");
    assert_eq!(answer.status, 503, "{}", answer.text);
    eventually("the api to log the 503", PROJECTION_TIMEOUT, || async {
        app.logs("api", 0).contains("answering 503").then_some(())
    })
    .await;
    assert!(
        !app.logs("api", 0).contains("IDEMPOTENCY_MAX_BYTES"),
        "the refusal was logged as a full bucket: {}",
        app.logs("api", 0).dump()
    );
}

#[tokio::test]
async fn the_bucket_is_read_from_its_leader_even_when_an_earlier_version_made_it() {
    let mut app = spawn_app().await;
    let jetstream = app.jetstream().await;
    let info = |jetstream: async_nats::jetstream::Context| async move {
        jetstream
            .get_stream("KV_THREADLINE_IDEMPOTENCY")
            .await
            .expect("the idempotency bucket")
            .info()
            .await
            .expect("its info")
            .config
            .clone()
    };
    // Direct gets, which any replica may answer from behind, are off.
    let mut config = info(jetstream.clone()).await;
    assert!(!config.allow_direct, "{config:?}");
    // As earlier versions made it: a restarted api turns them off again.
    config.allow_direct = true;
    jetstream
        .update_stream(&config)
        .await
        .expect("the bucket updated");
    app.restart("api", 0).await;
    assert!(!info(jetstream.clone()).await.allow_direct);
    // And it keeps its promise.
    let thread = app.new_thread().await;
    let key = new_id();
    let first = app
        .post_with_key("/chat/message/", &message(&thread, "once"), &key)
        .await
        .expect("an answer");
    assert_eq!(first.status, 201, "{}", first.text);
    let again = app
        .post_with_key("/chat/message/", &message(&thread, "once"), &key)
        .await
        .expect("an answer");
    assert_eq!(again.text, first.text);
}
