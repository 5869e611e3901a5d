//! KernelJob reconcile: one writer per object (the reconcile) turns what the build board,
//! the submitter and the deadline say into status. Background tasks (submitter, recovery
//! lookup, poller, webhook receiver) talk to Buildkite and wake the reconcile up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::{Event, EventType, Recorder};
use k8s_openapi::api::core::v1::{ConfigMap, Secret as K8sSecret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::board::{self, Board};
use super::machine::{self, BuildOutcome, meta};
use super::queue::{JobKey, SubmitQueue};
use super::submission::{self, SubmissionContext};
use crate::api::condition::{ConditionSet, ConditionStatus};
use crate::api::kerneljob::{Attempt, BuildRef, KernelJobStatus, Phase, conditions as cond};
use crate::api::{AgentPool, FIELD_MANAGER, GpuNode, KernelJob};
use crate::buildkite::{self, Build, BuildQuery, CancelOutcome, NewBuild, Priority};
use crate::contract::{self, PayloadLimits, summary::ResultSummary};
use crate::error::{Error, Result, is_not_found};

/// Finalizer that cancels the build of a deleted, unfinished KernelJob.
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
        }
    }
}

/// What this process knows about an attempt's build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptState {
    /// Known to have no build: may be created.
    Absent,
    /// A create is in flight or its outcome is unknown: create nothing.
    Creating,
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
    pub board: Board,
    pub queue: SubmitQueue,
    pub recorder: Recorder,
    /// What this process knows about the build of each pending attempt (by run id); absent
    /// = unknown (a build may exist: look it up before creating one).
    pub attempts: Mutex<HashMap<String, AttemptState>>,
    /// Jobs whose next attempt must be looked up before it may be created.
    pub unverified: Mutex<HashSet<JobKey>>,
    /// Run ids whose build benchkite cancelled.
    pub canceled: Mutex<HashSet<String>>,
    /// The last status this process wrote per job, with its resourceVersion: protects
    /// against reading an older copy from the cache right after a write.
    pub written: Mutex<HashMap<JobKey, (u64, KernelJobStatus)>>,
    /// Last submission error per job (shown in status until the next try).
    pub submit_errors: Mutex<HashMap<JobKey, String>>,
    /// Jobs the submitter found unsubmittable (reason, message): the reconcile, the only
    /// status writer, marks them Failed.
    pub refused: Mutex<HashMap<JobKey, (String, String)>>,
    /// This process's last finalizer write per job (uid): whether it left the finalizer on,
    /// and the resourceVersion it produced. A reconcile of a cached copy older than that
    /// write (a webhook woke it) trusts the write, so it neither adds nor removes the
    /// finalizer twice; once the cache has caught up the entry goes.
    pub finalizer_writes: Mutex<HashMap<String, (u64, bool)>>,
    pub trigger: mpsc::UnboundedSender<ObjectRef<KernelJob>>,
    pub webhooks: WebhookCounters,
    /// Creation time of the oldest job that needs a look-up, for the recovery list.
    pub started: Timestamp,
    /// The pipelines builds go to: ensured (created or updated) before a build is created.
    pub pipelines: crate::controller::pipelines::PipelineManager,
    /// The API token's scopes: a missing one is named in every waiting job's status.
    pub scopes: buildkite::ScopeReport,
}

pub fn key_of(job: &KernelJob) -> JobKey {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

fn created(job: &KernelJob) -> Timestamp {
    job.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    fn event(&self, job: &KernelJob, type_: EventType, reason: &str, action: &str, note: String) {
        // Published in the background: a reconcile does not wait for Events.
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        let (recorder, object) = (self.recorder.clone(), job.object_ref(&()));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &object).await {
                tracing::debug!(error = %e, reason = %ev.reason, "publishing event failed");
            }
        });
    }

    /// The freshest status known: the cache's, or the one this process wrote last if newer.
    fn current_status(&self, job: &KernelJob) -> KernelJobStatus {
        newer_write(&mut lock(&self.written), &key_of(job), resource_version(job))
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
        lock(&self.written).insert(key, (resource_version(&updated), status.clone()));
        Ok(())
    }
}

/// What this process last wrote for `key` (a status, the finalizer's presence) if the
/// cached copy (at `cached_rv`) is older than that write. Once the cache has caught up, the
/// record has done its job and goes: kept, it would hold an entry per job for as long as
/// the process runs.
fn newer_write<V: Clone>(written: &mut HashMap<String, (u64, V)>, key: &str, cached_rv: u64) -> Option<V> {
    match written.get(key) {
        Some((rv, v)) if *rv > cached_rv => Some(v.clone()),
        Some(_) => {
            written.remove(key);
            None
        }
        None => None,
    }
}

/// Where a job's builds go.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    queue: String,
    /// The pool's GPU architecture, for the default `arch`.
    arch: Option<String>,
    /// The pipeline slug: the one the job or its pool names, else the pipeline benchkite
    /// manages for the queue.
    pipeline: String,
    /// benchkite creates and updates the pipeline (`pipeline` is its managed slug).
    managed: bool,
}

