//! The per-GPU share: how much CPU and memory one GPU's agent gets on a node.
//!
//! **Sizing.** share = round_down((allocatable − requests of the pods benchkite does not
//! manage that hold resources on the node − `spec.reserved` − headroom) ÷ GPUs): CPU in whole
//! cores, memory in whole [`MEMORY_GRANULE_MIB`] (1 GiB) granules. An agent with
//! `gpusPerAgent` GPUs gets that many shares. Whole cores make the pod eligible for exclusive
//! cores under the static CPU manager.
//!
//! **Headroom.** A per-node amount (default [`DEFAULT_HEADROOM_CPU_MILLIS`] = 250m CPU and
//! [`DEFAULT_HEADROOM_MEMORY_MIB`] = 512 MiB, the controller's `--node-headroom-cpu` and
//! `--node-headroom-memory`) is kept free of agents when the share is sized, so a DaemonSet
//! added later (a typical exporter asks 100m and 128Mi) still schedules on GPU nodes.
//!
//! **Stability** ([`next_share`]). Once a node has a share it changes only when the agents
//! sized by it no longer fit (together they would overcommit the node: other pods grew past
//! the headroom and the rounding slack) or when an admin changed the GpuNode's spec (its
//! generation) or the headroom. It never follows pods that hold nothing yet (not bound, or
//! bound but not admitted), never grows by itself, and a shrink rounds down to whole cores and
//! a whole memory granule, so the next small change in other pods' requests fits in the slack
//! instead of rolling every agent again.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::cached_pod::CachedPod;

use super::quantity::{self, MIB};

/// CPU (millicores) and memory (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Resources {
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    fn max(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
        }
    }

    /// From a `{cpu, memory}` quantity map; unparseable values count as zero (the API server
    /// already validated them, so this only happens for resources we do not read).
    pub fn from_quantities<'a>(map: impl IntoIterator<Item = (&'a String, &'a str)>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in map {
            match name.as_str() {
                "cpu" => r.cpu_millis = quantity::cpu_millis(q).unwrap_or(0).max(0),
                "memory" => r.memory_bytes = quantity::whole_units(q).unwrap_or(0).max(0),
                _ => {}
            }
        }
        r
    }
}

/// One agent's (or one GPU's) share: whole cores and MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub cpu_cores: i64,
    pub memory_mib: i64,
}

impl Share {
    pub fn times(self, n: i64) -> Share {
        Share { cpu_cores: self.cpu_cores.saturating_mul(n), memory_mib: self.memory_mib.saturating_mul(n) }
    }

    /// Memory as a Kubernetes quantity string.
    pub fn memory_quantity(self) -> String {
        format!("{}Mi", self.memory_mib)
    }
}

/// Why a node's share cannot run agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareProblem {
    NoGpus,
    TooSmall { share: Share, min_memory_mib: i64 },
}

impl std::fmt::Display for ShareProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShareProblem::NoGpus => write!(f, "the node has no GPUs to divide its CPU and memory by"),
            ShareProblem::TooSmall { share, min_memory_mib } => write!(
                f,
                "per-GPU share is {} CPU and {} MiB, below the minimum of 1 whole CPU and {} MiB: lower spec.reserved, move other pods off the node, or lower --min-agent-memory",
                share.cpu_cores, share.memory_mib, min_memory_mib
            ),
        }
    }
}

/// Memory shares are whole multiples of this many MiB (1 GiB): the hysteresis of the share.
pub const MEMORY_GRANULE_MIB: i64 = 1024;
/// Default CPU headroom per node, in millicores: room for a typical exporter (100m) plus slack.
pub const DEFAULT_HEADROOM_CPU_MILLIS: i64 = 250;
/// Default memory headroom per node, in MiB: room for a typical exporter (128Mi) plus slack.
pub const DEFAULT_HEADROOM_MEMORY_MIB: i64 = 512;

/// The default per-node headroom (250m CPU, 512 MiB).
pub fn default_headroom() -> Resources {
    Resources { cpu_millis: DEFAULT_HEADROOM_CPU_MILLIS, memory_bytes: DEFAULT_HEADROOM_MEMORY_MIB * MIB }
}

