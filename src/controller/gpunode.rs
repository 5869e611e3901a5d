//! GpuNode reconcile: inventory, per-GPU share and agent placement from the Node and its
//! pods; discovery of GpuNodes for Nodes that offer GPUs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, agent_pool_uid};
use crate::api::condition::{ConditionSet, ConditionStatus, find};
use crate::api::gpunode::conditions::{self as cond, reasons};
use crate::api::gpunode::{DISCOVERED_LABEL, NodeResources, PlacedAgent, ResourceShare, ShareBasis};
use crate::api::{FIELD_MANAGER, GpuNode, GpuNodeStatus};
use crate::error::{Error, Result};
use crate::fleet::blocked;
use crate::fleet::dra::{self, Offered};
use crate::fleet::health::{self, NodeHealth};
use crate::fleet::inventory::{self, InventoryError};
use crate::fleet::quantity::{self, MIB};
use crate::fleet::share::{self, Resources, Share, ShareChange, ShareInput};

/// GpuNodes describing the Node `node` (normally one, named like it).
pub fn gpunodes_for_node(store: &Store<GpuNode>, node: &str) -> Vec<ObjectRef<GpuNode>> {
    store.state().iter().filter(|g| g.node_name() == node).map(|g| ObjectRef::from_obj(g.as_ref())).collect()
}

fn allocatable_of(node: &Node) -> BTreeMap<String, String> {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default()
}

fn reserved_of(gn: &GpuNode) -> Resources {
    let Some(r) = &gn.spec.reserved else { return Resources::default() };
    Resources {
        cpu_millis: r.cpu.as_ref().and_then(|q| quantity::cpu_millis(&q.0).ok()).unwrap_or(0).max(0),
        memory_bytes: r.memory.as_ref().and_then(|q| quantity::whole_units(&q.0).ok()).unwrap_or(0).max(0),
    }
}

fn fmt_cpu(millis: i64) -> String {
    if millis % 1000 == 0 { (millis / 1000).to_string() } else { format!("{millis}m") }
}

fn fmt_mem(bytes: i64) -> String {
    if bytes % MIB == 0 { format!("{}Mi", bytes / MIB) } else { bytes.to_string() }
}

/// How many blocked pods the `PodsBlocked` condition names.
const BLOCKED_PODS_NAMED: usize = 5;

fn resources_of(r: Resources) -> NodeResources {
    NodeResources { cpu: fmt_cpu(r.cpu_millis), memory: fmt_mem(r.memory_bytes) }
}

/// The share in a GpuNode status, if it parses.
fn share_in(status: &GpuNodeStatus) -> Option<Share> {
    let s = status.per_gpu_share.as_ref()?;
    let memory_mib = quantity::whole_units(&s.memory).ok()? / MIB;
    Some(Share { cpu_cores: s.cpu, memory_mib })
}

