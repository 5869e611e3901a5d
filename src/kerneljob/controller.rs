//! KernelJob reconcile: the thin executor of [`super::decide`]. One writer per object (the
//! reconcile) gathers what is observed, asks the pure decision what to do and carries the
//! [`Plan`] out. Background tasks (submitter, recovery look-up, poller, webhook receiver)
//! talk to Buildkite and wake the reconcile up.
//!
//! No finalizer (issue 16: at most 3 API writes per job). A finalizer costs two writes per
//! job (on, off) and makes every deletion wait for Buildkite. The build of a deleted job is
//! cancelled instead by [`super::reaper`]: at once from the watch's delete event, by a sweep
//! of the builds the board follows whose job is gone (checked with a read of the job), and,
//! after a start, by one listing of each pipeline's unfinished builds. Jobs written by
//! earlier versions still carry [`FINALIZER`]: it is honoured (cancel, then release) and
//! never added again.

use std::sync::Arc;
use std::time::Duration;

use crate::events::{Event, EventType, Recorder};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::board::{self, Board};
use super::decide::{self, Next, Note, Observed, Plan, active_attempt, next_attempt_number};
use super::machine::{self, meta};
pub use super::memory::AttemptState;
use super::memory::{JobMemory, Memory};
use super::queue::{JobKey, SubmitQueue};
use crate::api::kerneljob::KernelJobStatus;
use crate::api::{AgentPool, FIELD_MANAGER, GpuNode, KernelJob};
use crate::buildkite::{self, Build, CancelOutcome, Priority};
use crate::contract::PayloadLimits;
use crate::error::{Error, Result, is_not_found};

/// The finalizer earlier versions put on jobs with a build: removed, never added (see above).
pub const FINALIZER: &str = "benchkite.dev/cancel-build";

/// Settings of the KernelJob controller.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// A pipeline the user manages, for jobs whose job and pool name none (`None`: the
    /// pipeline benchkite manages for each queue).
    pub pipeline: Option<String>,
    /// This installation's id in build meta-data (the poller lists by it).
    pub instance: String,
    pub limits: PayloadLimits,
    /// Interval of the fallback poller (one list request per interval for all builds).
    pub poll_interval: Duration,
    /// A build with no news for this long is read once directly.
    pub stale_after: Duration,
    /// How long a deleted job's finalizer waits for Buildkite before it is released.
    pub finalizer_timeout: Duration,
    /// Submissions in flight at once.
    pub submit_workers: usize,
    /// Largest `result.json` downloaded.
    pub max_result_bytes: u64,
    /// Largest `result.json` kept in the job's result ConfigMap.
    pub max_configmap_bytes: usize,
    /// Publish Normal Events (a job's end) too, not only Warnings: one more API write per
    /// job (`--kerneljob-events=all`).
    pub normal_events: bool,
    /// What jobs may ask for: raw overrides, env names (admin settings, `--allow-*`).
    pub tenancy: super::policy::Tenancy,
    /// The installation's result master key (`--result-key-file`): results are trusted
    /// only when signed with their attempt's key derived from it.
    pub result_key: Option<crate::signing::Key>,
    /// What an unsigned result gets (`--unsigned-results`).
    pub unsigned_results: super::outcome::UnsignedResults,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            pipeline: None,
            instance: "benchkite".into(),
            limits: PayloadLimits::default(),
            poll_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(900),
            finalizer_timeout: Duration::from_secs(600),
            submit_workers: 8,
            max_result_bytes: 8 * 1024 * 1024,
            max_configmap_bytes: 512 * 1024,
            normal_events: false,
            tenancy: Default::default(),
            result_key: None,
            unsigned_results: Default::default(),
        }
    }
}

/// Counters of webhook deliveries.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    pub accepted: std::sync::atomic::AtomicU64,
    pub refused: std::sync::atomic::AtomicU64,
    pub replayed: std::sync::atomic::AtomicU64,
    pub ignored: std::sync::atomic::AtomicU64,
}

