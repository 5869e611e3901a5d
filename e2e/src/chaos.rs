//! Helpers of the chaos suite (`e2e/tests/chaos.rs`, `make test-chaos`): a rig with the
//! Buildkite simulator and restartable controllers holding canary secrets, cheap
//! KernelJobs with a known outcome, the audit that finds lost and duplicated jobs, the
//! secret scan, the agent-pod isolation checks and a kube-apiserver restart guard.
//!
//! Every scenario prints one `chaos <scenario>: key=value …` line with its figures.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use benchkite::api::KernelJob;
use benchkite::api::kerneljob::Phase;
use buildkite_sim::config::{
    AgentPoolConfig, ExecutorConfig, RateLimitConfig, WebhookAuth, WebhookConfig, WebhookDelivery,
};
use buildkite_sim::{SimConfig, SimHandle, Simulator};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::operator::{Operator, binary, install_crds};
use crate::{TestNamespace, client, e2e_dir, kubeconfig_path, wait_until};

/// The REST token the simulator accepts and the controllers use: distinctive, so that a
/// leak anywhere is found by [`scan_for_secrets`].
pub const CANARY_API_TOKEN: &str = "bkua_chaosCANARYtoken_Zq7Xw3Lp9Rv2Nt5Hs8Kd";
/// The webhook secret of every chaos rig.
pub const CANARY_WEBHOOK_SECRET: &str = "whsec_chaosCANARYsecret_Mb4Fy6Jc1Tg0Wu3Qe7";
/// The create-build endpoint's counter key in the simulator.
pub const CREATE: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";

/// `BENCHKITE_CHAOS_LONG=1`: the long variants (bigger counts, longer outages).
pub fn long() -> bool {
    std::env::var("BENCHKITE_CHAOS_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `ci` when not [`long`], else `long`.
pub fn pick<T>(ci: T, long_value: T) -> T {
    if long() { long_value } else { ci }
}

/// A small deterministic PRNG (xorshift64*): the seed is printed so a run can be repeated
/// with `BENCHKITE_CHAOS_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> (Rng, u64) {
        let seed = std::env::var("BENCHKITE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
        });
        (Rng(seed.max(1)), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % hi.saturating_sub(lo).max(1))
    }
}

/// The figures of one scenario, printed as one line.
#[derive(Default)]
pub struct Figures {
    scenario: String,
    items: Vec<(String, String)>,
}

impl Figures {
    pub fn new(scenario: &str) -> Self {
        Figures { scenario: scenario.to_string(), items: Vec::new() }
    }

    pub fn add(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.items.push((key.to_string(), value.to_string()));
        self
    }

    pub fn print(&self) {
        let body: Vec<String> = self.items.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("chaos {}: {}", self.scenario, body.join(" "));
    }
}

/// What a chaos job's build does (the simulator's job script reads `CHAOS_OUTCOME`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0 and a summary saying the kernel passed → Succeeded, passed.
    Pass,
    /// Exit 0 and a summary saying the kernel failed its checks → Succeeded, not passed.
    Wrong,
    /// Exit 3, no result → Failed (BuildFailed).
    Fail,
    /// Exit 0, no meta-data summary, the result only as the `result.json` artifact (its
    /// state at upload follows the build env `BUILDKITE_SIM_ARTIFACT_STATE`).
    Artifact,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Wrong => "wrong",
            Outcome::Fail => "fail",
            Outcome::Artifact => "artifact",
        }
    }

    /// A fixed mix: 80% pass, 10% wrong, 10% broken.
    pub fn mix(i: usize) -> Outcome {
        match i % 10 {
            7 => Outcome::Wrong,
            9 => Outcome::Fail,
            _ => Outcome::Pass,
        }
    }

    fn parse(s: &str) -> Option<Outcome> {
        match s {
            "pass" => Some(Outcome::Pass),
            "wrong" => Some(Outcome::Wrong),
            "fail" => Some(Outcome::Fail),
            "artifact" => Some(Outcome::Artifact),
            _ => None,
        }
    }
}

/// The simulator's job: sleeps `CHAOS_SLEEP`, then leaves the `benchkite.result` summary the
/// runner would (or fails), unsigned, through `buildkite-agent meta-data set` (the simulator's
/// shim, with the job's token): chaos controllers run with `--unsigned-results=accept`.
pub const JOB_SCRIPT: &str = r#"sleep "${CHAOS_SLEEP:-0.2}"
case "${CHAOS_OUTCOME:-pass}" in
  fail) echo "chaos: the build is broken" >&2; exit 3 ;;
  artifact)
    printf '{"success":true,"error":"","system":{"gpu":"chaos","device_count":1,"cpu":"","runtime":"CUDA","platform":"","torch":"","hostname":"sim"},"runs":{}}\n' > result.json
    exit 0 ;;
  wrong) verdict=false ;;
  *) verdict=true ;;
esac
buildkite-agent meta-data set benchkite.result "$(printf '{"v":1,"success":true,"passed":%s}' "$verdict")"
"#;

/// Writes `<dir>/benchkite`, an executable that runs [`JOB_SCRIPT`] (whatever its
/// arguments), and returns its path.
pub fn write_stub_benchkite(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("benchkite");
    std::fs::write(&path, format!("#!/bin/sh\n{JOB_SCRIPT}")).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))?;
    Ok(path)
}

/// A KernelJob whose build sleeps `sleep_ms` and ends with `outcome`.
pub fn chaos_job(name: &str, queue: &str, outcome: Outcome, sleep_ms: u64) -> Result<KernelJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": name},
        "spec": {
            "queue": queue, "mode": "test", "lang": "py", "main": "eval.py",
            "sources": {"eval.py": "print('chaos')\n", "submission.py": "def kernel(x):\n    return x\n"},
            "tests": [{"size": 1, "seed": 1}],
            "timeoutSeconds": 1800,
            "env": {"CHAOS_OUTCOME": outcome.as_str(), "CHAOS_SLEEP": format!("{:.3}", sleep_ms as f64 / 1000.0)},
        },
    }))?)
}

