//! Table tests of what a result's signature decides: only a result its attempt's runner
//! signed counts; a tampered one never scores; an unsigned one per `--unsigned-results`.

use super::*;

fn scored() -> ResultSummary {
    ResultSummary { score: Some(1.25), ..passed_summary() }
}

fn case(trust: Trust, policy: UnsignedResults, state: BuildState) -> Plan {
    let (j, s) = (job(), following(Phase::Running));
    let mut b = build(7, state.clone(), "u1-1");
    if state == BuildState::Failed {
        b.jobs = vec![Job { state: Some(JobState::Failed), exit_status: Some(1), ..Default::default() }];
    }
    let read = ResultRead::Found { summary: scored(), source: "artifact", raw: Some(b"{}".to_vec()), trust };
    let plan = decide_follow(&Following {
        job: &j,
        status: &s,
        build: &b,
        we_canceled: false,
        now: at(20),
        quiet: Duration::ZERO,
        stale_after: Duration::from_secs(900),
        result: Some(&read),
        result_tries: 0,
        recorded: true,
        unsigned: policy,
    });
    check(&plan);
    plan
}

fn refused(p: &Plan, why: &str) {
    let st = p.status.as_ref().expect("a status");
    assert_eq!((st.phase, reason(p).as_str()), (Phase::Failed, why));
    assert_eq!((st.score, st.passed), (None, None), "no score, no passed");
    assert!(st.result.is_none() && st.summary.is_none(), "nothing of the result in status");
    assert!(p.store_output.is_none(), "no result ConfigMap for it");
    assert!(p.absent.is_none(), "not retried");
    assert!(p.event.as_ref().is_some_and(|e| e.warning && e.reason == why), "{:?}", p.event);
    let outcome = &st.attempts.last().expect("an attempt").outcome;
    assert!(outcome.starts_with(why), "{outcome}");
}

#[test]
fn every_trust_and_policy_and_outcome() {
    let not_trusted = || Trust::NotTrusted("the signature of its meta-data does not verify".into());
    for policy in [UnsignedResults::Refuse, UnsignedResults::Accept] {
        for state in [BuildState::Passed, BuildState::Failed] {
            // Verified: the result counts whatever the policy.
            let p = case(Trust::Verified, policy, state.clone());
            let st = p.status.as_ref().expect("a status");
            let result = st.result.as_ref().expect("a result");
            assert_eq!((result.source.as_str(), result.verified), ("artifact", Some(true)));
            assert!(!st.message.contains("unsigned"));
            if state == BuildState::Passed {
                assert_eq!((st.phase, st.score, st.passed), (Phase::Succeeded, Some(1.25), Some(true)));
                assert_eq!(p.store_output, Some(b"{}".to_vec()));
            } else {
                assert_eq!((st.phase, st.score), (Phase::Failed, None));
            }
            // Tampered (or another attempt's, or not checkable): refused whatever the policy.
            let p = case(not_trusted(), policy, state.clone());
            refused(&p, "ResultNotTrusted");
            assert!(p.status.as_ref().is_some_and(|s| s.message.contains("does not verify")));
            // Unsigned: per the policy.
            let p = case(Trust::Unsigned, policy, state.clone());
            match policy {
                UnsignedResults::Refuse => refused(&p, "UnsignedResult"),
                UnsignedResults::Accept => {
                    let st = p.status.as_ref().expect("a status");
                    let r = st.result.as_ref().expect("a result");
                    assert_eq!((r.source.as_str(), r.verified), ("artifact", Some(false)));
                    assert!(st.message.contains("unsigned"), "{}", st.message);
                    if state == BuildState::Passed {
                        assert_eq!((st.phase, st.score), (Phase::Succeeded, Some(1.25)));
                    } else {
                        assert_eq!(st.phase, Phase::Failed);
                    }
                }
            }
        }
    }
}
