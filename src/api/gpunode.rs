//! GpuNode: one Kubernetes Node with GPUs, its inventory and its per-GPU share of CPU and
//! memory.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::conditions_schema;

/// Condition types a GpuNode reports.
pub mod conditions {
    /// The node is found, schedulable-Ready, exclusive and its share is usable by agents.
    pub const READY: &str = "Ready";
    /// The Kubernetes Node named by `spec.nodeName` exists.
    pub const NODE_FOUND: &str = "NodeFound";
    /// The GPUs are not shared (no time-slicing or MPS replicas): benchmarks are trustworthy.
    pub const EXCLUSIVE: &str = "Exclusive";
    /// True when pods that target this node (DaemonSet pods, pods bound to it) cannot run
    /// because agents hold its CPU or memory; the message names them and the fix.
    pub const PODS_BLOCKED: &str = "PodsBlocked";

    /// `Ready` reasons the AgentPool controller acts on (a contract between the two
    /// controllers: keep the strings).
    pub mod reasons {
        /// The Node is not Ready for less than the toleration: existing agents stay, no new
        /// ones are created.
        pub const NODE_NOT_READY_TOLERATED: &str = "NodeNotReadyTolerated";
        /// The Node has not been Ready for longer than the toleration: agents drain.
        pub const NODE_NOT_READY: &str = "NodeNotReady";
        /// The Node is cordoned: no new agents, running ones finish.
        pub const NODE_CORDONED: &str = "NodeCordoned";
        /// `PodsBlocked=True`: agents hold what other pods need.
        pub const AGENTS_HOLD_RESOURCES: &str = "AgentsHoldResources";
        /// `PodsBlocked=False`.
        pub const NO_PODS_BLOCKED: &str = "NoPodsBlocked";
    }
}

/// Label put on GpuNodes the controller created itself; only those are ever deleted by it.
pub const DISCOVERED_LABEL: &str = "benchkite.dev/discovered";

/// Desired state of a GpuNode.
#[allow(clippy::duplicated_attributes)] // repeated printcolumn(...) arguments are intended
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "benchkite.dev",
    version = "v1alpha1",
    kind = "GpuNode",
    plural = "gpunodes",
    shortname = "gn",
    category = "benchkite",
    status = "GpuNodeStatus",
    doc = "A Kubernetes Node with GPUs: its inventory and the exclusive per-GPU share of CPU and memory that each agent on it gets.",
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(name = "Product", type_ = "string", json_path = ".status.product"),
    printcolumn(name = "Arch", type_ = "string", json_path = ".status.architecture"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpuCount"),
    printcolumn(name = "CPU/GPU", type_ = "integer", json_path = ".status.perGpuShare.cpu"),
    printcolumn(name = "Mem/GPU", type_ = "string", json_path = ".status.perGpuShare.memory"),
    printcolumn(name = "Agents", type_ = "integer", json_path = ".status.agentCount"),
    printcolumn(name = "Offered", type_ = "string", json_path = ".status.offeredThrough", priority = 1),
    printcolumn(name = "Maint", type_ = "boolean", json_path = ".spec.maintenance", priority = 1),
    printcolumn(name = "Certified", type_ = "string", json_path = ".status.certification.summary", priority = 1),
    printcolumn(name = "Min-Tau", type_ = "number", json_path = ".status.certification.minKendallTau", priority = 1),
    printcolumn(
        name = "Quarantined",
        type_ = "integer",
        json_path = ".status.certification.quarantined",
        priority = 1
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.nodeName) == has(oldSelf.nodeName)").message("nodeName is immutable: it cannot be set or removed after creation; create a new GpuNode for another node"))]
pub struct GpuNodeSpec {
    /// Name of the Kubernetes Node. Defaults to the GpuNode's own name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("nodeName must be a valid Node name: lowercase letters, digits, '-' and '.', at most 253 characters"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodeName is immutable: create a new GpuNode for another node"))]
    pub node_name: Option<String>,

    /// Extended resource that counts the GPUs (e.g. `nvidia.com/gpu`, `amd.com/gpu`,
    /// `nvidia.com/mig-3g.40gb`). Detected from the Node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')").message("resourceName must be an extended resource name like 'nvidia.com/gpu' or 'amd.com/gpu'"))]
    pub resource_name: Option<String>,

    /// CPU and memory held back from agents (for system daemons benchkite does not see).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<Reserved>,

    /// Drain agents gracefully (running jobs finish) and start none.
    #[serde(default)]
    pub maintenance: bool,
}

/// Resources held back from agents on a node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reserved {
    /// CPU held back, e.g. `2` or `1500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))").message("reserved.cpu must be a non-negative quantity such as '2' or '1500m'"))]
    pub cpu: Option<Quantity>,
    /// Memory held back, e.g. `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))").message("reserved.memory must be a non-negative quantity such as '16Gi'"))]
    pub memory: Option<Quantity>,
}

/// CPU and memory as quantities.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeResources {
    pub cpu: String,
    pub memory: String,
}

/// What one agent slot of one GPU gets: whole cores and MiB-rounded memory.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceShare {
    /// Whole CPU cores (exclusive under the static CPU manager).
    pub cpu: i64,
    /// Memory as a quantity in Mi, e.g. `131072Mi`.
    pub memory: String,
}

