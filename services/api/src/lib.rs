//! The HTTP API: validates requests, appends `ThreadCreated` and `MessagePosted` events to the
//! event log, and answers `GET /chat/thread/:id/` from the read model.
//!
//! It never writes the read model; the projector does. Validation follows the original DRF
//! service's texts (see `fields` and `request`), so existing clients cannot tell the
//! difference. The API's OpenAPI document is `openapi.json` beside this crate's sources,
//! served at `/openapi.json`.

pub mod agent;
pub mod demo;
pub mod error;
pub mod fields;
pub mod hot;
pub mod idempotency;
pub mod messages;
pub mod request;
pub mod threads;
pub mod throttle;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use clap::Args;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use threadline_nats::{JetStreamLog, KvIdempotency, NatsSettings};
use threadline_ports::secret::Secret;
use threadline_ports::settings::{parse_bytes, parse_duration, ByteSize};
use threadline_ports::{EventLog, ReadModel, StoreError};
use threadline_postgres::{DatabaseSettings, PgReadModel};
use threadline_runtime::metrics::register;
use threadline_runtime::{HttpSettings, Role};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use idempotency::Idempotency;
pub use throttle::{Rate, Throttles};

/// How the API answers.
#[derive(Debug, Clone, Args)]
pub struct ApiSettings {
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 2_621_440)]
    pub max_body_bytes: usize,

    /// How long a GET waits for the read model to catch up with the thread's latest event
    /// before it answers from the read model as it is.
    #[arg(long, env = "READ_YOUR_WRITES_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub read_your_writes_timeout: Duration,

    /// How long a request answered under an `Idempotency-Key` is remembered: a retry with the
    /// same key within this window gets the original response. At least 2m, the event
    /// stream's duplicate window.
    #[arg(long, env = "IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_idempotency_window)]
    pub idempotency_window: Duration,

    /// Most bytes of requests answered under an `Idempotency-Key` that are remembered, e.g.
    /// 1GB (0: no bound). A record takes about the size of its event; when the bound is
    /// reached, requests with a key are answered 503 until the oldest records expire, and
    /// requests without one are served as before.
    #[arg(long, env = "IDEMPOTENCY_MAX_BYTES", default_value = "1GB", value_parser = parse_bytes)]
    pub idempotency_max_bytes: ByteSize,

    /// Memory for threads kept to answer GETs without PostgreSQL, while the event log holds
    /// nothing newer of them (0: none). A thread larger than a whole read (1,000 messages or
    /// 1 MiB) is never kept.
    #[arg(long, env = "HOT_THREADS_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub hot_threads_bytes: ByteSize,

    /// Most `POST /chat/thread/` per client (an IPv4 address or an IPv6 /64) and per api
    /// process, in DRF's rate syntax: `10/min` (N/s, N/m, N/h or N/d; only the period's first
    /// letter counts). Past it: 429 with Retry-After. Unset: no limit.
    #[arg(long, env = "RATE_LIMIT_THREADS", value_parser = throttle::parse_rate)]
    pub rate_limit_threads: Option<Rate>,

    /// Most `POST /chat/message/` per client and per api process, as RATE_LIMIT_THREADS:
    /// `60/min`. Unset: no limit.
    #[arg(long, env = "RATE_LIMIT_MESSAGES", value_parser = throttle::parse_rate)]
    pub rate_limit_messages: Option<Rate>,

    /// Most clients each rate limit keeps a count of (about 100 bytes each); while it is full
    /// of recent ones, the clients it does not count yet share one count.
    #[arg(long, env = "RATE_LIMIT_MAX_CLIENTS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_max_clients: u32,

    /// Most messages a thread may hold for a post to add one more (0: no bound); a post to a
    /// thread that holds them gets 400 `{"thread": [...]}`. Agent replies published straight
    /// to NATS are not refused, and count.
    #[arg(long, env = "THREAD_MAX_MESSAGES", default_value_t = 0)]
    pub thread_max_messages: u64,

    /// Token that an HTTP post of an agent's message (`send_by_user` false or absent) must
    /// carry as `Authorization: Bearer <token>`, else 403. Unset: anyone may post as an agent.
    #[arg(long, env = "AGENT_TOKEN", hide_env_values = true, value_parser = agent::TokenParser, conflicts_with = "agent_token_file")]
    pub agent_token: Option<Secret>,

    /// File holding AGENT_TOKEN (a mounted secret), read once at start.
    #[arg(long, env = "AGENT_TOKEN_FILE", value_parser = agent::read_token_file)]
    pub agent_token_file: Option<Secret>,

    #[command(flatten)]
    pub demo: demo::DemoSettings,
}

impl ApiSettings {
    /// The agent token, from AGENT_TOKEN or AGENT_TOKEN_FILE, if either is set.
    pub fn agent_token(&self) -> Option<&Secret> {
        self.agent_token.as_ref().or(self.agent_token_file.as_ref())
    }
}

