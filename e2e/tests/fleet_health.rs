//! The fleet stays put through controller restarts, and leaves room for DaemonSets.
//!
//! Each test runs its own `benchkite controller --controllers fleet` (the real binary) against
//! the local cluster, on fake kwok GPU nodes of its own labelled `benchkite.dev/e2e=<id>`.
//! The fleet controller is cluster-wide, so the tests of this file take turns (one controller
//! at a time), and this file must not run at the same time as another fleet controller
//! (`tests/fleet.rs`); cargo runs test binaries one after another.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::{AgentPool, GpuNode};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::{Operator, install_crds, wait_ready};
use benchkite_e2e::{TestNamespace, client, default_timeout, wait_until};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// One fleet controller at a time (see the module doc).
static ONE_CONTROLLER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

/// A fleet controller with known addresses; `name` names its log.
struct Fleet {
    op: Operator,
    http: String,
    metrics: String,
}

impl Fleet {
    async fn start(name: &str) -> Result<Fleet> {
        let http = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let args = ["--controllers", "fleet", "--http-addr", &http, "--metrics-addr", &metrics];
        let op = Operator::start(name, &args)?;
        wait_ready(&http).await.with_context(|| format!("controller {name}:\n{}", tail(&op)))?;
        Ok(Fleet { op, http, metrics })
    }

    /// Reconciles run so far by `controller` (`gpunode`, `agentpool`), from /metrics.
    async fn reconciles(&self, controller: &str) -> Result<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics)).await?.text().await?;
        let label = format!("controller=\"{controller}\"");
        Ok(text
            .lines()
            .filter(|l| l.contains("reconciles_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum())
    }
}

fn tail(op: &Operator) -> String {
    let log = op.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The namespace, its agent token Secret and a pool `name` over the test's nodes.
async fn pool_on_test_nodes(ns: &TestNamespace, name: &str) -> Result<()> {
    benchkite_e2e::nodes::create_agent_token(ns).await?;
    let pool: AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "queue": format!("e2e-{name}"),
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": ns.name()}},
            "agent": {"image": "example.invalid/agent:e2e", "tokenSecretRef": {"name": "agent-token", "key": "token"}},
        },
    }))?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool).await?;
    Ok(())
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Agent pods of the pool (all of them, also ones being deleted).
async fn agents(ns: &TestNamespace, pool: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = ns.api();
    Ok(pods.list(&ListParams::default().labels(&format!("benchkite.dev/pool={pool}"))).await?.items)
}

/// Waits until the pool runs exactly `n` agents, all Running, and says so in its status.
async fn wait_agents(ns: &TestNamespace, pool: &str, n: usize) -> Result<BTreeSet<String>> {
    let pools: Api<AgentPool> = ns.api();
    wait_until(&format!("{n} Running agents of pool {pool}"), default_timeout(), || async {
        let pods = agents(ns, pool).await?;
        let p = pools.get(pool).await?;
        let status = p.status.unwrap_or_default();
        let ok = pods.len() == n
            && pods.iter().all(running)
            && status.ready_agents == n as i64
            && status.observed_generation == p.metadata.generation;
        Ok(ok.then(|| pods.iter().filter_map(|p| p.uid()).collect()))
    })
    .await
}

fn condition<'a>(conds: &'a [Condition], t: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// Warning Events about the pool (in its namespace) or the test's GpuNodes (cluster-scoped:
/// their Events go to `default`), as `reason: note` lines.
async fn warnings(client: &Client, ns: &TestNamespace, gpunodes: &[String]) -> Result<Vec<String>> {
    let lp = ListParams::default().fields("type=Warning");
    let mut out = Vec::new();
    let in_ns: Api<CoreEvent> = ns.api();
    let in_default: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    for e in in_ns.list(&lp).await?.items.into_iter().chain(
        in_default
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_ref().is_some_and(|n| gpunodes.contains(n))),
    ) {
        out.push(format!(
            "{} {}: {}",
            e.involved_object.name.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            e.message.unwrap_or_default()
        ));
    }
    Ok(out)
}

