//! Scenario 3 (fleet convergence against a plain client creating the same pods) and
//! scenario 4 (the controller's footprint with a full fleet and many KernelJobs).
//!
//! The bench makes its own kwok nodes `bench-h100-<i>` (8 H100 each, label
//! `benchkite.dev/bench=fleet`, mirrored onto their GpuNodes so the pool selects exactly
//! them) and removes them, their pods and GpuNodes afterwards, so it can run on a shared
//! cluster after the tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use benchkite::api::{GpuNode, KernelJob};
use buildkite_sim::Simulator;
use buildkite_sim::config::{AgentPoolConfig, ExecutorConfig, ScriptedConfig};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::rig::{self, FinishWatch, RESULT_SUMMARY};
use crate::stats::{self, median};

pub const BENCH_LABEL: &str = "benchkite.dev/bench";
const GPUS_PER_NODE: usize = 8;
/// Pod writes in flight: the controller's default `--write-concurrency`.
pub const WRITE_CONCURRENCY: usize = 32;

fn node(name: &str) -> Result<Node> {
    let res = json!({"cpu": "128", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": GPUS_PER_NODE.to_string()});
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                BENCH_LABEL: "fleet",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": GPUS_PER_NODE.to_string(),
                "nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.family": "hopper",
                "nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0",
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": res, "allocatable": res},
    }))?)
}

fn selector() -> String {
    format!("{BENCH_LABEL}=fleet")
}

/// Creates the bench nodes and waits until kwok reports all Ready.
pub async fn create_nodes(client: &Client, n: usize) -> Result<Duration> {
    let nodes: Api<Node> = Api::all(client.clone());
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let name = format!("bench-h100-{i}");
                match nodes.create(&PostParams::default(), &node(&name)?).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(anyhow::Error::from(e).context(format!("creating node {name}"))),
                }
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    wait_ready(&nodes, n, "bench nodes").await?;
    Ok(t.elapsed())
}

/// Waits until `n` objects labelled as the bench's have a `Ready=True` condition.
async fn wait_ready<K>(api: &Api<K>, n: usize, what: &str) -> Result<Duration>
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let t = Instant::now();
    benchkite_e2e::wait_until(&format!("{n} {what} Ready"), Duration::from_secs(600), || async {
        let list = api.list(&ListParams::default().labels(&selector())).await?;
        let ready = list
            .items
            .iter()
            .filter(|o| {
                serde_json::to_value(o).ok().is_some_and(|v| {
                    v["status"]["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
            })
            .count();
        Ok((ready >= n).then_some(()))
    })
    .await?;
    Ok(t.elapsed())
}

/// Removes the bench pods of `ns` (if given), then the bench nodes and their GpuNodes.
pub async fn remove_nodes(client: &Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&selector())).await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    let _ = gpunodes.delete_collection(&DeleteParams::default(), &ListParams::default().labels(&selector())).await;
    Ok(())
}

/// Deletes every pod of `api` (grace 0), `WRITE_CONCURRENCY` deletes in flight, and waits
/// until they are gone. (A delete-collection runs on one API server worker, item by item:
/// 8,000 pods took over 10 minutes that way.)
async fn delete_pods(api: &Api<Pod>) -> Result<Duration> {
    let t = Instant::now();
    let params = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    loop {
        let names: Vec<String> =
            api.list_metadata(&ListParams::default()).await?.items.iter().map(|p| p.name_any()).collect();
        if names.is_empty() {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(900) {
            bail!("{} pods still there 900 s after deleting them", names.len());
        }
        let failed = futures::stream::iter(names)
            .map(|name| {
                let (api, params) = (api.clone(), params.clone());
                async move {
                    match api.delete(&name, &params).await {
                        Ok(_) => 0,
                        Err(kube::Error::Api(s)) if s.code == 404 => 0,
                        Err(_) => 1,
                    }
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .fold(0usize, |n, e| async move { n + e })
            .await;
        if failed > 0 {
            eprintln!("bench: {failed} pod deletes failed; retrying");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Tracks which pods of a namespace are Running.
struct PodWatch {
    running: Arc<Mutex<HashMap<String, bool>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    fn start(api: Api<Pod>) -> Self {
        let running: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
        let r = Arc::clone(&running);
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                let mut g = r.lock().unwrap_or_else(|e| e.into_inner());
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        let up = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                            && p.metadata.deletion_timestamp.is_none();
                        g.insert(p.name_any(), up);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        g.remove(&p.name_any());
                    }
                    _ => {}
                }
            }
        });
        PodWatch { running, task }
    }

    fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|v| **v).count()
    }

    /// Waits until `n` pods are Running; the time since `t0`.
    async fn wait(self, n: usize, t0: Instant, timeout: Duration) -> Result<Duration> {
        loop {
            let r = self.running();
            if r >= n {
                let d = t0.elapsed();
                self.task.abort();
                return Ok(d);
            }
            if t0.elapsed() > timeout {
                self.task.abort();
                bail!("only {r}/{n} pods Running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn pool(name: &str) -> Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "queue": "bench-fleet",
            "gpuNodeSelector": {"matchLabels": {BENCH_LABEL: "fleet"}},
            "gpusPerAgent": 1,
            "agent": {
                "image": "example.invalid/agent:bench",
                "tokenSecretRef": {"name": "agent-token", "key": "token"},
                "ephemeral": true,
            },
        },
    }))?)
}

