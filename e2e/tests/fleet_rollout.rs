//! AgentPool rollouts and disruption budgets, end to end: the real `benchkite controller`
//! against the local cluster (real API server, scheduler and disruption controller; kwok
//! kubelets).
//!
//! Each test makes fake GPU nodes of its own, labelled `benchkite.dev/e2e=<namespace>`, and
//! selects only them, so it never claims another test's GPUs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use benchkite::api::agentpool::{
    AgentPoolSpec, AgentSpec, GpuNodeSelector, PodOverrides, PoolStrategy, RollingUpdate, SecretKeyRef,
};
use benchkite::api::{AgentPool, GpuNode};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::shared_controller;
use benchkite_e2e::{TestNamespace, client, default_timeout, wait_until};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// A finalizer of this test that holds evicted pods in Terminating.
const HOLD: &str = "benchkite.dev/e2e-hold";

const CONTROLLER_ARGS: &[&str] =
    &["--discovery-grace-seconds", "5", "--agent-grace-seconds", "2", "--http-addr", "127.0.0.1:0"];

async fn setup(prefix: &str) -> Result<(Client, TestNamespace)> {
    let client = client().await?;
    shared_controller("fleet-rollout", CONTROLLER_ARGS).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    benchkite_e2e::nodes::create_agent_token(&ns).await?;
    Ok((client, ns))
}

fn pool(name: &str, test: &str, ephemeral: bool, max_unavailable: Option<IntOrString>) -> AgentPool {
    AgentPool::new(
        name,
        AgentPoolSpec {
            queue: format!("e2e-{name}"),
            gpu_node_selector: GpuNodeSelector {
                match_labels: [("benchkite.dev/e2e".to_string(), test.to_string())].into(),
                ..Default::default()
            },
            gpus_per_agent: 1,
            agent: AgentSpec {
                image: Some("example.invalid/agent:e2e".into()),
                token_secret_ref: SecretKeyRef { name: "agent-token".into(), key: "token".into() },
                tags: BTreeMap::new(),
                env: vec![],
                env_from: vec![],
                ephemeral,
                priority: None,
                hooks: None,
                pod: PodOverrides::default(),
            },
            paused: false,
            buildkite: None,
            strategy: max_unavailable
                .map(|m| PoolStrategy { rolling_update: Some(RollingUpdate { max_unavailable: Some(m) }) }),
            certification: None,
            queueing: None,
            autoscaling: None,
            result_cache: None,
            dra: None,
        },
    )
}

async fn pool_pods(ns: &TestNamespace, pool: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = ns.api();
    Ok(pods.list(&ListParams::default().labels(&format!("benchkite.dev/pool={pool}"))).await?.items)
}

/// Running, Ready and not terminating: an agent that can take a job.
fn available(p: &Pod) -> bool {
    let status = p.status.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn has_env(p: &Pod, name: &str, value: &str) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| env.iter().any(|e| e.name == name && e.value.as_deref() == Some(value)))
}

fn condition_reason(pool: &AgentPool, t: &str) -> Option<String> {
    pool.status.as_ref()?.conditions.iter().find(|c| c.type_ == t).map(|c| c.reason.clone())
}

/// Waits until the pool runs `n` available agents for which `ok` holds, and says so in its
/// status (observed generation, ready, updated, Progressing converged).
async fn wait_converged(
    ns: &TestNamespace,
    pool: &str,
    n: usize,
    timeout: Duration,
    ok: impl Fn(&Pod) -> bool,
) -> Result<Vec<Pod>> {
    let pools: Api<AgentPool> = ns.api();
    wait_until(&format!("{n} available agents of pool {pool}, converged"), timeout, || async {
        let live: Vec<Pod> =
            pool_pods(ns, pool).await?.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let p = pools.get(pool).await?;
        let status = p.status.clone().unwrap_or_default();
        let done = live.len() == n
            && live.iter().all(|p| available(p) && ok(p))
            && status.observed_generation == p.metadata.generation
            && status.ready_agents == n as i64
            && status.desired_agents == n as i64
            && status.updated_agents == n as i64
            && condition_reason(&p, "Progressing").as_deref() == Some("Converged");
        Ok(done.then_some(live))
    })
    .await
}

