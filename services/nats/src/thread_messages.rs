//! A thread's messages read from the event stream, for the gateway ([`ThreadMessages`]): live
//! from the subject where the NATS server republishes each stored message with its stream
//! sequence and the thread's previous one (`Nats-Sequence`, `Nats-Last-Sequence`), and read
//! back through direct gets and short-lived consumers.

use crate::existence;
use crate::JetStreamLog;
use async_nats::header::{self, HeaderMap, HeaderName};
use async_nats::jetstream::{self, response::Response, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use proto_events::{headers, Subjects};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use threadline_ports::{LiveMessage, LiveMessages, StoreError, StoredMessage, ThreadMessages};
use tokio::sync::watch;
use uuid::Uuid;

#[async_trait]
impl ThreadMessages for JetStreamLog {
    fn subjects(&self) -> &Subjects {
        JetStreamLog::subjects(self)
    }

    fn request_timeout(&self) -> Duration {
        self.settings().nats_timeout
    }

    fn connections(&self) -> watch::Receiver<u64> {
        JetStreamLog::connections(self)
    }

    async fn thread_created_at(&self, thread: Uuid) -> Result<Option<u64>, StoreError> {
        JetStreamLog::thread_created_at(self, thread).await
    }

    async fn subscribe(&self, thread: Uuid) -> Result<LiveMessages, StoreError> {
        let subscriber = self
            .client()
            .subscribe(self.subjects().stored_messages(thread))
            .await
            .map_err(StoreError::nats)?;
        Ok(subscriber
            .filter_map(|message| std::future::ready(republished(message)))
            .boxed())
    }

    async fn last_sequence(&self, thread: Uuid) -> Result<u64, StoreError> {
        let subject = self.subjects().message_posted(thread);
        self.reader(&subject).last_sequence().await
    }

    async fn messages(
        &self,
        thread: Uuid,
        from: u64,
        through: Option<u64>,
        max: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let subject = self.subjects().message_posted(thread);
        let read = self
            .reader(&subject)
            .read(from, through, max, false)
            .await?;
        Ok(read
            .into_iter()
            .map(|(sequence, message)| stored(sequence, message.subject.to_string(), message))
            .collect())
    }

    async fn sizes(
        &self,
        thread: Uuid,
        from: u64,
        through: Option<u64>,
        max: usize,
    ) -> Result<Vec<usize>, StoreError> {
        let subject = self.subjects().message_posted(thread);
        let read = self.reader(&subject).read(from, through, max, true).await?;
        Ok(read
            .iter()
            .map(|(_, message)| payload_size(message))
            .collect())
    }

    async fn latest_from(
        &self,
        thread: Uuid,
        created: u64,
        through: u64,
        least: u64,
        most: u64,
    ) -> Result<(u64, bool), StoreError> {
        let subject = self.subjects().message_posted(thread);
        let reader = self.reader(&subject);
        reader.latest_from(created, through, least, most).await
    }

    async fn ids(
        &self,
        thread: Uuid,
        from: u64,
        through: Option<u64>,
        batch: usize,
        max: usize,
    ) -> Result<Vec<(u64, Option<Uuid>)>, StoreError> {
        let subject = self.subjects().message_posted(thread);
        self.reader(&subject).ids(from, through, batch, max).await
    }

    async fn message_at(
        &self,
        thread: Uuid,
        sequence: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let subject = self.subjects().message_posted(thread);
        let stream = &self.settings().stream_name;
        let next = existence::next_on_subject(self.jetstream(), stream, &subject, sequence).await?;
        Ok(match next {
            Some(found) if found.sequence == sequence => Some(match found.message {
                Some(message) => StoredMessage {
                    sequence,
                    subject: message.subject.to_string(),
                    event: header_text(&message.headers, EVENT),
                    schema_version: header_text(&message.headers, SCHEMA_VERSION),
                    payload: message.payload,
                },
                // A copy that cannot be read stands as an invalid message.
                None => StoredMessage {
                    sequence,
                    subject,
                    event: None,
                    schema_version: None,
                    payload: Bytes::new(),
                },
            }),
            _ => None,
        })
    }
}

impl JetStreamLog {
    fn reader<'a>(&'a self, subject: &'a str) -> ThreadReader<'a> {
        ThreadReader {
            client: self.client(),
            jetstream: self.jetstream(),
            stream: &self.settings().stream_name,
            subject,
            timeout: self.settings().nats_timeout,
        }
    }
}

/// The headers a reader checks, named without allocating.
const EVENT: HeaderName = HeaderName::from_static(headers::EVENT);
const SCHEMA_VERSION: HeaderName = HeaderName::from_static(headers::SCHEMA_VERSION);

/// A message that the stream republished once stored, in the reader's terms; `None` (and a
/// warning) for one that it did not republish. Takes of its headers only the few a reader
/// checks.
fn republished(message: async_nats::Message) -> Option<LiveMessage> {
    let value = |name: HeaderName| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    };
    let sequence = value(header::NATS_SEQUENCE).and_then(|v| v.parse::<u64>().ok());
    let previous = value(header::NATS_LAST_SEQUENCE).and_then(|v| v.parse::<u64>().ok());
    let (Some(sequence), Some(previous), Some(subject)) =
        (sequence, previous, value(header::NATS_SUBJECT))
    else {
        tracing::warn!(subject = %message.subject, "ignoring a message that the stream did not republish");
        return None;
    };
    let subject = subject.to_owned();
    Some(LiveMessage {
        previous,
        message: stored(sequence, subject, message),
    })
}

