//! kernelbot parity: the payloads in `tests/kernelbot/cases/` were made and run by
//! kernelbot's own runner (`run_config` in `src/libkernelbot/run_eval.py`, at the commit in
//! `tests/kernelbot/manifest.json`) with `tests/kernelbot/generate.py`; here `benchkite run`
//! evaluates the same payloads and its result.json is compared with kernelbot's field by
//! field. Nothing of kernelbot, and no network, is needed at run time: only `python3` as the
//! tasks' interpreter, as for `tests/runner_eval.rs`.
//!
//! Compared exactly: every key at every level, `success`, every run's verdict, exit code,
//! command (but for the cases file's path), stdout, stderr (but for the working directory's
//! path), every harness result line, compilation and profile. Normalised, each for its
//! reason (see [`compare`]): timestamps, durations and benchmark timings (they are
//! measurements), the cases file's and the working directory's paths (temporary), the
//! system info's values (the machine's), and the wording of an infrastructure failure
//! (kernelbot's is a Python traceback).

#[path = "tasks/support.rs"]
mod support;

use std::path::Path;

use benchkite::contract;
use serde_json::Value;
use support::*;

fn kernelbot_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernelbot")
}

/// What a comparison needs to know about one case.
struct Ctx<'a> {
    /// The directory kernelbot ran in (it appears in tracebacks).
    kernelbot_cwd: &'a str,
    /// The harness's working directory under `benchkite run`.
    our_cwd: &'a str,
    /// Runs kernelbot ended on their timeout (exit code 114).
    timed_out: Vec<String>,
}

/// Benchmark statistics the harness measured: `benchmark.{i}.{mean,std,err,best,worst}`.
fn is_timing_key(key: &str) -> bool {
    key.strip_prefix("benchmark.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(i, stat)| i.parse::<u32>().is_ok() && matches!(stat, "mean" | "std" | "err" | "best" | "worst"))
}

/// `command` of a harness run ends with the path of the cases file, a temporary file in
/// both runners (kernelbot: `tempfile.NamedTemporaryFile`; benchkite: its work root).
fn without_cases_path(command: &str) -> String {
    match command.rsplit_once(' ') {
        Some((head, path)) if path.starts_with('/') => format!("{head} <cases file>"),
        _ => command.to_owned(),
    }
}

/// Compares kernelbot's value (`want`) with benchkite's (`got`) at `path`, pushing every
/// difference to `diffs`.
fn compare(path: &str, want: &Value, got: &Value, ctx: &Ctx<'_>, diffs: &mut Vec<String>) {
    let mut differ = |why: &str| diffs.push(format!("{path}: {why}\n  kernelbot: {want}\n  benchkite: {got}"));
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        // The machine's own facts (host name, CPU, kernel, torch as found): only the shape is
        // the contract.
        ["system", _] => {}
        // kernelbot reports a runner failure as a Python traceback (its Modal wrapper);
        // benchkite as a sentence. Both must name the same cause.
        ["error"] if want.as_str().is_some_and(|w| w.contains("Unknown runtime")) => {
            if !got.as_str().is_some_and(|g| g.contains("Unknown runtime")) {
                differ("both must fail with kernelbot's `Unknown runtime`");
            }
        }
        // When each run started and ended: both must be naive ISO datetimes, in order.
        ["runs", _, "start" | "end"] => {
            let ok = |v: &Value| v.as_str().is_some_and(|s| contract::parse_naive_datetime(s).is_some());
            if !ok(want) || !ok(got) {
                differ("not a naive ISO datetime");
            }
        }
        // Wall time of a run is a measurement, except after a timeout, where kernelbot
        // records the limit itself: then it must be equal.
        ["runs", _, "run", "duration"] => {
            let (w, g) = (want.as_f64(), got.as_f64());
            match (w, g) {
                (Some(w), Some(g)) if w == g => {}
                (Some(w), Some(g)) if w >= 0.0 && g >= 0.0 && !ctx.timed_out.iter().any(|r| r == segments[1]) => {}
                _ => differ("durations differ (equal after a timeout, else both ≥ 0)"),
            }
        }
        // The cases file's path is temporary in both runners.
        ["runs", _, "run", "command"] => {
            let (w, g) = (want.as_str().map(without_cases_path), got.as_str().map(without_cases_path));
            if w != g {
                differ("commands differ (cases file path aside)");
            }
        }
        // Timings the harness measured: equal (a cheat writes fixed ones) or both numbers.
        ["runs", _, "run", "result", key] if is_timing_key(key) => {
            let num = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok()).is_some_and(f64::is_finite);
            if want != got && !(num(want) && num(got)) {
                differ("timing is not a number");
            }
        }
        _ => match (want, got) {
            (Value::Object(w), Value::Object(g)) => {
                let wk: Vec<&String> = w.keys().collect();
                let gk: Vec<&String> = g.keys().collect();
                let mut ws = wk.clone();
                let mut gs = gk.clone();
                ws.sort();
                gs.sort();
                if ws != gs {
                    differ("keys differ");
                    return;
                }
                for k in w.keys() {
                    let sub = if path.is_empty() { k.clone() } else { format!("{path}/{k}") };
                    compare(&sub, &w[k], &g[k], ctx, diffs);
                }
            }
            (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
                for (i, (a, b)) in w.iter().zip(g).enumerate() {
                    compare(&format!("{path}/{i}"), a, b, ctx, diffs);
                }
            }
            // 0 and 0.0: Python writes an int timeout as the duration of a run that hit it.
            (Value::Number(w), Value::Number(g)) => {
                if w.as_f64() != g.as_f64() {
                    differ("numbers differ");
                }
            }
            // Output text: the working directory's path (temporary) appears in tracebacks.
            (Value::String(w), Value::String(g)) => {
                if w.replace(ctx.kernelbot_cwd, "<cwd>") != g.replace(ctx.our_cwd, "<cwd>") {
                    differ("text differs (working directory aside)");
                }
            }
            (w, g) if w == g => {}
            _ => differ("values differ"),
        },
    }
}

