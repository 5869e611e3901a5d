//! `benchkite run` end to end on tiny CPU tasks: modes, verdicts, timeouts, crashes, bad
//! payloads, the CUDA path (without and with a stand-in nvcc). Every result.json is read
//! back through the controller's parser.

#[path = "tasks/support.rs"]
mod support;

use base64::Engine as _;
use benchkite::contract::{self, RankingBy, exit_code};
use serde_json::{Value, json};
use support::*;

fn as_f64(m: &std::collections::BTreeMap<String, String>, k: &str) -> f64 {
    m.get(k).unwrap_or_else(|| panic!("missing {k}")).parse().unwrap_or_else(|_| panic!("{k} not a number"))
}

#[test]
fn test_mode_with_a_correct_submission_passes() {
    let r = run_config(&vectoradd("test", "ok"));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success);
    assert_eq!(r.result.error, "");
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["test"]);
    let t = r.run("test");
    assert!(t.success && t.passed, "{t:?}");
    assert_eq!(t.exit_code, 0);
    assert_eq!(t.result["check"], "pass");
    assert_eq!(t.result["test-count"], "3");
    for i in 0..3 {
        assert_eq!(t.result[&format!("test.{i}.status")], "pass");
    }
    // Specs are the cases file lines, as Python's str() writes them.
    assert_eq!(t.result["test.1.spec"], "seed: 2; size: 250");
    assert!(t.command.starts_with("python3 eval.py test /"), "{}", t.command);
    assert!(t.duration > 0.0);
    assert_eq!(t.stdout, "Running in mode test with 3 cases\n");
    let eval = &r.result.runs["test"];
    assert!(eval.compilation.is_none() && eval.profile.is_none());
    let (start, end) = (eval.start_time().expect("start"), eval.end_time().expect("end"));
    assert!(start <= end);
    // System info without GPU tools: still filled where it can be.
    assert!(r.result.system.platform.starts_with("Linux-"), "{:?}", r.result.system);
    assert!(!r.result.system.hostname.is_empty());
    assert_eq!(r.result.system.device_count, 1);
    // Every contract field is present in the JSON, nulls included.
    for k in ["start", "end", "compilation", "run", "profile"] {
        assert!(r.json["runs"]["test"].get(k).is_some(), "{k}");
    }
    for k in ["gpu", "device_count", "cpu", "runtime", "platform", "torch", "hostname"] {
        assert!(r.json["system"].get(k).is_some(), "{k}");
    }
}

#[test]
fn a_wrong_submission_fails_its_test_with_the_message() {
    let r = run_config(&vectoradd("test", "wrong"));
    // The kernel failing is a verdict, not an infrastructure failure.
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success);
    let t = r.run("test");
    assert_eq!(t.exit_code, exit_code::VALIDATION_FAILURE);
    assert!(t.success, "exit 112 is a successful run");
    assert!(!t.passed);
    assert_eq!(t.result["check"], "fail");
    assert_eq!(t.result["test.0.status"], "pass");
    assert_eq!(t.result["test.1.status"], "fail");
    assert!(t.result["test.1.message"].starts_with("mismatch at index 100:"), "{:?}", t.result);
    let s = contract::summarize(&r.result, &RankingBy::Last);
    assert_eq!(s.passed, Some(false));
    let tests = s.tests().expect("tests");
    assert_eq!((tests.total, tests.passed, tests.failed), (3, 1, 2));
    assert_eq!(tests.failures[0].index, 1);
    assert!(tests.failures[0].message.starts_with("mismatch at index 100"));
}

#[test]
fn a_crashing_submission_reports_its_exit_code_and_stderr() {
    let r = run_config(&vectoradd("test", "crash"));
    assert_eq!(r.code(), Some(0));
    assert!(r.result.success);
    let t = r.run("test");
    assert_eq!(t.exit_code, 1);
    assert!(!t.success && !t.passed);
    assert!(t.stderr.contains("launching kernel"), "{}", t.stderr);
    assert!(t.stderr.contains("RuntimeError: CUDA error: an illegal memory access"), "{}", t.stderr);
    // What the harness wrote before dying is kept.
    assert_eq!(t.result["test-count"], "3");
    let s = contract::summarize(&r.result, &RankingBy::Last);
    assert!(s.runs["test"].error.as_deref().unwrap_or("").contains("illegal memory access"));
}

#[test]
fn a_segfault_is_minus_the_signal() {
    let r = run_config(&vectoradd("test", "segv"));
    assert_eq!(r.code(), Some(0));
    let t = r.run("test");
    assert_eq!(t.exit_code, -11);
    assert!(!t.success && !t.passed);
}

