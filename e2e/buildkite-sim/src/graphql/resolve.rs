//! Field resolvers of the schema subset: what each field of each object returns.

use base64::Engine as _;
use serde_json::{Value, json};
use uuid::Uuid;

use super::exec::{Exec, parse_time};
use super::plan::PField;
use super::schema;
use crate::model::{Agent, Build, BuildState, Job, JobState, Pipeline, fmt_ts, graphql_id, opt_ts};
use crate::render::Ctx;

/// A resolved object.
#[derive(Clone)]
pub enum Obj<'a> {
    Query,
    Organization,
    Pipeline(&'a Pipeline),
    Build(&'a Build),
    Job(&'a Job),
    Agent(&'a Agent),
    MetaData(&'a str, &'a str),
    /// A mutation's payload: its type name, `clientMutationId` and build.
    Payload(&'static str, Option<String>, &'a Build),
    Conn {
        kind: &'static str,
        edges: Vec<(String, Obj<'a>)>,
        count: usize,
        next: bool,
        prev: bool,
    },
    Edge {
        kind: &'static str,
        cursor: String,
        node: Box<Obj<'a>>,
    },
    PageInfo {
        start: Option<String>,
        end: Option<String>,
        next: bool,
        prev: bool,
    },
}

impl Obj<'_> {
    pub fn type_name(&self) -> &'static str {
        match self {
            Obj::Query => "Query",
            Obj::Organization => "Organization",
            Obj::Pipeline(_) => "Pipeline",
            Obj::Build(_) => "Build",
            // Every simulated job is a command step.
            Obj::Job(_) => "JobTypeCommand",
            Obj::Agent(_) => "Agent",
            Obj::MetaData(..) => "BuildMetaData",
            Obj::Payload(t, ..) => t,
            Obj::Conn { kind, .. } => match *kind {
                "Pipeline" => "PipelineConnection",
                "Build" => "BuildConnection",
                "Job" => "JobConnection",
                _ => "BuildMetaDataConnection",
            },
            Obj::Edge { kind, .. } => match *kind {
                "Pipeline" => "PipelineEdge",
                "Build" => "BuildEdge",
                "Job" => "JobEdge",
                _ => "BuildMetaDataEdge",
            },
            Obj::PageInfo { .. } => "PageInfo",
        }
    }
}

pub enum Resolved<'a> {
    Leaf(Value),
    One(Option<Obj<'a>>),
    List(Vec<Obj<'a>>),
}

/// GraphQL `BuildStates` of a build.
pub fn build_state(s: BuildState) -> String {
    s.as_str().to_ascii_uppercase()
}

/// GraphQL `JobStates` of a job: REST's `passed`/`failed` are `FINISHED` (with `passed`).
pub fn job_state(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "PENDING",
        JobState::Waiting => "WAITING",
        JobState::Blocked => "BLOCKED",
        JobState::Scheduled => "SCHEDULED",
        JobState::Assigned => "ASSIGNED",
        JobState::Accepted => "ACCEPTED",
        JobState::Running => "RUNNING",
        JobState::Passed | JobState::Failed => "FINISHED",
        JobState::TimedOut => "TIMED_OUT",
        JobState::TimingOut => "TIMING_OUT",
        JobState::Canceled => "CANCELED",
        JobState::Canceling => "CANCELING",
        JobState::Skipped => "SKIPPED",
        JobState::Broken => "BROKEN",
        JobState::Expired => "EXPIRED",
        JobState::Limited => "LIMITED",
    }
}

fn strings(f: &PField, k: &str) -> Vec<String> {
    f.args
        .get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// A page of `items` (graphql-ruby array-connection cursors: base64 of the 1-based offset).
fn connection<'a>(
    ex: &mut Exec<'a>,
    f: &PField,
    path: &[serde_json::Value],
    kind: &'static str,
    items: Vec<Obj<'a>>,
) -> Resolved<'a> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |k: &str| -> Result<Option<usize>, String> {
        match f.args.get(k).and_then(Value::as_str) {
            None => Ok(None),
            Some(c) => b64
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<usize>().ok())
                .map(Some)
                .ok_or_else(|| format!("Invalid cursor for `{k}`: {c:?}")),
        }
    };
    let (after, before) = match (decode("after"), decode("before")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            ex.error(f, path, e);
            return Resolved::One(None);
        }
    };
    let count = items.len();
    let start = after.unwrap_or(0).min(count);
    let end = before.map_or(count, |b| b.saturating_sub(1)).clamp(start, count);
    let max = schema::max_page(&f.name) as usize;
    let first = f.args.get("first").and_then(Value::as_u64).map(|n| n as usize);
    let last = f.args.get("last").and_then(Value::as_u64).map(|n| n as usize);
    let (mut lo, mut hi) = (start, end);
    if let Some(n) = first {
        hi = hi.min(lo + n.min(max));
    }
    if let Some(n) = last {
        lo = lo.max(hi.saturating_sub(n.min(max)));
    }
    if first.is_none() && last.is_none() {
        hi = hi.min(lo + max);
    }
    let edges: Vec<(String, Obj<'a>)> = items
        .into_iter()
        .enumerate()
        .skip(lo)
        .take(hi - lo)
        .map(|(i, o)| (b64.encode((i + 1).to_string()), o))
        .collect();
    Resolved::One(Some(Obj::Conn { kind, edges, count, next: hi < end, prev: lo > start }))
}

