//! AgentPool: a Buildkite queue served by one agent pod per GPU on the GpuNodes it selects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, LabelSelectorRequirement, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::conditions_schema;
use super::gpunode::ResourceShare;
use crate::fleet::rollout::MaxUnavailable;

/// Condition types an AgentPool reports.
pub mod conditions {
    /// Every desired agent is Running and Ready (kstatus `Ready`).
    pub const READY: &str = "Ready";
    /// Agents are being created, replaced or drained.
    pub const PROGRESSING: &str = "Progressing";
    /// Something stops the pool from reaching its desired agents (the reason says what).
    pub const DEGRADED: &str = "Degraded";
    /// Another, older pool already claims some selected nodes.
    pub const CONFLICT: &str = "Conflict";
    /// The Buildkite pipeline KernelJobs on the pool's queue build on is ready: the one
    /// benchkite manages for the queue (created and kept in sync), or the one
    /// `spec.buildkite.pipeline` names, checked.
    pub const PIPELINE_READY: &str = "PipelineReady";
    /// The Secret with the queue's result key (which signs the agents' results) is written.
    pub const RESULT_KEY_READY: &str = "ResultKeyReady";
    /// With `spec.autoscaling`: how many agents the demand asks for and why (True: the pool
    /// follows its demand; False: it cannot, e.g. the demand is unknown).
    pub const SCALED: &str = "Scaled";
}

/// Agent tag keys benchkite sets itself; `agent.tags` may not override them.
pub const MANAGED_TAGS: &[&str] = &["queue", "gpu", "vendor", "arch", "node", "slot"];

/// Environment variables benchkite sets itself; `agent.env` may not override them.
pub const MANAGED_ENV: &[&str] = &[
    "BUILDKITE_AGENT_TOKEN",
    "BUILDKITE_AGENT_TAGS",
    "BUILDKITE_AGENT_NAME",
    "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB",
    "BUILDKITE_AGENT_PRIORITY",
    "BUILDKITE_HOOKS_PATH",
    "KERNELBOT_CPUS",
    "KERNELBOT_MEMORY",
    "KERNELBOT_GPU_INDEX",
    "BENCHKITE_NODE_NAME",
];

/// Desired state of an AgentPool.
#[allow(clippy::duplicated_attributes)] // repeated printcolumn(...) arguments are intended
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "benchkite.dev",
    version = "v1alpha1",
    kind = "AgentPool",
    plural = "agentpools",
    shortname = "ap",
    category = "benchkite",
    namespaced,
    status = "AgentPoolStatus",
    doc = "A Buildkite queue served by one agent pod per GPU on the GpuNodes it selects.",
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.selectedNodes"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredAgents"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyAgents"),
    printcolumn(name = "Updated", type_ = "integer", json_path = ".status.updatedAgents"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpusClaimed"),
    printcolumn(name = "Waiting", type_ = "integer", json_path = ".status.kernelJobs.waiting"),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.kernelJobs.running"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused", priority = 1),
    printcolumn(name = "Pipeline", type_ = "string", json_path = ".status.pipeline.slug", priority = 1),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolSpec {
    /// Buildkite queue key the agents serve (the agent tag `queue=<queue>`).
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 100").message("queue must be 1 to 100 characters long"))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]*$')").message("queue may contain only letters, digits, '.', '_' and '-', and must start with a letter or digit"))]
    pub queue: String,

    /// Which GpuNodes serve this queue (a label selector over GpuNode labels, which mirror
    /// the Node's GPU labels). `{}` selects every GpuNode.
    pub gpu_node_selector: GpuNodeSelector,

    /// GPUs per agent (multi-GPU agents for multi-GPU jobs).
    #[serde(default = "default_gpus_per_agent")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 16").message("gpusPerAgent must be between 1 and 16"))]
    pub gpus_per_agent: i32,

    /// The agent pods.
    pub agent: AgentSpec,

    /// Run no agents (existing ones drain gracefully).
    #[serde(default)]
    pub paused: bool,

    /// Buildkite-side settings of the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildkite: Option<PoolBuildkite>,

    /// How agents are replaced when the pool's spec, image or per-GPU share changes, and how
    /// fast maintenance and cordon drains proceed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<PoolStrategy>,

    /// Certify each GPU slot by ranking parity against a reference suite before its agent
    /// serves, and watch it for drift with a canary (see the README, "Numbers you can trust").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certification: Option<super::certification::PoolCertification>,

    /// Fair queueing: KernelJobs wait in benchkite until an agent of the pool is free, then
    /// the most deserving goes first: by priority, then by its submitter's recent usage, then
    /// by age. Without it, jobs are submitted as soon as the request budget allows and
    /// Buildkite runs them in order of priority and creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queueing: Option<PoolQueueing>,

    /// Capacity that follows demand: run only as many agents as the pool's unfinished
    /// KernelJobs need plus `minIdle` spare ones, up to every slot (or `maxAgents`), and give
    /// the other GPUs back. Without it, every slot runs an agent, always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<PoolAutoscaling>,

    /// Result cache for identical submissions: a test or benchmark KernelJob identical in
    /// everything that decides its result to one this pool evaluated finishes at once with
    /// that result (`status.cachedFrom` names the original) and no build. Leaderboard,
    /// private and profile runs are never served from it. Without it, every job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_cache: Option<PoolResultCache>,

    /// Request each agent's GPUs through Dynamic Resource Allocation (`resource.k8s.io/v1`)
    /// instead of the device plugin's extended resource: benchkite keeps a
    /// ResourceClaimTemplate asking for `gpusPerAgent` whole, exclusive GPUs (never a MIG
    /// instance or a device the driver lets claims share) of the product and memory given
    /// here, the agent pods reference it, and the scheduler allocates. Slots are the
    /// devices of a node that match. Needs the controller's `--dra-driver` (chart:
    /// `fleet.dra.enabled`). Without it, agents request the device plugin's resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<PoolDra>,
}

