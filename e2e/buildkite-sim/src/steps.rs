//! Steps saved in a pipeline's settings (the YAML steps editor, REST `configuration`, the
//! simulator's config `pipelines[].steps`): parsing, server-side interpolation, automatic
//! retry rules and branch patterns.
//!
//! Buildkite interpolates settings steps *before the build exists*, with a fixed list of
//! build-level variables only (docs "Environment variables" → "Variable interpolation":
//! "If you're using the YAML Steps editor to define your pipeline, only the following subset
//! of the environment variables are available"). A build's own `env` is never used: it is
//! interpolated only by `buildkite-agent pipeline upload` (docs "Dynamic pipelines").

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml::Value as Y;

use crate::model::interpolate;

/// The variables the YAML steps editor may interpolate (docs "Environment variables",
/// section "Variable interpolation"). Everything else interpolates to empty (or its
/// `${VAR:-default}`).
pub const SETTINGS_VARIABLES: &[&str] = &[
    "BUILDKITE_BRANCH",
    "BUILDKITE_TAG",
    "BUILDKITE_MESSAGE",
    "BUILDKITE_COMMIT",
    "BUILDKITE_PIPELINE_SLUG",
    "BUILDKITE_PIPELINE_NAME",
    "BUILDKITE_PIPELINE_ID",
    "BUILDKITE_ORGANIZATION_SLUG",
    "BUILDKITE_TRIGGERED_FROM_BUILD_PIPELINE_SLUG",
    "BUILDKITE_REPO",
    "BUILDKITE_PULL_REQUEST",
    "BUILDKITE_PULL_REQUEST_BASE_BRANCH",
    "BUILDKITE_PULL_REQUEST_REPO",
    "BUILDKITE_MERGE_QUEUE_BASE_BRANCH",
    "BUILDKITE_MERGE_QUEUE_BASE_COMMIT",
];

/// Highest `retry.automatic[].limit` (docs "Retry": "The maximum value this can be set to
/// is 10").
pub const MAX_RETRY_LIMIT: u32 = 10;

/// Which exit statuses a retry rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitMatch {
    /// `"*"`: "matches any value between 1 and 255 (excluding 0)" (docs "Retry") — so not
    /// `-1`, which needs an explicit rule.
    Any,
    Codes(Vec<i32>),
}

/// Which signals / signal reasons a retry rule matches. `None` in the list is `"none"`
/// (no signal / no signal reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextMatch {
    Any,
    Values(Vec<Option<String>>),
}

/// One `retry.automatic` rule (docs "Retry" → "Automatic retry attributes").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRule {
    pub exit_status: ExitMatch,
    pub signal: TextMatch,
    pub signal_reason: TextMatch,
    pub limit: u32,
}

impl RetryRule {
    /// `automatic: true`: `exit_status: "*"`, `signal: "*"`, `signal_reason: "*"`, `limit: 2`.
    pub fn default_rule() -> Self {
        Self { exit_status: ExitMatch::Any, signal: TextMatch::Any, signal_reason: TextMatch::Any, limit: 2 }
    }

    /// All conditions of a rule must match (docs "Retry": "When a single retry rule specifies
    /// multiple conditions … all conditions must match").
    pub fn matches(&self, exit_status: Option<i32>, signal: Option<&str>, signal_reason: Option<&str>) -> bool {
        let exit_ok = match (&self.exit_status, exit_status) {
            (ExitMatch::Any, Some(s)) => (1..=255).contains(&s),
            (ExitMatch::Codes(codes), Some(s)) => codes.contains(&s),
            (_, None) => false,
        };
        // "Signal matching is case-insensitive and the SIG prefix is optional".
        let sig_ok = match &self.signal {
            TextMatch::Any => true,
            TextMatch::Values(v) => v.iter().any(|want| match (want, signal) {
                (None, None) => true,
                (Some(w), Some(s)) => normalize_signal(w) == normalize_signal(s),
                _ => false,
            }),
        };
        let reason_ok = match &self.signal_reason {
            TextMatch::Any => true,
            TextMatch::Values(v) => v.iter().any(|want| want.as_deref() == signal_reason),
        };
        exit_ok && sig_ok && reason_ok
    }
}

