//! The Buildkite client against the Buildkite simulator (e2e/buildkite-sim) run as a
//! process. Opt-in, because it needs the simulator binary:
//!
//! ```text
//! cargo build -p buildkite-sim
//! cargo test --test buildkite_sim -- --ignored
//! ```
//!
//! `BUILDKITE_SIM_BIN` overrides the binary's path (default `target/debug/buildkite-sim`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benchkite::buildkite::{BuildQuery, CancelOutcome, Client, Config, NewBuild, Priority, QueueCreated, Secret};
use serde_json::Value;

struct Sim {
    child: Child,
    info: Value,
    dir: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const RESULT_JSON: &str = r#"{"success": true, "error": "", "runs": {}}"#;

fn start_sim(extra: &[&str]) -> Sim {
    let bin = std::env::var_os("BUILDKITE_SIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/buildkite-sim"));
    assert!(bin.exists(), "{} missing: run `cargo build -p buildkite-sim` first", bin.display());
    let dir = std::env::temp_dir().join(format!("benchkite-bk-sim-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready.json");
    let result = dir.join("result.json");
    std::fs::write(&result, RESULT_JSON).unwrap();
    let child = Command::new(&bin)
        .args(["--executor", "scripted", "--scripted-duration-ms", "200", "--queue", "q1", "--agents", "q1=4"])
        .args(["--step-agents", "queue=q1", "--user-rate-limit", "0"])
        .arg("--scripted-result-json")
        .arg(&result)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let info = loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "simulator did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    Sim { child, info, dir }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos().into()
}

fn client_for(sim: &Sim, rpm: u32, window: Duration) -> Client {
    let s = |k: &str| sim.info[k].as_str().unwrap().to_string();
    let mut cfg = Config::new(s("organization"), Secret::new(s("api_token")));
    cfg.api_url = s("api_url");
    cfg.agent_api_url = s("agent_url");
    cfg.agent_token = Some(Secret::new(s("agent_token")));
    cfg.default_pipeline = Some("kernelbot".into());
    cfg.requests_per_minute = rpm;
    cfg.rate_limit_window = window;
    cfg.reset_margin = Duration::from_millis(200);
    Client::new(cfg).unwrap()
}

async fn sim_get(sim: &Sim, path: &str) -> Value {
    let url = format!("{}{path}", sim.info["sim_url"].as_str().unwrap());
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
#[ignore = "needs the buildkite-sim binary (cargo build -p buildkite-sim)"]
async fn full_cycle_against_the_simulator() {
    let sim = start_sim(&[]);
    let client = client_for(&sim, 180, Duration::from_secs(60));

    let clusters = client.list_clusters().await.unwrap();
    let cluster = clusters.items[0].id.clone();
    assert_eq!(client.create_queue(&cluster, "q1", None).await.unwrap(), QueueCreated::AlreadyExists);
    assert!(matches!(client.create_queue(&cluster, "q2", Some("second")).await.unwrap(), QueueCreated::Created(_)));
    let queues = client.list_queues(&cluster).await.unwrap();
    let q2 = queues.items.iter().find(|q| q.key == "q2").unwrap().id.clone();
    assert!(client.pause_queue_dispatch(&cluster, &q2, Some("test")).await.unwrap().dispatch_paused);
    assert!(!client.resume_queue_dispatch(&cluster, &q2).await.unwrap().dispatch_paused);

    let mut numbers = Vec::new();
    for i in 0..3 {
        let nb = NewBuild {
            commit: "HEAD".into(),
            branch: "main".into(),
            env: [("KERNELBOT_QUEUE".to_string(), "q1".to_string())].into(),
            meta_data: [("benchkite.job".to_string(), format!("ns/kj-{i}")), ("benchkite.run".to_string(), "r".into())]
                .into(),
            ..Default::default()
        };
        let b = client.create_build(None, &nb, Priority::Submit).await.unwrap();
        assert_eq!(b.meta_data["benchkite.job"], format!("ns/kj-{i}"));
        numbers.push(b.number);
    }
    let q = BuildQuery {
        meta_data: vec![("benchkite.job".into(), "ns/kj-1".into())],
        exclude_jobs: true,
        ..Default::default()
    };
    let found = client.list_builds(&q, Priority::Refresh).await.unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].number, numbers[1]);

    // Wait for the builds to finish (one list request per round for all of them).
    let t0 = Instant::now();
    let finished = loop {
        let q = BuildQuery {
            pipeline: Some("kernelbot".into()),
            meta_data: vec![("benchkite.run".into(), "r".into())],
            states: vec!["finished".into()],
            ..Default::default()
        };
        let l = client.list_builds(&q, Priority::Refresh).await.unwrap();
        if l.items.len() == 3 {
            break l.items;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "builds did not finish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(finished.iter().all(|b| b.state.is_terminal() && b.jobs.iter().all(|j| j.exit_status == Some(0))));

    let b = client.get_build(None, numbers[0], false).await.unwrap();
    let job = &b.jobs[0];
    assert!(job.agent.is_some());
    let artifacts = client.list_artifacts(None, b.number).await.unwrap();
    let result = artifacts.items.iter().find(|a| a.path == "result.json").unwrap();
    let per_job = client.list_job_artifacts(None, b.number, &job.id).await.unwrap();
    assert_eq!(per_job.items.len(), artifacts.items.len());
    let bytes = client.download_artifact(result, 1 << 20).await.unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), RESULT_JSON);
    assert!(matches!(
        client.cancel_build(None, b.number, Priority::Cancel).await.unwrap(),
        CancelOutcome::NotCancelable { .. }
    ));
    assert_eq!(client.cancel_build(None, 999_999, Priority::Cancel).await.unwrap(), CancelOutcome::NotFound);

    let agents = client.list_agents().await.unwrap();
    assert!(agents.items.iter().any(|a| a.queue().as_deref() == Some("q1")));
    let (m, hint) = client.queue_metrics("q1").await.unwrap();
    assert_eq!(m.agents_total, 4);
    assert!(hint.is_some());
    let (all, _) = client.all_metrics().await.unwrap();
    assert!(all.queues.contains_key("q1"));

    // The storage host never saw the token; no 429 so far.
    let stats = sim_get(&sim, "/rate_limit").await;
    assert_eq!(stats["stats"]["rejected"], 0, "{stats}");
    assert_eq!(client.stats().throttled, 0);
}

#[tokio::test]
#[ignore = "needs the buildkite-sim binary (cargo build -p buildkite-sim)"]
async fn burst_under_the_simulators_limit_gets_no_429() {
    // 20 per 2 s window at the simulator; our own cap stays at the default 180: the
    // server's lower limit must win from the first answer on.
    let sim = start_sim(&["--rate-limit", "20", "--rate-limit-window-secs", "2"]);
    let client = client_for(&sim, 180, Duration::from_secs(2));
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 10 == 0 {
                let nb = NewBuild { commit: "HEAD".into(), branch: "main".into(), ..Default::default() };
                c.create_build(None, &nb, Priority::Submit).await.map(|_| ())
            } else {
                c.list_builds(
                    &BuildQuery { exclude_jobs: true, per_page: Some(1), max_pages: Some(1), ..Default::default() },
                    Priority::Refresh,
                )
                .await
                .map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = sim_get(&sim, "/rate_limit").await;
    assert_eq!(stats["stats"]["rejected"], 0, "{stats}");
    assert_eq!(stats["stats"]["counted"], 60, "{stats}");
    assert_eq!(client.stats().throttled, 0);
}
