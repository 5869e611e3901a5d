//! What a Node's labels and allocatable resources say about its GPUs.

use std::collections::BTreeMap;

use thiserror::Error;

use super::quantity;

/// GPU vendors benchkite knows how to label and tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Nvidia,
    Amd,
}

impl Vendor {
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Amd => "amd",
        }
    }

    fn of_resource(resource: &str) -> Option<Vendor> {
        match resource.split_once('/')?.0 {
            "nvidia.com" => Some(Vendor::Nvidia),
            "amd.com" => Some(Vendor::Amd),
            _ => None,
        }
    }
}

/// The GPU inventory of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInventory {
    pub vendor: Vendor,
    pub resource_name: String,
    pub gpu_count: i64,
    pub product: Option<String>,
    pub gpu_type: Option<String>,
    pub family: Option<String>,
    pub architecture: Option<String>,
    pub memory_mib: Option<i64>,
    pub driver_version: Option<String>,
    /// Sharing replicas (time-slicing/MPS); `Some(n)` with n > 1 means not exclusive.
    pub replicas: Option<i64>,
    pub shared: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InventoryError {
    #[error("the node offers no GPU resource (no nvidia.com/* or amd.com/* allocatable)")]
    NoGpuResource,
    #[error("the node offers several GPU resources ({0}); set spec.resourceName to the one agents should request")]
    Ambiguous(String),
    #[error("the node does not offer {0}; it offers {1}")]
    NotOffered(String, String),
}

/// The GPU-like extended resources a node offers (vendor domain, positive allocatable).
pub fn gpu_resources(allocatable: &BTreeMap<String, String>) -> Vec<(String, i64)> {
    allocatable
        .iter()
        .filter(|(name, _)| Vendor::of_resource(name).is_some())
        .filter_map(|(name, q)| quantity::whole_units(q).ok().filter(|n| *n > 0).map(|n| (name.clone(), n)))
        .collect()
}

/// Whether the node offers any GPU resource at all (discovery creates GpuNodes for those).
pub fn offers_gpus(allocatable: &BTreeMap<String, String>) -> bool {
    !gpu_resources(allocatable).is_empty()
}

/// Picks the resource agents request: the explicit one, else the whole-GPU resource, else the
/// only partition resource.
pub fn pick_resource(
    allocatable: &BTreeMap<String, String>,
    requested: Option<&str>,
) -> Result<(String, i64), InventoryError> {
    let offered = gpu_resources(allocatable);
    let names = || offered.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(want) = requested {
        return offered.iter().find(|(n, _)| n == want).cloned().ok_or_else(|| {
            InventoryError::NotOffered(want.to_string(), if offered.is_empty() { "none".into() } else { names() })
        });
    }
    for whole in ["nvidia.com/gpu", "amd.com/gpu"] {
        if let Some(found) = offered.iter().find(|(n, _)| n == whole) {
            return Ok(found.clone());
        }
    }
    match offered.as_slice() {
        [] => Err(InventoryError::NoGpuResource),
        [one] => Ok(one.clone()),
        _ => Err(InventoryError::Ambiguous(names())),
    }
}

