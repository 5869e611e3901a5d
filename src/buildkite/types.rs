//! Objects of the Buildkite REST API, decoded tolerantly: unknown fields are ignored, missing
//! or `null` fields take their default, scalar values of the wrong JSON type are converted
//! when that is unambiguous (a number where a string is expected) and otherwise dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

// ----- lenient field decoders -------------------------------------------------------------

fn scalar_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(scalar_string(Value::deserialize(d)?).unwrap_or_default())
}

pub(crate) fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(scalar_string(Value::deserialize(d)?))
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn lenient_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(value_i64(&Value::deserialize(d)?))
}

pub(crate) fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(value_i64(&Value::deserialize(d)?).and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

pub(crate) fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(value_i64(&Value::deserialize(d)?).and_then(|n| u64::try_from(n).ok()))
}

pub(crate) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::String(s) => s == "true",
        _ => false,
    })
}

pub(crate) fn lenient_ts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => parse_time(&s),
        _ => None,
    })
}

/// A Buildkite timestamp: RFC 3339 as the REST API writes it (`2024-05-01T10:00:00.000Z`),
/// or the shape of the only real webhook body captured in public code (go-buildkite
/// `builds_test.go`, "taken from buildkite services console"): `2018-03-25 03:58:14 UTC`.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    let naive = s.strip_suffix(" UTC").or_else(|| s.strip_suffix(" Z"))?;
    let iso = format!("{}Z", naive.trim().replacen(' ', "T", 1));
    iso.parse::<Timestamp>().ok()
}

/// A string map (`env`, `meta_data`): scalars become strings, nested values their JSON text.
pub(crate) fn lenient_string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Null => None,
                v @ (Value::Array(_) | Value::Object(_)) => Some((k, v.to_string())),
                v => scalar_string(v).map(|s| (k, s)),
            })
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// A list whose elements that fail to decode are skipped (`null` is empty).
pub(crate) fn lenient_vec<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items.into_iter().filter_map(|v| T::deserialize(v).ok()).collect(),
        _ => Vec::new(),
    })
}

/// An object that is dropped (`None`) when it fails to decode.
pub(crate) fn lenient_opt<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        v => T::deserialize(v).ok(),
    })
}

// ----- states -----------------------------------------------------------------------------

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)*
            /// A state this client does not know (kept verbatim).
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $s,)*
                    $name::Other(s) => s,
                }
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(match s {
                    $($s => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                })
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s.parse() {
                    Ok(v) => v,
                    Err(never) => match never {},
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::Other(String::new())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(scalar_string(Value::deserialize(d)?).map(|s| $name::from(s.as_str())).unwrap_or_default())
            }
        }
    };
}

string_enum! {
    /// State of a build.
    BuildState {
        Creating => "creating",
        Scheduled => "scheduled",
        Running => "running",
        Passed => "passed",
        Failing => "failing",
        Failed => "failed",
        Blocked => "blocked",
        Canceling => "canceling",
        Canceled => "canceled",
        Skipped => "skipped",
        NotRun => "not_run",
        Waiting => "waiting",
        WaitingFailed => "waiting_failed",
        Started => "started",
    }
}

impl BuildState {
    /// Final for the operator: passed, failed, canceled, skipped, not_run. `blocked` is not
    /// (it may be unblocked), nor are unknown states.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            BuildState::Passed | BuildState::Failed | BuildState::Canceled | BuildState::Skipped | BuildState::NotRun
        )
    }

    /// Whether `PUT …/cancel` can succeed (scheduled, running, failing).
    pub fn is_cancelable(&self) -> bool {
        matches!(self, BuildState::Scheduled | BuildState::Running | BuildState::Failing)
    }
}

string_enum! {
    /// State of a job.
    JobState {
        Pending => "pending",
        Waiting => "waiting",
        WaitingFailed => "waiting_failed",
        Blocked => "blocked",
        BlockedFailed => "blocked_failed",
        Unblocked => "unblocked",
        UnblockedFailed => "unblocked_failed",
        Limiting => "limiting",
        Limited => "limited",
        Scheduled => "scheduled",
        Assigned => "assigned",
        Accepted => "accepted",
        Running => "running",
        Passed => "passed",
        Failed => "failed",
        Canceling => "canceling",
        Canceled => "canceled",
        TimingOut => "timing_out",
        TimedOut => "timed_out",
        Skipped => "skipped",
        Broken => "broken",
        Expired => "expired",
    }
}

