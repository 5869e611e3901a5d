//! What a real agent does around the command: the checkout, exec limits on the job env,
//! automatic retries inside a build, killed processes, job expiry, artifact states.

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::time::{Duration, Instant};

use buildkite_sim::config::{
    AgentPoolConfig, CheckoutConfig, ExecutorConfig, PipelineConfig, RepositoryVisibility, ScriptedConfig, SimConfig,
    StepConfig,
};
use common::{T, public_default_repo, queue_pipeline, scripted};
use serde_json::{Value, json};

fn command_cfg(command: &str) -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.executor = ExecutorConfig::Command {
        command: command.into(),
        shell: vec!["sh".into(), "-c".into()],
        env: Default::default(),
        cancel_grace_secs: 0.3,
        max_log_bytes: 1 << 20,
        meta_data_file: false,
        agent_binary: Some(env!("CARGO_BIN_EXE_buildkite-agent").into()),
    };
    cfg.rate_limit.org_limit = 100_000;
    public_default_repo(&mut cfg);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 2, ..Default::default() }];
    cfg
}

async fn job_of(t: &T, b: &Value, i: usize) -> Value {
    let id = b["jobs"][i]["id"].as_str().unwrap();
    let (s, j) = t.sim_json(reqwest::Method::GET, &format!("/jobs/{id}"), None).await;
    assert_eq!(s, 200);
    j
}

#[tokio::test]
async fn checkout_before_every_command() {
    let mut cfg = SimConfig::default();
    cfg.executor = ExecutorConfig::Scripted(ScriptedConfig { duration_ms: 10, ..ScriptedConfig::default() });
    cfg.rate_limit.org_limit = 100_000;
    cfg.clusters[0].queues.push("skip-agents".into());
    cfg.agents = vec![
        AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() },
        AgentPoolConfig {
            queue: "skip-agents".into(),
            count: 1,
            env: [("BUILDKITE_SKIP_CHECKOUT".to_string(), "true".to_string())].into(),
            ..Default::default()
        },
    ];
    let public = "https://github.com/benchkite/public.git";
    cfg.repositories.insert(public.into(), RepositoryVisibility::Public);
    cfg.pipelines.push(PipelineConfig {
        slug: "public".into(),
        repository: public.into(),
        ..queue_pipeline("x", "default")
    });
    cfg.pipelines.push(PipelineConfig {
        slug: "skipping".into(),
        steps: vec![StepConfig { checkout: Some(CheckoutConfig { skip: true }), ..StepConfig::default() }],
        ..PipelineConfig::default()
    });
    cfg.pipelines.push(queue_pipeline("agent-skips", "skip-agents"));
    let t = T::start(cfg).await;

    // the default pipeline's repository is not listed: private, no key → git's failure
    t.create_build(json!({})).await;
    let b = t.wait_build("kernelbot", 1, "failed", 5.0).await;
    let job = &b["jobs"][0];
    assert_eq!((job["state"].as_str(), job["exit_status"].as_i64()), (Some("failed"), Some(128)));
    assert!(job["signal"].is_null() && job["signal_reason"].is_null());
    let j = job_of(&t, &b, 0).await;
    assert_eq!(j["checkout"], "failed");
    assert!(j["log"].as_str().unwrap().contains("Permission denied (publickey)"), "{}", j["log"]);
    // build env cannot skip it (the simulated agents use the strict checkout-override mode)
    t.create_build(json!({"BUILDKITE_SKIP_CHECKOUT": "true"})).await;
    assert_eq!(t.wait_build("kernelbot", 2, "failed", 5.0).await["jobs"][0]["exit_status"], 128);

    // a public repository is cloned (and counted)
    t.create_build_in("public", "main", json!({})).await;
    let b = t.wait_build("public", 1, "passed", 5.0).await;
    assert_eq!(job_of(&t, &b, 0).await["checkout"], "cloned");
    // `checkout: {skip: true}` on the step, or the agent's BUILDKITE_SKIP_CHECKOUT
    t.create_build_in("skipping", "main", json!({})).await;
    let b = t.wait_build("skipping", 1, "passed", 5.0).await;
    assert_eq!(job_of(&t, &b, 0).await["checkout"], "skipped");
    assert_eq!(job_of(&t, &b, 0).await["step_env"], json!({}));
    t.create_build_in("agent-skips", "main", json!({})).await;
    let b = t.wait_build("agent-skips", 1, "passed", 5.0).await;
    assert_eq!(job_of(&t, &b, 0).await["checkout"], "skipped");

    let s = t.sim.job_stats();
    assert_eq!((s.checkouts, s.checkout_failures, s.checkouts_skipped), (1, 2, 2));
    let stats = t.sim.stats();
    assert_eq!(stats["jobs"]["checkouts"], 1);
    t.sim.shutdown().await;
}

