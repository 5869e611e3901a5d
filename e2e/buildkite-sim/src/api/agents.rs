//! Agents: list (connected only), get, stop.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;
use uuid::Uuid;

use super::{ApiPath, check_org, json_object, json_response, not_found, op_error, paginated, query_get, query_pairs};
use crate::model::ConnectionState;
use crate::render::Ctx;
use crate::sim::Sim;

pub async fn list(State(sim): State<Arc<Sim>>, ApiPath(org): ApiPath<String>, uri: Uri) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let pairs = query_pairs(&uri);
    let name = query_get(&pairs, "name").map(str::to_string);
    let hostname = query_get(&pairs, "hostname").map(str::to_string);
    let version = query_get(&pairs, "version").map(str::to_string);
    let inner = sim.lock();
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let items: Vec<Value> = inner
        .agent_order
        .iter()
        .filter_map(|id| inner.agents.get(id))
        .filter(|a| matches!(a.connection_state, ConnectionState::Connected | ConnectionState::Stopping))
        .filter(|a| name.as_deref().is_none_or(|n| a.name == n))
        .filter(|a| hostname.as_deref().is_none_or(|h| a.hostname == h))
        .filter(|_| version.as_deref().is_none_or(|v| v == "3.0.0"))
        .map(|a| ctx.agent(a))
        .collect();
    drop(inner);
    paginated(&sim, &uri, &pairs, items)
}

pub async fn get(State(sim): State<Arc<Sim>>, ApiPath((org, agent)): ApiPath<(String, String)>) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let Some(a) = agent.parse::<Uuid>().ok().and_then(|id| inner.agents.get(&id)) else {
        return not_found("No agent found");
    };
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    json_response(StatusCode::OK, &ctx.agent(a))
}

pub async fn stop(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, agent)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let force = !matches!(body.get("force"), Some(Value::Bool(false)));
    let Ok(id) = agent.parse::<Uuid>() else {
        return not_found("No agent found");
    };
    let result = sim.lock().stop_agent(id, force);
    sim.kick();
    match result {
        Ok(()) => {
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(e) => op_error(e),
    }
}
