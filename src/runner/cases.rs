//! The two text formats of the harness protocol: the cases file the runner writes (one
//! case per line, `k: v; k: v`, values as Python's `str()` prints them, because that is
//! what the seeds' runner writes and what task evaluators parse), and the `key: value`
//! lines the harness writes back to `POPCORN_FD`.

use std::collections::BTreeMap;

use crate::contract::Case;
pub(crate) use crate::contract::case::python_str;

/// One line per case, each ending in `\n`: `k: v; k: v` in the payload's key order
/// (kernelbot's `build_test_string`).
pub(crate) fn format_cases<'a>(cases: impl IntoIterator<Item = &'a Case>) -> String {
    let mut out = String::new();
    for case in cases {
        out.push_str(&case.to_line());
        out.push('\n');
    }
    out
}

/// Line boundaries of Python's `str.splitlines()`.
fn is_python_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Whitespace of Python's `str.strip()`.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\x1c'..='\x1f')
}

/// Splits like Python's `str.splitlines()` (`\r\n` is one break).
pub(crate) fn python_splitlines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if is_python_line_break(c) {
            out.push(&text[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r'
                && let Some((j, '\n')) = chars.peek().copied()
            {
                chars.next();
                end = j + 1;
            }
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The `key: value` lines the harness wrote, as the seeds' runner reads them: split at the
/// first `:`, both sides stripped, later lines win, fully empty lines skipped.
pub(crate) fn parse_result_lines(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in python_splitlines(text) {
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        if !key.is_empty() || !value.is_empty() {
            out.insert(key.trim_matches(is_python_space).to_owned(), value.trim_matches(is_python_space).to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(json: &str) -> Case {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn cases_lines_look_like_pythons_build_test_string() {
        let cases = [case(r#"{"size": 128, "seed": 42}"#), case(r#"{"name": "x y", "scale": 1.0, "flag": true}"#)];
        // The payload's key order, as Python's dicts keep it.
        assert_eq!(format_cases(&cases), "size: 128; seed: 42\nname: x y; scale: 1.0; flag: True\n");
        assert_eq!(format_cases(&[]), "");
        assert_eq!(format_cases(&[case("{}")]), "\n");
        assert_eq!(
            format_cases(&[case(r#"{"dims": [1, 2.5, "a"], "n": null, "m": {"k": "it's"}}"#)]),
            "dims: [1, 2.5, 'a']; n: None; m: {'k': \"it's\"}\n"
        );
    }

    #[test]
    fn result_lines_parse_like_the_seeds() {
        let text = "check: pass\ntest-count: 2\r\ntest.0.spec: size: 128; seed: 1\n\n  \nno colon\n\
                    test.1.message:   spaced out  \r:orphan value\nx: 1\nx: 2\u{2028}y:z";
        let m = parse_result_lines(text);
        assert_eq!(m["check"], "pass");
        assert_eq!(m["test-count"], "2");
        // Split at the first colon only.
        assert_eq!(m["test.0.spec"], "size: 128; seed: 1");
        assert_eq!(m["no colon"], "");
        assert_eq!(m["test.1.message"], "spaced out");
        assert_eq!(m[""], "orphan value");
        assert_eq!(m["x"], "2");
        assert_eq!(m["y"], "z");
        assert!(parse_result_lines("").is_empty());
        assert!(parse_result_lines("\n\n").is_empty());
    }

    #[test]
    fn whitespace_only_line_gives_an_empty_key_as_in_python() {
        // Python: "  ".partition(":") → ("  ", "", "") → key "" after strip.
        let m = parse_result_lines("  \n");
        assert_eq!(m.get(""), Some(&String::new()));
    }
}
