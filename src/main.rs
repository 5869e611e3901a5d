use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use benchkite::telemetry::{self, LogFormat};

/// jemalloc instead of glibc malloc: with glibc's per-thread arenas the controller's RSS sat
/// near twice its live heap at fleet scale (bench/README.md, footprint).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// benchkite: one isolated Buildkite agent per GPU, and KernelJobs that run on them.
#[derive(Debug, Parser)]
#[command(name = "benchkite", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers (GpuNode discovery and inventory, AgentPool fleet).
    Controller(Box<ControllerArgs>),
    /// Evaluate a KernelJob payload (KERNELBOT_PAYLOAD) and write result.json (job side).
    Run(benchkite::runner::RunArgs),
    /// Time the reference suite on this GPU slot and report it (the agent pod's init
    /// container, when the pool certifies its slots).
    Certify(Box<benchkite::runner::CertifyArgs>),
    /// Wait for this agent pod's GPU allocation (DRA pools), then run the agent with the
    /// devices in its tags and environment (the agent container's entrypoint).
    AgentStart(benchkite::runner::agent_start::AgentStartArgs),
    /// Print the result key of a queue (hex), derived from the master key: for agents an
    /// admin runs on a raw queue (`BENCHKITE_RESULT_KEY_FILE` of their `benchkite run`).
    ResultKey {
        /// The Buildkite queue.
        #[arg(long)]
        queue: String,
        /// The installation's master key file (as the controller's --result-key-file).
        #[arg(long, env = benchkite::signing::MASTER_KEY_FILE_ENV, value_name = "FILE")]
        result_key_file: PathBuf,
    },
    /// Submit a kernel: a task directory in kernelbot's layout and a submission file → a
    /// KernelJob; with --wait, follow it and print the result.
    Submit(Box<benchkite::cli::SubmitArgs>),
    /// List KernelJobs, or show one like submit's result.
    Get(benchkite::cli::GetArgs),
    /// Print a KernelJob's result logs (result.json's outputs) and its build link.
    Logs(benchkite::cli::LogsArgs),
    /// Print the CustomResourceDefinitions as YAML, or write/check them in a directory.
    Crds {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// With --dir: do not write, fail when the files differ from the generated CRDs.
        #[arg(long, requires = "dir")]
        check: bool,
    },
}

