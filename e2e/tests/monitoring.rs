//! Issue 22 acceptance: the dashboards and alert rules the chart ships, against a real
//! Prometheus (built from Go modules: `e2e/cluster/build-binaries --prometheus`) scraping a
//! running controller.
//!
//! The controller runs the fleet and KernelJob controllers of the demo (a simulator queue, a
//! certifying pool with a result cache on a 4-GPU node whose agents the e2e kubelet runs) and
//! is driven through what the dashboards show: jobs of two submitters, a cache hit, a job
//! retried after lost agents, REST 5xx answers, a spent GraphQL budget, a refused webhook and
//! a slot failing certification. Then every target of every dashboard panel must return data
//! over the run, every rule of `charts/benchkite/files/alerts.yaml` must load healthy, every
//! alert expression's data queries must return data, and the two alerts whose condition the
//! run created must be active.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use benchkite::api::kerneljob::Phase;
use benchkite::api::{GpuNode, KernelJob};
use benchkite_e2e::jobrig::{JobRig, RigOptions};
use benchkite_e2e::nodes::TestNode;
use benchkite_e2e::operator::install_crds;
use benchkite_e2e::promql::data_queries;
use benchkite_e2e::synthetic::config;
use benchkite_e2e::{TestNamespace, client, e2e_dir, free_port, repo_root, wait_until};
use buildkite_sim::InfraFailure;
use buildkite_sim::config::{EndpointFault, FaultConfig};
use buildkite_sim::gpu::GpuProfile;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

/// The directory of `prometheus` and `promtool`: `$BENCHKITE_PROMETHEUS_DIR` (make sets it),
/// else the cached build. Missing binaries fail the test: it never passes by skipping.
fn prometheus_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("BENCHKITE_PROMETHEUS_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    let out = Command::new(repo_root().join("e2e/cluster/build-binaries"))
        .args(["--prometheus", "--cached"])
        .output()
        .context("running e2e/cluster/build-binaries --prometheus --cached")?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success() && !dir.is_empty(),
        "prometheus is not built: run `e2e/cluster/build-binaries --prometheus` (make test does) or set BENCHKITE_PROMETHEUS_DIR"
    );
    Ok(PathBuf::from(dir))
}

/// A Prometheus on loopback scraping `target` every second and evaluating `rules` every
/// second. Killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(bin: &Path, dir: &Path, target: &str, rules: &Path) -> Result<Prometheus> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("prometheus.yml");
        let yaml = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{"job_name": "benchkite", "static_configs": [{"targets": [target]}]}],
        });
        std::fs::write(&config, serde_yaml::to_string(&yaml)?)?;
        let port = free_port()?;
        let log = dir.join("prometheus.log");
        let child = Command::new(bin.join("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // The UI needs assets the module build leaves out; it is not used.
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting prometheus")?;
        let p = Prometheus { child, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), log };
        let ready = format!("{}/-/ready", p.url);
        wait_until("prometheus ready", Duration::from_secs(60), || async {
            Ok(p.http.get(&ready).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await
        .with_context(|| p.log_text())?;
        Ok(p)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let res = self.http.get(format!("{}/api/v1/{path}", self.url)).query(query).send().await?;
        let body: Value = res.json().await?;
        ensure!(body["status"] == "success", "prometheus {path} {query:?}: {body}");
        Ok(body["data"].clone())
    }

    /// The value of `expr` now, summed over its series (`None`: no series or no finite value).
    async fn instant(&self, expr: &str) -> Result<Option<f64>> {
        let data = self.api("query", &[("query", expr.to_string())]).await?;
        let values: Vec<f64> = data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
            .filter(|v| v.is_finite())
            .collect();
        Ok((!values.is_empty()).then(|| values.iter().sum()))
    }

    /// The samples of `expr` over [start, now] at 1 s steps: (series labels, finite values).
    async fn range(&self, expr: &str, start: f64) -> Result<Vec<(Value, usize)>> {
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        let data = self
            .api(
                "query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", format!("{start}")),
                    ("end", format!("{now}")),
                    ("step", "1".into()),
                ],
            )
            .await?;
        let series = data["result"].as_array().cloned().unwrap_or_default();
        Ok(series
            .into_iter()
            .map(|s| {
                let finite = s["values"]
                    .as_array()
                    .map(|vs| {
                        vs.iter()
                            .filter(|v| v[1].as_str().and_then(|x| x.parse::<f64>().ok()).is_some_and(f64::is_finite))
                            .count()
                    })
                    .unwrap_or(0);
                (s["metric"].clone(), finite)
            })
            .collect())
    }
}

