//! Clusters, cluster queues (create, pause/resume dispatch) and cluster agent tokens.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use jiff::Timestamp;
use serde_json::Value;
use uuid::Uuid;

use super::{ApiPath, check_org, error, json_object, json_response, not_found, op_error, paginated, query_pairs};
use crate::model::AgentToken;
use crate::render::Ctx;
use crate::sim::Sim;
use crate::state::Inner;

fn cluster_id(inner: &Inner, cluster: &str) -> Result<Uuid, Response> {
    cluster
        .parse::<Uuid>()
        .ok()
        .filter(|id| inner.clusters.iter().any(|c| c.id == *id))
        .ok_or_else(|| not_found("No cluster found"))
}

fn queue_id(inner: &Inner, cluster: Uuid, queue: &str) -> Result<Uuid, Response> {
    queue
        .parse::<Uuid>()
        .ok()
        .filter(|id| inner.queues.iter().any(|q| q.id == *id && q.cluster_id == cluster))
        .ok_or_else(|| not_found("No queue found"))
}

pub async fn list(State(sim): State<Arc<Sim>>, ApiPath(org): ApiPath<String>, uri: Uri) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let pairs = query_pairs(&uri);
    let inner = sim.lock();
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let items: Vec<Value> = inner.clusters.iter().map(|c| ctx.cluster(c)).collect();
    drop(inner);
    paginated(&sim, &uri, &pairs, items)
}

pub async fn get(State(sim): State<Arc<Sim>>, ApiPath((org, cluster)): ApiPath<(String, String)>) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let id = match cluster_id(&inner, &cluster) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    match inner.clusters.iter().find(|c| c.id == id) {
        Some(c) => json_response(StatusCode::OK, &ctx.cluster(c)),
        None => not_found("No cluster found"),
    }
}

pub async fn list_queues(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster)): ApiPath<(String, String)>,
    uri: Uri,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let pairs = query_pairs(&uri);
    let inner = sim.lock();
    let id = match cluster_id(&inner, &cluster) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let items: Vec<Value> = inner.queues.iter().filter(|q| q.cluster_id == id).map(|q| ctx.queue(q)).collect();
    drop(inner);
    paginated(&sim, &uri, &pairs, items)
}

pub async fn get_queue(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster, queue)): ApiPath<(String, String, String)>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let cid = match cluster_id(&inner, &cluster) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let qid = match queue_id(&inner, cid, &queue) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    match inner.queues.iter().find(|q| q.id == qid) {
        Some(q) => json_response(StatusCode::OK, &ctx.queue(q)),
        None => not_found("No queue found"),
    }
}

pub async fn create_queue(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let cid = match cluster_id(&sim.lock(), &cluster) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = match body.get("key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation failed: Key is invalid");
        }
    };
    let description = match body.get("description") {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation failed: Description is invalid");
        }
    };
    let resp = {
        let mut inner = sim.lock();
        match inner.create_queue(cid, &key, description) {
            Ok(id) => {
                let ctx = Ctx { inner: &inner, urls: &sim.urls };
                match inner.queues.iter().find(|q| q.id == id) {
                    Some(q) => json_response(StatusCode::CREATED, &ctx.queue(q)),
                    None => not_found("No queue found"),
                }
            }
            Err(e) => op_error(e),
        }
    };
    sim.kick();
    resp
}

pub async fn delete_queue(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster, queue)): ApiPath<(String, String, String)>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let mut inner = sim.lock();
    let cid = match cluster_id(&inner, &cluster) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let qid = match queue_id(&inner, cid, &queue) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match inner.delete_queue(cid, qid) {
        Ok(()) => {
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(e) => op_error(e),
    }
}

async fn set_paused(
    sim: Arc<Sim>,
    org: String,
    cluster: String,
    queue: String,
    paused: bool,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let note =
        ["note", "dispatch_paused_note"].iter().find_map(|k| body.get(*k).and_then(Value::as_str)).map(str::to_string);
    let resp = {
        let mut inner = sim.lock();
        let cid = match cluster_id(&inner, &cluster) {
            Ok(id) => id,
            Err(r) => return r,
        };
        let qid = match queue_id(&inner, cid, &queue) {
            Ok(id) => id,
            Err(r) => return r,
        };
        match inner.set_dispatch_paused(cid, qid, paused, note) {
            Ok(()) => {
                let ctx = Ctx { inner: &inner, urls: &sim.urls };
                match inner.queues.iter().find(|q| q.id == qid) {
                    Some(q) => json_response(StatusCode::OK, &ctx.queue(q)),
                    None => not_found("No queue found"),
                }
            }
            Err(e) => op_error(e),
        }
    };
    sim.kick();
    resp
}

pub async fn pause(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster, queue)): ApiPath<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    set_paused(sim, org, cluster, queue, true, body).await
}

pub async fn resume(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster, queue)): ApiPath<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    set_paused(sim, org, cluster, queue, false, body).await
}

pub async fn list_tokens(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster)): ApiPath<(String, String)>,
    uri: Uri,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let pairs = query_pairs(&uri);
    let inner = sim.lock();
    let cid = match cluster_id(&inner, &cluster) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let items: Vec<Value> =
        inner.agent_tokens.iter().filter(|t| t.cluster_id == cid).map(|t| ctx.agent_token(t, false)).collect();
    drop(inner);
    paginated(&sim, &uri, &pairs, items)
}

/// The token value is only returned by this call, like Buildkite.
pub async fn create_token(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, cluster)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let description = match body.get("description") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation failed: Description can't be blank");
        }
    };
    let mut inner = sim.lock();
    let cid = match cluster_id(&inner, &cluster) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut secret = [0u8; 24];
    rand::fill(&mut secret);
    let token = AgentToken {
        id: Uuid::new_v4(),
        cluster_id: cid,
        description,
        token: hex::encode(secret),
        created_at: Timestamp::now(),
    };
    inner.agent_tokens.push(token.clone());
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    json_response(StatusCode::CREATED, &ctx.agent_token(&token, true))
}
