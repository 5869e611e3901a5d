//! Table tests of the KernelJob decision: every transition, the dead ends of issue 16, and
//! no status any path writes has contradicting conditions.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::*;
use crate::api::kerneljob::KernelJobSpec;
use crate::buildkite::{Job, JobState, PipelineRef};
use crate::contract::summary::ResultSummary;

const UID: &str = "u1";

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + k8s_openapi::jiff::SignedDuration::from_secs(secs)
}

fn job() -> KernelJob {
    let spec: KernelJobSpec = serde_json::from_value(json!({
        "pool": "h100", "mode": "test", "lang": "py", "main": "s.py", "sources": {"s.py": ""},
        "timeoutSeconds": 600, "retries": 1,
    }))
    .unwrap();
    let mut j = KernelJob::new("j", spec);
    j.metadata.namespace = Some("ns".into());
    j.metadata.uid = Some(UID.into());
    j.metadata.generation = Some(1);
    j.metadata.creation_timestamp = Some(Time(t0()));
    j
}

fn deleted(secs_ago: i64, now: i64) -> KernelJob {
    let mut j = job();
    j.metadata.deletion_timestamp = Some(Time(at(now - secs_ago)));
    j
}

fn build(number: u64, state: BuildState, run: &str) -> Build {
    Build {
        number,
        state,
        branch: Some(board::attempt_branch("bk", run)),
        pipeline: Some(PipelineRef { slug: "p".into(), ..Default::default() }),
        ..Default::default()
    }
}

use super::super::board;

/// A status following build #7 of attempt 1.
fn following(phase: Phase) -> KernelJobStatus {
    let mut s = adopt(&KernelJobStatus::default(), 1, "u1-1", &build(7, BuildState::Scheduled, "u1-1"), "p", t0());
    s.phase = phase;
    s
}

struct Case<'a> {
    job: KernelJob,
    status: KernelJobStatus,
    memory: JobMemory,
    board_next: Option<Build>,
    has_finalizer: bool,
    now: Timestamp,
    target: Result<String, (&'static str, String)>,
    active_terminal: Option<bool>,
    fresh: bool,
    throttled: bool,
    scopes: Option<&'a str>,
    servable: Servable,
    admission: Admit,
    cached: Option<super::super::cache::Hit>,
}

impl Case<'_> {
    fn new() -> Self {
        Case {
            job: job(),
            status: KernelJobStatus::default(),
            memory: JobMemory { uid: UID.into(), ..Default::default() },
            board_next: None,
            has_finalizer: true,
            now: at(10),
            target: Ok("h100".into()),
            active_terminal: None,
            fresh: false,
            throttled: false,
            scopes: None,
            servable: Servable::Yes,
            admission: Admit::Free,
            cached: None,
        }
    }

    fn run(&self) -> Plan {
        let next_run = machine::run_id(UID, next_attempt_number(&self.status));
        let o = Observed {
            job: &self.job,
            status: &self.status,
            has_finalizer: self.has_finalizer,
            now: self.now,
            memory: &self.memory,
            next: Next::of(&self.memory, &next_run, self.board_next.as_ref()),
            active_terminal: self.active_terminal,
            target: self.target.clone(),
            servable: self.servable.clone(),
            admission: self.admission.clone(),
            cached: self.cached.as_ref(),
            missing_scopes: self.scopes.map(str::to_string),
            throttled: self.throttled,
            fresh: self.fresh,
            finalizer_timeout: Duration::from_secs(600),
        };
        let plan = decide(&o);
        check(&plan);
        plan
    }

    fn clone_case(&self) -> Self {
        Case {
            job: self.job.clone(),
            status: self.status.clone(),
            memory: self.memory.clone(),
            board_next: self.board_next.clone(),
            target: self.target.clone(),
            scopes: self.scopes,
            servable: self.servable.clone(),
            admission: self.admission.clone(),
            cached: self.cached.clone(),
            ..*self
        }
    }

    fn next(mut self, state: AttemptState) -> Self {
        let run = machine::run_id(UID, next_attempt_number(&self.status));
        self.memory.attempts.insert(run, state);
        self
    }
}

