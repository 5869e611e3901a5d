//! Job execution: the process executor contract, artifacts through the storage redirect,
//! meta-data, cancel, timeouts, injected infrastructure failures.

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::time::Duration;

use buildkite_sim::config::{AgentPoolConfig, ExecutorConfig, SimConfig};
use common::{T, public_default_repo, queue_pipeline, scripted};
use serde_json::{Value, json};

fn command_cfg(command: &str) -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.executor = ExecutorConfig::Command {
        command: command.into(),
        shell: vec!["sh".into(), "-c".into()],
        env: [("FROM_EXECUTOR".to_string(), "yes".to_string())].into(),
        cancel_grace_secs: 1.0,
        max_log_bytes: 1 << 20,
        // The opt-in meta-data file (the Agent API path: tests/agent_api.rs).
        meta_data_file: true,
        agent_binary: Some(env!("CARGO_BIN_EXE_buildkite-agent").into()),
    };
    cfg.rate_limit.org_limit = 100_000;
    public_default_repo(&mut cfg);
    cfg.clusters[0].queues.push("nvidia-h100".into());
    cfg.agents = vec![AgentPoolConfig {
        queue: "nvidia-h100".into(),
        count: 1,
        tags: [("gpu".to_string(), "h100".to_string())].into(),
        env: [("KERNELBOT_GPU_INDEX".to_string(), "%n".to_string())].into(),
        ..Default::default()
    }];
    cfg.pipelines[0].steps[0].artifact_paths = "result.json;out/*.txt".into();
    cfg.pipelines[0].steps[0].agents = vec!["queue=nvidia-h100".into()];
    cfg.pipelines.push(queue_pipeline("nowhere", "nowhere"));
    cfg
}

const SCRIPT: &str = r#"
set -e
printf '{"success": true, "bytes": "\001\002\377"}' > result.json
mkdir -p out
env | grep -E '^(BUILDKITE_|KERNELBOT_|FROM_EXECUTOR|CI=)' | sort > out/env.txt
echo "score=1.25" >> "$BUILDKITE_SIM_META_DATA_FILE"
printf '%s\n' '{"key":"multi","value":"line1\nline2"}' >> "$BUILDKITE_SIM_META_DATA_FILE"
echo "hello from the job"
exit "${EXIT_WITH:-0}"
"#;

