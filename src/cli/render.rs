//! How a KernelJob reads on a terminal: the live progress line, the result, the table of
//! `benchkite get`, and the outcome (with its exit code). Pure functions of the job and the
//! clock, so they are tested as golden strings.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::api::KernelJob;
use crate::api::kerneljob::{BenchmarkStatus, KernelJobStatus, Phase, RankingBy, TestsStatus};

/// Exit codes of `benchkite submit --wait` (and `submit` without `--wait`: 0 once created).
pub mod exit {
    /// The kernel passed (or, without `--wait`, the job was created).
    pub const PASSED: i32 = 0;
    /// The evaluation ran and the kernel failed: tests failed, it did not compile, it crashed,
    /// or no run gave a verdict.
    pub const KERNEL_FAILED: i32 = 1;
    /// Bad usage, an unreadable task or submission, or a Kubernetes API error (clap's own
    /// code for usage errors).
    pub const USAGE_OR_API: i32 = 2;
    /// The job ended without a kernel verdict: Failed (infrastructure, build, refusal),
    /// TimedOut, Cancelled, or deleted while waited for.
    pub const JOB_FAILED: i32 = 3;
    /// `--timeout` passed before the job finished (the job keeps running).
    pub const WAIT_TIMED_OUT: i32 = 4;
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The evaluation ran and the kernel passed.
    Passed,
    /// The evaluation ran and the kernel failed; why.
    KernelFailed(String),
    /// The job ended without a verdict; its phase and why.
    JobFailed(String),
    /// The wait's timeout passed first.
    WaitTimedOut,
}

impl Outcome {
    /// The process exit code of this outcome (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Passed => exit::PASSED,
            Outcome::KernelFailed(_) => exit::KERNEL_FAILED,
            Outcome::JobFailed(_) => exit::JOB_FAILED,
            Outcome::WaitTimedOut => exit::WAIT_TIMED_OUT,
        }
    }

    /// One line for a person.
    pub fn headline(&self) -> String {
        match self {
            Outcome::Passed => "PASSED".to_string(),
            Outcome::KernelFailed(why) => format!("FAILED: {why}"),
            Outcome::JobFailed(why) => format!("JOB FAILED: {why}"),
            Outcome::WaitTimedOut => "still running: the wait timed out (the job goes on)".to_string(),
        }
    }
}

/// The outcome of a finished job; `None` while it has not finished.
pub fn outcome(job: &KernelJob) -> Option<Outcome> {
    let status = job.status.as_ref()?;
    if !status.phase.is_finished() {
        return None;
    }
    Some(match status.phase {
        Phase::Succeeded => match status.passed {
            Some(true) => Outcome::Passed,
            Some(false) => Outcome::KernelFailed(kernel_failure(status)),
            None => Outcome::KernelFailed("no run reported a verdict".to_string()),
        },
        phase => {
            let reason = finished_reason(status);
            let mut why = phase.as_str().to_string();
            if !reason.is_empty() {
                let _ = write!(why, " ({reason})");
            }
            if !status.message.is_empty() {
                let _ = write!(why, ": {}", status.message);
            }
            Outcome::JobFailed(why)
        }
    })
}

/// Why a kernel that ran failed, the most basic cause first.
fn kernel_failure(status: &KernelJobStatus) -> String {
    let runs = status.result.as_ref().map(|r| &r.runs);
    if let Some(runs) = runs {
        if let Some((name, _)) = runs.iter().find(|(_, r)| r.compiled == Some(false)) {
            return format!("did not compile ({name} run)");
        }
        if let Some((name, r)) = runs.iter().find(|(_, r)| r.success == Some(false)) {
            let code = r.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
            return format!("the {name} run crashed{code}");
        }
    }
    if let Some(t) = tests(status)
        && t.passed < t.total
    {
        return format!("{} of {} tests failed", t.total - t.passed, t.total);
    }
    "the kernel failed its checks".to_string()
}

