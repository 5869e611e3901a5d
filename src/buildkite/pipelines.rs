//! Pipelines: the REST calls (get, create, update, unarchive; the organization's pipeline
//! settings), the pipeline benchkite manages for a queue (its slug and its YAML steps), and
//! the check of a pipeline a user names instead.
//!
//! Facts this module relies on (Buildkite docs, "Pipelines API"):
//! - `POST /organizations/{org}/pipelines` takes `name`, `repository`, `configuration`
//!   (the YAML steps) and `cluster_id`, and an optional `slug` ("a custom identifier …
//!   used as the pipeline's URL path"); names must be unique in the organization. Scope
//!   `write_pipelines`; `201 Created`; `422` on validation errors.
//! - `PATCH …/pipelines/{slug}`: "If you provide a new name without a `slug` parameter, the
//!   slug will be automatically updated": updates here never send `name`.
//! - Slugs match `/\A[a-zA-Z0-9]+[a-zA-Z0-9\-]*\z/`, at most 100 characters (docs
//!   "Deriving a pipeline slug from the pipeline's name").
//! - Steps saved in a pipeline's settings are interpolated with a fixed list of Buildkite
//!   variables only, never with a build's `env` (docs "Environment variables"); `$$` is a
//!   literal `$`. So the managed steps name their queue literally and escape every `$`.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_yaml::Value as Yaml;
use sha2::{Digest as _, Sha256};

use super::budget::Priority;
use super::client::{Auth, Call, Client, Mode};
use super::error::{Error, Result};
use super::types::{lenient_bool, lenient_opt_string, lenient_string};
use super::wire;

// ----- the pipeline object --------------------------------------------------------------

/// A pipeline as the REST API returns it (the fields benchkite reads), decoded tolerantly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Pipeline {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub slug: String,
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub web_url: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub description: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub repository: Option<String>,
    /// UUID of the cluster the pipeline belongs to.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub cluster_id: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub default_branch: Option<String>,
    /// Pipeline-level branch filter (builds created with `ignore_pipeline_branch_filters`
    /// are not subject to it).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub branch_configuration: Option<String>,
    /// "Skip intermediate builds".
    #[serde(deserialize_with = "lenient_bool")]
    pub skip_queued_branch_builds: bool,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub skip_queued_branch_builds_filter: Option<String>,
    /// "Cancel intermediate builds".
    #[serde(deserialize_with = "lenient_bool")]
    pub cancel_running_branch_builds: bool,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub cancel_running_branch_builds_filter: Option<String>,
    /// The YAML steps (YAML pipelines; absent for visual-step or template pipelines).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub configuration: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub pipeline_template_uuid: Option<String>,
    /// Set when archived: archived pipelines are read-only (no new builds).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub archived_at: Option<String>,
}

/// Body of `POST /organizations/{org}/pipelines`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NewPipeline {
    /// Unique in the organization.
    pub name: String,
    /// Sent explicitly, so the slug does not depend on how Buildkite derives it from the name;
    /// it is also what makes a repeated create safe (422 "already been taken" → update).
    pub slug: String,
    /// Required by Buildkite even when every step skips the checkout.
    pub repository: String,
    /// The YAML steps.
    pub configuration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub skip_queued_branch_builds: bool,
    pub cancel_running_branch_builds: bool,
    /// Team UUID → access level (`read_only`, `build_and_read`, `manage_build_and_read`).
    /// "Once your organization enables Teams, only administrators can create pipelines
    /// without providing team UUIDs" (docs); set only on create (the REST update does not
    /// change teams).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, String>,
}

/// Body of `PATCH …/pipelines/{slug}`: only the fields to change. Never carries `name`
/// (a new name without a slug renames the slug).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PipelinePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_queued_branch_builds: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_running_branch_builds: Option<bool>,
}

impl PipelinePatch {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == PipelinePatch::default()
    }

    /// The names of the fields it changes (for logs).
    pub fn fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                out.push(name);
            }
        };
        add(self.repository.is_some(), "repository");
        add(self.configuration.is_some(), "configuration");
        add(self.cluster_id.is_some(), "cluster_id");
        add(self.default_branch.is_some(), "default_branch");
        add(self.description.is_some(), "description");
        add(self.skip_queued_branch_builds.is_some(), "skip_queued_branch_builds");
        add(self.cancel_running_branch_builds.is_some(), "cancel_running_branch_builds");
        out
    }

    /// Everything `desired` sets that `actual` does not have. The configuration is compared
    /// as parsed YAML (Buildkite rewrites the text it stores, e.g. quoting keys).
    pub fn diff(desired: &NewPipeline, actual: &Pipeline) -> PipelinePatch {
        let differs = |want: &Option<String>, have: &Option<String>| want.is_some() && want != have;
        PipelinePatch {
            repository: (actual.repository.as_deref() != Some(desired.repository.as_str()))
                .then(|| desired.repository.clone()),
            configuration: (!same_configuration(&desired.configuration, actual.configuration.as_deref()))
                .then(|| desired.configuration.clone()),
            cluster_id: differs(&desired.cluster_id, &actual.cluster_id).then(|| desired.cluster_id.clone()).flatten(),
            default_branch: differs(&desired.default_branch, &actual.default_branch)
                .then(|| desired.default_branch.clone())
                .flatten(),
            description: differs(&desired.description, &actual.description)
                .then(|| desired.description.clone())
                .flatten(),
            skip_queued_branch_builds: (actual.skip_queued_branch_builds != desired.skip_queued_branch_builds)
                .then_some(desired.skip_queued_branch_builds),
            cancel_running_branch_builds: (actual.cancel_running_branch_builds != desired.cancel_running_branch_builds)
                .then_some(desired.cancel_running_branch_builds),
        }
    }
}

