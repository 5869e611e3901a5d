//! The decision for a job that follows a build: recording it (adopt), its progress, the
//! outcome and its result.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;

/// The next attempt's build was created (or found): record it in the status.
pub fn adopt(
    status: &KernelJobStatus,
    attempt: i32,
    run_id: &str,
    build: &Build,
    pipeline: &str,
    now: Timestamp,
) -> KernelJobStatus {
    let mut status = status.clone();
    let bref = build_ref(build, pipeline);
    status.attempts.push(Attempt {
        attempt,
        run_id: run_id.to_string(),
        build: Some(bref.clone()),
        state: build.state.as_str().to_string(),
        created_at: build.created_at.map(Time),
        ..Default::default()
    });
    status.build = Some(bref);
    status.phase = Phase::Submitted;
    status.queue_position = None;
    status.estimated_start_time = None;
    status.start_time = status.start_time.or(Some(Time(now)));
    status
}

pub fn build_ref(build: &Build, pipeline: &str) -> BuildRef {
    BuildRef {
        pipeline: build.pipeline_slug().unwrap_or(pipeline).to_string(),
        number: i64::try_from(build.number).unwrap_or(i64::MAX),
        id: build.id.clone(),
        web_url: build.web_url.clone().unwrap_or_default(),
    }
}

/// What following the active attempt's build reads.
#[derive(Clone, Debug)]
pub struct Following<'a> {
    pub job: &'a KernelJob,
    /// The status, with the active attempt last.
    pub status: &'a KernelJobStatus,
    /// The freshest snapshot of the build.
    pub build: &'a Build,
    pub we_canceled: bool,
    pub now: Timestamp,
    /// Time since the board last learned something about the build.
    pub quiet: Duration,
    pub stale_after: Duration,
    pub result: Option<&'a ResultRead>,
    /// Failed result reads so far.
    pub result_tries: u32,
    /// The status already records this attempt (false: just adopted, not yet written).
    pub recorded: bool,
    /// What an unsigned result gets (`--unsigned-results`).
    pub unsigned: UnsignedResults,
}

