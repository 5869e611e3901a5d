//! `benchkite certify` (the agent pod's init container) and the drift canary of
//! `benchkite run`, on the synthetic kernels (tests/tasks/synthetic) with simulated GPU
//! distortions passed through the sandbox as `SIMGPU_*`.

#[path = "tasks/support.rs"]
mod support;

use std::process::Command;

use benchkite::certify::report::CertReport;
use benchkite::contract;
use support::*;

struct Certified {
    code: Option<i32>,
    report: CertReport,
    epoch: String,
    stderr: String,
}

fn certify(scratch: &Scratch, suite: &str, env: &[(&str, &str)], args: &[&str]) -> Certified {
    let suite_file = scratch.path().join("suite.yaml");
    std::fs::write(&suite_file, suite).unwrap();
    let log = scratch.path().join("termination-log");
    let state = scratch.path().join("state");
    let out = Command::new(BIN)
        .arg("certify")
        .args(args)
        .env("BENCHKITE_SUITE_FILE", &suite_file)
        .env("BENCHKITE_TERMINATION_LOG", &log)
        .env("BENCHKITE_STATE_DIR", &state)
        .env("BENCHKITE_SANDBOX", "off")
        .env("BENCHKITE_NODE_NAME", "gpu-node-1")
        .env("KERNELBOT_GPU_INDEX", "2")
        .env_remove("BENCHKITE_CERTIFY_REQUIRED")
        .envs(env.iter().copied())
        .current_dir(scratch.path())
        .output()
        .expect("starting benchkite certify");
    let message = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = CertReport::from_message(&message).unwrap_or_else(|| panic!("no report: {message:?}\n{stderr}"));
    assert!(message.len() <= 4096);
    let epoch = std::fs::read_to_string(state.join("certification-epoch")).unwrap_or_default();
    Certified { code: out.status.code(), report, epoch, stderr }
}

#[test]
fn an_honest_slot_certifies_with_the_reference_times() {
    let s = Scratch::new("certify-ok");
    let c = certify(&s, &synthetic_suite(None), &[], &["--required"]);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(c.report.passed, "{:?}", c.report);
    assert_eq!((c.report.node.as_str(), c.report.slot.as_str()), ("gpu-node-1", "2"));
    assert_eq!(c.report.times.len(), SYNTHETIC_KERNELS.len());
    for (k, t) in SYNTHETIC_KERNELS {
        let got = c.report.times[&k.replace('_', "-")];
        assert!((got - t).abs() / t < 1e-6, "{k}: {got} vs {t}");
    }
    assert_eq!(c.epoch, c.report.at.to_string(), "the epoch is left for the agent's runner");
}

#[test]
fn a_slot_that_flips_two_close_kernels_fails_and_blocks_its_agent_when_required() {
    let s = Scratch::new("certify-flip");
    let flip = [("SIMGPU_KERNEL_FACTORS", "k_mid_a=0.9,k_mid_b=1.1"), ("BENCHKITE_SANDBOX_ENV", "SIMGPU_*")];
    let c = certify(&s, &synthetic_suite(None), &flip, &["--required"]);
    assert_eq!(c.code, Some(benchkite::runner::EXIT_NOT_CERTIFIED), "{}", c.stderr);
    assert!(!c.report.passed);
    assert!(c.report.times["k-mid-a"] < c.report.times["k-mid-b"], "the order flipped: {:?}", c.report.times);
    assert!(c.epoch.is_empty(), "no epoch for a failed slot");
    assert!(c.stderr.contains("FAILED"), "{}", c.stderr);
    // Advisory (not required): the same verdict, but the agent starts.
    let c = certify(&Scratch::new("certify-flip-advisory"), &synthetic_suite(None), &flip, &[]);
    assert_eq!(c.code, Some(0));
    assert!(!c.report.passed);
}

#[test]
fn a_uniformly_slow_slot_keeps_the_ranking() {
    // Ranking parity is about order: a slot 30 % slow on everything ranks like the
    // reference (the fleet comparison of the canaries is what catches it).
    let s = Scratch::new("certify-slow");
    let env = [("SIMGPU_FACTOR", "1.3"), ("BENCHKITE_SANDBOX_ENV", "SIMGPU_*")];
    let c = certify(&s, &synthetic_suite(None), &env, &["--required"]);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!((c.report.times["k-fast"] - 1.3e-3).abs() < 1e-9);
}

