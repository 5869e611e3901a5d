//! The Markdown tables, from the JSON results alone (so they can be regenerated).

use std::fmt::Write as _;

use serde_json::Value;

pub(crate) fn f(v: &Value, digits: usize) -> String {
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

pub(crate) fn le(v: &Value, limit: f64) -> Option<bool> {
    v.as_f64().filter(|x| x.is_finite()).map(|x| x <= limit)
}

pub(crate) fn ge(v: &Value, limit: f64) -> Option<bool> {
    v.as_f64().filter(|x| x.is_finite()).map(|x| x >= limit)
}

/// A write figure's total, `≥` when a category was not recorded (a lower bound).
fn total(v: &Value) -> String {
    match v["total"].as_f64() {
        Some(_) if v["complete"] == Value::Bool(false) => format!("≥ {}", f(&v["total"], 2)),
        Some(_) => f(&v["total"], 2),
        None => "–".into(),
    }
}

/// Writes per KernelJob: the total and its split, or why there is none.
fn writes(v: &Value) -> String {
    if !v["total"].is_number() {
        return match v["error"].as_str() {
            Some(_) => "– (see below)".into(),
            None => "–".into(),
        };
    }
    let part = |k: &str| if v[k].is_null() { "? (not audited)".to_string() } else { f(&v[k], 2) };
    format!(
        "{} ({} object, {} status, {} Events, {} ConfigMaps)",
        total(v),
        part("kerneljob"),
        part("kerneljob_status"),
        part("events"),
        part("configmaps")
    )
}

/// `total ≤ limit`: met or missed when complete; a lower bound above the limit is missed,
/// one below it measures nothing.
fn writes_target(v: &Value, limit: f64) -> Option<bool> {
    let x = v["total"].as_f64().filter(|x| x.is_finite())?;
    match v["complete"] {
        Value::Bool(false) if x <= limit => None,
        _ => Some(x <= limit),
    }
}

/// The controller's own timing histograms (means), for "where does the time go".
pub(crate) fn timings(s: &mut String, title: &str, v: &Value) {
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
        let all =
            if w["api_writes_all_runs"].is_object() { &w["api_writes_all_runs"] } else { &p["api_writes_all_runs"] };
        let _ = writeln!(
            s,
            "| Kubernetes API writes per KernelJob besides its create, by this run's controller (audit log, its User-Agent) | {} | {} | – |",
            writes(&w["controller_writes_per_job"]),
            writes(&p["controller_writes_per_job"])
        );
        if all.is_object() {
            let _ = writeln!(
                s,
                "| the same, both runs together ÷ all {} jobs: API server's counters (every client; they cannot be split by run) | {} | ↖ both runs | – |",
                all["jobs"],
                writes(&all["counters"])
            );
            let _ = writeln!(
                s,
                "| the same, both runs together ÷ all {} jobs: audit log, the two controllers (every client: {}) | {} | ↖ both runs | – |",
                all["jobs"],
                total(&all["audit_all_writers"]),
                writes(&all["audit_controllers"])
            );
        }
        for (mode, v) in [("webhooks", w), ("polling", p)] {
            let c = &v["controller_writes_per_job"];
            if c.is_object() {
                targets.push((
                    format!("API writes per KernelJob besides the create ≤ 3, this run's controller ({mode})"),
                    total(c),
                    writes_target(c, 3.0),
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
        if all.is_object() || w["controller_writes_per_job"].is_object() {
            let _ = writeln!(
                s,
                "API writes: requests answered 2xx that create, update or patch (server-side apply included) a \
                 KernelJob (object or status), an Event (core or events.k8s.io) or a ConfigMap (the job's result.json), \
                 received from when both runs start creating their jobs until both saw all theirs finish (plus {} s for \
                 the last Events), deletions after it. Each run's controller is told apart in the API server's audit log \
                 (`e2e/cluster/audit-policy.yaml`, metadata only) by its User-Agent `benchkite/<version> (<POD_NAME>)`, \
                 the bench giving each run its own POD_NAME. The API server's counters (`apiserver_request_total`, verbs \
                 POST, PUT, PATCH, APPLY) count every client's writes server-wide, so they give both runs together; \
                 they agree with the audit log's count of every client. The ≤ 3 target uses each run's own figure.{}\n",
                f(&all["settle_secs"], 0),
                match all["not_audited"].as_array().filter(|a| !a.is_empty()) {
                    Some(a) => format!(
                        " **Not audited by this cluster's policy** (the API server counted writes the audit log has none \
                         of; a cluster created before the policy covered them: recreate it): {}; the totals are lower \
                         bounds.",
                        a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
                    ),
                    None => String::new(),
                }
            );
            for (mode, v) in [
                ("webhooks", &w["controller_writes_per_job"]),
                ("polling only", &p["controller_writes_per_job"]),
                ("both runs, audit log", &all["audit_controllers"]),
                ("both runs, counters", &all["counters"]),
            ] {
                if let Some(e) = v["error"].as_str() {
                    let _ = writeln!(s, "API writes ({mode}) not measured: {e}\n");
                }
            }
        }
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

    if sc["graphql"].is_object() {
        crate::graphql::markdown(&mut s, &sc["graphql"], &mut targets);
    }

    for (k, v) in sc.as_object().into_iter().flatten().filter(|(k, _)| k.ends_with("_error")) {
        let _ = writeln!(s, "**Scenario `{}` failed:** {}\n", k.trim_end_matches("_error"), v.as_str().unwrap_or("?"));
    }
    if !targets.is_empty() {
        let _ = writeln!(s, "#### Targets (issue 8; GraphQL burst: issue 21; reported, not enforced)\n");
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
    fn api_writes_are_reported_per_run_and_for_both_runs() {
        let split = |total: f64, complete: bool| {
            json!({"total": total, "complete": complete, "kerneljob": 1.0, "kerneljob_status": 1.5,
                   "events": 0.5, "configmaps": if complete { json!(0.5) } else { Value::Null }})
        };
        let all = json!({
            "jobs": 120, "settle_secs": 2.0, "not_audited": [],
            "counters": split(5.5, true), "audit_controllers": split(5.5, true), "audit_all_writers": split(5.6, true),
        });
        let run = |own: Value| json!({"limits": {}, "controller_writes_per_job": own, "api_writes_all_runs": all});
        let r = json!({
            "mode": "quick", "date": "2026-01-01", "machine": {"cores": 2},
            "scenarios": {"efficiency": {
                "jobs": 60, "webhooks": run(split(2.5, true)), "polling": run(split(3.5, true)), "baseline": {"limits": {}},
            }},
            "timings_secs": {"total": 1.0},
        });
        let md = markdown(&r);
        assert!(md.contains("| Kubernetes API writes per KernelJob besides its create, by this run's controller (audit log, its User-Agent) | 2.50 (1.00 object, 1.50 status, 0.50 Events, 0.50 ConfigMaps) | 3.50 (1.00 object, 1.50 status, 0.50 Events, 0.50 ConfigMaps) | – |"), "{md}");
        assert!(md.contains("both runs together ÷ all 120 jobs: API server's counters (every client; they cannot be split by run) | 5.50 ("), "{md}");
        assert!(md.contains("audit log, the two controllers (every client: 5.60) | 5.50 ("), "{md}");
        assert!(
            md.contains(
                "| API writes per KernelJob besides the create ≤ 3, this run's controller (webhooks) | 2.50 | met |"
            ),
            "{md}"
        );
        assert!(md.contains("| API writes per KernelJob besides the create ≤ 3, this run's controller (polling) | 3.50 | **missed** |"), "{md}");
        assert!(!md.contains("Not audited"), "{md}");

        // An old cluster policy: ConfigMaps not audited, the totals are lower bounds.
        let mut old = r.clone();
        let e = &mut old["scenarios"]["efficiency"];
        e["webhooks"]["controller_writes_per_job"] = split(2.0, false);
        e["polling"]["controller_writes_per_job"] = split(3.2, false);
        e["webhooks"]["api_writes_all_runs"]["not_audited"] = json!(["configmaps"]);
        e["polling"]["controller_writes_per_job"]["total"] = json!(3.2);
        let md = markdown(&old);
        assert!(md.contains("| ≥ 2.00 (1.00 object, 1.50 status, 0.50 Events, ? (not audited) ConfigMaps) |"), "{md}");
        assert!(
            md.contains("(webhooks) | ≥ 2.00 | not measured |"),
            "a lower bound under the limit proves nothing: {md}"
        );
        assert!(md.contains("(polling) | ≥ 3.20 | **missed** |"), "a lower bound over it is missed: {md}");
        assert!(md.contains("**Not audited by this cluster's policy**"), "{md}");
        assert!(md.contains("recreate it): configmaps;"), "{md}");

        // A run whose controller the log never saw says why.
        let mut err = r.clone();
        err["scenarios"]["efficiency"]["polling"]["controller_writes_per_job"] =
            json!({"error": "no write by User-Agent x"});
        let md = markdown(&err);
        assert!(md.contains("| – (see below) | – |"), "{md}");
        assert!(md.contains("API writes (polling only) not measured: no write by User-Agent x"), "{md}");
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
