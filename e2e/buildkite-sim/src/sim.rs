//! The shared simulator object handed to every route, executor and worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::counters::Counters;
use crate::faults::Faults;
use crate::ratelimit::RateLimiter;
use crate::state::{ExecSpec, Inner, Outcome};
use crate::webhooks::Webhooks;

/// Base URLs of the listeners (no trailing slash).
#[derive(Debug, Clone)]
pub struct Urls {
    /// `http://127.0.0.1:<port>` of the API listener.
    pub api_root: String,
    /// `http://127.0.0.1:<port>` of the storage listener.
    pub storage_root: String,
}

impl Urls {
    pub fn v2(&self) -> String {
        format!("{}/v2", self.api_root)
    }
}

pub struct Sim {
    pub urls: Urls,
    /// The organization slug (immutable).
    pub org_slug: String,
    state: Mutex<Inner>,
    dispatch: Notify,
    pub rate: RateLimiter,
    pub counters: Counters,
    /// API requests as they arrive (before faults delay them), status 0.
    pub arrivals: Counters,
    pub storage_counters: Counters,
    pub faults: Faults,
    pub webhooks: Webhooks,
    /// The GraphQL endpoint's budget and counters (`POST /v1`).
    pub graphql: crate::graphql::Graphql,
    pub storage_key: [u8; 32],
    pub artifact_ttl_secs: AtomicU64,
    pub poll_duration_secs: AtomicU64,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl Sim {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        urls: Urls,
        inner: Inner,
        rate: RateLimiter,
        faults: Faults,
        webhooks: Webhooks,
        artifact_ttl_secs: u64,
        poll_duration_secs: u64,
        shutdown: CancellationToken,
    ) -> Self {
        let mut storage_key = [0u8; 32];
        rand::fill(&mut storage_key);
        Self {
            urls,
            org_slug: inner.org.slug.clone(),
            state: Mutex::new(inner),
            dispatch: Notify::new(),
            rate,
            counters: Counters::default(),
            arrivals: Counters::default(),
            storage_counters: Counters::default(),
            faults,
            webhooks,
            graphql: crate::graphql::Graphql::new(crate::config::GraphqlConfig::default()),
            storage_key,
            artifact_ttl_secs: AtomicU64::new(artifact_ttl_secs),
            poll_duration_secs: AtomicU64::new(poll_duration_secs),
            shutdown,
            tasks: TaskTracker::new(),
        }
    }

    /// The world. Never hold this across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the dispatcher (something changed: new job, free agent, resumed queue, …).
    pub fn kick(&self) {
        self.dispatch.notify_one();
    }

    pub fn artifact_ttl(&self) -> u64 {
        self.artifact_ttl_secs.load(Ordering::Relaxed)
    }

    /// Records a job's end, then lets the dispatcher hand out the freed agent.
    pub fn finish_job(&self, job: Uuid, outcome: Outcome) {
        self.lock().finish_job(job, outcome);
        self.kick();
    }

    /// Time-driven transitions: scheduled jobs past the job expiry become `expired`,
    /// artifacts past the retention become `expired`. Ticks at a tenth of the shorter of the
    /// two (between 20 ms and 1 s).
    pub async fn run_housekeeping(self: Arc<Self>) {
        loop {
            let tick = {
                let inner = self.lock();
                (inner.job_expiry.min(inner.artifact_retention) / 10)
                    .clamp(std::time::Duration::from_millis(20), std::time::Duration::from_secs(1))
            };
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = self.shutdown.cancelled() => break,
            }
            let now = jiff::Timestamp::now();
            let expired = {
                let mut inner = self.lock();
                inner.expire_artifacts(now);
                inner.expire_jobs(now)
            };
            if expired > 0 {
                self.kick();
            }
        }
    }

    /// The dispatcher loop: assigns jobs to agents whenever kicked.
    pub async fn run_dispatcher(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.dispatch.notified() => {}
                () = self.shutdown.cancelled() => break,
            }
            let specs: Vec<ExecSpec> = self.lock().dispatch();
            for spec in specs {
                let sim = Arc::clone(&self);
                self.tasks.spawn(crate::executor::run(sim, spec));
            }
        }
    }
}
