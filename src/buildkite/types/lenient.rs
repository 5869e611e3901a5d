//! Lenient field decoders: missing or `null` → default, a scalar of the wrong JSON type
//! converted when unambiguous, anything else dropped.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;

pub(super) fn scalar_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(scalar_string(Value::deserialize(d)?).unwrap_or_default())
}

pub(crate) fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(scalar_string(Value::deserialize(d)?))
}

pub(super) fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn lenient_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(value_i64(&Value::deserialize(d)?))
}

pub(crate) fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(value_i64(&Value::deserialize(d)?).and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

pub(crate) fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(value_i64(&Value::deserialize(d)?).and_then(|n| u64::try_from(n).ok()))
}

pub(crate) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::String(s) => s == "true",
        _ => false,
    })
}

pub(crate) fn lenient_ts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => parse_time(&s),
        _ => None,
    })
}

/// A Buildkite timestamp: RFC 3339 as the REST API writes it (`2024-05-01T10:00:00.000Z`),
/// or the shape of the only real webhook body captured in public code (go-buildkite
/// `builds_test.go`, "taken from buildkite services console"): `2018-03-25 03:58:14 UTC`.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    let naive = s.strip_suffix(" UTC").or_else(|| s.strip_suffix(" Z"))?;
    let iso = format!("{}Z", naive.trim().replacen(' ', "T", 1));
    iso.parse::<Timestamp>().ok()
}

/// A string map (`env`, `meta_data`): scalars become strings, nested values their JSON text.
pub(crate) fn lenient_string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Null => None,
                v @ (Value::Array(_) | Value::Object(_)) => Some((k, v.to_string())),
                v => scalar_string(v).map(|s| (k, s)),
            })
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// A list whose elements that fail to decode are skipped (`null` is empty).
pub(crate) fn lenient_vec<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.into_iter().filter_map(|v| T::deserialize(v).ok()).collect(),
        _ => Vec::new(),
    })
}

/// An object that is dropped (`None`) when it fails to decode.
pub(crate) fn lenient_opt<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        v => T::deserialize(v).ok(),
    })
}
