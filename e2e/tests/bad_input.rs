//! Bad input, end to end: every manifest in `e2e/bad-input/` is sent to the real API server
//! (dry run, strict field validation as kubectl does) and must be refused with a message
//! that says what is wrong; the few that only the controller can judge are created for real
//! and the real `benchkite controller` must report them in conditions, without crashing.
//!
//! Each file's header comments say what is wrong and what must happen:
//! * `# expect: <text>` — the API server refuses it, and its message contains `<text>`;
//! * `# update-of: <file>` — `<file>` (relative to `e2e/bad-input/`) is created first, then
//!   this manifest is sent as an update of it (for immutability rules);
//! * `# controller: <Type>=<Status>/<Reason>` (with `# controller-message: <text>` and
//!   optionally `# controller-event: <Reason>`) — the API server accepts it; the controller
//!   must set that condition, with `<text>` in its message, and record that Event;
//! * `# known-defect: <text>` — accepted although it should not be (reported, not failed).
//!
//! `valid/` holds valid bases; `valid/kerneljob-kernelbot-shapes.yaml` (what kernelbot runs)
//! is also created for real and must be submitted with its shapes intact in the payload.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use benchkite::api::{AgentPool, GpuNode, KernelJob};
use benchkite_e2e::operator::{Operator, install_crds};
use benchkite_e2e::{TestNamespace, client, repo_root, wait_until};
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::Request;
use kube::{Api, Client, Resource};
use serde_json::Value;

const CREATE: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";

/// What a file says must happen to it.
#[derive(Debug, Clone)]
struct Case {
    /// Path relative to `e2e/bad-input/`.
    file: String,
    doc: Value,
    expect: Option<String>,
    update_of: Option<String>,
    controller: Option<String>,
    controller_message: Option<String>,
    controller_event: Option<String>,
    known_defect: Option<String>,
}

impl Case {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("?")
    }
}

fn bad_input_dir() -> PathBuf {
    repo_root().join("e2e").join("bad-input")
}

fn load(dir: &Path, rel: &str) -> Result<Case> {
    let path = dir.join(rel);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some((key, value)) = line.trim_start_matches('#').trim().split_once(": ")
            && matches!(
                key,
                "expect" | "update-of" | "controller" | "controller-message" | "controller-event" | "known-defect"
            )
        {
            ensure!(headers.insert(key.to_string(), value.trim().to_string()).is_none(), "{rel}: `{key}` twice");
        }
    }
    let doc: Value = serde_yaml::from_str(&text).with_context(|| format!("parsing {rel}"))?;
    let case = Case {
        file: rel.to_string(),
        doc,
        expect: headers.remove("expect"),
        update_of: headers.remove("update-of"),
        controller: headers.remove("controller"),
        controller_message: headers.remove("controller-message"),
        controller_event: headers.remove("controller-event"),
        known_defect: headers.remove("known-defect"),
    };
    let verdicts = [case.expect.is_some(), case.controller.is_some(), case.known_defect.is_some()];
    ensure!(
        rel.starts_with("valid/") || verdicts.iter().filter(|v| **v).count() == 1,
        "{rel}: needs exactly one of `# expect:`, `# controller:` or `# known-defect:`"
    );
    ensure!(text.lines().next().is_some_and(|l| l.starts_with("# ")), "{rel}: the first line must say what is wrong");
    Ok(case)
}

/// Every case of `e2e/bad-input/*.yaml`, sorted by file name.
fn cases() -> Result<Vec<Case>> {
    let dir = bad_input_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names.iter().map(|n| load(&dir, n)).collect()
}

fn resource(kind: &str) -> Result<ApiResource> {
    Ok(match kind {
        "GpuNode" => ApiResource::erase::<GpuNode>(&()),
        "AgentPool" => ApiResource::erase::<AgentPool>(&()),
        "KernelJob" => ApiResource::erase::<KernelJob>(&()),
        other => bail!("unknown kind {other}"),
    })
}

