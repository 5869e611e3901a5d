//! The local e2e cluster behaves like a real one: the fleet of fake GPU nodes
//! is Ready with its capacity, the scheduler places GPU pods and never
//! overcommits GPUs, kwok runs what is placed, and the controller-manager
//! garbage-collects dependents.
//!
//! Needs a running cluster (`make e2e-up`); fails, never skips, without one.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use benchkite_e2e::{TestNamespace, client, default_timeout, wait_for, wait_until};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
    ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::conditions;
use kube::{Api, Client, ResourceExt};

/// What a node of the default fleet must report.
struct FleetNode {
    name: &'static str,
    /// GPU resource and count; `None` for the CPU-only node.
    gpus: Option<(&'static str, &'static str)>,
    /// Product label and value.
    product: Option<(&'static str, &'static str)>,
}

const FLEET: &[FleetNode] = &[
    FleetNode {
        name: "gpu-h100-0",
        gpus: Some(("nvidia.com/gpu", "8")),
        product: Some(("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3")),
    },
    FleetNode {
        name: "gpu-h100-1",
        gpus: Some(("nvidia.com/gpu", "8")),
        product: Some(("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3")),
    },
    FleetNode {
        name: "gpu-l40s-0",
        gpus: Some(("nvidia.com/gpu", "2")),
        product: Some(("nvidia.com/gpu.product", "NVIDIA-L40S")),
    },
    FleetNode {
        name: "gpu-mi300-0",
        gpus: Some(("amd.com/gpu", "8")),
        product: Some(("amd.com/gpu.product-name", "AMD_Instinct_MI300X_OAM")),
    },
    FleetNode { name: "cpu-0", gpus: None, product: None },
];

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn quantity<'a>(map: Option<&'a BTreeMap<String, Quantity>>, key: &str) -> Option<&'a str> {
    map.and_then(|m| m.get(key)).map(|q| q.0.as_str())
}

#[tokio::test]
async fn fleet_nodes_are_ready_and_report_their_gpus() -> Result<()> {
    let client = client().await?;
    let nodes: Api<Node> = Api::all(client);
    for &FleetNode { name, gpus, product } in FLEET {
        let node = nodes.get(name).await.with_context(|| format!("fleet node {name}"))?;
        ensure!(is_ready(&node), "node {name} is not Ready: {:?}", node.status);
        let status = node.status.as_ref().context("node without status")?;
        for (what, map) in [("capacity", status.capacity.as_ref()), ("allocatable", status.allocatable.as_ref())] {
            ensure!(quantity(map, "pods") == Some("110"), "{name} {what} pods: {map:?}");
            if let Some((gpu, count)) = gpus {
                ensure!(quantity(map, gpu) == Some(count), "{name} {what} {gpu} should be {count}: {map:?}");
            } else {
                ensure!(
                    quantity(map, "nvidia.com/gpu").is_none() && quantity(map, "amd.com/gpu").is_none(),
                    "{name} should have no GPUs: {map:?}"
                );
            }
        }
        let labels = node.labels();
        ensure!(labels.get("type").map(String::as_str) == Some("kwok"), "{name} labels: {labels:?}");
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        ensure!(
            !taints.iter().any(|t| t.key.starts_with("kwok.x-k8s.io")),
            "{name} must not carry kwok's own taint: {taints:?}"
        );
        if let (Some((gpu, _)), Some((label, value))) = (gpus, product) {
            ensure!(
                labels.get(label).map(String::as_str) == Some(value),
                "{name} label {label} should be {value}: {labels:?}"
            );
            ensure!(
                taints
                    .iter()
                    .any(|t| t.key == gpu && t.value.as_deref() == Some("present") && t.effect == "NoSchedule"),
                "{name} should carry the {gpu}=present:NoSchedule taint: {taints:?}"
            );
        }
    }
    let h100 = nodes.get("gpu-h100-0").await?;
    let labels = h100.labels();
    for (key, value) in [
        ("nvidia.com/gpu.count", "8"),
        ("nvidia.com/gpu.memory", "81559"),
        ("nvidia.com/gpu.family", "hopper"),
        ("nvidia.com/gpu.compute.major", "9"),
        ("nvidia.com/gpu.compute.minor", "0"),
        ("nvidia.com/cuda.driver.major", "570"),
    ] {
        ensure!(
            labels.get(key).map(String::as_str) == Some(value),
            "gpu-h100-0 label {key} should be {value}: {labels:?}"
        );
    }
    Ok(())
}

