//! The KernelJob core as a pure decision: what is observed (the object, its freshest status,
//! the board's builds, this process's memory of the job, the budget and the clock) in, what
//! to do (cancel, write status, queue, look up, release an old finalizer, requeue) out. The
//! executor in [`super::controller`] only carries a [`Plan`] out, so every transition,
//! including the dead ends of issue 16, is covered by the table tests below.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::conditions::{Stamp, with_conditions};
use super::machine::{self, BuildOutcome};
use super::memory::{AttemptState, JobMemory, SubmitFailure};
pub use super::outcome::{CreateFailure, ResultError, ResultRead, Trust, UnsignedResults, classify_create_error};
use crate::api::KernelJob;
use crate::api::kerneljob::{Attempt, BuildRef, KernelJobStatus, Phase};
use crate::buildkite::{Build, BuildState};

/// Creates Buildkite refused for a permanent reason before the job fails.
pub const MAX_CREATE_REFUSALS: u32 = 3;
/// Failed reads of a finished build's result before the job fails `ResultUnreadable`.
pub const MAX_RESULT_TRIES: u32 = 6;
/// Longest Buildkite message kept in a status or an Event.
const MAX_MESSAGE: usize = 300;
/// A job that only waits its turn gets its `Pending`/`Queued` status once it has waited this
/// long: most jobs are submitted sooner, and a write that the next one replaces within
/// seconds is API-server load for nothing (issue 16: at most 3 writes per job).
pub const QUEUED_AFTER: Duration = Duration::from_secs(10);
/// A build is recorded in the status once it has existed this long, or once it finished,
/// whichever comes first: a short job gets one write (its result) instead of three
/// (Submitted, Running, the result). Until then the board (memory) follows it; after a
/// restart the recovery look-up finds it by its attempt branch.
pub const RECORD_AFTER: Duration = Duration::from_secs(10);

/// The Throttled condition's message while the request budget is spent.
pub const THROTTLED_MESSAGE: &str =
    "Buildkite's request budget is spent; queued jobs are submitted by priority, then age, as it refills";

/// A build to cancel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancel {
    pub pipeline: String,
    pub number: u64,
    pub run_id: String,
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub action: &'static str,
    pub message: String,
}

impl Note {
    fn warning(reason: &str, action: &'static str, message: impl Into<String>) -> Self {
        Note { warning: true, reason: reason.into(), action, message: message.into() }
    }
}

/// What to do, in this order: cancel, store the output, write the status, publish the Event,
/// queue or look up, release the finalizer, delete, forget, requeue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub cancel: Option<Cancel>,
    pub status: Option<KernelJobStatus>,
    pub event: Option<Note>,
    /// Queue the job for submission.
    pub submit: bool,
    /// Queue it behind every job whose create was not refused: a request Buildkite refused
    /// does not go ahead of healthy jobs (of any namespace) while it uses its bounded tries.
    pub demote: bool,
    /// Look the next attempt's build up before anything is created.
    pub look_up: bool,
    /// This run id is known to have no build (a retry decided here, a refusal).
    pub absent: Option<String>,
    /// Follow the active attempt's build (or adopt the next attempt's): the executor reads
    /// what [`decide_follow`] needs.
    pub follow: bool,
    /// Read the finished build's result, then decide again.
    pub read_result: bool,
    /// Keep this `result.json` in the job's ConfigMap (its name goes into the status).
    pub store_output: Option<Vec<u8>>,
    /// Release an earlier version's finalizer.
    pub release: bool,
    /// The job is finished and nothing of it runs: forget its builds and keep only the
    /// records of this process's last writes (a finished job must not hold memory).
    pub settle: bool,
    pub delete: bool,
    /// The job is going away: forget its builds and its memory.
    pub forget: bool,
    /// `None`: wait for a change.
    pub requeue: Option<Duration>,
}

impl Plan {
    fn after(d: Duration) -> Self {
        Plan { requeue: Some(d), ..Default::default() }
    }
}

