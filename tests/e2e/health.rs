//! `/healthz` (alive) and `/readyz` (dependencies reachable) on every role; `/readyz` names
//! each dependency and whether it answers.

use crate::harness::operator::run_command_with;
use crate::harness::*;
use serde_json::{json, Value};

/// The dependencies each role's `/readyz` reports.
fn dependencies(role: &str) -> &'static [&'static str] {
    match role {
        "gateway" => &["nats"],
        _ => &["nats", "database"],
    }
}

/// `/readyz` of `role` at `addr`: its status and the verdict per dependency.
async fn readyz(app: &App, addr: std::net::SocketAddr) -> (u16, Value) {
    let response = app.request_to(addr, "GET", "/readyz", None, None).await;
    (response.status, response.json())
}

async fn assert_healthy(app: &App) {
    for (role, addr) in app.service_addrs() {
        for path in ["/healthz", "/readyz"] {
            let response = app.request_to(addr, "GET", path, None, None).await;
            let body = response.expect(200);
            assert!(body.is_object(), "{role} {path}: {body}");
            assert!(
                response
                    .content_type
                    .as_deref()
                    .is_some_and(|ct| ct.starts_with("application/json")),
                "{role} {path}: content type {:?}",
                response.content_type
            );
        }
        let (_, body) = readyz(app, addr).await;
        for dependency in dependencies(&role) {
            assert_eq!(body["checks"][dependency], "ok", "{role} /readyz: {body}");
        }
    }
}

#[tokio::test]
async fn every_role_answers_healthz_and_readyz_with_json_200() {
    let app = spawn_app().await;
    let roles: Vec<String> = app
        .service_addrs()
        .into_iter()
        .map(|(role, _)| role)
        .collect();
    assert_eq!(roles, ["api", "projector", "gateway"]);
    assert_healthy(&app).await;
}

#[tokio::test]
async fn all_in_one_answers_healthz_and_readyz_with_json_200() {
    let app = spawn_all().await;
    assert_healthy(&app).await;
}

/// With `down` unreachable, every role that needs it answers `/readyz` with 503 naming it
/// (and the others as ok), and `/healthz` with 200; roles that do not need it stay ready.
async fn assert_readyz_names(app: &App, down: &str) {
    for (role, addr) in app.service_addrs() {
        let needs = dependencies(&role).contains(&down);
        let (status, body) = eventually(
            &format!("{role} /readyz to notice {down} is down"),
            PROJECTION_TIMEOUT,
            || async {
                let (status, body) = readyz(app, addr).await;
                (!needs || status != 200).then_some((status, body))
            },
        )
        .await;
        if needs {
            assert_eq!(status, 503, "{role} /readyz while {down} is down: {body}");
            assert_eq!(body["status"], "unavailable", "{role}: {body}");
            for dependency in dependencies(&role) {
                let verdict = match (*dependency == down, down) {
                    (true, "nats") => "not connected to NATS",
                    (true, _) => "unavailable",
                    (false, _) => "ok",
                };
                assert_eq!(body["checks"][dependency], json!(verdict), "{role}: {body}");
            }
        } else {
            assert_eq!(status, 200, "{role} does not need {down}: {body}");
        }
        let alive = app.request_to(addr, "GET", "/healthz", None, None).await;
        assert_eq!(alive.status, 200, "{role} /healthz while {down} is down");
    }
}

