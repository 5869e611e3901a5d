//! Cancels the builds of deleted KernelJobs, without a finalizer (see the top of
//! [`super::controller`] for why). Three ways in, from fastest to surest:
//! - the watch's delete event: the deleted job's runs are cancelled at once (a create still
//!   in flight is waited for);
//! - a sweep, every poll interval, of the builds the board follows whose job is not in the
//!   cache: a read of the job confirms it is gone (the cache may lag) before the cancel; a
//!   cancel that fails (Buildkite down) is tried again at the next sweep, as the build stays
//!   on the board until it is cancelled or finished;
//! - after a start, one listing of each pipeline's unfinished builds: a job deleted while no
//!   controller ran, or finished before its build was recorded, has a build nothing follows.
//!   Its builds go on the board: the sweep cancels the orphans, and the reconcile of a job
//!   that still exists adopts or cancels (a stray of a finished job) what is its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use super::board;
use super::controller::{JobCtx, key_of, pipeline_of};
use super::decide::next_attempt_number;
use super::machine::{self, meta};
use super::memory::AttemptState;
use super::recovery::LIST_PAGES;
use crate::api::KernelJob;
use crate::buildkite::{Build, BuildQuery, CancelOutcome, Priority};

/// How long the delete path waits for a create in flight to answer before it leaves the
/// build to the sweep.
const CREATE_WAIT: Duration = Duration::from_secs(30);

/// A KernelJob the watch saw deleted: its key, UID and the run ids its builds may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    pub key: String,
    pub uid: String,
    pub runs: Vec<String>,
}

impl Deleted {
    /// What the delete event of `job` says (its last known status names its attempts).
    pub fn of(job: &KernelJob) -> Option<Self> {
        let uid = job.uid()?;
        let status = job.status.clone().unwrap_or_default();
        let runs = (1..=next_attempt_number(&status)).map(|n| machine::run_id(&uid, n)).collect();
        Some(Deleted { key: key_of(job), uid, runs })
    }
}

/// Builds the board follows that are not finished and whose job is not in the cache: the
/// candidates of a sweep (each confirmed by a read before its cancel).
pub fn candidates(in_flight: Vec<Build>, has_job: impl Fn(&Build) -> bool) -> Vec<Build> {
    in_flight.into_iter().filter(|b| !b.state.is_terminal() && !has_job(b)).collect()
}

/// The `namespace/name` a build's meta-data names, if it is well formed.
pub fn named_job(build: &Build) -> Option<(String, String)> {
    let (ns, name) = build.meta_data.get(meta::JOB)?.split_once('/')?;
    (!ns.is_empty() && !name.is_empty()).then(|| (ns.to_string(), name.to_string()))
}

/// The reaper: delete events as they come, a sweep every poll interval, and the listing
/// after a start until it went through once.
pub async fn reap_loop(ctx: Arc<JobCtx>, mut deleted: mpsc::UnboundedReceiver<Deleted>) {
    tracing::debug!("reaper started");
    let mut listed = false;
    let mut tick = tokio::time::interval(ctx.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            d = deleted.recv() => match d {
                Some(d) => {
                    tokio::spawn(reap_deleted(ctx.clone(), d));
                }
                None => return,
            },
            _ = tick.tick() => {
                if !listed {
                    listed = list_unfinished(&ctx).await;
                }
                sweep(&ctx).await;
            }
        }
    }
}

