use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use benchkite::telemetry::{self, LogFormat};

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
    Controller(ControllerArgs),
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
    /// Create a GpuNode for every Node that offers a GPU resource.
    #[arg(long, env = "BENCHKITE_DISCOVER_GPU_NODES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    discover_gpu_nodes: bool,
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
    /// Pod writes in flight per pool reconcile.
    #[arg(long, env = "BENCHKITE_WRITE_CONCURRENCY", default_value_t = 32)]
    write_concurrency: usize,
    /// Log format.
    #[arg(long, env = "BENCHKITE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level filter (tracing EnvFilter syntax, e.g. `info,benchkite=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { dir: None, .. } => {
            print!("{}", benchkite::api::crds_yaml()?);
            Ok(())
        }
        Command::Crds { dir: Some(dir), check } => write_or_check_crds(&dir, check),
        Command::Controller(args) => run_controller(args),
    }
}

fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_level)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let client =
            kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
        let config = benchkite::controller::Config {
            discover_gpu_nodes: args.discover_gpu_nodes,
            discovery_grace: Duration::from_secs(args.discovery_grace_seconds),
            agent_image: args.agent_image,
            termination_grace_period_seconds: args.agent_grace_seconds,
            min_agent_memory_mib: args.min_agent_memory_mib,
            write_concurrency: args.write_concurrency,
            ..Default::default()
        };
        benchkite::controller::run(client, config, shutdown_signal()).await
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
