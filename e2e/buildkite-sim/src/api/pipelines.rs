//! Pipelines (REST "Pipelines API": list, get, create a YAML pipeline, update, delete) and
//! the organization's pipeline settings (REST "Pipeline settings API").

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::builds::required_string;
use super::{
    ApiPath, AuthToken, check_org, json_object, json_response, not_found, paginated, query_get, query_pairs,
    validation_failed,
};
use crate::config::DEFAULT_JOB_EXPIRY_SECS;
use crate::render::Ctx;
use crate::sim::Sim;
use crate::state::{FieldError, Inner, PipelineSpec, parse_configuration};

/// The documented error item for a missing or blank `configuration` (REST "Create a YAML
/// pipeline" → Error responses).
const CONFIGURATION_MISSING: &str = "Step configuration is missing, expected `steps: { yaml: \"...\" }`";

/// `Some(None)`: the field is `null`; `None`: absent. A wrong type is a field error.
fn opt_string(body: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<Option<String>> {
    match body.get(key) {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(_) => {
            errors.push(FieldError::new(key, "invalid"));
            None
        }
    }
}

fn opt_bool(body: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<bool> {
    match body.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errors.push(FieldError::new(key, "invalid"));
            None
        }
    }
}

/// A blank filter is no filter.
fn filter(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn configuration(
    body: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<(String, serde_yaml::Value, crate::steps::Settings)> {
    let text = match body.get("configuration") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("configuration", CONFIGURATION_MISSING));
            return None;
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.push(FieldError::new("configuration", CONFIGURATION_MISSING));
            return None;
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            errors.push(FieldError::new("configuration", "invalid"));
            return None;
        }
    };
    match parse_configuration(&text) {
        Ok((template, settings)) => Some((text, template, settings)),
        Err(e) => {
            // Buildkite documents only `{message: "Validation Failed", errors: […]}` here;
            // the item's wording is the simulator's (README "Deviations").
            errors.push(FieldError::with_message("configuration", "invalid", e.to_string()));
            None
        }
    }
}

fn cluster_from(inner: &Inner, v: &str, errors: &mut Vec<FieldError>) -> Option<Uuid> {
    match v.parse::<Uuid>().ok().filter(|id| inner.clusters.iter().any(|c| c.id == *id)) {
        Some(id) => Some(id),
        None => {
            errors.push(FieldError::with_message("cluster_id", "invalid", "Cluster not found"));
            None
        }
    }
}

fn creator(inner: &Inner, token: Option<&Extension<AuthToken>>) -> Option<Uuid> {
    token.and_then(|t| inner.user_for_token(&t.0.0)).map(|u| u.id)
}

/// `GET /v2/organizations/{org}/pipelines` (`name`, `repository`: partial, case-insensitive).
pub async fn list(State(sim): State<Arc<Sim>>, ApiPath(org): ApiPath<String>, uri: Uri) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let pairs = query_pairs(&uri);
    let name = query_get(&pairs, "name").map(str::to_ascii_lowercase);
    let repo = query_get(&pairs, "repository").map(str::to_ascii_lowercase);
    let items: Vec<Value> = {
        let inner = sim.lock();
        let ctx = Ctx { inner: &inner, urls: &sim.urls };
        inner
            .pipelines
            .values()
            .filter(|p| name.as_deref().is_none_or(|n| p.name.to_ascii_lowercase().contains(n)))
            .filter(|p| repo.as_deref().is_none_or(|r| p.repository.to_ascii_lowercase().contains(r)))
            .map(|p| ctx.pipeline(p, true))
            .collect()
    };
    paginated(&sim, &uri, &pairs, items)
}

