//! The events of the log. Names are past tense; the payload of each is its public JSON.

use crate::{MessageBody, Subjects, Timestamp, UserJson};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version that this crate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    ThreadCreated,
    MessagePosted,
    ThreadErased,
}

impl EventKind {
    /// The last token of the event's subject.
    pub fn subject_token(self) -> &'static str {
        match self {
            EventKind::ThreadCreated => "created",
            EventKind::MessagePosted => "message",
            EventKind::ThreadErased => "erased",
        }
    }

    pub fn from_subject_token(token: &str) -> Option<Self> {
        match token {
            "created" => Some(EventKind::ThreadCreated),
            "message" => Some(EventKind::MessagePosted),
            "erased" => Some(EventKind::ThreadErased),
            _ => None,
        }
    }

    /// The value of the `Threadline-Event` header.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ThreadCreated => "ThreadCreated",
            EventKind::MessagePosted => "MessagePosted",
            EventKind::ThreadErased => "ThreadErased",
        }
    }
}

/// A thread was opened by a visitor. Payload: `{id, user, timestamp}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadCreated {
    #[serde(with = "canonical_uuid")]
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
}

/// A message was posted to a thread, by the visitor or by an agent (from Slack).
/// Payload: the public message JSON `{id, user, timestamp, body, send_by_user, thread}`,
/// exactly what `POST /chat/message/` answers and what websocket clients receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagePosted {
    #[serde(with = "canonical_uuid")]
    pub id: Uuid,
    pub user: UserJson,
    pub timestamp: Timestamp,
    pub body: MessageBody,
    pub send_by_user: bool,
    #[serde(with = "canonical_uuid")]
    pub thread: Uuid,
}

/// A thread was erased by an operator (`threadline erase`): the visitor's right to be
/// forgotten. Payload: `{thread, timestamp}`. From this event on the thread does not exist
/// for any part of threadline, whatever else the log holds of it (a `ThreadCreated` published
/// again later included): its rows are deleted from the read model, its sockets are closed and
/// it is never shown again. Only the operator's command publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadErased {
    #[serde(with = "canonical_uuid")]
    pub thread: Uuid,
    /// When it was erased.
    pub timestamp: Timestamp,
}

impl ThreadErased {
    /// The id of a thread's erasure, its `Nats-Msg-Id`: the same for every erasure of the
    /// thread (the name-based UUID of the thread id), so that an erasure repeated within the
    /// stream's duplicate window is stored once.
    pub fn id_of(thread: Uuid) -> Uuid {
        Uuid::new_v5(&ERASURE_NAMESPACE, thread.as_bytes())
    }
}

/// The namespace of the ids of erasures (UUID v5).
const ERASURE_NAMESPACE: Uuid = Uuid::from_u128(0x7e1f_6a2c_49d3_4b8e_a5c0_2d9b_8f31_c6e4);