/// Two YAML step configurations mean the same (comments, quoting and layout aside). An
/// absent or unparsable `actual` differs.
pub fn same_configuration(desired: &str, actual: Option<&str>) -> bool {
    let Some(actual) = actual else { return false };
    match (serde_yaml::from_str::<Yaml>(desired), serde_yaml::from_str::<Yaml>(actual)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The organization's pipeline settings (`GET /organizations/{org}/pipeline-settings`,
/// docs "Pipeline settings API"; scope `read_organization_settings`, organization
/// administrators only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OrganizationPipelineSettings {
    /// The cluster new pipelines use.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub default_cluster_id: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub default_branch: Option<String>,
}

// ----- REST calls -----------------------------------------------------------------------

/// Longest slug Buildkite accepts.
pub const MAX_SLUG_LEN: usize = 100;

/// Whether `s` is a valid pipeline slug: `[a-zA-Z0-9][a-zA-Z0-9-]*`, at most 100 characters.
pub fn is_valid_slug(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_SLUG_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn check_slug(endpoint: &'static str, slug: &str) -> Result<()> {
    if is_valid_slug(slug) {
        Ok(())
    } else {
        Err(Error::InvalidRequest { endpoint, message: format!("{slug:?} is not a valid pipeline slug") })
    }
}

impl Client {
    /// `GET /organizations/{org}/pipelines/{slug}`; `None` on 404. Scope `read_pipelines`.
    pub async fn get_pipeline(&self, slug: &str) -> Result<Option<Pipeline>> {
        const EP: &str = "get_pipeline";
        check_slug(EP, slug)?;
        let ans = self.get(EP, self.org_url(&["pipelines", slug]), Priority::Refresh).await?;
        match ans.status {
            s if s.is_success() => Ok(Some(self.decode(EP, &ans.body)?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.api_error(EP, &ans)),
        }
    }

    /// Creates a pipeline (`POST /organizations/{org}/pipelines`, scope `write_pipelines`).
    ///
    /// Safe to repeat (the slug is the idempotency key): a `422` "has already been taken"
    /// reads the pipeline with that slug and updates it to `new` (no request when it already
    /// matches). A name taken by a pipeline with another slug stays an error. Retried like
    /// any idempotent request (a retry after a lost answer lands in the 422 path).
    pub async fn create_pipeline(&self, new: &NewPipeline) -> Result<Pipeline> {
        const EP: &str = "create_pipeline";
        check_slug(EP, &new.slug)?;
        if new.repository.trim().is_empty() || new.configuration.trim().is_empty() {
            return Err(Error::InvalidRequest {
                endpoint: EP,
                message: "repository and configuration are required".into(),
            });
        }
        let body = self.json_body(EP, new)?;
        let call = Call {
            endpoint: EP,
            method: Method::POST,
            url: self.org_url(&["pipelines"]),
            body: Some(body),
            priority: Priority::Submit,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        };
        let ans = self.execute(&call).await?;
        if ans.status.is_success() {
            return self.decode(EP, &ans.body);
        }
        if ans.status == StatusCode::UNPROCESSABLE_ENTITY && taken(&ans.body) {
            let Some(existing) = self.get_pipeline(&new.slug).await? else {
                // The name is taken by a pipeline with another slug.
                return Err(self.api_error(EP, &ans));
            };
            let patch = PipelinePatch::diff(new, &existing);
            if patch.is_empty() {
                return Ok(existing);
            }
            return self.update_pipeline(&new.slug, &patch).await;
        }
        Err(self.api_error(EP, &ans))
    }

    /// `PATCH /organizations/{org}/pipelines/{slug}` (scope `write_pipelines`).
    pub async fn update_pipeline(&self, slug: &str, patch: &PipelinePatch) -> Result<Pipeline> {
        const EP: &str = "update_pipeline";
        check_slug(EP, slug)?;
        let body = self.json_body(EP, patch)?;
        let call = Call {
            endpoint: EP,
            method: Method::PATCH,
            url: self.org_url(&["pipelines", slug]),
            body: Some(body),
            priority: Priority::Submit,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        };
        let ans = self.execute(&call).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode(EP, &ans.body)
    }

    /// `POST …/pipelines/{slug}/unarchive` (scope `write_pipelines`): archived pipelines
    /// take no builds.
    pub async fn unarchive_pipeline(&self, slug: &str) -> Result<Pipeline> {
        const EP: &str = "unarchive_pipeline";
        check_slug(EP, slug)?;
        let call = Call::write(EP, self.org_url(&["pipelines", slug, "unarchive"]), b"{}".to_vec());
        let ans = self.execute(&call).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode(EP, &ans.body)
    }

    /// `GET /organizations/{org}/pipeline-settings`: among others the cluster new pipelines
    /// use. Needs scope `read_organization_settings` and an administrator's token; expect
    /// 401/403 otherwise.
    pub async fn organization_pipeline_settings(&self) -> Result<OrganizationPipelineSettings> {
        const EP: &str = "organization_pipeline_settings";
        let ans = self.get(EP, self.org_url(&["pipeline-settings"]), Priority::Refresh).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode(EP, &ans.body)
    }
}

fn taken(body: &[u8]) -> bool {
    let msg = wire::answer_message(body).to_ascii_lowercase();
    msg.contains("already been taken") || msg.contains("already exists")
}

// ----- the managed pipeline ---------------------------------------------------------------

/// Longest slug [`managed_slug`] returns (Buildkite allows 100).
pub const MAX_MANAGED_SLUG: usize = 64;
/// The command of the managed step: the runner in the agent image.
pub const MANAGED_COMMAND: &str = "benchkite run";
/// Key of the managed step (`Job::step_key`).
pub const MANAGED_STEP_KEY: &str = "evaluate";
/// The result artifact the runner writes.
pub const RESULT_ARTIFACT: &str = "result.json";
/// Default step timeout of managed pipelines.
pub const DEFAULT_STEP_TIMEOUT_MINUTES: u32 = 60;
/// Largest step timeout accepted (a week).
pub const MAX_STEP_TIMEOUT_MINUTES: u32 = 10_080;
/// Default `limit` of each automatic retry rule.
pub const DEFAULT_RETRY_LIMIT: u32 = 2;
/// Buildkite's largest `limit` of a retry rule (docs "Retry").
pub const MAX_RETRY_LIMIT: u32 = 10;

/// Lowercase ASCII letters and digits; every other run of characters becomes one `-`.
fn slug_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The slug of the pipeline benchkite manages for `queue` in installation `instance`.
///
/// Deterministic; a valid Buildkite slug of at most [`MAX_MANAGED_SLUG`] characters:
/// `benchkite[-<instance>]-<queue>-<hash>`, the readable parts lowercased and cut to fit,
/// and `<hash>` the first 8 hex digits of SHA-256 over the exact instance and queue. The
/// hash is always there: lowercasing, replacing `.`/`_` and cutting are lossy, and the
/// instance/queue boundary is ambiguous (`prod` + `eu-h100` vs `prod-eu` + `h100`), so only
/// the hash keeps distinct queues (and installations) apart.
pub fn managed_slug(instance: &str, queue: &str) -> String {
    let mut base = String::from("benchkite");
    let inst = slug_part(instance);
    let inst = inst.strip_prefix("benchkite").map(|r| r.trim_start_matches('-')).unwrap_or(&inst);
    for part in [inst, slug_part(queue).as_str()] {
        if !part.is_empty() {
            base.push('-');
            base.push_str(part);
        }
    }
    let mut h = Sha256::new();
    h.update(instance.as_bytes());
    h.update([0u8]);
    h.update(queue.as_bytes());
    let hash = hex::encode(&h.finalize()[..4]);
    base.truncate(MAX_MANAGED_SLUG - 1 - hash.len());
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}-{hash}")
}

/// `$` → `$$`: a literal `$` in steps saved in pipeline settings (Buildkite interpolates
/// `$VAR` and `${VAR}` there; docs "Environment variables", "Escaping").
pub fn escape_interpolation(s: &str) -> String {
    s.replace('$', "$$")
}

/// Whether Buildkite would interpolate something in `s`: a `$` followed by `{` or by a
/// variable name. `$$` is an escaped, literal `$`.
pub fn has_interpolation(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            match b.get(i + 1) {
                Some(b'$') => {
                    i += 2;
                    continue;
                }
                Some(c) if *c == b'{' || *c == b'_' || c.is_ascii_alphabetic() => return true,
                _ => {}
            }
        }
        i += 1;
    }
    false
}

