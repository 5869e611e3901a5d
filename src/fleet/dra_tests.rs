use k8s_openapi::api::resource::v1::ResourceSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::*;

/// A whole GPU as NVIDIA's DRA driver publishes it (v25.12+: `resource.kubernetes.io/pciBusID`).
fn gpu(minor: u32, product: &str, memory: &str) -> Value {
    json!({
        "name": format!("gpu-{minor}"),
        "attributes": {
            "type": {"string": "gpu"},
            "uuid": {"string": format!("GPU-{minor:08x}-0000-0000-0000-000000000000")},
            "productName": {"string": product},
            "brand": {"string": "Nvidia"},
            "architecture": {"string": "Hopper"},
            "cudaComputeCapability": {"version": "9.0.0"},
            "driverVersion": {"version": "580.95.5"},
            "cudaDriverVersion": {"version": "13.0.0"},
            "resource.kubernetes.io/pciBusID": {"string": format!("0000:{minor:02x}:00.0")},
        },
        "capacity": {"memory": {"value": memory}},
    })
}

fn mig(parent: u32) -> Value {
    json!({
        "name": format!("gpu-{parent}-mig-1g10gb-19-0"),
        "attributes": {
            "type": {"string": "mig"},
            "uuid": {"string": "MIG-1"},
            "parentUUID": {"string": "GPU-parent"},
            "profile": {"string": "1g.10gb"},
            "productName": {"string": "NVIDIA H100 80GB HBM3"},
        },
        "capacity": {"memory": {"value": "10Gi"}, "multiprocessors": {"value": "16"}},
    })
}

fn slice(node: &str, driver: &str, pool_generation: i64, count: i64, devices: Vec<Value>) -> ResourceSlice {
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": format!("{node}-{driver}-{pool_generation}-{}", devices.len())},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": pool_generation, "resourceSliceCount": count},
            "devices": devices,
        }
    }))
    .unwrap_or_else(|e| panic!("slice fixture: {e}"))
}

const H100: &str = "NVIDIA H100 80GB HBM3";

#[test]
fn a_nodes_inventory_reads_nvidias_attributes() {
    let mut shared = gpu(9, H100, "80Gi");
    shared["allowMultipleAllocations"] = json!(true);
    let slices = [
        slice("n1", NVIDIA_DRIVER, 1, 1, (0..8).map(|i| gpu(i, H100, "80Gi")).chain([mig(8), shared]).collect()),
        slice("n2", NVIDIA_DRIVER, 1, 1, vec![gpu(0, "NVIDIA A100 80GB PCIe", "80Gi")]),
        slice("n1", "gpu.example.com", 1, 1, vec![gpu(0, H100, "80Gi")]),
    ];
    let inv = node_inventory(&slices, "n1", NVIDIA_DRIVER).expect("n1 has slices");
    assert!(inv.complete);
    assert_eq!(inv.devices.len(), 10, "the other driver's device is not n1's");
    assert_eq!(inv.whole_count(), 8, "the MIG instance and the shared GPU are not whole GPUs");
    assert_eq!(inv.product().as_deref(), Some(H100));
    assert_eq!(inv.architecture().as_deref(), Some("sm_90"));
    assert_eq!(inv.driver_version().as_deref(), Some("580.95.5"));
    assert_eq!(inv.memory_mib(), Some(80 * 1024));
    let g0 = &inv.devices[0];
    assert_eq!((g0.name.as_str(), g0.uuid.as_deref()), ("gpu-0", Some("GPU-00000000-0000-0000-0000-000000000000")));
    let m = inv.devices.iter().find(|d| d.kind == DeviceKind::Mig).expect("the MIG device");
    assert_eq!(m.unusable_reason().as_deref(), Some("a MIG instance, not a whole GPU"));
    let s = inv.devices.iter().find(|d| d.shared).expect("the shared device");
    assert!(s.unusable_reason().is_some_and(|r| r.starts_with("shared")));
    assert!(node_inventory(&slices, "n3", NVIDIA_DRIVER).is_none(), "no slice: no DRA inventory");
}

