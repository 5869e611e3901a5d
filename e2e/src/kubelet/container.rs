//! Running one (init) container as a local process, and its termination message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The kubelet's cap on one container's termination message
/// (`kubecontainer.MaxContainerTerminationMessageLength`); it keeps the file's tail.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// How much of the log `FallbackToLogsOnError` takes (`MaxContainerTerminationMessageLogLength`).
pub const FALLBACK_LOG_BYTES: usize = 2048;
/// Exit code of a container killed at its timeout (SIGKILL).
pub const KILLED_EXIT_CODE: i32 = 137;

/// What a container run produced.
#[derive(Clone, Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
    pub started_at: String,
    pub finished_at: String,
}

/// Now in RFC 3339 (UTC, whole seconds), as the API server prints times.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Finds `program` (`/`-free) on `path` like `execvp`.
pub fn lookup(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// The last `max` bytes of `bytes` as text, starting on a character boundary.
fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]).into_owned();
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// The termination message as the kubelet reads it: the file's last 4096 bytes; with
/// `FallbackToLogsOnError`, a failed container and an empty file, the log's last 2048 bytes.
pub fn termination_message(file: &Path, log: &Path, fallback_to_logs: bool, failed: bool) -> String {
    let content = std::fs::read(file).unwrap_or_default();
    if content.is_empty() && fallback_to_logs && failed {
        return tail(&std::fs::read(log).unwrap_or_default(), FALLBACK_LOG_BYTES);
    }
    tail(&content, MAX_MESSAGE_BYTES)
}

/// One container to run.
pub struct Run<'a> {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Where `argv[0]` is looked up (the kubelet's image has its own `PATH`).
    pub lookup_path: &'a str,
    pub workdir: PathBuf,
    pub log: PathBuf,
    pub termination_log: PathBuf,
    pub fallback_to_logs: bool,
    pub timeout: Duration,
}

/// Runs the container to its end: `Ok` with its exit code (128 + signal when killed, 137 at
/// the timeout) and termination message; `Err` only when it could not be started.
pub async fn run(r: Run<'_>) -> Result<Exit> {
    let started_at = now_rfc3339();
    let Some(program) = r.argv.first() else {
        bail!("the container has no command (image entrypoints are not emulated)")
    };
    let exe = lookup(program, r.lookup_path).with_context(|| format!("{program}: not found on {}", r.lookup_path))?;
    std::fs::create_dir_all(&r.workdir).with_context(|| format!("creating {}", r.workdir.display()))?;
    let log = std::fs::File::create(&r.log).with_context(|| format!("creating {}", r.log.display()))?;
    let log2 = log.try_clone().with_context(|| format!("duplicating {}", r.log.display()))?;
    let _ = std::fs::remove_file(&r.termination_log);
    let mut child = tokio::process::Command::new(&exe)
        .args(&r.argv[1..])
        .env_clear()
        .envs(&r.env)
        .current_dir(&r.workdir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let code = match tokio::time::timeout(r.timeout, child.wait()).await {
        Ok(status) => {
            let status = status.with_context(|| format!("waiting for {}", exe.display()))?;
            use std::os::unix::process::ExitStatusExt as _;
            status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
        }
        Err(_) => {
            let _ = child.kill().await;
            KILLED_EXIT_CODE
        }
    };
    let message = termination_message(&r.termination_log, &r.log, r.fallback_to_logs, code != 0);
    Ok(Exit { code, message, started_at, finished_at: now_rfc3339() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_the_tail_and_fall_back_to_logs_only_on_failure() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("kubelet-msg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let (file, log) = (dir.join("term"), dir.join("log"));
        std::fs::write(&log, format!("{}END", "l".repeat(3000)))?;
        assert_eq!(termination_message(&file, &log, true, false), "");
        let m = termination_message(&file, &log, true, true);
        assert_eq!(m.len(), FALLBACK_LOG_BYTES);
        assert!(m.ends_with("END"));
        assert_eq!(termination_message(&file, &log, false, true), "");
        std::fs::write(&file, format!("{}TAIL", "é".repeat(3000)))?;
        let m = termination_message(&file, &log, true, true);
        assert!(m.len() <= MAX_MESSAGE_BYTES && m.len() >= MAX_MESSAGE_BYTES - 1 && m.ends_with("TAIL"), "{}", m.len());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_container_past_its_timeout_exits_137() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("kubelet-run-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        let exit = run(Run {
            argv: vec!["sh".into(), "-c".into(), "echo started; exec sleep 30".into()],
            env: BTreeMap::new(),
            lookup_path: &path,
            workdir: dir.join("wd"),
            log: dir.join("c.log"),
            termination_log: dir.join("c.term"),
            fallback_to_logs: true,
            timeout: Duration::from_millis(300),
        })
        .await?;
        assert_eq!(exit.code, KILLED_EXIT_CODE);
        assert_eq!(exit.message, "started\n");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
