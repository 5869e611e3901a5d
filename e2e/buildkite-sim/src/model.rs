//! The simulated Buildkite objects and their states.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Buildkite timestamps: RFC 3339, UTC, millisecond precision (`2015-05-09T21:05:59.874Z`).
pub fn fmt_ts(ts: Timestamp) -> String {
    let ms = ts.as_millisecond();
    match Timestamp::from_millisecond(ms) {
        Ok(t) => {
            let s = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            format!("{s}.{:03}Z", ms.rem_euclid(1000))
        }
        Err(_) => ts.to_string(),
    }
}

/// The other timestamp shape Buildkite emits: `2018-03-25 03:58:14 UTC` (the services
/// console webhook captured in go-buildkite `builds_test.go`; `created_at` of the access-token
/// and pipeline examples in the REST docs).
pub fn fmt_ts_utc(ts: Timestamp) -> String {
    format!("{} UTC", ts.strftime("%Y-%m-%d %H:%M:%S"))
}

pub fn opt_ts(ts: Option<Timestamp>) -> serde_json::Value {
    ts.map_or(serde_json::Value::Null, |t| serde_json::Value::String(fmt_ts(t)))
}

/// `base64("<Type>---<uuid>")`, the shape of Buildkite's GraphQL ids.
pub fn graphql_id(kind: &str, id: Uuid) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{kind}---{id}"))
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $s)] $variant),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $s),* } }
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some($name::$variant),)* _ => None } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(
    /// Build states (REST API names).
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
    }
);

impl BuildState {
    /// States in which the build will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Passed | Self::Failed | Self::Canceled | Self::Skipped | Self::NotRun | Self::Blocked)
    }

    /// `state=finished` in list filters = passed, failed, blocked, canceled.
    pub fn matches_filter(self, filter: &str) -> bool {
        if filter == "finished" {
            return matches!(self, Self::Passed | Self::Failed | Self::Blocked | Self::Canceled);
        }
        self.as_str() == filter
    }
}

string_enum!(
    /// Job states (REST API names).
    JobState {
        Pending => "pending",
        Waiting => "waiting",
        Blocked => "blocked",
        Scheduled => "scheduled",
        Assigned => "assigned",
        Accepted => "accepted",
        Running => "running",
        Passed => "passed",
        Failed => "failed",
        TimedOut => "timed_out",
        TimingOut => "timing_out",
        Canceled => "canceled",
        Canceling => "canceling",
        Skipped => "skipped",
        Broken => "broken",
        Expired => "expired",
        Limited => "limited",
    }
);

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Passed
                | Self::Failed
                | Self::TimedOut
                | Self::Canceled
                | Self::Skipped
                | Self::Broken
                | Self::Expired
        )
    }

    /// Holds an agent (or is about to).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Assigned | Self::Accepted | Self::Running | Self::Canceling | Self::TimingOut)
    }
}

string_enum!(
    /// Agent connection states.
    ConnectionState {
        Connected => "connected",
        Disconnected => "disconnected",
        Stopping => "stopping",
        Stopped => "stopped",
        Lost => "lost",
        NeverConnected => "never_connected",
    }
);

/// The single organization a simulator serves.
#[derive(Clone, Debug)]
pub struct Org {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: Timestamp,
}

