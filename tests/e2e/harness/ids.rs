//! What ids and timestamps on the wire must look like, and how an outside publisher makes them.

use serde_json::Value;
use uuid::Uuid;

/// A fresh UUID version 1 with a random clock sequence and a random multicast node id, as
/// an outside publisher (the Slack integration) would make one.
pub fn new_uuid1() -> Uuid {
    proto_events::new_id()
}

/// A fresh id in its canonical text form.
pub fn new_id() -> String {
    new_uuid1().hyphenated().to_string()
}

/// Now, as the wire writes timestamps: `2026-11-24T03:22:40.123456Z`.
pub fn now_timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Asserts `id` is a UUID version 1 in canonical lower-case form whose node id is random
/// (multicast bit set), never a MAC address.
#[track_caller]
pub fn assert_uuid1(id: &Value) -> Uuid {
    let text = id
        .as_str()
        .unwrap_or_else(|| panic!("id {id} is not a string"));
    let parsed = Uuid::try_parse(text).unwrap_or_else(|e| panic!("id {text:?} is not a UUID: {e}"));
    assert_eq!(
        parsed.hyphenated().to_string(),
        text,
        "id {text:?} is not in canonical lower-case form"
    );
    assert_eq!(
        parsed.get_version_num(),
        1,
        "id {text} is not a UUID version 1"
    );
    assert_eq!(
        parsed.get_variant(),
        uuid::Variant::RFC4122,
        "id {text} has the wrong variant"
    );
    assert_eq!(
        parsed.as_bytes()[10] & 0x01,
        0x01,
        "id {text}: the node id's multicast bit is not set, so it may be a MAC address"
    );
    parsed
}

/// Asserts `ts` is `YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC with microseconds, and not far from now.
#[track_caller]
pub fn assert_timestamp(ts: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = ts
        .as_str()
        .unwrap_or_else(|| panic!("timestamp {ts} is not a string"));
    let shape_ok = text.len() == 27
        && text.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == '.',
            26 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(
        shape_ok,
        "timestamp {text:?} is not YYYY-MM-DDTHH:MM:SS.ffffffZ"
    );
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("timestamp {text:?} is not a valid date and time: {e}"))
        .with_timezone(&chrono::Utc);
    let skew = (chrono::Utc::now() - parsed).num_seconds().abs();
    assert!(skew < 600, "timestamp {text} is {skew} s away from now");
    parsed
}

/// A JSON value written out with its keys in order and its numbers as they were read, so
/// that two values compare equal only if a client could not tell them apart.
pub fn exact(value: &Value) -> String {
    serde_json::to_string(value).expect("serialising a JSON value")
}

/// Asserts `actual` is `expected` with the same key order at every level.
#[track_caller]
pub fn assert_same_json(actual: &Value, expected: &Value, what: &str) {
    assert_eq!(
        exact(actual),
        exact(expected),
        "{what} differs (key order counts)"
    );
}

/// The keys of a JSON object, sorted.
#[track_caller]
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// The ids of a thread's messages, in the order `GET /chat/thread/:id/` lists them.
pub fn message_ids(thread: &Value) -> Vec<Value> {
    thread["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages list in {thread}"))
        .iter()
        .map(|m| m["id"].clone())
        .collect()
}

/// A valid `MessagePosted` payload, written out by hand as an outside publisher (the Slack
/// integration) would.
pub fn agent_reply(id: &str, thread: &str, body: &str) -> String {
    format!(
        r#"{{"id":"{id}","user":{{"name":"Agent Smith","slack":{{"user_id":"U024BE7LH","team":"T1"}},"avatar":null}},"timestamp":"{}","body":"{body}","send_by_user":false,"thread":"{thread}"}}"#,
        now_timestamp()
    )
}
