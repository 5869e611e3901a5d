//! GraphQL answers as the REST types the rest of benchkite speaks: a `Build` read over
//! GraphQL is indistinguishable from one read over REST, field for field, where both carry
//! the field.
//!
//! The differences the mapping absorbs (Buildkite's schema pages `Build`, `BuildStates`,
//! `JobTypeCommand`, `JobStates`):
//! * enums are upper case (`PASSED`, `NOT_RUN`); REST's states are their lower case;
//! * a finished command job is `FINISHED` with `passed: true|false` where REST says
//!   `passed`/`failed`;
//! * `id` is the GraphQL id and `uuid` the REST id;
//! * `env` is a list of `KEY=value` strings, meta-data a connection of `{key, value}`;
//! * `exitStatus` is a string.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::Value;

use super::super::super::types::{AgentRef, Build, BuildState, Job, JobState, PipelineRef};

fn s(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ts(v: &Value, k: &str) -> Option<Timestamp> {
    v.get(k).and_then(Value::as_str).and_then(|t| t.parse::<Timestamp>().ok())
}

fn edges<'a>(v: &'a Value, k: &str) -> impl Iterator<Item = &'a Value> {
    v.get(k)
        .and_then(|c| c.get("edges"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("node"))
        .filter(|n| n.is_object())
}

/// `KEY=value` strings as a map (a string without `=` is a key with an empty value, as the
/// agent reads it).
pub(crate) fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

/// A `BuildStates` value as REST's build state.
pub(crate) fn build_state(v: &str) -> BuildState {
    v.to_ascii_lowercase().parse().unwrap_or_default()
}

/// A `JobStates` value (and `passed`) as REST's job state.
pub(crate) fn job_state(v: &str, passed: Option<bool>) -> JobState {
    match v {
        "FINISHED" => match passed {
            Some(true) => JobState::Passed,
            _ => JobState::Failed,
        },
        other => other.to_ascii_lowercase().parse().unwrap_or_default(),
    }
}

fn job(n: &Value) -> Option<Job> {
    let uuid = s(n, "uuid")?;
    // Union members: a command job has a label or command fields; a wait step only its id.
    let is_command = n.get("label").is_some() || n.get("exitStatus").is_some() || n.get("passed").is_some();
    let passed = n.get("passed").and_then(Value::as_bool);
    Some(Job {
        id: uuid,
        kind: Some(if is_command { "script" } else { "waiter" }.into()),
        name: s(n, "label"),
        step_key: s(n, "key"),
        state: n.get("state").and_then(Value::as_str).map(|st| job_state(st, passed)),
        exit_status: n.get("exitStatus").and_then(|e| match e {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        }),
        agent: n.get("agent").filter(|a| a.is_object()).map(|a| AgentRef {
            id: s(a, "uuid").unwrap_or_default(),
            name: s(a, "name"),
            hostname: s(a, "hostname"),
        }),
        web_url: s(n, "url"),
        created_at: ts(n, "createdAt"),
        scheduled_at: ts(n, "scheduledAt"),
        runnable_at: ts(n, "runnableAt"),
        started_at: ts(n, "startedAt"),
        finished_at: ts(n, "finishedAt"),
        retried: n.get("retried").and_then(Value::as_bool).unwrap_or(false),
        soft_failed: n.get("softFailed").and_then(Value::as_bool).unwrap_or(false),
        ..Default::default()
    })
}

/// A GraphQL `Build` object as a [`Build`]; `None` when it is not one (`null`, no uuid).
/// `pipeline` names the pipeline when the answer does not (`pipeline { slug }` not asked).
pub(crate) fn build(v: &Value, pipeline: Option<&str>) -> Option<Build> {
    let uuid = s(v, "uuid").filter(|u| !u.is_empty())?;
    let slug = v.get("pipeline").and_then(|p| s(p, "slug")).or_else(|| pipeline.map(str::to_string));
    Some(Build {
        id: uuid,
        number: v.get("number").and_then(Value::as_u64).unwrap_or(0),
        graphql_id: s(v, "id"),
        web_url: s(v, "url"),
        state: v.get("state").and_then(Value::as_str).map(build_state).unwrap_or_default(),
        message: s(v, "message"),
        commit: s(v, "commit"),
        branch: s(v, "branch"),
        source: s(v, "source").map(|x| x.to_ascii_lowercase()),
        env: v.get("env").map(env_map).unwrap_or_default(),
        meta_data: edges(v, "metaData")
            .filter_map(|n| Some((s(n, "key")?, s(n, "value").unwrap_or_default())))
            .collect(),
        jobs: edges(v, "jobs").filter_map(job).collect(),
        created_at: ts(v, "createdAt"),
        scheduled_at: ts(v, "scheduledAt"),
        started_at: ts(v, "startedAt"),
        finished_at: ts(v, "finishedAt"),
        pipeline: slug.map(|slug| PipelineRef { slug, ..Default::default() }),
        ..Default::default()
    })
}
