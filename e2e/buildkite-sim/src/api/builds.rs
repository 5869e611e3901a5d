//! Builds: create, get, list (all / organization / pipeline), cancel, job logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    ApiPath, AuthToken, check_org, error, json_object, json_response, not_found, op_error, paginated, query_get,
    query_list, query_pairs, query_true, validation_failed,
};
use crate::model::{Build, BuildState};
use crate::render::Ctx;
use crate::sim::Sim;
use crate::state::{CreateBuild, FieldError, Inner};

/// Buildkite accepts scalar values in `env`/`meta_data` and stores them as strings.
fn string_map(v: &Value) -> Result<BTreeMap<String, String>, ()> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => continue,
                    _ => return Err(()),
                };
                out.insert(k.clone(), s);
            }
            Ok(out)
        }
        _ => Err(()),
    }
}

pub(crate) fn required_string(
    body: &serde_json::Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> String {
    match body.get(field) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(field, "missing_field"));
            String::new()
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push(FieldError::new(field, "missing_field"));
            String::new()
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            errors.push(FieldError::new(field, "invalid"));
            String::new()
        }
    }
}

fn creator(inner: &Inner, token: Option<&Extension<AuthToken>>) -> Uuid {
    token
        .and_then(|t| inner.user_for_token(&t.0.0))
        .or_else(|| inner.users.first().map(|(_, u)| u))
        .map_or(Uuid::nil(), |u| u.id)
}

pub async fn create(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline)): ApiPath<(String, String)>,
    token: Option<Extension<AuthToken>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    if !sim.lock().pipelines.contains_key(&pipeline) {
        return not_found("No pipeline found");
    }
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    let commit = required_string(&body, "commit", &mut errors);
    let branch = required_string(&body, "branch", &mut errors);
    let message = match body.get("message") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new("message", "invalid"));
            None
        }
    };
    let env = string_map(body.get("env").unwrap_or(&Value::Null)).unwrap_or_else(|()| {
        errors.push(FieldError::new("env", "invalid"));
        BTreeMap::new()
    });
    let meta_data = string_map(body.get("meta_data").unwrap_or(&Value::Null)).unwrap_or_else(|()| {
        errors.push(FieldError::new("meta_data", "invalid"));
        BTreeMap::new()
    });
    let author = match body.get("author") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => {
            errors.push(FieldError::new("author", "invalid"));
            None
        }
    };
    let clean_checkout = matches!(body.get("clean_checkout"), Some(Value::Bool(true)));
    let ignore_pipeline_branch_filters = matches!(body.get("ignore_pipeline_branch_filters"), Some(Value::Bool(true)));
    if !errors.is_empty() {
        return validation_failed(&errors);
    }
    let req =
        CreateBuild { commit, branch, message, author, env, meta_data, clean_checkout, ignore_pipeline_branch_filters };
    let rendered = {
        let mut inner = sim.lock();
        let creator = creator(&inner, token.as_ref());
        match inner.create_build(&pipeline, req, creator) {
            Ok((id, _)) => {
                let ctx = Ctx { inner: &inner, urls: &sim.urls };
                inner.builds.get(&id).map(|b| ctx.build(b, true, true))
            }
            Err(e) => return op_error(e),
        }
    };
    sim.kick();
    match rendered {
        Some(v) => json_response(StatusCode::CREATED, &v),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
    }
}

fn find_build<'a>(inner: &'a Inner, pipeline: &str, number: &str) -> Result<&'a Build, Response> {
    if !inner.pipelines.contains_key(pipeline) {
        return Err(not_found("No pipeline found"));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| inner.build_by_number(pipeline, n))
        .ok_or_else(|| not_found("No build found"))
}

