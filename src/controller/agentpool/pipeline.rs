//! The Buildkite pipeline KernelJobs on a pool's queue build on: ensured (managed) or checked
//! (the pool's own), and what that means for the pool's conditions.

use super::super::Context;
use super::super::pipelines::{ManagedPipeline, PipelineCheck, PipelineError, QueueSettings, reason as perr};
use crate::api::AgentPool;
use crate::api::agentpool::{PoolBuildkite, PoolPipelineStatus};
use crate::api::condition::ConditionStatus;
use crate::buildkite::pipelines::problem;

/// What became of the pool's pipeline in this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PipelineOutcome {
    /// This process manages no pipelines (why).
    Off(&'static str),
    /// The managed pipeline of the queue is as it should be.
    Managed(ManagedPipeline),
    /// The pool's own pipeline, checked.
    User(PipelineCheck),
    /// Ensuring or checking failed.
    Failed { slug: String, managed: bool, error: PipelineError },
}

/// The `PipelineReady` condition, the pool's `status.pipeline`, and how the outcome feeds
/// `Degraded`/`Ready`/`Stalled`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PipelineVerdict {
    pub(super) status: ConditionStatus,
    pub(super) reason: &'static str,
    pub(super) message: String,
    /// The pool cannot serve KernelJobs: `Degraded`, not `Ready`.
    pub(super) degraded: bool,
    /// Only the user can fix it (`Stalled`).
    pub(super) stalled: bool,
    pub(super) pipeline: Option<PoolPipelineStatus>,
}

/// Longest condition message about a pipeline (the problems can be many).
const MAX_PIPELINE_MESSAGE: usize = 4096;

pub(super) fn pipeline_verdict(outcome: &PipelineOutcome, previous: Option<&PoolPipelineStatus>) -> PipelineVerdict {
    let bounded = |m: String| crate::contract::text::truncate_str(&m, MAX_PIPELINE_MESSAGE).0;
    match outcome {
        PipelineOutcome::Off(why) => PipelineVerdict {
            status: ConditionStatus::Unknown,
            reason: "PipelinesNotManaged",
            message: format!("{why}: the pool's pipeline is neither created nor checked"),
            degraded: false,
            stalled: false,
            pipeline: None,
        },
        PipelineOutcome::Managed(p) => PipelineVerdict {
            status: ConditionStatus::True,
            reason: "PipelineInSync",
            message: format!(
                "KernelJobs on this queue build on pipeline {}{}, which benchkite created and keeps in sync",
                p.slug,
                p.web_url.as_deref().map(|u| format!(" ({u})")).unwrap_or_default()
            ),
            degraded: false,
            stalled: false,
            pipeline: Some(PoolPipelineStatus { slug: p.slug.clone(), web_url: p.web_url.clone(), managed: true }),
        },
        PipelineOutcome::User(check) => {
            let pipeline =
                Some(PoolPipelineStatus { slug: check.slug.clone(), web_url: check.web_url.clone(), managed: false });
            if check.problems.is_empty() {
                return PipelineVerdict {
                    status: ConditionStatus::True,
                    reason: "PipelineValid",
                    message: format!(
                        "pipeline {} (spec.buildkite.pipeline) has every setting KernelJobs need",
                        check.slug
                    ),
                    degraded: false,
                    stalled: false,
                    pipeline,
                };
            }
            let not_found = check.problems.iter().all(|p| p.reason == problem::NOT_FOUND);
            let settings: Vec<&str> = check.problems.iter().map(|p| p.reason).collect();
            let details: Vec<&str> = check.problems.iter().map(|p| p.message.as_str()).collect();
            PipelineVerdict {
                status: ConditionStatus::False,
                reason: if not_found { "PipelineNotFound" } else { "PipelineInvalid" },
                message: bounded(if not_found {
                    details.join("; ")
                } else {
                    format!("{}: {}", settings.join(", "), details.join("; "))
                }),
                degraded: true,
                stalled: true,
                pipeline,
            }
        }
        PipelineOutcome::Failed { slug, managed, error } => PipelineVerdict {
            status: ConditionStatus::False,
            reason: match error.reason {
                perr::MISSING_TOKEN_SCOPE => "MissingTokenScope",
                perr::CLUSTER_UNRESOLVED => "ClusterUnresolved",
                perr::CHECK_FAILED => "PipelineCheckFailed",
                _ => "PipelineCreateFailed",
            },
            message: bounded(error.message.clone()),
            degraded: true,
            stalled: !error.transient,
            pipeline: Some(PoolPipelineStatus {
                slug: slug.clone(),
                web_url: previous.filter(|p| &p.slug == slug).and_then(|p| p.web_url.clone()),
                managed: *managed,
            }),
        },
    }
}

