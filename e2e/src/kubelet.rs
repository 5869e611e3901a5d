//! An e2e stand-in for a kubelet on kwok nodes: it runs agent pods' containers as the
//! Buildkite simulator's agents.
//!
//! kwok makes pods Running without running anything. [`Kubelet`] does what a real node does
//! for the pods a label selector picks in one namespace, driven only by the pod spec as the
//! API server has it:
//!
//! 1. it resolves each container's environment (`value`, `valueFrom.fieldRef`/
//!    `secretKeyRef`/`configMapKeyRef`, `envFrom`) and materialises its mounted volumes
//!    (`configMap`, `secret`, `emptyDir`; other kinds are ignored with a log line) under
//!    `<scratch>/<pod>/<volume>/`, one emptyDir directory shared by the pod's containers;
//! 2. it runs the init containers in order as local processes (`command` + `args`, the
//!    command looked up with `binary_dir` first on `PATH`), with exactly the resolved env
//!    (plus `PATH`, `binary_dir` first, if the container sets none), the slot's simulated GPU
//!    env (`GpuProfile::env(0)`) and `BENCHKITE_TERMINATION_LOG`, reads
//!    each termination message as the kubelet does and writes `status.initContainerStatuses`
//!    (after kwok has made the pod Running, re-writing it if kwok overwrote it);
//! 3. if every init container exited 0, it "starts" the agent container: registers a
//!    simulator agent named after the pod, with the tags of `BUILDKITE_AGENT_TAGS`, the
//!    container's env (minus the agent's own `BUILDKITE_AGENT_*` settings) and the GPU profile;
//! 4. when the pod is deleted (or replaced by a pod with a new uid) it stops that agent
//!    gracefully (its running job finishes).
//!
//! **The one liberty taken**: processes see the host's file system, not the container's, so
//! a container's view of its mounts is emulated by rewriting its *env values*: a value that
//! starts with a `mountPath` (exactly, or followed by `/`) gets that prefix replaced by the
//! materialised directory (with `subPath` appended). Paths inside files or arguments are not
//! rewritten.

mod container;
mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use buildkite_sim::gpu::GpuProfile;
use buildkite_sim::{AgentControl, SimHandle};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use container::{KILLED_EXIT_CODE, MAX_MESSAGE_BYTES};

/// The env var that names a pod's GPU slot.
pub const SLOT_ENV: &str = "KERNELBOT_GPU_INDEX";
/// The env var through which a container finds its termination-message file.
pub const TERMINATION_LOG_ENV: &str = "BENCHKITE_TERMINATION_LOG";
/// How often pods are listed.
const POLL: Duration = Duration::from_millis(250);
/// How long an init container may run before it is killed (exit 137).
const INIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times a status overwritten by someone else (kwok) is written again.
const MAX_STATUS_REWRITES: u32 = 5;

/// What the kubelet runs and where.
#[derive(Clone, Debug)]
pub struct KubeletOptions {
    pub namespace: String,
    /// Which pods it runs, e.g. `benchkite.dev/pool=p`.
    pub label_selector: String,
    /// Directory put first on `PATH` (where `benchkite` is).
    pub binary_dir: PathBuf,
    /// Simulated GPU of each `(node, slot)`.
    pub gpus: BTreeMap<(String, String), GpuProfile>,
    /// Where pods' volumes, logs and working directories go.
    pub scratch: PathBuf,
}

/// One init container's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct InitRun {
    pub name: String,
    pub exit_code: i32,
    pub message: String,
}

/// What the kubelet did with one pod.
#[derive(Clone, Debug, Default)]
pub struct PodRun {
    pub uid: String,
    pub node: String,
    pub slot: Option<String>,
    pub init: Vec<InitRun>,
    /// The simulator agent of its agent container, once started.
    pub agent: Option<Uuid>,
    /// Why the pod could not be run (env or volume resolution, a container that could not start).
    pub error: Option<String>,
    /// Times `status.initContainerStatuses` was written.
    pub status_writes: u32,
    /// Times the written status was found replaced by someone else (kwok).
    pub status_overwritten: u32,
    /// The pod was deleted or replaced: its agent was stopped.
    pub stopped: bool,
}

#[derive(Default)]
struct Shared {
    runs: BTreeMap<String, PodRun>,
    /// The status written per pod uid, to check that it stuck.
    written: BTreeMap<String, Value>,
}

struct Ctx {
    pods: Api<Pod>,
    objects: spec::Objects,
    control: AgentControl,
    opts: KubeletOptions,
    shared: Arc<Mutex<Shared>>,
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Updates the run of pod `name` if it is still the run of `uid`.
    fn update(&self, name: &str, uid: &str, f: impl FnOnce(&mut PodRun)) {
        if let Some(r) = self.lock().runs.get_mut(name).filter(|r| r.uid == uid) {
            f(r);
        }
    }
}