#[test]
fn only_the_newest_generation_of_a_pool_counts_and_a_partial_one_is_incomplete() {
    let slices = [
        slice("n1", NVIDIA_DRIVER, 1, 1, (0..8).map(|i| gpu(i, H100, "80Gi")).collect()),
        // Generation 2 is published in two slices; one is there so far.
        slice("n1", NVIDIA_DRIVER, 2, 2, (0..4).map(|i| gpu(i, H100, "80Gi")).collect()),
    ];
    let inv = node_inventory(&slices, "n1", NVIDIA_DRIVER).expect("slices");
    assert_eq!(inv.whole_count(), 4);
    assert!(!inv.complete);
}

#[test]
fn attributes_qualified_with_the_driver_name_are_read_too() {
    let dev = json!({
        "name": "gpu-0",
        "attributes": {"gpu.nvidia.com/type": {"string": "gpu"}, "gpu.nvidia.com/productName": {"string": H100}},
        "capacity": {"gpu.nvidia.com/memory": {"value": "80Gi"}},
    });
    let inv = node_inventory(&[slice("n1", NVIDIA_DRIVER, 1, 1, vec![dev])], "n1", NVIDIA_DRIVER).expect("slices");
    assert_eq!(inv.whole_count(), 1);
    assert_eq!(inv.product().as_deref(), Some(H100));
    assert_eq!(inv.memory_mib(), Some(80 * 1024));
}

#[test]
fn mixed_products_have_no_single_product() {
    let slices = [slice("n1", NVIDIA_DRIVER, 1, 1, vec![gpu(0, H100, "80Gi"), gpu(1, "NVIDIA H200", "141Gi")])];
    let inv = node_inventory(&slices, "n1", NVIDIA_DRIVER).expect("slices");
    assert_eq!((inv.product(), inv.memory_mib()), (None, Some(80 * 1024)));
}

#[test]
fn a_node_served_both_ways_counts_its_gpus_once() {
    let inv = node_inventory(
        &[slice("n1", NVIDIA_DRIVER, 1, 1, (0..8).map(|i| gpu(i, H100, "80Gi")).collect())],
        "n1",
        NVIDIA_DRIVER,
    );
    assert_eq!(gpu_count(Some(8), inv.as_ref()), Some((8, Offered::Both)));
    assert_eq!(gpu_count(Some(6), inv.as_ref()), Some((8, Offered::Both)), "never 6 + 8");
    assert_eq!(gpu_count(None, inv.as_ref()), Some((8, Offered::Dra)));
    assert_eq!(gpu_count(Some(8), None), Some((8, Offered::DevicePlugin)));
    assert_eq!(gpu_count(Some(0), None), None);
    let only_mig = node_inventory(&[slice("n1", NVIDIA_DRIVER, 1, 1, vec![mig(0)])], "n1", NVIDIA_DRIVER);
    assert_eq!(gpu_count(None, only_mig.as_ref()), None, "MIG instances are no whole GPUs");
}

