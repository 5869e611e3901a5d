//! Scenario 6: the GraphQL burst (issue 21). N KernelJobs created at once through two
//! benchkite controllers at the same time, each with its own simulator, token and agents,
//! both under Buildkite's REST limits (200/min per organization, 50/min per user): one whose
//! token may use GraphQL (`--buildkite-graphql auto`, the simulator's documented budget of
//! 20,000 points per 300 s), one REST only (`--buildkite-graphql off`, a token without the
//! `graphql` scope). The REST-only run cannot create thousands of builds in reasonable time
//! (about 48 a minute): it is measured until the GraphQL run has finished all its jobs or
//! until a cap, whichever is later, and its rate is taken over the whole minutes it ran.
//! Every figure comes from the simulators' own counters and builds, not the controllers'.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use benchkite::api::KernelJob;
use buildkite_sim::config::{
    AgentPoolConfig, DEFAULT_TOKEN_SCOPES, ExecutorConfig, RateLimitConfig, ScriptedConfig, WebhookAuth, WebhookConfig,
};
use buildkite_sim::counters::CountersSnapshot;
use buildkite_sim::ratelimit::RateLimitStats;
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::{Barrier, watch};

use crate::rig::{self, FinishWatch, RESULT_JSON, RESULT_SUMMARY, WEBHOOK_SECRET};

mod report;
pub use report::markdown;

/// Target of issue 21: the GraphQL run creates builds at least this many times as fast as
/// the REST-only run.
pub const TARGET_RATIO: f64 = 10.0;
/// Target of issue 21: builds created per minute by the GraphQL run (10 × ~48).
pub const TARGET_PER_MIN: f64 = 480.0;
/// Target of issue 21: REST requests per job left on the GraphQL run.
pub const TARGET_REST_PER_JOB: f64 = 1.05;
/// Numbers of builds whose time of existence the report gives (those ≤ the jobs).
pub const MILESTONES: [usize; 6] = [50, 100, 200, 500, 1000, 2000];
/// Longest wait for the REST window of the controller's set-up to close (one window, 60 s,
/// and a margin).
pub const REST_WINDOW_WAIT: Duration = Duration::from_secs(75);
/// How long a run waits for its controller-mate at the start line before starting alone.
const START_LINE: Duration = Duration::from_secs(300);

const QUEUE: &str = "bench-gql";

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub jobs: usize,
    pub duration_ms: u64,
    /// Simulated agents of each simulator.
    pub agents: u32,
    /// The REST-only run is measured at least this long (from its first KernelJob create),
    /// and longer while the GraphQL run has not finished.
    pub rest_cap: Duration,
}

impl Params {
    /// How long the GraphQL run waits for its jobs: three times what the target rate needs
    /// to create them, one duration, and three minutes.
    pub fn graphql_timeout(&self) -> Duration {
        let create_secs = self.jobs as f64 / TARGET_PER_MIN * 60.0;
        Duration::from_secs_f64(create_secs * 3.0 + self.duration_ms as f64 / 1e3 + 180.0)
    }

    /// `spec.timeoutSeconds` of the KernelJobs: as scenario 1 (twice the ideal under the
    /// REST limit, plus ten minutes), so that no job times out waiting for a budget.
    pub fn job_timeout_secs(&self) -> i64 {
        crate::efficiency::Params { jobs: self.jobs, duration_ms: self.duration_ms, agents: self.agents }
            .job_timeout_secs()
    }
}

/// Which client path a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Graphql,
    RestOnly,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Graphql => "graphql",
            Path::RestOnly => "rest_only",
        }
    }
}

/// The token's scopes: the simulator's defaults, plus `graphql` for the GraphQL run.
pub fn token_scopes(path: Path) -> Vec<String> {
    let mut s: Vec<String> = DEFAULT_TOKEN_SCOPES.iter().map(|s| s.to_string()).collect();
    if path == Path::Graphql {
        s.push("graphql".into());
    }
    s
}

