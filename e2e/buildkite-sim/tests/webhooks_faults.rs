//! Webhooks (payload, signature, retries, duplicates), fault injection, outages, and
//! garbage thrown at every endpoint.

#![allow(clippy::field_reassign_with_default)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use buildkite_sim::config::{
    AgentPoolConfig, EndpointFault, FaultConfig, OutageConfig, OutageMode, WebhookAuth, WebhookBodyShape,
    WebhookConfig, WebhookDelivery,
};
use bytes::Bytes;
use common::{T, scripted};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A webhook receiver on loopback; the first `fail_first` requests get a 500.
async fn receiver(fail_first: usize) -> (String, Received) {
    let got: Received = Arc::default();
    let seen = Arc::new(Mutex::new(0usize));
    let g = Arc::clone(&got);
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let g = Arc::clone(&g);
            let seen = Arc::clone(&seen);
            async move {
                let n = {
                    let mut s = seen.lock().unwrap();
                    *s += 1;
                    *s
                };
                if n <= fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                g.lock().unwrap().push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

fn events(got: &Received) -> Vec<String> {
    got.lock().unwrap().iter().map(|(h, _)| h["X-Buildkite-Event"].to_str().unwrap().to_string()).collect()
}

async fn wait_for(got: &Received, event: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(got).iter().filter(|e| *e == event).count() < count {
        assert!(Instant::now() < deadline, "waiting for {event}: got {:?}", events(got));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhook_payloads_and_signature() {
    let (url, got) = receiver(1).await;
    let mut cfg = scripted(50);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    cfg.webhooks = vec![WebhookConfig {
        url,
        token: "s3cret".into(),
        auth: WebhookAuth::Signature,
        events: vec![],
        // this test asks for redelivery (Buildkite documents none; the default is 1 attempt)
        delivery: WebhookDelivery { backoff_ms: 20, max_attempts: 3, ..WebhookDelivery::default() },
        ..WebhookConfig::default()
    }];
    let t = T::start(cfg).await;
    t.create_build(json!({"KERNELBOT_RUN_ID": "run-7"})).await;
    wait_for(&got, "build.finished", 1).await;
    let evs = events(&got);
    for e in ["build.scheduled", "job.scheduled", "job.started", "build.running", "job.finished", "build.finished"] {
        assert!(evs.iter().any(|x| x == e), "{e} missing from {evs:?}");
    }
    let received = got.lock().unwrap().clone();
    for (headers, body) in &received {
        // the documented algorithm: HMAC-SHA256(key = token, "<timestamp>.<raw body>")
        let sig = headers["X-Buildkite-Signature"].to_str().unwrap();
        assert!(headers.get("X-Buildkite-Token").is_none());
        let (ts, hexsig) = sig
            .split_once(',')
            .map(|(a, b)| (a.strip_prefix("timestamp=").unwrap(), b.strip_prefix("signature=").unwrap()))
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        assert_eq!(hex::encode(mac.finalize().into_bytes()), hexsig);
        assert!((jiff::Timestamp::now().as_second() - ts.parse::<i64>().unwrap()).abs() < 60);
        assert!(buildkite_sim::verify_signature("s3cret", sig, body, 300));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], headers["X-Buildkite-Event"].to_str().unwrap());
        assert_eq!(v["build"]["env"]["KERNELBOT_RUN_ID"], "run-7");
        assert!(v["build"].get("jobs").is_none(), "webhook builds carry no jobs");
        assert!(v["build"]["meta_data"].is_object());
        assert!(v["build"]["created_at"].as_str().unwrap().ends_with('Z'), "documented shape: REST timestamps");
        assert_eq!(v["pipeline"]["slug"], "kernelbot");
        assert!(v["sender"]["name"].is_string());
        if v["event"].as_str().unwrap().starts_with("job.") {
            assert!(v["job"]["id"].is_string());
        }
    }
    let finished: Value = received
        .iter()
        .map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap())
        .find(|v| v["event"] == "build.finished")
        .unwrap();
    assert_eq!(finished["build"]["state"], "passed");
    // the first attempt failed (500) and was retried
    let stats = &t.sim.webhook_stats()[0].stats;
    assert_eq!(stats.failed_attempts, 1);
    assert!(stats.retries >= 1);
    assert_eq!(stats.delivered as usize, received.len());
    t.sim.shutdown().await;
}

#[tokio::test]
async fn webhooks_are_delivered_at_most_once_by_default() {
    assert_eq!(WebhookDelivery::default().max_attempts, 1);
    // the receiver answers 500 to the first request: that delivery is lost for good
    let (url, got) = receiver(1).await;
    let mut cfg = scripted(20);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    cfg.webhooks = vec![WebhookConfig { url, events: vec!["build.finished".into()], ..WebhookConfig::default() }];
    let t = T::start(cfg).await;
    t.create_build(json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.sim.webhook_stats()[0].stats.gave_up == 0 {
        assert!(Instant::now() < deadline, "the failed delivery was not given up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a later event is delivered; the lost one never is
    t.create_build(json!({})).await;
    wait_for(&got, "build.finished", 1).await;
    let stats = t.sim.webhook_stats()[0].stats.clone();
    assert_eq!((stats.attempts, stats.failed_attempts, stats.retries, stats.gave_up), (2, 1, 0, 1));
    let received = got.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let v: Value = serde_json::from_slice(&received[0].1).unwrap();
    assert_eq!(v["build"]["number"], 2, "build 1's build.finished was not redelivered");
    t.sim.shutdown().await;
}

/// `2018-03-25 03:58:14 UTC`
fn is_utc_timestamp(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.len() == 23 && s.ends_with(" UTC") && jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", &s[..19]).is_ok()
}

#[tokio::test]
async fn services_console_body_shape() {
    let (url, got) = receiver(0).await;
    let mut cfg = scripted(20);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    cfg.webhooks =
        vec![WebhookConfig { url, body_shape: WebhookBodyShape::ServicesConsole, ..WebhookConfig::default() }];
    let t = T::start(cfg).await;
    t.create_build_in("kernelbot", "benchkite/run-9", json!({"K": "v"})).await;
    wait_for(&got, "build.finished", 1).await;
    let received = got.lock().unwrap().clone();
    let bodies: Vec<Value> = received.iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect();
    for v in &bodies {
        let b = &v["build"];
        assert!(b.get("meta_data").is_none(), "no meta_data key: {v}");
        assert!(v.get("pipeline").is_none() && b.get("env").is_none());
        assert!(is_utc_timestamp(&b["created_at"]) && is_utc_timestamp(&b["scheduled_at"]), "{b}");
        assert!(is_utc_timestamp(&b["creator"]["created_at"]));
        assert_eq!(b["branch"], "benchkite/run-9");
        assert!(b["url"].as_str().unwrap().contains("/pipelines/kernelbot/builds/1"));
        if v["event"].as_str().unwrap().starts_with("job.") {
            assert!(is_utc_timestamp(&v["job"]["created_at"]));
        }
    }
    let finished = bodies.iter().find(|v| v["event"] == "build.finished").unwrap();
    assert_eq!(finished["build"]["state"], "passed");
    assert!(is_utc_timestamp(&finished["build"]["finished_at"]));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn webhook_token_duplicates_and_filters() {
    let (url, got) = receiver(0).await;
    let mut cfg = scripted(20);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    let t = T::start(cfg).await;
    // added at run time: a ping first
    t.sim.add_webhook(WebhookConfig {
        url,
        token: "tok".into(),
        auth: WebhookAuth::Token,
        events: vec!["ping".into(), "build.finished".into()],
        delivery: WebhookDelivery { duplicate_probability: 1.0, jitter_ms: 30, ..WebhookDelivery::default() },
        ..WebhookConfig::default()
    });
    t.create_build(json!({})).await;
    wait_for(&got, "build.finished", 2).await;
    wait_for(&got, "ping", 2).await;
    let received = got.lock().unwrap().clone();
    assert!(received.iter().all(|(h, _)| h["X-Buildkite-Token"] == "tok"));
    assert!(events(&got).iter().all(|e| e == "ping" || e == "build.finished"));
    let bodies: Vec<&Bytes> =
        received.iter().filter(|(h, _)| h["X-Buildkite-Event"] == "build.finished").map(|(_, b)| b).collect();
    assert_eq!(bodies[0], bodies[1], "a duplicate is the same delivery");
    assert_eq!(t.sim.webhook_stats()[0].stats.duplicates, 2);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn faults_outages_and_counters() {
    let t = T::start(scripted(10)).await;
    let list = t.builds_url();
    let key = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds";
    // per-endpoint error rate
    let mut f = FaultConfig::default();
    f.endpoints.insert(key.into(), EndpointFault { error_rate: 1.0, error_status: 502, ..EndpointFault::default() });
    t.sim.set_faults(f);
    assert_eq!(t.get(&list).send().await.unwrap().status(), 502);
    assert_eq!(t.get(&format!("{}/pipelines", t.org_url())).send().await.unwrap().status(), 200);
    // latency and dropped connections via /_sim
    let (s, _) = t
        .sim_json(
            reqwest::Method::PUT,
            "/faults/endpoint",
            Some(json!({"endpoint": key, "fault": {"latency_ms": 150}})),
        )
        .await;
    assert_eq!(s, 200);
    let start = Instant::now();
    assert_eq!(t.get(&list).send().await.unwrap().status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
    let (s, _) = t
        .sim_json(reqwest::Method::PUT, "/faults/endpoint", Some(json!({"endpoint": key, "fault": {"drop_rate": 1.0}})))
        .await;
    assert_eq!(s, 200);
    assert!(t.get(&list).send().await.is_err(), "connection dropped");
    let (s, _) =
        t.sim_json(reqwest::Method::PUT, "/faults/endpoint", Some(json!({"endpoint": key, "fault": null}))).await;
    assert_eq!(s, 200);
    assert_eq!(t.get(&list).send().await.unwrap().status(), 200);
    let c = t.sim.counters().endpoint(key);
    assert_eq!((c.status(502), c.status(0), c.status(200)), (1, 1, 2));

    // full outage: every API request 503, /_sim keeps working
    t.sim.start_outage(OutageConfig { duration_secs: 0.5, mode: OutageMode::Unavailable, include_storage: false });
    assert_eq!(t.get(&list).send().await.unwrap().status(), 503);
    assert_eq!(t.http.get(format!("{}/metrics", t.sim.agent_url())).send().await.unwrap().status(), 503);
    assert_eq!(t.sim_json(reqwest::Method::GET, "/health", None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(t.get(&list).send().await.unwrap().status(), 200);
    // drop-mode outage, ended early
    let (s, _) = t.sim_json(reqwest::Method::POST, "/outage", Some(json!({"duration_secs": 60, "mode": "drop"}))).await;
    assert_eq!(s, 200);
    assert!(t.get(&list).send().await.is_err());
    t.sim.end_outage();
    assert_eq!(t.get(&list).send().await.unwrap().status(), 200);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn garbage_never_panics() {
    let mut cfg = scripted(10);
    cfg.agents = vec![AgentPoolConfig { queue: "default".into(), count: 1, ..Default::default() }];
    // The per-user limit stays on (50 per minute per token): the requests are spread over
    // enough tokens (users) that none of them reaches it.
    cfg.api_tokens = (0..100).map(|i| format!("garbage-token-{i}")).collect();
    let tokens = cfg.api_tokens.clone();
    let t = T::start(cfg).await;
    let b = t.create_build(json!({"BUILDKITE_SIM_RESULT_JSON": "{}"})).await;
    let b = t.wait_state(b["number"].as_u64().unwrap(), "passed", 5.0).await;
    let job = b["jobs"][0]["id"].as_str().unwrap().to_string();
    let (_, clusters) =
        (0, t.get(&format!("{}/clusters", t.org_url())).send().await.unwrap().json::<Value>().await.unwrap());
    let cluster = clusters[0]["id"].as_str().unwrap().to_string();
    let org = t.org_url();
    let paths = [
        "".to_string(),
        "/access-token".into(),
        "/user".into(),
        "/builds".into(),
        "/organizations".into(),
        org.clone(),
        format!("{org}/builds"),
        format!("{org}/pipelines"),
        format!("{org}/pipeline-settings"),
        format!("{org}/pipelines/kernelbot/builds"),
        format!("{org}/pipelines/kernelbot/builds/1"),
        format!("{org}/pipelines/kernelbot/builds/1/cancel"),
        format!("{org}/pipelines/kernelbot/builds/1/artifacts"),
        format!("{org}/pipelines/kernelbot/builds/1/jobs/{job}/artifacts"),
        format!("{org}/pipelines/kernelbot/builds/1/jobs/{job}/artifacts/zzz"),
        format!("{org}/pipelines/kernelbot/builds/1/jobs/{job}/artifacts/zzz/download"),
        format!("{org}/pipelines/kernelbot/builds/1/jobs/{job}/log"),
        format!("{org}/pipelines/kernelbot/builds/1/jobs/{job}/log.txt"),
        format!("{org}/jobs/{job}/artifacts"),
        format!("{org}/jobs/not-a-uuid/artifacts/x/download"),
        format!("{org}/agents"),
        format!("{org}/agents/x"),
        format!("{org}/agents/x/stop"),
        format!("{org}/clusters"),
        format!("{org}/clusters/{cluster}"),
        format!("{org}/clusters/{cluster}/queues"),
        format!("{org}/clusters/{cluster}/queues/x"),
        format!("{org}/clusters/{cluster}/queues/x/pause_dispatch"),
        format!("{org}/clusters/{cluster}/queues/x/resume_dispatch"),
        format!("{org}/clusters/{cluster}/tokens"),
        format!("{org}/pipelines/kernelbot/builds/18446744073709551616"),
        format!("{org}/pipelines/kernelbot/builds/-1"),
        format!("{org}/pipelines/%FF%FE/builds"),
        format!("{org}/pipelines/kernelbot/builds/1/jobs/%00/artifacts"),
        // last: DELETE removes the pipeline
        format!("{org}/pipelines/kernelbot"),
    ];
    let queries = [
        "",
        "?page=0&per_page=-5&page=99999999999999999999999&per_page=1000000",
        "?state[]=&state[]=%FF&meta_data[=x&meta_data[]]=y&created_from=yesterday",
        "?created_from=2025-01-01&finished_from=2025-13-45T99:99:99Z&branch[]=***&path=[[",
    ];
    let bodies: [&[u8]; 7] = [
        b"",
        b"{",
        b"null",
        b"[]",
        b"{\"commit\": {\"a\": 1}, \"branch\": [], \"env\": \"x\", \"meta_data\": 5, \"key\": null, \"force\": \"yes\"}",
        b"\xff\xfe\x00garbage",
        b"{\"commit\":\"HEAD\",\"branch\":\"main\",\"env\":{\"BUILDKITE_SIM_INFRA_FAILURE\":\"bogus@x\",\"BUILDKITE_SIM_TIMEOUT_SECS\":\"NaN\",\"BUILDKITE_SIM_DURATION_MS\":\"-1\"}}",
    ];
    let methods = [reqwest::Method::GET, reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE];
    let mut n = 0;
    let mut authed = 0usize;
    for p in &paths {
        let base = if p.starts_with("http") { p.clone() } else { format!("{}{p}", t.sim.api_url()) };
        for q in &queries {
            for m in &methods {
                for body in &bodies {
                    for auth in [true, false] {
                        let mut rb = t.http.request(m.clone(), format!("{base}{q}")).body(body.to_vec());
                        if auth {
                            rb = rb.bearer_auth(&tokens[authed % tokens.len()]);
                            authed += 1;
                        }
                        let r = rb.send().await.unwrap();
                        let s = r.status().as_u16();
                        // 403: the default token lacks e.g. read_build_logs, write_agents
                        assert!([200, 201, 204, 302, 400, 401, 403, 404, 422].contains(&s), "{m} {base}{q} -> {s}");
                        if s >= 400 {
                            let v: Value = r.json().await.unwrap_or_else(|_| panic!("{m} {base}{q}: JSON error body"));
                            assert!(v["message"].is_string());
                        }
                        n += 1;
                    }
                }
            }
        }
    }
    // the agent API, the storage host and /_sim get garbage too
    for url in [
        format!("{}/metrics", t.sim.agent_url()),
        format!("{}/metrics/queue?name=%FF", t.sim.agent_url()),
        format!("{}/artifacts/x/y?Expires=abc&Signature=zz", t.sim.storage_url()),
        format!("{}/artifacts/{}/y?Expires=1&Signature=00", t.sim.storage_url(), uuid::Uuid::new_v4()),
        format!("{}/nothing", t.sim.storage_url()),
        format!("{}/agents/pools", t.sim.sim_url()),
        format!("{}/jobs/x/finish", t.sim.sim_url()),
        format!("{}/webhooks", t.sim.sim_url()),
        format!("{}/faults", t.sim.sim_url()),
        format!("{}/rate_limit", t.sim.sim_url()),
        format!("{}/builds/x/state", t.sim.sim_url()),
        format!("{}/executor", t.sim.sim_url()),
    ] {
        for m in &methods {
            for body in &bodies {
                let r = t
                    .http
                    .request(m.clone(), &url)
                    .header("Authorization", "Token x")
                    .body(body.to_vec())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().as_u16() < 500, "{m} {url} -> {}", r.status());
                n += 1;
            }
        }
    }
    assert!(n > 2000);
    // still alive and consistent
    assert_eq!(t.sim_json(reqwest::Method::GET, "/health", None).await.0, 200);
    assert_eq!(t.get(&format!("{}/builds", t.sim.api_url())).send().await.unwrap().status(), 200);
    assert_eq!(t.sim.rate_limit_stats().rejected, 0);
    t.sim.shutdown().await;
}