/// Everything the KernelJob reconcile and its tasks share.
pub struct JobCtx {
    pub client: kube::Client,
    pub bk: buildkite::Client,
    pub config: JobConfig,
    pub jobs: Store<KernelJob>,
    pub pools: Store<AgentPool>,
    pub gpunodes: Store<GpuNode>,
    /// Namespace labels (metadata only): who may use which pool and override.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Result cache entries (metadata only), for eviction.
    pub cache_entries: Store<PartialObjectMeta<k8s_openapi::api::core::v1::ConfigMap>>,
    pub board: Board,
    pub queue: SubmitQueue,
    pub recorder: Recorder,
    /// What this process remembers per job, in one place.
    pub memory: Memory,
    pub trigger: mpsc::UnboundedSender<ObjectRef<KernelJob>>,
    pub webhooks: WebhookCounters,
    /// When this process took over: a first attempt of a job created later has no build.
    pub started: Timestamp,
    /// The pipelines builds go to: ensured (created or updated) before a build is created.
    pub pipelines: crate::controller::pipelines::PipelineManager,
    /// The API token's scopes: a missing one is named in every waiting job's status.
    pub scopes: buildkite::ScopeReport,
    /// Fair queueing of pools with `spec.queueing`: the last admission round.
    pub admission: std::sync::Mutex<super::admission::AdmissionState>,
}

pub fn key_of(job: &KernelJob) -> JobKey {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

pub(super) fn created(job: &KernelJob) -> Timestamp {
    job.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now)
}

impl JobCtx {
    /// The KernelJob a build of this installation belongs to, if it still exists: found by
    /// the UID in the build's run id. Meta-data only speeds the look-up up; it is trusted
    /// only when the job it names has that UID (a running job can rewrite meta-data).
    pub fn job_of(&self, build: &Build) -> Option<JobKey> {
        let uid = board::uid_of_run(board::run_id_of(build)?)?;
        if let Some((ns, name)) = build.meta_data.get(meta::JOB).and_then(|k| k.split_once('/'))
            && let Some(job) = self.jobs.get(&ObjectRef::new(name).within(ns))
            && job.metadata.uid.as_deref() == Some(uid)
        {
            return Some(key_of(&job));
        }
        self.jobs.find(|j| j.metadata.uid.as_deref() == Some(uid)).map(|j| key_of(&j))
    }

    pub fn wake(&self, key: &str) {
        if let Some((ns, name)) = key.split_once('/') {
            let _ = self.trigger.send(ObjectRef::new(name).within(ns));
        }
    }

    fn event(&self, job: &KernelJob, note: Note) {
        // The end of a job is in its status (phase, conditions, result); a Normal Event per job
        // is one more write, so it is published only when asked for.
        if !note.warning && !self.config.normal_events {
            return;
        }
        // Published in the background: a reconcile does not wait for Events.
        let ev = Event {
            type_: if note.warning { EventType::Warning } else { EventType::Normal },
            reason: note.reason,
            note: Some(note.message),
            action: note.action.into(),
            secondary: None,
        };
        let (recorder, object) = (self.recorder.clone(), job.object_ref(&()));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &object).await {
                tracing::debug!(error = %e, reason = %ev.reason, "publishing event failed");
            }
        });
    }

    /// The freshest status known: the cache's, or the one this process wrote last if newer.
    pub(super) fn current_status(&self, job: &KernelJob) -> KernelJobStatus {
        let (key, uid, rv) = (key_of(job), job.uid().unwrap_or_default(), resource_version(job));
        self.memory
            .with_existing(&key, &uid, |m| newer_write(&mut m.written, rv))
            .flatten()
            .unwrap_or_else(|| job.status.clone().unwrap_or_default())
    }

    async fn write_status(&self, job: &KernelJob, status: &KernelJobStatus) -> Result<()> {
        let key = key_of(job);
        let ns = job.namespace().unwrap_or_default();
        let api: Api<KernelJob> = Api::namespaced(self.client.clone(), &ns);
        let patch = json!({ "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob", "status": status });
        let updated = api
            .patch_status(&job.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube(format!("writing status of KernelJob {key}")))?;
        let rv = resource_version(&updated);
        self.memory.with(&key, &job.uid().unwrap_or_default(), |m| m.written = Some((rv, status.clone())));
        Ok(())
    }
}

