//! The user-facing examples in `manifests/examples/` work as documented:
//!
//! - the real API server (with benchkite's CRDs and their CEL rules) accepts every object,
//!   with strict field validation and without pruning anything (no misspelled field);
//! - every KernelJob really evaluates with `benchkite run` on a machine without a GPU (its
//!   payload built exactly as the controller builds it, `sourcesFrom` resolved from the
//!   ConfigMap in the same file); profile mode ends with a clear infrastructure error when
//!   no profiler is installed;
//! - the inline copies of the task stay identical to `tests/tasks/vectoradd`.
//!
//! Needs a running cluster (`make e2e-up`) for the first test; fails, never skips, without one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::Mode;
use benchkite::contract;
use benchkite::kerneljob::submission::eval_config;
use benchkite_e2e::operator::{binary, install_crds};
use benchkite_e2e::{TestNamespace, client, repo_root};
use kube::Api;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use serde_json::Value;

/// One YAML document of an example file.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

fn examples_dir() -> PathBuf {
    repo_root().join("manifests").join("examples")
}

/// Every document of every `*.yaml` in `manifests/examples/`, in file order.
fn example_docs() -> Result<Vec<Doc>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .with_context(|| format!("reading {}", examples_dir().display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(de).with_context(|| format!("parsing {}", path.display()))?;
            if value.is_null() {
                continue;
            }
            ensure!(
                value["metadata"]["namespace"].is_null(),
                "{file}: examples name no namespace (kubectl -n picks it)"
            );
            docs.push(Doc { file: file.clone(), value });
        }
    }
    Ok(docs)
}

/// Every kind the examples are meant to cover is there.
#[test]
fn examples_cover_every_kind_and_mode() -> Result<()> {
    let docs = example_docs()?;
    for kind in ["GpuNode", "AgentPool", "KernelJob", "ConfigMap"] {
        ensure!(docs.iter().any(|d| d.kind() == kind), "no {kind} among the examples");
    }
    let modes: Vec<Mode> = kernel_jobs(&docs)?.iter().map(|(_, j)| j.spec.mode).collect();
    for mode in [Mode::Test, Mode::Benchmark, Mode::Leaderboard, Mode::Profile, Mode::Private] {
        ensure!(modes.contains(&mode), "no KernelJob example in mode {mode:?}");
    }
    ensure!(
        kernel_jobs(&docs)?.iter().any(|(_, j)| j.spec.sources_from.iter().any(|s| s.config_map.is_some())),
        "no KernelJob example with sourcesFrom a ConfigMap"
    );
    Ok(())
}

fn kernel_jobs(docs: &[Doc]) -> Result<Vec<(&Doc, KernelJob)>> {
    docs.iter()
        .filter(|d| d.kind() == "KernelJob")
        .map(|d| {
            let job: KernelJob = serde_json::from_value(d.value.clone())
                .with_context(|| format!("{}: KernelJob {} does not match the Rust type", d.file, d.name()))?;
            Ok((d, job))
        })
        .collect()
}