/// A reconcile's findings: the status to write, an Event to publish when the Ready reason
/// changes, and when to look again (a not-Ready toleration ends).
struct Computed {
    status: GpuNodeStatus,
    event: Option<(EventType, &'static str, String)>,
    recheck_in: Option<Duration>,
}

/// Everything the GpuNode status says, computed from the caches.
fn compute_status(gn: &GpuNode, ctx: &Context, now: Timestamp) -> Computed {
    let previous = gn.status.clone().unwrap_or_default();
    let mut conditions = ConditionSet::new(&previous.conditions, gn.metadata.generation, now);
    let node_name = gn.node_name().to_string();
    let node = ctx.nodes.get(&ObjectRef::new(&node_name));
    let pods = ctx.pods.state();
    let on_node: Vec<_> = pods.iter().filter(|p| p.node_name.as_deref() == Some(node_name.as_str())).collect();

    let mut agents: Vec<PlacedAgent> = on_node
        .iter()
        .filter(|p| agent_pool_uid(p).is_some())
        .map(|p| PlacedAgent {
            pool: format!("{}/{}", p.namespace().unwrap_or_default(), p.pool_label.as_deref().unwrap_or_default()),
            pod: p.name_any(),
            phase: p.phase.clone().unwrap_or_else(|| "Pending".into()),
        })
        .collect();
    agents.sort_by(|a, b| a.pod.cmp(&b.pod));

    // Pods that target this node but cannot run because agents hold its CPU or memory.
    let blocked =
        blocked::blocked_pods(&node_name, pods.iter().filter(|p| agent_pool_uid(p).is_none()).map(|p| p.as_ref()));
    if blocked.is_empty() {
        conditions.set(cond::PODS_BLOCKED, ConditionStatus::False, reasons::NO_PODS_BLOCKED, "");
    } else {
        conditions.set(
            cond::PODS_BLOCKED,
            ConditionStatus::True,
            reasons::AGENTS_HOLD_RESOURCES,
            blocked::message(&blocked, BLOCKED_PODS_NAMED),
        );
    }

    let mut status = GpuNodeStatus {
        observed_generation: gn.metadata.generation,
        node_name: Some(node_name.clone()),
        agent_count: i64::try_from(agents.len()).unwrap_or(i64::MAX),
        agents,
        // Kept through a missing Node or a GPU resource that is briefly gone (device plugin
        // restart): the share changes only by the rules of `share::next_share`.
        per_gpu_share: previous.per_gpu_share.clone(),
        share_basis: previous.share_basis.clone(),
        ..Default::default()
    };

    let Some(node) = node else {
        // Keep the last known inventory for context; the node is gone.
        status.vendor = previous.vendor;
        status.product = previous.product;
        status.gpu_type = previous.gpu_type;
        status.architecture = previous.architecture;
        status.gpu_count = previous.gpu_count;
        status.resource_name = previous.resource_name;
        status.gpu_labels = previous.gpu_labels;
        let msg = format!("Node {node_name} does not exist");
        conditions.set(cond::NODE_FOUND, ConditionStatus::False, "NodeNotFound", msg.clone());
        conditions.set(cond::EXCLUSIVE, ConditionStatus::Unknown, "NodeNotFound", "");
        conditions.set(cond::READY, ConditionStatus::False, "NodeNotFound", msg.clone());
        conditions.kstatus(None, Some(("NodeNotFound", msg.as_str())));
        status.conditions = conditions.into_vec();
        return Computed { status, event: Some((EventType::Warning, "NodeNotFound", msg)), recheck_in: None };
    };
    conditions.set(cond::NODE_FOUND, ConditionStatus::True, "NodeFound", "");
    let labels: BTreeMap<String, String> = node.labels().clone();
    status.gpu_labels = inventory::gpu_labels(&labels);
    let allocatable_map = allocatable_of(&node);
    let allocatable = Resources {
        cpu_millis: allocatable_map.get("cpu").and_then(|q| quantity::cpu_millis(q).ok()).unwrap_or(0),
        memory_bytes: allocatable_map.get("memory").and_then(|q| quantity::whole_units(q).ok()).unwrap_or(0),
    };
    status.allocatable = Some(resources_of(allocatable));

    // GPUs through DRA: the driver's devices for the node, reported as they are; a node
    // served both ways counts its GPUs once.
    let mut dra_recheck = None;
    if let Some(caches) = ctx.dra.as_ref() {
        let current = caches.inventory(&node_name).as_ref().map(dra::node_status);
        let toleration = ctx.config.node_not_ready_toleration;
        (status.dra, dra_recheck) = dra::settle(previous.dra.clone(), current, now, toleration);
        // Who holds each device: a benchkite agent's claim, or another workload's.
        if let Some(d) = status.dra.as_mut() {
            let claims = caches.claims.state();
            dra::mark_allocations(d, claims.iter().map(|c| c.as_ref()));
        }
    }
    let dra_inv = status.dra.as_ref().map(dra::inventory_from_status);
    let detected = inventory::detect(&labels, &allocatable_map, gn.spec.resource_name.as_deref());
    let detected = match (detected, dra_inv.as_ref().filter(|d| d.whole_count() > 0)) {
        (Ok(mut inv), d) => {
            let (count, offered) =
                dra::gpu_count(Some(inv.gpu_count), d).unwrap_or((inv.gpu_count, Offered::DevicePlugin));
            status.plugin_gpus = Some(inv.gpu_count);
            inv.gpu_count = count;
            Ok((inv, offered))
        }
        (Err(InventoryError::NoGpuResource), Some(d)) if gn.spec.resource_name.is_none() => {
            Ok((dra::gpu_inventory(d), Offered::Dra))
        }
        (Err(e), _) => Err(e),
    };
    let (inv, offered) = match detected {
        Ok(found) => found,
        Err(e) => {
            let reason = match e {
                InventoryError::NoGpuResource => "NoGpuResource",
                InventoryError::Ambiguous(_) => "AmbiguousGpuResource",
                InventoryError::NotOffered(..) => "ResourceNotOffered",
            };
            conditions.set(cond::EXCLUSIVE, ConditionStatus::Unknown, reason, "");
            conditions.set(cond::READY, ConditionStatus::False, reason, e.to_string());
            conditions.kstatus(None, Some((reason, e.to_string().as_str())));
            status.conditions = conditions.into_vec();
            return Computed {
                status,
                event: Some((EventType::Warning, "GpuInventory", e.to_string())),
                recheck_in: None,
            };
        }
    };
    status.vendor = Some(inv.vendor.as_str().to_string());
    status.product = inv.product.clone();
    status.gpu_type = inv.gpu_type.clone();
    status.family = inv.family.clone();
    status.architecture = inv.architecture.clone();
    status.resource_name = (offered != Offered::Dra).then(|| inv.resource_name.clone());
    status.offered_through = Some(offered.as_str().to_string());
    status.gpu_count = inv.gpu_count;
    status.gpu_memory_mib = inv.memory_mib;
    status.driver_version = inv.driver_version.clone();
    // Every documented signal of a shared or partitioned GPU (labels, resources, the
    // product's name, allocatable above the GPU count); the inventory's own check is a subset.
    // An MPS control daemon pod that runs (or is about to) on the node shares its GPUs.
    let mps_daemon = on_node.iter().any(|p| p.mps_daemon && !p.terminal());
    let exclusivity = crate::fleet::exclusive::exclusivity(&node, mps_daemon);
    let shared = inv.shared || !exclusivity.is_exclusive();
    status.shared = shared;

    let other = on_node
        .iter()
        .filter(|p| agent_pool_uid(p).is_none() && share::holds_resources(p))
        .map(|p| p.requests)
        .fold(Resources::default(), Resources::saturating_add);
    status.other_requests = Some(resources_of(other));

    let input = ShareInput {
        allocatable,
        other_requests: other,
        reserved: reserved_of(gn),
        headroom: ctx.config.node_headroom,
        // Every physical GPU gets its slice, also those the DRA driver publishes as MIG
        // instances or shareable devices (no agent's, but their workloads need CPU too).
        gpus: inv.gpu_count.max(dra_inv.as_ref().map_or(0, dra::DraInventory::physical_count)),
    };
    let headroom = resources_of(ctx.config.node_headroom);
    let spec_changed =
        previous.share_basis.as_ref().is_some_and(|b| b.generation != gn.metadata.generation || b.headroom != headroom);
    let (share, change) = share::next_share(
        share_in(&previous),
        share::capacity(input),
        share::per_gpu_share(input, ctx.config.min_agent_memory_mib),
        spec_changed,
    );
    let basis = ShareBasis {
        generation: gn.metadata.generation,
        headroom,
        allocatable: status.allocatable.clone(),
        other_requests: status.other_requests.clone(),
        gpus: input.gpus,
    };
    status.per_gpu_share = share.as_ref().ok().map(|s| ResourceShare { cpu: s.cpu_cores, memory: s.memory_quantity() });
    status.share_basis = match (&share, change) {
        (Err(_), _) => None,
        // A share from before bases were recorded is adopted as sized now.
        (Ok(_), ShareChange::Kept) => previous.share_basis.clone().or(Some(basis)),
        (Ok(_), _) => Some(basis),
    };
    if change != ShareChange::Kept && status.per_gpu_share != previous.per_gpu_share {
        tracing::info!(gpunode = %gn.name_any(), ?change, from = ?previous.per_gpu_share, to = ?status.per_gpu_share,
            "per-GPU share re-sized");
    }

    let not_exclusive = match &exclusivity {
        crate::fleet::exclusive::Exclusivity::Shared { signal, message } => Some((signal.reason(), message.clone())),
        crate::fleet::exclusive::Exclusivity::Exclusive if inv.shared => Some((
            "SharedGpus",
            format!(
                "GPUs are shared (time-slicing/MPS{}): disable sharing on benchmark nodes",
                inv.replicas.map(|r| format!(", {r} replicas")).unwrap_or_default()
            ),
        )),
        crate::fleet::exclusive::Exclusivity::Exclusive => None,
    };
    match &not_exclusive {
        Some((reason, message)) => conditions.set(cond::EXCLUSIVE, ConditionStatus::False, reason, message.clone()),
        None => conditions.set(cond::EXCLUSIVE, ConditionStatus::True, "Exclusive", ""),
    };

    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let toleration = ctx.config.node_not_ready_toleration;
    let mut recheck_in = dra_recheck;
    let (ready, reason, message, event): (bool, &str, String, Option<(EventType, &'static str, String)>) = match (
        gn.spec.maintenance,
        health::node_health(&node, now, toleration),
    ) {
        (true, _) => (
            false,
            "Maintenance",
            "agents are drained; set spec.maintenance=false to return the node to service".into(),
            None,
        ),
        (false, NodeHealth::NotReady { since }) => (
            false,
            reasons::NODE_NOT_READY,
            format!(
                "Node {node_name} has not been Ready since {since}, longer than the toleration of {}s: agents drain",
                toleration.as_secs()
            ),
            None,
        ),
        (false, NodeHealth::NotReadyTolerated { since, until }) => {
            let until_in = Duration::try_from(until.duration_since(now)).unwrap_or_default();
            recheck_in = Some(recheck_in.map_or(until_in, |r: Duration| r.min(until_in)));
            if unschedulable {
                (
                    false,
                    reasons::NODE_CORDONED,
                    format!("Node {node_name} is cordoned (unschedulable) and not Ready since {since}"),
                    None,
                )
            } else {
                (
                    false,
                    reasons::NODE_NOT_READY_TOLERATED,
                    format!(
                        "Node {node_name} is not Ready since {since}: its agents are kept until {until} \
                         (--node-not-ready-toleration-seconds={}) and no new ones start; after that they drain",
                        toleration.as_secs()
                    ),
                    None,
                )
            }
        }
        (false, NodeHealth::Ready) if unschedulable => {
            (false, reasons::NODE_CORDONED, format!("Node {node_name} is cordoned (unschedulable)"), None)
        }
        (false, NodeHealth::Ready) if shared => {
            let why = not_exclusive.as_ref().map_or("GPUs are shared", |(_, m)| m.as_str());
            let m = format!("not exclusive, agents would not be isolated: {why}");
            (false, "NotExclusive", m.clone(), Some((EventType::Warning, "NotExclusive", m)))
        }
        (false, NodeHealth::Ready) => match &share {
            Err(problem) => {
                let m = problem.to_string();
                (false, "ShareTooSmall", m.clone(), Some((EventType::Warning, "ShareTooSmall", m)))
            }
            Ok(s) => (
                true,
                "Ready",
                format!(
                    "{} × {} ({}), {} CPU and {} MiB per GPU",
                    inv.gpu_count,
                    inv.product.as_deref().unwrap_or("GPU"),
                    offered_how(offered, &inv.resource_name, status.dra.as_ref()),
                    s.cpu_cores,
                    s.memory_mib
                ),
                None,
            ),
        },
    };
    // kstatus: a GpuNode only reflects its Node; Stalled when the node's setup needs the admin.
    let stalled = matches!(reason, "NotExclusive" | "ShareTooSmall");
    conditions.kstatus(None, stalled.then_some((reason, message.as_str())));
    conditions.set(cond::READY, ConditionStatus::from_bool(ready), reason, message);
    status.conditions = conditions.into_vec();
    Computed { status, event, recheck_in }
}

/// How the GPUs are offered, for the Ready message.
fn offered_how(offered: Offered, resource: &str, dra: Option<&crate::api::gpunode::GpuNodeDra>) -> String {
    let driver = dra.map(|d| d.driver.as_str()).unwrap_or_default();
    match offered {
        Offered::DevicePlugin => resource.to_string(),
        Offered::Dra => format!("DRA driver {driver}"),
        Offered::Both => format!("{resource} and DRA driver {driver}, counted once"),
    }
}

/// The Warning a node served both ways gets when it starts to be (one per episode).
fn offered_twice(previous: Option<&GpuNodeStatus>, status: &GpuNodeStatus) -> Option<String> {
    let both = Some(Offered::Both.as_str());
    if status.offered_through.as_deref() != both || previous.and_then(|p| p.offered_through.as_deref()) == both {
        return None;
    }
    let dra = status.dra.as_ref()?;
    Some(format!(
        "the node offers its GPUs both through the device plugin ({}) and through DRA driver {} ({} whole GPUs): \
         they are the same GPUs, counted once ({}). The scheduler counts the two apart (unless the DeviceClass maps \
         the extended resource), so a pod of each kind can be given the same GPU: serve the node one way, or keep \
         every GPU workload on it in benchkite pools of one kind",
        status.resource_name.as_deref().unwrap_or("?"),
        dra.driver,
        dra.whole_gpus,
        status.gpu_count
    ))
}

pub async fn reconcile(gn: Arc<GpuNode>, ctx: Arc<Context>) -> Result<Action> {
    if gn.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = gn.name_any();
    let api: Api<GpuNode> = Api::all(ctx.client.clone());
    let now = Timestamp::now();
    let Computed { mut status, event, recheck_in } = compute_status(&gn, &ctx, now);

    // A discovered GpuNode whose Node stayed away for the grace period goes away too.
    let node_missing = find(&status.conditions, cond::NODE_FOUND).filter(|c| c.status == "False");
    if let Some(missing) = node_missing
        && gn.is_discovered()
    {
        let gone_for = now.duration_since(missing.last_transition_time.0);
        let grace = ctx.config.discovery_grace;
        let gone_for = Duration::try_from(gone_for).unwrap_or_default();
        if gone_for >= grace {
            publish(
                &ctx,
                gn.as_ref(),
                EventType::Normal,
                "Deleted",
                "Removed",
                format!("Node {} has been gone for {}s", gn.node_name(), gone_for.as_secs()),
            )
            .await;
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => return Ok(Action::await_change()),
                Err(e) if crate::error::is_not_found(&e) => return Ok(Action::await_change()),
                Err(e) => return Err(Error::kube(format!("deleting GpuNode {name}"))(e)),
            }
        }
    }

    // Mirror the node's GPU labels onto the GpuNode so pools can select by product/memory.
    let mut want_labels = status.gpu_labels.clone();
    if gn.is_discovered() {
        want_labels.insert(DISCOVERED_LABEL.into(), "true".into());
    }
    let have: BTreeMap<String, String> = gn
        .labels()
        .iter()
        .filter(|(k, _)| inventory::is_mirrored_label(k) || k.as_str() == DISCOVERED_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if have != want_labels && find(&status.conditions, cond::NODE_FOUND).is_some_and(|c| c.status == "True") {
        // `spec: {}` as in discovery's apply (same field manager): an apply that left `spec`
        // out would release it, and the API server refuses a GpuNode without one.
        let patch = json!({
            "apiVersion": "benchkite.dev/v1alpha1",
            "kind": "GpuNode",
            "metadata": { "name": name, "labels": want_labels },
            "spec": {},
        });
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube(format!("labelling GpuNode {name}")))?;
    }

    let previous_ready = gn.status.as_ref().and_then(|s| find(&s.conditions, cond::READY)).map(|c| c.reason.clone());
    let new_ready = find(&status.conditions, cond::READY).map(|c| c.reason.clone());
    // `status.certification` belongs to the certification manager (its own field manager):
    // compared as it is, never applied from here (applying it would take its ownership).
    status.certification = gn.status.as_ref().and_then(|s| s.certification.clone());
    if gn.status.as_ref() != Some(&status) {
        let mine = GpuNodeStatus { certification: None, ..status.clone() };
        let patch = json!({
            "apiVersion": "benchkite.dev/v1alpha1",
            "kind": "GpuNode",
            "status": mine,
        });
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube(format!("writing status of GpuNode {name}")))?;
        tracing::debug!(gpunode = %name, agents = status.agent_count, "GpuNode status written");
    }
    if previous_ready != new_ready
        && let Some((type_, reason, note)) = event
    {
        publish(&ctx, gn.as_ref(), type_, reason, "Reconcile", note).await;
    }
    if let Some(note) = offered_twice(gn.status.as_ref(), &status) {
        publish(&ctx, gn.as_ref(), EventType::Warning, "GpusOfferedTwice", "Reconcile", note).await;
    }
    if let Some(note) = newly_blocked(gn.status.as_ref(), &status) {
        publish(&ctx, gn.as_ref(), EventType::Warning, "PodsBlocked", "Reconcile", note).await;
    }
    let requeue =
        if node_missing.is_some() && gn.is_discovered() { Duration::from_secs(30) } else { Duration::from_secs(60) };
    // Look again when a not-Ready toleration ends (a second late, so it has ended).
    let requeue = recheck_in.map_or(requeue, |r| requeue.min(r + Duration::from_secs(1)));
    Ok(Action::requeue(requeue))
}

