//! The KernelJob state machine, pure: what a build's state means for the job, when a job
//! times out, whether an attempt is retried, and how a result becomes status.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::kerneljob::{
    BenchmarkStatus, KernelJobSpec, Mode, Phase, ResultStatus, RunStatus, SummaryStatus, SystemStatus, TestsStatus,
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
        Phase::Pending => matches!(reason, "NoTarget" | "PoolNotFound" | "MissingTokenScope"),
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
mod tests {
    use super::*;

    #[test]
    fn stalled_only_when_the_user_must_act() {
        for phase in Phase::ALL {
            let expect = matches!(phase, Phase::Failed | Phase::TimedOut | Phase::Cancelled);
            assert_eq!(needs_user(phase, "Queued"), expect, "{phase:?}");
        }
        assert!(needs_user(Phase::Pending, "PoolNotFound"));
        assert!(needs_user(Phase::Pending, "NoTarget"));
        assert!(needs_user(Phase::Pending, "MissingTokenScope"), "an admin must fix the token");
        assert!(!needs_user(Phase::Pending, "SubmitFailed"));
        assert!(!needs_user(Phase::Running, "PoolNotFound"));
    }
    use crate::api::kerneljob::{CaseSpec, Lang};
    use crate::contract::summary::{RunSummary, TestFailure, TestsSummary};

    fn spec(mode: Mode) -> KernelJobSpec {
        KernelJobSpec {
            pool: Some("h100".into()),
            queue: None,
            mode,
            lang: Lang::Py,
            main: Some("submission.py".into()),
            sources: BTreeMap::new(),
            sources_from: vec![],
            headers: BTreeMap::new(),
            tests: vec![],
            benchmarks: vec![],
            test_timeout_seconds: None,
            benchmark_timeout_seconds: None,
            ranked_timeout_seconds: None,
            ranking_by: None,
            seed: None,
            arch: None,
            defines: BTreeMap::new(),
            compile_flags: vec![],
            include_dirs: vec![],
            libraries: vec![],
            multi_gpu: false,
            image: None,
            pipeline: None,
            branch: None,
            commit: None,
            env: BTreeMap::new(),
            timeout_seconds: None,
            retries: 2,
            priority: 0,
            ttl_seconds_after_finished: None,
        }
    }

    fn build(state: &str, jobs: Vec<JobView>) -> BuildView {
        BuildView { state: state.into(), jobs, meta_data: BTreeMap::new() }
    }

    fn job(state: &str, exit: Option<i64>, signal_reason: Option<&str>) -> JobView {
        JobView {
            state: state.into(),
            exit_status: exit,
            signal: None,
            signal_reason: signal_reason.map(str::to_string),
            retried: false,
        }
    }

    fn killed(state: &str, signal: &str, reason: Option<&str>) -> JobView {
        JobView { signal: Some(signal.into()), ..job(state, Some(-1), reason) }
    }

    fn retried(mut j: JobView) -> JobView {
        j.retried = true;
        j
    }

    #[test]
    fn classifies_every_build_state() {
        assert_eq!(classify(&build("scheduled", vec![]), false), BuildOutcome::InFlight { running: false });
        assert_eq!(classify(&build("creating", vec![]), false), BuildOutcome::InFlight { running: false });
        assert_eq!(
            classify(&build("blocked", vec![]), false),
            BuildOutcome::InFlight { running: false },
            "blocked may unblock"
        );
        assert_eq!(classify(&build("running", vec![]), false), BuildOutcome::InFlight { running: true });
        assert_eq!(classify(&build("failing", vec![]), false), BuildOutcome::InFlight { running: true });
        assert_eq!(classify(&build("passed", vec![job("passed", Some(0), None)]), false), BuildOutcome::Passed);
        assert_eq!(
            classify(&build("failed", vec![job("failed", Some(1), None)]), false),
            BuildOutcome::Failed { exit_status: Some(1), reason: "the job exited with status 1".into() }
        );
        assert_eq!(classify(&build("canceled", vec![]), true), BuildOutcome::CanceledByUs);
        assert_eq!(classify(&build("canceling", vec![]), true), BuildOutcome::CanceledByUs);
        assert_eq!(classify(&build("canceling", vec![]), false), BuildOutcome::InFlight { running: true });
        assert!(matches!(classify(&build("canceled", vec![]), false), BuildOutcome::CanceledElsewhere { .. }));
        assert_eq!(classify(&build("skipped", vec![]), false), BuildOutcome::NotRun { state: "skipped".into() });
        assert_eq!(classify(&build("not_run", vec![]), false), BuildOutcome::NotRun { state: "not_run".into() });
    }

