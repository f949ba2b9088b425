//! `threadline <role>`: parses the settings and runs one role (or `all`).

use clap::Parser;
use std::process::ExitCode;
use threadline::{init_logging, run, shutdown_on_signals, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let shutdown = shutdown_on_signals();
    match run(cli.role, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
