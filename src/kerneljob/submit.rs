//! The submitter: workers that take queued KernelJobs by priority, then age, and create
//! their builds, waking the reconcile (the only status writer) with what happened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret as K8sSecret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::controller::{JobCtx, fetch_job, target};
use super::decide::{self, CreateFailure, active_attempt, next_attempt_number};
use super::machine;
use super::memory::{AttemptState, SubmitFailure};
use super::submission::{self, SubmissionContext};
use crate::api::KernelJob;
use crate::buildkite::{Build, NewBuild, Priority};
use crate::contract;

/// Reads a job's sources: inline, plus every key of the named ConfigMaps and Secrets.
/// No Secret is read unless the admin allows secret sources in the job's namespace (the
/// reconcile refuses such a job before it is queued; this gate holds even if it did not).
pub(super) async fn resolve_sources(
    job: &KernelJob,
    ctx: &JobCtx,
) -> std::result::Result<BTreeMap<String, String>, String> {
    let ns = job.namespace().unwrap_or_default();
    super::policy::check_secret_sources(&job.spec, &ns, ctx.namespace_labels(&ns).as_ref(), &ctx.config.tenancy)
        .map_err(|r| r.message)?;
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

/// The build's meta-data, with the key of the pool's result cache its result is stored
/// under (when the job is cached): a restarted controller finds it there.
fn with_cache_key(
    ctx: &JobCtx,
    key: &str,
    uid: &str,
    mut meta: std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let cache_key = ctx.memory.with_existing(key, uid, |m| m.cache.as_ref().and_then(|c| c.key().map(str::to_string)));
    if let Some(k) = cache_key.flatten() {
        meta.insert(super::cache::KEY_META.to_string(), k);
    }
    meta
}

/// Fails a job that can never be submitted (payload too large, invalid submission).
/// Hands a refusal to the reconcile, which writes it (a write from here could race with a
/// reconcile's Pending write and be lost). Nothing was created: the attempt is absent.
fn refuse(ctx: &JobCtx, key: &str, uid: &str, run_id: &str, reason: &str, message: String) {
    ctx.memory.with(key, uid, |m| {
        m.refused = Some((reason.to_string(), message));
        m.attempts.insert(run_id.to_string(), AttemptState::Absent);
    });
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
    // Claim the attempt: turning its run id from Absent to Creating makes this worker the
    // only one that may create its build (a job can be queued again while a create is in
    // flight).
    let on_board = ctx.board.get(&run_id).is_some();
    let claimed = ctx.memory.with(key, &uid, |m| match m.attempts.get_mut(&run_id) {
        Some(state @ AttemptState::Absent) if !on_board => {
            *state = AttemptState::Creating;
            true
        }
        _ => false,
    });
    if !claimed {
        ctx.wake(key);
        return;
    }
    // Hands the claim back when nothing was created, with why.
    let release = |failure: Option<SubmitFailure>| {
        ctx.memory.with(key, &uid, |m| {
            m.attempts.insert(run_id.clone(), AttemptState::Absent);
            if failure.is_some() {
                m.submit_failure = failure;
            }
        });
    };
    let t = match target(&cached, ctx) {
        Ok(t) => t,
        Err(_) => {
            release(None);
            ctx.wake(key);
            return;
        }
    };
    // The pipeline benchkite manages for the queue exists and is as it should be (memoized:
    // free once ensured).
    if t.managed
        && let Err(e) = ctx.pipelines.ensure(&t.queue).await
    {
        release(Some(SubmitFailure::Transient(format!("the pipeline for queue {} is not ready: {e}", t.queue))));
        requeue_later(ctx, key, Duration::from_secs(15));
        return;
    }
    // The cache holds no sources: read the object itself.
    let job = match fetch_job(ctx, &cached).await {
        Ok(Some(j)) => j,
        // Gone, being deleted, or deleted and created again under the same name (its own
        // reconcile queues the new one).
        Ok(None) => {
            release(None);
            ctx.wake(key);
            return;
        }
        Err(e) => {
            release(Some(SubmitFailure::Transient(e.to_string())));
            requeue_later(ctx, key, Duration::from_secs(5));
            return;
        }
    };
    let sources = match resolve_sources(&job, ctx).await {
        Ok(s) => s,
        Err(e) => {
            release(Some(SubmitFailure::Transient(e)));
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
            refuse(ctx, key, &uid, &run_id, e.reason(), e.to_string());
            return;
        }
    };
    let new_build = NewBuild {
        commit: sub.commit.clone(),
        branch: sub.branch.clone(),
        message: Some(sub.message.clone()),
        env: sub.env.clone(),
        meta_data: with_cache_key(ctx, key, &uid, sub.meta_data.clone()),
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
            if orphaned(ctx, ns, name, &uid) {
                cancel_orphan(ctx, key, &uid, &run_id, &build).await;
            }
            ctx.wake(key);
        }
        Err(e) => match decide::classify_create_error(&e, t.managed) {
            CreateFailure::Ambiguous => {
                // The build may exist: look it up before creating again (the claim stays
                // taken; the look-up settles it).
                tracing::warn!(job = %key, error = %e, "create_build outcome unknown; looking the build up");
                ctx.memory.with(key, &uid, |m| m.unverified = true);
            }
            CreateFailure::PipelineMissing => {
                // The managed pipeline is gone (deleted in the UI): ensure it again.
                ctx.pipelines.invalidate(&t.queue);
                release(Some(SubmitFailure::Transient(format!("Buildkite refused the build: {e}"))));
                requeue_later(ctx, key, Duration::from_secs(2));
            }
            CreateFailure::Transient => {
                release(Some(SubmitFailure::Transient(format!("Buildkite: {e}"))));
                requeue_later(ctx, key, Duration::from_secs(if e.is_transient() { 5 } else { 30 }));
            }
            CreateFailure::Permanent { status, message } => {
                // Counted: after `MAX_CREATE_REFUSALS` the reconcile fails the job, so a
                // request Buildkite will always refuse does not spend the organization's
                // budget until the deadline. Backs off between tries.
                let tries = ctx.memory.with(key, &uid, |m| {
                    let tries = match &m.submit_failure {
                        Some(SubmitFailure::Permanent { tries, .. }) => tries.saturating_add(1),
                        _ => 1,
                    };
                    m.attempts.insert(run_id.clone(), AttemptState::Absent);
                    m.submit_failure = Some(SubmitFailure::Permanent { status, message, tries });
                    tries
                });
                tracing::warn!(job = %key, error = %e, tries, "Buildkite refused the build");
                let wait = if tries >= decide::MAX_CREATE_REFUSALS { 0 } else { 10 * u64::from(tries) };
                requeue_later(ctx, key, Duration::from_secs(wait));
            }
        },
    }
}

