//! Results that cannot be forged (issue 17), end to end: the real controller (holding the
//! e2e result master key) and the simulator, whose agents run the real `benchkite run` with
//! their queue's result key. A build that writes its own result (what anyone holding the
//! job token can do), claims another job's run id, or leaves an unsigned result never gets a
//! score; the honest job beside it gets its own.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::Phase;
use benchkite_e2e::operator::{Operator, install_crds, wait_ready};
use benchkite_e2e::sim::{user_pipeline, without_result_key};
use benchkite_e2e::{TestNamespace, client, repo_root, wait_until};
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Sets build meta-data as the job can: through the agent (job token), or the simulator's
/// meta-data file when the simulator hands one. (`$$`: a step's command is interpolated
/// when the pipeline is read; the job's shell sees `$`.)
const SET_META_DATA: &str = r#"set_md() { if [ -n "$${BUILDKITE_SIM_META_DATA_FILE:-}" ]; then printf '%s=%s\n' "$$1" "$$2" >> "$$BUILDKITE_SIM_META_DATA_FILE"; else buildkite-agent meta-data set "$$1" "$$2"; fi; }"#;
/// The forged summary: passed, with a winning score.
const FORGED: &str = r#"{"v":1,"success":true,"passed":true,"score":0.000001}"#;
/// A well-formed signature that is not the runner's.
const FORGED_SIG: &str = r#"{"v":1,"meta-data":"00000000000000000000000000000000000000000000000000000000000000aa","result.json":"00000000000000000000000000000000000000000000000000000000000000aa"}"#;
const FORGED_RESULT_JSON: &str = r#"{"success":true,"error":"","system":{"gpu":"forged","device_count":1,"cpu":"","runtime":"CUDA","platform":"","torch":"","hostname":"x"},"runs":{}}"#;

struct Rig {
    sim: SimHandle,
    op: Operator,
    ns: TestNamespace,
    queue: String,
}

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

/// A simulator (agents on one queue running `benchkite run`, plus the pipelines `tune` adds)
/// and a controller for one namespace, polling every second.
async fn rig(prefix: &str, tune: impl FnOnce(&mut SimConfig, &str), extra: &[&str]) -> Result<(Client, Rig)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let queue = format!("q-{}", ns.name());
    let mut cfg = benchkite_e2e::sim::queue_config(&queue, 3)?;
    tune(&mut cfg, &queue);
    let sim = Simulator::start(cfg).await?;
    let http = format!("127.0.0.1:{}", free_port()?);
    let common = benchkite_e2e::sim::kerneljob_args(&sim, ns.name());
    let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--http-addr", &http, "--poll-interval-seconds", "1"]);
    args.extend_from_slice(extra);
    let token = sim.api_token();
    let op = Operator::start_with_env(&format!("forgery-{}", ns.name()), &args, &[("BUILDKITE_API_TOKEN", &token)])?;
    wait_ready(&http).await.with_context(|| op.log_text())?;
    Ok((client, Rig { sim, op, ns, queue }))
}

fn task_file(name: &str) -> Result<String> {
    let path = repo_root().join("tests/tasks/vectoradd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A leaderboard KernelJob of the vectoradd task, with `spec` merged in.
fn job(name: &str, queue: &str, spec: serde_json::Value) -> Result<KernelJob> {
    let sources: BTreeMap<String, String> = [
        ("eval.py".to_string(), task_file("eval.py")?),
        ("reference.py".to_string(), task_file("reference.py")?),
        ("submission.py".to_string(), task_file("submission_ok.py")?),
    ]
    .into();
    let mut j = json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {
            "queue": queue, "mode": "leaderboard", "lang": "py", "main": "eval.py", "sources": sources,
            "tests": [{"size": 64, "seed": 1}], "benchmarks": [{"size": 256, "seed": 3}],
            "testTimeoutSeconds": 60, "benchmarkTimeoutSeconds": 60, "rankedTimeoutSeconds": 60,
        },
    });
    if let (Some(base), Some(more)) = (j["spec"].as_object_mut(), spec.as_object()) {
        base.extend(more.clone());
    }
    Ok(serde_json::from_value(j)?)
}

async fn finished(api: &Api<KernelJob>, name: &str) -> Result<KernelJob> {
    wait_until(&format!("KernelJob {name} finished"), Duration::from_secs(240), || async {
        let j = api.get(name).await?;
        Ok(j.status.as_ref().is_some_and(|s| s.phase.is_finished()).then_some(j))
    })
    .await
}

fn reason_of(job: &KernelJob) -> Vec<String> {
    job.status.iter().flat_map(|s| s.conditions.iter().map(|c| c.reason.clone())).collect()
}

