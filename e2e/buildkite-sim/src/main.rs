//! `buildkite-sim`: run the Buildkite simulator as a process.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;

use buildkite_sim::config::{
    AgentPoolConfig, EndpointFault, ExecutorConfig, OutageConfig, OutageMode, PipelineConfig, RepositoryVisibility,
    ScriptedConfig, SimConfig, WebhookAuth, WebhookBodyShape, WebhookConfig, WebhookDelivery,
};
use buildkite_sim::{SimHandle, Simulator};

/// A faithful Buildkite simulator (REST v2, agent metrics, webhooks, artifact storage) on
/// loopback. Flags override the config file; the control API is under /_sim (see README).
#[derive(Parser, Debug)]
#[command(name = "buildkite-sim", version, about, long_about = None)]
struct Args {
    /// JSON or YAML config file (the full configuration; flags override it).
    #[arg(long, short = 'c', env = "BUILDKITE_SIM_CONFIG")]
    config: Option<PathBuf>,

    /// Address to bind (must be loopback). [default: 127.0.0.1]
    #[arg(long)]
    bind: Option<IpAddr>,

    /// Port of the API listener (/v2, /v3, /_sim); 0 = any free port. [default: 0]
    #[arg(long)]
    api_port: Option<u16>,

    /// Port of the artifact storage listener; 0 = any free port. [default: 0]
    #[arg(long)]
    storage_port: Option<u16>,

    /// Organization slug. [default: benchkite]
    #[arg(long)]
    org: Option<String>,

    /// REST API token (repeatable; each token is one user for the per-user limit).
    /// [default: bk-sim-api-token]
    #[arg(long = "api-token")]
    api_tokens: Vec<String>,

    /// Agent token for /v3/metrics (repeatable). [default: bk-sim-agent-token]
    #[arg(long = "agent-token")]
    agent_tokens: Vec<String>,

    /// Pipeline slug to create with the default step (repeatable; replaces the configured
    /// pipelines). [default: kernelbot]
    #[arg(long = "pipeline")]
    pipelines: Vec<String>,

    /// Agent query rule of the default step. Like Buildkite's settings steps it is
    /// interpolated with the fixed build variables only (BUILDKITE_BRANCH, …), never with
    /// the build env. [default: queue=${KERNELBOT_QUEUE:-default}, i.e. queue=default]
    #[arg(long)]
    step_agents: Option<String>,

    /// Artifact paths of the default step (`;`-separated globs). [default: result.json]
    #[arg(long)]
    artifact_paths: Option<String>,

    /// Step timeout in seconds (jobs over it end `timed_out`). [default: none]
    #[arg(long)]
    step_timeout_secs: Option<f64>,

    /// Queue to create in the first cluster (repeatable; adds to the configured ones).
    #[arg(long = "queue")]
    queues: Vec<String>,

    /// Repository the agents can clone: URL=public or URL=private (repeatable). A
    /// repository not listed is private: jobs that do not skip the checkout fail (exit 128).
    #[arg(long = "repository", value_parser = parse_repository)]
    repositories: Vec<(String, RepositoryVisibility)>,

    /// The organization's default cluster for new pipelines (name or id). [default: none]
    #[arg(long)]
    default_cluster: Option<String>,

    /// Seconds before a job nobody picked up expires. [default: 2592000 (30 days)]
    #[arg(long)]
    job_expiry_secs: Option<f64>,

    /// Simulated agents: QUEUE=COUNT (repeatable). Agents of a queue that does not exist
    /// refuse to connect until it is created.
    #[arg(long = "agents", value_parser = parse_pool)]
    agents: Vec<(String, u32)>,

    /// Executor: `command` (a local process per job) or `scripted` (timers). [default: command]
    #[arg(long, value_parser = ["command", "scripted"])]
    executor: Option<String>,

    /// Command of the command executor (run with `sh -c` in a fresh directory).
    /// [default: benchkite run]
    #[arg(long)]
    command: Option<String>,

    /// Seconds between SIGTERM and SIGKILL when a job is canceled or times out. [default: 10]
    #[arg(long)]
    cancel_grace_secs: Option<f64>,

    /// Command executor: also give jobs `BUILDKITE_SIM_META_DATA_FILE` (off: meta-data only
    /// through the Agent API with the job token).
    #[arg(long)]
    meta_data_file: bool,

    /// Command executor: the `buildkite-agent` put on the jobs' `PATH`. [default:
    /// $BUILDKITE_SIM_AGENT_BINARY, else next to this executable]
    #[arg(long)]
    agent_binary: Option<std::path::PathBuf>,

