//! A Buildkite simulator for benchkite's tests, benchmarks and demo.
//!
//! It serves, on loopback only:
//! - the REST API v2 (`/v2`, Bearer tokens, rate limits, `Link` pagination),
//! - the GraphQL API (`POST /v1`, complexity points budget; see [`graphql`]),
//! - the agent metrics API (`/v3/metrics`, `Token` auth),
//! - `/_sim/…` introspection and control,
//! - a separate artifact storage listener (signed, expiring URLs; refuses `Authorization`),
//!
//! runs jobs on simulated agents (local processes or timers) and sends webhooks.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use buildkite_sim::{SimConfig, Simulator};
//! let mut cfg = SimConfig::default();
//! cfg.executor = buildkite_sim::config::ExecutorConfig::command("echo '{}' > result.json");
//! let sim = Simulator::start(cfg).await?;
//! sim.set_agents("default", 2)?;
//! println!("{} {}", sim.api_url(), sim.api_token());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

#![recursion_limit = "256"]

pub mod agent_api;
pub mod api;
pub mod config;
pub mod counters;
pub mod executor;
pub mod faults;
pub mod glob;
pub mod gpu;
pub mod graphql;
pub mod http;
pub mod model;
pub mod ratelimit;
pub mod render;
pub mod sim;
pub mod sim_api;
pub mod state;
pub mod steps;
pub mod storage;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use config::SimConfig;
pub use counters::{CountersSnapshot, EndpointCount};
pub use ratelimit::RateLimitStats;
pub use state::{InfraFailure, JobStats};
pub use webhooks::{WebhookStats, signature_header, verify_signature};

use config::{AgentPoolConfig, OutageConfig, RateLimitConfig, WebhookConfig};
use sim::{Sim, Urls};

/// Entry point: `Simulator::start(config)`.
pub struct Simulator;

impl Simulator {
    /// Binds the listeners, starts the dispatcher and the webhook worker, and returns a
    /// handle. Ports 0 pick free ports (see [`SimHandle::api_url`]).
    pub async fn start(cfg: SimConfig) -> anyhow::Result<SimHandle> {
        cfg.validate()?;
        let api_listener = TcpListener::bind(SocketAddr::new(cfg.bind, cfg.api_port))
            .await
            .map_err(|e| anyhow::anyhow!("binding the API listener: {e}"))?;
        let storage_listener = TcpListener::bind(SocketAddr::new(cfg.bind, cfg.storage_port))
            .await
            .map_err(|e| anyhow::anyhow!("binding the storage listener: {e}"))?;
        let api_addr = api_listener.local_addr()?;
        let storage_addr = storage_listener.local_addr()?;
        let urls = Urls { api_root: format!("http://{api_addr}"), storage_root: format!("http://{storage_addr}") };

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut inner = state::Inner::new(&cfg, Some(tx))?;
        inner.agent_endpoint = format!("{}/v3", urls.api_root);
        for pool in &cfg.agents {
            let cluster = inner.cluster_by_name(pool.cluster.as_deref()).ok();
            if let Some(c) = cluster
                && inner.queue(c, &pool.queue).is_none()
            {
                tracing::warn!(
                    queue = %pool.queue,
                    "agents of queue {:?} refuse to connect: the queue does not exist in the cluster (create it first)",
                    pool.queue
                );
            }
        }
        let shutdown = CancellationToken::new();
        let sim = Arc::new(Sim::new(
            urls,
            inner,
            ratelimit::RateLimiter::new(cfg.rate_limit.clone()),
            faults::Faults::new(cfg.faults.clone()),
            webhooks::Webhooks::new(&cfg.webhooks)?,
            cfg.artifact_url_ttl_secs,
            cfg.metrics_poll_duration_secs,
            shutdown.clone(),
        ));
        sim.graphql.budget.set_config(cfg.graphql.clone());

        let servers = vec![
            tokio::spawn(Arc::clone(&sim).run_dispatcher()),
            tokio::spawn(Arc::clone(&sim).run_housekeeping()),
            tokio::spawn(webhooks::run_worker(Arc::clone(&sim), rx)),
            tokio::spawn(http::serve(api_listener, api::router(Arc::clone(&sim)), shutdown.clone(), sim.tasks.clone())),
            tokio::spawn(http::serve(
                storage_listener,
                storage::router(Arc::clone(&sim)),
                shutdown.clone(),
                sim.tasks.clone(),
            )),
        ];
        sim.kick();
        tracing::info!(api = %sim.urls.api_root, storage = %sim.urls.storage_root, "buildkite-sim listening");
        Ok(SimHandle { sim, servers, shutdown })
    }
}

