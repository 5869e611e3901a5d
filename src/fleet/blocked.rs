//! Pods that cannot run on a GPU node because its CPU or memory is taken (by agents).
//!
//! Two shapes, both as Kubernetes reports them:
//! - a pod pinned to the node by required node affinity on `metadata.name`, which is how the
//!   DaemonSet controller places its pods (`matchFields: [{key: metadata.name, operator: In,
//!   values: [<node>]}]`, kubernetes `pkg/controller/daemon/util/daemonset_util.go`,
//!   `ReplaceDaemonSetPodNodeNameNodeAffinity`), still unbound, whose `PodScheduled`
//!   condition is `False`/`Unschedulable` with the scheduler's NodeResourcesFit message
//!   `Insufficient cpu` or `Insufficient memory` (kubernetes
//!   `pkg/scheduler/framework/plugins/noderesources/fit.go`);
//! - a pod bound to the node directly (`spec.nodeName`) that the kubelet refused at
//!   admission: phase `Failed`, reason `OutOfcpu` or `OutOfmemory` (kubernetes
//!   `pkg/kubelet/lifecycle/predicate.go`, reason `OutOf<resource>`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::cached_pod::CachedPod;

/// `metadata.name`, the node field DaemonSet pods are pinned by.
const NODE_NAME_FIELD: &str = "metadata.name";

/// One pod that cannot run on the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockedPod {
    /// `namespace/name`.
    pub pod: String,
    /// What it lacks, e.g. `Insufficient cpu` or `OutOfmemory`.
    pub why: String,
}

/// The nodes a pod's required node affinity pins it to by name (`matchFields` on
/// `metadata.name` with operator `In`). Empty when it is not pinned that way.
pub fn pinned_nodes(pod: &Pod) -> Vec<&str> {
    pod.spec.as_ref().map(pinned_nodes_of).unwrap_or_default()
}

/// [`pinned_nodes`] from the pod's spec. (The pod cache keeps these for unbound pods:
/// [`CachedPod::pinned_nodes`].)
pub fn pinned_nodes_of(spec: &PodSpec) -> Vec<&str> {
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .filter(|f| f.key == NODE_NAME_FIELD && f.operator == "In")
        .flat_map(|f| f.values.iter().flatten().map(String::as_str))
        .collect()
}

/// Why `pod` cannot run on `node` for lack of CPU or memory, if that is the case.
pub fn blocked_on(pod: &CachedPod, node: &str) -> Option<BlockedPod> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    match (pod.node_name.as_deref(), pod.phase.as_deref()) {
        (Some(bound), Some("Failed")) if bound == node => {
            let reason = pod.reason.as_deref()?;
            matches!(reason, "OutOfcpu" | "OutOfmemory").then(|| BlockedPod { pod: pod.key(), why: reason.to_string() })
        }
        (None, Some("Pending") | None) if pod.pinned_nodes.iter().any(|n| n == node) => {
            let scheduled = pod.scheduled.as_ref()?;
            if scheduled.status != "False" || scheduled.reason.as_deref() != Some("Unschedulable") {
                return None;
            }
            let message = scheduled.message.as_deref().unwrap_or_default();
            let lacks: Vec<&str> =
                ["Insufficient cpu", "Insufficient memory"].into_iter().filter(|w| message.contains(w)).collect();
            (!lacks.is_empty()).then(|| BlockedPod { pod: pod.key(), why: lacks.join(", ") })
        }
        _ => None,
    }
}

/// The pods of `pods` blocked on `node`, sorted by namespace/name.
pub fn blocked_pods<'a>(node: &str, pods: impl IntoIterator<Item = &'a CachedPod>) -> Vec<BlockedPod> {
    let set: BTreeSet<BlockedPod> = pods.into_iter().filter_map(|p| blocked_on(p, node)).collect();
    set.into_iter().collect()
}

