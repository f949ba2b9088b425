//! Graceful shutdown on SIGTERM: websockets get a service-restart close frame (1012, so that
//! clients reconnect elsewhere with `since`), every role exits
//! cleanly, and under load nothing accepted is lost: every 201 shows in `GET` afterwards,
//! once, and a restarted projector applies every event exactly once.

use crate::harness::load::Load;
use crate::harness::*;
use std::collections::HashSet;
use std::time::Duration;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_closes_websockets_with_service_restart_and_every_role_exits_cleanly() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;

    app.terminate("gateway", 0);
    assert_eq!(
        ws.next_close().await,
        Some(1012),
        "expected a service-restart close frame"
    );
    let status = app.wait_exit("gateway", 0, SHUTDOWN_TIMEOUT).await;
    assert!(status.success(), "gateway exited with {status}");

    for role in ["api", "projector"] {
        app.terminate(role, 0);
        let status = app.wait_exit(role, 0, SHUTDOWN_TIMEOUT).await;
        assert!(status.success(), "{role} exited with {status}");
    }
}

/// Posts continuously with a socket open, SIGTERMs `role` (its sockets get a
/// service-restart close), checks it exits cleanly, restarts it, posts some
/// more, then checks that every accepted message is in `GET` once and in the read model once.
async fn sigterm_under_load(mut app: App, role: &str) {
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;
    let load = Load::start(&app, &thread, 4);
    load.wait_for_more(50, PROJECTION_TIMEOUT).await;

    app.terminate(role, 0);
    if role == "gateway" || role == "all" {
        assert_eq!(
            ws.next_close_after_frames().await,
            Some(1012),
            "{role}: expected a service-restart close frame"
        );
    }
    let status = app.wait_exit(role, 0, SHUTDOWN_TIMEOUT).await;
    assert!(status.success(), "{role} exited with {status} under load");
    app.restart(role, 0).await;
    load.wait_for_more(50, PROJECTION_TIMEOUT).await;
    let accepted = load.stop().await;

    let stored = eventually(
        "every accepted message in GET",
        PROJECTION_TIMEOUT,
        || async {
            let stored = message_ids(&app.get_thread(&thread).await);
            accepted
                .iter()
                .all(|id| stored.contains(id))
                .then_some(stored)
        },
    )
    .await;
    let distinct: HashSet<String> = stored.iter().map(|id| id.to_string()).collect();
    assert_eq!(distinct.len(), stored.len(), "GET lists a message twice");
    let db = app.db().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from messages where thread_id = $1::uuid")
        .bind(&thread)
        .fetch_one(&db)
        .await
        .expect("counting rows");
    assert_eq!(rows as usize, stored.len(), "rows of the thread");
    assert!(app.dead_letters().await.is_empty(), "nothing set aside");
    eprintln!(
        "{role}: {} accepted, {} stored",
        accepted.len(),
        stored.len()
    );
}

#[tokio::test]
async fn sigterm_to_the_api_under_load_loses_no_accepted_message() {
    sigterm_under_load(spawn_app().await, "api").await;
}

#[tokio::test]
async fn sigterm_to_the_projector_under_load_loses_and_repeats_nothing() {
    sigterm_under_load(spawn_app().await, "projector").await;
}

#[tokio::test]
async fn sigterm_to_the_gateway_under_load_closes_its_sockets_and_loses_nothing() {
    sigterm_under_load(spawn_app().await, "gateway").await;
}

#[tokio::test]
async fn sigterm_to_all_in_one_under_load_loses_no_accepted_message() {
    sigterm_under_load(spawn_all().await, "all").await;
}
