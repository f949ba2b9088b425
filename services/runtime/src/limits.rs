//! How many connections and requests a role takes at once: at most `MAX_CONNECTIONS` open
//! connections per process (what the open-file limit leaves by default), at most
//! `MAX_CONNECTIONS_PER_IP` from one client ([`ClientKey`]), and, behind a proxy of
//! `TRUSTED_PROXIES` (whose connections carry many clients and are not counted per address),
//! at most as many requests in flight per forwarded client. A connection past a limit is
//! closed as soon as it is accepted; a request past the per-client one is answered 429.
//! How long a connection may take is [`crate::connection`]'s.

use crate::client::{Client, ClientKey, Clients};
use crate::metrics::names;
use crate::settings::ConnectionSettings;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_http::timeout::TimeoutLayer;

/// Files a process keeps open for what is not a client's connection: NATS, the PostgreSQL
/// pool (`DATABASE_MAX_CONNECTIONS`, 10 by default), log files, the listeners, the runtime's
/// own. `MAX_CONNECTIONS` may use the rest of the open-file limit.
pub const RESERVED_FILES: u64 = 256;

/// Most connections open at once on the admin listener (`ADMIN_LISTEN_ADDR`): the probes and
/// the scrapes need few, and an attack on the public listener does not take them. They come
/// out of the open-file limit beside [`RESERVED_FILES`].
pub const ADMIN_MAX_CONNECTIONS: u64 = 64;

/// The open-file limit the process asks for at start: raised from its soft limit towards the
/// hard one (as Go programs do), but no further than this.
const OPEN_FILES_WANTED: u64 = 1 << 20;

/// The answer to a request past the per-client limit of requests in flight.
pub const TOO_MANY_REQUESTS_DETAIL: &str = "Too many requests in progress from this address.";

/// The answer to a request whose response has not begun within `HTTP_REQUEST_TIMEOUT`.
pub const REQUEST_TIMEOUT_DETAIL: &str = "Request timed out.";

/// Why a connection or a request was refused: the `reason` label of
/// [`names::CONNECTIONS_REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process has as many open as it may.
    Total,
    /// This client has as many open as it may.
    PerClient,
}

impl Refusal {
    pub const REASONS: [&'static str; 2] = ["max_connections", "max_connections_per_ip"];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Total => Self::REASONS[0],
            Refusal::PerClient => Self::REASONS[1],
        }
    }
}

/// Counts what is open (connections, or requests in flight) in all and per client, and
/// refuses past its limits. A [`Permit`] is one open thing; dropping it frees its place.
#[derive(Debug)]
pub struct Gate {
    max: usize,
    /// `0`: no limit per client.
    max_per_client: usize,
    /// Whether the open count is the process's open connections (the gauge).
    counts_connections: bool,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

/// One open connection or request in flight, counted until dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    client: Option<ClientKey>,
}

impl Gate {
    /// At most `max` in all and `max_per_client` per client (`0`: no limit per client).
    pub fn new(max: usize, max_per_client: usize) -> Arc<Gate> {
        Gate::build(max, max_per_client, false)
    }

    /// As [`new`](Self::new), for connections: the open ones are the gauge
    /// [`names::CONNECTIONS_OPEN`].
    pub fn for_connections(max: usize, max_per_client: usize) -> Arc<Gate> {
        Gate::build(max, max_per_client, true)
    }

