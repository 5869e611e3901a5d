//! A DRA pool's Kubernetes side: its ResourceClaimTemplate, and each agent's allocation
//! written onto its pod for the agent to read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::super::{Context, DraCaches, agent_pool_uid};
use crate::api::{AgentPool, FIELD_MANAGER};
use crate::error::{Error, Result, is_not_found};
use crate::fleet::cached_pod::CachedPod;
use crate::fleet::dra;
use crate::fleet::pod::{LABEL_MANAGED_BY, LABEL_POOL, MANAGED_BY, label_value};

/// What a DRA pool's reconcile knows before planning.
pub(super) struct DraSetup {
    /// The template the agent pods reference (`None`: it could not be applied; no agent is
    /// created).
    pub template: Option<String>,
    /// A problem the user must fix (reason, message), e.g. the DeviceClass does not exist.
    pub problem: Option<(&'static str, String)>,
}

/// A pool's template as last applied by this process.
#[derive(Clone, Debug)]
pub struct TemplateMemo {
    name: String,
    at: Instant,
    problem: Option<(&'static str, String)>,
}

/// How long an applied template (and the DeviceClass check) is trusted before the next
/// apply: a template deleted by hand comes back within this.
const TEMPLATE_TTL: Duration = Duration::from_secs(300);

/// `consumable_capacity` values.
const CEL_UNKNOWN: u8 = 0;
const CEL_HAS_ALLOW_MULTIPLE: u8 = 1;
const CEL_NO_ALLOW_MULTIPLE: u8 = 2;

/// Whether the API server refused a template because its CEL does not know
/// `device.allowMultipleAllocations` (DRAConsumableCapacity off).
pub(super) fn refused_allow_multiple(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 && s.message.contains("allowMultipleAllocations"))
}

/// The template a pool's agents reference, built (not applied) for the API server's CEL.
fn build(caches: &DraCaches, pool: &AgentPool, ns: &str, exclude_shared: bool) -> Result<ResourceClaimTemplate> {
    let spec = pool.spec.dra.clone().unwrap_or_default();
    let selector = dra::selector_for(&caches.driver, &spec.requirements(), exclude_shared);
    let count = i64::from(pool.spec.gpus_per_agent.max(1));
    let owner = pool.controller_owner_ref(&()).ok_or(Error::MissingField("metadata.uid"))?;
    let owner = OwnerReference { block_owner_deletion: Some(true), ..owner };
    let mut body = dra::claim_template("", ns, owner, &spec.device_class_name, count, &selector);
    body.metadata.name = Some(dra::template_name(&pool.name_any(), &body.spec));
    Ok(body)
}

/// Keeps the pool's ResourceClaimTemplate (server-side apply; a changed request is a new
/// template, see [`dra::template_name`]), removes the pool's older ones and checks that the
/// DeviceClass exists. Applied again only when the template changes or every
/// [`TEMPLATE_TTL`]. A failure becomes the pool's problem, not the reconcile's error.
pub(super) async fn ensure_template(ctx: &Context, caches: &DraCaches, pool: &AgentPool) -> Result<DraSetup> {
    let ns = pool.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = pool.name_any();
    let uid = pool.uid().unwrap_or_default();
    let cel = caches.consumable_capacity.load(Ordering::Relaxed);
    let mut body = build(caches, pool, &ns, cel != CEL_NO_ALLOW_MULTIPLE)?;
    let mut template = body.metadata.name.clone().unwrap_or_default();
    let memo = caches.templates.lock().ok().and_then(|m| m.get(&uid).cloned());
    if let Some(m) = memo.filter(|m| m.name == template && m.at.elapsed() < TEMPLATE_TTL) {
        return Ok(DraSetup { template: Some(template), problem: m.problem });
    }

    let api: Api<ResourceClaimTemplate> = Api::namespaced(ctx.client.clone(), &ns);
    let apply = |body: &ResourceClaimTemplate| {
        let mut value = serde_json::to_value(body).unwrap_or_default();
        value["apiVersion"] = json!("resource.k8s.io/v1");
        value["kind"] = json!("ResourceClaimTemplate");
        let (api, name) = (api.clone(), body.metadata.name.clone().unwrap_or_default());
        async move { api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value)).await }
    };
    let mut applied = apply(&body).await;
    if let Err(e) = &applied
        && cel != CEL_NO_ALLOW_MULTIPLE
        && refused_allow_multiple(e)
    {
        // DRAConsumableCapacity is off: no device is shareable, the clause is not needed.
        tracing::info!(
            "the API server's CEL has no device.allowMultipleAllocations (DRAConsumableCapacity off): claim templates select without it"
        );
        caches.consumable_capacity.store(CEL_NO_ALLOW_MULTIPLE, Ordering::Relaxed);
        body = build(caches, pool, &ns, false)?;
        template = body.metadata.name.clone().unwrap_or_default();
        applied = apply(&body).await;
    }
    if let Err(e) = applied {
        let message = format!("applying ResourceClaimTemplate {ns}/{template}: {e}");
        tracing::warn!(pool = %format!("{ns}/{name}"), error = %message, "DRA pool's claim template not applied");
        return Ok(DraSetup { template: None, problem: Some(("ClaimTemplateFailed", message)) });
    }
    if cel == CEL_UNKNOWN {
        let _ = caches.consumable_capacity.compare_exchange(
            CEL_UNKNOWN,
            CEL_HAS_ALLOW_MULTIPLE,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    delete_templates_except(&api, &ns, &name, &uid, Some(&template)).await;

    let spec = pool.spec.dra.clone().unwrap_or_default();
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
    if let Ok(mut m) = caches.templates.lock() {
        m.insert(uid, TemplateMemo { name: template.clone(), at: Instant::now(), problem: problem.clone() });
    }
    Ok(DraSetup { template: Some(template), problem })
}

/// A pool that no longer asks for DRA: its templates go (once per controller start).
pub(super) async fn forget_templates(ctx: &Context, caches: &DraCaches, pool: &AgentPool) {
    let uid = pool.uid().unwrap_or_default();
    let known = caches.templates.lock().ok().and_then(|mut m| m.remove(&uid)).is_some();
    if known && let Some(ns) = pool.namespace() {
        let api: Api<ResourceClaimTemplate> = Api::namespaced(ctx.client.clone(), &ns);
        delete_templates_except(&api, &ns, &pool.name_any(), &uid, None).await;
    }
}

/// Deletes the pool's templates but `keep`. Their claims stay with the pods that have them
/// (a claim is made when its pod is created), and those pods roll.
async fn delete_templates_except(
    api: &Api<ResourceClaimTemplate>,
    ns: &str,
    pool: &str,
    uid: &str,
    keep: Option<&str>,
) {
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_POOL}={}", label_value(pool));
    let listed = match api.list_metadata(&ListParams::default().labels(&selector)).await {
        Ok(l) => l.items,
        Err(e) => {
            tracing::warn!(pool = %format!("{ns}/{pool}"), error = %e, "listing the pool's ResourceClaimTemplates failed");
            return;
        }
    };
    for t in listed {
        let old = t.name_any();
        if Some(old.as_str()) == keep || !t.owner_references().iter().any(|o| o.uid == uid) {
            continue;
        }
        match api.delete(&old, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(pool = %format!("{ns}/{pool}"), template = %old, "deleted outdated ResourceClaimTemplate")
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(template = %old, error = %e, "deleting outdated ResourceClaimTemplate failed"),
        }
    }
}

