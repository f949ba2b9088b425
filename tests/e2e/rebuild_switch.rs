//! The rebuild's switch-over beside a reader that holds the serving tables (an operator's
//! `psql` transaction, `pg_dump`, a long streamed GET): it waits a bounded time for its
//! locks, gives way, says so and tries again; GETs and POSTs answer as usual meanwhile, and
//! the rebuild completes once the reader is done.

use crate::harness::client::{REQUEST_TIMEOUT, STREAM};
use crate::harness::load::Load;
use crate::harness::operator::{app_env, command, run_command, COMMAND_TIMEOUT};
use crate::harness::seed::seed;
use crate::harness::*;
use sqlx::Connection;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// `threadline <args>` run as an operator runs it, its standard error (the progress log)
/// gathered line by line while it runs.
pub struct Operator {
    pub child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Operator {
    pub fn start(app: &App, args: &[&str]) -> Operator {
        let mut child = command(args, &app_env(app))
            .spawn()
            .unwrap_or_else(|e| panic!("starting threadline {args:?}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let gathered = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                gathered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
            }
        });
        Operator { child, stderr }
    }

    /// How many lines of its progress log contain `text`.
    pub fn logged(&self, text: &str) -> usize {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().filter(|l| l.contains(text)).count()
    }

    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Panics with its output if it has exited.
    #[track_caller]
    pub fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what}: it exited with {status}\n{}", self.log());
        }
    }

    /// Waits (bounded) for it to exit; its exit code and standard output.
    pub async fn finish(mut self) -> (Option<i32>, String, String) {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            use tokio::io::AsyncReadExt;
            within("reading the command's output", COMMAND_TIMEOUT, async {
                out.read_to_string(&mut stdout).await
            })
            .await
            .expect("reading standard output");
        }
        let status = within("the command to exit", COMMAND_TIMEOUT, self.child.wait())
            .await
            .expect("waiting for the command");
        (status.code(), stdout, self.log())
    }
}

/// The stream's last sequence.
pub async fn last_sequence(app: &App) -> u64 {
    let js = app.jetstream().await;
    let mut stream = js.get_stream(STREAM).await.expect("the event stream");
    stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence
}

#[tokio::test]
async fn a_reader_holding_the_tables_delays_the_switch_over_and_no_request() {
    let app = spawn_app().await;
    let (threads, last) = seed(&app, 40, 20).await;
    app.wait_applied(last).await;
    let live = app.new_thread().await;

    // An operator's session that reads `messages` in a transaction it leaves open, as `psql`
    // after BEGIN does: its lock conflicts with the switch-over's ALTER TABLE. (The harness's
    // superuser connects; any role that may read the table takes the same lock.)
    let mut session = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("an operator's session");
    let mut reading = session.begin().await.expect("a transaction");
    sqlx::query("SELECT count(*) FROM messages")
        .execute(&mut *reading)
        .await
        .expect("reading the messages");

    let mut rebuild = Operator::start(&app, &["rebuild"]);
    // Until the switch-over has given way twice (so it has tried again once), every request
    // answers as usual: a thread that is not in the api's memory, and read-your-writes.
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut posted = Vec::new();
    let mut i = 0;
    while rebuild.logged("gave way") < 2 {
        assert!(
            Instant::now() < deadline,
            "the switch-over never gave way to the reader\n{}",
            rebuild.log()
        );
        rebuild.assert_running("the rebuild cannot switch over while the reader holds its lock");
        let thread = &threads[i % threads.len()];
        let got = app.get(&format!("/chat/thread/{thread}/")).await;
        assert_eq!(
            got.status,
            200,
            "GET while the switch-over waits: {}\n{}",
            got.text,
            rebuild.log()
        );
        assert_eq!(got.json()["messages"].as_array().map(Vec::len), Some(19));
        let sent = app.say(&live, &format!("while the switch waits {i}")).await;
        assert_eq!(sent.status, 201, "POST: {}\n{}", sent.text, rebuild.log());
        posted.push(sent.json()["id"].clone());
        let thread = within(
            "a GET after a POST",
            REQUEST_TIMEOUT,
            app.get(&format!("/chat/thread/{live}/")),
        )
        .await;
        assert_eq!(
            thread.status,
            200,
            "GET after POST while the switch-over waits: {}\n{}",
            thread.text,
            rebuild.log()
        );
        assert_eq!(message_ids(&thread.json()), posted);
        i += 1;
    }

    reading
        .commit()
        .await
        .expect("ending the reader's transaction");
    let (code, stdout, log) = rebuild.finish().await;
    assert_eq!(code, Some(0), "{stdout}\n{log}");
    assert!(stdout.contains("rebuilt the read model from"), "{stdout}");

    let after = app.say(&live, "after the rebuild").await.json();
    posted.push(after["id"].clone());
    assert_eq!(message_ids(&app.get_thread(&live).await), posted);
    run_command(&app, &["verify"]).await.expect(0);
}

/// An operator restarts the projector while the switch-over gives way to a reader, under a
/// steady load of POSTs: the rebuild completes once the reader is done, every accepted
/// message is in the new read model, and `verify` agrees.
#[tokio::test]
async fn the_projector_restarted_while_the_switch_over_waits_loses_nothing() {
    let mut app = spawn_app().await;
    let (_, last) = seed(&app, 20, 10).await;
    app.wait_applied(last).await;
    let live = app.new_thread().await;
    let load = Load::paced(&app, &live, 20);

    // As above, an operator's open transaction that has read `messages` (as the superuser).
    let mut session = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("an operator's session");
    let mut reading = session.begin().await.expect("a transaction");
    sqlx::query("SELECT count(*) FROM messages")
        .execute(&mut *reading)
        .await
        .expect("reading the messages");

    let rebuild = Operator::start(&app, &["rebuild"]);
    eventually("the switch-over to give way", COMMAND_TIMEOUT, || async {
        (rebuild.logged("gave way") >= 1).then_some(())
    })
    .await;
    app.terminate("projector", 0);
    app.wait_exit("projector", 0, COMMAND_TIMEOUT).await;
    app.restart("projector", 0).await;
    let before = rebuild.logged("gave way");
    eventually(
        "the switch-over to try again beside the new projector",
        COMMAND_TIMEOUT,
        || async { (rebuild.logged("gave way") > before).then_some(()) },
    )
    .await;
    load.wait_for_more(10, COMMAND_TIMEOUT).await;

    reading
        .commit()
        .await
        .expect("ending the reader's transaction");
    let (code, stdout, log) = rebuild.finish().await;
    assert_eq!(code, Some(0), "{stdout}\n{log}");
    load.wait_for_more(10, COMMAND_TIMEOUT).await;
    let mut accepted = load.stop().await;
    app.wait_applied(last_sequence(&app).await).await;
    let mut stored = message_ids(&app.get_thread(&live).await);
    let key = |v: &serde_json::Value| v.to_string();
    accepted.sort_by_key(key);
    stored.sort_by_key(key);
    assert_eq!(
        stored, accepted,
        "the accepted messages and the stored ones"
    );
    run_command(&app, &["verify"]).await.expect(0);
}
