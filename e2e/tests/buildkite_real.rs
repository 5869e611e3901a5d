//! Issue 15's acceptance, end to end: KernelJobs on Buildkite as Buildkite really behaves.
//!
//! Every test runs the real `benchkite controller` against the local cluster and a simulator
//! with its strict defaults (settings steps never interpolated with build env, a checkout
//! before every command unless skipped, exec limits on the job env, the per-user rate limit,
//! token scopes, at-most-once webhooks, artifact states), whose agents run the real
//! `benchkite run` on the tiny CPU task in `tests/tasks/vectoradd`. Each test asserts what a
//! user sees: the KernelJob's or AgentPool's status, and Buildkite's state read through the
//! simulator's `/_sim` view (never rate limited, never counted).
//!
//! "Within one poll interval" is asserted by counting requests, not by the clock: a result
//! that cannot be read is asked for once, and a build whose `build.finished` webhook is lost
//! is caught by the first poller listing after it finished.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::{KernelJobStatus, Phase};
use benchkite_e2e::operator::{Operator, binary, install_crds, wait_ready};
use benchkite_e2e::{TestNamespace, client, repo_root, wait_until};
use buildkite_sim::config::{
    AgentPoolConfig, DEFAULT_TOKEN_SCOPES, EndpointFault, ExecutorConfig, PipelineConfig, WebhookAuth,
    WebhookBodyShape, WebhookConfig,
};
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

const WEBHOOK_SECRET: &str = "e2e-bkreal-webhook-secret-5c1e";
/// Counter keys of the simulator (`"<METHOD> <route template>"`).
const CREATE_BUILD: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";
const LIST_PIPELINE_BUILDS: &str = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds";
const CREATE_PIPELINE: &str = "POST /v2/organizations/{org}/pipelines";
const LIST_BUILD_ARTIFACTS: &str = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}/artifacts";
/// Linux's MAX_ARG_STRLEN: the longest single `NAME=VALUE` string (NUL included) `execve`
/// takes (32 pages; `include/uapi/linux/binfmts.h`).
const MAX_ARG_STRLEN: usize = 131_072;

// ----- the rig: a simulator and a controller for one test namespace ----------------------

/// How a test wants its controller and simulator.
struct Setup {
    /// `--controllers`.
    controllers: &'static str,
    /// Webhooks to the controller: body shape and events (empty: every event).
    webhooks: Option<(WebhookBodyShape, Vec<&'static str>)>,
    /// `--poll-interval-seconds`.
    poll_interval_secs: u64,
    /// More controller flags.
    extra_args: Vec<String>,
    /// The controller's token has exactly these scopes (a token of its own); `None`: the
    /// simulator's first token, with every scope benchkite needs.
    token_scopes: Option<Vec<&'static str>>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            controllers: "kerneljob",
            webhooks: None,
            poll_interval_secs: 2,
            extra_args: Vec::new(),
            token_scopes: None,
        }
    }
}

struct Rig {
    sim: SimHandle,
    op: Operator,
    ns: TestNamespace,
    /// The queue the simulated agents serve (it exists in the "Default cluster").
    queue: String,
    /// `--instance` (the namespace name): part of managed slugs and build branches.
    instance: String,
    /// The controller's API token (never in its log).
    token: String,
    http: reqwest::Client,
    started: Instant,
    /// When the controller process was started.
    op_started: Instant,
}

/// A directory holding the binary under test as `benchkite` (`$BENCHKITE_BIN` of another
/// name gets a symlink), for the agents' PATH.
fn benchkite_dir() -> Result<String> {
    let bin = binary()?;
    if bin.file_name().is_some_and(|n| n == "benchkite") {
        let dir = bin.parent().context("the benchkite binary has no directory")?;
        return Ok(dir.display().to_string());
    }
    let dir = benchkite_e2e::e2e_dir().join("bin-buildkite-real");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join("benchkite");
    if std::fs::read_link(&link).ok().as_deref() != Some(bin.as_path()) {
        let _ = std::fs::remove_file(&link);
        match std::os::unix::fs::symlink(&bin, &link) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("linking {} to {}", link.display(), bin.display()));
            }
            _ => {}
        }
    }
    Ok(dir.display().to_string())
}

fn free_port() -> Result<u16> {
    benchkite_e2e::free_port()
}

/// A namespace and a simulator, before the controller starts.
struct Prepared {
    sim: SimHandle,
    ns: TestNamespace,
    queue: String,
    port: u16,
    setup: Setup,
    started: Instant,
}