/// An event as read from the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ThreadCreated(ThreadCreated),
    MessagePosted(MessagePosted),
    ThreadErased(ThreadErased),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::ThreadCreated(_) => EventKind::ThreadCreated,
            Event::MessagePosted(_) => EventKind::MessagePosted,
            Event::ThreadErased(_) => EventKind::ThreadErased,
        }
    }

    /// The thread the event belongs to.
    pub fn thread(&self) -> Uuid {
        match self {
            Event::ThreadCreated(e) => e.id,
            Event::MessagePosted(e) => e.thread,
            Event::ThreadErased(e) => e.thread,
        }
    }

    /// The event's own id, used as `Nats-Msg-Id`.
    pub fn id(&self) -> Uuid {
        match self {
            Event::ThreadCreated(e) => e.id,
            Event::MessagePosted(e) => e.id,
            Event::ThreadErased(e) => ThreadErased::id_of(e.thread),
        }
    }

    /// Serialises the event once, for the log and for whoever answers with its payload.
    pub fn encode(self) -> EncodedEvent {
        let payload = bytes::Bytes::from(self.to_payload());
        EncodedEvent {
            event: self,
            payload,
        }
    }

    /// The payload bytes: the event's public JSON.
    pub fn to_payload(&self) -> Vec<u8> {
        let bytes = match self {
            Event::ThreadCreated(e) => serde_json::to_vec(e),
            Event::MessagePosted(e) => serde_json::to_vec(e),
            Event::ThreadErased(e) => serde_json::to_vec(e),
        };
        // Serialising these types cannot fail: every field is a string, bool or valid JSON.
        bytes.unwrap_or_default()
    }

    /// Reads and checks an event as it arrives from NATS: its subject, the optional
    /// `Threadline-Event` and `Threadline-Schema-Version` headers, and its payload. Every
    /// consumer calls this before it uses an event; what fails is set aside, never applied.
    pub fn decode(
        subjects: &Subjects,
        subject: &str,
        event_header: Option<&str>,
        version_header: Option<&str>,
        payload: &[u8],
    ) -> Result<Event, EventError> {
        let (thread, kind) = subjects
            .parse(subject)
            .map_err(|_| EventError::BadSubject(subject.to_owned()))?;
        if let Some(version) = version_header {
            if version.trim() != SCHEMA_VERSION.to_string() {
                return Err(EventError::UnsupportedVersion(version.to_owned()));
            }
        }
        if let Some(name) = event_header {
            if name.trim() != kind.name() {
                return Err(EventError::KindMismatch {
                    header: name.to_owned(),
                    subject: kind.name(),
                });
            }
        }
        // Serde would also take a struct written as a JSON array; the schema says object.
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(EventError::InvalidPayload(
                "the payload must be a JSON object".into(),
            ));
        }
        let event = match kind {
            EventKind::ThreadCreated => serde_json::from_slice(payload)
                .map(Event::ThreadCreated)
                .map_err(|e| EventError::InvalidPayload(e.to_string()))?,
            EventKind::MessagePosted => serde_json::from_slice(payload)
                .map(Event::MessagePosted)
                .map_err(|e| EventError::InvalidPayload(e.to_string()))?,
            EventKind::ThreadErased => serde_json::from_slice(payload)
                .map(Event::ThreadErased)
                .map_err(|e| EventError::InvalidPayload(e.to_string()))?,
        };
        if event.thread() != thread {
            return Err(EventError::ThreadMismatch {
                subject: thread,
                payload: event.thread(),
            });
        }
        Ok(event)
    }
}

/// An event with its payload bytes, serialised once.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    event: Event,
    payload: bytes::Bytes,
}

impl EncodedEvent {
    /// An event as stored on `subject`: decoded (and so checked), with its payload bytes kept
    /// exactly as they were, so that publishing it again sends the same bytes.
    pub fn from_payload(
        subjects: &Subjects,
        subject: &str,
        payload: bytes::Bytes,
    ) -> Result<EncodedEvent, EventError> {
        let event = Event::decode(subjects, subject, None, None, &payload)?;
        Ok(EncodedEvent { event, payload })
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The payload: the event's public JSON. Cloning it shares the bytes.
    pub fn payload(&self) -> &bytes::Bytes {
        &self.payload
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("subject {0:?} is not an event subject")]
    BadSubject(String),
    #[error("schema version {0:?} is not supported (this build reads version 1)")]
    UnsupportedVersion(String),
    #[error("header says {header:?} but the subject holds {subject} events")]
    KindMismatch {
        header: String,
        subject: &'static str,
    },
    #[error("payload does not match the event's schema: {0}")]
    InvalidPayload(String),
    #[error("payload names thread {payload} but was published on thread {subject}'s subject")]
    ThreadMismatch { subject: Uuid, payload: Uuid },
    #[error("thread {0} does not exist")]
    UnknownThread(Uuid),
    /// The event is valid, but PostgreSQL refused to store its row (a value its types or the
    /// read model's constraints do not take); the SQLSTATE and PostgreSQL's message.
    #[error("PostgreSQL refused its row: {0}")]
    RefusedByDatabase(String),
}

impl EventError {
    /// Every reason's code, as [`EventError::code`] gives it (metrics list each from the start).
    pub const CODES: [&'static str; 7] = [
        "bad_subject",
        "unsupported_version",
        "kind_mismatch",
        "invalid_payload",
        "thread_mismatch",
        "unknown_thread",
        "refused_by_database",
    ];

