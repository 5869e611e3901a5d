use super::*;
use serde_json::json;

fn parse(config: &str) -> Yaml {
    serde_yaml::from_str(config).expect("rendered configuration parses")
}

fn step(config: &str) -> Yaml {
    let doc = parse(config);
    let steps = doc.get("steps").and_then(Yaml::as_sequence).expect("steps").clone();
    assert_eq!(steps.len(), 1, "exactly one step");
    steps[0].clone()
}

#[test]
fn managed_slug_is_a_bounded_valid_slug() {
    let long = "q".repeat(300);
    for (instance, queue) in [
        ("benchkite", "nvidia-h100"),
        ("prod", "GPU.H100_x"),
        ("", ""),
        ("benchkite", "--"),
        ("ünïcödé", "日本"),
        ("benchkite", long.as_str()),
        (long.as_str(), "q"),
        ("a", "$x{y}"),
    ] {
        let s = managed_slug(instance, queue);
        assert!(is_valid_slug(&s), "{s:?} from ({instance:?}, {queue:?})");
        assert!(s.len() <= MAX_MANAGED_SLUG, "{s:?}");
        assert!(s.starts_with("benchkite"), "{s:?}");
        assert!(!s.contains("--"), "{s:?}");
        assert_eq!(s, managed_slug(instance, queue), "deterministic");
    }
    assert!(managed_slug("benchkite", "nvidia-h100").starts_with("benchkite-nvidia-h100-"));
    assert!(managed_slug("prod", "h100").starts_with("benchkite-prod-h100-"));
    assert!(managed_slug("benchkite-eu", "h100").starts_with("benchkite-eu-h100-"));
}

#[test]
fn managed_slugs_never_collide() {
    let long_a = format!("{}a", "x".repeat(200));
    let long_b = format!("{}b", "x".repeat(200));
    let pairs = [
        ("benchkite", "gpu"),
        ("benchkite", "GPU"),
        ("benchkite", "g.pu"),
        ("benchkite", "g_pu"),
        ("benchkite", "g-pu"),
        ("benchkite", long_a.as_str()),
        ("benchkite", long_b.as_str()),
        ("prod", "eu-h100"),
        ("prod-eu", "h100"),
        ("", "gpu"),
    ];
    let mut seen = std::collections::HashSet::new();
    for (i, q) in pairs {
        assert!(seen.insert(managed_slug(i, q)), "collision for ({i:?}, {q:?})");
    }
}

#[test]
fn slug_validation_follows_buildkite() {
    for ok in ["a", "A-1", "kernelbot", "x".repeat(100).as_str()] {
        assert!(is_valid_slug(ok), "{ok}");
    }
    for bad in ["", "-a", "a_b", "a/b", "a b", "a.b", "x".repeat(101).as_str()] {
        assert!(!is_valid_slug(bad), "{bad}");
    }
}

#[test]
fn interpolation_detection_and_escaping() {
    for yes in ["${Q}", "$Q", "a-${BUILDKITE_BRANCH}", "x$_y", "$$$Q"] {
        assert!(has_interpolation(yes), "{yes}");
    }
    for no in ["q", "$$", "a$$b", "$$$$", "a$", "$1", "$-", "$${Q}"] {
        assert!(!has_interpolation(no), "{no}");
    }
    for raw in ["plain", "a$b", "${KERNELBOT_QUEUE}", "$$", "$"] {
        let escaped = escape_interpolation(raw);
        assert!(!has_interpolation(&escaped), "{escaped}");
        assert_eq!(unescape_interpolation(&escaped), raw);
    }
}

