//! The gateway: holds the visitors' websockets and pushes each message of a thread to every
//! socket open on it, whoever posted it (the HTTP API or an outside publisher on NATS).
//!
//! Any number of gateways run side by side and keep no state another needs: each subscribes
//! only to the threads its own sockets watch (see [`feeds`]), so NATS delivers a thread's
//! messages to exactly the gateways that need them.

pub mod feeds;
pub mod socket;

use anyhow::Context;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use feeds::Feeds;
use serde_json::json;
use socket::{session, SessionLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use threadline_infra::server::{method_not_allowed, NOT_FOUND_DETAIL};
use threadline_infra::settings::parse_duration;
use threadline_infra::startup::{self, Started};
use threadline_infra::{health_router, serve, EventLog, HttpSettings, JetStreamLog, NatsSettings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

/// How the gateway treats its sockets.
#[derive(Debug, Clone, Args)]
pub struct GatewaySettings {
    /// How often the server pings each websocket.
    #[arg(long, env = "WS_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// A websocket that sends nothing, not even a pong, for this long is dropped.
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ws_idle_timeout: Duration,

    /// A frame that a client does not take within this long closes its socket.
    #[arg(long, env = "WS_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_send_timeout: Duration,

    /// Messages a socket may fall behind its thread before it is closed as too slow (1013).
    #[arg(long, env = "WS_CLIENT_QUEUE", default_value_t = 256)]
    pub ws_client_queue: usize,
}

/// Everything the `gateway` role needs to run on its own.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the websocket endpoint listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8001")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub gateway: GatewaySettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub http: HttpSettings,
}

/// What the websocket handler shares.
#[derive(Clone)]
pub struct Gateway {
    log: Arc<dyn EventLog>,
    feeds: Arc<Feeds>,
    limits: SessionLimits,
    sessions: TaskTracker,
    shutdown: CancellationToken,
}

impl Gateway {
    pub fn new(
        log: Arc<JetStreamLog>,
        settings: &GatewaySettings,
        shutdown: CancellationToken,
    ) -> Self {
        let feeds = Feeds::new(
            log.client().clone(),
            log.subjects().clone(),
            settings.ws_client_queue,
        );
        Self {
            log,
            feeds,
            limits: SessionLimits {
                ping_interval: settings.ws_ping_interval,
                idle_timeout: settings.ws_idle_timeout,
                send_timeout: settings.ws_send_timeout,
            },
            sessions: TaskTracker::new(),
            shutdown,
        }
    }

    /// Waits, up to `grace`, for open sessions to close after shutdown.
    pub async fn drain(&self, grace: Duration) {
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("websockets still open after {grace:?}; stopping anyway");
        }
    }
}

/// The websocket route (without health routes and without a fallback).
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route(
            "/ws/chat/{thread}",
            get(connect).fallback(method_not_allowed),
        )
        .route(
            "/ws/chat/{thread}/",
            get(connect).fallback(method_not_allowed),
        )
        .with_state(gateway)
}

/// The upgrade request, read only after the thread is known to exist: a request for an
/// unknown thread is answered 404 whether or not it asks for a websocket.
struct Upgrade(Result<WebSocketUpgrade, Response>);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Upgrade(
            WebSocketUpgrade::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    let detail = rejection.body_text();
                    (rejection.status(), Json(json!({ "detail": detail }))).into_response()
                }),
        ))
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "detail": NOT_FOUND_DETAIL })),
    )
        .into_response()
}

fn unavailable(cause: impl std::fmt::Display) -> Response {
    tracing::error!("refusing a websocket: {cause}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"detail": "Service temporarily unavailable, try again later."})),
    )
        .into_response()
}

#[tracing::instrument(skip_all, fields(thread_id))]
async fn connect(
    State(gateway): State<Gateway>,
    thread: Result<Path<String>, PathRejection>,
    Upgrade(upgrade): Upgrade,
) -> Response {
    let Some(thread) = thread.ok().and_then(|Path(t)| Uuid::try_parse(&t).ok()) else {
        return not_found();
    };
    tracing::Span::current().record("thread_id", tracing::field::display(thread));
    match gateway.log.thread_exists(thread).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(e) => return unavailable(e),
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection,
    };
    let mut watch = match gateway.feeds.watch(thread).await {
        Ok(watch) => watch,
        Err(e) => return unavailable(e),
    };
    // Counted from the 101 on, not from when the upgraded connection's task first runs: a
    // shutdown in between still waits for this socket and sends it its going-away close.
    let tracked = gateway.sessions.token();
    // The socket's log lines carry the upgrade request's span (its request id) for its life.
    let span = tracing::info_span!("socket");
    upgrade.on_upgrade(move |socket| {
        async move {
            let _tracked = tracked;
            let _open = OpenSocket::new();
            let ended = session(
                socket,
                watch.receiver(),
                gateway.limits,
                gateway.shutdown.clone(),
            )
            .await;
            tracing::debug!(%thread, ?ended, "websocket closed");
        }
        .instrument(span)
    })
}

/// Counts an open socket in the sockets-open gauge for as long as it lives.
struct OpenSocket;

impl OpenSocket {
    fn new() -> Self {
        metrics::gauge!(threadline_infra::metrics::names::SOCKETS_OPEN).increment(1.0);
        OpenSocket
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        metrics::gauge!(threadline_infra::metrics::names::SOCKETS_OPEN).decrement(1.0);
    }
}

/// Runs the `gateway` role until `shutdown` fires; open sockets get a going-away close frame.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(Started { listener, log }) = startup::start(
        settings.listen_addr,
        &settings.nats,
        &settings.http,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let gateway = Gateway::new(log.clone(), &settings.gateway, shutdown.clone());
    let app = threadline_infra::server::finish(
        router(gateway.clone()).merge(health_router(vec![log])),
        &settings.http,
    );
    let served = serve(listener, app, shutdown, settings.http.shutdown_timeout).await;
    gateway.drain(settings.http.shutdown_timeout).await;
    served.context("HTTP server failed")
}