async fn assert_ready_again(app: &App) {
    for (role, addr) in app.service_addrs() {
        eventually(
            &format!("{role} /readyz to recover"),
            PROJECTION_TIMEOUT,
            || async { (readyz(app, addr).await.0 == 200).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn readyz_names_nats_while_it_is_down_and_recovers() {
    let mut app = spawn_app().await;
    app.nats.kill();
    assert_readyz_names(&app, "nats").await;
    app.nats.start_again();
    assert_ready_again(&app).await;
}

#[tokio::test]
async fn readyz_says_when_the_event_stream_cannot_be_read_or_appended_to() {
    let app = spawn_app().await;
    // An operator's mistake: the stream is gone, though NATS answers.
    app.jetstream()
        .await
        .delete_stream(crate::harness::client::STREAM)
        .await
        .expect("the stream deleted");
    for (role, addr) in app.service_addrs() {
        let body = eventually(
            &format!("{role} /readyz to notice the stream is gone"),
            PROJECTION_TIMEOUT,
            || async {
                let (status, body) = readyz(&app, addr).await;
                (status == 503).then_some(body)
            },
        )
        .await;
        assert_eq!(
            body["checks"]["nats"], "the event stream does not exist",
            "{role}: {body}"
        );
    }
}

#[tokio::test]
async fn readyz_names_the_database_while_it_is_down_and_recovers() {
    let mut app = spawn_app().await;
    app.pg.stop();
    assert_readyz_names(&app, "database").await;
    app.pg.start_again().await;
    assert_ready_again(&app).await;
}

/// `threadline probe`, the image's health check: 0 when the role at LISTEN_ADDR answers 200
/// on the path, 1 on another status or when nothing listens there.
#[tokio::test]
async fn probe_exits_zero_only_when_the_role_answers_200() {
    let mut app = spawn_app().await;
    let (_, api) = app.service_addrs()[0].clone();
    let probe = |addr: std::net::SocketAddr, path: &'static str| async move {
        run_command_with(
            &["probe", "--path", path, "--timeout", "2s"],
            &[("LISTEN_ADDR".to_owned(), addr.to_string())],
        )
        .await
    };
    let ready = probe(api, "/readyz").await;
    assert!(ready.expect(0).contains(": 200"), "{}", ready.stdout);
    let missing = probe(api, "/no-such-path").await;
    assert!(missing.expect(1).contains(": 404"), "{}", missing.stdout);
    app.nats.kill();
    let unready = eventually("the probe to see NATS gone", PROJECTION_TIMEOUT, || async {
        let out = probe(api, "/readyz").await;
        (out.status.code() == Some(1)).then_some(out)
    })
    .await;
    assert!(unready.stdout.contains(": 503"), "{}", unready.stdout);
    probe(api, "/healthz").await.expect(0);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("a free port: {e}"));
    let nothing = probe(closed, "/readyz").await;
    assert!(nothing.expect(1).contains("refused"), "{}", nothing.stdout);
}

/// The `x-request-id` a role answers `GET /healthz` with, asked from the local address `from`
/// with `sent` as the request's id.
async fn request_id_answered(addr: std::net::SocketAddr, from: &str, sent: &str) -> String {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().expect("an address"))
        .build()
        .expect("an HTTP client");
    let response = within(
        "GET /healthz",
        crate::harness::client::REQUEST_TIMEOUT,
        client
            .get(format!("http://{addr}/healthz"))
            .header("x-request-id", sent)
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("GET /healthz from {from}: {e}"));
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no request id in the answer to {from}"))
        .to_owned()
}

/// A request id (which every log line of the request carries) is taken from the client only
/// when the peer is a trusted proxy (`TRUSTED_PROXIES`, one setting for every role) and the
/// id is short; otherwise the role makes one.
#[tokio::test]
async fn request_id_is_taken_only_from_trusted_proxies_and_only_when_short() {
    let app = options().env("TRUSTED_PROXIES", "127.0.0.1").start().await;
    let long = "x".repeat(129);
    for (role, addr) in app.service_addrs() {
        assert_eq!(
            request_id_answered(addr, "127.0.0.1", "from-the-proxy-1").await,
            "from-the-proxy-1",
            "{role} keeps a trusted proxy's id"
        );
        let made = request_id_answered(addr, "127.0.0.2", "chosen-by-anyone").await;
        assert_ne!(
            made, "chosen-by-anyone",
            "{role} took an untrusted client's id"
        );
        uuid::Uuid::parse_str(&made).expect("a made request id is a UUID");
        let made = request_id_answered(addr, "127.0.0.1", &long).await;
        assert_ne!(made, long, "{role} took a 129-byte id");
        uuid::Uuid::parse_str(&made).expect("a made request id is a UUID");
        let at_most = "y".repeat(128);
        assert_eq!(
            request_id_answered(addr, "127.0.0.1", &at_most).await,
            at_most,
            "{role} keeps a 128-byte id"
        );
    }
    let all = spawn_all().await;
    let (_, addr) = all.service_addrs()[0].clone();
    let made = request_id_answered(addr, "127.0.0.1", "no-proxy-is-trusted").await;
    assert_ne!(
        made, "no-proxy-is-trusted",
        "by default no proxy is trusted"
    );
}

/// The address in a role's log line that contains `marker`, once it is logged.
async fn logged_addr(app: &App, role: &str, index: usize, marker: &str) -> std::net::SocketAddr {
    eventually(
        &format!("{role} to log {marker:?}"),
        PROJECTION_TIMEOUT,
        || async {
            let dump = app.logs(role, index).dump();
            dump.lines().filter(|l| l.contains(marker)).find_map(|l| {
                let rest = &l[l.find(marker)? + marker.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':')))
                    .unwrap_or(rest.len());
                rest[..end].parse().ok()
            })
        },
    )
    .await
}

