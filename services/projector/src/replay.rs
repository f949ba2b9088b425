//! Replaying the event stream from its first event at bulk speed, shared by `rebuild` and
//! `verify`: a reader that pulls large batches from JetStream, the fold of a replay (which
//! keeps, across batches, what the live projector asks of the log), and a writer that loads
//! the rows (see `copy`) into tables without secondary indexes.

use crate::copy::CopyWriter;
use crate::fold::{self, Verdict};
use crate::ProjectorError;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use futures::StreamExt;
use proto_events::Subjects;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use threadline_nats::JetStreamLog;
use threadline_ports::{AppliedMessage, AppliedThread};
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

/// The stream's sequence bounds, as JetStream reports them now.
pub async fn stream_bounds(log: &JetStreamLog) -> Result<(u64, u64), ProjectorError> {
    let mut stream = log
        .jetstream()
        .get_stream(&log.settings().stream_name)
        .await
        .map_err(ProjectorError::nats)?;
    let info = stream.info().await.map_err(ProjectorError::nats)?;
    Ok((info.state.first_sequence, info.state.last_sequence))
}

/// Reads the event stream in order from a sequence with an ephemeral consumer that needs no
/// acknowledgements. A task of its own pulls and decodes the events while the fold and COPY
/// work on the previous ones. Should the consumer vanish (the server deletes it once the
/// reader has stood still past its inactivity threshold, or an operator does) or skip events
/// (a client buffer overflowed), the reader reads on from the next event with a new one.
pub struct EventReader {
    source: Source,
    consumer: PullConsumer,
    batches: mpsc::Receiver<Read>,
    task: tokio::task::JoinHandle<()>,
    /// Decoded events past the bound asked for so far.
    held: VecDeque<(u64, Verdict)>,
    /// The stream sequence of the last event received.
    received: u64,
    /// New consumers in a row, without an event received between them.
    renewed: u32,
    /// The stream sequence up to which every event has been handed out.
    pub last_seq: u64,
}

/// What the reading task hands on.
enum Read {
    /// The next events, in stream order.
    Events(Vec<(u64, Verdict)>),
    /// The consumer is gone, or skipped events: read on with a new one.
    Renew(String),
    Failed(ProjectorError),
}

impl EventReader {
    pub async fn open(log: &JetStreamLog, from_seq: u64) -> Result<Self, ProjectorError> {
        let from = from_seq.max(1);
        let source = Source {
            stream: log
                .jetstream()
                .get_stream(&log.settings().stream_name)
                .await
                .map_err(ProjectorError::nats)?,
            max_bytes: crate::batch::pull_max_bytes(
                FETCH_BYTES,
                log.client().server_info().max_payload,
            ),
            subjects: log.subjects().clone(),
        };
        let (consumer, batches, task) = source.read_from(from).await?;
        Ok(Self {
            source,
            consumer,
            batches,
            task,
            held: VecDeque::new(),
            received: from - 1,
            renewed: 0,
            last_seq: from - 1,
        })
    }