#[tokio::test]
async fn command_executor_artifacts_and_storage() {
    let t = T::start(command_cfg(SCRIPT)).await;
    let b = t
        .create_build(
            json!({"KERNELBOT_QUEUE": "nvidia-h100", "KERNELBOT_PAYLOAD": "eJyrVgrNS8ksSs1NzM9TslIqSaoEAC4cBaA="}),
        )
        .await;
    let b = t.wait_state(b["number"].as_u64().unwrap(), "passed", 15.0).await;
    let job = &b["jobs"][0];
    assert_eq!(job["exit_status"], 0);
    assert_eq!(job["state"], "passed");
    assert_eq!(b["meta_data"]["score"], "1.25");
    assert_eq!(b["meta_data"]["multi"], "line1\nline2");

    // job log (through /_sim: the default token has no read_build_logs scope)
    let (_, j) = t.sim_json(reqwest::Method::GET, &format!("/jobs/{}", job["id"].as_str().unwrap()), None).await;
    assert!(j["log"].as_str().unwrap().contains("hello from the job"));
    assert_eq!(j["checkout"], "cloned");

    // artifacts per build and per job
    let arts: Value = t.get(&format!("{}/1/artifacts", t.builds_url())).send().await.unwrap().json().await.unwrap();
    let arts = arts.as_array().unwrap().clone();
    assert_eq!(arts.len(), 2);
    let result = arts.iter().find(|a| a["path"] == "result.json").unwrap();
    for k in ["id", "job_id", "path", "filename", "state", "file_size", "sha1sum", "url", "download_url"] {
        assert!(!result[k].is_null(), "{k}");
    }
    assert_eq!(result["state"], "finished");
    assert_eq!(result["job_id"], job["id"]);
    let job_arts: Value = t.get(job["artifacts_url"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(job_arts.as_array().unwrap().len(), 2);
    let env_art = arts.iter().find(|a| a["path"] == "out/env.txt").unwrap();
    assert_eq!(env_art["dirname"], "out");
    assert_eq!(env_art["filename"], "env.txt");

    // download: 302 to the storage host, URL also in the body
    let r = t.get(result["download_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["url"], location);
    assert!(location.starts_with(&t.sim.storage_url()));
    // following it WITHOUT the token: byte-identical content
    let r = t.http.get(&location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(&bytes[..], b"{\"success\": true, \"bytes\": \"\x01\x02\xff\"}");
    assert_eq!(result["file_size"], bytes.len());
    assert_eq!(result["sha1sum"], sha1_smol::Sha1::from(&bytes[..]).digest().to_string());
    // forwarding the Authorization header: refused like S3
    let r = t.http.get(&location).bearer_auth(t.sim.api_token()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("<Code>InvalidArgument</Code>") && text.contains("Only one auth mechanism allowed"));
    // a tampered signature is refused
    let tampered = location.replace("Signature=", "Signature=00");
    assert_eq!(t.http.get(&tampered).send().await.unwrap().status(), 403);

    // the env contract
    let r = t.get(env_art["download_url"].as_str().unwrap()).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let env = t.http.get(&loc).send().await.unwrap().text().await.unwrap();
    for needle in [
        "BUILDKITE_BUILD_NUMBER=1",
        &format!("BUILDKITE_BUILD_ID={}", b["id"].as_str().unwrap()),
        &format!("BUILDKITE_JOB_ID={}", job["id"].as_str().unwrap()),
        "BUILDKITE_AGENT_NAME=nvidia-h100-agent-0",
        "BUILDKITE_AGENT_META_DATA_QUEUE=nvidia-h100",
        "BUILDKITE_AGENT_META_DATA_GPU=h100",
        "BUILDKITE_ORGANIZATION_SLUG=benchkite",
        "BUILDKITE_PIPELINE_SLUG=kernelbot",
        "BUILDKITE_BRANCH=main",
        "BUILDKITE_ARTIFACT_PATHS=result.json;out/*.txt",
        "BUILDKITE_RETRY_COUNT=0",
        "KERNELBOT_QUEUE=nvidia-h100",
        "KERNELBOT_PAYLOAD=eJyrVgrNS8ksSs1NzM9TslIqSaoEAC4cBaA=",
        "KERNELBOT_GPU_INDEX=0",
        "FROM_EXECUTOR=yes",
        "CI=true",
    ] {
        assert!(env.lines().any(|l| l == needle), "missing {needle} in\n{env}");
    }

    // expired links are refused
    let (s, _) = t.sim_json(reqwest::Method::PUT, "/settings", Some(json!({"artifact_url_ttl_secs": 1}))).await;
    assert_eq!(s, 200);
    let r = t.get(result["download_url"].as_str().unwrap()).send().await.unwrap();
    let short = r.headers()["location"].to_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = t.http.get(&short).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("Request has expired"));

    // a failing command: failed build, exit status, artifacts still uploaded
    let b = t.create_build(json!({"KERNELBOT_QUEUE": "nvidia-h100", "EXIT_WITH": "3"})).await;
    let b = t.wait_state(b["number"].as_u64().unwrap(), "failed", 15.0).await;
    assert_eq!(b["jobs"][0]["exit_status"], 3);
    assert_eq!(b["jobs"][0]["state"], "failed");
    let arts: Value = t.get(&format!("{}/2/artifacts", t.builds_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(arts.as_array().unwrap().len(), 2);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn cancel_semantics() {
    let t = T::start(command_cfg("trap 'exit 143' TERM; sleep 30 & wait")).await;
    // running: canceling, then canceled; the process is killed
    let b = t.create_build(json!({"KERNELBOT_QUEUE": "nvidia-h100"})).await;
    t.wait_state(1, "running", 10.0).await;
    let r = t.put(&format!("{}/1/cancel", t.builds_url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "canceling");
    assert_eq!(v["jobs"][0]["state"], "canceling");
    let done = t.wait_state(1, "canceled", 10.0).await;
    assert_eq!(done["jobs"][0]["state"], "canceled");
    assert_eq!(done["jobs"][0]["signal_reason"], "cancel");
    assert_eq!(done["jobs"][0]["exit_status"], -1);
    assert_eq!(done["jobs"][0]["signal"], "SIGTERM");
    assert!(!done["finished_at"].is_null());
    assert_eq!(done["id"], b["id"]);
    // finished builds can't be canceled
    let r = t.put(&format!("{}/1/cancel", t.builds_url())).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.json::<Value>().await.unwrap()["message"].as_str().unwrap().contains("canceled"));
    // scheduled (no agent for its queue): canceled at once
    t.create_build_in("nowhere", "main", json!({})).await;
    let r = t.put(&format!("{}/1/cancel", t.builds_url_of("nowhere"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "canceled");
    // the agent is free again
    let (_, agents) = t.sim_json(reqwest::Method::GET, "/agents", None).await;
    assert!(agents[0]["job"].is_null());
    assert_eq!(t.put(&format!("{}/99/cancel", t.builds_url())).send().await.unwrap().status(), 404);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn timeouts_and_infra_failures() {
    let mut cfg = scripted(5_000);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 2, ..Default::default() }];
    cfg.pipelines.push(queue_pipeline("nowhere", "nowhere"));
    let t = T::start(cfg).await;
    // per-step timeout → timed_out job (killed: -1, SIGTERM, signal_reason cancel), failed build
    t.create_build(json!({"BUILDKITE_SIM_TIMEOUT_SECS": "0.2"})).await;
    let b = t.wait_state(1, "failed", 5.0).await;
    assert_eq!(b["jobs"][0]["state"], "timed_out");
    assert_eq!(b["jobs"][0]["exit_status"], -1);
    assert_eq!(b["jobs"][0]["signal"], "SIGTERM");
    assert_eq!(b["jobs"][0]["signal_reason"], "cancel");

    // lost agent: exit -1, agent lost and replaced by the pool
    t.create_build(json!({"BUILDKITE_SIM_INFRA_FAILURE": "agent_lost@50"})).await;
    let b = t.wait_state(2, "failed", 5.0).await;
    assert_eq!(b["jobs"][0]["exit_status"], -1);
    assert!(b["jobs"][0]["signal_reason"].is_null());
    assert!(b["jobs"][0]["signal"].is_null());
    let (_, agents) = t.sim_json(reqwest::Method::GET, "/agents", None).await;
    let states: Vec<&str> =
        agents.as_array().unwrap().iter().map(|a| a["connection_state"].as_str().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| **s == "lost").count(), 1);
    assert_eq!(states.iter().filter(|s| **s == "connected").count(), 2);

    // signal_reason with an exit status
    t.create_build(json!({"BUILDKITE_SIM_INFRA_FAILURE": "process_run_error:255"})).await;
    let b = t.wait_state(3, "failed", 5.0).await;
    assert_eq!(b["jobs"][0]["exit_status"], 255);
    assert_eq!(b["jobs"][0]["signal_reason"], "process_run_error");
    assert!(b["jobs"][0]["signal"].is_null(), "the process never ran: no signal");

    // injected through /_sim for the next job
    let (s, _) =
        t.sim_json(reqwest::Method::POST, "/infra_failures", Some(json!({"count": 1, "failure": "agent_stop"}))).await;
    assert_eq!(s, 200);
    t.create_build(json!({"BUILDKITE_SIM_DURATION_MS": "50"})).await;
    let b = t.wait_state(4, "failed", 5.0).await;
    assert_eq!(b["jobs"][0]["signal_reason"], "agent_stop");
    assert_eq!(b["jobs"][0]["signal"], "SIGTERM");
    // the rule is used up: the next job passes, with scripted overrides
    t.create_build(json!({"BUILDKITE_SIM_DURATION_MS": "20", "BUILDKITE_SIM_RESULT_JSON": "{\"ok\":true}", "BUILDKITE_SIM_META_DATA": "{\"k\":\"v\"}"})).await;
    let b = t.wait_state(5, "passed", 5.0).await;
    assert_eq!(b["meta_data"]["k"], "v");
    let arts: Value = t.get(&format!("{}/5/artifacts", t.builds_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(arts[0]["path"], "result.json");

    // failing a running job from /_sim
    t.create_build(json!({})).await;
    let b = t.wait_state(6, "running", 5.0).await;
    let job = b["jobs"][0]["id"].as_str().unwrap();
    let (s, _) =
        t.sim_json(reqwest::Method::POST, &format!("/jobs/{job}/fail"), Some(json!({"failure": "stack_error"}))).await;
    assert_eq!(s, 200);
    let b = t.wait_state(6, "failed", 5.0).await;
    assert_eq!(b["jobs"][0]["signal_reason"], "stack_error");

    // terminal states operators must handle, forced from /_sim
    t.create_build_in("nowhere", "main", json!({})).await;
    let id = t.sim_build("nowhere", 1).await["id"].as_str().unwrap().to_string();
    let (s, _) =
        t.sim_json(reqwest::Method::POST, &format!("/builds/{id}/state"), Some(json!({"state": "not_run"}))).await;
    assert_eq!(s, 200);
    assert_eq!(t.sim_build("nowhere", 1).await["state"], "not_run");
    let stats = t.sim.job_stats();
    assert_eq!(stats.timed_out, 1);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn external_agent_finishes_jobs() {
    let mut cfg = scripted(10);
    cfg.clusters[0].queues.push("ext".into());
    cfg.pipelines[0].steps[0].agents = vec!["queue=ext".into()];
    let t = T::start(cfg).await;
    let (s, v) = t
        .sim_json(
            reqwest::Method::POST,
            "/agents",
            Some(json!({"name": "pod-a", "tags": ["queue=ext", "gpu=h100"], "mode": "external"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    t.create_build(json!({})).await;
    let b = t.wait_state(1, "running", 5.0).await;
    assert_eq!(b["jobs"][0]["agent"]["name"], "pod-a");
    let job = b["jobs"][0]["id"].as_str().unwrap();
    let (s, _) = t
        .sim_json(
            reqwest::Method::POST,
            &format!("/jobs/{job}/finish"),
            Some(json!({"exit_status": 0, "artifacts": [{"path": "result.json", "content": "{}"}], "meta_data": {"a": "b"}})),
        )
        .await;
    assert_eq!(s, 200);
    let b = t.wait_state(1, "passed", 5.0).await;
    assert_eq!(b["meta_data"]["a"], "b");
    t.sim.shutdown().await;
}
