//! The Buildkite simulator as the KernelJob e2e suites use it.
//!
//! The simulator runs with Buildkite's real behaviour (see `e2e/buildkite-sim/README.md`):
//! settings steps never see the build env, every job checks out the pipeline's repository
//! unless its step skips it, and the per-user rate limit is on. The KernelJob controller
//! creates its own pipeline per queue (`benchkite::buildkite::managed_slug`), so nothing here
//! relies on the simulator's default `kernelbot` pipeline; a test that names its own pipeline
//! defines it with [`user_pipeline`], as a user would.

use anyhow::{Context, Result, bail, ensure};
use buildkite_sim::config::{
    AgentPoolConfig, CheckoutConfig, ExecutorConfig, PipelineConfig, RateLimitConfig, StepConfig,
};
use buildkite_sim::{SimConfig, SimHandle};
use serde_json::Value;

/// Buildkite's REST limits (docs "REST API rate limits"): 200 requests per organization and
/// 50 per user (token) per 60 s window.
pub const ORG_LIMIT: u64 = 200;
/// See [`ORG_LIMIT`].
pub const USER_LIMIT: u64 = 50;

/// Buildkite's limits on a window of `window_secs` (tests that need a faster clock shorten
/// the window; both limits stay on, in Buildkite's 4:1 ratio).
pub fn buildkite_rate_limit(window_secs: f64) -> RateLimitConfig {
    RateLimitConfig { org_limit: ORG_LIMIT, user_limit: USER_LIMIT, window_secs }
}

/// A simulator with `agents` agents on `queue` (a queue of the organization's default
/// cluster) running the real `benchkite run`, with Buildkite's own rate limits: 200 per
/// organization and 50 per user per minute (one token serves a test, so the per-user limit
/// is the one that binds).
///
/// The managed pipelines' step runs the command `benchkite run`, which the agent finds on its
/// `PATH` (the agent image installs it there): the agents' `PATH` starts with the directory of
/// the binary under test ([`agent_path`]).
pub fn queue_config(queue: &str, agents: u32) -> Result<SimConfig> {
    let mut executor = ExecutorConfig::command("benchkite run");
    if let ExecutorConfig::Command { env, .. } = &mut executor {
        env.insert("PATH".into(), agent_path(&benchkite_named_benchkite()?)?);
        // The queue's result key, as an AgentPool's agents get it from their Secret: the
        // runner signs its result, the test controllers (which hold the e2e master key)
        // verify it.
        let key = crate::operator::result_queue_key_file(queue)?;
        env.insert(benchkite::signing::RESULT_KEY_FILE_ENV.into(), key.to_string_lossy().into_owned());
    }
    let mut cfg = SimConfig { executor, rate_limit: buildkite_rate_limit(60.0), ..Default::default() };
    cfg.clusters[0].queues.push(queue.to_string());
    cfg.agents.push(AgentPoolConfig { queue: queue.to_string(), count: agents, ..Default::default() });
    Ok(cfg)
}

/// Puts stand-in GPU tools (`tests/fake-gpu/nvidia-smi`: two H100s) first on the agents'
/// `PATH`, so the runner's fingerprint has GPU fields to gather as on a real GPU node.
pub fn with_fake_gpu_tools(cfg: &mut SimConfig) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::e2e_dir().join(format!("fake-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = crate::repo_root().join("tests/fake-gpu/nvidia-smi");
    let tool = dir.join("nvidia-smi");
    std::fs::copy(&source, &tool).with_context(|| format!("copying {}", source.display()))?;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755))?;
    if let ExecutorConfig::Command { env, .. } = &mut cfg.executor {
        let path = env.get("PATH").cloned().unwrap_or_else(|| std::env::var("PATH").unwrap_or_default());
        env.insert("PATH".into(), format!("{}:{path}", dir.display()));
        env.insert("FAKE_SMI_COUNTER".into(), dir.join("counter").to_string_lossy().into_owned());
    }
    Ok(())
}

/// Gives every API token of `cfg` GraphQL access (the scope `graphql`, on top of its scopes).
pub fn grant_graphql(cfg: &mut SimConfig) {
    for token in cfg.api_tokens.clone() {
        let scopes = cfg
            .api_token_scopes
            .entry(token)
            .or_insert_with(|| buildkite_sim::config::DEFAULT_TOKEN_SCOPES.iter().map(|s| (*s).to_string()).collect());
        if !scopes.iter().any(|s| s == "graphql") {
            scopes.push("graphql".into());
        }
    }
}

