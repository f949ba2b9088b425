//! The `user` JSON of threads and messages: any JSON value but `null` or a blank string,
//! kept exactly as sent (key order, numbers as written), without NUL characters.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// Why a `user` value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user may not be null")]
    Null,
    #[error("user may not be a blank string")]
    Blank,
    #[error("user may not contain NUL characters")]
    NulCharacter,
    #[error("user is not valid JSON, or repeats a key within one object")]
    InvalidJson,
}

/// A valid `user` value, held as compact JSON text that is embedded verbatim in every answer.
#[derive(Debug, Clone)]
pub struct UserJson(Box<RawValue>);

impl UserJson {
    /// Parses a `user` value taken from a request body.
    pub fn parse(value: &Value) -> Result<Self, UserError> {
        check(value)?;
        let text = serde_json::to_string(value).map_err(|_| UserError::InvalidJson)?;
        RawValue::from_string(text)
            .map(Self)
            .map_err(|_| UserError::InvalidJson)
    }

    /// Parses `user` JSON text as published. The text is kept as it is, so it must say one
    /// thing only: an object that repeats a key is refused (which value counts would depend on
    /// the reader, and a NUL could hide behind the repeated key).
    pub fn from_json(text: &str) -> Result<Self, UserError> {
        let raw = RawValue::from_string(text.to_owned()).map_err(|_| UserError::InvalidJson)?;
        Self::from_raw(raw)
    }

    /// As [`from_json`](Self::from_json), for text already read as one JSON value.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, UserError> {
        check_text(raw.get())?;
        Ok(Self(raw))
    }

    /// Takes `user` JSON text from the read model, which holds only values checked on the way
    /// in; only its syntax is checked again.
    pub fn from_stored(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for UserJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

fn check(value: &Value) -> Result<(), UserError> {
    match value {
        Value::Null => Err(UserError::Null),
        Value::String(s) if s.chars().all(crate::is_python_space) => Err(UserError::Blank),
        _ if contains_nul(value) => Err(UserError::NulCharacter),
        _ => Ok(()),
    }
}

/// The checks of `check`, made on JSON text in one pass without building a value, and that no
/// object in it repeats a key. The first problem in this order is reported: text that is not
/// JSON or repeats a key, `null`, a blank string, a NUL anywhere (in a key or a string).
fn check_text(text: &str) -> Result<(), UserError> {
    use serde::de::DeserializeSeed;
    let mut nul = false;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = Checked { nul: &mut nul }
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|_| UserError::InvalidJson)?;
    match top {
        Top::Null => Err(UserError::Null),
        Top::Blank => Err(UserError::Blank),
        Top::Other if nul => Err(UserError::NulCharacter),
        Top::Other => Ok(()),
    }
}

/// What a checked value is, as far as `check_text` cares.
enum Top {
    Null,
    Blank,
    Other,
}

/// Reads one JSON value, noting any NUL and refusing an object that repeats a key.
struct Checked<'a> {
    nul: &'a mut bool,
}

/// An object's key, borrowed from the text unless it holds escapes.
struct Key;

impl<'de> serde::de::DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(key.to_owned()))
    }
}

/// More keys than this in one object are remembered in a hash set instead of a list.
const KEYS_IN_A_LIST: usize = 16;