/// The stream forgets a `Nats-Msg-Id` after 2 minutes; a shorter window would let a retry that
/// JetStream still deduplicates be taken for a new request.
fn parse_idempotency_window(text: &str) -> Result<Duration, String> {
    let window = parse_duration(text)?;
    if window < Duration::from_secs(120) {
        return Err(format!(
            "{text:?} is shorter than the event stream's 2m duplicate window"
        ));
    }
    Ok(window)
}

/// Everything the `api` role needs to run on its own.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub api: ApiSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub http: HttpSettings,
}

/// What the handlers share, behind one `Arc`: axum clones the state for every request, and
/// a clone field by field (eight reference counts and the subjects' prefix) cost a GET from
/// memory about 3 % of the api's CPU.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub log: Arc<dyn EventLog>,
    pub read: Arc<dyn ReadModel>,
    pub idempotency: Idempotency,
    /// The bound on a request's work with the event log (`NATS_TIMEOUT`): recording an
    /// idempotency key and appending, retries included.
    pub append_timeout: Duration,
    pub settings: Arc<ApiSettings>,
    pub hot: hot::HotThreads,
    /// The rate limits of the POSTs, per client.
    pub throttles: Throttles,
}

impl AppState {
    /// As [`open`](Self::open), retried until NATS answers; `None` if shutdown fired first.
    pub async fn open_until_ready(
        log: &Arc<JetStreamLog>,
        read: &Arc<PgReadModel>,
        settings: &ApiSettings,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        let hot = hot::HotThreads::new(
            settings.hot_threads_bytes,
            read.watch_changes(shutdown.clone()),
        );
        let state = threadline_runtime::retry::until_ready(
            "opening the idempotency bucket",
            shutdown,
            || Self::open(log.clone(), read.clone(), settings.clone(), hot.clone()),
        )
        .await?;
        tokio::spawn(state.clone().forget_erased_threads(shutdown.clone()));
        Some(state)
    }

    /// Drops each thread erased from the threads kept in memory, until `shutdown` fires (the
    /// log's own memory of threads that exist drops it by itself). Having missed some, it
    /// drops them all.
    pub async fn forget_erased_threads(self, shutdown: CancellationToken) {
        use tokio::sync::broadcast::error::RecvError;
        let mut erasures = self.log.erasures();
        loop {
            let heard = tokio::select! {
                _ = shutdown.cancelled() => return,
                heard = erasures.recv() => heard,
            };
            match heard {
                Ok(thread) => self.hot.forget(thread),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "missed erasures: forgetting every thread kept");
                    self.hot.forget_all();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// The API's state on JetStream and PostgreSQL: opens (or creates) the idempotency bucket.
    pub async fn open(
        log: Arc<JetStreamLog>,
        read: Arc<dyn ReadModel>,
        settings: ApiSettings,
        hot: hot::HotThreads,
    ) -> Result<Self, StoreError> {
        let store = KvIdempotency::open(
            &log,
            &log.settings().idempotency_bucket,
            settings.idempotency_window,
            settings.idempotency_max_bytes,
        )
        .await?;
        let idempotency = Idempotency::new(Arc::new(store), log.subjects().clone());
        Ok(Self::from(Shared {
            append_timeout: log.settings().nats_timeout,
            log,
            read,
            idempotency,
            throttles: Throttles::from_settings(&settings),
            settings: Arc::new(settings),
            hot,
        }))
    }
}

/// The API's routes (without health routes and without a fallback, so that roles can be
/// merged on one port).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/chat/thread", only(post(threads::create_thread)))
        .route("/chat/thread/", only(post(threads::create_thread)))
        .route("/chat/thread/{id}", only(get(threads::get_thread)))
        .route("/chat/thread/{id}/", only(get(threads::get_thread)))
        .route("/chat/message", only(post(messages::post_message)))
        .route("/chat/message/", only(post(messages::post_message)))
        .route(
            "/openapi.json",
            get(openapi).fallback(threadline_runtime::server::method_not_allowed),
        )
        .merge(demo::router(&state.settings.demo))
        .with_state(state)
}

/// The OpenAPI 3.1 document of this API, committed as `services/api/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// A route that answers OPTIONS as DRF does and any other unserved method with 405.
fn only(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route
        .options(options)
        .fallback(threadline_runtime::server::method_not_allowed)
}

async fn options() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::ALLOW, "GET, POST, HEAD, OPTIONS")],
        Json(json!({
            "renders": ["application/json"],
            "parses": ["application/json"],
        })),
    )
}

/// Runs the `api` role until `shutdown` fires.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some((role, log, read)) = Role::start_with_read_model(
        settings.listen_addr,
        &settings.nats,
        &settings.database,
        &settings.http,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let Some(state) = AppState::open_until_ready(&log, &read, &settings.api, &shutdown).await
    else {
        return Ok(());
    };
    role.metrics(register::api)
        .routes(router(state))
        .serve()
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_is_openapi_3_1_with_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        for path in ["/chat/thread/", "/chat/thread/{id}/", "/chat/message/"] {
            assert!(doc["paths"][path].is_object(), "{path} is not documented");
        }
    }
}
