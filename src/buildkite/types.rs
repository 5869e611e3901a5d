//! Objects of the Buildkite REST API, decoded tolerantly: unknown fields are ignored, missing
//! or `null` fields take their default, scalar values of the wrong JSON type are converted
//! when that is unambiguous (a number where a string is expected) and otherwise dropped.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod lenient;
mod state;

pub(crate) use lenient::{
    lenient_bool, lenient_opt, lenient_opt_i64, lenient_opt_string, lenient_opt_u64, lenient_string,
    lenient_string_map, lenient_ts, lenient_u64, lenient_vec,
};
use lenient::{scalar_string, value_i64};
pub use state::{BuildState, JobState};

// ----- objects ------------------------------------------------------------------------------

/// A short reference to an agent (embedded in jobs).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct AgentRef {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub hostname: Option<String>,
}

/// A job of a build.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Job {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    /// `script`, `waiter`, `manual`, `trigger`.
    #[serde(rename = "type", deserialize_with = "lenient_opt_string")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub step_key: Option<String>,
    /// `None` for jobs without a state (waiters in some answers).
    #[serde(deserialize_with = "lenient_opt")]
    pub state: Option<JobState>,
    #[serde(deserialize_with = "lenient_opt_i64")]
    pub exit_status: Option<i64>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub signal: Option<String>,
    /// `agent_stop`, `cancel`, `process_run_error`, `agent_refused`, `stack_error`, …
    #[serde(deserialize_with = "lenient_opt_string")]
    pub signal_reason: Option<String>,
    #[serde(deserialize_with = "lenient_opt")]
    pub agent: Option<AgentRef>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub web_url: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub log_url: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub artifacts_url: Option<String>,
    #[serde(deserialize_with = "lenient_ts")]
    pub created_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub scheduled_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub runnable_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub started_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub finished_at: Option<Timestamp>,
    /// This try was retried (automatically by the step's `retry.automatic`, or by hand):
    /// a later job of the same step replaced it (`retried_in_job_id`).
    #[serde(deserialize_with = "lenient_bool")]
    pub retried: bool,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub retried_in_job_id: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub soft_failed: bool,
}

/// The pipeline a build belongs to (as embedded in builds).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct PipelineRef {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub slug: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub name: Option<String>,
}

/// A build.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Build {
    /// UUID.
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    /// Number within the pipeline (the key of get/cancel).
    #[serde(deserialize_with = "lenient_u64")]
    pub number: u64,
    /// The build's GraphQL id (REST `graphql_id`; GraphQL `id`), the key of `buildCancel`.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub graphql_id: Option<String>,
    /// API URL.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub web_url: Option<String>,
    pub state: BuildState,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub message: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub commit: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub branch: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub source: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub cancel_reason: Option<String>,
    #[serde(deserialize_with = "lenient_string_map")]
    pub env: BTreeMap<String, String>,
    #[serde(deserialize_with = "lenient_string_map")]
    pub meta_data: BTreeMap<String, String>,
    /// Empty when fetched with `exclude_jobs` (and in webhook payloads).
    #[serde(deserialize_with = "lenient_vec")]
    pub jobs: Vec<Job>,
    #[serde(deserialize_with = "lenient_ts")]
    pub created_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub scheduled_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub started_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub finished_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_opt")]
    pub pipeline: Option<PipelineRef>,
}

impl Build {
    /// The pipeline slug: from the embedded pipeline, else from the API URL
    /// (`…/pipelines/{slug}/builds/{number}`).
    pub fn pipeline_slug(&self) -> Option<&str> {
        if let Some(p) = &self.pipeline
            && !p.slug.is_empty()
        {
            return Some(&p.slug);
        }
        let url = self.url.as_deref()?;
        let (_, rest) = url.split_once("/pipelines/")?;
        rest.split('/').next().filter(|s| !s.is_empty())
    }
}

/// An artifact of a job.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Artifact {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub job_id: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub url: Option<String>,
    /// API URL answering `302` to the storage location.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub download_url: Option<String>,
    /// new, error, finished, deleted, expired.
    #[serde(deserialize_with = "lenient_string")]
    pub state: String,
    #[serde(deserialize_with = "lenient_string")]
    pub path: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub dirname: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub filename: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub mime_type: Option<String>,
    #[serde(deserialize_with = "lenient_opt_u64")]
    pub file_size: Option<u64>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub sha1sum: Option<String>,
}

/// An agent (`GET /organizations/{org}/agents`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Agent {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub hostname: Option<String>,
    /// connected, disconnected, stopped, lost, never_connected.
    #[serde(deserialize_with = "lenient_string")]
    pub connection_state: String,
    /// The agent's tags as `key=value` strings.
    #[serde(deserialize_with = "lenient_vec")]
    pub meta_data: Vec<String>,
    /// The job it runs, when busy.
    #[serde(deserialize_with = "lenient_opt")]
    pub job: Option<Job>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub version: Option<String>,
    #[serde(deserialize_with = "lenient_opt_i64")]
    pub priority: Option<i64>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub cluster_id: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub cluster_queue_id: Option<String>,
    #[serde(deserialize_with = "lenient_ts")]
    pub created_at: Option<Timestamp>,
    #[serde(deserialize_with = "lenient_ts")]
    pub last_job_finished_at: Option<Timestamp>,
}

