//! Per-job memory: everything this process remembers about a KernelJob between reconciles,
//! in one place, keyed by `namespace/name` and tied to the object's UID (a job created
//! again under the same name starts afresh). Dropped when the job is deleted, and swept for
//! jobs that left the cache without a reconcile seeing them go.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::api::kerneljob::KernelJobStatus;

use super::queue::JobKey;

/// What this process knows about an attempt's build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptState {
    /// Known to have no build: may be created.
    Absent,
    /// A create is in flight or its outcome is unknown: create nothing.
    Creating,
}

/// Why the last create of a job's build did not produce one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitFailure {
    /// Retrying later may help (network, 5xx, 429, the pipeline not ready yet, a source
    /// not readable yet).
    Transient(String),
    /// Buildkite refused the build for a reason the same request will meet again (400,
    /// 403, 422, 404 of a pipeline the user names): `tries` creates were refused so far.
    Permanent { status: u16, message: String, tries: u32 },
}

impl SubmitFailure {
    pub fn message(&self) -> String {
        match self {
            SubmitFailure::Transient(m) => m.clone(),
            SubmitFailure::Permanent { status, message, tries } => {
                format!("Buildkite refused the build ({status}, {tries} time(s)): {message}")
            }
        }
    }
}

/// What the process remembers about one job.
#[derive(Clone, Debug, Default)]
pub struct JobMemory {
    /// The object this memory belongs to.
    pub uid: String,
    /// Build knowledge per run id; absent = unknown (a build may exist: look it up before
    /// creating one).
    pub attempts: HashMap<String, AttemptState>,
    /// The next attempt must be looked up before it may be created.
    pub unverified: bool,
    /// Run ids whose build benchkite cancelled.
    pub canceled: HashSet<String>,
    /// The last status this process wrote, with its resourceVersion: protects against
    /// reading an older copy from the cache right after a write.
    pub written: Option<(u64, KernelJobStatus)>,
    /// This process's last finalizer write: the resourceVersion it produced and whether it
    /// left the finalizer on.
    pub finalizer_write: Option<(u64, bool)>,
    /// Last submission failure (shown in status until the next try).
    pub submit_failure: Option<SubmitFailure>,
    /// The submitter found the job unsubmittable (reason, message): the reconcile, the only
    /// status writer, marks it Failed.
    pub refused: Option<(String, String)>,
    /// Failed reads of the current attempt's result (bounded).
    pub result_tries: u32,
    /// What the pool's result cache said of the job (asked once per process).
    pub cache: Option<CacheProbe>,
}

/// What the result cache said of a job.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheProbe {
    /// Not served from the cache: the key its result is stored under (`None`: not cacheable).
    Miss(Option<String>),
    Hit(std::sync::Arc<super::cache::Hit>),
}

impl CacheProbe {
    pub fn key(&self) -> Option<&str> {
        match self {
            CacheProbe::Miss(k) => k.as_deref(),
            CacheProbe::Hit(h) => Some(&h.entry.key),
        }
    }
}

impl JobMemory {
    /// Records that `run` has no build, unless something is known of it already: a
    /// reconcile decides on a snapshot, and a submitter may have claimed the run (Creating)
    /// since; turning that back to Absent would let a second worker create another build
    /// for the same attempt.
    pub fn mark_absent(&mut self, run: &str) {
        self.attempts.entry(run.to_string()).or_insert(AttemptState::Absent);
    }

    /// The job finished and let go of its builds: keep only the records of this process's
    /// last writes (they stop a stale cached copy from causing a second write).
    pub fn settle(&mut self) {
        *self = JobMemory {
            uid: std::mem::take(&mut self.uid),
            written: self.written.take(),
            finalizer_write: self.finalizer_write.take(),
            ..Default::default()
        };
    }

    /// Nothing worth keeping.
    pub fn is_idle(&self) -> bool {
        self.attempts.is_empty()
            && !self.unverified
            && self.canceled.is_empty()
            && self.written.is_none()
            && self.finalizer_write.is_none()
            && self.submit_failure.is_none()
            && self.refused.is_none()
            && self.result_tries == 0
    }
}

