//! Scenario 6's Markdown table and target lines (from its JSON alone).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{TARGET_PER_MIN, TARGET_RATIO, TARGET_REST_PER_JOB};
use crate::report::{f, ge, le};

/// A target line: (what, measured, met).
pub type Target = (String, String, Option<bool>);

/// The scenario's Markdown table and explanation; its target lines go to `targets`.
pub fn markdown(s: &mut String, v: &Value, targets: &mut Vec<Target>) {
    let (g, r) = (&v["graphql"], &v["rest_only"]);
    let gl = if g["graphql"]["limits"].is_object() { &g["graphql"]["limits"] } else { &Value::Null };
    let _ = writeln!(
        s,
        "#### 6. GraphQL burst: {} KernelJobs × {} s created at once, two controllers at once, Buildkite's REST limits \
         {}/org and {}/user per minute, GraphQL budget {} points per {} s per organization and {} per user (at most {} \
         per query)\n",
        v["jobs"],
        f(&v["job_secs"], 0),
        v["rest_limits"]["org_per_min"],
        v["rest_limits"]["user_per_min"],
        f(&gl["points_limit"], 0),
        f(&gl["window_secs"], 0),
        f(&gl["user_points_limit"], 0),
        f(&gl["max_query_complexity"], 0),
    );
    let flags = |x: &Value| {
        let fl: Vec<&str> = x["controller_flags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if fl.is_empty() { "no GraphQL flag".to_string() } else { format!("`{}`", fl[..fl.len().min(2)].join(" ")) }
    };
    let _ = writeln!(s, "| | benchkite, GraphQL ({}) | benchkite, REST only ({}) |", flags(g), flags(r));
    let _ = writeln!(s, "|---|---:|---:|");
    let row = |s: &mut String, name: &str, a: String, b: String| {
        let _ = writeln!(s, "| {name} | {a} | {b} |");
    };
    row(
        s,
        "**GraphQL ÷ REST-only builds created per minute**",
        format!("**{}×**", f(&v["ratio_graphql_over_rest"], 1)),
        "1×".into(),
    );
    let rate = |x: &Value| match x["creation_rate_basis"].as_str() {
        Some(b) if b != "whole minutes" => format!("{} ({b})", f(&x["creation_rate_per_min"], 1)),
        _ => f(&x["creation_rate_per_min"], 1),
    };
    row(s, "builds created per minute (the ratio's)", rate(g), rate(r));
    let both = |s: &mut String, name: &str, k: &str, d: usize| row(s, name, f(&g[k], d), f(&r[k], d));
    both(s, "builds created per minute, whole minutes from the first KernelJob create", "builds_per_whole_minute", 1);
    both(s, "builds created per minute, first build to last", "first_to_last_per_min", 1);
    let measured = |x: &Value| {
        if x["cut"] == Value::Bool(true) {
            format!("{} (cut: {} of {} builds created)", f(&x["measured_secs"], 0), x["builds_created"], x["jobs"])
        } else {
            f(&x["measured_secs"], 0)
        }
    };
    row(s, "measured for (s, from the first KernelJob create)", measured(g), measured(r));
    both(s, "builds created", "builds_created", 0);
    if let Some(m) = g["secs_to_nth_build"].as_object() {
        let mut ns: Vec<(usize, &String)> = m.keys().filter_map(|k| k.parse().ok().map(|n| (n, k))).collect();
        ns.sort();
        for (_, k) in ns {
            let cell = |x: &Value| match x["secs_to_nth_build"][k.as_str()].as_f64() {
                Some(t) => format!("{t:.1}"),
                None => "not reached".into(),
            };
            row(s, &format!("seconds until build {k} exists"), cell(g), cell(r));
        }
    }
    let per = |x: &Value| if x["cut"] == Value::Bool(true) { " (per build created)" } else { "" };
    let per_cell = |x: &Value, k: &str| format!("{}{}", f(&x[k], 3), per(x));
    row(s, "REST requests per job", per_cell(g, "requests_per_job"), per_cell(r, "requests_per_job"));
    both(s, "of which set-up requests (scopes, cluster, pipeline)", "setup_requests", 0);
    row(
        s,
        "REST requests per job without the set-up",
        per_cell(g, "requests_per_job_without_setup"),
        per_cell(r, "requests_per_job_without_setup"),
    );
    let gq = |x: &Value, k: &str, d: usize| f(&x["graphql"][k], d);
    row(s, "GraphQL requests per job", gq(g, "requests_per_job", 3), gq(r, "requests_per_job", 3));
    row(
        s,
        "GraphQL points per job, requested / actual",
        format!("{} / {}", gq(g, "requested_points_per_job", 2), gq(g, "actual_points_per_job", 2)),
        format!("{} / {}", gq(r, "requested_points_per_job", 2), gq(r, "actual_points_per_job", 2)),
    );
    row(
        s,
        "GraphQL requests / points (requested, actual)",
        format!("{} / {}, {}", gq(g, "requests", 0), gq(g, "requested_points", 0), gq(g, "actual_points", 0)),
        format!("{} / {}, {}", gq(r, "requests", 0), gq(r, "requested_points", 0), gq(r, "actual_points", 0)),
    );
    both(s, "REST answered 429", "http_429", 0);
    row(
        s,
        "GraphQL answered 429 (of which by the per-user window) / refused for complexity / invalid",
        format!(
            "{} ({}) / {} / {}",
            gq(g, "http_429", 0),
            gq(g, "http_429_user", 0),
            gq(g, "rejected_complexity", 0),
            gq(g, "rejected_invalid", 0)
        ),
        format!(
            "{} ({}) / {} / {}",
            gq(r, "http_429", 0),
            gq(r, "http_429_user", 0),
            gq(r, "rejected_complexity", 0),
            gq(r, "rejected_invalid", 0)
        ),
    );
    let dup = |x: &Value| {
        let d = &x["duplicates"];
        format!(
            "{} of {} (most builds of one attempt: {})",
            f(&d["attempts_with_more_than_one_build"], 0),
            f(&d["attempts"], 0),
            f(&d["max_builds_per_attempt"], 0)
        )
    };
    row(s, "attempts with more than one build", dup(g), dup(r));
    let jobs = |x: &Value| format!("{} / {}", f(&x["finished"], 0), f(&x["succeeded"], 0));
    row(s, "jobs finished / Succeeded (when measuring ended)", jobs(g), jobs(r));
    both(s, "KernelJobs created in (s)", "kj_create_secs", 1);
    both(s, "controller CPU (s)", "controller_cpu_secs", 1);
    both(s, "controller peak RSS (MiB)", "controller_peak_rss_mib", 1);
    for (op, x) in g["graphql"]["by_operation"].as_object().into_iter().flatten() {
        row(
            s,
            &format!("GraphQL `{op}`: requests / points"),
            format!("{} / {}", f(&x["requests"], 0), f(&x["points"], 0)),
            "–".into(),
        );
    }
    if g["graphql"]["requests"].as_u64() == Some(0) {
        let _ = writeln!(
            s,
            "\n**The GraphQL run sent no GraphQL request**: its controller went over REST only (log: `{}`).",
            g["controller_log"].as_str().unwrap_or("?")
        );
    }
    for (name, x) in [("GraphQL", g), ("REST-only", r)] {
        if let Some(e) = x["error"].as_str() {
            let _ = writeln!(s, "\n**The {name} run failed:** {e}");
        }
    }
    let _ = writeln!(
        s,
        "\nBoth runs ran at once, each with its own simulator, token and {} agents, under Buildkite's REST limits \
         (one token: 50/min); each started its burst once the REST window of its controller's set-up had closed (so \
         that each whole minute holds one window); the GraphQL run's token has the scope `graphql` and its simulator the documented GraphQL \
         budget, the REST-only run's token has not. Every figure comes from the simulators (their request counters, \
         `/_sim/graphql` and their builds), none from the controllers. The REST-only run (about 48 builds a minute) is \
         measured until the GraphQL run has finished all its jobs or for {} s, whichever is later, and then cut: its \
         rates are over the whole minutes it ran and its requests are per build it created. Builds per minute: the \
         builds created in the whole 60 s buckets from the first KernelJob create (to the cut, or to the last build); \
         a run shorter than a minute is rated by its builds ÷ the time from the first KernelJob create to its last \
         build (marked); first build to last: (n − 1) ÷ the time between them, which under a windowed limit ends on a \
         window's burst and overstates the REST-only rate (its whole minutes are its figure). Duplicates: the simulator's builds grouped by attempt (run id of the branch \
         `benchkite/<instance>/<run id>`).\n",
        v["agents"],
        f(&v["rest_cap_secs"], 0),
    );
    crate::report::timings(s, "GraphQL run", &g["controller_timings"]);
    crate::report::timings(s, "REST-only run", &r["controller_timings"]);
    targets.push((
        format!("GraphQL burst: builds per minute ≥ {TARGET_RATIO}× the REST-only run"),
        format!("{}×", f(&v["ratio_graphql_over_rest"], 1)),
        ge(&v["ratio_graphql_over_rest"], TARGET_RATIO),
    ));
    targets.push((
        format!("GraphQL burst: ≥ {TARGET_PER_MIN} builds per minute (GraphQL run)"),
        f(&g["creation_rate_per_min"], 1),
        ge(&g["creation_rate_per_min"], TARGET_PER_MIN),
    ));
    targets.push((
        format!("GraphQL burst: ≤ {TARGET_REST_PER_JOB} REST requests per job left (GraphQL run)"),
        f(&g["requests_per_job"], 3),
        le(&g["requests_per_job"], TARGET_REST_PER_JOB),
    ));
    let sum = |ks: &[&Value]| -> Value {
        let xs: Vec<f64> = ks.iter().filter_map(|x| x.as_f64()).collect();
        if xs.len() == ks.len() { json!(xs.iter().sum::<f64>()) } else { Value::Null }
    };
    let all_429 = sum(&[&g["http_429"], &g["graphql"]["http_429"], &r["http_429"]]);
    targets.push(("GraphQL burst: no 429 (REST and GraphQL, both runs)".into(), f(&all_429, 0), le(&all_429, 0.0)));
    let dups = sum(&[
        &g["duplicates"]["attempts_with_more_than_one_build"],
        &r["duplicates"]["attempts_with_more_than_one_build"],
    ]);
    targets.push((
        "GraphQL burst: one build per attempt (both runs)".into(),
        format!("{} duplicated", f(&dups, 0)),
        le(&dups, 0.0),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_json(cut: bool, rate: f64, rest_per_job: f64, rest_429: u64) -> Value {
        json!({
            "cut": cut, "jobs": 200, "builds_created": if cut { 95 } else { 200 }, "measured_secs": 120.0,
            "creation_rate_per_min": rate, "creation_rate_basis": "whole minutes",
            "requests_per_job": rest_per_job, "http_429": rest_429, "finished": 90, "succeeded": 90,
            "secs_to_nth_build": {"50": 10.0, "100": if cut { Value::Null } else { json!(12.0) }, "200": null},
            "controller_flags": if cut { json!(["--buildkite-graphql", "off"]) }
                else { json!(["--buildkite-graphql", "auto", "--buildkite-graphql-url", "u"]) },
            "graphql": {"available": true, "http_429": 0, "requests_per_job": 1.1,
                        "limits": {"points_limit": 20000, "user_points_limit": 5000, "window_secs": 300.0,
                                   "max_query_complexity": 50000},
                        "by_operation": {"buildCreate": {"requests": 200, "points": 400}}},
            "duplicates": {"attempts": 200, "attempts_with_more_than_one_build": 0, "max_builds_per_attempt": 1},
        })
    }

    #[test]
    fn the_table_leads_with_the_ratio_and_marks_the_cut_and_the_targets() {
        let v = json!({
            "jobs": 200, "job_secs": 5.0, "agents": 200, "rest_cap_secs": 120.0,
            "rest_limits": {"org_per_min": 200, "user_per_min": 50},
            "ratio_graphql_over_rest": 500.0 / 47.5,
            "graphql": run_json(false, 500.0, 0.04, 0), "rest_only": run_json(true, 47.5, 1.06, 1),
        });
        let (mut s, mut t) = (String::new(), Vec::new());
        markdown(&mut s, &v, &mut t);
        let first_row = s.lines().find(|l| l.starts_with("| **")).unwrap_or_default();
        assert!(first_row.contains("**10.5×**"), "{s}");
        assert!(
            s.contains(
                "GraphQL budget 20000 points per 300 s per organization and 5000 per user (at most 50000 per query)"
            ),
            "{s}"
        );
        assert!(s.contains("| 120 (cut: 95 of 200 builds created) |"), "{s}");
        assert!(s.contains("| seconds until build 100 exists | 12.0 | not reached |"), "{s}");
        assert!(s.contains("1.060 (per build created)"), "{s}");
        assert!(s.contains("| GraphQL `buildCreate`: requests / points | 200 / 400 | – |"), "{s}");
        assert!(!s.contains("sent no GraphQL request"), "{s}");
        let find = |what: &str| t.iter().find(|(n, _, _)| n.contains(what)).map(|(_, m, ok)| (m.clone(), *ok));
        assert_eq!(find("≥ 10×"), Some(("10.5×".into(), Some(true))));
        assert_eq!(find("≥ 480"), Some(("500.0".into(), Some(true))));
        assert_eq!(find("≤ 1.05"), Some(("0.040".into(), Some(true))));
        assert_eq!(find("no 429"), Some(("1".into(), Some(false))), "the REST-only run's 429 counts");
        assert_eq!(find("one build per attempt"), Some(("0 duplicated".into(), Some(true))));
        // A GraphQL run that never used GraphQL is said so.
        let mut rest_only = v.clone();
        rest_only["graphql"]["graphql"]["requests"] = json!(0);
        rest_only["graphql"]["controller_log"] = json!("/x/bench-gql.log");
        let (mut s, mut t) = (String::new(), Vec::new());
        markdown(&mut s, &rest_only, &mut t);
        assert!(s.contains("**The GraphQL run sent no GraphQL request**: its controller went over REST only (log: `/x/bench-gql.log`)."), "{s}");
        // A run that failed is said so, and its targets are not measured.
        let mut failed = v.clone();
        failed["graphql"] = json!({"error": "no --buildkite-graphql flag"});
        failed["ratio_graphql_over_rest"] = Value::Null;
        let (mut s, mut t) = (String::new(), Vec::new());
        markdown(&mut s, &failed, &mut t);
        assert!(s.contains("**The GraphQL run failed:** no --buildkite-graphql flag"), "{s}");
        assert!(t.iter().filter(|(n, _, _)| n.contains("≥")).all(|(_, _, ok)| ok.is_none()), "{t:?}");
    }

    #[test]
    fn the_report_carries_the_scenario_and_its_targets() {
        let r = json!({
            "mode": "quick", "date": "2026-01-01", "machine": {"cores": 2},
            "scenarios": {"graphql": {
                "jobs": 200, "job_secs": 5.0, "agents": 200, "rest_cap_secs": 120.0,
                "rest_limits": {"org_per_min": 200, "user_per_min": 50}, "ratio_graphql_over_rest": 12.0,
                "graphql": run_json(false, 580.0, 0.03, 0), "rest_only": run_json(true, 48.3, 1.05, 0),
            }},
            "timings_secs": {"total": 1.0},
        });
        let md = crate::report::markdown(&r);
        assert!(md.contains("#### 6. GraphQL burst: 200 KernelJobs × 5 s created at once"), "{md}");
        assert!(md.contains("| GraphQL burst: builds per minute ≥ 10× the REST-only run | 12.0× | met |"), "{md}");
        assert!(md.contains("| GraphQL burst: no 429 (REST and GraphQL, both runs) | 0 | met |"), "{md}");
        assert!(md.contains("GraphQL burst: issue 21"), "{md}");
    }
}
