//! The operations GraphQL carries: create, cancel, read one build, read many builds'
//! states; and the choice of transport per operation.

use base64::Engine as _;
use serde_json::{Value, json};

use super::super::super::budget::{Permit, PointsPermit, Priority};
use super::super::super::error::{Error, Result};
use super::super::super::types::{Build, CancelOutcome, NewBuild};
use super::super::Client;
use super::{BATCH, CREATE_COST, GqlError, JOBS_FIRST, META_FIRST, map, state_read_cost};

/// The transport an operation goes out on, with the right to send it.
#[derive(Debug)]
pub enum Route {
    /// GraphQL, on a permit of the points budget.
    Graphql(PointsPermit),
    /// REST, on a permit of the request budget.
    Rest(Permit),
}

impl Route {
    pub fn is_graphql(&self) -> bool {
        matches!(self, Route::Graphql(_))
    }
}

/// How long an operation waits for GraphQL to have room before REST may carry it, when
/// GraphQL is expected to have room soon.
const GRAPHQL_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Fields of a state read: scalars only, so a build costs one point.
const STATE_FIELDS: &str = "id uuid number url state branch env createdAt scheduledAt startedAt finishedAt";

/// The selection of a full read (what REST's build answer carries that benchkite uses).
fn full_fields(jobs: bool) -> String {
    let mut f = format!(
        "{STATE_FIELDS} commit message source pipeline {{ slug }} \
         metaData(first: {META_FIRST}) {{ edges {{ node {{ key value }} }} }}"
    );
    if jobs {
        f.push_str(&format!(
            " jobs(first: {JOBS_FIRST}) {{ edges {{ node {{ \
             ... on JobTypeCommand {{ uuid label key state passed softFailed exitStatus url retried \
             createdAt scheduledAt runnableAt startedAt finishedAt agent {{ uuid name hostname }} }} \
             ... on JobTypeWait {{ uuid }} }} }} }}"
        ));
    }
    f
}

/// `buildCreate` names no branch-filter override and no clean checkout (schema page
/// `BuildCreateInput`). A build that asks to ignore the pipeline's branch filter goes through
/// GraphQL only when the pipeline's filter, as last read over REST, lets its branch build
/// anyway (managed pipelines have none); otherwise, and with a clean checkout, over REST.
pub(crate) fn graphql_can_create(build: &NewBuild, pipeline: Option<&super::KnownPipeline>) -> bool {
    if build.clean_checkout.is_some() {
        return false;
    }
    match build.ignore_pipeline_branch_filters {
        None | Some(false) => true,
        Some(true) => pipeline.and_then(|p| p.branch_filter.as_ref()).is_some_and(|filter| {
            crate::buildkite::pipelines::branch_filter_matches(filter.as_deref().unwrap_or(""), &build.branch)
        }),
    }
}

/// The `BuildCreateInput` of a REST build body.
pub(crate) fn create_input(pipeline_id: &str, build: &NewBuild) -> Value {
    let mut input = json!({
        "pipelineID": pipeline_id,
        "commit": build.commit,
        "branch": build.branch,
        "env": build.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "metaData": build.meta_data.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
    });
    if let Some(m) = &build.message {
        input["message"] = json!(m);
    }
    if let Some(a) = &build.author {
        input["author"] = json!({"name": a.name, "email": a.email});
    }
    input
}

/// A build's GraphQL id: the one it carries, else `base64("Build---<uuid>")`, the shape of
/// Buildkite's ids (and of REST's `graphql_id`).
pub(crate) fn build_graphql_id(uuid: &str, known: Option<&str>) -> Option<String> {
    if let Some(k) = known.filter(|k| !k.is_empty()) {
        return Some(k.to_string());
    }
    (!uuid.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(format!("Build---{uuid}")))
}

