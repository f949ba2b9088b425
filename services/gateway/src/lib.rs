//! The gateway: holds the visitors' websockets and pushes each message of a thread to every
//! socket open on it, whoever posted it (the HTTP API or an outside publisher on NATS).
//!
//! Any number of gateways run side by side and keep no state another needs: each subscribes
//! only to the threads its own sockets watch (see [`feeds`]), so NATS delivers a thread's
//! messages to exactly the gateways that need them. A socket shows only what the event stream
//! stored, and a client that reconnects with `?since=<message id>` gets what it missed first.
//! A thread erased by an operator has its sockets closed with 4404 and refuses new ones (404).

pub mod feeds;
pub mod history;
pub mod limits;
pub mod socket;

use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use clap::Args;
use feeds::{Backlog, Feeds, WatchError};
use futures::StreamExt;
use limits::Admission;
use serde_json::json;
use socket::{close_for_backlog, session, SessionLimits};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use threadline_nats::NatsSettings;
use threadline_ports::settings::parse_duration;
use threadline_ports::{report, EventLog, StoreError, ThreadMessages};
use threadline_runtime::client::Client;
use threadline_runtime::metrics::register;
use threadline_runtime::server::{method_not_allowed, NOT_FOUND_DETAIL};
use threadline_runtime::{HttpSettings, Role};
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
    /// Each watched thread holds a queue of this many slots (about 40 bytes each).
    #[arg(long, env = "WS_CLIENT_QUEUE", default_value_t = 64)]
    pub ws_client_queue: usize,

    /// Most websockets this gateway holds at once (0: no limit); past it the upgrade gets 503.
    /// Keep it below the process's open-file limit.
    #[arg(long, env = "WS_MAX_SOCKETS", default_value_t = 15_000)]
    pub ws_max_sockets: usize,

    /// Most websockets from one client (an IPv4 address or an IPv6 /64; behind a proxy in
    /// TRUSTED_PROXIES, the address it forwards) at once (0: no limit); past it the upgrade
    /// gets 429. High enough for the visitors behind one carrier-grade NAT or office proxy.
    #[arg(long, env = "WS_MAX_SOCKETS_PER_IP", default_value_t = 1_000)]
    pub ws_max_sockets_per_ip: usize,

    /// Largest frame or message (fragments together) a client may send; a larger one closes
    /// the socket with 1009. Clients of the contract send nothing.
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub ws_max_message_bytes: usize,

    /// Origins (`https://shop.example`, comma-separated) allowed to open a websocket; a
    /// browser's upgrade from any other gets 403. Empty: every origin, as the contract does.
    #[arg(long, env = "WS_ALLOWED_ORIGINS", value_delimiter = ',', num_args = 0..)]
    pub ws_allowed_origins: Vec<String>,
}

/// Bytes the websocket reads from the network at a time; the buffer is kept per socket. The
/// contract's clients send only control frames (a pong is at most 131 bytes); a larger
/// message, up to `WS_MAX_MESSAGE_BYTES`, makes the buffer grow for as long as it takes.
const READ_BUFFER_BYTES: usize = 256;

/// Settings of earlier versions that a later one replaced: a gateway refuses to start with
/// one rather than silently stop believing its proxies.
const RENAMED: [(&str, &str); 2] = [
    ("WS_TRUSTED_PROXIES", "TRUSTED_PROXIES"),
    ("WS_FORWARDED_HEADER", "FORWARDED_HEADER"),
];

/// Stops a process that still sets one of the [`RENAMED`] settings, with one line.
pub fn refuse_renamed_settings() -> anyhow::Result<()> {
    for (old, new) in RENAMED {
        if std::env::var_os(old).is_some() {
            anyhow::bail!("{old} is now {new}, one setting for every role; rename it");
        }
    }
    Ok(())
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
    admission: Arc<Admission>,
    max_message_bytes: usize,
    limits: SessionLimits,
    sessions: TaskTracker,
    shutdown: CancellationToken,
}