/// How a DRA pool's agents ask for their GPUs (see `AgentPoolSpec.dra`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolDra {
    /// The DeviceClass the claims name (default `gpu.nvidia.com`, NVIDIA's class of whole
    /// GPUs). It must select devices of the controller's `--dra-driver`.
    #[serde(default = "default_device_class")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("deviceClassName must be a DNS subdomain such as 'gpu.nvidia.com'"))]
    pub device_class_name: String,
    /// Only GPUs whose `productName` attribute is exactly this, e.g. `NVIDIA H100 80GB HBM3`
    /// (`kubectl get gpunodes -o yaml`: `status.dra.devices[].productName`). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 128").message("productName must be 1 to 128 characters long"))]
    pub product_name: Option<String>,
    /// Only GPUs with at least this much memory (a quantity, e.g. `40Gi`). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.size() <= 32 && isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("minMemory must be a positive quantity such as '40Gi'"))]
    pub min_memory: Option<String>,
}

impl Default for PoolDra {
    fn default() -> Self {
        PoolDra { device_class_name: default_device_class(), product_name: None, min_memory: None }
    }
}

fn default_device_class() -> String {
    crate::fleet::dra::NVIDIA_DRIVER.to_string()
}

impl PoolDra {
    /// What each GPU must be.
    pub fn requirements(&self) -> crate::fleet::dra::GpuRequirements {
        crate::fleet::dra::GpuRequirements { product: self.product_name.clone(), min_memory: self.min_memory.clone() }
    }
}

/// A pool's result cache (see `AgentPoolSpec.resultCache`). Entries are ConfigMaps in the
/// pool's namespace, owned by the pool (deleted with it), each holding a copy of one
/// result: deleting the original job does not affect them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolResultCache {
    /// Off: nothing is looked up or stored (entries are kept). Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// At most this many entries; the oldest go first (default 1000).
    #[serde(default = "default_cache_entries")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("maxEntries must be between 1 and 100000"))]
    pub max_entries: i32,
    /// An entry serves this long after its original finished, hours (default 168, a week).
    #[serde(default = "default_cache_hours")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 8760").message("maxAgeHours must be between 1 and 8760"))]
    pub max_age_hours: i32,
}

impl Default for PoolResultCache {
    fn default() -> Self {
        PoolResultCache { enabled: true, max_entries: default_cache_entries(), max_age_hours: default_cache_hours() }
    }
}

fn default_cache_entries() -> i32 {
    1000
}

fn default_cache_hours() -> i32 {
    168
}