    fn build(max: usize, max_per_client: usize, counts_connections: bool) -> Arc<Gate> {
        Arc::new(Gate {
            max,
            max_per_client,
            counts_connections,
            open: Mutex::new(Open::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many are open.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Takes a place, counted for `client` too unless it is `None` (a trusted proxy's
    /// connection, which carries many clients), or says which limit it would pass.
    pub fn admit(self: &Arc<Self>, client: Option<ClientKey>) -> Result<Permit, Refusal> {
        let mut open = self.lock();
        if open.total >= self.max {
            return Err(Refusal::Total);
        }
        if let Some(key) = client {
            let from_client = open.per_client.entry(key).or_default();
            if self.max_per_client > 0 && *from_client >= self.max_per_client {
                return Err(Refusal::PerClient);
            }
            *from_client += 1;
        }
        open.total += 1;
        drop(open);
        if self.counts_connections {
            metrics::gauge!(names::CONNECTIONS_OPEN).increment(1.0);
        }
        Ok(Permit {
            gate: self.clone(),
            client,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.gate.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(key) = self.client {
            if let Some(n) = open.per_client.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.per_client.remove(&key);
                }
            }
        }
        drop(open);
        if self.gate.counts_connections {
            metrics::gauge!(names::CONNECTIONS_OPEN).decrement(1.0);
        }
    }
}

/// A process's connection limits, settled at start: one [`Gate`] for the public listener
/// (and the probe server that answers on it while the role starts), one for the admin
/// listener, the timeouts, and who is a trusted proxy.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub public: Arc<Gate>,
    pub admin: Arc<Gate>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub clients: Clients,
}

impl ConnectionLimits {
    /// The limits of `settings`, with `MAX_CONNECTIONS` settled against the open-file limit
    /// (which is raised first, see [`open_file_limit`]).
    pub fn new(settings: &ConnectionSettings, clients: Clients) -> ConnectionLimits {
        let limit = open_file_limit();
        let max = max_connections(settings.max_connections, limit);
        tracing::info!(
            "at most {max} connections at once (open-file limit {}), {} per client",
            limit.map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
            match settings.max_connections_per_ip {
                0 => "any number".to_owned(),
                n => n.to_string(),
            }
        );
        ConnectionLimits {
            public: Gate::for_connections(max, settings.max_connections_per_ip),
            admin: Gate::for_connections(ADMIN_MAX_CONNECTIONS as usize, 0),
            header_timeout: settings.http_header_timeout,
            idle_timeout: settings.http_idle_timeout,
            clients,
        }
    }

    /// Who a connection from `peer` is counted as: its [`ClientKey`], or none for a trusted
    /// proxy.
    pub fn client_of(&self, peer: SocketAddr) -> Option<ClientKey> {
        let address = peer.ip().to_canonical();
        (!self.clients.is_trusted(address)).then(|| ClientKey::of(address))
    }
}

/// The process's open-file limit (`RLIMIT_NOFILE`), once its soft limit has been raised
/// towards the hard one; `None` where it cannot be read.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let raised = rlimit::increase_nofile_limit(OPEN_FILES_WANTED);
        let soft = match raised {
            Ok(soft) => Some(soft),
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit: {e}");
                rlimit::getrlimit(rlimit::Resource::NOFILE)
                    .ok()
                    .map(|(soft, _)| soft)
            }
        };
        soft.map(|s| s.min(OPEN_FILES_WANTED))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `MAX_CONNECTIONS` as served: the setting, or, unset, what the open-file `limit` leaves
/// after the reserved files; a setting above that is lowered to it, with a warning.
pub fn max_connections(setting: Option<u64>, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return setting.map_or(usize::MAX, |s| usize::try_from(s).unwrap_or(usize::MAX));
    };
    // With a small limit, half of it still goes to connections.
    let available = limit
        .saturating_sub(RESERVED_FILES + ADMIN_MAX_CONNECTIONS)
        .max(limit / 2)
        .max(1);
    let max = match setting {
        None => available,
        Some(wanted) if wanted > available => {
            tracing::warn!(
                "MAX_CONNECTIONS {wanted} would pass the open-file limit ({limit}, of which \
                 {} are kept for NATS, PostgreSQL, logs and the admin listener): serving at \
                 most {available}; raise the limit (ulimit -n, LimitNOFILE=) to serve more",
                limit - available
            );
            available
        }
        Some(wanted) => wanted,
    };
    usize::try_from(max).unwrap_or(usize::MAX)
}

/// What every request passes before its route, in one middleware (each of axum's `from_fn`
/// layers costs a request a boxed clone of the service inside it and a boxed future; three
/// of them cost a kept GET about a tenth of the api's CPU in perf):
///
/// - who it is from: a [`Client`] in its extensions (see [`Clients::address`]);
/// - a request that a trusted proxy forwards holds a place of its client's until its response
///   has been sent (its body too); past `MAX_CONNECTIONS_PER_IP` in flight it is answered
///   429. A client that connects itself is bounded by its connections already;
/// - a request with a body must have sent it and begun its response within
///   `HTTP_REQUEST_TIMEOUT` (tower-http's timeout), or it is answered 408 with a JSON body
///   and its connection closed (the body may be half read). A request without a body (a
///   GET, a websocket upgrade) has nothing to trickle in once its head is read (which
///   `HTTP_HEADER_TIMEOUT` bounds), and what it waits for has bounds of its own: a long
///   thread's GET may wait its turn among long reads for longer.
#[derive(Clone)]
pub struct Admission(Arc<Rules>);

struct Rules {
    clients: Clients,
    /// The places of the clients that trusted proxies forward; `None`: no limit per client.
    forwarded: Option<Arc<Gate>>,
    body_timeout: TimeoutLayer,
}

impl Admission {
    pub fn new(clients: Clients, max_per_client: usize, request_timeout: Duration) -> Self {
        Self(Arc::new(Rules {
            clients,
            forwarded: (max_per_client > 0).then(|| Gate::new(usize::MAX, max_per_client)),
            body_timeout: TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                request_timeout,
            ),
        }))
    }
}

/// Middleware: see [`Admission`].
pub async fn admit(
    State(admission): State<Admission>,
    mut request: Request,
    next: Next,
) -> Response {
    let rules = &admission.0;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let address = rules.clients.address(
        peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        request.headers(),
    );
    let client = Client::new(address);
    let key = client.key;
    request.extensions_mut().insert(client);
    let place = match (&rules.forwarded, peer) {
        (Some(gate), Some(peer)) if rules.clients.is_trusted(peer) => match gate.admit(Some(key)) {
            Ok(permit) => Some(permit),
            Err(_) => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(serde_json::json!({ "detail": TOO_MANY_REQUESTS_DETAIL })),
                )
                    .into_response()
            }
        },
        _ => None,
    };
    let response = if request.body().is_end_stream() {
        next.run(request).await
    } else {
        bounded(&rules.body_timeout, request, next).await
    };
    match place {
        Some(permit) => response.map(|body| Body::new(Holding::new(body, permit))),
        None => response,
    }
}

