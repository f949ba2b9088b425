//! The stream leader's load is bounded per api process, not per client request: concurrent
//! requests for the same thread share one lookup.

use crate::harness::*;
use futures::future::join_all;

const REQUESTS: usize = 200;

#[tokio::test]
async fn concurrent_requests_for_one_unknown_thread_share_their_lookups() {
    let app = spawn_app().await;
    let unknown = new_id();
    let before = app.nats.jetstream_api_requests().await;
    let path = format!("/chat/thread/{unknown}/");
    let answers = join_all((0..REQUESTS).map(|_| app.get(&path))).await;
    assert!(answers.iter().all(|a| a.status == 404), "every GET is 404");
    let asked = app.nats.jetstream_api_requests().await - before;
    assert!(
        asked < (REQUESTS / 4) as u64,
        "{REQUESTS} GETs of one unknown thread made {asked} JetStream API requests"
    );
}
