//! The Buildkite client's GraphQL transport against the simulator (its GraphQL endpoint is
//! checked against the documented schema, costs and limits by the simulator's own tests):
//! what goes where, what falls back to REST, and that a create is never sent twice.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use benchkite::buildkite::{BuildQuery, BuildState, CancelOutcome, Client, Config, Error, NewBuild, Priority, Secret};
use buildkite_sim::config::{EndpointFault, FaultConfig, GraphqlConfig};
use buildkite_sim::{SimConfig, SimHandle, Simulator};

const CREATE: &str = "POST /v2/organizations/{org}/pipelines/{pipeline}/builds";
const CANCEL: &str = "PUT /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}/cancel";
const GET: &str = "GET /v2/organizations/{org}/pipelines/{pipeline}/builds/{number}";

/// A simulator with two pipelines and no agents (builds stay scheduled): `open` without a
/// branch filter, `main-only` building `main` only; the token has GraphQL access.
async fn sim(graphql: bool) -> Result<SimHandle> {
    let mut cfg = SimConfig::default();
    let mut open = benchkite_e2e::sim::user_pipeline("open", "nowhere", Some("true"));
    open.branch_configuration = None;
    let mut main_only = benchkite_e2e::sim::user_pipeline("main-only", "nowhere", Some("true"));
    main_only.branch_configuration = Some("main".into());
    cfg.pipelines = vec![open, main_only];
    cfg.graphql = GraphqlConfig { user_points_limit: 0, ..Default::default() };
    if graphql {
        benchkite_e2e::sim::grant_graphql(&mut cfg);
    }
    Simulator::start(cfg).await
}

fn client(sim: &SimHandle, rest_per_minute: u32) -> Result<Client> {
    let mut cfg = Config::new(sim.organization(), Secret::new(sim.api_token()));
    cfg.api_url = sim.api_url();
    cfg.agent_api_url = sim.agent_url();
    cfg.graphql_url = Some(sim.graphql_url());
    cfg.requests_per_minute = rest_per_minute;
    Ok(Client::new(cfg)?)
}

fn new_build(branch: &str, run: &str) -> NewBuild {
    NewBuild {
        commit: "HEAD".into(),
        branch: branch.into(),
        message: Some(format!("run {run}")),
        env: BTreeMap::from([("KERNELBOT_RUN_ID".into(), run.into())]),
        meta_data: BTreeMap::from([("benchkite.dev/run-id".into(), run.into())]),
        ..Default::default()
    }
}

fn gql_ops(sim: &SimHandle, op: &str) -> u64 {
    sim.graphql_stats()["by_operation"][op]["requests"].as_u64().unwrap_or(0)
}

fn rest(sim: &SimHandle, endpoint: &str) -> u64 {
    sim.counters().endpoint(endpoint).total
}

/// The complexity the client reserved for its queries is what the simulator computed from
/// the documented rules, and the actual points it was charged are what the answers said.
fn same_costs(bk: &Client, sim: &SimHandle) -> Result<()> {
    let (ours, theirs) = (bk.stats(), sim.graphql_stats());
    let requested = theirs["requested_points_total"].as_u64().unwrap_or(0);
    let actual = theirs["actual_points_total"].as_u64().unwrap_or(0);
    println!("points: requested {requested}, actual {actual}; client {ours:?}");
    ensure!(ours.graphql_points_requested == requested, "requested: client {ours:?}, simulator {theirs}");
    ensure!(ours.graphql_points_actual == actual, "actual: client {ours:?}, simulator {theirs}");
    Ok(())
}

/// A create goes through `buildCreate`; the build it answers is the one REST reads back.
#[tokio::test]
async fn a_create_goes_through_graphql_and_reads_back_as_over_rest() -> Result<()> {
    let sim = sim(true).await?;
    let bk = client(&sim, 50)?;
    let created = bk.create_build(Some("open"), &new_build("feature", "r1"), Priority::Submit).await?;
    ensure!(gql_ops(&sim, "buildCreate") == 1, "{}", sim.graphql_stats());
    ensure!(rest(&sim, CREATE) == 0, "a REST create as well");
    let read = bk.get_build(Some("open"), created.number, false).await?;
    ensure!(rest(&sim, GET) == 1, "the read goes over REST while REST has room");
    ensure!(created.id == read.id && created.number == read.number, "{created:?} vs {read:?}");
    ensure!(created.graphql_id.is_some() && created.graphql_id == read.graphql_id, "graphql ids");
    ensure!(created.branch == read.branch && created.state == read.state, "{created:?} vs {read:?}");
    ensure!(created.env.get("KERNELBOT_RUN_ID").map(String::as_str) == Some("r1"), "env {:?}", created.env);
    ensure!(read.meta_data.get("benchkite.dev/run-id").map(String::as_str) == Some("r1"), "meta {:?}", read.meta_data);
    ensure!(created.pipeline_slug() == Some("open"), "pipeline");
    ensure!(bk.stats().graphql_requests() == 2, "pipeline look-up + create: {:?}", bk.stats());
    same_costs(&bk, &sim)?;
    Ok(())
}

