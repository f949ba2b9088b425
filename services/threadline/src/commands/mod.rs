//! The operator commands beside the roles (`rebuild`, `verify`, `dead-letters`, `events`):
//! one clap tree. `dead-letters` and `events` have their face (arguments, output) here and
//! their work in threadline-nats; `rebuild` and `verify` are the projector's. This module
//! dispatches and turns the outcome into an exit status.
//!
//! Exit status: 0 when all is well, 1 when the command ran and found a problem (`verify`
//! found differences, a retried event is still set aside), 2 for bad usage (clap), 3 when it
//! could not run (a dependency unreachable, bad input), 130 when interrupted.

pub mod dead_letters;
pub mod events;

use clap::Subcommand;
use std::process::ExitCode;
use threadline_ports::{report, StoreError};
use threadline_projector::{rebuild, verify, ProjectorError};
use tokio_util::sync::CancellationToken;

/// The log level of operator commands when RUST_LOG is not set.
pub const DEFAULT_LOG: &str = "warn,threadline_projector=info,threadline_nats=info,threadline_postgres=info,threadline_runtime=info";

/// An operator command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rebuild the read model from the first event, beside the serving one, and switch over
    /// in one transaction.
    Rebuild(rebuild::RebuildSettings),
    /// Fold the stream afresh and compare it with the serving read model; exit 1 if they
    /// differ.
    Verify(verify::VerifySettings),
    /// Events set aside as invalid.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// The event stream.
    #[command(subcommand)]
    Events(Events),
}

#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// List the set-aside events: sequence, time, reason, subject, payload preview.
    List(dead_letters::ListSettings),
    /// Re-publish set-aside events to the event stream; remove each one's record once the
    /// projector applied it.
    Retry(dead_letters::RetrySettings),
}

#[derive(Debug, Subcommand)]
pub enum Events {
    /// Print events (sequence, subject, payload) as they are stored, until Ctrl-C.
    Tail(events::TailSettings),
    /// Publish an agent's reply to a thread, or an event's payload from a file.
    Publish(events::PublishSettings),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Rebuild(_) => "rebuild",
            Command::Verify(_) => "verify",
            Command::DeadLetters(DeadLetters::List(_)) => "dead-letters list",
            Command::DeadLetters(DeadLetters::Retry(_)) => "dead-letters retry",
            Command::Events(Events::Tail(_)) => "events tail",
            Command::Events(Events::Publish(_)) => "events publish",
        }
    }
}

/// Runs a command until it ends or `shutdown` fires.
pub async fn run(command: Command, shutdown: CancellationToken) -> ExitCode {
    let name = command.name();
    let work = async {
        match &command {
            Command::Rebuild(s) => outcome(rebuild::run(s).await),
            Command::Verify(s) => outcome(verify::run(s).await),
            Command::DeadLetters(DeadLetters::List(s)) => outcome(dead_letters::run_list(s).await),
            Command::DeadLetters(DeadLetters::Retry(s)) => {
                outcome(dead_letters::run_retry(s).await)
            }
            Command::Events(Events::Tail(s)) => {
                outcome(events::run_tail(s, shutdown.clone()).await)
            }
            Command::Events(Events::Publish(s)) => outcome(events::run_publish(s).await),
        }
    };
    let result = tokio::select! {
        result = work => result,
        // `tail` ends on its own at shutdown; everything else is cut short.
        _ = shutdown.cancelled(), if !matches!(command, Command::Events(Events::Tail(_))) => {
            Err(ProjectorError::Interrupted.to_string())
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("threadline {name}: {message}");
            if shutdown.is_cancelled() {
                ExitCode::from(130)
            } else {
                ExitCode::from(3)
            }
        }
    }
}

fn outcome<E: std::error::Error + 'static>(result: Result<bool, E>) -> Result<bool, String> {
    result.map_err(|e| report(&e))
}

/// Why `dead-letters` or `events` could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// NATS JetStream did not answer or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operator's input cannot be used (a payload that is not an event, an unknown
    /// sequence).
    #[error("{0}")]
    Invalid(String),
}
