//! Scenario 1: Buildkite efficiency. N KernelJobs through A simulated agents (scripted,
//! fixed duration) under Buildkite's REST limits as they bind one token (200 requests per
//! minute per organization and 50 per user, scope `rest_user`: the user limit binds first),
//! with webhooks and polling only, against a per-build poller modelled on the seeds'
//! launcher, each with its own simulator. The baseline's simulator is explicitly
//! unconstrained: it counts what the launcher needs instead of refusing it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
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
use tokio::sync::{OnceCell, watch};

use crate::rig::{self, FinishWatch, RESULT_JSON, RESULT_SUMMARY, WEBHOOK_SECRET};

/// Buildkite's REST limit per organization (docs "REST API rate limits"), enforced by the
/// simulators of benchkite's runs.
pub const ORG_LIMIT_PER_MIN: u64 = 200;
/// Buildkite's REST limit per user (the token's user; scope `rest_user`, same docs page),
/// enforced by the simulators of benchkite's runs.
pub const USER_LIMIT_PER_MIN: u64 = 50;
/// What one token may send per minute: the lower of the two.
pub const TOKEN_LIMIT_PER_MIN: f64 =
    if USER_LIMIT_PER_MIN < ORG_LIMIT_PER_MIN { USER_LIMIT_PER_MIN as f64 } else { ORG_LIMIT_PER_MIN as f64 };
/// The baseline's simulator allows this many requests per minute in both scopes: it counts
/// what the launcher needs (it has no budget: under the real limits it would only collect
/// 429s and lose submissions).
pub const UNCONSTRAINED_PER_MIN: u64 = 10_000_000;
/// The deadline burst whose cost the scenario reports (submissions at once).
pub const DEADLINE_BURST: usize = 500;
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

    /// `spec.timeoutSeconds` of the scenario's KernelJobs: twice the ideal under the limit
    /// plus ten minutes, so that no job times out in the backlog and every one is measured
    /// (the default deadline of a test job, 13 minutes, is shorter than the time one token
    /// takes to create 1,000 builds; what fits it is reported apart).
    pub fn job_timeout_secs(&self) -> i64 {
        let secs = (self.ideal_under_limit_secs(TOKEN_LIMIT_PER_MIN) * 2.0 + 600.0).ceil();
        // The CRD accepts up to a week.
        if secs.is_finite() { (secs as i64).clamp(1, 604_800) } else { 604_800 }
    }

    /// The ideal once the REST limit counts too: one create per job, at most `per_min` per
    /// 60 s window (the first window opens with the burst), so the last build is created
    /// `floor((jobs − 1) ÷ per_min)` windows in and runs one duration; never below
    /// [`Params::ideal_secs`]. A model: it ignores every request but the creates, and a
    /// controller's first window may open (with its set-up requests) before the burst.
    pub fn ideal_under_limit_secs(&self, per_min: f64) -> f64 {
        let d = self.duration_ms as f64 / 1e3;
        let windows = if per_min >= 1.0 { ((self.jobs.max(1) - 1) as f64 / per_min.floor()).floor() } else { 0.0 };
        (windows * 60.0 + d).max(self.ideal_secs())
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

/// Buildkite's limits, both scopes on (the simulator's defaults, spelled out).
pub fn buildkite_limits() -> RateLimitConfig {
    RateLimitConfig { org_limit: ORG_LIMIT_PER_MIN, user_limit: USER_LIMIT_PER_MIN, window_secs: 60.0 }
}

/// The baseline's limits: explicitly unconstrained in both scopes (counted, never refused).
pub fn unconstrained_limits() -> RateLimitConfig {
    RateLimitConfig { org_limit: UNCONSTRAINED_PER_MIN, user_limit: UNCONSTRAINED_PER_MIN, window_secs: 60.0 }
}

/// The limits a simulator enforced, for the report.
fn limits_json(l: &RateLimitConfig, what: &str) -> Value {
    json!({"org_per_min": l.org_limit, "user_per_min": l.user_limit, "window_secs": l.window_secs, "what": what})
}

/// Requests to set things up rather than to run jobs: the token's scopes, clusters,
/// pipelines and organization settings (everything but builds and their artifacts).
fn is_setup(endpoint: &str) -> bool {
    !endpoint.contains("/builds")
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
    let setup: u64 =
        counters.endpoints.iter().filter(|(k, _)| k.contains(" /v2") && is_setup(k)).map(|(_, v)| v.total).sum();
    json!({
        "requests": rate.counted,
        "requests_per_job": rate.counted as f64 / jobs as f64,
        "setup_requests": setup,
        "http_429": rate.rejected,
        "after_429_before_reset": rate.after_429_before_reset,
        "by_endpoint": by_endpoint,
        "storage_requests": sim.storage_counters().total,
    })
}

/// The controller runs of one invocation measure their Kubernetes API writes over one shared
/// window. The API server's counters (`apiserver_request_total`) are server-wide and cannot
/// be split by run, so they are read once when every run is about to create its jobs and
/// once when every run has seen all its jobs finish (before any deletes its jobs): their
/// figure is both runs together ÷ all their jobs. The audit log, over the same window, tells
/// each run's controller apart by its User-Agent.
pub struct WriteWindow {
    members: watch::Sender<Members>,
    opened: OnceCell<Mark>,
    closed: OnceCell<Mark>,
    audit: OnceCell<Result<rig::AuditWrites, String>>,
}

/// The runs in a window: still in (registered), at the start line (ready), finished (done);
/// the jobs and controller identities of those that got to the start line.
#[derive(Default)]
struct Members {
    registered: usize,
    ready: usize,
    done: usize,
    jobs: usize,
    identities: Vec<String>,
}

/// One reading of the window's edge: when (ms), the API server's counters, and where the
/// audit log ended.
#[derive(Clone)]
pub struct Mark {
    pub at_ms: f64,
    pub counters: Result<rig::WriteCounts, String>,
    pub audit_offset: Result<u64, String>,
}

/// A run's place in a [`WriteWindow`]; leaving (dropped) releases the runs waiting for it.
pub struct Member<'a> {
    window: &'a WriteWindow,
    ready: bool,
    done: bool,
}