impl JobState {
    /// The job will not change any more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Passed
                | JobState::Failed
                | JobState::Canceled
                | JobState::TimedOut
                | JobState::Skipped
                | JobState::Broken
                | JobState::Expired
                | JobState::WaitingFailed
                | JobState::BlockedFailed
                | JobState::UnblockedFailed
        )
    }
}

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
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn terminal_states() {
        for s in ["passed", "failed", "canceled", "skipped", "not_run"] {
            assert!(BuildState::from(s).is_terminal(), "{s}");
        }
        for s in ["blocked", "scheduled", "running", "failing", "canceling", "creating", "waiting", "weird", ""] {
            assert!(!BuildState::from(s).is_terminal(), "{s}");
        }
        assert_eq!(BuildState::from("something_new"), BuildState::Other("something_new".into()));
        assert_eq!(BuildState::from("not_run").as_str(), "not_run");
        assert!(BuildState::Failing.is_cancelable());
        assert!(!BuildState::Passed.is_cancelable());
        assert!(JobState::from("timed_out").is_terminal());
        assert!(!JobState::from("running").is_terminal());
    }

    #[test]
    fn build_decodes_tolerantly() {
        let v = json!({
            "id": "0190-uuid", "number": "42", "state": "brand_new_state",
            "url": "https://api.buildkite.com/v2/organizations/o/pipelines/kern/builds/42",
            "env": {"A": "1", "B": 2, "C": null, "D": true},
            "meta_data": null,
            "jobs": [
                {"id": "j1", "type": "script", "state": "passed", "exit_status": 0,
                 "agent": {"id": "a1", "name": "gpu-0"}, "started_at": "2024-05-01T10:00:00.000Z",
                 "finished_at": "garbage", "unknown": {"deep": [1,2]}},
                {"id": "w1", "type": "waiter"},
                17
            ],
            "created_at": "2024-05-01T09:59:59Z",
            "finished_at": null,
            "extra_field": "ignored"
        });
        let b: Build = serde_json::from_value(v).expect("decodes");
        assert_eq!(b.number, 42);
        assert_eq!(b.state, BuildState::Other("brand_new_state".into()));
        assert_eq!(b.env.get("B").map(String::as_str), Some("2"));
        assert!(!b.env.contains_key("C"));
        assert!(b.meta_data.is_empty());
        assert_eq!(b.jobs.len(), 2);
        assert_eq!(b.jobs[0].exit_status, Some(0));
        assert_eq!(b.jobs[0].state, Some(JobState::Passed));
        assert!(b.jobs[0].started_at.is_some());
        assert!(b.jobs[0].finished_at.is_none());
        assert_eq!(b.jobs[1].state, None);
        assert_eq!(b.pipeline_slug(), Some("kern"));
        assert!(b.created_at.is_some());
        assert!(b.finished_at.is_none());

        let minimal: Build = serde_json::from_value(json!({})).expect("empty object decodes");
        assert_eq!(minimal.number, 0);
        assert!(minimal.jobs.is_empty());
    }

    #[test]
    fn job_exit_status_variants() {
        let j: Job =
            serde_json::from_value(json!({"id": "x", "exit_status": "-1", "signal_reason": "agent_stop"})).unwrap();
        assert_eq!(j.exit_status, Some(-1));
        assert_eq!(j.signal_reason.as_deref(), Some("agent_stop"));
        let j: Job = serde_json::from_value(json!({"id": "x", "exit_status": null})).unwrap();
        assert_eq!(j.exit_status, None);
    }

    #[test]
    fn agent_tags() {
        let a: Agent = serde_json::from_value(json!({
            "id": "a", "name": "n", "connection_state": "connected",
            "meta_data": ["queue=nvidia-h100", "gpu=h100", "novalue"],
            "job": {"id": "j"}
        }))
        .unwrap();
        assert_eq!(a.queue().as_deref(), Some("nvidia-h100"));
        assert_eq!(a.tags().len(), 2);
        assert!(a.is_busy() && a.is_connected());
    }

    #[test]
    fn metrics_decode() {
        let v = json!({
            "agents": {"idle": 1, "busy": 2, "total": 3, "queues": {"q": {"idle": 1, "busy": 2, "total": 3}}},
            "jobs": {"scheduled": 4, "running": 2, "waiting": 1, "total": 7, "queues": {"q": {"scheduled": 4, "running": 2, "waiting": 1, "total": 7}, "r": {"scheduled": 1}}},
            "organization": {"slug": "acme"}
        });
        let all = AllMetrics::from_json(&v);
        assert_eq!(all.total.scheduled, 4);
        assert_eq!(all.total.agents_total, 3);
        assert_eq!(all.queues["q"].busy, 2);
        assert_eq!(all.queues["r"].jobs_total, 1);
        assert_eq!(all.organization.as_deref(), Some("acme"));
        let one = QueueMetrics::from_json(&json!({"agents": {"idle": 2}, "jobs": {"running": 1}}));
        assert_eq!(one, QueueMetrics { running: 1, jobs_total: 1, idle: 2, agents_total: 2, ..Default::default() });
    }

    #[test]
    fn new_build_body() {
        let nb = NewBuild {
            commit: "HEAD".into(),
            branch: "main".into(),
            meta_data: [("benchkite.job".to_string(), "ns/x".to_string())].into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&nb).unwrap();
        assert_eq!(v, json!({"commit": "HEAD", "branch": "main", "meta_data": {"benchkite.job": "ns/x"}}));
    }
}
