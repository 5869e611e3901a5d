//! The rollout budget of a pool: how many agents may be unavailable at once for voluntary
//! disruptions (spec, image and share changes; maintenance and cordon drains). Pure.
//!
//! Modelled on the Deployment's `strategy.rollingUpdate.maxUnavailable` (an absolute number
//! or a percentage, rounded down), except that it is never less than 1: agents hold whole
//! GPUs, so there is no surge to roll with and a budget of 0 would never let a rollout start.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `maxUnavailable` of a pool, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnavailable {
    /// At most this many agents.
    Count(i64),
    /// At most this percentage of the pool's agents, rounded down.
    Percent(i64),
}

impl MaxUnavailable {
    /// The default: 10% (at least one agent).
    pub const DEFAULT: MaxUnavailable = MaxUnavailable::Percent(10);

    /// Parses `maxUnavailable`: a positive integer, or a percentage string `1%`..`100%`.
    /// `None` for anything else (the CRD's validation refuses it; a caller falls back to the
    /// most careful budget).
    pub fn parse(value: &IntOrString) -> Option<MaxUnavailable> {
        match value {
            IntOrString::Int(n) if *n >= 1 => Some(MaxUnavailable::Count(i64::from(*n))),
            IntOrString::Int(_) => None,
            IntOrString::String(s) => {
                let digits = s.strip_suffix('%')?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let p: i64 = digits.parse().ok()?;
                (1..=100).contains(&p).then_some(MaxUnavailable::Percent(p))
            }
        }
    }

    /// The number of agents, out of `total`, that may be unavailable at once: rounded down
    /// like a Deployment's maxUnavailable, but at least 1.
    pub fn resolve(self, total: i64) -> i64 {
        let n = match self {
            MaxUnavailable::Count(n) => n,
            MaxUnavailable::Percent(p) => total.max(0).saturating_mul(p) / 100,
        };
        n.max(1)
    }
}

impl std::fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn parses_counts_and_percentages() {
        assert_eq!(MaxUnavailable::parse(&IntOrString::Int(3)), Some(MaxUnavailable::Count(3)));
        assert_eq!(MaxUnavailable::parse(&s("10%")), Some(MaxUnavailable::Percent(10)));
        assert_eq!(MaxUnavailable::parse(&s("100%")), Some(MaxUnavailable::Percent(100)));
        assert_eq!(MaxUnavailable::parse(&s("1%")), Some(MaxUnavailable::Percent(1)));
        for bad in ["0%", "101%", "10", "%", "-5%", "1.5%", " 10%", "ten%", ""] {
            assert_eq!(MaxUnavailable::parse(&s(bad)), None, "{bad:?}");
        }
        assert_eq!(MaxUnavailable::parse(&IntOrString::Int(0)), None);
        assert_eq!(MaxUnavailable::parse(&IntOrString::Int(-1)), None);
    }

    #[test]
    fn percentages_round_down_but_never_below_one() {
        let p = MaxUnavailable::Percent(10);
        assert_eq!(p.resolve(1216), 121);
        assert_eq!(p.resolve(100), 10);
        assert_eq!(p.resolve(19), 1, "1.9 rounds down");
        assert_eq!(p.resolve(9), 1, "0.9 rounds down to 0, and 0 would never roll");
        assert_eq!(p.resolve(0), 1);
        assert_eq!(MaxUnavailable::Percent(20).resolve(16), 3);
        assert_eq!(MaxUnavailable::Percent(100).resolve(16), 16);
        assert_eq!(MaxUnavailable::Count(5).resolve(2), 5, "a count is not capped by the pool size");
        assert_eq!(MaxUnavailable::Count(1).resolve(1000), 1);
        assert_eq!(MaxUnavailable::Percent(100).resolve(-3), 1);
    }

    #[test]
    fn displays_as_written() {
        assert_eq!(MaxUnavailable::DEFAULT.to_string(), "10%");
        assert_eq!(MaxUnavailable::Count(4).to_string(), "4");
    }
}
