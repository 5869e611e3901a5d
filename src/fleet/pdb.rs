//! The PodDisruptionBudget of a pool: evictions (`kubectl drain`, the cluster autoscaler,
//! node upgrades) draw from the same budget as the pool's own rollouts. Pure.
//!
//! The budget is an integer `minAvailable`, recomputed by the controller, not the pool's
//! `maxUnavailable`: for a `maxUnavailable` (or a percentage `minAvailable`) the disruption
//! controller needs the pods' controller to be a built-in workload or to implement the
//! `/scale` subresource, and otherwise refuses every eviction (condition `SyncFailed`,
//! "does not implement the scale subresource": kubernetes
//! `pkg/controller/disruption/disruption.go`, `getExpectedPodCount`/`getScaleController`;
//! docs "Specifying a Disruption Budget for your Application", "Arbitrary workloads and
//! arbitrary selectors"). An AgentPool has no replica count to scale. With an integer
//! `minAvailable` the disruption controller counts the selected pods itself, and
//! `minAvailable = base − maxUnavailable` allows exactly the evictions the pool's own
//! rollout budget would.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use super::pod::{AGENT_NAME, LABEL_MANAGED_BY, LABEL_NAME, LABEL_POOL, MANAGED_BY, agent_pod_name, label_value};
use crate::api::AgentPool;

/// Pods that are not Ready (pending, crash-looping) may always be evicted: they serve no
/// job, and a pending agent must not block a node drain (docs "Unhealthy Pod Eviction
/// Policy"; GA since Kubernetes 1.31).
pub const UNHEALTHY_POD_EVICTION_POLICY: &str = "AlwaysAllow";

/// Name of a pool's PodDisruptionBudget: `<pool>-agents` (shortened like pod names).
pub fn pdb_name(pool: &str) -> String {
    // agent_pod_name shortens `<pool>-<x>-<n>` with a hash; reuse it with a fixed tail.
    let name = format!("{pool}-agents");
    if name.len() <= 253 { name } else { agent_pod_name(pool, "agents", 0) }
}

/// The labels that select exactly a pool's agent pods (a subset of what `agent_pod` sets).
pub fn agent_selector(pool_name: &str) -> BTreeMap<String, String> {
    [
        (LABEL_NAME.to_string(), AGENT_NAME.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_POOL.to_string(), label_value(pool_name)),
    ]
    .into()
}

/// The PodDisruptionBudget of `pool`: its agent pods, at least `min_available` of them
/// available after any eviction; owned by the pool (garbage-collected with it).
pub fn agent_pdb(pool: &AgentPool, min_available: i64) -> PodDisruptionBudget {
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let min = i32::try_from(min_available.max(0)).unwrap_or(i32::MAX);
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    labels.insert(LABEL_POOL.to_string(), label_value(&pool_name));
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(pdb_name(&pool_name)),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min)),
            max_unavailable: None,
            selector: Some(LabelSelector { match_labels: Some(agent_selector(&pool_name)), match_expressions: None }),
            unhealthy_pod_eviction_policy: Some(UNHEALTHY_POD_EVICTION_POLICY.to_string()),
        }),
        status: None,
    }
}

/// Whether an observed budget already says what `desired` says (spec and owner), so the
/// controller writes only on a change.
pub fn pdb_matches(observed: &PodDisruptionBudget, desired: &PodDisruptionBudget) -> bool {
    let spec = |p: &PodDisruptionBudget| {
        p.spec.as_ref().map(|s| {
            (
                s.min_available.clone(),
                s.max_unavailable.clone(),
                s.selector.as_ref().and_then(|l| l.match_labels.clone()),
                s.selector.as_ref().and_then(|l| l.match_expressions.clone()),
                s.unhealthy_pod_eviction_policy.clone(),
            )
        })
    };
    let owned = |p: &PodDisruptionBudget| {
        p.metadata.owner_references.as_ref().map(|o| o.iter().map(|r| r.uid.clone()).collect::<Vec<_>>())
    };
    spec(observed) == spec(desired) && owned(observed) == owned(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::pod::tests::pool;

    #[test]
    fn selects_the_pools_agents_and_is_owned_by_the_pool() {
        let p = pool("h100");
        let pdb = agent_pdb(&p, 15);
        assert_eq!(pdb.metadata.name.as_deref(), Some("h100-agents"));
        assert_eq!(pdb.metadata.namespace, p.metadata.namespace);
        let spec = pdb.spec.clone().unwrap_or_default();
        assert_eq!(spec.min_available, Some(IntOrString::Int(15)));
        assert_eq!(spec.max_unavailable, None, "needs a /scale subresource an AgentPool cannot have");
        assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
        let labels = spec.selector.and_then(|s| s.match_labels).unwrap_or_default();
        assert_eq!(labels.get(LABEL_POOL).map(String::as_str), Some("h100"));
        assert_eq!(labels.get(LABEL_MANAGED_BY).map(String::as_str), Some("benchkite"));
        let owners = pdb.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!((owners[0].kind.as_str(), owners[0].controller), ("AgentPool", Some(true)));
        assert_eq!(agent_pdb(&p, -3).spec.and_then(|s| s.min_available), Some(IntOrString::Int(0)));
    }

    #[test]
    fn the_selector_matches_the_agent_pods_labels() {
        let p = pool("h100");
        let pod = crate::fleet::pod::tests::built(&p);
        let pod_labels = pod.metadata.labels.unwrap_or_default();
        for (k, v) in agent_selector("h100") {
            assert_eq!(pod_labels.get(&k), Some(&v), "{k}");
        }
        let long = "p".repeat(250);
        assert!(pdb_name(&long).len() <= 253);
        assert_eq!(agent_selector(&long)[LABEL_POOL], label_value(&long));
    }

    #[test]
    fn only_a_changed_budget_is_written() {
        let p = pool("h100");
        let a = agent_pdb(&p, 15);
        assert!(pdb_matches(&a, &agent_pdb(&p, 15)));
        assert!(!pdb_matches(&a, &agent_pdb(&p, 14)));
        let mut other_owner = a.clone();
        other_owner.metadata.owner_references = None;
        assert!(!pdb_matches(&other_owner, &a));
        let mut extra = a.clone();
        if let Some(s) = extra.spec.as_mut() {
            s.unhealthy_pod_eviction_policy = None;
        }
        assert!(!pdb_matches(&extra, &a));
    }
}
