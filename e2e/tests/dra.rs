//! Issue 20's ground: GPUs through Dynamic Resource Allocation on the local cluster. kwok has
//! no DRA driver, but allocation is the scheduler's alone: the test publishes `ResourceSlice`s
//! for its fake nodes as NVIDIA's driver does (whole GPUs and a MIG instance, with their
//! attributes; a MIG instance and a GPU the driver lets claims share, which must never be
//! chosen) and a `DeviceClass` like the driver's, then lets the real scheduler allocate
//! claims made from a template with benchkite's selector (`benchkite::fleet::dra`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::{AgentPool, GpuNode};
use benchkite::fleet::dra::{self, GpuRequirements, NVIDIA_DRIVER};
use benchkite_e2e::dra::{A100, H100, consumable_capacity, device_class, gpu, mig, publish};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::shared_controller;
use benchkite_e2e::{TestNamespace, client, wait_until};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

fn pod(name: &str, node: &str, template: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template}],
            "containers": [{
                "name": "agent", "image": "example.invalid/agent:e2e",
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"},
                    "claims": [{"name": "gpu"}],
                },
            }],
        },
    }))?)
}

/// The devices allocated to the pod's claim (empty while it has none).
async fn allocated(ns: &TestNamespace, pod: &Pod) -> Result<Vec<String>> {
    let Some(claim) = pod
        .status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "gpu"))
        .and_then(|c| c.resource_claim_name.clone())
    else {
        return Ok(vec![]);
    };
    let claim = ns.api::<ResourceClaim>().get(&claim).await?;
    Ok(claim
        .status
        .and_then(|s| s.allocation)
        .and_then(|a| a.devices)
        .and_then(|d| d.results)
        .map(|r| r.into_iter().map(|r| format!("{}/{}/{}", r.driver, r.pool, r.device)).collect())
        .unwrap_or_default())
}

fn scheduled(p: &Pod) -> Option<bool> {
    let c = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled")?;
    match (c.status.as_str(), c.reason.as_deref()) {
        ("True", _) => Some(true),
        ("False", Some("Unschedulable")) => Some(false),
        _ => None,
    }
}

/// Two DRA-only nodes (no nvidia.com/gpu): `a` with 8 whole H100s, a MIG instance of a
/// ninth and a tenth the driver lets claims share; `b` with 4 A100s.
async fn h100_and_a100_nodes(client: &Client, test: &str, a: &str, b: &str) -> Result<(TestNode, TestNode)> {
    let nodes = (
        TestNode::create(client, a, test, "64", "256Gi", 0).await?,
        TestNode::create(client, b, test, "64", "256Gi", 0).await?,
    );
    let mut shared = gpu(9, H100);
    shared["allowMultipleAllocations"] = json!(true);
    publish(client, a, (0..8).map(|i| gpu(i, H100)).chain([mig(8), shared]).collect()).await?;
    publish(client, b, (0..4).map(|i| gpu(i, A100)).collect()).await?;
    Ok(nodes)
}

