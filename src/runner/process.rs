//! Child processes of the runner: spawned in their own process group, with stdout, stderr
//! and (for the harness) the `POPCORN_FD` result pipe read concurrently through `poll(2)`,
//! a deadline after which the whole group is killed, and cancellation when the runner
//! itself is asked to stop (SIGTERM from the agent).
//!
//! Exit is observed through a pidfd (Linux ≥ 5.3) so there is no polling delay; older
//! kernels fall back to checking every 5 ms.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How much of stdout/stderr is kept in memory; the rest is counted, not stored
/// (result.json keeps 16 KiB anyway).
pub(crate) const CAPTURE_LIMIT: usize = 1024 * 1024;
/// How much of the result pipe is kept.
pub(crate) const RESULT_PIPE_LIMIT: usize = 16 * 1024 * 1024;
/// After the child exited (and its group was killed), how long we still wait for the
/// pipes to reach end-of-file (a process that left the group may hold them open).
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// After SIGKILL, how long we wait for the child to be reaped (a process stuck in a driver
/// call can take a while to die) before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(10);

mod stop;

use super::sandbox::{Confine, confine};
use stop::{CANCEL_FD, LIVE_CHILDREN, SWEEP, sweep_escaped};
pub(crate) use stop::{enable_sweep, install_stop_handlers, reap_strays, stop_signal};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    /// Give the child a `POPCORN_FD` pipe and collect what it writes.
    pub result_pipe: bool,
    /// `None`: no deadline.
    pub timeout: Option<Duration>,
    /// Written to the child's stdin (then closed); `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Stop (kill the group) when the runner receives SIGTERM/SIGINT/SIGHUP.
    pub cancellable: bool,
    /// Run as the sandbox user (then `env` is the whole environment, `env_remove` is moot),
    /// with the disk watchdog, and kill every process of that user afterwards.
    pub sandbox: Option<Confine>,
}

impl Spec {
    pub(crate) fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            env_remove: Vec::new(),
            result_pipe: false,
            timeout: None,
            stdin: None,
            cancellable: true,
            sandbox: None,
        }
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (not by us).
    Signaled(i32),
    /// Hit the deadline; the group was killed.
    TimedOut,
    /// The runner was asked to stop (this signal); the group was killed.
    Canceled(i32),
}

impl Ending {
    /// Exit code as Python's `subprocess` reports it: the code, or minus the signal.
    pub(crate) fn python_returncode(self) -> i64 {
        match self {
            Ending::Exited(c) => i64::from(c),
            Ending::Signaled(s) => -i64::from(s),
            Ending::TimedOut | Ending::Canceled(_) => -i64::from(libc::SIGKILL),
        }
    }
}

/// A stream read into memory up to a limit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    /// Bytes read in total (including the ones not kept).
    pub total: u64,
    /// Line breaks in the whole stream as Python's universal newlines see them (`\r\n`,
    /// `\r` and `\n` each one), including the part not kept.
    pub newlines: u64,
    /// Whether the last byte read was `\r` (a `\n` right after it is the same break).
    after_cr: bool,
}

impl Captured {
    fn push(&mut self, data: &[u8], limit: usize) {
        self.total += data.len() as u64;
        for &b in data {
            match b {
                b'\r' => self.newlines += 1,
                b'\n' if !self.after_cr => self.newlines += 1,
                _ => {}
            }
            self.after_cr = b == b'\r';
        }
        let room = limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// The text as kernelbot records a run's stdout or stderr: decoded (lossily here; Python
    /// would fail on bytes that are not UTF-8), line breaks translated as `subprocess.run(...,
    /// text=True)` does (`\r\n` and `\r` become `\n`), then cut by its `_limit_length`
    /// (16,384 characters: the lines that fit with 100 to spare, then `[...] N lines
    /// omitted`). The omitted count covers the lines that were not even kept in memory.
    pub(crate) fn to_output(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes).replace("\r\n", "\n").replace('\r', "\n");
        // Lines of the whole stream: one more than its line breaks.
        let total_lines = usize::try_from(self.newlines).unwrap_or(usize::MAX).saturating_add(1);
        limit_length(&text, total_lines, crate::contract::OUTPUT_LIMIT)
    }
}

