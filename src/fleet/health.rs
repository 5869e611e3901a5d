//! Node health as Kubernetes judges it: how long a Node has not been Ready, and whether its
//! agents are still tolerated there.
//!
//! Kubernetes does not evict pods from a node the moment it stops being Ready: the node
//! lifecycle controller taints it `node.kubernetes.io/not-ready` (Ready=False) or
//! `node.kubernetes.io/unreachable` (Ready=Unknown, missed heartbeats) with effect
//! NoExecute, and the DefaultTolerationSeconds admission plugin gives every pod a toleration
//! of 300 s for both, so pods are evicted only after the node stayed not Ready for 300 s
//! (docs: "Taints and Tolerations", section "Taint based Evictions"; admission plugin
//! `DefaultTolerationSeconds`, flags `--default-not-ready-toleration-seconds` and
//! `--default-unreachable-toleration-seconds`, both 300). benchkite keeps agents the same way:
//! a node not Ready for less than the toleration keeps them (a missed heartbeat must not kill
//! every running benchmark), after it they drain.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Default toleration of a not-Ready node, as Kubernetes' DefaultTolerationSeconds.
pub const DEFAULT_NOT_READY_TOLERATION: Duration = Duration::from_secs(300);

/// What a Node's Ready condition means for the agents on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    /// Ready=True.
    Ready,
    /// Not Ready (False, Unknown or no Ready condition) since `since`, tolerated until `until`:
    /// agents stay, none are added.
    NotReadyTolerated { since: Timestamp, until: Timestamp },
    /// Not Ready since `since`, for longer than the toleration: agents drain.
    NotReady { since: Timestamp },
}

/// The health of `node` at `now` with `toleration`. A Ready condition of `Unknown` (the
/// kubelet stopped posting status) counts like `False`, as Kubernetes' unreachable taint does.
/// Without a Ready condition the node has not reported yet: not Ready since it was created
/// (or since `now` when even that is missing, so the toleration starts rather than ends).
pub fn node_health(node: &Node, now: Timestamp, toleration: Duration) -> NodeHealth {
    let ready =
        node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    if ready.is_some_and(|c| c.status == "True") {
        return NodeHealth::Ready;
    }
    let since = ready
        .and_then(|c| c.last_transition_time.as_ref())
        .or(node.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now)
        .min(now);
    let toleration = SignedDuration::try_from(toleration).unwrap_or(SignedDuration::MAX);
    match since.checked_add(toleration) {
        Ok(until) if until > now => NodeHealth::NotReadyTolerated { since, until },
        Ok(_) => NodeHealth::NotReady { since },
        // Beyond the representable range: tolerated for as long as time goes.
        Err(_) => NodeHealth::NotReadyTolerated { since, until: Timestamp::MAX },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn node(ready: Option<(&str, Option<i64>)>, created: Option<i64>) -> Node {
        let mut n = Node::default();
        n.metadata.creation_timestamp = created.map(|c| Time(ts(c)));
        n.status = Some(NodeStatus {
            conditions: ready.map(|(status, at)| {
                vec![NodeCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_transition_time: at.map(|a| Time(ts(a))),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        n
    }

    #[test]
    fn health_table() {
        let tol = DEFAULT_NOT_READY_TOLERATION;
        let now = ts(1000);
        let tolerated = |since, until| NodeHealth::NotReadyTolerated { since: ts(since), until: ts(until) };
        let rows: Vec<(&str, Node, NodeHealth)> = vec![
            ("ready", node(Some(("True", Some(0))), Some(0)), NodeHealth::Ready),
            ("ready without a transition time", node(Some(("True", None)), None), NodeHealth::Ready),
            ("not ready for 60 s", node(Some(("False", Some(940))), Some(0)), tolerated(940, 1240)),
            (
                "unknown (missed heartbeats) counts like False",
                node(Some(("Unknown", Some(960))), Some(0)),
                tolerated(960, 1260),
            ),
            ("one second before expiry", node(Some(("False", Some(701))), Some(0)), tolerated(701, 1001)),
            ("exactly at expiry", node(Some(("False", Some(700))), Some(0)), NodeHealth::NotReady { since: ts(700) }),
            ("long gone", node(Some(("Unknown", Some(0))), Some(0)), NodeHealth::NotReady { since: ts(0) }),
            ("no Ready condition yet: since creation", node(None, Some(900)), tolerated(900, 1200)),
            (
                "no transition time: since creation",
                node(Some(("False", None)), Some(0)),
                NodeHealth::NotReady { since: ts(0) },
            ),
            ("nothing known: the toleration starts now", node(None, None), tolerated(1000, 1300)),
            (
                "a transition in the future (clock skew) counts from now",
                node(Some(("False", Some(5000))), Some(0)),
                tolerated(1000, 1300),
            ),
        ];
        for (what, n, want) in rows {
            assert_eq!(node_health(&n, now, tol), want, "{what}");
        }
    }

    #[test]
    fn the_toleration_is_configurable() {
        let n = node(Some(("False", Some(940))), Some(0));
        assert_eq!(node_health(&n, ts(1000), Duration::ZERO), NodeHealth::NotReady { since: ts(940) });
        assert_eq!(
            node_health(&n, ts(1000), Duration::from_secs(61)),
            NodeHealth::NotReadyTolerated { since: ts(940), until: ts(1001) }
        );
        assert!(matches!(node_health(&n, ts(1000), Duration::MAX), NodeHealth::NotReadyTolerated { .. }));
    }
}
