//! Replaying the event stream from its first event at bulk speed, shared by `rebuild` and
//! `verify`: a reader of the log's replay that decodes the events into verdicts as they are
//! read, the fold of a replay (which keeps, across batches, what the live projector asks of
//! the log), and a writer that loads the rows (see `bulk`) into tables without secondary
//! indexes.

use crate::bulk::BulkWriter;
use crate::fold::{self, Verdict};
use crate::ProjectorError;
use std::collections::{HashMap, HashSet};
use threadline_ports::rebuild::BulkLoad;
use threadline_ports::{AppliedMessage, AppliedThread, EventReplay, Replay};
use uuid::Uuid;

/// The stream's sequence bounds, as the log reports them now.
pub async fn stream_bounds(log: &impl EventReplay) -> Result<(u64, u64), ProjectorError> {
    Ok(log.stream_bounds().await?)
}

/// The verdicts on the events of the stream from a sequence, in stream order, decoded as
/// they are read while the fold and COPY work on the previous ones (see [`EventReplay`]).
pub struct EventReader {
    events: Box<dyn Replay<Verdict>>,
    /// The stream sequence up to which every event has been handed out.
    pub last_seq: u64,
}

impl EventReader {
    pub async fn open(log: &impl EventReplay, from_seq: u64) -> Result<Self, ProjectorError> {
        let events = log.replay(from_seq, fold::verdict).await?;
        let last_seq = events.last_seq();
        Ok(Self { events, last_seq })
    }

    /// The verdicts on the next events of sequence `through` or lower, in stream order;
    /// `None` once every event up to `through` has been handed out. `through` must be a
    /// sequence the stream has reached (its last sequence, now or before).
    pub async fn next_batch(
        &mut self,
        through: u64,
    ) -> Result<Option<Vec<Verdict>>, ProjectorError> {
        let batch = self.events.next_batch(through).await?;
        self.last_seq = self.events.last_seq();
        Ok(batch)
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
    /// `ThreadErased` events (the events of the threads they erase are among `skipped`).
    pub erasures: u64,
}

/// The fold of a replay in stream order. It remembers every thread's creation and every
/// message (a thread and an id) across batches, so each row comes from the first valid event
/// of its key and a message counts only if its thread was created before it. A thread's first
/// valid `ThreadCreated` is the one it meets first: the one rule of existence that the live
/// projector, the api and the gateway follow by asking the log (`threadline_nats::existence`).
/// None of an erased thread's events counts: the threads erased when the replay began are
/// known from the start ([`with_erased`](Self::with_erased)), and a `ThreadErased` met later
/// erases its thread from then on; its rows, written already, are the caller's to delete
/// ([`take_erased`](Self::take_erased)).
pub struct ReplayFold {
    created: HashMap<Uuid, u64, foldhash::fast::RandomState>,
    messages: HashSet<(Uuid, Uuid), foldhash::fast::RandomState>,
    erased: HashSet<Uuid>,
    /// Threads erased by an event met that were not known to be erased before.
    newly_erased: Vec<Uuid>,
    pub counts: Counts,
}

impl Default for ReplayFold {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayFold {
    pub fn new() -> Self {
        Self::with_erased(HashSet::new())
    }