/// A dashboard query as Grafana sends it, for the whole run: `$__rate_interval` is a window
/// of several scrapes, the variables select everything.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$namespace", ".*")
        .replace("$pool", ".*")
        .replace("$controller", ".*")
}

/// Every (dashboard, panel, expr, instant) the chart ships.
fn dashboard_targets() -> Result<Vec<(String, String, String, bool)>> {
    let dir = repo_root().join("charts/benchkite/files/dashboards");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.collect::<std::io::Result<_>>()?;
    files.sort_by_key(|e| e.file_name());
    for entry in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(entry.path())?)
            .with_context(|| format!("{}", entry.path().display()))?;
        let title = d["title"].as_str().unwrap_or_default().to_string();
        let panels = d["panels"].as_array().cloned().unwrap_or_default();
        let nested = panels.iter().flat_map(|p| p["panels"].as_array().cloned().unwrap_or_default());
        for p in panels.iter().cloned().chain(nested) {
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                let expr = t["expr"].as_str().context("a target without expr")?.to_string();
                let instant = t["instant"].as_bool().unwrap_or(false);
                out.push((title.clone(), p["title"].as_str().unwrap_or_default().to_string(), expr, instant));
            }
        }
    }
    ensure!(out.len() >= 40, "only {} dashboard targets found in {}", out.len(), dir.display());
    Ok(out)
}

fn alert_rules() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo_root().join("charts/benchkite/files/alerts.yaml"))?;
    let file: Value = serde_yaml::from_str(&text)?;
    let mut out = Vec::new();
    for g in file["groups"].as_array().context("groups")? {
        for r in g["rules"].as_array().context("rules")? {
            let name = r["alert"].as_str().context("a rule without alert")?;
            out.push((name.to_string(), r["expr"].as_str().context("expr")?.to_string()));
        }
    }
    Ok(out)
}

fn job(name: &str, submitter: &str, kernel: &str, seed: u64, retries: u32) -> Result<KernelJob> {
    let c = config(kernel)?;
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name, "labels": {"benchkite.dev/submitter": submitter}},
        "spec": {
            "pool": "p", "mode": "benchmark", "lang": "py", "main": "eval.py", "sources": c["sources"],
            "tests": c["tests"], "benchmarks": c["benchmarks"], "rankingBy": "mean", "seed": seed,
            "retries": retries,
            "testTimeoutSeconds": 60, "benchmarkTimeoutSeconds": 60, "rankedTimeoutSeconds": 60,
        },
    }))?)
}

async fn finished(api: &Api<KernelJob>, name: &str) -> Result<KernelJob> {
    wait_until(&format!("KernelJob {name} finished"), Duration::from_secs(180), || async {
        let j = api.get(name).await?;
        Ok(j.status.as_ref().is_some_and(|s| s.phase.is_finished()).then_some(j))
    })
    .await
}

