//! The JSON Schemas in `schema/` are what outside publishers check their events against before
//! they publish. These tests hold each schema to `Event::decode`, the check that every consumer
//! runs: for every payload here, the schema and the decoder give the same verdict on the same
//! bytes, and that verdict is the one the contract expects.

use proto_events::{
    is_python_space, new_id, Event, EventKind, MessageBody, MessagePosted, Subjects, ThreadCreated,
    ThreadErased, Timestamp, UserJson,
};
use serde_json::{json, Value};
use uuid::Uuid;

const THREAD_CREATED_SCHEMA: &str = include_str!("../schema/thread-created.v1.json");
const MESSAGE_POSTED_SCHEMA: &str = include_str!("../schema/message-posted.v1.json");
const THREAD_ERASED_SCHEMA: &str = include_str!("../schema/thread-erased.v1.json");

const THREAD: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";
const MESSAGE: &str = "5c1f2e5b-c9a6-11ee-8c90-0242ac120002";
const TIMESTAMP: &str = "2026-11-24T03:22:40.123456Z";

/// One payload and the verdict the contract expects for it.
struct Case {
    name: String,
    payload: Vec<u8>,
    valid: bool,
}

fn case(name: impl Into<String>, payload: Value, valid: bool) -> Case {
    Case {
        name: name.into(),
        payload: serde_json::to_vec(&payload).unwrap(),
        valid,
    }
}

fn valid(name: impl Into<String>, payload: Value) -> Case {
    case(name, payload, true)
}

fn invalid(name: impl Into<String>, payload: Value) -> Case {
    case(name, payload, false)
}

fn invalid_bytes(name: &str, payload: &[u8]) -> Case {
    Case {
        name: name.to_owned(),
        payload: payload.to_vec(),
        valid: false,
    }
}

/// The schema and the decoder of one kind of event, side by side.
struct Contract {
    kind: EventKind,
    schema: jsonschema::Validator,
}

impl Contract {
    fn new(kind: EventKind) -> Self {
        let text = match kind {
            EventKind::ThreadCreated => THREAD_CREATED_SCHEMA,
            EventKind::MessagePosted => MESSAGE_POSTED_SCHEMA,
            EventKind::ThreadErased => THREAD_ERASED_SCHEMA,
        };
        let schema: Value = serde_json::from_str(text).expect("the schema file is JSON");
        let schema = jsonschema::validator_for(&schema).expect("the schema compiles");
        Self { kind, schema }
    }

    /// The schema's verdict: bytes that are not JSON fail before any schema applies.
    fn schema_accepts(&self, payload: &[u8]) -> bool {
        serde_json::from_slice::<Value>(payload).is_ok_and(|value| self.schema.is_valid(&value))
    }

    /// The decoder's verdict, for the payload published on thread `THREAD`'s subject.
    fn decoder_accepts(&self, payload: &[u8]) -> bool {
        let subject = Subjects::default().event(Uuid::parse_str(THREAD).unwrap(), self.kind);
        Event::decode(&Subjects::default(), &subject, None, None, payload).is_ok()
    }

    /// Checks every case and reports all disagreements at once.
    fn assert_verdicts(&self, cases: &[Case]) {
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|case| {
                let schema = self.schema_accepts(&case.payload);
                let decoder = self.decoder_accepts(&case.payload);
                (schema != case.valid || decoder != case.valid).then(|| {
                    format!(
                        "{}: expected valid={}, schema says {schema}, decoder says {decoder}: {}",
                        case.name,
                        case.valid,
                        String::from_utf8_lossy(&case.payload)
                    )
                })
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} {} cases disagree:\n{}",
            failures.len(),
            cases.len(),
            self.kind.name(),
            failures.join("\n")
        );
    }
}

fn thread_created() -> Value {
    json!({"id": THREAD, "user": {"name": "Ada", "email": "ada@example.com"}, "timestamp": TIMESTAMP})
}

fn message_posted() -> Value {
    json!({
        "id": MESSAGE,
        "user": {"name": "Agent Smith", "slack_id": "U123"},
        "timestamp": TIMESTAMP,
        "body": "Hello from Slack",
        "send_by_user": false,
        "thread": THREAD,
    })
}

fn thread_erased() -> Value {
    json!({"thread": THREAD, "timestamp": TIMESTAMP})
}

fn with(mut payload: Value, field: &str, value: Value) -> Value {
    payload
        .as_object_mut()
        .unwrap()
        .insert(field.to_owned(), value);
    payload
}

