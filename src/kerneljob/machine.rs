//! The KernelJob state machine, pure: what a build's state means for the job, when a job
//! times out, whether an attempt is retried, and how a result becomes status.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::kerneljob::{
    BenchmarkStatus, CanaryStatus, FingerprintStatus, KernelJobSpec, Mode, Phase, ResultStatus, RunStatus,
    SummaryStatus, SystemStatus, TestsStatus,
};
use crate::contract::summary::ResultSummary;

/// Default per-run limit of the contract (seconds).
pub const DEFAULT_RUN_TIMEOUT: i64 = 180;
/// Added to the run limits for the default overall timeout: queueing, start-up, compiling.
pub const TIMEOUT_ALLOWANCE: i64 = 600;

/// Meta-data keys benchkite puts on every build.
pub mod meta {
    /// `namespace/name` of the KernelJob.
    pub const JOB: &str = "benchkite.dev/kerneljob";
    /// `KERNELBOT_RUN_ID` of the attempt: unique per attempt, the idempotency key.
    pub const RUN_ID: &str = "benchkite.dev/run-id";
    /// Attempt number (1-based).
    pub const ATTEMPT: &str = "benchkite.dev/attempt";
    /// Which benchkite installation created the build (the poller lists by it).
    pub const INSTANCE: &str = "benchkite.dev/instance";
}

/// The parts of a Buildkite job the machine reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobView {
    pub state: String,
    pub exit_status: Option<i64>,
    /// The signal that killed the process (`SIGTERM`, `SIGKILL`), when one did.
    pub signal: Option<String>,
    pub signal_reason: Option<String>,
    /// A later try of the same step replaced this one (`retry.automatic` or by hand).
    pub retried: bool,
}

/// The parts of a Buildkite build the machine reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuildView {
    pub state: String,
    pub jobs: Vec<JobView>,
    pub meta_data: BTreeMap<String, String>,
}

/// What a build's state means for the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildOutcome {
    /// Still scheduled (`running == false`) or running.
    InFlight { running: bool },
    /// The build passed: the evaluation ran; the result decides `passed`.
    Passed,
    /// The command failed for a reason that is not the infrastructure's (the runner
    /// reported an error, a non-zero exit): final.
    Failed { exit_status: Option<i64>, reason: String },
    /// The step's own timeout killed the job (job state `timed_out`): final, never retried
    /// (the same submission would time out again).
    StepTimedOut { reason: String },
    /// The agent or its host went away, or the job's process could not start
    /// (agent lost, `agent_stop`, `process_run_error`, `stack_error`, exit 255): worth
    /// another attempt.
    Infrastructure { reason: String },
    /// Buildkite or the agent refused the job for a reason another attempt does not change
    /// (`agent_refused`, `signature_rejected`, `agent_incompatible`, an `expired` or
    /// `broken` job): final, with a reason the user can act on.
    Refused { code: &'static str, reason: String },
    /// Cancelled because benchkite asked (timeout, deletion).
    CanceledByUs,
    /// Cancelled in Buildkite by someone else (a user, an API client): final.
    CanceledElsewhere { reason: String },
    /// Skipped or not run: final.
    NotRun { state: String },
}

/// What one finished try of a job says, by Buildkite's documented semantics: exit status
/// `-1` means the process did not exit by itself; with `signal` set it was killed (a cancel
/// or the step timeout: `signal_reason: cancel`), without it the agent was lost. The
/// documented `signal_reason` values (docs "Agent lifecycle" and the pipeline schema's
/// `retry.automatic.signal_reason`): `agent_refused`, `agent_stop`, `cancel`,
/// `signature_rejected`, `process_run_error`, `stack_error`, `agent_incompatible`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum JobVerdict {
    Passed,
    Exited(i64),
    TimedOut(String),
    Killed(String),
    Infrastructure(String),
    Refused(&'static str, String),
    NotRun(String),
}

