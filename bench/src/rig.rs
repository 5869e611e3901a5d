//! What every scenario needs: the cluster, controller processes, KernelJobs, watches.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use benchkite::api::KernelJob;
use benchkite_e2e::operator::{Operator, binary};
use futures::{StreamExt, TryStreamExt};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

/// Webhook secret shared by the simulator and the controller (never printed).
pub const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// The summary the scripted executor leaves in build meta-data, like `benchkite run`.
pub const RESULT_SUMMARY: &str = r#"{"v":1,"success":true,"passed":true}"#;

/// A `result.json` for the baseline poller to download (the seeds' launcher reads it).
pub const RESULT_JSON: &str = r#"{"success":true,"error":"","system":{},"runs":{"test":{"compilation":null,"run":{"success":true,"passed":true,"command":"python eval.py test","stdout":"","stderr":"","exit_code":0,"duration":0.01,"result":{"check":"pass"}},"start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z"}}}"#;

/// Milliseconds since the Unix epoch (wall clock, comparable with the simulator's
/// timestamps: it runs in this process).
pub fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `benchkite controller --help` of the binary under test mentions `flag`.
pub fn controller_supports(flag: &str) -> bool {
    let Ok(bin) = binary() else { return false };
    std::process::Command::new(bin)
        .args(["controller", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// A controller process (killed when dropped).
pub struct Controller {
    pub op: Operator,
    /// `host:port` of `/metrics`, when the binary serves it.
    pub metrics: Option<String>,
}

/// Families of the controller's `/metrics` that say where time goes.
const TIMING_FAMILIES: [&str; 5] = [
    "benchkite_reconcile_duration_seconds",
    "benchkite_kerneljob_submit_latency_seconds",
    "benchkite_kerneljob_completion_latency_seconds",
    "benchkite_buildkite_budget_wait_seconds",
    "benchkite_buildkite_request_duration_seconds",
];

impl Controller {
    /// Count and mean (ms) of the controller's timing histograms, by series; `{}` when
    /// the binary has no `/metrics` or it does not answer.
    pub async fn timings(&self) -> Value {
        let Some(addr) = &self.metrics else { return json!({}) };
        let text = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return json!({}),
        };
        timings_from_metrics(&text)
    }
}

/// `{"<family>{labels}": {"count": n, "mean_ms": x}}` from OpenMetrics text.
pub fn timings_from_metrics(text: &str) -> Value {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        for fam in TIMING_FAMILIES {
            let Some(rest) = series.strip_prefix(fam) else { continue };
            let (kind, labels) = match rest.find('{') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let e = sums.entry(format!("{fam}{labels}")).or_default();
            match kind {
                "_sum" => e.0 = v,
                "_count" => e.1 = v,
                _ => {}
            }
        }
    }
    let out: serde_json::Map<String, Value> = sums
        .into_iter()
        .filter(|(_, (_, n))| *n > 0.0)
        .map(|(k, (sum, n))| (k, json!({"count": n, "mean_ms": sum / n * 1e3})))
        .collect();
    Value::Object(out)
}

/// Starts `benchkite controller` with `args` (plus `--http-addr http`, and `--metrics-addr`
/// on a free port when the binary has it) and waits for `/readyz`.
pub async fn start_controller(name: &str, http: &str, args: &[String], envs: &[(&str, &str)]) -> Result<Controller> {
    let http = http.to_string();
    let mut all: Vec<String> = vec!["--http-addr".into(), http.clone()];
    let metrics =
        if controller_supports("--metrics-addr") { Some(format!("127.0.0.1:{}", free_port()?)) } else { None };
    if let Some(m) = &metrics {
        all.extend(["--metrics-addr".into(), m.clone()]);
    }
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut envs = envs.to_vec();
    envs.push(("RUST_LOG", "info"));
    let op = Operator::start_with_env(name, &refs, &envs)?;
    let url = format!("http://{http}/readyz");
    let http_client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = http_client.get(&url).send().await
            && r.status().is_success()
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("controller {name} not ready after 120 s; log: {}", op.log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Jobs created in the first 5 s of a controller may have been submitted by a previous
    // one: they are looked up before anything is created. The scenarios measure the
    // steady state, so they start after that window.
    tokio::time::sleep(Duration::from_secs(6)).await;
    Ok(Controller { op, metrics })
}

/// `benchkite controller` flags for `controllers` with KernelJobs of namespace `ns`
/// against the simulator, then `extra`.
pub fn controller_args(controllers: &str, ns: &str, sim: &buildkite_sim::SimHandle, extra: &[&str]) -> Vec<String> {
    let (org, api, agent) = (sim.organization(), sim.api_url(), sim.agent_url());
    let base = ["--controllers", controllers, "--namespace", ns, "--instance", ns, "--buildkite-org", &org];
    let urls = ["--buildkite-api-url", &api, "--buildkite-agent-api-url", &agent];
    // The scenarios' jobs are scripted: they leave the summary a runner would, unsigned (the
    // bench measures the controller; signatures are e2e/tests/hostile_forgery.rs's).
    let unsigned = ["--unsigned-results=accept"];
    base.iter().chain(urls.iter()).chain(unsigned.iter()).chain(extra.iter()).map(|s| s.to_string()).collect()
}

/// A KernelJob on a raw queue with `source_bytes` of sources (at least a tiny eval.py).
pub fn kernel_job(name: &str, queue: &str, source_bytes: usize) -> Result<KernelJob> {
    let mut sources = BTreeMap::from([
        ("eval.py".to_string(), "import sys\nprint('ok')\n".to_string()),
        ("submission.py".to_string(), "def custom_kernel(x):\n    return x\n".to_string()),
    ]);
    if source_bytes > 0 {
        // Printable filler that does not compress to nothing in the payload.
        let filler: String = (0..source_bytes).map(|i| (b'a' + ((i * 7 + i / 13) % 26) as u8) as char).collect();
        sources.insert("data.py".to_string(), format!("# {filler}\n"));
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {
            "queue": queue, "mode": "test", "lang": "py", "main": "eval.py", "sources": sources,
            "tests": [{"size": 64, "seed": 1}],
        },
    }))?)
}

