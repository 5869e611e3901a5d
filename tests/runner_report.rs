//! `benchkite run` handing results back and cleaning up: meta-data and artifacts through a
//! stand-in `buildkite-agent`, cancellation by SIGTERM, processes that escape the process
//! group, and profile mode with and without a profiler.

#[path = "tasks/support.rs"]
mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use benchkite::contract::{self, RankingBy};
use serde_json::json;
use support::*;

/// A stand-in agent: logs `cwd|args|stdin` per call to $FAKE_AGENT_LOG; fails artifact
/// uploads when $FAKE_AGENT_FAIL_UPLOAD is set.
const FAKE_AGENT: &str = r#"#!/bin/sh
stdin=""
if [ "$1" = "meta-data" ]; then stdin="$(cat)"; fi
printf '%s|%s|%s\n' "$(pwd)" "$*" "$stdin" >> "$FAKE_AGENT_LOG"
if [ "$1" = "artifact" ] && [ -n "$FAKE_AGENT_FAIL_UPLOAD" ]; then echo "upload: 503 from S3" >&2; exit 1; fi
exit 0
"#;

struct Agent {
    scratch: Scratch,
    path: String,
    log: String,
}

fn agent() -> Agent {
    let scratch = Scratch::new("agent");
    scratch.tool("buildkite-agent", FAKE_AGENT);
    let path = scratch.path_with_tools();
    let log = scratch.path().join("agent.log").to_string_lossy().into_owned();
    Agent { scratch, path, log }
}

impl Agent {
    fn calls(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let mut p = l.splitn(3, '|');
                let mut next = || p.next().unwrap_or_default().to_owned();
                (next(), next(), next())
            })
            .collect()
    }
}