pub async fn get(State(sim): State<Arc<Sim>>, ApiPath((org, pipeline)): ApiPath<(String, String)>) -> Response {
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

/// `POST /v2/organizations/{org}/pipelines` (REST "Create a YAML pipeline"): `name`,
/// `repository` and `configuration` required, `cluster_id` required unless the organization
/// has a default cluster; the slug is derived from the name unless `slug` is given.
pub async fn create(
    State(sim): State<Arc<Sim>>,
    ApiPath(org): ApiPath<String>,
    token: Option<Extension<AuthToken>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    let name = required_string(&body, "name", &mut errors);
    let repository = required_string(&body, "repository", &mut errors);
    let config = configuration(&body, &mut errors);
    let description = opt_string(&body, "description", &mut errors).flatten();
    let default_branch = opt_string(&body, "default_branch", &mut errors)
        .flatten()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "main".into());
    let custom_slug = opt_string(&body, "slug", &mut errors).flatten();
    let cluster = opt_string(&body, "cluster_id", &mut errors).flatten();
    let skip_queued = opt_bool(&body, "skip_queued_branch_builds", &mut errors).unwrap_or(false);
    let skip_filter = filter(opt_string(&body, "skip_queued_branch_builds_filter", &mut errors).flatten());
    let cancel_running = opt_bool(&body, "cancel_running_branch_builds", &mut errors).unwrap_or(false);
    let cancel_filter = filter(opt_string(&body, "cancel_running_branch_builds_filter", &mut errors).flatten());
    let branch_configuration = filter(opt_string(&body, "branch_configuration", &mut errors).flatten());

    // Docs "Deriving a pipeline slug from the pipeline's name".
    let slug = match custom_slug {
        Some(s) if crate::steps::valid_slug(&s) => Some(s),
        Some(_) => {
            errors.push(FieldError::new("slug", "invalid"));
            None
        }
        None if name.is_empty() => None,
        None => {
            let s = crate::steps::slug_from_name(&name);
            if s.is_none() {
                errors.push(FieldError::new("slug", "invalid"));
            }
            s
        }
    };
    {
        let mut inner = sim.lock();
        let cluster_id = match &cluster {
            Some(c) => cluster_from(&inner, c, &mut errors),
            None => match inner.default_cluster {
                Some(c) => Some(c),
                None => {
                    errors.push(FieldError::new("cluster_id", "missing_field"));
                    None
                }
            },
        };
        if let Some(s) = &slug
            && inner.pipelines.contains_key(s)
        {
            // "Any attempt to create a new pipeline with a name that matches an existing
            // pipeline's name, results in an error." (the item's wording is a guess)
            errors.push(FieldError::with_message("name", "already_exists", "Name has already been taken"));
        }
        let (Some(slug), Some(cluster_id), Some((configuration, template, settings)), true) =
            (slug, cluster_id, config, errors.is_empty())
        else {
            return validation_failed(&errors);
        };
        let created_by = creator(&inner, token.as_ref());
        inner.insert_pipeline(PipelineSpec {
            slug: slug.clone(),
            name,
            description,
            repository,
            default_branch,
            cluster_id,
            skip_queued_branch_builds: skip_queued,
            skip_queued_branch_builds_filter: skip_filter,
            cancel_running_branch_builds: cancel_running,
            cancel_running_branch_builds_filter: cancel_filter,
            branch_configuration,
            configuration,
            template,
            settings,
            timeout_overrides: Vec::new(),
            created_by,
        });
        let ctx = Ctx { inner: &inner, urls: &sim.urls };
        match inner.pipelines.get(&slug) {
            Some(p) => json_response(StatusCode::CREATED, &ctx.pipeline(p, true)),
            None => not_found("No pipeline found"),
        }
    }
}

