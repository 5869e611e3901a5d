//! The ranking-parity gate: does a candidate (a GPU slot) rank a reference suite of kernels
//! the way the reference does?
//!
//! The seed (`000_d8bb9734d8e99f99.txt`) names the gate's figures and their defaults; this
//! module defines them. Inputs are two maps, kernel name → time in seconds (lower is better,
//! rank 1 is the fastest kernel).
//!
//! # Definitions
//!
//! **Compared kernels.** The kernels present in both maps; every figure is computed over them
//! alone (n = their count, n₀ = n(n−1)/2 pairs). Reference kernels absent from the candidate
//! are listed in `missing` and fail the `complete` check; candidate kernels absent from the
//! reference are listed in `unexpected` and otherwise ignored.
//!
//! **Tie (epsilon).** Two times `s`, `t` of the same measurement (both reference or both
//! candidate) are tied when `s == t` or `|s − t| < ε · min(s, t)`: they differ by less than
//! ε relative to the faster one (ε = 0.05 by default, the seed's 5 %). Exact ties are always
//! ties, so ε = 0 gives exactly the classic, exact-tie statistics. The relation is not
//! transitive (1.00 ~ 1.04 ~ 1.08 but 1.00 ≁ 1.08); every figure below works on pairs or on
//! per-kernel counts, so it never needs tie groups.
//!
//! **Pairs.** A pair of compared kernels is *tied in the reference* (counted in n₁) or *tied in
//! the candidate* (n₂) by the rule above, each measurement judged by its own times. A pair tied
//! in neither is *concordant* (C) when both order it the same way, else *discordant* (D).
//!
//! - **`kendall_tau`**: Kendall's τ-b, `(C − D) / √((n₀ − n₁)(n₀ − n₂))`, in [−1, 1]; `None`
//!   when either factor is 0 (fewer than two kernels, or one side ties everything). Judging
//!   both sides by ε is what makes an identical ranking score 1 when the reference has close
//!   pairs (with ties on one side only, τ-b cannot reach 1). A pair the reference orders but
//!   the candidate ties is not discordant, but it still lowers τ through the denominator.
//!   With ε = 0 this is `scipy.stats.kendalltau(x, y)` (variant `b`), checked in
//!   `tests/parity_scipy.rs`.
//! - **`inversion_rate`**: `D / (n₀ − n₁)`, the share of the pairs the reference orders beyond
//!   ε that the candidate orders the other way beyond ε; `None` when the reference orders no
//!   pair. A close pair (tied in the reference) swapped by the candidate is never an inversion.
//!
//! **Ranks.** Each side's *strict rank* of a kernel is its 1-based position when the compared
//! kernels are sorted by (time, name); the name only breaks exact ties, for determinism.
//!
//! - **`top_k_overlap`**: with k = min(K, n) (K = 20 by default), `|R ∩ C| / k`, where R and C
//!   are the k kernels of best strict rank in the reference and in the candidate; `None` when
//!   n = 0. Standard set overlap: ε plays no part (a close pair straddling rank k costs 1/k,
//!   which the 80 % default absorbs).
//! - **`top_k_mean_displacement`**: the mean, over the reference's top k, of
//!   `|candidate strict rank − reference strict rank|` (candidate ranks over all n compared
//!   kernels, so a top kernel that falls far counts fully); `None` when n = 0. ε plays no part.
//! - **`tolerant_rank_changes`**: the number of kernels whose candidate strict rank lies outside
//!   the ranks the reference allows them once its ε-ties may be ordered either way: for kernel
//!   k, `[1 + #faster, n − #slower]`, where #faster (#slower) counts the kernels the reference
//!   times faster (slower) than k *beyond* ε. A kernel that only swapped with kernels the
//!   reference ties with it is not counted. The tolerance is the reference's alone: a candidate
//!   that reverses a pair the reference separates moves both kernels, however close the
//!   candidate's own times are. `rank_changes` lists the counted kernels.
//!
//! **Gate.** `passed` when every check passes: complete, τ ≥ min, inversion rate ≤ max, overlap
//! ≥ min, mean displacement ≤ max, tolerant rank changes ≤ max. A figure that is `None` fails
//! its check: a gate certifies nothing it could not measure.
//!
//! Cost: O(n²) pairs, fine for reference suites (hundreds of kernels).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The gate's thresholds. Defaults are the seed's; the seed's `_PCT` settings are given here as
/// fractions (5 % → 0.05).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ParityThresholds {
    /// Relative tie epsilon (seed `PARITY_TIE_EPSILON_PCT` = 5 %).
    pub tie_epsilon: f64,
    /// K of the top-K figures (seed `PARITY_TOP_K` = 20).
    pub top_k: u32,
    /// Maximum inversion rate (seed `PARITY_MAX_INVERSION_RATE_PCT` = 2.5 %).
    pub max_inversion_rate: f64,
    /// Minimum Kendall τ-b (seed `PARITY_MIN_KENDALL_TAU` = 0.96).
    pub min_kendall_tau: f64,
    /// Maximum top-K mean displacement, in ranks (seed `PARITY_MAX_TOPK_MEAN_DISPLACEMENT` = 4).
    pub max_top_k_mean_displacement: f64,
    /// Minimum top-K overlap (seed `PARITY_MIN_TOPK_OVERLAP_PCT` = 80 %).
    pub min_top_k_overlap: f64,
    /// Maximum tolerant rank changes (seed `PARITY_MAX_TOLERANT_RANK_CHANGES` = 20).
    pub max_tolerant_rank_changes: u32,
}