#[tokio::test]
async fn a_rollout_keeps_max_unavailable_and_the_budget_refuses_evictions_beyond_it() -> Result<()> {
    let (client, ns) = setup("rollout").await?;
    let id = ns.name().to_string();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(TestNode::create(&client, &format!("{id}-{i}"), &id, "64", "256Gi", 4).await?);
    }
    // 12 agents, 20% → at most 2 unavailable (rounded down).
    let (desired, max_unavailable) = (12usize, 2usize);
    let pools: Api<AgentPool> = ns.api();
    let p = pool("roll", &id, true, Some(IntOrString::String("20%".into())));
    pools.create(&PostParams::default(), &p).await?;
    wait_converged(&ns, "roll", desired, default_timeout(), |_| true).await?;
    let created = pools.get("roll").await?;
    let status = created.status.clone().context("status")?;
    ensure!(
        status.max_unavailable_agents == max_unavailable as i64,
        "strategy {:?}, status {status:?}",
        created.spec.strategy
    );

    // The PodDisruptionBudget: the pool's agents, at most maxUnavailable of them evicted.
    let pdbs: Api<PodDisruptionBudget> = ns.api();
    let pdb = wait_until("the pool's PodDisruptionBudget allows 2 disruptions", default_timeout(), || async {
        let Some(pdb) = pdbs.get_opt("roll-agents").await? else { return Ok(None) };
        let allowed = pdb.status.as_ref().map(|s| s.disruptions_allowed);
        Ok((allowed == Some(max_unavailable as i32)).then_some(pdb))
    })
    .await?;
    let spec = pdb.spec.clone().context("pdb spec")?;
    ensure!(spec.min_available == Some(IntOrString::Int((desired - max_unavailable) as i32)), "{spec:?}");
    ensure!(spec.max_unavailable.is_none(), "{spec:?}");
    let selector = spec.selector.and_then(|s| s.match_labels).unwrap_or_default();
    ensure!(
        selector.get("benchkite.dev/pool").map(String::as_str) == Some("roll")
            && selector.get("app.kubernetes.io/managed-by").map(String::as_str) == Some("benchkite"),
        "selector {selector:?}"
    );
    let pool_uid = pools.get("roll").await?.uid();
    ensure!(
        pdb.owner_references().iter().any(|o| o.kind == "AgentPool" && Some(&o.uid) == pool_uid.as_ref()),
        "owner {:?}",
        pdb.owner_references()
    );
    let status = pdb.status.clone().context("pdb status")?;
    ensure!(status.expected_pods == desired as i32 && status.current_healthy == desired as i32, "{status:?}");
    for pod in pool_pods(&ns, "roll").await? {
        let annotations = pod.annotations();
        ensure!(
            annotations.get("cluster-autoscaler.kubernetes.io/safe-to-evict").map(String::as_str) == Some("false"),
            "{}: {annotations:?}",
            pod.name_any()
        );
    }

    // Evictions beyond the budget are refused by the API server (429). The victims carry a
    // finalizer of this test, so an evicted agent stays terminating (unavailable) instead of
    // vanishing and being replaced by a Ready kwok pod before the next request.
    let pods_api: Api<Pod> = ns.api();
    let victims: Vec<String> = pool_pods(&ns, "roll")
        .await?
        .iter()
        .filter(|p| available(p))
        .map(|p| p.name_any())
        .take(max_unavailable + 1)
        .collect();
    ensure!(victims.len() == max_unavailable + 1, "available agents: {victims:?}");
    for v in &victims {
        let hold = json!({"metadata": {"finalizers": [HOLD]}});
        pods_api.patch(v, &PatchParams::default(), &Patch::Merge(hold)).await?;
    }
    // Without kube's automatic retries: the refusal (429) would otherwise be retried for
    // minutes while the held victims keep the budget spent.
    let evicting: Api<Pod> = Api::namespaced(benchkite_e2e::client_without_retries().await?, ns.name());
    let mut outcomes = Vec::new();
    for v in &victims {
        outcomes.push(evicting.evict(v, &EvictParams::default()).await);
    }
    for v in &victims {
        let release = json!({"metadata": {"finalizers": null}});
        pods_api.patch(v, &PatchParams::default(), &Patch::Merge(release)).await?;
    }
    let evicted = outcomes.iter().take(max_unavailable).filter(|o| o.is_ok()).count();
    let refused = matches!(outcomes.last(), Some(Err(kube::Error::Api(s))) if s.code == 429);
    ensure!(
        evicted == max_unavailable && refused,
        "the first {max_unavailable} evictions must pass and the next be refused with 429: {outcomes:?}"
    );
    wait_converged(&ns, "roll", desired, default_timeout(), |_| true).await?;

    // A spec change makes every agent outdated: sample available agents every second.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pods_api, pools) = (stop.clone(), pods_api.clone(), pools.clone());
        tokio::spawn(async move {
            let mut min = usize::MAX;
            let mut samples = 0usize;
            let mut reasons = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                let list = pods_api.list(&ListParams::default().labels("benchkite.dev/pool=roll")).await;
                if let Ok(list) = list {
                    min = min.min(list.items.iter().filter(|p| available(p)).count());
                    samples += 1;
                }
                if let Ok(p) = pools.get("roll").await
                    && let Some(r) = condition_reason(&p, "Progressing")
                {
                    reasons.insert(r);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (min, samples, reasons)
        })
    };
    pools
        .patch(
            "roll",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"agent": {"env": [{"name": "ROLLOUT", "value": "2"}]}}})),
        )
        .await?;
    let rolled = wait_converged(&ns, "roll", desired, default_timeout() * 5, |p| has_env(p, "ROLLOUT", "2")).await;
    stop.store(true, Ordering::SeqCst);
    let (min, samples, reasons) = sampler.await?;
    rolled?;
    ensure!(samples > 0, "no sample of the agents");
    ensure!(
        min >= desired - max_unavailable,
        "available agents fell to {min} during the rollout (desired {desired}, maxUnavailable {max_unavailable})"
    );
    ensure!(reasons.contains("RollingUpdate"), "Progressing reasons seen: {reasons:?}");
    drop(nodes);
    ns.delete().await
}