/// The job a build was just created for is gone or being deleted (the deletion came while
/// the create was in flight): its cleanup may already have looked and let go, and no
/// reconcile sees a job that is gone, so the submitter cancels the build itself.
fn orphaned(ctx: &JobCtx, ns: &str, name: &str, uid: &str) -> bool {
    ctx.jobs
        .get(&ObjectRef::new(name).within(ns))
        .is_none_or(|j| j.uid().as_deref() != Some(uid) || j.metadata.deletion_timestamp.is_some())
}

async fn cancel_orphan(ctx: &JobCtx, key: &str, uid: &str, run_id: &str, build: &Build) {
    let number = build.number;
    match ctx
        .bk
        .cancel_build_id(
            build.pipeline_slug(),
            number,
            Some((&build.id, build.graphql_id.as_deref())),
            Priority::Cancel,
        )
        .await
    {
        Ok(_) => {
            tracing::info!(job = %key, build = number, "cancelled the build of a job deleted during its create");
            ctx.memory.with(key, uid, |m| m.canceled.insert(run_id.to_string()));
        }
        Err(e) => {
            tracing::warn!(job = %key, build = number, error = %e, "cancelling the build of a deleted job failed")
        }
    }
}

pub(super) fn requeue_later(ctx: &JobCtx, key: &str, after: Duration) {
    let trigger = ctx.trigger.clone();
    let key = key.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if let Some((ns, name)) = key.split_once('/') {
            let _ = trigger.send(ObjectRef::<KernelJob>::new(name).within(ns));
        }
    });
}
