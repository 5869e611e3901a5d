//! Fair queueing (issue 19), on the local cluster with the real fleet and KernelJob
//! controllers: a pool with `spec.queueing` and 10 agents admits 10 jobs per window (each job
//! runs about 3 s). Submitter A queues 40 jobs (`BENCHKITE_E2E_FAIRSHARE_A`; `make fairshare-large`
//! runs 100), then submitter B queues 5: B's 5 start within the first two windows (by their
//! agents' start times), and A's waiting jobs show positions that decrease. Without fair
//! queueing B's jobs would start last.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::kerneljob::Phase;
use benchkite::api::{AgentPool, KernelJob};
use benchkite_e2e::jobrig::{self, JobRig, RigOptions};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::install_crds;
use benchkite_e2e::{TestNamespace, client, wait_until};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const AGENTS: u32 = 10;
const WEBHOOK_SECRET: &str = "e2e-fairshare-webhook-secret-5d1c";
const EVAL: &str = "import os, time\ntime.sleep(3)\nos.write(int(os.environ['POPCORN_FD']), b'check: pass\\n')\n";

/// How many jobs submitter A queues before B.
fn a_jobs() -> Result<usize> {
    match std::env::var("BENCHKITE_E2E_FAIRSHARE_A") {
        Ok(v) => {
            let n: usize = v.parse().with_context(|| format!("BENCHKITE_E2E_FAIRSHARE_A={v:?}"))?;
            ensure!(n >= 30, "BENCHKITE_E2E_FAIRSHARE_A={n}: at least 30 (three windows of A's jobs)");
            Ok(n)
        }
        Err(_) => Ok(40),
    }
}

fn job(name: &str, submitter: &str) -> Result<KernelJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name, "labels": {"benchkite.dev/submitter": submitter}},
        "spec": {"pool": "p", "mode": "test", "lang": "py", "main": "eval.py", "sources": {"eval.py": EVAL},
                 "testTimeoutSeconds": 60},
    }))?)
}

#[tokio::test]
async fn a_late_small_submitter_starts_within_two_windows() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "fairshare").await?;
    let id = ns.name().to_string();
    let _node = TestNode::create(&client, &format!("{id}-gpu"), &id, "160", "640Gi", AGENTS).await?;
    let queue = format!("q-{id}");
    // Webhooks tell the controller when a build finishes: under Buildkite's 50 requests a
    // minute, polling 10 running builds would make each window last as long as the budget.
    let started = std::time::Instant::now();
    let opts = RigOptions {
        webhook_secret: Some(WEBHOOK_SECRET),
        args: vec!["--poll-interval-seconds".into(), "30".into()],
        ..Default::default()
    };
    let rig = JobRig::start(&ns, "fairshare", benchkite_e2e::sim::queue_config(&queue, AGENTS)?, opts).await?;
    let op = &rig.op;
    let pools: Api<AgentPool> = ns.api();
    let pool = jobrig::pool("p", &queue, &id, json!({"queueing": {"expectedJobSeconds": 4}}), json!({}))?;
    pools.create(&PostParams::default(), &pool).await?;
    wait_until("pool p has its 10 agents Ready", Duration::from_secs(90), || async {
        let p = pools.get("p").await?;
        Ok(p.status.filter(|s| s.ready_agents == i64::from(AGENTS)).map(|_| ()))
    })
    .await
    .with_context(|| op.log_text())?;

    // A job created in the controller's first 5 s may have a build from an earlier process:
    // it is looked up in Buildkite first (under the request budget). Not what this test is about.
    tokio::time::sleep(started.saturating_duration_since(std::time::Instant::now()) + Duration::from_secs(6)).await;
    let jobs: Api<KernelJob> = ns.api();
    let a = a_jobs()?;
    let last_a = format!("a-{:03}", a - 1);
    let total = a + 5;
    for i in 0..a {
        jobs.create(&PostParams::default(), &job(&format!("a-{i:03}"), "A")?).await?;
    }
    for i in 0..5 {
        jobs.create(&PostParams::default(), &job(&format!("b-{i}"), "B")?).await?;
    }
    // A's last job: its shown position, as it changes.
    let mut positions: Vec<i64> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let done = loop {
        let list = jobs.list(&ListParams::default()).await?.items;
        if let Some(p) = list.iter().find(|j| j.name_any() == last_a).and_then(|j| j.status.as_ref()?.queue_position)
            && positions.last() != Some(&p)
        {
            positions.push(p);
        }
        let finished = list.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        if finished == total {
            break list;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{finished} of {total} jobs finished in 600 s\n{}",
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut starts: Vec<(Timestamp, String)> = Vec::new();
    for j in &done {
        let s = j.status.as_ref().context("status")?;
        ensure!(s.phase == Phase::Succeeded, "{} ended {:?}: {}", j.name_any(), s.phase, s.message);
        let started = s.attempts.first().and_then(|a| a.started_at.as_ref()).context("started_at")?.0;
        starts.push((started, j.name_any()));
    }
    starts.sort();
    // Windows count from when B queued its last job: the jobs A had started before are gone.
    let b_queued = done
        .iter()
        .filter(|j| j.name_any().starts_with("b-"))
        .filter_map(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .max()
        .context("B's creation")?;
    let before = starts.iter().filter(|(t, _)| *t < b_queued).count();
    let after: Vec<&String> = starts.iter().filter(|(t, _)| *t >= b_queued).map(|(_, n)| n).collect();
    let b_ranks: Vec<usize> =
        after.iter().enumerate().filter(|(_, n)| n.starts_with("b-")).map(|(i, _)| i + 1).collect();
    println!(
        "{before} of A's jobs started before B queued; after it, B's jobs started as number {b_ranks:?} of {} (10 agents: window 1 is 1-10, window 2 is 11-20)",
        after.len()
    );
    println!("{last_a}'s shown positions over time ({a} of A's jobs): {positions:?}");
    ensure!(
        b_ranks.len() == 5 && b_ranks.iter().all(|r| *r <= 20),
        "B's jobs started as {b_ranks:?}: not within two windows"
    );
    ensure!(positions.len() >= 3, "{last_a} showed too few positions: {positions:?}");
    ensure!(positions.windows(2).all(|w| w[1] < w[0]), "{last_a}'s positions do not decrease: {positions:?}");
    drop(rig);
    ns.delete().await
}
