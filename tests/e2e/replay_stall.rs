//! A replay whose writer stands still (PostgreSQL stopped, a long index build) while events
//! keep arriving: its reader holds events it cannot hand on, for longer than the NATS
//! client's idle-heartbeat check, and the rebuild still completes, and `verify` agrees.

use crate::harness::client::{STREAM, SUBJECT_PREFIX};
use crate::harness::operator::run_command;
use crate::harness::seed::seed;
use crate::harness::*;
use crate::rebuild_switch::{last_sequence, Operator};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long PostgreSQL stands still: past twice the reader's heartbeat interval (5 s), after
/// which the client reports a missed heartbeat.
const STALL: Duration = Duration::from_secs(15);

/// Publishes agent replies to `thread` straight to JetStream, as the Slack integration does,
/// about 20 a second, until stopped.
struct Replies {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Replies {
    async fn start(app: &App, thread: &str) -> Replies {
        let js = app.jetstream().await;
        let subject = format!("{SUBJECT_PREFIX}.thread.{thread}.message");
        let thread = thread.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, published) = (stop.clone(), published.clone());
            async move {
                // A pace, not a wait for readiness.
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    n += 1;
                    let reply = agent_reply(&new_id(), &thread, &format!("reply {n}"));
                    let ack = js
                        .publish(subject.clone(), reply.into())
                        .await
                        .expect("publishing a reply");
                    let seq = ack.await.expect("the reply's ack").sequence;
                    published.fetch_max(seq, Ordering::SeqCst);
                }
            }
        });
        Replies {
            stop,
            published,
            task,
        }
    }

    /// Waits until `more` replies past those so far are stored.
    async fn wait_for_more(&self, more: u64) {
        let target = self.published.load(Ordering::SeqCst) + more;
        eventually("more replies stored", Duration::from_secs(60), || async {
            (self.published.load(Ordering::SeqCst) >= target).then_some(())
        })
        .await;
    }

    /// Stops; the sequence of the last reply stored.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the publisher failed");
        self.published.load(Ordering::SeqCst)
    }
}

/// Whether a rebuild's or verify's reader has received events: its consumer on the stream.
async fn replay_has_begun(app: &App) -> Option<()> {
    let js = app.jetstream().await;
    let stream = js.get_stream(STREAM).await.ok()?;
    let mut consumers = stream.consumers();
    while let Some(Ok(info)) = futures::StreamExt::next(&mut consumers).await {
        if info.config.description.as_deref() == Some("threadline replay")
            && info.delivered.stream_sequence > 0
        {
            return Some(());
        }
    }
    None
}

#[tokio::test]
async fn a_rebuild_outlasts_postgresql_standing_still_while_events_arrive() {
    let mut app = spawn_app().await;
    let (threads, last) = seed(&app, 150, 200).await;
    app.wait_applied(last).await;
    let replies = Replies::start(&app, &threads[0]).await;

    let mut rebuild = Operator::start(&app, &["rebuild"]);
    eventually("the rebuild to read the stream", COMMAND_WAIT, || {
        replay_has_begun(&app)
    })
    .await;
    app.pg.pause();
    rebuild
        .assert_running("the rebuild finished before PostgreSQL stopped; the test proves nothing");
    // The length of the fault, not a wait for readiness: the reader receives replies it
    // cannot hand on to the stopped writer.
    tokio::time::sleep(STALL).await;
    replies.wait_for_more(10).await;
    app.pg.resume();

    let (code, stdout, log) = rebuild.finish().await;
    assert_eq!(code, Some(0), "{stdout}\n{log}");
    assert!(stdout.contains("rebuilt the read model from"), "{stdout}");
    let through = replies.stop().await.max(last_sequence(&app).await);
    app.wait_applied(through).await;
    run_command(&app, &["verify"]).await.expect(0);
}

const COMMAND_WAIT: Duration = Duration::from_secs(60);

/// The server deletes the reader's consumer once the reader has stood still past the
/// consumer's inactivity threshold (a writer stopped for minutes); deleted here by hand while
/// PostgreSQL stands still, the rebuild reads on with a new consumer from where it was.
#[tokio::test]
async fn a_rebuild_reads_on_when_its_consumer_is_deleted_while_postgresql_stands_still() {
    let mut app = spawn_app().await;
    let (threads, last) = seed(&app, 150, 200).await;
    app.wait_applied(last).await;
    let replies = Replies::start(&app, &threads[0]).await;

    let mut rebuild = Operator::start(&app, &["rebuild"]);
    eventually("the rebuild to read the stream", COMMAND_WAIT, || {
        replay_has_begun(&app)
    })
    .await;
    app.pg.pause();
    rebuild
        .assert_running("the rebuild finished before PostgreSQL stopped; the test proves nothing");
    let js = app.jetstream().await;
    let stream = js.get_stream(STREAM).await.expect("the event stream");
    let mut names = stream.consumer_names();
    let mut deleted = 0;
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        let name = name.expect("a consumer's name");
        let info = stream
            .consumer_info(&name)
            .await
            .expect("the consumer's info");
        if info.config.description.as_deref() == Some("threadline replay") {
            stream
                .delete_consumer(&name)
                .await
                .expect("deleting the consumer");
            deleted += 1;
        }
    }
    assert_eq!(deleted, 1, "the rebuild's consumer");
    replies.wait_for_more(10).await;
    app.pg.resume();

    let (code, stdout, log) = rebuild.finish().await;
    assert_eq!(code, Some(0), "{stdout}\n{log}");
    assert!(log.contains("with a new consumer"), "{log}");
    let through = replies.stop().await.max(last_sequence(&app).await);
    app.wait_applied(through).await;
    run_command(&app, &["verify"]).await.expect(0);
}
