//! Building a [`ResultSummary`] from a [`FullResult`]: the verdict, the score and the
//! per-run test and benchmark digests, each bounded by the caps of [`super`].

use std::collections::BTreeMap;

use super::super::payload::RankingBy;
use super::super::result::{EvalResult, FullResult, SystemInfo, run_name};
use super::super::text::{truncate_str, truncate_str_tail};
use super::*;

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
pub(super) fn run_order(name: &str) -> (u8, u64, &str) {
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
        fingerprint: None,
        canary: None,
    };
    (!(s.gpu.is_empty() && s.runtime.is_empty() && s.hostname.is_empty())).then_some(s)
}

pub(super) fn summarize_run(eval: &EvalResult, truncated: &mut bool) -> RunSummary {
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

pub(super) fn summarize_tests(result: &BTreeMap<String, String>, truncated: &mut bool) -> Option<TestsSummary> {
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

pub(super) fn summarize_benchmarks(
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