/// The queue, architecture and pipeline a job's builds go to.
fn target(job: &KernelJob, ctx: &JobCtx) -> std::result::Result<Target, (&'static str, String)> {
    let (queue, arch, pool_pipeline) = if let Some(queue) = &job.spec.queue {
        (queue.clone(), None, None)
    } else {
        let ns = job.namespace().unwrap_or_default();
        let Some(pool_name) = &job.spec.pool else {
            return Err(("NoTarget", "set spec.pool or spec.queue".into()));
        };
        let Some(pool) = ctx.pools.get(&ObjectRef::new(pool_name).within(&ns)) else {
            return Err(("PoolNotFound", format!("AgentPool {ns}/{pool_name} does not exist")));
        };
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

/// The attempt that is under way (has a build and no outcome yet).
fn active_attempt(status: &KernelJobStatus) -> Option<&Attempt> {
    status.attempts.last().filter(|a| a.outcome.is_empty() && a.build.is_some())
}

fn next_attempt_number(status: &KernelJobStatus) -> i32 {
    i32::try_from(status.attempts.len()).unwrap_or(i32::MAX - 1) + 1
}

fn time(ts: Option<Timestamp>) -> Option<Time> {
    ts.map(Time)
}

fn build_ref(build: &Build, pipeline: &str) -> BuildRef {
    BuildRef {
        pipeline: build.pipeline_slug().unwrap_or(pipeline).to_string(),
        number: i64::try_from(build.number).unwrap_or(i64::MAX),
        id: build.id.clone(),
        web_url: build.web_url.clone().unwrap_or_default(),
    }
}

/// Conditions for a phase (kstatus: Ready True once finished; Complete/Failed like Jobs).
fn set_phase_conditions(
    set: &mut ConditionSet<'_>,
    phase: Phase,
    reason: &str,
    message: &str,
    throttled: Option<&str>,
) {
    let (complete, failed) = match phase {
        Phase::Succeeded => (true, false),
        Phase::Failed | Phase::TimedOut | Phase::Cancelled => (false, true),
        _ => (false, false),
    };
    if complete {
        set.set(cond::COMPLETE, ConditionStatus::True, reason, message);
    } else {
        set.set(cond::COMPLETE, ConditionStatus::False, phase.as_str(), "");
    }
    if failed {
        set.set(cond::FAILED, ConditionStatus::True, reason, message);
    } else {
        set.set(cond::FAILED, ConditionStatus::False, phase.as_str(), "");
    }
    // kstatus: a job is Current once it succeeded, Failed (Stalled) once it failed or
    // cannot be submitted without the user's help, InProgress (Reconciling) otherwise.
    let needs_user = machine::needs_user(phase, reason);
    if phase == Phase::Succeeded {
        set.set(cond::READY, ConditionStatus::True, reason, message);
    } else {
        // The specific reason (PoolNotFound, Queued, BuildRunning, BuildFailed, …).
        set.set(cond::READY, ConditionStatus::False, reason, message);
    }
    if needs_user {
        set.kstatus(None, Some((reason, message)));
    } else if phase.is_finished() {
        set.kstatus(None, None);
    } else {
        set.kstatus(Some((phase.as_str(), message)), None);
    }
    let submitted = !matches!(phase, Phase::Pending);
    set.set(
        cond::SUBMITTED,
        ConditionStatus::from_bool(submitted),
        if submitted { "BuildCreated" } else { "NotSubmitted" },
        "",
    );
    match throttled {
        Some(msg) => set.set(cond::THROTTLED, ConditionStatus::True, "RequestBudgetExhausted", msg),
        None => set.set(cond::THROTTLED, ConditionStatus::False, "WithinBudget", ""),
    };
}

fn with_conditions(
    job: &KernelJob,
    mut status: KernelJobStatus,
    reason: &str,
    message: String,
    throttled: Option<&str>,
) -> KernelJobStatus {
    let previous = job.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let mut set = ConditionSet::new(&previous, job.metadata.generation, Timestamp::now());
    set_phase_conditions(&mut set, status.phase, reason, &message, throttled);
    status.conditions = set.into_vec();
    status.message = message;
    status.observed_generation = job.metadata.generation;
    status.attempt_count = i32::try_from(status.attempts.len()).unwrap_or(i32::MAX);
    status
}

/// The Throttled condition's message while the request budget is spent.
const THROTTLED_MESSAGE: &str =
    "Buildkite's request budget is spent; queued jobs are submitted by priority, then age, as it refills";

pub async fn reconcile(job: Arc<KernelJob>, ctx: Arc<JobCtx>) -> Result<Action> {
    let key = key_of(&job);
    if job.metadata.deletion_timestamp.is_some() {
        return cleanup(&job, &ctx).await;
    }
    let status = ctx.current_status(&job);
    if status.phase.is_finished() {
        return finished(&job, &ctx, &status).await;
    }
    let now = Timestamp::now();
    let left = machine::time_left(created(&job), &job.spec, now);

    if let Some(active) = active_attempt(&status).cloned() {
        ensure_finalizer(&job, &ctx).await?;
        return follow(&job, &ctx, status, active, left).await;
    }

    // No build for the next attempt yet.
    let attempt = next_attempt_number(&status);
    let uid = job.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let run_id = machine::run_id(&uid, attempt);
    if let Some(entry) = ctx.board.get(&run_id) {
        // Created (by the submitter or found by the recovery look-up): record it.
        ensure_finalizer(&job, &ctx).await?;
        return adopt(&job, &ctx, status, attempt, run_id, entry.build, left).await;
    }
    if left.is_zero() {
        let mut s = status;
        s.phase = Phase::TimedOut;
        s.completion_time = Some(Time(now));
        let msg = "the deadline passed before a build was created".to_string();
        let s = with_conditions(&job, s, "DeadlineExceeded", msg.clone(), None);
        ctx.write_status(&job, &s).await?;
        ctx.event(&job, EventType::Warning, "TimedOut", "Timeout", msg);
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // The submitter found the job unsubmittable: it fails, without a build.
    let refusal = lock(&ctx.refused).get(&key).cloned();
    if let Some((reason, message)) = refusal {
        let mut s = status;
        s.phase = Phase::Failed;
        s.completion_time = Some(Time(now));
        let s = with_conditions(&job, s, &reason, message.clone(), None);
        ctx.write_status(&job, &s).await?;
        lock(&ctx.refused).remove(&key);
        ctx.event(&job, EventType::Warning, &reason, "Submit", message);
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    // Validate what only the controller can tell before queueing.
    let mut submitting_soon = false;
    let missing = ctx.scopes.missing_for(&[buildkite::Feature::KernelJobs]);
    let (reason, message, throttled) = match target(&job, &ctx) {
        Err((reason, message)) => (reason.to_string(), message, None),
        // The token cannot create builds: say which scope to add instead of failing each
        // create with a generic 403. The job waits; the report is checked again regularly.
        Ok(_) if !missing.is_empty() => {
            ("MissingTokenScope".to_string(), buildkite::scopes::missing_scopes_message(&missing, "KernelJobs"), None)
        }
        Ok(_) => {
            // A first attempt of a job created after this process took over cannot have a
            // build yet: nobody else submits while it leads.
            let fresh = attempt == 1 && created(&job) > ctx.started + k8s_openapi::jiff::SignedDuration::from_secs(5);
            let state = {
                let mut attempts = lock(&ctx.attempts);
                if fresh {
                    attempts.entry(run_id.clone()).or_insert(AttemptState::Absent);
                }
                attempts.get(&run_id).copied()
            };
            match state {
                Some(AttemptState::Absent) => {
                    if ctx.queue.push(&key, job.spec.priority, &created(&job).to_string()) {
                        tracing::debug!(job = %key, priority = job.spec.priority, waiting = ctx.queue.len(), "queued for submission");
                    }
                    submitting_soon = ctx.queue.len() <= ctx.config.submit_workers.max(1);
                }
                Some(AttemptState::Creating) => submitting_soon = true,
                None => {
                    lock(&ctx.unverified).insert(key.clone());
                }
            }
            // A steady message: a countdown in it would change the status at every reconcile,
            // and every write wakes the reconcile again (a write loop per waiting job).
            let throttled = ctx.bk.would_wait(Priority::Submit).map(|_| THROTTLED_MESSAGE.to_string());
            let err = lock(&ctx.submit_errors).get(&key).cloned();
            match err {
                Some(e) => ("SubmitFailed".to_string(), e, throttled),
                None => ("Queued".to_string(), "waiting to be submitted".to_string(), throttled),
            }
        }
    };
    // No finalizer yet: a job without a build has nothing to cancel. The submitter puts it
    // on just before it creates the build.
    //
    // A new job that a free submitter is about to take gets no Queued status: that write
    // would be followed at once by Submitted, and under a steady stream of jobs the extra
    // write per job is what slows the API server (and so every job) down. If it is still
    // waiting on the next look, it gets one.
    let young = now.duration_since(created(&job)) < k8s_openapi::jiff::SignedDuration::from_secs(3);
    if submitting_soon && young && job.status.is_none() && reason == "Queued" && throttled.is_none() {
        return Ok(Action::requeue(Duration::from_secs(2).min(left)));
    }
    let mut s = status.clone();
    s.phase = Phase::Pending;
    s.queue = target(&job, &ctx).ok().map(|t| t.queue);
    let s = with_conditions(&job, s, &reason, message.clone(), throttled.as_deref());
    if job.status.as_ref() != Some(&s) && ctx.current_status(&job) != s {
        ctx.write_status(&job, &s).await?;
        if matches!(reason.as_str(), "PoolNotFound" | "SubmitFailed" | "MissingTokenScope") {
            ctx.event(&job, EventType::Warning, &reason, "Submit", message);
        }
    }
    let again = if reason == "MissingTokenScope" { Duration::from_secs(60) } else { Duration::from_secs(30) };
    Ok(Action::requeue(left.min(again)))
}

/// Records the build of a new attempt and follows it.
#[allow(clippy::too_many_arguments)]
async fn adopt(
    job: &KernelJob,
    ctx: &JobCtx,
    mut status: KernelJobStatus,
    attempt: i32,
    run_id: String,
    build: Build,
    left: Duration,
) -> Result<Action> {
    // The pipeline the build is in (the one it was created on), else where the job's builds go.
    let pipeline = match build.pipeline_slug() {
        Some(p) => p.to_string(),
        None => target(job, ctx).map(|t| t.pipeline).map_err(|_| Error::MissingField("the build's pipeline"))?,
    };
    let bref = build_ref(&build, &pipeline);
    status.attempts.push(Attempt {
        attempt,
        run_id,
        build: Some(bref.clone()),
        state: build.state.as_str().to_string(),
        created_at: time(build.created_at),
        ..Default::default()
    });
    status.build = Some(bref.clone());
    status.phase = Phase::Submitted;
    status.start_time = status.start_time.or_else(|| Some(Time(Timestamp::now())));
    status.queue = status.queue.or_else(|| target(job, ctx).ok().map(|t| t.queue));
    lock(&ctx.submit_errors).remove(&key_of(job));
    ctx.event(
        job,
        EventType::Normal,
        "Submitted",
        "Submit",
        format!("build #{} created: {}", bref.number, bref.web_url),
    );
    // The first status write of the attempt already says what the build does now (waiting,
    // running or even finished): a separate "created" write would be followed at once by
    // another, and each write of a job carries its sources (up to 64 KiB) through etcd.
    let active = status.attempts.last().cloned().ok_or(Error::MissingField("attempt"))?;
    follow(job, ctx, status, active, left).await
}

/// Follows the build of the active attempt.
async fn follow(
    job: &KernelJob,
    ctx: &JobCtx,
    mut status: KernelJobStatus,
    active: Attempt,
    left: Duration,
) -> Result<Action> {
    let Some(bref) = active.build.clone() else { return Ok(Action::requeue(Duration::from_secs(5))) };
    let now = Timestamp::now();
    let entry = match ctx.board.get(&active.run_id) {
        Some(e) => e,
        None if active.state.parse::<buildkite::BuildState>().is_ok_and(|s| s.is_terminal()) => {
            // After a restart, status says the build already finished, but a seed from status
            // would carry no result meta-data and no jobs: read the build itself (rare: only
            // jobs whose last status write recorded a finished build they had not finished).
            match ctx.bk.get_build(Some(&bref.pipeline), u64::try_from(bref.number).unwrap_or(0), false).await {
                Ok(b) => {
                    ctx.board.update(&b, now);
                    ctx.board.get(&active.run_id).unwrap_or(board::Entry { build: b, seen: now })
                }
                Err(e) => {
                    tracing::warn!(job = %key_of(job), error = %e, "reading a finished build failed; retrying");
                    return Ok(Action::requeue(Duration::from_secs(5)));
                }
            }
        }
        None => {
            // After a restart the board is empty: seed it from status so the poller follows
            // the build, without a request per job.
            let seed = Build {
                id: bref.id.clone(),
                number: u64::try_from(bref.number).unwrap_or(0),
                web_url: Some(bref.web_url.clone()),
                state: active.state.parse().unwrap_or(buildkite::BuildState::Scheduled),
                meta_data: [(meta::RUN_ID.to_string(), active.run_id.clone())].into(),
                created_at: active.created_at.as_ref().map(|t| t.0),
                pipeline: Some(buildkite::PipelineRef { slug: bref.pipeline.clone(), ..Default::default() }),
                ..Default::default()
            };
            ctx.board.update(&seed, now);
            ctx.board.get(&active.run_id).ok_or(Error::MissingField("board entry"))?
        }
    };
    let mut build = entry.build.clone();

    // No news for a long time: read the build once (webhooks and the poller may both have
    // missed it).
    let quiet = Duration::try_from(now.duration_since(entry.seen)).unwrap_or_default();
    if !build.state.is_terminal() && quiet >= ctx.config.stale_after {
        match ctx.bk.get_build(Some(&bref.pipeline), u64::try_from(bref.number).unwrap_or(0), false).await {
            Ok(b) => {
                ctx.board.update(&b, now);
                build = ctx.board.get(&active.run_id).map(|e| e.build).unwrap_or(b);
            }
            Err(e) => tracing::warn!(job = %key_of(job), error = %e, "reading a quiet build failed"),
        }
    }

    // A failed build's jobs say whether the infrastructure failed (webhook bodies carry no
    // jobs): read them once.
    // A build cancelled by someone else needs them too (an agent stopped mid-job is an
    // infrastructure failure, a cancel in the UI is final).
    let ours = lock(&ctx.canceled).contains(&active.run_id);
    let needs_jobs =
        build.state == buildkite::BuildState::Failed || (build.state == buildkite::BuildState::Canceled && !ours);
    if needs_jobs && !build.jobs.iter().any(|j| j.state.as_ref().is_some_and(|s| s.is_terminal())) {
        match ctx.bk.get_build(Some(&bref.pipeline), u64::try_from(bref.number).unwrap_or(0), false).await {
            Ok(b) => {
                ctx.board.update(&b, now);
                build = ctx.board.get(&active.run_id).map(|e| e.build).unwrap_or(b);
            }
            Err(e) => {
                tracing::warn!(job = %key_of(job), error = %e, "reading the jobs of a failed build failed; retrying");
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
        }
    }

    let we_canceled = lock(&ctx.canceled).contains(&active.run_id) || left.is_zero();
    if left.is_zero() && !build.state.is_terminal() && build.state != buildkite::BuildState::Canceling {
        // The deadline passed: cancel the build, then the job is TimedOut.
        match ctx.bk.cancel_build(Some(&bref.pipeline), u64::try_from(bref.number).unwrap_or(0), Priority::Cancel).await
        {
            Ok(CancelOutcome::Canceled(b)) => {
                ctx.board.update(&b, now);
            }
            Ok(_) => {}
            Err(e) => return Err(Error::Buildkite { action: format!("cancelling build #{}", bref.number), source: e }),
        }
        lock(&ctx.canceled).insert(active.run_id.clone());
        let a = status.attempts.last_mut().ok_or(Error::MissingField("attempt"))?;
        a.outcome = "Cancelled: deadline exceeded".into();
        a.state = "canceling".into();
        status.phase = Phase::TimedOut;
        status.completion_time = Some(Time(now));
        let msg = format!("the deadline passed; build #{} was cancelled", bref.number);
        let s = with_conditions(job, status, "DeadlineExceeded", msg.clone(), None);
        ctx.write_status(job, &s).await?;
        ctx.event(job, EventType::Warning, "TimedOut", "Timeout", msg);
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    let outcome = machine::classify(&board::view(&build), we_canceled);
    // Attempt bookkeeping from the build.
    if let Some(a) = status.attempts.last_mut() {
        a.state = build.state.as_str().to_string();
        a.started_at = time(build.started_at).or(a.started_at.take());
        a.finished_at = time(build.finished_at).or(a.finished_at.take());
        if let Some(j) =
            build.jobs.iter().filter(|j| !j.retried).find(|j| j.kind.as_deref().is_none_or(|k| k == "script"))
        {
            a.exit_status = j.exit_status;
            a.signal_reason = j.signal_reason.clone();
        }
    }
    match outcome {
        BuildOutcome::InFlight { running } => {
            let phase = if running { Phase::Running } else { Phase::Submitted };
            let started_now = running && status.phase != Phase::Running;
            status.phase = phase;
            let msg = if running {
                format!("build #{} is running", bref.number)
            } else {
                format!("build #{} waits for an agent", bref.number)
            };
            let s = with_conditions(
                job,
                status,
                if running { "BuildRunning" } else { "BuildScheduled" },
                msg.clone(),
                None,
            );
            if ctx.current_status(job) != s {
                ctx.write_status(job, &s).await?;
                if started_now {
                    ctx.event(job, EventType::Normal, "Started", "Run", msg);
                }
            }
            let wait = ctx.config.stale_after.saturating_sub(quiet).max(Duration::from_secs(1));
            Ok(Action::requeue(wait.min(left).max(Duration::from_secs(1))))
        }
        outcome => finish_attempt(job, ctx, status, &bref, &build, outcome, left).await,
    }
}

/// Marks a result read error that no retry can fix.
const PERMANENT: &str = "permanent: ";

/// Reads the result of a finished build: the summary in meta-data (free), else
/// `result.json` (two requests).
async fn read_result(
    job: &KernelJob,
    ctx: &JobCtx,
    bref: &BuildRef,
    build: &Build,
) -> (Option<ResultSummary>, &'static str, Option<String>, Option<Vec<u8>>) {
    let ranking = match job.spec.ranking_by {
        Some(crate::api::kerneljob::RankingBy::Mean) => contract::RankingBy::Mean,
        Some(crate::api::kerneljob::RankingBy::Geom) => contract::RankingBy::Geom,
        _ => contract::RankingBy::Last,
    };
    if let Some(value) = build.meta_data.get(contract::META_DATA_KEY) {
        match contract::parse_meta_data_summary(value) {
            Ok(s) => return (Some(s), "meta-data", None, None),
            Err(e) => tracing::info!(job = %key_of(job), error = %e, "meta-data summary unusable; reading result.json"),
        }
    }
    let number = u64::try_from(bref.number).unwrap_or(0);
    let artifacts = match ctx.bk.list_artifacts(Some(&bref.pipeline), number).await {
        Ok(a) => a.items,
        Err(e) => return (None, "artifact", Some(format!("listing artifacts of build #{number}: {e}")), None),
    };
    let Some(artifact) = artifacts.iter().find(|a| a.path == "result.json" || a.filename == "result.json") else {
        return (None, "artifact", None, None);
    };
    // Artifact states (docs "Artifacts" API): `new` is still uploading (ask again later);
    // `error`, `deleted` and `expired` (past the plan's retention) never become readable.
    match artifact.state.as_str() {
        "error" | "deleted" | "expired" => {
            return (
                None,
                "artifact",
                Some(format!("{PERMANENT}result.json of build #{number} is {} in Buildkite", artifact.state)),
                None,
            );
        }
        "new" => {
            return (None, "artifact", Some(format!("result.json of build #{number} is still uploading")), None);
        }
        _ => {}
    }
    let bytes = match ctx.bk.download_artifact(artifact, ctx.config.max_result_bytes).await {
        Ok(b) => b,
        Err(e) => return (None, "artifact", Some(format!("downloading result.json: {e}")), None),
    };
    match contract::parse_result_json_limited(
        &bytes,
        usize::try_from(ctx.config.max_result_bytes).unwrap_or(usize::MAX),
    ) {
        Ok(full) => (Some(contract::summarize(&full, &ranking)), "artifact", None, Some(bytes)),
        Err(e) => (None, "artifact", Some(format!("result.json is malformed: {e}")), Some(bytes)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish_attempt(
    job: &KernelJob,
    ctx: &JobCtx,
    mut status: KernelJobStatus,
    bref: &BuildRef,
    build: &Build,
    outcome: BuildOutcome,
    left: Duration,
) -> Result<Action> {
    let now = Timestamp::now();
    let attempts_made = i32::try_from(status.attempts.len()).unwrap_or(i32::MAX);
    if let BuildOutcome::Infrastructure { reason } = &outcome
        && machine::may_retry(&job.spec, attempts_made)
        && !left.is_zero()
    {
        if let Some(a) = status.attempts.last_mut() {
            a.outcome = format!("InfrastructureFailure: {reason}");
        }
        let uid = job.uid().unwrap_or_default();
        // This process decided the retry: the next run id cannot have a build yet.
        lock(&ctx.attempts).insert(machine::run_id(&uid, attempts_made + 1), AttemptState::Absent);
        status.phase = Phase::Pending;
        status.build = None;
        let msg = format!(
            "build #{} hit an infrastructure failure ({reason}); retrying (attempt {} of {})",
            bref.number,
            attempts_made + 1,
            job.spec.retries + 1
        );
        let s = with_conditions(job, status, "Retrying", msg.clone(), None);
        ctx.write_status(job, &s).await?;
        ctx.event(job, EventType::Warning, "Retrying", "Retry", msg);
        return Ok(Action::requeue(Duration::from_millis(200)));
    }

    let wants_result = matches!(outcome, BuildOutcome::Passed | BuildOutcome::Failed { .. });
    let (summary, source, read_error, raw) =
        if wants_result { read_result(job, ctx, bref, build).await } else { (None, "", None, None) };
    let (mut phase, mut reason, mut message) = machine::finished_phase(&outcome, summary.as_ref());
    if let Some(err) = &read_error
        && outcome == BuildOutcome::Passed
        && summary.is_none()
    {
        if err.contains("malformed") {
            (phase, reason, message) = (Phase::Failed, "ResultMalformed", err.clone());
        } else if let Some(permanent) = err.strip_prefix(PERMANENT) {
            (phase, reason, message) = (Phase::Failed, "ResultMissing", format!("the build passed but {permanent}"));
        } else if left.is_zero() {
            (phase, reason, message) =
                (Phase::Failed, "ResultMissing", format!("the deadline passed before the result could be read: {err}"));
        } else {
            // Transient trouble reading the artifact: try again later, until the deadline.
            tracing::warn!(job = %key_of(job), error = %err, "reading the result failed; retrying");
            return Ok(Action::requeue(Duration::from_secs(10).min(left).max(Duration::from_secs(1))));
        }
    }
    if outcome == BuildOutcome::CanceledByUs
        && lock(&ctx.canceled).contains(&status.attempts.last().map(|a| a.run_id.clone()).unwrap_or_default())
        && left.is_zero()
    {
        phase = Phase::TimedOut;
        reason = "DeadlineExceeded";
    }
    if let Some(a) = status.attempts.last_mut() {
        a.outcome = format!("{reason}: {message}");
    }
    if let Some(s) = &summary {
        let result = machine::result_status(s, source);
        status.summary = Some(machine::summary_status(&result, s));
        status.result = Some(result);
        if phase == Phase::Succeeded {
            status.passed = s.passed;
            status.score = s.score.filter(|v| v.is_finite());
        }
    }
    if let Some(bytes) = raw
        && let Some(name) = store_output(job, ctx, &bytes).await
    {
        status.output_ref = Some(name);
    }
    status.phase = phase;
    status.completion_time = Some(Time(now));
    let s = with_conditions(job, status, reason, message.clone(), None);
    ctx.write_status(job, &s).await?;
    if let Some(done) = build.finished_at {
        let since = Timestamp::now().duration_since(done);
        crate::metrics::global().job_completed(Duration::try_from(since).unwrap_or_default());
    }
    let (type_, ev_reason) = match phase {
        Phase::Succeeded => (EventType::Normal, "Completed"),
        Phase::Cancelled => (EventType::Normal, "Cancelled"),
        _ => (EventType::Warning, reason),
    };
    ctx.event(job, type_, ev_reason, "Finish", message);
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Keeps the full `result.json` in a ConfigMap owned by the job (bounded).
async fn store_output(job: &KernelJob, ctx: &JobCtx, bytes: &[u8]) -> Option<String> {
    let ns = job.namespace()?;
    let name = crate::fleet::pod::agent_pod_name(&job.name_any(), "result", 0).trim_end_matches("-0").to_string();
    let text = String::from_utf8_lossy(bytes);
    let body = if text.len() <= ctx.config.max_configmap_bytes {
        text.to_string()
    } else {
        format!(
            "{{\"truncated\": true, \"note\": \"result.json is {} bytes, over the {}-byte limit; download it from the build's artifacts\"}}",
            text.len(),
            ctx.config.max_configmap_bytes
        )
    };
    let owner = job.controller_owner_ref(&())?;
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner],
                     "labels": {"app.kubernetes.io/managed-by": "benchkite", "benchkite.dev/kerneljob": crate::fleet::pod::label_value(&job.name_any())}},
        "data": {"result.json": body},
    });
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&cm)).await {
        Ok(_) => Some(name),
        Err(e) => {
            tracing::warn!(job = %key_of(job), error = %e, "storing result.json failed");
            None
        }
    }
}

/// A finished job: forget its builds, release the finalizer, honour the TTL.
async fn finished(job: &KernelJob, ctx: &JobCtx, status: &KernelJobStatus) -> Result<Action> {
    for a in &status.attempts {
        ctx.board.forget(&a.run_id);
        lock(&ctx.canceled).remove(&a.run_id);
        lock(&ctx.attempts).remove(&a.run_id);
    }
    lock(&ctx.submit_errors).remove(&key_of(job));
    remove_finalizer(job, ctx).await?;
    if let (Some(ttl), Some(done)) = (job.spec.ttl_seconds_after_finished, status.completion_time.as_ref()) {
        let age = Timestamp::now().duration_since(done.0).as_secs();
        if age >= ttl {
            let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
            match api.delete(&job.name_any(), &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(Error::kube(format!("deleting expired KernelJob {}", key_of(job)))(e)),
            }
            lock(&ctx.written).remove(&key_of(job));
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(u64::try_from(ttl - age).unwrap_or(1).max(1))));
    }
    Ok(Action::await_change())
}

async fn ensure_finalizer(job: &KernelJob, ctx: &JobCtx) -> Result<()> {
    if has_finalizer(job, ctx) {
        return Ok(());
    }
    apply_finalizer(ctx, job)
        .await
        .map_err(Error::kube(format!("adding the finalizer to KernelJob {}", key_of(job))))?;
    Ok(())
}

fn resource_version(job: &KernelJob) -> u64 {
    job.metadata.resource_version.as_deref().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0)
}

/// Whether the job carries the finalizer: as this process last wrote it while the cached
/// copy is older than that write, as the copy says afterwards.
fn has_finalizer(job: &KernelJob, ctx: &JobCtx) -> bool {
    let uid = job.uid().unwrap_or_default();
    newer_write(&mut lock(&ctx.finalizer_writes), &uid, resource_version(job))
        .unwrap_or_else(|| job.finalizers().iter().any(|f| f == FINALIZER))
}

/// Applies the finalizer and answers the object. The patch carries the job's uid: the API
/// server refuses it when the job is gone (409) or was created again under its name (422).
async fn apply_finalizer(ctx: &JobCtx, job: &KernelJob) -> kube::Result<KernelJob> {
    let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let uid = job.uid().unwrap_or_default();
    let patch = json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": job.name_any(), "uid": uid, "finalizers": [FINALIZER]},
    });
    let applied = api.patch(&job.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    lock(&ctx.finalizer_writes).insert(uid, (resource_version(&applied), true));
    Ok(applied)
}

/// The job with its sources (the cache holds none) and, for sure, the finalizer: a build
/// must never exist for a job whose deletion would not cancel it. A job without the
/// finalizer gets it by an apply, whose answer is the object, so it costs one request.
/// `None`: the job is gone or was created again under its name.
async fn fetch_with_finalizer(ctx: &JobCtx, cached: &KernelJob) -> Result<Option<KernelJob>> {
    let (ns, name) = (cached.namespace().unwrap_or_default(), cached.name_any());
    let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &ns);
    if has_finalizer(cached, ctx) {
        return api.get_opt(&name).await.map_err(Error::kube(format!("reading KernelJob {ns}/{name}")));
    }
    match apply_finalizer(ctx, cached).await {
        Ok(job) => Ok(Some(job)),
        Err(e) => match api.get_opt(&name).await {
            Ok(None) => Ok(None),
            Ok(Some(j)) if j.uid() != cached.uid() => Ok(None),
            _ => Err(Error::kube(format!("adding the finalizer to KernelJob {ns}/{name}"))(e)),
        },
    }
}

