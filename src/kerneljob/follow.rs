//! Following the active attempt's build: the reads [`decide::decide_follow`] needs (the
//! build, its jobs, its result), then its plan, carried out by the executor.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::controller::{JobCtx, execute, key_of, pipeline_of, target};
use super::decide::{self, Following, ResultError, ResultRead, Trust, active_attempt, next_attempt_number};
use super::machine::{self, meta};
use super::memory::JobMemory;
use crate::api::kerneljob::FingerprintStatus;
use crate::api::kerneljob::{BuildRef, KernelJobStatus};
use crate::api::{FIELD_MANAGER, KernelJob};
use crate::buildkite::{self, Build};
use crate::contract;
use crate::error::{Error, Result};
use crate::signing::{self, Signed};

/// Follows the build of the active attempt (recording the next attempt's build first if
/// the board has one): reads what the decision needs (the build, its jobs, its result),
/// then carries out [`decide::decide_follow`].
pub(super) async fn follow(
    job: &KernelJob,
    ctx: &JobCtx,
    mut status: KernelJobStatus,
    memory: &JobMemory,
) -> Result<Action> {
    let (key, uid) = (key_of(job), job.uid().unwrap_or_default());
    let now = Timestamp::now();
    let recorded = active_attempt(&status).is_some();
    if !recorded {
        let attempt = next_attempt_number(&status);
        let run_id = machine::run_id(&uid, attempt);
        let Some(entry) = ctx.board.get(&run_id) else { return Ok(Action::requeue(Duration::from_secs(1))) };
        // Adopted only when what it was created with says it is this attempt's (its attempt
        // branch or build env), never by meta-data alone.
        let Some(entry) = confirm(ctx, &key, &run_id, entry, now).await else {
            return Ok(Action::requeue(Duration::from_secs(5)));
        };
        // The pipeline the build is in (the one it was created on), else where the job's builds go.
        let pipeline = match entry.build.pipeline_slug() {
            Some(p) => p.to_string(),
            None => pipeline_of(job, ctx, &status).ok_or(Error::MissingField("the build's pipeline"))?,
        };
        status = decide::adopt(&status, attempt, &run_id, &entry.build, &pipeline, now);
        status.queue = status.queue.or_else(|| target(job, ctx).ok().map(|t| t.queue));
        // Not `result_tries`: a build that finished before it was recorded is recorded
        // again at each reconcile until its result is read, and the bound must hold.
        ctx.memory.with_existing(&key, &uid, |m| m.submit_failure = None);
    }
    let active = status.attempts.last().cloned().ok_or(Error::MissingField("attempt"))?;
    let bref = active.build.clone().ok_or(Error::MissingField("the attempt's build"))?;
    let Some((build, seen)) = board_build(job, ctx, &active.run_id, &active, &bref).await else {
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let quiet = Duration::try_from(now.duration_since(seen)).unwrap_or_default();
    let mut build = build;
    let number = u64::try_from(bref.number).unwrap_or(0);
    // No news for a long time: read the build once (webhooks and the poller may both have
    // missed it).
    if !build.state.is_terminal() && quiet >= ctx.config.stale_after {
        match ctx.bk.get_build(Some(&bref.pipeline), number, false).await {
            Ok(b) => {
                ctx.board.update(&b, now);
                build = ctx.board.get(&active.run_id).map(|e| e.build).unwrap_or(b);
            }
            Err(e) => tracing::warn!(job = %key, error = %e, "reading a quiet build failed"),
        }
    }
    // A failed build's jobs say whether the infrastructure failed (webhook bodies carry no
    // jobs): read them once. A build cancelled by someone else needs them too (an agent
    // stopped mid-job is an infrastructure failure, a cancel in the UI is final).
    let we_canceled = memory.canceled.contains(&active.run_id);
    let needs_jobs = build.state == buildkite::BuildState::Failed
        || (build.state == buildkite::BuildState::Canceled && !we_canceled);
    if needs_jobs && !build.jobs.iter().any(|j| j.state.as_ref().is_some_and(|s| s.is_terminal())) {
        match ctx.bk.get_build(Some(&bref.pipeline), number, false).await {
            Ok(b) => {
                ctx.board.update(&b, now);
                build = ctx.board.get(&active.run_id).map(|e| e.build).unwrap_or(b);
            }
            Err(e) => {
                tracing::warn!(job = %key, error = %e, "reading the jobs of a failed build failed; retrying");
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
        }
    }
    let mut result: Option<ResultRead> = None;
    loop {
        let plan = decide::decide_follow(&Following {
            job,
            status: &status,
            build: &build,
            we_canceled,
            now,
            quiet,
            stale_after: ctx.config.stale_after,
            result: result.as_ref(),
            result_tries: memory.result_tries,
            recorded,
            unsigned: ctx.config.unsigned_results,
        });
        if plan.read_result && result.is_none() {
            result = Some(read_result(job, ctx, &bref, &build, &active.run_id, status.queue.as_deref()).await);
            continue;
        }
        if let Some(ResultRead::Failed(e)) = &result
            && plan.status.is_none()
        {
            tracing::warn!(job = %key, error = %e, "reading the result failed; retrying");
            ctx.memory.with(&key, &uid, |m| m.result_tries = m.result_tries.saturating_add(1));
        }
        return execute(job, ctx, plan, &status).await;
    }
}

/// The board's build for an attempt not yet recorded, once confirmed by immutable data: a
/// build known by its meta-data only is read directly (the API returns its env); one whose
/// env names another attempt, or none, is dropped from the board (it only claimed the run
/// id) and `None` is returned.
async fn confirm(
    ctx: &JobCtx,
    key: &str,
    run_id: &str,
    entry: super::board::Entry,
    now: Timestamp,
) -> Option<super::board::Entry> {
    if entry.confirmed {
        return Some(entry);
    }
    let pipeline = entry.build.pipeline_slug().map(str::to_string);
    match ctx.bk.get_build(pipeline.as_deref(), entry.build.number, false).await {
        Ok(b) => {
            ctx.board.update(&b, now);
        }
        Err(e) => {
            tracing::warn!(job = %key, error = %e, "reading a build to confirm its run id failed; retrying");
            return None;
        }
    }
    match ctx.board.get(run_id) {
        Some(e) if e.confirmed => Some(e),
        _ => {
            tracing::warn!(job = %key, run = %run_id, build = entry.build.number, "a build claims this attempt by meta-data only; not adopted");
            ctx.board.forget_build(run_id, &entry.build.id);
            None
        }
    }
}

/// The board's snapshot of the active attempt's build and when it last changed; after a
/// restart seeded from status (no request), or read once when status says it finished.
async fn board_build(
    job: &KernelJob,
    ctx: &JobCtx,
    run_id: &str,
    active: &crate::api::kerneljob::Attempt,
    bref: &BuildRef,
) -> Option<(Build, Timestamp)> {
    let now = Timestamp::now();
    // The attempt recorded this build: no other (whatever its meta-data claims) is taken.
    ctx.board.pin(run_id, &bref.id);
    if let Some(e) = ctx.board.get(run_id) {
        return Some((e.build, e.seen));
    }
    if active.state.parse::<buildkite::BuildState>().is_ok_and(|s| s.is_terminal()) {
        // Status says the build already finished, but a seed from status would carry no
        // result meta-data and no jobs: read the build itself.
        return match ctx.bk.get_build(Some(&bref.pipeline), u64::try_from(bref.number).unwrap_or(0), false).await {
            Ok(b) => {
                ctx.board.update(&b, now);
                Some(ctx.board.get(run_id).map(|e| (e.build, e.seen)).unwrap_or((b, now)))
            }
            Err(e) => {
                tracing::warn!(job = %key_of(job), error = %e, "reading a finished build failed; retrying");
                None
            }
        };
    }
    // After a restart the board is empty: seed it from status so the poller follows the
    // build, without a request per job.
    let seed = Build {
        id: bref.id.clone(),
        number: u64::try_from(bref.number).unwrap_or(0),
        web_url: Some(bref.web_url.clone()),
        state: active.state.parse().unwrap_or(buildkite::BuildState::Scheduled),
        meta_data: [(meta::RUN_ID.to_string(), run_id.to_string())].into(),
        created_at: active.created_at.as_ref().map(|t| t.0),
        pipeline: Some(buildkite::PipelineRef { slug: bref.pipeline.clone(), ..Default::default() }),
        ..Default::default()
    };
    ctx.board.update(&seed, now);
    ctx.board.get(run_id).map(|e| (e.build, e.seen))
}

/// How many `result.json` artifacts of one build are read looking for the runner's (a job
/// token may upload more files of that name).
const MAX_RESULT_ARTIFACTS: usize = 4;

/// Reads the result of a finished build: the summary in meta-data (free), else
/// `result.json` (two requests). Never fails the reconcile: what went wrong is typed. Each
/// result is checked against the runner's signatures (`benchkite.result.sig`) with the key
/// of the attempt the status recorded (its queue and run id): a meta-data summary that does
/// not verify (rewritten with the job token) falls back to the `result.json` artifacts.
async fn read_result(
    job: &KernelJob,
    ctx: &JobCtx,
    bref: &BuildRef,
    build: &Build,
    run_id: &str,
    queue: Option<&str>,
) -> ResultRead {
    let ranking = match job.spec.ranking_by {
        Some(crate::api::kerneljob::RankingBy::Mean) => contract::RankingBy::Mean,
        Some(crate::api::kerneljob::RankingBy::Geom) => contract::RankingBy::Geom,
        _ => contract::RankingBy::Last,
    };
    let number = u64::try_from(bref.number).unwrap_or(0);
    // Neither the runner's signature nor its summary on the board: it may know the build only
    // from its create response and webhook bodies, which carry no meta-data on the real
    // service. Read the build once: both are there (one request; the artifact takes two).
    // A summary without a signature needs no read: the runner sets the signature first.
    let fetched;
    let build = if !build.meta_data.contains_key(signing::SIG_META_DATA_KEY)
        && !build.meta_data.contains_key(contract::META_DATA_KEY)
    {
        match ctx.bk.get_build(Some(&bref.pipeline), number, true).await {
            Ok(b) => {
                fetched = b;
                &fetched
            }
            Err(e) => return ResultRead::Failed(ResultError::Fetch(format!("reading build #{number}: {e}"))),
        }
    } else {
        build
    };
    let sig = build.meta_data.get(signing::SIG_META_DATA_KEY).map(String::as_str);
    let check = |what, bytes: &[u8]| signing::check(ctx.config.result_key.as_ref(), queue, run_id, what, bytes, sig);
    let mut from_meta = None;
    if let Some(value) = build.meta_data.get(contract::META_DATA_KEY) {
        match contract::parse_meta_data_summary(value) {
            Ok(summary) => {
                let trust = check(Signed::MetaData, value.as_bytes());
                // Verified; or no signature at all, which no artifact has either.
                let done = matches!(trust, Trust::Verified | Trust::Unsigned);
                let found = ResultRead::Found { summary, source: "meta-data", raw: None, trust };
                if done {
                    return found;
                }
                tracing::info!(job = %key_of(job), "the meta-data summary is not signed by the runner; reading result.json");
                from_meta = Some(found);
            }
            Err(e) => tracing::info!(job = %key_of(job), error = %e, "meta-data summary unusable; reading result.json"),
        }
    }
    let artifacts = match ctx.bk.list_artifacts(Some(&bref.pipeline), number).await {
        Ok(a) => a.items,
        Err(e) => return ResultRead::Failed(ResultError::Fetch(format!("listing artifacts of build #{number}: {e}"))),
    };
    let mut reads = Vec::new();
    let candidates = artifacts.iter().filter(|a| a.path == "result.json" || a.filename == "result.json");
    for artifact in candidates.take(MAX_RESULT_ARTIFACTS) {
        let read = read_artifact(ctx, artifact, &ranking, &check).await;
        if matches!(read, ResultRead::Found { trust: Trust::Verified, .. }) {
            return read;
        }
        reads.push(read);
    }
    pick_result(from_meta, reads)
}

/// Of a build's results none of which verified: a transient failure to read one (try again
/// later), else the meta-data summary's verdict, else the first artifact's.
fn pick_result(from_meta: Option<ResultRead>, reads: Vec<ResultRead>) -> ResultRead {
    let transient = |r: &ResultRead| matches!(r, ResultRead::Failed(ResultError::Uploading | ResultError::Fetch(_)));
    if let Some(i) = reads.iter().position(transient) {
        return reads.into_iter().nth(i).unwrap_or(ResultRead::Missing);
    }
    from_meta.or_else(|| reads.into_iter().next()).unwrap_or(ResultRead::Missing)
}

async fn read_artifact(
    ctx: &JobCtx,
    artifact: &buildkite::Artifact,
    ranking: &contract::RankingBy,
    check: &impl Fn(Signed, &[u8]) -> Trust,
) -> ResultRead {
    // Artifact states (docs "Artifacts" API): `new` is still uploading (ask again later);
    // `error`, `deleted` and `expired` (past the plan's retention) never become readable.
    match artifact.state.as_str() {
        "error" | "deleted" | "expired" => {
            return ResultRead::Failed(ResultError::Unreadable { state: artifact.state.clone() });
        }
        "new" => return ResultRead::Failed(ResultError::Uploading),
        _ => {}
    }
    let bytes = match ctx.bk.download_artifact(artifact, ctx.config.max_result_bytes).await {
        Ok(b) => b,
        Err(e) => return ResultRead::Failed(ResultError::Fetch(format!("downloading result.json: {e}"))),
    };
    match contract::parse_result_json_limited(
        &bytes,
        usize::try_from(ctx.config.max_result_bytes).unwrap_or(usize::MAX),
    ) {
        Ok(full) => {
            let trust = check(Signed::ResultJson, &bytes);
            ResultRead::Found {
                summary: contract::summarize(&full, ranking),
                source: "artifact",
                raw: Some(bytes),
                trust,
            }
        }
        Err(e) => ResultRead::Failed(ResultError::Malformed(e.to_string())),
    }
}

/// Keeps the full `result.json` in a ConfigMap owned by the job (bounded), with the signed
/// environment fingerprint, when the result has one, as `fingerprint.json`.
pub(super) async fn store_output(
    job: &KernelJob,
    ctx: &JobCtx,
    bytes: &[u8],
    fingerprint: Option<&FingerprintStatus>,
) -> Option<String> {
    let ns = job.namespace()?;
    let owner = job.controller_owner_ref(&())?;
    let (name, cm) = result_configmap(job, &ns, owner, bytes, fingerprint, ctx.config.max_configmap_bytes);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&cm)).await {
        Ok(_) => Some(name),
        Err(e) => {
            tracing::warn!(job = %key_of(job), error = %e, "storing result.json failed");
            None
        }
    }
}

