//! The `threadline` binary's library: the command line, logging, signals, and the `all` role,
//! which runs the api, the projector and the gateway in one process with the HTTP API and the
//! websocket on one port. The other roles are each service crate's own `run`; the operator
//! commands (`migrate` and `probe` among them) are in `commands`.

pub mod commands;

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use threadline_api::{ApiSettings, AppState};
use threadline_gateway::{Gateway, GatewaySettings};
use threadline_nats::NatsSettings;
use threadline_postgres::DatabaseSettings;
use threadline_projector::{Projector, ProjectorSettings};
use threadline_runtime::metrics::register;
use threadline_runtime::secret::ExamplePasswordSettings;
use threadline_runtime::settings::LogFormat;
use threadline_runtime::{HttpSettings, LogSettings};
use tokio_util::sync::CancellationToken;

/// threadline: the backend of a website support chat answered from Slack.
///
/// Every setting can be given as a flag or as the environment variable named in its help.
/// Logs go to standard error; RUST_LOG sets their level (default: info).
#[derive(Debug, Parser)]
#[command(name = "threadline", version)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Role,
    #[command(flatten)]
    pub log: LogSettings,
    #[command(flatten)]
    pub example_passwords: ExamplePasswordSettings,
}

/// The role this process plays.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// The HTTP API: POST /chat/thread/, GET /chat/thread/:id/, POST /chat/message/.
    Api(threadline_api::Settings),
    /// The projector: folds the event stream into the PostgreSQL read model.
    Projector(threadline_projector::Settings),
    /// The websocket gateway: /ws/chat/:threadId/.
    Gateway(threadline_gateway::Settings),
    /// All three in one process, with the HTTP API and the websocket on one port.
    All(AllSettings),
    #[command(flatten)]
    Operator(commands::Command),
}

/// Everything the `all` role needs.
#[derive(Debug, Clone, Args)]
pub struct AllSettings {
    /// Address the HTTP API and the websocket endpoint listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen_addr: SocketAddr,
    #[command(flatten)]
    pub api: ApiSettings,
    #[command(flatten)]
    pub projector: ProjectorSettings,
    #[command(flatten)]
    pub gateway: GatewaySettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub http: HttpSettings,
}

/// Runs the chosen role until `shutdown` fires.
pub async fn run(role: Role, shutdown: CancellationToken) -> anyhow::Result<()> {
    match role {
        Role::Api(settings) => threadline_api::run(settings, shutdown).await,
        Role::Projector(settings) => threadline_projector::run(settings, shutdown).await,
        Role::Gateway(settings) => threadline_gateway::run(settings, shutdown).await,
        Role::All(settings) => run_all(settings, shutdown).await,
        Role::Operator(command) => match commands::run(command, shutdown).await {
            code if code == std::process::ExitCode::SUCCESS => Ok(()),
            _ => Err(anyhow::anyhow!("the command failed")),
        },
    }
}

/// Runs api, projector and gateway in one process, sharing one NATS connection and one
/// database pool.
pub async fn run_all(settings: AllSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    threadline_gateway::refuse_renamed_settings()?;
    let Some((role, log, read)) = threadline_runtime::Role::start_with_read_model(
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
    let gateway = Gateway::new(log.clone(), &settings.gateway, shutdown.clone());
    let Some(state) = AppState::open_until_ready(&log, &read, &settings.api, &shutdown).await
    else {
        return Ok(());
    };
    let projector = Projector::new(log, read, settings.projector);
    let grace = role.shutdown_timeout();
    let work = async {
        tokio::join!(projector.run(shutdown.clone()), gateway.drain(grace));
    };
    role.metrics(register::api)
        .metrics(register::projector)
        .metrics(register::gateway)
        .routes(threadline_api::router(state))
        .routes(threadline_gateway::router(gateway.clone()))
        .serve_beside(work)
        .await
}

/// Logs to standard error at the level RUST_LOG sets (default info): as text, in colour only
/// on a terminal, or as one JSON object per line with the fields of the current spans.
///
/// For the roles, which log a line per request or event: lines are handed to a thread of
/// their own (`tracing-appender`'s non-blocking writer), which writes whatever has queued in
/// one write and flushes whenever the queue is empty, so a request pays neither a system call
/// nor a wait on a slow reader of standard error. The queue holds 128,000 lines; when it is
/// full a line waits for room (no line is dropped). Keep the returned guard until the role
/// has stopped: dropping it writes what is still queued.
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("threadline-logs")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    install_logging(format, "info", writer);
    guard
}

/// Logs as `init_logging` does, at `default` when RUST_LOG is not set, each line written at
/// once (operator commands, whose lines go between their progress and their output).
pub fn init_logging_at(format: LogFormat, default: &str) {
    install_logging(format, default, std::io::stderr);
}

fn install_logging<W>(format: LogFormat, default: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_span_list(true).init(),
    }
}

/// A token that fires on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = terminate => tracing::info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        }
        fire.cancel();
    });
    token
}