fn job_verdict(job: &JobView) -> Option<JobVerdict> {
    let signal = job.signal.as_deref().filter(|s| !s.is_empty());
    let killed_by = || signal.map(|s| format!(" ({s})")).unwrap_or_default();
    match job.signal_reason.as_deref().filter(|s| !s.is_empty() && *s != "none") {
        Some("agent_stop") => return Some(JobVerdict::Infrastructure("the agent was stopped during the job".into())),
        Some("process_run_error") => {
            return Some(JobVerdict::Infrastructure(
                "the agent could not start the job's process (process_run_error)".into(),
            ));
        }
        Some("stack_error") => {
            return Some(JobVerdict::Infrastructure("the agent stack failed the job (stack_error)".into()));
        }
        Some("agent_refused") => {
            return Some(JobVerdict::Refused(
                "AgentRefused",
                "the agent refused the job (agent_refused: a pre-bootstrap hook or the agent's allow-lists)".into(),
            ));
        }
        Some("signature_rejected") => {
            return Some(JobVerdict::Refused(
                "SignatureRejected",
                "the agent rejected the job's pipeline signature (signature_rejected)".into(),
            ));
        }
        Some("agent_incompatible") => {
            return Some(JobVerdict::Refused(
                "AgentIncompatible",
                "the agent cannot run this job (agent_incompatible)".into(),
            ));
        }
        Some("cancel") => {
            return Some(if job.state == "timed_out" {
                JobVerdict::TimedOut(format!("the step's timeout killed the job{}", killed_by()))
            } else {
                JobVerdict::Killed(format!("the job was cancelled{}", killed_by()))
            });
        }
        Some(other) => return Some(JobVerdict::Infrastructure(format!("the job stopped: {other}"))),
        None => {}
    }
    match job.state.as_str() {
        "passed" => return Some(JobVerdict::Passed),
        "timed_out" => return Some(JobVerdict::TimedOut(format!("the step's timeout killed the job{}", killed_by()))),
        "expired" => {
            return Some(JobVerdict::Refused(
                "JobExpired",
                "no agent took the job before Buildkite's scheduled-job expiry".into(),
            ));
        }
        "broken" => {
            return Some(JobVerdict::Refused("JobBroken", "Buildkite marked the job broken: it cannot run".into()));
        }
        "skipped" => return Some(JobVerdict::NotRun("skipped".into())),
        _ => {}
    }
    match (job.exit_status, signal) {
        (Some(-1), Some(_)) => Some(JobVerdict::Killed(format!("the job's process was killed{}", killed_by()))),
        (Some(-1), None) => Some(JobVerdict::Infrastructure("the agent was lost (exit -1, no signal)".into())),
        (Some(255), None) => {
            Some(JobVerdict::Infrastructure("the agent or the job's bootstrap failed (exit 255)".into()))
        }
        (Some(0), _) => Some(JobVerdict::Passed),
        (Some(code), _) => Some(JobVerdict::Exited(code)),
        (None, _) if job.state == "canceled" => Some(JobVerdict::Killed("the job was cancelled before it ran".into())),
        (None, _) if job.state == "failed" => Some(JobVerdict::Exited(1)),
        (None, _) => None,
    }
}

/// Classifies a build. `we_canceled` is true when benchkite sent the cancel. Only the
/// latest try of each step counts: a try that `retry.automatic` replaced (`retried`) says
/// nothing about the build's end.
pub fn classify(build: &BuildView, we_canceled: bool) -> BuildOutcome {
    let verdicts: Vec<JobVerdict> = build.jobs.iter().filter(|j| !j.retried).filter_map(job_verdict).collect();
    let first = |f: fn(&JobVerdict) -> bool| verdicts.iter().find(|v| f(v)).cloned();
    match build.state.as_str() {
        "passed" => BuildOutcome::Passed,
        "failed" | "canceled" => {
            if build.state == "canceled" && we_canceled {
                return BuildOutcome::CanceledByUs;
            }
            // The most telling try first: the infrastructure's, then a refusal, a timeout,
            // a kill, an exit.
            if let Some(JobVerdict::Infrastructure(reason)) = first(|v| matches!(v, JobVerdict::Infrastructure(_))) {
                return BuildOutcome::Infrastructure { reason };
            }
            if let Some(JobVerdict::Refused(code, reason)) = first(|v| matches!(v, JobVerdict::Refused(..))) {
                return BuildOutcome::Refused { code, reason };
            }
            if let Some(JobVerdict::TimedOut(reason)) = first(|v| matches!(v, JobVerdict::TimedOut(_))) {
                return BuildOutcome::StepTimedOut { reason };
            }
            if let Some(JobVerdict::Killed(reason)) = first(|v| matches!(v, JobVerdict::Killed(_))) {
                return if we_canceled {
                    BuildOutcome::CanceledByUs
                } else {
                    BuildOutcome::CanceledElsewhere { reason: format!("{reason} in Buildkite, not by benchkite") }
                };
            }
            if build.state == "canceled" {
                return BuildOutcome::CanceledElsewhere {
                    reason: "the build was cancelled in Buildkite, not by benchkite".into(),
                };
            }
            match first(|v| matches!(v, JobVerdict::Exited(_))) {
                Some(JobVerdict::Exited(code)) => BuildOutcome::Failed {
                    exit_status: Some(code),
                    reason: format!("the job exited with status {code}"),
                },
                _ => BuildOutcome::Failed { exit_status: None, reason: "the build failed".into() },
            }
        }
        "canceling" if we_canceled => BuildOutcome::CanceledByUs,
        "skipped" | "not_run" => BuildOutcome::NotRun { state: build.state.clone() },
        "running" | "failing" | "canceling" => BuildOutcome::InFlight { running: true },
        _ => BuildOutcome::InFlight { running: false },
    }
}