impl Default for ParityThresholds {
    fn default() -> Self {
        ParityThresholds {
            tie_epsilon: 0.05,
            top_k: 20,
            max_inversion_rate: 0.025,
            min_kendall_tau: 0.96,
            max_top_k_mean_displacement: 4.0,
            min_top_k_overlap: 0.80,
            max_tolerant_rank_changes: 20,
        }
    }
}

impl ParityThresholds {
    /// Rejects thresholds the gate cannot apply meaningfully.
    pub fn validate(&self) -> Result<(), ParityError> {
        let reals = [
            ("tieEpsilon", self.tie_epsilon),
            ("maxInversionRate", self.max_inversion_rate),
            ("minKendallTau", self.min_kendall_tau),
            ("maxTopKMeanDisplacement", self.max_top_k_mean_displacement),
            ("minTopKOverlap", self.min_top_k_overlap),
        ];
        for (name, value) in reals {
            if !value.is_finite() {
                return Err(ParityError::InvalidThreshold { name, value: value.to_string(), reason: "must be finite" });
            }
        }
        if self.tie_epsilon < 0.0 {
            let value = self.tie_epsilon.to_string();
            return Err(ParityError::InvalidThreshold { name: "tieEpsilon", value, reason: "must be >= 0" });
        }
        if self.top_k == 0 {
            return Err(ParityError::InvalidThreshold { name: "topK", value: "0".into(), reason: "must be >= 1" });
        }
        Ok(())
    }
}

/// Which input a bad time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Reference,
    Candidate,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Reference => "reference",
            Side::Candidate => "candidate",
        })
    }
}

/// Inputs the gate refuses to judge.
#[derive(Debug, Error, PartialEq)]
pub enum ParityError {
    #[error("ranking parity: the reference has no kernels")]
    EmptyReference,
    #[error("ranking parity: {side} time of kernel {kernel:?} is {value}; times must be finite seconds > 0")]
    InvalidTime { side: Side, kernel: String, value: f64 },
    #[error("ranking parity: threshold {name} = {value} {reason}")]
    InvalidThreshold { name: &'static str, value: String, reason: &'static str },
}

