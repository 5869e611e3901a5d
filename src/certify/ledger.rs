//! The certification ledger of a GpuNode (`status.certification`): what a slot's report and
//! its canaries change, as pure functions the manager (`super::manager`) applies and
//! writes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::drift::{self, DriftConfig, Verdict};
use super::parity::{self, ParityThresholds};
use super::report::CertReport;
use super::suite::Suite;
use crate::api::ConditionSet;
use crate::api::ConditionStatus;
use crate::api::certification::{
    CanaryRecord, NodeCertification, ParityFigures, Quarantine, SlotCertification, states,
};

/// What to tell the user (an Event on the GpuNode).
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What a certification report did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportApplied {
    pub note: Note,
    /// A quarantine ended with this report: results since this time (Unix seconds) are
    /// suspect (marked again now that the old agent is gone).
    pub ended_quarantine: Option<i64>,
}

fn slot_mut<'a>(cert: &'a mut NodeCertification, pool: &str, slot: &str) -> &'a mut SlotCertification {
    if let Some(i) = cert.slots.iter().position(|s| s.slot == slot) {
        let s = &mut cert.slots[i];
        if s.pool != pool {
            // Another pool now runs on the slot: its record starts over.
            *s = SlotCertification { slot: slot.to_string(), pool: pool.to_string(), ..Default::default() };
        }
        return s;
    }
    cert.slots.push(SlotCertification { slot: slot.to_string(), pool: pool.to_string(), ..Default::default() });
    cert.slots.sort_by_key(|a| natural(&a.slot));
    let i = cert.slots.iter().position(|s| s.slot == slot).unwrap_or(0);
    &mut cert.slots[i]
}

fn natural(s: &str) -> (u64, String) {
    (s.parse().unwrap_or(u64::MAX), s.to_string())
}

fn time_of(unix: i64) -> Option<Time> {
    Timestamp::from_second(unix).ok().map(Time)
}