#[derive(Debug, Args)]
struct ControllerArgs {
    /// Controllers to run: `fleet` (GpuNode discovery and inventory, AgentPool) and/or
    /// `kerneljob` (needs --buildkite-org).
    #[arg(long, env = "BENCHKITE_CONTROLLERS", value_delimiter = ',', default_value = "fleet,kerneljob")]
    controllers: Vec<ControllerKind>,
    /// Watch KernelJobs of this namespace only (default: all namespaces).
    #[arg(long, env = "BENCHKITE_NAMESPACE")]
    namespace: Option<String>,
    /// Create a GpuNode for every Node that offers a GPU resource.
    #[arg(long, env = "BENCHKITE_DISCOVER_GPU_NODES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    discover_gpu_nodes: bool,
    /// GPUs through Dynamic Resource Allocation: the DRA driver whose ResourceSlices describe
    /// nodes' GPUs (NVIDIA's is `gpu.nvidia.com`). Needs Kubernetes 1.34+ (resource.k8s.io/v1)
    /// and RBAC for it (chart: `fleet.dra.enabled`). Empty: off; pools with `spec.dra` are
    /// Degraded (DraDisabled).
    #[arg(long, env = "BENCHKITE_DRA_DRIVER", value_name = "DRIVER", value_parser = parse_dra_driver)]
    dra_driver: Option<String>,
    /// Seconds a discovered GpuNode outlives its deleted Node before it is removed.
    #[arg(long, env = "BENCHKITE_DISCOVERY_GRACE_SECONDS", default_value_t = 600, value_name = "SECONDS")]
    discovery_grace_seconds: u64,
    /// Agent image for pools that do not name one.
    #[arg(long, env = "BENCHKITE_AGENT_IMAGE", default_value = benchkite::DEFAULT_AGENT_IMAGE)]
    agent_image: String,
    /// Default terminationGracePeriodSeconds of agent pods: how long a running job may take
    /// to finish when its agent is drained or rolled.
    #[arg(long, env = "BENCHKITE_AGENT_GRACE_SECONDS", default_value_t = 900, value_name = "SECONDS")]
    agent_grace_seconds: i64,
    /// Smallest per-GPU memory share worth running an agent with, in MiB.
    #[arg(long, env = "BENCHKITE_MIN_AGENT_MEMORY_MIB", default_value_t = 1024, value_name = "MIB")]
    min_agent_memory_mib: i64,
    /// Seconds a Node may be not Ready (Ready False or Unknown) before its agents drain, like
    /// Kubernetes' DefaultTolerationSeconds; meanwhile agents stay and no new ones start.
    #[arg(long, env = "BENCHKITE_NODE_NOT_READY_TOLERATION_SECONDS", default_value_t = 300, value_name = "SECONDS")]
    node_not_ready_toleration_seconds: u64,
    /// CPU per node kept free of agents when the per-GPU share is sized (room for DaemonSets
    /// added later; a typical exporter asks 100m).
    #[arg(long, env = "BENCHKITE_NODE_HEADROOM_CPU", default_value = "250m", value_parser = parse_cpu_quantity, value_name = "QUANTITY")]
    node_headroom_cpu: i64,
    /// Memory per node kept free of agents when the per-GPU share is sized (a typical exporter
    /// asks 128Mi).
    #[arg(long, env = "BENCHKITE_NODE_HEADROOM_MEMORY", default_value = "512Mi", value_parser = parse_memory_quantity, value_name = "QUANTITY")]
    node_headroom_memory: i64,
    /// Pod writes in flight per pool reconcile.
    #[arg(long, env = "BENCHKITE_WRITE_CONCURRENCY", default_value_t = 32)]
    write_concurrency: usize,
    /// Address of /healthz, /readyz and /webhooks/buildkite.
    #[arg(long, env = "BENCHKITE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
    /// Address of /metrics (Prometheus) and /loglevel (GET the log filter, PUT a new one).
    #[arg(long, env = "BENCHKITE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    leader: LeaderArgs,
    #[command(flatten)]
    buildkite: BuildkiteArgs,
    #[command(flatten)]
    tenancy: TenancyArgs,
    #[command(flatten)]
    signing: SigningArgs,
    /// Log format.
    #[arg(long, env = "BENCHKITE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level filter (tracing EnvFilter syntax, e.g. `info,benchkite=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

/// Leader election: with several replicas, only the holder of a Lease runs the controllers.
#[derive(Debug, Args)]
struct LeaderArgs {
    /// Take part in leader election (run several replicas with this on).
    #[arg(long, env = "BENCHKITE_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the Lease (default: POD_NAMESPACE, else the in-cluster namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "BENCHKITE_LEADER_ELECTION_LEASE_NAME", default_value = "benchkite-controller")]
    leader_election_lease_name: String,
    /// Seconds a lease stays valid after its last renewal: how long a standby waits when the
    /// leader dies without releasing it (it is renewed every two thirds of this).
    #[arg(long, env = "BENCHKITE_LEADER_ELECTION_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    leader_election_lease_seconds: u64,
}

/// What KernelJobs (written by less-trusted tenants) may ask for. Each override is `none`
/// (default: refused everywhere), `labelled` (in namespaces a cluster admin labelled
/// `benchkite.dev/allow-<override>=true`) or `all`. The chart's ValidatingAdmissionPolicy
/// refuses the same at admission; the controller refuses with a condition in any case.
#[derive(Debug, Args)]
struct TenancyArgs {
    /// `spec.queue` (a raw Buildkite queue, agents benchkite does not manage).
    #[arg(long, env = "BENCHKITE_ALLOW_RAW_QUEUE", value_enum, default_value_t = Allow::None)]
    allow_raw_queue: Allow,
    /// `spec.pipeline` (a pipeline other than the pool's).
    #[arg(long, env = "BENCHKITE_ALLOW_PIPELINE_OVERRIDE", value_enum, default_value_t = Allow::None)]
    allow_pipeline_override: Allow,
    /// `spec.branch` and `spec.commit`.
    #[arg(long, env = "BENCHKITE_ALLOW_BRANCH_OVERRIDE", value_enum, default_value_t = Allow::None)]
    allow_branch_override: Allow,
    /// `spec.sourcesFrom[].secret` (a Secret's keys in the build env, readable by everyone
    /// who can see the pipeline).
    #[arg(long, env = "BENCHKITE_ALLOW_SECRET_SOURCES", value_enum, default_value_t = Allow::None)]
    allow_secret_sources: Allow,
    /// `spec.env` names a job may set, comma-separated: names, `PREFIX*` patterns or `*` (any
    /// name). Names the agent, shell, loader, git, interpreters, GPU runtime, harness or
    /// benchkite read are refused whatever this says. Default: none (kernelbot passes no env).
    #[arg(long, env = "BENCHKITE_KERNELJOB_ENV_ALLOW", value_delimiter = ',', value_parser = benchkite::kerneljob::policy::parse_env_pattern)]
    kerneljob_env_allow: Vec<String>,
}

use benchkite::kerneljob::policy::Allow;

impl TenancyArgs {
    fn tenancy(&self) -> benchkite::kerneljob::policy::Tenancy {
        benchkite::kerneljob::policy::Tenancy {
            raw_queue: self.allow_raw_queue,
            pipeline: self.allow_pipeline_override,
            branch: self.allow_branch_override,
            secret_sources: self.allow_secret_sources,
            env_allow: self.kerneljob_env_allow.iter().filter(|p| !p.is_empty()).cloned().collect(),
        }
    }
}

/// Results that cannot be forged (see `benchkite::signing`).
#[derive(Debug, Args)]
struct SigningArgs {
    /// File with the installation's result master key (hex, or at least 32 raw bytes): the
    /// controller writes each AgentPool's queue key from it and trusts a result only when its
    /// attempt's runner signed it. Not `BENCHKITE_RESULT_KEY_FILE` (the runner's queue key).
    #[arg(long, env = benchkite::signing::MASTER_KEY_FILE_ENV, value_name = "FILE")]
    result_key_file: Option<PathBuf>,
    /// What a result without a signature gets: `refuse` (the attempt fails, UnsignedResult)
    /// or `accept` (taken, marked unverified: a migration for raw queues whose agents have no
    /// result key yet).
    #[arg(long, env = "BENCHKITE_UNSIGNED_RESULTS", value_enum, default_value_t = benchkite::kerneljob::decide::UnsignedResults::Refuse)]
    unsigned_results: benchkite::kerneljob::decide::UnsignedResults,
}

impl SigningArgs {
    /// The master key, read once at start. A file that is not there (the chart mounts the
    /// Secret as optional) means no key: pools say so, no result is trusted. A file that is
    /// there but unusable stops the controller.
    fn master_key(&self) -> anyhow::Result<Option<benchkite::signing::Key>> {
        let Some(path) = self.result_key_file.as_deref() else { return Ok(None) };
        if !path.exists() {
            tracing::warn!(path = %path.display(), "--result-key-file does not exist: running without a result key");
            return Ok(None);
        }
        benchkite::signing::Key::read_file(path)
            .map(Some)
            .with_context(|| format!("--result-key-file {} is not a usable key", path.display()))
    }
}

/// Which KernelJob Events are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum JobEvents {
    Warnings,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ControllerKind {
    Fleet,
    Kerneljob,
}

/// Buildkite settings of the KernelJob controller. Secrets come from files (mounted
/// Secrets) or the environment, never from flags, so they do not show in process lists.
#[derive(Debug, Args)]
struct BuildkiteArgs {
    /// Buildkite organization slug. Without it the KernelJob controller is off.
    #[arg(long, env = "BUILDKITE_ORGANIZATION")]
    buildkite_org: Option<String>,
    /// REST API base URL.
    #[arg(long, env = "BUILDKITE_API_URL", default_value = benchkite::buildkite::DEFAULT_API_URL)]
    buildkite_api_url: String,
    /// Agent API base URL (queue metrics).
    #[arg(long, env = "BUILDKITE_AGENT_API_URL", default_value = benchkite::buildkite::DEFAULT_AGENT_API_URL)]
    buildkite_agent_api_url: String,
    /// A pipeline you manage yourself, for KernelJobs whose job and pool name none. Default:
    /// benchkite creates and keeps in sync one pipeline per queue
    /// (`benchkite[-<instance>]-<queue>-<hash>`).
    #[arg(long, env = "BUILDKITE_PIPELINE")]
    buildkite_pipeline: Option<String>,
    /// Cluster (UUID or name) of managed pipelines and created queues whose pool names none.
    /// Default: the organization's default cluster (readable with `read_organization_settings`),
    /// else its only cluster, else the one named "Default cluster".
    #[arg(long, env = "BUILDKITE_CLUSTER")]
    buildkite_cluster: Option<String>,
    /// `repository` of managed pipelines (Buildkite requires one; their steps skip the checkout).
    #[arg(long, env = "BENCHKITE_PIPELINE_REPOSITORY", default_value = benchkite::controller::pipelines::DEFAULT_PIPELINE_REPOSITORY)]
    pipeline_repository: String,
    /// `timeout_in_minutes` of the managed pipelines' step (a pool may set its own).
    #[arg(long, env = "BENCHKITE_PIPELINE_STEP_TIMEOUT_MINUTES", default_value_t = benchkite::buildkite::pipelines::DEFAULT_STEP_TIMEOUT_MINUTES, value_parser = clap::value_parser!(u32).range(1..=10080))]
    pipeline_step_timeout_minutes: u32,
    /// Team UUIDs given access to created pipelines (organizations with Teams), comma-separated.
    #[arg(long, env = "BENCHKITE_PIPELINE_TEAMS", value_delimiter = ',')]
    pipeline_teams: Vec<String>,
    /// File holding the REST API token (else the BUILDKITE_API_TOKEN variable).
    #[arg(long, env = "BUILDKITE_API_TOKEN_FILE")]
    buildkite_token_file: Option<PathBuf>,
    /// File holding the webhook token (else BUILDKITE_WEBHOOK_SECRET). Without one,
    /// webhooks are off and builds are followed by polling.
    #[arg(long, env = "BUILDKITE_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// File holding an agent token for queue metrics (else BUILDKITE_AGENT_METRICS_TOKEN).
    #[arg(long, env = "BUILDKITE_AGENT_METRICS_TOKEN_FILE")]
    agent_metrics_token_file: Option<PathBuf>,
    /// REST requests per minute benchkite allows itself (Buildkite allows 200 per organization).
    #[arg(long, env = "BUILDKITE_REQUESTS_PER_MINUTE", default_value_t = benchkite::buildkite::DEFAULT_REQUESTS_PER_MINUTE)]
    buildkite_requests_per_minute: u32,
    /// Buildkite's GraphQL API for creates, cancels and build reads: `auto` (default) uses it
    /// while the token may and its points budget allows, falling back to REST per
    /// operation; `off` sends everything over REST.
    #[arg(long, env = "BUILDKITE_GRAPHQL", value_enum, default_value_t = GraphqlMode::Auto)]
    buildkite_graphql: GraphqlMode,
    /// Buildkite's GraphQL endpoint.
    #[arg(long, env = "BUILDKITE_GRAPHQL_URL", default_value = benchkite::buildkite::DEFAULT_GRAPHQL_URL)]
    buildkite_graphql_url: String,
    /// Share of the organization's GraphQL points benchkite allows itself (0.1 to 1.0).
    #[arg(long, env = "BUILDKITE_GRAPHQL_SHARE", default_value_t = 0.9)]
    buildkite_graphql_share: f64,
    /// Seconds between the fallback poller's list requests (default: 30 with webhooks, 10 without).
    #[arg(long, env = "BENCHKITE_POLL_INTERVAL_SECONDS")]
    poll_interval_seconds: Option<u64>,
    /// Identifies this installation in build meta-data (change it when several share an org).
    #[arg(long, env = "BENCHKITE_INSTANCE", default_value = "benchkite")]
    instance: String,
    /// Largest submission (sum of source files) in bytes.
    #[arg(long, env = "BENCHKITE_MAX_SOURCE_BYTES", default_value_t = 1_000_000)]
    max_source_bytes: usize,
    /// Seconds a deleted KernelJob that still carries the finalizer of an earlier version
    /// waits for its build to be cancelled before it is released (new jobs get no finalizer).
    #[arg(long, env = "BENCHKITE_FINALIZER_TIMEOUT_SECONDS", default_value_t = 600)]
    finalizer_timeout_seconds: u64,
    /// KernelJob Events: `warnings` (default: problems only; a job's end is in its status) or
    /// `all` (also a Normal Event when a job completes or is cancelled: one more API write
    /// per job).
    #[arg(long, env = "BENCHKITE_KERNELJOB_EVENTS", value_enum, default_value_t = JobEvents::Warnings)]
    kerneljob_events: JobEvents,
    /// Seconds without news after which a build is read directly.
    #[arg(long, env = "BENCHKITE_STALE_AFTER_SECONDS", default_value_t = 900)]
    stale_after_seconds: u64,
    /// Builds created at once (each worker takes a job only once the request budget lets it send).
    #[arg(long, env = "BENCHKITE_SUBMIT_WORKERS", default_value_t = 8)]
    submit_workers: usize,
    /// Length of Buildkite's rate-limit window in seconds (60; only tests change it).
    #[arg(long, hide = true, default_value_t = 60.0)]
    buildkite_rate_limit_window_seconds: f64,
}

/// Whether creates, cancels and reads may go through Buildkite's GraphQL API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GraphqlMode {
    Auto,
    Off,
}

