//! `benchkite certify` (the agent pod's init container): times every kernel of the
//! reference suite on this slot, judges the ranking against the reference and reports the
//! times in the container's termination message; and the drift canary `benchkite run`
//! times after an evaluation when it is due.
//!
//! The suite kernels are the admin's, run before any submission on this pod; they go through
//! the same evaluation (sandbox included) as a KernelJob in `leaderboard` mode, and a
//! kernel's time is its ranked score in seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::sysinfo::Probe;
use super::{PROBE_WAIT, RunArgs, Timing, evaluate, log};
use crate::certify::parity::{self, ParityThresholds};
use crate::certify::report::{self, CertReport};
use crate::certify::suite::{Suite, SuiteKernel};
use crate::contract::{self, CanarySummary};

/// Exit status of a slot that failed certification where certification is required (the
/// agent container does not start; the kubelet retries the init container with back-off).
pub const EXIT_NOT_CERTIFIED: i32 = 3;
/// Exit status when certification could not run at all where it is required.
pub const EXIT_CANNOT_CERTIFY: i32 = 2;
/// File in the state directory holding the slot's certification epoch.
pub const EPOCH_FILE: &str = "certification-epoch";
/// File in the state directory holding the canary's schedule.
const CANARY_STATE_FILE: &str = "canary.json";

/// `benchkite certify`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertifyArgs {
    /// The reference suite (YAML or JSON; see the README).
    #[arg(long, env = "BENCHKITE_SUITE_FILE", value_name = "FILE")]
    pub suite: PathBuf,
    /// The ranking-parity thresholds as JSON (camelCase fields of `spec.certification.thresholds`;
    /// absent fields take the seed's defaults).
    #[arg(long, env = "BENCHKITE_CERTIFY_THRESHOLDS", value_name = "JSON")]
    pub thresholds: Option<String>,
    /// Exit non-zero when the slot fails (the pool requires certified slots): its agent
    /// never starts.
    #[arg(long, env = "BENCHKITE_CERTIFY_REQUIRED")]
    pub required: bool,
    /// Where the report goes (the container's terminationMessagePath).
    #[arg(long, env = "BENCHKITE_TERMINATION_LOG", default_value = "/dev/termination-log", value_name = "FILE")]
    pub termination_log: PathBuf,
    /// Directory shared with the agent container: the certification epoch goes there.
    #[arg(long, env = "BENCHKITE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Take the reference on this (trusted) node instead: time every kernel and write the
    /// suite to FILE with each `referenceSeconds` set to the time measured here (the suite's
    /// own times may be absent). No gate is judged; exit 0 only when every kernel has a time.
    #[arg(long, value_name = "FILE")]
    pub reference_out: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Times one suite kernel: its ranked score in seconds, or why there is none.
