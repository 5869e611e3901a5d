//! Tests of the KernelJob state machine.
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
    for refused in ["PoolNotAllowed", "OverrideNotAllowed", "EnvNotAllowed"] {
        assert!(needs_user(Phase::Pending, refused), "{refused}: a tenancy refusal needs the admin or the author");
    }
    assert!(!needs_user(Phase::Pending, "SubmitFailed"));
    assert!(!needs_user(Phase::Running, "PoolNotFound"));
}
use crate::api::kerneljob::{CaseSpec, Lang};
use crate::contract::summary::{RunSummary, TestFailure, TestsSummary};

fn spec(mode: Mode) -> KernelJobSpec {
    KernelJobSpec {
        pool: Some("h100".into()),
        pool_namespace: None,
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
        gpus: None,
        image: None,
        pipeline: None,
        branch: None,
        commit: None,
        env: BTreeMap::new(),
        timeout_seconds: None,
        retries: 2,
        priority: 0,
        ttl_seconds_after_finished: None,
        result_cache: None,
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
    assert_eq!(outcome, BuildOutcome::StepTimedOut { reason: "the step's timeout killed the job (SIGTERM)".into() });
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