/// Creates jobs `<prefix>000…` with [`Outcome::mix`], 16 requests at a time.
pub async fn create_jobs(
    api: &Api<KernelJob>,
    prefix: &str,
    queue: &str,
    range: std::ops::Range<usize>,
    sleep_ms: u64,
) -> Result<()> {
    futures::stream::iter(range.map(|i| {
        let api = api.clone();
        let name = format!("{prefix}{i:03}");
        let queue = queue.to_string();
        async move {
            let job = chaos_job(&name, &queue, Outcome::mix(i), sleep_ms)?;
            // Retried: the API server may be restarting under us.
            wait_until(&format!("creating KernelJob {name}"), Duration::from_secs(120), || async {
                match api.create(&PostParams::default(), &job).await {
                    Ok(_) => Ok(Some(())),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(())),
                    Err(e) => Err(anyhow!(e)),
                }
            })
            .await
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// Rig options.
pub struct RigOptions {
    pub webhooks: bool,
    pub delivery: WebhookDelivery,
    pub agents: u32,
    pub poll_secs: u32,
    pub rate: RateLimitConfig,
    pub extra_args: Vec<String>,
    /// Pipelines the user manages, besides the one benchkite manages per queue.
    pub pipelines: Vec<buildkite_sim::config::PipelineConfig>,
    /// A user pipeline of this slug whose one step runs on the rig's queue.
    pub user_pipeline: Option<String>,
    /// GraphQL access for the rig's token, with this budget; `None`: the token has none (the
    /// controller is refused and works over REST).
    pub graphql: Option<buildkite_sim::config::GraphqlConfig>,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            webhooks: true,
            delivery: WebhookDelivery::default(),
            agents: 16,
            poll_secs: 5,
            // Buildkite's own limits: the per-user one (50/min) binds the rig's one token.
            rate: crate::sim::buildkite_rate_limit(60.0),
            extra_args: Vec::new(),
            pipelines: Vec::new(),
            user_pipeline: None,
            graphql: None,
        }
    }
}

/// A webhook of the simulator to a controller on `port`, signed with the canary secret.
pub fn webhook_config(port: u16, delivery: WebhookDelivery) -> WebhookConfig {
    WebhookConfig {
        url: webhook_url(port),
        token: CANARY_WEBHOOK_SECRET.into(),
        auth: WebhookAuth::Signature,
        delivery,
        ..Default::default()
    }
}

pub fn webhook_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/webhooks/buildkite")
}

pub fn free_port() -> Result<u16> {
    crate::free_port()
}

/// Whether the controller binary has a flag (new flags land while this suite exists).
pub fn controller_has_flag(flag: &str) -> bool {
    static HELP: OnceLock<String> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        binary()
            .ok()
            .and_then(|b| std::process::Command::new(b).args(["controller", "--help"]).output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    });
    help.contains(flag)
}

/// A simulator whose API token is the canary, and KernelJob controllers for one test
/// namespace that can be killed and restarted (each start is a new process with the same
/// flags; every log file is kept for the secret scan).
pub struct ChaosRig {
    pub sim: SimHandle,
    pub ns: TestNamespace,
    pub queue: String,
    pub op: Option<Operator>,
    /// Controller processes started so far.
    pub starts: u32,
    http_port: u16,
    args: Vec<String>,
    logs: BTreeSet<PathBuf>,
    token_file: PathBuf,
}

impl ChaosRig {
    /// Starts the simulator (agents on the rig's queue running [`JOB_SCRIPT`], webhooks to
    /// the controller when asked) and one controller.
    pub async fn start(prefix: &str, opts: RigOptions) -> Result<(Client, ChaosRig)> {
        let mut rig = Self::without_controller(prefix, opts).await?;
        rig.1.restart_controller()?;
        Ok(rig)
    }

    /// Like [`ChaosRig::start`] without starting a controller.
    pub async fn without_controller(prefix: &str, opts: RigOptions) -> Result<(Client, ChaosRig)> {
        let client = client().await?;
        install_crds(&client).await?;
        let ns = TestNamespace::create(&client, prefix).await?;
        let queue = format!("q-{}", ns.name());
        let dir = e2e_dir().join("chaos").join(ns.name());
        std::fs::create_dir_all(&dir)?;
        // The managed pipeline's step runs `benchkite run` from the agent's PATH: here a
        // stand-in that runs JOB_SCRIPT.
        let stub = write_stub_benchkite(&dir.join("bin"))?;
        let mut executor = ExecutorConfig::command(JOB_SCRIPT);
        if let ExecutorConfig::Command { env, .. } = &mut executor {
            env.insert("PATH".into(), crate::sim::agent_path(&stub)?);
        }
        let mut cfg = SimConfig {
            api_tokens: vec![CANARY_API_TOKEN.to_string()],
            executor,
            rate_limit: opts.rate.clone(),
            ..Default::default()
        };
        cfg.clusters[0].queues.push(queue.clone());
        cfg.pipelines.extend(opts.pipelines.iter().cloned());
        if let Some(slug) = &opts.user_pipeline {
            cfg.pipelines.push(crate::sim::user_pipeline(slug, &queue, None));
        }
        cfg.agents.push(AgentPoolConfig { queue: queue.clone(), count: opts.agents, ..Default::default() });
        if let Some(g) = &opts.graphql {
            cfg.graphql = g.clone();
            crate::sim::grant_graphql(&mut cfg);
        }
        let http_port = free_port()?;
        if opts.webhooks {
            cfg.webhooks.push(webhook_config(http_port, opts.delivery.clone()));
        }
        let sim = Simulator::start(cfg).await?;
        // The token from a file, the webhook secret from the environment: both ways in.
        let token_file = dir.join("api-token");
        std::fs::write(&token_file, CANARY_API_TOKEN)?;
        let mut args = crate::sim::kerneljob_args(&sim, ns.name());
        args.extend([
            "--buildkite-token-file".to_string(),
            token_file.to_string_lossy().into_owned(),
            "--poll-interval-seconds".to_string(),
            opts.poll_secs.to_string(),
            // The stand-in job leaves an unsigned result (signatures: e2e/tests/hostile_forgery.rs).
            "--unsigned-results=accept".to_string(),
        ]);
        args.extend(opts.extra_args.iter().cloned());
        let rig = ChaosRig { sim, ns, queue, op: None, starts: 0, http_port, args, logs: BTreeSet::new(), token_file };
        Ok((client, rig))
    }

