//! The simulator's world: pipelines, builds, jobs, agents, queues — and every state
//! transition (creation, dispatch to agents, completion, automatic retries, cancellation,
//! expiry).
//!
//! Everything lives behind one mutex (`Inner`); operations are short and never await while
//! holding it. Webhook events are queued while the lock is held (a channel send) and
//! rendered later by the delivery workers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::config::{
    AgentPoolConfig, DEFAULT_TOKEN_SCOPES, ExecutorConfig, PipelineConfig, RepositoryVisibility, ScriptedConfig,
    SimConfig,
};
use crate::model::*;
use crate::steps::{Settings, StepsError};

/// Identifies a queue: cluster + key (a job may target a key that does not exist).
pub type QueueRef = (Uuid, String);

/// Linux's limit on one `argv`/`envp` string including its NUL (`MAX_ARG_STRLEN`, 32 pages
/// of 4 KiB). The agent hands the job env to the bootstrap process with `execve` (agent
/// `agent/job_runner.go`: `processEnv := append(os.Environ(), env...)`); a longer string
/// makes `execve` fail with E2BIG.
pub const MAX_ARG_STRLEN: usize = 131_072;

/// A webhook event to deliver (rendered at delivery time, like Buildkite: the payload may
/// already show a later state than the event).
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub build: Uuid,
    pub job: Option<Uuid>,
}

/// Why a running job must stop early.
#[derive(Debug, Clone)]
pub enum Stop {
    /// Build canceled (or agent stopped with `force`).
    Cancel,
    /// Injected infrastructure failure.
    Infra(InfraFailure),
}

/// An injected infrastructure failure: the job ends `failed` with `exit_status` and
/// `signal_reason`; `lose_agent` makes the agent `lost` (Buildkite's lost-agent case).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct InfraFailure {
    pub signal_reason: Option<String>,
    pub exit_status: i32,
    /// Delay after the job started (ms).
    #[serde(default)]
    pub after_ms: u64,
    #[serde(default)]
    pub lose_agent: bool,
}

/// The documented `signal_reason` values (REST "Job data model"; agent `agent/run_job.go`).
/// There is no `agent_lost`: a lost agent leaves `exit_status -1` and no signal reason.
pub const SIGNAL_REASONS: &[&str] = &[
    "agent_stop",
    "cancel",
    "process_run_error",
    "agent_refused",
    "signature_rejected",
    "stack_error",
    "agent_incompatible",
];

impl InfraFailure {
    /// Parses `<reason>[:<exit_status>][@<after_ms>]`, e.g. `agent_stop`, `agent_lost`,
    /// `process_run_error:255`, `stack_error:-1@2000`. `agent_lost` is the simulator's name
    /// for a lost agent: the job gets no signal reason at all.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (head, after) = match spec.split_once('@') {
            Some((h, a)) => (h, a.trim().parse::<u64>().map_err(|_| format!("bad delay in {spec:?}"))?),
            None => (spec, 0),
        };
        let (reason, exit) = match head.split_once(':') {
            Some((r, e)) => (r.trim(), e.trim().parse::<i32>().map_err(|_| format!("bad exit status in {spec:?}"))?),
            None => (head.trim(), -1),
        };
        if reason == "agent_lost" {
            return Ok(Self { signal_reason: None, exit_status: exit, after_ms: after, lose_agent: true });
        }
        if !SIGNAL_REASONS.contains(&reason) {
            return Err(format!(
                "unknown infrastructure failure {reason:?} (agent_lost, {})",
                SIGNAL_REASONS.join(", ")
            ));
        }
        Ok(Self {
            signal_reason: Some(reason.to_string()),
            exit_status: exit,
            after_ms: after,
            lose_agent: reason == "agent_stop",
        })
    }
}

/// Inject `failure` into the next `remaining` jobs (of `queue`, if set).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InfraRule {
    pub remaining: u32,
    #[serde(default)]
    pub queue: Option<String>,
    pub failure: InfraFailure,
}

/// How a started job is executed.
#[derive(Debug, Clone)]
pub enum ExecKind {
    Command { shell: Vec<String>, command: String, cancel_grace: Duration, max_log_bytes: usize },
    Scripted(ScriptedConfig),
    External,
}

/// Everything an executor needs to run one job (built under the lock, run outside it).
#[derive(Debug)]
pub struct ExecSpec {
    pub job: Uuid,
    pub build: Uuid,
    pub kind: ExecKind,
    pub env: Vec<(String, String)>,
    pub artifact_paths: String,
    pub timeout: Option<Duration>,
    pub infra: Option<InfraFailure>,
    /// The job ended before its command could run (the bootstrap could not be exec'd, or the
    /// checkout failed): this is its outcome.
    pub preflight: Option<Outcome>,
    pub stop_rx: oneshot::Receiver<Stop>,
    pub external_rx: Option<oneshot::Receiver<ExternalFinish>>,
    pub dir: PathBuf,
    pub meta_data_file: PathBuf,
    /// The job's own directory for `buildkite-agent` (first on its `PATH`) and the shim the
    /// executor links there.
    pub bin_dir: Option<(PathBuf, PathBuf)>,
    pub keep_dir: bool,
}

/// Result of an external job (`POST /_sim/jobs/{id}/finish`).
#[derive(Debug, Clone, Default)]
pub struct ExternalFinish {
    pub exit_status: i32,
    pub artifacts: Vec<(String, Bytes)>,
    pub meta_data: Vec<(String, String)>,
    pub log: String,
}

/// What an executor reports back.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: JobState,
    pub exit_status: Option<i32>,
    pub signal: Option<String>,
    pub signal_reason: Option<String>,
    pub artifacts: Vec<(String, Bytes)>,
    pub meta_data: Vec<(String, String)>,
    pub log: String,
    pub lose_agent: bool,
}

impl Outcome {
    pub fn from_exit(code: i32) -> Self {
        Self {
            state: if code == 0 { JobState::Passed } else { JobState::Failed },
            exit_status: Some(code),
            signal: None,
            signal_reason: None,
            artifacts: Vec::new(),
            meta_data: Vec::new(),
            log: String::new(),
            lose_agent: false,
        }
    }
}

/// A simulated agent pool (desired state).
#[derive(Debug, Clone, Serialize)]
pub struct PoolSpec {
    pub cluster_id: Uuid,
    pub queue: String,
    pub count: u32,
    pub tags: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    /// Simulated GPU of every agent (see `gpu.rs`).
    pub gpu: Option<crate::gpu::GpuProfile>,
    /// Per agent index, replacing `gpu`.
    pub gpu_by_index: BTreeMap<u32, crate::gpu::GpuProfile>,
}

impl PoolSpec {
    fn gpu_of(&self, index: u32) -> Option<crate::gpu::GpuProfile> {
        self.gpu_by_index.get(&index).or(self.gpu.as_ref()).cloned()
    }
}

/// Counters of job outcomes.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct JobStats {
    /// Jobs created (automatic retries included).
    pub created: u64,
    pub started: u64,
    pub passed: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub canceled: u64,
    pub skipped: u64,
    /// Jobs that ended with a signal reason other than `cancel`, or lost their agent.
    pub infra_failures: u64,
    /// Jobs retried automatically by their step's `retry.automatic` (the retries themselves
    /// are counted in `created`).
    pub retried: u64,
    /// Jobs nobody picked up within the job expiry.
    pub expired: u64,
    /// Repository clones done before a command (one per job that did not skip the checkout).
    pub checkouts: u64,
    /// Checkouts that failed (private repository: exit status 128).
    pub checkout_failures: u64,
    /// Jobs that skipped the checkout.
    pub checkouts_skipped: u64,
    /// Jobs whose environment the agent could not exec (E2BIG → `process_run_error`).
    pub exec_env_errors: u64,
}

/// Error of a state operation, mapped to an API answer by the routes.
#[derive(Debug, Clone)]
pub enum OpError {
    NotFound(&'static str),
    Unprocessable(String),
    Validation(Vec<FieldError>),
    BadRequest(String),
}

/// One item of a `422 Validation Failed` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: String,
    pub message: Option<String>,
}

impl FieldError {
    pub fn new(field: &str, code: &str) -> Self {
        Self { field: field.to_string(), code: code.to_string(), message: None }
    }

    pub fn with_message(field: &str, code: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_string(), code: code.to_string(), message: Some(message.into()) }
    }
}

/// Request to create a build (already type-checked by the route).
#[derive(Debug, Clone, Default)]
pub struct CreateBuild {
    pub commit: String,
    pub branch: String,
    pub message: Option<String>,
    pub author: Option<serde_json::Value>,
    pub env: BTreeMap<String, String>,
    pub meta_data: BTreeMap<String, String>,
    pub clean_checkout: bool,
    pub ignore_pipeline_branch_filters: bool,
}

/// A REST API access token and its scopes.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub token: String,
    pub uuid: Uuid,
    pub scopes: Vec<String>,
    pub description: String,
    pub created_at: Timestamp,
    pub user: Uuid,
}

/// Everything a pipeline is made of, validated (from the config, `/_sim/pipelines` or REST).
#[derive(Debug, Clone)]
pub struct PipelineSpec {
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
    pub configuration: String,
    pub template: serde_yaml::Value,
    pub settings: Settings,
    pub timeout_overrides: Vec<Option<Duration>>,
    pub created_by: Option<Uuid>,
}

/// Parses a YAML steps configuration (REST `configuration`): invalid YAML or a document
/// without steps is refused.
pub fn parse_configuration(text: &str) -> Result<(serde_yaml::Value, Settings), StepsError> {
    let template = crate::steps::parse_yaml(text)?;
    let settings = crate::steps::settings_from_value(&template)?;
    Ok((template, settings))
}