fn figures(r: &parity::ParityReport) -> ParityFigures {
    ParityFigures {
        passed: r.passed,
        compared: r.compared,
        missing: r.missing.clone(),
        kendall_tau: r.kendall_tau,
        inversion_rate: r.inversion_rate,
        top_k: r.top_k,
        top_k_overlap: r.top_k_overlap,
        top_k_mean_displacement: r.top_k_mean_displacement,
        tolerant_rank_changes: r.tolerant_rank_changes,
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The gate's figures in one line.
pub fn describe(f: &ParityFigures) -> String {
    format!(
        "Kendall τ {}, inversion rate {}, top-{} overlap {}, top-{} mean displacement {}, {} tolerant rank changes, {} kernels compared{}",
        opt(f.kendall_tau),
        opt(f.inversion_rate),
        f.top_k,
        opt(f.top_k_overlap),
        f.top_k,
        opt(f.top_k_mean_displacement),
        f.tolerant_rank_changes,
        f.compared,
        if f.missing.is_empty() { String::new() } else { format!(", no time for {}", f.missing.join(", ")) }
    )
}

/// Applies the report of pod `pod_uid` on `slot` (its init container's exit code and
/// termination message); `None` when that pod's report was already applied.
#[allow(clippy::too_many_arguments)]
pub fn apply_report(
    cert: &mut NodeCertification,
    pool: &str,
    slot: &str,
    pod_uid: &str,
    exit_code: i32,
    message: &str,
    suite: Result<&Suite, &str>,
    thresholds: &ParityThresholds,
) -> Option<ReportApplied> {
    let s = slot_mut(cert, pool, slot);
    if s.pod_uid == pod_uid {
        return None;
    }
    s.pod_uid = pod_uid.to_string();
    let was_quarantined = s.quarantine.as_ref().and_then(|q| q.suspect_since.or(Some(0)));
    let error = |s: &mut SlotCertification, msg: String| {
        s.state = states::ERROR.into();
        s.message = msg.clone();
        s.figures = None;
        s.epoch = None;
        Note { warning: true, reason: "CertificationError", message: format!("slot {}: {msg}", s.slot) }
    };
    let Some(report) = CertReport::from_message(message) else {
        let mut text: String = message.trim().chars().take(300).collect();
        if text.is_empty() {
            text = "no report".into();
        }
        let note = error(s, format!("the certification run ended with exit code {exit_code}: {text}"));
        return Some(ReportApplied { note, ended_quarantine: None });
    };
    s.checked_at = time_of(report.at);
    s.times = report.times.clone();
    s.gpu = report.gpu.clone();
    s.uuid = report.uuid.clone();
    s.driver = report.driver.clone();
    let suite = match suite {
        Ok(suite) => suite,
        Err(e) => {
            let note = error(s, format!("the pool's suite cannot be read: {e}"));
            return Some(ReportApplied { note, ended_quarantine: None });
        }
    };
    let judged = match parity::evaluate(&suite.reference(), &report.times, thresholds) {
        Ok(r) => figures(&r),
        Err(e) => {
            let note = error(s, e.to_string());
            return Some(ReportApplied { note, ended_quarantine: None });
        }
    };
    let mut failures: Vec<String> = report.failed.iter().map(|(k, why)| format!("{k}: {why}")).collect();
    failures.truncate(5);
    let failures = if failures.is_empty() { String::new() } else { format!("; {}", failures.join("; ")) };
    let text = describe(&judged);
    let passed = judged.passed;
    s.figures = Some(judged);
    let mut ended_quarantine = None;
    let note = if passed {
        s.state = states::CERTIFIED.into();
        s.epoch = Some(report.at.to_string());
        s.message = text.clone();
        if let Some(q) = s.quarantine.take() {
            ended_quarantine = q.suspect_since.or(was_quarantined);
            // A new epoch: the canary history starts over.
            s.canary = None;
        }
        Note {
            warning: false,
            reason: "SlotCertified",
            message: format!("slot {slot} certified (epoch {}): {text}", report.at),
        }
    } else {
        s.state = states::FAILED.into();
        s.epoch = None;
        s.message = format!("{text}{failures}");
        Note {
            warning: true,
            reason: "SlotCertificationFailed",
            message: format!("slot {slot} failed ranking parity: {text}{failures}"),
        }
    };
    Some(ReportApplied { note, ended_quarantine })
}

/// Why a certified slot must certify again, if it must: the node's driver or product
/// changed since to another known value (`node_driver`/`node_product` are the GpuNode's now;
/// empty: unknown, no change), or its certification
/// is older than `max_age_secs`. Marks it `Expired` (no epoch) and returns what to tell.
pub fn expire(
    s: &mut SlotCertification,
    node_driver: &str,
    node_product: &str,
    now: i64,
    max_age_secs: Option<i64>,
) -> Option<Note> {
    if s.state != states::CERTIFIED {
        return None;
    }
    // A value that disappears (labels being rewritten) is no change; a new known one is.
    let why = if !node_driver.is_empty() && s.node_driver != node_driver {
        format!("the node's driver changed from {:?} to {node_driver:?}", s.node_driver)
    } else if !node_product.is_empty() && s.node_product != node_product {
        format!("the node's GPU product changed from {:?} to {node_product:?}", s.node_product)
    } else {
        let checked = s.checked_at.as_ref().map(|t| t.0.as_second())?;
        let age = now.saturating_sub(checked);
        match max_age_secs {
            Some(max) if age >= max => format!("its certification is {}h old (recertifyAfterHours)", age / 3600),
            _ => return None,
        }
    };
    s.state = states::EXPIRED.into();
    s.epoch = None;
    s.message = format!("{why}: it certifies again");
    Some(Note { warning: false, reason: "SlotRecertifying", message: format!("slot {}: {}", s.slot, s.message) })
}

/// What a canary did.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryApplied {
    /// Already recorded (not newer than the slot's last canary).
    Duplicate,
    /// The slot has no certification record (its pool does not certify).
    NoRecord,
    Good,
    Suspect(Note),
    /// Quarantine the slot: drain its agent; results since `suspect_since` are suspect.
    Quarantined {
        note: Note,
        suspect_since: Option<i64>,
    },
}

/// The medians of the canary histories of every slot in `nodes` but `(gpunode, slot)`.
pub fn fleet_medians<'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a NodeCertification)>,
    gpunode: &str,
    slot: &str,
    kernel: &str,
) -> Vec<f64> {
    nodes
        .into_iter()
        .flat_map(|(name, c)| c.slots.iter().map(move |s| (name, s)))
        .filter(|(name, s)| !(*name == gpunode && s.slot == slot))
        .filter_map(|(_, s)| s.canary.as_ref().filter(|c| c.kernel == kernel))
        .filter_map(|c| drift::median(&c.history.samples))
        .collect()
}