/// Writes each agent pod's allocation (the devices the scheduler allocated to its claim, with
/// their UUIDs from the node's slices) into its annotation [`dra::ANNOTATION_ALLOCATION`],
/// which the agent reads through a downward-API file. Returns the writes that failed.
pub(super) async fn publish_allocations(ctx: &Context, caches: &DraCaches, pool_uid: &str, ns: &str) -> Vec<String> {
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
        // The devices as the driver publishes them now (the GpuNode's status may lag): an
        // allocation is written once every device is known, with its UUID.
        let Some(node) = pod.node_name.as_deref() else { continue };
        let devices = caches.inventory(node).map(|inv| dra::node_status(&inv));
        let Some(allocation) = dra::allocation_of(claim, &caches.driver, devices.as_ref()) else { continue };
        let known = devices
            .as_ref()
            .is_some_and(|d| allocation.devices.iter().all(|a| d.devices.iter().any(|x| x.name == a.name)));
        if !known {
            continue;
        }
        let value = allocation.encode();
        if pod.allocation_annotation.as_deref() == Some(value.as_str()) {
            continue;
        }
        let name = pod.name_any();
        // The UID guards the write: a pod of the same name that replaced this one (slots keep
        // their names) never gets this pod's devices (the API server refuses a changed UID).
        let patch = json!({"metadata": {"uid": uid, "annotations": {dra::ANNOTATION_ALLOCATION: value}}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), devices = ?allocation.devices.iter().map(|d| &d.name).collect::<Vec<_>>(), "agent's GPU allocation written")
            }
            Err(e) if is_not_found(&e) => {}
            // The pod was replaced by one of the same name: the API server refuses to change
            // a UID ("metadata.uid: … field is immutable"); the next reconcile sees the new pod.
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("metadata.uid") => {}
            Err(e) => errors.push(format!("writing the allocation of pod {name}: {e}")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "message": message, "reason": "Invalid", "code": code,
            }))
            .unwrap_or_else(|e| panic!("status: {e}")),
        )
    }

    #[test]
    fn a_cel_without_allow_multiple_allocations_is_recognised_and_nothing_else() {
        // What a 1.34 API server answers (DRAConsumableCapacity off).
        let refused = api_error(
            422,
            "ResourceClaimTemplate.resource.k8s.io \"p-gpus-1\" is invalid: spec.spec.devices.requests[0].exactly.selectors[0].cel.expression: Invalid value: \"...\": compilation failed: ERROR: <input>:1:106: undefined field 'allowMultipleAllocations'",
        );
        assert!(refused_allow_multiple(&refused));
        assert!(!refused_allow_multiple(&api_error(
            422,
            "spec.spec.devices.requests[0].exactly.count: Invalid value: 0"
        )));
        assert!(!refused_allow_multiple(&api_error(403, "allowMultipleAllocations is forbidden")));
    }
}