/// A non-negative CPU quantity (`250m`, `1`) in millicores.
fn parse_cpu_quantity(s: &str) -> Result<i64, String> {
    match benchkite::fleet::quantity::cpu_millis(s) {
        Ok(m) if m >= 0 => Ok(m),
        Ok(_) => Err("must not be negative".into()),
        Err(e) => Err(format!("not a CPU quantity like 250m or 1: {e}")),
    }
}

/// A non-negative memory quantity (`512Mi`, `1Gi`) in bytes.
fn parse_memory_quantity(s: &str) -> Result<i64, String> {
    match benchkite::fleet::quantity::whole_units(s) {
        Ok(b) if b >= 0 => Ok(b),
        Ok(_) => Err("must not be negative".into()),
        Err(e) => Err(format!("not a memory quantity like 512Mi or 1Gi: {e}")),
    }
}

fn secret(file: Option<&PathBuf>, var: &str) -> anyhow::Result<Option<benchkite::buildkite::Secret>> {
    use benchkite::buildkite::Secret;
    match file {
        Some(path) => Ok(Some(Secret::from_file(path)?)),
        None if std::env::var_os(var).is_some() => Ok(Some(Secret::from_env(var)?)),
        None => Ok(None),
    }
}

impl BuildkiteArgs {
    fn setup(
        &self,
        reporter: &str,
        namespace: Option<String>,
    ) -> anyhow::Result<Option<benchkite::kerneljob::JobSetup>> {
        let Some(org) = &self.buildkite_org else { return Ok(None) };
        let token = secret(self.buildkite_token_file.as_ref(), "BUILDKITE_API_TOKEN")?.ok_or_else(|| {
            anyhow::anyhow!(
                "--buildkite-org is set but no API token: set --buildkite-token-file or BUILDKITE_API_TOKEN"
            )
        })?;
        let webhook_secret = secret(self.webhook_secret_file.as_ref(), "BUILDKITE_WEBHOOK_SECRET")?;
        let mut cfg = benchkite::buildkite::Config::new(org.clone(), token);
        cfg.api_url = self.buildkite_api_url.clone();
        cfg.agent_api_url = self.buildkite_agent_api_url.clone();
        cfg.agent_token = secret(self.agent_metrics_token_file.as_ref(), "BUILDKITE_AGENT_METRICS_TOKEN")?;
        cfg.requests_per_minute = self.buildkite_requests_per_minute;
        cfg.graphql_url = match self.buildkite_graphql {
            GraphqlMode::Auto => Some(self.buildkite_graphql_url.clone()),
            GraphqlMode::Off => None,
        };
        cfg.graphql_share = self.buildkite_graphql_share;
        cfg.rate_limit_window = Duration::from_secs_f64(self.buildkite_rate_limit_window_seconds.max(0.1));
        let client = benchkite::buildkite::Client::with_observer(cfg, Arc::new(benchkite::metrics::BuildkiteObserver))
            .context("configuring the Buildkite client")?;
        let poll = self.poll_interval_seconds.unwrap_or(if webhook_secret.is_some() { 30 } else { 10 });
        let scopes = benchkite::buildkite::ScopeReport::new();
        let pipelines = benchkite::controller::pipelines::PipelineManager::new(
            client.clone(),
            benchkite::controller::pipelines::PipelineConfig {
                instance: self.instance.clone(),
                repository: self.pipeline_repository.clone(),
                step_timeout_minutes: self.pipeline_step_timeout_minutes,
                teams: self.pipeline_teams.iter().filter(|t| !t.trim().is_empty()).cloned().collect(),
                ..Default::default()
            },
            benchkite::controller::queues::ClusterResolver::new(self.buildkite_cluster.clone()),
            scopes.clone(),
        );
        let config = benchkite::kerneljob::JobConfig {
            pipeline: self.buildkite_pipeline.clone(),
            instance: self.instance.clone(),
            limits: benchkite::contract::PayloadLimits {
                max_source_bytes: self.max_source_bytes,
                ..Default::default()
            },
            poll_interval: Duration::from_secs(poll.max(1)),
            stale_after: Duration::from_secs(self.stale_after_seconds.max(1)),
            finalizer_timeout: Duration::from_secs(self.finalizer_timeout_seconds),
            submit_workers: self.submit_workers.max(1),
            normal_events: self.kerneljob_events == JobEvents::All,
            ..Default::default()
        };
        Ok(Some(benchkite::kerneljob::JobSetup {
            buildkite: client,
            pipelines,
            scopes,
            config,
            webhook_secret,
            reporter: reporter.to_string(),
            namespace,
        }))
    }
}

