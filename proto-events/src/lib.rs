//! The one definition of threadline's events: their payloads, the NATS subjects they live on,
//! the headers that travel with them, and the public JSON shapes that clients see.
//!
//! Every service (api, projector, gateway) and every outside publisher (the Slack
//! integration) speaks through these types. A `MessagePosted` payload is, byte for byte, the
//! public message JSON that a websocket client receives; so the gateway can forward what it got
//! from NATS without re-serialising it. An operator's `ThreadErased` ends a thread for good
//! (the right to be forgotten). `PUBLISHING.md` beside this crate tells outside
//! publishers what to publish where, and `schema/` holds a JSON Schema per event.

pub mod body;
pub mod event;
pub mod headers;
pub mod id;
pub mod shapes;
pub mod subjects;
pub mod timestamp;
pub mod user;

pub use body::{BodyError, MessageBody};
pub use event::{
    EncodedEvent, Event, EventError, EventKind, MessagePosted, ThreadCreated, ThreadErased,
    SCHEMA_VERSION,
};
pub use id::new_id;
pub use shapes::{MessageJson, MessageView, ThreadView};
pub use subjects::{Subjects, SubjectsError};
pub use timestamp::Timestamp;
pub use user::{UserError, UserJson};

/// Python's `str.isspace()`, which DRF's trimming follows: Unicode white space plus the
/// information separators U+001C..U+001F.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
