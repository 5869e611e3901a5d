//! KernelJobs end to end: the real `benchkite controller` (KernelJob controller, scoped to
//! the test's namespace) against the local cluster and the Buildkite simulator, whose jobs
//! run the real `benchkite run` on tiny CPU tasks (tests/tasks/vectoradd).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::Phase;
use benchkite_e2e::operator::{Operator, install_crds, wait_ready};
use benchkite_e2e::sim::{buildkite_rate_limit, user_pipeline, with_fake_gpu_tools};
use benchkite_e2e::{TestNamespace, client, repo_root, wait_until};
use buildkite_sim::config::{AgentPoolConfig, RateLimitConfig, WebhookAuth, WebhookConfig};
use buildkite_sim::{InfraFailure, SimConfig, SimHandle, Simulator};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const WEBHOOK_SECRET: &str = "e2e-webhook-secret-canary-7f3a";
const CREATE: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";

struct Rig {
    sim: SimHandle,
    op: Operator,
    ns: TestNamespace,
    queue: String,
    webhook_url: Option<String>,
}

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

/// A simulator (agents on one queue running `benchkite run`; two pipelines a user made for
/// that queue: `silent`, whose step passes without a result, and `broken`, whose step fails)
/// and a controller for one namespace. Jobs that name no pipeline run on the pipeline the
/// controller creates for their queue.
async fn rig(prefix: &str, webhooks: bool, tune: impl FnOnce(&mut SimConfig), extra: &[&str]) -> Result<(Client, Rig)> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let queue = format!("q-{}", ns.name());
    let mut cfg = benchkite_e2e::sim::queue_config(&queue, 4)?;
    cfg.pipelines.push(user_pipeline("silent", &queue, Some("echo ran, left no result")));
    cfg.pipelines.push(user_pipeline("broken", &queue, Some("echo the build is broken >&2; exit 3")));
    let port = free_port()?;
    let webhook_url = webhooks.then(|| format!("http://127.0.0.1:{port}/webhooks/buildkite"));
    if let Some(url) = &webhook_url {
        cfg.webhooks.push(WebhookConfig {
            url: url.clone(),
            token: WEBHOOK_SECRET.into(),
            auth: WebhookAuth::Signature,
            ..Default::default()
        });
    }
    tune(&mut cfg);
    let sim = Simulator::start(cfg).await?;
    let http = format!("127.0.0.1:{port}");
    let common = benchkite_e2e::sim::kerneljob_args(&sim, ns.name());
    let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--http-addr", &http]);
    if !extra.contains(&"--poll-interval-seconds") {
        args.extend_from_slice(&["--poll-interval-seconds", if webhooks { "30" } else { "2" }]);
    }
    args.extend_from_slice(extra);
    let token = sim.api_token();
    let mut envs = vec![("BUILDKITE_API_TOKEN", token.as_str())];
    if webhooks {
        envs.push(("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET));
    }
    let op = Operator::start_with_env(&format!("kerneljob-{}", ns.name()), &args, &envs)?;
    wait_ready(&http).await.with_context(|| op.log_text())?;
    Ok((client, Rig { sim, op, ns, queue, webhook_url }))
}

fn task_file(name: &str) -> Result<String> {
    let path = repo_root().join("tests/tasks/vectoradd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A KernelJob running the vectoradd task with the given submission.
fn job(name: &str, queue: &str, mode: &str, submission: &str) -> Result<KernelJob> {
    let sources: BTreeMap<String, String> = [
        ("eval.py".to_string(), task_file("eval.py")?),
        ("reference.py".to_string(), task_file("reference.py")?),
        ("submission.py".to_string(), task_file(submission)?),
    ]
    .into();
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {
            "queue": queue, "mode": mode, "lang": "py", "main": "eval.py", "sources": sources,
            "tests": [{"size": 64, "seed": 1}, {"size": 256, "seed": 2}],
            "benchmarks": [{"size": 1024, "seed": 3}],
            "testTimeoutSeconds": 60, "benchmarkTimeoutSeconds": 60, "rankedTimeoutSeconds": 60,
        },
    }))?)
}

