//! GPUs through Dynamic Resource Allocation (`resource.k8s.io/v1`), next to the device plugin.
//!
//! A DRA driver publishes each node's GPUs as devices of `ResourceSlice`s; NVIDIA's
//! (`gpu.nvidia.com`) publishes a whole GPU as a device of `type: gpu` with its `uuid`,
//! `productName`, `architecture`, `cudaComputeCapability`, `driverVersion` and a `memory`
//! capacity, and a MIG instance as a device of `type: mig` (the whole GPU is then not
//! published). A pod asks for devices through a `ResourceClaimTemplate` whose CEL selectors
//! the scheduler evaluates against the devices; the scheduler allocates, and a device goes to
//! one claim unless the driver marks it shareable (`allowMultipleAllocations`).
//!
//! This module is the pure part: a node's inventory from the slices, whether a device can be
//! one benchmark's whole, exclusive GPU, the CEL selector that asks the scheduler for exactly
//! those, and the claim template an agent pod references.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    CELDeviceSelector, Device, DeviceClaim, DeviceRequest, DeviceSelector, ExactDeviceRequest, ResourceClaimSpec,
    ResourceClaimTemplate, ResourceClaimTemplateSpec, ResourceSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::quantity;

/// NVIDIA's DRA driver for GPUs (its DeviceClass for whole GPUs has the same name).
pub const NVIDIA_DRIVER: &str = "gpu.nvidia.com";

/// What a published device is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A whole GPU (`type: gpu`).
    Gpu,
    /// A MIG instance (`type: mig`): a slice of a GPU.
    Mig,
    /// Anything else the driver publishes (e.g. `vfio`), or no type.
    Other(String),
}

/// One device of a node's slices, as far as benchkite reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraDevice {
    pub name: String,
    pub kind: DeviceKind,
    pub uuid: Option<String>,
    pub product: Option<String>,
    pub memory_bytes: Option<i64>,
    /// `cudaComputeCapability`, e.g. `9.0.0`.
    pub compute_capability: Option<String>,
    pub driver_version: Option<String>,
    /// The driver lets several claims share it (`allowMultipleAllocations`).
    pub shared: bool,
}

impl DraDevice {
    /// Whether the device can be one agent's whole, exclusive GPU: a full GPU, not a MIG
    /// instance, not shareable.
    pub fn whole(&self) -> bool {
        self.kind == DeviceKind::Gpu && !self.shared
    }

    /// Why it cannot (`None` when it can).
    pub fn unusable_reason(&self) -> Option<String> {
        match (&self.kind, self.shared) {
            (DeviceKind::Gpu, false) => None,
            (DeviceKind::Gpu, true) => Some("shared: the driver lets several claims allocate it".into()),
            (DeviceKind::Mig, _) => Some("a MIG instance, not a whole GPU".into()),
            (DeviceKind::Other(t), _) if t.is_empty() => Some("no device type".into()),
            (DeviceKind::Other(t), _) => Some(format!("device type {t}, not gpu")),
        }
    }

    /// The CUDA architecture of the compute capability (`9.0.0` → `sm_90`).
    pub fn architecture(&self) -> Option<String> {
        let cc = self.compute_capability.as_deref()?;
        let mut parts = cc.split('.');
        let (major, minor) = (parts.next()?.parse::<u32>().ok()?, parts.next()?.parse::<u32>().ok()?);
        Some(format!("sm_{major}{minor}"))
    }
}

/// The devices one driver publishes for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DraInventory {
    pub driver: String,
    /// By name.
    pub devices: Vec<DraDevice>,
    /// Every slice of the newest generation of each of the node's pools is there (a driver
    /// that is rewriting its slices publishes them one by one).
    pub complete: bool,
}

impl DraInventory {
    /// Whole, exclusive GPUs (see [`DraDevice::whole`]).
    pub fn whole_gpus(&self) -> impl Iterator<Item = &DraDevice> {
        self.devices.iter().filter(|d| d.whole())
    }

    pub fn whole_count(&self) -> i64 {
        i64::try_from(self.whole_gpus().count()).unwrap_or(i64::MAX)
    }