/// Follows the build of the active attempt.
pub fn decide_follow(f: &Following<'_>) -> Plan {
    let (job, now) = (f.job, f.now);
    let mut status = f.status.clone();
    let Some(active) = status.attempts.last().cloned() else { return Plan::after(Duration::from_secs(5)) };
    let Some(bref) = active.build.clone() else { return Plan::after(Duration::from_secs(5)) };
    let number = u64::try_from(bref.number).unwrap_or(0);
    let left = machine::time_left(created(job, now), &job.spec, now);
    let build = f.build;
    let finish = |mut s: KernelJobStatus, phase: Phase, reason: &str, message: String, warn: bool| {
        if let Some(a) = s.attempts.last_mut() {
            a.outcome = format!("{reason}: {message}");
        }
        s.phase = phase;
        s.completion_time = Some(Time(now));
        let s = with_conditions(stamp(job, f.status, now), s, reason, message.clone(), None);
        // The terminal transition is the one Event a job gets besides warnings.
        let event = match phase {
            Phase::Succeeded => Note { warning: false, reason: "Completed".into(), action: "Finish", message },
            Phase::Cancelled if !warn => Note { warning: false, reason: "Cancelled".into(), action: "Finish", message },
            _ => Note { warning: true, reason: reason.to_string(), action: "Finish", message },
        };
        Plan { status: Some(s), event: Some(event), requeue: Some(Duration::from_secs(1)), ..Default::default() }
    };

    if left.is_zero() && !build.state.is_terminal() && build.state != BuildState::Canceling {
        // The deadline passed: cancel the build, then the job is TimedOut.
        if let Some(a) = status.attempts.last_mut() {
            a.state = "canceling".into();
        }
        let msg = format!("the deadline passed; build #{number} was cancelled");
        let mut plan = finish(status, Phase::TimedOut, "DeadlineExceeded", msg, true);
        if let Some(s) = plan.status.as_mut()
            && let Some(a) = s.attempts.last_mut()
        {
            a.outcome = "Cancelled: deadline exceeded".into();
        }
        plan.cancel = Some(Cancel { pipeline: bref.pipeline.clone(), number, run_id: active.run_id.clone() });
        return plan;
    }

    let we_canceled = f.we_canceled || left.is_zero();
    let outcome = machine::classify(&crate::kerneljob::board::view(build), we_canceled);
    if let Some(a) = status.attempts.last_mut() {
        a.state = build.state.as_str().to_string();
        a.started_at = build.started_at.map(Time).or(a.started_at.take());
        a.finished_at = build.finished_at.map(Time).or(a.finished_at.take());
        if let Some(j) =
            build.jobs.iter().filter(|j| !j.retried).find(|j| j.kind.as_deref().is_none_or(|k| k == "script"))
        {
            a.exit_status = j.exit_status;
            a.signal_reason = j.signal_reason.clone();
        }
    }
    let attempts_made = i32::try_from(status.attempts.len()).unwrap_or(i32::MAX);
    match &outcome {
        BuildOutcome::InFlight { running } => {
            status.phase = if *running { Phase::Running } else { Phase::Submitted };
            let msg = if *running {
                format!("build #{number} is running")
            } else {
                format!("build #{number} waits for an agent")
            };
            let reason = if *running { "BuildRunning" } else { "BuildScheduled" };
            let s = with_conditions(stamp(job, f.status, now), status, reason, msg, None);
            let wait = f.stale_after.saturating_sub(f.quiet).max(Duration::from_secs(1));
            // A build not yet recorded is recorded once it has existed `RECORD_AFTER`
            // (or when it finishes): until then its news (running, finished) wake the
            // reconcile, and a short job is written once, with its result.
            let age = build.created_at.map(|c| since(now, c)).unwrap_or(RECORD_AFTER);
            if !f.recorded && age < RECORD_AFTER {
                let until = (RECORD_AFTER - age).max(Duration::from_secs(1));
                return Plan {
                    requeue: Some(until.min(wait).min(left).max(Duration::from_secs(1))),
                    ..Default::default()
                };
            }
            return Plan {
                status: (!f.recorded || !same_as_written(f.status, &s)).then_some(s),
                requeue: Some(wait.min(left).max(Duration::from_secs(1))),
                ..Default::default()
            };
        }
        BuildOutcome::Infrastructure { reason } if machine::may_retry(&job.spec, attempts_made) && !left.is_zero() => {
            if let Some(a) = status.attempts.last_mut() {
                a.outcome = format!("InfrastructureFailure: {reason}");
            }
            status.phase = Phase::Pending;
            status.build = None;
            let msg = format!(
                "build #{number} hit an infrastructure failure ({reason}); retrying (attempt {} of {})",
                attempts_made + 1,
                job.spec.retries + 1
            );
            let s = with_conditions(stamp(job, f.status, now), status, "Retrying", msg.clone(), None);
            return Plan {
                status: Some(s),
                event: Some(Note::warning("Retrying", "Retry", msg)),
                // This process decided the retry: the next run id cannot have a build yet.
                absent: Some(machine::run_id(&job.uid().unwrap_or_default(), attempts_made + 1)),
                requeue: Some(Duration::from_millis(200)),
                ..Default::default()
            };
        }
        _ => {}
    }

    let wants_result = matches!(outcome, BuildOutcome::Passed | BuildOutcome::Failed { .. });
    let Some(read) = f.result.filter(|_| wants_result) else {
        if wants_result {
            return Plan { read_result: true, ..Default::default() };
        }
        let (phase, reason, message) = machine::finished_phase(&outcome, None);
        let (phase, reason) = if outcome == BuildOutcome::CanceledByUs && left.is_zero() {
            (Phase::TimedOut, "DeadlineExceeded")
        } else {
            (phase, reason)
        };
        return finish(status, phase, reason, message, phase != Phase::Cancelled);
    };
    let (summary, source, raw, verified) = match read {
        ResultRead::Found { summary, source, raw, trust: Trust::Verified } => {
            (Some(summary), *source, raw.clone(), true)
        }
        ResultRead::Found { summary, source, raw, trust: Trust::Unsigned } if f.unsigned == UnsignedResults::Accept => {
            (Some(summary), *source, raw.clone(), false)
        }
        ResultRead::Found { trust: Trust::Unsigned, .. } => {
            let msg = format!(
                "build #{number} left a result no runner signed; refused (--unsigned-results=refuse): no score"
            );
            return finish(status, Phase::Failed, "UnsignedResult", msg, true);
        }
        ResultRead::Found { trust: Trust::NotTrusted(why), .. } => {
            // Not retried: a result that is not the runner's is what the build (the
            // submission, or whoever holds its job token) did, not the infrastructure.
            let msg = format!("build #{number} left a result that is not trusted: {why}; no score");
            return finish(status, Phase::Failed, "ResultNotTrusted", msg, true);
        }
        ResultRead::Missing => (None, "", None, false),
        ResultRead::Failed(_) if outcome != BuildOutcome::Passed => (None, "", None, false),
        ResultRead::Failed(err) => {
            let tries = f.result_tries.saturating_add(1);
            let (reason, message) = match err {
                ResultError::Malformed(_) => ("ResultMalformed", err.to_string()),
                ResultError::Unreadable { .. } => ("ResultMissing", format!("the build passed but {err}")),
                _ if left.is_zero() => {
                    ("ResultMissing", format!("the deadline passed before the result could be read: {err}"))
                }
                _ if tries >= MAX_RESULT_TRIES => (
                    "ResultUnreadable",
                    format!("the build passed but its result could not be read after {tries} tries: {err}"),
                ),
                _ => {
                    // Transient trouble reading the artifact: try again later, a bounded number
                    // of times, backing off.
                    let backoff =
                        Duration::from_secs(5u64.saturating_mul(1 << tries.min(4))).min(Duration::from_secs(60));
                    let mut plan =
                        Plan { requeue: Some(backoff.min(left).max(Duration::from_secs(1))), ..Default::default() };
                    // A build that finished before it was recorded: record it now, so the
                    // job shows its build while the result is retried.
                    if !f.recorded {
                        status.phase = Phase::Running;
                        let msg = format!("build #{number} finished; reading its result");
                        plan.status =
                            Some(with_conditions(stamp(job, f.status, now), status, "ReadingResult", msg, None));
                    }
                    return plan;
                }
            };
            return finish(status, Phase::Failed, reason, message, true);
        }
    };
    let (phase, reason, mut message) = machine::finished_phase(&outcome, summary);
    if summary.is_some() && !verified {
        message.push_str(" (the result is unsigned: accepted unverified, --unsigned-results=accept)");
    }
    if let Some(s) = summary {
        let mut result = machine::result_status(s, source);
        result.verified = Some(verified);
        status.summary = Some(machine::summary_status(&result, s));
        status.result = Some(result);
        if phase == Phase::Succeeded {
            status.passed = s.passed;
            status.score = s.score.filter(|v| v.is_finite());
        }
    }
    let mut plan = finish(status, phase, reason, message, phase != Phase::Succeeded);
    plan.store_output = raw;
    plan
}