/// kernelbot's `_limit_length(text, max_len)` (`src/libkernelbot/run_eval.py`): keeps whole
/// lines while their characters plus one per line break stay 100 under `max_len`, then a
/// last line `[...] N lines omitted`, N counted against `total_lines` (the lines of the
/// whole stream, of which `text` may be only the beginning).
pub(crate) fn limit_length(text: &str, total_lines: usize, max_len: usize) -> String {
    let mut size = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        size += line.chars().count() + 1;
        if size + 100 > max_len {
            let kept: Vec<&str> = text.split('\n').take(i).collect();
            let omitted = total_lines.saturating_sub(i);
            let mut out = kept.join("\n");
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("[...] {omitted} lines omitted"));
            return out;
        }
    }
    text.to_owned()
}

/// Everything a finished run produced.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub stdout: Captured,
    pub stderr: Captured,
    /// What the child wrote to `POPCORN_FD`.
    pub result: Vec<u8>,
    pub ending: Ending,
    /// From just before the spawn to the moment the exit (or the kill) was seen.
    pub duration: Duration,
    /// When the child was spawned.
    pub spawned_at: Instant,
    /// When its exit (or the kill) was seen.
    pub ended_at: Instant,
    /// Why the sandbox stopped or failed the run (its scratch went over the disk limit).
    pub violation: Option<String>,
}

/// Why a run could not happen at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("{program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("setting up pipes for {program}: {source}")]
    Pipe { program: String, source: io::Error },
    #[error("waiting for {program}: {source}")]
    Wait { program: String, source: io::Error },
    #[error("canceled by signal {0} before it started")]
    Canceled(i32),
}

impl SpawnError {
    /// The program was not found (ENOENT) or is not executable (EACCES).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, SpawnError::Spawn { source, .. }
            if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied))
    }
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `sig` to the process group `pgid` (never to 0, 1 or ourselves).
pub(crate) fn kill_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: killpg only sends a signal.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// Runs `spec` to its end. The child leads its own process group; when it exits, times
/// out or is canceled, the whole group is SIGKILLed, so no descendant outlives the run.
pub(crate) fn run(spec: &Spec) -> Result<Output, SpawnError> {
    let program = spec.program.to_string_lossy().into_owned();
    let pipe_err = |source| SpawnError::Pipe { program: program.clone(), source };

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    if let Some(c) = &spec.sandbox {
        cmd.env_clear();
        c.apply(&mut cmd);
    }
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let result_pipe = if spec.result_pipe {
        let (r, w) = cloexec_pipe().map_err(pipe_err)?;
        let wfd = w.as_raw_fd();
        cmd.env("POPCORN_FD", wfd.to_string());
        // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe and only
        // clears close-on-exec on the descriptor the child should inherit.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(wfd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Some((r, w))
    } else {
        None
    };

    if spec.cancellable
        && let Some(sig) = stop_signal()
    {
        return Err(SpawnError::Canceled(sig));
    }

    let start = Instant::now();
    let spawned = {
        // Spawning under the lock keeps the sweep from mistaking the new child for an
        // escaped descendant.
        let mut live = LIVE_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn();
        if let Ok(c) = &child
            && let Ok(pid) = i32::try_from(c.id())
        {
            live.push(pid);
        }
        child
    };
    let mut child = spawned.map_err(|source| SpawnError::Spawn { program: program.clone(), source })?;
    let spawned_at = Instant::now();
    let pid = child.id();
    let pgid = i32::try_from(pid).unwrap_or(0);

    let watchdog = spec.sandbox.as_ref().map(|c| {
        let (uid, gid) = (c.creds.uid, c.creds.gid);
        c.watch(move |_| {
            kill_group(pgid, libc::SIGKILL);
            confine::kill_uid(uid, gid);
        })
    });

    let result = wait_and_collect(&mut child, pgid, spec, result_pipe, start, &program);

    let mut violation = None;
    if let Some(c) = &spec.sandbox {
        let fired = watchdog.is_some_and(|w| w.finish());
        // Nothing of the sandbox user outlives the run (a daemon that left the group and
        // the subreaper's reach, a process of another run's leftovers).
        confine::kill_uid(c.creds.uid, c.creds.gid);
        let used = c.usage();
        if fired || used > c.disk_limit {
            violation = Some(format!(
                "the sandbox's scratch disk use went over its limit of {} bytes (now {used} bytes){}",
                c.disk_limit,
                if fired { "; the program was killed" } else { "" }
            ));
        }
    }
    {
        let mut live = LIVE_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|p| *p != pgid);
    }
    if SWEEP.load(Ordering::SeqCst) {
        sweep_escaped();
    }
    result.map(|(stdout, stderr, res, ending, duration)| Output {
        stdout,
        stderr,
        result: res,
        ending,
        duration,
        spawned_at,
        ended_at: start + duration,
        violation,
    })
}