/// Cancels the unfinished builds of a job the watch saw deleted; waits for a create in
/// flight. What is left (Buildkite unreachable) stays on the board for the sweep.
async fn reap_deleted(ctx: Arc<JobCtx>, d: Deleted) {
    let started = tokio::time::Instant::now();
    loop {
        let mut waiting = false;
        for run in &d.runs {
            match ctx.board.get(run) {
                Some(e) if !e.build.state.is_terminal() => {
                    if !cancel(&ctx, &d.key, run, &e.build).await {
                        // Left to the sweep: the build stays on the board.
                        return;
                    }
                }
                Some(_) => ctx.board.forget(run),
                None => {
                    let creating = ctx
                        .memory
                        .read(&d.key, &d.uid, |m| m.attempts.get(run) == Some(&AttemptState::Creating))
                        .unwrap_or(false);
                    waiting |= creating;
                }
            }
        }
        if !waiting || started.elapsed() >= CREATE_WAIT {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Cancels an orphan's build; true when nothing of it runs any more (cancelled, or already
/// finished or gone). The board forgets it then.
async fn cancel(ctx: &JobCtx, key: &str, run: &str, build: &Build) -> bool {
    match ctx
        .bk
        .cancel_build_id(
            build.pipeline_slug(),
            build.number,
            Some((&build.id, build.graphql_id.as_deref())),
            Priority::Cancel,
        )
        .await
    {
        Ok(outcome) => {
            if matches!(outcome, CancelOutcome::Canceled(_)) {
                tracing::info!(job = %key, build = build.number, "cancelled the build of a deleted KernelJob");
                crate::metrics::global().orphan_cancelled();
            }
            ctx.board.forget(run);
            true
        }
        Err(e) => {
            tracing::warn!(job = %key, build = build.number, error = %e, "cancelling the build of a deleted KernelJob failed; trying again at the next sweep");
            false
        }
    }
}

/// Cancels the unfinished builds on the board whose job is gone (confirmed by a read).
async fn sweep(ctx: &JobCtx) {
    let in_flight = ctx.board.unfinished();
    for build in candidates(in_flight, |b| ctx.job_of(b).is_some()) {
        let Some(run) = board::run_id_of(&build).map(str::to_string) else { continue };
        let Some(uid) = board::uid_of_run(&run).map(str::to_string) else { continue };
        let Some((ns, name)) = named_job(&build) else {
            tracing::debug!(build = build.number, "an unfinished build names no KernelJob; left alone");
            continue;
        };
        // The cache may lag a job created a moment ago: only the API says it is gone.
        let api: Api<KernelJob> = Api::namespaced(ctx.client.clone(), &ns);
        match api.get_opt(&name).await {
            Ok(Some(job)) if job.uid().as_deref() == Some(uid.as_str()) && job.meta().deletion_timestamp.is_none() => {}
            Ok(_) => {
                cancel(ctx, &format!("{ns}/{name}"), &run, &build).await;
            }
            Err(e) => {
                tracing::debug!(job = %format!("{ns}/{name}"), error = %e, "reading a KernelJob for the sweep failed")
            }
        }
    }
}

/// The pipelines builds of this installation may be in: those of the cached jobs, of the
/// pools' queues, and the configured one.
fn pipelines(ctx: &JobCtx) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for job in ctx.jobs.state() {
        let status = ctx.current_status(&job);
        if let Some(p) = pipeline_of(&job, ctx, &status) {
            out.insert(p);
        }
    }
    for pool in ctx.pools.state() {
        let own = pool.spec.buildkite.as_ref().and_then(|b| b.pipeline.clone());
        out.insert(own.unwrap_or_else(|| crate::buildkite::managed_slug(&ctx.config.instance, &pool.spec.queue)));
    }
    out.extend(ctx.config.pipeline.clone());
    out
}

/// After a start: the unfinished builds of this installation. One organization-wide
/// listing filtered by the installation's meta-data (it finds builds in any pipeline, also
/// one no remaining job or pool names); if Buildkite refuses it, one listing per pipeline
/// the cached jobs and pools name. Ours go on the board and their jobs, if they exist, are
/// woken. True once a listing went through.
async fn list_unfinished(ctx: &JobCtx) -> bool {
    // Not waiting for the job cache: the sweep reads a job before it cancels its build, and
    // a job the cache does not hold yet is reconciled (and finds its build on the board)
    // once it does.
    tracing::debug!(jobs = ctx.jobs.state().len(), "listing this installation's unfinished builds");
    let query = |pipeline: Option<String>| BuildQuery {
        pipeline,
        states: vec!["scheduled".into(), "running".into(), "failing".into()],
        meta_data: vec![(meta::INSTANCE.to_string(), ctx.config.instance.clone())],
        exclude_jobs: true,
        per_page: Some(100),
        max_pages: Some(LIST_PAGES),
        ..Default::default()
    };
    match ctx.bk.list_builds(&query(None), Priority::Refresh).await {
        Ok(listing) => {
            take(ctx, "(organization)", &listing.items, listing.truncated);
            return true;
        }
        Err(e) => {
            tracing::info!(error = %e, "listing unfinished builds across the organization failed; listing per pipeline")
        }
    }
    let pipelines = pipelines(ctx);
    // Nothing to list yet (the caches may still be loading): again at the next tick.
    let mut complete = !pipelines.is_empty();
    for pipeline in pipelines {
        match ctx.bk.list_builds(&query(Some(pipeline.clone())), Priority::Refresh).await {
            Ok(listing) => take(ctx, &pipeline, &listing.items, listing.truncated),
            Err(e) => {
                complete = false;
                tracing::warn!(%pipeline, error = %e, "listing unfinished builds failed; trying again");
            }
        }
    }
    complete
}

/// Puts the listed builds of this installation on the board and wakes their jobs.
fn take(ctx: &JobCtx, scope: &str, builds: &[Build], truncated: bool) {
    let now = Timestamp::now();
    let mut ours = 0;
    for build in builds.iter().filter(|b| board::is_ours(b, &ctx.config.instance)) {
        ours += 1;
        tracing::debug!(build = build.number, state = build.state.as_str(), job = ?build.meta_data.get(meta::JOB), "an unfinished build of this installation");
        ctx.board.update(build, now);
        if let Some(key) = ctx.job_of(build) {
            ctx.wake(&key);
        }
    }
    if truncated {
        tracing::warn!(
            scope,
            listed = builds.len(),
            "more unfinished builds than one listing holds; the oldest were not checked for orphans"
        );
    }
    tracing::info!(scope, listed = builds.len(), ours, "unfinished builds listed after the start");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkite::BuildState;

    fn build(run: &str, state: BuildState, job: Option<&str>) -> Build {
        let mut b: Build = serde_json::from_value(serde_json::json!({
            "id": format!("id-{run}"), "number": 1, "state": state.as_str(),
            "branch": format!("benchkite/test/{run}"),
        }))
        .unwrap();
        if let Some(j) = job {
            b.meta_data.insert(meta::JOB.into(), j.into());
        }
        b
    }

    #[test]
    fn only_unfinished_builds_of_jobs_not_in_the_cache_are_candidates() {
        let builds = vec![
            build("gone-1", BuildState::Running, Some("ns/a")),
            build("alive-1", BuildState::Running, Some("ns/b")),
            build("done-1", BuildState::Passed, Some("ns/c")),
            build("queued-1", BuildState::Scheduled, Some("ns/d")),
        ];
        let alive = |b: &Build| board::run_id_of(b) == Some("alive-1");
        let runs: Vec<String> =
            candidates(builds, alive).iter().filter_map(|b| board::run_id_of(b).map(str::to_string)).collect();
        assert_eq!(runs, vec!["gone-1".to_string(), "queued-1".to_string()]);
    }

    #[test]
    fn a_deleted_job_names_every_run_its_builds_may_carry() {
        let spec = serde_json::from_value(serde_json::json!({
            "pool": "h100", "mode": "test", "lang": "py", "main": "s.py", "sources": {"s.py": ""},
        }))
        .unwrap();
        let mut job = KernelJob::new("j", spec);
        job.metadata.namespace = Some("ns".into());
        job.metadata.uid = Some("u1".into());
        let d = Deleted::of(&job).unwrap();
        assert_eq!(d.runs, vec![machine::run_id("u1", 1)]);
        let mut status = crate::api::kerneljob::KernelJobStatus::default();
        status.attempts.push(Default::default());
        status.attempts.push(Default::default());
        job.status = Some(status);
        let d = Deleted::of(&job).unwrap();
        assert_eq!(d.key, "ns/j");
        assert_eq!(d.runs.len(), 3, "two attempts made, and the next one's create may be in flight");
        job.metadata.uid = None;
        assert!(Deleted::of(&job).is_none());
    }

    #[test]
    fn the_job_a_build_names_must_be_well_formed() {
        assert_eq!(named_job(&build("r-1", BuildState::Running, Some("ns/a"))), Some(("ns".into(), "a".into())));
        assert_eq!(named_job(&build("r-1", BuildState::Running, Some("nsa"))), None);
        assert_eq!(named_job(&build("r-1", BuildState::Running, Some("/a"))), None);
        assert_eq!(named_job(&build("r-1", BuildState::Running, None)), None);
    }
}
