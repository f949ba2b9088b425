//! The one rule of a thread's existence, and reading the event stream back by subject.
//!
//! A thread exists from its first valid `ThreadCreated`: the lowest stream sequence on the
//! thread's `created` subject whose event is valid. Nothing stored on that subject later,
//! valid or not, changes who created the thread, when, or whether it exists. The api (POST of
//! a message, GET), the gateway (socket upgrade, which messages a feed may show) and the live
//! projector (which messages count) ask [`JetStreamLog::thread_created_at`](crate::JetStreamLog::thread_created_at),
//! which looks the event up with [`first_valid_creation`]; `rebuild` and `verify` fold the
//! stream in order from its first event and so meet the first valid one first.

use crate::StoreError;
use async_nats::jetstream::{self, message::StreamMessage, response::Response, stream::RawMessage};
use proto_events::{headers, Event, Subjects};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

/// How many threads each process remembers; past this bound the memory is cleared and
/// refilled. Threads never disappear, so a remembered answer is never wrong.
const KNOWN_THREADS_CAPACITY: usize = 100_000;

/// A valid `ThreadCreated` of a thread that this process knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Its stream sequence.
    pub sequence: u64,
    /// Whether it is known to be the first valid one (it was looked up), rather than one that
    /// was seen (appended or folded here) and may have had a valid one before it.
    pub first: bool,
}

/// The threads this process knows to exist.
#[derive(Default)]
pub struct KnownThreads {
    known: Mutex<HashMap<Uuid, Known>>,
}

impl KnownThreads {
    pub fn get(&self, thread: Uuid) -> Option<Known> {
        self.lock().get(&thread).copied()
    }

    /// Notes a valid `ThreadCreated` of `thread` at `sequence`, which may not be the first.
    pub fn seen(&self, thread: Uuid, sequence: u64) {
        let mut known = self.lock();
        Self::bound(&mut known);
        known
            .entry(thread)
            .and_modify(|k| {
                if sequence < k.sequence {
                    *k = Known {
                        sequence,
                        first: false,
                    };
                }
            })
            .or_insert(Known {
                sequence,
                first: false,
            });
    }

    /// Notes the first valid `ThreadCreated` of `thread`, as the stream answered.
    pub fn first(&self, thread: Uuid, sequence: u64) {
        let mut known = self.lock();
        Self::bound(&mut known);
        known.insert(
            thread,
            Known {
                sequence,
                first: true,
            },
        );
    }

    fn bound(known: &mut HashMap<Uuid, Known>) {
        if known.len() >= KNOWN_THREADS_CAPACITY {
            known.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One event read back from the stream by its subject.
pub struct Stored {
    pub sequence: u64,
    /// `None` if the server's copy cannot be read (headers or payload that do not decode):
    /// such an event is invalid for every reader.
    pub message: Option<StreamMessage>,
}

#[derive(Deserialize)]
struct Got {
    message: RawMessage,
}

/// The first event stored on `subject` at stream sequence `from` or later, if any. Asked of
/// the stream's leader (`STREAM.MSG.GET` with `seq` and `next_by_subj`, nats-server 2.9), not
/// a direct get, which any replica may answer from behind: what one api replica just stored,
/// every other sees at once.
pub async fn next_on_subject(
    jetstream: &jetstream::Context,
    stream: &str,
    subject: &str,
    from: u64,
) -> Result<Option<Stored>, StoreError> {
    let response: Response<Got> = jetstream
        .request(
            format!("STREAM.MSG.GET.{stream}"),
            &json!({ "seq": from.max(1), "next_by_subj": subject }),
        )
        .await
        .map_err(StoreError::nats)?;
    let raw = match response {
        Response::Ok(got) => got.message,
        Response::Err { error } if error.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND => {
            return Ok(None)
        }
        Response::Err { error } => return Err(StoreError::nats(error)),
    };
    let sequence = raw.sequence;
    let message = StreamMessage::try_from(raw)
        .inspect_err(|e| tracing::warn!(subject, sequence, "an unreadable event: {e}"))
        .ok();
    Ok(Some(Stored { sequence, message }))
}

/// The stream sequence of the thread's first valid `ThreadCreated`, if the stream holds one:
/// walks the thread's `created` subject from its first event, past invalid ones. One request
/// per event on that subject up to the first valid one, which is normally the first.
pub async fn first_valid_creation(
    jetstream: &jetstream::Context,
    stream: &str,
    subjects: &Subjects,
    thread: Uuid,
) -> Result<Option<u64>, StoreError> {
    let subject = subjects.thread_created(thread);
    let mut from = 1;
    while let Some(stored) = next_on_subject(jetstream, stream, &subject, from).await? {
        if stored
            .message
            .as_ref()
            .is_some_and(|m| is_valid_creation(subjects, m))
        {
            return Ok(Some(stored.sequence));
        }
        tracing::debug!(%thread, sequence = stored.sequence, "passing over an invalid ThreadCreated");
        from = stored.sequence + 1;
    }
    Ok(None)
}

/// Whether a stored event is a valid `ThreadCreated` for the subject it is on.
pub fn is_valid_creation(subjects: &Subjects, message: &StreamMessage) -> bool {
    let header = |name: &str| message.headers.get(name).map(|v| v.as_str());
    matches!(
        Event::decode(
            subjects,
            message.subject.as_str(),
            header(headers::EVENT),
            header(headers::SCHEMA_VERSION),
            &message.payload,
        ),
        Ok(Event::ThreadCreated(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_looked_up_first_creation_is_not_replaced_by_a_later_one_seen() {
        let known = KnownThreads::default();
        let thread = Uuid::from_u128(1);
        known.first(thread, 5);
        known.seen(thread, 9);
        assert_eq!(
            known.get(thread),
            Some(Known {
                sequence: 5,
                first: true
            })
        );
    }

    #[test]
    fn a_creation_seen_is_not_taken_for_the_first() {
        let known = KnownThreads::default();
        let thread = Uuid::from_u128(2);
        known.seen(thread, 9);
        assert_eq!(
            known.get(thread),
            Some(Known {
                sequence: 9,
                first: false
            })
        );
        known.seen(thread, 7);
        assert_eq!(known.get(thread).map(|k| k.sequence), Some(7));
        known.first(thread, 3);
        assert_eq!(
            known.get(thread),
            Some(Known {
                sequence: 3,
                first: true
            })
        );
        assert_eq!(known.get(Uuid::from_u128(3)), None);
    }

    fn stored(subject: &str, payload: &str) -> StreamMessage {
        StreamMessage {
            subject: subject.into(),
            sequence: 1,
            headers: async_nats::HeaderMap::new(),
            payload: bytes::Bytes::from(payload.to_owned()),
            time: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn only_a_valid_thread_created_on_its_own_subject_counts() {
        let subjects = Subjects::default();
        let thread = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";
        let subject = format!("chat.thread.{thread}.created");
        let valid =
            format!(r#"{{"id":"{thread}","user":"u","timestamp":"2026-11-24T03:22:40.123456Z"}}"#);
        assert!(is_valid_creation(&subjects, &stored(&subject, &valid)));
        assert!(!is_valid_creation(&subjects, &stored(&subject, "garbage")));
        let other = "5b0e1d4a-c9a6-11ee-8c90-0242ac120002";
        assert!(!is_valid_creation(
            &subjects,
            &stored(&format!("chat.thread.{other}.created"), &valid)
        ));
    }
}
