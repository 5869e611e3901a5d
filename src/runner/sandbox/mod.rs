//! The sandbox of the evaluated programs (issue 17): every program that runs submitted code
//! (the `py` compile step, nvcc, the harness runs, the profiler) starts as a dedicated
//! unprivileged user with no supplementary groups, `PR_SET_NO_NEW_PRIVS`, an explicit minimal
//! environment, rlimits (processes, open files, file size, no core dumps), and a private
//! scratch directory whose disk use a watchdog bounds. After every run each process of the
//! sandbox user is killed (see [`confine::kill_uid`]).
//!
//! The sandbox user must be exclusive to this runner: [`confine::kill_uid`] kills every
//! process of that uid in the runner's PID namespace. An agent pod (its own PID namespace,
//! one runner at a time) satisfies that; on a shared host each runner needs its own uid
//! (`--sandbox-uids N` hands out `uid..uid+N`, one per concurrent runner, through a lock file).
//!
//! What the runner itself owns stays out of reach: it runs as root with `PR_SET_DUMPABLE=0`
//! (its `/proc` entries are root's and unreadable), its work directory root is `0711` with
//! only the cases files readable, `result.json` and the build directory are root's, and the
//! tools it runs after a sandboxed program (`buildkite-agent`) were resolved to absolute paths
//! before any submitted code ran.

pub(crate) mod confine;
mod setup;

use std::path::{Path, PathBuf};

pub(crate) use confine::{Confine, Creds};
pub(crate) use setup::{Decision, decide};

/// `--sandbox`: whether the evaluated programs run as the sandbox user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// Sandbox when the runner can (root with CAP_SETUID, CAP_SETGID, CAP_CHOWN,
    /// CAP_DAC_OVERRIDE and CAP_KILL; the interpreter reachable by the sandbox user);
    /// otherwise run as the runner's user, with a warning.
    Auto,
    /// Sandbox or fail the job as an infrastructure failure (agent pods set this).
    Required,
    /// Run the evaluated programs as the runner's own user (the pre-sandbox behaviour).
    Off,
}

/// Default uid and gid of the sandbox user (`nonroot` of the distroless images; the agent
/// image creates the user `benchkite-sandbox` with these ids).
pub const DEFAULT_UID: u32 = 65532;
/// See [`DEFAULT_UID`].
pub const DEFAULT_GID: u32 = 65532;

/// Env vars handed to a sandboxed program when the runner has them: what the toolchains, the
/// GPU runtimes and a locale need. Everything else is dropped (the payload, the agent's job
/// token, every `BUILDKITE_*` and `BENCHKITE_*` setting); `--sandbox-env` adds names and
/// `PREFIX*` patterns (e.g. what the KernelJob env allow-list admits), never the payload, the
/// tokens, `BENCHKITE_*`, `LD_*` but `LD_LIBRARY_PATH`, `BASH_ENV` or `ENV`.
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TERM",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONIOENCODING",
    "PYTHONHASHSEED",
    "VIRTUAL_ENV",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "TORCH_CUDA_ARCH_LIST",
    "ROCM_PATH",
    "HIP_PATH",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "KERNELBOT_CPUS",
    "KERNELBOT_MEMORY",
];

/// World-writable directories every program may write to, beside its scratch.
pub const SHARED_TMP: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// Sandbox settings of one run, from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub mode: SandboxMode,
    pub uid: u32,
    pub gid: u32,
    /// How many consecutive uids (from `uid`, gids from `gid`) this host hands out.
    pub uids: u32,
    /// Where the run directories live (`<dir>/benchkite-sandbox/`).
    pub dir: PathBuf,
    pub nproc: u64,
    pub nofile: u64,
    pub file_size: u64,
    pub disk: u64,
    pub extra_env: Vec<String>,
}

/// The sandbox of one run: the claimed uid (its lock held), the scratch directories.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub creds: Creds,
    /// `HOME` and `TMPDIR` of the sandboxed programs (owned by the sandbox user).
    pub home: PathBuf,
    pub tmp: PathBuf,
    /// What the disk watchdog measures (the work directory, home, tmp).
    pub measured: Vec<PathBuf>,
    pub disk_limit: u64,
    extra_env: Vec<String>,
    /// Held for the whole run: the uid is ours.
    _lock: std::fs::File,
}