/// A simulator with its strict defaults and 2 agents on the test's queue running the real
/// `benchkite run` (found on PATH, like in the agent image, since the managed step's command
/// is `benchkite run`), then `tune`.
async fn prepare(prefix: &str, setup: Setup, tune: impl FnOnce(&mut SimConfig, &str)) -> Result<Prepared> {
    let started = Instant::now();
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, prefix).await?;
    let queue = format!("q-{}", ns.name());
    let bin_dir = benchkite_dir()?;
    let path = std::env::var("PATH").unwrap_or_default();
    let mut executor = ExecutorConfig::command("benchkite run");
    if let ExecutorConfig::Command { env, cancel_grace_secs, .. } = &mut executor {
        env.insert("PATH".into(), format!("{bin_dir}:{path}"));
        // The queue's result key, as an AgentPool's agents get it.
        env.insert(
            benchkite::signing::RESULT_KEY_FILE_ENV.into(),
            benchkite_e2e::operator::result_queue_key_file(&queue)?.to_string_lossy().into_owned(),
        );
        // The agent's cancel-grace-period; short so killed jobs end quickly.
        *cancel_grace_secs = 3.0;
    }
    let mut cfg = SimConfig { executor, ..Default::default() };
    cfg.clusters[0].queues.push(queue.clone());
    cfg.agents.push(AgentPoolConfig { queue: queue.clone(), count: 2, ..Default::default() });
    let port = free_port()?;
    if let Some((shape, events)) = &setup.webhooks {
        cfg.webhooks.push(WebhookConfig {
            url: format!("http://127.0.0.1:{port}/webhooks/buildkite"),
            token: WEBHOOK_SECRET.into(),
            auth: WebhookAuth::Signature,
            events: events.iter().map(|e| e.to_string()).collect(),
            body_shape: *shape,
            ..Default::default()
        });
    }
    tune(&mut cfg, &queue);
    let sim = Simulator::start(cfg).await?;
    Ok(Prepared { sim, ns, queue, port, setup, started })
}

impl Prepared {
    /// Starts the controller for the namespace and waits until it is ready.
    async fn start_controller(self) -> Result<Rig> {
        let Prepared { sim, ns, queue, port, setup, started } = self;
        let token = match &setup.token_scopes {
            Some(scopes) => sim.create_api_token(scopes),
            None => sim.api_token(),
        };
        let http_addr = format!("127.0.0.1:{port}");
        let poll = setup.poll_interval_secs.to_string();
        let mut args: Vec<String> = [
            "--controllers",
            setup.controllers,
            "--namespace",
            ns.name(),
            "--instance",
            ns.name(),
            "--buildkite-org",
            &sim.organization(),
            "--buildkite-api-url",
            &sim.api_url(),
            "--buildkite-agent-api-url",
            &sim.agent_url(),
            "--http-addr",
            &http_addr,
            "--poll-interval-seconds",
            &poll,
        ]
        .map(str::to_string)
        .to_vec();
        args.extend(setup.extra_args.iter().cloned());
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut envs = vec![("BUILDKITE_API_TOKEN", token.as_str())];
        if setup.webhooks.is_some() {
            envs.push(("BUILDKITE_WEBHOOK_SECRET", WEBHOOK_SECRET));
        }
        let op = Operator::start_with_env(&format!("bkreal-{}", ns.name()), &arg_refs, &envs)?;
        let op_started = Instant::now();
        wait_ready(&http_addr).await.with_context(|| tail(&op.log_text(), 40))?;
        let instance = ns.name().to_string();
        Ok(Rig { sim, op, ns, queue, instance, token, http: reqwest::Client::new(), started, op_started })
    }
}

/// [`prepare`], then the controller, past its start-up window: a KernelJob created within
/// 5 s of the controller's start may predate it, so it is looked up in Buildkite before it
/// is submitted (`src/kerneljob/controller.rs`, `fresh`), the path a restart takes. That path
/// has a test of its own ([`a_job_waiting_when_the_controller_starts_is_submitted`]); the
/// others are about what follows a plain submission.
async fn rig(prefix: &str, setup: Setup, tune: impl FnOnce(&mut SimConfig, &str)) -> Result<Rig> {
    let rig = prepare(prefix, setup, tune).await?.start_controller().await?;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(rig.op_started.elapsed())).await;
    Ok(rig)
}

impl Rig {
    /// The pipeline benchkite manages for the rig's queue.
    fn managed_slug(&self) -> String {
        benchkite::buildkite::managed_slug(&self.instance, &self.queue)
    }