impl Gateway {
    /// A gateway on `log`: the event log that says which threads exist, and their messages.
    pub fn new<L: EventLog + ThreadMessages>(
        log: Arc<L>,
        settings: &GatewaySettings,
        shutdown: CancellationToken,
    ) -> Self {
        let feeds = Feeds::new(log.clone(), settings.ws_client_queue);
        tokio::spawn(close_erased_threads(
            log.clone(),
            feeds.clone(),
            shutdown.clone(),
        ));
        Self {
            log,
            feeds,
            admission: Admission::new(
                settings.ws_max_sockets,
                settings.ws_max_sockets_per_ip,
                settings.ws_allowed_origins.clone(),
            ),
            max_message_bytes: settings.ws_max_message_bytes.max(125),
            limits: SessionLimits {
                ping_interval: settings.ws_ping_interval,
                idle_timeout: settings.ws_idle_timeout,
                send_timeout: settings.ws_send_timeout,
            },
            sessions: TaskTracker::new(),
            shutdown,
        }
    }

    /// Once shutdown fires, waits up to `grace` for the open sessions to close (each gets a
    /// 1012 close frame). Runs beside the server's own drain, so both fit in one `grace`.
    pub async fn drain(&self, grace: Duration) {
        self.shutdown.cancelled().await;
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("websockets still open after {grace:?}; stopping anyway");
        }
    }
}

/// Closes the sockets of each thread erased (close code 4404), until `shutdown` fires. Having
/// missed some erasures, it asks whether each thread watched still exists.
async fn close_erased_threads(
    log: Arc<dyn EventLog>,
    feeds: Arc<Feeds>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut erasures = log.erasures();
    loop {
        let heard = tokio::select! {
            _ = shutdown.cancelled() => return,
            heard = erasures.recv() => heard,
        };
        match heard {
            Ok(thread) => feeds.erase(thread),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed erasures: checking every thread watched");
                for thread in feeds.watched() {
                    if matches!(log.thread_exists(thread).await, Ok(false)) {
                        feeds.erase(thread);
                    }
                }
            }
            Err(RecvError::Closed) => return,
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

/// The upgrade request, or why it is none (answered with a status and a JSON body, after the
/// checks of the path).
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

fn unavailable(cause: StoreError) -> Response {
    tracing::error!("refusing a websocket: {}", report(&cause));
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"detail": "Service temporarily unavailable, try again later."})),
    )
        .into_response()
}

fn bad_since(text: &str, why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "since": [why.replace("{}", text)] })),
    )
        .into_response()
}

/// The `since` query parameter of an upgrade's query string: `Ok(None)` when absent, the
/// value as sent (decoded) when it is not a message id. Public for the fuzz targets.
pub fn parse_since(query: Option<&str>) -> Result<Option<Uuid>, String> {
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == "since")
        .map(|(_, value)| value)
    else {
        return Ok(None);
    };
    let value = percent_decode(value);
    match Uuid::try_parse(&value) {
        Ok(id) => Ok(Some(id)),
        Err(_) => Err(value),
    }
}

