//! Job executors: a local process (`sh -c <command>` in a fresh directory), a scripted
//! timer (load tests), or an external party (`/_sim/jobs/{id}/finish`).
//!
//! Contract of the process executor (see README): the job env (with a job token for the
//! Agent API and `buildkite-agent` first on `PATH`), artifacts collected from the job
//! directory by `artifact_paths`, meta-data set through the Agent API (or, when the executor's
//! `meta_data_file` is on, read from `BUILDKITE_SIM_META_DATA_FILE`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

use crate::model::JobState;
use crate::sim::Sim;
use crate::state::{ExecKind, ExecSpec, ExternalFinish, InfraFailure, Outcome, Stop};

/// Largest meta-data value `buildkite-agent meta-data set` accepts.
pub const MAX_META_DATA_VALUE: usize = 100 * 1024;

/// Runs one job to its end and reports the outcome.
pub async fn run(sim: Arc<Sim>, mut spec: ExecSpec) {
    let job = spec.job;
    if let Some(o) = spec.preflight.take() {
        // The bootstrap could not be exec'd or the checkout failed: the command never runs.
        sim.finish_job(job, o);
        return;
    }
    let outcome = match spec.kind.clone() {
        ExecKind::Scripted(cfg) => run_scripted(&sim, spec, cfg).await,
        ExecKind::External => run_external(&sim, spec).await,
        ExecKind::Command { shell, command, cancel_grace, max_log_bytes } => {
            run_command(&sim, spec, shell, command, cancel_grace, max_log_bytes).await
        }
    };
    sim.finish_job(job, outcome);
}

fn infra_outcome(f: &InfraFailure) -> Outcome {
    let mut o = Outcome::from_exit(f.exit_status);
    o.state = JobState::Failed;
    o.signal_reason = f.signal_reason.clone();
    o.lose_agent = f.lose_agent;
    // Agent `agent/run_job.go`: only a stopping agent (and a cancel) signals a running job;
    // the other reasons mean the job never ran, and a lost agent reports nothing at all.
    if matches!(f.signal_reason.as_deref(), Some("agent_stop" | "cancel")) {
        o.signal = Some("SIGTERM".into());
    }
    o.log = format!(
        "[buildkite-sim] injected infrastructure failure: {}\n",
        f.signal_reason.as_deref().unwrap_or("agent lost")
    );
    o
}

/// A canceled job's process was killed: `exit_status -1`, the signal that ended it and
/// `signal_reason: cancel` (agent `agent/run_job.go`: `case r.cancelled.Load(): exit.SignalReason
/// = SignalReasonCancel`).
fn canceled_outcome(signal: &str) -> Outcome {
    let mut o = Outcome::from_exit(-1);
    o.state = JobState::Canceled;
    o.signal = Some(signal.into());
    o.signal_reason = Some("cancel".into());
    o
}

