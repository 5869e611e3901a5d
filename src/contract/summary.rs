//! A compact, bounded, versioned view of a [`FullResult`]: what the runner puts in the build
//! meta-data `benchkite.result` and the controller puts in KernelJob status, so the result
//! arrives with the build object at no extra request and never bloats etcd.
//!
//! The serialised summary is always at most [`MAX_SUMMARY_BYTES`]. Detail is bounded first
//! by fixed caps (see the constants), then, if the JSON is still too large, dropped in this
//! order until it fits, setting `truncated: true`:
//!
//! 1. texts shortened: failure messages and specs to 64 bytes, benchmark errors to 64 bytes,
//!    benchmark specs removed, run errors to 128 bytes;
//! 2. benchmark lists removed from every run except the ranked one (`leaderboard` if it has
//!    benchmarks, else `benchmark`);
//! 3. at most 3 failing tests kept per run;
//! 4. all benchmark lists removed (`benchmark_count` stays);
//! 5. all failing-test lists removed (the counts stay);
//! 6. run errors removed;
//! 7. runs other than `test`, `benchmark` and `leaderboard` removed;
//! 8. the top-level error cut to 256 bytes and system fields to 32 bytes;
//! 9. all runs and the system info removed;
//! 10. the top-level error removed (and an unknown `ranking_by` cut to 32 bytes).
//!
//! After step 10 only fixed-size fields remain, so the bound always holds. `success`,
//! `passed`, `score` and `ranking_by` are never dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payload::RankingBy;
use super::result::{EvalResult, FullResult, SystemInfo, run_name};
use super::text::{truncate_str, truncate_str_tail};

/// Version of the summary format; readers refuse any other.
pub const SUMMARY_VERSION: u64 = 1;
/// Upper bound of the serialised summary (bytes).
pub const MAX_SUMMARY_BYTES: usize = 8 * 1024;
/// Build meta-data key the runner writes the summary under.
pub const META_DATA_KEY: &str = "benchkite.result";

/// Cap on the top-level error text.
pub const MAX_ERROR_BYTES: usize = 1024;
/// Cap on the number of runs kept (canonical order: test, benchmark, leaderboard, profile.N).
pub const MAX_RUNS: usize = 16;
/// Runs with longer names are left out.
pub const MAX_RUN_NAME_BYTES: usize = 64;
/// Cap on failing tests listed per run.
pub const MAX_FAILURES: usize = 10;
/// Cap on a failing test's message.
pub const MAX_MESSAGE_BYTES: usize = 256;
/// Cap on a test's or benchmark's spec.
pub const MAX_SPEC_BYTES: usize = 128;
/// Cap on benchmarks listed per run.
pub const MAX_BENCHMARKS: usize = 32;
/// Cap on a run's error text (compiler output head or stderr tail).
pub const MAX_RUN_ERROR_BYTES: usize = 512;
/// Cap on each system-info string.
pub const MAX_SYSTEM_FIELD_BYTES: usize = 128;
/// Cap on an unknown `ranking_by` spelling.
pub const MAX_RANKING_BYTES: usize = 32;

fn is_false(b: &bool) -> bool {
    !*b
}

/// The compact result. Field names are part of the format (version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultSummary {
    /// Format version ([`SUMMARY_VERSION`]).
    pub v: u64,
    /// The infrastructure worked (`FullResult.success`).
    pub success: bool,
    /// The kernel's verdict: every run that ran succeeded and passed, and nothing failed to
    /// compile. `None` when nothing ran (infrastructure failure, no runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// `FullResult.error`, shortened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemSummary>,
    /// Per-run outcome by run name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, RunSummary>,
    /// The criterion `score` was computed with (present when there is a ranked run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking_by: Option<RankingBy>,
    /// Seconds, per the contract's formula; `None` when not scorable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Some detail was shortened or left out to respect the bounds.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// The parts of [`SystemInfo`] worth showing in status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemSummary {
    /// GPU model.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu: String,
    /// Visible GPUs.
    pub device_count: i64,
    /// `CUDA` or `ROCm`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// Host name up to the first dot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
}

/// Outcome of one run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunSummary {
    /// Compile step succeeded (absent when there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled: Option<bool>,
    /// Exit code 0 or 112 (absent when the harness did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// `check: pass` (absent when the harness did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Harness exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Wall seconds, rounded to the millisecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Why it failed: head of the compiler output, or tail of the run's stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Test outcome, when the run reported tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsSummary>,
    /// `benchmark-count` (or the benchmarks seen), when the run reported benchmarks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benchmark_count: Option<u64>,
    /// Per-benchmark statistics in index order (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub benchmarks: Vec<BenchmarkSummary>,
}

