//! The errors of the stores, in terms a caller can act on.

/// An error from the event log or the read model.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The broker or the database did not answer (down, unreachable, timed out). Callers
    /// answer 503 and retry later.
    #[error("{what} is unavailable: {cause}")]
    Unavailable { what: &'static str, cause: String },
    /// The event is larger than the broker accepts.
    #[error("event of {size} bytes exceeds the broker's maximum payload of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Too much asked at once (no connection free in the pool, no turn among long reads):
    /// callers answer 503 with `Retry-After`; the dependency itself is fine.
    #[error("{what} is busy: {cause}")]
    Overloaded { what: &'static str, cause: String },
    /// An operator's input cannot be used (a payload that is not an event, an unknown
    /// sequence).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub fn nats(cause: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            what: "NATS JetStream",
            cause: cause.to_string(),
        }
    }

    /// A query's failure: an exhausted pool is overload, anything else unavailability.
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut => StoreError::Overloaded {
                what: "PostgreSQL",
                cause: "every connection of the pool is busy".into(),
            },
            other => StoreError::database(other),
        }
    }

    pub fn database(cause: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            what: "PostgreSQL",
            cause: cause.to_string(),
        }
    }
}