/// The `PodsBlocked` message when the condition turned True with this status (one Warning
/// Event per episode, not one per reconcile or restart).
fn newly_blocked(previous: Option<&GpuNodeStatus>, status: &GpuNodeStatus) -> Option<String> {
    let was = previous.and_then(|p| find(&p.conditions, cond::PODS_BLOCKED)).is_some_and(|c| c.status == "True");
    let now = find(&status.conditions, cond::PODS_BLOCKED).filter(|c| c.status == "True")?;
    (!was).then(|| now.message.clone())
}

pub fn error_policy(gn: Arc<GpuNode>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(gpunode = %gn.name_any(), error = %err, "GpuNode reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Creates a GpuNode for a Node that offers GPUs, unless one already describes it.
pub async fn discover(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let name = node.name_any();
    let through_dra = ctx.dra.as_ref().and_then(|d| d.inventory(&name)).is_some_and(|i| i.whole_count() > 0);
    if !inventory::offers_gpus(&allocatable_of(&node)) && !through_dra {
        return Ok(Action::await_change());
    }
    let exists =
        ctx.gpunodes.get(&ObjectRef::new(&name)).is_some() || !gpunodes_for_node(&ctx.gpunodes, &name).is_empty();
    if exists {
        return Ok(Action::await_change());
    }
    let api: Api<GpuNode> = Api::all(ctx.client.clone());
    // A user-created GpuNode the cache has not seen yet must not be taken over.
    if api.get_opt(&name).await.map_err(Error::kube(format!("looking up GpuNode {name}")))?.is_some() {
        return Ok(Action::await_change());
    }
    let mut labels = inventory::gpu_labels(node.labels());
    labels.insert(DISCOVERED_LABEL.into(), "true".into());
    // Apply only metadata and an empty spec: the controller must not own spec fields that
    // admins set (maintenance, reserved).
    let body = json!({
        "apiVersion": "benchkite.dev/v1alpha1",
        "kind": "GpuNode",
        "metadata": { "name": name, "labels": labels },
        "spec": {},
    });
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&body))
        .await
        .map_err(Error::kube(format!("creating GpuNode for Node {name}")))?;
    tracing::info!(node = %name, "discovered GPU node");
    Ok(Action::await_change())
}

pub fn discover_error_policy(node: Arc<Node>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %err, "GPU node discovery failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Publishes an Event, logging (not failing) when the API refuses it.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!(error = %e, reason, "publishing event failed");
    }
}

#[cfg(test)]
#[path = "gpunode_tests.rs"]
mod tests;
