use super::from_result::{run_order, summarize_benchmarks, summarize_run, summarize_tests};
use super::*;
use crate::contract::result::{CompileResult, EvalResult, FullResult, ProfileResult, RunResult, SystemInfo};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn run(pairs: &[(&str, &str)]) -> RunResult {
    let result = map(pairs);
    RunResult {
        success: true,
        passed: crate::contract::result::passed(&result),
        command: "python eval.py".into(),
        stdout: String::new(),
        stderr: String::new(),
        exit_code: 0,
        duration: 1.5,
        result,
    }
}

fn eval(run: RunResult) -> EvalResult {
    EvalResult {
        start: "2025-02-04T10:00:00".into(),
        end: "2025-02-04T10:00:02".into(),
        compilation: None,
        run: Some(run),
        profile: None,
    }
}

fn full(runs: Vec<(&str, EvalResult)>) -> FullResult {
    FullResult {
        success: true,
        error: String::new(),
        system: SystemInfo {
            gpu: "NVIDIA H100 80GB HBM3".into(),
            device_count: 1,
            cpu: "AMD EPYC".into(),
            runtime: "CUDA".into(),
            platform: "Linux".into(),
            torch: "2.6.0".into(),
            hostname: "gpu-a.cluster.local".into(),
        },
        runs: runs.into_iter().map(|(n, e)| (n.to_owned(), e)).collect(),
    }
}