async fn wait_phase(api: &Api<KernelJob>, name: &str, timeout: Duration) -> Result<KernelJob> {
    wait_until(&format!("KernelJob {name} finished"), timeout, || async {
        let j = api.get(name).await?;
        let done = j.status.as_ref().is_some_and(|s| s.phase.is_finished());
        Ok(done.then_some(j))
    })
    .await
}

/// The build of a KernelJob's last attempt: its pipeline (the one the controller created for
/// the queue, or the job's own) and number.
fn build_of(job: &KernelJob) -> Result<(String, u64)> {
    let b = job.status.as_ref().and_then(|s| s.build.as_ref()).context("the job has no build")?;
    Ok((b.pipeline.clone(), u64::try_from(b.number)?))
}

/// Prints the job logs of a KernelJob's build from the simulator (for failure messages).
async fn dump_build(rig: &Rig, job: &KernelJob) {
    let Ok((pipeline, number)) = build_of(job) else { return };
    let Ok(Some(build)) = benchkite_e2e::sim::build(&rig.sim, &pipeline, number).await else { return };
    for job in build["jobs"].as_array().cloned().unwrap_or_default() {
        let id = job["id"].as_str().unwrap_or_default();
        if let Ok(details) = benchkite_e2e::sim::job_details(&rig.sim, id).await {
            let text = details["log"].as_str().unwrap_or_default();
            eprintln!("{pipeline} #{number} job {id}: {}", &text[..text.len().min(4000)]);
        }
    }
}

fn cond(job: &KernelJob, t: &str) -> Option<String> {
    job.status.as_ref()?.conditions.iter().find(|c| c.type_ == t).map(|c| format!("{}/{}", c.status, c.reason))
}