    /// The controller's webhook URL.
    pub fn webhook_url(&self) -> String {
        webhook_url(self.http_port)
    }

    /// The port of the rig's controller (the simulator's first webhook goes there).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Starts a controller process with the rig's flags plus `extra_args`/`extra_env`,
    /// serving health and webhooks on `http_port`, logging to
    /// `<e2e dir>/logs/chaos-<ns>-<name>.log`.
    pub fn start_process(
        &mut self,
        name: &str,
        http_port: u16,
        extra_args: &[String],
        extra_env: &[(&str, &str)],
    ) -> Result<Operator> {
        let mut args = self.args.clone();
        args.extend(["--http-addr".to_string(), format!("127.0.0.1:{http_port}")]);
        args.extend(extra_args.iter().cloned());
        if controller_has_flag("--metrics-addr") && !args.iter().any(|a| a == "--metrics-addr") {
            args.extend(["--metrics-addr".to_string(), format!("127.0.0.1:{}", free_port()?)]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env = vec![("BUILDKITE_WEBHOOK_SECRET", CANARY_WEBHOOK_SECRET)];
        env.extend_from_slice(extra_env);
        let log_name = format!("chaos-{}-{name}", self.ns.name());
        let op = Operator::start_with_env(&log_name, &argv, &env)?;
        self.logs.insert(op.log.clone());
        self.starts += 1;
        Ok(op)
    }

    /// SIGKILLs the current controller (if any) and starts a new one.
    pub fn restart_controller(&mut self) -> Result<()> {
        if let Some(op) = self.op.take() {
            op.kill();
        }
        self.op = Some(self.start_process("controller", self.http_port, &[], &[])?);
        Ok(())
    }

    /// Deletes the namespace while the controller still runs (it releases the jobs'
    /// finalizers), then stops the controller and removes the token file.
    pub async fn delete(self) -> Result<()> {
        let ChaosRig { ns, op, token_file, .. } = self;
        let deleted = ns.delete().await;
        drop(op);
        let _ = std::fs::remove_file(&token_file);
        deleted
    }

    /// Every controller log of this rig, concatenated.
    pub fn log_text(&self) -> String {
        self.logs.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<Vec<_>>().join("\n")
    }

    /// Log lines matching `needle` (for figures and failure messages).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text().lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }

    /// Every build in the simulator (full JSON: env, meta-data, every job including the ones
    /// `retry.automatic` replaced), read through `/_sim`: never rate limited, so the audit
    /// neither competes with the controller nor changes the rate figures, and never refused as
    /// too deep the way an org-wide REST listing is.
    pub async fn builds(&self) -> Result<Vec<Value>> {
        crate::sim::all_builds(&self.sim).await
    }

    /// Waits until every KernelJob of the namespace is finished (or `timeout`).
    pub async fn wait_all_finished(&self, expected: usize, timeout: Duration) -> Result<Vec<KernelJob>> {
        let api: Api<KernelJob> = self.ns.api();
        let last = std::sync::Mutex::new(String::new());
        let r = wait_until(&format!("{expected} KernelJobs finished"), timeout, || async {
            let jobs = api.list(&ListParams::default()).await?.items;
            let done = jobs.iter().filter(|j| phase(j).is_some_and(Phase::is_finished)).count();
            if let Ok(mut l) = last.lock() {
                *l = format!("{done}/{} finished, {expected} expected; {:?}", jobs.len(), phases(&jobs));
            }
            Ok((jobs.len() == expected && done == expected).then_some(jobs))
        })
        .await;
        r.with_context(|| last.lock().map(|l| l.clone()).unwrap_or_default())
    }
}

pub fn phase(j: &KernelJob) -> Option<Phase> {
    j.status.as_ref().map(|s| s.phase)
}

/// Jobs per phase.
pub fn phases(jobs: &[KernelJob]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for j in jobs {
        *out.entry(phase(j).map(|p| p.as_str().to_string()).unwrap_or_else(|| "None".into())).or_default() += 1;
    }
    out
}

/// One simulator build as the audit sees it.
#[derive(Debug, Clone)]
pub struct SimBuild {
    pub number: i64,
    pub state: String,
    pub run_id: Option<String>,
    pub job: Option<String>,
    /// The `passed` of the `benchkite.result` summary, when there is one.
    pub verdict: Option<bool>,
    /// The latest try of a job ended for an infrastructure reason ([`infra_job`]).
    pub infra: bool,
}

impl SimBuild {
    pub fn from_json(b: &Value) -> SimBuild {
        let md = &b["meta_data"];
        let verdict = md["benchkite.result"]
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .and_then(|v| v["passed"].as_bool());
        // Only the latest try of each step says how the build ended: a try that
        // `retry.automatic` replaced (`retried`) was followed by another one.
        let infra = b["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.iter().filter(|j| j["retried"] != Value::Bool(true)).any(infra_job));
        // benchkite names each attempt's build by its branch (`benchkite/<instance>/<run id>`);
        // a job with its own `spec.branch` is found by meta-data.
        let run_id = b["branch"]
            .as_str()
            .and_then(|br| br.strip_prefix(benchkite::kerneljob::board::BRANCH_PREFIX))
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, run)| run.to_string())
            .or_else(|| md["benchkite.dev/run-id"].as_str().map(str::to_string));
        SimBuild {
            number: b["number"].as_i64().unwrap_or(-1),
            state: b["state"].as_str().unwrap_or_default().to_string(),
            run_id,
            job: md["benchkite.dev/kerneljob"].as_str().map(str::to_string),
            verdict,
            infra,
        }
    }
}

/// A job that ended for an infrastructure reason, by Buildkite's documented semantics (REST
/// "Job data model", agent `agent/run_job.go`): the agent was lost (exit -1, no signal, no
/// signal reason), stopped (`agent_stop`), could not start the process
/// (`process_run_error`), the agent stack failed (`stack_error`), or the bootstrap exited
/// 255. A kill with a signal (`cancel`: a cancel or the step timeout) is not one.
fn infra_job(j: &Value) -> bool {
    let signal = j["signal"].as_str().filter(|s| !s.is_empty());
    match j["signal_reason"].as_str().filter(|s| !s.is_empty() && *s != "none") {
        Some(reason) => matches!(reason, "agent_stop" | "process_run_error" | "stack_error"),
        None => matches!((j["exit_status"].as_i64(), signal), (Some(-1 | 255), None)),
    }
}

/// The audit of a run: every job against the simulator's builds.
#[derive(Debug, Default)]
pub struct Audit {
    pub jobs: usize,
    pub finished: usize,
    pub builds: usize,
    pub attempts: usize,
    /// Extra builds for a run id that already had one.
    pub duplicates: usize,
    /// The run ids with more than one build (at most 10), for the error message.
    pub duplicated_runs: Vec<String>,
    /// Builds no job attempt claims.
    pub orphans: usize,
    /// Attempts without a build, and jobs that never finished.
    pub lost: usize,
    /// Jobs with more than one attempt (infrastructure retries).
    pub retried: usize,
    /// Jobs whose phase is not the one their build implies (or not their scripted outcome).
    pub mismatched: Vec<String>,
    pub unfinished: Vec<String>,
    pub by_phase: BTreeMap<String, usize>,
}

impl Audit {
    pub fn figures(&self, f: &mut Figures) {
        f.add("jobs", self.jobs)
            .add("finished", self.finished)
            .add("builds", self.builds)
            .add("attempts", self.attempts)
            .add("retried", self.retried)
            .add("duplicates", self.duplicates)
            .add("orphans", self.orphans)
            .add("lost", self.lost)
            .add("mismatched", self.mismatched.len())
            .add("phases", format!("{:?}", self.by_phase).replace(' ', ""));
    }

