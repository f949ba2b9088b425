//! `threadline <role>`: parses the settings and runs one role (or `all`), or an operator
//! command.

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;
use threadline::{commands, init_logging, init_logging_at, run, shutdown_on_signals, Cli, Role};
use threadline_runtime::secret::refuse_example_passwords;

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let refused = match cli.example_passwords.allow_example_passwords {
        true => Ok(()),
        false => refuse_example_passwords(&matches),
    };
    if let Role::Operator(command) = cli.role {
        // Operator commands print their results on standard output; their logs say only
        // what an operator needs (progress, warnings).
        if command.logs() {
            init_logging_at(cli.log.log_format, commands::DEFAULT_LOG);
        }
        if let Err(e) = refused {
            eprintln!("threadline: {e}");
            return ExitCode::from(3);
        }
        return commands::run(command, shutdown_on_signals()).await;
    }
    let logs = init_logging(cli.log.log_format);
    if let Err(e) = refused {
        tracing::error!("{e}");
        drop(logs);
        return ExitCode::FAILURE;
    }
    let shutdown = shutdown_on_signals();
    let code = match run(cli.role, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The error and its causes, each once.
            tracing::error!("{}", threadline_ports::report(&*e));
            ExitCode::FAILURE
        }
    };
    // What is still queued is written before the process exits.
    drop(logs);
    code
}
