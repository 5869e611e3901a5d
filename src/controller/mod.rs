//! The controllers: GpuNode (inventory, share, discovery) and AgentPool (the agent fleet).
//!
//! All controllers read from one set of shared, stripped caches (Nodes, Pods, GpuNodes,
//! AgentPools) fed by one watch per kind, and write only through server-side apply with the
//! `benchkite` field manager.

pub mod agentpool;
pub mod cache;
pub mod certification;
pub mod gate;
pub mod gpunode;
pub mod pipelines;
pub mod queues;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::{Recorder, Reporter};
use futures::{Future, FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::api::{AgentPool, GpuNode};
use crate::fleet::cached_pod::CachedPod;
use gate::{all_synced, synced, when_synced};

/// Controller settings (flags of `benchkite controller`).
#[derive(Clone, Debug)]
pub struct Config {
    /// Run the fleet controllers (GpuNode, discovery, AgentPool). Off when this process
    /// only runs KernelJobs.
    pub fleet: bool,
    /// Create a GpuNode for every Node that offers a GPU resource.
    pub discover_gpu_nodes: bool,
    /// How long a discovered GpuNode outlives its Node before it is deleted.
    pub discovery_grace: Duration,
    /// Default agent image for pools that name none.
    pub agent_image: String,
    /// Default grace period of agent pods (time a running job gets to finish on a drain).
    pub termination_grace_period_seconds: i64,
    /// Smallest per-GPU memory worth running an agent with, in MiB.
    pub min_agent_memory_mib: i64,
    /// How long a Node may be not Ready (Ready False or Unknown) before its agents drain; until
    /// then its GpuNode says `Ready=False, reason NodeNotReadyTolerated` and agents stay.
    /// Kubernetes' own default (DefaultTolerationSeconds) is 300 s.
    pub node_not_ready_toleration: Duration,
    /// CPU and memory per node kept free of agents when the per-GPU share is sized, so
    /// DaemonSets added later still schedule (see [`crate::fleet::share`]).
    pub node_headroom: crate::fleet::share::Resources,
    /// Pod creations/deletions in flight per pool reconcile.
    pub write_concurrency: usize,
    /// Name used in Events (`reportingController`) and as the instance id.
    pub reporter: String,
    /// The DRA driver whose ResourceSlices describe GPUs (`--dra-driver`); `None`: DRA is off.
    pub dra_driver: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fleet: true,
            discover_gpu_nodes: true,
            discovery_grace: Duration::from_secs(600),
            agent_image: crate::DEFAULT_AGENT_IMAGE.to_string(),
            termination_grace_period_seconds: 900,
            min_agent_memory_mib: 1024,
            node_not_ready_toleration: crate::fleet::health::DEFAULT_NOT_READY_TOLERATION,
            node_headroom: crate::fleet::share::default_headroom(),
            write_concurrency: 32,
            reporter: "benchkite".to_string(),
            dra_driver: None,
        }
    }
}

/// Consecutive failures of one agent slot, for backoff.
#[derive(Debug, Default)]
pub struct SlotFailures {
    slots: HashMap<(String, String, u32), (u32, Instant)>,
}

impl SlotFailures {
    /// Backoff after `n` consecutive failures: 5 s, 10 s, 20 s … capped at 5 minutes.
    pub fn backoff(n: u32) -> Duration {
        Duration::from_secs(5u64.saturating_mul(1u64 << n.saturating_sub(1).min(6)).min(300))
    }

    pub fn record(&mut self, pool_uid: &str, gpunode: &str, slot: u32, now: Instant) -> u32 {
        let entry = self.slots.entry((pool_uid.to_string(), gpunode.to_string(), slot)).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }

    pub fn clear(&mut self, pool_uid: &str, gpunode: &str, slot: u32) {
        self.slots.remove(&(pool_uid.to_string(), gpunode.to_string(), slot));
    }

    /// Time left before the slot may be recreated.
    pub fn remaining(&self, pool_uid: &str, gpunode: &str, slot: u32, now: Instant) -> Option<Duration> {
        let (n, at) = self.slots.get(&(pool_uid.to_string(), gpunode.to_string(), slot))?;
        let until = *at + Self::backoff(*n);
        (until > now).then(|| until - now)
    }

