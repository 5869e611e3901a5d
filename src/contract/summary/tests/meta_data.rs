//! The meta-data value: its size bound, its format and how it is parsed back.

use super::*;

// ---------- size bound ----------

fn huge_result() -> FullResult {
    let big = "é".repeat(20_000);
    let mut runs = vec![];
    let mut pairs: Vec<(String, String)> = vec![("check".into(), "fail".into()), ("test-count".into(), "1000".into())];
    for i in 0..1000 {
        pairs.push((format!("test.{i}.status"), "fail".into()));
        pairs.push((format!("test.{i}.spec"), format!("size: {i}; {}", "k: v; ".repeat(100))));
        pairs.push((format!("test.{i}.error"), format!("\u{1}\"{}", "\\".repeat(3000))));
        pairs.push((format!("benchmark.{i}.spec"), "s".repeat(3000)));
        pairs.push((format!("benchmark.{i}.mean"), "123456789.123456789".into()));
        pairs.push((format!("benchmark.{i}.std"), "1.2345678901234567".into()));
        pairs.push((format!("benchmark.{i}.best"), "1.2345678901234567".into()));
        pairs.push((format!("benchmark.{i}.worst"), "1.2345678901234567".into()));
        pairs.push((format!("benchmark.{i}.status"), "fail".into()));
        pairs.push((format!("benchmark.{i}.error"), "\u{7}".repeat(3000)));
    }
    let result: BTreeMap<String, String> = pairs.into_iter().collect();
    let names: Vec<String> = ["test", "benchmark", "leaderboard"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..40).map(|i| format!("profile.{i}")))
        .collect();
    for n in &names {
        let mut e = EvalResult {
            start: big.clone(),
            end: big.clone(),
            compilation: Some(CompileResult {
                nvcc_found: true,
                success: true,
                stdout: big.clone(),
                stderr: big.clone(),
                ..Default::default()
            }),
            run: Some(RunResult {
                success: false,
                passed: false,
                command: big.clone(),
                stdout: big.clone(),
                stderr: "\u{1}".repeat(100_000),
                exit_code: 1,
                duration: 1.0,
                result: result.clone(),
            }),
            profile: Some(ProfileResult { profiler: big.clone(), trace: big.clone(), download_url: Some(big.clone()) }),
        };
        if n == "leaderboard" {
            // A scorable ranked run inside the huge result.
            let r = e.run.as_mut().unwrap();
            r.success = true;
            r.passed = true;
            r.result.insert("check".into(), "pass".into());
            r.result.insert("benchmark-count".into(), "1".into());
            r.result.insert("benchmark.0.mean".into(), "2000000".into());
        }
        runs.push((n.clone(), e));
    }
    FullResult {
        success: true,
        error: "\u{0}".repeat(100_000),
        system: SystemInfo {
            gpu: "\"".repeat(10_000),
            device_count: 8,
            cpu: big.clone(),
            runtime: "\\".repeat(10_000),
            platform: big.clone(),
            torch: big.clone(),
            hostname: "\u{1}".repeat(10_000),
        },
        runs: runs.into_iter().collect(),
    }
}

