//! `benchkite submit --wait` in a terminal: tmux runs the real binary against the local
//! cluster, the real KernelJob controller and the Buildkite simulator (whose agents run the
//! real `benchkite run` on the CPU), on a task directory in kernelbot's layout
//! (tests/tasks/kernelbot_layout). The test reads the terminal as a person would
//! (`capture-pane`): the progress line updates in place, the result table shows, the shell
//! sees exit code 0 for the passing kernel and 1 for the failing one (submitted as the
//! kubectl plugin, `kubectl benchkite`); `--output json` is the KernelJob alone on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::Phase;
use benchkite_e2e::operator::{Operator, binary, install_crds, wait_ready};
use benchkite_e2e::{TestNamespace, client, kubeconfig_path, repo_root};

const PASSED: i32 = 0;
const KERNEL_FAILED: i32 = 1;

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

fn task_dir() -> PathBuf {
    repo_root().join("tests/tasks/kernelbot_layout/identity_py")
}

/// A tmux server of its own (`-L`), one session of a fixed size running a plain bash,
/// killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(env: &[(&str, String)], cwd: &Path) -> Result<Self> {
        let socket = format!("benchkite-submit-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &socket, "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "220", "-y", "50", "-c"])
            .arg(cwd);
        // Through env(1): tmux runs the command with the client's PATH, whatever `-e` says.
        cmd.arg("env");
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.args(["bash", "--norc", "--noprofile"]);
        let out = cmd.output().context("running tmux (is it installed?)")?;
        ensure!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Self { socket })
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux").args(["-L", &self.socket]).args(args).output().context("running tmux")?;
        ensure!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Types `line` and presses Enter.
    fn run(&self, line: &str) -> Result<()> {
        self.tmux(&["send-keys", "-t", "t", "-l", line])?;
        self.tmux(&["send-keys", "-t", "t", "Enter"])?;
        Ok(())
    }

    /// The pane's text with its history (wrapped lines joined).
    fn capture(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-J", "-t", "t", "-S", "-2000"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

/// What one `submit --wait` showed in the terminal.
struct Run {
    /// Distinct progress lines seen while it waited (one capture may show each).
    progress_seen: Vec<String>,
    /// How many of them were seen before the result was on the screen.
    progress_before_end: usize,
    /// The pane after it ended, from its start marker on.
    screen: String,
    exit: i32,
    name: String,
}

/// Runs `command` in the terminal between markers and watches the pane until the shell
/// prints the exit code.
async fn run_in_terminal(term: &Tmux, tag: &str, command: &str, timeout: Duration) -> Result<Run> {
    let start_marker = format!("START-{tag}");
    let exit_marker = format!("EXIT-{tag}=");
    term.run(&format!("echo {start_marker}; {command}; echo {exit_marker}$?"))?;
    let deadline = Instant::now() + timeout;
    let mut progress_seen: Vec<String> = Vec::new();
    let mut progress_before_end = 0;
    loop {
        let pane = term.capture()?;
        let screen = after_marker(&pane, &start_marker);
        let ended = screen.contains("Verdict:");
        for line in screen.lines().filter(|l| is_progress(l)) {
            if !progress_seen.iter().any(|p| p == line.trim_end()) {
                progress_seen.push(line.trim_end().to_string());
                if !ended {
                    progress_before_end += 1;
                }
            }
        }
        if let Some(code) = screen.lines().find_map(|l| l.trim().strip_prefix(&exit_marker)) {
            let exit = code.trim().parse().with_context(|| format!("exit code {code:?}\n{screen}"))?;
            let name = screen
                .lines()
                .find_map(|l| l.strip_prefix("kerneljob.benchkite.dev/"))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .with_context(|| format!("no `created` line:\n{screen}"))?;
            return Ok(Run { progress_seen, progress_before_end, screen, exit, name });
        }
        if Instant::now() > deadline {
            bail!("{command} did not finish within {timeout:?}; the terminal shows:\n{pane}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The part of the pane after the line that is exactly `marker` (the typed command line,
/// which also contains it, comes before).
fn after_marker(pane: &str, marker: &str) -> String {
    let lines: Vec<&str> = pane.lines().collect();
    match lines.iter().rposition(|l| l.trim() == marker) {
        Some(i) => lines[i + 1..].join("\n"),
        None => String::new(),
    }
}

/// A progress line: `[12s] <name> <Phase> ...`.
fn is_progress(line: &str) -> bool {
    let Some((time, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else { return false };
    !time.is_empty() && time.chars().all(|c| c.is_ascii_digit() || "hms".contains(c)) && !rest.is_empty()
}

/// Puts a `benchkite` first on the agents' PATH that waits 4 s before it runs the real one,
/// so every job stays in flight for a few progress updates (a CPU evaluation of this task
/// ends within a second). Returns the directory, to remove at the end.
fn slow_runner(cfg: &mut buildkite_sim::SimConfig, bin: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = benchkite_e2e::e2e_dir().join(format!("slow-runner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = dir.join("benchkite");
    std::fs::write(&script, format!("#!/bin/sh\nsleep 4\nexec '{}' \"$@\"\n", bin.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    match &mut cfg.executor {
        buildkite_sim::config::ExecutorConfig::Command { env, .. } => {
            let path = env.get("PATH").cloned().unwrap_or_else(|| std::env::var("PATH").unwrap_or_default());
            env.insert("PATH".into(), format!("{}:{path}", dir.display()));
        }
        _ => bail!("the simulator's executor is not a command"),
    }
    Ok(dir)
}

/// The directory of kubectl (built by e2e/cluster/build-binaries, cached).
fn kubectl_dir() -> Result<PathBuf> {
    let out = Command::new(repo_root().join("e2e/cluster/build-binaries"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running e2e/cluster/build-binaries")?;
    ensure!(out.status.success(), "e2e/cluster/build-binaries failed");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

#[tokio::test]
async fn submit_wait_in_a_terminal_shows_progress_results_and_exit_codes() -> Result<()> {
    // Before the simulator starts: a blocking call would stall the runtime it serves from.
    let kubectl = kubectl_dir()?;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "submitcli").await?;
    let queue = format!("q-{}", ns.name());
    let mut cfg = benchkite_e2e::sim::queue_config(&queue, 2)?;
    let slow_dir = slow_runner(&mut cfg, &binary()?)?;
    let sim = buildkite_sim::Simulator::start(cfg).await?;
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut args = benchkite_e2e::sim::kerneljob_args(&sim, ns.name());
    args.extend(["--http-addr", &http, "--poll-interval-seconds", "2"].map(str::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let token = sim.api_token();
    let op = Operator::start_with_env(
        &format!("submit-cli-{}", ns.name()),
        &args,
        &[("BUILDKITE_API_TOKEN", token.as_str())],
    )?;
    wait_ready(&http).await.with_context(|| op.log_text())?;

    // The plugin: kubectl finds `kubectl-benchkite` on PATH (a symlink to the binary).
    let bin = binary()?;
    let plugin_dir = benchkite_e2e::e2e_dir().join(format!("plugin-{}", std::process::id()));
    std::fs::create_dir_all(&plugin_dir)?;
    let plugin = plugin_dir.join("kubectl-benchkite");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(&bin, &plugin).context("linking kubectl-benchkite")?;
    let path = format!(
        "{}:{}:{}",
        plugin_dir.display(),
        kubectl.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let kubeconfig = kubeconfig_path().to_string_lossy().into_owned();
    let term = Tmux::start(
        &[("KUBECONFIG", kubeconfig.clone()), ("PATH", path), ("PS1", "$ ".into()), ("TERM", "xterm".into())],
        &repo_root(),
    )?;
    let task = task_dir();
    let task = task.to_string_lossy();
    let target = format!("--queue {queue} -n {}", ns.name());

    // A passing kernel, leaderboard mode: tests, the benchmark table, the score.
    let good = run_in_terminal(
        &term,
        "good",
        &format!(
            "{} submit {task} {task}/submission.py --mode leaderboard {target} --submitter alice --wait --timeout 5m",
            bin.display()
        ),
        Duration::from_secs(300),
    )
    .await?;
    let screen = &good.screen;
    // Shown with --nocapture (or when the test fails): what a person saw.
    println!("progress lines seen: {:#?}\nthe terminal at the end:\n{screen}", good.progress_seen);
    ensure!(good.exit == PASSED, "the passing kernel exits {}:\n{screen}\n{}", good.exit, op.log_text());
    ensure!(
        good.progress_before_end >= 2,
        "the progress line updates while waiting ({} different before the result); seen: {:?}\n{screen}",
        good.progress_before_end,
        good.progress_seen
    );
    ensure!(good.progress_seen.iter().all(|l| l.contains(&good.name)), "{:?}", good.progress_seen);
    // In place: one progress line stays on the screen, not one per update.
    let progress_lines = screen.lines().filter(|l| is_progress(l)).count();
    ensure!(progress_lines == 1, "the progress line is redrawn in place ({progress_lines} on screen):\n{screen}");
    for want in [
        "Verdict:    PASSED",
        "Tests:      2/2 passed",
        "Benchmarks:",
        "SPEC",
        "RUNS",
        "MEAN",
        "WORST",
        "size: 1024; seed: 54352",
        "size: 4096; seed: 6256",
        "Score:",
        "(geom;",
        "Build:      #",
        "Exit:       0 (PASSED)",
    ] {
        ensure!(screen.contains(want), "{want:?} is on the screen:\n{screen}");
    }

    // A failing kernel, through the kubectl plugin.
    let bad = run_in_terminal(
        &term,
        "bad",
        &format!("kubectl benchkite submit {task} {task}/wrong.py --mode test {target} --wait --timeout 5m"),
        Duration::from_secs(300),
    )
    .await?;
    let screen = &bad.screen;
    println!("progress lines seen: {:#?}\nthe terminal at the end:\n{screen}", bad.progress_seen);
    ensure!(bad.exit == KERNEL_FAILED, "the failing kernel exits {}:\n{screen}", bad.exit);
    for want in
        ["Verdict:    FAILED: 1 of 2 tests failed", "Tests:      1/2 passed, 1 failed:", "FAIL size: 256; seed: 5236"]
    {
        ensure!(screen.contains(want), "{want:?} is on the screen:\n{screen}");
    }
    ensure!(bad.progress_before_end >= 2, "progress updates: {:?}", bad.progress_seen);
    drop(term);

    // --output json: the final KernelJob alone on stdout (progress, if any, on stderr).
    // tokio's Command: the simulator serves from this test's runtime, which a blocking wait
    // would stall.
    let out = tokio::process::Command::new(&bin)
        .args(["submit", &task, &format!("{task}/submission.py"), "--mode", "test", "--queue", &queue, "-n", ns.name()])
        .args(["--wait", "--timeout", "3m", "-o", "json", "-l", "e2e=json"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .context("running benchkite submit -o json")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.code() == Some(PASSED),
        "submit -o json exits {:?}: {}\ncontroller log:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        op.log_text()
    );
    let job: KernelJob =
        serde_json::from_str(&stdout).with_context(|| format!("stdout is one KernelJob:\n{stdout}"))?;
    let status = job.status.clone().context("the final job has a status")?;
    ensure!(status.phase == Phase::Succeeded && status.passed == Some(true), "{:?} {:?}", status.phase, status.passed);
    ensure!(job.metadata.labels.as_ref().and_then(|l| l.get("e2e")).map(String::as_str) == Some("json"));
    ensure!(job.metadata.managed_fields.is_none(), "no managedFields, as kubectl prints it");

    // A submission near the 1 MB limit (kubectl apply could not create it: its last-applied
    // annotation is capped at 256 KiB): created with a POST, evaluated, the final job as YAML.
    let big = plugin_dir.join("big_submission.py");
    let mut text = std::fs::read_to_string(task_dir().join("submission.py"))?;
    let line = format!("# {}\n", "x".repeat(97));
    while text.len() + line.len() < 950_000 {
        text.push_str(&line);
    }
    std::fs::write(&big, &text)?;
    let out = tokio::process::Command::new(&bin)
        .args(["submit", &task, &big.to_string_lossy(), "--mode", "test", "--queue", &queue, "-n", ns.name()])
        .args(["--wait", "--timeout", "3m", "-o", "yaml", "--name", "big"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .context("running benchkite submit -o yaml")?;
    ensure!(
        out.status.code() == Some(PASSED),
        "the big submission exits {:?}: {}\ncontroller log:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        op.log_text()
    );
    let job: KernelJob = serde_yaml::from_slice(&out.stdout).context("stdout is one KernelJob in YAML")?;
    ensure!(job.spec.sources.get("submission.py").map(String::len) == Some(text.len()), "the whole submission");
    ensure!(job.status.as_ref().is_some_and(|s| s.passed == Some(true)), "{:?}", job.status);
    let stored = ns.api::<KernelJob>().get("big").await?;
    ensure!(
        stored.metadata.annotations.unwrap_or_default().is_empty(),
        "no last-applied annotation: the object is stored once"
    );

    // get: the table, and one job like submit's result; logs: the build link.
    let run = async |args: &[&str]| -> Result<String> {
        let out = tokio::process::Command::new(&bin).args(args).env("KUBECONFIG", &kubeconfig).output().await?;
        ensure!(out.status.success(), "benchkite {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let table = run(&["get", "-n", ns.name()]).await?;
    ensure!(table.starts_with("NAME "), "{table}");
    for name in [&good.name, &bad.name] {
        ensure!(table.contains(name.as_str()), "{name} in the table:\n{table}");
    }
    ensure!(table.lines().any(|l| l.starts_with(good.name.as_str()) && l.contains("alice")), "submitter:\n{table}");
    let one = run(&["get", &bad.name, "-n", ns.name()]).await?;
    ensure!(one.contains("FAIL size: 256; seed: 5236"), "{one}");
    let logs = run(&["logs", &good.name, "-n", ns.name()]).await?;
    ensure!(logs.contains("Build: #"), "{logs}");

    let _ = std::fs::remove_dir_all(&plugin_dir);
    let _ = std::fs::remove_dir_all(&slow_dir);
    drop(op);
    drop(sim);
    ns.delete().await
}
