//! Deciding whether this run is sandboxed, claiming a sandbox uid, and laying out the
//! scratch directories.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::{Creds, Sandbox, SandboxMode, Settings};

/// Capabilities the runner needs to sandbox: CAP_CHOWN (0: hand the scratch over),
/// CAP_DAC_OVERRIDE (1: measure, read and remove what the sandbox wrote, whatever its modes),
/// CAP_KILL (5: kill the sandbox's process group), CAP_SETGID (6), CAP_SETUID (7).
const NEEDED_CAPS: &[(u32, &str)] =
    &[(0, "CAP_CHOWN"), (1, "CAP_DAC_OVERRIDE"), (5, "CAP_KILL"), (6, "CAP_SETGID"), (7, "CAP_SETUID")];
/// The directory of run directories and uid locks inside `--sandbox-dir`.
pub(crate) const SANDBOX_SUBDIR: &str = "benchkite-sandbox";

/// What `decide` found.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Sandboxed: create the work directory under `base`, then call [`Sandbox::adopt`].
    Sandboxed { sandbox: Sandbox, base: PathBuf },
    /// Not sandboxed (`off`, or `auto` when the runner cannot); the warning for the job log.
    Unconfined(Option<String>),
}

/// Whether and how this run is sandboxed. `Err` only in `required` mode: the job fails as an
/// infrastructure failure with that message. `programs` are the resolved programs the
/// sandbox user must be able to execute (the interpreter); `workdir` an explicit work
/// directory it must be able to reach.
pub(crate) fn decide(s: &Settings, programs: &[PathBuf], workdir: Option<&Path>) -> Result<Decision, String> {
    if s.mode == SandboxMode::Off {
        return Ok(Decision::Unconfined(None));
    }
    match try_sandbox(s, programs, workdir) {
        Ok(d) => Ok(d),
        Err(why) if s.mode == SandboxMode::Auto => Ok(Decision::Unconfined(Some(format!(
            "warning: the evaluated programs run as the runner's own user, not sandboxed: {why} \
             (--sandbox required makes this an error)"
        )))),
        Err(why) => Err(format!("the sandbox is required but cannot be set up: {why}")),
    }
}

fn try_sandbox(s: &Settings, programs: &[PathBuf], workdir: Option<&Path>) -> Result<Decision, String> {
    if s.uid == 0 || s.gid == 0 {
        return Err("the sandbox uid and gid must not be 0".into());
    }
    missing_caps()?;
    let ids = Ids { uid: s.uid, gid: s.gid };
    for p in programs {
        ids.can_execute(p)?;
    }
    sticky_tmp();
    let base = prepare_base(&s.dir)?;
    match workdir {
        // Its nearest existing ancestor (the runner creates the rest, 0711 up to work/).
        Some(w) => ids.can_reach(w.ancestors().skip(1).find(|a| a.exists()).unwrap_or(Path::new("/")))?,
        None => ids.can_reach(&base)?,
    }
    let (lock, uid, gid) = claim(&base, s)?;
    let creds = Creds { uid, gid, nproc: s.nproc, nofile: s.nofile, file_size: s.file_size };
    let sandbox = Sandbox {
        creds,
        home: PathBuf::new(),
        tmp: PathBuf::new(),
        measured: Vec::new(),
        disk_limit: s.disk,
        extra_env: s.extra_env.clone(),
        _lock: lock,
    };
    Ok(Decision::Sandboxed { sandbox, base })
}

/// `Err` naming the capabilities this process lacks.
fn missing_caps() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("no CapEff in /proc/self/status")?;
    let missing: Vec<&str> = NEEDED_CAPS.iter().filter(|(bit, _)| eff & (1u64 << bit) == 0).map(|(_, n)| *n).collect();
    if missing.is_empty() { Ok(()) } else { Err(format!("the runner lacks {}", missing.join(", "))) }
}

/// `<dir>/benchkite-sandbox`, created `0711` (the sandbox user may traverse it, not list
/// it) and checked: a directory, not a link, root's, writable by nobody else.
fn prepare_base(dir: &Path) -> Result<PathBuf, String> {
    harden_mount_root(dir)?;
    let base = dir.join(SANDBOX_SUBDIR);
    match std::fs::DirBuilder::new().mode(0o711).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {} failed: {e}", base.display())),
    }
    let m = std::fs::symlink_metadata(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be a directory owned by root and writable only by it (found uid {} mode {:o})",
            base.display(),
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("chmod 0711 {} failed: {e}", base.display()))?;
    Ok(base)
}

