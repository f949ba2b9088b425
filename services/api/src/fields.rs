//! The request fields, parsed as the original DRF serializers parsed them, with DRF's texts.
//! Every contract error about a field comes from here.

use crate::request::is_python_int;
use proto_events::{BodyError, MessageBody, UserError, UserJson};
use serde_json::{Map, Value};
use uuid::Uuid;

pub const REQUIRED: &str = "This field is required.";
pub const NULL: &str = "This field may not be null.";
pub const BLANK: &str = "This field may not be blank.";
pub const NUL_CHARACTERS: &str = "Null characters are not allowed.";
pub const NOT_A_STRING: &str = "Not a valid string.";
pub const NOT_A_BOOLEAN: &str = "Must be a valid boolean.";
/// DRF's `JSONField` text; a value parsed from the request always serialises again, so this
/// is not expected in practice.
pub const INVALID_JSON: &str = "Value must be valid JSON.";

/// `user`: any JSON value but null or a blank string.
pub fn user(data: &Map<String, Value>) -> Result<UserJson, &'static str> {
    let value = data.get("user").ok_or(REQUIRED)?;
    UserJson::parse(value).map_err(|e| match e {
        UserError::Null => NULL,
        UserError::Blank => BLANK,
        UserError::NulCharacter => NUL_CHARACTERS,
        UserError::InvalidJson => INVALID_JSON,
    })
}

/// `body`: a string (or a number, taken as its text), trimmed, not blank.
pub fn body(data: &Map<String, Value>) -> Result<MessageBody, &'static str> {
    let value = data.get("body").ok_or(REQUIRED)?;
    MessageBody::parse(value).map_err(|e| match e {
        BodyError::Null => NULL,
        BodyError::Blank => BLANK,
        BodyError::NotAString => NOT_A_STRING,
        BodyError::NulCharacter => NUL_CHARACTERS,
    })
}

/// `send_by_user`: optional, default false; DRF's `BooleanField` spellings.
pub fn send_by_user(data: &Map<String, Value>) -> Result<bool, &'static str> {
    const TRUE: [&str; 6] = ["1", "t", "y", "yes", "true", "on"];
    const FALSE: [&str; 6] = ["0", "f", "n", "no", "false", "off"];
    match data.get("send_by_user") {
        None => Ok(false),
        Some(Value::Null) => Err(NULL),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(1.0) => Ok(true),
            Some(0.0) => Ok(false),
            _ => Err(NOT_A_BOOLEAN),
        },
        Some(Value::String(s)) => {
            let s = s.to_lowercase();
            if TRUE.contains(&s.as_str()) {
                Ok(true)
            } else if FALSE.contains(&s.as_str()) {
                Ok(false)
            } else {
                Err(NOT_A_BOOLEAN)
            }
        }
        Some(Value::Array(_) | Value::Object(_)) => Err(NOT_A_BOOLEAN),
    }
}

/// A `thread` reference that parsed as a UUID; whether the thread exists is asked next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRef {
    pub id: Uuid,
    /// The value as sent, as Python's `str()` shows it (for the "does not exist" error).
    pub as_sent: String,
}

impl ThreadRef {
    /// DRF's error for a well-formed id that names no thread.
    pub fn does_not_exist(&self) -> String {
        format!("Invalid pk \"{}\" - object does not exist.", self.as_sent)
    }
}

/// A thread that holds `most` messages already (`THREAD_MAX_MESSAGES`), in the words of
/// Django's length validators.
pub fn thread_full(most: u64) -> String {
    format!("Ensure this thread has no more than {most} messages.")
}

/// `thread`: a primary key, parsed as Django's `UUIDField` parses it.
pub fn thread(data: &Map<String, Value>) -> Result<ThreadRef, String> {
    let value = data.get("thread").ok_or(REQUIRED)?;
    let as_sent = python_str(value);
    let not_a_uuid = || format!("\u{201c}{as_sent}\u{201d} is not a valid UUID.");
    let id = match value {
        Value::Null => return Err(NULL.into()),
        Value::String(s) if s.is_empty() => return Err(NULL.into()),
        Value::Bool(_) => return Err("Incorrect type. Expected pk value, received bool.".into()),
        Value::String(s) => python_uuid_from_hex(s).ok_or_else(not_a_uuid)?,
        Value::Number(n) if is_python_int(n) => n
            .to_string()
            .parse::<u128>()
            .map(Uuid::from_u128)
            .map_err(|_| not_a_uuid())?,
        Value::Number(_) | Value::Array(_) | Value::Object(_) => return Err(not_a_uuid()),
    };
    Ok(ThreadRef { id, as_sent })
}

