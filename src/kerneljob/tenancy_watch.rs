//! What wakes a waiting KernelJob when an admin's decision about it changes: its
//! namespace's labels (overrides allowed per namespace, pool namespace selectors) or the pool
//! it names (created, deleted, its spec changed). Jobs already submitted are not touched: a
//! build created before a change runs to its end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::controller::{JobCtx, key_of};
use crate::api::kerneljob::Phase;
use crate::api::{AgentPool, KernelJob};

/// How often the pool cache is compared with what was seen (pools are few; a comparison
/// reads the cache only, no API request).
const POOL_CHECK: Duration = Duration::from_secs(1);

/// A pool as far as admission is concerned: the same object (uid) at the same spec
/// (generation).
type PoolView = (String, i64);

/// `(namespace, name)` of a pool.
type PoolKey = (String, String);

fn pool_views(pools: &[Arc<AgentPool>]) -> HashMap<PoolKey, PoolView> {
    pools
        .iter()
        .map(|p| {
            let key = (p.namespace().unwrap_or_default(), p.name_any());
            (key, (p.uid().unwrap_or_default(), p.metadata.generation.unwrap_or(0)))
        })
        .collect()
}

/// Pools created, deleted, re-created or whose spec changed between two views.
fn changed_pools(before: &HashMap<PoolKey, PoolView>, after: &HashMap<PoolKey, PoolView>) -> HashSet<PoolKey> {
    let changed = after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| k.clone());
    let gone = before.keys().filter(|k| !after.contains_key(*k)).cloned();
    changed.chain(gone).collect()
}

/// A job that has no build yet (the only ones an admission decision still concerns).
fn waiting(job: &KernelJob) -> bool {
    job.status.as_ref().is_none_or(|s| s.phase == Phase::Pending) && job.metadata.deletion_timestamp.is_none()
}

/// The pool a job names, `(namespace, name)`.
pub(super) fn pool_of(job: &KernelJob) -> Option<PoolKey> {
    let name = job.spec.pool.clone()?;
    let ns = job.spec.pool_namespace.clone().unwrap_or_else(|| job.namespace().unwrap_or_default());
    Some((ns, name))
}

/// The waiting jobs that name one of `pools`.
fn jobs_naming(jobs: &[Arc<KernelJob>], pools: &HashSet<PoolKey>) -> Vec<String> {
    jobs.iter().filter(|j| waiting(j) && pool_of(j).is_some_and(|p| pools.contains(&p))).map(|j| key_of(j)).collect()
}

/// The namespace whose labels an event changed, remembering them in `seen`. The first
/// listing only fills `seen` (every job is reconciled at start anyway); a re-listing after a
/// lost watch counts changes.
fn labels_changed(
    seen: &mut HashMap<String, BTreeMap<String, String>>,
    ev: Result<watcher::Event<PartialObjectMeta<Namespace>>, watcher::Error>,
) -> Option<String> {
    match ev {
        Ok(watcher::Event::Apply(ns)) => {
            let (name, labels) = (ns.name_any(), ns.labels().clone());
            (seen.insert(name.clone(), labels.clone()).as_ref() != Some(&labels)).then_some(name)
        }
        Ok(watcher::Event::InitApply(ns)) => {
            let (name, labels) = (ns.name_any(), ns.labels().clone());
            seen.insert(name.clone(), labels.clone()).is_some_and(|old| old != labels).then_some(name)
        }
        Ok(watcher::Event::Delete(ns)) => seen.remove(&ns.name_any()).map(|_| ns.name_any()),
        _ => None,
    }
}

/// The waiting jobs of namespace `ns`.
fn jobs_in(jobs: &[Arc<KernelJob>], ns: &str) -> Vec<String> {
    jobs.iter().filter(|j| waiting(j) && j.namespace().as_deref() == Some(ns)).map(|j| key_of(j)).collect()
}

/// Wakes the waiting jobs that name a pool when that pool appears, goes or changes its spec.
/// Reads the same cache the reconcile reads, so a woken job sees the change.
pub async fn pool_triggers(ctx: Arc<JobCtx>) {
    crate::controller::gate::synced(ctx.pools.clone()).await;
    let mut seen = pool_views(&ctx.pools.state());
    loop {
        tokio::time::sleep(POOL_CHECK).await;
        let now = pool_views(&ctx.pools.state());
        let changed = changed_pools(&seen, &now);
        if !changed.is_empty() {
            let keys = jobs_naming(&ctx.jobs.state(), &changed);
            tracing::debug!(pools = changed.len(), jobs = keys.len(), "pools changed; waking the jobs that name them");
            for key in keys {
                ctx.wake(&key);
            }
        }
        seen = now;
    }
}

