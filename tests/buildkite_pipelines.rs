//! The pipelines benchkite builds on, against a small pipelines API double on 127.0.0.1:
//! the REST calls (get, create that is safe to repeat, update, unarchive, access token),
//! the PipelineManager (create once, memoized, single-flight, drift repaired, failures
//! remembered), the check of a user's pipeline, the cluster choice and the token scopes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use benchkite::buildkite::pipelines::{ManagedStep, NewPipeline, PipelinePatch, problem, render_configuration};
use benchkite::buildkite::scopes::check_scopes_once;
use benchkite::buildkite::{Client, Config, Error, Feature, ScopeReport, ScopeState, Secret, managed_slug};
use benchkite::controller::pipelines::{PipelineConfig, PipelineManager, QueueSettings, reason};
use benchkite::controller::queues::{ClusterChoice, ClusterResolver};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const TOKEN: &str = "bkua_PIPELINES_CANARY_0123456789";
const ORG: &str = "acme";

/// One request as the double saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

#[derive(Default)]
struct Double {
    pipelines: HashMap<String, Value>,
    seen: Vec<Seen>,
    clusters: Vec<Value>,
    /// Status and body of `GET …/pipeline-settings`.
    settings: Option<(u16, Value)>,
    /// Status of every create, when set (instead of creating).
    fail_create: Option<u16>,
    scopes: Option<Vec<&'static str>>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Double>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Double) -> T) -> T {
        f(&mut self.0.lock().expect("double lock"))
    }
    fn seen(&self) -> Vec<(String, String)> {
        self.with(|d| d.seen.iter().map(|s| (s.method.clone(), s.path.clone())).collect())
    }
    fn count(&self, method: &str, path_suffix: &str) -> usize {
        self.seen().iter().filter(|(m, p)| m == method && p.ends_with(path_suffix)).count()
    }
    fn bodies(&self, method: &str) -> Vec<Value> {
        self.with(|d| d.seen.iter().filter(|s| s.method == method).map(|s| s.body.clone()).collect())
    }
    fn clear(&self) {
        self.with(|d| d.seen.clear());
    }
}

fn reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).expect("status"), axum::Json(body)).into_response()
}

/// What Buildkite stores of a configuration: it drops comments and rewrites the text
/// (its example answer quotes `"steps":`), so only a YAML comparison sees it unchanged.
fn stored_configuration(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").replacen(
        "steps:",
        "\"steps\":",
        1,
    )
}

fn pipeline_json(base: &str, body: &Value) -> Value {
    let slug = body["slug"].as_str().unwrap_or_default().to_string();
    let mut p = json!({
        "id": format!("id-{slug}"),
        "slug": slug,
        "name": body["name"],
        "url": format!("{base}/v2/organizations/{ORG}/pipelines/{slug}"),
        "web_url": format!("https://buildkite.com/{ORG}/{slug}"),
        "repository": body["repository"],
        "cluster_id": body.get("cluster_id").cloned().unwrap_or(Value::Null),
        "default_branch": body.get("default_branch").cloned().unwrap_or(json!("main")),
        "description": body.get("description").cloned().unwrap_or(Value::Null),
        "skip_queued_branch_builds": body.get("skip_queued_branch_builds").cloned().unwrap_or(json!(false)),
        "cancel_running_branch_builds": body.get("cancel_running_branch_builds").cloned().unwrap_or(json!(false)),
        "archived_at": null,
        "created_at": "2013-09-03 13:24:38 UTC",
    });
    if let Some(c) = body["configuration"].as_str() {
        p["configuration"] = json!(stored_configuration(c));
    }
    p
}

