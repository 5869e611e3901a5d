//! Bounded text: cutting strings to a byte budget without splitting a UTF-8 character.

use std::borrow::Cow;

/// How much of a process's stdout or stderr the contract keeps (about 16 KiB).
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// Marker appended to shortened summary fields, so a reader knows the text goes on.
pub const ELLIPSIS: &str = "…";

/// Largest index `<= max` that is a char boundary of `s`.
pub(crate) fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Cuts stdout/stderr to the contract's 16 KiB so `result.json` and status stay bounded.
///
/// See [`truncate_output_to`] for the exact rule.
pub fn truncate_output(text: &str) -> Cow<'_, str> {
    truncate_output_to(text, OUTPUT_LIMIT)
}

/// Cuts `text` to at most `max_bytes` bytes (UTF-8), keeping the beginning like the seeds'
/// runner does and ending with a line that says how many bytes were left out.
///
/// The cut prefers the last line break that still fits, so partial lines are only produced
/// when a single line is longer than the budget; it never splits a character. When even the
/// marker does not fit, the text is simply cut at a character boundary.
pub fn truncate_output_to(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    // The marker's length depends on the number it carries; reserve room for the worst case
    // (everything omitted) plus a line break, so the result never exceeds the budget.
    let reserve = omitted_marker(text.len()).len() + 1;
    if reserve > max_bytes {
        let end = floor_char_boundary(text, max_bytes);
        return Cow::Owned(text[..end].to_owned());
    }
    let mut end = floor_char_boundary(text, max_bytes - reserve);
    // Prefer ending on a whole line when one fits in the budget.
    if let Some(nl) = text[..end].rfind('\n') {
        end = nl + 1;
    }
    let head = &text[..end];
    let mut out = String::with_capacity(max_bytes);
    out.push_str(head);
    if !head.is_empty() && !head.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&omitted_marker(text.len() - end));
    Cow::Owned(out)
}

fn omitted_marker(omitted: usize) -> String {
    format!("[...] {omitted} bytes omitted")
}

/// Cuts `text` to at most `max_bytes` bytes on a character boundary, ending with `…` when it
/// was cut; returns whether it was cut so summaries can say they were truncated.
pub(crate) fn truncate_str(text: &str, max_bytes: usize) -> (String, bool) {
    if text.len() <= max_bytes {
        return (text.to_owned(), false);
    }
    if max_bytes < ELLIPSIS.len() {
        let end = floor_char_boundary(text, max_bytes);
        return (text[..end].to_owned(), true);
    }
    let end = floor_char_boundary(text, max_bytes - ELLIPSIS.len());
    let mut out = String::with_capacity(end + ELLIPSIS.len());
    out.push_str(&text[..end]);
    out.push_str(ELLIPSIS);
    (out, true)
}

