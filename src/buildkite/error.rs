//! Errors of the Buildkite client. Every variant names the endpoint (a route template such
//! as `create_build`) and what went wrong. No variant ever carries a token: messages taken
//! from answers are scrubbed of the configured secrets, and transport errors of the
//! storage host are stripped of their (signed) URL.

use std::time::Duration;

use thiserror::Error;

/// What kind of transport failure happened (no answer was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection could be established: the request was certainly not sent.
    Connect,
    /// The request or the answer timed out.
    Timeout,
    /// The connection dropped while sending the request or reading the answer.
    Dropped,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "connection failed",
            TransportKind::Timeout => "timed out",
            TransportKind::Dropped => "connection dropped",
        })
    }
}

#[derive(Debug, Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("buildkite client configuration: {0}")]
    Config(String),

    /// A secret could not be loaded. `origin` names the file or variable.
    #[error("reading secret from {origin}: {problem}")]
    Secret { origin: String, problem: String },

    /// The call was refused before sending (bad argument).
    #[error("{endpoint}: invalid request: {message}")]
    InvalidRequest { endpoint: &'static str, message: String },

    /// `404`.
    #[error("{endpoint}: not found (404): {message}")]
    NotFound { endpoint: &'static str, message: String },

    /// Any other non-success answer that is not retried (4xx; 5xx after the retries).
    #[error("{endpoint}: Buildkite answered {status}: {message}")]
    Api { endpoint: &'static str, status: u16, message: String },

    /// `429` again after waiting for the reset once.
    #[error("{endpoint}: rate limited (429) again after waiting for the reset; next reset in {reset:?}")]
    RateLimited { endpoint: &'static str, reset: Duration },

    /// No answer after all retries.
    #[error("{endpoint}: {kind} after {attempts} attempt(s): {message}")]
    Transport { endpoint: &'static str, kind: TransportKind, attempts: u32, message: String },

    /// A create whose outcome is unknown: the request was sent but no usable answer came
    /// back (timeout, dropped connection, 5xx). The build may or may not exist. Do NOT retry
    /// blindly: look the build up by its meta-data (`list_builds` with `meta_data`) first and
    /// create again only if it is absent.
    #[error("{endpoint}: outcome unknown ({reason}); look the build up by meta-data before creating it again")]
    Ambiguous { endpoint: &'static str, reason: String },

    /// The answer could not be decoded.
    #[error("{endpoint}: decoding the answer: {message}")]
    Decode { endpoint: &'static str, message: String },

    /// A body is larger than allowed.
    #[error("{endpoint}: {what} is larger than the limit of {limit} bytes")]
    TooLarge { endpoint: &'static str, what: String, limit: u64 },

    /// A URL received from Buildkite (pagination, download) points to an unexpected host,
    /// so the token is not sent there.
    #[error("{endpoint}: refusing to follow {what}: {reason}")]
    UnsafeUrl { endpoint: &'static str, what: &'static str, reason: String },

    /// The artifact download answered without a storage location, or the storage host failed.
    #[error("artifact download: {0}")]
    Download(String),

    /// The downloaded artifact does not match its `sha1sum`.
    #[error("artifact download: SHA-1 of {path} does not match ({expected} expected, {actual} received)")]
    Checksum { path: String, expected: String, actual: String },

    /// The agent metrics API needs an agent token and none is configured.
    #[error("{endpoint}: no agent token configured")]
    NoAgentToken { endpoint: &'static str },
}

impl Error {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Secret { .. } => "secret",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::NotFound { .. } => "not_found",
            Error::Api { .. } => "api",
            Error::RateLimited { .. } => "rate_limited",
            Error::Transport { .. } => "transport",
            Error::Ambiguous { .. } => "ambiguous",
            Error::Decode { .. } => "decode",
            Error::TooLarge { .. } => "too_large",
            Error::UnsafeUrl { .. } => "unsafe_url",
            Error::Download(_) => "download",
            Error::Checksum { .. } => "checksum",
            Error::NoAgentToken { .. } => "no_agent_token",
        }
    }

    /// True when retrying later may help (throttling, server trouble, network trouble).
    /// [`Error::Ambiguous`] is not retryable as such: look the build up first.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::RateLimited { .. } | Error::Transport { .. } => true,
            Error::Api { status, .. } => *status >= 500,
            Error::Download(_) => true,
            _ => false,
        }
    }

    /// The HTTP status of the answer, when the error comes from one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::NotFound { .. } => Some(404),
            Error::Api { status, .. } => Some(*status),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
