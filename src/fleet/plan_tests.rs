//! Table tests of the pool planner: placement, replacement, node states and the rollout budget.

use super::*;
use crate::api::agentpool::{SelectorOperator, SelectorRequirement};

const ME: &str = "ci/h100";

fn node(name: &str, gpus: i64) -> NodeFacts {
    NodeFacts {
        gpunode: name.into(),
        found: true,
        health: NodeHealth::Ready,
        maintenance: false,
        exclusive: true,
        problem: None,
        held: None,
        gpu_count: gpus,
        per_gpu_share: Some(Share { cpu_cores: 16, memory_mib: 131072 }),
        foreign_gpus: 0,
        other_pool_gpus: 0,
        owner: Some(ME.into()),
    }
}

fn agent(node: &str, slot: u32, phase: AgentPhase, ready: bool) -> ExistingAgent {
    ExistingAgent {
        name: format!("h100-{node}-{slot}"),
        gpunode: node.into(),
        slot: Some(slot),
        phase,
        ready,
        deleting: false,
        spec_hash: Some("h1".into()),
        gpus: 1,
        reason: None,
        message: None,
    }
}

fn pool(gpa: i64) -> PoolFacts<'static> {
    PoolFacts {
        key: ME,
        paused: false,
        gpus_per_agent: gpa,
        ephemeral: true,
        max_unavailable: MaxUnavailable::Percent(100),
        scale: None,
    }
}

/// A pool with a budget of `n` agents.
fn tight(n: i64) -> PoolFacts<'static> {
    PoolFacts { max_unavailable: MaxUnavailable::Count(n), ..pool(1) }
}

fn hash(_: &NodeFacts, _: u32) -> Option<String> {
    Some("h1".into())
}

fn no_backoff(_: &str, _: u32) -> bool {
    false
}

#[test]
fn empty_pool_creates_one_agent_per_gpu() {
    let plan = plan_pool(&pool(1), &[node("a", 8), node("b", 8)], &[], hash, no_backoff);
    assert_eq!(plan.creates.len(), 16);
    assert_eq!(plan.creates[0], ("a".to_string(), 0));
    assert_eq!(plan.creates[15], ("b".to_string(), 7));
    assert_eq!((plan.desired, plan.ready, plan.gpus_claimed), (16, 0, 16));
    assert!(!plan.converged());
}

#[test]
fn converged_pool_does_nothing() {
    let agents: Vec<_> = (0..8).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    let plan = plan_pool(&pool(1), &[node("a", 8)], &agents, hash, no_backoff);
    assert!(plan.creates.is_empty() && plan.deletes.is_empty());
    assert!(plan.converged());
    assert_eq!(plan.ready, 8);
}

#[test]
fn completed_and_failed_agents_are_replaced() {
    let mut agents: Vec<_> = (0..8).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents[2].phase = AgentPhase::Succeeded;
    agents[5].phase = AgentPhase::Failed;
    agents[5].reason = Some("TopologyAffinityError".into());
    let plan = plan_pool(&pool(1), &[node("a", 8)], &agents, hash, no_backoff);
    assert_eq!(
        plan.deletes,
        vec![
            ("h100-a-2".to_string(), DeleteReason::Completed),
            ("h100-a-5".to_string(), DeleteReason::Failed("TopologyAffinityError".into())),
        ]
    );
    assert!(plan.creates.is_empty(), "same-named pods must be gone before they are recreated");
    // Next round, the deleted pods are gone: recreated unless backing off.
    let agents: Vec<_> = agents.into_iter().filter(|a| a.phase == AgentPhase::Running).collect();
    let plan = plan_pool(&pool(1), &[node("a", 8)], &agents, hash, |_, slot| slot == 5);
    assert_eq!(plan.creates, vec![("a".to_string(), 2)]);
    assert_eq!(plan.waiting, 1);
}

