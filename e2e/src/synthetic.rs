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