    /// `GET /_sim/<path>` as JSON.
    async fn sim_get(&self, path: &str) -> Result<Value> {
        let url = format!("{}/{path}", self.sim.sim_url());
        let resp = self.http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("reading GET {url}"))?;
        ensure!(status.is_success(), "GET {url}: {status}: {}", tail(&text, 5));
        serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON"))
    }

    /// A pipeline as the REST API renders it (`configuration`, `steps`, settings).
    async fn pipeline(&self, slug: &str) -> Result<Value> {
        let all = self.sim_get("pipelines").await?;
        all.as_array()
            .and_then(|ps| ps.iter().find(|p| p["slug"] == slug))
            .cloned()
            .with_context(|| format!("the simulator has no pipeline {slug}"))
    }

    /// A build with every try of every job (automatic retries included).
    async fn build(&self, pipeline: &str, number: i64) -> Result<Value> {
        self.sim_get(&format!("pipelines/{pipeline}/builds/{number}")).await
    }

    /// A job with its log, build env and checkout outcome.
    async fn sim_job(&self, id: &str) -> Result<Value> {
        self.sim_get(&format!("jobs/{id}")).await
    }

    /// What a failure message needs: the jobs' statuses, their builds' job logs and the
    /// controller's last log lines.
    async fn diagnostics(&self, names: &[&str]) -> String {
        let api: Api<KernelJob> = self.ns.api();
        let mut out = String::new();
        for name in names {
            let Ok(j) = api.get(name).await else { continue };
            let status = j.status.as_ref().map(|s| serde_json::to_string_pretty(s).unwrap_or_default());
            out.push_str(&format!("\n--- KernelJob {name} status:\n{}\n", status.unwrap_or_default()));
            let Some(b) = j.status.as_ref().and_then(|s| s.build.clone()) else { continue };
            let Ok(build) = self.build(&b.pipeline, b.number).await else { continue };
            for job in build["jobs"].as_array().cloned().unwrap_or_default() {
                let id = job["id"].as_str().unwrap_or_default();
                if let Ok(v) = self.sim_job(id).await {
                    out.push_str(&format!(
                        "--- Buildkite job {id} ({}, exit {}, signal_reason {}):\n{}\n",
                        v["state"],
                        v["exit_status"],
                        v["signal_reason"],
                        tail(v["log"].as_str().unwrap_or_default(), 30)
                    ));
                }
            }
        }
        out.push_str(&format!("--- controller log:\n{}", tail(&self.op.log_text(), 40)));
        out
    }

    /// Ends a test: on success the namespace goes; on failure the error carries the
    /// diagnostics (the namespace is deleted when dropped).
    async fn finish(self, outcome: Result<()>, test: &str, names: &[&str]) -> Result<()> {
        match outcome {
            Ok(()) => {
                println!("{test}: passed in {:.1} s", self.started.elapsed().as_secs_f64());
                let log = self.op.log_text();
                ensure!(!log.contains(&self.token), "the API token leaked into the log");
                ensure!(!log.contains(WEBHOOK_SECRET), "the webhook secret leaked into the log");
                self.ns.delete().await
            }
            Err(e) => {
                let diag = self.diagnostics(names).await;
                Err(e.context(format!("{test} failed after {:.1} s{diag}", self.started.elapsed().as_secs_f64())))
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ----- KernelJobs -------------------------------------------------------------------------

fn task_file(name: &str) -> Result<String> {
    let path = repo_root().join("tests/tasks/vectoradd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A test-mode KernelJob of the vectoradd task on `queue` (no pool, no pipeline named: the
/// job builds on the pipeline benchkite manages for the queue) with `submission` as
/// `submission.py`.
fn job(name: &str, queue: &str, submission: &str) -> Result<KernelJob> {
    let sources: BTreeMap<String, String> = [
        ("eval.py".to_string(), task_file("eval.py")?),
        ("reference.py".to_string(), task_file("reference.py")?),
        ("submission.py".to_string(), submission.to_string()),
    ]
    .into();
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {
            "queue": queue, "mode": "test", "lang": "py", "main": "eval.py", "sources": sources,
            "tests": [{"size": 64, "seed": 1}, {"size": 256, "seed": 2}],
            "benchmarks": [{"size": 1024, "seed": 3}],
            "testTimeoutSeconds": 60, "benchmarkTimeoutSeconds": 60, "rankedTimeoutSeconds": 60,
        },
    }))?)
}

async fn wait_finished(api: &Api<KernelJob>, name: &str, timeout: Duration) -> Result<KernelJob> {
    wait_until(&format!("KernelJob {name} finished"), timeout, || async {
        let j = api.get(name).await?;
        Ok(j.status.as_ref().is_some_and(|s| s.phase.is_finished()).then_some(j))
    })
    .await
}

fn status(job: &KernelJob) -> Result<&KernelJobStatus> {
    job.status.as_ref().context("the KernelJob has no status")
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `status/reason: message` of a condition, for assertion messages.
fn show(c: Option<&Condition>) -> String {
    c.map(|c| format!("{}/{}: {}", c.status, c.reason, c.message)).unwrap_or_else(|| "absent".into())
}

/// Where Buildkite would interpolate in `s` (docs "Environment variables" → "Variable
/// interpolation": `$VAR`, `${VAR}`; `$$` is an escaped, literal `$`): the first offending
/// snippet, if any.
fn interpolation_in(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            match b.get(i + 1) {
                Some(b'$') => {
                    i += 2;
                    continue;
                }
                Some(c) if *c == b'{' || *c == b'_' || c.is_ascii_alphabetic() => {
                    let end = (i + 24).min(s.len());
                    return Some(String::from_utf8_lossy(&b[i..end]).into_owned());
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Every string (keys too) of a YAML document.
fn yaml_strings(v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml::Value::String(s) => out.push(s.clone()),
        serde_yaml::Value::Sequence(seq) => seq.iter().for_each(|x| yaml_strings(x, out)),
        serde_yaml::Value::Mapping(m) => {
            for (k, x) in m {
                yaml_strings(k, out);
                yaml_strings(x, out);
            }
        }
        serde_yaml::Value::Tagged(t) => yaml_strings(&t.value, out),
        _ => {}
    }
}

/// `n` bytes of poorly compressible printable ASCII (xorshift64 from a fixed seed).
fn noise(n: usize) -> String {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b' ' + (x % 95) as u8)
        })
        .collect()
}

// ----- 1. the managed pipeline ------------------------------------------------------------

/// A KernelJob naming only a queue succeeds on the pipeline benchkite created for it: the
/// pipeline's steps name the queue literally, interpolate nothing, skip the checkout, and
/// the build ran there on a per-attempt branch.
#[tokio::test]
async fn a_job_succeeds_on_the_pipeline_benchkite_created() -> Result<()> {
    let rig = rig("bkmanaged", Setup::default(), |_, _| {}).await?;
    let api: Api<KernelJob> = rig.ns.api();
    api.create(&PostParams::default(), &job("managed", &rig.queue, &task_file("submission_ok.py")?)?).await?;
    let outcome = async {
        let j = wait_finished(&api, "managed", Duration::from_secs(180)).await?;
        let s = status(&j)?;
        ensure!(s.phase == Phase::Succeeded && s.passed == Some(true), "{:?}: {}", s.phase, s.message);
        let slug = rig.managed_slug();
        let bref = s.build.clone().context("status.build")?;
        ensure!(bref.pipeline == slug, "the build ran on {}, not on the managed pipeline {slug}", bref.pipeline);

        // The pipeline benchkite created.
        let p = rig.pipeline(&slug).await?;
        let configuration = p["configuration"].as_str().context("the pipeline has no configuration")?;
        if let Some(at) = interpolation_in(configuration) {
            bail!("the managed pipeline's configuration interpolates {at:?}:\n{configuration}");
        }
        let doc: serde_yaml::Value = serde_yaml::from_str(configuration).context("configuration is not YAML")?;
        let mut strings = Vec::new();
        yaml_strings(&doc, &mut strings);
        if let Some(s) = strings.iter().find(|s| interpolation_in(s).is_some()) {
            bail!("a value of the managed steps interpolates: {s:?}");
        }
        let steps = doc.get("steps").and_then(|s| s.as_sequence()).context("configuration has no steps list")?;
        let commands: Vec<&serde_yaml::Value> =
            steps.iter().filter(|s| s.get("command").is_some() || s.get("commands").is_some()).collect();
        ensure!(!commands.is_empty(), "no command step:\n{configuration}");
        for step in &commands {
            let queue = step.get("agents").and_then(|a| a.get("queue")).and_then(|q| q.as_str());
            ensure!(queue == Some(rig.queue.as_str()), "a step targets queue {queue:?}, not {}", rig.queue);
            let skip = step.get("checkout").and_then(|c| c.get("skip")).and_then(|s| s.as_bool());
            ensure!(skip == Some(true), "a step does not skip the checkout: {step:?}");
        }
        let rule = format!("queue={}", rig.queue);
        for step in p["steps"].as_array().context("REST steps")? {
            let rules = step["agent_query_rules"].as_array().cloned().unwrap_or_default();
            ensure!(rules.iter().any(|r| r == &json!(rule)), "REST step rules {rules:?} lack {rule}");
        }

        // The build: on this pipeline, on the attempt's own branch, run on the queue's agent
        // without a checkout.
        let build = rig.build(&slug, bref.number).await?;
        let run_id = &s.attempts.first().context("no attempt")?.run_id;
        let branch = build["branch"].as_str().unwrap_or_default();
        ensure!(
            branch == format!("benchkite/{}/{run_id}", rig.instance),
            "branch {branch:?} is not benchkite/{}/{run_id}",
            rig.instance
        );
        let jobs = build["jobs"].as_array().cloned().unwrap_or_default();
        ensure!(!jobs.is_empty(), "the build has no jobs");
        for bj in &jobs {
            let rules = bj["agent_query_rules"].as_array().cloned().unwrap_or_default();
            ensure!(rules.iter().any(|r| r == &json!(rule)), "job rules {rules:?} lack {rule}");
            let agent = bj["agent"]["name"].as_str().unwrap_or_default();
            ensure!(agent.starts_with(&rig.queue), "the job ran on agent {agent:?}, not one of {}", rig.queue);
            let id = bj["id"].as_str().context("job id")?;
            let sj = rig.sim_job(id).await?;
            ensure!(sj["checkout"] == "skipped", "job {id} checkout: {}", sj["checkout"]);
        }
        let stats = rig.sim.job_stats();
        ensure!(stats.checkouts == 0 && stats.checkouts_skipped >= 1, "checkouts: {stats:?}");
        let counters = rig.sim.counters();
        ensure!(counters.endpoint(CREATE_PIPELINE).status(201) == 1, "one pipeline created: {counters:?}");
        ensure!(counters.endpoint(CREATE_BUILD).status(201) == 1, "one build: {counters:?}");
        Ok(())
    }
    .await;
    rig.finish(outcome, "managed pipeline", &["managed"]).await
}

/// A KernelJob that already waits when the controller starts (a restart, an upgrade, jobs
/// queued before the install) is looked up in Buildkite before it is submitted, so that no
/// attempt ever gets a second build. On a queue whose managed pipeline does not exist yet
/// there is nothing to find: the job is submitted, once, on the pipeline benchkite creates.
#[tokio::test]
async fn a_job_waiting_when_the_controller_starts_is_submitted() -> Result<()> {
    let prepared = prepare("bkwaiting", Setup::default(), |_, _| {}).await?;
    let api: Api<KernelJob> = prepared.ns.api();
    api.create(&PostParams::default(), &job("waiting", &prepared.queue, &task_file("submission_ok.py")?)?).await?;
    let rig = prepared.start_controller().await?;
    let outcome = async {
        let j = wait_finished(&api, "waiting", Duration::from_secs(180)).await?;
        let s = status(&j)?;
        ensure!(s.phase == Phase::Succeeded && s.passed == Some(true), "{:?}: {}", s.phase, s.message);
        let bref = s.build.clone().context("status.build")?;
        ensure!(bref.pipeline == rig.managed_slug(), "built on {}, not {}", bref.pipeline, rig.managed_slug());
        let counters = rig.sim.counters();
        ensure!(counters.endpoint(CREATE_BUILD).status(201) == 1, "one build: {counters:?}");
        Ok(())
    }
    .await;
    rig.finish(outcome, "job waiting at start", &["waiting"]).await
}

// ----- 2. a 1,000,000-byte submission -----------------------------------------------------

/// A submission of 1,000,000 bytes (the sources' total, the controller's limit) that is
/// mostly poorly compressible text, in a Python comment so the evaluation still runs,
/// succeeds end to end; no string of the build's env is over Linux's 128 KiB per-string
/// exec limit.
#[tokio::test]
async fn a_million_byte_submission_succeeds() -> Result<()> {
    const TOTAL: usize = 1_000_000;
    let setup = Setup { extra_args: vec!["--max-source-bytes".into(), TOTAL.to_string()], ..Default::default() };
    let rig = rig("bkmillion", setup, |_, _| {}).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let harness = task_file("eval.py")?.len() + task_file("reference.py")?.len();
    let head = format!("{}\n# ", task_file("submission_ok.py")?);
    let pad = TOTAL.checked_sub(harness + head.len() + 1).context("the harness alone is over 1,000,000 bytes")?;
    let submission = format!("{head}{}\n", noise(pad));
    let big = job("million", &rig.queue, &submission)?;
    let total: usize = big.spec.sources.values().map(String::len).sum();
    ensure!(total == TOTAL, "the sources are {total} bytes, not {TOTAL}");
    api.create(&PostParams::default(), &big).await.context("creating the 1,000,000-byte KernelJob")?;
    let outcome = async {
        let j = wait_finished(&api, "million", Duration::from_secs(300)).await?;
        let s = status(&j)?;
        ensure!(s.phase == Phase::Succeeded && s.passed == Some(true), "{:?}: {}", s.phase, s.message);
        ensure!(s.attempts.len() == 1, "attempts: {:?}", s.attempts);
        let bref = s.build.clone().context("status.build")?;
        let build = rig.build(&bref.pipeline, bref.number).await?;
        let env = build["env"].as_object().context("the build has no env")?;
        let mut env_bytes = 0;
        for (k, v) in env {
            let len = k.len() + 1 + v.as_str().map_or(0, str::len) + 1;
            env_bytes += len;
            ensure!(len <= MAX_ARG_STRLEN, "build env {k} is a {len}-byte exec string, over {MAX_ARG_STRLEN}");
        }
        let stats = rig.sim.job_stats();
        ensure!(stats.exec_env_errors == 0, "the agent could not exec a job env: {stats:?}");
        println!("a {TOTAL}-byte submission travelled in {} build env variables, {env_bytes} bytes", env.len());
        Ok(())
    }
    .await;
    rig.finish(outcome, "1,000,000-byte submission", &["million"]).await
}

// ----- 3. a step timeout ------------------------------------------------------------------

/// A job whose step outlives the managed pipeline's step timeout (1 minute, the shortest
/// Buildkite takes) is killed by the agent (`signal_reason: cancel`, job `timed_out`) and
/// ends `TimedOut`/`StepTimedOut` with the reason, after exactly one build and no retry of
/// any kind.
#[tokio::test]
async fn a_step_timeout_ends_the_job_without_a_retry() -> Result<()> {
    let setup = Setup { extra_args: vec!["--pipeline-step-timeout-minutes".into(), "1".into()], ..Default::default() };
    let rig = rig("bksteptimeout", setup, |_, _| {}).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let mut hang = job("hang", &rig.queue, &task_file("submission_hang.py")?)?;
    // Neither the runner's test timeout nor the job's deadline may end it first.
    hang.spec.test_timeout_seconds = Some(600.0);
    hang.spec.timeout_seconds = Some(1200);
    api.create(&PostParams::default(), &hang).await?;
    let outcome = async {
        let j = wait_finished(&api, "hang", Duration::from_secs(300)).await?;
        let s = status(&j)?;
        ensure!(s.phase == Phase::TimedOut, "{:?}: {}", s.phase, s.message);
        let failed = condition(&s.conditions, "Failed");
        ensure!(failed.is_some_and(|c| c.status == "True" && c.reason == "StepTimedOut"), "Failed: {}", show(failed));
        ensure!(s.message.to_lowercase().contains("timeout"), "the message does not say why: {}", s.message);
        ensure!(s.attempts.len() == 1, "one attempt, no infrastructure retry: {:?}", s.attempts);
        ensure!(s.attempts[0].outcome.starts_with("StepTimedOut"), "attempt outcome: {}", s.attempts[0].outcome);
        let bref = s.build.clone().context("status.build")?;
        let build = rig.build(&bref.pipeline, bref.number).await?;
        let jobs = build["jobs"].as_array().cloned().unwrap_or_default();
        ensure!(jobs.len() == 1, "one try of the step (no automatic retry): {jobs:?}");
        let bj = &jobs[0];
        ensure!(bj["state"] == "timed_out" && bj["signal_reason"] == "cancel", "job: {bj}");
        ensure!(bj["retried"] == false, "the timed-out job was retried: {bj}");
        ensure!(rig.sim.counters().endpoint(CREATE_BUILD).status(201) == 1, "exactly one build");
        ensure!(rig.sim.job_stats().retried == 0, "Buildkite retried a job: {:?}", rig.sim.job_stats());
        Ok(())
    }
    .await;
    rig.finish(outcome, "step timeout", &["hang"]).await
}

// ----- 4. a pool on a user pipeline with "Cancel intermediate builds" ----------------------

/// A pool pointed at a pipeline of the user's with "Cancel intermediate builds" on shows
/// `PipelineReady=False` naming the setting; the same pipeline with the setting off is
/// valid.
///
/// The fleet controller watches AgentPools in every namespace (it has no namespace flag):
/// like `tests/fleet.rs`, this test must not share the cluster with another fleet
/// controller (a benchmark's), which would also reconcile these pools against its own
/// Buildkite (and this one theirs).
#[tokio::test]
async fn a_pool_on_a_pipeline_that_cancels_intermediate_builds_names_the_setting() -> Result<()> {
    let bad_queue = "q-cancels";
    let good_queue = "q-valid";
    // A pipeline KernelJobs could run on: the queue named literally, no checkout, the result
    // uploaded (like the managed one).
    let user_pipeline = |slug: &str, queue: &str, cancel: bool| PipelineConfig {
        slug: slug.into(),
        configuration: Some(format!(
            "steps:\n  - label: kernel evaluation\n    command: benchkite run\n    agents:\n      queue: {queue}\n    \
             checkout:\n      skip: true\n    artifact_paths: result.json\n"
        )),
        cancel_running_branch_builds: cancel,
        ..Default::default()
    };
    let setup = Setup {
        controllers: "fleet",
        extra_args: vec!["--discover-gpu-nodes".into(), "false".into()],
        ..Default::default()
    };
    let rig = rig("bkpoolpipe", setup, |cfg, _| {
        cfg.clusters[0].queues.extend([bad_queue.to_string(), good_queue.to_string()]);
        cfg.pipelines.push(user_pipeline("evals-cancelling", bad_queue, true));
        cfg.pipelines.push(user_pipeline("evals-valid", good_queue, false));
    })
    .await?;
    let outcome = async {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = rig.ns.api();
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": "agent-token"}, "stringData": {"token": "e2e-not-a-secret"}}),
                )?,
            )
            .await?;
        let pools: Api<benchkite::api::AgentPool> = rig.ns.api();
        for (name, queue, pipeline) in
            [("cancels", bad_queue, "evals-cancelling"), ("valid", good_queue, "evals-valid")]
        {
            let pool: benchkite::api::AgentPool = serde_json::from_value(json!({
                "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
                "metadata": {"name": name},
                "spec": {
                    "queue": queue,
                    // No GPU node: the pool is about its pipeline.
                    "gpuNodeSelector": {"matchLabels": {"benchkite.dev/e2e": "no-such-node"}},
                    "agent": {"tokenSecretRef": {"name": "agent-token"}},
                    "buildkite": {"pipeline": pipeline},
                },
            }))?;
            pools.create(&PostParams::default(), &pool).await?;
        }
        let ready = |name: &'static str| {
            let pools = pools.clone();
            async move {
                wait_until(&format!("AgentPool {name} PipelineReady"), Duration::from_secs(90), || async {
                    let p = pools.get(name).await?;
                    let s = p.status.clone().unwrap_or_default();
                    let c = condition(&s.conditions, "PipelineReady").filter(|c| c.status != "Unknown").cloned();
                    Ok(c.map(|c| (c, s.pipeline.clone())))
                })
                .await
            }
        };
        let (bad, bad_pipeline) = ready("cancels").await?;
        ensure!(bad.status == "False" && bad.reason == "PipelineInvalid", "PipelineReady: {}", show(Some(&bad)));
        ensure!(
            bad.message.contains("cancel_running_branch_builds"),
            "the condition does not name the setting: {}",
            bad.message
        );
        for other in ["QueueMismatch", "QueueInterpolated", "CheckoutNotSkipped", "NoResultArtifact", "WrongCluster"] {
            ensure!(!bad.message.contains(other), "a problem the pipeline does not have ({other}): {}", bad.message);
        }
        let bad_pipeline = bad_pipeline.context("status.pipeline")?;
        ensure!(bad_pipeline.slug == "evals-cancelling" && !bad_pipeline.managed, "{bad_pipeline:?}");
        let (good, good_pipeline) = ready("valid").await?;
        ensure!(good.status == "True", "the same pipeline without the setting: {}", show(Some(&good)));
        ensure!(good_pipeline.is_some_and(|p| p.slug == "evals-valid" && !p.managed), "valid pool's status.pipeline");
        Ok(())
    }
    .await;
    rig.finish(outcome, "pool on a cancelling pipeline", &[]).await
}

