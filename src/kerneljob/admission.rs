//! Fair queueing at run time: every second, one admission round over the pools with
//! `spec.queueing` (`fairshare::Admissions::round`) from the KernelJob and AgentPool caches.
//! Admitted jobs and jobs whose shown position changed are woken; the reconcile (the only
//! status writer) asks [`JobCtx::admission_of`] whether a job may be submitted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::controller::{JobCtx, key_of};
use super::decide::Admit;
use super::fairshare::{Admissions, JobView, PoolKey, PoolView, Stage, shown_position};
use crate::api::KernelJob;
use crate::api::kerneljob::Phase;

/// What the last round decided, kept for the reconcile.
#[derive(Debug, Default)]
pub struct AdmissionState {
    admissions: Admissions,
    /// Held jobs: (position, estimated start).
    held: HashMap<String, (i64, Timestamp)>,
}

/// The pool a job targets, if any.
fn pool_of(job: &KernelJob) -> Option<PoolKey> {
    let name = job.spec.pool.clone()?;
    let ns = job.spec.pool_namespace.clone().or_else(|| job.namespace())?;
    Some((ns, name))
}

fn view(job: &KernelJob, pool: PoolKey) -> JobView {
    let status = job.status.as_ref();
    let stage = match status.map(|s| s.phase).unwrap_or_default() {
        Phase::Pending => Stage::Waiting,
        Phase::Submitted => Stage::Submitted,
        Phase::Running => Stage::Running,
        _ => Stage::Finished,
    };
    let runs = status
        .map(|s| {
            s.attempts
                .iter()
                .filter_map(|a| Some((a.started_at.as_ref()?.0, a.finished_at.as_ref().map(|t| t.0))))
                .collect()
        })
        .unwrap_or_default();
    JobView {
        key: key_of(job),
        pool,
        submitter: crate::controller::agentpool::jobs::submitter(job),
        priority: job.spec.priority,
        created: job.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now),
        stage: if job.metadata.deletion_timestamp.is_some() { Stage::Finished } else { stage },
        runs,
    }
}

/// One round: returns the jobs to wake (admitted, or their shown position changed).
pub fn round(ctx: &JobCtx, now: Timestamp) -> Vec<String> {
    let pools: Vec<PoolView> = ctx
        .pools
        .state()
        .iter()
        .filter_map(|p| {
            let queueing = p.spec.queueing.clone()?;
            Some(PoolView {
                key: (p.namespace().unwrap_or_default(), p.name_any()),
                queueing,
                ready_agents: p.status.as_ref().map_or(0, |s| s.ready_agents),
            })
        })
        .collect();
    let keys: HashSet<PoolKey> = pools.iter().map(|p| p.key.clone()).collect();
    let jobs: Vec<JobView> = if keys.is_empty() {
        Vec::new()
    } else {
        ctx.jobs.state().iter().filter_map(|j| pool_of(j).filter(|k| keys.contains(k)).map(|k| view(j, k))).collect()
    };
    let Ok(mut st) = ctx.admission.lock() else { return Vec::new() };
    let r = st.admissions.round(&pools, &jobs, now);
    if !pools.is_empty() {
        tracing::debug!(
            pools = pools.len(),
            jobs = jobs.len(),
            admit = r.admit.len(),
            held = r.held.len(),
            "admission round"
        );
    }
    let mut wake = r.admit.clone();
    for (key, (p, _)) in &r.held {
        let before = st.held.get(key).map(|(b, _)| shown_position(*b));
        if before != Some(shown_position(*p)) {
            wake.push(key.clone());
        }
    }
    // Jobs of pools that stopped queueing: submitted as before.
    let gone: Vec<String> =
        st.held.keys().filter(|k| !r.held.contains_key(*k) && !r.admit.contains(*k)).cloned().collect();
    wake.extend(gone);
    st.held = r.held;
    wake
}

impl JobCtx {
    /// Whether the job may be submitted now (its pool has no queueing, or admitted it), or
    /// waits for a free agent, and where it stands.
    pub fn admission_of(&self, job: &KernelJob) -> Admit {
        let Some(pool) = pool_of(job) else { return Admit::Free };
        let Ok(st) = self.admission.lock() else { return Admit::Free };
        let queueing_now = self
            .pools
            .get(&kube::runtime::reflector::ObjectRef::new(&pool.1).within(&pool.0))
            .is_some_and(|p| p.spec.queueing.is_some());
        if !queueing_now {
            return Admit::Free;
        }
        let key = key_of(job);
        if st.admissions.admitted(&key) {
            return Admit::Free;
        }
        match st.held.get(&key) {
            Some((position, eta)) => Admit::Held { position: Some(*position), eta: Some(*eta) },
            // Not in a round yet (new, or its pool just started queueing): the next one says.
            None => Admit::Held { position: None, eta: None },
        }
    }
}

/// Rounds every second while the controller runs.
pub async fn admission_loop(ctx: Arc<JobCtx>) {
    // Not `wait_until_ready` alone: it wakes only the last of several waiters.
    crate::controller::gate::synced(ctx.jobs.clone()).await;
    tracing::debug!("admission rounds start");
    loop {
        for key in round(&ctx, Timestamp::now()) {
            ctx.wake(&key);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
