//! `/_sim/graphql`: the GraphQL budget's knobs and counters.
//!
//! - `GET /_sim/graphql` → [`stats_json`];
//! - `PUT /_sim/graphql` `{points_limit?, user_points_limit?, window_secs?,
//!   max_query_complexity?}` changes the budget at run time (answers like `GET`);
//! - `POST /_sim/graphql/spend` `{"points": n}` charges n points to the organization's
//!   current window (opening one if none is open);
//! - `DELETE /_sim/graphql` clears the counters and the windows.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{error, json_response};
use crate::sim::Sim;

pub fn router() -> Router<Arc<Sim>> {
    Router::new().route("/_sim/graphql", get(stats).put(set).delete(reset)).route("/_sim/graphql/spend", post(spend))
}

/// Everything `GET /_sim/graphql` answers.
pub fn stats_json(sim: &Sim) -> Value {
    let b = &sim.graphql.budget;
    let cfg = b.config();
    let (org, _) = b.states("");
    let c = b.counts();
    let users: serde_json::Map<String, Value> = b
        .user_states()
        .into_iter()
        .map(|(u, s)| (u, json!({"used": s.used, "remaining": s.remaining, "reset_secs": s.reset})))
        .collect();
    json!({
        "points_limit": cfg.points_limit,
        "user_points_limit": cfg.user_points_limit,
        "window_secs": cfg.window_secs,
        "max_query_complexity": cfg.max_query_complexity,
        "window_used": org.used,
        "window_remaining": org.remaining,
        "reset_secs": org.reset,
        "users": users,
        "requests": c.requests,
        "executed": c.executed,
        "rejected_429": c.rejected_429,
        "rejected_429_user": c.rejected_429_user,
        "rejected_complexity": c.rejected_complexity,
        "rejected_invalid": c.rejected_invalid,
        "rejected_auth": c.rejected_auth,
        "requested_points_total": c.requested_points_total,
        "actual_points_total": c.actual_points_total,
        "spent_by_sim": c.spent_by_sim,
        "by_operation": serde_json::to_value(&c.by_operation).unwrap_or(Value::Null),
        "http": serde_json::to_value(sim.graphql.http.snapshot()).unwrap_or(Value::Null),
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")))
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    json_response(StatusCode::OK, &stats_json(&sim))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    points_limit: Option<u64>,
    user_points_limit: Option<u64>,
    window_secs: Option<f64>,
    max_query_complexity: Option<u64>,
}

async fn set(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let p: Patch = match parse(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut cfg = sim.graphql.budget.config();
    if let Some(v) = p.points_limit {
        cfg.points_limit = v;
    }
    if let Some(v) = p.user_points_limit {
        cfg.user_points_limit = v;
    }
    if let Some(v) = p.window_secs {
        if !(v.is_finite() && v > 0.0) {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "window_secs must be > 0");
        }
        cfg.window_secs = v;
    }
    if let Some(v) = p.max_query_complexity {
        cfg.max_query_complexity = v;
    }
    sim.graphql.budget.set_config(cfg);
    json_response(StatusCode::OK, &stats_json(&sim))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spend {
    points: u64,
}

async fn spend(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let s: Spend = match parse(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    sim.graphql.budget.spend(s.points);
    json_response(StatusCode::OK, &stats_json(&sim))
}

async fn reset(State(sim): State<Arc<Sim>>) -> Response {
    sim.graphql.budget.reset();
    sim.graphql.http.reset();
    json_response(StatusCode::OK, &stats_json(&sim))
}
