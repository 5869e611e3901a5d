//! The reference suite an admin certifies GPU slots with: kernels in kernelbot's own config
//! format (the payload's JSON), each with its time on a trusted node, and the canary kernel
//! drift is watched with.
//!
//! Kept in a ConfigMap (key `suite.yaml` by default) that an AgentPool's
//! `spec.certification.suite` names; YAML or JSON:
//!
//! ```yaml
//! kernels:
//!   - name: matmul-naive          # 1..=40 of [a-z0-9._-], starting with a letter or digit
//!     referenceSeconds: 1.25e-3   # its time on the trusted node (the ranked score)
//!     config: {lang: py, main: eval.py, sources: {...}, benchmarks: [...], ranking_by: mean}
//! canary: matmul-naive            # default: the kernel with the median reference time
//! ```
//!
//! Every kernel runs in `leaderboard` mode whatever its config says: its time is the ranked
//! run's score, in seconds, as a platform's leaderboard would rank it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::contract::{self, PayloadLimits};

/// Kernels a suite may hold (its report must fit a container's 4 KiB termination message).
pub const MAX_KERNELS: usize = 40;
/// Longest kernel name.
pub const MAX_NAME: usize = 40;
/// Key of the suite in its ConfigMap by default.
pub const DEFAULT_KEY: &str = "suite.yaml";

/// A reference suite.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Suite {
    pub kernels: Vec<SuiteKernel>,
    /// The kernel the runner times as the drift canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
}

/// One kernel of a suite.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuiteKernel {
    pub name: String,
    /// Its time on the trusted node, in seconds (`benchkite certify --reference-out` takes
    /// them on a trusted node: absent there).
    #[serde(default)]
    pub reference_seconds: f64,
    /// kernelbot's config (the payload's JSON); `mode` is set to `leaderboard`.
    pub config: serde_json::Value,
}

/// What is wrong with a suite, in words an admin can act on.
#[derive(Debug, Error, PartialEq)]
pub enum SuiteError {
    #[error("the suite is not valid YAML or JSON of the documented shape: {0}")]
    Parse(String),
    #[error("the suite has {0} kernels; ranking parity needs at least 2")]
    TooFew(usize),
    #[error("the suite has {0} kernels; at most {MAX_KERNELS}")]
    TooMany(usize),
    #[error(
        "kernel name {0:?} is invalid: 1 to {MAX_NAME} of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("kernel {0:?} appears twice")]
    Duplicate(String),
    #[error("kernel {name:?}: referenceSeconds {value} must be a finite number of seconds > 0")]
    BadReference { name: String, value: f64 },
    #[error("kernel {name:?}: its config is not a valid evaluation config: {reason}")]
    BadConfig { name: String, reason: String },
    #[error("canary {0:?} names no kernel of the suite")]
    UnknownCanary(String),
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

impl Suite {
    /// Parses and validates a suite (YAML, of which JSON is a subset).
    pub fn parse(text: &str) -> Result<Suite, SuiteError> {
        let suite: Suite = serde_yaml::from_str(text).map_err(|e| SuiteError::Parse(e.to_string()))?;
        suite.validate()?;
        Ok(suite)
    }

    /// Parses a suite whose reference times are still to be taken (`referenceSeconds` may
    /// be absent); everything else is checked.
    pub fn parse_unreferenced(text: &str) -> Result<Suite, SuiteError> {
        let mut suite: Suite = serde_yaml::from_str(text).map_err(|e| SuiteError::Parse(e.to_string()))?;
        let given: Vec<f64> = suite.kernels.iter().map(|k| k.reference_seconds).collect();
        for k in &mut suite.kernels {
            k.reference_seconds = 1.0;
        }
        suite.validate()?;
        for (k, t) in suite.kernels.iter_mut().zip(given) {
            k.reference_seconds = t;
        }
        Ok(suite)
    }

    /// Checks names, reference times, every config and the canary.
    pub fn validate(&self) -> Result<(), SuiteError> {
        match self.kernels.len() {
            n if n < 2 => return Err(SuiteError::TooFew(n)),
            n if n > MAX_KERNELS => return Err(SuiteError::TooMany(n)),
            _ => {}
        }
        let mut seen = BTreeSet::new();
        for k in &self.kernels {
            if !valid_name(&k.name) {
                return Err(SuiteError::BadName(k.name.clone()));
            }
            if !seen.insert(k.name.as_str()) {
                return Err(SuiteError::Duplicate(k.name.clone()));
            }
            if !(k.reference_seconds.is_finite() && k.reference_seconds > 0.0) {
                return Err(SuiteError::BadReference { name: k.name.clone(), value: k.reference_seconds });
            }
            k.payload()?;
        }
        if let Some(c) = &self.canary
            && !seen.contains(c.as_str())
        {
            return Err(SuiteError::UnknownCanary(c.clone()));
        }
        Ok(())
    }

    /// Kernel name → reference seconds.
    pub fn reference(&self) -> BTreeMap<String, f64> {
        self.kernels.iter().map(|k| (k.name.clone(), k.reference_seconds)).collect()
    }

    /// The canary: the one named, else the kernel with the median reference time (the
    /// faster of the two middle ones), which is neither dominated by launch overhead nor
    /// the most expensive to run.
    pub fn canary(&self) -> Option<&SuiteKernel> {
        if let Some(name) = &self.canary {
            return self.kernels.iter().find(|k| &k.name == name);
        }
        let mut by_time: Vec<&SuiteKernel> = self.kernels.iter().collect();
        by_time.sort_by(|a, b| a.reference_seconds.total_cmp(&b.reference_seconds).then(a.name.cmp(&b.name)));
        by_time.get(by_time.len().saturating_sub(1) / 2).copied()
    }
}

impl SuiteKernel {
    /// The kernel's payload (JSON → zlib → base64), in `leaderboard` mode, validated as the
    /// controller validates a KernelJob's.
    pub fn payload(&self) -> Result<String, SuiteError> {
        let bad = |reason: String| SuiteError::BadConfig { name: self.name.clone(), reason };
        let mut config = self.config.clone();
        let obj = config.as_object_mut().ok_or_else(|| bad("it must be a map".into()))?;
        obj.insert("mode".into(), "leaderboard".into());
        let json = serde_json::to_vec(&config).map_err(|e| bad(e.to_string()))?;
        let parsed = contract::payload::config_from_json(&json).map_err(|e| bad(e.to_string()))?;
        contract::encode_payload_with(&parsed, &PayloadLimits::default()).map_err(|e| bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
