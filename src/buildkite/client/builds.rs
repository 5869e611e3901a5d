//! The build and artifact calls: create, get, list and cancel builds; list and download
//! artifacts.

use http::header::LOCATION;
use http::{Method, StatusCode};
use reqwest::Url;
use serde_json::Value;
use tokio::time::Instant;

use super::super::budget::Priority;
use super::super::error::{Error, Result};
use super::super::types::{Artifact, Build, BuildQuery, CancelOutcome, Listing, NewBuild};
use super::super::wire;
use super::graphql::ops::{build_graphql_id, graphql_can_create};
use super::graphql::{CANCEL_COST, GqlError, Route, full_read_cost};
use super::{
    Auth, Call, Client, MAX_META_DATA_VALUE, Mode, ReadError, Reservation, error_chain, read_capped, transport_kind,
};

impl Client {
    // ----- builds -------------------------------------------------------------------------

    /// Creates a build (`POST …/pipelines/{pipeline}/builds`); `pipeline` `None` uses the
    /// default pipeline.
    ///
    /// Never retried once the request may have reached Buildkite: a timeout, a dropped
    /// connection, a 5xx or an unreadable 2xx answer is [`Error::Ambiguous`]; then look the
    /// build up by the meta-data you gave it before creating it again. Connection failures
    /// (nothing sent) are retried; a 429 waits for the reset and retries once.
    pub async fn create_build(&self, pipeline: Option<&str>, build: &NewBuild, priority: Priority) -> Result<Build> {
        self.create_build_with(pipeline, build, priority, None).await
    }

    /// [`Client::create_build`] sent on a [`Reservation`] (no second wait for a budget).
    pub async fn create_build_reserved(
        &self,
        pipeline: Option<&str>,
        build: &NewBuild,
        reservation: Reservation,
    ) -> Result<Build> {
        let priority = reservation.priority;
        self.create_build_with(pipeline, build, priority, Some(reservation.route)).await
    }

    async fn create_build_with(
        &self,
        pipeline: Option<&str>,
        build: &NewBuild,
        priority: Priority,
        route: Option<Route>,
    ) -> Result<Build> {
        const EP: &str = "create_build";
        let pipeline = self.pipeline(pipeline, EP)?;
        if build.commit.trim().is_empty() || build.branch.trim().is_empty() {
            return Err(Error::InvalidRequest { endpoint: EP, message: "commit and branch are required".into() });
        }
        if let Some((k, _)) = build.meta_data.iter().find(|(_, v)| v.len() > MAX_META_DATA_VALUE) {
            return Err(Error::InvalidRequest {
                endpoint: EP,
                message: format!("meta-data value of {k:?} is larger than {MAX_META_DATA_VALUE} bytes"),
            });
        }
        let route = match route {
            Some(r) => r,
            None => self.create_route(priority).await,
        };
        let permit = match route {
            Route::Rest(p) => Some(p),
            Route::Graphql(p)
                if !graphql_can_create(build, self.graphql_state().and_then(|g| g.pipeline(pipeline)).as_ref()) =>
            {
                drop(p);
                self.note_fallback(
                    EP,
                    "BuildCreateInput cannot say ignorePipelineBranchFilters (the pipeline's branch filter is unknown or refuses the branch) or cleanCheckout",
                );
                None
            }
            Route::Graphql(p) => match self.gql_create(pipeline, build, p).await {
                Ok(b) => return Ok(b),
                // The build may exist: the caller looks it up (whatever the transport).
                Err(GqlError::Ambiguous(reason)) => return Err(self.ambiguous("graphql_create_build", reason)),
                Err(GqlError::NotDone(why)) => {
                    self.note_fallback(EP, &why);
                    None
                }
            },
        };
        let body = self.json_body(EP, build)?;
        let url = self.org_url(&["pipelines", pipeline, "builds"]);
        let call = Call {
            endpoint: EP,
            method: Method::POST,
            url,
            body: Some(body),
            priority,
            mode: Mode::CreateOnce,
            auth: Auth::Api,
        };
        let ans = self.execute_with(&call, permit).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode(EP, &ans.body).map_err(|e| {
            self.ambiguous(EP, format!("Buildkite answered {} but the build could not be decoded: {e}", ans.status))
        })
    }