/// What this process last wrote (a status, the finalizer's presence) if the cached copy (at
/// `cached_rv`) is older than that write. Once the cache has caught up, the record has done
/// its job and goes.
fn newer_write<V: Clone>(written: &mut Option<(u64, V)>, cached_rv: u64) -> Option<V> {
    match written {
        Some((rv, v)) if *rv > cached_rv => Some(v.clone()),
        Some(_) => {
            *written = None;
            None
        }
        None => None,
    }
}

/// Where a job's builds go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub queue: String,
    /// The pool's GPU architecture, for the default `arch`.
    pub arch: Option<String>,
    /// The pipeline slug: the one the job or its pool names, else the pipeline benchkite
    /// manages for the queue.
    pub pipeline: String,
    /// benchkite creates and updates the pipeline (`pipeline` is its managed slug).
    pub managed: bool,
}

impl JobCtx {
    /// The labels of namespace `ns`, if the cache has it.
    pub(super) fn namespace_labels(&self, ns: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.namespaces.get(&ObjectRef::new(ns)).map(|n| n.metadata.labels.clone().unwrap_or_default())
    }
}

/// The queue, architecture and pipeline a job's builds go to, if the job may use them: its
/// namespace may use the overrides and env it sets (admin settings and Namespace labels,
/// [`super::policy`]) and the pool admits its namespace. `Err` is a condition reason and a
/// message naming the rule; a refused job gets no build.
pub(super) fn target(job: &KernelJob, ctx: &JobCtx) -> std::result::Result<Target, (&'static str, String)> {
    use super::policy;
    let ns = job.namespace().unwrap_or_default();
    let labels = ctx.namespace_labels(&ns);
    let tenancy = &ctx.config.tenancy;
    policy::check_overrides(&job.spec, &ns, labels.as_ref(), tenancy)?;
    policy::check_env(&job.spec, tenancy)?;
    let (queue, arch, pool_pipeline) = if let Some(queue) = &job.spec.queue {
        (queue.clone(), None, None)
    } else {
        let Some(pool_name) = &job.spec.pool else {
            return Err(("NoTarget", "set spec.pool or spec.queue".into()));
        };
        let pool_ns = job.spec.pool_namespace.clone().unwrap_or_else(|| ns.clone());
        let Some(pool) = ctx.pools.get(&ObjectRef::new(pool_name).within(&pool_ns)) else {
            return Err(("PoolNotFound", format!("AgentPool {pool_ns}/{pool_name} does not exist")));
        };
        policy::check_pool(&ns, &pool_ns, pool_name, pool.spec.job_namespace_selector(), labels.as_ref())?;
        let arch = pool
            .status
            .as_ref()
            .and_then(|s| s.nodes.iter().find(|n| n.desired > 0).or_else(|| s.nodes.first()))
            .and_then(|n| ctx.gpunodes.get(&ObjectRef::new(&n.name)))
            .and_then(|g| g.status.as_ref().and_then(|s| s.architecture.clone()));
        let own = pool.spec.buildkite.as_ref().and_then(|b| b.pipeline.clone());
        (pool.spec.queue.clone(), arch, own)
    };
    let user = job.spec.pipeline.clone().or(pool_pipeline).or_else(|| ctx.config.pipeline.clone());
    let managed = user.is_none();
    let pipeline = user.unwrap_or_else(|| buildkite::managed_slug(&ctx.config.instance, &queue));
    Ok(Target { queue, arch, pipeline, managed })
}

/// How long after its start this process judges whether a job can be served at all.
const FAIL_FAST_AFTER_START: k8s_openapi::jiff::SignedDuration = k8s_openapi::jiff::SignedDuration::from_secs(5);

/// Why no agent of the job's pool can ever serve it (`feasible::unservable`); `None` for a
/// raw queue (agents benchkite does not know) or a pool it cannot see.
fn unservable(job: &KernelJob, ctx: &JobCtx) -> Option<(&'static str, String)> {
    let pool_name = job.spec.pool.as_ref()?;
    let ns = job.namespace().unwrap_or_default();
    let pool_ns = job.spec.pool_namespace.clone().unwrap_or(ns);
    let pool = ctx.pools.get(&ObjectRef::new(pool_name).within(&pool_ns))?;
    super::feasible::unservable(&job.spec, &pool, |node| {
        ctx.gpunodes.get(&ObjectRef::new(node)).and_then(|g| g.status.as_ref().and_then(|s| s.architecture.clone()))
    })
}

