//! The operator commands beside the roles (`migrate`, `probe`, `rebuild`, `verify`,
//! `dead-letters`, `events`, `erase`): one clap tree. Each command family has its face (arguments,
//! output) in a module here and its work in the crate that owns it: threadline-postgres
//! migrates, threadline-nats reads and writes the log, the projector rebuilds and verifies.
//! This module dispatches, and is the one place that prints a failure and turns the outcome
//! into an exit status.
//!
//! A command prints its results on standard output; its logs and its failure go to standard
//! error, the failure as one line `threadline <command>: <what went wrong: its causes>`.
//!
//! Exit status: 0 when all is well, 1 when the command ran and found a problem (`verify`
//! found differences, a retried event is still set aside, `probe` got no 200, `erase` found the
//! projector behind), 2 for bad usage (clap, a malformed thread id), 3 when it could not run (a
//! dependency unreachable, bad input, an unknown thread), 130 when interrupted.

pub mod dead_letters;
pub mod erase;
pub mod events;
pub mod migrate;
pub mod probe;
pub mod rebuild;
pub mod verify;

use clap::Subcommand;
use std::process::ExitCode;
use threadline_ports::{report, StoreError};
use threadline_postgres::DatabaseSettings;
use threadline_projector::ProjectorError;
use tokio_util::sync::CancellationToken;

/// The log level of operator commands when RUST_LOG is not set.
pub const DEFAULT_LOG: &str = "warn,threadline_projector=info,threadline_nats=info,threadline_postgres=info,threadline_runtime=info";

/// An operator command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates the database if missing and brings the read model's tables up to date, then
    /// exits. Run it as the tables' owner before the roles start (with MIGRATE_ON_START=false).
    Migrate(DatabaseSettings),
    /// Asks a running role's /readyz (or --path) on its LISTEN_ADDR; exits 0 on 200, 1
    /// otherwise. For container health checks: the image holds no shell or HTTP client.
    Probe(probe::ProbeSettings),
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
    /// Erase a thread for good (a visitor's right to be forgotten): its events, set-aside
    /// events, idempotency records and read model rows; every role forgets it. Idempotent.
    Erase(erase::EraseSettings),
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
            Command::Migrate(_) => "migrate",
            Command::Probe(_) => "probe",
            Command::Rebuild(_) => "rebuild",
            Command::Verify(_) => "verify",
            Command::DeadLetters(DeadLetters::List(_)) => "dead-letters list",
            Command::DeadLetters(DeadLetters::Retry(_)) => "dead-letters retry",
            Command::Events(Events::Tail(_)) => "events tail",
            Command::Events(Events::Publish(_)) => "events publish",
            Command::Erase(_) => "erase",
        }
    }

    /// Whether the command writes logs: `probe`, a container's health check, prints its one
    /// line and nothing else.
    pub fn logs(&self) -> bool {
        !matches!(self, Command::Probe(_))
    }

    /// Runs the command to its end (`events tail`: until `shutdown` fires).
    async fn work(&self, shutdown: &CancellationToken) -> Outcome {
        match self {
            Command::Migrate(s) => migrate::run(s).await,
            Command::Probe(s) => probe::run(s).await,
            Command::Rebuild(s) => Ok(rebuild::run(s).await?),
            Command::Verify(s) => Ok(verify::run(s).await?),
            Command::DeadLetters(DeadLetters::List(s)) => dead_letters::run_list(s).await,
            Command::DeadLetters(DeadLetters::Retry(s)) => dead_letters::run_retry(s).await,
            Command::Events(Events::Tail(s)) => events::run_tail(s, shutdown.clone()).await,
            Command::Events(Events::Publish(s)) => events::run_publish(s).await,
            Command::Erase(s) => erase::run(s).await,
        }
    }

    /// Whether shutdown cuts the command short; `events tail` ends on its own at shutdown.
    fn cut_short_by_shutdown(&self) -> bool {
        !matches!(self, Command::Events(Events::Tail(_)))
    }

    /// What is true when shutdown cut this command short.
    fn interrupted(&self) -> CommandError {
        match self {
            Command::Rebuild(_) | Command::Verify(_) => ProjectorError::Interrupted.into(),
            Command::Erase(_) => CommandError::InterruptedErase,
            _ => CommandError::Interrupted,
        }
    }
}