    /// Scripted executor: job duration in ms. [default: 100]
    #[arg(long)]
    scripted_duration_ms: Option<u64>,

    /// Scripted executor: exit status. [default: 0]
    #[arg(long)]
    scripted_exit_status: Option<i32>,

    /// Scripted executor: file whose content is uploaded as result.json.
    #[arg(long)]
    scripted_result_json: Option<PathBuf>,

    /// Organization rate limit (requests per window, scope `rest`). [default: 200]
    #[arg(long)]
    rate_limit: Option<u64>,

    /// Per-token rate limit (scope `rest_user`); 0 disables it. [default: 50]
    #[arg(long)]
    user_rate_limit: Option<u64>,

    /// Rate-limit window in seconds. [default: 60]
    #[arg(long)]
    rate_limit_window_secs: Option<f64>,

    /// GraphQL: organization complexity points per window. [default: 20000]
    #[arg(long)]
    graphql_points_limit: Option<u64>,

    /// GraphQL: complexity points per window per token (user); 0 disables it. [default: 5000]
    #[arg(long)]
    graphql_user_points_limit: Option<u64>,

    /// GraphQL: points window in seconds. [default: 300]
    #[arg(long)]
    graphql_window_secs: Option<f64>,

    /// GraphQL: largest requested complexity of one query. [default: 50000]
    #[arg(long)]
    graphql_max_query_complexity: Option<u64>,

    /// Lifetime of signed artifact download URLs in seconds. [default: 60]
    #[arg(long)]
    artifact_url_ttl_secs: Option<u64>,

    /// Value of the Buildkite-Agent-Metrics-Poll-Duration header. [default: 10]
    #[arg(long)]
    poll_duration_secs: Option<u64>,

    /// Base of web_url fields. [default: https://buildkite.com]
    #[arg(long)]
    web_base_url: Option<String>,

    /// Webhook URL (repeatable); the --webhook-* options apply to these.
    #[arg(long = "webhook")]
    webhooks: Vec<String>,

    /// Webhook token. [default: bk-sim-webhook-token]
    #[arg(long)]
    webhook_token: Option<String>,

    /// Send X-Buildkite-Signature instead of X-Buildkite-Token.
    #[arg(long)]
    webhook_signature: bool,

    /// Webhook events to send (repeatable; default all).
    #[arg(long = "webhook-event")]
    webhook_events: Vec<String>,

    /// Delay before each webhook delivery (ms). [default: 0]
    #[arg(long)]
    webhook_delay_ms: Option<u64>,

    /// Random extra delay per delivery (ms): deliveries arrive out of order. [default: 0]
    #[arg(long)]
    webhook_jitter_ms: Option<u64>,

    /// Probability (0..1) that a delivery is sent twice. [default: 0]
    #[arg(long)]
    webhook_duplicate_probability: Option<f64>,

    /// Attempts per delivery (retries with exponential backoff). [default: 1, no redelivery]
    #[arg(long)]
    webhook_max_attempts: Option<u32>,

    /// First retry backoff (ms). [default: 500]
    #[arg(long)]
    webhook_backoff_ms: Option<u64>,

    /// Webhook body shape: `documented` or `services-console` (go-buildkite's captured body:
    /// `… UTC` timestamps, no meta_data). [default: documented]
    #[arg(long, value_parser = ["documented", "services-console"])]
    webhook_body_shape: Option<String>,

    /// Added latency for every API request (ms). [default: 0]
    #[arg(long)]
    latency_ms: Option<u64>,

    /// Probability (0..1) of answering an API request with 503. [default: 0]
    #[arg(long)]
    error_rate: Option<f64>,

    /// Probability (0..1) of dropping an API connection without answer. [default: 0]
    #[arg(long)]
    drop_rate: Option<f64>,

    /// Start with an outage of this many seconds.
    #[arg(long)]
    outage_secs: Option<f64>,

    /// Outage answers: `unavailable` (503) or `drop` (close connections). [default: unavailable]
    #[arg(long, value_parser = ["unavailable", "drop"])]
    outage_mode: Option<String>,

    /// Directory for per-job temp directories. [default: system temp dir]
    #[arg(long)]
    job_dir: Option<PathBuf>,

    /// Keep per-job directories after the job.
    #[arg(long)]
    keep_job_dirs: bool,

    /// Write {api_url, agent_url, storage_url, sim_url, …} as JSON to this file once
    /// listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,

    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
}

