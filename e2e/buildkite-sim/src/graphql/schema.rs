//! The subset of Buildkite's GraphQL schema the simulator serves, with the names, types and
//! arguments of the schema pages (https://buildkite.com/docs/apis/graphql/schemas/...).
//! Anything not listed here is refused at validation, like an unknown name is by graphql-ruby.

/// A type reference as written in the schema (`[String!]`, `ID!`, `Build`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeRef {
    Named(String),
    List(Box<TypeRef>),
    NonNull(Box<TypeRef>),
}

impl TypeRef {
    /// Parses `[String!]!`-style type expressions of this module's tables.
    pub fn parse(s: &str) -> TypeRef {
        let s = s.trim();
        if let Some(inner) = s.strip_suffix('!') {
            return TypeRef::NonNull(Box::new(TypeRef::parse(inner)));
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return TypeRef::List(Box::new(TypeRef::parse(inner)));
        }
        TypeRef::Named(s.to_string())
    }

    /// The innermost named type.
    pub fn named(&self) -> &str {
        match self {
            TypeRef::Named(n) => n,
            TypeRef::List(t) | TypeRef::NonNull(t) => t.named(),
        }
    }

    pub fn non_null(&self) -> bool {
        matches!(self, TypeRef::NonNull(_))
    }

    pub fn nullable(&self) -> &TypeRef {
        match self {
            TypeRef::NonNull(t) => t,
            t => t,
        }
    }
}

impl std::fmt::Display for TypeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TypeRef::Named(n) => f.write_str(n),
            TypeRef::List(t) => write!(f, "[{t}]"),
            TypeRef::NonNull(t) => write!(f, "{t}!"),
        }
    }
}

/// An argument or input-object field: name and type expression.
pub type Arg = (&'static str, &'static str);

pub struct Field {
    pub name: &'static str,
    pub ty: &'static str,
    pub args: &'static [Arg],
}

pub enum Kind {
    Scalar,
    Enum(&'static [&'static str]),
    Object(&'static [Field]),
    Union(&'static [&'static str]),
    Input(&'static [Arg]),
}

pub struct Type {
    pub name: &'static str,
    pub kind: Kind,
}

const fn f(name: &'static str, ty: &'static str) -> Field {
    Field { name, ty, args: &[] }
}

const fn fa(name: &'static str, ty: &'static str, args: &'static [Arg]) -> Field {
    Field { name, ty, args }
}

const PAGE: &[Arg] = &[("first", "Int"), ("last", "Int"), ("after", "String"), ("before", "String")];

/// `BuildStates` (schema page "BuildStates").
pub const BUILD_STATES: &[&str] = &[
    "BLOCKED",
    "CANCELED",
    "CANCELING",
    "CREATING",
    "FAILED",
    "FAILING",
    "NOT_RUN",
    "PASSED",
    "RUNNING",
    "SCHEDULED",
    "SKIPPED",
];

/// `JobStates` (schema page "JobStates").
pub const JOB_STATES: &[&str] = &[
    "PENDING",
    "WAITING",
    "WAITING_FAILED",
    "BLOCKED",
    "BLOCKED_FAILED",
    "UNBLOCKED",
    "UNBLOCKED_FAILED",
    "LIMITING",
    "LIMITED",
    "SCHEDULED",
    "ASSIGNED",
    "ACCEPTED",
    "RUNNING",
    "FINISHED",
    "CANCELING",
    "CANCELED",
    "TIMING_OUT",
    "TIMED_OUT",
    "SKIPPED",
    "BROKEN",
    "EXPIRED",
];