/// Test counts and the failing tests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TestsSummary {
    /// `test-count`, or the highest index seen + 1.
    pub total: u64,
    /// Tests with status `pass`.
    pub passed: u64,
    /// Tests with another status.
    pub failed: u64,
    /// The first failing tests (bounded), in index order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TestFailure>,
}

/// A failing test, named by its spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TestFailure {
    /// `i` in `test.{i}.*`.
    pub index: u64,
    /// The test's case line, e.g. `size: 1024; seed: 42`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec: String,
    /// `test.{i}.error`, else `test.{i}.message`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Statistics of one benchmark, in nanoseconds as the harness reports them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BenchmarkSummary {
    /// `i` in `benchmark.{i}.*`.
    pub index: u64,
    /// The benchmark's case line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec: String,
    /// Timed repetitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u64>,
    /// Mean (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Standard deviation (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// Standard error of the mean (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<f64>,
    /// Fastest repetition (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<f64>,
    /// Slowest repetition (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst: Option<f64>,
    /// `benchmark.{i}.status` was not `pass` (the harness writes `fail`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
    /// `benchmark.{i}.error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ResultSummary {
    /// The summary as the meta-data value: compact JSON, at most [`MAX_SUMMARY_BYTES`]
    /// even for a hand-built summary (it is shrunk the same way as in [`summarize`]).
    pub fn to_meta_data_value(&self) -> String {
        if let Some(s) = to_json(self).filter(|s| s.len() <= MAX_SUMMARY_BYTES) {
            return s;
        }
        let mut shrunk = self.clone();
        shrink_to_fit(&mut shrunk);
        to_json(&shrunk).unwrap_or_else(|| {
            format!(
                "{{\"v\":{SUMMARY_VERSION},\"success\":{},\"error\":\"summary could not be serialised\",\"truncated\":true}}",
                self.success
            )
        })
    }

    /// The test outcome that matters: the `test` run's, else the first run reporting tests.
    pub fn tests(&self) -> Option<&TestsSummary> {
        self.runs
            .get(run_name::TEST)
            .and_then(|r| r.tests.as_ref())
            .or_else(|| self.runs.values().find_map(|r| r.tests.as_ref()))
    }

    /// The benchmarks that matter: the ranked run's when it has any, else the benchmark
    /// run's, else none.
    pub fn ranked_benchmarks(&self) -> &[BenchmarkSummary] {
        [run_name::LEADERBOARD, run_name::BENCHMARK]
            .iter()
            .filter_map(|n| self.runs.get(*n))
            .map(|r| r.benchmarks.as_slice())
            .find(|b| !b.is_empty())
            .unwrap_or(&[])
    }

    /// Checks what a reader relies on beyond the JSON shape (meta-data is untrusted).
    fn check_bounds(&self) -> Result<(), String> {
        if let Some(score) = self.score
            && !(score.is_finite() && score >= 0.0)
        {
            return Err(format!("score {score} is not a non-negative number"));
        }
        if self.error.len() > MAX_ERROR_BYTES {
            return Err(format!("error is over {MAX_ERROR_BYTES} bytes"));
        }
        if self.runs.len() > MAX_RUNS {
            return Err(format!("{} runs, more than {MAX_RUNS}", self.runs.len()));
        }
        for (name, run) in &self.runs {
            if name.is_empty() || name.len() > MAX_RUN_NAME_BYTES {
                return Err(format!("run name {name:?} is empty or too long"));
            }
            if let Some(d) = run.duration
                && !(d.is_finite() && d >= 0.0)
            {
                return Err(format!("run {name}: duration {d} is negative"));
            }
            if let Some(t) = &run.tests {
                if t.passed.checked_add(t.failed).is_none_or(|n| n > t.total) {
                    return Err(format!(
                        "run {name}: {} passed + {} failed exceeds {} tests",
                        t.passed, t.failed, t.total
                    ));
                }
                if t.failures.len() > MAX_FAILURES {
                    return Err(format!("run {name}: more than {MAX_FAILURES} failures listed"));
                }
            }
            if run.benchmarks.len() > MAX_BENCHMARKS {
                return Err(format!("run {name}: more than {MAX_BENCHMARKS} benchmarks listed"));
            }
        }
        Ok(())
    }
}

fn to_json(s: &ResultSummary) -> Option<String> {
    serde_json::to_string(s).ok()
}

