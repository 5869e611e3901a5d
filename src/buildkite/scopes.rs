//! The API token's scopes: which ones each feature needs, and a shared report of which ones
//! the token lacks, so that a missing scope is named (condition, Event, log) instead of
//! surfacing as generic 403s.
//!
//! `GET /v2/access-token` returns the token's `scopes` and needs no scope itself (docs
//! "Access token API"). A check that fails (network, 401, an API that does not offer it)
//! leaves the report `Unknown`, and an unknown report blocks nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;

use super::budget::Priority;
use super::client::Client;
use super::error::Result;
use super::types::{lenient_opt_string, lenient_string, lenient_vec};

/// The current token (`GET /v2/access-token`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AccessToken {
    #[serde(deserialize_with = "lenient_string")]
    pub uuid: String,
    /// Scope names such as `read_builds`.
    #[serde(deserialize_with = "lenient_vec")]
    pub scopes: Vec<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub description: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub expires_at: Option<String>,
}

impl Client {
    /// The token this client sends and its scopes (`GET /v2/access-token`; needs no scope).
    pub async fn access_token(&self) -> Result<AccessToken> {
        const EP: &str = "access_token";
        // `/v2/access-token` sits next to `/v2/organizations`, not under it.
        let mut url = self.org_url(&[]);
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop().pop().push("access-token");
        }
        let ans = self.get(EP, url, Priority::Refresh).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode(EP, &ans.body)
    }
}

/// Something benchkite does with the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// KernelJobs: create, read and cancel builds, read their artifacts, on the pipelines
    /// benchkite manages (or a user's).
    KernelJobs,
    /// Create and update the managed pipelines (AgentPools).
    ManagedPipelines,
    /// Check a pipeline a pool names (`spec.buildkite.pipeline`).
    PipelineChecks,
    /// Find the cluster of pools and pipelines that name none by UUID.
    ClusterLookup,
    /// Create missing cluster queues (`spec.buildkite.createQueue`).
    QueueCreation,
}

impl Feature {
    /// The scopes the feature needs (Buildkite docs, "Required scope" of each endpoint
    /// used). Pool status reads the agent metrics API with the agent token, which has no
    /// REST scope.
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            Feature::KernelJobs => {
                &["read_builds", "write_builds", "read_artifacts", "read_pipelines", "write_pipelines"]
            }
            Feature::ManagedPipelines => &["read_pipelines", "write_pipelines"],
            Feature::PipelineChecks => &["read_pipelines"],
            Feature::ClusterLookup => &["read_clusters"],
            Feature::QueueCreation => &["read_clusters", "write_clusters"],
        }
    }

    /// What the feature is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::KernelJobs => "KernelJobs",
            Feature::ManagedPipelines => "managed pipelines",
            Feature::PipelineChecks => "pipeline checks",
            Feature::ClusterLookup => "cluster lookup",
            Feature::QueueCreation => "queue creation",
        }
    }
}

/// Every scope `features` need, once each, in the order first needed.
pub fn required_scopes(features: &[Feature]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in features.iter().flat_map(|f| f.scopes()) {
        if !out.contains(s) {
            out.push(s);
        }
    }
    out
}

/// The scopes of `need` that `have` lacks, in `need`'s order, once each.
pub fn missing_scopes<S: AsRef<str>>(have: &[S], need: &[&'static str]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for n in need {
        if !have.iter().any(|h| h.as_ref() == *n) && !out.contains(n) {
            out.push(n);
        }
    }
    out
}

/// One line that names the missing scopes and what they are for.
pub fn missing_scopes_message(missing: &[&str], what: &str) -> String {
    let (noun, list) = match missing {
        [one] => ("scope", (*one).to_string()),
        many => ("scopes", many.join(", ")),
    };
    format!(
        "the Buildkite API token lacks {noun} {list} (needed for {what}): add {} to the token (Personal Settings → API Access Tokens) or use one that has {}",
        if missing.len() == 1 { "it" } else { "them" },
        if missing.len() == 1 { "it" } else { "them" },
    )
}