/// A job's last writes (its Events) follow the final status a watch sees: the window closes
/// this long after the last run saw its last job finish.
const SETTLE: Duration = Duration::from_secs(2);

impl Default for WriteWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteWindow {
    pub fn new() -> Self {
        WriteWindow {
            members: watch::Sender::new(Members::default()),
            opened: OnceCell::new(),
            closed: OnceCell::new(),
            audit: OnceCell::new(),
        }
    }

    /// Joins the window. Every run joins before any reaches [`Member::ready`] (they start
    /// together: join before the first `.await`).
    pub fn join(&self) -> Member<'_> {
        self.members.send_modify(|m| m.registered += 1);
        Member { window: self, ready: false, done: false }
    }

    async fn wait(&self, until: impl Fn(&Members) -> bool) {
        let mut rx = self.members.subscribe();
        // The sender lives as long as the window: the wait ends only on `until`.
        let _ = rx.wait_for(|m| until(m)).await;
    }

    /// The audit log's writes over the window, read once (after [`Member::done`]: call it
    /// when the run has cleaned up, so the log holds every request received in the window).
    pub async fn audit(&self, path: &Path) -> Result<rig::AuditWrites, String> {
        let (Some(opened), Some(closed)) = (self.opened.get(), self.closed.get()) else {
            return Err("the write window was never opened and closed".into());
        };
        let offset = opened.audit_offset.clone()?;
        let (path, from, to) = (path.to_path_buf(), opened.at_ms, closed.at_ms);
        self.audit
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || rig::read_audit_writes(&path, offset, from, to))
                    .await
                    .map_err(|e| format!("reading the audit log: {e}"))
                    .and_then(|r| r.map_err(|e| format!("{e:#}")))
            })
            .await
            .clone()
    }

    /// Both runs together: the API server's counters (every client) and the audit log (the
    /// runs' controllers; every writer) per KernelJob of all runs, over the window.
    pub fn all_runs(&self, audit: &Result<rig::AuditWrites, String>) -> Value {
        let (jobs, identities) = {
            let m = self.members.borrow();
            (m.jobs, m.identities.clone())
        };
        let (Some(opened), Some(closed)) = (self.opened.get(), self.closed.get()) else {
            return json!({"error": "the write window was never opened and closed"});
        };
        let counters = match (&opened.counters, &closed.counters) {
            (Ok(b), Ok(a)) => Ok(rig::counter_delta(b, a, jobs)),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        all_runs_figures(&counters, audit, &identities, jobs, (closed.at_ms - opened.at_ms) / 1e3)
    }
}

/// [`WriteWindow::all_runs`] from its parts.
fn all_runs_figures(
    counters: &Result<rig::WriteCounts, String>,
    audit: &Result<rig::AuditWrites, String>,
    identities: &[String],
    jobs: usize,
    window_secs: f64,
) -> Value {
    let mut out = json!({
        "runs": identities.len(), "jobs": jobs, "window_secs": window_secs,
        "counter_verbs": rig::METRIC_WRITE_VERBS, "audit_verbs": rig::AUDIT_WRITE_VERBS,
        "settle_secs": SETTLE.as_secs_f64(),
    });
    let missing = match (counters, audit) {
        (Ok(c), Ok(a)) => rig::unaudited(c, &rig::sum_writers(a, None)),
        _ => Vec::new(),
    };
    out["counters"] = match counters {
        Ok(c) => rig::per_job(c, jobs, &[]),
        Err(e) => json!({"error": e}),
    };
    match audit {
        Ok(a) => {
            out["audit_controllers"] = rig::per_job(&rig::sum_writers(a, Some(identities)), jobs, &missing);
            out["audit_all_writers"] = rig::per_job(&rig::sum_writers(a, None), jobs, &missing);
        }
        Err(e) => out["audit_controllers"] = json!({"error": e}),
    }
    out["not_audited"] = json!(missing);
    out
}