    /// Gets a build by number (`GET …/builds/{number}`); `exclude_jobs` makes it cheap.
    pub async fn get_build(&self, pipeline: Option<&str>, number: u64, exclude_jobs: bool) -> Result<Build> {
        const EP: &str = "get_build";
        let pipeline = self.pipeline(pipeline, EP)?;
        let permit = match self.read_route(full_read_cost(!exclude_jobs)).await {
            Route::Rest(p) => Some(p),
            Route::Graphql(p) => match self.gql_get_build(pipeline, number, !exclude_jobs, p).await {
                Ok(Some(b)) => return Ok(b),
                // Unknown to GraphQL: REST's answer (404, or the build) is the one to trust.
                Ok(None) => {
                    self.note_fallback(EP, "GraphQL knows no such build");
                    None
                }
                Err(e) => {
                    self.note_fallback(EP, &format!("{e:?}"));
                    None
                }
            },
        };
        let mut url = self.org_url(&["pipelines", pipeline, "builds", &number.to_string()]);
        if exclude_jobs {
            url.query_pairs_mut().append_pair("exclude_jobs", "true");
        }
        let call = Call {
            endpoint: EP,
            method: Method::GET,
            url,
            body: None,
            priority: Priority::Refresh,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        };
        let ans = self.execute_with(&call, permit).await?;
        if !ans.status.is_success() {
            return Err(self.api_error(EP, &ans));
        }
        self.decode(EP, &ans.body)
    }

    /// Lists builds of the organization or of one pipeline, following `Link: rel="next"`.
    pub async fn list_builds(&self, query: &BuildQuery, priority: Priority) -> Result<Listing<Build>> {
        const EP: &str = "list_builds";
        let mut url = match query.pipeline.as_deref() {
            Some(p) if !p.is_empty() => self.org_url(&["pipelines", p, "builds"]),
            _ => self.org_url(&["builds"]),
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("per_page", &query.per_page.unwrap_or(100).clamp(1, 100).to_string());
            for s in &query.states {
                q.append_pair("state[]", s);
            }
            for (k, v) in &query.meta_data {
                q.append_pair(&format!("meta_data[{k}]"), v);
            }
            if let Some(b) = &query.branch {
                q.append_pair("branch", b);
            }
            if let Some(c) = &query.commit {
                q.append_pair("commit", c);
            }
            if let Some(t) = query.created_from {
                q.append_pair("created_from", &t.to_string());
            }
            if let Some(t) = query.created_to {
                q.append_pair("created_to", &t.to_string());
            }
            if let Some(t) = query.finished_from {
                q.append_pair("finished_from", &t.to_string());
            }
            if query.exclude_jobs {
                q.append_pair("exclude_jobs", "true");
            }
            if query.include_retried_jobs {
                q.append_pair("include_retried_jobs", "true");
            }
            if query.exclude_pipeline {
                q.append_pair("exclude_pipeline", "true");
            }
        }
        let max_pages = query.max_pages.unwrap_or(self.inner.cfg.max_pages).max(1);
        self.list_pages(EP, url, priority, max_pages).await
    }

    /// Cancels a build (`PUT …/builds/{number}/cancel`). A 422 (finished, or already
    /// canceling: also what a retry after a lost answer sees) is
    /// [`CancelOutcome::NotCancelable`]; refresh the build to learn its state.
    pub async fn cancel_build(&self, pipeline: Option<&str>, number: u64, priority: Priority) -> Result<CancelOutcome> {
        self.cancel_build_id(pipeline, number, None, priority).await
    }

