//! Parses and validates a document against the schema subset, strictly and with
//! graphql-ruby's messages (Buildkite runs graphql-ruby): unknown fields, arguments, types
//! and variables, missing required arguments, wrong scalar types, fragment conditions,
//! selections on leaves, unused variables and fragments. Produces a [`Plan`].

use std::collections::{BTreeMap, BTreeSet};

use graphql_parser::Pos;
use graphql_parser::query as q;
use serde_json::{Map, Value, json};

use super::plan::{GqlError, PField, PSel, Plan, Problem, coerce_json, coerce_literal, var_fits};
use super::schema::{self, Kind, TypeRef};

type Doc<'a> = q::Document<'a, String>;

struct Var {
    ty: TypeRef,
    value: Value,
    has_default: bool,
}

struct Cx<'d, 'a> {
    fragments: BTreeMap<String, &'d q::FragmentDefinition<'a, String>>,
    vars: BTreeMap<String, Var>,
    op_label: String,
    used_vars: BTreeSet<String>,
    used_fragments: BTreeSet<String>,
    errors: Vec<GqlError>,
    /// Fragments being expanded (cycle guard).
    stack: Vec<String>,
}

fn parse_error(e: &q::ParseError) -> GqlError {
    let text = e.to_string();
    let text = text.strip_prefix("query parse error: ").unwrap_or(&text).trim().to_string();
    // "Parse error at L:C\n…": graphql-ruby reports `locations` too.
    let mut err = GqlError::new(text.replace('\n', " "));
    if let Some(rest) = text.split(" at ").nth(1) {
        let lc: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == ':').collect();
        if let Some((l, c)) = lc.split_once(':')
            && let (Ok(line), Ok(column)) = (l.parse(), c.parse())
        {
            err = err.at(Pos { line, column });
        }
    }
    err
}

/// Validates `text` and selects the operation. `Err`: the errors of a document that is not
/// executed at all (no `data`).
pub fn prepare(
    text: &str,
    variables: &Map<String, Value>,
    operation_name: Option<&str>,
) -> Result<Plan, Vec<GqlError>> {
    if text.trim().is_empty() {
        return Err(vec![GqlError::new("No query string was present")]);
    }
    let doc: Doc<'_> = q::parse_query::<String>(text).map_err(|e| vec![parse_error(&e)])?;
    let mut fragments = BTreeMap::new();
    let mut ops = Vec::new();
    let mut errors = Vec::new();
    for d in &doc.definitions {
        match d {
            q::Definition::Fragment(f) => {
                if fragments.insert(f.name.clone(), f).is_some() {
                    errors.push(GqlError::new(format!("Fragment name \"{}\" must be unique", f.name)).at(f.position));
                }
            }
            q::Definition::Operation(o) => ops.push(o),
        }
    }
    let name_of = |o: &q::OperationDefinition<'_, String>| match o {
        q::OperationDefinition::Query(x) => x.name.clone(),
        q::OperationDefinition::Mutation(x) => x.name.clone(),
        q::OperationDefinition::Subscription(x) => x.name.clone(),
        q::OperationDefinition::SelectionSet(_) => None,
    };
    let op = match operation_name.filter(|n| !n.is_empty()) {
        Some(n) => ops
            .iter()
            .find(|o| name_of(o).as_deref() == Some(n))
            .ok_or_else(|| vec![GqlError::new(format!("No operation named \"{n}\""))])?,
        None if ops.len() == 1 => &ops[0],
        None if ops.is_empty() => return Err(vec![GqlError::new("No operations in this document")]),
        None => return Err(vec![GqlError::new("An operation name is required")]),
    };
    let (kind, name, var_defs, directives, sel) = match op {
        q::OperationDefinition::SelectionSet(s) => ("query", None, &[][..], &[][..], s),
        q::OperationDefinition::Query(x) => {
            ("query", x.name.clone(), &x.variable_definitions[..], &x.directives[..], &x.selection_set)
        }
        q::OperationDefinition::Mutation(x) => {
            ("mutation", x.name.clone(), &x.variable_definitions[..], &x.directives[..], &x.selection_set)
        }
        q::OperationDefinition::Subscription(x) => {
            return Err(vec![GqlError::new("Schema is not configured for subscriptions").at(x.position)]);
        }
    };
    let op_label = name.as_ref().map_or_else(|| kind.to_string(), |n| format!("{kind} {n}"));
    for d in directives {
        errors.push(directive_error(d));
    }
    let mut cx = Cx {
        fragments,
        vars: BTreeMap::new(),
        op_label: op_label.clone(),
        used_vars: BTreeSet::new(),
        used_fragments: BTreeSet::new(),
        errors,
        stack: Vec::new(),
    };
    cx.variables(var_defs, variables);
    let root = if kind == "mutation" { "Mutation" } else { "Query" };
    let path = vec![json!(op_label)];
    let sel = cx.selection(sel, root, &path);
    for d in var_defs {
        if !cx.used_vars.contains(&d.name) {
            cx.errors.push(
                GqlError::new(format!("Variable ${} is declared by {} but not used", d.name, name_display(&name)))
                    .at(d.position)
                    .path(vec![json!(op_label)])
                    .ext(json!({"code": "variableNotUsed", "variableName": d.name})),
            );
        }
    }
    for (n, f) in &cx.fragments {
        if !cx.used_fragments.contains(n) {
            cx.errors.push(
                GqlError::new(format!("Fragment {n} was defined, but not used"))
                    .at(f.position)
                    .path(vec![json!(format!("fragment {n}"))])
                    .ext(json!({"code": "useAndDefineFragment", "fragmentName": n})),
            );
        }
    }
    if cx.errors.is_empty() { Ok(Plan { mutation: kind == "mutation", sel }) } else { Err(cx.errors) }
}

