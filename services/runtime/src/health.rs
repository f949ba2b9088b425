//! `GET /healthz` (the process is alive) and `GET /readyz` (its dependencies answer), on
//! every role.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use threadline_ports::{report, Dependency};

type Dependencies = Arc<Vec<Arc<dyn Dependency>>>;

/// The health routes for a role with these dependencies.
pub fn health_router(dependencies: Vec<Arc<dyn Dependency>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(dependencies))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(dependencies): State<Dependencies>) -> Response {
    let mut checks = Map::new();
    let mut ready = true;
    for dependency in dependencies.iter() {
        let verdict = match dependency.check().await {
            Ok(()) => Value::String("ok".to_owned()),
            Err(e) => {
                ready = false;
                tracing::warn!(dependency = dependency.name(), "not ready: {}", report(&*e));
                dependency.failure(&*e)
            }
        };
        checks.insert(dependency.name().to_owned(), verdict);
    }
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, Json(json!({"status": word, "checks": checks}))).into_response()
}