fn time_kernel(run: &RunArgs, kernel: &SuiteKernel, probe: &mut Probe, scratch: &Path) -> Result<f64, String> {
    let payload = kernel.payload().map_err(|e| e.to_string())?;
    let file = scratch.join(format!("{}.payload", kernel.name));
    std::fs::write(&file, payload).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let mut args = run.clone();
    args.payload_file = Some(file);
    args.workdir = None;
    let mut timing = Timing { start: Instant::now(), first_spawn: None, last_end: None };
    let mut harness = String::new();
    let (result, ranking_by) = evaluate(&args, probe, &mut timing, &mut harness);
    if !result.success {
        return Err(format!("infrastructure: {}", result.error));
    }
    match contract::score(&result, &ranking_by) {
        Some(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(if contract::verdict(&result) == Some(false) {
            "its checks failed".to_string()
        } else {
            "no ranked score".to_string()
        }),
    }
}

fn scratch_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("benchkite-certify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `benchkite certify`: the exit status.
pub fn main(args: CertifyArgs) -> i32 {
    if let Err(e) = super::sandbox::harden_self() {
        log(&format!("warning: {e}"));
    }
    let fail = |msg: String| -> i32 {
        log(&msg);
        // Not a report: the controller shows the message as the reason certification could
        // not run.
        let _ = std::fs::write(&args.termination_log, msg.as_bytes());
        if args.required { EXIT_CANNOT_CERTIFY } else { 0 }
    };
    let text = match std::fs::read_to_string(&args.suite) {
        Ok(t) => t,
        Err(e) => return fail(format!("certify: reading the suite {} failed: {e}", args.suite.display())),
    };
    let parsed = if args.reference_out.is_some() { Suite::parse_unreferenced(&text) } else { Suite::parse(&text) };
    let suite = match parsed {
        Ok(s) => s,
        Err(e) => return fail(format!("certify: {e}")),
    };
    let thresholds: ParityThresholds = match args.thresholds.as_deref().filter(|t| !t.trim().is_empty()) {
        None => ParityThresholds::default(),
        Some(t) => match serde_json::from_str(t) {
            Ok(t) => t,
            Err(e) => return fail(format!("certify: the thresholds are not valid JSON: {e}")),
        },
    };
    let scratch = match scratch_dir() {
        Ok(d) => d,
        Err(e) => return fail(format!("certify: {e}")),
    };
    let mut probe = Probe::start(args.run.python.clone(), !args.run.no_gpu_probe);
    let mut times = BTreeMap::new();
    let mut failed = BTreeMap::new();
    for k in &suite.kernels {
        match time_kernel(&args.run, k, &mut probe, &scratch) {
            Ok(t) => {
                log(&format!("certify: {} {t:.9} s (reference {:.9} s)", k.name, k.reference_seconds));
                times.insert(k.name.clone(), t);
            }
            Err(e) => {
                log(&format!("certify: {} has no time: {e}", k.name));
                failed.insert(k.name.clone(), e);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if let Some(out) = &args.reference_out {
        return take_reference(suite, &times, &failed, out);
    }
    let verdict = parity::evaluate(&suite.reference(), &times, &thresholds);
    let passed = match &verdict {
        Ok(r) => r.passed,
        Err(e) => {
            log(&format!("certify: {e}"));
            false
        }
    };
    if let Ok(r) = &verdict {
        log(&format!(
            "certify: {} — Kendall τ {:?}, inversion rate {:?}, top-{} overlap {:?}, mean displacement {:?}, tolerant rank changes {}",
            if r.passed { "PASSED" } else { "FAILED" },
            r.kendall_tau,
            r.inversion_rate,
            r.top_k,
            r.top_k_overlap,
            r.top_k_mean_displacement,
            r.tolerant_rank_changes
        ));
    }
    let fp = probe.fingerprint(PROBE_WAIT).fingerprint.clone();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let report = CertReport {
        v: report::VERSION,
        at: now_unix(),
        node: env("BENCHKITE_NODE_NAME"),
        slot: env("KERNELBOT_GPU_INDEX"),
        gpu: fp.gpu_model,
        uuid: fp.gpu_uuid,
        driver: fp.driver_version,
        times,
        failed,
        passed,
    };
    if let Err(e) = std::fs::write(&args.termination_log, report.to_message()) {
        log(&format!("certify: writing the report to {} failed: {e}", args.termination_log.display()));
    }
    println!("{}", report.to_message());
    if let Some(dir) = &args.state_dir {
        let epoch = if passed { report.at.to_string() } else { String::new() };
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(dir.join(EPOCH_FILE), epoch)) {
            log(&format!("certify: writing the epoch into {} failed: {e}", dir.display()));
        }
    }
    if passed || !args.required { 0 } else { EXIT_NOT_CERTIFIED }
}

/// `--reference-out`: the suite with the times measured here as its reference.
fn take_reference(
    mut suite: Suite,
    times: &BTreeMap<String, f64>,
    failed: &BTreeMap<String, String>,
    out: &Path,
) -> i32 {
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|(k, why)| format!("{k}: {why}")).collect();
        log(&format!("certify: no reference written: kernels without a time: {}", list.join("; ")));
        return 1;
    }
    for k in &mut suite.kernels {
        if let Some(t) = times.get(&k.name) {
            k.reference_seconds = *t;
        }
    }
    let written = serde_yaml::to_string(&suite)
        .map_err(|e| e.to_string())
        .and_then(|y| std::fs::write(out, y).map_err(|e| format!("writing {}: {e}", out.display())));
    match written {
        Ok(()) => {
            log(&format!("certify: reference of {} kernels written to {}", times.len(), out.display()));
            0
        }
        Err(e) => {
            log(&format!("certify: {e}"));
            1
        }
    }
}

/// When the canary runs: every `every` evaluations of this slot, or when `minutes` passed
/// since the last one (0 turns either off), and at the slot's first evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanarySchedule {
    pub every: u32,
    pub minutes: u32,
}

/// What the state directory remembers of the canary.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct CanaryState {
    /// Evaluations since the last canary.
    pub since: u32,
    /// When the last canary ran (Unix seconds).
    pub last_at: Option<i64>,
}

