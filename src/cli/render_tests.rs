use std::time::Duration;

use serde_json::json;

use super::*;

fn job(spec_extra: serde_json::Value, status: serde_json::Value) -> KernelJob {
    let mut spec = json!({"pool": "h100", "mode": "leaderboard", "lang": "py", "main": "eval.py", "sources": {"eval.py": ""}, "rankingBy": "geom"});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": "good", "namespace": "ci", "creationTimestamp": "2026-01-01T10:00:00Z",
                     "labels": {"benchkite.dev/submitter": "alice"}},
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

fn passed() -> KernelJob {
    job(
        json!({}),
        json!({
            "phase": "Succeeded", "passed": true, "score": 0.0000915, "attemptCount": 1,
            "build": {"pipeline": "p", "number": 17, "id": "b", "webUrl": "https://buildkite.com/org/p/builds/17"},
            "summary": {
                "tests": {"passed": 2, "total": 2},
                "benchmarks": [
                    {"spec": "size: 1024; seed: 3", "runs": 100, "mean": 91500.0, "std": 1200.0, "best": 90000.0, "worst": 99000.0},
                    {"spec": "size: 65536; seed: 4", "runs": 12, "mean": 2.5e6, "std": 800.0, "best": 2.4e6, "worst": 2.61e6},
                ],
            },
            "result": {
                "success": true, "source": "meta-data", "verified": true,
                "system": {"gpu": "H100", "deviceCount": 1, "fingerprint": {
                    "gpuUuid": "GPU-1234", "gpuModel": "NVIDIA H100 80GB HBM3", "driverVersion": "550.54.15",
                    "cudaVersion": "12.4", "node": "gpu-0", "slot": "3", "certificationEpoch": "1767000000",
                    "harnessSha256": "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"}},
                "runs": {"test": {"success": true, "passed": true}, "leaderboard": {"success": true, "passed": true}},
            },
        }),
    )
}

fn wrong() -> KernelJob {
    job(
        json!({"mode": "test", "pool": null, "queue": "q-1"}),
        json!({
            "phase": "Succeeded", "passed": false, "attemptCount": 1,
            "build": {"pipeline": "p", "number": 18, "id": "b", "webUrl": "https://buildkite.com/org/p/builds/18"},
            "summary": {"tests": {"passed": 1, "total": 3, "failures": ["size: 256; seed: 2: mismatch found! at 100: 0.5 != 0.25"]}},
            "result": {"success": true, "runs": {"test": {"success": true, "passed": false}}},
        }),
    )
}

#[test]
fn a_passing_leaderboard_job_reads_as_a_result() {
    let want = "\
KernelJob ci/good: Succeeded (leaderboard on pool h100)
Verdict:    PASSED
Tests:      2/2 passed
Benchmarks:
  SPEC                   RUNS       MEAN       STD       BEST      WORST
  size: 1024; seed: 3     100   91.50 us   1.20 us   90.00 us   99.00 us
  size: 65536; seed: 4     12    2.50 ms    800 ns    2.40 ms    2.61 ms
Score:      91.50 us (geom; 9.150000e-5 s)
Ran on:     NVIDIA H100 80GB HBM3 (GPU-1234), driver 550.54.15, CUDA 12.4, node gpu-0 slot 3, certification epoch 1767000000, harness abcdef012345
Build:      #17 https://buildkite.com/org/p/builds/17
";
    assert_eq!(result_text(&passed()), want);
    assert_eq!(outcome(&passed()), Some(Outcome::Passed));
}

#[test]
fn a_wrong_kernel_names_its_failing_tests() {
    let want = "\
KernelJob ci/good: Succeeded (test on queue q-1)
Verdict:    FAILED: 2 of 3 tests failed
Tests:      1/3 passed, 2 failed:
  FAIL size: 256; seed: 2: mismatch found! at 100: 0.5 != 0.25
  ... and 1 more
Build:      #18 https://buildkite.com/org/p/builds/18
";
    assert_eq!(result_text(&wrong()), want);
    assert_eq!(outcome(&wrong()).map(|o| o.exit_code()), Some(exit::KERNEL_FAILED));
}

#[test]
fn a_kernel_that_did_not_compile_says_so() {
    let j = job(
        json!({"mode": "test", "lang": "cu", "main": null}),
        json!({
            "phase": "Succeeded", "passed": false,
            "result": {"success": true, "runs": {"test": {"compiled": false, "error": "nvcc: error: k.cu(3): expected ';'\nmore"}}},
        }),
    );
    let want = "\
KernelJob ci/good: Succeeded (test on pool h100)
Verdict:    FAILED: did not compile (test run)
Run test: did not compile; nvcc: error: k.cu(3): expected ';'
";
    assert_eq!(result_text(&j), want);
    let crashed = job(
        json!({}),
        json!({"phase": "Succeeded", "passed": false, "result": {"success": true, "runs": {"test": {"success": false, "exitCode": -11}}}}),
    );
    assert_eq!(outcome(&crashed), Some(Outcome::KernelFailed("the test run crashed, exit -11".into())));
}