fn without(mut payload: Value, field: &str) -> Value {
    payload.as_object_mut().unwrap().remove(field);
    payload
}

/// Payloads that are not a JSON object, for either kind of event.
fn non_objects() -> Vec<Case> {
    vec![
        invalid("array", json!([1, 2])),
        invalid(
            "array in the fields' order",
            json!([THREAD, "Ada", TIMESTAMP]),
        ),
        invalid("string", json!("hello")),
        invalid("number", json!(1)),
        invalid("null", Value::Null),
        invalid("boolean", json!(true)),
        invalid("empty object", json!({})),
        invalid_bytes("not JSON", b"{not json"),
        invalid_bytes("empty payload", b""),
        invalid_bytes("invalid UTF-8", b"{\"id\": \"\xff\"}"),
    ]
}

/// `user` values, valid or not, that both kinds of event share.
fn users() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("object", json!({"name": "Ada"}), true),
        ("empty object", json!({}), true),
        ("array", json!([1, "two", {"three": null}]), true),
        ("empty array", json!([]), true),
        ("string", json!("Ada"), true),
        ("string with spaces around", json!("  Ada  "), true),
        ("zero-width space, not white space", json!("\u{200b}"), true),
        ("number", json!(0), true),
        ("false", json!(false), true),
        ("null inside an object", json!({"name": null}), true),
        ("null", Value::Null, false),
        ("empty string", json!(""), false),
        ("spaces", json!("  "), false),
        (
            "python white space",
            json!("\t\n\u{b}\u{c}\r\u{1c}\u{85}\u{a0}\u{3000}"),
            false,
        ),
        ("NUL string", json!("\u{0}"), false),
        ("NUL in a string", json!("Ad\u{0}a"), false),
        ("NUL in a key", json!({"na\u{0}me": "Ada"}), false),
        ("NUL in a value", json!({"name": "Ad\u{0}a"}), false),
        (
            "NUL in a nested key",
            json!({"a": [{"b": {"c\u{0}": 1}}]}),
            false,
        ),
        (
            "NUL in a nested value",
            json!({"a": [{"b": ["x", "y\u{0}"]}]}),
            false,
        ),
        ("NUL in an array", json!([["\u{0}"]]), false),
    ]
}

/// Timestamps, valid or not, that both kinds of event share.
fn timestamps() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("contract form", json!(TIMESTAMP), true),
        ("zero fraction", json!("2026-11-24T03:22:40.000000Z"), true),
        (
            "last microsecond of a year",
            json!("1999-12-31T23:59:59.999999Z"),
            true,
        ),
        (
            "31st of a long month",
            json!("2026-01-31T00:00:00.000000Z"),
            true,
        ),
        (
            "30th of a short month",
            json!("2026-04-30T00:00:00.000000Z"),
            true,
        ),
        (
            "29 February of a leap year",
            json!("2024-02-29T12:00:00.000000Z"),
            true,
        ),
        (
            "29 February of a 400th year",
            json!("2000-02-29T12:00:00.000000Z"),
            true,
        ),
        (
            "29 February of year 0",
            json!("0000-02-29T12:00:00.000000Z"),
            true,
        ),
        (
            "29 February of a common year",
            json!("2026-02-29T12:00:00.000000Z"),
            false,
        ),
        (
            "29 February of a century",
            json!("1900-02-29T12:00:00.000000Z"),
            false,
        ),
        ("30 February", json!("2024-02-30T12:00:00.000000Z"), false),
        (
            "31st of a short month",
            json!("2026-04-31T00:00:00.000000Z"),
            false,
        ),
        ("month 13", json!("2026-13-01T00:00:00.000000Z"), false),
        ("month 0", json!("2026-00-01T00:00:00.000000Z"), false),
        ("day 0", json!("2026-11-00T00:00:00.000000Z"), false),
        ("hour 24", json!("2026-11-24T24:00:00.000000Z"), false),
        ("minute 60", json!("2026-11-24T03:60:00.000000Z"), false),
        ("no fraction", json!("2026-11-24T03:22:40Z"), false),
        ("milliseconds", json!("2026-11-24T03:22:40.123Z"), false),
        (
            "nanoseconds",
            json!("2026-11-24T03:22:40.123456789Z"),
            false,
        ),
        ("space for T", json!("2026-11-24 03:22:40.123456Z"), false),
        ("lower-case t", json!("2026-11-24t03:22:40.123456Z"), false),
        ("lower-case z", json!("2026-11-24T03:22:40.123456z"), false),
        ("offset", json!("2026-11-24T03:22:40.123456+00:00"), false),
        ("no zone", json!("2026-11-24T03:22:40.123456"), false),
        (
            "comma for point",
            json!("2026-11-24T03:22:40,123456Z"),
            false,
        ),
        (
            "trailing newline",
            json!("2026-11-24T03:22:40.123456Z\n"),
            false,
        ),
        (
            "leading space",
            json!(" 2026-11-24T03:22:40.123456Z"),
            false,
        ),
        (
            "non-ASCII digits",
            json!("٢٠٢٦-11-24T03:22:40.123456Z"),
            false,
        ),
        ("date only", json!("2026-11-24"), false),
        ("signed year", json!("+026-11-24T03:22:40.123456Z"), false),
        ("negative year", json!("-026-11-24T03:22:40.123456Z"), false),
        (
            "space-padded year",
            json!(" 026-11-24T03:22:40.123456Z"),
            false,
        ),
        (
            "space-padded day",
            json!("2026-11- 4T03:22:40.123456Z"),
            false,
        ),
        (
            "space-padded second",
            json!("2026-11-24T03:22: 0.123456Z"),
            false,
        ),
        ("leap second", json!("2026-12-31T23:59:60.000000Z"), false),
        ("empty", json!(""), false),
        ("unix seconds", json!(1_795_576_960), false),
        ("null", Value::Null, false),
    ]
}

