//! Throughput of the simulator: requests/second for create-build (and get-build) at
//! several client concurrencies, client and simulator in one process on this machine.
//! Prints a table; asserts nothing. Run: `cargo run --release -p buildkite-sim --bin
//! buildkite-sim-bench [-- SECONDS_PER_ROW]`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use buildkite_sim::Simulator;
use buildkite_sim::config::{AgentPoolConfig, ExecutorConfig, ScriptedConfig, SimConfig};

#[derive(Clone, Copy)]
enum Op {
    Create,
    Get,
}

async fn run_row(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    op: Op,
    concurrency: usize,
    secs: f64,
) -> (u64, u64, f64, Duration, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..concurrency {
        let (client, url, token) = (client.clone(), url.to_string(), token.to_string());
        let (stop, ok, errors) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let body = r#"{"commit":"HEAD","branch":"main","env":{"KERNELBOT_QUEUE":"default","KERNELBOT_PAYLOAD":"eJyrVgrNS8ksSs1NzM9TslIqSaoEAC4cBaA="},"meta_data":{"run":"bench"}}"#;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let req = match op {
                    Op::Create => client.post(&url).body(body),
                    Op::Get => client.get(format!("{url}/1?exclude_jobs=true")),
                };
                match req.bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(t0.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    let n = ok.load(Ordering::Relaxed);
    (n, errors.load(Ordering::Relaxed), n as f64 / elapsed, pct(0.5), pct(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    println!(
        "buildkite-sim create-build throughput ({} CPUs, {secs:.0} s per row, client in-process)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| scenario | op | concurrency | ok | errors | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|"
    );
    for (scenario, agents) in [("no agents (builds stay scheduled)", 0u32), ("50 agents, 20 ms scripted jobs", 50)] {
        let mut cfg = SimConfig::default();
        // Throughput of the simulator itself, not of a Buildkite client: no rate limits.
        cfg.rate_limit.org_limit = u64::MAX / 2;
        cfg.rate_limit.user_limit = 0;
        // The default pipeline checks out its repository before every job: make it cloneable.
        let repo = cfg.pipelines[0].repository.clone();
        cfg.repositories.insert(repo, buildkite_sim::config::RepositoryVisibility::Public);
        cfg.executor = ExecutorConfig::Scripted(ScriptedConfig { duration_ms: 20, ..ScriptedConfig::default() });
        if agents > 0 {
            cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: agents, ..AgentPoolConfig::default() }];
        }
        let sim = Simulator::start(cfg).await?;
        let url = format!("{}/organizations/{}/pipelines/kernelbot/builds", sim.api_url(), sim.organization());
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
        for (op, name) in [(Op::Create, "create"), (Op::Get, "get")] {
            for c in [1usize, 8, 32, 64] {
                let (n, e, rps, p50, p99) = run_row(&client, &url, &sim.api_token(), op, c, secs).await;
                println!(
                    "| {scenario} | {name} | {c} | {n} | {e} | {rps:.0} | {:.2} | {:.2} |",
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                );
            }
        }
        let stats = sim.stats();
        println!("<!-- {scenario}: builds {}, jobs {} -->", stats["builds_total"], stats["jobs"]);
        sim.shutdown().await;
    }
    Ok(())
}
