//! Pool planning: which nodes a pool may use, which agent pods to create and which to delete.
//! Pure: the controller feeds it what its caches observed and carries out the plan.

use std::collections::{BTreeMap, BTreeSet};

use super::autoscale::{self, SlotAgent, SlotView};
use super::rollout::MaxUnavailable;
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

/// Health of the Kubernetes Node behind a GpuNode, from the reason of the GpuNode's `Ready`
/// condition (the GpuNode controller decides the toleration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    Ready,
    /// NotReady for less than the toleration (`NodeNotReadyTolerated`): agents are kept,
    /// none are created, like Kubernetes waiting out `node.kubernetes.io/not-ready`.
    NotReadyTolerated,
    /// Cordoned (`NodeCordoned`): no new agents; running agents finish.
    Cordoned,
    /// NotReady beyond the toleration (`NodeNotReady`): agents are drained at once.
    NotReady,
}

/// What the pool knows about one selected node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub gpunode: String,
    pub found: bool,
    pub health: NodeHealth,
    pub maintenance: bool,
    pub exclusive: bool,
    /// A reason the GpuNode gives for not being usable (share too small, ambiguous resource).
    pub problem: Option<(String, String)>,
    /// A reason to keep the node's agents but create none (reason, message), e.g. its DRA
    /// devices are being republished.
    pub held: Option<(String, String)>,
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
    /// NotReady within its toleration: agents kept, none created.
    NotReadyTolerated,
    /// Cordoned: no new agents; running ones finish.
    Cordoned,
    NotExclusive,
    Unusable(String, String),
    /// Agents are kept and none created, for the reason given (e.g. the DRA driver's slices
    /// for the node are being rewritten): like `NotReadyTolerated`, with its own reason.
    Held(String, String),
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
            NodeState::NotReadyTolerated => "NotReadyTolerated",
            NodeState::Cordoned => "Cordoned",
            NodeState::NotExclusive => "NotExclusive",
            NodeState::Unusable(reason, _) | NodeState::Held(reason, _) => reason,
        }
    }

    pub fn message(&self) -> String {
        match self {
            NodeState::Active => String::new(),
            NodeState::Paused => "the pool is paused".into(),
            NodeState::Conflict(owner) => format!("claimed by the older pool {owner}"),
            NodeState::NodeNotFound => "the Kubernetes Node does not exist".into(),
            NodeState::Maintenance => {
                "the GpuNode is in maintenance: agents drain gracefully, within the pool's maxUnavailable".into()
            }
            NodeState::NotReady => "the Node is not Ready beyond its toleration: agents drain".into(),
            NodeState::NotReadyTolerated => {
                "the Node is not Ready, within its toleration: agents are kept, none are created".into()
            }
            NodeState::Cordoned => {
                "the Node is cordoned: no new agents; running agents finish their job (non-ephemeral ones drain within the pool's maxUnavailable)".into()
            }
            NodeState::NotExclusive => {
                "the GPUs are shared (time-slicing/MPS): benchmarks would not be isolated".into()
            }
            NodeState::Unusable(_, message) | NodeState::Held(_, message) => message.clone(),
        }
    }

    /// The node's agents still count as the pool's desired agents (`NotReadyTolerated`: the
    /// node is expected back).
    fn keeps_desired(&self) -> bool {
        matches!(self, NodeState::Active | NodeState::NotReadyTolerated | NodeState::Held(..))
    }

    /// Agents stay, none are created: the node is expected back as it was.
    pub fn holds(&self) -> bool {
        matches!(self, NodeState::NotReadyTolerated | NodeState::Held(..))
    }

    /// An admin's voluntary action drains the node: its agents leave within the rollout
    /// budget, like `kubectl drain` under a PodDisruptionBudget.
    fn drains_voluntarily(&self) -> bool {
        matches!(self, NodeState::Maintenance | NodeState::Cordoned)
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

impl ExistingAgent {
    /// Available: Running and Ready (a Deployment's "available" with minReadySeconds 0).
    fn available(&self) -> bool {
        self.phase == AgentPhase::Running && self.ready && !self.deleting
    }
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
    /// Autoscaling: the demand fell and the agent was idle.
    ScaledDown,
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
    /// (pod name, reason) pairs to delete now.
    pub deletes: Vec<(String, DeleteReason)>,
    pub nodes: Vec<NodePlan>,
    /// Agents the pool should run (on Active nodes and on NotReady nodes within toleration).
    pub desired: i64,
    /// Of those, Running and Ready (outdated ones included until they are rolled).
    pub ready: i64,
    /// Live agents on those nodes built from the current spec and share.
    pub updated: i64,
    pub gpus_claimed: i64,
    /// Slots waiting for capacity (old pods still terminating) or for a failure backoff.
    pub waiting: usize,
    /// Voluntary deletes (outdated agents, maintenance and cordon drains) held back because
    /// `max_unavailable` agents are already unavailable.
    pub deferred: usize,
    /// Agents unavailable now: the budget base minus the available agents.
    pub unavailable: i64,
    /// `maxUnavailable` resolved against the budget base.
    pub max_unavailable: i64,
    /// Available agents a voluntary disruption must leave (the PodDisruptionBudget's
    /// `minAvailable`): the budget base minus `max_unavailable`, at least 0.
    pub min_available: i64,
    /// Agents the pool's Active nodes can hold (one per slot).
    pub slots: i64,
}

impl Plan {
    pub fn converged(&self) -> bool {
        self.creates.is_empty()
            && self.deletes.is_empty()
            && self.waiting == 0
            && self.deferred == 0
            && self.ready == self.desired
    }

    /// Agents left to roll: outdated or still draining, deleted now or held back.
    pub fn rolling(&self) -> bool {
        self.deferred > 0
            || self.deletes.iter().any(|(_, r)| {
                *r == DeleteReason::Outdated
                    || matches!(r, DeleteReason::NodeIneligible(s) if s == "Maintenance" || s == "Cordoned")
            })
    }
}

/// Inputs about this pool.
#[derive(Clone, Debug)]
pub struct PoolFacts<'a> {
    pub key: &'a str,
    pub paused: bool,
    pub gpus_per_agent: i64,
    /// Agents disconnect after one job (`spec.agent.ephemeral`).
    pub ephemeral: bool,
    /// `spec.strategy.rollingUpdate.maxUnavailable`.
    pub max_unavailable: MaxUnavailable,
    /// `spec.autoscaling`: run `target` agents, not one per slot (None: every slot).
    pub scale: Option<Scale>,
}

