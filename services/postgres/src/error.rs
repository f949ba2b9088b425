//! PostgreSQL's errors as the roles see them: a [`StoreError`] told apart by what a caller
//! can do about it.

use threadline_ports::{Backend, StoreError};

/// A database error, told apart: [`StoreError::Refused`] when PostgreSQL refused the data
/// (see [`refused_by_data`]), [`StoreError::Overloaded`] when every connection of the pool
/// is busy, [`StoreError::Unavailable`] for everything else (a lost connection or an
/// SQLSTATE that describes the server's state rather than the rows). All but the first
/// are worth retrying unchanged.
pub fn sql_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut => StoreError::Overloaded {
            backend: Backend::Postgres,
            cause: "every connection of the pool is busy".into(),
        },
        sqlx::Error::Database(db) if db.code().is_some_and(|code| refused_by_data(&code)) => {
            StoreError::Refused {
                code: db.code().map(|code| code.into_owned()).unwrap_or_default(),
                cause: db.into_error(),
            }
        }
        error => StoreError::database(error),
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
