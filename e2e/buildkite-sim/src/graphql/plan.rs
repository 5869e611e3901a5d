//! What validation produces (a plan of typed, coerced selections) and the coercion of input
//! values (literals and variables) to JSON, with graphql-ruby's error messages.

use graphql_parser::Pos;
use graphql_parser::query as q;
use serde_json::{Map, Value, json};

use super::schema::{self, Kind, TypeRef};

/// One GraphQL error as graphql-ruby renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct GqlError {
    pub message: String,
    pub locations: Vec<Pos>,
    pub path: Vec<Value>,
    pub extensions: Option<Value>,
}

impl GqlError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), locations: Vec::new(), path: Vec::new(), extensions: None }
    }

    pub fn at(mut self, pos: Pos) -> Self {
        self.locations.push(pos);
        self
    }

    pub fn path(mut self, path: Vec<Value>) -> Self {
        self.path = path;
        self
    }

    pub fn ext(mut self, ext: Value) -> Self {
        self.extensions = Some(ext);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("message".into(), json!(self.message));
        if !self.locations.is_empty() {
            let locs: Vec<Value> = self.locations.iter().map(|p| json!({"line": p.line, "column": p.column})).collect();
            m.insert("locations".into(), Value::Array(locs));
        }
        if !self.path.is_empty() {
            m.insert("path".into(), Value::Array(self.path.clone()));
        }
        if let Some(e) = &self.extensions {
            m.insert("extensions".into(), e.clone());
        }
        Value::Object(m)
    }
}

/// A selected field with its arguments coerced to JSON (variables substituted).
#[derive(Debug, Clone)]
pub struct PField {
    /// Response key (alias or name).
    pub key: String,
    pub name: String,
    pub args: Map<String, Value>,
    pub ty: TypeRef,
    pub sel: Vec<PSel>,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub enum PSel {
    Field(PField),
    /// A fragment (inline or named) on a type condition.
    On(String, Vec<PSel>),
}

/// A validated operation.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mutation: bool,
    pub sel: Vec<PSel>,
}

/// The fields of `sel` that apply to an object of type `concrete` (fragments flattened),
/// in document order.
pub fn fields_for<'a>(sel: &'a [PSel], concrete: &str, out: &mut Vec<&'a PField>) {
    for s in sel {
        match s {
            PSel::Field(f) => out.push(f),
            PSel::On(cond, inner) => {
                if schema::fragment_applies(cond, concrete) {
                    fields_for(inner, concrete, out);
                }
            }
        }
    }
}

/// Why a value did not coerce: a path inside the value and an explanation.
#[derive(Debug, Clone)]
pub struct Problem {
    pub path: Vec<String>,
    pub explanation: String,
    /// An input object got a field it does not define (literals report it differently).
    pub unknown_field: Option<(String, String)>,
}

fn problem(path: &[String], explanation: impl Into<String>) -> Problem {
    Problem { path: path.to_vec(), explanation: explanation.into(), unknown_field: None }
}

fn fmt_json(v: &Value) -> String {
    v.to_string()
}

/// Coerces a scalar or enum from JSON (variables) or from a literal rendered as JSON (with
/// `enum_literal` telling whether the literal was a bare enum name).
fn coerce_leaf(v: &Value, name: &str, enum_literal: bool, path: &[String]) -> Result<Value, Problem> {
    let bad = || problem(path, format!("Could not coerce value {} to {name}", fmt_json(v)));
    match schema::ty(name).map(|t| &t.kind) {
        Some(Kind::Enum(values)) => match v {
            Value::String(s) if values.contains(&s.as_str()) => Ok(v.clone()),
            Value::String(s) => Err(problem(path, format!("Expected \"{s}\" to be one of: {}", values.join(", ")))),
            _ => Err(bad()),
        },
        _ if enum_literal => Err(bad()),
        Some(Kind::Scalar) => match (name, v) {
            ("ID", Value::String(_)) => Ok(v.clone()),
            ("ID", Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Value::String(n.to_string())),
            ("String", Value::String(_)) => Ok(v.clone()),
            ("Int", Value::Number(n)) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => Ok(json!(i)),
                _ => Err(bad()),
            },
            ("Boolean", Value::Bool(_)) => Ok(v.clone()),
            ("DateTime", Value::String(s)) if crate::graphql::exec::parse_time(s).is_some() => Ok(v.clone()),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Coerces a variable's JSON value to `t` (GraphQL input coercion: a single value where a
/// list is expected becomes a list of one).
pub fn coerce_json(v: &Value, t: &TypeRef, path: &mut Vec<String>) -> Result<Value, Problem> {
    match t {
        TypeRef::NonNull(inner) => {
            if v.is_null() {
                return Err(problem(path, "Expected value to not be null"));
            }
            coerce_json(v, inner, path)
        }
        _ if v.is_null() => Ok(Value::Null),
        TypeRef::List(item) => match v {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, x) in items.iter().enumerate() {
                    path.push(i.to_string());
                    let r = coerce_json(x, item, path);
                    path.pop();
                    out.push(r?);
                }
                Ok(Value::Array(out))
            }
            other => Ok(Value::Array(vec![coerce_json(other, item, path)?])),
        },
        TypeRef::Named(name) => match schema::ty(name).map(|t| &t.kind) {
            Some(Kind::Input(fields)) => {
                let Value::Object(m) = v else {
                    return Err(problem(path, format!("Expected {} to be a key-value object.", fmt_json(v))));
                };
                for k in m.keys() {
                    if !fields.iter().any(|(n, _)| n == k) {
                        let mut p = problem(path, format!("Field is not defined on {name}"));
                        p.path.push(k.clone());
                        p.unknown_field = Some((name.clone(), k.clone()));
                        return Err(p);
                    }
                }
                let mut out = Map::new();
                for (fname, fty) in *fields {
                    let fty = TypeRef::parse(fty);
                    path.push((*fname).to_string());
                    let r = match m.get(*fname) {
                        None if fty.non_null() => Err(problem(path, "Expected value to not be null")),
                        None => {
                            path.pop();
                            continue;
                        }
                        Some(x) => coerce_json(x, &fty, path),
                    };
                    path.pop();
                    out.insert((*fname).to_string(), r?);
                }
                Ok(Value::Object(out))
            }
            _ => coerce_leaf(v, name, false, path),
        },
    }
}

