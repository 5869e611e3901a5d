#![allow(clippy::field_reassign_with_default)]
#![allow(dead_code)]

use std::time::{Duration, Instant};

use buildkite_sim::config::{
    ExecutorConfig, PipelineConfig, RepositoryVisibility, ScriptedConfig, SimConfig, StepConfig,
};
use buildkite_sim::{SimHandle, Simulator};
use serde_json::{Value, json};

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A config with scripted jobs. The per-user limit stays at its default (50 per minute):
/// tests poll through `/_sim`, which is not rate limited. The default pipeline's repository
/// is public, so its jobs clone it (and can run).
pub fn scripted(duration_ms: u64) -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.executor = ExecutorConfig::Scripted(ScriptedConfig { duration_ms, ..ScriptedConfig::default() });
    cfg.rate_limit.org_limit = 100_000;
    public_default_repo(&mut cfg);
    cfg
}

/// Marks the default pipeline's repository public (cloneable without a key).
pub fn public_default_repo(cfg: &mut SimConfig) {
    let repo = cfg.pipelines[0].repository.clone();
    cfg.repositories.insert(repo, RepositoryVisibility::Public);
}

/// A pipeline whose single step names `queue` literally (like the pipelines benchkite
/// creates), with the default repository.
pub fn queue_pipeline(slug: &str, queue: &str) -> PipelineConfig {
    PipelineConfig {
        slug: slug.into(),
        steps: vec![StepConfig { agents: vec![format!("queue={queue}")], ..StepConfig::default() }],
        ..PipelineConfig::default()
    }
}

pub struct T {
    pub sim: SimHandle,
    pub http: reqwest::Client,
}

impl T {
    pub async fn start(cfg: SimConfig) -> Self {
        let sim = Simulator::start(cfg).await.expect("start simulator");
        Self { sim, http: client() }
    }

    pub fn org_url(&self) -> String {
        format!("{}/organizations/{}", self.sim.api_url(), self.sim.organization())
    }

    pub fn builds_url(&self) -> String {
        format!("{}/pipelines/kernelbot/builds", self.org_url())
    }

    pub fn builds_url_of(&self, pipeline: &str) -> String {
        format!("{}/pipelines/{pipeline}/builds", self.org_url())
    }

    /// Creates a build of `pipeline` on `branch` (201 asserted) and returns it.
    pub async fn create_build_in(&self, pipeline: &str, branch: &str, env: Value) -> Value {
        let r = self
            .post(&self.builds_url_of(pipeline))
            .json(&json!({"commit": "HEAD", "branch": branch, "env": env}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
        r.json().await.expect("json")
    }

    /// A build as `/_sim` renders it (every job, retried ones too); not rate limited.
    pub async fn sim_build(&self, pipeline: &str, number: u64) -> Value {
        let (s, v) = self.sim_json(reqwest::Method::GET, &format!("/pipelines/{pipeline}/builds/{number}"), None).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls (through `/_sim`) until the build of `pipeline` is in `state`.
    pub async fn wait_build(&self, pipeline: &str, number: u64, state: &str, secs: f64) -> Value {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let b = self.sim_build(pipeline, number).await;
            if b["state"] == state {
                return b;
            }
            assert!(Instant::now() < deadline, "build {pipeline}/{number} is {} (wanted {state}): {b}", b["state"]);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url).bearer_auth(self.sim.api_token())
    }

    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.post(url).bearer_auth(self.sim.api_token())
    }

    pub fn put(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.put(url).bearer_auth(self.sim.api_token())
    }

    pub async fn create_build(&self, env: Value) -> Value {
        let r = self
            .post(&self.builds_url())
            .json(&json!({"commit": "HEAD", "branch": "main", "env": env}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
        r.json().await.expect("json")
    }

    pub async fn build(&self, number: u64) -> Value {
        self.get(&format!("{}/{number}", self.builds_url())).send().await.expect("get").json().await.expect("json")
    }

    /// Polls (through `/_sim`, not rate limited) until the build of the default pipeline is
    /// in `state`, then returns it as the REST API does (one counted request).
    pub async fn wait_state(&self, number: u64, state: &str, secs: f64) -> Value {
        self.wait_build("kernelbot", number, state, secs).await;
        self.build(number).await
    }

    pub fn patch(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.patch(url).bearer_auth(self.sim.api_token())
    }

    pub fn delete(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.delete(url).bearer_auth(self.sim.api_token())
    }

    pub async fn sim_json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.sim.sim_url()));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("sim request");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}
