//! The event log as the projector reads it: deliveries of stored events that it acknowledges
//! once they are applied ([`ProjectionSource`]), and a replay of the stream in order at bulk
//! speed for `rebuild` and `verify` ([`EventReplay`]).

use crate::{Cause, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use proto_events::{EventError, Subjects};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// An event as the log stored it: where, at which sequence, with the headers that say how to
/// decode its payload.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub subject: String,
    pub sequence: u64,
    /// The event kind header (`proto_events::headers::EVENT`), if present.
    pub event_header: Option<String>,
    /// The schema version header (`proto_events::headers::SCHEMA_VERSION`), if present.
    pub version_header: Option<String>,
    pub payload: Bytes,
}

/// How far the projector is behind, as of one delivered event.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// Events stored after it and not delivered yet.
    pub pending: u64,
    /// When the log stored it.
    pub stored_at: SystemTime,
}

/// One event delivered to the projector, with what its source needs to acknowledge it. Reading
/// it costs nothing until [`event`](Delivery::event) is asked for.
pub trait Delivery: Send + 'static {
    /// The event; `None` if what was delivered is not one of the log's events.
    fn event(&self) -> Option<StoredEvent>;
    /// Its size as received, in bytes: what the bounds of a batch count.
    fn size(&self) -> usize;
    /// The backlog as of this event, if the delivery says.
    fn backlog(&self) -> Option<Backlog>;
}

/// The deliveries of a [`ProjectionSource`], in stream order. An error is one delivery that
/// went wrong (a missed heartbeat, a refused pull): the ones after it still come.
pub type Deliveries<D> = BoxStream<'static, Result<D, Cause>>;

/// The event log as the live projector uses it.
///
/// It promises at-least-once delivery in stream order to one durable reader: an event stays
/// the projector's until it is acknowledged, and is delivered again if it is not acknowledged
/// in time (or at once, after the delay, if it is handed back). Events set aside go to a store
/// of their own with their reason.
#[async_trait]
pub trait ProjectionSource: Send + Sync + 'static {
    type Delivery: Delivery;

    /// The subjects the events are stored on.
    fn subjects(&self) -> &Subjects;

    /// The most bytes one request for deliveries asks for, for batches of `batch_bytes`
    /// (`usize::MAX`: no bound): never less than the largest event the log can deliver, so
    /// that every event comes. 0: no bound.
    fn request_bytes(&self, batch_bytes: usize) -> usize;

    /// Opens the projector's durable reader (made if it is missing, as after an operator
    /// deleted it) and delivers from the first event it has not had acknowledged, asking for
    /// at most `batch_size` events and [`request_bytes`](Self::request_bytes)`(batch_bytes)`
    /// at a time. An event not acknowledged within `ack_wait` of its delivery (nor kept, see
    /// [`keep`](Self::keep)) is delivered again, as are the events lost with a connection; an
    /// existing reader is brought to that wait. The stream ends if the reader goes; open it
    /// again then.
    async fn deliveries(
        &self,
        batch_size: usize,
        batch_bytes: usize,
        ack_wait: Duration,
    ) -> Result<Deliveries<Self::Delivery>, Cause>;

    /// Tells the log that these events are still being applied: each is delivered again only
    /// a whole acknowledgement wait from now, if it is not acknowledged by then.
    async fn keep(&self, deliveries: &[Self::Delivery]);

    /// Acknowledges applied events: they are not delivered again. A lost acknowledgement is
    /// logged only; the event is delivered again, and applying it again changes nothing.
    async fn acknowledge(&self, deliveries: &[Self::Delivery]);

    /// Gives back events read and not applied, to be delivered again after `delay` instead of
    /// after the acknowledgement wait. Call it once the stream of deliveries they came from is
    /// dropped, so that they go to the next reader. Returns how many could not be handed back
    /// (they come again after the acknowledgement wait).
    async fn hand_back(&self, deliveries: &[Self::Delivery], delay: Duration) -> usize;

    /// A stream sequence `c` of a valid `ThreadCreated` of `thread` such that an event stored
    /// at `from` or later comes after its thread's creation exactly when its sequence is above
    /// `c`. `None`: the thread does not exist (the one rule of existence).
    async fn thread_created_for(&self, thread: Uuid, from: u64) -> Result<Option<u64>, StoreError>;

    /// Notes a valid `ThreadCreated` of `thread` stored at `sequence`, folded by the
    /// projector: later existence checks of the thread need not ask the log.
    fn remember_thread(&self, thread: Uuid, sequence: u64);

    /// Whether `thread` was erased: the log holds its `ThreadErased` (every one stored
    /// before this process started, and every one heard or folded since). None of its events
    /// counts, wherever it is in the stream.
    fn erased(&self, thread: Uuid) -> bool;

    /// Notes a valid `ThreadErased` of `thread`, folded by the projector.
    fn remember_erasure(&self, thread: Uuid);

    /// Stores an invalid event aside with why, where it came from and who set it aside, and
    /// waits until it is stored. The reason may be cut short; a payload too large for the
    /// record is left out (the event stays in the log at its sequence). Returns whether the
    /// payload was left out.
    async fn set_aside(
        &self,
        subject: &str,
        sequence: u64,
        payload: Bytes,
        reason: &EventError,
        by: &str,
    ) -> Result<bool, StoreError>;
}

/// Why a replay could not go on.
#[derive(Debug)]
pub enum ReplayError {
    /// The log did not answer or refused a request; shown as the cause is.
    Log(Cause),
    /// Reading the stream went wrong in a way a rerun fixes.
    Interrupted(String),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Log(cause) => cause.fmt(f),
            ReplayError::Interrupted(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ReplayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplayError::Log(cause) => cause.source(),
            ReplayError::Interrupted(_) => None,
        }
    }
}

/// How a replay decodes each event it reads, given the subjects the events are stored on.
pub type Decode<T> = fn(&Subjects, &StoredEvent) -> T;

/// The event log read from end to end, for `rebuild` and `verify`.
#[async_trait]
pub trait EventReplay: Send + Sync {
    /// The stream's first and last sequence now.
    async fn stream_bounds(&self) -> Result<(u64, u64), ReplayError>;

    /// Every thread the stream holds a valid `ThreadErased` of now: a replay that reads
    /// them first folds none of their events, wherever they are in the stream.
    async fn erased_threads(&self) -> Result<HashSet<Uuid>, ReplayError>;

    /// Reads the stream in order from sequence `from`, nothing acknowledged, nothing kept
    /// by the log for it afterwards. Each event is decoded with `decode` as it is read, on a
    /// task of its own, while the caller works on the events before.
    async fn replay<T: Send + 'static>(
        &self,
        from: u64,
        decode: Decode<T>,
    ) -> Result<Box<dyn Replay<T>>, ReplayError>;
}

/// A replay under way (see [`EventReplay::replay`]). It hands out every event of the stream
/// from where it started, once, in order; should the log lose its place (a reader deleted,
/// events skipped), it reads on from the next event, and gives up after a few tries in a row.
#[async_trait]
pub trait Replay<T>: Send {
    /// The next events of sequence `through` or lower, decoded, in stream order; `None` once
    /// every event up to `through` has been handed out. `through` must be a sequence the
    /// stream has reached (its last sequence, now or before). Events deleted from the stream
    /// are passed over.
    async fn next_batch(&mut self, through: u64) -> Result<Option<Vec<T>>, ReplayError>;

    /// The stream sequence up to which every event has been handed out.
    fn last_seq(&self) -> u64;
}
