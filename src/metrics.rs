//! Prometheus metrics of the controller process (`/metrics` on `--metrics-addr`).
//!
//! One process-wide registry. Counters and histograms are updated where things happen
//! (reconciles, Buildkite requests through [`crate::buildkite::Observer`], webhooks, builds
//! created and finished); gauges that describe the cluster (KernelJobs by phase, agents per
//! pool, the request budget) are computed from the controller's caches at scrape time, so a
//! deleted pool or job never leaves a stale series behind.
//!
//! Names follow the Prometheus conventions: `benchkite_` prefix, base units in the name
//! (`_seconds`), `_total` on counters.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::kerneljob::Phase;
use crate::api::{AgentPool, KernelJob};
use crate::buildkite::Priority;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    /// HTTP status code, or `none` when no answer arrived (timeout, dropped connection).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 5 ms … ~164 s
    exponential_buckets(0.005, 2.0, 16)
}

fn family_of_histograms<L: Clone + std::hash::Hash + Eq>() -> Family<L, Histogram, fn() -> Histogram> {
    Family::new_with_constructor(|| Histogram::new(latency_buckets()))
}

/// Every metric the controller updates itself.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    buildkite_requests: Family<RequestLabels, Counter>,
    buildkite_request_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    buildkite_throttled: Counter,
    buildkite_retries: Family<EndpointLabels, Counter>,
    graphql_points: Family<PointsLabels, Counter>,
    graphql_fallbacks: Family<EndpointLabels, Counter>,
    buildkite_budget_wait: Family<PriorityLabels, Histogram, fn() -> Histogram>,
    builds_created: Counter,
    orphans_cancelled: Counter,
    submit_latency: Histogram,
    completion_latency: Histogram,
    webhook_deliveries: Family<ResultLabels, Counter>,
    result_cache: Family<ResultLabels, Counter>,
    leader: Gauge,
    state: Arc<StateCollector>,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("benchkite");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run, by controller", reconciles.clone());
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that returned an error, by controller",
            reconcile_errors.clone(),
        );
        let reconcile_duration = family_of_histograms::<ControllerLabels>();
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            reconcile_duration.clone(),
        );
        let buildkite_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "buildkite_requests",
            "HTTP attempts to Buildkite by endpoint and status code (code=\"none\": no answer)",
            buildkite_requests.clone(),
        );
        let buildkite_request_duration = family_of_histograms::<EndpointLabels>();
        registry.register(
            "buildkite_request_duration_seconds",
            "Time of one HTTP attempt to Buildkite, by endpoint",
            buildkite_request_duration.clone(),
        );
        let buildkite_throttled = Counter::default();
        registry.register(
            "buildkite_throttled",
            "Answers 429 (rate limited) from Buildkite",
            buildkite_throttled.clone(),
        );
        let buildkite_retries = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "buildkite_retries",
            "Attempts retried after a 5xx, a timeout or a dropped connection, by endpoint",
            buildkite_retries.clone(),
        );
        let graphql_points = Family::<PointsLabels, Counter>::default();
        registry.register(
            "buildkite_graphql_points",
            "GraphQL complexity points by endpoint: requested (reserved before sending) and actual (charged, as the answer reports)",
            graphql_points.clone(),
        );
        let graphql_fallbacks = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "buildkite_graphql_fallbacks",
            "Operations GraphQL did not carry (token refused, GraphQL error, budget spent) that went over REST, by operation",
            graphql_fallbacks.clone(),
        );
        let buildkite_budget_wait = family_of_histograms::<PriorityLabels>();
        registry.register(
            "buildkite_budget_wait_seconds",
            "Time a request waited for the request budget, by priority",
            buildkite_budget_wait.clone(),
        );
        let builds_created = Counter::default();
        registry.register("builds_created", "Buildkite builds created for KernelJob attempts", builds_created.clone());
        let orphans_cancelled = Counter::default();
        registry.register(
            "kerneljob_orphan_builds_cancelled",
            "Builds of deleted KernelJobs cancelled (delete event, sweep or the listing after a start)",
            orphans_cancelled.clone(),
        );
        let submit_latency = Histogram::new(latency_buckets());
        registry.register(
            "kerneljob_submit_latency_seconds",
            "From a KernelJob attempt becoming due (creation, or the retry decision) to its build created",
            submit_latency.clone(),
        );
        let completion_latency = Histogram::new(latency_buckets());
        registry.register(
            "kerneljob_completion_latency_seconds",
            "From a build finishing in Buildkite to the KernelJob's final status written",
            completion_latency.clone(),
        );
        let webhook_deliveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Buildkite webhook deliveries by result (accepted, duplicate, ignored, refused, malformed, standby)",
            webhook_deliveries.clone(),
        );
        let result_cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "result_cache_operations",
            "Result cache: lookups (hit, miss, stale: an entry that no longer serves), entries stored and evicted",
            result_cache.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this process leads (runs the controllers), else 0", leader.clone());
        let state = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(state.clone()));
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            buildkite_requests,
            buildkite_request_duration,
            buildkite_throttled,
            buildkite_retries,
            graphql_points,
            graphql_fallbacks,
            buildkite_budget_wait,
            builds_created,
            orphans_cancelled,
            submit_latency,
            completion_latency,
            webhook_deliveries,
            result_cache,
            leader,
            state,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn reconciled(&self, controller: &'static str, took: Duration, failed: bool) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        if failed {
            self.reconcile_errors.get_or_create(&labels).inc();
        }
        self.reconcile_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn build_created(&self, due_for: Option<Duration>) {
        self.builds_created.inc();
        if let Some(d) = due_for {
            self.submit_latency.observe(d.as_secs_f64());
        }
    }

    pub fn orphan_cancelled(&self) {
        self.orphans_cancelled.inc();
    }

    pub fn job_completed(&self, since_build_finished: Duration) {
        self.completion_latency.observe(since_build_finished.as_secs_f64());
    }

    pub fn webhook(&self, result: &'static str) {
        self.webhook_deliveries.get_or_create(&ResultLabels { result }).inc();
    }

    /// A result cache operation: `hit`, `miss`, `stale`, `stored`, `evicted`.
    pub fn result_cache(&self, result: &'static str) {
        self.result_cache.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Lets scrapes read the caches and the Buildkite client (called once the controllers run).
    pub fn attach(&self, sources: StateSources) {
        if let Ok(mut s) = self.state.sources.write() {
            *s = Some(sources);
        }
    }
}

