//! The pod cache's own Pod type: only what the fleet reads of a pod, decoded straight from
//! the API server's JSON. Everything else (images, env, volumes, container statuses, managed
//! fields, other labels and annotations) is skipped by the decoder, never kept.
//!
//! The controller caches every pod of the cluster (other pods' requests size the agents).
//! k8s-openapi's `Pod` costs about 5 KiB per pod even stripped of everything unread (its
//! structs are wide, and each label, annotation or resource map is a B-tree node of its own);
//! a `CachedPod` is a few hundred bytes. What the fleet reads is computed once, as the pod
//! is decoded, with the same functions that read a full `Pod`: effective requests
//! ([`share::pod_requests`], [`share::pod_extended`]) and the nodes an unbound pod is pinned
//! to ([`blocked::pinned_nodes_of`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodCondition, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;

use super::blocked;
use super::pod::{
    ANNOTATION_GPUNODE, ANNOTATION_GPUS, ANNOTATION_SPEC_HASH, LABEL_MANAGED_BY, LABEL_POOL, LABEL_SLOT, MANAGED_BY,
};
use super::share::{self, Resources};

/// A pod as the fleet sees it. Decodes from a `v1/Pod` (watch, list or get) and is a
/// [`kube::Resource`] of kind `Pod`, so `Api<CachedPod>` and reflectors work as for `Pod`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "wire::Pod")]
pub struct CachedPod {
    /// Name, namespace, UID, resource version and deletion timestamp only.
    pub metadata: ObjectMeta,
    /// The controlling AgentPool, when the pod is an agent (labelled managed by benchkite).
    pub agent_pool: Option<PoolOwner>,
    /// Label `benchkite.dev/pool`.
    pub pool_label: Option<String>,
    /// Label `benchkite.dev/slot`.
    pub slot_label: Option<String>,
    /// Annotation `benchkite.dev/gpunode`.
    pub gpunode_annotation: Option<String>,
    /// Annotation `benchkite.dev/gpus`.
    pub gpus_annotation: Option<String>,
    /// Annotation `benchkite.dev/spec-hash`.
    pub spec_hash: Option<String>,
    /// Annotation `benchkite.dev/gpu-allocation` (DRA agents: the devices allocated to it).
    pub allocation_annotation: Option<String>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// What the certification init container ([`CERTIFY_CONTAINER`]) of an agent pod ended
    /// with: its exit code and termination message (the latest run, or the one before while
    /// the kubelet restarts it).
    pub certify: Option<(i32, String)>,
    /// The pod is an NVIDIA MPS control daemon ([`is_mps_control_daemon`]): the GPUs of its
    /// node are shared.
    pub mps_daemon: bool,
    /// While unbound: the node names its required node affinity pins it to (how DaemonSet
    /// pods are placed). Empty once bound.
    pub pinned_nodes: Box<[String]>,
    /// Effective CPU and memory requests, as the scheduler counts them.
    pub requests: Resources,
    /// Effective requests of every other (extended) resource, in whole units; zeros left out.
    pub extended: Box<[(String, i64)]>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// `status.reason`.
    pub reason: Option<String>,
    /// `status.message`.
    pub message: Option<String>,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// Condition `PodScheduled`, when present.
    pub scheduled: Option<Scheduled>,
}

/// The AgentPool controlling an agent pod (its controller owner reference).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolOwner {
    pub name: String,
    pub uid: String,
}

