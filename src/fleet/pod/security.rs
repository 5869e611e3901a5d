//! The agent pod's least privilege (issue 17): what `benchkite run`'s sandbox needs from the
//! pod and nothing more, as defaults when the pool sets no securityContext of its own.
//!
//! The agent and the runner run as root with only these capabilities (everything else is
//! dropped, no privilege escalation, a read-only root filesystem):
//! - `SETUID`, `SETGID`: the runner starts every evaluated program as the sandbox user
//!   (setgroups/setresgid/setresuid); the program has no capability left afterwards.
//! - `CHOWN`: the runner hands the work directory, HOME and TMPDIR of a run to that user.
//! - `KILL`: the runner SIGKILLs the sandbox's process group at a timeout, a cancel, a disk
//!   overrun, and the descendants it reaps as a subreaper (processes of another uid).
//! - `DAC_OVERRIDE`: the runner reads what the sandbox wrote (profiler output, the disk
//!   watchdog's walk of `0700` directories the sandbox owns) and removes the run's
//!   directories afterwards, whatever modes the submission left on them.
//!
//! Writable paths are emptyDirs: the build directory, the plugins directory, `/tmp`, and the
//! sandbox's scratch (bounded by `sizeLimit` above the runner's own disk watchdog limit).

use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, EnvVar, KeyToPath, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use sha2::{Digest, Sha256};

use crate::signing;

/// Capabilities the agent container keeps (see the module docs for why each).
pub const AGENT_CAPABILITIES: &[&str] = &["CHOWN", "DAC_OVERRIDE", "KILL", "SETGID", "SETUID"];
/// The agent's build directory (`build-path` of the image's buildkite-agent.cfg).
pub const BUILDS_DIR: &str = "/buildkite/builds";
/// The agent's plugins directory (`plugins-path` of the image's buildkite-agent.cfg).
pub const PLUGINS_DIR: &str = "/buildkite/plugins";
/// Where the runner puts the sandbox's run directories (`BENCHKITE_SANDBOX_DIR`).
pub const SANDBOX_DIR: &str = "/var/lib/benchkite/sandbox";
/// The runner's scratch disk limit per run, MiB (`BENCHKITE_SANDBOX_DISK_MIB`).
pub const SANDBOX_DISK_MIB: u64 = 8192;
/// The sandbox scratch emptyDir's sizeLimit: the runner's limit plus room for what a run
/// writes between two measurements of its watchdog, and the runner's own files.
pub const SANDBOX_SIZE_LIMIT: &str = "10Gi";
// The scratch volume leaves room above the runner's own watchdog limit (10Gi).
const _: () = assert!(SANDBOX_DISK_MIB < 10 * 1024);
/// `/tmp`'s sizeLimit (the agent's job env files, the runner's temporary files; writable by
/// the sandbox too, as every `/tmp`).
pub const TMP_SIZE_LIMIT: &str = "1Gi";
/// The build directory's sizeLimit (result.json, the job's checkout, which benchkite skips).
pub const BUILDS_SIZE_LIMIT: &str = "1Gi";
/// RLIMIT_NPROC of the sandbox user in an agent pod.
pub const SANDBOX_NPROC: u64 = 4096;
/// First uid (and gid) of the per-pod sandbox users; see [`sandbox_uid`].
pub const SANDBOX_UID_BASE: u32 = 100_000;
/// How many uids [`sandbox_uid`] spreads the pods over.
pub const SANDBOX_UID_SPAN: u32 = 1 << 20;
/// Name of the result key volume.
pub const RESULT_KEY_VOLUME: &str = "benchkite-result-key";

/// The default securityContext of the agent container.
pub fn default_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(AGENT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
        }),
        ..Default::default()
    }
}

