//! `benchkite-bench`: benchkite's benchmarks against baselines run in the same invocation
//! (issue 8). Writes `bench/results/latest.{json,md}` (and `full.*` or `quick.*`).
//!
//! ```text
//! make bench-quick        # a few minutes, CI
//! make bench              # the full set (< 45 min on a 2-core machine)
//! target/release/benchkite-bench --quick --only efficiency,latency
//! ```
//!
//! Needs the e2e cluster (`BENCHKITE_E2E_DIR`, default `target/e2e`) and the controller
//! binary (`BENCHKITE_BIN`, default `target/release/benchkite`).

mod efficiency;
mod fleet;
mod graphql;
mod latency;
mod manifests;
mod report;
mod rig;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "benchkite-bench", about = "benchkite's benchmarks against same-run baselines")]
struct Args {
    /// Scaled-down sizes (CI): minutes instead of half an hour.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (default all): efficiency, graphql (6), latency, fleet (3 and 4),
    /// footprint (4 alone), runner.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Output directory (default `<repo>/bench/results`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Scenario 1: KernelJobs (full 1000, quick 60).
    #[arg(long)]
    jobs: Option<usize>,
    /// Scenario 1: scripted job duration in ms (full 30000, quick 5000).
    #[arg(long)]
    job_ms: Option<u64>,
    /// Scenario 1: simulated agents.
    #[arg(long, default_value_t = 64)]
    agents: u32,
    /// Scenario 6 (GraphQL burst): KernelJobs created at once per run (full 2000, quick 200).
    #[arg(long)]
    graphql_jobs: Option<usize>,
    /// Scenario 6: scripted job duration in ms (full 30000, quick 5000).
    #[arg(long)]
    graphql_job_ms: Option<u64>,
    /// Scenario 6: simulated agents per simulator (full 2000, quick 200: as many as jobs, so
    /// agents are never the limit).
    #[arg(long)]
    graphql_agents: Option<u32>,
    /// Scenario 6: the REST-only run is measured at least this many seconds, and until the
    /// GraphQL run finished (full 300, quick 120).
    #[arg(long)]
    graphql_rest_cap_secs: Option<u64>,
    /// Scenarios 3/4: bench GPU nodes of 8 GPUs (full 1000, quick 25).
    #[arg(long)]
    nodes: Option<usize>,
    /// Scenario 3: controller/plain-client rounds (full 1, quick 3). At 1,000 nodes a
    /// round is ~15 min here (two fleets of 8,000 pods brought up and deleted).
    #[arg(long)]
    fleet_repeats: Option<usize>,
    /// Scenario 4: KernelJobs of 64 KiB sources (full 10000, quick 300).
    #[arg(long)]
    footprint_jobs: Option<usize>,
    /// Scenario 2: steady rate, jobs per second (full 20, quick 5).
    #[arg(long)]
    rate: Option<f64>,
    /// Scenario 2: seconds at the steady rate (full 30, quick 10).
    #[arg(long)]
    steady_secs: Option<f64>,
    /// Scenario 2: burst size (full 500, quick 100).
    #[arg(long)]
    burst: Option<usize>,
    /// Scenario 5: rounds of the runner overhead example (full 30, quick 10).
    #[arg(long)]
    runner_rounds: Option<usize>,
    /// Start from the results in this JSON file (an earlier run of the same mode) and
    /// replace only the scenarios run now: re-runs one scenario of a full set. The report
    /// names the scenarios re-run and when.
    #[arg(long)]
    merge_into: Option<PathBuf>,
    /// The cluster is thrown away after the run (`make bench` deletes it): the last
    /// fleet/footprint round leaves its KernelJobs, pods and nodes for that instead of
    /// deleting 10,000s of objects one by one.
    #[arg(long)]
    throwaway_cluster: bool,
}

impl Args {
    fn wants(&self, s: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == s)
    }
    fn pick<T: Copy>(&self, v: Option<T>, full: T, quick: T) -> T {
        v.unwrap_or(if self.quick { quick } else { full })
    }
}

fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_default();
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(benchkite_e2e::repo_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": mem_kib as f64 / 1048576.0,
        "load_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "git": git,
    })
}

/// Scenario 5: the runner overhead example (built by the Makefile), its table verbatim.
fn runner_overhead(rounds: usize) -> Result<Value> {
    let root = benchkite_e2e::repo_root();
    // The example of the same profile as this binary (target/<profile>/examples).
    let bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("examples/runner_overhead"))
        .context("no directory for the runner_overhead example")?;
    let out =
        std::process::Command::new(&bin).arg(rounds.to_string()).current_dir(&root).output().with_context(|| {
            format!("running {} (cargo build [--release] --example runner_overhead)", bin.display())
        })?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        anyhow::bail!("runner_overhead failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    // "runner overhead X ms vs the floor of a Python runner Y ms"
    let (overhead, floor) = text
        .lines()
        .find_map(|l| l.strip_prefix("runner overhead "))
        .map(|r| {
            let nums: Vec<f64> = r.split_whitespace().filter_map(|w| w.parse::<f64>().ok()).collect();
            (nums.first().copied(), nums.get(1).copied())
        })
        .unwrap_or((None, None));
    Ok(json!({"rounds": rounds, "overhead_ms": overhead, "python_floor_ms": floor, "output": text}))
}

/// Writes `latest.*` and `<mode>.*` (after every scenario, so a later failure keeps what
/// was measured).
fn save(args: &Args, results: &Value) -> Result<String> {
    let out = args.out.clone().unwrap_or_else(|| benchkite_e2e::repo_root().join("bench/results"));
    std::fs::create_dir_all(&out)?;
    let md = report::markdown(results);
    let json_text = serde_json::to_string_pretty(results)?;
    let mode = if args.quick { "quick" } else { "full" };
    for name in ["latest", mode] {
        std::fs::write(out.join(format!("{name}.json")), &json_text)?;
        std::fs::write(out.join(format!("{name}.md")), &md)?;
    }
    Ok(md)
}

/// Records a scenario's outcome; a failed one becomes `{"error": …}` and the run goes on.
fn record(results: &mut Value, args: &Args, name: &str, outcome: Result<Vec<(String, Value)>>, secs: f64) {
    match outcome {
        Ok(parts) => {
            for (k, v) in parts {
                results["scenarios"][k] = v;
            }
        }
        Err(e) => {
            eprintln!("bench: scenario {name} failed: {e:#}");
            results["scenarios"][format!("{name}_error")] = json!(format!("{e:#}"));
        }
    }
    results["timings_secs"][name] = json!(secs);
    if let Err(e) = save(args, results) {
        eprintln!("bench: could not write results: {e:#}");
    }
}

