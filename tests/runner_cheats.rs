//! kernelbot's cheat examples (`examples/identity_py/cheat-*.py`) on the CPU, through the
//! real `benchkite run` (tests/tasks/identity_py): what the infrastructure catches and
//! what only the task's harness can. Each cheat runs against the task's harness (`eval.py`,
//! kernelbot's design) and against a naive in-process harness (`eval_inprocess.py`) that
//! has only the infrastructure to rely on.
//!
//! Summary (details in tests/tasks/README.md):
//! - cheat-fd (forge the verdict on `POPCORN_FD`): the runner accepts any line on the pipe
//!   from any process that holds it. Caught only by a harness that keeps the fd from the
//!   submission (worker without the fd).
//! - cheat-input (overwrite the input in place): caught only by a harness that checks
//!   against its own copy.
//! - cheat-rng (regenerate the answer from the public seed): the runner hands the secret
//!   seed only to the harness (`POPCORN_SEED`, never in the submission's reach through the
//!   runner's env or /proc); the harness must combine it into every seed and keep it from
//!   the worker. With public seeds (test, benchmark without `seed`) nothing can catch it.
//! - cheat-seed (steal `POPCORN_SEED` from the harness's /proc/<pid>/environ): same user as
//!   the harness inside the sandbox, so only a harness that makes itself non-dumpable stops it.

#[path = "tasks/support.rs"]
mod support;

use serde_json::{Value, json};
use support::*;

/// The identity task with `harness` as main and the given submission.
fn identity(mode: &str, harness: &str, submission: &str, seed: Option<u64>) -> Value {
    let f = |n: &str| task_file(&format!("identity_py/{n}"));
    json!({
        "lang": "py",
        "mode": mode,
        "main": harness,
        "sources": {
            harness: f(harness),
            "task.py": f("task.py"),
            "reference.py": f("reference.py"),
            "submission.py": f(&format!("submission_{submission}.py")),
        },
        // kernelbot's identity_py task.yml (a subset of its sizes; the last benchmark is the
        // case cheat-rng targets).
        "tests": [{"size": 127, "seed": 4242}, {"size": 128, "seed": 5236}, {"size": 129, "seed": 1001}],
        "benchmarks": [{"size": 1024, "seed": 54352}, {"size": 2048, "seed": 93246}, {"size": 4096, "seed": 125432}],
        "test_timeout": 60,
        "benchmark_timeout": 60,
        "ranked_timeout": 60,
        "ranking_by": "geom",
        "seed": seed,
        "multi_gpu": false,
    })
}

const HARNESS: &str = "eval.py";
const NAIVE: &str = "eval_inprocess.py";

/// The interpreter the sandbox user can reach (not a pyenv shim under /root).
const PYTHON: &str = "/usr/bin/python3";

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a cheat as an agent pod does (root: sandboxed as `uid`, one uid per test since the
/// sandbox kills every process of its uid; otherwise unsandboxed); the runner itself must
/// work (`success`), whatever the verdict.
fn verdict(uid: u32, mode: &str, harness: &str, submission: &str, seed: Option<u64>) -> (bool, Run) {
    let uid = uid.to_string();
    let args: Vec<&str> = if root() {
        vec![
            "--sandbox",
            "required",
            "--sandbox-uid",
            &uid,
            "--sandbox-gid",
            &uid,
            "--python",
            PYTHON,
            "--no-gpu-probe",
        ]
    } else {
        vec!["--sandbox", "off", "--no-gpu-probe"]
    };
    let r = run_with(Some(&encode(&identity(mode, harness, submission, seed))), &[], &args);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success, "{:#}", r.json);
    let stage = if mode == "test" { "test" } else { "benchmark" };
    let passed = r.run(stage).passed;
    (passed, r)
}