/// Runs a reconcile and records its count, error and duration under `controller`.
pub async fn timed<T, E>(
    controller: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let res = fut.await;
    global().reconciled(controller, start.elapsed(), res.is_err());
    res
}

/// Feeds the Buildkite client's attempts into the metrics.
#[derive(Debug, Default)]
pub struct BuildkiteObserver;

impl crate::buildkite::Observer for BuildkiteObserver {
    fn on_response(&self, endpoint: &'static str, status: Option<u16>, elapsed: Duration) {
        let m = global();
        let code = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        m.buildkite_requests.get_or_create(&RequestLabels { endpoint, code }).inc();
        m.buildkite_request_duration.get_or_create(&EndpointLabels { endpoint }).observe(elapsed.as_secs_f64());
    }

    fn on_throttled(&self) {
        global().buildkite_throttled.inc();
    }

    fn on_budget_wait(&self, priority: Priority, waited: Duration) {
        global()
            .buildkite_budget_wait
            .get_or_create(&PriorityLabels { priority: priority.as_str() })
            .observe(waited.as_secs_f64());
    }

    fn on_retry(&self, endpoint: &'static str) {
        global().buildkite_retries.get_or_create(&EndpointLabels { endpoint }).inc();
    }

    fn on_graphql_points(&self, endpoint: &'static str, requested: u64, actual: Option<u64>) {
        let m = global();
        m.graphql_points.get_or_create(&PointsLabels { endpoint, kind: "requested" }).inc_by(requested);
        if let Some(a) = actual {
            m.graphql_points.get_or_create(&PointsLabels { endpoint, kind: "actual" }).inc_by(a);
        }
    }