#[tokio::test]
async fn results_land_in_status_for_good_wrong_and_broken_submissions() -> Result<()> {
    let (_client, rig) =
        rig("kjresult", true, |cfg| with_fake_gpu_tools(cfg).unwrap_or_else(|e| panic!("{e:#}")), &[]).await?;
    let api: Api<KernelJob> = rig.ns.api();
    api.create(&PostParams::default(), &job("good", &rig.queue, "leaderboard", "submission_ok.py")?).await?;
    api.create(&PostParams::default(), &job("wrong", &rig.queue, "test", "submission_wrong.py")?).await?;
    let mut broken = job("broken", &rig.queue, "test", "submission_ok.py")?;
    broken.spec.pipeline = Some("broken".into());
    api.create(&PostParams::default(), &broken).await?;

    let good = wait_phase(&api, "good", Duration::from_secs(120)).await?;
    let s = good.status.clone().context("status")?;
    if s.phase != Phase::Succeeded {
        dump_build(&rig, &good).await;
    }
    ensure!(s.phase == Phase::Succeeded, "good: {:?} {}", s.phase, s.message);
    ensure!(s.passed == Some(true), "good passed: {:?}", s.passed);
    ensure!(s.score.is_some_and(|v| v > 0.0), "leaderboard score: {:?}", s.score);
    let tests = s.summary.as_ref().and_then(|x| x.tests.clone()).context("test summary")?;
    ensure!(tests.passed == 2 && tests.total == 2, "{tests:?}");
    ensure!(s.summary.as_ref().is_some_and(|x| !x.benchmarks.is_empty()), "benchmarks in the summary");
    ensure!(
        s.result.as_ref().is_some_and(|r| r.source == "meta-data"),
        "the result came with the build: {:?}",
        s.result.as_ref().map(|r| &r.source)
    );
    ensure!(s.build.as_ref().is_some_and(|b| b.number > 0), "build ref: {:?}", s.build);
    // The environment fingerprint came with the signed summary: here (no GPU tools on the
    // agents) at least the hash of the harness it ran, which is the task's `eval.py`.
    let fingerprint = s.result.as_ref().and_then(|r| r.system.as_ref()).and_then(|x| x.fingerprint.as_ref());
    let harness = fingerprint.map(|f| f.harness_sha256.clone()).unwrap_or_default();
    ensure!(
        harness.len() == 64 && harness.chars().all(|c| c.is_ascii_hexdigit()),
        "fingerprint of the good job: {fingerprint:?}"
    );
    // The GPU fields, from the agents' stand-in nvidia-smi.
    let fp = fingerprint.context("fingerprint")?;
    ensure!(
        fp.gpu_uuid.starts_with("GPU-") && fp.gpu_model == "NVIDIA H100 80GB HBM3" && fp.driver_version == "550.54.15",
        "GPU fields of the fingerprint: {fp:?}"
    );
    ensure!(fp.cuda_version == "12.4" && !fp.power_limit_w.is_empty() && !fp.temperature_before_c.is_empty(), "{fp:?}");
    // The summary came as meta-data: no result.json was downloaded, so no result ConfigMap
    // (when there is one, `fingerprint.json` sits beside `result.json`: a unit test).
    ensure!(s.output_ref.is_none(), "no download, no ConfigMap: {:?}", s.output_ref);
    ensure!(cond(&good, "Complete").as_deref() == Some("True/EvaluationFinished"), "{:?}", cond(&good, "Complete"));
    ensure!(cond(&good, "Ready").is_some_and(|c| c.starts_with("True")));
    ensure!(s.observed_generation == good.metadata.generation);

    let wrong = wait_phase(&api, "wrong", Duration::from_secs(120)).await?;
    let s = wrong.status.clone().context("status")?;
    ensure!(s.phase == Phase::Succeeded, "a wrong kernel is a finished evaluation: {:?} {}", s.phase, s.message);
    ensure!(s.passed == Some(false));
    let failures = s.summary.and_then(|x| x.tests).map(|t| t.failures).unwrap_or_default();
    ensure!(failures.iter().any(|f| f.contains("size: 256")), "the failing test is named: {failures:?}");

    let broken = wait_phase(&api, "broken", Duration::from_secs(120)).await?;
    let s = broken.status.clone().context("status")?;
    ensure!(s.phase == Phase::Failed, "broken build: {:?}", s.phase);
    ensure!(
        cond(&broken, "Failed").as_deref() == Some("True/BuildFailed"),
        "{:?} {}",
        cond(&broken, "Failed"),
        s.message
    );
    ensure!(s.message.contains("status 3"), "{}", s.message);
    // kstatus: a failed job is Failed (Stalled), not Current; a succeeded one is Current.
    ensure!(cond(&broken, "Stalled").as_deref() == Some("True/BuildFailed"), "{:?}", cond(&broken, "Stalled"));
    ensure!(cond(&broken, "Ready").is_some_and(|c| c.starts_with("False")), "{:?}", cond(&broken, "Ready"));
    ensure!(cond(&good, "Stalled").is_some_and(|c| c.starts_with("False")));
    ensure!(cond(&good, "Reconciling").is_some_and(|c| c.starts_with("False")));

    // Exactly one build each, and the result cost no request beyond the create.
    let counters = rig.sim.counters();
    ensure!(counters.endpoint(CREATE).status(201) == 3, "{counters:?}");
    ensure!(rig.sim.rate_limit_stats().rejected == 0);
    ensure!(!rig.op.log_text().contains(WEBHOOK_SECRET), "the webhook secret leaked into the log");
    ensure!(!rig.op.log_text().contains(&rig.sim.api_token()), "the API token leaked into the log");
    rig.ns.delete().await
}

