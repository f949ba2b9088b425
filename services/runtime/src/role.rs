//! Wiring a role: what every role's `run` does around its own work, in one place.
//!
//! A role starts ([`Role::start_reader`], [`Role::start_with_read_model`]: the settings are
//! checked, the listener answers `/healthz` while NATS and PostgreSQL are not there yet, then
//! they are connected), says what is its own (its routes, the metrics it records, what else
//! `/readyz` asks), and serves until shutdown beside its background work ([`Role::serve`],
//! [`Role::serve_beside`]): its metrics are registered at zero, its routes get what every
//! role's get ([`server::finish`]), and on shutdown the listener stops accepting and in-flight
//! requests get `SHUTDOWN_TIMEOUT` to finish. The stores the role connected to are among the
//! dependencies `/readyz` asks.
//!
//! ```ignore
//! let Some((role, log, read)) = Role::start_with_read_model(addr, &nats, &db, &http, &shutdown).await?
//! else {
//!     return Ok(()); // shut down while waiting for the dependencies
//! };
//! role.metrics(register::api).routes(router(state)).serve().await
//! ```

use crate::server::{self, Listener};
use crate::{health_router, startup, HttpSettings};
use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use threadline_nats::{JetStreamLog, NatsSettings};
use threadline_ports::Dependency;
use threadline_postgres::{DatabaseSettings, PgReadModel};
use tokio_util::sync::CancellationToken;

/// A started role, before it serves: its listener, and what it has said is its own.
pub struct Role {
    listener: Listener,
    http: HttpSettings,
    shutdown: CancellationToken,
    routes: Router,
    dependencies: Vec<Arc<dyn Dependency>>,
    metrics: Vec<fn()>,
}

impl Role {
    /// Starts a role that only reads the event log (the gateway): it opens the event stream as
    /// it is, waiting until a role that manages the streams has created it. `None` if
    /// shutdown fired while waiting.
    pub async fn start_reader(
        listen_addr: SocketAddr,
        nats: &NatsSettings,
        http: &HttpSettings,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(Role, Arc<JetStreamLog>)>> {
        let started = startup::start_reader(listen_addr, nats, http, shutdown).await?;
        Ok(started.map(|started| {
            let log = started.log;
            let role = Role::new(started.listener, http, shutdown, vec![log.clone()]);
            (role, log)
        }))
    }

    /// Starts a role that needs the event log (creating the streams or bringing them to the
    /// settings) and the read model. `None` if shutdown fired while waiting.
    pub async fn start_with_read_model(
        listen_addr: SocketAddr,
        nats: &NatsSettings,
        database: &DatabaseSettings,
        http: &HttpSettings,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(Role, Arc<JetStreamLog>, Arc<PgReadModel>)>> {
        let started =
            startup::start_with_read_model(listen_addr, nats, database, http, shutdown).await?;
        Ok(started.map(|(started, read)| {
            let log = started.log;
            let dependencies: Vec<Arc<dyn Dependency>> = vec![log.clone(), read.clone()];
            let role = Role::new(started.listener, http, shutdown, dependencies);
            (role, log, read)
        }))
    }

    fn new(
        listener: Listener,
        http: &HttpSettings,
        shutdown: &CancellationToken,
        dependencies: Vec<Arc<dyn Dependency>>,
    ) -> Role {
        Role {
            listener,
            http: http.clone(),
            shutdown: shutdown.clone(),
            routes: Router::new(),
            dependencies,
            metrics: Vec::new(),
        }
    }

    /// Serves these routes too (a role's routes have no fallback, so that roles can be
    /// merged on one port).
    pub fn routes(mut self, routes: Router) -> Role {
        self.routes = self.routes.merge(routes);
        self
    }

    /// `/readyz` asks this too, after the stores.
    pub fn depends_on(mut self, dependency: Arc<dyn Dependency>) -> Role {
        self.dependencies.push(dependency);
        self
    }

    /// Registers these metric families at zero before serving (one of
    /// [`metrics::register`](crate::metrics::register)), so that a scrape lists them before
    /// their first sample.
    pub fn metrics(mut self, register: fn()) -> Role {
        self.metrics.push(register);
        self
    }

    /// How long in-flight requests and open websockets get to finish on shutdown
    /// (`SHUTDOWN_TIMEOUT`), for background work that drains on shutdown too.
    pub fn shutdown_timeout(&self) -> Duration {
        self.http.shutdown_timeout
    }

    /// Serves until shutdown, then lets in-flight requests finish (bounded).
    pub async fn serve(self) -> anyhow::Result<()> {
        self.serve_beside(std::future::ready(())).await
    }

    /// Serves as [`serve`](Self::serve) does while `work` (the role's background work, which
    /// ends on shutdown by itself) runs; returns when both have ended.
    pub async fn serve_beside(self, work: impl Future<Output = ()>) -> anyhow::Result<()> {
        for register in &self.metrics {
            register();
        }
        let app = server::finish(
            self.routes.merge(health_router(self.dependencies)),
            &self.http,
        );
        let served = server::serve(
            self.listener,
            app,
            self.shutdown,
            self.http.shutdown_timeout,
        );
        let (served, ()) = tokio::join!(served, work);
        served.context("HTTP server failed")
    }
}
