//! The GraphQL API (`POST /v1`): costs against hand-computed values, the points windows and
//! headers, refusals (429, max complexity, validation, auth), and builds created and
//! canceled over GraphQL behaving like REST ones.

#![allow(clippy::field_reassign_with_default)]

mod common;

use buildkite_sim::config::{DEFAULT_TOKEN_SCOPES, GraphqlConfig, PipelineConfig, SimConfig};
use common::{T, scripted};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const PIPELINE_ID: &str = "query PipelineId($slug: ID!) { pipeline(slug: $slug) { id } }";
const CREATE: &str = "mutation BuildCreate($input: BuildCreateInput!) {
  buildCreate(input: $input) { build { id uuid number url state branch commit message env createdAt } } }";
const CANCEL: &str = "mutation BuildCancel($input: BuildCancelInput!) {
  buildCancel(input: $input) { build { id uuid number state } } }";
const FULL_READ: &str = "query Build($slug: ID!) {
  build(slug: $slug) {
    id uuid number url state branch commit message env source createdAt scheduledAt startedAt finishedAt
    pipeline { slug }
    metaData(first: 20) { edges { node { key value } } }
    jobs(first: 10) { edges { node {
      ... on JobTypeCommand { uuid label key state passed softFailed exitStatus url retried
        createdAt scheduledAt runnableAt startedAt finishedAt agent { uuid name hostname } }
      ... on JobTypeWait { uuid }
    } } }
  }
}";

fn scopes_with_graphql() -> Vec<&'static str> {
    let mut s = DEFAULT_TOKEN_SCOPES.to_vec();
    s.push("graphql");
    s
}

struct G {
    t: T,
    token: String,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> u64 {
        self.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).expect(name)
    }

    fn stats(&self) -> (u64, u64) {
        let s = &self.body["stats"];
        (s["requestedComplexity"].as_u64().expect("requested"), s["actualComplexity"].as_u64().expect("actual"))
    }

    fn message(&self) -> String {
        self.body["errors"][0]["message"].as_str().unwrap_or_default().to_string()
    }
}

impl G {
    async fn start(cfg: SimConfig) -> Self {
        let t = T::start(cfg).await;
        let token = t.sim.create_api_token(&scopes_with_graphql());
        Self { t, token }
    }

    async fn default() -> Self {
        Self::start(scripted(50)).await
    }

