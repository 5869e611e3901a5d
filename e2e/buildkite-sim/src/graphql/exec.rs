//! Executes a validated plan against the simulator's state and computes its actual
//! complexity while rendering (see `cost.rs` for the rules). Mutations go through the same
//! state functions as the REST routes (`Inner::create_build`, `Inner::cancel_build`).

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::plan::{GqlError, PField, PSel, fields_for};
use super::resolve::{Obj, Resolved, resolve};
use super::schema;
use crate::model::graphql_id;
use crate::sim::Urls;
use crate::state::{CreateBuild, FieldError, Inner, OpError};

/// Parses a `DateTime` argument (RFC 3339, or a date/time without zone taken as UTC).
pub fn parse_time(v: &str) -> Option<Timestamp> {
    let v = v.trim();
    if let Ok(t) = v.parse::<Timestamp>() {
        return Some(t);
    }
    v.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
}

/// Decodes `base64("<Kind>---<uuid>")`.
pub fn decode_id(kind: &str, id: &str) -> Option<Uuid> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(id.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix(kind)?.strip_prefix("---")?;
    rest.parse().ok()
}

pub struct Exec<'a> {
    pub inner: &'a Inner,
    pub urls: &'a Urls,
    pub scopes: &'a [String],
    pub errors: Vec<GqlError>,
}

impl<'a> Exec<'a> {
    pub fn new(inner: &'a Inner, urls: &'a Urls, scopes: &'a [String]) -> Self {
        Self { inner, urls, scopes, errors: Vec::new() }
    }

    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|x| x == s)
    }

    pub fn error(&mut self, f: &PField, path: &[Value], message: impl Into<String>) {
        self.errors.push(GqlError::new(message).at(f.pos).path(path.to_vec()));
    }

    /// Renders the fields of `sel` that apply to `obj`; returns the object and its cost
    /// (the object's own point is counted by the caller).
    pub fn object(&mut self, obj: &Obj<'a>, sel: &[PSel], path: &[Value]) -> (Value, u64) {
        let concrete = obj.type_name();
        let mut fields = Vec::new();
        fields_for(sel, concrete, &mut fields);
        let mut out = Map::new();
        let mut cost = 0u64;
        let mut keys = BTreeSet::new();
        for f in fields {
            if !keys.insert(f.key.as_str()) {
                continue;
            }
            let mut p = path.to_vec();
            p.push(json!(f.key));
            let (v, c) = self.field(obj, f, &p);
            cost = cost.saturating_add(c);
            out.insert(f.key.clone(), v);
        }
        (Value::Object(out), cost)
    }

    fn field(&mut self, obj: &Obj<'a>, f: &PField, path: &[Value]) -> (Value, u64) {
        if f.name == "__typename" {
            return (json!(obj.type_name()), 0);
        }
        match resolve(self, obj, f, path) {
            Resolved::Leaf(v) => (v, 0),
            Resolved::One(None) => (Value::Null, u64::from(!schema::is_leaf(f.ty.named()))),
            Resolved::One(Some(o)) => {
                let (v, c) = self.object(&o, &f.sel, path);
                (v, 1 + c)
            }
            Resolved::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut cost = 1u64;
                for (i, o) in items.iter().enumerate() {
                    let mut p = path.to_vec();
                    p.push(json!(i));
                    let (v, c) = self.object(o, &f.sel, &p);
                    cost = cost.saturating_add(c);
                    out.push(v);
                }
                (Value::Array(out), cost)
            }
        }
    }
}

/// Runs the root selection of a query. Returns `data` and the actual complexity.
pub fn query(ex: &mut Exec<'_>, sel: &[PSel]) -> (Value, u64) {
    ex.object(&Obj::Query, sel, &[])
}

/// The message of a state error, as a GraphQL error message (REST's wording; field errors
/// in Rails' "Commit can't be blank" style).
pub fn op_message(e: &OpError) -> String {
    match e {
        OpError::NotFound(m) => (*m).to_string(),
        OpError::Unprocessable(m) | OpError::BadRequest(m) => m.clone(),
        OpError::Validation(errs) => {
            let parts: Vec<String> = errs.iter().map(field_message).collect();
            format!("Validation failed: {}", parts.join(", "))
        }
    }
}

