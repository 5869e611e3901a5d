//! The Buildkite client against small scripted doubles on 127.0.0.1: authentication,
//! redirects to the storage host, pagination, the request budget, 429 handling, priorities,
//! retries and the ambiguous create.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use benchkite::buildkite::{
    Artifact, BuildQuery, BuildState, CancelOutcome, Client, Config, Error, NewBuild, Observer, Priority, QueueCreated,
    Secret, TransportKind,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CANARY: &str = "bkua_CANARY_9f8e7d6c5b4a";
const AGENT_CANARY: &str = "bkat_AGENT_CANARY_123456";

// ----- doubles -------------------------------------------------------------------------------

/// One request as the double saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, method: &str, path_contains: &str) -> usize {
        self.all().iter().filter(|s| s.method == method && s.path.contains(path_contains)).count()
    }
}

async fn record(State(log): State<Log>, req: Request, next: Next) -> Response {
    let seen = Seen {
        at: Instant::now(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        auth: req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    log.0.lock().unwrap().push(seen);
    next.run(req).await
}

/// A fixed-window limiter like Buildkite's: a window starts with the first request after the
/// previous one ended; every answer carries the `RateLimit-*` headers.
#[derive(Clone)]
struct Limiter(Arc<Mutex<LimState>>);

struct LimState {
    limit: u64,
    window: Duration,
    start: Option<Instant>,
    count: u64,
    per_window: Vec<u64>,
    rejected: u64,
}

impl Limiter {
    fn new(limit: u64, window: Duration) -> Self {
        Limiter(Arc::new(Mutex::new(LimState {
            limit,
            window,
            start: None,
            count: 0,
            per_window: Vec::new(),
            rejected: 0,
        })))
    }
    fn per_window(&self) -> Vec<u64> {
        self.0.lock().unwrap().per_window.clone()
    }
    fn rejected(&self) -> u64 {
        self.0.lock().unwrap().rejected
    }
}

async fn limit(State(l): State<Limiter>, req: Request, next: Next) -> Response {
    let (exceeded, lim, remaining, reset) = {
        let mut s = l.0.lock().unwrap();
        let now = Instant::now();
        if s.start.is_none_or(|t| now.duration_since(t) >= s.window) {
            s.start = Some(now);
            s.count = 0;
            s.per_window.push(0);
        }
        s.count += 1;
        if let Some(last) = s.per_window.last_mut() {
            *last += 1;
        }
        let left = s.window.saturating_sub(now.duration_since(s.start.unwrap()));
        let reset = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let exceeded = s.count > s.limit;
        if exceeded {
            s.rejected += 1;
        }
        (exceeded, s.limit, s.limit.saturating_sub(s.count), reset)
    };
    let mut resp = if exceeded {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(
                json!({"message": "slow down", "scope": "rest", "limit": lim, "current": lim + 1, "reset": reset}),
            ),
        )
            .into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert("RateLimit-Scope", "rest".parse().unwrap());
    h.insert("RateLimit-Limit", lim.into());
    h.insert("RateLimit-Remaining", remaining.into());
    h.insert("RateLimit-Reset", reset.into());
    resp
}

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

fn config(base: &str) -> Config {
    let mut c = Config::new("acme", Secret::new(CANARY));
    c.api_url = format!("{base}/v2");
    c.agent_api_url = format!("{base}/v3");
    c.default_pipeline = Some("kern".into());
    c.retry_base_delay = Duration::from_millis(20);
    c.retry_max_delay = Duration::from_millis(200);
    c.request_timeout = Duration::from_secs(10);
    c.reset_margin = Duration::from_millis(100);
    c
}

fn build_json(base: &str, n: u64, state: &str) -> Value {
    json!({
        "id": format!("00000000-0000-0000-0000-{n:012}"),
        "number": n,
        "url": format!("{base}/v2/organizations/acme/pipelines/kern/builds/{n}"),
        "web_url": format!("https://buildkite.com/acme/kern/builds/{n}"),
        "state": state,
        "env": {"KERNELBOT_RUN_ID": format!("run-{n}")},
        "meta_data": {"benchkite.job": "ns/kj"},
        "jobs": [{"id": "j1", "type": "script", "state": state, "exit_status": 0}],
        "created_at": "2025-01-01T00:00:00.000Z",
        "scheduled_at": "2025-01-01T00:00:00.000Z",
        "started_at": null,
        "finished_at": null,
        "pipeline": {"id": "p", "slug": "kern", "name": "Kern"}
    })
}

fn bearer_ok(h: &HeaderMap) -> bool {
    h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {CANARY}"))
}

// ----- builds ----------------------------------------------------------------------------------

#[tokio::test]
async fn builds_use_the_documented_paths_and_bearer_token() {
    let log = Log::default();
    let base_cell: Arc<Mutex<String>> = Arc::default();
    let b1 = Arc::clone(&base_cell);
    let b2 = Arc::clone(&base_cell);
    let b3 = Arc::clone(&base_cell);
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds",
            post(move |headers: HeaderMap, body: axum::Json<Value>| async move {
                if !bearer_ok(&headers) {
                    return (StatusCode::UNAUTHORIZED, axum::Json(json!({"message": "auth"}))).into_response();
                }
                assert_eq!(body["commit"], "HEAD");
                assert_eq!(body["branch"], "main");
                assert_eq!(body["meta_data"]["benchkite.job"], "ns/kj");
                assert_eq!(body["env"]["KERNELBOT_QUEUE"], "h100");
                let base = b1.lock().unwrap().clone();
                (StatusCode::CREATED, axum::Json(build_json(&base, 7, "scheduled"))).into_response()
            }),
        )
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds/{n}",
            get(move |Path((_, _, n)): Path<(String, String, u64)>, Query(q): Query<BTreeMap<String, String>>| async move {
                let base = b2.lock().unwrap().clone();
                if n == 404 {
                    return (StatusCode::NOT_FOUND, axum::Json(json!({"message": "No build found"}))).into_response();
                }
                let mut b = build_json(&base, n, "passed");
                if q.get("exclude_jobs").map(String::as_str) == Some("true") {
                    b.as_object_mut().unwrap().remove("jobs");
                }
                axum::Json(b).into_response()
            }),
        )
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds/{n}/cancel",
            put(move |Path((_, _, n)): Path<(String, String, u64)>| async move {
                let base = b3.lock().unwrap().clone();
                match n {
                    1 => axum::Json(build_json(&base, 1, "canceling")).into_response(),
                    2 => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        axum::Json(json!({"message": "Build can't be canceled because it's passed"})),
                    )
                        .into_response(),
                    _ => (StatusCode::NOT_FOUND, axum::Json(json!({"message": "No build found"}))).into_response(),
                }
            }),
        )
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    *base_cell.lock().unwrap() = base.clone();
    let client = Client::new(config(&base)).unwrap();

    let nb = NewBuild {
        commit: "HEAD".into(),
        branch: "main".into(),
        message: Some("kernel eval".into()),
        env: [("KERNELBOT_QUEUE".to_string(), "h100".to_string())].into(),
        meta_data: [("benchkite.job".to_string(), "ns/kj".to_string())].into(),
        ..Default::default()
    };
    let b = client.create_build(None, &nb, Priority::Submit).await.unwrap();
    assert_eq!((b.number, b.state.clone()), (7, BuildState::Scheduled));
    assert_eq!(b.pipeline_slug(), Some("kern"));

    let b = client.get_build(Some("other"), 9, true).await.unwrap();
    assert!(b.jobs.is_empty());
    assert!(b.state.is_terminal());
    let b = client.get_build(None, 9, false).await.unwrap();
    assert_eq!(b.jobs.len(), 1);
    let e = client.get_build(None, 404, false).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { endpoint: "get_build", .. }), "{e}");

    assert!(
        matches!(client.cancel_build(None, 1, Priority::Cancel).await.unwrap(), CancelOutcome::Canceled(b) if b.state == BuildState::Canceling)
    );
    assert!(
        matches!(client.cancel_build(None, 2, Priority::Cancel).await.unwrap(), CancelOutcome::NotCancelable { message } if message.contains("passed"))
    );
    assert_eq!(client.cancel_build(None, 3, Priority::Cancel).await.unwrap(), CancelOutcome::NotFound);

    let seen = log.all();
    assert!(seen.iter().all(|s| s.auth.as_deref() == Some(&*format!("Bearer {CANARY}"))), "{seen:?}");
    let paths: Vec<String> = seen.iter().map(|s| format!("{} {}?{}", s.method, s.path, s.query)).collect();
    assert_eq!(
        paths,
        vec![
            "POST /v2/organizations/acme/pipelines/kern/builds?",
            "GET /v2/organizations/acme/pipelines/other/builds/9?exclude_jobs=true",
            "GET /v2/organizations/acme/pipelines/kern/builds/9?",
            "GET /v2/organizations/acme/pipelines/kern/builds/404?",
            "PUT /v2/organizations/acme/pipelines/kern/builds/1/cancel?",
            "PUT /v2/organizations/acme/pipelines/kern/builds/2/cancel?",
            "PUT /v2/organizations/acme/pipelines/kern/builds/3/cancel?",
        ]
    );
    let stats = client.stats();
    assert_eq!(stats.responses.get(&("cancel_build", Some(422))), Some(&1));
    assert_eq!(stats.rest_requests(), 7);
}

