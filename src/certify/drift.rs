//! Drift: is a slot's canary time still what it was? A pure decision over the slot's own
//! history of good canaries and the fleet's (the medians of the other slots of the same GPU
//! model).
//!
//! A sample is an outlier against a set of times when it lies further from their median than
//! `max(k × 1.4826 × MAD, minRelative × median)`: 1.4826 × MAD estimates the standard
//! deviation of normal noise without letting a few bad samples inflate it, and the relative
//! floor keeps a very steady history (MAD ≈ 0) from calling 1 % of jitter drift. Against its
//! own history a slot is judged once it has `minHistory` good canaries; against the fleet
//! once `fleetMinSlots` other slots of its model have a median. `consecutive` outliers in a
//! row quarantine the slot; an outlier is never added to the history (which stays the
//! slot's good behaviour), a good sample is and resets the count.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scale from the median absolute deviation to a normal standard deviation.
pub const MAD_SCALE: f64 = 1.4826;

/// The drift bound and how much evidence it takes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DriftConfig {
    /// Bound in robust standard deviations.
    pub k: f64,
    /// Least relative deviation that counts (0.05 = 5 % of the median).
    pub min_relative: f64,
    /// Good canaries a slot needs before its own history judges it.
    pub min_history: usize,
    /// Good canaries kept per slot.
    pub history: usize,
    /// Other slots of the model the fleet comparison needs.
    pub fleet_min_slots: usize,
    /// Outliers in a row that quarantine the slot.
    pub consecutive: u32,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { k: 5.0, min_relative: 0.05, min_history: 3, history: 20, fleet_min_slots: 3, consecutive: 2 }
    }
}

/// What a sample was compared with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Basis {
    /// The slot's own good canaries.
    Own,
    /// The medians of the other slots of the same model.
    Fleet,
}

/// One comparison's figures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Deviation {
    pub basis: Basis,
    /// Median of the basis, seconds.
    pub median: f64,
    /// Median absolute deviation of the basis, seconds.
    pub mad: f64,
    /// Largest |sample − median| that is not drift, seconds.
    pub bound: f64,
    /// (sample − median) / median.
    pub relative: f64,
    pub outlier: bool,
}

/// A slot's canary record.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlotHistory {
    /// Good canary times, oldest first, at most `history`.
    #[serde(default)]
    pub samples: Vec<f64>,
    /// Outliers in a row.
    #[serde(default)]
    pub strikes: u32,
    /// When the last good canary was taken (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_at: Option<i64>,
}

/// What a new canary means for the slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Within bounds (or not enough evidence yet): recorded.
    Good(Vec<Deviation>),
    /// An outlier, not yet `consecutive` of them.
    Suspect { strikes: u32, deviations: Vec<Deviation> },
    /// `consecutive` outliers: quarantine the slot.
    Quarantine { strikes: u32, deviations: Vec<Deviation> },
}

/// Median of `xs` (mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Compares `sample` with `basis` times; `None` when there are fewer than `min` of them.
pub fn compare(basis_kind: Basis, basis: &[f64], sample: f64, min: usize, cfg: &DriftConfig) -> Option<Deviation> {
    if basis.len() < min.max(1) {
        return None;
    }
    let m = median(basis)?;
    let abs: Vec<f64> = basis.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&abs)?;
    let bound = (cfg.k * MAD_SCALE * mad).max(cfg.min_relative * m.abs());
    let d = sample - m;
    let relative = if m != 0.0 { d / m } else { 0.0 };
    Some(Deviation {
        basis: basis_kind,
        median: m,
        mad,
        bound,
        relative,
        outlier: !sample.is_finite() || d.abs() > bound,
    })
}

/// Judges `sample` (a canary time in seconds, taken at `at`) against the slot's history and
/// the fleet's medians, and records it.
pub fn record(state: &mut SlotHistory, sample: f64, at: i64, fleet: &[f64], cfg: &DriftConfig) -> Verdict {
    let deviations: Vec<Deviation> = [
        compare(Basis::Own, &state.samples, sample, cfg.min_history, cfg),
        compare(Basis::Fleet, fleet, sample, cfg.fleet_min_slots, cfg),
    ]
    .into_iter()
    .flatten()
    .collect();
    if deviations.iter().any(|d| d.outlier) {
        state.strikes = state.strikes.saturating_add(1);
        let strikes = state.strikes;
        return if strikes >= cfg.consecutive.max(1) {
            Verdict::Quarantine { strikes, deviations }
        } else {
            Verdict::Suspect { strikes, deviations }
        };
    }
    state.strikes = 0;
    state.samples.push(sample);
    let keep = cfg.history.max(1);
    if state.samples.len() > keep {
        let extra = state.samples.len() - keep;
        state.samples.drain(..extra);
    }
    state.last_good_at = Some(at);
    Verdict::Good(deviations)
}

#[cfg(test)]
mod tests;