/// A simulator with Buildkite's REST limits and GraphQL budget (the simulator's defaults,
/// `RateLimitConfig::default()` and the default GraphQL config), the scripted executor of
/// scenario 1 and `p.agents` agents on the queue.
fn sim_config(p: &Params, path: Path, webhook: String) -> SimConfig {
    let mut cfg = SimConfig {
        executor: ExecutorConfig::Scripted(ScriptedConfig {
            duration_ms: p.duration_ms,
            exit_status: 0,
            result_json: Some(RESULT_JSON.to_string()),
            meta_data: [(benchkite::contract::summary::META_DATA_KEY.to_string(), RESULT_SUMMARY.to_string())].into(),
            cancel_ms: 100,
        }),
        rate_limit: RateLimitConfig::default(),
        ..Default::default()
    };
    if let Some(token) = cfg.api_tokens.first().cloned() {
        cfg.api_token_scopes.insert(token, token_scopes(path));
    }
    cfg.clusters[0].queues.push(QUEUE.into());
    cfg.agents.push(AgentPoolConfig { queue: QUEUE.into(), count: p.agents, ..Default::default() });
    cfg.webhooks.push(WebhookConfig {
        url: webhook,
        token: WEBHOOK_SECRET.into(),
        auth: WebhookAuth::Signature,
        ..Default::default()
    });
    cfg
}

/// The simulator's GraphQL endpoint: `/v1` on its API listener.
pub fn graphql_url(sim: &SimHandle) -> String {
    format!("{}/v1", sim.api_root())
}

/// The controller flags of a run's path.
pub fn path_args(path: Path, url: &str) -> Vec<String> {
    match path {
        Path::Graphql => {
            vec!["--buildkite-graphql".into(), "auto".into(), "--buildkite-graphql-url".into(), url.to_string()]
        }
        Path::RestOnly => vec!["--buildkite-graphql".into(), "off".into()],
    }
}

/// `GET /_sim/graphql`: the simulator's GraphQL budget and counters; `None` when it has no
/// such endpoint.
async fn sim_graphql(sim: &SimHandle) -> Option<Value> {
    let resp = reqwest::get(format!("{}/graphql", sim.sim_url())).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// Builds created per minute over the whole minutes from `t0` (the first KernelJob create)
/// until `end`: the builds created before the last whole minute ends, ÷ those minutes.
/// `None` when less than a minute passed.
pub fn rate_over_whole_minutes(created_ms: &[f64], t0: f64, end: f64) -> Option<f64> {
    let minutes = ((end - t0) / 60_000.0).floor();
    if minutes.is_nan() || minutes < 1.0 {
        return None;
    }
    let until = t0 + minutes * 60_000.0;
    Some(created_ms.iter().filter(|t| **t < until).count() as f64 / minutes)
}

/// Builds per minute from the first build to the last: (n − 1) ÷ their distance.
pub fn first_to_last_per_minute(created_ms: &[f64]) -> Option<f64> {
    let first = created_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let last = created_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (created_ms.len() >= 2 && last > first).then(|| (created_ms.len() - 1) as f64 / ((last - first) / 60_000.0))
}

/// The creation rate the ratio compares, and what it is: over whole minutes (from the first
/// KernelJob create to `end`) when the run lasted one, else every build ÷ the time from the
/// first KernelJob create to the last build (a run shorter than a minute; includes the
/// controller's reaction time, so it errs low).
pub fn creation_rate(created_ms: &[f64], t0: f64, end: f64) -> (Option<f64>, &'static str) {
    if let Some(r) = rate_over_whole_minutes(created_ms, t0, end) {
        return (Some(r), "whole minutes");
    }
    let last = created_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let rate = (last > t0).then(|| created_ms.len() as f64 / ((last - t0) / 60_000.0));
    (rate, "first KernelJob create to last build (under a minute)")
}

/// Seconds from `t0` until the n-th build existed, for each milestone up to `jobs` (and
/// `jobs` itself); `null` for those not reached. `created_ms` sorted.
pub fn secs_to_nth(created_ms: &[f64], t0: f64, jobs: usize) -> Value {
    let mut ns: Vec<usize> = MILESTONES.iter().copied().filter(|n| *n <= jobs).collect();
    if !ns.contains(&jobs) && jobs > 0 {
        ns.push(jobs);
    }
    let m: serde_json::Map<String, Value> =
        ns.into_iter().map(|n| (n.to_string(), json!(created_ms.get(n - 1).map(|t| (t - t0) / 1e3)))).collect();
    Value::Object(m)
}

/// Builds per attempt (run id, from the branch `benchkite/<instance>/<run id>` benchkite
/// builds each attempt on); builds on another branch count under `"?"`.
pub fn builds_per_attempt(builds: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for b in builds {
        let run = b["branch"]
            .as_str()
            .and_then(|br| br.strip_prefix(benchkite::kerneljob::board::BRANCH_PREFIX))
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, run)| run.to_string())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "?".into());
        *out.entry(run).or_insert(0) += 1;
    }
    out
}

