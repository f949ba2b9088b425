//! Text shown in logs and records, bounded.

/// The most bytes of a set-aside event's reason kept in its record: a parser's message may
/// quote the event at length.
pub const REASON_MAX_BYTES: usize = 300;

/// `text` cut to at most `max` bytes on a character boundary, with `…` (within the bound)
/// where it was cut.
pub fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mark = if max >= "…".len() { "…" } else { "" };
    let mut end = max - mark.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded_text("short", 300), "short");
        let long = "é".repeat(400);
        let cut = bounded_text(&long, 300);
        assert!(cut.len() <= 300, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
        for max in 0..12 {
            assert!(bounded_text("aé€😀aé€😀", max).len() <= max);
        }
    }
}
