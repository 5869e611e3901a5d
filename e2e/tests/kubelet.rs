//! The e2e kubelet (`benchkite_e2e::kubelet`) against the real e2e cluster and an in-process
//! simulator: pods made here (no benchkite controller) on a kwok node of this test.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use benchkite_e2e::kubelet::{Kubelet, KubeletOptions, PodRun};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::sim::{build, job_details, script_jobs, user_pipeline};
use benchkite_e2e::{TestNamespace, client, default_timeout, e2e_dir, repo_root, wait_until};
use buildkite_sim::config::ExecutorConfig;
use buildkite_sim::gpu::GpuProfile;
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

const LABEL: &str = "e2e.benchkite.dev/kubelet";
const CFG_DATA: &str = "hello-from-configmap";
const SECRET_DATA: &str = "s3cr3t-kubelet-e2e";

/// The agent pod `name`: an init container that writes a message (naming its node, slot and
/// simulated GPU) to its termination log and a file into the emptyDir, then exits `init_exit`;
/// an agent container whose env points at the mounted ConfigMap and the emptyDir.
fn agent_pod(name: &str, ns: &str, node: &str, queue: &str, init_exit: i32) -> Result<Pod> {
    let script = format!(
        "echo \"certified $NODE_NAME/$KERNELBOT_GPU_INDEX factor=$SIMGPU_FACTOR\" > \"$BENCHKITE_TERMINATION_LOG\"; \
         echo from-init > \"$SHARED/init.txt\"; exit {init_exit}"
    );
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {LABEL: ns}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Always",
            "initContainers": [{
                "name": "certify",
                "image": "benchkite:e2e",
                "command": ["sh", "-c"],
                "args": [script],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "KERNELBOT_GPU_INDEX", "value": "1"},
                    {"name": "SHARED", "value": "/shared"},
                ],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
            }],
            "containers": [{
                "name": "agent",
                "image": "buildkite/agent:e2e",
                "envFrom": [{"configMapRef": {"name": "agent-cfg"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "BUILDKITE_AGENT_TAGS", "value": format!("queue={queue},slot=1")},
                    {"name": "BUILDKITE_AGENT_TOKEN", "valueFrom": {"secretKeyRef": {"name": "agent-secret", "key": "token"}}},
                    {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "agent-secret", "key": "token"}}},
                    {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                    {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "AGENT_CONFIG", "value": "/etc/agent/agent.cfg"},
                    {"name": "SHARED", "value": "/shared"},
                    {"name": "KERNELBOT_GPU_INDEX", "value": "1"},
                ],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/agent", "readOnly": true},
                    {"name": "shared", "mountPath": "/shared"},
                ],
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "agent-cfg", "items": [{"key": "agent.cfg", "path": "agent.cfg"}]}},
                {"name": "shared", "emptyDir": {}},
            ],
        },
    }))
    .with_context(|| format!("building pod {name} in {ns}"))
}

/// The init container status the API server has for pod `name`, once the kubelet wrote one.
async fn init_status(pods: &Api<Pod>, name: &str) -> Result<Value> {
    wait_until(&format!("the init container status of {name}"), default_timeout(), || async {
        let pod = pods.get(name).await?;
        let statuses = pod.status.and_then(|s| s.init_container_statuses).unwrap_or_default();
        let Some(s) = statuses.into_iter().find(|s| s.name == "certify") else { return Ok(None) };
        let v = serde_json::to_value(&s)?;
        // kwok's own status says "Completed" with no message; ours always has the message key.
        Ok(v["state"]["terminated"].get("message").is_some().then_some(v))
    })
    .await
}

/// Creates a build of `pipeline` and returns its number.
async fn create_build(sim: &SimHandle, pipeline: &str) -> Result<u64> {
    let url = format!("{}/organizations/{}/pipelines/{pipeline}/builds", sim.api_url(), sim.organization());
    let body = json!({"commit": "HEAD", "branch": "main"});
    let resp = reqwest::Client::new().post(&url).bearer_auth(sim.api_token()).json(&body).send().await?;
    ensure!(resp.status() == reqwest::StatusCode::CREATED, "create build: {}", resp.status());
    let created: Value = resp.json().await?;
    created["number"].as_u64().context("build number")
}

/// Runs a build of `pipeline` and returns its one job's log.
async fn run_build(sim: &SimHandle, pipeline: &str) -> Result<String> {
    let number = create_build(sim, pipeline).await?;
    let b = wait_until("the build to finish", default_timeout(), || async {
        Ok(build(sim, pipeline, number).await?.filter(|b| b["state"] == "passed" || b["state"] == "failed"))
    })
    .await?;
    let jobs = script_jobs(&b);
    let id = jobs.first().and_then(|j| j["id"].as_str()).context("the build has no job")?;
    let details = job_details(sim, id).await?;
    ensure!(b["state"] == "passed", "build failed: {details}");
    Ok(details["log"].as_str().unwrap_or_default().to_string())
}

