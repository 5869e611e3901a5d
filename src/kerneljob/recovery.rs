//! The recovery look-up: whether the next attempt of a job already has a build (after a
//! restart, an ambiguous create, or for a job deleted or finished while its create may have
//! gone through), so no attempt ever gets a second build and no stray build runs on.
//!
//! Bounded whatever the number of builds in Buildkite: org-wide listings can be refused as
//! too deep ("Listing builds this deep is not supported"), so everything is scoped to one
//! pipeline; the broad listing of a pipeline is sent at most once per pass (not once per
//! round: with thousands of builds in the window it is truncated every time); after it,
//! each round settles a few runs with one narrow request each (the attempt branch names
//! exactly one build); settled runs leave the set; every request is sent at `Refresh`
//! priority, below new submissions and cancels.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::board;
use super::controller::{JobCtx, pipeline_of};
use super::decide::{active_attempt, next_attempt_number};
use super::machine::{self, meta};
use super::memory::AttemptState;
use super::queue::JobKey;
use crate::buildkite::{self, Build, BuildQuery, Listing, Priority};

/// Runs looked up one by one per round and pipeline (one narrow request each).
pub const RUN_LOOKUPS_PER_ROUND: usize = 4;
/// Pages of one pipeline-scoped listing (recovery, poller): never an unbounded walk.
pub const LIST_PAGES: u32 = 5;

/// A job whose next attempt may already have a build.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub key: JobKey,
    pub run_id: String,
    /// The job names its own branch: find it by meta-data instead of its attempt branch.
    pub own_branch: bool,
    pub created: Timestamp,
}

/// Lists builds (the Buildkite client in production, a fake in tests).
pub trait Lister {
    fn list(&self, query: &BuildQuery) -> impl Future<Output = buildkite::Result<Listing<Build>>> + Send;
}

struct Refresh<'a>(&'a buildkite::Client);

impl Lister for Refresh<'_> {
    async fn list(&self, query: &BuildQuery) -> buildkite::Result<Listing<Build>> {
        // Below new submissions: a look-up never holds the budget new jobs need.
        self.0.list_builds(query, Priority::Refresh).await
    }
}

/// One pipeline's look-up across rounds.
#[derive(Clone, Debug, Default)]
pub struct Pass {
    /// The broad listing was sent (whatever it answered): not again in this pass.
    pub broad_tried: bool,
}

/// What a round settled.
#[derive(Debug, Default)]
pub struct Round {
    /// Builds found for wanted runs.
    pub found: Vec<Build>,
    /// Runs settled: found, or known to have no build.
    pub settled: HashSet<String>,
    /// A request failed: back off before the next round.
    pub failed: bool,
    /// Requests sent.
    pub requests: u32,
}

fn record(round: &mut Round, builds: Vec<Build>, wanted: &[&Wanted], instance: &str) {
    for build in builds {
        if !board::is_ours(&build, instance) {
            continue;
        }
        if let Some(run) = board::run_id_of(&build).map(str::to_string)
            && wanted.iter().any(|w| w.run_id == run)
        {
            round.settled.insert(run);
            round.found.push(build);
        }
    }
}

/// One round of the look-up in one pipeline.
pub async fn look_up<L: Lister>(
    lister: &L,
    instance: &str,
    pipeline: &str,
    wanted: &[Wanted],
    pass: &mut Pass,
) -> Round {
    let mut round = Round::default();
    let all: Vec<&Wanted> = wanted.iter().collect();
    if !pass.broad_tried && wanted.len() > RUN_LOOKUPS_PER_ROUND {
        pass.broad_tried = true;
        // One pipeline-scoped listing since the oldest job settles many at once, unless more
        // builds than a few pages were created in that window.
        let oldest = wanted.iter().map(|w| w.created).min().unwrap_or_else(Timestamp::now);
        let query = BuildQuery {
            pipeline: Some(pipeline.to_string()),
            created_from: Some(oldest - SignedDuration::from_secs(300)),
            exclude_jobs: true,
            per_page: Some(100),
            max_pages: Some(LIST_PAGES),
            ..Default::default()
        };
        round.requests += 1;
        match lister.list(&query).await {
            Ok(listing) => {
                record(&mut round, listing.items, &all, instance);
                if !listing.truncated {
                    round.settled.extend(wanted.iter().map(|w| w.run_id.clone()));
                    return round;
                }
            }
            // A pipeline that does not exist (a managed one is created at the first
            // submit) holds no build.
            Err(e) if e.status() == Some(404) => {
                round.settled.extend(wanted.iter().map(|w| w.run_id.clone()));
                return round;
            }
            // Refused (too deep) or failed: the narrow requests still settle the runs.
            Err(e) => tracing::warn!(%pipeline, error = %e, "recovery listing failed; looking runs up one by one"),
        }
    }
    let open: Vec<&Wanted> =
        wanted.iter().filter(|w| !round.settled.contains(&w.run_id)).take(RUN_LOOKUPS_PER_ROUND).collect();
    for w in open {
        let mut query = BuildQuery {
            pipeline: Some(pipeline.to_string()),
            exclude_jobs: true,
            per_page: Some(10),
            max_pages: Some(1),
            ..Default::default()
        };
        if w.own_branch {
            query.meta_data = vec![(meta::RUN_ID.to_string(), w.run_id.clone())];
        } else {
            query.branch = Some(board::attempt_branch(instance, &w.run_id));
        }
        round.requests += 1;
        match lister.list(&query).await {
            Ok(listing) => {
                record(&mut round, listing.items, &[w], instance);
                round.settled.insert(w.run_id.clone());
            }
            Err(e) if e.status() == Some(404) => {
                round.settled.insert(w.run_id.clone());
            }
            Err(e) => {
                tracing::warn!(%pipeline, error = %e, "recovery look-up failed; retrying later");
                round.failed = true;
                break;
            }
        }
    }
    round
}