type Collected = (Captured, Captured, Vec<u8>, Ending, Duration);

fn wait_and_collect(
    child: &mut Child,
    pgid: i32,
    spec: &Spec,
    result_pipe: Option<(OwnedFd, OwnedFd)>,
    start: Instant,
    program: &str,
) -> Result<Collected, SpawnError> {
    // Our copy of the write end must go, or the pipe never reaches end-of-file.
    let result_read = result_pipe.map(|(r, w)| {
        drop(w);
        File::from(r)
    });
    let mut stdout = child.stdout.take().map(|s| File::from(OwnedFd::from(s)));
    let mut stderr = child.stderr.take().map(|s| File::from(OwnedFd::from(s)));
    let mut result_read = result_read;
    let stdin_writer = match (child.stdin.take(), &spec.stdin) {
        (Some(mut stdin), Some(data)) => {
            let data = data.clone();
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            }))
        }
        _ => None,
    };
    let pidfd = pidfd_open(child.id());
    let cancel_fd = if spec.cancellable { CANCEL_FD.load(Ordering::SeqCst) } else { -1 };
    let deadline = spec.timeout.and_then(|t| start.checked_add(t));

    let mut out = Captured::default();
    let mut err = Captured::default();
    let mut res = Captured::default();
    let mut status: Option<std::process::ExitStatus> = None;
    let mut exited_at: Option<Instant> = None;
    let mut forced: Option<Ending> = None;
    let mut killed_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        let now = Instant::now();
        let pipes_open = stdout.is_some() || stderr.is_some() || result_read.is_some();
        // Child reaped and pipes closed (or the drain grace is over): done.
        if let Some(t) = exited_at
            && (!pipes_open || now >= t + DRAIN_GRACE)
        {
            break;
        }
        // Killed but not dying (stuck in the kernel): stop waiting for it.
        if status.is_none()
            && let Some(k) = killed_at
            && now >= k + KILL_GRACE
        {
            break;
        }
        if status.is_none() && forced.is_none() {
            if let Some(d) = deadline
                && now >= d
            {
                kill_group(pgid, libc::SIGKILL);
                forced = Some(Ending::TimedOut);
                killed_at = Some(now);
            } else if cancel_fd >= 0
                && let Some(sig) = stop_signal()
            {
                kill_group(pgid, libc::SIGKILL);
                forced = Some(Ending::Canceled(sig));
                killed_at = Some(now);
            }
        }

        let stdout_fd = stdout.as_ref().map(|f| f.as_raw_fd());
        let stderr_fd = stderr.as_ref().map(|f| f.as_raw_fd());
        let result_fd = result_read.as_ref().map(|f| f.as_raw_fd());
        let watch_exit = status.is_none();
        let exit_fd = pidfd.as_ref().filter(|_| watch_exit).map(|p| p.as_raw_fd());
        let cancel = (watch_exit && forced.is_none() && cancel_fd >= 0).then_some(cancel_fd);
        let mut fds: Vec<libc::pollfd> = [stdout_fd, stderr_fd, result_fd, exit_fd, cancel]
            .into_iter()
            .flatten()
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();

        // How long we may sleep: until the deadline, the drain grace or the kill grace.
        let wake = match (exited_at, killed_at) {
            (Some(t), _) => Some(t + DRAIN_GRACE),
            (None, Some(k)) => Some(k + KILL_GRACE),
            (None, None) => deadline,
        };
        let mut timeout_ms: i32 = match wake {
            // Round up so we do not spin just before the deadline.
            Some(w) => {
                i32::try_from(w.saturating_duration_since(now).as_millis().saturating_add(1)).unwrap_or(i32::MAX)
            }
            None => -1,
        };
        if watch_exit && pidfd.is_none() {
            timeout_ms = if timeout_ms < 0 { 5 } else { timeout_ms.min(5) };
        }

        // SAFETY: `fds` is a live, correctly sized array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            kill_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            return Err(SpawnError::Wait { program: program.to_owned(), source: e });
        }
        let ready = |fd: Option<RawFd>| fd.is_some_and(|fd| fds.iter().any(|p| p.fd == fd && p.revents != 0));
        if ready(stdout_fd) {
            read_into(&mut stdout, &mut out, &mut buf, CAPTURE_LIMIT);
        }
        if ready(stderr_fd) {
            read_into(&mut stderr, &mut err, &mut buf, CAPTURE_LIMIT);
        }
        if ready(result_fd) {
            read_into(&mut result_read, &mut res, &mut buf, RESULT_PIPE_LIMIT);
        }
        if watch_exit && (exit_fd.is_none() || ready(exit_fd)) {
            // Kill what the child left behind in its group while it is still a zombie (its
            // pid, our group id, cannot be reused yet), then reap it.
            match child.try_wait() {
                Ok(Some(s)) => {
                    kill_group(pgid, libc::SIGKILL);
                    status = Some(s);
                    exited_at = Some(Instant::now());
                }
                Ok(None) => {}
                Err(e) => {
                    kill_group(pgid, libc::SIGKILL);
                    let _ = child.wait();
                    return Err(SpawnError::Wait { program: program.to_owned(), source: e });
                }
            }
        }
    }
    if let Some(h) = stdin_writer {
        // The child is gone, so the write has finished or failed.
        let _ = h.join();
    }
    let ended = killed_at.or(exited_at).unwrap_or_else(Instant::now);
    let duration = ended.saturating_duration_since(start);
    let ending = match (forced, status) {
        (Some(f), _) => f,
        (None, Some(s)) => match (s.code(), s.signal()) {
            (Some(c), _) => Ending::Exited(c),
            (None, Some(sig)) => Ending::Signaled(sig),
            (None, None) => Ending::Exited(-1),
        },
        (None, None) => Ending::TimedOut,
    };
    Ok((out, err, res.bytes, ending, duration))
}

fn read_into(file: &mut Option<File>, into: &mut Captured, buf: &mut [u8], limit: usize) {
    let Some(f) = file.as_mut() else {
        return;
    };
    match f.read(buf) {
        Ok(0) => *file = None,
        Ok(n) => into.push(&buf[..n], limit),
        Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => *file = None,
    }
}

/// Looks `name` up on PATH (or takes it as a path when it contains a slash).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Joins a command line the way Python's `shlex.join` does, for `command` fields.
pub(crate) fn shell_join<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(|a| shell_quote(a.as_ref())).collect::<Vec<_>>().join(" ")
}

fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_owned();
    }
    let safe = s.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if safe { s.to_owned() } else { format!("'{}'", s.replace('\'', "'\"'\"'")) }
}

#[cfg(test)]
mod tests;
