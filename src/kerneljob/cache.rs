//! Result cache for identical submissions (issue 19; seed 001's "result caching"): what a
//! cache entry is, what decides its key, which jobs and results may use it, when an entry
//! still serves and which entries go. Pure; [`super::cache_io`] reads and writes the
//! entries.
//!
//! - **Key**: SHA-256 over everything that decides a result: the evaluation config as the
//!   runner receives it (sources, which carry kernelbot's harness; tests, benchmarks, seed,
//!   mode, arch, timeouts, ranking, CUDA settings), the image, the job's env and build
//!   overrides, the pool's agent spec (agent image, env, hooks: the harness's surroundings),
//!   the GPU model the pool's nodes all have, the namespace (a tenant is never served
//!   another tenant's result) and benchkite's version (the runner).
//! - **Who**: test and benchmark jobs of a pool with `resultCache`, whose sources come from no
//!   Secret (a key over secret content would be an oracle for it). Leaderboard, private and
//!   profile runs never.
//! - **What**: only a finished evaluation (`Succeeded`, `EvaluationFinished`: the kernel
//!   passed or failed its checks) with its whole result; never an infrastructure failure, a
//!   truncated result or a result marked suspect by drift.
//! - **When**: an entry serves until `maxAgeHours` after its original finished and, in a pool
//!   that certifies its slots, only while the slot that measured it keeps the certification
//!   epoch it had (a slot quarantined or certified again since drops it).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::agentpool::{AgentSpec, PoolResultCache};
use crate::api::kerneljob::{
    CachePolicy, CachedFrom, KernelJobSpec, KernelJobStatus, Mode, ResultStatus, SummaryStatus,
};
use crate::api::{AgentPool, KernelJob};
use crate::contract::EvalConfig;

/// Label of a cache entry ConfigMap; its value is the pool's name.
pub const ENTRY_LABEL: &str = "benchkite.dev/result-cache";
/// Annotation of an entry: when its original finished (RFC 3339), for eviction by age from
/// metadata alone.
pub const FINISHED_ANNOTATION: &str = "benchkite.dev/finished-at";
/// Entry names: this prefix and the key (64 hex digits).
pub const ENTRY_PREFIX: &str = "bkcache-";
/// Build meta-data carrying the key the build was created under.
pub const KEY_META: &str = "benchkite-cache-key";
/// The entry's record and the copy of `result.json`.
pub const ENTRY_DATA: &str = "entry.json";
pub const RESULT_DATA: &str = "result.json";
/// Condition reason of a job served from the cache.
pub const HIT_REASON: &str = "CachedResult";
/// The Ready reason of a finished evaluation (`machine::finished_phase`).
const EVALUATED: &str = "EvaluationFinished";

/// The pool's cache settings when `spec` may use and feed it; otherwise why not.
pub fn config_for<'a>(spec: &KernelJobSpec, pool: &'a AgentPool) -> Result<&'a PoolResultCache, &'static str> {
    let cfg = pool.spec.result_cache.as_ref().filter(|c| c.enabled).ok_or("the pool has no result cache")?;
    if !matches!(spec.mode, Mode::Test | Mode::Benchmark) {
        return Err("only test and benchmark runs are cached");
    }
    if spec.sources_from.iter().any(|f| f.secret.is_some()) {
        return Err("a job with sources from a Secret is not cached");
    }
    Ok(cfg)
}

/// Whether the cache may serve `spec` (it may still feed it: `Bypass` refreshes the entry).
pub fn may_serve(spec: &KernelJobSpec) -> bool {
    spec.result_cache.unwrap_or_default() == CachePolicy::Use
}

/// The one GPU model (GpuNode `status.product`) every node the pool selects has; `None` when
/// they differ or one is unknown: which model a job gets is then the scheduler's choice, and
/// the pool is not cached.
pub fn pool_gpu_model(pool: &AgentPool, product_of: impl Fn(&str) -> Option<String>) -> Option<String> {
    let nodes = &pool.status.as_ref()?.nodes;
    let mut models = nodes.iter().map(|n| product_of(&n.name));
    let first = models.next()??;
    models.all(|m| m.as_deref() == Some(first.as_str())).then_some(first)
}

/// Everything that decides a result.
#[derive(Clone, Debug)]
pub struct KeyInputs<'a> {
    pub namespace: &'a str,
    /// `namespace/name` of the pool.
    pub pool: &'a str,
    pub config: &'a EvalConfig,
    pub spec: &'a KernelJobSpec,
    pub agent: &'a AgentSpec,
    pub gpu_model: &'a str,
}