    pub fn forget_pool(&mut self, pool_uid: &str) {
        self.slots.retain(|(uid, _, _), _| uid != pool_uid);
    }
}

/// Agent pods this process created that its pod cache has not shown yet (the
/// "expectations" of the ReplicaSet controller). A pool reconcile that runs before the watch
/// has delivered its own creates does not send them again: at fleet scale each such create
/// is a 409 that the API server pays for while it is busiest.
#[derive(Debug, Default)]
pub struct CreateExpectations {
    pods: HashMap<String, Instant>,
}

impl CreateExpectations {
    /// How long a create is trusted without being seen; after that the pod is planned again.
    pub const TTL: Duration = Duration::from_secs(15);

    /// `key` (`namespace/name`) was created (or found to exist) at `now`.
    pub fn created(&mut self, key: String, now: Instant) {
        self.pods.insert(key, now);
    }

    /// True while a create of `key` is in the air: sent less than [`Self::TTL`] ago and
    /// not yet seen in the cache.
    pub fn pending(&self, key: &str, now: Instant) -> bool {
        self.pods.get(key).is_some_and(|at| now.saturating_duration_since(*at) < Self::TTL)
    }

    /// The cache shows `key` (or this process deleted it): nothing is expected any more.
    pub fn observed(&mut self, key: &str) {
        self.pods.remove(key);
    }

    /// Drops expectations older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        self.pods.retain(|_, at| now.saturating_duration_since(*at) < Self::TTL);
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub nodes: Store<Node>,
    /// Every pod of the cluster, as the fleet reads it ([`CachedPod`]).
    pub pods: Store<CachedPod>,
    pub gpunodes: Store<GpuNode>,
    pub pools: Store<AgentPool>,
    pub recorder: Recorder,
    pub failures: Mutex<SlotFailures>,
    /// Agent pods created but not yet seen in the pod cache.
    pub expected: Mutex<CreateExpectations>,
    /// Buildkite API, when configured (queue state and creation).
    pub buildkite: Option<crate::buildkite::Client>,
    pub queues: queues::Queues,
    /// Each pool's unfinished KernelJobs (`status.kernelJobs`), when the KernelJob controller
    /// runs in this process (`None`: it does not, and pools show nothing).
    pub job_queues: Mutex<Option<HashMap<agentpool::jobs::PoolKey, crate::api::agentpool::PoolJobsStatus>>>,
    /// With `--dra-driver`: the driver's ResourceSlices and the claims of benchkite's agents.
    pub dra: Option<DraCaches>,
}

/// What the fleet reads for GPUs through DRA.
#[derive(Clone)]
pub struct DraCaches {
    pub driver: String,
    /// The driver's ResourceSlices (every node's).
    pub slices: Store<ResourceSlice>,
    /// Every ResourceClaim (metadata and status: which devices are allocated to whom).
    pub claims: Store<ResourceClaim>,
    /// Whether the API server's CEL knows `device.allowMultipleAllocations` (learnt from the
    /// first template applied: [`agentpool`]'s `dra` module).
    pub consumable_capacity: Arc<std::sync::atomic::AtomicU8>,
    /// Each DRA pool's template as last applied: pool UID → (name, when, problem).
    pub templates: Arc<Mutex<HashMap<String, agentpool::TemplateMemo>>>,
}

impl DraCaches {
    pub fn new(driver: String, slices: Store<ResourceSlice>, claims: Store<ResourceClaim>) -> DraCaches {
        DraCaches { driver, slices, claims, consumable_capacity: Default::default(), templates: Default::default() }
    }

    /// The devices the driver publishes for `node`.
    pub fn inventory(&self, node: &str) -> Option<crate::fleet::dra::DraInventory> {
        let slices = self.slices.state();
        crate::fleet::dra::node_inventory(slices.iter().map(|s| s.as_ref()), node, &self.driver)
    }
}

impl Context {
    /// Pods of a node, by Kubernetes node name, in one pass over the pod cache.
    pub fn pods_by_node(&self) -> HashMap<String, Vec<Arc<CachedPod>>> {
        let mut out: HashMap<String, Vec<Arc<CachedPod>>> = HashMap::new();
        for pod in self.pods.state() {
            if let Some(node) = pod.node_name.clone() {
                out.entry(node).or_default().push(pod);
            }
        }
        out
    }
}

