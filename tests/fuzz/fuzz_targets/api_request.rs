//! A POST as the API reads it: the `Idempotency-Key` header, the body read within the size
//! limit as a JSON object (`request::json_object`, with its `Content-Type` and
//! `Content-Length`), then every field of both POSTs (`fields::user`, `body`, `send_by_user`,
//! `thread`).
//!
//! Input: `content type\ncontent length\nidempotency key\nbody`; a header line `-` is absent
//! (as is one that is not a valid header value). The body arrives in chunks of 16 bytes; the
//! limit is 1024 bytes.
//!
//! Properties: the body's outcome is the one the contract gives for its size, type and JSON;
//! every refusal is a 4xx, never a 5xx; a key is refused exactly when it is empty, too long or
//! not text, is the same quoted or not and differs between the endpoints; a validated user
//! re-serialises to the same bytes; and every event built from accepted fields is one that the
//! consumers accept (`Event::decode`) and that round-trips.

#![no_main]

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use proto_events::{Event, MessagePosted, Subjects, ThreadCreated, Timestamp};
use serde_json::{Map, Value};
use threadline_api::fields;
use threadline_api::idempotency::{Key, HEADER};
use threadline_api::request::json_object;
use threadline_api::ApiError;
use threadline_fuzz::{optional, split};
use uuid::Uuid;

const LIMIT: usize = 1024;
const CHUNK: usize = 16;

fuzz_target!(|data: &[u8]| {
    let ([content_type, content_length, key], body) = split(data);
    let mut headers = HeaderMap::new();
    for (name, line) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_LENGTH, content_length),
        (header::HeaderName::from_static(HEADER), key),
    ] {
        if let Some(value) = optional(line).and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, value);
        }
    }

    idempotency_key(&headers);

    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(CHUNK)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let read = futures::executor::block_on(json_object(
        &headers,
        Body::from_stream(futures::stream::iter(chunks)),
        LIMIT,
    ));
    check_body_outcome(&headers, body, &read);
    match read {
        Ok(request) => request_fields(&request.object),
        Err(error) => assert_client_error(error),
    }
});

/// What the contract says a body becomes, against what `json_object` made of it.
fn check_body_outcome(
    headers: &HeaderMap,
    body: &[u8],
    read: &Result<threadline_api::request::JsonRequest, ApiError>,
) {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > LIMIT as u64) || body.len() > LIMIT {
        assert!(
            matches!(read, Err(ApiError::BodyTooLarge { limit: LIMIT })),
            "oversized body: {read:?}",
            read = read.as_ref().err()
        );
        return;
    }
    if body.is_empty() {
        let request = read.as_ref().expect("an empty body reads as {}");
        assert!(request.object.is_empty() && request.raw.is_empty());
        return;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        assert!(
            matches!(read, Err(ApiError::UnsupportedMediaType(t)) if *t == content_type),
            "{:?}",
            read.as_ref().err()
        );
        return;
    }
    match (serde_json::from_slice::<Value>(body), read) {
        (Err(_), Err(ApiError::JsonParse(_))) => {}
        (Ok(Value::Object(object)), Ok(request)) => {
            assert_eq!(&request.object, &object);
            assert_eq!(&request.raw[..], body);
        }
        (Ok(Value::Null), Err(ApiError::NonField(m))) => assert_eq!(m, "No data provided"),
        (Ok(_), Err(ApiError::NonField(m))) => {
            assert!(
                m.starts_with("Invalid data. Expected a dictionary, but got "),
                "{m}"
            )
        }
        (parsed, read) => panic!(
            "body {parsed:?} was read as {:?}",
            read.as_ref().map(|r| &r.object)
        ),
    }
}

/// Bad input is answered 4xx, never 5xx.
fn assert_client_error(error: ApiError) {
    let shown = format!("{error:?}");
    let status = error.into_response().status();
    assert!(status.is_client_error(), "{shown} answered {status}");
}

