//! Hostile submissions (tests/hostile/) against `benchkite run` itself, sandbox required:
//! canary secrets sit in the runner's env, its parent's env, a root-only agent token file and
//! a root-only result key file; each attack runs in the compile step and the test run, and
//! must leave no canary in result.json, the runner's stdout or stderr, the meta-data, and an
//! honest verdict. Needs root (skipped otherwise); every test has its own sandbox uid.

#[path = "tasks/support.rs"]
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::*;

const CANARY_JOB_TOKEN: &str = "canary-job-token-5f1d0c";
const CANARY_AGENT_TOKEN: &str = "canary-agent-token-93be2a";
const CANARY_RUNNER_ENV: &str = "canary-runner-env-77aa31";
const CANARY_PARENT_ENV: &str = "canary-parent-env-0c4e9d";
const CANARY_TOKEN_FILE: &str = "canary-token-file-41d8e2";
const CANARY_KEY_FILE: &str = "canary-key-file-b03f5c";
const CANARIES: &[&str] =
    &[CANARY_JOB_TOKEN, CANARY_AGENT_TOKEN, CANARY_RUNNER_ENV, CANARY_PARENT_ENV, CANARY_TOKEN_FILE, CANARY_KEY_FILE];
const PYTHON: &str = "/usr/bin/python3";

fn skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the sandbox needs root");
        return true;
    }
    if !Path::new(PYTHON).exists() {
        eprintln!("skipped: no {PYTHON} reachable by the sandbox user");
        return true;
    }
    false
}