#[test]
fn a_hanging_submission_is_killed_at_the_timeout_with_its_whole_group() {
    let mut cfg = vectoradd("test", "hang");
    cfg["test_timeout"] = json!(3);
    let scratch = Scratch::new("hang");
    let pidfile = scratch.path().join("grandchild.pid");
    let pidfile_s = pidfile.to_string_lossy().into_owned();
    let r = run_with(Some(&encode(&cfg)), &[("BENCHKITE_TEST_PIDFILE", &pidfile_s)], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success);
    let t = r.run("test");
    assert_eq!(t.exit_code, exit_code::TIMEOUT);
    assert!(!t.success && !t.passed);
    // As kernelbot's `run_program`: the limit is the duration, no results, and the run's
    // stderr is only what the program wrote; the note is in the job log.
    assert_eq!(t.duration, 3.0);
    assert!(t.result.is_empty());
    assert!(!t.stderr.contains("timed out"), "{}", t.stderr);
    assert!(r.stderr().contains("test run timed out after 3 s (test_timeout)"), "{}", r.stderr());
    let gc = read_pid(&pidfile);
    assert!(process_gone(gc), "grandchild sleep {gc} survived the timeout");
}

#[test]
fn benchmark_mode_reports_statistics() {
    let mut cfg = vectoradd("benchmark", "ok");
    cfg["ranking_by"] = json!("mean");
    let r = run_config(&cfg);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["benchmark"]);
    let b = r.run("benchmark");
    assert!(b.success && b.passed);
    assert_eq!(b.result["benchmark-count"], "3");
    for i in 0..3 {
        assert_eq!(b.result[&format!("benchmark.{i}.runs")], "20");
        let mean = as_f64(&b.result, &format!("benchmark.{i}.mean"));
        let best = as_f64(&b.result, &format!("benchmark.{i}.best"));
        let worst = as_f64(&b.result, &format!("benchmark.{i}.worst"));
        assert!(best > 0.0 && best <= mean && mean <= worst, "{best} {mean} {worst}");
        for s in ["std", "err"] {
            assert!(as_f64(&b.result, &format!("benchmark.{i}.{s}")) >= 0.0);
        }
    }
    assert_eq!(b.result["benchmark.2.spec"], "seed: 13; size: 2000");
}

#[test]
fn leaderboard_runs_all_three_stages_and_scores_per_the_contract() {
    for (ranking, rk) in [("last", RankingBy::Last), ("mean", RankingBy::Mean), ("geom", RankingBy::Geom)] {
        let mut cfg = vectoradd("leaderboard", "ok");
        cfg["ranking_by"] = json!(ranking);
        let md = Scratch::new("md");
        let md_file = md.path().join("meta-data");
        let md_s = md_file.to_string_lossy().into_owned();
        let r = run_with(Some(&encode(&cfg)), &[("BUILDKITE_SIM_META_DATA_FILE", &md_s)], &[]);
        assert_eq!(r.code(), Some(0), "{ranking}: {}", r.stderr());
        assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["benchmark", "leaderboard", "test"], "{ranking}");
        for name in ["test", "benchmark", "leaderboard"] {
            let run = r.run(name);
            assert!(run.success && run.passed, "{ranking} {name}");
            assert!(run.command.contains(&format!(" eval.py {name} ")), "{}", run.command);
        }
        let lb = &r.run("leaderboard").result;
        // The contract's formula, computed here from the ranked run's own numbers.
        let want = match ranking {
            "last" => {
                // Only the last benchmark is timed when ranking by it (as the seeds do).
                assert_eq!(lb["benchmark-count"], "1");
                assert_eq!(lb["benchmark.0.spec"], "seed: 13; size: 2000");
                as_f64(lb, "benchmark.0.mean") / 1e9
            }
            _ => {
                assert_eq!(lb["benchmark-count"], "3");
                let means: Vec<f64> = (0..3).map(|i| as_f64(lb, &format!("benchmark.{i}.mean")) / 1e9).collect();
                if ranking == "mean" {
                    means.iter().sum::<f64>() / 3.0
                } else {
                    means.iter().product::<f64>().powf(1.0 / 3.0)
                }
            }
        };
        let score = contract::score(&r.result, &rk).expect("score");
        assert!((score - want).abs() <= want * 1e-9, "{ranking}: {score} vs {want}");
        // The meta-data summary carries the same score and is exactly summarize() of the
        // result.json the runner wrote, plus the environment fingerprint (which result.json,
        // kernelbot's format, does not carry).
        let text = std::fs::read_to_string(&md_file).expect("meta-data file");
        let line: Value = serde_json::from_str(text.trim()).expect("meta-data line");
        assert_eq!(line["key"], contract::META_DATA_KEY);
        let value = line["value"].as_str().expect("value");
        let mut s = contract::parse_meta_data_summary(value).expect("summary");
        let fingerprint = s.system.as_mut().and_then(|sys| sys.fingerprint.take());
        assert!(fingerprint.is_some_and(|f| !f.harness_sha256.is_empty()), "{value}");
        assert_eq!(s, contract::summarize(&r.result, &rk));
        assert_eq!(s.score, Some(score));
        assert_eq!(s.passed, Some(true));
        assert_eq!(s.ranking_by, Some(rk));
    }
}

