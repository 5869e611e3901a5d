//! What the AgentPool controller reads from its caches: facts about selected GpuNodes and
//! the pool's agent pods, in the planner's terms.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::super::{agent_pool_uid, pod_terminal};
use crate::api::AgentPool;
use crate::api::GpuNode;
use crate::api::GpuNodeStatus;
use crate::api::condition::find;
use crate::api::gpunode::conditions as gncond;
use crate::fleet::cached_pod::CachedPod;
use crate::fleet::dra::{self, GpuRequirements, Offered};
use crate::fleet::inventory::Vendor;
use crate::fleet::plan::{AgentPhase, ExistingAgent, NodeFacts, NodeHealth};
use crate::fleet::pod::AgentSlot;
use crate::fleet::share::Share;

/// Reasons of the GpuNode `Ready` condition about the Node's health (the GpuNode
/// controller's contract).
pub mod reason {
    /// NotReady beyond the toleration: agents drain.
    pub const NODE_NOT_READY: &str = "NodeNotReady";
    /// NotReady within the toleration: agents are kept, none created.
    pub const NODE_NOT_READY_TOLERATED: &str = "NodeNotReadyTolerated";
    /// Cordoned (unschedulable): no new agents; running ones finish.
    pub const NODE_CORDONED: &str = "NodeCordoned";
    /// Not a GpuNode reason: its controller has not written a `Ready` condition yet (a pool
    /// created with its nodes). The node waits; nothing about it is reported as a fault.
    pub const GPUNODE_PENDING: &str = "GpuNodePending";
}

/// The Node's health from the reason of the GpuNode's `Ready` condition.
pub(super) fn node_health(ready_reason: &str) -> NodeHealth {
    match ready_reason {
        reason::NODE_NOT_READY => NodeHealth::NotReady,
        reason::NODE_NOT_READY_TOLERATED => NodeHealth::NotReadyTolerated,
        reason::NODE_CORDONED => NodeHealth::Cordoned,
        _ => NodeHealth::Ready,
    }
}

pub(super) fn pool_key(p: &AgentPool) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

pub(super) fn created(p: &AgentPool) -> String {
    p.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
}

fn share_of(gn: &GpuNode) -> Option<Share> {
    let s = gn.status.as_ref()?.per_gpu_share.as_ref()?;
    let memory_mib = s.memory.strip_suffix("Mi")?.parse().ok()?;
    Some(Share { cpu_cores: s.cpu, memory_mib })
}

/// What a pool needs to know about one selected GpuNode, from its status and the pods on it.
/// How a pool asks for its GPUs.
#[derive(Clone, Copy, Debug)]
pub(super) enum GpuRequest<'a> {
    /// The device plugin's extended resource (the GpuNode's `resourceName`).
    DevicePlugin,
    /// A DRA claim for GPUs meeting these requirements.
    Dra(&'a GpuRequirements),
}

/// The GPUs of a node a pool may use by the way it asks for them, and what is wrong when
/// that is none: `(gpus, problem)`.
fn gpus_for(status: &GpuNodeStatus, request: GpuRequest<'_>) -> (i64, Option<(String, String)>) {
    let dra_only = status.offered_through.as_deref() == Some(Offered::Dra.as_str());
    match request {
        GpuRequest::DevicePlugin if dra_only => (
            0,
            Some((
                "NoDevicePluginResource".into(),
                format!(
                    "the node offers its GPUs only through DRA driver {}: give the pool spec.dra",
                    status.dra.as_ref().map(|d| d.driver.as_str()).unwrap_or_default()
                ),
            )),
        ),
        GpuRequest::DevicePlugin => (status.plugin_gpus.unwrap_or(status.gpu_count), None),
        GpuRequest::Dra(req) => match &status.dra {
            None => (
                0,
                Some((
                    "NoDraDevices".into(),
                    "the DRA driver publishes no devices for the node (its GPUs are offered through the device plugin \
                     only): remove spec.dra or select nodes the driver serves"
                        .into(),
                )),
            ),
            Some(dra) => match dra::eligible_count(dra, req) {
                (n, _) if n > 0 => (n, None),
                (_, why) => (0, Some(("NoEligibleDevices".into(), why.unwrap_or_default()))),
            },
        },
    }
}