fn ranked(pairs: &[(&str, &str)]) -> FullResult {
    full(vec![("leaderboard", eval(run(pairs)))])
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

// ---------- score ----------

#[test]
fn score_last_is_benchmark_0_mean_in_seconds() {
    let r = ranked(&[("check", "pass"), ("benchmark-count", "1"), ("benchmark.0.mean", "4070343.5")]);
    assert_eq!(score(&r, &RankingBy::Last), Some(4070343.5 / 1e9));
    // `last` ignores other benchmarks even when present.
    let r = ranked(&[("check", "pass"), ("benchmark.0.mean", "1000"), ("benchmark.1.mean", "nan")]);
    assert_eq!(score(&r, &RankingBy::Last), Some(1e-6));
}

#[test]
fn score_mean_and_geom_of_several() {
    let r = ranked(&[
        ("check", "pass"),
        ("benchmark-count", "3"),
        ("benchmark.0.mean", "1000000"),
        ("benchmark.1.mean", "4000000"),
        ("benchmark.2.mean", "16000000"),
    ]);
    let mean = score(&r, &RankingBy::Mean).unwrap();
    assert!(close(mean, (0.001 + 0.004 + 0.016) / 3.0), "{mean}");
    let geom = score(&r, &RankingBy::Geom).unwrap();
    assert!(close(geom, 0.004), "{geom}");
    // Same as Python's pow(prod, 1/n).
    let py = (0.001f64 * 0.004 * 0.016).powf(1.0 / 3.0);
    assert!(close(geom, py), "{geom} vs {py}");
}

#[test]
fn score_geom_does_not_underflow() {
    let mut pairs: Vec<(String, String)> =
        vec![("check".into(), "pass".into()), ("benchmark-count".into(), "200".into())];
    for i in 0..200 {
        pairs.push((format!("benchmark.{i}.mean"), "10".into())); // 1e-8 s each
    }
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = ranked(&refs);
    // The product 1e-1600 underflows; the log form does not.
    assert!(close(score(&r, &RankingBy::Geom).unwrap(), 1e-8));
    assert!(close(score(&r, &RankingBy::Mean).unwrap(), 1e-8));
}

#[test]
fn score_single_benchmark_is_the_same_for_every_criterion() {
    let r = ranked(&[("check", "pass"), ("benchmark-count", "1"), ("benchmark.0.mean", "2500")]);
    for rb in [RankingBy::Last, RankingBy::Mean, RankingBy::Geom] {
        assert!(close(score(&r, &rb).unwrap(), 2.5e-6), "{rb}");
    }
}

#[test]
fn score_none_for_unknown_ranking() {
    let r = ranked(&[("check", "pass"), ("benchmark-count", "1"), ("benchmark.0.mean", "2500")]);
    assert_eq!(score(&r, &RankingBy::Other("median".into())), None);
    assert_eq!(score(&r, &RankingBy::Other(String::new())), None);
}

#[test]
fn score_none_for_bad_means() {
    for bad in ["nan", "NaN", "inf", "-inf", "infinity", "-5", "-0.1", "", "fast", "1e400"] {
        let r = ranked(&[("check", "pass"), ("benchmark-count", "1"), ("benchmark.0.mean", bad)]);
        for rb in [RankingBy::Last, RankingBy::Mean, RankingBy::Geom] {
            assert_eq!(score(&r, &rb), None, "{bad:?} {rb}");
        }
    }
    // One bad mean among good ones spoils mean and geom.
    let r = ranked(&[
        ("check", "pass"),
        ("benchmark-count", "2"),
        ("benchmark.0.mean", "100"),
        ("benchmark.1.mean", "nan"),
    ]);
    assert_eq!(score(&r, &RankingBy::Mean), None);
    assert_eq!(score(&r, &RankingBy::Geom), None);
    assert_eq!(score(&r, &RankingBy::Last), Some(1e-7));
}

#[test]
fn score_zero_mean_is_allowed_except_for_geom() {
    let r =
        ranked(&[("check", "pass"), ("benchmark-count", "2"), ("benchmark.0.mean", "0"), ("benchmark.1.mean", "0.0")]);
    assert_eq!(score(&r, &RankingBy::Last), Some(0.0));
    assert_eq!(score(&r, &RankingBy::Mean), Some(0.0));
    assert_eq!(score(&r, &RankingBy::Geom), None);
}

#[test]
fn score_none_when_benchmark_0_is_missing() {
    let r = ranked(&[("check", "pass"), ("benchmark-count", "1"), ("benchmark.1.mean", "100")]);
    for rb in [RankingBy::Last, RankingBy::Mean, RankingBy::Geom] {
        assert_eq!(score(&r, &rb), None, "{rb}");
    }
    let r = ranked(&[("check", "pass")]);
    for rb in [RankingBy::Last, RankingBy::Mean, RankingBy::Geom] {
        assert_eq!(score(&r, &rb), None, "{rb}");
    }
}

#[test]
fn score_follows_benchmark_count() {
    // Count larger than the means present → a mean is missing.
    let r = ranked(&[
        ("check", "pass"),
        ("benchmark-count", "3"),
        ("benchmark.0.mean", "100"),
        ("benchmark.1.mean", "300"),
    ]);
    assert_eq!(score(&r, &RankingBy::Mean), None);
    // Count smaller: only the counted ones.
    let r = ranked(&[
        ("check", "pass"),
        ("benchmark-count", "1"),
        ("benchmark.0.mean", "100"),
        ("benchmark.1.mean", "300"),
    ]);
    assert_eq!(score(&r, &RankingBy::Mean), Some(1e-7));
    // Count zero or garbage → nothing to score.
    for c in ["0", "x", "-1", "1.5"] {
        let r = ranked(&[("check", "pass"), ("benchmark-count", c), ("benchmark.0.mean", "100")]);
        assert_eq!(score(&r, &RankingBy::Mean), None, "{c}");
        assert_eq!(score(&r, &RankingBy::Geom), None, "{c}");
    }
    // Huge count with few means: ends at the first missing one.
    let r = ranked(&[("check", "pass"), ("benchmark-count", "18446744073709551615"), ("benchmark.0.mean", "100")]);
    assert_eq!(score(&r, &RankingBy::Geom), None);
    // No count: the contiguous means from 0.
    let r = ranked(&[
        ("check", "pass"),
        ("benchmark.0.mean", "100"),
        ("benchmark.1.mean", "300"),
        ("benchmark.3.mean", "1"),
    ]);
    assert!(close(score(&r, &RankingBy::Mean).unwrap(), 2e-7));
    // No count and a present-but-bad mean → None (not silently skipped).
    let r = ranked(&[("check", "pass"), ("benchmark.0.mean", "100"), ("benchmark.1.mean", "bad")]);
    assert_eq!(score(&r, &RankingBy::Mean), None);
}

#[test]
fn score_only_from_a_successful_passing_leaderboard_run() {
    let pairs = [("check", "pass"), ("benchmark-count", "1"), ("benchmark.0.mean", "100")];
    // Benchmark run alone is not scored.
    let r = full(vec![("benchmark", eval(run(&pairs)))]);
    assert_eq!(score(&r, &RankingBy::Last), None);
    // Not passed.
    let mut lr = run(&pairs);
    lr.passed = false;
    assert_eq!(score(&full(vec![("leaderboard", eval(lr))]), &RankingBy::Last), None);
    // Not successful.
    let mut lr = run(&pairs);
    lr.success = false;
    assert_eq!(score(&full(vec![("leaderboard", eval(lr))]), &RankingBy::Last), None);
    // Infrastructure failure.
    let mut r = ranked(&pairs);
    r.success = false;
    assert_eq!(score(&r, &RankingBy::Last), None);
    // No run at all (compile failed).
    let mut e = eval(run(&pairs));
    e.run = None;
    assert_eq!(score(&full(vec![("leaderboard", e)]), &RankingBy::Last), None);
    // Empty runs.
    assert_eq!(score(&full(vec![]), &RankingBy::Last), None);
}

#[test]
fn score_from_map_with_whitespace_values() {
    let m = map(&[("benchmark-count", " 2 "), ("benchmark.0.mean", " 100 "), ("benchmark.1.mean", "1e2")]);
    assert_eq!(score_from_result_map(&m, &RankingBy::Mean), Some(1e-7));
}

// ---------- verdict ----------

#[test]
fn verdict_rules() {
    let pass = run(&[("check", "pass")]);
    let fail = run(&[("check", "fail")]);
    assert_eq!(verdict(&full(vec![("test", eval(pass.clone()))])), Some(true));
    assert_eq!(verdict(&full(vec![("test", eval(fail.clone()))])), Some(false));
    assert_eq!(verdict(&full(vec![("test", eval(pass.clone())), ("benchmark", eval(fail))])), Some(false));
    // Passed check but crashed afterwards.
    let mut crashed = pass.clone();
    crashed.success = false;
    crashed.exit_code = 110;
    assert_eq!(verdict(&full(vec![("test", eval(crashed))])), Some(false));
    // Compile failure, no run.
    let mut e = eval(pass.clone());
    e.run = None;
    e.compilation = Some(CompileResult { success: false, nvcc_found: true, ..Default::default() });
    assert_eq!(verdict(&full(vec![("test", e)])), Some(false));
    // Optional Python pre-run that failed does not matter when the run passed.
    let mut e = eval(pass.clone());
    e.compilation = Some(CompileResult { success: false, ..Default::default() });
    assert_eq!(verdict(&full(vec![("test", e)])), Some(true));
    // Nothing ran.
    assert_eq!(verdict(&full(vec![])), None);
    let mut e = eval(pass.clone());
    e.run = None;
    assert_eq!(verdict(&full(vec![("test", e)])), None);
    // Infrastructure failure.
    let mut r = full(vec![("test", eval(pass))]);
    r.success = false;
    assert_eq!(verdict(&r), None);
}

// ---------- tests and benchmarks ----------

#[test]
fn tests_are_counted_and_failures_named() {
    let r = full(vec![(
        "test",
        eval(run(&[
            ("check", "fail"),
            ("test-count", "4"),
            ("test.0.spec", "size: 128; seed: 1"),
            ("test.0.status", "pass"),
            ("test.0.message", "ok"),
            ("test.1.spec", "size: 256; seed: 2"),
            ("test.1.status", "fail"),
            ("test.1.error", "mismatch at (0, 1): 0.5 vs 1.0"),
            ("test.1.message", "ignored when error is present"),
            ("test.2.spec", "size: 512; seed: 3"),
            ("test.2.status", "fail"),
            ("test.2.message", "only a message"),
            ("test.3.spec", "size: 1024; seed: 4"),
        ])),
    )]);
    let s = summarize(&r, &RankingBy::Last);
    let t = s.runs["test"].tests.as_ref().unwrap();
    assert_eq!((t.total, t.passed, t.failed), (4, 1, 2));
    assert_eq!(
        t.failures,
        vec![
            TestFailure {
                index: 1,
                spec: "size: 256; seed: 2".into(),
                message: "mismatch at (0, 1): 0.5 vs 1.0".into()
            },
            TestFailure { index: 2, spec: "size: 512; seed: 3".into(), message: "only a message".into() },
        ]
    );
    assert_eq!(s.tests(), Some(t));
    assert_eq!(s.passed, Some(false));
    assert!(!s.truncated);
}

#[test]
fn tests_count_without_test_count_or_with_garbage() {
    let m = map(&[("test.0.status", "pass"), ("test.4.status", "fail")]);
    let mut tr = false;
    let t = summarize_tests(&m, &mut tr).unwrap();
    assert_eq!((t.total, t.passed, t.failed), (5, 1, 1));
    let m = map(&[("test-count", "lots"), ("test.0.status", "pass")]);
    let t = summarize_tests(&m, &mut tr).unwrap();
    assert_eq!(t.total, 1);
    let m = map(&[("test-count", "0")]);
    let t = summarize_tests(&m, &mut tr).unwrap();
    assert_eq!((t.total, t.passed, t.failed), (0, 0, 0));
    // Keys that only look like tests.
    let m = map(&[
        ("test.x.status", "fail"),
        ("test.", "x"),
        ("test.1", "x"),
        ("tests.0.status", "fail"),
        ("test.-1.status", "fail"),
    ]);
    assert_eq!(summarize_tests(&m, &mut tr), None);
    // Highest index is u64::MAX: no overflow.
    let m = map(&[("test.18446744073709551615.status", "pass")]);
    assert_eq!(summarize_tests(&m, &mut tr).unwrap().total, u64::MAX);
    assert!(!tr);
    // No test keys at all → no test summary.
    assert_eq!(summarize_tests(&map(&[("check", "pass")]), &mut tr), None);
}

#[test]
fn failures_are_bounded_in_count_and_length() {
    let mut pairs = vec![("check".to_owned(), "fail".to_owned())];
    for i in 0..50 {
        pairs.push((format!("test.{i}.status"), "fail".into()));
        pairs.push((format!("test.{i}.spec"), "s".repeat(1000)));
        pairs.push((format!("test.{i}.error"), "é".repeat(1000)));
    }
    let m: BTreeMap<String, String> = pairs.into_iter().collect();
    let mut tr = false;
    let t = summarize_tests(&m, &mut tr).unwrap();
    assert!(tr);
    assert_eq!((t.total, t.failed), (50, 50));
    assert_eq!(t.failures.len(), MAX_FAILURES);
    assert_eq!(t.failures.iter().map(|f| f.index).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    for f in &t.failures {
        assert!(f.spec.len() <= MAX_SPEC_BYTES && f.spec.ends_with('…'));
        assert!(f.message.len() <= MAX_MESSAGE_BYTES && f.message.ends_with('…'));
    }
}

#[test]
fn benchmarks_are_parsed_in_nanoseconds() {
    let m = map(&[
        ("check", "fail"),
        ("benchmark-count", "2"),
        ("benchmark.0.spec", "size: 1024; seed: 5"),
        ("benchmark.0.runs", "100"),
        ("benchmark.0.mean", "4070343.5"),
        ("benchmark.0.std", "1200.25"),
        ("benchmark.0.err", "120.025"),
        ("benchmark.0.best", "4012345.0"),
        ("benchmark.0.worst", "4123456.0"),
        ("benchmark.1.spec", "size: 4096; seed: 6"),
        ("benchmark.1.status", "fail"),
        ("benchmark.1.error", "mismatch"),
    ]);
    let mut tr = false;
    let (count, b) = summarize_benchmarks(&m, &mut tr);
    assert_eq!(count, Some(2));
    assert_eq!(
        b,
        vec![
            BenchmarkSummary {
                index: 0,
                spec: "size: 1024; seed: 5".into(),
                runs: Some(100),
                mean: Some(4070343.5),
                std: Some(1200.25),
                err: Some(120.025),
                best: Some(4012345.0),
                worst: Some(4123456.0),
                failed: false,
                error: None,
            },
            BenchmarkSummary {
                index: 1,
                spec: "size: 4096; seed: 6".into(),
                failed: true,
                error: Some("mismatch".into()),
                ..Default::default()
            },
        ]
    );
    assert!(!tr);
}

#[test]
fn benchmark_values_that_do_not_parse_are_left_out() {
    let m = map(&[
        ("benchmark.0.runs", "100.0"),
        ("benchmark.0.mean", "nan"),
        ("benchmark.0.std", "inf"),
        ("benchmark.0.best", "-inf"),
        ("benchmark.0.worst", "slow"),
        ("benchmark.1.runs", "-3"),
        ("benchmark.1.mean", "-5"),
        ("benchmark.0.report", "YmFzZTY0"),
    ]);
    let mut tr = false;
    let (count, b) = summarize_benchmarks(&m, &mut tr);
    assert_eq!(count, Some(2));
    assert_eq!(b[0].runs, Some(100));
    assert_eq!((b[0].mean, b[0].std, b[0].best, b[0].worst), (None, None, None, None));
    assert_eq!(b[1].runs, None);
    // Negative timings are kept as reported (the score refuses them, the summary shows them).
    assert_eq!(b[1].mean, Some(-5.0));
    let json = serde_json::to_string(&b).unwrap();
    assert!(!json.contains("null") && !json.contains("NaN"), "{json}");
    // No benchmark keys → nothing.
    assert_eq!(summarize_benchmarks(&map(&[("check", "pass")]), &mut tr), (None, vec![]));
    // Count only.
    assert_eq!(summarize_benchmarks(&map(&[("benchmark-count", "0")]), &mut tr), (Some(0), vec![]));
}

#[test]
fn benchmarks_are_bounded() {
    let mut m = BTreeMap::new();
    for i in 0..100 {
        m.insert(format!("benchmark.{i}.mean"), "1.0".to_owned());
        m.insert(format!("benchmark.{i}.spec"), "x".repeat(500));
    }
    let mut tr = false;
    let (count, b) = summarize_benchmarks(&m, &mut tr);
    assert!(tr);
    assert_eq!(count, Some(100));
    assert_eq!(b.len(), MAX_BENCHMARKS);
    assert_eq!(b.last().unwrap().index, MAX_BENCHMARKS as u64 - 1);
    assert!(b.iter().all(|x| x.spec.len() <= MAX_SPEC_BYTES));
}

// ---------- runs, errors, system ----------

#[test]
fn runs_summarise_compile_and_run_outcome() {
    let mut comp_fail = eval(run(&[]));
    comp_fail.run = None;
    comp_fail.compilation = Some(CompileResult {
        nvcc_found: true,
        success: false,
        stderr: "submission.cu(3): error: identifier \"x\" is undefined\n".into(),
        exit_code: 1,
        ..Default::default()
    });
    let mut timeout = eval(run(&[]));
    if let Some(r) = timeout.run.as_mut() {
        r.success = false;
        r.exit_code = 114;
        r.duration = 180.0;
        r.stderr = format!("{}\nKilled after 180 s", "x".repeat(2000));
    }
    let r = full(vec![("test", comp_fail), ("benchmark", timeout)]);
    let s = summarize(&r, &RankingBy::Last);
    let t = &s.runs["test"];
    assert_eq!(t.compiled, Some(false));
    assert_eq!((t.success, t.passed, t.exit_code, t.duration), (None, None, None, None));
    assert_eq!(t.error.as_deref(), Some("submission.cu(3): error: identifier \"x\" is undefined"));
    let b = &s.runs["benchmark"];
    assert_eq!((b.success, b.passed, b.exit_code, b.duration), (Some(false), Some(false), Some(114), Some(180.0)));
    let err = b.error.as_deref().unwrap();
    assert!(err.starts_with('…') && err.ends_with("Killed after 180 s") && err.len() <= MAX_RUN_ERROR_BYTES);
    assert!(s.truncated, "the stderr tail was cut");
    assert_eq!(s.passed, Some(false));
}

#[test]
fn missing_compiler_is_reported() {
    let mut e = eval(run(&[]));
    e.run = None;
    e.compilation = Some(CompileResult { nvcc_found: false, success: false, exit_code: 127, ..Default::default() });
    let s = summarize(&full(vec![("test", e)]), &RankingBy::Last);
    assert_eq!(s.runs["test"].error.as_deref(), Some("compiler not found."));
}

#[test]
fn durations_are_rounded_and_bad_ones_dropped() {
    for (d, want) in [(3.18456, Some(3.185)), (0.0, Some(0.0)), (f64::NAN, None), (-1.0, None), (f64::INFINITY, None)] {
        let mut rr = run(&[("check", "pass")]);
        rr.duration = d;
        let s = summarize(&full(vec![("test", eval(rr))]), &RankingBy::Last);
        assert_eq!(s.runs["test"].duration, want, "{d}");
    }
}

#[test]
fn system_is_short() {
    let s = summarize(&full(vec![]), &RankingBy::Last);
    assert_eq!(
        s.system,
        Some(SystemSummary {
            gpu: "NVIDIA H100 80GB HBM3".into(),
            device_count: 1,
            runtime: "CUDA".into(),
            hostname: "gpu-a".into(),
            fingerprint: None,
            canary: None,
        })
    );
    let mut r = full(vec![]);
    r.system = SystemInfo::default();
    assert_eq!(summarize(&r, &RankingBy::Last).system, None);
    r.system.gpu = "g".repeat(1000);
    let s = summarize(&r, &RankingBy::Last);
    assert!(s.system.as_ref().unwrap().gpu.len() <= MAX_SYSTEM_FIELD_BYTES);
    assert!(s.truncated);
}

#[test]
fn run_order_and_run_bounds() {
    let mut names: Vec<&str> =
        vec!["profile.10", "zzz", "test", "profile.2", "leaderboard", "benchmark", "profile.x", "aaa"];
    names.sort_by(|a, b| run_order(a).cmp(&run_order(b)));
    assert_eq!(names, ["test", "benchmark", "leaderboard", "profile.2", "profile.10", "aaa", "profile.x", "zzz"]);

    let mut runs = vec![];
    let long = "n".repeat(65);
    runs.push((long.as_str(), eval(run(&[("check", "pass")]))));
    runs.push(("", eval(run(&[("check", "pass")]))));
    let names: Vec<String> = (0..30).map(|i| format!("profile.{i}")).collect();
    for n in &names {
        runs.push((n.as_str(), eval(run(&[("check", "pass")]))));
    }
    runs.push(("test", eval(run(&[("check", "pass")]))));
    let s = summarize(&full(runs), &RankingBy::Last);
    assert_eq!(s.runs.len(), MAX_RUNS);
    assert!(s.runs.contains_key("test"));
    assert!(s.runs.contains_key("profile.14") && !s.runs.contains_key("profile.15"));
    assert!(!s.runs.contains_key(long.as_str()) && !s.runs.contains_key(""));
    assert!(s.truncated);
}

#[test]
fn error_is_bounded_to_1kib() {
    let mut r = full(vec![]);
    r.success = false;
    r.error = "€".repeat(2000);
    let s = summarize(&r, &RankingBy::Last);
    assert!(s.error.len() <= MAX_ERROR_BYTES);
    assert!(s.error.ends_with('…'));
    assert!(s.truncated);
    assert_eq!(s.passed, None);
    assert!(!s.success);
}

#[test]
fn ranking_by_shown_only_with_a_ranked_run_and_bounded() {
    let s = summarize(&full(vec![("test", eval(run(&[("check", "pass")])))]), &RankingBy::Geom);
    assert_eq!(s.ranking_by, None);
    let r = ranked(&[("check", "pass"), ("benchmark.0.mean", "100")]);
    let s = summarize(&r, &RankingBy::Geom);
    assert_eq!(s.ranking_by, Some(RankingBy::Geom));
    let s = summarize(&r, &RankingBy::Other("x".repeat(100)));
    assert_eq!(s.ranking_by, Some(RankingBy::Other("x".repeat(MAX_RANKING_BYTES - 3) + "…")));
    assert_eq!(s.score, None);
    assert!(s.truncated);
}

mod meta_data;

#[test]
fn a_canary_survives_the_bound_and_a_bad_one_is_refused() {
    let mut s = summarize(&full(vec![]), &RankingBy::Last);
    let canary = CanarySummary { kernel: "k-mid".into(), seconds: 1.5e-4, at: 1_790_000_000 };
    s.system.as_mut().unwrap().canary = Some(canary.clone());
    let back = parse_meta_data_summary(&s.to_meta_data_value()).unwrap();
    assert_eq!(back.system.and_then(|x| x.canary), Some(canary.clone()));
    // Shrunk to the fixed-size fields, it is still there.
    let mut shrunk = s.clone();
    super::shrink::drop_runs_and_system(&mut shrunk);
    assert_eq!(shrunk.system.and_then(|x| x.canary), Some(canary));
    for bad in [
        CanarySummary { kernel: String::new(), seconds: 1.0, at: 0 },
        CanarySummary { kernel: "k".repeat(41), seconds: 1.0, at: 0 },
        CanarySummary { kernel: "k".into(), seconds: 0.0, at: 0 },
        CanarySummary { kernel: "k".into(), seconds: f64::NAN, at: 0 },
    ] {
        let mut s = s.clone();
        s.system.as_mut().unwrap().canary = Some(bad.clone());
        let mut v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        if bad.seconds.is_nan() {
            v["system"]["canary"]["seconds"] = serde_json::json!(-1.0);
        }
        assert!(parse_meta_data_summary(&v.to_string()).is_err(), "{bad:?}");
    }
}