pub const TYPES: &[Type] = &[
    Type { name: "ID", kind: Kind::Scalar },
    Type { name: "String", kind: Kind::Scalar },
    Type { name: "Int", kind: Kind::Scalar },
    Type { name: "Boolean", kind: Kind::Scalar },
    Type { name: "DateTime", kind: Kind::Scalar },
    Type { name: "BuildStates", kind: Kind::Enum(BUILD_STATES) },
    Type { name: "JobStates", kind: Kind::Enum(JOB_STATES) },
    Type { name: "JobTypes", kind: Kind::Enum(&["BLOCK", "COMMAND", "TRIGGER", "WAIT"]) },
    Type { name: "BuildSource", kind: Kind::Enum(&["API", "FRONTEND", "SCHEDULE", "TRIGGER_JOB", "WEBHOOK"]) },
    Type {
        name: "Query",
        kind: Kind::Object(&[
            fa("organization", "Organization", &[("slug", "ID!")]),
            fa("pipeline", "Pipeline", &[("slug", "ID!")]),
            fa("build", "Build", &[("uuid", "ID"), ("slug", "ID")]),
        ]),
    },
    Type {
        name: "Mutation",
        kind: Kind::Object(&[
            fa("buildCreate", "BuildCreatePayload", &[("input", "BuildCreateInput!")]),
            fa("buildCancel", "BuildCancelPayload", &[("input", "BuildCancelInput!")]),
        ]),
    },
    Type {
        name: "Organization",
        kind: Kind::Object(&[
            f("id", "ID!"),
            f("uuid", "String!"),
            f("slug", "String!"),
            f("name", "String!"),
            fa("pipelines", "PipelineConnection", PAGE),
        ]),
    },
    Type {
        name: "PipelineConnection",
        kind: Kind::Object(&[f("count", "Int!"), f("edges", "[PipelineEdge]"), f("pageInfo", "PageInfo!")]),
    },
    Type { name: "PipelineEdge", kind: Kind::Object(&[f("cursor", "String!"), f("node", "Pipeline")]) },
    Type {
        name: "PageInfo",
        kind: Kind::Object(&[
            f("endCursor", "String"),
            f("hasNextPage", "Boolean!"),
            f("hasPreviousPage", "Boolean!"),
            f("startCursor", "String"),
        ]),
    },
    Type {
        name: "Pipeline",
        kind: Kind::Object(&[
            f("id", "ID!"),
            f("uuid", "String!"),
            f("slug", "String!"),
            f("name", "String!"),
            fa(
                "builds",
                "BuildConnection",
                &[
                    ("first", "Int"),
                    ("last", "Int"),
                    ("after", "String"),
                    ("before", "String"),
                    ("branch", "[String!]"),
                    ("commit", "[String!]"),
                    ("createdAtFrom", "DateTime"),
                    ("createdAtTo", "DateTime"),
                    ("metaData", "[String!]"),
                    ("state", "[BuildStates!]"),
                ],
            ),
        ]),
    },
    Type {
        name: "BuildConnection",
        kind: Kind::Object(&[f("count", "Int!"), f("edges", "[BuildEdge]"), f("pageInfo", "PageInfo!")]),
    },
    Type { name: "BuildEdge", kind: Kind::Object(&[f("cursor", "String!"), f("node", "Build")]) },
    Type {
        name: "Build",
        kind: Kind::Object(&[
            f("id", "ID!"),
            f("uuid", "String!"),
            f("number", "Int!"),
            f("state", "BuildStates!"),
            f("url", "String!"),
            f("branch", "String!"),
            f("commit", "String!"),
            f("message", "String"),
            f("env", "[String!]"),
            f("source", "BuildSource!"),
            f("createdAt", "DateTime"),
            f("scheduledAt", "DateTime"),
            f("startedAt", "DateTime"),
            f("finishedAt", "DateTime"),
            f("canceledAt", "DateTime"),
            f("pipeline", "Pipeline!"),
            f("organization", "Organization!"),
            fa("metaData", "BuildMetaDataConnection", PAGE),
            fa(
                "jobs",
                "JobConnection",
                &[
                    ("first", "Int"),
                    ("last", "Int"),
                    ("after", "String"),
                    ("before", "String"),
                    ("type", "[JobTypes!]"),
                    ("state", "[JobStates!]"),
                ],
            ),
        ]),
    },
    Type {
        name: "BuildMetaDataConnection",
        kind: Kind::Object(&[f("count", "Int!"), f("edges", "[BuildMetaDataEdge]"), f("pageInfo", "PageInfo!")]),
    },
    Type { name: "BuildMetaDataEdge", kind: Kind::Object(&[f("cursor", "String!"), f("node", "BuildMetaData")]) },
    Type { name: "BuildMetaData", kind: Kind::Object(&[f("key", "String!"), f("value", "String!")]) },
    Type {
        name: "JobConnection",
        kind: Kind::Object(&[f("count", "Int!"), f("edges", "[JobEdge]"), f("pageInfo", "PageInfo!")]),
    },
    Type { name: "JobEdge", kind: Kind::Object(&[f("cursor", "String!"), f("node", "Job")]) },
    Type { name: "Job", kind: Kind::Union(&["JobTypeBlock", "JobTypeCommand", "JobTypeTrigger", "JobTypeWait"]) },
    Type {
        name: "JobTypeCommand",
        kind: Kind::Object(&[
            f("id", "ID!"),
            f("uuid", "String!"),
            f("label", "String"),
            f("key", "String"),
            f("command", "String"),
            f("state", "JobStates!"),
            f("passed", "Boolean!"),
            f("softFailed", "Boolean!"),
            f("exitStatus", "String"),
            f("createdAt", "DateTime"),
            f("scheduledAt", "DateTime"),
            f("runnableAt", "DateTime"),
            f("startedAt", "DateTime"),
            f("finishedAt", "DateTime"),
            f("url", "String!"),
            f("retried", "Boolean!"),
            f("retriedInJob", "JobTypeCommand"),
            f("agent", "Agent"),
            f("build", "Build"),
        ]),
    },
    Type { name: "JobTypeWait", kind: Kind::Object(&[f("id", "ID!"), f("uuid", "String!"), f("state", "JobStates!")]) },
    Type {
        name: "JobTypeBlock",
        kind: Kind::Object(&[f("id", "ID!"), f("uuid", "String!"), f("state", "JobStates!")]),
    },
    Type {
        name: "JobTypeTrigger",
        kind: Kind::Object(&[f("id", "ID!"), f("uuid", "String!"), f("state", "JobStates!")]),
    },
    Type {
        name: "Agent",
        kind: Kind::Object(&[f("id", "ID!"), f("uuid", "String!"), f("name", "String!"), f("hostname", "String")]),
    },
    Type { name: "BuildCreatePayload", kind: Kind::Object(&[f("clientMutationId", "String"), f("build", "Build!")]) },
    Type { name: "BuildCancelPayload", kind: Kind::Object(&[f("clientMutationId", "String"), f("build", "Build!")]) },
    Type {
        name: "BuildCreateInput",
        kind: Kind::Input(&[
            ("author", "BuildAuthorInput"),
            ("branch", "String"),
            ("clientMutationId", "String"),
            ("commit", "String"),
            ("env", "[String!]"),
            ("message", "String"),
            ("metaData", "[BuildMetaDataInput!]"),
            ("pipelineID", "ID!"),
        ]),
    },
    Type { name: "BuildCancelInput", kind: Kind::Input(&[("clientMutationId", "String"), ("id", "ID!")]) },
    Type { name: "BuildMetaDataInput", kind: Kind::Input(&[("key", "String!"), ("value", "String!")]) },
    // The schema page gives no field types for `BuildAuthorInput`; strict: both required.
    Type { name: "BuildAuthorInput", kind: Kind::Input(&[("email", "String!"), ("name", "String!")]) },
];

