//! The controller's HTTP endpoints: health, readiness and the Buildkite webhook receiver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use futures::Future;

use crate::buildkite::Secret;
use crate::kerneljob::JobCtx;
use crate::kerneljob::webhook::{WebhookState, receive};

/// Serves until `shutdown`. `/readyz` answers 200 once `ready` resolved (caches synced).
pub async fn serve(
    addr: SocketAddr,
    jobs: Option<(Arc<JobCtx>, Option<Secret>)>,
    ready: impl Future<Output = ()> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let is_ready = Arc::new(AtomicBool::new(false));
    {
        let is_ready = is_ready.clone();
        tokio::spawn(async move {
            ready.await;
            is_ready.store(true, Ordering::Relaxed);
        });
    }
    let mut app = Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let ready = is_ready.load(Ordering::Relaxed);
            async move {
                if ready {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
                }
            }
        }),
    );
    if let Some((ctx, secret)) = jobs {
        match secret {
            Some(secret) => {
                let state = Arc::new(WebhookState {
                    ctx,
                    secret,
                    max_skew: crate::buildkite::DEFAULT_MAX_SKEW,
                    seen: Mutex::new(HashMap::new()),
                });
                app = app.route("/webhooks/buildkite", post(receive).with_state(state));
            }
            None => tracing::info!("no webhook secret: /webhooks/buildkite is off; following builds by polling"),
        }
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, "serving health and webhooks");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("HTTP server")?;
    Ok(())
}