/// Pass/fail of each check of the gate.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParityChecks {
    /// The candidate timed every reference kernel.
    pub complete: bool,
    pub kendall_tau: bool,
    pub inversion_rate: bool,
    pub top_k_overlap: bool,
    pub top_k_mean_displacement: bool,
    pub tolerant_rank_changes: bool,
}

/// A kernel counted in `tolerant_rank_changes`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RankChange {
    pub kernel: String,
    /// Strict rank in the reference.
    pub reference_rank: u32,
    /// Strict rank in the candidate.
    pub candidate_rank: u32,
}

/// The gate's figures and verdict (see the module documentation for the definitions).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParityReport {
    /// Kernels timed by both sides.
    pub compared: u32,
    /// Reference kernels the candidate did not time (fails the gate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Candidate kernels not in the reference (ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unexpected: Vec<String>,
    pub kendall_tau: Option<f64>,
    pub inversion_rate: Option<f64>,
    /// Pairs both sides order the same way beyond epsilon.
    pub concordant_pairs: u64,
    /// Pairs both sides order beyond epsilon, in opposite ways (inversions).
    pub discordant_pairs: u64,
    /// Pairs the reference orders beyond epsilon.
    pub reference_ordered_pairs: u64,
    /// The K used: min(thresholds.topK, compared).
    pub top_k: u32,
    pub top_k_overlap: Option<f64>,
    pub top_k_mean_displacement: Option<f64>,
    pub tolerant_rank_changes: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_changes: Vec<RankChange>,
    pub checks: ParityChecks,
    pub passed: bool,
    pub thresholds: ParityThresholds,
}

/// Whether two times of one measurement are tied under the relative epsilon.
pub fn tied(s: f64, t: f64, epsilon: f64) -> bool {
    s == t || (s - t).abs() < epsilon * s.min(t)
}

fn check_times(side: Side, times: &BTreeMap<String, f64>) -> Result<(), ParityError> {
    for (kernel, &value) in times {
        if !value.is_finite() || value <= 0.0 {
            return Err(ParityError::InvalidTime { side, kernel: kernel.clone(), value });
        }
    }
    Ok(())
}

/// Indices of `times` sorted by (time, name); `names` is sorted, so a stable sort by time
/// breaks exact ties by name.
fn strict_order(times: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[a].total_cmp(&times[b]));
    order
}