#[tokio::test]
async fn timeouts_and_deletions_cancel_builds() -> Result<()> {
    let (_client, rig) = rig("kjcancel", true, |_| {}, &[]).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let mut slow = job("slow", &rig.queue, "test", "submission_hang.py")?;
    slow.spec.timeout_seconds = Some(8);
    api.create(&PostParams::default(), &slow).await?;
    api.create(&PostParams::default(), &job("doomed", &rig.queue, "test", "submission_hang.py")?).await?;

    let slow = wait_phase(&api, "slow", Duration::from_secs(60)).await?;
    let s = slow.status.clone().context("status")?;
    ensure!(s.phase == Phase::TimedOut, "{:?} {}", s.phase, s.message);
    let (pipeline, number) = build_of(&slow)?;
    wait_until("the timed-out build is cancelled in Buildkite", Duration::from_secs(30), || async {
        let state = rig.sim.build_state(&pipeline, number);
        Ok(matches!(state.as_deref(), Some("canceled" | "canceling")).then_some(()))
    })
    .await?;

    // Delete a running job: its build is cancelled, then the object goes.
    let doomed = wait_until("doomed running", Duration::from_secs(60), || async {
        let j = api.get("doomed").await?;
        Ok(j.status.clone().filter(|s| s.phase == Phase::Running).map(|_| j))
    })
    .await?;
    let (pipeline, number) = build_of(&doomed)?;
    api.delete("doomed", &DeleteParams::default()).await?;
    wait_until("the deleted job's build cancelled and the job gone", Duration::from_secs(60), || async {
        let state = rig.sim.build_state(&pipeline, number);
        let gone = api.get_opt("doomed").await?.is_none();
        Ok((gone && matches!(state.as_deref(), Some("canceled" | "canceling"))).then_some(()))
    })
    .await?;
    rig.ns.delete().await
}

/// A lost agent is retried where Buildkite retries it: inside the build, by the managed
/// pipeline's `retry.automatic` rule (docs "Retry"; `exit_status: -1, signal_reason: none`,
/// limit 2), so the KernelJob keeps its one attempt. Only when Buildkite's own retries are
/// used up does the build fail, and benchkite makes a second attempt (a new build).
#[tokio::test]
async fn an_infrastructure_failure_is_retried_in_the_build_then_once_more() -> Result<()> {
    let (_client, rig) = rig("kjretry", true, |_| {}, &[]).await?;
    let lost = || InfraFailure::parse("agent_lost").map_err(anyhow::Error::msg);
    let api: Api<KernelJob> = rig.ns.api();

    // One lost agent: Buildkite's automatic retry runs the job again in the same build.
    rig.sim.inject_infra_failures(1, Some(&rig.queue), lost()?);
    api.create(&PostParams::default(), &job("healed", &rig.queue, "test", "submission_ok.py")?).await?;
    let j = wait_phase(&api, "healed", Duration::from_secs(120)).await?;
    let s = j.status.clone().context("status")?;
    ensure!(s.phase == Phase::Succeeded && s.passed == Some(true), "{:?} {}", s.phase, s.message);
    ensure!(s.attempts.len() == 1, "Buildkite retried it in the build; attempts: {:?}", s.attempts);
    let (pipeline, number) = build_of(&j)?;
    let build = benchkite_e2e::sim::build(&rig.sim, &pipeline, number).await?.context("the build")?;
    let tries = benchkite_e2e::sim::script_jobs(&build);
    ensure!(tries.len() == 2, "a lost try and its automatic retry: {tries:?}");
    ensure!(
        tries[0]["retried"] == true && tries[0]["exit_status"] == -1 && tries[0]["signal"].is_null(),
        "the first try was lost and retried: {}",
        tries[0]
    );
    ensure!(tries[1]["state"] == "passed", "the retry passed: {}", tries[1]);
    ensure!(rig.sim.counters().endpoint(CREATE).status(201) == 1, "one build");

    // Three lost agents in a row: the rule's two retries are used up, the build fails, and
    // benchkite tries once more with a new build.
    rig.sim.inject_infra_failures(3, Some(&rig.queue), lost()?);
    api.create(&PostParams::default(), &job("flaky", &rig.queue, "test", "submission_ok.py")?).await?;
    let j = wait_phase(&api, "flaky", Duration::from_secs(180)).await?;
    let s = j.status.clone().context("status")?;
    ensure!(s.phase == Phase::Succeeded && s.passed == Some(true), "{:?} {}", s.phase, s.message);
    ensure!(s.attempts.len() == 2, "attempts: {:?}", s.attempts);
    ensure!(s.attempts[0].outcome.starts_with("InfrastructureFailure"), "{:?}", s.attempts[0]);
    ensure!(s.attempts[0].run_id != s.attempts[1].run_id);
    let first = s.attempts[0].build.as_ref().context("the first attempt's build")?;
    let build = benchkite_e2e::sim::build(&rig.sim, &first.pipeline, u64::try_from(first.number)?)
        .await?
        .context("the first attempt's build")?;
    let tries = benchkite_e2e::sim::script_jobs(&build);
    ensure!(
        tries.len() == 3 && tries.iter().all(|t| t["exit_status"] == -1),
        "three lost tries in the first build: {tries:?}"
    );
    ensure!(rig.sim.counters().endpoint(CREATE).status(201) == 3, "one build per attempt");
    rig.ns.delete().await
}

