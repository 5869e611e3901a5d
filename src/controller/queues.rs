//! The Buildkite side of pools: the queue's live state from the agent metrics API (one
//! request for all queues, no faster than Buildkite's poll-duration hint), creation of
//! missing cluster queues, which cluster a queue (and its pipeline) lives in, and the
//! pipelines and token scopes pools report on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::pipelines::PipelineManager;
use crate::api::agentpool::{PoolBuildkite, QueueStatus};
use crate::buildkite::scopes::missing_scopes_message;
use crate::buildkite::{self, AllMetrics, Cluster, ScopeReport};

/// The name of the cluster Buildkite creates for an organization.
pub const DEFAULT_CLUSTER_NAME: &str = "Default cluster";

/// How a cluster was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterChoice {
    /// Named by the pool (`spec.buildkite.clusterId`) or the process (`--buildkite-cluster`).
    Explicit,
    /// The organization's setting for new pipelines (`default_cluster_id` of
    /// `GET /organizations/{org}/pipeline-settings`).
    OrganizationDefault,
    /// The organization has one cluster.
    OnlyCluster,
    /// The one named "Default cluster".
    NamedDefault,
}

/// The cluster a queue and its pipeline live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCluster {
    /// UUID.
    pub id: String,
    /// Name, when the cluster was listed.
    pub name: Option<String>,
    pub choice: ClusterChoice,
}

/// Why no cluster could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ClusterError {
    pub message: String,
    /// Asking again later may help (Buildkite or the network failed).
    pub transient: bool,
}

impl ClusterError {
    fn user(message: String) -> Self {
        ClusterError { message, transient: false }
    }
}

/// Whether `s` has the shape of a UUID (`8-4-4-4-12` hex digits), as cluster ids do.
pub fn looks_like_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Picks the cluster, in Buildkite's order: `explicit` (a UUID or a name) wins; else the
/// organization's default cluster for new pipelines (`org_default`); else the only
/// cluster; else the one named "Default cluster" (the one Buildkite creates for an
/// organization); else an error that lists the clusters and says how to choose.
pub fn choose_cluster(
    explicit: Option<&str>,
    org_default: Option<&str>,
    clusters: &[Cluster],
) -> Result<ResolvedCluster, ClusterError> {
    let pick = |c: &Cluster, choice| ResolvedCluster { id: c.id.clone(), name: Some(c.name.clone()), choice };
    let names = || {
        if clusters.is_empty() {
            "none".to_string()
        } else {
            clusters.iter().map(|c| format!("{:?} ({})", c.name, c.id)).collect::<Vec<_>>().join(", ")
        }
    };
    if let Some(want) = explicit.map(str::trim).filter(|w| !w.is_empty()) {
        if let Some(c) = clusters
            .iter()
            .find(|c| c.id == want)
            .or_else(|| clusters.iter().find(|c| c.name.trim().eq_ignore_ascii_case(want)))
        {
            return Ok(pick(c, ClusterChoice::Explicit));
        }
        if looks_like_uuid(want) {
            return Ok(ResolvedCluster { id: want.to_string(), name: None, choice: ClusterChoice::Explicit });
        }
        return Err(ClusterError::user(format!(
            "no Buildkite cluster is named {want:?} (--buildkite-cluster or spec.buildkite.clusterId); the organization's clusters: {}",
            names()
        )));
    }
    if let Some(id) = org_default.map(str::trim).filter(|d| !d.is_empty()) {
        return Ok(match clusters.iter().find(|c| c.id == id) {
            Some(c) => pick(c, ClusterChoice::OrganizationDefault),
            None => ResolvedCluster { id: id.to_string(), name: None, choice: ClusterChoice::OrganizationDefault },
        });
    }
    if let [only] = clusters {
        return Ok(pick(only, ClusterChoice::OnlyCluster));
    }
    if let Some(c) = clusters.iter().find(|c| c.name.trim().eq_ignore_ascii_case(DEFAULT_CLUSTER_NAME)) {
        return Ok(pick(c, ClusterChoice::NamedDefault));
    }
    Err(ClusterError::user(if clusters.is_empty() {
        "the Buildkite organization has no cluster: create one (Agents → Clusters) or set --buildkite-cluster"
            .to_string()
    } else {
        format!(
            "the Buildkite organization has {} clusters and none is its default for new pipelines (as far as this token can see) or named {DEFAULT_CLUSTER_NAME:?}: set --buildkite-cluster (or the pool's spec.buildkite.clusterId) to one of {}",
            clusters.len(),
            names()
        )
    }))
}

/// Chooses the cluster of queues and managed pipelines ([`choose_cluster`]) and remembers
/// the choice: an hour when found, 30 s when not (so a failing lookup is not hammered).
/// A UUID given explicitly costs no request. Cheap to clone; clones share the memory.
#[derive(Debug, Clone)]
pub struct ClusterResolver {
    inner: Arc<ResolverInner>,
}

/// A lookup's outcome and when it was made.
type Remembered = (Result<ResolvedCluster, ClusterError>, Instant);

