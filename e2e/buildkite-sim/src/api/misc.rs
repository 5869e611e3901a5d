//! Small endpoints: root, access token, user, organizations, and the 404s.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde_json::json;

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

/// `GET /v2/access-token` (REST "Access token API"): `{uuid, scopes, description,
/// created_at, user}`; "Required scope: none".
pub async fn access_token(State(sim): State<Arc<Sim>>, token: Option<Extension<AuthToken>>) -> Response {
    let inner = sim.lock();
    let Some(t) = token.and_then(|t| inner.token(&t.0.0).cloned()) else {
        return not_found("Not Found");
    };
    let user = inner.users.iter().find(|(_, u)| u.id == t.user).map(|(_, u)| u.clone());
    json_response(
        StatusCode::OK,
        &json!({
            "uuid": t.uuid,
            "scopes": t.scopes,
            "description": t.description,
            "created_at": crate::model::fmt_ts_utc(t.created_at),
            "expires_at": null,
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