/// The command line; started as `kubectl-benchkite` (argv[0]: the kubectl plugin, `kubectl
/// benchkite ...`) it is the same CLI, named `kubectl benchkite` in help and errors.
fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut command = Cli::command();
    if let Some(name) = args.first().and_then(|a| benchkite::cli::plugin_bin_name(a)) {
        command = command.bin_name(name);
    }
    let matches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

fn main() -> anyhow::Result<()> {
    let cli = parse_cli(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Crds { dir: None, .. } => {
            print!("{}", benchkite::api::crds_yaml()?);
            Ok(())
        }
        Command::Crds { dir: Some(dir), check } => write_or_check_crds(&dir, check),
        Command::Controller(args) => run_controller(*args),
        Command::ResultKey { queue, result_key_file } => {
            let master = benchkite::signing::Key::read_file(&result_key_file)
                .with_context(|| format!("{} is not a usable key", result_key_file.display()))?;
            println!("{}", master.queue_key(&queue).to_hex());
            Ok(())
        }
        Command::Run(args) => std::process::exit(benchkite::runner::main(args)),
        Command::Certify(args) => std::process::exit(benchkite::runner::certify(*args)),
        Command::AgentStart(args) => std::process::exit(benchkite::runner::agent_start::main(args)),
        Command::Submit(args) => std::process::exit(benchkite::cli::submit(*args)),
        Command::Get(args) => std::process::exit(benchkite::cli::get(args)),
        Command::Logs(args) => std::process::exit(benchkite::cli::logs(args)),
    }
}

