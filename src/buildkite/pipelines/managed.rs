//! The pipeline benchkite manages for a queue: its slug and its YAML steps.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

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
