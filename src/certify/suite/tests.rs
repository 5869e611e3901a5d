use super::*;

fn kernel(name: &str, secs: f64) -> String {
    format!(
        r#"  - name: {name}
    referenceSeconds: {secs}
    config:
      lang: py
      main: eval.py
      sources: {{eval.py: "print(1)", submission.py: "KERNEL = '{name}'"}}
      benchmarks: [{{size: 1}}]
      ranking_by: mean
"#
    )
}

fn suite(kernels: &[(&str, f64)], extra: &str) -> String {
    let mut s = String::from("kernels:\n");
    for (n, t) in kernels {
        s.push_str(&kernel(n, *t));
    }
    s.push_str(extra);
    s
}

#[test]
fn a_suite_parses_and_its_payloads_run_in_leaderboard_mode() {
    let s = Suite::parse(&suite(&[("k-fast", 1e-4), ("k-mid", 5e-4), ("k_slow.v2", 2e-3)], "")).unwrap();
    assert_eq!(s.reference()["k-mid"], 5e-4);
    let config = contract::decode_payload(&s.kernels[0].payload().unwrap()).unwrap();
    assert_eq!(config.mode, contract::Mode::Leaderboard, "whatever the config says");
    assert_eq!(config.ranking_by, contract::RankingBy::Mean);
    // JSON is YAML too.
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(Suite::parse(&json).unwrap(), s);
}

#[test]
fn the_canary_is_named_or_the_median_kernel() {
    let three = [("a", 3e-3), ("b", 1e-3), ("c", 2e-3)];
    assert_eq!(Suite::parse(&suite(&three, "")).unwrap().canary().unwrap().name, "c");
    let four = [("a", 4e-3), ("b", 1e-3), ("c", 2e-3), ("d", 3e-3)];
    assert_eq!(Suite::parse(&suite(&four, "")).unwrap().canary().unwrap().name, "c", "the faster middle one");
    assert_eq!(Suite::parse(&suite(&four, "canary: a\n")).unwrap().canary().unwrap().name, "a");
}

#[test]
fn bad_suites_say_what_to_fix() {
    let e = |text: &str| Suite::parse(text).unwrap_err();
    assert_eq!(e(&suite(&[("a", 1e-3)], "")), SuiteError::TooFew(1));
    assert_eq!(e(&suite(&[("a", 1e-3), ("a", 2e-3)], "")), SuiteError::Duplicate("a".into()));
    assert_eq!(e(&suite(&[("a", 1e-3), ("B", 2e-3)], "")), SuiteError::BadName("B".into()));
    assert_eq!(e(&suite(&[("a", 1e-3), ("-b", 2e-3)], "")), SuiteError::BadName("-b".into()));
    let long = "x".repeat(MAX_NAME + 1);
    assert_eq!(e(&suite(&[("a", 1e-3), (&long, 2e-3)], "")), SuiteError::BadName(long.clone()));
    assert!(matches!(e(&suite(&[("a", 1e-3), ("b", 0.0)], "")), SuiteError::BadReference { .. }));
    assert!(matches!(e(&suite(&[("a", 1e-3), ("b", -1.0)], "")), SuiteError::BadReference { .. }));
    assert_eq!(e(&suite(&[("a", 1e-3), ("b", 2e-3)], "canary: z\n")), SuiteError::UnknownCanary("z".into()));
    assert!(matches!(e("kernels: 3"), SuiteError::Parse(_)));
    assert!(matches!(e(&suite(&[("a", 1e-3), ("b", 2e-3)], "extra: 1\n")), SuiteError::Parse(_)), "unknown fields");
    let many: Vec<(String, f64)> = (0..=MAX_KERNELS).map(|i| (format!("k{i}"), 1e-3)).collect();
    let many: Vec<(&str, f64)> = many.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    assert_eq!(e(&suite(&many, "")), SuiteError::TooMany(MAX_KERNELS + 1));
    // A config the runner would refuse: py without main.
    let bad = "kernels:\n  - {name: a, referenceSeconds: 1, config: {lang: py, sources: {x.py: ''}}}\n  - {name: b, referenceSeconds: 2, config: [1]}\n";
    let err = e(bad);
    assert!(matches!(&err, SuiteError::BadConfig { name, .. } if name == "a"), "{err}");
}

#[test]
fn a_suite_without_reference_times_parses_only_to_take_them() {
    let text = "kernels:\n  - {name: a, config: {lang: py, main: eval.py, sources: {eval.py: x}}}\n  - {name: b, config: {lang: py, main: eval.py, sources: {eval.py: x}}}\n";
    assert!(matches!(Suite::parse(text), Err(SuiteError::BadReference { .. })));
    let s = Suite::parse_unreferenced(text).unwrap();
    assert_eq!(s.kernels.iter().map(|k| k.reference_seconds).collect::<Vec<_>>(), [0.0, 0.0]);
    assert!(matches!(Suite::parse_unreferenced("kernels: []"), Err(SuiteError::TooFew(0))), "the rest is checked");
}