/// The pipeline a job's builds are in, even when its target is gone (a deleted pool): the
/// pipeline of a build it recorded, else the managed pipeline of the queue it went to.
pub(super) fn pipeline_of(job: &KernelJob, ctx: &JobCtx, status: &KernelJobStatus) -> Option<String> {
    if let Ok(t) = target(job, ctx) {
        return Some(t.pipeline);
    }
    if let Some(p) = status.attempts.iter().rev().find_map(|a| a.build.as_ref().map(|b| b.pipeline.clone())) {
        return Some(p);
    }
    status.queue.as_ref().map(|q| buildkite::managed_slug(&ctx.config.instance, q))
}

pub async fn reconcile(job: Arc<KernelJob>, ctx: Arc<JobCtx>) -> Result<Action> {
    let key = key_of(&job);
    let uid = job.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let status = ctx.current_status(&job);
    let memory = ctx.memory.snapshot(&key, &uid);
    let now = Timestamp::now();
    let attempt = next_attempt_number(&status);
    let next_run = machine::run_id(&uid, attempt);
    let next_build = ctx.board.get(&next_run).map(|e| e.build);
    let active_terminal =
        active_attempt(&status).and_then(|a| ctx.board.get(&a.run_id)).map(|e| e.build.state.is_terminal());
    let target = target(&job, &ctx);
    let missing = ctx.scopes.missing_for(&[buildkite::Feature::KernelJobs]);
    // Fail fast only once this process has seen the fleet: in its first seconds the pools'
    // status may predate GpuNodes it is still deriving.
    let judging_in = Duration::try_from((ctx.started + FAIL_FAST_AFTER_START).duration_since(now)).ok();
    let servable = match (unservable(&job, &ctx), judging_in) {
        (None, _) => decide::Servable::Yes,
        (Some((reason, message)), None) => decide::Servable::No(reason, message),
        (Some(_), Some(wait)) => decide::Servable::NotYet(wait),
    };
    let fresh = attempt == 1 && created(&job) > ctx.started + k8s_openapi::jiff::SignedDuration::from_secs(5);
    // The result cache is asked once per process, before a first attempt is submitted.
    let mut memory = memory;
    if memory.cache.is_none()
        && status.attempts.is_empty()
        && !status.phase.is_finished()
        && job.metadata.deletion_timestamp.is_none()
        && next_build.is_none()
        && target.is_ok()
        && super::cache_io::wanted(&ctx, &job)
    {
        let probe = super::cache_io::probe(&ctx, &job).await;
        ctx.memory.with(&key, &uid, |m| m.cache = Some(probe.clone()));
        memory.cache = Some(probe);
    }
    let hit = match &memory.cache {
        Some(super::memory::CacheProbe::Hit(h)) => Some(h.clone()),
        _ => None,
    };
    let observed = Observed {
        job: &job,
        status: &status,
        has_finalizer: has_finalizer(&job, &ctx),
        now,
        memory: &memory,
        next: Next::of(&memory, &next_run, next_build.as_ref()),
        active_terminal,
        target: target.as_ref().map(|t| t.queue.clone()).map_err(Clone::clone),
        servable,
        admission: ctx.admission_of(&job),
        cached: hit.as_deref(),
        missing_scopes: (!missing.is_empty())
            .then(|| buildkite::scopes::missing_scopes_message(&missing, "KernelJobs")),
        throttled: ctx.bk.would_wait(Priority::Submit).is_some(),
        fresh,
        finalizer_timeout: ctx.config.finalizer_timeout,
    };
    let plan = decide::decide(&observed);
    if plan.follow {
        return super::follow::follow(&job, &ctx, status, &memory).await;
    }
    execute(&job, &ctx, plan, &status).await
}

