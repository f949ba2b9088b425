//! The event log as the roles use it.

use crate::StoreError;
use async_trait::async_trait;
use proto_events::EncodedEvent;
use tokio::sync::broadcast;
use uuid::Uuid;

/// What the domain needs from the event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends an event and waits until the log has stored it. Returns its stream sequence.
    /// Appending the same event (same id) again stores it once.
    async fn append(&self, event: &EncodedEvent) -> Result<u64, StoreError>;

    /// Whether the thread exists: the log holds a valid `ThreadCreated` of it and no
    /// `ThreadErased` (see `threadline_nats::existence` for the one rule).
    async fn thread_exists(&self, thread: Uuid) -> Result<bool, StoreError>;

    /// A stream sequence through which the read model holds everything of the thread that was
    /// appended before this call: the later of its creation and its latest message. `None` if
    /// the thread does not exist (an erased thread included). Events stored on its `created` subject after its creation
    /// do not count: they change nothing.
    async fn thread_last_sequence(&self, thread: Uuid) -> Result<Option<u64>, StoreError>;

    /// How many message events the log holds on the thread's subject, whoever published
    /// them (the Slack integration's too, and any set aside as invalid); an event appended
    /// again under its id counts once. One request to the log per call: asked only where a
    /// bound needs it (`THREAD_MAX_MESSAGES`).
    async fn thread_message_count(&self, thread: Uuid) -> Result<u64, StoreError>;

    /// A sequence through which every event has been applied to the read model. Cheap when
    /// the last answer was already at least `wanted`.
    async fn applied_through(&self, wanted: u64) -> Result<u64, StoreError>;

    /// The log's last sequence when this was called, if the read model has applied every
    /// event through it; `None` if it has not. One request to the log serves every caller
    /// waiting at the same moment.
    async fn applied_everything(&self) -> Result<Option<u64>, StoreError>;

    /// The threads erased from now on, each as soon as this process hears of it (an
    /// operator's `ThreadErased`): what a process that keeps threads in memory or open drops.
    /// A receiver that lags behind (`RecvError::Lagged`) has missed some: it must treat every
    /// thread it holds as possibly erased and ask [`thread_exists`](Self::thread_exists).
    fn erasures(&self) -> broadcast::Receiver<Uuid>;
}
