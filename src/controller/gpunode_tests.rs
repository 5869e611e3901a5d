//! `compute_status` from caches filled by hand: node health, the share's stability and
//! pods blocked by agents, as the GpuNode status shows them.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::json;

use super::*;
use crate::api::gpunode::{GpuNodeSpec, Reserved};
use crate::api::{AgentPool, GpuNode};
use crate::controller::{Config, CreateExpectations, SlotFailures, queues};
use crate::events::{Recorder, Reporter};
use crate::fleet::cached_pod::CachedPod;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn at(secs_before_now: i64) -> String {
    Timestamp::from_second(1_800_000_000 - secs_before_now).unwrap().to_string()
}

/// A client that never reaches a server: `compute_status` reads caches only.
fn offline_client() -> kube::Client {
    let svc = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
        Err::<http::Response<kube::client::Body>, std::io::Error>(std::io::Error::other("offline test client"))
    });
    kube::Client::new(svc, "default")
}

/// A 32-core, 128 Gi node with 4 H100s; `ready` is (status, seconds since the transition).
fn node(ready: (&str, i64), cordoned: bool) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": "gpu-1", "creationTimestamp": at(100_000), "labels": {
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "4",
        }},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"cpu": "32", "memory": "128Gi", "nvidia.com/gpu": "4"},
            "conditions": [{"type": "Ready", "status": ready.0, "lastTransitionTime": at(ready.1)}],
        },
    }))
    .unwrap()
}

fn foreign_pod(name: &str, cpu: &str, memory: &str) -> CachedPod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "mon"},
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        "status": {"phase": "Running"},
    }))
    .unwrap()
}

fn context(nodes: Vec<Node>, pods: Vec<CachedPod>) -> Context {
    let (node_store, mut nw) = reflector::store::<Node>();
    let (pod_store, mut pw) = reflector::store::<CachedPod>();
    let (gpunodes, _) = reflector::store::<GpuNode>();
    let (pools, _) = reflector::store::<AgentPool>();
    for n in nodes {
        nw.apply_watcher_event(&watcher::Event::Apply(n));
    }
    for p in pods {
        pw.apply_watcher_event(&watcher::Event::Apply(p));
    }
    let client = offline_client();
    Context {
        client: client.clone(),
        config: Config::default(),
        nodes: node_store,
        pods: pod_store,
        gpunodes,
        pools,
        recorder: Recorder::new(client, Reporter { controller: "test".into(), instance: None }),
        failures: Mutex::new(SlotFailures::default()),
        expected: Mutex::new(CreateExpectations::default()),
        buildkite: None,
        queues: queues::Queues::default(),
        job_queues: Mutex::new(None),
        dra: None,
    }
}

fn gpunode(generation: i64) -> GpuNode {
    let mut gn = GpuNode::new("gpu-1", GpuNodeSpec::default());
    gn.metadata.generation = Some(generation);
    gn
}

/// The GpuNode as the previous reconcile left it.
fn after(mut gn: GpuNode, computed: &Computed) -> GpuNode {
    gn.status = Some(computed.status.clone());
    gn
}

fn ready(c: &Computed) -> (String, String) {
    let r = find(&c.status.conditions, cond::READY).unwrap();
    (r.status.clone(), r.reason.clone())
}

fn share(c: &Computed) -> Option<(i64, String)> {
    c.status.per_gpu_share.as_ref().map(|s| (s.cpu, s.memory.clone()))
}

#[tokio::test]
async fn a_node_not_ready_within_the_toleration_keeps_its_agents() {
    // Not Ready (or unreachable) for 60 s of the default 300: tolerated, looked at again
    // when the toleration ends.
    for status in ["False", "Unknown"] {
        let ctx = context(vec![node((status, 60), false)], vec![]);
        let c = compute_status(&gpunode(1), &ctx, now());
        assert_eq!(ready(&c), ("False".into(), "NodeNotReadyTolerated".into()), "{status}");
        assert_eq!(c.recheck_in, Some(Duration::from_secs(240)));
        let msg = &find(&c.status.conditions, cond::READY).unwrap().message;
        assert!(msg.contains(&at(60)) && msg.contains(&at(-240)), "since and until: {msg}");
        assert!(share(&c).is_some(), "the share stays");
    }
    // Past the toleration: drained.
    let ctx = context(vec![node(("False", 301), false)], vec![]);
    let c = compute_status(&gpunode(1), &ctx, now());
    assert_eq!(ready(&c), ("False".into(), "NodeNotReady".into()));
    assert_eq!(c.recheck_in, None);
    // A shorter toleration from the flag.
    let mut ctx = context(vec![node(("False", 60), false)], vec![]);
    ctx.config.node_not_ready_toleration = Duration::from_secs(30);
    assert_eq!(ready(&compute_status(&gpunode(1), &ctx, now())).1, "NodeNotReady");
    // Cordoned while tolerated: the admin's cordon is what the pool acts on.
    let ctx = context(vec![node(("Unknown", 60), true)], vec![]);
    assert_eq!(ready(&compute_status(&gpunode(1), &ctx, now())).1, "NodeCordoned");
    let ctx = context(vec![node(("True", 60), true)], vec![]);
    assert_eq!(ready(&compute_status(&gpunode(1), &ctx, now())).1, "NodeCordoned");
    let ctx = context(vec![node(("True", 60), false)], vec![]);
    let c = compute_status(&gpunode(1), &ctx, now());
    assert_eq!(ready(&c), ("True".into(), "Ready".into()));
    assert_eq!(c.recheck_in, None);
}