/// How a pool's agents follow its KernelJobs (see `AgentPoolSpec.autoscaling`).
///
/// Desired agents = running + waiting KernelJobs + `minIdle`, at most the slots of the
/// pool's usable nodes and `maxAgents`. More agents start at once (within seconds of a
/// job's creation); fewer only after the demand has stayed lower for
/// `scaleDownDelaySeconds`, and only idle agents are removed (an agent that just took a
/// job finishes it: SIGTERM stops it gracefully). Slots are filled in a stable order,
/// certified slots first, so a slot keeps its certification across scale-down.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxAgents) || self.minIdle <= self.maxAgents").message("minIdle may not exceed maxAgents"))]
pub struct PoolAutoscaling {
    /// Off: every slot runs an agent, as without `autoscaling`. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Ready agents kept idle beyond the demand (0: scale to zero when no job is unfinished).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100000").message("minIdle must be between 0 and 100000"))]
    pub min_idle: i32,
    /// At most this many agents (default: one per slot of the usable nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100000").message("maxAgents must be between 0 and 100000"))]
    pub max_agents: Option<i32>,
    /// How long the demand must have been lower before agents are removed, seconds
    /// (default 60; 0 removes idle agents at once).
    #[serde(default = "default_scale_down_delay")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 86400").message("scaleDownDelaySeconds must be between 0 and 86400"))]
    pub scale_down_delay_seconds: i32,
}

impl Default for PoolAutoscaling {
    fn default() -> Self {
        PoolAutoscaling { enabled: true, min_idle: 0, max_agents: None, scale_down_delay_seconds: 60 }
    }
}

fn default_scale_down_delay() -> i32 {
    60
}

/// How a pool orders and admits its KernelJobs (see `AgentPoolSpec.queueing`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolQueueing {
    /// Half-life of a submitter's usage (GPU-seconds of its jobs' runs, decayed), minutes.
    #[serde(default = "default_half_life")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10080").message("usageHalfLifeMinutes must be between 1 and 10080"))]
    pub usage_half_life_minutes: i32,
    /// Builds that may wait for an agent beyond the free ones (submitted ahead so an agent
    /// that frees up finds work at once).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("submitAhead must be between 0 and 1000"))]
    pub submit_ahead: i32,
    /// Seconds a job is expected to take before the pool has measured any (the usage a job
    /// is charged when admitted, and the estimated start of waiting jobs).
    #[serde(default = "default_expected_seconds")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 86400").message("expectedJobSeconds must be between 1 and 86400"))]
    pub expected_job_seconds: i32,
    /// Per submitter: at most this many jobs admitted and unfinished at once (0: no limit).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("maxRunningPerSubmitter must not be negative"))]
    pub max_running_per_submitter: i32,
    /// Per submitter: at most this many jobs admitted per minute (0: no limit).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("maxAdmissionsPerMinute must not be negative"))]
    pub max_admissions_per_minute: i32,
}

fn default_half_life() -> i32 {
    10
}

fn default_expected_seconds() -> i32 {
    60
}

/// Which KernelJobs may target a pool (an admin's setting: a job cannot grant itself a pool).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolKernelJobs {
    /// KernelJobs of namespaces whose labels match this selector (a label selector over
    /// Namespace labels; `kubernetes.io/metadata.name` names one) may name the pool (with
    /// `spec.poolNamespace`). `{}` admits every namespace; absent: only the pool's own
    /// namespace, which is always admitted. The controller checks it before each build: a
    /// refused job stays Pending (`PoolNotAllowed`); a build created before a change runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<GpuNodeSelector>,
}

impl AgentPoolSpec {
    /// The namespace selector of `spec.buildkite.kernelJobs`, if any.
    pub fn job_namespace_selector(&self) -> Option<&GpuNodeSelector> {
        self.buildkite.as_ref()?.kernel_jobs.as_ref()?.namespace_selector.as_ref()
    }
}

/// How a pool replaces and drains agents.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolStrategy {
    /// The rolling update (the only strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// Bounds on a rolling update of the agents.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// How many agents may be unavailable at once for voluntary disruptions: agents rolled
    /// for a changed spec, image or share, agents drained from nodes in maintenance or
    /// cordoned, and evictions (the pool's PodDisruptionBudget). A number (at least 1) or a
    /// percentage of the pool's agents (`1%`..`100%`, rounded down, at least 1 agent).
    /// Default `10%`. A rolled agent finishes its running job first (SIGTERM, within the
    /// pod's terminationGracePeriodSeconds). Involuntary losses (node gone or NotReady
    /// beyond its toleration, failed or finished pods) are replaced without waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 1 : self.matches('^(100|[1-9][0-9]?)%$')").message("maxUnavailable must be an integer of at least 1 or a percentage from 1% to 100%"))]
    pub max_unavailable: Option<IntOrString>,
}

