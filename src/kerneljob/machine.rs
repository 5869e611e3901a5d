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
    pub signal_reason: Option<String>,
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
    /// The build failed for a reason that is not the infrastructure's (the runner reported
    /// an error, the step timed out): final.
    Failed { exit_status: Option<i64>, reason: String },
    /// The agent or Buildkite failed (exit −1/255, agent lost, cancelled by Buildkite):
    /// worth another attempt.
    Infrastructure { reason: String },
    /// Cancelled because benchkite asked (timeout, deletion).
    CanceledByUs,
    /// Skipped or not run: final.
    NotRun { state: String },
}

/// Signal reasons that mean the agent or its host went away, not the job.
const INFRA_SIGNALS: &[&str] =
    &["agent_stop", "agent_refused", "agent_incompatible", "process_run_error", "stack_error", "agent_lost"];

fn job_infra_reason(job: &JobView) -> Option<String> {
    if let Some(sig) = job.signal_reason.as_deref().filter(|s| INFRA_SIGNALS.contains(s)) {
        return Some(format!("job stopped: {sig}"));
    }
    match job.exit_status {
        Some(-1) => Some("agent lost or job not started (exit -1)".into()),
        Some(255) => Some("agent/runner failure (exit 255)".into()),
        _ if job.state == "expired" => Some("job expired waiting for an agent".into()),
        _ => None,
    }
}

/// Classifies a build. `we_canceled` is true when benchkite sent the cancel.
pub fn classify(build: &BuildView, we_canceled: bool) -> BuildOutcome {
    let infra = || build.jobs.iter().find_map(job_infra_reason);
    match build.state.as_str() {
        "passed" => BuildOutcome::Passed,
        "failed" => match infra() {
            Some(reason) => BuildOutcome::Infrastructure { reason },
            None => {
                let job = build.jobs.iter().find(|j| j.exit_status.is_some_and(|e| e != 0) || j.state == "timed_out");
                let exit_status = job.and_then(|j| j.exit_status);
                let reason = match job {
                    Some(j) if j.state == "timed_out" => "the step timed out".to_string(),
                    Some(j) => format!("the job exited with status {}", j.exit_status.unwrap_or_default()),
                    None => "the build failed".to_string(),
                };
                BuildOutcome::Failed { exit_status, reason }
            }
        },
        "canceled" | "canceling" if we_canceled => BuildOutcome::CanceledByUs,
        "canceled" => BuildOutcome::Infrastructure { reason: "the build was cancelled outside benchkite".into() },
        "skipped" | "not_run" => BuildOutcome::NotRun { state: build.state.clone() },
        "running" | "failing" | "canceling" => BuildOutcome::InFlight { running: true },
        _ => BuildOutcome::InFlight { running: false },
    }
}

/// The overall deadline of a job.
pub fn timeout(spec: &KernelJobSpec) -> Duration {
    let secs = spec.timeout_seconds.unwrap_or_else(|| {
        let t = spec.test_timeout_seconds.unwrap_or(DEFAULT_RUN_TIMEOUT);
        let b = spec.benchmark_timeout_seconds.unwrap_or(DEFAULT_RUN_TIMEOUT);
        let r = spec.ranked_timeout_seconds.unwrap_or(DEFAULT_RUN_TIMEOUT);
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
        Phase::Pending => matches!(reason, "NoTarget" | "PoolNotFound"),
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
        assert!(!needs_user(Phase::Pending, "SubmitFailed"));
        assert!(!needs_user(Phase::Running, "PoolNotFound"));
    }
    use crate::api::kerneljob::Lang;
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

    fn job(state: &str, exit: Option<i64>, signal: Option<&str>) -> JobView {
        JobView { state: state.into(), exit_status: exit, signal_reason: signal.map(str::to_string) }
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
        assert!(matches!(
            classify(&build("failed", vec![job("failed", Some(-1), None)]), false),
            BuildOutcome::Infrastructure { .. }
        ));
        assert!(matches!(
            classify(&build("failed", vec![job("failed", Some(255), None)]), false),
            BuildOutcome::Infrastructure { .. }
        ));
        assert!(matches!(
            classify(&build("failed", vec![job("canceled", None, Some("agent_stop"))]), false),
            BuildOutcome::Infrastructure { .. }
        ));
        assert!(matches!(
            classify(&build("failed", vec![job("expired", None, None)]), false),
            BuildOutcome::Infrastructure { .. }
        ));
        assert_eq!(
            classify(&build("failed", vec![job("timed_out", Some(-1), Some("cancel"))]), false),
            BuildOutcome::Infrastructure { reason: "agent lost or job not started (exit -1)".into() },
            "exit -1 wins: Buildkite reports agent loss that way"
        );
        assert_eq!(
            classify(&build("failed", vec![job("timed_out", None, None)]), false),
            BuildOutcome::Failed { exit_status: None, reason: "the step timed out".into() }
        );
        assert_eq!(classify(&build("canceled", vec![]), true), BuildOutcome::CanceledByUs);
        assert_eq!(classify(&build("canceling", vec![]), true), BuildOutcome::CanceledByUs);
        assert_eq!(classify(&build("canceling", vec![]), false), BuildOutcome::InFlight { running: true });
        assert!(matches!(classify(&build("canceled", vec![]), false), BuildOutcome::Infrastructure { .. }));
        assert_eq!(classify(&build("skipped", vec![]), false), BuildOutcome::NotRun { state: "skipped".into() });
        assert_eq!(classify(&build("not_run", vec![]), false), BuildOutcome::NotRun { state: "not_run".into() });
    }

    #[test]
    fn default_timeouts_follow_the_mode() {
        assert_eq!(timeout(&spec(Mode::Test)), Duration::from_secs(180 + 600));
        assert_eq!(timeout(&spec(Mode::Benchmark)), Duration::from_secs(180 + 600));
        assert_eq!(timeout(&spec(Mode::Leaderboard)), Duration::from_secs(540 + 600));
        assert_eq!(timeout(&spec(Mode::Private)), Duration::from_secs(540 + 600));
        let mut s = spec(Mode::Leaderboard);
        s.test_timeout_seconds = Some(10);
        s.benchmark_timeout_seconds = Some(20);
        s.ranked_timeout_seconds = Some(30);
        assert_eq!(timeout(&s), Duration::from_secs(660));
        let mut s = spec(Mode::Profile);
        s.benchmarks = vec![BTreeMap::new(), BTreeMap::new()];
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