async fn remove_finalizer(job: &KernelJob, ctx: &JobCtx) -> Result<()> {
    if !has_finalizer(job, ctx) {
        return Ok(());
    }
    let uid = job.uid().unwrap_or_default();
    let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    // Applying our metadata without the finalizer releases the field we own.
    let patch = json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
        "metadata": {"name": job.name_any(), "finalizers": []},
    });
    match api.patch(&job.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(updated) => {
            // A job that is being deleted is gone after this: nothing to remember for it.
            let mut writes = lock(&ctx.finalizer_writes);
            if updated.metadata.deletion_timestamp.is_none() {
                writes.insert(uid, (resource_version(&updated), false));
            } else {
                writes.remove(&uid);
            }
            Ok(())
        }
        Err(e) if is_not_found(&e) => {
            lock(&ctx.finalizer_writes).remove(&uid);
            Ok(())
        }
        Err(e) => Err(Error::kube(format!("removing the finalizer of KernelJob {}", key_of(job)))(e)),
    }
}

/// A deleted job: cancel its unfinished build, then let it go. If Buildkite stays
/// unreachable, the finalizer is released after `finalizer_timeout` with an Event.
async fn cleanup(job: &KernelJob, ctx: &JobCtx) -> Result<Action> {
    if !job.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let status = ctx.current_status(job);
    let key = key_of(job);
    let mut error = None;
    if !status.phase.is_finished()
        && let Some(active) = active_attempt(&status)
        && let Some(bref) = &active.build
    {
        let terminal = ctx.board.get(&active.run_id).is_some_and(|e| e.build.state.is_terminal());
        if !terminal {
            match ctx
                .bk
                .cancel_build(Some(&bref.pipeline), u64::try_from(bref.number).unwrap_or(0), Priority::Cancel)
                .await
            {
                Ok(_) => {
                    lock(&ctx.canceled).insert(active.run_id.clone());
                    ctx.event(
                        job,
                        EventType::Normal,
                        "Cancelled",
                        "Delete",
                        format!("build #{} cancelled because the KernelJob was deleted", bref.number),
                    );
                }
                Err(e) => error = Some(e.to_string()),
            }
        }
    }
    if let Some(e) = error {
        let since = job.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
        let waited = Duration::try_from(Timestamp::now().duration_since(since)).unwrap_or_default();
        if waited < ctx.config.finalizer_timeout {
            tracing::warn!(job = %key, error = %e, "cancelling the build of a deleted job failed; retrying");
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        ctx.event(
            job,
            EventType::Warning,
            "FinalizerReleased",
            "Delete",
            format!(
                "could not cancel the build for {}s ({e}); releasing the KernelJob anyway: cancel the build by hand",
                waited.as_secs()
            ),
        );
    }
    for a in &status.attempts {
        ctx.board.forget(&a.run_id);
    }
    lock(&ctx.unverified).remove(&key);
    lock(&ctx.written).remove(&key);
    remove_finalizer(job, ctx).await?;
    Ok(Action::await_change())
}

pub fn error_policy(job: Arc<KernelJob>, err: &Error, _ctx: Arc<JobCtx>) -> Action {
    tracing::warn!(job = %key_of(&job), error = %err, "KernelJob reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

// ----- background tasks ---------------------------------------------------------------------

/// Reads a job's sources: inline, plus every key of the named ConfigMaps and Secrets.
async fn resolve_sources(job: &KernelJob, ctx: &JobCtx) -> std::result::Result<BTreeMap<String, String>, String> {
    let ns = job.namespace().unwrap_or_default();
    let mut sources = job.spec.sources.clone();
    for from in &job.spec.sources_from {
        let wanted = |k: &str| from.keys.is_empty() || from.keys.iter().any(|w| w == k);
        if let Some(name) = &from.config_map {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let cm = api.get_opt(name).await.map_err(|e| format!("reading ConfigMap {ns}/{name}: {e}"))?;
            let cm = cm.ok_or_else(|| format!("ConfigMap {ns}/{name} (spec.sourcesFrom) does not exist"))?;
            for (k, v) in cm.data.unwrap_or_default() {
                if wanted(&k) {
                    sources.insert(k, v);
                }
            }
            for (k, v) in cm.binary_data.unwrap_or_default() {
                if wanted(&k) {
                    let text = contract::file_content_from_bytes(&k, v.0).map_err(|e| e.to_string())?;
                    sources.insert(k, text);
                }
            }
        }
        if let Some(name) = &from.secret {
            let api: Api<K8sSecret> = Api::namespaced(ctx.client.clone(), &ns);
            let secret = api.get_opt(name).await.map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?;
            let secret = secret.ok_or_else(|| format!("Secret {ns}/{name} (spec.sourcesFrom) does not exist"))?;
            for (k, v) in secret.data.unwrap_or_default() {
                if wanted(&k) {
                    let text = contract::file_content_from_bytes(&k, v.0).map_err(|e| e.to_string())?;
                    sources.insert(k, text);
                }
            }
        }
    }
    Ok(sources)
}

/// Fails a job that can never be submitted (payload too large, invalid submission).
/// Hands a refusal to the reconcile, which writes it (a write from here could race with a
/// reconcile's Pending write and be lost).
fn refuse(ctx: &JobCtx, key: &str, reason: &str, message: String) {
    lock(&ctx.refused).insert(key.to_string(), (reason.to_string(), message));
    ctx.wake(key);
}

/// One submission worker: waits for a job and for Buildkite's request budget, only then
/// takes the most urgent job (by priority, then age) and creates its build, and wakes its
/// reconcile (which records the build).
///
/// The budget comes first: a worker that took a job and then waited for a window to open
/// would hold it while higher-priority jobs arrive behind it.
pub async fn submit_worker(ctx: Arc<JobCtx>) {
    loop {
        ctx.queue.wait_nonempty().await;
        let reservation = ctx.bk.reserve(Priority::Submit).await;
        // Another worker may have taken the last job meanwhile: the reservation goes back.
        let Some(key) = ctx.queue.pop() else { continue };
        submit_one(&ctx, &key, reservation).await;
    }
}

/// Any return before the create hands `reservation` back to the budget unused.
async fn submit_one(ctx: &JobCtx, key: &str, reservation: crate::buildkite::Reservation) {
    let Some((ns, name)) = key.split_once('/') else { return };
    let Some(cached) = ctx.jobs.get(&ObjectRef::new(name).within(ns)) else { return };
    if cached.metadata.deletion_timestamp.is_some() {
        return;
    }
    let status = ctx.current_status(&cached);
    if status.phase.is_finished() || active_attempt(&status).is_some() {
        return;
    }
    let attempt = next_attempt_number(&status);
    let Some(uid) = cached.uid() else { return };
    let run_id = machine::run_id(&uid, attempt);
    tracing::debug!(job = %key, priority = cached.spec.priority, waiting = ctx.queue.len(), "submitting");
    // Claim the attempt: taking its run id out of `verified` makes this worker the only one
    // that may create its build (a job can be queued again while a create is in flight).
    let claimed = {
        let mut attempts = lock(&ctx.attempts);
        match attempts.get_mut(&run_id) {
            Some(state @ AttemptState::Absent) if ctx.board.get(&run_id).is_none() => {
                *state = AttemptState::Creating;
                true
            }
            _ => false,
        }
    };
    if !claimed {
        ctx.wake(key);
        return;
    }
    // Hand the claim back when nothing was created.
    let release = |ctx: &JobCtx| {
        lock(&ctx.attempts).insert(run_id.clone(), AttemptState::Absent);
    };
    let t = match target(&cached, ctx) {
        Ok(t) => t,
        Err(_) => {
            release(ctx);
            ctx.wake(key);
            return;
        }
    };
    // The pipeline benchkite manages for the queue exists and is as it should be (memoized:
    // free once ensured).
    if t.managed
        && let Err(e) = ctx.pipelines.ensure(&t.queue).await
    {
        release(ctx);
        lock(&ctx.submit_errors)
            .insert(key.to_string(), format!("the pipeline for queue {} is not ready: {e}", t.queue));
        requeue_later(ctx, key, Duration::from_secs(15));
        return;
    }
    // The cache holds no sources: read the object itself.
    let job = match fetch_with_finalizer(ctx, &cached).await {
        Ok(Some(j)) if j.uid().as_deref() == Some(uid.as_str()) => j,
        // Gone, or deleted and created again under the same name (its own reconcile
        // queues the new one).
        Ok(_) => {
            release(ctx);
            return;
        }
        Err(e) => {
            release(ctx);
            lock(&ctx.submit_errors).insert(key.to_string(), e.to_string());
            requeue_later(ctx, key, Duration::from_secs(5));
            return;
        }
    };
    let sources = match resolve_sources(&job, ctx).await {
        Ok(s) => s,
        Err(e) => {
            release(ctx);
            lock(&ctx.submit_errors).insert(key.to_string(), e);
            requeue_later(ctx, key, Duration::from_secs(15));
            return;
        }
    };
    let sctx = SubmissionContext {
        job_key: key,
        uid: &uid,
        attempt,
        queue: &t.queue,
        pool_architecture: t.arch.as_deref(),
        pipeline: &t.pipeline,
        instance: &ctx.config.instance,
        limits: ctx.config.limits,
    };
    let sub = match submission::submission(&job.spec, sources, &sctx) {
        Ok(s) => s,
        Err(e) => {
            refuse(ctx, key, e.reason(), e.to_string());
            return;
        }
    };
    let new_build = NewBuild {
        commit: sub.commit.clone(),
        branch: sub.branch.clone(),
        message: Some(sub.message.clone()),
        env: sub.env.clone(),
        meta_data: sub.meta_data.clone(),
        ignore_pipeline_branch_filters: sub.ignore_branch_filters.then_some(true),
        ..Default::default()
    };
    match ctx.bk.create_build_reserved(Some(&sub.pipeline), &new_build, reservation).await {
        Ok(build) => {
            let now = Timestamp::now();
            // Due since the job's creation (attempt 1) or since the previous attempt ended.
            let due = if attempt <= 1 {
                job.metadata.creation_timestamp.as_ref().map(|t| t.0)
            } else {
                status.attempts.last().and_then(|a| a.finished_at.as_ref()).map(|t| t.0)
            };
            crate::metrics::global().build_created(due.and_then(|d| Duration::try_from(now.duration_since(d)).ok()));
            ctx.board.update(&build, now);
            ctx.wake(key);
        }
        Err(buildkite::Error::Ambiguous { reason, .. }) => {
            // The build may exist: look it up before creating again (the claim stays taken).
            tracing::warn!(job = %key, %reason, "create_build outcome unknown; looking the build up");
            lock(&ctx.unverified).insert(key.to_string());
        }
        Err(e) if e.is_transient() => {
            // Not sent (the client reports anything sent as Ambiguous): nothing was created.
            release(ctx);
            lock(&ctx.submit_errors).insert(key.to_string(), format!("Buildkite: {e}"));
            requeue_later(ctx, key, Duration::from_secs(5));
        }
        Err(e) => {
            release(ctx);
            // The managed pipeline is gone (deleted in the UI): ensure it again next time.
            if e.status() == Some(404) && t.managed {
                ctx.pipelines.invalidate(&t.queue);
            }
            lock(&ctx.submit_errors).insert(key.to_string(), format!("Buildkite refused the build: {e}"));
            requeue_later(ctx, key, Duration::from_secs(if e.status() == Some(404) { 2 } else { 30 }));
        }
    }
}

fn requeue_later(ctx: &JobCtx, key: &str, after: Duration) {
    let trigger = ctx.trigger.clone();
    let key = key.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if let Some((ns, name)) = key.split_once('/') {
            let _ = trigger.send(ObjectRef::new(name).within(ns));
        }
    });
}

/// Jobs looked up one by one per round and pipeline (one narrow request each).
const RUN_LOOKUPS_PER_ROUND: usize = 4;
/// Pages of one pipeline-scoped listing (recovery, poller): never an unbounded walk.
const LIST_PAGES: u32 = 5;

/// A job whose next attempt may already have a build.
struct Wanted {
    key: JobKey,
    run_id: String,
    /// The job names its own branch: find it by meta-data instead of its attempt branch.
    own_branch: bool,
    created: Timestamp,
}

/// Records the builds of `wanted` runs found in `builds`; returns their run ids.
fn record_found(ctx: &JobCtx, builds: &[Build], wanted: &[Wanted], now: Timestamp) -> HashSet<String> {
    let mut found = HashSet::new();
    for build in builds {
        if !board::is_ours(build, &ctx.config.instance) {
            continue;
        }
        if let Some(run) = board::run_id_of(build)
            && wanted.iter().any(|w| w.run_id == run)
        {
            ctx.board.update(build, now);
            found.insert(run.to_string());
        }
    }
    found
}

/// Settles, with narrow and bounded requests in one pipeline, whether the next attempts of
/// `wanted` have builds. Returns the run ids it settled (found or known absent): at least
/// `RUN_LOOKUPS_PER_ROUND` of them (or all) per call, so the look-up always finishes.
async fn look_up(ctx: &JobCtx, pipeline: &str, wanted: &[Wanted]) -> buildkite::Result<HashSet<String>> {
    let now = Timestamp::now();
    let mut settled = HashSet::new();
    if wanted.len() > RUN_LOOKUPS_PER_ROUND {
        // One pipeline-scoped listing since the oldest job settles many at once, unless more
        // builds than a few pages were created in that window.
        let oldest = wanted.iter().map(|w| w.created).min().unwrap_or(now);
        let query = BuildQuery {
            pipeline: Some(pipeline.to_string()),
            created_from: Some(oldest - k8s_openapi::jiff::SignedDuration::from_secs(300)),
            exclude_jobs: true,
            per_page: Some(100),
            max_pages: Some(LIST_PAGES),
            ..Default::default()
        };
        let listing = ctx.bk.list_builds(&query, Priority::Submit).await?;
        settled = record_found(ctx, &listing.items, wanted, now);
        if !listing.truncated {
            return Ok(wanted.iter().map(|w| w.run_id.clone()).collect());
        }
    }
    // One narrow request per run: its attempt branch names exactly one build.
    let open: Vec<&Wanted> =
        wanted.iter().filter(|w| !settled.contains(&w.run_id)).take(RUN_LOOKUPS_PER_ROUND).collect();
    for w in open {
        let mut query = BuildQuery {
            pipeline: Some(pipeline.to_string()),
            exclude_jobs: true,
            per_page: Some(10),
            max_pages: Some(1),
            ..Default::default()
        };
        if w.own_branch {
            query.meta_data = vec![(meta::RUN_ID.to_string(), w.run_id.clone())];
        } else {
            query.branch = Some(board::attempt_branch(&ctx.config.instance, &w.run_id));
        }
        let listing = ctx.bk.list_builds(&query, Priority::Submit).await?;
        record_found(ctx, &listing.items, std::slice::from_ref(w), now);
        settled.insert(w.run_id.clone());
    }
    Ok(settled)
}

/// Looks up the builds of jobs whose next attempt may already exist (after a restart or an
/// ambiguous create), so no attempt ever gets a second build. Narrow, pipeline-scoped and
/// bounded: org-wide listings can be refused as too deep ("Listing builds this deep is not
/// supported"), and a look-up must finish whatever the number of builds.
pub async fn recovery_loop(ctx: Arc<JobCtx>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let keys: Vec<JobKey> = lock(&ctx.unverified).iter().cloned().collect();
        if keys.is_empty() {
            continue;
        }
        let mut groups: BTreeMap<String, Vec<Wanted>> = BTreeMap::new();
        for key in &keys {
            let Some((ns, name)) = key.split_once('/') else {
                lock(&ctx.unverified).remove(key);
                continue;
            };
            let Some(job) = ctx.jobs.get(&ObjectRef::new(name).within(ns)) else {
                lock(&ctx.unverified).remove(key);
                continue;
            };
            let status = ctx.current_status(&job);
            let Some(uid) = job.uid() else { continue };
            let run_id = machine::run_id(&uid, next_attempt_number(&status));
            // Finished, following a build, or already found: nothing to look up.
            if status.phase.is_finished() || active_attempt(&status).is_some() || ctx.board.get(&run_id).is_some() {
                lock(&ctx.unverified).remove(key);
                ctx.wake(key);
                continue;
            }
            // Without a target there is no pipeline to look in; the job says why it waits.
            let Ok(t) = target(&job, &ctx) else { continue };
            groups.entry(t.pipeline).or_default().push(Wanted {
                key: key.clone(),
                run_id,
                own_branch: job.spec.branch.is_some(),
                created: created(&job),
            });
        }
        for (pipeline, wanted) in groups {
            // A pipeline that does not exist (a managed one is created at the first submit)
            // holds no build: every run is settled as absent.
            let looked = match look_up(&ctx, &pipeline, &wanted).await {
                Err(e) if e.status() == Some(404) => Ok(wanted.iter().map(|w| w.run_id.clone()).collect()),
                other => other,
            };
            match looked {
                Ok(settled) => {
                    for w in wanted.iter().filter(|w| settled.contains(&w.run_id)) {
                        if ctx.board.get(&w.run_id).is_none() {
                            lock(&ctx.attempts).insert(w.run_id.clone(), AttemptState::Absent);
                        }
                        lock(&ctx.unverified).remove(&w.key);
                        ctx.wake(&w.key);
                    }
                    tracing::info!(%pipeline, jobs = wanted.len(), settled = settled.len(), "recovery look-up");
                }
                Err(e) => {
                    tracing::warn!(%pipeline, error = %e, "recovery look-up failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// Records builds a listing returned on the board and wakes their jobs; returns how many
/// were news.
fn apply_listing(ctx: &JobCtx, builds: &[Build], now: Timestamp) -> usize {
    let mut woken = 0;
    for build in builds {
        if !board::is_ours(build, &ctx.config.instance) {
            continue;
        }
        // Ours if the board follows it or its KernelJob exists: after a restart a build may
        // have finished before its job was reconciled again.
        let job = ctx.job_of(build);
        let followed = board::run_id_of(build).is_some_and(|r| ctx.board.get(r).is_some());
        if (followed || job.is_some()) && ctx.board.update(build, now) {
            if let Some(key) = job {
                ctx.wake(&key);
            }
            woken += 1;
        }
    }
    woken
}

/// The fallback poller. Webhooks are at most once (Buildkite documents no redelivery), so
/// every interval, per pipeline with builds in flight: one listing of the builds finished
/// since the last poll, and, while some are not known to run, one of the running ones (a
/// lost `build.running`). Never a request per job, never an org-wide walk.
pub async fn poll_loop(ctx: Arc<JobCtx>) {
    let overlap = k8s_openapi::jiff::SignedDuration::from_secs(60);
    let mut since: HashMap<String, Timestamp> = HashMap::new();
    loop {
        tokio::time::sleep(ctx.config.poll_interval).await;
        let pipelines = ctx.board.in_flight_by_pipeline();
        since.retain(|p, _| pipelines.contains_key(p));
        for (pipeline, flight) in pipelines {
            let started = Timestamp::now();
            let from = since
                .get(&pipeline)
                .map(|s| *s - overlap)
                .or(flight.oldest.map(|o| o - overlap))
                .unwrap_or(started - k8s_openapi::jiff::SignedDuration::from_secs(3600));
            let finished = BuildQuery {
                pipeline: Some(pipeline.clone()),
                finished_from: Some(from),
                per_page: Some(100),
                max_pages: Some(LIST_PAGES),
                ..Default::default()
            };
            match ctx.bk.list_builds(&finished, Priority::Refresh).await {
                Ok(listing) => {
                    let woken = apply_listing(&ctx, &listing.items, started);
                    if !listing.truncated {
                        since.insert(pipeline.clone(), started);
                    }
                    tracing::debug!(%pipeline, in_flight = flight.count, listed = listing.items.len(), woken, "poll: finished");
                }
                Err(e) => tracing::warn!(%pipeline, error = %e, "polling finished builds failed"),
            }
            if flight.waiting {
                let running = BuildQuery {
                    pipeline: Some(pipeline.clone()),
                    states: vec!["running".into(), "failing".into(), "canceling".into()],
                    exclude_jobs: true,
                    per_page: Some(100),
                    max_pages: Some(LIST_PAGES),
                    ..Default::default()
                };
                match ctx.bk.list_builds(&running, Priority::Refresh).await {
                    Ok(listing) => {
                        let woken = apply_listing(&ctx, &listing.items, started);
                        tracing::debug!(%pipeline, listed = listing.items.len(), woken, "poll: running");
                    }
                    Err(e) => tracing::warn!(%pipeline, error = %e, "polling running builds failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::condition::{RECONCILING, STALLED, find};

    fn conditions(phase: Phase, reason: &str) -> Vec<(String, String, String)> {
        let mut set = ConditionSet::new(&[], Some(1), Timestamp::now());
        set_phase_conditions(&mut set, phase, reason, "msg", None);
        let out = set.into_vec();
        [cond::READY, RECONCILING, STALLED, cond::COMPLETE, cond::FAILED]
            .iter()
            .map(|t| {
                let c = find(&out, t).unwrap_or_else(|| panic!("{t} missing for {phase:?}"));
                (c.type_.clone(), c.status.clone(), c.reason.clone())
            })
            .collect()
    }

    fn status_of(conds: &[(String, String, String)], t: &str) -> String {
        conds.iter().find(|c| c.0 == t).map(|c| c.1.clone()).unwrap_or_default()
    }

    #[test]
    fn a_written_status_counts_until_the_cache_catches_up_then_goes() {
        let mut written: HashMap<JobKey, (u64, KernelJobStatus)> = HashMap::new();
        let mine = KernelJobStatus { phase: Phase::Running, ..Default::default() };
        written.insert("ns/a".into(), (120, mine.clone()));
        // An older cached copy defers to the write, and the record stays.
        assert_eq!(newer_write(&mut written, "ns/a", 119), Some(mine.clone()));
        assert_eq!(newer_write(&mut written, "ns/a", 0), Some(mine));
        assert!(written.contains_key("ns/a"));
        // The write itself, or anything after it, is the cache's to tell; the record goes.
        assert_eq!(newer_write(&mut written, "ns/a", 120), None);
        assert!(written.is_empty());
        written.insert("ns/b".into(), (5, KernelJobStatus::default()));
        assert_eq!(newer_write(&mut written, "ns/b", 9), None);
        assert!(written.is_empty());
        // Unknown jobs: nothing.
        assert_eq!(newer_write(&mut written, "ns/c", 1), None);
        // The same record serves the finalizer: a removal not yet cached still counts.
        let mut finalizers: HashMap<String, (u64, bool)> = HashMap::from([("uid-1".into(), (42, false))]);
        assert_eq!(newer_write(&mut finalizers, "uid-1", 41), Some(false));
        assert_eq!(newer_write(&mut finalizers, "uid-1", 42), None);
        assert!(finalizers.is_empty());
    }

    #[test]
    fn kstatus_conditions_follow_the_phase() {
        for phase in Phase::ALL {
            let c = conditions(phase, "Queued");
            let (ready, reconciling, stalled) =
                (status_of(&c, cond::READY), status_of(&c, RECONCILING), status_of(&c, STALLED));
            match phase {
                Phase::Succeeded => {
                    assert_eq!((ready.as_str(), reconciling.as_str(), stalled.as_str()), ("True", "False", "False"))
                }
                Phase::Failed | Phase::TimedOut | Phase::Cancelled => {
                    assert_eq!(
                        (ready.as_str(), reconciling.as_str(), stalled.as_str()),
                        ("False", "False", "True"),
                        "{phase:?}"
                    )
                }
                Phase::Pending | Phase::Submitted | Phase::Running => {
                    assert_eq!(
                        (ready.as_str(), reconciling.as_str(), stalled.as_str()),
                        ("False", "True", "False"),
                        "{phase:?}"
                    )
                }
            }
        }
        // A job naming a pool that does not exist waits for the user, not for the controller.
        let c = conditions(Phase::Pending, "PoolNotFound");
        assert_eq!(status_of(&c, STALLED), "True");
        assert_eq!(status_of(&c, RECONCILING), "False");
        assert!(c.iter().any(|x| x.0 == STALLED && x.2 == "PoolNotFound"));
    }
}