#[test]
fn never_more_gpus_than_the_node_has() {
    // Another pool's agents still hold 3 GPUs (hand-over): only 5 new agents fit.
    let mut n = node("a", 8);
    n.other_pool_gpus = 3;
    let plan = plan_pool(&pool(1), &[n.clone()], &[], hash, no_backoff);
    assert_eq!(plan.creates.len(), 5);
    assert_eq!(plan.waiting, 3);
    // A foreign pod holding 2 GPUs lowers the desired count itself.
    let mut n = node("a", 8);
    n.foreign_gpus = 2;
    let plan = plan_pool(&pool(1), &[n], &[], hash, no_backoff);
    assert_eq!((plan.creates.len(), plan.desired), (6, 6));
    // Terminating outdated pods of our own count until they are gone.
    let mut agents: Vec<_> = (0..8).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    for a in &mut agents {
        a.deleting = true;
    }
    let plan = plan_pool(&pool(2), &[node("a", 8)], &agents[4..], hash, no_backoff);
    // Slots 0..3 are free by name, but four 1-GPU pods still hold 4 GPUs: two 2-GPU agents fit.
    assert_eq!(plan.creates.len(), 2);
}

#[test]
fn multi_gpu_agents() {
    let plan = plan_pool(&pool(3), &[node("a", 8)], &[], hash, no_backoff);
    assert_eq!(plan.creates.len(), 2, "floor(8 / 3)");
    assert_eq!(plan.gpus_claimed, 6);
    assert_eq!(plan.nodes[0].agent_resources, Some(Share { cpu_cores: 48, memory_mib: 3 * 131072 }));
}

#[test]
fn outdated_agents_roll() {
    let agents: Vec<_> = (0..2).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    let plan = plan_pool(&pool(1), &[node("a", 2)], &agents, |_, _| Some("h2".into()), no_backoff);
    assert_eq!(plan.deletes.len(), 2);
    assert!(plan.deletes.iter().all(|(_, r)| *r == DeleteReason::Outdated));
    assert_eq!(plan.ready, 0);
}

#[test]
fn slots_beyond_capacity_are_removed() {
    let agents: Vec<_> = (0..8).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    let plan = plan_pool(&pool(1), &[node("a", 6)], &agents, hash, no_backoff);
    assert_eq!(plan.deletes.len(), 2);
    assert!(plan.deletes.iter().all(|(_, r)| *r == DeleteReason::SlotRemoved));
}

#[test]
fn involuntarily_ineligible_nodes_drain_at_once() {
    let agents: Vec<_> = (0..2).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    for (mutate, state) in [
        (Box::new(|n: &mut NodeFacts| n.found = false) as Box<dyn Fn(&mut NodeFacts)>, "NodeNotFound"),
        (Box::new(|n: &mut NodeFacts| n.health = NodeHealth::NotReady), "NotReady"),
        (Box::new(|n: &mut NodeFacts| n.exclusive = false), "NotExclusive"),
        (Box::new(|n: &mut NodeFacts| n.owner = Some("other/old".into())), "Conflict"),
        (Box::new(|n: &mut NodeFacts| n.problem = Some(("ShareTooSmall".into(), "too small".into()))), "ShareTooSmall"),
    ] {
        let mut n = node("a", 2);
        mutate(&mut n);
        // The tightest budget: involuntary losses do not wait for it.
        let plan = plan_pool(&tight(1), &[n], &agents, hash, no_backoff);
        assert_eq!(plan.nodes[0].state.name(), state);
        assert_eq!(plan.deletes.len(), 2, "{state}");
        assert!(plan.creates.is_empty());
        assert_eq!((plan.desired, plan.deferred), (0, 0));
    }
    let paused = PoolFacts { paused: true, ..tight(1) };
    let plan = plan_pool(&paused, &[node("a", 2)], &agents, hash, no_backoff);
    assert_eq!(plan.nodes[0].state, NodeState::Paused);
    assert_eq!(plan.deletes.len(), 2, "pausing is scaling to zero, not a rollout");
}

