use super::*;
use crate::api::agentpool::PoolNodeStatus;
use serde_json::json;

fn job(extra: serde_json::Value) -> KernelJobSpec {
    let mut v = json!({"pool": "h100", "mode": "test", "lang": "py", "main": "s.py", "sources": {"s.py": "x"}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::from_value(v).unwrap()
}

fn node(name: &str, state: &str) -> PoolNodeStatus {
    PoolNodeStatus { name: name.into(), state: state.into(), message: format!("{state} message"), ..Default::default() }
}

fn pool(gpus_per_agent: i32, paused: bool, nodes: Vec<PoolNodeStatus>) -> AgentPool {
    let mut p: AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "h100", "namespace": "ns", "generation": 3},
        "spec": {"queue": "q", "gpuNodeSelector": {}, "gpusPerAgent": gpus_per_agent, "paused": paused,
                 "agent": {"tokenSecretRef": {"name": "t", "key": "token"}}},
        "status": {"observedGeneration": 3}
    }))
    .unwrap();
    if let Some(s) = p.status.as_mut() {
        s.nodes = nodes;
    }
    p
}

fn sm90(_: &str) -> Option<String> {
    Some("sm_90".into())
}

#[test]
fn a_pool_with_a_usable_node_serves() {
    for state in PASSING_STATES {
        let p = pool(1, false, vec![node("a", "Conflict"), node("b", state)]);
        assert_eq!(unservable(&job(json!({})), &p, sm90), None, "{state}");
    }
}

#[test]
fn a_pool_whose_status_is_older_than_its_spec_tells_nothing() {
    let mut p = pool(1, true, vec![]);
    if let Some(s) = p.status.as_mut() {
        s.observed_generation = Some(2);
    }
    assert_eq!(unservable(&job(json!({})), &p, sm90), None);
    p.status = None;
    assert_eq!(unservable(&job(json!({})), &p, sm90), None);
}

#[test]
fn no_node_selected_fails() {
    let (reason, message) = unservable(&job(json!({})), &pool(1, false, vec![]), sm90).unwrap();
    assert_eq!(reason, "NoUsableNode");
    assert!(message.contains("selects no GpuNode"), "{message}");
}

#[test]
fn every_node_unusable_fails_naming_them() {
    let nodes =
        vec![node("a", "Conflict"), node("b", "NotExclusive"), node("c", "ShareTooSmall"), node("d", "NodeNotFound")];
    let (reason, message) = unservable(&job(json!({})), &pool(1, false, nodes), sm90).unwrap();
    assert_eq!(reason, "NoUsableNode");
    for part in ["a Conflict (Conflict message)", "b NotExclusive", "c ShareTooSmall", "d NodeNotFound", "4 GpuNodes"] {
        assert!(message.contains(part), "{part} in {message}");
    }
    let many: Vec<_> = (0..8).map(|i| node(&format!("n{i}"), "NoGpus")).collect();
    let (_, message) = unservable(&job(json!({})), &pool(1, false, many), sm90).unwrap();
    assert!(message.ends_with("; and 3 more"), "{message}");
}

#[test]
fn a_paused_pool_fails() {
    let (reason, message) = unservable(&job(json!({})), &pool(1, true, vec![node("a", "Paused")]), sm90).unwrap();
    assert_eq!(reason, "PoolPaused");
    assert!(message.contains("spec.paused"), "{message}");
}

#[test]
fn more_gpus_than_an_agent_has_fails() {
    let p = pool(1, false, vec![node("a", "Active")]);
    assert_eq!(unservable(&job(json!({"multiGpu": true})), &p, sm90).unwrap().0, "TooManyGpus");
    assert_eq!(unservable(&job(json!({"gpus": 2})), &p, sm90).unwrap().0, "TooManyGpus");
    assert_eq!(unservable(&job(json!({"gpus": 1})), &p, sm90), None);
    let p8 = pool(8, false, vec![node("a", "Active")]);
    assert_eq!(unservable(&job(json!({"multiGpu": true})), &p8, sm90), None);
    assert_eq!(unservable(&job(json!({"gpus": 8, "multiGpu": true})), &p8, sm90), None);
    let (reason, message) = unservable(&job(json!({"gpus": 9})), &p8, sm90).unwrap();
    assert_eq!(reason, "TooManyGpus");
    assert!(message.contains("needs 9 GPUs") && message.contains("have 8"), "{message}");
}

#[test]
fn an_architecture_no_node_has_fails() {
    let p = pool(1, false, vec![node("a", "Active"), node("b", "NotReady"), node("c", "Conflict")]);
    let arch = |n: &str| match n {
        "a" => Some("sm_89".to_string()),
        "b" => Some("sm_90".to_string()),
        _ => Some("sm_100".to_string()),
    };
    assert_eq!(unservable(&job(json!({"arch": "90a"})), &p, arch), None, "b has it (NotReady passes)");
    let (reason, message) = unservable(&job(json!({"arch": "100a"})), &p, arch).unwrap();
    assert_eq!(reason, "ArchitectureUnavailable", "c has it but is claimed by another pool");
    assert!(message.contains("100a") && message.contains("sm_89, sm_90"), "{message}");
    // An unknown architecture may be the one.
    let unknown = |n: &str| (n != "a").then(|| "sm_80".to_string());
    assert_eq!(unservable(&job(json!({"arch": "100"})), &p, unknown), None);
    assert_eq!(unservable(&job(json!({})), &p, arch), None, "no arch: the pool's own");
}

#[test]
fn architectures_follow_cuda_compatibility() {
    let cases = [
        ("90", "sm_90", true),
        ("90", "sm_100", true),
        ("89", "sm_80", false),
        ("80", "sm_89", true),
        ("90a", "sm_90", true),
        ("90a", "sm_100", false),
        ("90a", "sm_89", false),
        ("100a", "sm_100", true),
        ("100f", "sm_103", true),
        ("100f", "sm_120", false),
        ("103f", "sm_100", false),
        ("120", "sm_90", false),
        ("90", "gfx942", false),
        ("90", "something", true),
        ("x", "sm_90", true),
    ];
    for (arch, node, ok) in cases {
        assert_eq!(runs_on(arch, node), ok, "{arch} on {node}");
    }
}

#[test]
fn needed_gpus_defaults() {
    assert_eq!(needed_gpus(&job(json!({}))), 1);
    assert_eq!(needed_gpus(&job(json!({"multiGpu": true}))), 2);
    assert_eq!(needed_gpus(&job(json!({"multiGpu": true, "gpus": 4}))), 4);
}