/// One run's controller writes per KernelJob from the window's audit log: the writes whose
/// User-Agent names `identity`, over `jobs` jobs; categories the cluster's audit policy does
/// not record (see [`rig::unaudited`], from the window's figures) are `null`.
fn run_figures(audit: &Result<rig::AuditWrites, String>, all_runs: &Value, identity: &str, jobs: usize) -> Value {
    let a = match audit {
        Ok(a) => a,
        Err(e) => return json!({"error": e}),
    };
    let missing: Vec<&str> = all_runs["not_audited"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|c| rig::WRITE_CATEGORIES.into_iter().find(|k| *k == c))
        .collect();
    let own = rig::sum_writers(a, Some(&[identity.to_string()]));
    if own.is_empty() && jobs > 0 {
        return json!({"error": format!(
            "the audit log has no write by User-Agent `benchkite/… ({identity})`: does the controller send it, \
             and does the cluster's audit policy (e2e/cluster/audit-policy.yaml) record KernelJob writes?"
        )});
    }
    let mut v = rig::per_job(&own, jobs, &missing);
    v["identity"] = json!(identity);
    v["verbs"] = json!(rig::AUDIT_WRITE_VERBS);
    v
}

impl Member<'_> {
    /// This run is about to create `jobs` KernelJobs, its controller sending `identity` in
    /// its User-Agent. Waits for every run still in, then returns the window's opening mark
    /// (`read` by the first run past the line, [`opening_mark`] in a scenario).
    pub async fn ready(&mut self, jobs: usize, identity: &str, read: impl Future<Output = Mark>) -> Mark {
        if !self.ready {
            self.ready = true;
            self.window.members.send_modify(|m| {
                m.ready += 1;
                m.jobs += jobs;
                m.identities.push(identity.to_string());
            });
        }
        self.window.wait(|m| m.ready >= m.registered).await;
        self.window.opened.get_or_init(|| read).await.clone()
    }

    /// This run saw all its jobs finish (or gave up). Waits for every run still in, then
    /// returns the window's closing mark (`read` by the first run past the line,
    /// [`closing_mark`] in a scenario).
    pub async fn done(&mut self, read: impl Future<Output = Mark>) -> Mark {
        if !self.done {
            self.done = true;
            self.window.members.send_modify(|m| m.done += 1);
        }
        self.window.wait(|m| m.done >= m.registered).await;
        self.window.closed.get_or_init(|| read).await.clone()
    }
}

/// Where the window opens: the audit log's end (first: every event of the window is after
/// it), the time, the API server's counters.
pub async fn opening_mark(client: &Client, audit_log: &Path) -> Mark {
    let audit_offset = rig::audit_log_len(audit_log).map_err(|e| format!("{e:#}"));
    let at_ms = rig::now_ms();
    let counters = rig::api_writes(client).await.map_err(|e| format!("{e:#}"));
    Mark { at_ms, counters, audit_offset }
}

/// Where the window closes: [`SETTLE`] from now, the time and the API server's counters.
pub async fn closing_mark(client: &Client) -> Mark {
    tokio::time::sleep(SETTLE).await;
    let at_ms = rig::now_ms();
    let counters = rig::api_writes(client).await.map_err(|e| format!("{e:#}"));
    Mark { at_ms, counters, audit_offset: Ok(0) }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        let (ready, done) = (self.ready, self.done);
        self.window.members.send_modify(|m| {
            m.registered -= 1;
            m.ready -= usize::from(ready);
            m.done -= usize::from(done);
        });
    }
}

/// The window of the controller runs `main` starts together (webhooks and polling only).
static WINDOW: LazyLock<WriteWindow> = LazyLock::new(WriteWindow::new);

/// One controller run: its own namespace, simulator (Buildkite's limits, both scopes) and
/// controller process (its default budget; the server's `RateLimit-User-Limit` tightens it).
/// Its API writes are measured in the invocation's shared [`WriteWindow`].
pub async fn controller_run(client: &Client, p: Params, webhooks: bool, tag: &str) -> Result<Value> {
    controller_run_in(&WINDOW, client, p, webhooks, tag).await
}

