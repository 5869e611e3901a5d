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
    CELDeviceSelector, Device, DeviceClaim, DeviceRequest, DeviceSelector, ExactDeviceRequest, ResourceClaim,
    ResourceClaimSpec, ResourceClaimTemplate, ResourceClaimTemplateSpec, ResourceSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::inventory::{GpuInventory, Vendor};
use super::quantity;
use crate::api::gpunode::{DraDeviceStatus, GpuNodeDra};

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
    /// The driver's resource pool the device is in (NVIDIA's: the node's name).
    pub pool: String,
    pub kind: DeviceKind,
    pub uuid: Option<String>,
    pub product: Option<String>,
    pub memory_bytes: Option<i64>,
    /// `cudaComputeCapability`, e.g. `9.0.0`.
    pub compute_capability: Option<String>,
    pub driver_version: Option<String>,
    /// The driver lets several claims share it (`allowMultipleAllocations`).
    pub shared: bool,
    /// A MIG instance's GPU (`parentUUID`).
    pub parent: Option<String>,
    /// The counter sets it consumes (partitionable devices: a whole GPU and the MIG
    /// instances cut from it consume the same set, so one allocated blocks the others).
    pub counter_sets: Vec<String>,
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

    /// Physical GPUs: whole ones (shareable or not) and the GPUs MIG instances are cut from
    /// (by `parentUUID`, else by the `gpu-<minor>-mig-…` name).
    pub fn physical_count(&self) -> i64 {
        let gpus = self.devices.iter().filter(|d| d.kind == DeviceKind::Gpu).count();
        let parents: std::collections::BTreeSet<String> = self
            .devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Mig)
            .map(|d| d.parent.clone().unwrap_or_else(|| d.name.split("-mig-").next().unwrap_or(&d.name).to_string()))
            .collect();
        i64::try_from(gpus + parents.len()).unwrap_or(i64::MAX)
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