/// `PATCH …/pipelines/{slug}`: the given fields change; `configuration` replaces the steps
/// (used by builds created afterwards). `steps` without `configuration` is refused.
pub async fn update(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline)): ApiPath<(String, String)>,
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
    let non_blank = |key: &str, errors: &mut Vec<FieldError>| match body.get(key) {
        None => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_) | Value::Null) => {
            errors.push(FieldError::new(key, "missing_field"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(key, "invalid"));
            None
        }
    };
    let name = non_blank("name", &mut errors);
    let repository = non_blank("repository", &mut errors);
    let default_branch = non_blank("default_branch", &mut errors);
    let config = if body.contains_key("configuration") {
        configuration(&body, &mut errors)
    } else {
        if body.contains_key("steps") {
            // REST "Update a pipeline": "This endpoint only rejects `steps` with a `422` error
            // when `configuration` is absent from the request."
            errors.push(FieldError::with_message(
                "steps",
                "invalid",
                "YAML pipelines are updated with `configuration`",
            ));
        }
        None
    };
    let description = opt_string(&body, "description", &mut errors);
    let cluster = match body.get("cluster_id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            // `null` would take the pipeline out of its cluster; the simulator has no
            // unclustered agents, so it refuses that (README "Deviations").
            errors.push(FieldError::new("cluster_id", "invalid"));
            None
        }
    };
    let skip_queued = opt_bool(&body, "skip_queued_branch_builds", &mut errors);
    let skip_filter = opt_string(&body, "skip_queued_branch_builds_filter", &mut errors);
    let cancel_running = opt_bool(&body, "cancel_running_branch_builds", &mut errors);
    let cancel_filter = opt_string(&body, "cancel_running_branch_builds_filter", &mut errors);
    let branch_configuration = opt_string(&body, "branch_configuration", &mut errors);

    let mut inner = sim.lock();
    let cluster_id = cluster.as_deref().and_then(|c| cluster_from(&inner, c, &mut errors));
    if !errors.is_empty() {
        return validation_failed(&errors);
    }
    let Some(p) = inner.pipelines.get_mut(&pipeline) else {
        return not_found("No pipeline found");
    };
    if p.archived_at.is_some() {
        // "Archived pipelines are read-only" (the refusal's wording is a guess).
        return super::error(StatusCode::UNPROCESSABLE_ENTITY, "This pipeline is archived and can't be edited");
    }
    if let Some(v) = name {
        p.name = v;
    }
    if let Some(v) = repository {
        p.repository = v;
    }
    if let Some(v) = default_branch {
        p.default_branch = v;
    }
    if let Some(v) = description {
        p.description = v;
    }
    if let Some(v) = cluster_id {
        p.cluster_id = v;
    }
    if let Some((text, template, settings)) = config {
        p.configuration = text;
        p.template = template;
        p.settings = settings;
        p.timeout_overrides.clear();
    }
    if let Some(v) = skip_queued {
        p.skip_queued_branch_builds = v;
    }
    if let Some(v) = skip_filter {
        p.skip_queued_branch_builds_filter = filter(v);
    }
    if let Some(v) = cancel_running {
        p.cancel_running_branch_builds = v;
    }
    if let Some(v) = cancel_filter {
        p.cancel_running_branch_builds_filter = filter(v);
    }
    if let Some(v) = branch_configuration {
        p.branch_configuration = filter(v);
    }
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    match inner.pipelines.get(&pipeline) {
        Some(p) => json_response(StatusCode::OK, &ctx.pipeline(p, true)),
        None => not_found("No pipeline found"),
    }
}

fn set_archived(sim: &Sim, org: &str, pipeline: &str, archive: bool) -> Response {
    if let Err(r) = check_org(sim, org) {
        return r;
    }
    let mut inner = sim.lock();
    let Some(p) = inner.pipelines.get_mut(pipeline) else {
        return not_found("No pipeline found");
    };
    // REST "Archive a pipeline" / "Unarchive a pipeline": 422 "Pipeline could not be
    // (un)archived." (here: when it already is / is not archived).
    match (archive, p.archived_at.is_some()) {
        (true, true) => return super::error(StatusCode::UNPROCESSABLE_ENTITY, "Pipeline could not be archived."),
        (false, false) => return super::error(StatusCode::UNPROCESSABLE_ENTITY, "Pipeline could not be unarchived."),
        (true, false) => p.archived_at = Some(jiff::Timestamp::now()),
        (false, true) => p.archived_at = None,
    }
    let ctx = Ctx { inner: &inner, urls: &sim.urls };
    match inner.pipelines.get(pipeline) {
        Some(p) => json_response(StatusCode::OK, &ctx.pipeline(p, true)),
        None => not_found("No pipeline found"),
    }
}