    /// Fails on any lost, duplicated, orphaned, unfinished or wrongly finished job.
    pub fn ensure_clean(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.duplicates > 0 {
            problems.push(format!("{} duplicate builds (runs {:?})", self.duplicates, self.duplicated_runs));
        }
        if self.orphans > 0 {
            problems.push(format!("{} builds belong to no attempt", self.orphans));
        }
        if self.lost > 0 {
            problems.push(format!("{} jobs/attempts lost; unfinished: {:?}", self.lost, self.unfinished));
        }
        if !self.mismatched.is_empty() {
            let shown: Vec<&String> = self.mismatched.iter().take(10).collect();
            problems.push(format!("{} jobs in the wrong phase, e.g. {shown:?}", self.mismatched.len()));
        }
        if self.builds != self.attempts {
            problems.push(format!("{} builds for {} attempts", self.builds, self.attempts));
        }
        ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }
}

/// Compares jobs with builds: one build per attempt, none without an attempt, every
/// finished job in the phase its last build implies and, when `scripted` is set, in the
/// phase its [`Outcome`] implies (unless infrastructure failures used up its retries).
pub fn audit(jobs: &[KernelJob], builds: &[Value], scripted: bool) -> Audit {
    let builds: Vec<SimBuild> = builds.iter().map(SimBuild::from_json).collect();
    let mut by_run: BTreeMap<String, Vec<&SimBuild>> = BTreeMap::new();
    let mut a = Audit { jobs: jobs.len(), builds: builds.len(), by_phase: phases(jobs), ..Default::default() };
    for b in &builds {
        match &b.run_id {
            Some(r) => by_run.entry(r.clone()).or_default().push(b),
            None => a.orphans += 1,
        }
    }
    a.duplicates = by_run.values().map(|v| v.len().saturating_sub(1)).sum();
    a.duplicated_runs = by_run.iter().filter(|(_, v)| v.len() > 1).map(|(r, _)| r.clone()).take(10).collect();
    let mut claimed = BTreeSet::new();
    for j in jobs {
        let name = j.name_any();
        let Some(s) = &j.status else {
            a.lost += 1;
            a.unfinished.push(format!("{name}: no status"));
            continue;
        };
        a.attempts += s.attempts.len();
        if s.attempts.len() > 1 {
            a.retried += 1;
        }
        for at in &s.attempts {
            claimed.insert(at.run_id.clone());
            if !by_run.contains_key(&at.run_id) {
                a.lost += 1;
                a.unfinished.push(format!("{name}: attempt {} has no build", at.run_id));
            }
        }
        if !s.phase.is_finished() {
            a.lost += 1;
            a.unfinished.push(format!("{name}: {:?} {}", s.phase, s.message));
            continue;
        }
        a.finished += 1;
        let Some(last) = s.attempts.last() else {
            a.mismatched.push(format!("{name}: finished {:?} without an attempt: {}", s.phase, s.message));
            continue;
        };
        let Some(build) = by_run.get(&last.run_id).and_then(|v| v.first()) else { continue };
        // Earlier attempts end only by infrastructure failures.
        for at in &s.attempts[..s.attempts.len() - 1] {
            if let Some(b) = by_run.get(&at.run_id).and_then(|v| v.first())
                && !(b.infra || b.state == "canceled")
            {
                a.mismatched.push(format!("{name}: retried after build #{} ended {} (not infra)", b.number, b.state));
            }
        }
        let implied = match build.state.as_str() {
            "passed" => build.verdict.map(|v| (Phase::Succeeded, Some(v))).unwrap_or((Phase::Failed, None)),
            "failed" => (Phase::Failed, None),
            "canceled" | "canceling" => (s.phase, None),
            other => {
                a.mismatched.push(format!("{name}: {:?} while build #{} is {other}", s.phase, build.number));
                continue;
            }
        };
        if s.phase != implied.0 || (implied.0 == Phase::Succeeded && s.passed != implied.1) {
            a.mismatched.push(format!(
                "{name}: {:?}/passed={:?} but build #{} ({}) implies {:?}/{:?}",
                s.phase, s.passed, build.number, build.state, implied.0, implied.1
            ));
            continue;
        }
        if scripted {
            let want = j.spec.env.get("CHAOS_OUTCOME").and_then(|o| Outcome::parse(o));
            let ok = match want {
                Some(Outcome::Pass) => s.phase == Phase::Succeeded && s.passed == Some(true),
                Some(Outcome::Wrong) => s.phase == Phase::Succeeded && s.passed == Some(false),
                Some(Outcome::Fail) => s.phase == Phase::Failed,
                // Decided by the artifact's state: any end.
                Some(Outcome::Artifact) => s.phase.is_finished(),
                None => true,
            };
            let infra_exhausted = s.phase == Phase::Failed && build.infra;
            if !ok && !infra_exhausted {
                a.mismatched
                    .push(format!("{name}: scripted {want:?} ended {:?}/{:?}: {}", s.phase, s.passed, s.message));
            }
        }
    }
    a.orphans += by_run.keys().filter(|r| !claimed.contains(*r)).map(|r| by_run[r].len()).sum::<usize>();
    a
}

/// Where a canary was found.
#[derive(Debug, Default)]
pub struct SecretScan {
    pub sources: usize,
    pub bytes: usize,
    pub leaks: Vec<String>,
}

impl SecretScan {
    pub fn figures(&self, f: &mut Figures) {
        f.add("secret_sources", self.sources)
            .add("secret_bytes_scanned", self.bytes)
            .add("secret_leaks", self.leaks.len());
    }