/// Ids, valid or not, for every UUID field.
fn uuids() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("upper case", json!(THREAD.to_uppercase()), false),
        ("no hyphens", json!(THREAD.replace('-', "")), false),
        ("braces", json!(format!("{{{THREAD}}}")), false),
        ("urn", json!(format!("urn:uuid:{THREAD}")), false),
        ("trailing newline", json!(format!("{THREAD}\n")), false),
        ("too short", json!(&THREAD[1..]), false),
        ("not hex", json!(THREAD.replace('a', "g")), false),
        ("number", json!(42), false),
        ("null", Value::Null, false),
    ]
}

#[test]
fn schemas_are_draft_2020_12_with_an_id_a_title_and_described_fields() {
    for text in [
        THREAD_CREATED_SCHEMA,
        MESSAGE_POSTED_SCHEMA,
        THREAD_ERASED_SCHEMA,
    ] {
        let schema: Value = serde_json::from_str(text).unwrap();
        assert!(jsonschema::meta::is_valid(&schema), "{}", schema["$id"]);
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert!(schema["$id"].is_string() && schema["title"].is_string());
        assert_eq!(schema["additionalProperties"], false);
        let properties = schema["properties"].as_object().unwrap();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            properties.keys().map(String::as_str).collect::<Vec<_>>(),
            required,
            "every field is required, in payload order"
        );
        for (field, property) in properties {
            assert!(property["description"].is_string(), "{field}");
        }
    }
}

#[test]
fn thread_created_schema_agrees_with_the_decoder() {
    let mut cases = vec![valid("contract example", thread_created())];
    for field in ["id", "user", "timestamp"] {
        cases.push(invalid(
            format!("{field} missing"),
            without(thread_created(), field),
        ));
    }
    for (name, id, ok) in uuids() {
        assert!(!ok);
        cases.push(invalid(
            format!("id {name}"),
            with(thread_created(), "id", id),
        ));
    }
    for (name, user, ok) in users() {
        cases.push(case(
            format!("user {name}"),
            with(thread_created(), "user", user),
            ok,
        ));
    }
    for (name, timestamp, ok) in timestamps() {
        cases.push(case(
            format!("timestamp {name}"),
            with(thread_created(), "timestamp", timestamp),
            ok,
        ));
    }
    cases.push(invalid(
        "extra field",
        with(thread_created(), "messages", json!([])),
    ));
    cases.push(invalid(
        "a message's fields",
        with(thread_created(), "body", json!("hi")),
    ));
    cases.extend(non_objects());
    Contract::new(EventKind::ThreadCreated).assert_verdicts(&cases);
}