/// A controller restarted with SIGKILL, again and again, against a pool on a few GPU nodes:
/// after each start it reconciles everything (only once its caches are loaded), and not one
/// agent pod is deleted or replaced, and no Warning Event appears on the pool or its GpuNodes.
#[tokio::test]
async fn sigkill_restarts_keep_every_agent_and_raise_no_warning() -> Result<()> {
    let _turn = ONE_CONTROLLER_AT_A_TIME.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "restarts").await?;
    let id = ns.name().to_string();
    let names: Vec<String> = (0..3).map(|i| format!("{id}-{i}")).collect();
    let mut nodes = Vec::new();
    for n in &names {
        nodes.push(TestNode::create(&client, n, &id, "16", "64Gi", 2).await?);
    }
    let mut fleet = Fleet::start(&format!("{id}-start")).await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    // The pool comes once its GpuNodes are discovered and Ready, so that every Event below is
    // about the restarts.
    for n in &names {
        wait_until(&format!("GpuNode {n} Ready"), default_timeout(), || async {
            let Some(gn) = gpunodes.get_opt(n).await? else { return Ok(None) };
            let ready =
                gn.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some_and(|c| c.status == "True");
            Ok(ready.then_some(()))
        })
        .await
        .with_context(|| tail(&fleet.op))?;
    }
    pool_on_test_nodes(&ns, "steady").await?;
    let uids = wait_agents(&ns, "steady", 6).await.with_context(|| tail(&fleet.op))?;
    let shares = || async {
        let mut out = BTreeMap::new();
        for n in &names {
            let gn = gpunodes.get(n).await?;
            out.insert(n.clone(), gn.status.and_then(|s| s.per_gpu_share));
        }
        anyhow::Ok(out)
    };
    let before = shares().await?;
    ensure!(before.values().all(Option::is_some), "every GpuNode has a share: {before:?}");
    let nodes_api: Api<Node> = Api::all(client.clone());

    for round in 1..=5 {
        fleet.op.kill();
        fleet = Fleet::start(&format!("{id}-restart-{round}")).await?;
        // Proof the new process has acted on the test's objects: a Node label it mirrors onto
        // each GpuNode (benchkite.dev/* labels are mirrored), and at least one reconcile of
        // every pool in the cluster after its caches synced.
        for n in &names {
            nodes_api
                .patch(
                    n,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"benchkite.dev/round": round.to_string()}}})),
                )
                .await?;
        }
        for n in &names {
            wait_until(&format!("GpuNode {n} mirrors round {round}"), default_timeout(), || async {
                let gn = gpunodes.get(n).await?;
                Ok((gn.labels().get("benchkite.dev/round") == Some(&round.to_string())).then_some(()))
            })
            .await
            .with_context(|| tail(&fleet.op))?;
        }
        let pool_count = Api::<AgentPool>::all(client.clone()).list(&ListParams::default()).await?.items.len() as u64;
        wait_until("a reconcile of every pool", default_timeout(), || async {
            Ok((fleet.reconciles("agentpool").await? >= pool_count).then_some(()))
        })
        .await?;
        // Still the same pods, none being deleted, the same shares.
        let pods = agents(&ns, "steady").await?;
        let now: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        ensure!(now == uids, "round {round}: agent pods replaced: before {uids:?}, now {now:?}\n{}", tail(&fleet.op));
        ensure!(pods.iter().all(running), "round {round}: an agent is being deleted or not running");
        ensure!(shares().await? == before, "round {round}: shares changed");
        let warned = warnings(&client, &ns, &names).await?;
        ensure!(warned.is_empty(), "round {round}: Warning Events: {warned:#?}");
    }
    // The log says why nothing happened before the caches were loaded.
    ensure!(fleet.op.log_text().contains("caches synced; reconciling"), "{}", tail(&fleet.op));
    let _ = &fleet.http;
    drop(fleet);
    drop(nodes);
    ns.delete().await
}

