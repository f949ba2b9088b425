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
        serde_json::from_str::<UniqueKeys>(text).map_err(|_| UserError::InvalidJson)?;
        let value: Value = serde_json::from_str(text).map_err(|_| UserError::InvalidJson)?;
        check(&value)?;
        RawValue::from_string(text.to_owned())
            .map(Self)
            .map_err(|_| UserError::InvalidJson)
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

/// A JSON value read only to check that no object in it repeats a key.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("repeated key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
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
        UserJson::from_json(raw.get()).map_err(serde::de::Error::custom)
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