impl Sandbox {
    /// The complete environment of a sandboxed program: [`PASSED_ENV`] and `--sandbox-env`
    /// from the runner's own environment, `HOME`/`TMPDIR` in the scratch, then `extra` (the
    /// harness contract's `POPCORN_*`, a profiler's settings).
    pub(crate) fn env(&self, extra: &[(String, String)]) -> Vec<(String, String)> {
        let mut names: Vec<String> = PASSED_ENV.iter().map(|n| (*n).to_owned()).collect();
        for n in &self.extra_env {
            match n.strip_suffix('*') {
                // A prefix: every variable of the runner that starts with it.
                Some(prefix) => names.extend(
                    std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).filter(|k| k.starts_with(prefix)),
                ),
                None => names.push(n.clone()),
            }
        }
        let mut env: Vec<(String, String)> = Vec::new();
        for name in names {
            if never_passed(&name) || env.iter().any(|(k, _)| *k == name) {
                continue;
            }
            if let Some(v) = std::env::var_os(&name).and_then(|v| v.into_string().ok()) {
                let v = if name == "PATH" { absolute_path_entries(&v) } else { v };
                env.push((name, v));
            }
        }
        env.push(("HOME".to_owned(), self.home.to_string_lossy().into_owned()));
        env.push(("TMPDIR".to_owned(), self.tmp.to_string_lossy().into_owned()));
        env.push(("USER".to_owned(), "benchkite-sandbox".to_owned()));
        env.extend(extra.iter().cloned());
        env
    }

    /// What `process::run` needs to confine one program.
    pub(crate) fn confine(&self) -> Confine {
        Confine { creds: self.creds, measured: self.measured.clone(), disk_limit: self.disk_limit }
    }

    /// Hands a directory (and everything in it) to the sandbox user.
    pub(crate) fn give(&self, dir: &Path) -> Result<(), String> {
        confine::chown_tree(dir, self.creds.uid, self.creds.gid)
    }

    /// Kills every process of the sandbox user and removes what it left in the shared
    /// temporary directories (after the last run, before the report). Returns notes for the
    /// job log.
    pub(crate) fn finish(&self) -> Vec<String> {
        confine::kill_uid(self.creds.uid, self.creds.gid);
        let shared: Vec<PathBuf> = SHARED_TMP.iter().map(PathBuf::from).collect();
        confine::remove_owned(&shared, self.creds.uid)
            .into_iter()
            .map(|f| format!("warning: could not remove what the sandbox left: {f}"))
            .collect()
    }
}

/// What no `--sandbox-env` name or prefix hands on: the payload (a private run's seed), the
/// agent's tokens, the runner's own settings, and everything the loader or the shell reads
/// before the program does.
fn never_passed(name: &str) -> bool {
    const DENY: &[&str] =
        &["BUILDKITE_AGENT_ACCESS_TOKEN", "BUILDKITE_AGENT_TOKEN", "BUILDKITE_SIM_META_DATA_FILE", "BASH_ENV", "ENV"];
    crate::contract::is_payload_env(name)
        || DENY.contains(&name)
        || name.starts_with("BENCHKITE_")
        || name.starts_with("LD_") && name != "LD_LIBRARY_PATH"
}

/// PATH without empty or relative entries (they would resolve in the writable work dir).
fn absolute_path_entries(path: &str) -> String {
    path.split(':').filter(|p| p.starts_with('/')).collect::<Vec<_>>().join(":")
}

/// Turns off core dumps of this process and makes its `/proc/<pid>/*` root's (no other user
/// can read its environ, maps or fds, nor ptrace it). Called first thing by the runner.
pub(crate) fn harden_self() -> Result<(), String> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes an integer argument only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(format!("prctl(PR_SET_DUMPABLE, 0) failed: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Resolves a program the runner will exec (`python3`, `buildkite-agent`) to an absolute
/// path now, before any submitted code runs: later lookups through PATH or the work
/// directory could find a file the submission planted.
pub(crate) fn resolve(program: &str) -> Option<PathBuf> {
    let p = super::process::which(program)?;
    if p.is_absolute() {
        return Some(p);
    }
    std::env::current_dir().ok().map(|d| d.join(p))
}

#[cfg(test)]
mod tests;
