//! Pool planning: which nodes a pool may use, which agent pods to create and which to delete.
//! Pure: the controller feeds it what its caches observed and carries out the plan.

use std::collections::{BTreeMap, BTreeSet};

use super::share::Share;
use crate::api::agentpool::GpuNodeSelector;

/// `namespace/name` of a pool.
pub type PoolKey = String;

/// A pool competing for nodes.
#[derive(Clone, Debug)]
pub struct Claimant<'a> {
    pub key: PoolKey,
    /// RFC 3339 creation time (sorts chronologically); the older pool wins a node.
    pub created: String,
    pub selector: &'a GpuNodeSelector,
    /// Paused or deleted pools claim nothing.
    pub active: bool,
}

/// The pool that owns a node with these labels: the oldest active pool selecting it
/// (ties broken by `namespace/name`), so a GPU is never claimed twice.
pub fn node_owner<'a>(labels: &BTreeMap<String, String>, claimants: &'a [Claimant<'a>]) -> Option<&'a PoolKey> {
    claimants
        .iter()
        .filter(|c| c.active && c.selector.matches(labels))
        .min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)))
        .map(|c| &c.key)
}

/// What the pool knows about one selected node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub gpunode: String,
    pub found: bool,
    pub node_ready: bool,
    pub maintenance: bool,
    pub exclusive: bool,
    /// A reason the GpuNode gives for not being usable (share too small, ambiguous resource).
    pub problem: Option<(String, String)>,
    pub gpu_count: i64,
    pub per_gpu_share: Option<Share>,
    /// GPUs held by pods benchkite does not manage.
    pub foreign_gpus: i64,
    /// GPUs held by live agent pods of OTHER pools (during a hand-over).
    pub other_pool_gpus: i64,
    /// Who owns the node (None when no active pool selects it).
    pub owner: Option<PoolKey>,
}

/// Why a selected node runs no agents of this pool (or `Active` when it does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    Active,
    Paused,
    Conflict(PoolKey),
    NodeNotFound,
    Maintenance,
    NotReady,
    NotExclusive,
    Unusable(String, String),
}

impl NodeState {
    pub fn name(&self) -> &str {
        match self {
            NodeState::Active => "Active",
            NodeState::Paused => "Paused",
            NodeState::Conflict(_) => "Conflict",
            NodeState::NodeNotFound => "NodeNotFound",
            NodeState::Maintenance => "Maintenance",
            NodeState::NotReady => "NotReady",
            NodeState::NotExclusive => "NotExclusive",
            NodeState::Unusable(reason, _) => reason,
        }
    }

    pub fn message(&self) -> String {
        match self {
            NodeState::Active => String::new(),
            NodeState::Paused => "the pool is paused".into(),
            NodeState::Conflict(owner) => format!("claimed by the older pool {owner}"),
            NodeState::NodeNotFound => "the Kubernetes Node does not exist".into(),
            NodeState::Maintenance => "the GpuNode is in maintenance: agents drain".into(),
            NodeState::NotReady => "the Node is not Ready".into(),
            NodeState::NotExclusive => {
                "the GPUs are shared (time-slicing/MPS): benchmarks would not be isolated".into()
            }
            NodeState::Unusable(_, message) => message.clone(),
        }
    }
}

/// Lifecycle of an agent pod as the planner needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl AgentPhase {
    pub fn parse(phase: Option<&str>) -> AgentPhase {
        match phase {
            Some("Running") => AgentPhase::Running,
            Some("Succeeded") => AgentPhase::Succeeded,
            Some("Failed") => AgentPhase::Failed,
            Some("Pending") | None => AgentPhase::Pending,
            Some(_) => AgentPhase::Unknown,
        }
    }

    /// Terminal pods hold no resources (the scheduler ignores them).
    pub fn is_terminal(self) -> bool {
        matches!(self, AgentPhase::Succeeded | AgentPhase::Failed)
    }
}

