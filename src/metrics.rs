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

use crate::api::kerneljob::{KernelJobStatus, Phase};
use crate::api::{AgentPool, GpuNode, KernelJob};
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
    outcomes: Family<OutcomeLabels, Counter>,
    retries: Counter,
    leader: Gauge,
    state: Arc<StateCollector>,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Every result a webhook delivery is counted under (all present from the start, at 0, so
/// dashboards and alerts see a series before the first delivery).
pub const WEBHOOK_RESULTS: [&str; 6] = ["accepted", "duplicate", "ignored", "refused", "malformed", "standby"];
/// Every result cache operation (see [`Metrics::result_cache`]).
pub const RESULT_CACHE_OPERATIONS: [&str; 5] = ["hit", "miss", "stale", "stored", "evicted"];
/// The verdict of a finished KernelJob: `status.passed` (`none`: no verdict).
pub const VERDICTS: [&str; 3] = ["passed", "failed", "none"];
/// The controllers that reconcile (the `controller` label).
pub const CONTROLLERS: [&str; 4] = ["gpunode", "discovery", "agentpool", "kerneljob"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub phase: &'static str,
    pub verdict: &'static str,
}

/// What one KernelJob status write finished and retried: the finished phase and verdict when
/// it moves a job into a final phase, and the attempts it adds after the first.
pub fn status_transition(before: Option<&KernelJobStatus>, after: &KernelJobStatus) -> (Option<OutcomeLabels>, u64) {
    let was_finished = before.is_some_and(|b| b.phase.is_finished());
    let outcome = (after.phase.is_finished() && !was_finished).then(|| OutcomeLabels {
        phase: after.phase.as_str(),
        verdict: match after.passed {
            Some(true) => "passed",
            Some(false) => "failed",
            None => "none",
        },
    });
    let had = before.map_or(0, |b| b.attempt_count).max(1);
    let retries = u64::try_from(after.attempt_count.saturating_sub(had)).unwrap_or(0);
    (outcome, retries)
}

impl Metrics {
    fn new() -> Self {
        let mut root = Registry::default();
        // The process metrics of the Prometheus client libraries keep their standard names.
        #[cfg(target_os = "linux")]
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("benchkite");
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
            "Time each request waited for the request budget before it was sent (0: it did not wait), by priority",
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
        // Up to hours: a job held by fair queueing or a spent budget waits that long.
        let submit_latency = Histogram::new(exponential_buckets(0.005, 2.0, 22));
        registry.register(
            "kerneljob_submit_latency_seconds",
            "From a KernelJob attempt becoming due (creation, or the retry decision) to its build created: time held by fair queueing, the request budget and the controller",
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
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "kerneljob_outcomes",
            "KernelJobs finished by this process, by final phase and verdict (passed, failed, none: no verdict)",
            outcomes.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "kerneljob_retries",
            "Attempts started after a KernelJob's first (spec.retries after an infrastructure failure)",
            retries.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this process leads (runs the controllers), else 0", leader.clone());
        let state = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(state.clone()));
        // Every label value known in advance is present from the first scrape: a rate over a
        // series that appears with its first event misses that event, and a panel or an alert
        // on it shows nothing until then.
        for result in WEBHOOK_RESULTS {
            let _ = webhook_deliveries.get_or_create(&ResultLabels { result });
        }
        for result in RESULT_CACHE_OPERATIONS {
            let _ = result_cache.get_or_create(&ResultLabels { result });
        }
        // Only Succeeded jobs have a verdict: the other final phases are counted under `none`.
        for verdict in VERDICTS {
            let _ = outcomes.get_or_create(&OutcomeLabels { phase: Phase::Succeeded.as_str(), verdict });
        }
        for phase in [Phase::Failed, Phase::TimedOut, Phase::Cancelled] {
            let _ = outcomes.get_or_create(&OutcomeLabels { phase: phase.as_str(), verdict: "none" });
        }
        for priority in [Priority::Submit, Priority::Cancel, Priority::Refresh] {
            let _ = buildkite_budget_wait.get_or_create(&PriorityLabels { priority: priority.as_str() });
        }
        for controller in CONTROLLERS {
            let labels = ControllerLabels { controller };
            let _ = reconciles.get_or_create(&labels);
            let _ = reconcile_errors.get_or_create(&labels);
        }
        Metrics {
            registry: root,
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
            outcomes,
            retries,
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
        let errors = self.reconcile_errors.get_or_create(&labels);
        if failed {
            errors.inc();
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

    /// A KernelJob status this process wrote: counts the jobs it finished and the attempts
    /// it started after a job's first.
    pub fn job_status_written(&self, before: Option<&KernelJobStatus>, after: &KernelJobStatus) {
        let (outcome, retries) = status_transition(before, after);
        if let Some(labels) = outcome {
            self.outcomes.get_or_create(&labels).inc();
        }
        if retries > 0 {
            self.retries.inc_by(retries);
        }
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
    pub gpunodes: Option<Store<GpuNode>>,
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

impl PoolLabels {
    fn of(p: &AgentPool) -> Self {
        PoolLabels { namespace: p.namespace().unwrap_or_default(), pool: p.name_any() }
    }
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
        let gpunodes: Vec<Arc<GpuNode>> = sources.gpunodes.as_ref().map(|g| g.state()).unwrap_or_default();
        if sources.gpunodes.is_some() {
            gauge_family(
                &mut encoder,
                "gpunode_gpus",
                "GPUs of a GpuNode, by node, product and architecture",
                gpunodes.iter().map(|g| {
                    let s = g.status.clone().unwrap_or_default();
                    let labels = GpuLabels {
                        node: g.name_any(),
                        product: s.product.unwrap_or_default(),
                        architecture: s.architecture.unwrap_or_default(),
                    };
                    (labels, s.gpu_count)
                }),
            )?;
            gauge_family(
                &mut encoder,
                "gpunode_ready",
                "1 when a GpuNode's Ready condition is True (its Node can run agents), else 0; reason: the condition's reason (Maintenance and NodeCordoned are deliberate)",
                gpunodes.iter().map(|g| {
                    let ready = g.status.as_ref().and_then(|s| crate::api::condition::find(&s.conditions, "Ready"));
                    let labels = NodeReadyLabels {
                        node: g.name_any(),
                        reason: ready.map(|c| c.reason.clone()).unwrap_or_else(|| "Unknown".into()),
                    };
                    (labels, i64::from(ready.is_some_and(|c| c.status == "True")))
                }),
            )?;
        }
        if let Some(pools) = &sources.pools {
            let state = pools.state();
            if sources.gpunodes.is_some() {
                gauge_family(
                    &mut encoder,
                    "certification_slots",
                    "Certification records of the slots of a GpuNode by pool and state (Certified, Failed, Quarantined, Error, Expired), for pools that certify and select the node",
                    certification_slots(state.iter().map(|p| p.as_ref()), gpunodes.iter().map(|g| g.as_ref())),
                )?;
                let (by_state, by_node) =
                    pool_slots(state.iter().map(|p| p.as_ref()), gpunodes.iter().map(|g| g.as_ref()));
                gauge_family(
                    &mut encoder,
                    "agentpool_slots",
                    "Agent slots of a pool (one per gpusPerAgent GPUs of its selected nodes) by state: Serving (agent Ready), Starting (agent wanted, not Ready yet), CertificationFailed, Quarantined, Idle (no agent wanted: scaled down, or GPUs held outside benchkite), or why the node serves none (every state present, 0 included)",
                    by_state,
                )?;
                gauge_family(
                    &mut encoder,
                    "agentpool_node_slots",
                    "Agent slots of a pool on one selected node, labelled with the pool's state of the node",
                    by_node,
                )?;
            }
            gauge_family(
                &mut encoder,
                "agentpool_condition",
                "1 when a condition of an AgentPool (Ready, Progressing, Degraded, Conflict, ...) is True, else 0; reason: the condition's reason",
                state.iter().flat_map(|p| {
                    let (namespace, pool) = (p.namespace().unwrap_or_default(), p.name_any());
                    p.status.iter().flat_map(|s| s.conditions.iter()).map(move |c| {
                        let labels = ConditionLabels {
                            namespace: namespace.clone(),
                            pool: pool.clone(),
                            condition: c.type_.clone(),
                            reason: c.reason.clone(),
                        };
                        (labels, i64::from(c.status == "True"))
                    })
                }),
            )?;
            // Busy agents as Buildkite reports them (the agent metrics API, or autoscaling's
            // agent listing), for the pools whose status has them.
            gauge_family(
                &mut encoder,
                "agentpool_agents_busy",
                "Agents of a pool running a Buildkite job (any job of its queue), as Buildkite reports them",
                state.iter().filter_map(|p| {
                    let s = p.status.as_ref()?;
                    let busy = s
                        .queue
                        .as_ref()
                        .map(|q| q.busy_agents)
                        .or(s.autoscaling.as_ref().and_then(|a| a.busy_agents))?;
                    Some((PoolLabels::of(p), busy))
                }),
            )?;
            let series = |f: fn(&crate::api::agentpool::AgentPoolStatus) -> i64| {
                state
                    .iter()
                    .map(|p| {
                        let labels = PoolLabels::of(p);
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
                    Some((PoolLabels::of(p), q))
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
                "Requests left in the current rate-limit window, per scope (organization; user: the token's, when Buildkite reports one)",
                snap.scopes.iter().map(|(scope, _, remaining)| (ScopeLabels { scope }, i64::from(*remaining))),
            )?;
            gauge_family(
                &mut encoder,
                "buildkite_budget_limit_requests",
                "Requests allowed per rate-limit window, per scope",
                snap.scopes.iter().map(|(scope, limit, _)| (ScopeLabels { scope }, i64::from(*limit))),
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
            let waiting = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            gauge_family(
                &mut encoder,
                "buildkite_requests_waiting",
                "Requests waiting for the request budget, by priority class (urgent: creates and cancels; refresh: reads)",
                [
                    (ClassLabels { class: "urgent" }, waiting(snap.waiting_urgent)),
                    (ClassLabels { class: "refresh" }, waiting(snap.waiting_refresh)),
                ],
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
struct GpuLabels {
    node: String,
    product: String,
    architecture: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeReadyLabels {
    node: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct SlotStateLabels {
    pub namespace: String,
    pub pool: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct NodeSlotLabels {
    pub namespace: String,
    pub pool: String,
    pub node: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CertSlotLabels {
    pub node: String,
    pub pool: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    pool: String,
    condition: String,
    reason: String,
}

/// The states `benchkite_agentpool_slots` always carries (0 included). On a node that runs
/// the pool's agents a slot serves (its agent is Ready), starts (an agent is wanted and not
/// Ready yet), fails certification or is quarantined (for pools that certify), or is idle (no
/// agent wanted: autoscaling scaled it down, or GPUs are held outside benchkite); on a node
/// that runs none, it carries the reason of the pool's `status.nodes[].state`. Other node
/// states (a GpuNode problem such as `ShareTooSmall`) appear when they occur.
pub const SLOT_STATES: [&str; 14] = [
    "Serving",
    "Starting",
    "CertificationFailed",
    "Quarantined",
    "Idle",
    "Paused",
    "Conflict",
    "NodeNotFound",
    "Maintenance",
    "NotReady",
    "NotReadyTolerated",
    "Cordoned",
    "NotExclusive",
    "ShareUnknown",
];

/// `benchkite_agentpool_slots` and `benchkite_agentpool_node_slots`.
pub type PoolSlots = (Vec<(SlotStateLabels, i64)>, Vec<(NodeSlotLabels, i64)>);

/// Slots of each pool by state, and per selected node. A node's slots are its GPUs over the
/// pool's `gpusPerAgent`. On a node that runs the pool's agents (Active, or NotReady within
/// its toleration: the agents are kept) they split as [`SLOT_STATES`] says; elsewhere they
/// all carry the node's state.
pub fn pool_slots<'a>(
    pools: impl IntoIterator<Item = &'a AgentPool>,
    gpunodes: impl IntoIterator<Item = &'a GpuNode>,
) -> PoolSlots {
    let nodes: BTreeMap<String, &GpuNode> = gpunodes.into_iter().map(|g| (g.name_any(), g)).collect();
    let mut by_state: BTreeMap<SlotStateLabels, i64> = BTreeMap::new();
    let mut by_node = Vec::new();
    for p in pools {
        let (namespace, pool) = (p.namespace().unwrap_or_default(), p.name_any());
        let key = format!("{namespace}/{pool}");
        let label =
            |state: &str| SlotStateLabels { namespace: namespace.clone(), pool: pool.clone(), state: state.into() };
        for state in SLOT_STATES {
            by_state.insert(label(state), 0);
        }
        let per_agent = i64::from(p.spec.gpus_per_agent.max(1));
        for n in p.status.iter().flat_map(|s| s.nodes.iter()) {
            let g = nodes.get(&n.name);
            let slots = g.and_then(|g| g.status.as_ref()).map_or(0, |s| pool_gpus(p, s)) / per_agent;
            by_node.push((
                NodeSlotLabels {
                    namespace: namespace.clone(),
                    pool: pool.clone(),
                    node: n.name.clone(),
                    state: n.state.clone(),
                },
                slots,
            ));
            let mut add = |state: &str, v: i64| *by_state.entry(label(state)).or_default() += v;
            if n.state != "Active" && n.state != "NotReadyTolerated" {
                add(&n.state, slots);
                continue;
            }
            let serving = n.ready.clamp(0, slots);
            let mut rest = slots - serving;
            let (mut failed, mut quarantined) = (0, 0);
            if p.spec.certification.is_some() {
                let records = g
                    .and_then(|g| g.status.as_ref())
                    .and_then(|s| s.certification.as_ref())
                    .map(|c| c.slots.as_slice())
                    .unwrap_or_default();
                let count = |f: fn(&str) -> bool| {
                    i64::try_from(records.iter().filter(|r| r.pool == key && f(&r.state)).count()).unwrap_or(0)
                };
                failed = count(|s| s == "Failed" || s == "Error").min(rest);
                rest -= failed;
                quarantined = count(|s| s == "Quarantined").min(rest);
                rest -= quarantined;
            }
            let waiting = (n.desired - n.ready - failed - quarantined).clamp(0, rest);
            add("Serving", serving);
            add("CertificationFailed", failed);
            add("Quarantined", quarantined);
            if n.state == "NotReadyTolerated" {
                add("NotReadyTolerated", rest);
            } else {
                add("Starting", waiting);
                add("Idle", rest - waiting);
            }
        }
    }
    (by_state.into_iter().collect(), by_node)
}

/// The GPUs of a node a pool can give its agents, the way it asks for them: a DRA pool's
/// devices that match its request, a device-plugin pool's GPUs of the plugin.
fn pool_gpus(pool: &AgentPool, node: &crate::api::GpuNodeStatus) -> i64 {
    match (&pool.spec.dra, &node.dra) {
        (Some(req), Some(dra)) => crate::fleet::dra::eligible_count(dra, &req.requirements()).0,
        (Some(_), None) => 0,
        (None, _) => node.plugin_gpus.unwrap_or(node.gpu_count),
    }
}

/// The certification states every certifying pool's slots are counted under (0 included).
pub const CERTIFICATION_STATES: [&str; 5] = ["Certified", "Failed", "Quarantined", "Error", "Expired"];

/// The certification records of GpuNodes per node, pool and state, for the pools that exist,
/// certify and select the node (a record left by a deleted pool, a pool that stopped
/// certifying or a node that left its selection is history, not a state); every state is
/// present for each (node, pool) counted.
pub fn certification_slots<'a>(
    pools: impl IntoIterator<Item = &'a AgentPool>,
    gpunodes: impl IntoIterator<Item = &'a GpuNode>,
) -> Vec<(CertSlotLabels, i64)> {
    let current: std::collections::BTreeSet<(String, String)> = pools
        .into_iter()
        .filter(|p| p.spec.certification.is_some())
        .flat_map(|p| {
            let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
            p.status.iter().flat_map(|s| s.nodes.iter()).map(move |n| (n.name.clone(), key.clone()))
        })
        .collect();
    let mut out: BTreeMap<CertSlotLabels, i64> = BTreeMap::new();
    for g in gpunodes {
        let node = g.name_any();
        for slot in g.status.iter().flat_map(|s| s.certification.iter()).flat_map(|c| c.slots.iter()) {
            if !current.contains(&(node.clone(), slot.pool.clone())) {
                continue;
            }
            let label =
                |state: &str| CertSlotLabels { node: node.clone(), pool: slot.pool.clone(), state: state.into() };
            for state in CERTIFICATION_STATES {
                out.entry(label(state)).or_insert(0);
            }
            *out.entry(label(&slot.state)).or_default() += 1;
        }
    }
    out.into_iter().collect()
}

/// The standard process metrics of the Prometheus client libraries (`process_*`), read from
/// `/proc/self` at scrape time. A field that cannot be read is left out.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct ProcessCollector;

#[cfg(target_os = "linux")]
impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        let Ok(me) = procfs::process::Process::myself() else { return Ok(()) };
        let page = procfs::page_size();
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = me.stat() {
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
            let gauges: [(&str, &str, f64); 3] = [
                ("process_resident_memory_bytes", "Resident memory size in bytes", (stat.rss * page) as f64),
                ("process_virtual_memory_bytes", "Virtual memory size in bytes", stat.vsize as f64),
                ("process_threads", "Number of OS threads in the process", stat.num_threads as f64),
            ];
            for (name, help, value) in gauges {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(value).encode(m)?;
            }
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = boot as f64 + stat.starttime as f64 / ticks;
                let m = encoder.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(start).encode(m)?;
            }
        }
        if let Ok(fds) = me.fd_count() {
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(fds as i64).encode(m)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
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

    #[test]
    fn known_label_values_and_process_metrics_are_there_before_any_event() {
        let text = global().encode().unwrap_or_default();
        let mut needles: Vec<String> = WEBHOOK_RESULTS
            .iter()
            .map(|r| format!("benchkite_webhook_deliveries_total{{result=\"{r}\"}}"))
            .chain(
                RESULT_CACHE_OPERATIONS
                    .iter()
                    .map(|r| format!("benchkite_result_cache_operations_total{{result=\"{r}\"}}")),
            )
            .chain(CONTROLLERS.iter().map(|c| format!("benchkite_reconcile_errors_total{{controller=\"{c}\"}}")))
            .collect();
        needles.push("benchkite_kerneljob_outcomes_total{phase=\"TimedOut\",verdict=\"none\"}".into());
        needles.push("benchkite_kerneljob_retries_total ".into());
        needles.push("benchkite_buildkite_budget_wait_seconds_count{priority=\"refresh\"}".into());
        // Not prefixed: the names every Prometheus client library uses (Linux: from /proc).
        let process: &[&str] = if cfg!(target_os = "linux") {
            &[
                "process_resident_memory_bytes ",
                "process_cpu_seconds_total ",
                "process_open_fds ",
                "process_start_time_seconds ",
            ]
        } else {
            &[]
        };
        for p in process {
            needles.push((*p).to_string());
        }
        for needle in &needles {
            assert!(text.contains(needle.as_str()), "missing {needle} in\n{text}");
        }
        assert!(!text.contains("benchkite_process_"), "process metrics must not carry the prefix");
        assert_eq!(text.matches("# EOF").count(), 1);
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(rss > 1e6 || !cfg!(target_os = "linux"), "resident memory {rss} bytes");
    }

    fn status(phase: Phase, passed: Option<bool>, attempts: i32) -> KernelJobStatus {
        KernelJobStatus { phase, passed, attempt_count: attempts, ..Default::default() }
    }

    #[test]
    fn a_status_write_counts_the_finish_once_and_the_retries_it_starts() {
        let running = status(Phase::Running, None, 1);
        let passed = status(Phase::Succeeded, Some(true), 1);
        let (o, r) = status_transition(Some(&running), &passed);
        assert_eq!(o, Some(OutcomeLabels { phase: "Succeeded", verdict: "passed" }));
        assert_eq!(r, 0);
        // Written again (a later reconcile of a finished job): not counted twice.
        assert_eq!(status_transition(Some(&passed), &passed), (None, 0));
        let failed_kernel = status(Phase::Succeeded, Some(false), 1);
        assert_eq!(status_transition(Some(&running), &failed_kernel).0.map(|o| o.verdict), Some("failed"));
        let infra = status(Phase::Failed, None, 3);
        assert_eq!(
            status_transition(Some(&running), &infra),
            (Some(OutcomeLabels { phase: "Failed", verdict: "none" }), 2)
        );
        // The first attempt is not a retry; the second is.
        assert_eq!(
            status_transition(Some(&status(Phase::Pending, None, 0)), &status(Phase::Submitted, None, 1)),
            (None, 0)
        );
        assert_eq!(
            status_transition(Some(&status(Phase::Running, None, 1)), &status(Phase::Submitted, None, 2)),
            (None, 1)
        );
        assert_eq!(status_transition(None, &status(Phase::Submitted, None, 1)), (None, 0));
        // A cache hit finishes a job that never had an attempt.
        assert_eq!(
            status_transition(Some(&status(Phase::Pending, None, 0)), &status(Phase::Succeeded, Some(true), 0)).0,
            Some(OutcomeLabels { phase: "Succeeded", verdict: "passed" })
        );
    }

    fn gpunode(name: &str, gpus: i64, cert: &[(&str, &str)]) -> GpuNode {
        let mut g: GpuNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "GpuNode",
            "metadata": {"name": name}, "spec": {}
        }))
        .unwrap_or_else(|e| panic!("gpunode fixture: {e}"));
        let slots: Vec<_> = cert
            .iter()
            .enumerate()
            .map(|(i, (pool, state))| serde_json::json!({"slot": i.to_string(), "pool": pool, "state": state}))
            .collect();
        let certification = (!cert.is_empty()).then(|| serde_json::json!({"slots": slots}));
        g.status = Some(
            serde_json::from_value(serde_json::json!({"gpuCount": gpus, "certification": certification}))
                .unwrap_or_else(|e| panic!("gpunode status fixture: {e}")),
        );
        g
    }

    fn agentpool(name: &str, gpus_per_agent: i32, nodes: &[(&str, &str, i64, i64)], certifies: bool) -> AgentPool {
        let mut spec = serde_json::json!({
            "queue": "q", "gpusPerAgent": gpus_per_agent, "gpuNodeSelector": {},
            "agent": {"tokenSecretRef": {"name": "t", "key": "k"}}
        });
        if certifies {
            spec["certification"] = serde_json::json!({"suite": {"configMap": "s"}});
        }
        let mut p: AgentPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec
        }))
        .unwrap_or_else(|e| panic!("pool fixture: {e}"));
        let nodes: Vec<_> = nodes
            .iter()
            .map(|(n, state, desired, ready)| {
                serde_json::json!({"name": n, "state": state, "desired": desired, "ready": ready})
            })
            .collect();
        p.status =
            Some(serde_json::from_value(serde_json::json!({"nodes": nodes})).unwrap_or_else(|e| panic!("status: {e}")));
        p
    }

    fn get<L: std::fmt::Debug>(series: &[(L, i64)], f: impl Fn(&L) -> bool) -> Option<i64> {
        series.iter().find(|(l, _)| f(l)).map(|(_, v)| *v)
    }

    #[test]
    fn slots_split_into_serving_starting_idle_and_the_reason_a_node_serves_none() {
        let nodes = [gpunode("a", 8, &[]), gpunode("b", 8, &[]), gpunode("c", 4, &[]), gpunode("d", 8, &[])];
        let pools = [
            // a: 7 agents wanted (autoscaling, or a GPU held outside benchkite), 5 Ready.
            agentpool(
                "one",
                1,
                &[("a", "Active", 7, 5), ("b", "Maintenance", 0, 0), ("c", "ShareTooSmall", 0, 0)],
                false,
            ),
            agentpool("two", 2, &[("d", "NotReadyTolerated", 4, 3), ("gone", "NodeNotFound", 0, 0)], false),
        ];
        let (by_state, by_node) = pool_slots(pools.iter(), nodes.iter());
        let at = |pool: &str, state: &str| get(&by_state, |l| l.pool == pool && l.state == state);
        assert_eq!(at("one", "Serving"), Some(5));
        assert_eq!(at("one", "Starting"), Some(2));
        assert_eq!(at("one", "Idle"), Some(1), "no agent wanted there: not counted as starting");
        assert_eq!(at("one", "Maintenance"), Some(8));
        assert_eq!(at("one", "ShareTooSmall"), Some(4), "a state outside the list is reported as it occurs");
        assert_eq!(at("one", "Cordoned"), Some(0), "every listed state is present");
        // Two GPUs per agent: 4 slots; a node kept within its NotReady toleration serves with
        // the agents that are Ready.
        assert_eq!(at("two", "Serving"), Some(3));
        assert_eq!(at("two", "NotReadyTolerated"), Some(1));
        assert_eq!(at("two", "Starting"), Some(0));
        assert_eq!(at("two", "NodeNotFound"), Some(0), "a node without a GpuNode has no GPUs to count");
        for state in SLOT_STATES {
            assert!(at("two", state).is_some(), "{state}");
        }
        for pool in ["one", "two"] {
            let total: i64 = by_state.iter().filter(|(l, _)| l.pool == pool).map(|(_, v)| v).sum();
            let node_total: i64 = by_node.iter().filter(|(l, _)| l.pool == pool).map(|(_, v)| v).sum();
            assert_eq!(total, node_total, "{pool}: every slot counted once");
        }
        assert_eq!(by_node.len(), 5);
        assert!(by_node.iter().any(|(l, v)| l.node == "b" && l.state == "Maintenance" && *v == 8));
    }

    #[test]
    fn a_dra_pools_slots_are_the_devices_that_match_its_request() {
        let mut node = gpunode("a", 4, &[]);
        if let Some(s) = node.status.as_mut() {
            s.plugin_gpus = Some(3);
            s.dra = serde_json::from_value(
                serde_json::json!({"driver": "gpu.nvidia.com", "wholeGpus": 3, "complete": true,
                "devices": [
                    {"name": "gpu-0", "type": "gpu", "productName": "H100"},
                    {"name": "gpu-1", "type": "gpu", "productName": "H100"},
                    {"name": "gpu-2", "type": "gpu", "productName": "A100"},
                    {"name": "gpu-3-mig-1", "type": "mig", "productName": "H100"},
                ]}),
            )
            .unwrap_or_else(|e| panic!("dra fixture: {e}"));
        }
        let mut dra_pool = agentpool("dra", 1, &[("a", "Active", 2, 2)], false);
        dra_pool.spec.dra =
            Some(crate::api::agentpool::PoolDra { product_name: Some("H100".into()), ..Default::default() });
        let plugin_pool = agentpool("plugin", 1, &[("a", "Active", 3, 3)], false);
        let (by_state, _) = pool_slots([dra_pool, plugin_pool].iter(), [node].iter());
        let at = |pool: &str, state: &str| get(&by_state, |l| l.pool == pool && l.state == state);
        assert_eq!((at("dra", "Serving"), at("dra", "Idle")), (Some(2), Some(0)), "2 H100s, not the A100 or the MIG");
        assert_eq!(
            (at("plugin", "Serving"), at("plugin", "Idle")),
            (Some(3), Some(0)),
            "the plugin's 3, not gpuCount 4"
        );
    }

    #[test]
    fn slots_of_a_certifying_pool_that_failed_or_are_quarantined_are_named() {
        let nodes = [gpunode(
            "a",
            4,
            &[("ns/one", "Certified"), ("ns/one", "Failed"), ("ns/one", "Quarantined"), ("ns/other", "Failed")],
        )];
        let (by_state, _) = pool_slots([agentpool("one", 1, &[("a", "Active", 4, 2)], true)].iter(), nodes.iter());
        let at = |state: &str| get(&by_state, |l| l.state == state);
        assert_eq!(
            (at("Serving"), at("CertificationFailed"), at("Quarantined"), at("Starting"), at("Idle")),
            (Some(2), Some(1), Some(1), Some(0), Some(0)),
            "another pool's record does not count"
        );
        // A pool that does not certify ignores the records.
        let (by_state, _) = pool_slots([agentpool("one", 1, &[("a", "Active", 4, 2)], false)].iter(), nodes.iter());
        assert_eq!(get(&by_state, |l| l.state == "Starting"), Some(2));
    }

    #[test]
    fn certification_slots_count_the_records_of_pools_that_certify_and_select_the_node() {
        let nodes = [
            gpunode("a", 8, &[("ns/one", "Certified"), ("ns/one", "Certified"), ("ns/one", "Quarantined")]),
            gpunode("b", 8, &[("ns/one", "Failed"), ("ns/gone", "Failed")]),
            gpunode("c", 8, &[("ns/one", "Failed")]),
            gpunode("d", 8, &[]),
        ];
        // "one" selects a and b (not c any more); "gone" was deleted.
        let pools = [agentpool("one", 1, &[("a", "Active", 8, 8), ("b", "Active", 8, 7), ("d", "Active", 8, 8)], true)];
        let out = certification_slots(pools.iter(), nodes.iter());
        let at = |node: &str, state: &str| get(&out, |l| l.node == node && l.state == state);
        assert_eq!(at("a", "Certified"), Some(2));
        assert_eq!(at("a", "Quarantined"), Some(1));
        assert_eq!(at("a", "Failed"), Some(0));
        assert_eq!(at("b", "Failed"), Some(1), "the deleted pool's record is not counted");
        assert_eq!(at("c", "Failed"), None, "a node that left the selection");
        assert_eq!(at("d", "Certified"), None, "a node without records has no series");
        assert_eq!(out.len(), 2 * CERTIFICATION_STATES.len());
        // A pool that no longer certifies: its records are history.
        let pools = [agentpool("one", 1, &[("a", "Active", 8, 8)], false)];
        assert!(certification_slots(pools.iter(), nodes.iter()).is_empty());
    }
}