/// Every status a plan writes is coherent.
fn check(plan: &Plan) {
    if let Some(s) = &plan.status {
        assert_eq!(super::super::conditions::contradiction(s), None, "{s:#?}");
    }
}

fn reason(plan: &Plan) -> String {
    let s = plan.status.as_ref().expect("a status");
    crate::api::condition::find(&s.conditions, crate::api::kerneljob::conditions::READY).unwrap().reason.clone()
}

fn submitted(plan: &Plan) -> String {
    let s = plan.status.as_ref().expect("a status");
    crate::api::condition::find(&s.conditions, crate::api::kerneljob::conditions::SUBMITTED).unwrap().status.clone()
}

// ----- pending ------------------------------------------------------------------------------

#[test]
fn pending_transitions() {
    // A fresh job a free submitter takes at once: queued, no status write.
    let p = Case {
        fresh: true,
        now: at(1),
        job: {
            let mut j = job();
            j.status = None;
            j
        },
        ..Case::new()
    }
    .run();
    assert!(p.submit && p.status.is_none() && p.absent == Some("u1-1".into()), "{p:?}");
    // Known absent: queued, with a Queued status when it waits.
    let p = Case::new().next(AttemptState::Absent).run();
    assert!(p.submit && !p.look_up);
    assert_eq!((reason(&p).as_str(), submitted(&p).as_str()), ("Queued", "False"));
    // Unknown after a restart: looked up, not created.
    let p = Case::new().run();
    assert!(p.look_up && !p.submit);
    // A create in flight: neither.
    let p = Case::new().next(AttemptState::Creating).run();
    assert!(!p.look_up && !p.submit);
    // The next attempt's build is on the board: follow it.
    let p = Case { board_next: Some(build(7, BuildState::Scheduled, "u1-1")), ..Case::new() }.run();
    assert!(p.follow);
    // Budget spent: Throttled says so.
    let p = Case { throttled: true, ..Case::new() }.next(AttemptState::Absent).run();
    let s = p.status.unwrap();
    assert!(crate::api::condition::is_true(&s.conditions, crate::api::kerneljob::conditions::THROTTLED));
    // No pool: waits for the user, with one Warning.
    let p = Case { target: Err(("PoolNotFound", "AgentPool ns/h100 does not exist".into())), ..Case::new() }.run();
    assert_eq!(reason(&p), "PoolNotFound");
    assert!(p.event.as_ref().is_some_and(|e| e.warning) && !p.submit);
    // A tenancy refusal: waits for the admin or the author, with one Warning naming the rule.
    for refused in ["PoolNotAllowed", "OverrideNotAllowed", "EnvNotAllowed"] {
        let p = Case { target: Err((refused, format!("{refused}: the rule"))), ..Case::new() }.run();
        assert_eq!(reason(&p), refused);
        assert!(p.event.as_ref().is_some_and(|e| e.warning && e.reason == refused) && !p.submit, "{refused}: {p:?}");
    }
    // Missing scope: named, checked again after a minute.
    let p = Case { scopes: Some("add write_builds"), ..Case::new() }.next(AttemptState::Absent).run();
    assert_eq!((reason(&p).as_str(), p.requeue), ("MissingTokenScope", Some(Duration::from_secs(60))));
}

#[test]
fn the_same_problem_is_not_warned_twice() {
    let mut c = Case { target: Err(("PoolNotFound", "gone".into())), ..Case::new() };
    let first = c.run();
    c.job.status = first.status.clone();
    c.status = first.status.unwrap();
    let again = c.run();
    assert!(again.status.is_none() && again.event.is_none(), "{again:?}");
}

#[test]
fn refused_before_any_build_fails_coherently() {
    // Issue 16: PayloadTooLarge also showed Submitted=True, BuildCreated.
    let mut c = Case::new().next(AttemptState::Absent);
    c.memory.refused = Some(("PayloadTooLarge".into(), "the submission's sources are 2000000 bytes".into()));
    let p = c.run();
    let s = p.status.as_ref().unwrap();
    assert_eq!((s.phase, reason(&p).as_str(), submitted(&p).as_str()), (Phase::Failed, "PayloadTooLarge", "False"));
    assert!(p.event.as_ref().is_some_and(|e| e.warning && e.reason == "PayloadTooLarge"));
    assert!(!p.submit && p.cancel.is_none());
}

