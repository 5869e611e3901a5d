//! benchkite: a Kubernetes operator that gives every Buildkite job exactly one GPU and a
//! fixed, exclusive slice of CPU and memory.

pub mod api;
pub mod buildkite;
pub mod certify;
pub mod cli;
pub mod contract;
pub mod controller;
pub mod error;
pub mod events;
pub mod fleet;
pub mod kerneljob;
pub mod leader;
pub mod metrics;
pub mod runner;
pub mod server;
pub mod signing;
pub mod telemetry;

/// Agent image used by pools that name none: the Buildkite agent with the `benchkite` runner.
pub const DEFAULT_AGENT_IMAGE: &str = "ghcr.io/benchkite/agent:0.1.0";
