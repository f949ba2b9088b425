//! A thread's messages as the event log stored them, live and read back: what the gateway's
//! feeds show. Every read is bounded (a count, a sequence, a timeout) and costs the log a few
//! requests whatever the thread's length; what to show of it stays with the gateway.

use crate::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use proto_events::Subjects;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// One `MessagePosted` event as the log stored it, with what a reader needs to check it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its sequence in the event stream.
    pub sequence: u64,
    /// The subject it was published on (`<prefix>.thread.<id>.message`).
    pub subject: String,
    /// Its `Threadline-Event` header, if it has one.
    pub event: Option<String>,
    /// Its `Threadline-Schema-Version` header, if it has one.
    pub schema_version: Option<String>,
    /// Its payload as stored: empty for a stored copy that cannot be read (invalid for every
    /// reader).
    pub payload: Bytes,
}

/// A message as the log announces it once stored, with the stream sequence of the thread's
/// message stored before it: a reader that has not handled that one missed something.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    /// The stream sequence of the thread's previous message (0 if it is the first).
    pub previous: u64,
    pub message: StoredMessage,
}

/// The messages the log stores on a thread from the moment of subscribing, in stream order.
/// Dropping it unsubscribes.
pub type LiveMessages = BoxStream<'static, LiveMessage>;

/// What the gateway reads of a thread's messages. Every method that asks the log ends
/// within [`request_timeout`](Self::request_timeout) per request it names, failing with
/// [`StoreError`] otherwise; none of them checks that an event is valid. A thread that does
/// not exist, or holds no messages, is an empty thread: no messages, sequence 0.
#[async_trait]
pub trait ThreadMessages: Send + Sync + 'static {
    /// The subjects the log stores events on, to decode what it gives.
    fn subjects(&self) -> &Subjects;

    /// The longest the log is waited for, per request (`NATS_TIMEOUT`).
    fn request_timeout(&self) -> Duration;

    /// Counts the log's connections made so far; it changes each time the connection comes
    /// back, after which a subscriber may have missed messages stored meanwhile.
    fn connections(&self) -> watch::Receiver<u64>;

    /// The stream sequence of the thread's first valid `ThreadCreated`, if the log holds one
    /// (the one rule of existence); `None` for a thread that does not exist.
    async fn thread_created_at(&self, thread: Uuid) -> Result<Option<u64>, StoreError>;

    /// Subscribes to the thread's messages as they are stored, each once, in stream order
    /// (while the connection holds: see [`connections`](Self::connections)). The
    /// subscription is in place when this returns: a message stored after it, and any read
    /// made after it, reaches the subscriber. One request; a thread that does not exist yet
    /// gives its messages once it does.
    async fn subscribe(&self, thread: Uuid) -> Result<LiveMessages, StoreError>;

    /// The stream sequence of the thread's last message, 0 if it has none: one request.
    async fn last_sequence(&self, thread: Uuid) -> Result<u64, StoreError>;

    /// The thread's messages from stream sequence `from` on, oldest first: at most `max`,
    /// none after `through`. Two requests, and each message within the timeout.
    async fn messages(
        &self,
        thread: Uuid,
        from: u64,
        through: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// The payload sizes in bytes of the same messages as [`messages`](Self::messages),
    /// read without their payloads.
    async fn sizes(
        &self,
        thread: Uuid,
        from: u64,
        through: Option<u64>,
        max: usize,
    ) -> Result<Vec<usize>, StoreError>;

    /// Where the thread's latest messages begin: a stream sequence from which the thread
    /// (created at stream sequence `created`) holds `least` to `most` messages, counting
    /// those up to `through`, and whether that is the thread's first message. Fewer than
    /// 2 log2(the stream's length) requests, none when the stream holds fewer than `least`
    /// messages after `created` up to `through`. Without such a sequence (messages arrive
    /// faster than the counts move), one from near the top.
    async fn latest_from(
        &self,
        thread: Uuid,
        created: u64,
        through: u64,
        least: u64,
        most: u64,
    ) -> Result<(u64, bool), StoreError>;

    /// The ids and stream sequences of the thread's messages from stream sequence `from` on,
    /// oldest first, none after `through`, at most `max`, read without payloads `batch` at a
    /// time (one request per batch, only a batch held at once). An id is the message's
    /// `Nats-Msg-Id`, `None` where it has none (or one that is not a UUID): such a message
    /// must be read whole ([`message_at`](Self::message_at)) to learn its id.
    async fn ids(
        &self,
        thread: Uuid,
        from: u64,
        through: Option<u64>,
        batch: usize,
        max: usize,
    ) -> Result<Vec<(u64, Option<Uuid>)>, StoreError>;

    /// The thread's message stored at stream sequence `sequence`, read whole from the
    /// stream's leader (one request: what another replica just stored is there); `None` if
    /// none of its messages is stored there.
    async fn message_at(
        &self,
        thread: Uuid,
        sequence: u64,
    ) -> Result<Option<StoredMessage>, StoreError>;
}
