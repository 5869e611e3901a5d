//! The pipelines benchkite builds on: one managed pipeline per queue, created and kept in
//! sync over REST (scope `write_pipelines`), and the check of a pipeline a pool names
//! instead.
//!
//! `ensure(queue)` is memoized with the hash of the desired pipeline: once a queue's
//! pipeline is known to match, callers get the answer without a request until the desired
//! state changes, [`PipelineConfig::resync`] passes (a human may have edited it) or
//! [`PipelineManager::invalidate`] is called (e.g. a build create answered 404). Concurrent
//! callers for one queue wait for a single ensure; a failure is remembered for
//! [`PipelineConfig::error_ttl`] so a failing create is not hammered.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::queues::ClusterResolver;
use crate::buildkite::pipelines::{
    self, DEFAULT_RETRY_LIMIT, DEFAULT_STEP_TIMEOUT_MINUTES, Expectations, ManagedStep, NewPipeline, PipelinePatch,
    PipelineProblem, problem,
};
use crate::buildkite::scopes::missing_scopes_message;
use crate::buildkite::{self as bk, Feature, ScopeReport};

/// The repository managed pipelines name. Buildkite requires one; no job ever clones it
/// (every managed step skips the checkout).
pub const DEFAULT_PIPELINE_REPOSITORY: &str = "https://github.com/benchkite/benchkite.git";

/// Settings of the managed pipelines (process flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// This installation's id (`--instance`): part of every managed slug.
    pub instance: String,
    /// `repository` of managed pipelines.
    pub repository: String,
    /// `default_branch` of managed pipelines (prefilled in the UI; builds use their own).
    pub default_branch: String,
    /// Step timeout of queues whose pool names none.
    pub step_timeout_minutes: u32,
    /// `limit` of each automatic retry rule.
    pub retry_limit: u32,
    /// Team UUIDs given `manage_build_and_read` on created pipelines (organizations with
    /// Teams: only administrators may create pipelines without a team).
    pub teams: Vec<String>,
    /// A pipeline known to match is read again after this long (someone may have edited
    /// it in the UI). `Duration::MAX`: never.
    pub resync: Duration,
    /// How long a failed ensure is remembered.
    pub error_ttl: Duration,
    /// How long the check of a user's pipeline is remembered.
    pub check_ttl: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            instance: "benchkite".into(),
            repository: DEFAULT_PIPELINE_REPOSITORY.into(),
            default_branch: "main".into(),
            step_timeout_minutes: DEFAULT_STEP_TIMEOUT_MINUTES,
            retry_limit: DEFAULT_RETRY_LIMIT,
            teams: Vec::new(),
            resync: Duration::from_secs(900),
            error_ttl: Duration::from_secs(30),
            check_ttl: Duration::from_secs(60),
        }
    }
}

/// Per-queue settings, from the AgentPool that serves the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct QueueSettings {
    /// The pool's cluster (`spec.buildkite.clusterId`); `None`: the process's default.
    pub cluster: Option<String>,
    /// The pool's step timeout (`spec.buildkite.stepTimeoutMinutes`); `None`: the default.
    pub step_timeout_minutes: Option<u32>,
}

/// The pipeline builds for a queue go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedPipeline {
    pub slug: String,
    pub web_url: Option<String>,
    pub cluster_id: Option<String>,
}

/// A user's pipeline and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineCheck {
    pub slug: String,
    /// `None` when the pipeline does not exist.
    pub web_url: Option<String>,
    pub cluster_id: Option<String>,
    /// Empty: KernelJobs can run on it.
    pub problems: Vec<PipelineProblem>,
}

/// Machine reasons of [`PipelineError`].
pub mod reason {
    /// The token is known to lack a scope (named in the message and `missing_scopes`).
    pub const MISSING_TOKEN_SCOPE: &str = "MissingTokenScope";
    /// The queue's cluster could not be chosen.
    pub const CLUSTER_UNRESOLVED: &str = "ClusterUnresolved";
    /// Buildkite refused or failed to create or update the pipeline.
    pub const CREATE_FAILED: &str = "PipelineCreateFailed";
    /// Reading a user's pipeline failed.
    pub const CHECK_FAILED: &str = "PipelineCheckFailed";
}

/// Why a pipeline is not ready. Cheap to clone (remembered and handed to every waiter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PipelineError {
    /// Machine reason (see [`reason`]).
    pub reason: &'static str,
    /// What failed, with context (never a token).
    pub message: String,
    /// Asking again later may help.
    pub transient: bool,
    /// Scopes the token lacks, when that is the reason.
    pub missing_scopes: Vec<&'static str>,
}

impl PipelineError {
    fn new(reason: &'static str, message: String, transient: bool) -> Self {
        PipelineError { reason, message, transient, missing_scopes: Vec::new() }
    }