/// 100 jobs at once under a 60/minute limit: every job completes, Buildkite never answers
/// 429, and the controller sends at most 1.5 requests per job (polling only, no webhooks).
#[tokio::test]
async fn a_hundred_jobs_under_sixty_requests_per_minute() -> Result<()> {
    // The same rate as 60/minute on a 10 s window keeps the test short.
    let (_client, rig) = rig(
        "kjbudget",
        false,
        |cfg| {
            // Buildkite's 4:1 ratio of organization to user limit; the user limit (one
            // token) binds: 10 per 10 s.
            cfg.rate_limit = RateLimitConfig { org_limit: 40, user_limit: 10, window_secs: 10.0 };
            cfg.agents[0].count = 16;
        },
        &[
            "--buildkite-requests-per-minute",
            "10",
            "--buildkite-rate-limit-window-seconds",
            "10",
            "--poll-interval-seconds",
            "5",
        ],
    )
    .await?;
    let api: Api<KernelJob> = rig.ns.api();
    // KernelJobs created in a controller's first 5 s may predate it: they are looked up in
    // Buildkite before they are queued (exactly-once after a restart), and that look-up does
    // not know priorities. This test is about the queue, so it starts after that window.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = 100;
    let mut built_before_priority = 0;
    for i in 0..n {
        let mut j = job(&format!("j{i:03}"), &rig.queue, "test", "submission_ok.py")?;
        // The last five jump the queue.
        if i >= n - 5 {
            j.spec.priority = 10;
            if i == n - 5 {
                built_before_priority = rig.sim.counters().endpoint(CREATE).status(201);
            }
        }
        api.create(&PostParams::default(), &j).await?;
    }
    // The priority jobs only have something to jump when a backlog waits for the budget.
    let backlog = (n as u64 - 5).saturating_sub(built_before_priority);
    ensure!(backlog >= 30, "no backlog when the priority jobs arrived ({built_before_priority} built): inconclusive");
    let throttled_seen = std::sync::atomic::AtomicBool::new(false);
    wait_until("all 100 jobs finished", Duration::from_secs(400), || async {
        let jobs = api.list(&Default::default()).await?.items;
        if jobs.iter().any(|j| cond(j, "Throttled").is_some_and(|c| c.starts_with("True"))) {
            throttled_seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let done = jobs.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        Ok((done == n).then_some(jobs))
    })
    .await
    .and_then(|jobs| {
        let bad: Vec<_> =
            jobs.iter().filter(|j| j.status.as_ref().is_none_or(|s| s.phase != Phase::Succeeded)).collect();
        ensure!(bad.is_empty(), "{} jobs did not succeed", bad.len());
        Ok(())
    })?;
    let stats = rig.sim.rate_limit_stats();
    let per_job = stats.counted as f64 / n as f64;
    println!("budget: {} requests for {n} jobs ({per_job:.2}/job), {} answered 429", stats.counted, stats.rejected);
    ensure!(stats.rejected == 0, "{} requests were answered 429", stats.rejected);
    ensure!(per_job <= 1.5, "{per_job:.2} requests per job");
    ensure!(rig.sim.counters().endpoint(CREATE).status(201) == n as u64, "one build per job");
    ensure!(throttled_seen.load(std::sync::atomic::Ordering::Relaxed), "waiting jobs showed Throttled=True");
    let jobs = api.list(&Default::default()).await?.items;
    let number = |name: &str| {
        jobs.iter()
            .find(|j| j.metadata.name.as_deref() == Some(name))
            .and_then(|j| j.status.as_ref()?.build.as_ref().map(|b| b.number))
            .unwrap_or(i64::MAX)
    };
    // A submit worker takes a job only once the budget lets it send, so only creates already
    // under way go first (at most the 10 a window allows), then the five; a few more may
    // leave while their reconciles queue them on a loaded machine.
    let limit = built_before_priority as i64 + 8 + 5 + 8;
    let worst = (n - 5..n).map(|i| number(&format!("j{i:03}"))).max().unwrap_or(i64::MAX);
    for i in n - 5..n {
        let b = number(&format!("j{i:03}"));
        ensure!(
            b <= limit,
            "priority job j{i:03} got build #{b} ({built_before_priority} built when it arrived, {backlog} waiting): it should jump the queue"
        );
    }
    println!(
        "priority jobs arrived after {built_before_priority} builds with {backlog} waiting; the last of them got build #{worst} (limit #{limit})"
    );
    rig.ns.delete().await
}

#[tokio::test]
async fn forged_webhooks_are_refused() -> Result<()> {
    let (_client, rig) = rig("kjforged", true, |_| {}, &[]).await?;
    let url = rig.webhook_url.clone().context("webhook url")?;
    let http = reqwest::Client::new();
    // Wait for the controller's endpoint.
    wait_until("the webhook endpoint", Duration::from_secs(30), || async {
        Ok(http.post(&url).body("{}").send().await.ok().map(|_| ()))
    })
    .await?;
    let body = r#"{"event":"build.finished","build":{"id":"x","number":1,"state":"passed","meta_data":{}}}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let good_sig = buildkite_sim::signature_header(WEBHOOK_SECRET, now as i64, body.as_bytes());
    let stale_sig = buildkite_sim::signature_header(WEBHOOK_SECRET, now as i64 - 3600, body.as_bytes());
    let bad_sig = buildkite_sim::signature_header("not-the-secret", now as i64, body.as_bytes());
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16);
    let cases: Vec<Case<'_>> = vec![
        ("no authentication", vec![], 401),
        ("wrong token", vec![("X-Buildkite-Token", "guess".into())], 401),
        ("bad signature", vec![("X-Buildkite-Signature", bad_sig)], 401),
        ("stale timestamp", vec![("X-Buildkite-Signature", stale_sig)], 401),
        ("valid", vec![("X-Buildkite-Signature", good_sig.clone())], 200),
    ];
    for (what, headers, want) in cases {
        let mut req = http.post(&url).header("X-Buildkite-Event", "build.finished").body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let got = req.send().await?.status().as_u16();
        ensure!(got == want, "{what}: answered {got}, expected {want}");
    }
    // A replay of the valid delivery is acknowledged but not processed twice.
    let replay = http
        .post(&url)
        .header("X-Buildkite-Event", "build.finished")
        .header("X-Buildkite-Signature", good_sig)
        .body(body)
        .send()
        .await?;
    ensure!(replay.status().as_u16() == 200 && replay.text().await?.contains("duplicate"));
    ensure!(!rig.op.log_text().contains(WEBHOOK_SECRET));
    rig.ns.delete().await
}

