//! The read model as the roles use it, and the rows the projector writes to it.

use crate::StoreError;
use async_trait::async_trait;
use proto_events::{MessageBody, MessageJson, Timestamp, UserJson};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// A thread row as the projector writes it.
#[derive(Debug, Clone)]
pub struct AppliedThread {
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub stream_seq: u64,
}

/// A message row as the projector writes it.
#[derive(Debug, Clone)]
pub struct AppliedMessage {
    pub id: Uuid,
    pub thread: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub body: MessageBody,
    pub send_by_user: bool,
    pub stream_seq: u64,
}

impl AppliedMessage {
    /// The message's JSON inside a thread, as the `json` column stores it.
    pub fn json(&self) -> Option<String> {
        self.json_fields().text()
    }

    /// The fields of [`json`](Self::json), to serialize elsewhere.
    pub fn json_fields(&self) -> MessageJson<'_> {
        MessageJson {
            id: &self.id,
            user: &self.user,
            timestamp: &self.timestamp,
            body: &self.body,
            send_by_user: self.send_by_user,
        }
    }
}

/// A thread as `GET /chat/thread/:id/` answers it: the JSON of its [`ThreadView`](proto_events::ThreadView).
pub enum ThreadRead {
    /// A short thread, read in one round trip.
    Whole(bytes::Bytes),
    /// A long one, in pages read from one snapshot as the reader takes them. An error ends
    /// the body early.
    Streamed(futures::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>),
}

/// How many rows of the read model hold a thread: its own and its messages'.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadRows {
    pub threads: u64,
    pub messages: u64,
}

/// What the domain needs from the read model.
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// A thread with its messages in stream order, if the read model has it.
    async fn thread(&self, id: Uuid) -> Result<Option<ThreadRead>, StoreError>;

    /// Writes a batch of rows in one transaction. Safe to repeat and to apply out of order:
    /// for each id, the row from the lowest stream sequence wins. Rows PostgreSQL refuses
    /// fail the whole batch with [`StoreError::Refused`].
    async fn apply(
        &self,
        threads: &[AppliedThread],
        messages: &[AppliedMessage],
    ) -> Result<(), StoreError>;

    /// Deletes every row of these threads (their thread rows and their messages), in one
    /// transaction: what folding a `ThreadErased` does. Safe to repeat; how many rows went.
    async fn erase(&self, threads: &[Uuid]) -> Result<ThreadRows, StoreError>;

    /// How many rows the read model holds of a thread.
    async fn rows_of(&self, thread: Uuid) -> Result<ThreadRows, StoreError>;
}

/// What a process has heard of changes of the serving read model (a rebuild's switch-over): an
/// epoch that moves on with every change heard and every reconnection of the listener, and
/// is 0 while nothing is listening. A read kept since an epoch still current is as fresh as
/// the events the projector applied since; anything else may be older than the tables.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    epoch: Arc<AtomicU64>,
}

impl Changes {
    /// Changes of a read model that nothing replaces while this process reads it (tools,
    /// tests): a fixed epoch.
    pub fn fixed(epoch: u64) -> Self {
        Self {
            epoch: Arc::new(AtomicU64::new(epoch)),
        }
    }

    /// Moves on to a new epoch, as a change heard does.
    pub fn heard(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Sets the epoch, as the process listening for changes does: 0 while it cannot hear
    /// them, a new one each time it starts to again.
    pub fn set(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The current epoch; 0 while changes cannot be heard.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}