#[derive(Debug)]
struct ResolverInner {
    explicit: Option<String>,
    memo: tokio::sync::Mutex<HashMap<Option<String>, Remembered>>,
}

impl Default for ClusterResolver {
    fn default() -> Self {
        ClusterResolver::new(None)
    }
}

impl ClusterResolver {
    /// How long a found cluster is remembered.
    pub const FOUND_TTL: Duration = Duration::from_secs(3600);
    /// How long a failed lookup is remembered.
    pub const ERROR_TTL: Duration = Duration::from_secs(30);

    /// `explicit`: the process's cluster (`--buildkite-cluster`), a UUID or a name.
    pub fn new(explicit: Option<String>) -> Self {
        let explicit = explicit.map(|e| e.trim().to_string()).filter(|e| !e.is_empty());
        ClusterResolver { inner: Arc::new(ResolverInner { explicit, memo: tokio::sync::Mutex::new(HashMap::new()) }) }
    }

    /// The process's cluster, if one was given.
    pub fn explicit(&self) -> Option<&str> {
        self.inner.explicit.as_deref()
    }

    /// The cluster for something that names `requested` (a pool's `clusterId`), else the
    /// process's, else the organization's default.
    pub async fn resolve(
        &self,
        client: &buildkite::Client,
        requested: Option<&str>,
    ) -> Result<ResolvedCluster, ClusterError> {
        let want = requested.map(str::trim).filter(|r| !r.is_empty()).or(self.explicit()).map(str::to_string);
        if let Some(id) = want.as_deref().filter(|w| looks_like_uuid(w)) {
            return Ok(ResolvedCluster { id: id.to_string(), name: None, choice: ClusterChoice::Explicit });
        }
        // One lookup at a time: the first caller asks Buildkite, the others wait for it.
        let mut memo = self.inner.memo.lock().await;
        if let Some((outcome, at)) = memo.get(&want) {
            let ttl = if outcome.is_ok() { Self::FOUND_TTL } else { Self::ERROR_TTL };
            if at.elapsed() < ttl {
                return outcome.clone();
            }
        }
        let outcome = Self::look_up(client, want.as_deref()).await;
        match &outcome {
            Ok(c) => tracing::debug!(cluster = %c.id, name = ?c.name, choice = ?c.choice, "Buildkite cluster chosen"),
            Err(e) => tracing::warn!(error = %e, "choosing the Buildkite cluster failed"),
        }
        memo.insert(want, (outcome.clone(), Instant::now()));
        outcome
    }

