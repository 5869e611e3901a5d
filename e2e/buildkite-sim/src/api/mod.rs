//! The Buildkite REST API v2 (`/v2`), the agent metrics API (`/v3`) and the layers in
//! front of them: request counters, fault injection, authentication and rate limits.

// Route helpers return the error answer itself (`Result<_, Response>`): it is built once and
// sent as is, so boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod agents;
mod artifacts;
mod builds;
mod clusters;
mod metrics;
mod misc;
mod pipelines;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header, request::Parts};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::faults::FaultAction;
use crate::http::{DropConnection, drop_connection};
use crate::ratelimit::ScopeState;
use crate::sim::Sim;
use crate::state::{FieldError, OpError};

pub const AUTH_MESSAGE: &str = "Authentication required. Please supply a valid API Access Token: https://buildkite.com/docs/apis/rest-api#authentication";

/// The token of the authenticated REST user (inserted by the auth layer).
#[derive(Debug, Clone)]
pub struct AuthToken(pub String);

pub fn router(sim: Arc<Sim>) -> Router {
    const B: &str = "/v2/organizations/{org}/pipelines/{pipeline}/builds";
    const BN: &str = "/v2/organizations/{org}/pipelines/{pipeline}/builds/{number}";
    const J: &str = "/v2/organizations/{org}/pipelines/{pipeline}/builds/{number}/jobs/{job}";
    const OJ: &str = "/v2/organizations/{org}/jobs/{job}";
    const C: &str = "/v2/organizations/{org}/clusters/{cluster}";
    const Q: &str = "/v2/organizations/{org}/clusters/{cluster}/queues/{queue}";
    let api = Router::new()
        .route("/", get(misc::root))
        .route("/v2/access-token", get(misc::access_token))
        .route("/v2/user", get(misc::user))
        .route("/v2/builds", get(builds::list_all))
        .route("/v2/organizations", get(misc::list_orgs))
        .route("/v2/organizations/{org}", get(misc::get_org))
        .route("/v2/organizations/{org}/builds", get(builds::list_org))
        .route("/v2/organizations/{org}/pipelines", get(pipelines::list).post(pipelines::create))
        .route(
            "/v2/organizations/{org}/pipelines/{pipeline}",
            get(pipelines::get).patch(pipelines::update).delete(pipelines::delete),
        )
        .route("/v2/organizations/{org}/pipelines/{pipeline}/archive", post(pipelines::archive))
        .route("/v2/organizations/{org}/pipelines/{pipeline}/unarchive", post(pipelines::unarchive))
        .route("/v2/organizations/{org}/pipeline-settings", get(pipelines::settings).patch(pipelines::update_settings))
        .route(B, get(builds::list_pipeline).post(builds::create))
        .route(BN, get(builds::get))
        .route(&format!("{BN}/cancel"), put(builds::cancel))
        .route(&format!("{BN}/artifacts"), get(artifacts::list_build))
        .route(&format!("{J}/artifacts"), get(artifacts::list_job))
        .route(&format!("{J}/artifacts/{{artifact}}"), get(artifacts::get).delete(artifacts::delete))
        .route(&format!("{J}/artifacts/{{artifact}}/download"), get(artifacts::download))
        .route(&format!("{J}/log"), get(builds::job_log))
        .route(&format!("{J}/log.txt"), get(builds::job_log_txt))
        .route(&format!("{OJ}/artifacts"), get(artifacts::list_job_org))
        .route(&format!("{OJ}/artifacts/{{artifact}}"), get(artifacts::get_org).delete(artifacts::delete_org))
        .route(&format!("{OJ}/artifacts/{{artifact}}/download"), get(artifacts::download_org))
        .route("/v2/organizations/{org}/agents", get(agents::list))
        .route("/v2/organizations/{org}/agents/{agent}", get(agents::get))
        .route("/v2/organizations/{org}/agents/{agent}/stop", put(agents::stop))
        .route("/v2/organizations/{org}/clusters", get(clusters::list))
        .route(C, get(clusters::get))
        .route(&format!("{C}/queues"), get(clusters::list_queues).post(clusters::create_queue))
        .route(Q, get(clusters::get_queue).delete(clusters::delete_queue))
        .route(&format!("{Q}/pause_dispatch"), post(clusters::pause))
        .route(&format!("{Q}/resume_dispatch"), post(clusters::resume))
        .route(&format!("{C}/tokens"), get(clusters::list_tokens).post(clusters::create_token))
        .route("/v1", post(crate::graphql::endpoint))
        .route("/v3/metrics", get(metrics::all))
        .route("/v3/metrics/queue", get(metrics::queue))
        .merge(crate::agent_api::routes())
        .fallback(misc::not_found_handler)
        .method_not_allowed_fallback(misc::not_found_handler)
        .layer(from_fn_with_state(Arc::clone(&sim), rest_guard))
        .layer(from_fn_with_state(Arc::clone(&sim), fault_layer))
        .layer(from_fn_with_state(Arc::clone(&sim), count_layer));
    api.merge(crate::sim_api::router()).with_state(sim)
}

