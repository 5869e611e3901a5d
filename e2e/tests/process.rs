//! The controller process as the Helm chart runs it: two replicas with leader election,
//! `/metrics`, the runtime log level, and webhooks refused by a standby.
//!
//! Each test runs real `benchkite controller` processes (KernelJob controller scoped to the
//! test's namespace, Lease in that namespace) against the local cluster and the Buildkite
//! simulator, whose jobs run the real `benchkite run` on the `noop` task.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::Phase;
use benchkite_e2e::operator::{Operator, install_crds};
use benchkite_e2e::{TestNamespace, client, repo_root, wait_until};
use buildkite_sim::config::{WebhookAuth, WebhookConfig};
use buildkite_sim::{SimHandle, Simulator};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

const WEBHOOK_SECRET: &str = "e2e-process-webhook-secret-3c1d";
const CREATE: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";
const LEASE_SECONDS: u64 = 5;

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

struct Rig {
    sim: SimHandle,
    ns: TestNamespace,
    queue: String,
}

impl Rig {
    async fn new(prefix: &str, webhook_port: Option<u16>) -> Result<Rig> {
        let client = client().await?;
        install_crds(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let queue = format!("q-{}", ns.name());
        let mut cfg = benchkite_e2e::sim::queue_config(&queue, 4)?;
        if let Some(port) = webhook_port {
            cfg.webhooks.push(WebhookConfig {
                url: format!("http://127.0.0.1:{port}/webhooks/buildkite"),
                token: WEBHOOK_SECRET.into(),
                auth: WebhookAuth::Signature,
                ..Default::default()
            });
        }
        let sim = Simulator::start(cfg).await?;
        Ok(Rig { sim, ns, queue })
    }

    /// A replica: leader election on, identity `name`, Lease in the test namespace.
    fn replica(&self, name: &str, extra: &[&str]) -> Result<Operator> {
        let lease = format!("lease-{}", self.ns.name());
        let secs = LEASE_SECONDS.to_string();
        let common = benchkite_e2e::sim::kerneljob_args(&self.sim, self.ns.name());
        let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
        args.extend_from_slice(&[
            "--leader-elect=true",
            "--leader-election-namespace",
            self.ns.name(),
            "--leader-election-lease-name",
            &lease,
            "--leader-election-lease-seconds",
            &secs,
            "--poll-interval-seconds",
            "2",
        ]);
        args.extend_from_slice(extra);
        let token = self.sim.api_token();
        let envs =
            [("BUILDKITE_API_TOKEN", token.as_str()), ("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET), ("POD_NAME", name)];
        Operator::start_with_env(&format!("{}-{name}", self.ns.name()), &args, &envs)
    }

    async fn holder(&self) -> Result<Option<String>> {
        let leases: Api<Lease> = self.ns.api();
        let lease = leases.get_opt(&format!("lease-{}", self.ns.name())).await?;
        Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
    }

    async fn wait_holder(&self, want: &[&str], timeout: Duration) -> Result<String> {
        wait_until(&format!("the Lease held by one of {want:?}"), timeout, || async {
            Ok(self.holder().await?.filter(|h| want.contains(&h.as_str())))
        })
        .await
    }
}

fn noop_job(name: &str, queue: &str) -> Result<KernelJob> {
    let path = repo_root().join("tests/tasks/noop/eval.py");
    let eval = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let sources: BTreeMap<String, String> =
        [("eval.py".to_string(), eval), ("submission.py".to_string(), "# nothing\n".to_string())].into();
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {"queue": queue, "mode": "test", "lang": "py", "main": "eval.py", "sources": sources,
                 "tests": [{"size": 1}], "testTimeoutSeconds": 60},
    }))?)
}

async fn all_finished(api: &Api<KernelJob>, n: usize, timeout: Duration) -> Result<Vec<KernelJob>> {
    wait_until(&format!("{n} KernelJobs finished"), timeout, || async {
        let jobs = api.list(&Default::default()).await?.items;
        let done = jobs.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        Ok((jobs.len() == n && done == n).then_some(jobs))
    })
    .await
}