#[test]
fn under_an_agent_the_summary_is_set_and_the_artifact_uploaded() {
    let a = agent();
    let env = [("PATH", a.path.as_str()), ("FAKE_AGENT_LOG", &a.log), ("BUILDKITE_AGENT_ACCESS_TOKEN", "secret-token")];
    let r = run_with(Some(&encode(&vectoradd("test", "spy"))), &env, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let calls = a.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let (_, args, stdin) = &calls[0];
    assert_eq!(args, "meta-data set benchkite.result");
    // summarize() of result.json, plus the environment fingerprint result.json does not carry.
    let mut s = contract::parse_meta_data_summary(stdin).expect("summary");
    let fingerprint = s.system.as_mut().and_then(|sys| sys.fingerprint.take());
    assert!(fingerprint.is_some_and(|f| !f.harness_sha256.is_empty()), "{stdin}");
    assert_eq!(s, contract::summarize(&r.result, &RankingBy::Last));
    assert_eq!(s.passed, Some(true));
    let (cwd, args, _) = &calls[1];
    assert_eq!(args, "artifact upload result.json");
    assert_eq!(std::path::Path::new(cwd), r.scratch.path().canonicalize().expect("canonical").as_path());
    // The submission saw neither the agent token nor the payload.
    let out = &r.run("test").stdout;
    assert!(out.contains("token: <absent>") && out.contains("payload: <absent>"), "{out}");
    drop(a.scratch);
}

#[test]
fn the_agent_uploads_what_artifact_paths_cover() {
    let a = agent();
    let env = [
        ("PATH", a.path.as_str()),
        ("FAKE_AGENT_LOG", &a.log),
        ("BUILDKITE_AGENT_ACCESS_TOKEN", "t"),
        ("BUILDKITE_ARTIFACT_PATHS", "logs/**/*;result.json"),
    ];
    let r = run_with(Some(&encode(&vectoradd("test", "ok"))), &env, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let calls = a.calls();
    assert_eq!(calls.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), ["meta-data set benchkite.result"]);
    assert!(r.stderr().contains("the agent uploads it"), "{}", r.stderr());
}

#[test]
fn a_failed_upload_is_an_infrastructure_failure_but_result_json_stays() {
    let a = agent();
    let env = [
        ("PATH", a.path.as_str()),
        ("FAKE_AGENT_LOG", &a.log),
        ("BUILDKITE_AGENT_ACCESS_TOKEN", "t"),
        ("FAKE_AGENT_FAIL_UPLOAD", "1"),
    ];
    let r = run_with(Some(&encode(&vectoradd("test", "ok"))), &env, &[]);
    assert_eq!(r.code(), Some(1));
    assert!(r.result.success, "the evaluation itself ran");
    assert!(r.stderr().contains("uploading result.json failed") && r.stderr().contains("503"), "{}", r.stderr());
}

#[test]
fn without_an_agent_nothing_is_reported_and_report_never_is_quiet() {
    let a = agent();
    // Token but --report never: no calls.
    let env = [("PATH", a.path.as_str()), ("FAKE_AGENT_LOG", &a.log), ("BUILDKITE_AGENT_ACCESS_TOKEN", "t")];
    let r = run_with(Some(&encode(&vectoradd("test", "ok"))), &env, &["--report", "never"]);
    assert_eq!(r.code(), Some(0));
    assert!(a.calls().is_empty());
    // No token: the binary on PATH is not used.
    let env = [("PATH", a.path.as_str()), ("FAKE_AGENT_LOG", &a.log)];
    let r = run_with(Some(&encode(&vectoradd("test", "ok"))), &env, &[]);
    assert_eq!(r.code(), Some(0));
    assert!(a.calls().is_empty());
}

#[test]
fn sigterm_kills_the_run_and_still_writes_a_result() {
    let mut cfg = vectoradd("leaderboard", "hang");
    cfg["test_timeout"] = json!(300);
    let scratch = Scratch::new("term");
    let pidfile = scratch.path().join("gc.pid");
    let pidfile_s = pidfile.to_string_lossy().into_owned();
    let md = scratch.path().join("md");
    let md_s = md.to_string_lossy().into_owned();
    let mut child = command(
        scratch.path(),
        Some(&encode(&cfg)),
        &[("BENCHKITE_TEST_PIDFILE", &pidfile_s), ("BUILDKITE_SIM_META_DATA_FILE", &md_s)],
        &[],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "the harness never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let runner = i32::try_from(child.id()).expect("pid");
    // SAFETY: sends SIGTERM to the runner we spawned.
    unsafe {
        libc::kill(runner, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let (result, _) = read_result(&scratch.path().join("result.json"));
    assert!(!result.success);
    assert!(result.error.contains("canceled by signal 15 during the test run"), "{}", result.error);
    let t = result.runs["test"].run.as_ref().expect("run");
    assert!(!t.passed && t.stderr.contains("received signal 15"), "{t:?}");
    let gc = read_pid(&pidfile);
    assert!(process_gone(gc), "grandchild {gc} survived the cancellation");
    // The summary still reaches the platform.
    let text = std::fs::read_to_string(&md).expect("meta-data");
    assert!(text.contains("canceled by signal 15"));
}

#[test]
fn a_process_escaping_the_group_is_swept() {
    let scratch = Scratch::new("escape");
    let pidfile = scratch.path().join("escaped.pid");
    let pidfile_s = pidfile.to_string_lossy().into_owned();
    let r = run_with(Some(&encode(&vectoradd("test", "escape"))), &[("BENCHKITE_TEST_PIDFILE", &pidfile_s)], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.run("test").passed);
    let pid = read_pid(&pidfile);
    assert!(process_gone(pid), "escaped process {pid} survived the run");
}

#[test]
fn profile_mode_needs_a_profiler() {
    let scratch = Scratch::new("noprof");
    scratch.tool("placeholder", "#!/bin/sh\n");
    let path = format!("{}:/usr/bin:/bin", scratch.path().join("bin").display());
    if ["nsys", "ncu", "rocprofv3"].iter().any(|p| std::path::Path::new("/usr/bin").join(p).exists()) {
        eprintln!("skipped: a profiler is installed");
        return;
    }
    let r = run_with(Some(&encode(&vectoradd("profile", "ok"))), &[("PATH", &path)], &[]);
    assert_eq!(r.code(), Some(1));
    assert!(!r.result.success);
    // No GPU runtime: kernelbot's runner raises `ValueError: Unknown runtime`.
    assert!(r.result.error.starts_with("Unknown runtime \"\""), "{}", r.result.error);
    // An explicit profiler that is not installed is named.
    let r = run_with(Some(&encode(&vectoradd("profile", "ok"))), &[("PATH", &path)], &["--profiler", "ncu"]);
    assert_eq!(r.code(), Some(1));
    assert_eq!(r.result.error, "profile mode: ncu not found on PATH");
}

/// A stand-in Nsight Systems: skips its options, writes `<output>.nsys-rep`, runs the rest.
const FAKE_NSYS: &str = r#"#!/bin/sh
[ "$1" = "profile" ] || exit 2
shift
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --output) out="$2"; shift 2 ;;
    --*) shift 2 ;;
    *) break ;;
  esac
done
echo "fake report for $*" > "$out.nsys-rep"
exec "$@"
"#;

#[test]
fn profile_mode_profiles_each_benchmark_and_zips_the_trace() {
    let scratch = Scratch::new("nsys");
    scratch.tool("nsys", FAKE_NSYS);
    let path = scratch.path_with_tools();
    let mut cfg = vectoradd("profile", "ok");
    cfg["benchmarks"] = json!([{"size": 100, "seed": 1}, {"size": 200, "seed": 2}]);
    // Nsight Systems is never chosen by itself (kernelbot uses ncu): asked for explicitly.
    let r = run_with(Some(&encode(&cfg)), &[("PATH", &path)], &["--profiler", "nsys"]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.result.runs.keys().collect::<Vec<_>>(), ["profile.0", "profile.1"]);
    for (i, size) in [(0, 100), (1, 200)] {
        let e = &r.result.runs[&format!("profile.{i}")];
        let run = e.run.as_ref().expect("run");
        assert!(run.passed, "{run:?}");
        assert!(run.command.contains("nsys profile") && run.command.contains(" eval.py profile "), "{}", run.command);
        assert_eq!(run.result["benchmark-count"], "1");
        assert_eq!(run.result["benchmark.0.spec"], format!("seed: {}; size: {size}", i + 1));
        let p = e.profile.as_ref().expect("profile");
        assert_eq!(p.profiler, "nsight-systems");
        assert_eq!(p.download_url, None);
        let zip = base64::engine::general_purpose::STANDARD.decode(&p.trace).expect("base64");
        assert!(zip.starts_with(b"PK\x03\x04"));
        let names = String::from_utf8_lossy(&zip);
        // kernelbot's layout: the profiler's files at the root of the archive.
        assert!(names.contains("profile.nsys-rep") && !names.contains("profile_data/"), "zip entries");
    }
}

#[test]
fn an_unwritable_result_file_fails_but_the_summary_still_goes_out() {
    let scratch = Scratch::new("unwritable");
    let md = scratch.path().join("md");
    let md_s = md.to_string_lossy().into_owned();
    let out = command(
        scratch.path(),
        Some(&encode(&vectoradd("test", "ok"))),
        &[("BUILDKITE_SIM_META_DATA_FILE", &md_s)],
        &["--output", "missing-dir/result.json"],
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writing missing-dir/result.json failed"), "{err}");
    let text = std::fs::read_to_string(&md).expect("meta-data");
    let line: serde_json::Value = serde_json::from_str(text.trim()).expect("line");
    let s = contract::parse_meta_data_summary(line["value"].as_str().expect("value")).expect("summary");
    assert_eq!(s.passed, Some(true));
}