#[test]
fn a_suite_that_cannot_run_says_why() {
    let s = Scratch::new("certify-bad");
    let suite_file = s.path().join("suite.yaml");
    std::fs::write(&suite_file, "kernels: []").unwrap();
    let log = s.path().join("termination-log");
    let out = Command::new(BIN)
        .args(["certify", "--required"])
        .env("BENCHKITE_SUITE_FILE", &suite_file)
        .env("BENCHKITE_TERMINATION_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(benchkite::runner::EXIT_CANNOT_CERTIFY));
    let msg = std::fs::read_to_string(&log).unwrap();
    assert!(msg.contains("at least 2"), "{msg}");
    assert!(CertReport::from_message(&msg).is_none());
}

/// `benchkite run` of one synthetic kernel with the canary configured; the summary it set.
fn run_with_canary(scratch: &Scratch, every: &str) -> contract::ResultSummary {
    let md = scratch.path().join(format!("meta-data-{}", rand_suffix()));
    let state = scratch.path().join("state");
    let suite = scratch.path().join("suite.yaml");
    std::fs::write(&suite, synthetic_suite(Some("k-mid-b"))).unwrap();
    let env = [
        ("BUILDKITE_SIM_META_DATA_FILE", md.to_str().unwrap()),
        ("BENCHKITE_SUITE_FILE", suite.to_str().unwrap()),
        ("BENCHKITE_STATE_DIR", state.to_str().unwrap()),
        ("BENCHKITE_CANARY_EVERY", every),
        ("BENCHKITE_CANARY_MINUTES", "0"),
        ("SIMGPU_FACTOR", "1.5"),
        ("BENCHKITE_SANDBOX_ENV", "SIMGPU_*"),
    ];
    let r = run_with(Some(&encode(&synthetic("leaderboard", "k_fast"))), &env, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let text = std::fs::read_to_string(&md).unwrap();
    let value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["key"] == contract::META_DATA_KEY)
        .and_then(|v| v["value"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no summary in {text:?}"));
    contract::parse_meta_data_summary(&value).unwrap()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[test]
fn the_canary_runs_first_then_every_n_evaluations() {
    let s = Scratch::new("canary");
    let canaries: Vec<Option<contract::CanarySummary>> =
        (0..4).map(|_| run_with_canary(&s, "2").system.and_then(|x| x.canary)).collect();
    let c = canaries[0].as_ref().expect("the first evaluation times the canary");
    assert_eq!(c.kernel, "k-mid-b");
    assert!((c.seconds - 3.0e-3).abs() < 1e-9, "2 ms on a 1.5× slot: {c:?}");
    assert!(canaries[1].is_none(), "one evaluation since");
    assert!(canaries[2].is_some(), "two evaluations since");
    assert!(canaries[3].is_none());
}

#[test]
fn a_trusted_node_takes_the_reference_and_it_certifies_an_equal_slot() {
    let s = Scratch::new("certify-take");
    // The suite without its times: they are taken here, on a slot 1.2× slow on everything.
    let mut suite: serde_json::Value = serde_json::from_str(&synthetic_suite(None)).unwrap();
    for k in suite["kernels"].as_array_mut().unwrap() {
        k.as_object_mut().unwrap().remove("referenceSeconds");
    }
    let out = s.path().join("reference.yaml");
    let env = [("SIMGPU_FACTOR", "1.2"), ("BENCHKITE_SANDBOX_ENV", "SIMGPU_*")];
    let suite_file = s.path().join("suite.yaml");
    std::fs::write(&suite_file, suite.to_string()).unwrap();
    let status = Command::new(BIN)
        .args(["certify", "--reference-out", out.to_str().unwrap()])
        .env("BENCHKITE_SUITE_FILE", &suite_file)
        .env("BENCHKITE_SANDBOX", "off")
        .env("BENCHKITE_TERMINATION_LOG", s.path().join("log"))
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
    let taken = benchkite::certify::suite::Suite::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!((taken.reference()["k-slow"] - 1.2e-2).abs() < 1e-9, "{:?}", taken.reference());
    // Another slot of the same speed certifies against it.
    let c = certify(&Scratch::new("certify-taken"), &std::fs::read_to_string(&out).unwrap(), &env, &["--required"]);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(c.report.passed);
}