fn json_len(s: &ResultSummary) -> usize {
    to_json(s).map_or(usize::MAX, |j| j.len())
}

/// Why a meta-data summary was refused; the controller then falls back to `result.json`.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// Empty value.
    #[error("result summary is empty")]
    Empty,
    /// Larger than any summary we write.
    #[error("result summary is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// [`MAX_SUMMARY_BYTES`].
        limit: usize,
    },
    /// Not JSON, or not the summary's shape.
    #[error("result summary is malformed at `{path}`: {source}")]
    Malformed {
        /// Where (`.` for the root).
        path: String,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// No `v` field: not one of ours.
    #[error("result summary has no version field `v`")]
    MissingVersion,
    /// A version this build does not read.
    #[error("result summary version {found} is not supported (expected {SUMMARY_VERSION})")]
    UnsupportedVersion {
        /// The `v` found, as JSON text (shortened).
        found: String,
    },
    /// Well-formed but inconsistent or over the bounds.
    #[error("result summary is invalid: {0}")]
    Invalid(String),
}

/// Reads a summary from build meta-data. The value is untrusted (anyone who can run a
/// build step can set it): size, version, shape and bounds are all checked.
pub fn parse_meta_data_summary(value: &str) -> Result<ResultSummary, SummaryError> {
    if value.len() > MAX_SUMMARY_BYTES {
        return Err(SummaryError::TooLarge { size: value.len(), limit: MAX_SUMMARY_BYTES });
    }
    let value = value.trim();
    if value.is_empty() {
        return Err(SummaryError::Empty);
    }
    let json: Value =
        serde_json::from_str(value).map_err(|source| SummaryError::Malformed { path: ".".to_owned(), source })?;
    let Some(obj) = json.as_object() else {
        return Err(SummaryError::Malformed {
            path: ".".to_owned(),
            source: serde::de::Error::custom("expected a JSON object"),
        });
    };
    match obj.get("v") {
        None => return Err(SummaryError::MissingVersion),
        Some(v) if v.as_u64() == Some(SUMMARY_VERSION) => {}
        Some(v) => {
            let (found, _) = truncate_str(&v.to_string(), 32);
            return Err(SummaryError::UnsupportedVersion { found });
        }
    }
    let summary: ResultSummary = serde_path_to_error::deserialize(json)
        .map_err(|e| SummaryError::Malformed { path: e.path().to_string(), source: e.into_inner() })?;
    summary.check_bounds().map_err(SummaryError::Invalid)?;
    Ok(summary)
}

/// Builds the bounded summary of a result; `ranking_by` is the config's criterion for
/// the score (the result itself does not say).
pub fn summarize(result: &FullResult, ranking_by: &RankingBy) -> ResultSummary {
    let mut truncated = false;
    let (error, cut) = truncate_str(&result.error, MAX_ERROR_BYTES);
    truncated |= cut;

    let mut names: Vec<&String> = result.runs.keys().collect();
    names.sort_by(|a, b| run_order(a).cmp(&run_order(b)));
    let mut runs = BTreeMap::new();
    for name in names {
        if name.is_empty() || name.len() > MAX_RUN_NAME_BYTES || runs.len() == MAX_RUNS {
            truncated = true;
            continue;
        }
        if let Some(eval) = result.runs.get(name) {
            runs.insert(name.clone(), summarize_run(eval, &mut truncated));
        }
    }

    let has_ranked_run = result.runs.contains_key(run_name::LEADERBOARD);
    let shown_ranking = has_ranked_run.then(|| match ranking_by {
        RankingBy::Other(s) => {
            let (s, cut) = truncate_str(s, MAX_RANKING_BYTES);
            truncated |= cut;
            RankingBy::Other(s)
        }
        known => known.clone(),
    });

    let mut summary = ResultSummary {
        v: SUMMARY_VERSION,
        success: result.success,
        passed: verdict(result),
        error,
        system: summarize_system(&result.system, &mut truncated),
        runs,
        ranking_by: shown_ranking,
        // The score uses the caller's criterion, not the possibly shortened display copy.
        score: score(result, ranking_by),
        truncated,
    };
    shrink_to_fit(&mut summary);
    summary
}

/// The kernel's verdict over all runs; see [`ResultSummary::passed`].
pub fn verdict(result: &FullResult) -> Option<bool> {
    if !result.success {
        return None;
    }
    let mut any = false;
    for eval in result.runs.values() {
        match (&eval.run, &eval.compilation) {
            (Some(run), _) => {
                any = true;
                if !(run.success && run.passed) {
                    return Some(false);
                }
            }
            (None, Some(comp)) => {
                any = true;
                if !comp.success {
                    return Some(false);
                }
            }
            (None, None) => {}
        }
    }
    any.then_some(true)
}