pub async fn get(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number)): ApiPath<(String, String, String)>,
    uri: Uri,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let pairs = query_pairs(&uri);
    let inner = sim.lock();
    match find_build(&inner, &pipeline, &number) {
        Ok(b) => {
            let ctx = Ctx { inner: &inner, urls: &sim.urls };
            let retried = query_true(&pairs, "include_retried_jobs");
            let mut v = ctx.build_with(
                b,
                !query_true(&pairs, "exclude_jobs"),
                !query_true(&pairs, "exclude_pipeline"),
                retried,
            );
            if let Value::Object(m) = &mut v {
                m.insert("job_state_counts".into(), ctx.job_state_counts(b, retried));
            }
            json_response(StatusCode::OK, &v)
        }
        Err(r) => r,
    }
}

pub async fn cancel(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number)): ApiPath<(String, String, String)>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let resp = {
        let mut inner = sim.lock();
        let id = match find_build(&inner, &pipeline, &number) {
            Ok(b) => b.id,
            Err(r) => return r,
        };
        if let Err(e) = inner.cancel_build(id, None) {
            return op_error(e);
        }
        let ctx = Ctx { inner: &inner, urls: &sim.urls };
        match inner.builds.get(&id) {
            Some(b) => json_response(StatusCode::OK, &ctx.build(b, true, true)),
            None => not_found("No build found"),
        }
    };
    sim.kick();
    resp
}

/// Build list filters (`state[]`, `branch`, `commit`, `creator`, `meta_data[k]`,
/// `created_from`, `created_to`, `finished_from`).
struct Filter {
    states: Vec<String>,
    branches: Vec<String>,
    commits: Vec<String>,
    creator: Option<String>,
    meta: Vec<(String, String)>,
    created_from: Option<Timestamp>,
    created_to: Option<Timestamp>,
    finished_from: Option<Timestamp>,
}

fn parse_time(v: &str) -> Option<Timestamp> {
    let v = v.trim();
    if let Ok(t) = v.parse::<Timestamp>() {
        return Some(t);
    }
    if let Ok(dt) = v.parse::<jiff::civil::DateTime>() {
        return dt.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    if let Ok(d) = v.parse::<jiff::civil::Date>() {
        return d.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    None
}

fn parse_filter(pairs: &[(String, String)]) -> Result<Filter, Response> {
    let time = |key: &str| -> Result<Option<Timestamp>, Response> {
        match query_get(pairs, key) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                error(StatusCode::UNPROCESSABLE_ENTITY, &format!("{key} must be a valid ISO 8601 date/time"))
            }),
        }
    };
    let created_from = time("created_from")?;
    let created_to = time("created_to")?;
    let finished_from = time("finished_from")?;
    let states = query_list(pairs, "state");
    for s in &states {
        if s != "finished" && BuildState::parse(s).is_none() {
            return Err(error(StatusCode::UNPROCESSABLE_ENTITY, &format!("Invalid build state: {s}")));
        }
    }
    let meta = pairs
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("meta_data[").and_then(|r| r.strip_suffix(']')).map(|key| (key.to_string(), v.clone()))
        })
        .collect();
    Ok(Filter {
        states,
        branches: query_list(pairs, "branch"),
        commits: query_list(pairs, "commit"),
        creator: query_get(pairs, "creator").map(str::to_string),
        meta,
        created_from,
        created_to,
        finished_from,
    })
}

impl Filter {
    fn matches(&self, b: &Build) -> bool {
        if !self.states.is_empty() && !self.states.iter().any(|s| b.state.matches_filter(s)) {
            return false;
        }
        if !self.branches.is_empty() && !self.branches.iter().any(|p| crate::glob::wildcard_match(p, &b.branch)) {
            return false;
        }
        if !self.commits.is_empty() && !self.commits.contains(&b.commit) {
            return false;
        }
        if let Some(c) = &self.creator
            && b.creator.to_string() != *c
        {
            return false;
        }
        if !self.meta.iter().all(|(k, v)| b.meta_data.get(k).is_some_and(|x| x == v)) {
            return false;
        }
        if self.created_from.is_some_and(|t| b.created_at < t) {
            return false;
        }
        if self.created_to.is_some_and(|t| b.created_at >= t) {
            return false;
        }
        if let Some(t) = self.finished_from
            && b.finished_at.is_none_or(|f| f < t)
        {
            return false;
        }
        true
    }
}

