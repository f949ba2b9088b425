//! The errors of the stores, in terms a caller can act on, and one way to show an error with
//! its causes.

use std::error::Error;
use std::fmt;

/// What went wrong underneath: the error of a client library, or a sentence where there is
/// none.
pub type Cause = Box<dyn Error + Send + Sync>;

/// The dependency an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nats,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nats => "NATS JetStream",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

/// An error from the event log or the read model. Its text names what failed; the cause is
/// its [`source`](Error::source): show both with [`report`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The broker or the database did not answer (down, unreachable, timed out). Callers
    /// answer 503 and retry later.
    #[error("{backend} is unavailable")]
    Unavailable {
        backend: Backend,
        #[source]
        cause: Cause,
    },
    /// The event is larger than the broker accepts.
    #[error("event of {size} bytes exceeds the broker's maximum payload of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Too much asked at once (no connection free in the pool, no turn among long reads):
    /// callers answer 503 with `Retry-After`; the dependency itself is fine.
    #[error("{backend} is busy")]
    Overloaded {
        backend: Backend,
        #[source]
        cause: Cause,
    },
    /// A bounded store holds all it may (its setting says how much): what is in it stays,
    /// nothing new is taken until some of it expires. Callers answer 503.
    #[error("{what} is full")]
    Full {
        what: String,
        #[source]
        cause: Cause,
    },
    /// PostgreSQL answered, and refused what it was given for a reason in the data (a value
    /// its types or a constraint do not take): sending the same rows again fails the same way.
    #[error("PostgreSQL refused the statement: {code}")]
    Refused {
        code: String,
        #[source]
        cause: Cause,
    },
}

impl StoreError {
    pub fn nats(cause: impl Into<Cause>) -> Self {
        StoreError::Unavailable {
            backend: Backend::Nats,
            cause: cause.into(),
        }
    }

    pub fn database(cause: impl Into<Cause>) -> Self {
        StoreError::Unavailable {
            backend: Backend::Postgres,
            cause: cause.into(),
        }
    }
}

/// An error with its causes, as one line: each cause after a `: `, once (a cause whose text
/// the line already ends with, as client libraries repeat their own source, is not repeated).
/// What logs, `/readyz`'s log lines and operator commands show.
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let line = e.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_shows_its_cause_once() {
        let io = std::io::Error::other("connection refused");
        assert_eq!(
            report(&StoreError::nats(io)),
            "NATS JetStream is unavailable: connection refused"
        );
        assert_eq!(
            report(&StoreError::database("the long read took too long")),
            "PostgreSQL is unavailable: the long read took too long"
        );
        assert_eq!(
            StoreError::nats("x").to_string(),
            "NATS JetStream is unavailable"
        );

        /// An error whose text repeats its source's, as async-nats' and sqlx's do.
        #[derive(Debug, thiserror::Error)]
        #[error("request failed: {0}")]
        struct Repeats(#[source] std::io::Error);
        let repeats = Repeats(std::io::Error::other("timed out"));
        assert_eq!(
            report(&StoreError::nats(repeats)),
            "NATS JetStream is unavailable: request failed: timed out"
        );
    }
}