/// The overall deadline of a job.
pub fn timeout(spec: &KernelJobSpec) -> Duration {
    let secs = spec.timeout_seconds.unwrap_or_else(|| {
        // Fractional limits (kernelbot accepts them) round up to whole seconds here.
        let whole =
            |v: Option<f64>| v.filter(|v| v.is_finite() && *v > 0.0).map_or(DEFAULT_RUN_TIMEOUT, |v| v.ceil() as i64);
        let t = whole(spec.test_timeout_seconds);
        let b = whole(spec.benchmark_timeout_seconds);
        let r = whole(spec.ranked_timeout_seconds);
        let runs = match spec.mode {
            Mode::Test => t,
            Mode::Benchmark => b,
            // Profile runs each benchmark under the profiler.
            Mode::Profile => b.saturating_mul(i64::try_from(spec.benchmarks.len().max(1)).unwrap_or(i64::MAX)),
            Mode::Leaderboard | Mode::Private => t.saturating_add(b).saturating_add(r),
        };
        runs.saturating_add(TIMEOUT_ALLOWANCE)
    });
    Duration::from_secs(u64::try_from(secs.max(1)).unwrap_or(u64::MAX))
}

/// Time left before the deadline (zero when passed).
pub fn time_left(created: Timestamp, spec: &KernelJobSpec, now: Timestamp) -> Duration {
    let deadline_ms =
        created.as_millisecond().saturating_add(i64::try_from(timeout(spec).as_millis()).unwrap_or(i64::MAX));
    let left = deadline_ms.saturating_sub(now.as_millisecond());
    Duration::from_millis(u64::try_from(left.max(0)).unwrap_or(0))
}

/// `KERNELBOT_RUN_ID` of an attempt: derived from the object's UID, so it is unique per
/// attempt and stable across controller restarts (the idempotency key of the build).
pub fn run_id(uid: &str, attempt: i32) -> String {
    format!("{uid}-{attempt}")
}

/// Whether another attempt is allowed after `attempts_made` attempts.
pub fn may_retry(spec: &KernelJobSpec, attempts_made: i32) -> bool {
    attempts_made <= spec.retries
}

/// The CUDA `arch` a job gets when it names none: the pool's GPU architecture (`sm_90` →
/// `90a`, the seeds' choice for H100, which enables Hopper-specific instructions; other
/// `sm_XY` → `XY`). AMD (`gfx*`) has none.
pub fn default_arch(pool_architecture: Option<&str>) -> Option<String> {
    let digits = pool_architecture?.strip_prefix("sm_")?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(if digits == "90" { "90a".to_string() } else { digits.to_string() })
}

