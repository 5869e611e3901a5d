//! The fleet at scale through restarts and a leader failover (issue 16's acceptance):
//! `FLEET_SCALE_NODES` kwok GPU nodes of 8 H100 each (default 150), one AgentPool on all of
//! them, every agent Running; then `FLEET_SCALE_RESTARTS` SIGKILL restarts of the controller
//! (default 20) and a failover between two replicas with leader election. Asserts that no
//! agent pod was deleted or replaced (same UIDs, none terminating) and that no Warning Event
//! and no false condition appeared on the pool or its GpuNodes. Then `spec.reserved` changes
//! on every GpuNode: available agents, sampled every second, stay at 90% of desired or more
//! (the default maxUnavailable, 10%) while the whole fleet rolls to the new share.
//!
//! `#[ignore]`d: `make fleet-scale` runs it on a cluster of its own at the size
//! (`FLEET_SCALE_NODES=6 FLEET_SCALE_RESTARTS=3` for a quick look on the e2e cluster).
//! Nodes, namespace and GpuNodes are the test's own (label `benchkite.dev/e2e=<ns>`), and
//! are removed at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use benchkite::api::{AgentPool, GpuNode};
use benchkite_e2e::nodes::create_h100_node;
use benchkite_e2e::operator::{Operator, install_crds};
use benchkite_e2e::{TestNamespace, client, wait_until};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const GPUS: usize = 8;
/// The per-GPU CPU share after `spec.reserved: {cpu: 8}` on a 128-core node with the default
/// 250m headroom: floor((128 − 8 − 0.25) ÷ 8) = 14 (15 before).
const RESERVED_SHARE_CPU: i64 = 14;
const LEASE_SECONDS: u64 = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

struct Scale {
    client: Client,
    ns: TestNamespace,
    label: String,
    nodes: usize,
}

impl Scale {
    fn node_names(&self) -> Vec<String> {
        (0..self.nodes).map(|i| format!("{}-{i}", self.label)).collect()
    }

    async fn create_nodes(&self) -> Result<()> {
        futures::stream::iter(self.node_names())
            .map(|name| async move {
                create_h100_node(&self.client, &name, &self.label, "128", "1Ti", GPUS as u32).await
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Pods first (kwok cannot finish pods of a node that is gone), then nodes and GpuNodes.
    async fn cleanup(&self) {
        let pods: Api<Pod> = self.ns.api();
        let _ = pods.delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default()).await;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let by_label = ListParams::default().labels(&format!("benchkite.dev/e2e={}", self.label));
        let _ = nodes.delete_collection(&DeleteParams::default(), &by_label).await;
        let gpunodes: Api<GpuNode> = Api::all(self.client.clone());
        for name in self.node_names() {
            let _ = gpunodes.delete(&name, &DeleteParams::default()).await;
        }
    }

    /// Live agent pods of the pool: name → UID, and how many are Running and not terminating.
    async fn agents(&self) -> Result<(BTreeMap<String, String>, usize, usize)> {
        let pods: Api<Pod> = self.ns.api();
        let list = pods.list(&ListParams::default().labels("benchkite.dev/pool=scale")).await?.items;
        let terminating = list.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count();
        let running = list
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .count();
        let uids = list.iter().map(|p| (p.name_any(), p.uid().unwrap_or_default())).collect();
        Ok((uids, running, terminating))
    }

    /// Warning Events about the pool, its pods and its GpuNodes since `since`.
    async fn warnings(&self, since: &k8s_openapi::jiff::Timestamp) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let names: std::collections::BTreeSet<String> = self.node_names().into_iter().collect();
        let ns_events: Api<CoreEvent> = self.ns.api();
        let all_events: Api<CoreEvent> = Api::all(self.client.clone());
        let warn = ListParams::default().fields("type=Warning");
        let mut events = ns_events.list(&warn).await?.items;
        events.extend(
            all_events
                .list(&warn)
                .await?
                .items
                .into_iter()
                .filter(|e| e.involved_object.kind.as_deref() == Some("GpuNode"))
                .filter(|e| e.involved_object.name.as_ref().is_some_and(|n| names.contains(n))),
        );
        for e in events {
            let when = e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0));
            if when.is_some_and(|t| t >= *since) {
                out.push(format!(
                    "{} {}/{}: {} {}",
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.namespace.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                ));
            }
        }
        Ok(out)
    }

    /// Conditions of the pool and its GpuNodes that are not as a healthy fleet has them.
    async fn false_conditions(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let pools: Api<AgentPool> = self.ns.api();
        let pool = pools.get("scale").await?;
        for c in pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default() {
            if c.type_ == "Ready" && c.status != "True" {
                out.push(format!("AgentPool Ready={} {}: {}", c.status, c.reason, c.message));
            }
        }
        let gpunodes: Api<GpuNode> = Api::all(self.client.clone());
        for name in self.node_names() {
            let gn = gpunodes.get(&name).await?;
            for c in gn.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default() {
                if c.type_ == "Ready" && c.status != "True" {
                    out.push(format!("GpuNode {name} Ready={} {}: {}", c.status, c.reason, c.message));
                }
            }
        }
        Ok(out)
    }
}