/// The binary under test under the name `benchkite` (a `$BENCHKITE_BIN` of another name gets
/// a symlink `<e2e dir>/bin/benchkite`), for a `PATH` that finds it.
fn benchkite_named_benchkite() -> Result<std::path::PathBuf> {
    let bin = crate::operator::binary()?;
    if bin.file_name().is_some_and(|n| n == "benchkite") {
        return Ok(bin);
    }
    let dir = crate::e2e_dir().join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join("benchkite");
    if std::fs::read_link(&link).ok().as_deref() != Some(bin.as_path()) {
        let _ = std::fs::remove_file(&link);
        match std::os::unix::fs::symlink(&bin, &link) {
            // Another test made the same link at the same time.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            r => r.with_context(|| format!("linking {} to {}", link.display(), bin.display()))?,
        }
    }
    Ok(link)
}

/// A `PATH` for the simulated agents that finds `benchkite` at `binary` first (a file named
/// `benchkite`: the binary under test, or a stand-in script), then the usual directories.
pub fn agent_path(binary: &std::path::Path) -> Result<String> {
    let dir = binary.parent().with_context(|| format!("{} has no directory", binary.display()))?;
    let rest = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    Ok(format!("{}:{rest}", dir.display()))
}

/// Takes the result key away from the agents of `cfg` (their runner's results go unsigned):
/// agents of a raw queue an admin has not given a key yet.
pub fn without_result_key(cfg: &mut SimConfig) {
    if let ExecutorConfig::Command { env, .. } = &mut cfg.executor {
        // An absent file: the runner logs it and reports unsigned.
        env.insert(benchkite::signing::RESULT_KEY_FILE_ENV.into(), "/nonexistent/benchkite-result-key".into());
    }
}