fn hostile_file(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The vectoradd task with `name` as its submission, `PATHS = {}` replaced by `paths`.
fn config(name: &str, paths: &Value) -> Value {
    let source = hostile_file(name).replacen("PATHS = {}", &format!("PATHS = {paths}"), 1);
    json!({
        "lang": "py",
        "mode": "test",
        "main": "eval.py",
        "sources": {
            "eval.py": task_file("vectoradd/eval.py"),
            "reference.py": task_file("vectoradd/reference.py"),
            "submission.py": source,
        },
        "tests": [{"size": 16, "seed": 1}, {"size": 250, "seed": 2}],
        "benchmarks": [{"size": 500, "seed": 11}],
        "test_timeout": 60,
        "benchmark_timeout": 60,
        "ranked_timeout": 60,
        "ranking_by": "last",
        "seed": null,
        "multi_gpu": false,
    })
}

/// One hostile run's world: the job directory with its root-only secrets.
struct World {
    /// Run the runner with only these capabilities (lower-case names, `setpriv` syntax).
    caps: Option<Vec<&'static str>>,
    scratch: Scratch,
    token_file: PathBuf,
    key_file: PathBuf,
    meta_data: PathBuf,
}

impl World {
    fn new(tag: &str) -> World {
        let scratch = Scratch::new(&format!("hostile-{tag}"));
        let secret = |name: &str, value: &str| {
            let p = scratch.path().join(name);
            std::fs::write(&p, value).expect("secret");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).expect("chmod");
            p
        };
        let token_file = secret("agent-token", CANARY_TOKEN_FILE);
        let key_file = secret("result-key", CANARY_KEY_FILE);
        let meta_data = scratch.path().join("meta-data.jsonl");
        World { caps: None, scratch, token_file, key_file, meta_data }
    }

    fn paths(&self, extra: Value) -> Value {
        let mut p = json!({
            "token_file": self.token_file,
            "key_file": self.key_file,
            "result_file": self.scratch.path().join("result.json"),
            "meta_data_file": self.meta_data,
        });
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        p
    }

    /// `benchkite run` under a parent shell that holds its own canary; the runner holds the
    /// job token, the agent token and one of its own.
    fn run(&self, name: &str, uid: u32, paths: Value, args: &[&str], env: &[(&str, &str)]) -> Hostile {
        let payload = encode(&config(name, &paths));
        let uid_s = uid.to_string();
        let mode = if args.contains(&"--sandbox") { vec![] } else { vec!["--sandbox", "required"] };
        let mut all_args: Vec<&str> = mode;
        all_args.extend_from_slice(&[
            "--sandbox-uid",
            &uid_s,
            "--sandbox-gid",
            &uid_s,
            "--python",
            PYTHON,
            "--no-gpu-probe",
        ]);
        all_args.extend_from_slice(args);
        let md = self.meta_data.to_string_lossy().into_owned();
        let mut run_env: Vec<(&str, &str)> = vec![
            ("BUILDKITE_AGENT_ACCESS_TOKEN", CANARY_JOB_TOKEN),
            ("BUILDKITE_AGENT_TOKEN", CANARY_AGENT_TOKEN),
            ("BENCHKITE_HOSTILE_CANARY", CANARY_RUNNER_ENV),
            ("BUILDKITE_SIM_META_DATA_FILE", &md),
        ];
        run_env.extend_from_slice(env);
        let inner = command(self.scratch.path(), Some(&payload), &run_env, &all_args);
        // The parent: a shell whose own environment holds a canary it does not pass on.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("unset HOSTILE_PARENT_CANARY; \"$0\" \"$@\"");
        match &self.caps {
            // As in an agent pod: root with only these capabilities, no_new_privs.
            Some(caps) => {
                let bounding = format!("-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
                cmd.args(["setpriv", "--bounding-set", &bounding, "--no-new-privs", "--"]).arg(inner.get_program());
            }
            None => {
                cmd.arg(inner.get_program());
            }
        }
        cmd.args(inner.get_args());
        cmd.current_dir(self.scratch.path()).env("HOSTILE_PARENT_CANARY", CANARY_PARENT_ENV);
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let output = cmd.output().expect("starting benchkite");
        let result_text = std::fs::read_to_string(self.scratch.path().join("result.json")).unwrap_or_default();
        let (result, json) = read_result(&self.scratch.path().join("result.json"));
        let meta = std::fs::read_to_string(&self.meta_data).unwrap_or_default();
        Hostile { output, result, json, result_text, meta, uid }
    }
}

struct Hostile {
    output: std::process::Output,
    result: benchkite::contract::FullResult,
    json: Value,
    result_text: String,
    meta: String,
    uid: u32,
}

impl Hostile {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn test_run(&self) -> &benchkite::contract::RunResult {
        self.result
            .runs
            .get("test")
            .and_then(|r| r.run.as_ref())
            .unwrap_or_else(|| panic!("no test run: {:#}", self.json))
    }

    /// What the attack reported (its `hostile:` lines).
    fn said(&self) -> String {
        self.test_run().stdout.lines().filter(|l| l.starts_with("hostile:")).collect::<Vec<_>>().join("\n")
    }

    /// No canary anywhere; nothing of the sandbox uid alive; the runner ended normally.
    fn assert_clean(&self) {
        let stdout = String::from_utf8_lossy(&self.output.stdout);
        for c in CANARIES {
            for (what, text) in [
                ("result.json", self.result_text.as_str()),
                ("stdout", &stdout),
                ("stderr", &self.stderr()),
                ("meta-data", &self.meta),
            ] {
                assert!(!text.contains(c), "canary {c} leaked into {what}:\n{text}");
            }
        }
        assert_eq!(self.output.status.code(), Some(0), "{}", self.stderr());
        assert!(self.result.success, "{:#}", self.json);
        assert!(
            self.stderr().contains(&format!("sandbox: evaluated programs run as uid {}", self.uid)),
            "{}",
            self.stderr()
        );
        assert!(processes_of(self.uid).is_empty(), "processes of the sandbox uid survive the job");
    }

    /// The meta-data the runner wrote is its own summary of this result.
    fn assert_honest_meta_data(&self) {
        let lines: Vec<Value> = self.meta.lines().map(|l| serde_json::from_str(l).expect("meta-data line")).collect();
        assert_eq!(lines.len(), 1, "one meta-data write, the runner's: {}", self.meta);
        assert_eq!(lines[0]["key"], "benchkite.result");
        let summary: Value = serde_json::from_str(lines[0]["value"].as_str().expect("value")).expect("summary");
        assert_eq!(summary["success"], json!(self.result.success));
        assert!(summary.get("forged").is_none(), "{summary}");
    }
}

/// Live (not zombie) processes whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let real = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next());
        let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
        if real == Some(uid.to_string().as_str()) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[test]
fn reading_proc_environ_finds_no_secret() {
    if skip() {
        return;
    }
    let w = World::new("environ");
    let r = w.run("read_environ.py", 62_101, w.paths(json!({})), &[], &[]);
    r.assert_clean();
    assert!(r.test_run().passed, "{:#}", r.json);
    let said = r.said();
    assert!(said.contains("/proc/1/environ: refused PermissionError"), "{said}");
    assert!(said.contains("parent environ: refused PermissionError"), "{said}");
    // Its own environment is the sandbox's explicit one.
    let own = said.lines().find(|l| l.starts_with("hostile: own env:")).expect("own env line");
    for absent in
        ["BUILDKITE_AGENT_ACCESS_TOKEN", "BUILDKITE_AGENT_TOKEN", "KERNELBOT_PAYLOAD", "BENCHKITE_HOSTILE_CANARY"]
    {
        assert!(!own.contains(absent), "{own}");
    }
    for present in ["HOME", "TMPDIR", "PATH", "POPCORN_FD"] {
        assert!(own.contains(present), "{own}");
    }
}

#[test]
fn without_the_sandbox_the_same_attack_finds_the_canaries() {
    // The control: the suite would notice a leak.
    if skip() {
        return;
    }
    let w = World::new("environ-off");
    let paths = w.paths(json!({}));
    let r = w.run("read_environ.py", 62_102, paths, &["--sandbox", "off"], &[]);
    // Unsandboxed, the runner still hides the tokens from the harness's own environment.
    let own = r.said().lines().find(|l| l.starts_with("hostile: own env:")).map(str::to_owned).expect("own env line");
    for absent in ["BUILDKITE_AGENT_ACCESS_TOKEN", "BUILDKITE_AGENT_TOKEN", "KERNELBOT_PAYLOAD"] {
        assert!(!own.split_whitespace().any(|n| n == absent), "{own}");
    }
    // (Its output is cut at 16 KiB: only what it prints first is certain to be there.)
    assert!(r.result_text.contains(CANARY_JOB_TOKEN), "the runner's environ is readable unsandboxed");
    assert!(r.result_text.contains(CANARY_RUNNER_ENV), "the runner's environ is readable unsandboxed");
}

#[test]
fn root_only_files_stay_unread() {
    if skip() {
        return;
    }
    let w = World::new("secrets");
    let r = w.run("read_secrets.py", 62_103, w.paths(json!({})), &[], &[]);
    r.assert_clean();
    let said = r.said();
    assert!(said.contains(&format!("refused {} PermissionError", w.token_file.display())), "{said}");
    assert!(said.contains(&format!("refused {} PermissionError", w.key_file.display())), "{said}");
    assert!(r.test_run().passed);
}

#[test]
fn tools_planted_on_path_are_never_run() {
    if skip() {
        return;
    }
    let w = World::new("tools");
    // A root-owned directory with the real (fake) agent, and a world-writable one before it.
    let agent_log = w.scratch.path().join("agent-calls.log");
    let agent = w.scratch.tool(
        "buildkite-agent",
        &format!("#!/bin/sh\necho \"$@\" >> {0}\ncat >> {0}\necho >> {0}\n", agent_log.display()),
    );
    let open_dir = w.scratch.path().join("open-bin");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = w.scratch.path().join("open-bin/hostile-marker");
    let path = format!("{}:{}", w.scratch.path().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let path = format!("{}:{path}", open_dir.display());
    let paths = w.paths(json!({"marker": marker}));
    let r = w.run(
        "replace_tools.py",
        62_104,
        paths,
        &["--upload", "never"],
        &[("PATH", &path), ("BUILDKITE_SIM_META_DATA_FILE", "")],
    );
    r.assert_clean();
    assert!(r.test_run().passed);
    let said = r.said();
    assert!(said.contains(&format!("refused {} PermissionError", agent.display())), "{said}");
    // It did plant into the open directory, which comes first on PATH, and the runner still
    // used the agent it had resolved before the submission ran.
    assert!(open_dir.join("buildkite-agent").exists(), "{said}");
    assert!(!marker.exists(), "a planted tool ran");
    let calls = std::fs::read_to_string(&agent_log).expect("the real agent was called");
    assert!(calls.starts_with("meta-data set benchkite.result"), "{calls}");
    assert!(!calls.contains("forged"), "{calls}");
    let summary: Value = serde_json::from_str(calls.lines().nth(1).expect("value")).expect("summary");
    assert_eq!(summary["passed"], json!(true), "{summary}");
}

#[test]
fn result_json_and_meta_data_written_by_the_submission_do_not_count() {
    if skip() {
        return;
    }
    let w = World::new("result");
    let r = w.run("write_result.py", 62_105, w.paths(json!({})), &[], &[]);
    r.assert_clean();
    r.assert_honest_meta_data();
    assert!(!r.result_text.contains("\"forged\""), "{}", r.result_text);
    let said = r.said();
    assert!(
        said.contains(&format!("refused {} PermissionError", w.scratch.path().join("result.json").display())),
        "{said}"
    );
    assert!(said.contains(&format!("refused {} PermissionError", w.meta_data.display())), "{said}");
    assert!(r.test_run().passed);
}

#[test]
fn ptrace_of_the_runner_is_refused() {
    if skip() {
        return;
    }
    let w = World::new("ptrace");
    let r = w.run("ptrace_runner.py", 62_106, w.paths(json!({})), &[], &[]);
    r.assert_clean();
    let said = r.said();
    assert!(said.contains("refused parent Operation not permitted"), "{said}");
    assert!(said.contains("refused parent memory PermissionError"), "{said}");
    assert!(!said.contains("attached"), "{said}");
    assert!(r.test_run().passed);
    // What the harness holds: the sandbox uid, no groups, no capabilities, no_new_privs, and
    // the runner's limits.
    for want in [
        "hostile: self Uid: 62106 62106 62106 62106".to_string(),
        "hostile: self Groups:".to_string(),
        "hostile: self CapPrm: 0000000000000000".to_string(),
        "hostile: self CapEff: 0000000000000000".to_string(),
        "hostile: self NoNewPrivs: 1".to_string(),
        "hostile: limit Max processes 4096 4096 processes".to_string(),
        "hostile: limit Max core file size 0 0 bytes".to_string(),
    ] {
        assert!(said.lines().any(|l| l == want), "{want:?} not in:\n{said}");
    }
}

fn daemon_pids(r: &Hostile) -> Vec<i32> {
    r.said()
        .lines()
        .filter_map(|l| l.strip_prefix("hostile: daemon pid "))
        .map(|p| p.trim().parse().expect("pid"))
        .collect()
}

#[test]
fn a_daemon_does_not_outlive_the_job() {
    if skip() {
        return;
    }
    let w = World::new("daemon");
    let r = w.run("daemon.py", 62_107, w.paths(json!({})), &[], &[]);
    r.assert_clean();
    assert!(r.test_run().passed);
    let pids = daemon_pids(&r);
    assert_eq!(pids.len(), 1, "{}", r.said());
    assert!(process_gone(pids[0]), "daemon {} survived", pids[0]);
}

#[test]
fn a_daemon_dies_by_its_uid_even_without_the_subreaper_sweep() {
    if skip() {
        return;
    }
    let w = World::new("daemon-nosweep");
    let r = w.run("daemon.py", 62_108, w.paths(json!({})), &["--no-sweep"], &[]);
    r.assert_clean();
    let pids = daemon_pids(&r);
    assert_eq!(pids.len(), 1, "{}", r.said());
    assert!(process_gone(pids[0]), "daemon {} survived", pids[0]);
}

#[test]
fn filling_the_scratch_disk_is_stopped_and_fails_the_run() {
    if skip() {
        return;
    }
    let w = World::new("disk");
    let r = w.run("fill_disk.py", 62_109, w.paths(json!({"max_mib": 512})), &["--sandbox-disk-mib", "16"], &[]);
    r.assert_clean();
    let run = r.test_run();
    assert!(!run.passed && !run.success, "{:#}", r.json);
    assert!(
        run.stderr.contains("[benchkite] sandbox: the sandbox's scratch disk use went over its limit"),
        "{}",
        run.stderr
    );
    assert!(r.stderr().contains("went over its limit"), "{}", r.stderr());
    r.assert_honest_meta_data();
}

#[test]
fn a_fork_bomb_is_bounded_and_the_job_ends() {
    if skip() {
        return;
    }
    let w = World::new("forkbomb");
    let r = w.run("fork_bomb.py", 62_110, w.paths(json!({"max_forks": 400})), &["--sandbox-nproc", "24"], &[]);
    r.assert_clean();
    let said = r.said();
    let forked: usize = said
        .lines()
        .find_map(|l| l.strip_prefix("hostile: forked "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(forked < 24, "RLIMIT_NPROC bounds the bomb: {forked} forks");
    assert!(said.contains("fork refused after"), "{said}");
    assert!(r.test_run().passed, "the bomb is harmless: {:#}", r.json);
}

#[test]
fn required_fails_the_job_when_the_sandbox_user_cannot_run_the_interpreter_and_auto_warns() {
    if skip() {
        return;
    }
    // An interpreter in a directory only root may enter (like a python3 under /root).
    let w = World::new("unreachable");
    let private = w.scratch.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let python = private.join("python3");
    std::os::unix::fs::symlink(PYTHON, &python).unwrap();
    let python_s = python.to_string_lossy().into_owned();
    let payload = encode(&config("read_secrets.py", &w.paths(json!({}))));
    let args = ["--sandbox-uid", "62111", "--sandbox-gid", "62111", "--python", &python_s, "--no-gpu-probe"];
    let out = command(w.scratch.path(), Some(&payload), &[("BENCHKITE_SANDBOX", "required")], &args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an infrastructure failure: {stderr}");
    let (result, _) = read_result(&w.scratch.path().join("result.json"));
    assert!(!result.success && result.runs.is_empty());
    assert!(result.error.contains("the sandbox is required but cannot be set up"), "{}", result.error);
    assert!(result.error.contains("cannot enter") && result.error.contains("private"), "{}", result.error);

    let out = command(w.scratch.path(), Some(&payload), &[("BENCHKITE_SANDBOX", "auto")], &args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: the evaluated programs run as the runner's own user, not sandboxed"), "{stderr}");
}

#[test]
fn an_explicit_workdir_with_missing_parents_is_reachable_by_the_sandbox() {
    if skip() {
        return;
    }
    let w = World::new("workdir");
    let workdir = w.scratch.path().join("a/b/w");
    let workdir_s = workdir.to_string_lossy().into_owned();
    let r = w.run("read_secrets.py", 62_112, w.paths(json!({})), &["--workdir", &workdir_s, "--keep-workdir"], &[]);
    r.assert_clean();
    assert!(r.test_run().passed, "{:#}", r.json);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(w.scratch.path().join("a/b")).unwrap().mode() & 0o777, 0o755);
    assert_eq!(std::fs::metadata(&workdir).unwrap().mode() & 0o777, 0o711);
    let _ = std::fs::remove_dir_all(w.scratch.path().join("a"));
}

/// The capabilities an agent pod keeps (src/fleet/pod/security.rs), as setpriv names them.
const POD_CAPS: &[&str] = &["chown", "dac_override", "kill", "setgid", "setuid"];

fn have_setpriv() -> bool {
    Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_pods_capabilities_are_enough_and_each_is_needed() {
    if skip() || !have_setpriv() {
        return;
    }
    let mut w = World::new("podcaps");
    w.caps = Some(POD_CAPS.to_vec());
    for (file, uid) in [("daemon.py", 62_113), ("read_environ.py", 62_114), ("fill_disk.py", 62_115)] {
        let r = w.run(file, uid, w.paths(json!({"max_mib": 512})), &["--sandbox-disk-mib", "16"], &[]);
        r.assert_clean();
        let disk = file == "fill_disk.py";
        assert_eq!(r.test_run().passed, !disk, "{file}: {:#}", r.json);
        if disk {
            assert!(r.test_run().stderr.contains("went over its limit"), "{}", r.test_run().stderr);
        }
    }
    for missing in ["chown", "dac_override", "kill", "setgid", "setuid"] {
        w.caps = Some(POD_CAPS.iter().copied().filter(|c| *c != missing).collect());
        let r = w.run("read_environ.py", 62_116, w.paths(json!({})), &[], &[]);
        assert_eq!(r.output.status.code(), Some(1), "without {missing}: {}", r.stderr());
        let want = format!("lacks CAP_{}", missing.to_uppercase());
        assert!(r.result.error.contains(&want), "without {missing}: {}", r.result.error);
    }
}
