//! Creates and follows builds through Buildkite's GraphQL API (issue 21), end to end: the
//! real controller against the local cluster and the simulator's GraphQL endpoint (its
//! points budget, per-user window, 429s and refusals as documented), with REST as the
//! fallback per operation. Jobs run the chaos rig's scripted stand-in (fast).
//!
//! Every other e2e test runs with a token that has no GraphQL access: the controller is
//! refused (403) and everything works over REST; this file turns access on.

use std::time::Duration;

use anyhow::{Result, ensure};
use benchkite::api::KernelJob;
use benchkite_e2e::chaos::{CREATE, ChaosRig, RigOptions, audit, create_jobs};
use benchkite_e2e::wait_until;
use buildkite_sim::config::GraphqlConfig;
use kube::Api;
use serde_json::Value;

const SLEEP_MS: u64 = 300;

fn stats(rig: &ChaosRig) -> Value {
    rig.sim.graphql_stats()
}

fn n(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// GraphQL creates executed by the simulator.
fn graphql_creates(rig: &ChaosRig) -> u64 {
    n(&stats(rig), &["by_operation", "buildCreate", "requests"])
}

fn rest_creates(rig: &ChaosRig) -> u64 {
    rig.sim.counters().endpoint(CREATE).status(201)
}

/// Waits for every job, then checks one build per attempt, none lost, no REST 429.
async fn settle(rig: &ChaosRig, jobs: usize, what: &str) -> Result<Vec<KernelJob>> {
    let finished = rig.wait_all_finished(jobs, Duration::from_secs(240)).await?;
    let builds = rig.builds().await?;
    let a = audit(&finished, &builds, true);
    a.ensure_clean().map_err(|e| e.context(format!("{what}: {a:?}")))?;
    ensure!(a.builds == a.attempts, "{what}: {} builds for {} attempts", a.builds, a.attempts);
    let rl = rig.sim.rate_limit_stats();
    ensure!(rl.rejected == 0, "{what}: {} REST requests answered 429", rl.rejected);
    Ok(finished)
}

fn graphql_rig(points: GraphqlConfig) -> RigOptions {
    RigOptions { agents: 16, graphql: Some(points), ..Default::default() }
}

/// With GraphQL access, builds are created through `buildCreate` (2 points each), never
/// twice, under the documented budget (per-user 5,000 points per 5 minutes) without a 429.
#[tokio::test]
async fn a_burst_goes_through_graphql() -> Result<()> {
    let (_client, rig) = ChaosRig::start("gql-burst", graphql_rig(GraphqlConfig::default())).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let jobs = 30;
    create_jobs(&api, "g", &rig.queue, 0..jobs, SLEEP_MS).await?;
    settle(&rig, jobs, "burst").await?;
    let s = stats(&rig);
    let (gql, rest) = (graphql_creates(&rig), rest_creates(&rig));
    println!("graphql burst: {gql} GraphQL creates, {rest} REST creates, stats {s}");
    ensure!(n(&s, &["rejected_429"]) == 0, "GraphQL 429s: {s}");
    ensure!(n(&s, &["rejected_invalid"]) == 0 && n(&s, &["rejected_auth"]) == 0, "refused queries: {s}");
    // Before the first GraphQL answer the budget sends one request at a time; a create
    // that finds both budgets cold may go over REST.
    ensure!(gql + rest >= jobs as u64, "{gql} + {rest} creates for {jobs} jobs");
    ensure!(rest <= 2, "{rest} creates went over REST with GraphQL available");
    rig.delete().await
}

/// The token has no GraphQL access: one refusal (403), then everything over REST for the
/// back-off, and every job succeeds.
#[tokio::test]
async fn a_token_without_graphql_works_over_rest() -> Result<()> {
    let (_client, rig) = ChaosRig::start("gql-refused", RigOptions { agents: 8, ..Default::default() }).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let jobs = 10;
    create_jobs(&api, "r", &rig.queue, 0..jobs, SLEEP_MS).await?;
    settle(&rig, jobs, "refused").await?;
    let s = stats(&rig);
    println!("graphql refused: stats {s}");
    ensure!(graphql_creates(&rig) == 0, "a GraphQL create without access: {s}");
    ensure!(n(&s, &["rejected_auth"]) >= 1, "GraphQL was never tried: {s}");
    ensure!(n(&s, &["rejected_auth"]) <= 2, "GraphQL was tried again during the back-off: {s}");
    ensure!(rest_creates(&rig) == jobs as u64, "REST creates");
    rig.delete().await
}

/// A budget our own burst spends: the client sees it go from the answers' headers and moves
/// creates to REST before GraphQL would refuse one (no 429), without a duplicate.
#[tokio::test]
async fn a_spent_budget_moves_creates_to_rest_without_a_429() -> Result<()> {
    // 80 points: about 36 creates of 2 points within our 90 % share.
    let points = GraphqlConfig { points_limit: 80, user_points_limit: 0, ..Default::default() };
    let (_client, rig) = ChaosRig::start("gql-spent", graphql_rig(points)).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let jobs = 60;
    create_jobs(&api, "s", &rig.queue, 0..jobs, SLEEP_MS).await?;
    settle(&rig, jobs, "spent").await?;
    let s = stats(&rig);
    let (gql, rest) = (graphql_creates(&rig), rest_creates(&rig));
    println!("graphql spent: {gql} GraphQL creates, {rest} REST creates, stats {s}");
    ensure!(n(&s, &["rejected_429"]) == 0, "a GraphQL 429: {s}");
    ensure!((20..=40).contains(&gql), "{gql} GraphQL creates with an 80-point budget");
    ensure!(rest >= 20, "{rest} REST creates");
    rig.delete().await
}

/// Someone else spends the organization's points mid-burst: at most the creates in flight
/// learn it from a 429, the rest go over REST; nothing is created twice.
///
/// GraphQL is warmed first (its cold start sends one request at a time and lets REST take
/// creates that wait; on a loaded machine that can be most of a burst), then the simulator
/// spends the window right after the 8th create of the burst, at a point the test knows.
#[tokio::test]
async fn points_spent_elsewhere_mid_burst_move_creates_to_rest() -> Result<()> {
    let points = GraphqlConfig { user_points_limit: 0, ..Default::default() };
    let (_client, rig) = ChaosRig::start("gql-stolen", graphql_rig(points)).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let mut warm = 0;
    while graphql_creates(&rig) == 0 {
        ensure!(warm < 5, "{warm} warm-up jobs and no GraphQL create: {}", stats(&rig));
        create_jobs(&api, "w", &rig.queue, warm..warm + 1, SLEEP_MS).await?;
        warm += 1;
        wait_until("the warm-up build", Duration::from_secs(60), || async {
            Ok((graphql_creates(&rig) + rest_creates(&rig) >= warm as u64).then_some(()))
        })
        .await?;
    }
    let before = graphql_creates(&rig);
    rig.sim.spend_graphql_points_after_creates(before + 8);
    let jobs = 40;
    create_jobs(&api, "t", &rig.queue, 0..jobs, SLEEP_MS).await?;
    settle(&rig, jobs + warm, "stolen").await?;
    let s = stats(&rig);
    let (gql, rest) = (graphql_creates(&rig), rest_creates(&rig));
    println!(
        "graphql stolen: {warm} warm-up jobs, {before} GraphQL creates before the burst, {gql} in all, {rest} REST creates, stats {s}"
    );
    ensure!(n(&s, &["spent_by_sim"]) > 0, "the burst never reached its 8th GraphQL create: {s}");
    // Creates already on their way when the points went (the KernelJob controller runs 8
    // reconciles at a time): each learns it from a 429 and goes over REST.
    ensure!(n(&s, &["rejected_429"]) <= 8, "GraphQL 429s: {s}");
    ensure!(gql + rest == (jobs + warm) as u64, "{gql} + {rest} creates for {} jobs", jobs + warm);
    ensure!(gql >= before + 8, "{gql} GraphQL creates");
    ensure!(rest >= 1, "no create moved to REST");
    rig.delete().await
}

/// SIGKILL during a GraphQL create burst, three times: exactly one build per attempt (a
/// create whose answer was lost is looked up before anything is created again).
#[tokio::test]
async fn a_killed_controller_leaves_one_build_per_attempt() -> Result<()> {
    let (_client, mut rig) = ChaosRig::start("gql-kill", graphql_rig(GraphqlConfig::default())).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let jobs = 48;
    create_jobs(&api, "k", &rig.queue, 0..jobs, SLEEP_MS).await?;
    for kill in 0..3u64 {
        let want = 6 + kill * 12;
        wait_until("GraphQL creates", Duration::from_secs(120), || async {
            Ok((graphql_creates(&rig) >= want).then_some(()))
        })
        .await?;
        if let Some(op) = &rig.op {
            op.kill();
        }
        // Its listening port goes with the process.
        tokio::time::sleep(Duration::from_millis(500)).await;
        rig.restart_controller()?;
    }
    settle(&rig, jobs, "killed").await?;
    let s = stats(&rig);
    println!(
        "graphql kill: {} GraphQL creates, {} REST creates, {} starts, stats {s}",
        graphql_creates(&rig),
        rest_creates(&rig),
        rig.starts
    );
    ensure!(n(&s, &["rejected_429"]) == 0, "GraphQL 429s: {s}");
    rig.delete().await
}

/// No webhooks and a REST budget the poller's listings would overrun (6 requests per 20 s):
/// while REST is spent the poller reads the states of quiet builds over GraphQL (1 point
/// each) and reads a finished build's result over GraphQL, so every job still finishes,
/// without a 429 on either side.
#[tokio::test]
async fn with_rest_spent_the_poller_reads_over_graphql() -> Result<()> {
    let opts = RigOptions {
        agents: 8,
        webhooks: false,
        poll_secs: 2,
        rate: buildkite_sim::config::RateLimitConfig { org_limit: 200, user_limit: 6, window_secs: 20.0 },
        graphql: Some(GraphqlConfig { user_points_limit: 0, ..Default::default() }),
        ..Default::default()
    };
    let (_client, rig) = ChaosRig::start("gql-poll", opts).await?;
    let api: Api<KernelJob> = rig.ns.api();
    let jobs = 8;
    create_jobs(&api, "p", &rig.queue, 0..jobs, SLEEP_MS).await?;
    settle(&rig, jobs, "poll").await?;
    let s = stats(&rig);
    println!("graphql poll: {} GraphQL creates, {} REST creates, stats {s}", graphql_creates(&rig), rest_creates(&rig));
    ensure!(n(&s, &["rejected_429"]) == 0, "GraphQL 429s: {s}");
    ensure!(n(&s, &["by_operation", "query", "requests"]) >= 1, "no GraphQL read: {s}");
    let states = rig.log_lines("poll: GraphQL states");
    ensure!(!states.is_empty(), "the poller never read states over GraphQL");
    rig.delete().await
}