/// SIGKILL the controller while it submits a burst; after a restart every job has exactly
/// one build.
#[tokio::test]
async fn a_killed_controller_never_creates_a_second_build() -> Result<()> {
    let (_client, mut rig) = rig("kjcrash", true, |cfg| cfg.agents[0].count = 8, &[]).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let n = 30;
    for i in 0..n {
        api.create(&PostParams::default(), &job(&format!("c{i:02}"), &rig.queue, "test", "submission_ok.py")?).await?;
        if i == 12 {
            rig.op.kill();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let args_log = format!("kerneljob-{}", rig.ns.name());
    let port = rig
        .webhook_url
        .as_deref()
        .and_then(|u| u.split(':').nth(2))
        .and_then(|p| p.split('/').next())
        .context("port")?
        .to_string();
    let http = format!("127.0.0.1:{port}");
    let (org, apiu, agent, token) =
        (rig.sim.organization(), rig.sim.api_url(), rig.sim.agent_url(), rig.sim.api_token());
    rig.op = Operator::start_with_env(
        &args_log,
        &[
            "--controllers",
            "kerneljob",
            "--namespace",
            rig.ns.name(),
            "--http-addr",
            &http,
            "--buildkite-org",
            &org,
            "--buildkite-api-url",
            &apiu,
            "--buildkite-agent-api-url",
            &agent,
            "--buildkite-graphql",
            "off",
            "--poll-interval-seconds",
            "30",
            "--instance",
            rig.ns.name(),
        ],
        &[("BUILDKITE_API_TOKEN", token.as_str()), ("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    )?;
    wait_until("all jobs finished after the restart", Duration::from_secs(300), || async {
        let jobs = api.list(&Default::default()).await?.items;
        Ok((jobs.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded)).count() == n)
            .then_some(()))
    })
    .await?;
    let builds = rig.sim.counters().endpoint(CREATE).status(201);
    ensure!(builds == n as u64, "{builds} builds for {n} jobs");
    rig.ns.delete().await
}

/// A pool with `createQueue` creates its missing cluster queue (agents refuse to connect to
/// a queue that does not exist), and reports the queue's live state from agent metrics.
#[tokio::test]
async fn a_pool_creates_its_queue_and_reports_its_state() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "kjqueue").await?;
    let queue = format!("q-{}", ns.name());
    let mut cfg = SimConfig { rate_limit: buildkite_rate_limit(60.0), ..Default::default() };
    // Agents for a queue the cluster does not have yet: they cannot connect.
    cfg.agents.push(AgentPoolConfig { queue: queue.clone(), count: 3, ..Default::default() });
    cfg.metrics_poll_duration_secs = 1;
    let sim = Simulator::start(cfg).await?;
    let (org, api_url, agent_url, token, agent_token) =
        (sim.organization(), sim.api_url(), sim.agent_url(), sim.api_token(), sim.agent_token());
    let port = free_port()?;
    let http = format!("127.0.0.1:{port}");
    let _op = Operator::start_with_env(
        &format!("fleet-queue-{}", ns.name()),
        &[
            "--controllers",
            "fleet",
            "--http-addr",
            &http,
            "--buildkite-org",
            &org,
            "--buildkite-api-url",
            &api_url,
            "--buildkite-agent-api-url",
            &agent_url,
        ],
        &[("BUILDKITE_API_TOKEN", token.as_str()), ("BUILDKITE_AGENT_METRICS_TOKEN", agent_token.as_str())],
    )?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "agent-token"}, "stringData": {"token": "x"}}))?,
        )
        .await?;
    let pools: Api<benchkite::api::AgentPool> = ns.api();
    let pool: benchkite::api::AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "queued"},
        "spec": {
            "queue": queue,
            "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": "nothing-here"}},
            "agent": {"tokenSecretRef": {"name": "agent-token"}},
            "buildkite": {"createQueue": true},
        },
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    let status = wait_until("the queue created and its agents connected", Duration::from_secs(90), || async {
        let p = pools.get("queued").await?;
        Ok(p.status.and_then(|s| s.queue).filter(|q| q.connected_agents == 3 && q.idle_agents == 3))
    })
    .await?;
    ensure!(status.scheduled_jobs == 0 && status.observed_at.is_some(), "{status:?}");
    let events: Api<k8s_openapi::api::core::v1::Event> = ns.api();
    let evs = events.list(&Default::default()).await?.items;
    ensure!(evs.iter().any(|e| e.reason.as_deref() == Some("QueueCreated")), "a QueueCreated event");
    ns.delete().await
}