/// The Kubernetes client, sending `User-Agent: benchkite/<version> (<identity>)` so the API
/// server's audit log and metrics tell this controller's requests from everyone else's.
async fn kube_client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    client_from(config)
}

fn client_from(mut config: kube::Config) -> anyhow::Result<kube::Client> {
    let agent = format!("benchkite/{} ({})", env!("CARGO_PKG_VERSION"), benchkite::leader::default_identity());
    // The identity comes from POD_NAME or the host name; anything not valid in a header is dropped.
    let agent: String = agent.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').collect();
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    // kube's default retries a 429/503/504 up to 15 times with a backoff growing to 1000 s,
    // inside the request: a reconcile could sit minutes on one call while holding its slot.
    // Here: at most 4 retries over about 3 s (or what `Retry-After` asks, if that is no
    // longer than the backoff), then the error reaches the reconcile, whose error policy
    // requeues the object (watches back off on their own).
    config.default_retry = false;
    let policy =
        kube::client::retry::RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2), KUBE_RETRIES, true)
            .context("building the Kubernetes client's retry policy")?;
    let builder = kube::client::ClientBuilder::try_from(config).context("building the Kubernetes client")?;
    // The retry layer clones the service per request: a buffer in front makes it cloneable
    // (as kube's own example of a retry stack does).
    Ok(builder
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(policy))
        .build())
}