fn name_display(name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| "anonymous query".into())
}

fn directive_error(d: &q::Directive<'_, String>) -> GqlError {
    // The client sends no directives; `@include`/`@skip` are not implemented (strict: refused).
    GqlError::new(format!("Directive @{} is not defined", d.name))
        .at(d.position)
        .ext(json!({"code": "undefinedDirective", "directiveName": d.name}))
}

impl<'d, 'a> Cx<'d, 'a> {
    fn variables(&mut self, defs: &[q::VariableDefinition<'a, String>], given: &Map<String, Value>) {
        for d in defs {
            let ty = ast_type(&d.var_type);
            if self.vars.contains_key(&d.name) {
                self.errors
                    .push(GqlError::new(format!("There can only be one variable named \"{}\"", d.name)).at(d.position));
                continue;
            }
            if schema::ty(ty.named()).is_none() || !schema::is_input(ty.named()) {
                self.errors.push(
                    GqlError::new(format!("{} isn't a defined input type (on ${})", ty.named(), d.name))
                        .at(d.position)
                        .path(vec![json!(self.op_label)])
                        .ext(json!({"code": "variableRequiresValidType", "typeName": ty.named(), "variableName": d.name})),
                );
                continue;
            }
            let raw = match (given.get(&d.name), &d.default_value) {
                (Some(v), _) => v.clone(),
                (None, Some(def)) => super::plan::literal_to_json(def),
                (None, None) => Value::Null,
            };
            let mut path = Vec::new();
            match coerce_json(&raw, &ty, &mut path) {
                Ok(value) => {
                    self.vars.insert(d.name.clone(), Var { ty, value, has_default: d.default_value.is_some() });
                }
                Err(p) => self.errors.push(variable_error(&d.name, &ty, &raw, &p).at(d.position)),
            }
        }
    }

    fn selection(&mut self, set: &q::SelectionSet<'a, String>, parent: &str, path: &[Value]) -> Vec<PSel> {
        let mut out = Vec::new();
        for item in &set.items {
            match item {
                q::Selection::Field(f) => {
                    if let Some(pf) = self.field(f, parent, path) {
                        out.push(PSel::Field(pf));
                    }
                }
                q::Selection::InlineFragment(fr) => {
                    for d in &fr.directives {
                        self.errors.push(directive_error(d));
                    }
                    let cond = match &fr.type_condition {
                        Some(q::TypeCondition::On(t)) => t.clone(),
                        None => parent.to_string(),
                    };
                    if self.condition_ok(&cond, parent, fr.position, path) {
                        let mut p = path.to_vec();
                        p.push(json!(format!("... on {cond}")));
                        let inner = self.selection(&fr.selection_set, &cond, &p);
                        out.push(PSel::On(cond, inner));
                    }
                }
                q::Selection::FragmentSpread(sp) => {
                    for d in &sp.directives {
                        self.errors.push(directive_error(d));
                    }
                    let name = sp.fragment_name.clone();
                    self.used_fragments.insert(name.clone());
                    let Some(frag) = self.fragments.get(&name).copied() else {
                        self.errors.push(
                            GqlError::new(format!("Fragment {name} was used, but not defined"))
                                .at(sp.position)
                                .path(path.to_vec())
                                .ext(json!({"code": "useAndDefineFragment", "fragmentName": name})),
                        );
                        continue;
                    };
                    if self.stack.contains(&name) {
                        self.errors
                            .push(GqlError::new(format!("Fragment {name} contains an infinite loop")).at(sp.position));
                        continue;
                    }
                    let q::TypeCondition::On(cond) = &frag.type_condition;
                    if self.condition_ok(cond, parent, sp.position, path) {
                        self.stack.push(name.clone());
                        let mut p = path.to_vec();
                        p.push(json!(format!("... {name}")));
                        let inner = self.selection(&frag.selection_set, cond, &p);
                        self.stack.pop();
                        out.push(PSel::On(cond.clone(), inner));
                    }
                }
            }
        }
        self.conflicts(&out, parent, path);
        out
    }

    fn condition_ok(&mut self, cond: &str, parent: &str, pos: Pos, path: &[Value]) -> bool {
        let err = match schema::ty(cond).map(|t| &t.kind) {
            None => Some((
                format!("No such type {cond}, so it can't be a fragment condition"),
                json!({"code": "undefinedType", "typeName": cond}),
            )),
            Some(Kind::Object(_) | Kind::Union(_)) if !schema::fragment_applies(cond, parent) => Some((
                format!("Fragment on {cond} can't be spread inside {parent}"),
                json!({"code": "cannotSpreadFragment", "typeName": cond, "parentName": parent}),
            )),
            Some(Kind::Object(_) | Kind::Union(_)) => None,
            Some(_) => Some((
                format!("Invalid fragment on type {cond} (must be Union, Interface or Object)"),
                json!({"code": "fragmentOnNonCompositeType", "typeName": cond}),
            )),
        };
        match err {
            None => true,
            Some((m, e)) => {
                self.errors.push(GqlError::new(m).at(pos).path(path.to_vec()).ext(e));
                false
            }
        }
    }

    fn field(&mut self, f: &q::Field<'a, String>, parent: &str, path: &[Value]) -> Option<PField> {
        let key = f.alias.clone().unwrap_or_else(|| f.name.clone());
        let mut p = path.to_vec();
        p.push(json!(key));
        for d in &f.directives {
            self.errors.push(directive_error(d));
        }
        if f.name == "__typename" {
            return Some(PField {
                key,
                name: f.name.clone(),
                args: Map::new(),
                ty: TypeRef::parse("String!"),
                sel: Vec::new(),
                pos: f.position,
            });
        }
        let Some(def) = schema::field(parent, &f.name) else {
            self.errors.push(
                GqlError::new(format!("Field '{}' doesn't exist on type '{parent}'", f.name))
                    .at(f.position)
                    .path(p)
                    .ext(json!({"code": "undefinedField", "typeName": parent, "fieldName": f.name})),
            );
            return None;
        };
        let ty = TypeRef::parse(def.ty);
        let args = self.arguments(f, def, &p);
        let named = ty.named().to_string();
        let sel = if schema::is_leaf(&named) {
            if !f.selection_set.items.is_empty() {
                let what = if matches!(schema::ty(&named).map(|t| &t.kind), Some(Kind::Enum(_))) {
                    "enums"
                } else {
                    "scalars"
                };
                let names: Vec<String> = f
                    .selection_set
                    .items
                    .iter()
                    .filter_map(|s| match s {
                        q::Selection::Field(x) => Some(format!("\"{}\"", x.name)),
                        _ => None,
                    })
                    .collect();
                self.errors.push(
                    GqlError::new(format!(
                        "Selections can't be made on {what} (field '{}' returns {named} but has selections [{}])",
                        f.name,
                        names.join(", ")
                    ))
                    .at(f.position)
                    .path(p)
                    .ext(json!({"code": "selectionMismatch", "nodeName": f.name, "typeName": named})),
                );
                return None;
            }
            Vec::new()
        } else {
            if f.selection_set.items.is_empty() {
                self.errors.push(
                    GqlError::new(format!(
                        "Field must have selections (field '{}' returns {} but has no selections. Did you mean '{} {{ ... }}'?)",
                        f.name, ty, f.name
                    ))
                    .at(f.position)
                    .path(p)
                    .ext(json!({"code": "selectionMismatch", "nodeName": f.name, "typeName": named})),
                );
                return None;
            }
            self.selection(&f.selection_set, &named, &p)
        };
        Some(PField { key, name: f.name.clone(), args: args?, ty, sel, pos: f.position })
    }

    fn arguments(
        &mut self,
        f: &q::Field<'a, String>,
        def: &schema::Field,
        path: &[Value],
    ) -> Option<Map<String, Value>> {
        let mut out = Map::new();
        let mut ok = true;
        let mut seen = BTreeSet::new();
        for (name, value) in &f.arguments {
            if !seen.insert(name.clone()) {
                self.errors
                    .push(GqlError::new(format!("There can be only one argument named \"{name}\"")).at(f.position));
                ok = false;
                continue;
            }
            let Some((_, aty)) = def.args.iter().find(|(n, _)| n == name) else {
                self.errors.push(
                    GqlError::new(format!("Field '{}' doesn't accept argument '{name}'", f.name))
                        .at(f.position)
                        .path(path.to_vec())
                        .ext(json!({"code": "argumentNotAccepted", "name": f.name, "typeName": "Field", "argumentName": name})),
                );
                ok = false;
                continue;
            };
            let aty = TypeRef::parse(aty);
            let mut subst =
                |var: &str, loc: &TypeRef| self_subst(&self.vars, &self.op_label, var, loc, name, f.position);
            let r = coerce_literal(value, &aty, &mut subst);
            collect_vars(value, &mut self.used_vars);
            match r {
                Err(e) => {
                    self.errors.push(e.path(path.to_vec()));
                    ok = false;
                }
                Ok(Err(problem)) => {
                    self.errors.push(literal_error(&f.name, name, value, &aty, &problem, f.position, path));
                    ok = false;
                }
                Ok(Ok(j)) => {
                    if let (Some(n), "first" | "last") = (j.as_i64(), name.as_str())
                        && n < 0
                    {
                        self.errors.push(
                            GqlError::new(format!("Argument '{name}' on Field '{}' must not be negative", f.name))
                                .at(f.position)
                                .path(path.to_vec()),
                        );
                        ok = false;
                    }
                    out.insert(name.clone(), j);
                }
            }
        }
        let missing: Vec<&str> = def
            .args
            .iter()
            .filter(|(n, t)| {
                TypeRef::parse(t).non_null() && out.get(*n).is_none_or(Value::is_null) && !seen.contains(*n)
            })
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            self.errors.push(
                GqlError::new(format!("Field '{}' is missing required arguments: {}", f.name, missing.join(", ")))
                    .at(f.position)
                    .path(path.to_vec())
                    .ext(json!({"code": "missingRequiredArguments", "className": "Field", "name": f.name, "arguments": missing.join(", ")})),
            );
            ok = false;
        }
        ok.then_some(out)
    }

