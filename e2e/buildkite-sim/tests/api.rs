//! REST API behaviour: builds, lists, pagination, errors, rate limits, clusters, agents,
//! agent metrics.

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::time::Duration;

use buildkite_sim::config::{RateLimitConfig, SimConfig};
use common::{T, queue_pipeline, scripted};
use serde_json::{Value, json};

#[tokio::test]
async fn create_get_and_validation() {
    let t = T::start(scripted(50)).await;
    // create: 201 with a realistic build object; unknown fields are ignored
    let r = t
        .post(&t.builds_url())
        .json(&json!({
            "commit": "abcdef0", "branch": "main", "message": "hello",
            "env": {"KERNELBOT_RUN_ID": "r-1", "N": 3, "B": true},
            "meta_data": {"run": "r-1"},
            "author": {"name": "A", "email": "a@example.com"},
            "some_future_field": [1, 2]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["RateLimit-Scope"], "rest");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["number"], 1);
    assert_eq!(b["state"], "scheduled");
    assert_eq!(b["env"]["KERNELBOT_RUN_ID"], "r-1");
    assert_eq!(b["env"]["N"], "3");
    assert_eq!(b["env"]["B"], "true");
    assert_eq!(b["meta_data"]["run"], "r-1");
    assert!(uuid::Uuid::parse_str(b["id"].as_str().unwrap()).is_ok());
    assert_eq!(b["url"], format!("{}/1", t.builds_url()));
    assert_eq!(b["web_url"], "https://buildkite.com/benchkite/kernelbot/builds/1");
    assert_eq!(b["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(b["jobs"][0]["agent_query_rules"], json!(["queue=default"]));
    assert_eq!(b["pipeline"]["slug"], "kernelbot");
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(b["finished_at"].is_null());
    assert_eq!(b["creator"]["name"], "Buildkite Simulator");

    // numbers are per pipeline
    let b2 = t.create_build(json!({})).await;
    assert_eq!(b2["number"], 2);

    // get by number, exclude_jobs
    let g: Value =
        t.get(&format!("{}/1?exclude_jobs=true", t.builds_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(g["id"], b["id"]);
    assert!(g.get("jobs").is_none());

    // 422: commit and branch are required
    let r = t.post(&t.builds_url()).json(&json!({"message": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["message"], "Validation Failed");
    let fields: Vec<&str> = e["errors"].as_array().unwrap().iter().map(|x| x["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["commit", "branch"]);
    let r = t.post(&t.builds_url()).json(&json!({"commit": 5, "branch": "main"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = t
        .post(&t.builds_url())
        .json(&json!({"commit": "H", "branch": "m", "env": {"A": {"x": 1}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // 400: malformed JSON / not an object
    let r = t.post(&t.builds_url()).body("{nope").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Problems parsing JSON");
    let r = t.post(&t.builds_url()).body("[1]").send().await.unwrap();
    assert_eq!(r.status(), 400);

    // 404s
    for (url, msg) in [
        (format!("{}/organizations/nope/builds", t.sim.api_url()), "No organization found"),
        (format!("{}/pipelines/nope/builds", t.org_url()), "No pipeline found"),
        (format!("{}/99", t.builds_url()), "No build found"),
        (format!("{}/abc", t.builds_url()), "No build found"),
        (format!("{}/nothing/here", t.sim.api_url()), "Not Found"),
    ] {
        let r = t.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url}");
        assert!(r.headers().contains_key("RateLimit-Remaining"));
        assert_eq!(r.json::<Value>().await.unwrap()["message"], msg, "{url}");
    }
    // wrong method on a known route is a 404 too
    let r = t.http.delete(t.builds_url()).bearer_auth(t.sim.api_token()).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // 401: missing or wrong token, JSON message, rate-limit headers, not counted
    let before = t.sim.rate_limit_stats().counted;
    for rb in [t.http.get(t.builds_url()), t.http.get(t.builds_url()).bearer_auth("wrong")] {
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("RateLimit-Limit"));
        let m: Value = r.json().await.unwrap();
        assert!(m["message"].as_str().unwrap().starts_with("Authentication required"));
    }
    assert_eq!(t.sim.rate_limit_stats().counted, before);

    // counters per route template and status
    let c = t.sim.counters();
    let create = c.endpoint("POST /v2/organizations/{org}/pipelines/{pipeline}/builds");
    assert_eq!(create.status(201), 2);
    assert_eq!(create.status(422), 3);
    assert_eq!(create.status(400), 2);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn list_filters_and_pagination() {
    let mut cfg = scripted(10);
    cfg.agents =
        vec![buildkite_sim::config::AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    let t = T::start(cfg).await;
    for i in 0..5 {
        let r = t
            .post(&t.builds_url())
            .json(&json!({"commit": format!("c{i}"), "branch": if i % 2 == 0 { "main" } else { "dev-x" },
                          "meta_data": {"run": format!("r{i}")}, "env": {"BUILDKITE_SIM_EXIT_STATUS": if i == 4 { "1" } else { "0" }}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    t.wait_state(4, "passed", 10.0).await;
    t.wait_state(5, "failed", 10.0).await;
    let since = jiff::Timestamp::now();

    let list = |q: &str| {
        let url = format!("{}?{q}", t.builds_url());
        let req = t.get(&url);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let link = r.headers().get("link").map(|v| v.to_str().unwrap().to_string());
            let v: Value = r.json().await.unwrap();
            let numbers: Vec<u64> = v.as_array().unwrap().iter().map(|b| b["number"].as_u64().unwrap()).collect();
            (numbers, link)
        }
    };
    // newest first
    assert_eq!(list("").await.0, [5, 4, 3, 2, 1]);
    assert_eq!(list("state[]=failed").await.0, [5]);
    assert_eq!(list("state[]=passed&state[]=failed").await.0, [5, 4, 3, 2, 1]);
    assert_eq!(list("state=finished").await.0, [5, 4, 3, 2, 1]);
    assert_eq!(list("state[]=scheduled").await.0, Vec::<u64>::new());
    assert_eq!(list("meta_data[run]=r2").await.0, [3]);
    // The organization's listing, with the filters percent-encoded as a client sends them.
    let mut org = reqwest::Url::parse(&format!("{}/builds", t.org_url())).unwrap();
    org.query_pairs_mut().append_pair("state[]", "failed").append_pair("meta_data[run]", "r4");
    let r = t.get(org.as_str()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let numbers: Vec<u64> = v.as_array().unwrap().iter().map(|b| b["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [5], "{org}");
    assert_eq!(list("branch=main").await.0, [5, 3, 1]);
    assert_eq!(list("branch=*dev*").await.0, [4, 2]);
    assert_eq!(list("commit=c1").await.0, [2]);
    assert_eq!(list("exclude_jobs=true&per_page=1").await.0, [5]);
    let (n, _) = list(&format!("created_from={since}")).await;
    assert!(n.is_empty());
    assert_eq!(list("finished_from=2000-01-01T00:00:00Z").await.0.len(), 5);
    let r = t.get(&format!("{}?state=bogus", t.builds_url())).send().await.unwrap();
    assert_eq!(r.status(), 422);

    // pagination + RFC 5988 Link header
    let (n, link) = list("per_page=2").await;
    assert_eq!(n, [5, 4]);
    let link = link.unwrap();
    assert!(link.contains("page=2>; rel=\"next\""), "{link}");
    assert!(link.contains("page=3>; rel=\"last\""), "{link}");
    assert!(!link.contains("rel=\"prev\""));
    let (n, link) = list("per_page=2&page=2").await;
    assert_eq!(n, [3, 2]);
    let link = link.unwrap();
    for rel in ["first", "prev", "next", "last"] {
        assert!(link.contains(&format!("rel=\"{rel}\"")), "{link}");
    }
    assert!(link.contains("per_page=2"));
    let (n, link) = list("per_page=2&page=3").await;
    assert_eq!(n, [1]);
    let link = link.unwrap();
    assert!(!link.contains("rel=\"next\"") && link.contains("rel=\"prev\""));
    // a single page: empty Link header
    assert_eq!(list("").await.1.as_deref(), Some(""));
    // per_page is capped at 100; nonsense falls back to the defaults
    assert_eq!(list("per_page=1000").await.0.len(), 5);
    assert_eq!(list("per_page=abc&page=-1").await.0.len(), 5);
    // following a next link works
    let (_, link) = list("per_page=2").await;
    let link = link.unwrap();
    let next = link.split(", ").find(|l| l.contains("rel=\"next\"")).unwrap();
    let url = next.trim_start_matches('<').split('>').next().unwrap();
    let v: Value = t.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    // organization-level and all-builds lists
    let v: Value = t.get(&format!("{}/builds?per_page=100", t.org_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 5);
    let v: Value = t.get(&format!("{}/builds", t.sim.api_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 5);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_exhaustion_and_reset() {
    let mut cfg = SimConfig::default();
    cfg.rate_limit = RateLimitConfig { org_limit: 5, user_limit: 0, window_secs: 1.5 };
    let t = T::start(cfg).await;
    let url = format!("{}/pipelines", t.org_url());
    for i in 1..=5u64 {
        let r = t.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["RateLimit-Scope"], "rest");
        assert_eq!(h["RateLimit-Limit"], "5");
        assert_eq!(h["RateLimit-Remaining"], (5 - i).to_string().as_str());
        let reset: u64 = h["RateLimit-Reset"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&reset));
        assert!(!h.contains_key("RateLimit-User-Limit"));
    }
    let r = t.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["RateLimit-Remaining"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "rest");
    assert_eq!(body["limit"], 5);
    assert_eq!(body["current"], 6);
    assert!(body["reset"].as_u64().unwrap() >= 1);
    assert!(body["message"].as_str().unwrap().contains("exceeded your API rate limit"));
    // more requests while limited (well after the 429: the client knew): counted exactly
    tokio::time::sleep(buildkite_sim::ratelimit::IN_FLIGHT_GRACE + Duration::from_millis(20)).await;
    for _ in 0..3 {
        assert_eq!(t.get(&url).send().await.unwrap().status(), 429);
    }
    let s = t.sim.rate_limit_stats();
    assert_eq!(s.counted, 9);
    assert_eq!(s.rejected, 4);
    assert_eq!(s.after_429_before_reset, 3);
    assert_eq!(s.windows_with_429, 1);
    // the window resets
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = t.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["RateLimit-Remaining"], "4");
    assert_eq!(t.sim.rate_limit_stats().after_429_before_reset, 3);

    // per-user scope (50/min by default, here 2) and runtime change via /_sim
    let (s, _) = t
        .sim_json(reqwest::Method::PUT, "/rate_limit", Some(json!({"org_limit": 100, "user_limit": 2, "reset": true})))
        .await;
    assert_eq!(s, 200);
    for _ in 0..2 {
        let r = t.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["RateLimit-User-Scope"], "rest_user");
    }
    let r = t.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["RateLimit-User-Remaining"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "rest_user");
    assert_eq!(body["limit"], 2);
    // /_sim is never rate limited
    for _ in 0..5 {
        assert_eq!(t.sim_json(reqwest::Method::GET, "/stats", None).await.0, 200);
    }
    t.sim.shutdown().await;
}

#[tokio::test]
async fn clusters_queues_agents_and_metrics() {
    let mut cfg = scripted(400);
    // the step names its queue literally (settings steps never see the build env)
    cfg.pipelines[0].steps[0].agents = vec!["queue=nvidia-h100".into()];
    cfg.agents = vec![buildkite_sim::config::AgentPoolConfig {
        queue: "nvidia-h100".into(),
        count: 2,
        tags: [("gpu".to_string(), "h100".to_string()), ("gpu-index".to_string(), "%n".to_string())].into(),
        ..Default::default()
    }];
    let t = T::start(cfg).await;
    // agents of a queue that does not exist refuse to connect
    let agents: Value = t.get(&format!("{}/agents", t.org_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 0);

    let clusters: Value = t.get(&format!("{}/clusters", t.org_url())).send().await.unwrap().json().await.unwrap();
    let cluster = clusters[0]["id"].as_str().unwrap().to_string();
    assert_eq!(clusters[0]["name"], "Default cluster");
    let queues_url = format!("{}/clusters/{cluster}/queues", t.org_url());
    let q: Value = t.get(&queues_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(q.as_array().unwrap().len(), 1);
    assert_eq!(q[0]["key"], "default");

    // create queue: 201, then agents connect
    let r = t.post(&queues_url).json(&json!({"key": "nvidia-h100", "description": "H100s"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let queue: Value = r.json().await.unwrap();
    assert_eq!(queue["key"], "nvidia-h100");
    assert_eq!(queue["dispatch_paused"], false);
    let r = t.post(&queues_url).json(&json!({"key": "nvidia-h100"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Validation failed: Key has already been taken");
    for bad in [json!({}), json!({"key": "has space"}), json!({"key": 7})] {
        let r = t.post(&queues_url).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 422, "{bad}");
        assert!(r.json::<Value>().await.unwrap()["message"].as_str().unwrap().starts_with("Validation failed"));
    }
    let agents: Value = t.get(&format!("{}/agents", t.org_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 2);
    assert_eq!(agents[0]["connection_state"], "connected");
    let md: Vec<&str> = agents[0]["meta_data"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(md.contains(&"queue=nvidia-h100") && md.contains(&"gpu=h100"));
    assert!(md.contains(&"gpu-index=0") || md.contains(&"gpu-index=1"));

    // pause dispatch: jobs wait; resume: they run
    let qurl = format!("{queues_url}/{}", queue["id"].as_str().unwrap());
    let r = t.post(&format!("{qurl}/pause_dispatch")).json(&json!({"note": "maintenance"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["dispatch_paused"], true);
    assert_eq!(v["dispatch_paused_note"], "maintenance");
    assert_eq!(t.post(&format!("{qurl}/pause_dispatch")).send().await.unwrap().status(), 422);
    let b = t.create_build(json!({})).await;
    assert_eq!(b["jobs"][0]["agent_query_rules"], json!(["queue=nvidia-h100"]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.build(1).await["state"], "scheduled");
    let r = t.post(&format!("{qurl}/resume_dispatch")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(t.post(&format!("{qurl}/resume_dispatch")).send().await.unwrap().status(), 422);
    let running = t.wait_state(1, "running", 5.0).await;
    assert_eq!(running["jobs"][0]["state"], "running");
    assert!(running["jobs"][0]["agent"]["name"].as_str().unwrap().starts_with("nvidia-h100-agent-"));

    // agents list shows the job of a busy agent
    let agents: Value = t.get(&format!("{}/agents", t.org_url())).send().await.unwrap().json().await.unwrap();
    let busy: Vec<&Value> = agents.as_array().unwrap().iter().filter(|a| !a["job"].is_null()).collect();
    assert_eq!(busy.len(), 1);
    assert_eq!(busy[0]["job"]["id"], running["jobs"][0]["id"]);

    // agent metrics
    let metrics = format!("{}/metrics", t.sim.agent_url());
    let r =
        t.http.get(&metrics).header("Authorization", format!("Token {}", t.sim.agent_token())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["Buildkite-Agent-Metrics-Poll-Duration"], "10");
    assert!(!r.headers().contains_key("RateLimit-Limit"));
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["organization"]["slug"], "benchkite");
    assert_eq!(m["agents"]["total"], 2);
    assert_eq!(m["agents"]["busy"], 1);
    assert_eq!(m["agents"]["queues"]["nvidia-h100"]["idle"], 1);
    assert_eq!(m["jobs"]["running"], 1);
    let r = t
        .http
        .get(format!("{metrics}/queue?name=nvidia-h100"))
        .header("Authorization", format!("Token {}", t.sim.agent_token()))
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["agents"], json!({"idle": 1, "busy": 1, "total": 2}));
    assert_eq!(m["jobs"]["running"], 1);
    assert_eq!(t.http.get(&metrics).header("Authorization", "Token nope").send().await.unwrap().status(), 401);
    assert_eq!(t.http.get(&metrics).bearer_auth(t.sim.api_token()).send().await.unwrap().status(), 401);

    // cluster agent tokens: the value only in the create answer, and it works
    let r = t
        .post(&format!("{}/clusters/{cluster}/tokens", t.org_url()))
        .json(&json!({"description": "gpu nodes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tok: Value = r.json().await.unwrap();
    let value = tok["token"].as_str().unwrap().to_string();
    let list: Value =
        t.get(&format!("{}/clusters/{cluster}/tokens", t.org_url())).send().await.unwrap().json().await.unwrap();
    assert!(list.as_array().unwrap().iter().all(|x| x.get("token").is_none()));
    let r = t.http.get(&metrics).header("Authorization", format!("Token {value}")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // stop an idle agent: 204, gone from the list; the pool does not replace a stopped agent.
    // Stopping needs `write_agents`, which the default token does not have.
    let idle = agents.as_array().unwrap().iter().find(|a| a["job"].is_null()).unwrap();
    let stop_url = format!("{}/agents/{}/stop", t.org_url(), idle["id"].as_str().unwrap());
    let r = t.put(&stop_url).json(&json!({"force": false})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let writer = t.sim.create_api_token(&["write_agents"]);
    let r = t.http.put(&stop_url).bearer_auth(&writer).json(&json!({"force": false})).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = t.http.put(&stop_url).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let one: Value = t
        .get(&format!("{}/agents/{}", t.org_url(), idle["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["connection_state"], "stopped");
    t.wait_state(1, "passed", 5.0).await;
    t.sim.shutdown().await;
}

#[tokio::test]
async fn builds_queue_while_agents_busy() {
    let mut cfg = scripted(300);
    cfg.agents =
        vec![buildkite_sim::config::AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    cfg.pipelines.push(queue_pipeline("gpu", "gpu"));
    let t = T::start(cfg).await;
    for _ in 0..3 {
        t.create_build(json!({})).await;
    }
    t.wait_state(1, "running", 3.0).await;
    assert_eq!(t.build(2).await["state"], "scheduled");
    assert_eq!(t.build(3).await["state"], "scheduled");
    let m: Value = t
        .http
        .get(format!("{}/metrics", t.sim.agent_url()))
        .header("Authorization", format!("Token {}", t.sim.agent_token()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["jobs"]["scheduled"], 2);
    assert_eq!(m["jobs"]["running"], 1);
    // FIFO: 2 runs after 1, 3 after 2
    let b1 = t.wait_state(1, "passed", 5.0).await;
    let b2 = t.wait_state(2, "passed", 5.0).await;
    let b3 = t.wait_state(3, "passed", 5.0).await;
    assert!(b1["finished_at"].as_str() <= b2["started_at"].as_str());
    assert!(b2["finished_at"].as_str() <= b3["started_at"].as_str());
    // a job for a queue without agents stays scheduled; adding agents at run time runs it
    let (s, _) = t.sim_json(reqwest::Method::POST, "/agents", Some(json!({"tags": ["queue=gpu"]}))).await;
    assert_eq!(s, 422, "agents refuse to join a queue that does not exist");
    t.create_build_in("gpu", "main", json!({})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(t.sim_build("gpu", 1).await["state"], "scheduled");
    t.sim.create_queue("gpu").unwrap();
    let (s, _) = t.sim_json(reqwest::Method::PUT, "/agents/pools", Some(json!({"queue": "gpu", "count": 1}))).await;
    assert_eq!(s, 200);
    t.wait_build("gpu", 1, "passed", 5.0).await;
    t.sim.shutdown().await;
}