pub fn resolve<'a>(ex: &mut Exec<'a>, obj: &Obj<'a>, f: &PField, path: &[Value]) -> Resolved<'a> {
    let inner = ex.inner;
    let ctx = Ctx { inner, urls: ex.urls };
    let arg = |k: &str| f.args.get(k).and_then(Value::as_str).map(str::to_string);
    let leaf = |v: Value| Resolved::Leaf(v);
    match (obj, f.name.as_str()) {
        (Obj::Query, "organization") => {
            if !ex.has_scope("read_organizations") && !ex.has_scope("read_pipelines") {
                ex.error(f, path, "Your access token doesn't have the read_pipelines scope");
                return Resolved::One(None);
            }
            Resolved::One((arg("slug").as_deref() == Some(inner.org.slug.as_str())).then_some(Obj::Organization))
        }
        (Obj::Query, "pipeline") => {
            if !ex.has_scope("read_pipelines") {
                ex.error(f, path, "Your access token doesn't have the read_pipelines scope");
                return Resolved::One(None);
            }
            let slug = arg("slug").unwrap_or_default();
            let p = slug
                .split_once('/')
                .filter(|(o, _)| *o == inner.org.slug)
                .and_then(|(_, p)| inner.pipelines.get(p))
                .map(Obj::Pipeline);
            Resolved::One(p)
        }
        (Obj::Query, "build") => {
            if !ex.has_scope("read_builds") {
                ex.error(f, path, "Your access token doesn't have the read_builds scope");
                return Resolved::One(None);
            }
            let b = match (arg("uuid"), arg("slug")) {
                (Some(u), None) => u.parse::<Uuid>().ok().and_then(|u| inner.builds.get(&u)),
                (None, Some(s)) => {
                    let parts: Vec<&str> = s.split('/').collect();
                    match parts[..] {
                        [o, p, n] if o == inner.org.slug => n.parse().ok().and_then(|n| inner.build_by_number(p, n)),
                        _ => None,
                    }
                }
                // The docs do not say; strict: exactly one of them.
                _ => {
                    ex.error(f, path, "Provide exactly one of `uuid` or `slug`");
                    return Resolved::One(None);
                }
            };
            Resolved::One(b.map(Obj::Build))
        }
        (Obj::Organization, "id") => leaf(json!(graphql_id("Organization", inner.org.id))),
        (Obj::Organization, "uuid") => leaf(json!(inner.org.id)),
        (Obj::Organization, "slug") => leaf(json!(inner.org.slug)),
        (Obj::Organization, "name") => leaf(json!(inner.org.name)),
        (Obj::Organization, "pipelines") => {
            let items = inner.pipelines.values().map(Obj::Pipeline).collect();
            connection(ex, f, path, "Pipeline", items)
        }
        (Obj::Pipeline(p), "id") => leaf(json!(graphql_id("Pipeline", p.id))),
        (Obj::Pipeline(p), "uuid") => leaf(json!(p.id)),
        (Obj::Pipeline(p), "slug") => leaf(json!(p.slug)),
        (Obj::Pipeline(p), "name") => leaf(json!(p.name)),
        (Obj::Pipeline(p), "builds") => {
            if !ex.has_scope("read_builds") {
                ex.error(f, path, "Your access token doesn't have the read_builds scope");
                return Resolved::One(None);
            }
            let states = strings(f, "state");
            let meta: Vec<(String, Option<String>)> = strings(f, "metaData")
                .into_iter()
                .map(|m| match m.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (m, None),
                })
                .collect();
            let branches: Vec<String> = strings(f, "branch")
                .into_iter()
                .map(|b| if b == "%default" { p.default_branch.clone() } else { b })
                .collect();
            let commits = strings(f, "commit");
            let from = arg("createdAtFrom").and_then(|t| parse_time(&t));
            let to = arg("createdAtTo").and_then(|t| parse_time(&t));
            let items = inner
                .build_order
                .iter()
                .rev()
                .filter_map(|id| inner.builds.get(id))
                .filter(|b| {
                    b.pipeline == p.slug
                        && (states.is_empty() || states.contains(&build_state(b.state)))
                        && meta
                            .iter()
                            .all(|(k, v)| b.meta_data.get(k).is_some_and(|x| v.as_ref().is_none_or(|v| v == x)))
                        && (branches.is_empty() || branches.iter().any(|g| crate::glob::wildcard_match(g, &b.branch)))
                        && (commits.is_empty() || commits.contains(&b.commit))
                        && from.is_none_or(|t| b.created_at >= t)
                        && to.is_none_or(|t| b.created_at < t)
                })
                .map(Obj::Build)
                .collect();
            connection(ex, f, path, "Build", items)
        }
        (Obj::Build(b), name) => build_field(ex, &ctx, b, f, path, name),
        (Obj::Job(j), name) => job_field(&ctx, j, name),
        (Obj::Agent(a), "id") => leaf(json!(graphql_id("Agent", a.id))),
        (Obj::Agent(a), "uuid") => leaf(json!(a.id)),
        (Obj::Agent(a), "name") => leaf(json!(a.name)),
        (Obj::Agent(a), "hostname") => leaf(json!(a.hostname)),
        (Obj::MetaData(k, _), "key") => leaf(json!(k)),
        (Obj::MetaData(_, v), "value") => leaf(json!(v)),
        (Obj::Payload(_, c, _), "clientMutationId") => leaf(json!(c)),
        (Obj::Payload(_, _, b), "build") => Resolved::One(Some(Obj::Build(b))),
        (Obj::Conn { count, .. }, "count") => leaf(json!(count)),
        (Obj::Conn { kind, edges, .. }, "edges") => Resolved::List(
            edges.iter().map(|(c, o)| Obj::Edge { kind, cursor: c.clone(), node: Box::new(o.clone()) }).collect(),
        ),
        (Obj::Conn { edges, next, prev, .. }, "pageInfo") => Resolved::One(Some(Obj::PageInfo {
            start: edges.first().map(|e| e.0.clone()),
            end: edges.last().map(|e| e.0.clone()),
            next: *next,
            prev: *prev,
        })),
        (Obj::Edge { cursor, .. }, "cursor") => leaf(json!(cursor)),
        (Obj::Edge { node, .. }, "node") => Resolved::One(Some((**node).clone())),
        (Obj::PageInfo { start, .. }, "startCursor") => leaf(json!(start)),
        (Obj::PageInfo { end, .. }, "endCursor") => leaf(json!(end)),
        (Obj::PageInfo { next, .. }, "hasNextPage") => leaf(json!(next)),
        (Obj::PageInfo { prev, .. }, "hasPreviousPage") => leaf(json!(prev)),
        _ => leaf(Value::Null),
    }
}

