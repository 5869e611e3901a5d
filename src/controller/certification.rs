//! The certification manager: reads each certifying pool's agent pods' reports (their init
//! container's termination message) and the drift canaries KernelJob results carry, keeps
//! every GpuNode's `status.certification` (its own field manager), quarantines drifting
//! slots (drains their agent: the next one certifies before serving) and marks the results
//! measured on a slot after its last good canary.
//!
//! One loop, every 2 s, in the fleet controllers' process: the ledger's arithmetic is pure
//! (`crate::certify::ledger`), the loop only reads and writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::json;

use super::Context;
use super::gpunode::publish;
use crate::api::certification::{CANARY_LABEL, NodeCertification, SUSPECT_ANNOTATION, SUSPECT_LABEL, states};
use crate::api::{AgentPool, GpuNode, KernelJob};
use crate::certify::ledger::{self, CanaryApplied, Note};
use crate::certify::suite::Suite;

/// Field manager of `status.certification`.
pub const FIELD_MANAGER: &str = "benchkite-certification";
const ROUND: Duration = Duration::from_secs(2);

/// Runs until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) {
    let mut m = Manager::default();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => m.round(&ctx).await,
        }
    }
}

#[derive(Default)]
struct Manager {
    /// GpuNode → its ledger as last written (ahead of the cache after a write).
    written: HashMap<String, NodeCertification>,
    /// `ns/configmap/key` → (resourceVersion, the suite or why not).
    suites: HashMap<String, (String, Result<Arc<Suite>, String>)>,
}

fn pool_key(p: &AgentPool) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

impl Manager {
    async fn suite(&mut self, ctx: &Context, pool: &AgentPool) -> Result<Arc<Suite>, String> {
        let Some(cert) = &pool.spec.certification else { return Err("the pool does not certify".into()) };
        let ns = pool.namespace().unwrap_or_default();
        let key = format!("{ns}/{}/{}", cert.suite.config_map, cert.suite_key());
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let cm = match api.get_opt(&cert.suite.config_map).await {
            Ok(Some(cm)) => cm,
            Ok(None) => return Err(format!("ConfigMap {ns}/{} not found", cert.suite.config_map)),
            Err(e) => {
                // Keep what was read before through an API hiccup.
                if let Some((_, Ok(s))) = self.suites.get(&key) {
                    return Ok(s.clone());
                }
                return Err(format!("reading ConfigMap {ns}/{}: {e}", cert.suite.config_map));
            }
        };
        let rv = cm.resource_version().unwrap_or_default();
        if let Some((seen, parsed)) = self.suites.get(&key)
            && *seen == rv
        {
            return parsed.clone();
        }
        let parsed = match cm.data.as_ref().and_then(|d| d.get(cert.suite_key())) {
            None => Err(format!("ConfigMap {ns}/{} has no key {}", cert.suite.config_map, cert.suite_key())),
            Some(text) => Suite::parse(text).map(Arc::new).map_err(|e| e.to_string()),
        };
        self.suites.insert(key, (rv, parsed.clone()));
        parsed
    }

    fn ledger(&mut self, ctx: &Context, gpunode: &str) -> NodeCertification {
        if let Some(c) = self.written.get(gpunode) {
            return c.clone();
        }
        ctx.gpunodes
            .state()
            .iter()
            .find(|g| g.name_any() == gpunode)
            .and_then(|g| g.status.as_ref()?.certification.clone())
            .unwrap_or_default()
    }

