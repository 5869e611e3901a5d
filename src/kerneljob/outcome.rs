//! Typed outcomes the decision reads: why a result could not be read, what a failed create
//! means. Classified by type and HTTP status, never by message text.

use super::decide::bounded;
use crate::contract::summary::ResultSummary;
pub use crate::signing::Trust;

/// What the controller does with a result that carries no signature
/// (`--unsigned-results`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnsignedResults {
    /// The attempt fails (`UnsignedResult`): only results signed by the attempt's runner count.
    #[default]
    Refuse,
    /// Taken, marked unverified (migration: raw queues whose agents run benchkite's runner
    /// without a result key yet).
    Accept,
}

/// Why a finished build's result could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultError {
    /// `result.json` is in a state it never leaves (`error`, `deleted`, `expired`; docs
    /// "Artifacts" API).
    Unreadable { state: String },
    /// `result.json` is still uploading (`new`).
    Uploading,
    /// The file is not a result.
    Malformed(String),
    /// Listing or downloading failed (network, Buildkite).
    Fetch(String),
}

impl std::fmt::Display for ResultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResultError::Unreadable { state } => write!(f, "result.json is {state} in Buildkite"),
            ResultError::Uploading => f.write_str("result.json is still uploading"),
            ResultError::Malformed(e) => write!(f, "result.json is malformed: {e}"),
            ResultError::Fetch(e) => write!(f, "reading result.json: {e}"),
        }
    }
}

/// What reading a finished build's result gave.
// One per result read, short-lived: boxing the summary would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ResultRead {
    Found {
        summary: ResultSummary,
        source: &'static str,
        raw: Option<Vec<u8>>,
        /// Whether the attempt's runner signed it (checked against the attempt key).
        trust: Trust,
    },
    /// The build left no result at all.
    Missing,
    Failed(ResultError),
}

/// What a failed create means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateFailure {
    /// Sent, but no usable answer: the build may exist (look it up).
    Ambiguous,
    /// The managed pipeline is gone (deleted in the UI): ensure it again, then retry soon.
    PipelineMissing,
    /// Retrying later may help.
    Transient,
    /// The same request will be refused again (bounded tries, then the job fails).
    Permanent { status: u16, message: String },
}

/// Classifies a failed create by the error's type and HTTP status (never its text).
/// Permanent: `400`, `403`, `422`, and `404` of a pipeline the user names (benchkite
/// creates a managed one again). `401` (a token being rotated), `409`, `429` and `5xx`
/// are retried: they say nothing about this job.
pub fn classify_create_error(e: &crate::buildkite::Error, managed: bool) -> CreateFailure {
    use crate::buildkite::Error as E;
    match e {
        E::Ambiguous { .. } => CreateFailure::Ambiguous,
        E::NotFound { .. } if managed => CreateFailure::PipelineMissing,
        E::NotFound { message, .. } => CreateFailure::Permanent { status: 404, message: bounded(message) },
        E::Api { status: status @ (400 | 403 | 422), message, .. } => {
            CreateFailure::Permanent { status: *status, message: bounded(message) }
        }
        // A refused request argument is ours to fix, not Buildkite's to accept later.
        E::InvalidRequest { message, .. } => CreateFailure::Permanent { status: 400, message: bounded(message) },
        _ => CreateFailure::Transient,
    }
}