    #[test]
    fn exit_minus_one_means_lost_only_without_a_signal() {
        // Agent lost: -1, no signal, no signal_reason.
        assert!(matches!(
            classify(&build("failed", vec![job("failed", Some(-1), None)]), false),
            BuildOutcome::Infrastructure { .. }
        ));
        // signal_reason "none" is how retry rules spell "no reason": the same.
        assert!(matches!(
            classify(&build("failed", vec![job("failed", Some(-1), Some("none"))]), false),
            BuildOutcome::Infrastructure { .. }
        ));
        // Killed by the step timeout: -1 + SIGTERM + cancel, job timed_out: final, not retried.
        let outcome = classify(&build("failed", vec![killed("timed_out", "SIGTERM", Some("cancel"))]), false);
        assert_eq!(
            outcome,
            BuildOutcome::StepTimedOut { reason: "the step's timeout killed the job (SIGTERM)".into() }
        );
        assert_eq!(finished_phase(&outcome, None).0, Phase::TimedOut);
        assert_eq!(finished_phase(&outcome, None).1, "StepTimedOut");
        // A timed_out job without a signal_reason (older answers) is still a timeout.
        assert!(matches!(
            classify(&build("failed", vec![job("timed_out", None, None)]), false),
            BuildOutcome::StepTimedOut { .. }
        ));
        // Killed by a cancel someone else sent: final, not an infrastructure retry.
        assert!(matches!(
            classify(&build("canceled", vec![killed("canceled", "SIGTERM", Some("cancel"))]), false),
            BuildOutcome::CanceledElsewhere { .. }
        ));
        assert_eq!(
            classify(&build("canceled", vec![killed("canceled", "SIGTERM", Some("cancel"))]), true),
            BuildOutcome::CanceledByUs
        );
        // Killed with a signal but no reason (e.g. SIGKILL after the grace period).
        assert!(matches!(
            classify(&build("failed", vec![killed("failed", "SIGKILL", None)]), false),
            BuildOutcome::CanceledElsewhere { .. }
        ));
        assert!(matches!(
            classify(&build("failed", vec![job("failed", Some(255), None)]), false),
            BuildOutcome::Infrastructure { .. }
        ));
    }

    #[test]
    fn every_documented_signal_reason() {
        let infra = ["agent_stop", "process_run_error", "stack_error"];
        for r in infra {
            let out = classify(&build("failed", vec![killed("failed", "SIGTERM", Some(r))]), false);
            assert!(matches!(out, BuildOutcome::Infrastructure { .. }), "{r}: {out:?}");
            let out = classify(&build("canceled", vec![job("canceled", Some(-1), Some(r))]), false);
            assert!(matches!(out, BuildOutcome::Infrastructure { .. }), "{r} on a canceled build: {out:?}");
        }
        for (r, code) in [
            ("agent_refused", "AgentRefused"),
            ("signature_rejected", "SignatureRejected"),
            ("agent_incompatible", "AgentIncompatible"),
        ] {
            let out = classify(&build("failed", vec![job("failed", Some(-1), Some(r))]), false);
            assert!(matches!(&out, BuildOutcome::Refused { code: c, .. } if *c == code), "{r}: {out:?}");
            assert_eq!(
                finished_phase(&out, None),
                (
                    Phase::Failed,
                    code,
                    match &out {
                        BuildOutcome::Refused { reason, .. } => reason.clone(),
                        _ => unreachable!(),
                    }
                )
            );
        }
        // An undocumented reason is not trusted to be final.
        assert!(matches!(
            classify(&build("failed", vec![job("failed", Some(-1), Some("something_new"))]), false),
            BuildOutcome::Infrastructure { .. }
        ));
    }