/// The Namespace cache (metadata only: labels) and the stream that fills it, waking the
/// waiting jobs of a namespace whose labels changed. `only`: watch this one namespace (a
/// controller of one namespace needs no other's labels).
pub fn namespace_cache(
    client: Client,
    only: Option<&str>,
) -> (Store<PartialObjectMeta<Namespace>>, impl FnOnce(Arc<JobCtx>) -> futures::future::BoxFuture<'static, ()> + use<>)
{
    let (store, writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let mut config = watcher::Config::default().any_semantic();
    // A controller of one namespace needs no other's labels.
    if let Some(ns) = only {
        config = config.fields(&format!("metadata.name={ns}"));
    }
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
    let run = move |ctx: Arc<JobCtx>| -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            // The labels last seen per namespace: a change wakes the namespace's jobs once the
            // cache holds it (this runs after the reflector applied the event).
            let mut seen: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            watcher(api, config)
                // Only the labels are read: the rest (managed fields, last-applied
                // annotations) is not kept.
                .modify(|ns| {
                    ns.metadata.managed_fields = None;
                    ns.metadata.annotations = None;
                })
                .default_backoff()
                .reflect(writer)
                .for_each(move |ev| {
                    if let Some(name) = labels_changed(&mut seen, ev) {
                        for key in jobs_in(&ctx.jobs.state(), &name) {
                            ctx.wake(&key);
                        }
                    }
                    futures::future::ready(())
                })
                .await;
        })
    };
    (store, run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kerneljob::KernelJobStatus;

    fn job(ns: &str, name: &str, pool: Option<(&str, Option<&str>)>, phase: Option<Phase>) -> Arc<KernelJob> {
        let mut spec = serde_json::json!({"mode": "test", "lang": "py", "main": "a.py", "sources": {"a.py": "x"}});
        match pool {
            Some((p, pns)) => {
                spec["pool"] = p.into();
                if let Some(pns) = pns {
                    spec["poolNamespace"] = pns.into();
                }
            }
            None => spec["queue"] = "q".into(),
        }
        let mut j = KernelJob::new(name, serde_json::from_value(spec).expect("spec"));
        j.metadata.namespace = Some(ns.into());
        j.status = phase.map(|phase| KernelJobStatus { phase, ..Default::default() });
        Arc::new(j)
    }

    fn view(entries: &[(&str, &str, &str, i64)]) -> HashMap<PoolKey, PoolView> {
        entries.iter().map(|(ns, n, uid, g)| ((ns.to_string(), n.to_string()), (uid.to_string(), *g))).collect()
    }

    #[test]
    fn a_pool_counts_as_changed_when_it_appears_goes_is_recreated_or_its_spec_changes() {
        let before =
            view(&[("a", "same", "u1", 1), ("a", "spec", "u2", 1), ("a", "gone", "u3", 1), ("a", "re", "u4", 1)]);
        let after =
            view(&[("a", "same", "u1", 1), ("a", "spec", "u2", 2), ("a", "re", "u5", 1), ("b", "new", "u6", 1)]);
        let mut got: Vec<_> = changed_pools(&before, &after).into_iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        got.sort();
        assert_eq!(got, ["a/gone", "a/re", "a/spec", "b/new"]);
        assert!(changed_pools(&after, &after).is_empty());
    }

    fn ns(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Namespace> {
        let mut m = PartialObjectMeta::<Namespace>::default();
        m.metadata.name = Some(name.into());
        m.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        m
    }

    #[test]
    fn a_namespace_wakes_its_jobs_when_its_labels_change_not_otherwise() {
        let mut seen = HashMap::new();
        use watcher::Event::{Apply, Delete, InitApply};
        // The first listing only fills the memory.
        assert_eq!(labels_changed(&mut seen, Ok(InitApply(ns("b", &[])))), None);
        // The same labels again (an annotation changed): nothing.
        assert_eq!(labels_changed(&mut seen, Ok(Apply(ns("b", &[])))), None);
        assert_eq!(labels_changed(&mut seen, Ok(Apply(ns("b", &[("team", "k")])))), Some("b".into()));
        // A re-listing that shows a change made while the watch was down.
        assert_eq!(labels_changed(&mut seen, Ok(InitApply(ns("b", &[("team", "j")])))), Some("b".into()));
        assert_eq!(labels_changed(&mut seen, Ok(InitApply(ns("b", &[("team", "j")])))), None);
        assert_eq!(labels_changed(&mut seen, Ok(Delete(ns("b", &[])))), Some("b".into()));
        assert_eq!(labels_changed(&mut seen, Ok(watcher::Event::Init)), None);
    }

    #[test]
    fn only_waiting_jobs_that_name_a_changed_pool_are_woken() {
        let jobs = vec![
            job("a", "own", Some(("x", None)), None),
            job("b", "cross", Some(("x", Some("a"))), Some(Phase::Pending)),
            job("b", "other-pool-ns", Some(("x", None)), None),
            job("b", "running", Some(("x", Some("a"))), Some(Phase::Running)),
            job("b", "done", Some(("x", Some("a"))), Some(Phase::Succeeded)),
            job("a", "raw", None, None),
        ];
        let changed: HashSet<PoolKey> = [("a".to_string(), "x".to_string())].into();
        assert_eq!(jobs_naming(&jobs, &changed), ["a/own", "b/cross"]);
        assert_eq!(jobs_in(&jobs, "b"), ["b/cross", "b/other-pool-ns"]);
        assert_eq!(pool_of(&jobs[1]), Some(("a".into(), "x".into())));
        assert_eq!(pool_of(&jobs[5]), None);
    }
}
