//! Measures `benchkite run`'s own overhead around a no-op harness, against the floor of any
//! Python runner (`python3 -c 'import json, zlib, base64'`).
//!
//! ```text
//! cargo build --release && cargo run --release --example runner_overhead [-- RUNS]
//! ```
//!
//! The binary is `$BENCHKITE_BIN`, else `target/release/benchkite`. The interpreter is the
//! real one behind `python3` (`sys.executable`, so a pyenv shim's own start-up is not
//! counted), used for every row and given to the runner. Each round runs every command
//! once, interleaved, so background load hits all rows alike; the table shows the median
//! (and p10/p90) over RUNS rounds (default 30) of:
//!
//! - the floor: `python3 -c 'import json, zlib, base64'`;
//! - the no-op harness alone: `python3 eval.py test <cases>` (tests/tasks/noop);
//! - `benchkite run` evaluating the same harness from a payload (decode, files, spawn,
//!   result.json, system info);
//! - exec of `benchkite` → first harness spawned (the runner's `BENCHKITE_TIMING` line
//!   against the wall clock read just before the exec), and the tail: harness exit seen →
//!   result.json written; and the CPU time the runner process itself used (user + system,
//!   children excluded: the load-independent part of the cost);
//!
//! and the overhead: the median of the per-round differences runner − harness alone.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.1), at(0.9))
}

fn time_cmd(runs: usize, mut make: impl FnMut() -> Command) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let mut c = make();
            c.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null());
            let t = Instant::now();
            let status = c.status().expect("spawn");
            let d = t.elapsed();
            assert!(status.success(), "{c:?} failed: {status}");
            d
        })
        .collect()
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin =
        std::env::var_os("BENCHKITE_BIN").map(PathBuf::from).unwrap_or_else(|| root.join("target/release/benchkite"));
    assert!(bin.exists(), "{} not found: cargo build --release first (or set BENCHKITE_BIN)", bin.display());
    let noop = std::fs::read_to_string(root.join("tests/tasks/noop/eval.py")).expect("noop task");

    let scratch = std::env::temp_dir().join(format!("bk-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch");
    std::fs::write(scratch.join("eval.py"), &noop).expect("eval.py");
    std::fs::write(scratch.join("cases.txt"), "size: 1; seed: 1\n").expect("cases");

    let cfg = serde_json::json!({
        "lang": "py", "mode": "test", "main": "eval.py",
        "sources": {"eval.py": noop},
        "tests": [{"size": 1, "seed": 1}], "benchmarks": [],
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(cfg.to_string().as_bytes()).expect("zlib");
    let payload = base64::engine::general_purpose::STANDARD.encode(z.finish().expect("zlib"));

    let python = {
        let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("python3");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let runner_cmd = || {
        let mut c = Command::new(&bin);
        c.arg("run")
            .current_dir(&scratch)
            .env("KERNELBOT_PAYLOAD", &payload)
            .env("BENCHKITE_REPORT", "never")
            .env("BENCHKITE_PYTHON", &python)
            .env("BENCHKITE_TIMING", "1");
        c
    };
    // Warm the page cache.
    let _ = time_cmd(3, runner_cmd);

    let (mut floor, mut floor_nosite, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    let (mut harness, mut runner) = (Vec::new(), Vec::new());
    let (mut overhead, mut to_spawn, mut main_to_spawn, mut tail, mut cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        floor.extend(time_cmd(1, || {
            let mut c = Command::new(&python);
            c.args(["-c", "import json, zlib, base64"]);
            c
        }));
        floor_nosite.extend(time_cmd(1, || {
            let mut c = Command::new(&python);
            c.args(["-S", "-c", "import json, zlib, base64"]);
            c
        }));
        bare.extend(time_cmd(1, || {
            let mut c = Command::new(&python);
            c.args(["-c", "pass"]);
            c
        }));
        let h = time_cmd(1, || {
            let mut c = Command::new(&python);
            c.args(["eval.py", "test", "cases.txt"]).current_dir(&scratch).env("POPCORN_FD", "1");
            c
        })[0];
        harness.push(h);

        let mut c = runner_cmd();
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let wall0 = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
        let t = Instant::now();
        let out = c.output().expect("benchkite run");
        let r = t.elapsed();
        runner.push(r);
        overhead.push(r.saturating_sub(h));
        assert!(out.status.success(), "benchkite run failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stderr);
        let field = |name: &str| -> Option<u128> {
            text.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        if let Some(spawn) = field("first_spawn_unix_ns") {
            to_spawn.push(Duration::from_nanos(u64::try_from(spawn.saturating_sub(wall0)).unwrap_or(0)));
        }
        if let Some(us) = field("main_to_first_spawn_us") {
            main_to_spawn.push(Duration::from_micros(u64::try_from(us).unwrap_or(0)));
        }
        if let Some(us) = field("self_cpu_us") {
            cpu.push(Duration::from_micros(u64::try_from(us).unwrap_or(0)));
        }
        if let Some(us) = field("last_run_end_to_exit_us") {
            tail.push(Duration::from_micros(u64::try_from(us).unwrap_or(0)));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let row = |name: &str, v: &[Duration]| {
        let (m, p10, p90) = stats(v.to_vec());
        println!("| {name:<58} | {m:>8.2} | {p10:>8.2} | {p90:>8.2} |");
        m
    };
    println!("rounds: {runs}; binary: {}; python: {python}", bin.display());
    println!("| {:<58} | {:>8} | {:>8} | {:>8} |", "measurement (ms)", "median", "p10", "p90");
    println!("|{:-<60}|{:-<10}|{:-<10}|{:-<10}|", "", "", "", "");
    let floor_m = row("floor: python3 -c 'import json, zlib, base64'", &floor);
    row("  same without site-packages: python3 -S -c '...'", &floor_nosite);
    row("python3 -c pass", &bare);
    row("no-op harness alone: python3 eval.py test cases", &harness);
    row("benchkite run (no-op harness, test mode)", &runner);
    let overhead_m = row("runner overhead: benchkite run - harness alone (paired)", &overhead);
    row("exec benchkite -> first harness spawned", &to_spawn);
    row("  of which main() -> first harness spawned", &main_to_spawn);
    row("harness exit seen -> result.json written, runner exiting", &tail);
    row("runner's own CPU time (user+sys, children excluded)", &cpu);
    println!();
    println!("runner overhead {overhead_m:.2} ms vs the floor of a Python runner {floor_m:.2} ms");
}
