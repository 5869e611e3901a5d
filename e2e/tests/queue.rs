//! The platform's queue (issue 19), on the local cluster, with the real fleet and KernelJob
//! controllers in one process:
//! - fail fast: a KernelJob that no agent of its pool can ever serve (an architecture none of
//!   the pool's GPUs has, more GPUs than an agent holds, a pool that selects no node, a paused
//!   pool) ends `Failed` with the precise reason within seconds, judged from the pool status
//!   the fleet controller writes; a job the pool can serve waits for an agent;
//! - the pool's queue: waiting and running jobs, the oldest wait and the count per submitter
//!   in `AgentPool.status.kernelJobs` and in the metrics.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::kerneljob::Phase;
use benchkite::api::{AgentPool, KernelJob};
use benchkite_e2e::jobrig::{JobRig, RigOptions};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::install_crds;
use benchkite_e2e::{TestNamespace, client, wait_until};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

fn pool(name: &str, queue: &str, selects: &str, paused: bool) -> Result<AgentPool> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "queue": queue,
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": selects}},
            "agent": {"image": "example.invalid/agent:e2e", "tokenSecretRef": {"name": "agent-token", "key": "token"}},
            "paused": paused,
        },
    }))?)
}

fn job(name: &str, pool: &str, extra: Value) -> Result<KernelJob> {
    labelled(name, pool, extra, None)
}

fn labelled(name: &str, pool: &str, extra: Value, submitter: Option<&str>) -> Result<KernelJob> {
    let labels = match submitter {
        Some(s) => json!({"benchkite.dev/submitter": s}),
        None => json!({}),
    };
    let mut spec = json!({"pool": pool, "mode": "test", "lang": "py", "main": "s.py", "sources": {"s.py": "print(1)"}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name, "labels": labels}, "spec": spec,
    }))?)
}

