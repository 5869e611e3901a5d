//! The controller's HTTP endpoints.
//!
//! Two listeners:
//! - `--http-addr`: `/healthz`, `/readyz` and `POST /webhooks/buildkite` (the one a Service
//!   exposes to Buildkite);
//! - `--metrics-addr`: `/metrics` (OpenMetrics text) and `/loglevel` (GET the log filter,
//!   PUT a new one), for the cluster's monitoring only.
//!
//! Both run for the whole life of the process, whether it leads or stands by: a standby
//! answers probes and scrapes, and refuses webhooks with 503 so Buildkite retries them
//! (the leader's Pod carries the label the webhook Service selects).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Future;
use tokio::net::TcpListener;

use crate::buildkite::Secret;
use crate::kerneljob::JobCtx;
use crate::kerneljob::webhook::{WebhookState, receive};
use crate::telemetry::FilterHandle;

/// What the endpoints report; shared with the controllers, which fill it in as they start.
pub struct HttpState {
    ready: AtomicBool,
    webhook_secret: Option<Secret>,
    webhook: RwLock<Option<Arc<WebhookState>>>,
}

impl HttpState {
    /// `webhook_secret`: with one, `/webhooks/buildkite` exists (and answers 503 until the
    /// KernelJob controller runs in this process); without, the route is off.
    pub fn new(webhook_secret: Option<Secret>) -> Arc<Self> {
        Arc::new(HttpState { ready: AtomicBool::new(false), webhook_secret, webhook: RwLock::new(None) })
    }

    /// `/readyz` answers 200 from now on (caches synced, or standing by for the lease).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The KernelJob controller runs: webhooks go to it.
    pub fn attach_jobs(&self, ctx: Arc<JobCtx>) {
        let Some(secret) = self.webhook_secret.clone() else {
            tracing::info!("no webhook secret: /webhooks/buildkite is off; following builds by polling");
            return;
        };
        let state = Arc::new(WebhookState {
            ctx,
            secret,
            max_skew: crate::buildkite::DEFAULT_MAX_SKEW,
            seen: Mutex::new(HashMap::new()),
        });
        if let Ok(mut slot) = self.webhook.write() {
            *slot = Some(state);
        }
    }

    /// The KernelJob controller stopped: webhooks are refused with 503 again.
    pub fn detach_jobs(&self) {
        if let Ok(mut slot) = self.webhook.write() {
            *slot = None;
        }
    }

    fn webhook_state(&self) -> Option<Arc<WebhookState>> {
        self.webhook.read().ok().and_then(|s| s.clone())
    }
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))
}

/// Serves probes and the webhook until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut app = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz));
    if state.webhook_secret.is_some() {
        app = app.route("/webhooks/buildkite", post(webhook));
    }
    let app = app.with_state(state);
    let addr = listener.local_addr().context("reading the listener's address")?;
    tracing::info!(%addr, "serving /healthz, /readyz and /webhooks/buildkite");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("HTTP server")?;
    Ok(())
}

async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting: caches not synced\n")
    }
}

async fn webhook(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    match state.webhook_state() {
        Some(ws) => receive(State(ws), headers, body).await.into_response(),
        None => {
            crate::metrics::global().webhook("standby");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "this replica does not lead; the delivery will be retried\n",
            )
                .into_response()
        }
    }
}

/// Serves `/metrics` and `/loglevel` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    log_filter: Option<FilterHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/loglevel", get(get_log_level).put(put_log_level))
        .with_state(log_filter.map(Arc::new));
    let addr = listener.local_addr().context("reading the listener's address")?;
    tracing::info!(%addr, "serving /metrics and /loglevel");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("metrics server")?;
    Ok(())
}

async fn metrics() -> Response {
    match crate::metrics::global().encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response(),
    }
}

type LogState = Option<Arc<FilterHandle>>;

async fn get_log_level(State(handle): State<LogState>) -> Response {
    match handle.as_deref().map(crate::telemetry::current_filter) {
        Some(Ok(filter)) => format!("{filter}\n").into_response(),
        Some(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        None => (StatusCode::NOT_FOUND, "the log level is not adjustable in this process\n").into_response(),
    }
}

async fn put_log_level(State(handle): State<LogState>, body: Bytes) -> Response {
    let Some(handle) = handle else {
        return (StatusCode::NOT_FOUND, "the log level is not adjustable in this process\n").into_response();
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "the body must be a UTF-8 filter such as `info,benchkite=debug`\n")
            .into_response();
    };
    match crate::telemetry::set_filter(&handle, text.trim()) {
        Ok(now) => {
            tracing::warn!(filter = %now, "log level changed at runtime");
            format!("{now}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn app(state: Arc<HttpState>) -> Router {
        Router::new().route("/readyz", get(readyz)).route("/webhooks/buildkite", post(webhook)).with_state(state)
    }

    async fn call(app: Router, method: &str, uri: &str) -> (StatusCode, HeaderMap) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|e| panic!("request: {e}"));
        let res = app.oneshot(req).await.unwrap_or_else(|e| panic!("call: {e}"));
        (res.status(), res.headers().clone())
    }

    #[tokio::test]
    async fn readiness_follows_the_state() {
        let state = HttpState::new(None);
        assert_eq!(call(app(state.clone()), "GET", "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        state.set_ready(true);
        assert_eq!(call(app(state.clone()), "GET", "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_standby_refuses_webhooks_with_retry_after() {
        let state = HttpState::new(Some(Secret::new("canary-webhook-secret")));
        let (status, headers) = call(app(state), "POST", "/webhooks/buildkite").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("5"));
    }
}
