//! The NATS JetStream adapter: the event log ([`JetStreamLog`]) with the one rule of a
//! thread's existence and the lookups shared by concurrent callers, the projector's durable
//! consumer and the replay of the stream for `rebuild` and `verify`, a thread's messages as
//! the gateway reads them (the [`ThreadMessages`](threadline_ports::ThreadMessages) of
//! [`thread_messages`]), the API's idempotency store ([`KvIdempotency`]), a thread's message
//! count for the API's bound on it ([`message_count`]), the events set aside as invalid, the
//! threads erased ([`erasures`]) and what erasing one removes ([`erase`]), and the settings of
//! all of them ([`NatsSettings`]).

pub mod coalesce;
pub mod consumer;
pub mod dead_letters;
pub mod erase;
pub mod erasures;
pub mod event_log;
pub mod events;
pub mod existence;
pub mod idempotency;
pub mod message_count;
pub mod replay;
pub mod server_version;
pub mod settings;
pub mod thread_messages;

pub use event_log::JetStreamLog;
pub use idempotency::KvIdempotency;
pub use settings::NatsSettings;
