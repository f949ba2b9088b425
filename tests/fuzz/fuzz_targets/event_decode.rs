//! `Event::decode`: what every consumer (projector, gateway) runs on an event from NATS, with
//! an arbitrary subject prefix, subject, `Threadline-Event` and `Threadline-Schema-Version`
//! headers and payload.
//!
//! Input: `prefix\nsubject\nevent header\nversion header\npayload`; a header line `-` is
//! absent, an empty or invalid prefix is the default `chat`.
//!
//! Properties of an event that decodes: it lives on its one canonical subject; re-encoding it
//! decodes to the same event and is stable (decode∘encode round trip); the stored bytes decode
//! the same without headers and with the headers this crate writes; the payload is UTF-8 (a
//! websocket text frame); its `user` re-reads to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_events::{
    EncodedEvent, Event, EventError, Subjects, ThreadErased, UserJson, SCHEMA_VERSION,
};
use threadline_fuzz::{optional, split, text};

fuzz_target!(|data: &[u8]| {
    let ([prefix, subject, event_header, version_header], payload) = split(data);
    let subjects = Subjects::new(&text(prefix)).unwrap_or_default();
    let subject = text(subject);
    let event_header = optional(event_header).map(text);
    let version_header = optional(version_header).map(text);

    let decoded = Event::decode(
        &subjects,
        &subject,
        event_header.as_deref(),
        version_header.as_deref(),
        payload,
    );
    let event = match decoded {
        Ok(event) => event,
        Err(error) => {
            // Every refusal has a reason code for the dead-letter subject and a message.
            assert!(!error.code().is_empty());
            assert!(!error.to_string().is_empty());
            assert!(subjects
                .dead_letter(error.code())
                .starts_with(subjects.prefix()));
            if subjects.parse(&subject).is_err() {
                assert!(matches!(error, EventError::BadSubject(_)), "{error:?}");
            }
            return;
        }
    };

    assert_eq!(subjects.event(event.thread(), event.kind()), subject);
    assert_eq!(subjects.parse(&subject), Ok((event.thread(), event.kind())));
    assert!(
        std::str::from_utf8(payload).is_ok(),
        "a decoded payload is not UTF-8"
    );

    let encoded = event.to_payload();
    let again = Event::decode(&subjects, &subject, None, None, &encoded)
        .unwrap_or_else(|e| panic!("re-encoded event does not decode: {e}"));
    assert_eq!(again, event, "decode∘encode changed the event");
    assert_eq!(again.to_payload(), encoded, "encoding is not stable");

    let with_headers = Event::decode(
        &subjects,
        &subject,
        Some(event.kind().name()),
        Some(&SCHEMA_VERSION.to_string()),
        payload,
    );
    assert_eq!(with_headers.as_ref(), Ok(&event));

    let stored =
        EncodedEvent::from_payload(&subjects, &subject, bytes::Bytes::copy_from_slice(payload))
            .unwrap_or_else(|e| panic!("stored bytes refused without headers: {e}"));
    assert_eq!(stored.event(), &event);
    assert_eq!(&stored.payload()[..], payload);

    let user = match &event {
        Event::ThreadCreated(created) => Some(&created.user),
        Event::MessagePosted(message) => {
            assert_eq!(
                proto_events::MessageBody::new(message.body.as_str().to_owned()).as_ref(),
                Ok(&message.body)
            );
            Some(&message.user)
        }
        // An erasure names its thread only; its id is derived from it.
        Event::ThreadErased(erased) => {
            assert_eq!(event.id(), ThreadErased::id_of(erased.thread));
            None
        }
    };
    if let Some(user) = user {
        assert_eq!(UserJson::from_json(user.get()).as_ref(), Ok(user));
    }

    let value: serde_json::Value =
        serde_json::from_slice(payload).expect("a decoded payload is JSON");
    let (field, id) = match &event {
        Event::ThreadErased(_) => ("thread", event.thread()),
        _ => ("id", event.id()),
    };
    assert_eq!(value[field], id.hyphenated().to_string());
});