// ----- 5. a token without write_builds ----------------------------------------------------

/// A controller whose token lacks `write_builds` creates no build; the KernelJob waits with
/// a condition (reason `MissingTokenScope`) naming the scope.
#[tokio::test]
async fn a_token_without_write_builds_is_named_on_the_job() -> Result<()> {
    let scopes: Vec<&'static str> = DEFAULT_TOKEN_SCOPES.iter().copied().filter(|s| *s != "write_builds").collect();
    let setup = Setup { token_scopes: Some(scopes), ..Default::default() };
    let rig = rig("bkscope", setup, |_, _| {}).await?;
    let api: Api<KernelJob> = rig.ns.api();
    api.create(&PostParams::default(), &job("unscoped", &rig.queue, &task_file("submission_ok.py")?)?).await?;
    let outcome = async {
        let c = wait_until("the KernelJob names the missing scope", Duration::from_secs(90), || async {
            let j = api.get("unscoped").await?;
            let s = j.status.unwrap_or_default();
            Ok(s.conditions.into_iter().find(|c| c.reason == "MissingTokenScope"))
        })
        .await?;
        ensure!(c.message.contains("write_builds"), "the condition does not name write_builds: {}", show(Some(&c)));
        let j = api.get("unscoped").await?;
        let s = status(&j)?;
        ensure!(s.phase == Phase::Pending && s.build.is_none(), "{:?} {:?}", s.phase, s.build);
        let stalled = condition(&s.conditions, "Stalled");
        ensure!(stalled.is_some_and(|c| c.status == "True"), "an admin must act (Stalled): {}", show(stalled));
        let creates = rig.sim.counters().endpoint(CREATE_BUILD);
        ensure!(creates.total == 0, "a build create was sent with a token that cannot: {creates:?}");
        Ok(())
    }
    .await;
    rig.finish(outcome, "missing write_builds", &["unscoped"]).await
}