#[test]
fn a_job_without_a_verdict_reads_as_a_job_failure() {
    let j = job(
        json!({}),
        json!({
            "phase": "Failed", "attemptCount": 3,
            "message": "agent lost: exit -1",
            "conditions": [{"type": "Failed", "status": "True", "reason": "InfrastructureFailure", "message": "agent lost: exit -1",
                            "lastTransitionTime": "2026-01-01T10:01:00Z"}],
            "attempts": [{"attempt": 1, "runId": "u-1", "build": {"pipeline": "p", "number": 5, "id": "x", "webUrl": "https://bk/5"}}],
        }),
    );
    let want = "\
KernelJob ci/good: Failed (leaderboard on pool h100)
Verdict:    JOB FAILED: Failed (InfrastructureFailure): agent lost: exit -1
Build:      #5 https://bk/5
Attempts:   3
Message:    agent lost: exit -1
";
    assert_eq!(result_text(&j), want);
    assert_eq!(outcome(&j).map(|o| o.exit_code()), Some(exit::JOB_FAILED));
}

#[test]
fn the_progress_line_shows_phase_position_estimate_build_and_time() {
    let now: jiff::Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
    let pending = job(json!({}), json!({"phase": "Pending", "message": "waiting for the pool's queue"}));
    // Position and estimate as the fair-share status has them (read by name).
    let status = json!({"phase": "Pending", "queuePosition": 3, "estimatedStartTime": "2026-01-01T10:01:20Z",
                        "message": "waiting for the pool's queue\nsecond line"});
    assert_eq!(
        progress_line_with(&pending, &status, Duration::from_secs(42), now),
        "[42s] good Pending | position 3 | starts in ~1m20s | waiting for the pool's queue"
    );
    let status = json!({"phase": "Pending", "queuePosition": 1, "estimatedStartTime": "2026-01-01T09:59:00Z"});
    assert_eq!(
        progress_line_with(&pending, &status, Duration::from_secs(61), now),
        "[1m01s] good Pending | position 1 | starting | waiting for the pool's queue"
    );
    // The typed status (with or without those fields in this build's API).
    assert_eq!(
        progress_line(&pending, Duration::from_secs(5), now),
        "[5s] good Pending | waiting for the pool's queue"
    );
    let running = job(
        json!({}),
        json!({"phase": "Running", "build": {"pipeline": "p", "number": 17, "id": "b", "webUrl": "https://buildkite.com/org/p/builds/17"}}),
    );
    assert_eq!(
        progress_line(&running, Duration::from_secs(3700), now),
        "[1h01m] good Running | build #17 https://buildkite.com/org/p/builds/17"
    );
    // What plain (non-terminal) output compares to decide whether to print a new line.
    assert_eq!(progress_key(&running, now), "good Running | build #17 https://buildkite.com/org/p/builds/17");
    assert_eq!(fit("abcdefghij", 8), "abcde...");
    assert_eq!(fit("abc", 8), "abc");
}

#[test]
fn get_lists_jobs_as_a_table() {
    let now: jiff::Timestamp = "2026-01-01T10:05:00Z".parse().unwrap();
    let mut other = wrong();
    other.metadata.name = Some("wrong".into());
    other.metadata.namespace = Some("team-b".into());
    other.metadata.labels = None;
    other.metadata.creation_timestamp = None;
    let jobs = [passed(), other];
    let want = "\
NAME    PHASE       TARGET      SUBMITTER   POSITION   AGE         SCORE
good    Succeeded   h100        alice       -          5m          91.50 us
wrong   Succeeded   queue:q-1   <none>      -          <unknown>   -
";
    assert_eq!(jobs_table(&jobs, false, false, now), want);
    let want = "\
NAMESPACE   NAME    PHASE       TARGET      SUBMITTER   POSITION   AGE         SCORE      MODE          PASSED   BUILD   URL
ci          good    Succeeded   h100        alice       -          5m          91.50 us   leaderboard   true     17      https://buildkite.com/org/p/builds/17
team-b      wrong   Succeeded   queue:q-1   <none>      -          <unknown>   -          test          false    18      https://buildkite.com/org/p/builds/18
";
    assert_eq!(jobs_table(&jobs, true, true, now), want);
}

#[test]
fn units_and_ages_read_naturally() {
    assert_eq!(nanos(812.0), "812 ns");
    assert_eq!(nanos(91_500.0), "91.50 us");
    assert_eq!(nanos(2.5e6), "2.50 ms");
    assert_eq!(nanos(3.2e9), "3.200 s");
    assert_eq!(age(Duration::from_secs(59)), "59s");
    assert_eq!(age(Duration::from_secs(300)), "5m");
    assert_eq!(age(Duration::from_secs(3 * 3600)), "3h");
    assert_eq!(age(Duration::from_secs(3 * 86_400)), "3d");
    assert_eq!(elapsed(Duration::from_secs(125)), "2m05s");
}

#[test]
fn a_cached_result_names_its_origin() {
    let j = passed();
    let mut status = status_json(&j);
    status["cachedFrom"] =
        json!({"job": "ci/first", "uid": "u", "entry": "bkcache-k", "completionTime": "2026-12-03T10:00:00Z"});
    let text = result_text_with(&j, &status);
    assert!(
        text.contains(
            "\nCached:     the result of ci/first, finished 2026-12-03T10:00:00Z (result cache: no build ran)\n"
        ),
        "{text}"
    );
    assert!(!result_text(&j).contains("Cached:"));
}