async fn run(args: &Args) -> Result<Value> {
    let started = Instant::now();
    let mut results = json!({
        "mode": if args.quick { "quick" } else { "full" },
        "date": jiff::Timestamp::now().to_string(),
        "machine": machine(),
        "controller_binary": benchkite_e2e::operator::binary()?.display().to_string(),
        "cluster": benchkite_e2e::e2e_dir().display().to_string(),
        "scenarios": {},
        "timings_secs": {},
    });
    if let Some(path) = &args.merge_into {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let earlier: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if earlier["mode"] != results["mode"] {
            anyhow::bail!("{} holds a {} run; this one is {}", path.display(), earlier["mode"], results["mode"]);
        }
        let rerun = json!({
            "date": results["date"], "only": args.only,
            "controller_binary": results["controller_binary"], "git": results["machine"]["git"],
        });
        results = earlier;
        let reruns = results["reruns"].as_array().cloned().unwrap_or_default();
        results["reruns"] = json!(reruns.into_iter().chain(std::iter::once(rerun)).collect::<Vec<_>>());
        // A scenario that failed before and runs now loses its error.
        if let Some(sc) = results["scenarios"].as_object_mut() {
            sc.retain(|k, _| !(k.ends_with("_error") && args.only.iter().any(|o| k.starts_with(o.as_str()))));
        }
    }
    let client = benchkite_e2e::client().await?;
    benchkite_e2e::operator::install_crds(&client).await?;

    if args.wants("efficiency") {
        let t = Instant::now();
        let p = efficiency::Params {
            jobs: args.pick(args.jobs, 1000, 60),
            duration_ms: args.pick(args.job_ms, 30_000, 5_000),
            agents: args.agents,
        };
        eprintln!(
            "bench: 1. efficiency: {p:?} (webhooks, polling only and the baseline at once, one simulator each; \
             benchkite's under Buildkite's limits, {}/org and {}/user per minute; the baseline's unconstrained, counting)",
            efficiency::ORG_LIMIT_PER_MIN,
            efficiency::USER_LIMIT_PER_MIN
        );
        let outcome = async {
            let (w, pl, b) = tokio::join!(
                efficiency::controller_run(&client, p, true, "eff-webhooks"),
                efficiency::controller_run(&client, p, false, "eff-polling"),
                efficiency::baseline_run(p),
            );
            let (w, pl, b) = (w?, pl?, b?);
            let secs = p.duration_ms as f64 / 1e3;
            let limit = efficiency::TOKEN_LIMIT_PER_MIN;
            let (cw, cb) = efficiency::sustainable(&w, &b, secs, limit);
            let (cp, _) = efficiency::sustainable(&pl, &b, secs, limit);
            let (cw60, cb60) = efficiency::sustainable(&w, &b, 60.0, limit);
            let (cp60, _) = efficiency::sustainable(&pl, &b, 60.0, limit);
            let b60 = efficiency::baseline_requests_per_job(&b, 60.0);
            let per_job = |v: &Value| v["requests_per_job"].as_f64().unwrap_or(f64::NAN);
            // A run whose jobs did not all finish measured nothing it claims: the tables are
            // kept, and the scenario counts as failed.
            let incomplete =
                efficiency::incomplete(&[("webhooks", &w), ("polling only", &pl), ("baseline", &b)], p.jobs);
            let mut parts = incomplete.map(|e| vec![("efficiency_error".to_string(), json!(e))]).unwrap_or_default();
            parts.push((
                "efficiency".to_string(),
                json!({
                    "jobs": p.jobs, "job_secs": secs, "agents": p.agents,
                    "org_limit_per_min": efficiency::ORG_LIMIT_PER_MIN,
                    "user_limit_per_min": efficiency::USER_LIMIT_PER_MIN,
                    "limit_per_min": limit,
                    "webhooks": w, "polling": pl, "baseline": b,
                    "ratio_baseline_over_webhooks": per_job(&b) / per_job(&w),
                    "ratio_baseline_over_polling": per_job(&b) / per_job(&pl),
                    "sustainable": {
                        "job_secs": secs, "webhooks": cw, "polling": cp, "baseline": cb,
                        "60s": {"webhooks": cw60, "polling": cp60, "baseline": cb60},
                    },
                    "baseline_requests_per_60s_job": b60,
                    "ratio_60s_baseline_over_webhooks": b60 / per_job(&w),
                    "ratio_60s_baseline_over_polling": b60 / per_job(&pl),
                }),
            ));
            Ok(parts)
        }
        .await;
        record(&mut results, args, "efficiency", outcome, t.elapsed().as_secs_f64());
    }
    if args.wants("graphql") {
        let t = Instant::now();
        let p = graphql::Params {
            jobs: args.pick(args.graphql_jobs, 2000, 200),
            duration_ms: args.pick(args.graphql_job_ms, 30_000, 5_000),
            agents: args.pick(args.graphql_agents, 2000, 200),
            rest_cap: std::time::Duration::from_secs(args.pick(args.graphql_rest_cap_secs, 300, 120)),
        };
        eprintln!(
            "bench: 6. GraphQL burst: {p:?} (GraphQL and REST-only controllers at once, one simulator each, \
             Buildkite's REST limits and GraphQL budget)"
        );
        let outcome = graphql::run(&client, p).await.map(|v| {
            let mut parts =
                graphql::failure(&v).map(|e| vec![("graphql_error".to_string(), json!(e))]).unwrap_or_default();
            parts.push(("graphql".to_string(), v));
            parts
        });
        record(&mut results, args, "graphql", outcome, t.elapsed().as_secs_f64());
    }
    if args.wants("latency") {
        let t = Instant::now();
        let p = latency::Params {
            rate_per_sec: args.pick(args.rate, 20.0, 5.0),
            steady_secs: args.pick(args.steady_secs, 30.0, 10.0),
            burst: args.pick(args.burst, 500, 100),
            agents: 256,
            duration_ms: 1000,
        };
        eprintln!("bench: 2. latency: {p:?}");
        let outcome = latency::run(&client, p).await.map(|v| vec![("latency".to_string(), v)]);
        record(&mut results, args, "latency", outcome, t.elapsed().as_secs_f64());
    }
    let (want_conv, want_foot) = (args.wants("fleet"), args.wants("fleet") || args.wants("footprint"));
    if want_conv || want_foot {
        let t = Instant::now();
        let p = fleet::Params {
            nodes: args.pick(args.nodes, 1000, 25),
            repeats: args.pick(args.fleet_repeats, 1, 3),
            kernel_jobs: args.pick(args.footprint_jobs, 10_000, 300),
            source_bytes: 64 * 1024,
            throwaway: args.throwaway_cluster,
        };
        eprintln!("bench: 3./4. fleet convergence and footprint: {p:?}");
        match fleet::run(&client, p, want_conv).await {
            Ok((conv, foot)) => {
                let secs = t.elapsed().as_secs_f64();
                if let Some(conv) = conv {
                    record(&mut results, args, "fleet", conv.map(|v| vec![("fleet".to_string(), v)]), secs);
                }
                record(&mut results, args, "footprint", foot.map(|v| vec![("footprint".to_string(), v)]), secs);
                // One timing for both (they share the bench nodes).
                if let Some(t) = results["timings_secs"].as_object_mut() {
                    t.remove("fleet");
                    t.remove("footprint");
                    t.insert("fleet_and_footprint".into(), json!(secs));
                }
            }
            Err(e) => record(&mut results, args, "fleet_and_footprint", Err(e), t.elapsed().as_secs_f64()),
        }
    }
    if args.wants("runner") {
        let t = Instant::now();
        let rounds = args.pick(args.runner_rounds, 30, 10);
        eprintln!("bench: 5. runner overhead: {rounds} rounds");
        let outcome = runner_overhead(rounds).map(|v| vec![("runner".to_string(), v)]);
        record(&mut results, args, "runner", outcome, t.elapsed().as_secs_f64());
    }
    let key = if args.merge_into.is_some() { "rerun" } else { "total" };
    results["timings_secs"][key] = json!(started.elapsed().as_secs_f64());
    save(args, &results)?;
    Ok(results)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The release controller unless told otherwise; set before any thread exists.
    if std::env::var_os("BENCHKITE_E2E_WAIT_SECS").is_none() {
        // Deleting namespaces of thousands of KernelJobs takes longer than the tests' 60 s.
        // SAFETY: single-threaded here (the runtime is built below).
        unsafe { std::env::set_var("BENCHKITE_E2E_WAIT_SECS", "600") };
    }
    if std::env::var_os("BENCHKITE_BIN").is_none_or(|v| v.is_empty()) {
        let release = benchkite_e2e::repo_root().join("target/release/benchkite");
        // SAFETY: single-threaded here (the runtime is built below).
        unsafe { std::env::set_var("BENCHKITE_BIN", release) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = runtime.block_on(run(&args))?;
    println!("{}", report::markdown(&results));
    let failed: Vec<&String> = results["scenarios"]
        .as_object()
        .map(|m| m.keys().filter(|k| k.ends_with("_error")).collect())
        .unwrap_or_default();
    if !failed.is_empty() {
        anyhow::bail!("scenarios failed: {failed:?} (the others' results are written)");
    }
    Ok(())
}