/// The result ConfigMap of `job` and its name: `result.json` (or a note when it is over
/// `max_bytes`) and `fingerprint.json`.
fn result_configmap(
    job: &KernelJob,
    ns: &str,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    bytes: &[u8],
    fingerprint: Option<&FingerprintStatus>,
    max_bytes: usize,
) -> (String, serde_json::Value) {
    let name = crate::fleet::pod::agent_pod_name(&job.name_any(), "result", 0).trim_end_matches("-0").to_string();
    let text = String::from_utf8_lossy(bytes);
    let body = if text.len() <= max_bytes {
        text.to_string()
    } else {
        format!(
            "{{\"truncated\": true, \"note\": \"result.json is {} bytes, over the {}-byte limit; download it from the build's artifacts\"}}",
            text.len(),
            max_bytes
        )
    };
    let mut data = serde_json::Map::new();
    data.insert("result.json".into(), body.into());
    if let Some(fp) = fingerprint.and_then(|f| serde_json::to_string_pretty(f).ok()) {
        data.insert("fingerprint.json".into(), fp.into());
    }
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": [owner],
                     "labels": {"app.kubernetes.io/managed-by": "benchkite", "benchkite.dev/kerneljob": crate::fleet::pod::label_value(&job.name_any())}},
        "data": data,
    });
    (name, cm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::summary::ResultSummary;

    #[test]
    fn the_result_configmap_carries_the_fingerprint_beside_result_json() {
        let job: KernelJob = serde_json::from_value(json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {"queue": "q", "mode": "test", "lang": "py", "main": "eval.py", "sources": {"eval.py": ""}},
        }))
        .unwrap();
        let owner = job.controller_owner_ref(&()).unwrap();
        let fp =
            FingerprintStatus { gpu_uuid: "GPU-1".into(), node: "n1".into(), slot: "3".into(), ..Default::default() };
        let (name, cm) = result_configmap(&job, "ns", owner.clone(), b"{\"ok\": 1}", Some(&fp), 100);
        assert_eq!(cm["metadata"]["name"], name.as_str());
        assert_eq!(cm["data"]["result.json"], "{\"ok\": 1}");
        let stored: FingerprintStatus = serde_json::from_str(cm["data"]["fingerprint.json"].as_str().unwrap()).unwrap();
        assert_eq!(stored, fp);
        // No fingerprint (an older runner, result.json only): no key; too big: a note.
        let (_, cm) = result_configmap(&job, "ns", owner, &[b'x'; 101], None, 100);
        assert!(cm["data"].get("fingerprint.json").is_none());
        assert!(cm["data"]["result.json"].as_str().unwrap().contains("over the 100-byte limit"));
    }

    fn found(source: &'static str, trust: Trust) -> ResultRead {
        let summary = ResultSummary {
            v: 1,
            success: true,
            passed: Some(true),
            error: String::new(),
            system: None,
            runs: Default::default(),
            score: None,
            ranking_by: None,
            truncated: false,
        };
        ResultRead::Found { summary, source, raw: None, trust }
    }

    #[test]
    fn of_results_none_of_which_verified_the_verdict_is_picked_in_order() {
        let forged = || found("meta-data", Trust::NotTrusted("tampered".into()));
        let unsigned_artifact = || found("artifact", Trust::Unsigned);
        // Trouble reading an artifact that might be the runner's: try again later.
        for e in [ResultError::Uploading, ResultError::Fetch("503".into())] {
            let r = pick_result(Some(forged()), vec![unsigned_artifact(), ResultRead::Failed(e.clone())]);
            assert_eq!(r, ResultRead::Failed(e));
        }
        // Else the meta-data summary's verdict (it names what was tampered with).
        assert_eq!(pick_result(Some(forged()), vec![unsigned_artifact()]), forged());
        // Else the first artifact's.
        let malformed = ResultRead::Failed(ResultError::Malformed("x".into()));
        assert_eq!(pick_result(None, vec![malformed.clone(), unsigned_artifact()]), malformed);
        assert_eq!(pick_result(None, vec![]), ResultRead::Missing);
        assert_eq!(pick_result(Some(forged()), vec![]), forged());
    }
}