#[test]
fn deselected_nodes_lose_agents_and_deleting_pods_are_left_alone() {
    let mut agents = vec![agent("gone", 0, AgentPhase::Running, true), agent("gone", 1, AgentPhase::Running, true)];
    agents[1].deleting = true;
    let plan = plan_pool(&pool(1), &[], &agents, hash, no_backoff);
    assert_eq!(plan.deletes, vec![("h100-gone-0".to_string(), DeleteReason::NodeIneligible("Deselected".into()))]);
}

#[test]
fn oldest_active_pool_owns_the_node() {
    let all = GpuNodeSelector::default();
    let h100 = GpuNodeSelector {
        match_expressions: vec![SelectorRequirement {
            key: "nvidia.com/gpu.product".into(),
            operator: SelectorOperator::In,
            values: vec!["NVIDIA-H100-80GB-HBM3".into()],
        }],
        ..Default::default()
    };
    let labels: BTreeMap<String, String> =
        [("nvidia.com/gpu.product".to_string(), "NVIDIA-H100-80GB-HBM3".to_string())].into();
    let l40s: BTreeMap<String, String> = [("nvidia.com/gpu.product".to_string(), "NVIDIA-L40S".to_string())].into();
    let claimants = vec![
        Claimant { key: "b/new".into(), created: "2026-02-01T00:00:00Z".into(), selector: &all, active: true },
        Claimant { key: "a/old".into(), created: "2026-01-01T00:00:00Z".into(), selector: &h100, active: true },
        Claimant {
            key: "a/older-paused".into(),
            created: "2025-01-01T00:00:00Z".into(),
            selector: &all,
            active: false,
        },
    ];
    assert_eq!(node_owner(&labels, &claimants).map(String::as_str), Some("a/old"));
    assert_eq!(node_owner(&l40s, &claimants).map(String::as_str), Some("b/new"));
    let tie = vec![
        Claimant { key: "z/p".into(), created: "2026-01-01T00:00:00Z".into(), selector: &all, active: true },
        Claimant { key: "a/p".into(), created: "2026-01-01T00:00:00Z".into(), selector: &all, active: true },
    ];
    assert_eq!(node_owner(&labels, &tie).map(String::as_str), Some("a/p"));
    assert_eq!(node_owner(&labels, &[]), None);
}

fn h2(_: &NodeFacts, _: u32) -> Option<String> {
    Some("h2".into())
}

fn available(agents: &[ExistingAgent]) -> i64 {
    agents.iter().filter(|a| a.available()).count() as i64
}

/// Carries a plan out as the cluster would, one step later: pods deleted in an earlier round
/// are gone, pods deleted now terminate, pending pods become ready, created pods are pending.
fn step(agents: &mut Vec<ExistingAgent>, plan: &Plan, new_hash: &str) {
    agents.retain(|a| !a.deleting);
    for a in agents.iter_mut() {
        if a.phase == AgentPhase::Pending {
            a.phase = AgentPhase::Running;
            a.ready = true;
        }
    }
    for (pod, _) in &plan.deletes {
        if let Some(a) = agents.iter_mut().find(|a| &a.name == pod) {
            a.deleting = true;
        }
    }
    for (gpunode, slot) in &plan.creates {
        let mut a = agent(gpunode, *slot, AgentPhase::Pending, false);
        a.spec_hash = Some(new_hash.into());
        agents.push(a);
    }
}