    /// [`Client::cancel_build`] of a build whose id (REST `id`, a UUID) or GraphQL id is
    /// known: then it may go through GraphQL (`buildCancel`). A GraphQL error sends it over
    /// REST, whose answer says whether the build had finished or is gone.
    pub async fn cancel_build_id(
        &self,
        pipeline: Option<&str>,
        number: u64,
        id: Option<(&str, Option<&str>)>,
        priority: Priority,
    ) -> Result<CancelOutcome> {
        const EP: &str = "cancel_build";
        let pipeline = self.pipeline(pipeline, EP)?;
        let gid = id.and_then(|(uuid, gid)| build_graphql_id(uuid, gid));
        let permit = match gid {
            Some(gid) => match self.route(priority, CANCEL_COST).await {
                Route::Rest(p) => Some(p),
                Route::Graphql(p) => match self.gql_cancel(pipeline, &gid, p).await {
                    Ok(outcome) => return Ok(outcome),
                    Err(e) => {
                        self.note_fallback(EP, &format!("{e:?}"));
                        None
                    }
                },
            },
            None => None,
        };
        let url = self.org_url(&["pipelines", pipeline, "builds", &number.to_string(), "cancel"]);
        let call = Call {
            endpoint: EP,
            method: Method::PUT,
            url,
            body: None,
            priority,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        };
        let ans = self.execute_with(&call, permit).await?;
        match ans.status {
            s if s.is_success() => Ok(CancelOutcome::Canceled(Box::new(self.decode(EP, &ans.body)?))),
            StatusCode::UNPROCESSABLE_ENTITY => {
                Ok(CancelOutcome::NotCancelable { message: self.inner.redactor.clean(wire::answer_message(&ans.body)) })
            }
            StatusCode::NOT_FOUND => Ok(CancelOutcome::NotFound),
            _ => Err(self.api_error(EP, &ans)),
        }
    }

    // ----- artifacts ------------------------------------------------------------------------

    /// Lists the artifacts of a build (`GET …/builds/{number}/artifacts`).
    pub async fn list_artifacts(&self, pipeline: Option<&str>, number: u64) -> Result<Listing<Artifact>> {
        const EP: &str = "list_artifacts";
        let pipeline = self.pipeline(pipeline, EP)?;
        let mut url = self.org_url(&["pipelines", pipeline, "builds", &number.to_string(), "artifacts"]);
        url.query_pairs_mut().append_pair("per_page", "100");
        self.list_pages(EP, url, Priority::Refresh, self.inner.cfg.max_pages).await
    }

    /// Lists the artifacts of one job (`GET …/builds/{number}/jobs/{job}/artifacts`).
    pub async fn list_job_artifacts(
        &self,
        pipeline: Option<&str>,
        number: u64,
        job_id: &str,
    ) -> Result<Listing<Artifact>> {
        const EP: &str = "list_job_artifacts";
        let pipeline = self.pipeline(pipeline, EP)?;
        let mut url =
            self.org_url(&["pipelines", pipeline, "builds", &number.to_string(), "jobs", job_id, "artifacts"]);
        url.query_pairs_mut().append_pair("per_page", "100");
        self.list_pages(EP, url, Priority::Refresh, self.inner.cfg.max_pages).await
    }

