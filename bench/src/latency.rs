//! Scenario 2: latency. KernelJob created (client clock, just before the create is sent)
//! → build created (simulator clock, ms; same process, same clock), and build finished
//! (the simulator sends `build.finished` at once, no delivery delay) → KernelJob status
//! finished (seen by a watch). Under a steady rate and a burst. This scenario measures the
//! controller and the Kubernetes API server, not Buildkite: the simulator's organization
//! AND user limits and the controller's budget are explicitly unconstrained (far above the
//! load, never off), so the budget is never the bottleneck. Under Buildkite's real limits a
//! token creates about 50 builds a minute: scenario 1 measures that.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use benchkite::api::KernelJob;
use buildkite_sim::Simulator;
use buildkite_sim::config::{
    AgentPoolConfig, ExecutorConfig, RateLimitConfig, ScriptedConfig, WebhookAuth, WebhookConfig,
};
use futures::StreamExt;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::rig::{self, FinishWatch, RESULT_SUMMARY, WEBHOOK_SECRET};
use crate::stats::quantile;

/// Requests per minute allowed by the simulator (organization and user scope alike) and
/// given to the controller here: "unconstrained", far above any load of the bench.
pub const UNCONSTRAINED_LIMIT: u32 = 1_000_000;

/// The simulator limits of scenarios that measure the API server rather than Buildkite:
/// both scopes on, both out of reach.
pub fn unconstrained() -> RateLimitConfig {
    let l = u64::from(UNCONSTRAINED_LIMIT);
    RateLimitConfig { org_limit: l, user_limit: l, window_secs: 60.0 }
}

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub rate_per_sec: f64,
    pub steady_secs: f64,
    pub burst: usize,
    pub agents: u32,
    pub duration_ms: u64,
}

const QUEUE: &str = "bench-lat";

fn pcts(v: &[f64]) -> Value {
    json!({
        "n": v.len(),
        "p50_ms": quantile(v, 0.5), "p95_ms": quantile(v, 0.95), "p99_ms": quantile(v, 0.99),
        "max_ms": quantile(v, 1.0),
    })
}

/// Create → build and finish → status latencies for the jobs in `created`.
fn latencies(
    created: &HashMap<String, f64>,
    builds: &HashMap<String, (f64, Option<f64>)>,
    seen: &HashMap<String, (f64, String)>,
) -> Value {
    let mut to_build = Vec::new();
    let mut to_status = Vec::new();
    for (name, t_create) in created {
        if let Some((b_created, b_finished)) = builds.get(name) {
            to_build.push(b_created - t_create);
            if let (Some(fin), Some((seen_at, _))) = (b_finished, seen.get(name)) {
                to_status.push(seen_at - fin);
            }
        }
    }
    json!({"create_to_build": pcts(&to_build), "finish_to_status": pcts(&to_status), "jobs": created.len()})
}

/// Submit workers when the request budget is not the limit (scenarios 2 and 4).
pub const SUBMIT_WORKERS: &str = "32";