/// [`controller_run`] in `window`, which every run started at the same time shares.
pub async fn controller_run_in(
    window: &WriteWindow,
    client: &Client,
    p: Params,
    webhooks: bool,
    tag: &str,
) -> Result<Value> {
    // Before any `.await`: the runs started together all join before any opens the window.
    let mut member = window.join();
    let ns = rig::namespace(client, tag).await?;
    let port = rig::free_port()?;
    let http = format!("127.0.0.1:{port}");
    let webhook_url = webhooks.then(|| format!("http://{http}/webhooks/buildkite"));
    let limits = buildkite_limits();
    let sim = Simulator::start(sim_config(&p, limits.clone(), webhook_url)).await?;
    let args = rig::controller_args("kerneljob", ns.name(), &sim, &[]);
    let token = sim.api_token();
    // The controller's User-Agent names it (`benchkite/<version> (<POD_NAME>)`): the audit
    // log tells its writes from the other run's.
    let identity = format!("{}-controller", ns.name());
    let mut envs = vec![("BUILDKITE_API_TOKEN", token.as_str()), ("POD_NAME", identity.as_str())];
    if webhooks {
        envs.push(("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET));
    }
    let ctl = rig::start_controller(&format!("bench-{tag}"), &http, &args, &envs).await?;
    let api: Api<KernelJob> = ns.api();
    let (watch, watch_task) = FinishWatch::start(api.clone());
    let audit_log = rig::audit_log_path();
    member.ready(p.jobs, &identity, opening_mark(client, &audit_log)).await;
    let t0 = rig::now_ms();
    let deadline = p.job_timeout_secs();
    rig::create_jobs_with(&api, "kj", 0..p.jobs, 16, |name| {
        let mut j = rig::kernel_job(name, QUEUE, 0)?;
        j.spec.timeout_seconds = Some(deadline);
        Ok(j)
    })
    .await?;
    let created_ms = rig::now_ms() - t0;
    let timeout = Duration::from_secs_f64(p.ideal_under_limit_secs(TOKEN_LIMIT_PER_MIN) * 2.0 + 180.0);
    // A run in which no job finishes for five windows has stopped (a job takes one
    // duration once its build exists, and builds are created every window).
    let stall = Duration::from_secs(300) + Duration::from_millis(p.duration_ms) * 2;
    let done = watch.wait_progressing(p.jobs, timeout, stall).await;
    let seen = watch.snapshot();
    watch_task.abort();
    // Closed before any run deletes its jobs: deletions are not part of a job's life here.
    member.done(closing_mark(client)).await;
    let end = seen.values().map(|(t, _)| *t).fold(t0, f64::max);
    let succeeded = seen.values().filter(|(_, ph)| ph == "Succeeded").count();
    let mut report = request_report(&sim, p.jobs);
    let controller_usage = crate::stats::proc_usage(ctl.op.pid()).ok();
    let controller_timings = ctl.timings().await;
    if done < p.jobs {
        eprintln!(
            "warning: {tag}: only {done}/{} jobs finished (gave up after {timeout:?}, or {stall:?} without one finishing)",
            p.jobs
        );
    }
    let wall = (end - t0) / 1e3;
    let creates = sim.counters().endpoint(CREATE).status(201);
    // When each build was created (simulator clock, same process), read after the request
    // counts were taken and through /_sim, which counts nothing.
    let pipeline = rig::managed_pipeline(ns.name(), QUEUE);
    let mut created_at: Vec<f64> =
        rig::sim_builds(&sim, &pipeline, creates).await?.iter().filter_map(|b| rig::ts_ms(&b["created_at"])).collect();
    created_at.sort_by(f64::total_cmp);
    let mut finished_at: Vec<f64> = seen.values().map(|(t, _)| *t).collect();
    finished_at.sort_by(f64::total_cmp);
    let per_min = builds_per_minute(&created_at, t0);
    if let Some(o) = report.as_object_mut() {
        o.insert("mode".into(), json!(if webhooks { "webhooks" } else { "polling only" }));
        o.insert("limits".into(), limits_json(&limits, "Buildkite's defaults: 200/org and 50/user per 60 s"));
        o.insert("pipeline".into(), json!(pipeline));
        o.insert("jobs".into(), json!(p.jobs));
        o.insert("finished".into(), json!(done));
        o.insert("succeeded".into(), json!(succeeded));
        o.insert("builds_created".into(), json!(creates));
        o.insert("wall_secs".into(), json!(wall));
        o.insert("ideal_secs".into(), json!(p.ideal_secs()));
        o.insert("wall_over_ideal".into(), json!(wall / p.ideal_secs()));
        o.insert("ideal_under_limit_secs".into(), json!(p.ideal_under_limit_secs(TOKEN_LIMIT_PER_MIN)));
        o.insert("wall_over_ideal_under_limit".into(), json!(wall / p.ideal_under_limit_secs(TOKEN_LIMIT_PER_MIN)));
        o.insert("kj_create_secs".into(), json!(created_ms / 1e3));
        o.insert("controller_timings".into(), controller_timings);
        o.insert("wall_minutes".into(), json!(wall / 60.0));
        o.insert("controller_cpu_secs".into(), json!(controller_usage.map(|u| u.cpu.as_secs_f64())));
        o.insert(
            "controller_peak_rss_mib".into(),
            json!(controller_usage.map(|u| u.peak_rss_bytes as f64 / 1048576.0)),
        );
    }
    // Needs the counts above (wall minutes, requests by endpoint).
    let model = builds_per_minute_model(&report, TOKEN_LIMIT_PER_MIN);
    let burst = burst_cost(&created_at, &finished_at, t0, per_min.or(Some(model)), DEADLINE_BURST);
    let default_deadline = benchkite::kerneljob::machine::timeout(&rig::kernel_job("x", QUEUE, 0)?.spec);
    if let Some(o) = report.as_object_mut() {
        o.insert("builds_per_minute".into(), json!(per_min));
        o.insert("builds_per_minute_model".into(), json!(model));
        o.insert("deadline_burst".into(), burst);
        o.insert("kernel_job_timeout_secs".into(), json!(deadline));
        o.insert("default_test_deadline_secs".into(), json!(default_deadline.as_secs()));
        o.insert(
            "burst_within_default_deadline".into(),
            json!(burst_within(per_min.unwrap_or(model), default_deadline.as_secs_f64(), p.duration_ms as f64 / 1e3)),
        );
    }
    rig::delete_all_jobs(&api, Duration::from_secs(60)).await;
    // After the clean-up: by now the log holds every request received in the window.
    let audit = window.audit(&audit_log).await;
    let all_runs = window.all_runs(&audit);
    if let Some(o) = report.as_object_mut() {
        o.insert("controller_writes_per_job".into(), run_figures(&audit, &all_runs, &identity, p.jobs));
        o.insert("api_writes_all_runs".into(), all_runs);
        o.insert("audit_log".into(), json!(audit_log.display().to_string()));
    }
    drop(member);
    drop(ctl);
    sim.shutdown().await;
    rig::drop_namespace(ns).await;
    Ok(report)
}

/// Which runs did not see all `jobs` through (`"succeeded"`, else `"finished"`, below it), as
/// one message.
pub fn incomplete(runs: &[(&str, &Value)], jobs: usize) -> Option<String> {
    let short: Vec<String> = runs
        .iter()
        .filter_map(|(name, v)| {
            let (key, done) = match v["succeeded"].as_u64() {
                Some(n) => ("succeeded", n),
                None => ("finished", v["finished"].as_u64().unwrap_or(0)),
            };
            (done < jobs as u64).then(|| format!("{name}: {done}/{jobs} jobs {key}"))
        })
        .collect();
    (!short.is_empty()).then(|| format!("incomplete runs ({}); their figures are not comparable", short.join(", ")))
}

/// Builds created per minute of the burst: the creates in whole 60 s buckets counted from
/// `t0` (the first KernelJob create) up to the last create, divided by those minutes (the
/// last, partial minute left out). `None` when every build was created within a minute.
pub fn builds_per_minute(created_ms: &[f64], t0: f64) -> Option<f64> {
    let last = created_ms.iter().copied().fold(f64::NAN, f64::max);
    let minutes = ((last - t0) / 60_000.0).floor();
    if minutes.is_nan() || minutes < 1.0 {
        return None;
    }
    let end = t0 + minutes * 60_000.0;
    Some(created_ms.iter().filter(|t| **t < end).count() as f64 / minutes)
}

/// Most submissions at once whose builds one token creates (at `per_min` a minute) early
/// enough to finish a `job_secs` run within a deadline of `deadline_secs` from submission;
/// the rest time out waiting for the budget.
pub fn burst_within(per_min: f64, deadline_secs: f64, job_secs: f64) -> f64 {
    (per_min * ((deadline_secs - job_secs).max(0.0) / 60.0)).floor()
}

/// What a burst of `n` submissions at once costs: minutes from the burst until the n-th
/// build was created and until the n-th job finished, measured when the run had `n` jobs,
/// else (`"measured": false`) the build time modelled as `n ÷ builds per minute`.
pub fn burst_cost(created_ms: &[f64], finished_ms: &[f64], t0: f64, per_min: Option<f64>, n: usize) -> Value {
    let nth = |v: &[f64]| v.get(n.wrapping_sub(1)).map(|t| (t - t0) / 60_000.0);
    match nth(created_ms) {
        Some(built) => json!({
            "submissions": n, "measured": true,
            "minutes_to_last_build": built, "minutes_to_last_finished": nth(finished_ms),
        }),
        None => json!({
            "submissions": n, "measured": false,
            "minutes_to_last_build": per_min.map(|r| n as f64 / r), "minutes_to_last_finished": null,
        }),
    }
}

/// The pipeline the baseline creates for itself.
const BASELINE_PIPELINE: &str = "seeds-launcher";

pub const CREATE: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";
const GET_BUILD: &str = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}";

/// The seeds' launcher: every job posts its build, GETs it every 10 s until it is
/// terminal, then lists its artifacts and downloads `result.json` (following the
/// redirect to storage without the token). All jobs start at once, like N submissions.
/// Its builds go to a pipeline that routes on real Buildkite (created first over REST:
/// the queue named literally, no checkout); the launcher's own `KERNELBOT_QUEUE` build env
/// would route nothing. Its simulator is explicitly unconstrained in both scopes (counted,
/// never refused: the launcher has no budget and under the real limits would only collect
/// 429s), so the requests it needs are measured, not its failures.
pub async fn baseline_run(p: Params) -> Result<Value> {
    let limits = unconstrained_limits();
    let sim = Simulator::start(sim_config(&p, limits.clone(), None)).await?;
    let pipeline = rig::create_routable_pipeline(&sim, BASELINE_PIPELINE, QUEUE).await?;
    // The set-up is not the launcher's: count from here.
    sim.reset_counters();
    sim.reset_rate_limit();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let base = format!("{}/organizations/{}/pipelines/{pipeline}", sim.api_url(), sim.organization());
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
                    "env": {"KERNELBOT_PAYLOAD": "eJyrrgUAAXUA+Q=="},
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
        o.insert(
            "limits".into(),
            limits_json(&limits, "unconstrained: the simulator counts the launcher's requests and refuses none"),
        );
        o.insert("pipeline".into(), json!(pipeline));
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

/// Largest number of concurrent jobs of `job_secs` each that a client sustains with one
/// token (`per_min` requests per minute: Buildkite's user limit, 50), from measured rates.
///
/// Controller: per job it spends `f` requests (everything but its poll lists and one-time
/// set-up), plus `L` list requests per minute whatever the load: C = (limit − L) ÷ f × job
/// minutes. Baseline: every build in flight costs `p` polls per minute plus `f_b` fixed
/// requests (create, artifact list, download) per job: C = limit ÷ (p + f_b ÷ job minutes).
pub fn sustainable(controller: &Value, baseline: &Value, job_secs: f64, per_min: f64) -> (f64, f64) {
    let minutes = job_secs / 60.0;
    let (per_job, list_rate) = steady_costs(controller);
    let c_controller = (per_min - list_rate).max(0.0) / per_job.max(1e-9) * minutes;
    let p = num(baseline, "build_polls_per_build_minute");
    let f_b = num(baseline, "fixed_requests_per_job");
    let c_baseline = per_min / (p + f_b / minutes);
    (c_controller, c_baseline)
}

/// A controller run's steady costs from its measured requests: requests per job other than
/// poll lists and one-time set-up, and poll lists per minute of the run.
fn steady_costs(controller: &Value) -> (f64, f64) {
    let jobs = num(controller, "jobs");
    let list_key = |k: &str| k.starts_with("GET ") && k.ends_with("/builds");
    let lists: f64 = controller["by_endpoint"]
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| list_key(k)).map(|(_, v)| num(v, "total")).sum())
        .unwrap_or(0.0);
    let setup = controller["setup_requests"].as_f64().unwrap_or(0.0);
    let per_job = (num(controller, "requests") - lists - setup) / jobs;
    (per_job, lists / num(controller, "wall_minutes").max(1e-9))
}

