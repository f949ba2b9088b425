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
                let verdict = if *dependency == down {
                    "unavailable"
                } else {
                    "ok"
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
