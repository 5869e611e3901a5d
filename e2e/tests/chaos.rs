//! The chaos suite: the real controller against the local cluster and the Buildkite
//! simulator while things go wrong on purpose — SIGKILLs, Buildkite outages and faults,
//! throttling, hostile webhooks, an API server restart, a leader failover — checking that
//! no job is lost or run twice, no secret leaks and agent pods stay isolated.
//!
//! All `#[ignore]`: `make test-chaos` runs them one at a time
//! (`BENCHKITE_CHAOS_LONG=1` for the long variants). Each prints a `chaos <scenario>:` line
//! with its figures.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use benchkite::api::KernelJob;
use benchkite_e2e::chaos::{
    ApiServer, CANARY_WEBHOOK_SECRET, CREATE, ChaosRig, Figures, RigOptions, Rng, audit, check_agent_isolation,
    check_node_gpu_claims, controller_has_flag, create_jobs, endpoint_delta, free_port, metric_sum, pick,
    process_alive, rate, scan_for_secrets, scrape_metrics, webhook_config,
};
use benchkite_e2e::operator::Operator;
use benchkite_e2e::sim::buildkite_rate_limit;
use benchkite_e2e::{TestNamespace, client, wait_until};
use buildkite_sim::InfraFailure;
use buildkite_sim::config::{EndpointFault, FaultConfig, OutageConfig, OutageMode, RateLimitConfig, WebhookDelivery};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Builds run 0.2–0.5 s: long enough to be in flight when things break.
const JOB_SLEEP_MS: u64 = 300;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Waits until `n` jobs are finished; on a timeout, audits and prints the figures first.
async fn settle(client: &Client, rig: &ChaosRig, n: usize, timeout: Duration, f: &mut Figures) -> Result<()> {
    if let Err(e) = rig.wait_all_finished(n, timeout).await {
        f.add("settled", "NO");
        if let Err(audit) = finish(client, rig, n, f, &[]).await {
            eprintln!("chaos: audit after the timeout: {audit:#}");
        }
        return Err(e);
    }
    Ok(())
}

/// Audits the rig's jobs against the simulator's builds, scans for the canaries, prints the
/// figures and fails on anything lost, duplicated, misreported or leaked.
async fn finish(client: &Client, rig: &ChaosRig, n: usize, f: &mut Figures, extra: &[(String, String)]) -> Result<()> {
    let api: Api<KernelJob> = rig.ns.api();
    let jobs = api.list(&ListParams::default()).await?.items;
    let builds = rig.builds().await?;
    let a = audit(&jobs, &builds, true);
    a.figures(f);
    let scan = scan_for_secrets(client, rig, &[rig.ns.name()], extra).await?;
    scan.figures(f);
    let panics = rig.log_lines("panicked").len();
    f.add("controller_starts", rig.starts).add("panics", panics);
    f.print();
    ensure!(a.jobs == n, "{} jobs exist, {n} were created", a.jobs);
    a.ensure_clean()?;
    scan.ensure_clean()?;
    ensure!(panics == 0, "the controller panicked: {:?}", rig.log_lines("panicked"));
    Ok(())
}

/// 1. Crash consistency: jobs submitted while the controller is SIGKILLed at random moments
/// (and a few builds lose their agent): exactly one build per attempt, every job in the
/// phase its build implies, none stuck.
#[tokio::test]
#[ignore]
async fn crash_consistency_under_random_sigkills() -> Result<()> {
    let n = pick(300, 1000);
    let kills = pick(10, 30);
    let infra = pick(6, 20);
    let (mut rng, seed) = Rng::from_env();
    println!("chaos crash-consistency: seed {seed} (BENCHKITE_CHAOS_SEED repeats it), {n} jobs, {kills} kills");
    let started = Instant::now();
    let opts = RigOptions {
        agents: 24,
        // Buildkite's limits (200 per organization, 50 per user) on a 5 s window: the rig's
        // one token may send 600 requests a minute, so a few hundred jobs settle in minutes.
        rate: buildkite_rate_limit(5.0),
        extra_args: strings(&["--buildkite-rate-limit-window-seconds", "5"]),
        ..Default::default()
    };
    let (client, mut rig) = ChaosRig::start("chaos-crash", opts).await?;
    rig.sim.inject_infra_failures(
        infra,
        Some(&rig.queue),
        InfraFailure::parse("agent_lost").map_err(anyhow::Error::msg)?,
    );
    let api: Api<KernelJob> = rig.ns.api();
    let queue = rig.queue.clone();
    let submit = create_jobs(&api, "c", &queue, 0..n, JOB_SLEEP_MS);
    // Kill while builds are being created: after a random number of new builds (the
    // controller needs a moment to start and look up what its predecessor did), at a random
    // moment after that.
    let per_kill = (n / (kills as usize + 2)).max(2) as u64;
    let killer = async {
        let mut killed = 0;
        while killed < kills {
            let base = rig.sim.counters().endpoint(CREATE).status(201);
            let want = base + 1 + rng.next_u64() % per_kill;
            let _ = wait_until("builds being created", Duration::from_secs(60), || async {
                Ok((rig.sim.counters().endpoint(CREATE).status(201) >= want).then_some(()))
            })
            .await;
            tokio::time::sleep(rng.millis(0, 400)).await;
            if let Some(op) = &rig.op {
                op.kill();
            }
            killed += 1;
            // Down for a moment, sometimes not at all.
            tokio::time::sleep(rng.millis(0, 1500)).await;
            rig.restart_controller()?;
        }
        anyhow::Ok(killed)
    };
    let (submitted, killed) = tokio::join!(submit, killer);
    submitted?;
    let killed = killed?;
    let submit_took = started.elapsed();
    let mut f = Figures::new("crash-consistency");
    f.add("seed", seed)
        .add("kills", killed)
        .add("injected_agent_lost", infra)
        .add("submit_and_kill_s", submit_took.as_secs())
        .add("builds_when_kills_ended", rig.sim.counters().endpoint(CREATE).status(201));
    settle(&client, &rig, n, Duration::from_secs(pick(240, 900)), &mut f).await?;
    finish(&client, &rig, n, &mut f, &[]).await?;
    println!("chaos crash-consistency: took {:?}", started.elapsed());
    ensure!(killed >= 10, "only {killed} kills");
    // A lost agent is retried inside its build first (the managed pipeline's
    // `retry.automatic` rule for exit -1 without a signal, docs "Retry"): only a build whose
    // automatic retries are used up fails and gets another KernelJob attempt. So every
    // injected failure shows as one lost try, and every build is one attempt (checked by
    // the audit: builds == attempts, no duplicates).
    let builds = rig.builds().await?;
    let tries: Vec<&serde_json::Value> = builds.iter().flat_map(benchkite_e2e::sim::script_jobs).collect();
    let lost = tries.iter().filter(|j| j["exit_status"] == -1 && j["signal"].is_null()).count();
    let retried_in_build = tries.iter().filter(|j| j["retried"] == true).count();
    println!("chaos crash-consistency: {lost} lost tries, {retried_in_build} retried inside their build");
    ensure!(lost == infra as usize, "{lost} lost tries for {infra} injected agent losses");
    ensure!(retried_in_build > 0, "no lost try was retried inside its build");
    let attempts: usize = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|j| j.status.as_ref())
        .map(|s| s.attempts.len())
        .sum();
    ensure!(rig.sim.counters().endpoint(CREATE).status(201) as usize == attempts, "one build per KernelJob attempt");
    rig.delete().await
}

