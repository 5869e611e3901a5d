//! Keeps a pool's PodDisruptionBudget (see `fleet::pdb` for what it says and why).

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::api::{AgentPool, FIELD_MANAGER};
use crate::fleet::pdb::{agent_pdb, pdb_matches};

/// Applies the pool's PodDisruptionBudget (server-side apply, the controller's field
/// manager) when it is missing or says something else than `min_available`. A read first:
/// the budget changes only when the pool's size or rollout changes, and a read is cheaper
/// for the API server than an apply. The error names the budget.
pub(super) async fn ensure(client: &Client, pool: &AgentPool, min_available: i64) -> Result<(), String> {
    let ns = pool.namespace().unwrap_or_default();
    let desired = agent_pdb(pool, min_available);
    let name = desired.name_any();
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let what = |verb: &str, e: kube::Error| format!("{verb} PodDisruptionBudget {ns}/{name}: {e}");
    match api.get_opt(&name).await {
        Ok(Some(observed)) if pdb_matches(&observed, &desired) => return Ok(()),
        Ok(_) => {}
        Err(e) => return Err(what("reading", e)),
    }
    let mut patch = serde_json::to_value(&desired).map_err(|e| format!("encoding PodDisruptionBudget {name}: {e}"))?;
    if let Some(obj) = patch.as_object_mut() {
        obj.insert("apiVersion".into(), "policy/v1".into());
        obj.insert("kind".into(), "PodDisruptionBudget".into());
        obj.remove("status");
    }
    tracing::info!(pdb = %format!("{ns}/{name}"), min_available, "applying PodDisruptionBudget");
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map(|_| ())
        .map_err(|e| what("applying", e))
}
