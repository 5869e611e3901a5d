use std::time::Duration;

use clap::Parser;
use serde_json::json;

use super::*;
use crate::api::kerneljob::Lang;

#[derive(Debug, clap::Parser)]
struct Submit {
    #[command(flatten)]
    args: SubmitArgs,
}

fn parse(args: &[&str]) -> Result<SubmitArgs, clap::Error> {
    Submit::try_parse_from(std::iter::once("submit").chain(args.iter().copied())).map(|s| s.args)
}

fn job(status: serde_json::Value) -> KernelJob {
    serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": "j", "namespace": "ns"},
        "spec": {"pool": "h100", "mode": "test", "lang": "py", "main": "eval.py", "sources": {"eval.py": ""}},
        "status": status,
    }))
    .unwrap()
}

#[test]
fn plugin_name_only_for_kubectl_benchkite() {
    assert_eq!(plugin_bin_name(OsStr::new("/usr/local/bin/kubectl-benchkite")), Some("kubectl benchkite"));
    assert_eq!(plugin_bin_name(OsStr::new("kubectl-benchkite")), Some("kubectl benchkite"));
    assert_eq!(plugin_bin_name(OsStr::new("/usr/bin/benchkite")), None);
    assert_eq!(plugin_bin_name(OsStr::new("kubectl-benchkite.bak")), None);
    assert_eq!(plugin_bin_name(OsStr::new("/kubectl-benchkite/benchkite")), None);
    assert_eq!(plugin_bin_name(OsStr::new("")), None);
}

#[test]
fn exit_codes_per_outcome_are_stable() {
    // The documented codes (submit --help): scripts depend on them.
    assert_eq!(
        (exit::PASSED, exit::KERNEL_FAILED, exit::USAGE_OR_API, exit::JOB_FAILED, exit::WAIT_TIMED_OUT),
        (0, 1, 2, 3, 4)
    );
    assert!(SUBMIT_AFTER_HELP.contains("0  the kernel passed"));
    for (code, text) in
        [(1, "kernel failed"), (2, "usage error"), (3, "without a kernel verdict"), (4, "--timeout passed")]
    {
        assert!(SUBMIT_AFTER_HELP.contains(&format!("{code}  ")) && SUBMIT_AFTER_HELP.contains(text), "{code} {text}");
    }

    let cases = [
        (json!({"phase": "Succeeded", "passed": true}), Some(0)),
        (json!({"phase": "Succeeded", "passed": false}), Some(1)),
        (json!({"phase": "Succeeded"}), Some(1)),
        (json!({"phase": "Failed", "message": "agent lost"}), Some(3)),
        (json!({"phase": "TimedOut"}), Some(3)),
        (json!({"phase": "Cancelled"}), Some(3)),
        (json!({"phase": "Pending"}), None),
        (json!({"phase": "Submitted"}), None),
        (json!({"phase": "Running"}), None),
    ];
    for (status, want) in cases {
        let got = render::outcome(&job(status.clone())).map(|o| o.exit_code());
        assert_eq!(got, want, "{status}");
    }
    assert_eq!(render::outcome(&job(serde_json::Value::Null)), None, "no status: not finished");
    assert_eq!(Outcome::WaitTimedOut.exit_code(), 4);
}

