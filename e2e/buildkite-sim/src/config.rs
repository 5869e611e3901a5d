//! Simulator configuration: everything can come from a JSON/YAML file, from CLI flags
//! (see `main.rs`) or be built in code by tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Top-level configuration of one simulator instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Address every listener binds. Must be a loopback address.
    pub bind: IpAddr,
    /// Port of the API listener (`/v2`, `/v3`, `/_sim`); 0 picks a free port.
    pub api_port: u16,
    /// Port of the artifact storage listener (the "S3" host); 0 picks a free port.
    pub storage_port: u16,
    /// Organization slug served by the simulator (one organization per instance).
    pub organization: String,
    /// REST API access tokens (`Authorization: Bearer <token>`). Each token is one user
    /// for the per-user rate limit.
    pub api_tokens: Vec<String>,
    /// Scopes of REST tokens (token → scopes). A token not listed here has
    /// [`DEFAULT_TOKEN_SCOPES`]. Each endpoint requires its documented scope (403 otherwise).
    pub api_token_scopes: BTreeMap<String, Vec<String>>,
    /// Agent tokens accepted by `/v3/metrics` (`Authorization: Token <token>`); they belong
    /// to the first cluster. More can be created with `POST …/clusters/{id}/tokens`.
    pub agent_tokens: Vec<String>,
    /// Base of the `web_url` fields (the simulator serves nothing there).
    pub web_base_url: String,
    /// Pipelines that exist at start.
    pub pipelines: Vec<PipelineConfig>,
    /// Clusters (with their queues) that exist at start. Agent tokens in `agent_tokens`
    /// belong to the first one.
    pub clusters: Vec<ClusterConfig>,
    /// The organization's default cluster for new pipelines (name or id; the organization
    /// setting `default_cluster_id`, REST `…/pipeline-settings`). `None`: no default, so a
    /// pipeline created over REST must name its `cluster_id`.
    pub default_cluster: Option<String>,
    /// Repositories the agents can clone, by URL (`public`: no key needed, `private`: the
    /// agent has no key). A URL not listed is private: its checkout fails like git does.
    pub repositories: BTreeMap<String, RepositoryVisibility>,
    /// Simulated agents per queue at start.
    pub agents: Vec<AgentPoolConfig>,
    /// What a job runs.
    pub executor: ExecutorConfig,
    /// REST rate limits.
    pub rate_limit: RateLimitConfig,
    /// The GraphQL API's complexity budget (`POST /v1`).
    pub graphql: GraphqlConfig,
    /// Lifetime of the signed storage URL handed out by artifact downloads (seconds).
    pub artifact_url_ttl_secs: u64,
    /// Artifacts older than this become `expired` (build retention; Buildkite: 30 days on
    /// the Personal plan, 90 on Pro, 1 year on Enterprise).
    pub artifact_retention_secs: f64,
    /// A job nobody picks up within this many seconds of its creation becomes `expired`
    /// and fails its build (Buildkite's scheduled job expiry: 30 days by default).
    pub job_expiry_secs: f64,
    /// Build listings whose `page * per_page` exceeds this answer 400 "Listing builds this
    /// deep is not supported…" (Buildkite documents the 400, not the threshold).
    pub list_depth_limit: u64,
    /// Total size of a job's environment (and command line) the simulated agent can exec,
    /// like ARG_MAX. `None`: `sysconf(_SC_ARG_MAX)` of this machine (2 MiB if unknown).
    pub exec_arg_max: Option<usize>,
    /// Value of the `Buildkite-Agent-Metrics-Poll-Duration` header (seconds).
    pub metrics_poll_duration_secs: u64,
    /// Webhook notification services.
    pub webhooks: Vec<WebhookConfig>,
    /// Fault injection at start.
    pub faults: FaultConfig,
    /// Directory under which per-job temp directories are created (default: system temp).
    pub job_dir: Option<PathBuf>,
    /// Keep per-job directories after the job finished (debugging).
    pub keep_job_dirs: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_port: 0,
            storage_port: 0,
            organization: "benchkite".into(),
            api_tokens: vec!["bk-sim-api-token".into()],
            api_token_scopes: BTreeMap::new(),
            agent_tokens: vec!["bk-sim-agent-token".into()],
            web_base_url: "https://buildkite.com".into(),
            pipelines: vec![PipelineConfig::default()],
            clusters: vec![ClusterConfig::default()],
            default_cluster: None,
            repositories: BTreeMap::new(),
            agents: Vec::new(),
            executor: ExecutorConfig::default(),
            rate_limit: RateLimitConfig::default(),
            graphql: GraphqlConfig::default(),
            artifact_url_ttl_secs: 60,
            artifact_retention_secs: DEFAULT_ARTIFACT_RETENTION_SECS,
            job_expiry_secs: DEFAULT_JOB_EXPIRY_SECS,
            list_depth_limit: DEFAULT_LIST_DEPTH_LIMIT,
            exec_arg_max: None,
            metrics_poll_duration_secs: 10,
            webhooks: Vec::new(),
            faults: FaultConfig::default(),
            job_dir: None,
            keep_job_dirs: false,
        }
    }
}