/// An agent pod of this pool as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct ExistingAgent {
    pub name: String,
    pub gpunode: String,
    pub slot: Option<u32>,
    pub phase: AgentPhase,
    pub ready: bool,
    pub deleting: bool,
    pub spec_hash: Option<String>,
    pub gpus: i64,
    /// Pod status reason (e.g. `TopologyAffinityError`, `Evicted`) and message.
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// Why an agent pod is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Ephemeral agent finished its job.
    Completed,
    /// The pod failed (reason from its status).
    Failed(String),
    /// Built from an older pool spec or share: rolled gracefully.
    Outdated,
    /// The node left the selection or cannot run agents now.
    NodeIneligible(String),
    /// The slot no longer exists (fewer GPUs, more GPUs per agent).
    SlotRemoved,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodePlan {
    pub gpunode: String,
    pub state: NodeState,
    pub desired: i64,
    pub ready: i64,
    pub gpus: i64,
    pub agent_resources: Option<Share>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// (gpunode, slot) pairs to create.
    pub creates: Vec<(String, u32)>,
    /// (pod name, reason) pairs to delete.
    pub deletes: Vec<(String, DeleteReason)>,
    pub nodes: Vec<NodePlan>,
    pub desired: i64,
    pub ready: i64,
    pub gpus_claimed: i64,
    /// Slots waiting for capacity (old pods still terminating) or for a failure backoff.
    pub waiting: usize,
}

impl Plan {
    pub fn converged(&self) -> bool {
        self.creates.is_empty() && self.deletes.is_empty() && self.waiting == 0 && self.ready == self.desired
    }
}

/// Inputs about this pool.
#[derive(Clone, Debug)]
pub struct PoolFacts<'a> {
    pub key: &'a str,
    pub paused: bool,
    pub gpus_per_agent: i64,
}