/// Sends the manifest as kubectl would: POST (create) or PUT (update), `fieldValidation=Strict`,
/// optionally as a dry run. Returns the object, or the API server's refusal message.
async fn send(client: &Client, ns: &str, doc: &Value, update: bool, dry_run: bool) -> Result<Result<Value, String>> {
    let kind = doc["kind"].as_str().context("no kind")?;
    let ar = resource(kind)?;
    let namespace = (kind != "GpuNode").then_some(ns);
    let mut doc = doc.clone();
    if let Some(ns) = namespace {
        doc["metadata"]["namespace"] = Value::String(ns.to_string());
    }
    let name = doc["metadata"]["name"].as_str().context("no name")?.to_string();
    let body = serde_json::to_vec(&doc)?;
    let pp = PostParams { dry_run, ..PostParams::default() };
    let request = Request::new(DynamicObject::url_path(&ar, namespace));
    let mut req = if update { request.replace(&name, &pp, body)? } else { request.create(&pp, body)? };
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    *req.uri_mut() = format!("{uri}{sep}fieldValidation=Strict").parse()?;
    match client.request::<Value>(req).await {
        Ok(obj) => Ok(Ok(obj)),
        Err(kube::Error::Api(status)) => Ok(Err(status.message.clone())),
        Err(e) => Err(e).context(format!("sending {kind} {name}")),
    }
}

/// GpuNodes are cluster-scoped: each test run gets its own names.
fn scoped_name(doc: &mut Value, suffix: &str) {
    if doc["kind"] == "GpuNode"
        && let Some(name) = doc["metadata"]["name"].as_str()
    {
        doc["metadata"]["name"] = Value::String(format!("{name}-{suffix}"));
    }
}

/// What the API server did with one case.
enum Outcome {
    Rejected(String),
    Accepted,
}

/// Deletes the real GpuNodes the update cases created, also when the test fails.
struct GpuNodeCleanup {
    names: Vec<String>,
}

impl Drop for GpuNodeCleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        if names.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let Ok(c) = client().await else { return };
                let api: Api<GpuNode> = Api::all(c);
                for name in names {
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                }
            })
        })
        .join();
    }
}

