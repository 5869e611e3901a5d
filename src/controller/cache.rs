//! What the controller keeps of watched objects. Caches hold only the fields reconciles
//! read, so memory stays flat on large clusters (8,000 agent pods, 1,000 nodes). Pods are
//! cached as [`crate::fleet::cached_pod::CachedPod`], decoded with only those fields.

use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::api::GpuNode;

/// A fingerprint of what an AgentPool's plan reads of a GpuNode: its name, labels, spec and
/// status except the agents placed on it (pools read those from the pod cache) and the
/// observed generation. `None` when it cannot be computed (then treat it as changed).
pub fn pool_view_fingerprint(gn: &GpuNode) -> Option<u64> {
    let mut view = GpuNode {
        metadata: ObjectMeta {
            name: gn.metadata.name.clone(),
            labels: gn.metadata.labels.clone(),
            deletion_timestamp: gn.metadata.deletion_timestamp.clone(),
            ..Default::default()
        },
        spec: gn.spec.clone(),
        status: gn.status.clone(),
    };
    if let Some(s) = view.status.as_mut() {
        s.agents.clear();
        s.agent_count = 0;
        s.observed_generation = None;
        // What other pods request and which are blocked change often and plan nothing.
        s.other_requests = None;
        s.share_basis = None;
        s.conditions.retain(|c| c.type_ != crate::api::gpunode::conditions::PODS_BLOCKED);
        // Which agent holds which device changes with every agent and plans nothing; that
        // another workload holds one does (fewer slots).
        if let Some(d) = s.dra.as_mut() {
            for dev in &mut d.devices {
                let foreign = dev.allocated_to.is_some() && dev.agent_pool.is_none();
                dev.allocated_to = foreign.then(|| "foreign".to_string());
                dev.agent_pool = None;
            }
        }
    }
    let bytes = serde_json::to_vec(&view).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Keeps what GPU inventory and share computation read of a Node.
pub fn strip_node(node: &mut Node) {
    node.managed_fields_mut().clear();
    node.metadata.annotations = None;
    if let Some(spec) = node.spec.take() {
        node.spec = Some(NodeSpec { taints: spec.taints, unschedulable: spec.unschedulable, ..Default::default() });
    }
    if let Some(status) = node.status.take() {
        node.status = Some(NodeStatus {
            allocatable: status.allocatable,
            capacity: status.capacity,
            conditions: status
                .conditions
                .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect::<Vec<NodeCondition>>()),
            ..Default::default()
        });
    }
}

