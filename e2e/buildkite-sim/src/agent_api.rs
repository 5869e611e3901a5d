//! The part of the Buildkite Agent API (`/v3`) a running job uses with its job token:
//! build meta-data (`buildkite-agent meta-data set|get|exists|keys`).
//!
//! Paths, verbs and bodies are the agent's (`api/meta_data.go`): `POST
//! jobs/{job}/data/{set,set-batch,get,exists,keys}` and `POST
//! builds/{build}/data/{get,exists,keys}`, authenticated with `Authorization: Token <job
//! token>` (`internal/agenthttp/auth.go`). A job token (docs "Agent tokens" → "Job tokens")
//! works only for its own job and that job's build, and only until the job finishes; it is
//! no REST API token (`/v2` answers 401).
//!
//! Answers: no, unknown or revoked token → `401 {"message":"Invalid access token"}`; another
//! job or build → `403`; a missing key on `get` → `404 {"message":"No key \"k\" found"}`
//! (the message the agent prints, buildkite/agent#1227); a blank key or value, or a value
//! over 100 KiB on `set` → `422`.

// As in `api`: helpers return the error answer itself, built once and sent as is.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::{ApiPath, error, json_object, json_response};
use crate::config::ExecutorConfig;
use crate::executor::MAX_META_DATA_VALUE;
use crate::sim::Sim;
use crate::state::Inner;

/// The agent's answer to a token it does not know (buildkite/agent#743).
pub const INVALID_TOKEN: &str = "Invalid access token";
/// Env var naming the `buildkite-agent` shim (see [`find_agent_binary`]).
pub const AGENT_BINARY_ENV: &str = "BUILDKITE_SIM_AGENT_BINARY";

impl Inner {
    /// A fresh job token for `job` (valid until the job finishes, see `finish_job`).
    pub fn issue_job_token(&mut self, job: Uuid) -> String {
        let mut raw = [0u8; 24];
        rand::fill(&mut raw);
        let token = format!("bkjt_{}", hex::encode(raw));
        self.job_tokens.insert(token.clone(), job);
        token
    }

    /// The running job (and its build) a job token belongs to.
    pub fn job_token(&self, token: &str) -> Option<(Uuid, Uuid)> {
        let job = self.jobs.get(self.job_tokens.get(token)?)?;
        (!job.state.is_terminal()).then_some((job.id, job.build))
    }
}

/// Where the `buildkite-agent` shim is: the executor's `agent_binary`, else
/// `$BUILDKITE_SIM_AGENT_BINARY`, else `buildkite-agent` next to the running executable or in
/// its parent directory (a test binary in `target/debug/deps` finds `target/debug`).
pub fn find_agent_binary(executor: &ExecutorConfig) -> Option<PathBuf> {
    if let ExecutorConfig::Command { agent_binary: Some(p), .. } = executor {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os(AGENT_BINARY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [Some(dir), dir.parent()].into_iter().flatten().map(|d| d.join("buildkite-agent")).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Makes `dir` hold `buildkite-agent` → `shim` (the job's `BUILDKITE_BIN_PATH`).
pub fn link_agent(dir: &Path, shim: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join("buildkite-agent");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(shim, link)
}

/// The `/v3` routes of a job token.
pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v3/jobs/{job}/data/set", post(set))
        .route("/v3/jobs/{job}/data/set-batch", post(set_batch))
        .route("/v3/jobs/{job}/data/get", post(job_get))
        .route("/v3/jobs/{job}/data/exists", post(job_exists))
        .route("/v3/jobs/{job}/data/keys", post(job_keys))
        .route("/v3/builds/{build}/data/get", post(build_get))
        .route("/v3/builds/{build}/data/exists", post(build_exists))
        .route("/v3/builds/{build}/data/keys", post(build_keys))
}

/// `Authorization: Token <t>` (the agent's scheme; `Bearer` is accepted too).
fn job_token_of(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")).then(|| token.trim())
}

/// Which build a request may touch: the token's job must be `id` (scope job) or the token's
/// build must be `id` (scope build).
fn authorize(sim: &Sim, headers: &HeaderMap, scope: &str, id: &str) -> Result<Uuid, Response> {
    let Some((job, build)) = job_token_of(headers).and_then(|t| sim.lock().job_token(t)) else {
        return Err(error(StatusCode::UNAUTHORIZED, INVALID_TOKEN));
    };
    let mine = match scope {
        "job" => job.to_string() == id,
        _ => build.to_string() == id,
    };
    if mine {
        Ok(build)
    } else {
        Err(error(StatusCode::FORBIDDEN, &format!("Your access token cannot access this {scope}")))
    }
}

fn key_of(body: &serde_json::Map<String, Value>) -> Result<String, Response> {
    match body.get("key") {
        Some(Value::String(k)) if !k.trim().is_empty() => Ok(k.clone()),
        _ => Err(error(StatusCode::UNPROCESSABLE_ENTITY, "Key can't be blank")),
    }
}

fn pair_of(body: &serde_json::Map<String, Value>) -> Result<(String, String), Response> {
    let key = key_of(body)?;
    let value = match body.get("value") {
        Some(Value::String(v)) if !v.trim().is_empty() => v.clone(),
        _ => return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "Value can't be blank")),
    };
    if value.len() > MAX_META_DATA_VALUE {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Value is too long (maximum is {MAX_META_DATA_VALUE} bytes)"),
        ));
    }
    Ok((key, value))
}