#[test]
fn a_rollout_never_takes_more_than_max_unavailable_and_converges() {
    for (nodes, gpus) in [(1, 1), (1, 2), (3, 3), (10, 1), (2, 8), (4, 8), (19, 1)] {
        for budget in [
            MaxUnavailable::Count(1),
            MaxUnavailable::Count(5),
            MaxUnavailable::Percent(10),
            MaxUnavailable::Percent(20),
            MaxUnavailable::Percent(100),
        ] {
            let pool = PoolFacts { max_unavailable: budget, ..pool(1) };
            let selected: Vec<NodeFacts> = (0..nodes).map(|i| node(&format!("n{i}"), gpus)).collect();
            let mut agents: Vec<ExistingAgent> = selected
                .iter()
                .flat_map(|n| (0..gpus as u32).map(|s| agent(&n.gpunode, s, AgentPhase::Running, true)))
                .collect();
            let desired = nodes * gpus;
            let max_u = budget.resolve(desired);
            let mut rounds = 0;
            loop {
                let plan = plan_pool(&pool, &selected, &agents, h2, no_backoff);
                assert_eq!(plan.desired, desired);
                assert_eq!(plan.max_unavailable, max_u, "{budget} of {desired}");
                assert_eq!(plan.min_available, (desired - max_u).max(0));
                assert!(plan.unavailable <= max_u, "{budget} of {desired}: {} unavailable", plan.unavailable);
                if plan.converged() {
                    assert_eq!((plan.updated, plan.ready), (desired, desired));
                    break;
                }
                step(&mut agents, &plan, "h2");
                assert!(
                    available(&agents) >= desired - max_u,
                    "{budget} of {desired}, round {rounds}: only {} available",
                    available(&agents)
                );
                rounds += 1;
                assert!(rounds < 10 * desired + 10, "{budget} of {desired}: no convergence");
            }
            assert!(agents.iter().all(|a| a.spec_hash.as_deref() == Some("h2")));
            // The budget is used: a rollout takes desired / maxUnavailable waves of four
            // rounds (deleted, gone, created, ready).
            let waves = (desired + max_u - 1) / max_u;
            assert!(rounds <= 4 * waves, "{budget} of {desired}: {rounds} rounds for {waves} waves");
        }
    }
}

#[test]
fn unavailable_outdated_agents_are_replaced_first_and_for_free() {
    let mut agents: Vec<_> = (0..10).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents[3].ready = false;
    agents[7].phase = AgentPhase::Pending;
    agents[7].ready = false;
    let plan = plan_pool(&tight(1), &[node("a", 10)], &agents, h2, no_backoff);
    // Two are already unavailable (more than the budget of 1): only they go.
    assert_eq!(plan.unavailable, 2);
    assert_eq!(
        plan.deletes,
        vec![("h100-a-3".to_string(), DeleteReason::Outdated), ("h100-a-7".to_string(), DeleteReason::Outdated)]
    );
    assert_eq!((plan.deferred, plan.ready, plan.updated), (8, 8, 0));
    assert!(!plan.converged() && plan.rolling());
}

#[test]
fn a_terminating_or_missing_agent_uses_the_budget() {
    let mut agents: Vec<_> = (0..10).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents[0].deleting = true;
    let plan = plan_pool(&tight(2), &[node("a", 10)], &agents, h2, no_backoff);
    assert_eq!((plan.unavailable, plan.deletes.len(), plan.deferred), (1, 1, 8));
    // Slot 0 is gone but not yet recreated by the cache: still unavailable.
    let plan = plan_pool(&tight(2), &[node("a", 10)], &agents[1..], h2, no_backoff);
    assert_eq!(plan.creates, vec![("a".to_string(), 0)]);
    assert_eq!((plan.unavailable, plan.deletes.len(), plan.deferred), (1, 1, 8));
    // A failed pod is replaced whatever the budget, and counts as unavailable meanwhile.
    let mut agents: Vec<_> = (0..10).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents[4].phase = AgentPhase::Failed;
    agents[5].phase = AgentPhase::Succeeded;
    let plan = plan_pool(&tight(1), &[node("a", 10)], &agents, h2, no_backoff);
    assert_eq!(
        plan.deletes,
        vec![
            ("h100-a-4".to_string(), DeleteReason::Failed("Failed".into())),
            ("h100-a-5".to_string(), DeleteReason::Completed),
        ]
    );
    assert_eq!((plan.unavailable, plan.deferred), (2, 8), "the rollout waits for them");
}