/// What only the controller can tell: sources from a ConfigMap, a payload over the limit, a
/// build that leaves no result, and a deletion while Buildkite is down.
#[tokio::test]
async fn sources_from_payload_limits_missing_results_and_outages() -> Result<()> {
    let (client, rig) =
        rig("kjedges", true, |_| {}, &["--max-source-bytes", "200000", "--poll-interval-seconds", "5"]).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let _ = client;

    // Sources from a ConfigMap (the submission file), the harness inline.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = rig.ns.api();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "submission"}, "data": {"submission.py": task_file("submission_ok.py")?}}),
        )?,
    )
    .await?;
    let mut from_cm = job("from-cm", &rig.queue, "test", "submission_ok.py")?;
    from_cm.spec.sources.remove("submission.py");
    from_cm.spec.sources_from = vec![serde_json::from_value(json!({"configMap": "submission"}))?];
    api.create(&PostParams::default(), &from_cm).await?;

    // Over the limit: refused before any build.
    let mut big = job("too-big", &rig.queue, "test", "submission_ok.py")?;
    big.spec.sources.insert("padding.py".into(), format!("# {}\n", "x".repeat(250_000)));
    api.create(&PostParams::default(), &big).await?;

    // A build that passes but leaves no result.
    let mut silent = job("silent", &rig.queue, "test", "submission_ok.py")?;
    silent.spec.pipeline = Some("silent".into());
    api.create(&PostParams::default(), &silent).await?;

    let j = wait_phase(&api, "from-cm", Duration::from_secs(120)).await?;
    ensure!(
        j.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded && s.passed == Some(true)),
        "{:?}",
        j.status.map(|s| s.message)
    );
    ensure!(
        j.status.as_ref().and_then(|s| s.build.as_ref()).is_some_and(|b| b.web_url.starts_with("http")),
        "the build's URL is in status.build.webUrl: {:?}",
        j.status.as_ref().map(|s| &s.build)
    );
    let j = wait_phase(&api, "too-big", Duration::from_secs(60)).await?;
    ensure!(cond(&j, "Failed").as_deref() == Some("True/PayloadTooLarge"), "{:?}", cond(&j, "Failed"));
    ensure!(j.status.as_ref().is_some_and(|s| s.attempts.is_empty()), "no build for a payload over the limit");
    let j = wait_phase(&api, "silent", Duration::from_secs(120)).await?;
    ensure!(cond(&j, "Failed").as_deref() == Some("True/ResultMissing"), "{:?}", cond(&j, "Failed"));

    // Buildkite goes down while a running job is deleted: the job goes at once (no
    // finalizer holds it), and its build is cancelled once Buildkite answers again.
    api.create(&PostParams::default(), &job("orphan", &rig.queue, "test", "submission_hang.py")?).await?;
    let running = wait_until("orphan running", Duration::from_secs(60), || async {
        let j = api.get("orphan").await?;
        Ok(j.status.filter(|s| s.phase == Phase::Running))
    })
    .await?;
    ensure!(
        api.get("orphan").await?.metadata.finalizers.unwrap_or_default().is_empty(),
        "no finalizer on a running job"
    );
    let number = running.build.as_ref().map(|b| b.number).unwrap_or_default();
    let pipeline = running.build.as_ref().map(|b| b.pipeline.clone()).unwrap_or_default();
    rig.sim.start_outage(buildkite_sim::config::OutageConfig { duration_secs: 60.0, ..Default::default() });
    api.delete("orphan", &DeleteParams::default()).await?;
    wait_until("the deleted job gone at once despite the outage", Duration::from_secs(10), || async {
        Ok(api.get_opt("orphan").await?.is_none().then_some(()))
    })
    .await?;
    let during = rig.sim.build_state(&pipeline, u64::try_from(number).unwrap_or_default());
    ensure!(during.as_deref() == Some("running"), "the build runs on while Buildkite is down: {during:?}");
    rig.sim.end_outage();
    wait_until("the deleted job's build cancelled after the outage", Duration::from_secs(90), || async {
        let state = rig.sim.build_state(&pipeline, u64::try_from(number).unwrap_or_default());
        Ok(matches!(state.as_deref(), Some("canceled" | "canceling")).then_some(()))
    })
    .await?;
    let events: Api<k8s_openapi::api::core::v1::Event> = rig.ns.api();
    let evs = events.list(&Default::default()).await?.items;
    // Builds are named in status (status.build.webUrl), not in a Normal Event per job: Events
    // are kept for warnings (fewer writes per KernelJob; `--kerneljob-events=all` adds the end).
    ensure!(
        !evs.iter()
            .any(|e| e.type_.as_deref() == Some("Normal") && e.involved_object.kind.as_deref() == Some("KernelJob")),
        "no Normal Event per KernelJob by default: {:?}",
        evs.iter().map(|e| (&e.reason, &e.involved_object.name)).collect::<Vec<_>>()
    );
    rig.ns.delete().await
}
