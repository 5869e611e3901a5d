//! Tests of scenario 6's figures (the table's are in `report.rs`).

use super::*;

#[test]
fn whole_minutes_run_to_the_end_given() {
    let t0 = 0.0;
    // 45 in the first minute, 50 in the second, 3 in the third (cut at 130 s).
    let mut c: Vec<f64> = (0..45).map(|i| 5_000.0 + f64::from(i)).collect();
    c.extend((0..50).map(|i| 61_000.0 + f64::from(i)));
    c.extend((0..3).map(|i| 121_000.0 + f64::from(i)));
    assert_eq!(rate_over_whole_minutes(&c, t0, 130_000.0), Some(47.5));
    assert_eq!(rate_over_whole_minutes(&c, t0, 59_000.0), None);
    assert_eq!(creation_rate(&c, t0, 130_000.0), (Some(47.5), "whole minutes"));
}

#[test]
fn a_run_shorter_than_a_minute_is_rated_from_the_first_create_to_its_last_build() {
    let c: Vec<f64> = (1..=200).map(|i| f64::from(i) * 150.0).collect(); // last at 30 s
    let (rate, basis) = creation_rate(&c, 0.0, 30_000.0);
    assert_eq!(rate, Some(400.0));
    assert!(basis.contains("under a minute"), "{basis}");
    assert_eq!(creation_rate(&[], 0.0, 0.0).0, None);
    // 199 intervals over 29.85 s.
    let ftl = first_to_last_per_minute(&c).unwrap_or(0.0);
    assert!((ftl - 199.0 / (29_850.0 / 60_000.0)).abs() < 1e-9, "{ftl}");
    assert_eq!(first_to_last_per_minute(&c[..1]), None);
}

#[test]
fn milestones_up_to_the_jobs_and_the_last() {
    let c: Vec<f64> = (1..=120).map(|i| f64::from(i) * 1_000.0).collect();
    let v = secs_to_nth(&c, 0.0, 300);
    assert_eq!(v["50"], json!(50.0));
    assert_eq!(v["100"], json!(100.0));
    assert_eq!(v["200"], Value::Null, "not reached");
    assert_eq!(v["300"], Value::Null, "the jobs themselves");
    assert!(v.get("500").is_none(), "beyond the jobs");
    assert_eq!(secs_to_nth(&c, 0.0, 2000).as_object().map(|m| m.len()), Some(6));
}

#[test]
fn duplicates_are_builds_of_one_attempt() {
    let b = |branch: &str| json!({"branch": branch});
    let builds = [
        b("benchkite/bench-gql-1/run-a"),
        b("benchkite/bench-gql-1/run-b"),
        b("benchkite/bench-gql-1/run-b"),
        b("main"),
    ];
    let per = builds_per_attempt(&builds);
    assert_eq!(per.get("run-a"), Some(&1));
    assert_eq!(per.get("run-b"), Some(&2));
    let d = duplicates(&per);
    assert_eq!(d["attempts"], json!(2));
    assert_eq!(d["attempts_with_more_than_one_build"], json!(1));
    assert_eq!(d["max_builds_per_attempt"], json!(2));
    assert_eq!(d["builds_without_attempt"], json!(1));
    assert_eq!(d["examples"][0]["run_id"], json!("run-b"));
}

#[test]
fn graphql_figures_per_job_from_the_simulators_counters() {
    let g = json!({
        "points_limit": 20000, "window_secs": 300.0, "max_query_complexity": 50000,
        "requests": 250, "rejected_429": 0, "rejected_complexity": 0,
        "requested_points_total": 1000, "actual_points_total": 600,
        "by_operation": {"buildCreate": {"requests": 200, "points": 400}},
    });
    let v = graphql_figures(Some(&g), 200);
    assert_eq!(v["requests_per_job"], json!(1.25));
    assert_eq!(v["requested_points_per_job"], json!(5.0));
    assert_eq!(v["actual_points_per_job"], json!(3.0));
    assert_eq!(v["limits"]["points_limit"], json!(20000));
    assert_eq!(graphql_figures(None, 200)["available"], json!(false));
}