/// Builds the inventory from node labels and allocatable resources.
pub fn detect(
    labels: &BTreeMap<String, String>,
    allocatable: &BTreeMap<String, String>,
    requested: Option<&str>,
) -> Result<GpuInventory, InventoryError> {
    let (resource_name, gpu_count) = pick_resource(allocatable, requested)?;
    let vendor = Vendor::of_resource(&resource_name).ok_or(InventoryError::NoGpuResource)?;
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    let int = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    Ok(match vendor {
        Vendor::Nvidia => {
            let product = get("nvidia.com/gpu.product");
            let replicas = int("nvidia.com/gpu.replicas");
            let sharing = get("nvidia.com/gpu.sharing-strategy").is_some_and(|s| s != "none");
            let architecture = match (int("nvidia.com/gpu.compute.major"), int("nvidia.com/gpu.compute.minor")) {
                (Some(major), Some(minor)) => Some(format!("sm_{major}{minor}")),
                _ => None,
            };
            let driver_version = get("nvidia.com/cuda.driver.major").map(|major| {
                [Some(major), get("nvidia.com/cuda.driver.minor"), get("nvidia.com/cuda.driver.rev")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(".")
            });
            GpuInventory {
                vendor,
                gpu_type: product.as_deref().map(short_gpu_type),
                shared: replicas.is_some_and(|r| r > 1)
                    || sharing
                    || product.as_deref().is_some_and(|p| p.ends_with("-SHARED")),
                product,
                family: get("nvidia.com/gpu.family"),
                architecture,
                memory_mib: int("nvidia.com/gpu.memory"),
                driver_version,
                replicas,
                resource_name,
                gpu_count,
            }
        }
        Vendor::Amd => {
            let product = get("amd.com/gpu.product-name");
            let device_id = get("amd.com/gpu.device-id");
            GpuInventory {
                vendor,
                gpu_type: product.as_deref().map(short_gpu_type),
                architecture: device_id.as_deref().and_then(amd_arch).map(str::to_string),
                family: get("amd.com/gpu.family"),
                memory_mib: get("amd.com/gpu.vram").and_then(|v| amd_vram_mib(&v)),
                driver_version: get("amd.com/gpu.driver-version"),
                replicas: None,
                shared: false,
                product,
                resource_name,
                gpu_count,
            }
        }
    })
}

/// Short GPU type for agent tags and queue names: `NVIDIA-H100-80GB-HBM3` → `h100`,
/// `NVIDIA-GeForce-RTX-4090` → `rtx-4090`, `AMD_Instinct_MI300X` → `mi300x`.
pub fn short_gpu_type(product: &str) -> String {
    const VENDOR_WORDS: &[&str] = &["nvidia", "amd", "tesla", "instinct", "geforce", "radeon", "quadro", "pro"];
    let words: Vec<String> =
        product.split(['-', '_', ' ']).filter(|w| !w.is_empty()).map(str::to_ascii_lowercase).collect();
    let mut rest = words.iter().skip_while(|w| VENDOR_WORDS.contains(&w.as_str()));
    let short = match rest.next() {
        Some(first) if first == "rtx" || first == "gtx" => match rest.next() {
            Some(model) => format!("{first}-{model}"),
            None => first.clone(),
        },
        Some(first) => first.clone(),
        None => words.last().cloned().unwrap_or_default(),
    };
    short.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect()
}

/// gfx target of an AMD device id (the ones in the seeds' fleets and their siblings).
pub fn amd_arch(device_id: &str) -> Option<&'static str> {
    Some(match device_id.to_ascii_lowercase().trim_start_matches("0x") {
        "74a0" | "74a1" | "74a2" | "74a5" | "74a9" | "74bd" => "gfx942",
        "75a0" | "75a3" => "gfx950",
        "7408" | "740c" | "740f" | "7410" => "gfx90a",
        "738c" | "738e" => "gfx908",
        "66a0" | "66a1" | "66af" => "gfx906",
        _ => return None,
    })
}

/// `192G`, `192Gi`, `196608M`, `196608` (MiB) → MiB.
fn amd_vram_mib(v: &str) -> Option<i64> {
    if let Ok(mib) = v.parse::<i64>() {
        return Some(mib);
    }
    let normalized = match v.strip_suffix('G').or_else(|| v.strip_suffix("GB")) {
        Some(n) => format!("{n}Gi"),
        None => match v.strip_suffix('M').or_else(|| v.strip_suffix("MB")) {
            Some(n) => format!("{n}Mi"),
            None => v.to_string(),
        },
    };
    quantity::whole_units(&normalized).ok().map(|b| b / quantity::MIB)
}

/// Whether a Node label is mirrored onto its GpuNode, so pools can select by it: the GPU
/// labels (GFD, AMD labeller), `benchkite.dev/*` labels an admin puts on Nodes, the hostname
/// and the well-known instance-type and topology labels.
pub fn is_mirrored_label(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "kubernetes.io/hostname",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    ];
    (key.starts_with("nvidia.com/") || key.starts_with("amd.com/") || key.starts_with("benchkite.dev/"))
        && key != "benchkite.dev/discovered"
        || EXACT.contains(&key)
}