/// The cache key: SHA-256 (hex) of the inputs' canonical JSON.
pub fn key(i: &KeyInputs<'_>) -> String {
    let s = i.spec;
    let doc = json!({
        "v": 1,
        "benchkite": env!("CARGO_PKG_VERSION"),
        "namespace": i.namespace,
        "pool": i.pool,
        "config": i.config,
        "image": s.image,
        "env": s.env,
        "pipeline": s.pipeline,
        "branch": s.branch,
        "commit": s.commit,
        "gpus": s.gpus,
        "agent": i.agent,
        "gpuModel": i.gpu_model,
    });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

pub fn entry_name(key: &str) -> String {
    format!("{ENTRY_PREFIX}{key}")
}

/// A cache entry (`entry.json`): the original's status pieces a hit copies, and where it
/// was measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub key: String,
    pub from: CachedFrom,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummaryStatus>,
    pub result: ResultStatus,
    pub gpu_model: String,
    /// Node, slot and certification epoch of the fingerprint (empty when unknown).
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub slot: String,
    #[serde(default)]
    pub epoch: String,
}

/// The entry a finished job leaves, or why it leaves none. `product_of`: a GpuNode's model.
pub fn entry_of(
    job: &KernelJob,
    status: &KernelJobStatus,
    key: &str,
    gpu_model: &str,
    product_of: impl Fn(&str) -> Option<String>,
) -> Result<Entry, &'static str> {
    if status.phase != crate::api::kerneljob::Phase::Succeeded || status.cached_from.is_some() {
        return Err("not a finished evaluation of its own");
    }
    let ready = crate::api::condition::find(&status.conditions, crate::api::kerneljob::conditions::READY);
    if ready.map(|c| c.reason.as_str()) != Some(EVALUATED) {
        return Err("not a finished evaluation");
    }
    let result = status.result.clone().ok_or("no result")?;
    if result.truncated || !result.success {
        return Err("an incomplete result");
    }
    if job.metadata.labels.as_ref().is_some_and(|l| l.contains_key(crate::api::certification::SUSPECT_LABEL)) {
        return Err("a result suspect of drift");
    }
    let fp = result.system.as_ref().and_then(|s| s.fingerprint.as_ref());
    let (node, slot, epoch) =
        fp.map(|f| (f.node.clone(), f.slot.clone(), f.certification_epoch.clone())).unwrap_or_default();
    // Measured on another model than the pool's (its nodes changed meanwhile): not this key.
    if !node.is_empty() && product_of(&node).is_some_and(|p| p != gpu_model) {
        return Err("measured on another GPU model");
    }
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    Ok(Entry {
        key: key.to_string(),
        from: CachedFrom {
            job: format!("{ns}/{name}"),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            completion_time: status.completion_time.clone(),
            build: status.attempts.last().and_then(|a| a.build.clone()),
            entry: entry_name(key),
        },
        message: status.message.clone(),
        passed: status.passed,
        score: status.score,
        summary: status.summary.clone(),
        result,
        gpu_model: gpu_model.to_string(),
        node,
        slot,
        epoch,
    })
}

/// The entry's ConfigMap (server-side apply body) in the pool's namespace, owned by the pool,
/// with a copy of `result.json` when the original kept one (a result read from the build's
/// meta-data has none); `None` when over `max_bytes` (a ConfigMap holds 1 MiB).
pub fn entry_configmap(pool: &AgentPool, entry: &Entry, raw: Option<&[u8]>, max_bytes: usize) -> Option<Value> {
    let text = match raw {
        Some(r) => Some(std::str::from_utf8(r).ok()?),
        None => None,
    };
    let record = serde_json::to_string(entry).ok()?;
    if text.map_or(0, str::len) + record.len() > max_bytes {
        return None;
    }
    let owner = json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "name": pool.metadata.name, "uid": pool.metadata.uid.as_ref()?,
    });
    let finished = entry.from.completion_time.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    let mut data = serde_json::Map::new();
    data.insert(ENTRY_DATA.into(), record.into());
    if let Some(t) = text {
        data.insert(RESULT_DATA.into(), t.into());
    }
    Some(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": entry_name(&entry.key),
            "namespace": pool.metadata.namespace,
            "ownerReferences": [owner],
            "labels": {
                "app.kubernetes.io/managed-by": "benchkite",
                ENTRY_LABEL: crate::fleet::pod::label_value(pool.metadata.name.as_deref().unwrap_or_default()),
            },
            "annotations": { FINISHED_ANNOTATION: finished, "benchkite.dev/cached-from": entry.from.job },
        },
        "data": data,
    }))
}