/// A pod asking for `gpus` NVIDIA GPUs that tolerates the GPU taint (and the
/// extra `taint` key, if any), optionally pinned to `node` by required node
/// affinity.
fn gpu_pod(name: &str, gpus: u32, node: Option<&str>, taint: Option<&str>) -> Pod {
    let mut tolerations = vec![Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }];
    if let Some(key) = taint {
        tolerations.push(Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    let affinity = node.map(|node| k8s_openapi::api::core::v1::Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..k8s_openapi::api::core::v1::Affinity::default()
    });
    Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "agent".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                resources: Some(ResourceRequirements {
                    limits: Some(
                        [
                            ("nvidia.com/gpu".to_string(), Quantity(gpus.to_string())),
                            ("cpu".to_string(), Quantity("1".into())),
                            ("memory".to_string(), Quantity("1Gi".into())),
                        ]
                        .into(),
                    ),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            tolerations: Some(tolerations),
            affinity,
            termination_grace_period_seconds: Some(0),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[tokio::test]
async fn gpu_pod_is_scheduled_onto_a_gpu_node_and_runs() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "gpu-pod").await?;
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &gpu_pod("one-gpu", 1, None, None)).await.context("creating the GPU pod")?;
    let pod =
        wait_for(&pods, "one-gpu", default_timeout(), conditions::is_pod_running()).await?.context("pod vanished")?;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).context("running pod without a node")?;
    let node = Api::<Node>::all(client.clone()).get(&node_name).await?;
    let gpus = quantity(node.status.as_ref().and_then(|s| s.allocatable.as_ref()), "nvidia.com/gpu");
    ensure!(gpus.is_some_and(|g| g != "0"), "pod ran on {node_name}, which has no NVIDIA GPUs ({gpus:?})");
    ns.delete().await
}

/// A fake 8-GPU H100 node that only this test's pods tolerate, so GPU pods of
/// tests running at the same time cannot change the count. Deleted on drop.
struct TestNode {
    client: Client,
    name: String,
    taint: String,
}

impl TestNode {
    async fn create(client: &Client, ns: &str) -> Result<Self> {
        let name = format!("{ns}-h100");
        let taint = format!("e2e.benchkite.dev/{ns}");
        let capacity: BTreeMap<String, Quantity> =
            [("cpu", "128"), ("memory", "1Ti"), ("pods", "110"), ("nvidia.com/gpu", "8")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.into())))
                .collect();
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: Some([("kwok.x-k8s.io/node".to_string(), "fake".to_string())].into()),
                labels: Some(
                    [
                        ("type", "kwok"),
                        ("kubernetes.io/hostname", name.as_str()),
                        ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
                        ("nvidia.com/gpu.count", "8"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(vec![
                    Taint {
                        key: "nvidia.com/gpu".into(),
                        value: Some("present".into()),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    },
                    Taint {
                        key: taint.clone(),
                        value: Some("only".into()),
                        effect: "NoSchedule".into(),
                        ..Taint::default()
                    },
                ]),
                ..k8s_openapi::api::core::v1::NodeSpec::default()
            }),
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                capacity: Some(capacity.clone()),
                allocatable: Some(capacity),
                ..k8s_openapi::api::core::v1::NodeStatus::default()
            }),
        };
        let nodes: Api<Node> = Api::all(client.clone());
        nodes.create(&PostParams::default(), &node).await.with_context(|| format!("creating node {name}"))?;
        let this = Self { client: client.clone(), name, taint };
        let ready = wait_for(&nodes, &this.name, default_timeout(), |n: Option<&Node>| {
            n.is_some_and(|n| {
                is_ready(n)
                    && !n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|ts| ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/")))
            })
        })
        .await?
        .context("test node vanished")?;
        let gpus = quantity(ready.status.as_ref().and_then(|s| s.allocatable.as_ref()), "nvidia.com/gpu");
        ensure!(gpus == Some("8"), "kwok changed the test node's GPUs: {gpus:?}");
        Ok(this)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        // Best effort, from a fresh runtime (see TestNamespace's Drop).
        let _ = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let client = match benchkite_e2e::client().await {
                    Ok(c) => c,
                    Err(_) => client,
                };
                Api::<Node>::all(client).delete(&name, &DeleteParams::default()).await?;
                Ok(())
            })
        })
        .join();
    }
}

