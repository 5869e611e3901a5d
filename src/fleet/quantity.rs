//! Kubernetes resource quantities (`1500m`, `1Ti`, `384Gi`, `2e3`) as exact integers.
//!
//! Share arithmetic must be exact: a rounding error of one millicore decides whether the
//! scheduler admits the eighth agent of a node.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid quantity {input:?}: {why}")]
pub struct QuantityError {
    pub input: String,
    pub why: &'static str,
}

/// Parses a quantity into thousandths of its unit (millicores for CPU, milli-bytes for
/// memory), rounding up like Kubernetes does for sub-milli precision.
pub fn parse_milli(input: &str) -> Result<i128, QuantityError> {
    let err = |why| QuantityError { input: input.to_string(), why };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (negative, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err("no number"));
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return Err(err("too many digits"));
    }
    let mantissa: i128 = digits.parse().map_err(|_| err("no number"))?;
    // value = mantissa * 10^(-frac) * multiplier; we want value * 1000.
    let mut pow10: i32 = 3 - i32::try_from(frac_part.len()).map_err(|_| err("too many digits"))?;
    let mut binary: u32 = 0;
    match suffix {
        "" => {}
        "n" => pow10 -= 9,
        "u" => pow10 -= 6,
        "m" => pow10 -= 3,
        "k" => pow10 += 3,
        "M" => pow10 += 6,
        "G" => pow10 += 9,
        "T" => pow10 += 12,
        "P" => pow10 += 15,
        "E" => pow10 += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        other => {
            let exp =
                other.strip_prefix('e').or_else(|| other.strip_prefix('E')).ok_or_else(|| err("unknown suffix"))?;
            let exp: i32 = exp.parse().map_err(|_| err("bad exponent"))?;
            if !(-30..=30).contains(&exp) {
                return Err(err("exponent out of range"));
            }
            pow10 += exp;
        }
    }
    let scaled = mantissa.checked_mul(1i128 << binary).ok_or_else(|| err("too large"))?;
    let value = if pow10 >= 0 {
        let factor = 10i128.checked_pow(pow10.unsigned_abs()).ok_or_else(|| err("too large"))?;
        scaled.checked_mul(factor).ok_or_else(|| err("too large"))?
    } else {
        let divisor = 10i128.checked_pow(pow10.unsigned_abs()).ok_or_else(|| err("too small"))?;
        // Round up (away from zero for positives), as Kubernetes does.
        (scaled + divisor - 1) / divisor
    };
    if value > i128::from(i64::MAX) * 1000 {
        return Err(err("too large"));
    }
    Ok(if negative { -value } else { value })
}

/// CPU in millicores.
pub fn cpu_millis(input: &str) -> Result<i64, QuantityError> {
    let milli = parse_milli(input)?;
    i64::try_from(milli).map_err(|_| QuantityError { input: input.to_string(), why: "too large" })
}

/// Memory (or any count) in whole units, rounding up.
pub fn whole_units(input: &str) -> Result<i64, QuantityError> {
    let milli = parse_milli(input)?;
    let units = if milli >= 0 { (milli + 999) / 1000 } else { milli / 1000 };
    i64::try_from(units).map_err(|_| QuantityError { input: input.to_string(), why: "too large" })
}

pub const MIB: i64 = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(cpu_millis("128").unwrap(), 128_000);
        assert_eq!(cpu_millis("1500m").unwrap(), 1_500);
        assert_eq!(cpu_millis("0.5").unwrap(), 500);
        assert_eq!(cpu_millis("2.25").unwrap(), 2_250);
        assert_eq!(cpu_millis("100u").unwrap(), 1, "sub-milli rounds up");
        assert_eq!(cpu_millis("1n").unwrap(), 1);
        assert_eq!(cpu_millis("0").unwrap(), 0);
        assert_eq!(cpu_millis("+3").unwrap(), 3_000);
        assert_eq!(cpu_millis("-1").unwrap(), -1_000);
        assert_eq!(cpu_millis("1e3").unwrap(), 1_000_000);
        assert_eq!(cpu_millis("1E-3").unwrap(), 1);
        assert_eq!(cpu_millis("2k").unwrap(), 2_000_000);
    }

    #[test]
    fn memory_forms() {
        assert_eq!(whole_units("1Ti").unwrap(), 1 << 40);
        assert_eq!(whole_units("384Gi").unwrap(), 384 << 30);
        assert_eq!(whole_units("1536Mi").unwrap(), 1536 << 20);
        assert_eq!(whole_units("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(whole_units("128974848").unwrap(), 128_974_848);
        assert_eq!(whole_units("129e6").unwrap(), 129_000_000);
        assert_eq!(whole_units("123M").unwrap(), 123_000_000);
        assert_eq!(whole_units("1k").unwrap(), 1000);
        assert_eq!(whole_units("1Ki").unwrap(), 1024);
        assert_eq!(whole_units("1500m").unwrap(), 2, "fractions of a byte round up");
        assert_eq!(whole_units("2Ei").unwrap(), 2 << 60);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            " ",
            "abc",
            "1.2.3",
            "1Xi",
            "1e",
            "1e999",
            ".",
            "-",
            "Gi",
            "1 Gi",
            "9Ei9",
            "99999999999999999999999999999999999",
        ] {
            assert!(parse_milli(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(whole_units("16Ei").is_err(), "beyond i64");
    }
}
