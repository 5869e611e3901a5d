//! The webhook receiver (`POST /webhooks/buildkite`): verifies the delivery, records the
//! build on the board and wakes its KernelJob. Idempotent: duplicates and out-of-order
//! deliveries change nothing; replays of a signed delivery are acknowledged and ignored.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use k8s_openapi::jiff::Timestamp;

use super::controller::JobCtx;
use crate::buildkite::{self, Secret};

/// What the receiver needs.
pub struct WebhookState {
    pub ctx: Arc<JobCtx>,
    pub secret: Secret,
    pub max_skew: Duration,
    /// Signatures seen within the skew window (replay protection).
    pub seen: Mutex<HashMap<String, Timestamp>>,
}

pub async fn receive(State(state): State<Arc<WebhookState>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let ctx = &state.ctx;
    let now = Timestamp::now();
    let event = match buildkite::parse_webhook(&headers, &body, &state.secret, now, state.max_skew) {
        Ok(ev) => ev,
        Err(e) if e.is_unauthorized() => {
            ctx.webhooks.refused.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().webhook("refused");
            tracing::warn!(error = %e, "refused a webhook delivery");
            return (StatusCode::UNAUTHORIZED, format!("refused: {e}\n"));
        }
        Err(e) => {
            ctx.webhooks.refused.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().webhook("malformed");
            tracing::warn!(error = %e, "malformed webhook delivery");
            return (StatusCode::BAD_REQUEST, format!("malformed: {e}\n"));
        }
    };
    // A signed delivery is accepted once; Buildkite signs every delivery attempt anew.
    if let Some(sig) = headers.get("x-buildkite-signature").and_then(|v| v.to_str().ok()) {
        let Ok(mut seen) = state.seen.lock() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "busy\n".to_string());
        };
        let horizon = now
            - k8s_openapi::jiff::SignedDuration::from_secs(i64::try_from(state.max_skew.as_secs() * 2).unwrap_or(600));
        seen.retain(|_, t| *t > horizon);
        if seen.insert(sig.to_string(), now).is_some() {
            ctx.webhooks.replayed.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().webhook("duplicate");
            return (StatusCode::OK, "duplicate ignored\n".to_string());
        }
    }
    let Some(build) = event.build else {
        ctx.webhooks.ignored.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().webhook("ignored");
        return (StatusCode::OK, "ignored\n".to_string());
    };
    // Ours by the attempt branch (bodies captured from the real service carry no
    // `meta_data`: go-buildkite `builds_test.go`), or by meta-data for jobs on their own branch.
    if !super::board::is_ours(&build, &ctx.config.instance) {
        ctx.webhooks.ignored.fetch_add(1, Ordering::Relaxed);
        crate::metrics::global().webhook("ignored");
        return (StatusCode::OK, "not ours\n".to_string());
    }
    ctx.webhooks.accepted.fetch_add(1, Ordering::Relaxed);
    crate::metrics::global().webhook("accepted");
    // Ours if the board follows it or its KernelJob exists (e.g. just after a restart).
    let job = ctx.job_of(&build);
    let known = job.is_some() || super::board::run_id_of(&build).is_some_and(|r| ctx.board.get(r).is_some());
    if known
        && ctx.board.update(&build, now)
        && let Some(key) = job
    {
        ctx.wake(&key);
    }
    (StatusCode::OK, "ok\n".to_string())
}