/// A literal as JSON, variables left as `{"$var": name}` markers (resolved by the caller).
pub fn literal_to_json(v: &q::Value<'_, String>) -> Value {
    match v {
        q::Value::Variable(n) => json!({ "$var": n }),
        q::Value::Int(n) => n.as_i64().map_or(Value::Null, |i| json!(i)),
        q::Value::Float(f) => json!(f),
        q::Value::String(s) => json!(s),
        q::Value::Boolean(b) => json!(b),
        q::Value::Null => Value::Null,
        q::Value::Enum(e) => json!(e),
        q::Value::List(l) => Value::Array(l.iter().map(literal_to_json).collect()),
        q::Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), literal_to_json(v))).collect()),
    }
}

/// Coerces a literal (variables already substituted by `subst`) to `t`. Enum names are
/// only accepted as bare enum literals, strings only as string literals.
pub fn coerce_literal(
    v: &q::Value<'_, String>,
    t: &TypeRef,
    subst: &mut dyn FnMut(&str, &TypeRef) -> Result<Value, GqlError>,
) -> Result<Result<Value, Problem>, GqlError> {
    let path: Vec<String> = Vec::new();
    if let q::Value::Variable(n) = v {
        return subst(n, t).map(Ok);
    }
    Ok(match t {
        TypeRef::NonNull(inner) => {
            if matches!(v, q::Value::Null) {
                Err(problem(&path, "Expected value to not be null"))
            } else {
                coerce_literal(v, inner, subst)?
            }
        }
        _ if matches!(v, q::Value::Null) => Ok(Value::Null),
        TypeRef::List(item) => match v {
            q::Value::List(items) => {
                let mut out = Vec::new();
                for x in items {
                    match coerce_literal(x, item, subst)? {
                        Ok(j) => out.push(j),
                        Err(p) => return Ok(Err(p)),
                    }
                }
                Ok(Value::Array(out))
            }
            other => coerce_literal(other, item, subst)?.map(|j| Value::Array(vec![j])),
        },
        TypeRef::Named(name) => match schema::ty(name).map(|t| &t.kind) {
            Some(Kind::Input(fields)) => {
                let q::Value::Object(m) = v else {
                    return Ok(Err(problem(&path, "Expected an input object")));
                };
                for k in m.keys() {
                    if !fields.iter().any(|(n, _)| n == k) {
                        let mut p = problem(&path, format!("Field is not defined on {name}"));
                        p.unknown_field = Some((name.clone(), k.clone()));
                        return Ok(Err(p));
                    }
                }
                let mut out = Map::new();
                for (fname, fty) in *fields {
                    let fty = TypeRef::parse(fty);
                    match m.get(*fname) {
                        None if fty.non_null() => {
                            return Ok(Err(problem(&[(*fname).to_string()], "Expected value to not be null")));
                        }
                        None => {}
                        Some(x) => match coerce_literal(x, &fty, subst)? {
                            Ok(j) => {
                                out.insert((*fname).to_string(), j);
                            }
                            Err(p) => return Ok(Err(p)),
                        },
                    }
                }
                Ok(Value::Object(out))
            }
            _ => {
                let (j, is_enum) = match v {
                    q::Value::Enum(e) => (json!(e), true),
                    q::Value::String(s) => (json!(s), false),
                    q::Value::Float(_) | q::Value::List(_) | q::Value::Object(_) => {
                        return Ok(Err(problem(&path, "Could not coerce value")));
                    }
                    other => (literal_to_json(other), false),
                };
                let enum_type = matches!(schema::ty(name).map(|t| &t.kind), Some(Kind::Enum(_)));
                if enum_type != is_enum {
                    Err(problem(&path, "Could not coerce value"))
                } else {
                    coerce_leaf(&j, name, is_enum, &path)
                }
            }
        },
    })
}

/// May a variable of type `var` be used where `loc` is expected?
pub fn var_fits(var: &TypeRef, has_default: bool, loc: &TypeRef) -> bool {
    match (var, loc) {
        (TypeRef::NonNull(v), TypeRef::NonNull(l)) => var_fits(v, false, l),
        (TypeRef::NonNull(v), l) => var_fits(v, false, l),
        (v, TypeRef::NonNull(l)) => has_default && var_fits(v, false, l),
        (TypeRef::List(v), TypeRef::List(l)) => var_fits(v, false, l),
        (TypeRef::Named(a), TypeRef::Named(b)) => a == b,
        _ => false,
    }
}