pub fn ty(name: &str) -> Option<&'static Type> {
    TYPES.iter().find(|t| t.name == name)
}

pub fn field(type_name: &str, field: &str) -> Option<&'static Field> {
    match ty(type_name).map(|t| &t.kind) {
        Some(Kind::Object(fields)) => fields.iter().find(|f| f.name == field),
        _ => None,
    }
}

/// Scalars and enums cost 0; objects, interfaces and unions 1 (docs "GraphQL resource limits").
pub fn is_leaf(type_name: &str) -> bool {
    matches!(ty(type_name).map(|t| &t.kind), Some(Kind::Scalar | Kind::Enum(_)))
}

pub fn is_input(type_name: &str) -> bool {
    matches!(ty(type_name).map(|t| &t.kind), Some(Kind::Scalar | Kind::Enum(_) | Kind::Input(_)))
}

pub fn is_connection(type_name: &str) -> bool {
    type_name.ends_with("Connection")
}

/// Can a fragment on `cond` apply inside a selection on `parent`?
pub fn fragment_applies(cond: &str, parent: &str) -> bool {
    if cond == parent {
        return true;
    }
    fn members(n: &str) -> Vec<&str> {
        match ty(n).map(|t| &t.kind) {
            Some(Kind::Union(m)) => m.to_vec(),
            _ => vec![n],
        }
    }
    let (a, b) = (members(cond), members(parent));
    a.iter().any(|x| b.contains(x))
}

/// Largest page a connection returns (docs: "Not providing those may default to 500 …
/// `Build.metaData` accepts `first` values up to 10,000").
pub fn max_page(field: &str) -> u64 {
    if field == "metaData" { 10_000 } else { 500 }
}
