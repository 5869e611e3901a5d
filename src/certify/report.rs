//! What a slot's certification run reports: the time of every suite kernel on that slot,
//! written by `benchkite certify` (the agent pod's init container) to its termination
//! message, which the kubelet copies into the pod's status, where the controller reads it.
//!
//! A termination message holds at most 4096 bytes: [`CertReport::to_message`] keeps the
//! report under [`MAX_MESSAGE_BYTES`] by dropping what is least needed first (failure
//! details, then the GPU's identity); the times always fit (a suite has at most
//! [`MAX_KERNELS`](super::suite::MAX_KERNELS) kernels of names of at most 40 bytes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The kubelet's limit on one container's termination message.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Report format version.
pub const VERSION: u32 = 1;
/// Longest failure detail kept per kernel.
const MAX_DETAIL: usize = 120;

/// One certification run on one slot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertReport {
    /// [`VERSION`].
    pub v: u32,
    /// When the run ended (Unix seconds): the certification epoch of the slot if it passes.
    pub at: i64,
    /// Node and slot (`KERNELBOT_GPU_INDEX`) the run measured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub slot: String,
    /// GPU model, UUID and driver, when the vendor tool said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver: String,
    /// Kernel → ranked time in seconds, for every kernel that ran to a score.
    #[serde(default)]
    pub times: BTreeMap<String, f64>,
    /// Kernel → why it has no time (compile error, failed check, timeout).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, String>,
    /// The runner's own verdict with the thresholds it was given (the controller judges
    /// again from `times`; this one decides whether the agent starts).
    pub passed: bool,
}

impl CertReport {
    /// The report as a termination message of at most [`MAX_MESSAGE_BYTES`] bytes.
    pub fn to_message(&self) -> String {
        let mut r = self.clone();
        for d in r.failed.values_mut() {
            if d.len() > MAX_DETAIL {
                let mut cut = MAX_DETAIL;
                while !d.is_char_boundary(cut) {
                    cut -= 1;
                }
                d.truncate(cut);
            }
        }
        let fits = |r: &CertReport| serde_json::to_string(r).map(|s| (s.len() <= MAX_MESSAGE_BYTES).then_some(s));
        if let Ok(Some(s)) = fits(&r) {
            return s;
        }
        for d in r.failed.values_mut() {
            d.clear();
        }
        if let Ok(Some(s)) = fits(&r) {
            return s;
        }
        r.gpu.clear();
        r.uuid.clear();
        r.driver.clear();
        if let Ok(Some(s)) = fits(&r) {
            return s;
        }
        // Only a suite over the documented bounds gets here: keep the verdict.
        r.times.clear();
        r.failed.clear();
        serde_json::to_string(&r).unwrap_or_default()
    }

    /// Reads a termination message; `None` when it is not a report of a known version.
    pub fn from_message(message: &str) -> Option<CertReport> {
        let r: CertReport = serde_json::from_str(message.trim()).ok()?;
        (r.v == VERSION && r.times.values().all(|t| t.is_finite() && *t > 0.0)).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kernels: usize, name_len: usize) -> CertReport {
        let times = (0..kernels)
            .map(|i| (format!("{i:0>name_len$}"), 1.0e-3 / (i + 1) as f64 * std::f64::consts::PI))
            .collect();
        CertReport {
            v: VERSION,
            at: 1_790_000_000,
            node: "gpu-node-1".into(),
            slot: "3".into(),
            gpu: "NVIDIA H100 80GB HBM3".into(),
            uuid: "GPU-00000000-aaaa-bbbb-cccc-000000000000".into(),
            driver: "550.54.15".into(),
            times,
            failed: BTreeMap::from([("broken".into(), "x".repeat(500))]),
            passed: true,
        }
    }

    #[test]
    fn a_report_round_trips_through_its_message() {
        let r = report(5, 8);
        let back = CertReport::from_message(&r.to_message()).unwrap();
        assert_eq!(back.times, r.times, "times keep full precision");
        assert_eq!((back.node.as_str(), back.slot.as_str(), back.passed), ("gpu-node-1", "3", true));
        assert_eq!(back.failed["broken"].len(), MAX_DETAIL, "long details are cut");
    }

    #[test]
    fn the_largest_suite_fits_a_termination_message_with_its_times() {
        let r = report(crate::certify::suite::MAX_KERNELS, crate::certify::suite::MAX_NAME);
        let m = r.to_message();
        assert!(m.len() <= MAX_MESSAGE_BYTES, "{} bytes", m.len());
        let back = CertReport::from_message(&m).unwrap();
        assert_eq!(back.times, r.times, "every time survives");
    }

    #[test]
    fn detail_goes_first_then_identity() {
        let mut r = report(40, 40);
        r.failed = (0..20).map(|i| (format!("f{i}"), "e".repeat(120))).collect();
        let back = CertReport::from_message(&r.to_message()).unwrap();
        assert!(back.failed.values().all(String::is_empty), "details dropped");
        assert_eq!(back.failed.len(), 20, "which kernels failed is kept");
        assert_eq!(back.times.len(), 40);
    }

    #[test]
    fn foreign_or_broken_messages_are_no_report() {
        assert!(CertReport::from_message("").is_none());
        assert!(CertReport::from_message("Error: exec format error").is_none());
        assert!(CertReport::from_message(r#"{"v": 2, "at": 1, "times": {}, "passed": true}"#).is_none());
        assert!(CertReport::from_message(r#"{"v": 1, "at": 1, "times": {"a": -1.0}, "passed": true}"#).is_none());
        assert!(CertReport::from_message(r#"{"v": 1, "at": 1, "times": {"a": 0.5}, "passed": false}"#).is_some());
    }
}