    pub fn ensure_clean(&self) -> Result<()> {
        ensure!(self.leaks.is_empty(), "secrets leaked: {:?}", self.leaks);
        ensure!(self.sources > 0 && self.bytes > 0, "nothing was scanned");
        Ok(())
    }

    /// Scans one text for the canaries (verbatim, base64, or a 16-character slice).
    pub fn scan(&mut self, source: &str, text: &str) {
        self.sources += 1;
        self.bytes += text.len();
        for needle in needles() {
            if let Some(at) = text.find(&needle) {
                let from = text[..at].char_indices().rev().nth(60).map(|(i, _)| i).unwrap_or(0);
                let to = (at + needle.len() + 60).min(text.len());
                let context = text.get(from..to).unwrap_or("").replace('\n', "⏎");
                self.leaks.push(format!("{source}: …{context}…"));
            }
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn needles() -> Vec<String> {
    let mut out = Vec::new();
    for s in [CANARY_API_TOKEN, CANARY_WEBHOOK_SECRET] {
        out.push(s.to_string());
        // A prefix of the encoding (padding-independent).
        let b = base64(s.as_bytes());
        out.push(b[..b.len() - 4].to_string());
        // A slice from the middle catches shortened or partly masked values.
        out.push(s[12..28].to_string());
    }
    out
}

/// Scans for both canaries: every controller log of the rig, all Events, KernelJobs and
/// AgentPools in the given namespaces, every build in the simulator (env, meta-data,
/// decoded payload) with its job logs, and `extra` texts (error messages, answers).
pub async fn scan_for_secrets(
    client: &Client,
    rig: &ChaosRig,
    namespaces: &[&str],
    extra: &[(String, String)],
) -> Result<SecretScan> {
    let mut scan = SecretScan::default();
    let logs = rig.log_text();
    ensure!(!logs.is_empty(), "no controller log to scan");
    scan.scan("controller logs", &logs);
    for ns in namespaces {
        let events: Api<Event> = Api::namespaced(client.clone(), ns);
        for e in events.list(&ListParams::default()).await?.items {
            scan.scan(&format!("Event {ns}/{}", e.name_any()), &serde_json::to_string(&e)?);
        }
        let jobs: Api<KernelJob> = Api::namespaced(client.clone(), ns);
        for j in jobs.list(&ListParams::default()).await?.items {
            scan.scan(&format!("KernelJob {ns}/{}", j.name_any()), &serde_json::to_string(&j)?);
        }
        let pools: Api<benchkite::api::AgentPool> = Api::namespaced(client.clone(), ns);
        for p in pools.list(&ListParams::default()).await?.items {
            scan.scan(&format!("AgentPool {ns}/{}", p.name_any()), &serde_json::to_string(&p)?);
        }
    }
    let http = reqwest::Client::new();
    for b in rig.builds().await? {
        let number = b["number"].as_i64().unwrap_or(-1);
        scan.scan(&format!("build #{number}"), &b.to_string());
        // The payload is one variable (`KERNELBOT_PAYLOAD`) or, when large, split into
        // `BENCHKITE_PAYLOAD_*` parts: reassembled as the runner does.
        let env = &b["env"];
        let has_payload =
            env.as_object().is_some_and(|m| m.keys().any(|k| benchkite::contract::payload::is_payload_env(k)));
        if has_payload {
            let limits = benchkite::contract::payload::PayloadLimits::default();
            let decoded = benchkite::contract::payload::payload_from_env(|k| env[k].as_str().map(str::to_string))
                .and_then(|payload| benchkite::contract::payload::decode_payload_json(&payload, &limits));
            match decoded {
                Ok(json) => scan.scan(&format!("build #{number} payload"), &String::from_utf8_lossy(&json)),
                Err(e) => scan.leaks.push(format!("build #{number}: undecodable payload ({e}): cannot be scanned")),
            }
        }
        for job in b["jobs"].as_array().cloned().unwrap_or_default() {
            let Some(id) = job["id"].as_str() else { continue };
            let text = http.get(format!("{}/jobs/{id}", rig.sim.sim_url())).send().await?.text().await?;
            scan.scan(&format!("build #{number} job {id} log"), &text);
        }
    }
    for (source, text) in extra {
        scan.scan(source, text);
    }
    Ok(scan)
}

/// GPU resources a container asks for: `nvidia.com/gpu`, `amd.com/gpu`, MIG/partition
/// resources (`…/mig-…`, `…gpu…`).
fn is_gpu_resource(name: &str) -> bool {
    let (vendor, res) = name.split_once('/').unwrap_or(("", name));
    !vendor.is_empty() && !vendor.ends_with("kubernetes.io") && (res.contains("gpu") || res.starts_with("mig-"))
}

/// The GPUs a pod claims (the larger of requests and limits, over all containers).
pub fn pod_gpus(pod: &Pod) -> i64 {
    let Some(spec) = &pod.spec else { return 0 };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| {
            let r = c.resources.as_ref();
            let sum = |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
                m.map(|m| {
                    m.iter()
                        .filter(|(k, _)| is_gpu_resource(k))
                        .map(|(_, q)| q.0.parse::<i64>().unwrap_or(i64::MAX))
                        .sum()
                })
                .unwrap_or(0)
            };
            sum(r.and_then(|r| r.limits.as_ref())).max(sum(r.and_then(|r| r.requests.as_ref())))
        })
        .sum()
}

/// Isolation of agent pods: no service-account token (automount off, no projected token
/// volume, nothing mounted at the token path), never privileged or allowed to escalate,
/// at most `max_gpus` GPUs each. Returns the number of pods checked.
pub fn check_agent_isolation(pods: &[Pod], max_gpus: i64) -> Result<usize> {
    let mut problems = Vec::new();
    for pod in pods {
        let name = pod.name_any();
        let Some(spec) = &pod.spec else {
            problems.push(format!("{name}: no spec"));
            continue;
        };
        if spec.automount_service_account_token != Some(false) {
            problems.push(format!("{name}: automountServiceAccountToken {:?}", spec.automount_service_account_token));
        }
        for v in spec.volumes.iter().flatten() {
            let token = v
                .projected
                .as_ref()
                .is_some_and(|p| p.sources.iter().flatten().any(|s| s.service_account_token.is_some()))
                || v.name.starts_with("kube-api-access");
            if token {
                problems.push(format!("{name}: service-account token volume {}", v.name));
            }
        }
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            for m in c.volume_mounts.iter().flatten() {
                if m.mount_path.starts_with("/var/run/secrets/kubernetes.io") {
                    problems.push(format!("{name}/{}: mounts {}", c.name, m.mount_path));
                }
            }
            match &c.security_context {
                None => problems.push(format!("{name}/{}: no securityContext", c.name)),
                Some(sc) => {
                    if sc.privileged == Some(true) {
                        problems.push(format!("{name}/{}: privileged", c.name));
                    }
                    if sc.allow_privilege_escalation != Some(false) {
                        problems.push(format!(
                            "{name}/{}: allowPrivilegeEscalation {:?}",
                            c.name, sc.allow_privilege_escalation
                        ));
                    }
                    // Exactly what the runner's sandbox needs, everything else dropped.
                    let caps = sc.capabilities.as_ref();
                    let allowed = benchkite::fleet::pod::security::AGENT_CAPABILITIES;
                    for cap in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
                        if !allowed.contains(&cap.as_str()) {
                            problems.push(format!("{name}/{}: adds capability {cap}", c.name));
                        }
                    }
                    if !caps.and_then(|c| c.drop.as_ref()).is_some_and(|d| d.iter().any(|x| x == "ALL")) {
                        problems.push(format!("{name}/{}: does not drop ALL capabilities", c.name));
                    }
                    if sc.read_only_root_filesystem != Some(true) {
                        problems.push(format!("{name}/{}: writable root filesystem", c.name));
                    }
                }
            }
        }
        let gpus = pod_gpus(pod);
        if gpus > max_gpus {
            problems.push(format!("{name}: claims {gpus} GPUs (max {max_gpus})"));
        }
    }
    ensure!(problems.is_empty(), "agent pod isolation: {problems:?}");
    Ok(pods.len())
}