fn queue_settings(b: &PoolBuildkite) -> QueueSettings {
    QueueSettings {
        cluster: b.cluster_id.clone().filter(|c| !c.trim().is_empty()),
        step_timeout_minutes: b.step_timeout_minutes.and_then(|m| u32::try_from(m).ok()).filter(|m| *m > 0),
    }
}

/// Ensures the managed pipeline of the pool's queue, or checks the pipeline the pool names.
pub(super) async fn pool_pipeline(pool: &AgentPool, ctx: &Context) -> PipelineOutcome {
    let Some(manager) = ctx.queues.pipelines() else {
        return PipelineOutcome::Off(if ctx.buildkite.is_none() {
            "no Buildkite API is configured (--buildkite-org and a token)"
        } else {
            "this controller does not manage pipelines"
        });
    };
    let spec = pool.spec.buildkite.clone().unwrap_or_default();
    let queue = &pool.spec.queue;
    let settings = queue_settings(&spec);
    match spec.pipeline.as_deref().filter(|p| !p.is_empty()) {
        Some(slug) => {
            manager.set_queue_settings(queue, settings);
            match manager.check_user_pipeline(slug, queue).await {
                Ok(check) => PipelineOutcome::User(check),
                Err(error) => PipelineOutcome::Failed { slug: slug.to_string(), managed: false, error },
            }
        }
        None => match manager.ensure_with(queue, settings).await {
            Ok(p) => PipelineOutcome::Managed(p),
            Err(error) => PipelineOutcome::Failed { slug: manager.slug(queue), managed: true, error },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildkite::PipelineProblem;

    fn error(reason: &'static str, transient: bool) -> PipelineError {
        PipelineError { reason, message: format!("{reason} happened"), transient, missing_scopes: Vec::new() }
    }

    #[test]
    fn a_managed_pipeline_in_sync_is_ready() {
        let v = pipeline_verdict(
            &PipelineOutcome::Managed(ManagedPipeline {
                slug: "benchkite-gpu-1a2b3c4d".into(),
                web_url: Some("https://buildkite.com/o/benchkite-gpu-1a2b3c4d".into()),
                cluster_id: Some("c1".into()),
            }),
            None,
        );
        assert_eq!(
            (v.status, v.reason, v.degraded, v.stalled),
            (ConditionStatus::True, "PipelineInSync", false, false)
        );
        assert!(v.message.contains("benchkite-gpu-1a2b3c4d") && v.message.contains("https://buildkite.com/o/"));
        assert_eq!(
            v.pipeline,
            Some(PoolPipelineStatus {
                slug: "benchkite-gpu-1a2b3c4d".into(),
                web_url: Some("https://buildkite.com/o/benchkite-gpu-1a2b3c4d".into()),
                managed: true
            })
        );
    }

    #[test]
    fn a_user_pipeline_reports_every_setting_by_name() {
        let check = |problems: Vec<PipelineProblem>| PipelineCheck {
            slug: "theirs".into(),
            web_url: Some("https://buildkite.com/o/theirs".into()),
            cluster_id: None,
            problems,
        };
        let ok = pipeline_verdict(&PipelineOutcome::User(check(vec![])), None);
        assert_eq!((ok.status, ok.reason, ok.degraded), (ConditionStatus::True, "PipelineValid", false));
        assert_eq!(ok.pipeline.as_ref().map(|p| p.managed), Some(false));

        let bad = pipeline_verdict(
            &PipelineOutcome::User(check(vec![
                PipelineProblem {
                    reason: problem::CANCEL_INTERMEDIATE_BUILDS,
                    message: "\"Cancel intermediate builds\" is on".into(),
                },
                PipelineProblem { reason: problem::CHECKOUT_NOT_SKIPPED, message: "checks out".into() },
            ])),
            None,
        );
        assert_eq!((bad.status, bad.reason), (ConditionStatus::False, "PipelineInvalid"));
        assert!(bad.degraded && bad.stalled, "only the user can fix their pipeline");
        assert!(bad.message.starts_with("CancelIntermediateBuilds, CheckoutNotSkipped: "), "{}", bad.message);
        assert!(bad.message.contains("Cancel intermediate builds"), "{}", bad.message);

        let missing = pipeline_verdict(
            &PipelineOutcome::User(PipelineCheck {
                web_url: None,
                ..check(vec![PipelineProblem { reason: problem::NOT_FOUND, message: "no pipeline theirs".into() }])
            }),
            None,
        );
        assert_eq!((missing.reason, missing.stalled), ("PipelineNotFound", true));

        let long = pipeline_verdict(
            &PipelineOutcome::User(check(vec![
                PipelineProblem {
                    reason: problem::QUEUE_MISMATCH,
                    message: "x".repeat(10_000)
                };
                3
            ])),
            None,
        );
        assert!(long.message.len() <= MAX_PIPELINE_MESSAGE, "bounded: {}", long.message.len());
    }

    #[test]
    fn failures_name_their_reason_and_keep_the_known_url() {
        let previous =
            PoolPipelineStatus { slug: "s".into(), web_url: Some("https://buildkite.com/o/s".into()), managed: true };
        let failed = |reason, transient| PipelineOutcome::Failed {
            slug: "s".into(),
            managed: true,
            error: error(reason, transient),
        };

        let v = pipeline_verdict(&failed(perr::MISSING_TOKEN_SCOPE, false), Some(&previous));
        assert_eq!(
            (v.status, v.reason, v.degraded, v.stalled),
            (ConditionStatus::False, "MissingTokenScope", true, true)
        );
        assert_eq!(v.pipeline.as_ref().and_then(|p| p.web_url.as_deref()), Some("https://buildkite.com/o/s"));

        let v = pipeline_verdict(&failed(perr::CREATE_FAILED, true), Some(&previous));
        assert_eq!((v.reason, v.stalled), ("PipelineCreateFailed", false), "a 5xx may pass");
        let v = pipeline_verdict(&failed(perr::CREATE_FAILED, false), None);
        assert_eq!((v.reason, v.stalled), ("PipelineCreateFailed", true), "a 422 needs the user");
        assert_eq!(v.pipeline.as_ref().and_then(|p| p.web_url.clone()), None);
        assert_eq!(pipeline_verdict(&failed(perr::CLUSTER_UNRESOLVED, false), None).reason, "ClusterUnresolved");
        assert_eq!(pipeline_verdict(&failed(perr::CHECK_FAILED, true), None).reason, "PipelineCheckFailed");

        // Another slug than before: its URL is not known.
        let other = PoolPipelineStatus { slug: "t".into(), ..previous };
        assert_eq!(
            pipeline_verdict(&failed(perr::CREATE_FAILED, true), Some(&other)).pipeline.and_then(|p| p.web_url),
            None
        );
    }

    #[test]
    fn without_pipeline_management_nothing_is_claimed() {
        let v = pipeline_verdict(&PipelineOutcome::Off("no Buildkite API"), None);
        assert_eq!((v.status, v.degraded, v.pipeline), (ConditionStatus::Unknown, false, None));
    }

    #[test]
    fn pool_settings_reach_the_pipeline() {
        let s = queue_settings(&PoolBuildkite {
            cluster_id: Some("c1".into()),
            step_timeout_minutes: Some(90),
            ..Default::default()
        });
        assert_eq!(s, QueueSettings { cluster: Some("c1".into()), step_timeout_minutes: Some(90) });
        let s = queue_settings(&PoolBuildkite {
            cluster_id: Some(" ".into()),
            step_timeout_minutes: Some(-5),
            ..Default::default()
        });
        assert_eq!(s, QueueSettings::default());
    }
}
