//! Buildkite's GraphQL API as a second transport next to REST.
//!
//! REST answers one token at most 50 requests a minute (the `rest_user` scope); GraphQL
//! has a budget of its own per organization, in complexity points per window (docs
//! "GraphQL resource limits"), with no per-user limit. Creates, cancels and build reads go
//! through GraphQL while three things hold, and fall back to REST *per operation* otherwise:
//!
//! * **the token may use it**: a 401 or 403 from the GraphQL endpoint (GraphQL access is a
//!   separate switch of an API token), or no connection to it, sends everything over REST
//!   for [`Config::graphql_refusal_backoff`](super::super::Config::graphql_refusal_backoff),
//!   then GraphQL is tried again;
//! * **its points budget allows it now** ([`PointsBudget`]: the `RateLimit-*` headers of
//!   GraphQL answers, the requested complexity of each query reserved before it is sent,
//!   creates and cancels before reads): when REST can send sooner, REST sends;
//! * **the operation exists in GraphQL**: `BuildCreateInput` has no
//!   `ignorePipelineBranchFilters` and no `cleanCheckout`, so such a create goes over REST.
//!
//! A GraphQL error (a refused mutation, a validation error, the single-query complexity
//! limit) means nothing was done: the same operation is sent over REST, whose answer is the
//! one the caller classifies. **Exactly once** holds across both paths: a create that may
//! have reached Buildkite (timeout, dropped connection, 5xx, an unreadable answer) is
//! [`Error::Ambiguous`] whatever the transport, and is never sent again before the caller
//! looked the build up by its meta-data.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use reqwest::Url;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::super::budget::{PointsBudget, PointsConfig, PointsPermit, Priority, RateLimitHeaders};
use super::super::config::Config;
use super::super::error::TransportKind;
use super::{Client, MAX_API_BODY, ReadError, error_chain, read_capped, transport_kind};

pub(crate) mod map;
pub(crate) mod ops;
#[cfg(test)]
mod tests;

pub use ops::Route;

/// Cost of the pipeline id look-up: `pipeline` (1).
pub(crate) const PIPELINE_ID_COST: u64 = 1;
/// Cost of `buildCreate { build { … } }`: the payload (1) and the build (1).
pub(crate) const CREATE_COST: u64 = 2;
/// Cost of `buildCancel { build { … } }`.
pub(crate) const CANCEL_COST: u64 = 2;
/// Meta-data entries a full read asks for (benchkite sets 6; the runner 2 more).
pub(crate) const META_FIRST: u64 = 50;
/// Jobs a full read asks for (benchkite's pipelines have one command step; retries add).
pub(crate) const JOBS_FIRST: u64 = 10;
/// Builds per batched read.
pub(crate) const BATCH: usize = 100;

/// Requested complexity of one build's full read: the build (1), its pipeline (1), the
/// meta-data connection (1, edges 1, `first` nodes), and with jobs the job connection (1,
/// edges 1, `first` × (job 1 + agent 1)).
pub(crate) const fn full_read_cost(jobs: bool) -> u64 {
    let base = 1 + 1 + (2 + META_FIRST);
    if jobs { base + 2 + JOBS_FIRST * 2 } else { base }
}

/// Requested complexity of a state read of `n` builds: one object each.
pub(crate) fn state_read_cost(n: usize) -> u64 {
    n as u64
}

/// The GraphQL side of a client.
pub(crate) struct Graphql {
    pub(crate) url: Url,
    pub(crate) budget: PointsBudget,
    refused_until: Mutex<Option<Instant>>,
    backoff: Duration,
    /// Pipeline slug → GraphQL id (`buildCreate` names the pipeline by id) and branch filter.
    pipeline_ids: Mutex<HashMap<String, KnownPipeline>>,
}

impl Graphql {
    pub(crate) fn new(url: Url, cfg: &Config) -> Self {
        Graphql {
            url,
            budget: PointsBudget::new(PointsConfig {
                assumed_limit: cfg.graphql_assumed_points,
                share: cfg.graphql_share,
                window: cfg.graphql_window,
                reserve_fraction: cfg.priority_reserve,
                reset_margin: cfg.reset_margin,
            }),
            refused_until: Mutex::new(None),
            backoff: cfg.graphql_refusal_backoff,
            pipeline_ids: Mutex::new(HashMap::new()),
        }
    }

    /// Whether GraphQL may be tried now (not refused for the token recently).
    pub(crate) fn usable(&self) -> bool {
        let mut r = self.refused_until.lock().unwrap_or_else(|e| e.into_inner());
        match *r {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *r = None;
                true
            }
            None => true,
        }
    }

    fn refuse(&self, why: &str) {
        let mut r = self.refused_until.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::warn!(
                reason = why,
                retry_in_secs = self.backoff.as_secs(),
                "Buildkite GraphQL is not usable for this token; everything goes over REST until then"
            );
        }
        *r = Some(Instant::now() + self.backoff);
    }

    pub(crate) fn pipeline(&self, slug: &str) -> Option<KnownPipeline> {
        self.pipeline_ids.lock().unwrap_or_else(|e| e.into_inner()).get(slug).cloned()
    }

    fn remember_pipeline(&self, slug: &str, known: KnownPipeline) {
        self.pipeline_ids.lock().unwrap_or_else(|e| e.into_inner()).insert(slug.to_string(), known);
    }

    pub(crate) fn forget_pipeline(&self, slug: &str) {
        self.pipeline_ids.lock().unwrap_or_else(|e| e.into_inner()).remove(slug);
    }
}