async fn run_case(
    client: &Client,
    ns: &str,
    suffix: &str,
    case: &Case,
    cleanup: &mut GpuNodeCleanup,
) -> Result<Outcome> {
    let mut doc = case.doc.clone();
    let update = match &case.update_of {
        None => {
            scoped_name(&mut doc, suffix);
            false
        }
        Some(base_file) => {
            // The base is created for real: its name is the case's own.
            doc["metadata"]["name"] = Value::String(case.file.trim_end_matches(".yaml").to_string());
            scoped_name(&mut doc, suffix);
            let mut base = load(&bad_input_dir(), base_file)?.doc;
            base["metadata"]["name"] = doc["metadata"]["name"].clone();
            let created = send(client, ns, &base, false, false)
                .await?
                .map_err(|m| anyhow!("{}: the base {base_file} was refused: {m}", case.file))?;
            if case.kind() == "GpuNode" {
                cleanup.names.push(doc["metadata"]["name"].as_str().unwrap_or_default().to_string());
            }
            doc["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
            true
        }
    };
    Ok(match send(client, ns, &doc, update, true).await? {
        Ok(_) => Outcome::Accepted,
        Err(message) => Outcome::Rejected(message),
    })
}

fn short(s: &str, n: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= n { s } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

#[tokio::test]
async fn api_server_refuses_bad_manifests_with_a_clear_message() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "badinput").await?;
    let suffix = ns.name().rsplit('-').next().unwrap_or("x").to_string();
    let mut cleanup = GpuNodeCleanup { names: Vec::new() };

    // The bases are valid: a refusal below is about what each file changed.
    let dir = bad_input_dir();
    for entry in std::fs::read_dir(dir.join("valid"))? {
        let rel = format!("valid/{}", entry?.file_name().to_string_lossy());
        let mut doc = load(&dir, &rel)?.doc;
        scoped_name(&mut doc, &suffix);
        if let Err(m) = send(&client, ns.name(), &doc, false, true).await? {
            bail!("{rel} is meant to be valid but was refused: {m}");
        }
    }

    let all = cases()?;
    let api_cases: Vec<&Case> = all.iter().filter(|c| c.controller.is_none()).collect();
    let mut table = String::new();
    let mut failures = Vec::new();
    let (mut rejected, mut clear, mut defects) = (0, 0, 0);
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    for case in &api_cases {
        *per_kind.entry(case.kind().to_string()).or_default() += 1;
        let outcome = run_case(&client, ns.name(), &suffix, case, &mut cleanup).await?;
        let (verdict, message) = match (&outcome, &case.expect, &case.known_defect) {
            (Outcome::Rejected(m), Some(want), _) if m.contains(want.as_str()) => {
                rejected += 1;
                clear += 1;
                ("rejected", m.clone())
            }
            (Outcome::Rejected(m), Some(want), _) => {
                rejected += 1;
                failures.push(format!("{}: refused, but the message lacks {want:?}: {m}", case.file));
                ("UNCLEAR", m.clone())
            }
            (Outcome::Accepted, Some(want), _) => {
                failures.push(format!("{}: accepted; expected a refusal saying {want:?}", case.file));
                ("ACCEPTED", String::new())
            }
            (Outcome::Accepted, None, Some(defect)) => {
                defects += 1;
                ("defect", format!("accepted (known defect: {defect})"))
            }
            (Outcome::Rejected(m), None, Some(_)) => {
                rejected += 1;
                ("fixed?", format!("now refused — turn known-defect into expect: {m}"))
            }
            (_, None, None) => bail!("{}: no expectation", case.file),
        };
        writeln!(table, "{:<52} {:<9} {}", case.file, verdict, short(&message, 150))?;
    }
    println!("\nbad input against the API server ({} files: {per_kind:?})\n{table}", api_cases.len());
    println!(
        "files {}, rejected {rejected}, rejected with the expected message {clear}, known defects (accepted) {defects}",
        api_cases.len()
    );
    ensure!(api_cases.len() >= 40, "the corpus has only {} API-server cases", api_cases.len());
    ensure!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), api_cases.len(), failures.join("\n"));
    drop(cleanup);
    ns.delete().await
}

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

/// The process is alive (not exited, not a zombie) and answers /healthz.
async fn assert_alive(op: &Operator, http: &str) -> Result<()> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", op.pid()))
        .with_context(|| format!("the controller (pid {}) is gone; log:\n{}", op.pid(), op.log_text()))?;
    let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).unwrap_or("?");
    ensure!(state != "Z" && state != "X", "the controller exited (state {state}); log:\n{}", op.log_text());
    let resp = reqwest::get(format!("http://{http}/healthz")).await.context("GET /healthz")?;
    ensure!(resp.status().is_success(), "/healthz answered {}", resp.status());
    ensure!(!op.log_text().contains("panicked"), "the controller panicked; log:\n{}", op.log_text());
    Ok(())
}

/// Parses `Type=Status/Reason`.
fn parse_condition(spec: &str) -> Result<(&str, &str, &str)> {
    let (type_, rest) = spec.split_once('=').context("condition: Type=Status/Reason")?;
    let (status, reason) = rest.split_once('/').context("condition: Type=Status/Reason")?;
    Ok((type_, status, reason))
}

#[tokio::test]
async fn controller_reports_what_only_it_can_tell() -> Result<()> {
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "badinputctl").await?;
    // The cases' queue exists (no agents: a build that gets created stays scheduled). The
    // simulator keeps Buildkite's limits, the per-user one included.
    let mut cfg = SimConfig::default();
    cfg.clusters[0].queues.push("nvidia-h100".into());
    let sim = Simulator::start(cfg).await?;
    let http = format!("127.0.0.1:{}", free_port()?);
    let token = sim.api_token();
    let common = benchkite_e2e::sim::kerneljob_args(&sim, ns.name());
    let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--http-addr", &http, "--poll-interval-seconds", "2", "--max-source-bytes", "4096"]);
    let op = Operator::start_with_env(
        &format!("bad-input-{}", ns.name()),
        &args,
        &[("BUILDKITE_API_TOKEN", token.as_str())],
    )?;

    let outcome = check_controller_cases(&client, &ns, &op, &http, &sim).await;
    // Clean up while the controller runs (it removes its finalizers from the jobs), whatever
    // the outcome, so the namespace can go.
    let jobs: Api<KernelJob> = ns.api();
    let cleaned = delete_jobs(&jobs).await;
    drop(op);
    outcome?;
    cleaned?;
    ns.delete().await
}