#[test]
fn updated_counts_live_agents_built_from_the_current_spec() {
    let mut agents: Vec<_> = (0..4).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents[0].spec_hash = Some("h2".into());
    agents[1].spec_hash = Some("h2".into());
    agents[1].phase = AgentPhase::Pending;
    agents[1].ready = false;
    agents[2].spec_hash = Some("h2".into());
    agents[2].deleting = true;
    let plan = plan_pool(&tight(2), &[node("a", 4)], &agents, h2, no_backoff);
    assert_eq!(plan.updated, 2, "a terminating pod is not updated");
    assert_eq!((plan.unavailable, plan.deferred), (2, 1));
    assert_eq!(plan.ready, 2, "slots 0 and 3; slot 3 is outdated but serves until rolled");
}

#[test]
fn a_node_not_ready_within_its_toleration_keeps_its_agents_and_gets_none() {
    let mut agents: Vec<_> = (0..3).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents[2].ready = false;
    let mut n = node("a", 4);
    n.health = NodeHealth::NotReadyTolerated;
    // Outdated too: not rolled while the kubelet cannot act.
    let plan = plan_pool(&pool(1), &[n.clone()], &agents, h2, no_backoff);
    assert_eq!(plan.nodes[0].state, NodeState::NotReadyTolerated);
    assert!(plan.deletes.is_empty() && plan.creates.is_empty());
    assert_eq!((plan.desired, plan.ready, plan.gpus_claimed, plan.waiting), (4, 2, 4, 0));
    assert!(!plan.converged(), "the pool is not whole while a node is away");
    // A finished pod is still cleaned up.
    agents[0].phase = AgentPhase::Succeeded;
    let plan = plan_pool(&pool(1), &[n.clone()], &agents, hash, no_backoff);
    assert_eq!(plan.deletes, vec![("h100-a-0".to_string(), DeleteReason::Completed)]);
    assert!(plan.creates.is_empty());
    // Beyond the toleration the node drains at once.
    n.health = NodeHealth::NotReady;
    let plan = plan_pool(&tight(1), &[n], &agents, hash, no_backoff);
    assert_eq!(plan.deletes.len(), 3);
}

#[test]
fn a_cordoned_node_gets_no_agents_and_ephemeral_ones_finish_their_job() {
    let mut agents: Vec<_> = (0..4).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents.push(agent("b", 0, AgentPhase::Running, true));
    let mut a = node("a", 4);
    a.health = NodeHealth::Cordoned;
    let selected = [a, node("b", 1)];
    let plan = plan_pool(&tight(1), &selected, &agents[..4], hash, no_backoff);
    assert_eq!(plan.nodes[0].state, NodeState::Cordoned);
    assert!(plan.deletes.is_empty(), "busy ephemeral agents are never cut short");
    assert_eq!(plan.creates, vec![("b".to_string(), 0)], "only the uncordoned node gets agents");
    assert_eq!((plan.desired, plan.nodes[0].desired, plan.nodes[0].ready), (1, 0, 4));
    // One finished its job: deleted, and not replaced on the cordoned node.
    agents[1].phase = AgentPhase::Succeeded;
    let plan = plan_pool(&tight(1), &selected, &agents, hash, no_backoff);
    assert_eq!(plan.deletes, vec![("h100-a-1".to_string(), DeleteReason::Completed)]);
    assert!(plan.creates.is_empty());
    agents.remove(1);
    let plan = plan_pool(&tight(1), &selected, &agents, hash, no_backoff);
    assert!(plan.converged(), "agents finishing on a cordoned node do not hold the pool back");
    assert_eq!(plan.min_available, 1 + 3 - 1, "they are protected by the budget until they leave");
}