/// Python's `uuid.UUID(hex=...)`: drops `urn:` and `uuid:`, surrounding braces and every
/// hyphen; then 32 characters that `int(_, 16)` reads as a number below 2**128.
fn python_uuid_from_hex(text: &str) -> Option<Uuid> {
    let hex = text.replace("urn:", "").replace("uuid:", "");
    let hex = hex.trim_matches(['{', '}']).replace('-', "");
    if hex.chars().count() != 32 {
        return None;
    }
    python_int_base16(&hex).map(Uuid::from_u128)
}

/// Python's `int(text, 16)` for a value that must fit 128 bits and not be negative: white
/// space around, an optional `+`, an optional `0x`, single underscores between digits.
fn python_int_base16(text: &str) -> Option<u128> {
    let text = text.trim_matches(proto_events::is_python_space);
    let text = text.strip_prefix('+').unwrap_or(text);
    let (text, had_prefix) = match text.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("0x") => (&text[2..], true),
        _ => (text, false),
    };
    let mut value: u128 = 0;
    let mut previous_was_digit = false;
    for (i, c) in text.chars().enumerate() {
        if c == '_' {
            // After `0x` an underscore may come first; otherwise only between digits.
            if !(previous_was_digit || (had_prefix && i == 0)) {
                return None;
            }
            previous_was_digit = false;
            continue;
        }
        let digit = c.to_digit(16)?;
        value = value.checked_mul(16)?.checked_add(digit as u128)?;
        previous_was_digit = true;
    }
    previous_was_digit.then_some(value)
}

