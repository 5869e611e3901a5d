//! KernelJob: one kernel evaluation, run as one Buildkite build (per attempt) on a pool's
//! agents, with the result written back into status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::conditions_schema;

/// Condition types a KernelJob reports.
pub mod conditions {
    /// Like batch Jobs: the evaluation ran to the end (phase Succeeded).
    pub const COMPLETE: &str = "Complete";
    /// Like batch Jobs: the job ended without an evaluation (Failed, TimedOut, Cancelled).
    pub const FAILED: &str = "Failed";
    /// kstatus: True once the evaluation ran (phase Succeeded); False otherwise, with the
    /// reason (a failed, timed-out or cancelled job is `Stalled` instead).
    pub const READY: &str = "Ready";
    /// The job waits for Buildkite request budget.
    pub const THROTTLED: &str = "Throttled";
    /// A build exists for the current attempt (False for a job refused before any build,
    /// and while a retry waits for its build).
    pub const SUBMITTED: &str = "Submitted";
}

/// Phases of a KernelJob.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Phase {
    /// Not yet submitted (validating, waiting for budget).
    #[default]
    Pending,
    /// A build exists and waits for an agent.
    Submitted,
    /// An agent runs the build.
    Running,
    /// The evaluation ran (whatever the kernel's verdict: see `status.passed`).
    Succeeded,
    /// The infrastructure or the build failed; no evaluation result.
    Failed,
    /// `spec.timeoutSeconds` passed; the build was cancelled.
    TimedOut,
    /// Deleted or cancelled before it finished.
    Cancelled,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Submitted,
        Phase::Running,
        Phase::Succeeded,
        Phase::Failed,
        Phase::TimedOut,
        Phase::Cancelled,
    ];

    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::TimedOut | Phase::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Submitted => "Submitted",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::TimedOut => "TimedOut",
            Phase::Cancelled => "Cancelled",
        }
    }
}

/// Evaluation mode (the contract's `mode`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Test,
    Benchmark,
    Profile,
    Leaderboard,
    Private,
}

/// Submission language (the contract's `lang`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Py,
    Cu,
}

/// How a leaderboard run is scored (the contract's `ranking_by`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RankingBy {
    Last,
    Mean,
    Geom,
}

/// Desired state of a KernelJob. Immutable once created.
#[allow(clippy::duplicated_attributes)] // repeated printcolumn(...) arguments are intended
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "benchkite.dev",
    version = "v1alpha1",
    kind = "KernelJob",
    plural = "kerneljobs",
    shortname = "kj",
    category = "benchkite",
    namespaced,
    status = "KernelJobStatus",
    doc = "One kernel evaluation: a Buildkite build carrying the evaluation payload, followed to its result.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.queue"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Passed", type_ = "boolean", json_path = ".status.passed"),
    printcolumn(name = "Score", type_ = "number", json_path = ".status.score"),
    printcolumn(name = "Build", type_ = "integer", json_path = ".status.build.number"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attemptCount", priority = 1),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.build.webUrl", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.pool) != has(self.queue)").message("set exactly one of pool (an AgentPool) or queue (a Buildkite queue benchkite does not manage)"))]