/// How a command ended: `Ok(true)` all well, `Ok(false)` it ran and found a problem (which
/// it printed), `Err` it could not run.
pub type Outcome = Result<bool, CommandError>;

/// Runs a command until it ends or `shutdown` fires, prints why it failed if it did, and
/// gives its exit status.
pub async fn run(command: Command, shutdown: CancellationToken) -> ExitCode {
    let outcome = tokio::select! {
        outcome = command.work(&shutdown) => outcome,
        _ = shutdown.cancelled(), if command.cut_short_by_shutdown() => Err(command.interrupted()),
    };
    if let Err(e) = &outcome {
        eprintln!("threadline {}: {}", command.name(), report(e));
    }
    exit_status(&outcome, shutdown.is_cancelled())
}

/// The exit status of a command's outcome (see the module's doc).
fn exit_status(outcome: &Outcome, interrupted: bool) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(_) if interrupted => ExitCode::from(130),
        Err(_) => ExitCode::from(3),
    }
}

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// NATS JetStream or PostgreSQL did not answer or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The projector's work (rebuilding, verifying) failed or was cut short.
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    /// The operator's input cannot be used (a payload that is not an event, an unknown
    /// sequence, a setting that does not parse).
    #[error("{0}")]
    Invalid(String),
    /// Ctrl-C or SIGTERM cut the command short.
    #[error("interrupted")]
    Interrupted,
    /// Ctrl-C or SIGTERM cut `erase` short: a second run finishes it.
    #[error("interrupted; run erase again to finish erasing the thread")]
    InterruptedErase,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn command(args: &[&str]) -> Command {
        let line = std::iter::once("threadline").chain(args.iter().copied());
        match crate::Cli::try_parse_from(line) {
            Ok(crate::Cli {
                role: crate::Role::Operator(command),
                ..
            }) => command,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn each_family_says_what_an_interruption_leaves() {
        for args in [&["rebuild"][..], &["verify"]] {
            assert_eq!(
                report(&command(args).interrupted()),
                "interrupted; the serving read model is untouched",
                "{args:?}"
            );
        }
        assert_eq!(
            report(
                &command(&["erase", "--thread", "4b0e1d4a-c9a6-11ee-8c90-0242ac120002"])
                    .interrupted()
            ),
            "interrupted; run erase again to finish erasing the thread"
        );
        for args in [
            &["migrate"][..],
            &["probe"],
            &["dead-letters", "list"],
            &["dead-letters", "retry"],
            &["events", "publish", "--file", "event.json"],
        ] {
            assert_eq!(
                report(&command(args).interrupted()),
                "interrupted",
                "{args:?}"
            );
        }
    }

    #[test]
    fn outcomes_map_to_the_documented_exit_statuses() {
        let failed = || Err(CommandError::Invalid("bad".into()));
        assert_eq!(exit_status(&Ok(true), false), ExitCode::SUCCESS);
        assert_eq!(exit_status(&Ok(false), false), ExitCode::from(1));
        assert_eq!(exit_status(&failed(), false), ExitCode::from(3));
        assert_eq!(exit_status(&failed(), true), ExitCode::from(130));
        assert_eq!(
            exit_status(&Err(CommandError::Interrupted), true),
            ExitCode::from(130)
        );
    }

    #[test]
    fn only_the_tail_outlives_shutdown_and_only_the_probe_is_silent() {
        assert!(!command(&["events", "tail"]).cut_short_by_shutdown());
        assert!(command(&["dead-letters", "list"]).cut_short_by_shutdown());
        assert!(!command(&["probe"]).logs());
        assert!(command(&["migrate"]).logs());
    }
}
