//! `POST /chat/thread/` and `GET /chat/thread/:id/`.

use crate::harness::*;
use serde_json::{json, Value};

#[tokio::test]
async fn create_thread_answers_201_with_uuid1_id_user_timestamp_and_no_messages() {
    let app = spawn_app().await;

    let thread = app
        .create_thread(json!({"name": "Ada", "email": "ada@example.com"}))
        .await;

    assert_eq!(keys(&thread), ["id", "messages", "timestamp", "user"]);
    assert_uuid1(&thread["id"]);
    assert_timestamp(&thread["timestamp"]);
    assert_same_json(
        &thread["user"],
        &json!({"name": "Ada", "email": "ada@example.com"}),
        "user",
    );
    assert_eq!(thread["messages"], json!([]));
}

#[tokio::test]
async fn thread_ids_are_distinct() {
    let app = spawn_app().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let thread = app.create_thread(json!({"name": "V"})).await;
        assert_uuid1(&thread["id"]);
        assert!(
            ids.insert(thread["id"].as_str().unwrap().to_owned()),
            "duplicate id {}",
            thread["id"]
        );
    }
}

#[tokio::test]
async fn get_thread_returns_the_thread_as_created_with_its_messages_oldest_first() {
    let app = spawn_app().await;
    let created = app.create_thread(json!({"name": "Ada"})).await;
    let id = created["id"].as_str().unwrap();
    let mut posted = Vec::new();
    for body in ["first", "second", "third"] {
        posted.push(app.say(id, body).await.json());
    }

    let thread = app.get_thread(id).await;

    assert_eq!(keys(&thread), ["id", "messages", "timestamp", "user"]);
    assert_eq!(thread["id"], created["id"]);
    assert_eq!(thread["timestamp"], created["timestamp"]);
    assert_same_json(&thread["user"], &created["user"], "user on GET");
    let messages = thread["messages"].as_array().expect("messages is a list");
    assert_eq!(messages.len(), 3, "{thread}");
    for (message, posted) in messages.iter().zip(&posted) {
        assert_eq!(
            keys(message),
            ["body", "id", "send_by_user", "timestamp", "user"]
        );
        for field in ["id", "timestamp", "body", "send_by_user"] {
            assert_eq!(message[field], posted[field], "{field} of {message}");
        }
        assert_same_json(&message["user"], &posted["user"], "message user on GET");
    }
}

/// Raw JSON text whose `user` has keys out of alphabetical order, nesting, arrays, unicode,
/// escapes and numbers that a float would not keep.
const ODD_USER: &str = r#"{"zeta":1,"alpha":{"y":[3,2,1],"b":null,"a":true},"name":"Zoë 🙂 \"quoted\"","big":123456789012345678901234567890,"price":1.10,"neg":-0.5,"list":[{"k":"v","a":"b"},[],{}],"empty":""}"#;