impl<'de> serde::de::DeserializeSeed<'de> for Checked<'_> {
    type Value = Top;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Top, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked<'_> {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Null)
    }

    fn visit_str<E>(self, text: &str) -> Result<Top, E> {
        if text.chars().all(crate::is_python_space) {
            return Ok(Top::Blank);
        }
        *self.nul |= text.contains('\0');
        Ok(Top::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while seq
            .next_element_seed(Checked {
                nul: &mut *self.nul,
            })?
            .is_some()
        {}
        Ok(Top::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut listed: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut hashed = std::collections::HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            *self.nul |= key.contains('\0');
            let repeated = if hashed.is_empty() && listed.len() < KEYS_IN_A_LIST {
                let repeated = listed.contains(&key);
                listed.push(key);
                repeated
            } else {
                hashed.extend(listed.drain(..));
                !hashed.insert(key)
            };
            if repeated {
                return Err(serde::de::Error::custom("repeated key"));
            }
            // A nested blank string or `null` is a value like any other.
            map.next_value_seed(Checked {
                nul: &mut *self.nul,
            })?;
        }
        Ok(Top::Other)
    }
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || contains_nul(item)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

impl Serialize for UserJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for UserJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        UserJson::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<String, UserError> {
        let value: Value = serde_json::from_str(text).unwrap();
        UserJson::parse(&value).map(|u| u.get().to_owned())
    }

    #[test]
    fn keeps_key_order_and_numbers_as_sent() {
        assert_eq!(
            parse(r#"{ "z": 1, "a": [1.50, 1e5, 123456789012345678901234567890], "m": "ü" }"#)
                .unwrap(),
            r#"{"z":1,"a":[1.50,1e+5,123456789012345678901234567890],"m":"ü"}"#
        );
    }

    #[test]
    fn accepts_any_value_but_null_and_blank_strings() {
        for ok in ["{}", "[]", "\"x\"", "42", "true", "\" a \""] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(parse("null"), Err(UserError::Null));
        assert_eq!(parse("\"\""), Err(UserError::Blank));
        assert_eq!(parse("\" \\t\\n\\u001c\""), Err(UserError::Blank));
    }

    #[test]
    fn refuses_nul_in_keys_and_values() {
        assert_eq!(
            UserJson::parse(&json!({"a\u{0}": 1})),
            Err(UserError::NulCharacter).map(|_: ()| unreachable!())
        );
        assert_eq!(parse(r#"{"a": ["x\u0000"]}"#), Err(UserError::NulCharacter));
        assert_eq!(parse(r#""\u0000""#), Err(UserError::NulCharacter));
    }

    #[test]
    fn published_user_may_not_repeat_a_key() {
        assert_eq!(
            UserJson::from_json(r#"{"a":"\u0000","a":"x"}"#),
            Err(UserError::InvalidJson).map(|_: ()| unreachable!())
        );
        assert_eq!(
            UserJson::from_json(r#"[{"b":1,"b":2}]"#).map(|_| ()),
            Err(UserError::InvalidJson)
        );
        assert!(UserJson::from_json(r#"{"a":{"a":1},"b":[{"a":2}]}"#).is_ok());
    }

    #[test]
    fn published_user_text_is_checked_as_a_value_is() {
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        let many = format!("{{{}}}", many.join(","));
        let repeated_late = format!("{},\"k3\":0}}", many.trim_end_matches('}'));
        let cases: Vec<(&str, Result<(), UserError>)> = vec![
            ("123456789012345678901234567890", Ok(())),
            ("1.50", Ok(())),
            (r#"{"a":null,"b":" ","c":[null,""]}"#, Ok(())),
            (r#"[" "]"#, Ok(())),
            (&many, Ok(())),
            (&repeated_late, Err(UserError::InvalidJson)),
            (r#"{"\u0061":1,"a":2}"#, Err(UserError::InvalidJson)),
            (r#"{"a\u0000":1}"#, Err(UserError::NulCharacter)),
            (r#"[{"b":"x\u0000"}]"#, Err(UserError::NulCharacter)),
            (r#""\u0000""#, Err(UserError::NulCharacter)),
            (r#"{"a":"\u0000","b":1,"b":2}"#, Err(UserError::InvalidJson)),
            ("null", Err(UserError::Null)),
            (r#"" \t\u001c""#, Err(UserError::Blank)),
            ("{} x", Err(UserError::InvalidJson)),
            ("{", Err(UserError::InvalidJson)),
        ];
        for (text, expected) in cases {
            assert_eq!(UserJson::from_json(text).map(|_| ()), expected, "{text}");
            // A value without repeated keys gets the same verdict through `parse`.
            if expected != Err(UserError::InvalidJson) {
                let value: Value = serde_json::from_str(text).expect("JSON");
                assert_eq!(UserJson::parse(&value).map(|_| ()), expected, "{text}");
            }
        }
        // Kept exactly as published.
        let spaced = r#"{ "n" : 1.50 }"#;
        assert_eq!(
            UserJson::from_json(spaced).map(|u| u.get().to_owned()),
            Ok(spaced.into())
        );
    }

    #[test]
    fn serialises_verbatim_inside_other_json() {
        let user = UserJson::from_json(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&json!({"user": user.get()})).unwrap(),
            r#"{"user":"{\"b\":2,\"a\":1}"}"#
        );
        #[derive(Serialize)]
        struct Wrap {
            user: UserJson,
        }
        assert_eq!(
            serde_json::to_string(&Wrap { user }).unwrap(),
            r#"{"user":{"b":2,"a":1}}"#
        );
    }
}
