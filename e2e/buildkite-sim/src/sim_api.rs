//! `/_sim/…`: introspection and run-time control (not part of the Buildkite API; no auth,
//! no rate limit, not counted, no faults).

// Route helpers return the error answer itself (`Result<_, Response>`): it is built once and
// sent as is, so boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::{ApiPath, error, json_response, not_found, op_error};
use crate::config::RepositoryVisibility;
use crate::config::{
    AgentPoolConfig, EndpointFault, ExecutorConfig, FaultConfig, OutageConfig, PipelineConfig, RateLimitConfig,
    WebhookConfig,
};
use crate::model::{AgentMode, BuildState, JobState};
use crate::render::Ctx;
use crate::sim::Sim;
use crate::state::{ExternalFinish, InfraFailure, InfraRule};

pub fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/_sim/health", get(health))
        .route("/_sim/urls", get(urls))
        .route("/_sim/stats", get(stats))
        .route("/_sim/counters", get(counters).delete(reset_counters))
        .route("/_sim/rate_limit", get(rate_limit).put(set_rate_limit).delete(reset_rate_limit))
        .route("/_sim/faults", get(faults).put(set_faults))
        .route("/_sim/faults/endpoint", put(set_endpoint_fault))
        .route("/_sim/outage", get(outage).post(start_outage).delete(end_outage))
        .route("/_sim/agents", get(agents).post(register_agent))
        .route("/_sim/agents/pools", get(pools).put(set_pool))
        .route("/_sim/agents/{id}", axum::routing::delete(remove_agent))
        .route("/_sim/agents/{id}/gpu", put(set_agent_gpu))
        .route("/_sim/jobs/{id}", get(job))
        .route("/_sim/jobs/{id}/finish", post(finish_job))
        .route("/_sim/jobs/{id}/fail", post(fail_job))
        .route("/_sim/infra_failures", get(infra_rules).post(add_infra_rule).delete(clear_infra_rules))
        .route("/_sim/webhooks", get(webhooks).post(add_webhook))
        .route("/_sim/webhooks/{id}", put(update_webhook).delete(remove_webhook))
        .route("/_sim/pipelines", get(pipelines).post(add_pipeline))
        .route("/_sim/pipelines/{pipeline}/builds/{number}", get(build))
        .route("/_sim/builds/{id}/state", post(force_state))
        .route("/_sim/builds/{id}/artifacts/state", post(build_artifacts_state))
        .route("/_sim/jobs/{id}/state", post(force_job_state))
        .route("/_sim/artifacts/{id}/state", post(artifact_state))
        .route("/_sim/tokens", get(tokens).post(create_token))
        .route("/_sim/repositories", get(repositories).put(set_repository))
        .route("/_sim/executor", get(executor).put(set_executor))
        .route("/_sim/settings", get(settings).put(set_settings))
        .merge(crate::graphql::sim_routes::router())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")))
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn health() -> Response {
    ok(&json!({"ok": true}))
}

async fn urls(State(sim): State<Arc<Sim>>) -> Response {
    ok(&json!({
        "api_url": sim.urls.v2(),
        "agent_url": format!("{}/v3", sim.urls.api_root),
        "storage_url": sim.urls.storage_root,
        "sim_url": format!("{}/_sim", sim.urls.api_root),
        "organization": sim.org_slug,
    }))
}

pub fn stats_json(sim: &Sim) -> Value {
    let inner = sim.lock();
    let mut builds: BTreeMap<&str, u64> = BTreeMap::new();
    for b in inner.builds.values() {
        *builds.entry(b.state.as_str()).or_default() += 1;
    }
    let mut agents: BTreeMap<&str, u64> = BTreeMap::new();
    let mut busy = 0u64;
    for a in inner.agents.values() {
        *agents.entry(a.connection_state.as_str()).or_default() += 1;
        busy += u64::from(a.job.is_some());
    }
    let pending: usize = inner.pending.values().map(std::collections::VecDeque::len).sum();
    json!({
        "requests": to_json(&sim.counters.snapshot()),
        "storage_requests": to_json(&sim.storage_counters.snapshot()),
        "rate_limit": {"config": to_json(&sim.rate.config()), "stats": to_json(&sim.rate.stats())},
        "webhooks": to_json(&sim.webhooks.totals()),
        "webhook_events_produced": sim.webhooks.events_seen.load(Ordering::Relaxed),
        "jobs": to_json(&inner.job_stats),
        "jobs_scheduled": pending,
        "builds_total": inner.builds.len(),
        "builds_by_state": builds,
        "agents_by_state": agents,
        "agents_busy": busy,
    })
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    ok(&stats_json(&sim))
}