    /// The one product of the whole GPUs (`None`: none, or several).
    pub fn product(&self) -> Option<String> {
        one(self.whole_gpus().map(|d| d.product.clone()))
    }

    /// The one driver version of the whole GPUs.
    pub fn driver_version(&self) -> Option<String> {
        one(self.whole_gpus().map(|d| d.driver_version.clone()))
    }

    /// The one architecture of the whole GPUs.
    pub fn architecture(&self) -> Option<String> {
        one(self.whole_gpus().map(|d| d.architecture()))
    }

    /// The smallest memory of the whole GPUs, in MiB.
    pub fn memory_mib(&self) -> Option<i64> {
        self.whole_gpus()
            .map(|d| d.memory_bytes.map(|b| b / (1024 * 1024)))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }
}

/// The value when every item has the same one.
fn one(mut items: impl Iterator<Item = Option<String>>) -> Option<String> {
    let first = items.next()??;
    items.all(|i| i.as_deref() == Some(first.as_str())).then_some(first)
}

/// An attribute of the driver's domain: published as `name` or `<driver>/name`.
fn attribute<'d>(
    device: &'d Device,
    driver: &str,
    name: &str,
) -> Option<&'d k8s_openapi::api::resource::v1::DeviceAttribute> {
    let attrs = device.attributes.as_ref()?;
    attrs.get(name).or_else(|| attrs.get(&format!("{driver}/{name}")))
}

fn text(device: &Device, driver: &str, name: &str) -> Option<String> {
    let a = attribute(device, driver, name)?;
    a.string.clone().or_else(|| a.version.clone()).or_else(|| a.int.map(|i| i.to_string()))
}

fn device_of(device: &Device, driver: &str) -> DraDevice {
    let kind = match text(device, driver, "type").as_deref() {
        Some("gpu") => DeviceKind::Gpu,
        Some("mig") => DeviceKind::Mig,
        other => DeviceKind::Other(other.unwrap_or_default().to_string()),
    };
    let capacity = device.capacity.as_ref();
    let memory = capacity.and_then(|c| c.get("memory").or_else(|| c.get(&format!("{driver}/memory"))));
    DraDevice {
        name: device.name.clone(),
        kind,
        uuid: text(device, driver, "uuid"),
        product: text(device, driver, "productName"),
        memory_bytes: memory.and_then(|m| quantity::whole_units(&m.value.0).ok()),
        compute_capability: text(device, driver, "cudaComputeCapability"),
        driver_version: text(device, driver, "driverVersion"),
        shared: device.allow_multiple_allocations == Some(true),
    }
}

/// The devices `driver` publishes for `node` (`None`: it publishes no slice for the node).
/// Of each resource pool only the newest generation counts: older slices are being replaced.
pub fn node_inventory<'a>(
    slices: impl IntoIterator<Item = &'a ResourceSlice>,
    node: &str,
    driver: &str,
) -> Option<DraInventory> {
    let mine: Vec<&ResourceSlice> =
        slices.into_iter().filter(|s| s.spec.driver == driver && s.spec.node_name.as_deref() == Some(node)).collect();
    if mine.is_empty() {
        return None;
    }
    let mut pools: BTreeMap<&str, Vec<&ResourceSlice>> = BTreeMap::new();
    for s in &mine {
        pools.entry(s.spec.pool.name.as_str()).or_default().push(s);
    }
    let mut devices = Vec::new();
    let mut complete = true;
    for slices in pools.values() {
        let newest = slices.iter().map(|s| s.spec.pool.generation).max().unwrap_or(0);
        let current: Vec<&&ResourceSlice> = slices.iter().filter(|s| s.spec.pool.generation == newest).collect();
        let expected = current.iter().map(|s| s.spec.pool.resource_slice_count).max().unwrap_or(1);
        complete &= i64::try_from(current.len()).unwrap_or(i64::MAX) >= expected;
        devices.extend(current.iter().flat_map(|s| s.spec.devices.iter().flatten()).map(|d| device_of(d, driver)));
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    devices.dedup_by(|a, b| a.name == b.name);
    Some(DraInventory { driver: driver.to_string(), devices, complete })
}

/// How a node's GPUs are offered to pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    DevicePlugin,
    Dra,
    /// Both the device plugin's resource and a DRA driver's slices: the same GPUs, seen twice.
    Both,
}