/// Inputs of the share computation for one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareInput {
    pub allocatable: Resources,
    /// Requests of the pods benchkite does not manage that hold resources on the node.
    pub other_requests: Resources,
    pub reserved: Resources,
    /// Kept free of agents when sizing (room for DaemonSets added later).
    pub headroom: Resources,
    pub gpus: i64,
}

impl ShareInput {
    /// What agents may take in total without overcommitting the node (no headroom).
    fn free(&self) -> Resources {
        self.allocatable.saturating_sub(self.other_requests).saturating_sub(self.reserved)
    }
}

/// The largest per-GPU share the node can hold right now without overcommitting it: free
/// resources (headroom not subtracted) ÷ GPUs, in whole cores and MiB, not rounded to the
/// granule. Agents sized by a share at most this large fit. `None` without GPUs.
pub fn capacity(input: ShareInput) -> Option<Share> {
    if input.gpus <= 0 {
        return None;
    }
    let free = input.free();
    Some(Share {
        cpu_cores: (free.cpu_millis.max(0) / input.gpus) / 1000,
        memory_mib: (free.memory_bytes.max(0) / input.gpus) / MIB,
    })
}

/// Memory rounded down to whole granules; a share below one granule (only usable with a
/// `--min-agent-memory` below it) stays in MiB.
fn round_memory(mib: i64) -> i64 {
    if mib < MEMORY_GRANULE_MIB { mib } else { mib - mib % MEMORY_GRANULE_MIB }
}

/// The share of one GPU sized afresh (headroom kept free, whole cores, whole memory
/// granules), or why there is none worth running an agent on.
pub fn per_gpu_share(input: ShareInput, min_memory_mib: i64) -> Result<Share, ShareProblem> {
    if input.gpus <= 0 {
        return Err(ShareProblem::NoGpus);
    }
    let free = input.free().saturating_sub(input.headroom);
    let memory_mib = (free.memory_bytes.max(0) / input.gpus) / MIB;
    let share = Share { cpu_cores: (free.cpu_millis.max(0) / input.gpus) / 1000, memory_mib: round_memory(memory_mib) };
    if share.cpu_cores < 1 || share.memory_mib < min_memory_mib.max(1) {
        return Err(ShareProblem::TooSmall { share, min_memory_mib });
    }
    Ok(share)
}

/// Why [`next_share`] decided what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareChange {
    /// The node had no share: sized afresh.
    Initial,
    /// The current share still fits: kept, whatever the fresh sizing says.
    Kept,
    /// The GpuNode spec or the headroom changed: sized afresh.
    SpecChanged,
    /// Agents sized by the current share would overcommit the node: sized afresh.
    NoLongerFits,
}

/// The share a node should have, from the one it has (`current`, `None` when it has none),
/// the node's [`capacity`] (`None` without GPUs), a fresh sizing ([`per_gpu_share`]) and
/// whether an admin changed what the share is derived from (GpuNode generation, headroom).
pub fn next_share(
    current: Option<Share>,
    capacity: Option<Share>,
    computed: Result<Share, ShareProblem>,
    spec_changed: bool,
) -> (Result<Share, ShareProblem>, ShareChange) {
    let Some(current) = current else { return (computed, ShareChange::Initial) };
    if spec_changed {
        return (computed, ShareChange::SpecChanged);
    }
    let fits = capacity.is_some_and(|c| current.cpu_cores <= c.cpu_cores && current.memory_mib <= c.memory_mib);
    if fits { (Ok(current), ShareChange::Kept) } else { (computed, ShareChange::NoLongerFits) }
}

/// Whether a pod holds its requests on its node, as the scheduler counts them: bound, not
/// terminal, and either past `Pending` or `PodScheduled=True` (set when the pod was bound
/// through the binding subresource, or by the kubelet once it admitted a pod created with
/// `spec.nodeName`). A pod bound by name that the kubelet has not admitted yet holds nothing:
/// if it does not fit, the kubelet refuses it (`OutOfcpu`), so it must not shrink the share.
pub fn holds_resources(pod: &CachedPod) -> bool {
    if pod.node_name.is_none() {
        return false;
    }
    match pod.phase.as_deref() {
        Some("Succeeded" | "Failed") => false,
        Some("Pending") | None => pod.scheduled.as_ref().is_some_and(|c| c.status == "True"),
        Some(_) => true,
    }
}

