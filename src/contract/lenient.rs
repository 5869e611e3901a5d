//! Tolerant field deserializers for data written by other programs (Python's `json.dumps`
//! of dataclasses, older runners): `null` becomes the default, numbers and strings are
//! accepted where the other is expected when the meaning is unambiguous.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// `null` → `T::default()`, anything else → `T`.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

struct StringVisitor;

impl<'de> Visitor<'de> for StringVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string (or a number, a boolean or null)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        // Python's spelling, since that is what str() of the value would have produced.
        Ok(if v { "True" } else { "False" }.to_owned())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
    fn visit_none<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(StringVisitor)
    }
}

/// A string; `null` → `""`; numbers and booleans → their text.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(StringVisitor)
}

/// `null` → `None`; otherwise as [`string`].
pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            string(d).map(Some)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            StringVisitor.visit_bool(v).map(Some)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}

/// A boolean; `null` → `false`; also `0`/`1` and `"true"`/`"false"` in any case.
pub(crate) fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a boolean (or 0/1, \"true\"/\"false\", null)")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            if v.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if v.eq_ignore_ascii_case("false") || v.is_empty() {
                Ok(false)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_none<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

/// Largest float below 2^63 that converts to `i64` exactly; bounds integral floats.
const I64_FLOAT_BOUND: f64 = 9_223_372_036_854_775_808.0;

fn float_to_i64<E: de::Error>(v: f64, exp: &dyn de::Expected) -> Result<i64, E> {
    if v.is_finite() && v.fract() == 0.0 && (-I64_FLOAT_BOUND..I64_FLOAT_BOUND).contains(&v) {
        // Exact: integral and in range.
        Ok(v as i64)
    } else {
        Err(E::invalid_value(de::Unexpected::Float(v), exp))
    }
}

/// An integer; `null` → `0`; integral floats (`3.0`) and numeric strings (`"3"`) accepted.
pub(crate) fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer (or an integral float, a numeric string, null)")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            float_to_i64(v, &self)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            let t = v.trim();
            if let Ok(i) = t.parse::<i64>() {
                return Ok(i);
            }
            match t.parse::<f64>() {
                Ok(f) => float_to_i64(f, &self),
                Err(_) => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
        fn visit_none<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

/// A float; `null` → `0.0`; integers and numeric strings accepted (`"nan"` too).
pub(crate) fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number (or a numeric string, null)")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            v.trim().parse::<f64>().map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(0.0)
        }
        fn visit_none<E: de::Error>(self) -> Result<f64, E> {
            Ok(0.0)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

/// A `{str: str}` map; `null` → empty; scalar values are turned into text as in [`string`].
pub(crate) fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Val(String);
    impl<'de> Deserialize<'de> for Val {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            string(d).map(Val)
        }
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of strings to strings, or null")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, Val(v))) = m.next_entry::<String, Val>()? {
                out.insert(k, v);
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(default, deserialize_with = "string")]
        s: String,
        #[serde(default, deserialize_with = "opt_string")]
        o: Option<String>,
        #[serde(default, deserialize_with = "bool")]
        b: bool,
        #[serde(default, deserialize_with = "int")]
        i: i64,
        #[serde(default, deserialize_with = "float")]
        f: f64,
        #[serde(default, deserialize_with = "string_map")]
        m: BTreeMap<String, String>,
        #[serde(default, deserialize_with = "null_default")]
        v: Vec<u8>,
    }

    fn t(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn nulls_and_missing_become_defaults() {
        for json in ["{}", r#"{"s":null,"o":null,"b":null,"i":null,"f":null,"m":null,"v":null}"#] {
            let x = t(json).unwrap();
            assert_eq!(x.s, "");
            assert_eq!(x.o, None);
            assert!(!x.b);
            assert_eq!(x.i, 0);
            assert_eq!(x.f, 0.0);
            assert!(x.m.is_empty());
            assert!(x.v.is_empty());
        }
    }

    #[test]
    fn scalars_convert_where_unambiguous() {
        let x =
            t(r#"{"s":12,"o":1.5,"b":1,"i":"42","f":"3.25","m":{"a":1,"b":"x","c":true,"d":null,"e":2.5}}"#).unwrap();
        assert_eq!(x.s, "12");
        assert_eq!(x.o.as_deref(), Some("1.5"));
        assert!(x.b);
        assert_eq!(x.i, 42);
        assert_eq!(x.f, 3.25);
        assert_eq!(x.m["a"], "1");
        assert_eq!(x.m["b"], "x");
        assert_eq!(x.m["c"], "True");
        assert_eq!(x.m["d"], "");
        assert_eq!(x.m["e"], "2.5");
        assert_eq!(t(r#"{"s":false}"#).unwrap().s, "False");
        assert_eq!(t(r#"{"i":3.0}"#).unwrap().i, 3);
        assert_eq!(t(r#"{"i":-7}"#).unwrap().i, -7);
        assert_eq!(t(r#"{"i":" 5 "}"#).unwrap().i, 5);
        assert_eq!(t(r#"{"i":"5.0"}"#).unwrap().i, 5);
        assert_eq!(t(r#"{"f":7}"#).unwrap().f, 7.0);
        assert!(t(r#"{"f":"nan"}"#).unwrap().f.is_nan());
        assert!(t(r#"{"b":"TRUE"}"#).unwrap().b);
        assert!(!t(r#"{"b":"False"}"#).unwrap().b);
        assert!(!t(r#"{"b":0}"#).unwrap().b);
    }

    #[test]
    fn ambiguous_or_wrong_values_are_errors() {
        for json in [
            r#"{"s":[1]}"#,
            r#"{"s":{}}"#,
            r#"{"o":[]}"#,
            r#"{"b":2}"#,
            r#"{"b":"yes"}"#,
            r#"{"b":[]}"#,
            r#"{"i":1.5}"#,
            r#"{"i":"x"}"#,
            r#"{"i":"1e400"}"#,
            r#"{"i":18446744073709551615}"#,
            r#"{"i":1e300}"#,
            r#"{"f":"fast"}"#,
            r#"{"f":{}}"#,
            r#"{"m":[]}"#,
            r#"{"m":{"a":[1]}}"#,
            r#"{"m":"x"}"#,
        ] {
            assert!(t(json).is_err(), "{json} should fail");
        }
    }
}