/// The AgentPool UID that controls an agent pod, if it is one.
pub fn agent_pool_uid(pod: &CachedPod) -> Option<&str> {
    pod.agent_pool.as_ref().map(|o| o.uid.as_str())
}

/// Whether a pod is terminal (holds no resources).
pub fn pod_terminal(pod: &CachedPod) -> bool {
    pod.terminal()
}

/// Runs the controllers until `shutdown` resolves: the fleet (GpuNode, AgentPool) unless
/// turned off, KernelJob when Buildkite is configured. `http` learns when the caches are
/// synced (readiness) and where webhooks go.
pub async fn run(
    client: Client,
    config: Config,
    jobs: Option<crate::kerneljob::JobSetup>,
    buildkite: Option<crate::buildkite::Client>,
    pipelines: Option<pipelines::PipelineManager>,
    http: Arc<crate::server::HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use kube::runtime::controller::Controller;

    // One watch per kind feeds a store and fans its events out to the controllers that
    // care, over unbounded channels. (kube's shared-store subscriptions are not used: their
    // streams stall when a broadcast object was deleted from the store meanwhile.)
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (pods, pods_w) = reflector::store::<CachedPod>();
    let (gpunodes, gpunodes_w) = reflector::store::<GpuNode>();
    let (pools, pools_w) = reflector::store::<AgentPool>();
    let fleet = config.fleet;
    let discover = fleet && config.discover_gpu_nodes;
    let (gn_tx, gn_rx) = mpsc::unbounded_channel::<Arc<GpuNode>>();
    let (gn_wake_tx, gn_wake_rx) = mpsc::unbounded_channel::<ObjectRef<GpuNode>>();
    let (node_tx, node_rx) = mpsc::unbounded_channel::<Arc<Node>>();
    let node_tx_dra = node_tx.clone();
    let (pool_tx, pool_rx) = mpsc::unbounded_channel::<Arc<AgentPool>>();
    let (pool_wake_tx, pool_wake_rx) = mpsc::unbounded_channel::<ObjectRef<AgentPool>>();

    let wc = watcher::Config::default().any_semantic();
    let node_watch = {
        let (gn_store, wake) = (gpunodes.clone(), gn_wake_tx.clone());
        watcher(Api::<Node>::all(client.clone()), wc.clone())
            .modify(cache::strip_node)
            .default_backoff()
            .reflect(nodes_w)
            .for_each(move |ev| {
                if fleet && let Some(node) = event_object(&ev) {
                    for r in gpunode::gpunodes_for_node(&gn_store, &node.name_any()) {
                        let _ = wake.send(r);
                    }
                    if discover && !is_delete(&ev) {
                        let _ = node_tx.send(Arc::new(node.clone()));
                    }
                }
                futures::future::ready(())
            })
    };
    let pod_watch = {
        let (gn_store, gn_wake, pool_wake) = (gpunodes.clone(), gn_wake_tx.clone(), pool_wake_tx.clone());
        let pool_store = pools.clone();
        // Decoded straight into the slim cache type: what the fleet does not read of a pod is
        // never kept (about 5 KiB per pod as a stripped k8s-openapi `Pod`).
        watcher(Api::<CachedPod>::all(client.clone()), wc.clone()).default_backoff().reflect(pods_w).for_each(
            move |ev| {
                if fleet && let Some(pod) = event_object(&ev) {
                    if let Some(node) = pod.node_name.as_deref() {
                        for r in gpunode::gpunodes_for_node(&gn_store, node) {
                            let _ = gn_wake.send(r);
                        }
                    } else if agent_pool_uid(pod).is_none() {
                        // An unbound pod pinned to nodes (a DaemonSet pod) may be blocked there
                        // by agents: those GpuNodes report it (condition PodsBlocked).
                        for node in &pod.pinned_nodes {
                            for r in gpunode::gpunodes_for_node(&gn_store, node) {
                                let _ = gn_wake.send(r);
                            }
                        }
                    }
                    if let Some(owner) = &pod.agent_pool {
                        let ns = pod.namespace().unwrap_or_default();
                        let _ = pool_wake.send(ObjectRef::new(&owner.name).within(&ns));
                        // An agent gone from a node frees its GPUs for the other pools that
                        // select the node (a hand-over waits for the old pool's agents).
                        if is_delete(&ev)
                            && let Some(node) = pod.node_name.as_deref()
                        {
                            for gn in gn_store.state().iter().filter(|g| g.node_name() == node) {
                                for p in pool_store.state().iter().filter(|p| {
                                    p.spec.gpu_node_selector.matches(gn.labels())
                                        && p.metadata.uid.as_deref() != Some(owner.uid.as_str())
                                }) {
                                    let _ = pool_wake.send(ObjectRef::from_obj(p.as_ref()));
                                }
                            }
                        }
                    }
                }
                futures::future::ready(())
            },
        )
    };
    let gpunode_watch = {
        let (pool_store, pool_wake) = (pools.clone(), pool_wake_tx.clone());
        let mut pool_views: HashMap<String, Option<u64>> = HashMap::new();
        watcher(Api::<GpuNode>::all(client.clone()), wc.clone())
            .modify(cache::strip_managed_fields)
            .default_backoff()
            .reflect(gpunodes_w)
            .for_each(move |ev| {
                if fleet && let Some(gn) = event_object(&ev) {
                    if !is_delete(&ev) {
                        let _ = gn_tx.send(Arc::new(gn.clone()));
                    }
                    // Pools read a GpuNode's inventory, share and conditions, not the agents
                    // listed in its status (they read the pods themselves): an agent changing
                    // phase rewrites its GpuNode's status, and waking every pool for that
                    // made each pool re-plan thousands of times while a fleet came up.
                    let name = gn.name_any();
                    let changed = if is_delete(&ev) {
                        pool_views.remove(&name);
                        true
                    } else {
                        let view = cache::pool_view_fingerprint(gn);
                        view.is_none() || pool_views.insert(name, view) != Some(view)
                    };
                    if changed {
                        for p in pool_store.state() {
                            let _ = pool_wake.send(ObjectRef::from_obj(p.as_ref()));
                        }
                    }
                }
                futures::future::ready(())
            })
    };
    let pool_watch = {
        // Pools compete for nodes (the oldest active one selecting a node owns it): when a
        // pool's spec changes, or it goes, the others may gain or lose nodes at once, not at
        // their next periodic reconcile.
        let (pool_store, pool_wake) = (pools.clone(), pool_wake_tx.clone());
        let mut specs: HashMap<String, (Option<i64>, bool)> = HashMap::new();
        watcher(Api::<AgentPool>::all(client.clone()), wc.clone())
            .modify(cache::strip_managed_fields)
            .default_backoff()
            .reflect(pools_w)
            .for_each(move |ev| {
                if fleet && let Some(pool) = event_object(&ev) {
                    let uid = pool.uid().unwrap_or_default();
                    let now = (pool.metadata.generation, pool.metadata.deletion_timestamp.is_some());
                    let changed = if is_delete(&ev) {
                        specs.remove(&uid);
                        true
                    } else {
                        let _ = pool_tx.send(Arc::new(pool.clone()));
                        specs.insert(uid.clone(), now).is_some_and(|before| before != now)
                    };
                    if changed {
                        for p in pool_store.state().iter().filter(|p| p.uid().as_deref() != Some(uid.as_str())) {
                            let _ = pool_wake.send(ObjectRef::from_obj(p.as_ref()));
                        }
                    }
                }
                futures::future::ready(())
            })
    };
    // GPUs through DRA (`--dra-driver`): the driver's slices (a node's inventory; a node the
    // driver serves is discovered) and the claims made from pools' templates (an agent's
    // allocation). Neither is watched when DRA is off: no RBAC for them is needed then.
    let dra_driver = config.dra_driver.clone().filter(|_| fleet);
    if let Some(driver) = &dra_driver {
        check_dra_access(&client, driver).await?;
    }
    let (slices, slices_w) = reflector::store::<ResourceSlice>();
    let (claims, claims_w) = reflector::store::<ResourceClaim>();
    let slice_watch = {
        let (gn_store, wake, node_store, node_tx) =
            (gpunodes.clone(), gn_wake_tx.clone(), nodes.clone(), node_tx_dra.clone());
        let (client, driver) = (client.clone(), dra_driver.clone());
        async move {
            let Some(driver) = driver else { return futures::future::pending::<()>().await };
            let wc = watcher::Config::default().any_semantic().fields(&format!("spec.driver={driver}"));
            watcher(Api::<ResourceSlice>::all(client), wc)
                .modify(cache::strip_managed_fields)
                .default_backoff()
                .reflect(slices_w)
                .for_each(move |ev| {
                    log_watch_error("ResourceSlice", &ev);
                    if let Some(node) = event_object(&ev).and_then(|s| s.spec.node_name.as_deref()) {
                        for r in gpunode::gpunodes_for_node(&gn_store, node) {
                            let _ = wake.send(r);
                        }
                        if discover
                            && !is_delete(&ev)
                            && let Some(n) = node_store.get(&ObjectRef::new(node))
                        {
                            let _ = node_tx.send(n);
                        }
                    }
                    futures::future::ready(())
                })
                .await
        }
    };
    // Every claim, not only agents': a device another workload's claim holds is no agent's
    // (its GpuNode says who holds each device).
    let claim_watch = {
        let (pool_wake, gn_wake, gn_store, slice_store) =
            (pool_wake_tx.clone(), gn_wake_tx.clone(), gpunodes.clone(), slices.clone());
        let (client, driver) = (client.clone(), dra_driver.clone());
        // The resource pools each claim's devices were in, so a claim whose allocation is
        // cleared (or that is deleted) still wakes the GpuNodes it held devices on.
        let mut held: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
        async move {
            let Some(driver) = driver else { return futures::future::pending::<()>().await };
            watcher(Api::<ResourceClaim>::all(client), watcher::Config::default().any_semantic())
                .modify(|c| {
                    // Only the metadata and the allocation are read.
                    cache::strip_managed_fields(c);
                    c.spec = Default::default();
                })
                .default_backoff()
                .reflect(claims_w)
                .for_each(move |ev| {
                    log_watch_error("ResourceClaim", &ev);
                    if let Some(claim) = event_object(&ev) {
                        if let Some(pool) = claim.annotations().get(crate::fleet::dra::ANNOTATION_POOL) {
                            let ns = claim.namespace().unwrap_or_default();
                            let _ = pool_wake.send(ObjectRef::new(pool).within(&ns));
                        }
                        let uid = claim.uid().unwrap_or_default();
                        let now: std::collections::BTreeSet<String> =
                            crate::fleet::dra::allocated_pools(claim, &driver).into_iter().collect();
                        let before = if is_delete(&ev) || now.is_empty() {
                            held.remove(&uid).unwrap_or_default()
                        } else {
                            held.insert(uid, now.clone()).unwrap_or_default()
                        };
                        let pools: std::collections::BTreeSet<&String> = before.iter().chain(now.iter()).collect();
                        if !pools.is_empty() {
                            // The nodes of those pools (a resource pool's slices name the node).
                            let nodes: std::collections::BTreeSet<String> = slice_store
                                .state()
                                .iter()
                                .filter(|s| pools.contains(&s.spec.pool.name))
                                .filter_map(|s| s.spec.node_name.clone())
                                .collect();
                            for node in nodes {
                                for r in gpunode::gpunodes_for_node(&gn_store, &node) {
                                    let _ = gn_wake.send(r);
                                }
                            }
                        }
                    }
                    futures::future::ready(())
                })
                .await
        }
    };
    drop((gn_wake_tx, pool_wake_tx, node_tx_dra));
    let fleet_events = fleet.then_some((gn_rx, gn_wake_rx, node_rx, pool_rx, pool_wake_rx));

    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: config.reporter.clone(), instance: std::env::var("POD_NAME").ok() },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        config: config.clone(),
        nodes: nodes.clone(),
        pods: pods.clone(),
        gpunodes: gpunodes.clone(),
        pools: pools.clone(),
        recorder,
        failures: Mutex::new(SlotFailures::default()),
        expected: Mutex::new(CreateExpectations::default()),
        buildkite,
        queues: match &pipelines {
            Some(m) => queues::Queues::with_pipelines(m.clone()),
            None => queues::Queues::default(),
        },
        job_queues: Mutex::new(None),
        dra: dra_driver.clone().map(|driver| DraCaches::new(driver, slices.clone(), claims.clone())),
    });
    // The API token's scopes, at start and every 5 minutes, for everything this process
    // does with it: a missing scope is named (conditions of pools and jobs, a log line).
    let scope_loop = {
        let mut features = Vec::new();
        if jobs.is_some() {
            features.push(crate::buildkite::Feature::KernelJobs);
        }
        if fleet {
            features.push(crate::buildkite::Feature::ManagedPipelines);
            features.push(crate::buildkite::Feature::QueueCreation);
        }
        let explicit_uuid =
            pipelines.as_ref().and_then(|m| m.clusters().explicit().map(queues::looks_like_uuid)).unwrap_or(false);
        if !explicit_uuid {
            features.push(crate::buildkite::Feature::ClusterLookup);
        }
        let check = ctx.buildkite.clone().zip(pipelines.as_ref().map(|m| m.scopes().clone()));
        async move {
            if let Some((bk, report)) = check {
                crate::buildkite::check_scopes(bk, report, features, Duration::from_secs(300)).await;
            }
            futures::future::pending::<()>().await
        }
    };
    let (pools_changed_tx, mut pools_changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    let pools_changed = futures::stream::poll_fn(move |cx| pools_changed_rx.poll_recv(cx));
    let jobs_changed_tx = pools_changed_tx.clone();
    let metrics_loop = {
        let ctx = ctx.clone();
        async move {
            if let Some(bk) = ctx.buildkite.clone() {
                ctx.queues
                    .metrics_loop(bk, Duration::from_secs(15), || {
                        let _ = pools_changed_tx.try_send(());
                    })
                    .await;
            }
            futures::future::pending::<()>().await
        }
    };

    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let signal = {
        let tx = shutdown_tx.clone();
        async move {
            shutdown.await;
            let _ = tx.send(());
        }
    };
    let on_shutdown = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    let fleet_ctrl = match fleet_events {
        Some((gn_rx, gn_wake_rx, node_rx, pool_rx, pool_wake_rx)) => {
            let gpunode_ctrl = Controller::for_shared_stream(channel_stream(gn_rx), gpunodes.clone())
                .reconcile_on(channel_stream(gn_wake_rx))
                // Trailing debounce of 1 s: the agents of a node are created, bound and
                // started in bursts, and one status write per burst is enough (at 100 ms a
                // fleet of 1,000 nodes cost about five GpuNode status writes per node).
                .with_config(
                    kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)).concurrency(16),
                )
                .graceful_shutdown_on(on_shutdown(&shutdown_tx))
                .run(
                    |o, c| crate::metrics::timed("gpunode", gpunode::reconcile(o, c)),
                    gpunode::error_policy,
                    ctx.clone(),
                )
                .for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "gpunode reconcile");
                    }
                });
            let discovery_ctrl = Controller::for_shared_stream(channel_stream(node_rx), nodes.clone())
                .with_config(kube::runtime::controller::Config::default().concurrency(16))
                .graceful_shutdown_on(on_shutdown(&shutdown_tx))
                .run(
                    |o, c| crate::metrics::timed("discovery", gpunode::discover(o, c)),
                    gpunode::discover_error_policy,
                    ctx.clone(),
                )
                .for_each(|_| futures::future::ready(()));
            let pool_ctrl = Controller::for_shared_stream(channel_stream(pool_rx), pools.clone())
                .reconcile_on(channel_stream(pool_wake_rx))
                .reconcile_all_on(pools_changed)
                .with_config(
                    kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)).concurrency(8),
                )
                .graceful_shutdown_on(on_shutdown(&shutdown_tx))
                .run(
                    |o, c| crate::metrics::timed("agentpool", agentpool::reconcile(o, c)),
                    agentpool::error_policy,
                    ctx.clone(),
                )
                .for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "agentpool reconcile");
                    }
                });
            // Nothing reconciles before every store it reads has had its initial list: on an
            // empty cache a pool would select no GpuNode, a GpuNode would find no Node (and
            // its agents would be deleted) or size its share without the other pods. Events
            // that arrive meanwhile wait in the channels.
            let mut stores = vec![
                synced(nodes.clone()).boxed(),
                synced(pods.clone()).boxed(),
                synced(gpunodes.clone()).boxed(),
                synced(pools.clone()).boxed(),
            ];
            if dra_driver.is_some() {
                stores.push(synced(slices.clone()).boxed());
                stores.push(synced(claims.clone()).boxed());
            }
            let synced = all_synced(stores);
            // Certification of the slots of pools that ask for it (reports, canaries).
            let certify = certification::run(ctx.clone(), on_shutdown(&shutdown_tx));
            when_synced("fleet", synced, on_shutdown(&shutdown_tx), async move {
                tokio::join!(gpunode_ctrl, discovery_ctrl, pool_ctrl, certify);
            })
            .map(|_| ())
            .boxed()
        }
        None => {
            tracing::info!("fleet controllers are off (--controllers)");
            futures::future::ready(()).boxed()
        }
    };

    let (job_store, job_ctrl) = match jobs {
        Some(setup) => {
            let (jctx, fut) = crate::kerneljob::controller(
                client.clone(),
                setup,
                pools.clone(),
                gpunodes.clone(),
                on_shutdown(&shutdown_tx),
            );
            let store = jctx.jobs.clone();
            http.attach_jobs(jctx);
            // KernelJobs read pools and GpuNodes (targets, architectures): not before those
            // stores are loaded.
            let synced = all_synced(vec![synced(gpunodes.clone()).boxed(), synced(pools.clone()).boxed()]);
            (
                Some(store),
                futures::future::Either::Left(
                    when_synced("kerneljob", synced, on_shutdown(&shutdown_tx), fut).map(|_| ()),
                ),
            )
        }
        None => {
            if ctx.buildkite.is_some() {
                tracing::info!("the KernelJob controller is off (--controllers)");
            } else {
                tracing::info!("Buildkite is not configured (--buildkite-org): the KernelJob controller is off");
            }
            (None, futures::future::Either::Right(futures::future::ready(())))
        }
    };
    // Each pool's queue of KernelJobs (status.kernelJobs), when both run here: recomputed
    // from the KernelJob cache every 2 s; pools are reconciled only when one changed.
    let job_queue_loop = {
        let (ctx, store) = (ctx.clone(), job_store.clone());
        async move {
            match store {
                Some(store) if fleet => {
                    // Not `wait_until_ready` alone: it wakes only the last of several waiters.
                    gate::synced(store.clone()).await;
                    loop {
                        let now = agentpool::jobs::summarize(store.state().iter().map(|j| j.as_ref()));
                        let changed = match ctx.job_queues.lock() {
                            Ok(mut held) if held.as_ref() != Some(&now) => {
                                *held = Some(now);
                                true
                            }
                            _ => false,
                        };
                        if changed {
                            let _ = jobs_changed_tx.try_send(());
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
                _ => {
                    drop(jobs_changed_tx);
                    futures::future::pending::<()>().await
                }
            }
        }
    };
    crate::metrics::global().attach(crate::metrics::StateSources {
        jobs: job_store,
        gpunodes: fleet.then(|| gpunodes.clone()),
        pools: fleet.then(|| pools.clone()),
        buildkite: ctx.buildkite.clone(),
    });
    let ready = {
        let (nodes, pods, gpunodes, pools) = (nodes.clone(), pods.clone(), gpunodes.clone(), pools.clone());
        async move {
            if fleet {
                tokio::join!(synced(nodes), synced(pods));
            }
            tokio::join!(synced(gpunodes), synced(pools));
        }
    };
    let ready = {
        let http = http.clone();
        async move {
            ready.await;
            http.set_ready(true);
            tracing::info!("caches synced");
            futures::future::pending::<()>().await
        }
    };

    tracing::info!(discover = config.discover_gpu_nodes, "controllers starting");
    // A KernelJob-only process needs GpuNodes and AgentPools (targets, architectures) but
    // neither Nodes nor Pods: it does not watch them.
    let watches = async {
        if fleet {
            tokio::join!(node_watch, pod_watch, gpunode_watch, pool_watch, slice_watch, claim_watch);
        } else {
            drop((node_watch, pod_watch, slice_watch, claim_watch));
            tokio::join!(gpunode_watch, pool_watch);
        }
    };
    tokio::select! {
        _ = watches => anyhow::bail!("watch streams ended"),
        _ = ready => {}
        _ = metrics_loop => {}
        _ = job_queue_loop => {}
        _ = scope_loop => {}
        _ = async { tokio::join!(fleet_ctrl, job_ctrl, signal) } => {}
    }
    http.detach_jobs();
    tracing::info!("controllers stopped");
    Ok(())
}

/// With `--dra-driver`: the API server serves `resource.k8s.io/v1` and this process may list
/// what it watches. Checked at start, so a cluster before 1.34 or missing RBAC stops the
/// controller with a message that says so, instead of watches that retry forever while no
/// controller reconciles.
async fn check_dra_access(client: &Client, driver: &str) -> anyhow::Result<()> {
    use kube::api::ListParams;
    let probe = ListParams::default().limit(1);
    let what = |e: kube::Error, kind: &str| match &e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "--dra-driver {driver}: the API server does not serve resource.k8s.io/v1 {kind} (Kubernetes 1.34+ \
             is needed for GPUs through DRA); start the controller without --dra-driver (chart: fleet.dra.enabled=false)"
        ),
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "--dra-driver {driver}: no permission to list resource.k8s.io {kind} (the chart grants it with \
             fleet.dra.enabled=true): {}",
            s.message
        ),
        _ => anyhow::anyhow!("--dra-driver {driver}: listing resource.k8s.io {kind}: {e}"),
    };
    Api::<ResourceSlice>::all(client.clone()).list_metadata(&probe).await.map_err(|e| what(e, "resourceslices"))?;
    Api::<ResourceClaim>::all(client.clone()).list_metadata(&probe).await.map_err(|e| what(e, "resourceclaims"))?;
    Ok(())
}

