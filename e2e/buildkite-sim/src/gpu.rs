//! Simulated GPU slots: a per-agent, deterministic distortion of synthetic kernel times.
//!
//! An agent with a [`GpuProfile`] behaves like one GPU slot. Each job it starts gets
//! `SIMGPU_*` variables (the "hardware", set after the build env so no build overrides them)
//! that a synthetic harness (`tests/tasks/synthetic/eval.py`) multiplies into the kernels'
//! true times:
//!
//! - `SIMGPU_FACTOR`: [`GpuProfile::job_factor`] of this job (slow/fast slot, noise, drift);
//! - `SIMGPU_KERNEL_FACTORS`: `name=factor,…` per kernel, sorted (only when set);
//! - `SIMGPU_JOB_INDEX`: how many jobs the agent started before this one (0 for the first).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How one simulated GPU slot distorts kernel times. Every field has a default: `{}` is an
/// honest slot (factor 1, no noise, no drift).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuProfile {
    /// Every kernel's time × `factor` (a slow slot: > 1, a fast one: < 1).
    pub factor: f64,
    /// Relative spread per job: the job's factor × (1 + u·noise·√3), u uniform in [-1, 1)
    /// from `seed` and the job index, so the relative standard deviation is `noise`.
    pub noise: f64,
    /// Drift starts after this many jobs: jobs with index < K are clean, index K (the
    /// agent's (K+1)-th job) gets × (1 + d), index K+1 × (1 + 2d), … `None`: no drift.
    pub drift_after_jobs: Option<u32>,
    /// `d` above: relative slow-down added per drifting job.
    pub drift_per_job: f64,
    /// Per-kernel factors (by `KERNEL` name), e.g. `{a: 1.1, b: 0.9}` flips the order of two
    /// kernels within 20% of each other.
    pub kernel_factors: BTreeMap<String, f64>,
    /// Seed of the noise.
    pub seed: u64,
}

impl Default for GpuProfile {
    fn default() -> Self {
        Self {
            factor: 1.0,
            noise: 0.0,
            drift_after_jobs: None,
            drift_per_job: 0.0,
            kernel_factors: BTreeMap::new(),
            seed: 0,
        }
    }
}

