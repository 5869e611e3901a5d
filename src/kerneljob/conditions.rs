//! A KernelJob's conditions, pure: derived from the status alone, so no path can leave them
//! contradicting each other or the phase.

use k8s_openapi::jiff::Timestamp;

use super::machine;
use crate::api::condition::{ConditionSet, ConditionStatus};
use crate::api::kerneljob::{KernelJobStatus, Phase, conditions as cond};

/// Conditions for a phase (kstatus: Ready True once succeeded; Complete/Failed like Jobs).
/// `submitted`: a build exists for the current attempt.
pub fn set_phase_conditions(
    set: &mut ConditionSet<'_>,
    phase: Phase,
    reason: &str,
    message: &str,
    throttled: Option<&str>,
    submitted: bool,
) {
    let (complete, failed) = match phase {
        Phase::Succeeded => (true, false),
        Phase::Failed | Phase::TimedOut | Phase::Cancelled => (false, true),
        _ => (false, false),
    };
    if complete {
        set.set(cond::COMPLETE, ConditionStatus::True, reason, message);
    } else {
        set.set(cond::COMPLETE, ConditionStatus::False, phase.as_str(), "");
    }
    if failed {
        set.set(cond::FAILED, ConditionStatus::True, reason, message);
    } else {
        set.set(cond::FAILED, ConditionStatus::False, phase.as_str(), "");
    }
    // kstatus: a job is Current once it succeeded, Failed (Stalled) once it failed or
    // cannot be submitted without the user's help, InProgress (Reconciling) otherwise.
    let needs_user = machine::needs_user(phase, reason);
    if phase == Phase::Succeeded {
        set.set(cond::READY, ConditionStatus::True, reason, message);
    } else {
        // The specific reason (PoolNotFound, Queued, BuildRunning, BuildFailed, …).
        set.set(cond::READY, ConditionStatus::False, reason, message);
    }
    if needs_user {
        set.kstatus(None, Some((reason, message)));
    } else if phase.is_finished() {
        set.kstatus(None, None);
    } else {
        set.kstatus(Some((phase.as_str(), message)), None);
    }
    // Submitted says whether a build exists, not how far the phase got: a job refused
    // before its create (PayloadTooLarge, a create Buildkite refused, a deadline that passed
    // while queued) never had one.
    set.set(
        cond::SUBMITTED,
        ConditionStatus::from_bool(submitted),
        if submitted { "BuildCreated" } else { "NotSubmitted" },
        "",
    );
    match throttled {
        Some(msg) => set.set(cond::THROTTLED, ConditionStatus::True, "RequestBudgetExhausted", msg),
        None => set.set(cond::THROTTLED, ConditionStatus::False, "WithinBudget", ""),
    };
}

/// Where a status is written: what the conditions keep of the previous ones.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    pub previous: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    pub generation: Option<i64>,
    pub now: Timestamp,
}

/// The status with its message, counters and conditions filled in from its phase.
pub fn with_conditions(
    stamp: Stamp<'_>,
    mut status: KernelJobStatus,
    reason: &str,
    message: String,
    throttled: Option<&str>,
) -> KernelJobStatus {
    let mut set = ConditionSet::new(stamp.previous, stamp.generation, stamp.now);
    let submitted = status.build.is_some();
    // Only a job still waiting can be throttled.
    let throttled = throttled.filter(|_| status.phase == Phase::Pending);
    set_phase_conditions(&mut set, status.phase, reason, &message, throttled, submitted);
    status.conditions = set.into_vec();
    status.message = message;
    status.observed_generation = stamp.generation;
    status.attempt_count = i32::try_from(status.attempts.len()).unwrap_or(i32::MAX);
    status
}