    /// A short code for the reason, used as the last token of the dead-letter subject.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::BadSubject(_) => "bad_subject",
            EventError::UnsupportedVersion(_) => "unsupported_version",
            EventError::KindMismatch { .. } => "kind_mismatch",
            EventError::InvalidPayload(_) => "invalid_payload",
            EventError::ThreadMismatch { .. } => "thread_mismatch",
            EventError::UnknownThread(_) => "unknown_thread",
            EventError::RefusedByDatabase(_) => "refused_by_database",
        }
    }
}

/// Uuids on the wire are canonical: lower case and hyphenated, nothing else.
mod canonical_uuid {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(id: &Uuid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&id.hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        match Uuid::try_parse(&text) {
            Ok(id) if id.hyphenated().to_string() == text => Ok(id),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not a canonical lower-case hyphenated UUID"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const THREAD: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";
    const MESSAGE: &str = "5c1f2e5b-c9a6-11ee-8c90-0242ac120002";

    #[test]
    fn codes_lists_every_reason_once() {
        let id = Uuid::nil();
        let every = [
            EventError::BadSubject(String::new()),
            EventError::UnsupportedVersion(String::new()),
            EventError::KindMismatch {
                header: String::new(),
                subject: "created",
            },
            EventError::InvalidPayload(String::new()),
            EventError::ThreadMismatch {
                subject: id,
                payload: id,
            },
            EventError::UnknownThread(id),
            EventError::RefusedByDatabase(String::new()),
        ];
        let codes: Vec<&str> = every.iter().map(EventError::code).collect();
        assert_eq!(codes, EventError::CODES);
    }

    fn message_json() -> Value {
        json!({
            "id": MESSAGE,
            "user": {"name": "Agent Smith", "slack_id": "U123"},
            "timestamp": "2026-11-24T03:22:40.123456Z",
            "body": "Hello from Slack",
            "send_by_user": false,
            "thread": THREAD,
        })
    }

    fn decode(subject: &str, payload: &Value) -> Result<Event, EventError> {
        Event::decode(
            &Subjects::default(),
            subject,
            None,
            None,
            &serde_json::to_vec(payload).unwrap(),
        )
    }

    #[test]
    fn message_posted_round_trips_byte_for_byte() {
        let payload = serde_json::to_vec(&message_json()).unwrap();
        let subject = format!("chat.thread.{THREAD}.message");
        let event = Event::decode(
            &Subjects::default(),
            &subject,
            Some("MessagePosted"),
            Some("1"),
            &payload,
        )
        .unwrap();
        assert_eq!(event.kind(), EventKind::MessagePosted);
        assert_eq!(event.thread().to_string(), THREAD);
        assert_eq!(event.id().to_string(), MESSAGE);
        assert_eq!(event.to_payload(), payload);
    }

    #[test]
    fn a_stored_payload_keeps_its_bytes_and_is_checked() {
        // Spacing that re-encoding would not reproduce.
        let payload = bytes::Bytes::from(format!(
            r#"{{ "id":"{MESSAGE}", "user":{{"n": 1}}, "timestamp":"2026-11-24T03:22:40.123456Z", "body":"hi", "send_by_user":false, "thread":"{THREAD}" }}"#
        ));
        let subject = format!("chat.thread.{THREAD}.message");
        let encoded =
            EncodedEvent::from_payload(&Subjects::default(), &subject, payload.clone()).unwrap();
        assert_eq!(encoded.payload(), &payload);
        assert_eq!(encoded.event().id().to_string(), MESSAGE);
        let elsewhere = format!("chat.thread.{MESSAGE}.message");
        assert!(EncodedEvent::from_payload(&Subjects::default(), &elsewhere, payload).is_err());
    }

    #[test]
    fn thread_created_round_trips_byte_for_byte() {
        let payload = json!({"id": THREAD, "user": [1, {"b": null, "a": 2.50}], "timestamp": "2026-01-01T00:00:00.000001Z"});
        let bytes = serde_json::to_vec(&payload).unwrap();
        let event = decode(&format!("chat.thread.{THREAD}.created"), &payload).unwrap();
        assert_eq!(event.to_payload(), bytes);
    }

    #[test]
    fn payload_must_match_the_schema() {
        let subject = format!("chat.thread.{THREAD}.message");
        let mut cases: Vec<Value> = Vec::new();
        for field in ["id", "user", "timestamp", "body", "send_by_user", "thread"] {
            let mut v = message_json();
            v.as_object_mut().unwrap().remove(field);
            cases.push(v);
        }
        for (field, bad) in [
            ("id", json!("5C1F2E5B-C9A6-11EE-8C90-0242AC120002")),
            ("id", json!(42)),
            ("user", Value::Null),
            ("user", json!(" ")),
            ("user", json!({"a": "\u{0}"})),
            ("timestamp", json!("2026-11-24 03:22:40")),
            ("body", json!("  ")),
            ("body", json!(5)),
            ("body", json!("a\u{0}")),
            ("send_by_user", json!("true")),
            ("extra", json!(1)),
        ] {
            let mut v = message_json();
            v.as_object_mut().unwrap().insert(field.to_owned(), bad);
            cases.push(v);
        }
        cases.push(json!([1, 2]));
        cases.push(json!([
            MESSAGE,
            "agent",
            "2026-11-24T03:22:40.123456Z",
            "hi",
            false,
            THREAD
        ]));
        for case in cases {
            assert!(
                matches!(decode(&subject, &case), Err(EventError::InvalidPayload(_))),
                "{case}"
            );
        }
        assert!(matches!(
            Event::decode(&Subjects::default(), &subject, None, None, b"{not json"),
            Err(EventError::InvalidPayload(_))
        ));
    }

    #[test]
    fn thread_erased_round_trips_and_has_one_id_per_thread() {
        let payload = json!({"thread": THREAD, "timestamp": "2026-11-24T03:22:40.123456Z"});
        let bytes = serde_json::to_vec(&payload).unwrap();
        let event = decode(&format!("chat.thread.{THREAD}.erased"), &payload).unwrap();
        assert_eq!(event.kind(), EventKind::ThreadErased);
        assert_eq!(event.thread().to_string(), THREAD);
        assert_eq!(event.to_payload(), bytes);
        let thread = Uuid::parse_str(THREAD).unwrap();
        assert_eq!(event.id(), ThreadErased::id_of(thread));
        assert_ne!(event.id(), thread, "the erasure's id is not the creation's");
        assert_ne!(ThreadErased::id_of(Uuid::nil()), event.id());
        let other = "00000000-0000-1000-8000-000000000000";
        assert!(matches!(
            decode(&format!("chat.thread.{other}.erased"), &payload),
            Err(EventError::ThreadMismatch { .. })
        ));
        for bad in [
            json!({"thread": THREAD}),
            json!({"thread": THREAD, "timestamp": "2026-11-24T03:22:40.123456Z", "user": "x"}),
            json!({"id": THREAD, "timestamp": "2026-11-24T03:22:40.123456Z"}),
        ] {
            assert!(
                matches!(
                    decode(&format!("chat.thread.{THREAD}.erased"), &bad),
                    Err(EventError::InvalidPayload(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn subject_headers_and_payload_must_agree() {
        let other = "00000000-0000-1000-8000-000000000000";
        assert!(matches!(
            decode(&format!("chat.thread.{other}.message"), &message_json()),
            Err(EventError::ThreadMismatch { .. })
        ));
        assert!(matches!(
            decode("chat.thread.x.message", &message_json()),
            Err(EventError::BadSubject(_))
        ));
        let payload = serde_json::to_vec(&message_json()).unwrap();
        let subject = format!("chat.thread.{THREAD}.message");
        assert!(matches!(
            Event::decode(
                &Subjects::default(),
                &subject,
                Some("ThreadCreated"),
                None,
                &payload
            ),
            Err(EventError::KindMismatch { .. })
        ));
        assert!(matches!(
            Event::decode(&Subjects::default(), &subject, None, Some("2"), &payload),
            Err(EventError::UnsupportedVersion(_))
        ));
    }
}
