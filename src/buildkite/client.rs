//! The HTTP client: request execution (budget, retries, observation); the API calls are in
//! [`builds`] and [`queues`].

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LINK};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use rand::Rng as _;
use reqwest::Url;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::budget::{
    Budget, BudgetConfig, BudgetSnapshot, Permit, PointsSnapshot, Priority, RateLimitHeaders, ThrottleScope,
};
use super::config::Config;
use super::error::{Error, Result, TransportKind};
use super::observer::{ClientStats, Counters, Observer};
use super::types::Listing;
use super::wire::{self, Redactor};

/// Largest API answer read into memory (a page of 100 builds with jobs is a few MB).
const MAX_API_BODY: u64 = 64 * 1024 * 1024;
/// Buildkite's limit of one meta-data value.
const MAX_META_DATA_VALUE: usize = 100 * 1024;
/// Wait after a 429 that announces no reset.
const DEFAULT_429_WAIT: Duration = Duration::from_secs(60);

/// The Buildkite client. Cheap to clone: all clones share one connection pool, one request
/// budget and one set of counters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    api_base: Url,
    agent_base: Url,
    /// Sends the API token; never follows redirects.
    api_http: reqwest::Client,
    /// For the storage host: no default headers, never the token.
    storage_http: reqwest::Client,
    auth: HeaderValue,
    agent_auth: Option<HeaderValue>,
    budget: Budget,
    /// The GraphQL transport, when configured.
    graphql: Option<graphql::Graphql>,
    observer: Option<Arc<dyn Observer>>,
    counters: Counters,
    redactor: Redactor,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api_url", &self.inner.api_base.as_str())
            .field("organization", &self.inner.cfg.organization)
            .finish_non_exhaustive()
    }
}

/// Which credential a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Auth {
    /// `Bearer <api token>`, counted against the REST budget.
    Api,
    /// `Token <agent token>` (agent metrics API; not part of the REST limits).
    Agent,
}

/// How failures after sending are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Safe to repeat: retry 5xx, timeouts and dropped connections.
    Idempotent,
    /// Must not happen twice: anything after the request may have been received is
    /// [`Error::Ambiguous`].
    CreateOnce,
}

/// The right to send one create, taken ahead of time on one of the two transports
/// ([`Client::reserve`]).
#[derive(Debug)]
pub struct Reservation {
    route: graphql::Route,
    priority: Priority,
}

impl Reservation {
    /// Whether the create will go through GraphQL.
    pub fn is_graphql(&self) -> bool {
        self.route.is_graphql()
    }
}

pub(super) struct Call {
    pub(super) endpoint: &'static str,
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) body: Option<Vec<u8>>,
    pub(super) priority: Priority,
    pub(super) mode: Mode,
    pub(super) auth: Auth,
}

impl Call {
    /// An idempotent queue write (create, pause, resume): a POST at Submit priority.
    pub(super) fn write(endpoint: &'static str, url: Url, body: Vec<u8>) -> Call {
        Call {
            endpoint,
            method: Method::POST,
            url,
            body: Some(body),
            priority: Priority::Submit,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        }
    }
}

/// An answer that was not retried away: 2xx, 3xx or 4xx other than 429.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_capped(mut resp: reqwest::Response, cap: u64) -> std::result::Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(ReadError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Transport)? {
        if (out.len() + chunk.len()) as u64 > cap {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn transport_kind(e: &reqwest::Error) -> TransportKind {
    if e.is_connect() {
        TransportKind::Connect
    } else if e.is_timeout() {
        TransportKind::Timeout
    } else {
        TransportKind::Dropped
    }
}

/// The error and its causes, one line.
fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(": ");
            msg.push_str(&s_text);
        }
        source = s.source();
    }
    msg
}