fn build_field<'a>(
    ex: &mut Exec<'a>,
    ctx: &Ctx<'a>,
    b: &'a Build,
    f: &PField,
    path: &[Value],
    name: &str,
) -> Resolved<'a> {
    let inner = ctx.inner;
    let leaf = |v: Value| Resolved::Leaf(v);
    match name {
        "id" => leaf(json!(graphql_id("Build", b.id))),
        "uuid" => leaf(json!(b.id)),
        "number" => leaf(json!(b.number)),
        "state" => leaf(json!(build_state(b.state))),
        "url" => leaf(json!(ctx.build_web_url(b))),
        "branch" => leaf(json!(b.branch)),
        "commit" => leaf(json!(b.commit)),
        "message" => leaf(json!(b.message)),
        "env" => leaf(json!(b.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>())),
        "source" => leaf(json!("API")),
        "createdAt" => leaf(json!(fmt_ts(b.created_at))),
        "scheduledAt" => leaf(json!(fmt_ts(b.scheduled_at))),
        "startedAt" => leaf(opt_ts(b.started_at)),
        "finishedAt" => leaf(opt_ts(b.finished_at)),
        "canceledAt" => leaf(if b.state == BuildState::Canceled { opt_ts(b.finished_at) } else { Value::Null }),
        "pipeline" => Resolved::One(inner.pipelines.get(&b.pipeline).map(Obj::Pipeline)),
        "organization" => Resolved::One(Some(Obj::Organization)),
        "metaData" => {
            let items = b.meta_data.iter().map(|(k, v)| Obj::MetaData(k, v)).collect();
            connection(ex, f, path, "MetaData", items)
        }
        "jobs" => {
            let types = strings(f, "type");
            let states = strings(f, "state");
            let items = b
                .jobs
                .iter()
                .filter_map(|id| inner.jobs.get(id))
                .filter(|_| types.is_empty() || types.iter().any(|t| t == "COMMAND"))
                .filter(|j| states.is_empty() || states.iter().any(|s| s == job_state(j.state)))
                .map(Obj::Job)
                .collect();
            connection(ex, f, path, "Job", items)
        }
        _ => leaf(Value::Null),
    }
}

