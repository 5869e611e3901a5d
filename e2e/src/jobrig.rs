//! The fleet + KernelJob rig of the platform suites (fair queueing, fail fast, autoscaling,
//! certification, the result cache): a simulator for one queue, the real `benchkite`
//! binary running `--controllers fleet,kerneljob` in the test's namespace against it, and
//! the agent token Secret the test pools name.

use anyhow::{Context, Result};
use buildkite_sim::config::{SimConfig, WebhookAuth, WebhookConfig};
use buildkite_sim::{SimHandle, Simulator};
use serde_json::{Value, json};

use crate::TestNamespace;
use crate::operator::{Operator, wait_ready};

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    crate::free_port()
}

/// How to start the controller.
#[derive(Clone, Debug, Default)]
pub struct RigOptions {
    /// Buildkite delivers webhooks, signed with this secret, to the controller: it learns
    /// that a build finished at once instead of at its next poll.
    pub webhook_secret: Option<&'static str>,
    /// More controller flags (e.g. `--poll-interval-seconds`, `2`).
    pub args: Vec<String>,
    /// A metrics listener (`metrics_addr` in the rig).
    pub metrics: bool,
    /// The agent metrics token: pools show their queue's live state (`status.queue`).
    pub agent_metrics: bool,
}

/// The running rig. Dropping it stops the controller and the simulator.
pub struct JobRig {
    pub sim: SimHandle,
    pub op: Operator,
    /// Where the controller serves `/readyz` and webhooks.
    pub http: String,
    pub metrics_addr: Option<String>,
}

impl JobRig {
    /// Starts the simulator with `cfg` and the controller for namespace `ns`, waits until it
    /// is ready and creates the agent token Secret. `name` names the controller's log.
    pub async fn start(ns: &TestNamespace, name: &str, mut cfg: SimConfig, opts: RigOptions) -> Result<JobRig> {
        let id = ns.name().to_string();
        let http = format!("127.0.0.1:{}", free_port()?);
        if let Some(secret) = opts.webhook_secret {
            cfg.webhooks.push(WebhookConfig {
                url: format!("http://{http}/webhooks/buildkite"),
                token: secret.into(),
                auth: WebhookAuth::Signature,
                ..Default::default()
            });
        }
        let sim = Simulator::start(cfg).await?;
        let mut args = crate::sim::kerneljob_args(&sim, &id);
        args[1] = "fleet,kerneljob".into();
        args.extend(["--http-addr".into(), http.clone()]);
        let metrics_addr = if opts.metrics { Some(format!("127.0.0.1:{}", free_port()?)) } else { None };
        if let Some(m) = &metrics_addr {
            args.extend(["--metrics-addr".into(), m.clone()]);
        }
        args.extend(opts.args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let token = sim.api_token();
        let agent_token = sim.agent_token();
        let mut env = vec![("BUILDKITE_API_TOKEN", token.as_str())];
        if opts.agent_metrics {
            env.push(("BUILDKITE_AGENT_METRICS_TOKEN", agent_token.as_str()));
        }
        if let Some(secret) = opts.webhook_secret {
            env.push(("BUILDKITE_WEBHOOK_SECRET", secret));
        }
        let op = Operator::start_with_env(&format!("{name}-{id}"), &args, &env)?;
        wait_ready(&http).await.with_context(|| op.log_text())?;
        crate::nodes::create_agent_token(ns).await?;
        Ok(JobRig { sim, op, http, metrics_addr })
    }
}

/// An AgentPool `name` for `queue` over the test's nodes (label `benchkite.dev/e2e=<test>`),
/// its agents naming the rig's token Secret; `spec` adds to (or replaces) its spec fields,
/// `agent` to its agent fields.
pub fn pool(name: &str, queue: &str, test: &str, spec: Value, agent: Value) -> Result<benchkite::api::AgentPool> {
    let mut a =
        json!({"image": "example.invalid/agent:e2e", "tokenSecretRef": {"name": "agent-token", "key": "token"}});
    if let (Some(o), Some(e)) = (a.as_object_mut(), agent.as_object()) {
        o.extend(e.clone());
    }
    let mut s =
        json!({"queue": queue, "gpuNodeSelector": {"matchLabels": {crate::nodes::TEST_LABEL: test}}, "agent": a});
    if let (Some(o), Some(e)) = (s.as_object_mut(), spec.as_object()) {
        o.extend(e.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name}, "spec": s,
    }))?)
}
