//! The event log as `threadline erase` removes a thread from it: the thread's events, and
//! the records of those set aside. Its `ThreadErased` is appended through
//! [`EventLog::append`](crate::EventLog::append); what the read model and the idempotency
//! store hold of the thread goes through theirs ([`ReadModel::erase`](crate::ReadModel::erase),
//! [`IdempotencyStore::remove`](crate::IdempotencyStore::remove)).

use crate::StoreError;
use async_trait::async_trait;
use uuid::Uuid;

/// What erasing a thread asks of the event log beyond appending.
#[async_trait]
pub trait ErasableLog: Send + Sync {
    /// The stream sequence of the thread's first valid `ThreadErased`, if the log holds one.
    async fn erased_at(&self, thread: Uuid) -> Result<Option<u64>, StoreError>;

    /// How many events the log holds on the thread's own subjects (its `created` and
    /// `message` subjects: what [`purge_thread`](Self::purge_thread) removes).
    async fn thread_events(&self, thread: Uuid) -> Result<u64, StoreError>;

    /// Removes every event on the thread's own subjects from the log, on every replica of
    /// it; how many went. Its `ThreadErased` stays.
    async fn purge_thread(&self, thread: Uuid) -> Result<u64, StoreError>;

    /// The records of the thread's events that were set aside, by their sequence in the
    /// store of set-aside events: those whose subject or payload names the thread (in any
    /// spelling of its id). Reads every record: their number is bounded by that store's
    /// settings.
    async fn set_aside_of(&self, thread: Uuid) -> Result<Vec<u64>, StoreError>;

    /// Removes these records of set-aside events, and the events they stand for where the
    /// log still holds them on a subject [`purge_thread`](Self::purge_thread) does not
    /// reach (an id spelled otherwise, another thread's subject). Removing one that is
    /// gone changes nothing.
    async fn remove_set_aside(&self, records: &[u64]) -> Result<(), StoreError>;
}
