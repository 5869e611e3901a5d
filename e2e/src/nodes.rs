//! Fake GPU nodes of one test: kwok nodes shaped like an 8×H100 machine (GPU Feature
//! Discovery labels, the GPU taint), labelled `benchkite.dev/e2e=<test>` so a pool selects
//! exactly them, and removed (with their GpuNode and the pods left on them) when dropped.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The label that ties a fake node to its test.
pub const TEST_LABEL: &str = "benchkite.dev/e2e";

/// A kwok H100 node `name` with `cpu`, `memory` and `gpus` (capacity == allocatable).
pub fn h100_node(name: &str, test: &str, cpu: &str, memory: &str, gpus: u32) -> Result<Node> {
    let resources = json!({"cpu": cpu, "memory": memory, "pods": "110", "nvidia.com/gpu": gpus.to_string()});
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                TEST_LABEL: test,
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": gpus.to_string(),
                "nvidia.com/gpu.memory": "81559",
                "nvidia.com/gpu.family": "hopper",
                "nvidia.com/gpu.compute.major": "9",
                "nvidia.com/gpu.compute.minor": "0",
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }))?)
}

/// Creates the node with its status: the API server keeps a Node's status on create, and the
/// status patch makes sure kwok's first heartbeat finds the capacity.
pub async fn create_h100_node(
    client: &Client,
    name: &str,
    test: &str,
    cpu: &str,
    memory: &str,
    gpus: u32,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = h100_node(name, test, cpu, memory, gpus)?;
    nodes.create(&PostParams::default(), &node).await.with_context(|| format!("creating node {name}"))?;
    let status = json!({"status": node.status});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}

/// Deletes a node and force-deletes the pods left bound to it, as the pod garbage collector
/// would (kwok cannot finish pods on a node that is gone). Its GpuNode stays (discovery marks
/// it `NodeFound=False`).
pub async fn delete_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    let pods: Api<Pod> = Api::all(client.clone());
    if let Ok(list) = pods.list(&ListParams::default().fields(&format!("spec.nodeName={name}"))).await {
        for p in list.items {
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
            let force = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            let _ = api.delete(&p.name_any(), &force).await;
        }
    }
}

/// A fake node of one test: deleted, with its GpuNode and the pods left on it, when dropped
/// (also when the test fails).
pub struct TestNode {
    pub name: String,
}

impl TestNode {
    pub async fn create(client: &Client, name: &str, test: &str, cpu: &str, memory: &str, gpus: u32) -> Result<Self> {
        create_h100_node(client, name, test, cpu, memory, gpus).await?;
        Ok(TestNode { name: name.to_string() })
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // The test's runtime cannot be blocked on here: clean up from a fresh one.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let Ok(c) = crate::client().await else { return };
                delete_node(&c, &name).await;
                // Its discovered GpuNode would otherwise wait out the discovery grace.
                let gpunodes: Api<benchkite::api::GpuNode> = Api::all(c);
                let _ = gpunodes.delete(&name, &DeleteParams::default()).await;
            })
        })
        .join();
    }
}

/// The agent token Secret (`agent-token`, key `token`) the test pools name. A placeholder:
/// kwok runs no agent, and the controller never reads it.
pub async fn create_agent_token(ns: &crate::TestNamespace) -> Result<()> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    let secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-token"},
        "stringData": {"token": "e2e-agent-token-not-a-secret"},
    }))?;
    secrets.create(&PostParams::default(), &secret).await.context("creating the agent token Secret")?;
    Ok(())
}
