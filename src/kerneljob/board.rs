//! The build board: the newest known snapshot of every build benchkite follows, keyed by
//! run id, fed by webhooks, the poller and direct reads. Deliveries are at-least-once and
//! unordered: a snapshot only ever moves forward.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;

use super::machine::{BuildView, JobView, meta};
use crate::buildkite::{Build, BuildState};

/// How far along a build is; snapshots never move back.
fn rank(state: &BuildState) -> u8 {
    match state {
        BuildState::Creating | BuildState::Scheduled | BuildState::Waiting => 1,
        BuildState::Running | BuildState::Started | BuildState::Blocked => 2,
        BuildState::Failing | BuildState::Canceling => 3,
        s if s.is_terminal() => 4,
        _ => 0,
    }
}

/// Whether `new` carries news compared to `old`.
pub fn is_newer(old: &Build, new: &Build) -> bool {
    let (ro, rn) = (rank(&old.state), rank(&new.state));
    if rn != ro {
        return rn > ro;
    }
    // Same stage: take it if it knows more (a later job state, meta-data set meanwhile).
    let done = |b: &Build| b.jobs.iter().filter(|j| j.state.as_ref().is_some_and(|s| s.is_terminal())).count();
    done(new) > done(old)
        || (new.jobs.len() > old.jobs.len())
        || new.meta_data.keys().any(|k| !old.meta_data.contains_key(k))
        || (new.finished_at.is_some() && old.finished_at.is_none())
}

/// Entry of the board.
#[derive(Clone, Debug)]
pub struct Entry {
    pub build: Build,
    /// When benchkite last learned something about the build.
    pub seen: Timestamp,
}

#[derive(Debug, Default)]
pub struct Board {
    builds: Mutex<HashMap<String, Entry>>,
}

/// The run id a build carries (its idempotency key), if benchkite created it.
pub fn run_id_of(build: &Build) -> Option<&str> {
    build.meta_data.get(meta::RUN_ID).map(String::as_str)
}

/// What the board keeps of a build: all but its environment, which nothing reads back and
/// which carries the job's whole evaluation payload (tens of KiB per build).
fn slim(build: &Build) -> Build {
    Build { env: Default::default(), ..build.clone() }
}

impl Board {
    /// Records a snapshot; true when it was news.
    pub fn update(&self, build: &Build, now: Timestamp) -> bool {
        let Some(run_id) = run_id_of(build) else { return false };
        let Ok(mut builds) = self.builds.lock() else { return false };
        match builds.get_mut(run_id) {
            Some(entry) if !is_newer(&entry.build, build) => false,
            Some(entry) => {
                // Keep what the older snapshot knew that the newer one lacks (webhook bodies
                // carry no jobs for build events).
                let mut merged = slim(build);
                // Webhook build bodies carry no jobs: keep the older snapshot's jobs, but only
                // from the same stage (jobs of a scheduled build say nothing about a failed one).
                if merged.jobs.is_empty() && rank(&entry.build.state) == rank(&build.state) {
                    merged.jobs = entry.build.jobs.clone();
                }
                for (k, v) in &entry.build.meta_data {
                    merged.meta_data.entry(k.clone()).or_insert_with(|| v.clone());
                }
                *entry = Entry { build: merged, seen: now };
                true
            }
            None => {
                builds.insert(run_id.to_string(), Entry { build: slim(build), seen: now });
                true
            }
        }
    }

    pub fn get(&self, run_id: &str) -> Option<Entry> {
        self.builds.lock().ok()?.get(run_id).cloned()
    }

    pub fn forget(&self, run_id: &str) {
        if let Ok(mut b) = self.builds.lock() {
            b.remove(run_id);
        }
    }

    /// Builds not yet finished, and the oldest creation time among them.
    pub fn in_flight(&self) -> (usize, Option<Timestamp>) {
        let Ok(b) = self.builds.lock() else { return (0, None) };
        let live: Vec<&Entry> = b.values().filter(|e| !e.build.state.is_terminal()).collect();
        (live.len(), live.iter().filter_map(|e| e.build.created_at).min())
    }