#[tokio::test]
async fn the_scheduler_allocates_one_whole_gpu_of_the_product_per_claim_and_never_more() -> Result<()> {
    let client = client().await?;
    device_class(&client).await?;
    let ns = TestNamespace::create(&client, "dra").await?;
    let id = ns.name().to_string();
    let (a, b) = (format!("{id}-a"), format!("{id}-b"));
    let _nodes = h100_and_a100_nodes(&client, &id, &a, &b).await?;

    // The inventory benchkite reads from the slices the API server stored.
    let slices = Api::<ResourceSlice>::all(client.clone()).list(&ListParams::default()).await?.items;
    let inv_a = dra::node_inventory(&slices, &a, NVIDIA_DRIVER).context("a's inventory")?;
    let inv_b = dra::node_inventory(&slices, &b, NVIDIA_DRIVER).context("b's inventory")?;
    // Where DRAConsumableCapacity is off (Kubernetes 1.34, or a cluster that turned it off),
    // the API server drops allowMultipleAllocations: gpu-9 is then an ordinary whole GPU.
    let cc = consumable_capacity(&client).await?;
    let whole: usize = if cc { 8 } else { 9 };
    ensure!(inv_a.complete && inv_a.whole_count() == i64::try_from(whole)? && inv_a.devices.len() == 10, "{inv_a:?}");
    ensure!(
        inv_a.devices.iter().any(|d| d.name == "gpu-9" && d.shared) == cc,
        "allowMultipleAllocations kept: {}, DRAConsumableCapacity on: {cc}",
        !cc
    );
    ensure!(inv_a.product().as_deref() == Some(H100) && inv_a.architecture().as_deref() == Some("sm_90"), "{inv_a:?}");
    ensure!(inv_b.whole_count() == 4 && inv_b.product().as_deref() == Some(A100), "{inv_b:?}");
    let req = GpuRequirements { product: Some(H100.into()), min_memory: Some("40Gi".into()) };
    let slots = inv_a.devices.iter().filter(|d| dra::eligible(d, &req)).count();
    ensure!(slots == whole, "{slots} eligible devices on a");

    // The claim template a DRA pool's agents reference: one H100 with 40Gi or more.
    let mut template = dra::claim_template(
        "h100",
        &id,
        Default::default(),
        NVIDIA_DRIVER,
        1,
        &dra::selector_for(NVIDIA_DRIVER, &req, cc),
    );
    // The test's namespace owns it (a pool does in benchkite).
    template.metadata.owner_references = None;
    ns.api::<ResourceClaimTemplate>().create(&PostParams::default(), &template).await?;

    // One agent more than a has whole H100s: each of the others gets a distinct one, the last
    // stays unscheduled.
    let pods: Api<Pod> = ns.api();
    for i in 0..=whole {
        pods.create(&PostParams::default(), &pod(&format!("a-{i}"), &a, "h100")?).await?;
    }
    // And one on b, which has no H100: unschedulable.
    pods.create(&PostParams::default(), &pod("b-0", &b, "h100")?).await?;
    // The scheduler may find a pod unschedulable for a moment (a claim allocated in the same
    // cycle) and place it on its retry: wait for the settled state, and fail at once on a
    // pod placed beyond the GPUs.
    let settled =
        wait_until(&format!("{whole} pods placed, the others unschedulable"), Duration::from_secs(90), || async {
            let list = pods.list(&ListParams::default()).await?.items;
            let placed = list.iter().filter(|p| p.name_any().starts_with("a-") && scheduled(p) == Some(true)).count();
            ensure!(placed <= whole, "{placed} of {} pods placed on a {whole}-GPU node", whole + 1);
            let all_judged = list.len() == whole + 2 && list.iter().all(|p| scheduled(p).is_some());
            Ok((all_judged && placed == whole).then_some(list))
        })
        .await?;
    let on_a: Vec<&Pod> = settled.iter().filter(|p| p.name_any().starts_with("a-")).collect();
    let placed: Vec<&&Pod> = on_a.iter().filter(|p| scheduled(p) == Some(true)).collect();
    let b0 = settled.iter().find(|p| p.name_any() == "b-0").context("b-0")?;
    ensure!(scheduled(b0) == Some(false), "a pod asking for an H100 was placed on the A100 node");
    let mut devices = BTreeSet::new();
    for p in &placed {
        let got = wait_until(&format!("{}'s claim allocated", p.name_any()), Duration::from_secs(30), || async {
            let fresh = pods.get(&p.name_any()).await?;
            let d = allocated(&ns, &fresh).await?;
            Ok((!d.is_empty()).then_some(d))
        })
        .await?;
        ensure!(got.len() == 1, "{}: {got:?}", p.name_any());
        ensure!(got[0].starts_with(&format!("{NVIDIA_DRIVER}/{a}/gpu-")), "{}: {got:?}", p.name_any());
        ensure!(!got[0].contains("mig"), "a MIG instance was allocated: {got:?}");
        ensure!(!cc || !got[0].ends_with("/gpu-9"), "the shared GPU was allocated: {got:?}");
        devices.insert(got[0].clone());
    }
    ensure!(devices.len() == whole, "claims share a device: {devices:?}");

    // The agent that waits gets the GPU an agent gives back.
    let waiting = on_a.iter().find(|p| scheduled(p) == Some(false)).context("the ninth pod")?.name_any();
    let freed = placed[0].name_any();
    pods.delete(&freed, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    wait_until(&format!("{waiting} placed once {freed} is gone"), Duration::from_secs(90), || async {
        let p = pods.get(&waiting).await?;
        Ok((scheduled(&p) == Some(true)).then_some(()))
    })
    .await?;
    ns.delete().await
}

// ---------------------------------------------------------------------------------------
// The controller: DRA pools and GpuNodes from the slices (`--dra-driver`).

const CONTROLLER_ARGS: &[&str] = &[
    "--dra-driver",
    NVIDIA_DRIVER,
    "--discovery-grace-seconds",
    "5",
    "--agent-grace-seconds",
    "2",
    "--http-addr",
    "127.0.0.1:0",
];

async fn controller_setup(prefix: &str) -> Result<(Client, TestNamespace)> {
    let client = client().await?;
    shared_controller("dra", CONTROLLER_ARGS).await?;
    device_class(&client).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    benchkite_e2e::nodes::create_agent_token(&ns).await?;
    Ok((client, ns))
}

/// A pool of `name` on the nodes `nodes` (by name), through DRA when `dra` is given.
fn agent_pool(name: &str, nodes: &[&str], dra: Option<Value>) -> Result<AgentPool> {
    let mut spec = json!({
        "queue": format!("e2e-{name}"),
        "gpuNodeSelector": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]},
        "agent": {"image": "example.invalid/agent:e2e", "tokenSecretRef": {"name": "agent-token"}, "ephemeral": true},
    });
    if let Some(d) = dra {
        spec["dra"] = d;
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name}, "spec": spec,
    }))?)
}