/// The config's `steps` as a YAML steps document (what the settings editor would hold).
fn steps_document(p: &PipelineConfig) -> serde_yaml::Value {
    use serde_yaml::{Mapping, Value as Y};
    let mut steps = Vec::new();
    for s in &p.steps {
        let mut m = Mapping::new();
        if let Some(k) = &s.key {
            m.insert("key".into(), k.clone().into());
        }
        m.insert("label".into(), s.label.clone().into());
        if let Some(c) = &s.command {
            m.insert("command".into(), c.clone().into());
        }
        if !s.agents.is_empty() {
            m.insert("agents".into(), Y::Sequence(s.agents.iter().map(|a| a.clone().into()).collect()));
        }
        if !s.artifact_paths.is_empty() {
            m.insert("artifact_paths".into(), s.artifact_paths.clone().into());
        }
        if let Some(t) = s.timeout_in_minutes {
            m.insert("timeout_in_minutes".into(), t.into());
        }
        if !s.env.is_empty() {
            let env: Mapping = s.env.iter().map(|(k, v)| (Y::from(k.clone()), Y::from(v.clone()))).collect();
            m.insert("env".into(), Y::Mapping(env));
        }
        if let Some(c) = &s.checkout {
            let mut cm = Mapping::new();
            cm.insert("skip".into(), c.skip.into());
            m.insert("checkout".into(), Y::Mapping(cm));
        }
        if let Some(r) = &s.retry {
            m.insert("retry".into(), r.clone());
        }
        steps.push(Y::Mapping(m));
    }
    let mut doc = Mapping::new();
    if !p.env.is_empty() {
        let env: Mapping = p.env.iter().map(|(k, v)| (Y::from(k.clone()), Y::from(v.clone()))).collect();
        doc.insert("env".into(), Y::Mapping(env));
    }
    doc.insert("steps".into(), Y::Sequence(steps));
    Y::Mapping(doc)
}

pub struct Inner {
    pub org: Org,
    pub users: Vec<(String, User)>,
    pub tokens: Vec<ApiToken>,
    pub pipelines: BTreeMap<String, Pipeline>,
    pub builds: HashMap<Uuid, Build>,
    /// Creation order (oldest first).
    pub build_order: Vec<Uuid>,
    pub build_by_number: HashMap<(String, u64), Uuid>,
    pub jobs: HashMap<Uuid, Job>,
    pub artifacts: HashMap<Uuid, Artifact>,
    pub build_artifacts: HashMap<Uuid, Vec<Uuid>>,
    pub agents: HashMap<Uuid, Agent>,
    pub agent_order: Vec<Uuid>,
    pub queue_agents: HashMap<QueueRef, Vec<Uuid>>,
    pub clusters: Vec<Cluster>,
    pub queues: Vec<Queue>,
    pub agent_tokens: Vec<AgentToken>,
    /// The organization's default cluster for new pipelines.
    pub default_cluster: Option<Uuid>,
    pub repositories: BTreeMap<String, RepositoryVisibility>,
    pub pending: HashMap<QueueRef, VecDeque<Uuid>>,
    pub running: HashMap<Uuid, oneshot::Sender<Stop>>,
    pub external: HashMap<Uuid, oneshot::Sender<ExternalFinish>>,
    pub pools: BTreeMap<QueueRef, PoolSpec>,
    pub infra_rules: Vec<InfraRule>,
    pub executor: ExecutorConfig,
    pub job_dir: PathBuf,
    pub keep_job_dirs: bool,
    pub job_stats: JobStats,
    pub events: Option<mpsc::UnboundedSender<Event>>,
    /// Base of `web_url`s (no trailing slash).
    pub web_base: String,
    pub job_expiry: Duration,
    pub artifact_retention: Duration,
    pub list_depth_limit: u64,
    /// ARG_MAX of the simulated agents' `execve`.
    pub exec_arg_max: usize,
    /// Job tokens of running process-executor jobs: token → job (see `agent_api`).
    pub job_tokens: HashMap<String, Uuid>,
    /// `BUILDKITE_AGENT_ENDPOINT` handed to jobs (`<api root>/v3`, set at start).
    pub agent_endpoint: String,
    /// The `buildkite-agent` shim put on the jobs' `PATH` (`None`: not found).
    pub agent_binary: Option<PathBuf>,
}

/// `sysconf(_SC_ARG_MAX)`, or 2 MiB if the system does not say.
pub fn system_arg_max() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    usize::try_from(v).ok().filter(|v| *v > 0).unwrap_or(2 * 1024 * 1024)
}

