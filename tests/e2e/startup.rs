//! Start-up: a role started before NATS or PostgreSQL answers `/healthz` with 200 and
//! `/readyz` with 503 naming what it waits for, retries until they answer, then serves; a malformed setting stops it at once with one clear line and a non-zero exit.

use crate::harness::*;
use std::time::Duration;

/// A free port on the loopback interface, for a role whose address the test must know before
/// the role logs it.
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Launches `role` on a known address; checks that while it waits for `dependency` it answers
/// `/healthz` with 200 and `/readyz` with 503 naming that dependency.
async fn launch_and_probe(app: &mut App, role: &str, dependency: &str) {
    let addr = free_addr().to_string();
    let index = app.launch(role, &[("LISTEN_ADDR", &addr)]);
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    let probe = |path: &'static str| {
        let client = Client::new(addr, addr, app.nats.url());
        async move {
            client
                .try_request_to(addr, "GET", path, None, None)
                .await
                .ok()
        }
    };
    let alive = eventually(
        &format!("{role} to answer /healthz while it waits"),
        PROJECTION_TIMEOUT,
        || probe("/healthz"),
    )
    .await;
    assert_eq!(alive.status, 200, "{role} /healthz: {}", alive.text);
    // A role connects to NATS first: with NATS up and PostgreSQL down, /readyz says NATS is ok.
    let others_ok =
        |body: &serde_json::Value| dependency == "nats" || body["checks"]["nats"] == "ok";
    let body = eventually(
        &format!("{role} /readyz to name {dependency} alone as unavailable"),
        PROJECTION_TIMEOUT,
        || async {
            let ready = probe("/readyz").await?;
            assert_eq!(ready.status, 503, "{role} /readyz: {}", ready.text);
            let body = ready.json();
            others_ok(&body).then_some(body)
        },
    )
    .await;
    assert_eq!(
        body["checks"][dependency], "unavailable",
        "{role} /readyz: {body}"
    );
    eventually(
        &format!("{role} to log a failed attempt to reach {dependency}"),
        PROJECTION_TIMEOUT,
        || async {
            let what = if dependency == "nats" {
                "NATS JetStream"
            } else {
                "PostgreSQL"
            };
            app.logs(role, index)
                .contains(&format!("connecting to {what} failed"))
                .then_some(())
        },
    )
    .await;
}

/// No services at first: the test launches them itself.
fn servers_only() -> crate::harness::app::Options {
    options()
        .replicas("api", 0)
        .replicas("projector", 0)
        .replicas("gateway", 0)
}

#[tokio::test]
async fn roles_started_before_nats_retry_and_then_serve() {
    let mut app = servers_only().start().await;
    app.nats.kill();
    for role in ["api", "projector", "gateway"] {
        launch_and_probe(&mut app, role, "nats").await;
    }
    app.nats.start_again();
    for role in ["api", "projector", "gateway"] {
        app.wait_ready(role, 0).await;
    }
    let client = app.client(0, 0);
    let thread = client.new_thread().await;
    let mut ws = client.connect_ws(&thread).await;
    let posted = client.say(&thread, "after a late start").await;
    assert_eq!(ws.next_text().await, posted.text);
    assert_eq!(
        message_ids(&client.get_thread(&thread).await),
        [posted.json()["id"].clone()]
    );
}

#[tokio::test]
async fn roles_started_before_postgres_retry_and_then_serve() {
    let mut app = servers_only().start().await;
    app.pg.stop();
    for role in ["api", "projector"] {
        launch_and_probe(&mut app, role, "database").await;
    }
    app.pg.start_again().await;
    app.wait_ready("api", 0).await;
    app.wait_ready("projector", 0).await;
    let api = app.addr("api", 0);
    let client = Client::new(api, api, app.nats.url());
    let thread = client.new_thread().await;
    let posted = client.say(&thread, "after a late start").await.json();
    assert_eq!(
        message_ids(&client.get_thread(&thread).await),
        [posted["id"].clone()]
    );
}