async fn handle(
    State((shared, base)): State<(Shared, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if auth != format!("Bearer {TOKEN}") {
        return reply(401, json!({"message": "Authentication required"}));
    }
    let mut d = shared.0.lock().expect("double lock");
    d.seen.push(Seen { method: method.to_string(), path: path.clone(), body: body.clone() });
    let org = format!("/v2/organizations/{ORG}");
    if path == "/v2/access-token" && method == Method::GET {
        return match &d.scopes {
            Some(s) => reply(200, json!({"uuid": "u-1", "scopes": s, "description": "ci"})),
            None => reply(500, json!({"message": "boom"})),
        };
    }
    let Some(rest) = path.strip_prefix(&org) else { return reply(404, json!({"message": "Not Found"})) };
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["clusters"]) => reply(200, Value::Array(d.clusters.clone())),
        (Method::GET, ["pipeline-settings"]) => {
            let (s, b) = d.settings.clone().unwrap_or((403, json!({"message": "Forbidden"})));
            reply(s, b)
        }
        (Method::GET, ["pipelines", slug]) => match d.pipelines.get(*slug) {
            Some(p) => reply(200, p.clone()),
            None => reply(404, json!({"message": "Not Found"})),
        },
        (Method::POST, ["pipelines"]) => {
            if let Some(s) = d.fail_create {
                return reply(s, json!({"message": format!("refused with {s}")}));
            }
            let slug = body["slug"].as_str().unwrap_or_default().to_string();
            let name = body["name"].as_str().unwrap_or_default();
            if d.pipelines.contains_key(&slug) {
                return reply(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"field": "slug", "code": "Slug has already been taken"}]}),
                );
            }
            if d.pipelines.values().any(|p| p["name"] == json!(name)) {
                return reply(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"field": "name", "code": "Name has already been taken"}]}),
                );
            }
            if body["configuration"].as_str().is_none_or(|c| c.trim().is_empty()) {
                return reply(422, json!({"message": "Validation Failed", "errors": [{"field": "configuration"}]}));
            }
            let p = pipeline_json(&base, &body);
            d.pipelines.insert(slug, p.clone());
            reply(201, p)
        }
        (Method::PATCH, ["pipelines", slug]) => {
            let Some(p) = d.pipelines.get_mut(*slug) else { return reply(404, json!({"message": "Not Found"})) };
            if let Value::Object(fields) = &body {
                for (k, v) in fields {
                    p[k] = if k == "configuration" {
                        json!(stored_configuration(v.as_str().unwrap_or_default()))
                    } else {
                        v.clone()
                    };
                }
            }
            reply(200, p.clone())
        }
        (Method::POST, ["pipelines", slug, "unarchive"]) => {
            let Some(p) = d.pipelines.get_mut(*slug) else { return reply(404, json!({"message": "Not Found"})) };
            p["archived_at"] = Value::Null;
            reply(200, p.clone())
        }
        _ => reply(404, json!({"message": "Not Found"})),
    }
}

async fn double() -> (Shared, Client) {
    let shared = Shared::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let router = Router::new().fallback(handle).with_state((shared.clone(), base.clone()));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let mut c = Config::new(ORG, Secret::new(TOKEN));
    c.api_url = format!("{base}/v2");
    c.max_retries = 0;
    c.retry_base_delay = Duration::from_millis(10);
    c.retry_max_delay = Duration::from_millis(50);
    (shared, Client::new(c).expect("client"))
}

const C1: &str = "0190a1b2-c3d4-7e5f-8a9b-000000000001";
const C2: &str = "0190a1b2-c3d4-7e5f-8a9b-000000000002";

fn new_pipeline(slug: &str) -> NewPipeline {
    NewPipeline {
        name: slug.into(),
        slug: slug.into(),
        repository: "https://github.com/benchkite/benchkite.git".into(),
        configuration: render_configuration(&ManagedStep::new("gpu")),
        cluster_id: Some(C1.into()),
        default_branch: Some("main".into()),
        description: Some("managed".into()),
        skip_queued_branch_builds: false,
        cancel_running_branch_builds: false,
        teams: Default::default(),
    }
}