// ----- 6. an expired result artifact ------------------------------------------------------

/// A build that passed with its `result.json` artifact `expired` (past the organization's
/// build retention) and no meta-data result ends `ResultMissing` at the first look: the
/// artifacts are listed once, nothing is downloaded, no look is repeated.
#[tokio::test]
async fn an_expired_result_artifact_ends_result_missing_at_once() -> Result<()> {
    let rig = rig("bkexpired", Setup::default(), |cfg, _| {
        // The agents give the runner no meta-data channel: the result is the artifact alone.
        cfg.agents[0].env.insert("BENCHKITE_REPORT".into(), "never".into());
        // Artifacts expire 0.2 s after their upload, and every artifact listing is answered
        // 1.5 s after it was sent: whenever benchkite looks, result.json is `expired`.
        cfg.artifact_retention_secs = 0.2;
        cfg.faults
            .endpoints
            .insert(LIST_BUILD_ARTIFACTS.into(), EndpointFault { latency_ms: 1500, ..Default::default() });
    })
    .await?;
    let api: Api<KernelJob> = rig.ns.api();
    api.create(&PostParams::default(), &job("expired", &rig.queue, &task_file("submission_ok.py")?)?).await?;
    let outcome = async {
        let j = wait_finished(&api, "expired", Duration::from_secs(180)).await?;
        let s = status(&j)?;
        let failed = condition(&s.conditions, "Failed");
        ensure!(
            s.phase == Phase::Failed && failed.is_some_and(|c| c.status == "True" && c.reason == "ResultMissing"),
            "{:?}, Failed: {}",
            s.phase,
            show(failed)
        );
        ensure!(s.message.contains("expired"), "the message does not say the artifact expired: {}", s.message);
        let bref = s.build.clone().context("status.build")?;
        let build = rig.build(&bref.pipeline, bref.number).await?;
        ensure!(build["state"] == "passed", "the build: {}", build["state"]);
        ensure!(
            build["meta_data"].get("benchkite.result").is_none(),
            "the scenario needs a build without a meta-data result: {}",
            build["meta_data"]
        );
        let counters = rig.sim.counters();
        let listings = counters.endpoint(LIST_BUILD_ARTIFACTS);
        ensure!(listings.total == 1, "result.json was looked for {} times, not once: {listings:?}", listings.total);
        let downloads = counters
            .total_with_prefix("GET /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}/jobs")
            + counters.total_with_prefix("GET /v2/organizations/{org}/jobs");
        ensure!(downloads == 0, "{downloads} artifact requests beyond the listing: {counters:?}");
        ensure!(rig.sim.storage_counters().total == 0, "an expired artifact was fetched from storage");
        Ok(())
    }
    .await;
    rig.finish(outcome, "expired artifact", &["expired"]).await
}

