//! A thread's stored messages, read back from the event stream: where a feed starts, what it
//! replays when its NATS connection comes back or it sees a sequence gap, and what a socket
//! that resumes with `since` gets first. Also the memory of which message ids a thread has
//! shown, or held when its feed started, so that a repeat stored twice (outside the stream's
//! duplicate window) shows once.

use axum::extract::ws::Utf8Bytes;
use proto_events::{Event, EventKind, Subjects};
use std::collections::{HashMap, VecDeque};
use threadline_ports::{StoreError, StoredMessage, ThreadMessages};
use uuid::Uuid;

/// How many message ids of a thread a feed remembers, with their stream sequences: those of
/// the thread's latest messages when it starts, then those it shows. The window of repeats it
/// drops, and the resumes it answers without asking the stream.
pub const REMEMBERED_MESSAGES: usize = 10_000;

/// A message checked for showing: its id and the frame a socket gets.
pub struct Shown {
    pub id: Uuid,
    pub frame: Utf8Bytes,
}

/// The message's id and frame, or `None` if the event is invalid (it is never shown; the
/// projector sets it aside).
pub fn check(message: &StoredMessage, subjects: &Subjects) -> Option<Shown> {
    match Event::decode(
        subjects,
        &message.subject,
        message.event.as_deref(),
        message.schema_version.as_deref(),
        &message.payload,
    ) {
        Ok(event) if event.kind() == EventKind::MessagePosted => {
            // A payload that decoded as JSON is valid UTF-8.
            let frame = Utf8Bytes::try_from(message.payload.clone()).ok()?;
            Some(Shown {
                id: event.id(),
                frame,
            })
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(subject = %message.subject, sequence = message.sequence, "not pushing an invalid event: {e}");
            None
        }
    }
}

/// The ids a thread has shown (or held when its feed started), each with the stream sequence
/// it was first stored at; the oldest are forgotten past [`REMEMBERED_MESSAGES`]. An id held
/// when the feed started is known from the first copy's `Nats-Msg-Id` only, until that copy
/// is read whole ([`checked`](Self::checked)): the first time another copy of the id comes.
#[derive(Default)]
pub struct ShownIds {
    first: HashMap<Uuid, First>,
    /// The ids in the order they were remembered, each with the sequence it was remembered at.
    order: VecDeque<(Uuid, u64)>,
}

#[derive(Clone, Copy)]
struct First {
    sequence: u64,
    /// Known from `Nats-Msg-Id` alone: the copy at `sequence` may be invalid, or another
    /// message that its publisher gave this `Nats-Msg-Id`.
    unchecked: bool,
}

impl ShownIds {
    /// Remembers a message stored at `sequence`; false if its id was shown before (a repeat).
    pub fn insert(&mut self, id: Uuid, sequence: u64) -> bool {
        self.remember(id, sequence, false)
    }

    /// Remembers, from its `Nats-Msg-Id` alone, a message stored at `sequence` before the
    /// feed started.
    pub fn learn(&mut self, id: Uuid, sequence: u64) {
        self.remember(id, sequence, true);
    }

    fn remember(&mut self, id: Uuid, sequence: u64, unchecked: bool) -> bool {
        if self.first.contains_key(&id) {
            return false;
        }
        self.first.insert(
            id,
            First {
                sequence,
                unchecked,
            },
        );
        self.order.push_back((id, sequence));
        if self.order.len() > REMEMBERED_MESSAGES {
            if let Some((old, at)) = self.order.pop_front() {
                if self
                    .first
                    .get(&old)
                    .is_some_and(|first| first.sequence == at)
                {
                    self.first.remove(&old);
                }
            }
        }
        true
    }

    /// The sequence at which a remembered message was first stored.
    pub fn sequence_of(&self, id: Uuid) -> Option<u64> {
        self.first.get(&id).map(|first| first.sequence)
    }

    /// Whether the message stored at `sequence` is the first copy of `id` (not a repeat).
    pub fn is_first(&self, id: Uuid, sequence: u64) -> bool {
        !matches!(self.first.get(&id), Some(first) if first.sequence != sequence)
    }

    /// The sequence of the copy of `id` that a message stored at `sequence` would repeat, if
    /// that copy is known from its `Nats-Msg-Id` alone: to be read whole before the message
    /// is taken for a repeat.
    pub fn unchecked(&self, id: Uuid, sequence: u64) -> Option<u64> {
        let first = self.first.get(&id)?;
        (first.unchecked && first.sequence != sequence).then_some(first.sequence)
    }

