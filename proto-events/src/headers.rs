//! NATS headers that travel with threadline's events.

/// The event's own id, which JetStream uses to store a retried append once.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The kind of event: `ThreadCreated` or `MessagePosted`. Optional for outside publishers:
/// the subject already says it; when present it must agree with the subject.
pub const EVENT: &str = "Threadline-Event";
/// The schema version of the payload. Optional; absent means version 1.
pub const SCHEMA_VERSION: &str = "Threadline-Schema-Version";

/// On a set-aside event: why it was set aside.
pub const DEAD_LETTER_REASON: &str = "Threadline-Dead-Letter-Reason";
/// On a set-aside event: the subject it was published on.
pub const DEAD_LETTER_SUBJECT: &str = "Threadline-Dead-Letter-Subject";
/// On a set-aside event: its sequence in the event stream.
pub const DEAD_LETTER_SEQUENCE: &str = "Threadline-Dead-Letter-Sequence";
/// On a set-aside event: the component that set it aside (`projector`).
pub const DEAD_LETTER_BY: &str = "Threadline-Dead-Letter-By";
/// On a set-aside event whose record would not fit in one NATS message with its payload: the
/// payload's size in bytes. The record then has no payload; the event stays in the event
/// stream at `Threadline-Dead-Letter-Sequence`.
pub const DEAD_LETTER_PAYLOAD_OMITTED: &str = "Threadline-Dead-Letter-Payload-Omitted";
