//! The OpenAPI document served at `/openapi.json` is the committed one, on the api and on
//! `threadline all`.

use crate::harness::*;
use serde_json::Value;
use std::path::Path;

fn committed() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/api/openapi.json");
    let text = std::fs::read_to_string(&path).expect("reading the committed openapi.json");
    serde_json::from_str(&text).expect("the committed openapi.json is JSON")
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let expected = committed();
    for app in [spawn_app().await, spawn_all().await] {
        let response = app.get("/openapi.json").await;
        assert!(
            response
                .content_type
                .as_deref()
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{:?}",
            response.content_type
        );
        assert_eq!(response.expect(200), expected);
    }
}