/// The scopes of a token without an entry in `api_token_scopes`: everything benchkite needs.
pub const DEFAULT_TOKEN_SCOPES: &[&str] = &[
    "read_builds",
    "write_builds",
    "read_artifacts",
    "read_pipelines",
    "write_pipelines",
    "read_clusters",
    "write_clusters",
    "read_agents",
    "read_organizations",
    "read_user",
];

/// Buildkite's default scheduled job expiry: "By default, jobs expire (are canceled) when not
/// picked up for 30 days" (docs "Build timeouts" → "Scheduled job expiration").
pub const DEFAULT_JOB_EXPIRY_SECS: f64 = 30.0 * 86_400.0;

/// The shortest build retention (docs "Build retention": Personal plan, 30 days).
pub const DEFAULT_ARTIFACT_RETENTION_SECS: f64 = 30.0 * 86_400.0;

/// Deepest build listing answered (`page * per_page`); undocumented by Buildkite, chosen strict.
pub const DEFAULT_LIST_DEPTH_LIMIT: u64 = 1_000;

/// Whether an agent can clone a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepositoryVisibility {
    /// Clones without a key.
    Public,
    /// Needs a key the simulated agents do not have.
    Private,
}

impl SimConfig {
    /// Reads a JSON or YAML file (YAML is a superset of JSON, so any extension works;
    /// `.json` files are parsed as JSON for better error messages).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let cfg = if is_json {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?
        } else {
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?
        };
        Ok(cfg)
    }

    /// Checks the settings that would make the simulator misbehave.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.bind.is_loopback() {
            anyhow::bail!("bind address {} is not a loopback address", self.bind);
        }
        if self.organization.is_empty() {
            anyhow::bail!("organization slug must not be empty");
        }
        if self.api_tokens.is_empty() {
            anyhow::bail!("at least one API token is required");
        }
        if self.clusters.is_empty() {
            anyhow::bail!("at least one cluster is required");
        }
        if self.rate_limit.window_secs.is_nan() || self.rate_limit.window_secs <= 0.0 {
            anyhow::bail!("rate_limit.window_secs must be > 0");
        }
        if !(self.graphql.window_secs.is_finite() && self.graphql.window_secs > 0.0) {
            anyhow::bail!("graphql.window_secs must be > 0");
        }
        for (what, v) in
            [("job_expiry_secs", self.job_expiry_secs), ("artifact_retention_secs", self.artifact_retention_secs)]
        {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!("{what} must be > 0");
            }
        }
        for p in &self.pipelines {
            if p.slug.is_empty() {
                anyhow::bail!("pipeline slug must not be empty");
            }
            if p.steps.is_empty() && p.configuration.is_none() {
                anyhow::bail!("pipeline {} has no steps", p.slug);
            }
        }
        for c in &self.clusters {
            for q in &c.queues {
                if let Err(e) = crate::model::validate_queue_key(q) {
                    anyhow::bail!("cluster {}: queue {q:?}: {e}", c.name);
                }
            }
        }
        for pool in &self.agents {
            pool.validate_gpu().map_err(anyhow::Error::msg)?;
        }
        for w in &self.webhooks {
            w.delivery.validate()?;
        }
        Ok(())
    }
}