/// The reason of the `Failed` condition (else of any False/True condition naming one).
fn finished_reason(status: &KernelJobStatus) -> String {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn tests(status: &KernelJobStatus) -> Option<&TestsStatus> {
    status.summary.as_ref().and_then(|s| s.tests.as_ref()).or_else(|| {
        let runs = &status.result.as_ref()?.runs;
        ["test", "leaderboard", "benchmark"].iter().find_map(|n| runs.get(*n).and_then(|r| r.tests.as_ref()))
    })
}

fn benchmarks(status: &KernelJobStatus) -> &[BenchmarkStatus] {
    if let Some(s) = &status.summary
        && !s.benchmarks.is_empty()
    {
        return &s.benchmarks;
    }
    status
        .result
        .as_ref()
        .and_then(|r| {
            ["leaderboard", "benchmark"].iter().filter_map(|n| r.runs.get(*n)).find(|r| !r.benchmarks.is_empty())
        })
        .map(|r| r.benchmarks.as_slice())
        .unwrap_or_default()
}

/// The status as JSON, so fields other versions add (`queuePosition`, `estimatedStartTime`,
/// `cachedFrom`) are read by name and shown when there, with no type here needing them.
pub fn status_json(job: &KernelJob) -> Value {
    job.status.as_ref().and_then(|s| serde_json::to_value(s).ok()).unwrap_or(Value::Null)
}

/// The queue position (1 = next) in a status, when it has one.
pub fn queue_position(status: &Value) -> Option<i64> {
    status.get("queuePosition")?.as_i64()
}

/// The estimated start in a status, when it has one.
pub fn estimated_start(status: &Value) -> Option<jiff::Timestamp> {
    status.get("estimatedStartTime")?.as_str()?.parse().ok()
}

/// The build's number and web URL: the current build, else the last attempt's.
pub fn build_link(job: &KernelJob) -> Option<(i64, String)> {
    let status = job.status.as_ref()?;
    let build = status.build.as_ref().or_else(|| status.attempts.iter().rev().find_map(|a| a.build.as_ref()))?;
    Some((build.number, build.web_url.clone()))
}

/// `42s`, `3m07s`, `1h02m`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// An age like kubectl prints it: `42s`, `5m`, `3h`, `2d`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A time in nanoseconds with a readable unit.
pub fn nanos(v: f64) -> String {
    let a = v.abs();
    if a < 1e3 {
        format!("{v:.0} ns")
    } else if a < 1e6 {
        format!("{:.2} us", v / 1e3)
    } else if a < 1e9 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.3} s", v / 1e9)
    }
}

/// The live progress line: elapsed time first (it always changes), then the phase, the
/// queue position and estimated start when known, the build, and the status message.
pub fn progress_line(job: &KernelJob, waited: Duration, now: jiff::Timestamp) -> String {
    progress_line_with(job, &status_json(job), waited, now)
}

/// [`progress_line`] with the status as JSON given (see [`status_json`]).
pub fn progress_line_with(job: &KernelJob, status: &Value, waited: Duration, now: jiff::Timestamp) -> String {
    let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let mut line = format!("[{}] {} {}", elapsed(waited), job.metadata.name.as_deref().unwrap_or("?"), phase.as_str());
    if let Some(p) = queue_position(status) {
        let _ = write!(line, " | position {p}");
    }
    if let Some(at) = estimated_start(status) {
        let secs = at.as_second() - now.as_second();
        if secs > 0 {
            let _ = write!(line, " | starts in ~{}", elapsed(Duration::from_secs(secs.unsigned_abs())));
        } else {
            let _ = write!(line, " | starting");
        }
    }
    if let Some((number, url)) = build_link(job) {
        let _ = write!(line, " | build #{number}");
        if !url.is_empty() {
            let _ = write!(line, " {url}");
        }
    }
    if let Some(msg) = job.status.as_ref().map(|s| s.message.as_str()).filter(|m| !m.is_empty()) {
        let _ = write!(line, " | {}", first_line(msg));
    }
    line
}