/// The key of a request, and the key of the same text written another allowed way.
fn idempotency_key(headers: &HeaderMap) {
    let message = Key::from_headers(headers, "message");
    let thread = Key::from_headers(headers, "thread");
    let Some(raw) = headers.get(HEADER) else {
        assert!(matches!(message, Ok(None)) && matches!(thread, Ok(None)));
        return;
    };
    // A header value is text when it is visible ASCII, space or tab.
    let text = raw
        .as_bytes()
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(raw.as_bytes()).ok())
        .flatten()
        .map(str::trim)
        .map(|t| {
            t.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(t)
        })
        .filter(|t| !t.is_empty() && t.len() <= 255);
    let Some(text) = text else {
        assert!(
            matches!(message, Err(ApiError::BadIdempotencyKey)),
            "{message:?}"
        );
        assert_client_error(ApiError::BadIdempotencyKey);
        return;
    };
    let message = message.expect("a valid key").expect("a key is present");
    let thread = thread.expect("a valid key").expect("a key is present");
    assert_ne!(message, thread, "keys are scoped by endpoint");
    // Quoted, and quoted with white space around (which is not part of the key).
    for spelling in [format!("\"{text}\""), format!(" \"{text}\"\t")] {
        let mut other = HeaderMap::new();
        match HeaderValue::from_str(&spelling) {
            Ok(value) => other.insert(HEADER, value),
            Err(_) => continue,
        };
        assert_eq!(
            Key::from_headers(&other, "message").ok().flatten().as_ref(),
            Some(&message),
            "{spelling:?} is another key than {text:?}"
        );
    }
}

/// Every field of both POSTs; what they accept must make events that consumers accept.
fn request_fields(data: &Map<String, Value>) {
    let user = fields::user(data);
    let body = fields::body(data);
    let send_by_user = fields::send_by_user(data);
    let thread = fields::thread(data);

    if let Ok(user) = &user {
        let sent = serde_json::to_string(&data["user"]).expect("a parsed value serialises");
        assert_eq!(
            user.get(),
            sent,
            "a validated user must re-serialise to the same bytes"
        );
    }
    if let Ok(thread) = &thread {
        assert!(thread.does_not_exist().contains(&thread.as_sent));
        if let Some(text) = data["thread"].as_str() {
            if Uuid::try_parse(text).is_ok_and(|id| id.hyphenated().to_string() == text) {
                assert_eq!(thread.id.hyphenated().to_string(), text);
            }
        }
    }
    for error in [
        user.as_ref().err(),
        body.as_ref().err(),
        send_by_user.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!error.is_empty());
    }
    if let Err(error) = &thread {
        assert!(!error.is_empty());
    }

    let subjects = Subjects::default();
    let timestamp = Timestamp::now();
    if let Ok(user) = &user {
        let id = Uuid::from_u128(0x8f004f03_e83c_11f1_b324_c900d5c1fc87);
        let created = Event::ThreadCreated(ThreadCreated {
            id,
            user: user.clone(),
            timestamp,
        });
        round_trip(&subjects, &subjects.thread_created(id), created);
    }
    if let (Ok(user), Ok(body), Ok(send_by_user), Ok(thread)) = (user, body, send_by_user, thread) {
        let posted = Event::MessagePosted(MessagePosted {
            id: Uuid::from_u128(0x8ff637eb_e83c_11f1_84cb_7bba21cdf64d),
            user,
            timestamp,
            body,
            send_by_user,
            thread: thread.id,
        });
        round_trip(&subjects, &subjects.message_posted(thread.id), posted);
    }
}

/// An event the API would append decodes, as every consumer reads it, to itself.
fn round_trip(subjects: &Subjects, subject: &str, event: Event) {
    let encoded = event.clone().encode();
    let decoded = Event::decode(subjects, subject, None, None, encoded.payload())
        .unwrap_or_else(|e| panic!("the API would append an event that consumers refuse: {e}"));
    assert_eq!(decoded, event);
}