/// Decodes `%xx` escapes and `+`; a broken escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            // Two hex digits: `from_str_radix` alone would also take a sign (`%+4`).
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tracing::instrument(skip_all, fields(thread_id))]
async fn connect(
    State(gateway): State<Gateway>,
    client: Option<Extension<Client>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    thread: Result<Path<String>, PathRejection>,
    Upgrade(upgrade): Upgrade,
) -> Response {
    let Some(thread) = thread.ok().and_then(|Path(t)| Uuid::try_parse(&t).ok()) else {
        return not_found();
    };
    tracing::Span::current().record("thread_id", tracing::field::display(thread));
    let refused = |refusal: limits::Refusal| {
        (
            refusal.status(),
            Json(json!({ "detail": refusal.detail() })),
        )
            .into_response()
    };
    if let Err(refusal) = gateway.admission.check_origin(&headers) {
        return refused(refusal);
    }
    let since = match parse_since(query.as_deref()) {
        Ok(since) => since,
        Err(value) => return bad_since(&value, "\u{201c}{}\u{201d} is not a valid UUID."),
    };
    // Whatever would be refused anyway (a request that is no upgrade, one past the limits of
    // sockets) is refused before the log is asked: only an upgrade that may open a socket
    // costs the stream leader a lookup, and it holds its place in the limits meanwhile.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection,
    };
    let client = client.map_or(Client::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), |c| c.0);
    let permit = match gateway.admission.admit(client.key) {
        Ok(permit) => permit,
        Err(refusal) => return refused(refusal),
    };
    match gateway.log.thread_exists(thread).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(e) => return unavailable(e),
    }
    let mut watch = match gateway.feeds.watch(thread, since).await {
        Ok(watch) => watch,
        Err(WatchError::UnknownSince(id)) => {
            return bad_since(&id.to_string(), "Message \"{}\" is not in this thread.")
        }
        // Erased since the check above.
        Err(WatchError::UnknownThread(_)) => return not_found(),
        Err(WatchError::Store(e)) => return unavailable(e),
    };
    // Counted from the 101 on, not from when the upgraded connection's task first runs: a
    // shutdown in between still waits for this socket and sends it its close frame.
    let tracked = gateway.sessions.token();
    // The socket's log lines carry the upgrade request's span (its request id) for its life.
    let span = tracing::info_span!("socket");
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_frame_size(gateway.max_message_bytes)
        .max_message_size(gateway.max_message_bytes)
        .on_upgrade(move |socket| {
            // Split here, so that the session's task holds the two small halves and not the
            // socket as well.
            let (sink, incoming) = socket.split();
            let (limits, shutdown) = (gateway.limits, gateway.shutdown);
            async move {
                let _tracked = tracked;
                let _open = OpenSocket::new();
                let ended = match watch.take_backlog() {
                    Backlog::Frames {
                        frames,
                        skip_through,
                    } => {
                        let erased = watch.erased();
                        let live = watch.receiver();
                        session(
                            sink,
                            incoming,
                            frames,
                            skip_through,
                            live,
                            limits,
                            shutdown,
                            erased,
                        )
                        .await
                    }
                    Backlog::TooLong => close_for_backlog(sink, limits).await,
                };
                drop(permit);
                tracing::debug!(%thread, ?ended, "websocket closed");
            }
            .instrument(span)
        })
}

/// Counts an open socket in the sockets-open gauge for as long as it lives.
struct OpenSocket;

impl OpenSocket {
    fn new() -> Self {
        metrics::gauge!(threadline_runtime::metrics::names::SOCKETS_OPEN).increment(1.0);
        OpenSocket
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        metrics::gauge!(threadline_runtime::metrics::names::SOCKETS_OPEN).decrement(1.0);
    }
}

/// Runs the `gateway` role until `shutdown` fires: it stops accepting, and its open sockets
/// get a 1012 close frame (service restart) so that their clients reconnect elsewhere.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    refuse_renamed_settings()?;
    let Some((role, log)) = Role::start_reader(
        settings.listen_addr,
        &settings.nats,
        &settings.http,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let gateway = Gateway::new(log, &settings.gateway, shutdown);
    let grace = role.shutdown_timeout();
    role.metrics(register::gateway)
        .routes(router(gateway.clone()))
        .serve_beside(gateway.drain(grace))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_read_from_the_query() {
        let id = "8ff637eb-e83c-11f1-84cb-7bba21cdf64d";
        assert_eq!(parse_since(None), Ok(None));
        assert_eq!(parse_since(Some("other=1")), Ok(None));
        assert_eq!(
            parse_since(Some(&format!("a=b&since={id}"))),
            Ok(Some(Uuid::try_parse(id).unwrap()))
        );
        assert_eq!(parse_since(Some("since=")), Err(String::new()));
        assert_eq!(parse_since(Some("since=n%C3%B6pe+x")), Err("nöpe x".into()));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn a_sign_is_not_a_hex_digit_of_an_escape() {
        // Found by fuzzing (tests/fuzz, gateway_upgrade): `%+4` decoded as the byte 0x04.
        assert_eq!(percent_decode("%+4"), "% 4");
        assert_eq!(percent_decode("%-4%2B"), "%-4+");
        assert_eq!(parse_since(Some("since=n%+4")), Err("n% 4".into()));
    }
}
