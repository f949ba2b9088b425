//! The degraded read: with the projector stopped, a `GET` waits `READ_YOUR_WRITES_TIMEOUT`
//! for it, then answers what the read model has (a stale list), or 503 for a thread the read
//! model does not have yet. Nothing is lost: once the projector is back, `GET` has it all.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn with_the_projector_stopped_get_answers_the_stale_list_or_503_then_catches_up() {
    let mut app = options()
        .env("READ_YOUR_WRITES_TIMEOUT", "500ms")
        .start()
        .await;
    let thread = app.new_thread().await;
    let first = app.say(&thread, "applied").await.json();
    assert_eq!(
        message_ids(&app.get_thread(&thread).await),
        [first["id"].clone()]
    );

    app.kill("projector", 0);
    let second = app.say(&thread, "not applied yet").await.json();
    let stale = app.get_thread(&thread).await;
    assert_eq!(
        message_ids(&stale),
        [first["id"].clone()],
        "the stale list after the timeout"
    );

    let unapplied = app.new_thread().await;
    let response = app.get(&format!("/chat/thread/{unapplied}/")).await;
    let body = response.expect(503);
    assert_eq!(keys(&body), ["detail"], "{body}");

    app.restart("projector", 0).await;
    let all = [first["id"].clone(), second["id"].clone()];
    eventually("GET to list both messages", PROJECTION_TIMEOUT, || async {
        (message_ids(&app.get_thread(&thread).await) == all).then_some(())
    })
    .await;
    eventually("GET of the new thread", PROJECTION_TIMEOUT, || async {
        let response = app.get(&format!("/chat/thread/{unapplied}/")).await;
        (response.status == 200 && response.json()["id"] == json!(unapplied)).then_some(())
    })
    .await;
}
