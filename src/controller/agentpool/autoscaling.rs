//! `spec.autoscaling` in the reconcile: the demand from the pool's KernelJobs, the scale-down
//! delay (kept per pool in this process), which agents are busy (Buildkite's agents API), and
//! what the status and the `Scaled` condition say.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::api::agentpool::{PoolAutoscaling, PoolAutoscalingStatus, PoolJobsStatus};
use crate::api::condition::ConditionStatus;
use crate::fleet::autoscale::{self, Demand, Stabilizer};
use crate::fleet::plan::{ExistingAgent, Plan, Scale};

/// The scale-down delay's memory, per pool UID.
static STABILIZERS: LazyLock<Mutex<HashMap<String, Stabilizer>>> = LazyLock::new(Default::default);

/// Forgets a deleted pool.
pub(super) fn forget(uid: &str) {
    if let Ok(mut s) = STABILIZERS.lock() {
        s.remove(uid);
    }
}

/// The pool's autoscaling settings when they are on.
pub(super) fn settings(spec: Option<&PoolAutoscaling>) -> Option<&PoolAutoscaling> {
    spec.filter(|a| a.enabled)
}

/// What the demand asks of the plan, before the busy agents are known.
pub(super) struct Target {
    /// The pool's unfinished KernelJobs; `None`: unknown (the KernelJob controller does not
    /// run in this process), and every slot keeps its agent.
    pub demand: Option<Demand>,
    /// demand + minIdle, at most maxAgents (the slots cap it in the plan).
    pub recommended: i64,
    /// The recommendation after the scale-down delay.
    pub desired: i64,
    pub recheck_in: Option<Duration>,
}

/// The target for a pool with `settings`, `jobs` its queue (None: unknown) and `running`
/// live agents now.
pub(super) fn target(
    uid: &str,
    settings: &PoolAutoscaling,
    jobs: Option<&PoolJobsStatus>,
    running: i64,
    now: Instant,
) -> Target {
    let Some(jobs) = jobs else {
        forget(uid);
        return Target { demand: None, recommended: 0, desired: 0, recheck_in: None };
    };
    let demand = Demand { waiting: jobs.waiting, running: jobs.running };
    let recommended =
        autoscale::recommend(demand, i64::from(settings.min_idle), settings.max_agents.map(i64::from), i64::MAX);
    let delay = Duration::from_secs(u64::try_from(settings.scale_down_delay_seconds).unwrap_or(0));
    let stabilized = match STABILIZERS.lock() {
        Ok(mut s) => s.entry(uid.to_string()).or_default().update(now, recommended, delay, running),
        // A poisoned lock: keep what runs (never a scale-down by accident).
        Err(_) => autoscale::Stabilized { desired: recommended.max(running), recheck_in: Some(delay) },
    };
    Target { demand: Some(demand), recommended, desired: stabilized.desired, recheck_in: stabilized.recheck_in }
}

/// Live agents (not terminating, not finished).
pub(super) fn live(agents: &[ExistingAgent]) -> i64 {
    i64::try_from(agents.iter().filter(|a| !a.deleting && !a.phase.is_terminal()).count()).unwrap_or(i64::MAX)
}

/// Names of the agents that run a Buildkite job, among `names` (agent name = pod name).
pub(super) async fn busy_agents(
    client: Option<&crate::buildkite::Client>,
    names: &BTreeSet<String>,
) -> Result<BTreeSet<String>, String> {
    let client =
        client.ok_or_else(|| "the Buildkite API is not configured: which agents are busy is unknown".to_string())?;
    let listing = client.list_agents().await.map_err(|e| format!("listing Buildkite agents: {e}"))?;
    if listing.truncated {
        return Err("listing Buildkite agents: the listing was cut short (too many pages)".into());
    }
    Ok(listing.items.into_iter().filter(|a| a.job.is_some() && names.contains(&a.name)).map(|a| a.name).collect())
}

/// The plan's autoscaling input.
pub(super) fn scale(
    target: &Target,
    busy: Option<BTreeSet<String>>,
    certified: BTreeSet<(String, u32)>,
) -> Option<Scale> {
    target.demand.map(|_| Scale { target: target.desired, busy, certified })
}

