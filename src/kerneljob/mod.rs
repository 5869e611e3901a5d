//! KernelJob: from a Kubernetes object to a Buildkite build and back into status.

pub mod admission;
pub mod board;
pub mod cache;
pub mod cache_io;
pub mod conditions;
pub mod controller;
pub mod decide;
pub mod fairshare;
pub mod feasible;
pub mod follow;
pub mod machine;
pub mod memory;
pub mod outcome;
pub mod policy;
pub mod poll;
pub mod queue;
pub mod reaper;
pub mod recovery;
pub mod submission;
pub mod submit;
pub mod tenancy_watch;
pub mod webhook;

pub use controller::{JobConfig, JobCtx};

use std::sync::Arc;

use crate::events::{Recorder, Reporter};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::{AgentPool, GpuNode, KernelJob};

/// The cache keeps no submission sources (they can be large); the submitter reads them from
/// the API when it needs them.
pub fn strip_job(job: &mut KernelJob) {
    job.metadata.managed_fields = None;
    // Replaced, not cleared: a cleared map or String keeps its allocation. Nothing reads
    // the cached job's sources or headers (the submitter reads the object itself).
    job.spec.sources = Default::default();
    job.spec.headers = Default::default();
}

/// Everything the KernelJob controller needs besides the shared fleet caches.
pub struct JobSetup {
    pub buildkite: crate::buildkite::Client,
    /// The pipelines builds go to (one managed pipeline per queue).
    pub pipelines: crate::controller::pipelines::PipelineManager,
    /// What the API token may do (checked at start and periodically).
    pub scopes: crate::buildkite::ScopeReport,
    pub config: JobConfig,
    pub webhook_secret: Option<crate::buildkite::Secret>,
    pub reporter: String,
    /// Only KernelJobs of this namespace (default: all namespaces).
    pub namespace: Option<String>,
}

/// Waits until the Namespace cache is loaded, saying so while it is not (the chart grants
/// list/watch on namespaces; without it no job is decided).
async fn wait_for_namespaces(namespaces: &Store<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>) {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), namespaces.wait_until_ready()).await {
            Ok(_) => return,
            Err(_) => tracing::warn!(
                "the Namespace cache is not loaded after 30 s: KernelJobs wait (may the controller's ServiceAccount list and watch namespaces?)"
            ),
        }
    }
}

/// Builds the KernelJob controller: its context (for the webhook route) and the future
/// that runs the controller and its background tasks until `shutdown`.
pub fn controller(
    client: Client,
    setup: JobSetup,
    pools: Store<AgentPool>,
    gpunodes: Store<GpuNode>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Arc<JobCtx>, impl std::future::Future<Output = ()> + Send) {
    let (jobs, writer) = reflector::store::<KernelJob>();
    let api: Api<KernelJob> = match &setup.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Deletions reach the reaper (no finalizer: the reconcile never sees a deleted job).
    let (deleted_tx, deleted_rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .modify(strip_job)
        .default_backoff()
        .reflect(writer)
        .inspect(move |ev| {
            if let Ok(watcher::Event::Delete(job)) = ev
                && let Some(d) = reaper::Deleted::of(job)
            {
                let _ = deleted_tx.send(d);
            }
        })
        .applied_objects();
    let (namespaces, namespace_watch) = tenancy_watch::namespace_cache(client.clone(), setup.namespace.as_deref());
    let (cache_entries, cache_watch) = cache_io::entries_cache(client.clone(), setup.namespace.as_deref());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: setup.reporter.clone(), instance: std::env::var("POD_NAME").ok() },
    );
    let ctx = Arc::new(JobCtx {
        client: client.clone(),
        bk: setup.buildkite,
        config: setup.config,
        jobs: jobs.clone(),
        pools,
        gpunodes,
        namespaces: namespaces.clone(),
        cache_entries,
        board: board::Board::default(),
        queue: queue::SubmitQueue::default(),
        recorder,
        memory: memory::Memory::default(),
        trigger: tx,
        webhooks: Default::default(),
        started: Timestamp::now(),
        pipelines: setup.pipelines,
        scopes: setup.scopes,
        admission: Default::default(),
    });
    let wakeups = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let run_ctx = ctx.clone();
    let fut = async move {
        let ctx = run_ctx;
        let mut tasks = tokio::task::JoinSet::new();
        // Who may use which pool and override depends on Namespace labels: loaded before the
        // first job is decided (a job decided without them would be refused for a moment).
        let t = &ctx.config.tenancy;
        tracing::info!(
            raw_queue = t.raw_queue.as_str(),
            pipeline_override = t.pipeline.as_str(),
            branch_override = t.branch.as_str(),
            secret_sources = t.secret_sources.as_str(),
            env_allow = %t.env_allow.join(","),
            "KernelJob tenancy: what jobs may ask for"
        );
        tasks.spawn(namespace_watch(ctx.clone()));
        tasks.spawn(cache_watch);
        wait_for_namespaces(&namespaces).await;
        tasks.spawn(tenancy_watch::pool_triggers(ctx.clone()));
        for _ in 0..ctx.config.submit_workers.max(1) {
            tasks.spawn(submit::submit_worker(ctx.clone()));
        }
        tasks.spawn(recovery::recovery_loop(ctx.clone()));
        tasks.spawn(poll::poll_loop(ctx.clone()));
        tasks.spawn(reaper::reap_loop(ctx.clone(), deleted_rx));
        tasks.spawn(admission::admission_loop(ctx.clone()));
        Controller::for_stream(stream, jobs)
            .reconcile_on(wakeups)
            .with_config(kube::runtime::controller::Config::default().concurrency(32))
            .graceful_shutdown_on(shutdown)
            .run(
                |o, c| crate::metrics::timed("kerneljob", controller::reconcile(o, c)),
                controller::error_policy,
                ctx.clone(),
            )
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "kerneljob reconcile");
                }
            })
            .await;
        tasks.abort_all();
    };
    (ctx, fut)
}
