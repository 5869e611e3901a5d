//! Issue 20's ground: GPUs through Dynamic Resource Allocation on the local cluster. kwok has
//! no DRA driver, but allocation is the scheduler's alone: the test publishes `ResourceSlice`s
//! for its fake nodes as NVIDIA's driver does (whole GPUs and a MIG instance, with their
//! attributes; a MIG instance and a GPU the driver lets claims share, which must never be
//! chosen) and a `DeviceClass` like the driver's, then lets the real scheduler allocate
//! claims made from a template with benchkite's selector (`benchkite::fleet::dra`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::fleet::dra::{self, GpuRequirements, NVIDIA_DRIVER};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::{TestNamespace, client, wait_until};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const H100: &str = "NVIDIA H100 80GB HBM3";
const A100: &str = "NVIDIA A100 80GB PCIe";

fn gpu(minor: u32, product: &str) -> Value {
    json!({
        "name": format!("gpu-{minor}"),
        "attributes": {
            "type": {"string": "gpu"},
            "uuid": {"string": format!("GPU-{minor:08x}-e2e0-0000-0000-000000000000")},
            "productName": {"string": product},
            "brand": {"string": "Nvidia"},
            "cudaComputeCapability": {"version": "9.0.0"},
            "driverVersion": {"version": "580.95.5"},
        },
        "capacity": {"memory": {"value": "80Gi"}},
    })
}

fn mig(parent: u32) -> Value {
    json!({
        "name": format!("gpu-{parent}-mig-1g10gb-19-0"),
        "attributes": {"type": {"string": "mig"}, "uuid": {"string": "MIG-e2e"}, "productName": {"string": H100}},
        "capacity": {"memory": {"value": "10Gi"}},
    })
}

/// The driver's slice of `node` (one pool per node, as NVIDIA's driver publishes it), owned
/// by the Node so it goes with it.
async fn publish(client: &Client, node: &str, devices: Vec<Value>) -> Result<()> {
    let uid = Api::<Node>::all(client.clone()).get(node).await?.uid().context("node uid")?;
    let slice: ResourceSlice = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {
            "name": format!("{node}-gpu.nvidia.com"),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}],
        },
        "spec": {
            "driver": NVIDIA_DRIVER, "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }))?;
    Api::<ResourceSlice>::all(client.clone()).create(&PostParams::default(), &slice).await?;
    Ok(())
}

/// NVIDIA's DeviceClass for whole GPUs (created once per cluster).
async fn device_class(client: &Client) -> Result<()> {
    let class: DeviceClass = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": {"name": NVIDIA_DRIVER},
        "spec": {"selectors": [{"cel": {"expression":
            "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}]},
    }))?;
    let api: Api<DeviceClass> = Api::all(client.clone());
    api.patch(NVIDIA_DRIVER, &PatchParams::apply("benchkite-e2e").force(), &Patch::Apply(&class)).await?;
    Ok(())
}

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

#[tokio::test]
async fn the_scheduler_allocates_one_whole_gpu_of_the_product_per_claim_and_never_more() -> Result<()> {
    let client = client().await?;
    device_class(&client).await?;
    let ns = TestNamespace::create(&client, "dra").await?;
    let id = ns.name().to_string();
    let (a, b) = (format!("{id}-a"), format!("{id}-b"));
    // DRA only: no nvidia.com/gpu resource on either node.
    let _a = TestNode::create(&client, &a, &id, "64", "256Gi", 0).await?;
    let _b = TestNode::create(&client, &b, &id, "64", "256Gi", 0).await?;
    // a: 8 whole H100s, a MIG instance of a ninth and a tenth the driver lets claims share;
    // b: 4 A100s.
    let mut shared = gpu(9, H100);
    shared["allowMultipleAllocations"] = json!(true);
    publish(&client, &a, (0..8).map(|i| gpu(i, H100)).chain([mig(8), shared]).collect()).await?;
    publish(&client, &b, (0..4).map(|i| gpu(i, A100)).collect()).await?;

    // The inventory benchkite reads from the slices the API server stored.
    let slices = Api::<ResourceSlice>::all(client.clone()).list(&ListParams::default()).await?.items;
    let inv_a = dra::node_inventory(&slices, &a, NVIDIA_DRIVER).context("a's inventory")?;
    let inv_b = dra::node_inventory(&slices, &b, NVIDIA_DRIVER).context("b's inventory")?;
    ensure!(inv_a.complete && inv_a.whole_count() == 8 && inv_a.devices.len() == 10, "{inv_a:?}");
    ensure!(
        inv_a.devices.iter().any(|d| d.name == "gpu-9" && d.shared),
        "the API server dropped allowMultipleAllocations"
    );
    ensure!(inv_a.product().as_deref() == Some(H100) && inv_a.architecture().as_deref() == Some("sm_90"), "{inv_a:?}");
    ensure!(inv_b.whole_count() == 4 && inv_b.product().as_deref() == Some(A100), "{inv_b:?}");
    let req = GpuRequirements { product: Some(H100.into()), min_memory: Some("40Gi".into()) };
    let slots = inv_a.devices.iter().filter(|d| dra::eligible(d, &req)).count();
    ensure!(slots == 8, "{slots} eligible devices on a");

    // The claim template a DRA pool's agents reference: one H100 with 40Gi or more.
    let mut template =
        dra::claim_template("h100", &id, Default::default(), NVIDIA_DRIVER, 1, &dra::selector(NVIDIA_DRIVER, &req));
    // The test's namespace owns it (a pool does in benchkite).
    template.metadata.owner_references = None;
    ns.api::<ResourceClaimTemplate>().create(&PostParams::default(), &template).await?;

    // Nine agents on a: eight get a distinct whole H100, the ninth stays unscheduled.
    let pods: Api<Pod> = ns.api();
    for i in 0..9 {
        pods.create(&PostParams::default(), &pod(&format!("a-{i}"), &a, "h100")?).await?;
    }
    // And one on b, which has no H100: unschedulable.
    pods.create(&PostParams::default(), &pod("b-0", &b, "h100")?).await?;
    let settled = wait_until("every pod scheduled or found unschedulable", Duration::from_secs(90), || async {
        let list = pods.list(&ListParams::default()).await?.items;
        Ok((list.len() == 10 && list.iter().all(|p| scheduled(p).is_some())).then_some(list))
    })
    .await?;
    let on_a: Vec<&Pod> = settled.iter().filter(|p| p.name_any().starts_with("a-")).collect();
    let placed: Vec<&&Pod> = on_a.iter().filter(|p| scheduled(p) == Some(true)).collect();
    ensure!(placed.len() == 8, "{} of 9 pods placed on an 8-GPU node", placed.len());
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
        ensure!(!got[0].ends_with("/gpu-9"), "the shared GPU was allocated: {got:?}");
        devices.insert(got[0].clone());
    }
    ensure!(devices.len() == 8, "claims share a device: {devices:?}");

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
