//! `/healthz` (alive) and `/readyz` (dependencies reachable) on every role.

use crate::harness::*;
use serde_json::Value;

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

#[tokio::test]
async fn readyz_is_not_200_while_nats_is_down_and_recovers() {
    let mut app = spawn_app().await;
    app.nats.kill();
    for (role, addr) in app.service_addrs() {
        let status = eventually(
            &format!("{role} /readyz to notice nats is down"),
            PROJECTION_TIMEOUT,
            || async {
                let response = app.request_to(addr, "GET", "/readyz", None, None).await;
                (response.status != 200).then(|| (response.status, response.json()))
            },
        )
        .await;
        assert!(
            status.0 >= 500,
            "{role} /readyz while nats is down: {status:?}"
        );
        assert!(
            matches!(status.1, Value::Object(_)),
            "{role} /readyz: {status:?}"
        );
        let alive = app.request_to(addr, "GET", "/healthz", None, None).await;
        assert_eq!(alive.status, 200, "{role} /healthz while nats is down");
    }
    app.nats.start_again();
    for (role, addr) in app.service_addrs() {
        eventually(
            &format!("{role} /readyz to recover"),
            PROJECTION_TIMEOUT,
            || async {
                let response = app.request_to(addr, "GET", "/readyz", None, None).await;
                (response.status == 200).then_some(())
            },
        )
        .await;
    }
}
