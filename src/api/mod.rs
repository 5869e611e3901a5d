//! The benchkite API: group `benchkite.dev`, version `v1alpha1`.
//!
//! Types here are the contract with users (kubectl, client libraries, GitOps tools): field
//! names, defaults and validation rules are what the API server enforces from the generated
//! CRDs in `crds/`.

pub mod agentpool;
pub mod certification;
pub mod condition;
pub mod gpunode;
pub mod jobenv;
pub mod kerneljob;

pub use agentpool::{AgentPool, AgentPoolSpec, AgentPoolStatus};
pub use condition::{ConditionSet, ConditionStatus};
pub use gpunode::{GpuNode, GpuNodeSpec, GpuNodeStatus};
pub use kerneljob::{KernelJob, KernelJobSpec, KernelJobStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every benchkite resource.
pub const GROUP: &str = "benchkite.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The field manager used for every server-side apply benchkite makes.
pub const FIELD_MANAGER: &str = "benchkite";

/// Schema of a string map with bounded size, so CEL rules over it stay within the API
/// server's cost budget.
pub(crate) fn bounded_string_map(max_properties: u64, max_value_length: u64) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": max_properties,
        "additionalProperties": { "type": "string", "maxLength": max_value_length },
    })
}

/// Schema of a list of bounded strings.
pub(crate) fn bounded_string_list(max_items: u64, max_length: u64) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": max_items,
        "items": { "type": "string", "maxLength": max_length },
    })
}

/// All CRDs, in the order they are written to `crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![("gpunodes", GpuNode::crd()), ("agentpools", AgentPool::crd()), ("kerneljobs", KernelJob::crd())]
}

/// Renders the CRDs as one multi-document YAML stream (what `benchkite crds` prints).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (_, crd) in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