impl Client {
    /// Waits until an operation of `priority` costing `cost` points may go out on either
    /// transport: GraphQL when its budget allows it now, else REST when its budget does,
    /// else whichever frees first (GraphQL first on a tie).
    pub(crate) async fn route(&self, priority: Priority, cost: u64) -> Route {
        let inner = &*self.inner;
        let Some(g) = inner.graphql.as_ref().filter(|g| g.usable()) else {
            return Route::Rest(self.acquire(priority).await);
        };
        if let Some(p) = g.budget.try_acquire(priority, cost) {
            return Route::Graphql(p);
        }
        // GraphQL about to have room (its cold start: one request until the first answer;
        // answers in flight): REST gets the operation only if GraphQL is still busy after a
        // moment. Known to wait longer (spent, throttled): REST at once if it has room.
        let snap = g.budget.snapshot();
        let soon = snap.throttled_for.is_none() && snap.remaining >= cost;
        if !soon && let Some(p) = inner.budget.try_acquire(priority) {
            return Route::Rest(p);
        }
        let rest = async {
            if soon {
                tokio::time::sleep(GRAPHQL_GRACE).await;
            }
            self.acquire(priority).await
        };
        tokio::select! {
            biased;
            p = g.budget.acquire(priority, cost) => match p {
                Ok(p) => Route::Graphql(p),
                // More than a whole window: never over GraphQL.
                Err(_) => Route::Rest(self.acquire(priority).await),
            },
            p = rest => Route::Rest(p),
        }
    }

    /// A route for a read: REST first. A list or a read of one build costs one REST request
    /// (a listing carries 100 builds with their meta-data) but one point per object over
    /// GraphQL (a build with its meta-data about a dozen), and GraphQL's per-user budget
    /// (5,000 points per 5 minutes by default) is worth far more to creates (2 points each):
    /// GraphQL reads only when REST would make the read wait.
    pub(crate) async fn read_route(&self, cost: u64) -> Route {
        let inner = &*self.inner;
        let Some(g) = inner.graphql.as_ref().filter(|g| g.usable()) else {
            return Route::Rest(self.acquire(Priority::Refresh).await);
        };
        if let Some(p) = inner.budget.try_acquire(Priority::Refresh) {
            return Route::Rest(p);
        }
        if let Some(p) = g.budget.try_acquire(Priority::Refresh, cost) {
            return Route::Graphql(p);
        }
        tokio::select! {
            biased;
            p = self.acquire(Priority::Refresh) => Route::Rest(p),
            p = g.budget.acquire(Priority::Refresh, cost) => match p {
                Ok(p) => Route::Graphql(p),
                Err(_) => Route::Rest(self.acquire(Priority::Refresh).await),
            },
        }
    }

    /// Whether a REST request of `priority` would have to wait for the request budget.
    pub fn rest_would_wait(&self, priority: Priority) -> bool {
        self.inner.budget.would_wait(priority).is_some()
    }

    /// A route for a create.
    pub(crate) async fn create_route(&self, priority: Priority) -> Route {
        self.route(priority, CREATE_COST).await
    }