/// A request with a body under `HTTP_REQUEST_TIMEOUT`; see [`Admission`].
async fn bounded(timeout: &TimeoutLayer, request: Request, next: Next) -> Response {
    let response = match timeout.layer(next).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // The timeout's own answer: a 408 without a body (no handler answers 408).
    if response.status() != StatusCode::REQUEST_TIMEOUT
        || response.body().size_hint().exact() != Some(0)
    {
        return response;
    }
    metrics::counter!(names::CONNECTIONS_TIMED_OUT, "timeout" => "request").increment(1);
    let mut answer = (
        StatusCode::REQUEST_TIMEOUT,
        Json(serde_json::json!({ "detail": REQUEST_TIMEOUT_DETAIL })),
    )
        .into_response();
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// A response body that holds `T` (a place in a count) until it has been sent or dropped.
pub struct Holding<B, T> {
    body: B,
    _held: T,
}

impl<B, T> Holding<B, T> {
    pub fn new(body: B, held: T) -> Self {
        Holding { body, _held: held }
    }
}

impl<B, T> HttpBody for Holding<B, T>
where
    B: HttpBody + Unpin,
    T: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Option<ClientKey> {
        Some(ClientKey::of(text.parse().expect("an address")))
    }

    #[test]
    fn gates_count_in_all_and_per_client_and_free_on_drop() {
        let gate = Gate::new(3, 2);
        let a1 = gate.admit(key("1.1.1.1")).expect("a place");
        let _a2 = gate.admit(key("1.1.1.1")).expect("a place");
        assert_eq!(gate.admit(key("1.1.1.1")).err(), Some(Refusal::PerClient));
        let _proxy = gate.admit(None).expect("a proxy is not counted per client");
        assert_eq!(gate.admit(key("2.2.2.2")).err(), Some(Refusal::Total));
        drop(a1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(key("1.1.1.1")).is_ok());
        let unlimited = Gate::new(10, 0);
        let held: Vec<_> = (0..10)
            .map(|_| unlimited.admit(key("1.1.1.1")).expect("a place"))
            .collect();
        assert_eq!(unlimited.open(), held.len());
    }

    #[test]
    fn max_connections_stays_below_the_open_file_limit() {
        let kept = RESERVED_FILES + ADMIN_MAX_CONNECTIONS;
        assert_eq!(
            max_connections(None, Some(20_000)),
            (20_000 - kept) as usize
        );
        assert_eq!(max_connections(Some(500), Some(20_000)), 500);
        assert_eq!(
            max_connections(Some(50_000), Some(20_000)),
            (20_000 - kept) as usize,
            "lowered to what the limit leaves"
        );
        assert_eq!(
            max_connections(None, Some(400)),
            200,
            "half of a small limit"
        );
        assert_eq!(max_connections(Some(7), None), 7);
    }

    #[test]
    fn the_open_file_limit_is_known_here() {
        let limit = open_file_limit().expect("RLIMIT_NOFILE");
        assert!(limit > 0);
    }
}