fn controller(scale: &Scale, name: &str, http: &str, elect: bool) -> Result<Operator> {
    let lease = format!("lease-{}", scale.ns.name());
    let secs = LEASE_SECONDS.to_string();
    let mut args = vec!["--controllers", "fleet", "--http-addr", http, "--agent-grace-seconds", "2"];
    if elect {
        args.extend([
            "--leader-elect=true",
            "--leader-election-namespace",
            scale.ns.name(),
            "--leader-election-lease-name",
            &lease,
            "--leader-election-lease-seconds",
            &secs,
        ]);
    }
    Operator::start_with_env(&format!("{}-{name}", scale.ns.name()), &args, &[("POD_NAME", name)])
}

/// The fewest available agents (Running, not terminating) of the pool after any pod watch
/// event, from the first full list (said on `listed_tx`) until `stop`: every change is seen,
/// not a sample of them.
async fn min_available_while(
    pods: Api<Pod>,
    listed_tx: tokio::sync::oneshot::Sender<()>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(usize, usize)> {
    use kube::runtime::{WatchStreamExt, watcher};
    let available = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none() && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    };
    let stream = watcher(pods, watcher::Config::default().labels("benchkite.dev/pool=scale")).default_backoff();
    futures::pin_mut!(stream);
    let mut now: BTreeMap<String, bool> = BTreeMap::new();
    let mut init: BTreeMap<String, bool> = BTreeMap::new();
    let (mut listed, mut min, mut events) = (false, usize::MAX, 0usize);
    let mut listed_tx = Some(listed_tx);
    loop {
        let ev = tokio::select! {
            _ = &mut stop => break,
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { break };
        match ev.context("watching the agent pods")? {
            watcher::Event::Init => init.clear(),
            watcher::Event::InitApply(p) => {
                init.insert(p.name_any(), available(&p));
            }
            watcher::Event::InitDone => {
                now = std::mem::take(&mut init);
                listed = true;
                if let Some(tx) = listed_tx.take() {
                    let _ = tx.send(());
                }
            }
            watcher::Event::Apply(p) => {
                now.insert(p.name_any(), available(&p));
            }
            watcher::Event::Delete(p) => {
                now.remove(&p.name_any());
            }
        }
        if listed {
            events += 1;
            min = min.min(now.values().filter(|a| **a).count());
        }
    }
    Ok((min, events))
}

/// Waits until `addr` can be bound again (the killed process is gone).
async fn port_free(addr: &str) -> Result<()> {
    wait_until(&format!("{addr} free"), Duration::from_secs(30), || async {
        Ok(std::net::TcpListener::bind(addr).ok().map(drop))
    })
    .await
}

/// Waits until the controller answers `/readyz`, then gives it `settle` to act on what it
/// loaded: a controller that would delete or warn does it within its first reconciles.
async fn ready_then_settle(http: &str, settle: Duration) -> Result<()> {
    benchkite_e2e::operator::wait_ready(http).await?;
    tokio::time::sleep(settle).await;
    Ok(())
}

/// No agent replaced or terminating, all Running, no Warning Event, no false condition.
async fn check(
    scale: &Scale,
    uids: &BTreeMap<String, String>,
    since: &k8s_openapi::jiff::Timestamp,
    phase: &str,
) -> Result<()> {
    let want = scale.nodes * GPUS;
    let (now, running, terminating) = scale.agents().await?;
    let replaced: Vec<&String> = uids.keys().filter(|name| now.get(*name) != uids.get(*name)).collect();
    let warnings = scale.warnings(since).await?;
    let conditions = scale.false_conditions().await?;
    ensure!(
        replaced.is_empty() && terminating == 0 && running == want,
        "{phase}: {} agent pods deleted or replaced (e.g. {:?}), {terminating} terminating, {running}/{want} Running",
        replaced.len(),
        replaced.iter().take(5).collect::<Vec<_>>()
    );
    ensure!(warnings.is_empty(), "{phase}: Warning Events: {warnings:#?}");
    ensure!(conditions.is_empty(), "{phase}: false conditions: {conditions:#?}");
    Ok(())
}

#[tokio::test]
#[ignore]
async fn fleet_survives_restarts_and_a_failover_at_scale() -> Result<()> {
    let nodes = env_usize("FLEET_SCALE_NODES", 150);
    let restarts = env_usize("FLEET_SCALE_RESTARTS", 20);
    let settle = Duration::from_secs(env_usize("FLEET_SCALE_SETTLE_SECS", 15) as u64);
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "scale").await?;
    let scale = Scale { client: client.clone(), label: ns.name().to_string(), ns, nodes };
    let result = run(&scale, restarts, settle).await;
    scale.cleanup().await;
    result?;
    scale.ns.delete().await
}