/// 2. Buildkite outage: a full outage while jobs are being created and run, then 5% 5xx
/// and 5% dropped connections: every job completes, none fails because of it, and the
/// controller's request rate falls during the outage.
#[tokio::test]
#[ignore]
async fn buildkite_outage_and_faults() -> Result<()> {
    let n = pick(200, 200);
    let n_faults = pick(120, 200);
    let outage = Duration::from_secs(pick(20, 60));
    let started = Instant::now();
    let opts = RigOptions {
        agents: 24,
        // Buildkite's limits on a 5 s window (the per-user limit binds: 600 a minute).
        rate: buildkite_rate_limit(5.0),
        extra_args: strings(&["--buildkite-rate-limit-window-seconds", "5"]),
        ..Default::default()
    };
    let (client, rig) = ChaosRig::start("chaos-outage", opts).await?;
    let api: Api<KernelJob> = rig.ns.api();

    // Phase A: the outage starts while the burst is being submitted.
    create_jobs(&api, "o", &rig.queue, 0..n, JOB_SLEEP_MS).await?;
    let window = Duration::from_secs(6);
    let before0 = rig.sim.counters().total;
    tokio::time::sleep(window).await;
    let before1 = rig.sim.counters().total;
    let rate_before = rate(before0, before1, window);
    let builds_before = rig.sim.counters().endpoint(CREATE).status(201);
    rig.sim.start_outage(OutageConfig {
        duration_secs: outage.as_secs_f64(),
        mode: OutageMode::Unavailable,
        include_storage: true,
    });
    let t0 = Instant::now();
    // Skip the first seconds (requests already in flight, first retries).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during0 = rig.sim.counters();
    let measured = outage.saturating_sub(Duration::from_secs(4));
    tokio::time::sleep(measured).await;
    let during1 = rig.sim.counters();
    let rate_during = rate(during0.total, during1.total, measured);
    let outage_503 = rig.sim.counters().with_status(503);
    tokio::time::sleep(outage.saturating_sub(t0.elapsed())).await;
    rig.sim.end_outage();
    let outage_end = Instant::now();
    let mut f = Figures::new("buildkite-outage");
    settle(&client, &rig, n, Duration::from_secs(300), &mut f).await?;
    let recovered = outage_end.elapsed();
    f.add("outage_s", outage.as_secs())
        .add("builds_before_outage", builds_before)
        .add("req_per_s_before", format!("{rate_before:.1}"))
        .add("req_per_s_during", format!("{rate_during:.2}"))
        .add("answered_503", outage_503)
        .add("during_by_endpoint", endpoint_delta(&during0, &during1))
        .add("all_done_after_outage_s", recovered.as_secs());

    // Phase B: 5% 5xx and 5% dropped connections on every endpoint.
    let fault = EndpointFault { error_rate: 0.05, error_status: 502, drop_rate: 0.05, ..Default::default() };
    rig.sim.set_faults(FaultConfig { default: fault, ..Default::default() });
    let t1 = Instant::now();
    create_jobs(&api, "f", &rig.queue, 0..n_faults, JOB_SLEEP_MS).await?;
    settle(&client, &rig, n + n_faults, Duration::from_secs(400), &mut f).await?;
    rig.sim.set_faults(FaultConfig::default());
    let counters = rig.sim.counters();
    f.add("faults_phase_s", t1.elapsed().as_secs())
        .add("answered_502", counters.with_status(502))
        .add("dropped", counters.with_status(0));
    finish(&client, &rig, n + n_faults, &mut f, &[]).await?;
    println!("chaos buildkite-outage: took {:?}", started.elapsed());
    ensure!(rate_before > 0.5, "too little traffic before the outage to compare ({rate_before:.2}/s)");
    ensure!(
        rate_during < rate_before / 2.0,
        "the controller did not back off: {rate_during:.2} requests/s during the outage, {rate_before:.2} before"
    );
    ensure!(counters.with_status(0) > 0 && counters.with_status(502) > 0, "faults were injected");
    rig.delete().await
}