#[tokio::test]
async fn every_panel_and_alert_returns_data_from_a_real_prometheus() -> Result<()> {
    let bin = prometheus_dir()?;
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "monitoring").await?;
    let id = ns.name().to_string();
    let node = format!("{id}-gpu");
    let _node = TestNode::create(&client, &node, &id, "64", "256Gi", 4).await?;
    let queue = format!("q-{id}");
    let mut cfg = benchkite_e2e::sim::queue_config(&queue, 0)?;
    benchkite_e2e::sim::grant_graphql(&mut cfg);
    let opts = RigOptions {
        webhook_secret: Some("monitoring-webhook-secret"),
        args: vec!["--poll-interval-seconds".into(), "1".into()],
        metrics: true,
        agent_metrics: true,
    };
    let rig = JobRig::start(&ns, "monitoring", cfg, opts).await?;
    let metrics = rig.metrics_addr.clone().context("the rig's metrics address")?;
    let start = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let prom = Prometheus::start(
        &bin,
        &e2e_dir().join("monitoring").join(&id),
        &metrics,
        &repo_root().join("charts/benchkite/files/alerts.yaml"),
    )
    .await?;

    // The demo's pool, certifying, with a result cache; slot 3 flips two close kernels and
    // fails certification.
    let flip = GpuProfile {
        kernel_factors: [("k_mid_a".to_string(), 0.9), ("k_mid_b".to_string(), 1.1)].into(),
        ..Default::default()
    };
    let kubelet = benchkite_e2e::synthetic::certifying_pool(
        &client,
        &ns,
        &rig.sim,
        &node,
        &queue,
        [(3, flip)].into(),
        json!({"certification": {"canary": {"everyEvaluations": 100}}, "resultCache": {}}),
    )
    .await?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    wait_until("3 slots certified and 1 failed", Duration::from_secs(180), || async {
        let c = gpunodes.get(&node).await?.status.and_then(|s| s.certification).unwrap_or_default();
        Ok((c.certified == 3 && c.failed == 1).then_some(()))
    })
    .await
    .with_context(|| format!("{:#?}\n{}", kubelet.agents(), rig.op.log_text()))?;

    // Work for the queue and KernelJob dashboards: a burst of two submitters (more jobs than
    // agents, so some wait), then a cache hit.
    let jobs: Api<KernelJob> = ns.api();
    let mut names = Vec::new();
    for (i, submitter) in ["alice", "alice", "alice", "alice", "alice", "bob", "bob"].iter().enumerate() {
        let name = format!("{submitter}-{i}");
        jobs.create(&PostParams::default(), &job(&name, submitter, "k_slow", i as u64, 0)?).await?;
        names.push(name);
    }
    // A certifying pool's cache serves results measured on a certified slot: the job
    // repeated is one that ran on one.
    let mut on_certified = None;
    for (seed, name) in names.iter().enumerate() {
        let j = finished(&jobs, name).await?;
        let s = j.status.context("status")?;
        ensure!(s.phase == Phase::Succeeded, "{name}: {:?} {}", s.phase, s.message);
        let slot = s.result.and_then(|r| r.system).and_then(|y| y.fingerprint).map(|f| f.slot);
        if slot.is_some_and(|slot| slot != "3") {
            on_certified.get_or_insert(seed as u64);
        }
    }
    let seed = on_certified.context("no job of the burst ran on a certified slot")?;
    jobs.create(&PostParams::default(), &job("again", "bob", "k_slow", seed, 0)?).await?;
    let again = finished(&jobs, "again").await?.status.context("status")?;
    ensure!(again.cached_from.is_some(), "the identical job was not served from the cache: {again:?}");

    // A job whose first build loses its agent three times (Buildkite's automatic retries
    // used up): benchkite retries it once.
    let lost = InfraFailure::parse("agent_lost").map_err(anyhow::Error::msg)?;
    rig.sim.inject_infra_failures(3, Some(&queue), lost);
    jobs.create(&PostParams::default(), &job("retried", "bob", "k_fast", 99, 1)?).await?;
    let retried = finished(&jobs, "retried").await?.status.context("status")?;
    ensure!(retried.attempt_count == 2, "{retried:?}");

    // Buildkite answers 502 to every request for 5 s while a job is created: the create is
    // ambiguous, the client looks it up and retries the look-ups with backoff. Then
    // GraphQL's window is spent (a 429, then REST carries the creates).
    rig.sim.set_faults(FaultConfig {
        default: EndpointFault { error_rate: 1.0, error_status: 502, ..Default::default() },
        ..Default::default()
    });
    jobs.create(&PostParams::default(), &job("through-502s", "alice", "k_slow", 100, 0)?).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.sim.set_faults(FaultConfig::default());
    finished(&jobs, "through-502s").await?;
    rig.sim.spend_graphql_points(10_000_000);
    jobs.create(&PostParams::default(), &job("over-rest", "alice", "k_fast", 101, 0)?).await?;
    finished(&jobs, "over-rest").await?;

    // A token whose budget is a tenth of Buildkite's for a few jobs: requests wait for it.
    rig.sim.set_rate_limit(
        buildkite_sim::config::RateLimitConfig { org_limit: 200, user_limit: 5, window_secs: 10.0 },
        true,
    );
    for i in 0..3 {
        jobs.create(&PostParams::default(), &job(&format!("squeezed-{i}"), "bob", "k_fast", 200 + i, 0)?).await?;
    }
    for i in 0..3 {
        finished(&jobs, &format!("squeezed-{i}")).await?;
    }
    rig.sim.set_rate_limit(benchkite_e2e::sim::buildkite_rate_limit(60.0), true);

    // A webhook delivery with a wrong token.
    let res = reqwest::Client::new()
        .post(format!("http://{}/webhooks/buildkite", rig.http))
        .header("X-Buildkite-Token", "not-the-secret")
        .header("X-Buildkite-Event", "build.finished")
        .body("{}")
        .send()
        .await?;
    ensure!(res.status() == reqwest::StatusCode::UNAUTHORIZED, "a wrong token was answered {}", res.status());

    // Scrapes and rule evaluations see the end of the run.
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Every dashboard target returns data over the run.
    let mut empty = Vec::new();
    let targets = dashboard_targets()?;
    for (dashboard, panel, expr, instant) in &targets {
        let q = as_grafana_sends(expr);
        let series = prom.range(&q, start).await.with_context(|| format!("{dashboard} / {panel}: {q}"))?;
        if !series.iter().any(|(_, finite)| *finite > 0) {
            empty.push(format!("{dashboard} / {panel}: {q} -> {series:?}"));
        }
        // A stat, table or bar gauge shows the value now: it must have one at the end.
        if *instant && prom.instant(&q).await?.is_none() {
            empty.push(format!("{dashboard} / {panel} (now): {q}"));
        }
    }
    ensure!(
        empty.is_empty(),
        "{} of {} dashboard targets returned no data:\n{}",
        empty.len(),
        targets.len(),
        empty.join("\n")
    );

    // Every rule loads and evaluates healthy in Prometheus.
    let rules = alert_rules()?;
    let loaded = prom.api("rules", &[("type", "alert".into())]).await?;
    let loaded: Vec<&Value> = loaded["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    ensure!(
        loaded.len() == rules.len(),
        "Prometheus loaded {} alert rules, the file has {}",
        loaded.len(),
        rules.len()
    );
    for r in &loaded {
        ensure!(r["health"] == "ok" && r["lastError"].as_str().unwrap_or_default().is_empty(), "rule not healthy: {r}");
    }

    // Every alert expression's data queries return data: the alert watches series that exist.
    let mut missing = Vec::new();
    for (alert, expr) in &rules {
        let parts = data_queries(expr);
        ensure!(!parts.is_empty(), "{alert}: no data query in {expr}");
        for q in parts {
            let series = prom.range(&q, start).await.with_context(|| format!("{alert}: {q}"))?;
            if !series.iter().any(|(_, finite)| *finite > 0) {
                missing.push(format!("{alert}: {q}"));
            }
        }
    }
    ensure!(missing.is_empty(), "alert data queries without data:\n{}", missing.join("\n"));

    // What the run did, counted exactly: the metrics count each event once.
    let counted = [
        ("sum(benchkite_kerneljob_outcomes_total)", 14.0, "KernelJobs finished (13 ran, 1 from the cache)"),
        ("sum(benchkite_kerneljob_outcomes_total{phase=\"Succeeded\",verdict=\"passed\"})", 14.0, "passed"),
        ("sum(benchkite_kerneljob_retries_total)", 1.0, "retries"),
        ("sum(benchkite_result_cache_operations_total{result=\"hit\"})", 1.0, "cache hits"),
        ("sum(benchkite_webhook_deliveries_total{result=\"refused\"})", 1.0, "refused deliveries"),
    ];
    for (q, want, what) in counted {
        let got = prom.instant(q).await?;
        ensure!(got == Some(want), "{what}: {q} = {got:?}, expected {want}");
    }
    ensure!(
        prom.instant("sum(benchkite_buildkite_retries_total)").await?.is_some_and(|v| v >= 1.0),
        "the 502s were not retried"
    );
    ensure!(
        prom.instant("sum(benchkite_buildkite_throttled_total)").await?.is_some_and(|v| v >= 1.0),
        "no 429 counted"
    );

    // The condition this run created makes its alert active (pending: its `for` is minutes;
    // promtool's unit tests drive every alert through firing and resolving). The single
    // refused delivery among accepted ones is a stray sender, not a wrong secret: no alert.
    let want = ["BenchkiteCertificationFailed"];
    let active = wait_until("the run's alerts active", Duration::from_secs(30), || async {
        let alerts = prom.api("alerts", &[]).await?;
        let names: Vec<String> = alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect();
        Ok(want.iter().all(|w| names.iter().any(|n| n == w)).then_some(alerts))
    })
    .await?;
    ensure!(
        !active["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["labels"]["alertname"] == "BenchkiteWebhooksRefused"),
        "one refused delivery among accepted ones raised BenchkiteWebhooksRefused: {active}"
    );
    let cert = active["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == "BenchkiteCertificationFailed")
        .ok_or_else(|| anyhow!("no certification alert"))?;
    let pool_label = cert["labels"]["pool"].as_str().unwrap_or_default();
    ensure!(cert["labels"]["node"] == node.as_str() && (pool_label == "p" || pool_label.ends_with("/p")), "{cert}");
    // The controller leads and serves: no critical alert is active.
    let critical: Vec<&Value> =
        active["alerts"].as_array().into_iter().flatten().filter(|a| a["labels"]["severity"] == "critical").collect();
    if !critical.is_empty() {
        bail!("critical alerts active on a serving controller: {critical:#?}");
    }
    drop(kubelet);
    drop(prom);
    drop(rig);
    ns.delete().await
}
