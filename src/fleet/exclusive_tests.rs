//! Tests of [`super`]: one per signal, the values that must not trigger, and combinations.

use k8s_openapi::api::core::v1::NodeStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
}

/// A node with the given labels, allocatable and capacity.
fn node_with(labels: &[(&str, &str)], allocatable: &[(&str, &str)], capacity: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta { name: Some("gpu-0".into()), labels: Some(map(labels)), ..Default::default() },
        status: Some(NodeStatus {
            allocatable: Some(quantities(allocatable)),
            capacity: Some(quantities(capacity)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An exclusive 8×H100 node as the GPU operator labels it (MIG-capable, MIG off, the
/// operator's default `mig.strategy=single`, no sharing, no MPS).
const H100: &[(&str, &str)] = &[
    ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
    ("nvidia.com/gpu.count", "8"),
    ("nvidia.com/gpu.replicas", "1"),
    ("nvidia.com/gpu.sharing-strategy", "none"),
    ("nvidia.com/mig.capable", "true"),
    ("nvidia.com/mig.strategy", "single"),
    ("nvidia.com/mig.config", "all-disabled"),
    ("nvidia.com/mps.capable", "false"),
];
const H100_ALLOC: &[(&str, &str)] = &[("cpu", "128"), ("memory", "1Ti"), ("nvidia.com/gpu", "8")];

/// The H100 node with labels overridden/added (an empty value removes the label).
fn h100(overrides: &[(&str, &str)], extra_alloc: &[(&str, &str)]) -> Node {
    let mut labels = map(H100);
    for (k, v) in overrides {
        if v.is_empty() {
            labels.remove(*k);
        } else {
            labels.insert(k.to_string(), v.to_string());
        }
    }
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut alloc = H100_ALLOC.to_vec();
    alloc.extend_from_slice(extra_alloc);
    node_with(&labels, &alloc, &alloc)
}

fn signal(node: &Node) -> Option<Signal> {
    match exclusivity(node, false) {
        Exclusivity::Exclusive => None,
        Exclusivity::Shared { signal, .. } => Some(signal),
    }
}

fn message(node: &Node) -> String {
    match exclusivity(node, false) {
        Exclusivity::Exclusive => String::new(),
        Exclusivity::Shared { message, .. } => message,
    }
}

#[test]
fn exclusive_nodes() {
    assert_eq!(exclusivity(&h100(&[], &[]), false), Exclusivity::Exclusive);
    assert_eq!(exclusivity(&h100(&[], &[]), false).reason(), "Exclusive");
    assert!(exclusivity(&h100(&[], &[]), false).is_exclusive());
    // No GFD labels at all (a plain device plugin), no status, no metadata labels.
    assert!(exclusivity(&node_with(&[], &[("nvidia.com/gpu", "4")], &[]), false).is_exclusive());
    assert!(exclusivity(&Node::default(), false).is_exclusive());
    // A Quadro as the GPU operator labels it: not MIG-capable, default strategy single.
    let quadro = node_with(
        &[
            ("nvidia.com/gpu.product", "Quadro-P400"),
            ("nvidia.com/gpu.count", "1"),
            ("nvidia.com/gpu.replicas", "1"),
            ("nvidia.com/gpu.sharing-strategy", "none"),
            ("nvidia.com/mig.capable", "false"),
            ("nvidia.com/mig.strategy", "single"),
            ("nvidia.com/mps.capable", "false"),
        ],
        &[("nvidia.com/gpu", "1")],
        &[("nvidia.com/gpu", "1")],
    );
    assert!(exclusivity(&quadro, false).is_exclusive());
    // An exclusive AMD MI300X node in SPX/NPS1 with partitioning supported.
    let mi300 = node_with(
        &[
            ("amd.com/gpu.product-name", "AMD_Instinct_MI300X"),
            ("amd.com/compute-partitioning-supported", "true"),
            ("amd.com/memory-partitioning-supported", "true"),
            ("amd.com/compute-memory-partition", "spx_nps1"),
        ],
        &[("amd.com/gpu", "8")],
        &[("amd.com/gpu", "8")],
    );
    assert!(exclusivity(&mi300, false).is_exclusive());
}

#[test]
fn time_slicing() {
    let node = h100(&[("nvidia.com/gpu.sharing-strategy", "time-slicing")], &[]);
    assert_eq!(signal(&node), Some(Signal::TimeSlicing));
    assert!(message(&node).contains("nvidia.com/gpu.sharing-strategy=time-slicing"), "{}", message(&node));
    assert_eq!(exclusivity(&node, false).reason(), "TimeSlicing");
    assert_eq!(signal(&h100(&[("nvidia.com/gpu.sharing-strategy", " Time-Slicing ")], &[])), Some(Signal::TimeSlicing));
}

#[test]
fn mps_strategy() {
    let node = h100(&[("nvidia.com/gpu.sharing-strategy", "mps")], &[]);
    assert_eq!(signal(&node), Some(Signal::Mps));
    assert!(message(&node).contains("nvidia.com/gpu.sharing-strategy=mps"));
}

#[test]
fn unknown_sharing_strategy_fails_closed() {
    let node = h100(&[("nvidia.com/gpu.sharing-strategy", "vgpu")], &[]);
    assert_eq!(signal(&node), Some(Signal::OtherSharing));
    assert!(message(&node).contains("nvidia.com/gpu.sharing-strategy=vgpu"));
    for exclusive in ["none", "NONE", ""] {
        assert_eq!(signal(&h100(&[("nvidia.com/gpu.sharing-strategy", exclusive)], &[])), None, "{exclusive:?}");
    }
    let blank = node_with(&[("nvidia.com/gpu.sharing-strategy", "  ")], &[("nvidia.com/gpu", "1")], &[]);
    assert_eq!(signal(&blank), None, "a blank label is no signal");
}

#[test]
fn replicas() {
    let node = h100(&[("nvidia.com/gpu.replicas", "4")], &[]);
    assert_eq!(signal(&node), Some(Signal::Replicas));
    assert!(message(&node).contains("nvidia.com/gpu.replicas=4"));
    for not_shared in ["1", "0", "-3", ""] {
        assert_eq!(signal(&h100(&[("nvidia.com/gpu.replicas", not_shared)], &[])), None, "{not_shared:?}");
    }
    let malformed = h100(&[("nvidia.com/gpu.replicas", "four")], &[]);
    assert_eq!(signal(&malformed), Some(Signal::Replicas), "malformed replicas fail closed");
    assert!(message(&malformed).contains("\"four\" is not an integer"), "{}", message(&malformed));
}

#[test]
fn shared_product() {
    let node = h100(&[("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3-SHARED")], &[]);
    assert_eq!(signal(&node), Some(Signal::SharedProduct));
    assert!(message(&node).contains("nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3-SHARED"));
    assert_eq!(signal(&h100(&[("nvidia.com/gpu.product", "Tesla-T4-shared")], &[])), Some(Signal::SharedProduct));
    // "SHARED" elsewhere in the name is not the suffix.
    assert_eq!(signal(&h100(&[("nvidia.com/gpu.product", "NVIDIA-SHAREDX-1")], &[])), None);
}

#[test]
fn mig_product() {
    let node = h100(&[("nvidia.com/gpu.product", "A100-SXM4-40GB-MIG-1g.5gb"), ("nvidia.com/gpu.count", "56")], &[]);
    assert_eq!(signal(&node), Some(Signal::MigProduct));
    assert!(message(&node).contains("nvidia.com/gpu.product=A100-SXM4-40GB-MIG-1g.5gb"));
    assert_eq!(signal(&h100(&[("nvidia.com/gpu.product", "NVIDIA-MIGHTY-1")], &[])), None);
}

#[test]
fn shared_resource() {
    let node = node_with(
        &[("nvidia.com/gpu.product", "Tesla-T4"), ("nvidia.com/gpu.count", "4")],
        &[("nvidia.com/gpu", "0"), ("nvidia.com/gpu.shared", "16")],
        &[],
    );
    assert_eq!(signal(&node), Some(Signal::SharedResource));
    assert!(message(&node).contains("allocatable nvidia.com/gpu.shared=16"), "{}", message(&node));
    let zero = node_with(&[], &[("nvidia.com/gpu", "4"), ("nvidia.com/gpu.shared", "0")], &[]);
    assert_eq!(signal(&zero), None, "a shared resource at 0 offers nothing");
}

#[test]
fn mig_resources() {
    let node = h100(&[], &[("nvidia.com/mig-3g.40gb", "2")]);
    assert_eq!(signal(&node), Some(Signal::MigResources));
    assert!(message(&node).contains("allocatable nvidia.com/mig-3g.40gb=2"));
    // Only in capacity (e.g. all allocated away) still counts.
    let capacity_only = node_with(&[], &[("nvidia.com/gpu", "1")], &[("nvidia.com/mig-1g.10gb", "7")]);
    assert_eq!(signal(&capacity_only), Some(Signal::MigResources));
    assert!(message(&capacity_only).contains("capacity nvidia.com/mig-1g.10gb=7"));
    // A stale MIG resource at 0 is not offered.
    assert_eq!(signal(&h100(&[], &[("nvidia.com/mig-1g.10gb", "0")])), None);
    // A quantity that does not parse fails closed.
    let garbage = h100(&[], &[("nvidia.com/mig-1g.10gb", "lots")]);
    assert_eq!(signal(&garbage), Some(Signal::MigResources));
    assert!(message(&garbage).contains("not a quantity"));
    // mig.strategy none with no MIG resources: exclusive.
    assert_eq!(signal(&h100(&[("nvidia.com/mig.strategy", "none"), ("nvidia.com/mig.config", "")], &[])), None);
}

#[test]
fn mig_strategy() {
    // MIG Manager asked for a layout.
    let node = h100(&[("nvidia.com/mig.config", "all-1g.10gb")], &[]);
    assert_eq!(signal(&node), Some(Signal::MigStrategy));
    assert!(message(&node).contains("nvidia.com/mig.config=all-1g.10gb"));
    // Strategy mixed next to MIG device labels (GFD's per-profile labels).
    let mixed = h100(
        &[("nvidia.com/mig.strategy", "mixed"), ("nvidia.com/mig-1g.10gb.count", "7"), ("nvidia.com/mig.config", "")],
        &[],
    );
    assert_eq!(signal(&mixed), Some(Signal::MigStrategy));
    assert!(message(&mixed).contains("nvidia.com/mig.strategy=mixed"), "{}", message(&mixed));
    assert!(message(&mixed).contains("nvidia.com/mig-1g.10gb.count"));
    // Strategy single next to slice labels, product not (yet) rewritten.
    let single = h100(&[("nvidia.com/gpu.slices.gi", "1"), ("nvidia.com/mig.config", "")], &[]);
    assert_eq!(signal(&single), Some(Signal::MigStrategy));
    // The strategy alone (the operator's default) is not a signal; nor are device labels
    // under strategy none.
    for strategy in ["single", "mixed", "none"] {
        let alone = h100(&[("nvidia.com/mig.strategy", strategy), ("nvidia.com/mig.config", "")], &[]);
        assert_eq!(signal(&alone), None, "{strategy}");
    }
    let none = h100(&[("nvidia.com/mig.strategy", "none"), ("nvidia.com/gpu.slices.gi", "1")], &[]);
    assert_eq!(signal(&none), None);
    assert_eq!(signal(&h100(&[("nvidia.com/mig.config", "ALL-DISABLED")], &[])), None);
}

#[test]
fn amd_partition_label() {
    let node = node_with(&[("amd.com/compute-memory-partition", "cpx_nps4")], &[("amd.com/gpu", "64")], &[]);
    assert_eq!(signal(&node), Some(Signal::AmdPartition));
    assert!(message(&node).contains("amd.com/compute-memory-partition=cpx_nps4"));
    for exclusive in ["spx_nps1", "SPX_NPS1", "spx_nps2"] {
        let n = node_with(&[("amd.com/compute-memory-partition", exclusive)], &[("amd.com/gpu", "8")], &[]);
        assert_eq!(signal(&n), None, "{exclusive}");
    }
    // Not SPX, even unrecognised, fails closed.
    let odd = node_with(&[("amd.com/compute-memory-partition", "weird")], &[("amd.com/gpu", "8")], &[]);
    assert_eq!(signal(&odd), Some(Signal::AmdPartition));
    // "Supported" is not "enabled".
    let supported = node_with(&[("amd.com/compute-partitioning-supported", "true")], &[("amd.com/gpu", "8")], &[]);
    assert_eq!(signal(&supported), None);
}

#[test]
fn amd_partition_resources() {
    let node = node_with(&[], &[("amd.com/cpx_nps4", "64")], &[]);
    assert_eq!(signal(&node), Some(Signal::AmdPartitionResources));
    assert!(message(&node).contains("allocatable amd.com/cpx_nps4=64"));
    assert_eq!(signal(&node_with(&[], &[("amd.com/dpx_nps1", "16")], &[])), Some(Signal::AmdPartitionResources));
    assert_eq!(signal(&node_with(&[], &[("amd.com/spx_nps1", "8")], &[])), None, "SPX is whole GPUs");
    assert_eq!(signal(&node_with(&[], &[("amd.com/cpx_nps4", "0")], &[])), None);
    // Names that only look like partitions are not.
    for other in ["amd.com/gpu", "amd.com/cpx", "amd.com/cpx_nps", "amd.com/cpx_npsX", "amd.com/xpx_nps1"] {
        assert_eq!(signal(&node_with(&[], &[(other, "8")], &[])), None, "{other}");
    }
}

#[test]
fn over_allocated() {
    let node = h100(&[], &[("nvidia.com/gpu", "16")]);
    assert_eq!(signal(&node), Some(Signal::OverAllocated));
    assert!(
        message(&node).contains("allocatable nvidia.com/gpu=16 is above nvidia.com/gpu.count=8"),
        "{}",
        message(&node)
    );
    // Fewer allocatable than physical (an unhealthy GPU) is not sharing; equal is fine; no
    // count label means nothing to compare.
    assert_eq!(signal(&h100(&[], &[("nvidia.com/gpu", "7")])), None);
    assert_eq!(signal(&h100(&[("nvidia.com/gpu.count", "")], &[("nvidia.com/gpu", "16")])), None);
    // A malformed count fails closed.
    let malformed = h100(&[("nvidia.com/gpu.count", "eight")], &[]);
    assert_eq!(signal(&malformed), Some(Signal::OverAllocated));
    assert!(message(&malformed).contains("\"eight\" is not an integer"));
    let bad_quantity = h100(&[], &[("nvidia.com/gpu", "many")]);
    assert_eq!(signal(&bad_quantity), Some(Signal::OverAllocated));
}

#[test]
fn mps_daemon() {
    let node = h100(&[], &[]);
    let seen = exclusivity(&node, true);
    assert_eq!(seen.reason(), "MpsDaemon");
    assert!(matches!(&seen, Exclusivity::Shared { message, .. } if message.contains("MPS control daemon pod")));
    let labelled = h100(&[("nvidia.com/mps.capable", "true")], &[]);
    assert_eq!(signal(&labelled), Some(Signal::MpsDaemon));
    assert!(message(&labelled).contains("nvidia.com/mps.capable=true"));
    assert_eq!(signal(&h100(&[("nvidia.com/mps.capable", "false")], &[])), None);
}

#[test]
fn first_signal_wins_in_documented_order() {
    // The GPU operator's own MPS example: every sharing signal at once.
    let mps = node_with(
        &[
            ("nvidia.com/gpu.count", "4"),
            ("nvidia.com/gpu.product", "Tesla-T4-SHARED"),
            ("nvidia.com/gpu.replicas", "4"),
            ("nvidia.com/gpu.sharing-strategy", "mps"),
            ("nvidia.com/mps.capable", "true"),
        ],
        &[("nvidia.com/gpu", "16")],
        &[("nvidia.com/gpu", "16")],
    );
    assert_eq!(signal(&mps), Some(Signal::Mps));
    assert_eq!(exclusivity(&mps, true), exclusivity(&mps, true), "deterministic");
    let no_strategy = h100(
        &[
            ("nvidia.com/gpu.sharing-strategy", ""),
            ("nvidia.com/gpu.replicas", "4"),
            ("nvidia.com/gpu.product", "T4-SHARED"),
        ],
        &[("nvidia.com/gpu", "32")],
    );
    assert_eq!(signal(&no_strategy), Some(Signal::Replicas));
    let product_then_resources =
        h100(&[("nvidia.com/gpu.product", "A100-MIG-1g.5gb")], &[("nvidia.com/mig-1g.5gb", "7")]);
    assert_eq!(signal(&product_then_resources), Some(Signal::MigProduct));
    let resources_then_config = h100(
        &[("nvidia.com/mig.config", "all-balanced")],
        &[("nvidia.com/mig-1g.10gb", "2"), ("nvidia.com/gpu", "99")],
    );
    assert_eq!(signal(&resources_then_config), Some(Signal::MigResources));
    let over_then_daemon = h100(&[("nvidia.com/mps.capable", "true")], &[("nvidia.com/gpu", "16")]);
    assert_eq!(exclusivity(&over_then_daemon, true).reason(), "OverAllocated");
    // Each signal is checked only at its place: ALL is the documented order, and reasons
    // are distinct.
    let reasons: std::collections::BTreeSet<_> = Signal::ALL.iter().map(|s| s.reason()).collect();
    assert_eq!(reasons.len(), Signal::ALL.len());
    let mut sorted = Signal::ALL;
    sorted.sort();
    assert_eq!(sorted, Signal::ALL, "ALL follows the declaration order");
}

#[test]
fn covers_what_inventory_calls_shared() {
    // Parity with inventory::detect's `shared` flag: everything it flags is refused here.
    use super::super::inventory;
    let cases: &[&[(&str, &str)]] = &[
        &[("nvidia.com/gpu.replicas", "4")],
        &[("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3-SHARED")],
        &[("nvidia.com/gpu.sharing-strategy", "mps")],
        &[("nvidia.com/gpu.sharing-strategy", "whatever")],
    ];
    for overrides in cases {
        let node = h100(overrides, &[]);
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let alloc: BTreeMap<String, String> = H100_ALLOC.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let inv = inventory::detect(&labels, &alloc, None).map_err(|e| e.to_string());
        assert_eq!(inv.map(|i| i.shared), Ok(true), "{overrides:?}");
        assert!(!exclusivity(&node, false).is_exclusive(), "{overrides:?}");
    }
}

#[test]
fn message_is_the_observed_fact_then_the_remedy() {
    let node = h100(&[("nvidia.com/gpu.replicas", "4")], &[]);
    assert_eq!(message(&node), format!("nvidia.com/gpu.replicas=4: {}", Signal::Replicas.remedy()));
    for signal in Signal::ALL {
        let remedy = signal.remedy();
        assert!(
            ["set", "remove", "disable"].iter().any(|verb| remedy.contains(verb)),
            "{signal:?}: the remedy tells the admin what to do: {remedy}"
        );
    }
}