/// What a REST answer told about a pipeline.
#[derive(Debug, Clone)]
pub(crate) struct KnownPipeline {
    pub(crate) id: String,
    /// Its `branch_configuration` as last read over REST (`None` when only looked up over
    /// GraphQL, which reads no filter).
    pub(crate) branch_filter: Option<Option<String>>,
}

/// Why a GraphQL operation did not give an answer to use.
#[derive(Debug)]
pub(crate) enum GqlError {
    /// Nothing was done (not sent, refused before execution, a GraphQL error): the same
    /// operation may be sent over REST.
    NotDone(String),
    /// A create may have been carried out: never send it again before a look-up.
    Ambiguous(String),
}

/// `Your organization has exceeded the limit of N complexity points. Please try again in
/// N seconds.` → the wait.
pub(crate) fn retry_in(message: &str) -> Option<Duration> {
    let (_, rest) = message.split_once("try again in ")?;
    let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
    n.parse::<u64>().ok().map(Duration::from_secs)
}

/// The `errors[].message`s of an answer, joined.
pub(crate) fn error_messages(v: &Value) -> Option<String> {
    let errs = v.get("errors")?.as_array()?;
    if errs.is_empty() {
        return None;
    }
    let msgs: Vec<&str> = errs.iter().filter_map(|e| e.get("message").and_then(Value::as_str)).collect();
    Some(if msgs.is_empty() { "GraphQL error".to_string() } else { msgs.join("; ") })
}

/// The actual complexity reported with `Buildkite-Include-Query-Stats` (top-level `stats`
/// or under `extensions`), if any.
pub(crate) fn actual_complexity(v: &Value) -> Option<u64> {
    let stats = v.get("stats").or_else(|| v.get("extensions").and_then(|e| e.get("stats")))?;
    stats.get("actualComplexity").and_then(Value::as_u64)
}

/// The actual complexity in the `RateLimit-Complexity-Actual` header, if any.
fn actual_header(headers: &HeaderMap) -> Option<u64> {
    headers.get("ratelimit-complexity-actual")?.to_str().ok()?.trim().parse().ok()
}

/// The `RateLimit-*` headers of a GraphQL answer. They describe the scope closest to
/// exhaustion (`RateLimit-Scope`: the organization's points, or the user's: 5,000 per 5
/// minutes by default), which is the one that binds; `RateLimit-User-*`, when sent, wins
/// when it has less left.
fn points_headers(headers: &HeaderMap) -> super::super::budget::ScopeHeaders {
    let h = RateLimitHeaders::parse(headers);
    match (h.org.remaining, h.user.remaining) {
        (Some(o), Some(u)) if u < o => h.user,
        (None, Some(_)) => h.user,
        _ => h.org,
    }
}

impl Client {
    pub(crate) fn graphql_state(&self) -> Option<&Graphql> {
        self.inner.graphql.as_ref()
    }

    /// Whether GraphQL is configured and currently usable for this token.
    pub fn graphql_active(&self) -> bool {
        self.inner.graphql.as_ref().is_some_and(Graphql::usable)
    }