#[x_kube(validation = Rule::new("!has(self.poolNamespace) || has(self.pool)").message("poolNamespace needs pool: it says where the AgentPool named by pool is"))]
#[x_kube(validation = Rule::new("self.lang != 'py' || (has(self.main) && size(self.main) > 0)").message("lang py needs main: the file name to run"))]
#[x_kube(validation = Rule::new("(has(self.sources) && size(self.sources) > 0) || (has(self.sourcesFrom) && size(self.sourcesFrom) > 0)").message("give the submission in sources (inline) or sourcesFrom (ConfigMaps/Secrets)"))]
#[x_kube(validation = Rule::new("!has(self.main) || !has(self.sources) || has(self.sourcesFrom) || self.main in self.sources").message("main must name one of the files in sources"))]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new KernelJob"))]
#[serde(rename_all = "camelCase")]
pub struct KernelJobSpec {
    /// AgentPool whose queue runs the job (in `poolNamespace`). Exclusive with `queue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 253").message("pool must name an AgentPool"))]
    pub pool: Option<String>,
    /// Namespace of `pool` (default: the job's own). A pool admits jobs of other namespaces
    /// only when its `spec.kernelJobs.namespaceSelector` matches their namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) <= 63 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("poolNamespace must be a namespace name (lowercase letters, digits and '-', at most 63)"))]
    pub pool_namespace: Option<String>,
    /// Raw Buildkite queue (agents benchkite does not manage). Exclusive with `pool`. Off
    /// unless the cluster admin allows it (`--allow-raw-queue`, namespace label
    /// `benchkite.dev/allow-raw-queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$')").message("queue may contain only letters, digits, '.', '_' and '-' (at most 100)"))]
    pub queue: Option<String>,

    /// `test`, `benchmark`, `profile`, `leaderboard` or `private`.
    pub mode: Mode,
    /// `py` or `cu`.
    pub lang: Lang,
    /// File to run (py): one of the sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// Submission files, inline: file name → content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.size() <= 255 && !k.startsWith('/') && !k.contains('..') && k.matches('^[A-Za-z0-9._/-]+$'))").message("source file names must be relative paths of letters, digits, '.', '_', '-' and '/' without '..'"))]
    pub sources: BTreeMap<String, String>,
    /// Submission files from ConfigMaps or Secrets in this namespace, read at submission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources_from: Vec<SourcesFrom>,
    /// Header files (cu): file name → content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Test cases: each a map of parameters (`{size: 7, seed: 1}`), or a line in
    /// kernelbot's case format (`"size: 7; seed: 1"`). The API server stores maps with
    /// their keys sorted; a line keeps kernelbot's key order, which the harness sees and
    /// which stored spec strings show.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "case_list_schema")]
    pub tests: Vec<CaseSpec>,
    /// Benchmark cases, as `tests`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "case_list_schema")]
    pub benchmarks: Vec<CaseSpec>,
    /// Limit of the test run, seconds (default 180; fractions allowed, as in kernelbot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 86400.0").message("testTimeoutSeconds must be more than 0 and at most 86400 (fractions allowed)"))]
    pub test_timeout_seconds: Option<f64>,
    /// Limit of the benchmark run, seconds (default 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 86400.0").message("benchmarkTimeoutSeconds must be more than 0 and at most 86400 (fractions allowed)"))]
    pub benchmark_timeout_seconds: Option<f64>,
    /// Limit of the ranked run, seconds (default 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 86400.0").message("rankedTimeoutSeconds must be more than 0 and at most 86400 (fractions allowed)"))]
    pub ranked_timeout_seconds: Option<f64>,
    /// How a leaderboard run is scored: `last`, `mean` or `geom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking_by: Option<RankingBy>,
    /// Random seed handed to the harness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// CUDA architecture (e.g. `90a`, `89`); defaults to the pool's GPU architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{2,3}[a-z]?$')").message("arch must be a CUDA compute capability like '90a', '89' or '100'"))]
    pub arch: Option<String>,
    /// Preprocessor defines (cu).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub defines: BTreeMap<String, String>,
    /// Extra nvcc flags (cu).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compile_flags: Vec<String>,
    /// Include directories (cu).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_dirs: Vec<String>,
    /// Libraries to link (cu).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libraries: Vec<String>,
    /// Run on all GPUs of a multi-GPU agent.
    #[serde(default)]
    pub multi_gpu: bool,
    /// GPUs one evaluation needs on its agent (default 1; 2 with `multiGpu`). A job that needs
    /// more than its pool's `gpusPerAgent` fails at once (`TooManyGpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 16").message("gpus must be between 1 and 16"))]
    pub gpus: Option<i32>,