/// Keeps the last `max_bytes` bytes of `text` (on a character boundary), starting with `…`
/// when it was cut: the end of stderr is where the error usually is.
pub(crate) fn truncate_str_tail(text: &str, max_bytes: usize) -> (String, bool) {
    if text.len() <= max_bytes {
        return (text.to_owned(), false);
    }
    if max_bytes < ELLIPSIS.len() {
        return (String::new(), true);
    }
    let keep = max_bytes - ELLIPSIS.len();
    let mut start = text.len() - keep;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let mut out = String::with_capacity(ELLIPSIS.len() + text.len() - start);
    out.push_str(ELLIPSIS);
    out.push_str(&text[start..]);
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_borrowed_unchanged() {
        let s = "hello\nworld\n";
        assert!(matches!(truncate_output(s), Cow::Borrowed(x) if x == s));
        let exact = "a".repeat(OUTPUT_LIMIT);
        assert!(matches!(truncate_output(&exact), Cow::Borrowed(_)));
        assert_eq!(truncate_output(""), "");
    }

    #[test]
    fn long_output_is_cut_on_a_line_and_says_how_much() {
        let line = "0123456789abcdef\n"; // 17 bytes
        let s = line.repeat(2000); // 34,000 bytes
        let out = truncate_output(&s);
        assert!(out.len() <= OUTPUT_LIMIT, "{}", out.len());
        assert!(out.len() > OUTPUT_LIMIT - 64);
        let (head, marker) = out.rsplit_once('\n').unwrap();
        assert!(s.starts_with(head));
        let kept = head.len() + 1;
        assert_eq!(marker, format!("[...] {} bytes omitted", s.len() - kept));
        // whole lines only
        assert_eq!(kept % line.len(), 0);
    }

    #[test]
    fn one_huge_line_is_cut_inside_and_marker_on_its_own_line() {
        let s = "x".repeat(100_000);
        let out = truncate_output(&s);
        assert!(out.len() <= OUTPUT_LIMIT);
        let (head, marker) = out.rsplit_once('\n').unwrap();
        assert!(head.chars().all(|c| c == 'x'));
        assert_eq!(marker, format!("[...] {} bytes omitted", s.len() - head.len()));
    }

    #[test]
    fn multibyte_characters_at_the_16k_boundary_are_never_split() {
        // Try every alignment of 2-, 3- and 4-byte characters against the budget.
        for ch in ['é', '€', '𝄞'] {
            for pad in 0..4 {
                let s = format!("{}{}", "a".repeat(pad), ch.to_string().repeat(20_000));
                let out = truncate_output(&s);
                assert!(out.len() <= OUTPUT_LIMIT, "{ch} {pad}: {}", out.len());
                // It is valid UTF-8 by construction (a &str); check content is a prefix.
                let (head, marker) = out.rsplit_once('\n').unwrap();
                assert!(s.starts_with(head), "{ch} {pad}");
                assert!(marker.starts_with("[...] "));
                assert_eq!(marker, format!("[...] {} bytes omitted", s.len() - head.len()));
            }
        }
    }

    #[test]
    fn multibyte_at_exact_limit_is_kept_whole() {
        // 16,383 ASCII + one 2-byte char = 16,385 bytes: over the limit by one.
        let s = format!("{}é", "a".repeat(OUTPUT_LIMIT - 1));
        let out = truncate_output(&s);
        assert!(out.len() <= OUTPUT_LIMIT);
        assert!(!out.contains('\u{FFFD}'));
        // 16,382 ASCII + é = exactly the limit: untouched.
        let s = format!("{}é", "a".repeat(OUTPUT_LIMIT - 2));
        assert_eq!(truncate_output(&s), s);
    }

    #[test]
    fn tiny_budgets_still_respect_the_limit() {
        let s = "héllo wörld, this is long";
        for max in 0..s.len() {
            let out = truncate_output_to(s, max);
            assert!(out.len() <= max, "max {max}: {out:?}");
            assert!(s.starts_with(out.as_ref()) || out.contains("[...]"));
        }
    }

    #[test]
    fn every_budget_respects_the_limit_on_mixed_text() {
        let s = "line one\nsecond ligne é€𝄞\n\nlast line without newline";
        for max in 0..=s.len() + 2 {
            let out = truncate_output_to(s, max);
            assert!(out.len() <= max, "max {max}: {} {out:?}", out.len());
        }
    }

    #[test]
    fn truncate_str_marks_the_cut() {
        assert_eq!(truncate_str("abc", 3), ("abc".to_owned(), false));
        assert_eq!(truncate_str("abcdef", 5), ("ab…".to_owned(), true));
        assert_eq!(truncate_str("abcdef", 2), ("ab".to_owned(), true));
        assert_eq!(truncate_str("ééé", 5), ("é…".to_owned(), true));
        assert_eq!(truncate_str("ééé", 4), ("…".to_owned(), true));
        assert_eq!(truncate_str("€€", 1), ("".to_owned(), true));
        for max in 0..20 {
            let (out, cut) = truncate_str("a€b𝄞cdefgh", max);
            assert!(out.len() <= max);
            assert_eq!(cut, "a€b𝄞cdefgh".len() > max);
        }
    }

    #[test]
    fn truncate_str_tail_keeps_the_end() {
        assert_eq!(truncate_str_tail("abc", 3), ("abc".to_owned(), false));
        assert_eq!(truncate_str_tail("abcdef", 5), ("…ef".to_owned(), true));
        assert_eq!(truncate_str_tail("abcdef", 2), ("".to_owned(), true));
        assert_eq!(truncate_str_tail("ééé", 5), ("…é".to_owned(), true));
        for max in 0..20 {
            let (out, _) = truncate_str_tail("a€b𝄞cdefgh", max);
            assert!(out.len() <= max);
        }
    }
}
