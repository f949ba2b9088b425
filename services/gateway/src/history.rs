//! A thread's stored messages, read back from the event stream: where a feed starts, what it
//! replays when its NATS connection comes back or it sees a sequence gap, and what a socket
//! that resumes with `since` gets first. Also the memory of which message ids a thread has
//! shown, or held when its feed started, so that a repeat stored twice (outside the stream's
//! duplicate window) shows once.

use async_nats::jetstream::{self, response::Response, ErrorCode};
use async_nats::HeaderMap;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures::StreamExt;
use proto_events::{headers, Event, EventKind, Subjects};
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use threadline_nats::existence;
use threadline_ports::StoreError;
use uuid::Uuid;

/// How many message ids of a thread a feed remembers, with their stream sequences: those of
/// the thread's latest messages when it starts, then those it shows. The window of repeats it
/// drops, and the resumes it answers without asking the stream.
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
/// them if `None`), oldest first. One request to the stream leader per message: for the few
/// messages a lookup needs whole; [`ThreadReader`] reads many. A message whose stored copy
/// cannot be read stands as an invalid one (never shown).
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

/// How long the server keeps a consumer of [`ThreadReader`] that nobody reads any more.
const READER_LINGER: Duration = Duration::from_secs(2);

/// Reads one thread's messages from the stream through short-lived consumers, a few
/// requests whatever the thread's length: each consumer is created with one request and
/// filtered on the thread's message subject; the server counts what it holds from a given
/// sequence on (`num_pending`) and pushes the messages, or only their headers, to an inbox
/// of this connection. Consumers are ephemeral, in memory, on one replica, and left for the
/// server to remove once unused ([`READER_LINGER`]): the gateway's NATS user may create
/// them, but may neither delete nor pull from any consumer (nats-server 2.9).
pub struct ThreadReader<'a> {
    pub client: &'a async_nats::Client,
    pub jetstream: &'a jetstream::Context,
    pub stream: &'a str,
    pub subject: &'a str,
    /// How long to wait for each pushed message.
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct Created {
    num_pending: u64,
    delivered: Delivered,
}

#[derive(Deserialize)]
struct Delivered {
    consumer_seq: u64,
}

#[derive(Deserialize)]
struct LastGot {
    message: LastSeq,
}

#[derive(Deserialize)]
struct LastSeq {
    seq: u64,
}