/// A pipeline a user made for KernelJobs on `queue`, as Buildkite needs it: one command step
/// that names the queue literally (settings steps are never interpolated with build env),
/// skips the checkout (the job needs no repository) and uploads `result.json`. `command`
/// replaces the agents' command (`None`: the executor's, i.e. `benchkite run`).
pub fn user_pipeline(slug: &str, queue: &str, command: Option<&str>) -> PipelineConfig {
    PipelineConfig {
        slug: slug.to_string(),
        name: Some(slug.to_string()),
        steps: vec![StepConfig {
            command: command.map(str::to_string),
            agents: vec![format!("queue={queue}")],
            artifact_paths: "result.json".into(),
            checkout: Some(CheckoutConfig { skip: true }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The pipeline the controller of installation `instance` creates for `queue`.
pub fn managed_pipeline(instance: &str, queue: &str) -> String {
    benchkite::buildkite::managed_slug(instance, queue)
}

/// `benchkite controller` arguments for a KernelJob-only controller of `namespace` against
/// `sim` (the namespace is also the installation id, so tests never see each other's builds).
/// The API token goes in the environment (`BUILDKITE_API_TOKEN`), never in flags. What the
/// tests' jobs use beyond a tenant's defaults (raw queues, …) is allowed by the environment
/// [`crate::operator::Operator`] gives every controller.
pub fn kerneljob_args(sim: &SimHandle, namespace: &str) -> Vec<String> {
    [
        "--controllers",
        "kerneljob",
        "--namespace",
        namespace,
        "--buildkite-org",
        &sim.organization(),
        "--buildkite-api-url",
        &sim.api_url(),
        "--buildkite-agent-api-url",
        &sim.agent_url(),
        // The simulator's GraphQL endpoint: the default token has no GraphQL access (the
        // scope `graphql`), so these controllers are refused (403) and work over REST, as
        // with a real token without "GraphQL API access"; [`grant_graphql`] turns it on.
        "--buildkite-graphql-url",
        &sim.graphql_url(),
        "--instance",
        namespace,
    ]
    .map(str::to_string)
    .to_vec()
}

/// Like [`kerneljob_args`] with a tenant's defaults as explicit flags (which win over the
/// environment's allowances): no raw override, no env; `allow` replaces the default of its
/// flag (`--allow-raw-queue=labelled`).
pub fn tenant_kerneljob_args(sim: &SimHandle, namespace: &str, allow: &[&str]) -> Vec<String> {
    let mut args = kerneljob_args(sim, namespace);
    for default in [
        "--allow-raw-queue=none",
        "--allow-pipeline-override=none",
        "--allow-branch-override=none",
        "--allow-secret-sources=none",
        "--kerneljob-env-allow=",
    ] {
        let flag = default.split('=').next().unwrap_or(default);
        let chosen = allow.iter().find(|a| a.split('=').next() == Some(flag)).copied().unwrap_or(default);
        args.push(chosen.to_string());
    }
    args
}

/// One build as the simulator shows it (`GET /_sim/pipelines/{p}/builds/{n}`: every job,
/// retried ones too, env and meta-data), or `None` if there is no such build. `/_sim` is not
/// rate limited, so looking never takes requests from the controller's budget.
pub async fn build(sim: &SimHandle, pipeline: &str, number: u64) -> Result<Option<Value>> {
    let url = format!("{}/pipelines/{pipeline}/builds/{number}", sim.sim_url());
    let resp = reqwest::get(&url).await.with_context(|| format!("GET {url}"))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    Ok(Some(resp.json().await.with_context(|| format!("GET {url}: body"))?))
}

/// The slugs of every pipeline in the simulator (`GET /_sim/pipelines`).
pub async fn pipelines(sim: &SimHandle) -> Result<Vec<String>> {
    let url = format!("{}/pipelines", sim.sim_url());
    let resp = reqwest::get(&url).await.with_context(|| format!("GET {url}"))?;
    ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let list: Vec<Value> = resp.json().await.with_context(|| format!("GET {url}: body"))?;
    Ok(list.iter().filter_map(|p| p["slug"].as_str().map(str::to_string)).collect())
}

/// Every build of every pipeline, oldest first per pipeline, through `/_sim` (never rate
/// limited; REST listings that deep would be refused with 400, like Buildkite's).
pub async fn all_builds(sim: &SimHandle) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for pipeline in pipelines(sim).await? {
        for number in 1.. {
            match build(sim, &pipeline, number).await? {
                Some(b) => out.push(b),
                None => break,
            }
        }
    }
    Ok(out)
}

/// The command jobs of a build (`jobs[]` of type `script`), in order.
pub fn script_jobs(build: &Value) -> Vec<&Value> {
    build["jobs"].as_array().map(|jobs| jobs.iter().filter(|j| j["type"] == "script").collect()).unwrap_or_default()
}

/// The log and details of one job (`GET /_sim/jobs/{id}`), for failure messages.
pub async fn job_details(sim: &SimHandle, id: &str) -> Result<Value> {
    let url = format!("{}/jobs/{id}", sim.sim_url());
    let resp = reqwest::get(&url).await.with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    resp.json().await.with_context(|| format!("GET {url}: body"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildkite_sim::Simulator;
    use buildkite_sim::config::ScriptedConfig;
    use std::time::Duration;

    /// A pipeline made with [`user_pipeline`] runs on its queue whatever the build env says
    /// (its step names the queue literally) and never clones its private repository.
    #[tokio::test]
    async fn a_user_pipeline_runs_on_its_queue_without_a_checkout() -> Result<()> {
        let mut cfg = SimConfig {
            executor: ExecutorConfig::Scripted(ScriptedConfig { duration_ms: 10, ..Default::default() }),
            ..Default::default()
        };
        cfg.clusters[0].queues.push("q-mine".into());
        cfg.agents.push(AgentPoolConfig { queue: "q-mine".into(), count: 1, ..Default::default() });
        cfg.pipelines.push(user_pipeline("mine", "q-mine", None));
        let sim = Simulator::start(cfg).await?;
        let url = format!("{}/organizations/{}/pipelines/mine/builds", sim.api_url(), sim.organization());
        let body =
            serde_json::json!({"commit": "HEAD", "branch": "benchkite/t/r1", "env": {"KERNELBOT_QUEUE": "elsewhere"}});
        let resp = reqwest::Client::new().post(&url).bearer_auth(sim.api_token()).json(&body).send().await?;
        ensure!(resp.status() == reqwest::StatusCode::CREATED, "create build: {}", resp.status());
        let b = crate::wait_until("the build passed", Duration::from_secs(20), || async {
            Ok(build(&sim, "mine", 1).await?.filter(|b| b["state"] == "passed"))
        })
        .await?;
        let jobs = script_jobs(&b);
        ensure!(jobs.len() == 1, "{jobs:?}");
        let id = jobs[0]["id"].as_str().context("job id")?;
        let details = job_details(&sim, id).await?;
        ensure!(details["checkout"] == "skipped", "{details}");
        ensure!(jobs[0]["agent_query_rules"] == serde_json::json!(["queue=q-mine"]), "{}", jobs[0]);
        let all = all_builds(&sim).await?;
        ensure!(all.len() == 1 && all[0]["branch"] == "benchkite/t/r1", "{all:?}");
        ensure!(build(&sim, "mine", 2).await?.is_none(), "no second build");
        Ok(())
    }

    #[test]
    fn agents_find_benchkite_first_on_their_path() -> Result<()> {
        let path = agent_path(std::path::Path::new("/opt/bk/bin/benchkite"))?;
        ensure!(path.starts_with("/opt/bk/bin:"), "{path}");
        Ok(())
    }
}