/// A scratch volume mounted for the sandbox (an emptyDir is created `0777` by the kubelet):
/// when `dir` is root's and writable by others without the sticky bit, it is made `0711`, so
/// a sandboxed program cannot fill it beside its own scratch. `/tmp` (sticky) is left alone.
fn harden_mount_root(dir: &Path) -> Result<(), String> {
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return Err(format!("the sandbox directory {} does not exist", dir.display()));
    };
    if !m.is_dir() {
        return Err(format!("the sandbox directory {} is not a directory", dir.display()));
    }
    if m.uid() == 0 && m.mode() & 0o002 != 0 && m.mode() & 0o1000 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("chmod 0711 {} failed: {e}", dir.display()))?;
    }
    Ok(())
}

/// The world-writable directories the sandbox may write beside its scratch get the sticky
/// bit when they are root's and lack it (an emptyDir `/tmp` is created `0777`): without it,
/// a sandboxed program could delete or replace the agent's and the runner's files there.
fn sticky_tmp() {
    let mut dirs: Vec<PathBuf> = super::SHARED_TMP.iter().map(PathBuf::from).collect();
    dirs.push(std::env::temp_dir());
    for d in dirs {
        if let Ok(m) = std::fs::symlink_metadata(&d)
            && m.is_dir()
            && m.uid() == 0
            && m.mode() & 0o002 != 0
            && m.mode() & 0o1000 == 0
        {
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode((m.mode() & 0o7777) | 0o1000));
        }
    }
}

/// Claims a uid of `uid..uid+uids` (gid alike) by an exclusive lock on
/// `<base>/uid-<uid>.lock`; blocks on the first when all are taken.
fn claim(base: &Path, s: &Settings) -> Result<(File, u32, u32), String> {
    use std::os::fd::AsRawFd as _;
    let n = s.uids.max(1);
    let open = |uid: u32| {
        let p = base.join(format!("uid-{uid}.lock"));
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| format!("opening {} failed: {e}", p.display()))
    };
    for i in 0..n {
        let (uid, gid) = (s.uid.saturating_add(i), s.gid.saturating_add(i));
        let f = open(uid)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok((f, uid, gid));
        }
    }
    super::super::log(&format!("every sandbox uid of {}..{} is in use; waiting for {}", s.uid, s.uid + n, s.uid));
    let f = open(s.uid)?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok((f, s.uid, s.gid));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("locking the sandbox uid {} failed: {e}", s.uid));
        }
    }
}

impl Sandbox {
    /// Takes over a fresh work directory: its root becomes `0711` (cases files readable,
    /// nothing listable), `work/` and new `home/` and `tmp/` are handed to the sandbox user.
    pub(crate) fn adopt(&mut self, root: &Path, work: &Path) -> Result<(), String> {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("chmod 0711 {} failed: {e}", root.display()))?;
        self.home = root.join("home");
        self.tmp = root.join("tmp");
        for d in [&self.home, &self.tmp] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(|e| format!("creating {} failed: {e}", d.display()))?;
        }
        self.measured = vec![work.to_owned(), self.home.clone(), self.tmp.clone()];
        for d in [work, &self.home, &self.tmp] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod 0700 {} failed: {e}", d.display()))?;
            self.give(d)?;
        }
        Ok(())
    }
}

/// A uid/gid pair checked against file modes (no supplementary groups: the sandbox has none).
struct Ids {
    uid: u32,
    gid: u32,
}

impl Ids {
    fn allows(&self, m: &std::fs::Metadata, bit: u32) -> bool {
        let mode = m.mode();
        if m.uid() == self.uid {
            mode & (bit << 6) != 0
        } else if m.gid() == self.gid {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    }

    /// Every directory from `/` to `dir` (itself included) is searchable.
    fn can_reach(&self, dir: &Path) -> Result<(), String> {
        let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
        for a in dir.ancestors() {
            let m = std::fs::metadata(a).map_err(|e| format!("{}: {e}", a.display()))?;
            if !self.allows(&m, 0o1) {
                return Err(format!(
                    "the sandbox user {}:{} cannot enter {} (mode {:o})",
                    self.uid,
                    self.gid,
                    a.display(),
                    m.mode() & 0o7777
                ));
            }
        }
        Ok(())
    }

    /// The program (links resolved) is reachable, executable and readable (a script or an
    /// interpreter must be readable to run).
    fn can_execute(&self, program: &Path) -> Result<(), String> {
        let real = program.canonicalize().map_err(|e| format!("{}: {e}", program.display()))?;
        // Each link on the way must be reachable too: check the path as given.
        for p in [program, real.as_path()] {
            if let Some(parent) = p.parent() {
                self.can_reach(parent)?;
            }
        }
        let m = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
        if !self.allows(&m, 0o1) || !self.allows(&m, 0o4) {
            return Err(format!(
                "the sandbox user {}:{} cannot execute {} (mode {:o})",
                self.uid,
                self.gid,
                real.display(),
                m.mode() & 0o7777
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) fn ids_allow(uid: u32, gid: u32, path: &Path) -> Result<(), String> {
    Ids { uid, gid }.can_execute(path)
}