/// A user (one per API token) and the creator shown on builds.
#[derive(Clone, Debug)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct Pipeline {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub description: Option<String>,
    pub repository: String,
    pub default_branch: String,
    pub cluster_id: Uuid,
    pub skip_queued_branch_builds: bool,
    pub skip_queued_branch_builds_filter: Option<String>,
    pub cancel_running_branch_builds: bool,
    pub cancel_running_branch_builds_filter: Option<String>,
    pub branch_configuration: Option<String>,
    /// The YAML steps as saved (REST `configuration`).
    pub configuration: String,
    /// `configuration` parsed, not interpolated (interpolated per build).
    pub template: serde_yaml::Value,
    /// `template` parsed without interpolation (REST `steps`, `env`).
    pub settings: crate::steps::Settings,
    /// Simulator-only per-step timeouts (config `timeout_secs`), by step index.
    pub timeout_overrides: Vec<Option<Duration>>,
    pub next_number: u64,
    pub created_at: Timestamp,
    pub created_by: Option<Uuid>,
    /// Archived pipelines are read-only and take no builds (REST "Archive a pipeline").
    pub archived_at: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct Build {
    pub id: Uuid,
    pub number: u64,
    pub pipeline: String,
    pub state: BuildState,
    pub blocked: bool,
    pub cancel_reason: Option<String>,
    pub message: Option<String>,
    pub commit: String,
    pub branch: String,
    pub env: BTreeMap<String, String>,
    /// The steps' top-level `env`, interpolated when the build was created.
    pub pipeline_env: BTreeMap<String, String>,
    pub meta_data: BTreeMap<String, String>,
    pub author: Option<serde_json::Value>,
    pub clean_checkout: bool,
    pub creator: Uuid,
    pub jobs: Vec<Uuid>,
    pub created_at: Timestamp,
    pub scheduled_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub failing_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub id: Uuid,
    pub build: Uuid,
    pub step_id: Uuid,
    pub step_key: Option<String>,
    pub name: String,
    pub command: Option<String>,
    pub agent_query_rules: Vec<String>,
    /// The queue the job targets (explicit `queue=` rule or the cluster default).
    pub queue_key: String,
    pub cluster_id: Uuid,
    pub state: JobState,
    pub exit_status: Option<i32>,
    pub signal: Option<String>,
    pub signal_reason: Option<String>,
    pub artifact_paths: String,
    pub timeout: Option<Duration>,
    pub agent: Option<Uuid>,
    pub created_at: Timestamp,
    pub scheduled_at: Timestamp,
    pub runnable_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub expired_at: Option<Timestamp>,
    pub log: String,
    /// The step's `env` (above the build env).
    pub step_env: BTreeMap<String, String>,
    /// `checkout: {skip: …}` of the step.
    pub checkout_skip: Option<bool>,
    /// The step's `retry.automatic` rules and how often each was used so far.
    pub retry_rules: Vec<crate::steps::RetryRule>,
    pub retry_counts: Vec<u32>,
    /// 0 for the first try of a step, n for its n-th automatic retry (`BUILDKITE_RETRY_COUNT`).
    pub attempt: u32,
    pub retried: bool,
    pub retried_in_job_id: Option<Uuid>,
    /// The job this one retries.
    pub retry_source: Option<Uuid>,
    /// What the checkout did: `cloned`, `skipped`, `failed` (`None`: not run).
    pub checkout: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub struct Artifact {
    pub id: Uuid,
    pub job: Uuid,
    pub build: Uuid,
    pub path: String,
    /// `new`, `error`, `finished`, `deleted` or `expired` (REST "Artifact data model").
    pub state: &'static str,
    pub mime_type: String,
    pub sha1sum: String,
    pub content: Bytes,
    pub created_at: Timestamp,
}

/// The artifact states of the REST API ("Artifact data model").
pub const ARTIFACT_STATES: &[&str] = &["new", "error", "finished", "deleted", "expired"];

impl Artifact {
    pub fn new(job: Uuid, build: Uuid, path: String, content: Bytes) -> Self {
        let sha1sum = sha1_smol::Sha1::from(&content[..]).digest().to_string();
        let mime_type = mime_for(&path).to_string();
        Self {
            id: Uuid::new_v4(),
            job,
            build,
            path,
            state: "finished",
            mime_type,
            sha1sum,
            content,
            created_at: Timestamp::now(),
        }
    }

    pub fn filename(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    pub fn dirname(&self) -> &str {
        match self.path.rfind('/') {
            Some(i) => &self.path[..i],
            None => ".",
        }
    }
}

fn mime_for(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        "gz" | "tgz" => "application/x-gzip",
        "zip" => "application/zip",
        "png" => "image/png",
        "html" => "text/html",
        _ => "application/octet-stream",
    }
}

/// How a simulated agent runs its jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// The simulator's executor runs the job.
    #[default]
    Simulator,
    /// Someone outside finishes the job through `POST /_sim/jobs/{id}/finish`.
    External,
}

#[derive(Clone, Debug)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    /// Tags as ordered `(key, value)` pairs; always contains `queue`.
    pub tags: Vec<(String, String)>,
    pub queue_key: String,
    pub cluster_id: Uuid,
    pub connection_state: ConnectionState,
    pub job: Option<Uuid>,
    /// Disconnect after the current job (agent stop without force, or pool shrink).
    pub stop_after_job: bool,
    pub mode: AgentMode,
    /// Simulated pool the agent belongs to (`None`: registered from outside).
    pub pool: Option<String>,
    /// Index of the agent in its pool (`%n`).
    pub index: u32,
    pub env: BTreeMap<String, String>,
    pub hostname: String,
    pub created_at: Timestamp,
    pub last_job_finished_at: Option<Timestamp>,
    /// Simulated GPU slot (`SIMGPU_*` in its jobs' env, see `gpu.rs`).
    pub gpu: Option<crate::gpu::GpuProfile>,
    /// Jobs this agent started (the next job's `SIMGPU_JOB_INDEX`).
    pub jobs_started: u32,
}

impl Agent {
    pub fn is_idle(&self) -> bool {
        self.connection_state == ConnectionState::Connected && self.job.is_none() && !self.stop_after_job
    }

