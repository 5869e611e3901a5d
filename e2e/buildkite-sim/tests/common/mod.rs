#![allow(clippy::field_reassign_with_default)]
#![allow(dead_code)]

use std::time::{Duration, Instant};

use buildkite_sim::config::{ExecutorConfig, ScriptedConfig, SimConfig};
use buildkite_sim::{SimHandle, Simulator};
use serde_json::{Value, json};

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A config with scripted jobs and no per-user limit (tests count org requests).
pub fn scripted(duration_ms: u64) -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.executor = ExecutorConfig::Scripted(ScriptedConfig { duration_ms, ..ScriptedConfig::default() });
    cfg.rate_limit.org_limit = 100_000;
    cfg.rate_limit.user_limit = 0;
    cfg
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

    /// Polls until the build is in `state` (panics after `secs`).
    pub async fn wait_state(&self, number: u64, state: &str, secs: f64) -> Value {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        loop {
            let b = self.build(number).await;
            if b["state"] == state {
                return b;
            }
            assert!(Instant::now() < deadline, "build {number} is {} (wanted {state})", b["state"]);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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