/// Leaderboard score in seconds, per the contract: from `runs.leaderboard` only, when the
/// infrastructure succeeded and that run succeeded and passed. `last` → `benchmark.0.mean`
/// / 1e9; `mean` → arithmetic mean of the benchmark means; `geom` → their geometric mean
/// (computed as exp of the mean log, which does not underflow). `None` when a needed mean
/// is missing, unparseable, not finite or negative (or not positive for `geom`), when
/// there are no benchmarks, or for an unknown criterion.
pub fn score(result: &FullResult, ranking_by: &RankingBy) -> Option<f64> {
    if !result.success {
        return None;
    }
    let run = result.runs.get(run_name::LEADERBOARD)?.run.as_ref()?;
    if !(run.success && run.passed) {
        return None;
    }
    score_from_result_map(&run.result, ranking_by)
}

/// [`score`] on a ranked run's `result` map alone (no success checks).
pub fn score_from_result_map(result: &BTreeMap<String, String>, ranking_by: &RankingBy) -> Option<f64> {
    let mean_secs = |i: u64| -> Option<f64> {
        let ns: f64 = result.get(&format!("benchmark.{i}.mean"))?.trim().parse().ok()?;
        (ns.is_finite() && ns >= 0.0).then_some(ns / 1e9)
    };
    let means = || -> Option<Vec<f64>> {
        let count = match result.get("benchmark-count") {
            Some(c) => Some(c.trim().parse::<u64>().ok()?),
            None => None,
        };
        let mut out = Vec::new();
        let mut i = 0u64;
        loop {
            match count {
                Some(n) if i >= n => break,
                Some(_) => out.push(mean_secs(i)?),
                None => match mean_secs(i) {
                    Some(m) => out.push(m),
                    None if result.contains_key(&format!("benchmark.{i}.mean")) => return None,
                    None => break,
                },
            }
            i += 1;
        }
        (!out.is_empty()).then_some(out)
    };
    match ranking_by {
        RankingBy::Last => mean_secs(0),
        RankingBy::Mean => {
            let m = means()?;
            Some(m.iter().sum::<f64>() / m.len() as f64)
        }
        RankingBy::Geom => {
            let m = means()?;
            if m.iter().any(|x| *x <= 0.0) {
                return None;
            }
            Some((m.iter().map(|x| x.ln()).sum::<f64>() / m.len() as f64).exp())
        }
        RankingBy::Other(_) => None,
    }
}

/// Order of runs: the contract's stages first, then profiles by number, then the rest.
fn run_order(name: &str) -> (u8, u64, &str) {
    match name {
        run_name::TEST => (0, 0, ""),
        run_name::BENCHMARK => (1, 0, ""),
        run_name::LEADERBOARD => (2, 0, ""),
        _ => match name.strip_prefix(run_name::PROFILE_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
            Some(i) => (3, i, ""),
            None => (4, 0, name),
        },
    }
}

fn summarize_system(system: &SystemInfo, truncated: &mut bool) -> Option<SystemSummary> {
    let mut cap = |s: &str| {
        let (s, cut) = truncate_str(s.trim(), MAX_SYSTEM_FIELD_BYTES);
        *truncated |= cut;
        s
    };
    let host = system.hostname.split('.').next().unwrap_or_default();
    let s = SystemSummary {
        gpu: cap(&system.gpu),
        device_count: system.device_count,
        runtime: cap(&system.runtime),
        hostname: cap(host),
    };
    (!(s.gpu.is_empty() && s.runtime.is_empty() && s.hostname.is_empty())).then_some(s)
}