    /// Runner image (`KERNELBOT_IMAGE`) for pipelines that run the job in a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Buildkite pipeline slug of a pipeline you manage yourself (off unless the cluster admin
    /// allows it: `--allow-pipeline-override`). Default: the pool's
    /// `spec.buildkite.pipeline`, the controller's `--buildkite-pipeline`, else the pipeline
    /// benchkite creates and keeps in sync for the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9-]{0,99}$')").message("pipeline must be a Buildkite pipeline slug (lowercase letters, digits and '-')"))]
    pub pipeline: Option<String>,
    /// Build branch (off unless allowed: `--allow-branch-override`). Default: one branch per
    /// attempt, `benchkite/<instance>/<run id>`, so no pipeline setting that works per branch
    /// can skip or cancel this build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Build commit (default `HEAD`; off unless allowed: `--allow-branch-override`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Extra build environment. Not for secrets: build env is visible to anyone who can see
    /// the build.
    /// Names the agent, the shell, the loader, git, compilers, interpreters, the GPU runtime,
    /// the harness or benchkite read are refused (`api::jobenv`); of the rest, a job may set
    /// only the names the controller's `--kerneljob-env-allow` lists (default: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "super::jobenv::env_schema")]
    pub env: BTreeMap<String, String>,

    /// Overall wall time from creation, seconds. Default: the mode's run limits plus 10
    /// minutes for queueing, start-up and compilation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 604800").message("timeoutSeconds must be between 1 and 604800"))]
    pub timeout_seconds: Option<i64>,
    /// New attempts after infrastructure failures (agent lost, exit −1/255).
    #[serde(default = "default_retries")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10").message("retries must be between 0 and 10"))]
    pub retries: i32,
    /// Submission order when Buildkite's request budget is short: higher first, then older.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= -1000 && self <= 1000").message("priority must be between -1000 and 1000"))]
    pub priority: i32,
    /// Delete the KernelJob this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("ttlSecondsAfterFinished must not be negative"))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Whether the pool's result cache may serve this job (`Use`, the default) or it must
    /// run (`Bypass`: its result replaces the cached one). Only test and benchmark jobs of a
    /// pool with `resultCache` are ever served from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_cache: Option<CachePolicy>,
}

/// See `KernelJobSpec.resultCache`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachePolicy {
    #[default]
    Use,
    Bypass,
}

/// The job whose result a cached KernelJob carries.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedFrom {
    /// `namespace/name` of the original KernelJob (it may be gone since: the cache keeps a
    /// copy of its result).
    pub job: String,
    pub uid: String,
    /// When the original finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The original's build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRef>,
    /// The cache entry (a ConfigMap in the pool's namespace).
    pub entry: String,
}

fn default_retries() -> i32 {
    2
}

fn case_list_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // Each item is a map or a string: a structural schema cannot say "one of two types",
    // so the item is free-form and the controller checks it (`InvalidSubmission`).
    schemars::json_schema!({
        "type": "array",
        "maxItems": 1000,
        "items": { "x-kubernetes-preserve-unknown-fields": true },
    })
}

/// One test or benchmark case of a KernelJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum CaseSpec {
    /// kernelbot's line format, `size: 7; seed: 1`: keys keep this order.
    Line(String),
    /// A map of parameters (the API server sorts its keys).
    Params(BTreeMap<String, serde_json::Value>),
    /// Anything else: refused by the controller with a message.
    Other(serde_json::Value),
}

/// Files of a submission from one ConfigMap or Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)").message("each sourcesFrom entry names exactly one configMap or secret"))]
pub struct SourcesFrom {
    /// ConfigMap name: every key becomes a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// Secret name: every key becomes a file (for submissions that must stay private). Off
    /// unless the cluster admin allows it (`--allow-secret-sources`): build env is readable by
    /// everyone who can see the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Only these keys (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// A reference to one build.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuildRef {
    pub pipeline: String,
    pub number: i64,
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub web_url: String,
}

