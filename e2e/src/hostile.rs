//! The hostile-submission rig (issue 17): a KernelJob controller and a Buildkite simulator
//! whose agents run the real `benchkite run` with the sandbox required, canary secrets
//! planted where a real agent pod keeps its secrets, and a scan of everything the platform
//! shows for those canaries. Used by `tests/hostile.rs` (the sandbox attacks) and
//! `tests/hostile_forgery.rs` (result forgery).
//!
//! Canaries: the agent registration token in the agents' env (the real agent hands its own
//! environment to every job, `agent/job_runner.go`), one in the runner's env, a root-only
//! (0400) agent token file, and a root-only copy of the queue's result key, which the runner
//! signs with. The sandbox uids are `uid_base..uid_base + agents`, one per concurrent runner:
//! give every test its own range.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::KernelJob;
use buildkite_sim::config::ExecutorConfig;
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

use crate::operator::{Operator, install_crds, wait_ready};
use crate::{TestNamespace, client, e2e_dir, repo_root, wait_until};

/// The agent registration token as the agents' env holds it.
pub const CANARY_AGENT_TOKEN: &str = "hostile-canary-agent-token-8d2f61";
/// A secret in the runner's own environment.
pub const CANARY_RUNNER_ENV: &str = "hostile-canary-runner-env-3ac9e0";
/// The content of the root-only agent token file.
pub const CANARY_TOKEN_FILE: &str = "hostile-canary-token-file-c71b52";
/// The interpreter the sandbox user runs (a system one: `python3` on the test host's PATH
/// may live under root's home, which the sandbox user cannot enter).
pub const PYTHON: &str = "/usr/bin/python3";

/// Knobs of [`HostileRig::start`].
#[derive(Clone, Debug)]
pub struct HostileOptions {
    /// First sandbox uid (and gid) of the rig's agents.
    pub uid_base: u32,
    pub agents: u32,
    /// RLIMIT_NPROC of the sandbox.
    pub nproc: u64,
    /// Scratch disk limit, MiB.
    pub disk_mib: u64,
    /// More controller flags.
    pub controller_args: Vec<String>,
}

impl HostileOptions {
    pub fn new(uid_base: u32) -> Self {
        Self { uid_base, agents: 4, nproc: 48, disk_mib: 16, controller_args: Vec::new() }
    }
}

/// A running rig.
pub struct HostileRig {
    pub sim: SimHandle,
    pub op: Operator,
    pub ns: TestNamespace,
    pub queue: String,
    pub opts: HostileOptions,
    /// Root-owned directory of the rig's secrets and job directories.
    pub dir: PathBuf,
    pub token_file: PathBuf,
    pub key_file: PathBuf,
    /// The queue's result key (hex), a canary too.
    pub key: String,
    /// Where the simulator makes its job directories.
    pub job_root: PathBuf,
}

/// Whether this process can run the rig (root, for the sandbox; the system interpreter).
pub fn can_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the sandbox needs root".into());
    }
    if !Path::new(PYTHON).exists() {
        return Some(format!("no {PYTHON}"));
    }
    None
}

fn secret_file(path: &Path, content: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))
        .with_context(|| format!("chmod 0400 {}", path.display()))
}