/// One executor kind: a single env string over MAX_ARG_STRLEN, and the total over ARG_MAX,
/// end the job with -1/process_run_error before the command runs; 100,000-byte parts pass.
async fn exec_limits(cfg: SimConfig, ran: &str) {
    let t = T::start(cfg).await;
    let parts: serde_json::Map<String, Value> =
        (0..10).map(|i| (format!("KERNELBOT_PAYLOAD_{i}"), json!("p".repeat(100_000)))).collect();
    // 1. ten 100,000-byte variables (1 MB in all): fine
    let mut env = parts.clone();
    env.insert("BUILDKITE_SIM_RESULT_JSON".into(), json!("{}"));
    t.create_build(Value::Object(env.clone())).await;
    let b = t.wait_build("kernelbot", 1, "passed", 10.0).await;
    assert_eq!(b["meta_data"][ran], "1", "{b}");

    // 2. one string over 131072 bytes ("BIG=" + value + NUL)
    t.create_build(json!({"BIG": "x".repeat(131_068), "BUILDKITE_SIM_RESULT_JSON": "{}"})).await;
    let b = t.wait_build("kernelbot", 2, "failed", 10.0).await;
    let job = &b["jobs"][0];
    assert_eq!(job["exit_status"], -1);
    assert_eq!(job["signal_reason"], "process_run_error");
    assert!(job["signal"].is_null());
    assert!(b["meta_data"].get(ran).is_none(), "the command never ran");
    let log = job_of(&t, &b, 0).await["log"].as_str().unwrap().to_string();
    assert!(log.contains("argument list too long") && log.contains("BIG") && !log.contains("xxxx"), "{log}");
    // one byte less is accepted
    t.create_build(json!({"BIG": "x".repeat(131_067), "BUILDKITE_SIM_RESULT_JSON": "{}"})).await;
    t.wait_build("kernelbot", 3, "passed", 10.0).await;

    // 3. the total over ARG_MAX (here set to 600,000 bytes)
    let (s, _) = t.sim_json(reqwest::Method::PUT, "/settings", Some(json!({"exec_arg_max": 600_000}))).await;
    assert_eq!(s, 200);
    t.create_build(Value::Object(env)).await;
    let b = t.wait_build("kernelbot", 4, "failed", 10.0).await;
    assert_eq!(b["jobs"][0]["signal_reason"], "process_run_error");
    assert!(job_of(&t, &b, 0).await["log"].as_str().unwrap().contains("ARG_MAX"));
    let arts: Value = t.get(&format!("{}/4/artifacts", t.builds_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(arts.as_array().unwrap().len(), 0);
    assert_eq!(t.sim.job_stats().exec_env_errors, 2);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn exec_limits_command_executor() {
    let cmd = "buildkite-agent meta-data set ran 1; echo '{}' > result.json";
    exec_limits(command_cfg(cmd), "ran").await;
}

#[tokio::test]
async fn exec_limits_scripted_executor() {
    let mut cfg = scripted(10);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    if let ExecutorConfig::Scripted(s) = &mut cfg.executor {
        s.meta_data.insert("scripted_ran".into(), "1".into());
    }
    exec_limits(cfg, "scripted_ran").await;
}

#[tokio::test]
async fn automatic_retries_inside_a_build() {
    let mut cfg = command_cfg("buildkite-agent meta-data set try \"$BUILDKITE_RETRY_COUNT\"; sleep ${SLEEP:-0}");
    // benchkite's rules: retry an agent loss / agent stop, nothing else
    let retry: serde_yaml::Value = serde_yaml::from_str(
        "automatic: [{exit_status: -1, signal_reason: none, limit: 2}, {exit_status: -1, signal_reason: agent_stop, limit: 2}]",
    )
    .unwrap();
    cfg.pipelines[0].steps[0].retry = Some(retry);
    let t = T::start(cfg).await;

    // a lost agent, then success: the first job is retried, the build follows the retry
    let (s, _) =
        t.sim_json(reqwest::Method::POST, "/infra_failures", Some(json!({"count": 1, "failure": "agent_lost"}))).await;
    assert_eq!(s, 200);
    t.create_build(json!({"SLEEP": "0"})).await;
    let all = t.wait_build("kernelbot", 1, "passed", 10.0).await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2);
    let (first, second) = (&all["jobs"][0], &all["jobs"][1]);
    assert_eq!(first["retried"], true);
    assert_eq!(first["retried_in_job_id"], second["id"]);
    assert_eq!(first["exit_status"], -1);
    assert!(first["signal"].is_null() && first["signal_reason"].is_null());
    assert_eq!(second["retried"], false);
    assert_eq!(second["retry_type"], "automatic");
    assert_eq!(second["retry_source"]["job_id"], first["id"]);
    assert_eq!(all["meta_data"]["try"], "1", "BUILDKITE_RETRY_COUNT of the retry");
    // the REST build and lists show the latest try unless include_retried_jobs=true
    let b = t.build(1).await;
    assert_eq!(b["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(b["jobs"][0]["id"], second["id"]);
    assert_eq!(b["job_state_counts"], json!({"total": 1, "states": {"passed": 1}}));
    let b: Value =
        t.get(&format!("{}/1?include_retried_jobs=true", t.builds_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(b["jobs"].as_array().unwrap().len(), 2);
    let l: Value = t.get(&t.builds_url()).send().await.unwrap().json().await.unwrap();
    assert_eq!(l[0]["jobs"].as_array().unwrap().len(), 1);
    let l: Value =
        t.get(&format!("{}?include_retried_jobs=true", t.builds_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(l[0]["jobs"].as_array().unwrap().len(), 2);

    // the limit: 1 try + 2 retries, then the build fails
    let (s, _) =
        t.sim_json(reqwest::Method::POST, "/infra_failures", Some(json!({"count": 5, "failure": "agent_stop"}))).await;
    assert_eq!(s, 200);
    t.create_build(json!({"SLEEP": "0"})).await;
    let b = t.wait_build("kernelbot", 2, "failed", 10.0).await;
    let jobs = b["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["signal_reason"] == "agent_stop"));
    assert_eq!(jobs.iter().filter(|j| j["retried"] == true).count(), 2);
    t.sim_json(reqwest::Method::DELETE, "/infra_failures", None).await;

    // a step timeout (signal_reason cancel) and an ordinary failure are not retried by them
    t.create_build(json!({"SLEEP": "30", "BUILDKITE_SIM_TIMEOUT_SECS": "0.3"})).await;
    let b = t.wait_build("kernelbot", 3, "failed", 10.0).await;
    assert_eq!(b["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(b["jobs"][0]["state"], "timed_out");
    t.create_build(json!({"SLEEP": "nonsense"})).await;
    let b = t.wait_build("kernelbot", 4, "failed", 10.0).await;
    assert_eq!(b["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(t.sim.job_stats().retried, 3);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn killed_processes_and_job_states() {
    let mut cfg = command_cfg("if [ -n \"$IGNORE_TERM\" ]; then trap '' TERM; fi; sleep 30");
    cfg.pipelines.push(queue_pipeline("nowhere", "nowhere"));
    let t = T::start(cfg).await;
    // a step timeout on a process that ignores SIGTERM: SIGKILL after the grace period
    t.create_build(json!({"IGNORE_TERM": "1", "BUILDKITE_SIM_TIMEOUT_SECS": "0.3"})).await;
    let b = t.wait_build("kernelbot", 1, "failed", 10.0).await;
    let job = &b["jobs"][0];
    assert_eq!(job["state"], "timed_out");
    assert_eq!(job["exit_status"], -1);
    assert_eq!(job["signal"], "SIGKILL");
    assert_eq!(job["signal_reason"], "cancel");
    // a cancel: SIGTERM ends it
    t.create_build(json!({})).await;
    t.wait_build("kernelbot", 2, "running", 10.0).await;
    assert_eq!(t.put(&format!("{}/2/cancel", t.builds_url())).send().await.unwrap().status(), 200);
    let b = t.wait_build("kernelbot", 2, "canceled", 10.0).await;
    assert_eq!((b["jobs"][0]["exit_status"].as_i64(), b["jobs"][0]["signal"].as_str()), (Some(-1), Some("SIGTERM")));
    assert_eq!(b["jobs"][0]["signal_reason"], "cancel");

    // `limited`, then back to `scheduled`, forced from /_sim; `broken` leaves the build passed
    t.create_build_in("nowhere", "main", json!({})).await;
    let job = t.sim_build("nowhere", 1).await["jobs"][0]["id"].as_str().unwrap().to_string();
    for state in ["limited", "scheduled"] {
        let (s, v) =
            t.sim_json(reqwest::Method::POST, &format!("/jobs/{job}/state"), Some(json!({"state": state}))).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(t.sim_build("nowhere", 1).await["jobs"][0]["state"], state);
    }
    let (s, _) =
        t.sim_json(reqwest::Method::POST, &format!("/jobs/{job}/state"), Some(json!({"state": "broken"}))).await;
    assert_eq!(s, 200);
    assert_eq!(t.sim_build("nowhere", 1).await["state"], "passed");

    // expiry: a job nobody picks up within job_expiry_secs is `expired`, its build fails
    let (s, _) = t.sim_json(reqwest::Method::PUT, "/settings", Some(json!({"job_expiry_secs": 0.3}))).await;
    assert_eq!(s, 200);
    t.create_build_in("nowhere", "main", json!({})).await;
    let b = t.wait_build("nowhere", 2, "failed", 10.0).await;
    assert_eq!(b["jobs"][0]["state"], "expired");
    assert!(b["jobs"][0]["expired_at"].is_string());
    assert_eq!(t.sim.job_stats().expired, 1);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn artifact_states_and_retention() {
    let mut cfg = scripted(10);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    if let ExecutorConfig::Scripted(s) = &mut cfg.executor {
        s.result_json = Some("{\"ok\":true}".into());
    }
    let t = T::start(cfg).await;
    let list = |n: u64, q: &str| {
        let req = t.get(&format!("{}/{n}/artifacts{q}", t.builds_url()));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let download_status = |a: &Value| {
        let req = t.get(a["download_url"].as_str().unwrap());
        let http = t.http.clone();
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 302, "the API redirects whatever the state");
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            http.get(&loc).send().await.unwrap().status().as_u16()
        }
    };
    t.create_build(json!({})).await;
    t.create_build(json!({"BUILDKITE_SIM_ARTIFACT_STATE": "error"})).await;
    t.wait_build("kernelbot", 1, "passed", 5.0).await;
    t.wait_build("kernelbot", 2, "passed", 5.0).await;
    let (_, a1) = list(1, "").await;
    assert_eq!(a1[0]["state"], "finished");
    assert_eq!(download_status(&a1[0]).await, 200);
    let (_, a2) = list(2, "").await;
    assert_eq!(a2[0]["state"], "error", "the build env override");
    assert_eq!(download_status(&a2[0]).await, 404, "never reached the bucket");
    assert_eq!(list(2, "?state=finished").await.1.as_array().unwrap().len(), 0);
    assert_eq!(list(2, "?state=error").await.1.as_array().unwrap().len(), 1);
    assert_eq!(list(2, "?state=bogus").await.0, 422);

    // forced from /_sim: expired
    let id = a1[0]["id"].as_str().unwrap();
    let (s, _) =
        t.sim_json(reqwest::Method::POST, &format!("/artifacts/{id}/state"), Some(json!({"state": "expired"}))).await;
    assert_eq!(s, 200);
    let (_, a1) = list(1, "").await;
    assert_eq!(a1[0]["state"], "expired");
    assert_eq!(download_status(&a1[0]).await, 404);

    // retention: artifacts older than artifact_retention_secs expire
    t.create_build(json!({})).await;
    t.wait_build("kernelbot", 3, "passed", 5.0).await;
    assert_eq!(list(3, "").await.1[0]["state"], "finished");
    let (s, _) = t.sim_json(reqwest::Method::PUT, "/settings", Some(json!({"artifact_retention_secs": 0.2}))).await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, a3) = list(3, "").await;
        if a3[0]["state"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "artifact still {}", a3[0]["state"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.sim.shutdown().await;
}