#[test]
fn a_permanently_refused_create_fails_after_bounded_tries() {
    for tries in 1..MAX_CREATE_REFUSALS {
        let mut c = Case::new().next(AttemptState::Absent);
        c.memory.submit_failure =
            Some(SubmitFailure::Permanent { status: 422, message: "Branch can't be blank".into(), tries });
        let p = c.run();
        assert!(p.submit && p.demote, "try {tries} of {MAX_CREATE_REFUSALS}: submitted again, behind healthy jobs");
        assert_eq!(reason(&p), "SubmitFailed");
    }
    let mut c = Case::new().next(AttemptState::Absent);
    c.memory.submit_failure = Some(SubmitFailure::Permanent {
        status: 422,
        message: "Branch can't be blank".into(),
        tries: MAX_CREATE_REFUSALS,
    });
    let p = c.run();
    let s = p.status.as_ref().unwrap();
    assert_eq!((s.phase, reason(&p).as_str(), submitted(&p).as_str()), (Phase::Failed, "BuildRefused", "False"));
    assert!(s.message.contains("422") && s.message.contains("Branch can't be blank"), "{}", s.message);
    assert!(!p.submit);
    // Transient failures never end the job by themselves.
    let mut c = Case::new().next(AttemptState::Absent);
    c.memory.submit_failure = Some(SubmitFailure::Transient("Buildkite: 503".into()));
    let p = c.run();
    assert!(p.submit && !p.demote);
}

#[test]
fn the_deadline_passing_before_a_build_times_the_job_out() {
    for state in [AttemptState::Absent, AttemptState::Creating] {
        let p = Case { now: at(700), ..Case::new() }.next(state).run();
        let s = p.status.as_ref().unwrap();
        assert_eq!(
            (s.phase, reason(&p).as_str(), submitted(&p).as_str()),
            (Phase::TimedOut, "DeadlineExceeded", "False")
        );
        assert!(!p.submit && !p.release, "the finalizer stays until a create in flight answered");
    }
}

// ----- finished -----------------------------------------------------------------------------

fn timed_out_before_record() -> Case<'static> {
    let mut c = Case { now: at(700), ..Case::new() };
    c.status = KernelJobStatus { phase: Phase::TimedOut, completion_time: Some(Time(at(600))), ..Default::default() };
    c
}

#[test]
fn a_job_that_timed_out_before_its_build_was_recorded_leaves_no_running_build() {
    // The create is still in flight: wait for it, keep the finalizer.
    let p = timed_out_before_record().next(AttemptState::Creating).run();
    assert!(!p.release && p.cancel.is_none() && p.requeue.is_some());
    // It answered: the build is on the board and runs: cancel it.
    let p = Case { board_next: Some(build(9, BuildState::Running, "u1-1")), ..timed_out_before_record() }.run();
    assert_eq!(p.cancel, Some(Cancel { pipeline: "p".into(), number: 9, run_id: "u1-1".into() }));
    assert!(!p.release);
    // Cancelled: let go.
    let mut c = Case { board_next: Some(build(9, BuildState::Canceling, "u1-1")), ..timed_out_before_record() };
    c.memory.canceled.insert("u1-1".into());
    let p = c.run();
    assert!(p.release && p.cancel.is_none());
    // After a restart nobody knows: look it up first.
    let p = timed_out_before_record().run();
    assert!(p.look_up && !p.release);
    // Known absent: let go at once.
    let p = timed_out_before_record().next(AttemptState::Absent).run();
    assert!(p.release && !p.look_up);
}

#[test]
fn a_finished_build_job_releases_and_honours_the_ttl() {
    let mut c = Case::new();
    c.status = following(Phase::Succeeded);
    c.status.completion_time = Some(Time(at(5)));
    // The next attempt was never created: no look-up, whatever the memory says.
    let p = c.run();
    assert!(p.release && p.settle && !p.look_up && p.requeue.is_none());
    // A job of this version (no finalizer) lets go of its builds and memory all the same:
    // nothing of a finished job stays on the board.
    let p = Case { has_finalizer: false, ..c.clone_case() }.run();
    assert!(!p.release && p.settle, "{p:?}");
    c.job.spec.ttl_seconds_after_finished = Some(60);
    let p = c.run();
    assert_eq!(p.requeue, Some(Duration::from_secs(55)));
    c.now = at(100);
    let p = c.run();
    assert!(p.delete && p.forget);
}