/// What is known about the token's scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeState {
    /// Not checked yet, or the check failed (the reason): nothing is assumed missing.
    Unknown { reason: String },
    /// The token's scopes.
    Known { scopes: BTreeSet<String> },
}

/// The token's scopes as last checked, shared by every controller (cheap to clone). Updated
/// by [`check_scopes`]; read with [`ScopeReport::missing`].
#[derive(Debug, Clone)]
pub struct ScopeReport {
    state: Arc<RwLock<ScopeState>>,
}

impl Default for ScopeReport {
    fn default() -> Self {
        ScopeReport::new()
    }
}

impl ScopeReport {
    /// A report that knows nothing yet.
    pub fn new() -> Self {
        ScopeReport { state: Arc::new(RwLock::new(ScopeState::Unknown { reason: "not checked yet".into() })) }
    }

    /// A report that knows the token has exactly `scopes` (tests, fixed setups).
    pub fn known<S: Into<String>>(scopes: impl IntoIterator<Item = S>) -> Self {
        let r = ScopeReport::new();
        r.set(ScopeState::Known { scopes: scopes.into_iter().map(Into::into).collect() });
        r
    }

    pub fn state(&self) -> ScopeState {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, new: ScopeState) -> bool {
        let mut guard = match self.state.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = *guard != new;
        *guard = new;
        changed
    }

    /// Records the outcome of an access-token call; true when the state changed. A failed
    /// call makes the report `Unknown` (with the error as reason): a scope seen missing
    /// once is not held against the token forever.
    pub fn record(&self, outcome: &Result<AccessToken>) -> bool {
        self.set(match outcome {
            Ok(t) => ScopeState::Known { scopes: t.scopes.iter().cloned().collect() },
            Err(e) => ScopeState::Unknown { reason: e.to_string() },
        })
    }

    /// The scopes of `need` the token is known to lack; empty while unknown.
    pub fn missing(&self, need: &[&'static str]) -> Vec<&'static str> {
        match self.state() {
            ScopeState::Known { scopes } => {
                let have: Vec<String> = scopes.into_iter().collect();
                missing_scopes(&have, need)
            }
            ScopeState::Unknown { .. } => Vec::new(),
        }
    }

    /// The scopes `features` need that the token is known to lack; empty while unknown.
    pub fn missing_for(&self, features: &[Feature]) -> Vec<&'static str> {
        self.missing(&required_scopes(features))
    }
}

/// Checks the token once: records its scopes in `report` and logs, by name, the scopes
/// `features` need that it lacks (a warning on every change; nothing when unchanged).
/// Returns the missing scopes (empty when the check failed: unknown blocks nothing).
pub async fn check_scopes_once(client: &Client, report: &ScopeReport, features: &[Feature]) -> Vec<&'static str> {
    let outcome = client.access_token().await;
    let changed = report.record(&outcome);
    match &outcome {
        Ok(_) => {
            let missing = report.missing_for(features);
            if changed {
                if missing.is_empty() {
                    tracing::info!(scopes = ?required_scopes(features), "the Buildkite API token has every scope needed");
                } else {
                    let what: Vec<&str> = features
                        .iter()
                        .filter(|f| f.scopes().iter().any(|s| missing.contains(s)))
                        .map(|f| f.describe())
                        .collect();
                    tracing::warn!(missing = ?missing, "{}", missing_scopes_message(&missing, &what.join(", ")));
                }
            }
            missing
        }
        Err(e) => {
            if changed {
                tracing::warn!(error = %e, "could not read the Buildkite API token's scopes; missing scopes are not reported");
            }
            Vec::new()
        }
    }
}

