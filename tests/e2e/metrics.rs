//! `GET /metrics` on every role, in Prometheus' text format, and the numbers moving with
//! traffic: HTTP requests by route and status, appends, the projector's batches and lag,
//! set-aside events, and the gateway's sockets, watched threads and frames.

use crate::harness::metrics::{sample, scrape};
use crate::harness::*;
use std::net::SocketAddr;

fn addr_of(app: &App, role: &str) -> SocketAddr {
    app.service_addrs()
        .into_iter()
        .find(|(r, _)| r == role)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("no {role}"))
}

/// Waits until `name{labels}` on `role`'s /metrics satisfies `holds`; the value.
async fn wait_for(
    app: &App,
    role: &str,
    name: &str,
    labels: &[(&str, &str)],
    holds: impl Fn(f64) -> bool,
) -> f64 {
    let addr = addr_of(app, role);
    eventually(
        &format!("{name}{labels:?} on the {role}'s /metrics"),
        PROJECTION_TIMEOUT,
        || async {
            let text = scrape(app, addr).await;
            sample(&text, name, labels).filter(|v| holds(*v))
        },
    )
    .await
}

#[tokio::test]
async fn every_role_serves_metrics_and_they_move_with_traffic() {
    let app = spawn_app().await;
    for (role, addr) in app.service_addrs() {
        let text = scrape(&app, addr).await;
        // The scrape itself is counted by the next one.
        let again = scrape(&app, addr).await;
        assert!(
            sample(
                &again,
                "threadline_http_requests_total",
                &[("route", "/metrics"), ("status", "200")]
            )
            .is_some_and(|n| n >= 1.0),
            "{role}: {text}"
        );
    }

    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    wait_for(
        &app,
        "gateway",
        "threadline_gateway_sockets_open",
        &[],
        |n| n == 1.0,
    )
    .await;
    wait_for(
        &app,
        "gateway",
        "threadline_gateway_threads_watched",
        &[],
        |n| n == 1.0,
    )
    .await;
    for i in 0..3 {
        let posted = app.say(&thread, &format!("message {i}")).await;
        assert_eq!(ws.next_text().await, posted.text);
    }
    app.get_thread(&thread).await;
    let missing = app.get(&format!("/chat/thread/{}/", new_id())).await;
    assert_eq!(missing.status, 404);

    let api = [
        ("method", "POST"),
        ("route", "/chat/message/"),
        ("status", "201"),
    ];
    wait_for(&app, "api", "threadline_http_requests_total", &api, |n| {
        n == 3.0
    })
    .await;
    wait_for(
        &app,
        "api",
        "threadline_http_request_duration_seconds_count",
        &api,
        |n| n == 3.0,
    )
    .await;
    wait_for(
        &app,
        "api",
        "threadline_http_requests_total",
        &[("route", "/chat/thread/{id}/"), ("status", "404")],
        |n| n == 1.0,
    )
    .await;
    wait_for(
        &app,
        "api",
        "threadline_event_append_duration_seconds_count",
        &[("event", "MessagePosted"), ("outcome", "stored")],
        |n| n == 3.0,
    )
    .await;
    wait_for(
        &app,
        "projector",
        "threadline_projector_events_total",
        &[],
        |n| n >= 4.0,
    )
    .await;
    wait_for(
        &app,
        "projector",
        "threadline_projector_batch_size_count",
        &[],
        |n| n >= 1.0,
    )
    .await;
    wait_for(
        &app,
        "projector",
        "threadline_projector_lag_events",
        &[],
        |n| n >= 0.0,
    )
    .await;
    wait_for(
        &app,
        "projector",
        "threadline_projector_lag_seconds",
        &[],
        |n| n >= 0.0,
    )
    .await;
    wait_for(
        &app,
        "gateway",
        "threadline_gateway_frames_sent_total",
        &[],
        |n| n == 3.0,
    )
    .await;

    // An invalid event from an outside publisher is set aside, counted by its reason.
    let ack = app
        .publish_event(
            &app.message_subject(&thread),
            &[("Nats-Msg-Id", &new_id())],
            "not json",
        )
        .await;
    app.dead_letter_of(ack.sequence).await;
    wait_for(
        &app,
        "projector",
        "threadline_events_set_aside_total",
        &[],
        |n| n == 1.0,
    )
    .await;

    ws.close().await;
    wait_for(
        &app,
        "gateway",
        "threadline_gateway_sockets_open",
        &[],
        |n| n == 0.0,
    )
    .await;
    wait_for(
        &app,
        "gateway",
        "threadline_gateway_threads_watched",
        &[],
        |n| n == 0.0,
    )
    .await;
}