// ----- deleted ------------------------------------------------------------------------------

#[test]
fn deletion_cancels_what_runs_then_lets_go() {
    // Without our finalizer: nothing to do but forget.
    let p = Case { job: deleted(1, 10), has_finalizer: false, ..Case::new() }.run();
    assert!(!p.release && p.forget && p.cancel.is_none());
    // A followed build still running: cancel.
    let c =
        Case { job: deleted(1, 10), status: following(Phase::Running), active_terminal: Some(false), ..Case::new() };
    let p = c.run();
    assert_eq!(p.cancel.as_ref().map(|c| c.number), Some(7));
    // Finished, or cancelled by us: release.
    let p = Case { active_terminal: Some(true), ..c }.run();
    assert!(p.release && p.forget && p.cancel.is_none());
}

#[test]
fn a_job_deleted_before_its_build_was_recorded_leaves_no_running_build() {
    let c = || Case { job: deleted(1, 10), ..Case::new() };
    // The create is in flight: wait.
    let p = c().next(AttemptState::Creating).run();
    assert!(!p.release && p.requeue.is_some());
    // Created: cancel the stray build.
    let p = Case { board_next: Some(build(11, BuildState::Scheduled, "u1-1")), ..c() }.run();
    assert_eq!(p.cancel.as_ref().map(|c| c.number), Some(11));
    // Unknown (restart): look it up.
    let p = c().run();
    assert!(p.look_up && !p.release);
    // Known absent: release.
    assert!(c().next(AttemptState::Absent).run().release);
    // Buildkite unreachable past the finalizer timeout: release with a Warning.
    let p = Case { job: deleted(601, 700), now: at(700), ..Case::new() }.next(AttemptState::Creating).run();
    assert!(p.release && p.event.as_ref().is_some_and(|e| e.warning && e.reason == "FinalizerReleased"));
}

// ----- following ----------------------------------------------------------------------------

fn follow_case<'a>(
    job: &'a KernelJob,
    status: &'a KernelJobStatus,
    build: &'a Build,
    result: Option<&'a ResultRead>,
    tries: u32,
    now: Timestamp,
) -> Plan {
    let plan = decide_follow(&Following {
        job,
        status,
        build,
        we_canceled: false,
        now,
        quiet: Duration::ZERO,
        stale_after: Duration::from_secs(900),
        result,
        result_tries: tries,
        recorded: true,
        unsigned: UnsignedResults::Refuse,
    });
    check(&plan);
    plan
}

fn passed_summary() -> ResultSummary {
    ResultSummary {
        v: 1,
        success: true,
        passed: Some(true),
        error: String::new(),
        system: None,
        runs: BTreeMap::new(),
        score: None,
        ranking_by: None,
        truncated: false,
    }
}

#[test]
fn following_a_build_to_its_end() {
    let (j, s) = (job(), following(Phase::Submitted));
    let p = follow_case(&j, &s, &build(7, BuildState::Running, "u1-1"), None, 0, at(10));
    assert_eq!((p.status.as_ref().unwrap().phase, reason(&p).as_str()), (Phase::Running, "BuildRunning"));
    assert!(p.event.is_none(), "no Event for starting: only warnings and the end");
    // Nothing new: no write.
    let running = p.status.unwrap();
    let p = follow_case(&j, &running, &build(7, BuildState::Running, "u1-1"), None, 0, at(11));
    assert!(p.status.is_none());
    // Passed: read the result, then succeed.
    let passed = build(7, BuildState::Passed, "u1-1");
    let p = follow_case(&j, &running, &passed, None, 0, at(20));
    assert!(p.read_result && p.status.is_none());
    let found = ResultRead::Found {
        summary: passed_summary(),
        source: "artifact",
        raw: Some(b"{}".to_vec()),
        trust: Trust::Verified,
    };
    let p = follow_case(&j, &running, &passed, Some(&found), 0, at(20));
    assert_eq!((p.status.as_ref().unwrap().phase, submitted(&p).as_str()), (Phase::Succeeded, "True"));
    assert!(p.event.as_ref().is_some_and(|e| !e.warning && e.reason == "Completed"));
    assert_eq!(p.store_output, Some(b"{}".to_vec()));
}

