//! Serving a router until shutdown: accept the connections the limits allow ([`crate::limits`])
//! and serve each until it closes or passes its bounds ([`crate::connection`]); on shutdown
//! stop accepting, let in-flight requests finish (bounded). And what every role's router
//! gets: a JSON 404, `/metrics`, HTTP metrics, a request id, request tracing, CORS, a bound on
//! each request (`HTTP_REQUEST_TIMEOUT`) and on the requests in flight of each client a
//! trusted proxy forwards. With an admin listener (`ADMIN_LISTEN_ADDR`), `/metrics` and
//! `/readyz` are served there only, and the public listener answers them 404.

use crate::connection::{Activity, Counted};
use crate::limits::{Admission, ConnectionLimits, Gate, Holding};
use crate::metrics::names;
use crate::HttpSettings;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The header that carries a request's id: kept when a trusted proxy sent one, made
/// otherwise, and returned in the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The header under which a client retries a POST safely; a page on another origin sends it
/// after a CORS preflight.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The longest request id taken from a proxy (a UUID is 36 bytes); a longer one is replaced,
/// since every log line of the request carries it.
pub const REQUEST_ID_MAX_BYTES: usize = 128;

/// The paths of the admin listener: the probes and the scrape.
const ADMIN_PATHS: [&str; 3] = ["/metrics", "/readyz", "/healthz"];
/// The paths the public listener stops answering when there is an admin listener.
const ADMIN_ONLY_PATHS: [&str; 2] = ["/metrics", "/readyz"];

/// A proxy whose forwarded request id (and, for the gateway, forwarding header) is
/// believed: one address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IP address or CIDR block like 10.0.0.0/8");
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(bad)?,
            None => bits,
        };
        Ok(Self { network, prefix })
    }
}