#[test]
fn non_ephemeral_agents_leave_a_cordoned_node_within_the_budget() {
    let agents: Vec<_> =
        ["a", "b"].iter().flat_map(|n| (0..8).map(move |s| agent(n, s, AgentPhase::Running, true))).collect();
    let mut a = node("a", 8);
    a.health = NodeHealth::Cordoned;
    let pool = PoolFacts { ephemeral: false, max_unavailable: MaxUnavailable::Percent(20), ..pool(1) };
    let plan = plan_pool(&pool, &[a, node("b", 8)], &agents, hash, no_backoff);
    // Base 8 desired + 8 still draining = 16; 20% = 3.
    assert_eq!((plan.max_unavailable, plan.min_available), (3, 13));
    assert_eq!(plan.deletes.len(), 3);
    assert!(plan.deletes.iter().all(|(_, r)| *r == DeleteReason::NodeIneligible("Cordoned".into())));
    assert_eq!((plan.deferred, plan.desired, plan.ready), (5, 8, 8));
}

#[test]
fn maintenance_drains_one_budget_at_a_time_until_the_node_is_empty() {
    let selected: Vec<NodeFacts> = (0..4)
        .map(|i| {
            let mut n = node(&format!("n{i}"), 2);
            n.maintenance = true;
            n
        })
        .collect();
    let mut agents: Vec<ExistingAgent> =
        selected.iter().flat_map(|n| (0..2).map(|s| agent(&n.gpunode, s, AgentPhase::Running, true))).collect();
    let mut rounds = 0;
    let mut most_unavailable = 0;
    loop {
        let plan = plan_pool(&tight(1), &selected, &agents, hash, no_backoff);
        assert_eq!(plan.desired, 0);
        assert!(plan.creates.is_empty());
        most_unavailable = most_unavailable.max(plan.unavailable);
        assert!(plan.deletes.len() <= 1, "round {rounds}: {:?}", plan.deletes);
        if agents.is_empty() {
            assert!(plan.converged());
            break;
        }
        step(&mut agents, &plan, "h1");
        let gone = 8 - agents.iter().filter(|a| !a.deleting).count();
        assert!(agents.iter().filter(|a| a.deleting).count() <= 1, "round {rounds}: {gone} gone");
        rounds += 1;
        assert!(rounds < 40, "the drain never finishes");
    }
    assert_eq!(most_unavailable, 1);
}

#[test]
fn node_states_rank_admin_intent_first() {
    let mut n = node("a", 1);
    n.maintenance = true;
    n.health = NodeHealth::NotReadyTolerated;
    assert_eq!(plan_pool(&pool(1), &[n.clone()], &[], hash, no_backoff).nodes[0].state, NodeState::Maintenance);
    n.maintenance = false;
    n.exclusive = false;
    assert_eq!(plan_pool(&pool(1), &[n.clone()], &[], hash, no_backoff).nodes[0].state, NodeState::NotReadyTolerated);
    n.health = NodeHealth::Cordoned;
    assert_eq!(plan_pool(&pool(1), &[n.clone()], &[], hash, no_backoff).nodes[0].state, NodeState::Cordoned);
    n.health = NodeHealth::NotReady;
    assert_eq!(plan_pool(&pool(1), &[n], &[], hash, no_backoff).nodes[0].state, NodeState::NotReady);
}

#[test]
fn rolling_names_voluntary_work() {
    let agents: Vec<_> = (0..2).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    assert!(plan_pool(&tight(1), &[node("a", 2)], &agents, h2, no_backoff).rolling());
    assert!(!plan_pool(&tight(1), &[node("a", 2)], &agents, hash, no_backoff).rolling());
    let mut n = node("a", 2);
    n.health = NodeHealth::NotReady;
    assert!(!plan_pool(&tight(1), &[n], &agents, hash, no_backoff).rolling(), "an involuntary drain is no rollout");
}

/// A pool autoscaled to `target` agents; `busy`: None when nobody knows which agents are busy.
fn scaled(target: i64, busy: Option<&[&str]>, certified: &[(&str, u32)]) -> PoolFacts<'static> {
    PoolFacts {
        scale: Some(Scale {
            target,
            busy: busy.map(|b| b.iter().map(|s| s.to_string()).collect()),
            certified: certified.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
        }),
        ..pool(1)
    }
}