/// Logs a watch error (the watcher retries with backoff).
fn log_watch_error<K>(kind: &str, ev: &Result<watcher::Event<K>, watcher::Error>) {
    if let Err(e) = ev {
        tracing::warn!(kind, error = %e, "watch failed; retrying");
    }
}

/// The object an Apply or Delete watch event carries.
fn event_object<K>(ev: &Result<watcher::Event<K>, watcher::Error>) -> Option<&K> {
    match ev {
        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o)) => Some(o),
        _ => None,
    }
}

fn is_delete<K>(ev: &Result<watcher::Event<K>, watcher::Error>) -> bool {
    matches!(ev, Ok(watcher::Event::Delete(_)))
}

/// A stream over an unbounded channel.
fn channel_stream<T: Send + 'static>(mut rx: mpsc::UnboundedReceiver<T>) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A reference for Events about an object.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> k8s_openapi::api::core::v1::ObjectReference {
    obj.object_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_is_expected_until_seen_or_expired() {
        let t0 = Instant::now();
        let mut e = CreateExpectations::default();
        assert!(!e.pending("ns/a", t0));
        e.created("ns/a".into(), t0);
        e.created("ns/b".into(), t0);
        assert!(e.pending("ns/a", t0 + Duration::from_secs(14)));
        assert!(!e.pending("other/a", t0), "keys carry the namespace");
        // Seen in the cache: planned normally again (e.g. deleted later, re-created at once).
        e.observed("ns/a");
        assert!(!e.pending("ns/a", t0));
        // Never seen: trusted for the TTL only, then planned again.
        assert!(!e.pending("ns/b", t0 + CreateExpectations::TTL));
        e.expire(t0 + CreateExpectations::TTL - Duration::from_millis(1));
        assert_eq!(e.len(), 1);
        e.expire(t0 + CreateExpectations::TTL);
        assert!(e.is_empty());
    }

    #[test]
    fn slot_backoff_doubles_and_caps() {
        let secs: Vec<u64> = (1..=9).map(|n| SlotFailures::backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