#[tokio::test]
async fn the_share_is_sized_once_and_kept_until_it_no_longer_fits_or_the_spec_changes() {
    // First sizing: (32 − 0.25) / 4 → 7 cores, (128 Gi − 512 Mi) / 4 → 31 Gi.
    let ctx = context(vec![node(("True", 0), false)], vec![]);
    let first = compute_status(&gpunode(1), &ctx, now());
    assert_eq!(share(&first), Some((7, "31744Mi".into())));
    let basis = first.status.share_basis.clone().unwrap();
    assert_eq!((basis.generation, basis.gpus, basis.headroom.cpu.as_str()), (Some(1), 4, "250m"));
    let gn = after(gpunode(1), &first);

    // A DaemonSet of 2 cores and 2 Gi fits in the slack: kept. So does a pod that holds
    // nothing yet (bound by name, not admitted).
    let mut pending = foreign_pod("static", "20", "64Gi");
    pending.phase = Some("Pending".into());
    let ctx = context(vec![node(("True", 0), false)], vec![foreign_pod("exporter", "2", "2Gi"), pending]);
    let kept = compute_status(&gn, &ctx, now());
    assert_eq!(share(&kept), share(&first));
    assert_eq!(kept.status.share_basis, first.status.share_basis, "the basis stays that of the sizing");

    // The same pods and a spec change (generation 2, 4 cores reserved): sized afresh,
    // (32 − 2 − 4 − 0.25) / 4 → 6 cores.
    let mut changed = gn.clone();
    changed.metadata.generation = Some(2);
    changed.spec.reserved = Some(Reserved { cpu: Some(Quantity("4".into())), memory: None });
    let resized = compute_status(&changed, &ctx, now());
    assert_eq!(share(&resized), Some((6, "31744Mi".into())));
    assert_eq!(resized.status.share_basis.as_ref().and_then(|b| b.generation), Some(2));

    // Other pods take more than the slack (5 cores): the agents would overcommit, shrink.
    let ctx = context(vec![node(("True", 0), false)], vec![foreign_pod("big", "5", "1Gi")]);
    let shrunk = compute_status(&gn, &ctx, now());
    assert_eq!(share(&shrunk), Some((6, "31744Mi".into())));

    // A headroom change re-sizes like a spec change.
    let mut ctx = context(vec![node(("True", 0), false)], vec![]);
    ctx.config.node_headroom = Resources { cpu_millis: 4000, memory_bytes: 4 * 1024 * MIB };
    assert_eq!(share(&compute_status(&gn, &ctx, now())), Some((7, "31744Mi".into())), "4 cores: still 7 each");
    ctx.config.node_headroom = Resources { cpu_millis: 4001, memory_bytes: 4 * 1024 * MIB };
    assert_eq!(share(&compute_status(&gn, &ctx, now())), Some((6, "31744Mi".into())));
}

#[tokio::test]
async fn a_share_from_before_bases_is_adopted_and_survives_a_missing_node() {
    // Sized by an older version (no headroom, MiB): kept while it fits, its basis recorded.
    let mut gn = gpunode(3);
    gn.status = Some(GpuNodeStatus {
        per_gpu_share: Some(ResourceShare { cpu: 8, memory: "32768Mi".into() }),
        ..Default::default()
    });
    let ctx = context(vec![node(("True", 0), false)], vec![]);
    let c = compute_status(&gn, &ctx, now());
    assert_eq!(share(&c), Some((8, "32768Mi".into())));
    assert_eq!(c.status.share_basis.as_ref().and_then(|b| b.generation), Some(3));

    // The Node is gone (the cache has listed it away): NodeNotFound, the share is kept.
    let ctx = context(vec![], vec![]);
    let gone = compute_status(&after(gn, &c), &ctx, now());
    assert_eq!(ready(&gone).1, "NodeNotFound");
    assert_eq!(share(&gone), Some((8, "32768Mi".into())));
    assert_eq!(gone.status.share_basis, c.status.share_basis);
}