/// Builds per run id in the simulator (a run id is one attempt of one KernelJob; benchkite
/// builds each attempt on its own branch `benchkite/<instance>/<run id>`). Read through
/// `/_sim`, which is not rate limited: the test never takes requests from the controllers'
/// per-user budget.
async fn builds_per_run(sim: &SimHandle) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for b in benchkite_e2e::sim::all_builds(sim).await? {
        let run = b["branch"]
            .as_str()
            .and_then(|br| br.strip_prefix(benchkite::kerneljob::board::BRANCH_PREFIX))
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, run)| run.to_string())
            .unwrap_or_else(|| "?".into());
        *out.entry(run).or_insert(0) += 1;
    }
    Ok(out)
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_is_killed_and_no_job_gets_a_second_build() -> Result<()> {
    let rig = Rig::new("leader", None).await?;
    let a = rig.replica("replica-a", &[])?;
    let b = rig.replica("replica-b", &[])?;
    let first = rig
        .wait_holder(&["replica-a", "replica-b"], Duration::from_secs(90))
        .await
        .with_context(|| format!("{}\n{}", a.log_text(), b.log_text()))?;
    let (leader, standby, standby_name) = if first == "replica-a" { (a, b, "replica-b") } else { (b, a, "replica-a") };

    // A burst; kill the leader while it is submitting.
    let api: Api<KernelJob> = rig.ns.api();
    let n = 24;
    for i in 0..n {
        api.create(&PostParams::default(), &noop_job(&format!("job-{i:02}"), &rig.queue)?).await?;
    }
    wait_until("the leader created some builds", Duration::from_secs(60), || async {
        Ok((rig.sim.counters().endpoint(CREATE).status(201) >= 4).then_some(()))
    })
    .await?;
    let created_before = rig.sim.counters().endpoint(CREATE).status(201);
    leader.kill();
    let killed = Instant::now();
    rig.wait_holder(&[standby_name], Duration::from_secs(LEASE_SECONDS * 4)).await?;
    let takeover = killed.elapsed();
    println!(
        "leader {first} SIGKILLed after {created_before} of {n} builds; {standby_name} leads after {:.1} s (lease {LEASE_SECONDS} s)",
        takeover.as_secs_f64()
    );
    ensure!(
        takeover <= Duration::from_secs(LEASE_SECONDS + 2),
        "takeover took {takeover:?}, more than the lease duration ({LEASE_SECONDS} s) + 2 s"
    );

    let jobs = all_finished(&api, n, Duration::from_secs(180)).await?;
    let not_ok: Vec<_> = jobs
        .iter()
        .filter(|j| j.status.as_ref().map(|s| s.phase) != Some(Phase::Succeeded))
        .map(|j| format!("{}: {:?}", j.metadata.name.clone().unwrap_or_default(), j.status.as_ref().map(|s| s.phase)))
        .collect();
    ensure!(not_ok.is_empty(), "jobs not Succeeded: {not_ok:?}\n{}", standby.log_text());
    let runs = builds_per_run(&rig.sim).await?;
    let duplicates: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    println!("builds: {} for {n} jobs, duplicates: {}", runs.values().sum::<usize>(), duplicates.len());
    ensure!(duplicates.is_empty(), "attempts with more than one build: {duplicates:?}");
    ensure!(runs.len() == n, "one build per job: {} run ids for {n} jobs", runs.len());
    let creates = rig.sim.counters().endpoint(CREATE).status(201);
    ensure!(creates as usize == n, "builds created: {creates}");
    ensure!(standby.log_text().contains("acquired the leader lease"), "{}", standby.log_text());
    drop(standby);
    rig.ns.delete().await
}

#[tokio::test]
async fn a_graceful_shutdown_releases_the_lease_and_the_standby_takes_over() -> Result<()> {
    let rig = Rig::new("handover", None).await?;
    let a = rig.replica("replica-a", &[])?;
    rig.wait_holder(&["replica-a"], Duration::from_secs(90)).await.with_context(|| a.log_text())?;
    let b = rig.replica("replica-b", &[])?;
    // b stands by (the lease is held and renewed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(rig.holder().await?.as_deref() == Some("replica-a"), "a keeps the lease while b stands by");
    a.terminate();
    let asked = Instant::now();
    rig.wait_holder(&["replica-b"], Duration::from_secs(LEASE_SECONDS * 4)).await?;
    let handover = asked.elapsed();
    println!("SIGTERM → replica-b leads after {:.2} s (lease {LEASE_SECONDS} s)", handover.as_secs_f64());
    // The standby looks again when the lease would expire; a released lease is free by then.
    ensure!(handover < Duration::from_secs(LEASE_SECONDS), "handover took {handover:?}");
    wait_until("replica-a exited", Duration::from_secs(30), || async {
        Ok(a.log_text().contains("released the leader lease").then_some(()))
    })
    .await
    .with_context(|| a.log_text())?;
    drop(b);
    rig.ns.delete().await
}

