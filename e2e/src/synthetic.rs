//! The synthetic kernels of `tests/tasks/synthetic` (a harness whose timings the simulated
//! GPUs distort): their evaluation configs and a certification reference suite of them.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::repo_root;

/// The suite's kernels and their reference times (seconds).
pub const KERNELS: &[(&str, f64)] = &[("k_fast", 1.0e-3), ("k_mid_b", 2.0e-3), ("k_mid_a", 2.1e-3), ("k_slow", 1.0e-2)];

pub fn task(rel: &str) -> Result<String> {
    let p = repo_root().join("tests/tasks/synthetic").join(rel);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// The evaluation config of one kernel (a kernelbot config, test and benchmark of size 1).
pub fn config(kernel: &str) -> Result<Value> {
    Ok(json!({
        "lang": "py", "main": "eval.py",
        "sources": {"eval.py": task("eval.py")?, "reference.py": task("reference.py")?, "submission.py": task(&format!("{kernel}.py"))?},
        "tests": [{"size": 1}], "benchmarks": [{"size": 1}], "ranking_by": "mean",
        "test_timeout": 60, "benchmark_timeout": 60, "ranked_timeout": 60,
    }))
}

/// A reference suite (the `suite.yaml` of a certification ConfigMap) of [`KERNELS`], with
/// `k-mid-b` as the drift canary.
pub fn suite() -> Result<String> {
    let kernels: Vec<Value> = KERNELS
        .iter()
        .map(|(k, t)| Ok(json!({"name": k.replace('_', "-"), "referenceSeconds": t, "config": config(k)?})))
        .collect::<Result<_>>()?;
    Ok(json!({"kernels": kernels, "canary": "k-mid-b"}).to_string())
}

/// Starts a certifying pool `p` of `queue` on the test's nodes and the e2e kubelet that runs
/// its pods (the simulated GPUs of `node` by slot, with their `profiles`): the reference
/// suite ConfigMap `ref-suite`, the pool (`spec` adds to its spec; its `certification` gets
/// the suite), and the kubelet.
pub async fn certifying_pool(
    client: &kube::Client,
    ns: &crate::TestNamespace,
    sim: &buildkite_sim::SimHandle,
    node: &str,
    queue: &str,
    profiles: std::collections::BTreeMap<u32, buildkite_sim::gpu::GpuProfile>,
    spec: Value,
) -> Result<crate::kubelet::Kubelet> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::PostParams;
    let id = ns.name().to_string();
    let cms: kube::Api<ConfigMap> = ns.api();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "ref-suite"}, "data": {"suite.yaml": suite()?}}))?,
    )
    .await?;
    let mut full = json!({
        "queue": queue,
        "gpuNodeSelector": {"matchLabels": {crate::nodes::TEST_LABEL: id}},
        "agent": {
            "image": "example.invalid/agent:e2e",
            "tokenSecretRef": {"name": "agent-token", "key": "token"},
            "ephemeral": false,
            // The simulated GPU's factors reach the synthetic harness through the runner.
            "env": [{"name": "BENCHKITE_SANDBOX", "value": "off"}, {"name": "BENCHKITE_SANDBOX_ENV", "value": "SIMGPU_*"}],
        },
        "certification": {},
    });
    if let (Some(s), Some(e)) = (full.as_object_mut(), spec.as_object()) {
        s.extend(e.clone());
    }
    full["certification"]["suite"] = json!({"configMap": "ref-suite"});
    let pool: benchkite::api::AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool", "metadata": {"name": "p"}, "spec": full,
    }))?;
    ns.api::<benchkite::api::AgentPool>().create(&PostParams::default(), &pool).await?;
    let binary = crate::operator::binary()?;
    crate::kubelet::Kubelet::start(
        client.clone(),
        sim,
        crate::kubelet::KubeletOptions {
            namespace: id.clone(),
            label_selector: "benchkite.dev/pool=p".into(),
            binary_dir: binary.parent().context("binary dir")?.to_path_buf(),
            gpus: profiles.into_iter().map(|(slot, p)| ((node.to_string(), slot.to_string()), p)).collect(),
            scratch: crate::e2e_dir().join("kubelet").join(&id),
        },
    )
}