impl AgentPoolSpec {
    /// `strategy.rollingUpdate.maxUnavailable`, or the default (10%). A value the schema
    /// should have refused falls back to the most careful budget, one agent.
    pub fn max_unavailable(&self) -> MaxUnavailable {
        match self.strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.max_unavailable.as_ref()) {
            None => MaxUnavailable::DEFAULT,
            Some(v) => MaxUnavailable::parse(v).unwrap_or(MaxUnavailable::Count(1)),
        }
    }
}

/// Buildkite-side settings of a pool's queue.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolBuildkite {
    /// Create the cluster queue when it does not exist (agents refuse to connect to a
    /// queue that does not exist: the most common setup failure).
    #[serde(default)]
    pub create_queue: bool,
    /// Cluster of the queue and of its managed pipeline: a UUID (or a name). Default: the
    /// controller's `--buildkite-cluster`, else the organization's default cluster for new
    /// pipelines, else its only cluster, else the one named "Default cluster".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 100").message("clusterId must be 1 to 100 characters long"))]
    pub cluster_id: Option<String>,
    /// Description of a created queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Slug of a pipeline of your own that KernelJobs on this pool build on, instead of the
    /// one benchkite creates and keeps in sync for the queue. The controller checks its
    /// settings (queue named literally, checkout skipped, `result.json` artifact, no
    /// intermediate-build skipping or canceling, cluster) and reports what is wrong in the
    /// `PipelineReady` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.size() <= 100 && self.matches('^[a-zA-Z0-9][a-zA-Z0-9-]*$')").message("pipeline must be a Buildkite pipeline slug: letters, digits and '-', starting with a letter or digit, at most 100 characters"))]
    pub pipeline: Option<String>,
    /// `timeout_in_minutes` of the managed pipeline's step (default: the controller's
    /// `--pipeline-step-timeout-minutes`, 60). It must cover compilation and every run of
    /// the slowest mode; an evaluation that exceeds it is canceled and never retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10080").message("stepTimeoutMinutes must be between 1 and 10080 (a week)"))]
    pub step_timeout_minutes: Option<i32>,
    /// Which KernelJobs may build on the queue. Default: only those of the pool's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_jobs: Option<PoolKernelJobs>,
}

/// The pipeline KernelJobs on the pool's queue build on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolPipelineStatus {
    /// Pipeline slug.
    pub slug: String,
    /// The pipeline on Buildkite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// True when benchkite created it and keeps it in sync; false for
    /// `spec.buildkite.pipeline`.
    #[serde(default)]
    pub managed: bool,
}

/// Live state of the pool's queue, from Buildkite's agent metrics.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub scheduled_jobs: i64,
    pub running_jobs: i64,
    pub waiting_jobs: i64,
    pub idle_agents: i64,
    pub busy_agents: i64,
    pub connected_agents: i64,
    /// When Buildkite reported these numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
}

fn default_gpus_per_agent() -> i32 {
    1
}

/// A label selector over GpuNodes, validated by the API server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuNodeSelector {
    /// Labels that must match exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "match_labels_schema")]
    #[x_kube(validation = Rule::new("self.all(k, k.size() <= 316 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))").message("matchLabels keys must be valid label keys such as 'nvidia.com/gpu.product'"))]
    #[x_kube(validation = Rule::new("self.all(k, self[k].size() <= 63 && self[k].matches('^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$'))").message("matchLabels values must be valid label values: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<SelectorRequirement>,
}

fn match_labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    super::bounded_string_map(64, 63)
}

fn tags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    super::bounded_string_map(32, 256)
}

fn selector_values_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    super::bounded_string_list(64, 63)
}

