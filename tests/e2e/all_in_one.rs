//! `threadline all`: the three services in one process, HTTP API and websocket on one port.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn all_serves_api_and_websocket_on_one_port() {
    let app = spawn_all().await;
    assert_eq!(app.api_addr, app.ws_addr);

    let thread = app.create_thread(json!({"name": "V"})).await;
    let id = thread["id"].as_str().unwrap();
    let mut ws = app.connect_ws(id).await;
    let posted = app.say(id, "one process").await;

    assert_eq!(ws.next_text().await, posted.text);
    let stored = app.get_thread(id).await;
    assert_eq!(stored["messages"][0]["id"], posted.json()["id"]);
    let refused = app
        .try_connect_ws(&format!("/ws/chat/{}/", new_id()))
        .await
        .err()
        .expect("unknown thread");
    assert_eq!(refused.status, Some(404));
}

#[tokio::test]
async fn all_projects_events_from_an_outside_publisher() {
    let app = spawn_all().await;
    let thread = app.new_thread().await;
    let id = new_id();
    let payload = format!(
        r#"{{"id":"{id}","user":{{"name":"Agent"}},"timestamp":"{}","body":"from slack","send_by_user":false,"thread":"{thread}"}}"#,
        now_timestamp()
    );
    app.publish_event(
        &app.message_subject(&thread),
        &[("Nats-Msg-Id", &id)],
        payload,
    )
    .await;
    eventually("the outside event in GET", PROJECTION_TIMEOUT, || async {
        let stored = app.get_thread(&thread).await;
        (stored["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id))
        .then_some(())
    })
    .await;
}