/// Checks the token now and then every `every`, until the task is dropped. Spawn it once
/// per process; every controller reads the same `report`.
pub async fn check_scopes(client: Client, report: ScopeReport, features: Vec<Feature>, every: Duration) {
    loop {
        check_scopes_once(&client, &report, &features).await;
        tokio::time::sleep(every.max(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_feature_needs_its_documented_scopes() {
        assert_eq!(
            required_scopes(&[Feature::KernelJobs]),
            ["read_builds", "write_builds", "read_artifacts", "read_pipelines", "write_pipelines"]
        );
        assert_eq!(required_scopes(&[Feature::QueueCreation]), ["read_clusters", "write_clusters"]);
        assert_eq!(required_scopes(&[Feature::PipelineChecks]), ["read_pipelines"]);
        assert_eq!(
            required_scopes(&[Feature::ManagedPipelines, Feature::ClusterLookup, Feature::QueueCreation]),
            ["read_pipelines", "write_pipelines", "read_clusters", "write_clusters"],
            "once each"
        );
        assert!(required_scopes(&[]).is_empty());
    }

    #[test]
    fn missing_is_by_name_in_need_order() {
        let have = ["read_builds", "read_pipelines", "graphql"];
        assert_eq!(
            missing_scopes(&have, &["read_builds", "write_builds", "read_artifacts", "write_builds"]),
            ["write_builds", "read_artifacts"]
        );
        assert!(missing_scopes(&have, &["read_builds"]).is_empty());
        let none: [&str; 0] = [];
        assert_eq!(missing_scopes(&none, &["read_builds"]), ["read_builds"]);
        // Names are exact: a write scope does not stand in for a read scope.
        assert_eq!(missing_scopes(&["write_builds"], &["read_builds"]), ["read_builds"]);
    }

    #[test]
    fn the_message_names_every_missing_scope() {
        let m = missing_scopes_message(&["write_builds"], "KernelJobs");
        assert!(m.contains("scope write_builds") && m.contains("KernelJobs"), "{m}");
        let m = missing_scopes_message(&["write_builds", "read_artifacts"], "KernelJobs");
        assert!(m.contains("scopes write_builds, read_artifacts"), "{m}");
    }

    #[test]
    fn the_report_blocks_nothing_until_known() {
        let r = ScopeReport::new();
        assert!(matches!(r.state(), ScopeState::Unknown { .. }));
        assert!(r.missing_for(&[Feature::KernelJobs]).is_empty());

        let token = AccessToken { scopes: vec!["read_builds".into(), "write_builds".into()], ..Default::default() };
        assert!(r.record(&Ok(token.clone())));
        assert!(!r.record(&Ok(token)), "unchanged");
        let shared = r.clone();
        assert_eq!(shared.missing_for(&[Feature::KernelJobs]), ["read_artifacts", "read_pipelines", "write_pipelines"]);
        assert!(shared.missing(&["read_builds"]).is_empty());

        // A failed check forgets what was known: unknown blocks nothing.
        let failed: Result<AccessToken> =
            Err(crate::buildkite::Error::Api { endpoint: "access_token", status: 500, message: "boom".into() });
        assert!(r.record(&failed));
        assert!(shared.missing_for(&[Feature::KernelJobs]).is_empty());
        match shared.state() {
            ScopeState::Unknown { reason } => assert!(reason.contains("boom"), "{reason}"),
            other => panic!("expected unknown, got {other:?}"),
        }
    }

    #[test]
    fn the_access_token_answer_decodes() {
        let t: AccessToken = serde_json::from_value(serde_json::json!({
            "uuid": "b63254c0", "scopes": ["read_build", 7, null], "description": "Development Token",
            "created_at": "2025-07-16 06:07:42 UTC", "expires_at": "2025-07-23 06:07:42 UTC",
            "user": {"email": "a@b.c", "name": "A"}
        }))
        .expect("decodes");
        assert_eq!(t.scopes, ["read_build"], "elements that are not strings are dropped");
        assert_eq!(t.uuid, "b63254c0");
    }
}