impl CanarySchedule {
    /// From `BENCHKITE_CANARY_EVERY` / `BENCHKITE_CANARY_MINUTES`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> CanarySchedule {
        let n = |k: &str, default: u32| get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(default);
        CanarySchedule { every: n("BENCHKITE_CANARY_EVERY", 20), minutes: n("BENCHKITE_CANARY_MINUTES", 60) }
    }

    /// Counts this evaluation; whether the canary is due now.
    pub fn due(&self, state: &mut CanaryState, now: i64) -> bool {
        state.since = state.since.saturating_add(1);
        let Some(last) = state.last_at else { return true };
        (self.every > 0 && state.since >= self.every)
            || (self.minutes > 0 && now.saturating_sub(last) >= i64::from(self.minutes) * 60)
    }
}

/// Runs the suite's canary after an evaluation when it is due (`BENCHKITE_SUITE_FILE` and
/// `BENCHKITE_STATE_DIR` set); `None` when it is not configured, not due or has no time.
pub(super) fn canary(run: &RunArgs, probe: &mut Probe) -> Option<CanarySummary> {
    let suite_file = std::env::var_os("BENCHKITE_SUITE_FILE")?;
    let state_dir = PathBuf::from(std::env::var_os("BENCHKITE_STATE_DIR")?);
    let schedule = CanarySchedule::from_env(|k| std::env::var(k).ok());
    let state_file = state_dir.join(CANARY_STATE_FILE);
    let mut state: CanaryState =
        std::fs::read(&state_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let now = now_unix();
    let due = schedule.due(&mut state, now);
    let result = if due {
        let suite = std::fs::read_to_string(&suite_file)
            .map_err(|e| e.to_string())
            .and_then(|t| Suite::parse(&t).map_err(|e| e.to_string()));
        match suite {
            Ok(suite) => match suite.canary() {
                Some(k) => {
                    let timed = scratch_dir().and_then(|dir| {
                        let t = time_kernel(run, k, probe, &dir);
                        let _ = std::fs::remove_dir_all(&dir);
                        t
                    });
                    match timed {
                        Ok(seconds) => {
                            state = CanaryState { since: 0, last_at: Some(now) };
                            log(&format!("canary: {} {seconds:.9} s", k.name));
                            Some(CanarySummary { kernel: k.name.clone(), seconds, at: now })
                        }
                        Err(e) => {
                            log(&format!("canary: {} has no time: {e}", k.name));
                            None
                        }
                    }
                }
                None => None,
            },
            Err(e) => {
                log(&format!("canary: the suite {}: {e}", Path::new(&suite_file).display()));
                None
            }
        }
    } else {
        None
    };
    if let Err(e) = std::fs::create_dir_all(&state_dir)
        .and_then(|()| std::fs::write(&state_file, serde_json::to_vec(&state).unwrap_or_default()))
    {
        log(&format!("canary: writing {} failed: {e}", state_file.display()));
    }
    result
}

/// The slot's certification epoch: `BENCHKITE_CERTIFICATION_EPOCH`, else what `certify`
/// left in the state directory.
pub(super) fn epoch() -> Option<String> {
    if let Ok(e) = std::env::var("BENCHKITE_CERTIFICATION_EPOCH")
        && !e.is_empty()
    {
        return Some(e);
    }
    let dir = PathBuf::from(std::env::var_os("BENCHKITE_STATE_DIR")?);
    let e = std::fs::read_to_string(dir.join(EPOCH_FILE)).ok()?;
    let e = e.trim();
    (!e.is_empty() && e.len() <= 32).then(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_runs_first_then_every_n_or_every_t() {
        let s = CanarySchedule { every: 3, minutes: 10 };
        let mut st = CanaryState::default();
        assert!(s.due(&mut st, 1000), "never ran: now");
        st = CanaryState { since: 0, last_at: Some(1000) };
        assert!(!s.due(&mut st, 1001));
        assert!(!s.due(&mut st, 1002));
        assert!(s.due(&mut st, 1003), "the third evaluation");
        let mut st = CanaryState { since: 0, last_at: Some(1000) };
        assert!(!s.due(&mut st, 1599));
        assert!(s.due(&mut st, 1600), "ten minutes");
        let off = CanarySchedule { every: 0, minutes: 0 };
        let mut st = CanaryState { since: 1000, last_at: Some(0) };
        assert!(!off.due(&mut st, i64::MAX), "both off: only the first");
    }

    #[test]
    fn the_schedule_reads_its_env_with_defaults() {
        let s = CanarySchedule::from_env(|k| (k == "BENCHKITE_CANARY_EVERY").then(|| "5".to_string()));
        assert_eq!(s, CanarySchedule { every: 5, minutes: 60 });
        let s = CanarySchedule::from_env(|_| Some("junk".into()));
        assert_eq!(s, CanarySchedule { every: 20, minutes: 60 });
    }
}