/// The duplicate figures of [`builds_per_attempt`]: attempts with more than one build, the
/// most builds of one attempt, builds without an attempt.
pub fn duplicates(per_attempt: &BTreeMap<String, usize>) -> Value {
    let dup: Vec<(&String, &usize)> = per_attempt.iter().filter(|(k, n)| *k != "?" && **n > 1).collect();
    json!({
        "attempts": per_attempt.keys().filter(|k| *k != "?").count(),
        "attempts_with_more_than_one_build": dup.len(),
        "max_builds_per_attempt": per_attempt.iter().filter(|(k, _)| *k != "?").map(|(_, n)| *n).max().unwrap_or(0),
        "builds_without_attempt": per_attempt.get("?").copied().unwrap_or(0),
        "examples": dup.iter().take(5).map(|(k, n)| json!({"run_id": k, "builds": n})).collect::<Vec<_>>(),
    })
}

/// GraphQL figures of a run per job, from `/_sim/graphql` (`null` without one).
pub fn graphql_figures(g: Option<&Value>, jobs: usize) -> Value {
    let Some(g) = g else { return json!({"available": false}) };
    let n = jobs.max(1) as f64;
    let per = |k: &str| g[k].as_f64().map(|x| x / n);
    json!({
        "available": true,
        "requests": g["requests"], "requests_per_job": per("requests"),
        "requested_points": g["requested_points_total"], "requested_points_per_job": per("requested_points_total"),
        "actual_points": g["actual_points_total"], "actual_points_per_job": per("actual_points_total"),
        "executed": g["executed"],
        "http_429": g["rejected_429"], "http_429_user": g["rejected_429_user"],
        "rejected_complexity": g["rejected_complexity"], "rejected_invalid": g["rejected_invalid"],
        "rejected_auth": g["rejected_auth"],
        "by_operation": g["by_operation"], "http": g["http"],
        "limits": {"points_limit": g["points_limit"], "user_points_limit": g["user_points_limit"],
                   "window_secs": g["window_secs"], "max_query_complexity": g["max_query_complexity"]},
        "window_used_at_end": g["window_used"], "window_remaining_at_end": g["window_remaining"],
    })
}

/// REST figures of a simulator's counters: requests counted against the limits, 429s, by
/// endpoint (`/v2` only), set-up (everything but builds), per `per` (jobs, or builds of a cut
/// run).
fn rest_figures(counters: &CountersSnapshot, rate: &RateLimitStats, per: usize) -> Value {
    let n = per.max(1) as f64;
    let rest = |k: &String| k.contains(" /v2");
    let by_endpoint: BTreeMap<&String, u64> =
        counters.endpoints.iter().filter(|(k, _)| rest(k)).map(|(k, v)| (k, v.total)).collect();
    let setup: u64 =
        counters.endpoints.iter().filter(|(k, _)| rest(k) && !k.contains("/builds")).map(|(_, v)| v.total).sum();
    json!({
        "requests": rate.counted, "requests_per_job": rate.counted as f64 / n,
        "setup_requests": setup,
        "requests_per_job_without_setup": rate.counted.saturating_sub(setup) as f64 / n,
        "http_429": rate.rejected,
        "by_endpoint": by_endpoint,
    })
}

