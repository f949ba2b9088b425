//! `Idempotency-Key` on both POSTs, as the IETF httpapi draft describes it: a client that
//! retries a request under the same key gets the original 201 response, byte for byte,
//! through any api replica, and the event is stored once; the same key with another body is
//! answered 422.
//!
//! How it maps onto the event log: the first request under a key records, in a key-value
//! bucket shared by the replicas, a fingerprint of its body and the event it built (subject
//! and payload bytes, which hold the event's id and timestamp) before appending it; the
//! response is made again from that event. A retry
//! finds that record and appends the *same* event again: its id is its `Nats-Msg-Id`, so
//! JetStream stores it once within the stream's duplicate window, and past that window the
//! read model and the gateway keep the first copy of a message id. Records expire after
//! `IDEMPOTENCY_WINDOW`; a key reused after that starts a new request.

use crate::error::ApiError;
use crate::AppState;
use axum::http::HeaderMap;
use bytes::Bytes;
use proto_events::{EncodedEvent, Event, Subjects, ThreadView};
use serde::Deserialize;
use std::sync::Arc;
use threadline_ports::{IdempotencyStore, StoreError};
use uuid::Uuid;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted.
const MAX_KEY_LENGTH: usize = 255;

/// Names the keys and fingerprints of this service (UUID v5 namespace).
const NAMESPACE: Uuid = Uuid::from_u128(0x5c8e_2a4e_8f3b_4d6c_9a1e_7b2d_3c4f_5a6b);

/// A client's key for one request to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The key of this request, if it has one; a malformed one is refused with 400.
    pub fn from_headers(headers: &HeaderMap, endpoint: &str) -> Result<Option<Key>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let text = value
            .to_str()
            .ok()
            .map(|t| t.trim())
            // The draft writes the key as a structured-field string: "...".
            .map(|t| {
                t.strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .unwrap_or(t)
            })
            .filter(|t| !t.is_empty() && t.len() <= MAX_KEY_LENGTH)
            .ok_or(ApiError::BadIdempotencyKey)?;
        let name = Uuid::new_v5(&NAMESPACE, format!("{endpoint}\n{text}").as_bytes());
        Ok(Some(Key(name.simple().to_string())))
    }
}

/// What is recorded for a key: `<fingerprint> <subject>` on a first line, then the event's
/// payload exactly as appended. The 201's body is made again from the event on a retry
/// ([`answer`]), so that a record holds the event once: about its size, no more.
#[derive(Debug, PartialEq)]
struct Record {
    /// Of the request body's bytes.
    fingerprint: String,
    subject: String,
    /// The event's payload, exactly as appended.
    event: Bytes,
}

/// A record as versions before the line-and-payload form wrote it (JSON, with the response
/// kept too): read while such records have not expired yet.
#[derive(Deserialize)]
struct JsonRecord {
    fingerprint: String,
    subject: String,
    event: String,
}

