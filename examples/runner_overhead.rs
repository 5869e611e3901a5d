//! Measures `benchkite run`'s own overhead around a no-op harness, against the floor of any
//! Python runner (`python3 -c 'import json, zlib, base64'`).
//!
//! ```text
//! cargo build --release && cargo run --release --example runner_overhead [-- RUNS]
//! ```
//! The binary is `$BENCHKITE_BIN`, else `target/release/benchkite`. Prints medians (and
//! p10/p90) over RUNS runs (default 30) of:
//! - the floor: `python3 -c 'import json, zlib, base64'`;
//! - the no-op harness alone: `python3 eval.py test <cases>` (tests/tasks/noop);
//! - `benchkite run` evaluating the same harness from a payload (decode, files, spawn,
//!   result.json, system info);
//! - runner start → first harness spawned (the runner's `BENCHKITE_TIMING` line, against
//!   the wall clock read just before exec);
//! and the overhead = runner − harness alone.

use std::io::Write as _;
use std::path::{Path, PathBuf};
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
    let bin = std::env::var_os("BENCHKITE_BIN").map(PathBuf::from).unwrap_or_else(|| root.join("target/release/benchkite"));
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

    // Warm the page cache.
    let _ = time_cmd(3, || {
        let mut c = Command::new(&bin);
        c.arg("run").current_dir(&scratch).env("KERNELBOT_PAYLOAD", &payload).env("BENCHKITE_REPORT", "never");
        c
    });

    let floor = time_cmd(runs, || {
        let mut c = Command::new("python3");
        c.args(["-c", "import json, zlib, base64"]);
        c
    });
    let bare = time_cmd(runs, || {
        let mut c = Command::new("python3");
        c.args(["-c", "pass"]);
        c
    });
    let harness = time_cmd(runs, || {
        let mut c = Command::new("python3");
        c.args(["eval.py", "test", "cases.txt"]).current_dir(&scratch).env("POPCORN_FD", "1");
        c
    });

    let mut runner = Vec::new();
    let mut to_spawn = Vec::new();
    let mut main_to_spawn = Vec::new();
    for _ in 0..runs {
        let mut c = Command::new(&bin);
        c.arg("run")
            .current_dir(&scratch)
            .env("KERNELBOT_PAYLOAD", &payload)
            .env("BENCHKITE_REPORT", "never")
            .env("BENCHKITE_TIMING", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let wall0 = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
        let t = Instant::now();
        let out = c.output().expect("benchkite run");
        runner.push(t.elapsed());
        assert!(out.status.success(), "benchkite run failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stderr);
        let field = |name: &str| -> Option<u128> {
            text.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        if let Some(spawn) = field("first_spawn_unix_ns") {
            to_spawn.push(Duration::from_nanos(spawn.saturating_sub(wall0) as u64));
        }
        if let Some(us) = field("main_to_first_spawn_us") {
            main_to_spawn.push(Duration::from_micros(us as u64));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_file(scratch.join("result.json"));

    let row = |name: &str, v: &[Duration]| {
        let (m, p10, p90) = stats(v.to_vec());
        println!("| {name:<58} | {m:>8.2} | {p10:>8.2} | {p90:>8.2} |");
        m
    };
    println!("runs per row: {runs}; binary: {}", bin.display());
    println!("| {:<58} | {:>8} | {:>8} | {:>8} |", "measurement (ms)", "median", "p10", "p90");
    println!("|{:-<60}|{:-<10}|{:-<10}|{:-<10}|", "", "", "", "");
    let floor_m = row("floor: python3 -c 'import json, zlib, base64'", &floor);
    row("python3 -c pass", &bare);
    let harness_m = row("no-op harness alone: python3 eval.py test cases", &harness);
    let runner_m = row("benchkite run (no-op harness, test mode)", &runner);
    row("exec benchkite → first harness spawned", &to_spawn);
    row("  of which main() → first harness spawned", &main_to_spawn);
    println!();
    println!("runner overhead (benchkite run − harness alone): {:.2} ms", runner_m - harness_m);
    println!("floor of a Python runner (imports only, before any work): {floor_m:.2} ms");
}