/// The Node labels mirrored onto the GpuNode (see [`is_mirrored_label`]).
pub fn gpu_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().filter(|(k, _)| is_mirrored_label(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn h100_labels() -> BTreeMap<String, String> {
        map(&[
            ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
            ("nvidia.com/gpu.count", "8"),
            ("nvidia.com/gpu.memory", "81559"),
            ("nvidia.com/gpu.family", "hopper"),
            ("nvidia.com/gpu.compute.major", "9"),
            ("nvidia.com/gpu.compute.minor", "0"),
            ("nvidia.com/cuda.driver.major", "570"),
            ("nvidia.com/cuda.driver.minor", "133"),
            ("nvidia.com/cuda.driver.rev", "20"),
            ("kubernetes.io/hostname", "gpu-h100-0"),
        ])
    }

    #[test]
    fn nvidia_h100() {
        let alloc = map(&[("cpu", "128"), ("memory", "1Ti"), ("nvidia.com/gpu", "8")]);
        let inv = detect(&h100_labels(), &alloc, None).unwrap();
        assert_eq!(inv.vendor, Vendor::Nvidia);
        assert_eq!(inv.resource_name, "nvidia.com/gpu");
        assert_eq!(inv.gpu_count, 8);
        assert_eq!(inv.gpu_type.as_deref(), Some("h100"));
        assert_eq!(inv.architecture.as_deref(), Some("sm_90"));
        assert_eq!(inv.memory_mib, Some(81559));
        assert_eq!(inv.driver_version.as_deref(), Some("570.133.20"));
        assert_eq!(inv.family.as_deref(), Some("hopper"));
        assert!(!inv.shared);
        assert_eq!(gpu_labels(&h100_labels()).len(), 10, "GPU labels and the hostname");
        let mut other = h100_labels();
        other.insert("benchkite.dev/team".into(), "kernels".into());
        other.insert("benchkite.dev/discovered".into(), "true".into());
        other.insert("feature.node.kubernetes.io/cpu-model".into(), "x".into());
        let mirrored = gpu_labels(&other);
        assert!(mirrored.contains_key("benchkite.dev/team"));
        assert!(!mirrored.contains_key("benchkite.dev/discovered"), "the controller's own marker is not mirrored");
        assert!(!mirrored.contains_key("feature.node.kubernetes.io/cpu-model"));
    }

    #[test]
    fn nvidia_l40s_arch() {
        let labels = map(&[
            ("nvidia.com/gpu.product", "NVIDIA-L40S"),
            ("nvidia.com/gpu.compute.major", "8"),
            ("nvidia.com/gpu.compute.minor", "9"),
        ]);
        let inv = detect(&labels, &map(&[("nvidia.com/gpu", "2")]), None).unwrap();
        assert_eq!(inv.architecture.as_deref(), Some("sm_89"));
        assert_eq!(inv.gpu_type.as_deref(), Some("l40s"));
        assert_eq!(inv.driver_version, None);
    }

    #[test]
    fn amd_mi300() {
        let labels = map(&[
            ("amd.com/gpu.product-name", "AMD_Instinct_MI300X"),
            ("amd.com/gpu.device-id", "74a1"),
            ("amd.com/gpu.vram", "192G"),
            ("amd.com/gpu.family", "AI"),
        ]);
        let inv = detect(&labels, &map(&[("amd.com/gpu", "8")]), None).unwrap();
        assert_eq!(inv.vendor, Vendor::Amd);
        assert_eq!(inv.architecture.as_deref(), Some("gfx942"));
        assert_eq!(inv.gpu_type.as_deref(), Some("mi300x"));
        assert_eq!(inv.memory_mib, Some(192 * 1024));
    }

    #[test]
    fn sharing_is_detected() {
        let mut labels = h100_labels();
        labels.insert("nvidia.com/gpu.replicas".into(), "4".into());
        let alloc = map(&[("nvidia.com/gpu", "32")]);
        assert!(detect(&labels, &alloc, None).unwrap().shared);
        let mut labels = h100_labels();
        labels.insert("nvidia.com/gpu.replicas".into(), "1".into());
        assert!(!detect(&labels, &alloc, None).unwrap().shared);
        let mut labels = h100_labels();
        labels.insert("nvidia.com/gpu.product".into(), "NVIDIA-H100-80GB-HBM3-SHARED".into());
        assert!(detect(&labels, &alloc, None).unwrap().shared);
        let mut labels = h100_labels();
        labels.insert("nvidia.com/gpu.sharing-strategy".into(), "mps".into());
        assert!(detect(&labels, &alloc, None).unwrap().shared);
    }

    #[test]
    fn mig_and_partitions() {
        let one_mig = map(&[("nvidia.com/mig-3g.40gb", "2"), ("cpu", "64")]);
        let (name, n) = pick_resource(&one_mig, None).unwrap();
        assert_eq!((name.as_str(), n), ("nvidia.com/mig-3g.40gb", 2));

        let mixed = map(&[("nvidia.com/mig-1g.10gb", "7"), ("nvidia.com/mig-3g.40gb", "2")]);
        assert!(matches!(pick_resource(&mixed, None), Err(InventoryError::Ambiguous(_))));
        assert_eq!(pick_resource(&mixed, Some("nvidia.com/mig-1g.10gb")).unwrap().1, 7);
        assert!(matches!(pick_resource(&mixed, Some("nvidia.com/gpu")), Err(InventoryError::NotOffered(..))));

        let amd_part = map(&[("amd.com/cpx_nps4", "64")]);
        assert_eq!(pick_resource(&amd_part, None).unwrap().0, "amd.com/cpx_nps4");

        let whole_and_mig = map(&[("nvidia.com/gpu", "4"), ("nvidia.com/mig-1g.10gb", "7")]);
        assert_eq!(pick_resource(&whole_and_mig, None).unwrap().0, "nvidia.com/gpu");
    }

    #[test]
    fn no_gpus() {
        let cpu_only = map(&[("cpu", "32"), ("memory", "128Gi")]);
        assert!(!offers_gpus(&cpu_only));
        assert_eq!(pick_resource(&cpu_only, None), Err(InventoryError::NoGpuResource));
        let zero = map(&[("nvidia.com/gpu", "0")]);
        assert!(!offers_gpus(&zero), "a GPU resource at 0 offers nothing");
        let garbage = map(&[("nvidia.com/gpu", "lots")]);
        assert!(!offers_gpus(&garbage));
    }

    #[test]
    fn short_types() {
        for (product, short) in [
            ("NVIDIA-H100-80GB-HBM3", "h100"),
            ("NVIDIA-B200", "b200"),
            ("NVIDIA-A100-SXM4-80GB", "a100"),
            ("Tesla-T4", "t4"),
            ("NVIDIA-L4", "l4"),
            ("NVIDIA-GeForce-RTX-4090", "rtx-4090"),
            ("AMD_Instinct_MI300X", "mi300x"),
            ("AMD Instinct MI250X", "mi250x"),
            ("NVIDIA", "nvidia"),
        ] {
            assert_eq!(short_gpu_type(product), short, "{product}");
        }
    }

    #[test]
    fn amd_arches_and_vram() {
        assert_eq!(amd_arch("0x74A1"), Some("gfx942"));
        assert_eq!(amd_arch("740c"), Some("gfx90a"));
        assert_eq!(amd_arch("75a3"), Some("gfx950"));
        assert_eq!(amd_arch("ffff"), None);
        assert_eq!(amd_vram_mib("64G"), Some(65536));
        assert_eq!(amd_vram_mib("196608"), Some(196608));
        assert_eq!(amd_vram_mib("16384M"), Some(16384));
        assert_eq!(amd_vram_mib("lots"), None);
    }
}
