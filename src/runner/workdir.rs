//! The evaluation's working directory.

use std::path::{Path, PathBuf};

/// The evaluation's directory: `work/` holds the sources (the harness's cwd), the cases
/// files sit beside it.
pub(super) struct WorkDir {
    pub(super) root: PathBuf,
    pub(super) work: PathBuf,
    remove: bool,
}

impl WorkDir {
    /// `base`: where a fresh directory goes (default: $TMPDIR).
    pub(super) fn create(explicit: Option<&Path>, keep: bool, base: Option<&Path>) -> Result<WorkDir, String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        let (root, remove) = match explicit {
            Some(dir) => {
                // Missing parents get the usual modes (a sandbox user must be able to pass
                // through them); the directory itself is private.
                let created = match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(parent) => std::fs::create_dir_all(parent).and_then(|()| builder.create(dir)),
                    None => builder.create(dir),
                };
                match created {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                    Err(e) => return Err(format!("creating the working directory {} failed: {e}", dir.display())),
                }
                let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
                if !empty {
                    return Err(format!("working directory {} is not empty", dir.display()));
                }
                (dir.to_owned(), false)
            }
            None => {
                let base = base.map_or_else(std::env::temp_dir, Path::to_owned);
                // What runners killed outright (SIGKILL after a cancel's grace) left behind:
                // a long-lived agent would otherwise fill its disk with them.
                for stale in stale_run_dirs(&base, pid_alive, std::time::SystemTime::now()) {
                    let _ = std::fs::remove_dir_all(&stale);
                }
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let mut attempt = 0u32;
                loop {
                    let p = base.join(format!("benchkite-run-{}-{nanos:x}-{attempt}", std::process::id()));
                    match builder.create(&p) {
                        Ok(()) => break (p, !keep),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                        Err(e) => {
                            return Err(format!("creating a working directory in {} failed: {e}", base.display()));
                        }
                    }
                }
            }
        };
        let work = root.join("work");
        std::fs::create_dir(&work).map_err(|e| format!("creating {} failed: {e}", work.display()))?;
        Ok(WorkDir { root, work, remove })
    }
}

/// Left alone for this long after their runner died (a `--keep-workdir` run's directory
/// can still be looked at).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `benchkite-run-<pid>-…` directories in `base` whose runner is gone and that were last
/// modified more than [`STALE_AFTER`] before `now`.
fn stale_run_dirs(base: &Path, alive: impl Fn(u32) -> bool, now: std::time::SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid: u32 = name.strip_prefix("benchkite-run-")?.split('-').next()?.parse().ok()?;
            let meta = e.path().symlink_metadata().ok()?;
            let old = now.duration_since(meta.modified().ok()?).is_ok_and(|age| age >= STALE_AFTER);
            (meta.is_dir() && old && pid != std::process::id() && !alive(pid)).then(|| e.path())
        })
        .collect()
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_directories_of_dead_runners_are_stale() {
        let base = std::env::temp_dir().join(format!("benchkite-workdir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for name in ["benchkite-run-111-aa-0", "benchkite-run-222-bb-0", "benchkite-run-x-cc-0", "other-333"] {
            std::fs::create_dir_all(base.join(name)).unwrap();
        }
        std::fs::write(base.join("benchkite-run-444-dd-0"), b"a file").unwrap();
        let alive = |pid: u32| pid == 222;
        let later = std::time::SystemTime::now() + STALE_AFTER + std::time::Duration::from_secs(1);
        let stale = stale_run_dirs(&base, alive, later);
        assert_eq!(stale, vec![base.join("benchkite-run-111-aa-0")], "dead, old, a directory, named so");
        assert!(stale_run_dirs(&base, alive, std::time::SystemTime::now()).is_empty(), "too recent");
        let _ = std::fs::remove_dir_all(&base);
    }
}