/// Plans one pool. `selected` are the nodes its selector matches; `agents` are all live pods
/// it owns; `desired_hash(gpunode, slot)` is the spec hash a pod built now would carry;
/// `in_backoff(gpunode, slot)` says a slot recently failed and must wait.
pub fn plan_pool(
    pool: &PoolFacts<'_>,
    selected: &[NodeFacts],
    agents: &[ExistingAgent],
    desired_hash: impl Fn(&NodeFacts, u32) -> Option<String>,
    in_backoff: impl Fn(&str, u32) -> bool,
) -> Plan {
    let mut plan = Plan::default();
    let gpa = pool.gpus_per_agent.max(1);
    let mut by_node: BTreeMap<&str, Vec<&ExistingAgent>> = BTreeMap::new();
    for a in agents {
        by_node.entry(a.gpunode.as_str()).or_default().push(a);
    }
    let selected_names: BTreeSet<&str> = selected.iter().map(|n| n.gpunode.as_str()).collect();

    for node in selected {
        let state = if pool.paused {
            NodeState::Paused
        } else if node.owner.as_deref().is_some_and(|o| o != pool.key) {
            NodeState::Conflict(node.owner.clone().unwrap_or_default())
        } else if !node.found {
            NodeState::NodeNotFound
        } else if node.maintenance {
            NodeState::Maintenance
        } else if !node.node_ready {
            NodeState::NotReady
        } else if !node.exclusive {
            NodeState::NotExclusive
        } else if let Some((reason, message)) = &node.problem {
            NodeState::Unusable(reason.clone(), message.clone())
        } else if node.per_gpu_share.is_none() {
            NodeState::Unusable("ShareUnknown".into(), "the GpuNode has no per-GPU share yet".into())
        } else {
            NodeState::Active
        };
        let usable_gpus = (node.gpu_count - node.foreign_gpus).max(0);
        let desired = if state == NodeState::Active { usable_gpus / gpa } else { 0 };
        let desired_slots = u32::try_from(desired).unwrap_or(0);
        let mine = by_node.remove(node.gpunode.as_str()).unwrap_or_default();

        // GPUs held on the node by live pods (ours included, terminating included).
        let mut held: i64 = node.other_pool_gpus
            + mine
                .iter()
                .filter(|a| !a.phase.is_terminal())
                .map(|a| if a.gpus > 0 { a.gpus } else { gpa })
                .sum::<i64>();
        let mut occupied: BTreeSet<u32> = BTreeSet::new();
        let mut ready = 0;
        for a in &mine {
            if let Some(slot) = a.slot {
                occupied.insert(slot);
            }
            if a.deleting {
                continue;
            }
            let reason = match (a.slot, a.phase) {
                (_, AgentPhase::Succeeded) => Some(DeleteReason::Completed),
                (_, AgentPhase::Failed) => {
                    Some(DeleteReason::Failed(a.reason.clone().unwrap_or_else(|| "Failed".into())))
                }
                _ if state != NodeState::Active => Some(DeleteReason::NodeIneligible(state.name().to_string())),
                (None, _) => Some(DeleteReason::SlotRemoved),
                (Some(slot), _) if slot >= desired_slots => Some(DeleteReason::SlotRemoved),
                (Some(slot), _) if a.spec_hash != desired_hash(node, slot) => Some(DeleteReason::Outdated),
                _ => None,
            };
            match reason {
                Some(r) => plan.deletes.push((a.name.clone(), r)),
                None if a.phase == AgentPhase::Running && a.ready => ready += 1,
                None => {}
            }
        }
        if state == NodeState::Active {
            for slot in 0..desired_slots {
                if occupied.contains(&slot) {
                    continue;
                }
                if in_backoff(&node.gpunode, slot) || held + gpa > usable_gpus {
                    plan.waiting += 1;
                    continue;
                }
                held += gpa;
                plan.creates.push((node.gpunode.clone(), slot));
            }
        }
        plan.desired += desired;
        plan.ready += ready;
        plan.gpus_claimed += desired * gpa;
        plan.nodes.push(NodePlan {
            gpunode: node.gpunode.clone(),
            agent_resources: (state == NodeState::Active).then(|| node.per_gpu_share.map(|s| s.times(gpa))).flatten(),
            state,
            desired,
            ready,
            gpus: desired * gpa,
        });
    }
    // Pods on nodes that left the selection.
    for (gpunode, rest) in by_node {
        debug_assert!(!selected_names.contains(gpunode));
        for a in rest.into_iter().filter(|a| !a.deleting) {
            plan.deletes.push((a.name.clone(), DeleteReason::NodeIneligible("Deselected".into())));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::agentpool::{SelectorOperator, SelectorRequirement};

    const ME: &str = "ci/h100";

    fn node(name: &str, gpus: i64) -> NodeFacts {
        NodeFacts {
            gpunode: name.into(),
            found: true,
            node_ready: true,
            maintenance: false,
            exclusive: true,
            problem: None,
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
        PoolFacts { key: ME, paused: false, gpus_per_agent: gpa }
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
    fn ineligible_nodes_drain() {
        let agents: Vec<_> = (0..2).map(|s| agent("a", s, AgentPhase::Running, true)).collect();
        for (mutate, state) in [
            (Box::new(|n: &mut NodeFacts| n.maintenance = true) as Box<dyn Fn(&mut NodeFacts)>, "Maintenance"),
            (Box::new(|n: &mut NodeFacts| n.found = false), "NodeNotFound"),
            (Box::new(|n: &mut NodeFacts| n.node_ready = false), "NotReady"),
            (Box::new(|n: &mut NodeFacts| n.exclusive = false), "NotExclusive"),
            (Box::new(|n: &mut NodeFacts| n.owner = Some("other/old".into())), "Conflict"),
            (
                Box::new(|n: &mut NodeFacts| n.problem = Some(("ShareTooSmall".into(), "too small".into()))),
                "ShareTooSmall",
            ),
        ] {
            let mut n = node("a", 2);
            mutate(&mut n);
            let plan = plan_pool(&pool(1), &[n], &agents, hash, no_backoff);
            assert_eq!(plan.nodes[0].state.name(), state);
            assert_eq!(plan.deletes.len(), 2, "{state}");
            assert!(plan.creates.is_empty());
            assert_eq!(plan.desired, 0);
        }
        let paused = PoolFacts { paused: true, ..pool(1) };
        let plan = plan_pool(&paused, &[node("a", 2)], &agents, hash, no_backoff);
        assert_eq!(plan.nodes[0].state, NodeState::Paused);
        assert_eq!(plan.deletes.len(), 2);
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
}