    async fn round(&mut self, ctx: &Context) {
        let pools: BTreeMap<String, Arc<AgentPool>> = ctx
            .pools
            .state()
            .into_iter()
            .filter(|p| p.spec.certification.is_some())
            .map(|p| (pool_key(&p), p))
            .collect();
        if pools.is_empty() {
            return;
        }
        let mut ledgers: BTreeMap<String, NodeCertification> = BTreeMap::new();
        let mut dirty: HashSet<String> = HashSet::new();
        let mut notes: Vec<(String, Note)> = Vec::new();
        let mut drains: Vec<(String, String, String)> = Vec::new(); // (pool key, gpunode, slot)
        let mut suspects: Vec<(String, String, i64, String)> = Vec::new(); // (node, slot, since, why)

        // Reports of the certifying pools' agent pods.
        for pod in ctx.pods.state() {
            let (Some(owner), Some((code, message))) = (&pod.agent_pool, &pod.certify) else { continue };
            let key = format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name);
            let Some(pool) = pools.get(&key) else { continue };
            let (Some(gpunode), Some(slot)) = (pod.gpunode_annotation.clone(), pod.slot_label.clone()) else {
                continue;
            };
            // A successful run without a message is no report (kwok, for one, marks init
            // containers Completed before anything ran): wait for one.
            if *code == 0 && message.trim().is_empty() {
                continue;
            }
            // The pod and the report it gave: a later report of the same pod is read too.
            let uid = format!("{}#{}", pod.metadata.uid.as_deref().unwrap_or_default(), short_hash(message));
            let mut ledger = match ledgers.remove(&gpunode) {
                Some(l) => l,
                None => self.ledger(ctx, &gpunode),
            };
            if ledger.slots.iter().any(|s| s.slot == slot && s.pod_uid == uid) {
                ledgers.insert(gpunode, ledger);
                continue;
            }
            let suite = self.suite(ctx, pool).await;
            let thresholds = pool.spec.certification.as_ref().map(|c| c.thresholds()).unwrap_or_default();
            let suite_ref = suite.as_deref().map_err(String::as_str);
            if let Some(applied) =
                ledger::apply_report(&mut ledger, &key, &slot, &uid, *code, message, suite_ref, &thresholds)
            {
                if let Some(since) = applied.ended_quarantine
                    && let Some(node) = node_of(ctx, &gpunode)
                {
                    suspects.push((node, slot.clone(), since, "drift (marked again once its agent was gone)".into()));
                }
                // What the node was when the slot certified: a change certifies it again.
                let (driver, product) = node_identity(ctx, &gpunode);
                if let Some(s) = ledger.slots.iter_mut().find(|s| s.slot == slot) {
                    s.node_driver = driver;
                    s.node_product = product;
                }
                notes.push((gpunode.clone(), applied.note));
                dirty.insert(gpunode.clone());
            }
            ledgers.insert(gpunode, ledger);
        }

        // Certifications that no longer hold: a driver or product change (at once: the node
        // changed), or their age (one slot of a pool at a time, so that a schedule never
        // drains a fleet at once).
        let now_s = Timestamp::now().as_second();
        let all: Vec<(String, NodeCertification)> = ctx
            .gpunodes
            .state()
            .iter()
            .map(|gn| {
                let name = gn.name_any();
                let l = ledgers.remove(&name).unwrap_or_else(|| self.ledger(ctx, &name));
                (name, l)
            })
            .collect();
        let mut renewing: HashSet<String> = all
            .iter()
            .flat_map(|(_, l)| l.slots.iter().filter(|s| s.state == states::EXPIRED).map(|s| s.pool.clone()))
            .collect();
        for (name, mut ledger) in all {
            let (driver, product) = node_identity(ctx, &name);
            for s in &mut ledger.slots {
                let Some(pool) = pools.get(&s.pool) else { continue };
                let max_age = pool
                    .spec
                    .certification
                    .as_ref()
                    .and_then(|c| c.recertify_after_hours)
                    .filter(|_| !renewing.contains(&s.pool))
                    .map(|h| i64::from(h) * 3600);
                if let Some(note) = ledger::expire(s, &driver, &product, now_s, max_age) {
                    renewing.insert(s.pool.clone());
                    drains.push((s.pool.clone(), name.clone(), s.slot.clone()));
                    notes.push((name.clone(), note));
                    dirty.insert(name.clone());
                }
            }
            if !ledger.slots.is_empty() {
                ledgers.insert(name, ledger);
            }
        }