/// 3. Throttling: the simulator's limit drops to a quarter mid-run without telling the
/// controller: it adapts from the RateLimit headers and never sends a request after a 429
/// before RateLimit-Reset.
#[tokio::test]
#[ignore]
async fn throttling_mid_run() -> Result<()> {
    let n = pick(60, 200);
    let started = Instant::now();
    let window = 10.0;
    let opts = RigOptions {
        webhooks: false,
        poll_secs: 2,
        // Buildkite's 4:1 ratio of organization to user limit; the user limit (the rig's
        // one token) binds: 40 per 10 s, then 10.
        rate: RateLimitConfig { org_limit: 160, user_limit: 40, window_secs: window },
        extra_args: strings(&["--buildkite-requests-per-minute", "40", "--buildkite-rate-limit-window-seconds", "10"]),
        ..Default::default()
    };
    let (client, rig) = ChaosRig::start("chaos-throttle", opts).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let create = create_jobs(&api, "t", &rig.queue, 0..n, JOB_SLEEP_MS);
    let lower = async {
        // Lower it once the controller is busy creating builds.
        let busy = wait_until("a dozen builds created", Duration::from_secs(60), || async {
            Ok((rig.sim.counters().endpoint(CREATE).status(201) >= 12).then_some(()))
        })
        .await;
        let before = rig.sim.rate_limit_stats();
        rig.sim.set_rate_limit(RateLimitConfig { org_limit: 40, user_limit: 10, window_secs: window }, false);
        (busy, before)
    };
    let (created, (busy, before)) = tokio::join!(create, lower);
    created?;
    busy?;
    let mut f = Figures::new("throttling");
    settle(&client, &rig, n, Duration::from_secs(pick(240, 600)), &mut f).await?;
    let stats = rig.sim.rate_limit_stats();
    f.add("limit", "40→10/10s")
        .add("counted", stats.counted)
        .add("counted_before_change", before.counted)
        .add("answered_429", stats.rejected)
        .add("windows_with_429", stats.windows_with_429)
        .add("after_429_before_reset", stats.after_429_before_reset)
        .add("in_flight_at_429", stats.in_flight_at_429)
        .add("requests_per_job", format!("{:.2}", stats.counted as f64 / n as f64));
    finish(&client, &rig, n, &mut f, &[]).await?;
    println!("chaos throttling: took {:?}", started.elapsed());
    ensure!(
        stats.after_429_before_reset == 0,
        "{} requests sent after a 429 before the reset",
        stats.after_429_before_reset
    );
    ensure!(
        stats.windows_with_429 <= 2,
        "the controller kept hitting the lowered limit: 429s in {} windows",
        stats.windows_with_429
    );
    rig.delete().await
}