/// Deletes every KernelJob of the namespace and waits until they are gone; strips the
/// finalizers of any left after a minute (a stuck controller must not leave the namespace
/// Terminating forever).
async fn delete_jobs(jobs: &Api<KernelJob>) -> Result<()> {
    jobs.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    let gone = wait_until("the KernelJobs to be deleted", Duration::from_secs(60), || async {
        Ok(jobs.list(&ListParams::default()).await?.items.is_empty().then_some(()))
    })
    .await;
    if gone.is_err() {
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        for job in jobs.list(&ListParams::default()).await?.items {
            let name = job.metadata.name.unwrap_or_default();
            jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
    }
    gone
}

async fn check_controller_cases(
    client: &Client,
    ns: &TestNamespace,
    op: &Operator,
    http: &str,
    sim: &SimHandle,
) -> Result<()> {
    let all = cases()?;
    let controller_cases: Vec<&Case> = all.iter().filter(|c| c.controller.is_some()).collect();
    ensure!(!controller_cases.is_empty(), "no controller cases in e2e/bad-input");
    for case in &controller_cases {
        ensure!(case.kind() == "KernelJob", "{}: only KernelJob controller cases are supported", case.file);
        if let Err(m) = send(client, ns.name(), &case.doc, false, false).await? {
            bail!("{}: the API server must accept it (only the controller can tell), but said: {m}", case.file);
        }
    }

    let jobs: Api<KernelJob> = ns.api();
    let events: Api<CoreEvent> = ns.api();
    let mut table = String::new();
    let mut failures = Vec::new();
    for case in &controller_cases {
        let name = case.doc["metadata"]["name"].as_str().unwrap_or_default();
        let (type_, status, reason) = parse_condition(case.controller.as_deref().unwrap_or_default())?;
        let want_message = case.controller_message.clone().unwrap_or_default();
        let what = format!("{}: condition {type_}={status}/{reason} saying {want_message:?}", case.file);
        let found = wait_until(&what, Duration::from_secs(60), || async {
            let job = jobs.get(name).await?;
            let Some(s) = job.status else { return Ok(None) };
            Ok(s.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
                .filter(|c| c.message.contains(&want_message))
                .map(|c| (c.message.clone(), s.phase)))
        })
        .await;
        let (verdict, detail) = match found {
            Ok((message, phase)) => ("reported", format!("{phase:?} {type_}={status}/{reason}: {message}")),
            Err(e) => {
                let now = jobs.get(name).await.ok().and_then(|j| j.status);
                let seen = now
                    .map(|s| {
                        let conds: Vec<String> = s
                            .conditions
                            .iter()
                            .map(|c| format!("{}={}/{}: {}", c.type_, c.status, c.reason, c.message))
                            .collect();
                        format!("phase {:?}, message {:?}, conditions {conds:?}", s.phase, s.message)
                    })
                    .unwrap_or_else(|| "no status".into());
                failures.push(format!("{}: {e:#}; status: {seen}", case.file));
                ("MISSING", seen)
            }
        };
        if let Some(want_event) = &case.controller_event {
            let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
            let found = wait_until(&format!("{}: Event {want_event}", case.file), Duration::from_secs(30), || async {
                let list = events.list(&lp).await?;
                Ok(list.items.iter().any(|e| e.reason.as_deref() == Some(want_event.as_str())).then_some(()))
            })
            .await;
            if let Err(e) = found {
                failures.push(format!("{}: {e:#}", case.file));
            }
        }
        writeln!(table, "{:<52} {:<9} {}", case.file, verdict, short(&detail, 150))?;
    }
    assert_alive(op, http).await?;
    println!("\nbad input only the controller can judge ({} files)\n{table}", controller_cases.len());
    ensure!(failures.is_empty(), "{} controller cases failed:\n{}", failures.len(), failures.join("\n"));

    // What kernelbot runs, the controller submits: the valid job with kernelbot's shapes gets
    // a build, and its payload carries them unchanged.
    let shapes = kernelbot_shapes_reach_the_payload(client, ns, sim).await?;
    // Every bad case is refused before a build: none may reach Buildkite.
    let builds = benchkite_e2e::sim::all_builds(sim).await?;
    let others: Vec<String> = builds
        .iter()
        .filter(|b| b["meta_data"]["benchkite.dev/kerneljob"].as_str() != Some(shapes.as_str()))
        .map(|b| format!("build on {} ({})", b["branch"], b["meta_data"]["benchkite.dev/kerneljob"]))
        .collect();
    ensure!(others.is_empty(), "builds were created for jobs that cannot run: {others:?}");
    ensure!(sim.counters().endpoint(CREATE).status(201) == 1, "one build, for {shapes}");
    Ok(())
}

/// Creates `valid/kerneljob-kernelbot-shapes.yaml` (an empty source file, fractional
/// timeouts, a case in kernelbot's line format) and checks that the controller submits it
/// with a payload that keeps them: the empty file, the timeouts, and the line's key order
/// (`size: 7; seed: 1`, not sorted). Returns the job's `namespace/name`.
async fn kernelbot_shapes_reach_the_payload(client: &Client, ns: &TestNamespace, sim: &SimHandle) -> Result<String> {
    use benchkite::contract::payload::{PayloadLimits, decode_runnable_payload, payload_from_env};
    let file = "valid/kerneljob-kernelbot-shapes.yaml";
    let case = load(&bad_input_dir(), file)?;
    let name = case.doc["metadata"]["name"].as_str().context("no name")?.to_string();
    if let Err(m) = send(client, ns.name(), &case.doc, false, false).await? {
        bail!("{file}: refused by the API server: {m}");
    }
    let jobs: Api<KernelJob> = ns.api();
    let build = wait_until(&format!("{file}: a build"), Duration::from_secs(60), || async {
        let job = jobs.get(&name).await?;
        let status = job.status.unwrap_or_default();
        if status.phase.is_finished() {
            bail!("{file}: ended {:?} without a build: {}", status.phase, status.message);
        }
        Ok(status.build)
    })
    .await?;
    let b = benchkite_e2e::sim::build(sim, &build.pipeline, u64::try_from(build.number)?)
        .await?
        .with_context(|| format!("{file}: build {} #{} not in the simulator", build.pipeline, build.number))?;
    let env = &b["env"];
    let payload = payload_from_env(|k| env[k].as_str().map(str::to_string)).context("the build's payload")?;
    // Decoded as `benchkite run` decodes it (it runs what kernelbot's runner runs).
    let cfg = decode_runnable_payload(&payload, &PayloadLimits::default()).context("decoding the build's payload")?;
    ensure!(cfg.sources.get("submission.py").is_some_and(String::is_empty), "the empty file: {:?}", cfg.sources);
    let lines: Vec<String> = cfg.tests.iter().map(|c| c.to_line()).collect();
    ensure!(lines.first().map(String::as_str) == Some("size: 7; seed: 1"), "the case line's key order: {lines:?}");
    let bench: Vec<String> = cfg.benchmarks.iter().map(|c| c.to_line()).collect();
    ensure!(bench == ["size: 1024; seed: 2"], "benchmarks: {bench:?}");
    let timeouts = (cfg.test_timeout, cfg.benchmark_timeout, cfg.ranked_timeout);
    ensure!(timeouts == (1.5, 90.25, 0.5), "fractional timeouts: {timeouts:?}");
    Ok(format!("{}/{name}", ns.name()))
}
