//! Table tests of what the decision writes: issue 16's "at most 3 API writes per job".

use super::*;

fn unrecorded(state: BuildState, created_secs: i64, now: i64) -> Plan {
    let j = job();
    let mut b = build(7, state, "u1-1");
    b.created_at = Some(at(created_secs));
    let s = adopt(&KernelJobStatus::default(), 1, "u1-1", &b, "p", at(created_secs));
    let p = decide_follow(&Following {
        job: &j,
        status: &s,
        build: &b,
        we_canceled: false,
        now: at(now),
        quiet: Duration::ZERO,
        stale_after: Duration::from_secs(900),
        result: None,
        result_tries: 0,
        recorded: false,
        unsigned: UnsignedResults::Refuse,
    });
    check(&p);
    p
}

#[test]
fn a_new_build_is_recorded_once_it_is_old_enough_or_finished() {
    // Young, waiting or running: no write yet; woken again when it is old enough.
    for state in [BuildState::Scheduled, BuildState::Running] {
        let p = unrecorded(state.clone(), 100, 103);
        assert!(p.status.is_none(), "{state:?}: {p:?}");
        assert_eq!(p.requeue, Some(RECORD_AFTER - Duration::from_secs(3)), "{state:?}");
    }
    // Old enough: recorded with what it is doing.
    let p = unrecorded(BuildState::Scheduled, 100, 110);
    assert_eq!((p.status.as_ref().unwrap().phase, reason(&p).as_str()), (Phase::Submitted, "BuildScheduled"));
    let p = unrecorded(BuildState::Running, 100, 111);
    assert_eq!((p.status.as_ref().unwrap().phase, submitted(&p).as_str()), (Phase::Running, "True"));
    // Finished while young: its result is read at once (one write with the result).
    let p = unrecorded(BuildState::Passed, 100, 102);
    assert!(p.read_result && p.status.is_none());
}

#[test]
fn a_status_differing_only_below_a_second_is_not_written_again() {
    // Buildkite's times carry milliseconds; Kubernetes keeps whole seconds. The status read
    // back from the API is the same as the one planned: no second write (the bench saw each
    // running job written twice).
    let j = job();
    let mut running = build(7, BuildState::Running, "u1-1");
    running.started_at = Some(at(5) + k8s_openapi::jiff::SignedDuration::from_millis(437));
    let s = following(Phase::Submitted);
    let p = follow_case(&j, &s, &running, None, 0, at(10));
    let planned = p.status.expect("Running is news");
    let read_back: KernelJobStatus = serde_json::from_value(serde_json::to_value(&planned).unwrap()).unwrap();
    assert_ne!(read_back, planned, "the round trip drops the milliseconds");
    assert!(same_as_written(&read_back, &planned));
    let p = follow_case(&j, &read_back, &running, None, 0, at(12));
    assert!(p.status.is_none(), "{:?}", p.status);
}

#[test]
fn a_queued_job_is_written_once_after_it_waited_and_not_for_the_budget_alone() {
    let fresh = || {
        let mut j = job();
        j.status = None;
        j
    };
    // Waiting its turn for less than QUEUED_AFTER: queued, no write, woken at the mark.
    let p = Case { job: fresh(), now: at(4), ..Case::new() }.next(AttemptState::Absent).run();
    assert!(p.submit && p.status.is_none(), "{p:?}");
    assert_eq!(p.requeue, Some(QUEUED_AFTER - Duration::from_secs(4)));
    // Throttled and young: still no write.
    let p = Case { job: fresh(), now: at(4), throttled: true, ..Case::new() }.next(AttemptState::Absent).run();
    assert!(p.submit && p.status.is_none());
    // Past the mark: Queued, saying whether the budget holds it.
    let p = Case { job: fresh(), now: at(10), throttled: true, ..Case::new() }.next(AttemptState::Absent).run();
    let queued = p.status.expect("Queued after waiting");
    assert!(crate::api::condition::is_true(&queued.conditions, crate::api::kerneljob::conditions::THROTTLED));
    // The budget refills (or is spent again): the Throttled condition alone is not written.
    let mut written = fresh();
    written.status = Some(queued.clone());
    for throttled in [false, true] {
        let p = Case { job: written.clone(), status: queued.clone(), now: at(30), throttled, ..Case::new() }
            .next(AttemptState::Absent)
            .run();
        assert!(p.submit && p.status.is_none(), "throttled={throttled}: {:?}", p.status);
    }
    // A problem is written at once, however young the job.
    let p = Case { job: fresh(), now: at(1), target: Err(("PoolNotFound", "no pool".into())), ..Case::new() }.run();
    assert_eq!(reason(&p), "PoolNotFound");
}