/// The progress line without what changes every second: plain output prints a line only
/// when this changes.
pub fn progress_key(job: &KernelJob, now: jiff::Timestamp) -> String {
    let line = progress_line(job, Duration::ZERO, now);
    line.split_once("] ").map(|(_, rest)| rest.to_string()).unwrap_or(line)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// Cuts `line` to `width` characters (a progress line must not wrap, or `\r` cannot redraw it).
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut out: String = line.chars().take(width.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// The result as people read it: verdict, tests (the failing ones named), the benchmark
/// table, the score, where it ran, the build link.
pub fn result_text(job: &KernelJob) -> String {
    result_text_with(job, &status_json(job))
}

/// [`result_text`] with the status as JSON given (see [`status_json`]).
pub fn result_text_with(job: &KernelJob, status_value: &Value) -> String {
    let mut out = String::new();
    let ns = job.metadata.namespace.as_deref().unwrap_or("");
    let name = job.metadata.name.as_deref().unwrap_or("?");
    let target = match (&job.spec.pool, &job.spec.queue) {
        (Some(pool), _) => format!("pool {pool}"),
        (None, Some(q)) => format!("queue {q}"),
        (None, None) => "no target".to_string(),
    };
    let mode =
        serde_json::to_value(job.spec.mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let Some(status) = job.status.as_ref() else {
        let _ = writeln!(out, "KernelJob {ns}/{name}: no status yet ({mode} on {target})");
        return out;
    };
    let _ = writeln!(out, "KernelJob {ns}/{name}: {} ({mode} on {target})", status.phase.as_str());
    let verdict = outcome(job).map(|o| o.headline()).unwrap_or_else(|| "not finished".to_string());
    let _ = writeln!(out, "Verdict:    {verdict}");
    if let Some(from) = status_value.get("cachedFrom").and_then(|c| c.get("job")).and_then(Value::as_str) {
        let when = status_value["cachedFrom"]["completionTime"]
            .as_str()
            .map(|t| format!(", finished {t}"))
            .unwrap_or_default();
        let _ = writeln!(out, "Cached:     the result of {from}{when} (result cache: no build ran)");
    }
    if !status.phase.is_finished() && !status.message.is_empty() {
        let _ = writeln!(out, "Message:    {}", first_line(&status.message));
    }
    if let Some(t) = tests(status) {
        let failed = t.total - t.passed;
        if failed > 0 {
            let _ = writeln!(out, "Tests:      {}/{} passed, {failed} failed:", t.passed, t.total);
            for f in &t.failures {
                let _ = writeln!(out, "  FAIL {}", first_line(f));
            }
            let unnamed = usize::try_from(failed).unwrap_or(0).saturating_sub(t.failures.len());
            if unnamed > 0 && !t.failures.is_empty() {
                let _ = writeln!(out, "  ... and {unnamed} more");
            }
        } else {
            let _ = writeln!(out, "Tests:      {}/{} passed", t.passed, t.total);
        }
    }
    if let Some(result) = &status.result {
        for (run, r) in &result.runs {
            let mut problems = Vec::new();
            if r.compiled == Some(false) {
                problems.push("did not compile".to_string());
            }
            if r.success == Some(false) {
                problems.push(format!("crashed (exit {})", r.exit_code.map_or("?".to_string(), |c| c.to_string())));
            }
            if let Some(e) = r.error.as_deref().filter(|e| !e.is_empty()) {
                problems.push(first_line(e).to_string());
            }
            if !problems.is_empty() {
                let _ = writeln!(out, "Run {run}: {}", problems.join("; "));
            }
        }
        if !result.error.is_empty() {
            let _ = writeln!(out, "Error:      {}", first_line(&result.error));
        }
    }
    let benches = benchmarks(status);
    if !benches.is_empty() {
        let _ = writeln!(out, "Benchmarks:");
        out.push_str(&benchmark_table(benches));
    }
    if let Some(score) = status.score {
        let by = match job.spec.ranking_by {
            Some(RankingBy::Mean) => "mean",
            Some(RankingBy::Geom) => "geom",
            Some(RankingBy::Last) | None => "last",
        };
        let _ = writeln!(out, "Score:      {} ({by}; {score:.6e} s)", nanos(score * 1e9));
    }
    if let Some(line) = fingerprint_line(status) {
        let _ = writeln!(out, "Ran on:     {line}");
    }
    if let Some((number, url)) = build_link(job) {
        let _ = writeln!(out, "Build:      #{number} {url}");
    }
    if status.attempt_count > 1 {
        let _ = writeln!(out, "Attempts:   {}", status.attempt_count);
    }
    if status.phase.is_finished() && status.phase != Phase::Succeeded && !status.message.is_empty() {
        let _ = writeln!(out, "Message:    {}", first_line(&status.message));
    }
    out
}

fn benchmark_table(benches: &[BenchmarkStatus]) -> String {
    let dash = || "-".to_string();
    let mut rows = vec![["SPEC", "RUNS", "MEAN", "STD", "BEST", "WORST"].map(str::to_string).to_vec()];
    for b in benches {
        if let Some(e) = &b.error {
            rows.push(vec![b.spec.clone(), format!("error: {}", first_line(e))]);
            continue;
        }
        rows.push(vec![
            b.spec.clone(),
            b.runs.map_or_else(dash, |r| r.to_string()),
            b.mean.map_or_else(dash, nanos),
            b.std.map_or_else(dash, nanos),
            b.best.map_or_else(dash, nanos),
            b.worst.map_or_else(dash, nanos),
        ]);
    }
    table(&rows, "  ", &[false, true, true, true, true, true])
}

/// Rows as columns separated by three spaces, each line after `indent`; `right` aligns a
/// column to the right. A short row (an error) runs on past the columns.
fn table(rows: &[Vec<String>], indent: &str, right: &[bool]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for row in rows.iter().filter(|r| r.len() == cols) {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_string();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            let pad = if row.len() == cols { widths[i].saturating_sub(cell.chars().count()) } else { 0 };
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn fingerprint_line(status: &KernelJobStatus) -> Option<String> {
    let system = status.result.as_ref()?.system.as_ref()?;
    let mut parts = Vec::new();
    let f = system.fingerprint.clone().unwrap_or_default();
    let model = if f.gpu_model.is_empty() { system.gpu.clone() } else { f.gpu_model.clone() };
    if !model.is_empty() {
        parts.push(if f.gpu_uuid.is_empty() { model } else { format!("{model} ({})", f.gpu_uuid) });
    }
    if !f.driver_version.is_empty() {
        parts.push(format!("driver {}", f.driver_version));
    }
    if !f.cuda_version.is_empty() {
        parts.push(format!("CUDA {}", f.cuda_version));
    }
    if !f.rocm_version.is_empty() {
        parts.push(format!("ROCm {}", f.rocm_version));
    }
    if !f.node.is_empty() {
        let slot = if f.slot.is_empty() { String::new() } else { format!(" slot {}", f.slot) };
        parts.push(format!("node {}{slot}", f.node));
    }
    if !f.certification_epoch.is_empty() {
        parts.push(format!("certification epoch {}", f.certification_epoch));
    }
    if f.harness_sha256.len() >= 12 {
        parts.push(format!("harness {}", &f.harness_sha256[..12]));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The table of `benchkite get`.
pub fn jobs_table(jobs: &[KernelJob], all_namespaces: bool, wide: bool, now: jiff::Timestamp) -> String {
    let mut header = vec!["NAME", "PHASE", "TARGET", "SUBMITTER", "POSITION", "AGE", "SCORE"];
    if wide {
        header.extend(["MODE", "PASSED", "BUILD", "URL"]);
    }
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(str::to_string).collect::<Vec<_>>()];
    for job in jobs {
        let status = job.status.as_ref();
        let mut row = vec![
            job.metadata.name.clone().unwrap_or_default(),
            status.map_or("Pending", |s| s.phase.as_str()).to_string(),
            match (&job.spec.pool, &job.spec.queue) {
                (Some(p), _) => p.clone(),
                (None, Some(q)) => format!("queue:{q}"),
                (None, None) => "<none>".to_string(),
            },
            job.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(super::SUBMITTER_LABEL))
                .cloned()
                .unwrap_or_else(|| "<none>".to_string()),
            queue_position(&status_json(job)).map_or_else(|| "-".to_string(), |p| p.to_string()),
            job.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| age(Duration::from_secs((now.as_second() - t.0.as_second()).max(0).unsigned_abs())))
                .unwrap_or_else(|| "<unknown>".to_string()),
            status.and_then(|s| s.score).map_or_else(|| "-".to_string(), |s| nanos(s * 1e9)),
        ];
        if wide {
            row.push(
                serde_json::to_value(job.spec.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            );
            row.push(status.and_then(|s| s.passed).map_or_else(|| "-".to_string(), |p| p.to_string()));
            let link = build_link(job);
            row.push(link.as_ref().map_or_else(|| "-".to_string(), |(n, _)| n.to_string()));
            row.push(link.map(|(_, u)| u).filter(|u| !u.is_empty()).unwrap_or_else(|| "-".to_string()));
        }
        if all_namespaces {
            row.insert(0, job.metadata.namespace.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    table(&rows, "", &[])
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
