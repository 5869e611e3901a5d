//! Certification of GPU slots (issue 18): what an AgentPool asks for
//! (`spec.certification`) and what a GpuNode records per slot
//! (`status.certification`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::certify::drift::{DriftConfig, SlotHistory};
use crate::certify::parity::ParityThresholds;

/// Label on a KernelJob whose result carries a drift canary: `true` until the certification
/// manager recorded it, then `recorded`.
pub const CANARY_LABEL: &str = "benchkite.dev/canary";
/// Label on a KernelJob measured on a slot after its last good canary, before the slot was
/// quarantined (value `drift`): re-run it.
pub const SUSPECT_LABEL: &str = "benchkite.dev/suspect";
/// Annotation beside [`SUSPECT_LABEL`] with the figures.
pub const SUSPECT_ANNOTATION: &str = "benchkite.dev/suspect";

/// Slot states in `status.certification.slots[].state`.
pub mod states {
    /// Its last certification passed; it serves ranked work.
    pub const CERTIFIED: &str = "Certified";
    /// Its last certification failed the gate.
    pub const FAILED: &str = "Failed";
    /// Its canary drifted: its agent drains and it certifies again before serving.
    pub const QUARANTINED: &str = "Quarantined";
    /// The certification could not run (the suite, the runner): the message says why.
    pub const ERROR: &str = "Error";
    /// Its certification no longer holds (the node's driver or product changed, or it is
    /// older than `recertifyAfterHours`): its agent drains and the next one certifies.
    pub const EXPIRED: &str = "Expired";
}

/// How a pool certifies the GPU slots its agents run on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolCertification {
    /// The reference suite: a ConfigMap in the pool's namespace (see the README for the
    /// format). Each agent pod's init container times it on the pod's GPU before the agent
    /// starts.
    pub suite: SuiteRef,
    /// Only certified slots run jobs: a slot that fails never starts its agent (the init
    /// container exits non-zero and the kubelet retries it with back-off). Without it,
    /// certification is advisory: every slot serves and its figures are recorded.
    #[serde(default)]
    pub require_certified: bool,
    /// The ranking-parity gate; absent fields take the seed's defaults (τ ≥ 0.96,
    /// inversion rate ≤ 2.5 %, top-20 overlap ≥ 80 %, top-20 mean displacement ≤ 4, tie
    /// epsilon 5 %, ≤ 20 tolerant rank changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<ParityThresholds>,
    /// The drift canary each agent times after its evaluations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// Certify each slot again once its certification is this old (its agent drains
    /// gracefully first; one slot of the pool at a time). Absent: only a new pod on an
    /// uncertified slot, a driver or product change of the node, or a quarantine certify
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 8760").message("recertifyAfterHours must be between 1 and 8760 (a year)"))]
    pub recertify_after_hours: Option<u32>,
}

/// Where a reference suite is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SuiteRef {
    /// ConfigMap name.
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 253").message("suite.configMap must name a ConfigMap"))]
    pub config_map: String,
    /// Key of the suite in the ConfigMap (default `suite.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]{1,253}$')").message("suite.key must be a ConfigMap key"))]
    pub key: Option<String>,
}

/// When the canary runs and what counts as drift.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Time the canary after every N evaluations of a slot (default 20; 0: never by count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100000").message("everyEvaluations must be between 0 and 100000"))]
    pub every_evaluations: Option<u32>,
    /// ... or when this many minutes passed since its last canary (default 60; 0: never by
    /// time). A slot's first evaluation always times it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100000").message("everyMinutes must be between 0 and 100000"))]
    pub every_minutes: Option<u32>,
    /// The drift bound (defaults: k = 5 robust standard deviations, at least 5 %, 3 good
    /// canaries before a slot's own history judges, 3 other slots of the model for the
    /// fleet, 20 canaries kept, 2 outliers in a row quarantine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftConfig>,
}

impl PoolCertification {
    /// The suite's ConfigMap key.
    pub fn suite_key(&self) -> &str {
        self.suite.key.as_deref().unwrap_or(crate::certify::suite::DEFAULT_KEY)
    }
    /// The thresholds, defaulted.
    pub fn thresholds(&self) -> ParityThresholds {
        self.thresholds.clone().unwrap_or_default()
    }
    /// The drift bound, defaulted.
    pub fn drift(&self) -> DriftConfig {
        self.canary.as_ref().and_then(|c| c.drift.clone()).unwrap_or_default()
    }
}

/// A GpuNode's certification: per slot, and summed up for `kubectl get gpunodes -o wide`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCertification {
    /// `<certified>/<slots with a record>`, e.g. `7/8`.
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub certified: i64,
    #[serde(default)]
    pub failed: i64,
    #[serde(default)]
    pub quarantined: i64,
    /// The lowest Kendall τ of the node's slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kendall_tau: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotCertification>,
    /// `Certified` (every recorded slot certified) and `Quarantined` (some slot drifted),
    /// with the figures in their messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::condition::conditions_schema")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// One slot's certification and drift record.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlotCertification {
    /// The slot (`KERNELBOT_GPU_INDEX`, the agent's `slot` tag).
    pub slot: String,
    /// `<namespace>/<pool>` whose suite certified it.
    #[serde(default)]
    pub pool: String,
    /// `Certified`, `Failed`, `Quarantined` or `Error`.
    pub state: String,
    /// The certification epoch (Unix seconds of the run that certified it); results carry it
    /// in their fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// When the last certification run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The gate's figures of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<ParityFigures>,
    /// Kernel → seconds of the last run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub times: BTreeMap<String, f64>,
    /// GPU model, UUID and driver the run measured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver: String,
    /// The node's driver and product (its GpuNode's status) when the slot was certified: a
    /// change certifies it again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_driver: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_product: String,
    /// The pod whose report this is (a report is read once).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    /// The canary's good history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRecord>,
    /// Why and since when the slot is quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
}

/// The figures of the ranking-parity gate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParityFigures {
    pub passed: bool,
    pub compared: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kendall_tau: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inversion_rate: Option<f64>,
    pub top_k: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k_overlap: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k_mean_displacement: Option<f64>,
    pub tolerant_rank_changes: u32,
}

/// A slot's canary: its good history and the last sample.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRecord {
    pub kernel: String,
    #[serde(flatten)]
    pub history: SlotHistory,
    /// The last canary time (seconds) and when it ran (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<i64>,
}

/// A quarantine.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    pub since: Option<Time>,
    /// The deviations that decided it.
    pub message: String,
    /// Results measured since this time (Unix seconds: the last good canary) are suspect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_since: Option<i64>,
}