/// Carries a plan out, in its order.
pub(super) async fn execute(job: &KernelJob, ctx: &JobCtx, mut plan: Plan, before: &KernelJobStatus) -> Result<Action> {
    let (key, uid) = (key_of(job), job.uid().unwrap_or_default());
    let now = Timestamp::now();
    if let Some(c) = &plan.cancel {
        // The board knows the build's id (and GraphQL id): then the cancel may go through GraphQL.
        let known = ctx.board.get(&c.run_id).map(|e| e.build).filter(|b| b.number == c.number);
        let id = known.as_ref().map(|b| (b.id.as_str(), b.graphql_id.as_deref()));
        match ctx.bk.cancel_build_id(Some(&c.pipeline), c.number, id, Priority::Cancel).await {
            Ok(CancelOutcome::Canceled(b)) => {
                ctx.board.update(&b, now);
            }
            // Already finished or gone: nothing runs.
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Buildkite {
                    action: format!("cancelling build #{} of KernelJob {key}", c.number),
                    source: e,
                });
            }
        }
        tracing::info!(job = %key, build = c.number, "cancelled the job's build");
        ctx.memory.with(&key, &uid, |m| m.canceled.insert(c.run_id.clone()));
    }
    let raw = plan.store_output.take();
    if let Some(bytes) = &raw
        && let Some(s) = plan.status.as_mut()
        && let Some(name) = {
            let fingerprint = s.result.as_ref().and_then(|r| r.system.as_ref()).and_then(|y| y.fingerprint.as_ref());
            super::follow::store_output(job, ctx, bytes, fingerprint).await
        }
    {
        s.output_ref = Some(name);
    }
    if let Some(s) = &plan.status {
        ctx.write_status(job, s).await?;
        crate::metrics::global().job_status_written(Some(before), s);
        // A finished evaluation of a pool with a result cache leaves an entry (under the key
        // its submission was computed under).
        if s.phase == crate::api::kerneljob::Phase::Succeeded
            && s.cached_from.is_none()
            && super::cache_io::wanted(ctx, job)
            && let Some(expected) = submitted_cache_key(job, ctx, s)
        {
            super::cache_io::store(ctx, job, s, raw.as_deref(), &expected).await;
        }
        // A result with a drift canary: labelled for the certification manager, which
        // records it against the slot that measured it.
        if s.phase.is_finished()
            && s.result.as_ref().and_then(|r| r.system.as_ref()).is_some_and(|y| y.canary.is_some())
            && !job.labels().contains_key(crate::api::certification::CANARY_LABEL)
        {
            let patch = json!({"metadata": {"labels": {crate::api::certification::CANARY_LABEL: "true"}}});
            let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
            if let Err(e) = api.patch(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(job = %key, error = %e, "labelling the job's canary failed; the sample is lost");
            }
        }
        if s.phase.is_finished()
            && let Some(done) = s.attempts.last().and_then(|a| a.finished_at.as_ref())
        {
            let since = now.duration_since(done.0);
            crate::metrics::global().job_completed(Duration::try_from(since).unwrap_or_default());
        }
    }
    if let Some(note) = plan.event.take() {
        ctx.event(job, note);
    }
    if let Some(run) = &plan.absent {
        ctx.memory.with(&key, &uid, |m| m.mark_absent(run));
    }
    let priority = if plan.demote { i32::MIN } else { job.spec.priority };
    if plan.submit && ctx.queue.push(&key, priority, &created(job).to_string()) {
        tracing::debug!(job = %key, priority = job.spec.priority, waiting = ctx.queue.len(), "queued for submission");
    }
    if plan.look_up {
        ctx.memory.with(&key, &uid, |m| m.unverified = true);
    }
    let status = plan.status.as_ref().unwrap_or(before);
    if plan.release {
        remove_finalizer(job, ctx).await?;
    }
    if plan.release || plan.settle {
        // Nothing of the job's builds is needed any more (a stray build found later comes
        // back on the board and is cancelled).
        for a in &status.attempts {
            ctx.board.forget(&a.run_id);
        }
        ctx.board.forget(&machine::run_id(&uid, next_attempt_number(status)));
        ctx.memory.with_existing(&key, &uid, JobMemory::settle);
    }
    if plan.delete {
        let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
        match api.delete(&job.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::kube(format!("deleting expired KernelJob {key}"))(e)),
        }
    }
    if plan.forget {
        for a in &status.attempts {
            ctx.board.forget(&a.run_id);
        }
        ctx.memory.forget(&key);
    }
    Ok(plan.requeue.map_or_else(Action::await_change, Action::requeue))
}