/// Runs `threadline <role>` with one setting changed; its exit status and standard error.
async fn run_with(role: &str, app: &App, key: &str, value: &str) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_threadline"));
    cmd.arg(role)
        .env_clear()
        .env("NO_COLOR", "1")
        .envs(app.env().iter().map(|(k, v)| (k, v)))
        .env(key, value)
        .kill_on_drop(true);
    let out = within(
        &format!("threadline {role} with {key}={value:?} to exit"),
        Duration::from_secs(30),
        cmd.output(),
    )
    .await
    .expect("running threadline");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_malformed_setting_stops_the_role_with_one_clear_line() {
    let app = servers_only().start().await;
    let cases = [
        ("api", "NATS_TIMEOUT", "soon", "NATS_TIMEOUT"),
        ("gateway", "LISTEN_ADDR", "nope", "LISTEN_ADDR"),
        ("api", "NATS_URL", "nats://bad url", "NATS_URL"),
        (
            "projector",
            "DATABASE_URL",
            "mysql://localhost/x",
            "DATABASE_URL",
        ),
        ("projector", "STREAM_NAME", "has.dots", "STREAM_NAME"),
        // Shorter than a second: the reminders every third of it could come too late.
        (
            "projector",
            "PROJECTOR_ACK_WAIT",
            "500ms",
            "PROJECTOR_ACK_WAIT",
        ),
        ("all", "SUBJECT_PREFIX", "a b", "SUBJECT_PREFIX"),
        // Renamed: silently ignoring it would count every visitor as the proxy.
        (
            "gateway",
            "WS_TRUSTED_PROXIES",
            "10.0.0.0/8",
            "WS_TRUSTED_PROXIES",
        ),
    ];
    for (role, key, value, named) in cases {
        let (code, stderr) = run_with(role, &app, key, value).await;
        assert!(
            matches!(code, Some(c) if c != 0),
            "{role} with {key}={value:?} exited with {code:?}: {stderr}"
        );
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("error") || l.contains("ERROR"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "{role} with {key}={value:?}: one error line expected:\n{stderr}"
        );
        let line = errors[0].to_ascii_uppercase().replace('-', "_");
        assert!(
            line.contains(named),
            "{role} with {key}={value:?}: the error does not name {named}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_seed_list_is_served_by_the_member_that_answers_and_reconnections_are_logged() {
    let mut app = servers_only().start().await;
    // The first member of the list is down: every role starts on the second.
    let seeds = format!("nats://{},{}", free_addr(), app.nats.url());
    for role in ["api", "projector", "gateway"] {
        app.launch(role, &[("NATS_URL", &seeds)]);
    }
    for role in ["api", "projector", "gateway"] {
        app.wait_ready(role, 0).await;
    }
    let client = app.client(0, 0);
    let thread = client.new_thread().await;
    let mut ws = client.connect_ws(&thread).await;
    let posted = client.say(&thread, "through a seed list").await;
    assert_eq!(ws.next_text().await, posted.text);

    // The server goes and comes back: each role logs the loss and the server it reached again,
    // without a restart.
    app.nats.restart();
    for role in ["api", "projector", "gateway"] {
        eventually(
            &format!("{role} to log that it reconnected"),
            PROJECTION_TIMEOUT,
            || async {
                let logs = app.logs(role, 0);
                (logs.contains("lost the connection to NATS")
                    && logs.contains("reconnected to NATS"))
                .then_some(())
            },
        )
        .await;
    }
    let again = client.say(&thread, "after the reconnection").await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(
        message_ids(&client.get_thread(&thread).await),
        [posted.json()["id"].clone(), again.json()["id"].clone()]
    );
    // The settings show no password of any member of the list.
    let refused = run_with(
        "api",
        &app,
        "NATS_URL",
        "nats://u:hunter2@127.0.0.1:1,nats://u:hunter3@127.0.0.1:notaport",
    )
    .await;
    assert!(matches!(refused.0, Some(c) if c != 0), "{refused:?}");
    assert!(refused.1.contains("NATS_URL"), "{}", refused.1);
    assert!(!refused.1.contains("hunter"), "{}", refused.1);
}

/// Runs `threadline <role>` with the app's settings and its NATS user; its exit status and
/// standard error, once it has exited.
async fn run_role(app: &App, role: &str, extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_threadline"));
    cmd.arg(role)
        .env_clear()
        .env("NO_COLOR", "1")
        .envs(app.env_of(role).iter().map(|(k, v)| (k, v)))
        .envs(extra.iter().copied())
        .kill_on_drop(true);
    let out = within(
        &format!("threadline {role} to refuse to start"),
        Duration::from_secs(30),
        cmd.output(),
    )
    .await
    .expect("running threadline");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one error line of a refused start (as the role logs it; tracing-subscriber's own
/// complaint about lines that the NATS client's tasks log after the writer is gone is not one).
fn one_error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    errors[0].to_owned()
}

#[tokio::test]
async fn a_role_refuses_streams_and_consumers_on_which_it_cannot_keep_its_promises() {
    use async_nats::jetstream::{consumer, stream};
    // Without NATS users: the test makes streams and consumers under names that no shipped
    // user may touch.
    let app = servers_only().open_nats().start().await;
    let jetstream = app.jetstream().await;

    // More replicas than a lone server holds.
    let (code, stderr) = run_role(&app, "api", &[("STREAM_REPLICAS", "3")]).await;
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains("STREAM_REPLICAS=3") && line.contains("not part of a JetStream cluster"),
        "{line}"
    );

    // A work-queue stream would delete events once consumed.
    jetstream
        .create_stream(stream::Config {
            name: "WORK".into(),
            subjects: vec![
                "work.thread.*.created".into(),
                "work.thread.*.message".into(),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("a work-queue stream");
    let (code, stderr) = run_role(
        &app,
        "projector",
        &[
            ("STREAM_NAME", "WORK"),
            ("SUBJECT_PREFIX", "work"),
            ("DEAD_LETTER_STREAM", "WORK_DEAD_LETTERS"),
        ],
    )
    .await;
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains("stream WORK has retention WorkQueue"),
        "{line}"
    );

    // A projector consumer that does not wait for acknowledgements could skip events.
    let mut app = app;
    app.start_replica("api", &[]).await;
    let events = jetstream
        .get_stream(crate::harness::client::STREAM)
        .await
        .expect("the event stream");
    events
        .create_consumer(consumer::pull::Config {
            durable_name: Some("careless".into()),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let (code, stderr) = run_role(&app, "projector", &[("PROJECTOR_CONSUMER", "careless")]).await;
    assert!(matches!(code, Some(c) if c != 0), "{code:?}: {stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains("consumer careless") && line.contains("acknowledgement None"),
        "{line}"
    );
}