    fn on_graphql_fallback(&self, endpoint: &'static str) {
        global().graphql_fallbacks.get_or_create(&EndpointLabels { endpoint }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PointsLabels {
    endpoint: &'static str,
    kind: &'static str,
}

/// What scrape-time gauges are computed from.
#[derive(Clone, Default)]
pub struct StateSources {
    pub jobs: Option<Store<KernelJob>>,
    pub pools: Option<Store<AgentPool>>,
    pub buildkite: Option<crate::buildkite::Client>,
}

#[derive(Default)]
struct StateCollector {
    sources: RwLock<Option<StateSources>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    namespace: String,
    pool: String,
}

/// KernelJobs per phase, every phase present (zero included) so alerts can rely on them.
pub fn jobs_by_phase<'a>(jobs: impl IntoIterator<Item = &'a KernelJob>) -> BTreeMap<&'static str, i64> {
    let mut out: BTreeMap<&'static str, i64> = Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
    for job in jobs {
        let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
        *out.entry(phase.as_str()).or_default() += 1;
    }
    out
}

fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (labels, value) in series {
        let family = metric.encode_family(&labels)?;
        ConstGauge::new(value).encode(family)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sources) = self.sources.read().ok().and_then(|s| s.clone()) else { return Ok(()) };
        if let Some(jobs) = &sources.jobs {
            let state = jobs.state();
            let counts = jobs_by_phase(state.iter().map(|j| j.as_ref()));
            gauge_family(
                &mut encoder,
                "kerneljobs",
                "KernelJobs by phase",
                counts.into_iter().map(|(phase, n)| (PhaseLabels { phase }, n)),
            )?;
        }
        if let Some(pools) = &sources.pools {
            let state = pools.state();
            let series = |f: fn(&crate::api::agentpool::AgentPoolStatus) -> i64| {
                state
                    .iter()
                    .map(|p| {
                        let labels = PoolLabels { namespace: p.namespace().unwrap_or_default(), pool: p.name_any() };
                        (labels, p.status.as_ref().map(f).unwrap_or(0))
                    })
                    .collect::<Vec<_>>()
            };
            gauge_family(
                &mut encoder,
                "agentpool_agents_desired",
                "Agent pods a pool should run (one per selected GPU)",
                series(|s| s.desired_agents),
            )?;
            gauge_family(&mut encoder, "agentpool_agents_ready", "Agent pods Ready", series(|s| s.ready_agents))?;
            // The pool's queue (status.kernelJobs), for the pools that show one.
            let queued: Vec<_> = state
                .iter()
                .filter_map(|p| {
                    let q = p.status.as_ref()?.kernel_jobs.clone()?;
                    Some((PoolLabels { namespace: p.namespace().unwrap_or_default(), pool: p.name_any() }, q))
                })
                .collect();
            if !queued.is_empty() {
                gauge_family(
                    &mut encoder,
                    "agentpool_kerneljobs_waiting",
                    "KernelJobs of a pool not yet running (waiting to be submitted or for an agent)",
                    queued.iter().map(|(l, q)| (l.clone(), q.waiting)),
                )?;
                gauge_family(
                    &mut encoder,
                    "agentpool_kerneljobs_running",
                    "KernelJobs of a pool an agent runs",
                    queued.iter().map(|(l, q)| (l.clone(), q.running)),
                )?;
                let now = k8s_openapi::jiff::Timestamp::now();
                gauge_family(
                    &mut encoder,
                    "agentpool_kerneljobs_oldest_wait_seconds",
                    "How long the oldest waiting KernelJob of a pool has existed (0: none waits)",
                    queued.iter().map(|(l, q)| {
                        let secs = q.oldest_waiting_since.as_ref().map(|t| now.duration_since(t.0).as_secs().max(0));
                        (l.clone(), secs.unwrap_or(0))
                    }),
                )?;
                gauge_family(
                    &mut encoder,
                    "agentpool_submitter_kerneljobs",
                    "Unfinished KernelJobs of a pool per submitter (the 20 with most) and state",
                    queued.iter().flat_map(|(l, q)| {
                        q.submitters.iter().flat_map(move |s| {
                            [("waiting", s.waiting), ("running", s.running)].map(|(state, n)| {
                                let labels = SubmitterLabels {
                                    namespace: l.namespace.clone(),
                                    pool: l.pool.clone(),
                                    submitter: s.submitter.clone(),
                                    state,
                                };
                                (labels, n)
                            })
                        })
                    }),
                )?;
            }
        }
        if let Some(bk) = &sources.buildkite {
            let snap = bk.budget_snapshot();
            gauge_family(
                &mut encoder,
                "buildkite_budget_remaining_requests",
                "Requests left in the current rate-limit window (the binding scope)",
                [(ScopeLabels { scope: snap.binding_scope }, i64::from(snap.remaining))],
            )?;
            gauge_family(
                &mut encoder,
                "buildkite_budget_limit_requests",
                "Requests allowed per rate-limit window (the binding scope)",
                [(ScopeLabels { scope: snap.binding_scope }, i64::from(snap.limit))],
            )?;
            if let Some(p) = bk.points_snapshot() {
                let labels = [(ScopeLabels { scope: "graphql" }, 0)];
                let with = |v: u64| labels.iter().map(move |(l, _)| (l.clone(), i64::try_from(v).unwrap_or(i64::MAX)));
                gauge_family(
                    &mut encoder,
                    "buildkite_graphql_points_remaining",
                    "GraphQL complexity points left in the current window (our share)",
                    with(p.remaining),
                )?;
                gauge_family(
                    &mut encoder,
                    "buildkite_graphql_points_limit",
                    "GraphQL complexity points per window (our share of the server's limit)",
                    with(p.limit),
                )?;
            }
            gauge_family(
                &mut encoder,
                "buildkite_requests_waiting",
                "Requests waiting for the budget",
                [(ScopeLabels { scope: snap.binding_scope }, (snap.waiting_urgent + snap.waiting_refresh) as i64)],
            )?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubmitterLabels {
    namespace: String,
    pool: String,
    submitter: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkite::Observer;

    fn job(phase: Option<Phase>) -> KernelJob {
        let mut j: KernelJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
            "metadata": {"name": "j", "namespace": "n"},
            "spec": {"queue": "q", "mode": "test", "lang": "py", "main": "eval.py", "sources": {"eval.py": "x"}}
        }))
        .unwrap_or_else(|e| panic!("job fixture: {e}"));
        if let Some(p) = phase {
            j.status = Some(crate::api::kerneljob::KernelJobStatus { phase: p, ..Default::default() });
        }
        j
    }

    #[test]
    fn phases_are_all_reported_and_counted() {
        let jobs = [job(None), job(Some(Phase::Running)), job(Some(Phase::Running)), job(Some(Phase::Failed))];
        let counts = jobs_by_phase(jobs.iter());
        assert_eq!(counts.len(), Phase::ALL.len());
        assert_eq!(counts["Pending"], 1);
        assert_eq!(counts["Running"], 2);
        assert_eq!(counts["Failed"], 1);
        assert_eq!(counts["Succeeded"], 0);
    }

    #[test]
    fn exposition_has_conventional_names() {
        let m = global();
        m.reconciled("test", Duration::from_millis(3), true);
        BuildkiteObserver.on_response("create_build", Some(201), Duration::from_millis(5));
        BuildkiteObserver.on_response("get_build", None, Duration::from_millis(5));
        BuildkiteObserver.on_throttled();
        m.build_created(Some(Duration::from_millis(40)));
        m.webhook("accepted");
        m.orphan_cancelled();
        let text = m.encode().unwrap_or_default();
        for needle in [
            "benchkite_reconciles_total{controller=\"test\"}",
            "benchkite_reconcile_errors_total{controller=\"test\"}",
            "benchkite_reconcile_duration_seconds_bucket{",
            "benchkite_buildkite_requests_total{endpoint=\"create_build\",code=\"201\"}",
            "benchkite_buildkite_requests_total{endpoint=\"get_build\",code=\"none\"}",
            "benchkite_buildkite_throttled_total",
            "benchkite_builds_created_total",
            "benchkite_kerneljob_orphan_builds_cancelled_total",
            "benchkite_kerneljob_submit_latency_seconds_count",
            "benchkite_webhook_deliveries_total{result=\"accepted\"}",
            "benchkite_leader ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
