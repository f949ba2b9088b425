//! The values the settings of the adapters and of the roles are made of: durations and sizes
//! as an operator writes them.

use std::time::Duration;

/// A size in bytes; `None` is no limit.
pub type ByteSize = Option<u64>;

/// Parses `0` (no limit), `1048576`, `512MB`, `50GB`, `1GiB`, `10KiB`.
pub fn parse_bytes(text: &str) -> Result<ByteSize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let wrong = || format!("{text:?} is not a size like 0, 512MB, 50GB or 1GiB");
    let number: u64 = number.parse().map_err(|_| wrong())?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return Err(wrong()),
    };
    let bytes = number.checked_mul(factor).ok_or_else(wrong)?;
    Ok((bytes > 0).then_some(bytes))
}

/// Parses `250ms`, `5s`, `2m`, `12h`, `30d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        _ => return Err(format!("{text:?} is not a duration like 250ms, 5s or 2m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn sizes_parse_with_units_and_zero_is_no_limit() {
        assert_eq!(parse_bytes("0"), Ok(None));
        assert_eq!(parse_bytes("1048576"), Ok(Some(1_048_576)));
        assert_eq!(parse_bytes("512MB"), Ok(Some(512_000_000)));
        assert_eq!(parse_bytes("1GiB"), Ok(Some(1 << 30)));
        assert_eq!(parse_bytes("10 kib"), Ok(Some(10_240)));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5PB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999GB").is_err());
    }
}
