//! Checked-in vectors in the exact shapes the seeds' platform produces (see
//! `tests/vectors/generate.py`): they must parse, round-trip, and give the summary and score
//! that `expected.json` (computed in Python, independently) and the golden summaries say.
//!
//! `BENCHKITE_UPDATE_VECTORS=1 cargo test --test contract_vectors` rewrites the golden
//! `summary_*.json` files; review the diff before keeping it.

use std::path::{Path, PathBuf};

use benchkite::contract::{
    ConfigError, EvalConfig, FullResult, MAX_SUMMARY_BYTES, PayloadError, PayloadLimits, RankingBy, ResultSummary,
    decode_payload, decode_payload_json, encode_payload, parse_meta_data_summary, parse_result_json, score, summarize,
    verdict,
};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Expected floats are stored as Python `repr()` strings and parsed with Rust's correctly
/// rounded parser (serde_json's default float parsing may be off by one ulp).
fn exact(s: &str) -> f64 {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn expected() -> Value {
    serde_json::from_str(&read("expected.json")).unwrap()
}

fn result(name: &str) -> FullResult {
    parse_result_json(read(name).as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const RESULTS: [&str; 5] = [
    "result_leaderboard_pass.json",
    "result_test_fail.json",
    "result_infra_failure.json",
    "result_compile_error.json",
    "result_seed_artifact_test.json",
];

#[test]
fn python_payload_vectors_decode_to_their_json() {
    for stem in ["payload_py_test", "payload_cu_leaderboard"] {
        let cfg = decode_payload(read(&format!("{stem}.b64")).trim()).unwrap();
        let want: Value = serde_json::from_str(&read(&format!("{stem}.json"))).unwrap();
        assert_eq!(serde_json::to_value(&cfg).unwrap(), want, "{stem}");
        // Re-encoding and decoding again changes nothing.
        assert_eq!(decode_payload(&encode_payload(&cfg).unwrap()).unwrap(), cfg);
    }
    let cu = decode_payload(read("payload_cu_leaderboard.b64").trim()).unwrap();
    assert_eq!(cu.extra["submission_id"], 8815);
    assert_eq!(cu.ranking_by, RankingBy::Geom);
    assert_eq!(cu.total_timeout_secs(), 120 + 240 + 360);
}

#[test]
fn proof_of_concept_payload_is_refused_but_not_dropped() {
    // Seed 002's local test uses `files` instead of `sources` and has no `main`.
    let b64 = read("payload_poc_files.b64");
    match decode_payload(b64.trim()) {
        Err(PayloadError::Invalid(ConfigError::NoSources)) => {}
        other => panic!("{other:?}"),
    }
    let json = decode_payload_json(b64.trim(), &PayloadLimits::default()).unwrap();
    let cfg: EvalConfig = serde_json::from_slice(&json).unwrap();
    assert!(cfg.extra.contains_key("files"));
    let want: Value = serde_json::from_str(&read("payload_poc_files.json")).unwrap();
    let mut got = serde_json::to_value(&cfg).unwrap();
    // Defaults we fill in that the PoC did not send.
    for k in ["sources", "arch", "seed", "ranking_by", "multi_gpu"] {
        got.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(got, want);
}

#[test]
fn result_vectors_roundtrip_to_the_same_json() {
    for name in RESULTS {
        if name == "result_seed_artifact_test.json" {
            continue; // not the dataclass shape
        }
        let original: Value = serde_json::from_str(&read(name)).unwrap();
        let again = serde_json::to_value(result(name)).unwrap();
        assert_eq!(again, original, "{name}");
    }
}

#[test]
fn result_vectors_give_the_expected_values() {
    let exp = expected();
    for name in RESULTS {
        let e = &exp[name];
        let r = result(name);
        assert_eq!(Value::Bool(r.success), e["success"], "{name}");
        assert_eq!(verdict(&r).map_or(Value::Null, Value::Bool), e["passed"], "{name}");
        for (rb, key) in [(RankingBy::Last, "last"), (RankingBy::Mean, "mean"), (RankingBy::Geom, "geom")] {
            let got = score(&r, &rb);
            match e["score"][key].as_str().map(exact) {
                None => assert_eq!(got, None, "{name} {key}"),
                // The same arithmetic as Python for last and mean: exact.
                Some(want) if key != "geom" => assert_eq!(got, Some(want), "{name} {key}"),
                // Python multiplies then takes the n-th root; we average logs.
                Some(want) => {
                    let got = got.unwrap();
                    assert!((got - want).abs() <= 1e-12 * want, "{name}: {got} vs {want}");
                }
            }
        }
        let s = summarize(&r, &RankingBy::Geom);
        let tests = s.tests();
        match e["tests"].as_object() {
            None => assert!(tests.is_none(), "{name}"),
            Some(t) => {
                let got = tests.unwrap();
                assert_eq!(got.total, t["total"].as_u64().unwrap(), "{name}");
                assert_eq!(got.passed, t["passed"].as_u64().unwrap(), "{name}");
                assert_eq!(got.failed, t["failed"].as_u64().unwrap(), "{name}");
            }
        }
        if let Some(failures) = e.get("failures") {
            let got: Vec<Value> = s
                .tests()
                .unwrap()
                .failures
                .iter()
                .map(|f| serde_json::json!({"index": f.index, "spec": f.spec, "message": f.message}))
                .collect();
            assert_eq!(&Value::Array(got), failures, "{name}");
        }
    }
}

#[test]
fn leaderboard_vector_summary_in_detail() {
    let r = result("result_leaderboard_pass.json");
    let s = summarize(&r, &RankingBy::Geom);
    let exp = expected();
    let e = &exp["result_leaderboard_pass.json"];
    assert_eq!(s.passed, Some(true));
    assert!(!s.truncated);
    let sys = s.system.as_ref().unwrap();
    assert_eq!(sys.gpu, "NVIDIA H100 80GB HBM3");
    assert_eq!(sys.hostname, "nvidia-h100-0-agent-7f9c4");
    assert_eq!(sys.runtime, "CUDA");
    for name in ["test", "benchmark", "leaderboard"] {
        let run = &s.runs[name];
        assert_eq!(run.compiled, Some(true), "{name}");
        assert_eq!((run.success, run.passed, run.exit_code), (Some(true), Some(true), Some(0)));
    }
    assert_eq!(s.runs["test"].duration, Some(3.185));
    assert_eq!(s.runs["leaderboard"].duration, Some(40.98));
    let ranked = s.ranked_benchmarks();
    assert_eq!(ranked.len(), 3);
    let means: Vec<f64> = ranked.iter().map(|b| b.mean.unwrap()).collect();
    let want: Vec<f64> = e["ranked_means_ns"].as_array().unwrap().iter().map(|v| exact(v.as_str().unwrap())).collect();
    assert_eq!(means, want);
    assert_eq!(ranked[0].spec, "size: 1024; seed: 54352");
    assert_eq!(ranked[0].runs, Some(100));
    assert_eq!(ranked[0].best, Some(4_071_000.0));
    assert_eq!(ranked[0].worst, Some(4_071_999.0));
    assert!(ranked.iter().all(|b| b.std.is_some() && b.err.is_some() && !b.failed));
    assert_eq!(s.ranking_by, Some(RankingBy::Geom));
    let want_geom = exact(e["score"]["geom"].as_str().unwrap());
    assert!((s.score.unwrap() - want_geom).abs() <= 1e-12 * want_geom);
}

#[test]
fn failing_and_broken_vectors_summarise_as_the_contract_says() {
    let s = summarize(&result("result_test_fail.json"), &RankingBy::Last);
    assert!(s.success);
    assert_eq!(s.passed, Some(false));
    let t = &s.runs["test"];
    assert_eq!((t.success, t.passed, t.exit_code), (Some(true), Some(false), Some(112)));
    assert_eq!(t.compiled, None);
    assert_eq!(t.error, None, "a validation failure is not a crash");
    assert_eq!(s.score, None);
    assert_eq!(s.ranking_by, None);

    let s = summarize(&result("result_infra_failure.json"), &RankingBy::Last);
    assert!(!s.success);
    assert_eq!(s.passed, None);
    assert_eq!(s.error, "Buildkite job failed: agent lost (exit status -1)");
    assert!(s.runs.is_empty() && s.system.is_none());

    let s = summarize(&result("result_compile_error.json"), &RankingBy::Last);
    assert_eq!(s.passed, Some(false));
    let t = &s.runs["test"];
    assert_eq!(t.compiled, Some(false));
    assert_eq!(t.success, None);
    assert!(t.error.as_deref().unwrap().starts_with("submission.cu(2): error: identifier \"y\""));

    let s = summarize(&result("result_seed_artifact_test.json"), &RankingBy::Last);
    assert!(s.success);
    assert_eq!(s.passed, None);
    assert!(s.system.is_none());
}

#[test]
fn golden_summaries() {
    let update = std::env::var_os("BENCHKITE_UPDATE_VECTORS").is_some();
    for (name, rb) in [
        ("result_leaderboard_pass.json", RankingBy::Geom),
        ("result_test_fail.json", RankingBy::Last),
        ("result_infra_failure.json", RankingBy::Last),
        ("result_compile_error.json", RankingBy::Last),
    ] {
        let value = summarize(&result(name), &rb).to_meta_data_value();
        assert!(value.len() <= MAX_SUMMARY_BYTES);
        let golden = dir().join(name.replace("result_", "summary_"));
        if update {
            std::fs::write(&golden, format!("{value}\n")).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        assert_eq!(value, want.trim_end(), "{name}");
        // And the controller reads back exactly what the runner wrote.
        let back: ResultSummary = parse_meta_data_summary(&value).unwrap();
        assert_eq!(back, summarize(&result(name), &rb));
    }
}