/// What the current per-GPU share was sized from. The share is re-sized only when its
/// agents no longer fit the node or what it was sized from changed (the GpuNode spec, i.e.
/// its generation, or the controller's headroom).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShareBasis {
    /// `metadata.generation` of the GpuNode when the share was sized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Headroom kept free of agents when the share was sized.
    pub headroom: NodeResources,
    /// Node allocatable when the share was sized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<NodeResources>,
    /// Requests of other pods holding resources on the node when the share was sized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_requests: Option<NodeResources>,
    /// GPUs the share divided by.
    #[serde(default)]
    pub gpus: i64,
}

/// A node's GPUs as a DRA driver publishes them in its ResourceSlices.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GpuNodeDra {
    /// The driver, e.g. `gpu.nvidia.com`.
    pub driver: String,
    /// Whole, exclusive GPUs: the devices an agent can be given.
    pub whole_gpus: i64,
    /// False while the driver is rewriting its slices (some of the newest generation missing).
    pub complete: bool,
    /// Since when the driver's slices for the node have been missing or incomplete (a kubelet
    /// or driver restart republishes them): the last complete inventory is kept meanwhile, and
    /// DRA pools keep their agents on the node but start none, for at most the controller's
    /// `--node-not-ready-toleration-seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsettled_since: Option<String>,
    /// Every published device, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DraDeviceStatus>,
}

/// One published device.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DraDeviceStatus {
    /// Device name in the slice, e.g. `gpu-3`.
    pub name: String,
    /// The driver's resource pool of the device (NVIDIA's: the node's name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// `gpu`, `mig`, or the driver's other type.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// The driver lets several claims allocate it (`allowMultipleAllocations`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// A MIG instance's GPU (`parentUUID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_uuid: Option<String>,
    /// Counter sets it consumes (partitionable devices share them with their siblings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counter_sets: Vec<String>,
    /// Why no agent is given this device (absent: a whole, exclusive GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusable: Option<String>,
    /// The ResourceClaim (`namespace/name`) the scheduler allocated the device to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_to: Option<String>,
    /// The AgentPool (`namespace/name`) whose agent holds it, when that claim is an agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_pool: Option<String>,
}

/// An agent pod placed on this node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlacedAgent {
    /// `<namespace>/<pool>`.
    pub pool: String,
    pub pod: String,
    pub phase: String,
}

/// Observed state of a GpuNode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Node this GpuNode describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `nvidia` or `amd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Product as the node labels name it, e.g. `NVIDIA-H100-80GB-HBM3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Short GPU type used in agent tags, e.g. `h100`, `mi300x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// GPU family, e.g. `hopper`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Compute architecture, e.g. `sm_90`, `sm_89`, `gfx942`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// The extended resource that counts the GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// GPUs the node offers (allocatable of `resourceName`; with DRA, its whole, exclusive
    /// GPUs; served both ways, the larger of the two, counted once).
    #[serde(default)]
    pub gpu_count: i64,
    /// GPUs the device plugin's resource offers (allocatable of `resourceName`), when it is
    /// offered: what device-plugin pools use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_gpus: Option<i64>,
    /// Memory of one GPU in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "gpuMemoryMiB")]
    pub gpu_memory_mib: Option<i64>,
    /// Driver version from the node labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// Node allocatable CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<NodeResources>,
    /// Requests of the node's pods that benchkite does not manage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_requests: Option<NodeResources>,
    /// The exclusive share one GPU's agent gets; absent when too small to run agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_gpu_share: Option<ResourceShare>,
    /// What `perGpuShare` was sized from (absent for shares sized before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_basis: Option<ShareBasis>,
    /// True when the GPUs are shared (time-slicing or MPS replicas): not exclusive.
    #[serde(default)]
    pub shared: bool,
    /// Agent pods on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<PlacedAgent>,
    /// Number of agent pods on this node.
    #[serde(default)]
    pub agent_count: i64,
    /// Node labels about GPUs copied onto the GpuNode (also set as its labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_labels: BTreeMap<String, String>,
    /// How the GPUs are offered to pods: `DevicePlugin` (the extended resource
    /// `resourceName`), `DynamicResourceAllocation` (devices of the DRA driver's
    /// ResourceSlices, see `dra`) or `Both` (the same GPUs both ways: `gpuCount` counts them
    /// once; pools of one kind only should use the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_through: Option<String>,
    /// The devices the controller's DRA driver (`--dra-driver`) publishes for the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<GpuNodeDra>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Per-slot certification and drift (written by the certification manager, under its own
    /// field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certification: Option<super::certification::NodeCertification>,
}

impl GpuNode {
    /// The Kubernetes Node this object describes.
    pub fn node_name(&self) -> &str {
        match &self.spec.node_name {
            Some(n) if !n.is_empty() => n,
            _ => self.metadata.name.as_deref().unwrap_or_default(),
        }
    }

    /// True when the controller created this GpuNode from a Node (so it may delete it).
    pub fn is_discovered(&self) -> bool {
        self.metadata.labels.as_ref().and_then(|l| l.get(DISCOVERED_LABEL)).is_some_and(|v| v == "true")
    }
}
