//! Build and job states: the known ones by name, anything else kept verbatim.

use std::fmt;
use std::str::FromStr;

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::scalar_string;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)*
            /// A state this client does not know (kept verbatim).
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $s,)*
                    $name::Other(s) => s,
                }
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(match s {
                    $($s => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                })
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s.parse() {
                    Ok(v) => v,
                    Err(never) => match never {},
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::Other(String::new())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(scalar_string(Value::deserialize(d)?).map(|s| $name::from(s.as_str())).unwrap_or_default())
            }
        }
    };
}

string_enum! {
    /// State of a build.
    BuildState {
        Creating => "creating",
        Scheduled => "scheduled",
        Running => "running",
        Passed => "passed",
        Failing => "failing",
        Failed => "failed",
        Blocked => "blocked",
        Canceling => "canceling",
        Canceled => "canceled",
        Skipped => "skipped",
        NotRun => "not_run",
        Waiting => "waiting",
        WaitingFailed => "waiting_failed",
        Started => "started",
    }
}

impl BuildState {
    /// Final for the operator: passed, failed, canceled, skipped, not_run. `blocked` is not
    /// (it may be unblocked), nor are unknown states.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            BuildState::Passed | BuildState::Failed | BuildState::Canceled | BuildState::Skipped | BuildState::NotRun
        )
    }

    /// Whether `PUT …/cancel` can succeed (scheduled, running, failing).
    pub fn is_cancelable(&self) -> bool {
        matches!(self, BuildState::Scheduled | BuildState::Running | BuildState::Failing)
    }
}

string_enum! {
    /// State of a job.
    JobState {
        Pending => "pending",
        Waiting => "waiting",
        WaitingFailed => "waiting_failed",
        Blocked => "blocked",
        BlockedFailed => "blocked_failed",
        Unblocked => "unblocked",
        UnblockedFailed => "unblocked_failed",
        Limiting => "limiting",
        Limited => "limited",
        Scheduled => "scheduled",
        Assigned => "assigned",
        Accepted => "accepted",
        Running => "running",
        Passed => "passed",
        Failed => "failed",
        Canceling => "canceling",
        Canceled => "canceled",
        TimingOut => "timing_out",
        TimedOut => "timed_out",
        Skipped => "skipped",
        Broken => "broken",
        Expired => "expired",
    }
}

impl JobState {
    /// The job will not change any more.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Passed
                | JobState::Failed
                | JobState::Canceled
                | JobState::TimedOut
                | JobState::Skipped
                | JobState::Broken
                | JobState::Expired
                | JobState::WaitingFailed
                | JobState::BlockedFailed
                | JobState::UnblockedFailed
        )
    }
}