/// A step timeout cancels the job the same way (docs "Retry": `cancel` "also happens when a job
/// times out"; docs "Build timeouts": "Terminated with signal SIGTERM (because the job timed
/// out). Exit status -1"), but the job ends `timed_out`.
fn timed_out_outcome(signal: &str) -> Outcome {
    let mut o = Outcome::from_exit(-1);
    o.state = JobState::TimedOut;
    o.signal = Some(signal.into());
    o.signal_reason = Some("cancel".into());
    o.log = format!("Terminated with signal {signal} (because the job timed out). Exit status -1\n");
    o
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn run_scripted(sim: &Sim, spec: ExecSpec, cfg: crate::config::ScriptedConfig) -> Outcome {
    let ExecSpec { mut stop_rx, timeout, infra, .. } = spec;
    let infra_after = infra.as_ref().map(|f| Duration::from_millis(f.after_ms));
    let duration = Duration::from_millis(cfg.duration_ms);
    tokio::select! {
        () = tokio::time::sleep(duration), if infra.is_none() => {
            let mut o = Outcome::from_exit(cfg.exit_status);
            if let Some(r) = &cfg.result_json {
                o.artifacts.push(("result.json".into(), Bytes::from(r.clone().into_bytes())));
            }
            o.meta_data = cfg.meta_data.clone().into_iter().collect();
            o
        }
        () = sleep_opt(infra_after) => match &infra {
            Some(f) => infra_outcome(f),
            None => Outcome::from_exit(cfg.exit_status),
        },
        () = sleep_opt(timeout) => timed_out_outcome("SIGTERM"),
        stop = &mut stop_rx => match stop {
            Ok(Stop::Infra(f)) => infra_outcome(&f),
            _ => {
                tokio::time::sleep(Duration::from_millis(cfg.cancel_ms)).await;
                canceled_outcome("SIGTERM")
            }
        },
        () = sim.shutdown.cancelled() => canceled_outcome("SIGTERM"),
    }
}

async fn run_external(sim: &Sim, spec: ExecSpec) -> Outcome {
    let ExecSpec { mut stop_rx, external_rx, timeout, infra, .. } = spec;
    let infra_after = infra.as_ref().map(|f| Duration::from_millis(f.after_ms));
    let finish = async move {
        match external_rx {
            Some(rx) => rx.await.ok(),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        fin = finish => match fin {
            Some(ExternalFinish { exit_status, artifacts, meta_data, log }) => {
                let mut o = Outcome::from_exit(exit_status);
                o.artifacts = artifacts;
                o.meta_data = meta_data;
                o.log = log;
                o
            }
            None => canceled_outcome("SIGTERM"),
        },
        () = sleep_opt(infra_after) => match &infra {
            Some(f) => infra_outcome(f),
            None => Outcome::from_exit(-1),
        },
        () = sleep_opt(timeout) => timed_out_outcome("SIGTERM"),
        stop = &mut stop_rx => match stop {
            Ok(Stop::Infra(f)) => infra_outcome(&f),
            _ => canceled_outcome("SIGTERM"),
        },
        () = sim.shutdown.cancelled() => canceled_outcome("SIGTERM"),
    }
}

/// Why a process was stopped before it exited on its own.
enum Interrupt {
    Timeout,
    Cancel,
    Infra(InfraFailure),
}

async fn run_command(
    sim: &Sim,
    spec: ExecSpec,
    shell: Vec<String>,
    command: String,
    cancel_grace: Duration,
    max_log_bytes: usize,
) -> Outcome {
    let ExecSpec { mut stop_rx, timeout, infra, env, dir, meta_data_file, bin_dir, artifact_paths, keep_dir, .. } =
        spec;
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let bin = bin_dir.as_ref().map(|(d, _)| d.clone());
    let cleanup = |dir: &Path, md: &Path| {
        if !keep_dir {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(md);
        }
        if let Some(b) = &bin {
            let _ = std::fs::remove_dir_all(b);
        }
    };
    if let Some((d, shim)) = &bin_dir
        && let Err(e) = crate::agent_api::link_agent(d, shim)
    {
        let mut o = Outcome::from_exit(-1);
        o.signal_reason = Some("process_run_error".into());
        o.log = format!("[buildkite-sim] linking buildkite-agent into {}: {e}\n", d.display());
        return o;
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        let mut o = Outcome::from_exit(-1);
        o.signal_reason = Some("process_run_error".into());
        o.log = format!("[buildkite-sim] creating {}: {e}\n", dir.display());
        return o;
    }
    let Some((program, args)) = shell.split_first() else {
        let mut o = Outcome::from_exit(-1);
        o.signal_reason = Some("process_run_error".into());
        o.log = "[buildkite-sim] empty shell\n".into();
        return o;
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg(&command)
        .current_dir(&dir)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            cleanup(&dir, &meta_data_file);
            let mut o = Outcome::from_exit(-1);
            o.signal_reason = Some("process_run_error".into());
            o.log = format!("[buildkite-sim] starting {program}: {e}\n");
            return o;
        }
    };
    let pid = child.id();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(out, Arc::clone(&log), max_log_bytes)));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(err, Arc::clone(&log), max_log_bytes)));
    }

    let infra_after = infra.as_ref().map(|f| Duration::from_millis(f.after_ms));
    let interrupt = tokio::select! {
        status = child.wait() => Ok(status),
        () = sleep_opt(timeout) => Err(Interrupt::Timeout),
        () = sleep_opt(infra_after) => Err(match infra.clone() {
            Some(f) => Interrupt::Infra(f),
            None => Interrupt::Cancel,
        }),
        stop = &mut stop_rx => Err(match stop {
            Ok(Stop::Infra(f)) => Interrupt::Infra(f),
            _ => Interrupt::Cancel,
        }),
        () = sim.shutdown.cancelled() => Err(Interrupt::Cancel),
    };

    let mut outcome = match interrupt {
        Ok(Ok(status)) => exit_outcome(status),
        Ok(Err(e)) => {
            let mut o = Outcome::from_exit(-1);
            o.log = format!("[buildkite-sim] waiting for the process: {e}\n");
            o
        }
        Err(Interrupt::Infra(f)) => {
            signal_group(pid, libc::SIGKILL);
            let _ = child.wait().await;
            infra_outcome(&f)
        }
        Err(why) => {
            // SIGTERM, then SIGKILL after the grace period (agent `cancel-grace-period`).
            signal_group(pid, libc::SIGTERM);
            let mut signal = "SIGTERM";
            if tokio::time::timeout(cancel_grace, child.wait()).await.is_err() {
                signal_group(pid, libc::SIGKILL);
                signal = "SIGKILL";
                let _ = child.wait().await;
            }
            match why {
                Interrupt::Timeout => timed_out_outcome(signal),
                _ => canceled_outcome(signal),
            }
        }
    };
    // Leftover background processes of the job go with it.
    signal_group(pid, libc::SIGKILL);
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }

    let mut text = {
        let g = log.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&g).into_owned()
    };
    text.push_str(&outcome.log);
    if !outcome.lose_agent {
        // Like the agent: artifacts are uploaded after the command, whatever its status.
        let dir2 = dir.clone();
        let paths = artifact_paths.clone();
        let found = tokio::task::spawn_blocking(move || {
            crate::glob::find_artifacts(&dir2, &paths)
                .into_iter()
                .filter_map(|(rel, abs)| std::fs::read(abs).ok().map(|b| (rel, Bytes::from(b))))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        outcome.artifacts = found;
        let (md, notes) = read_meta_data_file(&meta_data_file);
        outcome.meta_data = md;
        for n in notes {
            text.push_str(&n);
            text.push('\n');
        }
    }
    outcome.log = text;
    cleanup(&dir, &meta_data_file);
    outcome
}

fn exit_outcome(status: std::process::ExitStatus) -> Outcome {
    use std::os::unix::process::ExitStatusExt as _;
    match status.code() {
        Some(code) => Outcome::from_exit(code),
        None => {
            let mut o = Outcome::from_exit(-1);
            o.state = JobState::Failed;
            o.signal = status.signal().map(signal_name);
            o
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        n => format!("SIG{n}"),
    }
}

fn signal_group(pid: Option<u32>, sig: i32) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the process group we created for the
    // job (`process_group(0)` makes the child its leader); it touches no memory.
    unsafe {
        libc::kill(-pid, sig);
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut r: R, log: Arc<Mutex<Vec<u8>>>, max: usize) {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut g = log.lock().unwrap_or_else(|e| e.into_inner());
                let room = max.saturating_sub(g.len());
                g.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Parses the meta-data file a job wrote (the stand-in for `buildkite-agent meta-data set`).
///
/// One entry per line; a line starting with `{` is a JSON object `{"key": "…", "value": "…"}`
/// (values with newlines or any bytes), any other non-empty line is `KEY=VALUE` (split at
/// the first `=`). Later entries win. Empty keys and values over 100 KiB are ignored (the
/// job log says so). Returns the entries and log notes.
pub fn read_meta_data_file(path: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (Vec::new(), Vec::new());
    };
    parse_meta_data(&text)
}

pub fn parse_meta_data(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let entry = if line.trim_start().starts_with('{') {
            #[derive(serde::Deserialize)]
            struct Entry {
                key: String,
                value: String,
            }
            match serde_json::from_str::<Entry>(line) {
                Ok(e) => Some((e.key, e.value)),
                Err(e) => {
                    notes.push(format!("[buildkite-sim] meta-data line {n} ignored: {e}"));
                    None
                }
            }
        } else {
            match line.split_once('=') {
                Some((k, v)) => Some((k.trim().to_string(), v.to_string())),
                None => {
                    notes.push(format!("[buildkite-sim] meta-data line {n} ignored: no '='"));
                    None
                }
            }
        };
        let Some((k, v)) = entry else { continue };
        if k.is_empty() {
            notes.push(format!("[buildkite-sim] meta-data line {n} ignored: empty key"));
        } else if v.len() > MAX_META_DATA_VALUE {
            notes.push(format!(
                "[buildkite-sim] meta-data {k:?} ignored: value is {} bytes (max {MAX_META_DATA_VALUE})",
                v.len()
            ));
        } else {
            out.push((k, v));
        }
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_formats() {
        let (md, notes) = parse_meta_data("a=1\nb = x=y\n{\"key\":\"multi\",\"value\":\"l1\\nl2\"}\n\nnoequals\n=v\n");
        assert_eq!(md, vec![("a".into(), "1".into()), ("b".into(), " x=y".into()), ("multi".into(), "l1\nl2".into())]);
        assert_eq!(notes.len(), 2);
        let big = format!("k={}", "x".repeat(MAX_META_DATA_VALUE + 1));
        let (md, notes) = parse_meta_data(&big);
        assert!(md.is_empty());
        assert_eq!(notes.len(), 1);
    }
}
