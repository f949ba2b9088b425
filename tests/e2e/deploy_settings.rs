//! The settings a production deployment uses: least-privileged PostgreSQL roles with a
//! separate `threadline migrate`, JSON logs with a request id on every line a request or a
//! socket causes, CORS, and the streams' replicas and limits.

use crate::harness::deployment::{
    env, json_lines, run_threadline, send, servers, stderr, Env, Roles,
};
use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn roles_with_least_privilege_serve_after_a_separate_migration() {
    let (nats, pg) = servers().await;
    // deploy/postgres/roles.sql, run by psql as an operator runs it.
    let roles = pg.deploy_roles().await;
    let (owner, api_url, projector_url) = (roles.owner, roles.api, roles.projector);

    // Before the migration, a role that may not create tables cannot start by itself.
    let api_alone = run_threadline(
        &["migrate"],
        &env(&[("DATABASE_URL", &api_url), ("DATABASE_TIMEOUT", "2s")]),
    )
    .await;
    assert!(!api_alone.status.success(), "the api role migrated");
    assert!(
        stderr(&api_alone).contains("permission denied"),
        "{}",
        stderr(&api_alone)
    );

    let as_owner = env(&[("DATABASE_URL", &owner)]);
    let migrated = run_threadline(&["migrate"], &as_owner).await;
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let again = run_threadline(&["migrate"], &as_owner).await;
    assert!(
        again.status.success(),
        "a second migrate: {}",
        stderr(&again)
    );

    let nats_url = nats.url();
    let role = |url: &str| -> Env {
        env(&[
            ("NATS_URL", &nats_url),
            ("DATABASE_URL", url),
            ("MIGRATE_ON_START", "false"),
        ])
    };
    let mut roles = Roles::default();
    let api = roles.spawn("api", &role(&api_url)).await;
    roles.spawn("projector", &role(&projector_url)).await;

    let thread = send(
        api,
        "POST",
        "/chat/thread/",
        &[],
        Some(&json!({"user": "Ada"})),
    )
    .await;
    assert_eq!(thread.status, 201, "{}", thread.text);
    let id = thread.json()["id"].as_str().expect("id").to_owned();
    let posted = send(
        api,
        "POST",
        "/chat/message/",
        &[],
        Some(&json!({"user": "Ada", "thread": id, "body": "hi", "send_by_user": true})),
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.text);
    let got = send(api, "GET", &format!("/chat/thread/{id}/"), &[], None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["messages"][0]["body"], "hi");

    // What each role may not do.
    let as_api = sqlx::PgPool::connect(&api_url).await.expect("api role");
    let insert = sqlx::query(
        "INSERT INTO threads (id, user_json, created_at, stream_seq) VALUES (gen_random_uuid(), '1', now(), 1)",
    )
    .execute(&as_api)
    .await;
    assert!(
        insert.is_err_and(|e| e.to_string().contains("permission denied")),
        "the api role could write"
    );
    let as_projector = sqlx::PgPool::connect(&projector_url)
        .await
        .expect("projector role");
    // It may delete rows (an erased thread's), but neither change nor drop a table.
    for ddl in [
        "CREATE TABLE intruder (x int)",
        "ALTER TABLE messages ADD COLUMN intruder int",
        "TRUNCATE messages",
        "DROP TABLE threads",
    ] {
        let denied = sqlx::query(ddl).execute(&as_projector).await;
        assert!(
            denied.is_err_and(|e| e.to_string().contains("permission denied")
                || e.to_string().contains("must be owner")),
            "the projector role could run {ddl}"
        );
    }
}

#[tokio::test]
async fn migrate_with_a_bad_url_fails_with_one_line() {
    let output = run_threadline(
        &["migrate"],
        &env(&[("DATABASE_URL", "postgres://h:notaport/x")]),
    )
    .await;
    assert!(!output.status.success());
    let text = stderr(&output);
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(text.contains("DATABASE_URL"), "{text}");
}

/// Settings for one role against the harness servers, logging JSON at `log`.
fn json_logging(nats: &str, database: &str, log: &str) -> Env {
    env(&[
        ("NATS_URL", nats),
        ("DATABASE_URL", database),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", log),
    ])
}

