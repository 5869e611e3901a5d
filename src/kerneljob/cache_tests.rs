use super::*;
use crate::api::agentpool::PoolNodeStatus;
use crate::api::kerneljob::{Attempt, BuildRef, FingerprintStatus, Phase, SystemStatus};
use crate::contract::{Lang, Mode as CMode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

fn spec(extra: Value) -> KernelJobSpec {
    let mut v = json!({"pool": "h100", "mode": "test", "lang": "py", "main": "s.py", "sources": {"s.py": "x"}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::from_value(v).unwrap()
}

fn pool(cache: Option<Value>, nodes: &[&str]) -> AgentPool {
    let mut spec =
        json!({"queue": "q", "gpuNodeSelector": {}, "agent": {"tokenSecretRef": {"name": "t", "key": "token"}}});
    if let Some(c) = cache {
        spec["resultCache"] = c;
    }
    let mut p: AgentPool = serde_json::from_value(json!({
        "apiVersion": "benchkite.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "h100", "namespace": "pools", "uid": "pool-uid", "generation": 1},
        "spec": spec,
        "status": {"observedGeneration": 1}
    }))
    .unwrap();
    if let Some(s) = p.status.as_mut() {
        s.nodes = nodes.iter().map(|n| PoolNodeStatus { name: n.to_string(), ..Default::default() }).collect();
    }
    p
}

fn cfg() -> PoolResultCache {
    PoolResultCache::default()
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

#[test]
fn only_test_and_benchmark_jobs_of_a_pool_with_an_enabled_cache_are_cached() {
    let p = pool(Some(json!({})), &["a"]);
    assert!(config_for(&spec(json!({})), &p).is_ok());
    assert!(config_for(&spec(json!({"mode": "benchmark"})), &p).is_ok());
    for mode in ["leaderboard", "private", "profile"] {
        assert_eq!(
            config_for(&spec(json!({"mode": mode})), &p),
            Err("only test and benchmark runs are cached"),
            "{mode}"
        );
    }
    assert_eq!(config_for(&spec(json!({})), &pool(None, &["a"])), Err("the pool has no result cache"));
    assert_eq!(
        config_for(&spec(json!({})), &pool(Some(json!({"enabled": false})), &["a"])),
        Err("the pool has no result cache")
    );
    let secret = spec(json!({"sourcesFrom": [{"secret": "s"}]}));
    assert_eq!(config_for(&secret, &p), Err("a job with sources from a Secret is not cached"));
    let cm = spec(json!({"sourcesFrom": [{"configMap": "c"}]}));
    assert!(config_for(&cm, &p).is_ok());
}

#[test]
fn defaults_keep_a_week_and_a_thousand_entries() {
    let p = pool(Some(json!({})), &["a"]);
    assert_eq!(p.spec.result_cache, Some(PoolResultCache { enabled: true, max_entries: 1000, max_age_hours: 168 }));
}

#[test]
fn bypass_feeds_the_cache_but_is_never_served() {
    assert!(may_serve(&spec(json!({}))));
    assert!(may_serve(&spec(json!({"resultCache": "Use"}))));
    assert!(!may_serve(&spec(json!({"resultCache": "Bypass"}))));
}

#[test]
fn a_pool_is_cached_only_when_all_its_nodes_have_one_known_model() {
    let model = |n: &str| match n {
        "a" | "b" => Some("NVIDIA-H100-80GB-HBM3".to_string()),
        "c" => Some("NVIDIA-A100-SXM4-80GB".to_string()),
        _ => None,
    };
    assert_eq!(pool_gpu_model(&pool(None, &["a", "b"]), model).as_deref(), Some("NVIDIA-H100-80GB-HBM3"));
    assert_eq!(pool_gpu_model(&pool(None, &["a", "c"]), model), None, "two models");
    assert_eq!(pool_gpu_model(&pool(None, &["a", "x"]), model), None, "one unknown");
    assert_eq!(pool_gpu_model(&pool(None, &["x"]), model), None);
    assert_eq!(pool_gpu_model(&pool(None, &[]), model), None, "no node");
}

fn config(sources: &str, seed: Option<i64>) -> EvalConfig {
    let mut c = EvalConfig::new(Lang::Py, CMode::Test);
    c.sources = [("s.py".to_string(), sources.to_string())].into();
    c.seed = seed;
    c
}

fn key_of(ns: &str, cfg: &EvalConfig, spec: &KernelJobSpec, agent: &AgentSpec, model: &str) -> String {
    key(&KeyInputs { namespace: ns, pool: "pools/h100", config: cfg, spec, agent, gpu_model: model })
}

#[test]
fn the_key_changes_with_everything_that_decides_a_result_and_nothing_else() {
    let p = pool(None, &[]);
    let agent = p.spec.agent.clone();
    let (c, s) = (config("x", Some(1)), spec(json!({})));
    let base = key_of("ns", &c, &s, &agent, "H100");
    assert_eq!(base.len(), 64);
    assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
    // Identical inputs: identical key (also for a job of another name and priority).
    assert_eq!(
        key_of(
            "ns",
            &config("x", Some(1)),
            &spec(json!({"priority": 5, "ttlSecondsAfterFinished": 3})),
            &agent,
            "H100"
        ),
        base
    );
    let mut other_agent = agent.clone();
    other_agent.image = Some("runner:v2".into());
    let changed = [
        ("sources", key_of("ns", &config("y", Some(1)), &s, &agent, "H100")),
        ("seed", key_of("ns", &config("x", Some(2)), &s, &agent, "H100")),
        ("namespace", key_of("other", &c, &s, &agent, "H100")),
        ("GPU model", key_of("ns", &c, &s, &agent, "A100")),
        ("image", key_of("ns", &c, &spec(json!({"image": "img:2"})), &agent, "H100")),
        ("env", key_of("ns", &c, &spec(json!({"env": {"A": "1"}})), &agent, "H100")),
        ("commit", key_of("ns", &c, &spec(json!({"commit": "abc"})), &agent, "H100")),
        ("gpus", key_of("ns", &c, &spec(json!({"gpus": 2})), &agent, "H100")),
        ("agent image", key_of("ns", &c, &s, &other_agent, "H100")),
    ];
    for (what, k) in &changed {
        assert_ne!(k, &base, "{what} does not change the key");
    }
    let mut tests = config("x", Some(1));
    tests.tests = vec![crate::contract::Case::parse_line("size: 7; seed: 1").unwrap()];
    assert_ne!(key_of("ns", &tests, &s, &agent, "H100"), base, "tests");
    let mut bench = config("x", Some(1));
    bench.mode = CMode::Benchmark;
    assert_ne!(key_of("ns", &bench, &s, &agent, "H100"), base, "mode");
}

fn finished(job: &KernelJob) -> KernelJobStatus {
    let fp = FingerprintStatus {
        node: "a".into(),
        slot: "0".into(),
        certification_epoch: "1799990000".into(),
        gpu_model: "NVIDIA H100".into(),
        ..Default::default()
    };
    let result = ResultStatus {
        success: true,
        system: Some(SystemStatus { gpu: "NVIDIA H100".into(), fingerprint: Some(fp), ..Default::default() }),
        ..Default::default()
    };
    let _ = job;
    KernelJobStatus {
        phase: Phase::Succeeded,
        passed: Some(true),
        score: Some(0.0012),
        result: Some(result),
        completion_time: Some(Time(t(0))),
        message: "the evaluation ran: the kernel passed".into(),
        attempts: vec![Attempt {
            attempt: 1,
            run_id: "u-1".into(),
            build: Some(BuildRef { pipeline: "p".into(), number: 7, ..Default::default() }),
            ..Default::default()
        }],
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "EvaluationFinished".into(),
            message: String::new(),
            last_transition_time: Time(t(0)),
            observed_generation: None,
        }],
        ..Default::default()
    }
}

fn kernel_job() -> KernelJob {
    let mut j = KernelJob::new("orig", spec(json!({})));
    j.metadata.namespace = Some("ns".into());
    j.metadata.uid = Some("orig-uid".into());
    j
}

fn h100(_: &str) -> Option<String> {
    Some("H100".into())
}

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn a_finished_evaluation_leaves_an_entry_naming_its_original() {
    let j = kernel_job();
    let e = entry_of(&j, &finished(&j), KEY, "H100", h100).unwrap();
    assert_eq!(e.from.job, "ns/orig");
    assert_eq!(e.from.uid, "orig-uid");
    assert_eq!(e.from.entry, format!("bkcache-{KEY}"));
    assert_eq!(e.from.build.as_ref().map(|b| b.number), Some(7));
    assert_eq!((e.passed, e.score), (Some(true), Some(0.0012)));
    assert_eq!((e.node.as_str(), e.slot.as_str(), e.epoch.as_str()), ("a", "0", "1799990000"));
    // A kernel that failed its checks is a finished evaluation too.
    let mut failed_checks = finished(&j);
    failed_checks.passed = Some(false);
    assert!(entry_of(&j, &failed_checks, KEY, "H100", h100).is_ok());
}

#[test]
fn what_is_not_a_whole_evaluation_of_its_own_leaves_no_entry() {
    let j = kernel_job();
    type Change = Box<dyn Fn(&mut KernelJobStatus)>;
    let cases: Vec<(&str, Change)> = vec![
        ("failed", Box::new(|s| s.phase = Phase::Failed)),
        ("timed out", Box::new(|s| s.phase = Phase::TimedOut)),
        ("served from the cache", Box::new(|s| s.cached_from = Some(CachedFrom::default()))),
        ("another reason", Box::new(|s| s.conditions[0].reason = "CachedResult".into())),
        ("no result", Box::new(|s| s.result = None)),
        ("truncated", Box::new(|s| s.result.as_mut().unwrap().truncated = true)),
        ("runner failure", Box::new(|s| s.result.as_mut().unwrap().success = false)),
    ];
    for (what, change) in cases {
        let mut s = finished(&j);
        change(&mut s);
        assert!(entry_of(&j, &s, KEY, "H100", h100).is_err(), "{what}");
    }
    let mut suspect = kernel_job();
    suspect.metadata.labels =
        Some([(crate::api::certification::SUSPECT_LABEL.to_string(), "drift".to_string())].into());
    assert_eq!(entry_of(&suspect, &finished(&j), KEY, "H100", h100), Err("a result suspect of drift"));
    assert_eq!(entry_of(&j, &finished(&j), KEY, "H100", |_| Some("A100".into())), Err("measured on another GPU model"));
}

#[test]
fn the_entry_configmap_is_owned_by_the_pool_labelled_and_bounded() {
    let j = kernel_job();
    let e = entry_of(&j, &finished(&j), KEY, "H100", h100).unwrap();
    let p = pool(Some(json!({})), &["a"]);
    let cm = entry_configmap(&p, &e, Some(br#"{"success": true}"#), 1 << 20).unwrap();
    assert_eq!(cm["metadata"]["name"], format!("bkcache-{KEY}"));
    assert_eq!(cm["metadata"]["namespace"], "pools");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["kind"], "AgentPool");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "pool-uid");
    assert_eq!(cm["metadata"]["labels"][ENTRY_LABEL], "h100");
    assert_eq!(cm["metadata"]["annotations"][FINISHED_ANNOTATION], t(0).to_string());
    let data: BTreeMap<String, String> = serde_json::from_value(cm["data"].clone()).unwrap();
    let (back, raw) = parse_entry(&data).unwrap();
    assert_eq!(back, e);
    assert_eq!(raw.as_deref(), Some(&br#"{"success": true}"#[..]));
    // A result read from the build's meta-data has no result.json: the record alone.
    let bare = entry_configmap(&p, &e, None, 1 << 20).unwrap();
    let data: BTreeMap<String, String> = serde_json::from_value(bare["data"].clone()).unwrap();
    assert_eq!(parse_entry(&data).unwrap(), (e.clone(), None));
    assert!(entry_configmap(&p, &e, Some(&[b'x'; 100]), 50).is_none(), "over the size limit");
    assert!(entry_configmap(&p, &e, None, 10).is_none(), "a record over the size limit");
    assert!(entry_configmap(&p, &e, Some(&[0xff, 0xfe]), 1 << 20).is_none(), "not UTF-8");
    assert!(parse_entry(&BTreeMap::new()).is_err());
}

#[test]
fn an_entry_serves_its_key_until_it_is_too_old() {
    let j = kernel_job();
    let e = entry_of(&j, &finished(&j), KEY, "H100", h100).unwrap();
    let no_cert = |_: &str, _: &str| None;
    assert_eq!(serves(&e, KEY, t(3600), &cfg(), false, no_cert), Ok(()));
    assert_eq!(serves(&e, &KEY.replace('0', "1"), t(0), &cfg(), false, no_cert), Err("the entry is for another key"));
    assert_eq!(serves(&e, KEY, t(168 * 3600), &cfg(), false, no_cert), Ok(()));
    assert_eq!(serves(&e, KEY, t(168 * 3600 + 1), &cfg(), false, no_cert), Err("the entry is older than maxAgeHours"));
}

#[test]
fn in_a_certifying_pool_an_entry_serves_while_its_slot_keeps_its_epoch() {
    let j = kernel_job();
    let e = entry_of(&j, &finished(&j), KEY, "H100", h100).unwrap();
    let same = |n: &str, s: &str| (n == "a" && s == "0").then(|| "1799990000".to_string());
    let recertified = |_: &str, _: &str| Some("1800000500".to_string());
    let quarantined = |_: &str, _: &str| None;
    assert_eq!(serves(&e, KEY, t(1), &cfg(), true, same), Ok(()));
    assert!(serves(&e, KEY, t(1), &cfg(), true, recertified).is_err());
    assert!(serves(&e, KEY, t(1), &cfg(), true, quarantined).is_err());
    let mut unknown = e.clone();
    unknown.epoch.clear();
    assert_eq!(serves(&unknown, KEY, t(1), &cfg(), true, same), Err("the entry's slot certification is unknown"));
    assert_eq!(serves(&unknown, KEY, t(1), &cfg(), false, same), Ok(()), "no certification asked");
}

#[test]
fn eviction_removes_the_expired_then_the_oldest_beyond_the_limit() {
    let c = PoolResultCache { enabled: true, max_entries: 2, max_age_hours: 1 };
    let entries = vec![
        ("old".to_string(), Some(t(-7200))),
        ("a".to_string(), Some(t(-30))),
        ("b".to_string(), Some(t(-20))),
        ("c".to_string(), Some(t(-10))),
        ("unknown".to_string(), None),
    ];
    let mut gone = evictions(&entries, &c, t(0));
    gone.sort();
    assert_eq!(gone, vec!["a", "old", "unknown"]);
    assert!(evictions(&entries[1..3], &c, t(0)).is_empty(), "within both bounds");
}

#[test]
fn a_hit_finishes_the_job_with_the_originals_verdict_and_names_it() {
    let j = kernel_job();
    let e = entry_of(&j, &finished(&j), KEY, "H100", h100).unwrap();
    let hit = Hit { entry: e.clone(), raw: Some(b"{}".to_vec()) };
    let before = KernelJobStatus { queue_position: Some(3), ..Default::default() };
    let s = hit_status(&before, &hit, t(50));
    assert_eq!(s.phase, Phase::Succeeded);
    assert_eq!((s.passed, s.score), (Some(true), Some(0.0012)));
    assert_eq!(s.result, Some(e.result.clone()));
    assert_eq!(s.cached_from, Some(e.from.clone()));
    assert_eq!(s.completion_time, Some(Time(t(50))));
    assert_eq!(s.queue_position, None);
    assert!(s.attempts.is_empty(), "no build, no attempt");
    let m = hit_message(&hit);
    assert!(m.contains("ns/orig") && m.contains("no build was created"), "{m}");
}
