//! The per-GPU share: how much CPU and memory one GPU's agent gets on a node.
//!
//! share = floor((allocatable − requests of every pod benchkite does not manage − reserved)
//!               ÷ GPUs), cpu in whole cores, memory rounded down to MiB; an agent with
//! `gpusPerAgent` GPUs gets that many shares. Whole cores make the pod eligible for exclusive
//! cores under the static CPU manager.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};

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

/// Inputs of the share computation for one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareInput {
    pub allocatable: Resources,
    pub other_requests: Resources,
    pub reserved: Resources,
    pub gpus: i64,
}

/// The share of one GPU, or why there is none worth running an agent on.
pub fn per_gpu_share(input: ShareInput, min_memory_mib: i64) -> Result<Share, ShareProblem> {
    if input.gpus <= 0 {
        return Err(ShareProblem::NoGpus);
    }
    let free = input.allocatable.saturating_sub(input.other_requests).saturating_sub(input.reserved);
    let share = Share {
        cpu_cores: (free.cpu_millis.max(0) / input.gpus) / 1000,
        memory_mib: (free.memory_bytes.max(0) / input.gpus) / MIB,
    };
    if share.cpu_cores < 1 || share.memory_mib < min_memory_mib.max(1) {
        return Err(ShareProblem::TooSmall { share, min_memory_mib });
    }
    Ok(share)
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
        ShareInput { allocatable: alloc, other_requests: other, reserved, gpus }
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
        assert_eq!(s.memory_mib, 289_000_000_000 / 2 / MIB);
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
        assert_eq!(s.memory_mib, (384 - 11) * 1024 / 2);
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