/// `"<METHOD> <route template>"` of a request, e.g.
/// `"POST /v2/organizations/{org}/pipelines/{pipeline}/builds"`.
pub fn endpoint_key(req: &Request) -> String {
    let route = req.extensions().get::<MatchedPath>().map_or("(unmatched)", |m| m.as_str());
    format!("{} {route}", req.method())
}

fn is_sim_path(path: &str) -> bool {
    path == "/_sim" || path.starts_with("/_sim/")
}

async fn count_layer(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    if is_sim_path(req.uri().path()) {
        return next.run(req).await;
    }
    // GraphQL is not REST: its answers are counted apart (`/_sim/graphql`).
    if req.uri().path() == "/v1" {
        let resp = next.run(req).await;
        let status = if resp.extensions().get::<DropConnection>().is_some() {
            crate::counters::DROPPED
        } else {
            resp.status().as_u16()
        };
        sim.graphql.http.record("POST /v1", status);
        return resp;
    }
    let key = endpoint_key(&req);
    sim.arrivals.record(&key, 0);
    let resp = next.run(req).await;
    let status = if resp.extensions().get::<DropConnection>().is_some() {
        crate::counters::DROPPED
    } else {
        resp.status().as_u16()
    };
    sim.counters.record(&key, status);
    resp
}

async fn fault_layer(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    if is_sim_path(req.uri().path()) {
        return next.run(req).await;
    }
    let d = sim.faults.decide(&endpoint_key(&req), false);
    if !d.delay.is_zero() {
        tokio::time::sleep(d.delay).await;
    }
    let key = endpoint_key(&req);
    match d.action {
        FaultAction::Pass => {
            let resp = next.run(req).await;
            if drop_after(&sim, &key) { drop_connection() } else { resp }
        }
        FaultAction::Drop => drop_connection(),
        FaultAction::Error(status) => injected_error(status),
    }
}

/// `drop_after_rate` of the endpoint's fault (else the default fault): the request was
/// handled, its answer is not sent.
fn drop_after(sim: &Sim, key: &str) -> bool {
    let cfg = sim.faults.config();
    let rate = cfg.endpoints.get(key).unwrap_or(&cfg.default).drop_after_rate;
    rate > 0.0 && rand::random_bool(rate.clamp(0.0, 1.0))
}

/// What an overloaded load balancer in front of the API answers.
pub fn injected_error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let msg = code.canonical_reason().unwrap_or("Service Unavailable");
    (code, axum::Json(json!({ "message": msg }))).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The scope each endpoint requires (the "Required scope" line of each REST docs page).
