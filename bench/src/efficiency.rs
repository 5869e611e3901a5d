//! Scenario 1: Buildkite efficiency. N KernelJobs through A simulated agents (scripted,
//! fixed duration) under Buildkite's 200 requests/minute, with webhooks and polling only,
//! against a per-build poller modelled on the seeds' launcher, each with its own simulator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use benchkite::api::KernelJob;
use buildkite_sim::config::{
    AgentPoolConfig, ExecutorConfig, RateLimitConfig, ScriptedConfig, WebhookAuth, WebhookConfig,
};
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use futures::StreamExt;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::rig::{self, FinishWatch, RESULT_JSON, RESULT_SUMMARY, WEBHOOK_SECRET};

/// Buildkite's documented limit, which the simulators of this scenario enforce.
pub const BUILDKITE_LIMIT_PER_MIN: f64 = 200.0;
/// The seeds' launcher polls each build this often.
pub const BASELINE_POLL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub jobs: usize,
    pub duration_ms: u64,
    pub agents: u32,
}

impl Params {
    /// jobs × duration ÷ agents (at least one duration), seconds.
    pub fn ideal_secs(&self) -> f64 {
        let d = self.duration_ms as f64 / 1e3;
        (self.jobs as f64 * d / f64::from(self.agents.max(1))).max(d)
    }
}

const QUEUE: &str = "bench-eff";

fn sim_config(p: &Params, limit: RateLimitConfig, webhook: Option<String>) -> SimConfig {
    let mut cfg = SimConfig {
        executor: ExecutorConfig::Scripted(ScriptedConfig {
            duration_ms: p.duration_ms,
            exit_status: 0,
            result_json: Some(RESULT_JSON.to_string()),
            meta_data: [(benchkite::contract::summary::META_DATA_KEY.to_string(), RESULT_SUMMARY.to_string())].into(),
            cancel_ms: 100,
        }),
        rate_limit: limit,
        ..Default::default()
    };
    cfg.clusters[0].queues.push(QUEUE.into());
    cfg.agents.push(AgentPoolConfig { queue: QUEUE.into(), count: p.agents, ..Default::default() });
    if let Some(url) = webhook {
        cfg.webhooks.push(WebhookConfig {
            url,
            token: WEBHOOK_SECRET.into(),
            auth: WebhookAuth::Signature,
            ..Default::default()
        });
    }
    cfg
}

fn buildkite_limit() -> RateLimitConfig {
    RateLimitConfig { org_limit: BUILDKITE_LIMIT_PER_MIN as u64, user_limit: 0, window_secs: 60.0 }
}

/// Requests by endpoint, 429s, totals of one simulator.
fn request_report(sim: &SimHandle, jobs: usize) -> Value {
    let counters = sim.counters();
    let rate = sim.rate_limit_stats();
    let by_endpoint: BTreeMap<String, Value> = counters
        .endpoints
        .iter()
        .filter(|(k, _)| k.contains(" /v2"))
        .map(|(k, v)| {
            (k.clone(), json!({"total": v.total, "per_job": v.total as f64 / jobs as f64, "by_status": v.by_status}))
        })
        .collect();
    json!({
        "requests": rate.counted,
        "requests_per_job": rate.counted as f64 / jobs as f64,
        "http_429": rate.rejected,
        "after_429_before_reset": rate.after_429_before_reset,
        "by_endpoint": by_endpoint,
        "storage_requests": sim.storage_counters().total,
    })
}

