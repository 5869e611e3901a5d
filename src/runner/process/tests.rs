use super::*;

fn sh(script: &str) -> Spec {
    Spec::new("/bin/sh").args(["-c", script])
}

#[test]
fn captures_stdout_stderr_and_exit_code() {
    let out = run(&sh("echo out; echo err >&2; exit 3")).unwrap();
    assert_eq!(out.stdout.bytes, b"out\n");
    assert_eq!(out.stderr.bytes, b"err\n");
    assert_eq!(out.ending, Ending::Exited(3));
    assert_eq!(out.ending.python_returncode(), 3);
}

#[test]
fn result_pipe_is_inherited_and_read() {
    let mut spec = sh("echo \"check: pass\" >&$POPCORN_FD; echo 'x: 1' >&$POPCORN_FD");
    spec.result_pipe = true;
    let out = run(&spec).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.result), "check: pass\nx: 1\n");
    assert_eq!(out.ending, Ending::Exited(0));
}

#[test]
fn timeout_kills_the_whole_group() {
    let dir = std::env::temp_dir().join(format!("bk-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("gc.pid");
    let mut spec = sh(&format!("sleep 1000 & echo $! > {}; wait", pidfile.display()));
    // Long enough for sh to start and write the pid file on a loaded machine.
    spec.timeout = Some(Duration::from_millis(1500));
    let t = Instant::now();
    let out = run(&spec).unwrap();
    assert_eq!(out.ending, Ending::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(5));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(process_gone(pid), "grandchild {pid} survived");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn signal_death_is_reported_as_negative() {
    let out = run(&sh("kill -SEGV $$")).unwrap();
    assert_eq!(out.ending, Ending::Signaled(libc::SIGSEGV));
    assert_eq!(out.ending.python_returncode(), -11);
}

#[test]
fn missing_program_is_not_found() {
    let err = run(&Spec::new("/nonexistent/benchkite-nope")).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn stdin_is_fed() {
    let mut spec = sh("cat");
    spec.stdin = Some(b"hello".to_vec());
    let out = run(&spec).unwrap();
    assert_eq!(out.stdout.bytes, b"hello");
}

#[test]
fn output_over_the_capture_limit_is_counted() {
    let mut c = Captured::default();
    let chunk = vec![b'a'; 999];
    let lines = CAPTURE_LIMIT / 1000 + 10;
    for _ in 0..lines {
        c.push(&chunk, CAPTURE_LIMIT);
        c.push(b"\n", CAPTURE_LIMIT);
    }
    assert_eq!(c.bytes.len(), CAPTURE_LIMIT);
    assert_eq!(c.newlines, lines as u64);
    let text = c.to_output();
    // 16 lines of 1,000 characters fit under 16,384 - 100; the rest (and the empty line
    // after the last break) are counted, as Python's `text.split("\n")` does.
    assert_eq!(text.lines().count(), 17);
    assert_eq!(text.rsplit('\n').next().unwrap(), format!("[...] {} lines omitted", lines + 1 - 16));
}

#[test]
fn output_is_cut_like_kernelbots_limit_length() {
    // Short: unchanged, but with Python's newline translation.
    let mut c = Captured::default();
    c.push(b"a\r\nb\rc\n", CAPTURE_LIMIT);
    c.push(b"\r", CAPTURE_LIMIT);
    c.push(b"\nd", CAPTURE_LIMIT);
    assert_eq!((c.to_output(), c.newlines), ("a\nb\nc\n\nd".to_owned(), 4));
    // Characters, not bytes, count (Python's len of a str).
    let line = "é".repeat(100);
    let text: String = (0..200).map(|_| format!("{line}\n")).collect();
    let cut = limit_length(&text, 201, 16384);
    // Lines of 101 characters: 161 fit (161 * 101 + 100 <= 16,384).
    assert_eq!(cut.lines().count(), 161 + 1);
    assert!(cut.ends_with(&format!("{line}\n[...] 40 lines omitted")));
    // One line longer than the limit: nothing of it is kept.
    assert_eq!(limit_length(&"x".repeat(20_000), 1, 16384), "[...] 1 lines omitted");
    assert_eq!(limit_length("", 1, 16384), "");
}

#[test]
fn shell_join_quotes_like_python() {
    assert_eq!(shell_join(&["python3", "eval.py", "test", "/tmp/a b"]), "python3 eval.py test '/tmp/a b'");
    assert_eq!(shell_join(&["a'b", ""]), "'a'\"'\"'b' ''");
    assert_eq!(
        shell_join(&["-DX=1", "-gencode=arch=compute_90a,code=sm_90a"]),
        "-DX=1 -gencode=arch=compute_90a,code=sm_90a"
    );
}

/// Gone, or a zombie nobody reaped yet (dead all the same).
pub(crate) fn process_gone(pid: i32) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(s) if s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')) => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}
