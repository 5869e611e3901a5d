//! Simulated GPUs: per-agent `GpuProfile`s reach their jobs' env as `SIMGPU_*`, the job
//! index counts per agent, the `/_sim` endpoints validate; and the synthetic harness's
//! selftest (`tests/tasks/synthetic/selftest.py`).

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use buildkite_sim::config::{AgentPoolConfig, ExecutorConfig, PipelineConfig, SimConfig, StepConfig};
use buildkite_sim::gpu::GpuProfile;
use common::{T, public_default_repo};
use reqwest::Method;
use serde_json::{Value, json};

/// Prints what the job sees of the simulated GPU (`unset` when absent).
const PRINT_GPU: &str = "echo \"agent=$BUILDKITE_AGENT_NAME factor=${SIMGPU_FACTOR-unset} \
                         kf=${SIMGPU_KERNEL_FACTORS-unset} idx=${SIMGPU_JOB_INDEX-unset}\"";

fn pipeline(slug: &str, rules: &[&str]) -> PipelineConfig {
    PipelineConfig {
        slug: slug.into(),
        steps: vec![StepConfig {
            agents: rules.iter().map(|r| (*r).to_string()).collect(),
            artifact_paths: String::new(),
            ..StepConfig::default()
        }],
        ..PipelineConfig::default()
    }
}

fn slow() -> GpuProfile {
    GpuProfile { factor: 2.0, ..GpuProfile::default() }
}

fn noisy_flipped() -> GpuProfile {
    GpuProfile {
        noise: 0.1,
        seed: 9,
        drift_after_jobs: Some(1),
        drift_per_job: 0.5,
        kernel_factors: [("a".to_string(), 1.1), ("b".to_string(), 0.9)].into(),
        ..GpuProfile::default()
    }
}

/// Queue `gpus`: 2 agents tagged `slot=%n`, every one slow, agent 1 noisy/drifting/flipped;
/// queue `plain`: 1 agent without a GPU. One pipeline per slot so jobs land where we say.
fn cfg() -> SimConfig {
    let mut cfg = SimConfig::default();
    let mut exec = ExecutorConfig::command(PRINT_GPU);
    if let ExecutorConfig::Command { agent_binary, .. } = &mut exec {
        *agent_binary = Some(env!("CARGO_BIN_EXE_buildkite-agent").into());
    }
    cfg.executor = exec;
    cfg.rate_limit.org_limit = 100_000;
    public_default_repo(&mut cfg);
    cfg.clusters[0].queues.extend(["gpus".to_string(), "plain".to_string(), "ext".to_string()]);
    cfg.agents = vec![
        AgentPoolConfig {
            queue: "gpus".into(),
            count: 2,
            tags: [("slot".to_string(), "%n".to_string())].into(),
            gpu: Some(slow()),
            gpu_by_index: [(1, noisy_flipped())].into(),
            ..AgentPoolConfig::default()
        },
        AgentPoolConfig { queue: "plain".into(), count: 1, ..AgentPoolConfig::default() },
    ];
    cfg.pipelines = vec![
        pipeline("slot0", &["queue=gpus", "slot=0"]),
        pipeline("slot1", &["queue=gpus", "slot=1"]),
        pipeline("plain", &["queue=plain"]),
        pipeline("ext", &["queue=ext"]),
    ];
    cfg
}

/// Runs one build of `pipeline` to `passed` and returns its job's log line.
async fn run_one(t: &T, pipeline: &str, env: Value) -> String {
    let b = t.create_build_in(pipeline, "main", env).await;
    let number = b["number"].as_u64().unwrap_or_default();
    let b = t.wait_build(pipeline, number, "passed", 20.0).await;
    let job = b["jobs"][0]["id"].as_str().unwrap_or_default().to_string();
    let (s, j) = t.sim_json(Method::GET, &format!("/jobs/{job}"), None).await;
    assert_eq!(s, 200, "{j}");
    let log = j["log"].as_str().unwrap_or_default();
    log.lines().find(|l| l.starts_with("agent=")).unwrap_or_else(|| panic!("no agent= line in {log}")).to_string()
}