fn field_message(e: &FieldError) -> String {
    if let Some(m) = &e.message {
        return m.clone();
    }
    let mut name = e.field.replace('_', " ");
    if let Some(c) = name.get(0..1) {
        name = format!("{}{}", c.to_uppercase(), &name[1..]);
    }
    match e.code.as_str() {
        "missing_field" => format!("{name} can't be blank"),
        _ => format!("{name} is invalid"),
    }
}

/// `BuildCreateInput` → the REST create's request, with the REST create's validation
/// (commit and branch required and not blank).
pub fn create_request(input: &Map<String, Value>) -> Result<CreateBuild, OpError> {
    let mut errors = Vec::new();
    let mut required = |k: &str, rest: &str| match input.get(k).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => s.to_string(),
        _ => {
            errors.push(FieldError::new(rest, "missing_field"));
            String::new()
        }
    };
    let commit = required("commit", "commit");
    let branch = required("branch", "branch");
    let mut env = std::collections::BTreeMap::new();
    for e in input.get("env").and_then(Value::as_array).into_iter().flatten() {
        match e.as_str().and_then(|s| s.split_once('=')) {
            Some((k, v)) if !k.is_empty() => {
                env.insert(k.to_string(), v.to_string());
            }
            _ => errors.push(FieldError::with_message("env", "invalid", format!("Env {e} is not KEY=value"))),
        }
    }
    let mut meta_data = std::collections::BTreeMap::new();
    for m in input.get("metaData").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(k), Some(v)) = (m.get("key").and_then(Value::as_str), m.get("value").and_then(Value::as_str)) {
            meta_data.insert(k.to_string(), v.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(OpError::Validation(errors));
    }
    Ok(CreateBuild {
        commit,
        branch,
        message: input.get("message").and_then(Value::as_str).map(str::to_string),
        author: input.get("author").filter(|a| a.is_object()).cloned(),
        env,
        meta_data,
        clean_checkout: false,
        ignore_pipeline_branch_filters: false,
    })
}

/// What a mutation field did: the build it touched.
pub struct MutationOutcome {
    /// `BuildCreatePayload` or `BuildCancelPayload`.
    pub payload_type: &'static str,
    pub build: Uuid,
    pub client_mutation_id: Option<String>,
}

/// Runs one mutation field against the state.
pub fn mutate(inner: &mut Inner, f: &PField, creator: Uuid, scopes: &[String]) -> Result<MutationOutcome, String> {
    if !scopes.iter().any(|s| s == "write_builds") {
        return Err("Your access token doesn't have the write_builds scope".into());
    }
    let input = f.args.get("input").and_then(Value::as_object).cloned().unwrap_or_default();
    let client_mutation_id = input.get("clientMutationId").and_then(Value::as_str).map(str::to_string);
    let id_arg = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    match f.name.as_str() {
        "buildCreate" => {
            let pid = id_arg("pipelineID");
            let slug = decode_id("Pipeline", &pid)
                .and_then(|u| inner.pipelines.values().find(|p| p.id == u).map(|p| p.slug.clone()))
                .ok_or_else(|| "No pipeline found".to_string())?;
            let req = create_request(&input).map_err(|e| op_message(&e))?;
            let (build, _) = inner.create_build(&slug, req, creator).map_err(|e| op_message(&e))?;
            Ok(MutationOutcome { payload_type: "BuildCreatePayload", build, client_mutation_id })
        }
        "buildCancel" => {
            let bid = id_arg("id");
            let build = decode_id("Build", &bid)
                .filter(|u| inner.builds.contains_key(u))
                .ok_or_else(|| "No build found".to_string())?;
            inner.cancel_build(build, None).map_err(|e| op_message(&e))?;
            Ok(MutationOutcome { payload_type: "BuildCancelPayload", build, client_mutation_id })
        }
        other => Err(format!("Field '{other}' doesn't exist on type 'Mutation'")),
    }
}

/// `graphql_id` of a build (exposed for tests and the client's lookups).
pub fn build_gid(id: Uuid) -> String {
    graphql_id("Build", id)
}