/// A pod's `PodScheduled` condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scheduled {
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl CachedPod {
    /// Effective requests of the extended resource `resource` (e.g. `nvidia.com/gpu`), in
    /// whole units; 0 when the pod asks for none.
    pub fn extended_requests(&self, resource: &str) -> i64 {
        self.extended.iter().find(|(name, _)| name == resource).map_or(0, |(_, n)| *n)
    }

    /// Whether the pod is terminal (holds no resources).
    pub fn terminal(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
}

impl kube::Resource for CachedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What is decoded of the JSON before it is reduced. Fields not named here are skipped by
/// serde without being allocated; `spec` is decoded whole (transiently) so that requests are
/// computed by the same code as for a full `Pod`.
mod wire {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Pod {
        pub metadata: Meta,
        pub spec: Option<PodSpec>,
        pub status: Option<Status>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Meta {
        pub name: Option<String>,
        pub namespace: Option<String>,
        pub uid: Option<String>,
        pub resource_version: Option<String>,
        pub deletion_timestamp: Option<Time>,
        pub labels: Option<BTreeMap<String, String>>,
        pub annotations: Option<BTreeMap<String, String>>,
        pub owner_references: Option<Vec<OwnerReference>>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    pub struct Status {
        pub phase: Option<String>,
        pub reason: Option<String>,
        pub message: Option<String>,
        pub conditions: Option<Vec<PodCondition>>,
        pub init_container_statuses: Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>,
    }
}

impl From<wire::Pod> for CachedPod {
    fn from(pod: wire::Pod) -> CachedPod {
        let wire::Pod { metadata: m, spec, status } = pod;
        let mut labels = m.labels.unwrap_or_default();
        let mut annotations = m.annotations.unwrap_or_default();
        let mps_daemon = is_mps_control_daemon(m.name.as_deref().unwrap_or_default(), &labels, spec.as_ref());
        let agent_pool = if labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY) {
            m.owner_references
                .unwrap_or_default()
                .into_iter()
                .find(|o| o.controller == Some(true) && o.kind == "AgentPool")
                .map(|o| PoolOwner { name: o.name, uid: o.uid })
        } else {
            None
        };
        let (node_name, pinned_nodes, requests, extended) = match spec {
            Some(spec) => {
                let pinned: Box<[String]> = if spec.node_name.is_none() {
                    blocked::pinned_nodes_of(&spec).into_iter().map(str::to_string).collect()
                } else {
                    Box::default()
                };
                let extended = extended_resources(&spec)
                    .into_iter()
                    .map(|name| {
                        let n = share::pod_extended(&spec, &name);
                        (name, n)
                    })
                    .filter(|(_, n)| *n != 0)
                    .collect();
                (spec.node_name.clone(), pinned, share::pod_requests(&spec), extended)
            }
            None => (None, Box::default(), Resources::default(), Box::default()),
        };
        let status = status.unwrap_or_default();
        let certify =
            if agent_pool.is_some() { certify_outcome(status.init_container_statuses.as_deref()) } else { None };
        let conditions = status.conditions.unwrap_or_default();
        let ready = conditions.iter().find(|c| c.type_ == "Ready").is_some_and(|c| c.status == "True");
        let scheduled = conditions.into_iter().find(|c| c.type_ == "PodScheduled").map(|c| Scheduled {
            status: c.status,
            reason: c.reason,
            message: c.message,
        });
        CachedPod {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                deletion_timestamp: m.deletion_timestamp,
                ..Default::default()
            },
            agent_pool,
            pool_label: labels.remove(LABEL_POOL),
            slot_label: labels.remove(LABEL_SLOT),
            gpunode_annotation: annotations.remove(ANNOTATION_GPUNODE),
            gpus_annotation: annotations.remove(ANNOTATION_GPUS),
            spec_hash: annotations.remove(ANNOTATION_SPEC_HASH),
            allocation_annotation: annotations.remove(super::dra::ANNOTATION_ALLOCATION),
            node_name,
            certify,
            mps_daemon,
            pinned_nodes,
            requests,
            extended,
            phase: status.phase,
            reason: status.reason,
            message: status.message,
            ready,
            scheduled,
        }
    }
}

/// Name of the init container that certifies an agent's slot.
pub const CERTIFY_CONTAINER: &str = "certify";

/// The certification init container's last ending: its current state if terminated, else
/// the previous one (while the kubelet restarts it after a failure).
fn certify_outcome(statuses: Option<&[k8s_openapi::api::core::v1::ContainerStatus]>) -> Option<(i32, String)> {
    let c = statuses?.iter().find(|c| c.name == CERTIFY_CONTAINER)?;
    let t = c
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
    Some((t.exit_code, t.message.clone().unwrap_or_default()))
}

/// What names an NVIDIA MPS control daemon: the GPU operator's and the device plugin chart's
/// DaemonSet `…-mps-control-daemon` (pods named after it, label `app=…-mps-control-daemon`)
/// and its container `mps-control-daemon-ctr`.
const MPS_DAEMON: &str = "mps-control-daemon";

/// Whether a pod is an NVIDIA MPS control daemon, by its name, a label value or a container
/// name (any of them, so a renamed DaemonSet with the upstream container is still seen).
pub fn is_mps_control_daemon(name: &str, labels: &BTreeMap<String, String>, spec: Option<&PodSpec>) -> bool {
    name.contains(MPS_DAEMON)
        || labels.values().any(|v| v.contains(MPS_DAEMON))
        || spec.is_some_and(|s| s.containers.iter().any(|c| c.name.starts_with(MPS_DAEMON)))
}

/// Names of the resources other than CPU and memory any container requests or limits.
fn extended_resources(spec: &PodSpec) -> Vec<String> {
    let mut names: Vec<String> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.resources.as_ref())
        .flat_map(|r| r.requests.iter().chain(r.limits.iter()).flat_map(|m| m.keys()))
        .filter(|name| name.as_str() != "cpu" && name.as_str() != "memory")
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
impl CachedPod {
    /// The cached view of a full `Pod` (tests build pods as the API server returns them).
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> CachedPod {
        serde_json::to_value(pod).and_then(serde_json::from_value).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::pod::tests as built;
    use serde_json::json;

    #[test]
    fn an_agent_keeps_its_certification_outcome() {
        let pod = |statuses: serde_json::Value, agent: bool| -> CachedPod {
            let mut meta =
                json!({"name": "a", "namespace": "ci", "labels": {"app.kubernetes.io/managed-by": "benchkite"}});
            if agent {
                meta["ownerReferences"] = json!([{"apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool", "name": "p", "uid": "u", "controller": true}]);
            }
            serde_json::from_value(json!({"metadata": meta, "status": {"initContainerStatuses": statuses}})).unwrap()
        };
        let done = json!([{"name": "certify", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                            "state": {"terminated": {"exitCode": 0, "message": "{\"v\":1}"}}}]);
        assert_eq!(pod(done.clone(), true).certify, Some((0, "{\"v\":1}".into())));
        assert_eq!(pod(done, false).certify, None, "only agents are read");
        let restarting = json!([{"name": "certify", "ready": false, "restartCount": 2, "image": "i", "imageID": "",
                                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                 "lastState": {"terminated": {"exitCode": 3, "message": "m"}}}]);
        assert_eq!(pod(restarting, true).certify, Some((3, "m".into())), "the previous run while it waits");
        let running = json!([{"name": "certify", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                              "state": {"running": {}}}]);
        assert_eq!(pod(running, true).certify, None);
        let other = json!([{"name": "other", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                            "state": {"terminated": {"exitCode": 0}}}]);
        assert_eq!(pod(other, true).certify, None);
    }

    #[test]
    fn mps_control_daemons_are_recognised_by_name_label_or_container() {
        let pod = |name: &str, labels: serde_json::Value, container: &str| -> CachedPod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "gpu-operator", "labels": labels},
                "spec": {"nodeName": "n", "containers": [{"name": container}]},
            }))
            .unwrap()
        };
        // The GPU operator's DaemonSet pod, the device plugin chart's, a renamed one with the
        // upstream container, and one found by its label only.
        assert!(pod("nvidia-device-plugin-mps-control-daemon-x7k2p", json!({}), "c").mps_daemon);
        assert!(pod("dp-mps-control-daemon-abcde", json!({}), "c").mps_daemon);
        assert!(pod("gpu-sharing-1", json!({}), "mps-control-daemon-ctr").mps_daemon);
        assert!(pod("p", json!({"app": "nvidia-device-plugin-mps-control-daemon"}), "c").mps_daemon);
        // The device plugin itself, GFD and an agent are not.
        assert!(
            !pod(
                "nvidia-device-plugin-daemonset-x",
                json!({"app": "nvidia-device-plugin-daemonset"}),
                "nvidia-device-plugin"
            )
            .mps_daemon
        );
        assert!(
            !pod("gpu-feature-discovery-x", json!({"app": "gpu-feature-discovery"}), "gpu-feature-discovery")
                .mps_daemon
        );
        assert!(!pod("h100-gpu-0-3", json!({"benchkite.dev/pool": "h100"}), "agent").mps_daemon);
    }

    #[test]
    fn decodes_what_the_fleet_reads_of_a_pod() {
        let p: CachedPod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "agent-0", "namespace": "ci", "uid": "u1", "resourceVersion": "7",
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"app.kubernetes.io/managed-by": "benchkite", "benchkite.dev/pool": "p", "benchkite.dev/slot": "3", "x": "y"},
                "annotations": {"benchkite.dev/gpunode": "gn-1", "benchkite.dev/gpus": "2", "benchkite.dev/spec-hash": "abc", "other": "z"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "c1"},
                    {"apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool", "name": "p", "uid": "pool-uid", "controller": true},
                ],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [
                    {"name": "a", "image": "i", "env": [{"name": "E", "value": "v"}],
                     "resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "500m", "example.com/fpga": "1"}}},
                ],
                "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "4"}}}],
                "overhead": {"memory": "1Mi"},
            },
            "status": {
                "phase": "Running", "reason": "R", "message": "M",
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True"},
                    {"type": "PodScheduled", "status": "True"},
                ],
                "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "image": "i", "imageID": ""}],
            },
        }))
        .unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("agent-0"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(p.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(p.metadata.resource_version.as_deref(), Some("7"));
        assert!(p.metadata.deletion_timestamp.is_some());
        assert!(p.metadata.labels.is_none() && p.metadata.annotations.is_none() && p.metadata.managed_fields.is_none());
        assert_eq!(p.agent_pool, Some(PoolOwner { name: "p".into(), uid: "pool-uid".into() }));
        assert_eq!((p.pool_label.as_deref(), p.slot_label.as_deref()), (Some("p"), Some("3")));
        assert_eq!(p.gpunode_annotation.as_deref(), Some("gn-1"));
        assert_eq!(p.gpus_annotation.as_deref(), Some("2"));
        assert!(!p.mps_daemon, "an agent is no MPS daemon");
        assert_eq!(p.certify, None, "no certification container");
        assert_eq!(p.spec_hash.as_deref(), Some("abc"));
        assert_eq!(p.node_name.as_deref(), Some("node-1"));
        assert!(p.pinned_nodes.is_empty());
        // Apps: 1.5 CPU, 1 GiB + 1 MiB overhead; the init container's 4 CPUs run alone first.
        assert_eq!(p.requests, Resources { cpu_millis: 4000, memory_bytes: (1 << 30) + (1 << 20) });
        assert_eq!(p.extended_requests("nvidia.com/gpu"), 2);
        assert_eq!(p.extended_requests("example.com/fpga"), 1);
        assert_eq!(p.extended_requests("amd.com/gpu"), 0);
        assert_eq!(p.phase.as_deref(), Some("Running"));
        assert_eq!((p.reason.as_deref(), p.message.as_deref()), (Some("R"), Some("M")));
        assert!(p.ready);
        assert_eq!(p.scheduled, Some(Scheduled { status: "True".into(), reason: None, message: None }));
    }

    #[test]
    fn only_benchkite_pods_controlled_by_a_pool_are_agents() {
        let pod = |labels: serde_json::Value, controller: bool| -> CachedPod {
            serde_json::from_value(json!({"metadata": {"name": "x", "labels": labels, "ownerReferences": [
                {"apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool", "name": "p", "uid": "u", "controller": controller}
            ]}}))
            .unwrap()
        };
        assert!(pod(json!({"app.kubernetes.io/managed-by": "benchkite"}), true).agent_pool.is_some());
        assert!(pod(json!({"app.kubernetes.io/managed-by": "benchkite"}), false).agent_pool.is_none());
        assert!(pod(json!({"app.kubernetes.io/managed-by": "helm"}), true).agent_pool.is_none());
        assert!(pod(json!(null), true).agent_pool.is_none());
    }

    #[test]
    fn a_bare_pod_decodes_to_nothing_held() {
        let p: CachedPod = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(p.requests, Resources::default());
        assert!(p.node_name.is_none() && p.phase.is_none() && !p.ready && p.scheduled.is_none());
        assert!(!p.terminal());
        let done: CachedPod = serde_json::from_value(json!({"status": {"phase": "Succeeded"}})).unwrap();
        assert!(done.terminal());
    }

    #[test]
    fn unbound_pods_keep_the_nodes_they_are_pinned_to() {
        let daemon = |node_name: Option<&str>| -> CachedPod {
            serde_json::from_value(json!({
                "metadata": {"name": "exporter-x", "namespace": "mon"},
                "spec": {
                    "nodeName": node_name,
                    "containers": [{"name": "c", "image": "exporter", "resources": {"requests": {"cpu": "100m"}}}],
                    "affinity": {
                        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}],
                             "matchExpressions": [{"key": "a", "operator": "Exists"}]},
                            {"matchExpressions": [{"key": "b", "operator": "Exists"}]},
                        ]}},
                        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "x"}]},
                    },
                },
                "status": {"phase": "Pending"},
            }))
            .unwrap()
        };
        let unbound = daemon(None);
        assert_eq!(&*unbound.pinned_nodes, ["gpu-1".to_string()]);
        assert_eq!(unbound.requests, Resources { cpu_millis: 100, memory_bytes: 0 });
        // Bound: the affinity no longer matters.
        assert!(daemon(Some("gpu-1")).pinned_nodes.is_empty());
    }

    #[test]
    fn a_cached_pod_is_a_fraction_of_a_pod() {
        use k8s_openapi::api::core::v1::{Container, Pod};
        // Inline sizes only (a stripped `Pod` adds B-tree nodes for labels, annotations and
        // each resource map on top): 752 bytes against 2,176 for the Pod and 2,120 per
        // Container with k8s-openapi 0.29.
        assert!(size_of::<CachedPod>() <= 1024, "{}", size_of::<CachedPod>());
        assert!(size_of::<CachedPod>() * 5 < size_of::<Pod>() + size_of::<Container>());
    }

    #[test]
    fn a_built_agent_pod_reads_the_same_cached() {
        let built = built::built(&built::pool("h100"));
        let cached = CachedPod::of(&built);
        assert!(cached.spec_hash.is_some());
        assert_eq!(cached.spec_hash.as_deref(), crate::fleet::pod::pod_spec_hash(&built));
        let requests = built.spec.as_ref().map(share::pod_requests).unwrap_or_default();
        assert!(requests.cpu_millis > 0);
        assert_eq!(cached.requests, requests);
        let (labels, annotations) =
            (built.metadata.labels.unwrap_or_default(), built.metadata.annotations.unwrap_or_default());
        assert_eq!(cached.slot_label.as_ref(), labels.get(LABEL_SLOT));
        assert_eq!(cached.pool_label.as_ref(), labels.get(LABEL_POOL));
        assert_eq!(cached.gpus_annotation.as_ref(), annotations.get(ANNOTATION_GPUS));
        assert_eq!(cached.gpunode_annotation.as_ref(), annotations.get(ANNOTATION_GPUNODE));
    }
}
