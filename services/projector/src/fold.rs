//! The projection fold: what each event does to the read model. Pure, so it is tested
//! without a broker or a database.

use proto_events::{Event, EventError, Subjects};
use std::collections::HashMap;
use threadline_ports::{AppliedMessage, AppliedThread, StoredEvent};
use uuid::Uuid;

/// What to do with one event.
#[derive(Debug, Clone)]
pub enum Verdict {
    Thread(AppliedThread),
    Message(AppliedMessage),
    /// A thread's `ThreadErased`: its rows go, and none of its events counts from now on.
    Erase(Uuid),
    /// An event of an erased thread: nothing to write, nothing to set aside.
    Skip,
    SetAside(EventError),
}

/// Decodes and checks one event.
pub fn verdict(subjects: &Subjects, incoming: &StoredEvent) -> Verdict {
    let decoded = Event::decode(
        subjects,
        &incoming.subject,
        incoming.event_header.as_deref(),
        incoming.version_header.as_deref(),
        &incoming.payload,
    );
    match decoded {
        Ok(Event::ThreadCreated(e)) => Verdict::Thread(AppliedThread {
            id: e.id,
            user: e.user,
            timestamp: e.timestamp,
            stream_seq: incoming.sequence,
        }),
        Ok(Event::MessagePosted(e)) => Verdict::Message(AppliedMessage {
            id: e.id,
            thread: e.thread,
            user: e.user,
            timestamp: e.timestamp,
            body: e.body,
            send_by_user: e.send_by_user,
            stream_seq: incoming.sequence,
        }),
        Ok(Event::ThreadErased(e)) => Verdict::Erase(e.thread),
        Err(e) => Verdict::SetAside(e),
    }
}

/// The threads the verdicts erase, in stream order.
pub fn erasures_in(verdicts: &[Verdict]) -> Vec<Uuid> {
    verdicts
        .iter()
        .filter_map(|verdict| match verdict {
            Verdict::Erase(thread) => Some(*thread),
            _ => None,
        })
        .collect()
}

/// Skips every thread and message row of a thread that `erased` says is erased, wherever it
/// is in the stream (before its erasure, or a `ThreadCreated` published again after it).
pub fn skip_erased(verdicts: &mut [Verdict], erased: impl Fn(Uuid) -> bool) {
    for verdict in verdicts.iter_mut() {
        let thread = match verdict {
            Verdict::Thread(t) => t.id,
            Verdict::Message(m) => m.thread,
            _ => continue,
        };
        if erased(thread) {
            *verdict = Verdict::Skip;
        }
    }
}

/// The rows that `verdicts` write: the threads and the messages among them.
pub fn rows<'a>(
    verdicts: impl Iterator<Item = &'a Verdict>,
) -> (Vec<AppliedThread>, Vec<AppliedMessage>) {
    let mut threads = Vec::new();
    let mut messages = Vec::new();
    for verdict in verdicts {
        match verdict {
            Verdict::Thread(t) => threads.push(t.clone()),
            Verdict::Message(m) => messages.push(m.clone()),
            Verdict::Erase(_) | Verdict::Skip | Verdict::SetAside(_) => {}
        }
    }
    (threads, messages)
}

/// The lowest sequence at which the batch creates each thread.
pub fn created_in(verdicts: &[Verdict]) -> HashMap<Uuid, u64> {
    let mut created = HashMap::new();
    for verdict in verdicts {
        if let Verdict::Thread(t) = verdict {
            record_creation(&mut created, t.id, t.stream_seq);
        }
    }
    created
}

/// Notes that `thread` was created at `sequence`; the first creation counts (the one rule of
/// existence: the first valid `ThreadCreated` wins, see `threadline_nats::existence`).
pub fn record_creation(created: &mut HashMap<Uuid, u64>, thread: Uuid, sequence: u64) {
    created
        .entry(thread)
        .and_modify(|s| *s = (*s).min(sequence))
        .or_insert(sequence);
}

/// The threads whose creation must be asked of the log: those that messages of this batch
/// name and that the batch does not create before them, each with the lowest sequence of
/// such a message.
pub fn threads_to_check(verdicts: &[Verdict]) -> HashMap<Uuid, u64> {
    let created = created_in(verdicts);
    let mut check = HashMap::new();
    for verdict in verdicts {
        if let Verdict::Message(m) = verdict {
            if !created_before(&created, m) {
                record_creation(&mut check, m.thread, m.stream_seq);
            }
        }
    }
    check
}

fn created_before(created: &HashMap<Uuid, u64>, message: &AppliedMessage) -> bool {
    created
        .get(&message.thread)
        .is_some_and(|s| *s < message.stream_seq)
}