pub(super) fn node_facts(
    gn: &GpuNode,
    owner: Option<String>,
    pods_on_node: &[Arc<CachedPod>],
    pool_uid: &str,
    request: GpuRequest<'_>,
) -> NodeFacts {
    let status = gn.status.clone().unwrap_or_default();
    let ready = find(&status.conditions, gncond::READY);
    let reason = ready.map(|c| c.reason.as_str()).unwrap_or(reason::GPUNODE_PENDING);
    let resource = status.resource_name.clone().unwrap_or_default();
    let mut foreign_gpus = 0;
    let mut other_pool_gpus = 0;
    for pod in pods_on_node.iter().filter(|p| !pod_terminal(p)) {
        match agent_pool_uid(pod) {
            Some(uid) if uid == pool_uid => {}
            Some(_) => {
                other_pool_gpus += pod
                    .gpus_annotation
                    .as_deref()
                    .and_then(|g| g.parse::<i64>().ok())
                    .unwrap_or_else(|| pod.extended_requests(&resource));
            }
            None => foreign_gpus += pod.extended_requests(&resource),
        }
    }
    let usable = ready.is_some_and(|c| c.status == "True");
    let (gpu_count, request_problem) = gpus_for(&status, request);
    // Devices other workloads' claims hold: the scheduler gives them to no DRA pod, and on a
    // node served both ways the device plugin does not know of them.
    let any_gpu = GpuRequirements::default();
    let req = match request {
        GpuRequest::Dra(req) => req,
        GpuRequest::DevicePlugin => &any_gpu,
    };
    if let Some(dra) = status.dra.as_ref() {
        foreign_gpus += dra::foreign_held(dra, req);
    }
    let both = status.offered_through.as_deref() == Some(Offered::Both.as_str());
    // Served both ways, the scheduler cannot tell which GPUs the other kind's pods hold: while
    // any agent of another pool is on the node (a hand-over, terminating agents included),
    // this pool starts none there.
    if both && other_pool_gpus > 0 {
        other_pool_gpus = other_pool_gpus.max(gpu_count);
    }
    // The driver's devices are being republished: keep the agents, start none.
    let held = match (request, status.dra.as_ref().and_then(|d| d.unsettled_since.as_deref())) {
        (GpuRequest::Dra(_), Some(since)) => Some((
            "DevicesUnsettled".to_string(),
            format!(
                "the DRA driver's devices for the node have been missing or incomplete since {since} (a kubelet or \
                 driver restart republishes them): agents are kept, none are created"
            ),
        )),
        _ => None,
    };
    NodeFacts {
        gpunode: gn.name_any(),
        // A GpuNode its controller has not reported on yet is unknown, not missing: only a
        // NodeFound=False says the Node is gone.
        found: find(&status.conditions, gncond::NODE_FOUND).is_none_or(|c| c.status != "False"),
        health: node_health(reason),
        maintenance: gn.spec.maintenance,
        exclusive: !status.shared,
        problem: match (usable, reason) {
            (true, _) if request_problem.is_some() => request_problem,
            (true, _)
            | (
                false,
                reason::NODE_NOT_READY
                | reason::NODE_NOT_READY_TOLERATED
                | reason::NODE_CORDONED
                | "Maintenance"
                | "NotExclusive"
                | "NodeNotFound",
            ) => None,
            (false, r) => Some((
                r.to_string(),
                ready.map(|c| c.message.clone()).unwrap_or_else(|| "the GpuNode is not ready yet".into()),
            )),
        },
        gpu_count,
        held,
        per_gpu_share: share_of(gn),
        foreign_gpus,
        other_pool_gpus,
        owner,
    }
}