#[tokio::test]
async fn list_builds_follows_link_next_with_filters() {
    let log = Log::default();
    let base_cell: Arc<Mutex<String>> = Arc::default();
    let bc = Arc::clone(&base_cell);
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/builds",
            get(move |Query(pairs): Query<Vec<(String, String)>>| async move {
                let base = bc.lock().unwrap().clone();
                let get = |k: &str| pairs.iter().rev().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
                let states: Vec<&str> = pairs.iter().filter(|(k, _)| k == "state[]").map(|(_, v)| v.as_str()).collect();
                assert_eq!(states, ["running", "scheduled"]);
                assert_eq!(get("meta_data[benchkite.job]").as_deref(), Some("ns/kj"));
                assert_eq!(get("finished_from").as_deref(), Some("2025-01-02T03:04:05Z"));
                assert_eq!(get("exclude_jobs").as_deref(), Some("true"));
                let per_page: u64 = get("per_page").unwrap().parse().unwrap();
                assert_eq!(per_page, 100);
                let page: u64 = get("page").map_or(1, |p| p.parse().unwrap());
                let total = 250u64;
                let last = total.div_ceil(per_page);
                let items: Vec<Value> = (0..total)
                    .skip(((page - 1) * per_page) as usize)
                    .take(per_page as usize)
                    .map(|n| build_json(&base, n + 1, "running"))
                    .collect();
                let mut links = Vec::new();
                let keep: String = pairs
                    .iter()
                    .filter(|(k, _)| k != "page")
                    .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                if page < last {
                    links.push(format!("<{base}/v2/organizations/acme/builds?{keep}&page={}>; rel=\"next\"", page + 1));
                    links.push(format!("<{base}/v2/organizations/acme/builds?{keep}&page={last}>; rel=\"last\""));
                }
                if page > 1 {
                    links.push(format!("<{base}/v2/organizations/acme/builds?{keep}&page=1>; rel=\"first\""));
                }
                ([(header::LINK, links.join(", "))], axum::Json(Value::Array(items))).into_response()
            }),
        )
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds",
            get(|| async {
                // A next page on another host: the token must not follow it.
                ([(header::LINK, "<http://203.0.113.9/v2/x?page=2>; rel=\"next\"")], axum::Json(json!([])))
            }),
        )
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    *base_cell.lock().unwrap() = base.clone();
    let client = Client::new(config(&base)).unwrap();

    let query = BuildQuery {
        states: vec!["running".into(), "scheduled".into()],
        meta_data: vec![("benchkite.job".into(), "ns/kj".into())],
        finished_from: Some("2025-01-02T03:04:05Z".parse().unwrap()),
        exclude_jobs: true,
        ..Default::default()
    };
    let l = client.list_builds(&query, Priority::Refresh).await.unwrap();
    assert_eq!(l.items.len(), 250);
    assert_eq!((l.pages, l.truncated), (3, false));
    assert_eq!(l.items.last().unwrap().number, 250);
    assert_eq!(log.count("GET", "/organizations/acme/builds"), 3);

    let l = client.list_builds(&BuildQuery { max_pages: Some(2), ..query.clone() }, Priority::Refresh).await.unwrap();
    assert_eq!((l.items.len(), l.pages, l.truncated), (200, 2, true));

    let e = client
        .list_builds(&BuildQuery { pipeline: Some("kern".into()), ..Default::default() }, Priority::Refresh)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnsafeUrl { .. }), "{e}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ----- artifacts ---------------------------------------------------------------------------------

