//! The threads erased from the log (`threadline erase`), as a process knows them.
//!
//! A valid `ThreadErased` on a thread's `erased` subject ends the thread for good: from then
//! on it does not exist for the api, the gateway or the projector, whatever else the stream
//! holds of it (a `ThreadCreated` published again later included), and none of its events
//! counts. Each process that serves clients or folds events follows the stream's `erased`
//! subjects ([`Subjects::erasures`]) from the stream's first event: it reads every erasure
//! stored so far before it serves ([`JetStreamLog::follow_erasures`]), then each one as it
//! is stored. So it knows every erased thread, with no request per lookup: the existence
//! check answers "no" for an erased thread at once, and a lookup that was in flight while the
//! thread was erased is not remembered as a "yes".
//!
//! The erasures are pushed by an ephemeral consumer filtered on those subjects, to an inbox
//! of the process's own connection, with idle heartbeats and nothing acknowledged (the
//! gateway's NATS user may create such a consumer, nothing more). Should the consumer skip
//! (a gap in its delivery sequence), fall silent (no heartbeat for [`SILENCE`]), or the
//! connection come back, a new one reads on from the last erasure read; the old one is left
//! for the server to remove ([`LINGER`]). Each erasure heard is told to whoever listens
//! ([`Erasures::subscribe`]): the api drops the thread from memory, the gateway closes its
//! sockets.
//!
//! What it costs: the ids of every erased thread, kept in memory by every such process (about
//! 50 bytes each: a million erasures take some 50 MB) and read at its start; nothing per
//! request.

use crate::thread_messages::Pushed;
use crate::JetStreamLog;
use async_nats::header::HeaderName;
use async_nats::jetstream::response::Response;
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt;
use proto_events::{headers, Event, Subjects};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use threadline_ports::{report, StoreError};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the consumer that pushes the erasures says it is alive when it has nothing to
/// push.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a follower waits without a message or a heartbeat before it takes its consumer
/// for gone and reads on with a new one.
pub const SILENCE: Duration = Duration::from_secs(6);

/// How long the server keeps a consumer whose inbox nobody listens on any more.
const LINGER: Duration = Duration::from_secs(10);

/// How long a follower waits before it tries again to read on.
const RETRY: Duration = Duration::from_secs(1);

/// How many erasures heard wait for a slow listener before it lags (and must check every
/// thread it holds).
const HEARD_QUEUE: usize = 1024;

/// The threads this process knows to be erased, and who listens for new ones.
pub struct Erasures {
    threads: Mutex<HashSet<Uuid>>,
    heard: broadcast::Sender<Uuid>,
}

impl Default for Erasures {
    fn default() -> Self {
        Self {
            threads: Mutex::new(HashSet::new()),
            heard: broadcast::channel(HEARD_QUEUE).0,
        }
    }
}

impl Erasures {
    /// Whether `thread` is known to be erased.
    pub fn contains(&self, thread: Uuid) -> bool {
        self.lock().contains(&thread)
    }

    /// How many erased threads are known.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Notes that `thread` was erased, and tells the listeners if it is news; whether it is.
    pub fn insert(&self, thread: Uuid) -> bool {
        let new = self.lock().insert(thread);
        if new {
            // An error only means nobody listens.
            let _ = self.heard.send(thread);
        }
        new
    }