/// With the default headroom a typical exporter DaemonSet (100m, 128Mi) schedules on GPU
/// nodes that agents fill, without an agent being replaced; a DaemonSet asking more than is
/// left is named on each GpuNode (`PodsBlocked=True`), with the fix.
#[tokio::test]
async fn daemonsets_fit_in_the_headroom_and_blocked_ones_are_named() -> Result<()> {
    let _turn = ONE_CONTROLLER_AT_A_TIME.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "headroom").await?;
    let id = ns.name().to_string();
    let names: Vec<String> = (0..2).map(|i| format!("{id}-{i}")).collect();
    let mut nodes = Vec::new();
    for n in &names {
        // 4 GPUs and exactly 8 cores + 32 Gi each plus the default headroom (250m, 512Mi).
        nodes.push(TestNode::create(&client, n, &id, "32250m", "131584Mi", 4).await?);
    }
    pool_on_test_nodes(&ns, "full").await?;
    let fleet = Fleet::start(&format!("{id}-fleet")).await?;
    let uids = wait_agents(&ns, "full", 8).await.with_context(|| tail(&fleet.op))?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    for n in &names {
        let share = gpunodes.get(n).await?.status.and_then(|s| s.per_gpu_share).context("share")?;
        ensure!(share.cpu == 8 && share.memory == "32768Mi", "{n}: {share:?}");
    }

    let daemonsets: Api<DaemonSet> = ns.api();
    let daemonset = |name: &str, cpu: &str| -> Result<DaemonSet> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": {"benchkite.dev/e2e": id},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "c", "image": "example.invalid/exporter",
                            "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}}}],
                    },
                },
            },
        }))?)
    };
    let pods: Api<Pod> = ns.api();
    let daemon_pods = |app: &'static str| {
        let pods = pods.clone();
        async move { anyhow::Ok(pods.list(&ListParams::default().labels(&format!("app={app}"))).await?.items) }
    };

    // A typical exporter: one Running pod per GPU node.
    daemonsets.create(&PostParams::default(), &daemonset("exporter", "100m")?).await?;
    wait_until("the exporter Running on every GPU node", default_timeout(), || async {
        let ps = daemon_pods("exporter").await?;
        let on: BTreeSet<String> =
            ps.iter().filter(|p| running(p)).filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
        Ok((on.len() == names.len()).then_some(()))
    })
    .await?;

    // One asking more than is left (150m after the exporter): named on each GpuNode.
    daemonsets.create(&PostParams::default(), &daemonset("hungry", "300m")?).await?;
    let hungry = wait_until("a hungry pod per node", default_timeout(), || async {
        let ps = daemon_pods("hungry").await?;
        Ok((ps.len() == names.len()).then_some(ps))
    })
    .await?;
    for n in &names {
        let gn = wait_until(&format!("GpuNode {n} PodsBlocked"), default_timeout(), || async {
            let gn = gpunodes.get(n).await?;
            let blocked = gn
                .status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "PodsBlocked"))
                .is_some_and(|c| c.status == "True");
            Ok(blocked.then_some(gn))
        })
        .await
        .with_context(|| tail(&fleet.op))?;
        let status = gn.status.context("status")?;
        let c = condition(&status.conditions, "PodsBlocked").context("PodsBlocked")?;
        ensure!(c.reason == "AgentsHoldResources", "{c:?}");
        // The pod pinned to this node is named, with what it lacks and the fix.
        let mine = hungry
            .iter()
            .find(|p| benchkite::fleet::blocked::pinned_nodes(p).contains(&n.as_str()))
            .context("a hungry pod pinned to the node")?;
        ensure!(c.message.contains(&format!("{id}/{} (Insufficient cpu)", mine.name_any())), "{}", c.message);
        ensure!(c.message.contains("spec.reserved") && c.message.contains("--node-headroom-cpu"), "{}", c.message);
        ensure!(!c.message.contains("exporter"), "the exporter runs: {}", c.message);
        let share = status.per_gpu_share.context("share")?;
        ensure!(share.cpu == 8, "{n}: the share stays: {share:?}");
        // And a Warning Event says so once.
        let events: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
        let lp = ListParams::default().fields(&format!("involvedObject.name={n},reason=PodsBlocked"));
        let seen = wait_until(&format!("a PodsBlocked Event on {n}"), default_timeout(), || async {
            let list = events.list(&lp).await?.items;
            Ok((!list.is_empty()).then_some(list))
        })
        .await?;
        ensure!(seen.len() == 1 && seen[0].type_.as_deref() == Some("Warning"), "{seen:?}");
    }

    // No agent was replaced for either DaemonSet.
    let now: BTreeSet<String> = agents(&ns, "full").await?.iter().filter_map(|p| p.uid()).collect();
    ensure!(now == uids, "agents replaced: before {uids:?}, now {now:?}");

    // Gone again: the condition clears.
    daemonsets.delete("hungry", &DeleteParams::foreground()).await?;
    for n in &names {
        wait_until(&format!("GpuNode {n} PodsBlocked False"), default_timeout(), || async {
            let gn = gpunodes.get(n).await?;
            let clear = gn
                .status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "PodsBlocked"))
                .is_some_and(|c| c.status == "False" && c.reason == "NoPodsBlocked");
            Ok(clear.then_some(()))
        })
        .await?;
    }
    let _ = &fleet.http;
    drop(fleet);
    drop(nodes);
    ns.delete().await
}