/// Python's `str()` of what `json.loads` made of this value.
pub fn python_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => proto_events::body::python_number_text(n),
        Value::String(s) => python_repr_str(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", python_repr_str(k), python_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn python_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    const ID: &str = "4b0e1d4a-c9a6-11ee-8c90-0242ac120002";

    #[test]
    fn user_follows_the_contract() {
        assert_eq!(user(&data(json!({}))).unwrap_err(), REQUIRED);
        assert_eq!(user(&data(json!({"user": null}))).unwrap_err(), NULL);
        assert_eq!(user(&data(json!({"user": ""}))).unwrap_err(), BLANK);
        assert_eq!(user(&data(json!({"user": "  "}))).unwrap_err(), BLANK);
        assert_eq!(
            user(&data(json!({"user": {"a\u{0}": 1}}))).unwrap_err(),
            NUL_CHARACTERS
        );
        assert_eq!(user(&data(json!({"user": 42}))).unwrap().get(), "42");
    }

    #[test]
    fn body_follows_the_contract() {
        assert_eq!(body(&data(json!({}))).unwrap_err(), REQUIRED);
        assert_eq!(body(&data(json!({"body": null}))).unwrap_err(), NULL);
        assert_eq!(body(&data(json!({"body": " "}))).unwrap_err(), BLANK);
        assert_eq!(
            body(&data(json!({"body": false}))).unwrap_err(),
            NOT_A_STRING
        );
        assert_eq!(
            body(&data(json!({"body": ["a"]}))).unwrap_err(),
            NOT_A_STRING
        );
        assert_eq!(
            body(&data(json!({"body": "a\u{0}"}))).unwrap_err(),
            NUL_CHARACTERS
        );
        assert_eq!(body(&data(json!({"body": " hi "}))).unwrap().as_str(), "hi");
        assert_eq!(body(&data(json!({"body": 5}))).unwrap().as_str(), "5");
    }

    #[test]
    fn send_by_user_takes_drf_spellings() {
        for truthy in [
            json!(true),
            json!(1),
            json!("1"),
            json!("T"),
            json!("y"),
            json!("Yes"),
            json!("TRUE"),
            json!("on"),
        ] {
            assert_eq!(
                send_by_user(&data(json!({"send_by_user": truthy.clone()}))),
                Ok(true),
                "{truthy}"
            );
        }
        for falsy in [
            json!(false),
            json!(0),
            json!("0"),
            json!("f"),
            json!("N"),
            json!("no"),
            json!("False"),
            json!("OFF"),
        ] {
            assert_eq!(
                send_by_user(&data(json!({"send_by_user": falsy.clone()}))),
                Ok(false),
                "{falsy}"
            );
        }
        assert_eq!(send_by_user(&data(json!({}))), Ok(false));
        assert_eq!(
            send_by_user(&data(json!({"send_by_user": null}))),
            Err(NULL)
        );
        for bad in [json!(2), json!("x"), json!(""), json!([]), json!({})] {
            assert_eq!(
                send_by_user(&data(json!({"send_by_user": bad.clone()}))),
                Err(NOT_A_BOOLEAN),
                "{bad}"
            );
        }
    }

    #[test]
    fn thread_accepts_every_form_python_parses() {
        let want = Uuid::parse_str(ID).unwrap();
        for form in [
            ID.to_owned(),
            ID.to_uppercase(),
            ID.replace('-', ""),
            format!("{{{ID}}}"),
            format!("urn:uuid:{ID}"),
        ] {
            let parsed = thread(&data(json!({"thread": form.clone()}))).unwrap();
            assert_eq!(parsed.id, want, "{form}");
            assert_eq!(parsed.as_sent, form);
        }
        let parsed = thread(&data(json!({"thread": 5}))).unwrap();
        assert_eq!(parsed.id, Uuid::from_u128(5));
        assert_eq!(
            parsed.does_not_exist(),
            "Invalid pk \"5\" - object does not exist."
        );
    }

    #[test]
    fn thread_errors_follow_the_contract() {
        let err = |v: Value| thread(&data(json!({"thread": v}))).unwrap_err();
        assert_eq!(thread(&data(json!({}))).unwrap_err(), REQUIRED);
        assert_eq!(err(Value::Null), NULL);
        assert_eq!(err(json!("")), NULL);
        assert_eq!(
            err(json!(true)),
            "Incorrect type. Expected pk value, received bool."
        );
        assert_eq!(
            err(json!("abc")),
            "\u{201c}abc\u{201d} is not a valid UUID."
        );
        assert_eq!(err(json!(-1)), "\u{201c}-1\u{201d} is not a valid UUID.");
        assert_eq!(err(json!(1.5)), "\u{201c}1.5\u{201d} is not a valid UUID.");
        assert_eq!(
            err(json!(["a", 1])),
            "\u{201c}['a', 1]\u{201d} is not a valid UUID."
        );
        assert_eq!(
            err(json!({"k": null})),
            "\u{201c}{'k': None}\u{201d} is not a valid UUID."
        );
        assert_eq!(
            err(json!(format!("{ID}0"))),
            format!("\u{201c}{ID}0\u{201d} is not a valid UUID.")
        );
    }

    #[test]
    fn a_thread_that_is_a_list_of_strings_is_shown_as_python_shows_it() {
        // Python 3: str(["it's", 'a\'b"', '\x01', 'a b', '\x7f', 'tab\t', 'back\\slash', 'nl\n'])
        let value = json!([
            "it's",
            "a'b\"",
            "\u{1}",
            "a b",
            "\u{7f}",
            "tab\t",
            "back\\slash",
            "nl\n"
        ]);
        assert_eq!(
            python_str(&value),
            r#"["it's", 'a\'b"', '\x01', 'a b', '\x7f', 'tab\t', 'back\\slash', 'nl\n']"#
        );
    }

    #[test]
    fn python_int_parsing_edges() {
        assert_eq!(python_int_base16("ff"), Some(255));
        assert_eq!(python_int_base16(" +f_f "), Some(255));
        assert_eq!(python_int_base16("0x_ff"), Some(255));
        assert_eq!(python_int_base16("f__f"), None);
        assert_eq!(python_int_base16("_ff"), None);
        assert_eq!(python_int_base16("ff_"), None);
        assert_eq!(python_int_base16("-ff"), None);
        assert_eq!(python_int_base16(""), None);
    }
}
