//! GpuNode discovery and the AgentPool fleet, end to end: the real `benchkite controller`
//! process against the local cluster (real API server, scheduler, controller-manager; kwok
//! kubelets).
//!
//! Tests that need nodes of their own create fake nodes labelled `benchkite.dev/e2e=<id>`
//! and select them by that label, so they run in parallel without claiming each other's
//! GPUs. Only `h100_pool_*` uses the default fleet's H100 nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use benchkite::api::agentpool::{
    AgentPoolSpec, AgentSpec, GpuNodeSelector, PodOverrides, SecretKeyRef, SelectorOperator, SelectorRequirement,
};
use benchkite::api::{AgentPool, GpuNode};
use benchkite_e2e::nodes::{TestNode, delete_node};
use benchkite_e2e::operator::shared_controller;
use benchkite_e2e::{TestNamespace, client, default_timeout, wait_until};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const CONTROLLER_ARGS: &[&str] =
    &["--discovery-grace-seconds", "5", "--agent-grace-seconds", "2", "--http-addr", "127.0.0.1:0"];

async fn setup(prefix: &str) -> Result<(Client, TestNamespace)> {
    let client = client().await?;
    shared_controller("fleet", CONTROLLER_ARGS).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    benchkite_e2e::nodes::create_agent_token(&ns).await?;
    Ok((client, ns))
}

