//! Fair queueing for pools with `spec.queueing` (pure): which waiting KernelJobs to admit
//! (submit to Buildkite) now, and where the others stand.
//!
//! A pool admits as many jobs as it has free agents (Ready agents plus `submitAhead`, minus
//! the jobs it already runs, has submitted or has admitted). The next job is the most
//! deserving one: highest priority first, then the submitter with the least recent usage
//! (GPU-seconds of its jobs' runs, halved every `usageHalfLifeMinutes`, plus the expected
//! duration of each job it has admitted or submitted that has not started), then the oldest.
//! Each admission charges its submitter the expected duration at once, so two submitters
//! with no history alternate instead of the first taking every free agent. This is Kueue's
//! admission fair sharing, per pool.
//!
//! Per-submitter limits (`maxRunningPerSubmitter`, `maxAdmissionsPerMinute`) hold a job back
//! without taking its turn from others.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::agentpool::PoolQueueing;

/// A pool: (namespace, name).
pub type PoolKey = (String, String);

/// Where a job is, as far as admission is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Pending with no build: may be admitted.
    Waiting,
    /// A build waits for an agent.
    Submitted,
    Running,
    Finished,
}

/// One KernelJob as admission sees it.
#[derive(Clone, Debug)]
pub struct JobView {
    pub key: String,
    pub pool: PoolKey,
    pub submitter: String,
    pub priority: i32,
    pub created: Timestamp,
    pub stage: Stage,
    /// Its attempts' runs on an agent: (started, finished; `None` while running).
    pub runs: Vec<(Timestamp, Option<Timestamp>)>,
}

/// A pool with queueing.
#[derive(Clone, Debug)]
pub struct PoolView {
    pub key: PoolKey,
    pub queueing: PoolQueueing,
    pub ready_agents: i64,
}

/// What one round decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Round {
    /// Jobs to submit now.
    pub admit: Vec<String>,
    /// Jobs held: (position, 1 = next; estimated start).
    pub held: HashMap<String, (i64, Timestamp)>,
}

/// Memory between rounds: jobs admitted but not yet seen past `Waiting`, and recent
/// admissions per submitter (for `maxAdmissionsPerMinute`).
#[derive(Clone, Debug, Default)]
pub struct Admissions {
    pending: HashMap<String, Timestamp>,
    recent: HashMap<(PoolKey, String), VecDeque<Timestamp>>,
}

/// How long an admitted job may stay `Waiting` (its submission may have failed, or its
/// status not been written yet) before it no longer holds an agent.
const ADMITTED_TTL: SignedDuration = SignedDuration::from_secs(120);

impl Admissions {
    /// Whether the job was admitted and may be submitted.
    pub fn admitted(&self, key: &str) -> bool {
        self.pending.contains_key(key)
    }

    /// One round over every pool with queueing.
    pub fn round(&mut self, pools: &[PoolView], jobs: &[JobView], now: Timestamp) -> Round {
        // Forget admissions the jobs have moved past, or that are too old to hold an agent.
        let waiting: HashSet<&str> =
            jobs.iter().filter(|j| j.stage == Stage::Waiting).map(|j| j.key.as_str()).collect();
        self.pending.retain(|k, at| waiting.contains(k.as_str()) && now.duration_since(*at) < ADMITTED_TTL);
        for times in self.recent.values_mut() {
            while times.front().is_some_and(|t| now.duration_since(*t) >= SignedDuration::from_secs(60)) {
                times.pop_front();
            }
        }
        self.recent.retain(|_, t| !t.is_empty());
        let mut round = Round::default();
        for pool in pools {
            let mine: Vec<&JobView> = jobs.iter().filter(|j| j.pool == pool.key).collect();
            self.pool_round(pool, &mine, now, &mut round);
        }
        round
    }