/// The increment of splitmix64's state.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One splitmix64 output for the state `x` (Steele, Lea, Flood 2014; the state advances by
/// [`GAMMA`] before mixing, so `splitmix64(0)` is the stream's first output 0xE220A8397B1DCDAF).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl GpuProfile {
    /// Checks the profile; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor > 0.0) {
            return Err(format!("gpu.factor must be a finite number > 0 (got {})", self.factor));
        }
        if !(self.noise.is_finite() && (0.0..0.5).contains(&self.noise)) {
            return Err(format!("gpu.noise must be within [0, 0.5) (got {})", self.noise));
        }
        if !(self.drift_per_job.is_finite() && self.drift_per_job >= 0.0) {
            return Err(format!("gpu.drift_per_job must be a finite number >= 0 (got {})", self.drift_per_job));
        }
        if self.drift_per_job > 0.0 && self.drift_after_jobs.is_none() {
            return Err("gpu.drift_per_job is set but gpu.drift_after_jobs is not (when does the drift start?)".into());
        }
        for (name, f) in &self.kernel_factors {
            if name.is_empty() || name.contains([',', '=']) || name.chars().any(char::is_whitespace) {
                return Err(format!(
                    "gpu.kernel_factors: kernel name {name:?} must be non-empty, without ',', '=' or whitespace"
                ));
            }
            if !(f.is_finite() && *f > 0.0) {
                return Err(format!("gpu.kernel_factors[{name:?}] must be a finite number > 0 (got {f})"));
            }
        }
        Ok(())
    }

    /// The noise draw of job `job_index`: uniform in [-1, 1), a pure function of the seed and
    /// the index (the `job_index`-th output of a splitmix64 stream started at `seed`).
    pub fn noise_draw(&self, job_index: u32) -> f64 {
        let z = splitmix64(self.seed.wrapping_add(u64::from(job_index).wrapping_mul(GAMMA)));
        // 53 high bits → [0, 1), exactly representable.
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        2.0 * unit - 1.0
    }

    /// The factor every kernel time of the agent's job `job_index` (0: its first job) is
    /// multiplied by: `factor` × drift × noise (kernel factors come on top, per kernel).
    pub fn job_factor(&self, job_index: u32) -> f64 {
        let mut f = self.factor;
        if let Some(k) = self.drift_after_jobs
            && job_index >= k
        {
            f *= 1.0 + self.drift_per_job * f64::from(job_index - k + 1);
        }
        if self.noise > 0.0 {
            f *= 1.0 + self.noise_draw(job_index) * self.noise * 3f64.sqrt();
        }
        f
    }

    /// The `SIMGPU_*` variables of the agent's job `job_index`.
    pub fn env(&self, job_index: u32) -> Vec<(String, String)> {
        let mut env = vec![("SIMGPU_FACTOR".to_string(), self.job_factor(job_index).to_string())];
        if !self.kernel_factors.is_empty() {
            let list: Vec<String> = self.kernel_factors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            env.push(("SIMGPU_KERNEL_FACTORS".into(), list.join(",")));
        }
        env.push(("SIMGPU_JOB_INDEX".into(), job_index.to_string()));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn splitmix64_reference_outputs() {
        // The published stream for seed 0 (Vigna's splitmix64.c).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(GAMMA), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn default_is_honest() {
        let p = GpuProfile::default();
        assert!(p.validate().is_ok());
        for i in [0, 1, 7, u32::MAX] {
            assert_eq!(p.job_factor(i), 1.0);
        }
        let p: GpuProfile = serde_json::from_str("{}").unwrap();
        assert_eq!(p, GpuProfile::default());
    }

    #[test]
    fn slow_slot_alone() {
        let p = GpuProfile { factor: 1.5, ..GpuProfile::default() };
        assert_eq!(p.job_factor(0), 1.5);
        assert_eq!(p.job_factor(99), 1.5);
    }

    #[test]
    fn drift_alone_starts_after_k_jobs() {
        let p = GpuProfile { drift_after_jobs: Some(3), drift_per_job: 0.1, ..GpuProfile::default() };
        // jobs 0, 1, 2 (the first three) are clean
        assert_eq!(p.job_factor(0), 1.0);
        assert_eq!(p.job_factor(2), 1.0);
        // job index 3 (the fourth job) → 1.1, index 4 → 1.2, index 12 → 2.0
        assert!(close(p.job_factor(3), 1.1));
        assert!(close(p.job_factor(4), 1.2));
        assert!(close(p.job_factor(12), 2.0));
        // K = 0: the very first job already drifts
        let p0 = GpuProfile { drift_after_jobs: Some(0), drift_per_job: 0.5, ..GpuProfile::default() };
        assert!(close(p0.job_factor(0), 1.5));
        assert!(close(p0.job_factor(1), 2.0));
    }

    #[test]
    fn noise_alone_is_the_hand_computed_draw() {
        let p = GpuProfile { noise: 0.1, seed: 0, ..GpuProfile::default() };
        // job 0: z = 0xE220A8397B1DCDAF, z >> 11 = 0x1C4415072F63B9, / 2^53 = 0.8833…, u = 0.7666…
        let u0 = 2.0 * ((0xE220_A839_7B1D_CDAFu64 >> 11) as f64 / 9_007_199_254_740_992.0) - 1.0;
        assert!(close(p.noise_draw(0), u0));
        assert!(close(u0, 0.766_621_616_427_285_2));
        assert!(close(p.job_factor(0), 1.0 + u0 * 0.1 * 3f64.sqrt()));
        let u1 = 2.0 * ((0x6E78_9E6A_A1B9_65F4u64 >> 11) as f64 / 9_007_199_254_740_992.0) - 1.0;
        assert!(close(p.noise_draw(1), u1));
        assert!(close(p.job_factor(1), 1.0 + u1 * 0.1 * 3f64.sqrt()));
    }

    #[test]
    fn noise_has_the_promised_spread_and_is_bounded() {
        let p = GpuProfile { noise: 0.05, seed: 42, ..GpuProfile::default() };
        let n = 20_000u32;
        let xs: Vec<f64> = (0..n).map(|i| p.job_factor(i)).collect();
        let mean = xs.iter().sum::<f64>() / f64::from(n);
        let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / f64::from(n - 1)).sqrt();
        assert!((mean - 1.0).abs() < 0.002, "mean {mean}");
        assert!((std - 0.05).abs() < 0.002, "std {std}");
        let bound = 0.05 * 3f64.sqrt();
        assert!(xs.iter().all(|x| (x - 1.0).abs() <= bound), "a draw left ±noise·√3");
        // the largest noise accepted keeps every factor positive
        let p = GpuProfile { noise: 0.499_999, ..GpuProfile::default() };
        assert!((0..1000).all(|i| p.job_factor(i) > 0.1));
    }

    #[test]
    fn deterministic_per_seed_and_index() {
        let a = GpuProfile { noise: 0.2, seed: 7, ..GpuProfile::default() };
        let b = a.clone();
        for i in 0..100 {
            assert_eq!(a.job_factor(i).to_bits(), b.job_factor(i).to_bits());
        }
        let c = GpuProfile { seed: 8, ..a.clone() };
        assert_ne!(a.job_factor(0), c.job_factor(0));
        assert_ne!(a.job_factor(0), a.job_factor(1));
    }

    #[test]
    fn combined_distortions_multiply() {
        let p = GpuProfile {
            factor: 2.0,
            noise: 0.1,
            drift_after_jobs: Some(1),
            drift_per_job: 0.25,
            seed: 0,
            ..GpuProfile::default()
        };
        let u0 = p.noise_draw(0);
        let u2 = p.noise_draw(2);
        // job 0: no drift yet
        assert!(close(p.job_factor(0), 2.0 * (1.0 + u0 * 0.1 * 3f64.sqrt())));
        // job 2: second drifting job → × 1.5
        assert!(close(p.job_factor(2), 2.0 * 1.5 * (1.0 + u2 * 0.1 * 3f64.sqrt())));
    }

    #[test]
    fn env_names_and_format() {
        let p = GpuProfile {
            factor: 1.25,
            kernel_factors: [("b".to_string(), 0.9), ("a".to_string(), 1.1)].into(),
            ..GpuProfile::default()
        };
        assert_eq!(
            p.env(4),
            vec![
                ("SIMGPU_FACTOR".to_string(), "1.25".to_string()),
                ("SIMGPU_KERNEL_FACTORS".to_string(), "a=1.1,b=0.9".to_string()),
                ("SIMGPU_JOB_INDEX".to_string(), "4".to_string()),
            ]
        );
        // no kernel factors: no SIMGPU_KERNEL_FACTORS; factor 1 prints as "1"
        assert_eq!(
            GpuProfile::default().env(0),
            vec![("SIMGPU_FACTOR".to_string(), "1".to_string()), ("SIMGPU_JOB_INDEX".to_string(), "0".to_string())]
        );
        // the printed factor round-trips exactly
        let n = GpuProfile { noise: 0.3, seed: 5, ..GpuProfile::default() };
        let printed = &n.env(3)[0].1;
        assert_eq!(printed.parse::<f64>().unwrap().to_bits(), n.job_factor(3).to_bits());
    }

    #[test]
    fn validation() {
        let bad = |p: GpuProfile, needle: &str| {
            let e = p.validate().expect_err("must be rejected");
            assert!(e.contains(needle), "{e} lacks {needle}");
        };
        let d = GpuProfile::default;
        bad(GpuProfile { factor: 0.0, ..d() }, "gpu.factor");
        bad(GpuProfile { factor: -1.0, ..d() }, "gpu.factor");
        bad(GpuProfile { factor: f64::NAN, ..d() }, "gpu.factor");
        bad(GpuProfile { factor: f64::INFINITY, ..d() }, "gpu.factor");
        bad(GpuProfile { noise: -0.01, ..d() }, "gpu.noise");
        bad(GpuProfile { noise: 0.5, ..d() }, "gpu.noise");
        bad(GpuProfile { noise: f64::NAN, ..d() }, "gpu.noise");
        bad(GpuProfile { drift_after_jobs: Some(1), drift_per_job: -0.1, ..d() }, "gpu.drift_per_job");
        bad(GpuProfile { drift_per_job: 0.1, ..d() }, "drift_after_jobs");
        for name in ["", "a,b", "a=b", "a b"] {
            bad(GpuProfile { kernel_factors: [(name.to_string(), 1.0)].into(), ..d() }, "kernel name");
        }
        bad(GpuProfile { kernel_factors: [("k".to_string(), 0.0)].into(), ..d() }, "kernel_factors[\"k\"]");
        assert!(GpuProfile { factor: 0.5, noise: 0.499, ..d() }.validate().is_ok());
        assert!(
            GpuProfile {
                drift_after_jobs: Some(0),
                drift_per_job: 0.0,
                kernel_factors: [("k".into(), 2.0)].into(),
                ..d()
            }
            .validate()
            .is_ok()
        );
        // unknown fields are refused by serde
        assert!(serde_json::from_str::<GpuProfile>(r#"{"factr": 2}"#).is_err());
    }
}