/// A pipeline and its settings steps. Every build of the pipeline gets one job per step.
/// Steps are interpolated when a build is created, with Buildkite's fixed list of build
/// variables only (never the build's `env`, see `steps::SETTINGS_VARIABLES`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub slug: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub repository: String,
    pub default_branch: String,
    /// Name (or id) of the cluster the pipeline belongs to (default: the organization's
    /// default cluster, else the first cluster).
    pub cluster: Option<String>,
    /// When a new build is created on a branch, older still-`scheduled` builds of the same
    /// branch become `skipped` (Buildkite's "Skip intermediate builds").
    pub skip_queued_branch_builds: bool,
    /// Branch pattern limiting `skip_queued_branch_builds` (e.g. `"!main"`).
    pub skip_queued_branch_builds_filter: Option<String>,
    /// When a new build is created on a branch, older running builds of the same branch are
    /// canceled (Buildkite's "Cancel intermediate builds").
    pub cancel_running_branch_builds: bool,
    /// Branch pattern limiting `cancel_running_branch_builds`.
    pub cancel_running_branch_builds_filter: Option<String>,
    /// Pipeline-level branch filter; API builds on other branches are refused unless they
    /// set `ignore_pipeline_branch_filters`.
    pub branch_configuration: Option<String>,
    /// The YAML steps (like the REST `configuration`); replaces `steps` when set.
    pub configuration: Option<String>,
    /// Top-level `env` of the steps (lowest precedence in the job environment).
    pub env: BTreeMap<String, String>,
    pub steps: Vec<StepConfig>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            slug: "kernelbot".into(),
            name: None,
            description: None,
            repository: "git@github.com:benchkite/kernelbot.git".into(),
            default_branch: "main".into(),
            cluster: None,
            skip_queued_branch_builds: false,
            skip_queued_branch_builds_filter: None,
            cancel_running_branch_builds: false,
            cancel_running_branch_builds_filter: None,
            branch_configuration: None,
            configuration: None,
            env: BTreeMap::new(),
            steps: vec![StepConfig::default()],
        }
    }
}

/// A command step saved in the pipeline's settings. Its strings (`agents` rules, `command`,
/// …) are interpolated when a build is created with Buildkite's fixed build variables only
/// (`BUILDKITE_BRANCH`, `BUILDKITE_COMMIT`, …; docs "Environment variables" → "Variable
/// interpolation"), never with the build's `env`: `queue=${KERNELBOT_QUEUE:-default}` always
/// resolves to `queue=default`. A job without a `queue=` rule goes to the cluster's default
/// queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepConfig {
    pub key: Option<String>,
    pub label: String,
    /// Command of the step. `None`: the executor's command.
    pub command: Option<String>,
    pub agents: Vec<String>,
    /// Glob patterns, `;`-separated like Buildkite's `artifact_paths`.
    pub artifact_paths: String,
    /// Buildkite's `timeout_in_minutes`.
    pub timeout_in_minutes: Option<u64>,
    /// Finer-grained timeout for tests (seconds); wins over `timeout_in_minutes`.
    pub timeout_secs: Option<f64>,
    /// Step `env` (above the build env in the job environment).
    pub env: BTreeMap<String, String>,
    /// `checkout: {skip: true}` skips the checkout of the pipeline's repository.
    pub checkout: Option<CheckoutConfig>,
    /// `retry` exactly as in YAML steps (`{automatic: …}`).
    pub retry: Option<serde_yaml::Value>,
}

/// A step's `checkout` attributes (docs "Command step" → "Checkout attributes").
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckoutConfig {
    pub skip: bool,
}

