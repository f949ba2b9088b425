//! Timestamps as the contract shows them: UTC, ISO 8601, microseconds, `Z`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound, Utc};
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
        // The shape holds, so each field is its digits; chrono checks the calendar. A leap
        // second (`:60`) is refused: it cannot be stored and shown again as sent.
        let number = |at: std::ops::Range<usize>| {
            bytes[at]
                .iter()
                .fold(0u32, |n, digit| n * 10 + u32::from(digit - b'0'))
        };
        let date = NaiveDate::from_ymd_opt(number(0..4) as i32, number(5..7), number(8..10))?;
        let time = NaiveTime::from_hms_micro_opt(
            number(11..13),
            number(14..16),
            number(17..19),
            number(20..26),
        )?;
        Some(Self(NaiveDateTime::new(date, time).and_utc()))
    }

    /// The contract's text of the timestamp, as ASCII, written digit by digit; `None` for a
    /// time that text cannot hold in 27 bytes (a year outside 0 to 9999, a leap second).
    pub fn ascii(&self) -> Option<[u8; 27]> {
        use chrono::{Datelike, Timelike};
        let t = &self.0;
        let micros = t.nanosecond() / 1_000;
        if !(0..=9999).contains(&t.year()) || micros >= 1_000_000 {
            return None;
        }
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        for (value, at, width) in [
            (t.year() as u32, 0, 4),
            (t.month(), 5, 2),
            (t.day(), 8, 2),
            (t.hour(), 11, 2),
            (t.minute(), 14, 2),
            (t.second(), 17, 2),
            (micros, 20, 6),
        ] {
            let mut value = value;
            for digit in out[at..at + width].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Some(out)
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
        use chrono::{Datelike, Timelike};
        let t = &self.0;
        // Written digit by digit (chrono's `format` parses its pattern on every call).
        if let Some(text) = self.ascii() {
            return f.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?);
        }
        // A year that `%Y` writes otherwise than four digits goes through chrono.
        if !(0..=9999).contains(&t.year()) {
            return write!(f, "{}", t.format(FORMAT));
        }
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 1_000
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.ascii() {
            Some(text) => match std::str::from_utf8(&text) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => serializer.collect_str(self),
            },
            None => serializer.collect_str(self),
        }
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
            "2026-02-29T00:00:00.000000Z",
            "2028-02-30T00:00:00.000000Z",
            "2026-11-31T00:00:00.000000Z",
            "2026-11-24T24:00:00.000000Z",
            "2026-11-24T23:60:00.000000Z",
            "2026-00-24T00:00:00.000000Z",
            "2026-11-00T00:00:00.000000Z",
            "",
        ] {
            assert_eq!(Timestamp::parse(text), None, "{text}");
        }
    }

    #[test]
    fn written_and_read_as_chrono_writes_and_reads_the_format() {
        let mut seconds: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
        while seconds < 253_402_300_800 {
            // up to 9999-12-31
            for micros in [0, 1, 999_999, (seconds.unsigned_abs() % 1_000_000) as u32] {
                let t = DateTime::from_timestamp(seconds, micros * 1_000).unwrap();
                let by_chrono = t.format(FORMAT).to_string();
                let ours = Timestamp(t);
                assert_eq!(ours.to_string(), by_chrono);
                assert_eq!(
                    serde_json::to_string(&ours).ok(),
                    Some(format!("\"{by_chrono}\""))
                );
                assert_eq!(
                    ours.ascii().map(|a| a.to_vec()),
                    Some(by_chrono.into_bytes())
                );
                assert_eq!(Timestamp::parse(&ours.to_string()), Some(ours));
            }
            seconds += 7_777_777;
        }
        assert_eq!(
            Timestamp::parse("2028-02-29T23:59:59.999999Z")
                .unwrap()
                .to_string(),
            "2028-02-29T23:59:59.999999Z"
        );
        // Years that `%Y` writes otherwise still go through chrono.
        let far = Timestamp(DateTime::from_timestamp(253_402_300_800, 0).unwrap());
        assert_eq!(far.to_string(), far.0.format(FORMAT).to_string());
    }
}