fn parse_pool(s: &str) -> Result<(String, u32), String> {
    let (q, n) = s.split_once('=').ok_or_else(|| format!("expected QUEUE=COUNT, got {s:?}"))?;
    let n = n.trim().parse::<u32>().map_err(|e| format!("{s:?}: {e}"))?;
    if q.trim().is_empty() {
        return Err("empty queue".into());
    }
    Ok((q.trim().to_string(), n))
}

fn parse_repository(s: &str) -> Result<(String, RepositoryVisibility), String> {
    let (url, v) = s.rsplit_once('=').ok_or_else(|| format!("expected URL=public|private, got {s:?}"))?;
    let v = match v.trim() {
        "public" => RepositoryVisibility::Public,
        "private" => RepositoryVisibility::Private,
        other => return Err(format!("{other:?} is neither public nor private")),
    };
    Ok((url.trim().to_string(), v))
}

fn build_config(a: &Args) -> anyhow::Result<SimConfig> {
    let mut cfg = match &a.config {
        Some(p) => SimConfig::from_file(p)?,
        None => SimConfig::default(),
    };
    if let Some(v) = a.bind {
        cfg.bind = v;
    }
    if let Some(v) = a.api_port {
        cfg.api_port = v;
    }
    if let Some(v) = a.storage_port {
        cfg.storage_port = v;
    }
    if let Some(v) = &a.org {
        cfg.organization.clone_from(v);
    }
    if !a.api_tokens.is_empty() {
        cfg.api_tokens.clone_from(&a.api_tokens);
    }
    if !a.agent_tokens.is_empty() {
        cfg.agent_tokens.clone_from(&a.agent_tokens);
    }
    if !a.pipelines.is_empty() {
        cfg.pipelines =
            a.pipelines.iter().map(|slug| PipelineConfig { slug: slug.clone(), ..PipelineConfig::default() }).collect();
    }
    for p in &mut cfg.pipelines {
        for s in &mut p.steps {
            if let Some(r) = &a.step_agents {
                s.agents = vec![r.clone()];
            }
            if let Some(v) = &a.artifact_paths {
                s.artifact_paths.clone_from(v);
            }
            if let Some(t) = a.step_timeout_secs {
                s.timeout_secs = Some(t);
            }
        }
    }
    for q in &a.queues {
        if let Some(c) = cfg.clusters.first_mut()
            && !c.queues.contains(q)
        {
            c.queues.push(q.clone());
        }
    }
    for (url, v) in &a.repositories {
        cfg.repositories.insert(url.clone(), *v);
    }
    if let Some(c) = &a.default_cluster {
        cfg.default_cluster = Some(c.clone());
    }
    if let Some(v) = a.job_expiry_secs {
        cfg.job_expiry_secs = v;
    }
    for (queue, count) in &a.agents {
        match cfg.agents.iter_mut().find(|p| &p.queue == queue) {
            Some(p) => p.count = *count,
            None => {
                cfg.agents.push(AgentPoolConfig { queue: queue.clone(), count: *count, ..AgentPoolConfig::default() })
            }
        }
    }
    let scripted = match a.executor.as_deref() {
        Some("scripted") => true,
        Some(_) => false,
        None => matches!(cfg.executor, ExecutorConfig::Scripted(_)),
    };
    if scripted {
        let mut s = match &cfg.executor {
            ExecutorConfig::Scripted(s) => s.clone(),
            ExecutorConfig::Command { .. } => ScriptedConfig::default(),
        };
        if let Some(v) = a.scripted_duration_ms {
            s.duration_ms = v;
        }
        if let Some(v) = a.scripted_exit_status {
            s.exit_status = v;
        }
        if let Some(p) = &a.scripted_result_json {
            s.result_json = Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?);
        }
        cfg.executor = ExecutorConfig::Scripted(s);
    } else {
        let (mut command, mut shell, mut env, mut grace, mut max_log, md_file, agent_bin) = match &cfg.executor {
            ExecutorConfig::Command {
                command,
                shell,
                env,
                cancel_grace_secs,
                max_log_bytes,
                meta_data_file,
                agent_binary,
            } => (
                command.clone(),
                shell.clone(),
                env.clone(),
                *cancel_grace_secs,
                *max_log_bytes,
                *meta_data_file,
                agent_binary.clone(),
            ),
            ExecutorConfig::Scripted(_) => {
                (String::new(), vec!["sh".into(), "-c".into()], BTreeMap::new(), 10.0, 1 << 20, false, None)
            }
        };
        if command.is_empty() {
            command = "benchkite run".into();
        }
        if let Some(c) = &a.command {
            command.clone_from(c);
        }
        if let Some(g) = a.cancel_grace_secs {
            grace = g;
        }
        if shell.is_empty() {
            shell = vec!["sh".into(), "-c".into()];
        }
        env.retain(|_, _| true);
        max_log = max_log.max(1024);
        cfg.executor = ExecutorConfig::Command {
            command,
            shell,
            env,
            cancel_grace_secs: grace,
            max_log_bytes: max_log,
            meta_data_file: md_file || a.meta_data_file,
            agent_binary: a.agent_binary.clone().or(agent_bin),
        };
    }
    if let Some(v) = a.rate_limit {
        cfg.rate_limit.org_limit = v;
    }
    if let Some(v) = a.user_rate_limit {
        cfg.rate_limit.user_limit = v;
    }
    if let Some(v) = a.rate_limit_window_secs {
        cfg.rate_limit.window_secs = v;
    }
    if let Some(v) = a.graphql_points_limit {
        cfg.graphql.points_limit = v;
    }
    if let Some(v) = a.graphql_user_points_limit {
        cfg.graphql.user_points_limit = v;
    }
    if let Some(v) = a.graphql_window_secs {
        cfg.graphql.window_secs = v;
    }
    if let Some(v) = a.graphql_max_query_complexity {
        cfg.graphql.max_query_complexity = v;
    }
    if let Some(v) = a.artifact_url_ttl_secs {
        cfg.artifact_url_ttl_secs = v;
    }
    if let Some(v) = a.poll_duration_secs {
        cfg.metrics_poll_duration_secs = v;
    }
    if let Some(v) = &a.web_base_url {
        cfg.web_base_url.clone_from(v);
    }
    for url in &a.webhooks {
        let mut d = WebhookDelivery::default();
        if let Some(v) = a.webhook_delay_ms {
            d.delay_ms = v;
        }
        if let Some(v) = a.webhook_jitter_ms {
            d.jitter_ms = v;
        }
        if let Some(v) = a.webhook_duplicate_probability {
            d.duplicate_probability = v;
        }
        if let Some(v) = a.webhook_max_attempts {
            d.max_attempts = v;
        }
        if let Some(v) = a.webhook_backoff_ms {
            d.backoff_ms = v;
        }
        cfg.webhooks.push(WebhookConfig {
            url: url.clone(),
            token: a.webhook_token.clone().unwrap_or_else(|| WebhookConfig::default().token),
            auth: if a.webhook_signature { WebhookAuth::Signature } else { WebhookAuth::Token },
            events: a.webhook_events.clone(),
            delivery: d,
            body_shape: if a.webhook_body_shape.as_deref() == Some("services-console") {
                WebhookBodyShape::ServicesConsole
            } else {
                WebhookBodyShape::Documented
            },
        });
    }
    if a.latency_ms.is_some() || a.error_rate.is_some() || a.drop_rate.is_some() {
        let d = &mut cfg.faults.default;
        if let Some(v) = a.latency_ms {
            d.latency_ms = v;
        }
        if let Some(v) = a.error_rate {
            d.error_rate = v;
        }
        if let Some(v) = a.drop_rate {
            d.drop_rate = v;
        }
        let f: &EndpointFault = d;
        f.validate().map_err(|e| anyhow::anyhow!(e))?;
    }
    if let Some(secs) = a.outage_secs {
        cfg.faults.outage = Some(OutageConfig {
            duration_secs: secs,
            mode: if a.outage_mode.as_deref() == Some("drop") { OutageMode::Drop } else { OutageMode::Unavailable },
            include_storage: false,
        });
    }
    if let Some(d) = &a.job_dir {
        cfg.job_dir = Some(d.clone());
    }
    if a.keep_job_dirs {
        cfg.keep_job_dirs = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn describe(h: &SimHandle) -> serde_json::Value {
    serde_json::json!({
        "api_url": h.api_url(),
        "agent_url": h.agent_url(),
        "storage_url": h.storage_url(),
        "sim_url": h.sim_url(),
        "organization": h.organization(),
        "api_token": h.api_token(),
        "agent_token": h.agent_token(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = build_config(&args)?;
    if args.print_config {
        print!("{}", serde_yaml::to_string(&cfg)?);
        return Ok(());
    }
    let handle = Simulator::start(cfg).await?;
    let info = describe(&handle);
    println!("{info}");
    if let Some(p) = &args.ready_file {
        std::fs::write(p, serde_json::to_vec_pretty(&info)?)?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