/// A DRA driver name: a DNS subdomain (as `ResourceSlice.spec.driver`), or empty for off.
fn parse_dra_driver(s: &str) -> Result<String, String> {
    let ok = s.is_empty()
        || (s.len() <= 63
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a DRA driver name (a DNS subdomain such as gpu.nvidia.com)"))
    }
}

/// Retries of a Kubernetes request answered 429, 503 or 504 before the caller sees the error.
const KUBE_RETRIES: u32 = 4;

fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let log_filter = telemetry::init(args.log_format, &args.log_level)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = kube_client().await?;
        let config = benchkite::controller::Config {
            fleet: args.controllers.contains(&ControllerKind::Fleet),
            discover_gpu_nodes: args.discover_gpu_nodes,
            discovery_grace: Duration::from_secs(args.discovery_grace_seconds),
            agent_image: args.agent_image,
            termination_grace_period_seconds: args.agent_grace_seconds,
            min_agent_memory_mib: args.min_agent_memory_mib,
            node_not_ready_toleration: Duration::from_secs(args.node_not_ready_toleration_seconds),
            node_headroom: benchkite::fleet::share::Resources {
                cpu_millis: args.node_headroom_cpu,
                memory_bytes: args.node_headroom_memory,
            },
            write_concurrency: args.write_concurrency,
            dra_driver: args.dra_driver.filter(|d| !d.is_empty()),
            ..Default::default()
        };
        let setup = args.buildkite.setup(&config.reporter, args.namespace.clone())?.map(|mut s| {
            s.config.tenancy = args.tenancy.tenancy();
            s
        });
        let result_key = args.signing.master_key()?;
        if result_key.is_none() {
            tracing::warn!("no --result-key-file: pools get no result key and no result can be verified");
        }
        benchkite::controller::agentpool::result_key::set_master_key(result_key.clone());
        let setup = setup.map(|mut s| {
            s.config.result_key = result_key;
            s.config.unsigned_results = args.signing.unsigned_results;
            s
        });
        let buildkite = setup.as_ref().map(|s| s.buildkite.clone());
        let pipelines = setup.as_ref().map(|s| s.pipelines.clone());
        let jobs = setup.filter(|_| args.controllers.contains(&ControllerKind::Kerneljob));
        let http = benchkite::server::HttpState::new(jobs.as_ref().and_then(|j| j.webhook_secret.clone()));

        // Listen first, so a taken port fails the start with a clear message.
        let http_listener = benchkite::server::bind(args.http_addr).await?;
        let metrics_listener = benchkite::server::bind(args.metrics_addr).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        tokio::spawn({
            let stop_tx = stop_tx.clone();
            async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            }
        });
        let servers = futures::future::try_join(
            benchkite::server::serve(http_listener, http.clone(), stopped()),
            benchkite::server::serve_metrics(metrics_listener, Some(log_filter), stopped()),
        );
        let controllers = async {
            if args.leader.leader_elect {
                let cfg = benchkite::leader::LeaderConfig {
                    namespace: args
                        .leader
                        .leader_election_namespace
                        .clone()
                        .unwrap_or_else(benchkite::leader::default_namespace),
                    lease_name: args.leader.leader_election_lease_name.clone(),
                    identity: benchkite::leader::default_identity(),
                    lease_duration: Duration::from_secs(args.leader.leader_election_lease_seconds),
                    pod: match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
                        (Ok(ns), Ok(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
                        _ => None,
                    },
                };
                // A standby is ready: it answers probes and waits for the lease.
                http.set_ready(true);
                let http = http.clone();
                benchkite::leader::run(client.clone(), cfg, stopped(), move |stop| {
                    benchkite::controller::run(client, config, jobs, buildkite, pipelines, http, stop)
                })
                .await
            } else {
                benchkite::metrics::global().set_leader(true);
                benchkite::controller::run(client, config, jobs, buildkite, pipelines, http.clone(), stopped()).await
            }
        };
        tokio::pin!(servers, controllers);
        tokio::select! {
            res = &mut controllers => {
                // Stop the servers too (they may still be answering probes).
                let _ = stop_tx.send(true);
                let _ = tokio::time::timeout(Duration::from_secs(5), servers).await;
                res
            }
            res = &mut servers => {
                if !*stop_tx.borrow() {
                    // A server failed on its own: nothing can reach this process any more.
                    return res.and_then(|_| Err(anyhow::anyhow!("the HTTP servers stopped")));
                }
                // Shutting down: the servers finished first; let the controllers finish.
                match tokio::time::timeout(Duration::from_secs(30), &mut controllers).await {
                    Ok(done) => done,
                    Err(_) => Err(anyhow::anyhow!("the controllers did not stop within 30 s of the shutdown")),
                }
            }
        }
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}