/// A stored message read from the stream, with `subject` the one it was published on.
fn stored(sequence: u64, subject: String, message: async_nats::Message) -> StoredMessage {
    let (event, schema_version) = match &message.headers {
        Some(h) => (header_text(h, EVENT), header_text(h, SCHEMA_VERSION)),
        None => (None, None),
    };
    StoredMessage {
        sequence,
        subject,
        event,
        schema_version,
        payload: message.payload,
    }
}

fn header_text(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_owned())
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
struct ThreadReader<'a> {
    client: &'a async_nats::Client,
    jetstream: &'a jetstream::Context,
    stream: &'a str,
    subject: &'a str,
    /// How long to wait for each pushed message.
    timeout: Duration,
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
    async fn last_sequence(&self) -> Result<u64, StoreError> {
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
    async fn count_from(&self, from: u64) -> Result<u64, StoreError> {
        self.create(from, None, true).await
    }

    /// The thread's messages from stream sequence `from` on, oldest first, each with its
    /// stream sequence: at most `max`, none after `through`, only their headers if
    /// `headers_only` (a headers-only message has an empty payload and its size in
    /// `Nats-Msg-Size`). Two requests (subscribe, create).
    async fn read(
        &self,
        from: u64,
        through: Option<u64>,
        max: usize,
        headers_only: bool,
    ) -> Result<Vec<(u64, async_nats::Message)>, StoreError> {
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
            messages.push((sequence, message));
        }
        // Dropping the subscription unsubscribes: the server stops pushing and removes the
        // consumer after `READER_LINGER`.
        Ok(messages)
    }

    /// See [`ThreadMessages::latest_from`]: found by counting what the thread holds from a
    /// few stream sequences on.
    async fn latest_from(
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

    /// See [`ThreadMessages::ids`]: one consumer (one request) per batch.
    async fn ids(
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
            let Some(last) = read.last().map(|(sequence, _)| *sequence) else {
                break;
            };
            ids.extend(read.iter().map(|(at, m)| (*at, message_id(m))));
            if read.len() < batch || through.is_some_and(|through| last >= through) {
                break;
            }
            next = last + 1;
        }
        Ok(ids)
    }
}

/// The stream sequence in a pushed message's reply subject (see [`Pushed`]).
fn stream_sequence(reply: &str) -> Option<u64> {
    Pushed::parse(reply).map(|pushed| pushed.stream)
}

/// What a message pushed by a consumer says of itself in its reply subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the longer form with a domain and an account hash after `$JS.ACK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Its stream sequence.
    pub stream: u64,
    /// Its sequence among the messages the consumer delivered.
    pub consumer: u64,
    /// How many messages the consumer holds for delivery after it.
    pub pending: u64,
}

impl Pushed {
    pub(crate) fn parse(reply: &str) -> Option<Pushed> {
        let tokens: Vec<&str> = reply.split('.').collect();
        let first = match tokens.len() {
            9 => 5,
            n if n >= 11 => 7,
            _ => return None,
        };
        if tokens.first() != Some(&"$JS") || tokens.get(1) != Some(&"ACK") {
            return None;
        }
        let number = |at: usize| tokens.get(at)?.parse().ok();
        Some(Pushed {
            stream: number(first)?,
            consumer: number(first + 1)?,
            pending: number(first + 3)?,
        })
    }
}

/// The event id a stored message carries in `Nats-Msg-Id`, if it is a UUID.
fn message_id(message: &async_nats::Message) -> Option<Uuid> {
    let id = message.headers.as_ref()?.get(header::NATS_MESSAGE_ID)?;
    Uuid::try_parse(id.as_str()).ok()
}

/// The payload's size of a message read with headers only (`Nats-Msg-Size`).
fn payload_size(message: &async_nats::Message) -> usize {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Size"))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(message.payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            Pushed::parse("$JS.ACK.THREADLINE.abc.1.42.3.1764648000000000000.7"),
            Some(Pushed {
                stream: 42,
                consumer: 3,
                pending: 7
            })
        );
        assert_eq!(
            Pushed::parse("$JS.ACK.hub.ACCHASH.THREADLINE.abc.1.43.4.1764648000000000000.0.r"),
            Some(Pushed {
                stream: 43,
                consumer: 4,
                pending: 0
            })
        );
    }

    fn republish(headers: &[(&str, &str)]) -> async_nats::Message {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            // As the client reads them off the wire.
            let name: HeaderName = name.parse().expect("a header name");
            map.insert(name, *value);
        }
        async_nats::Message {
            subject: "chat.stored.t.message".into(),
            reply: None,
            payload: Bytes::from_static(b"{}"),
            headers: Some(map),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_republished_message_carries_its_sequences_subject_and_event_headers() {
        let live = republished(republish(&[
            ("Nats-Sequence", "12"),
            ("Nats-Last-Sequence", "9"),
            ("Nats-Subject", "chat.thread.t.message"),
            (headers::EVENT, "MessagePosted"),
            (headers::SCHEMA_VERSION, "1"),
        ]))
        .expect("republished");
        assert_eq!(live.previous, 9);
        assert_eq!(live.message.sequence, 12);
        assert_eq!(live.message.subject, "chat.thread.t.message");
        assert_eq!(live.message.event.as_deref(), Some("MessagePosted"));
        assert_eq!(live.message.schema_version.as_deref(), Some("1"));
        assert_eq!(&live.message.payload[..], b"{}");
    }

    #[test]
    fn a_message_the_stream_did_not_republish_is_ignored() {
        assert!(republished(republish(&[("Nats-Sequence", "12")])).is_none());
        assert!(republished(republish(&[
            ("Nats-Sequence", "x"),
            ("Nats-Last-Sequence", "9"),
            ("Nats-Subject", "chat.thread.t.message"),
        ]))
        .is_none());
    }
}