#[tokio::test]
async fn pods_blocked_by_agents_are_named_in_a_condition() {
    let daemon: CachedPod = serde_json::from_value(json!({
        "metadata": {"name": "node-exporter-x", "namespace": "mon"},
        "spec": {"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]}]}}}},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."}]},
    }))
    .unwrap();
    let ctx = context(vec![node(("True", 0), false)], vec![daemon]);
    let c = compute_status(&gpunode(1), &ctx, now());
    let blocked = find(&c.status.conditions, cond::PODS_BLOCKED).unwrap();
    assert_eq!((blocked.status.as_str(), blocked.reason.as_str()), ("True", "AgentsHoldResources"));
    assert!(blocked.message.contains("mon/node-exporter-x (Insufficient cpu)"), "{}", blocked.message);
    assert_eq!(ready(&c).1, "Ready", "blocked pods do not make the node unready");

    // One Warning Event when the condition turns True, none while it stays True (also after a
    // restart: the previous status is the object's).
    assert_eq!(newly_blocked(None, &c.status), Some(blocked.message.clone()));
    assert_eq!(newly_blocked(Some(&c.status), &c.status), None);

    let ctx = context(vec![node(("True", 0), false)], vec![]);
    let clear = compute_status(&gpunode(1), &ctx, now());
    let none = find(&clear.status.conditions, cond::PODS_BLOCKED).unwrap();
    assert_eq!((none.status.as_str(), none.reason.as_str()), ("False", "NoPodsBlocked"));
    assert_eq!(newly_blocked(Some(&c.status), &clear.status), None);
    assert_eq!(newly_blocked(Some(&clear.status), &c.status), Some(blocked.message.clone()));
}

/// NVIDIA-shaped slices for `gpu-1`: `whole` H100s (gpu-0…), a MIG instance and a shareable GPU.
fn dra_context(nodes: Vec<Node>, whole: u32) -> Context {
    let mut devices: Vec<serde_json::Value> = (0..whole)
        .map(|i| {
            json!({"name": format!("gpu-{i}"), "attributes": {
                "type": {"string": "gpu"}, "uuid": {"string": format!("GPU-{i}")},
                "productName": {"string": "NVIDIA H100 80GB HBM3"},
                "cudaComputeCapability": {"version": "9.0.0"}, "driverVersion": {"version": "580.95.5"}},
              "capacity": {"memory": {"value": "80Gi"}}})
        })
        .collect();
    devices.push(json!({"name": "gpu-7-mig-1g10gb-0", "attributes": {"type": {"string": "mig"}}}));
    devices.push(json!({"name": "gpu-9", "allowMultipleAllocations": true,
        "attributes": {"type": {"string": "gpu"}, "productName": {"string": "NVIDIA H100 80GB HBM3"}}}));
    let slice: k8s_openapi::api::resource::v1::ResourceSlice = serde_json::from_value(json!({
        "metadata": {"name": "gpu-1-gpu.nvidia.com"},
        "spec": {"driver": "gpu.nvidia.com", "nodeName": "gpu-1",
                 "pool": {"name": "gpu-1", "generation": 1, "resourceSliceCount": 1}, "devices": devices},
    }))
    .unwrap();
    let (slices, mut sw) = reflector::store();
    sw.apply_watcher_event(&watcher::Event::Apply(slice));
    let (claims, _) = reflector::store();
    let mut ctx = context(nodes, vec![]);
    ctx.dra = Some(crate::controller::DraCaches::new("gpu.nvidia.com".into(), slices, claims));
    ctx
}

/// The node without the device plugin's resource or its labels: GPUs through DRA only.
fn dra_only_node() -> Node {
    let mut n = node(("True", 0), false);
    n.metadata.labels = None;
    if let Some(a) = n.status.as_mut().and_then(|s| s.allocatable.as_mut()) {
        a.remove("nvidia.com/gpu");
    }
    n
}