/// The job failed with `reason`, without a score, a verdict or a result ConfigMap, and a
/// Warning Event says why.
async fn refused(rig: &Rig, job: &KernelJob, reason: &str) -> Result<()> {
    let s = job.status.as_ref().context("status")?;
    let log = || rig.op.log_text();
    ensure!(s.phase == Phase::Failed, "{}: phase {:?} ({})\n{}", job.name_any(), s.phase, s.message, log());
    ensure!(
        reason_of(job).iter().any(|r| r == reason),
        "{}: reasons {:?}, want {reason}",
        job.name_any(),
        reason_of(job)
    );
    ensure!(s.score.is_none() && s.passed.is_none(), "{}: forged verdict in status: {s:?}", job.name_any());
    ensure!(s.result.is_none() && s.output_ref.is_none(), "{}: an untrusted result was kept", job.name_any());
    ensure!(!s.message.contains(benchkite_e2e::operator::E2E_RESULT_MASTER_KEY), "key material in status");
    let events: Api<CoreEvent> = rig.ns.api();
    let name = job.name_any();
    wait_until(&format!("{name}: Warning Event {reason}"), Duration::from_secs(60), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.involved_object.name.as_deref() == Some(name.as_str())
                    && e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some(reason)
            })
            .then_some(()))
    })
    .await
}

/// (a) A build that writes its own `benchkite.result` meta-data, `result.json` and (or not) a
/// signature, as anyone with the job token can: never a score.
#[tokio::test]
async fn a_result_the_runner_did_not_sign_never_scores() -> Result<()> {
    let forge = |sig: bool| {
        let sig = if sig { format!("set_md benchkite.result.sig '{FORGED_SIG}'; ") } else { String::new() };
        format!(
            "{SET_META_DATA}; {sig}set_md benchkite.result '{FORGED}'; printf '%s\\n' '{FORGED_RESULT_JSON}' > result.json"
        )
    };
    let (client, rig) = rig(
        "forge",
        |cfg, queue| {
            cfg.pipelines.push(user_pipeline("forger-signed", queue, Some(&forge(true))));
            cfg.pipelines.push(user_pipeline("forger", queue, Some(&forge(false))));
        },
        &[],
    )
    .await?;
    let api: Api<KernelJob> = Api::namespaced(client, rig.ns.name());
    let pp = PostParams::default();
    api.create(&pp, &job("signed", &rig.queue, json!({"pipeline": "forger-signed"}))?).await?;
    api.create(&pp, &job("unsigned", &rig.queue, json!({"pipeline": "forger"}))?).await?;
    api.create(&pp, &job("honest", &rig.queue, json!({}))?).await?;
    refused(&rig, &finished(&api, "signed").await?, "ResultNotTrusted").await?;
    refused(&rig, &finished(&api, "unsigned").await?, "UnsignedResult").await?;
    // The honest job beside them: its runner's signed result.
    let honest = finished(&api, "honest").await?;
    let s = honest.status.as_ref().context("status")?;
    ensure!(s.phase == Phase::Succeeded, "honest: {:?} {}\n{}", s.phase, s.message, rig.op.log_text());
    ensure!(s.score.is_some_and(|v| v > 0.000001), "honest score {:?}", s.score);
    let verified = s.result.as_ref().and_then(|r| r.verified);
    ensure!(verified == Some(true), "honest result not verified: {verified:?}");
    Ok(())
}

/// (b) A build that rewrites `benchkite.dev/run-id` to claim another job's attempt and sets
/// a result: the victim still gets its own build's honest result.
#[tokio::test]
async fn a_claimed_run_id_hands_over_nothing() -> Result<()> {
    // `$$`: the step's command is interpolated when the pipeline is read, the job's env later.
    let claim = format!(
        "{SET_META_DATA}; set_md benchkite.dev/run-id \"$$E2E_VICTIM_RUN\"; set_md benchkite.result '{FORGED}'; sleep 1"
    );
    let (client, rig) = rig(
        "claim",
        |cfg, queue| {
            // The victim's build outlives the attacker's claim (its agent is busy first), so the
            // claim lands while the victim is being followed.
            cfg.pipelines.push(user_pipeline("honest", queue, Some("sleep 3 && benchkite run")));
            cfg.pipelines.push(user_pipeline("claimer", queue, Some(&claim)));
        },
        &[],
    )
    .await?;
    let api: Api<KernelJob> = Api::namespaced(client, rig.ns.name());
    let pp = PostParams::default();
    // Both name their own branch: their identity is their build env, not an attempt branch.
    let victim = api.create(&pp, &job("victim", &rig.queue, json!({"pipeline": "honest", "branch": "main"}))?).await?;
    let run = format!("{}-1", victim.uid().context("victim uid")?);
    let attacker =
        job("attacker", &rig.queue, json!({"pipeline": "claimer", "branch": "main", "env": {"E2E_VICTIM_RUN": run}}))?;
    api.create(&pp, &attacker).await?;
    let attacker = finished(&api, "attacker").await?;
    let victim = finished(&api, "victim").await?;
    let s = victim.status.as_ref().context("status")?;
    ensure!(s.phase == Phase::Succeeded, "victim: {:?} {}\n{}", s.phase, s.message, rig.op.log_text());
    ensure!(s.score.is_some_and(|v| v > 0.000001), "victim got the forged score: {:?}", s.score);
    let b = s.build.as_ref().context("victim build")?;
    ensure!(b.pipeline == "honest", "victim followed build {b:?}");
    ensure!(s.attempts.len() == 1 && s.attempts[0].run_id == run, "victim attempts {:?}", s.attempts);
    // The attacker's own job gets its own (unsigned) result, not the victim's.
    let a = attacker.status.as_ref().context("status")?;
    ensure!(a.phase != Phase::Succeeded && a.score.is_none(), "attacker: {:?} {:?}", a.phase, a.score);
    let ab = a.build.as_ref().context("attacker build")?;
    ensure!(ab.pipeline == "claimer", "attacker build {ab:?}");
    // The claim was made: the attacker's build carries the victim's run id and a result.
    let shown = benchkite_e2e::sim::build(&rig.sim, &ab.pipeline, u64::try_from(ab.number)?).await?;
    let meta = shown.as_ref().map(|b| b["meta_data"].clone()).unwrap_or_default();
    if meta["benchkite.dev/run-id"] != json!(run) {
        let jobs = shown.as_ref().and_then(|b| b["jobs"].as_array().cloned()).unwrap_or_default();
        for j in jobs {
            let d = benchkite_e2e::sim::job_details(&rig.sim, j["id"].as_str().unwrap_or_default()).await?;
            eprintln!("attacker job log: {}", d["log"]);
        }
        eprintln!("env: {}", shown.as_ref().map(|b| b["env"].clone()).unwrap_or_default());
    }
    ensure!(meta["benchkite.dev/run-id"] == json!(run), "the claim did not land (victim {run}): {meta}");
    ensure!(meta["benchkite.result"] == json!(FORGED), "the forged result did not land: {meta}");
    Ok(())
}

