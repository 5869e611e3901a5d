//! The result cache's reads and writes (the rules are in [`super::cache`]): a job's key
//! (from the job itself and its sources), the look-up before its first submission, the
//! entry its result leaves, and eviction.
//!
//! Entries are ConfigMaps named by their key in the pool's namespace, so a look-up is one
//! GET by name (exact even right after another job stored the entry); a metadata-only watch
//! of the entries (by label) tells eviction how many a pool holds and how old they are.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::cache::{self, Hit, KeyInputs};
use super::controller::{JobCtx, fetch_job, key_of, target};
use super::memory::CacheProbe;
use crate::api::FIELD_MANAGER;
use crate::api::agentpool::PoolResultCache;
use crate::api::{AgentPool, KernelJob};

/// The key of `job` with its pool's cache settings: `Ok(None)` when the job is not cached
/// (its pool has no cache, its mode, its sources, a pool of several GPU models, a job gone).
async fn compute(
    ctx: &JobCtx,
    cached: &KernelJob,
) -> Result<Option<(String, PoolResultCache, Arc<AgentPool>)>, String> {
    let Some(pool) = pool_of(ctx, cached) else { return Ok(None) };
    let cfg = match cache::config_for(&cached.spec, &pool) {
        Ok(c) => c,
        Err(why) => {
            tracing::debug!(job = %key_of(cached), why, "result cache: not cached");
            return Ok(None);
        }
    };
    let Some(model) = cache::pool_gpu_model(&pool, |n| product_of(ctx, n)) else {
        tracing::debug!(job = %key_of(cached), "result cache: not cached: the pool's nodes have no single known GPU model");
        return Ok(None);
    };
    let job = match fetch_job(ctx, cached).await {
        Ok(Some(j)) => j,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let Ok(t) = target(&job, ctx) else { return Ok(None) };
    let sources = super::submit::resolve_sources(&job, ctx).await?;
    let Ok(config) = super::submission::eval_config(&job.spec, sources, t.arch.as_deref()) else { return Ok(None) };
    tracing::debug!(job = %key_of(cached), "result cache: key computed");
    let ns = job.namespace().unwrap_or_default();
    let pool_key = format!("{}/{}", pool.namespace().unwrap_or_default(), pool.name_any());
    let key = cache::key(&KeyInputs {
        namespace: &ns,
        pool: &pool_key,
        config: &config,
        spec: &job.spec,
        agent: &pool.spec.agent,
        gpu_model: &model,
    });
    Ok(Some((key, cfg.clone(), pool)))
}

fn pool_of(ctx: &JobCtx, job: &KernelJob) -> Option<Arc<AgentPool>> {
    let name = job.spec.pool.as_ref()?;
    let ns = job.spec.pool_namespace.clone().or_else(|| job.namespace())?;
    ctx.pools.get(&ObjectRef::new(name).within(&ns))
}

fn product_of(ctx: &JobCtx, node: &str) -> Option<String> {
    ctx.gpunodes.get(&ObjectRef::new(node)).and_then(|g| g.status.as_ref()?.product.clone())
}

/// The epoch `slot` of `node` is certified at now for the pool `pool` (`namespace/name`).
fn slot_epoch(ctx: &JobCtx, pool: &str, node: &str, slot: &str) -> Option<String> {
    let g = ctx.gpunodes.get(&ObjectRef::new(node))?;
    let slots = &g.status.as_ref()?.certification.as_ref()?.slots;
    let s = slots.iter().find(|s| s.slot == slot && s.pool == pool)?;
    (s.state == crate::api::certification::states::CERTIFIED).then(|| s.epoch.clone()).flatten()
}

/// Whether a job may be looked up: a first attempt of a job in a pool with a cache.
pub(super) fn wanted(ctx: &JobCtx, job: &KernelJob) -> bool {
    pool_of(ctx, job).is_some_and(|p| cache::config_for(&job.spec, &p).is_ok())
}

/// Looks `job` up in its pool's cache (once per process: the caller keeps the answer).
pub(super) async fn probe(ctx: &JobCtx, job: &KernelJob) -> CacheProbe {
    let (key, cfg, pool) = match compute(ctx, job).await {
        Ok(Some(k)) => k,
        Ok(None) => return CacheProbe::Miss(None),
        Err(e) => {
            tracing::warn!(job = %key_of(job), error = %e, "result cache: the job's key could not be computed; it runs");
            return CacheProbe::Miss(None);
        }
    };
    if !cache::may_serve(&job.spec) {
        return CacheProbe::Miss(Some(key));
    }
    let pool_ns = pool.namespace().unwrap_or_default();
    let name = cache::entry_name(&key);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &pool_ns);
    let cm = match api.get_opt(&name).await {
        Ok(Some(cm)) => cm,
        Ok(None) => {
            crate::metrics::global().result_cache("miss");
            return CacheProbe::Miss(Some(key));
        }
        Err(e) => {
            tracing::warn!(job = %key_of(job), error = %e, "result cache: reading the entry failed; the job runs");
            return CacheProbe::Miss(Some(key));
        }
    };
    let parsed = cache::parse_entry(&cm.data.unwrap_or_default());
    let verdict = parsed.as_ref().map_err(|e| e.clone()).and_then(|(entry, _)| {
        let pool_key = format!("{pool_ns}/{}", pool.name_any());
        cache::serves(entry, &key, Timestamp::now(), &cfg, pool.spec.certification.is_some(), |n, s| {
            slot_epoch(ctx, &pool_key, n, s)
        })
        .map_err(str::to_string)
    });
    match (parsed, verdict) {
        (Ok((entry, raw)), Ok(())) => {
            crate::metrics::global().result_cache("hit");
            tracing::info!(job = %key_of(job), from = %entry.from.job, "result cache: served");
            CacheProbe::Hit(Arc::new(Hit { entry, raw }))
        }
        (_, Err(why)) => {
            crate::metrics::global().result_cache("stale");
            tracing::info!(job = %key_of(job), entry = %name, why = %why, "result cache: the entry no longer serves; removed");
            delete_entry(&api, &name).await;
            CacheProbe::Miss(Some(key))
        }
        // Unreachable: a parse error is a verdict error.
        (Err(_), Ok(())) => CacheProbe::Miss(Some(key)),
    }
}

