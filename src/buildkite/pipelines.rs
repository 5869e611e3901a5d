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

use serde::{Deserialize, Serialize};
use serde_yaml::Value as Yaml;

use super::types::{lenient_bool, lenient_opt_string, lenient_string};

// ----- the pipeline object --------------------------------------------------------------

/// A pipeline as the REST API returns it (the fields benchkite reads), decoded tolerantly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Pipeline {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    /// GraphQL id (`buildCreate` names the pipeline by it).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub graphql_id: Option<String>,
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

mod check;
mod managed;
mod rest;

pub use check::{Expectations, PipelineProblem, branch_filter_matches, check_pipeline, problem};
pub use managed::{
    DEFAULT_RETRY_LIMIT, DEFAULT_STEP_TIMEOUT_MINUTES, MANAGED_COMMAND, MANAGED_STEP_KEY, MAX_MANAGED_SLUG,
    MAX_RETRY_LIMIT, MAX_STEP_TIMEOUT_MINUTES, ManagedStep, RESULT_ARTIFACT, escape_interpolation, has_interpolation,
    managed_slug, render_configuration, unescape_interpolation,
};
pub use rest::{MAX_SLUG_LEN, is_valid_slug};

#[cfg(test)]
mod tests;