fn job_field<'a>(ctx: &Ctx<'a>, j: &'a Job, name: &str) -> Resolved<'a> {
    let inner = ctx.inner;
    let leaf = |v: Value| Resolved::Leaf(v);
    match name {
        "id" => leaf(json!(graphql_id("JobTypeCommand", j.id))),
        "uuid" => leaf(json!(j.id)),
        "label" => leaf(json!(j.name)),
        "key" => leaf(json!(j.step_key)),
        "command" => leaf(json!(j.command)),
        "state" => leaf(json!(job_state(j.state))),
        "passed" => leaf(json!(j.state == JobState::Passed)),
        "softFailed" => leaf(json!(false)),
        "exitStatus" => leaf(json!(j.exit_status.map(|e| e.to_string()))),
        "createdAt" => leaf(json!(fmt_ts(j.created_at))),
        "scheduledAt" => leaf(json!(fmt_ts(j.scheduled_at))),
        "runnableAt" => leaf(opt_ts(j.runnable_at)),
        "startedAt" => leaf(opt_ts(j.started_at)),
        "finishedAt" => leaf(opt_ts(j.finished_at)),
        "url" => leaf(json!(
            inner.builds.get(&j.build).map(|b| format!("{}#{}", ctx.build_web_url(b), j.id)).unwrap_or_default()
        )),
        "retried" => leaf(json!(j.retried)),
        "retriedInJob" => Resolved::One(j.retried_in_job_id.and_then(|r| inner.jobs.get(&r)).map(Obj::Job)),
        "agent" => Resolved::One(j.agent.and_then(|a| inner.agents.get(&a)).map(Obj::Agent)),
        "build" => Resolved::One(inner.builds.get(&j.build).map(Obj::Build)),
        _ => leaf(Value::Null),
    }
}
