//! The fallback poller: catches what lost webhooks did not deliver, with one listing per
//! pipeline and interval, never a request per job. It also sweeps the per-job memory of
//! jobs that left the cache.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use super::board;
use super::controller::JobCtx;
use super::recovery::LIST_PAGES;
use crate::buildkite::{Build, BuildQuery, Priority};

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

/// Builds read per pipeline and round over GraphQL at most (one point each; at the default
/// 30 s interval 500 builds cost 5,000 of the 18,000 points of a 5-minute window).
pub const GRAPHQL_POLL_MAX: usize = 500;

/// One round over GraphQL, when the REST request budget would make the listings wait (it
/// is spent on other work): the states of the pipeline's unfinished builds not heard of for
/// an interval, the longest quiet first, in batched queries at one point per build. A build
/// found finished is then read on its own for its result. `false` when REST has room or
/// GraphQL cannot carry it (not usable, no room in its budget, an error): the REST listings
/// run.
async fn graphql_round(ctx: &JobCtx, pipeline: &str, started: Timestamp) -> bool {
    // REST listings carry 100 builds with their result meta-data per request: they go first
    // while the request budget has room; GraphQL's one point per build when it has not.
    if !ctx.bk.graphql_active() || !ctx.bk.rest_would_wait(crate::buildkite::Priority::Refresh) {
        return false;
    }
    let interval = k8s_openapi::jiff::SignedDuration::try_from(ctx.config.poll_interval).unwrap_or_default();
    let ids = ctx.board.quiet_in_flight(pipeline, started - interval, GRAPHQL_POLL_MAX);
    if ids.is_empty() {
        return true;
    }
    match ctx.bk.try_read_build_states(pipeline, &ids).await {
        Some(Ok(builds)) => {
            let woken = apply_listing(ctx, &builds, started);
            tracing::debug!(%pipeline, quiet = ids.len(), read = builds.len(), woken, "poll: GraphQL states");
            // Builds read are heard of; those GraphQL does not know wait for the REST listing.
            builds.len() == ids.len()
        }
        Some(Err(e)) => {
            tracing::warn!(%pipeline, error = %e, "reading build states over GraphQL failed; listing over REST");
            false
        }
        None => false,
    }
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
        // Per-job memory goes with its job, even one deleted without a reconcile seeing it.
        ctx.memory.retain(|key, uid| {
            key.split_once('/').is_some_and(|(ns, name)| {
                ctx.jobs.get(&ObjectRef::new(name).within(ns)).is_some_and(|j| j.metadata.uid.as_deref() == Some(uid))
            })
        });
        let pipelines = ctx.board.in_flight_by_pipeline();
        since.retain(|p, _| pipelines.contains_key(p));
        for (pipeline, flight) in pipelines {
            let started = Timestamp::now();
            if graphql_round(&ctx, &pipeline, started).await {
                continue;
            }
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