/// The memory of every job.
#[derive(Debug, Default)]
pub struct Memory {
    jobs: Mutex<HashMap<JobKey, JobMemory>>,
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobKey, JobMemory>> {
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the job's memory, created (or reset, if it belonged to an older object of
    /// the same name) for `uid`.
    pub fn with<R>(&self, key: &str, uid: &str, f: impl FnOnce(&mut JobMemory) -> R) -> R {
        let mut jobs = self.lock();
        let m = jobs.entry(key.to_string()).or_default();
        if m.uid != uid {
            *m = JobMemory { uid: uid.to_string(), ..Default::default() };
        }
        f(m)
    }

    /// Runs `f` on the job's memory if there is any for that object (creates none: most
    /// jobs, most of the time, need none).
    pub fn with_existing<R>(&self, key: &str, uid: &str, f: impl FnOnce(&mut JobMemory) -> R) -> Option<R> {
        self.lock().get_mut(key).filter(|m| m.uid == uid).map(f)
    }

    /// Reads the job's memory, if there is any for that object.
    pub fn read<R>(&self, key: &str, uid: &str, f: impl FnOnce(&JobMemory) -> R) -> Option<R> {
        self.lock().get(key).filter(|m| m.uid == uid).map(f)
    }

    /// A copy of the job's memory (empty when none).
    pub fn snapshot(&self, key: &str, uid: &str) -> JobMemory {
        self.read(key, uid, Clone::clone).unwrap_or_else(|| JobMemory { uid: uid.to_string(), ..Default::default() })
    }

    /// Forgets the job (it was deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Keeps only the jobs `alive` says exist, and drops idle entries.
    pub fn retain(&self, mut alive: impl FnMut(&str, &str) -> bool) {
        self.lock().retain(|k, m| !m.is_idle() && alive(k, &m.uid));
    }

    /// Jobs whose next attempt must be looked up.
    pub fn unverified(&self) -> Vec<JobKey> {
        self.lock().iter().filter(|(_, m)| m.unverified).map(|(k, _)| k.clone()).collect()
    }

    pub fn set_unverified(&self, key: &str, on: bool) {
        if let Some(m) = self.lock().get_mut(key) {
            m.unverified = on;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_never_turns_a_claimed_run_back_to_absent() {
        // A reconcile that read the memory before a submitter claimed the run must not mark
        // it Absent after the claim: a second worker would create the same attempt again
        // (the likely cause of 3 duplicate builds in one run of the outage chaos scenario).
        let mut m = JobMemory::default();
        m.mark_absent("u-1");
        assert_eq!(m.attempts.get("u-1"), Some(&AttemptState::Absent));
        m.attempts.insert("u-1".into(), AttemptState::Creating);
        m.mark_absent("u-1");
        assert_eq!(m.attempts.get("u-1"), Some(&AttemptState::Creating), "a claim in flight stays claimed");
    }

    #[test]
    fn memory_is_per_object_and_goes_with_it() {
        let m = Memory::default();
        m.with("ns/a", "uid-1", |j| {
            j.attempts.insert("uid-1-1".into(), AttemptState::Creating);
            j.unverified = true;
        });
        assert_eq!(m.unverified(), vec!["ns/a".to_string()]);
        // The same name, a new object: nothing of the old one is kept.
        m.with("ns/a", "uid-2", |j| assert!(j.attempts.is_empty() && !j.unverified));
        assert!(m.read("ns/a", "uid-1", |_| ()).is_none());
        assert!(m.with_existing("ns/a", "uid-1", |_| ()).is_none(), "an older object's memory is not handed out");
        assert!(m.with_existing("ns/x", "u", |_| ()).is_none());
        assert!(m.read("ns/x", "u", |_| ()).is_none(), "with_existing creates nothing");
        m.forget("ns/a");
        assert!(m.is_empty());
        m.with("ns/b", "u", |j| j.unverified = true);
        m.with("ns/c", "v", |j| j.unverified = true);
        m.with("ns/d", "w", |_| ());
        m.retain(|k, _| k != "ns/c");
        assert_eq!(m.len(), 1, "gone jobs and idle entries are dropped");
        // A finished job keeps only the records of its last writes.
        m.with("ns/b", "u", |j| {
            j.written = Some((7, KernelJobStatus::default()));
            j.canceled.insert("u-1".into());
            j.result_tries = 2;
            j.settle();
            assert!(j.canceled.is_empty() && j.result_tries == 0 && !j.unverified && j.written.is_some());
            assert_eq!(j.uid, "u");
        });
    }

    #[test]
    fn permanent_failures_say_how_often() {
        let f = SubmitFailure::Permanent { status: 422, message: "Branch is invalid".into(), tries: 2 };
        assert_eq!(f.message(), "Buildkite refused the build (422, 2 time(s)): Branch is invalid");
    }
}