    /// A fold that counts no event of these threads, erased before it began.
    pub fn with_erased(erased: HashSet<Uuid>) -> Self {
        Self {
            created: HashMap::default(),
            messages: HashSet::default(),
            erased,
            newly_erased: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The threads erased by events folded since the last call, that were not known to be
    /// erased before: rows of theirs may have been written, and must be deleted.
    pub fn take_erased(&mut self) -> Vec<Uuid> {
        std::mem::take(&mut self.newly_erased)
    }

    /// The rows that the verdicts on a batch of events, next in stream order, add.
    pub fn fold(&mut self, batch: Vec<Verdict>) -> (Vec<AppliedThread>, Vec<AppliedMessage>) {
        let mut threads = Vec::new();
        let mut messages = Vec::new();
        for verdict in batch {
            self.counts.events += 1;
            match verdict {
                Verdict::Erase(thread) => {
                    self.counts.erasures += 1;
                    if self.erased.insert(thread) {
                        self.newly_erased.push(thread);
                        threads.retain(|t: &AppliedThread| t.id != thread);
                        messages.retain(|m: &AppliedMessage| m.thread != thread);
                    }
                }
                Verdict::Thread(t) if self.erased.contains(&t.id) => self.counts.skipped += 1,
                Verdict::Message(m) if self.erased.contains(&m.thread) => self.counts.skipped += 1,
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

/// Replays events up to `through` from `reader` into a writer; returns its tables.
pub async fn load<L: BulkLoad>(
    reader: &mut EventReader,
    fold: &mut ReplayFold,
    mut writer: BulkWriter<L>,
    through: u64,
    progress: &crate::progress::Progress,
) -> Result<L, ProjectorError> {
    while let Some(batch) = reader.next_batch(through).await? {
        let events = batch.len() as u64;
        let (threads, messages) = fold.fold(batch);
        writer.write(&threads, &messages).await?;
        progress.advance(events, reader.last_seq);
    }
    let (tables, refused) = writer.finish().await?;
    fold.counts.refused += refused;
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proto_events::Subjects;
    use threadline_ports::StoredEvent;

    fn event(sequence: u64, subject_thread: &str, kind: &str, payload: String) -> StoredEvent {
        StoredEvent {
            subject: format!("chat.thread.{subject_thread}.{kind}"),
            sequence,
            event_header: None,
            version_header: None,
            payload: Bytes::from(payload),
        }
    }

    fn created(sequence: u64, thread: &str, user: &str) -> StoredEvent {
        let payload = format!(
            r#"{{"id":"{thread}","user":"{user}","timestamp":"2026-11-24T03:22:40.123456Z"}}"#
        );
        event(sequence, thread, "created", payload)
    }

    fn message(sequence: u64, id: u128, thread: &str) -> StoredEvent {
        let payload = format!(
            r#"{{"id":"{}","user":"a","timestamp":"2026-11-24T03:22:41.000000Z","body":"hi","send_by_user":true,"thread":"{thread}"}}"#,
            Uuid::from_u128(id)
        );
        event(sequence, thread, "message", payload)
    }

    const A: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";
    const B: &str = "5b0e1d4a-c9a6-11ee-8c90-0242ac120002";

    fn verdicts(events: &[StoredEvent]) -> Vec<Verdict> {
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

    fn erased(sequence: u64, thread: &str) -> StoredEvent {
        let payload =
            format!(r#"{{"thread":"{thread}","timestamp":"2026-11-24T03:22:42.000000Z"}}"#);
        event(sequence, thread, "erased", payload)
    }

    #[test]
    fn no_event_of_a_thread_erased_before_the_replay_counts() {
        let a = Uuid::parse_str(A).unwrap();
        let mut fold = ReplayFold::with_erased(HashSet::from([a]));
        let (threads, messages) = fold.fold(verdicts(&[
            created(1, A, "a"),
            created(2, B, "b"),
            message(3, 7, A),
            erased(4, A),
            created(5, A, "published again"),
        ]));
        assert_eq!(
            threads.iter().map(|t| t.stream_seq).collect::<Vec<_>>(),
            [2]
        );
        assert!(messages.is_empty());
        assert!(
            fold.take_erased().is_empty(),
            "known before: nothing to delete"
        );
        assert_eq!((fold.counts.erasures, fold.counts.skipped), (1, 3));
    }

    #[test]
    fn an_erasure_met_drops_its_rows_in_the_batch_and_names_those_written_before() {
        let a = Uuid::parse_str(A).unwrap();
        let mut fold = ReplayFold::new();
        let (threads, _) = fold.fold(verdicts(&[created(1, A, "a")]));
        assert_eq!(threads.len(), 1, "written before the erasure is met");
        let (threads, messages) = fold.fold(verdicts(&[
            message(2, 7, A),
            created(3, B, "b"),
            erased(4, A),
            message(5, 8, A),
        ]));
        assert_eq!(
            threads.iter().map(|t| t.stream_seq).collect::<Vec<_>>(),
            [3]
        );
        assert!(messages.is_empty());
        assert_eq!(fold.take_erased(), [a]);
        assert!(fold.take_erased().is_empty());
        let (threads, _) = fold.fold(verdicts(&[erased(6, A), created(7, A, "again")]));
        assert!(threads.is_empty());
        assert!(fold.take_erased().is_empty(), "erased once");
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
}
