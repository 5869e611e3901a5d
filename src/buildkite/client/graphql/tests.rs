use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::ops::{build_graphql_id, create_input, graphql_can_create};
use super::*;
use crate::buildkite::types::{Author, BuildState, JobState, NewBuild};

#[test]
fn costs_follow_the_documented_rules() {
    // build 1 + pipeline 1 + metaData (connection 1 + edges 1 + 50 nodes).
    assert_eq!(full_read_cost(false), 54);
    // + jobs (connection 1 + edges 1 + 10 × (job 1 + agent 1)).
    assert_eq!(full_read_cost(true), 54 + 22);
    assert_eq!(state_read_cost(0), 0);
    assert_eq!(state_read_cost(100), 100);
    assert_eq!(CREATE_COST, 2);
    assert_eq!(CANCEL_COST, 2);
    assert_eq!(PIPELINE_ID_COST, 1);
}

#[test]
fn the_429_message_gives_the_wait() {
    let m = "Your organization has exceeded the limit of 20000 complexity points. Please try again in 37 seconds.";
    assert_eq!(retry_in(m), Some(Duration::from_secs(37)));
    assert_eq!(retry_in("Please try again in a while"), None);
    assert_eq!(retry_in("no hint"), None);
}

#[test]
fn errors_and_stats_are_read_from_the_answer() {
    let v = json!({"errors": [{"message": "a"}, {"message": "b"}], "data": null});
    assert_eq!(error_messages(&v).as_deref(), Some("a; b"));
    assert_eq!(error_messages(&json!({"errors": []})), None);
    assert_eq!(error_messages(&json!({"data": {}})), None);
    assert_eq!(error_messages(&json!({"errors": [{}]})).as_deref(), Some("GraphQL error"));
    assert_eq!(actual_complexity(&json!({"stats": {"actualComplexity": 7}})), Some(7));
    assert_eq!(actual_complexity(&json!({"extensions": {"stats": {"actualComplexity": 9}}})), Some(9));
    assert_eq!(actual_complexity(&json!({"data": {}})), None);
}

#[test]
fn a_create_input_carries_everything_rest_would() {
    let build = NewBuild {
        commit: "HEAD".into(),
        branch: "benchkite/x/run".into(),
        message: Some("m".into()),
        author: Some(Author { name: "n".into(), email: "e@x".into() }),
        env: BTreeMap::from([("A".into(), "1=2".into()), ("B".into(), String::new())]),
        meta_data: BTreeMap::from([("k".into(), "v".into())]),
        ..Default::default()
    };
    let input = create_input("UGlwZWxpbmUtLS14", &build);
    assert_eq!(
        input,
        json!({
            "pipelineID": "UGlwZWxpbmUtLS14", "commit": "HEAD", "branch": "benchkite/x/run",
            "env": ["A=1=2", "B="], "metaData": [{"key": "k", "value": "v"}],
            "message": "m", "author": {"name": "n", "email": "e@x"}
        })
    );
    // And back: env strings split at the first `=`.
    assert_eq!(map::env_map(&input["env"]), build.env);
    assert!(graphql_can_create(&build, None));
    // Ignoring the branch filter: only when the pipeline's filter (read over REST) lets the
    // branch build anyway.
    let ignore = NewBuild { ignore_pipeline_branch_filters: Some(true), ..build.clone() };
    let open = KnownPipeline { id: "p".into(), branch_filter: Some(None) };
    let ours = KnownPipeline { id: "p".into(), branch_filter: Some(Some("main benchkite/*".into())) };
    let main_only = KnownPipeline { id: "p".into(), branch_filter: Some(Some("main".into())) };
    let unread = KnownPipeline { id: "p".into(), branch_filter: None };
    assert!(!graphql_can_create(&ignore, None));
    assert!(graphql_can_create(&ignore, Some(&open)));
    assert!(graphql_can_create(&ignore, Some(&ours)));
    assert!(!graphql_can_create(&ignore, Some(&main_only)));
    assert!(!graphql_can_create(&ignore, Some(&unread)));
    assert!(!graphql_can_create(&NewBuild { clean_checkout: Some(true), ..build }, Some(&open)));
}

