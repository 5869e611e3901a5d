//! The fleet calls: agents, clusters and queues (REST), and the agent metrics API.

use std::time::Duration;

use http::{Method, StatusCode};
use reqwest::Url;
use serde_json::{Value, json};

use super::super::budget::Priority;
use super::super::error::{Error, Result};
use super::super::types::{Agent, AllMetrics, Cluster, Listing, Queue, QueueCreated, QueueMetrics};
use super::super::wire;
use super::{Auth, Call, Client, Mode};

impl Client {
    // ----- agents, clusters, queues -------------------------------------------------------

    /// Lists the organization's agents (`GET /organizations/{org}/agents`).
    pub async fn list_agents(&self) -> Result<Listing<Agent>> {
        let mut url = self.org_url(&["agents"]);
        url.query_pairs_mut().append_pair("per_page", "100");
        self.list_pages("list_agents", url, Priority::Refresh, self.inner.cfg.max_pages).await
    }

    /// Lists the organization's clusters.
    pub async fn list_clusters(&self) -> Result<Listing<Cluster>> {
        let mut url = self.org_url(&["clusters"]);
        url.query_pairs_mut().append_pair("per_page", "100");
        self.list_pages("list_clusters", url, Priority::Refresh, self.inner.cfg.max_pages).await
    }

    /// Lists the queues of a cluster.
    pub async fn list_queues(&self, cluster_id: &str) -> Result<Listing<Queue>> {
        let mut url = self.org_url(&["clusters", cluster_id, "queues"]);
        url.query_pairs_mut().append_pair("per_page", "100");
        self.list_pages("list_queues", url, Priority::Refresh, self.inner.cfg.max_pages).await
    }

    /// Creates a cluster queue; an existing key (422 "has already been taken") is
    /// [`QueueCreated::AlreadyExists`], so this is safe to repeat.
    pub async fn create_queue(&self, cluster_id: &str, key: &str, description: Option<&str>) -> Result<QueueCreated> {
        const EP: &str = "create_queue";
        let mut body = json!({ "key": key });
        if let Some(d) = description {
            body["description"] = json!(d);
        }
        let body = self.json_body(EP, &body)?;
        let url = self.org_url(&["clusters", cluster_id, "queues"]);
        let ans = self.execute(&Call::write(EP, url, body)).await?;
        if ans.status.is_success() {
            return Ok(QueueCreated::Created(self.decode(EP, &ans.body)?));
        }
        if ans.status == StatusCode::UNPROCESSABLE_ENTITY {
            let msg = wire::answer_message(&ans.body).to_ascii_lowercase();
            if msg.contains("already been taken") || msg.contains("already exists") {
                return Ok(QueueCreated::AlreadyExists);
            }
        }
        Err(self.api_error(EP, &ans))
    }

    /// Pauses dispatch of a queue (`POST …/queues/{id}/pause_dispatch`), with an optional note.
    pub async fn pause_queue_dispatch(&self, cluster_id: &str, queue_id: &str, note: Option<&str>) -> Result<Queue> {
        let body = note.map(|n| json!({ "note": n })).unwrap_or_else(|| json!({}));
        self.queue_dispatch("pause_queue_dispatch", cluster_id, queue_id, "pause_dispatch", body).await
    }

    /// Resumes dispatch of a queue (`POST …/queues/{id}/resume_dispatch`).
    pub async fn resume_queue_dispatch(&self, cluster_id: &str, queue_id: &str) -> Result<Queue> {
        self.queue_dispatch("resume_queue_dispatch", cluster_id, queue_id, "resume_dispatch", json!({})).await
    }

    async fn queue_dispatch(
        &self,
        endpoint: &'static str,
        cluster_id: &str,
        queue_id: &str,
        action: &str,
        body: Value,
    ) -> Result<Queue> {
        let body = self.json_body(endpoint, &body)?;
        let url = self.org_url(&["clusters", cluster_id, "queues", queue_id, action]);
        let ans = self.execute(&Call::write(endpoint, url, body)).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(endpoint, &ans));
        }
        self.decode(endpoint, &ans.body)
    }

    // ----- agent metrics ------------------------------------------------------------------

    async fn metrics(&self, endpoint: &'static str, url: Url) -> Result<(Value, Option<Duration>)> {
        if self.inner.agent_auth.is_none() {
            return Err(Error::NoAgentToken { endpoint });
        }
        let call = Call {
            endpoint,
            method: Method::GET,
            url,
            body: None,
            priority: Priority::Refresh,
            mode: Mode::Idempotent,
            auth: Auth::Agent,
        };
        let ans = self.execute(&call).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(endpoint, &ans));
        }
        let v: Value = self.decode(endpoint, &ans.body)?;
        Ok((v, wire::poll_duration(&ans.headers)))
    }

    fn agent_url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.agent_base.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty();
            p.extend(segments);
        }
        url
    }

    /// Metrics of one queue (`GET /v3/metrics/queue?name=`) and the server's poll hint
    /// (`Buildkite-Agent-Metrics-Poll-Duration`): do not ask again sooner than that. Uses
    /// the agent token; does not spend the REST budget.
    pub async fn queue_metrics(&self, queue: &str) -> Result<(QueueMetrics, Option<Duration>)> {
        let mut url = self.agent_url(&["metrics", "queue"]);
        url.query_pairs_mut().append_pair("name", queue);
        let (v, hint) = self.metrics("agent_queue_metrics", url).await?;
        Ok((QueueMetrics::from_json(&v), hint))
    }

    /// Metrics of all queues of the agent token's cluster (`GET /v3/metrics`) and the poll hint.
    pub async fn all_metrics(&self) -> Result<(AllMetrics, Option<Duration>)> {
        let url = self.agent_url(&["metrics"]);
        let (v, hint) = self.metrics("agent_metrics", url).await?;
        Ok((AllMetrics::from_json(&v), hint))
    }
}