/// The condition message: up to `limit` pods by name and what they lack, how many more, and
/// the fix.
pub fn message(blocked: &[BlockedPod], limit: usize) -> String {
    let named: Vec<String> = blocked.iter().take(limit).map(|b| format!("{} ({})", b.pod, b.why)).collect();
    let more = blocked.len().saturating_sub(limit);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!(
        "{} pod(s) cannot run on this node because agents hold its CPU or memory: {}{more}. \
         To make room, raise the controller's --node-headroom-cpu/--node-headroom-memory or \
         this GpuNode's spec.reserved (either re-sizes the agents), or move the pods elsewhere",
        blocked.len(),
        named.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, body: serde_json::Value) -> CachedPod {
        let mut v = json!({"metadata": {"name": name, "namespace": "mon"}});
        if let (Some(o), Some(b)) = (v.as_object_mut(), body.as_object()) {
            o.extend(b.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn daemon_pod(name: &str, node: &str, scheduled: serde_json::Value) -> CachedPod {
        pod(
            name,
            json!({
                "spec": {
                    "containers": [{"name": "c"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [node]}
                        ]}]
                    }}},
                },
                "status": {"phase": "Pending", "conditions": [scheduled]},
            }),
        )
    }

    fn unschedulable(message: &str) -> serde_json::Value {
        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message})
    }

    const NO_CPU: &str = "0/155 nodes are available: 1 Insufficient cpu, 154 node(s) didn't satisfy plugin(s) [NodeAffinity]. preemption: 0/155 nodes are available: 1 No preemption victims found for incoming pod, 154 Preemption is not helpful for scheduling.";

    #[test]
    fn daemonset_pods_short_of_cpu_or_memory_are_blocked() {
        let p = daemon_pod("exporter-a", "gpu-1", unschedulable(NO_CPU));
        assert_eq!(&*p.pinned_nodes, ["gpu-1".to_string()]);
        assert_eq!(
            blocked_on(&p, "gpu-1"),
            Some(BlockedPod { pod: "mon/exporter-a".into(), why: "Insufficient cpu".into() })
        );
        assert_eq!(blocked_on(&p, "gpu-2"), None, "pinned to another node");
        let both = daemon_pod(
            "exporter-b",
            "gpu-1",
            unschedulable("0/3 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."),
        );
        assert_eq!(blocked_on(&both, "gpu-1").map(|b| b.why), Some("Insufficient cpu, Insufficient memory".into()));
    }

    #[test]
    fn other_pending_pods_are_not_blocked_by_agents() {
        let rows = [
            (
                "tainted node",
                daemon_pod(
                    "a",
                    "gpu-1",
                    unschedulable("0/3 nodes are available: 1 node(s) had untolerated taint {x: y}."),
                ),
            ),
            (
                "short of GPUs only",
                daemon_pod("b", "gpu-1", unschedulable("0/3 nodes are available: 1 Insufficient nvidia.com/gpu.")),
            ),
            ("not judged yet", daemon_pod("c", "gpu-1", json!({"type": "PodScheduled", "status": "Unknown"}))),
            (
                "scheduling gated",
                daemon_pod(
                    "d",
                    "gpu-1",
                    json!({"type": "PodScheduled", "status": "False", "reason": "SchedulingGated", "message": "Insufficient cpu"}),
                ),
            ),
            ("no conditions", pod("e", json!({"spec": {"containers": []}, "status": {"phase": "Pending"}}))),
            (
                "not pinned",
                pod(
                    "f",
                    json!({"spec": {"containers": []}, "status": {"phase": "Pending", "conditions": [unschedulable(NO_CPU)]}}),
                ),
            ),
        ];
        for (what, p) in rows {
            assert_eq!(blocked_on(&p, "gpu-1"), None, "{what}");
        }
        let mut deleting = daemon_pod("g", "gpu-1", unschedulable(NO_CPU));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(blocked_on(&deleting, "gpu-1"), None, "deleting");
    }

    #[test]
    fn pods_the_kubelet_refused_for_cpu_or_memory_are_blocked() {
        let refused = |reason: &str, node: &str| {
            pod(
                "static",
                json!({"spec": {"nodeName": node, "containers": []}, "status": {"phase": "Failed", "reason": reason}}),
            )
        };
        assert_eq!(blocked_on(&refused("OutOfcpu", "gpu-1"), "gpu-1").map(|b| b.why), Some("OutOfcpu".into()));
        assert_eq!(blocked_on(&refused("OutOfmemory", "gpu-1"), "gpu-1").map(|b| b.why), Some("OutOfmemory".into()));
        assert_eq!(blocked_on(&refused("OutOfcpu", "gpu-2"), "gpu-1"), None);
        assert_eq!(blocked_on(&refused("Evicted", "gpu-1"), "gpu-1"), None);
        let running =
            pod("r", json!({"spec": {"nodeName": "gpu-1", "containers": []}, "status": {"phase": "Running"}}));
        assert_eq!(blocked_on(&running, "gpu-1"), None);
    }

    #[test]
    fn the_message_names_a_few_and_the_fix() {
        let pods: Vec<CachedPod> =
            (0..7).rev().map(|i| daemon_pod(&format!("exp-{i}"), "gpu-1", unschedulable(NO_CPU))).collect();
        let blocked = blocked_pods("gpu-1", &pods);
        assert_eq!(blocked.len(), 7);
        assert_eq!(blocked[0].pod, "mon/exp-0", "sorted");
        let m = message(&blocked, 5);
        assert!(m.starts_with("7 pod(s) cannot run"), "{m}");
        assert!(m.contains("mon/exp-4 (Insufficient cpu) and 2 more"), "{m}");
        assert!(!m.contains("exp-5"), "{m}");
        assert!(m.contains("--node-headroom-cpu") && m.contains("spec.reserved"), "{m}");
    }
}