fn manager(client: &Client, cfg: PipelineConfig, cluster: Option<&str>) -> PipelineManager {
    PipelineManager::new(client.clone(), cfg, ClusterResolver::new(cluster.map(str::to_string)), ScopeReport::new())
}

// ----- REST calls ------------------------------------------------------------------------------

#[tokio::test]
async fn get_is_none_on_404_and_create_sends_the_documented_body() {
    let (d, client) = double().await;
    assert_eq!(client.get_pipeline("nope").await.expect("404 is not an error"), None);

    let p = client.create_pipeline(&new_pipeline("bk-gpu")).await.expect("created");
    assert_eq!((p.slug.as_str(), p.cluster_id.as_deref()), ("bk-gpu", Some(C1)));
    assert_eq!(p.web_url.as_deref(), Some("https://buildkite.com/acme/bk-gpu"));
    let body = &d.bodies("POST")[0];
    for k in ["name", "slug", "repository", "configuration", "cluster_id", "default_branch", "description"] {
        assert!(body.get(k).is_some(), "{k} missing from {body}");
    }
    assert_eq!(
        (body["skip_queued_branch_builds"].clone(), body["cancel_running_branch_builds"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(d.seen()[1], ("POST".to_string(), format!("/v2/organizations/{ORG}/pipelines")));

    let got = client.get_pipeline("bk-gpu").await.expect("get").expect("exists");
    assert!(
        !got.configuration.as_deref().unwrap_or_default().contains('#'),
        "the double drops comments like Buildkite"
    );
    assert!(client.get_pipeline("bad/slug").await.is_err(), "a slug is checked before it is sent");
}

#[tokio::test]
async fn a_repeated_create_updates_only_what_differs() {
    let (d, client) = double().await;
    client.create_pipeline(&new_pipeline("bk-gpu")).await.expect("first");
    d.clear();
    // Same again: 422 "already been taken", read, nothing to change.
    client.create_pipeline(&new_pipeline("bk-gpu")).await.expect("repeat");
    assert_eq!(d.seen().iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["POST", "GET"]);

    // Different: the update carries the differences only, never the name.
    d.clear();
    let mut changed = new_pipeline("bk-gpu");
    changed.configuration = render_configuration(&ManagedStep { timeout_in_minutes: 90, ..ManagedStep::new("gpu") });
    changed.cluster_id = Some(C2.into());
    let p = client.create_pipeline(&changed).await.expect("repeat with changes");
    assert_eq!(p.cluster_id.as_deref(), Some(C2));
    assert_eq!(d.seen().iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["POST", "GET", "PATCH"]);
    let patch = &d.bodies("PATCH")[0];
    let mut keys: Vec<&str> = patch.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cluster_id", "configuration"]);

    // A name taken by another slug stays an error.
    let mut clash = new_pipeline("bk-other");
    clash.name = "bk-gpu".into();
    let e = client.create_pipeline(&clash).await.expect_err("name taken");
    assert!(matches!(e, Error::Api { status: 422, .. }), "{e}");
    assert!(e.to_string().contains("Name has already been taken"), "{e}");
}

#[tokio::test]
async fn update_and_unarchive_and_access_token() {
    let (d, client) = double().await;
    client.create_pipeline(&new_pipeline("bk-gpu")).await.expect("created");
    let patch = PipelinePatch { cancel_running_branch_builds: Some(false), ..Default::default() };
    client.update_pipeline("bk-gpu", &patch).await.expect("updated");
    assert_eq!(d.bodies("PATCH")[0], json!({"cancel_running_branch_builds": false}));
    client.unarchive_pipeline("bk-gpu").await.expect("unarchived");
    assert_eq!(d.count("POST", "/pipelines/bk-gpu/unarchive"), 1);

    d.with(|x| x.scopes = Some(vec!["read_builds", "write_pipelines"]));
    let t = client.access_token().await.expect("token");
    assert_eq!(t.scopes, ["read_builds", "write_pipelines"]);
    assert!(d.seen().contains(&("GET".to_string(), "/v2/access-token".to_string())), "not under /organizations");
}

// ----- the manager -----------------------------------------------------------------------------

#[tokio::test]
async fn ensure_creates_once_then_costs_nothing() {
    let (d, client) = double().await;
    let m = manager(&client, PipelineConfig { instance: "prod".into(), ..Default::default() }, Some(C1));
    let p = m.ensure("gpu").await.expect("ensured");
    assert_eq!(p.slug, managed_slug("prod", "gpu"));
    assert_eq!(p.cluster_id.as_deref(), Some(C1));
    assert_eq!(p.web_url, Some(format!("https://buildkite.com/{ORG}/{}", p.slug)));
    assert_eq!(d.seen().iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["GET", "POST"]);
    let created = &d.bodies("POST")[0];
    assert_eq!(created["configuration"], json!(render_configuration(&ManagedStep::new("gpu"))));
    assert_eq!(created["name"], json!(p.slug));

    d.clear();
    for _ in 0..5 {
        assert_eq!(m.ensure("gpu").await.expect("memoized"), p);
    }
    assert!(d.seen().is_empty(), "steady state costs no request: {:?}", d.seen());

    // Another process (a restart) finds it as it should be: one read, no write, although
    // Buildkite rewrote the configuration text.
    let fresh = manager(&client, PipelineConfig { instance: "prod".into(), ..Default::default() }, Some(C1));
    assert_eq!(fresh.ensure("gpu").await.expect("found"), p);
    assert_eq!(d.seen().iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["GET"]);
}

#[tokio::test]
async fn concurrent_callers_wait_for_one_ensure() {
    let (d, client) = double().await;
    let m = manager(&client, PipelineConfig::default(), Some(C1));
    let calls = (0..8).map(|_| {
        let m = m.clone();
        tokio::spawn(async move { m.ensure("gpu").await })
    });
    let outcomes = futures::future::join_all(calls).await;
    let slugs: Vec<String> = outcomes.into_iter().map(|o| o.expect("task").expect("ensured").slug).collect();
    assert!(slugs.iter().all(|s| *s == slugs[0]));
    assert_eq!((d.count("GET", &slugs[0]), d.count("POST", "/pipelines")), (1, 1), "{:?}", d.seen());
}

#[tokio::test]
async fn pool_settings_and_drift_are_synced_with_one_update() {
    let (d, client) = double().await;
    let m = manager(&client, PipelineConfig::default(), Some(C1));
    let slug = m.ensure("gpu").await.expect("created").slug;

    // The pool asks for another step timeout: the desired state changed.
    d.clear();
    m.ensure_with("gpu", QueueSettings { step_timeout_minutes: Some(90), cluster: None }).await.expect("updated");
    assert_eq!(d.seen().iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["GET", "PATCH"]);
    let patch = &d.bodies("PATCH")[0];
    assert!(patch["configuration"].as_str().unwrap_or_default().contains("timeout_in_minutes: 90"), "{patch}");
    // Callers that name no settings (KernelJobs) get the pool's.
    d.clear();
    m.ensure("gpu").await.expect("same");
    assert!(d.seen().is_empty(), "{:?}", d.seen());

    // A human turns on "Cancel intermediate builds" and archives it; after an invalidation
    // (or the resync) both are undone.
    d.with(|x| {
        let p = x.pipelines.get_mut(&slug).expect("pipeline");
        p["cancel_running_branch_builds"] = json!(true);
        p["archived_at"] = json!("2021-06-01 08:23:35 UTC");
    });
    m.invalidate("gpu");
    d.clear();
    m.ensure("gpu").await.expect("repaired");
    assert_eq!(
        d.seen().iter().map(|(m, p)| format!("{m} {}", p.rsplit('/').next().unwrap_or_default())).collect::<Vec<_>>(),
        ["GET ".to_string() + &slug, "POST unarchive".into(), "PATCH ".to_string() + &slug]
    );
    assert_eq!(d.bodies("PATCH")[0], json!({"cancel_running_branch_builds": false}));
}

#[tokio::test]
async fn failures_are_remembered_briefly_and_say_what_failed() {
    let (d, client) = double().await;
    d.with(|x| x.fail_create = Some(500));
    let m = manager(&client, PipelineConfig { error_ttl: Duration::from_secs(3600), ..Default::default() }, Some(C1));
    let e = m.ensure("gpu").await.expect_err("500");
    assert_eq!((e.reason, e.transient), (reason::CREATE_FAILED, true));
    assert!(e.message.contains("creating pipeline benchkite-gpu-"), "{e}");
    assert!(!e.message.contains(TOKEN));
    d.clear();
    assert_eq!(m.ensure("gpu").await.expect_err("remembered"), e);
    assert!(d.seen().is_empty(), "a failing create is not hammered: {:?}", d.seen());

    // Without the memory, every call asks again; a 403 names the scopes to check.
    d.with(|x| x.fail_create = Some(403));
    let m = manager(&client, PipelineConfig { error_ttl: Duration::ZERO, ..Default::default() }, Some(C1));
    let e = m.ensure("gpu").await.expect_err("403");
    assert!(!e.transient && e.message.contains("write_pipelines"), "{e}");
    d.clear();
    m.ensure("gpu").await.expect_err("asked again");
    assert_eq!(d.count("POST", "/pipelines"), 1);
}

#[tokio::test]
async fn the_cluster_follows_the_organization_then_its_name() {
    let (d, client) = double().await;
    d.with(|x| {
        x.clusters = vec![json!({"id": C1, "name": "Default cluster"}), json!({"id": C2, "name": "GPUs"})];
        x.settings = Some((200, json!({"default_cluster_id": C2, "default_branch": "main"})));
    });
    let resolver = ClusterResolver::new(None);
    let c = resolver.resolve(&client, None).await.expect("org default");
    assert_eq!((c.id.as_str(), c.choice, c.name.as_deref()), (C2, ClusterChoice::OrganizationDefault, Some("GPUs")));
    d.clear();
    assert_eq!(resolver.resolve(&client, None).await.expect("remembered").id, C2);
    assert!(d.seen().is_empty());
    // By name, for a pool that names one.
    assert_eq!(resolver.resolve(&client, Some("default CLUSTER")).await.expect("by name").id, C1);

    // A token that may not read the organization's settings: the one named "Default cluster".
    d.with(|x| x.settings = None);
    let m =
        PipelineManager::new(client.clone(), PipelineConfig::default(), ClusterResolver::new(None), ScopeReport::new());
    let p = m.ensure("gpu").await.expect("ensured");
    assert_eq!(p.cluster_id.as_deref(), Some(C1));

    // Several clusters and no way to choose: the error lists them and names the flag.
    d.with(|x| x.clusters = vec![json!({"id": C1, "name": "CPUs"}), json!({"id": C2, "name": "GPUs"})]);
    let m =
        PipelineManager::new(client.clone(), PipelineConfig::default(), ClusterResolver::new(None), ScopeReport::new());
    let e = m.ensure("gpu").await.expect_err("ambiguous");
    assert_eq!(e.reason, reason::CLUSTER_UNRESOLVED);
    assert!(
        e.message.contains("--buildkite-cluster") && e.message.contains("\"CPUs\"") && e.message.contains("\"GPUs\""),
        "{e}"
    );
}

// ----- a user's pipeline ---------------------------------------------------------------------

#[tokio::test]
async fn a_user_pipeline_is_checked_by_name() {
    let (d, client) = double().await;
    // The pipeline the repository used to ship (manifests/buildkite/pipeline.yml), with
    // "Cancel intermediate builds" on, as Buildkite's own CLI fixtures have it.
    let legacy = r#"
steps:
  - label: ":stopwatch: kernel evaluation"
    key: evaluate
    command: "benchkite run"
    agents:
      queue: "${KERNELBOT_QUEUE}"
    artifact_paths: "result.json"
    timeout_in_minutes: 15
"#;
    d.with(|x| {
        x.pipelines.insert(
            "kernelbot".into(),
            json!({"slug": "kernelbot", "name": "kernelbot", "web_url": "https://buildkite.com/acme/kernelbot",
                   "cluster_id": C1, "configuration": legacy, "cancel_running_branch_builds": true}),
        );
    });
    let m = manager(&client, PipelineConfig::default(), Some(C1));
    let check = m.check_user_pipeline("kernelbot", "nvidia-h100").await.expect("checked");
    assert_eq!(check.web_url.as_deref(), Some("https://buildkite.com/acme/kernelbot"));
    let reasons: Vec<&str> = check.problems.iter().map(|p| p.reason).collect();
    assert_eq!(
        reasons,
        [problem::CANCEL_INTERMEDIATE_BUILDS, problem::QUEUE_INTERPOLATED, problem::CHECKOUT_NOT_SKIPPED]
    );
    assert!(check.problems[0].message.contains("Cancel intermediate builds"));
    assert!(check.problems[1].message.contains("${KERNELBOT_QUEUE}"));

    d.clear();
    m.check_user_pipeline("kernelbot", "nvidia-h100").await.expect("remembered");
    assert!(d.seen().is_empty(), "{:?}", d.seen());

    let gone = m.check_user_pipeline("deleted", "nvidia-h100").await.expect("a missing pipeline is a problem");
    assert_eq!(gone.problems.iter().map(|p| p.reason).collect::<Vec<_>>(), [problem::NOT_FOUND]);
    assert_eq!(gone.web_url, None);

    // A pool that names another cluster sees the pipeline in the wrong one.
    m.set_queue_settings("other", QueueSettings { cluster: Some(C2.into()), step_timeout_minutes: None });
    let wrong = m.check_user_pipeline("kernelbot", "other").await.expect("checked");
    assert!(wrong.problems.iter().any(|p| p.reason == problem::WRONG_CLUSTER), "{:?}", wrong.problems);
}

// ----- token scopes ----------------------------------------------------------------------------

#[tokio::test]
async fn missing_scopes_are_named_and_an_unreadable_token_blocks_nothing() {
    let (d, client) = double().await;
    let report = ScopeReport::new();
    d.with(|x| x.scopes = Some(vec!["read_builds", "read_artifacts", "read_pipelines", "write_pipelines"]));
    let missing = check_scopes_once(&client, &report, &[Feature::KernelJobs]).await;
    assert_eq!(missing, ["write_builds"]);
    assert_eq!(
        report.missing_for(&[Feature::KernelJobs, Feature::QueueCreation]),
        ["write_builds", "read_clusters", "write_clusters"]
    );

    // The manager reads the same report: without write_pipelines it sends nothing.
    d.with(|x| x.scopes = Some(vec!["read_builds", "write_builds", "read_artifacts", "read_pipelines"]));
    check_scopes_once(&client, &report, &[Feature::KernelJobs]).await;
    let m = PipelineManager::new(
        client.clone(),
        PipelineConfig::default(),
        ClusterResolver::new(Some(C1.into())),
        report.clone(),
    );
    d.clear();
    let e = m.ensure("gpu").await.expect_err("no write_pipelines");
    assert_eq!((e.reason, e.missing_scopes.clone()), (reason::MISSING_TOKEN_SCOPE, vec!["write_pipelines"]));
    assert!(d.seen().is_empty());

    // The access-token call fails: unknown, nothing is held against the token.
    d.with(|x| x.scopes = None);
    assert!(check_scopes_once(&client, &report, &[Feature::KernelJobs]).await.is_empty());
    assert!(matches!(report.state(), ScopeState::Unknown { .. }));
    assert!(m.ensure("gpu").await.is_ok(), "an unknown report blocks nothing");
}