    #[test]
    fn job_states_expired_broken_limited() {
        let out = classify(&build("failed", vec![job("expired", None, None)]), false);
        assert!(matches!(out, BuildOutcome::Refused { code: "JobExpired", .. }), "{out:?}");
        let out = classify(&build("failed", vec![job("broken", None, None)]), false);
        assert!(matches!(out, BuildOutcome::Refused { code: "JobBroken", .. }), "{out:?}");
        // Concurrency-limited jobs wait: the build is still scheduled.
        assert_eq!(
            classify(&build("scheduled", vec![job("limited", None, None)]), false),
            BuildOutcome::InFlight { running: false }
        );
    }

    #[test]
    fn only_the_latest_try_counts() {
        // retry.automatic replaced a lost-agent try; the retry failed for real: a final
        // failure, not an infrastructure retry of the whole build.
        let b = build("failed", vec![retried(job("failed", Some(-1), None)), job("failed", Some(3), None)]);
        assert_eq!(
            classify(&b, false),
            BuildOutcome::Failed { exit_status: Some(3), reason: "the job exited with status 3".into() }
        );
        // The retry passed: the build passed.
        let b = build("passed", vec![retried(job("failed", Some(-1), None)), job("passed", Some(0), None)]);
        assert_eq!(classify(&b, false), BuildOutcome::Passed);
        // The retry lost its agent too: infrastructure.
        let b = build("failed", vec![retried(job("failed", Some(1), None)), job("failed", Some(-1), None)]);
        assert!(matches!(classify(&b, false), BuildOutcome::Infrastructure { .. }));
    }

    #[test]
    fn finished_phase_of_new_outcomes() {
        let c = BuildOutcome::CanceledElsewhere { reason: "x".into() };
        assert_eq!(finished_phase(&c, None), (Phase::Cancelled, "CancelledInBuildkite", "x".into()));
        let r = BuildOutcome::Refused { code: "JobExpired", reason: "y".into() };
        assert_eq!(finished_phase(&r, None), (Phase::Failed, "JobExpired", "y".into()));
    }

    #[test]
    fn default_timeouts_follow_the_mode() {
        assert_eq!(timeout(&spec(Mode::Test)), Duration::from_secs(180 + 600));
        assert_eq!(timeout(&spec(Mode::Benchmark)), Duration::from_secs(180 + 600));
        assert_eq!(timeout(&spec(Mode::Leaderboard)), Duration::from_secs(540 + 600));
        assert_eq!(timeout(&spec(Mode::Private)), Duration::from_secs(540 + 600));
        let mut s = spec(Mode::Leaderboard);
        s.test_timeout_seconds = Some(10.0);
        s.benchmark_timeout_seconds = Some(20.0);
        s.ranked_timeout_seconds = Some(30.0);
        assert_eq!(timeout(&s), Duration::from_secs(660));
        s.test_timeout_seconds = Some(0.5);
        assert_eq!(timeout(&s), Duration::from_secs(651), "a fractional limit rounds up");
        let mut s = spec(Mode::Profile);
        s.benchmarks = vec![CaseSpec::Params(BTreeMap::new()), CaseSpec::Params(BTreeMap::new())];
        assert_eq!(timeout(&s), Duration::from_secs(360 + 600));
        s.timeout_seconds = Some(42);
        assert_eq!(timeout(&s), Duration::from_secs(42), "explicit wins");
    }

    #[test]
    fn time_left_counts_down_to_zero() {
        let mut s = spec(Mode::Test);
        s.timeout_seconds = Some(60);
        let created: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T00:00:45Z".parse().unwrap();
        assert_eq!(time_left(created, &s, now), Duration::from_secs(15));
        let later: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(time_left(created, &s, later), Duration::ZERO);
    }

