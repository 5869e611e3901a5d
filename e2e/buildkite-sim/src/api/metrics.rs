//! The agent metrics API (`/v3/metrics`, `/v3/metrics/queue?name=`), authenticated with
//! `Authorization: Token <agent token>`; not subject to the REST rate limits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{error, json_response, query_get, query_pairs};
use crate::sim::Sim;
use crate::state::QueueMetrics;

fn cluster_for(sim: &Sim, headers: &HeaderMap) -> Option<Uuid> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("token") {
        return None;
    }
    let token = token.trim();
    sim.lock().agent_tokens.iter().find(|t| t.token == token).map(|t| t.cluster_id)
}

fn with_poll_header(sim: &Sim, mut r: Response) -> Response {
    let secs = sim.poll_duration_secs.load(Ordering::Relaxed);
    r.headers_mut().insert("Buildkite-Agent-Metrics-Poll-Duration", HeaderValue::from(secs));
    r
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "Invalid agent token")
}

pub async fn all(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    let Some(cluster) = cluster_for(&sim, &headers) else {
        return unauthorized();
    };
    let per_queue = sim.lock().queue_metrics(cluster);
    let mut t = QueueMetrics::default();
    let mut agent_queues = serde_json::Map::new();
    let mut job_queues = serde_json::Map::new();
    for (q, m) in &per_queue {
        t.agents_idle += m.agents_idle;
        t.agents_busy += m.agents_busy;
        t.agents_total += m.agents_total;
        t.jobs_scheduled += m.jobs_scheduled;
        t.jobs_running += m.jobs_running;
        t.jobs_waiting += m.jobs_waiting;
        agent_queues.insert(q.clone(), json!({"idle": m.agents_idle, "busy": m.agents_busy, "total": m.agents_total}));
        job_queues.insert(
            q.clone(),
            json!({
                "scheduled": m.jobs_scheduled,
                "running": m.jobs_running,
                "waiting": m.jobs_waiting,
                "total": m.jobs_scheduled + m.jobs_running + m.jobs_waiting,
            }),
        );
    }
    let body = json!({
        "agents": {
            "idle": t.agents_idle, "busy": t.agents_busy, "total": t.agents_total,
            "queues": Value::Object(agent_queues),
        },
        "jobs": {
            "scheduled": t.jobs_scheduled, "running": t.jobs_running, "waiting": t.jobs_waiting,
            "total": t.jobs_scheduled + t.jobs_running + t.jobs_waiting,
            "queues": Value::Object(job_queues),
        },
        "organization": {"slug": sim.org_slug},
    });
    with_poll_header(&sim, json_response(StatusCode::OK, &body))
}

pub async fn queue(State(sim): State<Arc<Sim>>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(cluster) = cluster_for(&sim, &headers) else {
        return unauthorized();
    };
    let pairs = query_pairs(&uri);
    let Some(name) = query_get(&pairs, "name").filter(|n| !n.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "Missing required parameter: name");
    };
    let m = sim.lock().queue_metrics(cluster).remove(name).unwrap_or_default();
    let body = json!({
        "agents": {"idle": m.agents_idle, "busy": m.agents_busy, "total": m.agents_total},
        "jobs": {
            "scheduled": m.jobs_scheduled, "running": m.jobs_running, "waiting": m.jobs_waiting,
            "total": m.jobs_scheduled + m.jobs_running + m.jobs_waiting,
        },
        "organization": {"slug": sim.org_slug},
    });
    with_poll_header(&sim, json_response(StatusCode::OK, &body))
}
