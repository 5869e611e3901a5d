//! The result cache (issue 19), on the local cluster with the real fleet and KernelJob
//! controllers and the simulator's agents running `benchkite run`: a test job identical to
//! one the pool evaluated finishes at once from the cache with `status.cachedFrom` and no
//! build (the simulator's create counter does not move), also after the original is
//! deleted (its result ConfigMap garbage-collected by the real controller-manager); a
//! leaderboard run, a `Bypass` job and a job with other sources run; `Bypass` replaces the
//! entry; the pool keeps at most `maxEntries` entries; deleting the pool deletes them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use benchkite::api::kerneljob::{KernelJobStatus, Phase};
use benchkite::api::{AgentPool, KernelJob};
use benchkite_e2e::chaos::CREATE;
use benchkite_e2e::jobrig::{self, JobRig, RigOptions};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::install_crds;
use benchkite_e2e::{TestNamespace, client, wait_until};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const AGENTS: u32 = 2;
const WEBHOOK_SECRET: &str = "e2e-cache-webhook-secret-8a41";
const PASS: &str = "import os\nos.write(int(os.environ['POPCORN_FD']), b'check: pass\\n')\n";
const OTHER: &str = "import os\n# another kernel\nos.write(int(os.environ['POPCORN_FD']), b'check: pass\\n')\n";
const ENTRY_LABEL: &str = "benchkite.dev/result-cache";

fn job(name: &str, source: &str, extra: Value) -> Result<KernelJob> {
    let mut spec = json!({"pool": "p", "mode": "test", "lang": "py", "main": "eval.py", "sources": {"eval.py": source},
                          "tests": ["size: 8; seed: 1"], "seed": 42, "testTimeoutSeconds": 60});
    if let (Some(o), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name}, "spec": spec,
    }))?)
}

/// Creates `job` and waits for it to finish; returns its status and the seconds it took.
async fn run(api: &Api<KernelJob>, job: KernelJob) -> Result<(KernelJobStatus, f64)> {
    let name = job.name_any();
    let t = Instant::now();
    api.create(&PostParams::default(), &job).await?;
    let status = wait_until(&format!("KernelJob {name} finished"), Duration::from_secs(120), || async {
        Ok(api.get(&name).await?.status.filter(|s| s.phase.is_finished()))
    })
    .await?;
    Ok((status, t.elapsed().as_secs_f64()))
}

fn creates(sim: &buildkite_sim::SimHandle) -> u64 {
    sim.counters().endpoint(CREATE).status(201)
}

async fn entries(cms: &Api<ConfigMap>) -> Result<BTreeSet<String>> {
    let list = cms.list(&ListParams::default().labels(ENTRY_LABEL)).await?;
    Ok(list.items.iter().map(|c| c.name_any()).collect())
}