async fn run(scale: &Scale, restarts: usize, settle: Duration) -> Result<()> {
    let want = scale.nodes * GPUS;
    let t0 = Instant::now();
    scale.create_nodes().await?;
    let secrets: Api<Secret> = scale.ns.api();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "agent-token"}, "stringData": {"token": "x"}}))?,
        )
        .await?;
    let pools: Api<AgentPool> = scale.ns.api();
    let pool: AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "scale"},
        "spec": {
            "queue": format!("scale-{}", scale.ns.name()),
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": scale.label}},
            "gpusPerAgent": 1,
            "agent": {"image": "example.invalid/agent:scale", "tokenSecretRef": {"name": "agent-token", "key": "token"}},
        },
    }))?;
    pools.create(&PostParams::default(), &pool).await?;

    let http = format!("127.0.0.1:{}", free_port()?);
    let mut ctl = controller(scale, "replica-a", &http, false)?;
    let fleet_timeout = Duration::from_secs(120 + scale.nodes as u64 * 4);
    let uids = wait_until(&format!("{want} Running agents"), fleet_timeout, || async {
        let (uids, running, terminating) = scale.agents().await?;
        Ok((uids.len() == want && running == want && terminating == 0).then_some(uids))
    })
    .await
    .with_context(|| ctl.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n"))?;
    println!("fleet-scale: {} nodes, {want} agents Running after {:.0?}", scale.nodes, t0.elapsed());
    // Start counting once the fleet is whole.
    let since = k8s_openapi::jiff::Timestamp::now();

    let mut restart_times = Vec::new();
    for i in 1..=restarts {
        ctl.kill();
        let started = Instant::now();
        // SIGKILL is asynchronous: the next process needs the port the dead one held.
        port_free(&http).await?;
        ctl = controller(scale, "replica-a", &http, false)?;
        ready_then_settle(&http, settle).await.with_context(|| ctl.log_text())?;
        restart_times.push(started.elapsed() - settle);
        check(scale, &uids, &since, &format!("after SIGKILL restart {i}")).await?;
    }
    ctl.kill();
    if !restart_times.is_empty() {
        let max = restart_times.iter().max().copied().unwrap_or_default();
        println!(
            "fleet-scale: {restarts} SIGKILL restarts: 0 agents replaced, 0 Warnings; ready within {max:.1?} at most"
        );
    }

    // Two replicas with leader election; the leader is killed, the standby takes over.
    let (http_a, http_b) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let a = controller(scale, "replica-a", &http_a, true)?;
    let leases: Api<Lease> = scale.ns.api();
    let lease_name = format!("lease-{}", scale.ns.name());
    let holder = || async {
        Ok::<_, anyhow::Error>(
            leases
                .get_opt(&lease_name)
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty()),
        )
    };
    wait_until("replica-a holds the Lease", Duration::from_secs(90), || async {
        Ok(holder().await?.filter(|h| h == "replica-a"))
    })
    .await
    .with_context(|| a.log_text())?;
    let b = controller(scale, "replica-b", &http_b, true)?;
    ready_then_settle(&http_b, settle).await?;
    check(scale, &uids, &since, "with two replicas").await?;
    a.kill();
    let killed = Instant::now();
    wait_until("replica-b holds the Lease", Duration::from_secs(LEASE_SECONDS * 6), || async {
        Ok(holder().await?.filter(|h| h == "replica-b"))
    })
    .await
    .with_context(|| b.log_text())?;
    let handover = killed.elapsed();
    tokio::time::sleep(settle).await;
    check(scale, &uids, &since, "after the leader failover").await?;
    println!("fleet-scale: leader failover in {handover:.1?}: 0 agents replaced, 0 Warnings");

    // `spec.reserved` changed on every GpuNode: every share shrinks, every agent is outdated.
    // With the default maxUnavailable (10%), available agents sampled every second never
    // fall below 90% of desired, and the fleet converges on the new share.
    let floor = want - (want / 10).max(1);
    let gpunodes: Api<GpuNode> = Api::all(scale.client.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel::<()>();
    let watched = tokio::spawn(min_available_while(scale.ns.api(), listed_tx, stop_rx));
    // Nothing changes before the watch has listed every agent.
    listed_rx.await.context("the agent pod watch ended before its first list")?;
    let started = Instant::now();
    futures::stream::iter(scale.node_names())
        .map(|name| {
            let gpunodes = gpunodes.clone();
            async move {
                let reserved = json!({"spec": {"reserved": {"cpu": "8", "memory": "64Gi"}}});
                gpunodes.patch(&name, &PatchParams::default(), &Patch::Merge(reserved)).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let pods: Api<Pod> = scale.ns.api();
    let mut min_available = usize::MAX;
    let mut samples = 0;
    let roll_timeout = Duration::from_secs(300 + scale.nodes as u64 * 8);
    loop {
        let (_, running, _) = scale.agents().await?;
        min_available = min_available.min(running);
        samples += 1;
        // Converged: every agent Running with the CPU of its GpuNode's new share.
        let shares: BTreeMap<String, i64> = gpunodes
            .list(&ListParams::default().labels(&format!("benchkite.dev/e2e={}", scale.label)))
            .await?
            .items
            .into_iter()
            .filter_map(|gn| {
                let st = gn.status.as_ref()?;
                let current = st.observed_generation == gn.metadata.generation;
                let cpu = st.per_gpu_share.as_ref()?.cpu;
                (current && cpu == RESERVED_SHARE_CPU).then(|| (gn.name_any(), cpu))
            })
            .collect();
        let list = pods.list(&ListParams::default().labels("benchkite.dev/pool=scale")).await?.items;
        let rolled = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                let cpu = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.resources.as_ref())
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get("cpu"))
                    .map(|q| q.0.clone());
                shares.get(&node).is_some_and(|c| cpu.as_deref() == Some(c.to_string().as_str()))
            })
            .count();
        if shares.len() == scale.nodes && rolled == want && running == want {
            break;
        }
        ensure!(
            started.elapsed() < roll_timeout,
            "the reserved change did not converge in {roll_timeout:?}: {} GpuNodes re-sized, {rolled}/{want} agents rolled, {running} available",
            shares.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rolled_in = started.elapsed();
    let _ = stop_tx.send(());
    let (watched_min, events) = watched.await??;
    let min_available = min_available.min(watched_min);
    ensure!(
        min_available >= floor,
        "available agents fell to {min_available} during the roll (desired {want}, at least {floor} with maxUnavailable 10%)"
    );
    println!(
        "fleet-scale: reserved changed on {} nodes: rolled {want} agents in {rolled_in:.0?}, at least {min_available} of {want} available (after each of {events} pod watch events, and {samples} lists; floor {floor})",
        scale.nodes,
    );
    drop(b);
    Ok(())
}