fn store(sim: &Sim, build: Uuid, pairs: Vec<(String, String)>) {
    let mut inner = sim.lock();
    if let Some(b) = inner.builds.get_mut(&build) {
        b.meta_data.extend(pairs);
    }
}

async fn set(
    State(sim): State<Arc<Sim>>,
    ApiPath(job): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let build = match authorize(&sim, &headers, "job", &job) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let pair = match json_object(body).and_then(|b| pair_of(&b)) {
        Ok(p) => p,
        Err(r) => return r,
    };
    store(&sim, build, vec![pair]);
    json_response(StatusCode::CREATED, &json!({}))
}

/// `{"items": [{key, value}…]}`: all or nothing (agent `api/meta_data.go`).
async fn set_batch(
    State(sim): State<Arc<Sim>>,
    ApiPath(job): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let build = match authorize(&sim, &headers, "job", &job) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(Value::Array(items)) = body.get("items") else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Items can't be blank");
    };
    let mut pairs = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(m) = item else {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Items must be objects");
        };
        match pair_of(m) {
            Ok(p) => pairs.push(p),
            Err(r) => return r,
        }
    }
    store(&sim, build, pairs);
    json_response(StatusCode::CREATED, &json!({}))
}

fn meta_data_of(sim: &Sim, build: Uuid) -> std::collections::BTreeMap<String, String> {
    sim.lock().builds.get(&build).map(|b| b.meta_data.clone()).unwrap_or_default()
}

fn get(sim: &Sim, headers: &HeaderMap, scope: &str, id: &str, body: Result<Bytes, BytesRejection>) -> Response {
    let result = authorize(sim, headers, scope, id).and_then(|build| {
        let key = key_of(&json_object(body)?)?;
        match meta_data_of(sim, build).get(&key) {
            Some(v) => Ok(json_response(StatusCode::OK, &json!({"key": key, "value": v}))),
            None => Err(error(StatusCode::NOT_FOUND, &format!("No key {key:?} found"))),
        }
    });
    result.unwrap_or_else(|r| r)
}

fn exists(sim: &Sim, headers: &HeaderMap, scope: &str, id: &str, body: Result<Bytes, BytesRejection>) -> Response {
    let result = authorize(sim, headers, scope, id).and_then(|build| {
        let key = key_of(&json_object(body)?)?;
        Ok(json_response(StatusCode::OK, &json!({"exists": meta_data_of(sim, build).contains_key(&key)})))
    });
    result.unwrap_or_else(|r| r)
}

fn keys(sim: &Sim, headers: &HeaderMap, scope: &str, id: &str) -> Response {
    match authorize(sim, headers, scope, id) {
        Ok(build) => {
            let keys: Vec<String> = meta_data_of(sim, build).into_keys().collect();
            json_response(StatusCode::OK, &json!(keys))
        }
        Err(r) => r,
    }
}

async fn job_get(
    State(sim): State<Arc<Sim>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    get(&sim, &headers, "job", &id, body)
}

async fn build_get(
    State(sim): State<Arc<Sim>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    get(&sim, &headers, "build", &id, body)
}

async fn job_exists(
    State(sim): State<Arc<Sim>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    exists(&sim, &headers, "job", &id, body)
}

async fn build_exists(
    State(sim): State<Arc<Sim>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    exists(&sim, &headers, "build", &id, body)
}

async fn job_keys(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, headers: HeaderMap) -> Response {
    keys(&sim, &headers, "job", &id)
}

async fn build_keys(State(sim): State<Arc<Sim>>, ApiPath(id): ApiPath<String>, headers: HeaderMap) -> Response {
    keys(&sim, &headers, "build", &id)
}
