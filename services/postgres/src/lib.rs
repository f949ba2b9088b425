//! The PostgreSQL adapter: the read model ([`PgReadModel`]) that the projector writes and the
//! API reads, its migrations (`migrations/`), its settings ([`DatabaseSettings`]), the
//! writes and the lock a rebuild shares with the projector ([`apply_rows`], [`SWITCH_LOCK`]),
//! and the tables a rebuild or a verification folds beside the serving ones ([`rebuild`]).

pub mod error;
pub mod read_model;
pub mod rebuild;
pub mod settings;

pub use error::sql_error;
pub use read_model::{apply_rows, erase_rows, PgReadModel, SWITCH_LOCK};
pub use settings::DatabaseSettings;