#[tokio::test]
async fn artifact_download_never_sends_the_token_to_storage() {
    // The storage host: a separate server that refuses any Authorization header (like S3).
    let storage_log = Log::default();
    let storage = Router::new()
        .route(
            "/bucket/{name}",
            get(|Path(name): Path<String>, headers: HeaderMap| async move {
                if headers.contains_key(header::AUTHORIZATION) {
                    return (StatusCode::BAD_REQUEST, "Only one auth mechanism allowed").into_response();
                }
                match name.as_str() {
                    "result.json" => (StatusCode::OK, r#"{"success":true}"#).into_response(),
                    // Streamed without a length: the limit is enforced while reading.
                    "big.bin" => {
                        let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1024])));
                        Response::new(Body::from_stream(futures::stream::iter(chunks)))
                    }
                    _ => (StatusCode::OK, "other content").into_response(),
                }
            }),
        )
        .layer(from_fn_with_state(storage_log.clone(), record));
    let storage_base = serve(storage).await;

    let log = Log::default();
    let sb = storage_base.clone();
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds/{n}/jobs/{j}/artifacts/{id}/download",
            get(move |Path((_, _, _, _, id)): Path<(String, String, String, String, String)>, headers: HeaderMap| {
                let sb = sb.clone();
                async move {
                    if !bearer_ok(&headers) {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    let url = format!("{sb}/bucket/{id}?X-Amz-Signature=deadbeef");
                    if id == "body-only.json" {
                        // No Location header: the URL only in the body.
                        return (StatusCode::OK, axum::Json(json!({"url": url}))).into_response();
                    }
                    (StatusCode::FOUND, [(header::LOCATION, url.clone())], axum::Json(json!({"url": url})))
                        .into_response()
                }
            }),
        )
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    let client = Client::new(config(&base)).unwrap();

    let artifact = |id: &str, size: Option<u64>, sha1: Option<&str>| Artifact {
        id: id.into(),
        job_id: "j1".into(),
        path: format!("out/{id}"),
        filename: id.into(),
        state: "finished".into(),
        file_size: size,
        sha1sum: sha1.map(str::to_string),
        download_url: Some(format!(
            "{base}/v2/organizations/acme/pipelines/kern/builds/7/jobs/j1/artifacts/{id}/download"
        )),
        ..Default::default()
    };
    let content = br#"{"success":true}"#;
    let sha1 = sha1_hex(content);
    let got = client.download_artifact(&artifact("result.json", Some(16), Some(&sha1)), 1024).await.unwrap();
    assert_eq!(got, content);
    let got = client.download_artifact(&artifact("body-only.json", None, None), 1024).await.unwrap();
    assert_eq!(got, b"other content");

    // Too large: announced size (no request at all), and streamed without a length.
    let before = log.all().len();
    let e = client.download_artifact(&artifact("result.json", Some(10_000), None), 1024).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert_eq!(log.all().len(), before);
    let e = client.download_artifact(&artifact("big.bin", None, None), 10_000).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { limit: 10_000, .. }), "{e}");

    // Wrong checksum.
    let e = client.download_artifact(&artifact("result.json", None, Some(&"0".repeat(40))), 1024).await.unwrap_err();
    assert!(matches!(e, Error::Checksum { .. }), "{e}");

    // A download_url on another host is refused before anything is sent.
    let mut foreign = artifact("result.json", None, None);
    foreign.download_url = Some(format!("{storage_base}/v2/steal"));
    assert!(matches!(client.download_artifact(&foreign, 1024).await.unwrap_err(), Error::UnsafeUrl { .. }));

    let api = log.all();
    assert!(api.iter().all(|s| s.auth.as_deref() == Some(&*format!("Bearer {CANARY}"))));
    let storage = storage_log.all();
    assert_eq!(storage.len(), 4, "{storage:?}");
    assert!(storage.iter().all(|s| s.auth.is_none()), "the token reached the storage host: {storage:?}");
    // The storage fetches are counted apart from the REST requests.
    let stats = client.stats();
    assert_eq!(stats.responses.get(&("artifact_storage", Some(200))), Some(&4));
    assert_eq!(stats.rest_requests(), 4);
}

