//! The environment a result was measured in: which GPU (UUID, model), its driver and
//! runtime, its clocks, power limit and temperatures, ECC and MIG state, and what ran it
//! (image digest, harness hash, node, slot, certification epoch). `benchkite run` fills it
//! with the vendor tools and carries it in the signed summary (`system.fingerprint`); every
//! field is a bounded string, empty when unknown.

use serde::{Deserialize, Serialize};

use super::text::truncate_str;

/// Cap on each fingerprint string (a UUID is 40 bytes, an image digest 71).
pub const MAX_FINGERPRINT_FIELD_BYTES: usize = 128;

fn empty(s: &str) -> bool {
    s.is_empty()
}

/// Where and how a result was measured. Numbers are kept as the tools print them (MHz, W,
/// °C) so that no tool's formatting is lost; absent or unsupported values are empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `GPU-…` (NVIDIA) or the unique id (AMD).
    #[serde(default, skip_serializing_if = "empty")]
    pub gpu_uuid: String,
    /// GPU model as the vendor tool names it.
    #[serde(default, skip_serializing_if = "empty")]
    pub gpu_model: String,
    /// Kernel driver version.
    #[serde(default, skip_serializing_if = "empty")]
    pub driver_version: String,
    /// CUDA version the driver supports (NVIDIA).
    #[serde(default, skip_serializing_if = "empty")]
    pub cuda_version: String,
    /// ROCm version installed (AMD).
    #[serde(default, skip_serializing_if = "empty")]
    pub rocm_version: String,
    /// Application (target) graphics clock, MHz.
    #[serde(default, skip_serializing_if = "empty")]
    pub app_clock_graphics_mhz: String,
    /// Application (target) memory clock, MHz.
    #[serde(default, skip_serializing_if = "empty")]
    pub app_clock_memory_mhz: String,
    /// Current graphics clock before the run, MHz.
    #[serde(default, skip_serializing_if = "empty")]
    pub clock_graphics_mhz: String,
    /// Current memory clock before the run, MHz.
    #[serde(default, skip_serializing_if = "empty")]
    pub clock_memory_mhz: String,
    /// Power limit, W.
    #[serde(default, skip_serializing_if = "empty")]
    pub power_limit_w: String,
    /// GPU temperature before the first timed stage, °C.
    #[serde(default, skip_serializing_if = "empty")]
    pub temperature_before_c: String,
    /// GPU temperature once the last timed stage ended, °C.
    #[serde(default, skip_serializing_if = "empty")]
    pub temperature_after_c: String,
    /// ECC mode (`Enabled`, `Disabled`).
    #[serde(default, skip_serializing_if = "empty")]
    pub ecc_mode: String,
    /// MIG mode (`Enabled`, `Disabled`).
    #[serde(default, skip_serializing_if = "empty")]
    pub mig_mode: String,
    /// The runner image's digest (`BENCHKITE_IMAGE_DIGEST`).
    #[serde(default, skip_serializing_if = "empty")]
    pub image_digest: String,
    /// sha256 (hex) of the task's main file the runner evaluated.
    #[serde(default, skip_serializing_if = "empty")]
    pub harness_sha256: String,
    /// Kubernetes node (`BENCHKITE_NODE_NAME`).
    #[serde(default, skip_serializing_if = "empty")]
    pub node: String,
    /// GPU slot on the node (`KERNELBOT_GPU_INDEX`, else the visible device).
    #[serde(default, skip_serializing_if = "empty")]
    pub slot: String,
    /// The slot's certification epoch (`BENCHKITE_CERTIFICATION_EPOCH`).
    #[serde(default, skip_serializing_if = "empty")]
    pub certification_epoch: String,
}

impl Fingerprint {
    fn fields_mut(&mut self) -> [&mut String; 19] {
        [
            &mut self.gpu_uuid,
            &mut self.gpu_model,
            &mut self.driver_version,
            &mut self.cuda_version,
            &mut self.rocm_version,
            &mut self.app_clock_graphics_mhz,
            &mut self.app_clock_memory_mhz,
            &mut self.clock_graphics_mhz,
            &mut self.clock_memory_mhz,
            &mut self.power_limit_w,
            &mut self.temperature_before_c,
            &mut self.temperature_after_c,
            &mut self.ecc_mode,
            &mut self.mig_mode,
            &mut self.image_digest,
            &mut self.harness_sha256,
            &mut self.node,
            &mut self.slot,
            &mut self.certification_epoch,
        ]
    }

    /// Every field, in declaration order.
    pub fn fields(&self) -> [&str; 19] {
        [
            &self.gpu_uuid,
            &self.gpu_model,
            &self.driver_version,
            &self.cuda_version,
            &self.rocm_version,
            &self.app_clock_graphics_mhz,
            &self.app_clock_memory_mhz,
            &self.clock_graphics_mhz,
            &self.clock_memory_mhz,
            &self.power_limit_w,
            &self.temperature_before_c,
            &self.temperature_after_c,
            &self.ecc_mode,
            &self.mig_mode,
            &self.image_digest,
            &self.harness_sha256,
            &self.node,
            &self.slot,
            &self.certification_epoch,
        ]
    }

