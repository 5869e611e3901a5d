//! The mechanics of confinement: the credentials and rlimits a sandboxed child takes before
//! `execve`, the kill of every process of the sandbox user, the scratch disk watchdog.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How often the watchdog measures the scratch directories while a program runs.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Rounds of `kill(-1, SIGKILL)` before giving up (one suffices: a killed process cannot
/// fork, and `kill(-1)` reaches every process of the uid that exists when it runs).
const KILL_ROUNDS: usize = 50;

/// Who a sandboxed program runs as, and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// RLIMIT_NPROC: processes (threads included) of the sandbox user.
    pub nproc: u64,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_FSIZE, bytes.
    pub file_size: u64,
}

/// How `process::run` confines one program.
#[derive(Debug, Clone)]
pub(crate) struct Confine {
    pub creds: Creds,
    /// Directories whose total size the watchdog bounds.
    pub measured: Vec<PathBuf>,
    pub disk_limit: u64,
}

impl Confine {
    /// Makes `cmd` start as the sandbox user: in the child before `execve`, the rlimits, no
    /// supplementary groups, the gid, the uid, `PR_SET_NO_NEW_PRIVS` and `PR_SET_PDEATHSIG`
    /// (SIGKILL when the runner dies; set after the uid change, which clears it). The caller
    /// clears the environment.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        let c = self.creds;
        // SAFETY: runs in the forked (single-threaded) child before exec; raw syscalls,
        // prctl and setrlimit are async-signal-safe and touch only this process.
        unsafe {
            cmd.pre_exec(move || {
                // Limits first, while we may still lower them (never above the current hard
                // limit: raising it would need CAP_SYS_RESOURCE, which agent pods drop).
                for (res, value) in [
                    (libc::RLIMIT_NPROC, c.nproc),
                    (libc::RLIMIT_NOFILE, c.nofile),
                    (libc::RLIMIT_FSIZE, c.file_size),
                    (libc::RLIMIT_CORE, 0),
                ] {
                    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    if libc::getrlimit(res, &mut cur) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let v = (value as libc::rlim_t).min(cur.rlim_max);
                    let lim = libc::rlimit { rlim_cur: v, rlim_max: v };
                    if libc::setrlimit(res, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // Groups (needs CAP_SETGID), then the gid, then the uid (which drops every
                // capability: no way back).
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, c.gid, c.gid, c.gid) != 0
                    || libc::syscall(libc::SYS_setresuid, c.uid, c.uid, c.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Starts the disk watchdog of one run; `on_over` is called once, from the watchdog's
    /// thread, when the scratch is over the limit.
    pub(crate) fn watch(&self, on_over: impl FnOnce(u64) + Send + 'static) -> Watchdog {
        let (stop, stopped) = mpsc::channel::<()>();
        let dirs = self.measured.clone();
        let limit = self.disk_limit;
        let fired = Arc::new(AtomicBool::new(false));
        let fired2 = fired.clone();
        let thread = std::thread::Builder::new().name("benchkite-disk-watchdog".into()).spawn(move || {
            loop {
                match stopped.recv_timeout(WATCH_INTERVAL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let used = usage(&dirs);
                if used > limit {
                    fired2.store(true, Ordering::SeqCst);
                    on_over(used);
                    return;
                }
            }
        });
        Watchdog { stop: Some(stop), thread: thread.ok(), fired }
    }

    /// Bytes used by the measured directories now.
    pub(crate) fn usage(&self) -> u64 {
        usage(&self.measured)
    }
}

/// A running disk watchdog; stopped (and joined) on drop.
pub(crate) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Stops it; whether it fired.
    pub(crate) fn finish(mut self) -> bool {
        self.stop_now();
        self.fired.load(Ordering::SeqCst)
    }

    fn stop_now(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Disk blocks (bytes) used under `dirs`, symlinks not followed, other filesystems not
/// entered. Unreadable entries count as nothing.
pub(crate) fn usage(dirs: &[PathBuf]) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0u64;
    let mut stack: Vec<(PathBuf, u64)> = Vec::new();
    for d in dirs {
        if let Ok(m) = std::fs::symlink_metadata(d) {
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() {
                stack.push((d.clone(), m.dev()));
            }
        }
    }
    while let Some((dir, dev)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() && m.dev() == dev {
                stack.push((e.path(), dev));
            }
        }
    }
    total
}

/// Whether a process of `uid` (not a zombie) is alive in this PID namespace.
pub(crate) fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>())
        };
        let zombie = field("State:").is_some_and(|s| s.first() == Some(&"Z"));
        // Real, effective, saved, filesystem: any of them is the sandbox user's.
        let ours = field("Uid:").is_some_and(|ids| ids.iter().any(|i| i.parse::<u32>().ok() == Some(uid)));
        if ours && !zombie {
            out.push(pid);
        }
    }
    out
}

/// Kills every process of `uid` in this PID namespace: a forked helper takes the uid (and
/// nothing else) and sends `kill(-1, SIGKILL)`, which reaches exactly the processes that uid
/// may signal (those whose real or saved uid is `uid`), atomically with respect to fork, with
/// no race on reused pids. Repeated while any remains (a process in the middle of a fork).
/// Only sound because the uid is exclusive to this runner (see the module docs).
pub(crate) fn kill_uid(uid: u32, gid: u32) {
    if uid == 0 {
        return;
    }
    for _ in 0..KILL_ROUNDS {
        if processes_of(uid).is_empty() {
            return;
        }
        kill_round(uid, gid);
        super::super::process::reap_strays();
        if processes_of(uid).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_round(uid: u32, gid: u32) {
    // SAFETY: the child only makes raw syscalls (async-signal-safe) and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raw syscalls on this (single-threaded) child; no allocation, no locks.
        unsafe {
            let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
            if !ok {
                libc::_exit(2);
            }
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0);
        }
    }
    if pid > 0 {
        let mut st = 0;
        // SAFETY: waits for the helper we just forked; `st` is a live local.
        unsafe {
            while libc::waitpid(pid, &mut st, 0) == -1
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
    }
}

/// `chown -R uid:gid dir` without following symlinks.
pub(crate) fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let chown = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .map_err(|e| format!("handing {} to the sandbox user {uid}:{gid} failed: {e}", p.display()))
    };
    chown(dir)?;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| format!("listing {} failed: {e}", d.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("listing {} failed: {e}", d.display()))?;
            let p = e.path();
            chown(&p)?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    Ok(())
}

/// Refuses a directory tree that holds a symlink (checked after every process of the sandbox
/// user is dead, so nothing can swap one in afterwards): the runner reads profiler output
/// as root, and a link would make it read any file it can.
pub(crate) fn refuse_symlinks(dir: &Path) -> Result<(), String> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let t = e.file_type().map_err(|err| format!("{}: {err}", e.path().display()))?;
            if t.is_symlink() {
                return Err(format!(
                    "{} is a symbolic link; the sandboxed program's output is refused",
                    e.path().display()
                ));
            }
            if t.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// Removes what `uid` left directly in the shared world-writable directories (`/tmp`,
/// `/var/tmp`, `/dev/shm`, or `dirs`): the next job on this agent runs as the same uid and
/// must not find it. Symlinks are removed, never followed. Returns what could not be removed.
pub(crate) fn remove_owned(dirs: &[PathBuf], uid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut failed = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.uid() != uid {
                continue;
            }
            let r = if m.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            if let Err(err) = r {
                failed.push(format!("{}: {err}", p.display()));
            }
        }
    }
    failed
}