#[tokio::test]
async fn identical_submissions_are_served_from_the_cache_without_a_build() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "cache").await?;
    let id = ns.name().to_string();
    let _node = TestNode::create(&client, &format!("{id}-gpu"), &id, "32", "128Gi", AGENTS).await?;
    let queue = format!("q-{id}");
    let opts = RigOptions {
        webhook_secret: Some(WEBHOOK_SECRET),
        args: vec!["--poll-interval-seconds".into(), "30".into()],
        ..Default::default()
    };
    let rig = JobRig::start(&ns, "cache", benchkite_e2e::sim::queue_config(&queue, AGENTS)?, opts).await?;
    let (sim, op) = (&rig.sim, &rig.op);
    let pools: Api<AgentPool> = ns.api();
    let pool = jobrig::pool("p", &queue, &id, json!({"resultCache": {"maxEntries": 2}}), json!({}))?;
    pools.create(&PostParams::default(), &pool).await?;
    wait_until("pool p has its agents Ready", Duration::from_secs(90), || async {
        let p = pools.get("p").await?;
        Ok(p.status.filter(|s| s.ready_agents == i64::from(AGENTS)).map(|_| ()))
    })
    .await
    .with_context(|| op.log_text())?;
    // Past the controller's first seconds (a job created then is looked up in Buildkite first).
    tokio::time::sleep(Duration::from_secs(6)).await;

    let jobs: Api<KernelJob> = ns.api();
    let cms: Api<ConfigMap> = ns.api();
    let mut table: Vec<(String, String, f64, u64)> = Vec::new();

    // 1. The original runs and leaves an entry.
    let (orig, secs) = run(&jobs, job("orig", PASS, json!({}))?).await?;
    ensure!(orig.phase == Phase::Succeeded && orig.passed == Some(true), "orig: {orig:?}\n{}", op.log_text());
    ensure!(orig.cached_from.is_none(), "the original was served from an empty cache");
    let builds = creates(sim);
    ensure!(builds == 1, "{builds} builds for the original");
    table.push(("orig".into(), "ran".into(), secs, builds));
    let entry = wait_until("the original's cache entry", Duration::from_secs(30), || async {
        Ok(entries(&cms).await?.into_iter().next())
    })
    .await
    .with_context(|| op.log_text())?;

    // 2. An identical job (another name, another priority): served, no build.
    let (hit, secs) = run(&jobs, job("again", PASS, json!({"priority": 7}))?).await?;
    let from = hit.cached_from.clone().context("again was not served from the cache")?;
    ensure!(from.job == format!("{id}/orig") && from.entry == entry, "cachedFrom {from:?}");
    ensure!(hit.phase == Phase::Succeeded && hit.passed == Some(true) && hit.attempts.is_empty(), "again: {hit:?}");
    ensure!(hit.result == orig.result && hit.summary == orig.summary, "the hit carries another result");
    ensure!(creates(sim) == 1, "a build was created for a cache hit");
    // The original's result.json (kept when it was read from the artifact), copied.
    match orig.output_ref.as_deref() {
        Some(orig_out) => {
            let out = hit.output_ref.clone().context("the hit has no result ConfigMap")?;
            let copy = cms.get(&out).await?.data.unwrap_or_default();
            let first = cms.get(orig_out).await?.data.unwrap_or_default();
            ensure!(copy.get("result.json") == first.get("result.json"), "the hit's result.json differs");
        }
        None => ensure!(hit.output_ref.is_none(), "a result ConfigMap the original did not have"),
    }
    table.push(("again (identical)".into(), "cache hit".into(), secs, creates(sim)));

    // 3. The original is deleted (with its result ConfigMap, garbage-collected): still served.
    jobs.delete("orig", &DeleteParams::background()).await?;
    wait_until("the original is gone", Duration::from_secs(60), || async {
        Ok(jobs.get_opt("orig").await?.is_none().then_some(()))
    })
    .await?;
    if let Some(orig_cm) = orig.output_ref.clone() {
        wait_until("the original's result ConfigMap is collected", Duration::from_secs(60), || async {
            Ok(cms.get_opt(&orig_cm).await?.is_none().then_some(()))
        })
        .await?;
    }
    let (after, secs) = run(&jobs, job("after-delete", PASS, json!({}))?).await?;
    ensure!(after.cached_from.as_ref().is_some_and(|f| f.job == format!("{id}/orig")), "after-delete: {after:?}");
    ensure!(after.result == orig.result, "after-delete carries another result");
    ensure!(creates(sim) == 1, "a build was created after the original was deleted");
    table.push(("after-delete (original gone)".into(), "cache hit".into(), secs, creates(sim)));

    // 4. A leaderboard run of the same kernel is never served from the cache.
    let (lb, secs) =
        run(&jobs, job("ranked", PASS, json!({"mode": "leaderboard", "benchmarks": ["size: 8; seed: 1"]}))?).await?;
    ensure!(lb.cached_from.is_none(), "a leaderboard run was served from the cache");
    ensure!(creates(sim) == 2, "the leaderboard run made no build");
    table.push(("ranked (leaderboard)".into(), "ran".into(), secs, creates(sim)));

    // 5. Bypass runs, and its result replaces the entry.
    let (bypass, secs) = run(&jobs, job("bypass", PASS, json!({"resultCache": "Bypass"}))?).await?;
    ensure!(bypass.cached_from.is_none() && bypass.phase == Phase::Succeeded, "bypass: {bypass:?}");
    ensure!(creates(sim) == 3, "Bypass made no build");
    table.push(("bypass".into(), "ran".into(), secs, creates(sim)));
    wait_until("the entry names the Bypass job", Duration::from_secs(30), || async {
        let cm = cms.get(&entry).await?;
        Ok(cm.annotations().get("benchkite.dev/cached-from").filter(|j| **j == format!("{id}/bypass")).map(|_| ()))
    })
    .await?;
    let (next, secs) = run(&jobs, job("next", PASS, json!({}))?).await?;
    ensure!(next.cached_from.as_ref().is_some_and(|f| f.job == format!("{id}/bypass")), "next: {next:?}");
    table.push(("next (identical)".into(), "cache hit".into(), secs, creates(sim)));

    // 6. Other sources, then another seed: misses, each leaving an entry; the pool keeps 2.
    let (other, secs) = run(&jobs, job("other", OTHER, json!({}))?).await?;
    ensure!(other.cached_from.is_none(), "other sources were served from the cache");
    table.push(("other (other sources)".into(), "ran".into(), secs, creates(sim)));
    let (seed, secs) = run(&jobs, job("seed", PASS, json!({"seed": 43}))?).await?;
    ensure!(seed.cached_from.is_none(), "another seed was served from the cache");
    table.push(("seed (another seed)".into(), "ran".into(), secs, creates(sim)));
    ensure!(creates(sim) == 5, "{} builds", creates(sim));
    // The entry of the last job is stored right after its status is written: wait for the
    // eviction it brings (the oldest entry, the original's key, goes; two stay).
    let kept = wait_until("the oldest entry evicted and 2 kept", Duration::from_secs(30), || async {
        let e = entries(&cms).await?;
        Ok((e.len() == 2 && !e.contains(&entry)).then_some(e))
    })
    .await
    .with_context(|| op.log_text())?;
    ensure!(kept.len() == 2, "{kept:?}");
    println!("{:<30} {:<10} {:>8} {:>12}", "job", "outcome", "seconds", "builds so far");
    for (name, what, secs, builds) in &table {
        println!("{name:<30} {what:<10} {secs:>8.2} {builds:>12}");
    }

    // 7. Deleting the pool deletes its entries (owned by it; the controller-manager collects).
    pools.delete("p", &DeleteParams::background()).await?;
    wait_until("the pool's entries are collected", Duration::from_secs(60), || async {
        Ok(entries(&cms).await?.is_empty().then_some(()))
    })
    .await?;
    drop(rig);
    ns.delete().await
}