fn sha1_hex(b: &[u8]) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import hashlib,sys; print(hashlib.sha1(sys.stdin.buffer.read()).hexdigest())"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ----- budget, 429, priorities --------------------------------------------------------------------

#[tokio::test]
async fn after_429_nothing_is_sent_before_the_reset() {
    let log = Log::default();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/agents",
            get(move || {
                let n = h.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("RateLimit-Limit", "200"), ("RateLimit-Remaining", "0"), ("RateLimit-Reset", "1")],
                            axum::Json(json!({"message": "slow down", "scope": "rest", "limit": 200, "current": 201, "reset": 1})),
                        )
                            .into_response()
                    } else {
                        (
                            [("RateLimit-Limit", "200"), ("RateLimit-Remaining", "150"), ("RateLimit-Reset", "59")],
                            axum::Json(json!([{"id": "a", "name": "gpu-0", "connection_state": "connected", "meta_data": ["queue=h100"]}])),
                        )
                            .into_response()
                    }
                }
            }),
        )
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    let throttled = Arc::new(AtomicUsize::new(0));
    struct Obs(Arc<AtomicUsize>);
    impl Observer for Obs {
        fn on_response(&self, _: &'static str, _: Option<u16>, _: Duration) {}
        fn on_throttled(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let client = Client::with_observer(config(&base), Arc::new(Obs(Arc::clone(&throttled)))).unwrap();

    let c2 = client.clone();
    let first = tokio::spawn(async move { c2.list_agents().await });
    // Wait for the 429 to arrive, then pile up more callers: none may go out before the reset.
    while throttled.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let snap = client.budget_snapshot();
    assert!(snap.throttled_for.is_some_and(|d| d > Duration::from_millis(500)), "{snap:?}");
    assert!(client.would_wait(Priority::Cancel).is_some());
    let mut more = Vec::new();
    for _ in 0..5 {
        let c = client.clone();
        more.push(tokio::spawn(async move { c.list_agents().await }));
    }
    let agents = first.await.unwrap().unwrap();
    assert_eq!(agents.items[0].queue().as_deref(), Some("h100"));
    for m in more {
        m.await.unwrap().unwrap();
    }
    let seen = log.all();
    assert_eq!(seen.len(), 7);
    let t429 = seen[0].at;
    for s in &seen[1..] {
        let after = s.at.duration_since(t429);
        assert!(after >= Duration::from_secs(1), "request {after:?} after the 429 (reset 1 s)");
    }
    assert_eq!(throttled.load(Ordering::SeqCst), 1);
    assert_eq!(client.stats().throttled, 1);
}

#[tokio::test]
async fn second_429_in_a_row_is_an_error() {
    let router = Router::new().route(
        "/v2/organizations/{org}/clusters",
        get(|| async {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("RateLimit-Reset", "1")],
                axum::Json(json!({"message": "slow down", "scope": "rest", "reset": 1})),
            )
        }),
    );
    let base = serve(router).await;
    let client = Client::new(config(&base)).unwrap();
    let t0 = Instant::now();
    let e = client.list_clusters().await.unwrap_err();
    assert!(matches!(e, Error::RateLimited { endpoint: "list_clusters", .. }), "{e}");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(client.stats().throttled, 2);
}

#[tokio::test]
async fn fifty_callers_never_exceed_the_window() {
    const LIMIT: u64 = 10;
    let limiter = Limiter::new(LIMIT, Duration::from_secs(1));
    let log = Log::default();
    let base_cell: Arc<Mutex<String>> = Arc::default();
    let bc = Arc::clone(&base_cell);
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds/{n}",
            get(move |Path((_, _, n)): Path<(String, String, u64)>| {
                let base = bc.lock().unwrap().clone();
                async move {
                    // Varying latency: answers come back out of order.
                    tokio::time::sleep(Duration::from_millis(n % 7 * 15)).await;
                    axum::Json(build_json(&base, n, "running"))
                }
            }),
        )
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds",
            post(move || async {
                (StatusCode::CREATED, axum::Json(json!({"id": "x", "number": 1, "state": "scheduled"})))
            }),
        )
        .layer(from_fn_with_state(limiter.clone(), limit))
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    *base_cell.lock().unwrap() = base.clone();
    let mut cfg = config(&base);
    cfg.requests_per_minute = LIMIT as u32;
    cfg.rate_limit_window = Duration::from_secs(1);
    let client = Client::new(cfg).unwrap();

    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 5 == 0 {
                let nb = NewBuild { commit: "HEAD".into(), branch: "main".into(), ..Default::default() };
                c.create_build(None, &nb, Priority::Submit).await.map(|_| ())
            } else {
                c.get_build(None, i, true).await.map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let windows = limiter.per_window();
    assert_eq!(limiter.rejected(), 0, "429s: windows {windows:?}");
    assert_eq!(windows.iter().sum::<u64>(), 50);
    assert!(windows.iter().all(|n| *n <= LIMIT), "{windows:?}");
    assert!(windows.len() >= 5, "{windows:?}");
    assert!(client.stats().budget_waits > 0);
}