/// One attempt (one build).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1-based.
    pub attempt: i32,
    /// `KERNELBOT_RUN_ID` of this attempt.
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRef>,
    /// Buildkite build state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Exit status of the job that ran the evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i64>,
    /// Buildkite's signal reason (agent_stop, cancel, …) when the job was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// How the attempt ended, e.g. `InfrastructureFailure: exit -1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
}

/// Test outcome in status.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TestsStatus {
    pub passed: i64,
    pub total: i64,
    /// The first failing tests: `spec: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// Statistics of one benchmark, nanoseconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BenchmarkStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Outcome of one run (`test`, `benchmark`, `leaderboard`, `profile.N`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub benchmarks: Vec<BenchmarkStatus>,
}

/// The evaluation result, bounded (the full `result.json` is in `status.outputRef`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResultStatus {
    /// False when the runner (infrastructure) failed.
    pub success: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, RunStatus>,
    /// Where the result came from: `meta-data` (no extra request) or `artifact`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The runner's signature over the result verified with this attempt's key (`false`: an
    /// unsigned result taken under `--unsigned-results=accept`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// Detail was dropped to keep status small.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SystemStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu: String,
    #[serde(default)]
    pub device_count: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Where and how the result was measured (signed by the runner with the summary; absent
    /// when the result came from `result.json` or an older runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<FingerprintStatus>,
    /// The drift canary the slot timed after this evaluation (signed with the summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// One timing of the reference suite's canary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    pub kernel: String,
    /// Seconds.
    pub seconds: f64,
    /// When it ran (Unix seconds).
    pub at: i64,
}

/// The runner's environment fingerprint; every field empty when unknown.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FingerprintStatus {
    /// `GPU-…` (NVIDIA) or the unique id (AMD).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu_uuid: String,
    /// GPU model as the vendor tool names it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu_model: String,
    /// Kernel driver version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    /// CUDA version the driver supports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cuda_version: String,
    /// ROCm version installed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rocm_version: String,
    /// Application graphics clock, MHz.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_clock_graphics_mhz: String,
    /// Application memory clock, MHz.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app_clock_memory_mhz: String,
    /// Current graphics clock before the run, MHz.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub clock_graphics_mhz: String,
    /// Current memory clock before the run, MHz.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub clock_memory_mhz: String,
    /// Power limit, W.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub power_limit_w: String,
    /// GPU temperature before the first timed stage, °C.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub temperature_before_c: String,
    /// GPU temperature after the last timed stage, °C.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub temperature_after_c: String,
    /// ECC mode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ecc_mode: String,
    /// MIG mode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mig_mode: String,
    /// The runner image's digest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_digest: String,
    /// sha256 of the task's main file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub harness_sha256: String,
    /// Node the job ran on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// GPU slot on the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub slot: String,
    /// The slot's certification epoch.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certification_epoch: String,
}

/// A summary a person reads first.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SummaryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub benchmarks: Vec<BenchmarkStatus>,
}

/// Observed state of a KernelJob.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KernelJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    /// Did the kernel pass its tests (set when the evaluation ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Leaderboard score in seconds per `rankingBy` (lower is better).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The queue the build went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The current build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub attempt_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummaryStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultStatus>,
    /// ConfigMap (owned by this KernelJob) holding the full `result.json`, bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ref: Option<String>,
    /// Place among the jobs waiting for an agent of a pool with `queueing` (1: next). Exact
    /// up to 10, then rounded up to tens up to 100, then to hundreds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i64>,
    /// When the job is expected to start, from its position, the pool's agents and the
    /// duration of its recent jobs (set with `queuePosition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_start_time: Option<Time>,
    /// The job was served from its pool's result cache: whose result it carries (no build
    /// was created for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<CachedFrom>,
    /// Human-readable reason of the current phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