pub(super) fn existing_agent(pod: &CachedPod) -> ExistingAgent {
    ExistingAgent {
        name: pod.name_any(),
        gpunode: pod.gpunode_annotation.clone().unwrap_or_default(),
        slot: pod.slot_label.as_deref().and_then(|s| s.parse().ok()),
        phase: AgentPhase::parse(pod.phase.as_deref()),
        ready: pod.ready,
        deleting: pod.metadata.deletion_timestamp.is_some(),
        spec_hash: pod.spec_hash.clone(),
        gpus: pod.gpus_annotation.as_deref().and_then(|g| g.parse().ok()).unwrap_or(0),
        reason: pod.reason.clone(),
        message: pod.message.clone(),
    }
}

pub(super) fn slot_for<'a>(
    pool: &'a AgentPool,
    gn: &'a GpuNode,
    node: &'a Node,
    slot: u32,
    share: Share,
    dra_template: Option<&'a str>,
) -> AgentSlot<'a> {
    let status = gn.status.as_ref();
    AgentSlot {
        pool,
        gpunode: gn.metadata.name.as_deref().unwrap_or_default(),
        node_name: gn.node_name(),
        slot,
        vendor: if status.and_then(|s| s.vendor.as_deref()) == Some("amd") { Vendor::Amd } else { Vendor::Nvidia },
        gpu_type: status.and_then(|s| s.gpu_type.as_deref()),
        architecture: status.and_then(|s| s.architecture.as_deref()),
        resource_name: status.and_then(|s| s.resource_name.as_deref()).unwrap_or("nvidia.com/gpu"),
        gpus: i64::from(pool.spec.gpus_per_agent.max(1)),
        resources: share.times(i64::from(pool.spec.gpus_per_agent.max(1))),
        node_taints: node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]),
        certified_epoch: certified_epoch(pool, gn, slot),
        dra_template,
    }
}

/// (gpunode, slot) of every slot the GpuNodes record certified for `pool` (none without
/// `spec.certification`): autoscaling runs agents there first.
pub(super) fn certified_slots(
    pool: &AgentPool,
    gpunodes: &[Arc<GpuNode>],
) -> std::collections::BTreeSet<(String, u32)> {
    gpunodes
        .iter()
        .flat_map(|gn| {
            let slots = gn.status.as_ref().and_then(|s| s.certification.as_ref()).map(|c| c.slots.len()).unwrap_or(0);
            (0..slots).filter_map(move |i| {
                let s = gn.status.as_ref()?.certification.as_ref()?.slots.get(i)?;
                let slot: u32 = s.slot.parse().ok()?;
                certified_epoch(pool, gn, slot).map(|_| (gn.name_any(), slot))
            })
        })
        .collect()
}

