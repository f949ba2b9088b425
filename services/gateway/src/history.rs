//! A thread's stored messages, read back from the event stream: what a feed replays when it
//! starts, when its NATS connection comes back, when it sees a sequence gap, and what a socket
//! that resumes with `since` gets first. Also the memory of which message ids a thread has
//! shown, so that a repeat stored twice (outside the stream's duplicate window) shows once.

use async_nats::jetstream;
use async_nats::HeaderMap;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use proto_events::{headers, Event, EventKind, Subjects};
use std::collections::{HashMap, VecDeque};
use threadline_infra::{existence, StoreError};
use uuid::Uuid;

/// How many message ids of a thread a feed remembers, with their stream sequences: the window
/// of repeats it drops, and how far back a socket can resume.
pub const REMEMBERED_MESSAGES: usize = 10_000;

/// One `MessagePosted` event as the stream stored it.
pub struct StoredMessage {
    pub sequence: u64,
    /// The subject it was published on (`<prefix>.thread.<id>.message`).
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// A message checked for showing: its id and the frame a socket gets.
pub struct Shown {
    pub id: Uuid,
    pub frame: Utf8Bytes,
}

impl StoredMessage {
    /// The message's id and frame, or `None` if the event is invalid (it is never shown; the
    /// projector sets it aside).
    pub fn check(&self, subjects: &Subjects) -> Option<Shown> {
        let header = |name: &str| {
            self.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        match Event::decode(
            subjects,
            &self.subject,
            header(headers::EVENT),
            header(headers::SCHEMA_VERSION),
            &self.payload,
        ) {
            Ok(event) if event.kind() == EventKind::MessagePosted => {
                // A payload that decoded as JSON is valid UTF-8.
                let frame = Utf8Bytes::try_from(self.payload.clone()).ok()?;
                Some(Shown {
                    id: event.id(),
                    frame,
                })
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(subject = %self.subject, sequence = self.sequence, "not pushing an invalid event: {e}");
                None
            }
        }
    }
}

/// The messages stored on `subject` after stream sequence `after`, up to `through` (all of
/// them if `None`), oldest first. One request to the stream leader per message: a support
/// thread holds tens of messages, and only what a reader missed is read. A message whose
/// stored copy cannot be read stands as an invalid one (never shown).
pub async fn stored_after(
    jetstream: &jetstream::Context,
    stream: &str,
    subject: &str,
    after: u64,
    through: Option<u64>,
) -> Result<Vec<StoredMessage>, StoreError> {
    let mut messages = Vec::new();
    let mut next = after + 1;
    loop {
        if through.is_some_and(|through| next > through) {
            return Ok(messages);
        }
        let Some(stored) = existence::next_on_subject(jetstream, stream, subject, next).await?
        else {
            return Ok(messages);
        };
        if through.is_some_and(|through| stored.sequence > through) {
            return Ok(messages);
        }
        next = stored.sequence + 1;
        messages.push(match stored.message {
            Some(message) => StoredMessage {
                sequence: stored.sequence,
                subject: message.subject.to_string(),
                headers: Some(message.headers),
                payload: message.payload,
            },
            None => StoredMessage {
                sequence: stored.sequence,
                subject: subject.to_owned(),
                headers: None,
                payload: Bytes::new(),
            },
        });
    }
}

/// The ids a thread has shown, each with the stream sequence it was first stored at; the
/// oldest are forgotten past [`REMEMBERED_MESSAGES`].
#[derive(Default)]
pub struct ShownIds {
    first: HashMap<Uuid, u64>,
    order: VecDeque<Uuid>,
}

impl ShownIds {
    /// Remembers a message stored at `sequence`; false if its id was shown before (a repeat).
    pub fn insert(&mut self, id: Uuid, sequence: u64) -> bool {
        if self.first.contains_key(&id) {
            return false;
        }
        self.first.insert(id, sequence);
        self.order.push_back(id);
        if self.order.len() > REMEMBERED_MESSAGES {
            if let Some(old) = self.order.pop_front() {
                self.first.remove(&old);
            }
        }
        true
    }

    /// The sequence at which a remembered message was first stored.
    pub fn sequence_of(&self, id: Uuid) -> Option<u64> {
        self.first.get(&id).copied()
    }

    /// Whether the message stored at `sequence` is the first copy of `id` (not a repeat).
    pub fn is_first(&self, id: Uuid, sequence: u64) -> bool {
        !matches!(self.first.get(&id), Some(first) if *first != sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
