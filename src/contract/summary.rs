//! A compact, bounded, versioned view of a [`FullResult`](super::result::FullResult): what
//! the runner puts in the build meta-data `benchkite.result` and the controller puts in
//! KernelJob status, so the result arrives with the build object at no extra request and
//! never bloats etcd.
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
//! 9. all runs removed, and the system info but its fingerprint and canary;
//! 10. the top-level error removed (and an unknown `ranking_by` cut to 32 bytes).
//!
//! After step 10 only fixed-size fields remain (the fingerprint's strings are each capped at
//! [`MAX_FINGERPRINT_FIELD_BYTES`](super::fingerprint::MAX_FINGERPRINT_FIELD_BYTES), about 3 KiB in all), so the bound always holds. `success`,
//! `passed`, `score` and `ranking_by` are never dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fingerprint::Fingerprint;
use super::payload::RankingBy;
use super::result::run_name;
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

/// The parts of [`SystemInfo`](super::result::SystemInfo) worth showing in status, and the
/// runner's environment fingerprint (not in `result.json`, which stays kernelbot's format).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    /// Where and how it was measured (absent in summaries of older runners and in summaries
    /// made from `result.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// The drift canary this slot timed after the evaluation, when it was due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySummary>,
}

/// One timing of the reference suite's canary kernel on the slot that ran the job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CanarySummary {
    /// The suite kernel (at most 40 bytes).
    pub kernel: String,
    /// Its ranked time, seconds.
    pub seconds: f64,
    /// When it ran (Unix seconds).
    pub at: i64,
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
        if let Some(f) = self.system.as_ref().and_then(|s| s.fingerprint.as_ref()) {
            f.check_bounds()?;
        }
        if let Some(c) = self.system.as_ref().and_then(|s| s.canary.as_ref())
            && (c.kernel.is_empty()
                || c.kernel.len() > crate::certify::suite::MAX_NAME
                || !(c.seconds.is_finite() && c.seconds > 0.0))
        {
            return Err(format!("canary {:?} is not a kernel name with a positive time", c.kernel));
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

mod from_result;
mod shrink;

pub use from_result::{score, score_from_result_map, summarize, verdict};
use shrink::shrink_to_fit;

#[cfg(test)]
mod tests;
