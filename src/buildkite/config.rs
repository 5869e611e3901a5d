//! Client configuration and secrets.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::error::{Error, Result};

/// A credential (API token, agent token, webhook secret). `Debug` and `Display` print
/// `[redacted]`; the value is only reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value. Trailing newlines and whitespace (as left by `echo` or `kubectl create
    /// secret --from-file`) are trimmed.
    pub fn new(value: impl AsRef<str>) -> Self {
        Secret(Arc::from(value.as_ref().trim_end()))
    }

    /// Reads a secret from a file (a mounted Kubernetes Secret). Errors name the file, never
    /// the content; an empty file is an error.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin = || format!("file {}", path.display());
        let bytes =
            std::fs::read(path).map_err(|e| Error::Secret { origin: origin(), problem: e.kind().to_string() })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Secret { origin: origin(), problem: "content is not UTF-8".into() })?;
        Self::checked(text, origin())
    }

    /// Reads a secret from an environment variable. Errors name the variable, never the value.
    pub fn from_env(var: &str) -> Result<Self> {
        let origin = || format!("environment variable {var}");
        match std::env::var(var) {
            Ok(v) => Self::checked(v, origin()),
            Err(std::env::VarError::NotPresent) => Err(Error::Secret { origin: origin(), problem: "not set".into() }),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Error::Secret { origin: origin(), problem: "value is not UTF-8".into() })
            }
        }
    }

    fn checked(value: String, origin: String) -> Result<Self> {
        let s = Secret::new(value);
        if s.0.trim().is_empty() {
            return Err(Error::Secret { origin, problem: "empty".into() });
        }
        if s.0.chars().any(|c| c.is_control()) {
            return Err(Error::Secret { origin, problem: "contains control characters (more than one line?)".into() });
        }
        Ok(s)
    }

    /// The value. Use only to build an HTTP header or a MAC key.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Default REST API base.
pub const DEFAULT_API_URL: &str = "https://api.buildkite.com/v2";
/// Default agent API base (metrics).
pub const DEFAULT_AGENT_API_URL: &str = "https://agent.buildkite.com/v3";
/// Default GraphQL API endpoint.
pub const DEFAULT_GRAPHQL_URL: &str = "https://graphql.buildkite.com/v1";
/// Default request budget per rate-limit window: below Buildkite's 200 per organization to
/// leave room for humans and other tools.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 180;

/// Everything the client needs. Build it with [`Config::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// REST API base, e.g. `https://api.buildkite.com/v2`.
    pub api_url: String,
    /// Agent API base, e.g. `https://agent.buildkite.com/v3` (queue metrics).
    pub agent_api_url: String,
    /// Organization slug.
    pub organization: String,
    /// Pipeline used when a call names none.
    pub default_pipeline: Option<String>,
    /// REST API access token (`Authorization: Bearer`).
    pub api_token: Secret,
    /// Cluster agent token for the metrics API (`Authorization: Token`).
    pub agent_token: Option<Secret>,
    /// GraphQL API endpoint ([`DEFAULT_GRAPHQL_URL`]); `None` (the default of [`Config::new`])
    /// sends everything over REST. Creates, cancels and build reads go through GraphQL while the token may use it
    /// and its points budget allows, and fall back to REST per operation otherwise.
    pub graphql_url: Option<String>,
    /// GraphQL complexity points per window assumed until an answer's `RateLimit-Limit` says
    /// otherwise (docs "GraphQL resource limits": 20,000 per 5 minutes per organization and
    /// 5,000 per user, which binds one token first).
    pub graphql_assumed_points: u64,
    /// GraphQL window assumed until `RateLimit-Reset` says otherwise (5 minutes).
    pub graphql_window: Duration,
    /// Share of the organization's GraphQL points this client spends (0.1..=1.0): room for
    /// humans and other tools.
    pub graphql_share: f64,
    /// After the token was refused GraphQL access (401/403), how long everything goes over
    /// REST before GraphQL is tried again.
    pub graphql_refusal_backoff: Duration,
    /// Requests the client may send per rate-limit window (Buildkite: 60 s). The server's
    /// `RateLimit-Limit` wins when it is lower.
    pub requests_per_minute: u32,
    /// Length of the rate-limit window. Buildkite's is 60 s; only tests change it.
    pub rate_limit_window: Duration,
    /// Share of each window only creates and cancels may spend (0.0..=0.9).
    pub priority_reserve: f64,
    /// Added to every `RateLimit-Reset` the server announces (it is whole seconds and the
    /// clocks are not shared): the client never assumes a window ended before it did.
    pub reset_margin: Duration,
    /// Whole-request timeout for API calls.
    pub request_timeout: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout for artifact downloads from the storage host.
    pub download_timeout: Duration,
    /// Retries after 5xx answers, timeouts and dropped connections (not for creates; see
    /// [`Error::Ambiguous`]).
    pub max_retries: u32,
    /// First retry delay; doubles per retry, with jitter.
    pub retry_base_delay: Duration,
    /// Upper bound of one retry delay.
    pub retry_max_delay: Duration,
    /// Upper bound of pages one list call follows (100 items per page).
    pub max_pages: u32,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl Config {
    /// A configuration with the documented defaults.
    pub fn new(organization: impl Into<String>, api_token: Secret) -> Self {
        Config {
            api_url: DEFAULT_API_URL.into(),
            agent_api_url: DEFAULT_AGENT_API_URL.into(),
            organization: organization.into(),
            default_pipeline: None,
            api_token,
            agent_token: None,
            // Opt-in for library users (the controller turns it on by default).
            graphql_url: None,
            graphql_assumed_points: 5_000,
            graphql_window: Duration::from_secs(300),
            graphql_share: 0.9,
            graphql_refusal_backoff: Duration::from_secs(600),
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            rate_limit_window: Duration::from_secs(60),
            priority_reserve: 0.10,
            reset_margin: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            download_timeout: Duration::from_secs(120),
            max_retries: 3,
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(30),
            max_pages: 20,
            user_agent: format!("benchkite/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.organization.trim().is_empty() {
            return bad("organization is empty");
        }
        if self.requests_per_minute == 0 {
            return bad("requests_per_minute must be at least 1");
        }
        if self.rate_limit_window.is_zero() {
            return bad("rate_limit_window must be positive");
        }
        if !(0.0..=0.9).contains(&self.priority_reserve) {
            return bad("priority_reserve must be between 0.0 and 0.9");
        }
        if !(0.1..=1.0).contains(&self.graphql_share) {
            return bad("graphql_share must be between 0.1 and 1.0");
        }
        if self.graphql_assumed_points == 0 || self.graphql_window.is_zero() {
            return bad("graphql_assumed_points and graphql_window must be positive");
        }
        if self.max_pages == 0 {
            return bad("max_pages must be at least 1");
        }
        if self.api_token.expose().is_empty() {
            return bad("api_token is empty");
        }
        Ok(())
    }
}