/// 4. Webhook chaos: deliveries duplicated (30%), delayed and reordered (jitter), plus
/// forged ones (bad signature, stale timestamp, missing header, wrong token, a body that
/// is not the signed one) claiming the builds failed, and replays of a valid one: final
/// states all correct, every forgery refused with 401 and counted.
#[tokio::test]
#[ignore]
async fn webhook_chaos_and_forgeries() -> Result<()> {
    let n = pick(60, 200);
    let started = Instant::now();
    let opts = RigOptions {
        poll_secs: 60,
        delivery: WebhookDelivery { delay_ms: 200, jitter_ms: 1500, duplicate_probability: 0.3, ..Default::default() },
        ..Default::default()
    };
    let (client, rig) = ChaosRig::start("chaos-webhook", opts).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let url = rig.webhook_url();
    let http = reqwest::Client::new();
    wait_until("the webhook endpoint", Duration::from_secs(30), || async {
        Ok(http.post(&url).body("{}").send().await.ok().map(|_| ()))
    })
    .await?;
    let op = rig.op.as_ref().context("controller")?;
    let refused_log_before =
        rig.log_lines("refused a webhook delivery").len() + rig.log_lines("malformed webhook").len();
    let metrics_before = scrape_metrics(op).await;
    // Longer builds: more of them in flight to forge deliveries for.
    create_jobs(&api, "w", &rig.queue, 0..n, 1500).await?;

    // Forge deliveries for real builds while they run.
    let mut forged = 0u64;
    let mut refused = 0u64;
    let mut answers = Vec::new();
    let mut replays_ignored = 0u64;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut forged_builds = std::collections::BTreeSet::new();
    while forged_builds.len() < 10 && Instant::now() < deadline {
        for b in rig.builds().await?.iter().filter(|b| b["state"] != "passed" && b["state"] != "failed") {
            let number = b["number"].as_i64().unwrap_or(0);
            if forged_builds.len() >= 10 || !forged_builds.insert(number) {
                continue;
            }
            let mut lie = b.clone();
            lie["state"] = json!("failed");
            lie["jobs"] = json!([]);
            let body = json!({"event": "build.finished", "build": lie}).to_string();
            let other = json!({"event": "build.finished", "build": b}).to_string();
            let ts = now()?;
            let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
                ("missing header", vec![]),
                ("wrong token", vec![("X-Buildkite-Token", "guessed-token".into())]),
                (
                    "bad signature",
                    vec![(
                        "X-Buildkite-Signature",
                        buildkite_sim::signature_header("not-the-secret", ts, body.as_bytes()),
                    )],
                ),
                (
                    "stale timestamp",
                    vec![(
                        "X-Buildkite-Signature",
                        buildkite_sim::signature_header(CANARY_WEBHOOK_SECRET, ts - 3600, body.as_bytes()),
                    )],
                ),
                (
                    "signature of another body",
                    vec![(
                        "X-Buildkite-Signature",
                        buildkite_sim::signature_header(CANARY_WEBHOOK_SECRET, ts, other.as_bytes()),
                    )],
                ),
                ("garbage signature", vec![("X-Buildkite-Signature", "timestamp=x,signature=zz".into())]),
            ];
            for (what, headers) in cases {
                let mut req = http.post(&url).header("X-Buildkite-Event", "build.finished").body(body.clone());
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                forged += 1;
                if status == 401 {
                    refused += 1;
                }
                ensure!(status == 401, "forged delivery ({what}) for build #{number} answered {status}: {text}");
                answers.push((format!("answer to a forged delivery ({what})"), text));
            }
            // A valid delivery of the true state, then its replay: acknowledged, ignored.
            let ts = now()?;
            let sig = buildkite_sim::signature_header(CANARY_WEBHOOK_SECRET, ts, other.as_bytes());
            for i in 0..2 {
                let resp = http
                    .post(&url)
                    .header("X-Buildkite-Event", "build.finished")
                    .header("X-Buildkite-Signature", sig.clone())
                    .body(other.clone())
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                ensure!(status == 200, "valid delivery #{i}: {status} {text}");
                if i == 1 {
                    ensure!(text.contains("duplicate"), "a replay was processed again: {text}");
                    replays_ignored += 1;
                }
                answers.push((format!("answer to a valid delivery #{i}"), text));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut f = Figures::new("webhook-chaos");
    settle(&client, &rig, n, Duration::from_secs(pick(180, 400)), &mut f).await?;
    let op = rig.op.as_ref().context("controller")?;
    let refused_logged = rig.log_lines("refused a webhook delivery").len() + rig.log_lines("malformed webhook").len()
        - refused_log_before;
    let metrics_after = scrape_metrics(op).await;
    let refused_metric = match (&metrics_before, &metrics_after) {
        (Some(b), Some(a)) => Some(
            metric_sum(a, "benchkite_webhook_deliveries", &["refused"])
                - metric_sum(b, "benchkite_webhook_deliveries", &["refused"]),
        ),
        _ => None,
    };
    let hooks = rig.sim.webhook_stats();
    let stats = &hooks.first().context("webhook")?.stats;
    f.add("forged_builds", forged_builds.len())
        .add("forged", forged)
        .add("refused_401", refused)
        .add("refused_logged", refused_logged)
        .add("refused_metric", refused_metric.map(|m| m.to_string()).unwrap_or_else(|| "n/a".into()))
        .add("replays_ignored", replays_ignored)
        .add("sim_events", stats.events)
        .add("sim_delivered", stats.delivered)
        .add("sim_duplicates", stats.duplicates)
        .add("sim_failed_attempts", stats.failed_attempts);
    finish(&client, &rig, n, &mut f, &answers).await?;
    println!("chaos webhook-chaos: took {:?}", started.elapsed());
    ensure!(forged_builds.len() >= 5, "only {} builds were in flight to forge deliveries for", forged_builds.len());
    ensure!(refused == forged, "{refused} of {forged} forged deliveries refused");
    ensure!(refused_logged as u64 >= forged, "{refused_logged} refusals logged for {forged} forged deliveries");
    if let Some(m) = refused_metric {
        ensure!(m as u64 >= forged, "the refused-deliveries metric rose by {m} for {forged} forgeries");
    }
    ensure!(stats.duplicates > 0, "the simulator duplicated no delivery");
    rig.delete().await
}

/// Agent token Secret and an AgentPool on the given nodes (of the shared fleet).
async fn agent_pool(ns: &TestNamespace, name: &str, hostnames: &[&str]) -> Result<()> {
    let secrets: Api<Secret> = ns.api();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "agent-token"}, "stringData": {"token": "x"}}))?,
        )
        .await?;
    let pools: Api<benchkite::api::AgentPool> = ns.api();
    let pool: benchkite::api::AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "queue": format!("chaos-{name}"),
            "gpuNodeSelector": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": hostnames}]},
            "gpusPerAgent": 1,
            "agent": {"image": "example.invalid/agent:chaos", "tokenSecretRef": {"name": "agent-token", "key": "token"}},
        },
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    Ok(())
}

/// Waits for exactly `want` Running agent pods of the pool.
async fn running_agents(ns: &TestNamespace, pool: &str, want: usize, timeout: Duration) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = ns.api();
    wait_until(&format!("{want} Running agents of {pool}"), timeout, || async {
        let list = pods.list(&ListParams::default().labels(&format!("benchkite.dev/pool={pool}"))).await?.items;
        let live: Vec<Pod> = list.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let running = live.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        Ok((live.len() == want && running.count() == want).then_some(live))
    })
    .await
}

