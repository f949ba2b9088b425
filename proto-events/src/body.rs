//! The body of a message: a string, trimmed, not blank, without NUL characters.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Why a message body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body may not be null")]
    Null,
    #[error("body may not be blank")]
    Blank,
    #[error("body must be a string")]
    NotAString,
    #[error("body may not contain NUL characters")]
    NulCharacter,
}

/// A valid message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBody(String);

impl MessageBody {
    /// Parses a body taken from a request: strings are trimmed of white space (as DRF's
    /// `CharField` does), numbers are accepted as their text (`5` → `"5"`, `1.5` → `"1.5"`).
    pub fn parse(value: &Value) -> Result<Self, BodyError> {
        let text = match value {
            Value::Null => return Err(BodyError::Null),
            Value::String(s) => s.trim_matches(crate::is_python_space).to_owned(),
            Value::Number(n) => python_number_text(n),
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => {
                return Err(BodyError::NotAString)
            }
        };
        Self::new(text)
    }

    /// Checks a body as published in an event: it is stored and shown exactly as published.
    pub fn new(text: String) -> Result<Self, BodyError> {
        if text.chars().all(crate::is_python_space) {
            Err(BodyError::Blank)
        } else if text.contains('\0') {
            Err(BodyError::NulCharacter)
        } else {
            Ok(Self(text))
        }
    }

    /// Takes a body from the read model, which holds only bodies checked on the way in.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// `str()` of the number Python's JSON parser makes of this text: integers keep their digits,
/// everything else becomes a float in Python's shortest `repr`.
pub fn python_number_text(n: &serde_json::Number) -> String {
    let text = n.to_string();
    let is_integer = !text.contains(['.', 'e', 'E']);
    if is_integer {
        return match text.trim_start_matches('-').trim_start_matches('0') {
            "" => "0".to_owned(),
            _ => text,
        };
    }
    match text.parse::<f64>() {
        Ok(f) => python_float_repr(f),
        Err(_) => text,
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional between 1e-4 and 1e16,
/// scientific (`1e+16`, `1e-05`) outside.
pub fn python_float_repr(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let text = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{text}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.abs())
    }
}

impl Serialize for MessageBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MessageBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MessageBody::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<String, BodyError> {
        MessageBody::parse(&value).map(MessageBody::into_string)
    }

    #[test]
    fn strings_are_trimmed() {
        assert_eq!(parse(json!("  hello \n")).unwrap(), "hello");
        assert_eq!(parse(json!("\u{1f}a b\u{a0}")).unwrap(), "a b");
    }

    #[test]
    fn blank_null_and_non_strings_are_refused() {
        assert_eq!(parse(json!("")), Err(BodyError::Blank));
        assert_eq!(parse(json!(" \t\r\n")), Err(BodyError::Blank));
        assert_eq!(parse(Value::Null), Err(BodyError::Null));
        assert_eq!(parse(json!(true)), Err(BodyError::NotAString));
        assert_eq!(parse(json!({})), Err(BodyError::NotAString));
        assert_eq!(parse(json!([1])), Err(BodyError::NotAString));
    }

    #[test]
    fn nul_characters_are_refused() {
        assert_eq!(parse(json!("a\u{0}b")), Err(BodyError::NulCharacter));
        assert_eq!(parse(json!(" \u{0} ")), Err(BodyError::NulCharacter));
    }

    #[test]
    fn numbers_become_their_python_text() {
        let cases = [
            ("5", "5"),
            ("-0", "0"),
            ("1.5", "1.5"),
            ("1.50", "1.5"),
            ("1e5", "100000.0"),
            ("1E16", "1e+16"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("-2.5e-7", "-2.5e-07"),
            ("10.0", "10.0"),
        ];
        for (json_text, want) in cases {
            let value: Value = serde_json::from_str(json_text).unwrap();
            assert_eq!(parse(value).unwrap(), want, "{json_text}");
        }
    }
}