#[tokio::test]
async fn a_cordoned_node_keeps_its_ephemeral_agents_and_gets_no_new_ones() -> Result<()> {
    let (client, ns) = setup("cordon").await?;
    let id = ns.name().to_string();
    let name = format!("{id}-0");
    let node = TestNode::create(&client, &name, &id, "64", "256Gi", 2).await?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool("cord", &id, true, None)).await?;
    let before = wait_converged(&ns, "cord", 2, default_timeout(), |_| true).await?;

    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}}))).await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    wait_until("GpuNode Ready reason NodeCordoned", default_timeout(), || async {
        let gn = gpunodes.get(&name).await?;
        let reason =
            gn.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).map(|c| c.reason.clone());
        Ok((reason.as_deref() == Some("NodeCordoned")).then_some(()))
    })
    .await?;
    wait_until("the pool sees the node Cordoned", default_timeout(), || async {
        let status = pools.get("cord").await?.status.unwrap_or_default();
        Ok(status.nodes.iter().any(|n| n.name == name && n.state == "Cordoned" && n.ready == 2).then_some(()))
    })
    .await?;
    // The busy (ephemeral) agents are left to finish their job: the same pods.
    let uids = |pods: &[Pod]| pods.iter().filter_map(|p| p.uid()).collect::<std::collections::BTreeSet<_>>();
    let live: Vec<Pod> =
        pool_pods(&ns, "cord").await?.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    ensure!(uids(&live) == uids(&before), "agents on a cordoned node were replaced or deleted");

    // One finishes (its pod goes away): it is not replaced on the cordoned node.
    let pods_api: Api<Pod> = ns.api();
    let gone = before[0].name_any();
    pods_api.delete(&gone, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    wait_until("the pool sees one agent left on the cordoned node", default_timeout(), || async {
        let status = pools.get("cord").await?.status.unwrap_or_default();
        Ok(status.nodes.iter().any(|n| n.name == name && n.ready == 1).then_some(()))
    })
    .await?;
    let live = pool_pods(&ns, "cord").await?;
    ensure!(live.len() == 1 && live[0].name_any() != gone, "no new agent on a cordoned node: {:?}", {
        live.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    });

    // Uncordoned: the slot is filled again.
    nodes.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": false}}))).await?;
    wait_converged(&ns, "cord", 2, default_timeout(), |_| true).await?;
    drop(node);
    ns.delete().await
}

#[tokio::test]
async fn the_api_server_refuses_an_invalid_max_unavailable() -> Result<()> {
    let (_client, ns) = setup("maxu").await?;
    let pools: Api<AgentPool> = ns.api();
    for (bad, i) in [
        (IntOrString::Int(0), 0),
        (IntOrString::String("0%".into()), 1),
        (IntOrString::String("150%".into()), 2),
        (IntOrString::String("ten".into()), 3),
    ] {
        let p = pool(&format!("bad-{i}"), "none", true, Some(bad.clone()));
        match pools.create(&PostParams::default(), &p).await {
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("maxUnavailable") => {}
            other => bail!("maxUnavailable {bad:?} must be refused, got {:?}", other.map(|p| p.name_any())),
        }
    }
    for (good, i) in
        [(IntOrString::Int(3), 0), (IntOrString::String("100%".into()), 1), (IntOrString::String("5%".into()), 2)]
    {
        let p = pool(&format!("good-{i}"), "none", true, Some(good.clone()));
        pools
            .create(&PostParams { dry_run: true, ..Default::default() }, &p)
            .await
            .with_context(|| format!("{good:?}"))?;
    }
    ns.delete().await
}
