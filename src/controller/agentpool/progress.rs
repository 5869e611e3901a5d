//! The pool's `Progressing` condition (and the `Ready` reason while it is not converged),
//! from the plan: a rolling update names how far it got and what holds it back.

use crate::api::condition::ConditionStatus;
use crate::fleet::plan::Plan;

/// Reasons of the `Progressing` condition (and of `Ready` while not converged).
pub mod reason {
    /// Nothing left to do.
    pub const CONVERGED: &str = "Converged";
    /// Agents are being replaced (changed spec, image or share) or drained from nodes in
    /// maintenance or cordoned, at most `maxUnavailable` at a time.
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    /// Agents are being created or replaced after a failure.
    pub const RECONCILING: &str = "Reconciling";
    /// `Ready=False` while agents converge without a rollout.
    pub const AGENTS_NOT_READY: &str = "AgentsNotReady";
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Progress {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
    /// The `Ready` reason when the pool is not converged.
    pub ready_reason: &'static str,
}

/// `converged`: the plan converged and every write succeeded.
pub(super) fn progress(plan: &Plan, converged: bool) -> Progress {
    let ready = format!("{} of {} agents ready", plan.ready, plan.desired);
    if converged {
        return Progress {
            status: ConditionStatus::False,
            reason: reason::CONVERGED,
            message: ready,
            ready_reason: reason::AGENTS_NOT_READY,
        };
    }
    if plan.rolling() {
        let held = if plan.deferred > 0 {
            format!("; {} more wait until fewer than {} are unavailable", plan.deferred, plan.max_unavailable)
        } else {
            String::new()
        };
        return Progress {
            status: ConditionStatus::True,
            reason: reason::ROLLING_UPDATE,
            message: format!(
                "rolling update: {} of {} agents updated, {ready}, {} unavailable (maxUnavailable {}){held}",
                plan.updated, plan.desired, plan.unavailable, plan.max_unavailable
            ),
            ready_reason: reason::ROLLING_UPDATE,
        };
    }
    Progress {
        status: ConditionStatus::True,
        reason: reason::RECONCILING,
        message: format!(
            "{ready}; creating {}, deleting {}, waiting {}",
            plan.creates.len(),
            plan.deletes.len(),
            plan.waiting
        ),
        ready_reason: reason::AGENTS_NOT_READY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::plan::DeleteReason;

    fn plan() -> Plan {
        Plan { desired: 20, ready: 20, updated: 20, max_unavailable: 2, ..Default::default() }
    }

    #[test]
    fn a_converged_pool_says_so() {
        let p = progress(&plan(), true);
        assert_eq!((p.status, p.reason), (ConditionStatus::False, "Converged"));
        assert_eq!(p.message, "20 of 20 agents ready");
    }

    #[test]
    fn a_rollout_reports_its_progress_and_what_holds_it_back() {
        let p = Plan {
            ready: 18,
            updated: 6,
            unavailable: 2,
            deferred: 12,
            deletes: vec![("a".into(), DeleteReason::Outdated)],
            ..plan()
        };
        let out = progress(&p, false);
        assert_eq!(
            (out.status, out.reason, out.ready_reason),
            (ConditionStatus::True, "RollingUpdate", "RollingUpdate")
        );
        assert_eq!(
            out.message,
            "rolling update: 6 of 20 agents updated, 18 of 20 agents ready, 2 unavailable (maxUnavailable 2); 12 more wait until fewer than 2 are unavailable"
        );
        // A drain of a node in maintenance is a rollout too.
        let drain = Plan { deletes: vec![("a".into(), DeleteReason::NodeIneligible("Maintenance".into()))], ..plan() };
        assert_eq!(progress(&drain, false).reason, "RollingUpdate");
    }

    #[test]
    fn other_work_is_reconciling() {
        let p = Plan { ready: 19, creates: vec![("n".into(), 3)], ..plan() };
        let out = progress(&p, false);
        assert_eq!((out.reason, out.ready_reason), ("Reconciling", "AgentsNotReady"));
        assert_eq!(out.message, "19 of 20 agents ready; creating 1, deleting 0, waiting 0");
        let failed = Plan { deletes: vec![("a".into(), DeleteReason::Failed("Evicted".into()))], ..plan() };
        assert_eq!(progress(&failed, false).reason, "Reconciling");
        // Converged plan but a write failed: not converged.
        assert_eq!(progress(&plan(), false).reason, "Reconciling");
    }
}
