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

/// The metric names the shipped dashboard queries (`deploy/grafana/threadline.json`), as
/// sample names (a histogram's `_bucket`, `_sum`, `_count`).
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/threadline.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("threadline_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "the dashboard's metrics: {names:?}");
    names
}

/// The roles whose work a metric measures: the ones whose `/metrics` must list it.
fn roles_of(metric: &str) -> &'static [&'static str] {
    if metric.starts_with("threadline_http_") {
        &["api", "projector", "gateway", "all"]
    } else if metric.starts_with("threadline_event_append_")
        || metric.starts_with("threadline_api_")
    {
        &["api", "all"]
    } else if metric.starts_with("threadline_projector_")
        || metric.starts_with("threadline_events_set_aside_")
    {
        &["projector", "all"]
    } else if metric.starts_with("threadline_gateway_") {
        &["gateway", "all"]
    } else {
        panic!("the dashboard queries {metric}, which no role records")
    }
}

/// Right after start, before any traffic, every role lists every family the dashboard reads
/// from it (at zero), so that panels and `absent()` alerts see the role from its first scrape.
async fn assert_dashboard_families_listed(app: &App) {
    let metrics = dashboard_metrics();
    for (name, addr) in app.service_addrs() {
        let role = name.split('#').next().unwrap_or(&name).to_owned();
        let text = scrape(app, addr).await;
        let missing: Vec<&String> = metrics
            .iter()
            .filter(|m| roles_of(m).contains(&role.as_str()))
            .filter(|m| sample(&text, m, &[]).is_none())
            .collect();
        assert!(missing.is_empty(), "{role} lists no {missing:?}:\n{text}");
    }
}

#[tokio::test]
async fn every_dashboard_family_is_listed_right_after_start_on_every_role() {
    let app = spawn_app().await;
    assert_dashboard_families_listed(&app).await;
}

#[tokio::test]
async fn every_dashboard_family_is_listed_right_after_start_all_in_one() {
    let app = spawn_all().await;
    assert_eq!(app.service_addrs()[0].0, "all");
    assert_dashboard_families_listed(&app).await;
}

/// The lines of the HTTP families on a role's `/metrics`.
fn http_series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("threadline_http_"))
        .collect()
}

/// A method name a client makes up is counted as `other`: however many a client sends, they
/// add no series to `/metrics` (and no memory to the process).
#[tokio::test]
async fn made_up_methods_are_counted_as_other_and_add_no_series() {
    let app = spawn_app().await;
    let mut method = 0;
    let mut send_made_up = |n: usize| {
        (0..n)
            .map(|_| {
                method += 1;
                format!("M{method:04}X")
            })
            .collect::<Vec<String>>()
    };
    let warm_up = send_made_up(5);
    let more = send_made_up(40);
    for (role, addr) in app.service_addrs() {
        for m in &warm_up {
            let answer = app.request_to(addr, m, "/chat/thread/", None, None).await;
            assert!(answer.status >= 400 && answer.status < 500, "{role} {m}");
        }
        let before = scrape(&app, addr).await;
        for m in &more {
            let answer = app.request_to(addr, m, "/chat/thread/", None, None).await;
            assert!(answer.status >= 400 && answer.status < 500, "{role} {m}");
        }
        let after = scrape(&app, addr).await;
        assert!(!after.contains("M00"), "{role}:\n{after}");
        assert_eq!(
            http_series(&before).len(),
            http_series(&after).len(),
            "{role}: 40 made-up methods added series:\n{after}"
        );
        let counted = sample(
            &after,
            "threadline_http_requests_total",
            &[("method", "other")],
        );
        assert_eq!(counted, Some(45.0), "{role}:\n{after}");
    }
}