impl Default for StepConfig {
    fn default() -> Self {
        Self {
            key: Some("run".into()),
            label: ":gpu: kernel evaluation".into(),
            command: None,
            agents: vec!["queue=${KERNELBOT_QUEUE:-default}".into()],
            artifact_paths: "result.json".into(),
            timeout_in_minutes: None,
            timeout_secs: None,
            env: BTreeMap::new(),
            checkout: None,
            retry: None,
        }
    }
}

/// A cluster and the queues that exist in it at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub description: Option<String>,
    pub queues: Vec<String>,
    /// Key of the default queue (must be in `queues` to take effect).
    pub default_queue: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            // "When a new Buildkite organization is created, a single default cluster
            // (initially named **Default cluster**) is also created" (docs "Manage clusters").
            name: "Default cluster".into(),
            description: Some("Simulated cluster".into()),
            queues: vec!["default".into()],
            default_queue: "default".into(),
        }
    }
}

/// `count` simulated agents with the tag `queue=<queue>` (plus `tags`). Agents refuse to
/// connect while the queue does not exist in the cluster, like the real agent.
/// In `tags` values and `env` values, `%n` expands to the agent's index in the pool.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentPoolConfig {
    pub queue: String,
    pub count: u32,
    pub cluster: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    /// Simulated GPU of every agent of the pool (see `gpu.rs`); `None`: no `SIMGPU_*` env.
    pub gpu: Option<crate::gpu::GpuProfile>,
    /// Per agent `index` (`%n`): a profile that replaces `gpu` for that agent.
    pub gpu_by_index: BTreeMap<u32, crate::gpu::GpuProfile>,
}

impl AgentPoolConfig {
    /// The simulated GPU of the pool's agent `index`.
    pub fn gpu_of(&self, index: u32) -> Option<&crate::gpu::GpuProfile> {
        self.gpu_by_index.get(&index).or(self.gpu.as_ref())
    }

    /// Checks the pool's GPU profiles.
    pub fn validate_gpu(&self) -> Result<(), String> {
        if let Some(g) = &self.gpu {
            g.validate().map_err(|e| format!("pool {:?}: {e}", self.queue))?;
        }
        for (i, g) in &self.gpu_by_index {
            g.validate().map_err(|e| format!("pool {:?}: gpu_by_index[{i}]: {e}", self.queue))?;
        }
        Ok(())
    }
}

/// What runs when an agent takes a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecutorConfig {
    /// A local process: `shell… command` in a fresh temp directory with the job env.
    Command {
        #[serde(default = "default_command")]
        command: String,
        #[serde(default = "default_shell")]
        shell: Vec<String>,
        /// Extra environment for every job (below the build env).
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Seconds between SIGTERM and SIGKILL on cancel/timeout (agent's
        /// `cancel-grace-period`, default 10).
        #[serde(default = "default_cancel_grace")]
        cancel_grace_secs: f64,
        /// Job log kept per job (bytes).
        #[serde(default = "default_max_log")]
        max_log_bytes: usize,
        /// Also hand jobs `BUILDKITE_SIM_META_DATA_FILE` (the old stand-in for
        /// `buildkite-agent meta-data set`). Off by default: jobs use the Agent API with their
        /// job token, through the `buildkite-agent` shim.
        #[serde(default)]
        meta_data_file: bool,
        /// The `buildkite-agent` put on the jobs' `PATH` (default: `$BUILDKITE_SIM_AGENT_BINARY`,
        /// else `buildkite-agent` next to the running executable or in its parent directory).
        #[serde(default)]
        agent_binary: Option<std::path::PathBuf>,
    },
    /// Timers only, no process: cheap enough for thousands of jobs.
    Scripted(ScriptedConfig),
}

fn default_command() -> String {
    "benchkite run".into()
}
fn default_shell() -> Vec<String> {
    vec!["sh".into(), "-c".into()]
}
fn default_cancel_grace() -> f64 {
    10.0
}
fn default_max_log() -> usize {
    1 << 20
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self::Command {
            command: default_command(),
            shell: default_shell(),
            env: BTreeMap::new(),
            cancel_grace_secs: default_cancel_grace(),
            max_log_bytes: default_max_log(),
            meta_data_file: false,
            agent_binary: None,
        }
    }
}

