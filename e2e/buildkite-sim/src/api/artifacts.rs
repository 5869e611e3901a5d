//! Artifacts: list per build / per job, get, delete, download (302 to the storage host).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::json;
use uuid::Uuid;

use super::{ApiPath, check_org, error, json_response, not_found, paginated, query_get, query_pairs};
use crate::model::{Artifact, Build};
use crate::render::Ctx;
use crate::sim::Sim;
use crate::state::Inner;

fn build_of<'a>(inner: &'a Inner, pipeline: &str, number: &str) -> Result<&'a Build, Response> {
    if !inner.pipelines.contains_key(pipeline) {
        return Err(not_found("No pipeline found"));
    }
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| inner.build_by_number(pipeline, n))
        .ok_or_else(|| not_found("No build found"))
}

fn job_in(b: &Build, job: &str) -> Result<Uuid, Response> {
    job.parse::<Uuid>().ok().filter(|j| b.jobs.contains(j)).ok_or_else(|| not_found("No job found"))
}

fn visible(inner: &Inner, build: Uuid) -> Vec<&Artifact> {
    inner
        .build_artifacts
        .get(&build)
        .map(|ids| ids.iter().filter_map(|id| inner.artifacts.get(id)).filter(|a| a.state != "deleted").collect())
        .unwrap_or_default()
}

fn list_response(sim: &Sim, uri: &Uri, inner: &Inner, arts: Vec<&Artifact>) -> Response {
    let pairs = query_pairs(uri);
    let glob = query_get(&pairs, "path").map(str::to_string);
    // `state`: "Valid values: new, error, finished, deleted, expired. Returns a 422
    // Unprocessable Entity error for unknown values." (REST "List artifacts for a build").
    let state = query_get(&pairs, "state").filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(s) = &state
        && !crate::model::ARTIFACT_STATES.contains(&s.as_str())
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, &format!("Invalid artifact state: {s}"));
    }
    let ctx = Ctx { inner, urls: &sim.urls };
    let items = arts
        .into_iter()
        .filter(|a| glob.as_deref().is_none_or(|g| crate::glob::wildcard_match(g, &a.path)))
        .filter(|a| state.as_deref().is_none_or(|s| a.state == s))
        .map(|a| ctx.artifact(a))
        .collect();
    paginated(sim, uri, &pairs, items)
}

pub async fn list_build(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number)): ApiPath<(String, String, String)>,
    uri: Uri,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let b = match build_of(&inner, &pipeline, &number) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let arts = visible(&inner, b.id);
    list_response(&sim, &uri, &inner, arts)
}

pub async fn list_job(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number, job)): ApiPath<(String, String, String, String)>,
    uri: Uri,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let b = match build_of(&inner, &pipeline, &number) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let job = match job_in(b, &job) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let arts = visible(&inner, b.id).into_iter().filter(|a| a.job == job).collect();
    list_response(&sim, &uri, &inner, arts)
}

pub async fn list_job_org(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, job)): ApiPath<(String, String)>,
    uri: Uri,
) -> Response {
    if let Err(r) = check_org(&sim, &org) {
        return r;
    }
    let inner = sim.lock();
    let Some(j) = job.parse::<Uuid>().ok().and_then(|j| inner.jobs.get(&j)) else {
        return not_found("No job found");
    };
    let (build, job) = (j.build, j.id);
    let arts = visible(&inner, build).into_iter().filter(|a| a.job == job).collect();
    list_response(&sim, &uri, &inner, arts)
}

/// Finds an artifact of a job (optionally checking the build path).
fn find_artifact(inner: &Inner, build: Option<(&str, &str)>, job: &str, artifact: &str) -> Result<Uuid, Response> {
    let job_id = match build {
        Some((pipeline, number)) => {
            let b = build_of(inner, pipeline, number)?;
            job_in(b, job)?
        }
        None => {
            job.parse::<Uuid>().ok().filter(|j| inner.jobs.contains_key(j)).ok_or_else(|| not_found("No job found"))?
        }
    };
    artifact
        .parse::<Uuid>()
        .ok()
        .and_then(|id| inner.artifacts.get(&id))
        .filter(|a| a.job == job_id && a.state != "deleted")
        .map(|a| a.id)
        .ok_or_else(|| not_found("No artifact found"))
}

fn get_impl(sim: &Sim, org: &str, build: Option<(&str, &str)>, job: &str, artifact: &str) -> Response {
    if let Err(r) = check_org(sim, org) {
        return r;
    }
    let inner = sim.lock();
    match find_artifact(&inner, build, job, artifact) {
        Ok(id) => match inner.artifacts.get(&id) {
            Some(a) => {
                let ctx = Ctx { inner: &inner, urls: &sim.urls };
                json_response(StatusCode::OK, &ctx.artifact(a))
            }
            None => not_found("No artifact found"),
        },
        Err(r) => r,
    }
}

fn delete_impl(sim: &Sim, org: &str, build: Option<(&str, &str)>, job: &str, artifact: &str) -> Response {
    if let Err(r) = check_org(sim, org) {
        return r;
    }
    let mut inner = sim.lock();
    match find_artifact(&inner, build, job, artifact) {
        Ok(id) => {
            if let Some(a) = inner.artifacts.get_mut(&id) {
                a.state = "deleted";
                a.content = bytes::Bytes::new();
            }
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(r) => r,
    }
}

/// `302` to a signed storage URL, whatever the artifact's state (the download endpoint
/// documents no other answer); the storage host only holds `finished` artifacts, so the
/// URL of a `new`, `error` or `expired` one answers `404 NoSuchKey` (see README).
fn download_impl(sim: &Sim, org: &str, build: Option<(&str, &str)>, job: &str, artifact: &str) -> Response {
    if let Err(r) = check_org(sim, org) {
        return r;
    }
    let inner = sim.lock();
    let (id, filename) = match find_artifact(&inner, build, job, artifact) {
        Ok(id) => match inner.artifacts.get(&id) {
            Some(a) => (id, a.filename().to_string()),
            None => return not_found("No artifact found"),
        },
        Err(r) => return r,
    };
    drop(inner);
    let url = crate::storage::signed_url(sim, id, &filename);
    let mut resp = json_response(StatusCode::FOUND, &json!({ "url": url }));
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub async fn get(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number, job, artifact)): ApiPath<(String, String, String, String, String)>,
) -> Response {
    get_impl(&sim, &org, Some((&pipeline, &number)), &job, &artifact)
}

pub async fn delete(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number, job, artifact)): ApiPath<(String, String, String, String, String)>,
) -> Response {
    delete_impl(&sim, &org, Some((&pipeline, &number)), &job, &artifact)
}

pub async fn download(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, pipeline, number, job, artifact)): ApiPath<(String, String, String, String, String)>,
) -> Response {
    download_impl(&sim, &org, Some((&pipeline, &number)), &job, &artifact)
}

pub async fn get_org(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, job, artifact)): ApiPath<(String, String, String)>,
) -> Response {
    get_impl(&sim, &org, None, &job, &artifact)
}

pub async fn delete_org(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, job, artifact)): ApiPath<(String, String, String)>,
) -> Response {
    delete_impl(&sim, &org, None, &job, &artifact)
}

pub async fn download_org(
    State(sim): State<Arc<Sim>>,
    ApiPath((org, job, artifact)): ApiPath<(String, String, String)>,
) -> Response {
    download_impl(&sim, &org, None, &job, &artifact)
}