    async fn look_up(client: &buildkite::Client, want: Option<&str>) -> Result<ResolvedCluster, ClusterError> {
        let listing = client.list_clusters().await.map_err(|e| {
            let scope = if matches!(e.status(), Some(401 | 403)) {
                " (the token needs scope read_clusters, or set --buildkite-cluster to the cluster's UUID)"
            } else {
                ""
            };
            ClusterError {
                message: format!("listing the Buildkite clusters failed{scope}: {e}"),
                transient: e.is_transient(),
            }
        })?;
        let clusters = listing.items;
        if want.is_some() || clusters.len() == 1 {
            return choose_cluster(want, None, &clusters);
        }
        // Which cluster new pipelines use is an organization setting; only administrators'
        // tokens with read_organization_settings may read it.
        let org_default = match client.organization_pipeline_settings().await {
            Ok(s) => s.default_cluster_id,
            Err(e) if e.is_transient() => {
                return Err(ClusterError {
                    message: format!("reading the organization's default cluster failed: {e}"),
                    transient: true,
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "the organization's pipeline settings are not readable with this token");
                None
            }
        };
        choose_cluster(None, org_default.as_deref(), &clusters)
    }
}

/// Shared between the metrics loop and pool reconciles.
#[derive(Debug, Default)]
pub struct Queues {
    metrics: Mutex<Option<(AllMetrics, Timestamp)>>,
    /// (cluster, key) pairs known to exist.
    ensured: Mutex<HashSet<(String, String)>>,
    /// Which cluster a queue lives in (shared with the pipeline manager).
    clusters: ClusterResolver,
    /// The pipelines benchkite manages (or checks) for queues; `None`: not managed.
    pipelines: Option<PipelineManager>,
    /// The API token's scopes.
    scopes: ScopeReport,
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Queues {
    /// The Buildkite side of pools. Pass the same `clusters` and `scopes` the
    /// `pipelines` manager was built with (clones share their state).
    pub fn new(clusters: ClusterResolver, pipelines: Option<PipelineManager>, scopes: ScopeReport) -> Self {
        Queues { clusters, pipelines, scopes, ..Default::default() }
    }

    /// The Buildkite side of pools with `pipelines` managing (or checking) their pipelines,
    /// sharing its cluster resolver and scope report.
    pub fn with_pipelines(pipelines: PipelineManager) -> Self {
        Queues::new(pipelines.clusters().clone(), Some(pipelines.clone()), pipelines.scopes().clone())
    }

    pub fn clusters(&self) -> &ClusterResolver {
        &self.clusters
    }

    pub fn pipelines(&self) -> Option<&PipelineManager> {
        self.pipelines.as_ref()
    }

    pub fn scopes(&self) -> &ScopeReport {
        &self.scopes
    }

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

    /// Makes sure the queue exists in its cluster (the pool's `clusterId`, else the
    /// process's cluster, see [`ClusterResolver`]); returns an error message for status.
    pub async fn ensure(
        &self,
        client: &buildkite::Client,
        queue: &str,
        settings: &PoolBuildkite,
    ) -> Result<bool, String> {
        let missing = self.scopes.missing(buildkite::Feature::QueueCreation.scopes());
        if !missing.is_empty() {
            return Err(missing_scopes_message(
                &missing,
                &format!("creating queue {queue} (spec.buildkite.createQueue)"),
            ));
        }
        let cluster = self.clusters.resolve(client, settings.cluster_id.as_deref()).await.map_err(|e| e.message)?.id;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: &str, name: &str) -> Cluster {
        Cluster { id: id.into(), name: name.into(), ..Default::default() }
    }

    const U1: &str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn explicit_wins_by_id_or_name() {
        let all = [cluster("c1", "Default cluster"), cluster("c2", "GPUs")];
        let got = choose_cluster(Some("c2"), Some("c1"), &all).expect("by id");
        assert_eq!((got.id.as_str(), got.choice), ("c2", ClusterChoice::Explicit));
        let got = choose_cluster(Some(" gpus "), Some("c1"), &all).expect("by name, any case");
        assert_eq!((got.id.as_str(), got.name.as_deref()), ("c2", Some("GPUs")));
        // A UUID nobody listed (the listing may be unreadable or truncated) is taken as is.
        let got = choose_cluster(Some(U1), None, &[]).expect("uuid");
        assert_eq!((got.id.as_str(), got.name), (U1, None));
        let err = choose_cluster(Some("CPUs"), None, &all).expect_err("unknown name");
        assert!(err.message.contains("\"CPUs\"") && err.message.contains("\"GPUs\" (c2)"), "{}", err.message);
        assert!(!err.transient);
    }

    #[test]
    fn the_organization_default_comes_next() {
        let all = [cluster("c1", "Default cluster"), cluster("c2", "GPUs")];
        let got = choose_cluster(None, Some("c2"), &all).expect("org default");
        assert_eq!((got.id.as_str(), got.choice), ("c2", ClusterChoice::OrganizationDefault));
        // Even one this listing does not show.
        assert_eq!(choose_cluster(None, Some("c9"), &all).expect("unlisted").id, "c9");
        assert_eq!(choose_cluster(None, Some(" "), &all).expect("blank is none").id, "c1");
    }

    #[test]
    fn then_the_only_cluster_then_default_cluster_by_name() {
        let got = choose_cluster(None, None, &[cluster("c7", "Anything")]).expect("only");
        assert_eq!((got.id.as_str(), got.choice), ("c7", ClusterChoice::OnlyCluster));
        let all = [cluster("c1", "GPUs"), cluster("c2", "default cluster"), cluster("c3", "default")];
        let got = choose_cluster(None, None, &all).expect("named");
        assert_eq!((got.id.as_str(), got.choice), ("c2", ClusterChoice::NamedDefault));
        // "default" alone is not Buildkite's name for it.
        let err =
            choose_cluster(None, None, &[cluster("c1", "GPUs"), cluster("c3", "default")]).expect_err("ambiguous");
        assert!(err.message.contains("--buildkite-cluster"), "{}", err.message);
        assert!(err.message.contains("\"GPUs\" (c1)") && err.message.contains("\"default\" (c3)"), "{}", err.message);
        let err = choose_cluster(None, None, &[]).expect_err("none");
        assert!(err.message.contains("no cluster"), "{}", err.message);
    }

    #[test]
    fn uuid_shape() {
        assert!(looks_like_uuid(U1));
        assert!(looks_like_uuid(&U1.to_uppercase()));
        for bad in [
            "",
            "c1",
            "Default cluster",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
            "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g",
        ] {
            assert!(!looks_like_uuid(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_explicit_uuid_costs_no_request() {
        // The client points at a port nothing listens on: any request would fail.
        let mut cfg = buildkite::Config::new("org", buildkite::Secret::new("t"));
        cfg.api_url = "http://127.0.0.1:9/v2".into();
        cfg.max_retries = 0;
        let client = buildkite::Client::new(cfg).expect("client");
        let r = ClusterResolver::new(Some(U1.into()));
        assert_eq!(r.resolve(&client, None).await.expect("process cluster").id, U1);
        let pool = "7f000000-0000-4000-8000-000000000001";
        assert_eq!(r.resolve(&client, Some(pool)).await.expect("the pool's wins").id, pool);
        assert!(r.resolve(&client, Some("by-name")).await.is_err(), "a name needs the listing");
    }
}