/// `POST …/pipelines/{slug}/archive` (scope `write_pipelines`): read-only, no builds.
pub async fn archive(State(sim): State<Arc<Sim>>, ApiPath((org, pipeline)): ApiPath<(String, String)>) -> Response {
    set_archived(&sim, &org, &pipeline, true)
}

/// `POST …/pipelines/{slug}/unarchive` (scope `write_pipelines`).
pub async fn unarchive(State(sim): State<Arc<Sim>>, ApiPath((org, pipeline)): ApiPath<(String, String)>) -> Response {
    set_archived(&sim, &org, &pipeline, false)
}

/// `DELETE …/pipelines/{slug}`: 204.
pub async fn delete(State(sim): State<Arc<Sim>>, ApiPath((org, pipeline)): ApiPath<(String, String)>) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    if sim.lock().pipelines.remove(&pipeline).is_none() {
        return not_found("No pipeline found");
    }
    let mut r = Response::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn settings_json(sim: &Sim, inner: &Inner) -> Value {
    let expiry = inner.job_expiry;
    let default_expiry = Duration::from_secs_f64(DEFAULT_JOB_EXPIRY_SECS);
    json!({
        "url": format!("{}/organizations/{}/pipeline-settings", sim.urls.v2(), inner.org.slug),
        "default_branch": "main",
        "default_cluster_id": inner.default_cluster,
        "default_timeout_in_minutes": null,
        "maximum_timeout_in_minutes": null,
        "scheduled_job_expiry_in_minutes":
            if expiry == default_expiry { Value::Null } else { json!(expiry.as_secs().div_ceil(60)) },
    })
}

/// `GET /v2/organizations/{org}/pipeline-settings` (scope `read_organization_settings`):
/// `default_cluster_id` is the organization's default cluster for new pipelines.
pub async fn settings(State(sim): State<Arc<Sim>>, ApiPath(org): ApiPath<String>) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    json_response(StatusCode::OK, &settings_json(&sim, &inner))
}

/// `PATCH …/pipeline-settings`: `default_cluster_id` (a cluster of this organization, or
/// `null`) and `scheduled_job_expiry_in_minutes` (positive, or `null` for the default).
pub async fn update_settings(
    State(sim): State<Arc<Sim>>,
    ApiPath(org): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let body = match json_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut errors = Vec::new();
    let mut inner = sim.lock();
    let cluster = match body.get("default_cluster_id") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => {
            let mut errs = Vec::new();
            let c = cluster_from(&inner, s, &mut errs);
            if c.is_none() {
                errors.push(FieldError::new("default_cluster_id", "invalid"));
            }
            c.map(Some)
        }
        Some(_) => {
            errors.push(FieldError::new("default_cluster_id", "invalid"));
            None
        }
    };
    let expiry = match body.get("scheduled_job_expiry_in_minutes") {
        None => None,
        Some(Value::Null) => Some(Duration::from_secs_f64(DEFAULT_JOB_EXPIRY_SECS)),
        Some(v) => match v.as_u64().filter(|m| *m > 0) {
            Some(m) => Some(Duration::from_secs(m.saturating_mul(60))),
            None => {
                errors.push(FieldError::new("scheduled_job_expiry_in_minutes", "invalid"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return validation_failed(&errors);
    }
    if let Some(c) = cluster {
        inner.default_cluster = c;
    }
    if let Some(e) = expiry {
        inner.job_expiry = e;
    }
    json_response(StatusCode::OK, &settings_json(&sim, &inner))
}