fn live(nodes: &[&str], gpus: u32) -> Vec<ExistingAgent> {
    nodes.iter().flat_map(|n| (0..gpus).map(move |s| agent(n, s, AgentPhase::Running, true))).collect()
}

#[test]
fn an_autoscaled_pool_runs_its_target_on_the_first_slots() {
    let nodes = [node("a", 8), node("b", 8)];
    let plan = plan_pool(&scaled(2, Some(&[]), &[]), &nodes, &[], hash, no_backoff);
    assert_eq!(plan.creates, vec![("a".to_string(), 0), ("a".to_string(), 1)]);
    assert_eq!((plan.desired, plan.slots, plan.gpus_claimed), (2, 16, 2));
    assert_eq!(plan.nodes.iter().map(|n| n.desired).collect::<Vec<_>>(), vec![2, 0]);
    // Zero: nothing runs, and the pool is converged.
    let zero = plan_pool(&scaled(0, Some(&[]), &[]), &nodes, &[], hash, no_backoff);
    assert!(zero.creates.is_empty() && zero.converged() && zero.desired == 0 && zero.slots == 16);
    // Beyond the slots: every slot.
    let all = plan_pool(&scaled(100, Some(&[]), &[]), &nodes, &[], hash, no_backoff);
    assert_eq!((all.creates.len(), all.desired), (16, 16));
    // Without autoscaling the same nodes run 16, whatever.
    assert_eq!(plan_pool(&pool(1), &nodes, &[], hash, no_backoff).desired, 16);
}

#[test]
fn scale_down_removes_idle_agents_only() {
    let nodes = [node("a", 8), node("b", 8)];
    let agents = live(&["a", "b"], 8);
    let plan = plan_pool(&scaled(2, Some(&["h100-b-7", "h100-b-3"]), &[]), &nodes, &agents, hash, no_backoff);
    let deleted: BTreeSet<&str> = plan.deletes.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(deleted.len(), 14, "{deleted:?}");
    assert!(!deleted.contains("h100-b-7") && !deleted.contains("h100-b-3"), "busy agents stay");
    assert!(plan.deletes.iter().all(|(_, r)| *r == DeleteReason::ScaledDown));
    assert_eq!(plan.desired, 2, "the busy agents fill the target");
    assert!(plan.creates.is_empty());
    // Busy beyond the target: kept, and counted as desired until they finish.
    let busy = ["h100-a-1", "h100-a-2", "h100-b-0"];
    let plan = plan_pool(&scaled(1, Some(&busy), &[]), &nodes, &agents, hash, no_backoff);
    assert_eq!((plan.deletes.len(), plan.desired), (13, 3));
    // Nobody knows who is busy: nothing is removed.
    let plan = plan_pool(&scaled(2, None, &[]), &nodes, &agents, hash, no_backoff);
    assert!(plan.deletes.is_empty() && plan.creates.is_empty());
    assert_eq!(plan.desired, 16);
    // Unknown busy agents do not stop a scale-up.
    let plan = plan_pool(&scaled(4, None, &[]), &nodes, &live(&["a"], 2), hash, no_backoff);
    assert_eq!(plan.creates, vec![("a".to_string(), 2), ("a".to_string(), 3)]);
}

#[test]
fn certified_slots_are_chosen_first_and_kept_across_scale_down() {
    let nodes = [node("a", 8), node("b", 8)];
    let certified = [("b", 5), ("a", 6)];
    let plan = plan_pool(&scaled(3, Some(&[]), &certified), &nodes, &[], hash, no_backoff);
    assert_eq!(plan.creates, vec![("a".to_string(), 0), ("a".to_string(), 6), ("b".to_string(), 5)]);
    // From 16 idle agents down to 2: the certified ones stay.
    let plan = plan_pool(&scaled(2, Some(&[]), &certified), &nodes, &live(&["a", "b"], 8), hash, no_backoff);
    let kept: Vec<&str> = ["h100-a-6", "h100-b-5"].into_iter().collect();
    assert!(plan.deletes.iter().all(|(p, _)| !kept.contains(&p.as_str())), "{:?}", plan.deletes);
    assert_eq!(plan.deletes.len(), 14);
}