impl Inner {
    pub fn new(cfg: &SimConfig, events: Option<mpsc::UnboundedSender<Event>>) -> anyhow::Result<Self> {
        let now = Timestamp::now();
        let org =
            Org { id: Uuid::new_v4(), slug: cfg.organization.clone(), name: cfg.organization.clone(), created_at: now };
        let mut inner = Self {
            org,
            users: Vec::new(),
            tokens: Vec::new(),
            pipelines: BTreeMap::new(),
            builds: HashMap::new(),
            build_order: Vec::new(),
            build_by_number: HashMap::new(),
            jobs: HashMap::new(),
            artifacts: HashMap::new(),
            build_artifacts: HashMap::new(),
            agents: HashMap::new(),
            agent_order: Vec::new(),
            queue_agents: HashMap::new(),
            clusters: Vec::new(),
            queues: Vec::new(),
            agent_tokens: Vec::new(),
            default_cluster: None,
            repositories: cfg.repositories.clone(),
            pending: HashMap::new(),
            running: HashMap::new(),
            external: HashMap::new(),
            pools: BTreeMap::new(),
            infra_rules: Vec::new(),
            executor: cfg.executor.clone(),
            job_dir: cfg.job_dir.clone().unwrap_or_else(std::env::temp_dir),
            keep_job_dirs: cfg.keep_job_dirs,
            job_stats: JobStats::default(),
            events,
            web_base: cfg.web_base_url.trim_end_matches('/').to_string(),
            job_expiry: Duration::from_secs_f64(cfg.job_expiry_secs),
            artifact_retention: Duration::from_secs_f64(cfg.artifact_retention_secs),
            list_depth_limit: cfg.list_depth_limit,
            exec_arg_max: cfg.exec_arg_max.unwrap_or_else(system_arg_max),
            job_tokens: HashMap::new(),
            agent_endpoint: String::new(),
            agent_binary: crate::agent_api::find_agent_binary(&cfg.executor),
        };
        for t in &cfg.api_tokens {
            let scopes = match cfg.api_token_scopes.get(t) {
                Some(s) => s.clone(),
                None => DEFAULT_TOKEN_SCOPES.iter().map(|s| s.to_string()).collect(),
            };
            inner.add_token(t.clone(), scopes, "configured".into());
        }
        for c in &cfg.clusters {
            let cluster = Cluster {
                id: Uuid::new_v4(),
                name: c.name.clone(),
                description: c.description.clone(),
                default_queue_key: c.default_queue.clone(),
                created_at: now,
            };
            let cid = cluster.id;
            inner.clusters.push(cluster);
            for q in &c.queues {
                inner.create_queue(cid, q, None).map_err(|e| anyhow::anyhow!("queue {q}: {e:?}"))?;
            }
        }
        if let Some(d) = &cfg.default_cluster {
            inner.default_cluster =
                Some(inner.cluster_by_name(Some(d)).map_err(|e| anyhow::anyhow!("default_cluster: {e}"))?);
        }
        let first_cluster = inner.clusters[0].id;
        for t in &cfg.agent_tokens {
            inner.agent_tokens.push(AgentToken {
                id: Uuid::new_v4(),
                cluster_id: first_cluster,
                description: "configured".into(),
                token: t.clone(),
                created_at: now,
            });
        }
        for p in &cfg.pipelines {
            inner.add_pipeline(p).map_err(|e| anyhow::anyhow!("pipeline {}: {e}", p.slug))?;
        }
        for pool in &cfg.agents {
            inner.set_pool(pool).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(inner)
    }

    fn emit(&self, name: &'static str, build: Uuid, job: Option<Uuid>) {
        if let Some(tx) = &self.events {
            let _ = tx.send(Event { name, build, job });
        }
    }

    /// Adds a REST token (its own user for the per-user rate limit) and returns its uuid.
    pub fn add_token(&mut self, token: String, scopes: Vec<String>, description: String) -> Uuid {
        let now = Timestamp::now();
        let i = self.users.len();
        let user = User {
            id: Uuid::new_v4(),
            name: if i == 0 { "Buildkite Simulator".into() } else { format!("Buildkite Simulator {i}") },
            email: format!("sim{i}@{}.invalid", self.org.slug),
            created_at: now,
        };
        let uuid = Uuid::new_v4();
        self.tokens.push(ApiToken { token: token.clone(), uuid, scopes, description, created_at: now, user: user.id });
        self.users.push((token, user));
        uuid
    }

    pub fn token(&self, token: &str) -> Option<&ApiToken> {
        self.tokens.iter().find(|t| t.token == token)
    }

    pub fn user_for_token(&self, token: &str) -> Option<&User> {
        self.users.iter().find(|(t, _)| t == token).map(|(_, u)| u)
    }

    /// A cluster by name or id; `None`: the organization's default cluster, else the first.
    pub fn cluster_by_name(&self, name: Option<&str>) -> Result<Uuid, String> {
        match name {
            None => Ok(self.default_cluster.unwrap_or(self.clusters[0].id)),
            Some(n) => self
                .clusters
                .iter()
                .find(|c| c.name == n || c.id.to_string() == n)
                .map(|c| c.id)
                .ok_or_else(|| format!("no cluster named {n:?}")),
        }
    }

    /// A pipeline from the config (or `/_sim/pipelines`).
    pub fn add_pipeline(&mut self, p: &PipelineConfig) -> Result<(), String> {
        if !crate::steps::valid_slug(&p.slug) {
            return Err(format!("pipeline slug {:?} is not a valid slug", p.slug));
        }
        if self.pipelines.contains_key(&p.slug) {
            return Err(format!("pipeline {} already exists", p.slug));
        }
        let cluster_id = self.cluster_by_name(p.cluster.as_deref())?;
        let (template, configuration, timeout_overrides) = match &p.configuration {
            Some(text) => (crate::steps::parse_yaml(text).map_err(|e| e.to_string())?, text.clone(), Vec::new()),
            None => {
                let doc = steps_document(p);
                let text = serde_yaml::to_string(&doc).map_err(|e| format!("rendering the steps: {e}"))?;
                let overrides = p
                    .steps
                    .iter()
                    .map(|s| s.timeout_secs.filter(|t| t.is_finite() && *t > 0.0).map(Duration::from_secs_f64))
                    .collect();
                (doc, text, overrides)
            }
        };
        let settings = crate::steps::settings_from_value(&template).map_err(|e| e.to_string())?;
        self.insert_pipeline(PipelineSpec {
            slug: p.slug.clone(),
            name: p.name.clone().unwrap_or_else(|| p.slug.clone()),
            description: p.description.clone(),
            repository: p.repository.clone(),
            default_branch: p.default_branch.clone(),
            cluster_id,
            skip_queued_branch_builds: p.skip_queued_branch_builds,
            skip_queued_branch_builds_filter: p.skip_queued_branch_builds_filter.clone(),
            cancel_running_branch_builds: p.cancel_running_branch_builds,
            cancel_running_branch_builds_filter: p.cancel_running_branch_builds_filter.clone(),
            branch_configuration: p.branch_configuration.clone(),
            configuration,
            template,
            settings,
            timeout_overrides,
            created_by: None,
        });
        Ok(())
    }

    /// Stores a validated pipeline (the slug must be free).
    pub fn insert_pipeline(&mut self, s: PipelineSpec) -> Uuid {
        let id = Uuid::new_v4();
        self.pipelines.insert(
            s.slug.clone(),
            Pipeline {
                id,
                slug: s.slug,
                name: s.name,
                description: s.description,
                repository: s.repository,
                default_branch: s.default_branch,
                cluster_id: s.cluster_id,
                skip_queued_branch_builds: s.skip_queued_branch_builds,
                skip_queued_branch_builds_filter: s.skip_queued_branch_builds_filter,
                cancel_running_branch_builds: s.cancel_running_branch_builds,
                cancel_running_branch_builds_filter: s.cancel_running_branch_builds_filter,
                branch_configuration: s.branch_configuration,
                configuration: s.configuration,
                template: s.template,
                settings: s.settings,
                timeout_overrides: s.timeout_overrides,
                next_number: 1,
                created_at: Timestamp::now(),
                created_by: s.created_by,
                archived_at: None,
            },
        );
        id
    }

    // ----- queues & clusters -------------------------------------------------------------

    pub fn queue(&self, cluster: Uuid, key: &str) -> Option<&Queue> {
        self.queues.iter().find(|q| q.cluster_id == cluster && q.key == key)
    }

    pub fn create_queue(&mut self, cluster: Uuid, key: &str, description: Option<String>) -> Result<Uuid, OpError> {
        validate_queue_key(key).map_err(|e| OpError::Unprocessable(format!("Validation failed: {e}")))?;
        if self.queue(cluster, key).is_some() {
            return Err(OpError::Unprocessable("Validation failed: Key has already been taken".into()));
        }
        let q = Queue {
            id: Uuid::new_v4(),
            cluster_id: cluster,
            key: key.to_string(),
            description,
            dispatch_paused: false,
            dispatch_paused_at: None,
            dispatch_paused_note: None,
            created_at: Timestamp::now(),
        };
        let id = q.id;
        self.queues.push(q);
        // Agents that were refused because the queue was missing can connect now.
        let r: QueueRef = (cluster, key.to_string());
        if self.pools.contains_key(&r) {
            self.reconcile_pool(&r);
        }
        Ok(id)
    }

    pub fn delete_queue(&mut self, cluster: Uuid, queue_id: Uuid) -> Result<(), OpError> {
        let Some(pos) = self.queues.iter().position(|q| q.id == queue_id && q.cluster_id == cluster) else {
            return Err(OpError::NotFound("No queue found"));
        };
        let key = self.queues[pos].key.clone();
        let connected = self.queue_agents.get(&(cluster, key.clone())).is_some_and(|v| !v.is_empty());
        if connected {
            return Err(OpError::Unprocessable("Queue can't be deleted while agents are connected to it".into()));
        }
        self.queues.remove(pos);
        Ok(())
    }

    pub fn set_dispatch_paused(
        &mut self,
        cluster: Uuid,
        queue_id: Uuid,
        paused: bool,
        note: Option<String>,
    ) -> Result<(), OpError> {
        let q = self
            .queues
            .iter_mut()
            .find(|q| q.id == queue_id && q.cluster_id == cluster)
            .ok_or(OpError::NotFound("No queue found"))?;
        if paused == q.dispatch_paused {
            return Err(OpError::Unprocessable(if paused {
                "Cluster queue is already paused".into()
            } else {
                "Cluster queue is not paused".into()
            }));
        }
        q.dispatch_paused = paused;
        if paused {
            q.dispatch_paused_at = Some(Timestamp::now());
            q.dispatch_paused_note = note;
        } else {
            q.dispatch_paused_at = None;
            q.dispatch_paused_note = None;
        }
        Ok(())
    }

    // ----- agents ---------------------------------------------------------------------------

    fn connect_agent(&mut self, id: Uuid) {
        if let Some(a) = self.agents.get_mut(&id) {
            a.connection_state = ConnectionState::Connected;
            let r = (a.cluster_id, a.queue_key.clone());
            let list = self.queue_agents.entry(r).or_default();
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }

    fn disconnect_agent(&mut self, id: Uuid, state: ConnectionState) {
        if let Some(a) = self.agents.get_mut(&id) {
            a.connection_state = state;
            a.stop_after_job = false;
            let r = (a.cluster_id, a.queue_key.clone());
            if let Some(list) = self.queue_agents.get_mut(&r) {
                list.retain(|x| *x != id);
            }
        }
    }

    /// Sets the desired number of simulated agents of a queue (creating the pool if needed).
    pub fn set_pool(&mut self, cfg: &AgentPoolConfig) -> Result<QueueRef, String> {
        if cfg.queue.is_empty() {
            return Err("a pool needs a queue".into());
        }
        cfg.validate_gpu()?;
        let cluster_id = self.cluster_by_name(cfg.cluster.as_deref())?;
        let r: QueueRef = (cluster_id, cfg.queue.clone());
        let spec = PoolSpec {
            cluster_id,
            queue: cfg.queue.clone(),
            count: cfg.count,
            tags: cfg.tags.clone(),
            env: cfg.env.clone(),
            gpu: cfg.gpu.clone(),
            gpu_by_index: cfg.gpu_by_index.clone(),
        };
        // A changed GPU setting applies to the pool's existing agents too (their job counts
        // stay); an unchanged one keeps what `PUT /_sim/agents/{id}/gpu` set.
        let gpu_changed =
            self.pools.get(&r).is_some_and(|old| old.gpu != spec.gpu || old.gpu_by_index != spec.gpu_by_index);
        if gpu_changed {
            let pool = self.pool_name(&r);
            for a in self.agents.values_mut().filter(|a| a.pool.as_deref() == Some(pool.as_str())) {
                a.gpu = spec.gpu_of(a.index);
            }
        }
        self.pools.insert(r.clone(), spec);
        self.reconcile_pool(&r);
        Ok(r)
    }

    fn pool_name(&self, r: &QueueRef) -> String {
        let cluster = self.clusters.iter().find(|c| c.id == r.0).map_or("cluster", |c| c.name.as_str());
        format!("{cluster}/{}", r.1)
    }

    /// Brings a pool to its desired size. Agents of a queue that does not exist stay
    /// `never_connected` (the real agent refuses to start); they connect once it exists.
    pub fn reconcile_pool(&mut self, r: &QueueRef) {
        let Some(spec) = self.pools.get(r).cloned() else {
            return;
        };
        let pool = self.pool_name(r);
        let exists = self.queue(r.0, &r.1).is_some();
        let members: Vec<Uuid> = self
            .agent_order
            .iter()
            .copied()
            .filter(|id| {
                self.agents.get(id).is_some_and(|a| {
                    a.pool.as_deref() == Some(pool.as_str())
                        && !a.stop_after_job
                        && matches!(a.connection_state, ConnectionState::Connected | ConnectionState::NeverConnected)
                })
            })
            .collect();
        let want = spec.count as usize;
        if members.len() > want {
            let mut excess = members.len() - want;
            // idle agents go first, newest first
            let mut order: Vec<Uuid> = members.clone();
            order.reverse();
            order.sort_by_key(|id| self.agents.get(id).is_some_and(|a| a.job.is_some()));
            for id in order {
                if excess == 0 {
                    break;
                }
                let busy = self.agents.get(&id).is_some_and(|a| a.job.is_some());
                if busy {
                    if let Some(a) = self.agents.get_mut(&id) {
                        a.stop_after_job = true;
                        a.connection_state = ConnectionState::Stopping;
                    }
                } else {
                    self.disconnect_agent(id, ConnectionState::Stopped);
                }
                excess -= 1;
            }
        }
        // (re)connect refused agents if the queue exists now
        if exists {
            for id in &members {
                if self.agents.get(id).is_some_and(|a| a.connection_state == ConnectionState::NeverConnected) {
                    self.connect_agent(*id);
                }
            }
        }
        let alive = self
            .agents
            .values()
            .filter(|a| {
                a.pool.as_deref() == Some(pool.as_str())
                    && !a.stop_after_job
                    && matches!(a.connection_state, ConnectionState::Connected | ConnectionState::NeverConnected)
            })
            .count();
        let mut used: Vec<u32> = self
            .agents
            .values()
            .filter(|a| {
                a.pool.as_deref() == Some(pool.as_str())
                    && matches!(
                        a.connection_state,
                        ConnectionState::Connected | ConnectionState::NeverConnected | ConnectionState::Stopping
                    )
            })
            .map(|a| a.index)
            .collect();
        used.sort_unstable();
        let mut next = 0u32;
        for _ in alive..want {
            while used.binary_search(&next).is_ok() {
                next += 1;
            }
            used.push(next);
            used.sort_unstable();
            let n = next.to_string();
            let mut tags = vec![("queue".to_string(), spec.queue.clone())];
            for (k, v) in &spec.tags {
                if k != "queue" {
                    tags.push((k.clone(), v.replace("%n", &n)));
                }
            }
            let env = spec.env.iter().map(|(k, v)| (k.clone(), v.replace("%n", &n))).collect();
            let id = Uuid::new_v4();
            let agent = Agent {
                id,
                name: format!("{}-agent-{n}", spec.queue),
                tags,
                queue_key: spec.queue.clone(),
                cluster_id: spec.cluster_id,
                connection_state: ConnectionState::NeverConnected,
                job: None,
                stop_after_job: false,
                mode: AgentMode::Simulator,
                pool: Some(pool.clone()),
                index: next,
                env,
                hostname: format!("sim-{}-{n}", spec.queue),
                created_at: Timestamp::now(),
                last_job_finished_at: None,
                gpu: spec.gpu_of(next),
                jobs_started: 0,
            };
            self.agents.insert(id, agent);
            self.agent_order.push(id);
            if exists {
                self.connect_agent(id);
            }
        }
    }

    /// Registers an agent from outside. Fails (like the real agent) if its queue does not
    /// exist in the cluster.
    pub fn register_agent(
        &mut self,
        name: String,
        tags: Vec<(String, String)>,
        cluster: Option<&str>,
        mode: AgentMode,
        env: BTreeMap<String, String>,
        gpu: Option<crate::gpu::GpuProfile>,
    ) -> Result<Uuid, OpError> {
        if let Some(g) = &gpu {
            g.validate().map_err(OpError::Unprocessable)?;
        }
        let cluster_id = self.cluster_by_name(cluster).map_err(OpError::Unprocessable)?;
        let queue_key = tags
            .iter()
            .find(|(k, _)| k == "queue")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| self.default_queue_key(cluster_id));
        if self.queue(cluster_id, &queue_key).is_none() {
            return Err(OpError::Unprocessable(format!(
                "agent refused: queue {queue_key:?} does not exist in the cluster"
            )));
        }
        let mut tags = tags;
        if !tags.iter().any(|(k, _)| k == "queue") {
            tags.insert(0, ("queue".into(), queue_key.clone()));
        }
        let id = Uuid::new_v4();
        self.agents.insert(
            id,
            Agent {
                id,
                hostname: name.clone(),
                name,
                tags,
                queue_key,
                cluster_id,
                connection_state: ConnectionState::NeverConnected,
                job: None,
                stop_after_job: false,
                mode,
                pool: None,
                index: 0,
                env,
                created_at: Timestamp::now(),
                last_job_finished_at: None,
                gpu,
                jobs_started: 0,
            },
        );
        self.agent_order.push(id);
        self.connect_agent(id);
        Ok(id)
    }

    /// Replaces an agent's simulated GPU (`None`: no `SIMGPU_*` env from its next job on);
    /// its job count stays.
    pub fn set_agent_gpu(&mut self, id: Uuid, gpu: Option<crate::gpu::GpuProfile>) -> Result<(), OpError> {
        if let Some(g) = &gpu {
            g.validate().map_err(OpError::Unprocessable)?;
        }
        let a = self.agents.get_mut(&id).ok_or(OpError::NotFound("No agent found"))?;
        a.gpu = gpu;
        Ok(())
    }

    /// Stops an agent (REST `PUT …/agents/{id}/stop`). With `force`, a running job and its
    /// build are canceled; without, the agent finishes its job first.
    pub fn stop_agent(&mut self, id: Uuid, force: bool) -> Result<(), OpError> {
        let a = self.agents.get(&id).ok_or(OpError::NotFound("No agent found"))?;
        if a.connection_state != ConnectionState::Connected {
            return Err(OpError::BadRequest("Can only stop connected agents".into()));
        }
        match a.job {
            None => self.disconnect_agent(id, ConnectionState::Stopped),
            Some(job) => {
                if force && let Some(build) = self.jobs.get(&job).map(|j| j.build) {
                    let _ = self.cancel_build(build, Some("agent stopped".into()));
                }
                if let Some(a) = self.agents.get_mut(&id) {
                    a.stop_after_job = true;
                    a.connection_state = ConnectionState::Stopping;
                }
            }
        }
        Ok(())
    }

    /// Disconnects an agent at once (`DELETE /_sim/agents/{id}`): a running job fails like
    /// with a lost agent (`exit_status -1`).
    pub fn remove_agent(&mut self, id: Uuid) -> Result<(), OpError> {
        let a = self.agents.get(&id).ok_or(OpError::NotFound("No agent found"))?;
        if let Some(job) = a.job
            && let Some(tx) = self.running.remove(&job)
        {
            let _ = tx.send(Stop::Infra(InfraFailure {
                signal_reason: None,
                exit_status: -1,
                after_ms: 0,
                lose_agent: true,
            }));
            if let Some(a) = self.agents.get_mut(&id) {
                a.stop_after_job = true;
            }
            return Ok(());
        }
        self.disconnect_agent(id, ConnectionState::Disconnected);
        Ok(())
    }

    pub fn default_queue_key(&self, cluster: Uuid) -> String {
        self.clusters
            .iter()
            .find(|c| c.id == cluster)
            .map_or_else(|| "default".to_string(), |c| c.default_queue_key.clone())
    }

    // ----- builds -----------------------------------------------------------------------------

    // ----- builds -----------------------------------------------------------------------------

    pub fn build_by_number(&self, pipeline: &str, number: u64) -> Option<&Build> {
        self.build_by_number.get(&(pipeline.to_string(), number)).and_then(|id| self.builds.get(id))
    }

    /// Creates a build: the pipeline's settings steps are interpolated with Buildkite's
    /// fixed build variables only (never `req.env`), one job per command step.
    pub fn create_build(&mut self, pipeline: &str, req: CreateBuild, creator: Uuid) -> Result<(Uuid, bool), OpError> {
        let p = self.pipelines.get(pipeline).ok_or(OpError::NotFound("No pipeline found"))?;
        if p.archived_at.is_some() {
            // "Archived pipelines are read-only" (REST "Archive a pipeline"); the wording of
            // the refusal is a guess.
            return Err(OpError::Unprocessable("This pipeline is archived and can't be built".into()));
        }
        if let Some(filter) = p.branch_configuration.as_deref().filter(|f| !f.trim().is_empty())
            && !req.ignore_pipeline_branch_filters
            && !crate::steps::branch_matches(filter, &req.branch)
        {
            // The create-build docs: `ignore_pipeline_branch_filters` "Run the build regardless
            // of the pipeline's branch filtering rules". The refusal's wording is a guess.
            return Err(OpError::Unprocessable(format!(
                "Branch {:?} does not match the pipeline's branch filter",
                req.branch
            )));
        }
        // Docs "Environment variables" → "Variable interpolation": only a fixed subset is
        // available to steps saved in the pipeline settings; the build env is not.
        let vars = crate::steps::build_variables(
            &req.branch,
            &req.commit,
            req.message.as_deref().unwrap_or_default(),
            &p.slug,
            &p.name,
            &p.id.to_string(),
            &self.org.slug,
            &p.repository,
        );
        let doc = crate::steps::interpolate_value(&p.template, &vars);
        let settings = crate::steps::settings_from_value(&doc)
            .map_err(|e| OpError::Unprocessable(format!("The pipeline configuration is not valid: {e}")))?;
        let timeout_overrides = p.timeout_overrides.clone();
        let cluster_id = p.cluster_id;
        let (skip_queued, skip_filter) = (p.skip_queued_branch_builds, p.skip_queued_branch_builds_filter.clone());
        let (cancel_running, cancel_filter) =
            (p.cancel_running_branch_builds, p.cancel_running_branch_builds_filter.clone());
        let Some(p) = self.pipelines.get_mut(pipeline) else {
            return Err(OpError::NotFound("No pipeline found"));
        };
        let number = p.next_number;
        p.next_number += 1;

        let now = Timestamp::now();
        let build_id = Uuid::new_v4();
        let default_queue = self.default_queue_key(cluster_id);
        let executor_command = match &self.executor {
            ExecutorConfig::Command { command, .. } => Some(command.clone()),
            ExecutorConfig::Scripted(_) => None,
        };
        let timeout_override = req
            .env
            .get("BUILDKITE_SIM_TIMEOUT_SECS")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(Duration::from_secs_f64);

        let mut job_ids = Vec::with_capacity(settings.steps.len());
        for (i, step) in settings.steps.iter().enumerate() {
            let rules: Vec<String> = step.agents.iter().filter(|r| !r.is_empty()).cloned().collect();
            let queue_key = rules
                .iter()
                .find_map(|r| r.strip_prefix("queue=").map(str::to_string))
                .filter(|q| !q.is_empty())
                .unwrap_or_else(|| default_queue.clone());
            let rules = if rules.iter().any(|r| r.starts_with("queue=")) {
                rules.into_iter().map(|r| if r == "queue=" { format!("queue={queue_key}") } else { r }).collect()
            } else {
                rules
            };
            let job = Job {
                id: Uuid::new_v4(),
                build: build_id,
                step_id: Uuid::new_v4(),
                step_key: step.key.clone(),
                name: step.label.clone(),
                command: step.command.clone().or_else(|| executor_command.clone()),
                agent_query_rules: rules,
                queue_key,
                cluster_id,
                state: JobState::Scheduled,
                exit_status: None,
                signal: None,
                signal_reason: None,
                artifact_paths: step.artifact_paths.clone(),
                timeout: timeout_override.or(timeout_overrides.get(i).copied().flatten()).or(step.timeout),
                agent: None,
                created_at: now,
                scheduled_at: now,
                runnable_at: Some(now),
                started_at: None,
                finished_at: None,
                expired_at: None,
                log: String::new(),
                step_env: step.env.clone(),
                checkout_skip: step.checkout_skip,
                retry_rules: step.retry.clone(),
                retry_counts: vec![0; step.retry.len()],
                attempt: 0,
                retried: false,
                retried_in_job_id: None,
                retry_source: None,
                checkout: None,
            };
            job_ids.push(job.id);
            self.pending.entry((cluster_id, job.queue_key.clone())).or_default().push_back(job.id);
            self.jobs.insert(job.id, job);
            self.job_stats.created += 1;
        }

        let build = Build {
            id: build_id,
            number,
            pipeline: pipeline.to_string(),
            state: BuildState::Scheduled,
            blocked: false,
            cancel_reason: None,
            message: req.message,
            commit: req.commit,
            branch: req.branch,
            env: req.env,
            pipeline_env: settings.env,
            meta_data: req.meta_data,
            author: req.author,
            clean_checkout: req.clean_checkout,
            creator,
            jobs: job_ids.clone(),
            created_at: now,
            scheduled_at: now,
            started_at: None,
            failing_at: None,
            finished_at: None,
        };
        let branch = build.branch.clone();

        // Docs "Skipping builds": "Skip queued intermediate builds … applies to builds in the
        // scheduled and creating states"; docs "Canceling builds": "Cancel running intermediate
        // builds … applies to builds in the started, failing, and blocked (running) states".
        // Both only touch builds of the same branch; the filter limits the branches.
        let applies = |on: bool, filter: &Option<String>| {
            on && filter.as_deref().is_none_or(|f| crate::steps::branch_matches(f, &branch))
        };
        let skip = applies(skip_queued, &skip_filter);
        let cancel = applies(cancel_running, &cancel_filter);
        if skip || cancel {
            let older: Vec<(Uuid, BuildState)> = self
                .build_order
                .iter()
                .filter_map(|id| self.builds.get(id))
                .filter(|b| b.pipeline == pipeline && b.branch == branch)
                .map(|b| (b.id, b.state))
                .collect();
            for (id, state) in older {
                match state {
                    BuildState::Scheduled | BuildState::Creating if skip => self.skip_build(id),
                    BuildState::Running | BuildState::Failing if cancel => {
                        let _ = self.cancel_build(id, None);
                    }
                    _ => {}
                }
            }
        }

        self.build_by_number.insert((pipeline.to_string(), number), build_id);
        self.builds.insert(build_id, build);
        self.build_order.push(build_id);
        self.emit("build.scheduled", build_id, None);
        for j in &job_ids {
            self.emit("job.scheduled", build_id, Some(*j));
        }
        Ok((build_id, !job_ids.is_empty()))
    }

    fn remove_pending(&mut self, job_id: Uuid) {
        if let Some(j) = self.jobs.get(&job_id)
            && let Some(q) = self.pending.get_mut(&(j.cluster_id, j.queue_key.clone()))
        {
            q.retain(|x| *x != job_id);
        }
    }

    fn skip_build(&mut self, id: Uuid) {
        let Some(b) = self.builds.get(&id) else { return };
        let jobs = b.jobs.clone();
        let now = Timestamp::now();
        for j in &jobs {
            self.remove_pending(*j);
            if let Some(job) = self.jobs.get_mut(j)
                && !job.state.is_terminal()
            {
                job.state = JobState::Skipped;
                job.finished_at = Some(now);
                self.job_stats.skipped += 1;
            }
        }
        if let Some(b) = self.builds.get_mut(&id) {
            b.state = BuildState::Skipped;
            b.finished_at = Some(now);
        }
        self.emit("build.skipped", id, None);
    }

    /// Forces a build into a final state (`/_sim/builds/{id}/state`): `skipped`, `not_run`,
    /// `blocked` (finished with `blocked: true`), `canceled`, `passed` or `failed`. Running
    /// jobs are stopped.
    pub fn force_build_state(&mut self, id: Uuid, state: BuildState) -> Result<(), OpError> {
        let b = self.builds.get(&id).ok_or(OpError::NotFound("No build found"))?;
        if b.state.is_finished() {
            return Err(OpError::Unprocessable(format!("build is already {}", b.state)));
        }
        let jobs = b.jobs.clone();
        let now = Timestamp::now();
        let job_state = match state {
            BuildState::Passed => JobState::Passed,
            BuildState::Failed => JobState::Failed,
            BuildState::Canceled => JobState::Canceled,
            BuildState::Skipped | BuildState::NotRun | BuildState::Blocked => JobState::Skipped,
            _ => {
                return Err(OpError::Unprocessable(format!("can't force a build into {state}")));
            }
        };
        for j in &jobs {
            self.remove_pending(*j);
            if let Some(tx) = self.running.remove(j) {
                let _ = tx.send(Stop::Cancel);
            }
            let agent = self.jobs.get(j).and_then(|job| job.agent);
            if let Some(job) = self.jobs.get_mut(j)
                && !job.state.is_terminal()
            {
                job.state = job_state;
                job.finished_at = Some(now);
            }
            if let Some(a) = agent {
                self.release_agent(a, false);
            }
        }
        if let Some(b) = self.builds.get_mut(&id) {
            b.blocked = state == BuildState::Blocked;
            b.state = if state == BuildState::Blocked { BuildState::Passed } else { state };
            b.finished_at = Some(now);
        }
        let ev = if state == BuildState::Skipped { "build.skipped" } else { "build.finished" };
        self.emit(ev, id, None);
        Ok(())
    }

    /// Forces a job that has not started (`/_sim/jobs/{id}/state`): `limited` (waits, not
    /// dispatched), `scheduled` (back from `limited`), `expired` or `broken` (final).
    pub fn force_job_state(&mut self, id: Uuid, state: JobState) -> Result<(), OpError> {
        let job = self.jobs.get(&id).ok_or(OpError::NotFound("No job found"))?;
        if !matches!(job.state, JobState::Scheduled | JobState::Limited) {
            return Err(OpError::Unprocessable(format!("job is {}, not scheduled", job.state)));
        }
        let build = job.build;
        let now = Timestamp::now();
        match state {
            JobState::Limited | JobState::Scheduled => {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.state = state;
                }
            }
            JobState::Expired | JobState::Broken => {
                self.remove_pending(id);
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.state = state;
                    j.finished_at = Some(now);
                    if state == JobState::Expired {
                        j.expired_at = Some(now);
                    }
                }
                if state == JobState::Expired {
                    self.job_stats.expired += 1;
                }
                self.emit("job.finished", build, Some(id));
                self.update_build(build);
            }
            _ => return Err(OpError::Unprocessable(format!("can't force a job into {state}"))),
        }
        Ok(())
    }

    /// Scheduled (or limited) jobs older than the job expiry become `expired` and fail their
    /// build (docs "Build timeouts" → "Scheduled job expiration": calculated "from when a job
    /// is created"). Returns how many expired.
    pub fn expire_jobs(&mut self, now: Timestamp) -> usize {
        let expiry = jiff::SignedDuration::try_from(self.job_expiry).unwrap_or(jiff::SignedDuration::MAX);
        let due: Vec<Uuid> = self
            .pending
            .values()
            .flatten()
            .filter(|id| {
                self.jobs.get(id).is_some_and(|j| {
                    matches!(j.state, JobState::Scheduled | JobState::Limited)
                        && j.created_at.checked_add(expiry).is_ok_and(|t| t <= now)
                })
            })
            .copied()
            .collect();
        for id in &due {
            let _ = self.force_job_state(*id, JobState::Expired);
        }
        due.len()
    }

    /// Artifacts older than the retention become `expired` (their content is gone).
    pub fn expire_artifacts(&mut self, now: Timestamp) -> usize {
        let retention = jiff::SignedDuration::try_from(self.artifact_retention).unwrap_or(jiff::SignedDuration::MAX);
        let mut n = 0;
        for a in self.artifacts.values_mut() {
            if matches!(a.state, "finished" | "new" | "error")
                && a.created_at.checked_add(retention).is_ok_and(|t| t <= now)
            {
                a.state = "expired";
                a.content = Bytes::new();
                n += 1;
            }
        }
        n
    }

    /// Sets an artifact's state (`/_sim`); `expired` and `deleted` drop the content.
    pub fn set_artifact_state(&mut self, id: Uuid, state: &str) -> Result<(), OpError> {
        let state = ARTIFACT_STATES
            .iter()
            .find(|s| **s == state)
            .ok_or_else(|| OpError::Unprocessable(format!("artifact state must be one of {ARTIFACT_STATES:?}")))?;
        let a = self.artifacts.get_mut(&id).ok_or(OpError::NotFound("No artifact found"))?;
        a.state = state;
        if matches!(*state, "expired" | "deleted") {
            a.content = Bytes::new();
        }
        Ok(())
    }

    /// `PUT …/cancel`: only while scheduled, running or failing (else 422).
    pub fn cancel_build(&mut self, id: Uuid, reason: Option<String>) -> Result<(), OpError> {
        let b = self.builds.get(&id).ok_or(OpError::NotFound("No build found"))?;
        if !matches!(b.state, BuildState::Scheduled | BuildState::Running | BuildState::Failing) {
            return Err(OpError::Unprocessable(format!("Build can't be canceled because it's {}", b.state)));
        }
        let jobs = b.jobs.clone();
        let now = Timestamp::now();
        let mut active = 0;
        for j in &jobs {
            let Some(state) = self.jobs.get(j).map(|job| job.state) else {
                continue;
            };
            if state.is_terminal() {
                continue;
            }
            if state.is_active() {
                active += 1;
                if let Some(job) = self.jobs.get_mut(j) {
                    job.state = JobState::Canceling;
                }
                if let Some(tx) = self.running.remove(j) {
                    let _ = tx.send(Stop::Cancel);
                }
            } else {
                self.remove_pending(*j);
                if let Some(job) = self.jobs.get_mut(j) {
                    job.state = JobState::Canceled;
                    job.finished_at = Some(now);
                    self.job_stats.canceled += 1;
                }
                self.emit("job.finished", id, Some(*j));
            }
        }
        if let Some(b) = self.builds.get_mut(&id) {
            b.cancel_reason = reason;
            if active > 0 {
                b.state = BuildState::Canceling;
            } else {
                b.state = BuildState::Canceled;
                b.finished_at = Some(now);
            }
        }
        if active == 0 {
            self.emit("build.finished", id, None);
        }
        Ok(())
    }

    // ----- dispatch & completion -------------------------------------------------------------

    /// Assigns scheduled jobs to idle matching agents of non-paused queues (FIFO). `limited`
    /// jobs wait in place.
    pub fn dispatch(&mut self) -> Vec<ExecSpec> {
        let mut specs = Vec::new();
        let keys: Vec<QueueRef> = self.pending.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| k.clone()).collect();
        for key in keys {
            match self.queue(key.0, &key.1) {
                Some(q) if !q.dispatch_paused => {}
                _ => continue,
            }
            let mut idle: Vec<Uuid> = self
                .queue_agents
                .get(&key)
                .map(|v| v.iter().copied().filter(|id| self.agents.get(id).is_some_and(Agent::is_idle)).collect())
                .unwrap_or_default();
            if idle.is_empty() {
                continue;
            }
            let mut pending = self.pending.remove(&key).unwrap_or_default();
            let mut keep = VecDeque::with_capacity(pending.len());
            while let Some(job_id) = pending.pop_front() {
                if idle.is_empty() {
                    keep.push_back(job_id);
                    keep.extend(pending.drain(..));
                    break;
                }
                let Some((rules, state)) = self.jobs.get(&job_id).map(|j| (j.agent_query_rules.clone(), j.state))
                else {
                    continue;
                };
                match state {
                    JobState::Scheduled => {}
                    JobState::Limited => {
                        keep.push_back(job_id);
                        continue;
                    }
                    _ => continue,
                }
                match idle.iter().position(|a| self.agents.get(a).is_some_and(|a| a.matches(&rules))) {
                    Some(pos) => {
                        let agent = idle.remove(pos);
                        if let Some(spec) = self.start_job(job_id, agent) {
                            specs.push(spec);
                        }
                    }
                    None => keep.push_back(job_id),
                }
            }
            self.pending.insert(key, keep);
        }
        specs
    }

    fn start_job(&mut self, job_id: Uuid, agent_id: Uuid) -> Option<ExecSpec> {
        let now = Timestamp::now();
        let (build_id, queue_key) = {
            let job = self.jobs.get(&job_id)?;
            (job.build, job.queue_key.clone())
        };
        // The agent's simulated GPU env of this job, from its job count before the job.
        let gpu_env = {
            let agent = self.agents.get_mut(&agent_id)?;
            agent.job = Some(job_id);
            let index = agent.jobs_started;
            agent.jobs_started = agent.jobs_started.saturating_add(1);
            agent.gpu.as_ref().map(|g| g.env(index)).unwrap_or_default()
        };
        let job = self.jobs.get_mut(&job_id)?;
        job.state = JobState::Running;
        job.agent = Some(agent_id);
        job.started_at = Some(now);
        let job = job.clone();
        self.job_stats.started += 1;
        let mut first = false;
        if let Some(b) = self.builds.get_mut(&build_id)
            && b.state == BuildState::Scheduled
        {
            b.state = BuildState::Running;
            b.started_at = Some(now);
            first = true;
        }
        self.emit("job.started", build_id, Some(job_id));
        if first {
            self.emit("build.running", build_id, None);
        }

        let build = self.builds.get(&build_id)?.clone();
        let agent = self.agents.get(&agent_id)?.clone();
        let pipeline = self.pipelines.get(&build.pipeline)?.clone();

        // injected infrastructure failures: per build env first, then /_sim rules
        let mut infra = build.env.get("BUILDKITE_SIM_INFRA_FAILURE").and_then(|s| InfraFailure::parse(s).ok());
        if infra.is_none()
            && let Some(rule) = self
                .infra_rules
                .iter_mut()
                .find(|r| r.remaining > 0 && r.queue.as_ref().is_none_or(|q| *q == queue_key))
        {
            rule.remaining -= 1;
            infra = Some(rule.failure.clone());
        }
        self.infra_rules.retain(|r| r.remaining > 0);

        let kind = match (&agent.mode, &self.executor) {
            (AgentMode::External, _) => ExecKind::External,
            (_, ExecutorConfig::Command { command, shell, cancel_grace_secs, max_log_bytes, .. }) => {
                ExecKind::Command {
                    shell: shell.clone(),
                    command: job.command.clone().unwrap_or_else(|| command.clone()),
                    cancel_grace: Duration::from_secs_f64(cancel_grace_secs.clamp(0.0, 3600.0)),
                    max_log_bytes: *max_log_bytes,
                }
            }
            (_, ExecutorConfig::Scripted(s)) => {
                let mut s = s.clone();
                if let Some(v) = build.env.get("BUILDKITE_SIM_DURATION_MS").and_then(|v| v.trim().parse().ok()) {
                    s.duration_ms = v;
                }
                if let Some(v) = build.env.get("BUILDKITE_SIM_EXIT_STATUS").and_then(|v| v.trim().parse().ok()) {
                    s.exit_status = v;
                }
                if let Some(v) = build.env.get("BUILDKITE_SIM_RESULT_JSON") {
                    s.result_json = Some(v.clone());
                }
                if let Some(md) = build
                    .env
                    .get("BUILDKITE_SIM_META_DATA")
                    .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v).ok())
                {
                    s.meta_data.extend(md);
                }
                ExecKind::Scripted(s)
            }
        };

        let dir = self.job_dir.join(format!("bk-sim-job-{job_id}"));
        let meta_data_file = self.job_dir.join(format!("bk-sim-job-{job_id}.meta-data"));
        // Job environment precedence (docs "Environment variables" → "Environment variable
        // precedence"): pipeline `env` < build `env` < step `env` < Buildkite's standard
        // variables; the agent's own environment is below all of them (agent
        // `job_runner.go`: `append(os.Environ(), env...)`).
        let mut agent_env: BTreeMap<String, String> = BTreeMap::new();
        if let ExecutorConfig::Command { env: e, .. } = &self.executor {
            agent_env.extend(e.clone());
        }
        agent_env.extend(agent.env.clone());
        let mut job_env: BTreeMap<String, String> = build.pipeline_env.clone();
        job_env.extend(build.env.clone());
        job_env.extend(job.step_env.clone());
        let mut env = agent_env.clone();
        env.extend(job_env.clone());
        // `checkout.skip` is "Emitted as BUILDKITE_SKIP_CHECKOUT" and "always takes effect"
        // (docs "Command step" → "Checkout attributes").
        if let Some(skip) = job.checkout_skip {
            env.insert("BUILDKITE_SKIP_CHECKOUT".into(), skip.to_string());
        }
        let creator = self.users.iter().find(|(_, u)| u.id == build.creator).map(|(_, u)| u.clone());
        let web = format!("{}/{}/{}/builds/{}", self.web_base, self.org.slug, pipeline.slug, build.number);
        let mut protected: Vec<(&str, String)> = vec![
            ("CI", "true".into()),
            ("BUILDKITE", "true".into()),
            ("BUILDKITE_ORGANIZATION_SLUG", self.org.slug.clone()),
            ("BUILDKITE_PIPELINE_SLUG", pipeline.slug.clone()),
            ("BUILDKITE_PIPELINE_NAME", pipeline.name.clone()),
            ("BUILDKITE_PIPELINE_ID", pipeline.id.to_string()),
            ("BUILDKITE_PIPELINE_DEFAULT_BRANCH", pipeline.default_branch.clone()),
            ("BUILDKITE_REPO", pipeline.repository.clone()),
            ("BUILDKITE_BUILD_ID", build.id.to_string()),
            ("BUILDKITE_BUILD_NUMBER", build.number.to_string()),
            ("BUILDKITE_BUILD_URL", web),
            ("BUILDKITE_BRANCH", build.branch.clone()),
            ("BUILDKITE_COMMIT", build.commit.clone()),
            ("BUILDKITE_MESSAGE", build.message.clone().unwrap_or_default()),
            ("BUILDKITE_SOURCE", "api".into()),
            ("BUILDKITE_BUILD_CREATOR", creator.as_ref().map(|u| u.name.clone()).unwrap_or_default()),
            ("BUILDKITE_BUILD_CREATOR_EMAIL", creator.as_ref().map(|u| u.email.clone()).unwrap_or_default()),
            ("BUILDKITE_JOB_ID", job.id.to_string()),
            ("BUILDKITE_STEP_ID", job.step_id.to_string()),
            ("BUILDKITE_STEP_KEY", job.step_key.clone().unwrap_or_default()),
            ("BUILDKITE_LABEL", job.name.clone()),
            (
                "BUILDKITE_COMMAND",
                match &kind {
                    ExecKind::Command { command, .. } => command.clone(),
                    _ => job.command.clone().unwrap_or_default(),
                },
            ),
            ("BUILDKITE_ARTIFACT_PATHS", job.artifact_paths.clone()),
            ("BUILDKITE_RETRY_COUNT", job.attempt.to_string()),
            (
                "BUILDKITE_TIMEOUT",
                job.timeout.map_or_else(|| "false".into(), |t| (t.as_secs().div_ceil(60)).to_string()),
            ),
            ("BUILDKITE_AGENT_ID", agent.id.to_string()),
            ("BUILDKITE_AGENT_NAME", agent.name.clone()),
            ("BUILDKITE_BUILD_CHECKOUT_PATH", dir.to_string_lossy().into_owned()),
        ];
        let mut bin_dir = None;
        if let ExecutorConfig::Command { meta_data_file: file_on, .. } = &self.executor
            && matches!(kind, ExecKind::Command { .. })
        {
            if *file_on {
                protected.push(("BUILDKITE_SIM_META_DATA_FILE", meta_data_file.to_string_lossy().into_owned()));
            }
            // Like the agent (`agent/job_runner.go`): a job token for this job only, the
            // Agent API endpoint, and the directory of `buildkite-agent` first on `PATH`.
            let token = self.issue_job_token(job_id);
            protected.push(("BUILDKITE_AGENT_ACCESS_TOKEN", token));
            protected.push(("BUILDKITE_AGENT_ENDPOINT", self.agent_endpoint.clone()));
            if self.agent_binary.is_some() {
                let bin = self.job_dir.join(format!("bk-sim-job-{job_id}.bin"));
                let path = env.get("PATH").cloned().unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
                env.insert("PATH".into(), format!("{}:{path}", bin.display()));
                protected.push(("BUILDKITE_BIN_PATH", bin.to_string_lossy().into_owned()));
                bin_dir = Some(bin);
            }
        }
        for (k, v) in &agent.tags {
            let key = format!("BUILDKITE_AGENT_META_DATA_{}", k.to_ascii_uppercase().replace(['-', '.', ' '], "_"));
            env.insert(key, v.clone());
        }
        for (k, v) in protected {
            env.insert(k.to_string(), v);
        }
        // The simulated GPU is the "hardware": set after the build env, no build overrides it.
        env.extend(gpu_env);

        let preflight = if agent.mode == AgentMode::Simulator {
            let argv: Vec<String> = match &kind {
                ExecKind::Command { shell, command, .. } => shell.iter().cloned().chain([command.clone()]).collect(),
                _ => vec!["buildkite-agent".into(), "bootstrap".into()],
            };
            self.preflight(&job, &pipeline, &agent_env, &job_env, &env, &argv)
        } else {
            None
        };

        let (stop_tx, stop_rx) = oneshot::channel();
        self.running.insert(job_id, stop_tx);
        let external_rx = if matches!(kind, ExecKind::External) && preflight.is_none() {
            let (tx, rx) = oneshot::channel();
            self.external.insert(job_id, tx);
            Some(rx)
        } else {
            None
        };
        Some(ExecSpec {
            job: job_id,
            build: build_id,
            kind,
            env: env.into_iter().collect(),
            artifact_paths: job.artifact_paths.clone(),
            timeout: job.timeout,
            infra,
            preflight,
            stop_rx,
            external_rx,
            dir,
            meta_data_file,
            bin_dir: bin_dir.zip(self.agent_binary.clone()),
            keep_dir: self.keep_job_dirs,
        })
    }

    /// What the agent does before the command: exec the bootstrap with the job env (E2BIG →
    /// `process_run_error`), then check out the repository unless skipped. `Some` is the
    /// job's outcome when one of them fails.
    fn preflight(
        &mut self,
        job: &Job,
        pipeline: &Pipeline,
        agent_env: &BTreeMap<String, String>,
        job_env: &BTreeMap<String, String>,
        env: &BTreeMap<String, String>,
        argv: &[String],
    ) -> Option<Outcome> {
        if let Err(why) = exec_env_check(env, argv, self.exec_arg_max) {
            self.job_stats.exec_env_errors += 1;
            // Agent `agent/run_job.go` (runJob): when the process cannot be started it logs
            // "Error running job: …" and finishes the job with `Status: -1,
            // SignalReason: SignalReasonProcessRunError` — no signal, the command never ran.
            let mut o = Outcome::from_exit(-1);
            o.state = JobState::Failed;
            o.signal_reason = Some("process_run_error".into());
            o.log = format!("Error running job: fork/exec /usr/bin/buildkite-agent: argument list too long ({why})\n");
            return Some(o);
        }
        let truthy =
            |v: Option<&String>| v.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"));
        // Agent `clicommand/global.go` (`skip-checkout`, env BUILDKITE_SKIP_CHECKOUT) and
        // `agent/job_runner.go`: the agent's own setting skips the checkout; job env may only
        // set it when the agent's checkout-override mode lets it (the simulated agents
        // default to the strict mode, see README).
        let mode = agent_env.get("BUILDKITE_CHECKOUT_OVERRIDE_MODE").map_or("strict", |s| s.trim());
        let skip = match job.checkout_skip {
            Some(s) => s,
            None => {
                truthy(agent_env.get("BUILDKITE_SKIP_CHECKOUT"))
                    || (mode != "strict" && truthy(job_env.get("BUILDKITE_SKIP_CHECKOUT")))
            }
        };
        let checkout = if skip {
            self.job_stats.checkouts_skipped += 1;
            "skipped"
        } else {
            match self.repositories.get(&pipeline.repository).copied().unwrap_or(RepositoryVisibility::Private) {
                RepositoryVisibility::Public => {
                    self.job_stats.checkouts += 1;
                    "cloned"
                }
                RepositoryVisibility::Private => {
                    self.job_stats.checkout_failures += 1;
                    "failed"
                }
            }
        };
        if let Some(j) = self.jobs.get_mut(&job.id) {
            j.checkout = Some(checkout);
        }
        if checkout != "failed" {
            return None;
        }
        // What `git clone` prints without a key for the remote; git exits 128 and the agent
        // finishes the job with that exit status after its checkout attempts.
        let repo = &pipeline.repository;
        let reason = if repo.starts_with("http://") || repo.starts_with("https://") {
            let host = repo.split('/').take(3).collect::<Vec<_>>().join("/");
            format!("fatal: could not read Username for '{host}': terminal prompts disabled\n")
        } else {
            let host = repo.split(':').next().unwrap_or(repo);
            format!(
                "{host}: Permission denied (publickey).\r\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.\n"
            )
        };
        let mut o = Outcome::from_exit(128);
        o.log = format!(
            "~~~ Preparing working directory\n$ git clone -v -- {repo} .\nCloning into '.'...\n{reason}🚨 Error: exit status 128\n"
        );
        Some(o)
    }

    fn release_agent(&mut self, agent_id: Uuid, lost: bool) {
        let now = Timestamp::now();
        let (stop, pool_key) = match self.agents.get_mut(&agent_id) {
            Some(a) => {
                a.job = None;
                a.last_job_finished_at = Some(now);
                (a.stop_after_job, a.pool.as_ref().map(|_| (a.cluster_id, a.queue_key.clone())))
            }
            None => return,
        };
        if lost {
            self.disconnect_agent(agent_id, ConnectionState::Lost);
        } else if stop {
            self.disconnect_agent(agent_id, ConnectionState::Stopped);
        }
        if (lost || stop)
            && let Some(r) = pool_key
        {
            // the pool replaces the agent (like a restarted pod)
            self.reconcile_pool(&r);
        }
    }

    /// Records the end of a job, retries it if its step says so, and moves the build on.
    pub fn finish_job(&mut self, job_id: Uuid, outcome: Outcome) {
        let now = Timestamp::now();
        self.running.remove(&job_id);
        self.external.remove(&job_id);
        // "Job tokens are valid until the job finishes" (docs "Agent tokens").
        self.job_tokens.retain(|_, j| *j != job_id);
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.state.is_terminal() {
            return;
        }
        let canceled = job.state == JobState::Canceling;
        job.state = if canceled { JobState::Canceled } else { outcome.state };
        job.exit_status = outcome.exit_status.or(if canceled { Some(-1) } else { None });
        job.signal = outcome.signal.clone();
        job.signal_reason = if canceled {
            outcome.signal_reason.clone().or(Some("cancel".into()))
        } else {
            outcome.signal_reason.clone()
        };
        job.finished_at = Some(now);
        job.log = outcome.log;
        let build_id = job.build;
        let agent = job.agent;
        match job.state {
            JobState::Passed => self.job_stats.passed += 1,
            JobState::TimedOut => self.job_stats.timed_out += 1,
            JobState::Canceled => self.job_stats.canceled += 1,
            _ => self.job_stats.failed += 1,
        }
        let infra = outcome.lose_agent || matches!(outcome.signal_reason.as_deref(), Some(r) if r != "cancel");
        if infra && !canceled && outcome.exit_status != Some(0) {
            self.job_stats.infra_failures += 1;
        }
        let upload_state = self
            .builds
            .get(&build_id)
            .and_then(|b| b.env.get("BUILDKITE_SIM_ARTIFACT_STATE"))
            .and_then(|s| ARTIFACT_STATES.iter().copied().find(|x| *x == s.trim()))
            .unwrap_or("finished");
        for (path, content) in outcome.artifacts {
            let mut a = Artifact::new(job_id, build_id, path, content);
            a.state = upload_state;
            if matches!(upload_state, "expired" | "deleted") {
                a.content = Bytes::new();
            }
            self.build_artifacts.entry(build_id).or_default().push(a.id);
            self.artifacts.insert(a.id, a);
        }
        if let Some(b) = self.builds.get_mut(&build_id) {
            for (k, v) in outcome.meta_data {
                b.meta_data.insert(k, v);
            }
        }
        if let Some(a) = agent {
            self.release_agent(a, outcome.lose_agent);
        }
        self.emit("job.finished", build_id, Some(job_id));
        if !canceled {
            self.maybe_retry(job_id);
        }
        self.update_build(build_id);
    }

    /// Docs "Retry": the first `retry.automatic` rule matching the job's `exit_status`,
    /// `signal` and `signal_reason` retries it while its own count is under its `limit`; the
    /// job becomes `retried: true` with `retried_in_job_id`, and a new job of the same step
    /// is scheduled. "Automatic retries never run for jobs that finish in the canceled state,
    /// or for any job in a canceled build."
    fn maybe_retry(&mut self, job_id: Uuid) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        if !matches!(job.state, JobState::Failed | JobState::TimedOut) {
            return;
        }
        if self.builds.get(&job.build).is_none_or(|b| matches!(b.state, BuildState::Canceling | BuildState::Canceled)) {
            return;
        }
        let Some(idx) = job
            .retry_rules
            .iter()
            .position(|r| r.matches(job.exit_status, job.signal.as_deref(), job.signal_reason.as_deref()))
        else {
            return;
        };
        if job.retry_counts.get(idx).copied().unwrap_or(0) >= job.retry_rules[idx].limit {
            return;
        }
        let now = Timestamp::now();
        let mut next = job.clone();
        next.id = Uuid::new_v4();
        next.state = JobState::Scheduled;
        next.exit_status = None;
        next.signal = None;
        next.signal_reason = None;
        next.agent = None;
        next.created_at = now;
        next.scheduled_at = now;
        next.runnable_at = Some(now);
        next.started_at = None;
        next.finished_at = None;
        next.expired_at = None;
        next.log = String::new();
        next.checkout = None;
        next.attempt += 1;
        next.retried = false;
        next.retried_in_job_id = None;
        next.retry_source = Some(job_id);
        if let Some(c) = next.retry_counts.get_mut(idx) {
            *c += 1;
        }
        let (build_id, next_id) = (next.build, next.id);
        self.pending.entry((next.cluster_id, next.queue_key.clone())).or_default().push_back(next_id);
        self.jobs.insert(next_id, next);
        if let Some(old) = self.jobs.get_mut(&job_id) {
            old.retried = true;
            old.retried_in_job_id = Some(next_id);
        }
        if let Some(b) = self.builds.get_mut(&build_id) {
            let pos = b.jobs.iter().position(|j| *j == job_id).map_or(b.jobs.len(), |p| p + 1);
            b.jobs.insert(pos, next_id);
        }
        self.job_stats.created += 1;
        self.job_stats.retried += 1;
        self.emit("job.scheduled", build_id, Some(next_id));
    }

    /// The build's state follows the latest try of each step (retried jobs do not count).
    fn update_build(&mut self, build_id: Uuid) {
        let Some(b) = self.builds.get(&build_id) else { return };
        if b.state.is_finished() {
            return;
        }
        let states: Vec<JobState> =
            b.jobs.iter().filter_map(|j| self.jobs.get(j)).filter(|j| !j.retried).map(|j| j.state).collect();
        let all_done = states.iter().all(|s| s.is_terminal());
        // `broken` jobs (a branch filter or conditional left them out) do not fail a build;
        // `expired` ones do (docs "Build timeouts": expiry "will cause the corresponding build
        // to fail").
        let any_failed = states.iter().any(|s| matches!(s, JobState::Failed | JobState::TimedOut | JobState::Expired));
        let now = Timestamp::now();
        let Some(b) = self.builds.get_mut(&build_id) else { return };
        if all_done {
            b.state = if b.state == BuildState::Canceling {
                BuildState::Canceled
            } else if any_failed {
                BuildState::Failed
            } else if states.iter().all(|s| *s == JobState::Canceled) && !states.is_empty() {
                BuildState::Canceled
            } else {
                BuildState::Passed
            };
            if b.started_at.is_none() {
                b.started_at = Some(now);
            }
            b.finished_at = Some(now);
            if any_failed && b.failing_at.is_none() {
                b.failing_at = Some(now);
            }
            self.emit("build.finished", build_id, None);
        } else if any_failed && b.state == BuildState::Running {
            b.state = BuildState::Failing;
            b.failing_at = Some(now);
            self.emit("build.failing", build_id, None);
        }
    }

    /// Hands the result of an external job over to its executor task.
    pub fn finish_external(&mut self, job_id: Uuid, fin: ExternalFinish) -> Result<(), OpError> {
        match self.external.remove(&job_id) {
            Some(tx) => {
                let _ = tx.send(fin);
                Ok(())
            }
            None => Err(OpError::Unprocessable("job is not running on an external agent".into())),
        }
    }

    /// Fails a running job now with an infrastructure failure.
    pub fn fail_job(&mut self, job_id: Uuid, failure: InfraFailure) -> Result<(), OpError> {
        if !self.jobs.contains_key(&job_id) {
            return Err(OpError::NotFound("No job found"));
        }
        match self.running.remove(&job_id) {
            Some(tx) => {
                let _ = tx.send(Stop::Infra(failure));
                Ok(())
            }
            None => Err(OpError::Unprocessable("job is not running".into())),
        }
    }

    // ----- metrics ---------------------------------------------------------------------------

    /// Agent metrics for one cluster: per queue idle/busy/total agents and
    /// scheduled/running/waiting/total jobs.
    pub fn queue_metrics(&self, cluster: Uuid) -> BTreeMap<String, QueueMetrics> {
        let mut out: BTreeMap<String, QueueMetrics> = BTreeMap::new();
        for q in self.queues.iter().filter(|q| q.cluster_id == cluster) {
            out.entry(q.key.clone()).or_default();
        }
        for a in self.agents.values() {
            if a.cluster_id != cluster
                || !matches!(a.connection_state, ConnectionState::Connected | ConnectionState::Stopping)
            {
                continue;
            }
            let m = out.entry(a.queue_key.clone()).or_default();
            m.agents_total += 1;
            if a.job.is_some() {
                m.agents_busy += 1;
                m.jobs_running += 1;
            } else {
                m.agents_idle += 1;
            }
        }
        for ((c, key), q) in &self.pending {
            if *c == cluster && !q.is_empty() {
                out.entry(key.clone()).or_default().jobs_scheduled += q.len() as u64;
            }
        }
        out
    }
}