// ----- 7. webhooks in the services-console shape ------------------------------------------

/// With the poller effectively off (one listing per 10 minutes), webhook bodies in the shape
/// captured from Buildkite's services console (`2018-03-25 03:58:14 UTC` timestamps, no
/// `meta_data`, no `pipeline`) carry the job to its end.
#[tokio::test]
async fn webhooks_with_utc_timestamps_and_no_meta_data_move_the_job() -> Result<()> {
    let setup = Setup {
        webhooks: Some((WebhookBodyShape::ServicesConsole, Vec::new())),
        poll_interval_secs: 600,
        ..Default::default()
    };
    let rig = rig("bkconsole", setup, |_, _| {}).await?;
    let api: Api<KernelJob> = rig.ns.api();
    api.create(&PostParams::default(), &job("console", &rig.queue, &task_file("submission_ok.py")?)?).await?;
    let outcome = async {
        // From the moment the build exists, only webhooks can tell the controller about it.
        wait_until("the build created", Duration::from_secs(60), || async {
            let j = api.get("console").await?;
            Ok(j.status.and_then(|s| s.build))
        })
        .await?;
        let listed_before = rig.sim.counters().endpoint(LIST_PIPELINE_BUILDS).total;
        let j = wait_finished(&api, "console", Duration::from_secs(180)).await?;
        let s = status(&j)?;
        ensure!(s.phase == Phase::Succeeded && s.passed == Some(true), "{:?}: {}", s.phase, s.message);
        let listed = rig.sim.counters().endpoint(LIST_PIPELINE_BUILDS).total - listed_before;
        ensure!(listed == 0, "{listed} build listings: the poller, not the webhooks, moved the job");
        let hooks = rig.sim.webhook_stats();
        let hook = hooks.first().context("no webhook")?;
        ensure!(hook.config.body_shape == WebhookBodyShape::ServicesConsole);
        let finished = hook.stats.delivered_by_event.get("build.finished").copied().unwrap_or(0);
        ensure!(finished >= 1, "build.finished was not delivered: {:?}", hook.stats);
        Ok(())
    }
    .await;
    rig.finish(outcome, "services-console webhooks", &["console"]).await
}