#[test]
fn a_result_that_cannot_be_read_ends_the_job() {
    let (j, s) = (job(), following(Phase::Running));
    let passed = build(7, BuildState::Passed, "u1-1");
    for state in ["error", "expired", "deleted"] {
        let r = ResultRead::Failed(ResultError::Unreadable { state: state.into() });
        let p = follow_case(&j, &s, &passed, Some(&r), 0, at(20));
        let st = p.status.as_ref().unwrap();
        assert_eq!((st.phase, reason(&p).as_str()), (Phase::Failed, "ResultMissing"), "{state}");
        assert!(st.message.contains(state));
    }
    let r = ResultRead::Failed(ResultError::Malformed("expected value".into()));
    assert_eq!(reason(&follow_case(&j, &s, &passed, Some(&r), 0, at(20))), "ResultMalformed");
    // Transient trouble: retried with backoff, a bounded number of times.
    for r in [ResultRead::Failed(ResultError::Uploading), ResultRead::Failed(ResultError::Fetch("503".into()))] {
        let mut waits = vec![];
        for tries in 0..MAX_RESULT_TRIES - 1 {
            let p = follow_case(&j, &s, &passed, Some(&r), tries, at(20));
            assert!(p.status.is_none(), "try {tries}");
            waits.push(p.requeue.unwrap());
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "backs off: {waits:?}");
        let p = follow_case(&j, &s, &passed, Some(&r), MAX_RESULT_TRIES - 1, at(20));
        assert_eq!((p.status.as_ref().unwrap().phase, reason(&p).as_str()), (Phase::Failed, "ResultUnreadable"));
    }
    // A result that cannot be read of a failed build does not change its verdict.
    let mut failed = build(7, BuildState::Failed, "u1-1");
    failed.jobs = vec![Job { state: Some(JobState::Failed), exit_status: Some(3), ..Default::default() }];
    let r = ResultRead::Failed(ResultError::Fetch("503".into()));
    assert_eq!(reason(&follow_case(&j, &s, &failed, Some(&r), 0, at(20))), "BuildFailed");
}

#[test]
fn the_deadline_cancels_a_running_build() {
    let (j, s) = (job(), following(Phase::Running));
    let p = follow_case(&j, &s, &build(7, BuildState::Running, "u1-1"), None, 0, at(700));
    assert_eq!(p.cancel, Some(Cancel { pipeline: "p".into(), number: 7, run_id: "u1-1".into() }));
    assert_eq!((p.status.as_ref().unwrap().phase, reason(&p).as_str()), (Phase::TimedOut, "DeadlineExceeded"));
    // Cancelled by us after the deadline: TimedOut, not Cancelled.
    let p = follow_case(&j, &s, &build(7, BuildState::Canceled, "u1-1"), None, 0, at(700));
    assert_eq!(p.status.as_ref().unwrap().phase, Phase::TimedOut);
}

#[test]
fn infrastructure_failures_are_retried_then_final() {
    let (j, s) = (job(), following(Phase::Running));
    let mut lost = build(7, BuildState::Failed, "u1-1");
    lost.jobs = vec![Job { state: Some(JobState::Failed), exit_status: Some(-1), ..Default::default() }];
    let p = follow_case(&j, &s, &lost, None, 0, at(20));
    let st = p.status.as_ref().unwrap();
    assert_eq!((st.phase, reason(&p).as_str(), submitted(&p).as_str()), (Phase::Pending, "Retrying", "False"));
    assert_eq!(p.absent.as_deref(), Some("u1-2"), "the retry's run id is known to have no build");
    // The retry (attempt 2 of 2) lost its agent too: final.
    let second = adopt(st, 2, "u1-2", &build(8, BuildState::Scheduled, "u1-2"), "p", at(30));
    let mut lost2 = build(8, BuildState::Failed, "u1-2");
    lost2.jobs = lost.jobs.clone();
    let p = follow_case(&j, &second, &lost2, None, 0, at(40));
    assert_eq!((p.status.as_ref().unwrap().phase, reason(&p).as_str()), (Phase::Failed, "InfrastructureFailure"));
}