#[test]
fn submit_flags_parse() {
    let a = parse(&[
        "tasks/identity_py",
        "sub.py",
        "--mode",
        "leaderboard",
        "--pool",
        "h100",
        "-n",
        "ci",
        "--priority",
        "-5",
        "-l",
        "team=kernels",
        "--label",
        "run=7",
        "--submitter",
        "alice",
        "--wait",
        "--timeout",
        "10m",
        "-o",
        "json",
    ])
    .unwrap();
    assert_eq!(a.mode, ModeArg::Leaderboard);
    assert_eq!(a.priority, Some(-5));
    assert_eq!(a.labels, [("team".to_string(), "kernels".to_string()), ("run".to_string(), "7".to_string())]);
    assert_eq!(a.timeout, Some(Duration::from_secs(600)));
    assert_eq!(a.output, Output::Json);
    assert_eq!(a.kube.namespace.as_deref(), Some("ci"));

    // Exactly one target.
    assert!(parse(&["t", "s", "--mode", "test"]).is_err());
    assert!(parse(&["t", "s", "--mode", "test", "--pool", "a", "--queue", "b"]).is_err());
    // Every mode of the API, and nothing else.
    for m in ["test", "benchmark", "profile", "leaderboard", "private"] {
        assert!(parse(&["t", "s", "--mode", m, "--queue", "q"]).is_ok(), "{m}");
    }
    assert!(parse(&["t", "s", "--mode", "ranked", "--queue", "q"]).is_err());
    assert!(parse(&["t", "s", "--mode", "test", "--queue", "q", "-l", "novalue"]).is_err());
    assert!(parse(&["t", "s", "--mode", "test", "--queue", "q", "--timeout", "5m"]).is_err(), "--timeout needs --wait");
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    for bad in ["", "m", "10x", "1h30", "-5s", "1.5m"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_job_carries_target_labels_and_a_generated_name() {
    let dir = std::env::temp_dir().join(format!("benchkite-cli-{}", rand::random::<u64>())).join("Identity_PY");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("task.yml"),
        "files: [{name: submission.py, source: \"@SUBMISSION@\"}, {name: eval.py, source: eval.py}]\nlang: py\nconfig: {main: eval.py}\ntests: [{size: 1}]\n",
    )
    .unwrap();
    std::fs::write(dir.join("eval.py"), "# eval\n").unwrap();
    std::fs::write(dir.join("sub.py"), "# mine\n").unwrap();
    let d = dir.to_string_lossy().into_owned();
    let s = dir.join("sub.py").to_string_lossy().into_owned();

    let a =
        parse(&[&d, &s, "--mode", "test", "--pool", "h100", "--submitter", "alice", "-l", "a=b", "--priority", "3"])
            .unwrap();
    let j = build_job(&a).unwrap();
    assert_eq!(j.metadata.name, None);
    assert_eq!(j.metadata.generate_name.as_deref(), Some("identity-py-"));
    let labels = j.metadata.labels.clone().unwrap();
    assert_eq!(labels.get(SUBMITTER_LABEL).map(String::as_str), Some("alice"));
    assert_eq!(labels.get("a").map(String::as_str), Some("b"));
    assert_eq!((j.spec.pool.as_deref(), j.spec.queue.as_deref()), (Some("h100"), None));
    assert_eq!(j.spec.priority, 3);
    assert_eq!(j.spec.lang, Lang::Py);
    assert_eq!(j.spec.sources["submission.py"], "# mine\n");
    // What goes to the API server is a complete KernelJob.
    let v = serde_json::to_value(&j).unwrap();
    assert_eq!(v["apiVersion"], "benchkite.dev/v1alpha1");
    assert_eq!(v["kind"], "KernelJob");
    assert_eq!(v["spec"]["tests"], json!(["size: 1"]));

    let a = parse(&[&d, &s, "--mode", "test", "--queue", "q1", "--name", "mine"]).unwrap();
    let j = build_job(&a).unwrap();
    assert_eq!((j.metadata.name.as_deref(), j.metadata.generate_name.as_deref()), (Some("mine"), None));
    assert_eq!((j.spec.pool.as_deref(), j.spec.queue.as_deref()), (None, Some("q1")));
    assert!(j.metadata.labels.is_none());
    assert_eq!(j.spec.priority, 0);
    assert_eq!(j.spec.result_cache, None, "the pool's cache may serve it");
    assert!(serde_json::to_value(&j).unwrap()["spec"].get("resultCache").is_none());

    let a = parse(&[&d, &s, "--mode", "test", "--pool", "h100", "--no-cache"]).unwrap();
    let j = build_job(&a).unwrap();
    assert_eq!(j.spec.result_cache, Some(crate::api::kerneljob::CachePolicy::Bypass));
    assert_eq!(serde_json::to_value(&j).unwrap()["spec"]["resultCache"], "Bypass");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn result_json_logs_show_each_runs_output() {
    let text = json!({
        "success": true, "error": "",
        "system": {"gpu": "cpu", "device_count": 1, "runtime": "CPU", "platform": "linux", "cpu": "", "hostname": "h", "torch": ""},
        "runs": {
            "test": {
                "start": "", "end": "",
                "compilation": null,
                "run": {"success": true, "passed": false, "command": "python eval.py test", "stdout": "hello\n", "stderr": "boom\n",
                        "exit_code": 112, "duration": 1.25, "result": {"check": "fail"}}
            }
        }
    })
    .to_string();
    let out = render_result_json(&text);
    assert_eq!(
        out,
        "== test: run (exit 112, 1.25s, passed false): python eval.py test\n-- stdout\nhello\n-- stderr\nboom\n"
    );
    // Not a result: shown as it is.
    assert_eq!(render_result_json("{\"truncated\": true}"), "{\"truncated\": true}\n");
}