impl Agent {
    /// The tags as a map (`queue=gpu` → `{"queue": "gpu"}`); entries without `=` are skipped.
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.meta_data.iter().filter_map(|t| t.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
    }

    /// The `queue` tag.
    pub fn queue(&self) -> Option<String> {
        self.tags().remove("queue")
    }

    pub fn is_connected(&self) -> bool {
        self.connection_state == "connected"
    }

    pub fn is_busy(&self) -> bool {
        self.job.is_some()
    }
}

/// A cluster.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Cluster {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub description: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub default_queue_id: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub url: Option<String>,
}

/// A cluster queue.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Queue {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub key: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub description: Option<String>,
    #[serde(deserialize_with = "lenient_bool")]
    pub dispatch_paused: bool,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub dispatch_paused_note: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub cluster_url: Option<String>,
}

/// Jobs and agents of one queue (or of all queues) from the agent metrics API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueMetrics {
    pub scheduled: u64,
    pub running: u64,
    pub waiting: u64,
    pub jobs_total: u64,
    pub idle: u64,
    pub busy: u64,
    pub agents_total: u64,
}

impl QueueMetrics {
    fn from_parts(agents: Option<&Value>, jobs: Option<&Value>) -> Self {
        let n = |v: Option<&Value>, k: &str| {
            v.and_then(|v| v.get(k)).and_then(value_i64).and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
        };
        let scheduled = n(jobs, "scheduled");
        let running = n(jobs, "running");
        let waiting = n(jobs, "waiting");
        let idle = n(agents, "idle");
        let busy = n(agents, "busy");
        let jobs_total = jobs.and_then(|j| j.get("total")).map_or(scheduled + running + waiting, |_| n(jobs, "total"));
        let agents_total = agents.and_then(|a| a.get("total")).map_or(idle + busy, |_| n(agents, "total"));
        QueueMetrics { scheduled, running, waiting, jobs_total, idle, busy, agents_total }
    }

    /// Decodes `{agents:{idle,busy,total}, jobs:{scheduled,running,waiting,total}}`.
    pub fn from_json(v: &Value) -> Self {
        Self::from_parts(v.get("agents"), v.get("jobs"))
    }
}

/// The answer of `GET /v3/metrics`: totals and per-queue values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AllMetrics {
    pub total: QueueMetrics,
    pub queues: BTreeMap<String, QueueMetrics>,
    pub organization: Option<String>,
}

impl AllMetrics {
    pub fn from_json(v: &Value) -> Self {
        let agents = v.get("agents");
        let jobs = v.get("jobs");
        let mut names: Vec<String> = Vec::new();
        for part in [agents, jobs] {
            if let Some(Value::Object(m)) = part.and_then(|p| p.get("queues")) {
                names.extend(m.keys().cloned());
            }
        }
        let queues = names
            .into_iter()
            .map(|q| {
                let a = agents.and_then(|a| a.get("queues")).and_then(|m| m.get(&q));
                let j = jobs.and_then(|j| j.get("queues")).and_then(|m| m.get(&q));
                let m = QueueMetrics::from_parts(a, j);
                (q, m)
            })
            .collect();
        AllMetrics {
            total: QueueMetrics::from_parts(agents, jobs),
            queues,
            organization: v.get("organization").and_then(|o| o.get("slug")).and_then(Value::as_str).map(str::to_string),
        }
    }
}

// ----- requests -----------------------------------------------------------------------------

/// `author` of a new build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// Body of `POST …/builds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewBuild {
    /// `HEAD`, a SHA or a ref (required).
    pub commit: String,
    /// Required.
    pub branch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta_data: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_checkout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_pipeline_branch_filters: Option<bool>,
}

/// Filters of `list_builds`. `Default` lists the organization's builds (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildQuery {
    /// `None`: all pipelines of the organization (`GET /organizations/{org}/builds`).
    pub pipeline: Option<String>,
    /// `state[]=` values (build states, or `finished`).
    pub states: Vec<String>,
    /// `meta_data[key]=value` filters (all must match).
    pub meta_data: Vec<(String, String)>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub created_from: Option<Timestamp>,
    pub created_to: Option<Timestamp>,
    pub finished_from: Option<Timestamp>,
    /// `exclude_jobs=true`: much smaller answers.
    pub exclude_jobs: bool,
    /// `exclude_pipeline=true`.
    pub exclude_pipeline: bool,
    /// Page size (1..=100; default 100).
    pub per_page: Option<u32>,
    /// Pages to follow at most (default: the client's `max_pages`).
    pub max_pages: Option<u32>,
    /// `include_retried_jobs=true`: also the tries a retry replaced.
    pub include_retried_jobs: bool,
}

/// A list answer: the items of all pages followed, and whether more pages were left.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    /// `true` when the page limit stopped the listing before the last page.
    pub truncated: bool,
    /// Requests it took.
    pub pages: u32,
}

/// Outcome of `cancel_build`.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The build is canceling or canceled now.
    Canceled(Box<Build>),
    /// `422`: not cancelable any more (already finished, or already canceling).
    NotCancelable { message: String },
    /// `404`: no such build.
    NotFound,
}

/// Outcome of `create_queue`.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueCreated {
    Created(Queue),
    /// `422` "has already been taken": the queue exists.
    AlreadyExists,
}

#[cfg(test)]
mod tests;
