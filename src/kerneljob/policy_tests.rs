use super::*;
use crate::api::agentpool::{SelectorOperator, SelectorRequirement};
use serde_json::json;

fn spec(extra: serde_json::Value) -> KernelJobSpec {
    let mut v = json!({"pool": "p", "mode": "test", "lang": "py", "main": "a.py", "sources": {"a.py": "x"}});
    if let (Some(obj), Some(add)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in add {
            obj.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("a valid spec")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn all(allow: Allow) -> Tenancy {
    Tenancy { raw_queue: allow, pipeline: allow, branch: allow, secret_sources: allow, env_allow: vec![] }
}

/// The setting of one override in a [`Tenancy`].
type Setting = fn(&mut Tenancy) -> &mut Allow;

/// Each override with the spec that uses it.
fn cases() -> Vec<(Override, KernelJobSpec, Setting)> {
    vec![
        (RAW_QUEUE, spec(json!({"queue": "q", "pool": null})), |t| &mut t.raw_queue),
        (PIPELINE, spec(json!({"pipeline": "mine"})), |t| &mut t.pipeline),
        (BRANCH, spec(json!({"branch": "main"})), |t| &mut t.branch),
        (BRANCH, spec(json!({"commit": "abc"})), |t| &mut t.branch),
        (SECRET_SOURCES, spec(json!({"sourcesFrom": [{"secret": "s"}]})), |t| &mut t.secret_sources),
    ]
}

#[test]
fn a_job_without_overrides_passes_under_the_strictest_settings() {
    let s = spec(json!({"sourcesFrom": [{"configMap": "cm"}]}));
    assert_eq!(check_overrides(&s, "b", None, &Tenancy::default()), Ok(()));
    assert_eq!(check_secret_sources(&s, "b", None, &Tenancy::default()), Ok(()));
}

#[test]
fn every_override_is_refused_by_default_and_the_message_names_field_flag_and_label() {
    for (o, s, _) in cases() {
        let r = check_overrides(&s, "b", Some(&labels(&[(o.label, "true")])), &Tenancy::default())
            .expect_err("refused by default, whatever the namespace says");
        assert_eq!(r.reason, OVERRIDE_NOT_ALLOWED);
        for needle in [o.fields, o.flag, o.label, "none"] {
            assert!(r.message.contains(needle), "{needle} not in {}", r.message);
        }
    }
}

#[test]
fn labelled_allows_exactly_where_the_namespace_carries_the_label_true() {
    for (o, s, field) in cases() {
        let mut t = Tenancy::default();
        *field(&mut t) = Allow::Labelled;
        assert_eq!(check_overrides(&s, "b", Some(&labels(&[(o.label, "true")])), &t), Ok(()), "{}", o.fields);
        for bad in [labels(&[(o.label, "yes")]), labels(&[]), labels(&[("other", "true")])] {
            let r = check_overrides(&s, "b", Some(&bad), &t).expect_err("no label, no override");
            assert!(r.message.contains(&format!("{}=true", o.label)) && r.message.contains("namespace b"), "{r:?}");
        }
        // Unknown labels: refused, and said so.
        let r = check_overrides(&s, "b", None, &t).expect_err("unknown namespace");
        assert!(r.message.contains("not known yet"), "{r:?}");
        // Another override's label does not count.
        for (other, _, _) in cases() {
            if other.label != o.label {
                assert!(check_overrides(&s, "b", Some(&labels(&[(other.label, "true")])), &t).is_err());
            }
        }
    }
}

#[test]
fn all_allows_everywhere_and_each_setting_governs_only_its_field() {
    for (o, s, field) in cases() {
        assert_eq!(check_overrides(&s, "b", None, &all(Allow::All)), Ok(()));
        let mut t = all(Allow::All);
        *field(&mut t) = Allow::None;
        assert!(check_overrides(&s, "b", None, &t).is_err(), "{}", o.fields);
        let mut t = all(Allow::None);
        *field(&mut t) = Allow::All;
        assert_eq!(check_overrides(&s, "b", None, &t), Ok(()), "{}", o.fields);
    }
}

#[test]
fn several_refused_overrides_are_named_together() {
    let s = spec(json!({"queue": "q", "pool": null, "pipeline": "p", "branch": "b", "sourcesFrom": [{"secret": "s"}]}));
    let r = check_overrides(&s, "b", None, &Tenancy::default()).expect_err("all refused");
    for o in [RAW_QUEUE, PIPELINE, BRANCH, SECRET_SOURCES] {
        assert!(r.message.contains(o.fields), "{} missing: {}", o.fields, r.message);
    }
}

#[test]
fn the_submitter_gate_checks_secret_sources_only() {
    let s = spec(json!({"pipeline": "p", "sourcesFrom": [{"configMap": "c"}, {"secret": "s"}]}));
    let r = check_secret_sources(&s, "b", None, &Tenancy::default()).expect_err("secret refused");
    assert!(r.message.contains("sourcesFrom[].secret"), "{r:?}");
    let t = Tenancy { secret_sources: Allow::All, ..Default::default() };
    assert_eq!(check_secret_sources(&s, "b", None, &t), Ok(()));
}

#[test]
fn env_is_an_allow_list_on_top_of_the_deny_list() {
    let s = spec(json!({"env": {"MY_FLAG": "1", "EXP_A": "2"}}));
    let r = check_env(&s, &Tenancy::default()).expect_err("empty allow-list");
    assert_eq!(r.reason, ENV_NOT_ALLOWED);
    assert!(r.message.contains("EXP_A, MY_FLAG") && r.message.contains("--kerneljob-env-allow (empty)"), "{r:?}");
    let t = Tenancy { env_allow: vec!["MY_FLAG".into()], ..Default::default() };
    let r = check_env(&s, &t).expect_err("EXP_A not listed");
    assert!(r.message.contains("sets EXP_A,") && !r.message.contains("MY_FLAG,"), "{r:?}");
    let t = Tenancy { env_allow: vec!["MY_FLAG".into(), "EXP_*".into()], ..Default::default() };
    assert_eq!(check_env(&s, &t), Ok(()));
    let t = Tenancy { env_allow: vec!["*".into()], ..Default::default() };
    assert_eq!(check_env(&s, &t), Ok(()));
    assert_eq!(check_env(&spec(json!({})), &Tenancy::default()), Ok(()));
}

#[test]
fn the_allow_list_never_reopens_a_denied_name() {
    let t = Tenancy { env_allow: vec!["*".into(), "PATH".into(), "LD_*".into()], ..Default::default() };
    for name in ["PATH", "LD_PRELOAD", "BASH_ENV", "CUDA_VISIBLE_DEVICES", "http_proxy", "bad-name"] {
        let r = check_env(&spec(json!({"env": {name: "x"}})), &t).expect_err(name);
        assert!(r.message.contains("may never set") && r.message.contains(name), "{r:?}");
    }
}

#[test]
fn env_patterns_parse() {
    assert_eq!(parse_env_pattern(" MY_* "), Ok("MY_*".into()));
    assert_eq!(parse_env_pattern("*"), Ok("*".into()));
    assert_eq!(parse_env_pattern("X"), Ok("X".into()));
    assert!(parse_env_pattern("A-B").is_err() && parse_env_pattern("*X").is_err() && parse_env_pattern("").is_ok());
    assert!(env_listed(&["AB*".into()], "ABC") && !env_listed(&["AB*".into()], "XAB"));
    assert!(!env_listed(&["AB".into()], "ABC"));
}

fn sel(pairs: &[(&str, &str)], exprs: Vec<SelectorRequirement>) -> GpuNodeSelector {
    GpuNodeSelector { match_labels: labels(pairs), match_expressions: exprs }
}

#[test]
fn a_pool_admits_its_own_namespace_always_and_others_only_by_its_selector() {
    let team = labels(&[("team", "kernels"), ("kubernetes.io/metadata.name", "b")]);
    // Own namespace: whatever the selector says.
    assert_eq!(check_pool("a", "a", "x", None, None), Ok(()));
    assert_eq!(check_pool("a", "a", "x", Some(&sel(&[("team", "other")], vec![])), None), Ok(()));
    // No selector: own namespace only.
    let r = check_pool("b", "a", "x", None, Some(&team)).expect_err("no selector");
    assert_eq!(r.reason, POOL_NOT_ALLOWED);
    assert!(r.message.contains("AgentPool a/x") && r.message.contains("own namespace only"), "{r:?}");
    // {}: every namespace, even one whose labels are not known.
    assert_eq!(check_pool("b", "a", "x", Some(&sel(&[], vec![])), None), Ok(()));
    // matchLabels.
    assert_eq!(check_pool("b", "a", "x", Some(&sel(&[("team", "kernels")], vec![])), Some(&team)), Ok(()));
    let r = check_pool("b", "a", "x", Some(&sel(&[("team", "other")], vec![])), Some(&team)).expect_err("no match");
    assert_eq!(
        r.message,
        "AgentPool a/x admits KernelJobs from namespaces matching team=other (spec.buildkite.kernelJobs.namespaceSelector); namespace b does not match"
    );
    let r = check_pool("b", "a", "x", Some(&sel(&[("team", "kernels")], vec![])), None).expect_err("unknown");
    assert!(r.message.contains("not known yet"), "{r:?}");
    // matchExpressions, rendered as kubectl writes them.
    let by_name = sel(
        &[],
        vec![SelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: SelectorOperator::In,
            values: vec!["b".into(), "c".into()],
        }],
    );
    assert_eq!(check_pool("b", "a", "x", Some(&by_name), Some(&team)), Ok(()));
    let r = check_pool("d", "a", "x", Some(&by_name), Some(&labels(&[]))).expect_err("d not listed");
    assert!(r.message.contains("matching kubernetes.io/metadata.name in (b,c)"), "{r:?}");
}

#[test]
fn selectors_render_like_kubectl() {
    let s = sel(
        &[("a", "1")],
        vec![
            SelectorRequirement { key: "b".into(), operator: SelectorOperator::NotIn, values: vec!["2".into()] },
            SelectorRequirement { key: "c".into(), operator: SelectorOperator::Exists, values: vec![] },
            SelectorRequirement { key: "d".into(), operator: SelectorOperator::DoesNotExist, values: vec![] },
        ],
    );
    assert_eq!(selector_text(&s), "a=1,b notin (2),c,!d");
    assert_eq!(selector_text(&GpuNodeSelector::default()), "{}");
}
