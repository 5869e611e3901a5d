//! Buildkite's GraphQL API (`POST /v1`, https://graphql.buildkite.com/v1) for the subset
//! benchkite uses: `organization`, `pipeline`, `build` (by uuid or slug) with builds, jobs
//! and meta-data connections, and the `buildCreate`/`buildCancel` mutations, which go
//! through the same state functions as the REST routes.
//!
//! Every request is authenticated with a REST API token (`Authorization: Bearer`) whose
//! scopes include `graphql` (Buildkite: the token's "Enable GraphQL API access"), parsed and
//! validated strictly (graphql-ruby's messages), costed (requested complexity, `cost.rs`),
//! refused above `max_query_complexity` (HTTP 200, nothing charged) or above what the
//! organization's or the user's window has left (HTTP 429, nothing executed or charged),
//! then executed and charged its actual complexity. Every answer carries `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset`, `RateLimit-Scope` (the scope closest to
//! exhaustion) and, once costed, `RateLimit-Complexity-Requested`/`-Actual`; with
//! `Buildkite-Include-Query-Stats: true` the body also has `stats.requestedComplexity` and
//! `stats.actualComplexity` (docs "GraphQL resource limits"). GraphQL requests are not REST
//! requests: they are not counted in `/_sim/counters` nor against the REST limits.

// Route helpers return the error answer itself (`Result<_, Response>`).
#![allow(clippy::result_large_err)]

pub mod budget;
pub mod cost;
pub mod exec;
pub mod plan;
pub mod resolve;
pub mod schema;
pub mod sim_routes;
pub mod validate;

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::config::GraphqlConfig;
use crate::counters::Counters;
use crate::sim::Sim;
use budget::{Admit, Budget, ScopeState};
use plan::{GqlError, fields_for};
use resolve::Obj;

/// The GraphQL endpoint's state on the simulator.
pub struct Graphql {
    pub budget: Budget,
    /// `POST /v1` answers by status (`"0"`: connection dropped by fault injection).
    pub http: Counters,
}

impl Graphql {
    pub fn new(cfg: GraphqlConfig) -> Self {
        Self { budget: Budget::new(cfg), http: Counters::default() }
    }
}

/// What Buildkite answers without a valid token (wording of the REST 401).
pub const AUTH_MESSAGE: &str = "Authentication required. Please supply a valid API Access Token: https://buildkite.com/docs/apis/graphql-api#authentication";

/// A token without GraphQL access. The status (403) and wording are guesses: the docs only
/// say a token must have "Enable GraphQL API access" ticked.
pub const NO_GRAPHQL_MESSAGE: &str = "Your access token doesn't have GraphQL API access enabled";

fn set_headers(resp: &mut Response, s: ScopeState, requested: Option<u64>, actual: Option<u64>) {
    let h = resp.headers_mut();
    h.insert("RateLimit-Limit", HeaderValue::from(s.limit));
    h.insert("RateLimit-Remaining", HeaderValue::from(s.remaining));
    h.insert("RateLimit-Reset", HeaderValue::from(s.reset));
    h.insert("RateLimit-Scope", HeaderValue::from_static(s.scope));
    if let Some(r) = requested {
        h.insert("RateLimit-Complexity-Requested", HeaderValue::from(r));
    }
    if let Some(a) = actual {
        h.insert("RateLimit-Complexity-Actual", HeaderValue::from(a));
    }
}

fn answer(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn errors_body(errors: &[GqlError]) -> Value {
    json!({ "errors": errors.iter().map(GqlError::to_json).collect::<Vec<_>>() })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

struct Request {
    query: String,
    variables: Map<String, Value>,
    operation_name: Option<String>,
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Request, Response> {
    let bad = |m: &str| answer(StatusCode::BAD_REQUEST, &json!({"errors": [{"message": m}]}));
    let bytes = body.map_err(|_| bad("Problems reading the request body"))?;
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(bad("Problems parsing JSON"));
    };
    let query = match m.get("query") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err(bad("`query` must be a string")),
    };
    // graphql-ruby's controller template also takes variables as a JSON string.
    let variables = match m.get("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(v)) => v.clone(),
        Some(Value::String(s)) if s.trim().is_empty() => Map::new(),
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(v)) => v,
            _ => return Err(bad("`variables` must be a JSON object")),
        },
        Some(_) => return Err(bad("`variables` must be a JSON object")),
    };
    let operation_name = match m.get("operationName") {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(bad("`operationName` must be a string")),
    };
    Ok(Request { query, variables, operation_name })
}

