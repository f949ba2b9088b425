//! The one rule of a thread's existence, and reading the event stream back by subject.
//!
//! A thread exists from its first valid `ThreadCreated`: the lowest stream sequence on the
//! thread's `created` subject whose event is valid. Nothing stored on that subject later,
//! valid or not, changes who created the thread, when, or whether it exists. Only its
//! erasure ends it: a thread the stream holds a valid `ThreadErased` of does not exist, for
//! good, whatever its `created` subject holds (see [`erasures`](crate::erasures), which each
//! process knows without asking). The api (POST of
//! a message, GET), the gateway (socket upgrade, which messages a feed may show) and the live
//! projector (which messages count) ask [`JetStreamLog::thread_created_at`](crate::JetStreamLog::thread_created_at),
//! which looks the event up with [`first_valid_creation`]; `rebuild` and `verify` fold the
//! stream in order from its first event and so meet the first valid one first.

use async_nats::jetstream::{self, message::StreamMessage, response::Response, stream::RawMessage};
use proto_events::{headers, Event, Subjects};
use quick_cache::unsync::Cache;
use serde::Deserialize;
use serde_json::json;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use threadline_ports::StoreError;
use uuid::Uuid;

/// How many threads each process remembers to exist. Past it, the threads used least of late
/// are forgotten first, and threads seen once (as anonymous visitors create them by the
/// thousand) cannot push out those in use: the cache is quick_cache's, bounded and
/// scan-resistant. Threads disappear only when erased, and an erased thread is forgotten as
/// soon as its erasure is heard; a forgotten one is asked again.
pub const KNOWN_THREADS_CAPACITY: usize = 100_000;

/// How long a process remembers that a thread does not exist, for the requests of clients
/// (a POST to it, a GET, a socket): a client that asks about the same unknown thread again
/// and again costs the stream leader one lookup per this long. A thread created through
/// another replica within this long after such an answer may be reported missing by this one
/// until it has passed; what this process appends or folds itself is known at once.
pub const NOT_FOUND_MEMORY: Duration = Duration::from_secs(2);

/// How many threads found missing each process remembers; past it, the oldest are forgotten
/// first (and asked about again).
pub const MISSING_THREADS_CAPACITY: usize = 10_000;

/// A valid `ThreadCreated` of a thread that this process knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Its stream sequence.
    pub sequence: u64,
    /// Whether it is known to be the first valid one (it was looked up), rather than one that
    /// was seen (appended or folded here) and may have had a valid one before it.
    pub first: bool,
}

/// The threads this process knows to exist, the most used of late of them.
pub struct KnownThreads {
    known: Mutex<Cache<Uuid, Known>>,
}

impl Default for KnownThreads {
    fn default() -> Self {
        Self::with_capacity(KNOWN_THREADS_CAPACITY)
    }
}

impl KnownThreads {
    /// Remembers at most `capacity` threads.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            known: Mutex::new(Cache::new(capacity)),
        }
    }

    pub fn get(&self, thread: Uuid) -> Option<Known> {
        self.lock().get(&thread).copied()
    }

    /// How many threads it remembers.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes a valid `ThreadCreated` of `thread` at `sequence`, which may not be the first.
    pub fn seen(&self, thread: Uuid, sequence: u64) {
        let mut known = self.lock();
        if known.peek(&thread).is_some_and(|k| k.sequence <= sequence) {
            return;
        }
        known.insert(
            thread,
            Known {
                sequence,
                first: false,
            },
        );
    }

    /// Forgets `thread`: it was erased.
    pub fn forget(&self, thread: Uuid) {
        self.lock().remove(&thread);
    }

    /// Notes the first valid `ThreadCreated` of `thread`, as the stream answered.
    pub fn first(&self, thread: Uuid, sequence: u64) {
        self.lock().insert(
            thread,
            Known {
                sequence,
                first: true,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache<Uuid, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The threads this process found missing a moment ago ([`NOT_FOUND_MEMORY`]), with when.
pub struct MissingThreads {
    missing: Mutex<Cache<Uuid, Instant>>,
    memory: Duration,
}

impl Default for MissingThreads {
    fn default() -> Self {
        Self::new(MISSING_THREADS_CAPACITY, NOT_FOUND_MEMORY)
    }
}

impl MissingThreads {
    /// Remembers at most `capacity` threads, each for `memory`.
    pub fn new(capacity: usize, memory: Duration) -> Self {
        Self {
            missing: Mutex::new(Cache::new(capacity)),
            memory,
        }
    }

    /// Notes that the log held no valid `ThreadCreated` of `thread` when it was asked at
    /// `asked`.
    pub fn missing(&self, thread: Uuid, asked: Instant) {
        self.lock().insert(thread, asked);
    }

    /// Whether `thread` was found missing less than the memory's length before `now`.
    pub fn recently(&self, thread: Uuid, now: Instant) -> bool {
        let mut missing = self.lock();
        match missing.peek(&thread) {
            Some(asked) if now.saturating_duration_since(*asked) < self.memory => true,
            Some(_) => {
                missing.remove(&thread);
                false
            }
            None => false,
        }
    }

    /// Forgets that `thread` was missing: it exists now.
    pub fn found(&self, thread: Uuid) {
        self.lock().remove(&thread);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache<Uuid, Instant>> {
        self.missing.lock().unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn threads_in_use_stay_known_while_many_others_come_and_go() {
        let known = KnownThreads::with_capacity(1_000);
        let in_use = Uuid::from_u128(1);
        known.first(in_use, 1);
        for n in 0..10_000u128 {
            // One-off threads, as anonymous visitors create them, between reads of one in use.
            known.seen(Uuid::from_u128(1_000_000 + n), 2 + n as u64);
            assert!(known.len() <= 1_000, "{} threads kept", known.len());
            assert_eq!(
                known.get(in_use),
                Some(Known {
                    sequence: 1,
                    first: true
                }),
                "after {n} others"
            );
        }
    }

    #[test]
    fn a_missing_thread_is_remembered_for_a_moment() {
        let missing = MissingThreads::new(2, Duration::from_secs(2));
        let (thread, asked) = (Uuid::from_u128(1), Instant::now());
        assert!(!missing.recently(thread, asked));
        missing.missing(thread, asked);
        assert!(missing.recently(thread, asked + Duration::from_secs(1)));
        assert!(!missing.recently(thread, asked + Duration::from_secs(2)));
        // Forgotten once out of date: asked about again from then on.
        assert!(!missing.recently(thread, asked));

        missing.missing(thread, asked);
        missing.found(thread);
        assert!(!missing.recently(thread, asked));

        // Bounded: past its capacity, some are forgotten.
        for n in 0..100 {
            missing.missing(Uuid::from_u128(10 + n), asked);
        }
        assert!(missing.lock().len() <= 2);
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