    /// Every field trimmed and cut to [`MAX_FINGERPRINT_FIELD_BYTES`]; true when one was cut.
    pub fn bound(&mut self) -> bool {
        let mut cut_any = false;
        for f in self.fields_mut() {
            let (s, cut) = truncate_str(f.trim(), MAX_FINGERPRINT_FIELD_BYTES);
            *f = s;
            cut_any |= cut;
        }
        cut_any
    }

    /// No field known.
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|f| f.is_empty())
    }

    /// Checks the bounds (the summary is untrusted).
    pub fn check_bounds(&self) -> Result<(), String> {
        match self.fields().iter().find(|f| f.len() > MAX_FINGERPRINT_FIELD_BYTES) {
            Some(f) => Err(format!("a fingerprint field is {} bytes, over {MAX_FINGERPRINT_FIELD_BYTES}", f.len())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_cuts_and_trims_every_field() {
        let mut f = Fingerprint { gpu_uuid: " GPU-1 ".into(), node: "n".repeat(500), ..Fingerprint::default() };
        assert!(f.check_bounds().is_err());
        assert!(f.bound());
        assert_eq!(f.gpu_uuid, "GPU-1");
        assert!(f.node.len() <= MAX_FINGERPRINT_FIELD_BYTES);
        assert!(f.check_bounds().is_ok());
        assert!(!f.bound(), "already bounded");
        assert!(Fingerprint::default().is_empty() && !f.is_empty());
    }

    #[test]
    fn empty_fields_are_left_out_and_old_json_reads() {
        let f = Fingerprint { slot: "3".into(), ..Fingerprint::default() };
        assert_eq!(serde_json::to_string(&f).ok().as_deref(), Some(r#"{"slot":"3"}"#));
        let back: Fingerprint = serde_json::from_str("{}").unwrap_or_else(|_| Fingerprint { slot: "x".into(), ..f });
        assert!(back.is_empty());
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;
    use crate::contract::summary::{
        MAX_SUMMARY_BYTES, ResultSummary, RunSummary, SystemSummary, TestFailure, TestsSummary, parse_meta_data_summary,
    };

    fn full_fingerprint() -> Fingerprint {
        let mut f = Fingerprint::default();
        for field in f.fields_mut() {
            *field = "x".repeat(MAX_FINGERPRINT_FIELD_BYTES);
        }
        f
    }

    fn summary(system: Option<SystemSummary>) -> ResultSummary {
        ResultSummary {
            v: 1,
            success: true,
            passed: Some(true),
            error: String::new(),
            system,
            runs: Default::default(),
            ranking_by: None,
            score: None,
            truncated: false,
        }
    }

    #[test]
    fn a_summary_carries_the_fingerprint_and_old_ones_still_parse() {
        let fp = Fingerprint { gpu_uuid: "GPU-1".into(), temperature_before_c: "40".into(), ..Fingerprint::default() };
        let s = summary(Some(SystemSummary { fingerprint: Some(fp.clone()), ..SystemSummary::default() }));
        let value = s.to_meta_data_value();
        assert!(value.contains(r#""fingerprint":{"gpu_uuid":"GPU-1","temperature_before_c":"40"}"#), "{value}");
        let back = parse_meta_data_summary(&value).map_err(|e| e.to_string());
        assert_eq!(back.ok().and_then(|b| b.system).and_then(|s| s.fingerprint), Some(fp));
        // A version-1 summary of an older runner: no fingerprint, still valid.
        let old = r#"{"v":1,"success":true,"system":{"gpu":"g","device_count":1}}"#;
        let old = parse_meta_data_summary(old).map_err(|e| e.to_string());
        assert_eq!(old.ok().and_then(|s| s.system).map(|s| s.fingerprint), Some(None));
    }

    #[test]
    fn an_oversized_fingerprint_field_is_refused() {
        let mut fp = full_fingerprint();
        fp.node.push('x');
        let s = summary(Some(SystemSummary { fingerprint: Some(fp), ..SystemSummary::default() }));
        let value = serde_json::to_string(&s).unwrap_or_default();
        assert!(parse_meta_data_summary(&value).is_err());
    }

    #[test]
    fn the_fingerprint_survives_the_shrinking_and_the_bound_holds() {
        let mut s = summary(Some(SystemSummary {
            gpu: "g".repeat(128),
            device_count: 8,
            fingerprint: Some(full_fingerprint()),
            ..SystemSummary::default()
        }));
        s.error = "e".repeat(1024);
        for i in 0..16 {
            let failures =
                (0..10).map(|j| TestFailure { index: j, spec: "s".repeat(128), message: "m".repeat(256) }).collect();
            let tests = TestsSummary { total: 10, passed: 0, failed: 10, failures };
            s.runs.insert(format!("profile.{i}"), RunSummary { tests: Some(tests), ..RunSummary::default() });
        }
        let value = s.to_meta_data_value();
        assert!(value.len() <= MAX_SUMMARY_BYTES, "{}", value.len());
        let back = parse_meta_data_summary(&value).map_err(|e| e.to_string());
        let back = back.unwrap_or_else(|e| panic!("{e}"));
        assert!(back.truncated);
        assert_eq!(back.system.and_then(|s| s.fingerprint), Some(full_fingerprint()));
    }
}