fn normalize_signal(s: &str) -> String {
    let up = s.trim().to_ascii_uppercase();
    up.strip_prefix("SIG").map(str::to_string).unwrap_or(up)
}

/// A command step after parsing (and, at build creation, interpolation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepDef {
    pub key: Option<String>,
    pub label: String,
    /// `None`: the simulator's executor command (a settings step without `command`).
    pub command: Option<String>,
    /// Agent query rules, `k=v`.
    pub agents: Vec<String>,
    /// `;`-separated globs.
    pub artifact_paths: String,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    /// `checkout: {skip: …}` of the step (or of the pipeline).
    pub checkout_skip: Option<bool>,
    pub retry: Vec<RetryRule>,
}

/// A parsed steps document: top-level `env`, `agents`, `checkout` and the command steps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub env: BTreeMap<String, String>,
    pub steps: Vec<StepDef>,
}

/// A configuration Buildkite refuses (answered `422 Validation Failed` on the
/// `configuration` field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepsError(pub String);

impl std::fmt::Display for StepsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, StepsError> {
    Err(StepsError(msg.into()))
}

/// Parses YAML text (anchors and aliases resolved, merge keys applied).
pub fn parse_yaml(text: &str) -> Result<Y, StepsError> {
    let mut v: Y = serde_yaml::from_str(text).map_err(|e| StepsError(format!("YAML is not valid: {e}")))?;
    v.apply_merge().map_err(|e| StepsError(format!("YAML is not valid: {e}")))?;
    Ok(v)
}

/// The build-level variables settings steps are interpolated with.
#[allow(clippy::too_many_arguments)]
pub fn build_variables(
    branch: &str,
    commit: &str,
    message: &str,
    pipeline_slug: &str,
    pipeline_name: &str,
    pipeline_id: &str,
    org_slug: &str,
    repo: &str,
) -> BTreeMap<String, String> {
    let mut v: BTreeMap<String, String> = BTreeMap::new();
    v.insert("BUILDKITE_BRANCH".into(), branch.to_string());
    v.insert("BUILDKITE_COMMIT".into(), commit.to_string());
    v.insert("BUILDKITE_MESSAGE".into(), message.to_string());
    v.insert("BUILDKITE_PIPELINE_SLUG".into(), pipeline_slug.to_string());
    v.insert("BUILDKITE_PIPELINE_NAME".into(), pipeline_name.to_string());
    v.insert("BUILDKITE_PIPELINE_ID".into(), pipeline_id.to_string());
    v.insert("BUILDKITE_ORGANIZATION_SLUG".into(), org_slug.to_string());
    v.insert("BUILDKITE_REPO".into(), repo.to_string());
    // API builds are never pull requests (the agent sets "false" for non-PR builds).
    v.insert("BUILDKITE_PULL_REQUEST".into(), "false".into());
    v.insert("BUILDKITE_PULL_REQUEST_BASE_BRANCH".into(), String::new());
    v.insert("BUILDKITE_PULL_REQUEST_REPO".into(), String::new());
    v.retain(|k, _| SETTINGS_VARIABLES.contains(&k.as_str()));
    v
}

/// Interpolates every string scalar of a YAML document (values, not keys) with `vars`.
pub fn interpolate_value(v: &Y, vars: &BTreeMap<String, String>) -> Y {
    match v {
        Y::String(s) => Y::String(interpolate(s, vars)),
        Y::Sequence(seq) => Y::Sequence(seq.iter().map(|x| interpolate_value(x, vars)).collect()),
        Y::Mapping(m) => {
            let mut out = serde_yaml::Mapping::new();
            for (k, x) in m {
                out.insert(k.clone(), interpolate_value(x, vars));
            }
            Y::Mapping(out)
        }
        Y::Tagged(t) => interpolate_value(&t.value, vars),
        other => other.clone(),
    }
}

fn get<'a>(m: &'a serde_yaml::Mapping, keys: &[&str]) -> Option<&'a Y> {
    keys.iter().find_map(|k| m.get(*k)).filter(|v| !v.is_null())
}

