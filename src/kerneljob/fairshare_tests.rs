use super::*;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn pool(ready: i64, q: PoolQueueing) -> PoolView {
    PoolView { key: ("ns".into(), "p".into()), queueing: q, ready_agents: ready }
}

fn q() -> PoolQueueing {
    PoolQueueing { usage_half_life_minutes: 10, expected_job_seconds: 30, ..Default::default() }
}

fn job(key: &str, who: &str, created: i64, stage: Stage) -> JobView {
    JobView {
        key: key.into(),
        pool: ("ns".into(), "p".into()),
        submitter: who.into(),
        priority: 0,
        created: t(created),
        stage,
        runs: vec![],
    }
}

fn many(prefix: &str, who: &str, n: usize, created: i64) -> Vec<JobView> {
    (0..n).map(|i| job(&format!("{prefix}{i:03}"), who, created + i as i64, Stage::Waiting)).collect()
}

#[test]
fn two_new_submitters_alternate_instead_of_the_first_taking_every_agent() {
    let mut jobs = many("a", "alice", 10, 0);
    jobs.extend(many("b", "bob", 2, 100));
    let r = Admissions::default().round(&[pool(4, q())], &jobs, t(200));
    assert_eq!(r.admit, vec!["a000", "b000", "a001", "b001"]);
    assert_eq!(r.held.len(), 8);
    assert_eq!(r.held["a002"].0, 1);
    assert_eq!(r.held["a009"].0, 8);
}

#[test]
fn priority_comes_before_usage_and_age() {
    let mut jobs = many("a", "alice", 3, 0);
    let mut urgent = job("b-urgent", "bob", 50, Stage::Waiting);
    urgent.priority = 5;
    jobs.push(urgent);
    jobs.push(job("c-low", "carol", 60, Stage::Waiting));
    jobs.last_mut().unwrap().priority = -1;
    let r = Admissions::default().round(&[pool(1, q())], &jobs, t(100));
    assert_eq!(r.admit, vec!["b-urgent"]);
    let order: Vec<&str> = {
        let mut h: Vec<_> = r.held.iter().collect();
        h.sort_by_key(|(_, (p, _))| *p);
        h.into_iter().map(|(k, _)| k.as_str()).collect()
    };
    assert_eq!(order, vec!["a000", "a001", "a002", "c-low"], "carol's -1 goes last despite no usage");
}

#[test]
fn recent_usage_puts_a_busy_submitter_behind() {
    let mut busy = job("a-run", "alice", 0, Stage::Finished);
    busy.runs = vec![(t(0), Some(t(1000)))];
    let mut jobs = vec![busy, job("a-next", "alice", 10, Stage::Waiting), job("b-next", "bob", 900, Stage::Waiting)];
    let r = Admissions::default().round(&[pool(1, q())], &jobs, t(1000));
    assert_eq!(r.admit, vec!["b-next"], "bob has no usage");
    // The same run long ago has decayed below one expected job: age decides.
    jobs[0].runs = vec![(t(0), Some(t(100)))];
    let r = Admissions::default().round(&[pool(1, q())], &jobs, t(100 + 6 * 600));
    // 100 s halved 6 times = 1.6 s < bob's 0? No: bob has 0; alice 1.6 > 0: bob still first.
    assert_eq!(r.admit, vec!["b-next"]);
    // Both with the same decayed usage: the older job first.
    let mut jobs2 = jobs.clone();
    jobs2.push({
        let mut j = job("b-run", "bob", 0, Stage::Finished);
        j.runs = vec![(t(0), Some(t(100)))];
        j
    });
    let r = Admissions::default().round(&[pool(1, q())], &jobs2, t(100 + 6 * 600));
    assert_eq!(r.admit, vec!["a-next"]);
}

#[test]
fn a_running_job_counts_its_time_so_far() {
    let mut running = job("a-run", "alice", 0, Stage::Running);
    running.runs = vec![(t(0), None)];
    let jobs = vec![running, job("a-next", "alice", 1, Stage::Waiting), job("b-next", "bob", 50, Stage::Waiting)];
    let r = Admissions::default().round(&[pool(2, q())], &jobs, t(60));
    assert_eq!(r.admit, vec!["b-next"], "one agent is busy; bob's turn");
    assert_eq!(r.held["a-next"].0, 1);
}

#[test]
fn room_is_ready_agents_plus_ahead_minus_what_runs_waits_or_was_admitted() {
    let mut jobs =
        vec![job("r", "x", 0, Stage::Running), job("s", "x", 0, Stage::Submitted), job("f", "x", 0, Stage::Finished)];
    jobs.extend(many("w", "y", 10, 10));
    let mut adm = Admissions::default();
    let r = adm.round(&[pool(4, q())], &jobs, t(100));
    assert_eq!(r.admit.len(), 2, "4 ready - running - submitted");
    // Admitted jobs still Waiting hold their agents: nothing more next round.
    let r = adm.round(&[pool(4, q())], &jobs, t(101));
    assert!(r.admit.is_empty(), "{r:?}");
    assert!(adm.admitted("w000") && adm.admitted("w001"));
    // submitAhead lets two more wait in Buildkite.
    let r = adm.round(&[pool(4, PoolQueueing { submit_ahead: 2, ..q() })], &jobs, t(102));
    assert_eq!(r.admit, vec!["w002", "w003"]);
    // An admitted job seen Submitted is no longer pending admission; one never seen past
    // Waiting stops holding its agent after the TTL.
    jobs.iter_mut().find(|j| j.key == "w000").unwrap().stage = Stage::Submitted;
    let _ = adm.round(&[pool(4, q())], &jobs, t(103));
    assert!(!adm.admitted("w000"));
    assert!(adm.admitted("w001"));
    let r = adm.round(&[pool(4, q())], &jobs, t(100) + ADMITTED_TTL + SignedDuration::from_secs(5));
    // w001, w002 and w003 expired: 4 - r - s - w000 (Submitted) = 1 agent, for the oldest.
    assert_eq!(r.admit, vec!["w001"], "{r:?}");
    assert!(!adm.admitted("w002") && adm.admitted("w001"));
}

