//! The Buildkite simulator as the KernelJob e2e suites use it.

use anyhow::Result;
use buildkite_sim::config::{AgentPoolConfig, ExecutorConfig, RateLimitConfig};
use buildkite_sim::{SimConfig, SimHandle};

/// A simulator with `agents` agents on `queue` running the real `benchkite run`, the
/// organization limit of 200/min and no per-user limit (one token serves all tests).
pub fn queue_config(queue: &str, agents: u32) -> Result<SimConfig> {
    let mut cfg = SimConfig {
        executor: ExecutorConfig::command(format!("{} run", crate::operator::binary()?.display())),
        rate_limit: RateLimitConfig { org_limit: 200, user_limit: 0, window_secs: 60.0 },
        ..Default::default()
    };
    cfg.clusters[0].queues.push(queue.to_string());
    cfg.agents.push(AgentPoolConfig { queue: queue.to_string(), count: agents, ..Default::default() });
    Ok(cfg)
}

/// `benchkite controller` arguments for a KernelJob-only controller of `namespace` against
/// `sim` (the namespace is also the installation id, so tests never see each other's builds).
/// The API token goes in the environment (`BUILDKITE_API_TOKEN`), never in flags.
pub fn kerneljob_args(sim: &SimHandle, namespace: &str) -> Vec<String> {
    [
        "--controllers",
        "kerneljob",
        "--namespace",
        namespace,
        "--buildkite-org",
        &sim.organization(),
        "--buildkite-api-url",
        &sim.api_url(),
        "--buildkite-agent-api-url",
        &sim.agent_url(),
        "--instance",
        namespace,
    ]
    .map(str::to_string)
    .to_vec()
}