/// What Buildkite makes of `s` when it holds no interpolation (`$$` → `$`).
pub fn unescape_interpolation(s: &str) -> String {
    s.replace("$$", "$")
}

/// The step benchkite manages for a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ManagedStep {
    /// The queue the step targets, literally.
    pub queue: String,
    /// `timeout_in_minutes`, clamped to 1..=[`MAX_STEP_TIMEOUT_MINUTES`].
    pub timeout_in_minutes: u32,
    /// `limit` of each automatic retry rule, clamped to 0..=[`MAX_RETRY_LIMIT`].
    pub retry_limit: u32,
}

impl ManagedStep {
    pub fn new(queue: impl Into<String>) -> Self {
        ManagedStep {
            queue: queue.into(),
            timeout_in_minutes: DEFAULT_STEP_TIMEOUT_MINUTES,
            retry_limit: DEFAULT_RETRY_LIMIT,
        }
    }
}

#[derive(Serialize)]
struct Steps {
    steps: Vec<Step>,
}

#[derive(Serialize)]
struct Step {
    label: &'static str,
    key: &'static str,
    command: &'static str,
    agents: BTreeMap<&'static str, String>,
    checkout: Checkout,
    env: BTreeMap<&'static str, &'static str>,
    artifact_paths: &'static str,
    timeout_in_minutes: u32,
    retry: Retry,
}

#[derive(Serialize)]
struct Checkout {
    skip: bool,
}

#[derive(Serialize)]
struct Retry {
    automatic: Vec<RetryRule>,
    manual: ManualRetry,
}

#[derive(Serialize)]
struct ManualRetry {
    allowed: bool,
    reason: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ExitStatus {
    Code(i32),
    Any(&'static str),
}

#[derive(Serialize)]
struct RetryRule {
    exit_status: ExitStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<&'static str>,
    signal_reason: &'static str,
    limit: u32,
}

const HEADER: &str = "\
# Managed by benchkite: the steps of every KernelJob build on this pipeline.
# benchkite rewrites this configuration whenever it differs from what it manages; change
# the AgentPool (spec.buildkite) or the controller's flags instead of editing it here.
#
# - agents.queue names the queue literally: steps saved in pipeline settings are never
#   interpolated with a build's env (a `$` is escaped as `$$`).
# - checkout.skip (agent v3.136+) and BUILDKITE_SKIP_CHECKOUT (older agents): the job needs
#   no repository; the evaluation comes with the build.
# - Automatic retries are for infrastructure exits only: the agent was lost (-1, no signal),
#   stopped while running the job (signal_reason agent_stop), or terminated (255, no
#   signal). A killed process (a cancel or a step timeout: signal_reason cancel) and a
#   failing evaluation are never retried; benchkite retries evaluations itself, so manual
#   retries are off.
";

/// The YAML steps of the managed pipeline for `step.queue`.
///
/// One command step: `benchkite run` on the queue (named literally, every `$` escaped),
/// no checkout (`checkout: {skip: true}`, docs "Git checkout", plus
/// `BUILDKITE_SKIP_CHECKOUT=true` for agents before v3.136), `result.json` uploaded by the
/// agent also when the step fails, the step timeout, and automatic retries only for
/// infrastructure exits (docs "Retry", "Agent lifecycle"; agent `agent/run_job.go`):
/// - `exit_status: -1` with no signal and no signal reason: Buildkite lost the agent;
/// - `signal_reason: agent_stop` (any exit status, also -1): the agent was stopped while
///   running the job (a drained or evicted pod);
/// - `exit_status: 255` with no signal and no reason: the agent was terminated (benchkite
///   run itself exits only 0, 1 or 128+N).
///
/// Never `signal_reason: cancel` (a cancel or a step timeout), `process_run_error` (the job
/// could not start: it would fail the same way again), `agent_refused`,
/// `signature_rejected`, `agent_incompatible`, nor any signal. Each rule counts its own
/// retries (`limit`).
pub fn render_configuration(step: &ManagedStep) -> String {
    let limit = step.retry_limit.min(MAX_RETRY_LIMIT);
    let rule = |exit_status, signal, signal_reason| RetryRule { exit_status, signal, signal_reason, limit };
    let doc = Steps {
        steps: vec![Step {
            label: ":stopwatch: kernel evaluation",
            key: MANAGED_STEP_KEY,
            command: MANAGED_COMMAND,
            agents: BTreeMap::from([("queue", escape_interpolation(&step.queue))]),
            checkout: Checkout { skip: true },
            env: BTreeMap::from([("BUILDKITE_SKIP_CHECKOUT", "true")]),
            artifact_paths: RESULT_ARTIFACT,
            timeout_in_minutes: step.timeout_in_minutes.clamp(1, MAX_STEP_TIMEOUT_MINUTES),
            retry: Retry {
                automatic: vec![
                    rule(ExitStatus::Code(-1), Some("none"), "none"),
                    rule(ExitStatus::Code(-1), None, "agent_stop"),
                    rule(ExitStatus::Any("*"), None, "agent_stop"),
                    rule(ExitStatus::Code(255), Some("none"), "none"),
                ],
                manual: ManualRetry {
                    allowed: false,
                    reason: "benchkite retries evaluations itself (KernelJob attempts)",
                },
            },
        }],
    };
    // Serialising plain structs of strings and numbers cannot fail; an empty body would be
    // refused by Buildkite (422) rather than silently used.
    let body = serde_yaml::to_string(&doc).unwrap_or_default();
    format!("{HEADER}{body}")
}

// ----- checking a user's pipeline --------------------------------------------------------

/// Machine reasons of [`PipelineProblem`]s.
pub mod problem {
    /// The pipeline is archived: it takes no builds.
    pub const ARCHIVED: &str = "PipelineArchived";
    /// The steps are not YAML benchkite can read (visual steps, a template, invalid YAML).
    pub const STEPS_UNREADABLE: &str = "StepsUnreadable";
    /// No command step at all.
    pub const NO_COMMAND_STEP: &str = "NoCommandStep";
    /// A command step's queue contains `${…}`/`$VAR`: never resolved from build env.
    pub const QUEUE_INTERPOLATED: &str = "QueueInterpolated";
    /// A command step targets another queue, or none (the cluster's default queue).
    pub const QUEUE_MISMATCH: &str = "QueueMismatch";
    /// A command step checks out the repository first.
    pub const CHECKOUT_NOT_SKIPPED: &str = "CheckoutNotSkipped";
    /// A command step's `artifact_paths` do not include `result.json`.
    pub const NO_RESULT_ARTIFACT: &str = "NoResultArtifact";
    /// A command step's `branches` filter excludes benchkite's build branches.
    pub const STEP_BRANCH_FILTER: &str = "StepBranchFilter";
    /// "Skip intermediate builds" applies to benchkite's build branches.
    pub const SKIP_INTERMEDIATE_BUILDS: &str = "SkipIntermediateBuilds";
    /// "Cancel intermediate builds" applies to benchkite's build branches.
    pub const CANCEL_INTERMEDIATE_BUILDS: &str = "CancelIntermediateBuilds";
    /// The pipeline is in another cluster than the queue's.
    pub const WRONG_CLUSTER: &str = "WrongCluster";
    /// No pipeline has that slug.
    pub const NOT_FOUND: &str = "PipelineNotFound";
}

/// One setting of a pipeline that breaks KernelJobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineProblem {
    /// Machine reason (see [`problem`]).
    pub reason: &'static str,
    /// What is wrong and how to fix it, naming the setting.
    pub message: String,
}

impl PipelineProblem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        PipelineProblem { reason, message: message.into() }
    }
}