fn device_of(device: &Device, driver: &str, pool: &str) -> DraDevice {
    let kind = match text(device, driver, "type").as_deref() {
        Some("gpu") => DeviceKind::Gpu,
        Some("mig") => DeviceKind::Mig,
        other => DeviceKind::Other(other.unwrap_or_default().to_string()),
    };
    let capacity = device.capacity.as_ref();
    let memory = capacity.and_then(|c| c.get("memory").or_else(|| c.get(&format!("{driver}/memory"))));
    DraDevice {
        name: device.name.clone(),
        pool: pool.to_string(),
        kind,
        uuid: text(device, driver, "uuid"),
        product: text(device, driver, "productName"),
        memory_bytes: memory.and_then(|m| quantity::whole_units(&m.value.0).ok()),
        compute_capability: text(device, driver, "cudaComputeCapability"),
        driver_version: text(device, driver, "driverVersion"),
        shared: device.allow_multiple_allocations == Some(true),
        parent: text(device, driver, "parentUUID"),
        counter_sets: device.consumes_counters.iter().flatten().map(|c| c.counter_set.clone()).collect(),
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
    for (pool, slices) in &pools {
        let newest = slices.iter().map(|s| s.spec.pool.generation).max().unwrap_or(0);
        let current: Vec<&&ResourceSlice> = slices.iter().filter(|s| s.spec.pool.generation == newest).collect();
        let expected = current.iter().map(|s| s.spec.pool.resource_slice_count).max().unwrap_or(1);
        complete &= i64::try_from(current.len()).unwrap_or(i64::MAX) >= expected;
        devices
            .extend(current.iter().flat_map(|s| s.spec.devices.iter().flatten()).map(|d| device_of(d, driver, pool)));
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
/// (`allowMultipleAllocations`; see [`selector_for`] for clusters without it), of the
/// product, with at least the memory. Any other device goes to one claim alone: the scheduler's rule.
pub fn selector(driver: &str, req: &GpuRequirements) -> String {
    selector_for(driver, req, true)
}

/// [`selector`], with or without the clause on `allowMultipleAllocations`: CEL knows that
/// field only where the DRAConsumableCapacity feature is on (Beta and on by default in
/// 1.36; Alpha, off, in 1.34), and refuses a selector naming it elsewhere. Where it is off,
/// the API server drops the field from slices, so no device is shareable and the clause is
/// not needed.
pub fn selector_for(driver: &str, req: &GpuRequirements, exclude_shared: bool) -> String {
    let d = cel_string(driver);
    let mut parts = vec![format!("device.driver == {d}"), format!("device.attributes[{d}].type == \"gpu\"")];
    if exclude_shared {
        parts.push("!device.allowMultipleAllocations".to_string());
    }
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
/// `selector`, owned by the pool (deleted with it). The template and the claims made from it
/// are labelled managed by benchkite and annotated with the pool's name.
pub fn claim_template(
    name: &str,
    namespace: &str,
    owner: OwnerReference,
    device_class: &str,
    count: i64,
    selector: &str,
) -> ResourceClaimTemplate {
    let pool = owner.name.clone();
    let labels: BTreeMap<String, String> = [
        (super::pod::LABEL_MANAGED_BY.to_string(), super::pod::MANAGED_BY.to_string()),
        (super::pod::LABEL_POOL.to_string(), super::pod::label_value(&pool)),
    ]
    .into();
    let annotations: BTreeMap<String, String> = [(ANNOTATION_POOL.to_string(), pool)].into();
    ResourceClaimTemplate {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            owner_references: Some(vec![owner]),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: ResourceClaimTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some(labels), annotations: Some(annotations), ..Default::default() }),
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

/// A node's GPU inventory from its DRA devices alone (no device plugin resource): the
/// whole GPUs' count, product, architecture, smallest memory and driver version.
pub fn gpu_inventory(inv: &DraInventory) -> GpuInventory {
    let vendor = if inv.driver.contains("amd") { Vendor::Amd } else { Vendor::Nvidia };
    let product = inv.product();
    GpuInventory {
        vendor,
        resource_name: String::new(),
        gpu_count: inv.whole_count(),
        gpu_type: product.as_deref().map(super::inventory::short_gpu_type),
        product,
        family: None,
        architecture: inv.architecture(),
        memory_mib: inv.memory_mib(),
        driver_version: inv.driver_version(),
        replicas: None,
        shared: false,
    }
}

/// The claim name agent pods give their GPUs (`spec.resourceClaims[].name`).
pub const CLAIM_NAME: &str = "gpus";
/// Annotation the controller writes on a DRA agent pod once the scheduler allocated its claim:
/// [`Allocation`] as JSON. The pod reads it through a downward-API volume.
pub const ANNOTATION_ALLOCATION: &str = "benchkite.dev/gpu-allocation";
/// Annotation (on templates and the claims made from them) naming the pool.
pub const ANNOTATION_POOL: &str = "benchkite.dev/pool";

/// The devices allocated to one agent pod's claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub driver: String,
    pub devices: Vec<AllocatedDevice>,
}

/// One allocated device, with what its node's slices say about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocatedDevice {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
}

impl Allocation {
    /// The annotation's value (compact JSON).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(s: &str) -> Result<Allocation, String> {
        let a: Allocation = serde_json::from_str(s.trim()).map_err(|e| format!("not an allocation: {e}"))?;
        if a.devices.is_empty() {
            return Err("the allocation names no device".into());
        }
        Ok(a)
    }

    /// The agent's extra tags (`gpu-device`, `gpu-uuid`; several devices joined by `+`,
    /// since tags are separated by commas).
    pub fn tags(&self) -> Vec<String> {
        let names: Vec<&str> = self.devices.iter().map(|d| d.name.as_str()).collect();
        let mut tags = vec![format!("gpu-device={}", tag_safe(&names.join("+")))];
        let uuids: Option<Vec<&str>> = self.devices.iter().map(|d| d.uuid.as_deref()).collect();
        if let Some(uuids) = uuids {
            tags.push(format!("gpu-uuid={}", tag_safe(&uuids.join("+"))));
        }
        tags
    }

    /// The `KERNELBOT_*` variables of the allocation.
    pub fn env(&self) -> Vec<(String, String)> {
        let names: Vec<&str> = self.devices.iter().map(|d| d.name.as_str()).collect();
        let mut env = vec![("KERNELBOT_GPU_DEVICE".to_string(), names.join(","))];
        let uuids: Option<Vec<&str>> = self.devices.iter().map(|d| d.uuid.as_deref()).collect();
        if let Some(uuids) = uuids {
            env.push(("KERNELBOT_GPU_UUID".to_string(), uuids.join(",")));
        }
        env
    }
}

/// A tag value without the separators of `BUILDKITE_AGENT_TAGS` (`,`) or `=`.
fn tag_safe(s: &str) -> String {
    s.chars().map(|c| if c == ',' || c == '=' || c.is_control() { '_' } else { c }).collect()
}

/// The devices of `driver` allocated to `claim`, in result order (`None`: not allocated yet).
pub fn allocated_devices(claim: &ResourceClaim, driver: &str) -> Option<Vec<String>> {
    let results = claim.status.as_ref()?.allocation.as_ref()?.devices.as_ref()?.results.as_ref()?;
    Some(results.iter().filter(|r| r.driver == driver).map(|r| r.device.clone()).collect())
}

/// The resource pools of the devices of `driver` allocated to `claim`.
pub fn allocated_pools(claim: &ResourceClaim, driver: &str) -> Vec<String> {
    let results = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.as_ref());
    results.into_iter().flatten().filter(|r| r.driver == driver).map(|r| r.pool.clone()).collect()
}