    async fn send_as(&self, token: &str, query: &str, variables: Value) -> Answer {
        let r = self
            .t
            .http
            .post(self.t.sim.graphql_url())
            .bearer_auth(token)
            .header("Buildkite-Include-Query-Stats", "true")
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .expect("graphql request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Answer { status, headers, body: r.json().await.expect("json answer") }
    }

    async fn send(&self, query: &str, variables: Value) -> Answer {
        self.send_as(&self.token, query, variables).await
    }

    async fn pipeline_id(&self) -> String {
        let a = self.send(PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await;
        a.body["data"]["pipeline"]["id"].as_str().expect("pipeline id").to_string()
    }

    async fn create(&self, extra: Value) -> Answer {
        let mut input = json!({"pipelineID": self.pipeline_id().await, "commit": "HEAD", "branch": "main"});
        if let (Some(i), Some(e)) = (input.as_object_mut(), extra.as_object()) {
            i.extend(e.clone());
        }
        self.send(CREATE, json!({"input": input})).await
    }

    async fn sim(&self) -> Value {
        self.t.sim.graphql_stats()
    }
}

#[tokio::test]
async fn docs_example_costs_503_requested_and_13_actual_with_10_pipelines() {
    let mut cfg = scripted(50);
    cfg.pipelines = (0..10).map(|i| PipelineConfig { slug: format!("p{i}"), ..PipelineConfig::default() }).collect();
    let g = G::start(cfg).await;
    let q = r#"query RecentPipelineSlugs {
      organization(slug: "benchkite") { pipelines(first: 500) { edges { node { slug } } } } }"#;
    let a = g.send(q, Value::Null).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"]["organization"]["pipelines"]["edges"].as_array().map(Vec::len), Some(10));
    // Docs: 1 + 1 + 1 + 500 requested; "if the organization has only 10 pipelines, the actual
    // complexity will be around 13" (1 + 1 + 1 + 10).
    assert_eq!(a.stats(), (503, 13));
    assert_eq!((a.header("RateLimit-Complexity-Requested"), a.header("RateLimit-Complexity-Actual")), (503, 13));
}

#[tokio::test]
async fn client_queries_cost_as_computed_by_hand() {
    let g = G::default().await;
    // pipeline 1 (id is a scalar).
    let a = g.send(PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await;
    assert_eq!(a.stats(), (1, 1));
    // buildCreate: payload 1 + build 1.
    let c = g.create(json!({"metaData": [{"key": "run", "value": "r1"}, {"key": "k", "value": "v"}]})).await;
    assert_eq!(c.stats(), (2, 2), "{}", c.body);
    let b = &c.body["data"]["buildCreate"]["build"];
    let (id, uuid, number) = (b["id"].clone(), b["uuid"].as_str().unwrap().to_string(), b["number"].as_u64().unwrap());
    // State read of three aliases: 1 each, an unknown build too (null, its 1 counted).
    let unknown = uuid::Uuid::new_v4();
    let q = format!(
        "query BuildStates {{ b0: build(uuid: \"{uuid}\") {{ uuid number state startedAt finishedAt }} \
         b1: build(uuid: \"{uuid}\") {{ uuid state }} b2: build(uuid: \"{unknown}\") {{ uuid state }} }}"
    );
    let s = g.send(&q, Value::Null).await;
    assert_eq!(s.stats(), (3, 3), "{}", s.body);
    assert_eq!(s.body["data"]["b0"]["state"], "SCHEDULED");
    assert!(s.body["data"]["b2"].is_null() && s.body.get("errors").is_none(), "{}", s.body);
    // Full read: build 1 + pipeline 1 + metaData (1 + edges 1 + 20 × 1) + jobs (1 + edges 1 +
    // 10 × (1 + max(agent 1, 0))) = 46 requested. Actual: 2 meta-data, 1 job (agent null: 1).
    let f = g.send(FULL_READ, json!({"slug": format!("benchkite/kernelbot/{number}")})).await;
    assert_eq!(f.stats(), (46, 1 + 1 + (1 + 1 + 2) + (1 + 1 + 2)), "{}", f.body);
    assert_eq!(f.body["data"]["build"]["metaData"]["edges"][0]["node"], json!({"key": "k", "value": "v"}));
    // buildCancel: payload 1 + build 1.
    let x = g.send(CANCEL, json!({"input": {"id": id}})).await;
    assert_eq!(x.stats(), (2, 2), "{}", x.body);
    assert_eq!(x.body["data"]["buildCancel"]["build"]["state"], "CANCELED");
    let s = g.sim().await;
    assert_eq!(s["by_operation"]["buildCreate"], json!({"requests": 1, "points": 2}));
    assert_eq!(s["by_operation"]["buildCancel"], json!({"requests": 1, "points": 2}));
    assert_eq!(s["requested_points_total"], 1 + 1 + 2 + 3 + 46 + 2);
}

#[tokio::test]
async fn window_headers_and_per_user_scope() {
    let mut cfg = scripted(50);
    cfg.graphql = GraphqlConfig { points_limit: 100, user_points_limit: 30, ..GraphqlConfig::default() };
    let g = G::start(cfg).await;
    // 46 requested > the user's 30: refused before execution, nothing charged.
    let a = g.send(FULL_READ, json!({"slug": "benchkite/kernelbot/1"})).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.message().starts_with("You have exceeded your per-user limit of 30 complexity points."), "{}", a.body);
    assert_eq!(a.headers["RateLimit-Scope"], "user");
    let a = g.send(PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["RateLimit-Scope"], "user");
    assert_eq!((a.header("RateLimit-Limit"), a.header("RateLimit-Remaining")), (30, 29));
    let reset = a.header("RateLimit-Reset");
    assert!((299..=300).contains(&reset), "reset {reset}");
    let s = g.sim().await;
    assert_eq!((s["window_used"].as_u64(), s["window_remaining"].as_u64()), (Some(1), Some(99)));
    // Another token is another user: its own 30 points, the organization's 99 shown as user 30.
    let other = g.t.sim.create_api_token(&scopes_with_graphql());
    let b = g.send_as(&other, PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await;
    assert_eq!((b.header("RateLimit-Remaining"), b.headers["RateLimit-Scope"].to_str().ok()), (29, Some("user")));
    // Without the per-user limit the organization's window shows.
    g.t.sim.set_graphql(GraphqlConfig { points_limit: 100, user_points_limit: 0, ..GraphqlConfig::default() });
    let c = g.send(PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await;
    assert_eq!(c.headers["RateLimit-Scope"], "organization");
    assert_eq!((c.header("RateLimit-Limit"), c.header("RateLimit-Remaining")), (100, 97));
}

#[tokio::test]
async fn over_budget_is_429_and_nothing_runs_or_is_charged() {
    let mut cfg = scripted(50);
    cfg.graphql.points_limit = 10;
    let g = G::start(cfg).await;
    let pid = g.pipeline_id().await; // 1 point
    let (s, v) = g.t.sim_json(reqwest::Method::POST, "/graphql/spend", Some(json!({"points": 8}))).await;
    assert_eq!((s, v["window_used"].as_u64()), (200, Some(9)));
    let input = json!({"input": {"pipelineID": pid, "commit": "HEAD", "branch": "main"}});
    let a = g.send(CREATE, input).await;
    assert_eq!(a.status, 429, "{}", a.body);
    let reset = a.header("RateLimit-Reset");
    assert_eq!(
        a.body,
        json!({"errors": [{"message": format!(
            "Your organization has exceeded the limit of 10 complexity points. Please try again in {reset} seconds."
        )}]})
    );
    assert_eq!((a.header("RateLimit-Limit"), a.header("RateLimit-Remaining")), (10, 1));
    assert_eq!(g.t.sim.stats()["builds_total"], 0);
    let s = g.sim().await;
    assert_eq!((s["window_used"].as_u64(), s["rejected_429"].as_u64()), (Some(9), Some(1)));
    assert!(s["by_operation"].get("buildCreate").is_none());
    // GraphQL is not REST: nothing was counted against the REST limits or counters.
    assert_eq!(g.t.sim.rate_limit_stats().counted, 0);
    assert_eq!(g.t.sim.counters().total, 0);
    // A cheap query still fits; DELETE resets the window.
    assert_eq!(g.send(PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await.status, 200);
    let (_, v) = g.t.sim_json(reqwest::Method::DELETE, "/graphql", None).await;
    assert_eq!((v["window_used"].as_u64(), v["requests"].as_u64()), (Some(0), Some(0)));
}

#[tokio::test]
async fn max_complexity_is_refused_before_execution() {
    let g = G::default().await;
    let (s, _) = g.t.sim_json(reqwest::Method::PUT, "/graphql", Some(json!({"max_query_complexity": 100}))).await;
    assert_eq!(s, 200);
    let q = r#"{ pipeline(slug: "benchkite/kernelbot") { builds(first: 200) { edges { node { uuid } } } } }"#;
    let a = g.send(q, Value::Null).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        json!({"errors": [{"message": "Query has complexity of 203, which exceeds max complexity of 100"}]})
    );
    let s = g.sim().await;
    assert_eq!((s["rejected_complexity"].as_u64(), s["window_used"].as_u64()), (Some(1), Some(0)));
    assert_eq!(s["executed"], 0);
}

#[tokio::test]
async fn validation_errors_are_graphql_ruby_s_and_not_executed() {
    let g = G::default().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("query Q { build(uuid: \"x\") { uuid nope } }", Value::Null, "Field 'nope' doesn't exist on type 'Build'"),
        ("{ pipeline { id } }", Value::Null, "Field 'pipeline' is missing required arguments: slug"),
        ("{ build(uuid: \"x\", foo: 1) { uuid } }", Value::Null, "Field 'build' doesn't accept argument 'foo'"),
        (
            "{ build(uuid: \"x\") { metaData(first: \"ten\") { count } } }",
            Value::Null,
            "Argument 'first' on Field 'metaData' has an invalid value (\"ten\"). Expected type 'Int'.",
        ),
        ("query Q { build(uuid: $u) { uuid } }", Value::Null, "Variable $u is used by Q but not declared"),
        (
            "query Q($u: ID) { build(slug: \"a/b/1\") { uuid } }",
            Value::Null,
            "Variable $u is declared by Q but not used",
        ),
        (
            "{ build(uuid: \"x\") { jobs(first: 1) { edges { node { ... on JobTypeNope { uuid } } } } } }",
            Value::Null,
            "No such type JobTypeNope, so it can't be a fragment condition",
        ),
        (
            "{ build(uuid: \"x\") { ... on Pipeline { slug } } }",
            Value::Null,
            "Fragment on Pipeline can't be spread inside Build",
        ),
        ("{ build(uuid: \"x\") { uuid { x } } }", Value::Null, "Selections can't be made on scalars"),
        ("{ build(uuid: \"x\") }", Value::Null, "Field must have selections"),
        (
            CREATE,
            json!({"input": {"pipelineID": "x", "commit": "HEAD", "branch": "main", "cleanCheckout": true}}),
            "Variable $input of type BuildCreateInput! was provided invalid value for cleanCheckout (Field is not defined on BuildCreateInput)",
        ),
        (
            "mutation { buildCreate(input: {pipelineID: \"x\", ignorePipelineBranchFilters: true}) { clientMutationId } }",
            Value::Null,
            "InputObject 'BuildCreateInput' doesn't accept argument 'ignorePipelineBranchFilters'",
        ),
        (CREATE, json!({}), "Variable $input of type BuildCreateInput! was provided invalid value"),
        ("{ pipeline(slug: 5.5) { id } }", Value::Null, "Argument 'slug' on Field 'pipeline' has an invalid value"),
        ("{ build(uuid: \"x\") { uuid ", Value::Null, "Parse error"),
    ];
    for (q, vars, want) in cases {
        let a = g.send(q, vars).await;
        assert_eq!(a.status, 200, "{q}");
        assert!(a.message().starts_with(want), "{q}: got {}", a.body);
        assert!(a.body.get("data").is_none(), "{q}: {}", a.body);
    }
    // Locations and path of an unknown field.
    let a = g.send("query Q {\n  build(uuid: \"x\") { uuid nope } }", Value::Null).await;
    assert_eq!(a.body["errors"][0]["locations"], json!([{"line": 2, "column": 27}]));
    assert_eq!(a.body["errors"][0]["path"], json!(["query Q", "build", "nope"]));
    let s = g.sim().await;
    assert_eq!((s["executed"].as_u64(), s["window_used"].as_u64()), (Some(0), Some(0)));
    assert_eq!(g.t.sim.stats()["builds_total"], 0);
}

#[tokio::test]
async fn tokens_401_403_and_write_builds() {
    let g = G::default().await;
    let a = g.send_as("bk-nope", PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await;
    assert_eq!(a.status, 401);
    assert!(a.message().starts_with("Authentication required"), "{}", a.body);
    assert!(a.headers.contains_key("RateLimit-Remaining"));
    // The default token has every REST scope benchkite needs but not `graphql`.
    let rest_only = g.t.sim.api_token();
    let a = g.send_as(&rest_only, PIPELINE_ID, json!({"slug": "benchkite/kernelbot"})).await;
    assert_eq!(a.status, 403);
    assert!(a.body["errors"][0]["message"].is_string() && a.body.get("data").is_none(), "{}", a.body);
    // `GET /v2/access-token` lists `graphql` like any scope.
    let r: Value =
        g.t.http
            .get(format!("{}/access-token", g.t.sim.api_url()))
            .bearer_auth(&g.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(r["scopes"].as_array().unwrap().contains(&json!("graphql")), "{r}");
    // A read-only token: reads work, a mutation is an error on its field.
    let reader = g.t.sim.create_api_token(&["graphql", "read_builds", "read_pipelines"]);
    let pid = g.pipeline_id().await;
    let input = json!({"input": {"pipelineID": pid, "commit": "HEAD", "branch": "main"}});
    let a = g.send_as(&reader, CREATE, input).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["data"], json!({"buildCreate": null}));
    assert_eq!(a.body["errors"][0]["message"], "Your access token doesn't have the write_builds scope");
    assert_eq!(a.body["errors"][0]["path"], json!(["buildCreate"]));
    assert_eq!(g.t.sim.stats()["builds_total"], 0);
    assert_eq!(g.sim().await["rejected_auth"], 2);
}

#[tokio::test]
async fn graphql_build_runs_on_an_agent_and_finishes_like_a_rest_one() {
    let mut cfg = scripted(50);
    if let buildkite_sim::config::ExecutorConfig::Scripted(s) = &mut cfg.executor {
        s.meta_data.insert("result".into(), "ok".into());
    }
    let g = G::start(cfg).await;
    let c =
        g.create(json!({"env": ["A=1", "B=x=y"], "metaData": [{"key": "run", "value": "r1"}], "message": "m"})).await;
    let b = &c.body["data"]["buildCreate"]["build"];
    assert_eq!(b["state"], "SCHEDULED", "{}", c.body);
    assert_eq!(b["env"], json!(["A=1", "B=x=y"]));
    assert_eq!(b["url"], "https://buildkite.com/benchkite/kernelbot/builds/1");
    // The REST view: the same build, source api, meta-data from the input, job scheduled.
    let rest = g.t.build(1).await;
    assert_eq!((rest["id"].as_str(), rest["source"].as_str()), (b["uuid"].as_str(), Some("api")));
    assert_eq!(rest["meta_data"]["run"], "r1");
    assert_eq!(rest["env"]["B"], "x=y");
    g.t.sim.set_agents("default", 1).unwrap();
    g.t.wait_build("kernelbot", 1, "passed", 20.0).await;
    let f = g.send(FULL_READ, json!({"slug": "benchkite/kernelbot/1"})).await;
    let build = &f.body["data"]["build"];
    assert_eq!(build["state"], "PASSED", "{}", f.body);
    assert_eq!(build["source"], "API");
    let md: Vec<&Value> = build["metaData"]["edges"].as_array().unwrap().iter().map(|e| &e["node"]).collect();
    assert!(md.contains(&&json!({"key": "result", "value": "ok"})), "{md:?}");
    let job = &build["jobs"]["edges"][0]["node"];
    assert_eq!(
        (job["state"].as_str(), job["passed"].as_bool(), job["exitStatus"].as_str()),
        (Some("FINISHED"), Some(true), Some("0"))
    );
    assert_eq!(job["agent"]["name"], "default-agent-0");
    assert_eq!(job["key"], "run");
    // Webhook events and job counters are those of any build.
    assert_eq!(g.t.sim.job_stats().passed, 1);
    // Actual: build 1 + pipeline 1 + metaData (1 + 1 + 2) + jobs (1 + 1 + (1 + agent 1)).
    assert_eq!(f.stats().1, 10);
}

#[tokio::test]
async fn cancel_running_build_and_refuse_finished_one() {
    let g = G::start(scripted(60_000)).await;
    g.t.sim.set_agents("default", 1).unwrap();
    let c = g.create(json!({})).await;
    let id = c.body["data"]["buildCreate"]["build"]["id"].clone();
    g.t.wait_build("kernelbot", 1, "running", 20.0).await;
    let a = g.send(CANCEL, json!({"input": {"id": id, "clientMutationId": "c1"}})).await;
    let state = a.body["data"]["buildCancel"]["build"]["state"].as_str().unwrap_or_default().to_string();
    assert!(state == "CANCELING" || state == "CANCELED", "{}", a.body);
    g.t.wait_build("kernelbot", 1, "canceled", 20.0).await;
    let a = g.send(CANCEL, json!({"input": {"id": id}})).await;
    assert_eq!(a.body["data"], json!({"buildCancel": null}));
    assert_eq!(a.message(), "Build can't be canceled because it's canceled");
    assert_eq!(a.body["errors"][0]["path"], json!(["buildCancel"]));
    // An unknown id is an error too.
    let bogus = buildkite_sim::graphql::exec::build_gid(uuid::Uuid::new_v4());
    let a = g.send(CANCEL, json!({"input": {"id": bogus}})).await;
    assert_eq!(a.message(), "No build found");
}

#[tokio::test]
async fn pipeline_builds_filter_by_meta_data_and_state() {
    let g = G::default().await;
    for run in ["r1", "r2", "r1"] {
        let c = g.create(json!({"metaData": [{"key": "run", "value": run}]})).await;
        assert_eq!(c.status, 200);
    }
    let q = r#"query F($md: [String!], $st: [BuildStates!]) { pipeline(slug: "benchkite/kernelbot") {
        builds(first: 10, metaData: $md, state: $st) { count edges { node { number state } } pageInfo { hasNextPage } } } }"#;
    let a = g.send(q, json!({"md": ["run=r1"], "st": ["SCHEDULED"]})).await;
    let conn = &a.body["data"]["pipeline"]["builds"];
    assert_eq!(conn["count"], 2, "{}", a.body);
    let numbers: Vec<u64> =
        conn["edges"].as_array().unwrap().iter().filter_map(|e| e["node"]["number"].as_u64()).collect();
    assert_eq!(numbers, vec![3, 1]); // newest first
    // Requested: pipeline 1 + builds 1 + edges 1 + 10 × 1 + pageInfo 1; actual: 2 nodes.
    assert_eq!(a.stats(), (14, 6));
    let a = g.send(q, json!({"md": ["run=r1"], "st": ["PASSED"]})).await;
    assert_eq!(a.body["data"]["pipeline"]["builds"]["count"], 0);
    let a = g.send(q, json!({"md": ["run=r2"], "st": "SCHEDULED"})).await;
    assert_eq!(a.body["data"]["pipeline"]["builds"]["edges"][0]["node"]["number"], 2, "{}", a.body);
    let a = g.send(q, json!({"st": ["RUNNING_NOPE"]})).await;
    assert!(a.message().starts_with("Variable $st of type [BuildStates!] was provided invalid value"), "{}", a.body);
}

#[tokio::test]
async fn dropped_connection_after_a_create_leaves_the_build() {
    let g = G::default().await;
    let pid = g.pipeline_id().await;
    let (s, _) =
        g.t.sim_json(
            reqwest::Method::PUT,
            "/faults/endpoint",
            Some(json!({"endpoint": "POST /v1", "fault": {"drop_after_rate": 1.0}})),
        )
        .await;
    assert_eq!(s, 200);
    let input = json!({"input": {"pipelineID": pid, "commit": "HEAD", "branch": "main"}});
    let r =
        g.t.http
            .post(g.t.sim.graphql_url())
            .bearer_auth(&g.token)
            .json(&json!({"query": CREATE, "variables": input}))
            .send()
            .await;
    assert!(r.is_err(), "the answer must not arrive: {r:?}");
    // The create happened (an ambiguous create for the client) and was charged.
    assert_eq!(g.t.sim.stats()["builds_total"], 1);
    let s = g.sim().await;
    assert_eq!(s["by_operation"]["buildCreate"]["requests"], 1);
    assert_eq!(s["http"]["endpoints"]["POST /v1"]["by_status"]["0"], 1);
    // drop_rate drops before anything is done.
    g.t.sim_json(
        reqwest::Method::PUT,
        "/faults/endpoint",
        Some(json!({"endpoint": "POST /v1", "fault": {"drop_rate": 1.0}})),
    )
    .await;
    let r =
        g.t.http
            .post(g.t.sim.graphql_url())
            .bearer_auth(&g.token)
            .json(&json!({"query": CREATE, "variables": input}))
            .send()
            .await;
    assert!(r.is_err());
    assert_eq!(g.t.sim.stats()["builds_total"], 1);
}
