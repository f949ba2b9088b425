//! The narrow interfaces the roles use, and the values that cross them: the event log
//! ([`EventLog`]), a thread's stored messages as the gateway reads them
//! ([`ThreadMessages`]), the read model ([`ReadModel`]) and the API's idempotency store
//! ([`IdempotencyStore`]), the log as the projector reads it ([`ProjectionSource`],
//! [`EventReplay`]), what erasing a thread removes from the log ([`ErasableLog`]), what
//! `/readyz` asks of a dependency ([`Dependency`]), their errors
//! ([`StoreError`]), and the values the adapters' settings are made of. The adapters
//! (`threadline-nats`, `threadline-postgres`) implement them; nothing here knows NATS or SQL.

pub mod erase;
pub mod error;
pub mod event_log;
pub mod health;
pub mod idempotency;
pub mod projection;
pub mod read_model;
pub mod rebuild;
pub mod secret;
pub mod settings;
pub mod text;
pub mod thread_messages;

pub use erase::ErasableLog;
pub use error::{report, Backend, Cause, StoreError};
pub use event_log::EventLog;
pub use health::Dependency;
pub use idempotency::{IdempotencyStore, RecordFilter};
pub use projection::{
    Backlog, Decode, Deliveries, Delivery, EventReplay, ProjectionSource, Replay, ReplayError,
    StoredEvent,
};
pub use read_model::{AppliedMessage, AppliedThread, Changes, ReadModel, ThreadRead, ThreadRows};
pub use text::{bounded_text, REASON_MAX_BYTES};
pub use thread_messages::{LiveMessage, LiveMessages, StoredMessage, ThreadMessages};