async fn delete_entry(api: &Api<ConfigMap>, name: &str) -> bool {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => {
            tracing::warn!(entry = %name, error = %e, "result cache: deleting an entry failed");
            false
        }
    }
}

/// Stores the result of a finished job under `expected` (the key its submission was
/// computed under: from this process's memory, else from its build's meta-data). Nothing is
/// stored when the key computed now differs (a `sourcesFrom` ConfigMap changed since the
/// submission; or meta-data a build rewrote), or the result is not one the cache keeps.
pub(super) async fn store(
    ctx: &JobCtx,
    job: &KernelJob,
    status: &crate::api::kerneljob::KernelJobStatus,
    raw: Option<&[u8]>,
    expected: &str,
) {
    let (key, cfg, pool) = match compute(ctx, job).await {
        Ok(Some(k)) => k,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(job = %key_of(job), error = %e, "result cache: the job's key could not be computed; its result is not cached");
            return;
        }
    };
    if key != expected {
        tracing::info!(job = %key_of(job), "result cache: the job's inputs changed since its submission; its result is not cached");
        return;
    }
    let Some(model) = cache::pool_gpu_model(&pool, |n| product_of(ctx, n)) else { return };
    let entry = match cache::entry_of(job, status, &key, &model, |n| product_of(ctx, n)) {
        Ok(e) => e,
        Err(why) => {
            tracing::debug!(job = %key_of(job), why, "result cache: not stored");
            return;
        }
    };
    let Some(body) = cache::entry_configmap(&pool, &entry, raw, ctx.config.max_configmap_bytes) else {
        tracing::debug!(job = %key_of(job), "result cache: the result is too large for an entry");
        return;
    };
    let pool_ns = pool.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &pool_ns);
    let name = cache::entry_name(&key);
    if let Err(e) = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await {
        tracing::warn!(job = %key_of(job), error = %e, "result cache: storing the entry failed");
        return;
    }
    crate::metrics::global().result_cache("stored");
    evict(ctx, &api, &pool, &cfg, &name).await;
}

/// Deletes the pool's expired entries and its oldest beyond `maxEntries` (`just`: the entry
/// just stored, which the watch may not show yet).
async fn evict(ctx: &JobCtx, api: &Api<ConfigMap>, pool: &AgentPool, cfg: &PoolResultCache, just: &str) {
    let pool_ns = pool.namespace().unwrap_or_default();
    let label = crate::fleet::pod::label_value(&pool.name_any());
    let mut entries: Vec<(String, Option<Timestamp>)> = ctx
        .cache_entries
        .state()
        .iter()
        .filter(|m| m.namespace().as_deref() == Some(pool_ns.as_str()))
        .filter(|m| m.labels().get(cache::ENTRY_LABEL) == Some(&label))
        .map(|m| {
            let finished = m.annotations().get(cache::FINISHED_ANNOTATION).and_then(|t| t.parse::<Timestamp>().ok());
            (m.name_any(), finished)
        })
        .collect();
    if !entries.iter().any(|(n, _)| n == just) {
        entries.push((just.to_string(), Some(Timestamp::now())));
    }
    for name in cache::evictions(&entries, cfg, Timestamp::now()) {
        if delete_entry(api, &name).await {
            crate::metrics::global().result_cache("evicted");
        }
    }
}

/// The metadata-only cache of entry ConfigMaps (by label) and the watch that fills it.
pub fn entries_cache(
    client: Client,
    only: Option<&str>,
) -> (Store<PartialObjectMeta<ConfigMap>>, impl std::future::Future<Output = ()> + Send + 'static + use<>) {
    let (store, writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
    let api: Api<PartialObjectMeta<ConfigMap>> = match only {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let config = watcher::Config::default().labels(cache::ENTRY_LABEL).any_semantic();
    let run = async move {
        use futures::StreamExt;
        watcher(api, config)
            .modify(|m| m.metadata.managed_fields = None)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| futures::future::ready(()))
            .await;
    };
    (store, run)
}