#[test]
fn the_honest_submission_passes_both_harnesses() {
    for h in [HARNESS, NAIVE] {
        for (mode, seed) in [("test", None), ("benchmark", None), ("benchmark", Some(987_654_321))] {
            let (passed, r) = verdict(62_201, mode, h, "ok", seed);
            assert!(passed, "{h} {mode} {seed:?}: {:#}", r.json);
        }
    }
}

#[test]
fn cheat_fd_forges_a_pass_unless_the_harness_keeps_the_pipe() {
    // Infrastructure only: the forged `check: pass` is the verdict.
    let (passed, r) = verdict(62_202, "test", NAIVE, "cheat_fd", None);
    assert!(passed, "the runner cannot tell who wrote to POPCORN_FD: {:#}", r.json);
    let t = r.run("test");
    assert_eq!(t.result["check"], "pass");
    assert_eq!(t.result["benchmark.0.mean"], "1e-05", "the forged lines are taken as they are");
    // kernelbot's harness design: the worker has no POPCORN_FD, the import fails.
    let (passed, r) = verdict(62_202, "test", HARNESS, "cheat_fd", None);
    assert!(!passed, "{:#}", r.json);
    let t = r.run("test");
    assert_eq!(t.exit_code, 112);
    assert_eq!(t.result["check"], "fail");
    assert_eq!(t.result["test.0.message"], "submission worker exited with 1");
    assert!(t.stderr.contains("int() argument must be"), "{}", t.stderr);
}

#[test]
fn cheat_input_passes_unless_the_harness_checks_its_own_copy() {
    let (passed, r) = verdict(62_203, "test", NAIVE, "cheat_input", None);
    assert!(passed, "overwritten input = overwritten output: {:#}", r.json);
    let (passed, r) = verdict(62_203, "test", HARNESS, "cheat_input", None);
    assert!(!passed, "{:#}", r.json);
    let t = r.run("test");
    assert!(t.result["test.0.message"].starts_with("mismatch found!"), "{:?}", t.result);
}

#[test]
fn cheat_rng_passes_on_public_seeds_and_fails_on_a_secret_one() {
    // Public seeds: the regenerated answer is right; nothing can tell.
    for h in [HARNESS, NAIVE] {
        let (passed, r) = verdict(62_204, "benchmark", h, "cheat_rng", None);
        assert!(passed, "{h}: {:#}", r.json);
    }
    // A secret seed: the runner gives it to the harness only; a harness that ignores it
    // is still fooled, kernelbot's design (combine it into every case seed) is not.
    // (kernelbot's cheat-rng asserts the seed is out of its sight: the naive harness leaks
    // it through its own environment, so the cheat gives up here)
    let (passed, r) = verdict(62_204, "benchmark", NAIVE, "cheat_rng", Some(987_654_321));
    assert!(!passed, "{:#}", r.json);
    assert!(r.run("benchmark").stderr.contains("AssertionError"), "{:#}", r.json);
    let (passed, r) = verdict(62_204, "benchmark", HARNESS, "cheat_rng", Some(987_654_321));
    assert!(!passed, "{:#}", r.json);
    let b = r.run("benchmark");
    assert_eq!(b.result["benchmark.2.status"], "fail");
    assert!(b.result["benchmark.2.error"].starts_with("mismatch found!"), "{:?}", b.result);
    assert_eq!(b.result["benchmark.0.runs"], "10", "the honest cases before it ran");
}

#[test]
fn cheat_seed_cannot_read_the_secret_seed_from_a_non_dumpable_harness() {
    if !root() {
        eprintln!("skipped: needs root (the runner's sandbox user keeps root's /proc out of reach)");
        return;
    }
    let (passed, r) = verdict(62_205, "benchmark", HARNESS, "cheat_seed", Some(987_654_321));
    assert!(!passed, "{:#}", r.json);
    let b = r.run("benchmark");
    assert!(b.stdout.contains("cheat_seed: cannot read the harness's environment"), "{}", b.stdout);
    assert!(!b.stdout.contains("987654321"));
}