    fn pool_round(&mut self, pool: &PoolView, jobs: &[&JobView], now: Timestamp, round: &mut Round) {
        let q = &pool.queueing;
        let expected = typical_seconds(jobs, now).unwrap_or(f64::from(q.expected_job_seconds.max(1)));
        let half_life = f64::from(q.usage_half_life_minutes.max(1)) * 60.0;
        let mut usage: BTreeMap<&str, f64> = BTreeMap::new();
        let mut active: BTreeMap<&str, i64> = BTreeMap::new();
        let mut occupied = 0i64;
        let mut candidates: BTreeMap<&str, Vec<&JobView>> = BTreeMap::new();
        for j in jobs {
            let u = usage.entry(j.submitter.as_str()).or_default();
            for (start, end) in &j.runs {
                let end = end.unwrap_or(now);
                let ran = secs(end.duration_since(*start)).max(0.0);
                let age = secs(now.duration_since(end)).max(0.0);
                *u += ran * 0.5f64.powf(age / half_life);
            }
            let admitted = j.stage == Stage::Waiting && self.pending.contains_key(&j.key);
            match j.stage {
                Stage::Running => {
                    occupied += 1;
                    *active.entry(j.submitter.as_str()).or_default() += 1;
                }
                Stage::Submitted => {
                    occupied += 1;
                    *u += expected;
                    *active.entry(j.submitter.as_str()).or_default() += 1;
                }
                Stage::Waiting if admitted => {
                    occupied += 1;
                    *u += expected;
                    *active.entry(j.submitter.as_str()).or_default() += 1;
                }
                Stage::Waiting => candidates.entry(j.submitter.as_str()).or_default().push(j),
                Stage::Finished => {}
            }
        }
        // Each submitter's own order: priority, then age, then name.
        let mut heads: BTreeMap<&str, VecDeque<&JobView>> = candidates
            .into_iter()
            .map(|(s, mut v)| {
                v.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.created.cmp(&b.created)).then(a.key.cmp(&b.key)));
                (s, v.into_iter().collect())
            })
            .collect();
        let mut room = pool.ready_agents + i64::from(q.submit_ahead) - occupied;
        let capacity = pool.ready_agents.max(1);
        let mut position = 0i64;
        // Submitters held back by their own limits: skipped while admitting (they do not take
        // a turn from others); their jobs still get positions in turn.
        let mut blocked: HashSet<&str> = HashSet::new();
        loop {
            let pick = heads
                .iter()
                .filter_map(|(s, v)| v.front().map(|j| (*s, *j)))
                .filter(|(s, _)| room <= 0 || !blocked.contains(s))
                .min_by(|(sa, a), (sb, b)| {
                    b.priority
                        .cmp(&a.priority)
                        .then(usage.get(sa).copied().unwrap_or(0.0).total_cmp(&usage.get(sb).copied().unwrap_or(0.0)))
                        .then(a.created.cmp(&b.created))
                        .then(a.key.cmp(&b.key))
                });
            let Some((s, job)) = pick else {
                if room > 0 && !blocked.is_empty() {
                    // Only limited submitters are left: no more admissions this round.
                    room = 0;
                    continue;
                }
                break;
            };
            if room > 0 {
                let recent = self.recent.get(&(pool.key.clone(), s.to_string())).map_or(0, VecDeque::len);
                let over_running = q.max_running_per_submitter > 0
                    && active.get(s).copied().unwrap_or(0) >= i64::from(q.max_running_per_submitter);
                let over_rate = q.max_admissions_per_minute > 0
                    && i64::try_from(recent).unwrap_or(i64::MAX) >= i64::from(q.max_admissions_per_minute);
                if over_running || over_rate {
                    blocked.insert(s);
                    continue;
                }
                round.admit.push(job.key.clone());
                self.pending.insert(job.key.clone(), now);
                self.recent.entry((pool.key.clone(), s.to_string())).or_default().push_back(now);
                *active.entry(s).or_default() += 1;
                room -= 1;
            } else {
                position += 1;
                let waves = (position + capacity - 1) / capacity;
                let eta = now + SignedDuration::from_secs_f64(expected * waves as f64);
                round.held.insert(job.key.clone(), (position, eta));
            }
            *usage.entry(s).or_default() += expected;
            if let Some(v) = heads.get_mut(s) {
                v.pop_front();
            }
        }
    }
}

fn secs(d: SignedDuration) -> f64 {
    d.as_secs_f64()
}

/// The median duration of the pool's runs that finished in the last hour (at least three).
fn typical_seconds(jobs: &[&JobView], now: Timestamp) -> Option<f64> {
    let mut d: Vec<f64> = jobs
        .iter()
        .flat_map(|j| j.runs.iter())
        .filter_map(|(s, e)| e.map(|e| (s, e)))
        .filter(|(_, e)| now.duration_since(*e) < SignedDuration::from_secs(3600))
        .map(|(s, e)| secs(e.duration_since(*s)).max(0.0))
        .collect();
    if d.len() < 3 {
        return None;
    }
    d.sort_by(f64::total_cmp);
    Some(d[d.len() / 2].max(1.0))
}

/// The position a status shows: exact up to 10, then rounded up to tens up to 100, then to
/// hundreds (a job far back is not rewritten at every admission ahead of it).
pub fn shown_position(p: i64) -> i64 {
    match p {
        ..=10 => p,
        11..=100 => (p + 9) / 10 * 10,
        _ => (p + 99) / 100 * 100,
    }
}

#[cfg(test)]
#[path = "fairshare_tests.rs"]
mod tests;