fn parse_base(what: &str, s: &str) -> Result<Url> {
    let url = Url::parse(s.trim()).map_err(|e| Error::Config(format!("{what} {s:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host_str().is_none() {
        return Err(Error::Config(format!("{what} {s:?}: must be an http(s) URL")));
    }
    Ok(url)
}

fn header_value(scheme: &str, secret: &super::config::Secret, what: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("{scheme} {}", secret.expose()))
        .map_err(|_| Error::Config(format!("{what} contains characters not allowed in an HTTP header")))?;
    v.set_sensitive(true);
    Ok(v)
}

impl Client {
    /// Builds a client (no request is sent).
    pub fn new(cfg: Config) -> Result<Client> {
        Self::build(cfg, None)
    }

    /// Builds a client that reports every attempt to `observer`.
    pub fn with_observer(cfg: Config, observer: Arc<dyn Observer>) -> Result<Client> {
        Self::build(cfg, Some(observer))
    }

    fn build(cfg: Config, observer: Option<Arc<dyn Observer>>) -> Result<Client> {
        cfg.validate()?;
        let api_base = parse_base("api_url", &cfg.api_url)?;
        let agent_base = parse_base("agent_api_url", &cfg.agent_api_url)?;
        let auth = header_value("Bearer", &cfg.api_token, "api_token")?;
        let agent_auth = cfg.agent_token.as_ref().map(|t| header_value("Token", t, "agent_token")).transpose()?;
        let api_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.connect_timeout)
            .user_agent(cfg.user_agent.clone())
            .build()
            .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        let storage_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .timeout(cfg.download_timeout)
            .connect_timeout(cfg.connect_timeout)
            .user_agent(cfg.user_agent.clone())
            .build()
            .map_err(|e| Error::Config(format!("building the storage HTTP client: {e}")))?;
        let budget = Budget::new(BudgetConfig {
            limit: cfg.requests_per_minute,
            window: cfg.rate_limit_window,
            reserve_fraction: cfg.priority_reserve,
            reset_margin: cfg.reset_margin,
        });
        let redactor = Redactor::new(std::iter::once(cfg.api_token.clone()).chain(cfg.agent_token.clone()));
        let graphql = match cfg.graphql_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(u) => Some(graphql::Graphql::new(parse_base("graphql_url", u)?, &cfg)),
            None => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                api_base,
                agent_base,
                api_http,
                storage_http,
                auth,
                agent_auth,
                budget,
                graphql,
                observer,
                counters: Counters::default(),
                redactor,
            }),
        })
    }

    /// The configuration (secrets print as `[redacted]`).
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The request budget's state, for metrics and status.
    pub fn budget_snapshot(&self) -> BudgetSnapshot {
        self.inner.budget.snapshot()
    }

    /// The GraphQL points budget's state, when GraphQL is configured.
    pub fn points_snapshot(&self) -> Option<PointsSnapshot> {
        self.inner.graphql.as_ref().map(|g| g.budget.snapshot())
    }

    /// `None` when a request of `priority` would be sent right away on either transport;
    /// otherwise about how long it would wait for the budgets. Takes nothing (use it to set
    /// a `Throttled` condition without blocking).
    pub fn would_wait(&self, priority: Priority) -> Option<Duration> {
        let rest = self.inner.budget.would_wait(priority)?;
        match self.inner.graphql.as_ref().filter(|g| g.usable()) {
            Some(g) => g.budget.would_wait(priority, graphql::CREATE_COST).map(|w| w.min(rest)),
            None => Some(rest),
        }
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStats {
        self.inner.counters.snapshot()
    }

    // ----- plumbing ---------------------------------------------------------------------

    pub(super) fn org_url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.api_base.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty();
            p.push("organizations");
            p.push(&self.inner.cfg.organization);
            p.extend(segments);
        }
        url
    }

    fn pipeline<'a>(&'a self, pipeline: Option<&'a str>, endpoint: &'static str) -> Result<&'a str> {
        pipeline.or(self.inner.cfg.default_pipeline.as_deref()).filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::InvalidRequest { endpoint, message: "no pipeline given and no default pipeline configured".into() }
        })
    }

    fn observe(&self, endpoint: &'static str, status: Option<u16>, elapsed: Duration) {
        self.inner.counters.response(endpoint, status);
        if let Some(o) = &self.inner.observer {
            o.on_response(endpoint, status, elapsed);
        }
    }

    fn note_retry(&self, endpoint: &'static str, retry: u32, why: &str) {
        tracing::debug!(endpoint, retry, why, "retrying Buildkite request");
        self.inner.counters.retry();
        if let Some(o) = &self.inner.observer {
            o.on_retry(endpoint);
        }
    }

    fn backoff(&self, retry: u32, hint: Option<Duration>) -> Duration {
        let cfg = &self.inner.cfg;
        let exp =
            cfg.retry_base_delay.saturating_mul(2u32.saturating_pow(retry.saturating_sub(1))).min(cfg.retry_max_delay);
        // "Equal jitter": between half and all of the exponential delay.
        let jittered = if exp.is_zero() { exp } else { rand::rng().random_range(exp / 2..=exp) };
        jittered.max(hint.unwrap_or_default().min(cfg.retry_max_delay))
    }

    fn ambiguous(&self, endpoint: &'static str, reason: String) -> Error {
        self.inner.counters.ambiguous();
        tracing::warn!(endpoint, reason = %self.inner.redactor.clean(reason.as_str()), "outcome of a create is unknown");
        Error::Ambiguous { endpoint, reason: self.inner.redactor.clean(reason) }
    }

    pub(super) fn api_error(&self, endpoint: &'static str, ans: &Answer) -> Error {
        let message = self.inner.redactor.clean(wire::answer_message(&ans.body));
        match ans.status {
            StatusCode::NOT_FOUND => Error::NotFound { endpoint, message },
            s => Error::Api { endpoint, status: s.as_u16(), message },
        }
    }

    pub(super) fn decode<T: DeserializeOwned>(&self, endpoint: &'static str, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body)
            .map_err(|e| Error::Decode { endpoint, message: self.inner.redactor.clean(e.to_string()) })
    }

    pub(super) fn json_body<T: serde::Serialize + ?Sized>(&self, endpoint: &'static str, v: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(v)
            .map_err(|e| Error::InvalidRequest { endpoint, message: format!("encoding the body: {e}") })
    }

    /// Sends `call`, waiting for the budget before every attempt, retrying what may be
    /// retried. Returns any answer that is not a 5xx or a 429.
    pub(super) async fn execute(&self, call: &Call) -> Result<Answer> {
        self.execute_with(call, None).await
    }

    /// Waits until a create of `priority` may be sent on either transport (GraphQL's points
    /// or REST's requests, whichever allows it first), and keeps the right to send it: the
    /// caller decides what to send once it may (say, the most urgent job by then). A
    /// reservation dropped unused is handed back.
    pub async fn reserve(&self, priority: Priority) -> Reservation {
        Reservation { route: self.create_route(priority).await, priority }
    }

    async fn acquire(&self, priority: Priority) -> Permit {
        let inner = &*self.inner;
        let t0 = Instant::now();
        let p = inner.budget.acquire(priority).await;
        let waited = t0.elapsed();
        if waited >= Duration::from_millis(1) {
            inner.counters.budget_wait();
        }
        // Every request, the ones that did not wait too: a percentile of the waits is then
        // one of all requests, not of those that waited.
        if let Some(o) = &inner.observer {
            o.on_budget_wait(priority, waited);
        }
        p
    }

    /// [`Client::execute`], with the first attempt on `first` when given.
    async fn execute_with(&self, call: &Call, mut first: Option<Permit>) -> Result<Answer> {
        let inner = &*self.inner;
        let max_retries = inner.cfg.max_retries;
        let mut retries: u32 = 0;
        let mut throttled_once = false;
        loop {
            let mut permit = match call.auth {
                Auth::Api => match first.take().filter(Permit::usable) {
                    Some(p) => Some(p),
                    // None given, or held past a 429, a pause or its window: a fresh one.
                    None => Some(self.acquire(call.priority).await),
                },
                Auth::Agent => None,
            };
            let auth = match call.auth {
                Auth::Api => inner.auth.clone(),
                Auth::Agent => match &inner.agent_auth {
                    Some(a) => a.clone(),
                    None => return Err(Error::NoAgentToken { endpoint: call.endpoint }),
                },
            };
            let mut req = inner
                .api_http
                .request(call.method.clone(), call.url.clone())
                .header(AUTHORIZATION, auth)
                .header(ACCEPT, "application/json");
            if let Some(body) = &call.body {
                req = req.header(CONTENT_TYPE, "application/json").body(body.clone());
            }
            let started = Instant::now();
            if let Some(p) = permit.as_mut() {
                p.mark_sent();
            }
            let sent = req.send().await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    if let Some(p) = permit.take() {
                        p.failed();
                    }
                    self.observe(call.endpoint, None, started.elapsed());
                    let kind = transport_kind(&e);
                    let message = inner.redactor.clean(error_chain(&e));
                    if call.mode == Mode::CreateOnce && kind != TransportKind::Connect {
                        return Err(self.ambiguous(call.endpoint, format!("{kind}: {message}")));
                    }
                    if retries >= max_retries {
                        return Err(Error::Transport { endpoint: call.endpoint, kind, attempts: retries + 1, message });
                    }
                    retries += 1;
                    self.note_retry(call.endpoint, retries, &message);
                    tokio::time::sleep(self.backoff(retries, None)).await;
                    continue;
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = read_capped(resp, MAX_API_BODY).await;
            let elapsed = started.elapsed();
            let rate = RateLimitHeaders::parse(&headers);

            if status == StatusCode::TOO_MANY_REQUESTS {
                let (body_reset, scope) = match &body {
                    Ok(b) => wire::throttle_body(b),
                    Err(_) => (None, None),
                };
                let user_scope = scope.as_deref() == Some("rest_user");
                let announced = if user_scope { rate.user.reset } else { rate.org.reset };
                let reset = announced.max(body_reset).unwrap_or(DEFAULT_429_WAIT);
                let scope = if user_scope { ThrottleScope::User } else { ThrottleScope::Organization };
                if let Some(p) = permit.take() {
                    p.complete(&rate, Some((scope, reset)));
                }
                self.observe(call.endpoint, Some(429), elapsed);
                inner.counters.throttled();
                tracing::warn!(
                    endpoint = call.endpoint,
                    reset_secs = reset.as_secs(),
                    "Buildkite answered 429; nothing is sent until the reset"
                );
                if let Some(o) = &inner.observer {
                    o.on_throttled();
                }
                if throttled_once {
                    return Err(Error::RateLimited { endpoint: call.endpoint, reset });
                }
                throttled_once = true;
                if call.auth == Auth::Agent {
                    tokio::time::sleep(reset + inner.cfg.reset_margin).await;
                }
                // REST: the budget holds every request until the reset has passed.
                continue;
            }

            if let Some(p) = permit.take() {
                if status.is_server_error() {
                    p.complete_server_error(&rate);
                } else {
                    p.complete(&rate, None);
                }
            }
            self.observe(call.endpoint, Some(status.as_u16()), elapsed);

            let body = match body {
                Ok(b) => b,
                Err(ReadError::TooLarge) => {
                    return Err(Error::TooLarge {
                        endpoint: call.endpoint,
                        what: "the answer".into(),
                        limit: MAX_API_BODY,
                    });
                }
                Err(ReadError::Transport(e)) => {
                    let kind = transport_kind(&e);
                    let message = inner.redactor.clean(error_chain(&e));
                    if call.mode == Mode::CreateOnce && !status.is_client_error() {
                        return Err(self.ambiguous(
                            call.endpoint,
                            format!("answer {status} could not be read ({kind}: {message})"),
                        ));
                    }
                    if status.is_client_error() {
                        return Ok(Answer { status, headers, body: Vec::new() });
                    }
                    if retries >= max_retries {
                        return Err(Error::Transport { endpoint: call.endpoint, kind, attempts: retries + 1, message });
                    }
                    retries += 1;
                    self.note_retry(call.endpoint, retries, &message);
                    tokio::time::sleep(self.backoff(retries, None)).await;
                    continue;
                }
            };

            if status.is_server_error() {
                let ans = Answer { status, headers, body };
                if call.mode == Mode::CreateOnce {
                    let msg = wire::answer_message(&ans.body);
                    return Err(self.ambiguous(call.endpoint, format!("Buildkite answered {status}: {msg}")));
                }
                if retries >= max_retries {
                    return Err(self.api_error(call.endpoint, &ans));
                }
                retries += 1;
                self.note_retry(call.endpoint, retries, status.as_str());
                tokio::time::sleep(self.backoff(retries, wire::retry_after(&ans.headers))).await;
                continue;
            }
            return Ok(Answer { status, headers, body });
        }
    }

    pub(super) async fn get(&self, endpoint: &'static str, url: Url, priority: Priority) -> Result<Answer> {
        self.execute(&Call {
            endpoint,
            method: Method::GET,
            url,
            body: None,
            priority,
            mode: Mode::Idempotent,
            auth: Auth::Api,
        })
        .await
    }

    /// GETs `first` and every `rel="next"` page (up to `max_pages`), decoding JSON arrays.
    pub(super) async fn list_pages<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        first: Url,
        priority: Priority,
        max_pages: u32,
    ) -> Result<Listing<T>> {
        let mut url = first;
        let mut items = Vec::new();
        let mut pages = 0u32;
        loop {
            let ans = self.get(endpoint, url.clone(), priority).await?;
            if !ans.status.is_success() {
                return Err(self.api_error(endpoint, &ans));
            }
            pages += 1;
            let page: Vec<T> = self.decode(endpoint, &ans.body)?;
            items.extend(page);
            let next = ans.headers.get(LINK).and_then(|v| v.to_str().ok()).and_then(wire::link_next);
            let Some(next) = next else {
                return Ok(Listing { items, truncated: false, pages });
            };
            if pages >= max_pages {
                return Ok(Listing { items, truncated: true, pages });
            }
            let next = url.join(&next).map_err(|e| Error::UnsafeUrl {
                endpoint,
                what: "the next page",
                reason: format!("invalid URL: {e}"),
            })?;
            if !wire::same_origin(&next, &self.inner.api_base) {
                return Err(Error::UnsafeUrl {
                    endpoint,
                    what: "the next page",
                    reason: format!("it is on {}, not on the API host", next.host_str().unwrap_or("?")),
                });
            }
            url = next;
        }
    }
}

mod builds;
pub(crate) mod graphql;
mod queues;