/// Whether a JSON log line was written inside a span carrying `request_id`.
fn has_request_id(line: &Value, request_id: &str) -> bool {
    line["spans"]
        .as_array()
        .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == request_id))
}

#[tokio::test]
async fn every_log_line_of_a_request_and_a_socket_carries_its_request_id() {
    let (nats, pg) = servers().await;
    let mut settings = json_logging(
        &nats.url(),
        &pg.url("threadline"),
        "info,tower_http=debug,threadline_gateway=debug",
    );
    // The test stands in for the proxy whose request ids the roles keep.
    settings.push(("TRUSTED_PROXIES".to_owned(), "127.0.0.1".to_owned()));
    let mut roles = Roles::default();
    let all = roles.spawn("all", &settings).await;

    let created = send(
        all,
        "POST",
        "/chat/thread/",
        &[("x-request-id", "req-from-proxy-1")],
        Some(&json!({"user": "Ada"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("x-request-id"), Some("req-from-proxy-1"));
    let made = send(all, "GET", "/healthz", &[], None).await;
    let made_id = made.header("x-request-id").expect("a request id is made");
    uuid::Uuid::parse_str(made_id).expect("a made request id is a UUID");

    let id = created.json()["id"].as_str().expect("id").to_owned();
    let mut request = format!("ws://{all}/ws/chat/{id}/")
        .into_client_request()
        .expect("a websocket request");
    request
        .headers_mut()
        .insert("x-request-id", "socket-request-7".parse().expect("header"));
    let (mut socket, _) = within(
        "opening a websocket",
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("websocket");
    socket.close(None).await.expect("closing the websocket");

    let logs = roles.logs(0);
    eventually("the socket's closing line", PROJECTION_TIMEOUT, || async {
        json_lines(logs)
            .iter()
            .any(|l| {
                l["fields"]["message"] == "websocket closed"
                    && has_request_id(l, "socket-request-7")
            })
            .then_some(())
    })
    .await;
    let lines = json_lines(logs);
    let of_request: Vec<&Value> = lines
        .iter()
        .filter(|l| has_request_id(l, "req-from-proxy-1"))
        .collect();
    assert!(
        of_request.len() >= 2,
        "the POST's started and finished lines carry its id: {of_request:?}"
    );
    assert!(lines.iter().any(|l| l["fields"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("listening on"))));
}

#[tokio::test]
async fn cors_headers_only_for_allowed_origins_and_none_by_default() {
    let (nats, pg) = servers().await;
    let base = env(&[
        ("NATS_URL", &nats.url()),
        ("DATABASE_URL", &pg.url("threadline")),
    ]);
    let mut with_cors = base.clone();
    with_cors.push((
        "CORS_ALLOWED_ORIGINS".into(),
        "https://www.example.com,https://support.example.com".into(),
    ));
    let mut roles = Roles::default();
    let plain = roles.spawn("api", &base).await;
    let cors = roles.spawn("api", &with_cors).await;

    let preflight = [
        ("origin", "https://www.example.com"),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "content-type,idempotency-key",
        ),
    ];
    let allowed = send(cors, "OPTIONS", "/chat/message/", &preflight, None).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://www.example.com")
    );
    // The JavaScript client retries its POSTs under an Idempotency-Key.
    let allowed_headers = allowed
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("idempotency-key") && allowed_headers.contains("content-type"),
        "{allowed_headers}"
    );
    let other = send(
        cors,
        "POST",
        "/chat/thread/",
        &[("origin", "https://evil.example.net")],
        Some(&json!({"user": "x"})),
    )
    .await;
    assert_eq!(other.status, 201);
    assert_eq!(other.header("access-control-allow-origin"), None);

    // Without the setting the API answers as the contract does: no CORS headers, and OPTIONS
    // is DRF's metadata answer.
    let before = send(plain, "OPTIONS", "/chat/message/", &preflight, None).await;
    assert_eq!(before.header("access-control-allow-origin"), None);
    assert_eq!(before.status, 200);
    assert_eq!(before.json()["parses"], json!(["application/json"]));
}

#[tokio::test]
async fn streams_take_their_replicas_and_limits_from_the_settings() {
    let (nats, pg) = servers().await;
    let base = env(&[
        ("NATS_URL", &nats.url()),
        ("DATABASE_URL", &pg.url("threadline")),
    ]);
    // The projector manages the streams (the gateway only opens them).
    let mut roles = Roles::default();
    roles.spawn("projector", &base).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let config = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(name)
                .await
                .expect("stream")
                .info()
                .await
                .expect("info")
                .config
                .clone()
        }
    };
    let events = config("THREADLINE").await;
    assert_eq!(events.num_replicas, 1);
    assert_eq!(events.max_bytes, -1);
    assert_eq!(events.max_age, Duration::ZERO);
    assert_eq!(
        events.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
    let dead = config("THREADLINE_DEAD_LETTERS").await;
    assert_eq!(dead.max_bytes, 1_000_000_000);
    assert_eq!(dead.max_age, Duration::from_secs(30 * 86400));

    // A role started with other limits brings the existing streams to them.
    let mut changed = base.clone();
    changed.extend(env(&[
        ("STREAM_MAX_BYTES", "2GiB"),
        ("DEAD_LETTER_MAX_BYTES", "5MB"),
        ("DEAD_LETTER_MAX_AGE", "12h"),
    ]));
    roles.spawn("projector", &changed).await;
    assert_eq!(config("THREADLINE").await.max_bytes, 2 << 30);
    let dead = config("THREADLINE_DEAD_LETTERS").await;
    assert_eq!(dead.max_bytes, 5_000_000);
    assert_eq!(dead.max_age, Duration::from_secs(12 * 3600));

    // The api's idempotency bucket is made the same way: its window is its max age, and a
    // bucket made with another window follows the setting.
    for window in ["2h", "3h"] {
        let mut api = base.clone();
        api.extend(env(&[("IDEMPOTENCY_WINDOW", window)]));
        roles.spawn("api", &api).await;
        let wanted = threadline_ports::settings::parse_duration(window).expect("window");
        // The api listens (for its probes) before it has opened its dependencies.
        let bucket = eventually(
            &format!("the idempotency bucket to keep records for {window}"),
            PROJECTION_TIMEOUT,
            || async {
                let info = js
                    .get_stream("KV_THREADLINE_IDEMPOTENCY")
                    .await
                    .ok()?
                    .info()
                    .await
                    .ok()?
                    .config
                    .clone();
                (info.max_age == wanted).then_some(info)
            },
        )
        .await;
        assert_eq!(bucket.num_replicas, 1);
        assert_eq!(bucket.max_messages_per_subject, 1);
    }
}

