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
    /// A bounded store holds all it may (its setting says how much): what is in it stays,
    /// nothing new is taken until some of it expires. Callers answer 503.
    #[error("{what} is full: {cause}")]
    Full { what: String, cause: String },
    /// An operator's input cannot be used (a payload that is not an event, an unknown
    /// sequence).
    #[error("{0}")]
    Invalid(String),
    /// PostgreSQL answered, and refused what it was given for a reason in the data (a value
    /// its types or a constraint do not take): sending the same rows again fails the same way.
    #[error("PostgreSQL refused the statement: {code}: {cause}")]
    Refused { code: String, cause: String },
    /// The projector has not moved past an event for a while.
    #[error("the projection has not moved past event sequence {sequence} for {failing_for:?} ({attempts} attempts): {cause}")]
    Stuck {
        sequence: u64,
        failing_for: std::time::Duration,
        attempts: u32,
        cause: String,
    },
}

impl StoreError {
    pub fn nats(cause: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            what: "NATS JetStream",
            cause: cause.to_string(),
        }
    }

    pub fn database(cause: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            what: "PostgreSQL",
            cause: cause.to_string(),
        }
    }
}
