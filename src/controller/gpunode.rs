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

use super::{Context, agent_pool_uid, cache, pod_terminal};
use crate::api::condition::{ConditionSet, ConditionStatus, find};
use crate::api::gpunode::{DISCOVERED_LABEL, NodeResources, PlacedAgent, ResourceShare, conditions as cond};
use crate::api::{FIELD_MANAGER, GpuNode, GpuNodeStatus};
use crate::error::{Error, Result};
use crate::fleet::inventory::{self, InventoryError};
use crate::fleet::pod::LABEL_POOL;
use crate::fleet::quantity::{self, MIB};
use crate::fleet::share::{self, Resources, ShareInput};

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

/// Everything the GpuNode status says, computed from the caches.
fn compute_status(
    gn: &GpuNode,
    ctx: &Context,
    now: Timestamp,
) -> (GpuNodeStatus, Option<(EventType, &'static str, String)>) {
    let previous = gn.status.clone().unwrap_or_default();
    let mut conditions = ConditionSet::new(&previous.conditions, gn.metadata.generation, now);
    let node_name = gn.node_name().to_string();
    let node = ctx.nodes.get(&ObjectRef::new(&node_name));
    let pods = ctx.pods.state();
    let on_node: Vec<_> = pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str()))
        .collect();

    let mut agents: Vec<PlacedAgent> = on_node
        .iter()
        .filter(|p| agent_pool_uid(p).is_some())
        .map(|p| PlacedAgent {
            pool: format!(
                "{}/{}",
                p.namespace().unwrap_or_default(),
                p.labels().get(LABEL_POOL).cloned().unwrap_or_default()
            ),
            pod: p.name_any(),
            phase: p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into()),
        })
        .collect();
    agents.sort_by(|a, b| a.pod.cmp(&b.pod));

    let mut status = GpuNodeStatus {
        observed_generation: gn.metadata.generation,
        node_name: Some(node_name.clone()),
        agent_count: i64::try_from(agents.len()).unwrap_or(i64::MAX),
        agents,
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
        return (status, Some((EventType::Warning, "NodeNotFound", msg)));
    };
    conditions.set(cond::NODE_FOUND, ConditionStatus::True, "NodeFound", "");
    let labels: BTreeMap<String, String> = node.labels().clone();
    status.gpu_labels = inventory::gpu_labels(&labels);
    let allocatable_map = allocatable_of(&node);
    let allocatable = Resources {
        cpu_millis: allocatable_map.get("cpu").and_then(|q| quantity::cpu_millis(q).ok()).unwrap_or(0),
        memory_bytes: allocatable_map.get("memory").and_then(|q| quantity::whole_units(q).ok()).unwrap_or(0),
    };
    status.allocatable =
        Some(NodeResources { cpu: fmt_cpu(allocatable.cpu_millis), memory: fmt_mem(allocatable.memory_bytes) });

    let inv = match inventory::detect(&labels, &allocatable_map, gn.spec.resource_name.as_deref()) {
        Ok(inv) => inv,
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
            return (status, Some((EventType::Warning, "GpuInventory", e.to_string())));
        }
    };
    status.vendor = Some(inv.vendor.as_str().to_string());
    status.product = inv.product.clone();
    status.gpu_type = inv.gpu_type.clone();
    status.family = inv.family.clone();
    status.architecture = inv.architecture.clone();
    status.resource_name = Some(inv.resource_name.clone());
    status.gpu_count = inv.gpu_count;
    status.gpu_memory_mib = inv.memory_mib;
    status.driver_version = inv.driver_version.clone();
    status.shared = inv.shared;

    let other = on_node
        .iter()
        .filter(|p| agent_pool_uid(p).is_none() && !pod_terminal(p))
        .filter_map(|p| p.spec.as_ref())
        .map(share::pod_requests)
        .fold(Resources::default(), Resources::saturating_add);
    status.other_requests = Some(NodeResources { cpu: fmt_cpu(other.cpu_millis), memory: fmt_mem(other.memory_bytes) });

    let share = share::per_gpu_share(
        ShareInput { allocatable, other_requests: other, reserved: reserved_of(gn), gpus: inv.gpu_count },
        ctx.config.min_agent_memory_mib,
    );
    if let Ok(s) = &share {
        status.per_gpu_share = Some(ResourceShare { cpu: s.cpu_cores, memory: s.memory_quantity() });
    }

    if inv.shared {
        conditions.set(
            cond::EXCLUSIVE,
            ConditionStatus::False,
            "SharedGpus",
            format!(
                "GPUs are shared (time-slicing/MPS{}): disable sharing on benchmark nodes",
                inv.replicas.map(|r| format!(", {r} replicas")).unwrap_or_default()
            ),
        );
    } else {
        conditions.set(cond::EXCLUSIVE, ConditionStatus::True, "Exclusive", "");
    }

    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let (ready, reason, message, event): (bool, &str, String, Option<(EventType, &'static str, String)>) = if gn
        .spec
        .maintenance
    {
        (
            false,
            "Maintenance",
            "agents are drained; set spec.maintenance=false to return the node to service".into(),
            None,
        )
    } else if !cache::node_ready(&node) {
        (false, "NodeNotReady", format!("Node {node_name} is not Ready"), None)
    } else if unschedulable {
        (false, "NodeCordoned", format!("Node {node_name} is cordoned (unschedulable)"), None)
    } else if inv.shared {
        let m = "GPUs are shared (time-slicing/MPS): agents would not be isolated".to_string();
        (false, "NotExclusive", m.clone(), Some((EventType::Warning, "NotExclusive", m)))
    } else if let Err(problem) = &share {
        let m = problem.to_string();
        (false, "ShareTooSmall", m.clone(), Some((EventType::Warning, "ShareTooSmall", m)))
    } else {
        let s =
            share.as_ref().map(|s| format!("{} CPU and {} MiB per GPU", s.cpu_cores, s.memory_mib)).unwrap_or_default();
        (
            true,
            "Ready",
            format!("{} × {} ({}), {s}", inv.gpu_count, inv.product.as_deref().unwrap_or("GPU"), inv.resource_name),
            None,
        )
    };
    // kstatus: a GpuNode only reflects its Node; Stalled when the node's setup needs the admin.
    let stalled = matches!(reason, "NotExclusive" | "ShareTooSmall");
    conditions.kstatus(None, stalled.then_some((reason, message.as_str())));
    conditions.set(cond::READY, ConditionStatus::from_bool(ready), reason, message);
    status.conditions = conditions.into_vec();
    (status, event)
}

pub async fn reconcile(gn: Arc<GpuNode>, ctx: Arc<Context>) -> Result<Action> {
    if gn.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = gn.name_any();
    let api: Api<GpuNode> = Api::all(ctx.client.clone());
    let now = Timestamp::now();
    let (status, event) = compute_status(&gn, &ctx, now);

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
        let patch = json!({
            "apiVersion": "benchkite.dev/v1alpha1",
            "kind": "GpuNode",
            "metadata": { "name": name, "labels": want_labels },
        });
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube(format!("labelling GpuNode {name}")))?;
    }

    let previous_ready = gn.status.as_ref().and_then(|s| find(&s.conditions, cond::READY)).map(|c| c.reason.clone());
    let new_ready = find(&status.conditions, cond::READY).map(|c| c.reason.clone());
    if gn.status.as_ref() != Some(&status) {
        let patch = json!({
            "apiVersion": "benchkite.dev/v1alpha1",
            "kind": "GpuNode",
            "status": status,
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
    let requeue =
        if node_missing.is_some() && gn.is_discovered() { Duration::from_secs(30) } else { Duration::from_secs(60) };
    Ok(Action::requeue(requeue))
}

pub fn error_policy(gn: Arc<GpuNode>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(gpunode = %gn.name_any(), error = %err, "GpuNode reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Creates a GpuNode for a Node that offers GPUs, unless one already describes it.
pub async fn discover(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let name = node.name_any();
    if !inventory::offers_gpus(&allocatable_of(&node)) {
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