    fn scopes(missing: Vec<&'static str>, what: &str) -> Self {
        PipelineError {
            reason: reason::MISSING_TOKEN_SCOPE,
            message: missing_scopes_message(&missing, what),
            transient: false,
            missing_scopes: missing,
        }
    }

    fn api(reason: &'static str, what: String, e: &bk::Error) -> Self {
        let hint = match e.status() {
            Some(401 | 403) => {
                " (check the token's scopes read_pipelines and write_pipelines, and in organizations with Teams the pipeline teams)"
            }
            _ => "",
        };
        PipelineError::new(reason, format!("{what}: {e}{hint}"), e.is_transient())
    }
}

type Outcome = Result<ManagedPipeline, PipelineError>;
/// A single-flight lock with its memo.
type Shared<T> = Arc<tokio::sync::Mutex<T>>;

#[derive(Default)]
struct Slot {
    /// Hash of the desired pipeline the outcome is for, the outcome, when.
    memo: Option<(u64, Outcome, Instant)>,
    /// The queue's epoch the memo was made in: [`PipelineManager::invalidate`] bumps the
    /// epoch without waiting for the lock, so a memo made before the bump (or by an ensure
    /// under way during it) is not used.
    memo_epoch: u64,
}

#[derive(Default)]
struct CheckSlot {
    memo: Option<(Result<PipelineCheck, PipelineError>, Instant)>,
}

struct Inner {
    client: bk::Client,
    config: PipelineConfig,
    clusters: ClusterResolver,
    scopes: ScopeReport,
    /// Per queue: the single-flight lock and the memo.
    slots: Mutex<HashMap<String, Shared<Slot>>>,
    /// Per queue: bumped by invalidate.
    epochs: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Per queue: what its pool asks for.
    settings: Mutex<HashMap<String, QueueSettings>>,
    /// Per (slug, queue): checks of users' pipelines.
    checks: Mutex<HashMap<(String, String), Shared<CheckSlot>>>,
}