impl Record {
    fn encode(&self) -> Bytes {
        let mut bytes =
            Vec::with_capacity(self.fingerprint.len() + self.subject.len() + self.event.len() + 2);
        bytes.extend_from_slice(self.fingerprint.as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(self.subject.as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(&self.event);
        bytes.into()
    }

    fn decode(bytes: Bytes) -> Result<Record, String> {
        if bytes.first() == Some(&b'{') {
            let json: JsonRecord = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            return Ok(Record {
                fingerprint: json.fingerprint,
                subject: json.subject,
                event: Bytes::from(json.event),
            });
        }
        let malformed = || "an idempotency record without its first line".to_owned();
        let end = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(malformed)?;
        let line = std::str::from_utf8(&bytes[..end]).map_err(|_| malformed())?;
        let (fingerprint, subject) = line.split_once(' ').ok_or_else(malformed)?;
        Ok(Record {
            fingerprint: fingerprint.to_owned(),
            subject: subject.to_owned(),
            event: bytes.slice(end + 1..),
        })
    }
}

/// The thread whose event a record holds, as its first line names it: what erasing the
/// thread looks for (`threadline erase`). Reads the first line only (records of earlier
/// versions: their JSON).
pub fn record_thread(subjects: &Subjects, record: &[u8]) -> Option<Uuid> {
    let subject = if record.first() == Some(&b'{') {
        serde_json::from_slice::<JsonRecord>(record).ok()?.subject
    } else {
        let end = record.iter().position(|b| *b == b'\n')?;
        let line = std::str::from_utf8(&record[..end]).ok()?;
        line.split_once(' ')?.1.to_owned()
    };
    subjects.parse(&subject).ok().map(|(thread, _)| thread)
}

/// The 201's body for the request that built `event`: the message itself, or the new thread
/// without messages.
fn answer(event: &EncodedEvent) -> Result<Bytes, ApiError> {
    match event.event() {
        Event::MessagePosted(_) => Ok(event.payload().clone()),
        Event::ThreadCreated(created) => {
            let view = ThreadView {
                id: created.id,
                user: created.user.clone(),
                timestamp: created.timestamp,
                messages: Vec::new(),
            };
            serde_json::to_vec(&view)
                .map(Bytes::from)
                .map_err(ApiError::internal)
        }
        // The API records only the events it builds, never an erasure.
        Event::ThreadErased(_) => Err(ApiError::internal(
            "an idempotency record holds a ThreadErased",
        )),
    }
}

/// What to do with a request under a key.
enum Outcome {
    /// The first request under this key: append its own event.
    First,
    /// A retry: append this event again (stored once) and answer as the first time.
    Repeat(EncodedEvent),
}

/// The API's side of the idempotency store.
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    subjects: Subjects,
}

impl Idempotency {
    pub fn new(store: Arc<dyn IdempotencyStore>, subjects: Subjects) -> Self {
        Self { store, subjects }
    }

    /// Whether `key` holds a request answered before (this one's, or another's), claiming
    /// nothing.
    pub async fn recorded(&self, key: &Key) -> Result<bool, ApiError> {
        Ok(self.store.get(&key.0).await?.is_some())
    }

    /// Records the request (a fingerprint of its body `raw` and the event built for it) under
    /// `key`, or finds the earlier request recorded there.
    async fn claim(
        &self,
        key: &Key,
        raw: &[u8],
        event: &EncodedEvent,
    ) -> Result<Outcome, ApiError> {
        let fingerprint = Uuid::new_v5(&NAMESPACE, raw).simple().to_string();
        let record = Record {
            fingerprint: fingerprint.clone(),
            subject: self
                .subjects
                .event(event.event().thread(), event.event().kind()),
            event: event.payload().clone(),
        };
        let Some(existing) = self.store.claim(&key.0, record.encode()).await? else {
            return Ok(Outcome::First);
        };
        let earlier = Record::decode(existing).map_err(ApiError::internal)?;
        if earlier.fingerprint != fingerprint {
            return Err(ApiError::IdempotencyKeyReused);
        }
        let event = EncodedEvent::from_payload(&self.subjects, &earlier.subject, earlier.event)
            .map_err(ApiError::internal)?;
        Ok(Outcome::Repeat(event))
    }
}

/// Records the request under its key, if it has one, then appends its event (or, on a retry,
/// the earlier request's event), all within the append timeout. On a retry `response` becomes
/// the earlier request's response. The event appended and its stream sequence.
pub async fn append_once(
    state: &AppState,
    key: Option<&Key>,
    raw: &[u8],
    encoded: EncodedEvent,
    response: &mut Bytes,
) -> Result<(EncodedEvent, u64), ApiError> {
    let work = async {
        let encoded = match key {
            None => encoded,
            Some(key) => match state.idempotency.claim(key, raw, &encoded).await? {
                Outcome::First => encoded,
                Outcome::Repeat(event) => {
                    *response = answer(&event)?;
                    event
                }
            },
        };
        let sequence = state.log.append(&encoded).await?;
        Ok((encoded, sequence))
    };
    tokio::time::timeout(state.append_timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::nats(format!(
                "the event log did not store the event within {:?}",
                state.append_timeout
            ))
            .into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(value: &str, endpoint: &str) -> Result<Option<Key>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_str(value).unwrap());
        Key::from_headers(&headers, endpoint)
    }