/// The conditions of `status` contradict each other or its phase: `Some(why)`. Used by the
/// table tests over every outcome (and cheap enough to assert in debug builds).
pub fn contradiction(status: &KernelJobStatus) -> Option<String> {
    use crate::api::condition::{RECONCILING, STALLED, find};
    let get = |t: &str| find(&status.conditions, t).map(|c| c.status.as_str());
    let is = |t: &str| get(t) == Some("True");
    for t in [cond::READY, cond::COMPLETE, cond::FAILED, cond::SUBMITTED, cond::THROTTLED, RECONCILING, STALLED] {
        if get(t).is_none() {
            return Some(format!("condition {t} missing"));
        }
    }
    let phase = status.phase;
    if is(cond::SUBMITTED) != status.build.is_some() {
        return Some(format!("Submitted={} but build {:?}", is(cond::SUBMITTED), status.build.is_some()));
    }
    if matches!(phase, Phase::Submitted | Phase::Running) && status.build.is_none() {
        return Some(format!("{phase:?} without a build"));
    }
    if is(cond::READY) != (phase == Phase::Succeeded) || is(cond::COMPLETE) != (phase == Phase::Succeeded) {
        return Some(format!("Ready/Complete disagree with {phase:?}"));
    }
    if is(cond::FAILED) != matches!(phase, Phase::Failed | Phase::TimedOut | Phase::Cancelled) {
        return Some(format!("Failed disagrees with {phase:?}"));
    }
    if is(RECONCILING) && (phase.is_finished() || is(STALLED)) {
        return Some(format!("Reconciling while {phase:?} / Stalled"));
    }
    if is(cond::THROTTLED) && phase != Phase::Pending {
        return Some(format!("Throttled while {phase:?}"));
    }
    if phase.is_finished() != status.completion_time.is_some() {
        return Some(format!("{phase:?} with completion time {:?}", status.completion_time.is_some()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::condition::{RECONCILING, STALLED, find};
    use crate::api::kerneljob::BuildRef;

    fn conditions(phase: Phase, reason: &str) -> Vec<(String, String, String)> {
        let mut set = ConditionSet::new(&[], Some(1), Timestamp::now());
        set_phase_conditions(&mut set, phase, reason, "msg", None, false);
        let out = set.into_vec();
        [cond::READY, RECONCILING, STALLED, cond::COMPLETE, cond::FAILED]
            .iter()
            .map(|t| {
                let c = find(&out, t).unwrap_or_else(|| panic!("{t} missing for {phase:?}"));
                (c.type_.clone(), c.status.clone(), c.reason.clone())
            })
            .collect()
    }

    fn status_of(conds: &[(String, String, String)], t: &str) -> String {
        conds.iter().find(|c| c.0 == t).map(|c| c.1.clone()).unwrap_or_default()
    }

    #[test]
    fn kstatus_conditions_follow_the_phase() {
        for phase in Phase::ALL {
            let c = conditions(phase, "Queued");
            let (ready, reconciling, stalled) =
                (status_of(&c, cond::READY), status_of(&c, RECONCILING), status_of(&c, STALLED));
            match phase {
                Phase::Succeeded => {
                    assert_eq!((ready.as_str(), reconciling.as_str(), stalled.as_str()), ("True", "False", "False"))
                }
                Phase::Failed | Phase::TimedOut | Phase::Cancelled => {
                    assert_eq!(
                        (ready.as_str(), reconciling.as_str(), stalled.as_str()),
                        ("False", "False", "True"),
                        "{phase:?}"
                    )
                }
                Phase::Pending | Phase::Submitted | Phase::Running => {
                    assert_eq!(
                        (ready.as_str(), reconciling.as_str(), stalled.as_str()),
                        ("False", "True", "False"),
                        "{phase:?}"
                    )
                }
            }
        }
        // A job naming a pool that does not exist waits for the user, not for the controller.
        let c = conditions(Phase::Pending, "PoolNotFound");
        assert_eq!(status_of(&c, STALLED), "True");
        assert_eq!(status_of(&c, RECONCILING), "False");
        assert!(c.iter().any(|x| x.0 == STALLED && x.2 == "PoolNotFound"));
    }

    #[test]
    fn submitted_means_a_build_exists() {
        let stamp = Stamp { previous: &[], generation: Some(1), now: Timestamp::UNIX_EPOCH };
        // Refused before any build: the regression of issue 16 (PayloadTooLarge showed
        // Submitted=True, BuildCreated).
        let refused = KernelJobStatus {
            phase: Phase::Failed,
            completion_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        };
        let s = with_conditions(stamp, refused, "PayloadTooLarge", "too big".into(), None);
        let submitted = find(&s.conditions, cond::SUBMITTED).unwrap();
        assert_eq!((submitted.status.as_str(), submitted.reason.as_str()), ("False", "NotSubmitted"));
        assert_eq!(contradiction(&s), None);
        let built = KernelJobStatus {
            phase: Phase::Running,
            build: Some(BuildRef { pipeline: "p".into(), number: 1, ..Default::default() }),
            ..Default::default()
        };
        let s = with_conditions(stamp, built, "BuildRunning", "running".into(), Some("spent"));
        assert!(find(&s.conditions, cond::SUBMITTED).is_some_and(|c| c.status == "True"));
        assert!(find(&s.conditions, cond::THROTTLED).is_some_and(|c| c.status == "False"), "only waiting jobs");
        assert_eq!(contradiction(&s), None);
    }
}