    /// `buildCreate`; [`GqlError::NotDone`]: nothing was created, send it over REST.
    pub(crate) async fn gql_create(
        &self,
        pipeline: &str,
        build: &NewBuild,
        permit: PointsPermit,
    ) -> std::result::Result<Build, GqlError> {
        let known = self.graphql_state().and_then(|g| g.pipeline(pipeline)).map(|k| k.id);
        let (id, permit) = match known {
            Some(id) => (id, permit),
            None => {
                // Look the pipeline up first (1 point). The create's permit goes back while
                // it does: during the budget's cold start it would hold the look-up back.
                let (priority, cost) = (Priority::Submit, permit.cost());
                drop(permit);
                let id = self.gql_pipeline_id(pipeline).await?;
                let Some(g) = self.graphql_state() else {
                    return Err(GqlError::NotDone("GraphQL is not configured".into()));
                };
                let permit = match tokio::time::timeout(GRAPHQL_GRACE * 4, g.budget.acquire(priority, cost)).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(GqlError::NotDone("GraphQL budget: no room for the create".into())),
                };
                (id, permit)
            }
        };
        let query = "mutation BuildCreate($input: BuildCreateInput!) { buildCreate(input: $input) { \
                     build { id uuid number url state branch commit message env createdAt } } }";
        let res =
            self.gql("graphql_create_build", query, json!({ "input": create_input(&id, build) }), permit, true).await;
        let data = match res {
            Ok(d) => d,
            Err(e) => {
                if matches!(e, GqlError::NotDone(_))
                    && let Some(g) = self.graphql_state()
                {
                    // The pipeline may be gone (deleted in the UI): look it up again next time.
                    g.forget_pipeline(pipeline);
                }
                return Err(e);
            }
        };
        let Some(mut created) =
            data.get("buildCreate").and_then(|p| p.get("build")).and_then(|b| map::build(b, Some(pipeline)))
        else {
            return Err(GqlError::Ambiguous("buildCreate answered without the build".into()));
        };
        // As REST's create answer does: the meta-data the build was created with.
        if created.meta_data.is_empty() {
            created.meta_data = build.meta_data.clone();
        }
        Ok(created)
    }

    /// `buildCancel`; any GraphQL error: `Err` (the caller asks REST, whose answer says
    /// whether the build was finished or gone).
    pub(crate) async fn gql_cancel(
        &self,
        pipeline: &str,
        graphql_id: &str,
        permit: PointsPermit,
    ) -> std::result::Result<CancelOutcome, GqlError> {
        let query = "mutation BuildCancel($input: BuildCancelInput!) { buildCancel(input: $input) { \
                     build { id uuid number url state branch createdAt startedAt finishedAt } } }";
        let data =
            self.gql("graphql_cancel_build", query, json!({ "input": { "id": graphql_id } }), permit, false).await?;
        data.get("buildCancel")
            .and_then(|p| p.get("build"))
            .and_then(|b| map::build(b, Some(pipeline)))
            .map(|b| CancelOutcome::Canceled(Box::new(b)))
            .ok_or_else(|| GqlError::NotDone("buildCancel answered without the build".into()))
    }

    /// One build by slug, in full; `Ok(None)` when GraphQL knows no such build.
    pub(crate) async fn gql_get_build(
        &self,
        pipeline: &str,
        number: u64,
        jobs: bool,
        permit: PointsPermit,
    ) -> std::result::Result<Option<Build>, GqlError> {
        let query = format!("query Build($slug: ID!) {{ build(slug: $slug) {{ {} }} }}", full_fields(jobs));
        let slug = format!("{}/{pipeline}/{number}", self.inner.cfg.organization);
        let data = self.gql("graphql_get_build", &query, json!({ "slug": slug }), permit, false).await?;
        Ok(data.get("build").and_then(|b| map::build(b, Some(pipeline))))
    }

    /// Reads the state (and the scalars that identify a build: branch, env, times) of
    /// builds by id, [`BATCH`] per query at one point per build, if GraphQL is usable and
    /// its budget has room now for a refresh; `None` otherwise (use REST listings). Builds
    /// GraphQL does not know are left out. `pipeline` names the builds' pipeline.
    pub async fn try_read_build_states(&self, pipeline: &str, ids: &[String]) -> Option<Result<Vec<Build>>> {
        const EP: &str = "graphql_build_states";
        let g = self.inner.graphql.as_ref().filter(|g| g.usable())?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH) {
            let Some(permit) = g.budget.try_acquire(Priority::Refresh, state_read_cost(chunk.len())) else {
                // No room: what was read stands, the rest waits for the next round.
                return if out.is_empty() { None } else { Some(Ok(out)) };
            };
            let vars: Vec<String> = (0..chunk.len()).map(|i| format!("$u{i}: ID!")).collect();
            let fields: Vec<String> =
                (0..chunk.len()).map(|i| format!("b{i}: build(uuid: $u{i}) {{ {STATE_FIELDS} }}")).collect();
            let query = format!("query BuildStates({}) {{ {} }}", vars.join(", "), fields.join(" "));
            let variables: serde_json::Map<String, Value> =
                chunk.iter().enumerate().map(|(i, id)| (format!("u{i}"), json!(id))).collect();
            match self.gql(EP, &query, Value::Object(variables), permit, false).await {
                Ok(data) => {
                    out.extend(
                        (0..chunk.len())
                            .filter_map(|i| data.get(format!("b{i}")).and_then(|b| map::build(b, Some(pipeline)))),
                    );
                }
                Err(e) => {
                    let message = match e {
                        GqlError::NotDone(m) | GqlError::Ambiguous(m) => m,
                    };
                    return Some(Err(Error::Api { endpoint: EP, status: 0, message }));
                }
            }
        }
        Some(Ok(out))
    }

    /// The REST fallback of a create whose GraphQL attempt did nothing, or a create GraphQL
    /// cannot express.
    pub(crate) fn note_fallback(&self, endpoint: &'static str, why: &str) {
        tracing::debug!(endpoint, reason = %self.inner.redactor.clean(why), "GraphQL did not carry it; sending over REST");
        self.inner.counters.graphql_fallback();
        if let Some(o) = &self.inner.observer {
            o.on_graphql_fallback(endpoint);
        }
    }
}