#[test]
fn an_autoscaled_pool_follows_a_burst_and_converges_each_way() {
    let nodes = [node("a", 8), node("b", 8)];
    let mut agents: Vec<ExistingAgent> = Vec::new();
    for (target, want) in [(2, 2), (16, 16), (40, 16), (2, 2), (0, 0), (5, 5)] {
        let mut rounds = 0;
        loop {
            let plan = plan_pool(&scaled(target, Some(&[]), &[]), &nodes, &agents, hash, no_backoff);
            assert_eq!(plan.desired, want);
            if plan.converged() {
                break;
            }
            step(&mut agents, &plan, "h1");
            rounds += 1;
            assert!(rounds < 5, "target {target} does not converge");
        }
        // Time passes: the removed pods are gone.
        agents.retain(|a| !a.deleting);
        assert_eq!(agents.iter().filter(|a| a.available()).count() as i64, want);
        // The agents always sit on the first slots (nodes fill in order).
        let mut slots: Vec<(String, u32)> = agents.iter().map(|a| (a.gpunode.clone(), a.slot.unwrap_or(99))).collect();
        slots.sort();
        let first: Vec<(String, u32)> =
            ["a", "b"].iter().flat_map(|n| (0..8).map(move |s| (n.to_string(), s))).take(slots.len()).collect();
        assert_eq!(slots, first);
    }
}

#[test]
fn an_autoscaled_node_not_ready_within_toleration_keeps_what_it_has() {
    let mut b = node("b", 8);
    b.health = NodeHealth::NotReadyTolerated;
    let agents = live(&["b"], 3);
    let plan = plan_pool(&scaled(2, Some(&[]), &[]), &[node("a", 8), b], &agents, hash, no_backoff);
    assert!(plan.deletes.is_empty(), "{:?}", plan.deletes);
    assert_eq!(plan.creates, vec![("a".to_string(), 0), ("a".to_string(), 1)]);
    assert_eq!((plan.desired, plan.slots), (5, 8));
}

#[test]
fn a_held_node_keeps_its_agents_even_outdated_and_gets_none() {
    let mut agents: Vec<_> = (0..3).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
    agents[2].ready = false;
    let mut n = node("a", 4);
    n.held = Some(("DevicesUnsettled".into(), "republishing".into()));
    // A problem too (the DRA devices look gone): holding wins, nothing is deleted.
    n.problem = Some(("NoDraDevices".into(), "gone".into()));
    let plan = plan_pool(&pool(1), &[n.clone()], &agents, h2, no_backoff);
    assert_eq!(plan.nodes[0].state, NodeState::Held("DevicesUnsettled".into(), "republishing".into()));
    assert_eq!(plan.nodes[0].state.name(), "DevicesUnsettled");
    assert!(plan.deletes.is_empty() && plan.creates.is_empty(), "{:?} {:?}", plan.deletes, plan.creates);
    assert_eq!((plan.desired, plan.ready), (4, 2));
    // Without the hold, the problem drains the node at once.
    n.held = None;
    let plan = plan_pool(&pool(1), &[n.clone()], &agents, h2, no_backoff);
    assert_eq!(plan.deletes.len(), 3);
    // A held node with no agents gets none; like a node within its not-Ready toleration it is
    // expected back, so the pool is not whole meanwhile.
    n.held = Some(("DraDisabled".into(), "no --dra-driver".into()));
    n.problem = None;
    let plan = plan_pool(&pool(1), &[n], &[], hash, no_backoff);
    assert!(plan.creates.is_empty());
    assert_eq!((plan.desired, plan.ready), (4, 0));
    assert!(!plan.converged());
}