pub async fn run(client: &Client, p: Params) -> Result<Value> {
    let ns = rig::namespace(client, "lat").await?;
    let http = format!("127.0.0.1:{}", rig::free_port()?);
    let mut cfg = buildkite_sim::SimConfig {
        executor: ExecutorConfig::Scripted(ScriptedConfig {
            duration_ms: p.duration_ms,
            meta_data: [(benchkite::contract::META_DATA_KEY.to_string(), RESULT_SUMMARY.to_string())].into(),
            ..Default::default()
        }),
        rate_limit: unconstrained(),
        ..Default::default()
    };
    cfg.clusters[0].queues.push(QUEUE.into());
    cfg.agents.push(AgentPoolConfig { queue: QUEUE.into(), count: p.agents, ..Default::default() });
    cfg.webhooks.push(WebhookConfig {
        url: format!("http://{http}/webhooks/buildkite"),
        token: WEBHOOK_SECRET.into(),
        auth: WebhookAuth::Signature,
        ..Default::default()
    });
    let sim = Simulator::start(cfg).await?;
    let limit = UNCONSTRAINED_LIMIT.to_string();
    // The budget is out of the way here, so the submitters are set for throughput.
    let args = rig::controller_args(
        "kerneljob",
        ns.name(),
        &sim,
        &["--buildkite-requests-per-minute", &limit, "--submit-workers", SUBMIT_WORKERS],
    );
    let token = sim.api_token();
    let envs = [("BUILDKITE_API_TOKEN", token.as_str()), ("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET)];
    let ctl = rig::start_controller("bench-latency", &http, &args, &envs).await?;
    let api: Api<KernelJob> = ns.api();
    let (watch, watch_task) = FinishWatch::start(api.clone());

    // Steady: one create every 1/rate s, each on its own task so a slow create does not
    // delay the next.
    let n_steady = (p.rate_per_sec * p.steady_secs).round() as usize;
    let start = tokio::time::Instant::now();
    let steady: Vec<Result<(String, f64)>> = futures::stream::iter(0..n_steady)
        .map(|i| {
            let api = api.clone();
            async move {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / p.rate_per_sec)).await;
                rig::create_job(&api, &format!("steady-{i:05}"), QUEUE).await
            }
        })
        .buffer_unordered(n_steady.max(1))
        .collect()
        .await;
    let steady: HashMap<String, f64> = steady.into_iter().collect::<Result<_>>()?;
    let achieved_rate = n_steady as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let wait = Duration::from_secs(120 + p.duration_ms / 1000 * 4);
    watch.wait(n_steady, wait).await;

    // Burst: everything at once (64 creates in flight from this client).
    let burst = rig::create_jobs(&api, "burst", 0..p.burst, QUEUE, 0, 64).await?;
    watch.wait(n_steady + p.burst, wait + Duration::from_secs(p.burst as u64 / 5)).await;
    let seen = watch.snapshot();
    watch_task.abort();

    let mut builds: HashMap<String, (f64, Option<f64>)> = HashMap::new();
    let creates = sim.counters().endpoint(crate::efficiency::CREATE).status(201);
    for b in rig::sim_builds(&sim, &rig::managed_pipeline(ns.name(), QUEUE), creates).await? {
        let Some(name) = b["meta_data"][benchkite::kerneljob::machine::meta::JOB]
            .as_str()
            .and_then(|k| k.split_once('/'))
            .map(|(_, n)| n.to_string())
        else {
            continue;
        };
        if let Some(c) = rig::ts_ms(&b["created_at"]) {
            builds.insert(name, (c, rig::ts_ms(&b["finished_at"])));
        }
    }
    let rate = sim.rate_limit_stats();
    let controller_timings = ctl.timings().await;
    let report = json!({
        "controller_timings": controller_timings,
        "steady": latencies(&steady, &builds, &seen),
        "burst": latencies(&burst, &builds, &seen),
        "target_rate_per_sec": p.rate_per_sec,
        "achieved_rate_per_sec": achieved_rate,
        "steady_secs": p.steady_secs,
        "burst_size": p.burst,
        "agents": p.agents,
        "job_duration_ms": p.duration_ms,
        "rate_limit_per_min": UNCONSTRAINED_LIMIT,
        "limits": {
            "org_per_min": UNCONSTRAINED_LIMIT, "user_per_min": UNCONSTRAINED_LIMIT,
            "what": "unconstrained: this scenario measures the controller and the API server, not Buildkite",
        },
        "requests": rate.counted,
        "http_429": rate.rejected,
        "finished": seen.len(),
    });
    rig::delete_all_jobs(&api, Duration::from_secs(60)).await;
    drop(ctl);
    sim.shutdown().await;
    rig::drop_namespace(ns).await;
    Ok(report)
}