    pub fn len(&self) -> usize {
        self.builds.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The machine's view of a build.
pub fn view(build: &Build) -> BuildView {
    BuildView {
        state: build.state.as_str().to_string(),
        jobs: build
            .jobs
            .iter()
            .filter(|j| j.kind.as_deref().is_none_or(|k| k == "script"))
            .map(|j| JobView {
                state: j.state.as_ref().map(|s| s.as_str().to_string()).unwrap_or_default(),
                exit_status: j.exit_status,
                signal_reason: j.signal_reason.clone(),
            })
            .collect(),
        meta_data: build.meta_data.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkite::{Job, JobState};

    fn build(state: BuildState, run: &str) -> Build {
        Build {
            number: 1,
            state,
            meta_data: [(meta::RUN_ID.to_string(), run.to_string())].into(),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::UNIX_EPOCH
    }

    #[test]
    fn moves_forward_only() {
        let board = Board::default();
        assert!(board.update(&build(BuildState::Scheduled, "r1"), now()));
        assert!(board.update(&build(BuildState::Passed, "r1"), now()));
        assert!(!board.update(&build(BuildState::Running, "r1"), now()), "a late build.running is ignored");
        assert!(!board.update(&build(BuildState::Passed, "r1"), now()), "duplicates are not news");
        assert_eq!(board.get("r1").unwrap().build.state, BuildState::Passed);
        assert!(!board.update(&Build::default(), now()), "builds without a run id are not ours");
    }

    #[test]
    fn keeps_jobs_and_meta_data_from_older_snapshots() {
        let board = Board::default();
        let mut running = build(BuildState::Running, "r1");
        running.jobs = vec![Job { state: Some(JobState::Running), ..Default::default() }];
        running.meta_data.insert("early".into(), "1".into());
        board.update(&running, now());
        let mut later = build(BuildState::Running, "r1");
        later.meta_data.insert("benchkite.result".into(), "{}".into());
        assert!(board.update(&later, now()), "a new meta-data key is news");
        let got = board.get("r1").unwrap().build;
        assert_eq!(got.jobs.len(), 1, "webhook build bodies lack jobs: same-stage jobs are kept");
        assert!(got.meta_data.contains_key("benchkite.result") && got.meta_data.contains_key("early"));
        board.update(&build(BuildState::Failed, "r1"), now());
        assert!(board.get("r1").unwrap().build.jobs.is_empty(), "a running job says nothing about a failed build");
    }

    #[test]
    fn same_stage_with_more_news_is_taken() {
        let board = Board::default();
        let mut a = build(BuildState::Failed, "r1");
        board.update(&a, now());
        a.jobs = vec![Job { state: Some(JobState::Failed), exit_status: Some(-1), ..Default::default() }];
        assert!(board.update(&a, now()));
        assert_eq!(view(&board.get("r1").unwrap().build).jobs[0].exit_status, Some(-1));
    }

    #[test]
    fn the_payload_carrying_environment_is_not_kept() {
        let board = Board::default();
        let mut b = build(BuildState::Scheduled, "r1");
        b.env.insert("KERNELBOT_PAYLOAD".into(), "x".repeat(65536));
        board.update(&b, now());
        assert!(board.get("r1").unwrap().build.env.is_empty());
        b.state = BuildState::Running;
        assert!(board.update(&b, now()));
        let kept = board.get("r1").unwrap().build;
        assert!(kept.env.is_empty() && kept.state == BuildState::Running);
        assert_eq!(kept.meta_data.get(meta::RUN_ID).map(String::as_str), Some("r1"));
    }

    #[test]
    fn in_flight_counts() {
        let board = Board::default();
        board.update(&build(BuildState::Running, "a"), now());
        board.update(&build(BuildState::Passed, "b"), now());
        assert_eq!(board.in_flight().0, 1);
    }
}