#[test]
fn a_build_graphql_id_has_buildkites_shape() {
    let uuid = "0193c1a2-0000-4000-8000-000000000001";
    let id = build_graphql_id(uuid, None).unwrap_or_default();
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &id).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&decoded), format!("Build---{uuid}"));
    assert_eq!(build_graphql_id(uuid, Some("known")).as_deref(), Some("known"));
    assert_eq!(build_graphql_id(uuid, Some("")), Some(id));
    assert_eq!(build_graphql_id("", None), None);
}

#[test]
fn states_map_to_rests() {
    for (g, r) in [
        ("PASSED", BuildState::Passed),
        ("NOT_RUN", BuildState::NotRun),
        ("WAITING_FAILED", BuildState::WaitingFailed),
        ("CANCELING", BuildState::Canceling),
        ("SCHEDULED", BuildState::Scheduled),
    ] {
        assert_eq!(map::build_state(g), r, "{g}");
    }
    assert_eq!(map::job_state("FINISHED", Some(true)), JobState::Passed);
    assert_eq!(map::job_state("FINISHED", Some(false)), JobState::Failed);
    // Unknown: not passed.
    assert_eq!(map::job_state("FINISHED", None), JobState::Failed);
    assert_eq!(map::job_state("TIMED_OUT", None), JobState::TimedOut);
    assert_eq!(map::job_state("RUNNING", None), JobState::Running);
}

#[test]
fn a_full_read_maps_to_the_rest_build() {
    let v = json!({
        "id": "QnVpbGQtLS14", "uuid": "u-1", "number": 42, "url": "https://buildkite.com/o/p/builds/42",
        "state": "FAILED", "branch": "b", "commit": "c", "message": "m", "source": "API",
        "env": ["KERNELBOT_RUN_ID=r1"], "createdAt": "2026-12-03T06:00:00Z", "startedAt": "2026-12-03T06:00:01Z",
        "finishedAt": "2026-12-03T06:00:31Z", "scheduledAt": null,
        "pipeline": {"slug": "p"},
        "metaData": {"edges": [{"node": {"key": "benchkite.result", "value": "{}"}}, {"node": null}]},
        "jobs": {"edges": [
            {"node": {"uuid": "j1", "label": "eval", "key": "run", "state": "FINISHED", "passed": false,
                      "softFailed": false, "exitStatus": "3", "retried": true, "url": "w",
                      "agent": {"uuid": "a1", "name": "gpu-0", "hostname": "h"}}},
            {"node": {"uuid": "w1"}},
            {"node": {}}
        ]}
    });
    let b = map::build(&v, Some("other")).unwrap_or_default();
    assert_eq!(b.id, "u-1");
    assert_eq!(b.graphql_id.as_deref(), Some("QnVpbGQtLS14"));
    assert_eq!(b.number, 42);
    assert_eq!(b.state, BuildState::Failed);
    assert_eq!(b.pipeline_slug(), Some("p"), "the answer's pipeline wins");
    assert_eq!(b.source.as_deref(), Some("api"));
    assert_eq!(b.env.get("KERNELBOT_RUN_ID").map(String::as_str), Some("r1"));
    assert_eq!(b.meta_data.len(), 1);
    assert!(b.started_at.is_some() && b.finished_at.is_some() && b.scheduled_at.is_none());
    assert_eq!(b.jobs.len(), 2, "a union member without fields is no job");
    let j = &b.jobs[0];
    assert_eq!((j.id.as_str(), j.kind.as_deref(), j.state.clone()), ("j1", Some("script"), Some(JobState::Failed)));
    assert_eq!((j.exit_status, j.retried, j.step_key.as_deref()), (Some(3), true, Some("run")));
    assert_eq!(j.agent.as_ref().map(|a| a.name.as_deref()), Some(Some("gpu-0")));
    assert_eq!(b.jobs[1].kind.as_deref(), Some("waiter"));
    // A state read names no pipeline: the caller's.
    let s = map::build(&json!({"uuid": "u-2", "number": 1, "state": "RUNNING"}), Some("p2")).unwrap_or_default();
    assert_eq!((s.pipeline_slug(), &s.state), (Some("p2"), &BuildState::Running));
    assert!(map::build(&json!(null), None).is_none());
    assert!(map::build(&json!({"number": 3}), None).is_none());
}