fn summarize_run(eval: &EvalResult, truncated: &mut bool) -> RunSummary {
    let mut out = RunSummary { compiled: eval.compilation.as_ref().map(|c| c.success), ..RunSummary::default() };
    if let Some(comp) = eval.compilation.as_ref().filter(|c| !c.success) {
        let text = if !comp.nvcc_found {
            format!("compiler not found. {}", comp.stderr.trim())
        } else if comp.stderr.trim().is_empty() {
            comp.stdout.trim().to_owned()
        } else {
            comp.stderr.trim().to_owned()
        };
        let (text, cut) = truncate_str(text.trim(), MAX_RUN_ERROR_BYTES);
        *truncated |= cut;
        out.error = (!text.is_empty()).then_some(text);
    }
    let Some(run) = &eval.run else {
        return out;
    };
    out.success = Some(run.success);
    out.passed = Some(run.passed);
    out.exit_code = Some(run.exit_code);
    out.duration = (run.duration.is_finite() && run.duration >= 0.0).then(|| (run.duration * 1000.0).round() / 1000.0);
    if !run.success && out.error.is_none() {
        let text = if run.stderr.trim().is_empty() { run.stdout.trim() } else { run.stderr.trim() };
        let (text, cut) = truncate_str_tail(text, MAX_RUN_ERROR_BYTES);
        *truncated |= cut;
        out.error = (!text.is_empty()).then_some(text);
    }
    out.tests = summarize_tests(&run.result, truncated);
    let (count, benchmarks) = summarize_benchmarks(&run.result, truncated);
    out.benchmark_count = count;
    out.benchmarks = benchmarks;
    out
}

/// `prefix{i}.{field}` → `(i, field)`, for indices written as plain decimal digits.
fn indexed_key<'a>(key: &'a str, prefix: &str) -> Option<(u64, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (idx, field) = rest.split_once('.')?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((idx.parse().ok()?, field))
}

fn parse_count(s: Option<&String>) -> Option<u64> {
    s.and_then(|c| c.trim().parse::<u64>().ok())
}

#[derive(Default)]
struct TestAcc<'a> {
    spec: &'a str,
    status: Option<&'a str>,
    message: &'a str,
    error: &'a str,
}

fn summarize_tests(result: &BTreeMap<String, String>, truncated: &mut bool) -> Option<TestsSummary> {
    let count = parse_count(result.get("test-count"));
    let mut tests: BTreeMap<u64, TestAcc> = BTreeMap::new();
    for (k, v) in result {
        let Some((i, field)) = indexed_key(k, "test.") else {
            continue;
        };
        let t = tests.entry(i).or_default();
        match field {
            "spec" => t.spec = v,
            "status" => t.status = Some(v.trim()),
            "message" => t.message = v,
            "error" => t.error = v,
            _ => {}
        }
    }
    if count.is_none() && !result.contains_key("test-count") && tests.is_empty() {
        return None;
    }
    let seen = tests.keys().next_back().map_or(0, |i| i.saturating_add(1));
    let mut summary = TestsSummary { total: count.unwrap_or(0).max(seen), ..TestsSummary::default() };
    for (i, t) in &tests {
        match t.status {
            Some("pass") => summary.passed += 1,
            Some(_) => {
                summary.failed += 1;
                if summary.failures.len() == MAX_FAILURES {
                    *truncated = true;
                    continue;
                }
                let (spec, c1) = truncate_str(t.spec.trim(), MAX_SPEC_BYTES);
                let msg = if t.error.trim().is_empty() { t.message } else { t.error };
                let (message, c2) = truncate_str(msg.trim(), MAX_MESSAGE_BYTES);
                *truncated |= c1 || c2;
                summary.failures.push(TestFailure { index: *i, spec, message });
            }
            None => {}
        }
    }
    Some(summary)
}

fn finite(v: Option<&String>) -> Option<f64> {
    v.and_then(|s| s.trim().parse::<f64>().ok()).filter(|f| f.is_finite())
}

fn summarize_benchmarks(
    result: &BTreeMap<String, String>,
    truncated: &mut bool,
) -> (Option<u64>, Vec<BenchmarkSummary>) {
    let count = parse_count(result.get("benchmark-count"));
    let mut fields: BTreeMap<u64, BTreeMap<&str, &String>> = BTreeMap::new();
    for (k, v) in result {
        if let Some((i, field)) = indexed_key(k, "benchmark.") {
            fields.entry(i).or_default().insert(field, v);
        }
    }
    if count.is_none() && !result.contains_key("benchmark-count") && fields.is_empty() {
        return (None, Vec::new());
    }
    let seen = fields.keys().next_back().map_or(0, |i| i.saturating_add(1));
    if fields.len() > MAX_BENCHMARKS {
        *truncated = true;
    }
    let list = fields
        .iter()
        .take(MAX_BENCHMARKS)
        .map(|(i, f)| {
            let text = |name: &str, max: usize, truncated: &mut bool| {
                let (s, cut) = truncate_str(f.get(name).map_or("", |s| s.trim()), max);
                *truncated |= cut;
                s
            };
            let error = text("error", MAX_MESSAGE_BYTES, truncated);
            BenchmarkSummary {
                index: *i,
                spec: text("spec", MAX_SPEC_BYTES, truncated),
                runs: f.get("runs").and_then(|s| {
                    let s = s.trim();
                    s.parse::<u64>().ok().or_else(|| {
                        s.parse::<f64>()
                            .ok()
                            .filter(|x| x.is_finite() && *x >= 0.0 && x.fract() == 0.0)
                            .map(|x| x as u64)
                    })
                }),
                mean: finite(f.get("mean").copied()),
                std: finite(f.get("std").copied()),
                err: finite(f.get("err").copied()),
                best: finite(f.get("best").copied()),
                worst: finite(f.get("worst").copied()),
                failed: f.get("status").is_some_and(|s| s.trim() != "pass"),
                error: (!error.is_empty()).then_some(error),
            }
        })
        .collect();
    (Some(count.unwrap_or(0).max(seen)), list)
}