/// Creates, updates and checks the pipelines KernelJobs build on. Cheap to clone (one
/// shared state); use one per process, in the KernelJob and AgentPool controllers alike.
#[derive(Clone)]
pub struct PipelineManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PipelineManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineManager").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PipelineManager {
    pub fn new(client: bk::Client, config: PipelineConfig, clusters: ClusterResolver, scopes: ScopeReport) -> Self {
        PipelineManager {
            inner: Arc::new(Inner {
                client,
                config,
                clusters,
                scopes,
                slots: Mutex::new(HashMap::new()),
                epochs: Mutex::new(HashMap::new()),
                settings: Mutex::new(HashMap::new()),
                checks: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.inner.config
    }

    /// The cluster resolver it uses (share it with queue creation: [`super::queues::Queues::with_pipelines`]).
    pub fn clusters(&self) -> &ClusterResolver {
        &self.inner.clusters
    }

    /// The scope report it reads.
    pub fn scopes(&self) -> &ScopeReport {
        &self.inner.scopes
    }

    /// The slug of the managed pipeline for `queue` (no request).
    pub fn slug(&self, queue: &str) -> String {
        pipelines::managed_slug(&self.inner.config.instance, queue)
    }

    /// Records what the pool serving `queue` asks for; later [`Self::ensure`] calls (from any
    /// controller) use it.
    pub fn set_queue_settings(&self, queue: &str, settings: QueueSettings) {
        lock(&self.inner.settings).insert(queue.to_string(), settings);
    }

    fn queue_settings(&self, queue: &str) -> QueueSettings {
        lock(&self.inner.settings).get(queue).cloned().unwrap_or_default()
    }

    /// Forgets what is known about `queue`'s pipeline: the next ensure reads it again.
    pub fn invalidate(&self, queue: &str) {
        if let Some(epoch) = lock(&self.inner.epochs).get(queue) {
            epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The desired managed pipeline for `queue`.
    pub fn desired(&self, queue: &str, settings: &QueueSettings, cluster_id: Option<String>) -> NewPipeline {
        let cfg = &self.inner.config;
        let slug = self.slug(queue);
        let step = ManagedStep {
            queue: queue.to_string(),
            timeout_in_minutes: settings.step_timeout_minutes.unwrap_or(cfg.step_timeout_minutes),
            retry_limit: cfg.retry_limit,
        };
        NewPipeline {
            name: slug.clone(),
            slug,
            repository: cfg.repository.clone(),
            configuration: pipelines::render_configuration(&step),
            cluster_id,
            default_branch: Some(cfg.default_branch.clone()).filter(|b| !b.is_empty()),
            description: Some(format!(
                "Managed by benchkite (instance {:?}): the builds of KernelJobs on queue {queue:?}. Changes are overwritten.",
                cfg.instance
            )),
            skip_queued_branch_builds: false,
            cancel_running_branch_builds: false,
            teams: cfg
                .teams
                .iter()
                .map(|t| (t.clone(), "manage_build_and_read".to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Makes sure the managed pipeline for `queue` exists as it should (GET; missing →
    /// create; different → update), with the settings the queue's pool recorded.
    pub async fn ensure(&self, queue: &str) -> Result<ManagedPipeline, PipelineError> {
        let settings = self.queue_settings(queue);
        self.ensure_in(queue, &settings).await
    }

    /// Records `settings` for `queue` (see [`Self::set_queue_settings`]) and ensures its
    /// pipeline. For the AgentPool that serves the queue.
    pub async fn ensure_with(&self, queue: &str, settings: QueueSettings) -> Result<ManagedPipeline, PipelineError> {
        self.set_queue_settings(queue, settings.clone());
        self.ensure_in(queue, &settings).await
    }

    async fn ensure_in(&self, queue: &str, settings: &QueueSettings) -> Result<ManagedPipeline, PipelineError> {
        let missing = self.inner.scopes.missing(Feature::ManagedPipelines.scopes());
        if !missing.is_empty() {
            return Err(PipelineError::scopes(missing, &format!("the pipeline of queue {queue}")));
        }
        let inner = &self.inner;
        let cluster = inner.clusters.resolve(&inner.client, settings.cluster.as_deref()).await.map_err(|e| {
            PipelineError::new(reason::CLUSTER_UNRESOLVED, format!("the pipeline of queue {queue}: {e}"), e.transient)
        })?;
        let desired = self.desired(queue, settings, Some(cluster.id));
        let hash = {
            let mut h = DefaultHasher::new();
            desired.hash(&mut h);
            h.finish()
        };
        let slot = lock(&inner.slots).entry(queue.to_string()).or_default().clone();
        let mut slot = slot.lock().await;
        let epoch = lock(&inner.epochs).entry(queue.to_string()).or_default().load(Ordering::SeqCst);
        if let Some((h, outcome, at)) = &slot.memo {
            let ttl = if outcome.is_ok() { inner.config.resync } else { inner.config.error_ttl };
            if *h == hash && slot.memo_epoch == epoch && at.elapsed() < ttl {
                return outcome.clone();
            }
        }
        let outcome = self.converge(&desired).await;
        if let Err(e) = &outcome {
            tracing::warn!(queue, slug = %desired.slug, error = %e, "the managed pipeline is not ready");
        }
        slot.memo = Some((hash, outcome.clone(), Instant::now()));
        slot.memo_epoch = epoch;
        outcome
    }

    /// One GET, then a create, an unarchive and/or an update as needed.
    async fn converge(&self, desired: &NewPipeline) -> Outcome {
        let client = &self.inner.client;
        let slug = desired.slug.as_str();
        let ctx = |what: &str| format!("{what} pipeline {slug}");
        let current = client
            .get_pipeline(slug)
            .await
            .map_err(|e| PipelineError::api(reason::CREATE_FAILED, ctx("reading"), &e))?;
        let pipeline = match current {
            None => {
                let p = client
                    .create_pipeline(desired)
                    .await
                    .map_err(|e| PipelineError::api(reason::CREATE_FAILED, ctx("creating"), &e))?;
                tracing::info!(slug, cluster = ?desired.cluster_id, "created the managed Buildkite pipeline");
                p
            }
            Some(mut p) => {
                if p.archived_at.is_some() {
                    p = client
                        .unarchive_pipeline(slug)
                        .await
                        .map_err(|e| PipelineError::api(reason::CREATE_FAILED, ctx("unarchiving"), &e))?;
                    tracing::info!(slug, "unarchived the managed Buildkite pipeline");
                }
                let patch = PipelinePatch::diff(desired, &p);
                if patch.is_empty() {
                    p
                } else {
                    let fields = patch.fields();
                    let p = client
                        .update_pipeline(slug, &patch)
                        .await
                        .map_err(|e| PipelineError::api(reason::CREATE_FAILED, ctx("updating"), &e))?;
                    tracing::info!(slug, changed = ?fields, "updated the managed Buildkite pipeline");
                    p
                }
            }
        };
        Ok(ManagedPipeline {
            slug: if pipeline.slug.is_empty() { slug.to_string() } else { pipeline.slug },
            web_url: pipeline.web_url,
            cluster_id: pipeline.cluster_id.or_else(|| desired.cluster_id.clone()),
        })
    }

    /// Checks a pipeline a pool names instead of the managed one: every setting that breaks
    /// KernelJobs on `queue`, by name ([`pipelines::check_pipeline`]). A pipeline that does
    /// not exist is a problem ([`problem::NOT_FOUND`]), not an error; errors are failures to
    /// ask (remembered like answers, for [`PipelineConfig::check_ttl`]).
    pub async fn check_user_pipeline(&self, slug: &str, queue: &str) -> Result<PipelineCheck, PipelineError> {
        let missing = self.inner.scopes.missing(Feature::PipelineChecks.scopes());
        if !missing.is_empty() {
            return Err(PipelineError::scopes(missing, &format!("checking pipeline {slug}")));
        }
        let key = (slug.to_string(), queue.to_string());
        let slot = lock(&self.inner.checks).entry(key).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some((outcome, at)) = &slot.memo
            && at.elapsed() < self.inner.config.check_ttl
        {
            return outcome.clone();
        }
        let outcome = self.check_now(slug, queue).await;
        slot.memo = Some((outcome.clone(), Instant::now()));
        outcome
    }

    async fn check_now(&self, slug: &str, queue: &str) -> Result<PipelineCheck, PipelineError> {
        let inner = &self.inner;
        let settings = self.queue_settings(queue);
        // The cluster is checked only when it can be told; a pool with createQueue off may
        // not give the token read_clusters.
        let cluster = match inner.clusters.resolve(&inner.client, settings.cluster.as_deref()).await {
            Ok(c) => Some(c.id),
            Err(e) => {
                tracing::debug!(slug, queue, error = %e, "cluster unknown; the pipeline's cluster is not checked");
                None
            }
        };
        let pipeline = inner
            .client
            .get_pipeline(slug)
            .await
            .map_err(|e| PipelineError::api(reason::CHECK_FAILED, format!("reading pipeline {slug}"), &e))?;
        let Some(p) = pipeline else {
            return Ok(PipelineCheck {
                slug: slug.to_string(),
                web_url: None,
                cluster_id: None,
                problems: vec![PipelineProblem {
                    reason: problem::NOT_FOUND,
                    message: format!(
                        "no Buildkite pipeline has slug {slug} (spec.buildkite.pipeline): create it, or remove the field to let benchkite manage one"
                    ),
                }],
            });
        };
        let branch = format!("benchkite/{}/run", inner.config.instance);
        let problems =
            pipelines::check_pipeline(&p, &Expectations { queue, cluster_id: cluster.as_deref(), branch: &branch });
        Ok(PipelineCheck { slug: slug.to_string(), web_url: p.web_url, cluster_id: p.cluster_id, problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(cfg: PipelineConfig) -> PipelineManager {
        let mut c = bk::Config::new("org", bk::Secret::new("t"));
        c.api_url = "http://127.0.0.1:9/v2".into();
        PipelineManager::new(bk::Client::new(c).expect("client"), cfg, ClusterResolver::default(), ScopeReport::new())
    }

    #[test]
    fn the_desired_pipeline_follows_the_settings() {
        let m = manager(PipelineConfig {
            instance: "prod".into(),
            teams: vec!["team-1".into()],
            step_timeout_minutes: 30,
            ..Default::default()
        });
        let d = m.desired("gpu", &QueueSettings::default(), Some("c1".into()));
        assert_eq!(d.slug, bk::managed_slug("prod", "gpu"));
        assert_eq!(d.name, d.slug, "names are unique in an organization: the slug is");
        assert_eq!(d.cluster_id.as_deref(), Some("c1"));
        assert!(!d.skip_queued_branch_builds && !d.cancel_running_branch_builds);
        assert_eq!(d.teams.get("team-1").map(String::as_str), Some("manage_build_and_read"));
        assert!(d.configuration.contains("timeout_in_minutes: 30"), "{}", d.configuration);
        let pool = QueueSettings { step_timeout_minutes: Some(90), cluster: None };
        assert!(m.desired("gpu", &pool, None).configuration.contains("timeout_in_minutes: 90"));
        assert_eq!(m.slug("gpu"), d.slug);
    }

    #[tokio::test]
    async fn a_token_without_the_scopes_sends_nothing() {
        let mut c = bk::Config::new("org", bk::Secret::new("t"));
        c.api_url = "http://127.0.0.1:9/v2".into();
        let scopes = ScopeReport::known(["read_builds", "read_pipelines"]);
        let m = PipelineManager::new(
            bk::Client::new(c).expect("client"),
            PipelineConfig::default(),
            ClusterResolver::default(),
            scopes,
        );
        let e = m.ensure("gpu").await.expect_err("missing write_pipelines");
        assert_eq!(e.reason, reason::MISSING_TOKEN_SCOPE);
        assert_eq!(e.missing_scopes, ["write_pipelines"]);
        assert!(e.message.contains("write_pipelines"), "{e}");
        assert!(m.inner.client.stats().responses.is_empty(), "no request was sent");
    }
}
