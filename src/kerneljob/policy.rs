//! Tenancy: what a KernelJob may ask for, decided only from what cluster admins own (the
//! controller's flags, Namespace labels, the AgentPool's `spec.buildkite.kernelJobs`), never
//! from anything the job's author controls. Pure: the reconcile and the submitter gather the
//! inputs and carry out the answer (a condition naming the rule; no build).
//!
//! The chart's ValidatingAdmissionPolicy refuses the same overrides at admission; this check
//! is the one that always runs (GitOps installs without the policy, older CRDs).

use std::collections::BTreeMap;

use crate::api::agentpool::GpuNodeSelector;
use crate::api::jobenv;
use crate::api::kerneljob::KernelJobSpec;

/// Condition reason: the pool does not admit the job's namespace.
pub const POOL_NOT_ALLOWED: &str = "PoolNotAllowed";
/// Condition reason: the job uses a raw override its namespace may not use.
pub const OVERRIDE_NOT_ALLOWED: &str = "OverrideNotAllowed";
/// Condition reason: the job sets an env name the allow-list does not list.
pub const ENV_NOT_ALLOWED: &str = "EnvNotAllowed";

/// Where an override is allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Allow {
    /// Nowhere (the default).
    #[default]
    None,
    /// In namespaces that carry the override's label with the value `true` (only cluster
    /// admins can label namespaces).
    Labelled,
    /// Everywhere.
    All,
}

impl Allow {
    pub fn as_str(self) -> &'static str {
        match self {
            Allow::None => "none",
            Allow::Labelled => "labelled",
            Allow::All => "all",
        }
    }
}

/// One raw override of a KernelJob and the admin settings that allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    /// The fields, as a user writes them.
    pub fields: &'static str,
    /// The controller flag.
    pub flag: &'static str,
    /// The Namespace label (`"true"` allows it where the flag is `labelled`).
    pub label: &'static str,
    /// What to use instead.
    pub instead: &'static str,
}

pub const RAW_QUEUE: Override = Override {
    fields: "spec.queue",
    flag: "--allow-raw-queue",
    label: "benchkite.dev/allow-raw-queue",
    instead: "name an AgentPool in spec.pool",
};
pub const PIPELINE: Override = Override {
    fields: "spec.pipeline",
    flag: "--allow-pipeline-override",
    label: "benchkite.dev/allow-pipeline-override",
    instead: "leave it out: the pool's pipeline is used",
};
pub const BRANCH: Override = Override {
    fields: "spec.branch/spec.commit",
    flag: "--allow-branch-override",
    label: "benchkite.dev/allow-branch-override",
    instead: "leave them out: each attempt gets its own branch",
};
pub const SECRET_SOURCES: Override = Override {
    fields: "spec.sourcesFrom[].secret",
    flag: "--allow-secret-sources",
    label: "benchkite.dev/allow-secret-sources",
    instead: "use sourcesFrom[].configMap or inline sources (build env is readable by everyone who can see the pipeline)",
};

/// The admin's tenancy settings (controller flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenancy {
    pub raw_queue: Allow,
    pub pipeline: Allow,
    pub branch: Allow,
    pub secret_sources: Allow,
    /// Names (or `PREFIX*` patterns, `*` for any) of `spec.env` a job may set, on top of the
    /// deny list of [`jobenv`]. Empty: none (kernelbot's launcher passes no user env).
    pub env_allow: Vec<String>,
}

/// Why a job may not be submitted: a condition reason and a message naming the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl From<Refusal> for (&'static str, String) {
    fn from(r: Refusal) -> Self {
        (r.reason, r.message)
    }
}

/// A Namespace's labels, or `None` when the controller does not know the namespace (yet).
pub type Labels<'a> = Option<&'a BTreeMap<String, String>>;

fn labelled(labels: Labels<'_>, label: &str) -> bool {
    labels.and_then(|l| l.get(label)).is_some_and(|v| v == "true")
}

/// Whether `o` is allowed in a namespace with `labels` under `allow`; `Err` says why not.
pub fn override_allowed(o: &Override, allow: Allow, ns: &str, labels: Labels<'_>) -> Result<(), String> {
    match allow {
        Allow::All => Ok(()),
        Allow::Labelled if labelled(labels, o.label) => Ok(()),
        Allow::Labelled => Err(format!(
            "{} is allowed only in namespaces labelled {}=true ({}=labelled) and namespace {ns} is not{}; {}",
            o.fields,
            o.label,
            o.flag,
            if labels.is_none() { " (its labels are not known yet)" } else { "" },
            o.instead
        )),
        Allow::None => Err(format!(
            "{} is not allowed in any namespace ({}=none; a cluster admin can allow it: {}=labelled and the namespace label {}=true, or {}=all); {}",
            o.fields, o.flag, o.flag, o.label, o.flag, o.instead
        )),
    }
}

/// The raw overrides `spec` uses, with the setting that governs each.
fn overrides_used(spec: &KernelJobSpec, t: &Tenancy) -> Vec<(&'static Override, Allow)> {
    let mut used = Vec::new();
    if spec.queue.is_some() {
        used.push((&RAW_QUEUE, t.raw_queue));
    }
    if spec.pipeline.is_some() {
        used.push((&PIPELINE, t.pipeline));
    }
    if spec.branch.is_some() || spec.commit.is_some() {
        used.push((&BRANCH, t.branch));
    }
    if spec.sources_from.iter().any(|s| s.secret.is_some()) {
        used.push((&SECRET_SOURCES, t.secret_sources));
    }
    used
}

