//! Whether a Node's GPUs are exclusive, by every documented signal of sharing or partitioning.
//!
//! Benchmarks need whole, unshared GPUs: time-slicing and MPS share one GPU between clients
//! (no memory or fault isolation), MIG and AMD compute partitions split it. The signals, checked
//! in this fixed order (the first one found is reported, so the answer is deterministic):
//!
//! 1. [`Signal::TimeSlicing`] / [`Signal::Mps`] / [`Signal::OtherSharing`]: the GFD label
//!    `nvidia.com/gpu.sharing-strategy` is `time-slicing`, `mps`, or any other value than `none`.
//! 2. [`Signal::Replicas`]: `nvidia.com/gpu.replicas` above 1.
//! 3. [`Signal::SharedProduct`]: `nvidia.com/gpu.product` ends with `-SHARED` (GFD's rename).
//! 4. [`Signal::MigProduct`]: `nvidia.com/gpu.product` contains `-MIG-` (MIG `single` strategy).
//! 5. [`Signal::SharedResource`]: the node offers `nvidia.com/gpu.shared` (`renameByDefault`).
//! 6. [`Signal::MigResources`]: the node offers `nvidia.com/mig-*` (MIG `mixed` strategy).
//! 7. [`Signal::MigStrategy`]: MIG is configured: `nvidia.com/mig.config` names a layout other
//!    than `all-disabled`, or `nvidia.com/mig.strategy` is `single`/`mixed` next to MIG device
//!    labels (`nvidia.com/gpu.slices.gi`/`.ci`, `nvidia.com/mig-<profile>.*`). The strategy label
//!    alone is NOT a signal: the GPU operator labels every node `single` by default, MIG-capable
//!    or not, MIG on or off.
//! 8. [`Signal::AmdPartition`]: the AMD labeller's `amd.com/compute-memory-partition` names a
//!    compute partition other than `spx` (e.g. `cpx_nps4`).
//! 9. [`Signal::AmdPartitionResources`]: the node offers an AMD partition resource other than
//!    `spx` (`amd.com/cpx_nps4`, `amd.com/dpx_nps1`, … under the `mixed` naming strategy).
//! 10. [`Signal::OverAllocated`]: allocatable `nvidia.com/gpu` above the `nvidia.com/gpu.count`
//!     label (more schedulable GPUs than physical ones).
//! 11. [`Signal::MpsDaemon`]: an MPS control daemon runs on the node (the caller's observation),
//!     or the node carries `nvidia.com/mps.capable=true`, the label the GPU operator's
//!     `nvidia-device-plugin-mps-control-daemon` DaemonSet selects nodes by.
//!
//! Malformed values fail closed: a number GFD would never write (`nvidia.com/gpu.replicas=abc`,
//! `nvidia.com/gpu.count=lots`) or a resource quantity that does not parse cannot vouch for
//! exclusivity, so the node is refused with a message naming the label and its value. A label
//! that is absent or empty is no signal. Label values compare case-insensitively after trimming.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity;

pub const SHARING_STRATEGY: &str = "nvidia.com/gpu.sharing-strategy";
pub const REPLICAS: &str = "nvidia.com/gpu.replicas";
pub const PRODUCT: &str = "nvidia.com/gpu.product";
pub const GPU_COUNT: &str = "nvidia.com/gpu.count";
pub const MIG_STRATEGY: &str = "nvidia.com/mig.strategy";
pub const MIG_CONFIG: &str = "nvidia.com/mig.config";
pub const MPS_CAPABLE: &str = "nvidia.com/mps.capable";
pub const AMD_PARTITION: &str = "amd.com/compute-memory-partition";
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
pub const SHARED_RESOURCE: &str = "nvidia.com/gpu.shared";
const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
const AMD_PREFIX: &str = "amd.com/";
const AMD_COMPUTE_PARTITIONS: &[&str] = &["spx", "dpx", "tpx", "qpx", "cpx"];

/// One documented signal of a shared or partitioned GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    TimeSlicing,
    Mps,
    OtherSharing,
    Replicas,
    SharedProduct,
    MigProduct,
    SharedResource,
    MigResources,
    MigStrategy,
    AmdPartition,
    AmdPartitionResources,
    OverAllocated,
    MpsDaemon,
}

impl Signal {
    /// Every signal, in the order they are checked.
    pub const ALL: [Signal; 13] = [
        Signal::TimeSlicing,
        Signal::Mps,
        Signal::OtherSharing,
        Signal::Replicas,
        Signal::SharedProduct,
        Signal::MigProduct,
        Signal::SharedResource,
        Signal::MigResources,
        Signal::MigStrategy,
        Signal::AmdPartition,
        Signal::AmdPartitionResources,
        Signal::OverAllocated,
        Signal::MpsDaemon,
    ];