/// What autoscaling asks of a plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scale {
    /// Agents wanted on the pool's Active nodes (busy agents are kept beyond it).
    pub target: i64,
    /// Names of agent pods running a job; `None`: unknown, and no live agent is removed.
    pub busy: Option<BTreeSet<String>>,
    /// (gpunode, slot) pairs the GpuNodes record certified for the pool.
    pub certified: BTreeSet<(String, u32)>,
}

/// What becomes of one observed agent.
enum Fate {
    Keep,
    /// Involuntary or structural: deleted now, whatever the budget.
    DeleteNow(DeleteReason),
    /// Voluntary: deleted within the rollout budget.
    Disrupt(DeleteReason),
}

/// Plans one pool. `selected` are the nodes its selector matches; `agents` are all live pods
/// it owns; `desired_hash(gpunode, slot)` is the spec hash a pod built now would carry;
/// `in_backoff(gpunode, slot)` says a slot recently failed and must wait.
///
/// Voluntary disruptions (outdated agents; maintenance and cordon drains) are bounded like a
/// Deployment's rolling update: the budget base is the desired agents plus the agents still
/// on voluntarily drained nodes, an available agent is Running, Ready and not terminating,
/// and an available agent is deleted only while fewer than `maxUnavailable` agents of the
/// base are unavailable. Unavailable agents (pending, not ready) are replaced at once, as the
/// Deployment controller cleans up unhealthy old replicas first. Involuntary losses (node
/// gone or NotReady beyond its toleration, finished or failed pods) do not wait.
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
    let slot_count =
        |node: &NodeFacts| -> u32 { u32::try_from((node.gpu_count - node.foreign_gpus).max(0) / gpa).unwrap_or(0) };
    // Autoscaling: the slots of Active nodes that run agents.
    let chosen: Option<BTreeMap<String, BTreeSet<u32>>> = pool.scale.as_ref().map(|scale| {
        let mut views = Vec::new();
        for node in selected.iter().filter(|n| node_state(pool, n) == NodeState::Active) {
            let mine = by_node.get(node.gpunode.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            for slot in 0..slot_count(node) {
                let on_slot = || mine.iter().filter(|a| a.slot == Some(slot) && !a.phase.is_terminal());
                let agent = match on_slot().find(|a| !a.deleting) {
                    Some(a) => SlotAgent::Live {
                        busy: scale.busy.as_ref().is_none_or(|b| b.contains(&a.name)),
                        available: a.available(),
                    },
                    None if on_slot().next().is_some() => SlotAgent::Leaving,
                    None => SlotAgent::None,
                };
                views.push(SlotView {
                    gpunode: node.gpunode.clone(),
                    slot,
                    agent,
                    certified: scale.certified.contains(&(node.gpunode.clone(), slot)),
                    backoff: in_backoff(&node.gpunode, slot),
                });
            }
        }
        autoscale::by_node(&autoscale::choose_slots(&views, scale.target))
    });
    // Agents still on voluntarily drained nodes (terminating ones too): part of the budget base.
    let mut draining: i64 = 0;
    // Available agents in the budget base.
    let mut available: i64 = 0;
    // (index into plan.nodes, pod, reason, available) of each voluntary delete.
    let mut disruptions: Vec<(usize, String, DeleteReason, bool)> = Vec::new();

    for node in selected {
        let state = node_state(pool, node);
        let usable_gpus = (node.gpu_count - node.foreign_gpus).max(0);
        let capacity = slot_count(node);
        let mine = by_node.remove(node.gpunode.as_str()).unwrap_or_default();
        // The slots that should run an agent.
        let wanted: BTreeSet<u32> = match &chosen {
            _ if !state.keeps_desired() => BTreeSet::new(),
            None => (0..capacity).collect(),
            Some(chosen) if state == NodeState::Active => chosen.get(&node.gpunode).cloned().unwrap_or_default(),
            // Autoscaled, not Ready within its toleration: the agents it has are kept.
            Some(_) => mine
                .iter()
                .filter(|a| !a.deleting && !a.phase.is_terminal())
                .filter_map(|a| a.slot)
                .filter(|s| *s < capacity)
                .collect(),
        };
        let desired = i64::try_from(wanted.len()).unwrap_or(i64::MAX);
        if state == NodeState::Active {
            plan.slots += i64::from(capacity);
        }
        let index = plan.nodes.len();

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
            if state.drains_voluntarily() && !a.phase.is_terminal() {
                draining += 1;
            }
            if a.deleting {
                continue;
            }
            let current = |slot: u32| a.spec_hash == desired_hash(node, slot);
            let fate = match (a.slot, a.phase) {
                (_, AgentPhase::Succeeded) => Fate::DeleteNow(DeleteReason::Completed),
                (_, AgentPhase::Failed) => {
                    Fate::DeleteNow(DeleteReason::Failed(a.reason.clone().unwrap_or_else(|| "Failed".into())))
                }
                // The kubelet is not answering: a delete could not finish anyway, and the
                // node is expected back within its toleration.
                _ if state.holds() => Fate::Keep,
                // Ephemeral agents leave by themselves after their job (the pod Succeeds).
                _ if state == NodeState::Cordoned && pool.ephemeral => Fate::Keep,
                _ if state.drains_voluntarily() => Fate::Disrupt(DeleteReason::NodeIneligible(state.name().into())),
                _ if state != NodeState::Active => Fate::DeleteNow(DeleteReason::NodeIneligible(state.name().into())),
                (None, _) => Fate::DeleteNow(DeleteReason::SlotRemoved),
                (Some(slot), _) if slot >= capacity => Fate::DeleteNow(DeleteReason::SlotRemoved),
                (Some(slot), _) if !wanted.contains(&slot) => Fate::DeleteNow(DeleteReason::ScaledDown),
                (Some(slot), _) if !current(slot) => Fate::Disrupt(DeleteReason::Outdated),
                _ => Fate::Keep,
            };
            let counted = state.keeps_desired() || state.drains_voluntarily();
            match fate {
                Fate::DeleteNow(r) => plan.deletes.push((a.name.clone(), r)),
                Fate::Disrupt(r) => {
                    if a.available() {
                        available += 1;
                        ready += 1;
                    }
                    disruptions.push((index, a.name.clone(), r, a.available()));
                }
                Fate::Keep => {
                    if a.available() && counted {
                        available += 1;
                        ready += 1;
                    }
                    if state.keeps_desired() && a.slot.is_some_and(|s| wanted.contains(&s) && current(s)) {
                        plan.updated += 1;
                    }
                }
            }
        }
        if state == NodeState::Active {
            for &slot in &wanted {
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

    // The rollout budget.
    let base = plan.desired + draining;
    plan.max_unavailable = pool.max_unavailable.resolve(base);
    plan.unavailable = (base - available).max(0);
    plan.min_available = (base - plan.max_unavailable).max(0);
    let mut allowed = plan.max_unavailable - plan.unavailable;
    for (index, pod, reason, was_available) in disruptions {
        if was_available {
            if allowed <= 0 {
                plan.deferred += 1;
                continue;
            }
            allowed -= 1;
            plan.nodes[index].ready -= 1;
        }
        plan.deletes.push((pod, reason));
    }
    plan.ready = plan.nodes.iter().filter(|n| n.state.keeps_desired()).map(|n| n.ready).sum();

    // Pods on nodes that left the selection.
    for (gpunode, rest) in by_node {
        debug_assert!(!selected_names.contains(gpunode));
        for a in rest.into_iter().filter(|a| !a.deleting) {
            plan.deletes.push((a.name.clone(), DeleteReason::NodeIneligible("Deselected".into())));
        }
    }
    plan
}

fn node_state(pool: &PoolFacts<'_>, node: &NodeFacts) -> NodeState {
    if pool.paused {
        NodeState::Paused
    } else if node.owner.as_deref().is_some_and(|o| o != pool.key) {
        NodeState::Conflict(node.owner.clone().unwrap_or_default())
    } else if !node.found {
        NodeState::NodeNotFound
    } else if node.maintenance {
        NodeState::Maintenance
    } else if node.health == NodeHealth::NotReady {
        NodeState::NotReady
    } else if node.health == NodeHealth::NotReadyTolerated {
        NodeState::NotReadyTolerated
    } else if node.health == NodeHealth::Cordoned {
        NodeState::Cordoned
    } else if !node.exclusive {
        NodeState::NotExclusive
    } else if let Some((reason, message)) = &node.held {
        NodeState::Held(reason.clone(), message.clone())
    } else if let Some((reason, message)) = &node.problem {
        NodeState::Unusable(reason.clone(), message.clone())
    } else if node.per_gpu_share.is_none() {
        NodeState::Unusable("ShareUnknown".into(), "the GpuNode has no per-GPU share yet".into())
    } else {
        NodeState::Active
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