/// Drops managed fields (often the largest part of an object) from any cached object.
pub fn strip_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Node Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gpunode::{GpuNodeSpec, GpuNodeStatus, PlacedAgent, ResourceShare};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn gpunode() -> GpuNode {
        let mut gn = GpuNode::new("h100-0", GpuNodeSpec::default());
        gn.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        gn.metadata.resource_version = Some("10".into());
        gn.status = Some(GpuNodeStatus {
            observed_generation: Some(1),
            gpu_count: 8,
            architecture: Some("sm_90".into()),
            per_gpu_share: Some(ResourceShare { cpu: 15, memory: "120000Mi".into() }),
            ..Default::default()
        });
        gn
    }

    #[test]
    fn agents_and_bookkeeping_do_not_change_the_pool_view() {
        let base = gpunode();
        let fp = pool_view_fingerprint(&base);
        assert!(fp.is_some());
        let mut busy = base.clone();
        busy.metadata.resource_version = Some("11".into());
        busy.metadata.managed_fields = Some(vec![Default::default()]);
        if let Some(s) = busy.status.as_mut() {
            s.agents = vec![PlacedAgent { pool: "ns/p".into(), pod: "p-h100-0-0".into(), phase: "Running".into() }];
            s.agent_count = 1;
            s.observed_generation = Some(2);
        }
        assert_eq!(pool_view_fingerprint(&busy), fp);
    }

    #[test]
    fn which_agent_holds_a_device_does_not_change_the_pool_view_another_workload_does() {
        use crate::api::gpunode::{DraDeviceStatus, GpuNodeDra};
        let dev = |n: &str| DraDeviceStatus { name: n.into(), type_: "gpu".into(), ..Default::default() };
        let mut base = gpunode();
        if let Some(s) = base.status.as_mut() {
            s.dra = Some(GpuNodeDra {
                driver: "gpu.nvidia.com".into(),
                whole_gpus: 2,
                complete: true,
                unsettled_since: None,
                devices: vec![dev("gpu-0"), dev("gpu-1")],
            });
        }
        let fp = pool_view_fingerprint(&base);
        let hold = |claim: &str, pool: Option<&str>| {
            let mut g = base.clone();
            if let Some(d) = g.status.as_mut().and_then(|s| s.dra.as_mut()) {
                d.devices[0].allocated_to = Some(claim.into());
                d.devices[0].agent_pool = pool.map(String::from);
            }
            g
        };
        assert_eq!(pool_view_fingerprint(&hold("ci/a-gpus-1", Some("ci/h100"))), fp, "an agent's claim");
        assert_eq!(pool_view_fingerprint(&hold("ci/b-gpus-2", Some("ci/other"))), fp, "another pool's agent");
        let foreign = pool_view_fingerprint(&hold("ml/training", None));
        assert_ne!(foreign, fp, "a workload outside benchkite takes a slot");
        assert_eq!(pool_view_fingerprint(&hold("ml/other-job", None)), foreign, "which one does not matter");
    }

    #[test]
    fn blocked_pods_and_share_bookkeeping_do_not_change_the_pool_view() {
        let base = gpunode();
        let fp = pool_view_fingerprint(&base);
        let mut g = base.clone();
        if let Some(s) = g.status.as_mut() {
            s.other_requests = Some(crate::api::gpunode::NodeResources { cpu: "100m".into(), memory: "128Mi".into() });
            s.share_basis = Some(Default::default());
            s.conditions.push(Condition {
                type_: "PodsBlocked".into(),
                status: "True".into(),
                reason: "AgentsHoldResources".into(),
                message: "1 pod(s)".into(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            });
        }
        assert_eq!(pool_view_fingerprint(&g), fp);
    }

    #[test]
    fn what_a_pool_plans_with_changes_the_pool_view() {
        let base = gpunode();
        let fp = pool_view_fingerprint(&base);
        type Change = Box<dyn Fn(&mut GpuNode)>;
        let changes: Vec<(&str, Change)> = vec![
            ("label", Box::new(|g| g.metadata.labels = Some([("team".to_string(), "b".to_string())].into()))),
            ("maintenance", Box::new(|g| g.spec.maintenance = true)),
            (
                "deleting",
                Box::new(|g| g.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))),
            ),
            (
                "gpu count",
                Box::new(|g| {
                    if let Some(s) = g.status.as_mut() {
                        s.gpu_count = 4
                    }
                }),
            ),
            (
                "share",
                Box::new(|g| {
                    if let Some(s) = g.status.as_mut() {
                        s.per_gpu_share = None
                    }
                }),
            ),
            (
                "shared",
                Box::new(|g| {
                    if let Some(s) = g.status.as_mut() {
                        s.shared = true
                    }
                }),
            ),
            (
                "arch",
                Box::new(|g| {
                    if let Some(s) = g.status.as_mut() {
                        s.architecture = Some("sm_89".into())
                    }
                }),
            ),
            (
                "condition",
                Box::new(|g| {
                    if let Some(s) = g.status.as_mut() {
                        s.conditions = vec![Condition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            reason: "Ready".into(),
                            message: String::new(),
                            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                            observed_generation: None,
                        }]
                    }
                }),
            ),
        ];
        for (what, change) in changes {
            let mut g = base.clone();
            change(&mut g);
            assert_ne!(pool_view_fingerprint(&g), fp, "{what}");
        }
    }
}