/// The cache key a job's last attempt was submitted under: this process's, else the one its
/// build carries in meta-data (a build can rewrite its meta-data: the key is checked against
/// the job's inputs before anything is stored).
fn submitted_cache_key(job: &KernelJob, ctx: &JobCtx, status: &KernelJobStatus) -> Option<String> {
    let (key, uid) = (key_of(job), job.uid().unwrap_or_default());
    let remembered =
        ctx.memory.with_existing(&key, &uid, |m| m.cache.as_ref().and_then(|c| c.key().map(str::to_string)));
    remembered.flatten().or_else(|| {
        let run = &status.attempts.last()?.run_id;
        ctx.board.get(run)?.build.meta_data.get(super::cache::KEY_META).cloned()
    })
}

pub(super) fn resource_version(job: &KernelJob) -> u64 {
    job.metadata.resource_version.as_deref().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0)
}

/// Whether the job still carries an earlier version's finalizer: as this process last wrote
/// it (its removal) while the cached copy is older than that write, as the copy says
/// afterwards.
pub(super) fn has_finalizer(job: &KernelJob, ctx: &JobCtx) -> bool {
    let (key, uid) = (key_of(job), job.uid().unwrap_or_default());
    ctx.memory
        .with_existing(&key, &uid, |m| newer_write(&mut m.finalizer_write, resource_version(job)))
        .flatten()
        .unwrap_or_else(|| job.finalizers().iter().any(|f| f == FINALIZER))
}

/// The job itself (the cache holds no sources). `None`: the job is gone, being deleted, or
/// was created again under its name.
pub(super) async fn fetch_job(ctx: &JobCtx, cached: &KernelJob) -> Result<Option<KernelJob>> {
    let (ns, name) = (cached.namespace().unwrap_or_default(), cached.name_any());
    let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &ns);
    let fetched = api.get_opt(&name).await.map_err(Error::kube(format!("reading KernelJob {ns}/{name}")))?;
    // A job being deleted gets no build.
    Ok(fetched.filter(|j| j.uid() == cached.uid() && j.metadata.deletion_timestamp.is_none()))
}

async fn remove_finalizer(job: &KernelJob, ctx: &JobCtx) -> Result<()> {
    if !has_finalizer(job, ctx) {
        return Ok(());
    }
    let (key, uid) = (key_of(job), job.uid().unwrap_or_default());
    let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    // Applying our metadata without the finalizer releases the field we own.
    let patch = json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": job.name_any(), "finalizers": []},
    });
    match api.patch(&job.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(updated) => {
            // A job that is being deleted is gone after this: nothing to remember for it.
            if updated.metadata.deletion_timestamp.is_none() {
                let rv = resource_version(&updated);
                ctx.memory.with(&key, &uid, |m| m.finalizer_write = Some((rv, false)));
            } else {
                ctx.memory.forget(&key);
            }
            Ok(())
        }
        Err(e) if is_not_found(&e) => {
            ctx.memory.forget(&key);
            Ok(())
        }
        Err(e) => Err(Error::kube(format!("removing the finalizer of KernelJob {key}"))(e)),
    }
}

pub fn error_policy(job: Arc<KernelJob>, err: &Error, _ctx: Arc<JobCtx>) -> Action {
    tracing::warn!(job = %key_of(&job), error = %err, "KernelJob reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_status_counts_until_the_cache_catches_up_then_goes() {
        let mine = KernelJobStatus { phase: crate::api::kerneljob::Phase::Running, ..Default::default() };
        let mut written = Some((120, mine.clone()));
        // An older cached copy defers to the write, and the record stays.
        assert_eq!(newer_write(&mut written, 119), Some(mine.clone()));
        assert_eq!(newer_write(&mut written, 0), Some(mine));
        assert!(written.is_some());
        // The write itself, or anything after it, is the cache's to tell; the record goes.
        assert_eq!(newer_write(&mut written, 120), None);
        assert!(written.is_none());
        let mut w = Some((5, KernelJobStatus::default()));
        assert_eq!(newer_write(&mut w, 9), None);
        assert!(w.is_none());
        // Nothing written: nothing.
        assert_eq!(newer_write::<bool>(&mut None, 1), None);
        // The same record serves the finalizer: a removal not yet cached still counts.
        let mut fin = Some((42, false));
        assert_eq!(newer_write(&mut fin, 41), Some(false));
        assert_eq!(newer_write(&mut fin, 42), None);
    }
}