/// Builds one token can create per minute by the model: what the limit leaves after the
/// poll lists, divided by the requests each job needs.
pub fn builds_per_minute_model(controller: &Value, per_min: f64) -> f64 {
    let (per_job, list_rate) = steady_costs(controller);
    (per_min - list_rate).max(0.0) / per_job.max(1e-9)
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
        let (c, b) = sustainable(&controller, &baseline, 60.0, 200.0);
        assert!((c - 195.0).abs() < 1e-9, "{c}");
        assert!((b - 200.0 / 9.0).abs() < 1e-9, "{b}");
        // One token: 50/min, and set-up requests are not per job.
        let mut with_setup = controller.clone();
        with_setup["requests"] = json!(1054);
        with_setup["setup_requests"] = json!(4);
        let (c, b) = sustainable(&with_setup, &baseline, 60.0, 50.0);
        assert!((c - 45.0).abs() < 1e-9, "{c}");
        assert!((b - 50.0 / 9.0).abs() < 1e-9, "{b}");
        // 50/min less 5 lists/min, one request per job: 45 builds a minute.
        assert!((builds_per_minute_model(&with_setup, 50.0) - 45.0).abs() < 1e-9);
        assert!((baseline_requests_per_job(&baseline, 60.0) - 10.0).abs() < 1e-9);
        assert!((baseline_requests_per_job(&baseline, 30.0) - 7.0).abs() < 1e-9);
    }

    #[test]
    fn the_limits_are_buildkites_and_the_simulators_defaults() {
        let d = RateLimitConfig::default();
        let b = buildkite_limits();
        assert_eq!((b.org_limit, b.user_limit, b.window_secs), (200, 50, 60.0));
        assert_eq!((d.org_limit, d.user_limit, d.window_secs), (b.org_limit, b.user_limit, b.window_secs));
        assert!((TOKEN_LIMIT_PER_MIN - 50.0).abs() < 1e-9);
        let u = unconstrained_limits();
        assert!(u.user_limit > 0 && u.org_limit > 0, "unconstrained means a limit out of reach, never 0 (off)");
    }

    #[test]
    fn setup_requests_are_everything_but_builds() {
        assert!(is_setup("GET /v2/access-token"));
        assert!(is_setup("POST /v2/organizations/{org}/pipelines"));
        assert!(is_setup("GET /v2/organizations/{org}/clusters"));
        assert!(!is_setup(CREATE));
        assert!(!is_setup("GET /v2/organizations/{org}/pipelines/{pipeline}/builds"));
        assert!(!is_setup("GET /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}/artifacts"));
    }

    #[test]
    fn a_run_that_did_not_finish_its_jobs_is_reported() {
        let all = json!({"finished": 60});
        let none = json!({"finished": 0});
        assert_eq!(incomplete(&[("webhooks", &all), ("baseline", &all)], 60), None);
        let msg = incomplete(&[("webhooks", &all), ("polling only", &none)], 60).unwrap_or_default();
        assert!(msg.contains("polling only: 0/60 jobs finished"), "{msg}");
        assert!(!msg.contains("webhooks"), "{msg}");
        // Jobs that finished by timing out do not count.
        let timed_out = json!({"finished": 60, "succeeded": 40});
        let msg = incomplete(&[("webhooks", &timed_out)], 60).unwrap_or_default();
        assert!(msg.contains("webhooks: 40/60 jobs succeeded"), "{msg}");
    }

    #[test]
    fn builds_per_minute_counts_whole_minutes_of_the_burst() {
        // 50 at once, 50 a minute later, 10 in the third minute: two whole minutes.
        let t0 = 1_000.0;
        let mut created: Vec<f64> = (0..50).map(|i| t0 + 100.0 + f64::from(i)).collect();
        created.extend((0..50).map(|i| t0 + 61_000.0 + f64::from(i)));
        created.extend((0..10).map(|i| t0 + 122_000.0 + f64::from(i)));
        assert_eq!(builds_per_minute(&created, t0), Some(50.0));
        // Within one minute: no whole minute to measure.
        assert_eq!(builds_per_minute(&created[..50], t0), None);
        assert_eq!(builds_per_minute(&[], t0), None);
    }

    #[test]
    fn a_burst_is_measured_when_the_run_had_enough_jobs_else_modelled() {
        let t0 = 0.0;
        let created: Vec<f64> = (0..600).map(|i| f64::from(i) * 1_200.0).collect();
        let finished: Vec<f64> = created.iter().map(|t| t + 30_000.0).collect();
        let m = burst_cost(&created, &finished, t0, Some(50.0), 500);
        assert_eq!(m["measured"], json!(true));
        assert!((m["minutes_to_last_build"].as_f64().unwrap_or(0.0) - 9.98).abs() < 1e-9, "{m}");
        assert!((m["minutes_to_last_finished"].as_f64().unwrap_or(0.0) - 10.48).abs() < 1e-9, "{m}");
        let small = burst_cost(&created[..60], &finished[..60], t0, Some(50.0), 500);
        assert_eq!(small["measured"], json!(false));
        assert_eq!(small["minutes_to_last_build"], json!(10.0));
        assert!(small["minutes_to_last_finished"].is_null());
    }

    #[test]
    fn the_burst_within_a_deadline_leaves_time_for_the_last_run() {
        // 50 a minute, 13 minutes, 30 s runs: 12.5 minutes of creates.
        assert!((burst_within(50.0, 780.0, 30.0) - 625.0).abs() < 1e-9);
        assert!((burst_within(50.0, 20.0, 30.0)).abs() < 1e-9, "no time at all");
    }

    #[test]
    fn the_scenarios_jobs_outlive_the_backlog() {
        let p = Params { jobs: 1000, duration_ms: 30_000, agents: 64 };
        // 1,170 s to create and run them all at 50/min: the deadline is well past it.
        assert_eq!(p.job_timeout_secs(), 2 * 1170 + 600);
        let huge = Params { jobs: 10_000_000, duration_ms: 30_000, agents: 64 };
        assert_eq!(huge.job_timeout_secs(), 604_800, "the CRD's largest");
    }

    #[test]
    fn the_ideal_under_the_limit_waits_for_windows() {
        let p = Params { jobs: 1000, duration_ms: 30_000, agents: 64 };
        // 999 ÷ 50 = 19 more windows after the first, then one job.
        assert!((p.ideal_under_limit_secs(50.0) - (19.0 * 60.0 + 30.0)).abs() < 1e-9);
        // Fewer jobs than the limit: the agents' ideal.
        let q = Params { jobs: 40, duration_ms: 5_000, agents: 64 };
        assert!((q.ideal_under_limit_secs(50.0) - 5.0).abs() < 1e-9);
        // A limit that never binds leaves the agents' ideal.
        assert!((p.ideal_under_limit_secs(1e9) - p.ideal_secs()).abs() < 1e-9);
    }

    fn mark(at_ms: f64, counters: &[(&'static str, f64)]) -> Mark {
        Mark { at_ms, counters: Ok(counters.iter().copied().collect()), audit_offset: Ok(0) }
    }

    #[tokio::test]
    async fn the_runs_share_one_window_read_once() {
        let window = WriteWindow::new();
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let read = |at: f64| {
            let reads = &reads;
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                mark(at, &[])
            }
        };
        let (mut a, mut b) = (window.join(), window.join());
        // Neither opens the window before both are at the start line.
        let (ma, mb) = tokio::join!(a.ready(10, "a", read(1.0)), b.ready(20, "b", read(2.0)));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one reading for both runs");
        assert_eq!(ma.at_ms, mb.at_ms);
        let (ca, cb) = tokio::join!(a.done(read(5.0)), b.done(read(6.0)));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(ca.at_ms, cb.at_ms);
        let m = window.members.borrow();
        assert_eq!((m.jobs, m.identities.clone()), (30, vec!["a".to_string(), "b".to_string()]));
    }

    #[tokio::test]
    async fn a_run_that_fails_releases_the_others() {
        let window = WriteWindow::new();
        let mut a = window.join();
        let b = window.join();
        drop(b); // failed before its start line
        let m = a.ready(1, "a", async { mark(1.0, &[]) }).await;
        assert_eq!(m.at_ms, 1.0);
        let mut c = window.join();
        let mut d = window.join();
        let (opened, _) =
            tokio::join!(c.ready(1, "c", async { mark(9.0, &[]) }), d.ready(1, "d", async { mark(9.0, &[]) }));
        assert_eq!(opened.at_ms, 1.0, "the window opens once");
        drop(d); // failed after its start line
        // `a` and `c` are done; the window closes without waiting for the ones that left.
        let (x, y) = tokio::join!(a.done(async { mark(3.0, &[]) }), c.done(async { mark(4.0, &[]) }));
        assert_eq!(x.at_ms, y.at_ms);
    }

    #[test]
    fn each_run_counts_only_its_own_controllers_writes() {
        let w = |status: f64, events: f64, cms: f64| {
            rig::WriteCounts::from([("kerneljob_status", status), ("events", events), ("configmaps", cms)])
        };
        // Webhooks: 2 writes a job; polling: 5 (over 10 jobs each); another client wrote 4 Events.
        let audit: rig::AuditWrites = [
            ("wh".to_string(), w(10.0, 5.0, 5.0)),
            ("po".to_string(), w(30.0, 10.0, 10.0)),
            ("other:kube-controller-manager".to_string(), rig::WriteCounts::from([("events", 4.0)])),
        ]
        .into();
        let ids = ["wh".to_string(), "po".to_string()];
        // The server counted everyone's: 74 writes besides the creates over both runs' 20 jobs.
        let counters = rig::WriteCounts::from([("kerneljob_status", 40.0), ("events", 19.0), ("configmaps", 15.0)]);
        let all = all_runs_figures(&Ok(counters), &Ok(audit.clone()), &ids, 20, 60.0);
        assert_eq!(all["counters"]["total"], json!(74.0 / 20.0));
        assert_eq!(all["audit_controllers"]["total"], json!(70.0 / 20.0), "the two controllers, together");
        assert_eq!(all["audit_all_writers"]["total"], json!(74.0 / 20.0), "agrees with the counters");
        let wh = run_figures(&Ok(audit.clone()), &all, "wh", 10);
        let po = run_figures(&Ok(audit.clone()), &all, "po", 10);
        assert_eq!(wh["total"], json!(2.0), "{wh}");
        assert_eq!(wh["kerneljob_status"], json!(1.0));
        assert_eq!(wh["configmaps"], json!(0.5));
        assert_eq!(po["total"], json!(5.0), "{po}");
        assert_eq!(wh["complete"], json!(true));
        // A controller the log never saw is an error, not 0 writes.
        assert!(run_figures(&Ok(audit), &all, "nobody", 10)["error"].is_string());
    }

    #[test]
    fn writes_the_cluster_does_not_audit_are_not_counted_as_none() {
        // The counters saw ConfigMap writes, the audit log none by anyone: an old policy.
        let audit: rig::AuditWrites = [("wh".to_string(), rig::WriteCounts::from([("kerneljob_status", 10.0)]))].into();
        let counters = rig::WriteCounts::from([("kerneljob_status", 10.0), ("configmaps", 10.0)]);
        let all = all_runs_figures(&Ok(counters), &Ok(audit.clone()), &["wh".to_string()], 10, 1.0);
        assert_eq!(all["not_audited"], json!(["configmaps"]));
        let wh = run_figures(&Ok(audit), &all, "wh", 10);
        assert_eq!(wh["configmaps"], Value::Null);
        assert_eq!(wh["complete"], json!(false));
        assert_eq!(wh["total"], json!(1.0));
    }

    #[test]
    fn ideal_is_at_least_one_job() {
        assert!((Params { jobs: 1000, duration_ms: 30_000, agents: 64 }.ideal_secs() - 468.75).abs() < 1e-9);
        assert!((Params { jobs: 10, duration_ms: 5_000, agents: 64 }.ideal_secs() - 5.0).abs() < 1e-9);
    }
}