    /// Downloads an artifact, at most `max_bytes`.
    ///
    /// Asks the API for the download (`download_url`, which answers `302`) without following
    /// the redirect, then fetches the storage location (`Location`, or the body's `url`) with
    /// a separate client that never sends the API token. Checks `sha1sum` when present.
    /// Counts one request against the budget per attempt; the storage fetch is not a
    /// Buildkite API request.
    pub async fn download_artifact(&self, artifact: &Artifact, max_bytes: u64) -> Result<Vec<u8>> {
        const EP: &str = "download_artifact";
        let what = || format!("artifact {}", artifact.path);
        if artifact.file_size.is_some_and(|n| n > max_bytes) {
            return Err(Error::TooLarge { endpoint: EP, what: what(), limit: max_bytes });
        }
        let Some(download_url) = artifact.download_url.as_deref().filter(|u| !u.is_empty()) else {
            return Err(Error::Download(format!("{} has no download_url", what())));
        };
        let download_url = self.inner.api_base.join(download_url).map_err(|e| Error::UnsafeUrl {
            endpoint: EP,
            what: "the artifact's download_url",
            reason: format!("invalid URL: {e}"),
        })?;
        if !wire::same_origin(&download_url, &self.inner.api_base) {
            return Err(Error::UnsafeUrl {
                endpoint: EP,
                what: "the artifact's download_url",
                reason: format!("it is on {}, not on the API host", download_url.host_str().unwrap_or("?")),
            });
        }
        let mut retries = 0u32;
        loop {
            let ans = self.get(EP, download_url.clone(), Priority::Refresh).await?;
            let location = if ans.status.is_redirection() {
                ans.headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string)
            } else if ans.status.is_success() {
                serde_json::from_slice::<Value>(&ans.body)
                    .ok()
                    .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_string))
            } else {
                return Err(self.api_error(EP, &ans));
            };
            let location = location
                .or_else(|| {
                    serde_json::from_slice::<Value>(&ans.body)
                        .ok()
                        .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_string))
                })
                .ok_or_else(|| {
                    Error::Download(format!("answer {} for {} carries no storage location", ans.status, what()))
                })?;
            let target = download_url
                .join(&location)
                .map_err(|_| Error::Download(format!("storage location of {} is not a valid URL", what())))?;
            if !matches!(target.scheme(), "http" | "https") {
                return Err(Error::Download(format!("storage location of {} is not an http(s) URL", what())));
            }
            match self.fetch_storage(target, max_bytes, &what()).await {
                Ok(bytes) => {
                    if let Some(expected) = artifact.sha1sum.as_deref().filter(|s| !s.is_empty()) {
                        let actual = sha1_smol::Sha1::from(&bytes).digest().to_string();
                        if !actual.eq_ignore_ascii_case(expected) {
                            return Err(Error::Checksum {
                                path: artifact.path.clone(),
                                expected: expected.into(),
                                actual,
                            });
                        }
                    }
                    return Ok(bytes);
                }
                Err((e, retryable)) => {
                    if !retryable || retries >= self.inner.cfg.max_retries {
                        return Err(e);
                    }
                    retries += 1;
                    self.note_retry(EP, retries, "storage fetch failed");
                    tokio::time::sleep(self.backoff(retries, None)).await;
                }
            }
        }
    }

    /// GETs a storage URL without any credential. Errors never contain the URL (it is
    /// signed). The bool says whether a new attempt may help.
    async fn fetch_storage(&self, url: Url, max_bytes: u64, what: &str) -> std::result::Result<Vec<u8>, (Error, bool)> {
        const EP: &str = "artifact_storage";
        let started = Instant::now();
        let resp = match self.inner.storage_http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                self.observe(EP, None, started.elapsed());
                let e = e.without_url();
                let msg = format!("fetching {what} from storage: {}: {}", transport_kind(&e), error_chain(&e));
                return Err((Error::Download(self.inner.redactor.clean(msg)), true));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let body = read_capped(resp, 64 * 1024).await.unwrap_or_default();
            self.observe(EP, Some(status.as_u16()), started.elapsed());
            let msg = format!("storage answered {status} for {what}: {}", wire::answer_message(&body));
            return Err((Error::Download(self.inner.redactor.clean(msg)), status.is_server_error()));
        }
        let body = read_capped(resp, max_bytes).await;
        self.observe(EP, Some(status.as_u16()), started.elapsed());
        match body {
            Ok(b) => Ok(b),
            Err(ReadError::TooLarge) => Err((
                Error::TooLarge { endpoint: "download_artifact", what: what.to_string(), limit: max_bytes },
                false,
            )),
            Err(ReadError::Transport(e)) => {
                let e = e.without_url();
                let msg = format!("reading {what} from storage: {}: {}", transport_kind(&e), error_chain(&e));
                Err((Error::Download(self.inner.redactor.clean(msg)), true))
            }
        }
    }
}
