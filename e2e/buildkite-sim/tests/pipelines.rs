//! Pipelines and organization settings as real Buildkite has them: settings steps without
//! build-env interpolation, pipelines over REST, intermediate builds, clusters, token
//! scopes, list depth, the per-user rate limit.

#![allow(clippy::field_reassign_with_default)]

mod common;

use buildkite_sim::config::{
    AgentPoolConfig, ClusterConfig, DEFAULT_TOKEN_SCOPES, PipelineConfig, SimConfig, StepConfig,
};
use common::{T, queue_pipeline, scripted};
use serde_json::{Value, json};

const REPO: &str = "git@github.com:benchkite/kernelbot.git";

async fn first_cluster(t: &T) -> String {
    let v: Value = t.get(&format!("{}/clusters", t.org_url())).send().await.unwrap().json().await.unwrap();
    v[0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn settings_steps_never_see_the_build_env() {
    let mut cfg = scripted(10);
    cfg.clusters[0].queues.push("nvidia-h100".into());
    cfg.pipelines[0].steps[0].command = Some("run ${KERNELBOT_PAYLOAD} $$HOME \\$PATH ${BUILDKITE_BRANCH}".into());
    let t = T::start(cfg).await;
    let env = json!({"KERNELBOT_QUEUE": "nvidia-h100", "KERNELBOT_PAYLOAD": "payload"});

    // 1. config steps: `queue=${KERNELBOT_QUEUE:-default}` resolves to the default queue,
    //    unknown variables to empty, Buildkite's build variables to their value
    let b = t.create_build_in("kernelbot", "feature-x", env.clone()).await;
    assert_eq!(b["jobs"][0]["agent_query_rules"], json!(["queue=default"]));
    assert_eq!(b["jobs"][0]["command"], "run  $HOME $PATH feature-x");
    assert_eq!(b["env"]["KERNELBOT_QUEUE"], "nvidia-h100", "the build keeps its env");

    // 2. /_sim/pipelines (config shape)
    let (s, v) = t
        .sim_json(
            reqwest::Method::POST,
            "/pipelines",
            Some(json!({"slug": "sim-added", "steps": [{"label": "x", "agents": ["queue=${KERNELBOT_QUEUE}"]}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let b = t.create_build_in("sim-added", "main", env.clone()).await;
    assert_eq!(b["jobs"][0]["agent_query_rules"], json!(["queue=default"]));

    // 3. REST `configuration`
    let cluster = first_cluster(&t).await;
    let r = t
        .post(&format!("{}/pipelines", t.org_url()))
        .json(&json!({
            "name": "From REST", "repository": REPO, "cluster_id": cluster,
            "configuration": "steps:\n  - command: run\n    agents:\n      queue: \"${KERNELBOT_QUEUE}\"\n"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let b = t.create_build_in("from-rest", "main", env).await;
    assert_eq!(b["jobs"][0]["agent_query_rules"], json!(["queue=default"]));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn pipelines_over_rest() {
    let mut cfg = scripted(10);
    cfg.clusters[0].queues.push("nvidia-h100".into());
    cfg.agents = vec![AgentPoolConfig { queue: "nvidia-h100".into(), count: 1, ..Default::default() }];
    cfg.repositories.insert(REPO.into(), buildkite_sim::config::RepositoryVisibility::Private);
    let t = T::start(cfg).await;
    let cluster = first_cluster(&t).await;
    let url = format!("{}/pipelines", t.org_url());
    // What benchkite sends: a queue named literally, no checkout, result.json, a timeout,
    // in-build retries of infrastructure exits only, step env. Unknown keys are ignored.
    let yaml = r#"
retry_policy: &retry
  automatic:
    - {exit_status: -1, signal_reason: none, limit: 2}
    - {exit_status: -1, signal_reason: agent_stop, limit: 2}
x-unknown-top-level: {whatever: [1, 2]}
steps:
  - label: ":gpu: kernel evaluation"
    key: run
    commands: ["benchkite run", "echo done"]
    agents: {queue: nvidia-h100}
    checkout: {skip: true}
    artifact_paths: result.json
    timeout_in_minutes: 20
    env: {KERNELBOT_RUN_ID: "${BUILDKITE_BRANCH}"}
    retry: *retry
    soft_fail: false
    priority: 2
"#;
    let r = t
        .post(&url)
        .json(&json!({
            "name": "Benchkite nvidia-h100", "repository": REPO, "cluster_id": cluster,
            "configuration": yaml, "default_branch": "main", "description": "managed by benchkite",
            "skip_queued_branch_builds": false, "cancel_running_branch_builds": false
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["slug"], "benchkite-nvidia-h100", "derived from the name");
    assert_eq!(p["name"], "Benchkite nvidia-h100");
    assert_eq!(p["configuration"], yaml);
    assert_eq!(p["cluster_id"], cluster.as_str());
    assert_eq!(p["description"], "managed by benchkite");
    assert_eq!(p["url"], format!("{url}/benchkite-nvidia-h100"));
    assert_eq!(p["web_url"], "https://buildkite.com/benchkite/benchkite-nvidia-h100");
    for k in ["id", "graphql_id", "repository", "default_branch", "branch_configuration", "provider", "created_at"] {
        assert!(p.get(k).is_some(), "{k}");
    }
    for k in ["skip_queued_branch_builds", "cancel_running_branch_builds"] {
        assert_eq!(p[k], false);
    }
    assert!(p["skip_queued_branch_builds_filter"].is_null() && p["cancel_running_branch_builds_filter"].is_null());
    let step = &p["steps"][0];
    assert_eq!(step["command"], "benchkite run\necho done");
    assert_eq!(step["agent_query_rules"], json!(["queue=nvidia-h100"]));
    assert_eq!(step["artifact_paths"], "result.json");
    assert_eq!(step["timeout_in_minutes"], 20);

    // a build runs in the pipeline's cluster and queue; the checkout is skipped (private repo)
    let b = t.create_build_in("benchkite-nvidia-h100", "benchkite/run-1", json!({})).await;
    assert_eq!(b["jobs"][0]["agent_query_rules"], json!(["queue=nvidia-h100"]));
    let done = t.wait_build("benchkite-nvidia-h100", 1, "passed", 10.0).await;
    let job = done["jobs"][0]["id"].as_str().unwrap();
    let (_, j) = t.sim_json(reqwest::Method::GET, &format!("/jobs/{job}"), None).await;
    assert_eq!(j["checkout"], "skipped");
    assert_eq!(j["step_env"]["KERNELBOT_RUN_ID"], "benchkite/run-1");

    // GET and list
    let g = t.get(&format!("{url}/benchkite-nvidia-h100")).send().await.unwrap();
    assert_eq!(g.status(), 200);
    assert_eq!(g.json::<Value>().await.unwrap()["id"], p["id"]);
    let list: Value = t.get(&format!("{url}?name=NVIDIA")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // refusals: name and repository required, configuration required, valid YAML with steps
    let r = t
        .post(&url)
        .json(&json!({"cluster_id": cluster, "configuration": "steps: [{command: x}]"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["message"], "Validation Failed");
    let fields: Vec<&str> = e["errors"].as_array().unwrap().iter().map(|x| x["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["name", "repository"]);
    let r = t.post(&url).json(&json!({"name": "n", "repository": REPO, "cluster_id": cluster})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["errors"][0]["field"], "configuration");
    assert_eq!(e["errors"][0]["code"], "Step configuration is missing, expected `steps: { yaml: \"...\" }`");
    for bad in ["steps: [", "env: {A: 1}", "steps: []", "steps: [{command: x, retry: {automatic: {limit: 11}}}]"] {
        let r = t
            .post(&url)
            .json(&json!({"name": "n", "repository": REPO, "cluster_id": cluster, "configuration": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["errors"][0]["field"], "configuration", "{bad}");
    }
    // the same name (same slug) again
    let r = t
        .post(&url)
        .json(
            &json!({"name": "benchkite NVIDIA-H100", "repository": REPO, "cluster_id": cluster, "configuration": yaml}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["errors"][0]["message"], "Name has already been taken");
    // no cluster_id and no organization default cluster
    let r = t
        .post(&url)
        .json(&json!({"name": "no cluster", "repository": REPO, "configuration": yaml}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["errors"][0]["field"], "cluster_id");

    // PATCH: the configuration changes the steps of later builds; `steps` alone is refused
    let purl = format!("{url}/benchkite-nvidia-h100");
    let r = t
        .patch(&purl)
        .json(&json!({"configuration": "steps:\n  - command: other\n    agents: {queue: default}\n    checkout: {skip: true}\n",
                      "cancel_running_branch_builds": true, "name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p2: Value = r.json().await.unwrap();
    assert_eq!(p2["slug"], "benchkite-nvidia-h100", "renaming keeps the slug");
    assert_eq!(p2["cancel_running_branch_builds"], true);
    assert_eq!(p2["steps"][0]["command"], "other");
    let b = t.create_build_in("benchkite-nvidia-h100", "benchkite/run-2", json!({})).await;
    assert_eq!(b["jobs"][0]["agent_query_rules"], json!(["queue=default"]));
    let r = t.patch(&purl).json(&json!({"steps": [{"type": "script", "command": "x"}]})).send().await.unwrap();
    assert_eq!(r.status(), 422);

    // without write_pipelines: 403
    let reader = t.sim.create_api_token(&["read_pipelines"]);
    let r = t.http.patch(&purl).bearer_auth(&reader).json(&json!({"name": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Your access token doesn't have the write_pipelines scope");

    // archive: read-only, no builds; unarchive
    assert_eq!(t.post(&format!("{purl}/unarchive")).send().await.unwrap().status(), 422);
    let r = t.post(&format!("{purl}/archive")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap()["archived_at"].is_string());
    let r = t
        .post(&t.builds_url_of("benchkite-nvidia-h100"))
        .json(&json!({"commit": "HEAD", "branch": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(t.patch(&purl).json(&json!({"name": "y"})).send().await.unwrap().status(), 422);
    let r = t.post(&format!("{purl}/unarchive")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap()["archived_at"].is_null());

    // DELETE
    assert_eq!(t.delete(&purl).send().await.unwrap().status(), 204);
    assert_eq!(t.get(&purl).send().await.unwrap().status(), 404);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn intermediate_builds_only_on_the_same_branch() {
    let mut cfg = scripted(60_000);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 3, ..Default::default() }];
    // skip: jobs target a queue without agents, so builds stay scheduled
    let mut skip = queue_pipeline("skipper", "nowhere");
    skip.skip_queued_branch_builds = true;
    let mut skip_filtered = queue_pipeline("skip-not-main", "nowhere");
    skip_filtered.skip_queued_branch_builds = true;
    skip_filtered.skip_queued_branch_builds_filter = Some("!main".into());
    let mut cancel = queue_pipeline("canceler", "default");
    cancel.cancel_running_branch_builds = true;
    cfg.pipelines.extend([skip, skip_filtered, cancel]);
    let t = T::start(cfg).await;

    t.create_build_in("skipper", "benchkite/a", json!({})).await;
    t.create_build_in("skipper", "benchkite/b", json!({})).await;
    t.create_build_in("skipper", "benchkite/a", json!({})).await;
    assert_eq!(t.sim_build("skipper", 1).await["state"], "skipped", "older scheduled build, same branch");
    assert_eq!(t.sim_build("skipper", 1).await["jobs"][0]["state"], "skipped");
    assert_eq!(t.sim_build("skipper", 2).await["state"], "scheduled", "other branch untouched");
    assert_eq!(t.sim_build("skipper", 3).await["state"], "scheduled");

    t.create_build_in("skip-not-main", "main", json!({})).await;
    t.create_build_in("skip-not-main", "main", json!({})).await;
    assert_eq!(t.sim_build("skip-not-main", 1).await["state"], "scheduled", "the filter excludes main");
    t.create_build_in("skip-not-main", "dev", json!({})).await;
    t.create_build_in("skip-not-main", "dev", json!({})).await;
    assert_eq!(t.sim_build("skip-not-main", 3).await["state"], "skipped");

    t.create_build_in("canceler", "benchkite/a", json!({})).await;
    t.create_build_in("canceler", "benchkite/b", json!({})).await;
    t.wait_build("canceler", 1, "running", 5.0).await;
    t.wait_build("canceler", 2, "running", 5.0).await;
    t.create_build_in("canceler", "benchkite/a", json!({})).await;
    let c1 = t.wait_build("canceler", 1, "canceled", 5.0).await;
    assert_eq!(c1["jobs"][0]["signal_reason"], "cancel");
    assert_eq!(t.sim_build("canceler", 2).await["state"], "running", "other branch untouched");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn clusters_and_the_default_cluster_setting() {
    assert_eq!(SimConfig::default().clusters[0].name, "Default cluster");
    let mut cfg = scripted(10);
    cfg.clusters = vec![
        ClusterConfig { queues: vec!["default".into(), "gpu".into()], ..ClusterConfig::default() },
        ClusterConfig {
            name: "Second".into(),
            queues: vec!["default".into(), "gpu".into()],
            ..ClusterConfig::default()
        },
    ];
    cfg.agents =
        vec![AgentPoolConfig { queue: "gpu".into(), count: 1, cluster: Some("Second".into()), ..Default::default() }];
    cfg.pipelines.push(PipelineConfig { cluster: Some("Second".into()), ..queue_pipeline("in-second", "gpu") });
    cfg.pipelines.push(queue_pipeline("in-default", "gpu"));
    let t = T::start(cfg).await;
    let clusters: Value = t.get(&format!("{}/clusters", t.org_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(clusters[0]["name"], "Default cluster");
    let second = clusters[1]["id"].as_str().unwrap().to_string();

    // a pipeline runs its jobs in its own cluster's queues
    t.create_build_in("in-second", "main", json!({})).await;
    t.create_build_in("in-default", "main", json!({})).await;
    let b = t.wait_build("in-second", 1, "passed", 5.0).await;
    assert_eq!(b["jobs"][0]["cluster_id"], second.as_str());
    assert_eq!(t.sim_build("in-default", 1).await["state"], "scheduled", "no gpu agent in the Default cluster");

    // the organization's default cluster (REST pipeline settings)
    let admin =
        t.sim.create_api_token(&["read_organization_settings", "write_organization_settings", "write_pipelines"]);
    let surl = format!("{}/pipeline-settings", t.org_url());
    assert_eq!(t.get(&surl).send().await.unwrap().status(), 403, "default token: no read_organization_settings");
    let s: Value = t.http.get(&surl).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    assert!(s["default_cluster_id"].is_null());
    let create = |name: &str| {
        t.http.post(format!("{}/pipelines", t.org_url())).bearer_auth(&admin).json(&json!({
            "name": name, "repository": REPO, "configuration": "steps: [{command: x}]"
        }))
    };
    assert_eq!(create("p1").send().await.unwrap().status(), 422);
    let r = t.http.patch(&surl).bearer_auth(&admin).json(&json!({"default_cluster_id": second})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["default_cluster_id"], second.as_str());
    let r = t.http.patch(&surl).bearer_auth(&admin).json(&json!({"default_cluster_id": "nope"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = create("p1").send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["cluster_id"], second.as_str());
    t.sim.shutdown().await;
}

#[tokio::test]
async fn token_scopes_and_access_token() {
    let mut cfg = scripted(10);
    cfg.api_tokens.push("reader-token".into());
    cfg.api_token_scopes.insert("reader-token".into(), vec!["read_pipelines".into()]);
    let t = T::start(cfg).await;
    let at = format!("{}/access-token", t.sim.api_url());
    let v: Value = t.get(&at).send().await.unwrap().json().await.unwrap();
    let scopes: Vec<&str> = v["scopes"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(scopes, DEFAULT_TOKEN_SCOPES);
    assert!(uuid::Uuid::parse_str(v["uuid"].as_str().unwrap()).is_ok());
    assert!(v["created_at"].as_str().unwrap().ends_with(" UTC"));

    // a token without write_builds
    let (s, tok) = t.sim_json(reqwest::Method::POST, "/tokens", Some(json!({"scopes": ["read_builds"]}))).await;
    assert_eq!(s, 201);
    let token = tok["token"].as_str().unwrap().to_string();
    let r = t
        .http
        .post(t.builds_url())
        .bearer_auth(&token)
        .json(&json!({"commit": "HEAD", "branch": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().contains_key("RateLimit-Remaining"));
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Your access token doesn't have the write_builds scope");
    assert_eq!(t.http.get(t.builds_url()).bearer_auth(&token).send().await.unwrap().status(), 200);
    let v: Value = t.http.get(&at).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["scopes"], json!(["read_builds"]));
    let (_, list) = t.sim_json(reqwest::Method::GET, "/tokens", None).await;
    assert!(!list.to_string().contains(&token), "/_sim/tokens never shows token values");

    // scopes from the config
    let r = t.http.get(format!("{}/user", t.sim.api_url())).bearer_auth("reader-token").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Your access token doesn't have the read_user scope");
    let r = t.http.get(format!("{}/pipelines", t.org_url())).bearer_auth("reader-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn deep_build_listings_are_refused() {
    let t = T::start(scripted(10)).await;
    for i in 0..3 {
        t.create_build_in("kernelbot", &format!("benchkite/run-{i}"), json!({})).await;
    }
    const MSG: &str = "Listing builds this deep is not supported. Please narrow your query using filters such as branch or created_from.";
    for url in [
        format!("{}/builds?page=11&per_page=100", t.sim.api_url()),
        format!("{}/builds?page=21&per_page=50", t.org_url()),
        format!("{}?page=101", t.builds_url()),
    ] {
        let r = t.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 400, "{url}");
        assert_eq!(r.json::<Value>().await.unwrap()["message"], MSG);
    }
    // narrow, shallow listings work
    let v: Value = t
        .get(&format!("{}?branch=benchkite/run-1&state[]=scheduled&include_retried_jobs=true", t.builds_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(t.get(&format!("{}/builds?page=10&per_page=100", t.org_url())).send().await.unwrap().status(), 200);
    // the threshold is a setting
    let (s, _) = t.sim_json(reqwest::Method::PUT, "/settings", Some(json!({"list_depth_limit": 5000}))).await;
    assert_eq!(s, 200);
    assert_eq!(t.get(&format!("{}/builds?page=11&per_page=100", t.org_url())).send().await.unwrap().status(), 200);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn per_user_rate_limit_is_on_by_default() {
    assert_eq!(SimConfig::default().rate_limit.user_limit, 50);
    assert_eq!(scripted(1).rate_limit.user_limit, 50, "the tests' common config keeps it");
    let mut cfg = SimConfig::default();
    cfg.pipelines = vec![PipelineConfig { steps: vec![StepConfig::default()], ..PipelineConfig::default() }];
    let t = T::start(cfg).await;
    let url = format!("{}/user", t.sim.api_url());
    let r = t.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["RateLimit-User-Scope"], "rest_user");
    assert_eq!(r.headers()["RateLimit-User-Limit"], "50");
    assert_eq!(r.headers()["RateLimit-User-Remaining"], "49");
    for _ in 0..49 {
        assert_eq!(t.get(&url).send().await.unwrap().status(), 200);
    }
    let r = t.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<Value>().await.unwrap()["scope"], "rest_user");
    // another user (token) is not limited by it
    let other = t.sim.create_api_token(&["read_user"]);
    assert_eq!(t.http.get(&url).bearer_auth(&other).send().await.unwrap().status(), 200);
    t.sim.shutdown().await;
}