#[test]
fn the_selector_asks_for_a_whole_gpu_of_the_product_and_memory() {
    let req = GpuRequirements { product: Some(H100.into()), min_memory: Some("40Gi".into()) };
    assert_eq!(
        selector(NVIDIA_DRIVER, &req),
        r#"device.driver == "gpu.nvidia.com" && device.attributes["gpu.nvidia.com"].type == "gpu" && !device.allowMultipleAllocations && device.attributes["gpu.nvidia.com"].productName == "NVIDIA H100 80GB HBM3" && device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("40Gi")) >= 0"#
    );
    assert_eq!(
        selector("gpu.example.com", &GpuRequirements::default()),
        r#"device.driver == "gpu.example.com" && device.attributes["gpu.example.com"].type == "gpu" && !device.allowMultipleAllocations"#
    );
    // A product name cannot break out of its string literal.
    let sneaky = GpuRequirements { product: Some(r#"x" || true || "y\"#.into()), min_memory: None };
    assert!(selector(NVIDIA_DRIVER, &sneaky).ends_with(r#"productName == "x\" || true || \"y\\""#));
}

#[test]
fn eligibility_follows_the_selector_and_refuses_shared_devices() {
    let inv = node_inventory(
        &[slice(
            "n1",
            NVIDIA_DRIVER,
            1,
            1,
            vec![gpu(0, H100, "80Gi"), gpu(1, H100, "40Gi"), gpu(2, "NVIDIA A100 80GB PCIe", "80Gi"), mig(3), {
                let mut s = gpu(4, H100, "80Gi");
                s["allowMultipleAllocations"] = json!(true);
                s
            }],
        )],
        "n1",
        NVIDIA_DRIVER,
    )
    .expect("slices");
    let names = |req: &GpuRequirements| -> Vec<String> {
        inv.devices.iter().filter(|d| eligible(d, req)).map(|d| d.name.clone()).collect()
    };
    assert_eq!(names(&GpuRequirements::default()), ["gpu-0", "gpu-1", "gpu-2"]);
    assert_eq!(names(&GpuRequirements { product: Some(H100.into()), min_memory: None }), ["gpu-0", "gpu-1"]);
    assert_eq!(names(&GpuRequirements { product: Some(H100.into()), min_memory: Some("64Gi".into()) }), ["gpu-0"]);
    assert!(names(&GpuRequirements { product: None, min_memory: Some("not a quantity".into()) }).is_empty());
}

#[test]
fn the_claim_template_asks_for_the_pools_gpus_per_agent() {
    let owner = OwnerReference {
        api_version: "benchkite.dev/v1alpha1".into(),
        kind: "AgentPool".into(),
        name: "p".into(),
        uid: "u".into(),
        controller: Some(true),
        ..Default::default()
    };
    let t = claim_template("p-gpus", "ns", owner, NVIDIA_DRIVER, 2, "device.driver == \"gpu.nvidia.com\"");
    let v = serde_json::to_value(&t).expect("serializes");
    let req = &v["spec"]["spec"]["devices"]["requests"][0];
    assert_eq!(req["name"], "gpus");
    assert_eq!(req["exactly"]["deviceClassName"], "gpu.nvidia.com");
    assert_eq!(req["exactly"]["count"], 2);
    assert_eq!(req["exactly"]["allocationMode"], "ExactCount");
    assert_eq!(req["exactly"]["selectors"][0]["cel"]["expression"], "device.driver == \"gpu.nvidia.com\"");
    assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "AgentPool");
    assert!(req.get("deviceClassName").is_none(), "the v1 shape (exactly), not v1beta1's");
}

#[test]
fn claims_made_from_the_template_carry_the_pools_label_and_name() {
    let owner = OwnerReference { kind: "AgentPool".into(), name: "h100".into(), uid: "u".into(), ..Default::default() };
    let t = claim_template("h100-gpus-1", "ns", owner, NVIDIA_DRIVER, 1, "true");
    for meta in [Some(&t.metadata), t.spec.metadata.as_ref()] {
        let meta = meta.expect("metadata");
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "benchkite", "the controller watches claims by it");
        assert_eq!(labels["benchkite.dev/pool"], "h100");
        assert_eq!(meta.annotations.as_ref().expect("annotations")[ANNOTATION_POOL], "h100");
    }
}

#[test]
fn the_template_name_follows_its_whole_spec_and_stays_a_valid_name() {
    let owner = OwnerReference { kind: "AgentPool".into(), name: "h100".into(), uid: "u".into(), ..Default::default() };
    let sel = selector(NVIDIA_DRIVER, &GpuRequirements { product: Some(H100.into()), min_memory: None });
    let spec = |class: &str, count: i64, sel: &str| claim_template("", "ns", owner.clone(), class, count, sel).spec;
    let a = template_name("h100", &spec(NVIDIA_DRIVER, 1, &sel));
    assert!(a.starts_with("h100-gpus-") && a.len() == "h100-gpus-".len() + 8, "{a}");
    assert_eq!(a, template_name("h100", &spec(NVIDIA_DRIVER, 1, &sel)), "stable");
    assert_ne!(a, template_name("h100", &spec(NVIDIA_DRIVER, 2, &sel)), "gpusPerAgent");
    assert_ne!(a, template_name("h100", &spec("other.example.com", 1, &sel)), "device class");
    assert_ne!(a, template_name("h100", &spec(NVIDIA_DRIVER, 1, "true")), "selector");
    // The claims' metadata is part of the (immutable) spec too.
    let mut relabelled = spec(NVIDIA_DRIVER, 1, &sel);
    if let Some(m) = relabelled.metadata.as_mut() {
        m.labels.get_or_insert_with(Default::default).insert("extra".into(), "x".into());
    }
    assert_ne!(a, template_name("h100", &relabelled), "claim metadata");
    let long = template_name(&"p".repeat(253), &spec(NVIDIA_DRIVER, 1, &sel));
    assert_eq!(long.len(), 253);
    // Cut where a label ends: no '.' before the suffix's '-'.
    let dotted = template_name(&format!("{}.bbbb", "a".repeat(238)), &spec(NVIDIA_DRIVER, 1, &sel));
    assert!(!dotted.contains(".-") && dotted.starts_with(&"a".repeat(238)) && dotted.len() < 253, "{dotted}");
}

#[test]
fn without_consumable_capacity_the_selector_leaves_out_allow_multiple_allocations() {
    let req = GpuRequirements { product: Some(H100.into()), min_memory: Some("40Gi".into()) };
    let with = selector_for(NVIDIA_DRIVER, &req, true);
    let without = selector_for(NVIDIA_DRIVER, &req, false);
    assert_eq!(with, selector(NVIDIA_DRIVER, &req));
    assert!(with.contains("!device.allowMultipleAllocations"));
    assert!(!without.contains("allowMultipleAllocations"));
    assert_eq!(with.replace(" && !device.allowMultipleAllocations", ""), without, "nothing else changes");
}

fn allocated_claim(pod_uid: &str, results: Value) -> ResourceClaim {
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "agent-0-gpus-abcde", "namespace": "ns", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Pod", "name": "agent-0", "uid": pod_uid, "controller": true}]},
        "spec": {"devices": {"requests": [{"name": "gpus", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}},
        "status": {"allocation": {"devices": {"results": results}}},
    }))
    .unwrap_or_else(|e| panic!("claim fixture: {e}"))
}

#[test]
fn an_allocation_names_the_claims_devices_with_their_uuids() {
    let inv = node_inventory(
        [&slice("n", NVIDIA_DRIVER, 1, 1, vec![gpu(0, H100, "80Gi"), gpu(3, H100, "80Gi")])],
        "n",
        NVIDIA_DRIVER,
    )
    .expect("inventory");
    let status = node_status(&inv);
    let claim = allocated_claim(
        "pod-uid",
        json!([
            {"request": "gpus", "driver": NVIDIA_DRIVER, "pool": "n", "device": "gpu-3"},
            {"request": "gpus", "driver": "other.example.com", "pool": "n", "device": "nic-0"},
        ]),
    );
    assert_eq!(claim_pod_uid(&claim), Some("pod-uid"));
    let a = allocation_of(&claim, NVIDIA_DRIVER, Some(&status)).expect("allocated");
    assert_eq!(a.devices.len(), 1, "only the driver's devices");
    assert_eq!(a.devices[0].name, "gpu-3");
    assert_eq!(a.devices[0].uuid.as_deref(), Some("GPU-00000003-0000-0000-0000-000000000000"));
    assert_eq!(a.devices[0].product_name.as_deref(), Some(H100));
    assert_eq!(Allocation::decode(&a.encode()), Ok(a.clone()), "the annotation round-trips");
    // Unknown to the node's status (slices not seen yet): the name alone.
    let bare = allocation_of(&claim, NVIDIA_DRIVER, None).expect("allocated");
    assert_eq!(bare.devices[0].uuid, None);
    // Not allocated yet, or nothing of the driver: no allocation.
    let mut pending = claim.clone();
    pending.status = None;
    assert_eq!(allocation_of(&pending, NVIDIA_DRIVER, Some(&status)), None);
    assert_eq!(allocation_of(&claim, "gpu.amd.com", Some(&status)), None);
    // A claim not made for a pod (no controlling Pod owner) belongs to no agent.
    let mut orphan = claim;
    orphan.metadata.owner_references = None;
    assert_eq!(claim_pod_uid(&orphan), None);
}

#[test]
fn the_status_keeps_every_device_and_why_it_is_not_an_agents() {
    let mut shared = gpu(9, H100, "80Gi");
    shared["allowMultipleAllocations"] = json!(true);
    let inv = node_inventory(
        [&slice("n", NVIDIA_DRIVER, 1, 1, vec![gpu(0, H100, "80Gi"), mig(1), shared])],
        "n",
        NVIDIA_DRIVER,
    )
    .expect("inventory");
    let st = node_status(&inv);
    assert_eq!((st.driver.as_str(), st.whole_gpus, st.complete), (NVIDIA_DRIVER, 1, true));
    let by = |n: &str| st.devices.iter().find(|d| d.name == n).expect(n);
    let g = by("gpu-0");
    assert_eq!((g.type_.as_str(), g.memory_mib, g.unusable.as_deref()), ("gpu", Some(81920), None));
    assert_eq!(g.architecture.as_deref(), Some("sm_90"));
    assert_eq!(g.driver_version.as_deref(), Some("580.95.5"));
    assert!(by("gpu-1-mig-1g10gb-19-0").unusable.as_deref().is_some_and(|r| r.contains("MIG")));
    assert!(by("gpu-9").shared && by("gpu-9").unusable.as_deref().is_some_and(|r| r.contains("shared")));
    // Read back, the devices are judged as from the slices.
    for (d, s) in inv.devices.iter().zip(&st.devices) {
        let back = device_from_status(s);
        assert_eq!((back.whole(), back.kind.clone(), back.memory_bytes), (d.whole(), d.kind.clone(), d.memory_bytes));
    }
}

#[test]
fn a_pools_slots_on_a_node_are_its_eligible_devices() {
    let mut shared = gpu(9, H100, "80Gi");
    shared["allowMultipleAllocations"] = json!(true);
    let a100 = "NVIDIA A100-SXM4-40GB";
    let devices = vec![gpu(0, H100, "80Gi"), gpu(1, H100, "80Gi"), gpu(2, a100, "40Gi"), mig(0), shared];
    let st =
        node_status(&node_inventory([&slice("n", NVIDIA_DRIVER, 1, 1, devices)], "n", NVIDIA_DRIVER).expect("inv"));
    let req = |p: Option<&str>, m: Option<&str>| GpuRequirements {
        product: p.map(String::from),
        min_memory: m.map(String::from),
    };
    assert_eq!(eligible_count(&st, &req(None, None)), (3, None), "whole GPUs only: not the MIG, not the shared one");
    assert_eq!(eligible_count(&st, &req(Some(H100), None)).0, 2);
    assert_eq!(eligible_count(&st, &req(None, Some("80Gi"))).0, 2);
    assert_eq!(eligible_count(&st, &req(Some(a100), Some("40Gi"))).0, 1);
    let (n, why) = eligible_count(&st, &req(Some("NVIDIA B200"), None));
    assert_eq!(n, 0);
    let why = why.expect("a reason");
    assert!(
        why.contains("3 whole GPUs") && why.contains(H100) && why.contains(a100) && why.contains("NVIDIA B200"),
        "{why}"
    );
    let only_mig = node_status(
        &node_inventory([&slice("m", NVIDIA_DRIVER, 1, 1, vec![mig(0)])], "m", NVIDIA_DRIVER).expect("inv"),
    );
    let (n, why) = eligible_count(&only_mig, &req(None, None));
    assert_eq!(n, 0);
    assert!(why.is_some_and(|w| w.contains("no whole, exclusive GPU")));
}

#[test]
fn a_dra_only_node_is_described_by_its_whole_gpus() {
    let devices = vec![gpu(0, H100, "80Gi"), gpu(1, H100, "80Gi"), mig(2)];
    let inv = node_inventory([&slice("n", NVIDIA_DRIVER, 1, 1, devices)], "n", NVIDIA_DRIVER).expect("inv");
    let g = gpu_inventory(&inv);
    assert_eq!(g.gpu_count, 2);
    assert_eq!(g.vendor, Vendor::Nvidia);
    assert_eq!(g.product.as_deref(), Some(H100));
    assert_eq!(g.gpu_type.as_deref(), Some("h100"));
    assert_eq!(g.architecture.as_deref(), Some("sm_90"));
    assert_eq!(g.memory_mib, Some(81920));
    assert_eq!(g.driver_version.as_deref(), Some("580.95.5"));
    assert!(!g.shared && g.resource_name.is_empty());
}

fn claim_on(ns: &str, name: &str, agent_pool: Option<&str>, devices: &[(&str, &str)]) -> ResourceClaim {
    let mut meta = json!({"name": name, "namespace": ns});
    if let Some(p) = agent_pool {
        meta["labels"] = json!({"app.kubernetes.io/managed-by": "benchkite", "benchkite.dev/pool": p});
        meta["annotations"] = json!({ANNOTATION_POOL: p});
    }
    let results: Vec<Value> = devices
        .iter()
        .map(|(pool, dev)| json!({"request": "gpus", "driver": NVIDIA_DRIVER, "pool": pool, "device": dev}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": meta,
        "spec": {"devices": {"requests": [{"name": "gpus", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}},
        "status": {"allocation": {"devices": {"results": results}}},
    }))
    .unwrap_or_else(|e| panic!("claim fixture: {e}"))
}

#[test]
fn each_device_says_which_claim_holds_it_and_other_workloads_take_slots() {
    let devices = vec![gpu(0, H100, "80Gi"), gpu(1, H100, "80Gi"), gpu(2, H100, "80Gi"), gpu(3, H100, "80Gi")];
    let inv = node_inventory([&slice("n", NVIDIA_DRIVER, 1, 1, devices)], "n", NVIDIA_DRIVER).expect("inv");
    let mut st = node_status(&inv);
    let claims = [
        claim_on("ci", "h100-n-0-gpus-x", Some("h100"), &[("n", "gpu-0")]),
        claim_on("ml", "training", None, &[("n", "gpu-1"), ("n", "gpu-2")]),
        // Another node's pool, the same device name: not this node's gpu-3.
        claim_on("ml", "elsewhere", None, &[("m", "gpu-3")]),
        // A claim that merely carries the annotation is not an agent's (no benchkite label).
        claim_on("ml", "pretender", None, &[]),
    ];
    let mut pretender = claims[3].clone();
    pretender.metadata.annotations = Some([(ANNOTATION_POOL.to_string(), "h100".to_string())].into());
    if let Some(s) = pretender.status.as_mut().and_then(|s| s.allocation.as_mut()).and_then(|a| a.devices.as_mut()) {
        s.results = Some(vec![
            serde_json::from_value(json!({"request": "gpus", "driver": NVIDIA_DRIVER, "pool": "n", "device": "gpu-3"}))
                .unwrap_or_else(|e| panic!("{e}")),
        ]);
    }
    mark_allocations(&mut st, claims[..3].iter().chain([&pretender]));
    let by = |n: &str| st.devices.iter().find(|d| d.name == n).expect(n).clone();
    assert_eq!(by("gpu-0").allocated_to.as_deref(), Some("ci/h100-n-0-gpus-x"));
    assert_eq!(by("gpu-0").agent_pool.as_deref(), Some("ci/h100"));
    assert_eq!(by("gpu-1").allocated_to.as_deref(), Some("ml/training"));
    assert_eq!(by("gpu-1").agent_pool, None);
    assert_eq!(by("gpu-3").allocated_to.as_deref(), Some("ml/pretender"));
    assert_eq!(by("gpu-3").agent_pool, None, "an annotation alone does not make a claim an agent's");
    let any = GpuRequirements::default();
    assert_eq!(foreign_held(&st, &any), 3, "gpu-1, gpu-2 and gpu-3: not the agent's gpu-0");
    assert_eq!(foreign_held(&st, &GpuRequirements { product: Some("B200".into()), min_memory: None }), 0);
    // Released: nothing held any more.
    mark_allocations(&mut st, []);
    assert!(st.devices.iter().all(|d| d.allocated_to.is_none() && d.agent_pool.is_none()));
    assert_eq!(foreign_held(&st, &any), 0);
}

#[test]
fn physical_gpus_count_mig_parents_and_shareable_gpus_once() {
    let mut shared = gpu(9, H100, "80Gi");
    shared["allowMultipleAllocations"] = json!(true);
    let mut mig_b = mig(1);
    mig_b["name"] = json!("gpu-1-mig-1g10gb-19-1");
    let mut mig_other = mig(2);
    mig_other["name"] = json!("gpu-2-mig-1g10gb-19-0");
    mig_other["attributes"]["parentUUID"] = json!({"string": "GPU-parent-2"});
    let devices = vec![gpu(0, H100, "80Gi"), mig(1), mig_b, mig_other, shared];
    let inv = node_inventory([&slice("n", NVIDIA_DRIVER, 1, 1, devices)], "n", NVIDIA_DRIVER).expect("inv");
    // gpu-0, gpu-9, and the parents GPU-parent (the two instances of mig(1) share it) and
    // GPU-parent-2.
    assert_eq!((inv.whole_count(), inv.physical_count()), (1, 4));
    let back = inventory_from_status(&node_status(&inv));
    assert_eq!(back.physical_count(), 4);
    assert_eq!(back.architecture(), inv.architecture(), "sm_90 survives the status");
}

#[test]
fn an_incomplete_republish_keeps_the_last_complete_inventory() {
    use k8s_openapi::jiff::Timestamp;
    use std::time::Duration;
    let t0 = Timestamp::from_second(1_800_000_000).unwrap_or_else(|e| panic!("{e}"));
    let full = node_status(
        &node_inventory(
            [&slice("n", NVIDIA_DRIVER, 1, 1, vec![gpu(0, H100, "80Gi"), gpu(1, H100, "80Gi")])],
            "n",
            NVIDIA_DRIVER,
        )
        .expect("inv"),
    );
    // Generation 2 announced in 2 slices, 1 seen so far.
    let partial = node_status(
        &node_inventory([&slice("n", NVIDIA_DRIVER, 2, 2, vec![gpu(0, H100, "80Gi")])], "n", NVIDIA_DRIVER)
            .expect("inv"),
    );
    assert!(!partial.complete);
    let grace = Duration::from_secs(60);
    let (kept, again) = settle(Some(full.clone()), Some(partial.clone()), t0, grace);
    let kept = kept.expect("kept");
    assert_eq!((kept.whole_gpus, kept.complete), (2, false), "the last complete one, marked");
    assert_eq!(again, Some(grace));
    // Complete again: the new one as it is.
    let (now, again) = settle(Some(kept.clone()), Some(full.clone()), t0, grace);
    assert_eq!(now.map(|d| (d.whole_gpus, d.complete, d.unsettled_since)), Some((2, true, None)));
    assert_eq!(again, None);
    // Never complete for the whole grace: what there is.
    let late = Timestamp::from_second(1_800_000_060).unwrap_or_else(|e| panic!("{e}"));
    let (now, _) = settle(Some(kept), Some(partial.clone()), late, grace);
    assert_eq!(now.map(|d| (d.whole_gpus, d.unsettled_since)), Some((1, None)));
    // Nothing before: nothing to keep.
    assert_eq!(settle(None, Some(partial.clone()), t0, grace).0, Some(partial));
    assert_eq!(settle(None, None, t0, grace), (None, None));
}

#[test]
fn a_partitionable_gpu_whose_mig_instance_is_held_elsewhere_is_no_slot() {
    let consumes = |set: &str| json!([{"counterSet": set, "counters": {"memory": {"value": "10Gi"}}}]);
    let mut whole0 = gpu(0, H100, "80Gi");
    whole0["consumesCounters"] = consumes("gpu-0-counters");
    let mut mig0 = mig(0);
    mig0["name"] = json!("gpu-0-mig-1g10gb-0");
    mig0["consumesCounters"] = consumes("gpu-0-counters");
    let mut whole1 = gpu(1, H100, "80Gi");
    whole1["consumesCounters"] = consumes("gpu-1-counters");
    let inv = node_inventory([&slice("n", NVIDIA_DRIVER, 1, 1, vec![whole0, mig0, whole1])], "n", NVIDIA_DRIVER)
        .expect("inv");
    let mut st = node_status(&inv);
    assert_eq!(
        st.devices.iter().find(|d| d.name == "gpu-0").map(|d| d.counter_sets.clone()),
        Some(vec!["gpu-0-counters".to_string()])
    );
    let any = GpuRequirements::default();
    assert_eq!(foreign_held(&st, &any), 0);
    // Another workload's claim gets the MIG instance cut from gpu-0: gpu-0 cannot be
    // allocated whole any more, gpu-1 can.
    mark_allocations(&mut st, [&claim_on("ml", "small", None, &[("n", "gpu-0-mig-1g10gb-0")])]);
    assert_eq!(foreign_held(&st, &any), 1);
    // An agent's own claim blocks nothing for its pool.
    mark_allocations(&mut st, [&claim_on("ci", "agent-gpus", Some("h100"), &[("n", "gpu-0-mig-1g10gb-0")])]);
    assert_eq!(foreign_held(&st, &any), 0);
}