    /// Two selections with the same response key must select the same field with the same
    /// arguments ("fields can merge").
    fn conflicts(&mut self, sel: &[PSel], parent: &str, path: &[Value]) {
        let mut all = Vec::new();
        flatten_all(sel, &mut all);
        let mut seen: BTreeMap<&str, &PField> = BTreeMap::new();
        for f in all {
            match seen.get(f.key.as_str()) {
                Some(g) if g.name != f.name || g.args != f.args => {
                    let (what, detail) = if g.name == f.name {
                        ("an argument", format!("{} or {}?", json!(g.args), json!(f.args)))
                    } else {
                        ("a field", format!("{} or {}?", g.name, f.name))
                    };
                    self.errors.push(
                        GqlError::new(format!("Field '{}' has {what} conflict: {detail}", f.key))
                            .at(g.pos)
                            .at(f.pos)
                            .path(path.to_vec())
                            .ext(json!({"code": "fieldConflict", "fieldName": f.key, "typeName": parent})),
                    );
                }
                Some(_) => {}
                None => {
                    seen.insert(&f.key, f);
                }
            }
        }
    }
}

fn flatten_all<'p>(sel: &'p [PSel], out: &mut Vec<&'p PField>) {
    for s in sel {
        match s {
            PSel::Field(f) => out.push(f),
            PSel::On(_, inner) => flatten_all(inner, out),
        }
    }
}