/// The UID of the pod a claim was made for (the claim's controller owner: the resource claim
/// controller makes a template's claim owned by its pod).
pub fn claim_pod_uid(claim: &ResourceClaim) -> Option<&str> {
    claim
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "Pod" && o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The allocation of a claim, described with the devices of its node (`None`: not allocated,
/// or nothing of `driver` in it).
pub fn allocation_of(claim: &ResourceClaim, driver: &str, node: Option<&GpuNodeDra>) -> Option<Allocation> {
    let names = allocated_devices(claim, driver)?;
    if names.is_empty() {
        return None;
    }
    let known = |n: &str| node.and_then(|d| d.devices.iter().find(|x| x.name == n));
    Some(Allocation {
        driver: driver.to_string(),
        devices: names
            .iter()
            .map(|n| AllocatedDevice {
                name: n.clone(),
                uuid: known(n).and_then(|d| d.uuid.clone()),
                product_name: known(n).and_then(|d| d.product_name.clone()),
            })
            .collect(),
    })
}

/// What a GpuNode's status says about a node's devices.
pub fn node_status(inv: &DraInventory) -> GpuNodeDra {
    GpuNodeDra {
        driver: inv.driver.clone(),
        whole_gpus: inv.whole_count(),
        complete: inv.complete,
        unsettled_since: None,
        devices: inv
            .devices
            .iter()
            .map(|d| DraDeviceStatus {
                name: d.name.clone(),
                pool: d.pool.clone(),
                type_: match &d.kind {
                    DeviceKind::Gpu => "gpu".into(),
                    DeviceKind::Mig => "mig".into(),
                    DeviceKind::Other(t) => t.clone(),
                },
                uuid: d.uuid.clone(),
                product_name: d.product.clone(),
                memory_mib: d.memory_bytes.map(|b| b / (1024 * 1024)),
                architecture: d.architecture(),
                driver_version: d.driver_version.clone(),
                shared: d.shared,
                parent_uuid: d.parent.clone(),
                counter_sets: d.counter_sets.clone(),
                unusable: d.unusable_reason(),
                allocated_to: None,
                agent_pool: None,
            })
            .collect(),
    }
}

/// The inventory a GpuNode's status records, back in this module's terms.
pub fn inventory_from_status(d: &GpuNodeDra) -> DraInventory {
    DraInventory {
        driver: d.driver.clone(),
        devices: d.devices.iter().map(device_from_status).collect(),
        complete: d.complete,
    }
}

/// The DRA inventory a GpuNode reports, from what the driver publishes now (`current`) and
/// what it reported before (`previous`). A kubelet deletes its node's slices when it starts,
/// and a driver rewrites them when it restarts: while they are missing or incomplete, the
/// last complete inventory is kept (marked `unsettledSince`) for `grace`, so the node's
/// agents are not taken for gone. Returns the inventory and when to look again.
pub fn settle(
    previous: Option<GpuNodeDra>,
    current: Option<GpuNodeDra>,
    now: k8s_openapi::jiff::Timestamp,
    grace: std::time::Duration,
) -> (Option<GpuNodeDra>, Option<std::time::Duration>) {
    let settled = current.as_ref().is_some_and(|c| c.complete);
    let Some(prev) = previous.filter(|p| {
        !settled && p.whole_gpus > 0 && p.driver == current.as_ref().map_or(p.driver.as_str(), |c| c.driver.as_str())
    }) else {
        return (current, None);
    };
    let since =
        prev.unsettled_since.as_deref().and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok()).unwrap_or(now);
    let elapsed = std::time::Duration::try_from(now.duration_since(since)).unwrap_or_default();
    if elapsed >= grace {
        return (current, None);
    }
    let kept = GpuNodeDra { complete: false, unsettled_since: Some(since.to_string()), ..prev };
    (Some(kept), Some(grace - elapsed))
}

/// A device as a GpuNode's status records it, back in this module's terms.
pub fn device_from_status(d: &DraDeviceStatus) -> DraDevice {
    DraDevice {
        name: d.name.clone(),
        pool: d.pool.clone(),
        kind: match d.type_.as_str() {
            "gpu" => DeviceKind::Gpu,
            "mig" => DeviceKind::Mig,
            other => DeviceKind::Other(other.to_string()),
        },
        uuid: d.uuid.clone(),
        product: d.product_name.clone(),
        memory_bytes: d.memory_mib.map(|m| m.saturating_mul(1024 * 1024)),
        // `sm_90` back to `9.0` (the last digit is the minor version).
        compute_capability: d.architecture.as_deref().and_then(|a| {
            let digits = a.strip_prefix("sm_")?;
            (digits.len() >= 2 && digits.chars().all(|c| c.is_ascii_digit()))
                .then(|| format!("{}.{}", &digits[..digits.len() - 1], &digits[digits.len() - 1..]))
        }),
        driver_version: d.driver_version.clone(),
        shared: d.shared,
        parent: d.parent_uuid.clone(),
        counter_sets: d.counter_sets.clone(),
    }
}

/// How many of a node's devices a pool with `req` may give its agents (held by other
/// workloads or not: see [`foreign_held`]), and, when none, why.
pub fn eligible_count(node: &GpuNodeDra, req: &GpuRequirements) -> (i64, Option<String>) {
    let devices: Vec<DraDevice> = node.devices.iter().map(device_from_status).collect();
    let n = devices.iter().filter(|d| eligible(d, req)).count();
    if n > 0 {
        return (i64::try_from(n).unwrap_or(i64::MAX), None);
    }
    let whole: Vec<&DraDevice> = devices.iter().filter(|d| d.whole()).collect();
    let why = if whole.is_empty() {
        format!("driver {} publishes no whole, exclusive GPU on the node ({} devices)", node.driver, devices.len())
    } else {
        let products: std::collections::BTreeSet<String> =
            whole.iter().map(|d| d.product.clone().unwrap_or_else(|| "no productName".into())).collect();
        let memory = whole.iter().filter_map(|d| d.memory_bytes).max().map(|b| b / (1024 * 1024));
        format!(
            "none of its {} whole GPUs ({}{}) matches spec.dra (productName {}, minMemory {})",
            whole.len(),
            products.into_iter().collect::<Vec<_>>().join(", "),
            memory.map(|m| format!(", at most {m} MiB")).unwrap_or_default(),
            req.product.as_deref().unwrap_or("any"),
            req.min_memory.as_deref().unwrap_or("any"),
        )
    };
    (0, Some(why))
}

/// How many of the devices a pool with `req` may give its agents other workloads hold: those
/// allocated to claims that are not benchkite agents', and those that share a counter set
/// with such a device (a MIG instance of a partitionable GPU allocated elsewhere leaves its
/// whole GPU unallocatable). The pool's slots there are fewer, as with GPUs other pods hold
/// through the device plugin.
pub fn foreign_held(node: &GpuNodeDra, req: &GpuRequirements) -> i64 {
    let foreign = |d: &DraDeviceStatus| d.allocated_to.is_some() && d.agent_pool.is_none();
    let blocked_sets: std::collections::BTreeSet<&str> =
        node.devices.iter().filter(|d| foreign(d)).flat_map(|d| d.counter_sets.iter().map(String::as_str)).collect();
    let n = node
        .devices
        .iter()
        .filter(|d| {
            foreign(d) || (d.allocated_to.is_none() && d.counter_sets.iter().any(|c| blocked_sets.contains(c.as_str())))
        })
        .filter(|d| eligible(&device_from_status(d), req))
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Who holds each device of `node`'s status: the claim (`namespace/name`) a device of its
/// pools is allocated to and, for a claim made from a pool's template, the pool
/// (`namespace/pool`). Written into `node.devices`.
pub fn mark_allocations<'a>(node: &mut GpuNodeDra, claims: impl IntoIterator<Item = &'a ResourceClaim>) {
    let mut held: BTreeMap<(String, String), (String, Option<String>)> = BTreeMap::new();
    for claim in claims {
        let Some(results) = claim
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.devices.as_ref())
            .and_then(|d| d.results.as_ref())
        else {
            continue;
        };
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = format!("{ns}/{}", claim.metadata.name.clone().unwrap_or_default());
        let pool = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_POOL))
            .filter(|_| {
                claim.metadata.labels.as_ref().and_then(|l| l.get(super::pod::LABEL_MANAGED_BY)).map(String::as_str)
                    == Some(super::pod::MANAGED_BY)
            })
            .map(|p| format!("{ns}/{p}"));
        for r in results.iter().filter(|r| r.driver == node.driver) {
            held.insert((r.pool.clone(), r.device.clone()), (name.clone(), pool.clone()));
        }
    }
    for d in &mut node.devices {
        let (claim, pool) = held.remove(&(d.pool.clone(), d.name.clone())).unzip();
        d.allocated_to = claim;
        d.agent_pool = pool.flatten();
    }
}

/// The name of a pool's claim template: the pool's name and a hash of the template's spec
/// (the API server refuses changes to a template's spec, so a changed request is a new
/// template, and the agents that reference it roll).
pub fn template_name(pool: &str, spec: &ResourceClaimTemplateSpec) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    let hash = hex::encode(&Sha256::digest(&bytes)[..4]);
    // A DNS subdomain of at most 253 characters.
    let keep = 253 - "-gpus-".len() - hash.len();
    let base = if pool.len() > keep { pool[..keep].trim_end_matches(['-', '.']) } else { pool };
    format!("{base}-gpus-{hash}")
}

#[cfg(test)]
#[path = "dra_tests.rs"]
mod tests;
