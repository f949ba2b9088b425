//! `GET /healthz` (the process is alive) and `GET /readyz` (its dependencies answer), on
//! every role.

use crate::{JetStreamLog, PgReadModel, StoreError};
use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Something a role needs in order to serve: a dependency that must answer, or a condition
/// of the role's own work (the projector's progress).
#[async_trait]
pub trait Dependency: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), StoreError>;

    /// What `/readyz` shows for a failed check: `"unavailable"` (the cause goes to the log,
    /// not to whoever asks), unless the check has something an operator should see there.
    fn failure(&self, _error: &StoreError) -> Value {
        Value::String("unavailable".to_owned())
    }
}

#[async_trait]
impl Dependency for JetStreamLog {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn check(&self) -> Result<(), StoreError> {
        match self.client().connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(StoreError::nats(format!("connection is {state}"))),
        }
    }
}

#[async_trait]
impl Dependency for PgReadModel {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map(|_| ())
            .map_err(StoreError::database)
    }
}

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
                tracing::warn!(dependency = dependency.name(), "not ready: {e}");
                dependency.failure(&e)
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