fn collect_vars(v: &q::Value<'_, String>, used: &mut BTreeSet<String>) {
    match v {
        q::Value::Variable(n) => {
            used.insert(n.clone());
        }
        q::Value::List(l) => l.iter().for_each(|x| collect_vars(x, used)),
        q::Value::Object(o) => o.values().for_each(|x| collect_vars(x, used)),
        _ => {}
    }
}

fn self_subst(
    vars: &BTreeMap<String, Var>,
    op_label: &str,
    var: &str,
    loc: &TypeRef,
    arg: &str,
    pos: Pos,
) -> Result<Value, GqlError> {
    let op = op_label.split_once(' ').map_or("anonymous query", |(_, n)| n);
    let Some(v) = vars.get(var) else {
        return Err(GqlError::new(format!("Variable ${var} is used by {op} but not declared"))
            .at(pos)
            .ext(json!({"code": "variableNotDefined", "variableName": var})));
    };
    if !var_fits(&v.ty, v.has_default, loc) {
        let kind = if v.ty.named() == loc.named() { "Nullability mismatch" } else { "Type mismatch" };
        return Err(GqlError::new(format!("{kind} on variable ${var} and argument {arg} ({} / {loc})", v.ty))
            .at(pos)
            .ext(json!({"code": "variableMismatch", "variableName": var, "typeName": v.ty.to_string(), "argumentName": arg})));
    }
    Ok(v.value.clone())
}