/// A running e2e kubelet; dropping it (or [`Kubelet::stop`]) stops it and removes its agents.
pub struct Kubelet {
    ctx: Arc<Ctx>,
    task: Option<JoinHandle<()>>,
    pod_tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Kubelet {
    /// Starts watching (polling) the pods of `opts.namespace` that match `opts.label_selector`.
    pub fn start(client: Client, sim: &SimHandle, opts: KubeletOptions) -> Result<Kubelet> {
        std::fs::create_dir_all(&opts.scratch).with_context(|| format!("creating {}", opts.scratch.display()))?;
        let ctx = Arc::new(Ctx {
            pods: Api::namespaced(client.clone(), &opts.namespace),
            objects: spec::Objects::new(&client, &opts.namespace),
            control: sim.agent_control(),
            opts,
            shared: Arc::default(),
        });
        let pod_tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let task = tokio::spawn(run_loop(Arc::clone(&ctx), Arc::clone(&pod_tasks)));
        Ok(Kubelet { ctx, task: Some(task), pod_tasks })
    }

    /// Every pod it ran, by pod name (a recreated pod replaces its predecessor).
    pub fn agents(&self) -> BTreeMap<String, PodRun> {
        self.ctx.lock().runs.clone()
    }

    /// Waits until `n` pods have a started (and not stopped) agent.
    pub async fn wait_started(&self, n: usize, timeout: Duration) -> Result<BTreeMap<String, PodRun>> {
        let start = Instant::now();
        loop {
            let runs = self.agents();
            if runs.values().filter(|r| r.agent.is_some() && !r.stopped).count() >= n {
                return Ok(runs);
            }
            if start.elapsed() >= timeout {
                bail!("timed out after {timeout:?} waiting for {n} started agents; the kubelet has {runs:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the kubelet and removes the agents it registered.
    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    fn shutdown(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
        for t in self.pod_tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            t.abort();
        }
        let agents: Vec<Uuid> = self.ctx.lock().runs.values().filter(|r| !r.stopped).filter_map(|r| r.agent).collect();
        for id in agents {
            if let Err(e) = self.ctx.control.remove_agent(id) {
                tracing::debug!("e2e kubelet: {e:#}");
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run_loop(ctx: Arc<Ctx>, pod_tasks: Arc<Mutex<Vec<JoinHandle<()>>>>) {
    let params = ListParams::default().labels(&ctx.opts.label_selector);
    loop {
        match ctx.pods.list(&params).await {
            Ok(list) => {
                for pod in reconcile(&ctx, list.items).await {
                    let handle = tokio::spawn(run_pod(Arc::clone(&ctx), pod));
                    let mut tasks = pod_tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(handle);
                }
            }
            Err(e) => tracing::warn!("e2e kubelet: listing pods: {e}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops the agents of pods that are gone or being deleted, re-writes overwritten statuses,
/// and returns the pods to start.
async fn reconcile(ctx: &Ctx, pods: Vec<Pod>) -> Vec<Pod> {
    let live: BTreeMap<String, Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .map(|p| (p.name_any(), p))
        .collect();
    let mut start = Vec::new();
    let mut rewrite = Vec::new();
    {
        let mut guard = ctx.lock();
        let Shared { runs, written } = &mut *guard;
        for (name, run) in runs.iter_mut() {
            let same = live.get(name).is_some_and(|p| p.metadata.uid.as_deref() == Some(run.uid.as_str()));
            if !same && !run.stopped {
                run.stopped = true;
                if let Some(id) = run.agent {
                    tracing::info!(pod = %name, agent = %id, "e2e kubelet: pod gone, stopping its agent");
                    if let Err(e) = ctx.control.stop_agent(id, false) {
                        tracing::warn!("e2e kubelet: {e:#}");
                    }
                }
            }
        }
        for (name, pod) in &live {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if runs.get(name).is_some_and(|r| r.uid == uid) {
                if let Some(want) = written.get(&uid)
                    && !status_matches(pod, want)
                    && let Some(run) = runs.get_mut(name)
                    && run.status_overwritten < MAX_STATUS_REWRITES
                {
                    run.status_overwritten += 1;
                    rewrite.push((name.clone(), uid.clone(), want.clone()));
                }
                continue;
            }
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            runs.insert(name.clone(), PodRun { uid, node, ..PodRun::default() });
            start.push(pod.clone());
        }
    }
    for (name, uid, want) in rewrite {
        tracing::info!(pod = %name, "e2e kubelet: initContainerStatuses were overwritten, writing them again");
        match write_status(ctx, &name, &want).await {
            Ok(()) => ctx.update(&name, &uid, |r| r.status_writes += 1),
            Err(e) => tracing::warn!("e2e kubelet: {e:#}"),
        }
    }
    start
}

/// Whether the pod's `initContainerStatuses` carry the exit codes and messages written.
fn status_matches(pod: &Pod, want: &Value) -> bool {
    let have = pod.status.as_ref().and_then(|s| s.init_container_statuses.as_ref());
    let have = serde_json::to_value(have).unwrap_or(Value::Null);
    let key = |v: &Value| -> Vec<(Value, Value, Value)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let t = &s["state"]["terminated"];
                        (s["name"].clone(), t["exitCode"].clone(), t["message"].clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    key(&have) == key(want)
}

async fn write_status(ctx: &Ctx, name: &str, statuses: &Value) -> Result<()> {
    let patch = json!({"status": {"initContainerStatuses": statuses}});
    ctx.pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("patching the status of pod {name}"))?;
    Ok(())
}

/// The agent container: the one that sets `BUILDKITE_AGENT_TAGS`, else the first.
fn agent_container(pod: &Pod) -> Option<&Container> {
    let cs = &pod.spec.as_ref()?.containers;
    cs.iter().find(|c| c.env.iter().flatten().any(|e| e.name == "BUILDKITE_AGENT_TAGS")).or_else(|| cs.first())
}

async fn run_pod(ctx: Arc<Ctx>, pod: Pod) {
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Err(e) = run_pod_inner(&ctx, &pod, &name, &uid).await {
        tracing::warn!(pod = %name, "e2e kubelet: {e:#}");
        ctx.update(&name, &uid, |r| r.error = Some(format!("{e:#}")));
    }
}

async fn run_pod_inner(ctx: &Ctx, pod: &Pod, name: &str, uid: &str) -> Result<()> {
    let opts = &ctx.opts;
    let pod_dir = opts.scratch.join(spec::pod_name(pod));
    if pod_dir.exists() {
        std::fs::remove_dir_all(&pod_dir).with_context(|| format!("clearing {}", pod_dir.display()))?;
    }
    std::fs::create_dir_all(&pod_dir).with_context(|| format!("creating {}", pod_dir.display()))?;
    let test_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let bin_path = format!("{}:{test_path}", opts.binary_dir.display());
    let inits: Vec<Container> = pod.spec.as_ref().and_then(|s| s.init_containers.clone()).unwrap_or_default();
    let main = agent_container(pod).cloned().context("the pod has no container")?;

    // Every container's environment first: the slot may be set on any of them.
    let mut envs = Vec::new();
    for c in inits.iter().chain(std::iter::once(&main)) {
        let mut env = spec::resolve_env(pod, c, &ctx.objects).await?;
        let mounts = spec::mounts(pod, c, &pod_dir, &ctx.objects).await?;
        spec::rewrite_env(&mut env, &mounts);
        envs.push(env);
    }
    let main_env = envs.pop().unwrap_or_default();
    let slot = main_env.get(SLOT_ENV).or_else(|| envs.iter().find_map(|e| e.get(SLOT_ENV))).cloned();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let gpu = slot.as_ref().and_then(|s| opts.gpus.get(&(node.clone(), s.clone()))).cloned();
    ctx.update(name, uid, |r| r.slot = slot.clone());

    let mut statuses = Vec::new();
    let mut all_ok = true;
    for (c, mut env) in inits.iter().zip(envs) {
        if !all_ok {
            statuses.push(json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                "restartCount": 0, "started": false, "state": {"waiting": {"reason": "PodInitializing"}}}));
            continue;
        }
        env.entry("PATH".into()).or_insert_with(|| bin_path.clone());
        for (k, v) in gpu.as_ref().map(|g| g.env(0)).unwrap_or_default() {
            env.insert(k, v);
        }
        let termination_log = pod_dir.join(format!("{}.termination-log", c.name));
        env.insert(TERMINATION_LOG_ENV.into(), termination_log.to_string_lossy().into_owned());
        let argv: Vec<String> = c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect();
        let exit = container::run(container::Run {
            argv,
            env,
            lookup_path: &bin_path,
            workdir: pod_dir.join(format!("{}.workdir", c.name)),
            log: pod_dir.join(format!("{}.log", c.name)),
            termination_log,
            fallback_to_logs: c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"),
            timeout: INIT_TIMEOUT,
        })
        .await
        .with_context(|| format!("init container {}", c.name))?;
        tracing::info!(pod = %name, container = %c.name, exit = exit.code, "e2e kubelet: init container finished");
        all_ok = exit.code == 0;
        let run = InitRun { name: c.name.clone(), exit_code: exit.code, message: exit.message.clone() };
        ctx.update(name, uid, |r| r.init.push(run));
        statuses.push(json!({
            "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
            "state": {"terminated": {
                "exitCode": exit.code,
                "reason": if exit.code == 0 { "Completed" } else { "Error" },
                "message": exit.message,
                "startedAt": exit.started_at,
                "finishedAt": exit.finished_at,
            }},
        }));
    }
    if !statuses.is_empty() {
        publish_status(ctx, name, uid, Value::Array(statuses)).await?;
    }
    if !all_ok {
        tracing::warn!(pod = %name, "e2e kubelet: an init container failed; the agent container never starts (Init:Error)");
        return Ok(());
    }
    start_agent(ctx, name, uid, main_env, gpu)
}

/// Writes the init container statuses once kwok has made the pod Running (kwok's default
/// stages do not rewrite a Running pod's status), and checks with a read-back that they stuck.
async fn publish_status(ctx: &Ctx, name: &str, uid: &str, statuses: Value) -> Result<()> {
    let deadline = Instant::now() + crate::default_timeout();
    loop {
        let pod = ctx.pods.get_opt(name).await.with_context(|| format!("reading pod {name}"))?;
        let Some(pod) = pod.filter(|p| p.metadata.uid.as_deref() == Some(uid)) else {
            bail!("pod {name} was deleted before its init container status could be written");
        };
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            break;
        }
        if Instant::now() >= deadline {
            bail!("pod {name} never became Running (kwok); its init container status is not written");
        }
        tokio::time::sleep(POLL).await;
    }
    ctx.lock().written.insert(uid.to_string(), statuses.clone());
    for attempt in 0..=MAX_STATUS_REWRITES {
        write_status(ctx, name, &statuses).await?;
        ctx.update(name, uid, |r| r.status_writes += 1);
        let back = ctx.pods.get(name).await.with_context(|| format!("reading back pod {name}"))?;
        if status_matches(&back, &statuses) {
            return Ok(());
        }
        tracing::info!(pod = %name, attempt, "e2e kubelet: initContainerStatuses did not stick, writing again");
        ctx.update(name, uid, |r| r.status_overwritten += 1);
        tokio::time::sleep(POLL).await;
    }
    bail!("pod {name}: initContainerStatuses kept being overwritten")
}

/// Registers the simulator agent of the pod's agent container (unless the pod went away).
fn start_agent(ctx: &Ctx, name: &str, uid: &str, env: BTreeMap<String, String>, gpu: Option<GpuProfile>) -> Result<()> {
    let tags: Vec<String> = env
        .get("BUILDKITE_AGENT_TAGS")
        .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let mut agent_env: BTreeMap<String, String> =
        env.into_iter().filter(|(k, _)| !k.starts_with("BUILDKITE_AGENT_")).collect();
    let rest = agent_env.get("PATH").cloned().unwrap_or_else(|| std::env::var("PATH").unwrap_or_default());
    agent_env.insert("PATH".into(), format!("{}:{rest}", ctx.opts.binary_dir.display()));
    // Under the lock: a deletion seen meanwhile either comes first (no agent) or finds the id.
    let mut shared = ctx.lock();
    let Some(run) = shared.runs.get_mut(name).filter(|r| r.uid == uid && !r.stopped) else {
        tracing::info!(pod = %name, "e2e kubelet: pod gone before its agent container started");
        return Ok(());
    };
    let id = ctx.control.register_agent(name, tags, agent_env, gpu).with_context(|| format!("pod {name}"))?;
    tracing::info!(pod = %name, agent = %id, "e2e kubelet: agent container started");
    run.agent = Some(id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(statuses: Value) -> Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": []},
            "status": {"phase": "Running", "initContainerStatuses": statuses},
        }))?)
    }

    /// kwok's own status (Completed, no message) is told apart from the one written, so an
    /// overwrite is noticed and written again.
    #[test]
    fn a_status_overwritten_by_kwok_does_not_match() -> Result<()> {
        let ours = json!([{"name": "certify", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "started": false, "state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "m",
            "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}}}]);
        let kwoks = json!([{"name": "certify", "image": "i", "ready": true, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed",
            "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:00Z"}}}]);
        assert!(status_matches(&pod_with(ours.clone())?, &ours));
        assert!(!status_matches(&pod_with(kwoks)?, &ours));
        assert!(!status_matches(&pod_with(json!([]))?, &ours));
        Ok(())
    }
}