/// The summary's fingerprint as status shows it (field for field).
fn fingerprint_status(f: &crate::contract::Fingerprint) -> FingerprintStatus {
    FingerprintStatus {
        gpu_uuid: f.gpu_uuid.clone(),
        gpu_model: f.gpu_model.clone(),
        driver_version: f.driver_version.clone(),
        cuda_version: f.cuda_version.clone(),
        rocm_version: f.rocm_version.clone(),
        app_clock_graphics_mhz: f.app_clock_graphics_mhz.clone(),
        app_clock_memory_mhz: f.app_clock_memory_mhz.clone(),
        clock_graphics_mhz: f.clock_graphics_mhz.clone(),
        clock_memory_mhz: f.clock_memory_mhz.clone(),
        power_limit_w: f.power_limit_w.clone(),
        temperature_before_c: f.temperature_before_c.clone(),
        temperature_after_c: f.temperature_after_c.clone(),
        ecc_mode: f.ecc_mode.clone(),
        mig_mode: f.mig_mode.clone(),
        image_digest: f.image_digest.clone(),
        harness_sha256: f.harness_sha256.clone(),
        node: f.node.clone(),
        slot: f.slot.clone(),
        certification_epoch: f.certification_epoch.clone(),
    }
}

/// Status view of a result summary.
pub fn result_status(summary: &ResultSummary, source: &str) -> ResultStatus {
    let tests = |t: &crate::contract::summary::TestsSummary| TestsStatus {
        passed: i64::try_from(t.passed).unwrap_or(i64::MAX),
        total: i64::try_from(t.total).unwrap_or(i64::MAX),
        failures: t
            .failures
            .iter()
            .map(|f| match (f.spec.is_empty(), f.message.is_empty()) {
                (false, false) => format!("{}: {}", f.spec, f.message),
                (false, true) => f.spec.clone(),
                (true, false) => format!("test {}: {}", f.index, f.message),
                (true, true) => format!("test {}", f.index),
            })
            .collect(),
    };
    let bench = |b: &crate::contract::summary::BenchmarkSummary| BenchmarkStatus {
        spec: b.spec.clone(),
        runs: b.runs.and_then(|r| i64::try_from(r).ok()),
        mean: b.mean.filter(|v| v.is_finite()),
        std: b.std.filter(|v| v.is_finite()),
        best: b.best.filter(|v| v.is_finite()),
        worst: b.worst.filter(|v| v.is_finite()),
        error: b.error.clone().or_else(|| b.failed.then(|| "failed".to_string())),
    };
    ResultStatus {
        success: summary.success,
        error: summary.error.clone(),
        system: summary.system.as_ref().map(|s| SystemStatus {
            gpu: s.gpu.clone(),
            device_count: s.device_count,
            runtime: s.runtime.clone(),
            hostname: s.hostname.clone(),
            fingerprint: s.fingerprint.as_ref().map(fingerprint_status),
            canary: s.canary.as_ref().map(|c| CanaryStatus { kernel: c.kernel.clone(), seconds: c.seconds, at: c.at }),
        }),
        runs: summary
            .runs
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    RunStatus {
                        compiled: r.compiled,
                        success: r.success,
                        passed: r.passed,
                        exit_code: r.exit_code,
                        duration_seconds: r.duration.filter(|d| d.is_finite()),
                        error: r.error.clone(),
                        tests: r.tests.as_ref().map(tests),
                        benchmarks: r.benchmarks.iter().map(bench).collect(),
                    },
                )
            })
            .collect(),
        source: source.to_string(),
        verified: None,
        truncated: summary.truncated,
    }
}

/// The at-a-glance summary: tests of the test run, benchmarks of the ranked run.
pub fn summary_status(result: &ResultStatus, summary: &ResultSummary) -> SummaryStatus {
    let tests = ["test", "leaderboard", "benchmark"]
        .iter()
        .find_map(|n| result.runs.get(*n).and_then(|r| r.tests.clone()))
        .or_else(|| result.runs.values().find_map(|r| r.tests.clone()));
    let ranked: Vec<BenchmarkStatus> = ["leaderboard", "benchmark"]
        .iter()
        .filter_map(|n| result.runs.get(*n))
        .map(|r| r.benchmarks.clone())
        .find(|b| !b.is_empty())
        .unwrap_or_default();
    let _ = summary;
    SummaryStatus { tests, benchmarks: ranked }
}

/// Whether the job cannot make progress without its owner (kstatus `Stalled`): it ended
/// without a successful evaluation, or it names a target that does not exist.
pub fn needs_user(phase: Phase, reason: &str) -> bool {
    match phase {
        Phase::Failed | Phase::TimedOut | Phase::Cancelled => true,
        Phase::Pending => matches!(
            reason,
            "NoTarget"
                | "PoolNotFound"
                | "MissingTokenScope"
                | "PoolNotAllowed"
                | "OverrideNotAllowed"
                | "EnvNotAllowed"
        ),
        Phase::Submitted | Phase::Running | Phase::Succeeded => false,
    }
}