/// What is known about the build of the next attempt (the one status does not record).
#[derive(Clone, Copy, Debug)]
pub enum Next<'a> {
    /// Known to have none.
    Absent,
    /// A create is in flight, or its outcome is unknown.
    Creating,
    /// Not known (after a restart): a build may exist.
    Unknown,
    /// The board has it.
    Built(&'a Build),
}

impl<'a> Next<'a> {
    pub fn of(memory: &JobMemory, run_id: &str, board: Option<&'a Build>) -> Self {
        match (board, memory.attempts.get(run_id)) {
            (Some(b), _) => Next::Built(b),
            (None, Some(AttemptState::Absent)) => Next::Absent,
            (None, Some(AttemptState::Creating)) => Next::Creating,
            (None, None) => Next::Unknown,
        }
    }
}

/// Whether an agent of the job's pool can ever serve the job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Servable {
    /// As far as anyone can tell (or a target benchkite does not manage).
    #[default]
    Yes,
    /// Never, without a person changing the pool or the fleet (reason, message): fail fast,
    /// once nothing can have been created for the job.
    No(&'static str, String),
    /// It looks unservable, but this process has not watched the fleet long enough to say:
    /// submit nothing, decide again after this long.
    NotYet(Duration),
}

/// Whether a job may be submitted now (fair queueing, `admission`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Admit {
    /// Its pool has no queueing, or admitted it.
    #[default]
    Free,
    /// It waits for a free agent of its pool: its position (1 = next) and estimated start,
    /// once an admission round placed it.
    Held { position: Option<i64>, eta: Option<Timestamp> },
}

/// Everything the decision reads.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub job: &'a KernelJob,
    /// The freshest status (the cache's, or the one this process wrote last).
    pub status: &'a KernelJobStatus,
    /// The job carries the finalizer of an earlier version (new jobs get none).
    pub has_finalizer: bool,
    pub now: Timestamp,
    pub memory: &'a JobMemory,
    /// The next attempt's build.
    pub next: Next<'a>,
    /// The active attempt's build is known to be finished (board), if there is one.
    pub active_terminal: Option<bool>,
    /// Where the job's builds go: the queue, or why there is none (reason, message).
    pub target: Result<String, (&'static str, String)>,
    /// Whether an agent of the job's pool can ever serve it (`feasible::unservable`).
    pub servable: Servable,
    /// Whether its pool's fair queueing lets it be submitted now.
    pub admission: Admit,
    /// An entry of the pool's result cache for exactly this job (`cache`).
    pub cached: Option<&'a super::cache::Hit>,
    /// The token lacks a scope KernelJobs need (the message names it).
    pub missing_scopes: Option<String>,
    /// Buildkite's budget would make a submission wait.
    pub throttled: bool,
    /// A first attempt of a job created after this process took over: cannot have a build.
    pub fresh: bool,
    pub finalizer_timeout: Duration,
}

/// Conditions keep their transition times from the freshest status known (the one this
/// process wrote last, if the cache has not caught up yet).
fn stamp<'a>(job: &KernelJob, freshest: &'a KernelJobStatus, now: Timestamp) -> Stamp<'a> {
    Stamp { previous: &freshest.conditions, generation: job.metadata.generation, now }
}

fn created(job: &KernelJob, now: Timestamp) -> Timestamp {
    job.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now)
}

/// The attempt that is under way (has a build and no outcome yet).
pub fn active_attempt(status: &KernelJobStatus) -> Option<&Attempt> {
    status.attempts.last().filter(|a| a.outcome.is_empty() && a.build.is_some())
}

pub fn next_attempt_number(status: &KernelJobStatus) -> i32 {
    i32::try_from(status.attempts.len()).unwrap_or(i32::MAX - 1) + 1
}

fn since(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or_default()
}

