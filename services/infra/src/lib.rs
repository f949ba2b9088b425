//! What every threadline service shares: the event log (NATS JetStream) and the read model
//! (PostgreSQL) behind narrow interfaces, their settings, the health endpoints and the HTTP
//! server's lifecycle.
//!
//! The domain code in the services talks to [`EventLog`] and [`ReadModel`]; JetStream and
//! PostgreSQL are the production pair ([`JetStreamLog`], [`PgReadModel`]). Another pair (an
//! embedded one for a single-process mode) implements the same traits.

pub mod coalesce;
pub mod dead_letters;
pub mod error;
pub mod event_log;
pub mod events;
pub mod existence;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub mod read_model;
pub mod retry;
pub mod secret;
pub mod server;
pub mod settings;
pub mod startup;

pub use error::StoreError;
pub use event_log::{EventLog, JetStreamLog};
pub use health::{health_router, Dependency};
pub use idempotency::{IdempotencyStore, KvIdempotency};
pub use read_model::{
    apply_rows, AppliedMessage, AppliedThread, PgReadModel, ReadModel, SWITCH_LOCK,
};
pub use server::serve;
pub use settings::{DatabaseSettings, HttpSettings, LogSettings, NatsSettings};