/// The phase, verdict and message of a job whose build reached an end, given its result
/// (when one was found). `Err` carries the failure reason for the `Failed` condition.
pub fn finished_phase(outcome: &BuildOutcome, summary: Option<&ResultSummary>) -> (Phase, &'static str, String) {
    match (outcome, summary) {
        (BuildOutcome::Passed, Some(s)) if s.success => {
            let verdict = match s.passed {
                Some(true) => "the kernel passed",
                Some(false) => "the kernel failed its checks",
                None => "no run reported a verdict",
            };
            (Phase::Succeeded, "EvaluationFinished", format!("the evaluation ran: {verdict}"))
        }
        (BuildOutcome::Passed, Some(s)) => {
            (Phase::Failed, "RunnerFailed", format!("the runner reported an infrastructure failure: {}", s.error))
        }
        (BuildOutcome::Passed, None) => (
            Phase::Failed,
            "ResultMissing",
            "the build passed but left no result (no benchkite.result meta-data and no result.json artifact)".into(),
        ),
        (BuildOutcome::Failed { reason, .. }, Some(s)) if !s.error.is_empty() => {
            (Phase::Failed, "BuildFailed", format!("{reason}: {}", s.error))
        }
        (BuildOutcome::Failed { reason, .. }, _) => (Phase::Failed, "BuildFailed", reason.clone()),
        (BuildOutcome::Infrastructure { reason }, _) => (Phase::Failed, "InfrastructureFailure", reason.clone()),
        (BuildOutcome::StepTimedOut { reason }, _) => (Phase::TimedOut, "StepTimedOut", reason.clone()),
        (BuildOutcome::Refused { code, reason }, _) => (Phase::Failed, code, reason.clone()),
        (BuildOutcome::CanceledElsewhere { reason }, _) => (Phase::Cancelled, "CancelledInBuildkite", reason.clone()),
        (BuildOutcome::CanceledByUs, _) => (Phase::Cancelled, "Cancelled", "the build was cancelled".into()),
        (BuildOutcome::NotRun { state }, _) => {
            (Phase::Failed, "BuildNotRun", format!("the build ended {state} without running"))
        }
        (BuildOutcome::InFlight { .. }, _) => (Phase::Running, "Running", String::new()),
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;

#[cfg(test)]
mod fingerprint_tests {
    use super::*;
    use crate::contract::summary::SystemSummary;
    use crate::contract::{Fingerprint, parse_meta_data_summary};

    #[test]
    fn the_fingerprint_reaches_status_field_for_field_in_camel_case() {
        let fp = Fingerprint {
            gpu_uuid: "GPU-1".into(),
            cuda_version: "12.4".into(),
            temperature_before_c: "40".into(),
            temperature_after_c: "47".into(),
            harness_sha256: "ab".into(),
            certification_epoch: "3".into(),
            ..Fingerprint::default()
        };
        let value = format!(
            r#"{{"v":1,"success":true,"system":{{"device_count":1,"fingerprint":{}}}}}"#,
            serde_json::to_string(&fp).unwrap_or_default()
        );
        let summary = parse_meta_data_summary(&value).map_err(|e| e.to_string());
        let summary = summary.unwrap_or_else(|e| panic!("{e}"));
        let status = result_status(&summary, "meta-data");
        let got = status.system.as_ref().and_then(|s| s.fingerprint.clone()).unwrap_or_default();
        assert_eq!(got.gpu_uuid, "GPU-1");
        assert_eq!(got.cuda_version, "12.4");
        assert_eq!((got.temperature_before_c.as_str(), got.temperature_after_c.as_str()), ("40", "47"));
        assert_eq!((got.harness_sha256.as_str(), got.certification_epoch.as_str()), ("ab", "3"));
        let json = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(json["system"]["fingerprint"]["temperatureAfterC"], "47", "{json}");
        assert!(json["system"]["fingerprint"].get("node").is_none(), "empty fields are left out");
        // A summary without one (older runner, or made from result.json): none in status.
        let old = ResultSummary { system: Some(SystemSummary::default()), ..summary };
        assert_eq!(result_status(&old, "artifact").system.and_then(|s| s.fingerprint), None);
    }
}
