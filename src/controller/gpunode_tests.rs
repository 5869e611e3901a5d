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