/// The sandbox uid (= gid) of one agent pod: per pod, so that two agents on one node never
/// share RLIMIT_NPROC (counted per uid across the node's PID namespaces) or files in a
/// shared hostPath. Kubernetes pods have their own PID namespace, so `kill(-1)` as that uid
/// (the runner's end-of-run sweep) never reaches another pod even on a collision.
pub fn sandbox_uid(pod_name: &str) -> u32 {
    let d = Sha256::digest(pod_name.as_bytes());
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    SANDBOX_UID_BASE + n % SANDBOX_UID_SPAN
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The runner's sandbox settings for one pod.
pub fn sandbox_env(pod_name: &str) -> Vec<EnvVar> {
    let uid = sandbox_uid(pod_name).to_string();
    vec![
        env("BENCHKITE_SANDBOX", "required"),
        env("BENCHKITE_SANDBOX_UID", uid.clone()),
        env("BENCHKITE_SANDBOX_GID", uid),
        env("BENCHKITE_SANDBOX_DIR", SANDBOX_DIR),
        env("BENCHKITE_SANDBOX_DISK_MIB", SANDBOX_DISK_MIB.to_string()),
        env("BENCHKITE_SANDBOX_NPROC", SANDBOX_NPROC.to_string()),
    ]
}

fn empty_dir(name: &str, limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(Quantity(limit.into())), medium: None }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The volumes and mounts every agent pod gets: the writable emptyDirs under a read-only
/// root filesystem, and the pool's result key (root-only, read-only).
pub fn volumes(pool: &str) -> (Vec<Volume>, Vec<VolumeMount>) {
    let dirs = [
        ("benchkite-builds", BUILDS_DIR, BUILDS_SIZE_LIMIT),
        ("benchkite-plugins", PLUGINS_DIR, "64Mi"),
        ("benchkite-tmp", "/tmp", TMP_SIZE_LIMIT),
        ("benchkite-sandbox", SANDBOX_DIR, SANDBOX_SIZE_LIMIT),
    ];
    let mut volumes: Vec<Volume> = dirs.iter().map(|(n, _, l)| empty_dir(n, l)).collect();
    let mut mounts: Vec<VolumeMount> = dirs.iter().map(|(n, p, _)| mount(n, p, false)).collect();
    volumes.push(Volume {
        name: RESULT_KEY_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(signing::result_key_secret_name(pool)),
            items: Some(vec![KeyToPath {
                key: signing::RESULT_KEY_FILE_NAME.into(),
                path: signing::RESULT_KEY_FILE_NAME.into(),
                mode: Some(0o400),
            }]),
            default_mode: Some(0o400),
            optional: Some(false),
        }),
        ..Default::default()
    });
    mounts.push(mount(RESULT_KEY_VOLUME, signing::RESULT_KEY_DIR, true));
    (volumes, mounts)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EnvVar, Pod};

    use super::super::tests::{built, pool};

    fn env_of<'p>(pod: &'p Pod, name: &str) -> Option<&'p EnvVar> {
        pod.spec.as_ref()?.containers[0].env.as_ref()?.iter().rev().find(|e| e.name == name)
    }

    #[test]
    fn every_writable_path_is_a_bounded_empty_dir_and_the_result_key_is_root_only() {
        let p = pool("h100");
        let pod = built(&p);
        let spec = pod.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        let mounts = c.volume_mounts.as_ref().unwrap();
        let volumes = spec.volumes.as_ref().unwrap();
        let volume_at = |path: &str| {
            let m = mounts.iter().find(|m| m.mount_path == path).unwrap_or_else(|| panic!("no mount at {path}"));
            (m, volumes.iter().find(|v| v.name == m.name).unwrap())
        };
        for (path, limit) in [
            (super::BUILDS_DIR, "1Gi"),
            (super::PLUGINS_DIR, "64Mi"),
            ("/tmp", "1Gi"),
            (super::SANDBOX_DIR, super::SANDBOX_SIZE_LIMIT),
        ] {
            let (m, v) = volume_at(path);
            assert_eq!(m.read_only, None, "{path} is writable");
            let ed = v.empty_dir.as_ref().unwrap_or_else(|| panic!("{path} is an emptyDir"));
            assert_eq!(ed.size_limit.as_ref().map(|q| q.0.as_str()), Some(limit), "{path}");
        }
        let (m, v) = volume_at(crate::signing::RESULT_KEY_DIR);
        assert_eq!(m.read_only, Some(true));
        let secret = v.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some(crate::signing::result_key_secret_name("h100").as_str()));
        assert_eq!(secret.default_mode, Some(0o400));
        let item = &secret.items.as_ref().unwrap()[0];
        assert_eq!((item.key.as_str(), item.path.as_str(), item.mode), ("key", "key", Some(0o400)));
        assert_eq!(item.key, crate::signing::RESULT_KEY_FILE_NAME);
        assert_eq!(secret.optional, Some(false));
    }

    #[test]
    fn the_runner_sandbox_is_required_with_a_per_pod_uid() {
        let p = pool("h100");
        let pod = built(&p);
        let value = |n: &str| env_of(&pod, n).and_then(|e| e.value.clone()).unwrap_or_else(|| panic!("{n} unset"));
        assert_eq!(value("BENCHKITE_SANDBOX"), "required");
        assert_eq!(value("BENCHKITE_SANDBOX_DIR"), super::SANDBOX_DIR);
        assert_eq!(value("BENCHKITE_SANDBOX_DISK_MIB"), super::SANDBOX_DISK_MIB.to_string());
        let uid: u32 = value("BENCHKITE_SANDBOX_UID").parse().unwrap();
        assert_eq!(value("BENCHKITE_SANDBOX_GID"), uid.to_string());
        assert!((super::SANDBOX_UID_BASE..super::SANDBOX_UID_BASE + super::SANDBOX_UID_SPAN).contains(&uid));
        assert_eq!(uid, super::sandbox_uid(pod.metadata.name.as_deref().unwrap()), "stable per pod");
        assert_ne!(super::sandbox_uid("h100-gpu-h100-0-0"), super::sandbox_uid("h100-gpu-h100-0-1"));
        // A pool's own env comes after ours: the admin may tune the sandbox.
        let mut p = pool("h100");
        p.spec.agent.env.push(EnvVar {
            name: "BENCHKITE_SANDBOX_NPROC".into(),
            value: Some("64".into()),
            ..Default::default()
        });
        let pod = built(&p);
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        let last = env.iter().rposition(|e| e.name == "BENCHKITE_SANDBOX_NPROC").unwrap();
        assert_eq!(env[last].value.as_deref(), Some("64"));
    }

    #[test]
    fn a_pools_security_context_replaces_the_default() {
        let mut p = pool("h100");
        let own = k8s_openapi::api::core::v1::SecurityContext { privileged: Some(true), ..Default::default() };
        p.spec.agent.pod.security_context = Some(own.clone());
        let pod = built(&p);
        assert_eq!(pod.spec.unwrap().containers[0].security_context, Some(own));
    }
}