/// `None`: no scope (`GET /v2/access-token`: "Required scope: none"; the root; unknown routes).
pub fn required_scope(method: &axum::http::Method, route: &str) -> Option<&'static str> {
    use axum::http::Method;
    let read = *method == Method::GET;
    let r = route.strip_prefix("/v2/organizations/{org}").unwrap_or(route);
    let scope = match r {
        "/v2/access-token" | "/" => return None,
        "/v2/user" => "read_user",
        "/v2/organizations" | "" => "read_organizations",
        "/v2/builds" | "/builds" => "read_builds",
        _ if r.starts_with("/pipeline-settings") => {
            if read {
                "read_organization_settings"
            } else {
                "write_organization_settings"
            }
        }
        _ if r.ends_with("/log") || r.ends_with("/log.txt") => "read_build_logs",
        _ if r.contains("/artifacts") => {
            if read {
                "read_artifacts"
            } else {
                "write_artifacts"
            }
        }
        _ if r.contains("/builds") => {
            if read {
                "read_builds"
            } else {
                "write_builds"
            }
        }
        _ if r.starts_with("/pipelines") => {
            if read {
                "read_pipelines"
            } else {
                "write_pipelines"
            }
        }
        _ if r.starts_with("/agents") => {
            if read {
                "read_agents"
            } else {
                "write_agents"
            }
        }
        _ if r.starts_with("/clusters") => {
            if read {
                "read_clusters"
            } else {
                "write_clusters"
            }
        }
        _ => return None,
    };
    Some(scope)
}

/// Authentication, rate limiting and token scopes of `/v2`. Every `/v2` answer carries the
/// rate-limit headers; unauthenticated requests are not counted.
async fn rest_guard(State(sim): State<Arc<Sim>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !(path == "/v2" || path.starts_with("/v2/")) {
        return next.run(req).await;
    }
    let known =
        bearer(req.headers()).and_then(|t| sim.lock().token(t).map(|info| (t.to_string(), info.scopes.clone())));
    let Some((token, scopes)) = known else {
        let mut resp = error(StatusCode::UNAUTHORIZED, AUTH_MESSAGE);
        set_rate_headers(&mut resp, sim.rate.peek(), None);
        return resp;
    };
    let decision = sim.rate.check(&token);
    if let Some((scope, s)) = decision.rejected_by() {
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({
                "message": format!(
                    "You have exceeded your API rate limit. Please wait {} seconds before making more requests.",
                    s.reset
                ),
                "scope": scope,
                "limit": s.limit,
                "current": s.current,
                "reset": s.reset,
            })),
        )
            .into_response();
        set_rate_headers(&mut resp, decision.org, decision.user);
        return resp;
    }
    // A token without the endpoint's scope: 403 "Your access token doesn't have the <scope>
    // scope" (the message Buildkite's CLI shows since it stopped checking scopes itself,
    // buildkite/cli PR #566; go-buildkite prints the body's `message`).
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    if let Some(scope) = route.as_deref().and_then(|r| required_scope(req.method(), r))
        && !scopes.iter().any(|s| s == scope)
    {
        let mut resp = error(StatusCode::FORBIDDEN, &format!("Your access token doesn't have the {scope} scope"));
        set_rate_headers(&mut resp, decision.org, decision.user);
        return resp;
    }
    req.extensions_mut().insert(AuthToken(token));
    let mut resp = next.run(req).await;
    set_rate_headers(&mut resp, decision.org, decision.user);
    resp
}

fn set_rate_headers(resp: &mut Response, org: ScopeState, user: Option<ScopeState>) {
    let h = resp.headers_mut();
    h.insert("RateLimit-Scope", HeaderValue::from_static("rest"));
    h.insert("RateLimit-Limit", HeaderValue::from(org.limit));
    h.insert("RateLimit-Remaining", HeaderValue::from(org.remaining));
    h.insert("RateLimit-Reset", HeaderValue::from(org.reset));
    if let Some(u) = user {
        h.insert("RateLimit-User-Scope", HeaderValue::from_static("rest_user"));
        h.insert("RateLimit-User-Limit", HeaderValue::from(u.limit));
        h.insert("RateLimit-User-Remaining", HeaderValue::from(u.remaining));
        h.insert("RateLimit-User-Reset", HeaderValue::from(u.reset));
    }
}

// ----- helpers shared by the routes -------------------------------------------------------

/// `{"message": …}` with a status.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

pub fn not_found(message: &str) -> Response {
    error(StatusCode::NOT_FOUND, message)
}