#[test]
fn huge_result_fits_in_8kib_and_keeps_the_verdict_and_score() {
    let r = huge_result();
    let s = summarize(&r, &RankingBy::Last);
    let json = s.to_meta_data_value();
    assert!(json.len() <= MAX_SUMMARY_BYTES, "{}", json.len());
    assert!(s.truncated);
    assert!(s.success);
    assert_eq!(s.passed, Some(false));
    assert_eq!(s.score, Some(0.002));
    assert_eq!(s.ranking_by, Some(RankingBy::Last));
    // And it reads back.
    let back = parse_meta_data_summary(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn every_reduction_step_keeps_the_bound() {
    // Grow one kind of detail at a time so each step is exercised.
    let base = || full(vec![("test", eval(run(&[("check", "pass")])))]);
    let mut cases: Vec<FullResult> = vec![];
    // Many failures with long messages in many runs (steps 1–5).
    let mut r = base();
    for n in 0..MAX_RUNS {
        let mut pairs: Vec<(String, String)> = vec![("check".into(), "fail".into())];
        for i in 0..MAX_FAILURES {
            pairs.push((format!("test.{i}.status"), "fail".into()));
            pairs.push((format!("test.{i}.error"), "\"".repeat(MAX_MESSAGE_BYTES)));
            pairs.push((format!("test.{i}.spec"), "\\".repeat(MAX_SPEC_BYTES)));
        }
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        r.runs.insert(format!("profile.{n}"), eval(run(&refs)));
    }
    cases.push(r);
    // Many benchmarks in many runs.
    let mut r = base();
    for n in ["benchmark", "leaderboard", "profile.0", "profile.1"] {
        let mut pairs: Vec<(String, String)> = vec![];
        for i in 0..MAX_BENCHMARKS {
            pairs.push((format!("benchmark.{i}.spec"), "x".repeat(MAX_SPEC_BYTES)));
            pairs.push((format!("benchmark.{i}.mean"), "0.1234567890123".into()));
        }
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        r.runs.insert(n.into(), eval(run(&refs)));
    }
    cases.push(r);
    // Long run errors made of characters JSON escapes (×6).
    let mut r = base();
    for n in 0..MAX_RUNS {
        let mut rr = run(&[]);
        rr.success = false;
        rr.stderr = "\u{1}".repeat(MAX_RUN_ERROR_BYTES);
        r.runs.insert(format!("r{n:0>60}"), eval(rr));
    }
    cases.push(r);
    // Only a huge error and system.
    let mut r = full(vec![]);
    r.error = "\u{1}".repeat(MAX_ERROR_BYTES);
    r.system.gpu = "\u{1}".repeat(MAX_SYSTEM_FIELD_BYTES);
    r.system.hostname = "\u{1}".repeat(MAX_SYSTEM_FIELD_BYTES);
    r.system.runtime = "\u{1}".repeat(MAX_SYSTEM_FIELD_BYTES);
    cases.push(r);
    cases.push(huge_result());
    for (i, r) in cases.iter().enumerate() {
        let s = summarize(r, &RankingBy::Mean);
        let json = s.to_meta_data_value();
        assert!(json.len() <= MAX_SUMMARY_BYTES, "case {i}: {}", json.len());
        assert_eq!(to_json(&s).unwrap(), json, "case {i}: summarize already fits");
        assert_eq!(parse_meta_data_summary(&json).unwrap(), s, "case {i}");
    }
}

#[test]
fn reduction_order_is_as_documented() {
    // Benchmarks of non-ranked runs go before failure lists.
    let mut r = full(vec![]);
    let mut bench_pairs: Vec<(String, String)> = vec![];
    for i in 0..MAX_BENCHMARKS {
        bench_pairs.push((format!("benchmark.{i}.mean"), "123456.789".into()));
        bench_pairs.push((format!("benchmark.{i}.std"), "12.345".into()));
        bench_pairs.push((format!("benchmark.{i}.best"), "123000.5".into()));
        bench_pairs.push((format!("benchmark.{i}.worst"), "124000.5".into()));
        bench_pairs.push((format!("benchmark.{i}.runs"), "100".into()));
        bench_pairs.push((format!("benchmark.{i}.spec"), "size: 1024; seed: 5".into()));
    }
    let refs: Vec<(&str, &str)> = bench_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    r.runs.insert("benchmark".into(), eval(run(&refs)));
    r.runs.insert("leaderboard".into(), eval(run(&refs)));
    r.runs.insert("profile.0".into(), eval(run(&refs)));
    // Without reduction this is over the bound.
    let mut unbounded = false;
    let raw: Vec<RunSummary> = r.runs.values().map(|e| summarize_run(e, &mut unbounded)).collect();
    assert!(serde_json::to_string(&raw).unwrap().len() > MAX_SUMMARY_BYTES);
    r.runs.insert(
        "test".into(),
        eval(run(&[("test.0.status", "fail"), ("test.0.error", "wrong"), ("test.0.spec", "n: 1")])),
    );
    let s = summarize(&r, &RankingBy::Mean);
    assert!(s.truncated);
    assert!(s.runs["benchmark"].benchmarks.is_empty());
    assert!(s.runs["profile.0"].benchmarks.is_empty());
    assert_eq!(s.runs["benchmark"].benchmark_count, Some(MAX_BENCHMARKS as u64));
    assert_eq!(s.runs["leaderboard"].benchmarks.len(), MAX_BENCHMARKS);
    assert!(s.runs["leaderboard"].benchmarks.iter().all(|b| b.spec.is_empty()));
    assert_eq!(s.runs["test"].tests.as_ref().unwrap().failures.len(), 1);
    assert_eq!(s.ranked_benchmarks().len(), MAX_BENCHMARKS);
}

#[test]
fn small_results_are_not_truncated() {
    let r = ranked(&[("check", "pass"), ("benchmark-count", "1"), ("benchmark.0.mean", "100")]);
    let s = summarize(&r, &RankingBy::Last);
    assert!(!s.truncated);
    assert!(!s.to_meta_data_value().contains("truncated"));
}

#[test]
fn hand_built_oversized_summary_is_shrunk_on_output() {
    let mut s = summarize(&full(vec![]), &RankingBy::Last);
    s.error = "x".repeat(100_000);
    s.ranking_by = Some(RankingBy::Other("y".repeat(100_000)));
    for i in 0..100 {
        s.runs.insert(format!("run{i}"), RunSummary { error: Some("z".repeat(1000)), ..Default::default() });
    }
    let json = s.to_meta_data_value();
    assert!(json.len() <= MAX_SUMMARY_BYTES, "{}", json.len());
    let back = parse_meta_data_summary(&json).unwrap();
    assert!(back.truncated && back.runs.is_empty() && back.error.is_empty());
}

// ---------- format and parsing ----------

#[test]
fn format_is_stable() {
    let mut e =
        eval(run(&[("check", "pass"), ("test-count", "2"), ("test.0.status", "pass"), ("test.1.status", "pass")]));
    e.compilation = Some(CompileResult { nvcc_found: true, success: true, ..Default::default() });
    let r = full(vec![
        ("test", e),
        (
            "leaderboard",
            eval(run(&[
                ("check", "pass"),
                ("benchmark-count", "1"),
                ("benchmark.0.spec", "n: 1"),
                ("benchmark.0.runs", "10"),
                ("benchmark.0.mean", "1500"),
                ("benchmark.0.std", "10"),
                ("benchmark.0.err", "3.5"),
                ("benchmark.0.best", "1400"),
                ("benchmark.0.worst", "1600"),
            ])),
        ),
    ]);
    let json = summarize(&r, &RankingBy::Last).to_meta_data_value();
    assert_eq!(
        json,
        concat!(
            r#"{"v":1,"success":true,"passed":true,"#,
            r#""system":{"gpu":"NVIDIA H100 80GB HBM3","device_count":1,"runtime":"CUDA","hostname":"gpu-a"},"#,
            r#""runs":{"leaderboard":{"success":true,"passed":true,"exit_code":0,"duration":1.5,"#,
            r#""benchmark_count":1,"benchmarks":[{"index":0,"spec":"n: 1","runs":10,"mean":1500.0,"std":10.0,"err":3.5,"best":1400.0,"worst":1600.0}]},"#,
            r#""test":{"compiled":true,"success":true,"passed":true,"exit_code":0,"duration":1.5,"#,
            r#""tests":{"total":2,"passed":2,"failed":0}}},"#,
            r#""ranking_by":"last","score":1.5e-6}"#
        )
    );
}

#[test]
fn meta_data_roundtrip() {
    let r = full(vec![(
        "test",
        eval(run(&[("check", "fail"), ("test.0.status", "fail"), ("test.0.error", "bad ünïcode \"quoted\"\n")])),
    )]);
    let s = summarize(&r, &RankingBy::Geom);
    let back = parse_meta_data_summary(&s.to_meta_data_value()).unwrap();
    assert_eq!(back, s);
    // Surrounding whitespace (e.g. a trailing newline from the CLI) is fine.
    let back = parse_meta_data_summary(&format!("\n {} \n", s.to_meta_data_value())).unwrap();
    assert_eq!(back, s);
}

#[test]
fn garbage_meta_data_is_refused_with_clear_errors() {
    assert!(matches!(parse_meta_data_summary(""), Err(SummaryError::Empty)));
    assert!(matches!(parse_meta_data_summary("  \n"), Err(SummaryError::Empty)));
    for bad in ["{", "nope", "{\"v\":1,}", "\u{0}", "{\"v\":1} {}"] {
        assert!(matches!(parse_meta_data_summary(bad), Err(SummaryError::Malformed { .. })), "{bad:?}");
    }
    for bad in ["[]", "1", "\"v\"", "null", "[{\"v\":1,\"success\":true}]"] {
        match parse_meta_data_summary(bad) {
            Err(SummaryError::Malformed { path, .. }) => assert_eq!(path, ".", "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(matches!(parse_meta_data_summary("{}"), Err(SummaryError::MissingVersion)));
    assert!(matches!(parse_meta_data_summary(r#"{"success":true}"#), Err(SummaryError::MissingVersion)));
    let too_big = format!("{{\"v\":1,\"success\":true,\"error\":\"{}\"}}", "x".repeat(MAX_SUMMARY_BYTES));
    match parse_meta_data_summary(&too_big) {
        Err(e @ SummaryError::TooLarge { .. }) => assert!(e.to_string().contains("over the 8192-byte limit")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_version_is_refused() {
    for (v, shown) in [("2", "2"), ("0", "0"), ("\"1\"", "\"1\""), ("1.0", "1.0"), ("-1", "-1"), ("null", "null")] {
        let json = format!("{{\"v\":{v},\"success\":true}}");
        match parse_meta_data_summary(&json) {
            Err(e @ SummaryError::UnsupportedVersion { .. }) => {
                assert_eq!(e.to_string(), format!("result summary version {shown} is not supported (expected 1)"));
            }
            other => panic!("{v}: {other:?}"),
        }
    }
    let long = format!("{{\"v\":\"{}\"}}", "9".repeat(100));
    match parse_meta_data_summary(&long) {
        Err(SummaryError::UnsupportedVersion { found }) => assert!(found.len() <= 32),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_shapes_are_refused_with_a_path() {
    for (json, path) in [
        (r#"{"v":1}"#, "."),
        (r#"{"v":1,"success":"yes"}"#, "success"),
        (r#"{"v":1,"success":true,"score":"fast"}"#, "score"),
        (
            r#"{"v":1,"success":true,"runs":{"test":{"tests":{"total":-1,"passed":0,"failed":0}}}}"#,
            "runs.test.tests.total",
        ),
        (r#"{"v":1,"success":true,"runs":{"test":{"benchmarks":[{"index":"a"}]}}}"#, "runs.test.benchmarks[0].index"),
        (r#"{"v":1,"success":true,"system":{"gpu":"x"}}"#, "system"),
        (r#"{"v":1,"success":true,"ranking_by":5}"#, "ranking_by"),
    ] {
        match parse_meta_data_summary(json) {
            Err(SummaryError::Malformed { path: p, .. }) => assert_eq!(p, path, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn inconsistent_or_out_of_bounds_summaries_are_refused() {
    let runs = (0..=MAX_RUNS).map(|i| format!("\"r{i}\":{{}}")).collect::<Vec<_>>().join(",");
    let failures = (0..=MAX_FAILURES).map(|i| format!("{{\"index\":{i}}}")).collect::<Vec<_>>().join(",");
    let benches = (0..=MAX_BENCHMARKS).map(|i| format!("{{\"index\":{i}}}")).collect::<Vec<_>>().join(",");
    for json in [
        r#"{"v":1,"success":true,"score":-1.0}"#.to_owned(),
        r#"{"v":1,"success":true,"runs":{"test":{"duration":-0.5}}}"#.to_owned(),
        r#"{"v":1,"success":true,"runs":{"test":{"tests":{"total":1,"passed":1,"failed":1}}}}"#.to_owned(),
        r#"{"v":1,"success":true,"runs":{"test":{"tests":{"total":1,"passed":18446744073709551615,"failed":1}}}}"#
            .to_owned(),
        format!(r#"{{"v":1,"success":true,"runs":{{{runs}}}}}"#),
        format!(r#"{{"v":1,"success":true,"runs":{{"{}":{{}}}}}}"#, "n".repeat(MAX_RUN_NAME_BYTES + 1)),
        r#"{"v":1,"success":true,"runs":{"":{}}}"#.to_owned(),
        format!(
            r#"{{"v":1,"success":true,"runs":{{"t":{{"tests":{{"total":99,"passed":0,"failed":11,"failures":[{failures}]}}}}}}}}"#
        ),
        format!(r#"{{"v":1,"success":true,"runs":{{"t":{{"benchmarks":[{benches}]}}}}}}"#),
        format!(r#"{{"v":1,"success":true,"error":"{}"}}"#, "e".repeat(MAX_ERROR_BYTES + 1)),
    ] {
        assert!(
            matches!(parse_meta_data_summary(&json), Err(SummaryError::Invalid(_))),
            "{json}: {:?}",
            parse_meta_data_summary(&json)
        );
    }
}

#[test]
fn unknown_fields_in_v1_are_ignored() {
    let s =
        parse_meta_data_summary(r#"{"v":1,"success":true,"future":{"x":1},"runs":{"test":{"new":1,"passed":true}}}"#)
            .unwrap();
    assert!(s.success);
    assert_eq!(s.runs["test"].passed, Some(true));
    assert_eq!(s.score, None);
    // Minimal summary.
    let s = parse_meta_data_summary(r#"{"v":1,"success":false}"#).unwrap();
    assert!(!s.success && s.passed.is_none() && s.runs.is_empty() && !s.truncated);
}

#[test]
fn accessors_pick_the_runs_that_matter() {
    let s = parse_meta_data_summary(
        r#"{"v":1,"success":true,"runs":{
            "benchmark":{"benchmarks":[{"index":0,"mean":2.0}]},
            "profile.0":{"tests":{"total":1,"passed":1,"failed":0}}}}"#,
    )
    .unwrap();
    assert_eq!(s.tests().unwrap().total, 1);
    assert_eq!(s.ranked_benchmarks()[0].mean, Some(2.0));
    let s = parse_meta_data_summary(r#"{"v":1,"success":true}"#).unwrap();
    assert!(s.tests().is_none());
    assert!(s.ranked_benchmarks().is_empty());
}
