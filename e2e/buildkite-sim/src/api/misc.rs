//! Small endpoints: root, access token, user, organizations, pipelines, and the 404s.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use super::{ApiPath, AuthToken, check_org, json_response, not_found, paginated, query_pairs};
use crate::render::{Ctx, user_json};
use crate::sim::Sim;

/// `GET /` — like `curl https://api.buildkite.com`.
pub async fn root() -> Response {
    json_response(StatusCode::OK, &json!({"message": "🛠", "timestamp": jiff::Timestamp::now().as_second()}))
}

/// Unknown routes (and known routes with another method) are 404 like on Buildkite.
pub async fn not_found_handler() -> Response {
    not_found("Not Found")
}

pub async fn access_token(State(sim): State<Arc<Sim>>, token: Option<Extension<AuthToken>>) -> Response {
    let inner = sim.lock();
    let user = token.and_then(|t| inner.user_for_token(&t.0.0).cloned());
    json_response(
        StatusCode::OK,
        &json!({
            "uuid": user.as_ref().map(|u| u.id),
            "scopes": [
                "read_agents", "write_agents", "read_clusters", "write_clusters",
                "read_artifacts", "write_artifacts", "read_builds", "write_builds",
                "read_build_logs", "read_organizations", "read_pipelines", "read_user"
            ],
            "description": "buildkite-sim token",
            "created_at": user.as_ref().map(|u| crate::model::fmt_ts(u.created_at)),
            "user": user.as_ref().map(|u| json!({"name": u.name, "email": u.email})),
        }),
    )
}

pub async fn user(State(sim): State<Arc<Sim>>, token: Option<Extension<AuthToken>>) -> Response {
    let inner = sim.lock();
    match token.and_then(|t| inner.user_for_token(&t.0.0)) {
        Some(u) => json_response(StatusCode::OK, &user_json(u)),
        None => not_found("Not Found"),
    }
}

pub async fn list_orgs(State(sim): State<Arc<Sim>>, uri: Uri) -> Response {
    let pairs = query_pairs(&uri);
    let org = {
        let inner = sim.lock();
        Ctx { inner: &inner, urls: &sim.urls }.organization()
    };
    paginated(&sim, &uri, &pairs, vec![org])
}

pub async fn get_org(State(sim): State<Arc<Sim>>, ApiPath(org): ApiPath<String>) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    json_response(StatusCode::OK, &ctx.organization())
}

pub async fn list_pipelines(State(sim): State<Arc<Sim>>, ApiPath(org): ApiPath<String>, uri: Uri) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let pairs = query_pairs(&uri);
    let items: Vec<Value> = {
        let inner = sim.lock();
        let ctx = Ctx { inner: &inner, urls: &sim.urls };
        inner.pipelines.values().map(|p| ctx.pipeline(p, true)).collect()
    };
    paginated(&sim, &uri, &pairs, items)
}

pub async fn get_pipeline(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline)): ApiPath<(String, String)>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    match inner.pipelines.get(&pipeline) {
        Some(p) => json_response(StatusCode::OK, &ctx.pipeline(p, true)),
        None => not_found("No pipeline found"),
    }
}