/// No node holds live pods claiming more GPUs than it has. Returns the claims per node.
pub async fn check_node_gpu_claims(client: &Client, pods: &[Pod]) -> Result<BTreeMap<String, (i64, i64)>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut claims: BTreeMap<String, i64> = BTreeMap::new();
    for p in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *claims.entry(node).or_default() += pod_gpus(p);
        }
    }
    let mut out = BTreeMap::new();
    for (node, claimed) in claims {
        let n = nodes.get(&node).await?;
        let have: i64 = n
            .status
            .and_then(|s| s.allocatable)
            .map(|a| a.iter().filter(|(k, _)| is_gpu_resource(k)).map(|(_, q)| q.0.parse::<i64>().unwrap_or(0)).sum())
            .unwrap_or(0);
        ensure!(claimed <= have, "node {node}: agent pods claim {claimed} GPUs, it has {have}");
        out.insert(node, (claimed, have));
    }
    Ok(out)
}

/// Whether a process we started is alive (not a zombie).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .is_some_and(|zombie| !zombie)
}

/// The e2e cluster's kube-apiserver (kwokctl's binary runtime). [`ApiServer::stop`]
/// SIGTERMs it; [`ApiServer::start`] runs `kwokctl start cluster`, which starts every
/// component of the cluster that is not running, with kwok's own command lines, logs and
/// pid files — the API server, and also a controller-manager or scheduler that exited
/// because it lost its leader lease while the API server was away. If a test stopped the
/// API server and failed before starting it, dropping the guard starts it.
pub struct ApiServer {
    cluster_dir: PathBuf,
    name: String,
    pid: u32,
    stopped: bool,
}

/// The kwok components of a cluster.
pub const KWOK_COMPONENTS: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller"];