#[test]
fn thread_erased_schema_agrees_with_the_decoder() {
    let mut cases = vec![valid("an erasure", thread_erased())];
    for field in ["thread", "timestamp"] {
        cases.push(invalid(
            format!("{field} missing"),
            without(thread_erased(), field),
        ));
    }
    for (name, id, ok) in uuids() {
        assert!(!ok);
        cases.push(invalid(
            format!("thread {name}"),
            with(thread_erased(), "thread", id),
        ));
    }
    for (name, timestamp, ok) in timestamps() {
        cases.push(case(
            format!("timestamp {name}"),
            with(thread_erased(), "timestamp", timestamp),
            ok,
        ));
    }
    cases.push(invalid(
        "the visitor's user",
        with(thread_erased(), "user", json!({"name": "Ada"})),
    ));
    cases.push(invalid(
        "an id of its own",
        with(thread_erased(), "id", json!(MESSAGE)),
    ));
    cases.push(invalid(
        "a creation's fields",
        json!({"id": THREAD, "timestamp": TIMESTAMP}),
    ));
    cases.extend(non_objects());
    Contract::new(EventKind::ThreadErased).assert_verdicts(&cases);
}

#[test]
fn message_posted_schema_agrees_with_the_decoder() {
    let mut cases = vec![
        valid("agent reply", message_posted()),
        valid(
            "visitor message",
            with(message_posted(), "send_by_user", json!(true)),
        ),
        valid(
            "body with spaces around",
            with(message_posted(), "body", json!("  hi\n")),
        ),
        valid(
            "body of one digit",
            with(message_posted(), "body", json!("0")),
        ),
        valid(
            "body of a zero-width space",
            with(message_posted(), "body", json!("\u{200b}")),
        ),
        valid(
            "body with emoji",
            with(message_posted(), "body", json!("👍")),
        ),
    ];
    for field in ["id", "user", "timestamp", "body", "send_by_user", "thread"] {
        cases.push(invalid(
            format!("{field} missing"),
            without(message_posted(), field),
        ));
    }
    for (name, id, ok) in uuids() {
        assert!(!ok);
        cases.push(invalid(
            format!("id {name}"),
            with(message_posted(), "id", id.clone()),
        ));
        cases.push(invalid(
            format!("thread {name}"),
            with(message_posted(), "thread", id),
        ));
    }
    for (name, user, ok) in users() {
        cases.push(case(
            format!("user {name}"),
            with(message_posted(), "user", user),
            ok,
        ));
    }
    for (name, timestamp, ok) in timestamps() {
        cases.push(case(
            format!("timestamp {name}"),
            with(message_posted(), "timestamp", timestamp),
            ok,
        ));
    }
    for (name, body) in [
        ("empty", json!("")),
        ("spaces", json!("   ")),
        ("line breaks", json!("\n\r\n\t")),
        (
            "python white space",
            json!("\u{1c}\u{1f}\u{85}\u{2028}\u{3000}"),
        ),
        ("NUL", json!("\u{0}")),
        ("NUL in text", json!("hello\u{0}world")),
        ("NUL among spaces", json!(" \u{0} ")),
        ("number", json!(5)),
        ("null", Value::Null),
        ("array", json!(["hi"])),
        ("object", json!({"text": "hi"})),
        ("boolean", json!(true)),
    ] {
        cases.push(invalid(
            format!("body {name}"),
            with(message_posted(), "body", body),
        ));
    }
    for (name, flag) in [
        ("string", json!("false")),
        ("number", json!(0)),
        ("null", Value::Null),
    ] {
        cases.push(invalid(
            format!("send_by_user {name}"),
            with(message_posted(), "send_by_user", flag),
        ));
    }
    cases.push(invalid(
        "extra field",
        with(message_posted(), "edited", json!(false)),
    ));
    cases.extend(non_objects());
    Contract::new(EventKind::MessagePosted).assert_verdicts(&cases);
}

#[test]
fn white_space_and_nul_mean_the_same_to_schema_and_decoder() {
    let messages = Contract::new(EventKind::MessagePosted);
    let threads = Contract::new(EventKind::ThreadCreated);
    // Unicode's white space ends at U+3000; a few characters beyond stand for the rest.
    let beyond = ['\u{feff}', '\u{ffff}', '\u{1f44d}', '\u{e0020}', char::MAX];
    for c in ('\0'..='\u{30ff}').chain(beyond) {
        let text = c.to_string();
        let message = serde_json::to_vec(&with(message_posted(), "body", json!(text))).unwrap();
        let verdict = messages.decoder_accepts(&message);
        assert_eq!(verdict, !(is_python_space(c) || c == '\0'), "body {c:?}");
        assert_eq!(messages.schema_accepts(&message), verdict, "body {c:?}");
        let thread = serde_json::to_vec(&with(thread_created(), "user", json!(text))).unwrap();
        assert_eq!(threads.schema_accepts(&thread), verdict, "user {c:?}");
        assert_eq!(threads.decoder_accepts(&thread), verdict, "user {c:?}");
    }
}