/// A running simulator. Dropping it stops the simulator (without waiting); prefer
/// [`SimHandle::shutdown`].
pub struct SimHandle {
    sim: Arc<Sim>,
    servers: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl SimHandle {
    /// REST API base including `/v2`, e.g. `http://127.0.0.1:41234/v2`.
    pub fn api_url(&self) -> String {
        self.sim.urls.v2()
    }

    /// The GraphQL endpoint, `http://127.0.0.1:<port>/v1`.
    pub fn graphql_url(&self) -> String {
        format!("{}/v1", self.sim.urls.api_root)
    }

    /// Everything `GET /_sim/graphql` returns (budget, windows, counters).
    pub fn graphql_stats(&self) -> serde_json::Value {
        graphql::sim_routes::stats_json(&self.sim)
    }

    /// Replaces the GraphQL budget's configuration (open windows are kept).
    pub fn set_graphql(&self, cfg: config::GraphqlConfig) {
        self.sim.graphql.budget.set_config(cfg);
    }

    /// Charges `points` to the organization's current GraphQL window (opening one).
    pub fn spend_graphql_points(&self, points: u64) {
        self.sim.graphql.budget.spend(points);
    }

    /// Spends the rest of the organization's GraphQL window right after the `n`th
    /// `buildCreate` (counted since the start) has executed.
    pub fn spend_graphql_points_after_creates(&self, n: u64) {
        self.sim.graphql.budget.spend_after_creates(n);
    }

    /// Agent API base including `/v3` (for `/v3/metrics`).
    pub fn agent_url(&self) -> String {
        format!("{}/v3", self.sim.urls.api_root)
    }

    /// `http://127.0.0.1:<port>` of the storage listener.
    pub fn storage_url(&self) -> String {
        self.sim.urls.storage_root.clone()
    }

    /// `http://127.0.0.1:<port>/_sim` (control & introspection).
    pub fn sim_url(&self) -> String {
        format!("{}/_sim", self.sim.urls.api_root)
    }

    /// `http://127.0.0.1:<port>` of the API listener (no path).
    pub fn api_root(&self) -> String {
        self.sim.urls.api_root.clone()
    }

    /// The organization slug.
    pub fn organization(&self) -> String {
        self.sim.org_slug.clone()
    }

    /// The first configured REST token.
    pub fn api_token(&self) -> String {
        self.sim.lock().tokens.first().map(|t| t.token.clone()).unwrap_or_default()
    }

    /// Creates a REST token with exactly these scopes (its own user for the per-user rate
    /// limit) and returns its value.
    pub fn create_api_token(&self, scopes: &[&str]) -> String {
        let mut secret = [0u8; 20];
        rand::fill(&mut secret);
        let token = format!("bk-sim-{}", hex::encode(secret));
        self.sim.lock().add_token(
            token.clone(),
            scopes.iter().map(|s| s.to_string()).collect(),
            "created by the test".into(),
        );
        token
    }

    /// Marks a repository URL public or private for checkouts.
    pub fn set_repository(&self, url: &str, visibility: config::RepositoryVisibility) {
        self.sim.lock().repositories.insert(url.to_string(), visibility);
    }

    /// The first agent token of the default cluster (for `/v3/metrics`).
    pub fn agent_token(&self) -> String {
        self.sim.lock().agent_tokens.first().map(|t| t.token.clone()).unwrap_or_default()
    }

    /// Request counters of the API listener, per `"<METHOD> <route template>"` and status.
    pub fn counters(&self) -> CountersSnapshot {
        self.sim.counters.snapshot()
    }

    /// API requests counted as they arrive, before an injected latency holds them (status 0):
    /// tells a test that a request is in flight.
    pub fn arrivals(&self) -> CountersSnapshot {
        self.sim.arrivals.snapshot()
    }

    /// Request counters of the storage listener.
    pub fn storage_counters(&self) -> CountersSnapshot {
        self.sim.storage_counters.snapshot()
    }

    /// Clears the request counters.
    pub fn reset_counters(&self) {
        self.sim.counters.reset();
        self.sim.arrivals.reset();
        self.sim.storage_counters.reset();
    }

    /// Exact rate-limit counts (counted, rejected, after-429-before-reset…).
    pub fn rate_limit_stats(&self) -> RateLimitStats {
        self.sim.rate.stats()
    }

    /// Changes the rate limits at run time (`reset`: start fresh windows).
    pub fn set_rate_limit(&self, cfg: RateLimitConfig, reset: bool) {
        self.sim.rate.set_config(cfg, reset);
    }

    /// Clears rate-limit windows and counts.
    pub fn reset_rate_limit(&self) {
        self.sim.rate.reset();
    }

    /// Sets the number of simulated agents of `queue` in the default cluster.
    pub fn set_agents(&self, queue: &str, count: u32) -> anyhow::Result<()> {
        self.set_agent_pool(AgentPoolConfig { queue: queue.to_string(), count, ..AgentPoolConfig::default() })
    }

    /// Sets a simulated agent pool (count, tags, env, cluster).
    pub fn set_agent_pool(&self, pool: AgentPoolConfig) -> anyhow::Result<()> {
        let r = self.sim.lock().set_pool(&pool);
        self.sim.kick();
        r.map(|_| ()).map_err(|e| anyhow::anyhow!(e))
    }

    /// A cloneable handle that registers and stops agents of this simulator (for stand-ins
    /// of real agent processes, such as the e2e kubelet, that outlive a borrow of the handle).
    pub fn agent_control(&self) -> AgentControl {
        AgentControl { sim: Arc::clone(&self.sim) }
    }

    /// Registers one agent like `POST /_sim/agents` (see [`AgentControl::register_agent`]).
    pub fn register_agent(
        &self,
        name: &str,
        tags: Vec<String>,
        env: std::collections::BTreeMap<String, String>,
        gpu: Option<gpu::GpuProfile>,
    ) -> anyhow::Result<Uuid> {
        self.agent_control().register_agent(name, tags, env, gpu)
    }

    /// Stops an agent like REST `PUT …/agents/{id}/stop` (see [`AgentControl::stop_agent`]).
    pub fn stop_agent(&self, id: Uuid, force: bool) -> anyhow::Result<()> {
        self.agent_control().stop_agent(id, force)
    }

    /// Creates a queue in the organization's default cluster (else the first cluster), like
    /// `POST …/clusters/{id}/queues`.
    pub fn create_queue(&self, key: &str) -> anyhow::Result<Uuid> {
        let mut inner = self.sim.lock();
        let cluster = inner.cluster_by_name(None).map_err(|e| anyhow::anyhow!(e))?;
        let r = inner.create_queue(cluster, key, None).map_err(|e| anyhow::anyhow!("{e:?}"));
        drop(inner);
        self.sim.kick();
        r
    }

    /// Adds a webhook at run time (a `ping` is sent to it).
    pub fn add_webhook(&self, cfg: WebhookConfig) -> Uuid {
        let id = self.sim.webhooks.add(cfg);
        webhooks::ping(&self.sim, id);
        id
    }

    /// Delivery counters of every webhook.
    pub fn webhook_stats(&self) -> Vec<webhooks::WebhookInfo> {
        self.sim.webhooks.list()
    }

    /// Starts an outage window.
    pub fn start_outage(&self, o: OutageConfig) {
        self.sim.faults.start_outage(&o);
    }

    /// Ends an outage window.
    pub fn end_outage(&self) {
        self.sim.faults.end_outage();
    }

    /// Replaces the fault configuration.
    pub fn set_faults(&self, f: config::FaultConfig) {
        self.sim.faults.set_config(f);
    }

    /// Injects an infrastructure failure into the next `count` jobs (of `queue`).
    pub fn inject_infra_failures(&self, count: u32, queue: Option<&str>, failure: InfraFailure) {
        self.sim.lock().infra_rules.push(state::InfraRule {
            remaining: count,
            queue: queue.map(str::to_string),
            failure,
        });
    }

    /// Job outcome counters.
    pub fn job_stats(&self) -> JobStats {
        self.sim.lock().job_stats.clone()
    }

    /// State of a build (`None`: no such build).
    pub fn build_state(&self, pipeline: &str, number: u64) -> Option<String> {
        self.sim.lock().build_by_number(pipeline, number).map(|b| b.state.as_str().to_string())
    }

    /// Everything `/_sim/stats` returns.
    pub fn stats(&self) -> serde_json::Value {
        sim_api::stats_json(&self.sim)
    }

    /// Stops accepting, lets open requests finish, stops jobs (processes are killed) and
    /// waits (up to 10 s) for everything to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for s in self.servers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        self.sim.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.sim.tasks.wait()).await;
    }
}