/// Whether every leaf of `sent` is in `got` with the same value (the server may add
/// defaults, but must not drop or change anything: a dropped field was pruned).
fn contained(sent: &Value, got: &Value, path: &str) -> Result<()> {
    match (sent, got) {
        (Value::Object(s), Value::Object(g)) => {
            for (k, v) in s {
                let Some(gv) = g.get(k) else { bail!("{path}.{k} was dropped by the API server (unknown field?)") };
                contained(v, gv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(s), Value::Array(g)) => {
            ensure!(s.len() == g.len(), "{path}: {} items sent, {} stored", s.len(), g.len());
            for (i, (sv, gv)) in s.iter().zip(g).enumerate() {
                contained(sv, gv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => {
            ensure!(sent == got, "{path}: sent {sent}, the API server stored {got}");
            Ok(())
        }
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "examples").await?;
    let docs = example_docs()?;
    ensure!(!docs.is_empty(), "no examples in {}", examples_dir().display());
    // Like `kubectl apply --server-side --dry-run=server --validate=strict`.
    let params = PatchParams::apply("benchkite-examples").dry_run().validation_strict();
    for doc in &docs {
        let (group, version) = match doc.value["apiVersion"].as_str().unwrap_or_default().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), doc.value["apiVersion"].as_str().unwrap_or_default().to_string()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, doc.kind());
        let (resource, caps) =
            pinned_kind(&client, &gvk).await.with_context(|| format!("{}: discovering {}", doc.file, doc.kind()))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(client.clone(), ns.name(), &resource),
        };
        let stored = api
            .patch(doc.name(), &params, &Patch::Apply(&doc.value))
            .await
            .with_context(|| format!("{}: the API server refused {} {}", doc.file, doc.kind(), doc.name()))?;
        let stored = serde_json::to_value(&stored)?;
        for field in ["spec", "data"] {
            if let Some(sent) = doc.value.get(field) {
                contained(sent, &stored[field], &format!("{}: {} {}: {field}", doc.file, doc.kind(), doc.name()))?;
            }
        }
    }
    ns.delete().await
}

fn task_file(name: &str) -> Result<String> {
    let path = repo_root().join("tests/tasks/vectoradd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The inline files and ConfigMap keys are exact copies of the task in tests/tasks/vectoradd.
#[test]
fn inline_sources_match_the_task() -> Result<()> {
    let docs = example_docs()?;
    let mut checked = 0;
    for doc in &docs {
        let files = match doc.kind() {
            "KernelJob" => &doc.value["spec"]["sources"],
            "ConfigMap" => &doc.value["data"],
            _ => continue,
        };
        for (name, content) in files.as_object().into_iter().flatten() {
            let original = if name == "submission.py" { "submission_ok.py" } else { name.as_str() };
            ensure!(
                content.as_str() == Some(task_file(original)?.as_str()),
                "{}: {name} differs from tests/tasks/vectoradd/{original}; copy it again",
                doc.file
            );
            checked += 1;
        }
    }
    ensure!(checked >= 10, "only {checked} files checked");
    Ok(())
}

/// The sources the controller would send: inline ∪ the named ConfigMaps (from the same file).
fn resolve_sources(doc: &Doc, job: &KernelJob, docs: &[Doc]) -> Result<BTreeMap<String, String>> {
    let mut sources = job.spec.sources.clone();
    for from in &job.spec.sources_from {
        let name = from.config_map.as_deref().context("the examples use ConfigMaps only")?;
        let cm = docs
            .iter()
            .find(|d| d.file == doc.file && d.kind() == "ConfigMap" && d.name() == name)
            .with_context(|| format!("{}: ConfigMap {name} is not in the same file", doc.file))?;
        for (k, v) in cm.value["data"].as_object().into_iter().flatten() {
            if from.keys.is_empty() || from.keys.contains(k) {
                sources.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
        }
    }
    Ok(sources)
}

/// Runs `benchkite run` on a payload in a fresh directory; returns result.json.
fn run_payload(payload: &str, dir: &Path) -> Result<(Option<i32>, Value)> {
    std::fs::create_dir_all(dir)?;
    let result_path = dir.join("result.json");
    let mut child = Command::new(binary()?)
        .args(["run", "--payload-file", "-", "--no-gpu-probe", "--report", "never", "--upload", "never", "--output"])
        .arg(&result_path)
        .env_remove("BUILDKITE_AGENT_ACCESS_TOKEN")
        .env_remove("BUILDKITE_SIM_META_DATA_FILE")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting benchkite run")?;
    child.stdin.take().context("stdin")?.write_all(payload.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = std::fs::read_to_string(&result_path).with_context(|| {
        format!(
            "benchkite run wrote no result.json (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code(), serde_json::from_str(&text).context("parsing result.json")?))
}

#[test]
fn every_kerneljob_example_runs_with_benchkite_run() -> Result<()> {
    let docs = example_docs()?;
    let scratch = repo_root().join("target").join("tmp").join(format!("examples-{}", std::process::id()));
    let jobs = kernel_jobs(&docs)?;
    ensure!(jobs.len() >= 5, "{} KernelJob examples", jobs.len());
    for (doc, job) in jobs {
        let what = format!("{}: KernelJob {}", doc.file, doc.name());
        let sources = resolve_sources(doc, &job, &docs)?;
        // The examples' pool selects H100 GpuNodes (architecture sm_90).
        let cfg = eval_config(&job.spec, sources, Some("sm_90")).with_context(|| format!("{what}: cases"))?;
        let payload = contract::encode_payload(&cfg).with_context(|| format!("{what}: payload"))?;
        let (code, result) = run_payload(&payload, &scratch.join(doc.name()))?;
        let runs = &result["runs"];
        match job.spec.mode {
            Mode::Profile => {
                // No profiler on this machine: a clear infrastructure failure, not a hang or a crash.
                if result["success"] == Value::Bool(false) {
                    let error = result["error"].as_str().unwrap_or_default();
                    ensure!(code == Some(1), "{what}: exit {code:?} on an infrastructure failure");
                    ensure!(
                        ["nsys", "ncu", "profiler"].iter().any(|p| error.contains(p)),
                        "{what}: the error names the missing profiler: {error:?}"
                    );
                } else {
                    ensure!(runs.get("profile.0").is_some(), "{what}: a profiler ran but no profile.0: {runs}");
                }
            }
            mode => {
                ensure!(code == Some(0), "{what}: exit {code:?}: {}", result["error"]);
                ensure!(result["success"] == Value::Bool(true), "{what}: {}", result["error"]);
                let expected: &[&str] = match mode {
                    Mode::Test => &["test"],
                    Mode::Benchmark => &["benchmark"],
                    _ => &["test", "benchmark", "leaderboard"],
                };
                for run in expected {
                    let r = &runs[*run]["run"];
                    ensure!(r["success"] == Value::Bool(true), "{what}: run {run} failed: {r}");
                    ensure!(r["passed"] == Value::Bool(true), "{what}: run {run} did not pass: {}", r["result"]);
                }
                if mode != Mode::Test {
                    let last = expected.last().copied().unwrap_or("benchmark");
                    let mean = runs[last]["run"]["result"]["benchmark.0.mean"].as_str().unwrap_or_default();
                    ensure!(mean.parse::<f64>().is_ok_and(|m| m > 0.0), "{what}: benchmark timing: {mean:?}");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