/// Hands a fake node to kwok (its heartbeats, Ready) or takes it away (the annotation kwok
/// selects the nodes it manages by).
async fn set_kwok_managed(nodes: &Api<Node>, name: &str, managed: bool) -> Result<()> {
    let value = if managed { json!("fake") } else { serde_json::Value::Null };
    let patch = json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": value}}});
    nodes.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// A Node NotReady for 60 s keeps its agents (the toleration is 300 s), and its GpuNode says
/// so (`NodeNotReadyTolerated`); once Ready again, the GpuNode is Ready. kwok would make the
/// node Ready at once, so the test takes the node from kwok and sets `Ready=False` every
/// second for the whole minute, and asserts the GpuNode did report the tolerated state (else the test would prove
/// nothing).
#[tokio::test]
async fn a_node_not_ready_for_a_minute_keeps_its_agents() -> Result<()> {
    let _turn = ONE_CONTROLLER_AT_A_TIME.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "notready").await?;
    let id = ns.name().to_string();
    let name = format!("{id}-0");
    let _node = TestNode::create(&client, &name, &id, "32", "256Gi", 4).await?;
    pool_on_test_nodes(&ns, "nr").await?;
    let fleet = Fleet::start(&format!("{id}-fleet")).await?;
    let uids = wait_agents(&ns, "nr", 4).await.with_context(|| tail(&fleet.op))?;

    let nodes: Api<Node> = Api::all(client.clone());
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let since = k8s_openapi::jiff::Timestamp::now();
    let not_ready = json!({"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "KubeletNotReady",
        "message": "e2e: heartbeats stopped", "lastHeartbeatTime": since.to_string(),
        "lastTransitionTime": since.to_string(),
    }]}});
    // kwok sets a managed node that is not Ready back to Ready at once (its node-initialize
    // stage), so a NotReady patch lasted milliseconds and the test passed only when the
    // controller happened to read the Node in between. Without kwok's annotation the node is
    // left alone, as a machine whose kubelet stopped; it is handed back afterwards.
    set_kwok_managed(&nodes, &name, false).await?;
    let mut tolerated_seen = false;
    let mut lost = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        nodes.patch_status(&name, &PatchParams::default(), &Patch::Strategic(not_ready.clone())).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let gn = gpunodes.get(&name).await?;
        let conds = gn.status.map(|s| s.conditions).unwrap_or_default();
        tolerated_seen |= condition(&conds, "Ready").is_some_and(|c| c.reason == "NodeNotReadyTolerated");
        let now: BTreeSet<String> =
            agents(&ns, "nr").await?.iter().filter(|p| running(p)).filter_map(|p| p.uid()).collect();
        lost.extend(uids.difference(&now).cloned());
    }
    lost.sort();
    lost.dedup();
    set_kwok_managed(&nodes, &name, true).await?;
    ensure!(lost.is_empty(), "agents deleted during a 60 s NotReady: {lost:?}\n{}", tail(&fleet.op));
    ensure!(tolerated_seen, "the GpuNode never said NodeNotReadyTolerated: the Node was never seen NotReady");

    // kwok manages the node again and makes it Ready; the GpuNode follows, the agents are the same.
    wait_until("the GpuNode Ready again", default_timeout(), || async {
        let gn = gpunodes.get(&name).await?;
        let conds = gn.status.map(|s| s.conditions).unwrap_or_default();
        Ok(condition(&conds, "Ready").filter(|c| c.status == "True").map(|_| ()))
    })
    .await?;
    let after: BTreeSet<String> = agents(&ns, "nr").await?.iter().filter_map(|p| p.uid()).collect();
    ensure!(after == uids, "agents replaced after the Node came back: {uids:?} -> {after:?}");
    drop(fleet);
    ns.delete().await
}