#[test]
fn rendered_configuration_has_exactly_the_managed_properties() {
    let yaml =
        render_configuration(&ManagedStep { queue: "nvidia-h100".into(), timeout_in_minutes: 45, retry_limit: 3 });
    assert!(yaml.starts_with("# Managed by benchkite"), "{yaml}");
    let doc = parse(&yaml);
    let top_keys: Vec<&str> = doc.as_mapping().expect("mapping").keys().filter_map(Yaml::as_str).collect();
    assert_eq!(top_keys, ["steps"], "no pipeline-level env, agents or checkout");
    let s = step(&yaml);
    let keys: Vec<&str> = s.as_mapping().expect("step").keys().filter_map(Yaml::as_str).collect();
    assert_eq!(
        keys,
        ["label", "key", "command", "agents", "checkout", "env", "artifact_paths", "timeout_in_minutes", "retry"]
    );
    assert_eq!(s["command"], Yaml::from("benchkite run"));
    assert_eq!(s["key"], Yaml::from(MANAGED_STEP_KEY));
    let agents = s["agents"].as_mapping().expect("agents");
    assert_eq!(agents.len(), 1);
    assert_eq!(s["agents"]["queue"], Yaml::from("nvidia-h100"));
    assert_eq!(s["checkout"]["skip"], Yaml::Bool(true));
    assert_eq!(s["env"]["BUILDKITE_SKIP_CHECKOUT"], Yaml::from("true"), "a string, as env values are");
    assert_eq!(s["env"].as_mapping().map(|m| m.len()), Some(1));
    assert_eq!(s["artifact_paths"], Yaml::from("result.json"));
    assert_eq!(s["timeout_in_minutes"], Yaml::from(45));
    assert_eq!(s["retry"]["manual"]["allowed"], Yaml::Bool(false));
    let rules = s["retry"]["automatic"].as_sequence().expect("rules");
    let rules: Vec<serde_json::Value> = rules.iter().map(|r| serde_json::to_value(r).expect("rule as JSON")).collect();
    assert_eq!(
        rules,
        vec![
            json!({"exit_status": -1, "signal": "none", "signal_reason": "none", "limit": 3}),
            json!({"exit_status": -1, "signal_reason": "agent_stop", "limit": 3}),
            json!({"exit_status": "*", "signal_reason": "agent_stop", "limit": 3}),
            json!({"exit_status": 255, "signal": "none", "signal_reason": "none", "limit": 3}),
        ]
    );
    for r in &rules {
        assert_ne!(r["signal_reason"], json!("cancel"), "a killed process is never retried");
        assert_ne!(r["signal_reason"], json!("process_run_error"));
        assert_ne!(r["signal_reason"], json!("*"));
    }
    // The pipeline's own check accepts what benchkite renders.
    let p = Pipeline { slug: "s".into(), configuration: Some(yaml), ..Default::default() };
    let expect = Expectations { queue: "nvidia-h100", cluster_id: None, branch: "benchkite/x/1" };
    assert_eq!(check_pipeline(&p, &expect), vec![]);
}

#[test]
fn rendered_queue_is_literal_whatever_the_queue() {
    for queue in ["${KERNELBOT_QUEUE}", "a$b", "$", "q: {x}", "yes", "123", "'\"", "line\nbreak", "#c"] {
        let yaml = render_configuration(&ManagedStep::new(queue));
        assert!(!has_interpolation(&yaml), "no interpolation anywhere in {yaml}");
        let s = step(&yaml);
        let rendered = s["agents"]["queue"].as_str().expect("queue is a string");
        assert_eq!(unescape_interpolation(rendered), queue);
        assert!(!has_interpolation(rendered));
    }
}

#[test]
fn rendered_limits_are_clamped() {
    let s = step(&render_configuration(&ManagedStep { queue: "q".into(), timeout_in_minutes: 0, retry_limit: 99 }));
    assert_eq!(s["timeout_in_minutes"], Yaml::from(1));
    assert_eq!(s["retry"]["automatic"][0]["limit"], Yaml::from(MAX_RETRY_LIMIT));
    let s =
        step(&render_configuration(&ManagedStep { queue: "q".into(), timeout_in_minutes: u32::MAX, retry_limit: 0 }));
    assert_eq!(s["timeout_in_minutes"], Yaml::from(MAX_STEP_TIMEOUT_MINUTES));
    assert_eq!(s["retry"]["automatic"][0]["limit"], Yaml::from(0));
    assert_eq!(step(&render_configuration(&ManagedStep::new("q")))["timeout_in_minutes"], Yaml::from(60));
}

#[test]
fn configurations_compare_as_yaml() {
    let mine = render_configuration(&ManagedStep::new("q"));
    // What Buildkite hands back may quote keys and drop comments.
    let theirs =
        mine.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n").replace("steps:", "\"steps\":");
    assert!(same_configuration(&mine, Some(&theirs)));
    assert!(!same_configuration(&mine, None));
    assert!(!same_configuration(&mine, Some("steps: [")));
    assert!(!same_configuration(&mine, Some(&render_configuration(&ManagedStep::new("other")))));
}

fn desired() -> NewPipeline {
    NewPipeline {
        name: "n".into(),
        slug: "s".into(),
        repository: "https://example.com/r.git".into(),
        configuration: render_configuration(&ManagedStep::new("q")),
        cluster_id: Some("c1".into()),
        default_branch: Some("benchkite".into()),
        description: Some("d".into()),
        skip_queued_branch_builds: false,
        cancel_running_branch_builds: false,
        teams: BTreeMap::new(),
    }
}

fn as_pipeline(n: &NewPipeline) -> Pipeline {
    Pipeline {
        slug: n.slug.clone(),
        name: n.name.clone(),
        repository: Some(n.repository.clone()),
        configuration: Some(n.configuration.clone()),
        cluster_id: n.cluster_id.clone(),
        default_branch: n.default_branch.clone(),
        description: n.description.clone(),
        ..Default::default()
    }
}