/// Reads an entry ConfigMap's data: the record and the copy of `result.json`, if any.
pub fn parse_entry(data: &BTreeMap<String, String>) -> Result<(Entry, Option<Vec<u8>>), String> {
    let record = data.get(ENTRY_DATA).ok_or("no entry.json")?;
    let entry: Entry = serde_json::from_str(record).map_err(|e| format!("entry.json: {e}"))?;
    Ok((entry, data.get(RESULT_DATA).map(|r| r.as_bytes().to_vec())))
}

/// Whether `entry` may serve a job with `key` now, or why not. `slot_epoch(node, slot)`: the
/// epoch the slot is certified at now (`None`: not certified); asked only when the pool
/// certifies its slots.
pub fn serves(
    entry: &Entry,
    key: &str,
    now: Timestamp,
    cfg: &PoolResultCache,
    certifies: bool,
    slot_epoch: impl Fn(&str, &str) -> Option<String>,
) -> Result<(), &'static str> {
    if entry.key != key {
        return Err("the entry is for another key");
    }
    let finished = entry.from.completion_time.as_ref().map(|t| t.0).ok_or("the entry has no finish time")?;
    let age = now.duration_since(finished).as_secs();
    if age > i64::from(cfg.max_age_hours.max(1)) * 3600 {
        return Err("the entry is older than maxAgeHours");
    }
    if certifies {
        if entry.node.is_empty() || entry.epoch.is_empty() {
            return Err("the entry's slot certification is unknown");
        }
        if slot_epoch(&entry.node, &entry.slot).as_deref() != Some(entry.epoch.as_str()) {
            return Err("the slot that measured it is no longer certified at that epoch");
        }
    }
    Ok(())
}

/// The entries to delete so a pool keeps at most `maxEntries`, none older than
/// `maxAgeHours`: the expired ones, then the oldest. `entries`: (name, original finished).
pub fn evictions(entries: &[(String, Option<Timestamp>)], cfg: &PoolResultCache, now: Timestamp) -> Vec<String> {
    let max_age = i64::from(cfg.max_age_hours.max(1)) * 3600;
    let mut keep: Vec<(Timestamp, &String)> = Vec::new();
    let mut gone = Vec::new();
    for (name, finished) in entries {
        match finished {
            Some(t) if now.duration_since(*t).as_secs() <= max_age => keep.push((*t, name)),
            _ => gone.push(name.clone()),
        }
    }
    let max = usize::try_from(cfg.max_entries.max(1)).unwrap_or(usize::MAX);
    if keep.len() > max {
        keep.sort();
        let over = keep.len() - max;
        gone.extend(keep.drain(..over).map(|(_, n)| n.clone()));
    }
    gone
}

/// A hit: the entry and its copy of `result.json` (if the original kept one).
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub entry: Entry,
    pub raw: Option<Vec<u8>>,
}

/// The status of a job served by `hit`: the original's verdict, score, summary and result,
/// finished now, with `cachedFrom`; the caller sets the conditions.
pub fn hit_status(before: &KernelJobStatus, hit: &Hit, now: Timestamp) -> KernelJobStatus {
    let e = &hit.entry;
    let mut s = before.clone();
    s.phase = crate::api::kerneljob::Phase::Succeeded;
    s.passed = e.passed;
    s.score = e.score;
    s.summary = e.summary.clone();
    s.result = Some(e.result.clone());
    s.cached_from = Some(e.from.clone());
    s.build = None;
    s.queue_position = None;
    s.estimated_start_time = None;
    s.start_time = s.start_time.take().or(Some(Time(now)));
    s.completion_time = Some(Time(now));
    s
}

/// The message of a hit.
pub fn hit_message(hit: &Hit) -> String {
    let e = &hit.entry;
    let when = e.from.completion_time.as_ref().map(|t| format!(" (finished {})", t.0)).unwrap_or_default();
    format!(
        "served from the pool's result cache: identical to KernelJob {}{when}, whose result it carries; no build was created ({})",
        e.from.job, e.message
    )
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