    pub fn meta_data(&self) -> Vec<String> {
        self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Does this agent satisfy the job's agent query rules? (`key=value`, value `*` = any,
    /// `key!=value` negation, trailing `*` prefix match.)
    pub fn matches(&self, rules: &[String]) -> bool {
        rules.iter().all(|rule| {
            let (key, want, negate) = match rule.split_once("!=") {
                Some((k, v)) => (k, v, true),
                None => match rule.split_once('=') {
                    Some((k, v)) => (k, v, false),
                    None => (rule.as_str(), "*", false),
                },
            };
            if key == "*" {
                return true;
            }
            let have = self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            let hit = match have {
                None => false,
                Some(v) => crate::glob::wildcard_match(want, v),
            };
            hit != negate
        })
    }
}

#[derive(Clone, Debug)]
pub struct Cluster {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub default_queue_key: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct Queue {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub key: String,
    pub description: Option<String>,
    pub dispatch_paused: bool,
    pub dispatch_paused_at: Option<Timestamp>,
    pub dispatch_paused_note: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct AgentToken {
    pub id: Uuid,
    pub cluster_id: Uuid,
    pub description: String,
    pub token: String,
    pub created_at: Timestamp,
}

/// Queue key rules (Rails-style messages, like Buildkite's `Validation failed: …`).
pub fn validate_queue_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("Key can't be blank".into());
    }
    if key.len() > 100 {
        return Err("Key is too long (maximum is 100 characters)".into());
    }
    let ok_chars = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    let ok_start = key.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_start {
        return Err(
            "Key may only contain alphanumeric characters, hyphens, underscores and periods, and must start with an alphanumeric character"
                .into(),
        );
    }
    Ok(())
}

/// Interpolates `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR-default}` with `env`
/// (`$$` and `\$` are a literal `$`), like Buildkite's pipeline interpolation. An unknown
/// variable interpolates to empty (or its default).
pub fn interpolate(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\\' && chars.peek().map(|&(_, c)| c) == Some('$') {
            // `\$` is a literal `$` (docs "Environment variables" → "Runtime variable
            // interpolation": "escape the `$` character using `$$` or `\$`").
            chars.next();
            out.push('$');
            continue;
        }
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().map(|&(_, c)| c) {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let rest = &input[i + 2..];
                match rest.find('}') {
                    None => {
                        out.push_str(&input[i..]);
                        return out;
                    }
                    Some(end) => {
                        let expr = &rest[..end];
                        // skip the consumed characters
                        for _ in 0..expr.chars().count() + 1 {
                            chars.next();
                        }
                        let (name, default, empty_too) = if let Some((n, d)) = expr.split_once(":-") {
                            (n, Some(d), true)
                        } else if let Some((n, d)) = expr.split_once('-') {
                            (n, Some(d), false)
                        } else {
                            (expr, None, false)
                        };
                        match (env.get(name), default) {
                            (Some(v), Some(d)) if empty_too && v.is_empty() => out.push_str(d),
                            (Some(v), _) => out.push_str(v),
                            (None, Some(d)) => out.push_str(d),
                            (None, None) => {}
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        name.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if let Some(v) = env.get(&name) {
                    out.push_str(v);
                }
            }
            _ => out.push('$'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation() {
        let mut env = BTreeMap::new();
        env.insert("KERNELBOT_QUEUE".to_string(), "nvidia-h100".to_string());
        env.insert("EMPTY".to_string(), String::new());
        assert_eq!(interpolate("queue=${KERNELBOT_QUEUE:-default}", &env), "queue=nvidia-h100");
        assert_eq!(interpolate("queue=${MISSING:-default}", &env), "queue=default");
        assert_eq!(interpolate("queue=${EMPTY:-default}", &env), "queue=default");
        assert_eq!(interpolate("queue=${EMPTY-default}", &env), "queue=");
        assert_eq!(interpolate("a=$KERNELBOT_QUEUE/x", &env), "a=nvidia-h100/x");
        assert_eq!(interpolate("cost $$5 ${", &env), "cost $5 ${");
        assert_eq!(interpolate("run \\$HOME", &env), "run $HOME");
    }

    #[test]
    fn timestamps_have_millis() {
        let ts: Timestamp = "2015-05-09T21:05:59.874123Z".parse().unwrap();
        assert_eq!(fmt_ts(ts), "2015-05-09T21:05:59.874Z");
        assert_eq!(fmt_ts_utc(ts), "2015-05-09 21:05:59 UTC");
        let ts: Timestamp = "2015-05-09T21:05:59Z".parse().unwrap();
        assert_eq!(fmt_ts(ts), "2015-05-09T21:05:59.000Z");
    }

    #[test]
    fn queue_keys() {
        assert!(validate_queue_key("nvidia-h100").is_ok());
        assert!(validate_queue_key("").is_err());
        assert!(validate_queue_key("-x").is_err());
        assert!(validate_queue_key("a b").is_err());
    }

    #[test]
    fn agent_rules() {
        let agent = Agent {
            id: Uuid::nil(),
            name: "a".into(),
            tags: vec![("queue".into(), "q1".into()), ("gpu".into(), "h100".into())],
            queue_key: "q1".into(),
            cluster_id: Uuid::nil(),
            connection_state: ConnectionState::Connected,
            job: None,
            stop_after_job: false,
            mode: AgentMode::Simulator,
            pool: None,
            index: 0,
            env: BTreeMap::new(),
            hostname: "h".into(),
            created_at: Timestamp::now(),
            last_job_finished_at: None,
            gpu: None,
            jobs_started: 0,
        };
        assert!(agent.matches(&["queue=q1".into()]));
        assert!(agent.matches(&["queue=q1".into(), "gpu=h*".into()]));
        assert!(!agent.matches(&["queue=q2".into()]));
        assert!(!agent.matches(&["queue=q1".into(), "gpu!=h100".into()]));
        assert!(agent.matches(&["*".into()]));
    }
}
