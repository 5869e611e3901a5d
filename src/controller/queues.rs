//! The Buildkite side of pools: the queue's live state from the agent metrics API (one
//! request for all queues, no faster than Buildkite's poll-duration hint) and creation of
//! missing cluster queues.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::agentpool::{PoolBuildkite, QueueStatus};
use crate::buildkite::{self, AllMetrics};

/// Shared between the metrics loop and pool reconciles.
#[derive(Debug, Default)]
pub struct Queues {
    metrics: Mutex<Option<(AllMetrics, Timestamp)>>,
    /// (cluster, key) pairs known to exist.
    ensured: Mutex<HashSet<(String, String)>>,
    /// Cluster id resolved for pools that name none.
    default_cluster: Mutex<Option<String>>,
    /// Last creation error per queue key.
    pub errors: Mutex<HashMap<String, String>>,
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Queues {
    /// The queue's live state, if the metrics loop has seen it.
    pub fn status(&self, queue: &str) -> Option<QueueStatus> {
        let guard = self.metrics.lock().ok()?;
        let (all, at) = guard.as_ref()?;
        let m = all.queues.get(queue).copied().unwrap_or_default();
        Some(QueueStatus {
            scheduled_jobs: n(m.scheduled),
            running_jobs: n(m.running),
            waiting_jobs: n(m.waiting),
            idle_agents: n(m.idle),
            busy_agents: n(m.busy),
            connected_agents: n(m.agents_total),
            observed_at: Some(at.to_string()),
        })
    }

    /// Polls agent metrics until the process ends; calls `changed` when numbers moved.
    pub async fn metrics_loop(&self, client: buildkite::Client, default_interval: Duration, changed: impl Fn()) {
        loop {
            let mut wait = default_interval;
            match client.all_metrics().await {
                Ok((all, hint)) => {
                    if let Some(h) = hint {
                        wait = wait.max(h);
                    }
                    let news = self.metrics.lock().map(|mut m| {
                        let news = m.as_ref().is_none_or(|(old, _)| old.queues != all.queues);
                        *m = Some((all, Timestamp::now()));
                        news
                    });
                    if news.unwrap_or(false) {
                        changed();
                    }
                }
                Err(buildkite::Error::NoAgentToken { .. }) => return,
                Err(e) => tracing::warn!(error = %e, "reading agent metrics failed"),
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Makes sure the queue exists in its cluster; returns an error message for status.
    pub async fn ensure(
        &self,
        client: &buildkite::Client,
        queue: &str,
        settings: &PoolBuildkite,
    ) -> Result<bool, String> {
        let cluster = match &settings.cluster_id {
            Some(c) => c.clone(),
            None => {
                let cached = self.default_cluster.lock().ok().and_then(|c| c.clone());
                match cached {
                    Some(c) => c,
                    None => {
                        let clusters =
                            client.list_clusters().await.map_err(|e| format!("listing clusters: {e}"))?.items;
                        let pick = match clusters.as_slice() {
                            [one] => Some(one.id.clone()),
                            many => many.iter().find(|c| c.name.eq_ignore_ascii_case("default")).map(|c| c.id.clone()),
                        };
                        let id = pick.ok_or_else(|| {
                            "the organization has several clusters and none is named Default: set spec.buildkite.clusterId".to_string()
                        })?;
                        if let Ok(mut c) = self.default_cluster.lock() {
                            *c = Some(id.clone());
                        }
                        id
                    }
                }
            }
        };
        let pair = (cluster.clone(), queue.to_string());
        if self.ensured.lock().map(|e| e.contains(&pair)).unwrap_or(false) {
            return Ok(false);
        }
        let existing =
            client.list_queues(&cluster).await.map_err(|e| format!("listing queues of cluster {cluster}: {e}"))?;
        let created = if existing.items.iter().any(|q| q.key == queue) {
            false
        } else {
            let description = settings.description.clone().unwrap_or_else(|| "created by benchkite".to_string());
            match client.create_queue(&cluster, queue, Some(&description)).await {
                Ok(buildkite::QueueCreated::Created(_)) => true,
                Ok(_) => false,
                Err(e) => return Err(format!("creating queue {queue} in cluster {cluster}: {e}")),
            }
        };
        if let Ok(mut e) = self.ensured.lock() {
            e.insert(pair);
        }
        Ok(created)
    }
}
