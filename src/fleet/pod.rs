//! Builds the agent pod of one slot: the pure core of the AgentPool controller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, EnvVarSource,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, Pod, PodResourceClaim,
    PodSecurityContext, PodSpec, ResourceClaim, ResourceRequirements, SeccompProfile, SecretKeySelector, Taint,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

pub mod security;

use super::cached_pod::CERTIFY_CONTAINER;
use super::inventory::Vendor;
use super::share::Share;
use crate::api::AgentPool;

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_POOL: &str = "benchkite.dev/pool";
pub const LABEL_NODE: &str = "benchkite.dev/node";
pub const LABEL_SLOT: &str = "benchkite.dev/slot";
pub const ANNOTATION_SPEC_HASH: &str = "benchkite.dev/spec-hash";
pub const ANNOTATION_GPUNODE: &str = "benchkite.dev/gpunode";
pub const ANNOTATION_GPUS: &str = "benchkite.dev/gpus";
/// The cluster autoscaler does not remove a node to save cost while it holds a pod with
/// this annotation set to "false" (cluster-autoscaler FAQ, "What types of pods can prevent
/// CA from removing a node?"): an agent may be running a benchmark at any time.
pub const ANNOTATION_SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
pub const MANAGED_BY: &str = "benchkite";
pub const AGENT_NAME: &str = "buildkite-agent";
pub const HOOKS_PATH: &str = "/etc/buildkite-agent/hooks";
pub const AGENT_CONTAINER: &str = "agent";
/// The entrypoint of the official Buildkite agent image (and benchkite's, built on it).
pub const AGENT_ENTRYPOINT: &str = "buildkite-agent-entrypoint";

/// Controller-wide defaults for agent pods.
#[derive(Clone, Debug)]
pub struct PodDefaults {
    pub agent_image: String,
    pub termination_grace_period_seconds: i64,
}

/// Everything that decides one agent pod.
#[derive(Clone, Debug)]
pub struct AgentSlot<'a> {
    pub pool: &'a AgentPool,
    /// GpuNode name (also used in the pod name).
    pub gpunode: &'a str,
    /// Kubernetes Node the pod is pinned to.
    pub node_name: &'a str,
    pub slot: u32,
    pub vendor: Vendor,
    pub gpu_type: Option<&'a str>,
    pub architecture: Option<&'a str>,
    pub resource_name: &'a str,
    /// GPUs this agent requests (the pool's gpusPerAgent).
    pub gpus: i64,
    /// CPU and memory of this agent (per-GPU share × gpus).
    pub resources: Share,
    pub node_taints: &'a [Taint],
    /// The slot's certification epoch when it is certified for this pool (from its GpuNode's
    /// `status.certification`): its agent starts without certifying again.
    pub certified_epoch: Option<&'a str>,
    /// GPUs through DRA: the pool's ResourceClaimTemplate, which the pod references instead
    /// of requesting `resource_name`.
    pub dra_template: Option<&'a str>,
}

/// Where a DRA agent pod finds the devices allocated to it (a downward-API file of the
/// annotation [`super::dra::ANNOTATION_ALLOCATION`], which the controller writes once the
/// scheduler has allocated the pod's claim).
pub const ALLOCATION_DIR: &str = "/etc/benchkite/allocation";
/// The file in [`ALLOCATION_DIR`].
pub const ALLOCATION_FILE: &str = "devices";
/// The env var naming that file, for `benchkite agent-start`.
pub const ALLOCATION_FILE_ENV: &str = "BENCHKITE_ALLOCATION_FILE";

/// Where an agent pod mounts its pool's reference suite.
pub const SUITE_DIR: &str = "/etc/benchkite/suite";
/// Where an agent pod keeps what its containers share (the certification epoch, the canary's
/// schedule).
pub const STATE_DIR: &str = "/var/lib/benchkite";

/// `<pool>-<node>-<slot>`, shortened with a hash when longer than a pod name may be.
pub fn agent_pod_name(pool: &str, gpunode: &str, slot: u32) -> String {
    let name = format!("{pool}-{gpunode}-{slot}");
    if name.len() <= 253 {
        return name;
    }
    let hash = short_hash(name.as_bytes());
    let keep = 253 - hash.len() - 1 - slot.to_string().len() - 1;
    format!("{}-{hash}-{slot}", name[..keep].trim_end_matches(['-', '.']))
}