/// What a pipeline must do for KernelJobs on a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations<'a> {
    pub queue: &'a str,
    /// The queue's cluster, when known.
    pub cluster_id: Option<&'a str>,
    /// A branch benchkite builds on (e.g. `benchkite/<instance>/<run>`), to evaluate
    /// branch filters with.
    pub branch: &'a str,
}

/// Whether a Buildkite branch filter (space-separated patterns, `*` wildcards, `!` to
/// exclude; docs "Branch configuration") lets `branch` through. An empty filter lets
/// everything through; only exclusions let through everything they do not exclude.
pub fn branch_filter_matches(filter: &str, branch: &str) -> bool {
    let (neg, pos): (Vec<&str>, Vec<&str>) = filter.split_whitespace().partition(|p| p.starts_with('!'));
    let included = pos.is_empty() || pos.iter().any(|p| wildcard(p, branch));
    included && !neg.iter().any(|p| wildcard(&p[1..], branch))
}

/// `*` matches any run of characters (also `/`), `?` one character.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn yaml_str(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn yaml_truthy(v: &Yaml) -> bool {
    match v {
        Yaml::Bool(b) => *b,
        Yaml::String(s) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The `queue` of an `agents` value: `{queue: q}` or `["queue=q", …]`.
fn agents_queue(agents: &Yaml) -> Option<String> {
    match agents {
        Yaml::Mapping(m) => m.get("queue").and_then(yaml_str),
        Yaml::Sequence(items) => items.iter().filter_map(yaml_str).find_map(|s| {
            let (k, v) = s.split_once('=')?;
            (k.trim() == "queue").then(|| v.trim().to_string())
        }),
        _ => None,
    }
}

/// The paths of an `artifact_paths` value (a `;`-separated string or a list).
fn artifact_paths(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Sequence(items) => items.iter().filter_map(yaml_str).collect::<Vec<_>>(),
        other => yaml_str(other).map(|s| s.split(';').map(|p| p.trim().to_string()).collect()).unwrap_or_default(),
    }
    .into_iter()
    .filter(|p| !p.is_empty())
    .collect()
}

fn covers_result(paths: &[String]) -> bool {
    paths.iter().any(|p| wildcard(p.trim_start_matches("./"), RESULT_ARTIFACT))
}

/// Whether a step skips the checkout. Precedence (docs "Git checkout", "Precedence"):
/// step `checkout.skip`, pipeline `checkout.skip`, then `BUILDKITE_SKIP_CHECKOUT` in the
/// step's or the pipeline's `env`.
fn skips_checkout(step: &Yaml, top: &Yaml) -> bool {
    let checkout_skip = |v: &Yaml| v.get("checkout").and_then(|c| c.get("skip")).map(yaml_truthy);
    let env_skip = |v: &Yaml| v.get("env").and_then(|e| e.get("BUILDKITE_SKIP_CHECKOUT")).map(yaml_truthy);
    checkout_skip(step)
        .or_else(|| checkout_skip(top))
        .or_else(|| env_skip(step))
        .or_else(|| env_skip(top))
        .unwrap_or(false)
}

fn is_command_step(step: &Yaml) -> bool {
    ["command", "commands", "plugins"].iter().any(|k| step.get(*k).is_some())
        || step.get("type").and_then(yaml_str).is_some_and(|t| t == "script" || t == "command")
}