#[tokio::test]
async fn a_node_served_by_dra_only_is_inventoried_from_its_slices() {
    let ctx = dra_context(vec![dra_only_node()], 4);
    let c = compute_status(&gpunode(1), &ctx, now());
    assert_eq!(ready(&c), ("True".into(), "Ready".into()));
    let st = &c.status;
    assert_eq!(st.offered_through.as_deref(), Some("DynamicResourceAllocation"));
    assert_eq!((st.gpu_count, st.resource_name.as_deref()), (4, None), "whole GPUs: not the MIG or the shared one");
    assert_eq!(st.product.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!((st.gpu_type.as_deref(), st.architecture.as_deref()), (Some("h100"), Some("sm_90")));
    assert_eq!((st.gpu_memory_mib, st.driver_version.as_deref()), (Some(81920), Some("580.95.5")));
    let dra = st.dra.as_ref().expect("dra inventory");
    assert_eq!((dra.whole_gpus, dra.devices.len(), dra.complete), (4, 6, true));
    // Every physical GPU gets a slice: the 4 whole ones, the shareable one and the one the
    // MIG instance is cut from (their workloads need CPU and memory too).
    assert_eq!(share(&c), Some((5, "21504Mi".into())), "the share divides by the 6 physical GPUs");
    let msg = &find(&st.conditions, cond::READY).unwrap().message;
    assert!(msg.contains("DRA driver gpu.nvidia.com"), "{msg}");
    assert_eq!(offered_twice(None, st), None);
    // Without --dra-driver the same node offers nothing benchkite can use.
    let plain = context(vec![dra_only_node()], vec![]);
    let c = compute_status(&gpunode(1), &plain, now());
    assert_eq!(ready(&c).1, "NoGpuResource");
    assert!(c.status.dra.is_none() && c.status.offered_through.is_none());
}

#[tokio::test]
async fn a_node_served_both_ways_counts_its_gpus_once_and_says_so_once() {
    // 4 nvidia.com/gpu and 4 whole GPUs in the slices: the same GPUs.
    let ctx = dra_context(vec![node(("True", 0), false)], 4);
    let c = compute_status(&gpunode(1), &ctx, now());
    assert_eq!(ready(&c), ("True".into(), "Ready".into()));
    assert_eq!(c.status.offered_through.as_deref(), Some("Both"));
    assert_eq!(c.status.gpu_count, 4, "never 8");
    assert_eq!(c.status.resource_name.as_deref(), Some("nvidia.com/gpu"));
    assert_eq!(c.status.plugin_gpus, Some(4), "what device-plugin pools use");
    assert_eq!(share(&c), Some((5, "21504Mi".into())));
    let warning = offered_twice(None, &c.status).expect("a Warning when it starts");
    assert!(
        warning.contains("nvidia.com/gpu")
            && warning.contains("gpu.nvidia.com")
            && warning.contains("counted once (4)"),
        "{warning}"
    );
    assert_eq!(offered_twice(Some(&c.status), &c.status), None, "not again while it lasts");
    // The driver restarting (fewer devices seen for a while) does not shrink the count.
    let ctx = dra_context(vec![node(("True", 0), false)], 2);
    assert_eq!(compute_status(&gpunode(1), &ctx, now()).status.gpu_count, 4);
    // The device plugin only: as before, no DRA fields.
    let ctx = context(vec![node(("True", 0), false)], vec![]);
    let c = compute_status(&gpunode(1), &ctx, now());
    assert_eq!(c.status.offered_through.as_deref(), Some("DevicePlugin"));
    assert!(c.status.dra.is_none());
}

#[tokio::test]
async fn slices_that_go_missing_keep_the_last_inventory_for_the_toleration() {
    let ctx = dra_context(vec![dra_only_node()], 4);
    let first = compute_status(&gpunode(1), &ctx, now());
    assert_eq!(first.status.dra.as_ref().map(|d| d.unsettled_since.clone()), Some(None));
    let gn = after(gpunode(1), &first);
    // The kubelet restarts and deletes the node's slices.
    let (slices, _) = reflector::store();
    let (claims, _) = reflector::store();
    let mut gone = context(vec![dra_only_node()], vec![]);
    gone.dra = Some(crate::controller::DraCaches::new("gpu.nvidia.com".into(), slices, claims));
    let kept = compute_status(&gn, &gone, now());
    let dra = kept.status.dra.clone().expect("the last inventory is kept");
    assert_eq!((dra.whole_gpus, dra.complete), (4, false));
    assert_eq!(dra.unsettled_since.as_deref(), Some(now().to_string().as_str()));
    assert_eq!(ready(&kept), ("True".into(), "Ready".into()), "the node's GPUs are still there");
    assert_eq!(kept.status.gpu_count, 4);
    assert_eq!(kept.recheck_in, Some(Duration::from_secs(300)), "looked at again when the toleration ends");
    // Still gone 299 s later: kept, since the first moment.
    let later = Timestamp::from_second(1_800_000_299).unwrap();
    let still = compute_status(&after(gpunode(1), &kept), &gone, later);
    assert_eq!(still.status.dra.as_ref().and_then(|d| d.unsettled_since.as_deref()), Some(now().to_string().as_str()));
    assert_eq!(still.recheck_in, Some(Duration::from_secs(1)));
    // Gone for the whole toleration: the node offers nothing any more.
    let end = Timestamp::from_second(1_800_000_300).unwrap();
    let dropped = compute_status(&after(gpunode(1), &still), &gone, end);
    assert!(dropped.status.dra.is_none());
    assert_eq!(ready(&dropped).1, "NoGpuResource");
    // Back within the toleration: settled again at once.
    let back = compute_status(&after(gpunode(1), &still), &ctx, later);
    assert_eq!(back.status.dra.as_ref().map(|d| (d.complete, d.unsettled_since.clone())), Some((true, None)));
}