/// Sets aside every message whose thread has no valid `ThreadCreated` earlier in the stream:
/// `created` holds the sequence of each known thread's creation. The rule depends on the
/// stream alone, so the live projector and a replay from the first event agree.
pub fn reject_unknown_threads(verdicts: &mut [Verdict], created: &HashMap<Uuid, u64>) {
    for verdict in verdicts.iter_mut() {
        if let Verdict::Message(m) = verdict {
            if !created_before(created, m) {
                *verdict = Verdict::SetAside(EventError::UnknownThread(m.thread));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    const THREAD: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";

    fn incoming(kind: &str, sequence: u64, payload: serde_json::Value) -> StoredEvent {
        StoredEvent {
            subject: format!("chat.thread.{THREAD}.{kind}"),
            sequence,
            event_header: None,
            version_header: None,
            payload: Bytes::from(serde_json::to_vec(&payload).unwrap()),
        }
    }

    fn created() -> StoredEvent {
        incoming(
            "created",
            1,
            json!({"id": THREAD, "user": {"n": 1}, "timestamp": "2026-11-24T03:22:40.123456Z"}),
        )
    }

    fn message(sequence: u64, thread: &str) -> StoredEvent {
        let mut m = incoming(
            "message",
            sequence,
            json!({
                "id": uuid::Uuid::from_u128(sequence as u128).to_string(),
                "user": "agent", "timestamp": "2026-11-24T03:22:41.000000Z",
                "body": "hi", "send_by_user": false, "thread": thread,
            }),
        );
        m.subject = format!("chat.thread.{thread}.message");
        m
    }

    #[test]
    fn valid_events_become_rows_with_their_sequence() {
        let s = Subjects::default();
        assert!(matches!(verdict(&s, &created()), Verdict::Thread(t) if t.stream_seq == 1));
        assert!(
            matches!(verdict(&s, &message(7, THREAD)), Verdict::Message(m) if m.stream_seq == 7)
        );
    }

    #[test]
    fn invalid_events_are_set_aside_with_a_reason() {
        let s = Subjects::default();
        let mut bad = message(2, THREAD);
        bad.payload = Bytes::from_static(b"{\"id\":");
        assert!(matches!(
            verdict(&s, &bad),
            Verdict::SetAside(EventError::InvalidPayload(_))
        ));
    }

    #[test]
    fn only_threads_the_batch_does_not_create_are_checked() {
        let s = Subjects::default();
        let other = "00000000-0000-1000-8000-000000000001";
        let verdicts: Vec<Verdict> = [created(), message(2, THREAD), message(3, other)]
            .iter()
            .map(|i| verdict(&s, i))
            .collect();
        let check = threads_to_check(&verdicts);
        assert_eq!(check, HashMap::from([(Uuid::parse_str(other).unwrap(), 3)]));
    }

    #[test]
    fn messages_for_unknown_threads_are_set_aside() {
        let s = Subjects::default();
        let other = Uuid::parse_str("00000000-0000-1000-8000-000000000001").unwrap();
        let mut verdicts = vec![
            verdict(&s, &message(3, &other.to_string())),
            verdict(&s, &message(4, THREAD)),
        ];
        let created = HashMap::from([(Uuid::parse_str(THREAD).unwrap(), 1)]);
        reject_unknown_threads(&mut verdicts, &created);
        assert!(
            matches!(&verdicts[0], Verdict::SetAside(EventError::UnknownThread(t)) if *t == other)
        );
        assert!(matches!(&verdicts[1], Verdict::Message(_)));
    }

    fn erased(sequence: u64) -> StoredEvent {
        incoming(
            "erased",
            sequence,
            json!({"thread": THREAD, "timestamp": "2026-11-24T03:22:42.000000Z"}),
        )
    }

    #[test]
    fn an_erasure_skips_every_row_of_its_thread_before_and_after_it() {
        let s = Subjects::default();
        let other = "00000000-0000-1000-8000-000000000001";
        let mut again = created();
        again.sequence = 5;
        let mut verdicts: Vec<Verdict> = [
            created(),
            message(2, THREAD),
            erased(3),
            message(4, other),
            again,
        ]
        .iter()
        .map(|i| verdict(&s, i))
        .collect();
        let thread = Uuid::parse_str(THREAD).unwrap();
        assert_eq!(erasures_in(&verdicts), [thread]);
        skip_erased(&mut verdicts, |t| t == thread);
        assert!(matches!(verdicts[0], Verdict::Skip));
        assert!(matches!(verdicts[1], Verdict::Skip));
        assert!(matches!(verdicts[2], Verdict::Erase(t) if t == thread));
        assert!(matches!(&verdicts[3], Verdict::Message(m) if m.stream_seq == 4));
        assert!(matches!(verdicts[4], Verdict::Skip));
        let (threads, messages) = rows(verdicts.iter());
        assert!(threads.is_empty());
        assert_eq!(messages.len(), 1);
    }

    #[test]
    fn a_message_before_its_threads_creation_is_set_aside() {
        let s = Subjects::default();
        let mut late = created();
        late.sequence = 5;
        let mut verdicts: Vec<Verdict> = [message(2, THREAD), late, message(6, THREAD)]
            .iter()
            .map(|i| verdict(&s, i))
            .collect();
        let created = created_in(&verdicts);
        assert_eq!(
            threads_to_check(&verdicts),
            HashMap::from([(Uuid::parse_str(THREAD).unwrap(), 2)])
        );
        reject_unknown_threads(&mut verdicts, &created);
        assert!(matches!(
            &verdicts[0],
            Verdict::SetAside(EventError::UnknownThread(_))
        ));
        assert!(matches!(&verdicts[2], Verdict::Message(m) if m.stream_seq == 6));
    }
}