/// With `ADMIN_LISTEN_ADDR`, `/metrics` and `/readyz` are served there and no longer on the
/// public listener (`/healthz` on both); the role serves its clients on the public one.
#[tokio::test]
async fn admin_listener_takes_metrics_and_readyz_off_the_public_listener() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    for role in ["api", "projector", "gateway"] {
        let index = app.launch(role, &[("ADMIN_LISTEN_ADDR", "127.0.0.1:0")]);
        let admin = logged_addr(&app, role, index, "admin endpoints on ").await;
        let public = logged_addr(&app, role, index, "listening on ").await;
        assert_ne!(admin, public);
        eventually(
            &format!("{role}'s admin /readyz to answer 200"),
            PROJECTION_TIMEOUT,
            || async {
                let r = app
                    .try_request_to(admin, "GET", "/readyz", None, None)
                    .await;
                matches!(r, Ok(r) if r.status == 200).then_some(())
            },
        )
        .await;
        let metrics = app.request_to(admin, "GET", "/metrics", None, None).await;
        assert_eq!(metrics.status, 200, "{role} admin /metrics");
        assert!(metrics.text.contains("threadline_http_requests_total"));
        app.request_to(admin, "GET", "/healthz", None, None)
            .await
            .expect(200);
        let not_found = json!({"detail": "Not found."});
        for path in ["/metrics", "/readyz"] {
            let answer = app.request_to(public, "GET", path, None, None).await;
            assert_eq!(answer.expect(404), not_found, "{role} public {path}");
        }
        app.request_to(public, "GET", "/healthz", None, None)
            .await
            .expect(200);
        // The admin listener serves nothing else.
        let api = app
            .request_to(admin, "GET", &format!("/chat/thread/{thread}/"), None, None)
            .await;
        assert_eq!(api.expect(404), not_found, "{role} admin serves the API");
        if role == "api" {
            let read = app
                .request_to(
                    public,
                    "GET",
                    &format!("/chat/thread/{thread}/"),
                    None,
                    None,
                )
                .await;
            read.expect(200);
        }
        // The image's health check, run with the role's environment, asks the admin listener.
        let probe = run_command_with(
            &["probe", "--timeout", "5s"],
            &[
                ("LISTEN_ADDR".to_owned(), public.to_string()),
                ("ADMIN_LISTEN_ADDR".to_owned(), admin.to_string()),
            ],
        )
        .await;
        assert!(
            probe
                .expect(0)
                .contains(&format!("http://{admin}/readyz: 200")),
            "{role}: {}",
            probe.stdout
        );
    }
}