fn pool_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("benchkite.dev", "v1alpha1", "AgentPool");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "agentpools");
    Api::namespaced_with(client.clone(), ns, &ar)
}

async fn apply_pool(client: &Client, ns: &str) -> Result<()> {
    pool_api(client, ns)
        .patch("bench", &PatchParams::apply("benchkite-bench").force(), &Patch::Apply(&pool("bench")?))
        .await
        .context("applying the AgentPool")?;
    Ok(())
}

async fn delete_pool(client: &Client, ns: &str) -> Result<()> {
    match pool_api(client, ns).delete("bench", &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The pods as a plain client would create them: the controller's pods without what the
/// server or scheduler added (owner, uid, nodeName, status …).
fn plain_copies(pods: &[Pod]) -> Vec<Pod> {
    pods.iter()
        .map(|p| {
            let mut c = Pod::default();
            // A name of its own: a lagging kwok or informer that still deletes the
            // controller's pods by name must not hit the plain client's.
            c.metadata.name = p.metadata.name.as_ref().map(|n| format!("plain-{n}"));
            c.metadata.labels = p.metadata.labels.clone();
            c.metadata.annotations = p.metadata.annotations.clone();
            c.spec = p.spec.clone().map(|mut s| {
                s.node_name = None;
                s
            });
            c
        })
        .collect()
}

async fn wait_gpunodes_ready(client: &Client, n: usize) -> Result<Duration> {
    wait_ready(&Api::<GpuNode>::all(client.clone()), n, "bench GpuNodes").await
}

async fn token_secret(ns: &benchkite_e2e::TestNamespace) -> Result<()> {
    let secrets: Api<Secret> = ns.api();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "agent-token"}, "stringData": {"token": "bench-agent-token"},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub nodes: usize,
    pub repeats: usize,
    pub kernel_jobs: usize,
    pub source_bytes: usize,
    /// The cluster is deleted after the run (`make bench`): the last round leaves its
    /// KernelJobs, pods and nodes to that instead of deleting them one by one.
    pub throwaway: bool,
}

/// Longest wait for the footprint's KernelJobs to finish once all are created.
const FOOTPRINT_FINISH_SECS: u64 = 300;

/// The simulator the footprint's KernelJobs run on: 512 agents, 500 ms builds, and
/// explicitly unconstrained limits in both scopes (organization and user, never off): the
/// footprint measures the controller's memory and CPU, not Buildkite's budget.
async fn footprint_simulator(queue: &str) -> Result<buildkite_sim::SimHandle> {
    let mut cfg = buildkite_sim::SimConfig {
        executor: ExecutorConfig::Scripted(ScriptedConfig {
            duration_ms: 500,
            meta_data: [(benchkite::contract::META_DATA_KEY.to_string(), RESULT_SUMMARY.to_string())].into(),
            ..Default::default()
        }),
        rate_limit: crate::latency::unconstrained(),
        ..Default::default()
    };
    cfg.clusters[0].queues.push(queue.into());
    cfg.agents.push(AgentPoolConfig { queue: queue.into(), count: 512, ..Default::default() });
    Simulator::start(cfg).await
}

/// Peak RSS, RSS and CPU of a process after a phase.
fn usage_row(pid: u32, phase: &str, secs: f64) -> Result<Value> {
    let u = stats::proc_usage(pid)?;
    Ok(json!({
        "phase": phase, "secs": secs,
        "peak_rss_mib": u.peak_rss_bytes as f64 / 1048576.0, "rss_mib": u.rss_bytes as f64 / 1048576.0,
        "cpu_secs": u.cpu.as_secs_f64(),
    }))
}

#[derive(Default)]
struct Rounds {
    controller_secs: Vec<f64>,
    baseline_secs: Vec<f64>,
    delete_secs: Vec<f64>,
    gpunodes_ready: Vec<f64>,
    timings: Vec<Value>,
    usage: Option<stats::ProcUsage>,
}

/// Scenarios 3 and 4 on `p.nodes` bench nodes, in one pass so 8,000 pods are brought up
/// once per round: each round starts a fresh controller (fleet + KernelJobs, as installed),
/// times the AgentPool to all pods Running, and then a plain client creating the same pods.
/// The last round's controller goes on into the footprint (KernelJobs on the full fleet)
/// before its plain-client round. Without `with_convergence`, one controller round and the
/// footprint only. Each keeps its own outcome (a failed footprint keeps the convergence).
pub async fn run(client: &Client, p: Params, with_convergence: bool) -> Result<(Option<Result<Value>>, Result<Value>)> {
    let nodes_time = create_nodes(client, p.nodes).await?;
    let want = p.nodes * GPUS_PER_NODE;
    let timeout = Duration::from_secs(600 + want as u64 / 10);
    let ns = rig::namespace(client, "fleet").await?;
    token_secret(&ns).await?;
    let queue = "bench-foot";
    let sim = footprint_simulator(queue).await?;
    let limit = crate::latency::UNCONSTRAINED_LIMIT.to_string();
    let extra = [
        "--agent-grace-seconds",
        "0",
        "--buildkite-requests-per-minute",
        &limit,
        "--poll-interval-seconds",
        "10",
        "--submit-workers",
        crate::latency::SUBMIT_WORKERS,
    ];
    let args = rig::controller_args("fleet,kerneljob", ns.name(), &sim, &extra);
    let token = sim.api_token();
    let pods: Api<Pod> = ns.api();
    let rounds_n = if with_convergence { p.repeats.max(1) } else { 1 };
    let mut r = Rounds::default();
    let mut foot: Option<Result<Value>> = None;
    let outcome: Result<()> = async {
        for round in 0..rounds_n {
            let last = round + 1 == rounds_n;
            // The controller: a fresh process, synced, then the pool applied.
            let http = format!("127.0.0.1:{}", rig::free_port()?);
            let ctl =
                rig::start_controller("bench-fleet", &http, &args, &[("BUILDKITE_API_TOKEN", token.as_str())]).await?;
            let pid = ctl.op.pid();
            let t = Instant::now();
            r.gpunodes_ready.push(wait_gpunodes_ready(client, p.nodes).await?.as_secs_f64());
            let mut phases = vec![usage_row(pid, "started, GpuNodes Ready", t.elapsed().as_secs_f64())?];
            let watch = PodWatch::start(pods.clone());
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t0 = Instant::now();
            apply_pool(client, ns.name()).await?;
            let d = watch.wait(want, t0, timeout).await.with_context(|| format!("controller round {round}"))?;
            r.controller_secs.push(d.as_secs_f64());
            phases.push(usage_row(pid, &format!("{want} agent pods Running"), d.as_secs_f64())?);
            if r.usage.is_none() {
                r.usage = stats::proc_usage(pid).ok();
            }
            r.timings.push(ctl.timings().await);
            let copies = plain_copies(&pods.list(&ListParams::default()).await?.items);
            if last {
                foot = Some(footprint_jobs(&ns, &ctl, p, queue, phases).await.context("footprint"));
            }
            // Stopped first, so it cannot re-create what is being deleted.
            drop(ctl);
            r.delete_secs.push(delete_pods(&pods).await?.as_secs_f64());
            delete_pool(client, ns.name()).await?;
            if !with_convergence {
                break;
            }

            // The plain client: the same pods, the same number of creates in flight.
            let watch = PodWatch::start(pods.clone());
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t0 = Instant::now();
            futures::stream::iter(copies)
                .map(|pod| {
                    let pods = pods.clone();
                    async move { pods.create(&PostParams::default(), &pod).await.map(|_| ()) }
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
                .context("baseline creates")?;
            let d = watch.wait(want, t0, timeout).await.with_context(|| format!("baseline round {round}"))?;
            r.baseline_secs.push(d.as_secs_f64());
            eprintln!(
                "bench: fleet round {round}: controller {:.2} s, plain client {:.2} s",
                r.controller_secs[round],
                d.as_secs_f64()
            );
            if !(last && p.throwaway) {
                r.delete_secs.push(delete_pods(&pods).await?.as_secs_f64());
            }
        }
        Ok(())
    }
    .await;
    sim.shutdown().await;
    if !p.throwaway {
        rig::drop_namespace(ns).await;
        remove_nodes(client).await?;
    }
    let conv = with_convergence.then(|| match &outcome {
        Ok(()) => Ok(convergence_report(p, &r, nodes_time)),
        Err(e) => Err(anyhow::anyhow!("fleet convergence: {e:#}")),
    });
    let foot = match (foot, outcome) {
        (Some(f), _) => f,
        (None, Err(e)) => Err(anyhow::anyhow!("footprint: the fleet did not come up: {e:#}")),
        (None, Ok(())) => Err(anyhow::anyhow!("footprint: not run")),
    };
    Ok((conv, foot))
}

fn convergence_report(p: Params, r: &Rounds, nodes_time: Duration) -> Value {
    let (c, b) = (median(&r.controller_secs), median(&r.baseline_secs));
    json!({
        "nodes": p.nodes,
        "pods": p.nodes * GPUS_PER_NODE,
        "repeats": p.repeats,
        "write_concurrency": WRITE_CONCURRENCY,
        "controller_secs": r.controller_secs,
        "baseline_secs": r.baseline_secs,
        "controller_median_secs": c,
        "baseline_median_secs": b,
        "ratio": c.zip(b).map(|(c, b)| c / b),
        "gpunodes_ready_secs": r.gpunodes_ready,
        "pod_delete_secs": r.delete_secs,
        "node_setup_secs": nodes_time.as_secs_f64(),
        "controller_peak_rss_mib": r.usage.map(|u| u.peak_rss_bytes as f64 / 1048576.0),
        "controller_cpu_secs": r.usage.map(|u| u.cpu.as_secs_f64()),
        "controller_timings": r.timings,
        "order": "controller first, then the plain client, each round; the last controller round also runs scenario 4",
    })
}

/// Scenario 4 on the controller of the last round, with every agent pod Running: KernelJobs
/// carrying `source_bytes` of sources each, through a simulator that never limits; peak RSS
/// and CPU after each phase.
async fn footprint_jobs(
    ns: &benchkite_e2e::TestNamespace,
    ctl: &rig::Controller,
    p: Params,
    queue: &str,
    mut phases: Vec<Value>,
) -> Result<Value> {
    let pid = ctl.op.pid();
    let jobs: Api<KernelJob> = ns.api();
    let (finished, watch_task) = FinishWatch::start(jobs.clone());
    let t = Instant::now();
    rig::create_jobs(&jobs, "fp", 0..p.kernel_jobs, queue, p.source_bytes, 16).await?;
    phases.push(usage_row(pid, &format!("{} KernelJobs created", p.kernel_jobs), t.elapsed().as_secs_f64())?);
    // Bounded: the footprint is the point (every job is in the caches once created); how
    // many finished in the time is reported with it.
    let done = finished.wait(p.kernel_jobs, Duration::from_secs(FOOTPRINT_FINISH_SECS)).await;
    watch_task.abort();
    phases.push(usage_row(pid, &format!("{done} KernelJobs finished"), t.elapsed().as_secs_f64())?);
    let last = stats::proc_usage(pid)?;
    let controller_timings = ctl.timings().await;
    let succeeded = finished.snapshot().values().filter(|(_, ph)| ph == "Succeeded").count();
    if !p.throwaway {
        // While the controller runs (it releases the finalizers).
        rig::delete_all_jobs(&jobs, Duration::from_secs(120)).await;
    }
    Ok(json!({
        "nodes": p.nodes,
        "pods": p.nodes * GPUS_PER_NODE,
        "kernel_jobs": p.kernel_jobs,
        "source_bytes_per_job": p.source_bytes,
        "kernel_jobs_finished": done,
        "finish_wait_secs": FOOTPRINT_FINISH_SECS,
        "kernel_jobs_succeeded": succeeded,
        "peak_rss_mib": last.peak_rss_bytes as f64 / 1048576.0,
        "cpu_secs": last.cpu.as_secs_f64(),
        "phases": phases,
        "controller_timings": controller_timings,
        "limits": {
            "org_per_min": crate::latency::UNCONSTRAINED_LIMIT, "user_per_min": crate::latency::UNCONSTRAINED_LIMIT,
            "what": "unconstrained: this scenario measures the controller's footprint, not Buildkite",
        },
    }))
}