/// Every outcome a build can reach, with and without a readable result: no written status
/// contradicts itself (checked by `follow_case`), and each ends or waits.
#[test]
fn no_outcome_leaves_contradicting_conditions() {
    let (j, s) = (job(), following(Phase::Running));
    let states = [
        BuildState::Scheduled,
        BuildState::Running,
        BuildState::Failing,
        BuildState::Canceling,
        BuildState::Passed,
        BuildState::Failed,
        BuildState::Canceled,
        BuildState::Skipped,
        BuildState::NotRun,
    ];
    let reads = [
        None,
        Some(ResultRead::Missing),
        Some(ResultRead::Found { summary: passed_summary(), source: "meta-data", raw: None, trust: Trust::Verified }),
        Some(ResultRead::Found {
            summary: ResultSummary { success: false, ..passed_summary() },
            source: "artifact",
            raw: None,
            trust: Trust::Verified,
        }),
        Some(ResultRead::Failed(ResultError::Unreadable { state: "expired".into() })),
    ];
    for state in states {
        for read in &reads {
            for now in [at(20), at(700)] {
                let b = build(7, state.clone(), "u1-1");
                let p = follow_case(&j, &s, &b, read.as_ref(), 0, now);
                assert!(p.status.is_some() || p.read_result || p.requeue.is_some(), "{state:?} {read:?}: stuck");
            }
        }
    }
}

#[test]
fn create_errors_are_classified_by_type_and_status() {
    use crate::buildkite::Error as E;
    let api = |status| E::Api { endpoint: "create_build", status, message: "no".into() };
    for status in [400, 403, 422] {
        assert!(
            matches!(classify_create_error(&api(status), true), CreateFailure::Permanent { status: s, .. } if s == status)
        );
    }
    for status in [401, 409, 500, 503] {
        assert_eq!(classify_create_error(&api(status), true), CreateFailure::Transient, "{status}");
    }
    let nf = E::NotFound { endpoint: "create_build", message: "Not Found".into() };
    assert_eq!(classify_create_error(&nf, true), CreateFailure::PipelineMissing);
    assert!(matches!(classify_create_error(&nf, false), CreateFailure::Permanent { status: 404, .. }));
    assert_eq!(
        classify_create_error(&E::Ambiguous { endpoint: "create_build", reason: "timeout".into() }, false),
        CreateFailure::Ambiguous
    );
    assert_eq!(
        classify_create_error(&E::RateLimited { endpoint: "create_build", reset: Duration::from_secs(3) }, false),
        CreateFailure::Transient
    );
    // A long Buildkite message is cut.
    let long = E::Api { endpoint: "create_build", status: 422, message: "é".repeat(400) };
    let CreateFailure::Permanent { message, .. } = classify_create_error(&long, false) else { panic!() };
    assert!(message.len() <= MAX_MESSAGE + 4);
}

#[test]
fn a_build_that_finished_before_it_was_recorded_is_recorded_while_its_result_is_retried() {
    let j = job();
    let s = following(Phase::Submitted);
    let passed = build(7, BuildState::Passed, "u1-1");
    let r = ResultRead::Failed(ResultError::Uploading);
    let f = |recorded| {
        let p = decide_follow(&Following {
            job: &j,
            status: &s,
            build: &passed,
            we_canceled: false,
            now: at(20),
            quiet: Duration::ZERO,
            stale_after: Duration::from_secs(900),
            result: Some(&r),
            result_tries: 0,
            recorded,
            unsigned: UnsignedResults::Refuse,
        });
        check(&p);
        p
    };
    let p = f(false);
    assert_eq!((reason(&p).as_str(), submitted(&p).as_str()), ("ReadingResult", "True"));
    assert!(p.requeue.is_some());
    assert!(f(true).status.is_none(), "recorded already: no write per retry");
}

#[path = "decide_writes_tests.rs"]
mod writes;

#[path = "decide_trust_tests.rs"]
mod trust;