impl ApiServer {
    /// Finds the API server of the cluster the suite is pointed at (`BENCHKITE_E2E_DIR`,
    /// `BENCHKITE_E2E_CLUSTER` or the only cluster in its kwok dir). Refuses the shared
    /// default cluster unless `BENCHKITE_CHAOS_RESTART_APISERVER=1` (CI sets it).
    pub fn find() -> Result<ApiServer> {
        let dir = e2e_dir();
        let shared = crate::repo_root().join("target").join("e2e");
        let allowed = std::env::var("BENCHKITE_CHAOS_RESTART_APISERVER").is_ok_and(|v| v == "1");
        if dir == shared && !allowed {
            bail!(
                "refusing to restart the kube-apiserver of the default cluster {} (others may be using it): \
                 point BENCHKITE_E2E_DIR/BENCHKITE_E2E_CLUSTER at your own cluster, or set \
                 BENCHKITE_CHAOS_RESTART_APISERVER=1 (CI does)",
                dir.display()
            );
        }
        let clusters = dir.join("kwok").join("clusters");
        let name = match std::env::var("BENCHKITE_E2E_CLUSTER") {
            Ok(n) if !n.is_empty() => n,
            _ => {
                let names: Vec<String> = std::fs::read_dir(&clusters)
                    .with_context(|| format!("reading {}", clusters.display()))?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect();
                match names.as_slice() {
                    [one] => one.clone(),
                    _ => bail!("several clusters in {}: set BENCHKITE_E2E_CLUSTER", clusters.display()),
                }
            }
        };
        let cluster_dir = clusters.join(&name);
        let mut this = ApiServer { cluster_dir, name, pid: 0, stopped: false };
        let pid = this.component_pid("kube-apiserver")?;
        let argv: Vec<OsString> = split_nul(&std::fs::read(format!("/proc/{pid}/cmdline"))?);
        let binary = argv.first().map(PathBuf::from).context("empty command line")?;
        ensure!(
            binary.starts_with(&this.cluster_dir) && binary.file_name().is_some_and(|n| n == "kube-apiserver"),
            "pid {pid} is {} — not the kube-apiserver of {}",
            binary.display(),
            this.cluster_dir.display()
        );
        let port = kubeconfig_port()?;
        ensure!(
            argv.iter().any(|a| a.to_string_lossy() == format!("--secure-port={port}")),
            "pid {pid} does not serve the kubeconfig's port {port}"
        );
        this.pid = pid;
        Ok(this)
    }

