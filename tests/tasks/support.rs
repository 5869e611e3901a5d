//! Shared helpers of the `benchkite run` tests (included with `#[path]`): payloads built
//! from the tasks in this directory, and a runner invocation in a scratch directory.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use benchkite::contract::{self, FullResult};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_benchkite");

pub fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tasks")
}

pub fn task_file(rel: &str) -> String {
    let p = tasks_dir().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A `py` config for the vector-add task with the given submission (`ok`, `wrong`, …).
pub fn vectoradd(mode: &str, submission: &str) -> Value {
    json!({
        "lang": "py",
        "mode": mode,
        "main": "eval.py",
        "sources": {
            "eval.py": task_file("vectoradd/eval.py"),
            "reference.py": task_file("vectoradd/reference.py"),
            "submission.py": task_file(&format!("vectoradd/submission_{submission}.py")),
        },
        "tests": [{"size": 16, "seed": 1}, {"size": 250, "seed": 2}, {"size": 1000, "seed": 3}],
        "benchmarks": [{"size": 500, "seed": 11}, {"size": 1000, "seed": 12}, {"size": 2000, "seed": 13}],
        "test_timeout": 60,
        "benchmark_timeout": 60,
        "ranked_timeout": 60,
        "ranking_by": "last",
        "seed": null,
        "multi_gpu": false,
    })
}

/// JSON → zlib → base64, as the seeds' launcher does.
pub fn encode(config: &Value) -> String {
    encode_bytes(config.to_string().as_bytes())
}

pub fn encode_bytes(raw: &[u8]) -> String {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(raw).expect("zlib");
    base64::engine::general_purpose::STANDARD.encode(e.finish().expect("zlib"))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("bk-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes an executable script into `bin/` (for fake tools on PATH).
    pub fn tool(&self, name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.0.join("bin");
        std::fs::create_dir_all(&dir).expect("bin dir");
        let p = dir.join(name);
        std::fs::write(&p, script).expect("tool");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// PATH with this scratch's `bin/` first.
    pub fn path_with_tools(&self) -> String {
        format!("{}:{}", self.0.join("bin").display(), std::env::var("PATH").unwrap_or_default())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Environment variables of a real agent or simulator that must not leak into tests.
const AMBIENT: &[&str] = &[
    "KERNELBOT_PAYLOAD",
    "BUILDKITE_AGENT_ACCESS_TOKEN",
    "BUILDKITE_SIM_META_DATA_FILE",
    "BUILDKITE_ARTIFACT_PATHS",
    "BENCHKITE_RESULT_FILE",
    "BENCHKITE_REPORT",
    "BENCHKITE_UPLOAD",
    "BENCHKITE_RESULT_KEY_FILE",
    "KERNELBOT_RUN_ID",
];

/// `benchkite run` in `dir` with the payload in KERNELBOT_PAYLOAD (when given).
pub fn command(dir: &Path, payload: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run").args(args).current_dir(dir).stdin(Stdio::null());
    for k in AMBIENT {
        cmd.env_remove(k);
    }
    // These tests hand their harness test-only env and files; the sandbox has its own suite
    // (tests/runner_hostile.rs). A test may still turn it on.
    cmd.env("BENCHKITE_SANDBOX", "off");
    if let Some(p) = payload {
        cmd.env("KERNELBOT_PAYLOAD", p);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What one runner invocation produced.
pub struct Run {
    pub output: Output,
    pub result: FullResult,
    pub json: Value,
    pub scratch: Scratch,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn run(&self, name: &str) -> &contract::RunResult {
        self.result
            .runs
            .get(name)
            .and_then(|r| r.run.as_ref())
            .unwrap_or_else(|| panic!("no run {name}: {:#}", self.json))
    }
}

/// Reads and checks the result.json a runner wrote: the controller's parser must take it.
pub fn read_result(path: &Path) -> (FullResult, Value) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let result = contract::parse_result_json(&bytes).unwrap_or_else(|e| panic!("result.json does not parse: {e}"));
    let json: Value = serde_json::from_slice(&bytes).expect("json");
    (result, json)
}

pub fn run_with(config_b64: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Run {
    let scratch = Scratch::new("run");
    let output = command(scratch.path(), config_b64, env, args).output().expect("starting benchkite");
    let (result, json) = read_result(&scratch.path().join("result.json"));
    Run { output, result, json, scratch }
}

pub fn run_config(config: &Value) -> Run {
    run_with(Some(&encode(config)), &[], &[])
}

/// Dead: gone from /proc, or a zombie nobody reaped yet.
pub fn process_gone(pid: i32) -> bool {
    for _ in 0..150 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s) if s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) => return true,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    false
}

pub fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("pid file {}: {e}", path.display()));
    text.trim().parse().expect("pid")
}

/// A synthetic kernel (`tests/tasks/synthetic/<name>.py`) as kernelbot config.
pub fn synthetic(mode: &str, kernel: &str) -> Value {
    json!({
        "lang": "py",
        "mode": mode,
        "main": "eval.py",
        "sources": {
            "eval.py": task_file("synthetic/eval.py"),
            "reference.py": task_file("synthetic/reference.py"),
            "submission.py": task_file(&format!("synthetic/{kernel}.py")),
        },
        "tests": [{"size": 1}],
        "benchmarks": [{"size": 1}],
        "ranking_by": "mean",
        "test_timeout": 60,
        "benchmark_timeout": 60,
        "ranked_timeout": 60,
    })
}

/// The synthetic kernels and their true times, seconds.
pub const SYNTHETIC_KERNELS: &[(&str, f64)] =
    &[("k_fast", 1.0e-3), ("k_mid_b", 2.0e-3), ("k_mid_a", 2.1e-3), ("k_slow", 1.0e-2)];

/// A reference suite of the synthetic kernels at their true times (JSON, which is YAML).
pub fn synthetic_suite(canary: Option<&str>) -> String {
    let kernels: Vec<Value> = SYNTHETIC_KERNELS
        .iter()
        .map(
            |(k, t)| json!({"name": k.replace('_', "-"), "referenceSeconds": t, "config": synthetic("leaderboard", k)}),
        )
        .collect();
    let mut suite = json!({"kernels": kernels});
    if let Some(c) = canary {
        suite["canary"] = json!(c);
    }
    suite.to_string()
}