/// One controller run: its own namespace, simulator (200/minute) and controller process.
pub async fn controller_run(client: &Client, p: Params, webhooks: bool, tag: &str) -> Result<Value> {
    let ns = rig::namespace(client, tag).await?;
    let port = rig::free_port()?;
    let http = format!("127.0.0.1:{port}");
    let webhook_url = webhooks.then(|| format!("http://{http}/webhooks/buildkite"));
    let sim = Simulator::start(sim_config(&p, buildkite_limit(), webhook_url)).await?;
    let args = rig::controller_args("kerneljob", ns.name(), &sim, &[]);
    let token = sim.api_token();
    let mut envs = vec![("BUILDKITE_API_TOKEN", token.as_str())];
    if webhooks {
        envs.push(("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET));
    }
    let ctl = rig::start_controller(&format!("bench-{tag}"), &http, &args, &envs).await?;
    let api: Api<KernelJob> = ns.api();
    let (watch, watch_task) = FinishWatch::start(api.clone());
    let t0 = rig::now_ms();
    rig::create_jobs(&api, "kj", 0..p.jobs, QUEUE, 0, 16).await?;
    let created_ms = rig::now_ms() - t0;
    let timeout = Duration::from_secs_f64(p.ideal_secs() * 4.0 + 180.0);
    let done = watch.wait(p.jobs, timeout).await;
    let seen = watch.snapshot();
    watch_task.abort();
    let end = seen.values().map(|(t, _)| *t).fold(t0, f64::max);
    let succeeded = seen.values().filter(|(_, ph)| ph == "Succeeded").count();
    let mut report = request_report(&sim, p.jobs);
    let controller_usage = crate::stats::proc_usage(ctl.op.pid()).ok();
    let controller_timings = ctl.timings().await;
    if done < p.jobs {
        eprintln!("warning: {tag}: only {done}/{} jobs finished within {timeout:?}", p.jobs);
    }
    let wall = (end - t0) / 1e3;
    let creates = sim.counters().endpoint(CREATE).status(201);
    if let Some(o) = report.as_object_mut() {
        o.insert("mode".into(), json!(if webhooks { "webhooks" } else { "polling only" }));
        o.insert("jobs".into(), json!(p.jobs));
        o.insert("finished".into(), json!(done));
        o.insert("succeeded".into(), json!(succeeded));
        o.insert("builds_created".into(), json!(creates));
        o.insert("wall_secs".into(), json!(wall));
        o.insert("ideal_secs".into(), json!(p.ideal_secs()));
        o.insert("wall_over_ideal".into(), json!(wall / p.ideal_secs()));
        o.insert("kj_create_secs".into(), json!(created_ms / 1e3));
        o.insert("controller_timings".into(), controller_timings);
        o.insert("wall_minutes".into(), json!(wall / 60.0));
        o.insert("controller_cpu_secs".into(), json!(controller_usage.map(|u| u.cpu.as_secs_f64())));
        o.insert(
            "controller_peak_rss_mib".into(),
            json!(controller_usage.map(|u| u.peak_rss_bytes as f64 / 1048576.0)),
        );
    }
    rig::delete_all_jobs(&api, Duration::from_secs(60)).await;
    drop(ctl);
    sim.shutdown().await;
    rig::drop_namespace(ns).await;
    Ok(report)
}

pub const CREATE: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";
const GET_BUILD: &str = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}";

/// The seeds' launcher: every job posts its build, GETs it every 10 s until it is
/// terminal, then lists its artifacts and downloads `result.json` (following the
/// redirect to storage without the token). All jobs start at once, like N submissions.
/// The simulator counts but does not limit (the launcher has no budget: under 200/min
/// it would just see 429s), so the requests it needs are measured, not its failures.
pub async fn baseline_run(p: Params) -> Result<Value> {
    let unlimited = RateLimitConfig { org_limit: 10_000_000, user_limit: 0, window_secs: 60.0 };
    let sim = Simulator::start(sim_config(&p, unlimited, None)).await?;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let base = format!("{}/organizations/{}/pipelines/kernelbot", sim.api_url(), sim.organization());
    let token = sim.api_token();
    let lifetime_ms = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..p.jobs)
        .map(|i| {
            let (http, base, token, lifetime_ms) =
                (http.clone(), base.clone(), token.clone(), Arc::clone(&lifetime_ms));
            async move {
                let body = json!({
                    "commit": "HEAD", "branch": "main", "message": format!("baseline {i}"),
                    "env": {"KERNELBOT_QUEUE": QUEUE, "KERNELBOT_PAYLOAD": "eJyrrgUAAXUA+Q=="},
                });
                let created = Instant::now();
                let build: Value = http
                    .post(format!("{base}/builds"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let number = build["number"].as_u64().context("build number")?;
                loop {
                    tokio::time::sleep(BASELINE_POLL).await;
                    let b: Value = json_of(http.get(format!("{base}/builds/{number}")).bearer_auth(&token)).await?;
                    let state = b["state"].as_str().unwrap_or_default();
                    if matches!(state, "passed" | "failed" | "canceled" | "skipped" | "not_run") {
                        break;
                    }
                }
                lifetime_ms.fetch_add(created.elapsed().as_millis() as u64, Ordering::Relaxed);
                let arts: Vec<Value> =
                    json_of(http.get(format!("{base}/builds/{number}/artifacts")).bearer_auth(&token)).await?;
                let art = arts.iter().find(|a| a["filename"] == "result.json").context("no result.json artifact")?;
                let dl = art["download_url"].as_str().context("download_url")?;
                let redirect = http.get(dl).bearer_auth(&token).send().await?;
                let location = redirect
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .context("no redirect to storage")?
                    .to_string();
                let result = http.get(location).send().await?.error_for_status()?.text().await?;
                if !result.contains("\"success\"") {
                    bail!("result.json of build {number} is not a result");
                }
                Ok(())
            }
        })
        .buffer_unordered(p.jobs.max(1))
        .collect()
        .await;
    let wall = t0.elapsed().as_secs_f64();
    let failed: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
    if let Some(e) = failed.first() {
        eprintln!("warning: baseline: {} jobs failed, first: {e}", failed.len());
    }
    let counters = sim.counters();
    let gets = counters.endpoint(GET_BUILD).total as f64;
    let build_minutes = lifetime_ms.load(Ordering::Relaxed) as f64 / 60_000.0;
    let mut report = request_report(&sim, p.jobs);
    if let Some(o) = report.as_object_mut() {
        o.insert("mode".into(), json!("baseline: poll each build every 10 s, then artifact list + download"));
        o.insert("jobs".into(), json!(p.jobs));
        o.insert("finished".into(), json!(p.jobs - failed.len()));
        o.insert("wall_secs".into(), json!(wall));
        o.insert("ideal_secs".into(), json!(p.ideal_secs()));
        o.insert("wall_over_ideal".into(), json!(wall / p.ideal_secs()));
        o.insert(
            "build_polls_per_build_minute".into(),
            json!(if build_minutes > 0.0 { gets / build_minutes } else { 0.0 }),
        );
        o.insert(
            "fixed_requests_per_job".into(),
            json!((counters.total_with_prefix("") as f64 - gets) / p.jobs as f64),
        );
    }
    sim.shutdown().await;
    Ok(report)
}

/// Sends a request and reads a successful answer as JSON.
async fn json_of<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T> {
    Ok(req.send().await?.error_for_status()?.json().await?)
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// Largest number of concurrent jobs of `job_secs` each that a client sustains under 200
/// requests/minute, from measured rates.
///
/// Controller: per job it spends `f` requests (everything but the shared poll list), plus
/// `L` list requests per minute whatever the load: C = (200 − L) ÷ f × job minutes.
/// Baseline: every build in flight costs `p` polls per minute plus `f_b` fixed requests
/// (create, artifact list, download) per job: C = 200 ÷ (p + f_b ÷ job minutes).
pub fn sustainable(controller: &Value, baseline: &Value, job_secs: f64) -> (f64, f64) {
    let minutes = job_secs / 60.0;
    let jobs = num(controller, "jobs");
    let list_key = |k: &str| k.starts_with("GET ") && k.ends_with("/builds");
    let lists: f64 = controller["by_endpoint"]
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| list_key(k)).map(|(_, v)| num(v, "total")).sum())
        .unwrap_or(0.0);
    let per_job = (num(controller, "requests") - lists) / jobs;
    let list_rate = lists / num(controller, "wall_minutes").max(1e-9);
    let c_controller = (BUILDKITE_LIMIT_PER_MIN - list_rate).max(0.0) / per_job.max(1e-9) * minutes;
    let p = num(baseline, "build_polls_per_build_minute");
    let f_b = num(baseline, "fixed_requests_per_job");
    let c_baseline = BUILDKITE_LIMIT_PER_MIN / (p + f_b / minutes);
    (c_controller, c_baseline)
}

/// Requests per job of the baseline for jobs of `job_secs` that never queue: the fixed
/// requests plus one poll per 10 s until terminal (the first poll after 10 s).
pub fn baseline_requests_per_job(baseline: &Value, job_secs: f64) -> f64 {
    num(baseline, "fixed_requests_per_job") + (job_secs / BASELINE_POLL.as_secs_f64()).floor() + 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustainable_concurrency_from_measured_rates() {
        // 1000 jobs: 1000 creates + 50 poll lists over 10 minutes (5 lists/min).
        let controller = json!({
            "jobs": 1000, "requests": 1050, "wall_minutes": 10.0,
            "by_endpoint": {
                "GET /v2/organizations/{org}/builds": {"total": 50},
                "POST /v2/organizations/{org}/pipelines/{pipeline}/builds": {"total": 1000},
            },
        });
        // 6 polls per build-minute, 3 fixed requests per job.
        let baseline = json!({"build_polls_per_build_minute": 6.0, "fixed_requests_per_job": 3.0});
        let (c, b) = sustainable(&controller, &baseline, 60.0);
        assert!((c - 195.0).abs() < 1e-9, "{c}");
        assert!((b - 200.0 / 9.0).abs() < 1e-9, "{b}");
        assert!((baseline_requests_per_job(&baseline, 60.0) - 10.0).abs() < 1e-9);
        assert!((baseline_requests_per_job(&baseline, 30.0) - 7.0).abs() < 1e-9);
    }

    #[test]
    fn ideal_is_at_least_one_job() {
        assert!((Params { jobs: 1000, duration_ms: 30_000, agents: 64 }.ideal_secs() - 468.75).abs() < 1e-9);
        assert!((Params { jobs: 10, duration_ms: 5_000, agents: 64 }.ideal_secs() - 5.0).abs() < 1e-9);
    }
}