/// The status block and the `Scaled` condition (status, reason, message).
pub(super) fn report(
    settings: &PoolAutoscaling,
    target: &Target,
    plan: &Plan,
    busy: Option<&Result<BTreeSet<String>, String>>,
) -> (PoolAutoscalingStatus, (ConditionStatus, &'static str, String)) {
    let cap = settings.max_agents.map_or(plan.slots, |m| plan.slots.min(i64::from(m)));
    let status = PoolAutoscalingStatus {
        slots: cap,
        demand: target.demand.map(Demand::total),
        recommended_agents: target.recommended.min(cap),
        desired_agents: plan.desired,
        busy_agents: busy.and_then(|b| b.as_ref().ok()).map(|b| i64::try_from(b.len()).unwrap_or(i64::MAX)),
    };
    let condition = match (target.demand, busy) {
        (None, _) => (
            ConditionStatus::False,
            "DemandUnknown",
            format!(
                "the KernelJob controller does not run in this process, so the pool's demand is unknown: every slot keeps its agent ({} agents)",
                plan.desired
            ),
        ),
        (Some(_), Some(Err(e))) => (
            ConditionStatus::False,
            "BusyAgentsUnknown",
            format!(
                "{e}; no agent is removed until it is known ({} agents, {} asked for)",
                plan.desired, status.recommended_agents
            ),
        ),
        (Some(d), _) => {
            let why = format!(
                "{} unfinished KernelJobs ({} waiting, {} running) and minIdle {}",
                d.total(),
                d.waiting,
                d.running,
                settings.min_idle
            );
            let asked = status.recommended_agents;
            if plan.desired > asked && target.desired > target.recommended {
                let secs = target.recheck_in.map(|d| d.as_secs()).unwrap_or(0);
                (
                    ConditionStatus::True,
                    "ScaleDownDelayed",
                    format!(
                        "{} agents kept; {why} ask for {asked}: scaling down after scaleDownDelaySeconds ({}s, next check in {secs}s)",
                        plan.desired, settings.scale_down_delay_seconds
                    ),
                )
            } else if plan.desired > asked {
                (
                    ConditionStatus::True,
                    "WaitingForBusyAgents",
                    format!(
                        "{} agents; {why} ask for {asked}: the others are removed when they finish their job",
                        plan.desired
                    ),
                )
            } else if d.total().saturating_add(i64::from(settings.min_idle)) > cap {
                (
                    ConditionStatus::True,
                    "AtMaximum",
                    format!(
                        "{} agents, every one the pool may run; {why} ask for {}",
                        plan.desired,
                        d.total().saturating_add(i64::from(settings.min_idle))
                    ),
                )
            } else {
                (ConditionStatus::True, "FollowingDemand", format!("{} agents for {why}", plan.desired))
            }
        }
    };
    (status, condition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::plan::AgentPhase;

    fn jobs(waiting: i64, running: i64) -> PoolJobsStatus {
        PoolJobsStatus { waiting, running, ..Default::default() }
    }

    #[test]
    fn unknown_demand_keeps_every_slot_and_says_so() {
        let s = PoolAutoscaling { min_idle: 2, ..Default::default() };
        let t = target("u-unknown", &s, None, 16, Instant::now());
        assert!(scale(&t, Some(BTreeSet::new()), BTreeSet::new()).is_none(), "no scale: every slot");
        let plan = Plan { desired: 16, slots: 16, ..Default::default() };
        let (status, (st, reason, msg)) = report(&s, &t, &plan, None);
        assert_eq!((st, reason), (ConditionStatus::False, "DemandUnknown"));
        assert!(msg.contains("every slot"), "{msg}");
        assert_eq!((status.demand, status.desired_agents, status.slots), (None, 16, 16));
    }

    #[test]
    fn the_target_follows_the_queue_after_the_delay() {
        let s = PoolAutoscaling { min_idle: 2, scale_down_delay_seconds: 60, ..Default::default() };
        let t0 = Instant::now();
        let t = target("u-follow", &s, Some(&jobs(0, 0)), 0, t0);
        assert_eq!((t.recommended, t.desired), (2, 2));
        let t = target("u-follow", &s, Some(&jobs(30, 10)), 2, t0 + Duration::from_secs(1));
        assert_eq!((t.recommended, t.desired), (42, 42), "the slots cap it in the plan");
        let t = target("u-follow", &s, Some(&jobs(0, 0)), 16, t0 + Duration::from_secs(10));
        assert_eq!((t.recommended, t.desired), (2, 42));
        let plan = Plan { desired: 16, slots: 16, ..Default::default() };
        let (status, (_, reason, _)) = report(&s, &t, &plan, Some(&Ok(BTreeSet::new())));
        assert_eq!(reason, "ScaleDownDelayed");
        assert_eq!((status.recommended_agents, status.desired_agents, status.busy_agents), (2, 16, Some(0)));
        let t = target("u-follow", &s, Some(&jobs(0, 0)), 16, t0 + Duration::from_secs(70));
        assert_eq!(t.desired, 2);
        let plan = Plan { desired: 2, slots: 16, ..Default::default() };
        assert_eq!(report(&s, &t, &plan, Some(&Ok(BTreeSet::new()))).1.1, "FollowingDemand");
        let failed = Err("listing Buildkite agents: 500".to_string());
        assert_eq!(
            report(&s, &t, &Plan { desired: 16, slots: 16, ..Default::default() }, Some(&failed)).1.1,
            "BusyAgentsUnknown"
        );
        forget("u-follow");
    }

    #[test]
    fn at_maximum_and_waiting_for_busy_agents() {
        let s = PoolAutoscaling { min_idle: 0, max_agents: Some(4), scale_down_delay_seconds: 0, ..Default::default() };
        let t = target("u-max", &s, Some(&jobs(40, 0)), 0, Instant::now());
        let plan = Plan { desired: 4, slots: 16, ..Default::default() };
        let (status, (_, reason, _)) = report(&s, &t, &plan, None);
        assert_eq!((reason, status.slots, status.recommended_agents), ("AtMaximum", 4, 4));
        let t = target("u-max", &s, Some(&jobs(0, 0)), 4, Instant::now());
        let busy: Result<BTreeSet<String>, String> = Ok(["a".to_string(), "b".to_string()].into());
        let plan = Plan { desired: 2, slots: 16, ..Default::default() };
        assert_eq!(report(&s, &t, &plan, Some(&busy)).1.1, "WaitingForBusyAgents");
        forget("u-max");
    }

    #[test]
    fn live_agents_exclude_terminating_and_finished_ones() {
        let a = |deleting, phase| ExistingAgent {
            name: "x".into(),
            gpunode: "a".into(),
            slot: Some(0),
            phase,
            ready: true,
            deleting,
            spec_hash: None,
            gpus: 1,
            reason: None,
            message: None,
        };
        let agents = [
            a(false, AgentPhase::Running),
            a(false, AgentPhase::Pending),
            a(true, AgentPhase::Running),
            a(false, AgentPhase::Succeeded),
        ];
        assert_eq!(live(&agents), 2);
    }
}