#[tokio::test]
async fn reservations_count_against_the_window_and_unused_ones_go_back() {
    const LIMIT: u64 = 4;
    let limiter = Limiter::new(LIMIT, Duration::from_secs(2));
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds",
            post(|| async { (StatusCode::CREATED, axum::Json(json!({"id": "x", "number": 1, "state": "scheduled"}))) }),
        )
        .layer(from_fn_with_state(limiter.clone(), limit));
    let base = serve(router).await;
    let mut cfg = config(&base);
    cfg.requests_per_minute = LIMIT as u32;
    cfg.rate_limit_window = Duration::from_secs(2);
    let client = Client::new(cfg).unwrap();
    let nb = NewBuild { commit: "HEAD".into(), branch: "main".into(), ..Default::default() };
    // The first answer calibrates the budget.
    client.create_build(None, &nb, Priority::Submit).await.unwrap();
    // The rest of the window, reserved: nothing else may be sent now.
    let held: Vec<_> = futures::future::join_all((1..LIMIT).map(|_| client.reserve(Priority::Submit))).await;
    assert!(client.would_wait(Priority::Submit).is_some(), "reservations must hold the window");
    // One handed back unused: exactly one request may go again, at once.
    let mut held = held.into_iter();
    drop(held.next());
    assert!(client.would_wait(Priority::Submit).is_none(), "an unused reservation must go back");
    let again = tokio::time::timeout(Duration::from_millis(500), client.reserve(Priority::Submit)).await;
    let again = again.expect("the handed-back reservation is available without waiting");
    // Sending on reservations waits for nothing more and sends each once.
    for r in held.chain(std::iter::once(again)) {
        let t0 = std::time::Instant::now();
        client.create_build_reserved(None, &nb, r).await.unwrap();
        assert!(t0.elapsed() < Duration::from_millis(500), "a reserved create waited for the budget");
    }
    assert_eq!(limiter.rejected(), 0);
    assert_eq!(limiter.per_window().iter().sum::<u64>(), LIMIT, "one request per reservation used");
    assert!(limiter.per_window().iter().all(|n| *n <= LIMIT));
}

#[tokio::test]
async fn the_servers_lower_limit_wins() {
    let limiter = Limiter::new(6, Duration::from_secs(1));
    let router = Router::new()
        .route("/v2/organizations/{org}/pipelines/{p}/builds/{n}", get(|| async { axum::Json(json!({"number": 1})) }))
        .layer(from_fn_with_state(limiter.clone(), limit));
    let base = serve(router).await;
    let mut cfg = config(&base);
    cfg.rate_limit_window = Duration::from_secs(1);
    assert_eq!(cfg.requests_per_minute, 180);
    let client = Client::new(cfg).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.get_build(None, 1, true).await.map(|_| ()) }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let windows = limiter.per_window();
    assert_eq!(limiter.rejected(), 0, "{windows:?}");
    assert!(windows.iter().all(|n| *n <= 6), "{windows:?}");
    assert_eq!(client.budget_snapshot().limit, 6);
}

#[tokio::test]
async fn creates_and_cancels_go_before_refreshes() {
    let limiter = Limiter::new(3, Duration::from_secs(1));
    let log = Log::default();
    let router = Router::new()
        .route("/v2/organizations/{org}/pipelines/{p}/builds/{n}", get(|| async { axum::Json(json!({"number": 1})) }))
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds",
            post(|| async { (StatusCode::CREATED, axum::Json(json!({"number": 2}))) }),
        )
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds/{n}/cancel",
            put(|| async { axum::Json(json!({"number": 3})) }),
        )
        .layer(from_fn_with_state(limiter.clone(), limit))
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    let mut cfg = config(&base);
    cfg.requests_per_minute = 3;
    cfg.rate_limit_window = Duration::from_secs(1);
    cfg.priority_reserve = 0.0;
    let client = Client::new(cfg).unwrap();

    for _ in 0..3 {
        client.get_build(None, 1, true).await.unwrap();
    }
    assert_eq!(client.budget_snapshot().remaining, 0);
    assert!(client.would_wait(Priority::Submit).is_some());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.get_build(None, 1, true).await.map(|_| ()) }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    for i in 0..3 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            if i == 2 {
                c.cancel_build(None, 5, Priority::Cancel).await.map(|_| ())
            } else {
                let nb = NewBuild { commit: "HEAD".into(), branch: "main".into(), ..Default::default() };
                c.create_build(None, &nb, Priority::Submit).await.map(|_| ())
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let snap = client.budget_snapshot();
    assert_eq!((snap.waiting_urgent, snap.waiting_refresh), (3, 3), "{snap:?}");
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let methods: Vec<String> = log.all().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods[..3], ["GET", "GET", "GET"]);
    let mut urgent = methods[3..6].to_vec();
    urgent.sort();
    assert_eq!(urgent, ["POST", "POST", "PUT"], "{methods:?}");
    assert_eq!(methods[6..], ["GET", "GET", "GET"]);
    assert_eq!(limiter.rejected(), 0);
    assert_eq!(limiter.per_window(), [3, 3, 3]);
}

// ----- retries and ambiguity ---------------------------------------------------------------------

