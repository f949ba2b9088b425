//! Replaying the event stream in order at bulk speed, for `rebuild` and `verify`: the event
//! log as an [`EventReplay`]. An ephemeral consumer that needs no acknowledgements delivers
//! large batches to a task that decodes them while the caller works on the previous ones.

use crate::consumer::{pull_max_bytes, stored_event};
use crate::JetStreamLog;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_trait::async_trait;
use futures::StreamExt;
use proto_events::Subjects;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use threadline_ports::{Decode, EventReplay, Replay, ReplayError};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Most events asked of JetStream per pull request (below the client's per-subscription
/// buffer of 65,536 messages, which an unacknowledged consumer must never overflow).
const FETCH_BATCH: usize = 10_000;
/// Most bytes asked of JetStream per pull request (or the server's max_payload, if larger):
/// with `BATCHES_AHEAD`, what bounds the reader's memory when events are large.
const FETCH_BYTES: usize = 32 << 20;
/// Decoded batches waiting for the fold; then the reader waits.
const BATCHES_AHEAD: usize = 8;
/// How long to wait for the next events before asking the server whether any are left.
const IDLE_CHECK: Duration = Duration::from_secs(3);
/// How many new consumers in a row, without an event received between them, before a
/// replay gives up.
const RENEW_LIMIT: u32 = 3;

fn log_error(cause: impl Into<threadline_ports::Cause>) -> ReplayError {
    ReplayError::Log(cause.into())
}

#[async_trait]
impl EventReplay for JetStreamLog {
    async fn stream_bounds(&self) -> Result<(u64, u64), ReplayError> {
        let mut stream = self
            .jetstream()
            .get_stream(&self.settings().stream_name)
            .await
            .map_err(log_error)?;
        let info = stream.info().await.map_err(log_error)?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    async fn erased_threads(&self) -> Result<HashSet<Uuid>, ReplayError> {
        crate::erasures::read_all(self).await.map_err(log_error)
    }

    async fn replay<T: Send + 'static>(
        &self,
        from: u64,
        decode: Decode<T>,
    ) -> Result<Box<dyn Replay<T>>, ReplayError> {
        Ok(Box::new(EventReader::open(self, from, decode).await?))
    }
}

/// Reads the event stream in order from a sequence with an ephemeral consumer that needs no
/// acknowledgements. A task of its own pulls and decodes the events while the caller works on
/// the previous ones. Should the consumer vanish (the server deletes it once the reader has
/// stood still past its inactivity threshold, or an operator does) or skip events (a client
/// buffer overflowed), the reader reads on from the next event with a new one.
struct EventReader<T> {
    source: Source<T>,
    consumer: PullConsumer,
    batches: mpsc::Receiver<Read<T>>,
    task: tokio::task::JoinHandle<()>,
    /// Decoded events past the bound asked for so far.
    held: VecDeque<(u64, T)>,
    /// The stream sequence of the last event received.
    received: u64,
    /// The consumer's delivery sequence of the last event received from the consumer in use.
    delivered: u64,
    /// New consumers in a row, without an event received between them.
    renewed: u32,
    /// The stream sequence up to which every event has been handed out.
    last_seq: u64,
}

/// What the reading task hands on.
enum Read<T> {
    /// The next events, in stream order, and the consumer's delivery sequence of the last.
    Events(Vec<(u64, T)>, u64),
    /// The consumer is gone, or skipped events: read on with a new one.
    Renew(String),
    Failed(ReplayError),
}

impl<T: Send + 'static> EventReader<T> {
    async fn open(
        log: &JetStreamLog,
        from_seq: u64,
        decode: Decode<T>,
    ) -> Result<Self, ReplayError> {
        let from = from_seq.max(1);
        let source = Source {
            stream: log
                .jetstream()
                .get_stream(&log.settings().stream_name)
                .await
                .map_err(log_error)?,
            max_bytes: pull_max_bytes(FETCH_BYTES, log.client().server_info().max_payload),
            subjects: log.subjects().clone(),
            decode,
        };
        let (consumer, batches, task) = source.read_from(from).await?;
        Ok(Self {
            source,
            consumer,
            batches,
            task,
            held: VecDeque::new(),
            received: from - 1,
            delivered: 0,
            renewed: 0,
            last_seq: from - 1,
        })
    }

    /// See [`Replay::next_batch`].
    async fn next_batch(&mut self, through: u64) -> Result<Option<Vec<T>>, ReplayError> {
        loop {
            if self.held.front().is_some_and(|(seq, _)| *seq <= through) {
                let mut batch = Vec::new();
                while self.held.front().is_some_and(|(seq, _)| *seq <= through) {
                    if let Some((seq, verdict)) = self.held.pop_front() {
                        self.last_seq = seq;
                        batch.push(verdict);
                    }
                }
                return Ok(Some(batch));
            }
            if self.received >= through || self.last_seq >= through {
                self.last_seq = self.last_seq.max(through);
                return Ok(None);
            }
            match tokio::time::timeout(IDLE_CHECK, self.batches.recv()).await {
                Ok(Some(Read::Events(batch, delivered))) => self.hold(batch, delivered),
                Ok(Some(Read::Renew(reason))) => self.renew(&reason).await?,
                Ok(Some(Read::Failed(e))) => return Err(e),
                Ok(None) => {
                    return Err(ReplayError::Interrupted(
                        "the stream of events ended unexpectedly".into(),
                    ))
                }
                Err(_) => {
                    // Nothing arrives: either more is on its way, or the events up to
                    // `through` are gone from the stream (deleted by hand, or purged with an
                    // erased thread), or the consumer. Its delivered stream sequence moves
                    // past deleted events at the stream's end; what it delivered, counted,
                    // says whether any is still on its way.
                    match self.consumer.info().await {
                        Ok(info) => {
                            if info.num_pending == 0
                                && info.delivered.consumer_sequence <= self.delivered
                            {
                                self.received = self.received.max(through);
                            }
                        }
                        Err(e) => {
                            let reason = format!("the replay's consumer does not answer ({e})");
                            self.renew(&reason).await?;
                        }
                    }
                }
            }
        }
    }

    fn hold(&mut self, batch: Vec<(u64, T)>, delivered: u64) {
        if let Some((seq, _)) = batch.last() {
            self.received = *seq;
            self.renewed = 0;
        }
        self.delivered = self.delivered.max(delivered);
        self.held.extend(batch);
    }

    /// Reads on from the event after the last one received, with a new consumer.
    async fn renew(&mut self, reason: &str) -> Result<(), ReplayError> {
        self.renewed += 1;
        if self.renewed > RENEW_LIMIT {
            return Err(ReplayError::Interrupted(format!(
                "{reason}, {RENEW_LIMIT} times in a row; run it again"
            )));
        }
        self.task.abort();
        // What the task read before it stopped is in order and complete.
        while let Ok(read) = self.batches.try_recv() {
            if let Read::Events(batch, delivered) = read {
                self.hold(batch, delivered);
            }
        }
        self.delivered = 0;
        let from = self.received + 1;
        tracing::warn!("{reason}: reading on from sequence {from} with a new consumer");
        let _ = self
            .source
            .stream
            .delete_consumer(&self.consumer.cached_info().name)
            .await;
        (self.consumer, self.batches, self.task) = self.source.read_from(from).await?;
        Ok(())
    }
}

