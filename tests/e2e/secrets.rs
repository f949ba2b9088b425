//! Credentials: no password or token given to threadline shows in `--help`, in the one line
//! of a refused setting or in the log lines of a start that keeps failing; and a role or
//! command given a password that the deployment examples publish refuses to start, unless
//! ALLOW_EXAMPLE_PASSWORDS says this is a trial.

use crate::harness::deployment::{env, run_threadline, servers, stderr, Env};
use crate::harness::process::Service;
use crate::harness::*;
use std::process::Output;
use std::time::Duration;

/// Planted in every credential; no output may show it.
const PLANTED: &str = "Pl4ntedSecret";

/// A port on the loopback interface where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Standard output and error of a finished command.
fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `threadline <args>` with exactly `settings`, expecting it to end within 30 s (a role
/// that does not refuse its settings would keep retrying instead).
async fn run_briefly(args: &[&str], settings: &Env) -> Output {
    within(
        &format!("threadline {} to stop at once", args.join(" ")),
        Duration::from_secs(30),
        run_threadline(args, settings),
    )
    .await
}

#[tokio::test]
async fn help_shows_no_credential_given_in_the_environment() {
    let settings = env(&[
        (
            "DATABASE_URL",
            &format!("postgres://threadline_api:{PLANTED}1@db:5432/threadline"),
        ),
        ("NATS_URL", &format!("nats://api:{PLANTED}2@nats:4222")),
        ("NATS_USER", "api"),
        ("NATS_PASSWORD", &format!("{PLANTED}3")),
        ("NATS_TOKEN", &format!("{PLANTED}4")),
        ("NATS_NKEY_SEED", &format!("SU{PLANTED}5")),
    ]);
    for args in [
        &["api", "--help"][..],
        &["projector", "--help"],
        &["gateway", "--help"],
        &["all", "--help"],
        &["migrate", "--help"],
        &["rebuild", "--help"],
        &["events", "tail", "--help"],
    ] {
        let output = run_briefly(args, &settings).await;
        let text = output_text(&output);
        assert!(output.status.success(), "{args:?}: {text}");
        assert!(
            text.contains("NATS_URL") || text.contains("DATABASE_URL"),
            "{args:?}: {text}"
        );
        assert!(
            !text.contains(PLANTED),
            "threadline {} shows a credential:\n{text}",
            args.join(" ")
        );
    }
}

#[tokio::test]
async fn a_url_that_does_not_parse_is_refused_without_its_password() {
    // A password holding `/` or `#` ends the URL's host part early, so the URL does not parse.
    let cases = [
        (
            "migrate",
            "DATABASE_URL",
            format!("postgres://threadline_owner:{PLANTED}/x@127.0.0.1:5432/threadline"),
        ),
        (
            "api",
            "DATABASE_URL",
            format!("postgres://threadline_api:{PLANTED}#x@127.0.0.1:5432/threadline"),
        ),
        (
            "gateway",
            "NATS_URL",
            format!("nats://gateway:{PLANTED}/x@127.0.0.1:4222"),
        ),
    ];
    for (role, setting, url) in cases {
        let output = run_briefly(&[role], &env(&[(setting, &url)])).await;
        let text = stderr(&output);
        assert!(!output.status.success(), "{role} {setting}={url}: {text}");
        assert!(text.contains(setting), "{role} {setting}={url}: {text}");
        assert!(
            !text.contains(PLANTED),
            "{role} with {setting}={url} shows the password:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_start_that_keeps_failing_logs_no_credential() {
    let (nats, _pg) = servers().await;
    let unreachable_nats = closed_port();
    let launches = [
        (
            "gateway",
            env(&[(
                "NATS_URL",
                &format!("nats://gateway:{PLANTED}1@127.0.0.1:{unreachable_nats}"),
            )]),
            "connecting to NATS JetStream failed",
        ),
        (
            "gateway",
            env(&[(
                "NATS_URL",
                &format!("nats://{PLANTED}2@127.0.0.1:{unreachable_nats}"),
            )]),
            "connecting to NATS JetStream failed",
        ),
        (
            "api",
            env(&[
                ("NATS_URL", &nats.url()),
                (
                    "DATABASE_URL",
                    &format!(
                        "postgres://threadline_api:{PLANTED}3@127.0.0.1:{}/threadline",
                        closed_port()
                    ),
                ),
            ]),
            "connecting to PostgreSQL failed",
        ),
    ];
    let mut services = Vec::new();
    for (n, (role, settings, failure)) in launches.into_iter().enumerate() {
        let mut settings = settings;
        settings.push(("LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        let service = Service::launch(&format!("{role}#{n}"), role, &settings);
        services.push((service, failure));
    }
    for (service, failure) in &services {
        let logs = eventually(
            &format!("{} to log two failed attempts", service.name),
            PROJECTION_TIMEOUT,
            || async {
                let logs = service.logs.dump();
                (logs.matches(failure).count() >= 2).then_some(logs)
            },
        )
        .await;
        assert!(
            !logs.contains(PLANTED),
            "{} logs a credential:\n{logs}",
            service.name
        );
    }
}

/// `postgres://<role>:<password>@host:port/<database>` on the cluster of `superuser_url`.
fn login_url(superuser_url: &str, role: &str, password: &str, database: &str) -> String {
    let host = superuser_url
        .trim_start_matches("postgres://postgres@")
        .split('/')
        .next()
        .expect("host:port");
    format!("postgres://{role}:{password}@{host}/{database}")
}

#[tokio::test]
async fn an_example_password_stops_a_role_unless_it_is_a_trial() {
    let (nats, pg) = servers().await;
    // A login with roles.sql's example password, made as the superuser: only a superuser
    // creates roles.
    let superuser = pg.url("postgres");
    let admin = sqlx::PgPool::connect(&superuser)
        .await
        .expect("connecting as the superuser");
    for statement in [
        "CREATE ROLE trial_owner LOGIN PASSWORD 'owner-change-me'",
        "CREATE DATABASE trial OWNER trial_owner",
    ] {
        sqlx::query(statement)
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    admin.close().await;
    let example_database = login_url(&superuser, "trial_owner", "owner-change-me", "trial");
    let example_nats = [
        ("NATS_USER", "gateway"),
        ("NATS_PASSWORD", "nats-gateway-change-me"),
    ];

    let refusals: [(&[&str], Env, &str); 4] = [
        (
            &["migrate"],
            env(&[("DATABASE_URL", &example_database)]),
            "DATABASE_URL",
        ),
        (
            &["api"],
            env(&[
                ("NATS_URL", &nats.url()),
                ("DATABASE_URL", &example_database),
            ]),
            "DATABASE_URL",
        ),
        (
            &["gateway"],
            env(&[&[("NATS_URL", nats.url().as_str())][..], &example_nats].concat()),
            "NATS_PASSWORD",
        ),
        (
            &["dead-letters", "list"],
            env(&[&[("NATS_URL", nats.url().as_str())][..], &example_nats].concat()),
            "NATS_PASSWORD",
        ),
    ];
    for (args, settings, named) in refusals {
        let output = run_briefly(args, &settings).await;
        let text = stderr(&output);
        assert!(!output.status.success(), "{args:?} started: {text}");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{text}");
        assert!(
            lines[0].contains(named) && lines[0].contains("ALLOW_EXAMPLE_PASSWORDS"),
            "{args:?}: the line does not name {named} and the way out:\n{text}"
        );
        assert!(!text.contains("change-me"), "{args:?}: {text}");
    }

    // For a trial, the same password is taken.
    let trial = env(&[
        ("DATABASE_URL", &example_database),
        ("ALLOW_EXAMPLE_PASSWORDS", "true"),
    ]);
    let migrated = run_briefly(&["migrate"], &trial).await;
    assert!(migrated.status.success(), "{}", stderr(&migrated));
}