    #[test]
    fn keys_are_scoped_by_endpoint_and_may_be_quoted() {
        let plain = key("8e03978e-40d5-43e8-bc93-6894a57f9324", "message").unwrap();
        let quoted = key("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"", "message").unwrap();
        let other = key("8e03978e-40d5-43e8-bc93-6894a57f9324", "thread").unwrap();
        assert!(plain.is_some());
        assert_eq!(plain, quoted);
        assert_ne!(plain, other);
        assert_eq!(
            Key::from_headers(&HeaderMap::new(), "message").unwrap(),
            None
        );
    }

    fn encoded(event: Event) -> (Subjects, String, EncodedEvent) {
        let subjects = Subjects::default();
        let subject = subjects.event(event.thread(), event.kind());
        (subjects, subject, event.encode())
    }

    fn thread_created() -> Event {
        Event::ThreadCreated(proto_events::ThreadCreated {
            id: Uuid::from_u128(7),
            user: proto_events::UserJson::from_stored(r#"{"name":"Ada"}"#.to_owned())
                .expect("user JSON"),
            timestamp: proto_events::Timestamp::now(),
        })
    }

    #[test]
    fn a_record_holds_the_event_once_and_reads_back() {
        let (_, subject, event) = encoded(thread_created());
        let record = Record {
            fingerprint: "f".repeat(32),
            subject,
            event: event.payload().clone(),
        };
        let bytes = record.encode();
        assert!(bytes.len() < event.payload().len() + 128, "{bytes:?}");
        assert_eq!(Record::decode(bytes), Ok(record));
        assert!(Record::decode(Bytes::from_static(b"no first line")).is_err());
    }

    #[test]
    fn a_record_names_the_thread_of_its_event() {
        let (subjects, subject, event) = encoded(thread_created());
        let record = Record {
            fingerprint: "f".repeat(32),
            subject: subject.clone(),
            event: event.payload().clone(),
        };
        assert_eq!(
            record_thread(&subjects, &record.encode()),
            Some(Uuid::from_u128(7))
        );
        let json = serde_json::json!({"fingerprint": "abc", "subject": subject, "event": "{}"});
        let old = serde_json::to_vec(&json).expect("JSON");
        assert_eq!(record_thread(&subjects, &old), Some(Uuid::from_u128(7)));
        assert_eq!(record_thread(&subjects, b"no first line"), None);
        assert_eq!(record_thread(&subjects, b"f other.subject\n{}"), None);
        assert_eq!(
            record_thread(&Subjects::new("acme").unwrap(), &record.encode()),
            None
        );
    }

    #[test]
    fn records_of_earlier_versions_are_read() {
        let (_, subject, event) = encoded(thread_created());
        let json = serde_json::json!({
            "fingerprint": "abc",
            "subject": subject,
            "event": std::str::from_utf8(event.payload()).expect("UTF-8"),
            "response": "{}",
        });
        let record = Record::decode(serde_json::to_vec(&json).expect("JSON").into());
        assert_eq!(
            record.map(|r| (r.fingerprint, r.event)),
            Ok(("abc".to_owned(), event.payload().clone()))
        );
    }

    #[test]
    fn the_answer_of_a_created_thread_is_the_thread_without_messages() {
        let (subjects, subject, event) = encoded(thread_created());
        let again = EncodedEvent::from_payload(&subjects, &subject, event.payload().clone())
            .expect("the event");
        let answer: serde_json::Value =
            serde_json::from_slice(&answer(&again).expect("an answer")).expect("JSON");
        assert_eq!(answer["id"], Uuid::from_u128(7).to_string());
        assert_eq!(answer["user"], serde_json::json!({"name": "Ada"}));
        assert_eq!(answer["messages"], serde_json::json!([]));
    }

    #[test]
    fn empty_or_overlong_keys_are_refused() {
        assert!(matches!(
            key("", "message"),
            Err(ApiError::BadIdempotencyKey)
        ));
        assert!(matches!(
            key("\"\"", "message"),
            Err(ApiError::BadIdempotencyKey)
        ));
        let long = "k".repeat(MAX_KEY_LENGTH + 1);
        assert!(matches!(
            key(&long, "message"),
            Err(ApiError::BadIdempotencyKey)
        ));
    }
}