/// What the raw double does with one connection.
#[derive(Clone, Copy, Debug)]
enum Raw {
    /// Read the request, then close the connection without answering.
    Drop,
    /// Answer with this status and a small JSON body.
    Status(u16),
}

/// A bare HTTP/1.1 server that follows `script` connection by connection (the last entry
/// repeats). Returns its base URL and the number of requests it read.
async fn raw_double(script: Vec<Raw>, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let n = c.fetch_add(1, Ordering::SeqCst);
            let action = script[n.min(script.len() - 1)];
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by Content-Length.
                loop {
                    let Ok(k) = sock.read(&mut chunk).await else { return };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                match action {
                    Raw::Drop => drop(sock),
                    Raw::Status(code) => {
                        let body =
                            if code < 300 { body.to_string() } else { format!(r#"{{"message":"status {code}"}}"#) };
                        let resp = format!(
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    }
                }
            });
        }
    });
    (base, count)
}

#[tokio::test]
async fn gets_are_retried_on_503_and_dropped_connections() {
    let body = r#"{"id":"b","number":5,"state":"running"}"#;
    let (base, count) = raw_double(vec![Raw::Status(503), Raw::Drop, Raw::Status(502), Raw::Status(200)], body).await;
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(&'static str, Option<u16>)>>, AtomicUsize);
    impl Observer for Recorder {
        fn on_response(&self, endpoint: &'static str, status: Option<u16>, _elapsed: Duration) {
            self.0.lock().unwrap().push((endpoint, status));
        }
        fn on_retry(&self, _endpoint: &'static str) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
    let recorder = Arc::new(Recorder::default());
    let client = Client::with_observer(config(&base), recorder.clone()).unwrap();
    let b = client.get_build(None, 5, true).await.unwrap();
    assert_eq!(b.state, BuildState::Running);
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [("get_build", Some(503)), ("get_build", None), ("get_build", Some(502)), ("get_build", Some(200))]
    );
    assert_eq!(recorder.1.load(Ordering::SeqCst), 3);
    let stats = client.stats();
    assert_eq!(stats.retries, 3);
    assert_eq!(stats.responses.get(&("get_build", None)), Some(&1));
    assert_eq!(stats.responses.get(&("get_build", Some(503))), Some(&1));

    // Bounded: always 503 → gives up after max_retries.
    let (base, count) = raw_double(vec![Raw::Status(503)], body).await;
    let mut cfg = config(&base);
    cfg.max_retries = 2;
    let client = Client::new(cfg).unwrap();
    let e = client.get_build(None, 5, true).await.unwrap_err();
    assert!(matches!(e, Error::Api { status: 503, .. }), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // No retry on other 4xx.
    let (base, count) = raw_double(vec![Raw::Status(403)], body).await;
    let client = Client::new(config(&base)).unwrap();
    let e = client.get_build(None, 5, true).await.unwrap_err();
    assert!(matches!(e, Error::Api { status: 403, .. }), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn creates_are_never_retried_after_sending() {
    let nb = NewBuild { commit: "HEAD".into(), branch: "main".into(), ..Default::default() };
    let body = r#"{"id":"b","number":5,"state":"scheduled"}"#;
    // Dropped connection after the request was read.
    let (base, count) = raw_double(vec![Raw::Drop, Raw::Status(201)], body).await;
    let client = Client::new(config(&base)).unwrap();
    let e = client.create_build(None, &nb, Priority::Submit).await.unwrap_err();
    assert!(matches!(e, Error::Ambiguous { endpoint: "create_build", .. }), "{e}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // 5xx: the server may have created it.
    let (base, count) = raw_double(vec![Raw::Status(500), Raw::Status(201)], body).await;
    let client = Client::new(config(&base)).unwrap();
    assert!(matches!(client.create_build(None, &nb, Priority::Submit).await, Err(Error::Ambiguous { .. })));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(client.stats().ambiguous, 1);
    // A 4xx is a plain error.
    let (base, _) = raw_double(vec![Raw::Status(422)], body).await;
    let client = Client::new(config(&base)).unwrap();
    assert!(matches!(client.create_build(None, &nb, Priority::Submit).await, Err(Error::Api { status: 422, .. })));
    // Nothing listening: the request was certainly not sent, so it is retried, then fails
    // as a connection error, not as ambiguous.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("http://127.0.0.1:{port}"));
    cfg.max_retries = 1;
    let client = Client::new(cfg).unwrap();
    let e = client.create_build(None, &nb, Priority::Submit).await.unwrap_err();
    assert!(matches!(e, Error::Transport { kind: TransportKind::Connect, attempts: 2, .. }), "{e}");
}

#[tokio::test]
async fn create_timeout_is_ambiguous_and_not_repeated() {
    let log = Log::default();
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                (StatusCode::CREATED, axum::Json(json!({"number": 1})))
            })
            .get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                axum::Json(json!([]))
            }),
        )
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    let mut cfg = config(&base);
    cfg.request_timeout = Duration::from_millis(300);
    cfg.max_retries = 1;
    let client = Client::new(cfg).unwrap();
    let nb = NewBuild { commit: "HEAD".into(), branch: "main".into(), ..Default::default() };
    let e = client.create_build(None, &nb, Priority::Submit).await.unwrap_err();
    assert!(matches!(&e, Error::Ambiguous { reason, .. } if reason.contains("timed out")), "{e}");
    // A timed-out read is retried.
    let e = client
        .list_builds(&BuildQuery { pipeline: Some("kern".into()), ..Default::default() }, Priority::Refresh)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Transport { kind: TransportKind::Timeout, attempts: 2, .. }), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.count("POST", "/builds"), 1);
    assert_eq!(log.count("GET", "/builds"), 2);
}

