//! The controller's error type. Every variant says what was being done, so a log line or a
//! condition message is actionable on its own.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action}: {source}")]
    Buildkite {
        action: String,
        #[source]
        source: crate::buildkite::Error,
    },
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Buildkite { .. } => "buildkite",
            Error::MissingField(_) => "missing_field",
            Error::Serialize { .. } => "serialize",
        }
    }
}

/// True when the API server answered 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_already_exists())
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
