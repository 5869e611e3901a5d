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

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