async fn sim_agent(sim: &SimHandle, name: &str) -> Result<Option<Value>> {
    let agents: Vec<Value> = reqwest::get(format!("{}/agents", sim.sim_url())).await?.json().await?;
    Ok(agents.into_iter().rev().find(|a| a["name"] == name))
}

#[tokio::test]
async fn agent_pods_run_their_init_containers_and_become_simulator_agents() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kubelet").await?;
    let node = TestNode::create(&client, &format!("{}-node", ns.name()), ns.name(), "8", "64Gi", 8).await?;
    let queue = "kubelet-q";
    let configmaps: Api<ConfigMap> = ns.api();
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "agent-cfg"}, "data": {"agent.cfg": CFG_DATA, "mode": "fast"}}),
            )?,
        )
        .await?;
    let secrets: Api<Secret> = ns.api();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "agent-secret"}, "stringData": {"token": SECRET_DATA}}),
            )?,
        )
        .await?;

    let command = "echo \"cfgpath=$$AGENT_CONFIG\"; echo \"cfg=$$(cat \"$$AGENT_CONFIG\")\"; \
                   echo \"init=$$(cat \"$$SHARED/init.txt\")\"; echo \"gpu=$$SIMGPU_FACTOR\"; echo \"api=$$API_KEY\"; \
                   echo \"mode=$$CFG_mode\"; echo \"agent-token=$${BUILDKITE_AGENT_TOKEN:-unset}\"; \
                   echo \"optional=$${OPTIONAL-unset}\"; echo \"uid=$$POD_UID\"";
    let mut cfg = SimConfig { executor: ExecutorConfig::command("true"), ..Default::default() };
    cfg.clusters[0].queues.push(queue.into());
    cfg.pipelines.push(user_pipeline("kp", queue, Some(command)));
    // Runs until the test writes `release` into the pod's emptyDir.
    let wait = "while [ ! -e \"$$SHARED/release\" ]; do sleep 0.05; done; echo released";
    cfg.pipelines.push(user_pipeline("slow", queue, Some(wait)));
    let sim = Simulator::start(cfg).await?;

    let scratch = e2e_dir().join(format!("kubelet-{}", ns.name()));
    let _cleanup = RemoveDir(scratch.clone());
    let gpu = GpuProfile { factor: 1.5, ..GpuProfile::default() };
    let kubelet = Kubelet::start(
        client.clone(),
        &sim,
        KubeletOptions {
            namespace: ns.name().to_string(),
            label_selector: format!("{LABEL}={}", ns.name()),
            binary_dir: repo_root().join("target/debug"),
            gpus: [((node.name.clone(), "1".to_string()), gpu)].into(),
            scratch: scratch.clone(),
        },
    )?;

    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &agent_pod("agent-ok", ns.name(), &node.name, queue, 0)?).await?;
    pods.create(&PostParams::default(), &agent_pod("agent-bad", ns.name(), &node.name, queue, 3)?).await?;
    // A pod whose env names a Secret that does not exist is skipped (the kubelet would
    // report CreateContainerConfigError): no init container runs, no agent.
    let mut missing = agent_pod("agent-missing", ns.name(), &node.name, queue, 0)?;
    if let Some(init) = missing.spec.as_mut().and_then(|s| s.init_containers.as_mut()).and_then(|c| c.first_mut()) {
        init.env.get_or_insert_default().push(serde_json::from_value(
            json!({"name": "NOPE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}),
        )?);
    }
    pods.create(&PostParams::default(), &missing).await?;
    let runs = kubelet.wait_started(1, default_timeout()).await?;
    let ok: &PodRun = runs.get("agent-ok").context("agent-ok was not run")?;
    let uid = ok.uid.clone();
    let agent = ok.agent.context("agent-ok has no agent")?;
    let want_message = format!("certified {}/1 factor=1.5\n", node.name);
    ensure!(ok.init.len() == 1 && ok.init[0].exit_code == 0 && ok.init[0].message == want_message, "{ok:?}");

    // The pod's status carries the init container's exit code and termination message.
    let status = init_status(&pods, "agent-ok").await?;
    let t = &status["state"]["terminated"];
    ensure!(t["exitCode"] == 0 && t["reason"] == "Completed" && t["message"] == want_message.as_str(), "{status}");
    ensure!(t["startedAt"].as_str().is_some_and(|s| s.ends_with('Z')), "{status}");

    // The simulator has the agent with the container's tags.
    let a = sim_agent(&sim, "agent-ok").await?.context("no simulator agent agent-ok")?;
    ensure!(a["id"] == agent.to_string() && a["connection_state"] == "connected", "{a}");
    let meta = a["meta_data"].as_array().context("meta_data")?;
    for tag in [format!("queue={queue}"), "slot=1".to_string()] {
        ensure!(meta.iter().any(|m| m == tag.as_str()), "tag {tag} missing: {a}");
    }

    // A job on the queue sees the env (rewritten mount paths), the ConfigMap's data, the
    // emptyDir file the init container wrote, the Secret and the slot's GPU.
    let log = run_build(&sim, "kp").await?;
    let cfg_path = scratch.join("agent-ok/cfg/agent.cfg");
    for line in [
        format!("cfgpath={}", cfg_path.display()),
        format!("cfg={CFG_DATA}"),
        "init=from-init".into(),
        "gpu=1.5".into(),
        format!("api={SECRET_DATA}"),
        "mode=fast".into(),
        "agent-token=unset".into(),
        "optional=unset".into(),
        format!("uid={uid}"),
    ] {
        ensure!(log.lines().any(|l| l == line), "the job log lacks {line:?}:\n{log}");
    }
    ensure!(std::fs::read_to_string(&cfg_path)? == CFG_DATA, "{}", cfg_path.display());

    // The pod whose init container exits 3 gets its status and no agent.
    let status = init_status(&pods, "agent-bad").await?;
    let t = &status["state"]["terminated"];
    ensure!(t["exitCode"] == 3 && t["reason"] == "Error", "{status}");
    let bad = kubelet.agents().get("agent-bad").cloned().context("agent-bad was not run")?;
    ensure!(bad.agent.is_none() && bad.init.first().map(|i| i.exit_code) == Some(3), "{bad:?}");
    ensure!(sim_agent(&sim, "agent-bad").await?.is_none(), "agent-bad has a simulator agent");

    let skipped = wait_until("agent-missing to be skipped", default_timeout(), || async {
        Ok(kubelet.agents().get("agent-missing").filter(|r| r.error.is_some()).cloned())
    })
    .await?;
    ensure!(
        skipped.agent.is_none()
            && skipped.init.is_empty()
            && skipped.error.as_deref().is_some_and(|e| e.contains("Secret nope")),
        "{skipped:?}"
    );
    ensure!(sim_agent(&sim, "agent-missing").await?.is_none(), "agent-missing has a simulator agent");

    let ours = kubelet.agents();
    eprintln!(
        "status writes/overwritten by kwok: {:?}",
        ours.iter().map(|(k, r)| (k.clone(), (r.status_writes, r.status_overwritten))).collect::<BTreeMap<_, _>>()
    );

    // Deleting the pod stops its agent gracefully: the job it runs finishes first. A pod
    // recreated with the same name is a new pod.
    let release = scratch.join("agent-ok/shared/release");
    let number = create_build(&sim, "slow").await?;
    wait_until("the slow job to start", default_timeout(), || async {
        Ok(build(&sim, "slow", number).await?.filter(|b| b["state"] == "running").map(|_| ()))
    })
    .await?;
    pods.delete("agent-ok", &DeleteParams::default()).await?;
    let control = sim.agent_control();
    wait_until("the deleted pod's agent to be stopping", default_timeout(), || async {
        Ok((control.agent_state(agent).as_deref() == Some("stopping")).then_some(()))
    })
    .await?;
    std::fs::write(&release, "go").with_context(|| format!("writing {}", release.display()))?;
    let b = wait_until("the slow build to finish", default_timeout(), || async {
        Ok(build(&sim, "slow", number).await?.filter(|b| b["state"] == "passed" || b["state"] == "failed"))
    })
    .await?;
    ensure!(b["state"] == "passed", "the running job did not finish normally: {b}");
    wait_until("the deleted pod's agent to stop", default_timeout(), || async {
        Ok((control.agent_state(agent).as_deref() == Some("stopped")).then_some(()))
    })
    .await?;
    wait_until("agent-ok to be gone", default_timeout(), || async {
        Ok(pods.get_opt("agent-ok").await?.is_none().then_some(()))
    })
    .await?;
    pods.create(&PostParams::default(), &agent_pod("agent-ok", ns.name(), &node.name, queue, 0)?).await?;
    let again = wait_until("the recreated pod's agent", default_timeout(), || async {
        Ok(kubelet.agents().get("agent-ok").filter(|r| r.uid != uid && r.agent.is_some()).cloned())
    })
    .await?;
    ensure!(again.agent != Some(agent), "{again:?}");

    kubelet.stop().await;
    ensure!(control.agent_state(again.agent.context("agent")?).as_deref() != Some("connected"), "not removed");
    sim.shutdown().await;
    drop(node);
    ns.delete().await
}

/// Removes a directory when dropped (also when the test fails).
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