#[tokio::test]
async fn the_burst_waits_for_the_set_up_window_to_close() -> Result<()> {
    let cfg = SimConfig {
        rate_limit: RateLimitConfig { org_limit: 200, user_limit: 50, window_secs: 0.5 },
        ..Default::default()
    };
    let sim = Simulator::start(cfg).await?;
    let resp = reqwest::Client::new()
        .get(format!("{}/access-token", sim.api_url()))
        .bearer_auth(sim.api_token())
        .send()
        .await?;
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(sim.rate_limit_stats().current_window_count, 1, "the set-up opened a window");
    rest_window_closed(&sim, Duration::from_secs(60)).await;
    assert_eq!(sim.rate_limit_stats().current_window_count, 0, "closed when the burst starts");
    sim.shutdown().await;
    Ok(())
}

#[test]
fn the_rest_run_stops_at_the_later_of_the_cap_and_the_graphql_runs_end() {
    assert!(!rest_run_stops(false, true, false), "the GraphQL run still goes");
    assert!(!rest_run_stops(false, false, true), "the cap has not passed");
    assert!(rest_run_stops(false, true, true));
    assert!(rest_run_stops(true, false, false), "all its jobs finished");
}

#[test]
fn the_paths_differ_in_token_scope_and_flags() {
    assert!(token_scopes(Path::Graphql).iter().any(|s| s == "graphql"));
    assert!(!token_scopes(Path::RestOnly).iter().any(|s| s == "graphql"));
    assert!(token_scopes(Path::RestOnly).iter().any(|s| s == "write_builds"));
    let url = "http://127.0.0.1:1/v1";
    assert_eq!(path_args(Path::Graphql, url), ["--buildkite-graphql", "auto", "--buildkite-graphql-url", url]);
    assert_eq!(path_args(Path::RestOnly, url), ["--buildkite-graphql", "off"]);
    let p = Params { jobs: 200, duration_ms: 5_000, agents: 200, rest_cap: Duration::from_secs(120) };
    let cfg = sim_config(&p, Path::Graphql, "http://x/webhooks/buildkite".into());
    assert_eq!(cfg.rate_limit.user_limit, 50);
    assert_eq!(cfg.rate_limit.org_limit, 200);
    let token = cfg.api_tokens.first().cloned().unwrap_or_default();
    assert!(cfg.api_token_scopes[&token].iter().any(|s| s == "graphql"));
    assert_eq!(cfg.agents[0].count, 200);
}

#[test]
fn an_incomplete_graphql_run_or_a_failed_rest_job_makes_the_scenario_fail() {
    let ok = json!({"jobs": 200, "graphql": {"succeeded": 200, "finished": 200},
                    "rest_only": {"succeeded": 90, "finished": 90}});
    assert_eq!(failure(&ok), None, "the REST-only run is cut: its unfinished jobs are expected");
    let mut short = ok.clone();
    short["graphql"]["succeeded"] = json!(150);
    assert!(failure(&short).unwrap_or_default().contains("GraphQL run: 150/200 jobs succeeded"));
    let mut bad = ok.clone();
    bad["rest_only"]["succeeded"] = json!(89);
    assert!(failure(&bad).unwrap_or_default().contains("REST-only run: 89 of 90"));
    let mut err = ok;
    err["graphql"] = json!({"error": "boom"});
    assert!(failure(&err).unwrap_or_default().contains("GraphQL run failed: boom"));
}

#[test]
fn rest_figures_count_the_v2_requests_and_the_set_up_apart() {
    let mut counters = CountersSnapshot::default();
    let mut add = |k: &str, n: u64| {
        let e = counters.endpoints.entry(k.to_string()).or_default();
        e.total = n;
        e.by_status.insert("200".into(), n);
    };
    add("GET /v2/access-token", 1);
    add("POST /v2/organizations/{org}/pipelines", 1);
    add("GET /v2/organizations/{org}/builds", 2);
    add("POST /v2/organizations/{org}/pipelines/{pipeline}/builds", 96);
    add("GET /_sim/stats", 7);
    let rate = RateLimitStats { counted: 100, rejected: 1, ..Default::default() };
    let v = rest_figures(&counters, &rate, 96);
    assert_eq!(v["requests"], json!(100));
    assert_eq!(v["setup_requests"], json!(2), "scopes and pipeline, not builds");
    assert!((v["requests_per_job"].as_f64().unwrap_or(0.0) - 100.0 / 96.0).abs() < 1e-9);
    assert!((v["requests_per_job_without_setup"].as_f64().unwrap_or(0.0) - 98.0 / 96.0).abs() < 1e-9);
    assert_eq!(v["http_429"], json!(1));
    assert!(v["by_endpoint"].get("GET /_sim/stats").is_none(), "only the REST API");
}