impl HostileRig {
    /// Starts the simulator (agents on one queue, sandbox required) and a KernelJob
    /// controller for a fresh namespace `e2e-<prefix>-…`.
    pub async fn start(prefix: &str, opts: HostileOptions) -> Result<(Client, HostileRig)> {
        let client = client().await?;
        install_crds(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let queue = format!("q-{}", ns.name());
        let dir = e2e_dir().join("hostile").join(ns.name());
        let job_root = dir.join("jobs");
        std::fs::create_dir_all(&job_root).with_context(|| format!("creating {}", job_root.display()))?;
        for d in [&dir, &job_root] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        let token_file = dir.join("agent-token");
        secret_file(&token_file, CANARY_TOKEN_FILE)?;
        // The queue key, root-only as an agent pod mounts it (the shared e2e copy is not).
        let shared = crate::operator::result_queue_key_file(&queue)?;
        let key = std::fs::read_to_string(&shared).with_context(|| format!("reading {}", shared.display()))?;
        let key = key.trim().to_string();
        let key_file = dir.join("result-key");
        secret_file(&key_file, &format!("{key}\n"))?;

        let mut cfg: SimConfig = crate::sim::queue_config(&queue, opts.agents)?;
        cfg.job_dir = Some(job_root.clone());
        // Kept, so that the scan sees whatever a job left in its directory.
        cfg.keep_job_dirs = true;
        if let ExecutorConfig::Command { env, .. } = &mut cfg.executor {
            let uid = opts.uid_base.to_string();
            let settings: BTreeMap<&str, String> = [
                ("BENCHKITE_SANDBOX", "required".to_string()),
                ("BENCHKITE_SANDBOX_UID", uid.clone()),
                ("BENCHKITE_SANDBOX_GID", uid),
                ("BENCHKITE_SANDBOX_UIDS", opts.agents.to_string()),
                ("BENCHKITE_SANDBOX_NPROC", opts.nproc.to_string()),
                ("BENCHKITE_SANDBOX_DISK_MIB", opts.disk_mib.to_string()),
                ("BENCHKITE_PYTHON", PYTHON.to_string()),
                ("BUILDKITE_AGENT_TOKEN", CANARY_AGENT_TOKEN.to_string()),
                ("BENCHKITE_HOSTILE_CANARY", CANARY_RUNNER_ENV.to_string()),
                (benchkite::signing::RESULT_KEY_FILE_ENV, key_file.to_string_lossy().into_owned()),
            ]
            .into();
            env.extend(settings.into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        let sim = Simulator::start(cfg).await?;
        let port = crate::free_port()?;
        let http = format!("127.0.0.1:{port}");
        let mut args = crate::sim::kerneljob_args(&sim, ns.name());
        args.extend(["--http-addr".to_string(), http.clone(), "--poll-interval-seconds".into(), "2".into()]);
        args.extend(opts.controller_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let token = sim.api_token();
        let op =
            Operator::start_with_env(&format!("hostile-{}", ns.name()), &args, &[("BUILDKITE_API_TOKEN", &token)])?;
        wait_ready(&http).await.with_context(|| op.log_text())?;
        let rig = HostileRig { sim, op, ns, queue, opts, dir, token_file, key_file, key, job_root };
        Ok((client, rig))
    }

    /// What a submission's `PATHS = {}` becomes: where this rig keeps what it attacks.
    pub fn paths(&self, extra: Value) -> Value {
        let mut p = json!({
            "token_file": self.token_file,
            "key_file": self.key_file,
            "job_root": self.job_root,
            "max_mib": 256,
            "max_forks": 400,
            "marker": self.dir.join("hostile-marker"),
        });
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        p
    }

    /// A `test`-mode KernelJob of the vectoradd task with `tests/hostile/<file>` as its
    /// submission.
    pub fn job(&self, name: &str, file: &str, paths: &Value) -> Result<KernelJob> {
        let task = |f: &str| {
            let p = repo_root().join("tests/tasks/vectoradd").join(f);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let sources: BTreeMap<String, String> = [
            ("eval.py".to_string(), task("eval.py")?),
            ("reference.py".to_string(), task("reference.py")?),
            ("submission.py".to_string(), submission(file, paths)?),
        ]
        .into();
        Ok(serde_json::from_value(json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
            "metadata": {"name": name},
            "spec": {
                "queue": self.queue, "mode": "test", "lang": "py", "main": "eval.py", "sources": sources,
                "tests": [{"size": 64, "seed": 1}, {"size": 256, "seed": 2}],
                "benchmarks": [{"size": 1024, "seed": 3}],
                "testTimeoutSeconds": 60, "benchmarkTimeoutSeconds": 60, "rankedTimeoutSeconds": 60,
            },
        }))?)
    }

    /// Waits until the KernelJob `name` is finished.
    pub async fn wait_finished(&self, name: &str, timeout: Duration) -> Result<KernelJob> {
        let api: Api<KernelJob> = self.ns.api();
        wait_until(&format!("KernelJob {name} finished"), timeout, || async {
            let j = api.get(name).await?;
            Ok(j.status.as_ref().is_some_and(|s| s.phase.is_finished()).then_some(j))
        })
        .await
    }

    /// The job logs of a KernelJob's build, concatenated.
    pub async fn build_log(&self, job: &KernelJob) -> Result<String> {
        let b = job.status.as_ref().and_then(|s| s.build.as_ref()).context("the job has no build")?;
        let build = crate::sim::build(&self.sim, &b.pipeline, u64::try_from(b.number)?)
            .await?
            .context("the build is not in the simulator")?;
        let mut out = String::new();
        for j in crate::sim::script_jobs(&build) {
            let id = j["id"].as_str().unwrap_or_default();
            let details = crate::sim::job_details(&self.sim, id).await?;
            out.push_str(details["log"].as_str().unwrap_or_default());
        }
        Ok(out)
    }

    /// Live processes of the rig's sandbox uids.
    pub fn sandbox_processes(&self) -> Vec<(u32, i32)> {
        let range = self.opts.uid_base..self.opts.uid_base + self.opts.agents;
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
            let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            if let Some(uid) = uid.filter(|u| range.contains(u))
                && !zombie
            {
                out.push((uid, pid));
            }
        }
        out
    }

    /// Every canary this rig planted (the runner's signing key among them).
    pub fn canaries(&self) -> Vec<String> {
        vec![
            CANARY_AGENT_TOKEN.into(),
            CANARY_RUNNER_ENV.into(),
            CANARY_TOKEN_FILE.into(),
            self.key.clone(),
            self.sim.agent_token(),
            self.sim.api_token(),
        ]
    }

    /// Scans for the canaries: the controller's log, Events and KernelJobs of the namespace,
    /// every build in the simulator (env, meta-data) with its job logs, every file left under
    /// the job root (result.json …), and `extra` texts. Returns the leaks (`source: canary`).
    pub async fn scan(&self, client: &Client, extra: &[(String, String)]) -> Result<Vec<String>> {
        let needles = self.canaries();
        let mut leaks = Vec::new();
        let mut look = |source: &str, text: &str| {
            for n in &needles {
                if !n.is_empty() && text.contains(n.as_str()) {
                    leaks.push(format!("{source}: {}…", &n[..n.len().min(12)]));
                }
            }
        };
        let log = self.op.log_text();
        ensure!(!log.is_empty(), "no controller log to scan");
        look("controller log", &log);
        let events: Api<Event> = Api::namespaced(client.clone(), self.ns.name());
        for e in events.list(&ListParams::default()).await?.items {
            look(&format!("Event {}", e.name_any()), &serde_json::to_string(&e)?);
        }
        let jobs: Api<KernelJob> = self.ns.api();
        for j in jobs.list(&ListParams::default()).await?.items {
            look(&format!("KernelJob {}", j.name_any()), &serde_json::to_string(&j)?);
        }
        for b in crate::sim::all_builds(&self.sim).await? {
            let number = b["number"].as_i64().unwrap_or(-1);
            look(&format!("build #{number}"), &b.to_string());
            for j in crate::sim::script_jobs(&b) {
                let id = j["id"].as_str().unwrap_or_default();
                let details = crate::sim::job_details(&self.sim, id).await?;
                look(&format!("build #{number} job {id}"), &details.to_string());
            }
        }
        let mut stack = vec![self.job_root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    look(&format!("file {}", p.display()), &String::from_utf8_lossy(&bytes));
                }
            }
        }
        for (source, text) in extra {
            look(source, text);
        }
        Ok(leaks)
    }

    /// Every result.json left in the job directories (the simulator keeps them), parsed.
    pub fn results(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.job_root).into_iter().flatten().flatten() {
            let p = e.path().join("result.json");
            if let Some(v) = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
                out.push(v);
            }
        }
        out
    }

    /// Stops the controller and the simulator, deletes the namespace and the rig's files.
    pub async fn delete(self) -> Result<()> {
        let HostileRig { sim, op, ns, dir, .. } = self;
        drop(op);
        sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        ns.delete().await
    }
}

/// `tests/hostile/<file>` with its `PATHS = {}` line set to `paths`.
pub fn submission(file: &str, paths: &Value) -> Result<String> {
    let p = repo_root().join("tests/hostile").join(file);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    ensure!(text.contains("PATHS = {}"), "{} has no `PATHS = {{}}` line", p.display());
    Ok(text.replacen("PATHS = {}", &format!("PATHS = {paths}"), 1))
}
