//! The documented reduction steps (see [`super`]) that make a summary fit in
//! [`MAX_SUMMARY_BYTES`].

use super::super::payload::RankingBy;
use super::super::text::truncate_str;
use super::*;

/// Applies the documented reduction steps until the JSON fits in [`MAX_SUMMARY_BYTES`].
pub(super) fn shrink_to_fit(s: &mut ResultSummary) {
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

pub(super) fn drop_runs_and_system(s: &mut ResultSummary) {
    s.runs.clear();
    s.system = s.system.take().and_then(|sys| {
        let fingerprint = sys.fingerprint.filter(|f| !f.is_empty());
        let canary = sys.canary;
        (fingerprint.is_some() || canary.is_some()).then(|| SystemSummary {
            device_count: sys.device_count,
            fingerprint,
            canary,
            ..SystemSummary::default()
        })
    });
}

fn drop_error(s: &mut ResultSummary) {
    s.error.clear();
    if let Some(RankingBy::Other(r)) = &mut s.ranking_by {
        shorten(r, MAX_RANKING_BYTES);
    }
}