pub fn op_error(e: OpError) -> Response {
    match e {
        OpError::NotFound(m) => not_found(m),
        OpError::Unprocessable(m) => error(StatusCode::UNPROCESSABLE_ENTITY, &m),
        OpError::BadRequest(m) => error(StatusCode::BAD_REQUEST, &m),
        OpError::Validation(errors) => validation_failed(&errors),
    }
}

/// `422 {"message": "Validation Failed", "errors": [{"field", "code"[, "message"]}…]}`.
pub fn validation_failed(errors: &[FieldError]) -> Response {
    let errors: Vec<Value> = errors
        .iter()
        .map(|e| match &e.message {
            Some(m) => json!({"field": e.field, "code": e.code, "message": m}),
            None => json!({"field": e.field, "code": e.code}),
        })
        .collect();
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"message": "Validation Failed", "errors": errors})))
        .into_response()
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Path parameters; a mismatch is a JSON 404 (unknown route) instead of axum's 400 text.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state).await.map(|p| ApiPath(p.0)).map_err(|_| not_found("Not Found"))
    }
}

/// A JSON request body as Buildkite reads it: the content type is not checked, an empty
/// body is `{}`, invalid JSON is `400 {"message":"Problems parsing JSON"}`, anything but
/// an object is `400 {"message":"Body should be a JSON object"}`.
pub fn json_object(body: Result<Bytes, BytesRejection>) -> Result<serde_json::Map<String, Value>, Response> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            error(status, "Request body is too large")
        } else {
            error(StatusCode::BAD_REQUEST, "Problems reading the request body")
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(StatusCode::BAD_REQUEST, "Body should be a JSON object")),
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "Problems parsing JSON")),
    }
}

/// Decoded query pairs (repeated keys kept, `a[]` keys as they come).
pub fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default()
}

pub fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub fn query_true(pairs: &[(String, String)], key: &str) -> bool {
    matches!(query_get(pairs, key), Some("true" | "1" | "yes"))
}

/// Values of `key`, `key[]` (and comma-separated lists in them).
pub fn query_list(pairs: &[(String, String)], key: &str) -> Vec<String> {
    let arr = format!("{key}[]");
    pairs
        .iter()
        .filter(|(k, _)| *k == key || *k == arr)
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect()
}

/// One page of a list, with the RFC 5988 `Link` header (`next`, `prev`, `first`, `last`;
/// the header is present but empty when everything fits in one page).
pub fn paginated(sim: &Sim, uri: &Uri, pairs: &[(String, String)], items: Vec<Value>) -> Response {
    let (page, per_page) = page_params(pairs);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page);
    let body: Vec<Value> = items.into_iter().skip(start).take(per_page).collect();
    let link = link_header(sim, uri, pairs, page, last);
    let mut resp = json_response(StatusCode::OK, &Value::Array(body));
    if let Ok(v) = HeaderValue::from_str(&link) {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

/// `page` (default 1) and `per_page` (default 30, max 100); nonsense falls back to defaults.
pub fn page_params(pairs: &[(String, String)]) -> (usize, usize) {
    let page = query_get(pairs, "page").and_then(|v| v.trim().parse::<usize>().ok()).filter(|p| *p >= 1).unwrap_or(1);
    let per_page = query_get(pairs, "per_page")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|p| *p >= 1)
        .map_or(30, |p| p.min(100));
    (page, per_page)
}

fn link_header(sim: &Sim, uri: &Uri, pairs: &[(String, String)], page: usize, last: usize) -> String {
    let base = format!("{}{}", sim.urls.api_root, uri.path());
    let url_for = |p: usize| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.iter().filter(|(k, _)| k != "page") {
            ser.append_pair(k, v);
        }
        ser.append_pair("page", &p.to_string());
        format!("<{base}?{}>", ser.finish())
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", url_for(1)));
        links.push(format!("{}; rel=\"prev\"", url_for((page - 1).min(last))));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", url_for(page + 1)));
        links.push(format!("{}; rel=\"last\"", url_for(last)));
    }
    links.join(", ")
}

/// 404 unless `org` is the simulated organization.
pub fn check_org(sim: &Sim, org: &str) -> Result<(), Response> {
    if org == sim.org_slug { Ok(()) } else { Err(not_found("No organization found")) }
}
