//! A projector that is stopped (SIGTERM, as a rolling deploy does) hands back the events it
//! has read but not applied, so that the next projector applies them at once: a GET of a
//! message posted just before the restart shows it well inside the read-your-writes wait,
//! instead of after the consumer's acknowledgement wait (`PROJECTOR_ACK_WAIT`).

use crate::harness::*;
use async_nats::jetstream;
use std::time::Duration;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Events posted while the projector cannot write: more than one batch in hand.
const BACKLOG: usize = 40;

/// Events the projector's consumer has delivered and not had acknowledged.
async fn delivered_unacknowledged(app: &App) -> u64 {
    let js = app.jetstream().await;
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("threadline-projector", "THREADLINE")
        .await
        .expect("the projector's consumer");
    consumer
        .info()
        .await
        .map(|info| info.num_ack_pending as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_message_posted_before_a_projector_restart_is_read_at_once_after_it() {
    // GETs wait for the projector at most this long: well below the consumer's
    // acknowledgement wait, set long here, before the broker gives an unacknowledged event to
    // another consumer instance.
    let mut app = options()
        .role_env("api", "READ_YOUR_WRITES_TIMEOUT", "10s")
        .role_env("projector", "PROJECTOR_ACK_WAIT", "60s")
        .start()
        .await;
    let thread = app.new_thread().await;
    let first = app.say(&thread, "before the backlog").await.expect(201);
    assert_eq!(
        message_ids(&app.get_thread(&thread).await),
        vec![first["id"].clone()]
    );

    // PostgreSQL stops answering: the projector holds a batch it cannot write and reads
    // the rest ahead.
    app.pg.pause();
    let mut posted = vec![first["id"].clone()];
    for i in 0..BACKLOG {
        let message = app.say(&thread, &format!("backlog {i}")).await.expect(201);
        posted.push(message["id"].clone());
    }
    eventually(
        "the projector to have read the whole backlog",
        PROJECTION_TIMEOUT,
        || async { (delivered_unacknowledged(&app).await >= BACKLOG as u64).then_some(()) },
    )
    .await;

    app.terminate("projector", 0);
    let status = app.wait_exit("projector", 0, SHUTDOWN_TIMEOUT).await;
    assert!(status.success(), "the projector exited with {status}");
    app.pg.resume();
    app.restart("projector", 0).await;

    let got = message_ids(&app.get_thread(&thread).await);
    let missing: Vec<_> = posted.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages posted before the restart are missing from GET",
        missing.len(),
        posted.len()
    );
    assert_eq!(got, posted, "every message once, in order");
}
