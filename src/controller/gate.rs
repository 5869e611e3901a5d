//! Readiness gates: a controller reconciles only once every store it reads has had its
//! initial list, after each start and each leader change ([`super::run`] builds the
//! controllers anew each time). kube's Controller already holds its runner until the store
//! of its own kind is ready; the stores it merely reads (a pool reads GpuNodes, a GpuNode
//! reads Nodes and Pods) are waited for here. Until then "not in the cache" means "unknown",
//! never "gone".

use futures::Future;
use kube::runtime::reflector::Store;

/// Resolves once `store` has had its initial list. Never resolves when its writer is gone
/// (its watch ended: `run` fails on that), so nothing acts on a store that was never loaded.
pub async fn synced<K>(store: Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // Asked again and again: kube-runtime's readiness (`DelayedInit`, one oneshot receiver)
    // wakes only the last task that polled it, and several tasks wait on the same stores.
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(500), store.wait_until_ready()).await {
            Ok(Ok(())) => return,
            Ok(Err(_)) => futures::future::pending::<()>().await,
            Err(_) => {}
        }
    }
}

/// Resolves once every one of `stores` (from [`synced`]) has resolved.
pub async fn all_synced(stores: Vec<futures::future::BoxFuture<'static, ()>>) {
    futures::future::join_all(stores).await;
}

/// Runs `work` once `synced` resolves (every store it reads has had its initial list), or
/// nothing when `shutdown` comes first. Controllers are built by every [`run`], which runs
/// again after each start and each leader change, so the gate applies to each of them.
pub async fn when_synced<T>(
    what: &'static str,
    synced: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = shutdown => {
            tracing::info!(controllers = what, "stopped before the caches were synced");
            return None;
        }
        _ = synced => {}
    }
    tracing::info!(controllers = what, "caches synced; reconciling");
    Some(work.await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GpuNode;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use std::sync::Arc;

    #[tokio::test]
    async fn controllers_wait_for_every_store_they_read() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (nodes, mut nodes_w) = reflector::store::<Node>();
        let (pods, mut pods_w) = reflector::store::<Pod>();
        let ran = Arc::new(AtomicBool::new(false));
        let work = {
            let ran = ran.clone();
            async move { ran.store(true, Ordering::SeqCst) }
        };
        let gate = all_synced(vec![synced(nodes.clone()).boxed(), synced(pods.clone()).boxed()]);
        let fut = when_synced("test", gate, futures::future::pending(), work);
        tokio::pin!(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
        // One store listed (even an empty list counts), the other still loading.
        nodes_w.apply_watcher_event(&watcher::Event::Init);
        nodes_w.apply_watcher_event(&watcher::Event::InitDone);
        assert!(futures::poll!(fut.as_mut()).is_pending());
        pods_w.apply_watcher_event(&watcher::Event::Init);
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pods_w.apply_watcher_event(&watcher::Event::InitApply(pod));
        assert!(futures::poll!(fut.as_mut()).is_pending(), "a list in progress is not a list");
        assert!(!ran.load(Ordering::SeqCst));
        pods_w.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(fut.await, Some(()));
        assert!(ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_store_that_never_loads_keeps_controllers_off_until_shutdown() {
        let (nodes, nodes_w) = reflector::store::<Node>();
        // The watch ended before its first list: the writer is gone, the store never loads.
        drop(nodes_w);
        let fut = when_synced("test", synced(nodes), futures::future::pending(), async { 1 });
        tokio::pin!(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (gpunodes, _w) = reflector::store::<GpuNode>();
        let stopped = when_synced(
            "test",
            synced(gpunodes),
            async move {
                let _ = rx.await;
            },
            async { 1 },
        );
        let _ = tx.send(());
        assert_eq!(stopped.await, None, "shut down before the caches synced: nothing ran");
    }
}

#[cfg(test)]
mod synced_tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;
    use kube::runtime::watcher;

    /// Several tasks waiting on one store all go on once it is loaded (kube-runtime's own
    /// `wait_until_ready` wakes only the last of them).
    #[tokio::test]
    async fn every_waiter_goes_on_once_the_store_is_loaded() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(super::synced(store.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "went on before the store was loaded");
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w).await.expect("a waiter still waits").expect("joined");
        }
    }
}
