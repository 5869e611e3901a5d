//! Kubernetes-style conditions, built fresh on every reconcile while keeping
//! `lastTransitionTime` stable for conditions whose status did not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// `True`, `False` or `Unknown`, as Kubernetes spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    pub fn from_bool(b: bool) -> Self {
        if b { ConditionStatus::True } else { ConditionStatus::False }
    }
}

/// kstatus: the controller is still working towards the spec.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: the controller cannot make progress without the user.
pub const STALLED: &str = "Stalled";

/// Builds the conditions of one status write.
///
/// `previous` are the conditions currently in the object's status: a condition whose status
/// is unchanged keeps its `lastTransitionTime`, so kstatus, `kubectl wait` and dashboards see
/// real transitions rather than a timestamp that moves on every reconcile.
#[derive(Debug)]
pub struct ConditionSet<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: Timestamp,
    out: Vec<Condition>,
}

impl<'a> ConditionSet<'a> {
    pub fn new(previous: &'a [Condition], generation: Option<i64>, now: Timestamp) -> Self {
        Self { previous, generation, now, out: Vec::new() }
    }

    /// Sets (or replaces) the condition `type_`.
    pub fn set(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: impl Into<String>) -> &mut Self {
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status.as_str())
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(self.now));
        let condition = Condition {
            type_: type_.to_string(),
            status: status.as_str().to_string(),
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time,
            observed_generation: self.generation,
        };
        match self.out.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => *existing = condition,
            None => self.out.push(condition),
        }
        self
    }

    /// The two kstatus conditions (sigs.k8s.io/cli-utils kstatus, which Flux and Argo CD's
    /// health checks follow): `Reconciling` True while the controller still works towards the
    /// spec, `Stalled` True when it cannot get there without the user (the reason says why).
    /// Both are always present, `False` when they do not apply.
    pub fn kstatus(&mut self, reconciling: Option<(&str, &str)>, stalled: Option<(&str, &str)>) -> &mut Self {
        match reconciling {
            Some((reason, message)) => self.set(RECONCILING, ConditionStatus::True, reason, message),
            None => self.set(RECONCILING, ConditionStatus::False, "Reconciled", ""),
        };
        match stalled {
            Some((reason, message)) => self.set(STALLED, ConditionStatus::True, reason, message),
            None => self.set(STALLED, ConditionStatus::False, "AsExpected", ""),
        };
        self
    }

    pub fn get(&self, type_: &str) -> Option<&Condition> {
        self.out.iter().find(|c| c.type_ == type_)
    }

    pub fn into_vec(self) -> Vec<Condition> {
        self.out
    }
}

/// Finds a condition by type.
pub fn find<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Schema extension that makes `conditions` a map-list keyed by `type`, so server-side apply
/// merges conditions per type instead of replacing the whole list.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    obj.insert("description".into(), "Kubernetes-style conditions; `Ready` follows kstatus conventions.".into());
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let t1 = ts("2026-01-01T01:00:00Z");
        let mut first = ConditionSet::new(&[], Some(1), t0);
        first.set("Ready", ConditionStatus::True, "Converged", "all good");
        let prev = first.into_vec();

        let mut second = ConditionSet::new(&prev, Some(2), t1);
        second.set("Ready", ConditionStatus::True, "Converged", "still good");
        let out = second.into_vec();
        assert_eq!(out[0].last_transition_time.0, t0);
        assert_eq!(out[0].observed_generation, Some(2));
        assert_eq!(out[0].message, "still good");
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let t1 = ts("2026-01-01T01:00:00Z");
        let mut first = ConditionSet::new(&[], Some(1), t0);
        first.set("Ready", ConditionStatus::True, "Converged", "");
        let prev = first.into_vec();
        let mut second = ConditionSet::new(&prev, Some(1), t1);
        second.set("Ready", ConditionStatus::False, "NodeGone", "");
        assert_eq!(second.into_vec()[0].last_transition_time.0, t1);
    }

    #[test]
    fn set_twice_replaces() {
        let mut set = ConditionSet::new(&[], None, ts("2026-01-01T00:00:00Z"));
        set.set("Ready", ConditionStatus::True, "A", "");
        set.set("Ready", ConditionStatus::False, "B", "");
        let out = set.into_vec();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].reason, "B");
        assert!(!is_true(&out, "Ready"));
    }
}