/// The command steps of a configuration, groups flattened.
fn command_steps(steps: &Yaml, out: &mut Vec<Yaml>) {
    let Yaml::Sequence(items) = steps else { return };
    for item in items {
        if let Some(nested) = item.get("group").and(item.get("steps")) {
            command_steps(nested, out);
        } else if is_command_step(item) {
            out.push(item.clone());
        }
    }
}

fn step_name(step: &Yaml, index: usize) -> String {
    ["label", "name", "key", "id"]
        .iter()
        .find_map(|k| step.get(*k).and_then(yaml_str))
        .map(|n| format!("step {n:?}"))
        .unwrap_or_else(|| format!("command step {}", index + 1))
}

/// Every setting of `pipeline` that breaks KernelJobs on `expect.queue`, by name.
pub fn check_pipeline(pipeline: &Pipeline, expect: &Expectations<'_>) -> Vec<PipelineProblem> {
    let mut out = Vec::new();
    let slug = &pipeline.slug;
    if pipeline.archived_at.is_some() {
        out.push(PipelineProblem::new(
            problem::ARCHIVED,
            format!("pipeline {slug} is archived and takes no builds: unarchive it"),
        ));
    }
    let intermediate = [
        (
            pipeline.skip_queued_branch_builds,
            &pipeline.skip_queued_branch_builds_filter,
            problem::SKIP_INTERMEDIATE_BUILDS,
            "\"Skip intermediate builds\" (skip_queued_branch_builds)",
            "skips queued builds",
        ),
        (
            pipeline.cancel_running_branch_builds,
            &pipeline.cancel_running_branch_builds_filter,
            problem::CANCEL_INTERMEDIATE_BUILDS,
            "\"Cancel intermediate builds\" (cancel_running_branch_builds)",
            "cancels running builds",
        ),
    ];
    for (on, filter, reason, setting, effect) in intermediate {
        if on && branch_filter_matches(filter.as_deref().unwrap_or(""), expect.branch) {
            out.push(PipelineProblem::new(
                reason,
                format!(
                    "pipeline {slug} has {setting} on for benchkite's branches ({}*): it {effect} when a newer build starts on the same branch, so KernelJobs sharing a branch (spec.branch) skip or cancel each other; turn it off or exclude these branches with its branch filter",
                    expect.branch.split('/').next().map(|p| format!("{p}/")).unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(want) = expect.cluster_id
        && pipeline.cluster_id.as_deref() != Some(want)
    {
        out.push(PipelineProblem::new(
            problem::WRONG_CLUSTER,
            format!(
                "pipeline {slug} is in cluster {}, but queue {} is in cluster {want}: its jobs never reach the pool's agents; move the pipeline (cluster_id) or set the pool's spec.buildkite.clusterId",
                pipeline.cluster_id.as_deref().unwrap_or("(none)"),
                expect.queue
            ),
        ));
    }

    let Some(config) = pipeline.configuration.as_deref().filter(|c| !c.trim().is_empty()) else {
        let why = if pipeline.pipeline_template_uuid.is_some() {
            "its steps come from a pipeline template"
        } else {
            "it has no YAML steps (visual steps?)"
        };
        out.push(PipelineProblem::new(
            problem::STEPS_UNREADABLE,
            format!("pipeline {slug}: {why}; benchkite checks only YAML steps saved in the pipeline's settings"),
        ));
        return out;
    };
    let top: Yaml = match serde_yaml::from_str(config) {
        Ok(v) => v,
        Err(e) => {
            out.push(PipelineProblem::new(
                problem::STEPS_UNREADABLE,
                format!("pipeline {slug}: its steps are not valid YAML: {e}"),
            ));
            return out;
        }
    };
    let steps = match &top {
        Yaml::Sequence(_) => top.clone(),
        other => other.get("steps").cloned().unwrap_or(Yaml::Null),
    };
    let mut commands = Vec::new();
    command_steps(&steps, &mut commands);
    if commands.is_empty() {
        out.push(PipelineProblem::new(
            problem::NO_COMMAND_STEP,
            format!(
                "pipeline {slug} has no command step: nothing would run `{MANAGED_COMMAND}` on queue {}",
                expect.queue
            ),
        ));
        return out;
    }
    for (i, step) in commands.iter().enumerate() {
        let name = step_name(step, i);
        let queue = step.get("agents").and_then(agents_queue).or_else(|| top.get("agents").and_then(agents_queue));
        match queue {
            None => out.push(PipelineProblem::new(
                problem::QUEUE_MISMATCH,
                format!(
                    "pipeline {slug}, {name}: names no agents queue, so it runs on the cluster's default queue, not {}; set `agents: {{queue: {}}}`",
                    expect.queue, expect.queue
                ),
            )),
            Some(q) if has_interpolation(&q) => out.push(PipelineProblem::new(
                problem::QUEUE_INTERPOLATED,
                format!(
                    "pipeline {slug}, {name}: agents queue {q:?} is interpolated; steps saved in a pipeline's settings are never interpolated with a build's env, so it never becomes {}: name the queue literally",
                    expect.queue
                ),
            )),
            Some(q) if unescape_interpolation(&q) != expect.queue => out.push(PipelineProblem::new(
                problem::QUEUE_MISMATCH,
                format!("pipeline {slug}, {name}: targets queue {q:?}, not {}", expect.queue),
            )),
            Some(_) => {}
        }
        if !skips_checkout(step, &top) {
            out.push(PipelineProblem::new(
                problem::CHECKOUT_NOT_SKIPPED,
                format!(
                    "pipeline {slug}, {name}: checks out the pipeline's repository before every evaluation (a private repository without a key fails every job); set `checkout: {{skip: true}}` and env BUILDKITE_SKIP_CHECKOUT: \"true\""
                ),
            ));
        }
        let paths = step.get("artifact_paths").map(artifact_paths).unwrap_or_default();
        if !covers_result(&paths) {
            out.push(PipelineProblem::new(
                problem::NO_RESULT_ARTIFACT,
                format!(
                    "pipeline {slug}, {name}: artifact_paths do not include {RESULT_ARTIFACT}, so a run that is stopped before it uploads the result loses it; set `artifact_paths: {RESULT_ARTIFACT}`"
                ),
            ));
        }
        if let Some(filter) = step.get("branches").and_then(yaml_str)
            && !branch_filter_matches(&filter, expect.branch)
        {
            out.push(PipelineProblem::new(
                problem::STEP_BRANCH_FILTER,
                format!(
                    "pipeline {slug}, {name}: `branches: {filter}` excludes benchkite's build branches (e.g. {}), so the step never runs",
                    expect.branch
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(config: &str) -> Yaml {
        serde_yaml::from_str(config).expect("rendered configuration parses")
    }

    fn step(config: &str) -> Yaml {
        let doc = parse(config);
        let steps = doc.get("steps").and_then(Yaml::as_sequence).expect("steps").clone();
        assert_eq!(steps.len(), 1, "exactly one step");
        steps[0].clone()
    }

    #[test]
    fn managed_slug_is_a_bounded_valid_slug() {
        let long = "q".repeat(300);
        for (instance, queue) in [
            ("benchkite", "nvidia-h100"),
            ("prod", "GPU.H100_x"),
            ("", ""),
            ("benchkite", "--"),
            ("ünïcödé", "日本"),
            ("benchkite", long.as_str()),
            (long.as_str(), "q"),
            ("a", "$x{y}"),
        ] {
            let s = managed_slug(instance, queue);
            assert!(is_valid_slug(&s), "{s:?} from ({instance:?}, {queue:?})");
            assert!(s.len() <= MAX_MANAGED_SLUG, "{s:?}");
            assert!(s.starts_with("benchkite"), "{s:?}");
            assert!(!s.contains("--"), "{s:?}");
            assert_eq!(s, managed_slug(instance, queue), "deterministic");
        }
        assert!(managed_slug("benchkite", "nvidia-h100").starts_with("benchkite-nvidia-h100-"));
        assert!(managed_slug("prod", "h100").starts_with("benchkite-prod-h100-"));
        assert!(managed_slug("benchkite-eu", "h100").starts_with("benchkite-eu-h100-"));
    }

    #[test]
    fn managed_slugs_never_collide() {
        let long_a = format!("{}a", "x".repeat(200));
        let long_b = format!("{}b", "x".repeat(200));
        let pairs = [
            ("benchkite", "gpu"),
            ("benchkite", "GPU"),
            ("benchkite", "g.pu"),
            ("benchkite", "g_pu"),
            ("benchkite", "g-pu"),
            ("benchkite", long_a.as_str()),
            ("benchkite", long_b.as_str()),
            ("prod", "eu-h100"),
            ("prod-eu", "h100"),
            ("", "gpu"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (i, q) in pairs {
            assert!(seen.insert(managed_slug(i, q)), "collision for ({i:?}, {q:?})");
        }
    }

    #[test]
    fn slug_validation_follows_buildkite() {
        for ok in ["a", "A-1", "kernelbot", "x".repeat(100).as_str()] {
            assert!(is_valid_slug(ok), "{ok}");
        }
        for bad in ["", "-a", "a_b", "a/b", "a b", "a.b", "x".repeat(101).as_str()] {
            assert!(!is_valid_slug(bad), "{bad}");
        }
    }

    #[test]
    fn interpolation_detection_and_escaping() {
        for yes in ["${Q}", "$Q", "a-${BUILDKITE_BRANCH}", "x$_y", "$$$Q"] {
            assert!(has_interpolation(yes), "{yes}");
        }
        for no in ["q", "$$", "a$$b", "$$$$", "a$", "$1", "$-", "$${Q}"] {
            assert!(!has_interpolation(no), "{no}");
        }
        for raw in ["plain", "a$b", "${KERNELBOT_QUEUE}", "$$", "$"] {
            let escaped = escape_interpolation(raw);
            assert!(!has_interpolation(&escaped), "{escaped}");
            assert_eq!(unescape_interpolation(&escaped), raw);
        }
    }

    #[test]
    fn rendered_configuration_has_exactly_the_managed_properties() {
        let yaml =
            render_configuration(&ManagedStep { queue: "nvidia-h100".into(), timeout_in_minutes: 45, retry_limit: 3 });
        assert!(yaml.starts_with("# Managed by benchkite"), "{yaml}");
        let doc = parse(&yaml);
        let top_keys: Vec<&str> = doc.as_mapping().expect("mapping").keys().filter_map(Yaml::as_str).collect();
        assert_eq!(top_keys, ["steps"], "no pipeline-level env, agents or checkout");
        let s = step(&yaml);
        let keys: Vec<&str> = s.as_mapping().expect("step").keys().filter_map(Yaml::as_str).collect();
        assert_eq!(
            keys,
            ["label", "key", "command", "agents", "checkout", "env", "artifact_paths", "timeout_in_minutes", "retry"]
        );
        assert_eq!(s["command"], Yaml::from("benchkite run"));
        assert_eq!(s["key"], Yaml::from(MANAGED_STEP_KEY));
        let agents = s["agents"].as_mapping().expect("agents");
        assert_eq!(agents.len(), 1);
        assert_eq!(s["agents"]["queue"], Yaml::from("nvidia-h100"));
        assert_eq!(s["checkout"]["skip"], Yaml::Bool(true));
        assert_eq!(s["env"]["BUILDKITE_SKIP_CHECKOUT"], Yaml::from("true"), "a string, as env values are");
        assert_eq!(s["env"].as_mapping().map(|m| m.len()), Some(1));
        assert_eq!(s["artifact_paths"], Yaml::from("result.json"));
        assert_eq!(s["timeout_in_minutes"], Yaml::from(45));
        assert_eq!(s["retry"]["manual"]["allowed"], Yaml::Bool(false));
        let rules = s["retry"]["automatic"].as_sequence().expect("rules");
        let rules: Vec<serde_json::Value> =
            rules.iter().map(|r| serde_json::to_value(r).expect("rule as JSON")).collect();
        assert_eq!(
            rules,
            vec![
                json!({"exit_status": -1, "signal": "none", "signal_reason": "none", "limit": 3}),
                json!({"exit_status": -1, "signal_reason": "agent_stop", "limit": 3}),
                json!({"exit_status": "*", "signal_reason": "agent_stop", "limit": 3}),
                json!({"exit_status": 255, "signal": "none", "signal_reason": "none", "limit": 3}),
            ]
        );
        for r in &rules {
            assert_ne!(r["signal_reason"], json!("cancel"), "a killed process is never retried");
            assert_ne!(r["signal_reason"], json!("process_run_error"));
            assert_ne!(r["signal_reason"], json!("*"));
        }
        // The pipeline's own check accepts what benchkite renders.
        let p = Pipeline { slug: "s".into(), configuration: Some(yaml), ..Default::default() };
        let expect = Expectations { queue: "nvidia-h100", cluster_id: None, branch: "benchkite/x/1" };
        assert_eq!(check_pipeline(&p, &expect), vec![]);
    }

    #[test]
    fn rendered_queue_is_literal_whatever_the_queue() {
        for queue in ["${KERNELBOT_QUEUE}", "a$b", "$", "q: {x}", "yes", "123", "'\"", "line\nbreak", "#c"] {
            let yaml = render_configuration(&ManagedStep::new(queue));
            assert!(!has_interpolation(&yaml), "no interpolation anywhere in {yaml}");
            let s = step(&yaml);
            let rendered = s["agents"]["queue"].as_str().expect("queue is a string");
            assert_eq!(unescape_interpolation(rendered), queue);
            assert!(!has_interpolation(rendered));
        }
    }

    #[test]
    fn rendered_limits_are_clamped() {
        let s = step(&render_configuration(&ManagedStep { queue: "q".into(), timeout_in_minutes: 0, retry_limit: 99 }));
        assert_eq!(s["timeout_in_minutes"], Yaml::from(1));
        assert_eq!(s["retry"]["automatic"][0]["limit"], Yaml::from(MAX_RETRY_LIMIT));
        let s = step(&render_configuration(&ManagedStep {
            queue: "q".into(),
            timeout_in_minutes: u32::MAX,
            retry_limit: 0,
        }));
        assert_eq!(s["timeout_in_minutes"], Yaml::from(MAX_STEP_TIMEOUT_MINUTES));
        assert_eq!(s["retry"]["automatic"][0]["limit"], Yaml::from(0));
        assert_eq!(step(&render_configuration(&ManagedStep::new("q")))["timeout_in_minutes"], Yaml::from(60));
    }

    #[test]
    fn configurations_compare_as_yaml() {
        let mine = render_configuration(&ManagedStep::new("q"));
        // What Buildkite hands back may quote keys and drop comments.
        let theirs =
            mine.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n").replace("steps:", "\"steps\":");
        assert!(same_configuration(&mine, Some(&theirs)));
        assert!(!same_configuration(&mine, None));
        assert!(!same_configuration(&mine, Some("steps: [")));
        assert!(!same_configuration(&mine, Some(&render_configuration(&ManagedStep::new("other")))));
    }

    fn desired() -> NewPipeline {
        NewPipeline {
            name: "n".into(),
            slug: "s".into(),
            repository: "https://example.com/r.git".into(),
            configuration: render_configuration(&ManagedStep::new("q")),
            cluster_id: Some("c1".into()),
            default_branch: Some("benchkite".into()),
            description: Some("d".into()),
            skip_queued_branch_builds: false,
            cancel_running_branch_builds: false,
            teams: BTreeMap::new(),
        }
    }

    fn as_pipeline(n: &NewPipeline) -> Pipeline {
        Pipeline {
            slug: n.slug.clone(),
            name: n.name.clone(),
            repository: Some(n.repository.clone()),
            configuration: Some(n.configuration.clone()),
            cluster_id: n.cluster_id.clone(),
            default_branch: n.default_branch.clone(),
            description: n.description.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn diff_names_exactly_what_differs() {
        let want = desired();
        let same = as_pipeline(&want);
        assert!(PipelinePatch::diff(&want, &same).is_empty());

        let mut drifted = same.clone();
        drifted.cancel_running_branch_builds = true;
        drifted.cluster_id = Some("c2".into());
        drifted.configuration = Some("steps:\n  - command: other\n".into());
        drifted.name = "renamed by a human".into();
        let patch = PipelinePatch::diff(&want, &drifted);
        assert_eq!(patch.fields(), ["configuration", "cluster_id", "cancel_running_branch_builds"]);
        assert_eq!(patch.cancel_running_branch_builds, Some(false));
        let body = serde_json::to_value(&patch).expect("patch body");
        assert!(body.get("name").is_none() && body.get("slug").is_none(), "never renames: {body}");
        assert!(body.get("repository").is_none());
    }

    #[test]
    fn new_pipeline_body_has_the_documented_fields() {
        let body = serde_json::to_value(desired()).expect("body");
        for k in [
            "name",
            "slug",
            "repository",
            "configuration",
            "cluster_id",
            "default_branch",
            "description",
            "skip_queued_branch_builds",
            "cancel_running_branch_builds",
        ] {
            assert!(body.get(k).is_some(), "{k} in {body}");
        }
        assert_eq!(body["skip_queued_branch_builds"], json!(false));
        assert_eq!(body["cancel_running_branch_builds"], json!(false));
        assert!(body.get("teams").is_none(), "no teams unless configured");
    }

    #[test]
    fn pipeline_decodes_the_documented_answer() {
        let p: Pipeline = serde_json::from_value(json!({
            "id": "849411f9", "slug": "my-pipeline", "name": "My Pipeline",
            "web_url": "https://buildkite.com/acme-inc/my-pipeline",
            "repository": "git@github.com:acme-inc/my-pipeline.git", "cluster_id": null,
            "branch_configuration": null, "default_branch": "main",
            "skip_queued_branch_builds": true, "skip_queued_branch_builds_filter": null,
            "cancel_running_branch_builds": "false",
            "created_at": "2013-09-03 13:24:38 UTC", "archived_at": null,
            "configuration": "steps:\n - command: x", "steps": [{"type": "script"}], "env": {}
        }))
        .expect("decodes");
        assert_eq!(p.slug, "my-pipeline");
        assert!(p.skip_queued_branch_builds);
        assert!(!p.cancel_running_branch_builds);
        assert_eq!(p.cluster_id, None);
        assert_eq!(p.archived_at, None);
        assert_eq!(p.configuration.as_deref(), Some("steps:\n - command: x"));
    }

    #[test]
    fn branch_filters() {
        let b = "benchkite/prod/0b1c-2";
        assert!(branch_filter_matches("", b));
        assert!(branch_filter_matches("benchkite/*", b));
        assert!(branch_filter_matches("main benchkite/*", b));
        assert!(branch_filter_matches("!main", b));
        assert!(branch_filter_matches("*", b));
        assert!(branch_filter_matches("benchkite/prod/*", b));
        assert!(!branch_filter_matches("main", b));
        assert!(!branch_filter_matches("!benchkite/*", b));
        assert!(!branch_filter_matches("* !benchkite/*", b));
        assert!(!branch_filter_matches("benchkite/staging/*", b));
        assert!(branch_filter_matches("benchkite/???d/*", "benchkite/prod/x"));
    }

    const GOOD: &str = r#"
steps:
  - label: eval
    command: benchkite run
    agents: {queue: gpu}
    checkout: {skip: true}
    artifact_paths: result.json
"#;

    fn user(config: &str) -> Pipeline {
        Pipeline {
            slug: "theirs".into(),
            configuration: Some(config.into()),
            cluster_id: Some("c1".into()),
            ..Default::default()
        }
    }

    const EXPECT: Expectations<'static> =
        Expectations { queue: "gpu", cluster_id: Some("c1"), branch: "benchkite/bk/run-1" };

    fn reasons(p: &Pipeline) -> Vec<&'static str> {
        check_pipeline(p, &EXPECT).iter().map(|x| x.reason).collect()
    }

    #[test]
    fn a_good_user_pipeline_has_no_problem() {
        assert_eq!(reasons(&user(GOOD)), Vec::<&str>::new());
        // Other spellings Buildkite accepts.
        let other = r#"
agents: ["queue=gpu"]
env: {BUILDKITE_SKIP_CHECKOUT: true}
steps:
  - wait
  - group: g
    steps:
      - commands: ["benchkite run"]
        artifact_paths: ["logs/*", "./result.json"]
        branches: "benchkite/*"
  - block: ok
  - trigger: other
"#;
        assert_eq!(reasons(&user(other)), Vec::<&str>::new());
        let bare_list = "- command: benchkite run\n  agents: [\"queue=gpu\"]\n  env: {BUILDKITE_SKIP_CHECKOUT: \"true\"}\n  artifact_paths: \"*.json\"\n";
        assert_eq!(reasons(&user(bare_list)), Vec::<&str>::new());
        // An escaped literal `$` is still the literal queue.
        let mut dollar = user(&GOOD.replace("queue: gpu", "queue: \"g$$pu\""));
        dollar.slug = "d".into();
        let expect = Expectations { queue: "g$pu", ..EXPECT };
        assert_eq!(check_pipeline(&dollar, &expect), vec![]);
    }

    #[test]
    fn each_broken_setting_is_named() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                GOOD.replace("queue: gpu", "queue: \"${KERNELBOT_QUEUE}\""),
                problem::QUEUE_INTERPOLATED,
                "KERNELBOT_QUEUE",
            ),
            (GOOD.replace("queue: gpu", "queue: $$Q$Q"), problem::QUEUE_INTERPOLATED, "interpolated"),
            (GOOD.replace("queue: gpu", "queue: cpu"), problem::QUEUE_MISMATCH, "\"cpu\""),
            (GOOD.replace("    agents: {queue: gpu}\n", ""), problem::QUEUE_MISMATCH, "default queue"),
            (GOOD.replace("    checkout: {skip: true}\n", ""), problem::CHECKOUT_NOT_SKIPPED, "checkout"),
            (GOOD.replace("{skip: true}", "{skip: false}"), problem::CHECKOUT_NOT_SKIPPED, "skip: true"),
            (
                GOOD.replace("artifact_paths: result.json", "artifact_paths: logs/*"),
                problem::NO_RESULT_ARTIFACT,
                "result.json",
            ),
            (GOOD.replace("    artifact_paths: result.json\n", ""), problem::NO_RESULT_ARTIFACT, "artifact_paths"),
            (format!("{GOOD}    branches: main\n"), problem::STEP_BRANCH_FILTER, "branches: main"),
            ("steps:\n  - wait\n".into(), problem::NO_COMMAND_STEP, "no command step"),
            ("steps: [".into(), problem::STEPS_UNREADABLE, "not valid YAML"),
        ];
        for (config, reason, says) in cases {
            let problems = check_pipeline(&user(&config), &EXPECT);
            assert_eq!(problems.iter().map(|p| p.reason).collect::<Vec<_>>(), [reason], "{config}");
            assert!(problems[0].message.contains(says), "{:?} should mention {says:?}", problems[0].message);
            assert!(problems[0].message.contains("theirs"), "names the pipeline");
        }
        // The step-level skip wins over the pipeline-level env, the pipeline-level skip over
        // the step's env.
        let env_only = GOOD.replace("    checkout: {skip: true}\n", "    env: {BUILDKITE_SKIP_CHECKOUT: \"true\"}\n");
        assert_eq!(reasons(&user(&env_only)), Vec::<&str>::new());
        let overridden = format!("checkout: {{skip: false}}\n{}", env_only.trim_start());
        assert_eq!(reasons(&user(&overridden)), [problem::CHECKOUT_NOT_SKIPPED]);
    }

    #[test]
    fn pipeline_settings_are_named() {
        let mut p = user(GOOD);
        p.skip_queued_branch_builds = true;
        p.cancel_running_branch_builds = true;
        p.cluster_id = Some("c2".into());
        p.archived_at = Some("2021-06-01 08:23:35 UTC".into());
        let problems = check_pipeline(&p, &EXPECT);
        let got: Vec<&str> = problems.iter().map(|x| x.reason).collect();
        assert_eq!(
            got,
            [
                problem::ARCHIVED,
                problem::SKIP_INTERMEDIATE_BUILDS,
                problem::CANCEL_INTERMEDIATE_BUILDS,
                problem::WRONG_CLUSTER
            ]
        );
        assert!(problems[1].message.contains("skip_queued_branch_builds"));
        assert!(problems[2].message.contains("Cancel intermediate builds"));
        assert!(problems[3].message.contains("c2") && problems[3].message.contains("c1"));
        // Filters that leave benchkite's branches alone are fine; an unknown cluster is not
        // checked.
        p.archived_at = None;
        p.skip_queued_branch_builds_filter = Some("main".into());
        p.cancel_running_branch_builds_filter = Some("!benchkite/*".into());
        let expect = Expectations { cluster_id: None, ..EXPECT };
        assert_eq!(check_pipeline(&p, &expect), vec![]);
    }

    #[test]
    fn steps_that_are_not_yaml_are_reported() {
        let mut p = user(GOOD);
        p.configuration = None;
        assert_eq!(reasons(&p), [problem::STEPS_UNREADABLE]);
        p.pipeline_template_uuid = Some("t".into());
        assert!(check_pipeline(&p, &EXPECT)[0].message.contains("template"));
    }
}