#[tokio::test]
async fn ninth_gpu_pod_on_an_eight_gpu_node_is_unschedulable() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "gpu-capacity").await?;
    let node = TestNode::create(&client, ns.name()).await?;
    let pods: Api<Pod> = ns.api();
    for i in 0..9 {
        pods.create(&PostParams::default(), &gpu_pod(&format!("gpu-{i}"), 1, Some(&node.name), Some(&node.taint)))
            .await
            .with_context(|| format!("creating pod gpu-{i}"))?;
    }

    let summary = |list: &[Pod]| -> (usize, Vec<String>) {
        let running =
            list.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        let unschedulable = list
            .iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
                    && p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                    })
            })
            .map(|p| p.name_any())
            .collect();
        (running, unschedulable)
    };

    let (running, unschedulable) = wait_until("8 pods Running and 1 Unschedulable", default_timeout(), || async {
        let list = pods.list(&ListParams::default()).await?.items;
        let (running, unschedulable) = summary(&list);
        Ok((running == 8 && unschedulable.len() == 1).then_some((running, unschedulable)))
    })
    .await?;
    ensure!(running == 8 && unschedulable.len() == 1);

    // It stays that way: nothing overcommits the node later.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let list = pods.list(&ListParams::default()).await?.items;
    let (running_after, unschedulable_after) = summary(&list);
    ensure!(
        running_after == 8 && unschedulable_after == unschedulable,
        "after 2s: {running_after} running, unschedulable {unschedulable_after:?}"
    );
    for pod in &list {
        let on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        ensure!(on.is_none() || on == Some(node.name.as_str()), "pod {} landed on {on:?}", pod.name_any());
    }

    // Pods go before their node: kwok only finalizes pods of nodes it still
    // manages; pods of a deleted node stay Terminating until the pod GC
    // controller removes them (40 s or more later).
    pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    wait_until("the test pods to be gone", default_timeout(), || async {
        Ok(pods.list(&ListParams::default()).await?.items.is_empty().then_some(()))
    })
    .await?;
    drop(node);
    ns.delete().await
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "gc").await?;
    let config_maps: Api<ConfigMap> = ns.api();
    let named = |name: &str| ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        ..ConfigMap::default()
    };
    let owner = config_maps.create(&PostParams::default(), &named("owner")).await.context("creating the owner")?;
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.name_any(),
        uid: owner.uid().context("owner without uid")?,
        ..OwnerReference::default()
    };
    let mut dependents = Vec::new();
    for name in ["dependent-0", "dependent-1"] {
        let mut cm = named(name);
        cm.metadata.owner_references = Some(vec![owner_ref.clone()]);
        let created =
            config_maps.create(&PostParams::default(), &cm).await.with_context(|| format!("creating {name}"))?;
        dependents.push((name, created.uid().context("dependent without uid")?));
    }
    // An unowned ConfigMap must survive.
    config_maps.create(&PostParams::default(), &named("bystander")).await?;

    config_maps.delete("owner", &DeleteParams::background()).await.context("deleting the owner")?;
    for (name, uid) in &dependents {
        wait_for(&config_maps, name, default_timeout(), conditions::is_deleted(uid))
            .await
            .with_context(|| format!("{name} was not garbage-collected"))?;
    }
    ensure!(config_maps.get_opt("bystander").await?.is_some(), "the unowned ConfigMap was deleted too");
    ns.delete().await
}