/// The log line a job of `agent` with `profile` at `index` must print.
fn expected(agent: &str, profile: Option<&GpuProfile>, index: u32) -> String {
    let env: BTreeMap<String, String> = profile.map(|p| p.env(index)).unwrap_or_default().into_iter().collect();
    let get = |k: &str| env.get(k).cloned().unwrap_or_else(|| "unset".into());
    format!(
        "agent={agent} factor={} kf={} idx={}",
        get("SIMGPU_FACTOR"),
        get("SIMGPU_KERNEL_FACTORS"),
        get("SIMGPU_JOB_INDEX")
    )
}

async fn agents(t: &T) -> Vec<Value> {
    let (s, v) = t.sim_json(Method::GET, "/agents", None).await;
    assert_eq!(s, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

fn agent_named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("no agent {name} in {list:?}"))
}

#[tokio::test]
async fn each_agent_sees_its_own_gpu_and_job_index() {
    let t = T::start(cfg()).await;
    let noisy = noisy_flipped();
    // interleaved: agent 0, agent 1, agent 1, agent 0, agent 1 (the build tries to override)
    let override_env = json!({"SIMGPU_FACTOR": "999", "SIMGPU_JOB_INDEX": "42"});
    let plan: [(&str, &str, &GpuProfile, u32); 5] = [
        ("slot0", "gpus-agent-0", &slow(), 0),
        ("slot1", "gpus-agent-1", &noisy, 0),
        ("slot1", "gpus-agent-1", &noisy, 1),
        ("slot0", "gpus-agent-0", &slow(), 1),
        ("slot1", "gpus-agent-1", &noisy, 2),
    ];
    for (i, (pipeline, agent, profile, index)) in plan.iter().enumerate() {
        let env = if i == 4 { override_env.clone() } else { json!({}) };
        let line = run_one(&t, pipeline, env).await;
        assert_eq!(line, expected(agent, Some(profile), *index), "job {i}");
    }
    // the drift (after 1 job, +50% per job) and the noise made three different factors
    let f: Vec<f64> = (0..3).map(|i| noisy.job_factor(i)).collect();
    assert!(f[0] < 1.2 && f[1] > 1.3 && f[2] > 1.8, "{f:?}");

    // an agent without a profile gets no SIMGPU_* (and its jobs are still counted)
    let line = run_one(&t, "plain", json!({"SIMGPU_FACTOR": "3"})).await;
    assert_eq!(line, "agent=plain-agent-0 factor=3 kf=unset idx=unset");

    let list = agents(&t).await;
    assert_eq!(agent_named(&list, "gpus-agent-0")["jobs_started"], 2);
    assert_eq!(agent_named(&list, "gpus-agent-1")["jobs_started"], 3);
    assert_eq!(agent_named(&list, "plain-agent-0")["jobs_started"], 1);
    assert_eq!(agent_named(&list, "gpus-agent-0")["gpu"]["factor"], 2.0);
    assert_eq!(agent_named(&list, "gpus-agent-1")["gpu"]["kernel_factors"], json!({"a": 1.1, "b": 0.9}));
    assert!(agent_named(&list, "plain-agent-0")["gpu"].is_null());
}