/// Per-queue numbers of the agent metrics API.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QueueMetrics {
    pub agents_idle: u64,
    pub agents_busy: u64,
    pub agents_total: u64,
    pub jobs_scheduled: u64,
    pub jobs_running: u64,
    pub jobs_waiting: u64,
}

/// Would `execve` accept this environment and command line? The agent passes the job env to
/// the bootstrap process as real process environment, on top of its own (agent
/// `agent/job_runner.go`: `processEnv := append(os.Environ(), env...)`). Linux refuses one
/// `NAME=VALUE` string (with its NUL) over [`MAX_ARG_STRLEN`] and argv + envp (strings and
/// pointers) over ARG_MAX, with E2BIG. The error names the variable, never its value.
pub fn exec_env_check(env: &BTreeMap<String, String>, argv: &[String], arg_max: usize) -> Result<(), String> {
    let mut sizes: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        let (k, v) = (k.as_encoded_bytes().to_vec(), v.as_encoded_bytes().len());
        let n = k.len() + 1 + v + 1;
        sizes.insert(k, n);
    }
    for (k, v) in env {
        let n = k.len() + 1 + v.len() + 1;
        if n > MAX_ARG_STRLEN {
            return Err(format!(
                "environment variable {k} is {n} bytes, over Linux's {MAX_ARG_STRLEN}-byte limit for one string (MAX_ARG_STRLEN)"
            ));
        }
        sizes.insert(k.as_bytes().to_vec(), n);
    }
    let ptr = std::mem::size_of::<usize>();
    let total = sizes.values().sum::<usize>()
        + ptr * (sizes.len() + 1)
        + argv.iter().map(|a| a.len() + 1).sum::<usize>()
        + ptr * (argv.len() + 1);
    if total > arg_max {
        return Err(format!("environment and arguments are {total} bytes, over ARG_MAX ({arg_max} bytes)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_limits() {
        let argv = vec!["sh".to_string()];
        let mut env = BTreeMap::new();
        // "BIG=" + value + NUL == MAX_ARG_STRLEN: accepted; one byte more: E2BIG.
        env.insert("BIG".to_string(), "x".repeat(MAX_ARG_STRLEN - 5));
        assert!(exec_env_check(&env, &argv, usize::MAX).is_ok());
        env.insert("BIG".to_string(), "x".repeat(MAX_ARG_STRLEN - 4));
        let e = exec_env_check(&env, &argv, usize::MAX).unwrap_err();
        assert!(e.contains("BIG") && !e.contains("xxxx"), "{e}");
        let mut env = BTreeMap::new();
        for i in 0..10 {
            env.insert(format!("PART_{i}"), "y".repeat(100_000));
        }
        assert!(exec_env_check(&env, &argv, 4 << 20).is_ok());
        assert!(exec_env_check(&env, &argv, 900_000).unwrap_err().contains("ARG_MAX"));
    }
}
