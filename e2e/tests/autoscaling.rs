//! Issue 19, "Capacity that follows demand", on the local cluster: a pool with
//! `autoscaling.minIdle: 2` on 16 GPUs (two kwok nodes of 8) holds 2 idle agents, grows to
//! 16 for a burst of 40 KernelJobs, shrinks back to 2 after the queue drains, and no job is
//! interrupted (every KernelJob Succeeded; every Buildkite job of the simulator passed: none
//! canceled, lost or expired). The fleet and KernelJob controllers run in one process; the
//! e2e kubelet (`e2e/src/kubelet.rs`) runs the agent pods as simulator agents, stopping an
//! agent gracefully when its pod is deleted, as the real agent does on SIGTERM.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use benchkite::api::kerneljob::Phase;
use benchkite::api::{AgentPool, KernelJob};
use benchkite_e2e::jobrig::{self, JobRig, RigOptions};
use benchkite_e2e::kubelet::{Kubelet, KubeletOptions};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::install_crds;
use benchkite_e2e::{TestNamespace, client, e2e_dir, repo_root, wait_until};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// One fleet controller at a time: each manages every pool of the cluster.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BURST: usize = 40;

fn task_file(name: &str) -> Result<String> {
    let path = repo_root().join("tests/tasks/vectoradd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn job(name: &str) -> Result<KernelJob> {
    let sources: BTreeMap<String, String> = [
        ("eval.py".to_string(), task_file("eval.py")?),
        ("reference.py".to_string(), task_file("reference.py")?),
        ("submission.py".to_string(), task_file("submission_ok.py")?),
    ]
    .into();
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {
            "pool": "p", "mode": "test", "lang": "py", "main": "eval.py", "sources": sources,
            "tests": [{"size": 64, "seed": 1}, {"size": 256, "seed": 2}],
            "testTimeoutSeconds": 60, "benchmarkTimeoutSeconds": 60, "rankedTimeoutSeconds": 60,
        },
    }))?)
}

/// (ready agents, autoscaling's desired agents, the Scaled condition's reason).
async fn pool_state(pools: &Api<AgentPool>) -> Result<(i64, i64, String)> {
    let s = pools.get("p").await?.status.unwrap_or_default();
    let desired = s.autoscaling.as_ref().map(|a| a.desired_agents).unwrap_or(-1);
    let reason = s.conditions.iter().find(|c| c.type_ == "Scaled").map(|c| c.reason.clone()).unwrap_or_default();
    Ok((s.ready_agents, desired, reason))
}

fn pools_api_state(kubelet: &Kubelet) -> String {
    format!("{} live agents in the kubelet", live_agents(kubelet))
}

fn live_agents(kubelet: &Kubelet) -> usize {
    kubelet.agents().values().filter(|r| r.agent.is_some() && !r.stopped).count()
}

