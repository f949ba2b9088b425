//! The errors of the projector's operator commands, in terms an operator can act on.

use threadline_ports::rebuild::RebuildError;
use threadline_ports::{report, Backend, ReplayError, StoreError};

/// Why a rebuild or a verification could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// The broker did not answer or refused a request.
    #[error("NATS JetStream: {0}")]
    Nats(String),
    /// The database did not answer or refused a statement.
    #[error("PostgreSQL: {0}")]
    Database(String),
    /// Reading the stream went wrong in a way a rerun fixes.
    #[error("{0}")]
    Replay(String),
    /// Another rebuild holds the read model.
    #[error("another rebuild is running against this database")]
    Busy,
    /// The live projector has not applied the events to compare within the bound.
    #[error("the projector has applied events only up to sequence {applied} of {wanted} within {waited:?}; is it running?")]
    ProjectorBehind {
        applied: u64,
        wanted: u64,
        waited: std::time::Duration,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; the serving read model is untouched")]
    Interrupted,
}

impl ProjectorError {
    pub fn nats(cause: impl std::fmt::Display) -> Self {
        ProjectorError::Nats(cause.to_string())
    }

    pub fn database(cause: impl std::fmt::Display) -> Self {
        ProjectorError::Database(cause.to_string())
    }
}

impl From<StoreError> for ProjectorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable {
                backend: Backend::Postgres,
                cause,
            }
            | StoreError::Overloaded {
                backend: Backend::Postgres,
                cause,
            } => ProjectorError::Database(report(&*cause)),
            refused @ StoreError::Refused { .. } => ProjectorError::Database(report(&refused)),
            other => ProjectorError::Nats(report(&other)),
        }
    }
}

impl From<ReplayError> for ProjectorError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Log(cause) => ProjectorError::Nats(cause.to_string()),
            ReplayError::Interrupted(why) => ProjectorError::Replay(why),
        }
    }
}

impl From<RebuildError> for ProjectorError {
    fn from(e: RebuildError) -> Self {
        match e {
            RebuildError::Store(e) => e.into(),
            RebuildError::Busy => ProjectorError::Busy,
            RebuildError::Tables(text) => ProjectorError::Replay(text),
        }
    }
}