#[test]
fn leaderboard_stops_after_a_failed_test_and_private_runs_like_leaderboard() {
    let r = run_config(&vectoradd("leaderboard", "wrong"));
    assert_eq!(r.code(), Some(0));
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["test"]);
    assert_eq!(contract::score(&r.result, &RankingBy::Last), None);

    let r = run_config(&vectoradd("private", "ok"));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["benchmark", "leaderboard", "test"]);
    // The ranked run of a private submission is the harness's leaderboard mode.
    assert!(r.run("leaderboard").command.contains(" leaderboard "));
    assert!(contract::score(&r.result, &RankingBy::Last).is_some());
}

#[test]
fn seed_and_gpu_count_reach_the_harness() {
    let scratch = Scratch::new("gpus");
    scratch.tool("nvidia-smi", "#!/bin/sh\nprintf 'NVIDIA Fake GPU\\nNVIDIA Fake GPU\\n'\n");
    let path = scratch.path_with_tools();
    let mut cfg = vectoradd("test", "ok");
    cfg["seed"] = json!(-1234);
    cfg["multi_gpu"] = json!(true);
    let r = run_with(Some(&encode(&cfg)), &[("PATH", &path)], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let t = r.run("test");
    assert_eq!(t.result["seed"], "-1234");
    assert_eq!(t.result["gpus"], "2");
    let sys = &r.result.system;
    assert_eq!((sys.gpu.as_str(), sys.device_count, sys.runtime.as_str()), ("NVIDIA Fake GPU", 2, "CUDA"));

    // Without multi_gpu there is no POPCORN_GPUS; without a seed no POPCORN_SEED.
    let r = run_config(&vectoradd("test", "ok"));
    assert!(!r.run("test").result.contains_key("gpus"));
    assert!(!r.run("test").result.contains_key("seed"));
}

#[test]
fn long_output_is_cut_like_kernelbot() {
    let r = run_config(&vectoradd("test", "noisy"));
    assert_eq!(r.code(), Some(0));
    let t = r.run("test");
    assert!(t.passed);
    assert!(t.stdout.chars().count() <= contract::OUTPUT_LIMIT, "{}", t.stdout.len());
    assert!(t.stdout.starts_with("debug line 0: "));
    // kernelbot's `_limit_length`: whole lines, then how many lines were left out.
    let last = t.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("[...] ") && last.ends_with(" lines omitted"), "{last}");
    assert_eq!(t.stderr, "END OF NOISE\n");
}