    #[test]
    fn retries_and_run_ids() {
        let s = spec(Mode::Test);
        assert!(may_retry(&s, 1));
        assert!(may_retry(&s, 2));
        assert!(!may_retry(&s, 3), "2 retries = 3 attempts");
        let mut none = spec(Mode::Test);
        none.retries = 0;
        assert!(!may_retry(&none, 1));
        assert_eq!(run_id("abc", 2), "abc-2");
        assert_ne!(run_id("abc", 1), run_id("abc", 2));
    }

    #[test]
    fn arch_defaults() {
        assert_eq!(default_arch(Some("sm_90")).as_deref(), Some("90a"));
        assert_eq!(default_arch(Some("sm_89")).as_deref(), Some("89"));
        assert_eq!(default_arch(Some("sm_100")).as_deref(), Some("100"));
        assert_eq!(default_arch(Some("gfx942")), None);
        assert_eq!(default_arch(Some("sm_")), None);
        assert_eq!(default_arch(None), None);
    }

    fn summary(success: bool, passed: Option<bool>) -> ResultSummary {
        let mut runs = BTreeMap::new();
        runs.insert(
            "test".to_string(),
            RunSummary {
                success: Some(true),
                passed,
                exit_code: Some(0),
                duration: Some(1.5),
                tests: Some(TestsSummary {
                    total: 3,
                    passed: 2,
                    failed: 1,
                    failures: vec![TestFailure { index: 2, spec: "size: 8".into(), message: "mismatch".into() }],
                }),
                ..Default::default()
            },
        );
        ResultSummary {
            v: 1,
            success,
            passed,
            error: if success { String::new() } else { "nvcc missing".into() },
            system: None,
            runs,
            score: None,
            ranking_by: None,
            truncated: false,
        }
    }

    #[test]
    fn finished_phases() {
        let ok = summary(true, Some(true));
        let wrong = summary(true, Some(false));
        let infra = summary(false, None);
        assert_eq!(finished_phase(&BuildOutcome::Passed, Some(&ok)).0, Phase::Succeeded);
        let (phase, reason, msg) = finished_phase(&BuildOutcome::Passed, Some(&wrong));
        assert_eq!(
            (phase, reason),
            (Phase::Succeeded, "EvaluationFinished"),
            "a wrong kernel is still a finished evaluation"
        );
        assert!(msg.contains("failed its checks"));
        assert_eq!(finished_phase(&BuildOutcome::Passed, Some(&infra)).1, "RunnerFailed");
        assert_eq!(finished_phase(&BuildOutcome::Passed, None).1, "ResultMissing");
        let failed = BuildOutcome::Failed { exit_status: Some(1), reason: "the job exited with status 1".into() };
        let (phase, reason, msg) = finished_phase(&failed, Some(&infra));
        assert_eq!((phase, reason), (Phase::Failed, "BuildFailed"));
        assert!(msg.contains("nvcc missing"));
        assert_eq!(finished_phase(&BuildOutcome::CanceledByUs, None).0, Phase::Cancelled);
        assert_eq!(finished_phase(&BuildOutcome::NotRun { state: "skipped".into() }, None).1, "BuildNotRun");
    }

    #[test]
    fn result_and_summary_status() {
        let s = summary(true, Some(false));
        let r = result_status(&s, "meta-data");
        assert_eq!(r.source, "meta-data");
        let test = &r.runs["test"];
        assert_eq!(test.passed, Some(false));
        let tests = test.tests.as_ref().unwrap();
        assert_eq!((tests.passed, tests.total), (2, 3));
        assert_eq!(tests.failures, vec!["size: 8: mismatch".to_string()]);
        let sum = summary_status(&r, &s);
        assert_eq!(sum.tests.unwrap().failures.len(), 1);
        assert!(sum.benchmarks.is_empty());
    }
}