/// `POST /v1`.
pub async fn endpoint(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let g = &sim.graphql;
    g.budget.count(|c| c.requests += 1);
    let auth = bearer(&headers).and_then(|t| {
        let inner = sim.lock();
        let info = inner.token(t)?;
        let user = inner.user_for_token(t).map(|u| u.id).unwrap_or_default();
        Some((info.scopes.clone(), user))
    });
    let Some((scopes, user)) = auth else {
        g.budget.count(|c| c.rejected_auth += 1);
        let mut r = answer(StatusCode::UNAUTHORIZED, &json!({"errors": [{"message": AUTH_MESSAGE}]}));
        set_headers(&mut r, g.budget.header_state(None), None, None);
        return r;
    };
    let user_key = user.to_string();
    let user_state = || g.budget.header_state(Some(&user_key));
    if !scopes.iter().any(|s| s == "graphql") {
        g.budget.count(|c| c.rejected_auth += 1);
        let mut r = answer(StatusCode::FORBIDDEN, &json!({"errors": [{"message": NO_GRAPHQL_MESSAGE}]}));
        set_headers(&mut r, user_state(), None, None);
        return r;
    }
    let req = match parse_body(body) {
        Ok(r) => r,
        Err(mut r) => {
            g.budget.count(|c| c.rejected_invalid += 1);
            set_headers(&mut r, user_state(), None, None);
            return r;
        }
    };
    let plan = match validate::prepare(&req.query, &req.variables, req.operation_name.as_deref()) {
        Ok(p) => p,
        Err(errors) => {
            g.budget.count(|c| c.rejected_invalid += 1);
            let mut r = answer(StatusCode::OK, &errors_body(&errors));
            set_headers(&mut r, user_state(), None, None);
            return r;
        }
    };
    let root = if plan.mutation { "Mutation" } else { "Query" };
    let requested = cost::requested(&plan.sel, root);
    let max = g.budget.config().max_query_complexity;
    if requested > max {
        g.budget.count(|c| c.rejected_complexity += 1);
        let msg = format!("Query has complexity of {requested}, which exceeds max complexity of {max}");
        let mut r = answer(StatusCode::OK, &json!({"errors": [{"message": msg}]}));
        set_headers(&mut r, user_state(), Some(requested), None);
        return r;
    }
    let hold = match g.budget.admit(&user_key, requested) {
        Admit::Run(h) => h,
        Admit::Refused(s) => {
            let msg = if s.scope == "user" {
                format!(
                    "You have exceeded your per-user limit of {} complexity points. Please try again in {} seconds.",
                    s.limit, s.reset
                )
            } else {
                format!(
                    "Your organization has exceeded the limit of {} complexity points. Please try again in {} seconds.",
                    s.limit, s.reset
                )
            };
            let mut r = answer(StatusCode::TOO_MANY_REQUESTS, &json!({"errors": [{"message": msg}]}));
            set_headers(&mut r, s, Some(requested), None);
            return r;
        }
    };
    let (data, actual, errors, operation) = run(&sim, &plan, &scopes, user);
    if plan.mutation {
        sim.kick();
    }
    g.budget.settle(hold, actual, &operation);
    let mut body = Map::new();
    body.insert("data".into(), data);
    if !errors.is_empty() {
        body.insert("errors".into(), Value::Array(errors.iter().map(GqlError::to_json).collect()));
    }
    let stats = headers
        .get("Buildkite-Include-Query-Stats")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if stats {
        body.insert("stats".into(), json!({"requestedComplexity": requested, "actualComplexity": actual}));
    }
    let mut r = answer(StatusCode::OK, &Value::Object(body));
    set_headers(&mut r, user_state(), Some(requested), Some(actual));
    r
}

/// Executes a plan under the state lock: `(data, actual complexity, errors, operation)`.
fn run(sim: &Sim, plan: &plan::Plan, scopes: &[String], user: uuid::Uuid) -> (Value, u64, Vec<GqlError>, String) {
    let mut inner = sim.lock();
    if !plan.mutation {
        let mut ex = exec::Exec::new(&inner, &sim.urls, scopes);
        let (data, actual) = exec::query(&mut ex, &plan.sel);
        return (data, actual, ex.errors, "query".into());
    }
    let mut fields = Vec::new();
    fields_for(&plan.sel, "Mutation", &mut fields);
    let operation = fields.first().map_or_else(|| "mutation".to_string(), |f| f.name.clone());
    let mut data = Map::new();
    let mut errors = Vec::new();
    let mut actual = 0u64;
    for f in fields {
        if data.contains_key(&f.key) {
            continue;
        }
        let path = vec![json!(f.key)];
        match exec::mutate(&mut inner, f, user, scopes) {
            Ok(out) => {
                let mut ex = exec::Exec::new(&inner, &sim.urls, scopes);
                let value = match inner.builds.get(&out.build) {
                    Some(b) => {
                        let (v, c) =
                            ex.object(&Obj::Payload(out.payload_type, out.client_mutation_id, b), &f.sel, &path);
                        actual = actual.saturating_add(1 + c);
                        v
                    }
                    None => Value::Null,
                };
                errors.append(&mut ex.errors);
                data.insert(f.key.clone(), value);
            }
            Err(message) => {
                actual = actual.saturating_add(1);
                errors.push(GqlError::new(message).at(f.pos).path(path));
                data.insert(f.key.clone(), Value::Null);
            }
        }
    }
    (Value::Object(data), actual, errors, operation)
}
