//! One test or benchmark case, in the order the platform wrote its keys.
//!
//! kernelbot turns each case into a line of the cases file with `build_test_string`
//! (`src/libkernelbot/run_eval.py`): `"; ".join(f"{k}: {v}" for k, v in test.items())`.
//! Python dicts keep insertion order, so `{"size": 7, "seed": 1}` becomes `size: 7; seed: 1`,
//! and task evaluators echo that line back as `test.{i}.spec`, which the platform stores.
//! serde_json's own map sorts its keys (the `preserve_order` feature is off in this crate), so
//! a [`Case`] keeps its pairs in a vector with serde impls of its own.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// One case: `(key, value)` pairs in the order they were sent. Values stay as sent (ints and
/// strings both occur), so re-encoding changes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Case(Vec<(String, Value)>);

impl Case {
    /// An empty case.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`: a new key goes last, an existing one keeps its place (a Python
    /// dict's assignment, and what `json.loads` does with a repeated key).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the case has no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, in order.
    pub fn as_pairs(&self) -> &[(String, Value)] {
        &self.0
    }

    /// The pairs, in order.
    pub fn into_pairs(self) -> Vec<(String, Value)> {
        self.0
    }

    /// The case as one line of kernelbot's cases file, without the line break: `k: v` joined
    /// by `; `, each value as Python's `str()` prints it (`build_test_string`).
    pub fn to_line(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            out.push_str(k);
            out.push_str(": ");
            out.push_str(&python_str(v));
        }
        out
    }

    /// Parses one line of kernelbot's cases format (`size: 7; seed: 1`), keeping its order,
    /// so that [`Case::to_line`] gives the same line back.
    ///
    /// Parts are split at `;`, each at its first `:`, both sides stripped of spaces (so
    /// `a:1;b: 2` is read, and printed back in the canonical spacing `a: 1; b: 2`). A value
    /// becomes a JSON number only when that number prints back to the same text (`7`, `-3`,
    /// `2.5`; not `007`, `+7`, `1e5`), else it stays a string: either way the line is the
    /// same, and task evaluators (kernelbot's `examples/eval.py`, `get_test_cases`) parse
    /// numbers out of the line themselves. The empty line is the empty case.
    pub fn parse_line(line: &str) -> Result<Case, CaseLineError> {
        let err = |reason: &'static str| CaseLineError { line: line.to_owned(), reason };
        if line.contains(['\n', '\r']) {
            return Err(err("a case is one line"));
        }
        let mut case = Case::new();
        if line.trim().is_empty() {
            return Ok(case);
        }
        for part in line.split(';') {
            let (key, value) = part.split_once(':').ok_or_else(|| err("every part must be `key: value`"))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(err("a key is empty"));
            }
            if case.get(key).is_some() {
                return Err(err("a key appears twice"));
            }
            case.0.push((key.to_owned(), value_from_text(value)));
        }
        Ok(case)
    }
}

/// The JSON value for a value of the line format that prints back to exactly `text`.
fn value_from_text(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>()
        && i.to_string() == text
    {
        return Value::from(i);
    }
    if text.contains(['.', 'e', 'E'])
        && let Ok(f) = text.parse::<f64>()
        && f.is_finite()
        && python_float_repr(f) == text
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

/// Why [`Case::parse_line`] refused a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("case line {line:?} is not in kernelbot's `k: v; k: v` format: {reason}")]
pub struct CaseLineError {
    /// The line given.
    pub line: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for Case {
    /// The cases-file line ([`Case::to_line`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_line())
    }
}

impl FromIterator<(String, Value)> for Case {
    /// Later duplicates overwrite earlier ones in place, as in a Python dict.
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut case = Case::new();
        for (k, v) in iter {
            case.insert(k, v);
        }
        case
    }
}

impl From<Vec<(String, Value)>> for Case {
    fn from(pairs: Vec<(String, Value)>) -> Self {
        pairs.into_iter().collect()
    }
}

/// A map has no order of its own to keep: the case gets its (sorted) order.
impl From<BTreeMap<String, Value>> for Case {
    fn from(map: BTreeMap<String, Value>) -> Self {
        map.into_iter().collect()
    }
}

/// serde_json's map (sorted in this crate): the case gets its order.
impl From<Map<String, Value>> for Case {
    fn from(map: Map<String, Value>) -> Self {
        map.into_iter().collect()
    }
}

/// `case["size"]`: the value, or `null` when the key is absent (as `serde_json::Value`
/// indexing does).
impl std::ops::Index<&str> for Case {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(key).unwrap_or(&NULL)
    }
}

impl<'a> IntoIterator for &'a Case {
    type Item = (&'a String, &'a Value);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, Value)>, fn(&'a (String, Value)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl IntoIterator for Case {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for Case {
    /// A JSON object with the keys in the case's order.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Case {
    /// A JSON object, keys kept in document order (a repeated key keeps its first place and
    /// its last value, as Python's `json.loads` does).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Case;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of case parameters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Case, A::Error> {
                let mut case = Case(Vec::with_capacity(map.size_hint().unwrap_or(0).min(64)));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    case.insert(k, v);
                }
                Ok(case)
            }
        }
        d.deserialize_map(V)
    }
}