    /// Sends one GraphQL operation on `permit` and returns its `data`. `create` marks an
    /// operation that must not happen twice. Never retried here: the caller falls back to
    /// REST (or looks the build up, for an ambiguous create).
    pub(crate) async fn gql(
        &self,
        endpoint: &'static str,
        query: &str,
        variables: Value,
        mut permit: PointsPermit,
        create: bool,
    ) -> std::result::Result<Value, GqlError> {
        let inner = &*self.inner;
        let Some(gql) = inner.graphql.as_ref() else {
            return Err(GqlError::NotDone("GraphQL is not configured".into()));
        };
        let body = json!({ "query": query, "variables": variables });
        let body = serde_json::to_vec(&body).map_err(|e| GqlError::NotDone(format!("encoding the query: {e}")))?;
        let req = inner
            .api_http
            .post(gql.url.clone())
            .header(AUTHORIZATION, inner.auth.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .header("Buildkite-Include-Query-Stats", "true")
            .body(body);
        let started = Instant::now();
        let requested = permit.cost();
        permit.mark_sent();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.observe(endpoint, None, started.elapsed());
                let kind = transport_kind(&e);
                let message = inner.redactor.clean(error_chain(&e));
                if kind == TransportKind::Connect {
                    // Nothing was sent: the request is not counted; GraphQL looks unreachable.
                    drop(permit);
                    gql.refuse(&format!("cannot connect: {message}"));
                    return Err(GqlError::NotDone(format!("{kind}: {message}")));
                }
                permit.failed();
                return Err(if create {
                    GqlError::Ambiguous(format!("{kind}: {message}"))
                } else {
                    GqlError::NotDone(format!("{kind}: {message}"))
                });
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_capped(resp, MAX_API_BODY).await;
        self.observe(endpoint, Some(status.as_u16()), started.elapsed());
        let ph = points_headers(&headers);
        let parsed: Option<Value> = body.as_ref().ok().and_then(|b| serde_json::from_slice(b).ok());
        let message = parsed.as_ref().and_then(error_messages).map(|m| inner.redactor.clean(m));
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = message.as_deref().and_then(retry_in).or(ph.reset).unwrap_or(gql.budget_window());
            permit.complete(&ph, Some(0), Some(wait));
            inner.counters.throttled();
            if let Some(o) = &inner.observer {
                o.on_throttled();
            }
            tracing::warn!(endpoint, wait_secs = wait.as_secs(), "Buildkite GraphQL budget exhausted; REST carries on");
            return Err(GqlError::NotDone(format!(
                "GraphQL budget exhausted: {}",
                message.unwrap_or_else(|| "429".into())
            )));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            permit.complete(&ph, Some(0), None);
            // The code only: "Forbidden" reads like a Kubernetes RBAC refusal in a log.
            let why = format!("answered {}: {}", status.as_u16(), message.unwrap_or_default());
            gql.refuse(&why);
            return Err(GqlError::NotDone(why));
        }
        if status.is_server_error() || !status.is_success() {
            permit.complete(&ph, None, None);
            let why = format!("GraphQL answered {status}: {}", message.unwrap_or_default());
            return Err(if create && status.is_server_error() {
                GqlError::Ambiguous(why)
            } else {
                GqlError::NotDone(why)
            });
        }
        let Some(v) = parsed else {
            permit.complete(&ph, None, None);
            let why = match body {
                Err(ReadError::TooLarge) => "the answer is too large".to_string(),
                Err(ReadError::Transport(e)) => format!("the answer could not be read: {}", error_chain(&e)),
                Ok(_) => "the answer is not JSON".to_string(),
            };
            let why = inner.redactor.clean(why);
            return Err(if create { GqlError::Ambiguous(why) } else { GqlError::NotDone(why) });
        };
        let actual = actual_complexity(&v).or_else(|| actual_header(&headers));
        permit.complete(&ph, actual, None);
        if let Some(o) = &inner.observer {
            o.on_graphql_points(endpoint, requested, actual);
        }
        inner.counters.graphql_points(requested, actual);
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        if let Some(m) = message {
            // Errors with data: the failed fields are null and nothing of them was done.
            return Err(GqlError::NotDone(format!("GraphQL: {m}")));
        }
        if data.is_null() {
            return Err(GqlError::NotDone("GraphQL answered without data".into()));
        }
        Ok(data)
    }

    /// Remembers a pipeline's GraphQL id from a REST answer: its `graphql_id`, else
    /// `base64("Pipeline---<uuid>")` (the shape of Buildkite's ids).
    pub(crate) fn remember_pipeline(&self, slug: &str, graphql_id: Option<&str>, uuid: &str, filter: Option<&str>) {
        let Some(g) = self.inner.graphql.as_ref() else { return };
        let id = match graphql_id.filter(|g| !g.is_empty()) {
            Some(id) => id.to_string(),
            None if !uuid.is_empty() => {
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("Pipeline---{uuid}"))
            }
            None => return,
        };
        if !slug.is_empty() {
            let branch_filter = Some(filter.map(str::to_string));
            g.remember_pipeline(slug, KnownPipeline { id, branch_filter });
        }
    }

    /// The pipeline's GraphQL id, looked up once per pipeline (1 point).
    async fn gql_pipeline_id(&self, slug: &str) -> std::result::Result<String, GqlError> {
        let Some(gql) = self.inner.graphql.as_ref() else {
            return Err(GqlError::NotDone("GraphQL is not configured".into()));
        };
        if let Some(known) = gql.pipeline(slug) {
            return Ok(known.id);
        }
        let permit =
            match tokio::time::timeout(Duration::from_secs(2), gql.budget.acquire(Priority::Submit, PIPELINE_ID_COST))
                .await
            {
                Ok(Ok(p)) => p,
                _ => return Err(GqlError::NotDone("GraphQL budget: no room for the pipeline look-up".into())),
            };
        let full = format!("{}/{slug}", self.inner.cfg.organization);
        let data = self
            .gql(
                "graphql_pipeline_id",
                "query PipelineId($slug: ID!) { pipeline(slug: $slug) { id } }",
                json!({ "slug": full }),
                permit,
                false,
            )
            .await?;
        let id = data
            .get("pipeline")
            .and_then(|p| p.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| GqlError::NotDone(format!("GraphQL knows no pipeline {full}")))?;
        gql.remember_pipeline(slug, KnownPipeline { id: id.to_string(), branch_filter: None });
        Ok(id.to_string())
    }
}

impl Graphql {
    fn budget_window(&self) -> Duration {
        self.budget.snapshot().reset_in.unwrap_or(Duration::from_secs(60))
    }
}