#[test]
fn held_jobs_get_positions_and_an_estimated_start_by_waves() {
    let jobs = many("a", "alice", 7, 0);
    let r = Admissions::default().round(&[pool(2, q())], &jobs, t(100));
    assert_eq!(r.admit.len(), 2);
    let pos: Vec<(i64, i64)> = (2..7)
        .map(|i| {
            let (p, eta) = r.held[&format!("a{i:03}")];
            (p, eta.duration_since(t(100)).as_secs())
        })
        .collect();
    // 2 agents, 30 s expected: positions 1-2 start in one job's time, 3-4 in two, 5 in three.
    assert_eq!(pos, vec![(1, 30), (2, 30), (3, 60), (4, 60), (5, 90)]);
}

#[test]
fn the_expected_duration_is_measured_once_three_runs_finished() {
    let mut jobs: Vec<JobView> = (0..3)
        .map(|i| {
            let mut j = job(&format!("done{i}"), "x", 0, Stage::Finished);
            j.runs = vec![(t(0), Some(t(10 + i)))];
            j
        })
        .collect();
    jobs.extend(many("a", "alice", 3, 50));
    let r = Admissions::default().round(&[pool(1, q())], &jobs, t(100));
    let (_, eta) = r.held["a002"];
    assert_eq!(eta.duration_since(t(100)).as_secs(), 22, "position 2 on 1 agent: 2 x the median 11 s");
}

#[test]
fn per_submitter_limits_hold_back_without_taking_turns() {
    let mut jobs = many("a", "alice", 5, 0);
    jobs.extend(many("b", "bob", 5, 100));
    let limited = PoolQueueing { max_running_per_submitter: 1, ..q() };
    let mut adm = Admissions::default();
    let r = adm.round(&[pool(4, limited.clone())], &jobs, t(200));
    assert_eq!(r.admit, vec!["a000", "b000"], "one each, two agents stay free");
    assert_eq!(r.held.len(), 8);
    let rate = PoolQueueing { max_admissions_per_minute: 2, ..q() };
    let mut adm = Admissions::default();
    let r = adm.round(&[pool(10, rate.clone())], &jobs, t(200));
    assert_eq!(r.admit.len(), 4, "two each per minute: {r:?}");
    // They ran and finished; within the minute nothing more is admitted, after it two more each.
    for j in jobs.iter_mut().filter(|j| r.admit.contains(&j.key)) {
        j.stage = Stage::Finished;
    }
    assert!(adm.round(&[pool(10, rate.clone())], &jobs, t(230)).admit.is_empty());
    assert_eq!(adm.round(&[pool(10, rate)], &jobs, t(261)).admit.len(), 4);
}

#[test]
fn other_pools_jobs_do_not_count() {
    let mut other = job("o", "alice", 0, Stage::Running);
    other.pool = ("ns".into(), "other".into());
    let jobs = vec![other, job("a", "alice", 1, Stage::Waiting)];
    assert_eq!(Admissions::default().round(&[pool(1, q())], &jobs, t(10)).admit, vec!["a"]);
}

/// Issue 19's scenario: A queues 100 jobs, then B queues 5; the pool admits 10 per window (10
/// agents, 30 s jobs). B's 5 start within the first two windows, and A's positions decrease.
#[test]
fn a_late_small_submitter_starts_within_two_windows() {
    let mut jobs = many("a", "A", 100, 0);
    jobs.extend(many("b", "B", 5, 5));
    let mut adm = Admissions::default();
    let mut started_b = Vec::new();
    let mut last_position = i64::MAX;
    for window in 0..3i64 {
        let now = t(10 + window * 30);
        // The previous window's jobs ran 30 s and finished.
        for j in jobs.iter_mut().filter(|j| j.stage == Stage::Running) {
            j.stage = Stage::Finished;
            j.runs = vec![(now - SignedDuration::from_secs(30), Some(now))];
        }
        let r = adm.round(&[pool(10, q())], &jobs, now);
        assert_eq!(r.admit.len(), 10, "window {window}");
        for k in &r.admit {
            if k.starts_with('b') {
                started_b.push(window);
            }
            if let Some(j) = jobs.iter_mut().find(|j| &j.key == k) {
                j.stage = Stage::Running;
                j.runs = vec![(now, None)];
            }
        }
        let p = r.held["a099"].0;
        assert!(p < last_position, "a099's position decreases: {p} after {last_position}");
        last_position = p;
    }
    assert_eq!(started_b.len(), 5, "{started_b:?}");
    assert!(started_b.iter().all(|w| *w <= 1), "B's jobs started in windows {started_b:?}");
}

#[test]
fn shown_positions_are_exact_then_rounded_up() {
    let cases = [(1, 1), (10, 10), (11, 20), (20, 20), (95, 100), (100, 100), (101, 200), (1234, 1300)];
    for (p, shown) in cases {
        assert_eq!(shown_position(p), shown, "{p}");
    }
}