/// Refuses the raw overrides a job may not use in namespace `ns`: every one at once, so a
/// user fixes them in one go.
pub fn check_overrides(spec: &KernelJobSpec, ns: &str, labels: Labels<'_>, t: &Tenancy) -> Result<(), Refusal> {
    let refused: Vec<String> = overrides_used(spec, t)
        .into_iter()
        .filter_map(|(o, allow)| override_allowed(o, allow, ns, labels).err())
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(Refusal { reason: OVERRIDE_NOT_ALLOWED, message: refused.join(". ") })
}

/// Only `secret` sources: the submitter's own gate before it reads any Secret.
pub fn check_secret_sources(spec: &KernelJobSpec, ns: &str, labels: Labels<'_>, t: &Tenancy) -> Result<(), Refusal> {
    if !spec.sources_from.iter().any(|s| s.secret.is_some()) {
        return Ok(());
    }
    override_allowed(&SECRET_SOURCES, t.secret_sources, ns, labels)
        .map_err(|message| Refusal { reason: OVERRIDE_NOT_ALLOWED, message })
}

/// Whether the allow-list `patterns` lists `name`: exactly, by `PREFIX*`, or `*`.
pub fn env_listed(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// Checks `--kerneljob-env-allow` patterns: identifiers, optionally ending in `*`.
pub fn parse_env_pattern(p: &str) -> Result<String, String> {
    let p = p.trim();
    let stem = p.strip_suffix('*').unwrap_or(p);
    if stem.is_empty() || jobenv::valid_name(stem) {
        Ok(p.to_string())
    } else {
        Err(format!("{p:?} is not a variable name or a NAME* prefix pattern"))
    }
}

/// Refuses env names the deny list refuses (the CRD does too) or the allow-list does not list.
pub fn check_env(spec: &KernelJobSpec, t: &Tenancy) -> Result<(), Refusal> {
    let mut denied = Vec::new();
    let mut unlisted = Vec::new();
    for name in spec.env.keys() {
        if !jobenv::valid_name(name) {
            denied.push(format!("{name} (not a variable name)"));
        } else if let Some(why) = jobenv::denied(name) {
            denied.push(format!("{name} (read by {why})"));
        } else if !env_listed(&t.env_allow, name) {
            unlisted.push(name.as_str());
        }
    }
    let mut parts = Vec::new();
    if !denied.is_empty() {
        parts.push(format!("spec.env may never set {}", denied.join(", ")));
    }
    if !unlisted.is_empty() {
        let list = if t.env_allow.is_empty() { "empty".to_string() } else { t.env_allow.join(",") };
        parts.push(format!(
            "spec.env sets {}, which the controller's --kerneljob-env-allow ({list}) does not list; a cluster admin can add names or NAME* patterns",
            unlisted.join(", ")
        ));
    }
    if parts.is_empty() {
        return Ok(());
    }
    Err(Refusal { reason: ENV_NOT_ALLOWED, message: parts.join(". ") })
}

/// Renders a selector the way `kubectl` users write it (`a=b,c in (d,e),!f`); `{}` for one
/// that matches everything.
pub fn selector_text(sel: &GpuNodeSelector) -> String {
    use crate::api::agentpool::SelectorOperator as Op;
    let mut parts: Vec<String> = sel.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for e in &sel.match_expressions {
        parts.push(match e.operator {
            Op::In => format!("{} in ({})", e.key, e.values.join(",")),
            Op::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
            Op::Exists => e.key.clone(),
            Op::DoesNotExist => format!("!{}", e.key),
        });
    }
    if parts.is_empty() { "{}".to_string() } else { parts.join(",") }
}

/// Whether the pool `pool_ns/pool` with namespace selector `selector` admits jobs of `ns`
/// (whose labels are `labels`). Its own namespace always; others only if the selector
/// matches them.
pub fn check_pool(
    ns: &str,
    pool_ns: &str,
    pool: &str,
    selector: Option<&GpuNodeSelector>,
    labels: Labels<'_>,
) -> Result<(), Refusal> {
    if ns == pool_ns {
        return Ok(());
    }
    let message = match (selector, labels) {
        (None, _) => format!(
            "AgentPool {pool_ns}/{pool} admits KernelJobs of its own namespace only (it sets no spec.buildkite.kernelJobs.namespaceSelector); namespace {ns} is not {pool_ns}"
        ),
        (Some(sel), _) if sel.match_labels.is_empty() && sel.match_expressions.is_empty() => return Ok(()),
        (Some(sel), Some(labels)) if sel.matches(labels) => return Ok(()),
        (Some(sel), known) => format!(
            "AgentPool {pool_ns}/{pool} admits KernelJobs from namespaces matching {} (spec.buildkite.kernelJobs.namespaceSelector); namespace {ns} does not match{}",
            selector_text(sel),
            if known.is_none() { " (its labels are not known yet)" } else { "" }
        ),
    };
    Err(Refusal { reason: POOL_NOT_ALLOWED, message })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