        // Canaries: finished KernelJobs labelled by the KernelJob controller.
        let jobs: Api<KernelJob> = Api::all(ctx.client.clone());
        let labelled = match jobs.list(&ListParams::default().labels(&format!("{CANARY_LABEL}=true"))).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing KernelJobs with canaries failed");
                Vec::new()
            }
        };
        let gn_by_node: HashMap<String, (String, Option<String>)> = ctx
            .gpunodes
            .state()
            .iter()
            .map(|g| (g.node_name().to_string(), (g.name_any(), g.status.as_ref().and_then(|s| s.product.clone()))))
            .collect();
        let mut recorded: Vec<(String, &KernelJob)> = Vec::new();
        for job in &labelled {
            let system = job.status.as_ref().and_then(|s| s.result.as_ref()).and_then(|r| r.system.as_ref());
            let (Some(fp), Some(canary)) =
                (system.and_then(|s| s.fingerprint.as_ref()), system.and_then(|s| s.canary.as_ref()))
            else {
                mark_recorded(&jobs, job).await;
                continue;
            };
            let Some((gpunode, product)) = gn_by_node.get(&fp.node).cloned() else {
                mark_recorded(&jobs, job).await;
                continue;
            };
            // The drift bound of the pool the slot's record belongs to.
            let mut ledger = match ledgers.remove(&gpunode) {
                Some(l) => l,
                None => self.ledger(ctx, &gpunode),
            };
            let cfg = ledger
                .slots
                .iter()
                .find(|s| s.slot == fp.slot)
                .and_then(|s| pools.get(&s.pool))
                .and_then(|p| p.spec.certification.as_ref().map(|c| c.drift()))
                .unwrap_or_default();
            // The fleet: every other slot of the same product.
            let mut others: Vec<(String, NodeCertification)> = Vec::new();
            for (name, prod) in gn_by_node.values() {
                if prod == &product && name != &gpunode {
                    let l = ledgers.get(name).cloned().unwrap_or_else(|| self.ledger(ctx, name));
                    others.push((name.clone(), l));
                }
            }
            others.push((gpunode.clone(), ledger.clone()));
            let fleet =
                ledger::fleet_medians(others.iter().map(|(n, c)| (n.as_str(), c)), &gpunode, &fp.slot, &canary.kernel);
            let now = Timestamp::now().as_second();
            match ledger::apply_canary(
                &mut ledger,
                &fp.slot,
                &canary.kernel,
                canary.seconds,
                canary.at,
                &fleet,
                &cfg,
                now,
            ) {
                CanaryApplied::Duplicate | CanaryApplied::NoRecord => {}
                CanaryApplied::Good => {
                    dirty.insert(gpunode.clone());
                }
                CanaryApplied::Suspect(note) => {
                    dirty.insert(gpunode.clone());
                    notes.push((gpunode.clone(), note));
                }
                CanaryApplied::Quarantined { note, suspect_since } => {
                    dirty.insert(gpunode.clone());
                    let pool =
                        ledger.slots.iter().find(|s| s.slot == fp.slot).map(|s| s.pool.clone()).unwrap_or_default();
                    drains.push((pool, gpunode.clone(), fp.slot.clone()));
                    suspects.push((fp.node.clone(), fp.slot.clone(), suspect_since.unwrap_or(0), note.message.clone()));
                    notes.push((gpunode.clone(), note));
                }
            }
            ledgers.insert(gpunode.clone(), ledger);
            // Relabelled once the ledger holding it is written (below).
            recorded.push((gpunode, job));
        }

        // Write, then tell, then act (a drained slot must read Quarantined before its
        // replacement is built).
        let now = Timestamp::now();
        for name in &dirty {
            let Some(ledger) = ledgers.get_mut(name) else { continue };
            let generation =
                ctx.gpunodes.state().iter().find(|g| &g.name_any() == name).and_then(|g| g.metadata.generation);
            ledger::summarize(ledger, generation, now);
            if self.written.get(name) == Some(ledger) {
                continue;
            }
            let api: Api<GpuNode> = Api::all(ctx.client.clone());
            let patch =
                json!({"apiVersion": "benchkite.dev/v1alpha1", "kind": "GpuNode", "status": {"certification": ledger}});
            match api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
                Ok(_) => {
                    self.written.insert(name.clone(), ledger.clone());
                }
                Err(e) => tracing::warn!(gpunode = %name, error = %e, "writing the certification status failed"),
            }
        }
        // `recorded` means written: a canary whose ledger could not be written is read again.
        let mut failed_writes: HashSet<&String> = dirty.iter().collect();
        failed_writes.retain(|n| self.written.get(*n) != ledgers.get(*n));
        for (gpunode, job) in recorded {
            if !failed_writes.contains(&gpunode) {
                mark_recorded(&jobs, job).await;
            }
        }
        for (gpunode, note) in notes {
            if let Some(gn) = ctx.gpunodes.state().iter().find(|g| g.name_any() == gpunode) {
                let t = if note.warning { EventType::Warning } else { EventType::Normal };
                publish(ctx, gn.as_ref(), t, note.reason, "Certify", note.message.clone()).await;
            }
            tracing::info!(gpunode = %gpunode, reason = note.reason, "{}", note.message);
        }
        for (pool, gpunode, slot) in drains {
            drain(ctx, &pool, &gpunode, &slot).await;
        }
        for (node, slot, since, why) in suspects {
            mark_suspects(ctx, &node, &slot, since, &why).await;
        }
    }
}