#[tokio::test]
async fn user_is_returned_exactly_as_sent_on_create_get_message_and_websocket() {
    let app = spawn_app().await;
    let user: Value = serde_json::from_str(ODD_USER).unwrap();

    let created = app
        .post_json(
            "/chat/thread/",
            format!(r#"{{"user":{ODD_USER}}}"#),
            Some("application/json"),
        )
        .await
        .expect(201);
    assert_same_json(&created["user"], &user, "user on thread POST");
    let id = created["id"].as_str().unwrap();

    let mut ws = app.connect_ws(id).await;
    let posted = app
        .post_json(
            "/chat/message/",
            format!(r#"{{"user":{ODD_USER},"thread":"{id}","body":"hi"}}"#),
            Some("application/json"),
        )
        .await;
    assert_same_json(&posted.expect(201)["user"], &user, "user on message POST");
    let frame: Value = serde_json::from_str(&ws.next_text().await).unwrap();
    assert_same_json(&frame["user"], &user, "user on the websocket");

    let thread = app.get_thread(id).await;
    assert_same_json(&thread["user"], &user, "thread user on GET");
    assert_same_json(&thread["messages"][0]["user"], &user, "message user on GET");
}

#[tokio::test]
async fn user_may_be_any_json_value_but_null_or_blank() {
    let app = spawn_app().await;
    for user in [
        json!({}),
        json!([]),
        json!("x"),
        json!(42),
        json!([1, "a", {"b": 2}]),
        json!(false),
    ] {
        let created = app.create_thread(user.clone()).await;
        assert_same_json(&created["user"], &user, "user on POST");
        let id = created["id"].as_str().unwrap();
        let fetched = app.get_thread(id).await;
        assert_same_json(&fetched["user"], &user, "user on GET");
    }
}

#[tokio::test]
async fn create_thread_ignores_unknown_fields_and_client_sent_id_and_timestamp() {
    let app = spawn_app().await;
    let sent_id = new_id();
    let created = app
        .post(
            "/chat/thread/",
            &json!({
                "user": {"name": "V"},
                "id": sent_id,
                "timestamp": "2001-01-01T00:00:00.000000Z",
                "messages": [{"body": "smuggled"}],
                "extra": 1,
            }),
        )
        .await
        .expect(201);
    assert_eq!(keys(&created), ["id", "messages", "timestamp", "user"]);
    assert_ne!(created["id"], json!(sent_id));
    assert_timestamp(&created["timestamp"]);
    assert_eq!(created["messages"], json!([]));
    let fetched = app.get_thread(created["id"].as_str().unwrap()).await;
    assert_eq!(fetched["messages"], json!([]));
}

#[tokio::test]
async fn thread_paths_work_with_and_without_trailing_slash() {
    let app = spawn_app().await;

    let created = app
        .post("/chat/thread", &json!({"user": {"name": "V"}}))
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();

    let with_slash = app.get(&format!("/chat/thread/{id}/")).await.expect(200);
    let without_slash = app.get(&format!("/chat/thread/{id}")).await.expect(200);
    assert_eq!(with_slash["id"], created["id"]);
    assert_eq!(without_slash["id"], created["id"]);
}

#[tokio::test]
async fn get_of_an_unknown_thread_is_404_not_found() {
    let app = spawn_app().await;
    for path in [
        format!("/chat/thread/{}/", new_id()),
        format!("/chat/thread/{}", new_id()),
    ] {
        let response = app.get(&path).await;
        assert_eq!(
            response.expect(404),
            json!({"detail": "Not found."}),
            "{path}"
        );
    }
}

#[tokio::test]
async fn get_of_an_id_that_is_not_a_uuid_is_404_not_found_as_json() {
    let app = spawn_app().await;
    for path in [
        "/chat/thread/not-a-uuid/",
        "/chat/thread/123",
        "/chat/thread/%E2%80%9C/",
    ] {
        let response = app.get(path).await;
        assert_eq!(
            response.expect(404),
            json!({"detail": "Not found."}),
            "{path}"
        );
    }
}

#[tokio::test]
async fn wrong_method_is_405_naming_the_method() {
    let app = spawn_app().await;
    let id = app.new_thread().await;
    let cases = [
        ("GET", "/chat/thread/".to_owned()),
        ("PUT", "/chat/thread/".to_owned()),
        ("DELETE", format!("/chat/thread/{id}/")),
        ("POST", format!("/chat/thread/{id}/")),
        ("PATCH", format!("/chat/thread/{id}")),
        ("GET", "/chat/message/".to_owned()),
        ("DELETE", "/chat/message".to_owned()),
    ];
    for (method, path) in cases {
        let response = app
            .request(
                method,
                &path,
                Some(b"{}".to_vec()),
                Some("application/json"),
            )
            .await;
        assert_eq!(
            response.expect(405),
            json!({"detail": format!("Method \"{method}\" not allowed.")}),
            "{method} {path}"
        );
    }
    for (method, path) in [
        ("POST", format!("/ws/chat/{id}/")),
        ("DELETE", format!("/ws/chat/{id}")),
    ] {
        let response = app.request_to(app.ws_addr, method, &path, None, None).await;
        assert_eq!(
            response.expect(405),
            json!({"detail": format!("Method \"{method}\" not allowed.")}),
            "{method} {path} on the gateway"
        );
    }
}