#[test]
fn an_unservable_job_fails_at_once_when_nothing_was_created() {
    let why = Servable::No("ArchitectureUnavailable", "built for 100a; the pool has sm_90".to_string());
    let p = Case { servable: why.clone(), ..Case::new() }.next(AttemptState::Absent).run();
    let s = p.status.as_ref().expect("a status");
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(reason(&p), "ArchitectureUnavailable");
    assert!(!p.submit && !p.look_up);
    assert!(s.completion_time.is_some());
    assert_eq!(p.event.as_ref().map(|e| e.reason.as_str()), Some("ArchitectureUnavailable"));
    // A fresh job (no earlier process) with no board entry fails too.
    let p = Case { servable: why.clone(), fresh: true, ..Case::new() }.run();
    assert_eq!(p.status.map(|s| s.phase), Some(Phase::Failed));
}

#[test]
fn an_unservable_job_with_a_create_under_way_or_unknown_waits() {
    let why = Servable::No("NoUsableNode", "none".to_string());
    // A create in flight: its build may exist; the job is decided once it answers.
    let p = Case { servable: why.clone(), ..Case::new() }.next(AttemptState::Creating).run();
    assert!(p.status.as_ref().is_none_or(|s| s.phase != Phase::Failed), "{p:?}");
    // Unknown after a restart: looked up first.
    let p = Case { servable: why.clone(), ..Case::new() }.run();
    assert!(p.look_up, "{p:?}");
    assert!(p.status.as_ref().is_none_or(|s| s.phase != Phase::Failed));
    // A target problem (the pool is gone) is that problem, not this one.
    let p = Case { servable: why, target: Err(("PoolNotFound", "gone".into())), ..Case::new() }
        .next(AttemptState::Absent)
        .run();
    assert_eq!(reason(&p), "PoolNotFound");
}

#[test]
fn a_job_not_yet_judged_is_held_not_submitted() {
    let p = Case { servable: Servable::NotYet(Duration::from_secs(3)), ..Case::new() }.next(AttemptState::Absent).run();
    assert!(!p.submit && p.status.is_none(), "{p:?}");
    assert_eq!(p.requeue, Some(Duration::from_secs(3)));
    // A job with a create under way is not held (its build may exist).
    let p =
        Case { servable: Servable::NotYet(Duration::from_secs(3)), ..Case::new() }.next(AttemptState::Creating).run();
    assert_ne!(p.requeue, Some(Duration::from_secs(3)), "{p:?}");
}

#[test]
fn a_held_job_is_not_submitted_and_shows_its_place() {
    let eta = at(100);
    let held = Admit::Held { position: Some(3), eta: Some(eta) };
    let p = Case { admission: held, ..Case::new() }.next(AttemptState::Absent).run();
    assert!(!p.submit, "{p:?}");
    let s = p.status.as_ref().expect("a held job's place is written at once");
    assert_eq!(s.phase, Phase::Pending);
    assert_eq!(s.queue_position, Some(3));
    assert_eq!(s.estimated_start_time.as_ref().map(|t| t.0), Some(eta));
    assert_eq!(reason(&p), "Queued");
    // Further back: the shown position is rounded, and the estimated start kept while the
    // shown position stays.
    let mut c = Case { admission: Admit::Held { position: Some(57), eta: Some(at(200)) }, ..Case::new() };
    c.status.queue_position = Some(60);
    c.status.estimated_start_time = Some(Time(at(150)));
    let p = c.next(AttemptState::Absent).run();
    let s = p.status.clone().unwrap_or(KernelJobStatus { queue_position: Some(60), ..Default::default() });
    assert_eq!(s.queue_position, Some(60));
    if let Some(s) = &p.status {
        assert_eq!(s.estimated_start_time.as_ref().map(|t| t.0), Some(at(150)), "kept");
    }
    // Not placed yet: not submitted, no position.
    let p =
        Case { admission: Admit::Held { position: None, eta: None }, ..Case::new() }.next(AttemptState::Absent).run();
    assert!(!p.submit);
    assert!(p.status.as_ref().is_none_or(|s| s.queue_position.is_none()));
}

