//! Request counters per endpoint (`"<METHOD> <route template>"`) and status.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// Status recorded for a request whose connection was dropped without an answer.
pub const DROPPED: u16 = 0;

/// Counts of one endpoint.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EndpointCount {
    pub total: u64,
    /// Status code (as a string, JSON-friendly; `"0"` = connection dropped) → count.
    pub by_status: BTreeMap<String, u64>,
}

impl EndpointCount {
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status.to_string()).copied().unwrap_or(0)
    }
}

/// A snapshot of all counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub total: u64,
    pub endpoints: BTreeMap<String, EndpointCount>,
}

impl CountersSnapshot {
    /// Counts of one endpoint, e.g. `"POST /v2/organizations/{org}/pipelines/{pipeline}/builds"`.
    pub fn endpoint(&self, key: &str) -> EndpointCount {
        self.endpoints.get(key).cloned().unwrap_or_default()
    }

    /// Total requests whose key starts with `prefix` (e.g. `"GET /v2"`).
    pub fn total_with_prefix(&self, prefix: &str) -> u64 {
        self.endpoints.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.total).sum()
    }

    /// Requests with this status over all endpoints.
    pub fn with_status(&self, status: u16) -> u64 {
        self.endpoints.values().map(|e| e.status(status)).sum()
    }
}

#[derive(Default)]
pub struct Counters {
    inner: Mutex<CountersSnapshot>,
}

impl Counters {
    pub fn record(&self, key: &str, status: u16) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.total += 1;
        let e = match g.endpoints.get_mut(key) {
            Some(e) => e,
            None => g.endpoints.entry(key.to_string()).or_default(),
        };
        e.total += 1;
        *e.by_status.entry(status.to_string()).or_default() += 1;
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn reset(&self) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = CountersSnapshot::default();
    }
}
