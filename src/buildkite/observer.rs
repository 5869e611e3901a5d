//! Observability hook and the client's own counters.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::budget::Priority;

/// Receives one call per HTTP attempt and per throttling event. Implement it in the metrics
/// layer and pass it to [`Client::with_observer`](super::Client::with_observer). Calls are
/// made inline on the request path: keep them cheap and non-blocking.
pub trait Observer: Send + Sync {
    /// One HTTP attempt finished. `endpoint` is the route name (e.g. `create_build`,
    /// `list_builds`, `artifact_storage` for the storage host, `agent_metrics`); `status` is
    /// `None` when no answer was received (timeout, dropped connection).
    fn on_response(&self, endpoint: &'static str, status: Option<u16>, elapsed: Duration);

    /// Buildkite answered 429.
    fn on_throttled(&self) {}

    /// A request took its place in the budget after waiting `waited` (about 0: it did not wait).
    fn on_budget_wait(&self, _priority: Priority, _waited: Duration) {}

    /// An attempt is retried (after a 5xx, a timeout or a dropped connection).
    fn on_retry(&self, _endpoint: &'static str) {}

    /// A GraphQL answer: the complexity points its query reserved (requested) and, when the
    /// answer says, the points the organization was charged (actual).
    fn on_graphql_points(&self, _endpoint: &'static str, _requested: u64, _actual: Option<u64>) {}

    /// An operation GraphQL did not carry (refused, a GraphQL error, the budget spent) is
    /// sent over REST.
    fn on_graphql_fallback(&self, _endpoint: &'static str) {}
}

/// Snapshot of the client's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Attempts per (endpoint, status); status `None` = no answer.
    pub responses: BTreeMap<(&'static str, Option<u16>), u64>,
    /// 429 answers.
    pub throttled: u64,
    /// Retried attempts.
    pub retries: u64,
    /// Requests that waited for the budget.
    pub budget_waits: u64,
    /// Creates whose outcome was unknown.
    pub ambiguous: u64,
    /// GraphQL answers with points: requested (reserved) and actual (charged, when reported).
    pub graphql_points_requested: u64,
    pub graphql_points_actual: u64,
    /// Operations GraphQL did not carry that went over REST.
    pub graphql_fallbacks: u64,
}

impl ClientStats {
    /// Attempts that reached Buildkite's GraphQL API (endpoints `graphql_*`).
    pub fn graphql_requests(&self) -> u64 {
        self.responses.iter().filter(|((ep, _), _)| ep.starts_with("graphql")).map(|(_, n)| n).sum()
    }

    /// Attempts that reached Buildkite's REST API (everything but the storage host, the
    /// agent metrics API and GraphQL).
    pub fn rest_requests(&self) -> u64 {
        self.responses
            .iter()
            .filter(|((ep, _), _)| {
                !matches!(*ep, "artifact_storage" | "agent_metrics" | "agent_queue_metrics")
                    && !ep.starts_with("graphql")
            })
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    responses: Mutex<BTreeMap<(&'static str, Option<u16>), u64>>,
    throttled: AtomicU64,
    retries: AtomicU64,
    budget_waits: AtomicU64,
    ambiguous: AtomicU64,
    points_requested: AtomicU64,
    points_actual: AtomicU64,
    fallbacks: AtomicU64,
}

impl Counters {
    pub(crate) fn graphql_points(&self, requested: u64, actual: Option<u64>) {
        self.points_requested.fetch_add(requested, Ordering::Relaxed);
        self.points_actual.fetch_add(actual.unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn graphql_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn response(&self, endpoint: &'static str, status: Option<u16>) {
        let mut m = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint, status)).or_default() += 1;
    }

    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn budget_wait(&self) {
        self.budget_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ambiguous(&self) {
        self.ambiguous.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ClientStats {
        ClientStats {
            responses: self.responses.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            throttled: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            budget_waits: self.budget_waits.load(Ordering::Relaxed),
            ambiguous: self.ambiguous.load(Ordering::Relaxed),
            graphql_points_requested: self.points_requested.load(Ordering::Relaxed),
            graphql_points_actual: self.points_actual.load(Ordering::Relaxed),
            graphql_fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}
