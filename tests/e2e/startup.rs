//! Start-up: a role started before NATS or PostgreSQL retries until they answer, then
//! serves; a malformed setting stops it at once with one clear line and a non-zero exit.

use crate::harness::*;
use std::time::Duration;

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
        app.launch(role, &[]);
    }
    for role in ["api", "projector", "gateway"] {
        eventually(
            &format!("{role} to log a failed attempt to reach NATS"),
            PROJECTION_TIMEOUT,
            || async {
                app.logs(role, 0)
                    .contains("connecting to NATS JetStream failed")
                    .then_some(())
            },
        )
        .await;
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
        app.launch(role, &[]);
    }
    for role in ["api", "projector"] {
        eventually(
            &format!("{role} to log a failed attempt to reach PostgreSQL"),
            PROJECTION_TIMEOUT,
            || async {
                app.logs(role, 0)
                    .contains("connecting to PostgreSQL failed")
                    .then_some(())
            },
        )
        .await;
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
        ("all", "SUBJECT_PREFIX", "a b", "SUBJECT_PREFIX"),
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