/// A GraphQL create whose answer is lost is ambiguous and is not sent again, over either
/// transport: the build exists once.
#[tokio::test]
async fn a_lost_graphql_create_answer_is_ambiguous_and_never_resent() -> Result<()> {
    let sim = sim(true).await?;
    let bk = client(&sim, 50)?;
    // Learn the pipeline's id first (one GraphQL query), so only the create meets the fault.
    bk.create_build(Some("open"), &new_build("feature", "warm"), Priority::Submit).await?;
    let fault = EndpointFault { drop_after_rate: 1.0, ..Default::default() };
    sim.set_faults(FaultConfig { endpoints: [("POST /v1".to_string(), fault)].into(), ..Default::default() });
    let res = bk.create_build(Some("open"), &new_build("feature", "lost"), Priority::Submit).await;
    ensure!(matches!(res, Err(Error::Ambiguous { .. })), "{res:?}");
    sim.set_faults(FaultConfig::default());
    // The look-up the controller makes after an ambiguous create: by meta-data.
    let query = BuildQuery {
        pipeline: Some("open".into()),
        meta_data: vec![("benchkite.dev/run-id".into(), "lost".into())],
        ..Default::default()
    };
    let lost = bk.list_builds(&query, Priority::Refresh).await?.items.len();
    ensure!(lost == 1, "{lost} builds of the lost create");
    ensure!(rest(&sim, CREATE) == 0, "re-sent over REST");
    Ok(())
}

/// A build whose branch the pipeline's filter refuses, created with
/// `ignore_pipeline_branch_filters` (which `BuildCreateInput` cannot say), goes over REST;
/// one the filter lets through goes over GraphQL.
#[tokio::test]
async fn a_branch_filter_override_goes_over_rest_when_it_matters() -> Result<()> {
    let sim = sim(true).await?;
    let bk = client(&sim, 50)?;
    // The client knows a pipeline's filter from its REST answers.
    bk.get_pipeline("main-only").await?.context("main-only")?;
    bk.get_pipeline("open").await?.context("open")?;
    let ignore =
        |branch: &str, run: &str| NewBuild { ignore_pipeline_branch_filters: Some(true), ..new_build(branch, run) };
    bk.create_build(Some("main-only"), &ignore("benchkite/x/r1", "r1"), Priority::Submit).await?;
    ensure!(rest(&sim, CREATE) == 1 && gql_ops(&sim, "buildCreate") == 0, "filtered branch: {}", sim.graphql_stats());
    bk.create_build(Some("open"), &ignore("benchkite/x/r2", "r2"), Priority::Submit).await?;
    ensure!(rest(&sim, CREATE) == 1 && gql_ops(&sim, "buildCreate") == 1, "open pipeline: {}", sim.graphql_stats());
    Ok(())
}

/// A cancel goes through `buildCancel`; cancelling a finished build is a GraphQL error, and
/// REST's answer (422) says it was not cancelable.
#[tokio::test]
async fn cancels_go_through_graphql_and_rest_explains_a_refusal() -> Result<()> {
    let sim = sim(true).await?;
    let bk = client(&sim, 50)?;
    let b = bk.create_build(Some("open"), &new_build("feature", "c1"), Priority::Submit).await?;
    let id = Some((b.id.as_str(), b.graphql_id.as_deref()));
    let first = bk.cancel_build_id(Some("open"), b.number, id, Priority::Cancel).await?;
    ensure!(gql_ops(&sim, "buildCancel") == 1 && rest(&sim, CANCEL) == 0, "{}", sim.graphql_stats());
    match first {
        CancelOutcome::Canceled(c) => {
            ensure!(matches!(c.state, BuildState::Canceled | BuildState::Canceling), "{:?}", c.state)
        }
        other => anyhow::bail!("{other:?}"),
    }
    let second = bk.cancel_build_id(Some("open"), b.number, id, Priority::Cancel).await?;
    ensure!(matches!(second, CancelOutcome::NotCancelable { .. }), "{second:?}");
    ensure!(rest(&sim, CANCEL) == 1, "REST was asked after the GraphQL error");
    ensure!(bk.stats().graphql_fallbacks >= 1, "{:?}", bk.stats());
    Ok(())
}

/// Reads go over REST while it has room (a listing carries 100 builds per request) and over
/// GraphQL when REST would make them wait.
#[tokio::test]
async fn reads_use_graphql_when_rest_is_spent() -> Result<()> {
    let sim = sim(true).await?;
    // Three REST requests a window, of which reads may spend two (a tenth, at least one, is
    // kept for creates and cancels): the pipeline read and one build read.
    let bk = client(&sim, 3)?;
    bk.get_pipeline("open").await?.context("open")?;
    let b = bk.create_build(Some("open"), &new_build("feature", "g1"), Priority::Submit).await?;
    let over_rest = bk.get_build(Some("open"), b.number, true).await?;
    ensure!(rest(&sim, GET) == 1, "first read over REST");
    let before = bk.stats().graphql_requests();
    let over_graphql =
        tokio::time::timeout(Duration::from_secs(10), bk.get_build(Some("open"), b.number, true)).await??;
    ensure!(rest(&sim, GET) == 1, "a second REST read: the budget should have been spent");
    ensure!(bk.stats().graphql_requests() == before + 1, "{:?}", bk.stats());
    ensure!(
        over_rest.id == over_graphql.id && over_rest.state == over_graphql.state,
        "{over_rest:?} vs {over_graphql:?}"
    );
    ensure!(over_graphql.meta_data == over_rest.meta_data, "{:?} vs {:?}", over_graphql.meta_data, over_rest.meta_data);
    same_costs(&bk, &sim)?;
    Ok(())
}

/// A token without GraphQL access: one refusal, then REST for everything, without another try.
#[tokio::test]
async fn a_refused_token_goes_over_rest_and_stays_there() -> Result<()> {
    let sim = sim(false).await?;
    let bk = client(&sim, 50)?;
    for i in 0..3 {
        bk.create_build(Some("open"), &new_build("feature", &format!("n{i}")), Priority::Submit).await?;
    }
    ensure!(rest(&sim, CREATE) == 3, "REST creates");
    let s = sim.graphql_stats();
    ensure!(s["rejected_auth"].as_u64() == Some(1), "{s}");
    ensure!(!bk.graphql_active(), "GraphQL still considered usable");
    Ok(())
}
