//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager).
//!
//! Every replica serves probes and metrics; only the holder of the Lease runs the
//! controllers. A standby takes over when the holder stops renewing (at most one lease
//! duration after the holder died) or at once when the holder releases the Lease on a
//! graceful shutdown. A holder that cannot confirm its lease (the Lease names someone else,
//! or the API server has not answered for longer than it may safely assume it still holds
//! it) exits with an error, so two replicas never reconcile at once; its restart stands by.
//!
//! With `POD_NAME` and `POD_NAMESPACE` set, the leader labels its own Pod
//! `benchkite.dev/leader=true` (and a standby `false`): the webhook Service selects the
//! leader, so Buildkite's deliveries reach the replica that can act on them.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::Future;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;

/// Label on the controller's own Pod: `true` on the leader.
pub const LEADER_LABEL: &str = "benchkite.dev/leader";
const FIELD_MANAGER: &str = "benchkite-leader";

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// This process's Pod (namespace, name), to label the leader.
    pub pod: Option<(String, String)>,
}

impl LeaderConfig {
    /// Renewal happens this long before the lease would expire (a third of the duration).
    pub fn grace(&self) -> Duration {
        Duration::from_secs((self.lease_duration.as_secs() / 3).max(1))
    }
}

/// This process's identity: `POD_NAME`, else `<hostname>-<pid>`.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "benchkite".to_string());
    format!("{host}-{}", std::process::id())
}

/// The namespace of the Lease when none is given: `POD_NAMESPACE`, else the in-cluster
/// service-account namespace, else `default`.
pub fn default_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "default".to_string())
}

/// Waits for the lease, then runs `lead` (given a future that resolves when it must stop)
/// until `shutdown`, or fails when the lease is lost.
pub async fn run<F, Fut>(
    client: Client,
    cfg: LeaderConfig,
    shutdown: impl Future<Output = ()> + Send,
    lead: F,
) -> anyhow::Result<()>
where
    F: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let metrics = crate::metrics::global();
    metrics.set_leader(false);
    label_pod(&client, &cfg, false).await;
    let manager = LeaseManagerBuilder::new(client.clone(), cfg.lease_name.clone())
        .with_namespace(cfg.namespace.clone())
        .with_identity(cfg.identity.clone())
        .with_duration(cfg.lease_duration.as_secs().max(2))
        .with_grace(cfg.grace().as_secs())
        // The field manager stays per identity (the crate's default): server-side apply
        // conflicts between replicas are what makes a concurrent lock impossible.
        .build()
        .await
        .with_context(|| format!("preparing the Lease {}/{}", cfg.namespace, cfg.lease_name))?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(identity = %cfg.identity, lease = %format!("{}/{}", cfg.namespace, cfg.lease_name),
        "standing by for the leader lease");
    tokio::pin!(shutdown);

    // Stand by.
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => {
                changed.map_err(|_| anyhow::anyhow!("the leader election task stopped"))?;
            }
            _ = &mut shutdown => {
                drop(leading);
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                tracing::info!("stopped while standing by");
                return Ok(());
            }
        }
    }
    let since = Instant::now();
    tracing::info!(identity = %cfg.identity, "acquired the leader lease; starting the controllers");
    metrics.set_leader(true);
    label_pod(&client, &cfg, true).await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controllers = lead(Box::pin(async move {
        let _ = stop_rx.await;
    }));
    tokio::pin!(controllers);
    let outcome = {
        let lost = lost_lease(client.clone(), cfg.clone(), &mut leading);
        tokio::pin!(lost);
        tokio::select! {
        res = &mut controllers => {
            // The controllers ended on their own (an error, or watches closed).
            res.and_then(|()| Err(anyhow::anyhow!("the controllers stopped")))
        }
        reason = &mut lost => {
            metrics.set_leader(false);
            // Exit at once: the controllers' future is dropped, the process ends, and the
            // restarted container stands by. Nothing is released: the lease is not ours.
            return Err(anyhow::anyhow!("lost the leader lease after {:?}: {reason}", since.elapsed()));
        }
        _ = &mut shutdown => {
            let _ = stop_tx.send(());
            if tokio::time::timeout(Duration::from_secs(20), &mut controllers).await.is_err() {
                tracing::warn!("controllers did not stop within 20 s; releasing the lease anyway");
            }
            Ok(())
        }
        }
    };
    metrics.set_leader(false);
    label_pod(&client, &cfg, false).await;
    // Closing the channel makes the election task release the lease, so a standby takes
    // over now instead of after the lease expires.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader lease failed; it expires on its own"),
        _ => tracing::warn!("releasing the leader lease timed out; it expires on its own"),
    }
    outcome
}

/// Resolves (with the reason) once this process may no longer assume it holds the lease.
async fn lost_lease(client: Client, cfg: LeaderConfig, leading: &mut tokio::sync::watch::Receiver<bool>) -> String {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    // Confirmed holder as of this instant; the lease is surely ours until confirmed + duration
    // minus a margin for clock skew and the time the last confirmation took.
    let mut confirmed = Instant::now();
    let safe_for = cfg.lease_duration.saturating_sub(cfg.grace()).max(Duration::from_secs(1));
    let every = (cfg.lease_duration / 5).clamp(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return "the leader election task stopped".to_string();
                }
                if !*leading.borrow_and_update() {
                    return "the lease was taken over".to_string();
                }
            }
            _ = tokio::time::sleep(every) => {
                let asked = Instant::now();
                match api.get_opt(&cfg.lease_name).await {
                    Ok(Some(lease)) => {
                        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                        if holder != cfg.identity {
                            return format!("the Lease names {holder:?} as holder");
                        }
                        confirmed = asked;
                    }
                    Ok(None) => return "the Lease was deleted".to_string(),
                    Err(e) => {
                        tracing::warn!(error = %e, "confirming the leader lease failed");
                    }
                }
                if confirmed.elapsed() > safe_for {
                    return format!("the lease could not be confirmed for {:?}", confirmed.elapsed());
                }
            }
        }
    }
}

/// Sets the leader label on this process's Pod (best effort: without the Pod, or without
/// permission, webhooks still reach a standby, which answers 503 so Buildkite retries).
async fn label_pod(client: &Client, cfg: &LeaderConfig, leader: bool) {
    let Some((ns, name)) = &cfg.pod else { return };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {LEADER_LABEL: if leader { "true" } else { "false" }}},
    });
    if let Err(e) = api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "labelling this Pod for the webhook Service failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_is_a_third_of_the_duration_and_at_least_a_second() {
        let mut cfg = LeaderConfig {
            namespace: "n".into(),
            lease_name: "l".into(),
            identity: "i".into(),
            lease_duration: Duration::from_secs(15),
            pod: None,
        };
        assert_eq!(cfg.grace(), Duration::from_secs(5));
        cfg.lease_duration = Duration::from_secs(2);
        assert_eq!(cfg.grace(), Duration::from_secs(1));
    }
}