#[tokio::test]
async fn a_pool_holds_min_idle_grows_for_a_burst_and_shrinks_back_without_interrupting_a_job() -> Result<()> {
    let _one = ONE_FLEET.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "autoscale").await?;
    let id = ns.name().to_string();
    let _a = TestNode::create(&client, &format!("{id}-a"), &id, "64", "256Gi", 8).await?;
    let _b = TestNode::create(&client, &format!("{id}-b"), &id, "64", "256Gi", 8).await?;
    let queue = format!("q-{id}");
    let mut cfg = benchkite_e2e::sim::queue_config(&queue, 0)?;
    // Buildkite's limits on a faster clock (both stay on): 40 builds in seconds, not minutes.
    cfg.rate_limit = benchkite_e2e::sim::buildkite_rate_limit(10.0);
    let opts = RigOptions { args: vec!["--poll-interval-seconds".into(), "1".into()], ..Default::default() };
    let rig = JobRig::start(&ns, "autoscale", cfg, opts).await?;
    let (sim, op) = (&rig.sim, &rig.op);
    let pool = jobrig::pool(
        "p",
        &queue,
        &id,
        json!({"autoscaling": {"minIdle": 2, "scaleDownDelaySeconds": 10}}),
        json!({"ephemeral": false, "env": [{"name": "BENCHKITE_SANDBOX", "value": "off"}]}),
    )?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool).await?;
    let binary = benchkite_e2e::operator::binary()?;
    let kubelet = Kubelet::start(
        client.clone(),
        sim,
        KubeletOptions {
            namespace: id.clone(),
            label_selector: "benchkite.dev/pool=p".into(),
            binary_dir: binary.parent().context("binary dir")?.to_path_buf(),
            gpus: BTreeMap::new(),
            scratch: e2e_dir().join("kubelet").join(&id),
        },
    )?;

    // Idle: minIdle agents, no more.
    let idle = |want: i64| {
        let (pools, kubelet) = (&pools, &kubelet);
        move || async move {
            let (ready, desired, reason) = pool_state(pools).await?;
            let live = live_agents(kubelet);
            Ok((ready == want && desired == want && live == usize::try_from(want)? && reason == "FollowingDemand")
                .then_some(()))
        }
    };
    wait_until("2 idle agents", Duration::from_secs(90), idle(2)).await.with_context(|| op.log_text())?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (ready, desired, reason) = pool_state(&pools).await?;
    ensure!(
        (ready, desired, live_agents(&kubelet)) == (2, 2, 2),
        "idle pool: {ready} ready, {desired} desired, {reason}"
    );

    // A burst of 40 jobs: every slot gets an agent.
    let jobs: Api<KernelJob> = ns.api();
    let burst = Instant::now();
    for i in 0..BURST {
        jobs.create(&PostParams::default(), &job(&format!("j-{i:02}"))?).await?;
    }
    wait_until("16 agents ready", Duration::from_secs(120), || async {
        let (ready, desired, _) = pool_state(&pools).await?;
        Ok((ready == 16 && desired == 16 && live_agents(&kubelet) == 16).then_some(()))
    })
    .await
    .with_context(|| format!("{:?}\n{}", pools_api_state(&kubelet), op.log_text()))?;
    let up = burst.elapsed();

    // The queue drains: every job Succeeded.
    wait_until("every job finished", Duration::from_secs(600), || async {
        let list = jobs.list(&Default::default()).await?.items;
        Ok(list.iter().all(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).then_some(()))
    })
    .await
    .with_context(|| op.log_text())?;
    let drained = Instant::now();
    let list = jobs.list(&Default::default()).await?.items;
    ensure!(list.len() == BURST, "{} jobs", list.len());
    for j in &list {
        let s = j.status.as_ref().context("status")?;
        ensure!(s.phase == Phase::Succeeded, "{:?}: {:?} {}", j.metadata.name, s.phase, s.message);
        ensure!(s.attempts.len() <= 1, "{:?} was retried: {:?}", j.metadata.name, s.attempts);
    }
    let drain_took = drained.duration_since(burst);

    // Back to minIdle.
    let back = wait_until("back to 2 agents", Duration::from_secs(120), idle(2)).await;
    if let Err(e) = back {
        let status = pools.get("p").await?.status;
        return Err(e.context(format!("{}\n{status:#?}\n{}", pools_api_state(&kubelet), op.log_text())));
    }
    let down = drained.elapsed();

    // No Buildkite job was interrupted: every script job passed, none canceled, lost or expired.
    let builds = benchkite_e2e::sim::all_builds(sim).await?;
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for b in &builds {
        for j in benchkite_e2e::sim::script_jobs(b) {
            *states.entry(j["state"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        }
    }
    ensure!(states.get("passed") == Some(&BURST) && states.len() == 1, "Buildkite job states: {states:?}");
    println!(
        "autoscaling: 2 idle agents; burst of {BURST} jobs -> 16 agents ready in {:.1} s; queue drained {:.1} s after the burst; \
         back to 2 agents {:.1} s after the drain (scaleDownDelaySeconds 10); Buildkite jobs {states:?}",
        up.as_secs_f64(),
        drain_took.as_secs_f64(),
        down.as_secs_f64()
    );
    // The kubelet's agents first, then the controller and the simulator they talk to.
    drop(kubelet);
    drop(rig);
    ns.delete().await
}