/// Shared or partitioned GPUs are refused by every documented signal (issue 18): a MIG
/// product, time-slicing with replicas, allocatable above the node's GPU count. Each
/// GpuNode's `Exclusive` condition names its signal, it is not Ready (`NotExclusive`), and a
/// pool over all four nodes runs agents on the exclusive one only.
#[tokio::test]
async fn shared_or_partitioned_gpus_are_refused_by_their_signal() -> Result<()> {
    let _turn = ONE_CONTROLLER_AT_A_TIME.lock().await;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "exclusive").await?;
    let id = ns.name().to_string();
    let cases: [(&str, serde_json::Value, Option<&str>); 5] = [
        ("ok", json!({}), None),
        // No label says so: the MPS control daemon pod on it does (created below).
        ("mps", json!({}), Some("MpsDaemon")),
        ("mig", json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}), Some("MigProduct")),
        (
            "ts",
            json!({"nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/gpu.replicas": "4"}),
            Some("TimeSlicing"),
        ),
        ("over", json!({"nvidia.com/gpu.count": "2"}), Some("OverAllocated")),
    ];
    let nodes_api: Api<Node> = Api::all(client.clone());
    let mut nodes = Vec::new();
    for (suffix, labels, _) in &cases {
        let name = format!("{id}-{suffix}");
        nodes.push(TestNode::create(&client, &name, &id, "16", "64Gi", 4).await?);
        let patch = json!({"metadata": {"labels": labels}});
        nodes_api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    // The GPU operator's MPS control daemon, as its DaemonSet names its pods.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let daemon = format!("nvidia-device-plugin-mps-control-daemon-{id}");
    let daemon_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": daemon, "labels": {"app": "nvidia-device-plugin-mps-control-daemon"}},
        "spec": {"nodeName": format!("{id}-mps"), "containers": [{"name": "mps-control-daemon-ctr", "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}],
                 "tolerations": [{"operator": "Exists"}]},
    }))?;
    pods_api.create(&PostParams::default(), &daemon_pod).await?;
    let fleet = Fleet::start(&format!("{id}-exclusive")).await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    for (suffix, _, refused) in &cases {
        let name = format!("{id}-{suffix}");
        let (want_status, want_reason) = match refused {
            Some(r) => ("False", *r),
            None => ("True", "Exclusive"),
        };
        let gn = wait_until(
            &format!("GpuNode {name} Exclusive={want_status} ({want_reason})"),
            default_timeout(),
            || async {
                let Some(gn) = gpunodes.get_opt(&name).await? else { return Ok(None) };
                let conds = gn.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                let ok =
                    condition(&conds, "Exclusive").is_some_and(|c| c.status == want_status && c.reason == want_reason);
                Ok(ok.then_some(gn))
            },
        )
        .await
        .with_context(|| tail(&fleet.op))?;
        let status = gn.status.unwrap_or_default();
        let ready = condition(&status.conditions, "Ready").cloned();
        if refused.is_some() {
            ensure!(status.shared, "{name}: status.shared");
            let excl = condition(&status.conditions, "Exclusive").map(|c| c.message.clone()).unwrap_or_default();
            ensure!(!excl.is_empty(), "{name}: the Exclusive condition says nothing");
            ensure!(
                ready.as_ref().is_some_and(|c| c.status == "False" && c.reason == "NotExclusive"),
                "{name}: Ready {ready:?}"
            );
        } else {
            ensure!(!status.shared, "{name}: shared");
        }
    }
    pool_on_test_nodes(&ns, "excl").await?;
    let uids = wait_agents(&ns, "excl", 4).await?;
    let pods = agents(&ns, "excl").await?;
    let on: BTreeSet<String> = pods.iter().filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())).collect();
    ensure!(on == BTreeSet::from([format!("{id}-ok")]), "agents on {on:?} ({} agents)", uids.len());
    // Once the daemon is gone, the node's GPUs are exclusive again.
    pods_api.delete(&daemon, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    let name = format!("{id}-mps");
    wait_until(&format!("GpuNode {name} Exclusive=True once the MPS daemon is gone"), default_timeout(), || async {
        let Some(gn) = gpunodes.get_opt(&name).await? else { return Ok(None) };
        let conds = gn.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        Ok(condition(&conds, "Exclusive").is_some_and(|c| c.status == "True").then_some(()))
    })
    .await
    .with_context(|| tail(&fleet.op))?;
    drop(fleet);
    drop(nodes);
    ns.delete().await
}