/// `str(value)` in Python for a value decoded from JSON.
pub fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => python_repr(other),
    }
}

/// `repr(value)` in Python for a value decoded from JSON. Nested objects print in
/// serde_json's (sorted) key order: kernelbot's line format cannot carry them anyway
/// (evaluators split the line at `;` and `:`).
pub fn python_repr(v: &Value) -> String {
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
pub fn python_float_repr(x: f64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_order_survives_decoding_and_encoding() {
        let c: Case = serde_json::from_str(r#"{"size": 7, "seed": 1, "alpha": "x"}"#).unwrap();
        assert_eq!(c.keys().collect::<Vec<_>>(), ["size", "seed", "alpha"]);
        assert_eq!(c.to_line(), "size: 7; seed: 1; alpha: x");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"size":7,"seed":1,"alpha":"x"}"#);
        // A repeated key keeps its first place and its last value (Python's json.loads).
        let c: Case = serde_json::from_str(r#"{"b": 1, "a": 2, "b": 3}"#).unwrap();
        assert_eq!(c.to_line(), "b: 3; a: 2");
        assert!(serde_json::from_str::<Case>("[1]").is_err());
    }

    #[test]
    fn conversions_from_maps_and_pairs() {
        let m: BTreeMap<String, Value> = [("size".to_owned(), json!(7)), ("seed".to_owned(), json!(1))].into();
        // A BTreeMap has no order to keep: sorted.
        assert_eq!(Case::from(m.clone()).to_line(), "seed: 1; size: 7");
        let collected: Case = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(collected, Case::from(m));
        let pairs = vec![("size".to_owned(), json!(7)), ("seed".to_owned(), json!(1))];
        assert_eq!(Case::from(pairs.clone()).to_line(), "size: 7; seed: 1");
        assert_eq!(Case::from(pairs.clone()).into_pairs(), pairs);
        let mut c = Case::new();
        c.insert("n", 3);
        c.insert("m", "x");
        c.insert("n", 4);
        assert_eq!(c.to_line(), "n: 4; m: x");
        assert_eq!((c.len(), c.get("m"), c.get("z")), (2, Some(&json!("x")), None));
        assert_eq!((&c["n"], &c["z"]), (&json!(4), &Value::Null));
        assert_eq!(c.to_string(), "n: 4; m: x");
    }

    #[test]
    fn parse_line_round_trips_kernelbot_lines() {
        for line in [
            "size: 7; seed: 1",
            "seed: 1; size: 7",
            "size: 127; seed: 4242; name: x y",
            "m: 007; p: +7; e: 1e5; f: 2.5; neg: -3; flag: True",
            "only: one",
            "",
        ] {
            let c = Case::parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(c.to_line(), line);
        }
        let c = Case::parse_line("size: 7; seed: 1").unwrap();
        assert_eq!(c.as_pairs(), [("size".to_owned(), json!(7)), ("seed".to_owned(), json!(1))]);
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"size":7,"seed":1}"#);
        // Only texts that print back the same become numbers.
        let c = Case::parse_line("a: 007; b: 2.5; c: 1e5; d: -0").unwrap();
        assert_eq!(c.get("a"), Some(&json!("007")));
        assert_eq!(c.get("b"), Some(&json!(2.5)));
        assert_eq!(c.get("c"), Some(&json!("1e5")));
        assert_eq!(c.get("d"), Some(&json!("-0")));
        // Other spacing is read and printed back canonically.
        assert_eq!(Case::parse_line(" a:1 ;b:  x y ").unwrap().to_line(), "a: 1; b: x y");
        // Values may hold colons (split at the first one).
        assert_eq!(Case::parse_line("url: a:b").unwrap().get("url"), Some(&json!("a:b")));
    }

    #[test]
    fn parse_line_refuses_what_it_cannot_keep() {
        for (line, why) in [
            ("size 7", "key: value"),
            ("size: 7;", "key: value"),
            (": 7", "empty"),
            ("a: 1; a: 2", "twice"),
            ("a: 1\nb: 2", "one line"),
        ] {
            let e = Case::parse_line(line).unwrap_err();
            assert!(e.to_string().contains(why), "{line:?}: {e}");
            assert_eq!(e.line, line);
        }
    }

    #[test]
    fn values_print_like_python_str() {
        let c: Case =
            serde_json::from_str(r#"{"dims": [1, 2.5, "a"], "n": null, "m": {"k": "it's"}, "t": true}"#).unwrap();
        assert_eq!(c.to_line(), "dims: [1, 2.5, 'a']; n: None; m: {'k': \"it's\"}; t: True");
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
}