    /// What the signal means and what an admin does about it (follows the observed fact).
    pub fn remedy(self) -> &'static str {
        match self {
            Signal::TimeSlicing => {
                "GPUs are time-sliced between pods; remove the device plugin's time-slicing config here"
            }
            Signal::Mps => "GPUs are shared through MPS; remove the device plugin's MPS config on this node",
            Signal::OtherSharing => {
                "an unrecognised sharing strategy (only \"none\" is exclusive); disable sharing here"
            }
            Signal::Replicas => "GPUs may be advertised more than once; set replicas to 1 (no sharing) on this node",
            Signal::SharedProduct => "-SHARED marks GPUs shared by time-slicing or MPS; disable sharing on this node",
            Signal::MigProduct => {
                "MIG instances (single strategy) split the GPUs; set nvidia.com/mig.config=all-disabled"
            }
            Signal::SharedResource => "the device plugin offers shared GPU replicas; disable sharing on this node",
            Signal::MigResources => {
                "MIG instances (mixed strategy) split the GPUs; set nvidia.com/mig.config=all-disabled"
            }
            Signal::MigStrategy => "MIG partitions these GPUs; set nvidia.com/mig.config=all-disabled on this node",
            Signal::AmdPartition | Signal::AmdPartitionResources => {
                "GPUs are split into AMD compute partitions; set the SPX partition mode on this node"
            }
            Signal::OverAllocated => "more GPUs are schedulable than are physically present; disable sharing here",
            Signal::MpsDaemon => "MPS multiplexes processes onto the GPUs; remove MPS from this node's device plugin",
        }
    }

    /// The reason of the `Exclusive=False` condition.
    pub fn reason(self) -> &'static str {
        match self {
            Signal::TimeSlicing => "TimeSlicing",
            Signal::Mps => "Mps",
            Signal::OtherSharing => "OtherSharing",
            Signal::Replicas => "Replicas",
            Signal::SharedProduct => "SharedProduct",
            Signal::MigProduct => "MigProduct",
            Signal::SharedResource => "SharedResource",
            Signal::MigResources => "MigResources",
            Signal::MigStrategy => "MigStrategy",
            Signal::AmdPartition => "AmdPartition",
            Signal::AmdPartitionResources => "AmdPartitionResources",
            Signal::OverAllocated => "OverAllocated",
            Signal::MpsDaemon => "MpsDaemon",
        }
    }
}

/// Whether a node's GPUs may serve benchmarks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exclusivity {
    Exclusive,
    Shared { signal: Signal, message: String },
}

impl Exclusivity {
    /// The condition reason: `Exclusive`, or the signal's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Exclusivity::Exclusive => "Exclusive",
            Exclusivity::Shared { signal, .. } => signal.reason(),
        }
    }

    pub fn is_exclusive(&self) -> bool {
        matches!(self, Exclusivity::Exclusive)
    }
}

/// The first signal (in the module's documented order) that the node's GPUs are shared or
/// partitioned; `mps_daemon_on_node` is whether the caller saw an MPS control daemon pod there.
pub fn exclusivity(node: &Node, mps_daemon_on_node: bool) -> Exclusivity {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let status = node.status.as_ref();
    let no_resources = BTreeMap::new();
    let capacity = status.and_then(|s| s.capacity.as_ref()).unwrap_or(&no_resources);
    let allocatable = status.and_then(|s| s.allocatable.as_ref()).unwrap_or(&no_resources);
    let facts = Facts { labels, capacity, allocatable, mps_daemon_on_node };
    for signal in Signal::ALL {
        if let Some(observed) = facts.check(signal) {
            return Exclusivity::Shared { signal, message: format!("{observed}: {}", signal.remedy()) };
        }
    }
    Exclusivity::Exclusive
}

struct Facts<'a> {
    labels: &'a BTreeMap<String, String>,
    capacity: &'a BTreeMap<String, Quantity>,
    allocatable: &'a BTreeMap<String, Quantity>,
    mps_daemon_on_node: bool,
}

/// A resource's quantity in whole units, or its raw text when it does not parse.
fn offered(q: &Quantity) -> Result<i64, String> {
    quantity::whole_units(&q.0).map_err(|_| q.0.clone())
}

