//! Kubernetes Events (`events.k8s.io/v1`) about benchkite's objects.
//!
//! Why not `kube::runtime::events::Recorder`: it keeps a copy of every Event it published in
//! the last 6 minutes, whole, and scans them all on every publish. With 10,000 KernelJobs
//! (about 3 Events each) that cache was the controller's second-largest use of memory
//! (12 MiB of 70 MiB peak heap at 2,500 jobs, heaptrack), and its scan ran once per Event.
//! Its series key also leaves out the note, so "attempt 2 submitted" would be counted as a
//! repeat of "attempt 1 submitted" and shown with the first note.
//!
//! This recorder keeps, per distinct Event (object, type, reason, action and note), only the
//! Event's name and count for [`SERIES_WINDOW`], at most [`MAX_SERIES`] of them: a repeat
//! within the window patches the first Event's series (as client-go's recorder does) instead
//! of creating another object.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;

use crate::contract::text::{floor_char_boundary, truncate_str};

/// How long a repeat of an Event counts as part of the same series.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// Series remembered at most; past this, expired ones go, and if none has, all of them (a
/// flood of distinct Events is not worth counting).
pub const MAX_SERIES: usize = 4096;
/// The API server refuses longer notes.
pub const MAX_NOTE_BYTES: usize = 1024;
/// Reason, action, reporting controller and instance: at most 128 characters.
const MAX_FIELD: usize = 128;

/// Publishes Events; cheap to clone (clones share the series memory).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    series: Arc<Mutex<Series>>,
}

/// What is remembered of an Event published recently.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

/// What to send for one Event.
#[derive(Debug, PartialEq)]
enum Send {
    Create,
    /// Patch the series of this earlier Event to `count`.
    Repeat {
        namespace: String,
        name: String,
        count: i32,
    },
}

#[derive(Debug, Default)]
struct Series {
    seen: HashMap<u64, Seen>,
    last_sweep: Option<Instant>,
}

impl Series {
    /// What to send for an Event with this key at `now`.
    fn next(&mut self, key: u64, now: Instant) -> Send {
        self.sweep(now);
        match self.seen.get(&key) {
            Some(s) if now.saturating_duration_since(s.last) < SERIES_WINDOW => {
                Send::Repeat { namespace: s.namespace.clone(), name: s.name.clone(), count: s.count.saturating_add(1) }
            }
            _ => Send::Create,
        }
    }

    /// Remembers what was sent (after the API server took it).
    fn sent(&mut self, key: u64, namespace: &str, name: &str, count: i32, now: Instant) {
        if self.seen.len() >= MAX_SERIES && !self.seen.contains_key(&key) {
            self.seen.retain(|_, s| now.saturating_duration_since(s.last) < SERIES_WINDOW);
            if self.seen.len() >= MAX_SERIES {
                self.seen.clear();
            }
        }
        self.seen.insert(key, Seen { namespace: namespace.into(), name: name.into(), count, last: now });
    }

    /// Forgets a series whose Event is gone (the API server expires Events).
    fn forget(&mut self, key: u64) {
        self.seen.remove(&key);
    }

    /// Drops expired series, at most every 30 s (not on every Event).
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(30)) {
            return;
        }
        self.last_sweep = Some(now);
        self.seen.retain(|_, s| now.saturating_duration_since(s.last) < SERIES_WINDOW);
    }

    fn len(&self) -> usize {
        self.seen.len()
    }
}

/// Identity of an Event for series: the object it is about, who reports it, and what it
/// says.
fn series_key(reporter: &Reporter, ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (&regarding.uid, &regarding.kind, &regarding.namespace, &regarding.name).hash(&mut h);
    (&reporter.controller, &reporter.instance).hash(&mut h);
    (matches!(ev.type_, EventType::Warning), &ev.reason, &ev.action, &ev.note).hash(&mut h);
    ev.secondary.as_ref().map(|s| (&s.uid, &s.kind, &s.namespace, &s.name)).hash(&mut h);
    h.finish()
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    s[..floor_char_boundary(s, max)].to_string()
}

/// A note cut to what the API server takes, ending in "…" when cut.
fn fit_note(note: &str) -> String {
    truncate_str(note, MAX_NOTE_BYTES).0
}