/// A GpuNode's labels mirror its Node's GPU labels, not its hostname: pools here select by
/// the GpuNode's name through a label the test puts on the GpuNode.
async fn label_gpunode(client: &Client, node: &str) -> Result<GpuNode> {
    let api: Api<GpuNode> = Api::all(client.clone());
    let gn = wait_until(&format!("GpuNode {node} discovered"), Duration::from_secs(60), || async {
        Ok(api.get_opt(node).await?)
    })
    .await?;
    let patch = json!({"metadata": {"labels": {"kubernetes.io/hostname": node}}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(gn)
}

/// The pool's live (not terminating, not finished) agent pods.
async fn live_agents(ns: &TestNamespace, pool: &str) -> Result<Vec<Pod>> {
    Ok(holding_agents(ns, pool).await?.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
}

/// The pool's agent pods that may hold a GPU: not finished, terminating ones included.
async fn holding_agents(ns: &TestNamespace, pool: &str) -> Result<Vec<Pod>> {
    let list = ns.api::<Pod>().list(&ListParams::default().labels(&format!("benchkite.dev/pool={pool}"))).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .collect())
}

/// The claim of an agent pod, by the name the pod's status gives it.
async fn agent_claim(ns: &TestNamespace, pod: &Pod) -> Result<Option<ResourceClaim>> {
    let Some(name) = pod
        .status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == dra::CLAIM_NAME))
        .and_then(|c| c.resource_claim_name.clone())
    else {
        return Ok(None);
    };
    Ok(ns.api::<ResourceClaim>().get_opt(&name).await?)
}

fn node_state(pool: &AgentPool, node: &str) -> Option<(String, i64)> {
    let n = pool.status.as_ref()?.nodes.iter().find(|n| n.name == node)?;
    Some((n.state.clone(), n.desired))
}