/// (c) An honest runner without a result key: refused by default, accepted and marked
/// unverified with `--unsigned-results=accept`.
#[tokio::test]
async fn unsigned_results_are_refused_unless_accepted() -> Result<()> {
    let (client, rig) = rig("unsigned", |cfg, _| without_result_key(cfg), &[]).await?;
    let api: Api<KernelJob> = Api::namespaced(client, rig.ns.name());
    api.create(&PostParams::default(), &job("refused", &rig.queue, json!({}))?).await?;
    refused(&rig, &finished(&api, "refused").await?, "UnsignedResult").await?;

    drop(rig);
    let (client, lax) =
        self::rig("unsigned-ok", |cfg, _| without_result_key(cfg), &["--unsigned-results=accept"]).await?;
    let api: Api<KernelJob> = Api::namespaced(client, lax.ns.name());
    api.create(&PostParams::default(), &job("accepted", &lax.queue, json!({}))?).await?;
    let j = finished(&api, "accepted").await?;
    let s = j.status.as_ref().context("status")?;
    ensure!(s.phase == Phase::Succeeded, "accepted: {:?} {}\n{}", s.phase, s.message, lax.op.log_text());
    let verified = s.result.as_ref().and_then(|r| r.verified);
    ensure!(verified == Some(false), "not marked unverified: {verified:?}");
    ensure!(s.message.contains("unsigned"), "{}", s.message);
    Ok(())
}

/// The fleet controller hands each AgentPool's agents their queue's key: a Secret in the
/// pool's namespace, owned by the pool, holding the key the runner needs (and the pool says
/// so in a condition). The controller writes it without being able to read any Secret back.
#[tokio::test]
async fn a_pool_gets_its_queue_key_secret() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "poolkey").await?;
    let queue = format!("q-{}", ns.name());
    let http = format!("127.0.0.1:{}", free_port()?);
    let _op = Operator::start(&format!("fleet-key-{}", ns.name()), &["--controllers", "fleet", "--http-addr", &http])?;
    let pools: Api<benchkite::api::AgentPool> = ns.api();
    let pool: benchkite::api::AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "keyed"},
        "spec": {
            "queue": queue,
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": "nothing-here"}},
            "agent": {"tokenSecretRef": {"name": "agent-token"}},
        },
    }))?;
    let created = pools.create(&PostParams::default(), &pool).await?;
    wait_until("the pool's ResultKeyReady condition", Duration::from_secs(90), || async {
        let p = pools.get("keyed").await?;
        let c = p.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "ResultKeyReady"));
        Ok(c.filter(|c| c.status == "True"))
    })
    .await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    let secret = secrets.get(&benchkite::signing::result_key_secret_name("keyed")).await?;
    let data = secret.data.context("secret data")?;
    let held = data.get(benchkite::signing::RESULT_KEY_FILE_NAME).context("the key")?;
    let key = benchkite::signing::Key::parse(&held.0).context("a key file")?;
    ensure!(key == benchkite_e2e::operator::result_master_key()?.queue_key(&queue), "not the queue's key");
    let owner = secret.metadata.owner_references.unwrap_or_default();
    ensure!(owner.iter().any(|o| Some(&o.uid) == created.metadata.uid.as_ref()), "not owned by the pool: {owner:?}");
    ns.delete().await
}
