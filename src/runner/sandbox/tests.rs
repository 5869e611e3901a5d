use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use super::*;

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("bk-sandbox-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn settings(mode: SandboxMode, uid: u32, dir: PathBuf) -> Settings {
    Settings {
        mode,
        uid,
        gid: uid,
        uids: 1,
        dir,
        nproc: 64,
        nofile: 256,
        file_size: 1 << 20,
        disk: 1 << 20,
        extra_env: vec!["BK_UNIT_EXTRA".into(), "BK_UNIT_P_*".into(), "BK_UNIT_Q".into()],
    }
}

#[test]
fn path_keeps_only_absolute_entries() {
    assert_eq!(absolute_path_entries("/usr/bin::.:bin:/bin"), "/usr/bin:/bin");
}

#[test]
fn off_never_sandboxes_and_uid_zero_is_refused() {
    let d = tmp("off");
    let s = settings(SandboxMode::Off, 61_990, d.clone());
    assert!(matches!(decide(&s, &[], None), Ok(Decision::Unconfined(None))));
    let s = settings(SandboxMode::Required, 0, d.clone());
    let e = decide(&s, &[], None).unwrap_err();
    assert!(e.contains("must not be 0"), "{e}");
    let s = settings(SandboxMode::Auto, 0, d.clone());
    match decide(&s, &[], None) {
        Ok(Decision::Unconfined(Some(w))) => assert!(w.contains("not sandboxed") && w.contains("must not be 0"), "{w}"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn an_interpreter_the_sandbox_user_cannot_reach_is_named() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = tmp("reach");
    let private = d.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let prog = private.join("python3");
    std::fs::write(&prog, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = setup::ids_allow(61_991, 61_991, &prog).unwrap_err();
    assert!(e.contains("cannot enter") && e.contains("private"), "{e}");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
    setup::ids_allow(61_991, 61_991, &prog).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = setup::ids_allow(61_991, 61_991, &prog).unwrap_err();
    assert!(e.contains("cannot execute"), "{e}");
    let s = settings(SandboxMode::Required, 61_991, d.clone());
    let e = decide(&s, std::slice::from_ref(&prog), None).unwrap_err();
    assert!(e.starts_with("the sandbox is required but cannot be set up"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_sandbox_gets_a_locked_uid_private_dirs_and_a_minimal_env() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let d = tmp("setup");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut s = settings(SandboxMode::Required, 61_992, d.clone());
    s.uids = 2;
    let Ok(Decision::Sandboxed { sandbox: mut a, base }) = decide(&s, &[], None) else { panic!("not sandboxed") };
    // An emptyDir-like mount root (0777, no sticky bit) is closed to others.
    assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777, 0o711);
    assert_eq!(std::fs::metadata(&base).unwrap().permissions().mode() & 0o7777, 0o711);
    assert_eq!(a.creds.uid, 61_992);
    // The first uid is locked: a concurrent runner gets the next one.
    let Ok(Decision::Sandboxed { sandbox: b, .. }) = decide(&s, &[], None) else { panic!("not sandboxed") };
    assert_eq!((b.creds.uid, b.creds.gid), (61_993, 61_993));
    drop(b);

    let root = base.join("run-unit");
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("submission.py"), "x").unwrap();
    a.adopt(&root, &work).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o711);
    for p in [&work, &a.home, &a.tmp] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (61_992, 61_992, 0o700), "{}", p.display());
    }
    a.give(&work).unwrap();
    assert_eq!(std::fs::metadata(work.join("submission.py")).unwrap().uid(), 61_992);

    // SAFETY: this test owns these variable names.
    unsafe {
        std::env::set_var("BK_UNIT_EXTRA", "yes");
        std::env::set_var("BK_UNIT_SECRET", "canary");
        std::env::set_var("BK_UNIT_P_ONE", "1");
        std::env::set_var("BK_UNIT_Q", "q");
    }
    let env = a.env(&[("POPCORN_FD".into(), "3".into())]);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("HOME"), Some(a.home.to_string_lossy().into_owned()));
    assert_eq!(get("TMPDIR"), Some(a.tmp.to_string_lossy().into_owned()));
    assert_eq!(get("BK_UNIT_EXTRA").as_deref(), Some("yes"));
    assert_eq!(get("POPCORN_FD").as_deref(), Some("3"));
    assert_eq!(get("BK_UNIT_SECRET"), None);
    assert_eq!(get("BK_UNIT_P_ONE").as_deref(), Some("1"), "a prefix pattern");
    assert_eq!(get("BK_UNIT_Q").as_deref(), Some("q"));
    // What no --sandbox-env name or pattern hands on (tested without setting them here: this
    // process's env is shared with the other tests).
    for never in
        ["KERNELBOT_PAYLOAD", "BUILDKITE_AGENT_ACCESS_TOKEN", "BUILDKITE_AGENT_TOKEN", "BENCHKITE_X", "LD_PRELOAD"]
    {
        assert!(never_passed(never), "{never}");
    }
    for ok in ["LD_LIBRARY_PATH", "KERNELBOT_RUN_ID", "CUDA_VISIBLE_DEVICES"] {
        assert!(!never_passed(ok), "{ok}");
    }
    assert!(env.iter().all(|(k, _)| !k.starts_with("BUILDKITE") && !k.starts_with("CARGO")), "{env:?}");
    drop(a);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn usage_counts_blocks_without_following_links() {
    let d = tmp("usage");
    std::fs::write(d.join("a"), vec![1u8; 256 * 1024]).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(d.join("sub/b"), vec![1u8; 256 * 1024]).unwrap();
    std::os::unix::fs::symlink("/usr", d.join("link")).unwrap();
    let used = confine::usage(std::slice::from_ref(&d));
    assert!((512 * 1024..4 * 1024 * 1024).contains(&used), "{used}");
    let e = confine::refuse_symlinks(&d).unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");
    std::fs::remove_file(d.join("link")).unwrap();
    confine::refuse_symlinks(&d).unwrap();
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn kill_uid_kills_every_process_of_the_uid_and_nothing_else() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    use std::os::unix::process::CommandExt as _;
    const UID: u32 = 61_994;
    let mut victims: Vec<std::process::Child> =
        (0..3).map(|_| std::process::Command::new("sleep").arg("1000").uid(UID).gid(UID).spawn().unwrap()).collect();
    let mut bystander = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    assert_eq!(confine::processes_of(UID).len(), 3);
    confine::kill_uid(UID, UID);
    for v in &mut victims {
        let st = v.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
    }
    assert!(confine::processes_of(UID).is_empty());
    assert!(bystander.try_wait().unwrap().is_none(), "another uid's process survives");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn what_the_uid_left_in_shared_dirs_is_removed_and_nothing_else() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    const UID: u32 = 61_995;
    let d = tmp("shared");
    let mine = d.join("left-by-sandbox");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("f"), "x").unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::os::unix::fs::lchown(&mine, Some(UID), Some(UID)).unwrap();
    let link = d.join("link-by-sandbox");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(UID), Some(UID)).unwrap();
    let other = d.join("someone-elses");
    std::fs::write(&other, "keep").unwrap();
    assert!(confine::remove_owned(std::slice::from_ref(&d), UID).is_empty());
    assert!(!mine.exists() && std::fs::symlink_metadata(&link).is_err());
    assert!(other.exists() && std::path::Path::new("/etc/hostname").exists());
    let _ = std::fs::remove_dir_all(d);
}
