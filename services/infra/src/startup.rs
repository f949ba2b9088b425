//! How every role starts: check the settings (a wrong one stops the process with one line),
//! bind the listener, then connect to NATS and PostgreSQL, retrying until they answer.

use crate::{retry, DatabaseSettings, JetStreamLog, NatsSettings, PgReadModel};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A role's listener and its connection to the event log.
pub struct Started {
    pub listener: TcpListener,
    pub log: Arc<JetStreamLog>,
}

/// Starts a role that needs the event log only. `None` if shutdown fired while waiting.
pub async fn start(
    listen_addr: SocketAddr,
    nats: &NatsSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Started>> {
    nats.validate().map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("cannot listen on {listen_addr}"))?;
    let log = retry::until_ready("connecting to NATS JetStream", shutdown, || {
        JetStreamLog::connect(nats)
    })
    .await;
    Ok(log.map(|log| Started {
        listener,
        log: Arc::new(log),
    }))
}

/// Starts a role that needs the event log and the read model. `None` if shutdown fired while
/// waiting.
pub async fn start_with_read_model(
    listen_addr: SocketAddr,
    nats: &NatsSettings,
    database: &DatabaseSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Started, Arc<PgReadModel>)>> {
    PgReadModel::options(database).map_err(anyhow::Error::msg)?;
    let Some(started) = start(listen_addr, nats, shutdown).await? else {
        return Ok(None);
    };
    let read = retry::until_ready("connecting to PostgreSQL", shutdown, || {
        PgReadModel::connect(database)
    })
    .await;
    Ok(read.map(|read| (started, Arc::new(read))))
}