#[test]
fn an_admitted_job_is_submitted_and_its_place_cleared() {
    let mut c = Case { admission: Admit::Free, ..Case::new() };
    c.status.queue_position = Some(1);
    c.status.estimated_start_time = Some(Time(at(5)));
    let p = c.next(AttemptState::Absent).run();
    assert!(p.submit);
    if let Some(s) = &p.status {
        assert_eq!((s.queue_position, s.estimated_start_time.clone()), (None, None));
    }
    // A held job whose build may exist (after a restart) is looked up, never held blind.
    let p = Case { admission: Admit::Held { position: Some(1), eta: None }, ..Case::new() }.run();
    assert!(p.look_up && !p.submit, "{p:?}");
}

fn hit() -> super::super::cache::Hit {
    use crate::api::kerneljob::{CachedFrom, ResultStatus};
    let entry = super::super::cache::Entry {
        key: "k".into(),
        from: CachedFrom { job: "ns/orig".into(), uid: "o".into(), entry: "bkcache-k".into(), ..Default::default() },
        message: "the evaluation ran: the kernel failed its checks".into(),
        passed: Some(false),
        score: None,
        summary: None,
        result: ResultStatus { success: true, ..Default::default() },
        gpu_model: "H100".into(),
        node: String::new(),
        slot: String::new(),
        epoch: String::new(),
    };
    super::super::cache::Hit { entry, raw: Some(b"{\"success\": true}".to_vec()) }
}

#[test]
fn a_cache_hit_finishes_a_job_with_nothing_created_at_once_without_a_build() {
    for case in [
        Case { cached: Some(hit()), ..Case::new() }.next(AttemptState::Absent),
        Case { cached: Some(hit()), fresh: true, ..Case::new() },
        // Neither fair queueing nor fail fast holds it back: it needs no agent.
        Case {
            cached: Some(hit()),
            admission: Admit::Held { position: Some(4), eta: None },
            servable: Servable::No("PoolPaused", "paused".into()),
            ..Case::new()
        }
        .next(AttemptState::Absent),
    ] {
        let p = case.run();
        let s = p.status.as_ref().expect("a status");
        assert_eq!(s.phase, Phase::Succeeded);
        assert_eq!(reason(&p), "CachedResult");
        assert_eq!(s.passed, Some(false), "the original's verdict");
        assert_eq!(s.cached_from.as_ref().map(|c| c.job.as_str()), Some("ns/orig"));
        assert!(s.completion_time.is_some() && s.attempts.is_empty() && s.build.is_none());
        assert!(!p.submit && !p.look_up && p.cancel.is_none());
        assert_eq!(p.store_output.as_deref(), Some(&b"{\"success\": true}"[..]), "the job keeps its own copy");
        let ev = p.event.as_ref().expect("an event");
        assert!(!ev.warning && ev.reason == "CachedResult" && ev.message.contains("ns/orig"), "{ev:?}");
    }
}

#[test]
fn a_cache_hit_never_serves_a_job_that_may_have_a_build_or_may_not_use_its_pool() {
    let not_served =
        |p: &Plan| p.status.as_ref().is_none_or(|s| s.cached_from.is_none() && s.phase != Phase::Succeeded);
    // A create in flight, or unknown after a restart (looked up first).
    let p = Case { cached: Some(hit()), ..Case::new() }.next(AttemptState::Creating).run();
    assert!(not_served(&p), "{p:?}");
    let p = Case { cached: Some(hit()), ..Case::new() }.run();
    assert!(p.look_up && not_served(&p), "{p:?}");
    // A namespace the pool does not admit.
    let p = Case { cached: Some(hit()), target: Err(("PoolNotAllowed", "no".into())), ..Case::new() }
        .next(AttemptState::Absent)
        .run();
    assert!(not_served(&p) && reason(&p) == "PoolNotAllowed", "{p:?}");
    // A retry (an attempt ran): it runs again.
    let mut retry = Case { cached: Some(hit()), ..Case::new() };
    retry.status.attempts.push(Attempt {
        attempt: 1,
        run_id: "u1-1".into(),
        outcome: "InfrastructureFailure: x".into(),
        ..Default::default()
    });
    let p = retry.next(AttemptState::Absent).run();
    assert!(not_served(&p) && p.submit, "{p:?}");
}