    /// Records what the copy stored at `sequence` turned out to be, read whole: `Some(id)`
    /// keeps it as the first copy of `id`; anything else (invalid, or another message) forgets
    /// it, so that the next copy of `id` is its first.
    pub fn checked(&mut self, id: Uuid, sequence: u64, found: Option<Uuid>) {
        let Some(first) = self.first.get_mut(&id) else {
            return;
        };
        if first.sequence != sequence {
            return;
        }
        if found == Some(id) {
            first.unchecked = false;
        } else {
            self.first.remove(&id);
        }
    }
}

/// The id of the thread's message stored at `sequence`, read whole (one request), if it may
/// be shown (`None` if it is invalid or gone).
pub async fn id_stored_at(
    messages: &dyn ThreadMessages,
    thread: Uuid,
    sequence: u64,
) -> Result<Option<Uuid>, StoreError> {
    let stored = messages.message_at(thread, sequence).await?;
    Ok(stored
        .and_then(|m| check(&m, messages.subjects()))
        .map(|shown| shown.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const THREAD: &str = "8ff637eb-e83c-11f1-84cb-7bba21cdf64d";
    const MESSAGE: &str = "9a1e0c2e-e83c-11f1-84cb-7bba21cdf64d";

    fn stored(kind: &str, event: Option<&str>, payload: serde_json::Value) -> StoredMessage {
        StoredMessage {
            sequence: 7,
            subject: format!("chat.thread.{THREAD}.{kind}"),
            event: event.map(str::to_owned),
            schema_version: Some("1".to_owned()),
            payload: Bytes::from(payload.to_string()),
        }
    }

    #[test]
    fn a_valid_message_is_shown_with_its_payload_as_the_frame() {
        let payload = serde_json::json!({
            "id": MESSAGE,
            "user": {"name": "Agent Smith"},
            "timestamp": "2026-11-24T03:22:40.123456Z",
            "body": "Hello",
            "send_by_user": false,
            "thread": THREAD,
        });
        let subjects = Subjects::default();
        let message = stored("message", Some("MessagePosted"), payload.clone());
        let shown = check(&message, &subjects).expect("a valid message");
        assert_eq!(shown.id, Uuid::try_parse(MESSAGE).unwrap());
        assert_eq!(shown.frame.as_str(), payload.to_string());
        let mismatched = stored("message", Some("ThreadCreated"), payload);
        assert!(check(&mismatched, &subjects).is_none(), "event header");
        let unreadable = StoredMessage {
            payload: Bytes::new(),
            event: None,
            ..message
        };
        assert!(
            check(&unreadable, &subjects).is_none(),
            "an unreadable copy"
        );
    }

    #[test]
    fn shown_ids_drop_repeats_and_forget_the_oldest() {
        let mut shown = ShownIds::default();
        assert!(shown.insert(Uuid::from_u128(1), 10));
        assert!(!shown.insert(Uuid::from_u128(1), 12), "a repeat");
        assert_eq!(shown.sequence_of(Uuid::from_u128(1)), Some(10));
        assert!(shown.is_first(Uuid::from_u128(1), 10));
        assert!(!shown.is_first(Uuid::from_u128(1), 12));
        for i in 2..=(REMEMBERED_MESSAGES as u128 + 1) {
            assert!(shown.insert(Uuid::from_u128(i), 100 + i as u64));
        }
        assert_eq!(shown.sequence_of(Uuid::from_u128(1)), None, "forgotten");
        assert!(shown.insert(Uuid::from_u128(1), 20_000));
    }

    #[test]
    fn an_id_learned_from_its_msg_id_counts_once_its_first_copy_is_checked() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut shown = ShownIds::default();
        shown.learn(a, 10);
        shown.learn(b, 11);
        assert_eq!(shown.unchecked(a, 10), None, "the copy itself");
        assert_eq!(shown.unchecked(a, 15), Some(10));
        shown.checked(a, 10, Some(a));
        assert_eq!(shown.unchecked(a, 15), None);
        assert!(!shown.insert(a, 15), "a repeat of a checked first copy");
        // The copy at 11 was invalid, or another message: the next copy of b is its first.
        shown.checked(b, 11, None);
        assert_eq!(shown.sequence_of(b), None);
        assert!(shown.insert(b, 16));
        assert!(shown.is_first(b, 16));
        // The stale place of b in the order does not forget its new first copy.
        for i in 3..=(REMEMBERED_MESSAGES as u128 + 1) {
            assert!(shown.insert(Uuid::from_u128(i), 100 + i as u64));
        }
        assert_eq!(shown.sequence_of(a), None, "forgotten");
        assert_eq!(shown.sequence_of(b), Some(16));
    }
}