/// The GpuNode's driver version and product now.
fn node_identity(ctx: &Context, gpunode: &str) -> (String, String) {
    let gn = ctx.gpunodes.state().into_iter().find(|g| g.name_any() == gpunode);
    let status = gn.as_ref().and_then(|g| g.status.as_ref());
    (
        status.and_then(|s| s.driver_version.clone()).unwrap_or_default(),
        status.and_then(|s| s.product.clone()).unwrap_or_default(),
    )
}

fn short_hash(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4])
}

fn node_of(ctx: &Context, gpunode: &str) -> Option<String> {
    ctx.gpunodes.state().iter().find(|g| g.name_any() == gpunode).map(|g| g.node_name().to_string())
}

async fn mark_recorded(jobs: &Api<KernelJob>, job: &KernelJob) {
    let api: Api<KernelJob> = Api::namespaced(jobs.clone().into_client(), &job.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"labels": {CANARY_LABEL: "recorded"}}});
    if let Err(e) = api.patch(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        tracing::debug!(job = %job.name_any(), error = %e, "relabelling a recorded canary failed");
    }
}

/// Drains a quarantined or expired slot's agent (gracefully: its running job finishes), once
/// the cache shows the slot no longer certified, so that its replacement certifies first.
async fn drain(ctx: &Context, pool: &str, gpunode: &str, slot: &str) {
    for _ in 0..50 {
        let seen = ctx.gpunodes.state().iter().any(|g| {
            g.name_any() == gpunode
                && g.status
                    .as_ref()
                    .and_then(|s| s.certification.as_ref())
                    .is_some_and(|c| c.slots.iter().any(|s| s.slot == slot && s.state != states::CERTIFIED))
        });
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ns, name) = pool.split_once('/').unwrap_or(("", pool));
    let Ok(slot_n) = slot.parse::<u32>() else { return };
    let pod = crate::fleet::pod::agent_pod_name(name, gpunode, slot_n);
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(&pod, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(pod = %pod, "drained the slot's agent: its next one certifies"),
        Err(e) if crate::error::is_not_found(&e) => {}
        Err(e) => tracing::warn!(pod = %pod, error = %e, "draining the quarantined slot's agent failed"),
    }
}

/// Labels (`benchkite.dev/suspect=drift`) every KernelJob measured on `node`/`slot` that
/// started at or after `since` (Unix seconds: its last good canary), with the reason as an
/// annotation.
async fn mark_suspects(ctx: &Context, node: &str, slot: &str, since: i64, why: &str) {
    let api: Api<KernelJob> = Api::all(ctx.client.clone());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            tracing::warn!(error = %e, "listing KernelJobs to mark suspect results failed");
            return;
        }
    };
    let mut marked = 0;
    for job in list {
        let Some(status) = &job.status else { continue };
        let fp = status.result.as_ref().and_then(|r| r.system.as_ref()).and_then(|s| s.fingerprint.as_ref());
        if !fp.is_some_and(|f| f.node == node && f.slot == slot) || job.labels().contains_key(SUSPECT_LABEL) {
            continue;
        }
        // Measured after the last good canary: started at or after it (second resolution),
        // and not the job that took that canary (it ran before its own canary).
        let attempt = status.attempts.last();
        let started = attempt.and_then(|a| a.started_at.as_ref().or(a.finished_at.as_ref())).map(|t| t.0.as_second());
        let own_canary = status.result.as_ref().and_then(|r| r.system.as_ref()).and_then(|s| s.canary.as_ref());
        if started.is_none_or(|t| t < since) || own_canary.is_some_and(|c| c.at == since) {
            continue;
        }
        let ns = job.namespace().unwrap_or_default();
        let jobs: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &ns);
        let note = format!("measured on {node} slot {slot} after its last good canary: {why}");
        let patch =
            json!({"metadata": {"labels": {SUSPECT_LABEL: "drift"}, "annotations": {SUSPECT_ANNOTATION: note}}});
        match jobs.patch(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                marked += 1;
                publish(ctx, &job, EventType::Warning, "SuspectResult", "Mark", note).await;
            }
            Err(e) => tracing::warn!(job = %job.name_any(), error = %e, "marking a suspect result failed"),
        }
    }
    tracing::info!(node, slot, since, marked, "marked the results measured since the last good canary");
}
