//! The check of a pipeline a user names instead of a managed one.

use serde_yaml::Value as Yaml;

use super::{MANAGED_COMMAND, Pipeline, RESULT_ARTIFACT, has_interpolation, unescape_interpolation};

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