impl ThreadReader<'_> {
    /// The stream sequence of the thread's last message, 0 if it has none: one request.
    pub async fn last_sequence(&self) -> Result<u64, StoreError> {
        let response: Response<LastGot> = self
            .jetstream
            .request(
                format!("STREAM.MSG.GET.{}", self.stream),
                &json!({ "last_by_subj": self.subject }),
            )
            .await
            .map_err(StoreError::nats)?;
        match response {
            Response::Ok(got) => Ok(got.message.seq),
            Response::Err { error } if error.error_code() == ErrorCode::NO_MESSAGE_FOUND => Ok(0),
            Response::Err { error } => Err(StoreError::nats(error)),
        }
    }

    /// Creates a consumer from stream sequence `from` on; the number of the thread's
    /// messages there, and how many of them the server has pushed already. A consumer that
    /// pushes to `push_to` pushes at most `max` messages: they are never acknowledged, and
    /// the server stops at `max_ack_pending`, so that a read in batches costs each batch's
    /// messages, not the rest of the thread each time.
    async fn create(
        &self,
        from: u64,
        push_to: Option<(&str, usize)>,
        headers_only: bool,
    ) -> Result<u64, StoreError> {
        let mut config = json!({
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": from.max(1),
            "filter_subject": self.subject,
            "ack_policy": "none",
            "replay_policy": "instant",
            "headers_only": headers_only,
            "inactive_threshold": READER_LINGER.as_nanos() as u64,
            "mem_storage": true,
            "num_replicas": 1,
        });
        if let Some((inbox, max)) = push_to {
            config["deliver_subject"] = json!(inbox);
            config["ack_policy"] = json!("explicit");
            config["max_ack_pending"] = json!(i64::try_from(max.max(1)).unwrap_or(i64::MAX));
        }
        let response: Response<Created> = self
            .jetstream
            .request(
                format!("CONSUMER.CREATE.{}", self.stream),
                &json!({ "stream_name": self.stream, "config": config }),
            )
            .await
            .map_err(StoreError::nats)?;
        match response {
            Response::Ok(created) => Ok(created.num_pending + created.delivered.consumer_seq),
            Response::Err { error } => Err(StoreError::nats(error)),
        }
    }

    /// How many messages the thread holds from stream sequence `from` on: one request (a
    /// consumer that nobody reads).
    pub async fn count_from(&self, from: u64) -> Result<u64, StoreError> {
        self.create(from, None, true).await
    }

    /// The thread's messages from stream sequence `from` on, oldest first: at most `max`,
    /// none after `through`, only their headers if `headers_only` (a headers-only message
    /// has an empty payload and its size in `Nats-Msg-Size`). Two requests (subscribe, create).
    pub async fn read(
        &self,
        from: u64,
        through: Option<u64>,
        max: usize,
        headers_only: bool,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let inbox = self.client.new_inbox();
        let mut pushed = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(StoreError::nats)?;
        let held = self.create(from, Some((&inbox, max)), headers_only).await?;
        let wanted = max.min(usize::try_from(held).unwrap_or(usize::MAX));
        let mut messages = Vec::with_capacity(wanted.min(1024));
        while messages.len() < wanted {
            let message = tokio::time::timeout(self.timeout, pushed.next())
                .await
                .map_err(|_| StoreError::nats("the stream stopped pushing a thread's messages"))?
                .ok_or_else(|| StoreError::nats("the NATS connection closed"))?;
            let Some(sequence) = message.reply.as_deref().and_then(stream_sequence) else {
                continue;
            };
            if through.is_some_and(|through| sequence > through) {
                break;
            }
            messages.push(StoredMessage {
                sequence,
                subject: message.subject.to_string(),
                headers: message.headers,
                payload: message.payload,
            });
        }
        // Dropping the subscription unsubscribes: the server stops pushing and removes the
        // consumer after `READER_LINGER`.
        Ok(messages)
    }

    /// Where the thread's latest messages begin: a stream sequence from which the thread
    /// (created at stream sequence `created`) holds `least` to `most` messages, found by
    /// counting what it holds from a few stream sequences on (fewer than 2 log2(the stream's
    /// length) requests, none when the stream holds fewer than `least` messages after
    /// `created` up to `through`), and whether that is the thread's first message. Without
    /// such a sequence (messages arrive faster than the counts move), from near the top.
    pub async fn latest_from(
        &self,
        created: u64,
        through: u64,
        least: u64,
        most: u64,
    ) -> Result<(u64, bool), StoreError> {
        // Invariant: more than `most` messages from `low` on, fewer than `least` from `high`.
        let mut low = created + 1;
        let mut high = through + 1;
        if high.saturating_sub(low) <= least || self.count_from(low).await? <= most {
            return Ok((low, true));
        }
        let mut step = least;
        while high.saturating_sub(low) > 1 {
            // Down from the top in growing steps (a busy thread's latest messages are close
            // to the stream's end), then halving.
            let probe = if step > 0 {
                high.saturating_sub(step).max(low + 1)
            } else {
                low + (high - low) / 2
            };
            let count = self.count_from(probe).await?;
            if count > most {
                low = probe;
                step = 0;
            } else if count < least {
                high = probe;
                step = step.saturating_mul(2);
            } else {
                return Ok((probe, false));
            }
        }
        Ok((high.max(low), false))
    }

    /// The ids (`Nats-Msg-Id`, `None` where a message has none) and stream sequences of the
    /// thread's messages from stream sequence `from` on, oldest first, none after `through`,
    /// at most `max`: read with headers only, `batch` at a time, one consumer (one request)
    /// per batch, so that only a batch of headers is held at once.
    pub async fn ids(
        &self,
        from: u64,
        through: Option<u64>,
        batch: usize,
        max: usize,
    ) -> Result<Vec<(u64, Option<Uuid>)>, StoreError> {
        let batch = batch.max(1);
        let mut ids = Vec::new();
        let mut next = from;
        while ids.len() < max {
            let read = self
                .read(next, through, batch.min(max - ids.len()), true)
                .await?;
            let Some(last) = read.last().map(|m| m.sequence) else {
                break;
            };
            ids.extend(read.iter().map(|m| (m.sequence, message_id(m))));
            if read.len() < batch || through.is_some_and(|through| last >= through) {
                break;
            }
            next = last + 1;
        }
        Ok(ids)
    }
}

/// The stream sequence in a pushed message's reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the longer form with a domain and an account hash after `$JS.ACK`.
fn stream_sequence(reply: &str) -> Option<u64> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let index = match tokens.len() {
        9 => 5,
        n if n >= 11 => 7,
        _ => return None,
    };
    (tokens.first() == Some(&"$JS") && tokens.get(1) == Some(&"ACK"))
        .then(|| tokens.get(index)?.parse().ok())
        .flatten()
}

/// The event id a stored message carries in `Nats-Msg-Id`, if it is a UUID.
pub fn message_id(message: &StoredMessage) -> Option<Uuid> {
    let id = message
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_MESSAGE_ID)?;
    Uuid::try_parse(id.as_str()).ok()
}

/// The payload's size of a message read with headers only (`Nats-Msg-Size`).
pub fn payload_size(message: &StoredMessage) -> usize {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Size"))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(message.payload.len())
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

/// The id of the message stored at `sequence` on `subject`, read whole (one request), if it
/// may be shown (`None` if it is invalid or gone).
pub async fn id_stored_at(
    jetstream: &jetstream::Context,
    stream: &str,
    subject: &str,
    subjects: &Subjects,
    sequence: u64,
) -> Result<Option<Uuid>, StoreError> {
    let stored = stored_after(
        jetstream,
        stream,
        subject,
        sequence.saturating_sub(1),
        Some(sequence),
    )
    .await?;
    Ok(stored
        .first()
        .filter(|m| m.sequence == sequence)
        .and_then(|m| m.check(subjects))
        .map(|shown| shown.id))
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

    #[test]
    fn a_pushed_message_s_stream_sequence_is_read_from_its_reply_subject() {
        assert_eq!(
            stream_sequence("$JS.ACK.THREADLINE.abc.1.42.1.1764648000000000000.7"),
            Some(42)
        );
        assert_eq!(
            stream_sequence("$JS.ACK.hub.ACCHASH.THREADLINE.abc.1.43.1.1764648000000000000.7.r"),
            Some(43)
        );
        assert_eq!(stream_sequence("_INBOX_gateway.abc"), None);
        assert_eq!(stream_sequence("$JS.ACK.THREADLINE.abc.1.x.1.1.7"), None);
    }
}
