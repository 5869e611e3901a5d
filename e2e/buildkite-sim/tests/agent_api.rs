//! What a job token may do: the Agent API meta-data endpoints, the `buildkite-agent` shim
//! a job finds on its `PATH`, and every refusal (no/unknown/revoked token, another job,
//! another build, the REST API).

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buildkite_sim::config::{AgentPoolConfig, ExecutorConfig, SimConfig};
use common::{T, public_default_repo};
use serde_json::{Value, json};

const SHIM: &str = env!("CARGO_BIN_EXE_buildkite-agent");

fn cfg(command: &str, agents: u32) -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.executor = ExecutorConfig::Command {
        command: command.into(),
        shell: vec!["sh".into(), "-c".into()],
        env: Default::default(),
        cancel_grace_secs: 0.3,
        max_log_bytes: 1 << 20,
        meta_data_file: false,
        agent_binary: Some(SHIM.into()),
    };
    cfg.rate_limit.org_limit = 100_000;
    public_default_repo(&mut cfg);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: agents, ..Default::default() }];
    cfg.pipelines[0].steps[0].artifact_paths = "out/*".into();
    cfg
}

/// A fresh directory shared between the test and its jobs.
fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("bk-sim-agent-api-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits for a file a job writes (the job's own progress, not a timing assumption).
async fn wait_file(p: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(p)
            && s.ends_with('\n')
        {
            return s.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn artifact(t: &T, number: u64, path: &str) -> String {
    let arts: Value =
        t.get(&format!("{}/{number}/artifacts", t.builds_url())).send().await.unwrap().json().await.unwrap();
    let a = arts.as_array().unwrap().iter().find(|a| a["path"] == path).unwrap_or_else(|| panic!("{path}: {arts}"));
    let r = t.get(a["download_url"].as_str().unwrap()).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    t.http.get(&loc).send().await.unwrap().text().await.unwrap()
}

const SHIM_SCRIPT: &str = r#"
mkdir -p out
: > out/env.txt
for v in BUILDKITE_AGENT_ACCESS_TOKEN BUILDKITE_AGENT_ENDPOINT BUILDKITE_BIN_PATH BUILDKITE_SIM_META_DATA_FILE; do
  eval "[ -n \"\${$v:-}\" ]" && echo "$v" >> out/env.txt
done
[ "$(command -v buildkite-agent)" = "$BUILDKITE_BIN_PATH/buildkite-agent" ] && echo first-on-path >> out/env.txt
buildkite-agent meta-data set score 1.25
printf 'line1\nline2' | buildkite-agent meta-data set multi
buildkite-agent meta-data get score > out/get.txt
buildkite-agent meta-data get multi >> out/get.txt
buildkite-agent meta-data get nope --default dflt >> out/get.txt 2>/dev/null
buildkite-agent meta-data get nope 2> out/get-missing.txt; echo "status=$?" >> out/get-missing.txt
buildkite-agent meta-data get score --build "$BUILDKITE_BUILD_ID" >> out/get.txt
buildkite-agent meta-data exists score; echo "score=$?" > out/exists.txt
buildkite-agent meta-data exists nope; echo "nope=$?" >> out/exists.txt
buildkite-agent meta-data keys > out/keys.txt
buildkite-agent meta-data set blank "  " 2> out/blank.txt; echo "status=$?" >> out/blank.txt
BUILDKITE_AGENT_ACCESS_TOKEN=bkjt_forged buildkite-agent meta-data set score 99 2> out/forged.txt; echo "status=$?" >> out/forged.txt
buildkite-agent meta-data set score 2 --job 00000000-0000-0000-0000-000000000000 2> out/other-job.txt; echo "status=$?" >> out/other-job.txt
"#;

#[tokio::test]
async fn the_shim_talks_to_the_agent_api_with_the_job_token() {
    let t = T::start(cfg(SHIM_SCRIPT, 1)).await;
    t.create_build(json!({})).await;
    let b = t.wait_state(1, "passed", 20.0).await;
    assert_eq!(b["meta_data"]["score"], "1.25");
    assert_eq!(b["meta_data"]["multi"], "line1\nline2");
    // the job env: a job token, the endpoint, the shim first on PATH, no meta-data file
    assert_eq!(
        artifact(&t, 1, "out/env.txt").await,
        "BUILDKITE_AGENT_ACCESS_TOKEN\nBUILDKITE_AGENT_ENDPOINT\nBUILDKITE_BIN_PATH\nfirst-on-path\n"
    );
    assert_eq!(artifact(&t, 1, "out/get.txt").await, "1.25\nline1\nline2\ndflt\n1.25\n");
    let missing = artifact(&t, 1, "out/get-missing.txt").await;
    assert!(missing.contains("buildkite-agent: fatal: failed to get meta-data: POST "), "{missing}");
    assert!(missing.contains("/data/get: 404 Not Found: No key \"nope\" found\nstatus=1"), "{missing}");
    assert_eq!(artifact(&t, 1, "out/exists.txt").await, "score=0\nnope=100\n");
    assert_eq!(artifact(&t, 1, "out/keys.txt").await, "multi\nscore\n");
    assert_eq!(
        artifact(&t, 1, "out/blank.txt").await,
        "buildkite-agent: fatal: value cannot be empty, or composed of only whitespace characters\nstatus=1\n"
    );
    let forged = artifact(&t, 1, "out/forged.txt").await;
    assert!(forged.ends_with("401 Unauthorized: Invalid access token\nstatus=1\n"), "{forged}");
    let other = artifact(&t, 1, "out/other-job.txt").await;
    assert!(other.contains("403 Forbidden: Your access token cannot access this job\nstatus=1"), "{other}");
    // refused writes changed nothing
    assert_eq!(b["meta_data"].as_object().unwrap().len(), 2, "{}", b["meta_data"]);
    t.sim.shutdown().await;
}

/// Writes the job's token, ids and endpoint to `$OUT/<job>.env`, then waits for
/// `$OUT/release`.
const HOLD_SCRIPT: &str = r#"
printf '%s %s %s %s\n' "$BUILDKITE_AGENT_ACCESS_TOKEN" "$BUILDKITE_JOB_ID" "$BUILDKITE_BUILD_ID" "$BUILDKITE_AGENT_ENDPOINT" > "$OUT/$NAME.tmp"
mv "$OUT/$NAME.tmp" "$OUT/$NAME.env"
while [ ! -f "$OUT/release" ]; do sleep 0.02; done
"#;

struct Held {
    token: String,
    job: String,
    build: String,
    endpoint: String,
}

async fn held(out: &Path, name: &str) -> Held {
    let s = wait_file(&out.join(format!("{name}.env"))).await;
    let f: Vec<&str> = s.split(' ').collect();
    Held { token: f[0].into(), job: f[1].into(), build: f[2].into(), endpoint: f[3].into() }
}

async fn call(t: &T, url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut rb = t.http.post(url).json(&body);
    if let Some(tok) = token {
        rb = rb.header("Authorization", format!("Token {tok}"));
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_job_token_works_only_for_its_own_job_and_build_while_the_job_runs() {
    let out = scratch();
    let t = T::start(cfg(HOLD_SCRIPT, 2)).await;
    let o = out.to_string_lossy();
    t.create_build(json!({"OUT": o, "NAME": "a"})).await;
    t.create_build(json!({"OUT": o, "NAME": "b"})).await;
    let (a, b) = (held(&out, "a").await, held(&out, "b").await);
    assert!(a.endpoint.ends_with("/v3") && a.token != b.token);
    let ep = &a.endpoint;

    // its own job: set (201), immediately visible in the REST build, get/exists/keys
    let (s, _) =
        call(&t, &format!("{ep}/jobs/{}/data/set", a.job), Some(&a.token), json!({"key": "k", "value": "v"})).await;
    assert_eq!(s, 201);
    assert_eq!(t.build(1).await["meta_data"]["k"], "v");
    let (s, v) = call(&t, &format!("{ep}/jobs/{}/data/get", a.job), Some(&a.token), json!({"key": "k"})).await;
    assert_eq!((s, v), (200, json!({"key": "k", "value": "v"})));
    let (s, v) = call(&t, &format!("{ep}/builds/{}/data/exists", a.build), Some(&a.token), json!({"key": "k"})).await;
    assert_eq!((s, v), (200, json!({"exists": true})));
    let (s, v) = call(&t, &format!("{ep}/builds/{}/data/keys", a.build), Some(&a.token), json!({})).await;
    assert_eq!((s, v), (200, json!(["k"])));
    let batch = json!({"items": [{"key": "x", "value": "1"}, {"key": "y", "value": " "}]});
    let (s, _) = call(&t, &format!("{ep}/jobs/{}/data/set-batch", a.job), Some(&a.token), batch).await;
    assert_eq!(s, 422, "a batch with a blank value is refused whole");
    assert!(t.build(1).await["meta_data"].get("x").is_none());
    let big = "x".repeat(100 * 1024 + 1);
    let (s, _) =
        call(&t, &format!("{ep}/jobs/{}/data/set", a.job), Some(&a.token), json!({"key": "big", "value": big})).await;
    assert_eq!(s, 422);

    // another job, another build: 403, nothing written or read
    let (s, v) =
        call(&t, &format!("{ep}/jobs/{}/data/set", b.job), Some(&a.token), json!({"key": "k", "value": "forged"}))
            .await;
    assert_eq!((s, v), (403, json!({"message": "Your access token cannot access this job"})));
    let (s, _) = call(&t, &format!("{ep}/builds/{}/data/get", b.build), Some(&a.token), json!({"key": "k"})).await;
    assert_eq!(s, 403);
    let (s, _) = call(&t, &format!("{ep}/builds/{}/data/keys", b.build), Some(&a.token), json!({})).await;
    assert_eq!(s, 403);
    assert!(t.build(2).await["meta_data"].get("k").is_none());

    // no token, an unknown token, the REST API token: 401
    let api_token = t.sim.api_token().to_string();
    for tok in [None, Some("bkjt_nope"), Some(api_token.as_str())] {
        let (s, v) = call(&t, &format!("{ep}/jobs/{}/data/get", a.job), tok, json!({"key": "k"})).await;
        assert_eq!((s, v), (401, json!({"message": "Invalid access token"})), "{tok:?}");
    }
    // the REST API with a job token: 401, like any token it does not know
    let r = t.http.get(t.builds_url()).bearer_auth(&a.token).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = t
        .http
        .post(t.builds_url())
        .bearer_auth(&a.token)
        .json(&json!({"commit": "HEAD", "branch": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // the job ends: its token is revoked
    std::fs::write(out.join("release"), "").unwrap();
    t.wait_state(1, "passed", 20.0).await;
    t.wait_state(2, "passed", 20.0).await;
    let (s, v) =
        call(&t, &format!("{ep}/jobs/{}/data/set", a.job), Some(&a.token), json!({"key": "k", "value": "late"})).await;
    assert_eq!((s, v), (401, json!({"message": "Invalid access token"})));
    assert_eq!(t.build(1).await["meta_data"]["k"], "v");
    t.sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn the_meta_data_file_is_opt_in() {
    let script = r#"mkdir -p out; echo "file=${BUILDKITE_SIM_META_DATA_FILE:+set}" > out/file.txt
[ -n "$BUILDKITE_SIM_META_DATA_FILE" ] && echo via=file >> "$BUILDKITE_SIM_META_DATA_FILE"; true"#;
    let t = T::start(cfg(script, 1)).await;
    t.create_build(json!({})).await;
    let b = t.wait_state(1, "passed", 20.0).await;
    assert_eq!(artifact(&t, 1, "out/file.txt").await, "file=\n");
    assert!(b["meta_data"].as_object().is_none_or(|m| m.is_empty()), "{}", b["meta_data"]);
    t.sim.shutdown().await;

    let mut c = cfg(script, 1);
    if let ExecutorConfig::Command { meta_data_file, .. } = &mut c.executor {
        *meta_data_file = true;
    }
    let t = T::start(c).await;
    t.create_build(json!({})).await;
    let b = t.wait_state(1, "passed", 20.0).await;
    assert_eq!(artifact(&t, 1, "out/file.txt").await, "file=set\n");
    assert_eq!(b["meta_data"]["via"], "file");
    t.sim.shutdown().await;
}

/// The shim's own checks, before any request (the real CLI's messages and statuses).
#[test]
fn shim_refuses_before_any_request() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(SHIM);
        c.args(args).env_clear().env("PATH", "/usr/bin:/bin").stdin(std::process::Stdio::null());
        c.envs(env.iter().copied());
        let o = c.output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = run(&["meta-data", "set", "k", "v"], &[("BUILDKITE_JOB_ID", "j")]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "buildkite-agent: fatal: Missing agent-access-token. See: `buildkite-agent meta-data set --help`\n"
    );
    let (code, err) = run(&["meta-data", "set", "k", "v"], &[("BUILDKITE_AGENT_ACCESS_TOKEN", "t")]);
    assert_eq!(
        (code, err.as_str()),
        (Some(1), "buildkite-agent: fatal: Missing job. See: `buildkite-agent meta-data set --help`\n")
    );
    let (code, err) =
        run(&["meta-data", "set", " ", "v"], &[("BUILDKITE_AGENT_ACCESS_TOKEN", "t"), ("BUILDKITE_JOB_ID", "j")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("key cannot be empty"), "{err}");
    let (code, err) = run(&["artifact", "upload", "x"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not simulated"), "{err}");
}
