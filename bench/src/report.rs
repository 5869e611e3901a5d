//! The Markdown tables, from the JSON results alone (so they can be regenerated).

use std::fmt::Write as _;

use serde_json::Value;

fn f(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn le(v: &Value, limit: f64) -> Option<bool> {
    v.as_f64().filter(|x| x.is_finite()).map(|x| x <= limit)
}

fn ge(v: &Value, limit: f64) -> Option<bool> {
    v.as_f64().filter(|x| x.is_finite()).map(|x| x >= limit)
}

/// The controller's own timing histograms (means), for "where does the time go".
fn timings(s: &mut String, title: &str, v: &Value) {
    let Some(m) = v.as_object().filter(|m| !m.is_empty()) else { return };
    let _ = writeln!(s, "<details><summary>{title}: the controller's /metrics (means)</summary>\n");
    let _ = writeln!(s, "| series | count | mean (ms) |");
    let _ = writeln!(s, "|---|---:|---:|");
    for (k, x) in m {
        let _ = writeln!(s, "| `{}` | {} | {} |", k.replace('|', "\\|"), f(&x["count"], 0), f(&x["mean_ms"], 1));
    }
    let _ = writeln!(s, "\n</details>\n");
}

pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        s,
        "### Benchmarks ({} run, {})\n",
        r["mode"].as_str().unwrap_or("?"),
        r["date"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {} GiB memory, load at start {}; commit {}; controller `{}`; cluster `{}`.\n\
         Timings are noisy on this shared machine: compare the ratios against the baselines, which ran in the same invocation.\n",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        f(&m["memory_gib"], 1),
        m["load_at_start"].as_str().unwrap_or("?"),
        m["git"].as_str().unwrap_or("?"),
        r["controller_binary"].as_str().unwrap_or("?"),
        r["cluster"].as_str().unwrap_or("?"),
    );
    for rerun in r["reruns"].as_array().into_iter().flatten() {
        let only: Vec<&str> = rerun["only"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        // Earlier re-runs recorded no binary: they used the report's.
        let build = match (rerun["controller_binary"].as_str(), rerun["git"].as_str()) {
            (Some(bin), git) => format!(
                "commit {}, controller `{bin}`{}",
                git.unwrap_or("?"),
                if bin.contains("/debug/") { ", a debug build" } else { "" }
            ),
            (None, _) => "same build".to_string(),
        };
        let _ = writeln!(
            s,
            "Re-run on its own at {} (same machine, {build}; merged into this report): {}.\n",
            rerun["date"].as_str().unwrap_or("?"),
            if only.is_empty() { "all scenarios".to_string() } else { only.join(", ") }
        );
    }
    if r["controller_binary"].as_str().is_some_and(|b| b.contains("/debug/")) {
        let _ = writeln!(
            s,
            "**Debug build** of the controller and runner (quick mode default): CPU, memory and latency are \
             pessimistic; `make bench` uses release builds.\n"
        );
    }
    let sc = &r["scenarios"];
    let mut targets: Vec<(String, String, Option<bool>)> = Vec::new();

    let e = &sc["efficiency"];
    if e.is_object() {
        let (w, p, b) = (&e["webhooks"], &e["polling"], &e["baseline"]);
        let limit = f(&e["limit_per_min"], 0);
        let _ = writeln!(
            s,
            "#### 1. Buildkite efficiency: {} KernelJobs × {} s through {} simulated agents, Buildkite's limits {}/org and {}/user per minute (one token: {}/min)\n",
            e["jobs"],
            f(&e["job_secs"], 0),
            e["agents"],
            f(&e["org_limit_per_min"], 0),
            f(&e["user_limit_per_min"], 0),
            limit
        );
        let _ = writeln!(
            s,
            "| | benchkite, webhooks | benchkite, polling only | seeds' launcher (baseline, unconstrained) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let row = |s: &mut String, name: &str, key: &str, d: usize| {
            let _ = writeln!(s, "| {name} | {} | {} | {} |", f(&w[key], d), f(&p[key], d), f(&b[key], d));
        };
        let _ = writeln!(
            s,
            "| simulator limits (org / user per min) | {} / {} | {} / {} | {} / {} (counts, refuses nothing) |",
            w["limits"]["org_per_min"],
            w["limits"]["user_per_min"],
            p["limits"]["org_per_min"],
            p["limits"]["user_per_min"],
            b["limits"]["org_per_min"],
            b["limits"]["user_per_min"]
        );
        row(&mut s, "REST requests per job", "requests_per_job", 3);
        let _ = writeln!(
            s,
            "| baseline ÷ benchkite requests per job | {}× | {}× | 1× |",
            f(&e["ratio_baseline_over_webhooks"], 1),
            f(&e["ratio_baseline_over_polling"], 1)
        );
        row(&mut s, "REST requests", "requests", 0);
        let writes = |v: &Value| {
            let a = &v["api_writes_per_job"];
            if a["total"].is_number() {
                format!(
                    "{} ({} object, {} status, {} Events)",
                    f(&a["total"], 2),
                    f(&a["kerneljob"], 2),
                    f(&a["kerneljob_status"], 2),
                    f(&a["events"], 2)
                )
            } else {
                "–".to_string()
            }
        };
        let _ = writeln!(
            s,
            "| Kubernetes API writes per KernelJob besides its create (API server's counters) | {} | {} | – |",
            writes(w),
            writes(p)
        );
        for (mode, v) in [("webhooks", w), ("polling", p)] {
            if v["api_writes_per_job"]["total"].is_number() {
                targets.push((
                    format!("API writes per KernelJob besides the create ≤ 3 ({mode})"),
                    f(&v["api_writes_per_job"]["total"], 2),
                    le(&v["api_writes_per_job"]["total"], 3.0),
                ));
            }
        }
        row(&mut s, "of which set-up (scopes, cluster, pipeline)", "setup_requests", 0);
        row(&mut s, "answered 429", "http_429", 0);
        row(&mut s, "jobs finished", "finished", 0);
        row(&mut s, "wall time (s)", "wall_secs", 1);
        row(&mut s, "ideal: jobs × duration ÷ agents (s)", "ideal_secs", 1);
        row(&mut s, "wall ÷ ideal", "wall_over_ideal", 2);
        let _ = writeln!(
            s,
            "| ideal under {limit}/min: one create per job, {limit} per window (s) | {} | {} | – |",
            f(&w["ideal_under_limit_secs"], 1),
            f(&p["ideal_under_limit_secs"], 1)
        );
        let _ = writeln!(
            s,
            "| wall ÷ ideal under {limit}/min | {} | {} | – |",
            f(&w["wall_over_ideal_under_limit"], 2),
            f(&p["wall_over_ideal_under_limit"], 2)
        );
        let per_min = |v: &Value| match v["builds_per_minute"].as_f64() {
            Some(_) => f(&v["builds_per_minute"], 1),
            None => format!("{} (model)", f(&v["builds_per_minute_model"], 1)),
        };
        let _ = writeln!(
            s,
            "| builds created per minute, one token (measured over whole minutes) | {} | {} | – |",
            per_min(w),
            per_min(p)
        );
        let burst = |v: &Value, k: &str| {
            let x = f(&v["deadline_burst"][k], 1);
            if v["deadline_burst"]["measured"] == Value::Bool(false) && x != "–" { format!("{x} (model)") } else { x }
        };
        let n = w["deadline_burst"]["submissions"].as_u64().unwrap_or(500);
        let _ = writeln!(
            s,
            "| {n} submissions at once: minutes until the last build exists | {} | {} | – |",
            burst(w, "minutes_to_last_build"),
            burst(p, "minutes_to_last_build")
        );
        let _ = writeln!(
            s,
            "| {n} submissions at once: minutes until the last finished | {} | {} | – |",
            burst(w, "minutes_to_last_finished"),
            burst(p, "minutes_to_last_finished")
        );
        let _ = writeln!(
            s,
            "| submissions at once one token starts within the default test deadline ({} s; model) | {} | {} | – |",
            f(&w["default_test_deadline_secs"], 0),
            f(&w["burst_within_default_deadline"], 0),
            f(&p["burst_within_default_deadline"], 0)
        );
        let mut endpoints: Vec<String> = Vec::new();
        for v in [w, p, b] {
            if let Some(o) = v["by_endpoint"].as_object() {
                for k in o.keys() {
                    if !endpoints.contains(k) {
                        endpoints.push(k.clone());
                    }
                }
            }
        }
        endpoints.sort();
        for k in &endpoints {
            let cell = |v: &Value| f(&v["by_endpoint"][k]["per_job"], 3);
            let _ = writeln!(
                s,
                "| per job: `{}` | {} | {} | {} |",
                k.replace("/v2/organizations/{org}", "…"),
                cell(w),
                cell(p),
                cell(b)
            );
        }
        let sus = &e["sustainable"];
        let _ = writeln!(
            s,
            "| max concurrent {} s jobs under {limit}/min, one token (from measured rates) | {} | {} | {} |",
            f(&e["job_secs"], 0),
            f(&sus["webhooks"], 0),
            f(&sus["polling"], 0),
            f(&sus["baseline"], 0)
        );
        let _ = writeln!(
            s,
            "| max concurrent 60 s jobs under {limit}/min, one token (model) | {} | {} | {} |",
            f(&sus["60s"]["webhooks"], 0),
            f(&sus["60s"]["polling"], 0),
            f(&sus["60s"]["baseline"], 0)
        );
        let _ = writeln!(
            s,
            "| requests per 60 s job (baseline: fixed + one poll per 10 s) | {} | {} | {} |",
            f(&w["requests_per_job"], 3),
            f(&p["requests_per_job"], 3),
            f(&e["baseline_requests_per_60s_job"], 1)
        );
        let _ = writeln!(
            s,
            "\nAll three ran at once, each against its own simulator and token. benchkite's simulators enforce Buildkite's \
             defaults, {}/min per organization and {}/min per user (scope `rest_user`), so one token gets {limit}/min; the \
             controller runs with its default budget (180/min), which the server's `RateLimit-User-Limit` tightens. \
             benchkite's requests include its set-up (token scopes, cluster, creating its pipeline). The baseline's \
             simulator is explicitly unconstrained (both scopes {}/min: it counts without refusing; the launcher has no \
             budget and would only collect 429s), so its column is what it needs; its builds go to a pipeline it creates \
             first over REST whose step names the queue literally and skips the checkout (a `KERNELBOT_QUEUE` build env \
             routes nothing on Buildkite). The baseline polls every build from its creation, queued ones too, as N \
             independent submissions do. The KernelJobs set `timeoutSeconds` {} so that none times out in the backlog; \
             with the default deadline of a test job, the submissions beyond the row \"within the default test deadline\" \
             (builds per minute × (deadline − job duration)) would end TimedOut waiting for the budget. Builds per \
             minute: builds created in the whole minutes of the burst. Max \
             concurrency: benchkite ({limit} − poll lists/min) ÷ (other requests per job, set-up excluded) × job minutes; \
             baseline {limit} ÷ (polls per build-minute + fixed requests per job ÷ job minutes).\n",
            f(&e["org_limit_per_min"], 0),
            f(&e["user_limit_per_min"], 0),
            b["limits"]["user_per_min"],
            f(&w["kernel_job_timeout_secs"], 0)
        );
        timings(&mut s, "webhooks run", &w["controller_timings"]);
        timings(&mut s, "polling-only run", &p["controller_timings"]);
        targets.push((
            "requests per job ≤ 1.1 with webhooks".into(),
            f(&w["requests_per_job"], 3),
            le(&w["requests_per_job"], 1.1),
        ));
        targets.push((
            "requests per job ≤ 1.5 polling only".into(),
            f(&p["requests_per_job"], 3),
            le(&p["requests_per_job"], 1.5),
        ));
        targets.push((
            "≥ 10× fewer requests than the baseline for 60 s jobs (webhooks / polling)".into(),
            format!(
                "{}× / {}×",
                f(&e["ratio_60s_baseline_over_webhooks"], 1),
                f(&e["ratio_60s_baseline_over_polling"], 1)
            ),
            ge(&e["ratio_60s_baseline_over_webhooks"], 10.0)
                .zip(ge(&e["ratio_60s_baseline_over_polling"], 10.0))
                .map(|(a, b)| a && b),
        ));
    }

    let l = &sc["latency"];
    if l.is_object() {
        let _ = writeln!(
            s,
            "#### 2. Latency: steady {} jobs/s for {} s (achieved {}/s), then a burst of {}\n",
            f(&l["target_rate_per_sec"], 0),
            f(&l["steady_secs"], 0),
            f(&l["achieved_rate_per_sec"], 1),
            l["burst_size"]
        );
        let _ = writeln!(s, "| ms | jobs | p50 | p95 | p99 | max |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for (load, key) in [("steady", "steady"), ("burst", "burst")] {
            for (what, m) in [
                ("KernelJob created → build created", "create_to_build"),
                ("build finished (webhook sent) → status", "finish_to_status"),
            ] {
                let v = &l[key][m];
                let _ = writeln!(
                    s,
                    "| {what}, {load} | {} | {} | {} | {} | {} |",
                    v["n"],
                    f(&v["p50_ms"], 0),
                    f(&v["p95_ms"], 0),
                    f(&v["p99_ms"], 0),
                    f(&v["max_ms"], 0)
                );
            }
        }
        let _ = writeln!(
            s,
            "\nUnconstrained on purpose (this scenario measures the controller and the API server, not Buildkite): the \
             simulator's organization and user limits and `--buildkite-requests-per-minute` are all {}/min ({} requests, {} answered 429). \
             {} agents, {} ms jobs. Create time is taken by the client just before the create is sent; build times come \
             from the simulator (same clock, ms); status time is when a watch saw the finished phase.\n",
            l["rate_limit_per_min"], l["requests"], l["http_429"], l["agents"], l["job_duration_ms"]
        );
        timings(
            &mut s,
            "latency run (submit latency counts from creationTimestamp: 1 s resolution)",
            &l["controller_timings"],
        );
        for key in ["steady", "burst"] {
            targets.push((
                format!("p99 create → build created ≤ 250 ms ({key})"),
                f(&l[key]["create_to_build"]["p99_ms"], 0),
                le(&l[key]["create_to_build"]["p99_ms"], 250.0),
            ));
            targets.push((
                format!("p99 webhook → status ≤ 500 ms ({key})"),
                f(&l[key]["finish_to_status"]["p99_ms"], 0),
                le(&l[key]["finish_to_status"]["p99_ms"], 500.0),
            ));
        }
    }

    let fl = &sc["fleet"];
    if fl.is_object() {
        let _ = writeln!(
            s,
            "#### 3. Fleet convergence: {} GPU nodes × 8 GPUs → {} agent pods Running\n",
            fl["nodes"], fl["pods"]
        );
        let _ = writeln!(s, "| | median (s) | runs (s) |");
        let _ = writeln!(s, "|---|---:|---|");
        let runs = |v: &Value| {
            v.as_array().map(|a| a.iter().map(|x| f(x, 2)).collect::<Vec<_>>().join(", ")).unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "| benchkite: AgentPool applied → all Running | {} | {} |",
            f(&fl["controller_median_secs"], 2),
            runs(&fl["controller_secs"])
        );
        let _ = writeln!(
            s,
            "| plain kube-rs client creating the same pods ({} in flight) | {} | {} |",
            fl["write_concurrency"],
            f(&fl["baseline_median_secs"], 2),
            runs(&fl["baseline_secs"])
        );
        let _ = writeln!(s, "| ratio benchkite ÷ plain client | {} | |", f(&fl["ratio"], 2));
        let _ = writeln!(
            s,
            "\nRounds alternate (controller, then plain client); each starts from no pods. The controller is a fresh \
             process per round (fleet + KernelJobs, as the chart installs it), already synced (GpuNodes Ready) when the \
             pool is applied, and stopped before the plain client runs; the last round's controller runs scenario 4 \
             first.\n"
        );
        timings(&mut s, "first controller round", &fl["controller_timings"][0]);
        targets.push((
            "fleet convergence ≤ 1.25× the plain client".into(),
            format!("{}×", f(&fl["ratio"], 2)),
            le(&fl["ratio"], 1.25),
        ));
    }

    let fp = &sc["footprint"];
    if fp.is_object() {
        let _ = writeln!(
            s,
            "#### 4. Footprint: {} GPU nodes, {} agent pods, {} KernelJobs × {} KiB sources (one controller process, fleet + KernelJobs)\n",
            fp["nodes"],
            fp["pods"],
            fp["kernel_jobs"],
            fp["source_bytes_per_job"].as_u64().unwrap_or(0) / 1024
        );
        let _ = writeln!(s, "| after | phase (s) | peak RSS (MiB) | RSS (MiB) | CPU (s, cumulative) |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for ph in fp["phases"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                ph["phase"].as_str().unwrap_or("?"),
                f(&ph["secs"], 1),
                f(&ph["peak_rss_mib"], 1),
                f(&ph["rss_mib"], 1),
                f(&ph["cpu_secs"], 1)
            );
        }
        let _ = writeln!(
            s,
            "\n{} of {} KernelJobs Succeeded ({} finished within the {} s the run waits after creating them). \
             Buildkite unconstrained on purpose (simulator organization and user limits {}/min): this measures the controller.\n",
            fp["kernel_jobs_succeeded"],
            fp["kernel_jobs"],
            fp["kernel_jobs_finished"],
            fp["finish_wait_secs"],
            fp["limits"]["user_per_min"]
        );
        timings(&mut s, "footprint run", &fp["controller_timings"]);
        targets.push((
            "controller peak RSS ≤ 150 MiB (scenario 4)".into(),
            format!("{} MiB", f(&fp["peak_rss_mib"], 1)),
            le(&fp["peak_rss_mib"], 150.0),
        ));
    }

    let rn = &sc["runner"];
    if rn.is_object() {
        let _ = writeln!(s, "#### 5. Runner overhead (`examples/runner_overhead.rs`, {} rounds)\n", rn["rounds"]);
        for line in rn["output"].as_str().unwrap_or("").lines().filter(|l| l.starts_with('|')) {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(
            s,
            "\nOverhead of `benchkite run`: {} ms (median), against {} ms for merely starting a Python runner.\n",
            f(&rn["overhead_ms"], 2),
            f(&rn["python_floor_ms"], 2)
        );
    }

    for (k, v) in sc.as_object().into_iter().flatten().filter(|(k, _)| k.ends_with("_error")) {
        let _ = writeln!(s, "**Scenario `{}` failed:** {}\n", k.trim_end_matches("_error"), v.as_str().unwrap_or("?"));
    }
    if !targets.is_empty() {
        let _ = writeln!(s, "#### Targets (issue 8; reported, not enforced)\n");
        let _ = writeln!(s, "| target | measured | |");
        let _ = writeln!(s, "|---|---:|---|");
        for (t, v, ok) in &targets {
            let _ = writeln!(s, "| {t} | {v} | {} |", met(*ok));
        }
        let _ = writeln!(s);
    }
    let t = &r["timings_secs"];
    let _ = writeln!(
        s,
        "Reproduce: `make bench` (full) or `make bench-quick`; this run took {} s in all{}.",
        f(&t["total"], 0),
        if t["rerun"].is_null() { String::new() } else { format!(", the re-run {} s", f(&t["rerun"], 0)) }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_are_marked_met_or_missed() {
        let r = json!({
            "mode": "quick", "date": "2026-01-01", "machine": {"cores": 2, "memory_gib": 23.5},
            "controller_binary": "/x/target/debug/benchkite",
            "scenarios": {
                "fleet": {"nodes": 2, "pods": 16, "controller_median_secs": 2.0, "baseline_median_secs": 1.0, "ratio": 2.0,
                          "controller_secs": [2.0], "baseline_secs": [1.0], "write_concurrency": 32},
                "footprint": {"nodes": 2, "pods": 16, "kernel_jobs": 10, "source_bytes_per_job": 65536,
                              "peak_rss_mib": 80.0, "phases": []},
            },
            "timings_secs": {"total": 12.0},
        });
        let md = markdown(&r);
        assert!(md.contains("| fleet convergence ≤ 1.25× the plain client | 2.00× | **missed** |"), "{md}");
        assert!(md.contains("| controller peak RSS ≤ 150 MiB (scenario 4) | 80.0 MiB | met |"), "{md}");
        assert!(md.contains("**Debug build**"));
        assert!(!md.contains("Buildkite efficiency"), "absent scenarios print no table");
        assert!(!md.contains("Re-run on its own"));
        assert!(md.contains("this run took 12 s in all."), "{md}");
    }

    #[test]
    fn efficiency_names_the_limits_and_marks_modelled_figures() {
        let run = |per_min: Value, burst_measured: bool| {
            json!({
                "limits": {"org_per_min": 200, "user_per_min": 50}, "requests_per_job": 1.05, "requests": 1050,
                "setup_requests": 4, "http_429": 0, "finished": 1000, "wall_secs": 1200.0, "ideal_secs": 468.75,
                "wall_over_ideal": 2.56, "ideal_under_limit_secs": 1170.0, "wall_over_ideal_under_limit": 1.03,
                "builds_per_minute": per_min, "builds_per_minute_model": 47.5,
                "deadline_burst": {"submissions": 500, "measured": burst_measured,
                                   "minutes_to_last_build": 10.2, "minutes_to_last_finished": null},
            })
        };
        let r = json!({
            "mode": "full", "date": "2026-01-01", "machine": {"cores": 2},
            "scenarios": {"efficiency": {
                "jobs": 1000, "job_secs": 30.0, "agents": 64,
                "org_limit_per_min": 200, "user_limit_per_min": 50, "limit_per_min": 50.0,
                "webhooks": run(json!(48.0), true),
                "polling": run(Value::Null, false),
                "baseline": {"limits": {"org_per_min": 10_000_000, "user_per_min": 10_000_000}, "requests_per_job": 28.0},
            }},
            "timings_secs": {"total": 1.0},
        });
        let md = markdown(&r);
        assert!(md.contains("Buildkite's limits 200/org and 50/user per minute (one token: 50/min)"), "{md}");
        assert!(md.contains("| simulator limits (org / user per min) | 200 / 50 | 200 / 50 | 10000000 / 10000000 (counts, refuses nothing) |"), "{md}");
        assert!(
            md.contains(
                "| builds created per minute, one token (measured over whole minutes) | 48.0 | 47.5 (model) | – |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 500 submissions at once: minutes until the last build exists | 10.2 | 10.2 (model) | – |"),
            "{md}"
        );
        assert!(md.contains("| of which set-up (scopes, cluster, pipeline) | 4 | 4 | – |"), "{md}");
        assert!(md.contains("explicitly unconstrained"), "{md}");
    }

    #[test]
    fn merged_reruns_are_named_with_their_time() {
        let r = json!({
            "mode": "full", "date": "2026-01-01T10:00:00Z", "machine": {"cores": 2},
            "reruns": [
                {"date": "2026-01-01T11:00:00Z", "only": ["efficiency"]},
                {"date": "2026-01-02T11:00:00Z", "only": ["efficiency"], "git": "abc1234",
                 "controller_binary": "/w/target/debug/benchkite"},
            ],
            "scenarios": {},
            "timings_secs": {"total": 1800.0, "rerun": 700.0},
        });
        let md = markdown(&r);
        assert!(md.contains("Re-run on its own at 2026-01-01T11:00:00Z (same machine, same build; merged into this report): efficiency."), "{md}");
        assert!(md.contains("Re-run on its own at 2026-01-02T11:00:00Z (same machine, commit abc1234, controller `/w/target/debug/benchkite`, a debug build; merged into this report): efficiency."), "{md}");
        assert!(md.contains("this run took 1800 s in all, the re-run 700 s."), "{md}");
    }
}