/// A label value (≤ 63 chars) for a name that may be longer.
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let hash = short_hash(name.as_bytes());
    format!("{}-{hash}", name[..63 - hash.len() - 1].trim_end_matches(['-', '.', '_']))
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..5])
}

/// The Buildkite agent tags of one slot: managed tags first, then the pool's own.
pub fn agent_tags(slot: &AgentSlot<'_>) -> String {
    let mut tags = vec![format!("queue={}", slot.pool.spec.queue)];
    if let Some(gpu) = slot.gpu_type {
        tags.push(format!("gpu={gpu}"));
    }
    tags.push(format!("vendor={}", slot.vendor.as_str()));
    if let Some(arch) = slot.architecture {
        tags.push(format!("arch={arch}"));
    }
    tags.push(format!("node={}", slot.node_name));
    tags.push(format!("slot={}", slot.slot));
    tags.extend(slot.pool.spec.agent.tags.iter().map(|(k, v)| format!("{k}={v}")));
    tags.join(",")
}

/// The digest of an image reference pinned by one (`repo@sha256:…`).
pub fn image_digest(image: &str) -> Option<&str> {
    let (_, digest) = image.rsplit_once('@')?;
    let (algo, hex) = digest.split_once(':')?;
    (!algo.is_empty() && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(digest)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The tolerations an agent needs for the node's GPU taints (and only those), plus the pool's.
fn tolerations(slot: &AgentSlot<'_>) -> Vec<Toleration> {
    let domain = slot.resource_name.split('/').next().unwrap_or_default();
    let mut out: Vec<Toleration> = slot
        .node_taints
        .iter()
        .filter(|t| t.key == slot.resource_name || t.key.split('/').next() == Some(domain))
        .map(|t| Toleration {
            key: Some(t.key.clone()),
            operator: Some("Exists".into()),
            effect: Some(t.effect.clone()),
            ..Default::default()
        })
        .collect();
    out.extend(slot.pool.spec.agent.pod.tolerations.iter().cloned());
    out
}

/// Builds the agent pod of a slot. The pod carries a hash of everything it was built from,
/// so a changed pool (or share) is noticed and the agent rolled.
pub fn agent_pod(slot: &AgentSlot<'_>, defaults: &PodDefaults) -> Pod {
    let pool = slot.pool;
    let agent = &pool.spec.agent;
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let name = agent_pod_name(&pool_name, slot.gpunode, slot.slot);

    let image = agent.image.clone().unwrap_or_else(|| defaults.agent_image.clone());
    let mut env_vars = vec![
        EnvVar {
            name: "BUILDKITE_AGENT_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: agent.token_secret_ref.name.clone(),
                    key: agent.token_secret_ref.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env("BUILDKITE_AGENT_TAGS", agent_tags(slot)),
        env("BUILDKITE_AGENT_NAME", name.clone()),
    ];
    if agent.ephemeral {
        env_vars.push(env("BUILDKITE_AGENT_DISCONNECT_AFTER_JOB", "true"));
    }
    if let Some(p) = agent.priority {
        env_vars.push(env("BUILDKITE_AGENT_PRIORITY", p.to_string()));
    }
    if agent.hooks.is_some() {
        env_vars.push(env("BUILDKITE_HOOKS_PATH", HOOKS_PATH));
    }
    // The seeds' variables, so existing pipelines keep working.
    env_vars.push(env("KERNELBOT_CPUS", slot.resources.cpu_cores.to_string()));
    env_vars.push(env("KERNELBOT_MEMORY", format!("{}m", slot.resources.memory_mib)));
    env_vars.push(env("KERNELBOT_GPU_INDEX", slot.slot.to_string()));
    // Where a result was measured, for the runner's fingerprint: the node (downward API) and
    // the image digest when the image is pinned by one (a tag's digest is known only after
    // the pull, to the kubelet).
    env_vars.push(EnvVar {
        name: "BENCHKITE_NODE_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "spec.nodeName".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    if let Some(digest) = image_digest(&image)
        && !agent.env.iter().any(|e| e.name == "BENCHKITE_IMAGE_DIGEST")
    {
        env_vars.push(env("BENCHKITE_IMAGE_DIGEST", digest));
    }
    // The runner's sandbox (a pool's own env, after, may tune it).
    env_vars.extend(security::sandbox_env(&name));
    env_vars.extend(agent.env.iter().cloned());

    let mut quantities: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(slot.resources.cpu_cores.to_string())),
        ("memory".to_string(), Quantity(slot.resources.memory_quantity())),
    ]
    .into();
    // The GPUs: the device plugin's extended resource, or the pool's DRA claim (the
    // scheduler allocates `gpus` whole GPUs to it; the container names it).
    let claims = match slot.dra_template {
        None => {
            quantities.insert(slot.resource_name.to_string(), Quantity(slot.gpus.to_string()));
            None
        }
        Some(_) => Some(vec![ResourceClaim { name: super::dra::CLAIM_NAME.into(), request: None }]),
    };
    if slot.dra_template.is_some() {
        env_vars.push(env(ALLOCATION_FILE_ENV, format!("{ALLOCATION_DIR}/{ALLOCATION_FILE}")));
    }

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(hooks) = &agent.hooks {
        volumes.push(Volume {
            name: "benchkite-hooks".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: hooks.config_map.clone(),
                default_mode: Some(0o755),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "benchkite-hooks".into(),
            mount_path: HOOKS_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if slot.dra_template.is_some() {
        volumes.push(Volume {
            name: "benchkite-allocation".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: ALLOCATION_FILE.into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{}']", super::dra::ANNOTATION_ALLOCATION),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                default_mode: Some(0o444),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "benchkite-allocation".into(),
            mount_path: ALLOCATION_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let (own_volumes, own_mounts) = security::volumes(&pool_name);
    volumes.extend(own_volumes);
    mounts.extend(own_mounts);
    volumes.extend(agent.pod.volumes.iter().cloned());
    mounts.extend(agent.pod.volume_mounts.iter().cloned());
    // Certification: the suite and a directory both containers share; the agent's runner
    // times the canary when due; an uncertified slot certifies first (an init container).
    let mut init_containers = Vec::new();
    let mut epoch_env = None;
    if let Some(cert) = &pool.spec.certification {
        volumes.push(Volume {
            name: "benchkite-suite".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cert.suite.config_map.clone(),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "benchkite-state".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "benchkite-suite".into(),
            mount_path: SUITE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        mounts.push(VolumeMount { name: "benchkite-state".into(), mount_path: STATE_DIR.into(), ..Default::default() });
        let suite_file = format!("{SUITE_DIR}/{}", cert.suite_key());
        env_vars.push(env("BENCHKITE_SUITE_FILE", suite_file.clone()));
        env_vars.push(env("BENCHKITE_STATE_DIR", STATE_DIR));
        let canary = cert.canary.clone().unwrap_or_default();
        env_vars.push(env("BENCHKITE_CANARY_EVERY", canary.every_evaluations.unwrap_or(20).to_string()));
        env_vars.push(env("BENCHKITE_CANARY_MINUTES", canary.every_minutes.unwrap_or(60).to_string()));
        match slot.certified_epoch {
            Some(epoch) => epoch_env = Some(env("BENCHKITE_CERTIFICATION_EPOCH", epoch)),
            None => {
                // Everything the runner needs, nothing the agent does (its token above all).
                let mut init_env: Vec<EnvVar> =
                    env_vars.iter().filter(|e| !e.name.starts_with("BUILDKITE_")).cloned().collect();
                init_env.push(env(
                    "BENCHKITE_CERTIFY_THRESHOLDS",
                    serde_json::to_string(&cert.thresholds()).unwrap_or_default(),
                ));
                if cert.require_certified {
                    init_env.push(env("BENCHKITE_CERTIFY_REQUIRED", "true"));
                }
                init_containers.push(Container {
                    name: CERTIFY_CONTAINER.into(),
                    image: Some(image.clone()),
                    command: Some(vec!["benchkite".into(), "certify".into()]),
                    env: Some(init_env),
                    resources: Some(ResourceRequirements {
                        requests: Some(quantities.clone()),
                        limits: Some(quantities.clone()),
                        claims: claims.clone(),
                    }),
                    security_context: Some(
                        agent.pod.security_context.clone().unwrap_or_else(security::default_security_context),
                    ),
                    volume_mounts: Some(mounts.clone()),
                    termination_message_policy: Some("FallbackToLogsOnError".into()),
                    ..Default::default()
                });
            }
        }
    }

    // A DRA agent starts through `benchkite agent-start`, which waits for its allocation and
    // adds the devices to the agent's tags and environment, then runs the image's own
    // entrypoint (that of the official agent image: tini, SSH setup, the agent) as usual.
    let command = slot.dra_template.map(|_| {
        ["benchkite", "agent-start", "--", AGENT_ENTRYPOINT].into_iter().map(String::from).collect::<Vec<_>>()
    });
    let container = Container {
        name: AGENT_CONTAINER.into(),
        image: Some(image),
        command,
        args: Some(vec!["start".into()]),
        env: Some(env_vars),
        env_from: (!agent.env_from.is_empty()).then(|| agent.env_from.clone()),
        resources: Some(ResourceRequirements { requests: Some(quantities.clone()), limits: Some(quantities), claims }),
        security_context: Some(agent.pod.security_context.clone().unwrap_or_else(security::default_security_context)),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };

    let mut spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(agent.pod.automount_service_account_token.unwrap_or(false)),
        service_account_name: agent.pod.service_account_name.clone(),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(
            agent.pod.termination_grace_period_seconds.unwrap_or(defaults.termination_grace_period_seconds),
        ),
        priority_class_name: agent.pod.priority_class_name.clone(),
        image_pull_secrets: (!agent.pod.image_pull_secrets.is_empty()).then(|| agent.pod.image_pull_secrets.clone()),
        security_context: Some(agent.pod.pod_security_context.clone().unwrap_or_else(|| PodSecurityContext {
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        })),
        // Required node affinity, not nodeName: the scheduler then accounts for the GPUs and
        // keeps a ninth pod Pending instead of the kubelet rejecting it.
        affinity: Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![slot.node_name.to_string()]),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        tolerations: Some(tolerations(slot)),
        resource_claims: slot.dra_template.map(|t| {
            vec![PodResourceClaim {
                name: super::dra::CLAIM_NAME.into(),
                resource_claim_template_name: Some(t.to_string()),
                resource_claim_name: None,
            }]
        }),
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..Default::default()
    };

    let mut labels: BTreeMap<String, String> = agent.pod.labels.clone();
    labels.insert(LABEL_NAME.into(), AGENT_NAME.into());
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels.insert(LABEL_POOL.into(), label_value(&pool_name));
    labels.insert(LABEL_NODE.into(), label_value(slot.gpunode));
    labels.insert(LABEL_SLOT.into(), slot.slot.to_string());

    let mut annotations: BTreeMap<String, String> = agent.pod.annotations.clone();
    annotations.insert(ANNOTATION_GPUNODE.into(), slot.gpunode.to_string());
    annotations.insert(ANNOTATION_GPUS.into(), slot.gpus.to_string());
    annotations.insert(ANNOTATION_SAFE_TO_EVICT.into(), "false".into());
    // The hash leaves out how far certification got (the init container of an uncertified
    // slot, the epoch of a certified one): a slot that certifies does not roll its agent.
    let hash = spec_hash(&spec, &labels, &annotations);
    annotations.insert(ANNOTATION_SPEC_HASH.into(), hash);
    if !init_containers.is_empty() {
        spec.init_containers = Some(init_containers);
    }
    if let Some(e) = epoch_env
        && let Some(env) = spec.containers.first_mut().and_then(|c| c.env.as_mut())
    {
        env.push(e);
    }

    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: pool
                .controller_owner_ref(&())
                .map(|o| vec![OwnerReference { block_owner_deletion: Some(true), ..o }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn spec_hash(spec: &PodSpec, labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    // serde_json of these types is deterministic (BTreeMaps, fixed field order).
    for part in [serde_json::to_vec(spec), serde_json::to_vec(labels), serde_json::to_vec(annotations)] {
        hasher.update(part.unwrap_or_default());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The spec hash a built pod carries.
pub fn pod_spec_hash(pod: &Pod) -> Option<&str> {
    pod.metadata.annotations.as_ref()?.get(ANNOTATION_SPEC_HASH).map(String::as_str)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::agentpool::{AgentPoolSpec, AgentSpec, GpuNodeSelector, HooksSource, PodOverrides, SecretKeyRef};

    pub(crate) fn pool(name: &str) -> AgentPool {
        let mut p = AgentPool::new(
            name,
            AgentPoolSpec {
                queue: "nvidia-h100".into(),
                gpu_node_selector: GpuNodeSelector::default(),
                gpus_per_agent: 1,
                agent: AgentSpec {
                    image: None,
                    token_secret_ref: SecretKeyRef { name: "agent-token".into(), key: "token".into() },
                    tags: [("team".to_string(), "kernels".to_string())].into(),
                    env: vec![],
                    env_from: vec![],
                    ephemeral: true,
                    priority: None,
                    hooks: None,
                    pod: PodOverrides::default(),
                },
                paused: false,
                buildkite: None,
                strategy: None,
                certification: None,
                queueing: None,
                autoscaling: None,
                result_cache: None,
                dra: None,
            },
        );
        p.metadata.namespace = Some("ci".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    /// An agent pod of `pool` on a test node.
    pub(crate) fn built(pool: &AgentPool) -> Pod {
        let taints = taints();
        agent_pod(&slot(pool, &taints), &defaults())
    }

    #[test]
    fn agents_keep_the_cluster_autoscaler_away() {
        let pool = pool("h100");
        let mut p = pool.clone();
        // The pool's own annotations cannot switch it off.
        p.spec.agent.pod.annotations.insert(ANNOTATION_SAFE_TO_EVICT.into(), "true".into());
        for pod in [built(&pool), built(&p)] {
            let annotations = pod.metadata.annotations.unwrap_or_default();
            assert_eq!(annotations.get(ANNOTATION_SAFE_TO_EVICT).map(String::as_str), Some("false"));
        }
    }

    fn taints() -> Vec<Taint> {
        vec![
            Taint {
                key: "nvidia.com/gpu".into(),
                value: Some("present".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            },
            Taint {
                key: "dedicated".into(),
                value: Some("ml".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            },
        ]
    }

    fn defaults() -> PodDefaults {
        PodDefaults { agent_image: "example/agent:1".into(), termination_grace_period_seconds: 900 }
    }

    fn slot<'a>(pool: &'a AgentPool, taints: &'a [Taint]) -> AgentSlot<'a> {
        AgentSlot {
            pool,
            gpunode: "gpu-h100-0",
            node_name: "gpu-h100-0",
            slot: 3,
            vendor: Vendor::Nvidia,
            gpu_type: Some("h100"),
            architecture: Some("sm_90"),
            resource_name: "nvidia.com/gpu",
            gpus: 1,
            resources: Share { cpu_cores: 16, memory_mib: 131072 },
            node_taints: taints,
            certified_epoch: None,
            dra_template: None,
        }
    }

    fn env_of<'p>(pod: &'p Pod, name: &str) -> Option<&'p EnvVar> {
        pod.spec.as_ref()?.containers[0].env.as_ref()?.iter().find(|e| e.name == name)
    }

    #[test]
    fn guaranteed_one_gpu_pinned_secure() {
        let p = pool("h100");
        let t = taints();
        let pod = agent_pod(&slot(&p, &t), &defaults());
        assert_eq!(pod.metadata.name.as_deref(), Some("h100-gpu-h100-0-3"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ci"));
        let spec = pod.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        let res = c.resources.as_ref().unwrap();
        assert_eq!(res.requests, res.limits, "requests == limits → Guaranteed");
        let limits = res.limits.as_ref().unwrap();
        assert_eq!(limits["cpu"].0, "16");
        assert_eq!(limits["memory"].0, "131072Mi");
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.node_name, None, "placement goes through the scheduler");
        let term = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(term.match_fields.as_ref().unwrap()[0].values.as_deref(), Some(&["gpu-h100-0".to_string()][..]));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(
            caps.add.as_deref(),
            Some(&["CHOWN", "DAC_OVERRIDE", "KILL", "SETGID", "SETUID"].map(String::from)[..]),
            "only what the runner's sandbox needs"
        );
        assert_eq!(spec.security_context.as_ref().unwrap().seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("AgentPool", Some(true)));
        assert_eq!(c.image.as_deref(), Some("example/agent:1"));
    }

    #[test]
    fn a_pinned_image_hands_its_digest_to_the_runner() {
        let hex = "a".repeat(64);
        let mut p = pool("h100");
        p.spec.agent.image = Some(format!("registry.example:5000/agent:1@sha256:{hex}"));
        let t = taints();
        let pod = agent_pod(&slot(&p, &t), &defaults());
        let digest = format!("sha256:{hex}");
        assert_eq!(env_of(&pod, "BENCHKITE_IMAGE_DIGEST").unwrap().value.as_deref(), Some(digest.as_str()));
        for (image, want) in [
            ("agent:1", None),
            ("registry.example:5000/agent", None),
            ("agent@sha256:", None),
            ("agent@sha256:xyz", None),
            ("agent@:abcd", None),
            ("agent@sha512:abcd", Some("sha512:abcd")),
        ] {
            assert_eq!(image_digest(image), want, "{image}");
        }
    }

    #[test]
    fn a_certifying_pool_certifies_uncertified_slots_first_and_never_rolls_for_it() {
        use crate::api::certification::{CanarySpec, PoolCertification, SuiteRef};
        let mut p = pool("h100");
        p.spec.certification = Some(PoolCertification {
            suite: SuiteRef { config_map: "ref-suite".into(), key: None },
            require_certified: true,
            thresholds: None,
            canary: Some(CanarySpec { every_evaluations: Some(5), ..Default::default() }),
            recertify_after_hours: None,
        });
        let t = taints();
        let fresh = agent_pod(&slot(&p, &t), &defaults());
        let spec = fresh.spec.as_ref().unwrap();
        let init = &spec.init_containers.as_ref().expect("an init container")[0];
        assert_eq!(init.name, "certify");
        assert_eq!(init.command.as_deref(), Some(&["benchkite".to_string(), "certify".to_string()][..]));
        let ienv = |n: &str| init.env.as_ref().unwrap().iter().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(ienv("BENCHKITE_CERTIFY_REQUIRED").as_deref(), Some("true"));
        assert!(ienv("BENCHKITE_CERTIFY_THRESHOLDS").unwrap().contains("\"minKendallTau\":0.96"));
        assert_eq!(ienv("BENCHKITE_SUITE_FILE").as_deref(), Some("/etc/benchkite/suite/suite.yaml"));
        assert!(init.env.as_ref().unwrap().iter().all(|e| !e.name.starts_with("BUILDKITE_")), "no agent token");
        assert_eq!(init.resources, spec.containers[0].resources, "no more than the agent: the pod's requests stay");
        assert_eq!(env_of(&fresh, "BENCHKITE_CANARY_EVERY").unwrap().value.as_deref(), Some("5"));
        assert_eq!(env_of(&fresh, "BENCHKITE_CANARY_MINUTES").unwrap().value.as_deref(), Some("60"));
        assert_eq!(env_of(&fresh, "BENCHKITE_STATE_DIR").unwrap().value.as_deref(), Some(STATE_DIR));
        assert!(env_of(&fresh, "BENCHKITE_CERTIFICATION_EPOCH").is_none());
        let vols: Vec<&str> = spec.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
        assert!(vols.contains(&"benchkite-suite") && vols.contains(&"benchkite-state"), "{vols:?}");
        // Certified: no init container, the epoch for the fingerprint, the same hash.
        let mut certified_slot = slot(&p, &t);
        certified_slot.certified_epoch = Some("1790000000");
        let certified = agent_pod(&certified_slot, &defaults());
        assert!(certified.spec.as_ref().unwrap().init_containers.is_none());
        assert_eq!(env_of(&certified, "BENCHKITE_CERTIFICATION_EPOCH").unwrap().value.as_deref(), Some("1790000000"));
        assert_eq!(pod_spec_hash(&certified), pod_spec_hash(&fresh), "certifying does not roll the agent");
        // Advisory: the init container reports but never blocks.
        p.spec.certification.as_mut().unwrap().require_certified = false;
        let advisory = agent_pod(&slot(&p, &t), &defaults());
        let init = &advisory.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
        assert!(init.env.as_ref().unwrap().iter().all(|e| e.name != "BENCHKITE_CERTIFY_REQUIRED"));
        // A pool without certification has none of it.
        let plain = built(&pool("h100"));
        assert!(plain.spec.as_ref().unwrap().init_containers.is_none());
        assert!(env_of(&plain, "BENCHKITE_SUITE_FILE").is_none());
    }

    fn pspec_args(pod: &Pod) -> Option<Vec<String>> {
        pod.spec.as_ref()?.containers[0].args.clone()
    }

    #[test]
    fn a_dra_agent_claims_its_gpus_instead_of_the_extended_resource() {
        use crate::api::certification::{PoolCertification, SuiteRef};
        let mut p = pool("h100");
        p.spec.certification = Some(PoolCertification {
            suite: SuiteRef { config_map: "ref-suite".into(), key: None },
            require_certified: false,
            thresholds: None,
            canary: None,
            recertify_after_hours: None,
        });
        let t = taints();
        let plugin = agent_pod(&slot(&p, &t), &defaults());
        let mut s = slot(&p, &t);
        s.dra_template = Some("h100-gpus-0a1b2c3d");
        let pod = agent_pod(&s, &defaults());
        let spec = pod.spec.as_ref().unwrap();
        // The pod references the pool's template under the claim name the containers use.
        let claims = spec.resource_claims.as_ref().expect("resourceClaims");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].name, crate::fleet::dra::CLAIM_NAME);
        assert_eq!(claims[0].resource_claim_template_name.as_deref(), Some("h100-gpus-0a1b2c3d"));
        assert!(claims[0].resource_claim_name.is_none());
        // Agent and certify container both hold the claim; neither asks for nvidia.com/gpu,
        // and CPU and memory stay Guaranteed.
        let init = &spec.init_containers.as_ref().expect("certify")[0];
        for c in [&spec.containers[0], init] {
            let r = c.resources.as_ref().unwrap();
            assert_eq!(
                r.claims.as_ref().map(|c| c.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()),
                Some(vec!["gpus"]),
                "{}",
                c.name
            );
            assert!(!r.requests.as_ref().unwrap().contains_key("nvidia.com/gpu"), "{}", c.name);
            assert!(!r.limits.as_ref().unwrap().contains_key("nvidia.com/gpu"), "{}", c.name);
            assert_eq!(r.requests, r.limits);
            assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "16");
        }
        // The agent starts through `benchkite agent-start`, which reads the allocation from a
        // downward-API file of the controller's annotation.
        let agent = &spec.containers[0];
        let command = ["benchkite", "agent-start", "--", "buildkite-agent-entrypoint"].map(String::from);
        assert_eq!(agent.command.as_deref(), Some(&command[..]), "the image's entrypoint runs after");
        assert_eq!(agent.args, pspec_args(&plugin), "the agent's own arguments, as without DRA");
        assert_eq!(
            env_of(&pod, ALLOCATION_FILE_ENV).unwrap().value.as_deref(),
            Some("/etc/benchkite/allocation/devices")
        );
        let vol = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == "benchkite-allocation").expect("volume");
        let item = &vol.downward_api.as_ref().unwrap().items.as_ref().unwrap()[0];
        assert_eq!(item.path, ALLOCATION_FILE);
        assert_eq!(item.field_ref.as_ref().unwrap().field_path, "metadata.annotations['benchkite.dev/gpu-allocation']");
        let mount = agent.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "benchkite-allocation").unwrap();
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (ALLOCATION_DIR, Some(true)));
        // Managed tags, the slot and the nvidia.com taint toleration are as for the plugin.
        assert_eq!(env_of(&pod, "BUILDKITE_AGENT_TAGS"), env_of(&plugin, "BUILDKITE_AGENT_TAGS"));
        assert_eq!(env_of(&pod, "KERNELBOT_GPU_INDEX").unwrap().value.as_deref(), Some("3"));
        assert_eq!(spec.tolerations, plugin.spec.as_ref().unwrap().tolerations);
        assert_eq!(pod.metadata.annotations.as_ref().unwrap()[ANNOTATION_GPUS], "1");
        // The device-plugin pod has none of it, and a new template rolls the agents.
        let pspec = plugin.spec.as_ref().unwrap();
        assert!(pspec.resource_claims.is_none() && pspec.containers[0].command.is_none());
        assert_eq!(pspec.containers[0].resources.as_ref().unwrap().requests.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
        assert_ne!(pod_spec_hash(&pod), pod_spec_hash(&plugin));
        s.dra_template = Some("h100-gpus-ffffffff");
        assert_ne!(pod_spec_hash(&agent_pod(&s, &defaults())), pod_spec_hash(&pod));
    }

    #[test]
    fn tolerates_only_gpu_taints() {
        let p = pool("h100");
        let t = taints();
        let pod = agent_pod(&slot(&p, &t), &defaults());
        let tol = pod.spec.unwrap().tolerations.unwrap();
        assert_eq!(tol.len(), 1);
        assert_eq!(tol[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(tol[0].operator.as_deref(), Some("Exists"));
    }

    #[test]
    fn environment_and_tags() {
        let p = pool("h100");
        let t = taints();
        let pod = agent_pod(&slot(&p, &t), &defaults());
        assert_eq!(
            env_of(&pod, "BUILDKITE_AGENT_TAGS").unwrap().value.as_deref(),
            Some("queue=nvidia-h100,gpu=h100,vendor=nvidia,arch=sm_90,node=gpu-h100-0,slot=3,team=kernels")
        );
        assert_eq!(env_of(&pod, "BUILDKITE_AGENT_NAME").unwrap().value.as_deref(), Some("h100-gpu-h100-0-3"));
        assert_eq!(env_of(&pod, "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB").unwrap().value.as_deref(), Some("true"));
        assert_eq!(env_of(&pod, "KERNELBOT_CPUS").unwrap().value.as_deref(), Some("16"));
        assert_eq!(env_of(&pod, "KERNELBOT_MEMORY").unwrap().value.as_deref(), Some("131072m"));
        assert_eq!(env_of(&pod, "KERNELBOT_GPU_INDEX").unwrap().value.as_deref(), Some("3"), "the slot");
        let node = env_of(&pod, "BENCHKITE_NODE_NAME").unwrap();
        assert_eq!(
            node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str()),
            Some("spec.nodeName"),
            "the node comes from the downward API"
        );
        assert!(env_of(&pod, "BENCHKITE_IMAGE_DIGEST").is_none(), "a tag has no digest the controller knows");
        let token = env_of(&pod, "BUILDKITE_AGENT_TOKEN").unwrap();
        assert_eq!(token.value, None, "the token is never inlined");
        let sel = token.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("agent-token", "token"));
        assert!(env_of(&pod, "BUILDKITE_HOOKS_PATH").is_none());
    }

    #[test]
    fn non_ephemeral_hooks_priority_and_overrides() {
        let mut p = pool("h100");
        p.spec.agent.ephemeral = false;
        p.spec.agent.priority = Some(5);
        p.spec.agent.hooks = Some(HooksSource { config_map: "hooks".into() });
        p.spec.agent.pod.automount_service_account_token = Some(true);
        p.spec.agent.pod.termination_grace_period_seconds = Some(30);
        p.spec.agent.image = Some("mine:2".into());
        let t = taints();
        let pod = agent_pod(&slot(&p, &t), &defaults());
        assert!(env_of(&pod, "BUILDKITE_AGENT_DISCONNECT_AFTER_JOB").is_none());
        assert_eq!(env_of(&pod, "BUILDKITE_AGENT_PRIORITY").unwrap().value.as_deref(), Some("5"));
        assert_eq!(env_of(&pod, "BUILDKITE_HOOKS_PATH").unwrap().value.as_deref(), Some(HOOKS_PATH));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(true), "only when set explicitly");
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.containers[0].image.as_deref(), Some("mine:2"));
        let vol = &spec.volumes.unwrap()[0];
        assert_eq!(vol.config_map.as_ref().unwrap().default_mode, Some(0o755));
    }

    #[test]
    fn amd_multi_gpu_agent() {
        let p = pool("mi300");
        let t = vec![Taint { key: "amd.com/gpu".into(), effect: "NoSchedule".into(), ..Default::default() }];
        let mut s = slot(&p, &t);
        s.vendor = Vendor::Amd;
        s.resource_name = "amd.com/gpu";
        s.gpus = 2;
        s.architecture = Some("gfx942");
        s.resources = Share { cpu_cores: 48, memory_mib: 2 * 262144 };
        let pod = agent_pod(&s, &defaults());
        let limits = pod.spec.as_ref().unwrap().containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
        assert_eq!(limits["amd.com/gpu"].0, "2");
        assert!(!limits.contains_key("nvidia.com/gpu"));
        assert_eq!(pod.spec.as_ref().unwrap().tolerations.as_ref().unwrap()[0].key.as_deref(), Some("amd.com/gpu"));
        assert!(
            env_of(&pod, "BUILDKITE_AGENT_TAGS").unwrap().value.as_deref().unwrap().contains("vendor=amd,arch=gfx942")
        );
    }

    #[test]
    fn hash_changes_with_spec_and_share_only() {
        let p = pool("h100");
        let t = taints();
        let a = agent_pod(&slot(&p, &t), &defaults());
        let b = agent_pod(&slot(&p, &t), &defaults());
        assert_eq!(pod_spec_hash(&a), pod_spec_hash(&b), "deterministic");
        let mut changed = p.clone();
        changed.spec.agent.image = Some("other:1".into());
        assert_ne!(pod_spec_hash(&a), pod_spec_hash(&agent_pod(&slot(&changed, &t), &defaults())));
        let mut s = slot(&p, &t);
        s.resources.cpu_cores = 15;
        assert_ne!(pod_spec_hash(&a), pod_spec_hash(&agent_pod(&s, &defaults())));
    }

    #[test]
    fn long_names_are_shortened() {
        let pool_name = "p".repeat(200);
        let node = "n".repeat(200);
        let name = agent_pod_name(&pool_name, &node, 7);
        assert!(name.len() <= 253);
        assert!(name.ends_with("-7"));
        assert_ne!(name, agent_pod_name(&pool_name, &"m".repeat(200), 7));
        assert_eq!(label_value("short"), "short");
        assert!(label_value(&"x".repeat(100)).len() <= 63);
    }
}