async fn counters(State(sim): State<Arc<Sim>>) -> Response {
    ok(&json!({
        "api": to_json(&sim.counters.snapshot()),
        "storage": to_json(&sim.storage_counters.snapshot()),
    }))
}

async fn reset_counters(State(sim): State<Arc<Sim>>) -> Response {
    sim.counters.reset();
    sim.storage_counters.reset();
    ok(&json!({"ok": true}))
}

async fn rate_limit(State(sim): State<Arc<Sim>>) -> Response {
    ok(&json!({"config": to_json(&sim.rate.config()), "stats": to_json(&sim.rate.stats())}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitPatch {
    org_limit: Option<u64>,
    user_limit: Option<u64>,
    window_secs: Option<f64>,
    #[serde(default)]
    reset: bool,
}

async fn set_rate_limit(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let patch: RateLimitPatch = match parse(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut cfg: RateLimitConfig = sim.rate.config();
    if let Some(v) = patch.org_limit {
        cfg.org_limit = v;
    }
    if let Some(v) = patch.user_limit {
        cfg.user_limit = v;
    }
    if let Some(v) = patch.window_secs {
        if !(v.is_finite() && v > 0.0) {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "window_secs must be > 0");
        }
        cfg.window_secs = v;
    }
    sim.rate.set_config(cfg, patch.reset);
    ok(&json!({"config": to_json(&sim.rate.config()), "stats": to_json(&sim.rate.stats())}))
}

async fn reset_rate_limit(State(sim): State<Arc<Sim>>) -> Response {
    sim.rate.reset();
    ok(&json!({"ok": true}))
}

async fn faults(State(sim): State<Arc<Sim>>) -> Response {
    ok(&json!({"config": to_json(&sim.faults.config()), "outage": to_json(&sim.faults.outage_status())}))
}

async fn set_faults(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let cfg: FaultConfig = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    for f in std::iter::once(&cfg.default).chain(cfg.endpoints.values()) {
        if let Err(e) = f.validate() {
            return error(StatusCode::UNPROCESSABLE_ENTITY, &e);
        }
    }
    sim.faults.set_config(cfg);
    ok(&to_json(&sim.faults.config()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFaultBody {
    endpoint: String,
    fault: Option<EndpointFault>,
}

async fn set_endpoint_fault(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let b: EndpointFaultBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(f) = &b.fault
        && let Err(e) = f.validate()
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &e);
    }
    sim.faults.set_endpoint(b.endpoint, b.fault);
    ok(&to_json(&sim.faults.config()))
}

async fn outage(State(sim): State<Arc<Sim>>) -> Response {
    ok(&to_json(&sim.faults.outage_status()))
}

async fn start_outage(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let o: OutageConfig = match parse(&body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if !(o.duration_secs.is_finite() && o.duration_secs >= 0.0) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "duration_secs must be >= 0");
    }
    sim.faults.start_outage(&o);
    ok(&to_json(&sim.faults.outage_status()))
}

async fn end_outage(State(sim): State<Arc<Sim>>) -> Response {
    sim.faults.end_outage();
    ok(&to_json(&sim.faults.outage_status()))
}

async fn agents(State(sim): State<Arc<Sim>>) -> Response {
    let inner = sim.lock();
    let list: Vec<Value> = inner
        .agent_order
        .iter()
        .filter_map(|id| inner.agents.get(id))
        .map(|a| {
            json!({
                "id": a.id,
                "name": a.name,
                "connection_state": a.connection_state,
                "meta_data": a.meta_data(),
                "queue": a.queue_key,
                "cluster_id": a.cluster_id,
                "job": a.job,
                "mode": a.mode,
                "pool": a.pool,
                "stopping": a.stop_after_job,
                "gpu": a.gpu,
                "jobs_started": a.jobs_started,
            })
        })
        .collect();
    ok(&Value::Array(list))
}

async fn pools(State(sim): State<Arc<Sim>>) -> Response {
    let inner = sim.lock();
    let list: Vec<Value> = inner.pools.values().map(to_json).collect();
    ok(&Value::Array(list))
}

async fn set_pool(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let cfg: AgentPoolConfig = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = sim.lock().set_pool(&cfg);
    sim.kick();
    match r {
        Ok(_) => pools(State(sim)).await,
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Tags {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterAgent {
    name: Option<String>,
    tags: Option<Tags>,
    cluster: Option<String>,
    #[serde(default)]
    mode: AgentMode,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Simulated GPU slot (see `gpu.rs`).
    #[serde(default)]
    gpu: Option<crate::gpu::GpuProfile>,
}

async fn register_agent(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let r: RegisterAgent = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let tags: Vec<(String, String)> = match r.tags {
        None => Vec::new(),
        Some(Tags::Map(m)) => m.into_iter().collect(),
        Some(Tags::List(l)) => {
            let mut out = Vec::new();
            for t in l {
                match t.split_once('=') {
                    Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
                    _ => {
                        return error(StatusCode::UNPROCESSABLE_ENTITY, &format!("tag {t:?} is not key=value"));
                    }
                }
            }
            out
        }
    };
    let name = r
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("external-agent-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let result = sim.lock().register_agent(name, tags, r.cluster.as_deref(), r.mode, r.env, r.gpu);
    sim.kick();
    match result {
        Ok(id) => json_response(StatusCode::CREATED, &json!({"id": id})),
        Err(e) => op_error(e),
    }
}

async fn remove_agent(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No agent found");
    };
    let r = sim.lock().remove_agent(id);
    sim.kick();
    match r {
        Ok(()) => ok(&json!({"ok": true})),
        Err(e) => op_error(e),
    }
}

/// `PUT /_sim/agents/{id}/gpu`: a GpuProfile replaces the agent's simulated GPU (`null`
/// removes it); its job count stays.
async fn set_agent_gpu(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let gpu: Option<crate::gpu::GpuProfile> = match parse(&body) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No agent found");
    };
    let r = sim.lock().set_agent_gpu(id, gpu);
    match r {
        Ok(()) => ok(&json!({"ok": true})),
        Err(e) => op_error(e),
    }
}

async fn job(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>) -> Response {
    let inner = sim.lock();
    let Some(j) = id.parse::<Uuid>().ok().and_then(|id| inner.jobs.get(&id)) else {
        return not_found("No job found");
    };
    let Some(b) = inner.builds.get(&j.build) else {
        return not_found("No build found");
    };
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let mut v = ctx.job(j, b, true);
    if let Value::Object(m) = &mut v {
        m.insert("log".into(), json!(j.log));
        m.insert("build_number".into(), json!(b.number));
        m.insert("pipeline".into(), json!(b.pipeline));
        m.insert("env".into(), json!(b.env));
        m.insert("step_env".into(), json!(j.step_env));
        m.insert("checkout".into(), json!(j.checkout));
        m.insert("attempt".into(), json!(j.attempt));
    }
    ok(&v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactUpload {
    path: String,
    content: Option<String>,
    content_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishBody {
    exit_status: i32,
    #[serde(default)]
    artifacts: Vec<ArtifactUpload>,
    #[serde(default)]
    meta_data: BTreeMap<String, String>,
    #[serde(default)]
    log: String,
}

async fn finish_job(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let b: FinishBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No job found");
    };
    let mut artifacts = Vec::new();
    for a in b.artifacts {
        let content = match (a.content, a.content_base64) {
            (Some(c), None) => Bytes::from(c.into_bytes()),
            (None, Some(c)) => match base64::engine::general_purpose::STANDARD.decode(c.trim()) {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, &format!("artifact {}: {e}", a.path));
                }
            },
            _ => {
                return error(StatusCode::BAD_REQUEST, "each artifact needs exactly one of content, content_base64");
            }
        };
        artifacts.push((a.path, content));
    }
    let fin = ExternalFinish {
        exit_status: b.exit_status,
        artifacts,
        meta_data: b.meta_data.into_iter().collect(),
        log: b.log,
    };
    match sim.lock().finish_external(id, fin) {
        Ok(()) => ok(&json!({"ok": true})),
        Err(e) => op_error(e),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FailureSpec {
    Text(String),
    Full(InfraFailure),
}

impl FailureSpec {
    fn resolve(self) -> Result<InfraFailure, String> {
        match self {
            Self::Text(s) => InfraFailure::parse(&s),
            Self::Full(f) => Ok(f),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    failure: FailureSpec,
}

async fn fail_job(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let b: FailBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let failure = match b.failure.resolve() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No job found");
    };
    match sim.lock().fail_job(id, failure) {
        Ok(()) => ok(&json!({"ok": true})),
        Err(e) => op_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InfraRuleBody {
    #[serde(default = "one")]
    count: u32,
    queue: Option<String>,
    failure: FailureSpec,
}

fn one() -> u32 {
    1
}

async fn infra_rules(State(sim): State<Arc<Sim>>) -> Response {
    let inner = sim.lock();
    ok(&to_json(&inner.infra_rules))
}

async fn add_infra_rule(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let b: InfraRuleBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let failure = match b.failure.resolve() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let mut inner = sim.lock();
    inner.infra_rules.push(InfraRule { remaining: b.count, queue: b.queue, failure });
    ok(&to_json(&inner.infra_rules))
}

async fn clear_infra_rules(State(sim): State<Arc<Sim>>) -> Response {
    sim.lock().infra_rules.clear();
    ok(&json!([]))
}

async fn webhooks(State(sim): State<Arc<Sim>>) -> Response {
    ok(&to_json(&sim.webhooks.list()))
}

fn check_webhook(cfg: &WebhookConfig) -> Result<(), Response> {
    if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "url must be http(s)"));
    }
    cfg.delivery.validate().map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()))
}

async fn add_webhook(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let cfg: WebhookConfig = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = check_webhook(&cfg) {
        return r;
    }
    let id = sim.webhooks.add(cfg);
    crate::webhooks::ping(&sim, id);
    json_response(StatusCode::CREATED, &json!({"id": id}))
}

async fn update_webhook(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let cfg: WebhookConfig = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = check_webhook(&cfg) {
        return r;
    }
    match id.parse::<Uuid>() {
        Ok(id) if sim.webhooks.update(id, cfg) => ok(&json!({"ok": true})),
        _ => not_found("No webhook found"),
    }
}

async fn remove_webhook(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>) -> Response {
    match id.parse::<Uuid>() {
        Ok(id) if sim.webhooks.remove(id) => ok(&json!({"ok": true})),
        _ => not_found("No webhook found"),
    }
}

async fn pipelines(State(sim): State<Arc<Sim>>) -> Response {
    let inner = sim.lock();
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let list: Vec<Value> = inner.pipelines.values().map(|p| ctx.pipeline(p, true)).collect();
    ok(&Value::Array(list))
}

async fn add_pipeline(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let cfg: PipelineConfig = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let r = sim.lock().add_pipeline(&cfg);
    match r {
        Ok(()) => json_response(StatusCode::CREATED, &json!({"slug": cfg.slug})),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
}

async fn force_state(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let b: StateBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(state) = BuildState::parse(&b.state) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "unknown build state");
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No build found");
    };
    let r = sim.lock().force_build_state(id, state);
    sim.kick();
    match r {
        Ok(()) => ok(&json!({"ok": true})),
        Err(e) => op_error(e),
    }
}

async fn executor(State(sim): State<Arc<Sim>>) -> Response {
    ok(&to_json(&sim.lock().executor))
}

async fn set_executor(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let cfg: ExecutorConfig = match parse(&body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    sim.lock().executor = cfg;
    executor(State(sim)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    artifact_url_ttl_secs: Option<u64>,
    metrics_poll_duration_secs: Option<u64>,
    job_expiry_secs: Option<f64>,
    artifact_retention_secs: Option<f64>,
    list_depth_limit: Option<u64>,
    exec_arg_max: Option<usize>,
}

async fn settings(State(sim): State<Arc<Sim>>) -> Response {
    let inner = sim.lock();
    ok(&json!({
        "artifact_url_ttl_secs": sim.artifact_ttl(),
        "metrics_poll_duration_secs": sim.poll_duration_secs.load(Ordering::Relaxed),
        "job_expiry_secs": inner.job_expiry.as_secs_f64(),
        "artifact_retention_secs": inner.artifact_retention.as_secs_f64(),
        "list_depth_limit": inner.list_depth_limit,
        "exec_arg_max": inner.exec_arg_max,
    }))
}

async fn set_settings(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let b: SettingsBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    for v in [b.job_expiry_secs, b.artifact_retention_secs].into_iter().flatten() {
        if !(v.is_finite() && v > 0.0) {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "durations must be > 0");
        }
    }
    if let Some(v) = b.artifact_url_ttl_secs {
        sim.artifact_ttl_secs.store(v, Ordering::Relaxed);
    }
    if let Some(v) = b.metrics_poll_duration_secs {
        sim.poll_duration_secs.store(v, Ordering::Relaxed);
    }
    {
        let mut inner = sim.lock();
        if let Some(v) = b.job_expiry_secs {
            inner.job_expiry = std::time::Duration::from_secs_f64(v);
        }
        if let Some(v) = b.artifact_retention_secs {
            inner.artifact_retention = std::time::Duration::from_secs_f64(v);
        }
        if let Some(v) = b.list_depth_limit {
            inner.list_depth_limit = v;
        }
        if let Some(v) = b.exec_arg_max {
            inner.exec_arg_max = v;
        }
    }
    settings(State(sim)).await
}

/// `GET /_sim/pipelines/{pipeline}/builds/{number}`: the REST build with every job (retried
/// ones too), not rate limited — for tests that poll.
async fn build(State(sim): State<Arc<Sim>>, ApiPath((pipeline, number)): ApiPath<(String, String)>) -> Response {
    let inner = sim.lock();
    let Some(b) = number.parse::<u64>().ok().and_then(|n| inner.build_by_number(&pipeline, n)) else {
        return not_found("No build found");
    };
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    ok(&ctx.build_with(b, true, false, true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobStateBody {
    state: String,
}

/// `POST /_sim/jobs/{id}/state {state: limited|scheduled|expired|broken}` for a job that has
/// not started.
async fn force_job_state(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let b: JobStateBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(state) = JobState::parse(&b.state) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "unknown job state");
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No job found");
    };
    let r = sim.lock().force_job_state(id, state);
    sim.kick();
    match r {
        Ok(()) => ok(&json!({"ok": true})),
        Err(e) => op_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactStateBody {
    state: String,
    /// Only artifacts whose path matches this glob (build-wide form).
    #[serde(default)]
    path: Option<String>,
}

/// `POST /_sim/artifacts/{id}/state {state: new|error|finished|deleted|expired}`.
async fn artifact_state(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let b: ArtifactStateBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No artifact found");
    };
    match sim.lock().set_artifact_state(id, &b.state) {
        Ok(()) => ok(&json!({"ok": true})),
        Err(e) => op_error(e),
    }
}

/// `POST /_sim/builds/{id}/artifacts/state {state, path?}`: every artifact of the build (whose
/// path matches `path`).
async fn build_artifacts_state(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, body: Bytes) -> Response {
    let b: ArtifactStateBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found("No build found");
    };
    let mut inner = sim.lock();
    if !inner.builds.contains_key(&id) {
        return not_found("No build found");
    }
    let ids: Vec<Uuid> = inner
        .build_artifacts
        .get(&id)
        .map(|v| {
            v.iter()
                .copied()
                .filter(|a| {
                    b.path
                        .as_deref()
                        .is_none_or(|g| inner.artifacts.get(a).is_some_and(|x| crate::glob::wildcard_match(g, &x.path)))
                })
                .collect()
        })
        .unwrap_or_default();
    for a in &ids {
        if let Err(e) = inner.set_artifact_state(*a, &b.state) {
            return op_error(e);
        }
    }
    ok(&json!({"updated": ids.len()}))
}

/// `GET /_sim/tokens`: every REST token's uuid, scopes and description (never its value).
async fn tokens(State(sim): State<Arc<Sim>>) -> Response {
    let inner = sim.lock();
    let list: Vec<Value> = inner
        .tokens
        .iter()
        .map(|t| json!({"uuid": t.uuid, "scopes": t.scopes, "description": t.description}))
        .collect();
    ok(&Value::Array(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    scopes: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

/// `POST /_sim/tokens {scopes, description?}`: a new REST token (its own user); the value is
/// only in this answer.
async fn create_token(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let b: TokenBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.scopes.iter().any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_lowercase() || c == '_')) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "scopes are names like read_builds");
    }
    let mut secret = [0u8; 20];
    rand::fill(&mut secret);
    let token = format!("bk-sim-{}", hex::encode(secret));
    let uuid = sim.lock().add_token(
        token.clone(),
        b.scopes.clone(),
        b.description.unwrap_or_else(|| "created at run time".into()),
    );
    json_response(StatusCode::CREATED, &json!({"token": token, "uuid": uuid, "scopes": b.scopes}))
}

async fn repositories(State(sim): State<Arc<Sim>>) -> Response {
    ok(&to_json(&sim.lock().repositories))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepositoryBody {
    url: String,
    visibility: RepositoryVisibility,
}

/// `PUT /_sim/repositories {url, visibility: public|private}`.
async fn set_repository(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let b: RepositoryBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut inner = sim.lock();
    inner.repositories.insert(b.url, b.visibility);
    ok(&to_json(&inner.repositories))
}