#[tokio::test]
async fn conflicting_or_malformed_production_settings_stop_with_one_line() {
    for (settings, expected) in [
        (
            vec![("NATS_USER", "u")],
            "NATS_USER and NATS_PASSWORD go together",
        ),
        (
            vec![
                ("NATS_TOKEN", "t"),
                ("NATS_USER", "u"),
                ("NATS_PASSWORD", "p"),
            ],
            "choose one way to authenticate",
        ),
        (vec![("NATS_TLS_CA", "/nonexistent/ca.pem")], "NATS_TLS_CA"),
        (
            vec![("CORS_ALLOWED_ORIGINS", "www.example.com")],
            "CORS_ALLOWED_ORIGINS",
        ),
        (vec![("STREAM_MAX_BYTES", "lots")], "STREAM_MAX_BYTES"),
        (vec![("STREAM_REPLICAS", "9")], "STREAM_REPLICAS"),
        (vec![("LOG_FORMAT", "xml")], "LOG_FORMAT"),
    ] {
        let mut all = env(&settings);
        all.push(("LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        let output = run_threadline(&["gateway"], &all).await;
        assert!(!output.status.success(), "{settings:?} was accepted");
        let text = stderr(&output);
        assert!(text.contains(expected), "{settings:?}: {text}");
    }
}
