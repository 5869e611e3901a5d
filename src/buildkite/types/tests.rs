use super::*;
use serde_json::json;

#[test]
fn terminal_states() {
    for s in ["passed", "failed", "canceled", "skipped", "not_run"] {
        assert!(BuildState::from(s).is_terminal(), "{s}");
    }
    for s in ["blocked", "scheduled", "running", "failing", "canceling", "creating", "waiting", "weird", ""] {
        assert!(!BuildState::from(s).is_terminal(), "{s}");
    }
    assert_eq!(BuildState::from("something_new"), BuildState::Other("something_new".into()));
    assert_eq!(BuildState::from("not_run").as_str(), "not_run");
    assert!(BuildState::Failing.is_cancelable());
    assert!(!BuildState::Passed.is_cancelable());
    assert!(JobState::from("timed_out").is_terminal());
    assert!(!JobState::from("running").is_terminal());
}

#[test]
fn build_decodes_tolerantly() {
    let v = json!({
        "id": "0190-uuid", "number": "42", "state": "brand_new_state",
        "url": "https://api.buildkite.com/v2/organizations/o/pipelines/kern/builds/42",
        "env": {"A": "1", "B": 2, "C": null, "D": true},
        "meta_data": null,
        "jobs": [
            {"id": "j1", "type": "script", "state": "passed", "exit_status": 0,
             "agent": {"id": "a1", "name": "gpu-0"}, "started_at": "2024-05-01T10:00:00.000Z",
             "finished_at": "garbage", "unknown": {"deep": [1,2]}},
            {"id": "w1", "type": "waiter"},
            17
        ],
        "created_at": "2024-05-01T09:59:59Z",
        "finished_at": null,
        "extra_field": "ignored"
    });
    let b: Build = serde_json::from_value(v).expect("decodes");
    assert_eq!(b.number, 42);
    assert_eq!(b.state, BuildState::Other("brand_new_state".into()));
    assert_eq!(b.env.get("B").map(String::as_str), Some("2"));
    assert!(!b.env.contains_key("C"));
    assert!(b.meta_data.is_empty());
    assert_eq!(b.jobs.len(), 2);
    assert_eq!(b.jobs[0].exit_status, Some(0));
    assert_eq!(b.jobs[0].state, Some(JobState::Passed));
    assert!(b.jobs[0].started_at.is_some());
    assert!(b.jobs[0].finished_at.is_none());
    assert_eq!(b.jobs[1].state, None);
    assert_eq!(b.pipeline_slug(), Some("kern"));
    assert!(b.created_at.is_some());
    assert!(b.finished_at.is_none());

    let minimal: Build = serde_json::from_value(json!({})).expect("empty object decodes");
    assert_eq!(minimal.number, 0);
    assert!(minimal.jobs.is_empty());
}

#[test]
fn job_exit_status_variants() {
    let j: Job =
        serde_json::from_value(json!({"id": "x", "exit_status": "-1", "signal_reason": "agent_stop"})).unwrap();
    assert_eq!(j.exit_status, Some(-1));
    assert_eq!(j.signal_reason.as_deref(), Some("agent_stop"));
    let j: Job = serde_json::from_value(json!({"id": "x", "exit_status": null})).unwrap();
    assert_eq!(j.exit_status, None);
}

#[test]
fn agent_tags() {
    let a: Agent = serde_json::from_value(json!({
        "id": "a", "name": "n", "connection_state": "connected",
        "meta_data": ["queue=nvidia-h100", "gpu=h100", "novalue"],
        "job": {"id": "j"}
    }))
    .unwrap();
    assert_eq!(a.queue().as_deref(), Some("nvidia-h100"));
    assert_eq!(a.tags().len(), 2);
    assert!(a.is_busy() && a.is_connected());
}

#[test]
fn metrics_decode() {
    let v = json!({
        "agents": {"idle": 1, "busy": 2, "total": 3, "queues": {"q": {"idle": 1, "busy": 2, "total": 3}}},
        "jobs": {"scheduled": 4, "running": 2, "waiting": 1, "total": 7, "queues": {"q": {"scheduled": 4, "running": 2, "waiting": 1, "total": 7}, "r": {"scheduled": 1}}},
        "organization": {"slug": "acme"}
    });
    let all = AllMetrics::from_json(&v);
    assert_eq!(all.total.scheduled, 4);
    assert_eq!(all.total.agents_total, 3);
    assert_eq!(all.queues["q"].busy, 2);
    assert_eq!(all.queues["r"].jobs_total, 1);
    assert_eq!(all.organization.as_deref(), Some("acme"));
    let one = QueueMetrics::from_json(&json!({"agents": {"idle": 2}, "jobs": {"running": 1}}));
    assert_eq!(one, QueueMetrics { running: 1, jobs_total: 1, idle: 2, agents_total: 2, ..Default::default() });
}

#[test]
fn new_build_body() {
    let nb = NewBuild {
        commit: "HEAD".into(),
        branch: "main".into(),
        meta_data: [("benchkite.job".to_string(), "ns/x".to_string())].into(),
        ..Default::default()
    };
    let v = serde_json::to_value(&nb).unwrap();
    assert_eq!(v, json!({"commit": "HEAD", "branch": "main", "meta_data": {"benchkite.job": "ns/x"}}));
}
