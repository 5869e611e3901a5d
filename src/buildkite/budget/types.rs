//! The budget's vocabulary: priorities, settings, the rate-limit headers of an answer and
//! the snapshot for metrics and status.

use std::time::Duration;

use http::HeaderMap;

/// How urgent a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Creating a build (or another object).
    Submit,
    /// Cancelling a build.
    Cancel,
    /// Reading: gets, lists, artifacts.
    Refresh,
}

impl Priority {
    /// 0 for the urgent class (Submit, Cancel), 1 for Refresh.
    pub(super) fn class(self) -> u8 {
        match self {
            Priority::Submit | Priority::Cancel => 0,
            Priority::Refresh => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Submit => "submit",
            Priority::Cancel => "cancel",
            Priority::Refresh => "refresh",
        }
    }
}

/// Settings of a [`Budget`](super::Budget).
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// Our own cap per window.
    pub limit: u32,
    /// Window length (Buildkite: 60 s).
    pub window: Duration,
    /// Share of the limit only urgent requests may spend.
    pub reserve_fraction: f64,
    /// Safety margin added to every window end and reset.
    pub reset_margin: Duration,
}

/// The values of one rate-limit scope in an answer's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeHeaders {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    /// Time until the window resets.
    pub reset: Option<Duration>,
}

impl ScopeHeaders {
    pub(super) fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// The rate-limit headers of one answer: `RateLimit-Limit`, `RateLimit-Remaining`,
/// `RateLimit-Reset` (organization scope) and `RateLimit-User-*` (user scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitHeaders {
    pub org: ScopeHeaders,
    pub user: ScopeHeaders,
}

impl RateLimitHeaders {
    /// Parses the headers; absent or malformed values are `None`.
    pub fn parse(headers: &HeaderMap) -> Self {
        let num = |name: &str| -> Option<u64> {
            headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok())
        };
        let num32 = |name: &str| num(name).map(|v| u32::try_from(v).unwrap_or(u32::MAX));
        RateLimitHeaders {
            org: ScopeHeaders {
                limit: num32("ratelimit-limit"),
                remaining: num32("ratelimit-remaining"),
                reset: num("ratelimit-reset").map(Duration::from_secs),
            },
            user: ScopeHeaders {
                limit: num32("ratelimit-user-limit"),
                remaining: num32("ratelimit-user-remaining"),
                reset: num("ratelimit-user-reset").map(Duration::from_secs),
            },
        }
    }
}

/// Which scope a `429` came from (the body's `scope`: `rest` or `rest_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleScope {
    Organization,
    User,
}

/// State of the budget, for metrics and status.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSnapshot {
    /// Effective limit of the window (ours or the server's, whichever is lower).
    pub limit: u32,
    /// Requests that may still be sent in this window (estimate; urgent classes included).
    pub remaining: u32,
    /// Requests of `remaining` reserved for Submit and Cancel.
    pub reserve: u32,
    /// Time until the current window ends, if one is open.
    pub reset_in: Option<Duration>,
    /// Set after a 429: time until requests may be sent again.
    pub throttled_for: Option<Duration>,
    /// Set while Buildkite looks down (consecutive 5xx or unanswered requests): time until
    /// the next probe may be sent.
    pub outage_pause_for: Option<Duration>,
    /// Consecutive attempts that got a 5xx or no answer.
    pub consecutive_failures: u32,
    /// Requests sent and not answered yet.
    pub in_flight: u64,
    /// Callers waiting, urgent class (Submit, Cancel).
    pub waiting_urgent: usize,
    /// Callers waiting, Refresh.
    pub waiting_refresh: usize,
    /// `"organization"` or `"user"`: the scope with the fewest remaining requests.
    pub binding_scope: &'static str,
    /// Every scope tracked (the organization's, and the token's when Buildkite reports one):
    /// (scope, limit, remaining).
    pub scopes: Vec<(&'static str, u32, u32)>,
}