#[test]
fn message_read_by_the_crate_is_published_as_a_valid_payload() {
    let contract = Contract::new(EventKind::MessagePosted);
    let message: MessagePosted = serde_json::from_value(message_posted()).unwrap();
    let payload = Event::MessagePosted(message).to_payload();
    assert!(contract.schema_accepts(&payload));
    assert!(contract.decoder_accepts(&payload));
    assert_eq!(payload, serde_json::to_vec(&message_posted()).unwrap());
}

#[test]
fn events_built_by_the_crate_validate() {
    let thread = new_id();
    let user = UserJson::parse(&json!({"name": "Ada", "tags": ["vip"]})).unwrap();
    let events = [
        Event::ThreadCreated(ThreadCreated {
            id: thread,
            user: user.clone(),
            timestamp: Timestamp::now(),
        }),
        Event::MessagePosted(MessagePosted {
            id: new_id(),
            user,
            timestamp: Timestamp::now(),
            body: MessageBody::parse(&json!("  Thanks, that helped! ")).unwrap(),
            send_by_user: true,
            thread,
        }),
        Event::ThreadErased(ThreadErased {
            thread,
            timestamp: Timestamp::now(),
        }),
    ];
    for event in events {
        let contract = Contract::new(event.kind());
        let payload = event.to_payload();
        let value: Value = serde_json::from_slice(&payload).unwrap();
        assert!(contract.schema.is_valid(&value), "{value}");
        let subject = Subjects::default().event(thread, event.kind());
        assert_eq!(
            Event::decode(&Subjects::default(), &subject, None, None, &payload),
            Ok(event)
        );
    }
}

/// A JSON Schema sees the parsed payload alone; the schemas' descriptions name these rules.
#[test]
fn rules_beyond_a_schema_are_enforced_by_the_decoder() {
    let contract = Contract::new(EventKind::MessagePosted);
    let repeated = format!(
        r#"{{"id":"{MESSAGE}","id":"{MESSAGE}","user":"Ada","timestamp":"{TIMESTAMP}","body":"hi","send_by_user":true,"thread":"{THREAD}"}}"#
    );
    assert!(contract.schema_accepts(repeated.as_bytes()));
    assert!(!contract.decoder_accepts(repeated.as_bytes()));

    let other_thread = serde_json::to_vec(&with(
        message_posted(),
        "thread",
        json!("00000000-0000-1000-8000-000000000000"),
    ))
    .unwrap();
    assert!(contract.schema_accepts(&other_thread));
    assert!(!contract.decoder_accepts(&other_thread));

    let nul_behind_a_repeated_key = format!(
        r#"{{"id":"{MESSAGE}","user":{{"a":"\u0000","a":"x"}},"timestamp":"{TIMESTAMP}","body":"hi","send_by_user":true,"thread":"{THREAD}"}}"#
    );
    assert!(contract.schema_accepts(nul_behind_a_repeated_key.as_bytes()));
    assert!(!contract.decoder_accepts(nul_behind_a_repeated_key.as_bytes()));
}

#[test]
fn publishing_guide_example_is_a_valid_message() {
    let guide = include_str!("../PUBLISHING.md");
    let line = |prefix: &str| {
        guide
            .lines()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("PUBLISHING.md has a line starting {prefix:?}"))
    };
    let subject = line("chat.thread.");
    let payload = line("{\"id\":");
    let message_id = line("Nats-Msg-Id: ").trim_start_matches("Nats-Msg-Id: ");
    let event = Event::decode(
        &Subjects::default(),
        subject,
        Some(line("Threadline-Event: ").trim_start_matches("Threadline-Event: ")),
        Some(line("Threadline-Schema-Version: ").trim_start_matches("Threadline-Schema-Version: ")),
        payload.as_bytes(),
    )
    .expect("the example decodes");
    assert_eq!(event.id().to_string(), message_id);
    assert_eq!(event.id().get_version_num(), 1);
    assert_eq!(event.thread().get_version_num(), 1);
    assert_eq!(event.to_payload(), payload.as_bytes());
    assert!(Contract::new(EventKind::MessagePosted).schema_accepts(payload.as_bytes()));
}
