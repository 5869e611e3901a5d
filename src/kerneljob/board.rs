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
    /// Its run id comes from what the build was created with (its attempt branch, or its
    /// env `KERNELBOT_RUN_ID`), not from meta-data alone (which a running job can rewrite).
    pub confirmed: bool,
}

/// Builds of one pipeline that are not finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub count: usize,
    pub oldest: Option<Timestamp>,
    /// Some are still scheduled (or not known to run).
    pub waiting: bool,
}

#[derive(Debug, Default)]
pub struct Board {
    builds: Mutex<HashMap<String, Entry>>,
    /// Run id → the build id its attempt recorded: no other build is taken for it.
    pins: Mutex<HashMap<String, String>>,
}

/// Where a build's run id comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Its attempt branch `benchkite/<instance>/<run id>` (fixed at create).
    Branch,
    /// Its build env `KERNELBOT_RUN_ID` (fixed at create).
    Env,
    /// Its meta-data `benchkite.dev/run-id` only: a running job can rewrite it.
    MetaData,
}

/// Build env holding the run id (set at create, immutable).
const RUN_ID_ENV: &str = "KERNELBOT_RUN_ID";

/// The branch of an attempt's build: `benchkite/<instance>/<run id>`. One branch per
/// attempt, so no pipeline setting that works per branch ("Skip intermediate builds",
/// "Cancel intermediate builds", docs "Skipping builds"/"Canceling builds") can skip or
/// cancel another job's build, and the build is identified by what it was created with:
/// the branch is fixed at creation (a running job can rewrite meta-data, never its build's
/// branch), and webhook bodies without `meta_data` still carry it.
pub fn attempt_branch(instance: &str, run_id: &str) -> String {
    format!("{BRANCH_PREFIX}{instance}/{run_id}")
}

/// First segment of every branch benchkite builds on.
pub const BRANCH_PREFIX: &str = "benchkite/";

/// The run id a build carries (its idempotency key), if benchkite created it: from its
/// attempt branch, else (a job that names its own branch) from its build env
/// `KERNELBOT_RUN_ID` when the snapshot carries it, else from its meta-data.
pub fn run_id_of(build: &Build) -> Option<&str> {
    identity(build).map(|(run, _)| run)
}

/// A build's run id and where it comes from: its attempt branch, else its build env (when
/// the snapshot carries it), else its meta-data. A build whose env names another run id
/// than its meta-data is identified by its env.
pub fn identity(build: &Build) -> Option<(&str, Identity)> {
    if let Some(run) = build
        .branch
        .as_deref()
        .and_then(|b| b.strip_prefix(BRANCH_PREFIX))
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, run)| run)
        .filter(|run| !run.is_empty())
    {
        return Some((run, Identity::Branch));
    }
    if let Some(run) = build.env.get(RUN_ID_ENV).filter(|r| !r.is_empty()) {
        return Some((run, Identity::Env));
    }
    build.meta_data.get(meta::RUN_ID).map(|r| (r.as_str(), Identity::MetaData))
}

/// Whether two build ids name different builds (an empty id is unknown).
fn different(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && a != b
}

/// Whether this installation created the build: its attempt branch names `instance`, or
/// (a job that names its own branch) its meta-data does.
pub fn is_ours(build: &Build, instance: &str) -> bool {
    let by_branch = build
        .branch
        .as_deref()
        .and_then(|b| b.strip_prefix(BRANCH_PREFIX))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(inst, run)| inst == instance && !run.is_empty());
    by_branch || build.meta_data.get(meta::INSTANCE).is_some_and(|i| i == instance)
}

/// The KernelJob UID in a run id (`<uid>-<attempt>`).
pub fn uid_of_run(run_id: &str) -> Option<&str> {
    let (uid, attempt) = run_id.rsplit_once('-')?;
    (!uid.is_empty() && !attempt.is_empty() && attempt.chars().all(|c| c.is_ascii_digit())).then_some(uid)
}