/// Applies the documented reduction steps until the JSON fits in [`MAX_SUMMARY_BYTES`].
fn shrink_to_fit(s: &mut ResultSummary) {
    type Step = fn(&mut ResultSummary);
    const STEPS: [Step; 10] = [
        shorten_texts,
        keep_only_ranked_benchmarks,
        keep_three_failures,
        drop_benchmarks,
        drop_failures,
        drop_run_errors,
        keep_contract_runs,
        shorten_top_level,
        drop_runs_and_system,
        drop_error,
    ];
    if json_len(s) <= MAX_SUMMARY_BYTES {
        return;
    }
    for step in STEPS {
        step(s);
        s.truncated = true;
        if json_len(s) <= MAX_SUMMARY_BYTES {
            return;
        }
    }
}

fn shorten(s: &mut String, max: usize) {
    if s.len() > max {
        *s = truncate_str(s, max).0;
    }
}

fn shorten_texts(s: &mut ResultSummary) {
    for run in s.runs.values_mut() {
        if let Some(t) = &mut run.tests {
            for f in &mut t.failures {
                shorten(&mut f.message, 64);
                shorten(&mut f.spec, 64);
            }
        }
        for b in &mut run.benchmarks {
            b.spec.clear();
            if let Some(e) = &mut b.error {
                shorten(e, 64);
            }
        }
        let compile_error = run.compiled == Some(false);
        if let Some(e) = &mut run.error
            && e.len() > 128
        {
            *e = if compile_error { truncate_str(e, 128).0 } else { truncate_str_tail(e, 128).0 };
        }
    }
}

fn keep_only_ranked_benchmarks(s: &mut ResultSummary) {
    let ranked = [run_name::LEADERBOARD, run_name::BENCHMARK]
        .into_iter()
        .find(|n| s.runs.get(*n).is_some_and(|r| !r.benchmarks.is_empty()));
    for (name, run) in s.runs.iter_mut() {
        if Some(name.as_str()) != ranked {
            run.benchmarks.clear();
        }
    }
}

fn keep_three_failures(s: &mut ResultSummary) {
    for run in s.runs.values_mut() {
        if let Some(t) = &mut run.tests {
            t.failures.truncate(3);
        }
    }
}

fn drop_benchmarks(s: &mut ResultSummary) {
    for run in s.runs.values_mut() {
        run.benchmarks.clear();
    }
}

fn drop_failures(s: &mut ResultSummary) {
    for run in s.runs.values_mut() {
        if let Some(t) = &mut run.tests {
            t.failures.clear();
        }
    }
}

fn drop_run_errors(s: &mut ResultSummary) {
    for run in s.runs.values_mut() {
        run.error = None;
    }
}

fn keep_contract_runs(s: &mut ResultSummary) {
    s.runs.retain(|name, _| matches!(name.as_str(), run_name::TEST | run_name::BENCHMARK | run_name::LEADERBOARD));
}

fn shorten_top_level(s: &mut ResultSummary) {
    shorten(&mut s.error, 256);
    if let Some(sys) = &mut s.system {
        shorten(&mut sys.gpu, 32);
        shorten(&mut sys.runtime, 32);
        shorten(&mut sys.hostname, 32);
    }
}

fn drop_runs_and_system(s: &mut ResultSummary) {
    s.runs.clear();
    s.system = None;
}

fn drop_error(s: &mut ResultSummary) {
    s.error.clear();
    if let Some(RankingBy::Other(r)) = &mut s.ranking_by {
        shorten(r, MAX_RANKING_BYTES);
    }
}

#[cfg(test)]
mod tests;
