//! The Buildkite client: REST API v2, agent metrics API, webhooks. Pure HTTP, no Kubernetes.
//!
//! # Interface
//!
//! ```text
//! Client::new(Config) -> Result<Client>                      // cheap to clone (Arc inside)
//! Client::with_observer(Config, Arc<dyn Observer>) -> Result<Client>
//!
//! create_build(pipeline: Option<&str>, &NewBuild, Priority) -> Result<Build>
//! get_build(pipeline: Option<&str>, number: u64, exclude_jobs: bool) -> Result<Build>
//! list_builds(&BuildQuery, Priority) -> Result<Listing<Build>>
//! cancel_build(pipeline: Option<&str>, number: u64, Priority) -> Result<CancelOutcome>
//! list_artifacts(pipeline, number) / list_job_artifacts(pipeline, number, job_id)
//!     -> Result<Listing<Artifact>>
//! download_artifact(&Artifact, max_bytes: u64) -> Result<Vec<u8>>
//! list_agents() / list_clusters() / list_queues(cluster_id) -> Result<Listing<_>>
//! create_queue(cluster_id, key, description: Option<&str>) -> Result<QueueCreated>
//! pause_queue_dispatch(cluster_id, queue_id, note: Option<&str>) / resume_queue_dispatch(cluster_id, queue_id)
//!     -> Result<Queue>
//! queue_metrics(queue) -> Result<(QueueMetrics, Option<Duration> /* poll hint */)>
//! all_metrics() -> Result<(AllMetrics, Option<Duration>)>
//! budget_snapshot() -> BudgetSnapshot;  would_wait(Priority) -> Option<Duration>;  stats() -> ClientStats
//!
//! parse_webhook(&HeaderMap, body, &Secret, now, max_skew) -> Result<WebhookEvent, WebhookError>
//! ```
//!
//! `pipeline: None` means [`Config::default_pipeline`]. Lists follow `Link: rel="next"` up
//! to `max_pages` pages of 100 and say whether they stopped early ([`Listing::truncated`]).
//!
//! # Request budget
//!
//! All clones of a client share one [`Budget`] for the organization (see [`budget`] for
//! the details): at most `requests_per_minute` (default 180) REST requests per 60 s window,
//! tightened by the `RateLimit-*` headers of every answer (the server's limit and count win
//! when they are stricter). The client never sends a request it knows would be refused;
//! after a 429 it sends nothing until the announced reset has passed. [`Priority::Submit`]
//! and [`Priority::Cancel`] are served before [`Priority::Refresh`] and only they may spend
//! the last `priority_reserve` (10 %) of a window. Use [`Client::would_wait`] to learn
//! without blocking whether a request would have to wait (e.g. for a `Throttled`
//! condition). The agent metrics API and the artifact storage host are not REST requests
//! and do not spend the budget.
//!
//! # Retries
//!
//! Reads, cancels and queue calls are retried on 5xx, timeouts and dropped connections with
//! exponential backoff and jitter (`retry_base_delay` doubling up to `retry_max_delay`,
//! `max_retries` times; `Retry-After` is honoured). A 429 waits for the reset and is retried
//! once. Other 4xx answers are returned at once.
//!
//! **Creates are never retried once the request may have reached Buildkite.** A timeout, a
//! dropped connection, any 5xx or an unreadable success answer to `create_build` is
//! [`Error::Ambiguous`]: the build may exist. The caller must look it up by the meta-data it
//! set (`list_builds` with `meta_data`) and create again only when it is absent. Only a
//! failure to connect (nothing was sent) and a 429 (refused before processing) are retried.
//!
//! # Secrets
//!
//! [`Secret`] prints as `[redacted]`; tokens are sent as sensitive headers and never appear
//! in errors (messages from answers are scrubbed). The storage host of artifacts is fetched
//! by a separate HTTP client that sends no credential; URLs from Buildkite (next pages,
//! download URLs) must be on the API host before the token is sent to them.
//!
//! # Observability
//!
//! Pass an [`Observer`] to [`Client::with_observer`] to count attempts by endpoint (route
//! name such as `create_build`) and status, 429s, budget waits and retries;
//! [`Client::stats`] keeps the same counts internally.

pub mod budget;
mod client;
mod config;
mod error;
mod observer;
pub mod pipelines;
pub mod scopes;
mod types;
mod webhook;
mod wire;

pub use budget::{Budget, BudgetConfig, BudgetSnapshot, Priority, RateLimitHeaders};
pub use client::{Client, Reservation};
pub use config::{
    Config, DEFAULT_AGENT_API_URL, DEFAULT_API_URL, DEFAULT_GRAPHQL_URL, DEFAULT_REQUESTS_PER_MINUTE, Secret,
};
pub use error::{Error, Result, TransportKind};
pub use observer::{ClientStats, Observer};
pub use pipelines::{
    ManagedStep, NewPipeline, Pipeline, PipelinePatch, PipelineProblem, managed_slug, render_configuration,
};
pub use scopes::{AccessToken, Feature, ScopeReport, ScopeState, check_scopes, missing_scopes, required_scopes};
pub use types::{
    Agent, AgentRef, AllMetrics, Artifact, Author, Build, BuildQuery, BuildState, CancelOutcome, Cluster, Job,
    JobState, Listing, NewBuild, PipelineRef, Queue, QueueCreated, QueueMetrics,
};
pub use webhook::{DEFAULT_MAX_SKEW, WebhookAuth, WebhookError, WebhookEvent, parse_webhook};
pub use wire::link_next;