fn list(sim: &Sim, uri: &Uri, pipeline: Option<&str>) -> Response {
    let pairs = query_pairs(uri);
    let filter = match parse_filter(&pairs) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (page, per_page) = super::page_params(&pairs);
    let inner = sim.lock();
    if let Some(p) = pipeline
        && !inner.pipelines.contains_key(p)
    {
        return not_found("No pipeline found");
    }
    // All three build listings document `400 {"message": "Listing builds this deep is not
    // supported. Please narrow your query using filters such as branch or created_from."}`;
    // the threshold is not documented (`list_depth_limit`, default page × per_page > 1000).
    if (page as u64).saturating_mul(per_page as u64) > inner.list_depth_limit {
        return error(
            StatusCode::BAD_REQUEST,
            "Listing builds this deep is not supported. Please narrow your query using filters such as branch or created_from.",
        );
    }
    // newest first; only the requested page is rendered
    let ids: Vec<uuid::Uuid> = inner
        .build_order
        .iter()
        .rev()
        .filter(|id| {
            inner.builds.get(id).is_some_and(|b| pipeline.is_none_or(|p| b.pipeline == p) && filter.matches(b))
        })
        .copied()
        .collect();
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    let include_jobs = !query_true(&pairs, "exclude_jobs");
    let include_pipeline = !query_true(&pairs, "exclude_pipeline");
    let include_retried = query_true(&pairs, "include_retried_jobs");
    let start = (page - 1).saturating_mul(per_page);
    let mut items: Vec<Value> = vec![Value::Null; ids.len()];
    for (i, id) in ids.iter().enumerate().skip(start).take(per_page) {
        if let Some(b) = inner.builds.get(id) {
            items[i] = ctx.build_with(b, include_jobs, include_pipeline, include_retried);
        }
    }
    drop(inner);
    paginated(sim, uri, &pairs, items)
}

pub async fn list_all(State(sim): State<Arc<Sim>>, uri: Uri) -> Response {
    list(&sim, &uri, None)
}

pub async fn list_org(State(sim): State<Arc<Sim>>, ApiPath(org): ApiPath<String>, uri: Uri) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    list(&sim, &uri, None)
}

pub async fn list_pipeline(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline)): ApiPath<(String, String)>,
    uri: Uri,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    list(&sim, &uri, Some(&pipeline))
}

fn find_job_log(sim: &Sim, org: &str, pipeline: &str, number: &str, job: &str) -> Result<(String, String), Response> {
    check_org(sim, org)?;
    let inner = sim.lock();
    let b = find_build(&inner, pipeline, number)?;
    let j = job
        .parse::<Uuid>()
        .ok()
        .filter(|j| b.jobs.contains(j))
        .and_then(|j| inner.jobs.get(&j))
        .ok_or_else(|| not_found("No job found"))?;
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    Ok((format!("{}/log", ctx.job_url(b, j.id)), j.log.clone()))
}

pub async fn job_log(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number, job)): ApiPath<(String, String, String, String)>,
) -> Response {
    match find_job_log(&sim, &org, &pipeline, &number, &job) {
        Ok((url, content)) => json_response(
            StatusCode::OK,
            &json!({"url": url, "content": content, "size": content.len(), "header_times": []}),
        ),
        Err(r) => r,
    }
}

pub async fn job_log_txt(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number, job)): ApiPath<(String, String, String, String)>,
) -> Response {
    match find_job_log(&sim, &org, &pipeline, &number, &job) {
        Ok((_, content)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], content).into_response()
        }
        Err(r) => r,
    }
}