#[test]
fn diff_names_exactly_what_differs() {
    let want = desired();
    let same = as_pipeline(&want);
    assert!(PipelinePatch::diff(&want, &same).is_empty());

    let mut drifted = same.clone();
    drifted.cancel_running_branch_builds = true;
    drifted.cluster_id = Some("c2".into());
    drifted.configuration = Some("steps:\n  - command: other\n".into());
    drifted.name = "renamed by a human".into();
    let patch = PipelinePatch::diff(&want, &drifted);
    assert_eq!(patch.fields(), ["configuration", "cluster_id", "cancel_running_branch_builds"]);
    assert_eq!(patch.cancel_running_branch_builds, Some(false));
    let body = serde_json::to_value(&patch).expect("patch body");
    assert!(body.get("name").is_none() && body.get("slug").is_none(), "never renames: {body}");
    assert!(body.get("repository").is_none());
}

#[test]
fn new_pipeline_body_has_the_documented_fields() {
    let body = serde_json::to_value(desired()).expect("body");
    for k in [
        "name",
        "slug",
        "repository",
        "configuration",
        "cluster_id",
        "default_branch",
        "description",
        "skip_queued_branch_builds",
        "cancel_running_branch_builds",
    ] {
        assert!(body.get(k).is_some(), "{k} in {body}");
    }
    assert_eq!(body["skip_queued_branch_builds"], json!(false));
    assert_eq!(body["cancel_running_branch_builds"], json!(false));
    assert!(body.get("teams").is_none(), "no teams unless configured");
}

#[test]
fn pipeline_decodes_the_documented_answer() {
    let p: Pipeline = serde_json::from_value(json!({
        "id": "849411f9", "slug": "my-pipeline", "name": "My Pipeline",
        "web_url": "https://buildkite.com/acme-inc/my-pipeline",
        "repository": "git@github.com:acme-inc/my-pipeline.git", "cluster_id": null,
        "branch_configuration": null, "default_branch": "main",
        "skip_queued_branch_builds": true, "skip_queued_branch_builds_filter": null,
        "cancel_running_branch_builds": "false",
        "created_at": "2013-09-03 13:24:38 UTC", "archived_at": null,
        "configuration": "steps:\n - command: x", "steps": [{"type": "script"}], "env": {}
    }))
    .expect("decodes");
    assert_eq!(p.slug, "my-pipeline");
    assert!(p.skip_queued_branch_builds);
    assert!(!p.cancel_running_branch_builds);
    assert_eq!(p.cluster_id, None);
    assert_eq!(p.archived_at, None);
    assert_eq!(p.configuration.as_deref(), Some("steps:\n - command: x"));
}

#[test]
fn branch_filters() {
    let b = "benchkite/prod/0b1c-2";
    assert!(branch_filter_matches("", b));
    assert!(branch_filter_matches("benchkite/*", b));
    assert!(branch_filter_matches("main benchkite/*", b));
    assert!(branch_filter_matches("!main", b));
    assert!(branch_filter_matches("*", b));
    assert!(branch_filter_matches("benchkite/prod/*", b));
    assert!(!branch_filter_matches("main", b));
    assert!(!branch_filter_matches("!benchkite/*", b));
    assert!(!branch_filter_matches("* !benchkite/*", b));
    assert!(!branch_filter_matches("benchkite/staging/*", b));
    assert!(branch_filter_matches("benchkite/???d/*", "benchkite/prod/x"));
}

const GOOD: &str = r#"
steps:
  - label: eval
    command: benchkite run
    agents: {queue: gpu}
    checkout: {skip: true}
    artifact_paths: result.json
"#;

fn user(config: &str) -> Pipeline {
    Pipeline {
        slug: "theirs".into(),
        configuration: Some(config.into()),
        cluster_id: Some("c1".into()),
        ..Default::default()
    }
}

const EXPECT: Expectations<'static> =
    Expectations { queue: "gpu", cluster_id: Some("c1"), branch: "benchkite/bk/run-1" };

fn reasons(p: &Pipeline) -> Vec<&'static str> {
    check_pipeline(p, &EXPECT).iter().map(|x| x.reason).collect()
}

#[test]
fn a_good_user_pipeline_has_no_problem() {
    assert_eq!(reasons(&user(GOOD)), Vec::<&str>::new());
    // Other spellings Buildkite accepts.
    let other = r#"
agents: ["queue=gpu"]
env: {BUILDKITE_SKIP_CHECKOUT: true}
steps:
  - wait
  - group: g
    steps:
      - commands: ["benchkite run"]
        artifact_paths: ["logs/*", "./result.json"]
        branches: "benchkite/*"
  - block: ok
  - trigger: other
"#;
    assert_eq!(reasons(&user(other)), Vec::<&str>::new());
    let bare_list = "- command: benchkite run\n  agents: [\"queue=gpu\"]\n  env: {BUILDKITE_SKIP_CHECKOUT: \"true\"}\n  artifact_paths: \"*.json\"\n";
    assert_eq!(reasons(&user(bare_list)), Vec::<&str>::new());
    // An escaped literal `$` is still the literal queue.
    let mut dollar = user(&GOOD.replace("queue: gpu", "queue: \"g$$pu\""));
    dollar.slug = "d".into();
    let expect = Expectations { queue: "g$pu", ..EXPECT };
    assert_eq!(check_pipeline(&dollar, &expect), vec![]);
}