    /// The verdicts on the next events of sequence `through` or lower, in stream order;
    /// `None` once every event up to `through` has been handed out. `through` must be a
    /// sequence the stream has reached (its last sequence, now or before).
    pub async fn next_batch(
        &mut self,
        through: u64,
    ) -> Result<Option<Vec<Verdict>>, ProjectorError> {
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
                Ok(Some(Read::Events(batch))) => self.hold(batch),
                Ok(Some(Read::Renew(reason))) => self.renew(&reason).await?,
                Ok(Some(Read::Failed(e))) => return Err(e),
                Ok(None) => {
                    return Err(ProjectorError::Replay(
                        "the stream of events ended unexpectedly".into(),
                    ))
                }
                Err(_) => {
                    // Nothing arrives: either more is on its way, or the events up to
                    // `through` are gone from the stream (deleted by hand), or the consumer.
                    match self.consumer.info().await {
                        Ok(info) => {
                            if info.num_pending == 0
                                && info.delivered.stream_sequence <= self.received
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

    fn hold(&mut self, batch: Vec<(u64, Verdict)>) {
        if let Some((seq, _)) = batch.last() {
            self.received = *seq;
            self.renewed = 0;
        }
        self.held.extend(batch);
    }

    /// Reads on from the event after the last one received, with a new consumer.
    async fn renew(&mut self, reason: &str) -> Result<(), ProjectorError> {
        self.renewed += 1;
        if self.renewed > RENEW_LIMIT {
            return Err(ProjectorError::Replay(format!(
                "{reason}, {RENEW_LIMIT} times in a row; run it again"
            )));
        }
        self.task.abort();
        // What the task read before it stopped is in order and complete.
        while let Ok(read) = self.batches.try_recv() {
            if let Read::Events(batch) = read {
                self.hold(batch);
            }
        }
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

impl Drop for EventReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the reader's consumers read.
struct Source {
    stream: async_nats::jetstream::stream::Stream,
    max_bytes: usize,
    subjects: Subjects,
}

impl Source {
    /// A consumer that delivers the stream from sequence `from`, and the task that reads it.
    async fn read_from(
        &self,
        from: u64,
    ) -> Result<
        (
            PullConsumer,
            mpsc::Receiver<Read>,
            tokio::task::JoinHandle<()>,
        ),
        ProjectorError,
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
            .map_err(ProjectorError::nats)?;
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
            .map_err(ProjectorError::nats)?
            .ready_chunks(FETCH_BATCH);
        let (tx, batches) = mpsc::channel(BATCHES_AHEAD);
        let task = tokio::spawn(decode(messages, self.subjects.clone(), tx));
        Ok((consumer, batches, task))
    }
}

/// Pulls events, checks that none was skipped, decodes them, and sends them on in batches.
async fn decode(
    mut messages: futures::stream::ReadyChunks<pull::Stream>,
    subjects: Subjects,
    batches: mpsc::Sender<Read>,
) {
    let mut consumer_seq = 0;
    while let Some(chunk) = messages.next().await {
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
                    stop = Some(Read::Failed(ProjectorError::nats(e)));
                    break;
                }
            };
            let info = match message.info() {
                Ok(info) => info,
                Err(e) => {
                    stop = Some(Read::Failed(ProjectorError::nats(e)));
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
            if let Some(event) = crate::incoming(&message) {
                batch.push((info.stream_sequence, fold::verdict(&subjects, &event)));
            }
        }
        if !batch.is_empty() && batches.send(Read::Events(batch)).await.is_err() {
            return;
        }
        if let Some(stop) = stop {
            let _ = batches.send(stop).await;
            return;
        }
    }
}

/// How many events a replay has folded into rows, and how many it passed over.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub events: u64,
    pub threads: u64,
    pub messages: u64,
    /// Invalid events (the live projector set them aside) and repeats of a message on its
    /// thread.
    pub skipped: u64,
    /// Rows PostgreSQL refused (the live projector set their events aside too); counted
    /// among `threads` and `messages` as well.
    pub refused: u64,
}

/// The fold of a replay in stream order. It remembers every thread's creation and every
/// message (a thread and an id) across batches, so each row comes from the first valid event
/// of its key and a message counts only if its thread was created before it. A thread's first
/// valid `ThreadCreated` is the one it meets first: the one rule of existence that the live
/// projector, the api and the gateway follow by asking the log (`threadline_nats::existence`).
pub struct ReplayFold {
    created: HashMap<Uuid, u64, foldhash::fast::RandomState>,
    messages: HashSet<(Uuid, Uuid), foldhash::fast::RandomState>,
    pub counts: Counts,
}

impl Default for ReplayFold {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayFold {
    pub fn new() -> Self {
        Self {
            created: HashMap::default(),
            messages: HashSet::default(),
            counts: Counts::default(),
        }
    }

    /// The rows that the verdicts on a batch of events, next in stream order, add.
    pub fn fold(&mut self, batch: Vec<Verdict>) -> (Vec<AppliedThread>, Vec<AppliedMessage>) {
        let mut threads = Vec::new();
        let mut messages = Vec::new();
        for verdict in batch {
            self.counts.events += 1;
            match verdict {
                Verdict::Thread(t) if !self.created.contains_key(&t.id) => {
                    self.created.insert(t.id, t.stream_seq);
                    threads.push(t);
                }
                Verdict::Message(m)
                    if self
                        .created
                        .get(&m.thread)
                        .is_some_and(|s| *s < m.stream_seq)
                        && self.messages.insert((m.thread, m.id)) =>
                {
                    messages.push(m);
                }
                _ => self.counts.skipped += 1,
            }
        }
        self.counts.threads += threads.len() as u64;
        self.counts.messages += messages.len() as u64;
        (threads, messages)
    }
}

/// Replays events up to `through` from `reader` into a writer; returns the connection.
pub async fn load(
    reader: &mut EventReader,
    fold: &mut ReplayFold,
    mut writer: CopyWriter,
    through: u64,
    progress: &crate::progress::Progress,
) -> Result<PgConnection, ProjectorError> {
    while let Some(batch) = reader.next_batch(through).await? {
        let events = batch.len() as u64;
        let (threads, messages) = fold.fold(batch);
        writer.write(&threads, &messages).await?;
        progress.advance(events, reader.last_seq);
    }
    let (conn, refused) = writer.finish().await?;
    fold.counts.refused += refused;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyChunk;
    use crate::fold::Incoming;
    use bytes::Bytes;

    fn event(sequence: u64, subject_thread: &str, kind: &str, payload: String) -> Incoming {
        Incoming {
            subject: format!("chat.thread.{subject_thread}.{kind}"),
            sequence,
            event_header: None,
            version_header: None,
            payload: Bytes::from(payload),
        }
    }

    fn created(sequence: u64, thread: &str, user: &str) -> Incoming {
        let payload = format!(
            r#"{{"id":"{thread}","user":"{user}","timestamp":"2026-11-24T03:22:40.123456Z"}}"#
        );
        event(sequence, thread, "created", payload)
    }

    fn message(sequence: u64, id: u128, thread: &str) -> Incoming {
        let payload = format!(
            r#"{{"id":"{}","user":"a","timestamp":"2026-11-24T03:22:41.000000Z","body":"hi","send_by_user":true,"thread":"{thread}"}}"#,
            Uuid::from_u128(id)
        );
        event(sequence, thread, "message", payload)
    }

    const A: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";
    const B: &str = "5b0e1d4a-c9a6-11ee-8c90-0242ac120002";

    fn verdicts(events: &[Incoming]) -> Vec<Verdict> {
        events
            .iter()
            .map(|e| fold::verdict(&Subjects::default(), e))
            .collect()
    }

    #[test]
    fn the_first_valid_event_of_an_id_wins_across_batches() {
        let mut fold = ReplayFold::new();
        let (threads, messages) = fold.fold(verdicts(&[created(1, A, "first"), message(2, 7, A)]));
        assert_eq!((threads.len(), messages.len()), (1, 1));
        let (threads, messages) = fold.fold(verdicts(&[created(3, A, "second"), message(4, 7, A)]));
        assert!(threads.is_empty() && messages.is_empty());
        assert_eq!(fold.counts.skipped, 2);
    }

    #[test]
    fn one_message_id_on_two_threads_is_a_message_of_each() {
        let mut fold = ReplayFold::new();
        let (_, messages) = fold.fold(verdicts(&[
            created(1, A, "a"),
            created(2, B, "b"),
            message(3, 7, A),
            message(4, 7, B),
            message(5, 7, B),
        ]));
        let kept: Vec<_> = messages.iter().map(|m| m.stream_seq).collect();
        assert_eq!(kept, [3, 4], "one row per thread, the first copy of each");
        assert_eq!(fold.counts.skipped, 1);
    }

    #[test]
    fn an_invalid_thread_created_before_a_valid_one_does_not_count() {
        let mut fold = ReplayFold::new();
        let garbage = event(1, A, "created", "garbage".into());
        let (threads, messages) = fold.fold(verdicts(&[
            garbage,
            message(2, 6, A),
            created(3, A, "first valid"),
            message(4, 7, A),
            created(5, A, "later"),
        ]));
        assert_eq!(threads.len(), 1);
        assert_eq!((threads[0].stream_seq, messages.len()), (3, 1));
        assert_eq!(messages[0].stream_seq, 4);
    }

    #[test]
    fn a_message_counts_only_after_its_threads_creation() {
        let mut fold = ReplayFold::new();
        let (_, early) = fold.fold(verdicts(&[message(1, 7, B)]));
        assert!(early.is_empty());
        let (_, late) = fold.fold(verdicts(&[created(2, B, "v"), message(3, 7, B)]));
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].stream_seq, 3);
    }

    #[test]
    fn rows_become_copy_text_in_column_order() {
        let mut fold = ReplayFold::new();
        let (threads, messages) =
            fold.fold(verdicts(&[created(1, A, "tab\\there"), message(2, 7, A)]));
        let mut chunk = CopyChunk::default();
        chunk.push_thread(&threads[0]);
        chunk.push_message(&messages[0]);
        assert_eq!(
            String::from_utf8(chunk.threads).unwrap(),
            format!("{A}\t\"tab\\\\there\"\t2026-11-24T03:22:40.123456Z\t1\n")
        );
        assert_eq!(
            String::from_utf8(chunk.messages).unwrap(),
            format!(
                "{id}\t{A}\t\"a\"\thi\tt\t2026-11-24T03:22:41.000000Z\t2\t\
                 {{\"id\":\"{id}\",\"user\":\"a\",\"timestamp\":\"2026-11-24T03:22:41.000000Z\",\
                 \"body\":\"hi\",\"send_by_user\":true}}\n",
                id = Uuid::from_u128(7)
            )
        );
    }
}
