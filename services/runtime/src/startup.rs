//! How every role starts: check the settings (a wrong one stops the process with one line),
//! bind the listener, then connect to NATS and PostgreSQL, retrying until they answer.
//!
//! While it waits, the listener already answers the probes as Kubernetes reads them:
//! `/healthz` 200 (the process runs), `/readyz` 503 naming the dependency it waits for, and
//! every other path 503. Once connected, the role's own server takes over the same socket;
//! connections that arrive in between wait in the listen backlog. The probe server takes
//! connections under the same limits as the role's own server ([`crate::limits`]), counted
//! together. The admin listener
//! (`ADMIN_LISTEN_ADDR`), when set, is bound at the same time and answers the same way.
//! Roles start through [`crate::Role`].

use crate::limits::ConnectionLimits;
use crate::server::{serve_one, Accepting, Listener};
use crate::{retry, HttpSettings};
use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use threadline_nats::event_log::unsuitable;
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_postgres::{DatabaseSettings, PgReadModel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A role's listeners and its connection to the event log.
pub(crate) struct Started {
    pub listener: Listener,
    pub log: Arc<JetStreamLog>,
}

/// Starts a role that only reads the event log (the gateway): it opens the event stream as
/// it is, waiting until a role that manages the streams has created it, and changes nothing
/// (its NATS user may not). `None` if shutdown fired while waiting.
pub(crate) async fn start_reader(
    listen_addr: SocketAddr,
    nats: &NatsSettings,
    http: &HttpSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Started>> {
    nats.validate().map_err(anyhow::Error::msg)?;
    http.cors_origins().map_err(anyhow::Error::msg)?;
    let waiting = Waiting::bind(listen_addr, http, &["nats"])?;
    let log = waiting.connect_nats(nats, false, shutdown).await?;
    let listener = waiting.finish().await?;
    Ok(log.map(|log| Started { listener, log }))
}

/// Starts a role that needs the event log and the read model. `None` if shutdown fired while
/// waiting.
pub(crate) async fn start_with_read_model(
    listen_addr: SocketAddr,
    nats: &NatsSettings,
    database: &DatabaseSettings,
    http: &HttpSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Started, Arc<PgReadModel>)>> {
    nats.validate().map_err(anyhow::Error::msg)?;
    PgReadModel::options(database).map_err(anyhow::Error::msg)?;
    http.cors_origins().map_err(anyhow::Error::msg)?;
    let waiting = Waiting::bind(listen_addr, http, &["nats", "database"])?;
    let Some(log) = waiting.connect_nats(nats, true, shutdown).await? else {
        waiting.finish().await?;
        return Ok(None);
    };
    let read = retry::until_ready("connecting to PostgreSQL", shutdown, || {
        PgReadModel::connect(database)
    })
    .await;
    let listener = waiting.finish().await?;
    Ok(read.map(|read| (Started { listener, log }, Arc::new(read))))
}

/// The listeners while the role waits for its dependencies, answering the probes.
struct Waiting {
    /// A second handle on the listening socket, for the role's own server.
    socket: std::net::TcpListener,
    /// The same for the admin listener, if there is one.
    admin: Option<std::net::TcpListener>,
    /// Each dependency of the role and whether it answers yet.
    checks: Checks,
    /// The limits of connections, the probe server's as the role's own.
    limits: ConnectionLimits,
    stop: CancellationToken,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds `addr` and gives a second, async handle on the socket for the probe server.
fn bind_shared(addr: SocketAddr) -> anyhow::Result<(std::net::TcpListener, TcpListener)> {
    let socket =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    socket
        .set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    let probes = TcpListener::from_std(socket.try_clone().context("cannot share the listener")?)
        .context("cannot use the listener")?;
    Ok((socket, probes))
}

impl Waiting {
    fn bind(
        listen_addr: SocketAddr,
        http: &HttpSettings,
        dependencies: &[&'static str],
    ) -> anyhow::Result<Waiting> {
        // Installed before anything is recorded.
        crate::metrics::handle();
        let (socket, probes) = bind_shared(listen_addr)?;
        let addr = probes.local_addr().context("no local address")?;
        tracing::info!("answering /healthz on {addr} while waiting for dependencies");
        let (admin, admin_probes) = match http.admin_listen_addr {
            Some(admin_addr) => {
                let (admin, probes) =
                    bind_shared(admin_addr).context("ADMIN_LISTEN_ADDR: cannot listen there")?;
                let addr = probes.local_addr().context("no local address")?;
                tracing::info!("admin endpoints on {addr} (/metrics, /readyz, /healthz)");
                (Some(admin), Some(probes))
            }
            None => (None, None),
        };
        let limits = ConnectionLimits::new(&http.connections, http.clients());
        let checks: Checks = Arc::new(Mutex::new(
            dependencies.iter().map(|d| (*d, "unavailable")).collect(),
        ));
        let stop = CancellationToken::new();
        let router = Router::new()
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/readyz", get(not_ready))
            .fallback(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"detail": "Service temporarily unavailable, try again later."})),
                )
            })
            .with_state(checks.clone());
        let servers = std::iter::once((probes, limits.public.clone()))
            .chain(admin_probes.map(|probes| (probes, limits.admin.clone())))
            .map(|(probes, gate)| {
                let accepting = Accepting {
                    limits: limits.clone(),
                    gate,
                    announce: false,
                };
                let served = serve_one(
                    probes,
                    router.clone(),
                    accepting,
                    stop.clone(),
                    http.shutdown_timeout,
                );
                tokio::spawn(async move {
                    if let Err(e) = served.await {
                        tracing::warn!("the start-up probe server failed: {e}");
                    }
                })
            })
            .collect();
        Ok(Waiting {
            socket,
            admin,
            checks,
            limits,
            stop,
            servers,
        })
    }

    /// Connects to the event log; `manage`: creates the streams or brings them to the
    /// settings, else opens them as they are. Then reads the threads erased, and follows
    /// new erasures until shutdown.
    async fn connect_nats(
        &self,
        nats: &NatsSettings,
        manage: bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Arc<JetStreamLog>>> {
        // A stream or consumer on which the role cannot keep its promises stops it with one
        // line; anything else is retried.
        let opened = retry::until_ready("connecting to NATS JetStream", shutdown, || async {
            let opened = if manage {
                JetStreamLog::connect(nats).await
            } else {
                JetStreamLog::connect_to_read(nats).await
            };
            match opened {
                Err(e) => match unsuitable(&e) {
                    Some(refusal) => Ok(Err(anyhow::anyhow!("{refusal}"))),
                    None => Err(e),
                },
                Ok(log) => Ok(Ok(log)),
            }
        })
        .await;
        let Some(opened) = opened else {
            return Ok(None);
        };
        let log = Arc::new(opened?);
        // Before it serves, the role knows every thread erased (see threadline_nats::erasures).
        let erasures = retry::until_ready("reading the threads erased", shutdown, || {
            log.follow_erasures(shutdown.clone())
        })
        .await;
        if erasures.is_none() {
            return Ok(None);
        }
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        for check in checks.iter_mut().filter(|(name, _)| *name == "nats") {
            check.1 = "ok";
        }
        Ok(Some(log))
    }

    /// Stops answering the probes and hands the sockets over to the role's own server.
    async fn finish(self) -> anyhow::Result<Listener> {
        self.stop.cancel();
        // In-flight probe requests finish; new connections wait in the backlog.
        for server in self.servers {
            let _ = server.await;
        }
        let public = TcpListener::from_std(self.socket).context("cannot use the listener")?;
        let admin = self
            .admin
            .map(|a| TcpListener::from_std(a).context("cannot use the admin listener"))
            .transpose()?;
        Ok(Listener {
            public,
            admin,
            limits: self.limits,
        })
    }
}

/// A role's dependencies (as `/readyz` names them) and their verdicts.
type Checks = Arc<Mutex<Vec<(&'static str, &'static str)>>>;

async fn not_ready(State(checks): State<Checks>) -> (StatusCode, Json<serde_json::Value>) {
    let checks: serde_json::Map<String, serde_json::Value> = checks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(name, verdict)| ((*name).to_owned(), json!(verdict)))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "starting", "checks": checks})),
    )
}
