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

    /// A database error, told apart: [`StoreError::Refused`] when PostgreSQL refused the data
    /// (see [`refused_by_data`]), [`StoreError::Overloaded`] when every connection of the pool
    /// is busy, [`StoreError::Unavailable`] for everything else (a lost connection or an
    /// SQLSTATE that describes the server's state rather than the rows). All but the first
    /// are worth retrying unchanged.
    pub fn sql(error: sqlx::Error) -> Self {
        if let sqlx::Error::PoolTimedOut = error {
            return StoreError::Overloaded {
                what: "PostgreSQL",
                cause: "every connection of the pool is busy".into(),
            };
        }
        if let sqlx::Error::Database(db) = &error {
            if let Some(code) = db.code().filter(|code| refused_by_data(code)) {
                return StoreError::Refused {
                    code: code.into_owned(),
                    cause: db.message().to_owned(),
                };
            }
        }
        StoreError::database(error)
    }
}

/// Whether an SQLSTATE says that PostgreSQL refused the data it was given, so that the same
/// rows fail again however often they are sent. Every class is taken as such except those
/// that describe the server, the session or the schema rather than the rows: connection
/// (08), features and prepared statements (0A, e.g. a cached plan whose table changed, 26),
/// transaction state (25, e.g. a read-only replica), authorisation (28), missing database or
/// schema (3D, 3F), rollbacks (40, serialization failures and deadlocks), privileges and
/// undefined objects (42), resources (53, e.g. a full disk), locks and prerequisites (55),
/// operator intervention (57, e.g. a statement timeout or a shutdown), system and
/// configuration errors (58, F0) and internal errors (XX).
pub fn refused_by_data(sqlstate: &str) -> bool {
    const SERVER_STATE: [&str; 15] = [
        "08", "0A", "25", "26", "28", "3D", "3F", "40", "42", "53", "55", "57", "58", "F0", "XX",
    ];
    let class = sqlstate.get(..2).unwrap_or(sqlstate);
    sqlstate.len() == 5 && !SERVER_STATE.contains(&class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_refusals_are_told_from_the_servers_state() {
        for refused in ["22021", "22P05", "23514", "23505", "54000", "P0001"] {
            assert!(refused_by_data(refused), "{refused}");
        }
        for state in [
            "08006", "25006", "40001", "42501", "42P01", "53100", "57014", "XX000",
        ] {
            assert!(!refused_by_data(state), "{state}");
        }
        assert!(!refused_by_data(""));
        assert!(!refused_by_data("2"));
    }
}