/// A fleet controller (GpuNode and AgentPool controllers) for the isolation checks.
fn fleet_controller(name: &str) -> Result<Operator> {
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut args = vec!["--controllers".to_string(), "fleet".into(), "--http-addr".into(), http];
    if controller_has_flag("--metrics-addr") {
        args.extend(["--metrics-addr".to_string(), format!("127.0.0.1:{}", free_port()?)]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Operator::start(name, &argv)
}

/// 5. API server restart mid-run: the controller rides it out (same process, no crash
/// loop), no duplicate builds, no duplicate agent pods. Destructive: only against your own
/// cluster or with BENCHKITE_CHAOS_RESTART_APISERVER=1 (see [`ApiServer::find`]).
#[tokio::test]
#[ignore]
async fn apiserver_restart_mid_run() -> Result<()> {
    let mut apiserver = ApiServer::find()?;
    let n = pick(60, 200);
    let down = Duration::from_secs(pick(10, 30));
    let started = Instant::now();
    let (client, rig) = ChaosRig::start("chaos-apiserver", RigOptions::default()).await?;
    let fleet = fleet_controller(&format!("chaos-fleet-{}", rig.ns.name()))?;
    agent_pool(&rig.ns, "iso", &["gpu-l40s-0"]).await?;
    let agents = running_agents(&rig.ns, "iso", 2, Duration::from_secs(90)).await?;
    let op_pid = rig.op.as_ref().context("controller")?.pid();
    let api: Api<KernelJob> = rig.ns.api();
    create_jobs(&api, "a", &rig.queue, 0..n / 2, JOB_SLEEP_MS).await?;
    let old_pid = apiserver.pid();
    apiserver.stop()?;
    let stopped_at = Instant::now();
    // Jobs keep finishing in Buildkite while the API server is away.
    tokio::time::sleep(down).await;
    let started_again = apiserver.start()?;
    let healthy_after = ApiServer::wait_healthy(Duration::from_secs(120)).await?;
    let outage = stopped_at.elapsed();
    let client = client.clone();
    create_jobs(&api, "a", &rig.queue, n / 2..n, JOB_SLEEP_MS).await?;
    let mut f = Figures::new("apiserver-restart");
    settle(&client, &rig, n, Duration::from_secs(300), &mut f).await?;
    let after = running_agents(&rig.ns, "iso", 2, Duration::from_secs(90)).await?;
    let claims = check_node_gpu_claims(&client, &after).await?;
    let checked = check_agent_isolation(&after, 1)? + check_agent_isolation(&agents, 1)?;
    let replaced = after.iter().filter(|p| !agents.iter().any(|a| a.uid() == p.uid())).count();
    let controller_alive = process_alive(op_pid);
    let fleet_alive = process_alive(fleet.pid());
    // A controller-manager or scheduler that lost its lease later exits too: heal it.
    let died_later = apiserver.dead_components();
    if !died_later.is_empty() {
        apiserver.start()?;
    }
    f.add("apiserver_pid", format!("{old_pid}→{}", apiserver.pid()))
        .add("apiserver_down_s", format!("{:.1}", outage.as_secs_f64()))
        .add("healthy_after_start_s", format!("{:.1}", healthy_after.as_secs_f64()))
        .add("kwok_components_started", started_again.join("+"))
        .add("kwok_components_died_later", died_later.join("+"))
        .add("controller_alive", controller_alive)
        .add("fleet_controller_alive", fleet_alive)
        .add("agent_pods", after.len())
        .add("agent_pods_replaced", replaced)
        .add("node_gpu_claims", format!("{claims:?}").replace(' ', ""))
        .add("isolation_pods_checked", checked);
    finish(&client, &rig, n, &mut f, &[]).await?;
    println!("chaos apiserver-restart: took {:?}", started.elapsed());
    ensure!(controller_alive, "the KernelJob controller (pid {op_pid}) died:\n{}", tail(&rig.log_text()));
    ensure!(fleet_alive, "the fleet controller died:\n{}", tail(&fleet.log_text()));
    ensure!(rig.starts == 1, "the controller was restarted");
    rig.delete().await
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// 6. Leader failover under load: two replicas with leader election, the leader SIGKILLed
/// mid-burst; the other takes over and no build is created twice.
#[tokio::test]
#[ignore]
async fn leader_failover_under_load() -> Result<()> {
    ensure!(
        controller_has_flag("--leader-elect"),
        "the controller has no --leader-elect yet (target/debug/benchkite controller --help)"
    );
    let n = pick(100, 300);
    let started = Instant::now();
    let lease_name = "chaos-leader";
    let (client, mut rig) = ChaosRig::without_controller("chaos-leader", RigOptions::default()).await?;
    let ports = [rig.http_port(), free_port()?];
    // The simulator sends every webhook to both replicas (the Service would pick the
    // leader); the follower answers 503 and the delivery is retried there in vain.
    rig.sim.add_webhook(webhook_config(ports[1], WebhookDelivery::default()));
    let ns = rig.ns.name().to_string();
    let le_args = strings(&[
        "--leader-elect=true",
        "--leader-election-namespace",
        &ns,
        "--leader-election-lease-name",
        lease_name,
        "--leader-election-lease-seconds",
        "5",
    ]);
    let mut replicas = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("replica-{i}");
        replicas.push((name.clone(), rig.start_process(&name, *port, &le_args, &[("POD_NAME", &name)])?));
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = || async {
        Ok(leases.get_opt(lease_name).await?.and_then(|l| l.spec?.holder_identity).filter(|h| !h.is_empty()))
    };
    let first = wait_until("a leader", Duration::from_secs(60), holder).await?;
    let api: Api<KernelJob> = rig.ns.api();
    create_jobs(&api, "l", &rig.queue, 0..n * 2 / 5, JOB_SLEEP_MS).await?;
    let (_, leader) = replicas.iter().find(|(name, _)| *name == first).context("the leader is one of ours")?;
    // Mid-burst: once the leader is creating builds.
    wait_until("the leader creating builds", Duration::from_secs(60), || async {
        Ok((rig.sim.counters().endpoint(CREATE).status(201) >= 10).then_some(()))
    })
    .await?;
    let builds_at_kill = rig.sim.counters().endpoint(CREATE).status(201);
    leader.kill();
    let killed_at = Instant::now();
    let create_rest = create_jobs(&api, "l", &rig.queue, n * 2 / 5..n, JOB_SLEEP_MS);
    let takeover =
        wait_until("another leader", Duration::from_secs(60), || async { Ok(holder().await?.filter(|h| *h != first)) });
    let (created, second) = tokio::join!(create_rest, takeover);
    created?;
    let second = second?;
    let failover = killed_at.elapsed();
    let mut f = Figures::new("leader-failover");
    settle(&client, &rig, n, Duration::from_secs(300), &mut f).await?;
    f.add("first_leader", &first)
        .add("second_leader", &second)
        .add("failover_s", format!("{:.1}", failover.as_secs_f64()))
        .add("builds_at_kill", builds_at_kill);
    finish(&client, &rig, n, &mut f, &[]).await?;
    println!("chaos leader-failover: took {:?}", started.elapsed());
    drop(replicas);
    rig.delete().await
}

/// 10. Isolation on the shared fleet: an AgentPool on the L40S and MI300X nodes (one
/// agent per GPU, NVIDIA and AMD resources): no service-account token, never privileged,
/// no escalation, one GPU each, no node over-claimed; the pool's status leaks no secret.
#[tokio::test]
#[ignore]
async fn agent_pods_are_isolated_on_the_fleet() -> Result<()> {
    let started = Instant::now();
    let client = client().await?;
    benchkite_e2e::operator::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "chaos-iso").await?;
    let fleet = fleet_controller(&format!("chaos-fleet-{}", ns.name()))?;
    agent_pool(&ns, "iso", &["gpu-l40s-0", "gpu-mi300-0"]).await?;
    let pods = running_agents(&ns, "iso", 10, Duration::from_secs(120)).await?;
    let checked = check_agent_isolation(&pods, 1)?;
    let claims = check_node_gpu_claims(&client, &pods).await?;
    let mut scan = benchkite_e2e::chaos::SecretScan::default();
    let pools: Api<benchkite::api::AgentPool> = ns.api();
    for p in pools.list(&ListParams::default()).await?.items {
        scan.scan("AgentPool", &serde_json::to_string(&p)?);
    }
    for p in &pods {
        scan.scan("agent pod", &serde_json::to_string(p)?);
    }
    scan.scan("fleet controller log", &fleet.log_text());
    let mut f = Figures::new("isolation");
    f.add("agent_pods", pods.len())
        .add("pods_checked", checked)
        .add("node_gpu_claims", format!("{claims:?}").replace(' ', ""));
    scan.figures(&mut f);
    f.add("took_s", started.elapsed().as_secs());
    f.print();
    scan.ensure_clean()?;
    ensure!(claims.len() == 2, "agents on both nodes: {claims:?}");
    ensure!(checked == 10, "{checked} pods checked");
    ns.delete().await
}

/// The artifact-listing endpoint's counter key in the simulator.
const LIST_ARTIFACTS: &str = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}/artifacts";

/// The builds the simulator holds for KernelJob `ns/name`.
async fn builds_of(rig: &ChaosRig, name: &str) -> Result<Vec<benchkite_e2e::chaos::SimBuild>> {
    let key = format!("{}/{name}", rig.ns.name());
    Ok(rig
        .builds()
        .await?
        .iter()
        .map(benchkite_e2e::chaos::SimBuild::from_json)
        .filter(|b| b.job.as_deref() == Some(key.as_str()))
        .collect())
}

async fn finished_job(api: &Api<KernelJob>, name: &str, timeout: Duration) -> Result<KernelJob> {
    wait_until(&format!("KernelJob {name} finished"), timeout, || async {
        let j = api.get(name).await?;
        Ok(benchkite_e2e::chaos::phase(&j).is_some_and(|p| p.is_finished()).then_some(j))
    })
    .await
}

fn ready_reason(j: &KernelJob) -> String {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// 9. The KernelJob dead ends of issue 16: a job deleted, or timed out, while its create is
/// in flight (before the build was recorded) leaves no running build; a result artifact in
/// `error` or `expired` state ends its job; a create Buildkite refuses with 422 ends the job
/// `Failed` after bounded tries, even at the highest priority, while other jobs keep flowing.
#[tokio::test]
#[ignore]
async fn kerneljob_dead_ends_leave_nothing_running() -> Result<()> {
    let started = Instant::now();
    let filtered = buildkite_sim::config::PipelineConfig {
        slug: "chaos-filtered".into(),
        // Only `main` is built: a job naming another branch is refused with 422.
        branch_configuration: Some("main".into()),
        ..Default::default()
    };
    let opts = RigOptions { agents: 8, pipelines: vec![filtered], ..Default::default() };
    let (client, mut rig) = ChaosRig::start("chaos-deadends", opts).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let mut f = Figures::new("kerneljob-dead-ends");

    // A + B: creates answer after 6 s. One job is deleted, one times out (3 s) meanwhile.
    let slow = EndpointFault { latency_ms: 6000, ..Default::default() };
    rig.sim.set_faults(FaultConfig { endpoints: [(CREATE.to_string(), slow)].into(), ..Default::default() });
    // Builds that would run for 10 minutes unless cancelled.
    let long = 600_000;
    let deleted = benchkite_e2e::chaos::chaos_job("deleted", &rig.queue, benchkite_e2e::chaos::Outcome::Pass, long)?;
    let mut late = benchkite_e2e::chaos::chaos_job("late", &rig.queue, benchkite_e2e::chaos::Outcome::Pass, long)?;
    late.spec.timeout_seconds = Some(3);
    api.create(&PostParams::default(), &deleted).await?;
    api.create(&PostParams::default(), &late).await?;
    // Both creates are in flight (held 6 s by the simulator) once it has received two.
    wait_until("the creates in flight", Duration::from_secs(30), || async {
        Ok((rig.sim.arrivals().endpoint(CREATE).total >= 2).then_some(()))
    })
    .await?;
    ensure!(api.get("deleted").await?.finalizers().is_empty(), "no finalizer: deletion is never held");
    api.delete("deleted", &Default::default()).await?;
    let timed_out = finished_job(&api, "late", Duration::from_secs(60)).await?;
    ensure!(
        benchkite_e2e::chaos::phase(&timed_out) == Some(benchkite::api::kerneljob::Phase::TimedOut),
        "late: {:?}",
        timed_out.status
    );
    wait_until("the deleted job gone", Duration::from_secs(60), || async {
        Ok(api.get_opt("deleted").await?.is_none().then_some(()))
    })
    .await?;
    // Both creates went through: their builds must end cancelled, never left running.
    for name in ["deleted", "late"] {
        let builds = wait_until(&format!("the build of {name} cancelled"), Duration::from_secs(60), || async {
            let b = builds_of(&rig, name).await?;
            Ok((!b.is_empty() && b.iter().all(|b| b.state == "canceled" || b.state == "canceling")).then_some(b))
        })
        .await
        .with_context(|| format!("{name}: a build created before it was recorded is still running"))?;
        f.add(&format!("{name}_builds"), builds.len());
    }
    rig.sim.set_faults(FaultConfig::default());

    // C: result.json poisoned after the build passed, before the controller reads it (every
    // artifact listing is answered 5 s after it was sent): the job ends, naming the state.
    let slow_listing = EndpointFault { latency_ms: 5000, ..Default::default() };
    rig.sim.set_faults(FaultConfig {
        endpoints: [(LIST_ARTIFACTS.to_string(), slow_listing)].into(),
        ..Default::default()
    });
    for state in ["error", "expired"] {
        let name = format!("poison-{state}");
        let j = benchkite_e2e::chaos::chaos_job(&name, &rig.queue, benchkite_e2e::chaos::Outcome::Artifact, 50)?;
        api.create(&PostParams::default(), &j).await?;
        let key = format!("{}/{name}", rig.ns.name());
        let id = wait_until(&format!("the build of {name} passed"), Duration::from_secs(60), || async {
            Ok(rig.builds().await?.into_iter().find_map(|b| {
                (b["meta_data"]["benchkite.dev/kerneljob"].as_str() == Some(key.as_str()) && b["state"] == "passed")
                    .then(|| b["id"].as_str().map(str::to_string))
                    .flatten()
            }))
        })
        .await?;
        benchkite_e2e::chaos::set_artifacts_state(&rig.sim, &id, state).await?;
    }
    for state in ["error", "expired"] {
        let j = finished_job(&api, &format!("poison-{state}"), Duration::from_secs(120)).await?;
        let s = j.status.clone().unwrap_or_default();
        ensure!(
            s.phase == benchkite::api::kerneljob::Phase::Failed
                && ready_reason(&j) == "ResultMissing"
                && s.message.contains(state),
            "poison-{state}: {:?} {} {}",
            s.phase,
            ready_reason(&j),
            s.message
        );
    }
    rig.sim.set_faults(FaultConfig::default());

    // D: a create refused with 422 at the highest priority, among normal jobs.
    let before_422 = rig.sim.counters().endpoint(CREATE).status(422);
    let mut refused = benchkite_e2e::chaos::chaos_job("refused", &rig.queue, benchkite_e2e::chaos::Outcome::Pass, 50)?;
    refused.spec.pipeline = Some("chaos-filtered".into());
    refused.spec.branch = Some("feature/not-main".into());
    refused.spec.priority = 1000;
    api.create(&PostParams::default(), &refused).await?;
    create_jobs(&api, "flow", &rig.queue, 0..20, JOB_SLEEP_MS).await?;
    let j = finished_job(&api, "refused", Duration::from_secs(180)).await?;
    let s = j.status.clone().unwrap_or_default();
    let refusals = rig.sim.counters().endpoint(CREATE).status(422) - before_422;
    ensure!(
        s.phase == benchkite::api::kerneljob::Phase::Failed
            && ready_reason(&j) == "BuildRefused"
            && s.message.contains("422"),
        "refused: {:?} {} {}",
        s.phase,
        ready_reason(&j),
        s.message
    );
    ensure!(refusals == 3, "{refusals} creates refused, expected the bounded 3");
    ensure!(!s.message.contains(benchkite_e2e::chaos::CANARY_API_TOKEN), "the token leaked into the status");
    let submitted = s.conditions.iter().find(|c| c.type_ == "Submitted").map(|c| c.status.clone());
    ensure!(submitted.as_deref() == Some("False"), "Submitted={submitted:?} for a job that never had a build");
    // Everything else flowed.
    let total = 2 + 2 + 1 + 20 - 1; // `deleted` is gone
    settle(&client, &rig, total, Duration::from_secs(300), &mut f).await?;
    let flowed = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|j| j.name_any().starts_with("flow"))
        .filter(|j| benchkite_e2e::chaos::phase(j).is_some_and(|p| p.is_finished()))
        .count();
    ensure!(flowed == 20, "{flowed} of 20 normal jobs finished");

    // E: a running job deleted while no controller runs (no finalizer holds the deletion):
    // the next controller finds its build by listing the pipeline's unfinished builds and
    // cancels it.
    let j = benchkite_e2e::chaos::chaos_job("unwatched", &rig.queue, benchkite_e2e::chaos::Outcome::Pass, long)?;
    api.create(&PostParams::default(), &j).await?;
    wait_until("the build of `unwatched` running", Duration::from_secs(60), || async {
        let b = builds_of(&rig, "unwatched").await?;
        Ok(b.iter().any(|b| b.state == "running").then_some(()))
    })
    .await?;
    if let Some(op) = rig.op.take() {
        op.kill();
    }
    api.delete("unwatched", &Default::default()).await?;
    wait_until("`unwatched` gone with no controller running", Duration::from_secs(30), || async {
        Ok(api.get_opt("unwatched").await?.is_none().then_some(()))
    })
    .await?;
    let at_restart: Vec<String> = builds_of(&rig, "unwatched").await?.iter().map(|b| b.state.clone()).collect();
    rig.restart_controller()?;
    let cancelled =
        wait_until("the build of `unwatched` cancelled after the start", Duration::from_secs(90), || async {
            let b = builds_of(&rig, "unwatched").await?;
            Ok((!b.is_empty() && b.iter().all(|b| b.state == "canceled" || b.state == "canceling")).then_some(b.len()))
        })
        .await
        .with_context(|| format!("the build's states at the restart: {at_restart:?}"))?;
    f.add("deleted_unwatched_builds_cancelled", cancelled);
    // The restarted controller runs jobs (its cache loaded the finished, refused and
    // timed-out jobs above).
    create_jobs(&api, "after", &rig.queue, 0..1, JOB_SLEEP_MS).await?;
    let j = finished_job(&api, "after000", Duration::from_secs(120)).await?;
    ensure!(
        benchkite_e2e::chaos::phase(&j).is_some_and(|p| p.is_finished()),
        "after000 after the restart: {:?}",
        j.status
    );
    f.add("create_422", refusals).add("flow_finished", flowed).add("took_s", started.elapsed().as_secs());
    f.print();
    rig.delete().await
}

/// 10. A restart with 3,000 finished builds in the recovery look-up's window: jobs created
/// while no controller ran must be looked up (their builds may exist) before they are
/// created. The pipeline-wide listing is truncated; the look-up must still finish with
/// bounded requests, and no job is stuck or gets a second build.
#[tokio::test]
#[ignore]
async fn recovery_look_up_with_three_thousand_builds_in_its_window() -> Result<()> {
    let n = pick(30, 100);
    let fillers = 3000;
    let opts = RigOptions {
        agents: 8,
        // A 1 s window (both limits on): the fillers are created in about a minute.
        rate: buildkite_rate_limit(1.0),
        extra_args: strings(&["--buildkite-rate-limit-window-seconds", "1"]),
        user_pipeline: Some("busy".into()),
        ..Default::default()
    };
    let (client, mut rig) = ChaosRig::without_controller("chaos-recovery", opts).await?;
    let api: Api<KernelJob> = rig.ns.api();
    // Jobs created while no controller runs: after it starts, nobody knows if their builds exist.
    for i in 0..n {
        let mut j =
            benchkite_e2e::chaos::chaos_job(&format!("r{i:03}"), &rig.queue, benchkite_e2e::chaos::Outcome::Pass, 50)?;
        j.spec.pipeline = Some("busy".into());
        api.create(&PostParams::default(), &j).await?;
    }
    rig.sim.set_agents(&rig.queue, 0)?;
    let t0 = Instant::now();
    let created = benchkite_e2e::chaos::fill_pipeline(&rig.sim, "busy", fillers).await?;
    let fill_s = t0.elapsed().as_secs();
    rig.sim.set_agents(&rig.queue, 8)?;
    let lists_key = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds";
    let before = rig.sim.counters().endpoint(lists_key).total;
    rig.restart_controller()?;
    let t1 = Instant::now();
    let mut f = Figures::new("recovery-3000");
    settle(&client, &rig, n, Duration::from_secs(300), &mut f).await?;
    let lists = rig.sim.counters().endpoint(lists_key).total - before;
    let looked_up = rig.log_lines("recovery look-up").len();
    f.add("fillers", created)
        .add("fill_s", fill_s)
        .add("all_finished_s", t1.elapsed().as_secs())
        .add("list_requests", lists)
        .add("recovery_rounds", looked_up);
    // The audit of the jobs' own builds (the fillers belong to no job by design).
    let jobs = api.list(&ListParams::default()).await?.items;
    let ours: Vec<serde_json::Value> = rig
        .builds()
        .await?
        .into_iter()
        .filter(|b| b["branch"].as_str().is_some_and(|br| !br.starts_with("filler-")))
        .collect();
    let a = audit(&jobs, &ours, true);
    a.figures(&mut f);
    f.print();
    ensure!(a.jobs == n, "{} jobs exist, {n} were created", a.jobs);
    a.ensure_clean()?;
    // One truncated listing, then one narrow request per job, plus the poller's listings.
    let bound = 1 + n as u64 + 2 * t1.elapsed().as_secs().div_ceil(5) + 10;
    ensure!(lists <= bound, "{lists} build listings for {n} jobs (bound {bound})");
    rig.delete().await
}