#[test]
fn each_broken_setting_is_named() {
    let cases: Vec<(String, &str, &str)> = vec![
        (GOOD.replace("queue: gpu", "queue: \"${KERNELBOT_QUEUE}\""), problem::QUEUE_INTERPOLATED, "KERNELBOT_QUEUE"),
        (GOOD.replace("queue: gpu", "queue: $$Q$Q"), problem::QUEUE_INTERPOLATED, "interpolated"),
        (GOOD.replace("queue: gpu", "queue: cpu"), problem::QUEUE_MISMATCH, "\"cpu\""),
        (GOOD.replace("    agents: {queue: gpu}\n", ""), problem::QUEUE_MISMATCH, "default queue"),
        (GOOD.replace("    checkout: {skip: true}\n", ""), problem::CHECKOUT_NOT_SKIPPED, "checkout"),
        (GOOD.replace("{skip: true}", "{skip: false}"), problem::CHECKOUT_NOT_SKIPPED, "skip: true"),
        (
            GOOD.replace("artifact_paths: result.json", "artifact_paths: logs/*"),
            problem::NO_RESULT_ARTIFACT,
            "result.json",
        ),
        (GOOD.replace("    artifact_paths: result.json\n", ""), problem::NO_RESULT_ARTIFACT, "artifact_paths"),
        (format!("{GOOD}    branches: main\n"), problem::STEP_BRANCH_FILTER, "branches: main"),
        ("steps:\n  - wait\n".into(), problem::NO_COMMAND_STEP, "no command step"),
        ("steps: [".into(), problem::STEPS_UNREADABLE, "not valid YAML"),
    ];
    for (config, reason, says) in cases {
        let problems = check_pipeline(&user(&config), &EXPECT);
        assert_eq!(problems.iter().map(|p| p.reason).collect::<Vec<_>>(), [reason], "{config}");
        assert!(problems[0].message.contains(says), "{:?} should mention {says:?}", problems[0].message);
        assert!(problems[0].message.contains("theirs"), "names the pipeline");
    }
    // The step-level skip wins over the pipeline-level env, the pipeline-level skip over
    // the step's env.
    let env_only = GOOD.replace("    checkout: {skip: true}\n", "    env: {BUILDKITE_SKIP_CHECKOUT: \"true\"}\n");
    assert_eq!(reasons(&user(&env_only)), Vec::<&str>::new());
    let overridden = format!("checkout: {{skip: false}}\n{}", env_only.trim_start());
    assert_eq!(reasons(&user(&overridden)), [problem::CHECKOUT_NOT_SKIPPED]);
}

#[test]
fn pipeline_settings_are_named() {
    let mut p = user(GOOD);
    p.skip_queued_branch_builds = true;
    p.cancel_running_branch_builds = true;
    p.cluster_id = Some("c2".into());
    p.archived_at = Some("2021-06-01 08:23:35 UTC".into());
    let problems = check_pipeline(&p, &EXPECT);
    let got: Vec<&str> = problems.iter().map(|x| x.reason).collect();
    assert_eq!(
        got,
        [
            problem::ARCHIVED,
            problem::SKIP_INTERMEDIATE_BUILDS,
            problem::CANCEL_INTERMEDIATE_BUILDS,
            problem::WRONG_CLUSTER
        ]
    );
    assert!(problems[1].message.contains("skip_queued_branch_builds"));
    assert!(problems[2].message.contains("Cancel intermediate builds"));
    assert!(problems[3].message.contains("c2") && problems[3].message.contains("c1"));
    // Filters that leave benchkite's branches alone are fine; an unknown cluster is not
    // checked.
    p.archived_at = None;
    p.skip_queued_branch_builds_filter = Some("main".into());
    p.cancel_running_branch_builds_filter = Some("!benchkite/*".into());
    let expect = Expectations { cluster_id: None, ..EXPECT };
    assert_eq!(check_pipeline(&p, &expect), vec![]);
}

#[test]
fn steps_that_are_not_yaml_are_reported() {
    let mut p = user(GOOD);
    p.configuration = None;
    assert_eq!(reasons(&p), [problem::STEPS_UNREADABLE]);
    p.pipeline_template_uuid = Some("t".into());
    assert!(check_pipeline(&p, &EXPECT)[0].message.contains("template"));
}