/// Registers and stops agents of a running simulator; see [`SimHandle::agent_control`].
#[derive(Clone)]
pub struct AgentControl {
    sim: Arc<Sim>,
}

impl AgentControl {
    /// Registers an agent of the default cluster like `POST /_sim/agents`: `tags` are
    /// `key=value` (the `queue` tag picks its queue, which must exist), `env` is the agent's own
    /// environment (below every job variable), `gpu` its simulated GPU slot.
    pub fn register_agent(
        &self,
        name: &str,
        tags: Vec<String>,
        env: std::collections::BTreeMap<String, String>,
        gpu: Option<gpu::GpuProfile>,
    ) -> anyhow::Result<Uuid> {
        let mut pairs = Vec::with_capacity(tags.len());
        for t in tags {
            match t.split_once('=') {
                Some((k, v)) if !k.is_empty() => pairs.push((k.to_string(), v.to_string())),
                _ => anyhow::bail!("agent {name}: tag {t:?} is not key=value"),
            }
        }
        let r = self.sim.lock().register_agent(name.to_string(), pairs, None, model::AgentMode::default(), env, gpu);
        self.sim.kick();
        r.map_err(|e| anyhow::anyhow!("registering agent {name}: {e:?}"))
    }

    /// Stops an agent like REST `PUT …/agents/{id}/stop`: without `force` it finishes its
    /// running job first; with `force` that job's build is canceled. An agent that is no
    /// longer connected is left as it is.
    pub fn stop_agent(&self, id: Uuid, force: bool) -> anyhow::Result<()> {
        let mut inner = self.sim.lock();
        let connected = inner.agents.get(&id).map(|a| a.connection_state == model::ConnectionState::Connected);
        let r = match connected {
            None => Err(anyhow::anyhow!("stopping agent {id}: no such agent")),
            Some(false) => Ok(()),
            Some(true) => inner.stop_agent(id, force).map_err(|e| anyhow::anyhow!("stopping agent {id}: {e:?}")),
        };
        drop(inner);
        self.sim.kick();
        r
    }

    /// Disconnects an agent at once like `DELETE /_sim/agents/{id}` (a running job fails as
    /// with a lost agent).
    pub fn remove_agent(&self, id: Uuid) -> anyhow::Result<()> {
        let r = self.sim.lock().remove_agent(id).map_err(|e| anyhow::anyhow!("removing agent {id}: {e:?}"));
        self.sim.kick();
        r
    }

    /// The agent's connection state (`connected`, `stopping`, `stopped`, …), `None` if unknown.
    pub fn agent_state(&self, id: Uuid) -> Option<String> {
        self.sim.lock().agents.get(&id).map(|a| a.connection_state.as_str().to_string())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