/// The slot's epoch when its GpuNode records it certified for `pool`.
fn certified_epoch<'a>(pool: &AgentPool, gn: &'a GpuNode, slot: u32) -> Option<&'a str> {
    pool.spec.certification.as_ref()?;
    let key = format!(
        "{}/{}",
        pool.metadata.namespace.as_deref().unwrap_or_default(),
        pool.metadata.name.as_deref().unwrap_or_default()
    );
    let slot = slot.to_string();
    gn.status
        .as_ref()?
        .certification
        .as_ref()?
        .slots
        .iter()
        .find(|s| s.slot == slot && s.pool == key && s.state == crate::api::certification::states::CERTIFIED)?
        .epoch
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpunode(reason: &str) -> GpuNode {
        let gn: Result<GpuNode, _> = serde_json::from_value(serde_json::json!({
            "apiVersion": "benchkite.dev/v1alpha1",
            "kind": "GpuNode",
            "metadata": {"name": "gpu-a"},
            "spec": {"nodeName": "gpu-a"},
            "status": {
                "gpuCount": 8,
                "perGpuShare": {"cpu": 16, "memory": "131072Mi"},
                "conditions": [
                    {"type": "Ready", "status": if reason == "Ready" { "True" } else { "False" }, "reason": reason,
                     "message": format!("{reason} message"), "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "NodeFound", "status": "True", "reason": "NodeFound", "message": "",
                     "lastTransitionTime": "2026-01-01T00:00:00Z"},
                ],
            },
        }));
        gn.unwrap_or_else(|e| panic!("test GpuNode: {e}"))
    }

    #[test]
    fn the_gpunode_ready_reason_decides_the_node_health() {
        for (reason, health) in [
            ("Ready", NodeHealth::Ready),
            ("NodeNotReady", NodeHealth::NotReady),
            ("NodeNotReadyTolerated", NodeHealth::NotReadyTolerated),
            ("NodeCordoned", NodeHealth::Cordoned),
        ] {
            let facts = node_facts(&gpunode(reason), None, &[], "uid", GpuRequest::DevicePlugin);
            assert_eq!(facts.health, health, "{reason}");
            assert_eq!(facts.problem, None, "{reason} is a node state, not a problem of the GpuNode");
            assert!(facts.found);
        }
        let facts = node_facts(&gpunode("ShareTooSmall"), None, &[], "uid", GpuRequest::DevicePlugin);
        assert_eq!(facts.health, NodeHealth::Ready);
        assert_eq!(facts.problem, Some(("ShareTooSmall".into(), "ShareTooSmall message".into())));
    }

    #[test]
    fn a_gpunode_not_reported_on_yet_is_pending_not_missing() {
        let mut fresh = gpunode("Ready");
        fresh.status = None;
        let facts = node_facts(&fresh, None, &[], "uid", GpuRequest::DevicePlugin);
        assert!(facts.found, "no NodeFound condition yet says nothing about the Node");
        assert_eq!(facts.problem.map(|(r, _)| r), Some(reason::GPUNODE_PENDING.to_string()));

        let mut gone = gpunode("NodeNotFound");
        if let Some(s) = gone.status.as_mut() {
            for c in &mut s.conditions {
                if c.type_ == "NodeFound" {
                    c.status = "False".into();
                }
            }
        }
        assert!(
            !node_facts(&gone, None, &[], "uid", GpuRequest::DevicePlugin).found,
            "NodeFound=False is a missing Node"
        );
    }

    fn with_offer(mut gn: GpuNode, offered: &str, dra: Option<crate::api::gpunode::GpuNodeDra>) -> GpuNode {
        if let Some(s) = gn.status.as_mut() {
            s.offered_through = Some(offered.into());
            s.dra = dra;
            if offered == "DynamicResourceAllocation" {
                s.resource_name = None;
            }
        }
        gn
    }

    fn dra_devices() -> crate::api::gpunode::GpuNodeDra {
        use crate::api::gpunode::DraDeviceStatus;
        let dev = |name: &str, type_: &str, product: &str, mib: i64, shared: bool| DraDeviceStatus {
            name: name.into(),
            type_: type_.into(),
            product_name: Some(product.into()),
            memory_mib: Some(mib),
            shared,
            ..Default::default()
        };
        crate::api::gpunode::GpuNodeDra {
            driver: "gpu.nvidia.com".into(),
            whole_gpus: 3,
            complete: true,
            unsettled_since: None,
            devices: vec![
                dev("gpu-0", "gpu", "H100", 81920, false),
                dev("gpu-1", "gpu", "H100", 81920, false),
                dev("gpu-2", "gpu", "A100", 40960, false),
                dev("gpu-3", "mig", "H100", 10240, false),
                dev("gpu-4", "gpu", "H100", 81920, true),
            ],
        }
    }

    #[test]
    fn a_pool_uses_the_gpus_of_a_node_the_way_it_asks_for_them() {
        let h100 = GpuRequirements { product: Some("H100".into()), min_memory: None };
        let any = GpuRequirements::default();
        let b200 = GpuRequirements { product: Some("B200".into()), min_memory: None };
        let problem = |f: &NodeFacts| f.problem.as_ref().map(|(r, _)| r.clone());
        // Served both ways: the plugin pool gets the count, a DRA pool its eligible devices.
        let both = with_offer(gpunode("Ready"), "Both", Some(dra_devices()));
        let f = node_facts(&both, None, &[], "uid", GpuRequest::DevicePlugin);
        assert_eq!((f.gpu_count, problem(&f)), (8, None));
        let f = node_facts(&both, None, &[], "uid", GpuRequest::Dra(&h100));
        assert_eq!((f.gpu_count, problem(&f)), (2, None), "whole, exclusive H100s: not the MIG or shared one");
        assert_eq!(node_facts(&both, None, &[], "uid", GpuRequest::Dra(&any)).gpu_count, 3);
        let f = node_facts(&both, None, &[], "uid", GpuRequest::Dra(&b200));
        assert_eq!((f.gpu_count, problem(&f)), (0, Some("NoEligibleDevices".into())));
        // DRA only: a plugin pool cannot use it, and is told to use spec.dra.
        let dra_only = with_offer(gpunode("Ready"), "DynamicResourceAllocation", Some(dra_devices()));
        let f = node_facts(&dra_only, None, &[], "uid", GpuRequest::DevicePlugin);
        assert_eq!(problem(&f), Some("NoDevicePluginResource".into()));
        assert!(f.problem.unwrap().1.contains("spec.dra"));
        // The plugin only: a DRA pool cannot use it.
        let plugin = with_offer(gpunode("Ready"), "DevicePlugin", None);
        let f = node_facts(&plugin, None, &[], "uid", GpuRequest::Dra(&any));
        assert_eq!((f.gpu_count, problem(&f)), (0, Some("NoDraDevices".into())));
        // A node that is not usable anyway keeps its own reason.
        let cordoned = with_offer(gpunode("NodeCordoned"), "DevicePlugin", None);
        assert_eq!(problem(&node_facts(&cordoned, None, &[], "uid", GpuRequest::Dra(&any))), None);
    }

    fn agent_of(pool_uid: &str, gpus: &str) -> Arc<CachedPod> {
        let pod: CachedPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{pool_uid}-agent"), "namespace": "ns",
                "labels": {"app.kubernetes.io/managed-by": "benchkite", "benchkite.dev/pool": "p"},
                "annotations": {"benchkite.dev/gpus": gpus},
                "ownerReferences": [{"apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool", "name": "p",
                                     "uid": pool_uid, "controller": true}]},
            "spec": {"nodeName": "gpu-a", "containers": []},
            "status": {"phase": "Running"},
        }))
        .unwrap_or_else(|e| panic!("test pod: {e}"));
        Arc::new(pod)
    }

    #[test]
    fn served_both_ways_the_kinds_never_meet_and_other_workloads_claims_count() {
        let any = GpuRequirements::default();
        let mut dra = dra_devices();
        // Another workload's claim holds gpu-0; an agent's claim holds gpu-1.
        dra.devices[0].allocated_to = Some("ml/training".into());
        dra.devices[1].allocated_to = Some("ci/p-gpu-a-0-gpus-x".into());
        dra.devices[1].agent_pool = Some("ci/p".into());
        let mut both = with_offer(gpunode("Ready"), "Both", Some(dra));
        if let Some(s) = both.status.as_mut() {
            s.plugin_gpus = Some(7);
        }
        // The plugin pool counts the plugin's GPUs, less the one the other workload's claim
        // holds (the device plugin does not know of it).
        let f = node_facts(&both, None, &[], "uid", GpuRequest::DevicePlugin);
        assert_eq!((f.gpu_count, f.foreign_gpus), (7, 1));
        let f = node_facts(&both, None, &[], "uid", GpuRequest::Dra(&any));
        assert_eq!((f.gpu_count, f.foreign_gpus), (3, 1), "the agent's own device is no one else's");
        // An agent of another pool on the node (a hand-over, terminating or not): this pool
        // starts nothing there until it is gone, whichever kind either pool is.
        let other = [agent_of("other-uid", "1")];
        for request in [GpuRequest::DevicePlugin, GpuRequest::Dra(&any)] {
            let f = node_facts(&both, None, &other, "uid", request);
            assert!(f.other_pool_gpus >= f.gpu_count, "{request:?}: {} of {}", f.other_pool_gpus, f.gpu_count);
        }
        // On a node served one way only, the other pool's agent holds what it holds.
        let plugin = with_offer(gpunode("Ready"), "DevicePlugin", None);
        assert_eq!(node_facts(&plugin, None, &other, "uid", GpuRequest::DevicePlugin).other_pool_gpus, 1);
    }

    #[test]
    fn a_dra_pool_holds_a_node_whose_devices_are_being_republished() {
        let any = GpuRequirements::default();
        let mut dra = dra_devices();
        dra.unsettled_since = Some("2026-12-03T00:00:00Z".into());
        dra.complete = false;
        let gn = with_offer(gpunode("Ready"), "Both", Some(dra));
        let f = node_facts(&gn, None, &[], "uid", GpuRequest::Dra(&any));
        let (reason, message) = f.held.expect("held");
        assert_eq!(reason, "DevicesUnsettled");
        assert!(message.contains("2026-12-03T00:00:00Z"), "{message}");
        assert_eq!(node_facts(&gn, None, &[], "uid", GpuRequest::DevicePlugin).held, None, "the plugin's GPUs are not");
    }

    fn certifying_pool(certification: bool) -> AgentPool {
        let mut spec = serde_json::json!({"queue": "q", "gpuNodeSelector": {},
                                          "agent": {"tokenSecretRef": {"name": "t", "key": "token"}}});
        if certification {
            spec["certification"] = serde_json::json!({"suite": {"configMap": "suite"}});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": "h100", "namespace": "ns"}, "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("test AgentPool: {e}"))
    }

    fn slot(slot: &str, pool: &str, state: &str) -> crate::api::certification::SlotCertification {
        crate::api::certification::SlotCertification {
            slot: slot.into(),
            pool: pool.into(),
            state: state.into(),
            epoch: Some("1800000000".into()),
            ..Default::default()
        }
    }

    #[test]
    fn certified_slots_are_the_slots_certified_for_this_pool_only() {
        use crate::api::certification::states::{CERTIFIED, FAILED, QUARANTINED};
        let mut a = gpunode("Ready");
        if let Some(s) = a.status.as_mut() {
            s.certification = Some(crate::api::certification::NodeCertification {
                slots: vec![
                    slot("0", "ns/h100", CERTIFIED),
                    slot("1", "ns/h100", FAILED),
                    slot("2", "ns/h100", QUARANTINED),
                    slot("3", "other/h100", CERTIFIED),
                    slot("x", "ns/h100", CERTIFIED),
                    slot("5", "ns/h100", CERTIFIED),
                ],
                ..Default::default()
            });
        }
        let mut b = gpunode("Ready");
        b.metadata.name = Some("gpu-b".into());
        let nodes = vec![Arc::new(a), Arc::new(b)];
        let got = certified_slots(&certifying_pool(true), &nodes);
        let want: std::collections::BTreeSet<(String, u32)> =
            [("gpu-a".to_string(), 0), ("gpu-a".to_string(), 5)].into_iter().collect();
        assert_eq!(got, want, "failed, quarantined, another pool's and unparsable slots are not certified");
        assert!(certified_slots(&certifying_pool(false), &nodes).is_empty(), "a pool without certification has none");
    }
}