/// 1-based rank of each index, from an order.
fn ranks_of(order: &[usize]) -> Vec<usize> {
    let mut ranks = vec![0; order.len()];
    for (position, &index) in order.iter().enumerate() {
        ranks[index] = position + 1;
    }
    ranks
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Judges `candidate` against `reference` (kernel name → seconds).
pub fn evaluate(
    reference: &BTreeMap<String, f64>,
    candidate: &BTreeMap<String, f64>,
    thresholds: &ParityThresholds,
) -> Result<ParityReport, ParityError> {
    thresholds.validate()?;
    if reference.is_empty() {
        return Err(ParityError::EmptyReference);
    }
    check_times(Side::Reference, reference)?;
    check_times(Side::Candidate, candidate)?;
    let eps = thresholds.tie_epsilon;

    let missing: Vec<String> = reference.keys().filter(|k| !candidate.contains_key(*k)).cloned().collect();
    let unexpected: Vec<String> = candidate.keys().filter(|k| !reference.contains_key(*k)).cloned().collect();
    // Compared kernels, in name order (BTreeMap iteration).
    let (names, pairs): (Vec<&String>, Vec<(f64, f64)>) =
        reference.iter().filter_map(|(k, &r)| candidate.get(k).map(|&c| (k, (r, c)))).unzip();
    let ref_times: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let cand_times: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let n = names.len();

    // Pair classification.
    let (mut concordant, mut discordant, mut ref_ties, mut cand_ties) = (0u64, 0u64, 0u64, 0u64);
    // Per kernel: kernels the reference times faster / slower beyond epsilon.
    let mut faster = vec![0usize; n];
    let mut slower = vec![0usize; n];
    for i in 0..n {
        for j in i + 1..n {
            let (ri, rj, ci, cj) = (ref_times[i], ref_times[j], cand_times[i], cand_times[j]);
            let ref_tie = tied(ri, rj, eps);
            let cand_tie = tied(ci, cj, eps);
            if ref_tie {
                ref_ties += 1;
            } else if ri < rj {
                faster[j] += 1;
                slower[i] += 1;
            } else {
                faster[i] += 1;
                slower[j] += 1;
            }
            if cand_tie {
                cand_ties += 1;
            }
            if !ref_tie && !cand_tie {
                if (ri < rj) == (ci < cj) {
                    concordant += 1;
                } else {
                    discordant += 1;
                }
            }
        }
    }
    let all_pairs = (n as u64) * (n as u64).saturating_sub(1) / 2;
    let ref_ordered = all_pairs - ref_ties;
    let cand_ordered = all_pairs - cand_ties;
    let kendall_tau = (ref_ordered > 0 && cand_ordered > 0).then(|| {
        let tau = (concordant as f64 - discordant as f64) / ((ref_ordered as f64) * (cand_ordered as f64)).sqrt();
        tau.clamp(-1.0, 1.0)
    });
    let inversion_rate = (ref_ordered > 0).then(|| discordant as f64 / ref_ordered as f64);

    // Strict ranks and the top-K figures.
    let ref_order = strict_order(&ref_times);
    let cand_order = strict_order(&cand_times);
    let ref_rank = ranks_of(&ref_order);
    let cand_rank = ranks_of(&cand_order);
    let k = (thresholds.top_k as usize).min(n);
    let (top_k_overlap, top_k_mean_displacement) = if k == 0 {
        (None, None)
    } else {
        let in_both = ref_order[..k].iter().filter(|&&i| cand_rank[i] <= k).count();
        let displacement: usize = ref_order[..k].iter().map(|&i| cand_rank[i].abs_diff(ref_rank[i])).sum();
        (Some(in_both as f64 / k as f64), Some(displacement as f64 / k as f64))
    };

    // Tolerant rank changes, reported in reference rank order.
    let rank_changes: Vec<RankChange> = ref_order
        .iter()
        .filter(|&&i| {
            let (lo, hi) = (1 + faster[i], n - slower[i]);
            cand_rank[i] < lo || cand_rank[i] > hi
        })
        .map(|&i| RankChange {
            kernel: names[i].clone(),
            reference_rank: count(ref_rank[i]),
            candidate_rank: count(cand_rank[i]),
        })
        .collect();
    let tolerant_rank_changes = count(rank_changes.len());

    let checks = ParityChecks {
        complete: missing.is_empty(),
        kendall_tau: kendall_tau.is_some_and(|t| t >= thresholds.min_kendall_tau),
        inversion_rate: inversion_rate.is_some_and(|r| r <= thresholds.max_inversion_rate),
        top_k_overlap: top_k_overlap.is_some_and(|o| o >= thresholds.min_top_k_overlap),
        top_k_mean_displacement: top_k_mean_displacement.is_some_and(|d| d <= thresholds.max_top_k_mean_displacement),
        tolerant_rank_changes: tolerant_rank_changes <= thresholds.max_tolerant_rank_changes,
    };
    let passed = checks.complete
        && checks.kendall_tau
        && checks.inversion_rate
        && checks.top_k_overlap
        && checks.top_k_mean_displacement
        && checks.tolerant_rank_changes;

    Ok(ParityReport {
        compared: count(n),
        missing,
        unexpected,
        kendall_tau,
        inversion_rate,
        concordant_pairs: concordant,
        discordant_pairs: discordant,
        reference_ordered_pairs: ref_ordered,
        top_k: count(k),
        top_k_overlap,
        top_k_mean_displacement,
        tolerant_rank_changes,
        rank_changes,
        checks,
        passed,
        thresholds: thresholds.clone(),
    })
}

#[cfg(test)]
#[path = "parity_tests.rs"]
mod tests;
