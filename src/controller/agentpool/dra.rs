//! A DRA pool's Kubernetes side: its ResourceClaimTemplate, and each agent's allocation
//! written onto its pod for the agent to read.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::super::{Context, DraCaches, agent_pool_uid};
use crate::api::{AgentPool, FIELD_MANAGER, GpuNode};
use crate::error::{Error, Result, is_not_found};
use crate::fleet::cached_pod::CachedPod;
use crate::fleet::dra;
use crate::fleet::pod::{LABEL_MANAGED_BY, LABEL_POOL, MANAGED_BY, label_value};

/// What a DRA pool's reconcile knows before planning.
pub(super) struct DraSetup {
    /// The template the agent pods reference.
    pub template: String,
    /// A problem the user must fix (reason, message), e.g. the DeviceClass does not exist.
    pub problem: Option<(&'static str, String)>,
}

/// Keeps the pool's ResourceClaimTemplate (server-side apply; a changed request is a new
/// template, see [`dra::template_name`]) and removes the pool's older ones. Checks that the
/// DeviceClass exists.
pub(super) async fn ensure_template(ctx: &Context, caches: &DraCaches, pool: &AgentPool) -> Result<DraSetup> {
    let ns = pool.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = pool.name_any();
    let spec = pool.spec.dra.clone().unwrap_or_default();
    let selector = dra::selector(&caches.driver, &spec.requirements());
    let count = i64::from(pool.spec.gpus_per_agent.max(1));
    let template = dra::template_name(&name, &spec.device_class_name, count, &selector);
    let owner = pool.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let mut body = dra::claim_template(&template, &ns, owner, &spec.device_class_name, count, &selector);
    body.metadata.owner_references = body.metadata.owner_references.map(|refs| {
        refs.into_iter()
            .map(|o| k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                block_owner_deletion: Some(true),
                ..o
            })
            .collect()
    });
    let api: Api<ResourceClaimTemplate> = Api::namespaced(ctx.client.clone(), &ns);
    let mut value =
        serde_json::to_value(&body).map_err(|source| Error::Serialize { what: "claim template", source })?;
    value["apiVersion"] = json!("resource.k8s.io/v1");
    value["kind"] = json!("ResourceClaimTemplate");
    api.patch(&template, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value))
        .await
        .map_err(Error::kube(format!("applying ResourceClaimTemplate {ns}/{template}")))?;

    // The pool's templates from before a change: their claims stay with the pods that have
    // them (a claim is made when its pod is created), and those pods roll.
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_POOL}={}", label_value(&name));
    let uid = pool.uid().unwrap_or_default();
    let stale: Vec<String> = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("listing ResourceClaimTemplates of {ns}/{name}")))?
        .items
        .into_iter()
        .filter(|t| t.owner_references().iter().any(|o| o.uid == uid))
        .map(|t| t.name_any())
        .filter(|t| *t != template)
        .collect();
    for old in stale {
        match api.delete(&old, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(pool = %format!("{ns}/{name}"), template = %old, "deleted outdated ResourceClaimTemplate")
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(template = %old, error = %e, "deleting outdated ResourceClaimTemplate failed"),
        }
    }

    let classes: Api<DeviceClass> = Api::all(ctx.client.clone());
    let problem = match classes.get_metadata_opt(&spec.device_class_name).await {
        Ok(Some(_)) => None,
        Ok(None) => Some((
            "DeviceClassNotFound",
            format!(
                "DeviceClass {} (spec.dra.deviceClassName) does not exist: install the DRA driver ({}) or name its class",
                spec.device_class_name, caches.driver
            ),
        )),
        // Without `get` on DeviceClasses the check is skipped; the scheduler then reports a
        // missing class on the agent pods.
        Err(kube::Error::Api(s)) if s.is_forbidden() => None,
        Err(e) => return Err(Error::kube(format!("checking DeviceClass {}", spec.device_class_name))(e)),
    };
    Ok(DraSetup { template, problem })
}

/// Writes each agent pod's allocation (the devices the scheduler allocated to its claim, with
/// their UUIDs from the node's slices) into its annotation [`dra::ANNOTATION_ALLOCATION`],
/// which the agent reads through a downward-API file. Returns the writes that failed.
pub(super) async fn publish_allocations(
    ctx: &Context,
    caches: &DraCaches,
    pool_uid: &str,
    ns: &str,
    gpunodes: &HashMap<String, &Arc<GpuNode>>,
) -> Vec<String> {
    let claims = caches.claims.state();
    let by_pod: HashMap<&str, &k8s_openapi::api::resource::v1::ResourceClaim> = claims
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(ns))
        .filter_map(|c| dra::claim_pod_uid(c).map(|uid| (uid, c.as_ref())))
        .collect();
    let pods: Vec<Arc<CachedPod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns) && agent_pool_uid(p) == Some(pool_uid))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !p.terminal())
        .collect();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut errors = Vec::new();
    for pod in pods {
        let Some(uid) = pod.metadata.uid.as_deref() else { continue };
        let Some(claim) = by_pod.get(uid) else { continue };
        let node = pod.gpunode_annotation.as_deref().and_then(|g| gpunodes.get(g));
        let dra_status = node.and_then(|g| g.status.as_ref()).and_then(|s| s.dra.as_ref());
        let Some(allocation) = dra::allocation_of(claim, &caches.driver, dra_status) else { continue };
        let value = allocation.encode();
        if pod.allocation_annotation.as_deref() == Some(value.as_str()) {
            continue;
        }
        let name = pod.name_any();
        let patch = json!({"metadata": {"annotations": {dra::ANNOTATION_ALLOCATION: value}}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), devices = ?allocation.devices.iter().map(|d| &d.name).collect::<Vec<_>>(), "agent's GPU allocation written")
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => errors.push(format!("writing the allocation of pod {name}: {e}")),
        }
    }
    errors
}