#[async_trait]
impl<T: Send + 'static> Replay<T> for EventReader<T> {
    async fn next_batch(&mut self, through: u64) -> Result<Option<Vec<T>>, ReplayError> {
        EventReader::next_batch(self, through).await
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl<T> Drop for EventReader<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the reader's consumers read, and how the events are decoded.
struct Source<T> {
    stream: async_nats::jetstream::stream::Stream,
    max_bytes: usize,
    subjects: Subjects,
    decode: Decode<T>,
}

impl<T: Send + 'static> Source<T> {
    /// A consumer that delivers the stream from sequence `from`, and the task that reads it.
    async fn read_from(
        &self,
        from: u64,
    ) -> Result<
        (
            PullConsumer,
            mpsc::Receiver<Read<T>>,
            tokio::task::JoinHandle<()>,
        ),
        ReplayError,
    > {
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                description: Some("threadline replay".into()),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(log_error)?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(FETCH_BATCH)
            .max_bytes_per_batch(self.max_bytes)
            // No idle heartbeat: async-nats checks its heartbeat timer before the events it
            // already holds, so a reader that stops pulling for twice the interval because
            // its writer is slow (an index build, PostgreSQL stalling) would read as a lost
            // server. Whether the consumer is there is asked when nothing arrives instead
            // (`IDLE_CHECK`), and a pull request that went missing is made again when it
            // expires.
            .heartbeat(Duration::ZERO)
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(log_error)?
            .ready_chunks(FETCH_BATCH);
        let (tx, batches) = mpsc::channel(BATCHES_AHEAD);
        let task = tokio::spawn(decode(messages, self.subjects.clone(), self.decode, tx));
        Ok((consumer, batches, task))
    }
}

/// Pulls events, checks that none was skipped, decodes them, and sends them on in batches.
async fn decode<T>(
    mut messages: futures::stream::ReadyChunks<pull::Stream>,
    subjects: Subjects,
    decode: Decode<T>,
    batches: mpsc::Sender<Read<T>>,
) {
    let mut consumer_seq = 0;
    while let Some(chunk) = messages.next().await {
        let before = consumer_seq;
        let mut batch = Vec::with_capacity(chunk.len());
        let mut stop = None;
        for item in chunk {
            let message = match item {
                Ok(message) => message,
                Err(e)
                    if matches!(
                        e.kind(),
                        MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::NoResponders
                    ) =>
                {
                    stop = Some(Read::Renew(format!("the replay's consumer is gone ({e})")));
                    break;
                }
                Err(e) => {
                    stop = Some(Read::Failed(log_error(e)));
                    break;
                }
            };
            let info = match message.info() {
                Ok(info) => info,
                Err(e) => {
                    stop = Some(Read::Failed(log_error(e)));
                    break;
                }
            };
            if info.consumer_sequence != consumer_seq + 1 {
                stop = Some(Read::Renew(
                    "events were skipped while reading the stream".into(),
                ));
                break;
            }
            consumer_seq = info.consumer_sequence;
            if let Some(event) = stored_event(&message) {
                batch.push((info.stream_sequence, decode(&subjects, &event)));
            }
        }
        if consumer_seq > before
            && batches
                .send(Read::Events(batch, consumer_seq))
                .await
                .is_err()
        {
            return;
        }
        if let Some(stop) = stop {
            let _ = batches.send(stop).await;
            return;
        }
    }
}