    /// Every thread noted as erased from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.heard.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The erased thread a stored event names, if it is a valid `ThreadErased`.
pub fn erased_thread(
    subjects: &Subjects,
    subject: &str,
    event_header: Option<&str>,
    version_header: Option<&str>,
    payload: &[u8],
) -> Option<Uuid> {
    match Event::decode(subjects, subject, event_header, version_header, payload) {
        Ok(Event::ThreadErased(erased)) => Some(erased.thread),
        _ => None,
    }
}

/// Every thread the stream holds a valid `ThreadErased` of now (read to the stream's end as
/// of the call, then left): what `rebuild`, `verify` and `erase` need.
pub async fn read_all(log: &JetStreamLog) -> Result<HashSet<Uuid>, StoreError> {
    let mut reader = Reader::open(log, 1).await?;
    let mut erased = HashSet::new();
    while !reader.caught_up {
        match reader.next().await.map_err(StoreError::nats)? {
            Read::Erasure(Some(thread)) => {
                erased.insert(thread);
            }
            Read::Erasure(None) | Read::Heartbeat => {}
        }
    }
    Ok(erased)
}

/// Reads every erasure stored so far into `log`'s, then follows new ones on a task of its own
/// until `shutdown` fires. See the module's documentation.
pub(crate) async fn follow(
    log: Arc<JetStreamLog>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut reader = Reader::open(&log, 1).await?;
    while !reader.caught_up {
        if let Read::Erasure(Some(thread)) = reader.next().await.map_err(StoreError::nats)? {
            log.erasure_heard(thread);
        }
    }
    tracing::debug!(
        erased = log.known_erasures().len(),
        "read the threads erased"
    );
    tokio::spawn(live(log, reader, shutdown));
    Ok(())
}

/// Follows the erasures as they are stored, reading on with a new consumer whenever the one
/// in use may have missed some.
async fn live(log: Arc<JetStreamLog>, mut reader: Reader, shutdown: CancellationToken) {
    let mut connections = log.connections();
    connections.mark_unchanged();
    loop {
        let trouble = tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = connections.changed() => match changed {
                Ok(()) => "the NATS connection came back".to_owned(),
                Err(_) => return,
            },
            read = reader.next() => match read {
                Ok(Read::Erasure(Some(thread))) => {
                    log.erasure_heard(thread);
                    continue;
                }
                Ok(Read::Erasure(None) | Read::Heartbeat) => continue,
                Err(why) => why,
            },
        };
        tracing::info!(
            "reading the erasures on from sequence {}: {trouble}",
            reader.last + 1
        );
        reader = loop {
            match Reader::open(&log, reader.last + 1).await {
                Ok(next) => break next,
                Err(e) => {
                    tracing::warn!("cannot read the erasures yet: {}", report(&e));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        };
    }
}

/// What a [`Reader`] got next.
enum Read {
    /// An event stored on an `erased` subject: the thread, if it is a valid `ThreadErased`.
    Erasure(Option<Uuid>),
    /// The consumer is alive and has delivered everything it had.
    Heartbeat,
}

#[derive(Deserialize)]
struct Created {
    num_pending: u64,
}

/// The erasures pushed by one ephemeral consumer, in stream order.
struct Reader {
    pushed: Subscriber,
    subjects: Subjects,
    /// The stream sequence of the last event read (or of the one before the first to read).
    last: u64,
    /// The consumer's delivery sequence of the last event read.
    delivered: u64,
    /// Whether every erasure stored when the consumer was created has been read.
    caught_up: bool,
}

/// The headers a reader checks, named without allocating.
const EVENT: HeaderName = HeaderName::from_static(headers::EVENT);
const SCHEMA_VERSION: HeaderName = HeaderName::from_static(headers::SCHEMA_VERSION);
const LAST_CONSUMER: HeaderName = HeaderName::from_static("Nats-Last-Consumer");

impl Reader {
    /// Subscribes to a fresh inbox, then creates a consumer that pushes there every event on
    /// an `erased` subject from stream sequence `from` on: two requests.
    async fn open(log: &JetStreamLog, from: u64) -> Result<Reader, StoreError> {
        let stream = &log.settings().stream_name;
        let inbox = log.client().new_inbox();
        let pushed = log
            .client()
            .subscribe(inbox.clone())
            .await
            .map_err(StoreError::nats)?;
        let config = json!({
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": from.max(1),
            "filter_subject": log.subjects().erasures(),
            "ack_policy": "none",
            "replay_policy": "instant",
            "deliver_subject": inbox,
            "idle_heartbeat": HEARTBEAT.as_nanos() as u64,
            "inactive_threshold": LINGER.as_nanos() as u64,
            "mem_storage": true,
            "num_replicas": 1,
        });
        let response: Response<Created> = log
            .jetstream()
            .request(
                format!("CONSUMER.CREATE.{stream}"),
                &json!({ "stream_name": stream, "config": config }),
            )
            .await
            .map_err(|e| StoreError::nats(format!("cannot follow the erasures: {e}")))?;
        let created = match response {
            Response::Ok(created) => created,
            Response::Err { error } => {
                return Err(StoreError::nats(format!(
                    "cannot follow the erasures: {error}"
                )))
            }
        };
        Ok(Reader {
            pushed,
            subjects: log.subjects().clone(),
            last: from.max(1) - 1,
            delivered: 0,
            caught_up: created.num_pending == 0,
        })
    }

    /// The next event or heartbeat; an error (in words) when the consumer may have skipped
    /// some or fell silent: read on with a new one.
    async fn next(&mut self) -> Result<Read, String> {
        let message = tokio::time::timeout(SILENCE, self.pushed.next())
            .await
            .map_err(|_| format!("no heartbeat for {SILENCE:?}"))?
            .ok_or_else(|| "the subscription ended".to_owned())?;
        let header = |name: HeaderName| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        if message.status == Some(StatusCode::IDLE_HEARTBEAT) {
            // The consumer's last delivery, which this reader must have had.
            let last = header(LAST_CONSUMER).and_then(|v| v.parse::<u64>().ok());
            if last.is_some_and(|last| last > self.delivered) {
                return Err(format!(
                    "the consumer delivered {} events, this reader read {}",
                    last.unwrap_or_default(),
                    self.delivered
                ));
            }
            self.caught_up = true;
            return Ok(Read::Heartbeat);
        }
        let pushed = message
            .reply
            .as_deref()
            .and_then(Pushed::parse)
            .ok_or_else(|| format!("a message without its sequences on {}", message.subject))?;
        if pushed.consumer != self.delivered + 1 {
            return Err(format!(
                "delivery {} came after {}",
                pushed.consumer, self.delivered
            ));
        }
        self.delivered = pushed.consumer;
        self.last = pushed.stream;
        self.caught_up |= pushed.pending == 0;
        Ok(Read::Erasure(erased_thread(
            &self.subjects,
            message.subject.as_str(),
            header(EVENT),
            header(SCHEMA_VERSION),
            &message.payload,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_erasure_is_told_once() {
        let erasures = Erasures::default();
        let mut heard = erasures.subscribe();
        let thread = Uuid::from_u128(1);
        assert!(!erasures.contains(thread));
        assert!(erasures.insert(thread));
        assert!(!erasures.insert(thread));
        assert!(erasures.contains(thread));
        assert_eq!(heard.try_recv(), Ok(thread));
        assert!(heard.try_recv().is_err(), "told twice");
        assert_eq!(erasures.len(), 1);
    }

    #[test]
    fn only_a_valid_thread_erased_erases() {
        let subjects = Subjects::default();
        let thread = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";
        let subject = format!("chat.thread.{thread}.erased");
        let valid = format!(r#"{{"thread":"{thread}","timestamp":"2026-11-24T03:22:40.123456Z"}}"#);
        let id = Uuid::parse_str(thread).ok();
        assert_eq!(
            erased_thread(&subjects, &subject, None, None, valid.as_bytes()),
            id
        );
        assert_eq!(
            erased_thread(
                &subjects,
                &subject,
                Some("ThreadErased"),
                Some("1"),
                valid.as_bytes()
            ),
            id
        );
        assert_eq!(
            erased_thread(&subjects, &subject, None, None, b"garbage"),
            None
        );
        assert_eq!(
            erased_thread(&subjects, &subject, None, Some("2"), valid.as_bytes()),
            None
        );
        let other = "5b0e1d4a-c9a6-11ee-8c90-0242ac120002";
        let elsewhere = format!("chat.thread.{other}.erased");
        assert_eq!(
            erased_thread(&subjects, &elsewhere, None, None, valid.as_bytes()),
            None
        );
    }
}