impl Facts<'_> {
    /// A label's trimmed value, `None` when absent or empty.
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// The first resource in allocatable, then capacity, whose name matches and that is offered
    /// at more than 0 (or at a quantity that does not parse), described as `field name=value`.
    fn offered_resource(&self, matches: impl Fn(&str) -> bool) -> Option<String> {
        [("allocatable", self.allocatable), ("capacity", self.capacity)].into_iter().find_map(|(field, map)| {
            map.iter().filter(|(name, _)| matches(name)).find_map(|(name, q)| match offered(q) {
                Ok(n) if n > 0 => Some(format!("{field} {name}={n}")),
                Ok(_) => None,
                Err(raw) => Some(format!("{field} {name}={raw:?} (not a quantity)")),
            })
        })
    }

    /// What the node shows for `signal` (label or resource and its value), if it shows it.
    fn check(&self, signal: Signal) -> Option<String> {
        let strategy = self.label(SHARING_STRATEGY);
        let product = self.label(PRODUCT).map(|p| (p, p.to_ascii_uppercase()));
        let is = |want: &'static str| move |v: &&str| v.eq_ignore_ascii_case(want);
        match signal {
            Signal::TimeSlicing => strategy.filter(is("time-slicing")).map(|s| format!("{SHARING_STRATEGY}={s}")),
            Signal::Mps => strategy.filter(is("mps")).map(|s| format!("{SHARING_STRATEGY}={s}")),
            Signal::OtherSharing => strategy
                .filter(|s| !["none", "mps", "time-slicing"].iter().any(|k| s.eq_ignore_ascii_case(k)))
                .map(|s| format!("{SHARING_STRATEGY}={s}")),
            Signal::Replicas => self.label(REPLICAS).and_then(|v| match v.parse::<i64>() {
                Ok(n) if n > 1 => Some(format!("{REPLICAS}={n}")),
                Ok(_) => None,
                Err(_) => Some(format!("{REPLICAS}={v:?} is not an integer")),
            }),
            Signal::SharedProduct => {
                product.filter(|(_, up)| up.ends_with("-SHARED")).map(|(p, _)| format!("{PRODUCT}={p}"))
            }
            Signal::MigProduct => product.filter(|(_, up)| up.contains("-MIG-")).map(|(p, _)| format!("{PRODUCT}={p}")),
            Signal::SharedResource => self.offered_resource(|n| n == SHARED_RESOURCE),
            Signal::MigResources => self.offered_resource(|n| n.starts_with(MIG_RESOURCE_PREFIX)),
            Signal::MigStrategy => self.mig_configured(),
            Signal::AmdPartition => {
                self.label(AMD_PARTITION).filter(|v| !is_spx(v)).map(|v| format!("{AMD_PARTITION}={v}"))
            }
            Signal::AmdPartitionResources => {
                self.offered_resource(|n| n.strip_prefix(AMD_PREFIX).is_some_and(|r| is_amd_partition(r) && !is_spx(r)))
            }
            Signal::OverAllocated => self.over_allocated(),
            Signal::MpsDaemon if self.mps_daemon_on_node => Some("an MPS control daemon pod runs on this node".into()),
            Signal::MpsDaemon => self
                .label(MPS_CAPABLE)
                .filter(is("true"))
                .map(|v| format!("{MPS_CAPABLE}={v} (the GPU operator runs its MPS control daemon on such nodes)")),
        }
    }

    fn mig_configured(&self) -> Option<String> {
        if let Some(config) = self.label(MIG_CONFIG).filter(|c| !c.eq_ignore_ascii_case("all-disabled")) {
            return Some(format!("{MIG_CONFIG}={config}"));
        }
        let strategy =
            self.label(MIG_STRATEGY).filter(|s| ["single", "mixed"].iter().any(|k| s.eq_ignore_ascii_case(k)))?;
        let device_label = self.labels.keys().find(|k| {
            k.as_str() == "nvidia.com/gpu.slices.gi"
                || k.as_str() == "nvidia.com/gpu.slices.ci"
                || k.starts_with(MIG_RESOURCE_PREFIX)
        })?;
        Some(format!("{MIG_STRATEGY}={strategy} with the MIG device label {device_label}"))
    }

    fn over_allocated(&self) -> Option<String> {
        let gpus = self.allocatable.get(GPU_RESOURCE)?;
        let count = self.label(GPU_COUNT)?;
        let Ok(count_n) = count.parse::<i64>() else {
            return Some(format!("{GPU_COUNT}={count:?} is not an integer"));
        };
        match offered(gpus) {
            Ok(n) if n > count_n => Some(format!("allocatable {GPU_RESOURCE}={n} is above {GPU_COUNT}={count_n}")),
            Ok(_) => None,
            Err(raw) => Some(format!("allocatable {GPU_RESOURCE}={raw:?} is not a quantity")),
        }
    }
}

/// `cpx_nps4` → true: an AMD `<compute>_<memory>` partition name.
fn is_amd_partition(name: &str) -> bool {
    name.split_once('_').is_some_and(|(compute, memory)| {
        AMD_COMPUTE_PARTITIONS.iter().any(|c| compute.eq_ignore_ascii_case(c))
            && memory.get(..3).zip(memory.get(3..)).is_some_and(|(nps, n)| {
                nps.eq_ignore_ascii_case("nps") && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
    })
}

/// Whether an AMD partition value keeps each GPU whole (single partition, SPX).
fn is_spx(value: &str) -> bool {
    value.split('_').next().is_some_and(|compute| compute.eq_ignore_ascii_case("spx"))
}

#[cfg(test)]
#[path = "exclusive_tests.rs"]
mod tests;
