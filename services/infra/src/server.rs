//! Serving a router until shutdown: stop accepting, let in-flight requests finish (bounded);
//! and what every role's router gets: a JSON 404, `/metrics`, HTTP metrics, a request id,
//! request tracing and CORS.

use crate::HttpSettings;
use axum::http::{HeaderName, Method, Request, StatusCode};
use axum::{Json, Router};
use std::future::IntoFuture;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The header that carries a request's id: kept when a proxy sent one, made otherwise, and
/// returned in the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    // The peer's address is known to handlers (the gateway counts sockets per client).
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
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

/// Completes a router of one or more roles for serving: a JSON 404 for unknown paths,
/// `GET /metrics` and request counts and latencies by route and status, a
/// request id (`x-request-id`) in the response and on the span of every log line the
/// request causes (a websocket's too, for its whole life), and CORS headers for the allowed
/// origins (none by default). The origins were checked at start-up ([`crate::startup`]).
pub fn finish(router: Router, http: &HttpSettings) -> Router {
    let traced = router
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));
    match cors(http) {
        Some(cors) => traced.layer(cors),
        None => traced,
    }
}

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        uri = %request.uri().path(),
    )
}

/// The CORS layer for the allowed origins; `None` when none are set, so that the API answers
/// exactly as without CORS.
fn cors(http: &HttpSettings) -> Option<CorsLayer> {
    let origins = http.cors_origins().unwrap_or_default();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([axum::http::header::CONTENT_TYPE, REQUEST_ID])
            .expose_headers([REQUEST_ID])
            .max_age(Duration::from_secs(600)),
    )
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