impl ExecutorConfig {
    /// A command executor with the defaults and the given command.
    pub fn command(command: impl Into<String>) -> Self {
        Self::Command {
            command: command.into(),
            shell: default_shell(),
            env: BTreeMap::new(),
            cancel_grace_secs: default_cancel_grace(),
            max_log_bytes: default_max_log(),
            meta_data_file: false,
            agent_binary: None,
        }
    }
}

/// Fixed duration and outcome; optional `result.json` content and meta-data.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptedConfig {
    pub duration_ms: u64,
    pub exit_status: i32,
    /// Content of `result.json` uploaded as an artifact (if set).
    pub result_json: Option<String>,
    pub meta_data: BTreeMap<String, String>,
    /// Time a scripted job spends in `canceling` before it is `canceled`.
    pub cancel_ms: u64,
}

impl Default for ScriptedConfig {
    fn default() -> Self {
        Self { duration_ms: 100, exit_status: 0, result_json: None, meta_data: BTreeMap::new(), cancel_ms: 100 }
    }
}

/// Fixed-window rate limits (the window starts with the first request after the previous
/// one expired, like a counter with a TTL). Defaults from the docs "REST API rate limits":
/// 200 requests per minute per organization and, on by default, 50 per minute per user
/// (scope `rest_user`, headers `RateLimit-User-*`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per window for the organization (scope `rest`).
    pub org_limit: u64,
    /// Requests per window per API token (scope `rest_user`); 0 disables the user limit.
    pub user_limit: u64,
    /// Window length in seconds (Buildkite: 60).
    pub window_secs: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { org_limit: 200, user_limit: 50, window_secs: 60.0 }
    }
}

/// The GraphQL API's budget (docs "GraphQL resource limits",
/// https://buildkite.com/docs/apis/graphql/graphql-resource-limits): actual complexity points
/// per fixed window per organization and per user, and a cap on one query's requested
/// complexity. A window starts with the first request after the previous one ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GraphqlConfig {
    /// Points per window for the organization ("up to 20,000 actual complexity points within a
    /// 5-minute period").
    pub points_limit: u64,
    /// Points per window per user, i.e. per API token in the simulator ("The default per-user
    /// limit is 5,000 complexity points per 5 minutes"); 0 disables the per-user limit.
    pub user_points_limit: u64,
    /// Window length in seconds (300).
    pub window_secs: f64,
    /// Largest requested complexity of one query (50,000; refused before execution).
    pub max_query_complexity: u64,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        Self { points_limit: 20_000, user_points_limit: 5_000, window_secs: 300.0, max_query_complexity: 50_000 }
    }
}

/// How a webhook authenticates itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAuth {
    /// `X-Buildkite-Token: <token>`.
    #[default]
    Token,
    /// `X-Buildkite-Signature: timestamp=…,signature=<hex HMAC-SHA256(token, "ts.body")>`.
    Signature,
}

/// One webhook notification service.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub token: String,
    pub auth: WebhookAuth,
    /// Events to send; empty = all (`build.*`, `job.*`, `ping`).
    pub events: Vec<String>,
    pub delivery: WebhookDelivery,
    /// Body shape of build/job events.
    pub body_shape: WebhookBodyShape,
}

/// The JSON shape of webhook bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookBodyShape {
    /// As documented: `{event, build, pipeline, sender}` (+ `job`), REST timestamps, the
    /// build with `meta_data` and without `jobs`.
    #[default]
    Documented,
    /// What go-buildkite captured from Buildkite's services console (`builds_test.go`,
    /// `TestBuildsUnmarshalWebhook`): `{event, build}` (+ `job`), timestamps like
    /// `2018-03-25 03:58:14 UTC`, and no `meta_data`, `env` or `pipeline`.
    ServicesConsole,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: "bk-sim-webhook-token".into(),
            auth: WebhookAuth::Token,
            events: Vec::new(),
            delivery: WebhookDelivery::default(),
            body_shape: WebhookBodyShape::Documented,
        }
    }
}

