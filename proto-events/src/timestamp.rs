//! Timestamps as the contract shows them: UTC, ISO 8601, microseconds, `Z`.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// A point in time with microsecond precision, written `2026-11-24T03:22:40.123456Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to microseconds.
    pub fn now() -> Self {
        Self(Utc::now().trunc_subsecs(6))
    }

    /// Parses exactly the contract's format; anything else is refused.
    pub fn parse(text: &str) -> Option<Self> {
        // chrono alone would also take signs, spaces and single digits in some places, and
        // write them back differently: the shape is checked byte by byte first.
        const SHAPE: &[u8; 27] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
        let bytes = text.as_bytes();
        if bytes.len() != SHAPE.len()
            || !bytes.iter().zip(SHAPE).all(|(b, s)| match s {
                b'd' => b.is_ascii_digit(),
                other => b == other,
            })
        {
            return None;
        }
        let naive = NaiveDateTime::parse_from_str(text, FORMAT).ok()?;
        // A leap second (`:60`) is refused: it cannot be stored and shown again as sent.
        if naive.and_utc().timestamp_subsec_nanos() >= 1_000_000_000 {
            return None;
        }
        Some(Self(naive.and_utc()))
    }

    /// The time as a chrono value (for storage).
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(6))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.format(FORMAT))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "timestamp {text:?} is not in the form YYYY-MM-DDTHH:MM:SS.ffffffZ"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_microseconds_and_z() {
        let ts = Timestamp::parse("2026-11-24T03:22:40.123456Z").unwrap();
        assert_eq!(ts.to_string(), "2026-11-24T03:22:40.123456Z");
        assert_eq!(
            Timestamp::parse("2026-11-24T03:22:40.000000Z")
                .unwrap()
                .to_string(),
            "2026-11-24T03:22:40.000000Z"
        );
    }

    #[test]
    fn now_round_trips() {
        let now = Timestamp::now();
        assert_eq!(Timestamp::parse(&now.to_string()), Some(now));
    }

    #[test]
    fn other_forms_are_refused() {
        for text in [
            "2026-11-24T03:22:40Z",
            "2026-11-24T03:22:40.123Z",
            "2026-11-24 03:22:40.123456Z",
            "2026-11-24T03:22:40.123456+00:00",
            "2026-11-24T03:22:40.123456",
            "2026-13-24T03:22:40.123456Z",
            "+026-11-24T03:22:40.123456Z",
            " 026-11-24T03:22:40.123456Z",
            "2026-11- 4T03:22:40.123456Z",
            "2026-11-24T03:22: 0.123456Z",
            "2026-11-24T23:59:60.000000Z",
            "",
        ] {
            assert_eq!(Timestamp::parse(text), None, "{text}");
        }
    }
}
