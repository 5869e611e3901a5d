//! The submission queue: KernelJobs waiting for a build, released by priority, then age.
//! When Buildkite's request budget is short, this order decides who goes first.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Mutex;

use tokio::sync::Notify;

/// `namespace/name` of a KernelJob.
pub type JobKey = String;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    priority: i32,
    /// Creation time (RFC 3339 sorts chronologically), then the key, for a total order.
    created: String,
    key: JobKey,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap: higher priority first, then the OLDER job first.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.created.cmp(&self.created))
            .then_with(|| other.key.cmp(&self.key))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Default)]
pub struct SubmitQueue {
    inner: Mutex<(BinaryHeap<Entry>, HashSet<JobKey>)>,
    notify: Notify,
}

impl SubmitQueue {
    /// Queues a job once (a job already queued keeps its place); whether it was new.
    pub fn push(&self, key: &str, priority: i32, created: &str) -> bool {
        let Ok(mut inner) = self.inner.lock() else { return false };
        if !inner.1.insert(key.to_string()) {
            return false;
        }
        inner.0.push(Entry { priority, created: created.to_string(), key: key.to_string() });
        drop(inner);
        self.notify.notify_one();
        true
    }

    /// The next job to submit, if any.
    pub fn pop(&self) -> Option<JobKey> {
        let mut inner = self.inner.lock().ok()?;
        let entry = inner.0.pop()?;
        inner.1.remove(&entry.key);
        Some(entry.key)
    }

    /// Waits until a job is queued (takes none).
    pub async fn wait_nonempty(&self) {
        loop {
            let notified = self.notify.notified();
            if !self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.0.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_age() {
        let q = SubmitQueue::default();
        q.push("ns/young-low", 0, "2026-01-02T00:00:00Z");
        q.push("ns/old-low", 0, "2026-01-01T00:00:00Z");
        q.push("ns/high", 10, "2026-01-03T00:00:00Z");
        q.push("ns/negative", -5, "2025-01-01T00:00:00Z");
        assert!(!q.push("ns/old-low", 99, "2026-01-01T00:00:00Z"), "a duplicate is not new");
        assert_eq!(q.len(), 4, "duplicates keep their first place");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec!["ns/high", "ns/old-low", "ns/young-low", "ns/negative"]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn wait_nonempty_returns_on_a_push_and_takes_nothing() {
        let q = std::sync::Arc::new(SubmitQueue::default());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.wait_nonempty().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "returned on an empty queue");
        q.push("ns/a", 0, "t");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(q.len(), 1);
        // Already non-empty: at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), q.wait_nonempty()).await.unwrap();
    }
}