/// Applies a canary of `kernel` (`seconds`, taken at `at`) to `slot`.
#[allow(clippy::too_many_arguments)]
pub fn apply_canary(
    cert: &mut NodeCertification,
    slot: &str,
    kernel: &str,
    seconds: f64,
    at: i64,
    fleet: &[f64],
    cfg: &DriftConfig,
    now: i64,
) -> CanaryApplied {
    let Some(s) = cert.slots.iter_mut().find(|s| s.slot == slot) else { return CanaryApplied::NoRecord };
    let rec = s.canary.get_or_insert_with(|| CanaryRecord { kernel: kernel.to_string(), ..Default::default() });
    if rec.kernel != kernel {
        // The suite's canary changed: a new history.
        *rec = CanaryRecord { kernel: kernel.to_string(), ..Default::default() };
    }
    if rec.last_at.is_some_and(|last| at <= last) {
        return CanaryApplied::Duplicate;
    }
    rec.last = Some(seconds);
    rec.last_at = Some(at);
    let describe_dev = |d: &[drift::Deviation]| -> String {
        d.iter()
            .map(|d| {
                format!(
                    "{:?}: {:+.1} % from the median {:.6} s (bound ±{:.6} s, MAD {:.6} s){}",
                    d.basis,
                    d.relative * 100.0,
                    d.median,
                    d.bound,
                    d.mad,
                    if d.outlier { " OUT" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match drift::record(&mut rec.history, seconds, at, fleet, cfg) {
        Verdict::Good(_) => CanaryApplied::Good,
        Verdict::Suspect { strikes, deviations } => CanaryApplied::Suspect(Note {
            warning: true,
            reason: "CanaryOutlier",
            message: format!(
                "slot {slot}: canary {kernel} took {seconds:.6} s, outlier {strikes} of {}: {}",
                cfg.consecutive.max(1),
                describe_dev(&deviations)
            ),
        }),
        Verdict::Quarantine { strikes, deviations } => {
            if s.state == states::QUARANTINED {
                return CanaryApplied::Good;
            }
            let suspect_since = rec.history.last_good_at;
            let message = format!(
                "canary {kernel} took {seconds:.6} s, {strikes} outliers in a row: {}",
                describe_dev(&deviations)
            );
            s.state = states::QUARANTINED.into();
            s.epoch = None;
            s.quarantine = Some(Quarantine { since: time_of(now), message: message.clone(), suspect_since });
            s.message = message.clone();
            CanaryApplied::Quarantined {
                note: Note {
                    warning: true,
                    reason: "SlotQuarantined",
                    message: format!(
                        "slot {slot} quarantined: {message}; its agent drains and it certifies again before serving"
                    ),
                },
                suspect_since,
            }
        }
    }
}

/// Recomputes the summary fields and conditions.
pub fn summarize(cert: &mut NodeCertification, generation: Option<i64>, now: Timestamp) {
    let count = |state: &str| cert.slots.iter().filter(|s| s.state == state).count() as i64;
    cert.certified = count(states::CERTIFIED);
    cert.failed = count(states::FAILED);
    cert.quarantined = count(states::QUARANTINED);
    cert.summary = format!("{}/{}", cert.certified, cert.slots.len());
    cert.min_kendall_tau =
        cert.slots.iter().filter_map(|s| s.figures.as_ref().and_then(|f| f.kendall_tau)).min_by(f64::total_cmp);
    let by_state = |state: &str| -> BTreeMap<String, String> {
        cert.slots.iter().filter(|s| s.state == state).map(|s| (s.slot.clone(), s.message.clone())).collect()
    };
    let list =
        |m: BTreeMap<String, String>| m.iter().map(|(k, v)| format!("slot {k}: {v}")).collect::<Vec<_>>().join("; ");
    let mut conds = ConditionSet::new(&cert.conditions, generation, now);
    let not_certified: BTreeMap<String, String> = cert
        .slots
        .iter()
        .filter(|s| s.state != states::CERTIFIED)
        .map(|s| (s.slot.clone(), format!("{} ({})", s.state, s.message)))
        .collect();
    if not_certified.is_empty() {
        conds.set("Certified", ConditionStatus::True, "AllSlotsCertified", cert.summary.clone());
    } else {
        conds.set("Certified", ConditionStatus::False, "SlotsNotCertified", list(not_certified));
    }
    let q = by_state(states::QUARANTINED);
    if q.is_empty() {
        conds.set("Quarantined", ConditionStatus::False, "NoDrift", "");
    } else {
        conds.set("Quarantined", ConditionStatus::True, "CanaryDrift", list(q));
    }
    cert.conditions = conds.into_vec();
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