impl TrustedProxy {
    /// Whether `address` is this proxy or in its block.
    pub fn contains(&self, address: IpAddr) -> bool {
        let (network, address, bits) = match (self.network, address.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(n) as u128, u32::from(a) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        let host_bits = bits - u32::from(self.prefix);
        host_bits >= bits || (network >> host_bits) == (address >> host_bits)
    }
}

/// A role's listening sockets: the public one (`LISTEN_ADDR`) and, when `ADMIN_LISTEN_ADDR`
/// is set, the admin one; and the limits of the connections they take.
pub struct Listener {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
    pub limits: ConnectionLimits,
}

/// Serves `router` on `listener` until `shutdown` fires, then gives in-flight requests up to
/// `grace` to finish. With an admin listener, it serves only `/metrics`, `/readyz` and
/// `/healthz`, and the public one everything but `/metrics` and `/readyz`.
pub async fn serve(
    listener: Listener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let limits = listener.limits;
    let public = Accepting {
        limits: limits.clone(),
        gate: limits.public.clone(),
        announce: true,
    };
    let Some(admin) = listener.admin else {
        return serve_one(listener.public, router, public, shutdown, grace).await;
    };
    let public_router = router
        .clone()
        .layer(axum::middleware::from_fn(outside_admin_paths));
    let admin_router = router.layer(axum::middleware::from_fn(admin_paths_only));
    let admin_side = Accepting {
        gate: limits.admin.clone(),
        limits,
        announce: false,
    };
    let (public, admin) = tokio::join!(
        serve_one(
            listener.public,
            public_router,
            public,
            shutdown.clone(),
            grace
        ),
        serve_one(admin, admin_router, admin_side, shutdown, grace),
    );
    public.and(admin)
}

/// How one listener takes connections: the limits, the count its connections go in, and
/// whether its address is logged as `listening on` (the public one's).
#[derive(Debug, Clone)]
pub(crate) struct Accepting {
    pub limits: ConnectionLimits,
    pub gate: Arc<Gate>,
    pub announce: bool,
}

/// Serves one listener until `shutdown` fires: accepts each connection its limits allow
/// (closing the others at once) and serves it with hyper, websocket upgrades included,
/// until it closes or passes a bound of [`connection`](crate::connection); then stops
/// accepting and gives the open connections up to `grace` to finish their requests.
/// Stays close to `axum::serve`, which has no such limits.
pub(crate) async fn serve_one(
    listener: TcpListener,
    router: Router,
    accepting: Accepting,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if accepting.announce {
        tracing::info!("listening on {addr}");
    }
    let connections = TaskTracker::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_errors.handle(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let client = accepting.limits.client_of(peer);
        let permit = match accepting.gate.admit(client) {
            Ok(permit) => permit,
            Err(refusal) => {
                metrics::counter!(names::CONNECTIONS_REFUSED, "reason" => refusal.reason())
                    .increment(1);
                // Closed at once: no file, task or buffer is spent on it.
                drop(stream);
                continue;
            }
        };
        let activity = Activity::new(
            accepting.limits.header_timeout,
            accepting.limits.idle_timeout,
        );
        let io = TokioIo::new(Counted::new(stream, activity.clone(), permit));
        connections.spawn(serve_connection(
            io,
            peer,
            router.clone(),
            activity,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within {grace:?}; stopping anyway");
    }
    Ok(())
}

/// Serves one connection until it closes, passes its deadline (closed without an answer:
/// no request is in flight then), or, after `shutdown`, has finished its request in flight.
async fn serve_connection(
    io: TokioIo<Counted<TcpStream>>,
    peer: SocketAddr,
    router: Router,
    activity: Arc<Activity>,
    shutdown: CancellationToken,
) {
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            // The peer's address is known to handlers (the gateway counts sockets per
            // client) and to the request id's check.
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = activity.request_begun();
            let answered = router.clone().oneshot(request.map(Body::new));
            async move {
                let response = answered.await?;
                Ok::<_, Infallible>(response.map(|body| Holding::new(body, in_flight)))
            }
        })
    };
    let builder = Builder::new(TokioExecutor::new());
    // The header timeout is Activity's, not hyper's (see `connection`): hyper's would close
    // kept-alive connections after it too. Without a timer, hyper sets none.
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    // One timer for the connection's life, moved only when the time to look again changes.
    let look_again = tokio::time::sleep_until(activity.wake_at());
    tokio::pin!(look_again);
    loop {
        let at = activity.wake_at();
        if look_again.deadline() != at {
            look_again.as_mut().reset(at);
        }
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::trace!("connection from {peer} ended: {e}");
                }
                return;
            }
            () = activity.changed() => {}
            () = look_again.as_mut() => {
                if let Some(timeout) = activity.expired() {
                    metrics::counter!(names::CONNECTIONS_TIMED_OUT, "timeout" => timeout.label())
                        .increment(1);
                    tracing::debug!("closing the connection from {peer}: {} timeout", timeout.label());
                    return;
                }
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What the accept loop does when `accept` fails: out of files (EMFILE, ENFILE) or memory,
/// it logs at most once a second, waits a little for files to be freed, and goes on.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const PAUSE: Duration = Duration::from_millis(50);
    const LOG_EVERY: Duration = Duration::from_secs(1);

    async fn handle(&mut self, error: std::io::Error) {
        use std::io::ErrorKind;
        // The client gave up before it was accepted: nothing to do.
        if matches!(
            error.kind(),
            ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused
        ) {
            return;
        }
        if self
            .last_logged
            .map_or(true, |at| at.elapsed() >= Self::LOG_EVERY)
        {
            tracing::error!(
                "cannot accept connections: {error} ({} more failures since the last report); \
                 is MAX_CONNECTIONS above what the open-file limit leaves?",
                self.unlogged
            );
            self.last_logged = Some(std::time::Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        tokio::time::sleep(Self::PAUSE).await;
    }
}

/// Middleware of the public listener beside an admin one: `/metrics` and `/readyz` are the
/// admin listener's.
async fn outside_admin_paths(request: Request, next: Next) -> Response {
    if ADMIN_ONLY_PATHS.contains(&request.uri().path()) {
        return not_found().await.into_response();
    }
    next.run(request).await
}

/// Middleware of the admin listener: it serves nothing but the probes and the scrape.
async fn admin_paths_only(request: Request, next: Next) -> Response {
    if !ADMIN_PATHS.contains(&request.uri().path()) {
        return not_found().await.into_response();
    }
    next.run(request).await
}

/// Middleware: drops a client's `x-request-id` unless its peer is a trusted proxy and the id
/// is short and printable, so that the role makes one instead. Anyone else could choose the
/// id that every log line of their request carries, or make every line of it huge.
async fn screen_request_id(
    State(trusted): State<Arc<[TrustedProxy]>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(&REQUEST_ID) {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let from_proxy = peer.is_some_and(|p| trusted.iter().any(|t| t.contains(p)));
        let acceptable = request.headers().get_all(&REQUEST_ID).iter().count() == 1
            && request.headers().get(&REQUEST_ID).is_some_and(|id| {
                !id.is_empty()
                    && id.len() <= REQUEST_ID_MAX_BYTES
                    && id.as_bytes().iter().all(u8::is_ascii_graphic)
            });
        if !(from_proxy && acceptable) {
            request.headers_mut().remove(&REQUEST_ID);
        }
    }
    next.run(request).await
}

/// The body DRF answers 404 with.
pub const NOT_FOUND_DETAIL: &str = "Not found.";

/// Completes a router of one or more roles for serving: a JSON 404 for unknown paths,
/// `GET /metrics` and request counts and latencies by route and status (registered at
/// zero for the probes and the scrape), a request id (`x-request-id`, a trusted proxy's
/// or a new one) in the response and on the span of every log line the
/// request causes (a websocket's too, for its whole life), CORS headers for the allowed
/// origins (none by default), a 408 for a request with a body whose response has not begun
/// within `HTTP_REQUEST_TIMEOUT`, and a 429 for a request past `MAX_CONNECTIONS_PER_IP` in flight
/// from one client a trusted proxy forwards. The origins were checked at start-up ([`crate::startup`]).
pub fn finish(router: Router, http: &HttpSettings) -> Router {
    crate::metrics::register::http();
    let trusted: Arc<[TrustedProxy]> = http.trusted_proxies.clone().into();
    let connections = &http.connections;
    let admitted = router
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Admission::new(
                http.clients(),
                connections.max_connections_per_ip,
                connections.http_request_timeout,
            ),
            crate::limits::admit,
        ));
    let traced = admitted
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::from_fn_with_state(
            trusted,
            screen_request_id,
        ));
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
            .allow_headers([
                axum::http::header::CONTENT_TYPE,
                REQUEST_ID,
                IDEMPOTENCY_KEY,
            ])
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
