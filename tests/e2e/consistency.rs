//! Read your writes: after a 201, the same client's GET shows the write.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn a_thousand_post_then_get_cycles_each_see_their_write() {
    let app = spawn_app().await;
    let mut threads: Vec<(String, usize)> = Vec::new();
    for cycle in 0..1000 {
        // Every 100th cycle opens a new thread; the rest post to one of the open ones.
        if cycle % 100 == 0 {
            let created = app
                .create_thread(json!({"name": format!("visitor {cycle}")}))
                .await;
            let id = created["id"].as_str().unwrap().to_owned();
            let fetched = app.get(&format!("/chat/thread/{id}/")).await;
            assert_eq!(
                fetched.status, 200,
                "cycle {cycle}: new thread {id} not visible: {}",
                fetched.text
            );
            assert_eq!(fetched.json()["messages"], json!([]));
            threads.push((id, 0));
            continue;
        }
        let index = cycle % threads.len();
        let (thread, count) = &mut threads[index];
        let posted = app.say(thread, &format!("cycle {cycle}")).await.json();
        *count += 1;
        let fetched = app.get_thread(thread).await;
        let messages = fetched["messages"].as_array().unwrap();
        assert_eq!(
            messages.len(),
            *count,
            "cycle {cycle}: thread {thread} has {} messages, expected {count}",
            messages.len()
        );
        let last = messages.last().unwrap();
        assert_eq!(
            last["id"], posted["id"],
            "cycle {cycle}: the last message is not the one just posted"
        );
        assert_eq!(last["body"], json!(format!("cycle {cycle}")));
    }
}