/// What the board keeps of a build: all but its environment, which nothing reads back and
/// which carries the job's whole evaluation payload (tens of KiB per build).
fn slim(build: &Build) -> Build {
    Build { env: Default::default(), ..build.clone() }
}

impl Board {
    /// Records a snapshot; true when it was news.
    ///
    /// Identity: a run id whose attempt recorded a build id ([`Board::pin`]) takes that build
    /// only; otherwise the first build seen for a run id keeps it, unless a later one is
    /// confirmed by what it was created with and the first is not.
    pub fn update(&self, build: &Build, now: Timestamp) -> bool {
        let Some((run_id, how)) = identity(build) else { return false };
        let confirmed = how != Identity::MetaData;
        if self.pins.lock().ok().and_then(|p| p.get(run_id).cloned()).is_some_and(|pin| different(&pin, &build.id)) {
            return false;
        }
        let Ok(mut builds) = self.builds.lock() else { return false };
        if let Some(entry) = builds.get(run_id)
            && different(&entry.build.id, &build.id)
        {
            if entry.confirmed || !confirmed {
                return false;
            }
            // A build that only claimed this run id by meta-data yields to the real one.
            builds.remove(run_id);
        }
        match builds.get_mut(run_id) {
            Some(entry) if !is_newer(&entry.build, build) => {
                // Same snapshot, now confirmed (a direct read carries the env).
                let news = confirmed && !entry.confirmed;
                entry.confirmed |= confirmed;
                news
            }
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
                if merged.pipeline_slug().is_none() {
                    merged.pipeline = entry.build.pipeline.clone().or_else(|| {
                        entry
                            .build
                            .pipeline_slug()
                            .map(|slug| crate::buildkite::PipelineRef { slug: slug.to_string(), ..Default::default() })
                    });
                }
                if merged.branch.is_none() {
                    merged.branch = entry.build.branch.clone();
                }
                // Webhook bodies may leave times out: a time once known stays known (the
                // decision records a build by its age).
                merged.created_at = merged.created_at.or(entry.build.created_at);
                merged.started_at = merged.started_at.or(entry.build.started_at);
                if merged.id.is_empty() {
                    merged.id = entry.build.id.clone();
                }
                if merged.graphql_id.is_none() {
                    merged.graphql_id = entry.build.graphql_id.clone();
                }
                *entry = Entry { build: merged, seen: now, confirmed: entry.confirmed || confirmed };
                true
            }
            None => {
                builds.insert(run_id.to_string(), Entry { build: slim(build), seen: now, confirmed });
                true
            }
        }
    }

    /// The attempt `run_id` recorded build `build_id`: from now on no other build is taken
    /// for it (whatever its meta-data claims), and one on the board is dropped.
    pub fn pin(&self, run_id: &str, build_id: &str) {
        if build_id.is_empty() {
            return;
        }
        if let Ok(mut pins) = self.pins.lock() {
            pins.insert(run_id.to_string(), build_id.to_string());
        }
        if let Ok(mut builds) = self.builds.lock()
            && builds.get(run_id).is_some_and(|e| different(&e.build.id, build_id))
        {
            builds.remove(run_id);
        }
    }

    /// Drops the board's build for `run_id` if it is `build_id` (a claim that did not hold).
    pub fn forget_build(&self, run_id: &str, build_id: &str) {
        if let Ok(mut builds) = self.builds.lock()
            && builds.get(run_id).is_some_and(|e| e.build.id == build_id)
        {
            builds.remove(run_id);
        }
    }

    pub fn get(&self, run_id: &str) -> Option<Entry> {
        self.builds.lock().ok()?.get(run_id).cloned()
    }

    pub fn forget(&self, run_id: &str) {
        if let Ok(mut b) = self.builds.lock() {
            b.remove(run_id);
        }
        if let Ok(mut p) = self.pins.lock() {
            p.remove(run_id);
        }
    }

    /// Snapshots of the builds not yet finished.
    pub fn unfinished(&self) -> Vec<Build> {
        let Ok(b) = self.builds.lock() else { return Vec::new() };
        b.values().filter(|e| !e.build.state.is_terminal()).map(|e| e.build.clone()).collect()
    }

    /// Builds not yet finished, and the oldest creation time among them.
    pub fn in_flight(&self) -> (usize, Option<Timestamp>) {
        let Ok(b) = self.builds.lock() else { return (0, None) };
        let live: Vec<&Entry> = b.values().filter(|e| !e.build.state.is_terminal()).collect();
        (live.len(), live.iter().filter_map(|e| e.build.created_at).min())
    }

    /// The pipelines of builds not yet finished: per pipeline, the oldest creation time and
    /// whether any of them is not known to run yet (a lost `build.running` must be caught).
    pub fn in_flight_by_pipeline(&self) -> HashMap<String, InFlight> {
        let mut out: HashMap<String, InFlight> = HashMap::new();
        let Ok(b) = self.builds.lock() else { return out };
        for e in b.values().filter(|e| !e.build.state.is_terminal()) {
            let Some(slug) = e.build.pipeline_slug() else { continue };
            let f = out.entry(slug.to_string()).or_default();
            f.count += 1;
            if let Some(c) = e.build.created_at {
                f.oldest = Some(f.oldest.map_or(c, |o| o.min(c)));
            }
            f.waiting |= rank(&e.build.state) < rank(&BuildState::Running);
        }
        out
    }

    /// Ids of the unfinished builds of `pipeline` not heard of since `before`, the longest
    /// quiet first, at most `max`.
    pub fn quiet_in_flight(&self, pipeline: &str, before: Timestamp, max: usize) -> Vec<String> {
        let Ok(b) = self.builds.lock() else { return Vec::new() };
        let mut quiet: Vec<(&Timestamp, &str)> = b
            .values()
            .filter(|e| !e.build.state.is_terminal() && e.seen < before && !e.build.id.is_empty())
            .filter(|e| e.build.pipeline_slug() == Some(pipeline))
            .map(|e| (&e.seen, e.build.id.as_str()))
            .collect();
        quiet.sort();
        quiet.into_iter().take(max).map(|(_, id)| id.to_string()).collect()
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
                signal: j.signal.clone(),
                signal_reason: j.signal_reason.clone(),
                retried: j.retried || j.retried_in_job_id.is_some(),
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
    fn identity_comes_from_the_attempt_branch() {
        let branch = attempt_branch("prod", "0a1b-c2d3-2");
        assert_eq!(branch, "benchkite/prod/0a1b-c2d3-2");
        let mut b = Build { branch: Some(branch), ..Default::default() };
        assert_eq!(run_id_of(&b), Some("0a1b-c2d3-2"));
        assert!(is_ours(&b, "prod"));
        assert!(!is_ours(&b, "staging"), "another installation's build");
        // A job that rewrites its build's meta-data cannot claim another run id.
        b.meta_data.insert(meta::RUN_ID.into(), "victim-1".into());
        b.meta_data.insert(meta::INSTANCE.into(), "staging".into());
        assert_eq!(run_id_of(&b), Some("0a1b-c2d3-2"));
        // A job that names its own branch: meta-data is all there is.
        let own = Build {
            branch: Some("main".into()),
            meta_data: [
                (meta::RUN_ID.to_string(), "u-1".to_string()),
                (meta::INSTANCE.to_string(), "prod".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        assert_eq!(run_id_of(&own), Some("u-1"));
        assert!(is_ours(&own, "prod"));
        assert!(!is_ours(&Build { branch: Some("benchkite/prod/".into()), ..Default::default() }, "prod"));
        assert_eq!(run_id_of(&Build { branch: Some("benchkite/prod".into()), ..Default::default() }), None);
        assert_eq!(uid_of_run("0a1b-c2d3-12"), Some("0a1b-c2d3"));
        assert_eq!(uid_of_run("nodash"), None);
        assert_eq!(uid_of_run("a-b-x"), None);
    }

    #[test]
    fn in_flight_builds_by_pipeline() {
        let board = Board::default();
        let on = |p: &str, state: BuildState, run: &str, at: &str| Build {
            pipeline: Some(crate::buildkite::PipelineRef { slug: p.into(), ..Default::default() }),
            created_at: Some(at.parse().unwrap()),
            ..build(state, run)
        };
        board.update(&on("a", BuildState::Running, "r1", "2026-01-01T00:00:10Z"), now());
        board.update(&on("a", BuildState::Running, "r2", "2026-01-01T00:00:05Z"), now());
        board.update(&on("b", BuildState::Scheduled, "r3", "2026-01-01T00:00:00Z"), now());
        board.update(&on("c", BuildState::Passed, "r4", "2026-01-01T00:00:00Z"), now());
        let f = board.in_flight_by_pipeline();
        assert_eq!(f.len(), 2, "finished builds need no polling");
        assert_eq!(
            f["a"],
            InFlight { count: 2, oldest: Some("2026-01-01T00:00:05Z".parse().unwrap()), waiting: false }
        );
        assert!(f["b"].waiting, "a scheduled build may have started unseen");
        // A webhook body without the pipeline keeps the one the board knew.
        let mut hook = build(BuildState::Passed, "r1");
        hook.pipeline = None;
        board.update(&hook, now());
        assert_eq!(board.get("r1").unwrap().build.pipeline_slug(), Some("a"));
        // ... and the times it knew (a build is recorded in status by its age).
        assert_eq!(board.get("r1").unwrap().build.created_at, Some("2026-01-01T00:00:10Z".parse().unwrap()));
    }

    #[test]
    fn quiet_in_flight_builds_longest_quiet_first() {
        let board = Board::default();
        let at = |t: &str| -> Timestamp { t.parse().unwrap() };
        let on = |p: &str, state: BuildState, run: &str| Build {
            id: format!("id-{run}"),
            pipeline: Some(crate::buildkite::PipelineRef { slug: p.into(), ..Default::default() }),
            ..build(state, run)
        };
        board.update(&on("a", BuildState::Running, "r1"), at("2026-01-01T00:00:20Z"));
        board.update(&on("a", BuildState::Scheduled, "r2"), at("2026-01-01T00:00:10Z"));
        board.update(&on("a", BuildState::Running, "r3"), at("2026-01-01T00:01:00Z"));
        board.update(&on("a", BuildState::Passed, "r4"), at("2026-01-01T00:00:00Z"));
        board.update(&on("b", BuildState::Running, "r5"), at("2026-01-01T00:00:00Z"));
        let before = at("2026-01-01T00:00:30Z");
        // Heard of since `before` (r3), finished (r4) or of another pipeline (r5): not read.
        assert_eq!(board.quiet_in_flight("a", before, 10), ["id-r2", "id-r1"]);
        assert_eq!(board.quiet_in_flight("a", before, 1), ["id-r2"], "the longest quiet first, at most max");
        assert_eq!(board.quiet_in_flight("b", before, 10), ["id-r5"]);
        assert!(board.quiet_in_flight("c", before, 10).is_empty());
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

    fn with_id(id: &str, state: BuildState, run: &str) -> Build {
        Build { id: id.into(), ..build(state, run) }
    }

    #[test]
    fn the_build_env_identifies_an_own_branch_build_over_its_meta_data() {
        let mut b = with_id("b1", BuildState::Running, "victim-1");
        b.branch = Some("main".into());
        assert_eq!(identity(&b), Some(("victim-1", Identity::MetaData)));
        b.env.insert(RUN_ID_ENV.into(), "mine-1".into());
        assert_eq!(identity(&b), Some(("mine-1", Identity::Env)), "the env is fixed at create");
        b.branch = Some(attempt_branch("prod", "branch-1"));
        assert_eq!(identity(&b), Some(("branch-1", Identity::Branch)));
        let board = Board::default();
        b.branch = Some("main".into());
        board.update(&b, now());
        assert!(board.get("victim-1").is_none(), "a rewritten run-id meta-data claims nothing");
        assert!(board.get("mine-1").is_some_and(|e| e.confirmed));
    }

    #[test]
    fn a_recorded_build_is_the_only_one_taken_for_its_attempt() {
        let board = Board::default();
        let mut real = with_id("real", BuildState::Running, "r1");
        real.env.insert(RUN_ID_ENV.into(), "r1".into());
        board.update(&real, now());
        board.pin("r1", "real");
        // Another build claiming r1: by meta-data, by env, even by an attempt branch.
        let claim = with_id("forged", BuildState::Passed, "r1");
        let mut by_env = claim.clone();
        by_env.env.insert(RUN_ID_ENV.into(), "r1".into());
        let by_branch = Build { branch: Some(attempt_branch("prod", "r1")), ..claim.clone() };
        for c in [&claim, &by_env, &by_branch] {
            assert!(!board.update(c, now()));
            assert_eq!(board.get("r1").map(|e| e.build.id), Some("real".to_string()));
        }
        // The recorded build moves on.
        assert!(board.update(&with_id("real", BuildState::Passed, "r1"), now()));
        assert_eq!(board.get("r1").map(|e| e.build.state), Some(BuildState::Passed));
        // Pinning drops another build already on the board (a claim seen before the record).
        let board = Board::default();
        board.update(&with_id("forged", BuildState::Passed, "r2"), now());
        board.pin("r2", "real");
        assert!(board.get("r2").is_none());
        assert!(board.update(&with_id("real", BuildState::Running, "r2"), now()), "a status seed is taken");
        board.forget("r2");
        assert!(board.update(&with_id("other", BuildState::Running, "r2"), now()), "forget drops the pin too");
    }

    #[test]
    fn before_a_record_the_first_build_keeps_a_run_id_unless_a_confirmed_one_comes() {
        let board = Board::default();
        // A claim by meta-data first (a webhook body without env): on the board, unconfirmed.
        board.update(&with_id("forged", BuildState::Passed, "r1"), now());
        assert!(board.get("r1").is_some_and(|e| !e.confirmed));
        // The real build (its create response or a listing carries its env) replaces it.
        let mut real = with_id("real", BuildState::Scheduled, "r1");
        real.env.insert(RUN_ID_ENV.into(), "r1".into());
        assert!(board.update(&real, now()));
        assert!(board.get("r1").is_some_and(|e| e.confirmed && e.build.id == "real"));
        // A claim after it changes nothing, even a later-looking one.
        assert!(!board.update(&with_id("forged", BuildState::Passed, "r1"), now()));
        assert_eq!(board.get("r1").map(|e| e.build.id), Some("real".to_string()));
        // A webhook body of the real build without env keeps it confirmed.
        assert!(board.update(&with_id("real", BuildState::Running, "r1"), now()));
        assert!(board.get("r1").is_some_and(|e| e.confirmed));
    }

    #[test]
    fn a_direct_read_confirms_a_build_and_a_failed_claim_is_dropped() {
        let board = Board::default();
        board.update(&with_id("b1", BuildState::Running, "r1"), now());
        let mut read = with_id("b1", BuildState::Running, "r1");
        read.env.insert(RUN_ID_ENV.into(), "r1".into());
        assert!(board.update(&read, now()), "confirmation is news");
        assert!(board.get("r1").is_some_and(|e| e.confirmed));
        board.update(&with_id("b2", BuildState::Running, "r2"), now());
        board.forget_build("r2", "other");
        assert!(board.get("r2").is_some(), "only the named build is dropped");
        board.forget_build("r2", "b2");
        assert!(board.get("r2").is_none());
    }
}
