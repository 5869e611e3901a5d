//! A task directory in kernelbot's layout (`task.yml`) plus a submission file → the
//! evaluation part of a [`KernelJobSpec`].
//!
//! This follows kernelbot's `make_task_definition` and `build_task_config`
//! (`src/libkernelbot/task.py`): every `files:` entry `{name, source}` becomes a file named
//! `name`, whose content is the submission when `source` is `@SUBMISSION@` and otherwise the
//! file at `source` relative to the task directory (kernelbot's examples use `../eval.py`);
//! `lang`, `config` (`main` for py; `sources`, `include_dirs`, `defines`, `compile_flags`
//! for cu, where the files not listed in `config.sources` are headers), `libraries`,
//! `tests`, `benchmarks`, `ranking_by` (kernelbot's default `last`), the three timeouts,
//! `seed` and `multi_gpu` map onto the spec; `description`, `templates` and `gpus` are
//! kernelbot's own metadata and are ignored. Cases keep the key order `task.yml` wrote
//! them in (kernelbot's `build_test_string` joins a case's keys in dict order), as
//! kernelbot's line format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use serde_yaml::Value as Yaml;

use crate::api::kerneljob::{KernelJobSpec, Mode};
use crate::contract::Case;

/// The `source` that stands for the submission file.
pub const SUBMISSION_MARKER: &str = "@SUBMISSION@";

/// Keys kernelbot reads from `task.yml` (its `LeaderboardTask` fields plus the
/// `LeaderboardDefinition` metadata); anything else is refused, as kernelbot's
/// `LeaderboardTask(**raw)` refuses it.
const KNOWN_KEYS: &[&str] = &[
    "files",
    "lang",
    "config",
    "libraries",
    "tests",
    "benchmarks",
    "test_timeout",
    "benchmark_timeout",
    "ranked_timeout",
    "ranking_by",
    "seed",
    "multi_gpu",
    "description",
    "templates",
    "gpus",
];

/// A task directory read with its submission.
#[derive(Debug, Clone)]
pub struct Task {
    /// The `task.yml` read.
    pub path: PathBuf,
    /// The spec's evaluation fields (no target: pool or queue is the caller's).
    pub spec: KernelJobSpec,
}

/// Reads `dir/task.yml` (or `dir` itself when it is a file, like kernelbot) and the
/// submission, and builds the spec for `mode`.
pub fn load(dir: &Path, submission: &Path, mode: Mode) -> Result<Task> {
    let path = if dir.is_dir() { dir.join("task.yml") } else { dir.to_path_buf() };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the task file {}", path.display()))?;
    let submission_text = std::fs::read(submission)
        .with_context(|| format!("reading the submission {}", submission.display()))
        .and_then(|b| {
            String::from_utf8(b).map_err(|_| anyhow!("the submission {} is not UTF-8 text", submission.display()))
        })?;
    let root = path.parent().unwrap_or(Path::new("."));
    let spec = from_yaml(&text, root, &submission_text, mode).with_context(|| format!("in {}", path.display()))?;
    Ok(Task { path, spec })
}