pub(super) fn bounded(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Whether writing `planned` would change the stored status `stored`: compared as written
/// (Kubernetes times have whole seconds; a sub-second difference in memory is no change).
pub fn same_as_written(stored: &KernelJobStatus, planned: &KernelJobStatus) -> bool {
    stored == planned || serde_json::to_value(stored).ok() == serde_json::to_value(planned).ok()
}

/// The same status with its Throttled condition as in `previous`: whether a job waits for
/// the request budget changes by the second, so it is written with other news only.
fn throttled_as_before(planned: &KernelJobStatus, previous: &KernelJobStatus) -> KernelJobStatus {
    let mut s = planned.clone();
    let key = crate::api::kerneljob::conditions::THROTTLED;
    if let Some(before) = previous.conditions.iter().find(|c| c.type_ == key)
        && let Some(now) = s.conditions.iter_mut().find(|c| c.type_ == key)
    {
        *now = before.clone();
    }
    s
}

/// The whole decision for a reconcile that does not follow a build.
pub fn decide(o: &Observed<'_>) -> Plan {
    if o.job.metadata.deletion_timestamp.is_some() {
        return decide_deleted(o);
    }
    if o.status.phase.is_finished() {
        return decide_finished(o);
    }
    if active_attempt(o.status).is_some() || matches!(o.next, Next::Built(_)) {
        return Plan { follow: true, ..Default::default() };
    }
    decide_pending(o)
}

/// A stray build of the next attempt (created while the job was deleted or finished
/// before the build was recorded): cancel it, wait for a create in flight, look up an
/// unknown one. `None`: nothing can be left running.
fn stray(o: &Observed<'_>, run_id: &str) -> Option<Plan> {
    match o.next {
        Next::Built(b) if !b.state.is_terminal() && !o.memory.canceled.contains(run_id) => Some(Plan {
            cancel: Some(Cancel {
                pipeline: b.pipeline_slug().unwrap_or_default().to_string(),
                number: b.number,
                run_id: run_id.to_string(),
            }),
            requeue: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
        Next::Creating => Some(Plan::after(Duration::from_secs(1))),
        // Only a job that records no build may have an unrecorded one (a finished attempt's
        // job never created the next). A job of an earlier version (finalizer) is looked
        // up; for the others the reaper's listing of unfinished builds after a start puts
        // such a build on the board (then `Next::Built`, cancelled above): no look-up per
        // finished job.
        Next::Unknown if o.status.build.is_none() && o.has_finalizer => {
            Some(Plan { look_up: true, requeue: Some(Duration::from_secs(2)), ..Default::default() })
        }
        _ => None,
    }
}

fn next_run_id(o: &Observed<'_>) -> String {
    machine::run_id(&o.job.uid().unwrap_or_default(), next_attempt_number(o.status))
}

/// A deleted job: cancel what still runs, then let it go. If Buildkite stays unreachable,
/// the finalizer is released after `finalizer_timeout` with a Warning.
pub fn decide_deleted(o: &Observed<'_>) -> Plan {
    if !o.has_finalizer {
        return Plan { forget: true, ..Default::default() };
    }
    let since_deletion = o.job.metadata.deletion_timestamp.as_ref().map(|t| since(o.now, t.0)).unwrap_or_default();
    let expired = since_deletion >= o.finalizer_timeout;
    let mut work = None;
    if !o.status.phase.is_finished()
        && let Some(active) = active_attempt(o.status)
        && let Some(bref) = &active.build
        && o.active_terminal != Some(true)
        && !o.memory.canceled.contains(&active.run_id)
    {
        work = Some(Plan {
            cancel: Some(Cancel {
                pipeline: bref.pipeline.clone(),
                number: u64::try_from(bref.number).unwrap_or(0),
                run_id: active.run_id.clone(),
            }),
            requeue: Some(Duration::from_secs(1)),
            ..Default::default()
        });
    }
    if work.is_none() {
        work = stray(o, &next_run_id(o));
    }
    match work {
        Some(plan) if !expired => plan,
        Some(_) => Plan {
            event: Some(Note::warning(
                "FinalizerReleased",
                "Delete",
                format!(
                    "could not make sure the job's build was cancelled within {}s; releasing the KernelJob anyway: cancel its build (branch benchkite/…/{}) by hand",
                    o.finalizer_timeout.as_secs(),
                    next_run_id(o)
                ),
            )),
            release: true,
            forget: true,
            ..Default::default()
        },
        None => Plan { release: true, forget: true, ..Default::default() },
    }
}

/// A finished job: cancel a stray build, release the finalizer, honour the TTL.
pub fn decide_finished(o: &Observed<'_>) -> Plan {
    if let Some(plan) = stray(o, &next_run_id(o)) {
        return plan;
    }
    let mut plan = Plan { release: o.has_finalizer, settle: true, ..Default::default() };
    if let (Some(ttl), Some(done)) = (o.job.spec.ttl_seconds_after_finished, o.status.completion_time.as_ref()) {
        let age = since(o.now, done.0).as_secs();
        let ttl = u64::try_from(ttl).unwrap_or(0);
        if age >= ttl {
            plan.delete = true;
            plan.forget = true;
        } else {
            plan.requeue = Some(Duration::from_secs((ttl - age).max(1)));
        }
    }
    plan
}

/// A job with no build for its next attempt.
pub fn decide_pending(o: &Observed<'_>) -> Plan {
    let (job, now) = (o.job, o.now);
    let left = machine::time_left(created(job, now), &job.spec, now);
    let finish = |phase: Phase, reason: &str, message: String, action: &'static str| {
        let mut s = o.status.clone();
        s.phase = phase;
        s.build = None;
        s.completion_time = Some(Time(now));
        let s = with_conditions(stamp(job, o.status, now), s, reason, message.clone(), None);
        Plan {
            status: Some(s),
            event: Some(Note::warning(reason, action, message)),
            requeue: Some(Duration::from_secs(1)),
            ..Default::default()
        }
    };
    if left.is_zero() {
        // A create still in flight is cancelled once it answers (decide_finished).
        return finish(
            Phase::TimedOut,
            "DeadlineExceeded",
            "the deadline passed before a build was created".into(),
            "Timeout",
        );
    }
    if let Some((reason, message)) = &o.memory.refused {
        return finish(Phase::Failed, reason, message.clone(), "Submit");
    }
    if let Some(SubmitFailure::Permanent { status, message, tries }) = &o.memory.submit_failure
        && *tries >= MAX_CREATE_REFUSALS
    {
        return finish(
            Phase::Failed,
            "BuildRefused",
            format!("Buildkite refused the build {tries} times ({status}): {}", bounded(message)),
            "Submit",
        );
    }
    // Nothing can be in flight for a job with no build and no create under way (or a fresh
    // one, which cannot have a build from an earlier process).
    let nothing_created = matches!(o.next, Next::Absent) || (matches!(o.next, Next::Unknown) && o.fresh);
    // Served from the pool's result cache: finished at once, with no build (a first attempt
    // for which nothing was created; the job may use its pool).
    if nothing_created
        && o.target.is_ok()
        && o.status.attempts.is_empty()
        && let Some(hit) = o.cached
    {
        let message = super::cache::hit_message(hit);
        let s = super::cache::hit_status(o.status, hit, now);
        let s = with_conditions(stamp(job, o.status, now), s, super::cache::HIT_REASON, message.clone(), None);
        return Plan {
            status: Some(s),
            event: Some(Note { warning: false, reason: super::cache::HIT_REASON.into(), action: "Finish", message }),
            store_output: hit.raw.clone(),
            requeue: Some(Duration::from_secs(1)),
            ..Default::default()
        };
    }
    if nothing_created && o.target.is_ok() {
        match &o.servable {
            Servable::No(reason, message) => return finish(Phase::Failed, reason, message.clone(), "Submit"),
            Servable::NotYet(wait) => return Plan::after((*wait).max(Duration::from_millis(100))),
            Servable::Yes => {}
        }
    }
    let mut plan = Plan::default();
    let (reason, message, throttled) = match (&o.target, &o.missing_scopes) {
        (Err((reason, message)), _) => (reason.to_string(), message.clone(), None),
        // The token cannot create builds: say which scope to add instead of failing each
        // create with a generic 403. The job waits; the report is checked again regularly.
        (Ok(_), Some(missing)) => ("MissingTokenScope".to_string(), missing.clone(), None),
        (Ok(_), None) => {
            let free = o.admission == Admit::Free;
            match o.next {
                Next::Absent if free => plan.submit = true,
                Next::Unknown if o.fresh && free => plan.submit = true,
                Next::Unknown if !o.fresh => plan.look_up = true,
                Next::Absent | Next::Unknown | Next::Creating | Next::Built(_) => {}
            }
            // A steady message: a countdown in it would change the status at every
            // reconcile, and every write wakes the reconcile again.
            let throttled = o.throttled.then(|| THROTTLED_MESSAGE.to_string());
            match (&o.memory.submit_failure, &o.admission) {
                (Some(f), _) => ("SubmitFailed".to_string(), bounded(&f.message()), throttled),
                (None, Admit::Held { position: Some(p), .. }) => (
                    "Queued".to_string(),
                    format!(
                        "waiting for a free agent of its pool (fair queueing): position {}",
                        super::fairshare::shown_position(*p)
                    ),
                    None,
                ),
                (None, Admit::Held { position: None, .. }) => {
                    ("Queued".to_string(), "waiting for a free agent of its pool (fair queueing)".to_string(), None)
                }
                (None, Admit::Free) => ("Queued".to_string(), "waiting to be submitted".to_string(), throttled),
            }
        }
    };
    plan.demote = plan.submit && matches!(o.memory.submit_failure, Some(SubmitFailure::Permanent { .. }));
    if o.fresh && plan.submit {
        plan.absent = Some(next_run_id(o));
    }
    let again = if reason == "MissingTokenScope" { Duration::from_secs(60) } else { Duration::from_secs(30) };
    let mut s = o.status.clone();
    s.phase = Phase::Pending;
    s.build = None;
    s.queue = o.target.as_ref().ok().cloned().or(s.queue);
    // The position as shown (exact near the front, rounded further back); the estimated start
    // is renewed only with it, so a waiting job is not rewritten every second.
    let shown = match &o.admission {
        Admit::Held { position: Some(p), eta } => Some((super::fairshare::shown_position(*p), *eta)),
        _ => None,
    };
    if s.queue_position != shown.map(|(p, _)| p) {
        s.estimated_start_time = shown.and_then(|(_, eta)| eta.map(Time));
    }
    s.queue_position = shown.map(|(p, _)| p);
    let s = with_conditions(stamp(job, o.status, now), s, &reason, message.clone(), throttled.as_deref());
    let waited = since(now, created(job, now));
    // A job that only waits its turn is told so once it has waited `QUEUED_AFTER` (its
    // first attempt; a retry says Retrying at once); a change of the Throttled condition
    // alone is no news worth a write. A problem (PoolNotFound, SubmitFailed, …) is written
    // at once.
    let first_wait = reason == "Queued" && o.status.attempts.is_empty() && o.status.conditions.is_empty();
    if first_wait && waited < QUEUED_AFTER && shown.is_none() {
        plan.requeue = Some((QUEUED_AFTER - waited).max(Duration::from_secs(1)).min(left));
        return plan;
    }
    let news = !same_as_written(o.status, &throttled_as_before(&s, o.status));
    let cached_differs = job.status.as_ref().is_none_or(|c| !same_as_written(c, &s));
    if news && cached_differs {
        // Warnings only when the reason is new: a repeated write of the same problem is not.
        let before = crate::api::condition::find(&o.status.conditions, crate::api::kerneljob::conditions::READY)
            .map(|c| c.reason.clone());
        if matches!(
            reason.as_str(),
            "PoolNotFound"
                | "SubmitFailed"
                | "MissingTokenScope"
                | "PoolNotAllowed"
                | "OverrideNotAllowed"
                | "EnvNotAllowed"
        ) && before.as_deref() != Some(reason.as_str())
        {
            plan.event = Some(Note::warning(&reason, "Submit", message));
        }
        plan.status = Some(s);
    }
    plan.requeue = Some(left.min(again));
    plan
}

mod follow;
pub use follow::{Following, adopt, build_ref, decide_follow};

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
