//! Requested complexity (docs "GraphQL resource limits"): scalars and enums 0; objects,
//! interfaces and unions 1; the root types 0; a connection field 1, its `edges` 1, its
//! `pageInfo` 1 and its `node`s n × (1 + the node's selection), n = `first`/`last` (the larger
//! if both; 500 without either: "Not providing those may default to 500"). The docs' example
//! `organization { pipelines(first: 500) { edges { node { slug } } } }` costs 1 + 1 + 1 + 500
//! = 503. A union costs 1 plus the most expensive of its members' selections (graphql-ruby
//! takes the maximum over possible types). Repeated response keys merge (counted once);
//! aliases are distinct keys and each cost.
//!
//! The actual complexity follows the same rules on what was returned (n = nodes returned; an
//! object field that resolved to null costs its 1 and nothing below it); it is computed by
//! the executor as it renders.

use std::collections::BTreeSet;

use super::plan::{PField, PSel, fields_for};
use super::schema::{self, Kind};

/// Default page size of a connection without `first`/`last`.
pub const DEFAULT_PAGE: u64 = 500;

/// n of a connection field for the requested complexity.
pub fn page_size(f: &PField) -> u64 {
    let get = |k: &str| f.args.get(k).and_then(serde_json::Value::as_u64);
    match (get("first"), get("last")) {
        (None, None) => DEFAULT_PAGE,
        (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
    }
}

/// Requested complexity of a selection on `parent` (the root types cost 0 themselves).
pub fn requested(sel: &[PSel], parent: &str) -> u64 {
    selection(sel, parent, None)
}

fn selection(sel: &[PSel], parent: &str, n: Option<u64>) -> u64 {
    let members: Vec<&str> = match schema::ty(parent).map(|t| &t.kind) {
        Some(Kind::Union(m)) => m.to_vec(),
        _ => vec![parent],
    };
    members
        .into_iter()
        .map(|concrete| {
            let mut fields = Vec::new();
            fields_for(sel, concrete, &mut fields);
            let mut keys = BTreeSet::new();
            fields
                .into_iter()
                .filter(|f| keys.insert(f.key.as_str()))
                .map(|f| field(f, concrete, n))
                .fold(0u64, u64::saturating_add)
        })
        .max()
        .unwrap_or(0)
}

fn field(f: &PField, parent: &str, n: Option<u64>) -> u64 {
    let named = f.ty.named();
    if f.name == "__typename" || schema::is_leaf(named) {
        return 0;
    }
    if f.name == "node" && parent.ends_with("Edge") {
        return n.unwrap_or(1).saturating_mul(1 + selection(&f.sel, named, None));
    }
    if schema::is_connection(named) {
        return 1 + selection(&f.sel, named, Some(page_size(f)));
    }
    if f.name == "edges" && schema::is_connection(parent) {
        return 1 + selection(&f.sel, named, n);
    }
    1 + selection(&f.sel, named, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphql::validate::prepare;

    fn cost(q: &str) -> u64 {
        let plan = prepare(q, &serde_json::Map::new(), None).expect("valid");
        requested(&plan.sel, if plan.mutation { "Mutation" } else { "Query" })
    }

    #[test]
    fn scalars_and_enums_cost_nothing_objects_one() {
        assert_eq!(cost(r#"{ build(uuid: "x") { id uuid number state env } }"#), 1);
        assert_eq!(cost(r#"{ build(uuid: "x") { pipeline { slug } organization { slug } } }"#), 3);
    }

    #[test]
    fn connections_count_edges_page_info_and_nodes() {
        // builds 1 + edges 1 + 25 × (node 1 + pipeline 1) + pageInfo 1, under pipeline 1.
        let q = r#"{ pipeline(slug: "o/p") { builds(first: 25) { count edges { cursor node { uuid pipeline { slug } } }
            pageInfo { hasNextPage endCursor } } } }"#;
        assert_eq!(cost(q), 1 + 1 + 1 + 25 * 2 + 1);
        // Without first/last: 500 nodes; last counts like first; the larger of both.
        assert_eq!(cost(r#"{ pipeline(slug: "o/p") { builds { edges { node { uuid } } } } }"#), 503);
        assert_eq!(cost(r#"{ pipeline(slug: "o/p") { builds(last: 7) { edges { node { uuid } } } } }"#), 10);
        assert_eq!(cost(r#"{ pipeline(slug: "o/p") { builds(first: 2, last: 9) { edges { node { uuid } } } } }"#), 12);
    }

    #[test]
    fn unions_cost_their_most_expensive_member_and_aliases_each_cost() {
        let q = r#"{ build(uuid: "x") { jobs(first: 3) { edges { node {
            ... on JobTypeCommand { uuid agent { name } retriedInJob { uuid agent { name } } }
            ... on JobTypeWait { uuid } } } } } }"#;
        // build 1 + jobs 1 + edges 1 + 3 × (1 + agent 1 + retriedInJob (1 + agent 1)).
        assert_eq!(cost(q), 3 + 3 * 4);
        assert_eq!(
            cost(r#"{ a: build(uuid: "x") { uuid } b: build(uuid: "y") { uuid } a: build(uuid: "x") { number } }"#),
            2
        );
    }

    #[test]
    fn mutations_cost_their_payload_and_selection() {
        let q = r#"mutation { buildCreate(input: {pipelineID: "p"}) { clientMutationId build { uuid pipeline { slug } } } }"#;
        assert_eq!(cost(q), 1 + 1 + 1);
    }
}