// ----- queues, agents, metrics ----------------------------------------------------------------

#[tokio::test]
async fn queues_agents_and_metrics() {
    let log = Log::default();
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/clusters/{c}/queues",
            post(|body: axum::Json<Value>| async move {
                if body["key"] == "h100" {
                    return (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        axum::Json(json!({"message": "Validation failed: Key has already been taken"})),
                    )
                        .into_response();
                }
                if body["key"] == "bad key" {
                    return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"message": "Validation failed: Key is invalid"})))
                        .into_response();
                }
                (StatusCode::CREATED, axum::Json(json!({"id": "q2", "key": body["key"], "description": body["description"]})))
                    .into_response()
            })
            .get(|| async { axum::Json(json!([{"id": "q1", "key": "h100", "dispatch_paused": false}])) }),
        )
        .route(
            "/v2/organizations/{org}/clusters/{c}/queues/{q}/pause_dispatch",
            post(|body: axum::Json<Value>| async move {
                axum::Json(json!({"id": "q1", "key": "h100", "dispatch_paused": true, "dispatch_paused_note": body["note"]}))
            }),
        )
        .route(
            "/v2/organizations/{org}/clusters/{c}/queues/{q}/resume_dispatch",
            post(|| async { axum::Json(json!({"id": "q1", "key": "h100", "dispatch_paused": false})) }),
        )
        .route("/v2/organizations/{org}/clusters", get(|| async { axum::Json(json!([{"id": "c1", "name": "gpu"}])) }))
        .route(
            "/v3/metrics/queue",
            get(|Query(q): Query<BTreeMap<String, String>>| async move {
                assert_eq!(q.get("name").map(String::as_str), Some("h100"));
                (
                    [("Buildkite-Agent-Metrics-Poll-Duration", "15")],
                    axum::Json(json!({
                        "agents": {"idle": 2, "busy": 6, "total": 8},
                        "jobs": {"scheduled": 3, "running": 6, "waiting": 1, "total": 10},
                        "organization": {"slug": "acme"}
                    })),
                )
            }),
        )
        .route(
            "/v3/metrics",
            get(|| async {
                axum::Json(json!({
                    "agents": {"idle": 2, "busy": 6, "total": 8, "queues": {"h100": {"idle": 2, "busy": 6, "total": 8}}},
                    "jobs": {"scheduled": 3, "running": 6, "waiting": 1, "total": 10, "queues": {"h100": {"scheduled": 3, "running": 6, "waiting": 1, "total": 10}}},
                    "organization": {"slug": "acme"}
                }))
            }),
        )
        .layer(from_fn_with_state(log.clone(), record));
    let base = serve(router).await;
    let mut cfg = config(&base);
    cfg.agent_token = Some(Secret::new(AGENT_CANARY));
    let client = Client::new(cfg).unwrap();

    assert_eq!(client.create_queue("c1", "h100", None).await.unwrap(), QueueCreated::AlreadyExists);
    match client.create_queue("c1", "a100", Some("A100 GPUs")).await.unwrap() {
        QueueCreated::Created(q) => assert_eq!((q.key.as_str(), q.description.as_deref()), ("a100", Some("A100 GPUs"))),
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.create_queue("c1", "bad key", None).await, Err(Error::Api { status: 422, .. })));
    assert_eq!(client.list_queues("c1").await.unwrap().items[0].key, "h100");
    assert_eq!(client.list_clusters().await.unwrap().items[0].id, "c1");
    let q = client.pause_queue_dispatch("c1", "q1", Some("maintenance")).await.unwrap();
    assert!(q.dispatch_paused);
    assert_eq!(q.dispatch_paused_note.as_deref(), Some("maintenance"));
    assert!(!client.resume_queue_dispatch("c1", "q1").await.unwrap().dispatch_paused);

    let (m, hint) = client.queue_metrics("h100").await.unwrap();
    assert_eq!((m.scheduled, m.running, m.waiting, m.idle, m.busy, m.agents_total), (3, 6, 1, 2, 6, 8));
    assert_eq!(hint, Some(Duration::from_secs(15)));
    let (all, hint) = client.all_metrics().await.unwrap();
    assert_eq!(all.queues["h100"].busy, 6);
    assert_eq!(hint, None);

    let seen = log.all();
    for s in &seen {
        let expected =
            if s.path.starts_with("/v3/") { format!("Token {AGENT_CANARY}") } else { format!("Bearer {CANARY}") };
        assert_eq!(s.auth.as_deref(), Some(expected.as_str()), "{s:?}");
    }
    assert_eq!(log.count("POST", "/queues/q1/pause_dispatch"), 1);
    // Metrics do not spend the REST budget.
    let stats = client.stats();
    assert_eq!(stats.rest_requests(), 7);

    // Without an agent token.
    let client = Client::new(config(&base)).unwrap();
    assert!(matches!(client.queue_metrics("h100").await, Err(Error::NoAgentToken { .. })));
}

// ----- secrets ---------------------------------------------------------------------------------------

