//! Stopping: the SIGTERM/SIGINT/SIGHUP handlers that cancel the running child through a
//! self-pipe, and the sweep of descendants that escaped their process group.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::kill_group;

/// Read end of the self-pipe the signal handlers write to, or -1.
pub(super) static CANCEL_FD: AtomicI32 = AtomicI32::new(-1);
/// The signal that asked the runner to stop, or 0.
static CANCEL_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Write end of the self-pipe (used by the handler only).
static CANCEL_WRITE_FD: AtomicI32 = AtomicI32::new(-1);
/// Whether escaped descendants are swept after each run (CLI only: it needs the runner to
/// be a child subreaper and assumes every other child is ours).
pub(super) static SWEEP: AtomicBool = AtomicBool::new(false);
/// Children spawned by this module that are still running; the sweep leaves them alone.
pub(super) static LIVE_CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn on_stop_signal(sig: libc::c_int) {
    CANCEL_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = CANCEL_WRITE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = [1u8];
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local.
        unsafe {
            libc::write(fd, b.as_ptr().cast(), 1);
        }
    }
}

/// Installs SIGTERM/SIGINT/SIGHUP handlers that cancel the running child (its whole group
/// is killed) instead of killing the runner outright, so `result.json` is still written.
/// Process-wide: only the CLI entry point calls this.
pub(crate) fn install_stop_handlers() -> io::Result<()> {
    if CANCEL_FD.load(Ordering::SeqCst) >= 0 {
        return Ok(());
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    CANCEL_WRITE_FD.store(fds[1], Ordering::SeqCst);
    CANCEL_FD.store(fds[0], Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid; the
        // handler only touches atomics and calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The signal that asked the runner to stop, if any.
pub(crate) fn stop_signal() -> Option<i32> {
    match CANCEL_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Makes the runner a child subreaper and turns on the sweep of escaped descendants: a
/// harness that leaves its process group (setsid) is reparented to us and killed after
/// its run. CLI only (process-wide, and it assumes every child is the runner's).
pub(crate) fn enable_sweep() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument only.
    let ok = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } == 0;
    SWEEP.store(ok, Ordering::SeqCst);
}

/// After a kill of the sandbox user: kills and reaps what was reparented to us (when the
/// sweep is on; without it orphans go to init).
pub(crate) fn reap_strays() {
    if SWEEP.load(Ordering::SeqCst) {
        sweep_escaped();
    }
}

/// Kills descendants that left their process group and were reparented to us (we are a
/// child subreaper), then reaps them. Children this module is running are left alone.
pub(super) fn sweep_escaped() {
    if !has_children() {
        // The common case: nothing was left behind, no need to scan /proc.
        return;
    }
    let me = std::process::id();
    for _round in 0..8 {
        let live = LIVE_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        let strays: Vec<i32> = children_of(me, &live).into_iter().filter(|p| !live.contains(p)).collect();
        if strays.is_empty() {
            return;
        }
        for pid in &strays {
            // It may lead a group (setsid); take the group with it.
            kill_group(*pid, libc::SIGKILL);
            // SAFETY: kill only sends a signal.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        drop(live);
        let until = Instant::now() + Duration::from_millis(500);
        for pid in strays {
            loop {
                let mut st = 0;
                // SAFETY: waitpid on a pid that is our child; `st` is a live local.
                let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
                if r != 0 || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Whether this process has any child, running or exited but not reaped (no reaping here).
fn has_children() -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter; WNOWAIT leaves children alone.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`, which we own.
    let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    !(r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
}

/// Pids whose parent is `parent`, from /proc; zombie children are reaped, except `live` ones
/// (whose runs reap them: reaping one here would make their wait fail with ECHILD).
fn children_of(parent: u32, live: &[i32]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != Some("Z") {
            out.push(pid);
        } else if ppid == Some(parent) && state == Some("Z") && !live.contains(&pid) {
            // A zombie child: reap it.
            let mut st = 0;
            // SAFETY: waitpid on our own zombie child.
            unsafe {
                libc::waitpid(pid, &mut st, libc::WNOHANG);
            }
        }
    }
    out
}
