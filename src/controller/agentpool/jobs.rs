//! The queue of each pool as its AgentPool status shows it (`status.kernelJobs`): the
//! KernelJobs that have not finished, waiting or running, per submitter. Computed from the
//! KernelJob cache of the same process, a few times a minute; pools are reconciled only when
//! a summary changed.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::api::KernelJob;
use crate::api::agentpool::{PoolJobsStatus, SUBMITTER_LABEL, SubmitterJobs};
use crate::api::kerneljob::Phase;

/// Submitters listed per pool; the rest are counted.
pub const MAX_SUBMITTERS: usize = 20;

/// A pool: (namespace, name).
pub type PoolKey = (String, String);

/// Who submitted a job: its `benchkite.dev/submitter` label, else its namespace.
pub fn submitter(job: &KernelJob) -> String {
    job.labels()
        .get(SUBMITTER_LABEL)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| job.namespace().unwrap_or_default())
}

/// The pool a job targets (`spec.pool` in `spec.poolNamespace`, else the job's namespace).
pub fn pool_of(job: &KernelJob) -> Option<PoolKey> {
    let name = job.spec.pool.clone()?;
    let ns = job.spec.pool_namespace.clone().or_else(|| job.namespace())?;
    Some((ns, name))
}

/// Every pool's unfinished KernelJobs. Pools without any have no entry.
pub fn summarize<'a>(jobs: impl IntoIterator<Item = &'a KernelJob>) -> HashMap<PoolKey, PoolJobsStatus> {
    #[derive(Default)]
    struct Acc {
        waiting: i64,
        running: i64,
        oldest: Option<Time>,
        by: BTreeMap<String, (i64, i64)>,
    }
    let mut acc: HashMap<PoolKey, Acc> = HashMap::new();
    for job in jobs {
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
        if phase.is_finished() {
            continue;
        }
        let Some(key) = pool_of(job) else { continue };
        let a = acc.entry(key).or_default();
        let who = a.by.entry(submitter(job)).or_default();
        if phase == Phase::Running {
            a.running += 1;
            who.1 += 1;
        } else {
            a.waiting += 1;
            who.0 += 1;
            // Waiting since its creation, or, when it waits for a retry, since its last
            // attempt finished (a retried job's first run is not waiting time).
            let since = job
                .status
                .as_ref()
                .and_then(|st| st.attempts.last())
                .and_then(|at| at.finished_at.as_ref())
                .or(job.metadata.creation_timestamp.as_ref());
            if let Some(since) = since
                && a.oldest.as_ref().is_none_or(|o| since.0 < o.0)
            {
                a.oldest = Some(since.clone());
            }
        }
    }
    acc.into_iter()
        .map(|(key, a)| {
            let mut by: Vec<SubmitterJobs> =
                a.by.into_iter()
                    .map(|(submitter, (waiting, running))| SubmitterJobs { submitter, waiting, running })
                    .collect();
            // Most jobs first, then by name (a stable order: no status write for a reordering).
            by.sort_by(|x, y| {
                (y.waiting + y.running).cmp(&(x.waiting + x.running)).then_with(|| x.submitter.cmp(&y.submitter))
            });
            let other = by.len().saturating_sub(MAX_SUBMITTERS);
            by.truncate(MAX_SUBMITTERS);
            let status = PoolJobsStatus {
                waiting: a.waiting,
                running: a.running,
                oldest_waiting_since: a.oldest,
                submitters: by,
                other_submitters: i64::try_from(other).unwrap_or(i64::MAX),
            };
            (key, status)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(
        ns: &str,
        name: &str,
        pool: Option<&str>,
        phase: Option<&str>,
        submitter: Option<&str>,
        created: &str,
    ) -> KernelJob {
        let mut labels = serde_json::Map::new();
        if let Some(s) = submitter {
            labels.insert(SUBMITTER_LABEL.into(), json!(s));
        }
        let mut spec = json!({"mode": "test", "lang": "py", "main": "s.py", "sources": {"s.py": "x"}});
        match pool {
            Some(p) => spec["pool"] = json!(p),
            None => spec["queue"] = json!("raw"),
        }
        let mut v = json!({
            "apiVersion": "benchkite.dev/v1alpha1", "kind": "KernelJob",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "creationTimestamp": created},
            "spec": spec,
        });
        if let Some(p) = phase {
            v["status"] = json!({"phase": p});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn waiting_running_oldest_and_submitters_per_pool() {
        let jobs = vec![
            job("a", "1", Some("p"), None, Some("alice"), "2026-01-01T00:00:05Z"),
            job("a", "2", Some("p"), Some("Pending"), Some("alice"), "2026-01-01T00:00:03Z"),
            job("a", "3", Some("p"), Some("Submitted"), None, "2026-01-01T00:00:04Z"),
            job("a", "4", Some("p"), Some("Running"), Some("bob"), "2026-01-01T00:00:01Z"),
            job("a", "5", Some("p"), Some("Succeeded"), Some("bob"), "2026-01-01T00:00:00Z"),
            job("a", "6", Some("p"), Some("Failed"), Some("bob"), "2026-01-01T00:00:00Z"),
            job("a", "7", None, Some("Pending"), Some("bob"), "2026-01-01T00:00:00Z"),
            job("a", "8", Some("q"), Some("Running"), Some("carol"), "2026-01-01T00:00:00Z"),
        ];
        let s = summarize(&jobs);
        assert_eq!(s.len(), 2, "{s:?}");
        let p = &s[&("a".to_string(), "p".to_string())];
        assert_eq!((p.waiting, p.running), (3, 1));
        assert_eq!(p.oldest_waiting_since.as_ref().map(|t| t.0.to_string()), Some("2026-01-01T00:00:03Z".into()));
        let by: Vec<(&str, i64, i64)> =
            p.submitters.iter().map(|x| (x.submitter.as_str(), x.waiting, x.running)).collect();
        assert_eq!(by, vec![("alice", 2, 0), ("a", 1, 0), ("bob", 0, 1)], "most jobs first, then by name");
        let q = &s[&("a".to_string(), "q".to_string())];
        assert_eq!((q.waiting, q.running, q.oldest_waiting_since.clone()), (0, 1, None));
    }

    #[test]
    fn a_job_waiting_for_its_retry_waits_since_its_last_attempt_finished() {
        let mut retried = job("a", "r", Some("p"), Some("Pending"), None, "2026-01-01T00:00:00Z");
        if let Some(st) = retried.status.as_mut() {
            st.attempts = serde_json::from_value(json!([
                {"attempt": 1, "runId": "x-1", "state": "failed", "finishedAt": "2026-01-01T01:00:00Z"}
            ]))
            .unwrap();
        }
        let fresh = job("a", "f", Some("p"), None, None, "2026-01-01T00:30:00Z");
        let p = &summarize(&[retried, fresh])[&("a".to_string(), "p".to_string())];
        assert_eq!(p.oldest_waiting_since.as_ref().map(|t| t.0.to_string()), Some("2026-01-01T00:30:00Z".into()));
    }

    #[test]
    fn a_pool_of_another_namespace_and_deleted_jobs() {
        let mut other = job("b", "1", Some("p"), None, None, "2026-01-01T00:00:00Z");
        other.spec.pool_namespace = Some("a".into());
        let mut deleted = job("a", "2", Some("p"), None, None, "2026-01-01T00:00:00Z");
        deleted.metadata.deletion_timestamp = deleted.metadata.creation_timestamp.clone();
        let s = summarize(&[other, deleted]);
        let p = &s[&("a".to_string(), "p".to_string())];
        assert_eq!(p.waiting, 1);
        assert_eq!(p.submitters[0].submitter, "b", "the namespace is the submitter without a label");
    }

    #[test]
    fn at_most_twenty_submitters_are_listed() {
        let jobs: Vec<KernelJob> = (0..25)
            .map(|i| job("a", &i.to_string(), Some("p"), None, Some(&format!("s{i:02}")), "2026-01-01T00:00:00Z"))
            .collect();
        let p = &summarize(&jobs)[&("a".to_string(), "p".to_string())];
        assert_eq!((p.submitters.len(), p.other_submitters, p.waiting), (MAX_SUBMITTERS, 5, 25));
        assert_eq!(p.submitters[0].submitter, "s00");
        // An empty label is no submitter.
        let p = &summarize(&[job("a", "x", Some("p"), None, Some(""), "2026-01-01T00:00:00Z")])
            [&("a".to_string(), "p".to_string())];
        assert_eq!(p.submitters[0].submitter, "a");
    }
}