impl Offered {
    pub fn as_str(self) -> &'static str {
        match self {
            Offered::DevicePlugin => "DevicePlugin",
            Offered::Dra => "DynamicResourceAllocation",
            Offered::Both => "Both",
        }
    }
}

/// The node's GPU count from the device plugin's allocatable (`device_plugin`) and a DRA
/// driver's whole GPUs: the same physical GPUs whichever way they are offered, so a node
/// served both ways counts them once (the larger of the two counts: one of the two may see
/// fewer, e.g. while a driver restarts), never their sum.
pub fn gpu_count(device_plugin: Option<i64>, dra: Option<&DraInventory>) -> Option<(i64, Offered)> {
    let dra = dra.map(DraInventory::whole_count).filter(|n| *n > 0);
    match (device_plugin.filter(|n| *n > 0), dra) {
        (Some(dp), Some(d)) => Some((dp.max(d), Offered::Both)),
        (Some(dp), None) => Some((dp, Offered::DevicePlugin)),
        (None, Some(d)) => Some((d, Offered::Dra)),
        (None, None) => None,
    }
}

/// What a DRA pool asks of each GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuRequirements {
    /// `productName`, exactly.
    pub product: Option<String>,
    /// The smallest memory (a quantity, e.g. `40Gi`).
    pub min_memory: Option<String>,
}

/// A CEL string literal.
fn cel_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The CEL selector for one whole GPU of `driver` meeting `req`: a full GPU (`type == "gpu"`,
/// never a MIG instance), never one the driver lets several claims share
/// (`allowMultipleAllocations`, Kubernetes 1.35+: DRAConsumableCapacity), of the product,
/// with at least the memory. Any other device goes to one claim alone: the scheduler's rule.
pub fn selector(driver: &str, req: &GpuRequirements) -> String {
    let d = cel_string(driver);
    let mut parts = vec![
        format!("device.driver == {d}"),
        format!("device.attributes[{d}].type == \"gpu\""),
        "!device.allowMultipleAllocations".to_string(),
    ];
    if let Some(p) = &req.product {
        parts.push(format!("device.attributes[{d}].productName == {}", cel_string(p)));
    }
    if let Some(m) = &req.min_memory {
        parts.push(format!("device.capacity[{d}].memory.compareTo(quantity({})) >= 0", cel_string(m)));
    }
    parts.join(" && ")
}

/// Whether `dev` is a GPU the selector of `req` allows and benchkite gives an agent: the
/// same rules as [`selector`], plus not shareable. Benchkite counts a node's slots with it,
/// so it never creates more claims than there are such devices.
pub fn eligible(dev: &DraDevice, req: &GpuRequirements) -> bool {
    if !dev.whole() {
        return false;
    }
    if let Some(p) = &req.product
        && dev.product.as_deref() != Some(p.as_str())
    {
        return false;
    }
    if let Some(m) = &req.min_memory {
        let Ok(min) = quantity::whole_units(m) else { return false };
        if dev.memory_bytes.is_none_or(|b| b < min) {
            return false;
        }
    }
    true
}

/// The claim template of a DRA pool's agents: `count` devices of `device_class` chosen by
/// `selector`, owned by the pool (deleted with it).
pub fn claim_template(
    name: &str,
    namespace: &str,
    owner: OwnerReference,
    device_class: &str,
    count: i64,
    selector: &str,
) -> ResourceClaimTemplate {
    ResourceClaimTemplate {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: ResourceClaimTemplateSpec {
            metadata: None,
            spec: ResourceClaimSpec {
                devices: Some(DeviceClaim {
                    requests: Some(vec![DeviceRequest {
                        name: "gpus".into(),
                        exactly: Some(ExactDeviceRequest {
                            device_class_name: device_class.to_string(),
                            allocation_mode: Some("ExactCount".into()),
                            count: Some(count),
                            selectors: Some(vec![DeviceSelector {
                                cel: Some(CELDeviceSelector { expression: selector.to_string() }),
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
        },
    }
}

#[cfg(test)]
#[path = "dra_tests.rs"]
mod tests;