/// One set-based requirement of a [`GpuNodeSelector`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.operator == 'In' || self.operator == 'NotIn') ? (has(self.values) && self.values.size() > 0) : (!has(self.values) || self.values.size() == 0)").message("values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"))]
pub struct SelectorRequirement {
    /// Label key.
    #[schemars(length(max = 316))]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 316 && self.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$')").message("key must be a valid label key such as 'nvidia.com/gpu.product'"))]
    pub key: String,
    /// One of In, NotIn, Exists, DoesNotExist.
    pub operator: SelectorOperator,
    /// Values for In and NotIn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "selector_values_schema")]
    pub values: Vec<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl GpuNodeSelector {
    /// The equivalent Kubernetes label selector.
    pub fn to_label_selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.clone()),
            match_expressions: (!self.match_expressions.is_empty()).then(|| {
                self.match_expressions
                    .iter()
                    .map(|e| LabelSelectorRequirement {
                        key: e.key.clone(),
                        operator: format!("{:?}", e.operator),
                        values: (!e.values.is_empty()).then(|| e.values.clone()),
                    })
                    .collect()
            }),
        }
    }

    /// Whether a GpuNode with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// The agent pods of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Agent image. Defaults to the controller's `--agent-image` (a pinned benchkite agent
    /// image with the `benchkite` runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() >= 1 && !self.contains(' ')").message("image must be a non-empty image reference without spaces"))]
    pub image: Option<String>,

    /// The Secret key holding the Buildkite agent token. The controller never reads it:
    /// it is handed to the agent container by reference.
    pub token_secret_ref: SecretKeyRef,

    /// Extra agent tags (`key: value`), added after the managed ones (queue, gpu, vendor,
    /// arch, node, slot).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "tags_schema")]
    #[x_kube(validation = Rule::new("self.all(k, !(k in ['queue', 'gpu', 'vendor', 'arch', 'node', 'slot']))").message("tags may not set queue, gpu, vendor, arch, node or slot: benchkite sets those itself"))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$') && !self[k].contains(',') && !self[k].contains('='))").message("tag keys may contain only letters, digits, '.', '_' and '-'; tag values may not contain ',' or '='"))]
    pub tags: BTreeMap<String, String>,

    /// Extra environment of the agent container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(e, !(e.name in ['BUILDKITE_AGENT_TOKEN', 'BUILDKITE_AGENT_TAGS', 'BUILDKITE_AGENT_NAME', 'BUILDKITE_AGENT_DISCONNECT_AFTER_JOB', 'BUILDKITE_AGENT_PRIORITY', 'BUILDKITE_HOOKS_PATH', 'KERNELBOT_CPUS', 'KERNELBOT_MEMORY', 'KERNELBOT_GPU_INDEX', 'BENCHKITE_NODE_NAME']))").message("env may not set variables benchkite manages (BUILDKITE_AGENT_TOKEN, _TAGS, _NAME, _DISCONNECT_AFTER_JOB, _PRIORITY, BUILDKITE_HOOKS_PATH, KERNELBOT_CPUS, KERNELBOT_MEMORY, KERNELBOT_GPU_INDEX, BENCHKITE_NODE_NAME): use tokenSecretRef, tags, ephemeral and priority"))]
    pub env: Vec<EnvVar>,

    /// Extra environment sources (ConfigMaps, Secrets) of the agent container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// Disconnect after one job, so every job gets a fresh pod.
    #[serde(default = "default_true")]
    pub ephemeral: bool,

    /// Agent priority (`BUILDKITE_AGENT_PRIORITY`): higher-priority agents get jobs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,

    /// Agent hooks (e.g. `environment`, `pre-command`) from a ConfigMap, mounted executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksSource>,

    /// Pod-level overrides.
    #[serde(default)]
    pub pod: PodOverrides,
}

fn default_true() -> bool {
    true
}

/// A key of a Secret in the pool's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 253").message("tokenSecretRef.name must name a Secret"))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_token_key")]
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 253 && self.matches('^[-._a-zA-Z0-9]+$')").message("tokenSecretRef.key must be a valid Secret key"))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".to_string()
}

/// Where agent hooks come from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HooksSource {
    /// ConfigMap whose keys are hook file names.
    pub config_map: String,
}

/// Pod-level settings of agent pods. Security settings are secure by default and change only
/// when set here explicitly.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Added to the tolerations of the node's GPU taints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Mounts of `volumes` into the agent container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// How long a running job may take to finish when its agent is stopped (drain, roll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 604800").message("terminationGracePeriodSeconds must be between 0 and 604800"))]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Service account of agent pods. Its token is still not mounted unless
    /// `automountServiceAccountToken` is set to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Mount a service-account token into agent pods (user code runs there: default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// Replaces the default container security context (no privilege escalation, all
    /// capabilities dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Replaces the default pod security context (seccomp RuntimeDefault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
}