/// Creates KernelJobs `prefix-00000…` with `concurrency` requests in flight; returns the
/// client-side timestamp (ms) taken just before each create was sent.
pub async fn create_jobs(
    api: &Api<KernelJob>,
    prefix: &str,
    range: std::ops::Range<usize>,
    queue: &str,
    source_bytes: usize,
    concurrency: usize,
) -> Result<HashMap<String, f64>> {
    create_jobs_with(api, prefix, range, concurrency, |name| kernel_job(name, queue, source_bytes)).await
}

/// Like [`create_jobs`], each KernelJob made by `make` from its name.
pub async fn create_jobs_with(
    api: &Api<KernelJob>,
    prefix: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
    make: impl Fn(&str) -> Result<KernelJob>,
) -> Result<HashMap<String, f64>> {
    let jobs: Vec<KernelJob> = range.map(|i| make(&format!("{prefix}-{i:05}"))).collect::<Result<_>>()?;
    futures::stream::iter(jobs)
        .map(|j| async move {
            let name = j.name_any();
            let t = now_ms();
            api.create(&PostParams::default(), &j).await.with_context(|| format!("creating KernelJob {name}"))?;
            Ok::<_, anyhow::Error>((name, t))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// Creates one KernelJob now; returns (name, client timestamp ms).
pub async fn create_job(api: &Api<KernelJob>, name: &str, queue: &str) -> Result<(String, f64)> {
    let j = kernel_job(name, queue, 0)?;
    let t = now_ms();
    api.create(&PostParams::default(), &j).await.with_context(|| format!("creating KernelJob {name}"))?;
    Ok((name.to_string(), t))
}

/// First time (ms) each KernelJob of a namespace was seen finished, and its phase.
#[derive(Clone, Default)]
pub struct FinishWatch {
    seen: Arc<Mutex<HashMap<String, (f64, String)>>>,
}

impl FinishWatch {
    /// Watches the KernelJobs of `api` in the background.
    pub fn start(api: Api<KernelJob>) -> (Self, tokio::task::JoinHandle<()>) {
        let this = FinishWatch::default();
        let seen = Arc::clone(&this.seen);
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                let t = now_ms();
                let objs: Vec<KernelJob> = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                    _ => continue,
                };
                let mut g = seen.lock().unwrap_or_else(|e| e.into_inner());
                for o in objs {
                    if let Some(s) = o.status.as_ref().filter(|s| s.phase.is_finished()) {
                        g.entry(o.name_any()).or_insert((t, s.phase.as_str().to_string()));
                    }
                }
            }
        });
        (this, task)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn snapshot(&self) -> HashMap<String, (f64, String)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `n` jobs finished or `timeout` passed; returns how many finished.
    pub async fn wait(&self, n: usize, timeout: Duration) -> usize {
        self.wait_progressing(n, timeout, timeout).await
    }

    /// Like [`FinishWatch::wait`], but also gives up once no job has finished for `stall`
    /// (a run that stopped moving: waiting out the whole timeout measures nothing more).
    pub async fn wait_progressing(&self, n: usize, timeout: Duration, stall: Duration) -> usize {
        let start = Instant::now();
        let (mut last_count, mut last_change) = (self.count(), Instant::now());
        loop {
            let c = self.count();
            if c >= n || start.elapsed() >= timeout {
                return c;
            }
            if c != last_count {
                (last_count, last_change) = (c, Instant::now());
            } else if last_change.elapsed() >= stall {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Deletes every KernelJob of `api` (the controller, still running, removes finalizers);
/// after `grace` strips finalizers of those left. Waits until none is left.
pub async fn delete_all_jobs(api: &Api<KernelJob>, grace: Duration) {
    if let Err(e) = try_delete_all_jobs(api, grace).await {
        // The figures are taken already; the namespace deletion that follows retries.
        eprintln!("warning: KernelJobs not all deleted yet: {e:#}");
    }
}

/// Deletes every KernelJob of `api`, retrying what a busy API server drops (a closed
/// connection, a timeout), and strips finalizers of those left after `grace`.
async fn try_delete_all_jobs(api: &Api<KernelJob>, grace: Duration) -> Result<()> {
    let start = Instant::now();
    let give_up = grace * 4;
    loop {
        match api.delete_collection(&DeleteParams::background(), &ListParams::default()).await {
            Ok(_) => break,
            Err(e) if start.elapsed() < give_up => {
                eprintln!("bench: deleting KernelJobs: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        let left = match api.list_metadata(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) if start.elapsed() < give_up => {
                eprintln!("bench: listing KernelJobs: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > grace {
            for j in &left {
                let patch = json!({"metadata": {"finalizers": null}});
                let _ = api.patch(&j.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
            }
        }
        if start.elapsed() > give_up {
            bail!("{} KernelJobs still there after {:?}", left.len(), give_up);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The bench's own namespace `bench-<prefix>-<random>`, labelled like test namespaces.
pub async fn namespace(client: &Client, prefix: &str) -> Result<benchkite_e2e::TestNamespace> {
    benchkite_e2e::TestNamespace::create(client, &format!("bench-{prefix}")).await
}

/// Deletes a bench namespace; a slow deletion only warns (results are already taken).
pub async fn drop_namespace(ns: benchkite_e2e::TestNamespace) {
    let name = ns.name().to_string();
    if let Err(e) = ns.delete().await {
        eprintln!("warning: namespace {name} not gone yet: {e:#}");
    }
}

/// The pipeline benchkite creates and builds on for `queue` when the controller runs with
/// `--instance instance` (the bench passes its namespace as the instance).
pub fn managed_pipeline(instance: &str, queue: &str) -> String {
    benchkite::buildkite::managed_slug(instance, queue)
}

/// Every build of `pipeline`, read through the simulator's `/_sim` view (never rate limited
/// nor counted, and not refused as too deep like a REST listing of more than 1,000 builds).
/// Build numbers are per pipeline and start at 1; a number that is missing is skipped.
pub async fn sim_builds(sim: &buildkite_sim::SimHandle, pipeline: &str, count: u64) -> Result<Vec<Value>> {
    let http = reqwest::Client::new();
    let base = format!("{}/pipelines/{pipeline}/builds", sim.sim_url());
    let builds: Vec<Option<Value>> = futures::stream::iter(1..=count)
        .map(|n| {
            let (http, url) = (http.clone(), format!("{base}/{n}"));
            async move {
                let resp = http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let b: Value = resp
                    .error_for_status()
                    .with_context(|| format!("GET {url}"))?
                    .json()
                    .await
                    .context("build JSON")?;
                Ok::<_, anyhow::Error>(Some(b))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok(builds.into_iter().flatten().collect())
}

/// The YAML steps of a pipeline that routes on real Buildkite: its one step names `queue`
/// literally (settings steps are never interpolated with a build's env) and skips the
/// checkout (the evaluation comes with the build), like the pipelines benchkite creates.
pub fn routable_configuration(queue: &str) -> String {
    format!(
        "steps:\n  - label: kernel evaluation\n    command: benchkite run\n    agents:\n      queue: {}\n    \
         checkout:\n      skip: true\n    artifact_paths: result.json\n",
        serde_json::Value::String(queue.to_string())
    )
}

/// Creates, over the simulator's REST API (`POST …/pipelines`, scope `write_pipelines`), a
/// pipeline `slug` for `queue` with [`routable_configuration`] in the cluster named "Default
/// cluster" (the one Buildkite creates with an organization); returns the slug Buildkite gave
/// it. Used by baselines, which have no managed pipeline of their own.
pub async fn create_routable_pipeline(sim: &buildkite_sim::SimHandle, slug: &str, queue: &str) -> Result<String> {
    let http = reqwest::Client::new();
    let org = format!("{}/organizations/{}", sim.api_url(), sim.organization());
    let token = sim.api_token();
    let clusters: Vec<Value> = http
        .get(format!("{org}/clusters"))
        .bearer_auth(&token)
        .send()
        .await
        .context("listing clusters")?
        .error_for_status()
        .context("listing clusters")?
        .json()
        .await
        .context("clusters JSON")?;
    let cluster = clusters
        .iter()
        .find(|c| c["name"] == "Default cluster")
        .and_then(|c| c["id"].as_str())
        .context("the simulator has no cluster named \"Default cluster\"")?;
    let body = json!({
        "name": slug, "slug": slug, "repository": "git@github.com:benchkite/kernelbot.git",
        "cluster_id": cluster, "configuration": routable_configuration(queue),
    });
    let resp = http
        .post(format!("{org}/pipelines"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("creating pipeline {slug}"))?;
    let status = resp.status();
    let answer: Value = resp.json().await.with_context(|| format!("creating pipeline {slug}: answer"))?;
    if !status.is_success() {
        bail!("creating pipeline {slug}: {status} {answer}");
    }
    answer["slug"].as_str().map(str::to_string).with_context(|| format!("creating pipeline {slug}: no slug"))
}

/// RFC 3339 → ms since the epoch.
pub fn ts_ms(v: &serde_json::Value) -> Option<f64> {
    let t: jiff::Timestamp = v.as_str()?.parse().ok()?;
    Some(t.as_millisecond() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripted_summary_is_one_the_controller_accepts() {
        let s = benchkite::contract::parse_meta_data_summary(RESULT_SUMMARY).expect("valid summary");
        assert!(s.success && s.passed == Some(true));
    }

    #[test]
    fn kernel_jobs_carry_the_requested_source_bytes() {
        let j = kernel_job("x", "q", 64 * 1024).expect("job");
        let total: usize = j.spec.sources.values().map(String::len).sum();
        assert!((64 * 1024..64 * 1024 + 200).contains(&total), "{total}");
        assert_eq!(j.spec.queue.as_deref(), Some("q"));
    }

    #[test]
    fn timing_means_from_metrics_text() {
        let text = "# TYPE x histogram\n\
            benchkite_kerneljob_submit_latency_seconds_sum 3.0\n\
            benchkite_kerneljob_submit_latency_seconds_count 4\n\
            benchkite_kerneljob_submit_latency_seconds_bucket{le=\"1\"} 4\n\
            benchkite_reconcile_duration_seconds_sum{controller=\"kerneljob\"} 0.5\n\
            benchkite_reconcile_duration_seconds_count{controller=\"kerneljob\"} 100\n";
        let v = timings_from_metrics(text);
        assert_eq!(v["benchkite_kerneljob_submit_latency_seconds"]["mean_ms"], json!(750.0));
        assert_eq!(v["benchkite_reconcile_duration_seconds{controller=\"kerneljob\"}"]["mean_ms"], json!(5.0));
    }

    #[test]
    fn the_baseline_pipeline_names_its_queue_literally_and_skips_the_checkout() {
        let steps: serde_json::Value =
            serde_yaml::from_str(&routable_configuration("bench-eff")).expect("the configuration parses");
        let step = &steps["steps"][0];
        assert_eq!(step["agents"]["queue"], json!("bench-eff"));
        assert_eq!(step["checkout"]["skip"], json!(true));
        assert_eq!(step["artifact_paths"], json!("result.json"));
        assert!(!routable_configuration("bench-eff").contains('$'), "nothing to interpolate");
    }

    #[test]
    fn managed_pipelines_are_the_products_slug() {
        assert_eq!(managed_pipeline("bench-eff-x", "q"), benchkite::buildkite::managed_slug("bench-eff-x", "q"));
        assert_ne!(managed_pipeline("a", "q"), managed_pipeline("b", "q"));
    }

    #[tokio::test]
    async fn waiting_gives_up_when_nothing_finishes_for_the_stall_time() {
        let watch = FinishWatch::default();
        let t = Instant::now();
        let done = watch.wait_progressing(1, Duration::from_secs(3600), Duration::from_millis(200)).await;
        assert_eq!(done, 0);
        assert!(t.elapsed() < Duration::from_secs(3600), "returned on the stall, not the timeout");
        // Finished jobs end the wait at once, whatever the stall time.
        watch.seen.lock().unwrap_or_else(|e| e.into_inner()).insert("a".into(), (0.0, "Succeeded".into()));
        assert_eq!(watch.wait_progressing(1, Duration::from_secs(3600), Duration::from_secs(3600)).await, 1);
    }

    #[test]
    fn timestamps_parse_to_milliseconds() {
        assert_eq!(ts_ms(&json!("1970-01-01T00:00:01.250Z")), Some(1250.0));
        assert_eq!(ts_ms(&json!(null)), None);
    }
}

/// The API writes of a KernelJob's life besides its create, by category: its object (the
/// controller's applies to it), its status, the Events about it and the ConfigMap that holds
/// its result.json.
pub const WRITE_CATEGORIES: [&str; 4] = ["kerneljob", "kerneljob_status", "events", "configmaps"];

/// What counts as a write in the API server's counters (`apiserver_request_total`): create,
/// update, patch and server-side apply.
pub const METRIC_WRITE_VERBS: &[&str] = &["POST", "CREATE", "PUT", "UPDATE", "PATCH", "APPLY"];

/// The same writes in the audit log (a server-side apply is a `patch` there).
pub const AUDIT_WRITE_VERBS: &[&str] = &["create", "update", "patch"];

/// The category (one of [`WRITE_CATEGORIES`]) of a write to `group`/`resource`/`subresource`,
/// when it is one of a KernelJob's.
pub fn write_category(group: &str, resource: &str, subresource: &str) -> Option<&'static str> {
    match (group, resource, subresource) {
        ("benchkite.dev", "kerneljobs", "") => Some("kerneljob"),
        ("benchkite.dev", "kerneljobs", "status") => Some("kerneljob_status"),
        ("" | "events.k8s.io", "events", "") => Some("events"),
        ("", "configmaps", "") => Some("configmaps"),
        _ => None,
    }
}

/// Successful (2xx) writes by category.
pub type WriteCounts = BTreeMap<&'static str, f64>;

/// The API server's successful write counts by category, from its metrics text: every
/// client's, server-wide (the counters have no label that tells clients apart).
pub fn api_writes_from_metrics(text: &str) -> WriteCounts {
    let mut out = WriteCounts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let label = |k: &str| {
            let key = format!("{k}=\"");
            labels.split(',').find_map(|kv| kv.strip_prefix(&key)).map(|v| v.trim_end_matches('"')).unwrap_or_default()
        };
        if !METRIC_WRITE_VERBS.contains(&label("verb")) || !label("code").starts_with('2') {
            continue;
        }
        let Some(cat) = write_category(label("group"), label("resource"), label("subresource")) else { continue };
        let Ok(n) = value.trim().parse::<f64>() else { continue };
        *out.entry(cat).or_default() += n;
    }
    out
}

/// The API server's write counts now (see [`api_writes_from_metrics`]).
pub async fn api_writes(client: &Client) -> Result<WriteCounts> {
    let req = http::Request::get("/metrics").body(Vec::new()).context("building GET /metrics")?;
    let text = client.request_text(req).await.context("reading the API server's /metrics")?;
    Ok(api_writes_from_metrics(&text))
}

/// `after − before` by category, the `jobs` KernelJob creates left out of the object's writes.
pub fn counter_delta(before: &WriteCounts, after: &WriteCounts, jobs: usize) -> WriteCounts {
    WRITE_CATEGORIES
        .iter()
        .map(|&c| {
            let mut d = after.get(c).copied().unwrap_or(0.0) - before.get(c).copied().unwrap_or(0.0);
            if c == "kerneljob" {
                d -= jobs as f64;
            }
            (c, d.max(0.0))
        })
        .collect()
}

/// Writes per KernelJob by category and in total (`"total"`), over `jobs` jobs; the
/// categories in `missing` (not recorded) are `null` and left out of the total, which is then
/// a lower bound (`"complete": false`).
pub fn per_job(counts: &WriteCounts, jobs: usize, missing: &[&str]) -> Value {
    let n = jobs.max(1) as f64;
    let mut out = serde_json::Map::new();
    let mut total = 0.0;
    for c in WRITE_CATEGORIES {
        if missing.contains(&c) {
            out.insert(c.into(), Value::Null);
            continue;
        }
        let x = counts.get(c).copied().unwrap_or(0.0);
        total += x;
        out.insert(c.into(), json!(x / n));
    }
    out.insert("total".into(), json!(total / n));
    out.insert("complete".into(), json!(missing.is_empty()));
    out.insert("writes".into(), json!(counts));
    out.insert("jobs".into(), json!(jobs));
    Value::Object(out)
}

/// The API server's audit log of the e2e cluster the bench runs against:
/// `<BENCHKITE_E2E_DIR>/kwok/clusters/<cluster>/logs/audit.log`, the cluster being
/// `BENCHKITE_E2E_CLUSTER`, else the only one in that directory, else `benchkite-e2e`
/// (as `e2e/cluster/who-deleted` finds it).
pub fn audit_log_path() -> PathBuf {
    let clusters = benchkite_e2e::e2e_dir().join("kwok").join("clusters");
    let name = match std::env::var("BENCHKITE_E2E_CLUSTER") {
        Ok(n) if !n.is_empty() => n,
        _ => {
            let names: Vec<String> = std::fs::read_dir(&clusters)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
                .unwrap_or_default();
            match names.as_slice() {
                [one] => one.clone(),
                _ => "benchkite-e2e".to_string(),
            }
        }
    };
    clusters.join(name).join("logs").join("audit.log")
}

/// The audit log's length now: where a window's events start.
pub fn audit_log_len(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "no audit log at {} (a cluster created before e2e/cluster/audit-policy.yaml: recreate it with \
             e2e/cluster/down && e2e/cluster/up)",
            path.display()
        )
    })?;
    Ok(meta.len())
}

/// The identity a benchkite controller names in its User-Agent, `benchkite/<version> (<identity>)`.
pub fn benchkite_identity(user_agent: &str) -> Option<&str> {
    let rest = user_agent.strip_prefix("benchkite/")?;
    let (_, inner) = rest.split_once(" (")?;
    inner.strip_suffix(')').filter(|i| !i.is_empty())
}

/// Who wrote, in an audit log: a benchkite controller's identity, else `other:<product>` of
/// the User-Agent (`other:` alone without one).
pub fn audit_writer(user_agent: &str) -> String {
    match benchkite_identity(user_agent) {
        Some(id) => id.to_string(),
        None => format!("other:{}", user_agent.split(['/', ' ']).next().unwrap_or_default()),
    }
}

/// Successful writes of a KernelJob's life by writer ([`audit_writer`]) and category.
pub type AuditWrites = BTreeMap<String, WriteCounts>;

/// Counts the writes in audit log lines (JSON, one event a line) whose requests the API
/// server received in `[from_ms, to_ms)`: completed requests (`ResponseComplete`) answered
/// 2xx with a verb of [`AUDIT_WRITE_VERBS`] to a [`write_category`], KernelJob creates left
/// out. Lines that are not events (a partial first or last line) are skipped.
pub fn audit_writes_from(log: impl std::io::BufRead, from_ms: f64, to_ms: f64) -> AuditWrites {
    let mut out = AuditWrites::new();
    for line in log.split(b'\n') {
        let Ok(line) = line else { break };
        // Most events are of other kinds: skip them before parsing.
        if !line.windows(16).any(|w| w == b"ResponseComplete") {
            continue;
        }
        let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
        if ev["stage"] != "ResponseComplete" {
            continue;
        }
        let code = ev["responseStatus"]["code"].as_u64().unwrap_or(0);
        let verb = ev["verb"].as_str().unwrap_or_default();
        if !(200..300).contains(&code) || !AUDIT_WRITE_VERBS.contains(&verb) {
            continue;
        }
        let r = &ev["objectRef"];
        let s = |k: &str| r[k].as_str().unwrap_or_default();
        let Some(cat) = write_category(s("apiGroup"), s("resource"), s("subresource")) else { continue };
        if cat == "kerneljob" && verb == "create" {
            continue;
        }
        let Some(t) = ts_ms(&ev["requestReceivedTimestamp"]) else { continue };
        if t < from_ms || t >= to_ms {
            continue;
        }
        let writer = audit_writer(ev["userAgent"].as_str().unwrap_or_default());
        *out.entry(writer).or_default().entry(cat).or_default() += 1.0;
    }
    out
}

/// [`audit_writes_from`] the audit log at `path`, from byte `offset` on.
pub fn read_audit_writes(path: &Path, offset: u64, from_ms: f64, to_ms: f64) -> Result<AuditWrites> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening the audit log {}", path.display()))?;
    let len = f.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    if len < offset {
        bail!("the audit log {} shrank from {offset} to {len} bytes during the run (rotated?)", path.display());
    }
    f.seek(SeekFrom::Start(offset)).with_context(|| format!("seeking in {}", path.display()))?;
    Ok(audit_writes_from(std::io::BufReader::new(f), from_ms, to_ms))
}

/// Sums the writes of `writers` (all of them when `None`) by category.
pub fn sum_writers(audit: &AuditWrites, writers: Option<&[String]>) -> WriteCounts {
    let mut out = WriteCounts::new();
    for (w, counts) in audit {
        if writers.is_some_and(|ws| !ws.contains(w)) {
            continue;
        }
        for (c, n) in counts {
            *out.entry(c).or_default() += n;
        }
    }
    out
}

/// The categories the API server counted writes of (`counters`, every client's) in a window
/// in which its audit log has none by anyone: the cluster's audit policy does not record
/// them (a cluster started before e2e/cluster/audit-policy.yaml covered them).
pub fn unaudited(counters: &WriteCounts, audit_all: &WriteCounts) -> Vec<&'static str> {
    WRITE_CATEGORIES
        .into_iter()
        .filter(|c| counters.get(c).copied().unwrap_or(0.0) > 0.0 && audit_all.get(c).copied().unwrap_or(0.0) == 0.0)
        .collect()
}

#[cfg(test)]
mod api_write_tests {
    use super::*;

    const METRICS: &str = r#"# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="benchkite.dev",resource="kerneljobs",scope="resource",subresource="",verb="POST",version="v1alpha1"} 10
apiserver_request_total{code="200",component="apiserver",dry_run="",group="benchkite.dev",resource="kerneljobs",scope="resource",subresource="",verb="APPLY",version="v1alpha1"} 20
apiserver_request_total{code="409",component="apiserver",dry_run="",group="benchkite.dev",resource="kerneljobs",scope="resource",subresource="",verb="APPLY",version="v1alpha1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="benchkite.dev",resource="kerneljobs",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 30
apiserver_request_total{code="200",component="apiserver",dry_run="",group="benchkite.dev",resource="kerneljobs",scope="namespace",subresource="",verb="LIST",version="v1alpha1"} 99
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 15
apiserver_request_total{code="201",component="apiserver",dry_run="",group="events.k8s.io",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="configmaps",scope="resource",subresource="",verb="APPLY",version="v1"} 10
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="configmaps",scope="resource",subresource="",verb="GET",version="v1"} 50
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 5
apiserver_request_total{code="201",component="apiserver",dry_run="",group="other.io",resource="kerneljobs",scope="resource",subresource="",verb="POST",version="v1"} 5
"#;

    #[test]
    fn counts_successful_writes_of_a_kerneljobs_life_only() {
        let w = api_writes_from_metrics(METRICS);
        assert_eq!(w["kerneljob"], 30.0, "creates and applies answered 2xx, of benchkite.dev only");
        assert_eq!(w["kerneljob_status"], 30.0);
        assert_eq!(w["events"], 20.0, "core and events.k8s.io Events");
        assert_eq!(w["configmaps"], 10.0, "writes, not reads");
        assert_eq!(w.len(), 4, "{w:?}");
    }

    #[test]
    fn counter_writes_per_job_leave_out_the_creates() {
        let before = api_writes_from_metrics("");
        let after = api_writes_from_metrics(METRICS);
        let v = per_job(&counter_delta(&before, &after, 10), 10, &[]);
        assert_eq!(v["kerneljob"], json!(2.0));
        assert_eq!(v["kerneljob_status"], json!(3.0));
        assert_eq!(v["events"], json!(2.0));
        assert_eq!(v["configmaps"], json!(1.0));
        assert_eq!(v["total"], json!(8.0));
        assert_eq!(v["complete"], json!(true));
    }

    fn event(ua: &str, verb: &str, group: &str, resource: &str, sub: &str, code: u16, at: &str) -> String {
        let mut r =
            json!({"resource": resource, "namespace": "ns", "name": "x", "apiGroup": group, "apiVersion": "v1"});
        if !sub.is_empty() {
            r["subresource"] = json!(sub);
        }
        json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "stage": "ResponseComplete",
            "verb": verb, "userAgent": ua, "objectRef": r, "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": at, "stageTimestamp": at,
        })
        .to_string()
    }

    const A: &str = "benchkite/0.1.0 (bench-eff-webhooks-1-controller)";
    const B: &str = "benchkite/0.1.0 (bench-eff-polling-2-controller)";
    const T: &str = "2026-01-01T00:00:01.000000Z";

    /// Two controllers' writes interleaved, with what must not count.
    fn log() -> String {
        let lines = [
            event(A, "patch", "benchkite.dev", "kerneljobs", "status", 200, T),
            event(B, "patch", "benchkite.dev", "kerneljobs", "status", 200, T),
            event(B, "patch", "benchkite.dev", "kerneljobs", "status", 200, T),
            event(A, "patch", "benchkite.dev", "kerneljobs", "", 200, T),
            event(A, "create", "events.k8s.io", "events", "", 201, T),
            event(B, "create", "", "events", "", 201, T),
            event(B, "patch", "events.k8s.io", "events", "", 200, T),
            event(A, "patch", "", "configmaps", "", 201, T),
            event(B, "patch", "", "configmaps", "", 200, T),
            // Refused, not a write, another resource, the bench's create, outside the window.
            event(A, "patch", "benchkite.dev", "kerneljobs", "status", 409, T),
            event(A, "delete", "benchkite.dev", "kerneljobs", "", 200, T),
            event(A, "create", "", "pods", "", 201, T),
            event("kube-rs/0.1", "create", "benchkite.dev", "kerneljobs", "", 201, T),
            event(A, "patch", "benchkite.dev", "kerneljobs", "status", 200, "2026-01-01T00:00:09.000000Z"),
            // Another client's write.
            event(
                "kube-controller-manager/v1.36.3 (linux/amd64) kubernetes/x/root-ca",
                "create",
                "",
                "configmaps",
                "",
                201,
                T,
            ),
        ];
        // A partial line first (the window opened mid-line) and a request-received stage.
        let partial = event(A, "patch", "benchkite.dev", "kerneljobs", "status", 200, T);
        let mut s = format!("{}\n", &partial[partial.len() / 3..]);
        assert!(s.contains("ResponseComplete"), "the partial line is one the parser must skip");
        s.push_str(&json!({"stage": "RequestReceived", "verb": "patch", "userAgent": A}).to_string());
        s.push('\n');
        for l in lines {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    #[test]
    fn audit_writes_are_attributed_to_each_controller() {
        let (from, to) = (
            ts_ms(&json!("2026-01-01T00:00:00Z")).unwrap_or(0.0),
            ts_ms(&json!("2026-01-01T00:00:05Z")).unwrap_or(0.0),
        );
        let w = audit_writes_from(log().as_bytes(), from, to);
        let a = &w["bench-eff-webhooks-1-controller"];
        let b = &w["bench-eff-polling-2-controller"];
        assert_eq!(a.get("kerneljob_status"), Some(&1.0), "B's status writes are not A's: {w:?}");
        assert_eq!(a.get("kerneljob"), Some(&1.0));
        assert_eq!(a.get("events"), Some(&1.0));
        assert_eq!(a.get("configmaps"), Some(&1.0));
        assert_eq!(b.get("kerneljob_status"), Some(&2.0), "{w:?}");
        assert_eq!(b.get("kerneljob"), None);
        assert_eq!(b.get("events"), Some(&2.0), "a create and a patch, core and events.k8s.io");
        assert_eq!(b.get("configmaps"), Some(&1.0));
        assert_eq!(w["other:kube-controller-manager"].get("configmaps"), Some(&1.0));
        assert!(!w.contains_key("other:kube-rs"), "KernelJob creates are left out: {w:?}");
        assert_eq!(w.len(), 3, "{w:?}");

        let ids = ["bench-eff-webhooks-1-controller".to_string()];
        let only_a = sum_writers(&w, Some(&ids));
        assert_eq!(per_job(&only_a, 2, &[])["total"], json!(2.0));
        let all = sum_writers(&w, None);
        assert_eq!(all["configmaps"], 3.0);
        assert_eq!(all["kerneljob_status"], 3.0);
    }

    #[test]
    fn a_category_the_counters_saw_but_the_audit_log_did_not_is_unaudited() {
        let counters = WriteCounts::from([("kerneljob_status", 5.0), ("configmaps", 4.0), ("events", 0.0)]);
        let audit = WriteCounts::from([("kerneljob_status", 5.0)]);
        assert_eq!(unaudited(&counters, &audit), vec!["configmaps"]);
        let v = per_job(&WriteCounts::from([("kerneljob_status", 4.0)]), 2, &["configmaps"]);
        assert_eq!(v["configmaps"], Value::Null);
        assert_eq!(v["total"], json!(2.0));
        assert_eq!(v["complete"], json!(false));
    }

    #[test]
    fn user_agents_name_the_controller() {
        assert_eq!(benchkite_identity("benchkite/0.1.0 (bench-x-controller)"), Some("bench-x-controller"));
        assert_eq!(benchkite_identity("benchkite/0.1.0"), None);
        assert_eq!(benchkite_identity("kube-rs/1.0 (x)"), None);
        assert_eq!(
            audit_writer("kube-controller-manager/v1.36.3 (linux/amd64) kubernetes/x/gc"),
            "other:kube-controller-manager"
        );
        assert_eq!(audit_writer(""), "other:");
    }

    #[test]
    fn a_shrunk_audit_log_is_an_error() {
        let dir = std::env::temp_dir().join(format!("bench-audit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("audit.log");
        std::fs::write(&path, log()).expect("writing a test log");
        let len = audit_log_len(&path).expect("length");
        let all = read_audit_writes(&path, 0, 0.0, f64::MAX).expect("reading");
        assert_eq!(all.len(), 3);
        let none = read_audit_writes(&path, len, 0.0, f64::MAX).expect("reading from the end");
        assert!(none.is_empty());
        assert!(read_audit_writes(&path, len + 1, 0.0, f64::MAX).is_err());
        assert!(audit_log_len(&dir.join("missing.log")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