/// The jobs to look up now, by pipeline (oldest first); clears the flag of jobs that need
/// no look-up any more (gone, following a build, settled meanwhile).
fn wanted_by_pipeline(ctx: &JobCtx) -> BTreeMap<String, Vec<Wanted>> {
    let mut groups: BTreeMap<String, Vec<Wanted>> = BTreeMap::new();
    for key in ctx.memory.unverified() {
        let Some((ns, name)) = key.split_once('/') else {
            ctx.memory.set_unverified(&key, false);
            continue;
        };
        let Some(job) = ctx.jobs.get(&ObjectRef::new(name).within(ns)) else {
            ctx.memory.set_unverified(&key, false);
            continue;
        };
        let Some(uid) = job.uid() else { continue };
        let status = ctx.current_status(&job);
        let run_id = machine::run_id(&uid, next_attempt_number(&status));
        let absent =
            ctx.memory.read(&key, &uid, |m| m.attempts.get(&run_id) == Some(&AttemptState::Absent)).unwrap_or(false);
        // Following a build, already found or known absent, or finished after following
        // one (it never created the next attempt): nothing to look up.
        if active_attempt(&status).is_some()
            || ctx.board.get(&run_id).is_some()
            || absent
            || (status.phase.is_finished() && status.build.is_some())
        {
            ctx.memory.set_unverified(&key, false);
            ctx.wake(&key);
            continue;
        }
        // Without a pipeline there is nowhere to look; the job says why it waits.
        let Some(pipeline) = pipeline_of(&job, ctx, &status) else { continue };
        groups.entry(pipeline).or_default().push(Wanted {
            key: key.clone(),
            run_id,
            own_branch: job.spec.branch.is_some(),
            created: super::controller::created(&job),
        });
    }
    for wanted in groups.values_mut() {
        wanted.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)));
    }
    groups
}