fn literal_error(
    field: &str,
    arg: &str,
    value: &q::Value<'_, String>,
    ty: &TypeRef,
    p: &Problem,
    pos: Pos,
    path: &[Value],
) -> GqlError {
    if let Some((input, name)) = &p.unknown_field {
        return GqlError::new(format!("InputObject '{input}' doesn't accept argument '{name}'"))
            .at(pos)
            .path(path.to_vec())
            .ext(
                json!({"code": "argumentNotAccepted", "name": input, "typeName": "InputObject", "argumentName": name}),
            );
    }
    if ty.named() != "ID"
        && matches!(schema::ty(ty.named()).map(|t| &t.kind), Some(Kind::Input(_)))
        && !p.path.is_empty()
    {
        let f = p.path.join(".");
        let fty = match schema::ty(ty.named()).map(|t| &t.kind) {
            Some(Kind::Input(fields)) => fields.iter().find(|(n, _)| *n == f).map_or("", |(_, t)| t),
            _ => "",
        };
        return GqlError::new(format!("Argument '{f}' on InputObject '{}' is required. Expected type {fty}", ty.named()))
            .at(pos)
            .path(path.to_vec())
            .ext(json!({"code": "missingRequiredInputObjectAttribute", "argumentName": f, "argumentType": fty, "inputObjectType": ty.named()}));
    }
    GqlError::new(format!("Argument '{arg}' on Field '{field}' has an invalid value ({value}). Expected type '{ty}'."))
        .at(pos)
        .path(path.to_vec())
        .ext(json!({"code": "argumentLiteralsIncompatible", "typeName": "Field", "argumentName": arg}))
}

fn variable_error(name: &str, ty: &TypeRef, raw: &Value, p: &Problem) -> GqlError {
    let msg = if p.path.is_empty() {
        format!("Variable ${name} of type {ty} was provided invalid value")
    } else {
        format!("Variable ${name} of type {ty} was provided invalid value for {} ({})", p.path.join("."), p.explanation)
    };
    GqlError::new(msg).ext(json!({
        "value": raw,
        "problems": [{"path": p.path, "explanation": p.explanation}],
    }))
}

fn ast_type(t: &q::Type<'_, String>) -> TypeRef {
    match t {
        q::Type::NamedType(n) => TypeRef::Named(n.clone()),
        q::Type::ListType(i) => TypeRef::List(Box::new(ast_type(i))),
        q::Type::NonNullType(i) => TypeRef::NonNull(Box::new(ast_type(i))),
    }
}