fn write_or_check_crds(dir: &std::path::Path, check: bool) -> anyhow::Result<()> {
    let mut drift = Vec::new();
    for (name, crd) in benchkite::api::crds() {
        let path = dir.join(format!("{name}.yaml"));
        let yaml = format!("---\n{}", serde_yaml::to_string(&crd)?);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != yaml {
                drift.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if !drift.is_empty() {
        anyhow::bail!("CRDs out of date: {} (run `cargo run -- crds --dir crds` and commit)", drift.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Command, parse_cli};

    /// Started through a symlink named `kubectl-benchkite` (how kubectl finds plugins), the
    /// binary is the same CLI, named `kubectl benchkite`; under its own name, `benchkite`.
    #[test]
    fn as_kubectl_benchkite_it_is_the_same_cli() {
        let submit = ["submit", "tasks/identity", "sub.py", "--mode", "test", "--pool", "h100", "--wait"];
        for argv0 in ["/usr/local/bin/kubectl-benchkite", "kubectl-benchkite", "./benchkite", "/opt/benchkite"] {
            let cli = parse_cli(std::iter::once(argv0).chain(submit)).unwrap();
            let Command::Submit(args) = cli.command else { panic!("{argv0}: not submit") };
            assert!(args.wait && args.pool.as_deref() == Some("h100"), "{argv0}");
        }
        let cli = parse_cli(["kubectl-benchkite", "get", "-A", "-o", "wide"]).unwrap();
        assert!(matches!(cli.command, Command::Get(ref g) if g.all_namespaces));
        // Help and errors name the program the way it was started.
        let err = parse_cli(["/usr/local/bin/kubectl-benchkite", "submit"]).unwrap_err().to_string();
        assert!(err.contains("kubectl benchkite submit"), "{err}");
        let err = parse_cli(["/usr/bin/benchkite", "submit"]).unwrap_err().to_string();
        assert!(err.contains("benchkite submit") && !err.contains("kubectl"), "{err}");
        // A name that merely contains the plugin's is not the plugin.
        let err = parse_cli(["kubectl-benchkite-old", "submit"]).unwrap_err().to_string();
        assert!(!err.contains("kubectl benchkite"), "{err}");
    }
    use std::sync::atomic::{AtomicU32, Ordering};

    use k8s_openapi::api::core::v1::ConfigMap;

    /// A 429 is retried a bounded number of times inside the request, then reaches the caller
    /// (kube's default would keep retrying up to 15 times, for minutes), and carries the
    /// User-Agent that names this controller.
    #[tokio::test]
    async fn throttled_requests_are_retried_a_bounded_number_of_times() {
        let hits = Arc::new(AtomicU32::new(0));
        let agents = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (h, a) = (hits.clone(), agents.clone());
        let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
            let (h, a) = (h.clone(), a.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                if let Some(ua) = headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok())
                    && let Ok(mut a) = a.lock()
                {
                    a.push(ua.to_string());
                }
                (http::StatusCode::TOO_MANY_REQUESTS, "slow down")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = super::client_from(config).unwrap();
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
        let err = api.get("x").await.expect_err("a 429 every time");
        assert!(err.to_string().contains("429") || matches!(&err, kube::Error::Api(s) if s.code == 429), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), 1 + super::KUBE_RETRIES);
        let agents = agents.lock().unwrap().clone();
        assert!(agents.iter().all(|ua| ua.starts_with("benchkite/")), "{agents:?}");
    }
}