pub async fn recovery_loop(ctx: Arc<JobCtx>) {
    let mut passes: HashMap<String, Pass> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let groups = wanted_by_pipeline(&ctx);
        // A pipeline with nothing left to look up ends its pass.
        passes.retain(|p, _| groups.contains_key(p));
        let mut failed = false;
        for (pipeline, wanted) in groups {
            let pass = passes.entry(pipeline.clone()).or_default();
            let round = look_up(&Refresh(&ctx.bk), &ctx.config.instance, &pipeline, &wanted, pass).await;
            let now = Timestamp::now();
            for build in &round.found {
                ctx.board.update(build, now);
            }
            for w in wanted.iter().filter(|w| round.settled.contains(&w.run_id)) {
                let uid = board::uid_of_run(&w.run_id).unwrap_or_default().to_string();
                let on_board = ctx.board.get(&w.run_id).is_some();
                ctx.memory.with(&w.key, &uid, |m| {
                    if !on_board {
                        m.attempts.insert(w.run_id.clone(), AttemptState::Absent);
                    }
                    m.unverified = false;
                });
                ctx.wake(&w.key);
            }
            tracing::info!(%pipeline, jobs = wanted.len(), settled = round.settled.len(), requests = round.requests, "recovery look-up");
            failed |= round.failed;
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A pipeline with `builds` (newest first, as Buildkite lists them), 100 per page.
    struct Fake {
        builds: Vec<Build>,
        broad_fails: bool,
        queries: Mutex<Vec<BuildQuery>>,
    }

    impl Lister for Fake {
        async fn list(&self, query: &BuildQuery) -> buildkite::Result<Listing<Build>> {
            self.queries.lock().unwrap().push(query.clone());
            if let Some(branch) = &query.branch {
                let items: Vec<Build> =
                    self.builds.iter().filter(|b| b.branch.as_ref() == Some(branch)).cloned().collect();
                return Ok(Listing { items, truncated: false, pages: 1 });
            }
            if self.broad_fails {
                return Err(buildkite::Error::Api {
                    endpoint: "list_builds",
                    status: 400,
                    message: "Listing builds this deep is not supported. Please narrow your query".into(),
                });
            }
            let pages = query.max_pages.unwrap_or(1) as usize;
            let items: Vec<Build> = self.builds.iter().take(pages * 100).cloned().collect();
            Ok(Listing { truncated: self.builds.len() > items.len(), items, pages: pages as u32 })
        }
    }

    fn build(run: &str) -> Build {
        Build { number: 1, branch: Some(board::attempt_branch("bk", run)), ..Default::default() }
    }

    fn wanted(n: usize) -> Vec<Wanted> {
        (0..n)
            .map(|i| Wanted {
                key: format!("ns/j{i}"),
                run_id: format!("uid{i}-1"),
                own_branch: false,
                created: Timestamp::UNIX_EPOCH,
            })
            .collect()
    }

    /// Drives passes until every run is settled, as the loop does (settled runs leave).
    async fn drive(fake: &Fake, mut open: Vec<Wanted>) -> (usize, HashSet<String>) {
        let mut pass = Pass::default();
        let mut found = HashSet::new();
        let mut rounds = 0;
        while !open.is_empty() {
            rounds += 1;
            assert!(rounds < 1000, "the look-up does not finish");
            let round = look_up(fake, "bk", "p", &open, &mut pass).await;
            found.extend(round.found.iter().filter_map(|b| board::run_id_of(b).map(str::to_string)));
            open.retain(|w| !round.settled.contains(&w.run_id));
        }
        (rounds, found)
    }

    #[tokio::test]
    async fn three_thousand_finished_builds_in_the_window_do_not_stall_the_look_up() {
        // 3,000 other builds in the window: the broad listing is truncated every time.
        let mut builds: Vec<Build> = (0..3000).map(|i| build(&format!("other{i}-1"))).collect();
        // Two of the wanted runs have builds, deep in the window.
        builds.push(build("uid3-1"));
        builds.push(build("uid17-1"));
        let fake = Fake { builds, broad_fails: false, queries: Mutex::new(vec![]) };
        let (rounds, found) = drive(&fake, wanted(20)).await;
        let queries = fake.queries.lock().unwrap();
        let broad = queries.iter().filter(|q| q.branch.is_none()).count();
        assert_eq!(broad, 1, "the truncated broad listing is sent once per pass, not once per round");
        assert_eq!(queries.len(), 1 + 20, "then one narrow request per run");
        assert_eq!(rounds, 20usize.div_ceil(RUN_LOOKUPS_PER_ROUND));
        assert_eq!(found, HashSet::from(["uid3-1".to_string(), "uid17-1".to_string()]));
    }

    #[tokio::test]
    async fn a_refused_broad_listing_falls_back_to_narrow_look_ups() {
        let fake = Fake { builds: vec![build("uid2-1")], broad_fails: true, queries: Mutex::new(vec![]) };
        let (_, found) = drive(&fake, wanted(9)).await;
        assert_eq!(found, HashSet::from(["uid2-1".to_string()]));
        assert_eq!(fake.queries.lock().unwrap().iter().filter(|q| q.branch.is_none()).count(), 1);
    }

    #[tokio::test]
    async fn a_short_window_settles_everything_with_one_listing() {
        let fake =
            Fake { builds: vec![build("uid1-1"), build("x-1")], broad_fails: false, queries: Mutex::new(vec![]) };
        let (rounds, found) = drive(&fake, wanted(10)).await;
        assert_eq!((rounds, fake.queries.lock().unwrap().len()), (1, 1));
        assert_eq!(found, HashSet::from(["uid1-1".to_string()]));
    }

    #[test]
    fn a_build_that_claims_a_run_id_by_meta_data_is_not_found_for_it() {
        let w = wanted(1);
        let wanted: Vec<&Wanted> = w.iter().collect();
        let mut claim = Build { number: 9, branch: Some("main".into()), ..Default::default() };
        claim.meta_data.insert(meta::RUN_ID.into(), "uid0-1".into());
        claim.meta_data.insert(meta::INSTANCE.into(), "bk".into());
        // Its build env (fixed at create) names the attempt it really is.
        claim.env.insert("KERNELBOT_RUN_ID".into(), "attacker-1".into());
        let mut round = Round::default();
        record(&mut round, vec![claim.clone()], &wanted, "bk");
        assert!(round.found.is_empty() && round.settled.is_empty(), "a claim settles nothing");
        // The real own-branch build of that attempt is found.
        claim.env.insert("KERNELBOT_RUN_ID".into(), "uid0-1".into());
        record(&mut round, vec![claim], &wanted, "bk");
        assert_eq!(round.found.len(), 1);
        assert!(round.settled.contains("uid0-1"));
    }
}