/// The Event object for a first occurrence.
fn new_event(reporter: &Reporter, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
    let controller = truncate(&reporter.controller, MAX_FIELD);
    let instance = truncate(reporter.instance.as_deref().unwrap_or(&reporter.controller), MAX_FIELD);
    let object = regarding.name.as_deref().unwrap_or(&reporter.controller);
    K8sEvent {
        metadata: ObjectMeta {
            // Same naming as client-go: the object's name and the time in hex nanoseconds.
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(regarding.namespace.clone().unwrap_or_else(|| "default".into())),
            ..Default::default()
        },
        action: Some(truncate(&ev.action, MAX_FIELD)),
        reason: Some(truncate(&ev.reason, MAX_FIELD)),
        note: ev.note.as_deref().map(fit_note),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        reporting_controller: Some(controller),
        reporting_instance: Some(instance),
        type_: Some(match ev.type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        ..Default::default()
    }
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self { client, reporter, series: Arc::default() }
    }

    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Series currently remembered (for tests and metrics).
    pub fn remembered(&self) -> usize {
        self.series().len()
    }

    /// Publishes `ev` about `regarding`: a new Event, or the series count of the same Event
    /// published within [`SERIES_WINDOW`].
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = series_key(&self.reporter, ev, regarding);
        let send = self.series().next(key, Instant::now());
        if let Send::Repeat { namespace, name, count } = send {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({ "series": EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) } });
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.series().sent(key, &namespace, &name, count, Instant::now());
                    return Ok(());
                }
                // Expired or deleted: start a new Event.
                Err(kube::Error::Api(s)) if s.code == 404 => self.series().forget(key),
                Err(e) => return Err(e),
            }
        }
        let event = new_event(&self.reporter, ev, regarding, Timestamp::now());
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.or(event.metadata.name).unwrap_or_default();
        self.series().sent(key, &namespace, &name, 1, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> Reporter {
        Reporter { controller: "benchkite".into(), instance: Some("benchkite-0".into()) }
    }

    fn job(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("benchkite.dev/v1alpha1".into()),
            kind: Some("KernelJob".into()),
            name: Some(name.into()),
            namespace: Some("team-a".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn ev(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Submit".into(),
            secondary: None,
        }
    }

    #[test]
    fn the_key_tells_events_apart_by_object_reporter_and_content() {
        let base = series_key(&reporter(), &ev("Submitted", "attempt 1"), &job("a", "u1"));
        assert_eq!(base, series_key(&reporter(), &ev("Submitted", "attempt 1"), &job("a", "u1")));
        let mut warning = ev("Submitted", "attempt 1");
        warning.type_ = EventType::Warning;
        let mut action = ev("Submitted", "attempt 1");
        action.action = "Cancel".into();
        let mut related = ev("Submitted", "attempt 1");
        related.secondary = Some(job("b", "u2"));
        let other_instance = Reporter { controller: "benchkite".into(), instance: Some("benchkite-1".into()) };
        let different = [
            series_key(&reporter(), &ev("Submitted", "attempt 2"), &job("a", "u1")),
            series_key(&reporter(), &ev("Succeeded", "attempt 1"), &job("a", "u1")),
            series_key(&reporter(), &ev("Submitted", "attempt 1"), &job("b", "u1")),
            series_key(&reporter(), &ev("Submitted", "attempt 1"), &job("a", "u2")),
            series_key(&reporter(), &warning, &job("a", "u1")),
            series_key(&reporter(), &action, &job("a", "u1")),
            series_key(&reporter(), &related, &job("a", "u1")),
            series_key(&other_instance, &ev("Submitted", "attempt 1"), &job("a", "u1")),
        ];
        for (i, k) in different.iter().enumerate() {
            assert_ne!(*k, base, "variant {i}");
        }
    }

    #[test]
    fn a_repeat_within_the_window_patches_the_series_and_counts_up() {
        let mut s = Series::default();
        let t0 = Instant::now();
        assert_eq!(s.next(1, t0), Send::Create);
        s.sent(1, "team-a", "a.17", 1, t0);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(s.next(1, t1), Send::Repeat { namespace: "team-a".into(), name: "a.17".into(), count: 2 });
        s.sent(1, "team-a", "a.17", 2, t1);
        // The window runs from the last occurrence.
        let t2 = t1 + SERIES_WINDOW - Duration::from_secs(1);
        assert_eq!(s.next(1, t2), Send::Repeat { namespace: "team-a".into(), name: "a.17".into(), count: 3 });
        // Another key is its own Event.
        assert_eq!(s.next(2, t2), Send::Create);
    }

    #[test]
    fn after_the_window_or_a_lost_event_a_new_event_starts() {
        let mut s = Series::default();
        let t0 = Instant::now();
        s.sent(1, "team-a", "a.17", 4, t0);
        assert_eq!(s.next(1, t0 + SERIES_WINDOW), Send::Create);
        s.sent(1, "team-a", "a.18", 1, t0 + SERIES_WINDOW);
        s.forget(1);
        assert_eq!(s.next(1, t0 + SERIES_WINDOW), Send::Create);
    }

    #[test]
    fn expired_series_are_swept_and_memory_is_bounded() {
        let mut s = Series::default();
        let t0 = Instant::now();
        for k in 0..100 {
            s.sent(k, "ns", "e", 1, t0);
        }
        // A sweep runs at most every 30 s; past the window all 100 go.
        let _ = s.next(1000, t0);
        assert_eq!(s.len(), 100);
        let _ = s.next(1000, t0 + SERIES_WINDOW + Duration::from_secs(1));
        assert_eq!(s.len(), 0);
        // Never more than MAX_SERIES, even when all are fresh.
        for k in 0..(MAX_SERIES as u64 + 10) {
            s.sent(k, "ns", "e", 1, t0);
            assert!(s.len() <= MAX_SERIES);
        }
        // Full of fresh series: a new one clears them (and is kept).
        assert!(s.len() < 20, "{}", s.len());
        // Full with some expired: only the expired go.
        let mut s = Series::default();
        for k in 0..(MAX_SERIES as u64 - 1) {
            s.sent(k, "ns", "e", 1, t0);
        }
        let later = t0 + SERIES_WINDOW;
        s.sent(u64::MAX, "ns", "e", 1, later);
        s.sent(u64::MAX - 1, "ns", "e", 1, later);
        assert_eq!(s.len(), 2);
        // Updating a remembered series never evicts.
        let mut s = Series::default();
        for k in 0..(MAX_SERIES as u64) {
            s.sent(k, "ns", "e", 1, t0);
        }
        s.sent(5, "ns", "e", 2, t0);
        assert_eq!(s.len(), MAX_SERIES);
    }

    #[test]
    fn the_event_object_has_what_the_api_server_requires() {
        let now = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(1_700_000_000);
        let e = new_event(&reporter(), &ev("Submitted", "attempt 1: build #7"), &job("vectoradd", "u1"), now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("team-a"));
        let name = e.metadata.name.unwrap_or_default();
        assert!(name.starts_with("vectoradd."), "{name}");
        assert_eq!(e.reporting_controller.as_deref(), Some("benchkite"));
        assert_eq!(e.reporting_instance.as_deref(), Some("benchkite-0"));
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(e.reason.as_deref(), Some("Submitted"));
        assert_eq!(e.action.as_deref(), Some("Submit"));
        assert_eq!(e.note.as_deref(), Some("attempt 1: build #7"));
        assert!(e.series.is_none());
        assert_eq!(e.event_time.map(|t| t.0), Some(now));
        // Without an instance, the controller's name is the instance.
        let bare = Reporter { controller: "benchkite".into(), instance: None };
        let e = new_event(&bare, &ev("Submitted", ""), &job("a", "u1"), now);
        assert_eq!(e.reporting_instance.as_deref(), Some("benchkite"));
        // Cluster-scoped objects' Events go to "default".
        let mut node = job("h100-0", "u3");
        node.namespace = None;
        let e = new_event(&bare, &ev("Discovered", ""), &node, now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn long_notes_and_fields_are_cut_to_what_the_api_server_takes() {
        let now = Timestamp::UNIX_EPOCH;
        let long = "é".repeat(2000);
        let mut e = ev(&"R".repeat(300), &long);
        e.action = "A".repeat(300);
        let k = new_event(&reporter(), &e, &job("a", "u1"), now);
        let note = k.note.unwrap_or_default();
        assert!(note.len() <= MAX_NOTE_BYTES, "{}", note.len());
        assert!(note.ends_with('…'));
        assert!(note.starts_with("éé"));
        assert_eq!(k.reason.map(|r| r.len()), Some(128));
        assert_eq!(k.action.map(|r| r.len()), Some(128));
        // Short notes are untouched; exactly the limit is untouched.
        let exact = "x".repeat(MAX_NOTE_BYTES);
        assert_eq!(fit_note(&exact), exact);
        assert_eq!(truncate("héllo", 2), "h");
    }
}