/// Delivery behaviour of a webhook: delay, reordering, duplicates, retries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookDelivery {
    /// Fixed delay before the first attempt (ms).
    pub delay_ms: u64,
    /// Random extra delay in `[0, jitter_ms]` per delivery: deliveries overtake each other.
    pub jitter_ms: u64,
    /// Probability (0..1) that a delivery is sent twice.
    pub duplicate_probability: f64,
    /// Attempts per delivery (1 = no retry, the default: Buildkite documents no redelivery,
    /// only that "the last 20 webhook request and responses are saved").
    pub max_attempts: u32,
    /// First retry backoff (ms); doubles per attempt.
    pub backoff_ms: u64,
    /// Per-attempt HTTP timeout (ms).
    pub timeout_ms: u64,
}

impl Default for WebhookDelivery {
    fn default() -> Self {
        Self {
            delay_ms: 0,
            jitter_ms: 0,
            duplicate_probability: 0.0,
            max_attempts: 1,
            backoff_ms: 500,
            timeout_ms: 5_000,
        }
    }
}

impl WebhookDelivery {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.duplicate_probability) {
            anyhow::bail!("duplicate_probability must be within 0..=1");
        }
        if self.max_attempts == 0 {
            anyhow::bail!("max_attempts must be >= 1");
        }
        Ok(())
    }
}

/// Fault injection for the API listener (`/v2`, `/v3`) and the storage listener.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Applies to every endpoint without an entry in `endpoints`.
    pub default: EndpointFault,
    /// Per endpoint, keyed by `"<METHOD> <route template>"`, e.g.
    /// `"POST /v2/organizations/{org}/pipelines/{pipeline}/builds"`.
    pub endpoints: BTreeMap<String, EndpointFault>,
    /// An outage window active from start.
    pub outage: Option<OutageConfig>,
}

/// Faults for one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointFault {
    /// Added latency (ms) before the request is handled.
    pub latency_ms: u64,
    /// Random extra latency in `[0, latency_jitter_ms]`.
    pub latency_jitter_ms: u64,
    /// Probability (0..1) of answering `error_status` instead of handling the request.
    pub error_rate: f64,
    /// Status of injected errors (5xx).
    pub error_status: u16,
    /// Probability (0..1) of closing the connection without an answer.
    pub drop_rate: f64,
    /// Probability (0..1) of handling the request, then closing the connection without
    /// sending the answer: the request took effect but the client cannot know (an
    /// ambiguous create).
    pub drop_after_rate: f64,
}

impl Default for EndpointFault {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            latency_jitter_ms: 0,
            error_rate: 0.0,
            error_status: 503,
            drop_rate: 0.0,
            drop_after_rate: 0.0,
        }
    }
}

impl EndpointFault {
    pub fn validate(&self) -> Result<(), String> {
        if ![self.error_rate, self.drop_rate, self.drop_after_rate].iter().all(|r| (0.0..=1.0).contains(r)) {
            return Err("error_rate, drop_rate and drop_after_rate must be within 0..=1".into());
        }
        if !(500..=599).contains(&self.error_status) {
            return Err("error_status must be a 5xx status".into());
        }
        Ok(())
    }
}

/// How an outage answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// Every API request gets `503 Service Unavailable`.
    #[default]
    Unavailable,
    /// Every API request has its connection closed without an answer.
    Drop,
}

/// A full outage of the API (and storage) listener for `duration_secs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutageConfig {
    pub duration_secs: f64,
    pub mode: OutageMode,
    /// Also take the storage listener down.
    pub include_storage: bool,
}

impl Default for OutageConfig {
    fn default() -> Self {
        Self { duration_secs: 30.0, mode: OutageMode::Unavailable, include_storage: false }
    }
}
