//! The parts of an event on their own: the `user` JSON and the message body (as published and
//! as taken from a request), timestamps, subject prefixes and subjects, and the Python number
//! texts that a numeric body becomes.
//!
//! Input: the whole input is the text given to each parser.
//!
//! Properties: a published `user` keeps its exact bytes; a `user` validated from a request
//! re-serialises to the same bytes and is accepted as published; a body taken from a request
//! is trimmed and accepted as published; a timestamp and a subject write back exactly as read;
//! a prefix's subjects parse back; Python's float text reads back as the same float.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_events::body::{python_float_repr, python_number_text};
use proto_events::{EventKind, MessageBody, Subjects, Timestamp, UserJson};
use serde_json::Value;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    if let Ok(bits) = <[u8; 8]>::try_from(data.get(..8).unwrap_or_default()) {
        float_text(f64::from_le_bytes(bits));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(user) = UserJson::from_json(text) {
        // JSON white space around the value is not part of it (inside an event there is none).
        let value = text.trim_matches([' ', '\t', '\n', '\r']);
        assert_eq!(user.get(), value, "a published user must keep its bytes");
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        from_request(&value);
    }
    if let Ok(body) = MessageBody::new(text.to_owned()) {
        let json = serde_json::to_string(&body).expect("a body serialises");
        let back: MessageBody = serde_json::from_str(&json).expect("a body reads back");
        assert_eq!(back, body);
    }

    if let Some(timestamp) = Timestamp::parse(text) {
        assert_eq!(timestamp.to_string(), text);
        assert_eq!(Timestamp::from(timestamp.as_datetime()), timestamp);
    }

    let thread = Uuid::from_u128(0x4b0e1d4a_c9a6_11ee_8c90_0242ac120002);
    if let Ok(subjects) = Subjects::new(text) {
        assert_eq!(subjects.prefix(), text);
        for kind in [EventKind::ThreadCreated, EventKind::MessagePosted] {
            assert_eq!(
                subjects.parse(&subjects.event(thread, kind)),
                Ok((thread, kind))
            );
        }
    }
    if let Ok((id, kind)) = Subjects::default().parse(text) {
        assert_eq!(Subjects::default().event(id, kind), text);
    }
});

/// A JSON value as a request field: `user` and `body`.
fn from_request(value: &Value) {
    if let Ok(user) = UserJson::parse(value) {
        let compact = serde_json::to_string(value).expect("a parsed value serialises");
        assert_eq!(
            user.get(),
            compact,
            "a validated user must re-serialise to the same bytes"
        );
        let published = UserJson::from_json(user.get())
            .unwrap_or_else(|e| panic!("the API accepts a user that events refuse: {e}"));
        assert_eq!(published.get(), user.get());
    }
    if let Ok(body) = MessageBody::parse(value) {
        let text = body.as_str();
        assert_eq!(
            text,
            text.trim_matches(proto_events::is_python_space),
            "not trimmed"
        );
        assert_eq!(
            MessageBody::new(text.to_owned()).as_ref(),
            Ok(&body),
            "the API accepts a body that events refuse"
        );
        assert_eq!(
            MessageBody::parse(&Value::String(text.to_owned())).as_ref(),
            Ok(&body)
        );
    }
    if let Value::Number(n) = value {
        let text = python_number_text(n);
        assert!(!text.is_empty());
    }
}

/// Python's `repr(float)` reads back as the same float.
fn float_text(f: f64) {
    if f.is_nan() {
        return;
    }
    let text = python_float_repr(f);
    let back: f64 = text
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} (for {f:e}) is not a float"));
    assert_eq!(back.to_bits(), f.to_bits(), "{text:?} is not {f:e}");
}