fn scalar_string(v: &Y) -> Option<String> {
    match v {
        Y::String(s) => Some(s.clone()),
        Y::Number(n) => Some(n.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_map(v: &Y, what: &str) -> Result<BTreeMap<String, String>, StepsError> {
    let Y::Mapping(m) = v else {
        return err(format!("`{what}` must be a map of strings"));
    };
    let mut out = BTreeMap::new();
    for (k, x) in m {
        let (Some(k), Some(x)) = (scalar_string(k), if x.is_null() { Some(String::new()) } else { scalar_string(x) })
        else {
            return err(format!("`{what}` must be a map of strings"));
        };
        out.insert(k, x);
    }
    Ok(out)
}

fn bool_like(v: &Y, what: &str) -> Result<bool, StepsError> {
    match v {
        Y::Bool(b) => Ok(*b),
        Y::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Y::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => err(format!("`{what}` must be true or false")),
    }
}

/// `agents` as a map (`queue: x`) or a list / string of `k=v` rules.
fn agent_rules(v: &Y) -> Result<Vec<String>, StepsError> {
    match v {
        Y::Mapping(m) => {
            let mut out = Vec::new();
            for (k, x) in m {
                let (Some(k), Some(x)) =
                    (scalar_string(k), if x.is_null() { Some(String::new()) } else { scalar_string(x) })
                else {
                    return err("`agents` must be a map of tags or a list of key=value rules");
                };
                out.push(format!("{k}={x}"));
            }
            Ok(out)
        }
        Y::Sequence(s) => s
            .iter()
            .map(|x| scalar_string(x).ok_or_else(|| StepsError("`agents` rules must be strings".into())))
            .collect(),
        Y::String(s) => Ok(vec![s.clone()]),
        _ => err("`agents` must be a map of tags or a list of key=value rules"),
    }
}

fn string_or_list(v: &Y, what: &str, sep: &str) -> Result<String, StepsError> {
    match v {
        Y::Sequence(s) => {
            let parts: Option<Vec<String>> = s.iter().map(scalar_string).collect();
            parts
                .map(|p| p.join(sep))
                .ok_or_else(|| StepsError(format!("`{what}` must be a string or a list of strings")))
        }
        other => {
            scalar_string(other).ok_or_else(|| StepsError(format!("`{what}` must be a string or a list of strings")))
        }
    }
}

fn exit_match(v: &Y) -> Result<ExitMatch, StepsError> {
    let one = |x: &Y| -> Result<Option<i32>, StepsError> {
        match x {
            Y::String(s) if s.trim() == "*" => Ok(None),
            Y::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()).map(Some).ok_or_else(bad_exit),
            Y::String(s) => s.trim().parse::<i32>().map(Some).map_err(|_| bad_exit()),
            _ => Err(bad_exit()),
        }
    };
    let mut codes = Vec::new();
    let items: Vec<&Y> = match v {
        Y::Sequence(s) => s.iter().collect(),
        other => vec![other],
    };
    for x in items {
        match one(x)? {
            None => return Ok(ExitMatch::Any),
            Some(c) if c == -1 || (0..=255).contains(&c) => codes.push(c),
            Some(_) => return Err(bad_exit()),
        }
    }
    Ok(ExitMatch::Codes(codes))
}

fn bad_exit() -> StepsError {
    StepsError("`retry.automatic.exit_status` must be \"*\", -1, or 0–255 (or a list of them)".into())
}

fn text_match(v: &Y, what: &str) -> Result<TextMatch, StepsError> {
    let items: Vec<&Y> = match v {
        Y::Sequence(s) => s.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for x in items {
        let Some(s) = scalar_string(x) else {
            return err(format!("`retry.automatic.{what}` must be a string or a list of strings"));
        };
        match s.trim() {
            "*" => return Ok(TextMatch::Any),
            "none" => out.push(None),
            t => out.push(Some(t.to_string())),
        }
    }
    Ok(TextMatch::Values(out))
}

fn retry_rule(v: &Y) -> Result<RetryRule, StepsError> {
    let Y::Mapping(m) = v else {
        return err("`retry.automatic` rules must be maps");
    };
    let mut r = RetryRule::default_rule();
    if let Some(x) = get(m, &["exit_status"]) {
        r.exit_status = exit_match(x)?;
    }
    if let Some(x) = get(m, &["signal"]) {
        r.signal = text_match(x, "signal")?;
    }
    if let Some(x) = get(m, &["signal_reason"]) {
        r.signal_reason = text_match(x, "signal_reason")?;
    }
    if let Some(x) = get(m, &["limit"]) {
        let limit = match x {
            Y::Number(n) => n.as_u64(),
            Y::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match limit.and_then(|l| u32::try_from(l).ok()) {
            Some(l) if l <= MAX_RETRY_LIMIT => r.limit = l,
            _ => return err(format!("`retry.automatic.limit` must be an integer between 0 and {MAX_RETRY_LIMIT}")),
        }
    }
    Ok(r)
}

/// `retry.automatic`: a bool, one rule, or a list of rules (docs "Retry").
fn retry_rules(v: &Y) -> Result<Vec<RetryRule>, StepsError> {
    let Y::Mapping(m) = v else {
        return err("`retry` must be a map");
    };
    match get(m, &["automatic"]) {
        None | Some(Y::Bool(false)) => Ok(Vec::new()),
        Some(Y::Bool(true)) => Ok(vec![RetryRule::default_rule()]),
        Some(Y::String(s)) if s.eq_ignore_ascii_case("true") => Ok(vec![RetryRule::default_rule()]),
        Some(Y::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Vec::new()),
        Some(Y::Sequence(s)) => s.iter().map(retry_rule).collect(),
        Some(other) => Ok(vec![retry_rule(other)?]),
    }
}

fn timeout(v: &Y) -> Result<Option<Duration>, StepsError> {
    let minutes = match v {
        Y::Number(n) => n.as_u64(),
        Y::String(s) if s.trim().is_empty() => return Ok(None),
        Y::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match minutes {
        Some(0) => Ok(None),
        Some(m) => Ok(Some(Duration::from_secs(m.saturating_mul(60)))),
        None => err("`timeout_in_minutes` must be a positive integer"),
    }
}

/// The keys that make a step something else than a command step. Those steps are not
/// simulated (a wait step is ignored: all steps of a build run in parallel).
const NON_COMMAND_KEYS: &[&str] = &["wait", "waiter", "block", "input", "trigger", "manual"];

fn command_step(
    m: &serde_yaml::Mapping,
    default_agents: &[String],
    default_checkout: Option<bool>,
) -> Result<StepDef, StepsError> {
    let mut s = StepDef {
        key: get(m, &["key", "identifier", "id"]).and_then(scalar_string),
        label: get(m, &["label", "name"]).and_then(scalar_string).unwrap_or_default(),
        agents: default_agents.to_vec(),
        checkout_skip: default_checkout,
        ..StepDef::default()
    };
    if let Some(c) = get(m, &["command", "commands"]) {
        s.command = Some(string_or_list(c, "command", "\n")?);
    }
    if let Some(a) = get(m, &["agents", "agent_query_rules"]) {
        s.agents = agent_rules(a)?;
    }
    if let Some(a) = get(m, &["artifact_paths", "artifacts"]) {
        s.artifact_paths = string_or_list(a, "artifact_paths", ";")?;
    }
    if let Some(t) = get(m, &["timeout_in_minutes", "timeout"]) {
        s.timeout = timeout(t)?;
    }
    if let Some(e) = get(m, &["env"]) {
        s.env = string_map(e, "env")?;
    }
    if let Some(c) = get(m, &["checkout"]) {
        let Y::Mapping(cm) = c else {
            return err("`checkout` must be a map");
        };
        if let Some(skip) = get(cm, &["skip"]) {
            s.checkout_skip = Some(bool_like(skip, "checkout.skip")?);
        }
    }
    if let Some(r) = get(m, &["retry"]) {
        s.retry = retry_rules(r)?;
    }
    Ok(s)
}

fn collect_steps(
    items: &[Y],
    default_agents: &[String],
    default_checkout: Option<bool>,
    out: &mut Vec<StepDef>,
) -> Result<(), StepsError> {
    for item in items {
        match item {
            Y::String(s) if NON_COMMAND_KEYS.contains(&s.trim()) => {}
            Y::Mapping(m) => {
                if NON_COMMAND_KEYS.iter().any(|k| m.contains_key(*k)) {
                    continue;
                }
                if let Some(group) = get(m, &["group"]).map(|_| m.get("steps")) {
                    match group {
                        Some(Y::Sequence(inner)) => collect_steps(inner, default_agents, default_checkout, out)?,
                        _ => return err("a group step needs `steps`"),
                    }
                    continue;
                }
                out.push(command_step(m, default_agents, default_checkout)?);
            }
            Y::Null => {}
            _ => return err("each step must be a map"),
        }
    }
    Ok(())
}

/// Parses a steps document: a map with `steps` (and optional top-level `env`, `agents`,
/// `checkout`; unknown top-level keys such as YAML anchor holders are ignored) or a bare
/// list of steps. A document without steps is refused.
pub fn settings_from_value(v: &Y) -> Result<Settings, StepsError> {
    let (steps, m) = match v {
        Y::Sequence(s) => (s.as_slice(), None),
        Y::Mapping(m) => match m.get("steps") {
            Some(Y::Sequence(s)) => (s.as_slice(), Some(m)),
            Some(_) => return err("`steps` must be a list"),
            None => return err("The pipeline configuration has no `steps`"),
        },
        Y::Null => return err("The pipeline configuration is empty"),
        _ => return err("The pipeline configuration must be a map with `steps`"),
    };
    let mut settings = Settings::default();
    let mut default_agents = Vec::new();
    let mut default_checkout = None;
    if let Some(m) = m {
        if let Some(e) = get(m, &["env"]) {
            settings.env = string_map(e, "env")?;
        }
        if let Some(a) = get(m, &["agents"]) {
            default_agents = agent_rules(a)?;
        }
        if let Some(Y::Mapping(c)) = get(m, &["checkout"])
            && let Some(skip) = get(c, &["skip"])
        {
            default_checkout = Some(bool_like(skip, "checkout.skip")?);
        }
    }
    collect_steps(steps, &default_agents, default_checkout, &mut settings.steps)?;
    if settings.steps.is_empty() {
        return err("The pipeline configuration has no command steps");
    }
    Ok(settings)
}

/// A branch pattern (`main feature/* !feature/beta`): "any positive pattern must match, and
/// every negative pattern must not match" (docs "Branch configuration" → "Branch pattern
/// examples"). A blank pattern matches every branch.
pub fn branch_matches(pattern: &str, branch: &str) -> bool {
    let words: Vec<&str> = pattern.split_whitespace().map(|w| w.trim_matches(['\'', '"'])).collect();
    let (neg, pos): (Vec<&str>, Vec<&str>) = words.iter().partition(|w| w.starts_with('!'));
    let pos_ok = pos.is_empty() || pos.iter().any(|p| crate::glob::wildcard_match(p, branch));
    let neg_ok = neg.iter().all(|n| !crate::glob::wildcard_match(&n[1..], branch));
    pos_ok && neg_ok
}

/// Derives a pipeline slug from its name like Buildkite (docs "Deriving a pipeline slug from
/// the pipeline's name": runs of spaces become one `-`, upper case becomes lower case, and
/// the slug must match `/\A[a-zA-Z0-9]+[a-zA-Z0-9\-]*\z/`, at most 100 characters). Other
/// characters are dropped (Rails' `parameterize`); `None` if nothing valid is left.
pub fn slug_from_name(name: &str) -> Option<String> {
    let mut out = String::new();
    let mut dash = false;
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        } else if c.is_whitespace() || c == '-' || c == '_' || c == '.' || c == '/' {
            dash = true;
        }
    }
    valid_slug(&out).then_some(out)
}

/// `/\A[a-zA-Z0-9]+[a-zA-Z0-9\-]*\z/`, at most 100 characters.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_step_attributes() {
        let v = parse_yaml(
            r#"
retry_policy: &rp
  automatic:
    - exit_status: -1
      signal_reason: none
      limit: 2
    - exit_status: -1
      signal_reason: agent_stop
env: {A: "1"}
steps:
  - label: ":gpu: run"
    key: run
    commands: ["echo a", "echo b"]
    agents: {queue: nvidia-h100}
    artifact_paths: [result.json, "out/*"]
    timeout_in_minutes: 15
    env: {B: 2}
    checkout: {skip: true}
    retry: *rp
    soft_fail: true
    priority: 3
  - wait
  - group: g
    steps:
      - command: x
        agents: ["queue=q2"]
        retry: {automatic: true}
"#,
        )
        .unwrap();
        let s = settings_from_value(&v).unwrap();
        assert_eq!(s.env["A"], "1");
        assert_eq!(s.steps.len(), 2);
        let a = &s.steps[0];
        assert_eq!(a.command.as_deref(), Some("echo a\necho b"));
        assert_eq!(a.agents, vec!["queue=nvidia-h100"]);
        assert_eq!(a.artifact_paths, "result.json;out/*");
        assert_eq!(a.timeout, Some(Duration::from_secs(900)));
        assert_eq!(a.env["B"], "2");
        assert_eq!(a.checkout_skip, Some(true));
        assert_eq!(a.retry.len(), 2);
        assert_eq!(a.retry[0].signal_reason, TextMatch::Values(vec![None]));
        assert_eq!(a.retry[1].limit, 2, "default limit");
        assert_eq!(s.steps[1].retry, vec![RetryRule::default_rule()]);
        assert_eq!(s.steps[1].checkout_skip, None);
    }

    #[test]
    fn refuses_what_has_no_steps_or_bad_rules() {
        assert!(parse_yaml("steps: [").is_err());
        for bad in [
            "env: {A: 1}",
            "steps: []",
            "steps: x",
            "",
            "steps: [{command: x, retry: {automatic: {limit: 11}}}]",
            "steps: [{command: x, retry: {automatic: {exit_status: 300}}}]",
            "steps: [{command: x, timeout_in_minutes: soon}]",
            "steps: [{command: x, checkout: {skip: maybe}}]",
            "steps: [5]",
        ] {
            let v = parse_yaml(bad).unwrap();
            assert!(settings_from_value(&v).is_err(), "{bad}");
        }
        // a bare list of steps is a pipeline too
        let v = parse_yaml("- command: x").unwrap();
        assert_eq!(settings_from_value(&v).unwrap().steps.len(), 1);
    }

    #[test]
    fn retry_matching_follows_the_docs() {
        let any = RetryRule::default_rule();
        assert!(any.matches(Some(1), None, None));
        assert!(!any.matches(Some(-1), None, None), "\"*\" is 1..=255, not -1");
        assert!(!any.matches(Some(0), None, None));
        let lost = RetryRule {
            exit_status: ExitMatch::Codes(vec![-1]),
            signal_reason: TextMatch::Values(vec![None]),
            ..RetryRule::default_rule()
        };
        assert!(lost.matches(Some(-1), None, None));
        assert!(!lost.matches(Some(-1), Some("SIGTERM"), Some("cancel")));
        let killed = RetryRule {
            exit_status: ExitMatch::Codes(vec![-1]),
            signal: TextMatch::Values(vec![Some("kill".into())]),
            ..RetryRule::default_rule()
        };
        assert!(killed.matches(Some(-1), Some("SIGKILL"), Some("cancel")));
        assert!(!killed.matches(Some(-1), Some("SIGTERM"), Some("cancel")));
    }

    #[test]
    fn interpolation_uses_only_the_given_variables() {
        let vars = build_variables("b1", "abc", "m", "p", "P", "id", "org", "git@x:y.git");
        let v = parse_yaml("steps: [{command: 'echo $$HOME ${KERNELBOT_QUEUE}', agents: {queue: '${KERNELBOT_QUEUE:-default}'}, label: '${BUILDKITE_BRANCH}'}]").unwrap();
        let s = settings_from_value(&interpolate_value(&v, &vars)).unwrap();
        assert_eq!(s.steps[0].command.as_deref(), Some("echo $HOME "));
        assert_eq!(s.steps[0].agents, vec!["queue=default"]);
        assert_eq!(s.steps[0].label, "b1");
    }

    #[test]
    fn branch_patterns_and_slugs() {
        assert!(branch_matches("", "x"));
        assert!(branch_matches("main feature/*", "feature/a"));
        assert!(!branch_matches("main feature/*", "dev"));
        assert!(branch_matches("!main", "dev"));
        assert!(!branch_matches("!main", "main"));
        assert!(!branch_matches("stages/* !stages/production", "stages/production"));
        assert_eq!(slug_from_name("Hello    There Friend").as_deref(), Some("hello-there-friend"));
        assert_eq!(slug_from_name("benchkite nvidia-h100").as_deref(), Some("benchkite-nvidia-h100"));
        assert_eq!(slug_from_name("  ***  "), None);
        assert!(valid_slug("a-b-1") && !valid_slug("-a") && !valid_slug(&"a".repeat(101)));
    }
}