#[test]
fn benchkite_run_matches_kernelbots_run_config_on_every_golden() {
    let dir = kernelbot_dir();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json"))
            .expect("json");
    let env: Vec<(String, String)> = manifest["env"]
        .as_object()
        .expect("env")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("env value").to_owned()))
        .collect();
    let cases = manifest["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let payload = std::fs::read_to_string(dir.join(format!("cases/{name}.payload.b64"))).expect("payload");
        let golden: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("cases/{name}.kernelbot.json"))).expect("golden"),
        )
        .expect("golden json");

        let scratch = Scratch::new(&format!("parity-{name}"));
        let workdir = scratch.path().join("w");
        let workdir_s = workdir.to_string_lossy().into_owned();
        let mut env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env_refs.push(("KERNELBOT_PAYLOAD", payload.trim()));
        // The goldens were made on a machine without a GPU (see generate.py).
        let output = command(scratch.path(), None, &env_refs, &["--workdir", &workdir_s, "--no-gpu-probe"])
            .output()
            .expect("starting benchkite");
        let (_, ours) = read_result(&scratch.path().join("result.json"));

        let timed_out = golden["runs"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, r)| r["run"]["exit_code"] == contract::exit_code::TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        let our_cwd = workdir.join("work").to_string_lossy().into_owned();
        let ctx = Ctx { kernelbot_cwd: case["cwd"].as_str().expect("cwd"), our_cwd: &our_cwd, timed_out };
        let mut diffs = Vec::new();
        compare("", &golden, &ours, &ctx, &mut diffs);
        // kernelbot's runner exits 0 when it produced a result, benchkite 1 on an
        // infrastructure failure (the build step fails); the result says the same.
        let want_code = if golden["success"] == Value::Bool(true) { 0 } else { 1 };
        if output.status.code() != Some(want_code) {
            diffs.push(format!("exit status {:?}, want {want_code}", output.status.code()));
        }
        if !diffs.is_empty() {
            failures.push(format!(
                "== {name} ({})\n{}\n-- benchkite's log:\n{}",
                case["description"].as_str().unwrap_or_default(),
                diffs.join("\n"),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn the_comparison_catches_a_difference() {
    // A test that cannot fail would prove nothing: each rule still flags what it must.
    let ctx = Ctx { kernelbot_cwd: "/k", our_cwd: "/b", timed_out: vec!["leaderboard".into()] };
    let check = |want: Value, got: Value| {
        let mut d = Vec::new();
        compare("", &want, &got, &ctx, &mut d);
        d
    };
    let run = |spec: &str, dur: f64, cmd: &str, stderr: &str| {
        serde_json::json!({"success": true, "error": "", "system": {"gpu": "x"}, "runs": {"test": {
            "start": "2026-01-01T00:00:00", "end": "2026-01-01T00:00:01", "compilation": null, "profile": null,
            "run": {"success": true, "passed": true, "command": cmd, "stdout": "", "stderr": stderr,
                    "exit_code": 0, "duration": dur, "result": {"test.0.spec": spec, "benchmark.0.mean": "12.5"}}}}})
    };
    let base = run("size: 7; seed: 1", 0.1, "python3 eval.py test /tmp/tmpabc", "at /k/eval.py");
    // Equal up to what is normalised: durations, the cases path, the working directory.
    assert!(
        check(base.clone(), run("size: 7; seed: 1", 0.3, "python3 eval.py test /w/cases.test.txt", "at /b/eval.py"))
            .is_empty()
    );
    // Key order of a spec, the harness's mode, an output line: all caught.
    assert_eq!(check(base.clone(), run("seed: 1; size: 7", 0.1, "python3 eval.py test /x", "at /b/eval.py")).len(), 1);
    assert_eq!(
        check(base.clone(), run("size: 7; seed: 1", 0.1, "python3 eval.py benchmark /x", "at /b/eval.py")).len(),
        1
    );
    assert_eq!(check(base.clone(), run("size: 7; seed: 1", 0.1, "python3 eval.py test /x", "at /b/other.py")).len(), 1);
    // benchkite's side of `base`.
    let ours = run("size: 7; seed: 1", 0.2, "python3 eval.py test /w/cases.test.txt", "at /b/eval.py");
    let mut extra = ours.clone();
    extra["runs"]["test"]["run"]["result"]["benchmark.0.report"] = Value::from("x");
    let d = check(base.clone(), extra);
    assert_eq!(d.len(), 1, "{d:#?}");
    let mut bad_time = ours.clone();
    bad_time["runs"]["test"]["run"]["result"]["benchmark.0.mean"] = Value::from("n/a");
    assert_eq!(check(base.clone(), bad_time).len(), 1);
    // After a timeout the duration is the limit: compared exactly.
    let as_leaderboard = |mut v: Value, dur: f64| {
        let runs = v["runs"].as_object_mut().unwrap();
        let mut t = runs.remove("test").unwrap();
        t["run"]["duration"] = Value::from(dur);
        runs.insert("leaderboard".into(), t);
        v
    };
    assert!(check(as_leaderboard(base.clone(), 1.5), as_leaderboard(ours.clone(), 1.5)).is_empty());
    assert_eq!(check(as_leaderboard(base, 1.5), as_leaderboard(ours, 1.6)).len(), 1);
}