#[test]
fn bad_payloads_give_an_infrastructure_failure_and_exit_1() {
    let cases: Vec<(&str, String)> = vec![
        ("payload is not valid base64", "this is not base64!".into()),
        ("payload is not a valid zlib stream", "eyJsYW5nIjogInB5In0=".into()),
        ("payload is not a valid config JSON", encode_bytes(b"{\"lang\": ")),
        ("at `mode`", encode_bytes(br#"{"lang": "py", "mode": "fast"}"#)),
        ("requires `main`", encode_bytes(br#"{"lang": "py", "mode": "test", "sources": {"a.py": "x"}}"#)),
        ("not allowed", encode_bytes(br#"{"lang": "cu", "mode": "test", "sources": {"../x.cu": "x"}}"#)),
        ("payload is empty", "  ".into()),
    ];
    for (want, payload) in cases {
        let r = run_with(Some(&payload), &[], &[]);
        assert_eq!(r.code(), Some(1), "{want}");
        assert!(!r.result.success, "{want}");
        assert!(r.result.error.contains(want), "{want}: {}", r.result.error);
        assert!(r.result.runs.is_empty());
        assert!(r.stderr().contains("infrastructure failure"), "{}", r.stderr());
        assert!(!r.stderr().contains("panicked"));
        let s = contract::summarize(&r.result, &RankingBy::Last);
        assert_eq!((s.success, s.passed), (false, None));
    }
    let r = run_with(None, &[], &[]);
    assert_eq!(r.code(), Some(1));
    assert_eq!(
        r.result.error,
        "no payload: neither KERNELBOT_PAYLOAD nor BENCHKITE_PAYLOAD_PARTS is set (or pass --payload-file)"
    );
}

#[test]
fn a_payload_encoded_by_python_is_accepted() {
    let cfg = vectoradd("test", "ok");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64, json, sys, zlib\ncfg = json.load(sys.stdin)\n\
             print(base64.b64encode(zlib.compress(json.dumps(cfg).encode())).decode())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().expect("stdin").write_all(cfg.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3");
    assert!(out.status.success());
    let payload = String::from_utf8(out.stdout).expect("utf-8");
    let r = run_with(Some(payload.trim()), &[], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.run("test").passed);
}

#[test]
fn payload_file_and_stdin_work_too() {
    let scratch = Scratch::new("pf");
    let file = scratch.path().join("payload.b64");
    std::fs::write(&file, encode(&vectoradd("test", "ok"))).expect("write");
    let file_s = file.to_string_lossy().into_owned();
    let r = run_with(None, &[], &["--payload-file", &file_s]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.run("test").passed);

    let work = Scratch::new("stdin");
    let out = command(work.path(), None, &[], &["--payload-file", "-", "--output", "out.json"])
        .stdin(std::fs::File::open(&file).expect("open"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let (result, _) = read_result(&work.path().join("out.json"));
    assert!(result.runs["test"].run.as_ref().is_some_and(|r| r.passed));

    let r = run_with(None, &[], &["--payload-file", "/nonexistent/payload"]);
    assert_eq!(r.code(), Some(1));
    assert!(r.result.error.contains("/nonexistent/payload"));
}

fn cu_config(mode: &str) -> Value {
    json!({
        "lang": "cu",
        "mode": mode,
        "arch": "90a",
        "sources": {"eval.cu": "int main() {}\n", "submission.cu": "__global__ void k() {}\n"},
        "headers": {"task.h": "#pragma once\n"},
        "defines": {"N": 4, "BARE": null},
        "compile_flags": ["--use_fast_math"],
        "libraries": ["cuda"],
        "tests": [{"size": 8, "seed": 1}],
        "benchmarks": [{"size": 64, "seed": 2}],
    })
}

#[test]
fn cuda_without_nvcc_is_a_clean_infrastructure_failure() {
    if std::path::Path::new("/usr/local/cuda/bin/nvcc").exists() {
        eprintln!("skipped: this machine has /usr/local/cuda/bin/nvcc");
        return;
    }
    let scratch = Scratch::new("nonvcc");
    scratch.tool("placeholder", "#!/bin/sh\n");
    let path = format!("{}:/usr/bin:/bin", scratch.path().join("bin").display());
    let r = run_with(Some(&encode(&cu_config("test"))), &[("PATH", &path), ("CUDA_HOME", ""), ("CUDA_PATH", "")], &[]);
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert!(!r.result.success);
    assert!(r.result.error.contains("nvcc not found"), "{}", r.result.error);
    let test = &r.result.runs["test"];
    let c = test.compilation.as_ref().expect("compilation");
    assert!(!c.nvcc_found && !c.success);
    assert!(c.stderr.contains("nvcc not found"));
    assert!(c.command.contains("-gencode=arch=compute_90a,code=sm_90a"), "{}", c.command);
    assert!(test.run.is_none());
}

/// A stand-in nvcc: answers --version, records its arguments, and "compiles" by writing a
/// shell harness to the `-o` path that reports whether the sources are still there.
const FAKE_NVCC: &str = r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "nvcc: fake, release 12.4"; exit 0; fi
echo "$@" > "$FAKE_NVCC_LOG"
out=""
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then out="$2"; shift; fi
  shift
done
[ -f submission.cu ] && [ -f task.h ] || { echo "sources missing" >&2; exit 2; }
if [ -n "$FAKE_NVCC_FAIL" ]; then echo "submission.cu(1): error: expected a ';'" >&2; exit 1; fi
cat > "$out" <<'EOS'
#!/usr/bin/env python3
import os, sys
present = "yes" if os.path.exists("submission.cu") else "no"
cases = open(sys.argv[2]).read().strip()
os.write(int(os.environ["POPCORN_FD"]), f"sources-present: {present}\ncases: {cases}\ncheck: pass\n".encode())
print("mode", sys.argv[1])
EOS
chmod +x "$out"
echo "ptxas info: fake" >&2
"#;

#[test]
fn cuda_compiles_once_and_runs_the_binary() {
    let scratch = Scratch::new("fakenvcc");
    let nvcc = scratch.tool("nvcc", FAKE_NVCC);
    let log = scratch.path().join("nvcc.log");
    let log_s = log.to_string_lossy().into_owned();
    let nvcc_s = nvcc.to_string_lossy().into_owned();
    let r = run_with(Some(&encode(&cu_config("leaderboard"))), &[("FAKE_NVCC_LOG", &log_s)], &["--nvcc", &nvcc_s]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success);
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["benchmark", "leaderboard", "test"]);
    let args = std::fs::read_to_string(&log).expect("nvcc log");
    assert!(
        args.trim_end().ends_with(
            "-O3 -Xnvlink=--verbose -Xptxas=--verbose -Xptxas=--warn-on-spills --use_fast_math -lcuda -DBARE -DN=4 \
             eval.cu submission.cu -gencode=arch=compute_90a,code=sm_90a -o eval.out"
        ),
        "{args}"
    );
    for name in ["test", "benchmark", "leaderboard"] {
        let e = &r.result.runs[name];
        let c = e.compilation.as_ref().expect("compilation");
        assert!(c.nvcc_found && c.success);
        assert_eq!(c.nvcc_version, "nvcc: fake, release 12.4\n");
        assert_eq!(c.stderr, "ptxas info: fake\n");
        assert!(c.command.starts_with(&nvcc_s));
        let run = e.run.as_ref().expect("run");
        assert!(run.passed, "{name}: {run:?}");
        assert!(run.command.starts_with(&format!("./eval.out {name} /")), "{}", run.command);
        // Sources are removed before the submitted binary runs.
        assert_eq!(run.result["sources-present"], "no");
        assert_eq!(run.stdout, format!("mode {name}\n"));
    }
    assert_eq!(r.run("test").result["cases"], "seed: 1; size: 8");
    assert_eq!(r.run("leaderboard").result["cases"], "seed: 2; size: 64");
}

#[test]
fn a_compile_error_is_the_kernels_failure() {
    let scratch = Scratch::new("nvccfail");
    let nvcc = scratch.tool("nvcc", FAKE_NVCC);
    let log = scratch.path().join("nvcc.log");
    let log_s = log.to_string_lossy().into_owned();
    let nvcc_s = nvcc.to_string_lossy().into_owned();
    let mut cfg = cu_config("leaderboard");
    cfg["arch"] = Value::Null;
    let r = run_with(Some(&encode(&cfg)), &[("FAKE_NVCC_LOG", &log_s), ("FAKE_NVCC_FAIL", "1")], &["--nvcc", &nvcc_s]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success);
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["test"]);
    let e = &r.result.runs["test"];
    let c = e.compilation.as_ref().expect("compilation");
    assert!(c.nvcc_found && !c.success);
    assert_eq!(c.exit_code, 1);
    assert!(c.stderr.contains("expected a ';'"));
    assert!(c.command.contains("-arch=native"), "{}", c.command);
    assert!(e.run.is_none());
    let s = contract::summarize(&r.result, &RankingBy::Last);
    assert_eq!(s.passed, Some(false));
    assert_eq!(s.runs["test"].compiled, Some(false));
}

/// The vector-add config as raw JSON text with the cases' keys in kernelbot's order (`size`
/// before `seed`; `json!` would sort them).
fn vectoradd_ordered(mode: &str, submission_source: &str, extra: &str) -> String {
    let sources = json!({
        "eval.py": task_file("vectoradd/eval.py"),
        "reference.py": task_file("vectoradd/reference.py"),
        "submission.py": submission_source,
    });
    format!(
        r#"{{"main": "eval.py", "sources": {sources}, "lang": "py", "arch": null,
            "benchmarks": [{{"size": 500, "seed": 11}}, {{"size": 1000, "seed": 12}}],
            "tests": [{{"size": 16, "seed": 1}}, {{"size": 250, "seed": 2}}],
            "mode": "{mode}", "test_timeout": 60, "benchmark_timeout": 60, "ranked_timeout": 60,
            "ranking_by": "last", "seed": null, "multi_gpu": false{extra}}}"#
    )
}

#[test]
fn cases_keep_the_payloads_key_order() {
    let cfg = vectoradd_ordered("leaderboard", &task_file("vectoradd/submission_ok.py"), "");
    let r = run_with(Some(&encode_bytes(cfg.as_bytes())), &[], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let t = r.run("test");
    assert_eq!(t.result["test.0.spec"], "size: 16; seed: 1");
    assert_eq!(t.result["test.1.spec"], "size: 250; seed: 2");
    // Ranked by the last benchmark: the benchmark and leaderboard runs get that line only.
    assert_eq!(r.run("benchmark").result["benchmark.0.spec"], "size: 1000; seed: 12");
    assert_eq!(r.run("leaderboard").result["benchmark.0.spec"], "size: 1000; seed: 12");
}

/// A submission that "JIT-compiles" like `load_inline(verbose=True)`: the first import in a
/// directory sleeps 2 s and prints the torch extension build line; later ones find the
/// cache. It also records the environment of every start.
const JIT_SUBMISSION: &str = r#"
import os, sys, time
with open("starts.log", "a") as f:
    seen = sorted(k for k in os.environ if "PAYLOAD" in k or k == "BUILDKITE_AGENT_ACCESS_TOKEN")
    f.write(f"{sys.argv[0]} seed={os.environ.get('POPCORN_SEED')} fd={'POPCORN_FD' in os.environ} hidden={seen}\n")
if not os.path.exists("build.cache"):
    print("c++ -MMD -MF main.o.d -DTORCH_EXTENSION_NAME=jit_ext -DTORCH_API_INCLUDE_EXTENSION_H -c main.cpp")
    print("compile warning", file=sys.stderr)
    time.sleep(2)
    open("build.cache", "w").close()


def custom_kernel(data):
    a, b = data
    return [x + y for x, y in zip(a, b)]
"#;

#[test]
fn python_submissions_compile_before_each_stage_outside_its_timeout() {
    // 1.5 s for the test run: the 2 s "compilation" fits only because the compile step
    // runs first, outside the limit (kernelbot's `python3 submission.py`).
    let cfg = vectoradd_ordered("leaderboard", JIT_SUBMISSION, r#", "test_timeout": 1.5"#);
    let scratch = Scratch::new("jit");
    let workdir = scratch.path().join("w");
    let workdir_s = workdir.to_string_lossy().into_owned();
    let r = run_with(
        Some(&encode_bytes(cfg.as_bytes())),
        &[("BUILDKITE_AGENT_ACCESS_TOKEN", "secret")],
        &["--workdir", &workdir_s],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["benchmark", "leaderboard", "test"]);
    let test = &r.result.runs["test"];
    assert!(test.run.as_ref().is_some_and(|t| t.passed), "{test:?}");
    let c = test.compilation.as_ref().expect("the compile step built an extension");
    assert!(c.nvcc_found && c.success && c.nvcc_version.is_empty(), "{c:?}");
    assert_eq!((c.command.as_str(), c.exit_code), ("python3 submission.py", 0));
    assert!(c.stdout.contains("-DTORCH_EXTENSION_NAME=jit_ext"), "{}", c.stdout);
    assert_eq!(c.stderr, "compile warning\n");
    // Later stages find the cache: nothing printed, no compilation recorded (as kernelbot).
    for name in ["benchmark", "leaderboard"] {
        assert!(r.result.runs[name].compilation.is_none(), "{name}");
    }
    // One compile step per stage, then the harness's import: the compile step sees seed 1
    // and a result pipe, and neither sees the payload or the agent token.
    let starts = std::fs::read_to_string(workdir.join("work/starts.log")).expect("starts.log");
    let lines: Vec<&str> = starts.lines().collect();
    assert_eq!(lines.len(), 6, "{starts}");
    for pair in lines.chunks(2) {
        assert_eq!(pair[0], "submission.py seed=1 fd=True hidden=[]");
        assert_eq!(pair[1], "eval.py seed=None fd=True hidden=[]");
    }
}

#[test]
fn a_compile_step_without_an_extension_build_leaves_compilation_null() {
    let scratch = Scratch::new("noext");
    let workdir = scratch.path().join("w");
    let workdir_s = workdir.to_string_lossy().into_owned();
    let sub = "import sys\nprint('hello from', sys.argv[0])\nraise SystemExit(3)\n";
    let cfg = vectoradd_ordered("test", sub, "");
    let r = run_with(Some(&encode_bytes(cfg.as_bytes())), &[], &["--workdir", &workdir_s]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    // The compile step ran (and failed): kernelbot records nothing either way.
    assert!(r.stderr().contains("test: compile step `python3 submission.py` exit code 3"), "{}", r.stderr());
    assert!(r.result.runs["test"].compilation.is_none());
}

#[test]
fn empty_files_and_fractional_or_zero_timeouts_run_as_in_kernelbot() {
    // An empty submission: kernelbot runs it (the harness's import fails).
    let r = run_with(Some(&encode_bytes(vectoradd_ordered("test", "", "").as_bytes())), &[], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let t = r.run("test");
    assert_eq!(t.exit_code, 1);
    assert!(t.stderr.contains("ImportError: cannot import name 'custom_kernel'"), "{}", t.stderr);
    // A fractional timeout is the limit and, when hit, the duration.
    let hang = task_file("vectoradd/submission_hang.py");
    let r = run_with(
        Some(&encode_bytes(vectoradd_ordered("test", &hang, r#", "test_timeout": 1.5"#).as_bytes())),
        &[],
        &[],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let t = r.run("test");
    assert_eq!((t.exit_code, t.duration, t.success), (exit_code::TIMEOUT, 1.5, false));
    // Zero times out at once, as `subprocess.run(timeout=0)` does.
    let ok = task_file("vectoradd/submission_ok.py");
    let r =
        run_with(Some(&encode_bytes(vectoradd_ordered("test", &ok, r#", "test_timeout": 0"#).as_bytes())), &[], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!((r.run("test").exit_code, r.run("test").duration), (exit_code::TIMEOUT, 0.0));
}

/// `len` bytes of random printable ASCII (seeded): text zlib barely shrinks.
fn noise(len: usize, seed: u64) -> String {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| char::from(rng.random_range(b' '..=b'~'))).collect()
}

#[test]
fn a_million_byte_submission_arrives_through_the_split_env() {
    // A correct submission padded to exactly 1,000,000 bytes with one comment line of
    // noise; it prints the SHA-256 of its own file and the payload variables it can see.
    let head = "import hashlib, os\nprint('sha256', hashlib.sha256(open(__file__, 'rb').read()).hexdigest())\n\
                print('visible', sorted(k for k in os.environ if 'PAYLOAD' in k))\n\
                def custom_kernel(data):\n    a, b = data\n    return [x + y for x, y in zip(a, b)]\n#";
    let mut sub = head.to_owned();
    sub.push_str(&noise(1_000_000 - head.len() - 1, 1));
    sub.push('\n');
    assert_eq!(sub.len(), 1_000_000);
    let want_sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(sub.as_bytes()))
    };
    let encoded = encode_bytes(vectoradd_ordered("test", &sub, "").as_bytes());
    assert!(encoded.len() > 2 * contract::PAYLOAD_ENV_MAX, "{} bytes encoded", encoded.len());
    let env = contract::payload_env(&encoded);
    assert!(env.iter().all(|(k, v)| k != "KERNELBOT_PAYLOAD" && k.len() + v.len() + 2 < 131_072));
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    assert!(total < 2 * 1024 * 1024, "{total}");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Through a real exec (std's Command hands the env to execve, as the agent does).
    let r = run_with(None, &env_refs, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let t = r.run("test");
    assert!(t.passed, "{t:?}");
    assert_eq!(t.stdout, format!("sha256 {want_sha}\nvisible []\nRunning in mode test with 2 cases\n"));

    // A part lost on the way: an infrastructure failure that names it.
    let damaged: Vec<(&str, &str)> = env_refs.iter().copied().filter(|(k, _)| *k != "BENCHKITE_PAYLOAD_1").collect();
    let r = run_with(None, &damaged, &[]);
    assert_eq!(r.code(), Some(1));
    assert!(!r.result.success && r.result.runs.is_empty());
    assert!(r.result.error.starts_with("split payload: BENCHKITE_PAYLOAD_1 is missing"), "{}", r.result.error);
}

/// A stand-in `nvidia-smi` (one GPU, so the runtime is CUDA) and `ncu` that runs the
/// profiled command after `--`, writes the report file named by `-o`, and prints a report
/// for `--import`; it logs its arguments and POPCORN_NCU.
const FAKE_NCU: &str = r#"#!/bin/sh
if [ "$1" = "--import" ]; then
  [ -f "$2" ] || exit 1
  printf '  custom_kernel(float*) (4, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n    Table Name : GPU Throughput\n    DRAM Throughput   %%   42\n'
  exit 0
fi
echo "ncu $* POPCORN_NCU=$POPCORN_NCU" >> "$FAKE_NCU_LOG"
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift 2 ;;
    --) shift; break ;;
    *) shift ;;
  esac
done
echo "report" > "$out"
exec "$@"
"#;

#[test]
fn profile_mode_runs_ncu_like_kernelbot() {
    let scratch = Scratch::new("ncu");
    scratch.tool("nvidia-smi", "#!/bin/sh\necho 'NVIDIA Fake GPU'\n");
    scratch.tool("ncu", FAKE_NCU);
    let log = scratch.path().join("ncu.log");
    let log_s = log.to_string_lossy().into_owned();
    let path = scratch.path_with_tools();
    let cfg = vectoradd_ordered("profile", &task_file("vectoradd/submission_ok.py"), "");
    let r = run_with(Some(&encode_bytes(cfg.as_bytes())), &[("PATH", &path), ("FAKE_NCU_LOG", &log_s)], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["profile.0", "profile.1"]);
    for (i, spec) in [(0, "size: 500; seed: 11"), (1, "size: 1000; seed: 12")] {
        let e = &r.result.runs[&format!("profile.{i}")];
        let run = e.run.as_ref().expect("run");
        assert!(run.passed, "{run:?}");
        assert_eq!(run.result["benchmark-count"], "1");
        assert_eq!(run.result["benchmark.0.spec"], spec);
        assert!(
            run.command.contains(" --nvtx --nvtx-include custom_kernel/ --import-source 1 -c 10 -o "),
            "{}",
            run.command
        );
        let report = base64::engine::general_purpose::STANDARD.decode(&run.result["benchmark.0.report"]).expect("b64");
        assert_eq!(
            String::from_utf8(report).expect("utf-8"),
            "  custom_kernel(float*) (4, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n\n    Table Name : GPU Throughput\n    DRAM Throughput   %   42\n"
        );
        let p = e.profile.as_ref().expect("profile");
        assert_eq!((p.profiler.as_str(), p.download_url.as_deref()), ("Nsight-Compute", None));
        let zip = base64::engine::general_purpose::STANDARD.decode(&p.trace).expect("zip");
        // The report sits at the root of the archive, as in kernelbot's.
        assert!(zip.windows(b"profile.ncu-rep".len()).any(|w| w == b"profile.ncu-rep"));
        assert!(!zip.windows(b"profile_data/".len()).any(|w| w == b"profile_data/"));
    }
    let calls = std::fs::read_to_string(&log).expect("ncu log");
    assert_eq!(calls.lines().count(), 2, "{calls}");
    assert!(calls.lines().all(|l| l.starts_with("ncu --set full --nvtx") && l.ends_with("POPCORN_NCU=1")), "{calls}");
}

#[test]
fn profile_mode_without_a_gpu_fails_like_kernelbot() {
    let scratch = Scratch::new("nogpu");
    scratch.tool("placeholder", "#!/bin/sh\n");
    let path = format!("{}:/usr/bin:/bin", scratch.path().join("bin").display());
    let cfg = vectoradd_ordered("profile", &task_file("vectoradd/submission_ok.py"), "");
    let r = run_with(Some(&encode_bytes(cfg.as_bytes())), &[("PATH", &path)], &["--no-gpu-probe"]);
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert!(!r.result.success && r.result.runs.is_empty());
    assert!(r.result.error.starts_with("Unknown runtime \"\""), "{}", r.result.error);
}

#[test]
fn a_compile_error_in_profile_mode_is_recorded_for_every_profile_run() {
    // kernelbot compiles once per profile run, and each records the failure (no profiler is
    // reached, so even a machine without a GPU gives the kernel's verdict).
    let scratch = Scratch::new("nvccprof");
    let nvcc = scratch.tool("nvcc", FAKE_NVCC);
    let log = scratch.path().join("nvcc.log");
    let log_s = log.to_string_lossy().into_owned();
    let nvcc_s = nvcc.to_string_lossy().into_owned();
    let mut cfg = cu_config("profile");
    cfg["benchmarks"] = json!([{"size": 64, "seed": 2}, {"size": 128, "seed": 3}]);
    let r = run_with(
        Some(&encode(&cfg)),
        &[("FAKE_NVCC_LOG", &log_s), ("FAKE_NVCC_FAIL", "1")],
        &["--nvcc", &nvcc_s, "--no-gpu-probe"],
    );
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.result.success, "{}", r.result.error);
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["profile.0", "profile.1"]);
    for e in r.result.runs.values() {
        let c = e.compilation.as_ref().expect("compilation");
        assert!(c.nvcc_found && !c.success && e.run.is_none());
    }
}
