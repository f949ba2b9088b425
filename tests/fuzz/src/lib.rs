//! What the fuzz targets share: how an input is cut into the parts a target feeds to the code
//! under test.
//!
//! Every target reads its input as lines: the first few lines are short values (a subject, a
//! header, a query string) and the rest of the input, newlines included, is the last part (a
//! payload, a request body). Seeds are then plain text files that a person can read and
//! write, and libFuzzer's mutations of one part rarely spill into another.

/// Cuts `data` into its first `N` lines (without their `\n`) and the rest. Missing lines are
/// empty.
pub fn split<const N: usize>(data: &[u8]) -> ([&[u8]; N], &[u8]) {
    let mut lines = [&data[..0]; N];
    let mut rest = data;
    for line in lines.iter_mut() {
        match rest.iter().position(|b| *b == b'\n') {
            Some(end) => {
                *line = &rest[..end];
                rest = &rest[end + 1..];
            }
            None => {
                *line = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    (lines, rest)
}

/// A header or parameter that may be absent: a line of exactly `-` means absent.
pub fn optional(line: &[u8]) -> Option<&[u8]> {
    (line != b"-").then_some(line)
}

/// A line as text, as it would arrive from a library that hands over `&str`.
pub fn text(line: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_then_the_rest() {
        let (lines, rest) = split::<2>(b"a\nb\nc\nd");
        assert_eq!(lines, [&b"a"[..], &b"b"[..]]);
        assert_eq!(rest, b"c\nd");
        let (lines, rest) = split::<3>(b"a");
        assert_eq!(lines, [&b"a"[..], &b""[..], &b""[..]]);
        assert_eq!(rest, b"");
        assert_eq!(optional(b"-"), None);
        assert_eq!(optional(b""), Some(&b""[..]));
    }
}
