//! Serving a router until shutdown: stop accepting, let in-flight requests finish (bounded).

use axum::http::{Method, StatusCode};
use axum::{Json, Router};
use std::future::IntoFuture;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// Serves `router` on `listener` until `shutdown` fires, then gives in-flight requests up to
/// `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");
    let stop = shutdown.clone();
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            stop.cancelled().await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("in-flight requests did not finish within {grace:?}; stopping anyway");
            Ok(())
        }
    }
}

/// The body DRF answers 404 with.
pub const NOT_FOUND_DETAIL: &str = "Not found.";

/// Completes a router of one or more roles for serving: a JSON 404 for unknown paths and
/// request tracing.
pub fn finish(router: Router) -> Router {
    router.fallback(not_found).layer(TraceLayer::new_for_http())
}

async fn not_found() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "detail": NOT_FOUND_DETAIL })),
    )
}

/// DRF's answer to a method that a route does not serve.
pub async fn method_not_allowed(method: Method) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({ "detail": format!("Method \"{method}\" not allowed.") })),
    )
}