fn selector(key: &str, values: &[&str]) -> GpuNodeSelector {
    GpuNodeSelector {
        match_expressions: vec![SelectorRequirement {
            key: key.into(),
            operator: SelectorOperator::In,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
        ..Default::default()
    }
}

fn pool(name: &str, sel: GpuNodeSelector) -> AgentPool {
    AgentPool::new(
        name,
        AgentPoolSpec {
            queue: format!("e2e-{name}"),
            gpu_node_selector: sel,
            gpus_per_agent: 1,
            agent: AgentSpec {
                image: Some("example.invalid/agent:e2e".into()),
                token_secret_ref: SecretKeyRef { name: "agent-token".into(), key: "token".into() },
                tags: BTreeMap::new(),
                env: vec![],
                env_from: vec![],
                ephemeral: true,
                priority: None,
                hooks: None,
                pod: PodOverrides::default(),
            },
            paused: false,
            buildkite: None,
            strategy: None,
            certification: None,
            queueing: None,
            autoscaling: None,
            result_cache: None,
            dra: None,
        },
    )
}

fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

async fn pool_pods(ns: &TestNamespace, pool: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = ns.api();
    Ok(pods.list(&ListParams::default().labels(&format!("benchkite.dev/pool={pool}"))).await?.items)
}

fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Waits until the pool has exactly `n` Running agent pods and reports them Ready.
async fn wait_agents(ns: &TestNamespace, pool: &str, n: usize) -> Result<Vec<Pod>> {
    let pools: Api<AgentPool> = ns.api();
    wait_until(&format!("{n} Running agents of pool {pool}"), default_timeout(), || async {
        let pods = pool_pods(ns, pool).await?;
        let live: Vec<Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).cloned().collect();
        let p = pools.get(pool).await?;
        let status = p.status.unwrap_or_default();
        let ok = live.len() == n
            && live.iter().all(running)
            && status.ready_agents == n as i64
            && status.desired_agents == n as i64
            && status.observed_generation == p.metadata.generation;
        Ok(ok.then_some(live))
    })
    .await
}

fn per_node(pods: &[Pod]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in pods {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        *out.entry(node).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn discovery_creates_gpunodes_for_the_default_fleet() -> Result<()> {
    let client = client().await?;
    shared_controller("fleet", CONTROLLER_ARGS).await?;
    let api: Api<GpuNode> = Api::all(client.clone());
    // (name, product, arch, gpus, resource, cpu share, memory share)
    let expected = [
        ("gpu-h100-0", "NVIDIA-H100-80GB-HBM3", "sm_90", 8, "nvidia.com/gpu", "h100"),
        ("gpu-h100-1", "NVIDIA-H100-80GB-HBM3", "sm_90", 8, "nvidia.com/gpu", "h100"),
        ("gpu-l40s-0", "NVIDIA-L40S", "sm_89", 2, "nvidia.com/gpu", "l40s"),
        ("gpu-mi300-0", "AMD_Instinct_MI300X_OAM", "gfx942", 8, "amd.com/gpu", "mi300x"),
    ];
    let nodes: Api<Node> = Api::all(client.clone());
    for (name, product, arch, gpus, resource, gpu_type) in expected {
        let gn = wait_until(&format!("GpuNode {name} Ready"), default_timeout(), || async {
            let Some(gn) = api.get_opt(name).await? else { return Ok(None) };
            let ready =
                gn.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some_and(|c| c.status == "True");
            Ok(ready.then_some(gn))
        })
        .await?;
        let node = nodes.get(name).await?;
        let alloc = node.status.and_then(|s| s.allocatable).context("node allocatable")?;
        let cpu: i64 = alloc["cpu"].0.parse()?;
        let mem = benchkite::fleet::quantity::whole_units(&alloc["memory"].0)?;
        let status = gn.status.clone().context("status")?;
        ensure!(gn.is_discovered(), "{name} should carry the discovered label");
        ensure!(status.product.as_deref() == Some(product), "{name} product: {:?}", status.product);
        ensure!(status.architecture.as_deref() == Some(arch), "{name} arch: {:?}", status.architecture);
        ensure!(status.gpu_count == gpus, "{name} gpus: {}", status.gpu_count);
        ensure!(status.resource_name.as_deref() == Some(resource), "{name} resource: {:?}", status.resource_name);
        ensure!(status.gpu_type.as_deref() == Some(gpu_type), "{name} type: {:?}", status.gpu_type);
        let share = status.per_gpu_share.context("share")?;
        // Sized with the default headroom (250m, 512Mi) kept free: whole cores, whole GiB.
        let mib = (mem - 512 * (1 << 20)) / gpus / (1 << 20);
        let mib = if mib >= 1024 { mib - mib % 1024 } else { mib };
        ensure!(
            share.cpu == (cpu * 1000 - 250) / gpus / 1000,
            "{name} cpu share {} for {cpu} cores / {gpus}",
            share.cpu
        );
        ensure!(share.memory == format!("{mib}Mi"), "{name} memory share {} for {mem} bytes / {gpus}", share.memory);
        ensure!(status.observed_generation == gn.metadata.generation);
        ensure!(
            gn.labels()
                .get("nvidia.com/gpu.product")
                .or(gn.labels().get("amd.com/gpu.product-name"))
                .map(String::as_str)
                == Some(product),
            "{name} labels mirror the node's: {:?}",
            gn.labels()
        );
        for t in ["NodeFound", "Exclusive"] {
            ensure!(
                condition(&status.conditions, t).is_some_and(|c| c.status == "True"),
                "{name} {t}: {:?}",
                status.conditions
            );
        }
    }
    ensure!(api.get_opt("cpu-0").await?.is_none(), "no GpuNode for the CPU-only node");
    Ok(())
}

#[tokio::test]
async fn h100_pool_runs_one_guaranteed_agent_per_gpu() -> Result<()> {
    let (client, ns) = setup("h100pool").await?;
    let pools: Api<AgentPool> = ns.api();
    let p = pool("h100", selector("kubernetes.io/hostname", &["gpu-h100-0", "gpu-h100-1"]));
    pools.create(&PostParams::default(), &p).await?;
    let agents = wait_agents(&ns, "h100", 16).await?;
    let counts = per_node(&agents);
    ensure!(counts.get("gpu-h100-0") == Some(&8) && counts.get("gpu-h100-1") == Some(&8), "per node: {counts:?}");
    for pod in &agents {
        let name = pod.name_any();
        let qos = pod.status.as_ref().and_then(|s| s.qos_class.as_deref());
        ensure!(qos == Some("Guaranteed"), "{name} QoS {qos:?}");
        let spec = pod.spec.as_ref().context("spec")?;
        ensure!(spec.containers.len() == 1);
        let limits = spec.containers[0].resources.as_ref().and_then(|r| r.limits.clone()).context("limits")?;
        ensure!(limits["nvidia.com/gpu"].0 == "1", "{name} gpu limit {:?}", limits["nvidia.com/gpu"]);
        // 128 cores and 1 TiB over 8 GPUs, less the default headroom (250m, 512Mi), in whole
        // cores and whole GiB: 15 cores, 127 GiB.
        ensure!(limits["cpu"].0 == "15", "{name} cpu {:?}", limits["cpu"]);
        let memory = benchkite::fleet::quantity::whole_units(&limits["memory"].0)?;
        ensure!(memory == 127 << 30, "{name} memory {:?}", limits["memory"]);
        ensure!(spec.automount_service_account_token == Some(false), "{name} mounts a token");
        let sc = spec.containers[0].security_context.as_ref().context("security context")?;
        ensure!(sc.privileged != Some(true) && sc.allow_privilege_escalation == Some(false));
        ensure!(name.starts_with("h100-gpu-h100-"), "pod name {name}");
    }
    let status = pools.get("h100").await?.status.context("status")?;
    ensure!(status.selected_nodes == 2 && status.gpus_claimed == 16, "{status:?}");

    // Deleting an agent brings a replacement.
    let pods_api: Api<Pod> = ns.api();
    let victim = agents[3].clone();
    pods_api.delete(&victim.name_any(), &DeleteParams::default()).await?;
    wait_until("a replacement agent", default_timeout(), || async {
        let pods = pool_pods(&ns, "h100").await?;
        let replaced = pods.iter().any(|p| p.name_any() == victim.name_any() && p.uid() != victim.uid() && running(p));
        Ok((replaced && pods.iter().filter(|p| running(p)).count() == 16).then_some(()))
    })
    .await?;
    // Never a ninth agent pod on a node.
    let counts = per_node(&pool_pods(&ns, "h100").await?);
    ensure!(counts.values().all(|n| *n <= 8), "per node: {counts:?}");

    // Deleting the pool removes every pod (owner references, garbage collector).
    pools.delete("h100", &DeleteParams::default()).await?;
    wait_until("pool pods garbage-collected", default_timeout(), || async {
        Ok(pool_pods(&ns, "h100").await?.is_empty().then_some(()))
    })
    .await?;
    let _ = client;
    ns.delete().await
}

#[tokio::test]
async fn added_nodes_get_agents_maintenance_drains_and_removed_nodes_lose_them() -> Result<()> {
    let (client, ns) = setup("nodes").await?;
    let id = ns.name().to_string();
    let (a, b) = (format!("{id}-a"), format!("{id}-b"));
    let _node_a = TestNode::create(&client, &a, &id, "64", "256Gi", 4).await?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool("grow", selector("benchkite.dev/e2e", &[&id]))).await?;
    wait_agents(&ns, "grow", 4).await?;

    // A node added to the selection gets agents.
    let _node_b = TestNode::create(&client, &b, &id, "64", "256Gi", 4).await?;
    let agents = wait_agents(&ns, "grow", 8).await?;
    ensure!(per_node(&agents).len() == 2);

    // Maintenance drains the node; lifting it brings agents back.
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    gpunodes.patch(&b, &PatchParams::default(), &Patch::Merge(json!({"spec": {"maintenance": true}}))).await?;
    let agents = wait_agents(&ns, "grow", 4).await?;
    ensure!(per_node(&agents).keys().all(|n| n == &a), "only {a} keeps agents: {:?}", per_node(&agents));
    let status = pools.get("grow").await?.status.context("status")?;
    let node_b = status.nodes.iter().find(|n| n.name == b).context("node b in status")?;
    ensure!(node_b.state == "Maintenance", "{node_b:?}");
    gpunodes.patch(&b, &PatchParams::default(), &Patch::Merge(json!({"spec": {"maintenance": false}}))).await?;
    wait_agents(&ns, "grow", 8).await?;

    // A deleted Node loses its agents; its discovered GpuNode goes after the grace period.
    delete_node(&client, &b).await;
    wait_agents(&ns, "grow", 4).await?;
    wait_until("discovered GpuNode of a deleted Node removed", Duration::from_secs(90), || async {
        Ok(gpunodes.get_opt(&b).await?.is_none().then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn overlapping_pools_conflict_and_never_overcommit() -> Result<()> {
    let (client, ns) = setup("conflict").await?;
    let id = ns.name().to_string();
    let node = format!("{id}-n");
    let _node = TestNode::create(&client, &node, &id, "32", "128Gi", 4).await?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool("older", selector("benchkite.dev/e2e", &[&id]))).await?;
    wait_agents(&ns, "older", 4).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation timestamps have 1 s resolution
    pools.create(&PostParams::default(), &pool("newer", selector("benchkite.dev/e2e", &[&id]))).await?;
    let newer = wait_until("Conflict on the newer pool", default_timeout(), || async {
        let p = pools.get("newer").await?;
        let conflict =
            p.status.as_ref().and_then(|s| condition(&s.conditions, "Conflict")).is_some_and(|c| c.status == "True");
        Ok(conflict.then_some(p))
    })
    .await?;
    let msg = newer
        .status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Conflict"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(msg.contains(&node) && msg.contains("older"), "conflict message: {msg}");
    ensure!(pool_pods(&ns, "newer").await?.is_empty(), "the newer pool must not start agents");
    let older = pools.get("older").await?.status.context("status")?;
    ensure!(condition(&older.conditions, "Conflict").is_some_and(|c| c.status == "False"));
    let events: Api<CoreEvent> = ns.api();
    wait_until("a Conflict event", default_timeout(), || async {
        let evs = events.list(&ListParams::default()).await?;
        Ok(evs
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Conflict") && e.involved_object.name.as_deref() == Some("newer"))
            .then_some(()))
    })
    .await?;

    // Hand-over: when the older pool goes, the newer one takes the node, never holding
    // more GPU claims on it than it has GPUs.
    pools.delete("older", &DeleteParams::default()).await?;
    let pods: Api<Pod> = ns.api();
    let deadline = std::time::Instant::now() + default_timeout();
    loop {
        let on_node: Vec<Pod> = pods
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=benchkite"))
            .await?
            .items
            .into_iter()
            .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
            .collect();
        ensure!(on_node.len() <= 4, "{} live agent pods on a 4-GPU node", on_node.len());
        let newer_running = on_node
            .iter()
            .filter(|p| p.labels().get("benchkite.dev/pool").map(String::as_str) == Some("newer") && running(p))
            .count();
        if newer_running == 4 {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("newer pool did not take over: {newer_running} running");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_agents(&ns, "newer", 4).await?;
    ns.delete().await
}

#[tokio::test]
async fn failed_agents_are_replaced_and_reported() -> Result<()> {
    let (client, ns) = setup("failed").await?;
    let id = ns.name().to_string();
    let node = format!("{id}-n");
    let _node = TestNode::create(&client, &node, &id, "16", "64Gi", 2).await?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool("flaky", selector("benchkite.dev/e2e", &[&id]))).await?;
    let agents = wait_agents(&ns, "flaky", 2).await?;
    // What the kubelet does to a pod the topology manager refuses.
    let victim = agents[0].clone();
    let pods: Api<Pod> = ns.api();
    pods.patch_status(
        &victim.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed", "reason": "TopologyAffinityError", "message": "Resources cannot be allocated with Topology locality"}})),
    )
    .await?;
    wait_until("Degraded names the failure", default_timeout(), || async {
        let p = pools.get("flaky").await?;
        let c = p.status.as_ref().and_then(|s| condition(&s.conditions, "Degraded")).cloned();
        Ok(c.filter(|c| c.status == "True" && c.message.contains("TopologyAffinityError")).map(|_| ()))
    })
    .await?;
    wait_until("the failed agent replaced", default_timeout(), || async {
        let p = pool_pods(&ns, "flaky").await?;
        Ok(p.iter().any(|p| p.name_any() == victim.name_any() && p.uid() != victim.uid() && running(p)).then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn impossible_pools_say_why_and_start_nothing() -> Result<()> {
    let (client, ns) = setup("impossible").await?;
    let id = ns.name().to_string();
    let tiny = format!("{id}-tiny");
    let pools: Api<AgentPool> = ns.api();
    let events: Api<CoreEvent> = ns.api();
    let degraded = |name: &'static str, reason: &'static str| {
        let pools = pools.clone();
        async move {
            wait_until(&format!("{name} Degraded/{reason}"), default_timeout(), || async {
                let p = pools.get(name).await?;
                let s = p.status.unwrap_or_default();
                // kstatus: only the user can fix these pools, so they are Stalled, not Reconciling.
                let ok = condition(&s.conditions, "Degraded").is_some_and(|c| c.status == "True" && c.reason == reason)
                    && condition(&s.conditions, "Ready").is_some_and(|c| c.status == "False")
                    && condition(&s.conditions, "Stalled").is_some_and(|c| c.status == "True" && c.reason == reason)
                    && condition(&s.conditions, "Reconciling").is_some_and(|c| c.status == "False");
                Ok(ok.then_some(()))
            })
            .await
        }
    };
    // Selects nothing.
    pools.create(&PostParams::default(), &pool("nothing", selector("benchkite.dev/e2e", &["no-such-node"]))).await?;
    degraded("nothing", "NoNodesSelected").await?;
    // Token Secret missing.
    let _node_tiny = TestNode::create(&client, &tiny, &id, "4", "16Gi", 8).await?;
    let mut p = pool("notoken", selector("kubernetes.io/hostname", &["gpu-l40s-0"]));
    p.spec.agent.token_secret_ref.name = "missing".into();
    pools.create(&PostParams::default(), &p).await?;
    degraded("notoken", "TokenSecretMissing").await?;
    // GPUs through DRA asked of a controller without --dra-driver.
    let mut p = pool("nodra", selector("kubernetes.io/hostname", &["gpu-l40s-0"]));
    p.spec.dra = Some(Default::default());
    pools.create(&PostParams::default(), &p).await?;
    degraded("nodra", "DraDisabled").await?;
    // Share too small: 4 cores over 8 GPUs.
    pools.create(&PostParams::default(), &pool("tiny", selector("benchkite.dev/e2e", &[&id]))).await?;
    degraded("tiny", "NoUsableNodes").await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    // The pool may say so before the GpuNode's own status is written (its reconcile is
    // debounced by a second).
    let gn = wait_until("the tiny GpuNode's Ready condition", default_timeout(), || async {
        let gn = gpunodes.get(&tiny).await?;
        let has = gn.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).is_some();
        Ok(has.then_some(gn))
    })
    .await?;
    let ready = gn.status.as_ref().and_then(|s| condition(&s.conditions, "Ready")).context("Ready")?;
    ensure!(ready.reason == "ShareTooSmall" && ready.message.contains("below the minimum"), "{ready:?}");
    let stalled = gn.status.as_ref().and_then(|s| condition(&s.conditions, "Stalled")).context("Stalled")?;
    ensure!(stalled.status == "True" && stalled.reason == "ShareTooSmall", "{stalled:?}");
    for name in ["nothing", "notoken", "nodra", "tiny"] {
        ensure!(pool_pods(&ns, name).await?.is_empty(), "{name} must start no agents");
    }
    wait_until("Events for each impossible pool", default_timeout(), || async {
        let evs = events.list(&ListParams::default()).await?.items;
        let has = |obj: &str, reason: &str| {
            evs.iter().any(|e| e.involved_object.name.as_deref() == Some(obj) && e.reason.as_deref() == Some(reason))
        };
        Ok((has("nothing", "NoNodesSelected")
            && has("notoken", "TokenSecretMissing")
            && has("nodra", "DraDisabled")
            && has("tiny", "NoUsableNodes"))
        .then_some(()))
    })
    .await?;
    ns.delete().await
}

/// Each invalid pool or GpuNode is refused by the API server with a message that says what
/// to fix.
#[tokio::test]
async fn invalid_objects_are_rejected_by_the_api_server() -> Result<()> {
    let (client, ns) = setup("invalid").await?;
    let pools: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &kube::api::ApiResource::erase::<AgentPool>(&()));
    let base = serde_json::to_value(pool("bad", GpuNodeSelector::default()))?;
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("empty queue", json!({"spec": {"queue": ""}}), "queue must be 1 to 100 characters"),
        ("queue with spaces", json!({"spec": {"queue": "my queue"}}), "queue may contain only letters"),
        ("queue with comma", json!({"spec": {"queue": "a,b"}}), "queue may contain only letters"),
        ("gpusPerAgent 0", json!({"spec": {"gpusPerAgent": 0}}), "gpusPerAgent must be between 1 and 16"),
        ("gpusPerAgent 17", json!({"spec": {"gpusPerAgent": 17}}), "gpusPerAgent must be between 1 and 16"),
        ("missing token reference", json!({"spec": {"agent": {"tokenSecretRef": null}}}), "tokenSecretRef"),
        (
            "empty token secret name",
            json!({"spec": {"agent": {"tokenSecretRef": {"name": ""}}}}),
            "tokenSecretRef.name must name a Secret",
        ),
        (
            "In without values",
            json!({"spec": {"gpuNodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}),
            "values must be non-empty for In and NotIn",
        ),
        (
            "Exists with values",
            json!({"spec": {"gpuNodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}}),
            "empty for Exists",
        ),
        (
            "unknown operator",
            json!({"spec": {"gpuNodeSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}}),
            "operator",
        ),
        (
            "bad label key",
            json!({"spec": {"gpuNodeSelector": {"matchLabels": {"bad key!": "x"}}}}),
            "matchLabels keys must be valid label keys",
        ),
        (
            "bad label value",
            json!({"spec": {"gpuNodeSelector": {"matchLabels": {"a": "not valid!"}}}}),
            "matchLabels values must be valid label values",
        ),
        ("managed tag", json!({"spec": {"agent": {"tags": {"queue": "other"}}}}), "tags may not set queue"),
        (
            "managed env",
            json!({"spec": {"agent": {"env": [{"name": "BUILDKITE_AGENT_TOKEN", "value": "x"}]}}}),
            "env may not set variables benchkite manages",
        ),
    ];
    let mut failures = Vec::new();
    for (what, patch, expect) in &cases {
        let mut obj = base.clone();
        merge(&mut obj, patch);
        obj["metadata"]["name"] = json!(format!("bad-{}", what.replace(' ', "-").to_lowercase()));
        let dynamic: kube::api::DynamicObject = serde_json::from_value(obj)?;
        match pools.create(&PostParams::default(), &dynamic).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(expect) => {}
            Err(e) => failures.push(format!("{what}: wrong error: {e}")),
        }
    }
    let gpunodes: Api<kube::api::DynamicObject> =
        Api::all_with(client.clone(), &kube::api::ApiResource::erase::<GpuNode>(&()));
    let gn_cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("negative cpu reserve", json!({"reserved": {"cpu": "-1"}}), "reserved.cpu must be a non-negative quantity"),
        (
            "negative memory reserve",
            json!({"reserved": {"memory": "-1Gi"}}),
            "reserved.memory must be a non-negative quantity",
        ),
        ("garbage reserve", json!({"reserved": {"memory": "lots"}}), "reserved.memory must be a non-negative quantity"),
        ("bad resource name", json!({"resourceName": "gpu"}), "resourceName must be an extended resource name"),
        ("bad node name", json!({"nodeName": "Not_A_Node"}), "nodeName must be a valid Node name"),
    ];
    for (what, spec, expect) in &gn_cases {
        let name = format!("{}-{}", ns.name(), what.replace(' ', "-"));
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "GpuNode", "metadata": {"name": name}, "spec": spec,
        }))?;
        match gpunodes.create(&PostParams::default(), &obj).await {
            Ok(_) => {
                let _ = gpunodes.delete(&name, &DeleteParams::default()).await;
                failures.push(format!("GpuNode {what}: accepted"))
            }
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(expect) => {}
            Err(e) => failures.push(format!("GpuNode {what}: wrong error: {e}")),
        }
    }
    // nodeName is immutable.
    let name = format!("{}-immutable", ns.name());
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "GpuNode", "metadata": {"name": name}, "spec": {"nodeName": "somewhere"},
    }))?;
    gpunodes.create(&PostParams::default(), &obj).await?;
    match gpunodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodeName": "elsewhere"}})))
        .await
    {
        Ok(_) => failures.push("GpuNode nodeName change: accepted".into()),
        Err(kube::Error::Api(s)) if s.message.contains("nodeName is immutable") => {}
        Err(e) => failures.push(format!("GpuNode nodeName change: wrong error: {e}")),
    }
    let _ = gpunodes.delete(&name, &DeleteParams::default()).await;
    if !failures.is_empty() {
        bail!(
            "{} of {} invalid objects not rejected as expected:\n{}",
            failures.len(),
            cases.len() + gn_cases.len() + 1,
            failures.join("\n")
        );
    }
    ns.delete().await
}

fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// A changed pool spec rolls every agent; a pod benchkite does not manage landing on the node
/// shrinks the per-GPU share and the agents roll to the new size.
#[tokio::test]
async fn spec_changes_and_foreign_pods_roll_agents() -> Result<()> {
    let (client, ns) = setup("roll").await?;
    let id = ns.name().to_string();
    let node = format!("{id}-n");
    let _node = TestNode::create(&client, &node, &id, "32", "128Gi", 4).await?;
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &pool("roll", selector("benchkite.dev/e2e", &[&id]))).await?;
    let before = wait_agents(&ns, "roll", 4).await?;
    let cpu = |p: &Pod| -> String {
        p.spec
            .as_ref()
            .and_then(|s| s.containers[0].resources.as_ref())
            .and_then(|r| r.limits.as_ref())
            .map(|l| l["cpu"].0.clone())
            .unwrap_or_default()
    };
    ensure!(before.iter().all(|p| cpu(p) == "7"), "(32 cores − 250m headroom) / 4 GPUs");

    // New image: every agent is replaced by one with the new spec.
    pools
        .patch(
            "roll",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"agent": {"image": "example.invalid/agent:v2"}}})),
        )
        .await?;
    let old_uids: Vec<String> = before.iter().filter_map(|p| p.uid()).collect();
    wait_until("agents rolled to the new image", default_timeout(), || async {
        let pods = pool_pods(&ns, "roll").await?;
        let live: Vec<&Pod> = pods.iter().filter(|p| running(p)).collect();
        let rolled = live.len() == 4
            && live.iter().all(|p| {
                !old_uids.contains(&p.uid().unwrap_or_default())
                    && p.spec.as_ref().and_then(|s| s.containers[0].image.as_deref())
                        == Some("example.invalid/agent:v2")
            });
        Ok(rolled.then_some(()))
    })
    .await?;

    // A foreign pod takes 5 cores, more than the 4 the agents leave free: they would
    // overcommit the node, so the share drops to 6 cores per GPU and agents follow. (One of
    // 4 cores would fit in the headroom and rounding slack and change nothing.)
    let pods: Api<Pod> = ns.api();
    let foreign: Pod = serde_json::from_value(json!({
        "metadata": {"name": "daemon"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "d", "image": "example.invalid/daemon", "resources": {"requests": {"cpu": "5", "memory": "1Gi"}}}],
        },
    }))?;
    pods.create(&PostParams::default(), &foreign).await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    wait_until("the share shrinks", default_timeout(), || async {
        let gn = gpunodes.get(&node).await?;
        Ok(gn.status.and_then(|s| s.per_gpu_share).filter(|s| s.cpu == 6).map(|_| ()))
    })
    .await?;
    wait_until("agents resized to 6 cores", default_timeout(), || async {
        let pods = pool_pods(&ns, "roll").await?;
        let live: Vec<&Pod> = pods.iter().filter(|p| running(p)).collect();
        Ok((live.len() == 4 && live.iter().all(|p| cpu(p) == "6")).then_some(()))
    })
    .await?;
    ns.delete().await
}
