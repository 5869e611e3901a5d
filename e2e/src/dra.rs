//! Fake DRA for the local cluster: kwok has no DRA driver, but allocation is the scheduler's
//! alone. These publish `ResourceSlice`s for fake nodes as NVIDIA's driver does (whole GPUs
//! with their attributes, MIG instances) and a `DeviceClass` like the driver's.

use anyhow::{Context, Result};
use benchkite::fleet::dra::NVIDIA_DRIVER;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate, ResourceSlice};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

/// Products as NVIDIA's driver names them (`productName`).
pub const H100: &str = "NVIDIA H100 80GB HBM3";
pub const A100: &str = "NVIDIA A100 80GB PCIe";

/// A whole GPU `gpu-<minor>` of `product` with 80Gi, as NVIDIA's driver publishes it.
pub fn gpu(minor: u32, product: &str) -> Value {
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

/// A MIG instance of GPU `parent` (never an agent's).
pub fn mig(parent: u32) -> Value {
    json!({
        "name": format!("gpu-{parent}-mig-1g10gb-19-0"),
        "attributes": {"type": {"string": "mig"}, "uuid": {"string": "MIG-e2e"}, "productName": {"string": H100}},
        "capacity": {"memory": {"value": "10Gi"}},
    })
}

/// The driver's slice of `node` (one pool per node, as NVIDIA's driver publishes it), owned
/// by the Node so it goes with it.
pub async fn publish(client: &Client, node: &str, devices: Vec<Value>) -> Result<()> {
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
pub async fn device_class(client: &Client) -> Result<()> {
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

/// Whether the API server's CEL knows `device.allowMultipleAllocations`
/// (DRAConsumableCapacity: on by default in 1.36; off in 1.34 and where turned off): a
/// server-side dry run of a claim template that names it.
pub async fn consumable_capacity(client: &Client) -> Result<bool> {
    let template: ResourceClaimTemplate = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": "benchkite-e2e-probe", "namespace": "default"},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpus", "exactly": {
            "deviceClassName": NVIDIA_DRIVER,
            "selectors": [{"cel": {"expression": "!device.allowMultipleAllocations"}}]}}]}}},
    }))?;
    let api: Api<ResourceClaimTemplate> = Api::namespaced(client.clone(), "default");
    let dry = PostParams { dry_run: true, ..Default::default() };
    match api.create(&dry, &template).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("allowMultipleAllocations") => Ok(false),
        Err(e) => Err(e).context("probing the API server's DRA CEL"),
    }
}