#[tokio::test]
async fn metrics_log_level_and_standby_webhooks() -> Result<()> {
    let port = free_port()?;
    let rig = Rig::new("metrics", Some(port)).await?;
    let (http_a, metrics_a) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{}", free_port()?));
    let a = rig.replica("replica-a", &["--http-addr", &http_a, "--metrics-addr", &metrics_a])?;
    // A 2-core CI machine runs this next to the other suites: give the first election room,
    // and say what the replica printed when it does not take the Lease.
    rig.wait_holder(&["replica-a"], Duration::from_secs(90)).await.with_context(|| a.log_text())?;
    let (http_b, metrics_b) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let _b = rig.replica("replica-b", &["--http-addr", &http_b, "--metrics-addr", &metrics_b])?;

    let api: Api<KernelJob> = rig.ns.api();
    for i in 0..3 {
        api.create(&PostParams::default(), &noop_job(&format!("job-{i}"), &rig.queue)?).await?;
    }
    all_finished(&api, 3, Duration::from_secs(120)).await?;

    let http = reqwest::Client::new();
    let scrape = |addr: String| {
        let http = http.clone();
        async move { Ok::<_, anyhow::Error>(http.get(format!("http://{addr}/metrics")).send().await?.text().await?) }
    };
    let text = wait_until("metrics after the jobs", Duration::from_secs(20), || async {
        let text = scrape(metrics_a.clone()).await?;
        Ok(text.contains("benchkite_kerneljobs{phase=\"Succeeded\"} 3").then_some(text))
    })
    .await?;
    for needle in [
        "benchkite_leader 1",
        "benchkite_reconciles_total{controller=\"kerneljob\"}",
        "benchkite_reconcile_duration_seconds_bucket{",
        "benchkite_buildkite_requests_total{endpoint=\"create_build\",code=\"201\"} 3",
        "benchkite_builds_created_total 3",
        "benchkite_kerneljob_submit_latency_seconds_count 3",
        "benchkite_kerneljob_completion_latency_seconds_count 3",
        "benchkite_buildkite_budget_remaining_requests{",
        "benchkite_webhook_deliveries_total{result=\"accepted\"}",
        "# EOF",
    ] {
        ensure!(text.contains(needle), "leader's /metrics lacks {needle:?}:\n{text}");
    }
    let standby = scrape(metrics_b.clone()).await?;
    ensure!(standby.contains("benchkite_leader 0"), "standby's /metrics:\n{standby}");
    ensure!(!standby.contains("benchkite_kerneljobs{"), "a standby has no job gauges:\n{standby}");

    // Both are ready; only the leader takes webhooks.
    for addr in [&http_a, &http_b] {
        let code = http.get(format!("http://{addr}/readyz")).send().await?.status();
        ensure!(code == 200, "/readyz on {addr}: {code}");
    }
    let refused = http.post(format!("http://{http_b}/webhooks/buildkite")).body("{}").send().await?;
    ensure!(refused.status() == 503, "standby webhook: {}", refused.status());
    ensure!(refused.headers().contains_key("retry-after"));

    // The log level changes at runtime, and a bad filter is refused.
    let level = |addr: &String| format!("http://{addr}/loglevel");
    let before = http.get(level(&metrics_a)).send().await?.text().await?;
    ensure!(before.contains("benchkite=debug") && before.contains("info"), "the filter the harness set: {before}");
    let res = http.put(level(&metrics_a)).body("warn,benchkite=trace").send().await?;
    ensure!(res.status() == 200, "PUT /loglevel: {}", res.status());
    let after = http.get(level(&metrics_a)).send().await?.text().await?;
    ensure!(after.contains("benchkite=trace") && after.contains("warn"), "the new filter: {after}");
    let bad = http.put(level(&metrics_a)).body("benchkite=loud").send().await?;
    ensure!(bad.status() == 400, "a bad filter: {}", bad.status());
    ensure!(a.log_text().contains("log level changed at runtime"));
    rig.ns.delete().await
}