/// Waits until the simulator's REST window is closed (no request counted in a current
/// window), at most `max`; returns how long it waited.
pub async fn rest_window_closed(sim: &SimHandle, max: Duration) -> Duration {
    let start = Instant::now();
    while sim.rate_limit_stats().current_window_count > 0 && start.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// Whether the REST-only run stops measuring now: all its jobs finished, or the cap passed
/// and the GraphQL run is done (finished, gave up or failed).
pub fn rest_run_stops(all_finished: bool, cap_passed: bool, graphql_done: bool) -> bool {
    all_finished || (cap_passed && graphql_done)
}

/// The two runs of the scenario at once; the scenario's JSON.
pub async fn run(client: &Client, p: Params) -> Result<Value> {
    let barrier = Arc::new(Barrier::new(2));
    let (done_tx, done_rx) = watch::channel(false);
    let (g, r) = tokio::join!(
        controller_run(client, p, Path::Graphql, Arc::clone(&barrier), Some(done_tx), None),
        controller_run(client, p, Path::RestOnly, barrier, None, Some(done_rx)),
    );
    let (g, r) = (
        g.unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
        r.unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
    );
    let ratio = g["creation_rate_per_min"].as_f64().zip(r["creation_rate_per_min"].as_f64()).map(|(a, b)| a / b);
    Ok(json!({
        "jobs": p.jobs, "job_secs": p.duration_ms as f64 / 1e3, "agents": p.agents,
        "rest_cap_secs": p.rest_cap.as_secs_f64(),
        "rest_limits": {"org_per_min": RateLimitConfig::default().org_limit,
                        "user_per_min": RateLimitConfig::default().user_limit,
                        "window_secs": RateLimitConfig::default().window_secs},
        "targets": {"ratio": TARGET_RATIO, "per_min": TARGET_PER_MIN, "rest_per_job": TARGET_REST_PER_JOB},
        "ratio_graphql_over_rest": ratio,
        "graphql": g, "rest_only": r,
    }))
}

/// What makes the scenario's figures not comparable: an error in a run, GraphQL jobs not
/// all succeeded, REST-only jobs that finished otherwise than Succeeded.
pub fn failure(v: &Value) -> Option<String> {
    let mut why = Vec::new();
    for (name, run) in [("GraphQL", &v["graphql"]), ("REST only", &v["rest_only"])] {
        if let Some(e) = run["error"].as_str() {
            why.push(format!("{name} run failed: {e}"));
        }
    }
    let g = &v["graphql"];
    if g["error"].is_null() && g["succeeded"].as_u64() != v["jobs"].as_u64() {
        why.push(format!("GraphQL run: {}/{} jobs succeeded", g["succeeded"], v["jobs"]));
    }
    let r = &v["rest_only"];
    if r["error"].is_null() && r["succeeded"] != r["finished"] {
        why.push(format!("REST-only run: {} of {} finished jobs succeeded", r["succeeded"], r["finished"]));
    }
    (!why.is_empty()).then(|| format!("{}; the figures are not comparable", why.join("; ")))
}

/// One run: its namespace, simulator, token, controller and KernelJobs. The GraphQL run
/// says when it is done on `done`; the REST-only run is cut by `graphql_done` (see
/// [`rest_run_stops`]).
async fn controller_run(
    client: &Client,
    p: Params,
    path: Path,
    start_line: Arc<Barrier>,
    done: Option<watch::Sender<bool>>,
    graphql_done: Option<watch::Receiver<bool>>,
) -> Result<Value> {
    let outcome = controller_run_inner(client, p, path, &start_line, graphql_done).await;
    if let Some(d) = done {
        // Also when the run failed: the REST-only run then stops at its cap.
        let _ = d.send(true);
    }
    outcome
}

async fn controller_run_inner(
    client: &Client,
    p: Params,
    path: Path,
    start_line: &Barrier,
    graphql_done: Option<watch::Receiver<bool>>,
) -> Result<Value> {
    let mut waited_at_start = false;
    let run = async {
        let tag = if path == Path::Graphql { "gql" } else { "gql-rest" };
        let ns = rig::namespace(client, tag).await?;
        let http = format!("127.0.0.1:{}", rig::free_port()?);
        let sim = match Simulator::start(sim_config(&p, path, format!("http://{http}/webhooks/buildkite"))).await {
            Ok(sim) => sim,
            Err(e) => {
                rig::drop_namespace(ns).await;
                return Err(e);
            }
        };
        let outcome = measure(&ns, &sim, &http, p, path, start_line, &mut waited_at_start, graphql_done).await;
        if !waited_at_start {
            // Failed before the start line: release the other run before cleaning up.
            waited_at_start = true;
            start_line.wait().await;
        }
        sim.shutdown().await;
        rig::drop_namespace(ns).await;
        outcome
    };
    let outcome = run.await;
    if !waited_at_start {
        // Failed before even starting its simulator.
        start_line.wait().await;
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    ns: &benchkite_e2e::TestNamespace,
    sim: &SimHandle,
    http: &str,
    p: Params,
    path: Path,
    start_line: &Barrier,
    waited_at_start: &mut bool,
    graphql_done: Option<watch::Receiver<bool>>,
) -> Result<Value> {
    let url = graphql_url(sim);
    // A binary without the flag is REST only: its REST-only run needs no flag.
    let flags = if rig::controller_supports("--buildkite-graphql") {
        path_args(path, &url)
    } else if path == Path::RestOnly {
        Vec::new()
    } else {
        bail!(
            "the controller binary ({}) has no --buildkite-graphql flag",
            benchkite_e2e::operator::binary().map(|b| b.display().to_string()).unwrap_or_default()
        );
    };
    let extra = flags.clone();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let args = rig::controller_args("kerneljob", ns.name(), sim, &extra);
    let token = sim.api_token();
    let identity = format!("{}-controller", ns.name());
    let envs = [
        ("BUILDKITE_API_TOKEN", token.as_str()),
        ("POD_NAME", identity.as_str()),
        ("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    let ctl = rig::start_controller(&format!("bench-{}", ns.name()), http, &args, &envs).await?;
    let api: Api<KernelJob> = ns.api();
    let (watch, watch_task) = FinishWatch::start(api.clone());
    // The REST window the controller's set-up opened closes before the burst: the first
    // create opens a fresh one, so each whole minute from the first KernelJob create holds
    // one window (else the first minute would hold the set-up window's rest and the next).
    let rest_window_wait_secs = rest_window_closed(sim, REST_WINDOW_WAIT).await.as_secs_f64();
    // Both runs create their jobs at the same time (the other may have failed: not forever).
    *waited_at_start = true;
    if tokio::time::timeout(START_LINE, start_line.wait()).await.is_err() {
        eprintln!("warning: {}: the other run did not reach the start line; starting alone", path.name());
    }
    let t0 = rig::now_ms();
    let deadline = p.job_timeout_secs();
    rig::create_jobs_with(&api, "kj", 0..p.jobs, 16, |name| {
        let mut j = rig::kernel_job(name, QUEUE, 0)?;
        j.spec.timeout_seconds = Some(deadline);
        Ok(j)
    })
    .await?;
    let kj_create_secs = (rig::now_ms() - t0) / 1e3;
    let cut = match graphql_done {
        None => {
            let stall = Duration::from_secs(300) + Duration::from_millis(p.duration_ms) * 2;
            watch.wait_progressing(p.jobs, p.graphql_timeout(), stall).await;
            false
        }
        Some(mut done) => {
            let cap_at = Instant::now() + p.rest_cap.saturating_sub(Duration::from_secs_f64(kj_create_secs));
            loop {
                let finished = watch.count() >= p.jobs;
                // A dropped sender is a finished GraphQL run too.
                let g_done = *done.borrow_and_update() || done.has_changed().is_err();
                if rest_run_stops(finished, Instant::now() >= cap_at, g_done) {
                    break !finished;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // The end of the measurement: counters and finished jobs now, builds created before now.
    let stop = rig::now_ms();
    let (counters, rate_stats) = (sim.counters(), sim.rate_limit_stats());
    let seen = watch.snapshot();
    watch_task.abort();
    let graphql = sim_graphql(sim).await;
    let controller_timings = ctl.timings().await;
    let usage = crate::stats::proc_usage(ctl.op.pid()).ok();
    let builds_total = sim.stats()["builds_total"].as_u64().unwrap_or(0);
    let pipeline = rig::managed_pipeline(ns.name(), QUEUE);
    let mut builds = rig::sim_builds(sim, &pipeline, builds_total).await?;
    builds.retain(|b| rig::ts_ms(&b["created_at"]).is_some_and(|t| t < stop));
    let mut created: Vec<f64> = builds.iter().filter_map(|b| rig::ts_ms(&b["created_at"])).collect();
    created.sort_by(f64::total_cmp);
    // A cut run is figured per build it created, a finished one per job.
    let per = if cut { created.len() } else { p.jobs };
    let mut report = rest_figures(&counters, &rate_stats, per);
    // A cut run's whole minutes run to the cut, a finished one's to its last build.
    let end = if cut { stop } else { created.last().copied().unwrap_or(t0) };
    let (rate, basis) = creation_rate(&created, t0, end);
    let finished = seen.len();
    let succeeded = seen.values().filter(|(_, ph)| ph == "Succeeded").count();
    let per_attempt = builds_per_attempt(&builds);
    if let Some(o) = report.as_object_mut() {
        o.insert("mode".into(), json!(path.name()));
        o.insert("controller_flags".into(), json!(flags));
        o.insert("token_has_graphql_scope".into(), json!(path == Path::Graphql));
        o.insert("pipeline".into(), json!(pipeline));
        o.insert("jobs".into(), json!(p.jobs));
        o.insert("cut".into(), json!(cut));
        o.insert("measured_secs".into(), json!((stop - t0) / 1e3));
        o.insert("per".into(), json!(if cut { "build created" } else { "job" }));
        o.insert("builds_created".into(), json!(created.len()));
        o.insert("finished".into(), json!(finished));
        o.insert("succeeded".into(), json!(succeeded));
        o.insert("kj_create_secs".into(), json!(kj_create_secs));
        o.insert("rest_window_wait_secs".into(), json!(rest_window_wait_secs));
        o.insert("creation_rate_per_min".into(), json!(rate));
        o.insert("creation_rate_basis".into(), json!(basis));
        o.insert("builds_per_whole_minute".into(), json!(rate_over_whole_minutes(&created, t0, end)));
        o.insert("first_to_last_per_min".into(), json!(first_to_last_per_minute(&created)));
        o.insert("secs_to_nth_build".into(), secs_to_nth(&created, t0, p.jobs));
        o.insert("secs_to_last_build".into(), json!(created.last().map(|t| (t - t0) / 1e3)));
        o.insert("graphql".into(), graphql_figures(graphql.as_ref(), per));
        o.insert("duplicates".into(), duplicates(&per_attempt));
        o.insert("controller_timings".into(), controller_timings);
        o.insert("controller_cpu_secs".into(), json!(usage.map(|u| u.cpu.as_secs_f64())));
        o.insert("controller_peak_rss_mib".into(), json!(usage.map(|u| u.peak_rss_bytes as f64 / 1048576.0)));
        o.insert("controller_log".into(), json!(ctl.op.log.display().to_string()));
    }
    if cut {
        // Stop the controller first: its jobs without a build would only be created now.
        drop(ctl);
        rig::delete_all_jobs(&api, Duration::from_secs(20)).await;
    } else {
        rig::delete_all_jobs(&api, Duration::from_secs(60)).await;
        drop(ctl);
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
