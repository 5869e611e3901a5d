//! The two text formats of the harness protocol: the cases file the runner writes (one
//! case per line, `k: v; k: v`, values as Python's `str()` prints them, because that is
//! what the seeds' runner writes and what task evaluators parse), and the `key: value`
//! lines the harness writes back to `POPCORN_FD`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::contract::Case;

/// One line per case, each ending in `\n`: `k: v; k: v`.
pub(crate) fn format_cases<'a>(cases: impl IntoIterator<Item = &'a Case>) -> String {
    let mut out = String::new();
    for case in cases {
        let mut first = true;
        for (k, v) in case {
            if !first {
                out.push_str("; ");
            }
            first = false;
            out.push_str(k);
            out.push_str(": ");
            out.push_str(&python_str(v));
        }
        out.push('\n');
    }
    out
}

/// `str(value)` in Python for a value decoded from JSON.
pub(crate) fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

/// `repr(value)` in Python for a value decoded from JSON.
pub(crate) fn python_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                python_float_repr(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => python_str_repr(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> =
                map.iter().map(|(k, v)| format!("{}: {}", python_str_repr(k), python_repr(v))).collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation when the
/// decimal exponent is below -4 or at least 16, `.0` on whole numbers.
pub(crate) fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `d.ddde±x`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    // Position of the decimal point relative to the digit string.
    let decpt = exp + 1;
    if !(-4 < decpt && decpt <= 16) {
        let (head, tail) = digits.split_at(1);
        let mant = if tail.is_empty() { head.to_owned() } else { format!("{head}.{tail}") };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{mant}e{esign}{:02}", exp.unsigned_abs());
    }
    let n = digits.len() as i32;
    let body = if decpt <= 0 {
        format!("0.{}{}", "0".repeat(decpt.unsigned_abs() as usize), digits)
    } else if decpt >= n {
        format!("{}{}.0", digits, "0".repeat((decpt - n) as usize))
    } else {
        let (a, b) = digits.split_at(decpt as usize);
        format!("{a}.{b}")
    };
    format!("{sign}{body}")
}

/// Python's `repr(str)`: single quotes unless the text has one and no double quote.
fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Line boundaries of Python's `str.splitlines()`.
fn is_python_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// Whitespace of Python's `str.strip()`.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\x1c'..='\x1f')
}

/// Splits like Python's `str.splitlines()` (`\r\n` is one break).
fn python_splitlines(text: &str) -> Vec<&str> {
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
    use serde_json::json;

    fn case(v: Value) -> Case {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn cases_lines_look_like_pythons_build_test_string() {
        let cases = [case(json!({"size": 128, "seed": 42})), case(json!({"name": "x y", "scale": 1.0, "flag": true}))];
        // serde_json keeps keys sorted (BTreeMap-backed map).
        assert_eq!(format_cases(&cases), "seed: 42; size: 128\nflag: True; name: x y; scale: 1.0\n");
        assert_eq!(format_cases(&[]), "");
        assert_eq!(format_cases(&[case(json!({}))]), "\n");
        assert_eq!(
            format_cases(&[case(json!({"dims": [1, 2.5, "a"], "n": null, "m": {"k": "it's"}}))]),
            "dims: [1, 2.5, 'a']; m: {'k': \"it's\"}; n: None\n"
        );
    }

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (123456.789, "123456.789"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (2.0f64.powi(60), "1.152921504606847e+18"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:e}");
        }
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