/// State of one selected node from the pool's point of view.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolNodeStatus {
    /// GpuNode name.
    pub name: String,
    /// Active, Conflict, Maintenance, NotReady, NotReadyTolerated, Cordoned, NodeNotFound,
    /// ShareTooSmall, NotExclusive, NoGpus, Paused.
    pub state: String,
    /// GPUs this pool claims on the node.
    #[serde(default)]
    pub gpus: i64,
    /// Agent pods desired on the node.
    #[serde(default)]
    pub desired: i64,
    /// Agent pods Running and Ready.
    #[serde(default)]
    pub ready: i64,
    /// Resources of one agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_resources: Option<ResourceShare>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Observed state of an AgentPool.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// GpuNodes the selector matches.
    #[serde(default)]
    pub selected_nodes: i64,
    /// Agent pods the pool should run.
    #[serde(default)]
    pub desired_agents: i64,
    /// Agent pods Running and Ready.
    #[serde(default)]
    pub ready_agents: i64,
    /// Live agent pods built from the current spec, image and share.
    #[serde(default)]
    pub updated_agents: i64,
    /// Agents unavailable now (desired, or still draining from a node in maintenance or
    /// cordoned, but not Running and Ready, or terminating).
    #[serde(default)]
    pub unavailable_agents: i64,
    /// `spec.strategy.rollingUpdate.maxUnavailable` resolved to a number of agents.
    #[serde(default)]
    pub max_unavailable_agents: i64,
    /// GPUs claimed by the pool's agents.
    #[serde(default)]
    pub gpus_claimed: i64,
    /// Per selected node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<PoolNodeStatus>,
    /// The queue's live state (when an agent metrics token is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// The Buildkite pipeline KernelJobs on the queue build on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PoolPipelineStatus>,
    /// The pool's KernelJobs: waiting, running, per submitter (when the KernelJob controller
    /// runs in the fleet's process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_jobs: Option<PoolJobsStatus>,
    /// What autoscaling decided (with `spec.autoscaling`; the `Scaled` condition says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<PoolAutoscalingStatus>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// What autoscaling decided for a pool.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolAutoscalingStatus {
    /// Agents the pool's usable nodes can hold (one per slot), capped by `maxAgents`.
    #[serde(default)]
    pub slots: i64,
    /// Unfinished KernelJobs (waiting + running); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<i64>,
    /// Agents the demand asks for now: demand + `minIdle`, at most `slots`.
    #[serde(default)]
    pub recommended_agents: i64,
    /// Agents the pool runs (the recommendation after the scale-down delay; busy agents
    /// are never removed).
    #[serde(default)]
    pub desired_agents: i64,
    /// Agents running a Buildkite job when a scale-down was last considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_agents: Option<i64>,
}

/// Label naming who submitted a KernelJob (a user, a team, a platform); without it, the
/// job's namespace is its submitter.
pub const SUBMITTER_LABEL: &str = "benchkite.dev/submitter";

/// The KernelJobs of a pool that have not finished.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolJobsStatus {
    /// Not yet running: waiting to be submitted (Pending) or for an agent (Submitted).
    pub waiting: i64,
    /// An agent runs their build.
    pub running: i64,
    /// Creation time of the oldest waiting job: its wait is now minus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_waiting_since: Option<Time>,
    /// Per submitter (label `benchkite.dev/submitter`, else the namespace), most jobs first;
    /// at most 20 (`otherSubmitters` counts the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submitters: Vec<SubmitterJobs>,
    /// Submitters not listed in `submitters`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub other_submitters: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One submitter's unfinished jobs on a pool.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubmitterJobs {
    pub submitter: String,
    pub waiting: i64,
    pub running: i64,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt as _;

    use super::*;

    /// The schema refuses `agent.env` entries for every variable benchkite sets itself.
    #[test]
    fn the_env_rule_names_every_managed_variable() {
        let crd = serde_json::to_string(&AgentPool::crd()).unwrap_or_default();
        let rule = crd
            .split("\"rule\":\"")
            .map(|r| r.split('"').next().unwrap_or_default())
            .find(|r| r.contains("BUILDKITE_AGENT_TOKEN"))
            .unwrap_or_default()
            .to_string();
        assert!(!rule.is_empty(), "the env rule is in the CRD");
        for name in MANAGED_ENV {
            assert!(rule.contains(&format!("'{name}'")), "{name} is refused by the env rule: {rule}");
        }
    }
}