#[tokio::test]
async fn unservable_jobs_fail_fast_and_the_pool_shows_its_queue() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "failfast").await?;
    let id = ns.name().to_string();
    // One H100 node (sm_90, 4 GPUs) for pool `p`.
    let _node = TestNode::create(&client, &format!("{id}-gpu"), &id, "64", "256Gi", 4).await?;
    let queue = format!("q-{id}");
    let opts =
        RigOptions { metrics: true, args: vec!["--poll-interval-seconds".into(), "2".into()], ..Default::default() };
    let rig = JobRig::start(&ns, "failfast", benchkite_e2e::sim::queue_config(&queue, 0)?, opts).await?;
    let op = &rig.op;
    let metrics_addr = rig.metrics_addr.clone().context("metrics address")?;

    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool("p", &queue, &id, false)?).await?;
    pools.create(&PostParams::default(), &pool("empty", &queue, "failfast-no-such-node", false)?).await?;
    pools.create(&PostParams::default(), &pool("paused", &queue, "failfast-no-such-node", true)?).await?;
    wait_until("pool p reports its node Active", Duration::from_secs(60), || async {
        let p = pools.get("p").await?;
        Ok(p.status.filter(|s| s.nodes.iter().any(|n| n.state == "Active")).map(|_| ()))
    })
    .await
    .with_context(|| op.log_text())?;

    let jobs: Api<KernelJob> = ns.api();
    let cases: [(&str, &str, Value, &str, &[&str]); 4] = [
        ("arch", "p", json!({"arch": "100a"}), "ArchitectureUnavailable", &["100a", "sm_90"]),
        ("gpus", "p", json!({"gpus": 2}), "TooManyGpus", &["needs 2 GPUs", "gpusPerAgent"]),
        ("nonode", "empty", json!({}), "NoUsableNode", &["selects no GpuNode"]),
        ("paused", "paused", json!({}), "PoolPaused", &["spec.paused"]),
    ];
    for (name, pool, extra, _, _) in &cases {
        jobs.create(&PostParams::default(), &job(name, pool, extra.clone())?).await?;
    }
    // The pool can serve this one (sm_90 runs 90a code): it waits for an agent.
    jobs.create(&PostParams::default(), &job("servable", "p", json!({"arch": "90a"}))?).await?;

    for (name, _, _, reason, words) in &cases {
        let j = wait_until(&format!("KernelJob {name} failed"), Duration::from_secs(30), || async {
            let j = jobs.get(name).await?;
            Ok(j.status.as_ref().is_some_and(|s| s.phase.is_finished()).then_some(j))
        })
        .await
        .with_context(|| op.log_text())?;
        let s = j.status.as_ref().context("status")?;
        ensure!(s.phase == Phase::Failed, "{name}: {s:?}");
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").context("Ready")?;
        ensure!(ready.reason == *reason, "{name}: reason {} (want {reason}): {}", ready.reason, ready.message);
        for w in *words {
            ensure!(ready.message.contains(w), "{name}: {w:?} not in {:?}", ready.message);
        }
        let created = j.metadata.creation_timestamp.as_ref().context("created")?.0;
        let done = s.completion_time.as_ref().context("completionTime")?.0;
        let took = done.duration_since(created).as_secs_f64();
        println!("{name}: Failed/{reason} {took:.0} s after its creation (whole seconds): {}", ready.message);
        ensure!(took <= 10.0, "{name} failed {took} s after its creation: over 10 s");
        ensure!(s.build.is_none() && s.attempts.is_empty(), "{name} created a build: {s:?}");
    }
    // Past the controller's first seconds (it judges once it has watched the fleet for 5 s),
    // a job is judged as soon as it is seen.
    jobs.create(&PostParams::default(), &job("late", "p", json!({"arch": "120"}))?).await?;
    let late = wait_until("KernelJob late failed", Duration::from_secs(30), || async {
        let j = jobs.get("late").await?;
        Ok(j.status.clone().filter(|s| s.phase == Phase::Failed))
    })
    .await?;
    let created = jobs.get("late").await?.metadata.creation_timestamp.context("created")?.0;
    let took = late.completion_time.as_ref().context("completionTime")?.0.duration_since(created).as_secs_f64();
    println!("late: Failed {took:.0} s after its creation (whole seconds)");
    ensure!(took <= 10.0, "late failed {took} s after its creation");

    let events: Api<CoreEvent> = ns.api();
    let evs = events.list(&Default::default()).await?.items;
    for (name, _, _, reason, _) in &cases {
        ensure!(
            evs.iter().any(|e| e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some(name)),
            "a Warning {reason} Event for {name}"
        );
    }
    // The pool can serve this one: it is submitted (a build waits for an agent).
    let servable = wait_until("the servable job submitted", Duration::from_secs(30), || async {
        let j = jobs.get("servable").await?;
        Ok(j.status.clone().filter(|s| s.build.is_some()))
    })
    .await
    .with_context(|| op.log_text())?;
    ensure!(!servable.phase.is_finished(), "the servable job waits for an agent: {servable:?}");

    // The pool's queue: four jobs wait for an agent (the simulator has none), by three
    // submitters; the failed ones are not counted.
    for (name, who) in [("alice-1", "alice"), ("alice-2", "alice"), ("bob-1", "bob")] {
        jobs.create(&PostParams::default(), &labelled(name, "p", json!({}), Some(who))?).await?;
    }
    let pools_api = pools.clone();
    let q = wait_until("pool p shows 4 waiting jobs", Duration::from_secs(30), || async {
        let p = pools_api.get("p").await?;
        Ok(p.status.and_then(|s| s.kernel_jobs).filter(|q| q.waiting == 4))
    })
    .await
    .with_context(|| op.log_text())?;
    println!("pool p: {}", serde_json::to_string(&q)?);
    let by: Vec<(String, i64, i64)> =
        q.submitters.iter().map(|s| (s.submitter.clone(), s.waiting, s.running)).collect();
    ensure!(
        by == vec![("alice".to_string(), 2, 0), ("bob".to_string(), 1, 0), (id.clone(), 1, 0)],
        "submitters: {by:?}"
    );
    ensure!(q.running == 0 && q.oldest_waiting_since.is_some(), "{q:?}");
    let empty = pools.get("empty").await?.status.and_then(|s| s.kernel_jobs);
    ensure!(empty.as_ref().is_some_and(|e| e.waiting == 0 && e.running == 0), "the empty pool: {empty:?}");
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics")).await?.text().await?;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("benchkite_agentpool_kerneljobs_waiting{") && l.contains("pool=\"p\"") && l.contains(&id)
        })
        .with_context(|| format!("no waiting gauge for pool p in the metrics:\n{metrics}"))?;
    ensure!(line.ends_with(" 4"), "{line}");
    ensure!(
        metrics.lines().any(|l| l.starts_with("benchkite_agentpool_submitter_kerneljobs{")
            && l.contains("submitter=\"alice\"")
            && l.contains("state=\"waiting\"")
            && l.ends_with(" 2")),
        "alice's 2 waiting jobs in the metrics"
    );
    drop(rig);
    ns.delete().await
}