    fn component_pid(&self, component: &str) -> Result<u32> {
        let pidfile = self.cluster_dir.join("pids").join(format!("{component}.pid"));
        std::fs::read_to_string(&pidfile)
            .with_context(|| format!("reading {}", pidfile.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {}", pidfile.display()))
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The cluster's components that are not running.
    pub fn dead_components(&self) -> Vec<String> {
        KWOK_COMPONENTS
            .iter()
            .filter(|c| !self.component_pid(c).is_ok_and(process_alive))
            .map(|c| c.to_string())
            .collect()
    }

    /// SIGTERM, then SIGKILL after 20 s; returns once the process is gone.
    pub fn stop(&mut self) -> Result<()> {
        let pid = i32::try_from(self.pid)?;
        self.stopped = true;
        // SAFETY: kill(2) on the API server's pid, verified in `find`; no memory involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while process_alive(self.pid) {
            if start.elapsed() > Duration::from_secs(20) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("kube-apiserver {pid} did not exit");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// `kwokctl start cluster`: starts every component that is not running (returns their
    /// names).
    pub fn start(&mut self) -> Result<Vec<String>> {
        let dead = self.dead_components();
        let bin_dir = std::process::Command::new(crate::repo_root().join("e2e/cluster/build-binaries"))
            .stderr(std::process::Stdio::null())
            .output()
            .context("e2e/cluster/build-binaries")?;
        let bin_dir = String::from_utf8_lossy(&bin_dir.stdout).lines().last().unwrap_or_default().trim().to_string();
        let workdir = self.cluster_dir.parent().and_then(Path::parent).context("kwok workdir")?;
        let out = std::process::Command::new(Path::new(&bin_dir).join("kwokctl"))
            .args(["start", "cluster", "--name", &self.name, "--timeout", "60s"])
            .env("KWOK_WORKDIR", workdir)
            .output()
            .context("kwokctl start cluster")?;
        ensure!(
            out.status.success(),
            "kwokctl start cluster: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.pid = self.component_pid("kube-apiserver")?;
        self.stopped = false;
        let still = self.dead_components();
        ensure!(still.is_empty(), "still not running after kwokctl start cluster: {still:?}");
        Ok(dead)
    }

    /// Waits until the API server answers again.
    pub async fn wait_healthy(timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        wait_until("kube-apiserver healthy", timeout, || async {
            let c = client().await?;
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c);
            namespaces.list(&ListParams::default().limit(1)).await?;
            Ok(Some(()))
        })
        .await?;
        Ok(start.elapsed())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if !self.stopped {
            return;
        }
        eprintln!("chaos: the kube-apiserver was left stopped; starting it again");
        if let Err(e) = self.start() {
            eprintln!("chaos: could not restart the kube-apiserver: {e:#}");
            return;
        }
        let outcome = std::thread::spawn(|| -> Result<Duration> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(ApiServer::wait_healthy(Duration::from_secs(120)))
        })
        .join();
        match outcome {
            Ok(Ok(took)) => eprintln!("chaos: kube-apiserver healthy again after {took:?}"),
            Ok(Err(e)) => eprintln!("chaos: kube-apiserver not healthy after a restart: {e:#}"),
            Err(_) => eprintln!("chaos: waiting for the kube-apiserver panicked"),
        }
    }
}

fn split_nul(bytes: &[u8]) -> Vec<OsString> {
    use std::os::unix::ffi::OsStrExt;
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| std::ffi::OsStr::from_bytes(s).to_os_string()).collect()
}

fn kubeconfig_port() -> Result<u16> {
    let text = std::fs::read_to_string(kubeconfig_path())?;
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server:")).context("no server in the kubeconfig")?;
    server
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .context("kubeconfig server port")
}

/// Requests per endpoint between two counter snapshots, short names, busiest first.
pub fn endpoint_delta(before: &buildkite_sim::CountersSnapshot, after: &buildkite_sim::CountersSnapshot) -> String {
    let mut rows: Vec<(u64, String)> = after
        .endpoints
        .iter()
        .map(|(k, v)| (v.total.saturating_sub(before.endpoint(k).total), k.replace("/v2/organizations/{org}", "")))
        .filter(|(n, _)| *n > 0)
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    rows.iter().map(|(n, k)| format!("{}:{n}", k.replace(' ', "_"))).collect::<Vec<_>>().join(",")
}

/// Requests per second over a window, from two counter totals.
pub fn rate(before: u64, after: u64, took: Duration) -> f64 {
    after.saturating_sub(before) as f64 / took.as_secs_f64().max(0.001)
}

/// Fetches `/metrics` of a controller, if it serves them (`--metrics-addr`).
pub async fn scrape_metrics(op: &Operator) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", op.pid())).ok()?;
    let args: Vec<String> = split_nul(&cmdline).iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let addr = args.iter().position(|a| a == "--metrics-addr").and_then(|i| args.get(i + 1))?;
    reqwest::get(format!("http://{addr}/metrics")).await.ok()?.text().await.ok()
}

/// Sum of a metric's samples whose line contains every `filter` (e.g. `result="refused"`).
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n == name || n == format!("{name}_total")))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Sets the state of every artifact of build `build_id` (`POST /_sim/builds/{id}/artifacts/state`):
/// `error`, `expired`, `deleted` poison a result the controller has not read yet.
pub async fn set_artifacts_state(sim: &SimHandle, build_id: &str, state: &str) -> Result<()> {
    let url = format!("{}/builds/{build_id}/artifacts/state", sim.sim_url());
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&json!({ "state": state }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    anyhow::ensure!(resp.status().is_success(), "POST {url}: {}", resp.status());
    Ok(())
}

/// Creates `count` builds in `pipeline` on branches `filler-<i>` through the REST API (with
/// the rig's token, retrying 429s) and forces each to `passed` through `/_sim`: finished
/// builds that fill a recovery look-up's window. Returns how many were created.
pub async fn fill_pipeline(sim: &SimHandle, pipeline: &str, count: usize) -> Result<usize> {
    let http = reqwest::Client::new();
    let url = format!("{}/organizations/{}/pipelines/{pipeline}/builds", sim.api_url(), sim.organization());
    let ids: Vec<String> = futures::stream::iter((0..count).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({"commit": "HEAD", "branch": format!("filler-{i}"), "message": "filler"});
            for _ in 0..600 {
                let resp = http.post(&url).bearer_auth(CANARY_API_TOKEN).json(&body).send().await?;
                if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                anyhow::ensure!(resp.status().is_success(), "creating filler {i}: {}", resp.status());
                let b: Value = resp.json().await?;
                return b["id"].as_str().map(str::to_string).context("a build without an id");
            }
            anyhow::bail!("creating filler {i}: still rate limited")
        }
    }))
    .buffer_unordered(8)
    .try_collect()
    .await?;
    for id in &ids {
        let url = format!("{}/builds/{id}/state", sim.sim_url());
        let resp = http.post(&url).json(&json!({"state": "passed"})).send().await?;
        anyhow::ensure!(resp.status().is_success(), "POST {url}: {}", resp.status());
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_(exit: i64, signal: Option<&str>, reason: Option<&str>, retried: bool) -> Value {
        json!({"type": "script", "exit_status": exit, "signal": signal, "signal_reason": reason, "retried": retried})
    }

    fn build(branch: &str, jobs: Vec<Value>) -> Value {
        json!({"number": 1, "state": "failed", "branch": branch, "meta_data": {}, "jobs": jobs})
    }

    #[test]
    fn infrastructure_is_judged_on_the_latest_tries_by_the_documented_semantics() {
        let infra = |jobs: Vec<Value>| SimBuild::from_json(&build("main", jobs)).infra;
        // Lost agent, stopped agent, a process that could not start, a failed bootstrap.
        assert!(infra(vec![try_(-1, None, None, false)]));
        assert!(infra(vec![try_(-1, Some("SIGTERM"), Some("agent_stop"), false)]));
        assert!(infra(vec![try_(-1, None, Some("process_run_error"), false)]));
        assert!(infra(vec![try_(255, None, None, false)]));
        // A kill (a cancel or the step timeout) and a real failure are not.
        assert!(!infra(vec![try_(-1, Some("SIGTERM"), Some("cancel"), false)]));
        assert!(!infra(vec![try_(3, None, None, false)]));
        // A lost try that Buildkite retried inside the build says nothing about its end.
        assert!(!infra(vec![try_(-1, None, None, true), try_(3, None, None, false)]));
    }

    #[test]
    fn a_build_belongs_to_the_run_its_branch_names_else_its_meta_data() {
        let b = build("benchkite/inst/0b1c-2", vec![]);
        assert_eq!(SimBuild::from_json(&b).run_id.as_deref(), Some("0b1c-2"));
        let mut own = build("feature/x", vec![]);
        own["meta_data"]["benchkite.dev/run-id"] = json!("0b1c-3");
        assert_eq!(SimBuild::from_json(&own).run_id.as_deref(), Some("0b1c-3"));
        assert_eq!(SimBuild::from_json(&build("main", vec![])).run_id, None);
    }

    #[test]
    fn the_stub_benchkite_runs_the_job_script() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("benchkite-e2e-stub-{}", std::process::id()));
        let stub = write_stub_benchkite(&dir)?;
        let meta = dir.join("meta");
        // A stand-in `buildkite-agent` that records its arguments.
        let agent_dir = dir.join("agent");
        std::fs::create_dir_all(&agent_dir)?;
        let agent = agent_dir.join("buildkite-agent");
        std::fs::write(&agent, "#!/bin/sh\nprintf '%s\\n' \"$*\" >> \"$AGENT_LOG\"\n")?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))?;
        let path = format!("{}:{}", agent_dir.display(), std::env::var("PATH").unwrap_or_default());
        let out = std::process::Command::new(&stub)
            .arg("run")
            .env("CHAOS_SLEEP", "0")
            .env("CHAOS_OUTCOME", "wrong")
            .env("AGENT_LOG", &meta)
            .env("PATH", path)
            .output()?;
        let written = std::fs::read_to_string(&meta)?;
        std::fs::remove_dir_all(&dir)?;
        ensure!(out.status.success(), "{out:?}");
        ensure!(written.starts_with("meta-data set benchkite.result "), "{written}");
        ensure!(written.contains(r#""passed":false"#), "{written}");
        Ok(())
    }
}