fn container_requests(c: &Container) -> Resources {
    let Some(res) = &c.resources else { return Resources::default() };
    // Requests default to limits when only limits are set.
    let mut merged: BTreeMap<&String, &str> = BTreeMap::new();
    if let Some(limits) = &res.limits {
        merged.extend(limits.iter().map(|(k, v)| (k, v.0.as_str())));
    }
    if let Some(requests) = &res.requests {
        merged.extend(requests.iter().map(|(k, v)| (k, v.0.as_str())));
    }
    Resources::from_quantities(merged)
}

/// Effective requests of a pod as the scheduler computes them: app containers and sidecars
/// (restartable init containers) run together; each plain init container runs alone beside
/// the sidecars started before it; plus pod overhead.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for init in spec.init_containers.iter().flatten() {
        let req = container_requests(init);
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.saturating_add(req);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars.saturating_add(req));
        }
    }
    let app = spec.containers.iter().map(container_requests).fold(Resources::default(), Resources::saturating_add);
    let overhead = spec
        .overhead
        .as_ref()
        .map(|o| Resources::from_quantities(o.iter().map(|(k, v)| (k, v.0.as_str()))))
        .unwrap_or_default();
    app.saturating_add(sidecars).max(init_peak).saturating_add(overhead)
}

/// Extended-resource (GPU) count a pod requests, the same way.
pub fn pod_extended(spec: &PodSpec, resource: &str) -> i64 {
    let of = |c: &Container| -> i64 {
        let res = c.resources.as_ref();
        let get = |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.and_then(|m| m.get(resource)).and_then(|q| quantity::whole_units(&q.0).ok())
        };
        get(res.and_then(|r| r.requests.as_ref()))
            .or_else(|| get(res.and_then(|r| r.limits.as_ref())))
            .unwrap_or(0)
            .max(0)
    };
    let app: i64 = spec.containers.iter().map(of).sum();
    let mut sidecars = 0;
    let mut init_peak = 0;
    for init in spec.init_containers.iter().flatten() {
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars += of(init);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars + of(init));
        }
    }
    (app + sidecars).max(init_peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    const GIB: i64 = 1 << 30;

    fn res(cpu: &str, mem: &str) -> Resources {
        Resources { cpu_millis: quantity::cpu_millis(cpu).unwrap(), memory_bytes: quantity::whole_units(mem).unwrap() }
    }

    fn input(alloc: Resources, other: Resources, reserved: Resources, gpus: i64) -> ShareInput {
        ShareInput { allocatable: alloc, other_requests: other, reserved, headroom: Resources::default(), gpus }
    }

    #[test]
    fn h100_node_splits_evenly() {
        let s = per_gpu_share(input(res("128", "1Ti"), Resources::default(), Resources::default(), 8), 1024).unwrap();
        assert_eq!(s, Share { cpu_cores: 16, memory_mib: 131072 });
        assert_eq!(s.memory_quantity(), "131072Mi");
        assert_eq!(s.times(2), Share { cpu_cores: 32, memory_mib: 262144 });
    }

    #[test]
    fn odd_core_counts_round_down() {
        // The seeds' example: 16 CPUs / 2 GPUs, 289 GB / 2 GPUs.
        let s = per_gpu_share(input(res("16", "289G"), Resources::default(), Resources::default(), 2), 1024).unwrap();
        assert_eq!(s.cpu_cores, 8);
        // 137,804 MiB per GPU, rounded down to whole GiB.
        assert_eq!(s.memory_mib, 134 * 1024);
        assert_eq!(
            capacity(input(res("16", "289G"), Resources::default(), Resources::default(), 2)).map(|c| c.memory_mib),
            Some(289_000_000_000 / 2 / MIB)
        );
        // 15.5 cores over 2 GPUs → 7 whole cores each, not 7.75.
        let s =
            per_gpu_share(input(res("15500m", "64Gi"), Resources::default(), Resources::default(), 2), 1024).unwrap();
        assert_eq!(s.cpu_cores, 7);
        // 3 cores over 8 GPUs → below one core.
        let p =
            per_gpu_share(input(res("3", "64Gi"), Resources::default(), Resources::default(), 8), 1024).unwrap_err();
        assert!(matches!(p, ShareProblem::TooSmall { share: Share { cpu_cores: 0, .. }, .. }));
    }

    #[test]
    fn daemonset_requests_and_reserve_are_subtracted() {
        // 48 cores, 384Gi, 2 GPUs; daemonsets take 1.5 cores + 3Gi, reserve 2 cores + 8Gi.
        let s = per_gpu_share(input(res("48", "384Gi"), res("1500m", "3Gi"), res("2", "8Gi"), 2), 1024).unwrap();
        assert_eq!(s.cpu_cores, 22); // (48 − 3.5) / 2 = 22.25
        // (384 − 11) Gi / 2 = 186.5 Gi → 186 Gi.
        assert_eq!(s.memory_mib, 186 * 1024);
    }

    #[test]
    fn reserve_larger_than_node() {
        let p = per_gpu_share(input(res("8", "32Gi"), Resources::default(), res("16", "64Gi"), 1), 1024).unwrap_err();
        assert_eq!(p, ShareProblem::TooSmall { share: Share { cpu_cores: 0, memory_mib: 0 }, min_memory_mib: 1024 });
        assert!(p.to_string().contains("spec.reserved"));
    }

    #[test]
    fn memory_floor() {
        let p =
            per_gpu_share(input(res("64", "4Gi"), Resources::default(), Resources::default(), 8), 1024).unwrap_err();
        assert!(matches!(p, ShareProblem::TooSmall { share: Share { cpu_cores: 8, memory_mib: 512 }, .. }));
        assert!(per_gpu_share(input(res("64", "4Gi"), Resources::default(), Resources::default(), 8), 512).is_ok());
        // Below one granule the share stays in MiB; above, whole granules.
        assert_eq!(round_memory(1000), 1000);
        assert_eq!(round_memory(1024), 1024);
        assert_eq!(round_memory(2047), 1024);
    }

    #[test]
    fn mig_partitions_divide_by_instances() {
        // 7 MIG slices of an A100 on a 64-core node: 9 cores each (63/7), not 64/1.
        let s = per_gpu_share(input(res("64", "448Gi"), Resources::default(), Resources::default(), 7), 1024).unwrap();
        assert_eq!(s, Share { cpu_cores: 9, memory_mib: 64 * 1024 });
    }

    #[test]
    fn no_gpus() {
        assert_eq!(
            per_gpu_share(input(res("8", "8Gi"), Resources::default(), Resources::default(), 0), 1),
            Err(ShareProblem::NoGpus)
        );
    }

    #[test]
    fn headroom_is_kept_free_when_sizing_but_not_when_fitting() {
        // 32 cores and 128 Gi over 4 GPUs: 8 cores and 32 Gi each without headroom; the
        // default headroom (250m, 512Mi) costs one core and one granule per GPU.
        let mut i = input(res("32", "128Gi"), Resources::default(), Resources::default(), 4);
        assert_eq!(per_gpu_share(i, 1024), Ok(Share { cpu_cores: 8, memory_mib: 32 * 1024 }));
        i.headroom = default_headroom();
        assert_eq!(default_headroom(), res("250m", "512Mi"));
        assert_eq!(per_gpu_share(i, 1024), Ok(Share { cpu_cores: 7, memory_mib: 31 * 1024 }));
        // Capacity ignores the headroom: agents of 8 cores still fit the node.
        assert_eq!(capacity(i), Some(Share { cpu_cores: 8, memory_mib: 32 * 1024 }));
        // A node sized with exactly the headroom to spare keeps whole shares.
        let exact = ShareInput { allocatable: res("32250m", "131584Mi"), ..i };
        assert_eq!(per_gpu_share(exact, 1024), Ok(Share { cpu_cores: 8, memory_mib: 32 * 1024 }));
        assert_eq!(capacity(ShareInput { gpus: 0, ..i }), None);
    }

    #[test]
    fn only_pods_that_hold_resources_count() {
        let pod = |node: Option<&str>, phase: Option<&str>, scheduled: Option<&str>| -> CachedPod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"nodeName": node, "containers": []},
                "status": {
                    "phase": phase,
                    "conditions": scheduled.map(|s| vec![serde_json::json!({"type": "PodScheduled", "status": s})]),
                },
            }))
            .unwrap()
        };
        let rows = [
            ("running", pod(Some("n"), Some("Running"), Some("True")), true),
            ("unknown phase", pod(Some("n"), Some("Unknown"), None), true),
            ("bound by the scheduler, starting", pod(Some("n"), Some("Pending"), Some("True")), true),
            ("bound by name, not admitted", pod(Some("n"), Some("Pending"), None), false),
            ("bound by name, no phase", pod(Some("n"), None, None), false),
            ("unbound", pod(None, Some("Pending"), Some("False")), false),
            ("succeeded", pod(Some("n"), Some("Succeeded"), Some("True")), false),
            ("refused by the kubelet", pod(Some("n"), Some("Failed"), None), false),
        ];
        for (what, p, want) in rows {
            assert_eq!(holds_resources(&p), want, "{what}");
        }
        let no_status: CachedPod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "containers": []}}),
        )
        .unwrap();
        assert!(!holds_resources(&no_status));
    }

    #[test]
    fn next_share_table() {
        let s = |cpu_cores, gib: i64| Share { cpu_cores, memory_mib: gib * 1024 };
        let small = ShareProblem::TooSmall { share: s(0, 0), min_memory_mib: 1024 };
        let cur = s(8, 32);
        use ShareChange::*;
        // (what, current, capacity, computed, spec changed) → (result, why)
        type Row = (&'static str, Option<Share>, Option<Share>, Result<Share, ShareProblem>, bool);
        type Want = (Result<Share, ShareProblem>, ShareChange);
        let rows: Vec<(Row, Want)> = vec![
            // No share yet: whatever the sizing says.
            (("first sizing", None, Some(s(8, 32)), Ok(s(7, 31)), false), (Ok(s(7, 31)), Initial)),
            (("first sizing, spec changed", None, Some(s(8, 32)), Ok(s(7, 31)), true), (Ok(s(7, 31)), Initial)),
            (("first sizing too small", None, Some(s(0, 0)), Err(small.clone()), false), (Err(small.clone()), Initial)),
            // Still fits: kept, even when a fresh sizing would give more or less.
            (("nothing changed", Some(cur), Some(s(8, 32)), Ok(s(7, 31)), false), (Ok(cur), Kept)),
            (("others grew into the slack", Some(cur), Some(s(8, 32)), Ok(s(7, 31)), false), (Ok(cur), Kept)),
            (("others shrank: no growth", Some(cur), Some(s(12, 60)), Ok(s(11, 59)), false), (Ok(cur), Kept)),
            (("fits, sizing too small", Some(cur), Some(s(8, 32)), Err(small.clone()), false), (Ok(cur), Kept)),
            // No longer fits (CPU, memory, both, no GPUs any more): sized afresh.
            (("cpu overcommitted", Some(cur), Some(s(7, 40)), Ok(s(6, 39)), false), (Ok(s(6, 39)), NoLongerFits)),
            (("memory overcommitted", Some(cur), Some(s(9, 31)), Ok(s(8, 30)), false), (Ok(s(8, 30)), NoLongerFits)),
            (("both overcommitted", Some(cur), Some(s(7, 31)), Ok(s(6, 30)), false), (Ok(s(6, 30)), NoLongerFits)),
            (
                ("overcommitted, too small", Some(cur), Some(s(0, 0)), Err(small.clone()), false),
                (Err(small.clone()), NoLongerFits),
            ),
            (("no gpus", Some(cur), None, Err(ShareProblem::NoGpus), false), (Err(ShareProblem::NoGpus), NoLongerFits)),
            // An admin changed the spec (or the headroom): sized afresh, up or down.
            (("spec change grows", Some(cur), Some(s(12, 60)), Ok(s(11, 59)), true), (Ok(s(11, 59)), SpecChanged)),
            (("spec change shrinks", Some(cur), Some(s(8, 32)), Ok(s(7, 31)), true), (Ok(s(7, 31)), SpecChanged)),
            (("spec change, same", Some(cur), Some(s(8, 32)), Ok(cur), true), (Ok(cur), SpecChanged)),
            (
                ("spec change too small", Some(cur), Some(s(8, 32)), Err(small.clone()), true),
                (Err(small.clone()), SpecChanged),
            ),
            (("spec change, overcommitted", Some(cur), Some(s(1, 1)), Ok(s(1, 1)), true), (Ok(s(1, 1)), SpecChanged)),
        ];
        for ((what, current, cap, computed, spec_changed), want) in rows {
            assert_eq!(next_share(current, cap, computed, spec_changed), want, "{what}");
        }
    }

    #[test]
    fn a_small_change_in_other_requests_does_not_resize() {
        // Sized with the default headroom; then DaemonSets add 200m and 300Mi, then roll out
        // a new version asking 100m and 128Mi more: the agents still fit, nothing moves.
        let base = ShareInput {
            allocatable: res("32", "128Gi"),
            other_requests: Resources::default(),
            reserved: Resources::default(),
            headroom: default_headroom(),
            gpus: 4,
        };
        let first = next_share(None, capacity(base), per_gpu_share(base, 1024), false).0.unwrap();
        for others in [res("200m", "300Mi"), res("300m", "428Mi"), res("3", "3Gi")] {
            let now = ShareInput { other_requests: others, ..base };
            let (next, why) = next_share(Some(first), capacity(now), per_gpu_share(now, 1024), false);
            assert_eq!((next, why), (Ok(first), ShareChange::Kept), "{others:?}");
        }
        // Past the slack (4 cores, 4 Gi): the agents would overcommit; they shrink by whole
        // units, leaving the headroom free again.
        let over = ShareInput { other_requests: res("4100m", "1Gi"), ..base };
        let (next, why) = next_share(Some(first), capacity(over), per_gpu_share(over, 1024), false);
        assert_eq!((next, why), (Ok(Share { cpu_cores: 6, memory_mib: 31 * 1024 }), ShareChange::NoLongerFits));
    }

    fn container(cpu: &str, mem: &str, limits_only: bool) -> Container {
        let q: BTreeMap<String, Quantity> =
            [("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(mem.into()))].into();
        Container {
            name: "c".into(),
            resources: Some(if limits_only {
                ResourceRequirements { limits: Some(q), ..Default::default() }
            } else {
                ResourceRequirements { requests: Some(q), ..Default::default() }
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_follow_scheduler_rules() {
        let mut spec = PodSpec {
            containers: vec![container("1", "1Gi", false), container("500m", "512Mi", true)],
            ..Default::default()
        };
        assert_eq!(pod_requests(&spec), Resources { cpu_millis: 1500, memory_bytes: GIB + GIB / 2 });

        // A big init container dominates; a sidecar adds to everything after it.
        let mut sidecar = container("250m", "256Mi", false);
        sidecar.restart_policy = Some("Always".into());
        spec.init_containers = Some(vec![container("4", "256Mi", false), sidecar]);
        assert_eq!(pod_requests(&spec), Resources { cpu_millis: 4000, memory_bytes: GIB + GIB / 2 + GIB / 4 });

        spec.overhead = Some([("cpu".to_string(), Quantity("100m".into()))].into());
        assert_eq!(pod_requests(&spec).cpu_millis, 4100);

        assert_eq!(pod_requests(&PodSpec::default()), Resources::default());
    }

    #[test]
    fn pod_gpu_requests() {
        let mut c = container("1", "1Gi", false);
        if let Some(r) = c.resources.as_mut() {
            r.limits = Some([("nvidia.com/gpu".to_string(), Quantity("2".into()))].into());
        }
        let spec = PodSpec { containers: vec![c, container("1", "1Gi", false)], ..Default::default() };
        assert_eq!(pod_extended(&spec, "nvidia.com/gpu"), 2);
        assert_eq!(pod_extended(&spec, "amd.com/gpu"), 0);
    }
}