#[tokio::test]
async fn no_error_or_debug_output_contains_a_token() {
    // A double that echoes the credentials it receives in its error messages.
    let router = Router::new()
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds/{n}",
            get(|headers: HeaderMap, Path((_, _, n)): Path<(String, String, u64)>| async move {
                let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let status = match n {
                    1 => StatusCode::UNAUTHORIZED,
                    2 => StatusCode::NOT_FOUND,
                    _ => return (StatusCode::OK, format!("not json {auth}")).into_response(),
                };
                (status, axum::Json(json!({"message": format!("bad credentials: {auth}")}))).into_response()
            }),
        )
        .route(
            "/v2/organizations/{org}/agents",
            get(|| async {
                (StatusCode::TOO_MANY_REQUESTS, [("RateLimit-Reset", "1")], axum::Json(json!({"reset": 1})))
            }),
        )
        .route(
            "/v2/organizations/{org}/clusters",
            get(|| async { ([(header::LINK, "<http://192.0.2.1/v2/x?page=2>; rel=\"next\"")], axum::Json(json!([]))) }),
        )
        .route(
            "/v2/organizations/{org}/pipelines/{p}/builds/{n}/jobs/{j}/artifacts/{id}/download",
            get(|headers: HeaderMap| async move {
                let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                (StatusCode::FOUND, axum::Json(json!({"message": auth})))
            }),
        )
        .route(
            "/v3/metrics",
            get(|headers: HeaderMap| async move {
                let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                (StatusCode::FORBIDDEN, axum::Json(json!({"message": format!("token {auth} refused")})))
            }),
        );
    let base = serve(router).await;
    let mut cfg = config(&base);
    cfg.agent_token = Some(Secret::new(AGENT_CANARY));
    cfg.max_retries = 0;
    let client = Client::new(cfg.clone()).unwrap();
    let (dropping, _) = raw_double(vec![Raw::Drop], "").await;
    let mut dcfg = config(&dropping);
    dcfg.max_retries = 0;
    let dropper = Client::new(dcfg).unwrap();

    let nb = NewBuild { commit: "HEAD".into(), branch: "main".into(), ..Default::default() };
    let artifact = Artifact {
        path: "result.json".into(),
        download_url: Some(format!("{base}/v2/organizations/acme/pipelines/kern/builds/1/jobs/j/artifacts/a/download")),
        ..Default::default()
    };
    let big = Artifact { file_size: Some(10), ..artifact.clone() };
    let mut errors: Vec<Error> = vec![
        client.get_build(None, 1, true).await.unwrap_err(), // Api 401 echoing the token
        client.get_build(None, 2, true).await.unwrap_err(), // NotFound echoing it
        client.get_build(None, 3, true).await.unwrap_err(), // Decode
        client.list_agents().await.unwrap_err(),            // RateLimited
        client.list_clusters().await.unwrap_err(),          // UnsafeUrl
        client.download_artifact(&artifact, 100).await.unwrap_err(), // Download (no location)
        client.download_artifact(&big, 1).await.unwrap_err(), // TooLarge
        client.all_metrics().await.unwrap_err(),            // Api 403 echoing the agent token
        dropper.get_build(None, 1, true).await.unwrap_err(), // Transport
        dropper.create_build(None, &nb, Priority::Submit).await.unwrap_err(), // Ambiguous
        client.create_build(None, &NewBuild::default(), Priority::Submit).await.unwrap_err(), // InvalidRequest
        Client::new(Config { agent_token: None, ..cfg.clone() }).unwrap().queue_metrics("q").await.unwrap_err(), // NoAgentToken
        Client::new(Config { api_url: "ftp://x".into(), ..cfg.clone() }).unwrap_err(), // Config
        Client::new(Config { api_token: Secret::new(format!("{CANARY}\u{7}x")), ..cfg.clone() }).unwrap_err(), // Config (header)
        Secret::from_file("/nonexistent/benchkite-token").unwrap_err(),                                        // Secret
        Secret::from_env("BENCHKITE_TEST_SURELY_UNSET_VAR").unwrap_err(),                                      // Secret
        Error::Checksum { path: "p".into(), expected: "a".into(), actual: "b".into() },
    ];
    // A secret file holding the token but unusable (two lines): the error names the file only.
    let dir = std::env::temp_dir().join(format!("benchkite-bk-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("token");
    std::fs::write(&f, format!("{CANARY}\n{CANARY}\n")).unwrap();
    errors.push(Secret::from_file(&f).unwrap_err());
    std::fs::write(&f, format!("{CANARY}\n")).unwrap();
    assert_eq!(Secret::from_file(&f).unwrap().expose(), CANARY, "trailing newline trimmed");
    std::fs::remove_dir_all(&dir).unwrap();

    let kinds: std::collections::BTreeSet<&str> = errors.iter().map(Error::kind).collect();
    for k in [
        "config",
        "secret",
        "invalid_request",
        "not_found",
        "api",
        "rate_limited",
        "transport",
        "ambiguous",
        "decode",
        "too_large",
        "unsafe_url",
        "download",
        "checksum",
        "no_agent_token",
    ] {
        assert!(kinds.contains(k), "no {k} error produced: {kinds:?}");
    }
    let mut texts: Vec<String> = errors.iter().map(|e| format!("{e} | {e:?}")).collect();
    texts.push(format!("{cfg:?}"));
    texts.push(format!("{client:?}"));
    texts.push(format!("{} {:?}", cfg.api_token, cfg.agent_token));
    for t in &texts {
        assert!(!t.contains(CANARY) && !t.contains(AGENT_CANARY), "token leaked: {t}");
    }
    // The echoed credentials are visibly redacted, the rest of the message kept.
    assert!(texts[0].contains("bad credentials: Bearer [redacted]"), "{}", texts[0]);
    assert!(format!("{cfg:?}").contains("[redacted]"));
}