// ----- 8. a lost build.finished -----------------------------------------------------------

/// Webhooks are at most once. With `build.finished` (and every job event) never delivered,
/// the poller catches the finished build with its first listing after the build finished.
#[tokio::test]
async fn a_lost_build_finished_webhook_is_caught_by_the_next_poll() -> Result<()> {
    const POLL_SECS: u64 = 5;
    let setup = Setup {
        // Only these are delivered: no build.finished, and no job event (whose body shows the
        // build as it is when sent, finished included).
        webhooks: Some((WebhookBodyShape::Documented, vec!["build.scheduled", "build.running"])),
        poll_interval_secs: POLL_SECS,
        ..Default::default()
    };
    let rig = rig("bklost", setup, |_, _| {}).await?;
    let api: Api<KernelJob> = rig.ns.api();
    // Work enough (at import: the compile pre-run and the test run) that the job is seen
    // running before its build finishes: a build is recorded in the status once it has
    // existed `RECORD_AFTER` (10 s), so a shorter one would go straight to its result.
    let slow = format!("import time\ntime.sleep(8)\n\n{}", task_file("submission_ok.py")?);
    api.create(&PostParams::default(), &job("lost", &rig.queue, &slow)?).await?;
    let outcome = async {
        // Running (from build.running): the poller's rounds are now one listing of finished
        // builds each (it lists running ones only while a build is not known to run).
        let running = wait_until("the job running", Duration::from_secs(120), || async {
            let j = api.get("lost").await?;
            let phase = j.status.as_ref().map(|s| s.phase).unwrap_or_default();
            Ok((phase == Phase::Running || phase.is_finished()).then_some(j))
        })
        .await?;
        let s = status(&running)?;
        ensure!(s.phase == Phase::Running, "finished before it was seen running: {:?} {}", s.phase, s.message);
        let bref = s.build.clone().context("status.build")?;
        let finished = wait_until("the build finished in Buildkite", Duration::from_secs(120), || async {
            let state = rig.sim.build_state(&bref.pipeline, u64::try_from(bref.number)?);
            Ok(state.filter(|s| matches!(s.as_str(), "passed" | "failed" | "canceled")).map(|_| Instant::now()))
        })
        .await?;
        let listed_before = rig.sim.counters().endpoint(LIST_PIPELINE_BUILDS).total;
        let j = wait_finished(&api, "lost", Duration::from_secs(60)).await?;
        let listed = rig.sim.counters().endpoint(LIST_PIPELINE_BUILDS).total - listed_before;
        let s = status(&j)?;
        ensure!(s.phase == Phase::Succeeded && s.passed == Some(true), "{:?}: {}", s.phase, s.message);
        ensure!(listed <= 1, "{listed} listings after the build finished: the first poll ({POLL_SECS} s) missed it");
        let hooks = rig.sim.webhook_stats();
        let hook = hooks.first().context("no webhook")?;
        let by_event = &hook.stats.delivered_by_event;
        ensure!(by_event.get("build.running").copied().unwrap_or(0) >= 1, "webhooks were not on: {by_event:?}");
        ensure!(
            !by_event.keys().any(|e| e == "build.finished" || e.starts_with("job.")),
            "an event that says the build finished was delivered: {by_event:?}"
        );
        println!(
            "the lost build.finished was caught {:.1} s after the build finished (poll interval {POLL_SECS} s, {listed} listing)",
            finished.elapsed().as_secs_f64()
        );
        Ok(())
    }
    .await;
    rig.finish(outcome, "lost build.finished", &["lost"]).await
}

#[test]
fn interpolation_is_found_and_escapes_are_not() {
    assert!(
        interpolation_in("queue: ${KERNELBOT_QUEUE:-default}").is_some_and(|at| at.starts_with("${KERNELBOT_QUEUE"))
    );
    assert!(interpolation_in("queue=$KERNELBOT_QUEUE").is_some());
    assert!(interpolation_in("cost: $$5 and `$`, $1").is_none());
    assert!(interpolation_in("echo $$HOME").is_none());
    assert_eq!(noise(1000).len(), 1000);
    assert!(noise(1000).bytes().all(|b| (b' '..=b'~').contains(&b)));
}