#[tokio::test]
async fn register_and_put_gpu_validate() {
    let t = T::start(cfg()).await;
    // registration: an invalid profile is refused with the reason
    let bad = json!({"name": "ext-1", "tags": {"queue": "ext"}, "gpu": {"noise": 0.7}});
    let (s, v) = t.sim_json(Method::POST, "/agents", Some(bad)).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("gpu.noise"), "{v}");
    let bad = json!({"name": "ext-1", "tags": {"queue": "ext"}, "gpu": {"kernel_factors": {"a=b": 1.0}}});
    let (s, v) = t.sim_json(Method::POST, "/agents", Some(bad)).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("kernel name"), "{v}");
    // a valid one
    let good = json!({"name": "ext-1", "tags": {"queue": "ext"}, "gpu": {"factor": 1.25}});
    let (s, v) = t.sim_json(Method::POST, "/agents", Some(good)).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let p = GpuProfile { factor: 1.25, ..GpuProfile::default() };
    assert_eq!(run_one(&t, "ext", json!({})).await, expected("ext-1", Some(&p), 0));

    // PUT: unknown agent 404, invalid 422 (nothing changes), unknown field 400
    let (s, _) =
        t.sim_json(Method::PUT, &format!("/agents/{}/gpu", uuid::Uuid::new_v4()), Some(json!({"factor": 2}))).await;
    assert_eq!(s, 404);
    let (s, _) = t.sim_json(Method::PUT, "/agents/not-a-uuid/gpu", Some(json!({"factor": 2}))).await;
    assert_eq!(s, 404);
    let (s, v) = t.sim_json(Method::PUT, &format!("/agents/{id}/gpu"), Some(json!({"factor": 0}))).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("gpu.factor"), "{v}");
    let (s, _) = t.sim_json(Method::PUT, &format!("/agents/{id}/gpu"), Some(json!({"fctor": 2}))).await;
    assert_eq!(s, 400);
    assert_eq!(agent_named(&agents(&t).await, "ext-1")["gpu"]["factor"], 1.25);

    // a valid PUT replaces the profile from the next job on; the job count goes on
    let (s, v) = t
        .sim_json(Method::PUT, &format!("/agents/{id}/gpu"), Some(json!({"factor": 0.5, "kernel_factors": {"k": 3}})))
        .await;
    assert_eq!(s, 200, "{v}");
    let p = GpuProfile { factor: 0.5, kernel_factors: [("k".to_string(), 3.0)].into(), ..GpuProfile::default() };
    assert_eq!(run_one(&t, "ext", json!({})).await, expected("ext-1", Some(&p), 1));
    let me = agent_named(&agents(&t).await, "ext-1").clone();
    assert_eq!(me["jobs_started"], 2);
    assert_eq!(me["gpu"]["factor"], 0.5);
    // null removes it
    let (s, _) = t.sim_json(Method::PUT, &format!("/agents/{id}/gpu"), Some(Value::Null)).await;
    assert_eq!(s, 200);
    assert_eq!(run_one(&t, "ext", json!({})).await, expected("ext-1", None, 2));
}

#[tokio::test]
async fn pools_validate_and_apply_changed_profiles() {
    // an invalid profile in the config refuses to start, naming the pool and the index
    let mut bad = cfg();
    bad.agents[0].gpu_by_index.insert(3, GpuProfile { factor: -1.0, ..GpuProfile::default() });
    let e = buildkite_sim::Simulator::start(bad).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("gpu_by_index[3]") && e.contains("gpu.factor"), "{e:?}");

    let t = T::start(cfg()).await;
    let (s, v) = t
        .sim_json(
            Method::PUT,
            "/agents/pools",
            Some(json!({"queue": "gpus", "count": 2, "tags": {"slot": "%n"}, "gpu": {"noise": -1}})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("gpu.noise"), "{v}");
    assert_eq!(agent_named(&agents(&t).await, "gpus-agent-0")["gpu"]["factor"], 2.0);

    // a changed pool profile reaches the existing agents (agent 1 loses its override)
    let (s, v) = t
        .sim_json(
            Method::PUT,
            "/agents/pools",
            Some(json!({"queue": "gpus", "count": 2, "tags": {"slot": "%n"}, "gpu": {"factor": 3}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let list = agents(&t).await;
    assert_eq!(agent_named(&list, "gpus-agent-0")["gpu"]["factor"], 3.0);
    assert_eq!(agent_named(&list, "gpus-agent-1")["gpu"]["factor"], 3.0);
    assert_eq!(agent_named(&list, "gpus-agent-1")["gpu"]["noise"], 0.0);
    let p = GpuProfile { factor: 3.0, ..GpuProfile::default() };
    assert_eq!(run_one(&t, "slot1", json!({})).await, expected("gpus-agent-1", Some(&p), 0));
}

/// The synthetic harness (`tests/tasks/synthetic/`) checks itself against hand-computed
/// values for every SIMGPU_* combination.
#[test]
fn synthetic_harness_selftest() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tasks/synthetic/selftest.py");
    let out = match std::process::Command::new("python3").arg(&script).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipping synthetic_harness_selftest: python3 is not installed");
            return;
        }
        Err(e) => panic!("running {}: {e}", script.display()),
    };
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