/// The spec from the text of a `task.yml` whose relative sources are under `root`.
pub fn from_yaml(text: &str, root: &Path, submission: &str, mode: Mode) -> Result<KernelJobSpec> {
    let raw: Yaml = serde_yaml::from_str(text).context("task.yml is not valid YAML")?;
    let Yaml::Mapping(raw) = raw else {
        bail!("task.yml must be a mapping (files:, lang:, config:, tests:, ...)");
    };
    let mut top = BTreeMap::new();
    for (k, v) in raw {
        let key = k.as_str().ok_or_else(|| anyhow!("task.yml has a key that is not a string: {k:?}"))?.to_string();
        if !KNOWN_KEYS.contains(&key.as_str()) {
            bail!("task.yml: unknown key {key:?} (kernelbot's keys: {})", KNOWN_KEYS.join(", "));
        }
        top.insert(key, v);
    }

    let lang = match top.get("lang").map(scalar_text).transpose()?.as_deref() {
        Some("py") => "py",
        Some("cu") => "cu",
        Some(other) => bail!("task.yml: lang must be \"py\" or \"cu\", not {other:?}"),
        None => bail!("task.yml: lang is missing (\"py\" or \"cu\")"),
    };
    let files = files(top.get("files"), root, submission)?;

    let mut spec = Map::new();
    spec.insert("mode".into(), serde_json::to_value(mode)?);
    spec.insert("lang".into(), json!(lang));

    let config = match top.get("config") {
        Some(Yaml::Mapping(m)) => m.clone(),
        Some(other) => bail!("task.yml: config must be a mapping, not {}", yaml_kind(other)),
        None => bail!("task.yml: config is missing (py: config: {{main: eval.py}}; cu: config: {{sources: [...]}})"),
    };
    let config_key = |k: &str| config.get(Yaml::String(k.into()));
    if lang == "py" {
        for key in config.keys() {
            if key.as_str() != Some("main") {
                bail!("task.yml: config of a py task has only main (kernelbot's PythonTaskData), not {key:?}");
            }
        }
        let main = config_key("main").ok_or_else(|| anyhow!("task.yml: config.main is missing (the file to run)"))?;
        let main = scalar_text(main).context("task.yml: config.main")?;
        if !files.contains_key(&main) {
            bail!(
                "task.yml: config.main is {main:?}, which no files: entry names (files: {})",
                files.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        spec.insert("main".into(), json!(main));
        spec.insert("sources".into(), json!(files));
    } else {
        const CU_KEYS: &[&str] = &["sources", "include_dirs", "defines", "compile_flags"];
        for key in config.keys() {
            if !key.as_str().is_some_and(|k| CU_KEYS.contains(&k)) {
                bail!(
                    "task.yml: config of a cu task has {} (kernelbot's CudaTaskData), not {key:?}",
                    CU_KEYS.join(", ")
                );
            }
        }
        let listed = string_list(config_key("sources"), "config.sources")?;
        if listed.is_empty() {
            bail!("task.yml: config.sources is missing or empty (the files nvcc compiles)");
        }
        for name in &listed {
            if !files.contains_key(name) {
                bail!("task.yml: config.sources names {name:?}, which no files: entry names");
            }
        }
        let (sources, headers): (BTreeMap<_, _>, BTreeMap<_, _>) =
            files.into_iter().partition(|(name, _)| listed.contains(name));
        spec.insert("sources".into(), json!(sources));
        if !headers.is_empty() {
            spec.insert("headers".into(), json!(headers));
        }
        let include_dirs = string_list(config_key("include_dirs"), "config.include_dirs")?;
        if !include_dirs.is_empty() {
            spec.insert("includeDirs".into(), json!(include_dirs));
        }
        let compile_flags = string_list(config_key("compile_flags"), "config.compile_flags")?;
        if !compile_flags.is_empty() {
            spec.insert("compileFlags".into(), json!(compile_flags));
        }
        match config_key("defines") {
            None | Some(Yaml::Null) => {}
            Some(Yaml::Mapping(m)) => {
                let mut defines = BTreeMap::new();
                for (k, v) in m {
                    let k = scalar_text(k).context("task.yml: config.defines")?;
                    let v = scalar_text(v).with_context(|| format!("task.yml: config.defines.{k}"))?;
                    defines.insert(k, v);
                }
                if !defines.is_empty() {
                    spec.insert("defines".into(), json!(defines));
                }
            }
            Some(other) => bail!("task.yml: config.defines must be a mapping, not {}", yaml_kind(other)),
        }
    }
    let libraries = string_list(top.get("libraries"), "libraries")?;
    if !libraries.is_empty() {
        spec.insert("libraries".into(), json!(libraries));
    }

    let tests = cases(top.get("tests"), "tests")?;
    let benchmarks = cases(top.get("benchmarks"), "benchmarks")?;
    let multi_gpu = match top.get("multi_gpu") {
        None | Some(Yaml::Null) => false,
        Some(Yaml::Bool(b)) => *b,
        Some(other) => bail!("task.yml: multi_gpu must be true or false, not {}", yaml_kind(other)),
    };
    if multi_gpu {
        // kernelbot's own check (make_task_definition).
        for (field, list) in [("tests", &tests), ("benchmarks", &benchmarks)] {
            for (i, case) in list.iter().enumerate() {
                if case.get("world_size").is_none() {
                    bail!("task.yml: multi-gpu {field}[{i}] ({}) does not specify world_size", case.to_line());
                }
            }
        }
        spec.insert("multiGpu".into(), json!(true));
    }
    spec.insert("tests".into(), Value::Array(tests.iter().map(case_spec).collect()));
    spec.insert("benchmarks".into(), Value::Array(benchmarks.iter().map(case_spec).collect()));

    for (key, field) in [
        ("test_timeout", "testTimeoutSeconds"),
        ("benchmark_timeout", "benchmarkTimeoutSeconds"),
        ("ranked_timeout", "rankedTimeoutSeconds"),
    ] {
        match top.get(key) {
            None | Some(Yaml::Null) => {}
            Some(v) => {
                let secs = v.as_f64().filter(|s| s.is_finite() && *s > 0.0).ok_or_else(|| {
                    anyhow!("task.yml: {key} must be a positive number of seconds, not {}", yaml_text(v))
                })?;
                spec.insert(field.into(), json!(secs));
            }
        }
    }
    // kernelbot sends `ranking_by` always, `last` when the task names none.
    let ranking = match top.get("ranking_by") {
        None | Some(Yaml::Null) => "last".to_string(),
        Some(v) => scalar_text(v).context("task.yml: ranking_by")?,
    };
    if !["last", "mean", "geom"].contains(&ranking.as_str()) {
        bail!("task.yml: ranking_by must be last, mean or geom, not {ranking:?}");
    }
    spec.insert("rankingBy".into(), json!(ranking));
    match top.get("seed") {
        None | Some(Yaml::Null) => {}
        Some(v) => {
            let seed = v.as_i64().ok_or_else(|| anyhow!("task.yml: seed must be an integer, not {}", yaml_text(v)))?;
            spec.insert("seed".into(), json!(seed));
        }
    }
    serde_json::from_value(Value::Object(spec)).context("building the KernelJob spec from task.yml")
}

/// The files of `files:`, in the order given; a name given twice keeps the last (a dict).
fn files(list: Option<&Yaml>, root: &Path, submission: &str) -> Result<BTreeMap<String, String>> {
    let Some(Yaml::Sequence(list)) = list else {
        bail!("task.yml: files must be a list of {{name, source}} entries");
    };
    let mut files = BTreeMap::new();
    let mut has_submission = false;
    for (i, entry) in list.iter().enumerate() {
        let Yaml::Mapping(entry) = entry else {
            bail!("task.yml: files[{i}] must be a mapping {{name, source}}, not {}", yaml_kind(entry));
        };
        let field = |k: &str| -> Result<String> {
            let v = entry.get(Yaml::String(k.into())).ok_or_else(|| anyhow!("task.yml: files[{i}] has no {k}"))?;
            scalar_text(v).with_context(|| format!("task.yml: files[{i}].{k}"))
        };
        let name = field("name")?;
        let source = field("source")?;
        let content = if source == SUBMISSION_MARKER {
            has_submission = true;
            submission.to_string()
        } else {
            let path = root.join(&source);
            std::fs::read_to_string(&path)
                .with_context(|| format!("task.yml: files[{i}] ({name}): reading {source} ({})", path.display()))?
        };
        files.insert(name, content);
    }
    if !has_submission {
        bail!("task.yml: no files: entry has source {SUBMISSION_MARKER}, so the submission would not be sent");
    }
    Ok(files)
}

/// The cases of `tests:` or `benchmarks:` in the order their keys were written.
fn cases(list: Option<&Yaml>, field: &str) -> Result<Vec<Case>> {
    let list = match list {
        None | Some(Yaml::Null) => return Ok(Vec::new()),
        Some(Yaml::Sequence(list)) => list,
        Some(other) => bail!("task.yml: {field} must be a list of cases, not {}", yaml_kind(other)),
    };
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let Yaml::Mapping(m) = c else {
                bail!("task.yml: {field}[{i}] must be a mapping like {{size: 7, seed: 1}}, not {}", yaml_kind(c));
            };
            let mut case = Case::new();
            for (k, v) in m {
                let k = scalar_text(k).with_context(|| format!("task.yml: {field}[{i}]"))?;
                let v: Value = serde_json::to_value(v).with_context(|| format!("task.yml: {field}[{i}].{k}"))?;
                case.insert(k, v);
            }
            Ok(case)
        })
        .collect()
}

/// A case as the spec carries it: kernelbot's line (which keeps the key order) when the line
/// reads back to the same case, else a map.
fn case_spec(case: &Case) -> Value {
    let line = case.to_line();
    if Case::parse_line(&line).is_ok_and(|back| back == *case) {
        Value::String(line)
    } else {
        Value::Object(case.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

fn string_list(v: Option<&Yaml>, field: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Yaml::Null) => Ok(Vec::new()),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| scalar_text(item).with_context(|| format!("task.yml: {field}[{i}]")))
            .collect(),
        Some(other) => bail!("task.yml: {field} must be a list, not {}", yaml_kind(other)),
    }
}

/// A scalar as text (a string, or a number or bool as YAML wrote it).
fn scalar_text(v: &Yaml) -> Result<String> {
    match v {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Number(n) => Ok(n.to_string()),
        Yaml::Bool(b) => Ok(b.to_string()),
        other => bail!("expected a string, got {}", yaml_kind(other)),
    }
}

fn yaml_text(v: &Yaml) -> String {
    serde_yaml::to_string(v).map(|s| s.trim().to_string()).unwrap_or_else(|_| yaml_kind(v).to_string())
}

fn yaml_kind(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