#[tokio::test]
async fn a_dra_pool_runs_one_agent_per_whole_gpu_of_its_product_and_tells_each_its_device() -> Result<()> {
    let (client, ns) = controller_setup("dra-pool").await?;
    let id = ns.name().to_string();
    let (a, b) = (format!("{id}-a"), format!("{id}-b"));
    let _nodes = h100_and_a100_nodes(&client, &id, &a, &b).await?;

    // Discovery finds both through their slices; the inventory matches the slices.
    label_gpunode(&client, &a).await?;
    label_gpunode(&client, &b).await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let gn_a = wait_until("GpuNode a inventoried from its slices", Duration::from_secs(60), || async {
        let gn = gpunodes.get(&a).await?;
        Ok(gn.status.as_ref().is_some_and(|s| s.dra.is_some() && s.gpu_count > 0).then_some(gn))
    })
    .await?;
    let st = gn_a.status.context("status")?;
    let cc = consumable_capacity(&client).await?;
    let whole: i64 = if cc { 8 } else { 9 };
    ensure!(st.offered_through.as_deref() == Some("DynamicResourceAllocation"), "{:?}", st.offered_through);
    ensure!(
        st.gpu_count == whole && st.resource_name.is_none(),
        "count {} resource {:?}",
        st.gpu_count,
        st.resource_name
    );
    ensure!(st.product.as_deref() == Some(H100) && st.gpu_type.as_deref() == Some("h100"), "{:?}", st.product);
    ensure!(st.architecture.as_deref() == Some("sm_90") && st.gpu_memory_mib == Some(81920), "{st:?}");
    ensure!(st.driver_version.as_deref() == Some("580.95.5"), "{:?}", st.driver_version);
    let inv = st.dra.as_ref().context("dra")?;
    ensure!(inv.whole_gpus == whole && inv.devices.len() == 10 && inv.complete, "{inv:?}");
    for i in 0..8u32 {
        let d = inv.devices.iter().find(|d| d.name == format!("gpu-{i}")).context("device")?;
        ensure!(d.uuid.as_deref() == Some(format!("GPU-{i:08x}-e2e0-0000-0000-000000000000").as_str()), "{d:?}");
        ensure!(d.unusable.is_none(), "{d:?}");
    }
    let unusable = if cc { 2 } else { 1 };
    ensure!(
        inv.devices.iter().filter(|d| d.unusable.is_some()).count() == unusable,
        "the MIG and shared devices: {inv:?}"
    );
    let st_b = wait_until("GpuNode b inventoried from its slices", Duration::from_secs(60), || async {
        Ok(gpunodes.get(&b).await?.status.filter(|s| s.dra.is_some() && s.gpu_count > 0))
    })
    .await?;
    ensure!(st_b.gpu_count == 4 && st_b.product.as_deref() == Some(A100), "{st_b:?}");

    // Another workload (not benchkite's) holds one of a's H100s through its own claim.
    let req = GpuRequirements { product: Some(H100.into()), min_memory: None };
    let mut other = dra::claim_template(
        "other",
        &id,
        Default::default(),
        NVIDIA_DRIVER,
        1,
        &dra::selector_for(NVIDIA_DRIVER, &req, cc),
    );
    other.metadata.owner_references = None;
    other.metadata.labels = None;
    other.metadata.annotations = None;
    other.spec.metadata = None;
    ns.api::<ResourceClaimTemplate>().create(&PostParams::default(), &other).await?;
    ns.api::<Pod>().create(&PostParams::default(), &pod("training", &a, "other")?).await?;
    let held = wait_until("the workload's GPU shown held on GpuNode a", Duration::from_secs(60), || async {
        let st = gpunodes.get(&a).await?.status.and_then(|s| s.dra).unwrap_or_default();
        Ok(st.devices.into_iter().find(|d| d.allocated_to.as_deref().is_some_and(|c| c.contains("training"))))
    })
    .await?;
    ensure!(held.agent_pool.is_none(), "{held:?}");

    // A pool of whole H100s with 40Gi or more on both nodes: a's 7 other H100s.
    let pools: Api<AgentPool> = ns.api();
    let dra_spec = json!({"productName": H100, "minMemory": "40Gi"});
    pools.create(&PostParams::default(), &agent_pool("h100", &[&a, &b], Some(dra_spec))?).await?;
    let created = std::time::Instant::now();
    let pool = wait_until("the pool's agents but one placed and Ready", Duration::from_secs(120), || async {
        let p = pools.get("h100").await?;
        let ready = p.status.as_ref().is_some_and(|s| s.desired_agents == whole - 1 && s.ready_agents == whole - 1);
        Ok(ready.then_some(p))
    })
    .await?;
    ensure!(node_state(&pool, &a) == Some(("Active".into(), whole - 1)), "{:?}", node_state(&pool, &a));
    eprintln!("measured: pool created → {} agents Ready in {:?}", whole - 1, created.elapsed());
    // The workload gives its GPU back: the pool takes it.
    ns.api::<Pod>().delete("training", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    let given_back = std::time::Instant::now();
    let pool = wait_until("an agent on each of a's H100s, Ready", Duration::from_secs(120), || async {
        let p = pools.get("h100").await?;
        let ready = p.status.as_ref().is_some_and(|s| s.desired_agents == whole && s.ready_agents == whole);
        Ok(ready.then_some(p))
    })
    .await?;
    ensure!(node_state(&pool, &a) == Some(("Active".into(), whole)), "{:?}", node_state(&pool, &a));
    eprintln!("measured: GPU given back → agent {whole} Ready in {:?}", given_back.elapsed());
    let agent_pool = format!("{id}/h100");
    wait_until("GpuNode a showing its H100s held by the pool's agents", Duration::from_secs(30), || async {
        let st = gpunodes.get(&a).await?.status.and_then(|s| s.dra).unwrap_or_default();
        let held = st.devices.iter().filter(|d| d.agent_pool.as_deref() == Some(agent_pool.as_str())).count();
        Ok((i64::try_from(held)? == whole).then_some(()))
    })
    .await?;
    ensure!(node_state(&pool, &b) == Some(("NoEligibleDevices".into(), 0)), "{:?}", node_state(&pool, &b));

    // The template: owned by the pool, asking for what the pool asks.
    let mine = ListParams::default().labels("benchkite.dev/pool=h100");
    let templates = ns.api::<ResourceClaimTemplate>().list(&mine).await?.items;
    ensure!(templates.len() == 1, "{} templates", templates.len());
    let t = &templates[0];
    ensure!(t.owner_references().iter().any(|o| o.kind == "AgentPool" && o.name == "h100"), "owner");

    // Each agent: its claim allocated to a distinct whole H100 of a, its pod told which.
    let agents = live_agents(&ns, "h100").await?;
    ensure!(i64::try_from(agents.len())? == whole, "{} agents", agents.len());
    let mut devices = BTreeSet::new();
    for p in &agents {
        let name = p.name_any();
        ensure!(p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(a.as_str()), "{name} not on a");
        let requests = p.spec.as_ref().map(|s| s.containers[0].resources.clone()).context("spec")?;
        ensure!(
            !requests.and_then(|r| r.requests).unwrap_or_default().contains_key("nvidia.com/gpu"),
            "{name} asks the device plugin"
        );
        let claim = agent_claim(&ns, p).await?.with_context(|| format!("{name}'s claim"))?;
        let got = dra::allocated_devices(&claim, NVIDIA_DRIVER).unwrap_or_default();
        ensure!(got.len() == 1, "{name}: {got:?}");
        let device = got[0].clone();
        ensure!(
            device.starts_with("gpu-") && !device.contains("mig") && (!cc || device != "gpu-9"),
            "{name}: {device}"
        );
        ensure!(devices.insert(device.clone()), "{device} allocated twice");
        let allocation = wait_until(&format!("{name}'s allocation annotated"), Duration::from_secs(30), || async {
            let fresh = ns.api::<Pod>().get(&name).await?;
            Ok(fresh.annotations().get(dra::ANNOTATION_ALLOCATION).cloned())
        })
        .await?;
        let allocation = dra::Allocation::decode(&allocation).map_err(anyhow::Error::msg)?;
        ensure!(allocation.devices.len() == 1 && allocation.devices[0].name == device, "{allocation:?}");
        let minor: u32 = device.trim_start_matches("gpu-").parse()?;
        let uuid = format!("GPU-{minor:08x}-e2e0-0000-0000-000000000000");
        ensure!(allocation.devices[0].uuid.as_deref() == Some(uuid.as_str()), "{allocation:?}");
        // What the agent starts with, from that annotation (the binary the pod runs).
        let env = benchkite::runner::agent_start::agent_env(&allocation, Some("queue=e2e-h100"));
        ensure!(env.iter().any(|(k, v)| k == "KERNELBOT_GPU_UUID" && *v == uuid), "{env:?}");
    }
    ensure!(i64::try_from(devices.len())? == whole, "{devices:?}");

    // A ninth agent pod on a (the pool's template, the same node) stays unscheduled: the
    // scheduler's allocation is what decides, and there are 8 such GPUs.
    let mut ninth: Pod = agents[0].clone();
    ninth.metadata = kube::api::ObjectMeta { name: Some("ninth".into()), ..Default::default() };
    if let Some(spec) = ninth.spec.as_mut() {
        spec.node_name = None;
    }
    ninth.status = None;
    ns.api::<Pod>().create(&PostParams::default(), &ninth).await?;
    wait_until("the ninth agent found unschedulable", Duration::from_secs(60), || async {
        let p = ns.api::<Pod>().get("ninth").await?;
        Ok((scheduled(&p) == Some(false)).then_some(()))
    })
    .await?;
    ns.api::<Pod>().delete("ninth", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;

    // A changed request is a new template: the agents roll onto it, the old one goes.
    let patch = json!({"spec": {"dra": {"productName": H100, "minMemory": "80Gi"}}});
    pools.patch("h100", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    wait_until("one template again, a new one", Duration::from_secs(60), || async {
        let now = ns.api::<ResourceClaimTemplate>().list(&mine).await?.items;
        Ok((now.len() == 1 && now[0].name_any() != t.name_any()).then_some(()))
    })
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn a_device_plugin_pool_and_a_dra_pool_never_claim_the_same_gpu() -> Result<()> {
    let (client, ns) = controller_setup("dra-both").await?;
    let id = ns.name().to_string();
    let (c, d, e) = (format!("{id}-c"), format!("{id}-d"), format!("{id}-e"));
    // c and e: the device plugin only (4 nvidia.com/gpu). d: both ways, the same 4 GPUs.
    let _c = TestNode::create(&client, &c, &id, "64", "256Gi", 4).await?;
    let _d = TestNode::create(&client, &d, &id, "64", "256Gi", 4).await?;
    let _e = TestNode::create(&client, &e, &id, "64", "256Gi", 4).await?;
    publish(&client, &d, (0..4).map(|i| gpu(i, H100)).collect()).await?;
    for n in [&c, &d, &e] {
        label_gpunode(&client, n).await?;
    }
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let st = wait_until("d seen both ways", Duration::from_secs(60), || async {
        let s = gpunodes.get(&d).await?.status;
        Ok(s.filter(|s| s.offered_through.as_deref() == Some("Both")))
    })
    .await?;
    ensure!(st.gpu_count == 4, "d counts {} GPUs, not 4", st.gpu_count);
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(client.clone());
    wait_until("a GpusOfferedTwice Warning on d", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default().fields(&format!("involvedObject.name={d}"))).await?.items;
        Ok(list.iter().any(|e| e.reason.as_deref() == Some("GpusOfferedTwice")).then_some(()))
    })
    .await?;

    // The plugin pool (c, d) is older: it owns d. The DRA pool (d, e) may use neither node
    // (d: claimed; e: no slices).
    let pools: Api<AgentPool> = ns.api();
    pools.create(&PostParams::default(), &agent_pool("plugin", &[&c, &d], None)?).await?;
    wait_until("the plugin pool's 8 agents Ready", Duration::from_secs(120), || async {
        let p = pools.get("plugin").await?;
        Ok(p.status.as_ref().is_some_and(|s| s.ready_agents == 8).then_some(()))
    })
    .await?;
    // Older by a creation timestamp (whole seconds): a tie would go by name.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pools.create(&PostParams::default(), &agent_pool("dra", &[&d, &e], Some(json!({})))?).await?;
    let dra_pool = wait_until("the DRA pool's verdict on both nodes", Duration::from_secs(60), || async {
        let p = pools.get("dra").await?;
        Ok((node_state(&p, &e).is_some() && node_state(&p, &d).is_some()).then_some(p))
    })
    .await?;
    ensure!(node_state(&dra_pool, &e) == Some(("NoDraDevices".into(), 0)), "{:?}", node_state(&dra_pool, &e));
    ensure!(node_state(&dra_pool, &d) == Some(("Conflict".into(), 0)), "{:?}", node_state(&dra_pool, &d));
    ensure!(live_agents(&ns, "dra").await?.is_empty(), "the DRA pool runs agents on claimed GPUs");

    // The plugin pool leaves d; the DRA pool takes it over. One plugin agent is held in
    // termination (a finalizer: a job that takes its time to finish). Sampled throughout,
    // terminating agents included: never an agent of both pools on d, never more than d's
    // 4 GPUs held, and while the held agent is there the DRA pool starts none on d (the
    // scheduler cannot tell which GPU a device-plugin pod holds).
    let on_d = |pods: &[Pod]| {
        pods.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(d.as_str())).count()
    };
    let held = live_agents(&ns, "plugin")
        .await?
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(d.as_str()))
        .context("a plugin agent on d")?
        .name_any();
    let finalizer = json!({"metadata": {"finalizers": ["e2e.benchkite.dev/hold"]}});
    ns.api::<Pod>().patch(&held, &PatchParams::default(), &Patch::Merge(&finalizer)).await?;
    let patch = json!({"spec": {"gpuNodeSelector": {"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [&c]}]}}});
    pools.patch("plugin", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let mut samples = 0;
    let mut released = false;
    let mut released_at = std::time::Instant::now();
    let started = std::time::Instant::now();
    loop {
        let (plugin_on_d, dra_on_d) =
            (on_d(&holding_agents(&ns, "plugin").await?), on_d(&holding_agents(&ns, "dra").await?));
        samples += 1;
        ensure!(
            plugin_on_d == 0 || dra_on_d == 0,
            "{plugin_on_d} device-plugin and {dra_on_d} DRA agents on d at once"
        );
        ensure!(plugin_on_d + dra_on_d <= 4, "{} agents hold d's 4 GPUs", plugin_on_d + dra_on_d);
        // Held for 5 s: the DRA pool waits (checked above: no DRA agent beside it).
        if !released && started.elapsed() > Duration::from_secs(5) {
            ensure!(plugin_on_d == 1, "the held agent left ({plugin_on_d} plugin agents on d)");
            let none = json!({"metadata": {"finalizers": null}});
            ns.api::<Pod>().patch(&held, &PatchParams::default(), &Patch::Merge(&none)).await?;
            released = true;
            released_at = std::time::Instant::now();
        }
        let p = pools.get("dra").await?;
        if released && p.status.as_ref().is_some_and(|s| s.ready_agents == 4) && dra_on_d == 4 {
            break;
        }
        ensure!(started.elapsed() < Duration::from_secs(120), "the DRA pool did not take d over ({dra_on_d} agents)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("measured: hold ended → 4 DRA agents Ready on d in {:?} ({samples} samples)", released_at.elapsed());
    // Its 4 claims hold d's 4 GPUs, each once.
    let mut devices = BTreeSet::new();
    for p in live_agents(&ns, "dra").await? {
        let claim = agent_claim(&ns, &p).await?.context("claim")?;
        for dev in dra::allocated_devices(&claim, NVIDIA_DRIVER).unwrap_or_default() {
            ensure!(devices.insert(dev.clone()), "{dev} allocated twice");
        }
    }
    ensure!(devices.len() == 4, "{devices:?} ({samples} samples)");
    ns.delete().await
}

#[tokio::test]
async fn a_pool_naming_a_device_class_that_does_not_exist_says_so_and_starts_nothing() -> Result<()> {
    let (client, ns) = controller_setup("dra-class").await?;
    let node = format!("{}-f", ns.name());
    let _f = TestNode::create(&client, &node, ns.name(), "64", "256Gi", 0).await?;
    publish(&client, &node, (0..2).map(|i| gpu(i, H100)).collect()).await?;
    label_gpunode(&client, &node).await?;
    let pools: Api<AgentPool> = ns.api();
    let spec = json!({"deviceClassName": "missing.example.com"});
    pools.create(&PostParams::default(), &agent_pool("noclass", &[&node], Some(spec))?).await?;
    let status = wait_until("Degraded/DeviceClassNotFound, Stalled", Duration::from_secs(60), || async {
        let s = pools.get("noclass").await?.status.unwrap_or_default();
        let has = |t: &str, st: &str| {
            s.conditions.iter().any(|c| c.type_ == t && c.status == st && c.reason == "DeviceClassNotFound")
        };
        Ok((has("Degraded", "True") && has("Stalled", "True")).then_some(s))
    })
    .await?;
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").context("Degraded")?;
    ensure!(degraded.message.contains("missing.example.com"), "{}", degraded.message);
    let pool = pools.get("noclass").await?;
    ensure!(node_state(&pool, &node).map(|(s, _)| s).as_deref() == Some("DeviceClassNotFound"), "{:?}", status.nodes);
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(live_agents(&ns, "noclass").await?.is_empty(), "agents started without a device class");
    ns.delete().await
}
